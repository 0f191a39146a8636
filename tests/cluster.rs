//! Two `qchat serve --cluster` nodes over one real nats-server: members on
//! either node converse in #lobby and in a room and see the same lines in
//! the same order under the same ids; a member joining later, on either
//! node, gets the history; a member resumes on the other node from the id
//! it last saw; and a node cut off from NATS refuses lines, sends its
//! members away and admits nobody until NATS is back, then carries on.

use std::collections::BTreeMap;

use qchat_proto::{ClientMsg, CloseCode, ResumePoint, ServerMsg, PROTOCOL_VERSION};

use crate::raw::{runtime, say, Raw, RawStream};
use crate::util::{Home, Nats, Server, Stream};

fn node(home: &Home, nats: &Nats, certs: Option<&Home>) -> Server {
    Server::node(home, nats, certs, &[])
}

/// A version-5 member's session: its stream, the lobby log's id and what
/// was replayed at the join (id, text).
struct Member {
    stream: RawStream,
    log_id: [u8; 16],
    replay: Vec<(u64, String)>,
    resumed: bool,
}

async fn hello(raw: &Raw, name: &str, instance: u8, resume: Option<ResumePoint>) -> RawStream {
    let mut stream = raw.open().await;
    let hello = ClientMsg::HelloV3 {
        version: PROTOCOL_VERSION,
        name: name.into(),
        instance: [instance; 16],
        resume,
    };
    stream.write(&hello.to_frame()).await.expect("written");
    stream
}

async fn join(raw: &Raw, name: &str, instance: u8, resume: Option<ResumePoint>) -> Member {
    let mut stream = hello(raw, name, instance, resume).await;
    let log_id = match stream.next_msg().await {
        Some(ServerMsg::WelcomeV3 { log_id, .. }) => log_id,
        other => panic!("{name} was not welcomed: {other:?}"),
    };
    let mut replay = Vec::new();
    loop {
        match stream.next_msg().await {
            Some(ServerMsg::HistoryV3 { id, text, .. }) => replay.push((id, text)),
            Some(ServerMsg::Replayed { resumed, .. }) => {
                return Member {
                    stream,
                    log_id,
                    replay,
                    resumed,
                }
            }
            Some(_) => {}
            None => panic!("{name}: no replay"),
        }
    }
}

/// The lobby lines a member sees, in the order it sees them, as (id,
/// text): its own from their acknowledgements (`mine` maps its seq to the
/// text it said), the others' from the lines; until `n`.
async fn lobby_lines(m: &mut Member, mine: &BTreeMap<u64, String>, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match m.stream.next_msg().await {
            Some(ServerMsg::ChatV3 { id, text, .. }) => got.push((id, text)),
            Some(ServerMsg::AckV3 { seq, id }) => got.push((id, mine[&seq].clone())),
            Some(_) => {}
            None => panic!("the stream ended after {got:?}"),
        }
    }
    got
}

/// As [`lobby_lines`], in the room `room`.
async fn room_lines(
    m: &mut Member,
    room: &str,
    mine: &BTreeMap<u64, String>,
    n: usize,
) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match m.stream.next_msg().await {
            Some(ServerMsg::RoomChat {
                room: r, id, text, ..
            }) if r == room => got.push((id, text)),
            Some(ServerMsg::RoomAck { room: r, seq, id }) if r == room => {
                got.push((id, mine[&seq].clone()))
            }
            Some(_) => {}
            None => panic!("the stream ended after {got:?}"),
        }
    }
    got
}

async fn enter(m: &mut Member, room: &str) {
    let join = ClientMsg::Join {
        room: room.into(),
        resume: None,
    };
    m.stream.write(&join.to_frame()).await.expect("written");
    loop {
        match m.stream.next_msg().await {
            Some(ServerMsg::RoomReplayed { room: r, .. }) if r == room => return,
            Some(_) => {}
            None => panic!("not in {room}"),
        }
    }
}

fn room_say(room: &str, seq: u64, text: &str) -> bytes::Bytes {
    ClientMsg::RoomSay {
        room: room.into(),
        seq,
        text: text.into(),
        action: false,
    }
    .to_frame()
}

#[test]
fn members_on_two_nodes_see_one_order_and_resume_on_either() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    assert_eq!(a.fingerprint, b.fingerprint, "one identity for the cluster");
    runtime().block_on(async {
        let (ra, rb) = (Raw::connect(&a).await, Raw::connect(&b).await);
        let mut alice = join(&ra, "alice", 1, None).await;
        let mut bob = join(&rb, "bob", 2, None).await;
        assert_eq!(alice.log_id, bob.log_id, "one #lobby log");
        // Said at once on both nodes.
        let (mut mine_a, mut mine_b) = (BTreeMap::new(), BTreeMap::new());
        for seq in 1..=5u64 {
            let (ta, tb) = (format!("a{seq}"), format!("b{seq}"));
            alice.stream.write(&say(seq, &ta)).await.expect("written");
            bob.stream.write(&say(seq, &tb)).await.expect("written");
            mine_a.insert(seq, ta);
            mine_b.insert(seq, tb);
        }
        let seen_a = lobby_lines(&mut alice, &mine_a, 10).await;
        let seen_b = lobby_lines(&mut bob, &mine_b, 10).await;
        assert_eq!(seen_a, seen_b, "one order on both nodes");
        let ids: Vec<u64> = seen_a.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());

        // A room, created on one node and joined on the other.
        enter(&mut alice, "#dev").await;
        enter(&mut bob, "#dev").await;
        alice
            .stream
            .write(&room_say("#dev", 6, "dev-a"))
            .await
            .expect("written");
        bob.stream
            .write(&room_say("#dev", 6, "dev-b"))
            .await
            .expect("written");
        mine_a.insert(6, "dev-a".into());
        mine_b.insert(6, "dev-b".into());
        let dev_a = room_lines(&mut alice, "#dev", &mine_a, 2).await;
        let dev_b = room_lines(&mut bob, "#dev", &mine_b, 2).await;
        assert_eq!(dev_a, dev_b);
        assert_eq!(dev_a.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);

        // Carol joins the node bob is on and gets the history, alice's
        // lines included, with the same ids.
        let rc = Raw::connect(&b).await;
        let carol = join(&rc, "carol", 3, None).await;
        assert_eq!(carol.replay, seen_a);
        drop(carol);
        drop(rc);

        // Bob moves to alice's node, resuming from the fifth line: he gets
        // exactly the five after it.
        drop(bob);
        drop(rb);
        let rb2 = Raw::connect(&a).await;
        let point = ResumePoint {
            log_id: alice.log_id,
            after: 5,
        };
        let bob = join(&rb2, "bob", 2, Some(point)).await;
        assert!(bob.resumed);
        assert_eq!(bob.replay, seen_a[5..]);
    });
}

