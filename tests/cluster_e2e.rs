//! A cluster through the real binary: several `qchat serve --cluster`
//! nodes sharing one nats-server (JetStream, temporary store, loopback) and
//! one server identity. Members spread over the nodes see every room in one
//! order, one name is held by one member however many nodes are asked at
//! once, a node killed mid-flood costs its members no acknowledged word,
//! and a node cut off from NATS refuses rather than pretends.

use std::collections::BTreeMap;

use qchat_proto::{RejectReason, ServerMsg};

use crate::raw::{runtime, Raw};
use crate::util::{connect, Home, Nats, Proc, Server, Stream};

/// One nats-server and the nodes connected to it.
struct Cluster {
    nats: Nats,
    nodes: Vec<Server>,
    /// Node `i`'s home; node 0's `certs` is everyone's identity.
    _homes: Vec<Home>,
}

impl Cluster {
    /// Starts a nats-server and `n` nodes, one after the other: the first
    /// creates the identity in its home, the others are given that folder
    /// (`--cert-dir`), as an operator copies it to every machine.
    fn start(n: usize, extra: &[&str]) -> Cluster {
        let nats = Nats::start();
        let homes: Vec<Home> = (0..n).map(|_| Home::new()).collect();
        let certs = homes[0].path().join("certs");
        let certs = certs.to_str().expect("a UTF-8 temporary path").to_string();
        let url = nats.url();
        let mut nodes = Vec::with_capacity(n);
        for home in &homes {
            let mut args = vec!["--headless", "--cluster", &url, "--cert-dir", &certs];
            // No flood control: the tests send as fast as stdin allows.
            args.extend(["--rate", "0"]);
            args.extend(extra);
            nodes.push(Server::start_on(home, "127.0.0.1:0", &args));
        }
        for node in &nodes[1..] {
            assert_eq!(
                node.fingerprint, nodes[0].fingerprint,
                "every node presents the one identity"
            );
        }
        Cluster {
            nats,
            nodes,
            _homes: homes,
        }
    }

    /// Every node's address, starting with node `first`: what `qchat
    /// connect` is given by a member whose usual node that is.
    fn list_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n)
            .map(|k| self.nodes[(first + k) % n].target())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Joins `name` through the node list starting at node `first`, and waits
/// until connected.
fn member(cluster: &Cluster, first: usize, name: &str) -> (Proc, Home) {
    let home = Home::new();
    let mut p = connect(&home, &cluster.list_from(first), name, &["--accept-new"]);
    p.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    (p, home)
}

/// A chat line as a plain client prints it: the room (`None` for a lobby
/// line printed without one), the sender and the text; replayed lines
/// count the same as live ones.
fn chat_line(line: &str) -> Option<(Option<&str>, &str, &str)> {
    let (room, rest) = match line.split_once(' ') {
        Some((r, rest)) if r.starts_with('#') => (Some(r), rest),
        _ => (None, line),
    };
    let rest = rest.strip_prefix("[history] ").unwrap_or(rest);
    let rest = rest.strip_prefix('<')?;
    let (from, text) = rest.split_once("> ")?;
    Some((room, from, text))
}

/// The `(sender, text)` lines `p` printed so far for `room` (`#lobby`
/// also matches lobby lines printed without a room), in order.
fn seen_in(p: &Proc, room: &str) -> Vec<(String, String)> {
    p.stdout_so_far()
        .iter()
        .filter_map(|l| {
            let (r, from, text) = chat_line(l)?;
            let here = match r {
                Some(r) => r == room,
                None => room == "#lobby",
            };
            here.then(|| (from.to_string(), text.to_string()))
        })
        .collect()
}

/// Waits until `p` has printed `from`'s line `text` in `room`.
fn expect_seen(p: &mut Proc, room: &str, from: &str, text: &str) {
    let hit = |r: Option<&str>, f: &str, t: &str| {
        f == from && t == text && r.map_or(room == "#lobby", |r| r == room)
    };
    if seen_in(p, room).iter().any(|(f, t)| f == from && t == text) {
        return;
    }
    p.expect(
        Stream::Out,
        &format!("{room} <{from}> {text}"),
        |l| matches!(chat_line(l), Some((r, f, t)) if hit(r, f, t)),
    );
}

