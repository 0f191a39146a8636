//! The room log and protocol version 3, end to end, with raw QUIC clients:
//! nothing acknowledged is lost when the server is killed and restarted on
//! the same data folder, a re-send is never delivered twice, SIGTERM tells
//! members the server will be back, a damaged log stops the server with its
//! name, and a member whose address changes keeps its session.

use std::collections::BTreeMap;
use std::time::Duration;

use qchat_proto::{ClientMsg, ResumePoint, ServerMsg};
use tokio::time::timeout;

use crate::raw::{runtime, say, Raw, RawStream};
use crate::util::{Home, Server, Stream, WAIT};

/// Flags for a server that takes a client's 200 messages sent at full
/// speed without calling it a flood, at a pace that leaves time to kill it
/// in the middle (about two seconds for all of them).
const FAST: &[&str] = &["--rate", "100", "--burst", "10", "--backlog", "500"];

/// A v3 member's join: its stream, the log's id and the newest id at the
/// join, and the messages replayed (id, text).
struct Joined3 {
    stream: RawStream,
    log_id: [u8; 16],
    replay: Vec<(u64, String)>,
    resumed: bool,
}

async fn join_v3(
    raw: &Raw,
    name: &str,
    instance: [u8; 16],
    resume: Option<ResumePoint>,
) -> Joined3 {
    let mut stream = raw.open().await;
    let hello = ClientMsg::HelloV3 {
        version: 3,
        name: name.into(),
        instance,
        resume,
    };
    stream
        .write(&hello.to_frame())
        .await
        .expect("the hello can be written");
    let log_id = match stream.next_msg().await {
        Some(ServerMsg::WelcomeV3 { log_id, .. }) => log_id,
        other => panic!("{name} was not welcomed: {other:?}"),
    };
    let mut replay = Vec::new();
    loop {
        match stream.next_msg().await {
            Some(ServerMsg::HistoryV3 { id, text, .. }) => replay.push((id, text)),
            Some(ServerMsg::Replayed { resumed, .. }) => {
                return Joined3 {
                    stream,
                    log_id,
                    replay,
                    resumed,
                }
            }
            other => panic!("{name}: unexpected during the replay: {other:?}"),
        }
    }
}

/// Says `text` as the first message on `stream` and asserts the server
/// took it as the room log's first entry.
async fn say_first_acked(stream: &mut RawStream, text: &str) {
    stream.write(&say(1, text)).await.expect("written");
    assert_eq!(
        stream.next_msg().await,
        Some(ServerMsg::AckV3 { seq: 1, id: 1 })
    );
}

