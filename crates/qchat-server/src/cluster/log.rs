//! A room's log as a JetStream stream: every node of the cluster appends
//! to and reads from the same stream, so a message's id (its stream
//! sequence) is the same on every node, and a client resumes on any node
//! from the id it last saw.
//!
//! The stream is `QCHAT_ROOM_<token>` on the subject `qchat.room.<token>`
//! ([`super::token`] of the room's folded name). A client's idempotency key
//! is the message's `Nats-Msg-Id`, so JetStream itself recognises a line
//! re-sent after a reconnect, to this node or another one, within its
//! duplicate window.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use qchat_proto::Proof;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::log::Pending;
use crate::room::MemberId;
use crate::store::{Appended, Entry, Key, NewEntry, Store, StoreError};

/// How long JetStream remembers a message id: a client re-sends what was
/// not acknowledged as soon as it is back, on whichever node, and a
/// failover takes seconds; two minutes is JetStream's own default.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Stream sequences fetched at once when reading: enough to overlap the
/// round trips, few enough not to flood the connection.
const READ_AHEAD: usize = 256;

/// The first byte of every stored line: the format, so that a later one
/// can be told apart.
const LINE_V1: u8 = 1;

/// What a room's stream holds per message: the line, and who said it on
/// which node, so that the author's node acknowledges it to the author at
/// its place in the order.
#[derive(Serialize)]
struct LineOut<'a> {
    node: &'a str,
    member: MemberId,
    seq: u64,
    key: Option<Key>,
    from: &'a str,
    text: &'a str,
    time_ms: u64,
    action: bool,
    proof: Option<&'a Proof>,
}

/// [`LineOut`] read back (the same fields in the same order).
#[derive(Deserialize)]
struct LineIn {
    node: String,
    member: MemberId,
    seq: u64,
    key: Option<Key>,
    from: String,
    text: String,
    time_ms: u64,
    action: bool,
    proof: Option<Proof>,
}

/// A line read from a room's stream.
#[derive(Debug)]
pub struct Line {
    /// The node its author was on.
    pub node: String,
    /// Its author's member id on that node.
    pub member: MemberId,
    /// Its author's number for it.
    pub seq: u64,
    /// The line.
    pub entry: NewEntry,
}

fn encode(node: &str, member: MemberId, seq: u64, e: &NewEntry) -> Result<Vec<u8>, StoreError> {
    let line = LineOut {
        node,
        member,
        seq,
        key: e.key,
        from: &e.from,
        text: &e.text,
        time_ms: e.time_ms,
        action: e.action,
        proof: e.proof.as_deref(),
    };
    let mut out = vec![LINE_V1];
    out.extend(postcard::to_allocvec(&line).map_err(|e| StoreError::Io(e.to_string()))?);
    Ok(out)
}

/// Decodes a stored line; `None` for one this version cannot read (a later
/// format, or damage), which is skipped rather than fatal.
pub fn decode(payload: &[u8]) -> Option<Line> {
    let (&version, body) = payload.split_first()?;
    if version != LINE_V1 {
        return None;
    }
    let l: LineIn = postcard::from_bytes(body).ok()?;
    Some(Line {
        node: l.node,
        member: l.member,
        seq: l.seq,
        entry: NewEntry {
            key: l.key,
            from: l.from,
            text: l.text,
            time_ms: l.time_ms,
            action: l.action,
            proof: l.proof.map(Box::new),
        },
    })
}

/// The `Nats-Msg-Id` of a key: the client instance and its number, in hex.
fn msg_id(key: &Key) -> String {
    let mut s: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
    s.push('-');
    s.push_str(&key.1.to_string());
    s
}

/// Runs `f` to completion from synchronous code, on the cluster's runtime
/// (`handle`, [`Cluster::handle`]): from the log writer's own thread (no
/// runtime there) it simply waits; from a runtime's worker, such as a
/// session joining a room under the room's lock, the future is sent to
/// the cluster's runtime and the worker waits for the answer, handed over
/// first where the runtime allows it (multi-threaded) so its other tasks
/// go on elsewhere. The cluster's runtime is one of its own in a server
/// ([`Cluster::connect_apart`]): however many workers wait for the room's
/// lock, NATS's answers still arrive.
pub fn block_on<T, F>(handle: &tokio::runtime::Handle, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let Ok(current) = tokio::runtime::Handle::try_current() else {
        return handle.block_on(f);
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    let wait = move || {
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Io("the cluster's runtime stopped".into())))
    };
    if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// The stream name and subject of a room, by its folded name.
pub fn names(folded: &str) -> (String, String) {
    let t = super::token(folded);
    (format!("QCHAT_ROOM_{t}"), format!("qchat.room.{t}"))
}

