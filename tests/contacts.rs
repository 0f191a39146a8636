//! People verify each other: `/verify NAME FP` checks FP against the keys
//! the server says the name has and stores the contact; the name then
//! carries ✓ on its lines and in the member list; a contact whose keys
//! change is flagged once, loudly, with both fingerprints, and loses the
//! mark until verified again; `qchat contacts` manages the file with the
//! `known_hosts` rules.

use crate::people::{join_after_expiry, my_fingerprint, visit};
use crate::util::{join, Home, Proc, Server, Stream};

/// Waits for `who` to say it stored `name` as a contact.
fn verified(who: &mut Proc, name: &str) -> String {
    who.expect(Stream::Out, "the verified line", |l| {
        l.starts_with(&format!("* verified {name} "))
    })
}

fn contacts(home: &Home, args: &[&str]) -> std::process::Output {
    home.command()
        .arg("contacts")
        .args(args)
        .output()
        .expect("run qchat contacts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn verify_puts_the_mark_on_lines_and_in_the_list_and_refuses_a_wrong_key() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    let alice_fp = my_fingerprint(&ha, None);
    bob.send_line("/whois alice");
    let line = bob.expect(Stream::Out, "alice's whois", |l| {
        l.starts_with("* alice: registered to key")
    });
    assert!(line.contains(&alice_fp), "{line}");

    // A contacts file bob's qchat cannot write (a newer version): the
    // error says so and the file is left as it was.
    let file = hb.path().join("contacts");
    std::fs::write(&file, "# qchat contacts v9\nsomeone's data\n").expect("write");
    bob.send_line(&format!("/verify alice {alice_fp}"));
    let line = bob.expect_err_contains("/verify failed");
    assert!(line.contains("upgrade qchat"), "{line}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "# qchat contacts v9\nsomeone's data\n"
    );
    std::fs::remove_file(&file).expect("remove");

    // Bob's own key is not alice's: refused, nothing stored, no mark.
    bob.send_line(&format!("/verify alice {}", my_fingerprint(&hb, None)));
    let line = bob.expect_err_contains("/verify failed");
    assert!(line.contains("is not alice's key"), "{line}");
    assert!(line.contains(&alice_fp), "{line}");
    assert!(!file.exists());
    alice.send_line("before");
    bob.expect_out("<alice> before");

    // The read-aloud form, as alice would read it out over the phone.
    bob.send_line(&format!(
        "/verify alice {}",
        my_fingerprint(&ha, Some("--read-aloud"))
    ));
    let line = verified(&mut bob, "alice");
    assert!(line.contains(&alice_fp), "{line}");
    alice.send_line("hello");
    bob.expect_out("<alice ✓> hello");
    alice.send_line("/me waves");
    bob.expect_out("* alice ✓ waves");
    alice.send_line("/msg bob psst");
    bob.expect_out("[alice ✓ -> bob] psst");
    bob.send_line("/who");
    let line = bob.expect(Stream::Out, "the member list", |l| {
        l.starts_with("* members (2):")
    });
    assert!(line.contains("alice ✓ "), "{line}");
    assert!(!line.contains("bob ✓"), "{line}");

    // Stored with the known_hosts rules, and listed.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(hb.path().join("contacts")).expect("contacts file");
        assert_eq!(meta.mode() & 0o777, 0o600);
    }
    let out = contacts(&hb, &["list"]);
    assert!(out.status.success(), "{out:?}");
    let listed = text(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains(&alice_fp)),
        "{listed}"
    );

    // A fresh client of bob's checks alice when it joins (the roster)
    // without being asked. Bob's own /whois may overtake that check, but
    // its answer counts the same, so once its line is out the mark is
    // decided either way.
    bob.close_stdin();
    bob.wait();
    let mut bob = join(&hb, &server, "bob");
    bob.send_line("/whois alice");
    bob.expect(Stream::Out, "alice's whois", |l| {
        l.starts_with("* alice: registered to key")
    });
    bob.send_line("/who");
    let line = bob.expect(Stream::Out, "the member list", |l| {
        l.starts_with("* members (2):")
    });
    assert!(line.contains("alice ✓ "), "{line}");
    alice.send_line("marked");
    bob.expect_out("<alice ✓> marked");
    for p in [&mut alice, &mut bob] {
        p.close_stdin();
        p.wait();
    }
}