#[test]
fn nothing_acknowledged_is_lost_when_the_server_is_killed_and_restarted() {
    let home = Home::new();
    let mut server = Server::start_on(&home, "127.0.0.1:0", FAST);
    let listen = server.addr.to_string();
    let rt = runtime();
    let alice_id = [0xa1; 16];
    let (mut acked, bob_before, log_id) = rt.block_on(async {
        let bob_raw = Raw::connect(&server).await;
        let mut bob = join_v3(&bob_raw, "bob", [0xb0; 16], None).await;
        let alice_raw = Raw::connect(&server).await;
        let mut alice = join_v3(&alice_raw, "alice", alice_id, None).await;
        let mut all = Vec::new();
        for seq in 1..=200u64 {
            all.extend(say(seq, &seq.to_string()));
        }
        alice.stream.write(&all).await.expect("written");
        // Some acknowledged, then the crash.
        let mut acked = BTreeMap::new();
        while acked.len() < 40 {
            match alice.stream.next_msg().await {
                Some(ServerMsg::AckV3 { seq, id }) => {
                    acked.insert(seq, id);
                }
                other => panic!("alice: {other:?}"),
            }
        }
        server.proc.kill();
        // Whatever else reached alice and bob before the connection broke
        // counts too: it was acknowledged or shown, so it must be in the log.
        while let Some(ServerMsg::AckV3 { seq, id }) = alice
            .stream
            .next_msg_within(Duration::from_millis(500))
            .await
        {
            acked.insert(seq, id);
        }
        let mut seen = Vec::new();
        while let Some(m) = bob.stream.next_msg_within(Duration::from_millis(500)).await {
            if let ServerMsg::ChatV3 { id, text, .. } = m {
                seen.push((id, text));
            }
        }
        (acked, seen, bob.log_id)
    });
    assert!(
        (40..200).contains(&acked.len()),
        "the crash fell in the middle: {} acknowledged",
        acked.len()
    );

    let server = Server::start_on(&home, &listen, FAST);
    rt.block_on(async {
        // bob resumes after the last message he saw.
        let bob_raw = Raw::connect(&server).await;
        let after = bob_before.last().map(|l| l.0).unwrap_or(0);
        let mut bob = join_v3(
            &bob_raw,
            "bob",
            [0xb0; 16],
            Some(ResumePoint { log_id, after }),
        )
        .await;
        assert_eq!(
            bob.log_id, log_id,
            "the restarted server serves the same log"
        );
        assert!(bob.resumed);
        // alice re-sends everything not acknowledged; the server stored
        // some of it before the crash and must not store it twice.
        let alice_raw = Raw::connect(&server).await;
        let mut alice = join_v3(
            &alice_raw,
            "alice",
            alice_id,
            Some(ResumePoint { log_id, after: 0 }),
        )
        .await;
        let mut again = Vec::new();
        for seq in (1..=200u64).filter(|s| !acked.contains_key(s)) {
            again.extend(say(seq, &seq.to_string()));
        }
        alice.stream.write(&again).await.expect("written");
        while acked.len() < 200 {
            match alice.stream.next_msg().await {
                Some(ServerMsg::AckV3 { seq, id }) => {
                    if let Some(old) = acked.insert(seq, id) {
                        assert_eq!(old, id, "seq {seq} was acknowledged under two ids");
                    }
                }
                Some(ServerMsg::ChatV3 { .. } | ServerMsg::Joined { .. }) => {}
                other => panic!("alice after the restart: {other:?}"),
            }
        }
        let mut bob_all = bob_before.clone();
        bob_all.append(&mut bob.replay);
        while bob_all.last().map(|l| l.1.as_str()) != Some("200") {
            match bob.stream.next_msg().await {
                Some(ServerMsg::ChatV3 { id, text, .. }) => bob_all.push((id, text)),
                Some(ServerMsg::Joined { .. } | ServerMsg::Returned { .. }) => {}
                other => panic!("bob after the restart: {other:?}"),
            }
        }
        let texts: Vec<String> = bob_all.iter().map(|x| x.1.clone()).collect();
        let want: Vec<String> = (1..=200).map(|i: u64| i.to_string()).collect();
        assert_eq!(texts, want, "bob sees each message once, in order");
        assert!(bob_all.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
        for (id, text) in &bob_all {
            let seq: u64 = text.parse().expect("a number");
            assert_eq!(
                acked.get(&seq),
                Some(id),
                "bob's id for {seq} is alice's ack"
            );
        }
        // Someone joining later with a long enough history sees the same.
        let carol_raw = Raw::connect(&server).await;
        let carol = join_v3(
            &carol_raw,
            "carol",
            [0xc0; 16],
            Some(ResumePoint { log_id, after: 0 }),
        )
        .await;
        assert_eq!(carol.replay, bob_all);
    });
}

#[test]
fn sigterm_tells_members_the_server_will_be_back_and_the_log_stays() {
    let home = Home::new();
    let mut server = Server::start_on(&home, "127.0.0.1:0", &[]);
    let listen = server.addr.to_string();
    let rt = runtime();
    let log_id = rt.block_on(async {
        let raw = Raw::connect(&server).await;
        let mut a = join_v3(&raw, "alice", [1; 16], None).await;
        say_first_acked(&mut a.stream, "before").await;
        let v2 = Raw::connect(&server).await;
        let mut old = v2.join("oldie").await;
        server.proc.signal("TERM");
        let mut got = None;
        while let Some(m) = a.stream.next_msg().await {
            if let ServerMsg::ShuttingDownV3 { .. } = m {
                got = Some(m);
                break;
            }
        }
        assert_eq!(
            got,
            Some(ServerMsg::ShuttingDownV3 {
                reason: "the server is restarting".into(),
                back: true
            })
        );
        let mut v2_got = None;
        while let Some(m) = old.next_msg().await {
            if let ServerMsg::ShuttingDown { .. } = m {
                v2_got = Some(m);
                break;
            }
        }
        assert!(
            matches!(v2_got, Some(ServerMsg::ShuttingDown { .. })),
            "{v2_got:?}"
        );
        a.log_id
    });
    assert!(server.proc.wait().success());
    let server = Server::start_on(&home, &listen, &[]);
    rt.block_on(async {
        let raw = Raw::connect(&server).await;
        let b = join_v3(&raw, "bob", [2; 16], None).await;
        assert_eq!(b.log_id, log_id);
        assert_eq!(b.replay, [(1, "before".to_string())]);
    });
}

#[test]
fn a_damaged_log_stops_the_server_with_its_name_and_is_left_alone() {
    let home = Home::new();
    let dir = home.path().join("server");
    std::fs::create_dir_all(&dir).expect("created");
    let file = dir.join("room.redb");
    let garbage = vec![0x42u8; 4096];
    std::fs::write(&file, &garbage).expect("written");
    let mut cmd = home.command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--headless"]);
    let mut p = crate::util::Proc::spawn("server", cmd);
    p.expect_err_contains("room.redb");
    assert!(!p.wait().success());
    assert_eq!(std::fs::read(&file).expect("still there"), garbage);
}

#[cfg(unix)]
#[test]
fn the_data_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let _server = Server::start_on(&home, "127.0.0.1:0", &[]);
    let meta = std::fs::metadata(home.path().join("server")).expect("created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert!(home.path().join("server").join("room.redb").exists());
}

#[cfg(unix)]
#[test]
fn a_data_folder_open_to_others_draws_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let dir = home.path().join("shared");
    std::fs::create_dir_all(&dir).expect("created");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.to_string_lossy().into_owned();
    let mut server = Server::start_on(&home, "127.0.0.1:0", &["--data-dir", &path]);
    let warned = |l: &str| l.contains("chmod 700") && l.contains(&path);
    // The warning comes before the listening line the harness waited for:
    // already read, or still on its way from the stderr reader.
    if !server.proc.transcript().lines().any(warned) {
        server.proc.expect(Stream::Err, "the warning", warned);
    }
}

