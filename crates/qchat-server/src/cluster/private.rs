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

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::room::{Away, MemberId, PrivateLine, Room};

/// How long the sender's node waits for the recipient's: a node that does
/// not answer by then is taken for gone, and the sender told so.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The most a request may hold: a line at the largest message limit with
/// its names and proof fits many times over; anything bigger is not ours.
const MAX_REQUEST: usize = 256 * 1024;

/// The subject `node` answers private messages on.
pub fn subject(node: &str) -> String {
    format!("qchat.node.{node}.private")
}

/// What the recipient's node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Delivered to the member of that name (as that node knows it).
    Delivered {
        /// The recipient's name.
        to: String,
    },
    /// Not delivered, and why.
    NotHere {
        /// Why, in words for the sender.
        reason: String,
    },
}

/// Starts answering the private messages other nodes send to `room`'s
/// members; the answering ends when the room is gone. Does nothing for a
/// room that is not clustered.
pub async fn attach(room: &Arc<Room>) -> Result<(), super::ClusterError> {
    let Some(online) = room.registry().online() else {
        return Ok(());
    };
    let client = online.cluster().client().clone();
    let subject = subject(online.cluster().node_id());
    let subscriber = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| super::ClusterError::JetStream(format!("subscribing to {subject}: {e}")))?;
    tokio::spawn(answer_all(subscriber, client, Arc::downgrade(room)));
    Ok(())
}

/// Answers every request until the room or the subscription ends (the
/// client re-subscribes by itself after a reconnect).
async fn answer_all(
    mut subscriber: async_nats::Subscriber,
    client: async_nats::Client,
    room: Weak<Room>,
) {
    while let Some(msg) = subscriber.next().await {
        let Some(room) = room.upgrade() else {
            return;
        };
        let reply = answer(&room, &msg.payload);
        drop(room);
        // A request without a reply subject is nobody's: it is delivered
        // (or not) all the same, and nobody is told.
        let Some(to) = msg.reply else {
            continue;
        };
        match postcard::to_allocvec(&reply) {
            Ok(bytes) => {
                if let Err(e) = client.publish(to, bytes.into()).await {
                    tracing::debug!("cannot answer a private message: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode a private message's answer: {e}"),
        }
    }
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
    let payload = postcard::to_allocvec(&away.line)
        .map_err(|e| format!("could not be sent the message ({e})"))?;
    let asked = client.request(subject(&away.node), payload.into());
    let answer = match tokio::time::timeout(TIMEOUT, asked).await {
        Err(_) => return Err("did not answer in time".into()),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err("is not answering".into())
        }
        Ok(Err(e)) => return Err(format!("could not be reached ({e})")),
        Ok(Ok(m)) => m,
    };
    match postcard::from_bytes::<Reply>(&answer.payload) {
        Ok(Reply::Delivered { to }) => Ok(to),
        Ok(Reply::NotHere { reason }) => Err(format!("says: {reason}")),
        Err(_) => Err("gave an answer that could not be read".into()),
    }
}
