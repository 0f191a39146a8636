//! Several devices, one name: a device of a registered name makes a
//! one-time link code, a new device joins the name with it and is that
//! person too (`/whois` lists both keys); a used or expired code is
//! refused and adds nothing; `/device remove` locks a key out, ending its
//! session if it is in the room; and all of it survives a restart.

use crate::util::{connect, join, Home, Proc, Server, Stream};

/// What `qchat fingerprint --mine` prints in `home`.
fn my_fingerprint(home: &Home) -> String {
    let out = home
        .command()
        .args(["fingerprint", "--mine"])
        .output()
        .expect("run qchat fingerprint --mine");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Asks `p` (a device in the room) for a link code and returns it.
fn link_code(p: &mut Proc) -> String {
    p.send_line("/device link");
    let line = p.expect(Stream::Out, "the link code line", |l| {
        l.contains("link code: ")
    });
    line.split("link code: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {line:?}"))
        .to_string()
}

/// Leaves with an orderly goodbye.
fn leave(mut p: Proc) {
    p.close_stdin();
    assert!(p.wait().success(), "{}", p.transcript());
}

/// Connects `home` as `name` with link `code` and waits until it is in.
fn join_linked(home: &Home, server: &Server, name: &str, code: &str) -> Proc {
    let mut p = connect(
        home,
        &server.target(),
        name,
        &["--accept-new", "--link", code],
    );
    p.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    p
}

/// Connects and expects a refusal on stderr containing `needle`.
fn refused(home: &Home, server: &Server, name: &str, extra: &[&str], needle: &str) -> String {
    let mut args = vec!["--accept-new"];
    args.extend_from_slice(extra);
    let mut p = connect(home, &server.target(), name, &args);
    let line = p.expect_err_contains(needle);
    assert!(!p.wait().success(), "{name}: {}", p.transcript());
    line
}

#[test]
fn a_device_linked_by_code_is_alice_and_the_code_works_once() {
    let (hs, h1, h2, h3, hb) = (
        Home::new(),
        Home::new(),
        Home::new(),
        Home::new(),
        Home::new(),
    );
    let server = Server::start(&hs);
    let mut laptop = join(&h1, &server, "alice");
    let code = link_code(&mut laptop);
    let mut bob = join(&hb, &server, "bob");

    // The phone joins as alice with the code; the laptop, in the room
    // under the name, hands it over and is told why.
    let mut phone = join_linked(&h2, &server, "alice", &code);
    let line = laptop.expect(Stream::Out, "the hand-over", |l| {
        l.contains("another of your devices")
    });
    assert!(line.starts_with("* kicked by alice"), "{line}");
    laptop.wait();

    bob.send_line("/whois alice");
    let line = bob.expect(Stream::Out, "alice's whois", |l| {
        l.starts_with("* alice: registered to keys")
    });
    assert!(line.contains(&my_fingerprint(&h1)), "{line}");
    assert!(line.contains(&my_fingerprint(&h2)), "{line}");

    phone.send_line("/device list");
    let line = phone.expect(Stream::Out, "the device list", |l| {
        l.starts_with("* devices of alice (2):")
    });
    let (fp1, fp2) = (my_fingerprint(&h1), my_fingerprint(&h2));
    assert!(line.contains(&format!("{fp2} (read aloud: ")), "{line}");
    // Entries are joined by ", " and each starts with its fingerprint;
    // only the phone's is marked.
    let marked: Vec<&str> = line
        .split(", SHA256:")
        .filter(|e| e.ends_with(" (this device)"))
        .collect();
    assert_eq!(marked.len(), 1, "{line}");
    assert!(
        marked[0].contains(fp2.trim_start_matches("SHA256:"))
            && !marked[0].contains(fp1.trim_start_matches("SHA256:")),
        "{line}"
    );
    assert!(line.contains(&fp1), "{line}");
    leave(phone);

    // The same code again, from a third device: used up, nothing added.
    let line = refused(&h3, &server, "alice", &["--link", &code], "already used");
    assert!(line.contains("link"), "{line}");
    refused(&h3, &server, "alice", &[], "registered to another key");
    // A made-up code is wrong.
    refused(
        &h3,
        &server,
        "alice",
        &["--link", "abcd-efgh-ijkl-mnop"],
        "wrong",
    );
    leave(bob);
}

#[test]
fn an_expired_code_is_refused_and_adds_nothing() {
    let (hs, h1, h2) = (Home::new(), Home::new(), Home::new());
    // Codes expire the moment they are made.
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--link-ttl", "0"]);
    let mut laptop = join(&h1, &server, "alice");
    let code = link_code(&mut laptop);
    leave(laptop);
    refused(&h2, &server, "alice", &["--link", &code], "expired");
    refused(&h2, &server, "alice", &[], "registered to another key");
}

#[test]
fn a_removed_device_is_locked_out_and_links_survive_a_restart() {
    let (hs, h1, h2, h3) = (Home::new(), Home::new(), Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let addr = server.target();
    let mut laptop = join(&h1, &server, "alice");
    let code = link_code(&mut laptop);
    let code3 = link_code(&mut laptop);
    leave(laptop);
    leave(join_linked(&h2, &server, "alice", &code));
    leave(join_linked(&h3, &server, "alice", &code3));

    // A restart keeps all three keys of the name.
    server.proc.signal("TERM");
    assert!(server.proc.wait().success(), "{}", server.proc.transcript());
    server = Server::start_on(&hs, &addr, &[]);
    let mut phone = join(&h2, &server, "alice");
    phone.send_line("/device list");
    phone.expect(Stream::Out, "three devices", |l| {
        l.starts_with("* devices of alice (3):")
    });

    // The laptop's key removed, in its read-aloud spelling.
    let read_aloud = {
        let out = h1
            .command()
            .args(["fingerprint", "--mine", "--read-aloud"])
            .output()
            .expect("fingerprint");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    };
    phone.send_line(&format!("/device remove {read_aloud}"));
    let line = phone.expect(Stream::Out, "the list that is left", |l| {
        l.starts_with("* devices of alice (2):")
    });
    assert!(!line.contains(&my_fingerprint(&h1)), "{line}");

    // A device in the room whose key is removed is put out with the
    // reason, and stays out.
    let fp2 = my_fingerprint(&h2);
    phone.send_line(&format!("/device remove {fp2}"));
    let line = phone.expect(Stream::Out, "its removal", |l| {
        l.contains("kicked by alice")
    });
    assert!(line.contains("was removed from the name"), "{line}");
    phone.wait();
    // Both removed keys are refused at their next hello as another key's.
    refused(&h1, &server, "alice", &[], "registered to another key");
    refused(&h2, &server, "alice", &[], "registered to another key");

    // The last key stays: a name is not released by /device remove.
    let mut tablet = join(&h3, &server, "alice");
    tablet.send_line(&format!("/device remove {}", my_fingerprint(&h3)));
    let line = tablet.expect_err_contains("/device failed");
    assert!(line.contains("only key"), "{line}");
    leave(tablet);
}
