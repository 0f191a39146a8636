//! The room log: every public message with its id, behind one small
//! interface so that the embedded store (the default), the memory store
//! (`--store memory`, for tests and comparisons) and later stores are
//! implementations of the same thing, not separate code paths.
//!
//! Ids are assigned by the store in the same write that stores the message,
//! strictly increasing by one, so the room never publishes an id the log
//! does not have, and "how many messages lie between two ids" is a
//! subtraction (what retention removed is exactly what a resume missed).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use qchat_proto::Proof;
use redb::{Database, Durability, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

/// The idempotency key of a message: the client instance and its `seq`.
pub type Key = ([u8; 16], u64);

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Its idempotency key, if the client sent one (version 3).
    pub key: Option<Key>,
    /// The sender's name.
    pub from: String,
    /// The text.
    pub text: String,
    /// Server receive time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Whether it is an action.
    pub action: bool,
    /// The sender's signature, if it signed (boxed: most of a message's
    /// life is spent in queues, where an absent proof should cost a word).
    pub proof: Option<Box<Proof>>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the log.
    pub id: u64,
    /// The sender's name at the time.
    pub from: String,
    /// The text.
    pub text: String,
    /// Server receive time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Whether it is an action.
    pub action: bool,
    /// The sender's signature, if it signed.
    pub proof: Option<Box<Proof>>,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this new id.
    New(u64),
    /// Its key was already stored, under this id: nothing new was written.
    Duplicate(u64),
    /// Stored under this id in a log shared by several servers
    /// ([`crate::cluster::log::JetStreamLog`]): not shown or acknowledged
    /// by the writer; the room's feed does, when it reads the id in the
    /// log's one order, so that every server shows every room's lines in
    /// the same order.
    Ordered(u64),
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fsync every batch: survives a power cut.
    #[default]
    Full,
    /// Hand the batch to the operating system without waiting for the
    /// disk: survives the server's crash (`kill -9`), not the machine's.
    None,
}

impl SyncPolicy {
    fn durability(self) -> Durability {
        match self {
            SyncPolicy::Full => Durability::Immediate,
            SyncPolicy::None => Durability::Eventual,
        }
    }
}

/// A store that cannot be used. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened (corrupt, unreadable, locked).
    #[error("cannot open the room log {path}: {detail}; the file was left as it is (move it away to start a new log)")]
    Open {
        /// The file.
        path: PathBuf,
        /// What the engine said.
        detail: String,
    },
    /// Reading or writing failed after opening.
    #[error("room log: {0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The interface every room log implements. Only the writer task appends;
/// reads may come from anywhere at any time.
pub trait Store: Send + std::marker::Sync {
    /// The log's identity, made once when the log was created.
    fn log_id(&self) -> [u8; 16];
    /// The newest id stored (0 when the log is empty and always was).
    fn last_id(&self) -> u64;
    /// Stores a batch in one transaction and one sync, assigning ids in
    /// order; messages whose key is already stored are not stored again.
    /// Applies retention in the same transaction.
    fn append(&self, batch: &[&NewEntry]) -> Result<Vec<Appended>, StoreError>;
    /// The stored messages with ids in `(after, upto]`, oldest first; at most
    /// `max`, the newest ones if there are more.
    fn read(&self, after: u64, upto: u64, max: usize) -> Result<Vec<Entry>, StoreError>;
    /// [`Store::append`] for lines members said, their authors known: a
    /// log shared by several servers keeps who said each on which server,
    /// for the acknowledgement.
    fn append_said(&self, batch: &[&crate::log::Pending]) -> Result<Vec<Appended>, StoreError> {
        let entries: Vec<&NewEntry> = batch.iter().map(|p| &p.entry).collect();
        self.append(&entries)
    }
    /// This log as a log shared by the servers of a cluster, whose lines a
    /// feed shows ([`Appended::Ordered`]); `None` for a server's own log.
    fn ordered(&self) -> Option<&crate::cluster::log::JetStreamLog> {
        None
    }
    /// Messages stored now.
    fn len(&self) -> u64;
    /// Whether nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// This log as one room of a [`SharedRedb`], whose rooms' batches can
    /// be stored together ([`append_together`]); `None` for a log of its
    /// own.
    fn shared(&self) -> Option<&RoomLog> {
        None
    }
}

/// One stored message as the embedded store encodes it. The key travels
/// with the message: the dedupe table ([`RUNS`]) only says which batch
/// holds a key, and is made and trimmed from the batches' records, so it
/// never holds more than the log. The strings are borrowed both ways:
/// storing copies nothing, and retention reads keys and times without
/// allocating.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    key: Option<Key>,
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    text: &'a str,
    time_ms: u64,
    action: bool,
    /// The sender's signature. postcard is not self-describing, so a field
    /// cannot simply be added: records with it are written in batches of
    /// the second format ([`BATCH_V2`]); older batches decode as
    /// [`RecordV1`] and have none.
    proof: Option<StoredProof<'a>>,
}

/// [`Proof`] as stored, its signature borrowed like the strings.
#[derive(Serialize, Deserialize)]
struct StoredProof<'a> {
    instance: [u8; 16],
    seq: u64,
    sent_ms: u64,
    key: [u8; 32],
    #[serde(borrow, serialize_with = "byte_string")]
    sig: &'a [u8],
}

/// Writes a signature as a byte string: the same bytes as serde's default
/// for a slice (a sequence of `u8`, which is how every stored signature was
/// written and is still read), in one copy instead of a call per byte.
fn byte_string<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

impl<'a> StoredProof<'a> {
    fn of(p: &'a Proof) -> Self {
        StoredProof {
            instance: p.instance,
            seq: p.seq,
            sent_ms: p.sent_ms,
            key: p.key,
            sig: &p.sig,
        }
    }

    fn owned(&self) -> Box<Proof> {
        Box::new(Proof {
            instance: self.instance,
            seq: self.seq,
            sent_ms: self.sent_ms,
            key: self.key,
            sig: self.sig.to_vec(),
        })
    }
}

/// A record as files written before signatures hold it.
#[derive(Serialize, Deserialize)]
struct RecordV1<'a> {
    key: Option<Key>,
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    text: &'a str,
    time_ms: u64,
    action: bool,
}

impl<'a> From<RecordV1<'a>> for Record<'a> {
    fn from(r: RecordV1<'a>) -> Self {
        Record {
            key: r.key,
            from: r.from,
            text: r.text,
            time_ms: r.time_ms,
            action: r.action,
            proof: None,
        }
    }
}

/// The messages of one commit, oldest first: the first has the id the
/// batch is stored under, each next one the id after.
type Batch<'a> = Vec<Record<'a>>;

/// The first byte of a batch in the second format, followed by the
/// postcard encoding of its [`Record`]s. A batch of the first format is
/// the postcard encoding of its [`RecordV1`]s, which starts with their
/// count: never 0, since a batch is only written with messages in it.
const BATCH_V2: u8 = 0;

fn encode_batch(records: &Batch<'_>) -> Result<Vec<u8>, postcard::Error> {
    // Sized for the whole batch up front (each record's fixed fields at
    // their longest), so its texts are copied once: grown from empty, a
    // batch of a thousand signed lines was copied again at each doubling.
    let mut out = Vec::with_capacity(batch_size_bound(records));
    out.push(BATCH_V2);
    postcard::to_io(records, &mut out)?;
    Ok(out)
}

/// The most bytes [`encode_batch`] can make of `records`.
fn batch_size_bound(records: &Batch<'_>) -> usize {
    1 + MAX_VARINT
        + records
            .iter()
            .map(|r| {
                RECORD_FIXED
                    + r.from.len()
                    + r.text.len()
                    + r.proof.as_ref().map_or(0, |p| PROOF_FIXED + p.sig.len())
            })
            .sum::<usize>()
}

/// The longest postcard varint of a `u64` (or a length).
const MAX_VARINT: usize = 10;
/// A [`Record`]'s bytes besides its strings and proof, at most: the key
/// (a tag, 16 bytes and a varint), two string lengths, the time, the
/// action and the proof's tag.
const RECORD_FIXED: usize = 1 + 16 + MAX_VARINT + 2 * MAX_VARINT + MAX_VARINT + 1 + 1;
/// A [`StoredProof`]'s bytes besides its signature, at most.
const PROOF_FIXED: usize = 16 + 2 * MAX_VARINT + 32 + MAX_VARINT;

fn decode_batch(bytes: &[u8]) -> Result<Batch<'_>, postcard::Error> {
    match bytes.split_first() {
        Some((&BATCH_V2, rest)) if !rest.is_empty() => postcard::from_bytes(rest),
        _ => Ok(postcard::from_bytes::<Vec<RecordV1>>(bytes)?
            .into_iter()
            .map(Record::from)
            .collect()),
    }
}

/// The log: each commit's new messages as one value under the first one's
/// id. One B-tree insert per commit rather than one per message: the
/// per-message inserts were most of what storing cost (docs/PERFORMANCE.md,
/// "Round 6").
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// The log as files written before batches hold it: one [`Record`] per id.
/// Moved into [`BATCHES`] when such a file is opened.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// The idempotency keys as files written before [`RUNS`] hold them: one
/// entry per message, key to id. Made into runs when such a file is opened.
const KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("keys");
/// The idempotency keys of the log, as runs: per client instance and
/// commit, each set of consecutive numbers stored in that commit's batch
/// is one entry, from `instance ++ first number` ([`key_bytes`]) to the
/// last number and the batch's first id. A commit of a thousand lines
/// from ten clients inserts ten entries, not a thousand: one B-tree insert
/// per message was most of what a client's keys cost to store
/// (docs/PERFORMANCE.md, "Round 11: the log's keys"). Finding a key's id
/// reads its batch, which is rare: only a key at or below the highest its
/// instance stored is looked up ([`KeyMax`]). The runs hold exactly the
/// keys of the messages in the log, so those of one instance never
/// overlap.
const RUNS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("runs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Deletions between two compactions of the file.
const COMPACT_EVERY: u64 = 10_000;

/// Messages per batch when an old file's messages are moved into batches:
/// the size of the writer's largest commit.
const MIGRATE_BATCH: usize = 1024;

fn key_bytes(k: &Key) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&k.0);
    b[16..].copy_from_slice(&k.1.to_be_bytes());
    b
}

fn meta_u64(
    meta: &redb::Table<&str, &[u8]>,
    name: &str,
) -> Result<Option<u64>, redb::StorageError> {
    Ok(meta
        .get(name)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map(u64::from_be_bytes))
}

/// Messages received before this time (ms since the Unix epoch) are older
/// than `max_age`.
fn cutoff_ms(max_age: std::time::Duration) -> u64 {
    qchat_proto::clock::now_ms().saturating_sub(max_age.as_millis() as u64)
}

