//! Limits from the user's side: flags that contradict each other and bad
//! addresses are usage errors, and a line too long for any server is refused
//! by the client instead of costing its author the connection.

use crate::util::{join, join_target, Home, Server};

#[test]
fn a_line_too_long_for_a_frame_is_refused_locally_and_its_author_stays() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    bob.send_line(&"x".repeat(20 * 1024));
    let line = bob.expect_err_contains("message not sent");
    assert!(line.contains("20480 bytes"), "{line}");
    // Bob has a key and the server speaks version 4: his lines are signed,
    // and the signature takes its room in the frame.
    assert!(
        line.contains(&qchat_proto::limits::MAX_SIGNED_SEND_BYTES.to_string()),
        "{line}"
    );
    // Still connected: the next line is delivered, and nobody left.
    bob.send_line("still here");
    alice.expect_out("<bob> still here");
    assert!(!alice.stdout_so_far().iter().any(|l| l.contains("left")));
    assert!(!alice.stdout_so_far().iter().any(|l| l.contains("xxxx")));
}

fn usage_error(home: &Home, args: &[&str], needle: &str) {
    let out = home.command().args(args).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

#[test]
fn contradicting_limits_are_usage_errors() {
    let home = Home::new();
    usage_error(
        &home,
        &[
            "serve",
            "--headless",
            "--idle-timeout",
            "2",
            "--keep-alive",
            "3",
        ],
        "--keep-alive",
    );
    usage_error(
        &home,
        &["serve", "--headless", "--max-message", "20000"],
        "raise --max-frame to at least 20149",
    );
    usage_error(
        &home,
        &["serve", "--headless", "--queue", "16"],
        "--history",
    );
    // Nothing was created: the flags were checked before the identity.
    assert!(!home.cert_pem().exists());
}

#[test]
fn a_bad_port_is_a_usage_error() {
    let home = Home::new();
    usage_error(
        &home,
        &["connect", "127.0.0.1:99999", "--name", "alice"],
        "the port must be a number from 1 to 65535",
    );
    usage_error(
        &home,
        &["known-hosts", "remove", "example.org:0"],
        "not a valid server address",
    );
}

#[test]
fn a_short_idle_timeout_gets_a_matching_keep_alive() {
    // Without --keep-alive the interval follows a short idle timeout, so a
    // quiet member is not dropped.
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--idle-timeout", "1"]);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join_target(&hb, &server.target(), "bob");
    alice.expect_out("* bob joined");
    // The quiet spell is what is tested, not a wait for an event: three
    // idle timeouts in which nobody sends anything.
    std::thread::sleep(std::time::Duration::from_secs(3));
    alice.send_line("anyone?");
    bob.expect_out("<alice> anyone?");
    assert!(!alice.stdout_so_far().iter().any(|l| l.contains("bob left")));
}
