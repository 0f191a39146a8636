//! Hostile traffic: a stranger on the network sends whatever it likes.
//!
//! Each test starts a real `qchat serve`, puts two ordinary plain-mode
//! members (alice and bob) in the room, attacks with the raw QUIC client
//! from `raw.rs`, and then checks three things: the attacker's connection
//! got the documented close code (docs/PROTOCOL.md §7), the server process
//! is still running, and alice and bob can still talk. Codes are compared as numbers on purpose: they are the wire
//! contract, not an implementation detail.

use std::time::{Duration, Instant};

use qchat_proto::{RejectReason, ServerMsg};

use crate::raw::{self, frame, garbage, hello, say, Raw};
use crate::util::{join, Home, Proc, Server, Stream};

const PROTOCOL_ERROR: u64 = 2;
const FRAME_TOO_LARGE: u64 = 3;
const HELLO_TIMEOUT: u64 = 4;
const REJECTED: u64 = 5;
const SLOW_READER: u64 = 6;
const FLOOD: u64 = 7;

/// A server with two members talking, plus the runtime for the attacker.
struct Room {
    server: Server,
    alice: Proc,
    bob: Proc,
    rt: tokio::runtime::Runtime,
    checks: u32,
    _homes: [Home; 3],
}

impl Room {
    fn start(server_args: &[&str]) -> Room {
        let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
        let server = Server::start_on(&hs, "127.0.0.1:0", server_args);
        let mut alice = join(&ha, &server, "alice");
        let bob = join(&hb, &server, "bob");
        alice.expect_out("* bob joined");
        let mut room = Room {
            server,
            alice,
            bob,
            rt: raw::runtime(),
            checks: 0,
            _homes: [hs, ha, hb],
        };
        room.still_talking();
        room
    }

    /// The server is alive and the conversation goes on, both ways.
    fn still_talking(&mut self) {
        assert_server_alive(&self.server);
        self.checks += 1;
        let n = self.checks;
        self.alice.send_line(&format!("alice check {n}"));
        self.bob.expect_out(&format!("<alice> alice check {n}"));
        self.bob.send_line(&format!("bob check {n}"));
        self.alice.expect_out(&format!("<bob> bob check {n}"));
    }

    /// The server wrote one log line about closing a connection with `code`.
    fn logged_close(&mut self, code: u64) {
        let needle = format!("code={code}");
        self.server
            .proc
            .expect(Stream::Err, &format!("a log line with {needle}"), |l| {
                l.contains(&needle) && l.contains("closing")
            });
    }
}

/// The process is running: not exited and not a zombie. (A message still
/// arriving proves it serves; this catches a crash that left a child
/// process holding the socket.)
fn assert_server_alive(server: &Server) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.proc.id()))
        .expect("the server process exists");
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?");
    assert_ne!(state, "Z", "the server process has exited");
}

/// Opens a stream, writes `bytes`, and returns the close code the server
/// answers with.
async fn send_and_get_closed(server: &Server, bytes: &[u8]) -> u64 {
    let raw = Raw::connect(server).await;
    let mut s = raw.open().await;
    // The server may close before everything is written; that is the point.
    let _ = s.write(bytes).await;
    let _ = s.send.finish();
    raw.close_code().await
}

/// Joins as `name`, then writes `bytes`, and returns the close code.
async fn join_send_and_get_closed(server: &Server, name: &str, bytes: &[u8]) -> u64 {
    let raw = Raw::connect(server).await;
    let mut s = raw.join(name).await;
    let _ = s.write(bytes).await;
    raw.close_code().await
}

#[test]
fn random_bytes_instead_of_a_hello_close_only_that_connection() {
    let mut room = Room::start(&[]);
    for seed in [1u64, 7, 1234, 0xdead_beef] {
        let bytes = garbage(seed, 300);
        let code = room.rt.block_on(send_and_get_closed(&room.server, &bytes));
        assert!(
            code == PROTOCOL_ERROR || code == FRAME_TOO_LARGE,
            "seed {seed}: close code {code}"
        );
    }
    room.still_talking();
    // Before a join, the log gets the first closing per code and address in
    // a window; the others wait for the summary.
    let log = room.server.proc.transcript();
    let closings = log.lines().filter(|l| l.contains("closing: ")).count();
    assert!((1..=2).contains(&closings), "{log}");
}

