//! The client's saved resume point: a damaged one never stops a client.

use crate::util::{connect, Home, Server, Stream};

#[test]
fn a_corrupt_resume_point_is_a_warning_not_a_failure() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let dir = ha.path().join("resume");
    std::fs::create_dir_all(&dir).expect("resume dir");
    // The file is named after the server, unsafe characters as `_`.
    let file = dir.join(server.target().replace(':', "_"));
    std::fs::write(&file, b"\xff\xfe not a resume point \x00").expect("garbage");

    let mut bob = crate::util::join(&hb, &server, "bob");
    let mut alice = connect(&ha, &server.target(), "alice", &["--accept-new"]);
    alice.expect_err_contains("starting fresh");
    alice.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    alice.send_line("still here");
    bob.expect_out("<alice> still here");
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}

#[test]
fn no_resume_and_no_reconnect_are_accepted() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut bob = crate::util::join(&hb, &server, "bob");
    let mut alice = connect(
        &ha,
        &server.target(),
        "alice",
        &["--accept-new", "--no-resume", "--no-reconnect"],
    );
    alice.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    alice.send_line("fresh");
    bob.expect_out("<alice> fresh");
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}

/// A server killed outright and started again on the same port: the
/// clients notice, reconnect by themselves under the same names, and talk
/// again (against any server version: this one may not resume).
#[test]
fn clients_reconnect_to_a_server_restarted_on_the_same_port() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let target = server.target();
    let mut alice = crate::util::join(&ha, &server, "alice");
    let mut bob = crate::util::join(&hb, &server, "bob");
    alice.expect_out("* bob joined");

    server.proc.kill();
    let _server = Server::start_on(&hs, &target, &[]);
    for p in [&mut alice, &mut bob] {
        p.expect(Stream::Out, "the lost line", |l| {
            l.starts_with("* connection lost")
        });
        p.expect(Stream::Out, "the reconnecting line", |l| {
            l.starts_with("* reconnecting (attempt ")
        });
        p.expect(Stream::Out, "the connected line", |l| {
            l == "* connected" || l.starts_with("* reconnected")
        });
    }
    alice.send_line("after the restart");
    bob.expect_out("<alice> after the restart");
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}
