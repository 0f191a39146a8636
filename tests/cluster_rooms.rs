//! Rooms across two `qchat serve --cluster` nodes over one real
//! nats-server, through the real binary in plain mode: what a room is
//! (topic, operators, invite-only, invitations) is the cluster's, so a
//! topic set on one node is shown on the other, and a room made
//! invite-only on one node is closed on the other until an invitation
//! given on the first. Who is in a room is the cluster's too: `/rooms`
//! counts every node's members, a join lists them, their arrivals and
//! departures reach every node's members once, a room operator's kick and
//! an invitation's notice reach a member on another node, and a dead
//! node's members leave the room once presence's TTL has passed.

use std::time::Duration;

use qchat_proto::{ClientMsg, ServerMsg, PROTOCOL_VERSION};

use crate::raw::{runtime, Raw};
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

    // An invitation given on A lets bob in on B, and its notice reaches
    // him there.
    alice.send_line("/invite bob");
    alice.expect_out("* notice: bob may now join #ops");
    bob.expect_out("* alice invited you to #ops; /join #ops to enter");
    join_room(&mut bob, "#ops");
    bob.send_line("/rooms");
    let listed = expect_start(&mut bob, "* rooms (");
    assert!(listed.contains("#ops"), "{listed}");
}

/// How many of `p`'s stdout lines so far are exactly `line`.
fn count(p: &Proc, line: &str) -> usize {
    p.stdout_so_far().iter().filter(|l| *l == line).count()
}

#[test]
fn a_rooms_members_are_counted_listed_and_announced_on_every_node() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let (halice, hbob, hcarol) = (Home::new(), Home::new(), Home::new());
    let mut alice = join(&halice, &a, "alice");
    let mut bob = join(&hbob, &b, "bob");
    let mut carol = join(&hcarol, &b, "carol");
    // A has seen both arrive (its count of the lobby below depends on it).
    alice.expect_out("* bob joined");
    alice.expect_out("* carol joined");

    join_room(&mut alice, "#dev");
    join_room(&mut bob, "#dev");
    alice.expect_out("* #dev bob joined");
    // Carol is on bob's node: he hears of her once, from his node.
    join_room(&mut carol, "#dev");
    bob.expect_out("* #dev carol joined");
    alice.expect_out("* #dev carol joined");
    alice.send_line("/rooms");
    alice.expect_out("* rooms (2): #lobby 3 members, #dev 3 members");

    // Alice leaves and comes back on A: bob, on B, sees both.
    alice.send_line("/part #dev lunch");
    bob.expect_out("* #dev alice left (lunch)");
    carol.expect_out("* #dev alice left (lunch)");
    let back = join_room(&mut alice, "#dev");
    assert!(
        back.contains("(3 members: ") && back.contains("bob") && back.contains("carol"),
        "the join lists every node's members: {back}"
    );
    bob.expect_out("* #dev alice joined");
    bob.send_line("/rooms");
    bob.expect_out("* rooms (2): #lobby 3 members, #dev 3 members");

    // Alice created the room: her kick reaches bob on the other node.
    alice.send_line("/kick bob enough");
    bob.expect_out("* #dev kicked by alice: enough");
    alice.expect_out("* #dev bob left (kicked by alice: enough)");
    carol.expect_out("* #dev bob left (kicked by alice: enough)");
    // And a kick of someone who is in the room nowhere is refused.
    alice.send_line("/kick zed");
    alice.expect_err_contains("nobody called \"zed\" in #dev");
    carol.send_line("/part #dev");
    alice.expect_out("* #dev carol left");
    alice.send_line("/rooms");
    alice.expect_out("* rooms (2): #lobby 3 members, #dev 1 member");

    // A node keeps no room of its own on disk: no rooms folder, no
    // descriptions file (rooms were made and joined on both).
    for home in [&ha, &hb] {
        let rooms = home.path().join("server").join("rooms");
        assert!(!rooms.exists(), "{} exists", rooms.display());
    }

    // Each notice came once: nobody heard a member twice, whether from
    // its own node or another.
    for (p, line) in [
        (&bob, "* #dev carol joined"),
        (&bob, "* #dev alice joined"),
        (&alice, "* #dev carol joined"),
        (&alice, "* #dev bob joined"),
        (&carol, "* #dev alice joined"),
    ] {
        assert_eq!(count(p, line), 1, "{line}\n{}", p.transcript());
    }
}