/// Moves a file's one-message-per-id log into batches, in the transaction
/// that opens it, so the rest of the store knows only batches. A run of
/// consecutive ids becomes one batch; a record that does not decode is left
/// out and ends its batch (ids inside a batch leave no gaps).
fn migrate(
    old: &redb::Table<u64, &[u8]>,
    batches: &mut redb::Table<u64, &[u8]>,
) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    let mut run: Vec<Vec<u8>> = Vec::new();
    let mut run_start = 0u64;
    let flush = |run: &mut Vec<Vec<u8>>,
                 start: u64,
                 batches: &mut redb::Table<u64, &[u8]>|
     -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        let records = run
            .iter()
            .map(|b| postcard::from_bytes::<RecordV1>(b).map(Record::from))
            .collect::<Result<Batch, _>>()
            .map_err(io)?;
        let bytes = encode_batch(&records).map_err(io)?;
        batches.insert(start, bytes.as_slice()).map_err(io)?;
        run.clear();
        Ok(())
    };
    for item in old.iter().map_err(io)? {
        let (k, v) = item.map_err(io)?;
        let id = k.value();
        if postcard::from_bytes::<RecordV1>(v.value()).is_err() {
            tracing::warn!(id, "room log: unreadable message left out");
            flush(&mut run, run_start, batches)?;
            continue;
        }
        if run.len() >= MIGRATE_BATCH || run_start + run.len() as u64 != id {
            flush(&mut run, run_start, batches)?;
        }
        if run.is_empty() {
            run_start = id;
        }
        run.push(v.value().to_vec());
        moved += 1;
    }
    flush(&mut run, run_start, batches)?;
    Ok(moved)
}

/// Where one log lives inside a redb file: its two tables and the prefix
/// of its entries in the file's `meta` table. The lobby's file holds one
/// log under the plain names (as files always did); the rooms' shared
/// file ([`SharedRedb`]) holds one pair of tables per room, each room's
/// name in its tables' names, so a room's retention, reads and id
/// lookups stay within its own B-trees.
struct Names {
    batches: String,
    runs: String,
    /// The per-message keys table of older files, only read to migrate.
    keys: String,
    prefix: String,
}

impl Names {
    fn lobby() -> Self {
        Names {
            batches: BATCHES.name().into(),
            runs: RUNS.name().into(),
            keys: KEYS.name().into(),
            prefix: String::new(),
        }
    }

    /// A room's, by its folded name. The separator cannot make two rooms'
    /// names meet: every name ends with a fixed suffix that has no `:`.
    fn room(key: &str) -> Self {
        Names {
            batches: format!("room:{key}:batches"),
            runs: format!("room:{key}:runs"),
            keys: format!("room:{key}:keys"),
            prefix: format!("room:{key}:"),
        }
    }

    fn batches(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.batches)
    }

    fn runs(&self) -> TableDefinition<'_, &'static [u8], (u64, u64)> {
        TableDefinition::new(&self.runs)
    }

    fn keys(&self) -> TableDefinition<'_, &'static [u8], u64> {
        TableDefinition::new(&self.keys)
    }

    fn meta(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// Opens (creating them if needed) one log's tables in `tx`, and reads
/// its identity (made now for a new log) and its first and last ids.
fn init_log(tx: &redb::WriteTransaction, n: &Names) -> Result<Opened, StoreError> {
    let mut meta = tx.open_table(META).map_err(io)?;
    let batches = tx.open_table(n.batches()).map_err(io)?;
    let existing = meta
        .get(n.meta("log_id").as_str())
        .map_err(io)?
        .map(|v| v.value().to_vec());
    let log_id = match existing {
        Some(v) => <[u8; 16]>::try_from(v.as_slice())
            .map_err(|_| StoreError::Io("the log id is damaged".into()))?,
        None => {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).map_err(io)?;
            meta.insert(n.meta("log_id").as_str(), id.as_slice())
                .map_err(io)?;
            id
        }
    };
    // The newest id is kept apart from the messages: retention may
    // delete every message, and ids must still never go back.
    let last_meta = meta_u64(&meta, &n.meta("last_id"))
        .map_err(io)?
        .unwrap_or(0);
    let last_batch = match batches.last().map_err(io)? {
        Some((k, v)) => {
            let len = decode_batch(v.value()).map_or(1, |b| b.len() as u64);
            k.value() + len.max(1) - 1
        }
        None => 0,
    };
    let last = last_meta.max(last_batch);
    let first_batch = batches.first().map_err(io)?.map(|(k, _)| k.value());
    // Where retention last stopped, which may be inside the oldest
    // batch; files from before batches do not have it.
    let first = match (
        meta_u64(&meta, &n.meta("first_id")).map_err(io)?,
        first_batch,
    ) {
        (Some(f), Some(b)) => f.max(b),
        (Some(f), None) => f.max(last + 1),
        (None, Some(b)) => b,
        (None, None) => last + 1,
    };
    let mut runs = tx.open_table(n.runs()).map_err(io)?;
    // A file from before runs has its keys one per message; so does one
    // that a server from before runs has written to since (which left
    // the runs as they were). Either way the runs are made again from the
    // batches' records, which hold every key the log has, in the
    // transaction that opens the log; the old table goes with it.
    if tx.delete_table(n.keys()).map_err(io)? {
        let made = rebuild_runs(&batches, &mut runs, first)?;
        tracing::info!(runs = made, "room log: its keys moved to runs");
    }
    let keys = KeyMax::load(&runs)?;
    Ok(Opened {
        log_id,
        first,
        last,
        keys,
    })
}

/// What [`init_log`] found of a log.
struct Opened {
    log_id: [u8; 16],
    first: u64,
    last: u64,
    keys: KeyMax,
}

/// Client instances [`KeyMax`] keeps a number for, at most: ~40 bytes
/// each.
const KEY_MAX_INSTANCES: usize = 4096;

/// Per client instance, a number no key of it stored in one log is above:
/// a key above it is surely new, and storing it needs no lookup in the
/// runs first. A client numbers its lines upwards, so its next line is
/// above everything it sent before, and only a re-sent line (after a
/// reconnect) or an unknown instance is looked up.
///
/// Made from the runs when the log is opened and raised with every
/// key stored; never lowered (retention deleting keys leaves it above the
/// rest, and a commit that failed leaves it above keys it never stored,
/// which costs a lookup, never a duplicate). An instance it has no number
/// for has no key in the log while `complete` holds; past
/// [`KEY_MAX_INSTANCES`] instances, a new one is not added and
/// `complete` ends, so that every instance without a number is looked up.
#[derive(Debug, Default)]
struct KeyMax {
    max: HashMap<[u8; 16], u64>,
    complete: bool,
}

impl KeyMax {
    /// The maxima of every instance in `runs`.
    fn load(runs: &impl ReadableTable<&'static [u8], (u64, u64)>) -> Result<Self, StoreError> {
        let mut km = KeyMax {
            max: HashMap::new(),
            complete: true,
        };
        for item in runs.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            match key_of(k.value()) {
                Some((instance, _)) => km.stored(&(instance, v.value().0)),
                // Not a key this store wrote: nothing can be assumed of
                // it, so everything is looked up.
                None => km.complete = false,
            }
        }
        Ok(km)
    }

    /// Whether `key` is surely not in the log.
    fn surely_new(&self, key: &Key) -> bool {
        match self.max.get(&key.0) {
            Some(&m) => key.1 > m,
            None => self.complete,
        }
    }

    /// Notes that `key` is (or is about to be) stored.
    fn stored(&mut self, key: &Key) {
        let at_cap = self.max.len() >= KEY_MAX_INSTANCES;
        match self.max.get_mut(&key.0) {
            Some(m) => *m = (*m).max(key.1),
            None if !at_cap => {
                self.max.insert(key.0, key.1);
            }
            None => self.complete = false,
        }
    }
}

/// The key [`key_bytes`] made `b` from, if it is one.
fn key_of(b: &[u8]) -> Option<Key> {
    let instance = <[u8; 16]>::try_from(b.get(..16)?).ok()?;
    let seq = <[u8; 8]>::try_from(b.get(16..)?).ok()?;
    Some((instance, u64::from_be_bytes(seq)))
}

/// The keys of a batch's messages (stored under `start`) from id `from`
/// on.
fn keys_from(records: &Batch<'_>, start: u64, from: u64) -> Vec<Key> {
    let skip = usize::try_from(from.saturating_sub(start)).unwrap_or(usize::MAX);
    records.iter().skip(skip).filter_map(|r| r.key).collect()
}

/// `keys` as runs: per instance, each set of consecutive numbers as its
/// first key and last number, in the order of the runs table. Consecutive
/// in number, not in the batch: a client's lines may come between
/// another's, or out of order, and still make one run.
fn runs_of(mut keys: Vec<Key>) -> Vec<(Key, u64)> {
    keys.sort_unstable();
    let mut out: Vec<(Key, u64)> = Vec::new();
    for k in keys {
        match out.last_mut() {
            Some(((instance, _), last)) if *instance == k.0 && last.checked_add(1) == Some(k.1) => {
                *last = k.1
            }
            // The same key twice is one message's (a log never stores
            // two): its run has it already.
            Some(((instance, _), last)) if *instance == k.0 && *last == k.1 => {}
            _ => out.push((k, k.1)),
        }
    }
    out
}

/// Stores the runs of `keys`, the keys of the batch stored under `start`.
/// Returns how many.
fn insert_runs(
    runs: &mut redb::Table<&[u8], (u64, u64)>,
    start: u64,
    keys: Vec<Key>,
) -> Result<usize, StoreError> {
    let made = runs_of(keys);
    for (first, last) in &made {
        runs.insert(key_bytes(first).as_slice(), (*last, start))
            .map_err(io)?;
    }
    Ok(made.len())
}

/// Makes `runs` anew from the keys of the messages in `batches` from id
/// `first` on. Returns how many runs.
fn rebuild_runs(
    batches: &redb::Table<u64, &[u8]>,
    runs: &mut redb::Table<&[u8], (u64, u64)>,
    first: u64,
) -> Result<usize, StoreError> {
    runs.retain(|_, _| false).map_err(io)?;
    let mut made = 0;
    for item in batches.iter().map_err(io)? {
        let (k, v) = item.map_err(io)?;
        // A batch that does not decode has no keys anyone can read: its
        // messages are not read either.
        if let Ok(records) = decode_batch(v.value()) {
            made += insert_runs(runs, k.value(), keys_from(&records, k.value(), first))?;
        }
    }
    Ok(made)
}

/// The keys of one batch, as [`find_stored`] last read them: its first
/// id, and its messages' keys in order (`None`: it is gone or does not
/// decode).
type ReadKeys = Option<(u64, Option<Vec<Option<Key>>>)>;

