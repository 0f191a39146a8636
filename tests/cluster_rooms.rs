//! Rooms across two `qchat serve --cluster` nodes over one real
//! nats-server, through the real binary in plain mode: what a room is
//! (topic, operators, invite-only, invitations) is the cluster's, so a
//! topic set on one node is shown on the other, and a room made
//! invite-only on one node is closed on the other until an invitation
//! given on the first.

use crate::util::{join, Home, Nats, Proc, Server, Stream};

fn node(home: &Home, nats: &Nats, certs: Option<&Home>) -> Server {
    Server::node(home, nats, certs, &[])
}

/// Waits for a stdout line starting with `prefix`.
fn expect_start(p: &mut Proc, prefix: &str) -> String {
    p.expect(Stream::Out, &format!("a line starting {prefix:?}"), |l| {
        l.starts_with(prefix)
    })
}

/// `p` joins `room` and waits for its join line.
fn join_room(p: &mut Proc, room: &str) -> String {
    p.send_line(&format!("/join {room}"));
    expect_start(p, &format!("* you joined {room} "))
}

#[test]
fn a_rooms_topic_and_invitations_hold_on_every_node() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let (halice, hbob, hcarol) = (Home::new(), Home::new(), Home::new());
    let mut alice = join(&halice, &a, "alice");
    let mut bob = join(&hbob, &b, "bob");
    let mut carol = join(&hcarol, &b, "carol");
    // A knows bob is on B (its invitation notice below depends on it).
    alice.expect(Stream::Out, "bob's arrival on B", |l| l == "* bob joined");

    // A topic set on A reaches a member of the room on B.
    let made = join_room(&mut alice, "#dev");
    assert!(made.contains("you are its operator"), "{made}");
    let joined = join_room(&mut carol, "#dev");
    assert!(
        !joined.contains("you are its operator"),
        "the room has one creator, on A: {joined}"
    );
    alice.send_line("/topic hello from A");
    alice.expect_out("* #dev alice set the topic: hello from A");
    carol.expect_out("* #dev alice set the topic: hello from A");
    // Not its operator on B either.
    carol.send_line("/topic mine");
    carol.expect_err_contains("only #dev's operators");

    // Invite-only on A closes the room on B.
    join_room(&mut alice, "#ops");
    alice.send_line("/room invite-only on");
    alice.expect_out("* #ops alice made the room invite-only");
    bob.send_line("/join #ops");
    bob.expect_err_contains("/join failed: #ops is invite-only");
    bob.send_line("/rooms");
    let listed = expect_start(&mut bob, "* rooms (");
    assert!(
        listed.contains("#dev") && !listed.contains("#ops"),
        "B lists the cluster's rooms, the invite-only one hidden: {listed}"
    );

    // An invitation given on A lets bob in on B.
    alice.send_line("/invite bob");
    let told = expect_start(&mut alice, "* notice: bob may now join #ops");
    // Bob is on the other node: alice learns that he was not told.
    assert!(told.contains("another server of this cluster"), "{told}");
    join_room(&mut bob, "#ops");
    bob.send_line("/rooms");
    let listed = expect_start(&mut bob, "* rooms (");
    assert!(listed.contains("#ops"), "{listed}");
}