/// Moves the raw client's connection to a fresh UDP socket: to the server,
/// the member's address changes mid-conversation.
fn rebind(raw: &Raw) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
    raw.endpoint().rebind(socket).expect("rebinds");
}

#[test]
fn a_member_whose_address_changes_keeps_its_session() {
    let home = Home::new();
    let mut server = Server::start_on(&home, "127.0.0.1:0", &[]);
    let rt = runtime();
    rt.block_on(async {
        let raw = Raw::connect(&server).await;
        let mut a = join_v3(&raw, "alice", [1; 16], None).await;
        let before = raw.endpoint().local_addr().expect("bound");
        rebind(&raw);
        let after = raw.endpoint().local_addr().expect("bound");
        assert_ne!(before.port(), after.port());
        say_first_acked(&mut a.stream, "from the new address").await;
        a.stream
            .write(&ClientMsg::Who.to_frame())
            .await
            .expect("written");
        assert!(matches!(
            a.stream.next_msg().await,
            Some(ServerMsg::Members { .. })
        ));
        let port = after.port().to_string();
        server
            .proc
            .expect(Stream::Err, "the new address in the log", |l| {
                l.contains("address changed") && l.contains(&port)
            });
    });
}

#[test]
fn the_operators_member_list_shows_a_moved_members_new_address() {
    let home = Home::new();
    let mut server = Server::start_on(&home, "127.0.0.1:0", &["--name", "op"]);
    server
        .proc
        .expect(Stream::Out, "the operator's welcome", |l| {
            l.starts_with("* joined the room")
        });
    let rt = runtime();
    let raw = rt.block_on(Raw::connect(&server));
    let mut a = rt.block_on(join_v3(&raw, "alice", [1; 16], None));
    let port = rt.block_on(async {
        rebind(&raw);
        raw.endpoint().local_addr().expect("bound").port()
    });
    rt.block_on(async {
        // Traffic from the new address is what tells the server.
        say_first_acked(&mut a.stream, "moved").await;
    });
    server.proc.send_line("/who");
    let want = format!("127.0.0.1:{port}");
    server
        .proc
        .expect(Stream::Out, "alice at her new address", |l| {
            l.contains("alice") && l.contains(&want)
        });
}