/// The id of the message stored under `key` in a log starting at `first`,
/// if the log has it. `read` keeps the last batch read, for the next
/// look-up: a client re-sending lines re-sends several of one batch.
///
/// A run whose batch is gone or does not decode says nothing: it is
/// removed (so that it cannot hide the run of a key stored again, which
/// would overlap it) and the look-up goes on with the run before it.
fn find_stored(
    runs: &mut redb::Table<&[u8], (u64, u64)>,
    batches: &redb::Table<u64, &[u8]>,
    first: u64,
    key: &Key,
    read: &mut ReadKeys,
) -> Result<Option<u64>, StoreError> {
    // The instance's run starting nearest at or below the number: the
    // only one that can hold it, as one instance's runs never overlap.
    let lowest = key_bytes(&(key.0, 0));
    let here = key_bytes(key);
    loop {
        let (run, last, start) = {
            let mut found = runs
                .range::<&[u8]>(lowest.as_slice()..=here.as_slice())
                .map_err(io)?;
            match found.next_back() {
                Some(item) => {
                    let (k, v) = item.map_err(io)?;
                    let (last, start) = v.value();
                    (k.value().to_vec(), last, start)
                }
                None => return Ok(None),
            }
        };
        if key.1 > last {
            return Ok(None);
        }
        if read.as_ref().is_none_or(|(at, _)| *at != start) {
            let keys = match batches.get(start).map_err(io)? {
                Some(v) => decode_batch(v.value())
                    .ok()
                    .map(|records| records.iter().map(|r| r.key).collect()),
                None => None,
            };
            *read = Some((start, keys));
        }
        match read.as_ref().and_then(|(_, keys)| keys.as_ref()) {
            Some(keys) => {
                let id = keys
                    .iter()
                    .position(|k| k.as_ref() == Some(key))
                    .map(|i| start + i as u64);
                // Below the first id: retention dropped it, though its
                // batch is still in the file.
                return Ok(id.filter(|&id| id >= first));
            }
            None => {
                tracing::warn!(id = start, "room log: a key's batch is gone or unreadable");
                runs.remove(run.as_slice()).map_err(io)?;
            }
        }
    }
}

/// How a log keeps its messages: at most `keep`, none older than
/// `max_age`.
#[derive(Debug, Clone, Copy)]
struct Retention {
    keep: u64,
    max_age: Option<std::time::Duration>,
}

/// Stores one log's batch in `tx` (not committed here): its new ids
/// start after `last`, and retention runs from `first`. Returns what
/// became of each message, the log's new first id and its last.
fn append_in(
    tx: &redb::WriteTransaction,
    n: &Names,
    (first, mut last): (u64, u64),
    known: &mut KeyMax,
    retention: Retention,
    batch: &[&NewEntry],
) -> Result<(Vec<Appended>, u64, u64), StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut batches = tx.open_table(n.batches()).map_err(io)?;
    let mut runs = tx.open_table(n.runs()).map_err(io)?;
    let mut meta = tx.open_table(META).map_err(io)?;
    let mut records: Batch = Vec::with_capacity(batch.len());
    let start = last + 1;
    let mut read: ReadKeys = None;
    for e in batch {
        if let Some(k) = &e.key {
            if !known.surely_new(k) {
                // Sent twice in this batch, or stored before.
                let here = records
                    .iter()
                    .position(|r| r.key.as_ref() == Some(k))
                    .map(|i| start + i as u64);
                let found = match here {
                    Some(id) => Some(id),
                    None => find_stored(&mut runs, &batches, first, k, &mut read)?,
                };
                if let Some(id) = found {
                    out.push(Appended::Duplicate(id));
                    continue;
                }
            }
        }
        last += 1;
        records.push(Record {
            key: e.key,
            from: &e.from,
            text: &e.text,
            time_ms: e.time_ms,
            action: e.action,
            proof: e.proof.as_deref().map(StoredProof::of),
        });
        if let Some(k) = &e.key {
            known.stored(k);
        }
        out.push(Appended::New(last));
    }
    if !records.is_empty() {
        let bytes = encode_batch(&records).map_err(io)?;
        batches.insert(start, bytes.as_slice()).map_err(io)?;
        insert_runs(&mut runs, start, keys_from(&records, start, start))?;
    }
    meta.insert(n.meta("last_id").as_str(), last.to_be_bytes().as_slice())
        .map_err(io)?;
    // Retention: the oldest go, with their keys. An empty log has
    // `first == last + 1`, the first new id.
    let len = (last + 1).saturating_sub(first);
    let below = first + len.saturating_sub(retention.keep);
    let cutoff = retention.max_age.map(cutoff_ms);
    let new_first = drop_oldest(&mut batches, &mut runs, first, last, below, cutoff)?;
    if new_first != first {
        meta.insert(
            n.meta("first_id").as_str(),
            new_first.to_be_bytes().as_slice(),
        )
        .map_err(io)?;
    }
    Ok((out, new_first, last))
}

/// Reads one log's messages with ids in `(after, upto]` (at most `max`,
/// the newest), the log spanning `first..=last`.
fn read_in(
    db: &Database,
    n: &Names,
    (first, last): (u64, u64),
    after: u64,
    upto: u64,
    max: usize,
) -> Result<Vec<Entry>, StoreError> {
    // Retention may have dropped the start of the oldest batch; and
    // "the newest `max`" counts from the newest stored, not from `upto`.
    let upto = upto.min(last);
    if upto <= after || max == 0 {
        return Ok(Vec::new());
    }
    let from = after
        .saturating_add(1)
        .max(upto.saturating_sub(max as u64 - 1))
        .max(first);
    let tx = db.begin_read().map_err(io)?;
    let batches = tx.open_table(n.batches()).map_err(io)?;
    // The batch holding `from` starts at or before it.
    let start = match batches.range(..=from).map_err(io)?.next_back() {
        Some(item) => item.map_err(io)?.0.value(),
        None => from,
    };
    let mut out = Vec::new();
    for item in batches.range(start..=upto).map_err(io)? {
        let (k, v) = item.map_err(io)?;
        // A batch that does not decode is skipped, not fatal: one bad
        // write must not stop everyone's replay.
        let recs = match decode_batch(v.value()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id = k.value(), "room log: unreadable batch: {e}");
                continue;
            }
        };
        for (id, r) in (k.value()..).zip(recs) {
            if id > upto {
                break;
            }
            if id >= from {
                out.push(Entry {
                    id,
                    from: r.from.to_owned(),
                    text: r.text.to_owned(),
                    time_ms: r.time_ms,
                    action: r.action,
                    proof: r.proof.as_ref().map(StoredProof::owned),
                });
            }
        }
    }
    Ok(out)
}

/// The default store: one redb file, `room.redb` in the data directory.
pub struct RedbStore {
    /// Compaction needs the database to itself; everything else shares it.
    db: RwLock<Database>,
    path: PathBuf,
    log_id: [u8; 16],
    state: Mutex<Counters>,
    keep: u64,
    max_age: Option<std::time::Duration>,
    sync: SyncPolicy,
}

struct Counters {
    /// Oldest and newest ids in the log; `first > last` when empty.
    /// Retention may have dropped the start of the oldest stored batch:
    /// `first` is where the log starts, whatever the file still holds.
    first: u64,
    last: u64,
    deleted_since_compact: u64,
    /// Which keys are surely not stored yet.
    keys: KeyMax,
}

impl RedbStore {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "room.redb";

    /// Opens (or creates) the log in `dir`, keeping at most `keep` messages.
    /// A file that cannot be read is an error naming it, never replaced.
    pub fn open(dir: &Path, keep: u64, sync: SyncPolicy) -> Result<Self, StoreError> {
        Self::open_cached(dir, keep, sync, None)
    }

    /// [`RedbStore::open`] with the engine's cache limited to `cache`
    /// bytes (`None`: the engine's default): a room besides the lobby is
    /// one of many logs, most of them small and quiet.
    pub fn open_cached(
        dir: &Path,
        keep: u64,
        sync: SyncPolicy,
        cache: Option<usize>,
    ) -> Result<Self, StoreError> {
        let path = dir.join(Self::FILE);
        let open_err = |detail: String| StoreError::Open {
            path: path.clone(),
            detail,
        };
        let mut builder = redb::Builder::new();
        if let Some(bytes) = cache {
            builder.set_cache_size(bytes);
        }
        let db = builder.create(&path).map_err(|e| open_err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            let mut batches = tx
                .open_table(BATCHES)
                .map_err(|e| open_err(e.to_string()))?;
            let old = tx
                .open_table(MESSAGES)
                .map_err(|e| open_err(e.to_string()))?;
            let moved = migrate(&old, &mut batches).map_err(|e| open_err(e.to_string()))?;
            if moved > 0 {
                tracing::info!(messages = moved, path = %path.display(), "room log moved to the batched layout");
            }
        }
        let Opened {
            log_id,
            first,
            last,
            keys,
        } = init_log(&tx, &Names::lobby()).map_err(|e| open_err(e.to_string()))?;
        tx.delete_table(MESSAGES)
            .map_err(|e| open_err(e.to_string()))?;
        tx.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(RedbStore {
            db: RwLock::new(db),
            path,
            log_id,
            state: Mutex::new(Counters {
                first,
                last,
                deleted_since_compact: 0,
                keys,
            }),
            keep: keep.max(1),
            max_age: None,
            sync,
        })
    }

    /// Also deletes messages older than `max_age` (checked whenever a
    /// batch is stored).
    pub fn with_max_age(mut self, max_age: Option<std::time::Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retention(&self) -> Retention {
        Retention {
            keep: self.keep,
            max_age: self.max_age,
        }
    }

    fn compact(&self) {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        match db.compact() {
            Ok(_) => tracing::debug!(path = %self.path.display(), "room log compacted"),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "room log compaction failed: {e}")
            }
        }
    }
}

/// What retention does with the oldest stored batch.
enum Oldest {
    /// Nothing more goes.
    Stop,
    /// The log starts at `first` now; `drop_batch` (its first id) is gone
    /// from the file if all of it went; `more`: look at the next batch.
    Advance {
        first: u64,
        drop_batch: Option<u64>,
        more: bool,
    },
}

