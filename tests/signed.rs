//! Signed lines: a verified contact's lines and private messages carry the
//! mark because they verify, and a line or private message under a
//! verified contact's name that does not verify — live or replayed — is
//! shown as forged, never as theirs.
//!
//! The forger is a raw client holding alice's key (what a server taken
//! over could do with any line): it speaks the protocol itself, so it can
//! send a line whose signature covers other text than it carries. The
//! honest server forwards the signature as opaque bytes; only bob's client
//! can tell.

use qchat_proto::signed::{Signed, SignedKind};
use qchat_proto::{ClientMsg, ServerMsg};

use crate::people::my_fingerprint;
use crate::raw::{runtime, Raw, RawStream};
use crate::util::{connect, join, Home, Proc, Server, Stream};

/// Alice's key, as her qchat created it in her home.
fn key_of(home: &Home) -> qchat_tls::Identity {
    qchat_tls::identity::load_as(&home.path().join("identity"), qchat_tls::Role::Person)
        .expect("alice's key")
}

/// A line signed with `signer`, whose signature covers `signed_text`
/// while the line carries `text`.
fn line(
    signer: &qchat_tls::signing::Signer,
    instance: [u8; 16],
    seq: u64,
    text: &str,
    signed_text: &str,
) -> ClientMsg {
    let sent_ms = 1_700_000_000_000 + seq;
    let bytes = Signed {
        kind: SignedKind::Say,
        to: "",
        text: signed_text,
        instance,
        seq,
        sent_ms,
    }
    .bytes();
    ClientMsg::Signed {
        seq,
        text: text.into(),
        action: false,
        sent_ms,
        key: signer.public_key(),
        sig: signer.sign(&bytes),
    }
}

/// Joins as `name` with protocol version 4 and waits out the replay.
async fn join_v4(raw: &Raw, name: &str, instance: [u8; 16]) -> RawStream {
    let mut s = raw.open().await;
    let hello = ClientMsg::HelloV3 {
        version: qchat_proto::PROTOCOL_VERSION,
        name: name.into(),
        instance,
        resume: None,
    };
    s.write(&hello.to_frame()).await.expect("hello written");
    match s.next_msg().await {
        Some(ServerMsg::WelcomeV3 { .. }) => {}
        other => panic!("{name} was not welcomed: {other:?}"),
    }
    loop {
        match s.next_msg().await {
            Some(ServerMsg::Replayed { .. }) => return s,
            Some(_) => {}
            None => panic!("no end of the replay"),
        }
    }
}

/// Sends `msg` and waits for the server to store it.
async fn send_stored(s: &mut RawStream, msg: ClientMsg) {
    let seq = msg.seq().expect("a numbered line");
    s.write(&msg.to_frame()).await.expect("line written");
    loop {
        match s.next_msg().await {
            Some(ServerMsg::AckV3 { seq: acked, id }) if acked == seq => {
                assert!(id > 0, "stored in the log");
                return;
            }
            Some(ServerMsg::Refused { reason, .. }) => panic!("refused: {reason}"),
            Some(_) => {}
            None => panic!("no acknowledgement"),
        }
    }
}

/// A private message to `to` signed with `signer`, whose signature covers
/// `signed_text` while the message carries `text`.
fn private(
    signer: &qchat_tls::signing::Signer,
    instance: [u8; 16],
    seq: u64,
    to: &str,
    text: &str,
    signed_text: &str,
) -> ClientMsg {
    let sent_ms = 1_700_000_000_000 + seq;
    let bytes = Signed {
        kind: SignedKind::Private,
        to,
        text: signed_text,
        instance,
        seq,
        sent_ms,
    }
    .bytes();
    ClientMsg::SignedPrivate {
        seq,
        to: to.into(),
        text: text.into(),
        sent_ms,
        key: signer.public_key(),
        sig: signer.sign(&bytes),
    }
}

/// Sends a private message and waits for the server to deliver it (it is
/// acknowledged, and echoed with its proof).
async fn send_private(s: &mut RawStream, msg: ClientMsg) {
    let seq = msg.seq().expect("a numbered message");
    s.write(&msg.to_frame()).await.expect("message written");
    let (mut echoed, mut acked) = (false, false);
    while !(echoed && acked) {
        match s.next_msg().await {
            Some(ServerMsg::AckV3 { seq: a, .. }) if a == seq => acked = true,
            // Version 5 and later echo it as a stored private message.
            Some(
                ServerMsg::PrivateSigned { .. } | ServerMsg::PrivateLive { proof: Some(_), .. },
            ) => echoed = true,
            Some(ServerMsg::Refused { reason, .. }) => panic!("refused: {reason}"),
            Some(_) => {}
            None => panic!("no acknowledgement"),
        }
    }
}

fn verified(who: &mut Proc, name: &str) {
    who.expect(Stream::Out, "the verified line", |l| {
        l.starts_with(&format!("* verified {name} "))
    });
}

