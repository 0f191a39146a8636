//! Private conversations: `/msg` between two people, with a history of its
//! own that only those two are ever shown.
//!
//! A conversation belongs to its two **parties**, not to the names they
//! happen to use. A party is a person with a key, known by the first
//! (oldest) key of the name its key holds in the registry — so a rename
//! (the key's claim moves, the key stays the first of its new claim) keeps
//! the conversation, and a device linked to the name later (its claim's
//! first key is the same) sees it too — or a guest, known by its name's
//! same-name key ([`names::fold`]): guests have nothing else. A party id is
//! `k:` and the key's 64 hex digits, or `n:` and the folded name, so the
//! two kinds can never meet.
//!
//! Each conversation has a random 16-byte id, made when its first message
//! is stored, and its own message ids from 1, increasing by 1; the store
//! has a random `log_id` made with it, so a client can tell a fresh store
//! from the one it followed. The store keeps the newest `keep` messages of
//! each conversation and deletes older ones as new ones arrive.
//!
//! It lives in `private.redb` beside the room log (a file of its own: the
//! room log may be wiped or replaced without anyone's conversations going
//! with it, and the other way round), or in memory (`--store memory`).
//! A message is committed — with the room log's durability — before anyone
//! sees it or its sender is acknowledged. Commits are serialised by one
//! lock held from the commit to the delivery, so both parties receive a
//! conversation's messages in id order, and grouped: the holder of the
//! lock takes every message that arrived meanwhile, from any session, and
//! stores them in one commit (one disk sync), then delivers and answers
//! each. A session waits for the commit that holds its message, so one
//! member's private messages cost a commit each; many members' share.
//!
//! Re-sends after a reconnect are recognised by their `(instance, seq)`,
//! kept in memory for the newest [`SEEN_MAX`] messages and rebuilt at
//! start from the newest [`SEEN_REBUILD`] of each conversation, which is
//! more than a client ever has unacknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use qchat_proto::clock::now_ms;
use qchat_proto::limits::PRIVATE_POINTS;
use qchat_proto::{names, PrivatePoint, Proof, ServerMsg};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::options::ServerOptions;
use crate::room::{MemberId, Room};
use crate::store::SyncPolicy;

/// `log_id` → the store's identity.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The pair of party ids → the conversation (postcard [`ConvMeta`]).
const CONVS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
/// The conversation's id (16 bytes) then the message id (8, big-endian):
/// the byte order is the conversation's order, so a range is a replay.
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");

/// Re-send keys remembered, server-wide.
pub const SEEN_MAX: usize = 65_536;
/// Messages per conversation whose keys are reloaded at start.
pub const SEEN_REBUILD: u64 = 64;
/// Most messages one private replay holds, all conversations together.
pub const REPLAY_TOTAL: usize = 10_000;

/// One stored private message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The sender's name when it was sent.
    pub from: String,
    /// The recipient's name: as addressed when signed (the signature covers
    /// it), as the server knew it otherwise.
    pub to: String,
    /// The text.
    pub text: String,
    /// Server receive time, ms since the Unix epoch.
    pub time_ms: u64,
    /// The sender's signature, kept so that a replay can be checked too.
    pub proof: Option<Proof>,
    /// The sender's `(instance, seq)`, to recognise a re-send.
    pub key: Option<([u8; 16], u64)>,
}

/// A conversation as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConvMeta {
    id: [u8; 16],
    /// The two party ids, sorted.
    parties: (String, String),
    /// Its newest message id (never goes back, even if retention deleted
    /// every message).
    last: u64,
}

/// What [`Conversations::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The conversation.
    pub conv: [u8; 16],
    /// The message's id in it.
    pub id: u64,
    /// `false`: a re-send of a message stored before; nothing was stored.
    pub new: bool,
}

/// What [`Conversations::replay`] found for one party.
#[derive(Debug, Default)]
pub struct Replay {
    /// Conversations with something replayed.
    pub conversations: u64,
    /// The messages, each conversation's oldest first.
    pub messages: Vec<([u8; 16], u64, Record)>,
    /// Messages after the points that are not in `messages`.
    pub missed: u64,
}

