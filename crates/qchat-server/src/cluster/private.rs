//! Private messages between members of different nodes: live only, never
//! stored (a node's private history would wait where the recipient does
//! not look, so a cluster keeps none).
//!
//! Each node answers requests on its own subject,
//! `qchat.node.<node id>.private` (core NATS, not JetStream: nothing is
//! kept). The sender's node, finding the recipient online on another node
//! (presence says which), sends the message there as a request and waits
//! a bounded time; the recipient's node delivers it exactly as it does its
//! own members' and answers whether it did. Only a delivery is echoed to
//! the sender and acknowledged: a message that may not have arrived is
//! refused, so a client never counts it as sent.

use std::sync::Arc;

use super::request::Reply;

use crate::room::{Away, MemberId, PrivateLine, Room};

/// The most a request may hold: a line at the largest message limit with
/// its names and proof fits many times over; anything bigger is not ours.
const MAX_REQUEST: usize = 256 * 1024;

/// The subject `node` answers private messages on.
pub fn subject(node: &str) -> String {
    super::request::subject(node, "private")
}

/// Starts answering the private messages other nodes send to `room`'s
/// members; the answering ends when the room is gone. Does nothing for a
/// room that is not clustered.
pub async fn attach(room: &Arc<Room>) -> Result<(), super::ClusterError> {
    let Some(online) = room.registry().online() else {
        return Ok(());
    };
    let cluster = online.cluster();
    super::request::serve(
        cluster.client(),
        subject(cluster.node_id()),
        Arc::downgrade(room),
        answer,
        "a private message",
    )
    .await
}

/// Delivers one request's message, under the checks a member's own
/// message passes; never trusts the payload.
fn answer(room: &Room, payload: &[u8]) -> Reply {
    let not_here = |reason: String| {
        room.metrics().messages_refused.inc();
        Reply::NotHere { reason }
    };
    if payload.len() > MAX_REQUEST {
        return not_here("the message was too large to read".into());
    }
    let Ok(line) = postcard::from_bytes::<PrivateLine>(payload) else {
        return not_here("the message could not be read".into());
    };
    let max = room.options().max_message;
    if line.text.len() > max {
        return not_here(crate::session::too_long(line.text.len(), max));
    }
    if qchat_proto::names::validate(&line.from).is_err() {
        return not_here("the sender's name is not valid".into());
    }
    match room.private_from_afar(&line) {
        Ok(to) => Reply::Delivered { to },
        Err(reason) => not_here(reason),
    }
}

/// Sends a member's private message to the node its recipient is on and
/// finishes it there: echoed and acknowledged when delivered, refused
/// otherwise. Waits outside the room's lock.
pub(crate) async fn send(room: &Room, id: MemberId, seq: u64, away: Away) {
    let outcome = match room.registry().online() {
        Some(online) => request(online.cluster().client(), &away).await,
        None => Err("this server is not in a cluster".to_string()),
    };
    let outcome = outcome.map_err(|why| {
        format!(
            "{:?} is on another server of this cluster, which {why}; nothing was sent",
            away.line.to
        )
    });
    room.private_sent(id, seq, &away.line, outcome);
}

/// Asks `away.node` to deliver `away.line`: the recipient's name, or what
/// went wrong (words that follow "which").
async fn request(client: &async_nats::Client, away: &Away) -> Result<String, String> {
    super::request::ask(client, subject(&away.node), &away.line, "message").await
}

#[cfg(test)]
mod tests {
    //! Two nodes in process over a real nats-server, members joined through
    //! the same session code a QUIC member runs.

    use std::time::Duration;

    use qchat_proto::{ClientMsg, ServerMsg};
    use tokio::time::Instant;

    use super::*;
    use crate::cluster::presence::tests::nodes::{member, node, Client};
    use crate::cluster::testing::NatsServer;
    use crate::Server;

    const WAIT: Duration = Duration::from_secs(10);

