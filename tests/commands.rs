//! The `/commands` and history, in plain mode, as a script would use them.

use crate::util::{connect, join, Home, Server, Stream};

fn room(n: usize) -> (Server, Vec<crate::util::Proc>, Vec<Home>) {
    let hs = Home::new();
    let server = Server::start(&hs);
    let names = ["alice", "bob", "carol"];
    let mut homes: Vec<Home> = (0..n).map(|_| Home::new()).collect();
    let mut members = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let p = join(home, &server, names[i]);
        members.push(p);
        for earlier in members.iter_mut().take(i) {
            earlier.expect_out(&format!("* {} joined", names[i]));
        }
    }
    // The server's home must outlive the server process.
    homes.push(hs);
    (server, members, homes)
}

#[test]
fn msg_reaches_only_its_target_and_is_shown_to_both() {
    let (_server, mut m, _homes) = room(3);
    m[0].send_line("/msg BOB meet me at noon");
    m[1].expect_out("[alice -> bob] meet me at noon");
    // The sender's copy keeps the name as she addressed (and signed) it.
    m[0].expect_out("[alice -> BOB] meet me at noon");
    // carol hears what comes after, and never the private line.
    m[0].send_line("public again");
    m[2].expect_out("<alice> public again");
    assert!(!m[2].stdout_so_far().iter().any(|l| l.contains("noon")));
}

#[test]
fn msg_to_nobody_is_refused_with_a_reason() {
    let (_server, mut m, _homes) = room(1);
    m[0].send_line("/msg nobody hello?");
    m[0].expect_err_contains("nobody called \"nobody\"");
}

#[test]
fn me_nick_and_who() {
    let (_server, mut m, _homes) = room(2);
    m[0].send_line("/me waves");
    m[1].expect_out("* alice waves");
    m[0].send_line("/nick alicia");
    m[1].expect_out("* alice is now known as alicia");
    m[0].expect_out("* alice is now known as alicia");
    m[0].send_line("hi again");
    m[1].expect_out("<alicia> hi again");
    m[1].send_line("/nick ALICIA");
    m[1].expect_err_contains("/nick failed: the name \"ALICIA\" is taken");
    m[1].send_line("/who");
    let line = m[1].expect(Stream::Out, "the member list", |l| {
        l.starts_with("* members (2): ")
    });
    assert!(line.contains("alicia ") && line.contains("bob "), "{line}");
    // Members do not see addresses.
    assert!(!line.contains("127.0.0.1"), "{line}");
}

#[test]
fn quit_with_a_reason_is_shown_to_the_others() {
    let (_server, mut m, _homes) = room(2);
    m[1].send_line("/quit gotta go");
    assert_eq!(m[1].wait().code(), Some(0));
    m[0].expect_out("* bob left (gotta go)");
}

#[test]
fn mistakes_get_one_line_of_explanation() {
    let (_server, mut m, _homes) = room(1);
    m[0].send_line("/dance");
    m[0].expect_err_contains("unknown command /dance");
    m[0].send_line("/msg bob");
    m[0].expect_err_contains("usage: /msg NAME TEXT");
    // Members cannot use operator commands...
    m[0].send_line("/kick alice");
    m[0].expect_err_contains("/kick failed: only operators can kick");
    m[0].send_line("/help");
    m[0].expect(Stream::Out, "the help", |l| {
        l.starts_with("* /msg NAME TEXT")
    });
    // ...and are not shown them. Checked once the process has exited and
    // every line of the help has been read, so that a `/kick` line listed
    // after the first ones cannot slip past.
    m[0].close_stdin();
    assert_eq!(m[0].wait().code(), Some(0), "{}", m[0].transcript());
    let help: Vec<String> = m[0]
        .stdout_so_far()
        .into_iter()
        .filter(|l| l.starts_with("* /"))
        .collect();
    assert!(help.iter().any(|l| l.starts_with("* /quit")), "{help:?}");
    assert!(!help.iter().any(|l| l.contains("/kick")), "{help:?}");
}

