//! Starting and stopping the server.

use crate::util::{join, Home, Server};

#[test]
fn sigterm_tells_everyone_and_exits_cleanly() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    server.proc.signal("TERM");
    for p in [&mut alice, &mut bob] {
        p.expect(crate::util::Stream::Out, "the shutdown notice", |l| {
            l.starts_with("* server shutting down")
        });
        let status = p.wait();
        assert_eq!(status.code(), Some(3), "{}", p.transcript());
    }
    let status = server.proc.wait();
    assert_eq!(status.code(), Some(0), "{}", server.proc.transcript());
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
