//! The room log's writer: the one thread that stores public messages.
//!
//! Sessions queue what their members say; the writer drains the queue in
//! batches and stores each batch in one transaction with one sync (group
//! commit), and only then hands it to [`crate::room::Room::publish`], which shows it to
//! the room and acknowledges it. So nothing is ever shown or acknowledged
//! that a crash could take back, and under load the cost of a sync is shared
//! by every message that arrived while the previous one ran.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::room::MemberId;
#[cfg(test)]
use crate::room::Room;
use crate::store::{append_together, Appended, NewEntry, Store, StoreError};

/// What a log writer stores into and publishes to: the lobby
/// ([`crate::room::Room`])
/// or another room ([`crate::rooms::Channel`]), each with its own log; the
/// lobby has a writer of its own ([`run_writer`]), the other rooms share
/// one ([`run_shared_writer`]).
pub trait Log: Send + Sync + 'static {
    /// The log.
    fn store(&self) -> &Arc<dyn Store>;
    /// The counters the writer updates.
    fn metrics(&self) -> &Metrics;
    /// The most messages one batch may hold. A room that hands each member
    /// its part of a batch as one queue item ([`crate::room::Room`]) needs
    /// a batch well inside a member's queue: a part that cannot fit whole
    /// makes its member a slow reader, however fast it reads.
    fn max_batch(&self) -> usize {
        LOG_BATCH
    }

    /// Shows a stored batch to the room and acknowledges it (see
    /// [`crate::room::Room::publish`]).
    fn publish(
        &self,
        batch: impl Iterator<Item = Pending>,
        stored: Result<Vec<Appended>, StoreError>,
    );
}

/// Messages stored in one commit, at most.
pub(crate) const LOG_BATCH: usize = 1024;

/// The batch vector kept between batches; a larger one is let go.
const SMALL_BATCH: usize = 64;

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

