//! Starting and stopping the server.

use crate::util::{join, Home, Server};

#[test]
fn sigterm_is_a_restart_that_members_come_back_from() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let addr = server.target();
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    alice.send_line("before the restart");
    bob.expect_out("<alice> before the restart");
    server.proc.signal("TERM");
    for p in [&mut alice, &mut bob] {
        p.expect(crate::util::Stream::Out, "the restart notice", |l| {
            l.starts_with("* server restarting")
        });
    }
    let status = server.proc.wait();
    assert_eq!(status.code(), Some(0), "{}", server.proc.transcript());

    // The same server comes back on the same address and data folder:
    // both resume, and nothing said before is shown twice.
    let _server = Server::start_on(&hs, &addr, &[]);
    for p in [&mut alice, &mut bob] {
        p.expect(crate::util::Stream::Out, "the reconnection", |l| {
            l.starts_with("* reconnected")
        });
    }
    bob.send_line("after the restart");
    alice.expect_out("<bob> after the restart");
    let said = bob
        .stdout_so_far()
        .iter()
        .filter(|l| *l == "<alice> before the restart")
        .count();
    assert_eq!(said, 1, "{}", bob.transcript());
    for p in [&mut alice, &mut bob] {
        p.close_stdin();
        assert!(p.wait().success(), "{}", p.transcript());
    }
}

#[test]
fn a_server_stopped_for_good_ends_the_session() {
    let (hs, ha) = (Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    // SIGINT is a person stopping the server, not a restart.
    server.proc.signal("INT");
    alice.expect(crate::util::Stream::Out, "the shutdown notice", |l| {
        l.starts_with("* server shutting down")
    });
    assert_eq!(alice.wait().code(), Some(3), "{}", alice.transcript());
    assert_eq!(server.proc.wait().code(), Some(0));
}

#[test]
fn sigint_exits_cleanly_and_closed_stdin_does_not_stop_the_server() {
    let hs = Home::new();
    let mut server = Server::start(&hs);
    // The harness gives the server a pipe for stdin; closing it must not
    // matter.
    server.proc.close_stdin();
    let mut alice = join(&Home::new(), &server, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    server.proc.signal("INT");
    assert_eq!(server.proc.wait().code(), Some(0));
}

#[test]
fn serve_prints_a_ready_to_copy_connect_line() {
    let hs = Home::new();
    let mut server = Server::start(&hs);
    let fp = server.fingerprint.clone();
    let line = server
        .proc
        .expect(crate::util::Stream::Out, "a connect line", |l| {
            l.trim_start().starts_with("qchat connect ")
        });
    assert!(line.contains(&server.addr.to_string()), "{line}");
    assert!(line.ends_with(&format!("--fingerprint {fp}")), "{line}");
}

#[test]
fn bracketed_ipv6_and_dns_names_reach_the_server_and_are_pinned_separately() {
    let hs = Home::new();
    // The default listen address is dual-stack; ask for port 0 on it.
    let server = Server::start_on(&hs, "[::]:0", &[]);
    let port = server.addr.port();
    let ha = Home::new();
    let mut v6 = crate::util::join_target(&ha, &format!("[::1]:{port}"), "six");
    // Held, not dropped: dropping the process would end the session.
    let _v4 = crate::util::join_target(&ha, &format!("localhost:{port}"), "four");
    v6.expect_out("* four joined");
    let pins = std::fs::read_to_string(ha.known_hosts()).expect("pins");
    assert!(pins.contains(&format!("[::1]:{port} ")), "{pins}");
    assert!(pins.contains(&format!("localhost:{port} ")), "{pins}");
}

#[test]
fn members_still_join_when_every_handshake_must_pass_a_retry() {
    // Threshold 0: every new address is asked to prove it receives our
    // packets (a QUIC Retry) before the server spends work on it.
    let hs = Home::new();
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--retry-threshold", "0"]);
    let mut alice = join(&Home::new(), &server, "alice");
    let mut bob = join(&Home::new(), &server, "bob");
    alice.expect_out("* bob joined");
    bob.send_line("through the retry");
    alice.expect_out("<bob> through the retry");
}
