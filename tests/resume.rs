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