/// A room's log in JetStream.
pub struct JetStreamLog {
    cluster: Arc<Cluster>,
    stream: jetstream::stream::Stream,
    subject: String,
    log_id: [u8; 16],
    /// The newest sequence this node knows of (its own appends and what
    /// its feed read).
    last: AtomicU64,
    /// Messages in the stream when last asked, plus this node's appends
    /// since, at most `keep`.
    len: AtomicU64,
    /// The newest id this node stored.
    stored: AtomicU64,
    /// The newest id the room's feed has shown.
    shown: tokio::sync::watch::Sender<u64>,
    keep: u64,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl JetStreamLog {
    /// Opens the log of the room whose folded name is `folded`, creating
    /// its stream if no node has yet: at most `keep` messages, none older
    /// than `max_age` (if given), on disk. Must run on the runtime the
    /// cluster's client runs on: the log's synchronous calls run there.
    pub async fn open(
        cluster: &Arc<Cluster>,
        folded: &str,
        keep: u64,
        max_age: Option<Duration>,
    ) -> Result<Arc<JetStreamLog>, StoreError> {
        let (name, subject) = names(folded);
        let max_age = max_age.unwrap_or_default();
        // JetStream refuses a duplicate window longer than the age limit.
        let window = if max_age.is_zero() {
            DUPLICATE_WINDOW
        } else {
            DUPLICATE_WINDOW.min(max_age)
        };
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            max_messages: i64::try_from(keep).unwrap_or(i64::MAX),
            max_age,
            duplicate_window: window,
            storage: jetstream::stream::StorageType::File,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        };
        let js = cluster.jetstream();
        // Nodes opening a room at once: the same config twice is not an
        // error, and whoever loses opens the winner's stream.
        let mut stream = match js.get_or_create_stream(config.clone()).await {
            Ok(s) => s,
            Err(e) => js.get_stream(&name).await.map_err(|_| {
                StoreError::Io(format!("cannot open the room's stream {name}: {e}"))
            })?,
        };
        let info = stream
            .info()
            .await
            .map_err(|e| StoreError::Io(format!("the room's stream {name}: {e}")))?;
        // Retention is the operator's to change (--history-keep,
        // --history-max-age): the node started last sets it for everyone.
        let had = &info.config;
        if had.max_messages != config.max_messages
            || had.max_age != config.max_age
            || had.duplicate_window != config.duplicate_window
        {
            match js.update_stream(&config).await {
                Ok(_) => tracing::info!(stream = %name, keep, "the room's retention changed"),
                Err(e) => tracing::warn!(stream = %name, "cannot change the room's retention: {e}"),
            }
        }
        let log_id = log_id(&name, info.created.unix_timestamp_nanos());
        let (last, len) = (info.state.last_sequence, info.state.messages);
        Ok(Arc::new(JetStreamLog {
            cluster: Arc::clone(cluster),
            stream,
            subject,
            log_id,
            last: AtomicU64::new(last),
            len: AtomicU64::new(len),
            stored: AtomicU64::new(last),
            shown: tokio::sync::watch::Sender::new(last),
            keep,
            handle: cluster.handle().clone(),
        }))
    }

    /// [`JetStreamLog::open`] from synchronous code (see [`block_on`]):
    /// a room opened when its first member joins it.
    pub fn open_blocking(
        cluster: &Arc<Cluster>,
        folded: &str,
        keep: u64,
        max_age: Option<Duration>,
    ) -> Result<Arc<JetStreamLog>, StoreError> {
        let (c, folded) = (Arc::clone(cluster), folded.to_string());
        block_on(cluster.handle(), async move {
            JetStreamLog::open(&c, &folded, keep, max_age).await
        })
    }

    /// Notes that the stream holds `id` (the feed read it): [`Store::last_id`]
    /// never runs behind what the room shows.
    pub fn saw(&self, id: u64) {
        self.last.fetch_max(id, Ordering::Relaxed);
    }

    /// Notes that the room's feed has shown every line up to `id`.
    pub fn shown(&self, id: u64) {
        self.shown.send_if_modified(|s| {
            let newer = id > *s;
            *s = (*s).max(id);
            newer
        });
    }

