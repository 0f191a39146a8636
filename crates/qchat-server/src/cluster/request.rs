//! Requests from one node to another, for what must reach a member where
//! she is connected: private messages ([`super::private`]) and a room's
//! kick or invitation notice ([`super::forward`]).
//!
//! Core NATS, not JetStream: nothing is kept. Each node answers on its own
//! subject per purpose, `qchat.node.<node id>.<purpose>`; the asking node
//! sends the request there and waits a bounded time, and only an answer
//! that the request was carried out counts as done. No answer, a late one
//! and an unreadable one are failures, said in words the caller puts after
//! "which" ("… is on another server of this cluster, which did not answer
//! in time").

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::ClusterError;

/// How long the asking node waits: a node that does not answer by then is
/// taken for gone, and the member who asked is told so.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What the answering node says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Carried out for the member of that name (as that node knows it).
    Delivered {
        /// The member's name.
        to: String,
    },
    /// Not carried out, and why.
    NotHere {
        /// Why, in words for the member who asked.
        reason: String,
    },
}

/// The subject `node` answers `purpose`'s requests on.
pub fn subject(node: &str, purpose: &str) -> String {
    format!("qchat.node.{node}.{purpose}")
}

/// Starts answering the requests sent to `subject` with `answer`, for as
/// long as `target` lives (the client re-subscribes by itself after a
/// reconnect). `what` names the requests in the log.
pub async fn serve<T: Send + Sync + 'static>(
    client: &async_nats::Client,
    subject: String,
    target: Weak<T>,
    answer: fn(&T, &[u8]) -> Reply,
    what: &'static str,
) -> Result<(), ClusterError> {
    let subscriber = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::JetStream(format!("subscribing to {subject}: {e}")))?;
    tokio::spawn(answer_all(subscriber, client.clone(), target, answer, what));
    Ok(())
}

async fn answer_all<T>(
    mut subscriber: async_nats::Subscriber,
    client: async_nats::Client,
    target: Weak<T>,
    answer: fn(&T, &[u8]) -> Reply,
    what: &'static str,
) {
    while let Some(msg) = subscriber.next().await {
        let Some(t) = target.upgrade() else {
            return;
        };
        let reply = answer(&t, &msg.payload);
        drop(t);
        // A request without a reply subject is nobody's: it is carried out
        // (or not) all the same, and nobody is told.
        let Some(to) = msg.reply else {
            continue;
        };
        match postcard::to_allocvec(&reply) {
            Ok(bytes) => {
                if let Err(e) = client.publish(to, bytes.into()).await {
                    tracing::debug!("cannot answer {what}: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode the answer to {what}: {e}"),
        }
    }
}

/// Sends `req` (`what`, for the words of a failure) to `subject` and
/// waits for the answer: the member's name as the other node knows it, or
/// what went wrong, in words that follow "which".
pub async fn ask<R: Serialize>(
    client: &async_nats::Client,
    subject: String,
    req: &R,
    what: &str,
) -> Result<String, String> {
    let payload =
        postcard::to_allocvec(req).map_err(|e| format!("could not be sent the {what} ({e})"))?;
    let asked = client.request(subject, payload.into());
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