/// The private store could not be used. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// The file could not be opened.
    #[error("cannot open the private conversations {}: {detail}; the file was left as it is (move it away to start with no private history)", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the engine said.
        detail: String,
    },
    /// Reading or writing failed after opening.
    #[error("private conversations: {0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> PrivateError {
    PrivateError::Io(e.to_string())
}

enum Backend {
    Memory(BTreeMap<([u8; 16], u64), Record>),
    File(Database),
}

struct Inner {
    backend: Backend,
    /// By the pair of party ids, `a\nb` with `a <= b`.
    convs: HashMap<String, ConvMeta>,
    /// Party id → its conversations' pair keys.
    by_party: HashMap<String, Vec<String>>,
    /// Re-send keys → where the message was stored; oldest first in `order`.
    seen: HashMap<([u8; 16], u64), ([u8; 16], u64)>,
    order: VecDeque<([u8; 16], u64)>,
}

impl Inner {
    fn remember(&mut self, key: ([u8; 16], u64), at: ([u8; 16], u64)) {
        if self.seen.insert(key, at).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn index(&mut self, pair: String, meta: ConvMeta) {
        for p in [&meta.parties.0, &meta.parties.1] {
            let list = self.by_party.entry(p.clone()).or_default();
            if !list.contains(&pair) {
                list.push(pair.clone());
            }
        }
        self.convs.insert(pair, meta);
    }
}

/// The private conversations.
pub struct Conversations {
    inner: Mutex<Inner>,
    log_id: [u8; 16],
    keep: u64,
    sync: SyncPolicy,
    path: Option<PathBuf>,
    /// Held from a batch's commit to its delivery: both parties get a
    /// conversation's messages in id order.
    order: tokio::sync::Mutex<()>,
    /// Messages waiting for the next commit.
    queue: Mutex<Vec<Waiting>>,
}

/// A private message waiting for its commit, with what its delivery needs.
struct Waiting {
    from_party: String,
    to_party: String,
    record: Record,
    /// The recipient in the room, and its protocol version.
    target: Option<(MemberId, u32)>,
    sender: MemberId,
    sender_version: u32,
    seq: u64,
    /// The sender speaks version 3 or later (its answer is `AckV3`).
    v3: bool,
    /// Set once it was stored (or refused) and answered.
    done: Arc<std::sync::atomic::AtomicBool>,
}

fn msg_key(conv: &[u8; 16], id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(conv);
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

fn pair_key(a: &str, b: &str) -> (String, (String, String)) {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    (format!("{x}\n{y}"), (x.to_owned(), y.to_owned()))
}

fn random_id() -> Result<[u8; 16], PrivateError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(io)?;
    Ok(id)
}

impl Conversations {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "private.redb";

    /// Conversations kept in memory only (`--store memory`, tests).
    pub fn memory(keep: u64) -> Result<Self, PrivateError> {
        Ok(Conversations {
            inner: Mutex::new(Inner {
                backend: Backend::Memory(BTreeMap::new()),
                convs: HashMap::new(),
                by_party: HashMap::new(),
                seen: HashMap::new(),
                order: VecDeque::new(),
            }),
            log_id: random_id()?,
            keep: keep.max(1),
            sync: SyncPolicy::None,
            path: None,
            order: tokio::sync::Mutex::new(()),
            queue: Mutex::new(Vec::new()),
        })
    }