impl Pending {
    /// A line `member` says now, under `from`: the one place a line gets
    /// its receive time and its idempotency key (the client's instance and
    /// `seq`, when the client sent an instance), for the lobby and every
    /// other room alike.
    pub fn said(
        member: MemberId,
        instance: Option<[u8; 16]>,
        from: String,
        seq: u64,
        text: String,
        action: bool,
        proof: Option<Box<qchat_proto::Proof>>,
    ) -> Self {
        Pending {
            member,
            seq,
            entry: NewEntry {
                key: instance.map(|i| (i, seq)),
                from,
                text,
                time_ms: qchat_proto::clock::now_ms(),
                action,
                proof,
            },
        }
    }
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

/// What the store made of a batch's messages; `None` for a batch of
/// barriers only.
type Outcome = Option<Result<Vec<Appended>, StoreError>>;

/// Stores a batch's messages in one commit.
fn store<L: Log>(room: &L, items: &[LogItem]) -> Outcome {
    let mut lines: Vec<&Pending> = Vec::with_capacity(items.len());
    lines.extend(items.iter().filter_map(|item| match item {
        LogItem::Message(p) => Some(p),
        LogItem::Barrier(_) => None,
    }));
    if lines.is_empty() {
        return None;
    }
    let entries = lines.len();
    let started = std::time::Instant::now();
    let stored = room.store().append_said(&lines);
    if let Ok(results) = &stored {
        let ordered = results
            .iter()
            .filter(|r| matches!(r, Appended::Ordered(_)))
            .count();
        if ordered > 0 {
            room.metrics().cluster_published.inc_by(ordered as u64);
        }
    }
    room.metrics().log_batch(entries, started.elapsed());
    Some(stored)
}

/// Publishes a stored batch, then answers its barriers; leaves `items`
/// empty with its capacity, for a later batch. The messages go from the
/// queue's vector to the room without being copied into another one.
fn publish<L: Log>(room: &L, items: &mut Vec<LogItem>, stored: Outcome) {
    let mut barriers = Vec::new();
    if let Some(stored) = stored {
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
    // A cluster's lines are acknowledged by the room's feed: a barrier
    // waits (bounded) until the feed has shown what this node stored.
    if let Some(log) = room.store().ordered() {
        if !barriers.is_empty() && !log.all_shown() {
            let shown = log.until_shown();
            log.handle().spawn(async move {
                shown.await;
                for b in barriers {
                    let _ = b.send(());
                }
            });
            return;
        }
    }
    for b in barriers {
        let _ = b.send(());
    }
}

/// Starts the room's log writer on a thread of its own
/// ([`run_writer`]). The thread holds the room only weakly: the room holds
/// the queue's sender, so the writer ends when the room is dropped, and
/// the two do not keep each other alive.
pub fn spawn_writer<L: Log>(
    room: &Arc<L>,
    rx: mpsc::Receiver<LogItem>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let room = Arc::downgrade(room);
    std::thread::Builder::new()
        .name("qchat-log".into())
        .spawn(move || run_writer(&room, rx))
}

/// Stores and publishes everything queued until every sender is gone (the
/// room dropped), on the calling thread, which it blocks: a thread of its
/// own ([`spawn_writer`]), never a runtime worker.
///
/// Each batch is everything queued when the writer comes back for more
/// (up to [`Log::max_batch`]): stored in one commit, then published, then the
/// next. One long-lived thread rather than a blocking task per stage and
/// batch: with a few hundred messages in flight the batches are small, and
/// two hand-overs between threads per batch (to the blocking pool and
/// back) cost more than the commit they would overlap with the fan-out.
/// Under load the batches grow instead, and the commit's cost is shared by
/// more messages. Publishing from a task on the runtime instead (the store
/// going on meanwhile) was measured too: less CPU, but the published batch
/// waited for a busy runtime thread, and a small room's throughput fell by
/// half (docs/PERFORMANCE.md, round 8). Nothing is shown before it is durable, batches are
/// published in id order, and a barrier is answered only after everything
/// queued before it is published.
pub fn run_writer<L: Log>(room: &Weak<L>, mut rx: mpsc::Receiver<LogItem>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        // Gone only while it is being dropped: nobody is left to show
        // anything to.
        let Some(room) = room.upgrade() else {
            return;
        };
        batch.push(first);
        let max = room.max_batch();
        while batch.len() < max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let outcome = store(&*room, &batch);
        publish(&*room, &mut batch, outcome);
        // A burst's large vector is not kept for the quiet that follows.
        if batch.capacity() > 2 * SMALL_BATCH {
            batch.shrink_to(SMALL_BATCH);
        }
    }
}

/// What the shared writer's queue carries: an item and the room it is
/// for (held weakly, like a room's own writer holds its room). An item
/// for no room (`Weak::new()`) is a barrier for all of them.
pub type RoomItem<L> = (Weak<L>, LogItem);

/// One batch of the writer shared by many rooms: whatever was queued for
/// any room, stored in one commit where the rooms share a file
/// ([`append_together`]), then published room by room, each room's part
/// in id order under that room's lock. A barrier is answered once its
/// room's part is published; a barrier for no room, or for a room that is
/// gone, once every part is.
fn shared_batch<L: Log>(batch: &mut Vec<RoomItem<L>>) {
    let mut rooms: Vec<(Arc<L>, Vec<LogItem>)> = Vec::new();
    // Room by address: a batch may hold a thousand rooms.
    let mut at: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut last_barriers = Vec::new();
    for (room, item) in batch.drain(..) {
        let Some(room) = room.upgrade() else {
            // Nobody is left to show a message to; a barrier still waits
            // for everything queued before it.
            if let LogItem::Barrier(b) = item {
                last_barriers.push(b);
            }
            continue;
        };
        let i = *at
            .entry(Arc::as_ptr(&room) as *const () as usize)
            .or_insert_with(|| {
                rooms.push((Arc::clone(&room), Vec::new()));
                rooms.len() - 1
            });
        rooms[i].1.push(item);
    }
    let outcomes = {
        // A cluster's logs are stored one by one, each line with its
        // author (no shared commit to make); a server's own go together.
        let ordered: Vec<Outcome> = rooms
            .iter()
            .map(|(room, items)| match room.store().ordered() {
                Some(_) => store(&**room, items),
                None => None,
            })
            .collect();
        let parts: Vec<(&dyn Store, Vec<&NewEntry>)> = rooms
            .iter()
            .filter(|(room, _)| room.store().ordered().is_none())
            .map(|(room, items)| {
                let entries = items
                    .iter()
                    .filter_map(|item| match item {
                        LogItem::Message(p) => Some(&p.entry),
                        LogItem::Barrier(_) => None,
                    })
                    .collect();
                (&**room.store(), entries)
            })
            .collect();
        let messages: usize = parts.iter().map(|(_, e)| e.len()).sum();
        let started = std::time::Instant::now();
        let mut together = append_together(&parts).into_iter();
        if let (Some((room, _)), true) = (rooms.first(), messages > 0) {
            room.metrics().log_batch(messages, started.elapsed());
        }
        rooms
            .iter()
            .zip(ordered)
            .map(|((room, _), outcome)| match room.store().ordered() {
                Some(_) => outcome,
                None => together.next().flatten(),
            })
            .collect::<Vec<Outcome>>()
    };
    for ((room, mut items), outcome) in rooms.into_iter().zip(outcomes) {
        publish(&*room, &mut items, outcome);
    }
    for b in last_barriers {
        let _ = b.send(());
    }
}

/// Starts the writer shared by many rooms ([`run_shared_writer`]) on a
/// thread of its own. It holds no room: it ends when every sender of the
/// queue is gone.
pub fn spawn_shared_writer<L: Log>(
    rx: mpsc::Receiver<RoomItem<L>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("qchat-rooms-log".into())
        .spawn(move || run_shared_writer(rx))
}

/// Stores and publishes everything queued for any of the rooms, until
/// every sender is gone, on the calling thread (see [`run_writer`]: the
/// same batches, the same guarantees, per room). One writer for all the
/// rooms of one file is not a bottleneck a writer per room would avoid:
/// the engine takes one write transaction at a time, so per-room writers
/// would only queue for it, each with its own sync; one writer syncs once
/// for every room with something to store.
pub fn run_shared_writer<L: Log>(mut rx: mpsc::Receiver<RoomItem<L>>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < LOG_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        shared_batch(&mut batch);
        if batch.capacity() > 2 * SMALL_BATCH {
            batch.shrink_to(SMALL_BATCH);
        }
    }
}