#[test]
fn random_bytes_after_joining_close_only_that_connection() {
    let mut room = Room::start(&[]);
    for (i, seed) in [3u64, 99, 31_337].into_iter().enumerate() {
        let name = format!("mallory{i}");
        let bytes = garbage(seed, 300);
        let code = room
            .rt
            .block_on(join_send_and_get_closed(&room.server, &name, &bytes));
        assert!(
            code == PROTOCOL_ERROR || code == FRAME_TOO_LARGE,
            "seed {seed}: close code {code}"
        );
        // The others are told, with the reason, and nothing else.
        room.alice
            .expect(Stream::Out, "the attacker's departure", |l| {
                l.starts_with(&format!("* {name} left"))
            });
    }
    room.still_talking();
}

#[test]
fn a_giant_length_prefix_is_refused_before_anything_is_allocated() {
    let mut room = Room::start(&[]);
    let code = room
        .rt
        .block_on(send_and_get_closed(&room.server, &[0xFF; 4]));
    assert_eq!(code, FRAME_TOO_LARGE);
    room.logged_close(FRAME_TOO_LARGE);
    // Just above the limit, from a member in the room.
    let over = (16_384u32 + 1).to_be_bytes();
    let code = room
        .rt
        .block_on(join_send_and_get_closed(&room.server, "mallory", &over));
    assert_eq!(code, FRAME_TOO_LARGE);
    room.still_talking();
}

#[test]
fn a_zero_length_frame_is_a_protocol_error() {
    let mut room = Room::start(&[]);
    let code = room
        .rt
        .block_on(send_and_get_closed(&room.server, &[0, 0, 0, 0]));
    assert_eq!(code, PROTOCOL_ERROR);
    room.logged_close(PROTOCOL_ERROR);
    let code = room
        .rt
        .block_on(join_send_and_get_closed(&room.server, "mallory", &[0; 4]));
    assert_eq!(code, PROTOCOL_ERROR);
    room.still_talking();
}

#[test]
fn an_unknown_message_kind_is_a_protocol_error() {
    let mut room = Room::start(&[]);
    let code = room
        .rt
        .block_on(send_and_get_closed(&room.server, &frame(&[0x63])));
    assert_eq!(code, PROTOCOL_ERROR);
    let code = room.rt.block_on(join_send_and_get_closed(
        &room.server,
        "mallory",
        &frame(&[0x63, 0x01, 0x02]),
    ));
    assert_eq!(code, PROTOCOL_ERROR);
    room.still_talking();
}

#[test]
fn invalid_utf8_is_a_protocol_error_in_a_message_and_in_a_name() {
    let mut room = Room::start(&[]);
    // Say { seq: 1, text: [0xFF, 0xFE] }
    let code = room.rt.block_on(join_send_and_get_closed(
        &room.server,
        "mallory",
        &frame(&[0x01, 0x01, 0x02, 0xFF, 0xFE]),
    ));
    assert_eq!(code, PROTOCOL_ERROR);
    room.alice.expect(Stream::Out, "mallory's departure", |l| {
        l.starts_with("* mallory left")
    });
    // Hello { version: 1, name: [0xC3, 0x28] }
    let code = room.rt.block_on(send_and_get_closed(
        &room.server,
        &frame(&[0x00, 0x01, 0x02, 0xC3, 0x28]),
    ));
    assert_eq!(code, PROTOCOL_ERROR);
    room.still_talking();
}

#[test]
fn a_second_hello_is_a_protocol_error() {
    let mut room = Room::start(&[]);
    let code = room.rt.block_on(join_send_and_get_closed(
        &room.server,
        "mallory",
        &hello("mallory2"),
    ));
    assert_eq!(code, PROTOCOL_ERROR);
    room.still_talking();
    assert!(!room
        .bob
        .stdout_so_far()
        .iter()
        .any(|l| l.contains("mallory2")));
}