    /// Opens (or creates) `private.redb` in `dir`, keeping at most `keep`
    /// messages per conversation. A file that cannot be read is an error
    /// naming it, never replaced.
    pub fn open(dir: &Path, keep: u64, sync: SyncPolicy) -> Result<Self, PrivateError> {
        let path = dir.join(Self::FILE);
        let err = |detail: String| PrivateError::Open {
            path: path.clone(),
            detail,
        };
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        let mut convs = Vec::new();
        let log_id = {
            let mut meta = tx.open_table(META).map_err(|e| err(e.to_string()))?;
            tx.open_table(MESSAGES).map_err(|e| err(e.to_string()))?;
            let table = tx.open_table(CONVS).map_err(|e| err(e.to_string()))?;
            for row in table.iter().map_err(|e| err(e.to_string()))? {
                let (pair, value) = row.map_err(|e| err(e.to_string()))?;
                let c: ConvMeta = postcard::from_bytes(value.value())
                    .map_err(|e| err(format!("a damaged conversation: {e}")))?;
                convs.push((pair.value().to_owned(), c));
            }
            let existing = meta
                .get("log_id")
                .map_err(|e| err(e.to_string()))?
                .map(|v| v.value().to_vec());
            match existing {
                Some(v) => <[u8; 16]>::try_from(v.as_slice())
                    .map_err(|_| err("the store's id is damaged".into()))?,
                None => {
                    let id = random_id()?;
                    meta.insert("log_id", id.as_slice())
                        .map_err(|e| err(e.to_string()))?;
                    id
                }
            }
        };
        tx.commit().map_err(|e| err(e.to_string()))?;
        let mut inner = Inner {
            backend: Backend::File(db),
            convs: HashMap::new(),
            by_party: HashMap::new(),
            seen: HashMap::new(),
            order: VecDeque::new(),
        };
        for (pair, c) in convs {
            let from = c.last.saturating_sub(SEEN_REBUILD - 1).max(1);
            for (id, r) in
                read(&inner.backend, &c.id, from, c.last).map_err(|e| err(e.to_string()))?
            {
                if let Some(k) = r.key {
                    inner.remember(k, (c.id, id));
                }
            }
            inner.index(pair, c);
        }
        Ok(Conversations {
            inner: Mutex::new(inner),
            log_id,
            keep: keep.max(1),
            sync,
            path: Some(path),
            order: tokio::sync::Mutex::new(()),
            queue: Mutex::new(Vec::new()),
        })
    }

    /// The file, unless the store is in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The store's identity.
    pub fn log_id(&self) -> [u8; 16] {
        self.log_id
    }

