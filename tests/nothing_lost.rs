//! Nothing lost: a server that crashes, freezes or restarts, and a client
//! whose address changes, cost no words — every acknowledged message
//! reaches everyone exactly once, in the room's order.

use std::time::{Duration, Instant};

use qchat_proto::{ClientMsg, ServerMsg, PROTOCOL_VERSION};

use crate::raw::{runtime, Raw};
use crate::udp_relay::UdpRelay;
use crate::util::{join, join_target, Home, Proc, Server, Stream, WAIT};

/// The chat lines (`<from> text`) a plain client printed so far, in order,
/// live or replayed (`[history] <from> text`).
fn said_by(p: &Proc, from: &str) -> Vec<String> {
    let prefix = format!("<{from}> ");
    p.stdout_so_far()
        .iter()
        .map(|l| l.strip_prefix("[history] ").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// Asserts the chat lines `p` printed from `from` are exactly `want`.
fn assert_said(p: &Proc, from: &str, want: &[&str]) {
    assert_eq!(said_by(p, from), want, "{}", p.transcript());
}

/// Waits until `p` has printed the chat line `<from> text`, live or
/// replayed.
fn expect_said(p: &mut Proc, from: &str, text: &str) {
    // A resumed member's replay comes before its `* reconnected` line, so
    // waiting for that line may already have read this one.
    if said_by(p, from).iter().any(|t| t == text) {
        return;
    }
    let live = format!("<{from}> {text}");
    let replayed = format!("[history] {live}");
    p.expect(Stream::Out, &format!("{live:?}"), |l| {
        l == live || l == replayed
    });
}

/// Asserts `lines` is exactly `1..=n` as text, once each, in order.
fn assert_exactly_once_in_order(lines: &[String], n: u32, who: &Proc) {
    let want: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(
        lines,
        &want[..],
        "{} did not see 1..={n} exactly once, in order\n--- transcript ---\n{}",
        who.label,
        who.transcript()
    );
}

/// Asserts none of `p`'s output lines so far contains any of `needles`.
fn assert_no_line_with(p: &Proc, needles: &[&str]) {
    assert!(
        !p.stdout_so_far()
            .iter()
            .any(|l| needles.iter().any(|n| l.contains(n))),
        "{}",
        p.transcript()
    );
}

/// Waits for a `* ` line that contains `needle`.
fn expect_star(p: &mut Proc, needle: &str) -> String {
    p.expect(Stream::Out, &format!("a `* ` line with {needle:?}"), |l| {
        l.starts_with("* ") && l.contains(needle)
    })
}

#[test]
fn a_server_crash_loses_nothing_and_duplicates_nothing() {
    let (hs, ha, hb, hc) = (Home::new(), Home::new(), Home::new(), Home::new());
    // No flood control, so alice sends at full speed; history long enough
    // for a latecomer to see all 200.
    let flags = ["--rate", "0", "--history", "250"];
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &flags);
    let addr = server.target();
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");

    for i in 1..=200 {
        alice.send_line(&i.to_string());
    }
    // Crash in the middle: once bob has some but (most likely) not all.
    expect_said(&mut bob, "alice", "20");
    server.proc.kill();
    // Back at once, as a service manager would restart it: the new process
    // resets the old connections, so the clients notice without waiting
    // for their idle timeout.
    server = Server::start_on(&hs, &addr, &flags);
    expect_star(&mut alice, "connection lost");
    expect_star(&mut alice, "reconnected");
    expect_said(&mut bob, "alice", "200");
    // End of input: alice exits only once everything she typed was
    // acknowledged.
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
    assert_exactly_once_in_order(&said_by(&bob, "alice"), 200, &bob);

    // A latecomer sees the same 200 in the same order, from the log.
    let mut carol = join(&hc, &server, "carol");
    expect_said(&mut carol, "alice", "200");
    assert_exactly_once_in_order(&said_by(&carol, "alice"), 200, &carol);

    // And the ids the log gave them are strictly increasing.
    let rt = runtime();
    let ids = rt.block_on(async {
        let raw = Raw::connect(&server).await;
        let mut s = raw.open().await;
        let hello = ClientMsg::HelloV3 {
            version: PROTOCOL_VERSION,
            name: "dave".into(),
            instance: [7; 16],
            resume: None,
        };
        s.write(&hello.to_frame()).await.expect("hello written");
        let mut ids = Vec::new();
        loop {
            match s.next_msg().await {
                Some(ServerMsg::WelcomeV3 { .. }) => {}
                // Alice's real client signs her lines: signed history.
                Some(
                    ServerMsg::HistoryV3 { id, from, .. }
                    | ServerMsg::HistorySigned { id, from, .. },
                ) if from == "alice" => ids.push(id),
                Some(ServerMsg::HistoryV3 { .. } | ServerMsg::HistorySigned { .. }) => {}
                Some(ServerMsg::Replayed { .. }) => break ids,
                other => panic!("unexpected while replaying: {other:?}"),
            }
        }
    });
    assert_eq!(ids.len(), 200, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[test]
fn a_frozen_server_costs_no_words_and_no_leave_notices() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    alice.send_line("before");
    expect_said(&mut bob, "alice", "before");

    let before_freeze = [alice.stdout_so_far().len(), bob.stdout_so_far().len()];
    server.proc.signal("STOP");
    // The client notices the silence long before its idle timeout…
    expect_star(&mut alice, "no answer");
    // …and what is typed meanwhile waits for the connection.
    alice.send_line("during");
    expect_star(&mut alice, "connection lost");
    let frozen_at = Instant::now();
    // 15 s frozen in all (the scenario), counted from the STOP.
    std::thread::sleep(Duration::from_secs(15).saturating_sub(frozen_at.elapsed()));
    server.proc.signal("CONT");

    expect_star(&mut alice, "reconnected");
    expect_star(&mut bob, "reconnected");
    expect_said(&mut bob, "alice", "during");
    alice.send_line("after");
    expect_said(&mut bob, "alice", "after");
    assert_said(&bob, "alice", &["before", "during", "after"]);
    // Both came back within the grace period: nobody left or joined.
    for (p, from) in [(&alice, before_freeze[0]), (&bob, before_freeze[1])] {
        assert!(
            !p.stdout_so_far()[from..]
                .iter()
                .any(|l| l.ends_with(" left") || l.contains(" left (") || l.ends_with(" joined")),
            "{}",
            p.transcript()
        );
    }
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}

/// A client behind a relay whose server-facing port changes keeps its
/// session: same connection, no reconnect, nothing lost, and the server
/// sees the new address.
#[test]
fn a_client_whose_address_changes_keeps_its_session() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &["--name", "host"]);
    server
        .proc
        .expect(Stream::Out, "the operator joining", |l| {
            l.starts_with("* joined the room as host")
        });
    let mut relay = UdpRelay::start(server.addr);
    let mut alice = join_target(&ha, &relay.addr().to_string(), "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.send_line("one");
    expect_said(&mut bob, "alice", "one");

    let old = relay.server_side_addr();
    let new = relay.swap();
    assert_ne!(old, new);
    alice.send_line("two");
    expect_said(&mut bob, "alice", "two");
    bob.send_line("three");
    expect_said(&mut alice, "bob", "three");

    // The operator's member list shows alice at her new address.
    let deadline = Instant::now() + WAIT;
    loop {
        server.proc.send_line("/who");
        let who = server.proc.expect(Stream::Out, "the member list", |l| {
            l.starts_with("* members (")
        });
        if who.contains(&new.to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never showed alice at {new}: {who}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_no_line_with(&alice, &["connection lost", "reconnected"]);
    assert_said(&bob, "alice", &["one", "two"]);
}

/// With migration disabled on the server, the same change of address costs
/// the connection — but the client reconnects and still loses nothing.
#[test]
fn without_migration_an_address_change_is_a_reconnect_that_loses_nothing() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--no-migration"]);
    let mut relay = UdpRelay::start(server.addr);
    let mut alice = join_target(&ha, &relay.addr().to_string(), "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.send_line("one");
    expect_said(&mut bob, "alice", "one");

    relay.swap();
    alice.send_line("two");
    expect_star(&mut alice, "connection lost");
    expect_star(&mut alice, "reconnected");
    expect_said(&mut bob, "alice", "two");
    assert_said(&bob, "alice", &["one", "two"]);
}

/// A client that moves to a fresh socket by itself (the hidden `/rebind`)
/// keeps talking on the same session.
#[test]
fn a_client_that_rebinds_its_socket_keeps_its_session() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.send_line("one");
    expect_said(&mut bob, "alice", "one");
    alice.send_line("/rebind");
    alice.send_line("two");
    expect_said(&mut bob, "alice", "two");
    bob.send_line("three");
    expect_said(&mut alice, "bob", "three");
    assert_no_line_with(&alice, &["connection lost"]);
}

/// A 150-line paste into plain mode: the client paces itself to the rate
/// the server announced, so everything arrives and nobody is disconnected
/// for flooding.
#[test]
fn a_long_paste_is_delivered_in_full_without_a_flood_disconnect() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    // A fast rate keeps the test short; a backlog smaller than the paste
    // means a client that did not pace itself would be cut off.
    let server = Server::start_on(
        &hs,
        "127.0.0.1:0",
        &["--rate", "50", "--burst", "10", "--backlog", "20"],
    );
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    for i in 1..=150 {
        alice.send_line(&i.to_string());
    }
    alice.close_stdin();
    expect_said(&mut bob, "alice", "150");
    assert!(alice.wait().success(), "{}", alice.transcript());
    assert_exactly_once_in_order(&said_by(&bob, "alice"), 150, &bob);
    assert_no_line_with(&alice, &["flood", "connection lost"]);
}

/// A client restarted by hand catches up from where it left off: its
/// resume point is kept in its home.
#[test]
fn a_client_restarted_by_hand_catches_up() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.send_line("seen by bob");
    expect_said(&mut bob, "alice", "seen by bob");
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());
    alice.send_line("said while bob was away");
    alice.expect(Stream::Out, "bob's departure", |l| {
        l.starts_with("* bob left")
    });

    let mut bob = join(&hb, &server, "bob");
    expect_said(&mut bob, "alice", "said while bob was away");
    // Resumed: what bob had already displayed is not shown again.
    assert_said(&bob, "alice", &["said while bob was away"]);
}
