//! Failover as the people who stay see it: a member whose node was killed
//! comes back on another node, and the members there are told it is back,
//! not that it joined (to them it never left).

use crate::util::{connect, Home, Nats, Server, Stream};

fn node(home: &Home, nats: &Nats, certs: Option<&Home>) -> Server {
    Server::node(home, nats, certs, &[])
}

#[test]
fn a_member_back_from_a_killed_node_is_back_not_joined() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let mut a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let (alice_home, bob_home) = (Home::new(), Home::new());
    let both = format!("{},{}", a.target(), b.target());
    let mut alice = connect(&alice_home, &both, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "alice connected", |l| {
        l.starts_with("* connected to ")
    });
    let mut bob = connect(&bob_home, &b.target(), "bob", &["--accept-new"]);
    bob.expect(Stream::Out, "bob connected", |l| {
        l.starts_with("* connected to ")
    });
    // Alice is in bob's room already: one line from her proves it.
    alice.send_line("before");
    bob.expect(Stream::Out, "alice's line", |l| {
        l.ends_with("<alice> before")
    });

    // Her node dies without a word: nothing marks her reconnecting.
    a.proc.kill();
    alice.expect(Stream::Out, "the reconnected line", |l| {
        l.starts_with("* reconnected")
    });
    bob.expect(Stream::Out, "alice back", |l| {
        l.ends_with("* alice is back")
    });
    alice.send_line("after");
    bob.expect(Stream::Out, "alice's line after", |l| {
        l.ends_with("<alice> after")
    });
    let said = bob.transcript();
    assert!(!said.contains("alice joined"), "{said}");
    assert_eq!(said.matches("alice is back").count(), 1, "{said}");
}

/// The same when both are in a room besides the lobby: she is back once,
/// in the lobby, and stays in the room without a word there.
#[test]
fn a_member_in_a_room_back_from_a_killed_node_is_back_once() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let mut a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let (alice_home, bob_home) = (Home::new(), Home::new());
    let both = format!("{},{}", a.target(), b.target());
    let mut alice = connect(&alice_home, &both, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "alice connected", |l| {
        l.starts_with("* connected to ")
    });
    let mut bob = connect(&bob_home, &b.target(), "bob", &["--accept-new"]);
    bob.expect(Stream::Out, "bob connected", |l| {
        l.starts_with("* connected to ")
    });
    alice.send_line("/join #dev");
    alice.expect(Stream::Out, "alice in #dev", |l| {
        l.starts_with("* you joined #dev")
    });
    bob.send_line("/join #dev");
    bob.expect(Stream::Out, "bob in #dev with alice", |l| {
        l.starts_with("* you joined #dev") && l.contains("alice")
    });

    a.proc.kill();
    alice.expect(Stream::Out, "the reconnected line", |l| {
        l.starts_with("* reconnected")
    });
    bob.expect(Stream::Out, "alice back", |l| l.ends_with("alice is back"));
    alice.send_line("/join #dev");
    alice.send_line("after");
    bob.expect(Stream::Out, "alice's line after", |l| {
        l.ends_with("<alice> after")
    });
    let said = bob.transcript();
    assert_eq!(said.matches("alice is back").count(), 1, "{said}");
    assert!(!said.contains("alice joined"), "{said}");
    assert!(!said.contains("alice left"), "{said}");
}