    /// Conversations stored.
    pub fn len(&self) -> usize {
        self.lock().convs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is written to the maps after the file, in steps that
        // cannot panic halfway; a poisoned lock still holds whole maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `record` in the conversation of parties `a` and `b` (created
    /// if new), deleting what falls out of retention, in one commit; or
    /// finds that it is a re-send of a stored message.
    pub fn append(&self, a: &str, b: &str, record: &Record) -> Result<Appended, PrivateError> {
        let mut done = self.append_batch([(a, b, record)])?;
        done.pop()
            .ok_or_else(|| PrivateError::Io("a batch of one stored nothing".into()))
    }

    /// Stores a batch of messages, each `(a, b, record)` as for
    /// [`Conversations::append`], in one commit (group commit: one disk
    /// sync for every message that arrived while the last one was
    /// written). The answers are in the batch's order.
    pub fn append_batch<'r>(
        &self,
        batch: impl IntoIterator<Item = (&'r str, &'r str, &'r Record)>,
    ) -> Result<Vec<Appended>, PrivateError> {
        let mut inner = self.lock();
        let mut metas: HashMap<String, ConvMeta> = HashMap::new();
        // Each new message: its conversation's pair, id, and bytes.
        let mut rows: Vec<(String, u64, Vec<u8>, &Record)> = Vec::new();
        let mut out = Vec::new();
        let mut keys: HashMap<([u8; 16], u64), ([u8; 16], u64)> = HashMap::new();
        for (a, b, record) in batch {
            let seen = record
                .key
                .as_ref()
                .and_then(|k| inner.seen.get(k).or_else(|| keys.get(k)));
            if let Some(&(conv, id)) = seen {
                out.push(Appended {
                    conv,
                    id,
                    new: false,
                });
                continue;
            }
            let (pair, parties) = pair_key(a, b);
            let meta = match metas.get_mut(&pair) {
                Some(m) => m,
                None => {
                    let m = match inner.convs.get(&pair) {
                        Some(m) => m.clone(),
                        None => ConvMeta {
                            id: random_id()?,
                            parties,
                            last: 0,
                        },
                    };
                    metas.entry(pair.clone()).or_insert(m)
                }
            };
            meta.last += 1;
            let at = (meta.id, meta.last);
            if let Some(k) = record.key {
                keys.insert(k, at);
            }
            rows.push((
                pair,
                at.1,
                postcard::to_allocvec(record).map_err(io)?,
                record,
            ));
            out.push(Appended {
                conv: at.0,
                id: at.1,
                new: true,
            });
        }
        if rows.is_empty() {
            return Ok(out);
        }
        let keep = self.keep;
        // The oldest id kept after `id` is stored: the one before it goes.
        let gone = |id: u64| id.checked_sub(keep).filter(|g| *g > 0);
        match &mut inner.backend {
            Backend::Memory(m) => {
                for (pair, id, _, record) in &rows {
                    let conv = metas[pair].id;
                    m.insert((conv, *id), (*record).clone());
                    if let Some(g) = gone(*id) {
                        m.remove(&(conv, g));
                    }
                }
            }
            Backend::File(db) => {
                let mut tx = db.begin_write().map_err(io)?;
                tx.set_durability(match self.sync {
                    SyncPolicy::Full => Durability::Immediate,
                    SyncPolicy::None => Durability::Eventual,
                });
                {
                    let mut msgs = tx.open_table(MESSAGES).map_err(io)?;
                    for (pair, id, bytes, _) in &rows {
                        let conv = metas[pair].id;
                        msgs.insert(msg_key(&conv, *id).as_slice(), bytes.as_slice())
                            .map_err(io)?;
                        if let Some(g) = gone(*id) {
                            msgs.remove(msg_key(&conv, g).as_slice()).map_err(io)?;
                        }
                    }
                    let mut convs = tx.open_table(CONVS).map_err(io)?;
                    for (pair, meta) in &metas {
                        let m = postcard::to_allocvec(meta).map_err(io)?;
                        convs.insert(pair.as_str(), m.as_slice()).map_err(io)?;
                    }
                }
                tx.commit().map_err(io)?;
            }
        }
        for (k, at) in keys {
            inner.remember(k, at);
        }
        for (pair, meta) in metas {
            inner.index(pair, meta);
        }
        Ok(out)
    }

    /// What `party` should be shown of its conversations: after each
    /// point (if `log_id` is this store's), at most `max` per conversation,
    /// the newest; for a conversation without a point, its newest `fresh`.
    /// At most [`PRIVATE_POINTS`] conversations, the most recently active.
    pub fn replay(
        &self,
        party: &str,
        log_id: [u8; 16],
        points: &[PrivatePoint],
        fresh: usize,
        max: usize,
    ) -> Result<Replay, PrivateError> {
        let inner = self.lock();
        let mut convs: Vec<&ConvMeta> = inner
            .by_party
            .get(party)
            .into_iter()
            .flatten()
            .filter_map(|pair| inner.convs.get(pair))
            .collect();
        // Most recently active first, by the newest message's time would
        // need a read; the id count is a fair, free stand-in.
        convs.sort_by_key(|c| std::cmp::Reverse(c.last));
        convs.truncate(PRIVATE_POINTS);
        let same_store = log_id == self.log_id;
        let mut out = Replay::default();
        for c in convs {
            let after = points
                .iter()
                .find(|p| same_store && p.conv == c.id)
                .map(|p| p.after.min(c.last));
            let (from, wanted) = match after {
                Some(after) => (
                    (after + 1).max(c.last.saturating_sub(max as u64) + 1),
                    c.last - after,
                ),
                None => (c.last.saturating_sub(fresh as u64) + 1, 0),
            };
            // One member's replay is bounded as a whole too: beyond it,
            // the rest of the least active conversations is counted as
            // missed.
            let room_left = REPLAY_TOTAL.saturating_sub(out.messages.len()) as u64;
            let from = from.max(c.last.saturating_sub(room_left) + 1);
            let got = if from > c.last {
                Vec::new()
            } else {
                read(&inner.backend, &c.id, from, c.last)?
            };
            out.missed += wanted.saturating_sub(got.len() as u64);
            if !got.is_empty() {
                out.conversations += 1;
            }
            out.messages
                .extend(got.into_iter().map(|(id, r)| (c.id, id, r)));
        }
        Ok(out)
    }
}

/// Messages `from..=to` of conversation `conv` that are still stored.
fn read(
    backend: &Backend,
    conv: &[u8; 16],
    from: u64,
    to: u64,
) -> Result<Vec<(u64, Record)>, PrivateError> {
    match backend {
        Backend::Memory(m) => Ok(m
            .range((*conv, from)..=(*conv, to))
            .map(|((_, id), r)| (*id, r.clone()))
            .collect()),
        Backend::File(db) => {
            let tx = db.begin_read().map_err(io)?;
            let msgs = tx.open_table(MESSAGES).map_err(io)?;
            let (lo, hi) = (msg_key(conv, from), msg_key(conv, to));
            let mut out = Vec::new();
            for row in msgs.range(lo.as_slice()..=hi.as_slice()).map_err(io)? {
                let (k, v) = row.map_err(io)?;
                let mut id = [0u8; 8];
                id.copy_from_slice(k.value().get(16..24).unwrap_or(&[0; 8]));
                let r: Record = postcard::from_bytes(v.value()).map_err(io)?;
                out.push((u64::from_be_bytes(id), r));
            }
            Ok(out)
        }
    }
}

/// The party id of a member with `key` (or a guest, `None`) under `name`:
/// see the module's documentation.
fn party(
    room: &Room,
    options: &ServerOptions,
    key: Option<qchat_tls::Fingerprint>,
    name: &str,
) -> String {
    match key {
        Some(k) => {
            let first = room
                .registry()
                .claim_of(k, options.name_expiry)
                .and_then(|c| c.keys.first().map(|d| d.key))
                .unwrap_or(*k.as_bytes());
            key_party(&first)
        }
        None => format!("n:{}", names::fold(name)),
    }
}

fn key_party(key: &[u8; 32]) -> String {
    let mut s = String::with_capacity(66);
    s.push_str("k:");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The frame a member speaking `version` gets for a stored private message.
fn frame_for(version: u32, conv: [u8; 16], id: u64, r: &Record) -> Bytes {
    match (&r.proof, version) {
        (_, v) if v >= 5 => ServerMsg::PrivateLive {
            conv,
            id,
            from: r.from.clone(),
            to: r.to.clone(),
            text: r.text.clone(),
            time_ms: r.time_ms,
            proof: r.proof.clone(),
        },
        (Some(p), 4) => ServerMsg::PrivateSigned {
            from: r.from.clone(),
            to: r.to.clone(),
            text: r.text.clone(),
            time_ms: r.time_ms,
            proof: p.clone(),
        },
        _ => ServerMsg::Private {
            from: r.from.clone(),
            to: r.to.clone(),
            text: r.text.clone(),
            time_ms: r.time_ms,
        },
    }
    .to_frame()
}

/// Carries out a private message from member `id`: with private history
/// kept, stores it, then shows it to the recipient (if here) and echoes it
/// to the sender, and acknowledges it; without, delivers it live as the
/// room always has. A recipient who is away is still written to if the
/// name is registered: the message waits in the conversation.
pub(crate) async fn send(
    room: &Room,
    options: &ServerOptions,
    id: MemberId,
    seq: u64,
    to: &str,
    text: String,
    proof: Option<Box<Proof>>,
) {
    let Some(store) = room.conversations().cloned() else {
        if let Some(away) = room.private(id, seq, to, text, proof) {
            crate::cluster::private::send(room, id, seq, away).await;
        }
        return;
    };
    let Some((from, peer)) = room.peer_of(id) else {
        return;
    };
    let refuse = |reason: String| {
        room.metrics().messages_refused.inc();
        room.reply(id, &ServerMsg::Refused { seq, reason });
    };
    let (target, to_party, to_name) = match room.peer_named(to) {
        Some((rid, rname, rpeer)) => (
            Some((rid, rpeer.version)),
            party(room, options, rpeer.key, &rname),
            rname,
        ),
        None => match room.registry().lookup(to, options.name_expiry) {
            Some(c) => match c.keys.first() {
                Some(d) => (None, key_party(&d.key), c.name.clone()),
                None => return refuse(format!("there is nobody called {to:?} here")),
            },
            None => {
                return refuse(format!(
                    "there is nobody called {to:?} here, and nobody has registered the name"
                ))
            }
        },
    };
    let from_party = party(room, options, peer.key, &from);
    let record = Record {
        from,
        // The signature covers the name as addressed; an unsigned message
        // shows the name as the server knows it, as it always has.
        to: if proof.is_some() {
            to.to_owned()
        } else {
            to_name
        },
        text,
        time_ms: now_ms(),
        proof: proof.map(|p| *p),
        key: peer.instance.map(|i| (i, seq)),
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    store
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Waiting {
            from_party,
            to_party,
            record,
            target,
            sender: id,
            sender_version: peer.version,
            seq,
            v3: peer.instance.is_some(),
            done: Arc::clone(&done),
        });
    // The commit and the deliveries run in a task of their own: a session
    // that ends meanwhile must not strand the other messages of its batch.
    let Some(shared) = room.shared() else {
        return;
    };
    let _ = tokio::spawn(commit(shared, store, done)).await;
}

/// Group commit: whoever holds the order lock first takes every waiting
/// message, stores them in one commit, and delivers and answers each; the
/// others find theirs done.
async fn commit(
    room: Arc<Room>,
    store: Arc<Conversations>,
    mine: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let _order = store.order.lock().await;
    if mine.load(Ordering::Acquire) {
        return;
    }
    let batch = std::mem::take(&mut *store.queue.lock().unwrap_or_else(|p| p.into_inner()));
    if batch.is_empty() {
        return;
    }
    let stored = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            let r = store.append_batch(
                batch
                    .iter()
                    .map(|w| (w.from_party.as_str(), w.to_party.as_str(), &w.record)),
            );
            (r, batch)
        })
        .await
    };
    let (result, batch) = match stored {
        Ok(r) => r,
        // The blocking task panicked and took the batch with it: its
        // senders get no answer, and re-send after their reconnect.
        Err(_) => return,
    };
    match result {
        Ok(appended) => {
            for (w, a) in batch.iter().zip(appended) {
                if a.new {
                    if let Some((rid, version)) = w.target {
                        room.deliver(rid, frame_for(version, a.conv, a.id, &w.record));
                    }
                    if w.target.map(|t| t.0) != Some(w.sender) {
                        room.deliver(
                            w.sender,
                            frame_for(w.sender_version, a.conv, a.id, &w.record),
                        );
                    }
                }
                let ack = if w.v3 {
                    ServerMsg::AckV3 { seq: w.seq, id: 0 }
                } else {
                    ServerMsg::Ack { seq: w.seq }
                };
                room.reply(w.sender, &ack);
                w.done.store(true, Ordering::Release);
            }
        }
        Err(e) => {
            tracing::warn!("{e}");
            let reason = format!("the server could not store the message ({e}); nothing was sent");
            for w in &batch {
                room.metrics().messages_refused.inc();
                room.reply(
                    w.sender,
                    &ServerMsg::Refused {
                        seq: w.seq,
                        reason: reason.clone(),
                    },
                );
                w.done.store(true, Ordering::Release);
            }
        }
    }
}

