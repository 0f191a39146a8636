//! `qchat known-hosts`: list, remove, replace and verify pins, in text and
//! JSON, against pins written by a real connection and by hand.

use std::process::Output;

use serde_json::Value;

use crate::util::{join, Home, Server};

const OTHER: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn run(home: &Home, args: &[&str]) -> Output {
    home.command()
        .arg("known-hosts")
        .args(args)
        .output()
        .expect("run qchat known-hosts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

fn ok(home: &Home, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "qchat known-hosts {args:?} failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn fails(home: &Home, args: &[&str]) -> String {
    let out = run(home, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "qchat known-hosts {args:?} should fail\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn json(home: &Home, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ok(home, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn hex_of(home: &Home) -> String {
    let out = home
        .command()
        .args(["fingerprint", "--hex"])
        .output()
        .expect("run qchat fingerprint");
    text(&out.stdout).trim().to_uppercase()
}

#[test]
fn a_pin_from_first_use_is_listed_then_verified_out_of_band() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    let target = server.target();

    let listed = ok(&ha, &["list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with(&target))
        .unwrap_or_else(|| panic!("no row for {target}: {listed}"));
    assert!(row.contains(&server.fingerprint), "{row}");
    assert!(row.contains("tofu"), "{row}");
    assert!(listed.contains(&ha.known_hosts().display().to_string()));

    let list = json(&ha, &["list"]);
    let pin = &list["pins"][0];
    assert_eq!(pin["host"], target.as_str());
    assert_eq!(pin["fingerprint"], server.fingerprint.as_str());
    assert_eq!(pin["verified"], false);
    assert!(pin["first_seen"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(pin["line"].as_u64().is_some_and(|l| l > 0));

    // A wrong fingerprint leaves the pin unverified and says what to do.
    let err = fails(&ha, &["verify", &target, "--fingerprint", OTHER]);
    assert!(err.contains("not the pinned one"), "{err}");
    assert!(err.contains("qchat known-hosts replace"), "{err}");
    assert_eq!(json(&ha, &["list"])["pins"][0]["verified"], false);

    // The right one in another spelling (upper-case hex) verifies it.
    let verified = json(&ha, &["verify", &target, "--fingerprint", &hex_of(&hs)]);
    assert_eq!(verified["already_verified"], false);
    assert_eq!(verified["pin"]["verified"], true);
    assert_eq!(json(&ha, &["list"])["pins"][0]["verified"], true);
    let again = ok(
        &ha,
        &["verify", &target, "--fingerprint", &server.fingerprint],
    );
    assert!(again.contains("already verified"), "{again}");
}

#[test]
fn replace_then_remove_and_errors_say_what_to_do() {
    let home = Home::new();
    let empty = ok(&home, &["list"]);
    assert!(empty.contains("no pinned servers"), "{empty}");
    assert_eq!(json(&home, &["list"])["pins"], Value::Array(vec![]));

    // replace adds a pin that did not exist, as verified; the default port
    // is filled in.
    let added = json(
        &home,
        &["replace", "Chat.Example.org", "--fingerprint", OTHER],
    );
    assert_eq!(added["previous"], Value::Null);
    assert_eq!(added["pin"]["host"], "chat.example.org:8080");
    assert_eq!(added["pin"]["verified"], true);

    let new = "SHA256:BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let replaced = ok(
        &home,
        &["replace", "chat.example.org:8080", "--fingerprint", new],
    );
    assert!(
        replaced.contains(OTHER) && replaced.contains(new),
        "{replaced}"
    );
    let list = json(&home, &["list"]);
    assert_eq!(list["pins"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["pins"][0]["fingerprint"], new);

    let removed = json(&home, &["remove", "chat.example.org"]);
    assert_eq!(removed["removed"]["fingerprint"], new);
    assert_eq!(json(&home, &["list"])["pins"], Value::Array(vec![]));

    let err = fails(&home, &["remove", "chat.example.org"]);
    assert!(err.contains("has no pin"), "{err}");
    let err = fails(&home, &["verify", "chat.example.org", "--fingerprint", new]);
    assert!(err.contains("--fingerprint"), "{err}");
    // A bad address is a usage error, like any other bad argument.
    let out = run(&home, &["remove", "host:99999"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("not a valid server address"), "{err}");
}

#[test]
fn a_malformed_line_is_reported_with_file_and_line_and_the_rest_still_works() {
    let home = Home::new();
    ok(&home, &["replace", "a.example:1", "--fingerprint", OTHER]);
    let path = home.known_hosts();
    let mut contents = std::fs::read_to_string(&path).expect("read known_hosts");
    contents.push_str("junk\u{1b}[2J:1 SHA256:nope 2026-11-25T19:56:07Z tofu\n# a comment\n");
    std::fs::write(&path, &contents).expect("write known_hosts");

    let out = run(&home, &["list"]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    let expected = format!("{}:4:", path.display());
    assert!(stderr.contains(&expected), "{stderr}");
    // The junk came from a file anyone could have edited: shown, not obeyed.
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(stderr.contains("^["), "{stderr}");
    assert!(text(&out.stdout).contains("a.example:1"));

    let list = json(&home, &["list"]);
    assert_eq!(list["pins"][0]["host"], "a.example:1");
    assert!(list["warnings"][0]
        .as_str()
        .is_some_and(|w| w.starts_with(&expected)));

    // Rewrites keep the junk line and the comment.
    ok(&home, &["remove", "a.example:1"]);
    let after = std::fs::read_to_string(&path).expect("read known_hosts");
    assert!(after.contains("junk\u{1b}[2J:1"), "{after:?}");
    assert!(after.contains("# a comment"), "{after}");
}

#[test]
fn the_known_hosts_flag_names_another_file() {
    let home = Home::new();
    let other = home.path().join("elsewhere").join("pins");
    let file = other.display().to_string();
    ok(
        &home,
        &[
            "replace",
            "[::1]:9",
            "--fingerprint",
            OTHER,
            "--known-hosts",
            &file,
        ],
    );
    assert!(!home.known_hosts().exists());
    let list = json(&home, &["list", "--known-hosts", &file]);
    assert_eq!(list["file"], file.as_str());
    assert_eq!(list["pins"][0]["host"], "[::1]:9");
}