#[test]
fn a_long_message_is_refused_not_truncated() {
    let (_server, mut m, _homes) = room(2);
    let long = "x".repeat(5000);
    m[0].send_line(&long);
    m[0].expect_err_contains("longer than the limit of 4096 bytes");
    m[0].send_line("short");
    m[1].expect_out("<alice> short");
    assert!(!m[1].stdout_so_far().iter().any(|l| l.contains("xxxx")));
}

#[test]
fn history_is_replayed_on_join_and_marked() {
    let (server, mut m, _homes) = room(2);
    // A session's messages are handled in order, so once bob's line is
    // through, so is the private replay his client asked for on joining:
    // alice's private message below then reaches him live, never inside
    // that replay (where it would be marked as history).
    m[1].send_line("ready");
    m[0].expect_out("<bob> ready");
    m[0].send_line("first");
    m[0].send_line("/me arrives early");
    m[0].send_line("/msg bob private, never replayed");
    m[1].expect_out("[alice -> bob] private, never replayed");
    let home = Home::new();
    let mut carol = join(&home, &server, "carol");
    carol.expect_out("[history] <alice> first");
    carol.expect_out("[history] * alice arrives early");
    m[0].send_line("live now");
    carol.expect_out("<alice> live now");
    assert!(!carol
        .stdout_so_far()
        .iter()
        .any(|l| l.contains("never replayed")));
}

#[test]
fn history_can_be_turned_off() {
    let hs = Home::new();
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--history", "0"]);
    let mut alice = join(&Home::new(), &server, "alice");
    alice.send_line("before");
    let mut bob = join(&Home::new(), &server, "bob");
    alice.expect_out("* bob joined");
    alice.send_line("after");
    bob.expect_out("<alice> after");
    assert!(!bob.stdout_so_far().iter().any(|l| l.contains("before")));
}

#[test]
fn the_operator_chats_kicks_and_sees_addresses_from_standard_input() {
    let hs = Home::new();
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &["--name", "host"]);
    server
        .proc
        .expect(Stream::Out, "the operator joining", |l| {
            l.starts_with("* joined the room as host")
        });
    let ha = Home::new();
    let mut alice = join(&ha, &server, "alice");
    alice.expect_out("* in the room: host, alice");
    server.proc.expect_out("* alice joined");
    server.proc.send_line("welcome, alice");
    alice.expect_out("<host> welcome, alice");
    alice.send_line("thanks");
    server.proc.expect_out("<alice> thanks");
    server.proc.send_line("/who");
    let who = server.proc.expect(Stream::Out, "the member list", |l| {
        l.starts_with("* members (2): ")
    });
    assert!(
        who.contains("127.0.0.1:") && who.contains("(operator)"),
        "{who}"
    );
    server.proc.send_line("/kick alice spamming");
    alice.expect_out("* kicked by host: spamming");
    assert_eq!(alice.wait().code(), Some(3), "{}", alice.transcript());
    server
        .proc
        .expect_out("* alice left (kicked by host: spamming)");

    // End of input: the operator leaves, the server keeps serving.
    server.proc.close_stdin();
    // Kept while bob runs: the client writes its key there as it starts.
    let hb = Home::new();
    let mut bob = connect(&hb, &server.target(), "bob", &["--accept-new"]);
    bob.expect_out("* in the room: bob");
}

#[test]
fn a_pasted_burst_is_smoothed_and_nothing_is_lost() {
    let (_server, mut m, _homes) = room(2);
    // Default limits: 10 at once, then 5 per second from the backlog.
    for i in 1..=25 {
        m[1].send_line(&format!("pasted line {i}"));
    }
    m[1].close_stdin();
    for i in 1..=25 {
        m[0].expect_out(&format!("<bob> pasted line {i}"));
    }
    assert_eq!(m[1].wait().code(), Some(0), "{}", m[1].transcript());
    assert!(!m[1].transcript().contains("too fast"));
}