/// Answers `PrivateResume`: what member `id` missed in each of its
/// conversations (or, for a conversation it has no point for, the newest
/// messages), framed by `PrivateReplay` and `PrivateReplayed`. Waits for
/// room in the member's queue rather than treating a long replay as a slow
/// reader.
pub(crate) async fn resume(
    room: &Room,
    options: &ServerOptions,
    id: MemberId,
    log_id: [u8; 16],
    points: Vec<PrivatePoint>,
) {
    let Some(store) = room.conversations().cloned() else {
        let frames = vec![
            ServerMsg::PrivateReplay {
                log_id: [0; 16],
                kept: false,
            }
            .to_frame(),
            ServerMsg::PrivateReplayed {
                conversations: 0,
                count: 0,
                missed: 0,
            }
            .to_frame(),
        ];
        room.deliver_waiting(id, frames).await;
        return;
    };
    let Some((name, peer)) = room.peer_of(id) else {
        return;
    };
    let party = party(room, options, peer.key, &name);
    let (fresh, max) = (options.history, options.replay_max);
    let found = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.replay(&party, log_id, &points, fresh, max)).await
    };
    let replay = match found {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("cannot replay private conversations: {e}");
            Replay::default()
        }
        Err(_) => Replay::default(),
    };
    let count = replay.messages.len() as u64;
    let mut frames = Vec::with_capacity(replay.messages.len() + 2);
    frames.push(
        ServerMsg::PrivateReplay {
            log_id: store.log_id(),
            kept: true,
        }
        .to_frame(),
    );
    for (conv, mid, r) in replay.messages {
        frames.push(
            ServerMsg::PrivateHistory {
                conv,
                id: mid,
                from: r.from,
                to: r.to,
                text: r.text,
                time_ms: r.time_ms,
                proof: r.proof,
            }
            .to_frame(),
        );
    }
    frames.push(
        ServerMsg::PrivateReplayed {
            conversations: replay.conversations,
            count,
            missed: replay.missed,
        }
        .to_frame(),
    );
    room.deliver_waiting(id, frames).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(from: &str, text: &str, key: Option<([u8; 16], u64)>) -> Record {
        Record {
            from: from.into(),
            to: "x".into(),
            text: text.into(),
            time_ms: 1,
            proof: None,
            key,
        }
    }

    fn texts(r: &Replay) -> Vec<String> {
        r.messages.iter().map(|(_, _, r)| r.text.clone()).collect()
    }

    #[test]
    fn a_conversation_is_the_same_whoever_writes_and_ids_count_from_one() {
        let c = Conversations::memory(100).expect("memory");
        let a = c
            .append("n:alice", "n:bob", &rec("alice", "1", None))
            .expect("a");
        let b = c
            .append("n:bob", "n:alice", &rec("bob", "2", None))
            .expect("b");
        assert_eq!((a.conv, a.id, b.id), (b.conv, 1, 2));
        assert!(a.new && b.new);
        let other = c
            .append("n:alice", "n:carol", &rec("alice", "3", None))
            .expect("c");
        assert_ne!(other.conv, a.conv);
        assert_eq!(other.id, 1);
    }

    #[test]
    fn a_party_sees_only_its_own_conversations() {
        let c = Conversations::memory(100).expect("memory");
        c.append("n:alice", "n:bob", &rec("alice", "ab", None))
            .expect("a");
        c.append("n:carol", "n:dave", &rec("carol", "cd", None))
            .expect("b");
        let r = c
            .replay("n:bob", c.log_id(), &[], 50, 1000)
            .expect("replay");
        assert_eq!(texts(&r), ["ab"]);
        let r = c
            .replay("n:erin", c.log_id(), &[], 50, 1000)
            .expect("replay");
        assert!(r.messages.is_empty());
    }

    #[test]
    fn a_resume_replays_exactly_what_came_after_the_point() {
        let c = Conversations::memory(100).expect("memory");
        let mut conv = [0; 16];
        for i in 1..=5 {
            conv = c
                .append("n:a", "n:b", &rec("a", &i.to_string(), None))
                .expect("append")
                .conv;
        }
        let point = [PrivatePoint { conv, after: 3 }];
        let r = c
            .replay("n:b", c.log_id(), &point, 1, 1000)
            .expect("replay");
        assert_eq!(texts(&r), ["4", "5"]);
        assert_eq!(r.missed, 0);
        // Another store's points are ignored: the newest `fresh` come.
        let r = c.replay("n:b", [9; 16], &point, 1, 1000).expect("replay");
        assert_eq!(texts(&r), ["5"]);
        // At most `max` per conversation; the rest are counted as missed.
        let point = [PrivatePoint { conv, after: 0 }];
        let r = c.replay("n:b", c.log_id(), &point, 1, 2).expect("replay");
        assert_eq!((texts(&r), r.missed), (vec!["4".into(), "5".into()], 3));
    }

    #[test]
    fn a_replay_of_nothing_at_once_still_counts_what_was_missed() {
        let c = Conversations::memory(100).expect("memory");
        let a = c.append("n:a", "n:b", &rec("a", "1", None)).expect("a");
        c.append("n:a", "n:b", &rec("a", "2", None)).expect("b");
        let point = [PrivatePoint {
            conv: a.conv,
            after: 0,
        }];
        let r = c.replay("n:b", c.log_id(), &point, 50, 0).expect("replay");
        assert_eq!((r.messages.len(), r.missed), (0, 2));
    }

    #[test]
    fn retention_keeps_the_newest_and_counts_the_rest_as_missed() {
        let c = Conversations::memory(3).expect("memory");
        let mut conv = [0; 16];
        for i in 1..=10 {
            conv = c
                .append("n:a", "n:b", &rec("a", &i.to_string(), None))
                .expect("append")
                .conv;
        }
        let point = [PrivatePoint { conv, after: 2 }];
        let r = c
            .replay("n:a", c.log_id(), &point, 50, 1000)
            .expect("replay");
        assert_eq!(texts(&r), ["8", "9", "10"]);
        assert_eq!(r.missed, 5);
    }

    #[test]
    fn a_batch_is_one_commit_with_each_conversations_ids_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let c = Conversations::open(dir.path(), 100, SyncPolicy::None).expect("open");
        let key = Some(([4; 16], 1));
        let (ab1, cd, ab2, again) = (
            rec("a", "ab1", key),
            rec("c", "cd", None),
            rec("b", "ab2", None),
            rec("a", "ab1", key),
        );
        let got = c
            .append_batch([
                ("n:a", "n:b", &ab1),
                ("n:c", "n:d", &cd),
                ("n:b", "n:a", &ab2),
                ("n:a", "n:b", &again),
            ])
            .expect("batch");
        let ids: Vec<(u64, bool)> = got.iter().map(|a| (a.id, a.new)).collect();
        assert_eq!(ids, [(1, true), (1, true), (2, true), (1, false)]);
        assert_eq!(got[0].conv, got[2].conv);
        assert_eq!(got[3].conv, got[0].conv, "the copy points at the first");
        assert_ne!(got[0].conv, got[1].conv);
        let r = c.replay("n:a", c.log_id(), &[], 50, 1000).expect("replay");
        assert_eq!(texts(&r), ["ab1", "ab2"]);
    }

    #[test]
    fn a_resend_is_recognised_and_stored_once() {
        let c = Conversations::memory(100).expect("memory");
        let key = Some(([7; 16], 42));
        let first = c.append("n:a", "n:b", &rec("a", "once", key)).expect("a");
        let again = c.append("n:a", "n:b", &rec("a", "once", key)).expect("b");
        assert_eq!(
            (again.conv, again.id, again.new),
            (first.conv, first.id, false)
        );
        let r = c.replay("n:a", c.log_id(), &[], 50, 1000).expect("replay");
        assert_eq!(texts(&r), ["once"]);
    }

    #[test]
    fn the_file_keeps_conversations_ids_proofs_and_resend_keys_across_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let proof = Proof {
            instance: [1; 16],
            seq: 5,
            sent_ms: 9,
            key: [2; 32],
            sig: vec![3; 64],
        };
        let (log_id, conv) = {
            let c = Conversations::open(dir.path(), 100, SyncPolicy::Full).expect("open");
            let mut r = rec("a", "signed", Some(([1; 16], 5)));
            r.proof = Some(proof.clone());
            let a = c.append("k:aa", "n:b", &r).expect("append");
            (c.log_id(), a.conv)
        };
        let c = Conversations::open(dir.path(), 100, SyncPolicy::Full).expect("reopen");
        assert_eq!(c.log_id(), log_id);
        let r = c.replay("n:b", log_id, &[], 50, 1000).expect("replay");
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].0, conv);
        assert_eq!(r.messages[0].2.proof.as_ref(), Some(&proof));
        let again = c
            .append("n:b", "k:aa", &rec("a", "signed", Some(([1; 16], 5))))
            .expect("resend");
        assert!(!again.new, "the re-send key survived the restart");
        let next = c
            .append("n:b", "k:aa", &rec("b", "next", None))
            .expect("next");
        assert_eq!((next.conv, next.id), (conv, 2));
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(Conversations::FILE), b"not a database").expect("write");
        let e = match Conversations::open(dir.path(), 10, SyncPolicy::None) {
            Err(e) => e.to_string(),
            Ok(_) => String::from("opened"),
        };
        assert!(e.contains(Conversations::FILE), "{e}");
    }
}