/// [`run_shared_writer`] driven by a task on the runtime, each batch on a
/// blocking thread, for the crate's tests (see [`run_writer_on_runtime`]).
#[cfg(test)]
pub(crate) async fn run_shared_writer_on_runtime<L: Log>(mut rx: mpsc::Receiver<RoomItem<L>>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, LOG_BATCH).await > 0 {
        let mut items = std::mem::take(&mut batch);
        let done = tokio::task::spawn_blocking(move || {
            shared_batch(&mut items);
            items
        });
        match done.await {
            Ok(items) => batch = items,
            Err(e) => {
                tracing::error!("the rooms' log writer failed: {e}");
                return;
            }
        }
    }
}

/// The writer's steps ([`run_writer`]'s batches, stored then published)
/// driven by a task on the runtime, each batch on a blocking thread, for
/// the crate's tests. Their clock is paused and jumps ahead whenever the
/// runtime has nothing to do: a writer on a thread of its own would look
/// idle to it, and every wait for a published message would time out at
/// once. A blocking task holds the clock while it runs.
#[cfg(test)]
pub(crate) async fn run_writer_on_runtime<L: Log>(room: Arc<L>, mut rx: mpsc::Receiver<LogItem>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, room.max_batch()).await > 0 {
        let r = Arc::clone(&room);
        let mut items = std::mem::take(&mut batch);
        let done = tokio::task::spawn_blocking(move || {
            let outcome = store(&*r, &items);
            publish(&*r, &mut items, outcome);
            items
        });
        match done.await {
            Ok(items) => batch = items,
            Err(e) => {
                tracing::error!("the room log's writer failed: {e}");
                return;
            }
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
    let outcome = store(room, &batch);
    publish(room, &mut batch, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::drained;

    use bytes::Bytes;
    use qchat_proto::ServerMsg;

    use crate::room::{Ending, Peer};
    use crate::store::MemoryStore;
    use crate::ServerOptions;

    fn join(room: &Room, name: &str) -> (MemberId, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(20_000);
        let peer = Peer {
            addr: None,
            operator: false,
            version: 2,
            instance: None,
            conn: None,
            key: None,
        };
        let j = room
            .join(name, tx, Ending::new(), peer, None)
            .expect("joins");
        (j.id, rx)
    }

    /// A member's part of a batch is queued whole, so the lobby's batches
    /// stay within half a member's queue: forty lines waiting at once, with
    /// `--queue 16`, reach another member as parts of at most eight, and
    /// nobody is taken for a slow reader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_fits_half_a_members_queue() {
        let options = ServerOptions {
            queue_len: 16,
            history: 0,
            ..ServerOptions::default()
        };
        let room = Room::new(Arc::new(options), Arc::new(MemoryStore::new(1000)));
        assert_eq!(Log::max_batch(&*room), 8);
        let rx = room.take_log().expect("the queue");
        let (a, mut ra) = join(&room, "a");
        let (_b, mut rb) = join(&room, "b");
        let queue = room.log_queue().clone();
        for seq in 1..=40u64 {
            let p = room
                .submit(a, seq, seq.to_string(), false, None)
                .expect("a member");
            queue.try_send(LogItem::Message(p)).expect("room");
        }
        // All forty wait before the writer starts, so its batches are as
        // large as it allows.
        let (tx, done) = oneshot::channel();
        queue.try_send(LogItem::Barrier(tx)).expect("room");
        let _writer = spawn_writer(&room, rx).expect("a thread");
        tokio::time::timeout(std::time::Duration::from_secs(30), done)
            .await
            .expect("answered in time")
            .expect("answered, not dropped");
        let mut parts = Vec::new();
        let mut shown = Vec::new();
        while let Ok(item) = rb.try_recv() {
            let frames: Vec<_> = crate::writer::frames(item).collect();
            parts.push(frames.len());
            for f in frames {
                if let Ok(ServerMsg::Chat { text, .. }) = ServerMsg::decode(&f[4..]) {
                    shown.push(text.parse::<u64>().expect("a number"));
                }
            }
        }
        assert_eq!(shown, (1..=40).collect::<Vec<_>>());
        assert!(parts.iter().all(|&n| n <= 8), "parts of {parts:?} frames");
        assert_eq!(
            drained(&mut ra).len(),
            40 + 2,
            "the welcome, b joining, and 40 acks"
        );
    }

    /// Many batches through the two stages (one stored while the one
    /// before is published): every message is shown once and in order,
    /// acknowledged in order, and every barrier is answered after what was
    /// queued before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_keeps_the_order_and_answers_every_barrier() {
        let room = Room::new(
            Arc::new(ServerOptions::default()),
            Arc::new(MemoryStore::new(100_000)),
        );
        let rx = room.take_log().expect("the queue");
        let writer = spawn_writer(&room, rx).expect("a thread");
        let (a, mut ra) = join(&room, "a");
        let (_b, mut rb) = join(&room, "b");
        let queue = room.log_queue().clone();
        let mut barriers = Vec::new();
        for seq in 1..=5000u64 {
            let p = room
                .submit(a, seq, seq.to_string(), false, None)
                .expect("a member");
            queue
                .send(LogItem::Message(p))
                .await
                .expect("the writer runs");
            if seq % 700 == 0 || seq == 5000 {
                let (tx, done) = oneshot::channel();
                queue
                    .send(LogItem::Barrier(tx))
                    .await
                    .expect("the writer runs");
                barriers.push((seq, done));
            }
        }
        let mut heard = Vec::new();
        for (seq, done) in barriers {
            tokio::time::timeout(std::time::Duration::from_secs(30), done)
                .await
                .expect("answered in time")
                .expect("answered, not dropped");
            // Everything queued before the barrier is published by now:
            // b has its welcome and at least `seq` messages.
            heard.extend(drained(&mut rb));
            assert!(heard.len() as u64 > seq, "{} frames at {seq}", heard.len());
        }
        // The room holds the queue's sender and the writer holds the room
        // only weakly: with the room gone, the writer ends.
        drop(queue);
        drop(room);
        let ended = tokio::task::spawn_blocking(move || writer.join().is_ok());
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), ended)
            .await
            .expect("the writer ends once the room is dropped");
        assert!(ended.expect("joined"), "the writer did not panic");
        heard.extend(drained(&mut rb));
        let shown: Vec<u64> = heard
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Chat { text, .. } => text.parse().ok(),
                _ => None,
            })
            .collect();
        assert_eq!(shown, (1..=5000).collect::<Vec<_>>());
        let acked: Vec<u64> = drained(&mut ra)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Ack { seq } => Some(seq),
                _ => None,
            })
            .collect();
        assert_eq!(acked, (1..=5000).collect::<Vec<_>>());
    }
}