/// The longest a dead node's member stays in a room on the others:
/// presence's TTL (30 s), then the next look for stale entries (a third of
/// it), with room to spare on a busy machine.
const NODE_GONE_BOUND: Duration = Duration::from_secs(60);

#[test]
fn a_dead_nodes_member_leaves_the_room_on_the_others_within_the_ttl() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let mut a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let hbob = Home::new();
    let mut bob = join(&hbob, &b, "bob");
    join_room(&mut bob, "#dev");
    // Alice speaks the protocol herself: a client that does not move to
    // another node when hers dies, so that only her node's death speaks.
    let rt = runtime();
    let (_conn, _alice) = rt.block_on(async {
        let conn = Raw::connect(&a).await;
        let mut alice = conn.open().await;
        let hello = ClientMsg::HelloV3 {
            version: PROTOCOL_VERSION,
            name: "alice".into(),
            instance: [1; 16],
            resume: None,
        };
        alice
            .write(&hello.to_frame())
            .await
            .expect("the hello is sent");
        let join = ClientMsg::Join {
            room: "#dev".into(),
            resume: None,
        };
        alice
            .write(&join.to_frame())
            .await
            .expect("the join is sent");
        loop {
            match alice.next_msg().await {
                Some(ServerMsg::RoomReplayed { .. }) => break,
                Some(_) => {}
                None => panic!("alice never got into #dev"),
            }
        }
        (conn, alice)
    });
    bob.expect_out("* #dev alice joined");

    a.proc.kill();
    bob.expect_within(
        NODE_GONE_BOUND,
        Stream::Out,
        "alice leaving #dev with her node",
        |l| l == "* #dev alice left (its server stopped answering)",
    );
    // Gone from the lobby too (presence's own sweep), and from the counts.
    bob.expect_within(
        NODE_GONE_BOUND,
        Stream::Out,
        "alice leaving the lobby with her node",
        |l| l == "* #lobby alice left (its server stopped answering)",
    );
    bob.send_line("/rooms");
    bob.expect_out("* rooms (2): #lobby 1 member, #dev 1 member");
}

/// A member whose node dies moves to another node and rejoins its rooms
/// there: to the room's members it never left (no departure, no second
/// arrival), and its next line reaches them.
#[test]
fn a_member_moving_to_another_node_stays_in_its_rooms_for_the_others() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let mut a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    let (halice, hbob) = (Home::new(), Home::new());
    let both = format!("{},{}", a.target(), b.target());
    let mut alice = crate::util::connect(&halice, &both, "alice", &["--accept-new"]);
    alice.expect(Stream::Out, "alice connected", |l| {
        l.starts_with("* connected to ")
    });
    let mut bob = join(&hbob, &b, "bob");
    join_room(&mut bob, "#dev");
    join_room(&mut alice, "#dev");
    bob.expect_out("* #dev alice joined");

    a.proc.kill();
    alice.expect(Stream::Out, "the reconnected line", |l| {
        l.starts_with("* reconnected")
    });
    // Her client rejoins #dev on B by itself; her line proves she is in.
    expect_start(&mut alice, "* you joined #dev ");
    alice.send_line("moved");
    bob.expect_out("#dev <alice> moved");
    bob.send_line("/rooms");
    bob.expect_out("* rooms (2): #lobby 2 members, #dev 2 members");
    assert_eq!(
        count(&bob, "* #dev alice joined"),
        1,
        "{}",
        bob.transcript()
    );
    assert!(
        !bob.stdout_so_far()
            .iter()
            .any(|l| l.starts_with("* #dev alice left")),
        "{}",
        bob.transcript()
    );
}