#[test]
fn data_before_the_hello_is_a_protocol_error_and_reaches_nobody() {
    let mut room = Room::start(&[]);
    let code = room
        .rt
        .block_on(send_and_get_closed(&room.server, &say(1, "sneaky")));
    assert_eq!(code, PROTOCOL_ERROR);
    room.logged_close(PROTOCOL_ERROR);
    room.still_talking();
    for member in [&room.alice, &room.bob] {
        assert!(!member.stdout_so_far().iter().any(|l| l.contains("sneaky")));
    }
}

#[test]
fn a_client_that_never_says_hello_is_closed_at_the_deadline() {
    let mut room = Room::start(&["--hello-timeout", "1"]);
    let (silent, partial) = room.rt.block_on(async {
        // No stream at all: the server never even learns of one.
        let start = Instant::now();
        let silent = Raw::connect(&room.server).await;
        let code = silent.close_code().await;
        let silent = (code, start.elapsed());

        // Half a frame, then nothing (slowloris).
        let start = Instant::now();
        let partial = Raw::connect(&room.server).await;
        let mut s = partial.open().await;
        s.write(&[0, 0, 0, 9, 0]).await.expect("a partial frame");
        let code = partial.close_code().await;
        (silent, (code, start.elapsed()))
    });
    for (what, (code, took)) in [("silent", silent), ("partial", partial)] {
        assert_eq!(code, HELLO_TIMEOUT, "{what}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{what}: closed after {took:?}, the deadline is 1 s"
        );
    }
    room.logged_close(HELLO_TIMEOUT);
    room.still_talking();
}