/// The texts `from` said in `room` that `p` printed, in order.
fn said_by(p: &Proc, room: &str, from: &str) -> Vec<String> {
    seen_in(p, room)
        .into_iter()
        .filter(|(f, _)| f == from)
        .map(|(_, t)| t)
        .collect()
}

/// Asserts `p` printed `from`'s lines `1..=n` in `room` exactly once each,
/// in order.
fn assert_exactly_once_in_order(p: &Proc, room: &str, from: &str, n: u32) {
    let want: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(
        said_by(p, room, from),
        want,
        "{} did not see {from}'s 1..={n} in {room} exactly once, in order\n--- transcript ---\n{}",
        p.label,
        p.transcript()
    );
}

#[test]
fn members_spread_over_three_nodes_see_every_room_in_one_order() {
    let cluster = Cluster::start(3, &[]);
    let names = ["alice", "bob", "carol", "dave"];
    // alice on node 0, bob on 1, carol on 2, dave (who only reads) on 0.
    let mut members: Vec<(Proc, Home)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| member(&cluster, i % 3, n))
        .collect();
    // A member whose join reaches its node after some lines were stored
    // gets those as the room's history, in the log's order too: the order
    // compared below is the same either way.
    for (p, _) in &mut members {
        p.send_line("/join #room");
        p.expect(Stream::Out, "the room's join line", |l| {
            l.starts_with("* you joined #room")
        });
    }

    const N: u32 = 25;
    let senders = &names[..3];
    // The three senders write at once, each into #room and then #lobby:
    // the nodes store concurrently, the log alone decides the order.
    for (p, _) in members.iter_mut().take(3) {
        p.send_line("/switch #room");
        for i in 1..=N {
            p.send_line(&i.to_string());
        }
        p.send_line("/switch #lobby");
        for i in 1..=N {
            p.send_line(&i.to_string());
        }
    }
    for (p, _) in &mut members {
        for s in senders {
            if p.label != *s {
                expect_seen(p, "#room", s, &N.to_string());
                expect_seen(p, "#lobby", s, &N.to_string());
            }
        }
    }
    for room in ["#room", "#lobby"] {
        for (p, _) in &members {
            for s in senders {
                if p.label != *s {
                    assert_exactly_once_in_order(p, room, s, N);
                }
            }
        }
        // Every two members saw the lines neither of them sent in the same
        // interleaving: one order for the room, whichever node said it.
        for (i, (p, _)) in members.iter().enumerate() {
            for (q, _) in &members[i + 1..] {
                let common = |x: &Proc| -> Vec<(String, String)> {
                    seen_in(x, room)
                        .into_iter()
                        .filter(|(f, _)| *f != p.label && *f != q.label)
                        .collect()
                };
                let (a, b) = (common(p), common(q));
                assert!(!a.is_empty(), "{room}: {} saw nothing", p.label);
                assert_eq!(
                    a,
                    b,
                    "{} and {} saw {room} in different orders\n--- {} ---\n{}\n--- {} ---\n{}",
                    p.label,
                    q.label,
                    p.label,
                    p.transcript(),
                    q.label,
                    q.transcript()
                );
            }
        }
    }
}