/// Drops the oldest messages, with their keys: every id below `below`,
/// then those received before `cutoff`. Returns the new first id. A batch
/// leaves the file once all of its messages are gone; until then `first`
/// hides its start.
fn drop_oldest(
    batches: &mut redb::Table<u64, &[u8]>,
    runs: &mut redb::Table<&[u8], (u64, u64)>,
    mut first: u64,
    last: u64,
    below: u64,
    cutoff: Option<u64>,
) -> Result<u64, StoreError> {
    while first <= last && (first < below || cutoff.is_some()) {
        let step = {
            let Some((k, v)) = batches.first().map_err(io)? else {
                // Nothing stored at all: the log is empty.
                first = last + 1;
                break;
            };
            let start = k.value();
            if start > first {
                // Ids below the oldest stored one are gone already.
                Oldest::Advance {
                    first: start,
                    drop_batch: None,
                    more: true,
                }
            } else {
                match decode_batch(v.value()) {
                    Ok(recs) => {
                        let end = start + recs.len() as u64;
                        let from = first.max(start);
                        let mut to = from;
                        let skip = usize::try_from(to - start).unwrap_or(usize::MAX);
                        for r in recs.iter().skip(skip) {
                            let old = to < below || cutoff.is_some_and(|c| r.time_ms < c);
                            if !old {
                                break;
                            }
                            to += 1;
                        }
                        if to > from {
                            trim_runs(runs, &recs, start, from, to.min(end))?;
                        }
                        match (to >= end, to == first) {
                            (true, _) => Oldest::Advance {
                                first: to,
                                drop_batch: Some(start),
                                more: true,
                            },
                            (false, true) => Oldest::Stop,
                            // Stopped inside the batch: the rest of it
                            // stays.
                            (false, false) => Oldest::Advance {
                                first: to,
                                drop_batch: None,
                                more: false,
                            },
                        }
                    }
                    // Unreadable: its messages' ages and keys are unknown;
                    // it goes with its neighbours rather than block
                    // retention, and the next batch says where the log
                    // goes on.
                    Err(e) => {
                        tracing::warn!(id = start, "room log: unreadable batch dropped: {e}");
                        runs.retain(|_, (_, at)| at != start).map_err(io)?;
                        Oldest::Advance {
                            first: first.max(start + 1),
                            drop_batch: Some(start),
                            more: true,
                        }
                    }
                }
            }
        };
        match step {
            Oldest::Stop => break,
            Oldest::Advance {
                first: f,
                drop_batch,
                more,
            } => {
                if let Some(start) = drop_batch {
                    batches.remove(start).map_err(io)?;
                }
                first = f;
                if !more {
                    break;
                }
            }
        }
    }
    Ok(first)
}

/// Retention dropped the messages `from..to` of the batch stored under
/// `start`: its runs become those of the messages it still has in the log
/// (`to..`), so that the runs hold exactly the log's keys. Runs the cut
/// leaves as they were stay untouched.
fn trim_runs(
    runs: &mut redb::Table<&[u8], (u64, u64)>,
    records: &Batch<'_>,
    start: u64,
    from: u64,
    to: u64,
) -> Result<(), StoreError> {
    let before = runs_of(keys_from(records, start, from));
    let after = runs_of(keys_from(records, start, to));
    let kept: std::collections::HashSet<&(Key, u64)> = after.iter().collect();
    for run in &before {
        if !kept.contains(run) {
            runs.remove(key_bytes(&run.0).as_slice()).map_err(io)?;
        }
    }
    let had: std::collections::HashSet<&(Key, u64)> = before.iter().collect();
    for (first, last) in &after {
        if !had.contains(&(*first, *last)) {
            runs.insert(key_bytes(first).as_slice(), (*last, start))
                .map_err(io)?;
        }
    }
    Ok(())
}

impl Store for RedbStore {
    fn log_id(&self) -> [u8; 16] {
        self.log_id
    }

    fn last_id(&self) -> u64 {
        self.counters().last
    }

    fn len(&self) -> u64 {
        let c = self.counters();
        (c.last + 1).saturating_sub(c.first)
    }

    fn append(&self, batch: &[&NewEntry]) -> Result<Vec<Appended>, StoreError> {
        // Only the writer appends: the keys' maxima are out of the lock
        // while it stores, and back whatever became of the commit.
        let (span, mut known) = {
            let mut c = self.counters();
            ((c.first, c.last), std::mem::take(&mut c.keys))
        };
        let done = {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            let mut stored = || {
                let mut tx = db.begin_write().map_err(io)?;
                tx.set_durability(self.sync.durability());
                let done = append_in(
                    &tx,
                    &Names::lobby(),
                    span,
                    &mut known,
                    self.retention(),
                    batch,
                )?;
                tx.commit().map_err(io)?;
                Ok(done)
            };
            stored()
        };
        self.counters().keys = known;
        let (out, new_first, last) = done?;
        let compact = {
            let mut c = self.counters();
            c.first = new_first;
            c.last = last;
            c.deleted_since_compact += new_first.saturating_sub(span.0);
            let due = c.deleted_since_compact >= COMPACT_EVERY;
            if due {
                c.deleted_since_compact = 0;
            }
            due
        };
        if compact {
            self.compact();
        }
        Ok(out)
    }

    fn read(&self, after: u64, upto: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let span = {
            let c = self.counters();
            (c.first, c.last)
        };
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        read_in(&db, &Names::lobby(), span, after, upto, max)
    }
}

/// The logs of every room besides the lobby, in one redb file: one
/// engine, one cache and one writer for all of them, rather than a file
/// (≈ 0.58 MiB of the engine's memory) and a writer thread per room, each
/// syncing its own small batches. Each room's messages and keys are in a
/// table pair of their own ([`RoomLog`]); a commit may hold many rooms'
/// batches ([`SharedRedb::append_all`]), with one sync for all of them.
pub struct SharedRedb {
    /// Compaction needs the database to itself; everything else shares it.
    db: RwLock<Database>,
    path: PathBuf,
    retention: Retention,
    sync: SyncPolicy,
    deleted_since_compact: Mutex<u64>,
}

/// One room's log in a [`SharedRedb`].
pub struct RoomLog {
    shared: Arc<SharedRedb>,
    names: Names,
    log_id: [u8; 16],
    /// Only `first` and `last`: compaction is counted for the whole file.
    state: Mutex<Counters>,
}

impl SharedRedb {
    /// The file name inside the rooms' folder.
    pub const FILE: &'static str = "rooms.redb";

