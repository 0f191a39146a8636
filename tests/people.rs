//! Every person has a key, and names belong to keys: impersonation while
//! the owner is away is refused with the rule that applies, `/whois` shows
//! the very fingerprint the owner sees at home, guests keep to unregistered
//! names (and are refused where keys are required), and a person's key is
//! private and never silently replaced.

use qchat_proto::{RejectReason, ServerMsg};

use crate::raw::{runtime, Raw};
use crate::util::{connect, join, Home, Proc, Server, Stream};

/// What `qchat fingerprint --mine` prints in `home`.
pub(crate) fn my_fingerprint(home: &Home, flag: Option<&str>) -> String {
    let mut cmd = home.command();
    cmd.args(["fingerprint", "--mine"]);
    if let Some(f) = flag {
        cmd.arg(f);
    }
    let out = cmd.output().expect("run qchat fingerprint --mine");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Joins and leaves at once (an orderly goodbye, so no name is held for a
/// reconnect): the name is now registered to `home`'s key.
pub(crate) fn visit(home: &Home, server: &Server, name: &str) {
    let mut p = join(home, server, name);
    p.close_stdin();
    assert!(p.wait().success(), "{}", p.transcript());
}

/// Joins as `name`, which another key holds on a server with a short
/// `--name-expiry`: every attempt before the claim expires must be refused
/// for the name's sake and nothing else. Bounded.
pub(crate) fn join_after_expiry(home: &Home, server: &Server, name: &str, extra: &[&str]) -> Proc {
    let args: Vec<&str> = ["--accept-new"].iter().chain(extra).copied().collect();
    for _ in 0..40 {
        let mut p = connect(home, &server.target(), name, &args);
        let (stream, line) = p.expect_any("joined or refused", |s, l| {
            (s == Stream::Out && l.starts_with("* connected to "))
                || (s == Stream::Err && l.contains("refused"))
        });
        if stream == Stream::Out {
            return p;
        }
        // The claim, or the server's budget for connections from one
        // address that have not joined (the refused attempts before this
        // one may not all be closed yet): both pass with time.
        assert!(
            line.contains("registered to another key")
                || line.contains("refused to accept a new connection"),
            "{line}"
        );
        p.wait();
        // Each attempt is a new process and a handshake; a pause between
        // them keeps this loop from spinning while the claim ages.
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("{name} was still refused after 40 attempts");
}

/// Connects as `name` and expects a refusal on stderr containing `needle`.
fn refused(home: &Home, server: &Server, name: &str, needle: &str) -> String {
    let mut p = connect(home, &server.target(), name, &["--accept-new"]);
    let line = p.expect_err_contains(needle);
    assert!(!p.wait().success(), "{name}: {}", p.transcript());
    line
}

#[test]
fn another_key_cannot_take_a_registered_name_by_any_spelling() {
    let (hs, ha, hm) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    visit(&ha, &server, "alice");
    for (name, rule) in [
        ("alice", "registered to another key"),
        ("ALICE", "differs only in letter case"),
        ("\u{FF41}\u{FF4C}\u{FF49}\u{FF43}\u{FF45}", "looks the same"),
        ("\u{0430}\u{04CF}\u{0456}\u{0441}\u{0435}", "looks the same"),
    ] {
        let line = refused(&hm, &server, name, "registered to another key");
        assert!(line.contains(rule), "{name}: {line}");
    }
    // Latin with a Cyrillic а is refused by the mixed-script rule, named.
    let line = refused(&hm, &server, "\u{0430}lice", "cannot use the name");
    assert!(line.contains("Cyrillic and Latin"), "{line}");
    assert!(line.contains("UTS #39"), "{line}");
    // The owner still gets in, under any spelling of the name.
    visit(&ha, &server, "Alice");
    // And /nick to the name is refused the same way.
    let mut mallory = join(&hm, &server, "mallory");
    mallory.send_line("/nick alice");
    let line = mallory.expect_err_contains("/nick failed");
    assert!(line.contains("registered to another key"), "{line}");
    mallory.close_stdin();
    mallory.wait();
}

#[test]
fn the_name_is_free_again_after_it_expires_unused() {
    let (hs, ha, hm) = (Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--name-expiry", "2s"]);
    visit(&ha, &server, "alice");
    // Until the claim expires every attempt is refused for the name's sake
    // and nothing else; after it, mallory's key gets the name.
    let mut mallory = join_after_expiry(&hm, &server, "alice", &[]);
    mallory.send_line("/whois alice");
    let line = mallory.expect(Stream::Out, "the whois line", |l| {
        l.contains("registered to key")
    });
    assert!(line.contains(&my_fingerprint(&hm, None)), "{line}");
    mallory.close_stdin();
    mallory.wait();
}

#[test]
fn whois_shows_what_the_owner_sees_at_home_and_marks_guests() {
    let (hs, ha, hb, hg) = (Home::new(), Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut guest = connect(&hg, &server.target(), "gus", &["--accept-new", "--guest"]);
    guest.expect(Stream::Out, "connected", |l| {
        l.starts_with("* connected to ")
    });
    let mut bob = join(&hb, &server, "bob");
    bob.send_line("/whois alice");
    let line = bob.expect(Stream::Out, "alice's whois", |l| {
        l.starts_with("* alice: registered to key")
    });
    assert!(line.contains(&my_fingerprint(&ha, None)), "{line}");
    assert!(
        line.contains(&my_fingerprint(&ha, Some("--read-aloud"))),
        "{line}"
    );
    assert!(line.contains("here now"), "{line}");
    bob.send_line("/whois GUS");
    let line = bob.expect(Stream::Out, "gus's whois", |l| l.starts_with("* gus:"));
    assert!(line.contains("a guest"), "{line}");
    bob.send_line("/whois nobody");
    let line = bob.expect_err_contains("/whois failed");
    assert!(line.contains("nobody called"), "{line}");
    // A guest's home never got a key.
    assert!(!hg.path().join("identity").exists());
    for p in [&mut alice, &mut guest, &mut bob] {
        p.close_stdin();
        p.wait();
    }
}

#[test]
fn guests_keep_to_unregistered_names_and_keys_required_refuses_them() {
    let (hs, ha, hg) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    visit(&ha, &server, "alice");
    let mut p = connect(&hg, &server.target(), "alice", &["--accept-new", "--guest"]);
    let line = p.expect_err_contains("registered to another key");
    assert!(line.contains("guest"), "{line}");
    assert!(!p.wait().success());
    // A version-2 client (no key, as older clients are) joins under a free
    // name.
    let rt = runtime();
    rt.block_on(async {
        let raw = Raw::connect(&server).await;
        let mut s = raw.open().await;
        match s.hello("dave").await {
            Some(ServerMsg::Welcome { name, .. }) => assert_eq!(name, "dave"),
            other => panic!("dave was not welcomed: {other:?}"),
        }
        let raw = Raw::connect(&server).await;
        let mut s = raw.open().await;
        match s.hello("Alice").await {
            Some(ServerMsg::Rejected { reason, detail }) => {
                assert_eq!(reason, RejectReason::NameRegistered, "{detail}");
            }
            other => panic!("a guest took alice's name: {other:?}"),
        }
    });

    let hk = Home::new();
    let strict = Server::start_on(&hk, "127.0.0.1:0", &["--keys-required"]);
    let mut p = connect(&hg, &strict.target(), "gus", &["--accept-new", "--guest"]);
    let line = p.expect_err_contains("present a key");
    assert!(line.contains("as a guest"), "{line}");
    assert!(!p.wait().success());
    rt.block_on(async {
        let raw = Raw::connect(&strict).await;
        let mut s = raw.open().await;
        match s.hello("dave").await {
            Some(ServerMsg::Rejected { reason, .. }) => {
                assert_eq!(reason, RejectReason::KeyRequired);
            }
            other => panic!("a v2 guest got past --keys-required: {other:?}"),
        }
    });
    // With a key it is an ordinary join.
    visit(&ha, &strict, "alice");
}

#[cfg(unix)]
#[test]
fn a_persons_key_is_private_and_never_silently_replaced() {
    use std::os::unix::fs::MetadataExt;
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    visit(&ha, &server, "alice");
    let dir = ha.path().join("identity");
    let key = dir.join("key.pem");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let first = my_fingerprint(&ha, None);

    // A damaged key is an error that says what to do, and stays as it was.
    std::fs::write(&key, "not a key").expect("damage the key");
    let mut p = connect(&ha, &server.target(), "alice", &["--accept-new"]);
    let line = p.expect_err_contains("key.pem");
    assert!(line.contains("qchat identity new"), "{line}");
    assert_eq!(p.wait().code(), Some(1));
    assert_eq!(std::fs::read(&key).expect("read"), b"not a key");

    // Replacing it takes a confirmation; with --yes it is done, and the old
    // files are kept.
    let out = ha
        .command()
        .args(["identity", "new"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = ha
        .command()
        .args(["identity", "new", "--yes"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let new = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_ne!(new, first);
    assert_eq!(my_fingerprint(&ha, None), new);
    let kept = std::fs::read_dir(&dir)
        .expect("read_dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("key.pem.old-"));
    assert!(kept, "the old key is kept");
}

/// The host sits in the room as a person with a key of their own: its name
/// is registered to the key `qchat fingerprint --mine` prints on the
/// server's machine.
#[test]
fn the_host_is_a_person_with_a_key() {
    let (hs, hb) = (Home::new(), Home::new());
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &["--name", "host"]);
    server
        .proc
        .expect(Stream::Out, "the operator joining", |l| {
            l.starts_with("* joined the room as host")
        });
    let mut bob = join(&hb, &server, "bob");
    bob.send_line("/whois host");
    let line = bob.expect(Stream::Out, "the host's whois", |l| {
        l.starts_with("* host: registered to key")
    });
    assert!(line.contains(&my_fingerprint(&hs, None)), "{line}");
    bob.close_stdin();
    bob.wait();
}
