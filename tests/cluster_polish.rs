//! Failover as the people who stay see it: a member whose node was killed
//! comes back on another node, and the members there are told it is back,
//! not that it joined (to them it never left).

use crate::util::{connect, Home, Nats, Proc, Server, Stream};

fn node(home: &Home, nats: &Nats, certs: Option<&Home>) -> Server {
    Server::node(home, nats, certs, &[])
}

/// Two nodes on one NATS: alice on A (which she leaves for B when A
/// dies), bob on B, both connected. The fields hold what must live as
/// long as the test, and go in this order: the clients, the nodes, their
/// homes, NATS.
struct Pair {
    alice: Proc,
    bob: Proc,
    a: Server,
    _b: Server,
    _homes: [Home; 4],
    _nats: Nats,
}

impl Pair {
    fn start() -> Pair {
        let nats = Nats::start();
        let (ha, hb) = (Home::new(), Home::new());
        let a = node(&ha, &nats, None);
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
        Pair {
            alice,
            bob,
            a,
            _b: b,
            _homes: [ha, hb, alice_home, bob_home],
            _nats: nats,
        }
    }
}

#[test]
fn a_member_back_from_a_killed_node_is_back_not_joined() {
    let mut pair = Pair::start();
    let (a, alice, bob) = (&mut pair.a, &mut pair.alice, &mut pair.bob);
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
    let mut pair = Pair::start();
    let (a, alice, bob) = (&mut pair.a, &mut pair.alice, &mut pair.bob);
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
