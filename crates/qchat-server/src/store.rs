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
use std::sync::{Mutex, RwLock};

use redb::{Database, Durability, ReadableTable, TableDefinition};
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
}

/// What became of one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this new id.
    New(u64),
    /// Its key was already stored, under this id: nothing new was written.
    Duplicate(u64),
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
    /// Messages stored now.
    fn len(&self) -> u64;
    /// Whether nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One stored message as the embedded store encodes it. The key travels
/// with the message so that retention can drop both together: the dedupe
/// table is never larger than the log.
#[derive(Serialize, Deserialize)]
struct Record {
    key: Option<Key>,
    from: String,
    text: String,
    time_ms: u64,
    action: bool,
}

/// [`Record`] borrowed, for writing without copying the strings.
#[derive(Serialize)]
struct RecordRef<'a> {
    key: Option<Key>,
    from: &'a str,
    text: &'a str,
    time_ms: u64,
    action: bool,
}

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("keys");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Deletions between two compactions of the file.
const COMPACT_EVERY: u64 = 10_000;

fn key_bytes(k: &Key) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&k.0);
    b[16..].copy_from_slice(&k.1.to_be_bytes());
    b
}

/// Messages received before this time (ms since the Unix epoch) are older
/// than `max_age`.
fn cutoff_ms(max_age: std::time::Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(max_age.as_millis() as u64)
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
    /// Oldest and newest stored ids; `first > last` when empty.
    first: u64,
    last: u64,
    deleted_since_compact: u64,
}

impl RedbStore {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "room.redb";

    /// Opens (or creates) the log in `dir`, keeping at most `keep` messages.
    /// A file that cannot be read is an error naming it, never replaced.
    pub fn open(dir: &Path, keep: u64, sync: SyncPolicy) -> Result<Self, StoreError> {
        let path = dir.join(Self::FILE);
        let open_err = |detail: String| StoreError::Open {
            path: path.clone(),
            detail,
        };
        let db = Database::create(&path).map_err(|e| open_err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        let (log_id, first, last) = {
            let mut meta = tx.open_table(META).map_err(|e| open_err(e.to_string()))?;
            let msgs = tx
                .open_table(MESSAGES)
                .map_err(|e| open_err(e.to_string()))?;
            tx.open_table(KEYS).map_err(|e| open_err(e.to_string()))?;
            let existing = meta
                .get("log_id")
                .map_err(|e| open_err(e.to_string()))?
                .map(|v| v.value().to_vec());
            let log_id = match existing {
                Some(v) => <[u8; 16]>::try_from(v.as_slice())
                    .map_err(|_| open_err("the log id is damaged".into()))?,
                None => {
                    let mut id = [0u8; 16];
                    getrandom::fill(&mut id).map_err(|e| open_err(e.to_string()))?;
                    meta.insert("log_id", id.as_slice())
                        .map_err(|e| open_err(e.to_string()))?;
                    id
                }
            };
            // The newest id is kept apart from the messages: retention may
            // delete every message, and ids must still never go back.
            let last_meta = meta
                .get("last_id")
                .map_err(|e| open_err(e.to_string()))?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let first = msgs
                .first()
                .map_err(|e| open_err(e.to_string()))?
                .map(|(k, _)| k.value());
            let last_msg = msgs
                .last()
                .map_err(|e| open_err(e.to_string()))?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            let last = last_meta.max(last_msg);
            (log_id, first.unwrap_or(last + 1), last)
        };
        tx.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(RedbStore {
            db: RwLock::new(db),
            path,
            log_id,
            state: Mutex::new(Counters {
                first,
                last,
                deleted_since_compact: 0,
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
        let (first, mut last) = {
            let c = self.counters();
            (c.first, c.last)
        };
        let mut out = Vec::with_capacity(batch.len());
        // An empty log has `first == last + 1`: the first new id.
        let mut new_first = first;
        let deleted;
        {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            let mut tx = db.begin_write().map_err(io)?;
            tx.set_durability(match self.sync {
                SyncPolicy::Full => Durability::Immediate,
                SyncPolicy::None => Durability::Eventual,
            });
            {
                let mut msgs = tx.open_table(MESSAGES).map_err(io)?;
                let mut keys = tx.open_table(KEYS).map_err(io)?;
                let mut meta = tx.open_table(META).map_err(io)?;
                for e in batch {
                    if let Some(k) = &e.key {
                        let kb = key_bytes(k);
                        if let Some(id) = keys.get(kb.as_slice()).map_err(io)? {
                            out.push(Appended::Duplicate(id.value()));
                            continue;
                        }
                    }
                    last += 1;
                    let rec = RecordRef {
                        key: e.key,
                        from: &e.from,
                        text: &e.text,
                        time_ms: e.time_ms,
                        action: e.action,
                    };
                    let bytes = postcard::to_allocvec(&rec).map_err(io)?;
                    msgs.insert(last, bytes.as_slice()).map_err(io)?;
                    if let Some(k) = &e.key {
                        keys.insert(key_bytes(k).as_slice(), last).map_err(io)?;
                    }
                    out.push(Appended::New(last));
                }
                meta.insert("last_id", last.to_be_bytes().as_slice())
                    .map_err(io)?;
                // Retention: the oldest go, with their keys.
                let len = (last + 1).saturating_sub(new_first);
                let excess = len.saturating_sub(self.keep);
                for id in new_first..new_first + excess {
                    if let Some(v) = msgs.remove(id).map_err(io)? {
                        if let Ok(rec) = postcard::from_bytes::<Record>(v.value()) {
                            if let Some(k) = rec.key {
                                keys.remove(key_bytes(&k).as_slice()).map_err(io)?;
                            }
                        }
                    }
                }
                new_first += excess;
                let mut aged = 0;
                if let Some(cutoff) = self.max_age.map(cutoff_ms) {
                    while new_first <= last {
                        let old = match msgs.get(new_first).map_err(io)? {
                            Some(v) => postcard::from_bytes::<Record>(v.value()).ok(),
                            None => None,
                        };
                        match old {
                            Some(rec) if rec.time_ms >= cutoff => break,
                            Some(rec) => {
                                if let Some(k) = rec.key {
                                    keys.remove(key_bytes(&k).as_slice()).map_err(io)?;
                                }
                            }
                            // Unreadable: its age is unknown; it goes with
                            // its neighbours rather than block retention.
                            None => {}
                        }
                        msgs.remove(new_first).map_err(io)?;
                        new_first += 1;
                        aged += 1;
                    }
                }
                deleted = excess + aged;
            }
            tx.commit().map_err(io)?;
        }
        let compact = {
            let mut c = self.counters();
            c.first = new_first;
            c.last = last;
            c.deleted_since_compact += deleted;
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
        if upto <= after || max == 0 {
            return Ok(Vec::new());
        }
        let from = after
            .saturating_add(1)
            .max(upto.saturating_sub(max as u64 - 1));
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        let tx = db.begin_read().map_err(io)?;
        let msgs = tx.open_table(MESSAGES).map_err(io)?;
        let mut out = Vec::new();
        for item in msgs.range(from..=upto).map_err(io)? {
            let (k, v) = item.map_err(io)?;
            // A record that does not decode is skipped, not fatal: one bad
            // message must not stop everyone's replay.
            match postcard::from_bytes::<Record>(v.value()) {
                Ok(r) => out.push(Entry {
                    id: k.value(),
                    from: r.from,
                    text: r.text,
                    time_ms: r.time_ms,
                    action: r.action,
                }),
                Err(e) => tracing::warn!(id = k.value(), "room log: unreadable message: {e}"),
            }
        }
        Ok(out)
    }
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