    /// Waits (at most [`super::REQUEST_TIMEOUT`]) until the room's feed
    /// has shown every line this node stored so far: their authors have
    /// their acknowledgements. For a member leaving, or the server
    /// stopping, as the log's writer's barriers are for a server's own log.
    pub fn until_shown(&self) -> impl Future<Output = ()> + Send + 'static {
        let upto = self.stored.load(Ordering::Relaxed);
        let mut shown = self.shown.subscribe();
        async move {
            let _ =
                tokio::time::timeout(super::REQUEST_TIMEOUT, shown.wait_for(|s| *s >= upto)).await;
        }
    }

    /// Whether the room's feed has shown every line this node stored.
    pub fn all_shown(&self) -> bool {
        *self.shown.borrow() >= self.stored.load(Ordering::Relaxed)
    }

    /// The cluster the log is in.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The stream's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The stream.
    pub fn stream(&self) -> &jetstream::stream::Stream {
        &self.stream
    }

    /// The runtime the log's synchronous calls run on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    fn append_authored(
        &self,
        batch: &[(&NewEntry, MemberId, u64)],
    ) -> Result<Vec<Appended>, StoreError> {
        if !*self.cluster.connected().borrow() {
            return Err(StoreError::Io(super::LOST.into()));
        }
        let node = self.cluster.node_id();
        let mut messages = Vec::with_capacity(batch.len());
        for (e, member, seq) in batch {
            let payload = bytes::Bytes::from(encode(node, *member, *seq, e)?);
            messages.push((payload, e.key.as_ref().map(msg_id)));
        }
        let acks = block_on(
            &self.handle,
            publish_all(
                self.cluster.jetstream().clone(),
                self.subject.clone(),
                messages,
            ),
        )?;
        let mut out = Vec::with_capacity(acks.len());
        let mut new = 0;
        for (sequence, duplicate) in acks {
            self.saw(sequence);
            self.stored.fetch_max(sequence, Ordering::Relaxed);
            if duplicate {
                out.push(Appended::Duplicate(sequence));
            } else {
                new += 1;
                out.push(Appended::Ordered(sequence));
            }
        }
        let len = self.len.load(Ordering::Relaxed);
        self.len
            .store((len + new).min(self.keep), Ordering::Relaxed);
        Ok(out)
    }
}

/// Publishes each message (its payload and `Nats-Msg-Id`) to `subject`:
/// all of them sent before any acknowledgement is awaited, one round trip
/// per batch rather than per message. Each message's sequence, and
/// whether JetStream had it already.
async fn publish_all(
    js: jetstream::Context,
    subject: String,
    messages: Vec<(bytes::Bytes, Option<String>)>,
) -> Result<Vec<(u64, bool)>, StoreError> {
    let mut acks = Vec::with_capacity(messages.len());
    for (payload, id) in messages {
        let mut publish = jetstream::message::PublishMessage::build().payload(payload);
        if let Some(id) = id {
            publish = publish.message_id(id);
        }
        let ack = js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| StoreError::Io(format!("the cluster did not take it: {e}")))?;
        acks.push(ack);
    }
    let mut out = Vec::with_capacity(acks.len());
    for ack in acks {
        let ack = ack
            .await
            .map_err(|e| StoreError::Io(format!("the cluster did not confirm it: {e}")))?;
        out.push((ack.sequence, ack.duplicate));
    }
    Ok(out)
}

/// Reads the messages with sequences `from..=upto` from `stream`, skipping
/// those retention removed.
async fn read_range(
    stream: jetstream::stream::Stream,
    from: u64,
    upto: u64,
) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    let mut next = from;
    while next <= upto {
        let end = upto.min(next + READ_AHEAD as u64 - 1);
        let gets = (next..=end).map(|seq| stream.direct_get(seq));
        for got in futures_util::future::join_all(gets).await {
            match got {
                Ok(m) => {
                    if let Some(l) = decode(&m.payload) {
                        let e = l.entry;
                        out.push(Entry {
                            id: m.sequence,
                            from: e.from,
                            text: e.text,
                            time_ms: e.time_ms,
                            action: e.action,
                            proof: e.proof,
                        });
                    }
                }
                // Retention removed it: a gap, as in any log.
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io(format!("reading the room's stream: {e}"))),
            }
        }
        next = end + 1;
    }
    Ok(out)
}

/// The log's identity, the same on every node: the stream's name and the
/// moment it was made (a stream deleted and made again is another log,
/// and resuming members are told so).
fn log_id(name: &str, created_ns: i128) -> [u8; 16] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(&created_ns.to_le_bytes());
    let digest = ctx.finish();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    id
}

impl Store for JetStreamLog {
    fn log_id(&self) -> [u8; 16] {
        self.log_id
    }