#[test]
fn a_node_cut_off_from_nats_refuses_lines_sends_members_away_and_comes_back() {
    let mut nats = Nats::start();
    let home = Home::new();
    let mut a = node(&home, &nats, None);
    runtime().block_on(async {
        let ra = Raw::connect(&a).await;
        let mut alice = join(&ra, "alice", 1, None).await;
        alice
            .stream
            .write(&say(1, "before"))
            .await
            .expect("written");
        assert_eq!(
            alice.stream.next_msg().await,
            Some(ServerMsg::AckV3 { seq: 1, id: 1 })
        );

        nats.kill();
        a.proc.expect_err_contains("lost the connection to NATS");
        // Never acknowledged: the cluster did not store it.
        alice.stream.write(&say(2, "lost")).await.expect("written");
        match alice.stream.next_msg().await {
            Some(ServerMsg::Refused { seq: 2, reason }) => {
                assert!(reason.contains("cluster"), "{reason}")
            }
            other => panic!("not refused: {other:?}"),
        }
        // Then told to move to another node.
        loop {
            match alice.stream.next_msg().await {
                Some(ServerMsg::ShuttingDownV3 { reason, back }) => {
                    assert!(back, "clients come back elsewhere");
                    assert!(reason.contains("another node"), "{reason}");
                    break;
                }
                Some(_) => {}
                None => panic!("not told to move"),
            }
        }
        assert_eq!(
            ra.close_code().await,
            u64::from(CloseCode::ShuttingDown.code())
        );
        // Nobody is admitted meanwhile, and is told why.
        let rb = Raw::connect(&a).await;
        let mut bob = hello(&rb, "bob", 2, None).await;
        match bob.next_msg().await {
            Some(ServerMsg::Rejected { detail, .. }) => {
                assert!(
                    detail.contains("lost its connection to the cluster"),
                    "{detail}"
                )
            }
            other => panic!("not rejected: {other:?}"),
        }

        nats.restart();
        a.proc.expect_err_contains("NATS is back");
        let ra2 = Raw::connect(&a).await;
        let point = ResumePoint {
            log_id: alice.log_id,
            after: 0,
        };
        let mut alice = join(&ra2, "alice", 1, Some(point)).await;
        assert_eq!(alice.replay, [(1, "before".to_string())]);
        alice.stream.write(&say(3, "after")).await.expect("written");
        assert_eq!(
            alice.stream.next_msg().await,
            Some(ServerMsg::AckV3 { seq: 3, id: 2 })
        );
    });
}

/// What a node cannot start with says why and exits: NATS unreachable, a
/// cluster with a store in memory, cluster flags without --cluster (from
/// the settings file too).
#[test]
fn a_node_that_cannot_join_its_cluster_does_not_start_and_says_why() {
    let run = |home: &Home, args: &[&str]| {
        let out = home
            .command()
            .args(["serve", "--headless", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let home = Home::new();
    // Port 1 on loopback: nothing listens there.
    let err = run(&home, &["--cluster", "nats://127.0.0.1:1"]);
    assert!(err.contains("cannot join the cluster"), "{err}");
    let err = run(
        &home,
        &["--cluster", "nats://127.0.0.1:1", "--store", "memory"],
    );
    assert!(err.contains("cannot be used with --store memory"), "{err}");
    let err = run(&home, &["--advertise", "chat.example:8080"]);
    assert!(err.contains("give --cluster too"), "{err}");
    std::fs::write(
        home.path().join("server.toml"),
        "cluster-cert = \"/nonexistent.pem\"\ncluster = \"nats://127.0.0.1:1\"\n",
    )
    .expect("writes");
    let err = run(&home, &[]);
    assert!(
        err.contains("--cluster-cert and --cluster-key go together"),
        "{err}"
    );
}

/// Private messages cross nodes: bob on one node writes to alice on the
/// other, she sees it and he sees his copy; a name nobody has anywhere is
/// still refused.
#[test]
fn a_private_message_reaches_a_member_on_another_node() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let (alice_home, bob_home) = (Home::new(), Home::new());
    let mut alice = crate::util::join(&alice_home, &a, "alice");
    let mut bob = crate::util::join(&bob_home, &b, "bob");
    // Bob's node knows where alice is once her presence reached it: his
    // /who lists her.
    bob.send_line("/who");
    bob.expect(Stream::Out, "alice in bob's /who", |l| {
        l.starts_with("* members (2)") && l.contains("alice")
    });
    bob.send_line("/msg alice a secret");
    alice.expect_out("[bob -> alice] a secret");
    bob.expect_out("[bob -> alice] a secret");
    bob.send_line("/msg nobody hello?");
    bob.expect_err_contains("nobody called \"nobody\"");
}