    /// Opens (or creates) the rooms' file `FILE` in `dir`; every room keeps
    /// at most `keep` messages, none older than `max_age`. The engine's
    /// cache is limited to `cache` bytes. A file that cannot be read is
    /// an error naming it, never replaced.
    ///
    /// Rooms' logs were one file each (`<dir>/<hex>/room.redb`) only on
    /// a development branch that never shipped: nothing is migrated from
    /// there, and such folders are left alone.
    pub fn open(
        dir: &Path,
        keep: u64,
        max_age: Option<std::time::Duration>,
        sync: SyncPolicy,
        cache: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let path = dir.join(Self::FILE);
        let db = redb::Builder::new()
            .set_cache_size(cache)
            .create(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        Ok(Arc::new(SharedRedb {
            db: RwLock::new(db),
            path,
            retention: Retention {
                keep: keep.max(1),
                max_age,
            },
            sync,
            deleted_since_compact: Mutex::new(0),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or creates) the log of the room whose folded name is `key`.
    pub fn open_room(self: &Arc<Self>, key: &str) -> Result<Arc<RoomLog>, StoreError> {
        let names = Names::room(key);
        let open_err = |e: StoreError| StoreError::Open {
            path: self.path.clone(),
            detail: format!("the log of {key}: {e}"),
        };
        let Opened {
            log_id,
            first,
            last,
            keys,
        } = {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            let mut tx = db.begin_write().map_err(|e| open_err(io(e)))?;
            // A new room's tables and identity need no sync of their own:
            // the first commit of a message makes them durable with it,
            // and a crash before that loses an empty log (its members
            // then rejoin it as new, with nothing to miss).
            tx.set_durability(Durability::None);
            let got = init_log(&tx, &names).map_err(open_err)?;
            tx.commit().map_err(|e| open_err(io(e)))?;
            got
        };
        Ok(Arc::new(RoomLog {
            shared: Arc::clone(self),
            names,
            log_id,
            state: Mutex::new(Counters {
                first,
                last,
                deleted_since_compact: 0,
                keys,
            }),
        }))
    }

    /// Stores several rooms' batches in one transaction with one sync:
    /// each room's new messages take that room's next ids, in order, and
    /// retention runs per room. All or nothing: if the commit fails, every
    /// room's part failed. Results are in the order of `parts`. The logs
    /// must be this file's, and each at most once.
    pub fn append_all(
        &self,
        parts: &[(&RoomLog, &[&NewEntry])],
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        if let Some((log, _)) = parts
            .iter()
            .find(|(log, _)| !std::ptr::eq(Arc::as_ptr(&log.shared), self))
        {
            return Err(StoreError::Io(format!(
                "{} is not a log of {}",
                log.names.prefix,
                self.path.display()
            )));
        }
        let mut done = Vec::with_capacity(parts.len());
        {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            let mut tx = db.begin_write().map_err(io)?;
            tx.set_durability(self.sync.durability());
            for (log, batch) in parts {
                let (span, mut known) = {
                    let mut c = log.counters();
                    ((c.first, c.last), std::mem::take(&mut c.keys))
                };
                let stored = append_in(&tx, &log.names, span, &mut known, self.retention, batch);
                // Back whatever became of the batch (see `KeyMax`).
                log.counters().keys = known;
                let (out, first, last) = stored?;
                done.push((out, span.0, first, last));
            }
            tx.commit().map_err(io)?;
        }
        let mut deleted = 0;
        let mut results = Vec::with_capacity(parts.len());
        for ((log, _), (out, old_first, first, last)) in parts.iter().zip(done) {
            let mut c = log.counters();
            c.first = first;
            c.last = last;
            deleted += first.saturating_sub(old_first);
            results.push(out);
        }
        let compact = {
            let mut d = self
                .deleted_since_compact
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *d += deleted;
            let due = *d >= COMPACT_EVERY;
            if due {
                *d = 0;
            }
            due
        };
        if compact {
            let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
            match db.compact() {
                Ok(_) => tracing::debug!(path = %self.path.display(), "rooms' log compacted"),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "rooms' log compaction failed: {e}")
                }
            }
        }
        Ok(results)
    }
}

impl RoomLog {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for RoomLog {
    fn log_id(&self) -> [u8; 16] {
        self.log_id
    }

    fn last_id(&self) -> u64 {
        self.counters().last
    }

    fn len(&self) -> u64 {
        let c = self.counters();
        (c.last + 1).saturating_sub(c.first)
    }

    fn append(&self, batch: &[&NewEntry]) -> Result<Vec<Appended>, StoreError> {
        let mut all = self.shared.append_all(&[(self, batch)])?;
        all.pop()
            .ok_or_else(|| StoreError::Io("the store answered for no room".into()))
    }

    fn read(&self, after: u64, upto: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let span = {
            let c = self.counters();
            (c.first, c.last)
        };
        let db = self.shared.db.read().unwrap_or_else(|p| p.into_inner());
        read_in(&db, &self.names, span, after, upto, max)
    }

    fn shared(&self) -> Option<&RoomLog> {
        Some(self)
    }
}

/// Stores several logs' batches, each log once: the rooms of one
/// [`SharedRedb`] in one commit together, any other log on its own.
/// Results are in the order of `parts`; an empty batch stores nothing
/// and answers `None`.
pub fn append_together(
    parts: &[(&dyn Store, Vec<&NewEntry>)],
) -> Vec<Option<Result<Vec<Appended>, StoreError>>> {
    let mut out: Vec<Option<Result<Vec<Appended>, StoreError>>> =
        parts.iter().map(|_| None).collect();
    // The shared files among the parts, each with its parts' positions.
    let mut files: Vec<(&Arc<SharedRedb>, Vec<usize>)> = Vec::new();
    for (i, (store, batch)) in parts.iter().enumerate() {
        if batch.is_empty() {
            continue;
        }
        match store.shared() {
            Some(log) => match files.iter_mut().find(|(f, _)| Arc::ptr_eq(f, &log.shared)) {
                Some((_, at)) => at.push(i),
                None => files.push((&log.shared, vec![i])),
            },
            None => out[i] = Some(store.append(batch)),
        }
    }
    for (file, at) in files {
        let group: Vec<(&RoomLog, &[&NewEntry])> = at
            .iter()
            .filter_map(|&i| Some((parts[i].0.shared()?, parts[i].1.as_slice())))
            .collect();
        match file.append_all(&group) {
            Ok(results) => {
                for (i, r) in at.into_iter().zip(results) {
                    out[i] = Some(Ok(r));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for i in at {
                    out[i] = Some(Err(StoreError::Io(why.clone())));
                }
            }
        }
    }
    out
}

/// The store in memory: lost with the process. For tests and for measuring
/// what the embedded store costs.
pub struct MemoryStore {
    log_id: [u8; 16],
    keep: usize,
    max_age: Option<std::time::Duration>,
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    last: u64,
    entries: VecDeque<(Entry, Option<Key>)>,
    keys: HashMap<Key, u64>,
}

impl MemoryStore {
    /// An empty log with a fresh id, keeping at most `keep` messages.
    pub fn new(keep: u64) -> Self {
        let mut log_id = [0u8; 16];
        // Without randomness the id is still unique enough for a log that
        // dies with its process: the time distinguishes two runs.
        if getrandom::fill(&mut log_id).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            log_id = t.to_be_bytes();
        }
        MemoryStore {
            log_id,
            keep: keep.max(1) as usize,
            max_age: None,
            inner: Mutex::new(Memory::default()),
        }
    }

    /// Also forgets messages older than `max_age`.
    pub fn with_max_age(mut self, max_age: Option<std::time::Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn log_id(&self) -> [u8; 16] {
        self.log_id
    }

    fn last_id(&self) -> u64 {
        self.lock().last
    }

    fn len(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    fn append(&self, batch: &[&NewEntry]) -> Result<Vec<Appended>, StoreError> {
        let mut m = self.lock();
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            if let Some(id) = e.key.as_ref().and_then(|k| m.keys.get(k)) {
                out.push(Appended::Duplicate(*id));
                continue;
            }
            m.last += 1;
            let id = m.last;
            if let Some(k) = e.key {
                m.keys.insert(k, id);
            }
            m.entries.push_back((
                Entry {
                    id,
                    from: e.from.clone(),
                    text: e.text.clone(),
                    time_ms: e.time_ms,
                    action: e.action,
                    proof: e.proof.clone(),
                },
                e.key,
            ));
            while m.entries.len() > self.keep {
                if let Some((_, Some(k))) = m.entries.pop_front() {
                    m.keys.remove(&k);
                }
            }
            out.push(Appended::New(id));
        }
        if let Some(cutoff) = self.max_age.map(cutoff_ms) {
            while m.entries.front().is_some_and(|(e, _)| e.time_ms < cutoff) {
                if let Some((_, Some(k))) = m.entries.pop_front() {
                    m.keys.remove(&k);
                }
            }
        }
        Ok(out)
    }

    fn read(&self, after: u64, upto: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let m = self.lock();
        let mut v: Vec<Entry> = m
            .entries
            .iter()
            .rev()
            .map(|(e, _)| e)
            .filter(|e| e.id <= upto)
            .take_while(|e| e.id > after)
            .take(max)
            .cloned()
            .collect();
        v.reverse();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: Option<Key>, text: &str) -> NewEntry {
        NewEntry {
            key,
            from: "a".into(),
            text: text.into(),
            time_ms: 1,
            action: false,
            proof: None,
        }
    }

    fn stores(dir: &Path, keep: u64) -> Vec<Box<dyn Store>> {
        vec![
            Box::new(RedbStore::open(dir, keep, SyncPolicy::Full).expect("opens")),
            Box::new(MemoryStore::new(keep)),
        ]
    }

    fn texts(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn ids_increase_and_duplicates_keep_their_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        for s in stores(dir.path(), 100) {
            let k = ([7u8; 16], 1);
            let got = s
                .append(&[
                    &msg(Some(k), "one"),
                    &msg(None, "two"),
                    &msg(Some(k), "again"),
                ])
                .expect("appends");
            assert_eq!(
                got,
                [Appended::New(1), Appended::New(2), Appended::Duplicate(1)]
            );
            assert_eq!(
                s.append(&[&msg(Some(k), "later")]).expect("appends"),
                [Appended::Duplicate(1)]
            );
            assert_eq!(s.last_id(), 2);
            assert_eq!(texts(&s.read(0, 2, 10).expect("reads")), ["one", "two"]);
            assert_eq!(texts(&s.read(1, 2, 10).expect("reads")), ["two"]);
            assert_eq!(texts(&s.read(0, 1, 10).expect("reads")), ["one"]);
            assert_eq!(texts(&s.read(0, 2, 1).expect("reads")), ["two"]);
        }
    }

    #[test]
    fn the_log_survives_reopening_with_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, last) = {
            let s = RedbStore::open(dir.path(), 100, SyncPolicy::Full).expect("opens");
            s.append(&[&msg(Some(([1; 16], 5)), "kept")])
                .expect("appends");
            (s.log_id(), s.last_id())
        };
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::Full).expect("reopens");
        assert_eq!(s.log_id(), id);
        assert_eq!(s.last_id(), last);
        assert_eq!(texts(&s.read(0, last, 10).expect("reads")), ["kept"]);
        assert_eq!(
            s.append(&[&msg(Some(([1; 16], 5)), "kept")])
                .expect("appends"),
            [Appended::Duplicate(1)]
        );
        let other = tempfile::tempdir().expect("tempdir");
        let fresh = RedbStore::open(other.path(), 100, SyncPolicy::Full).expect("opens");
        assert_ne!(fresh.log_id(), id);
    }

    #[test]
    fn retention_drops_the_oldest_with_their_keys_and_ids_never_go_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        for s in stores(dir.path(), 3) {
            for i in 0..5u64 {
                s.append(&[&msg(Some(([2; 16], i)), &i.to_string())])
                    .expect("appends");
            }
            assert_eq!(s.len(), 3);
            assert_eq!(texts(&s.read(0, 5, 10).expect("reads")), ["2", "3", "4"]);
            // The key of a message retention dropped is free again: its
            // message is not in the log any more.
            assert_eq!(
                s.append(&[&msg(Some(([2; 16], 0)), "0")]).expect("appends"),
                [Appended::New(6)]
            );
        }
        let s = RedbStore::open(dir.path(), 3, SyncPolicy::Full).expect("reopens");
        assert_eq!(s.last_id(), 6);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn messages_older_than_the_max_age_go_and_the_rest_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = Some(std::time::Duration::from_secs(3600));
        let stores: Vec<Box<dyn Store>> = vec![
            Box::new(
                RedbStore::open(dir.path(), 100, SyncPolicy::Full)
                    .expect("opens")
                    .with_max_age(hour),
            ),
            Box::new(MemoryStore::new(100).with_max_age(hour)),
        ];
        let now = cutoff_ms(std::time::Duration::ZERO);
        for s in stores {
            let old = NewEntry {
                time_ms: now - 2 * 3600 * 1000,
                ..msg(Some(([3; 16], 1)), "old")
            };
            s.append(&[&old]).expect("appends");
            let new = NewEntry {
                time_ms: now,
                ..msg(Some(([3; 16], 2)), "new")
            };
            s.append(&[&new]).expect("appends");
            assert_eq!(texts(&s.read(0, 2, 10).expect("reads")), ["new"]);
            assert_eq!(s.len(), 1);
            assert_eq!(s.last_id(), 2);
        }
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RedbStore::FILE);
        let garbage = vec![0x5au8; 8192];
        std::fs::write(&path, &garbage).expect("writes");
        let err = match RedbStore::open(dir.path(), 10, SyncPolicy::Full) {
            Err(e) => e,
            Ok(_) => panic!("a corrupt file must not open"),
        };
        assert!(err.to_string().contains("room.redb"), "{err}");
        assert_eq!(std::fs::read(&path).expect("reads"), garbage);
    }

    #[test]
    fn retention_inside_a_batch_frees_its_keys_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |i| Some(([4; 16], i));
        {
            let s = RedbStore::open(dir.path(), 3, SyncPolicy::None).expect("opens");
            let five: Vec<NewEntry> = (1..=5).map(|i| msg(key(i), &i.to_string())).collect();
            s.append(&five.iter().collect::<Vec<_>>()).expect("appends");
            assert_eq!(s.len(), 3);
            assert_eq!(texts(&s.read(0, 5, 10).expect("reads")), ["3", "4", "5"]);
            // Dropped from the log, though its batch is still in the file:
            // its key is free again.
            assert_eq!(
                s.append(&[&msg(key(1), "1 again")]).expect("appends"),
                [Appended::New(6)]
            );
            assert_eq!(
                s.append(&[&msg(key(4), "4 again")]).expect("appends"),
                [Appended::Duplicate(4)]
            );
        }
        let s = RedbStore::open(dir.path(), 3, SyncPolicy::None).expect("reopens");
        assert_eq!((s.len(), s.last_id()), (3, 6));
        assert_eq!(
            texts(&s.read(0, 6, 10).expect("reads")),
            ["4", "5", "1 again"]
        );
    }

    /// Lines numbered upwards are stored without looking their keys up;
    /// whatever the order, every re-sent key is still found: after a
    /// restart (where the keys come from the file), for a number below
    /// the highest stored, twice in one batch, and in the shared file.
    #[test]
    fn re_sent_lines_are_found_in_any_order_and_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = [1u8; 16];
        let b = [2u8; 16];
        let k = |i: [u8; 16], n: u64| msg(Some((i, n)), &n.to_string());
        let ok = |s: &dyn Store, lines: &[NewEntry]| -> Vec<Appended> {
            s.append(&lines.iter().collect::<Vec<_>>())
                .expect("appends")
        };
        {
            let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("opens");
            // Stored before the "crash": 1, 2, 3 of a; 5 of b.
            assert_eq!(
                ok(&s, &[k(a, 1), k(a, 2), k(a, 3), k(b, 5)]),
                [1, 2, 3, 4].map(Appended::New)
            );
        }
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("reopens");
        // a re-sends 2 and 3 after the restart, then goes on; b sends a
        // lower number it never sent, then re-sends 5.
        assert_eq!(
            ok(&s, &[k(a, 2), k(a, 3), k(a, 4), k(b, 4), k(b, 5)]),
            [
                Appended::Duplicate(2),
                Appended::Duplicate(3),
                Appended::New(5),
                Appended::New(6),
                Appended::Duplicate(4),
            ]
        );
        // Twice in one batch, above everything stored; then a number far
        // above, and one between.
        assert_eq!(
            ok(&s, &[k(a, 9), k(a, 9), k(a, 100), k(a, 50), k(a, 100)]),
            [
                Appended::New(7),
                Appended::Duplicate(7),
                Appended::New(8),
                Appended::New(9),
                Appended::Duplicate(8),
            ]
        );
        // The same in one room of the shared file, after reopening it.
        let rooms = dir.path().join("rooms");
        std::fs::create_dir(&rooms).expect("a folder");
        {
            let log = shared(&rooms, 100).open_room("#r").expect("a room");
            assert_eq!(ok(&*log, &[k(a, 1), k(a, 2)]), [1, 2].map(Appended::New));
        }
        let log = shared(&rooms, 100).open_room("#r").expect("the room again");
        assert_eq!(
            ok(&*log, &[k(a, 2), k(a, 3), k(a, 1)]),
            [
                Appended::Duplicate(2),
                Appended::New(3),
                Appended::Duplicate(1)
            ]
        );
    }

    /// Past its bound of instances, the record of which keys are surely
    /// new stops vouching for instances it has no number for; those it
    /// has keep theirs.
    #[test]
    fn the_key_maxima_are_bounded_and_then_vouch_for_less() {
        let mut km = KeyMax {
            max: HashMap::new(),
            complete: true,
        };
        let instance = |i: usize| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(i as u64).to_be_bytes());
            b
        };
        for i in 0..KEY_MAX_INSTANCES {
            km.stored(&(instance(i), 10));
        }
        assert!(km.surely_new(&(instance(KEY_MAX_INSTANCES), 1)));
        km.stored(&(instance(KEY_MAX_INSTANCES), 1));
        assert_eq!(km.max.len(), KEY_MAX_INSTANCES);
        assert!(!km.surely_new(&(instance(KEY_MAX_INSTANCES), 2)));
        assert!(!km.surely_new(&(instance(KEY_MAX_INSTANCES + 1), 1)));
        assert!(km.surely_new(&(instance(0), 11)));
        assert!(!km.surely_new(&(instance(0), 10)));
    }

    fn proof(n: u8) -> Box<Proof> {
        Box::new(Proof {
            instance: [n; 16],
            seq: u64::from(n),
            sent_ms: 1000 + u64::from(n),
            key: [n; 32],
            sig: vec![n; 64],
        })
    }

    #[test]
    fn signatures_are_stored_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        for s in stores(dir.path(), 100) {
            let signed = NewEntry {
                proof: Some(proof(7)),
                ..msg(Some(([7; 16], 7)), "signed")
            };
            s.append(&[&signed, &msg(None, "plain")]).expect("appends");
            let got = s.read(0, 2, 10).expect("reads");
            assert_eq!(got[0].proof, Some(proof(7)));
            assert_eq!(got[1].proof, None);
        }
        // And after reopening the file.
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::Full).expect("reopens");
        assert_eq!(s.read(0, 1, 10).expect("reads")[0].proof, Some(proof(7)));
    }

    /// A signed batch is stored in exactly the bytes it was before
    /// signatures were written as byte strings (serde's default for a
    /// slice, a sequence of `u8`), and within the size it was reserved:
    /// files written either way read the same, and no batch is copied
    /// again while it is encoded.
    #[test]
    fn a_signed_batch_keeps_its_bytes_and_fits_its_reservation() {
        #[derive(Serialize)]
        struct ProofAsSequence<'a> {
            instance: [u8; 16],
            seq: u64,
            sent_ms: u64,
            key: [u8; 32],
            sig: &'a [u8],
        }
        #[derive(Serialize)]
        struct RecordAsSequence<'a> {
            key: Option<Key>,
            from: &'a str,
            text: &'a str,
            time_ms: u64,
            action: bool,
            proof: Option<ProofAsSequence<'a>>,
        }
        // Every varint at its longest, and a signature of each length
        // class, to test the reservation at its bound.
        let proofs: Vec<Proof> = [0usize, 64, 200]
            .into_iter()
            .map(|n| Proof {
                instance: [9; 16],
                seq: u64::MAX,
                sent_ms: u64::MAX,
                key: [3; 32],
                sig: vec![0xff; n],
            })
            .collect();
        let text = "é".repeat(300);
        let mut records: Batch = proofs
            .iter()
            .map(|p| Record {
                key: Some(([1; 16], u64::MAX)),
                from: "someone",
                text: &text,
                time_ms: u64::MAX,
                action: true,
                proof: Some(StoredProof::of(p)),
            })
            .collect();
        records.push(Record {
            key: None,
            from: "",
            text: "",
            time_ms: 0,
            action: false,
            proof: None,
        });
        let bytes = encode_batch(&records).expect("encodes");
        let before: Vec<RecordAsSequence> = records
            .iter()
            .map(|r| RecordAsSequence {
                key: r.key,
                from: r.from,
                text: r.text,
                time_ms: r.time_ms,
                action: r.action,
                proof: r.proof.as_ref().map(|p| ProofAsSequence {
                    instance: p.instance,
                    seq: p.seq,
                    sent_ms: p.sent_ms,
                    key: p.key,
                    sig: p.sig,
                }),
            })
            .collect();
        let mut expected = vec![BATCH_V2];
        expected.extend(postcard::to_allocvec(&before).expect("encodes"));
        assert_eq!(bytes, expected);
        assert!(bytes.len() <= batch_size_bound(&records));
        let back = decode_batch(&bytes).expect("decodes");
        assert_eq!(back.len(), 4);
        assert_eq!(back[1].proof.as_ref().map(|p| p.sig), Some(&[0xff; 64][..]));
    }

    /// Batches written before records carried signatures (the first batch
    /// format) still read, and new signed batches go beside them.
    #[test]
    fn a_file_with_batches_from_before_signatures_reads_and_takes_signed_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RedbStore::FILE);
        let log_id = [8u8; 16];
        {
            let db = Database::create(&path).expect("creates");
            let tx = db.begin_write().expect("writes");
            {
                let mut batches = tx.open_table(BATCHES).expect("table");
                let mut keys = tx.open_table(KEYS).expect("table");
                let mut meta = tx.open_table(META).expect("table");
                let texts: Vec<String> = (1..=3).map(|i: u64| i.to_string()).collect();
                let recs: Vec<RecordV1> = texts
                    .iter()
                    .zip(1u64..)
                    .map(|(t, id)| RecordV1 {
                        key: Some(([6u8; 16], id)),
                        from: "a",
                        text: t,
                        time_ms: 1,
                        action: id == 2,
                    })
                    .collect();
                let bytes = postcard::to_allocvec(&recs).expect("encodes");
                batches.insert(1u64, bytes.as_slice()).expect("inserts");
                for id in 1..=3u64 {
                    keys.insert(key_bytes(&([6u8; 16], id)).as_slice(), id)
                        .expect("inserts");
                }
                meta.insert("log_id", log_id.as_slice()).expect("inserts");
                meta.insert("last_id", 3u64.to_be_bytes().as_slice())
                    .expect("inserts");
            }
            tx.commit().expect("commits");
        }
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("opens");
        assert_eq!((s.log_id(), s.last_id()), (log_id, 3));
        let old = s.read(0, 3, 10).expect("reads");
        assert_eq!(texts(&old), ["1", "2", "3"]);
        assert!(old[1].action && old.iter().all(|e| e.proof.is_none()));
        let signed = NewEntry {
            proof: Some(proof(4)),
            ..msg(Some(([6; 16], 4)), "4")
        };
        assert_eq!(
            s.append(&[&msg(Some(([6; 16], 2)), "2"), &signed])
                .expect("appends"),
            [Appended::Duplicate(2), Appended::New(4)]
        );
        drop(s);
        let s = RedbStore::open(dir.path(), 2, SyncPolicy::None).expect("reopens");
        // Retention reads the old batch's keys to drop them.
        s.append(&[&msg(None, "5")]).expect("appends");
        let got = s.read(0, 5, 10).expect("reads");
        assert_eq!(texts(&got), ["4", "5"]);
        assert_eq!(got[0].proof, Some(proof(4)));
        assert_eq!(
            s.append(&[&msg(Some(([6; 16], 1)), "1 again")])
                .expect("appends"),
            [Appended::New(6)]
        );
    }

    #[test]
    fn a_file_from_before_batches_is_moved_into_batches_and_reads_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RedbStore::FILE);
        let log_id = [9u8; 16];
        {
            let db = Database::create(&path).expect("creates");
            let tx = db.begin_write().expect("writes");
            {
                let mut msgs = tx.open_table(MESSAGES).expect("table");
                let mut keys = tx.open_table(KEYS).expect("table");
                let mut meta = tx.open_table(META).expect("table");
                for id in 1..=5u64 {
                    let k = ([5u8; 16], id);
                    let text = id.to_string();
                    let rec = RecordV1 {
                        key: Some(k),
                        from: "a",
                        text: &text,
                        time_ms: 1,
                        action: false,
                    };
                    let bytes = if id == 3 {
                        vec![0xff; 3]
                    } else {
                        postcard::to_allocvec(&rec).expect("encodes")
                    };
                    msgs.insert(id, bytes.as_slice()).expect("inserts");
                    keys.insert(key_bytes(&k).as_slice(), id).expect("inserts");
                }
                meta.insert("log_id", log_id.as_slice()).expect("inserts");
                meta.insert("last_id", 5u64.to_be_bytes().as_slice())
                    .expect("inserts");
            }
            tx.commit().expect("commits");
        }
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("opens");
        assert_eq!((s.log_id(), s.last_id()), (log_id, 5));
        // The unreadable message is left out; the others keep their ids.
        let got: Vec<(u64, String)> = s
            .read(0, 5, 10)
            .expect("reads")
            .into_iter()
            .map(|e| (e.id, e.text))
            .collect();
        assert_eq!(
            got,
            [
                (1, "1".into()),
                (2, "2".into()),
                (4, "4".into()),
                (5, "5".into())
            ]
        );
        assert_eq!(texts(&s.read(3, 5, 10).expect("reads")), ["4", "5"]);
        assert_eq!(
            s.append(&[&msg(Some(([5; 16], 2)), "2"), &msg(None, "six")])
                .expect("appends"),
            [Appended::Duplicate(2), Appended::New(6)]
        );
        drop(s);
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("reopens");
        assert_eq!(texts(&s.read(4, 6, 10).expect("reads")), ["5", "six"]);
    }

    /// Every key the runs of a log hold, each run spelt out, and how many
    /// runs there are.
    fn run_keys(db: &RwLock<Database>, n: &Names) -> (Vec<Key>, usize) {
        let db = db.read().expect("the lock");
        let tx = db.begin_read().expect("reads");
        let runs = tx.open_table(n.runs()).expect("the runs");
        let mut keys = Vec::new();
        let mut count = 0;
        for item in runs.iter().expect("iterates") {
            let (k, v) = item.expect("reads");
            let (instance, first) = key_of(k.value()).expect("a key");
            keys.extend((first..=v.value().0).map(|seq| (instance, seq)));
            count += 1;
        }
        keys.sort_unstable();
        (keys, count)
    }

    fn has_table(db: &RwLock<Database>, name: &str) -> bool {
        let db = db.read().expect("the lock");
        let tx = db.begin_read().expect("reads");
        let found = tx.list_tables().expect("lists").any(|t| t.name() == name);
        found
    }

    /// Ten clients' lines, between one another and one of them out of
    /// order, are one run per client in the file (one more for a client
    /// that skipped a number), not one entry per line; after reopening,
    /// each of them re-sent is found under its id, in any order.
    #[test]
    fn a_commit_stores_one_run_per_client_and_each_line_is_found_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |i: u8, seq: u64| ([i; 16], seq);
        let mut keys: Vec<Key> = (1..=100u64)
            .flat_map(|seq| (0..10u8).map(move |i| key(i, seq)))
            .filter(|&k| k != key(9, 50))
            .collect();
        keys.swap(0, 10);
        let lines: Vec<NewEntry> = keys
            .iter()
            .map(|&k| msg(Some(k), &format!("{k:?}")))
            .collect();
        {
            let s = RedbStore::open(dir.path(), 10_000, SyncPolicy::None).expect("opens");
            let got = s.append(&refs(&lines)).expect("appends");
            assert_eq!(got, (1..=999).map(Appended::New).collect::<Vec<_>>());
            let (stored, runs) = run_keys(&s.db, &Names::lobby());
            assert_eq!(runs, 11);
            let mut all = keys.clone();
            all.sort_unstable();
            assert_eq!(stored, all);
        }
        let s = RedbStore::open(dir.path(), 10_000, SyncPolicy::None).expect("reopens");
        let mut again: Vec<NewEntry> = lines.iter().rev().cloned().collect();
        again.insert(500, msg(Some(key(9, 50)), "late"));
        let got = s.append(&refs(&again)).expect("appends");
        let mut expected: Vec<Appended> = (1..=999).rev().map(Appended::Duplicate).collect();
        expected.insert(500, Appended::New(1000));
        assert_eq!(got, expected);
        assert_eq!(texts(&s.read(999, 1000, 10).expect("reads")), ["late"]);
    }

    /// A batch whose run is in the file but which does not decode any
    /// more: its keys are not found (its messages are not read either),
    /// the lines are stored again, and found again after that, also
    /// after reopening.
    #[test]
    fn a_key_whose_batch_is_unreadable_is_stored_again_and_then_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = |seq| msg(Some(([3; 16], seq)), &seq.to_string());
        {
            let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("opens");
            s.append(&refs(&(1..=5).map(a).collect::<Vec<_>>()))
                .expect("appends");
            s.append(&[&msg(Some(([4; 16], 1)), "b")]).expect("appends");
            let db = s.db.read().expect("the lock");
            let tx = db.begin_write().expect("writes");
            tx.open_table(BATCHES)
                .expect("table")
                .insert(1u64, [0xffu8; 3].as_slice())
                .expect("inserts");
            tx.commit().expect("commits");
        }
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("reopens");
        assert_eq!(
            s.append(&refs(&(3..=5).map(a).collect::<Vec<_>>()))
                .expect("appends"),
            [7, 8, 9].map(Appended::New)
        );
        drop(s);
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("reopens");
        assert_eq!(
            s.append(&[&a(4), &a(2), &msg(Some(([4; 16], 1)), "b")])
                .expect("appends"),
            [
                Appended::Duplicate(8),
                Appended::New(10),
                Appended::Duplicate(6)
            ]
        );
        let (stored, _) = run_keys(&s.db, &Names::lobby());
        let mut expected = vec![([3; 16], 2), ([3; 16], 3), ([3; 16], 4), ([3; 16], 5)];
        expected.push(([4; 16], 1));
        assert_eq!(stored, expected);
    }

    /// A room of the shared file written before runs (one key per
    /// message): opening it makes the runs from its batches, drops the
    /// old table, and its lines are still found when re-sent, also after
    /// reopening.
    #[test]
    fn a_rooms_file_with_a_key_per_message_keeps_its_dedupe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = Names::room("#r");
        let a = |seq: u64| ([7u8; 16], seq);
        {
            let db = Database::create(dir.path().join(SharedRedb::FILE)).expect("creates");
            let tx = db.begin_write().expect("writes");
            {
                let mut batches = tx.open_table(names.batches()).expect("table");
                let mut keys = tx.open_table(names.keys()).expect("table");
                let mut meta = tx.open_table(META).expect("table");
                let texts: Vec<String> = (1..=4).map(|i: u64| i.to_string()).collect();
                let recs: Batch = texts
                    .iter()
                    .zip(1u64..)
                    .map(|(t, id)| Record {
                        key: (id != 3).then_some(a(id)),
                        from: "a",
                        text: t,
                        time_ms: 1,
                        action: false,
                        proof: None,
                    })
                    .collect();
                let bytes = encode_batch(&recs).expect("encodes");
                batches.insert(1u64, bytes.as_slice()).expect("inserts");
                for id in [1u64, 2, 4] {
                    keys.insert(key_bytes(&a(id)).as_slice(), id)
                        .expect("inserts");
                }
                meta.insert("room:#r:log_id", [5u8; 16].as_slice())
                    .expect("inserts");
                meta.insert("room:#r:last_id", 4u64.to_be_bytes().as_slice())
                    .expect("inserts");
            }
            tx.commit().expect("commits");
        }
        {
            let file = shared(dir.path(), 100);
            let log = file.open_room("#r").expect("opens");
            assert_eq!((log.log_id(), log.last_id()), ([5; 16], 4));
            assert!(!has_table(&file.db, &names.keys));
            assert_eq!(
                run_keys(&file.db, &names),
                (vec![a(1), a(2), a(4)], 2),
                "one run for 1..=2, one for 4"
            );
            assert_eq!(
                log.append(&[&msg(Some(a(2)), "2"), &msg(Some(a(3)), "3")])
                    .expect("appends"),
                [Appended::Duplicate(2), Appended::New(5)]
            );
        }
        let file = shared(dir.path(), 100);
        let log = file.open_room("#r").expect("reopens");
        assert_eq!(
            log.append(&[
                &msg(Some(a(4)), "4"),
                &msg(Some(a(3)), "3"),
                &msg(Some(a(1)), "1")
            ])
            .expect("appends"),
            [4, 5, 1].map(Appended::Duplicate)
        );
    }

    /// A file a server from before runs has written to since a server
    /// with runs did: its runs are stale (retention removed their batch
    /// without them) and its newest key is only in the old table. Opening
    /// it makes the runs again from the batches.
    #[test]
    fn a_file_written_by_an_older_server_after_runs_gets_its_runs_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = |seq: u64| ([6u8; 16], seq);
        {
            let db = Database::create(dir.path().join(RedbStore::FILE)).expect("creates");
            let tx = db.begin_write().expect("writes");
            {
                let mut batches = tx.open_table(BATCHES).expect("table");
                let mut runs = tx.open_table(RUNS).expect("table");
                let mut keys = tx.open_table(KEYS).expect("table");
                let mut meta = tx.open_table(META).expect("table");
                let recs: Batch = vec![Record {
                    key: Some(a(4)),
                    from: "a",
                    text: "4",
                    time_ms: 1,
                    action: false,
                    proof: None,
                }];
                let bytes = encode_batch(&recs).expect("encodes");
                batches.insert(4u64, bytes.as_slice()).expect("inserts");
                // 1..=3 in batch 1, which retention removed.
                runs.insert(key_bytes(&a(1)).as_slice(), (3u64, 1u64))
                    .expect("inserts");
                keys.insert(key_bytes(&a(4)).as_slice(), 4u64)
                    .expect("inserts");
                meta.insert("log_id", [4u8; 16].as_slice())
                    .expect("inserts");
                meta.insert("last_id", 4u64.to_be_bytes().as_slice())
                    .expect("inserts");
                meta.insert("first_id", 4u64.to_be_bytes().as_slice())
                    .expect("inserts");
            }
            tx.commit().expect("commits");
        }
        let s = RedbStore::open(dir.path(), 100, SyncPolicy::None).expect("opens");
        assert!(!has_table(&s.db, KEYS.name()));
        assert_eq!(run_keys(&s.db, &Names::lobby()), (vec![a(4)], 1));
        assert_eq!(
            s.append(&[&msg(Some(a(4)), "4"), &msg(Some(a(2)), "2")])
                .expect("appends"),
            [Appended::Duplicate(4), Appended::New(5)]
        );
    }

    /// What the file store promises of its keys, message by message:
    /// a key of a message in the log (or earlier in the same batch) is a
    /// duplicate of it; then retention keeps the newest `keep`.
    struct Model {
        keep: usize,
        last: u64,
        live: VecDeque<(u64, Option<Key>)>,
    }

    impl Model {
        fn append(&mut self, batch: &[NewEntry]) -> Vec<Appended> {
            let mut out = Vec::new();
            for e in batch {
                let stored = self
                    .live
                    .iter()
                    .find(|(_, k)| k.is_some() && *k == e.key)
                    .map(|(id, _)| *id);
                if let Some(id) = stored {
                    out.push(Appended::Duplicate(id));
                    continue;
                }
                self.last += 1;
                self.live.push_back((self.last, e.key));
                out.push(Appended::New(self.last));
            }
            while self.live.len() > self.keep {
                self.live.pop_front();
            }
            out
        }

        fn keys(&self) -> Vec<Key> {
            let mut keys: Vec<Key> = self.live.iter().filter_map(|(_, k)| *k).collect();
            keys.sort_unstable();
            keys
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Lines of a few clients, re-sent, out of order and between one
        /// another, with retention cutting batches anywhere and the files
        /// reopened between commits: the lobby's file and a room of the
        /// shared file answer as the model does, and their runs hold
        /// exactly the keys of the messages in the log.
        #[test]
        fn dedupe_and_retention_hold_across_reopening(
            commits in proptest::collection::vec(
                (proptest::collection::vec((0u8..3, 0u64..24, proptest::bool::weighted(0.9)), 1..30),
                 proptest::bool::weighted(0.3)),
                1..16,
            ),
            keep in 1usize..50,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let open = || {
                let lobby = RedbStore::open(dir.path(), keep as u64, SyncPolicy::None).expect("opens");
                let rooms = shared(dir.path(), keep as u64);
                let room = rooms.open_room("#r").expect("opens");
                (lobby, rooms, room)
            };
            let (mut lobby, mut rooms, mut room) = open();
            let mut model = Model { keep, last: 0, live: VecDeque::new() };
            for (lines, reopen) in commits {
                if reopen {
                    drop((lobby, room, rooms));
                    (lobby, rooms, room) = open();
                }
                let batch: Vec<NewEntry> = lines
                    .iter()
                    .map(|&(i, seq, keyed)| msg(keyed.then_some(([i; 16], seq)), &seq.to_string()))
                    .collect();
                let expected = model.append(&batch);
                proptest::prop_assert_eq!(&lobby.append(&refs(&batch)).expect("appends"), &expected);
                proptest::prop_assert_eq!(&room.append(&refs(&batch)).expect("appends"), &expected);
                proptest::prop_assert_eq!(run_keys(&lobby.db, &Names::lobby()).0, model.keys());
                proptest::prop_assert_eq!(run_keys(&rooms.db, &room.names).0, model.keys());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// Batches of any size, any retention and any read: the file store
        /// answers exactly as the memory store, which keeps one message per
        /// entry.
        #[test]
        fn batched_storage_reads_like_one_message_per_id(
            sizes in proptest::collection::vec(1usize..12, 1..16),
            // At least a batch: the memory store applies retention message
            // by message, the file store once per batch, so a key re-sent
            // in the very batch that drops its original would differ.
            keep in 12u64..40,
            reads in proptest::collection::vec((0u64..150, 0u64..150, 1usize..50), 1..8),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = RedbStore::open(dir.path(), keep, SyncPolicy::None).expect("opens");
            let memory = MemoryStore::new(keep);
            let mut n = 0u64;
            for size in sizes {
                let batch: Vec<NewEntry> = (0..size)
                    .map(|i| {
                        n += 1;
                        // Every third message re-sends the one before.
                        let seq = if i % 3 == 2 { n - 1 } else { n };
                        msg(Some(([6; 16], seq)), &n.to_string())
                    })
                    .collect();
                let refs: Vec<&NewEntry> = batch.iter().collect();
                proptest::prop_assert_eq!(
                    file.append(&refs).expect("appends"),
                    memory.append(&refs).expect("appends")
                );
                proptest::prop_assert_eq!(file.len(), memory.len());
            }
            for (after, upto, max) in reads {
                proptest::prop_assert_eq!(
                    file.read(after, upto, max).expect("reads"),
                    memory.read(after, upto, max).expect("reads"),
                    "read({}, {}, {})", after, upto, max
                );
            }
        }
    }

    fn shared(dir: &Path, keep: u64) -> Arc<SharedRedb> {
        SharedRedb::open(dir, keep, None, SyncPolicy::None, 1 << 20).expect("opens")
    }

    fn refs(v: &[NewEntry]) -> Vec<&NewEntry> {
        v.iter().collect()
    }

    fn news(v: &[Appended]) -> Vec<u64> {
        v.iter()
            .map(|a| match a {
                Appended::New(id) | Appended::Duplicate(id) | Appended::Ordered(id) => *id,
            })
            .collect()
    }

    /// Two rooms' batches in one commit: each room numbers its own
    /// messages from its own last id, in the order given, and reads back
    /// only its own.
    #[test]
    fn two_rooms_in_one_commit_keep_their_own_ids_and_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = shared(dir.path(), 100);
        let a = file.open_room("#a").expect("opens");
        let b = file.open_room("#b").expect("opens");
        a.append(&[&msg(None, "a0")]).expect("appends");
        let (ma, mb): (Vec<NewEntry>, Vec<NewEntry>) = (
            (1..=3).map(|i| msg(None, &format!("a{i}"))).collect(),
            (1..=2).map(|i| msg(None, &format!("b{i}"))).collect(),
        );
        let got = file
            .append_all(&[(&b, &refs(&mb)), (&a, &refs(&ma))])
            .expect("commits");
        assert_eq!(news(&got[0]), [1, 2]);
        assert_eq!(news(&got[1]), [2, 3, 4]);
        assert_eq!(
            texts(&a.read(0, 10, 10).expect("reads")),
            ["a0", "a1", "a2", "a3"]
        );
        assert_eq!(texts(&b.read(0, 10, 10).expect("reads")), ["b1", "b2"]);
        assert_ne!(a.log_id(), b.log_id());
        // Through the writer's entry point, which groups by file.
        let (one, two) = (msg(None, "a4"), msg(None, "b3"));
        let parts: Vec<(&dyn Store, Vec<&NewEntry>)> =
            vec![(&*a, vec![&one]), (&*b, vec![&two]), (&*b, vec![])];
        let got = append_together(&parts);
        assert!(matches!(&got[0], Some(Ok(v)) if news(v) == [5]), "{got:?}");
        assert!(matches!(&got[1], Some(Ok(v)) if news(v) == [3]), "{got:?}");
        assert!(got[2].is_none(), "an empty part stores nothing");
    }

    /// One room's part cannot be stored (its table is not a log's): the
    /// commit fails, and with it the other room's part, which is not
    /// stored either.
    #[test]
    fn a_failed_commit_fails_every_rooms_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = shared(dir.path(), 100);
        let a = file.open_room("#a").expect("opens");
        let b = file.open_room("#b").expect("opens");
        {
            let db = file.db.read().expect("the lock");
            let tx = db.begin_write().expect("writes");
            tx.delete_table(b.names.batches()).expect("deletes");
            let wrong: TableDefinition<u64, u64> = TableDefinition::new(&b.names.batches);
            tx.open_table(wrong).expect("creates");
            tx.commit().expect("commits");
        }
        let (ma, mb) = (msg(Some(([1; 16], 1)), "a"), msg(None, "b"));
        let parts: Vec<(&dyn Store, Vec<&NewEntry>)> = vec![(&*a, vec![&ma]), (&*b, vec![&mb])];
        let got = append_together(&parts);
        assert!(
            got.iter().all(|r| matches!(r, Some(Err(_)))),
            "{:?}",
            got.iter()
                .map(|r| r.as_ref().map(|r| r.is_ok()))
                .collect::<Vec<_>>()
        );
        assert_eq!((a.last_id(), a.len()), (0, 0));
        assert!(a.read(0, 10, 10).expect("reads").is_empty());
        // Its key was not kept either: the message is new when sent again.
        let c = file.open_room("#c").expect("opens");
        let got = file
            .append_all(&[(&a, &[&ma][..]), (&c, &[&mb][..])])
            .expect("commits");
        assert_eq!(got, [vec![Appended::New(1)], vec![Appended::New(1)]]);
        // A log of another file is refused before anything is stored.
        let other = shared(tempfile::tempdir().expect("tempdir").path(), 100);
        let stranger = other.open_room("#a").expect("opens");
        assert!(file
            .append_all(&[(&a, &[&ma][..]), (&stranger, &[&mb][..])])
            .is_err());
        assert_eq!(a.last_id(), 1);
    }

    /// Retention and dedupe are per room: one room's traffic never drops
    /// another's messages, and the same key is new in each room.
    #[test]
    fn retention_and_dedupe_are_per_room_in_the_shared_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = shared(dir.path(), 3);
        let a = file.open_room("#a").expect("opens");
        let b = file.open_room("#b").expect("opens");
        let key = |i| Some(([9; 16], i));
        b.append(&[&msg(key(1), "b1"), &msg(key(2), "b2")])
            .expect("appends");
        for i in 1..=5 {
            let m = msg(key(i), &format!("a{i}"));
            let got = file
                .append_all(&[(&a, &[&m][..]), (&b, &[][..])])
                .expect("commits");
            assert_eq!(got[0], [Appended::New(i)], "new in #a, though #b has it");
        }
        assert_eq!(
            texts(&a.read(0, 10, 10).expect("reads")),
            ["a3", "a4", "a5"]
        );
        assert_eq!(texts(&b.read(0, 10, 10).expect("reads")), ["b1", "b2"]);
        assert_eq!(
            a.append(&[&msg(key(1), "a1 again"), &msg(key(4), "a4 again")])
                .expect("appends"),
            [Appended::New(6), Appended::Duplicate(4)]
        );
        assert_eq!(
            b.append(&[&msg(key(1), "b1 again")]).expect("appends"),
            [Appended::Duplicate(1)]
        );
    }

    /// Reopening the file: every room keeps its log id, its last id and
    /// its messages; a room opened for the first time is empty.
    #[test]
    fn reopening_keeps_each_rooms_log_id_and_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = {
            let file = shared(dir.path(), 2);
            let a = file.open_room("#a").expect("opens");
            let b = file.open_room("#b").expect("opens");
            let ma: Vec<NewEntry> = (1..=3).map(|i| msg(None, &format!("a{i}"))).collect();
            let mb = [msg(None, "b1")];
            file.append_all(&[(&a, &refs(&ma)), (&b, &refs(&mb))])
                .expect("commits");
            [(a.log_id(), a.last_id()), (b.log_id(), b.last_id())]
        };
        let file =
            SharedRedb::open(dir.path(), 2, None, SyncPolicy::Full, 1 << 20).expect("reopens");
        let a = file.open_room("#a").expect("opens");
        let b = file.open_room("#b").expect("opens");
        assert_eq!(
            [(a.log_id(), a.last_id()), (b.log_id(), b.last_id())],
            before
        );
        assert_eq!(before[0].1, 3);
        assert_eq!(texts(&a.read(0, 3, 10).expect("reads")), ["a2", "a3"]);
        assert_eq!(texts(&b.read(0, 1, 10).expect("reads")), ["b1"]);
        assert_eq!(
            a.append(&[&msg(None, "a4")]).expect("appends"),
            [Appended::New(4)]
        );
        let c = file.open_room("#c").expect("opens");
        assert_eq!((c.last_id(), c.len()), (0, 0));
        assert!(![a.log_id(), b.log_id()].contains(&c.log_id()));
    }

    #[test]
    fn a_corrupt_rooms_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SharedRedb::FILE);
        std::fs::write(&path, vec![0x5au8; 8192]).expect("writes");
        let err = match SharedRedb::open(dir.path(), 10, None, SyncPolicy::Full, 1 << 20) {
            Err(e) => e,
            Ok(_) => panic!("a corrupt file must not open"),
        };
        assert!(err.to_string().contains("rooms.redb"), "{err}");
    }

    #[test]
    fn many_deletions_compact_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(dir.path(), 10, SyncPolicy::None).expect("opens");
        let batch: Vec<_> = (0..1000)
            .map(|i| msg(None, &"x".repeat(100 + i % 7)))
            .collect();
        for _ in 0..(COMPACT_EVERY / 1000 + 2) {
            s.append(&batch.iter().collect::<Vec<_>>())
                .expect("appends");
        }
        assert_eq!(s.len(), 10);
        let size = std::fs::metadata(s.path()).expect("metadata").len();
        assert!(size < 4 * 1024 * 1024, "{size} bytes for 10 messages");
    }
}
