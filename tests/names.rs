//! Names as an impersonator would try them: look-alikes of a member's name
//! are taken, and blank, hidden or frame-faking names are refused with the
//! rule they break.

use crate::util::{connect, join, Home, Server};

#[test]
fn look_alikes_of_a_members_name_are_refused_as_taken() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    for twin in [
        "\u{0430}\u{04CF}\u{0456}\u{0441}\u{0435}", // all-Cyrillic look-alike
        "\u{FF41}\u{FF4C}\u{FF49}\u{FF43}\u{FF45}", // fullwidth
        "al\u{0131}ce",                             // dotless ı
        "ALICE",
    ] {
        // Kept until the attempt is over: the client writes its key there
        // as it starts.
        let home = Home::new();
        let mut p = connect(&home, &server.target(), twin, &["--accept-new"]);
        let line = p.expect_err_contains("is taken");
        assert!(line.contains("\"alice\""), "{twin}: {line}");
        assert!(!p.wait().success(), "{twin}");
    }
    // The room saw none of them.
    let mut bob = join(&Home::new(), &server, "bob");
    alice.expect_out("* bob joined");
    assert!(
        !alice
            .stdout_so_far()
            .iter()
            .any(|l| l.contains("joined") && !l.contains("bob")),
        "{}",
        alice.transcript()
    );
    bob.close_stdin();
    bob.wait();
}

#[test]
fn blank_hidden_and_frame_faking_names_are_refused_with_the_rule() {
    let cases = [
        ("alice\u{2800}", "a blank character"),
        ("\u{2800}", "a blank character"),
        ("bob\u{E0041}", "a tag character"),
        ("bob\u{E000}", "a private-use character"),
        ("alice>", "which qchat puts around names"),
    ];
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    for (name, rule) in cases {
        let mut p = connect(&ha, &server.target(), name, &["--accept-new"]);
        let line = p.expect_err_contains("cannot use the name");
        assert!(line.contains(rule), "{name:?}: {line}");
        assert_eq!(p.wait().code(), Some(1), "{name:?}");
    }
}
