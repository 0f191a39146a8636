//! Rooms besides `#lobby`, through the real binary in plain mode: a room's
//! lines reach its members and nobody else, `/rooms` counts them, `/part`
//! stops delivery, an invite-only room is hidden and closed until an
//! invitation, a `kill -9` restart resumes every room with nothing lost,
//! and a version-2 client still lands in `#lobby` and sees only it.

use qchat_proto::ServerMsg;

use crate::raw::{runtime, Raw};
use crate::util::{join, Home, Proc, Server, Stream};

/// Waits for stdout line `line`, exactly.
fn expect_line(p: &mut Proc, line: &str) {
    p.expect_out(line);
}

/// Waits for a stdout line starting with `prefix`.
fn expect_start(p: &mut Proc, prefix: &str) -> String {
    p.expect(Stream::Out, &format!("a line starting {prefix:?}"), |l| {
        l.starts_with(prefix)
    })
}

/// Waits for `room`'s line `<from> text`, live or replayed (a line stored
/// while the member was away comes back as history when it rejoins).
fn expect_said(p: &mut Proc, room: &str, from: &str, text: &str) {
    let live = format!("{room} <{from}> {text}");
    let replayed = format!("{room} [history] <{from}> {text}");
    // The replay comes before the join line of the next room, so waiting
    // for that line may already have read this one.
    if p.stdout_so_far()
        .iter()
        .any(|l| *l == live || *l == replayed)
    {
        return;
    }
    p.expect(Stream::Out, &format!("{live:?}"), |l| {
        l == live || l == replayed
    });
}

/// Asserts no stdout line so far contains `needle`.
fn never_saw(p: &Proc, needle: &str) {
    assert!(
        !p.stdout_so_far().iter().any(|l| l.contains(needle)),
        "{} saw {needle:?}\n{}",
        p.label,
        p.transcript()
    );
}

/// `p` joins `room` and waits for its join line.
fn join_room(p: &mut Proc, room: &str) -> String {
    p.send_line(&format!("/join {room}"));
    expect_start(p, &format!("* you joined {room} "))
}

#[test]
fn a_rooms_lines_reach_its_members_and_never_anyone_else() {
    let (hs, ha, hb, hc) = (Home::new(), Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut bob = join(&hb, &server, "bob");
    let mut alice = join(&ha, &server, "alice");
    let mut carol = join(&hc, &server, "carol");

    let joined = join_room(&mut bob, "#dev");
    assert!(joined.contains("you are its operator"), "{joined}");
    join_room(&mut alice, "#dev");
    expect_line(&mut bob, "* #dev alice joined");

    alice.send_line("hello dev");
    expect_line(&mut bob, "#dev <alice> hello dev");
    bob.send_line("/me waves");
    expect_line(&mut alice, "#dev * bob waves");

    carol.send_line("/rooms");
    expect_line(&mut carol, "* rooms (2): #lobby 3 members, #dev 2 members");

    // The lobby still works for everyone; carol, who never joined a room,
    // sees its lines exactly as before, the others with the lobby's name.
    alice.send_line("/switch #lobby");
    alice.send_line("marker");
    expect_line(&mut carol, "<alice> marker");
    expect_line(&mut bob, "#lobby <alice> marker");
    never_saw(&carol, "hello dev");
    never_saw(&carol, "waves");
    assert!(
        !carol.stdout_so_far().iter().any(|l| l.starts_with("#dev ")),
        "{}",
        carol.transcript()
    );

    // /part stops delivery: alice's next #dev line reaches nobody.
    bob.send_line("/part #dev enough");
    expect_line(&mut bob, "* you left #dev (enough)");
    expect_line(&mut alice, "* #dev bob left (enough)");
    alice.send_line("/switch #dev");
    alice.send_line("after the part");
    alice.send_line("/switch #lobby");
    alice.send_line("marker two");
    expect_line(&mut bob, "#lobby <alice> marker two");
    expect_line(&mut carol, "<alice> marker two");
    never_saw(&bob, "after the part");
    never_saw(&carol, "after the part");

    // A room's line typed while not in it is refused with the reason.
    bob.send_line("/switch #dev");
    bob.send_line("am I here");
    bob.expect_err_contains("you are not in #dev");
    never_saw(&alice, "am I here");
}

#[test]
fn an_invite_only_room_is_invisible_and_closed_until_an_invitation() {
    let (hs, ha, hc) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut carol = join(&hc, &server, "carol");

    join_room(&mut alice, "#ops");
    alice.send_line("/topic deploys only");
    expect_line(&mut alice, "* #ops alice set the topic: deploys only");
    alice.send_line("/room invite-only on");
    expect_line(&mut alice, "* #ops alice made the room invite-only");

    carol.send_line("/rooms");
    expect_line(&mut carol, "* rooms (1): #lobby 2 members");
    carol.send_line("/join #ops");
    carol.expect_err_contains("/join failed: #ops is invite-only");
    // Not an operator of the room: carol cannot open it herself.
    carol.send_line("/switch #ops");
    carol.send_line("/room invite-only off");
    carol.expect_err_contains("only #ops's operators");

    alice.send_line("/invite carol");
    expect_line(
        &mut carol,
        "* alice invited you to #ops; /join #ops to enter",
    );
    carol.send_line("/rooms");
    expect_line(
        &mut carol,
        "* rooms (2): #lobby 2 members, #ops 1 member (invite-only): deploys only",
    );
    let joined = join_room(&mut carol, "#ops");
    assert!(joined.ends_with("; topic: deploys only"), "{joined}");
    expect_line(&mut alice, "* #ops carol joined");
    carol.send_line("in at last");
    expect_line(&mut alice, "#ops <carol> in at last");

    // A room operator's kick takes the member out of the room (not the
    // server) and takes the invitation back.
    alice.send_line("/kick carol done");
    expect_line(&mut carol, "* #ops kicked by alice: done");
    carol.send_line("/join #ops");
    carol.expect_err_contains("/join failed: #ops is invite-only");
    carol.send_line("/switch #lobby");
    carol.send_line("still here");
    expect_line(&mut alice, "#lobby <carol> still here");
}

#[test]
fn a_kill_9_restart_resumes_every_room_with_nothing_lost() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let flags = ["--rate", "0"];
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &flags);
    let listen = server.addr.to_string();
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    for room in ["#dev", "#ops"] {
        join_room(&mut alice, room);
        join_room(&mut bob, room);
    }
    alice.send_line("/topic kept");
    expect_line(&mut bob, "* #ops alice set the topic: kept");
    alice.send_line("/switch #dev");
    for i in 1..=20 {
        alice.send_line(&format!("dev {i}"));
    }
    expect_line(&mut bob, "#dev <alice> dev 20");
    bob.send_line("ops before");
    expect_line(&mut alice, "#ops <bob> ops before");

    server.proc.kill();
    expect_start(&mut alice, "* connection lost");
    // Typed while the server is down: waits in alice's outbox.
    for i in 21..=30 {
        alice.send_line(&format!("dev {i}"));
    }
    let _server = Server::start_on(&hs, &listen, &flags);
    // Each room is rejoined from where it left off; its topic survived.
    let rejoined = expect_start(&mut bob, "* you joined #ops ");
    assert!(rejoined.ends_with("; topic: kept"), "{rejoined}");
    expect_said(&mut bob, "#dev", "alice", "dev 30");
    bob.send_line("ops after");
    expect_said(&mut alice, "#ops", "bob", "ops after");

    let dev: Vec<String> = bob
        .stdout_so_far()
        .iter()
        .filter_map(|l| {
            l.strip_prefix("#dev ")
                .map(|l| l.strip_prefix("[history] ").unwrap_or(l))
                .and_then(|l| l.strip_prefix("<alice> "))
                .map(str::to_string)
        })
        .collect();
    let want: Vec<String> = (1..=30).map(|i| format!("dev {i}")).collect();
    assert_eq!(dev, want, "{}", bob.transcript());
    let ops: Vec<String> = alice
        .stdout_so_far()
        .into_iter()
        .filter(|l| l.contains("<bob> ops"))
        .collect();
    assert_eq!(ops.len(), 2, "{}", alice.transcript());
}