#[test]
fn fifty_concurrent_joins_of_one_name_over_three_nodes_admit_exactly_one() {
    // All 50 come from 127.0.0.1, handshakes at once: the per-address
    // limits and the Retry threshold would otherwise refuse the crowd
    // before any claim is made.
    let cluster = Cluster::start(
        3,
        &[
            "--max-per-ip",
            "64",
            "--max-unjoined-per-ip",
            "64",
            "--retry-threshold",
            "1000",
        ],
    );
    let rt = runtime();
    let answers = rt.block_on(async {
        let mut raws = Vec::new();
        for i in 0..50 {
            raws.push(Raw::connect(&cluster.nodes[i % 3]).await);
        }
        // Handshakes first, hellos all at once: the claims race on the
        // shared store, not on the handshakes.
        let mut streams = Vec::new();
        for raw in &raws {
            streams.push(raw.open().await);
        }
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let answer = s.hello("zed").await;
                    (answer, s)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("a hello task"));
        }
        // The connections live until every answer is in, so the winner
        // still holds the name while the last claims are decided.
        drop(raws);
        answers
    });
    let mut welcomed = 0;
    let mut refused = BTreeMap::<String, usize>::new();
    for (answer, _) in &answers {
        match answer {
            Some(ServerMsg::Welcome { name, .. }) => {
                assert_eq!(name, "zed");
                welcomed += 1;
            }
            Some(ServerMsg::Rejected { reason, detail }) => {
                assert_eq!(*reason, RejectReason::NameTaken, "{detail}");
                assert!(
                    detail.contains("zed"),
                    "the reason names the name: {detail}"
                );
                *refused.entry(detail.clone()).or_default() += 1;
            }
            other => panic!("neither welcomed nor refused: {other:?}"),
        }
    }
    assert_eq!(welcomed, 1, "exactly one of 50 gets the name: {refused:?}");
    assert_eq!(refused.values().sum::<usize>(), 49, "{refused:?}");
}

#[test]
fn a_node_killed_mid_flood_costs_its_members_no_acknowledged_word() {
    let mut cluster = Cluster::start(3, &["--history", "1000"]);
    let names = ["alice", "bob", "carol"];
    // Each on its own node first, the other two as fallbacks.
    let mut members: Vec<(Proc, Home)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| member(&cluster, i, n))
        .collect();

    const N: u32 = 200;
    for (p, _) in &mut members {
        for i in 1..=N {
            p.send_line(&i.to_string());
        }
    }
    // Mid-flood: once bob has some of alice's lines, alice's node dies.
    expect_seen(&mut members[1].0, "#lobby", "alice", "20");
    cluster.nodes[0].proc.kill();
    let alice = &mut members[0].0;
    alice.expect(Stream::Out, "the lost line", |l| {
        l.starts_with("* connection lost")
    });
    alice.expect(Stream::Out, "the reconnected line", |l| {
        l.starts_with("* reconnected")
    });

    for (p, _) in &mut members {
        for s in names {
            if p.label != s {
                expect_seen(p, "#lobby", s, &N.to_string());
            }
        }
    }
    // End of input: each exits only once everything it typed was
    // acknowledged, so success means all N of each were acknowledged.
    for (p, _) in &mut members {
        p.close_stdin();
        assert!(p.wait().success(), "{}", p.transcript());
    }
    for (p, _) in &members {
        for s in names {
            if p.label != s {
                assert_exactly_once_in_order(p, "#lobby", s, N);
            }
        }
    }
}

#[test]
fn nodes_carry_on_after_nats_restarts_and_refuse_without_it() {
    let mut cluster = Cluster::start(2, &[]);
    let (mut alice, _ha) = member(&cluster, 0, "alice");
    let (mut bob, _hb) = member(&cluster, 1, "bob");
    alice.send_line("before");
    expect_seen(&mut bob, "#lobby", "alice", "before");

    cluster.nats.restart();
    // Each node notices NATS went and came back (within the grace a blip
    // is given, so nobody was sent away); a line is then accepted and
    // crosses nodes as before.
    for node in &mut cluster.nodes {
        node.proc.expect_err_contains("lost the connection to NATS");
        node.proc.expect_err_contains("connected to NATS");
    }
    alice.send_line("after the restart");
    expect_seen(&mut bob, "#lobby", "alice", "after the restart");
    bob.send_line("and back");
    expect_seen(&mut alice, "#lobby", "bob", "and back");

    // NATS gone for good: alice's node refuses her line, she is told why,
    // and nobody receives it.
    cluster.nats.kill();
    cluster.nodes[0]
        .proc
        .expect_err_contains("lost the connection to NATS");
    alice.send_line("into the void");
    let told = alice.expect_err_contains("message not sent");
    assert!(told.contains("cluster"), "{told}");
    assert!(
        !said_by(&bob, "#lobby", "alice").contains(&"into the void".to_string()),
        "{}",
        bob.transcript()
    );
}