    /// Waits until `server` sees `name` online on another node.
    async fn sees(server: &Server, name: &str) {
        let deadline = Instant::now() + WAIT;
        // Presence arrives by the bucket's watch, in its own time.
        while server
            .room()
            .presence()
            .and_then(|p| p.node_of(name))
            .is_none()
        {
            assert!(Instant::now() < deadline, "the node never saw {name}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn private(seq: u64, to: &str, text: &str) -> ClientMsg {
        ClientMsg::Private {
            seq,
            to: to.into(),
            text: text.into(),
        }
    }

    /// The next private line or refusal `c` is sent (the rest is presence).
    async fn next_private(c: &mut Client) -> ServerMsg {
        c.until("a private line, an ack or a refusal", |m| {
            matches!(
                m,
                ServerMsg::Private { .. } | ServerMsg::AckV3 { .. } | ServerMsg::Refused { .. }
            )
        })
        .await
    }

    fn text_of(m: &ServerMsg) -> Option<(&str, &str, &str)> {
        match m {
            ServerMsg::Private { from, to, text, .. } => Some((from, to, text)),
            _ => None,
        }
    }

    /// A signed line survives the trip between nodes whole, and reaches
    /// its recipient as a local one would: with its proof and the name as
    /// addressed from version 4, plain (the name as known) before.
    #[test]
    fn a_signed_line_crosses_whole_and_is_shown_by_the_recipients_version() {
        let proof = qchat_proto::Proof {
            instance: [7; 16],
            seq: 9,
            sent_ms: 5,
            key: [3; 32],
            sig: vec![1; 64],
        };
        let line = PrivateLine {
            from: "bob".into(),
            to: "ALICE".into(),
            text: "signed".into(),
            time_ms: 42,
            proof: Some(proof.clone()),
        };
        let bytes = postcard::to_allocvec(&line).expect("encodes");
        let back: PrivateLine = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, line);
        let shown =
            |version| ServerMsg::decode(&back.frame("alice", version)[4..]).expect("a valid frame");
        assert_eq!(
            shown(qchat_proto::PROTOCOL_VERSION),
            ServerMsg::PrivateSigned {
                from: "bob".into(),
                to: "ALICE".into(),
                text: "signed".into(),
                time_ms: 42,
                proof,
            }
        );
        assert_eq!(
            shown(3),
            ServerMsg::Private {
                from: "bob".into(),
                to: "alice".into(),
                text: "signed".into(),
                time_ms: 42,
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_private_message_reaches_a_member_of_another_node_once() {
        let nats = NatsServer::start().await;
        let (a, b) = (node(&nats).await, node(&nats).await);
        attach(a.room()).await.expect("a answers");
        attach(b.room()).await.expect("b answers");
        let mut alice = member(&a, "alice", 1).await;
        let mut bob = member(&b, "bob", 2).await;
        sees(&b, "alice").await;

        bob.send(private(1, "ALICE", "across")).await;
        let got = next_private(&mut alice).await;
        assert_eq!(text_of(&got), Some(("bob", "alice", "across")), "{got:?}");
        // His echo names her as her node knows her, then the ack.
        let echo = next_private(&mut bob).await;
        assert_eq!(text_of(&echo), Some(("bob", "alice", "across")), "{echo:?}");
        let ack = next_private(&mut bob).await;
        assert!(matches!(ack, ServerMsg::AckV3 { seq: 1, id: 0 }), "{ack:?}");

        // A re-send of the same line is acknowledged, not delivered again:
        // the next line alice gets is the one after it.
        bob.send(private(1, "alice", "across")).await;
        let ack = next_private(&mut bob).await;
        assert!(matches!(ack, ServerMsg::AckV3 { seq: 1, .. }), "{ack:?}");
        bob.send(private(2, "alice", "and again")).await;
        let got = next_private(&mut alice).await;
        assert_eq!(
            text_of(&got),
            Some(("bob", "alice", "and again")),
            "{got:?}"
        );
        let echo = next_private(&mut bob).await;
        assert_eq!(
            text_of(&echo),
            Some(("bob", "alice", "and again")),
            "{echo:?}"
        );
        let ack = next_private(&mut bob).await;
        assert!(matches!(ack, ServerMsg::AckV3 { seq: 2, .. }), "{ack:?}");

        // Nobody by that name anywhere: refused as on a single node.
        bob.send(private(3, "nobody", "hello?")).await;
        let refused = next_private(&mut bob).await;
        assert!(
            matches!(&refused, ServerMsg::Refused { seq: 3, reason } if reason.contains("nobody called")),
            "{refused:?}"
        );
    }

    /// A node that does not answer (here: one that never subscribed) is
    /// not taken to have delivered: the sender is refused, not acked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_nobody_answers_for_is_refused_not_acknowledged() {
        let nats = NatsServer::start().await;
        let (a, b) = (node(&nats).await, node(&nats).await);
        attach(b.room()).await.expect("b answers");
        let mut alice = member(&a, "alice", 1).await;
        let mut bob = member(&b, "bob", 2).await;
        sees(&b, "alice").await;
        bob.send(private(1, "alice", "lost?")).await;
        let refused = next_private(&mut bob).await;
        assert!(
            matches!(&refused, ServerMsg::Refused { seq: 1, reason }
                if reason.contains("another server") && reason.contains("nothing was sent")),
            "{refused:?}"
        );
        // Alice got nothing: the first private line she sees is a later,
        // local one.
        let mut carol = member(&a, "carol", 3).await;
        carol.send(private(1, "alice", "local")).await;
        let got = next_private(&mut alice).await;
        assert_eq!(text_of(&got), Some(("carol", "alice", "local")), "{got:?}");
    }

    /// What arrives on a node's subject is never trusted: unreadable,
    /// oversized or misaddressed requests are answered "not here" and the
    /// node carries on delivering.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_are_answered_and_harm_nothing() {
        let nats = NatsServer::start().await;
        let a = node(&nats).await;
        attach(a.room()).await.expect("a answers");
        let mut alice = member(&a, "alice", 1).await;
        let online = a.room().registry().online().expect("clustered").clone();
        let client = online.cluster().client().clone();
        let subject = subject(online.cluster().node_id());
        let ask = |payload: Vec<u8>| {
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                let m = tokio::time::timeout(WAIT, client.request(subject, payload.into()))
                    .await
                    .expect("answered in time")
                    .expect("answered");
                postcard::from_bytes::<Reply>(&m.payload).expect("a reply")
            }
        };
        let line = |to: &str, text: String| PrivateLine {
            from: "bob".into(),
            to: to.into(),
            text,
            time_ms: 1,
            proof: None,
        };
        let bytes = |l: &PrivateLine| postcard::to_allocvec(l).expect("encodes");
        let not_here = |r: Reply, want: &str| match r {
            Reply::NotHere { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("{other:?}"),
        };

        not_here(ask(vec![0xff; 7]).await, "could not be read");
        let max = a.room().options().max_message;
        not_here(
            ask(bytes(&line("alice", "x".repeat(max + 1)))).await,
            "longer than the limit",
        );
        not_here(ask(bytes(&line("zed", "hi".into()))).await, "nobody called");
        let mut bad = line("alice", "hi".into());
        bad.from = String::new();
        not_here(ask(bytes(&bad)).await, "not valid");

        let r = ask(bytes(&line("Alice", "fine".into()))).await;
        assert_eq!(r, Reply::Delivered { to: "alice".into() });
        let got = next_private(&mut alice).await;
        assert_eq!(text_of(&got), Some(("bob", "alice", "fine")), "{got:?}");
    }
}
