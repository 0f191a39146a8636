//! Private conversations keep a history of their own: replayed to their
//! two members after a reconnect or a restart, and never to anyone else,
//! live, replayed, or in the room's history.

use crate::util::{connect, join, Home, Proc, Server, Stream};

/// How many lines of `p`'s output so far carry the private message
/// `[from -> to] text`, live or replayed.
fn private_lines(p: &Proc, from: &str, to: &str, text: &str) -> (usize, usize) {
    let live = format!("[{from} -> {to}] {text}");
    let replayed = format!("[history] {live}");
    let out = p.stdout_so_far();
    (
        out.iter().filter(|l| **l == live).count(),
        out.iter().filter(|l| **l == replayed).count(),
    )
}

/// Waits until `p` shows the private message, live (`history` false) or
/// replayed.
fn expect_private(p: &mut Proc, from: &str, to: &str, text: &str, history: bool) {
    let live = format!("[{from} -> {to}] {text}");
    let want = if history {
        format!("[history] {live}")
    } else {
        live
    };
    if p.stdout_so_far().contains(&want) {
        return;
    }
    p.expect(Stream::Out, &format!("{want:?}"), |l| l == want);
}

/// Asks for the member list and waits for it: everything the server sent
/// before the answer (a whole replay included) has been printed by then.
fn sync(p: &mut Proc) {
    p.send_line("/who");
    p.expect(Stream::Out, "the member list", |l| {
        l.starts_with("* members (")
    });
}

/// Joins and waits until the private replay is over: a message sent
/// during it may come as history rather than live.
fn join_synced(home: &Home, server: &Server, name: &str) -> Proc {
    let mut p = join(home, server, name);
    sync(&mut p);
    p
}

fn assert_never_saw(p: &Proc, texts: &[&str]) {
    let out = p.stdout_so_far();
    assert!(
        !out.iter().any(|l| texts.iter().any(|t| l.contains(t))),
        "{} saw a private message that was not theirs\n{}",
        p.transcript(),
        p.transcript()
    );
}

#[test]
fn a_conversation_is_replayed_to_its_two_members_after_a_kill_and_to_nobody_else() {
    let (hs, ha, hb, hc) = (Home::new(), Home::new(), Home::new(), Home::new());
    // A killed client's name is free again once the server notices: the
    // restarted one can take it at once.
    let server = Server::start_on(
        &hs,
        "127.0.0.1:0",
        &["--idle-timeout", "4", "--reconnect-grace", "0.1"],
    );
    let mut alice = join_synced(&ha, &server, "alice");
    let mut bob = join_synced(&hb, &server, "bob");
    let mut carol = join_synced(&hc, &server, "carol");

    alice.send_line("/msg bob first secret");
    expect_private(&mut bob, "alice", "bob", "first secret", false);
    bob.send_line("/msg alice second secret");
    expect_private(&mut alice, "bob", "alice", "second secret", false);

    // Killed outright: nothing is saved at the end, only what the client
    // wrote on its way (at most once a second).
    bob.kill();
    alice.expect(Stream::Out, "bob's leaving", |l| {
        l.starts_with("* bob left")
    });
    alice.send_line("/msg bob third secret, while you were away");
    expect_private(
        &mut alice,
        "alice",
        "bob",
        "third secret, while you were away",
        false,
    );

    let mut bob = join_synced(&hb, &server, "bob");
    expect_private(
        &mut bob,
        "alice",
        "bob",
        "third secret, while you were away",
        true,
    );
    sync(&mut bob);
    // What the killed client had shown may come again to the new one (its
    // point may not have been written), but never twice, and the message
    // it missed comes exactly once.
    assert_eq!(
        private_lines(&bob, "alice", "bob", "third secret, while you were away"),
        (0, 1),
        "{}",
        bob.transcript()
    );
    for (from, to, text) in [
        ("alice", "bob", "first secret"),
        ("bob", "alice", "second secret"),
    ] {
        let (live, replayed) = private_lines(&bob, from, to, text);
        assert!(live == 0 && replayed <= 1, "{}", bob.transcript());
    }

    // The conversation goes on live after the replay.
    alice.send_line("/msg bob fourth secret");
    expect_private(&mut bob, "alice", "bob", "fourth secret", false);

    // Carol, in the room all along, then joining afresh: nothing of it,
    // live, replayed, or as room history.
    sync(&mut carol);
    carol.close_stdin();
    assert!(carol.wait().success(), "{}", carol.transcript());
    let mut carol = connect(&hc, &server.target(), "carol", &["--no-resume"]);
    carol.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    sync(&mut carol);
    let secrets = [
        "first secret",
        "second secret",
        "third secret",
        "fourth secret",
    ];
    assert_never_saw(&carol, &secrets);
}