#[test]
fn a_version_2_client_lands_in_the_lobby_and_sees_only_it() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let rt = runtime();
    let raw = rt.block_on(Raw::connect(&server));
    let mut old = rt.block_on(raw.join("old"));
    expect_line(&mut alice, "* old joined");
    join_room(&mut alice, "#dev");
    alice.send_line("dev only");
    alice.send_line("/switch #lobby");
    alice.send_line("for everyone");
    rt.block_on(async {
        loop {
            match old.next_msg().await {
                Some(ServerMsg::Chat { from, text, .. }) => {
                    assert_eq!((from.as_str(), text.as_str()), ("alice", "for everyone"));
                    break;
                }
                // Presence in the lobby is the lobby's.
                Some(ServerMsg::Joined { .. } | ServerMsg::Left { .. }) => {}
                other => panic!("a version-2 client got {other:?}"),
            }
        }
    });
}

#[test]
fn a_restarted_client_rejoins_its_rooms_from_where_it_left_off() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    join_room(&mut alice, "#dev");
    join_room(&mut bob, "#dev");
    for i in 1..=3 {
        alice.send_line(&format!("seen {i}"));
    }
    expect_line(&mut bob, "#dev <alice> seen 3");
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());
    expect_line(&mut alice, "* #dev bob left");
    for i in 1..=2 {
        alice.send_line(&format!("missed {i}"));
    }
    let mut bob = join(&hb, &server, "bob");
    expect_start(&mut bob, "* you joined #dev ");
    expect_said(&mut bob, "#dev", "alice", "missed 2");
    let dev: Vec<String> = bob
        .stdout_so_far()
        .into_iter()
        .filter(|l| l.starts_with("#dev "))
        .collect();
    assert_eq!(
        dev,
        [
            "#dev [history] <alice> missed 1",
            "#dev [history] <alice> missed 2"
        ],
        "{}",
        bob.transcript()
    );
}

/// A member who types a room's name in another case still signs its lines
/// under the server's spelling: the others see them as hers, never as
/// forgeries.
#[test]
fn a_room_joined_in_another_spelling_still_carries_signed_lines() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut bob = join(&hb, &server, "bob");
    let mut alice = join(&ha, &server, "alice");

    join_room(&mut bob, "#dev");
    alice.send_line("/join #DEV");
    expect_start(&mut alice, "* you joined #dev ");
    expect_line(&mut bob, "* #dev alice joined");

    alice.send_line("signed in any spelling");
    expect_line(&mut bob, "#dev <alice> signed in any spelling");
    never_saw(&bob, "unverified");
    never_saw(&bob, "forged");
}