#[test]
fn a_second_stream_is_never_granted_and_the_first_keeps_working() {
    let mut room = Room::start(&[]);
    room.rt.block_on(async {
        let raw = Raw::connect(&room.server).await;
        let mut s = raw.join("mallory").await;
        // The server grants one bidirectional stream and no unidirectional
        // one; QUIC flow control holds these opens forever.
        let second = tokio::time::timeout(Duration::from_secs(1), raw.conn.open_bi()).await;
        assert!(second.is_err(), "a second bidirectional stream was granted");
        let uni = tokio::time::timeout(Duration::from_secs(1), raw.conn.open_uni()).await;
        assert!(uni.is_err(), "a unidirectional stream was granted");
        s.write(&say(1, "still on the first stream"))
            .await
            .expect("the first stream still works");
        // History and join notices may come first; the ack must follow.
        loop {
            match s.next_msg().await {
                Some(ServerMsg::Ack { seq: 1 }) => break,
                Some(ServerMsg::Joined { .. } | ServerMsg::History { .. }) => {}
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    });
    room.alice.expect_out("<mallory> still on the first stream");
    room.bob.expect_out("<mallory> still on the first stream");
    room.still_talking();
}

#[test]
fn escape_sequences_in_messages_are_shown_not_obeyed() {
    let mut room = Room::start(&[]);
    // From a real client: clear screen, OSC 52 clipboard write, bell.
    room.alice
        .send_line("\u{1b}[2J\u{1b}]52;c;cm0gLXJmIH4=\u{7}after");
    let line = room.bob.expect(Stream::Out, "alice's escapes", |l| {
        l.starts_with("<alice> ") && l.contains("after")
    });
    assert_eq!(line, "<alice> ^[[2J^[]52;c;cm0gLXJmIH4=^Gafter");
    // From a raw client, with a right-to-left override and a zero-width
    // space as well.
    room.rt.block_on(async {
        let raw = Raw::connect(&room.server).await;
        let mut s = raw.join("mallory").await;
        s.write(&say(1, "\u{1b}]0;owned\u{7}\u{202E}gnp.exe\u{200B}!"))
            .await
            .expect("a say");
        // Wait for the ack so the message is in everyone's queue.
        for _ in 0..4 {
            if let Some(ServerMsg::Ack { .. }) | None = s.next_msg().await {
                break;
            }
        }
    });
    let line = room.alice.expect(Stream::Out, "mallory's escapes", |l| {
        l.starts_with("<mallory> ")
    });
    assert_eq!(line, "<mallory> ^[]0;owned^G<U+202E>gnp.exe<U+200B>!");
    for member in [&room.alice, &room.bob] {
        for l in member.stdout_so_far() {
            assert!(
                !l.chars()
                    .any(|c| c.is_control() || qchat_proto::text::is_bidi_control(c)),
                "raw control character reached stdout: {l:?}"
            );
        }
    }
    room.still_talking();
}

#[test]
fn names_with_escapes_bidi_or_invisible_characters_are_rejected() {
    let mut room = Room::start(&[]);
    for name in [
        "\u{1b}[31mroot",
        "ad\u{202E}nimda",
        "ali\u{200B}ce",
        "bob\u{7}",
        "\u{2067}x",
    ] {
        let (answer, code) = room.rt.block_on(async {
            let raw = Raw::connect(&room.server).await;
            let mut s = raw.open().await;
            let answer = s.hello(name).await;
            (answer, raw.close_code().await)
        });
        match answer {
            Some(ServerMsg::Rejected {
                reason: RejectReason::NameInvalid,
                ..
            }) => {}
            other => panic!("{name:?}: expected NameInvalid, got {other:?}"),
        }
        assert_eq!(code, REJECTED, "{name:?}");
    }
    room.still_talking();
    for member in [&room.alice, &room.bob] {
        assert!(!member
            .stdout_so_far()
            .iter()
            .any(|l| l.contains("joined") && !l.contains("bob joined")));
    }
}

#[test]
fn a_member_that_never_reads_is_disconnected_and_the_room_goes_on() {
    // No history, so the queue really is 16 frames (the server makes room
    // for a newcomer's welcome and the whole history in it).
    let mut room = Room::start(&["--queue", "16", "--history", "0"]);
    // Join, then never read again (the stream is kept, unread, to the end).
    let (raw, _unread) = room.rt.block_on(async {
        let raw = Raw::connect_with(&room.server, raw::tiny_window_transport()).await;
        let stream = raw.join("sloth").await;
        (raw, stream)
    });
    room.alice.expect_out("* sloth joined");
    let big = "x".repeat(3000);
    // One line at a time, each awaited at bob: a burst would also fill
    // alice's own 16-frame queue with acks faster than her writer drains
    // it, and she would be the one disconnected.
    for i in 0..40 {
        room.alice.send_line(&format!("{i} {big}"));
        room.bob.expect_out(&format!("<alice> {i} {big}"));
    }
    let code = room.rt.block_on(raw.close_code());
    assert_eq!(code, SLOW_READER, "reason: {}", raw.close_reason());
    let told = |l: &str| l.starts_with("* sloth left (");
    if !room.bob.stdout_so_far().iter().any(|l| told(l)) {
        room.bob.expect(Stream::Out, "sloth's departure", told);
    }
    room.still_talking();
}

#[test]
fn a_pasted_burst_is_smoothed_not_dropped() {
    // Awaits the server's rate limiter (--rate/--burst/--backlog).
    let mut room = Room::start(&["--rate", "2", "--burst", "2", "--backlog", "10"]);
    let start = Instant::now();
    for i in 0..6 {
        room.alice.send_line(&format!("pasted {i}"));
    }
    for i in 0..6 {
        room.bob.expect_out(&format!("<alice> pasted {i}"));
    }
    // Two go at once, the other four at two a second.
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "six lines at 2/s with a burst of 2 arrived in {:?}",
        start.elapsed()
    );
    assert!(!room
        .alice
        .stdout_so_far()
        .iter()
        .any(|l| l.starts_with("* notice")));
    room.still_talking();
}

#[test]
fn a_sustained_flood_gets_a_notice_then_is_disconnected() {
    // Awaits the server's rate limiter (--rate/--burst/--backlog).
    let mut room = Room::start(&["--rate", "2", "--burst", "2", "--backlog", "10"]);
    let (notices, code, reason) = room.rt.block_on(async {
        let raw = Raw::connect(&room.server).await;
        let s = raw.join("flood").await;
        let (mut send, mut recv) = (s.send, s.recv);
        // 20 a second against a rate of 2: the backlog fills in about half
        // a second, with the notice at its half-way point.
        let writer = async {
            for seq in 1..=200u64 {
                if send.write_all(&say(seq, "flood")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Never finish first: the reader, bounded by its deadline,
            // decides when this ends, so no notice is lost to the race.
            std::future::pending::<()>().await;
        };
        let reader = async {
            let mut decoder = qchat_proto::FrameDecoder::new(qchat_proto::limits::MAX_SERVER_FRAME);
            let mut notices = Vec::new();
            let deadline = Instant::now() + crate::util::WAIT;
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, decoder.read_frame(&mut recv)).await {
                    Ok(Ok(Some(f))) => {
                        if let Ok(ServerMsg::Notice { text }) = ServerMsg::decode(&f) {
                            notices.push(text);
                        }
                    }
                    _ => break,
                }
            }
            notices
        };
        let notices = tokio::select! {
            n = reader => n,
            () = writer => unreachable!("the writer never finishes"),
        };
        let code = raw.close_code().await;
        (notices, code, raw.close_reason())
    });
    assert!(
        notices.iter().any(|n| n.contains("too fast")),
        "no 'too fast' notice before the disconnect: {notices:?}"
    );
    assert_eq!(code, FLOOD, "reason: {reason}");
    assert!(!reason.is_empty(), "a FLOOD close carries a reason");
    room.alice
        .expect(Stream::Out, "the flooder's departure", |l| {
            l.starts_with("* flood left (")
        });
    room.still_talking();
}

#[test]
fn a_flood_as_fast_as_possible_is_disconnected() {
    // Awaits the server's rate limiter (--rate/--burst/--backlog).
    let mut room = Room::start(&["--rate", "2", "--burst", "2", "--backlog", "10"]);
    let code = room.rt.block_on(async {
        let raw = Raw::connect(&room.server).await;
        let mut s = raw.join("flood").await;
        let mut burst = Vec::new();
        for seq in 1..=2000u64 {
            burst.extend_from_slice(&say(seq, "flood"));
        }
        let _ = s.write(&burst).await;
        raw.close_code().await
    });
    assert_eq!(code, FLOOD);
    room.alice
        .expect(Stream::Out, "the flooder's departure", |l| {
            l.starts_with("* flood left (")
        });
    room.still_talking();
    // What was smoothed may have reached the others; the room as a whole
    // never saw more than the backlog allows.
    let seen = room
        .bob
        .stdout_so_far()
        .iter()
        .filter(|l| l.starts_with("<flood>"))
        .count();
    assert!(seen <= 12, "{seen} flood lines reached bob");
}

/// Whether a connection attempt was refused before its handshake (what the
/// accept gate does at a connection limit).
fn refused(attempt: Result<Raw, quinn::ConnectionError>) -> bool {
    matches!(
        attempt,
        Err(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

#[test]
fn silent_connections_from_one_address_cannot_keep_newcomers_out() {
    // A long deadline, so that only the budget can end the silent ones.
    let mut room = Room::start(&["--max-unjoined-per-ip", "2", "--hello-timeout", "60"]);
    room.rt.block_on(async {
        // Two connections that never say hello take the address's whole
        // budget for connections not yet in the room...
        let _silent = [
            Raw::connect(&room.server).await,
            Raw::connect(&room.server).await,
        ];
        // ...so a flood of more is refused before any handshake work, and
        // logged once, not once per attempt.
        for i in 0..20 {
            let attempt = Raw::try_connect(&room.server).await;
            assert!(refused(attempt), "attempt {i} was not refused");
        }
    });
    room.server
        .proc
        .expect(Stream::Err, "the refusal's log line", |l| {
            l.contains("connection refused") && l.contains("Unjoined")
        });
    // Members do not count against that budget: alice and bob, on the
    // same address, talk on.
    room.still_talking();
    let refusal_lines = room
        .server
        .proc
        .transcript()
        .lines()
        .filter(|l| l.contains("connection refused"))
        .count();
    assert_eq!(refusal_lines, 1, "{}", room.server.proc.transcript());
}

#[test]
fn a_joined_connection_frees_its_place_in_the_unjoined_budget() {
    let mut room = Room::start(&["--max-unjoined-per-ip", "1", "--hello-timeout", "60"]);
    room.rt.block_on(async {
        let first = Raw::connect(&room.server).await;
        assert!(refused(Raw::try_connect(&room.server).await));
        let mut s = first.open().await;
        assert!(matches!(
            s.hello("carol").await,
            Some(ServerMsg::Welcome { .. })
        ));
        let newcomer = Raw::try_connect(&room.server).await;
        assert!(newcomer.is_ok(), "still refused after the first joined");
    });
    room.alice.expect_out("* carol joined");
    room.still_talking();
}

#[test]
fn one_address_cannot_take_more_than_its_share_of_connections() {
    // alice and bob are two of the three; the third joins, the fourth is
    // refused at the handshake.
    let mut room = Room::start(&["--max-per-ip", "3"]);
    room.rt.block_on(async {
        let third = Raw::connect(&room.server).await;
        let _s = third.join("carol").await;
        assert!(refused(Raw::try_connect(&room.server).await));
    });
    room.still_talking();
}

#[test]
fn many_members_closing_at_once_leave_normally() {
    // Sixty, all from this one address: with twenty the teardown was too
    // quick to catch a departure being announced to a member whose
    // connection was already gone (then taken for a slow reader).
    let mut room = Room::start(&["--max-per-ip", "100"]);
    let names: Vec<String> = (0..60).map(|i| format!("quiet{i}")).collect();
    let members = room.rt.block_on(async {
        let mut members = Vec::new();
        for name in &names {
            let raw = Raw::connect(&room.server).await;
            let stream = raw.join(name).await;
            members.push((raw, stream));
        }
        members
    });
    for name in &names {
        room.alice.expect_out(&format!("* {name} joined"));
    }
    // Every one closes its connection with code 0 at the same moment, while
    // the others' departures are being announced to them.
    for (raw, _) in &members {
        raw.conn.close(0u8.into(), b"");
    }
    // In whatever order, each leaves once, with no reason: a normal close is
    // a normal leave.
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < names.len() {
        let line = room.alice.expect(Stream::Out, "the departures", |l| {
            l.starts_with("* quiet") && l.contains(" left")
        });
        let name = line.trim_start_matches("* ").trim_end_matches(" left");
        assert!(names.iter().any(|n| n == name), "{line}");
        assert!(gone.insert(name.to_string()), "{name} left twice");
    }
    room.still_talking();
    let log = room.server.proc.transcript();
    assert!(!log.contains("not reading"), "{log}");
    assert!(!log.contains("code=6"), "{log}");
    drop(members);
}

#[test]
fn finishing_the_sending_side_without_a_bye_is_a_leave() {
    let mut room = Room::start(&[]);
    let (rest, code) = room.rt.block_on(async {
        let raw = Raw::connect(&room.server).await;
        let mut s = raw.join("half").await;
        s.write(&say(1, "sent before the fin"))
            .await
            .expect("a say");
        s.send.finish().expect("the stream finishes");
        // What was sent is answered; then the server finishes its side too.
        let mut rest = Vec::new();
        while let Some(m) = s.next_msg().await {
            rest.push(m);
        }
        (rest, raw.close_code().await)
    });
    assert!(rest.contains(&ServerMsg::Ack { seq: 1 }), "{rest:?}");
    assert_eq!(code, 0, "a half-close is a normal leave");
    room.bob.expect_out("<half> sent before the fin");
    room.alice.expect_out("<half> sent before the fin");
    room.alice.expect_out("* half left");
    room.still_talking();
}
