//! Talking in the room: messages both ways, notices, ordering, names.

use crate::util::{join, Home, Server, Stream};

#[test]
fn several_members_exchange_messages_both_ways() {
    let (hs, ha, hb, hc) = (Home::new(), Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    let mut carol = join(&hc, &server, "carol");
    alice.expect_out("* carol joined");
    bob.expect_out("* carol joined");

    alice.send_line("hello from alice");
    bob.expect_out("<alice> hello from alice");
    carol.expect_out("<alice> hello from alice");
    bob.send_line("hi alice, bob here");
    alice.expect_out("<bob> hi alice, bob here");
    carol.expect_out("<bob> hi alice, bob here");
    carol.send_line("and carol");
    alice.expect_out("<carol> and carol");
    bob.expect_out("<carol> and carol");
    // Nobody sees their own line echoed back as if someone else said it.
    assert!(!alice
        .stdout_so_far()
        .iter()
        .any(|l| l.starts_with("<alice>")));
}

#[test]
fn join_and_leave_are_announced_and_the_room_is_listed() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    bob.expect_out("* in the room: alice, bob");
    alice.expect_out("* bob joined");
    bob.close_stdin();
    assert!(bob.wait().success(), "{}", bob.transcript());
    alice.expect_out("* bob left");
}

#[test]
fn a_killed_member_is_announced_as_gone() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    // A short idle timeout: bob's silence is noticed after about 4 s
    // instead of 10, and alice, whose keep-alives arrive in time, stays.
    // His name is held for a reconnect for one second, then he is gone.
    let server = Server::start_on(
        &hs,
        "127.0.0.1:0",
        &["--idle-timeout", "4", "--reconnect-grace", "1"],
    );
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    bob.kill();
    alice.expect_out("* bob is reconnecting");
    let line = alice.expect(Stream::Out, "bob's departure", |l| {
        l.starts_with("* bob left")
    });
    assert!(line.contains("timed out"), "{line}");
    alice.send_line("alone now");
    let mut carol = join(&Home::new(), &server, "carol");
    carol.expect_out("[history] <alice> alone now");
}

#[test]
fn a_taken_name_is_refused_without_regard_to_case() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut imposter = crate::util::connect(&hb, &server.target(), "ALICE", &["--accept-new"]);
    let line = imposter.expect_err_contains("taken");
    assert!(line.starts_with("qchat: "), "{line}");
    let status = imposter.wait();
    assert!(!status.success());
    // alice's session is untouched: what she says reaches the room (bob,
    // joining next, finds it in the history).
    alice.send_line("still here");
    let mut bob = join(&Home::new(), &server, "bob");
    bob.expect_out("[history] <alice> still here");
    alice.expect_out("* bob joined");
    // Nobody joined or left as a result.
    assert!(!alice.stdout_so_far().iter().any(|l| l.contains("ALICE")));
    bob.close_stdin();
    bob.wait();
}

#[test]
fn piped_lines_all_arrive_in_order_before_exit() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    bob.send_line("one");
    bob.send_line("two");
    bob.send_line("three");
    bob.close_stdin();
    let status = bob.wait();
    assert!(status.success(), "{}", bob.transcript());
    alice.expect_out("<bob> one");
    alice.expect_out("<bob> two");
    alice.expect_out("<bob> three");
    alice.expect_out("* bob left");
}

#[test]
fn an_invalid_name_is_refused_before_connecting() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut p = crate::util::connect(&ha, &server.target(), "two words", &["--accept-new"]);
    p.expect_err_contains("cannot use the name");
    assert_eq!(p.wait().code(), Some(1));
}