#[test]
fn a_verified_contacts_lines_verify_and_a_forged_one_shows_forged_live_and_replayed() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    bob.send_line(&format!("/verify alice {}", my_fingerprint(&ha, None)));
    verified(&mut bob, "alice");
    // Signed by alice's real client, checked by bob's.
    alice.send_line("hello");
    bob.expect_out("<alice ✓> hello");
    alice.close_stdin();
    alice.wait();

    // A device with alice's key that signs one text and sends another.
    let key = key_of(&ha);
    let signer = qchat_tls::signing::Signer::new(&key).expect("an Ed25519 key");
    let rt = runtime();
    let raw = rt.block_on(Raw::connect_as(&server, &key));
    let instance = [0x42; 16];
    let mut s = rt.block_on(join_v4(&raw, "alice", instance));
    rt.block_on(send_stored(
        &mut s,
        line(&signer, instance, 1, "I owe mallory 100", "I owe mallory 1"),
    ));
    bob.expect_out("* WARNING: forged line claiming to be alice: I owe mallory 100");
    // The same device signing what it sends is alice: the line verifies.
    rt.block_on(send_stored(
        &mut s,
        line(&signer, instance, 2, "genuine", "genuine"),
    ));
    let shown = bob.expect(Stream::Out, "the genuine line", |l| l.ends_with("genuine"));
    assert!(shown.starts_with("<alice"), "{shown}");
    // Not one of bob's lines claimed the forged text as alice's.
    assert!(
        !bob.stdout_so_far()
            .iter()
            .any(|l| l.starts_with("<alice") && l.contains("mallory")),
        "{}",
        bob.transcript()
    );
    bob.close_stdin();
    bob.wait();

    // Bob again, fresh (not resuming, so the history is replayed): the
    // signatures came back from the log.
    let mut bob = connect(&hb, &server.target(), "bob", &["--no-resume"]);
    bob.expect_out("[history] <alice> hello");
    bob.expect_out("* WARNING: forged line claiming to be alice: I owe mallory 100");
    bob.expect_out("[history] <alice> genuine");
    bob.close_stdin();
    bob.wait();
    drop(s);
}

/// Private messages are signed too: a verified contact's shows with the
/// mark, and one whose signature covers other text is a forged private
/// message, never hers.
#[test]
fn a_verified_contacts_private_messages_verify_and_a_forged_one_shows_forged() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    bob.send_line(&format!("/verify alice {}", my_fingerprint(&ha, None)));
    verified(&mut bob, "alice");
    alice.send_line("/msg bob hi");
    bob.expect_out("[alice ✓ -> bob] hi");
    alice.close_stdin();
    alice.wait();

    let key = key_of(&ha);
    let signer = qchat_tls::signing::Signer::new(&key).expect("an Ed25519 key");
    let rt = runtime();
    let raw = rt.block_on(Raw::connect_as(&server, &key));
    let instance = [0x43; 16];
    let mut s = rt.block_on(join_v4(&raw, "alice", instance));
    rt.block_on(send_private(
        &mut s,
        private(&signer, instance, 1, "bob", "send mallory the key", "hello"),
    ));
    bob.expect_out("* WARNING: forged private message claiming to be alice: send mallory the key");
    // Signing what it sends, the same device is alice.
    rt.block_on(send_private(
        &mut s,
        private(&signer, instance, 2, "bob", "genuine", "genuine"),
    ));
    bob.expect_out("[alice ✓ -> bob] genuine");
    assert!(
        !bob.stdout_so_far()
            .iter()
            .any(|l| l.starts_with("[alice") && l.contains("mallory")),
        "{}",
        bob.transcript()
    );
    bob.close_stdin();
    bob.wait();
    drop(s);
}

#[test]
fn a_bad_signature_from_someone_not_verified_is_shown_unverified() {
    let (hs, hm, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut bob = join(&hb, &server, "bob");
    // Mallory's key exists once her qchat has run.
    my_fingerprint(&hm, None);
    let key = key_of(&hm);
    let signer = qchat_tls::signing::Signer::new(&key).expect("an Ed25519 key");
    let rt = runtime();
    let raw = rt.block_on(Raw::connect_as(&server, &key));
    let instance = [0x24; 16];
    let mut s = rt.block_on(join_v4(&raw, "mallory", instance));
    bob.expect_out("* mallory joined");
    rt.block_on(send_stored(&mut s, line(&signer, instance, 1, "ok", "ok")));
    bob.expect_out("<mallory> ok");
    rt.block_on(send_stored(
        &mut s,
        line(&signer, instance, 2, "bent", "straight"),
    ));
    bob.expect_out("* unverified line from mallory (its signature does not verify): bent");
    bob.close_stdin();
    bob.wait();
    drop(s);
}

/// The host (`qchat serve --name`) signs its lines like any member with a
/// key: verified, they carry the mark rather than show as forged.
#[test]
fn the_hosts_lines_are_signed() {
    let (hs, hb) = (Home::new(), Home::new());
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &["--name", "host"]);
    server
        .proc
        .expect(Stream::Out, "the operator joining", |l| {
            l.starts_with("* joined the room as host")
        });
    let mut bob = join(&hb, &server, "bob");
    bob.send_line(&format!("/verify host {}", my_fingerprint(&hs, None)));
    verified(&mut bob, "host");
    server.proc.send_line("welcome, bob");
    bob.expect_out("<host ✓> welcome, bob");
    bob.close_stdin();
    bob.wait();
}
