//! Several addresses for one server (`qchat connect a,b`): the nodes of a
//! cluster share one identity, the client pins it once under the first
//! address, and moves to another node by itself when its node dies. Two
//! independent servers started with the same certificate folder stand in
//! for two nodes: what is tested is the client, which cannot tell.

use crate::util::{connect, join, Home, Server, Stream};

/// A second server with the first one's identity: its home gets a copy of
/// the first one's `certs/` (keys keep their modes through the copy).
fn twin(of: &Home) -> (Home, Server) {
    let home = Home::new();
    let certs = home.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs folder");
    for entry in std::fs::read_dir(of.path().join("certs")).expect("the first server's certs") {
        let entry = entry.expect("a cert file");
        std::fs::copy(entry.path(), certs.join(entry.file_name())).expect("copy a cert file");
    }
    let server = Server::start(&home);
    (home, server)
}

/// Node A is killed outright under alice: her client notices, goes to
/// node B (same key, so the pin for A covers it), says where it went, and
/// what she types next reaches bob on B. The pin stays under A alone.
#[test]
fn a_client_moves_to_the_next_node_when_its_node_dies() {
    let (ha, alice_home, bob_home) = (Home::new(), Home::new(), Home::new());
    let mut a = Server::start(&ha);
    let (_hb, b) = twin(&ha);
    assert_eq!(a.fingerprint, b.fingerprint, "the nodes share one identity");

    let mut bob = join(&bob_home, &b, "bob");
    let nodes = format!("{},{}", a.target(), b.target());
    let mut alice = connect(&alice_home, &nodes, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });

    a.proc.kill();
    alice.expect(Stream::Out, "the lost line", |l| {
        l.starts_with("* connection lost")
    });
    let moved = alice.expect(Stream::Out, "the reconnected line", |l| {
        l.starts_with("* reconnected")
    });
    assert!(
        moved.starts_with(&format!("* reconnected to {}", b.target())),
        "{moved}\n{}",
        alice.transcript()
    );
    bob.expect_out("* alice joined");
    alice.send_line("on b now");
    bob.expect_out("<alice> on b now");

    let pins = std::fs::read_to_string(alice_home.known_hosts()).expect("known_hosts");
    assert!(pins.contains(&a.target()), "{pins}");
    assert!(
        !pins.contains(&b.target()),
        "one pin, under the first address: {pins}"
    );
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}

/// A "node" with another key is refused like any changed key: alice's
/// client, pinned to A, loses A and reaches B, which presents a key of its
/// own. It says the key differs, names the node, and ends without saying
/// anything to B: bob there never sees alice.
#[test]
fn a_node_with_another_key_is_refused() {
    let (ha, hb, alice_home, bob_home) = (Home::new(), Home::new(), Home::new(), Home::new());
    let mut a = Server::start(&ha);
    let b = Server::start(&hb);
    assert_ne!(a.fingerprint, b.fingerprint);

    let mut bob = join(&bob_home, &b, "bob");
    let nodes = format!("{},{}", a.target(), b.target());
    let mut alice = connect(&alice_home, &nodes, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });

    a.proc.kill();
    let warning = alice.expect(Stream::Err, "the key warning", |l| {
        l.contains("THE SERVER'S KEY HAS CHANGED")
    });
    let named = if warning.contains("a node of") {
        warning
    } else {
        alice.expect_err_contains("a node of")
    };
    assert!(
        named.contains(&format!("{} (a node of {}", b.target(), a.target())),
        "{named}"
    );
    let status = alice.wait();
    assert!(!status.success(), "{}", alice.transcript());

    // Anything alice had sent B would be before bob's own answer here.
    bob.send_line("/who");
    let who = bob.expect(Stream::Out, "the member list", |l| {
        l.starts_with("* members (")
    });
    assert!(who.starts_with("* members (1): "), "{who}");
    assert!(
        !bob.stdout_so_far().iter().any(|l| l.contains("alice")),
        "{}",
        bob.transcript()
    );
    let pins = std::fs::read_to_string(alice_home.known_hosts()).expect("known_hosts");
    assert!(
        pins.contains(&a.fingerprint) && !pins.contains(&b.fingerprint),
        "{pins}"
    );
}

/// On first contact the first address that answers wins: A is down, so
/// B answers, and its key is pinned under A, the home address, since a
/// cluster's nodes all present the one key.
#[test]
fn the_first_address_that_answers_is_pinned_under_the_first_address() {
    let (ha, alice_home) = (Home::new(), Home::new());
    let mut a = Server::start(&ha);
    let (_hb, b) = twin(&ha);
    let a_target = a.target();
    a.proc.kill();

    let nodes = format!("{a_target},{}", b.target());
    let mut alice = connect(&alice_home, &nodes, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    let pins = std::fs::read_to_string(alice_home.known_hosts()).expect("known_hosts");
    let pin = pins
        .lines()
        .find(|l| l.contains(&b.fingerprint))
        .unwrap_or_else(|| panic!("no pin for the key: {pins}"));
    assert!(pin.starts_with(&a_target), "{pins}");
    assert!(!pins.contains(&b.target()), "{pins}");
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}

/// The same stop that ends a session with a server alone (SIGINT: a person
/// stopping it, not coming back) sends a client that knows another node
/// there instead, at once, with no backoff's wait: in a cluster the others
/// are up.
#[test]
fn a_node_stopped_for_good_sends_its_members_to_the_next_one() {
    let (ha, alice_home, bob_home) = (Home::new(), Home::new(), Home::new());
    let mut a = Server::start(&ha);
    let (_hb, b) = twin(&ha);
    let mut bob = join(&bob_home, &b, "bob");
    let nodes = format!("{},{}", a.target(), b.target());
    let mut alice = connect(&alice_home, &nodes, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });

    a.proc.signal("INT");
    alice.expect(Stream::Out, "the shutdown notice", |l| {
        l.starts_with("* server shutting down")
    });
    alice.expect_out("* reconnecting (attempt 1, now)");
    alice.expect_out(&format!("* reconnected to {}", b.target()));
    bob.expect_out("* alice joined");
    alice.send_line("moved along");
    bob.expect_out("<alice> moved along");
    assert_eq!(a.proc.wait().code(), Some(0));
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
}