    fn last_id(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn append(&self, batch: &[&NewEntry]) -> Result<Vec<Appended>, StoreError> {
        // Not a member's line (the tests'): no author to acknowledge.
        let authored: Vec<_> = batch.iter().map(|e| (*e, 0, 0)).collect();
        self.append_authored(&authored)
    }

    fn append_said(&self, batch: &[&Pending]) -> Result<Vec<Appended>, StoreError> {
        let authored: Vec<_> = batch.iter().map(|p| (&p.entry, p.member, p.seq)).collect();
        self.append_authored(&authored)
    }

    fn read(&self, after: u64, upto: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let upto = upto.min(self.last_id());
        if upto <= after || max == 0 {
            return Ok(Vec::new());
        }
        let from = after
            .saturating_add(1)
            .max(upto.saturating_sub(max as u64 - 1));
        block_on(&self.handle, read_range(self.stream.clone(), from, upto))
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    fn ordered(&self) -> Option<&JetStreamLog> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::NatsServer;

    fn line(key: Option<Key>, text: &str) -> NewEntry {
        NewEntry {
            key,
            from: "alice".into(),
            text: text.into(),
            time_ms: 7,
            action: false,
            proof: None,
        }
    }

    async fn connect(nats: &NatsServer) -> Arc<Cluster> {
        Cluster::connect(&nats.options()).await.expect("connects")
    }

    /// Two nodes over one stream: the same log id, ids in one sequence
    /// whoever appends, a key re-sent through the other node recognised as
    /// the same message, and each node reads what the other stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_share_one_log() {
        let nats = NatsServer::start().await;
        let (a, b) = (connect(&nats).await, connect(&nats).await);
        let la = JetStreamLog::open(&a, "#dev", 100, None)
            .await
            .expect("opens");
        let lb = JetStreamLog::open(&b, "#dev", 100, None)
            .await
            .expect("opens");
        assert_eq!(la.log_id(), lb.log_id());
        let other = JetStreamLog::open(&a, "#ops", 100, None)
            .await
            .expect("opens");
        assert_ne!(la.log_id(), other.log_id());
        let k = ([3u8; 16], 1);
        let (la2, lb2) = (Arc::clone(&la), Arc::clone(&lb));
        let (first, second) = tokio::task::spawn_blocking(move || {
            let first = la2
                .append(&[&line(Some(k), "one"), &line(None, "two")])
                .expect("appends");
            let second = lb2
                .append(&[
                    &line(Some(k), "one again"),
                    &line(Some(([3; 16], 2)), "three"),
                ])
                .expect("appends");
            (first, second)
        })
        .await
        .expect("ran");
        assert_eq!(first, [Appended::Ordered(1), Appended::Ordered(2)]);
        assert_eq!(second, [Appended::Duplicate(1), Appended::Ordered(3)]);
        assert_eq!(lb.last_id(), 3);
        // From a runtime worker, as a joining session reads.
        let texts = |v: Vec<Entry>| v.into_iter().map(|e| (e.id, e.text)).collect::<Vec<_>>();
        let all = texts(lb.read(0, 3, 10).expect("reads"));
        assert_eq!(
            all,
            [(1, "one".into()), (2, "two".into()), (3, "three".into())]
        );
        assert_eq!(
            texts(lb.read(1, 3, 1).expect("reads")),
            [(3, "three".into())]
        );
        la.saw(3);
        assert_eq!(
            texts(la.read(2, 99, 10).expect("reads")),
            [(3, "three".into())]
        );
        assert!(la.read(3, 3, 10).expect("reads").is_empty());
    }

    /// Retention is the stream's: the oldest go, reads skip them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stream_keeps_the_newest() {
        let nats = NatsServer::start().await;
        let a = connect(&nats).await;
        let log = JetStreamLog::open(&a, "#lobby", 2, None)
            .await
            .expect("opens");
        let l = Arc::clone(&log);
        tokio::task::spawn_blocking(move || {
            for i in 1..=4 {
                l.append(&[&line(None, &i.to_string())]).expect("appends");
            }
        })
        .await
        .expect("ran");
        let got: Vec<u64> = log
            .read(0, 4, 10)
            .expect("reads")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, [3, 4]);
        assert_eq!(log.len(), 2);
        // A node started with less to keep changes it for every node.
        let again = JetStreamLog::open(&a, "#lobby", 1, None)
            .await
            .expect("opens");
        assert_eq!(again.log_id(), log.log_id(), "the same log");
        let got: Vec<u64> = again
            .read(0, 4, 10)
            .expect("reads")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, [4]);
    }

    #[test]
    fn a_line_reads_back_as_written_and_damage_is_skipped() {
        let e = NewEntry {
            proof: Some(Box::new(Proof {
                instance: [1; 16],
                seq: 9,
                sent_ms: 3,
                key: [2; 32],
                sig: vec![5; 64],
            })),
            ..line(Some(([1; 16], 9)), "hé")
        };
        let bytes = encode("n1", 42, 9, &e).expect("encodes");
        let l = decode(&bytes).expect("decodes");
        assert_eq!((l.node.as_str(), l.member, l.seq), ("n1", 42, 9));
        assert_eq!(l.entry, e);
        assert!(decode(&bytes[..bytes.len() / 2]).is_none());
        assert!(decode(&[9, 1, 2]).is_none());
        assert!(decode(&[]).is_none());
    }
}