#[test]
fn a_client_restarted_by_hand_gets_exactly_what_it_missed_and_a_fresh_one_the_history() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join_synced(&ha, &server, "alice");
    let mut bob = join_synced(&hb, &server, "bob");
    alice.send_line("/msg bob seen before leaving");
    expect_private(&mut bob, "alice", "bob", "seen before leaving", false);
    // Quitting saves the point.
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());

    alice.send_line("/msg bob sent while bob was out");
    expect_private(&mut alice, "alice", "bob", "sent while bob was out", false);

    let mut bob = join_synced(&hb, &server, "bob");
    expect_private(&mut bob, "alice", "bob", "sent while bob was out", true);
    sync(&mut bob);
    assert_eq!(
        private_lines(&bob, "alice", "bob", "seen before leaving"),
        (0, 0),
        "already shown before the restart: no duplicate\n{}",
        bob.transcript()
    );
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());

    // Without a saved point (another device, or `--no-resume`) the
    // conversation's history comes whole, oldest first.
    let mut bob = connect(&hb, &server.target(), "bob", &["--no-resume"]);
    expect_private(&mut bob, "alice", "bob", "seen before leaving", true);
    expect_private(&mut bob, "alice", "bob", "sent while bob was out", true);
    let out = bob.stdout_so_far();
    let pos = |t: &str| out.iter().position(|l| l.ends_with(t));
    assert!(
        pos("seen before leaving") < pos("sent while bob was out"),
        "{}",
        bob.transcript()
    );
}

#[test]
fn with_private_history_off_nothing_is_kept_or_replayed() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--private-history", "off"]);
    let mut alice = join_synced(&ha, &server, "alice");
    let mut bob = join_synced(&hb, &server, "bob");
    alice.send_line("/msg bob live only");
    expect_private(&mut bob, "alice", "bob", "live only", false);
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());

    // Nobody is here to take it, and nothing would keep it.
    alice.send_line("/msg bob nobody keeps this");
    alice.expect(Stream::Err, "the refusal", |l| {
        l.contains("message not sent") && l.contains("nobody called")
    });

    let mut bob = connect(&hb, &server.target(), "bob", &["--no-resume"]);
    bob.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    sync(&mut bob);
    assert_never_saw(&bob, &["live only", "nobody keeps this"]);
    assert!(
        !hs.path().join("server").join("private.redb").exists(),
        "no private store is made when the history is off"
    );
}

#[test]
fn a_server_killed_and_restarted_keeps_the_private_history() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let target = server.target();
    let mut alice = join_synced(&ha, &server, "alice");
    let mut bob = join_synced(&hb, &server, "bob");
    alice.send_line("/msg bob durable words");
    expect_private(&mut bob, "alice", "bob", "durable words", false);

    server.proc.kill();
    let _server = Server::start_on(&hs, &target, &[]);
    for p in [&mut alice, &mut bob] {
        p.expect(Stream::Out, "the reconnected line", |l| {
            l == "* connected" || l.starts_with("* reconnected")
        });
    }
    // The reconnect resumed from bob's point: nothing again.
    sync(&mut bob);
    assert_eq!(
        private_lines(&bob, "alice", "bob", "durable words"),
        (1, 0),
        "{}",
        bob.transcript()
    );
    alice.send_line("/msg bob after the restart");
    expect_private(&mut bob, "alice", "bob", "after the restart", false);
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());

    // A fresh join gets the conversation from the restarted server's file,
    // the message from before the crash and the one after, in order.
    let mut bob = connect(&hb, &target, "bob", &["--no-resume"]);
    expect_private(&mut bob, "alice", "bob", "durable words", true);
    expect_private(&mut bob, "alice", "bob", "after the restart", true);
}

#[test]
fn a_new_device_of_the_person_sees_the_conversation_and_a_rename_keeps_it() {
    let (hs, ha, hb, hp) = (Home::new(), Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join_synced(&ha, &server, "alice");
    let mut laptop = join_synced(&hb, &server, "bob");
    alice.send_line("/msg bob before the phone");
    expect_private(&mut laptop, "alice", "bob", "before the phone", false);

    // Bob's phone joins his name with a link code from the laptop: it is
    // bob, by his first key, and the conversation is its own.
    laptop.send_line("/device link");
    let line = laptop.expect(Stream::Out, "the link code line", |l| {
        l.contains("link code: ")
    });
    let code = line
        .split("link code: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {line:?}"))
        .to_string();
    let mut phone = connect(
        &hp,
        &server.target(),
        "bob",
        &["--accept-new", "--link", &code],
    );
    expect_private(&mut phone, "alice", "bob", "before the phone", true);
    sync(&mut phone);

    // Alice renames: her key's claim moves, the conversation stays hers.
    alice.send_line("/nick alicia");
    phone.expect(Stream::Out, "the rename", |l| {
        l == "* alice is now known as alicia"
    });
    phone.send_line("/msg alicia after the rename");
    expect_private(&mut alice, "bob", "alicia", "after the rename", false);
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
    let mut alicia = connect(&ha, &server.target(), "alicia", &["--no-resume"]);
    expect_private(&mut alicia, "alice", "bob", "before the phone", true);
    expect_private(&mut alicia, "bob", "alicia", "after the rename", true);
}