#[test]
fn a_contact_with_another_key_is_flagged_once_with_both_and_loses_the_mark() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--name-expiry", "2s"]);
    visit(&ha, &server, "alice");
    let old_fp = my_fingerprint(&ha, None);
    let mut bob = join(&hb, &server, "bob");
    // Alice is away: her registered key is what /verify checks.
    bob.send_line(&format!("/verify alice {old_fp}"));
    verified(&mut bob, "alice");

    let out = ha
        .command()
        .args(["identity", "new", "--yes"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let new_fp = my_fingerprint(&ha, None);
    assert_ne!(new_fp, old_fp);

    let mut alice = join_after_expiry(&ha, &server, "alice", &[]);

    let warning = bob.expect(Stream::Out, "the loud flag", |l| {
        l.starts_with("* WARNING: alice")
    });
    assert!(warning.contains(&old_fp), "{warning}");
    assert!(warning.contains(&new_fp), "{warning}");
    assert!(warning.contains("/verify alice"), "{warning}");
    // Signed by a key bob never verified: not shown as hers.
    alice.send_line("hi");
    bob.expect_out("* WARNING: forged line claiming to be alice: hi");

    // She leaves and comes back: not said again, still no mark. Bob's own
    // /whois is answered after the check, so its line means the check is in.
    alice.close_stdin();
    alice.wait();
    let mut alice = join(&ha, &server, "alice");
    bob.send_line("/whois alice");
    bob.expect(Stream::Out, "alice's whois", |l| {
        l.starts_with("* alice: registered to key")
    });
    let warnings = bob
        .stdout_so_far()
        .iter()
        .filter(|l| l.starts_with("* WARNING: alice"))
        .count();
    assert_eq!(warnings, 1, "{}", bob.transcript());
    alice.send_line("still me");
    bob.expect_out("* WARNING: forged line claiming to be alice: still me");

    // Verified again (after checking with her): the mark is back.
    bob.send_line(&format!("/verify alice {new_fp}"));
    let line = verified(&mut bob, "alice");
    assert!(line.contains(&old_fp), "names what it replaced: {line}");
    alice.send_line("thanks");
    bob.expect_out("<alice ✓> thanks");
    for p in [&mut alice, &mut bob] {
        p.close_stdin();
        p.wait();
    }
}

#[test]
fn a_guest_under_a_verified_name_is_flagged() {
    let (hs, ha, hb, hg) = (Home::new(), Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--name-expiry", "2s"]);
    visit(&ha, &server, "alice");
    let fp = my_fingerprint(&ha, None);
    let mut bob = join(&hb, &server, "bob");
    bob.send_line(&format!("/verify alice {fp}"));
    verified(&mut bob, "alice");
    let mut guest = join_after_expiry(&hg, &server, "alice", &["--guest"]);
    let warning = bob.expect(Stream::Out, "the loud flag", |l| {
        l.starts_with("* WARNING: alice is held by a guest")
    });
    assert!(warning.contains(&fp), "{warning}");
    // Unsigned, under a verified contact's name: never shown as hers.
    guest.send_line("it is me, honest");
    bob.expect_out("* WARNING: forged line claiming to be alice: it is me, honest");
    for p in [&mut guest, &mut bob] {
        p.close_stdin();
        p.wait();
    }
}

#[test]
fn contacts_list_remove_verify_and_a_damaged_file_loses_nothing() {
    let h = Home::new();
    let fp = my_fingerprint(&Home::new(), None);
    let other = my_fingerprint(&Home::new(), None);
    let file = h.path().join("contacts");

    let out = contacts(&h, &["list"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("no contacts"), "{out:?}");
    assert!(!file.exists(), "listing creates nothing");

    let out = contacts(&h, &["verify", "alice", "--fingerprint", &fp]);
    assert!(out.status.success(), "{out:?}");
    // Another key for an existing contact is refused, not merged.
    let out = contacts(&h, &["verify", "ALICE", "--fingerprint", &other]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&fp) && err.contains(&other), "{err}");

    let out = contacts(&h, &["list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["contacts"][0]["name"], "alice");
    assert_eq!(json["contacts"][0]["fingerprints"][0], fp.as_str());

    // Hand damage: one bad line is a warning naming it, kept on rewrite.
    let before = std::fs::read_to_string(&file).expect("read");
    let damaged = format!("{before}this line is junk\n");
    std::fs::write(&file, &damaged).expect("write");
    let out = contacts(&h, &["list"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("contacts:4:"), "{out:?}");
    assert!(text(&out.stdout).contains(&fp), "{out:?}");
    let out = contacts(&h, &["verify", "bob", "--fingerprint", &other]);
    assert!(out.status.success(), "{out:?}");
    let now = std::fs::read_to_string(&file).expect("read");
    assert!(now.starts_with(&damaged), "{now}");

    let out = contacts(&h, &["remove", "Alice"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains(&fp), "{out:?}");
    let out = contacts(&h, &["remove", "alice"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not a contact"), "{out:?}");

    // A file from a newer qchat: a clear error, and the file untouched.
    std::fs::write(&file, "# qchat contacts v9\nwhatever\n").expect("write");
    for args in [
        &["list"][..],
        &["verify", "carol", "--fingerprint", fp.as_str()][..],
    ] {
        let out = contacts(&h, args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("# qchat contacts v1"), "{err}");
        assert!(err.contains("upgrade qchat"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "# qchat contacts v9\nwhatever\n"
    );
}