#[test]
fn with_migration_disabled_a_moved_member_is_not_heard() {
    let home = Home::new();
    let server = Server::start_on(&home, "127.0.0.1:0", &["--no-migration"]);
    let rt = runtime();
    rt.block_on(async {
        let mut t = crate::raw::transport();
        t.max_idle_timeout(Some(Duration::from_secs(2).try_into().expect("fits")));
        let raw = Raw::connect_with(&server, t).await;
        let mut a = join_v3(&raw, "alice", [1; 16], None).await;
        rebind(&raw);
        let _ = a.stream.write(&say(1, "lost in transit")).await;
        let got = timeout(WAIT, raw.conn.closed())
            .await
            .expect("ends in time");
        // Unheard, the connection dies: by the client's idle timeout, or by
        // a stateless reset if the server meets a connection id it has
        // already forgotten; either way the moved member is cut off.
        assert!(
            matches!(
                got,
                quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset
            ),
            "{got:?}"
        );
    });
}

#[test]
fn a_version_2_hello_still_gets_version_2() {
    let home = Home::new();
    let server = Server::start_on(&home, "127.0.0.1:0", &[]);
    let rt = runtime();
    rt.block_on(async {
        let raw = Raw::connect(&server).await;
        let mut s = raw.open().await;
        s.write(
            &ClientMsg::Hello {
                version: 2,
                name: "oldie".into(),
            }
            .to_frame(),
        )
        .await
        .expect("written");
        assert!(
            matches!(
                s.next_msg().await,
                Some(ServerMsg::Welcome { version: 2, .. })
            ),
            "a v2 client gets the v2 welcome"
        );
        s.write(&say(1, "hi")).await.expect("written");
        assert_eq!(s.next_msg().await, Some(ServerMsg::Ack { seq: 1 }));
    });
}

#[test]
fn hostile_v3_hellos_end_only_their_own_connection() {
    let home = Home::new();
    let server = Server::start_on(&home, "127.0.0.1:0", &[]);
    let rt = runtime();
    rt.block_on(async {
        // A version-3 hello claiming an older version.
        let raw = Raw::connect(&server).await;
        let mut s = raw.open().await;
        let hello = ClientMsg::HelloV3 {
            version: 2,
            name: "liar".into(),
            instance: [3; 16],
            resume: None,
        };
        s.write(&hello.to_frame()).await.expect("written");
        assert_eq!(
            raw.close_code().await,
            u64::from(qchat_proto::CloseCode::ProtocolError.code())
        );
        // A second hello after joining.
        let raw = Raw::connect(&server).await;
        let mut j = join_v3(&raw, "twice", [4; 16], None).await;
        let again = ClientMsg::HelloV3 {
            version: 3,
            name: "twice".into(),
            instance: [4; 16],
            resume: None,
        };
        j.stream.write(&again.to_frame()).await.expect("written");
        assert_eq!(
            raw.close_code().await,
            u64::from(qchat_proto::CloseCode::ProtocolError.code())
        );
        // A resume point far in the future is the present, not a crash.
        let raw = Raw::connect(&server).await;
        let first = join_v3(&raw, "early", [5; 16], None).await;
        let log_id = first.log_id;
        let raw2 = Raw::connect(&server).await;
        let mut late = raw2.open().await;
        let hello = ClientMsg::HelloV3 {
            version: 3,
            name: "future".into(),
            instance: [6; 16],
            resume: Some(ResumePoint {
                log_id,
                after: u64::MAX,
            }),
        };
        late.write(&hello.to_frame()).await.expect("written");
        assert!(matches!(
            late.next_msg().await,
            Some(ServerMsg::WelcomeV3 { .. })
        ));
        assert_eq!(
            late.next_msg().await,
            Some(ServerMsg::Replayed {
                resumed: true,
                count: 0,
                missed: 0
            })
        );
    });
}
