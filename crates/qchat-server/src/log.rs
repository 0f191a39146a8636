//! The room log's writer: the one task that stores public messages.
//!
//! Sessions queue what their members say; the writer drains the queue in
//! batches and stores each batch in one transaction with one sync (group
//! commit), and only then hands it to [`Room::publish`], which shows it to
//! the room and acknowledges it. So nothing is ever shown or acknowledged
//! that a crash could take back, and under load the cost of a sync is shared
//! by every message that arrived while the previous one ran.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::room::{MemberId, Room};
use crate::store::NewEntry;

/// Messages stored in one commit, at most.
const LOG_BATCH: usize = 1024;

/// A public message on its way to the log.
#[derive(Debug)]
pub struct Pending {
    /// Its author.
    pub member: MemberId,
    /// The author's sequence number, for the acknowledgement.
    pub seq: u64,
    /// What to store.
    pub entry: NewEntry,
}

/// What the log's queue carries.
#[derive(Debug)]
pub enum LogItem {
    /// A message to store and publish.
    Message(Pending),
    /// Answered once everything queued before it is published: a member
    /// leaving waits for it, so its last messages are acknowledged before
    /// its stream ends.
    Barrier(oneshot::Sender<()>),
}

/// Stores and publishes one batch, then answers its barriers; leaves
/// `items` empty with its capacity, for the next batch. The messages go from
/// the queue's vector to the room without being copied into another one.
fn commit(room: &Room, items: &mut Vec<LogItem>) {
    let mut entries: Vec<&NewEntry> = Vec::with_capacity(items.len());
    entries.extend(items.iter().filter_map(|item| match item {
        LogItem::Message(p) => Some(&p.entry),
        LogItem::Barrier(_) => None,
    }));
    let mut barriers = Vec::new();
    if entries.is_empty() {
        drop(entries);
    } else {
        let started = std::time::Instant::now();
        let stored = room.store().append(&entries);
        room.metrics().log_batch(entries.len(), started.elapsed());
        drop(entries);
        let messages = items.drain(..).filter_map(|item| match item {
            LogItem::Message(p) => Some(p),
            LogItem::Barrier(b) => {
                barriers.push(b);
                None
            }
        });
        room.publish(messages, stored);
    }
    for item in items.drain(..) {
        if let LogItem::Barrier(b) = item {
            barriers.push(b);
        }
    }
    for b in barriers {
        let _ = b.send(());
    }
}

/// Stores and publishes everything queued until every sender is gone. The
/// store works synchronously (it waits for the disk), so each batch runs on
/// a blocking thread, never on a runtime worker. The batch's vector goes
/// there and comes back: at up to [`LOG_BATCH`] messages it is too large to
/// allocate afresh for every batch.
pub async fn run_writer(room: Arc<Room>, mut rx: mpsc::Receiver<LogItem>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, LOG_BATCH).await > 0 {
        let r = Arc::clone(&room);
        let mut b = std::mem::take(&mut batch);
        let done = tokio::task::spawn_blocking(move || {
            commit(&r, &mut b);
            b
        })
        .await;
        match done {
            Ok(b) => batch = b,
            Err(e) => tracing::error!("the room log's writer failed: {e}"),
        }
    }
}

/// Stores and publishes whatever is queued now, on this thread. For the
/// room's own tests, which have no runtime: the same steps as the writer.
#[cfg(test)]
pub(crate) fn drain_now(room: &Room, rx: &mut mpsc::Receiver<LogItem>) {
    let mut batch = Vec::new();
    while let Ok(p) = rx.try_recv() {
        batch.push(p);
    }
    commit(room, &mut batch);
}
