//! Pinning: first use, reconnecting, and a different server at the same
//! address.

use crate::util::{connect, join, Home, Server, Stream};

#[test]
fn a_restarted_server_keeps_its_key_and_a_pinned_client_reconnects_without_flags() {
    let (hs, ha) = (Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let first_fp = server.fingerprint.clone();
    let mut alice = join(&ha, &server, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    let pins = std::fs::read_to_string(ha.known_hosts()).expect("known_hosts written");
    assert!(pins.contains(&first_fp), "{pins}");

    let port = server.addr.port();
    server.proc.signal("TERM");
    assert!(server.proc.wait().success());
    let server = Server::start_on(&hs, &format!("127.0.0.1:{port}"), &[]);
    assert_eq!(server.fingerprint, first_fp);

    // No --accept-new, no --fingerprint, no terminal: only the pin can
    // make this work.
    let mut again = connect(&ha, &server.target(), "alice", &[]);
    again.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
}

#[test]
fn an_unknown_server_without_a_terminal_is_refused_with_advice() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut p = connect(&ha, &server.target(), "alice", &[]);
    let line = p.expect_err_contains("--fingerprint");
    assert!(line.contains(&server.fingerprint), "{line}");
    assert!(!p.wait().success());
    assert!(
        !ha.known_hosts().exists()
            || !std::fs::read_to_string(ha.known_hosts())
                .expect("read")
                .contains("SHA256")
    );
}

#[test]
fn a_fingerprint_given_out_of_band_is_checked() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    // Any spelling: lower-case hex with colons.
    let hex = hs
        .command()
        .args(["fingerprint", "--hex"])
        .output()
        .expect("run");
    let hex = String::from_utf8(hex.stdout)
        .expect("utf-8")
        .trim()
        .to_lowercase();
    let mut ok = connect(&ha, &server.target(), "alice", &["--fingerprint", &hex]);
    ok.expect(Stream::Out, "the connected line", |l| {
        l.contains("(verified)")
    });

    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut bad = connect(&hb, &server.target(), "bob", &["--fingerprint", wrong]);
    bad.expect_err_contains("KEY HAS CHANGED");
    assert!(!bad.wait().success());
}

#[test]
fn a_different_server_on_the_same_address_is_refused_and_nothing_reaches_its_room() {
    let (hs1, hs2, ha, hb) = (Home::new(), Home::new(), Home::new(), Home::new());
    let mut first = Server::start(&hs1);
    let mut alice = join(&ha, &first, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    let port = first.addr.port();
    first.proc.signal("TERM");
    assert!(first.proc.wait().success());

    // Another key on the same address: what an attacker in the middle
    // would present.
    let second = Server::start_on(&hs2, &format!("127.0.0.1:{port}"), &[]);
    assert_ne!(second.fingerprint, first.fingerprint);
    let mut bob = join(&hb, &second, "bob");

    let mut again = connect(&ha, &second.target(), "alice", &["--accept-new"]);
    again.send_line("secret for the real server");
    again.close_stdin();
    let warning = again.expect_err_contains("KEY HAS CHANGED");
    assert!(warning.contains("WARNING"));
    again.expect_err_contains(&first.fingerprint);
    again.expect_err_contains(&second.fingerprint);
    again.expect_err_contains("qchat known-hosts replace");
    assert!(!again.wait().success());

    // bob's room never heard of alice.
    let mut carol = join(&Home::new(), &second, "carol");
    bob.expect_out("* carol joined");
    bob.send_line("anyone?");
    carol.expect_out("<bob> anyone?");
    assert!(!bob
        .stdout_so_far()
        .iter()
        .any(|l| l.contains("alice") || l.contains("secret")));
}
