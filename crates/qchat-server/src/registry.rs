//! Names belong to keys: the first key to use a name claims it, and the
//! server remembers the claim.
//!
//! A claim binds a name — by its same-name key, [`qchat_proto::names::fold`],
//! so `ALICE` and `ａｌｉｃｅ` are alice's too — to the fingerprint of the
//! key that used it first. Another key using the name is refused, at the
//! hello and at `/nick`; a client without a key (a guest) may use only names
//! nobody has claimed. A key holds one name at a time: using a free name
//! moves its claim there and frees the old one (the reverse index, key to
//! name, is what says which). A claim not used for the name expiry is
//! treated as gone, and the next key to use the name claims it.
//!
//! A name may have several keys, one per device, up to
//! [`MAX_KEYS_PER_NAME`]: a device of the name asks for a one-time link
//! code (`/device link`), and a new device that joins the name with it
//! adds its key; `/device remove` takes a key away again. The reverse
//! index still gives each key at most one name. Link codes live in memory
//! only, by the SHA-256 of the code, never the code itself: a restart
//! voids them, which costs only asking again, and nothing on disk or in a
//! memory dump lets anyone link.
//!
//! Claims live in memory, in a map each way, and — unless the server runs
//! with `--store memory` — in `names.redb` beside the room log: a file of
//! its own, because the log's file is about messages and may be wiped or
//! replaced (a new log id) without anyone losing their name. Every change
//! is committed before it is acted on. The reverse index is rebuilt from
//! the claims when the file is opened, so the two cannot disagree on disk.

use qchat_proto::clock::now_ms;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qchat_proto::limits::{
    LINK_CODES_PER_NAME, LINK_CODE_ALPHABET as CODE_ALPHABET, LINK_CODE_LETTERS as CODE_CHARS,
    LINK_TTL, MAX_KEYS_PER_NAME,
};
use qchat_proto::names;
use qchat_tls::Fingerprint;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::moderation::Moderation;

/// Same-name key → claim (postcard).
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");

/// A name bound to its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The name as its first key first used it.
    pub name: String,
    /// Its keys, oldest first; never empty, at most [`MAX_KEYS_PER_NAME`].
    pub keys: Vec<Device>,
    /// When the name was claimed, ms since the Unix epoch.
    pub since_ms: u64,
    /// When any of its keys last used it (joined or left under it).
    pub last_ms: u64,
}

/// One key of a name: a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The key's fingerprint (SHA-256 of its SubjectPublicKeyInfo).
    pub key: [u8; 32],
    /// When it was added to the name, ms since the Unix epoch.
    pub added_ms: u64,
    /// When it last joined or left under the name.
    pub last_ms: u64,
}

impl Claim {
    /// Whether `key` is one of the name's keys.
    pub fn has(&self, key: &[u8; 32]) -> bool {
        self.keys.iter().any(|d| &d.key == key)
    }

    fn live(&self, now_ms: u64, expiry: Duration) -> bool {
        now_ms.saturating_sub(self.last_ms) <= u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX)
    }

    fn used_by(&mut self, key: &[u8; 32], now: u64) {
        self.last_ms = self.last_ms.max(now);
        if let Some(d) = self.keys.iter_mut().find(|d| &d.key == key) {
            d.last_ms = d.last_ms.max(now);
        }
    }

    fn without(&self, key: &[u8; 32]) -> Option<Claim> {
        let keys: Vec<Device> = self
            .keys
            .iter()
            .filter(|d| &d.key != key)
            .cloned()
            .collect();
        (!keys.is_empty()).then(|| Claim {
            keys,
            ..self.clone()
        })
    }
}

/// Why a name could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// One sentence for the user, naming the rule that made the names the
    /// same.
    pub detail: String,
}

impl Refusal {
    fn new(detail: impl Into<String>) -> Self {
        Refusal {
            detail: detail.into(),
        }
    }
}

/// What a successful claim or link changed, so that it can be taken back
/// if the join or rename it was for fails after all.
#[derive(Debug)]
#[must_use = "a claim for a join that fails must be undone"]
pub enum Claimed {
    /// The key already held the name; only its use was recorded.
    Kept,
    /// The key claimed the name now, moving from another or linking to it.
    New {
        /// Every row written, as it was before (`None`: absent).
        before: Vec<(String, Option<Claim>)>,
        /// The link code used, made usable again by an undo.
        code: Option<[u8; 32]>,
    },
}

/// Why the registry's file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be opened, read or written.
    #[error("the name registry {}: {detail}; check the data folder, or move the file aside to start with no names registered", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The cluster's bucket could not be read or written.
    #[error("the name registry in the cluster: {0}")]
    Cluster(String),
    /// Another node changed the name's claim since this node last saw it;
    /// the claim is read again, and the change may be tried again.
    #[error("the claim on a name changed on another node meanwhile")]
    Conflict,
}

/// A link code, known by its hash.
struct Code {
    /// The same-name key it was made for.
    fold: String,
    expires_ms: u64,
    used: bool,
}

#[derive(Default)]
pub(crate) struct Maps {
    by_name: HashMap<String, Claim>,
    /// The reverse index: each key holds at most one name.
    by_key: HashMap<[u8; 32], String>,
    /// Link codes by the SHA-256 of their normal form. Used and expired
    /// ones stay a while (a lifetime past their end) so that a refusal
    /// can say "used" or "expired" rather than "wrong".
    codes: HashMap<[u8; 32], Code>,
    /// In a cluster: the bucket's revision of each claim this node last
    /// saw or wrote, which its next write must replace (and older news
    /// from the watch must not undo).
    revs: HashMap<String, u64>,
}

/// The registered names.
pub struct Registry {
    maps: Arc<Mutex<Maps>>,
    db: Option<(Arc<Database>, PathBuf)>,
    /// In a cluster: the bucket every node's claims are in.
    kv: Option<Arc<crate::cluster::names::Bucket>>,
    /// In a cluster: the names in use on every node.
    online: Option<Arc<crate::cluster::names::Online>>,
    /// Operators and bans, by key, in the same file.
    moderation: Moderation,
}

impl Registry {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "names.redb";

    /// Claims kept in memory only (`--store memory`, tests).
    pub fn memory() -> Self {
        Registry {
            maps: Arc::new(Mutex::new(Maps::default())),
            db: None,
            kv: None,
            online: None,
            moderation: Moderation::memory(),
        }
    }

    /// Opens (or creates) the registry file in `dir` and loads every claim.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join(Self::FILE);
        let err = |detail: String| RegistryError::File {
            path: path.clone(),
            detail,
        };
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        let mut maps = Maps::default();
        {
            let table = tx.open_table(CLAIMS).map_err(|e| err(e.to_string()))?;
            for row in table.iter().map_err(|e| err(e.to_string()))? {
                let (fold, claim) = row.map_err(|e| err(e.to_string()))?;
                let claim: Claim = postcard::from_bytes(claim.value())
                    .map_err(|e| err(format!("a damaged claim: {e}")))?;
                for d in &claim.keys {
                    maps.by_key.insert(d.key, fold.value().to_string());
                }
                maps.by_name.insert(fold.value().to_string(), claim);
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        let db = Arc::new(db);
        let moderation = Moderation::open(Arc::clone(&db), path.clone())?;
        Ok(Registry {
            maps: Arc::new(Mutex::new(maps)),
            db: Some((db, path)),
            kv: None,
            online: None,
            moderation,
        })
    }

    /// The registry of a cluster's node: claims, operators and key bans
    /// in the bucket [`NAMES_BUCKET`](crate::cluster::names::NAMES_BUCKET),
    /// which every node reads and writes, and the names in use on every
    /// node (entries living `online_ttl` unless rewritten). Returns once
    /// everything already in the bucket is loaded; a watch keeps the
    /// node's copy up to date after that.
    pub async fn clustered(
        cluster: Arc<crate::cluster::Cluster>,
        online_ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let cl = |e: crate::cluster::ClusterError| RegistryError::Cluster(e.to_string());
        let online = crate::cluster::names::Online::start(Arc::clone(&cluster), online_ttl)
            .await
            .map_err(cl)?;
        let bucket = crate::cluster::names::Bucket::open(&cluster)
            .await
            .map_err(cl)?;
        let moderation = Moderation::clustered(Arc::clone(&bucket));
        let maps = Arc::new(Mutex::new(Maps::default()));
        follow(&bucket, Arc::downgrade(&maps), moderation.remote())
            .await
            .map_err(cl)?;
        Ok(Registry {
            maps,
            db: None,
            kv: Some(bucket),
            online: Some(online),
            moderation,
        })
    }

    /// In a cluster, the names in use on every node.
    pub fn online(&self) -> Option<&Arc<crate::cluster::names::Online>> {
        self.online.as_ref()
    }

    /// Operators granted in chat and bans, kept beside the claims.
    pub fn moderation(&self) -> &Moderation {
        &self.moderation
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // The maps are only changed after the file was, in a few lines that
        // cannot panic halfway; a poisoned lock still holds whole maps.
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live claim on `name` (by its same-name key), if any.
    pub fn lookup(&self, name: &str, expiry: Duration) -> Option<Claim> {
        let now = now_ms();
        self.lock()
            .by_name
            .get(&names::fold(name))
            .filter(|c| c.live(now, expiry))
            .cloned()
    }

    /// The live claim `key` belongs to, if any.
    pub fn claim_of(&self, key: Fingerprint, expiry: Duration) -> Option<Claim> {
        let now = now_ms();
        let maps = self.lock();
        let fold = maps.by_key.get(key.as_bytes())?;
        maps.by_name
            .get(fold)
            .filter(|c| c.live(now, expiry) && c.has(key.as_bytes()))
            .cloned()
    }

    /// Whether a guest (no key) may use `name`: only if nobody holds it.
    pub fn check_guest(&self, name: &str, expiry: Duration) -> Result<(), Refusal> {
        match self.lookup(name, expiry) {
            Some(claim) => Err(Refusal::new(format!(
                "{}, and you connected without a key (as a guest); choose a name nobody has registered",
                registered(name, &claim.name)
            ))),
            None => Ok(()),
        }
    }

    /// Claims `name` for `key`, unless another key holds it. A key that
    /// held another name moves its claim here.
    pub fn claim(
        &self,
        name: &str,
        key: Fingerprint,
        expiry: Duration,
    ) -> Result<Claimed, Refusal> {
        self.claim_at(name, key, expiry, now_ms())
    }

    fn claim_at(
        &self,
        name: &str,
        key: Fingerprint,
        expiry: Duration,
        now: u64,
    ) -> Result<Claimed, Refusal> {
        // Another node's change met on writing is read in by the failed
        // write; the claim is then judged again on what is there now.
        retry(|| self.claim_once(name, key, expiry, now))
    }

    fn claim_once(
        &self,
        name: &str,
        key: Fingerprint,
        expiry: Duration,
        now: u64,
    ) -> Result<Claimed, Retry> {
        let fold = names::fold(name);
        let key = *key.as_bytes();
        let maps = self.lock();
        match maps.by_name.get(&fold) {
            Some(c) if c.has(&key) => {
                let mut kept = c.clone();
                kept.used_by(&key, now);
                self.apply(maps, vec![(fold, Some(kept))]).1?;
                return Ok(Claimed::Kept);
            }
            Some(c) if c.live(now, expiry) => {
                return Err(Retry::No(Refusal::new(format!(
                    "{}; choose another name",
                    registered(name, &c.name)
                ))));
            }
            _ => {}
        }
        let claim = Claim {
            name: name.to_string(),
            keys: vec![Device {
                key,
                added_ms: now,
                last_ms: now,
            }],
            since_ms: now,
            last_ms: now,
        };
        let mut rows = vec![(fold.clone(), Some(claim))];
        // The key leaves its previous name; a name left with no key is free.
        if let Some(old) = maps.by_key.get(&key).filter(|old| **old != fold) {
            if let Some(c) = maps.by_name.get(old) {
                rows.push((old.clone(), c.without(&key)));
            }
        }
        let written = self.apply(maps, rows).1;
        Ok(Claimed::New {
            before: written?,
            code: None,
        })
    }

    /// A new link code for the name `key` holds: `(code, expires_ms)`.
    pub fn new_link_code(
        &self,
        key: Fingerprint,
        expiry: Duration,
        ttl: Duration,
    ) -> Result<(String, u64), Refusal> {
        self.new_link_code_at(key, expiry, ttl, now_ms())
    }

    fn new_link_code_at(
        &self,
        key: Fingerprint,
        expiry: Duration,
        ttl: Duration,
        now: u64,
    ) -> Result<(String, u64), Refusal> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut maps = self.lock();
        let claim = maps
            .by_key
            .get(key.as_bytes())
            .and_then(|fold| maps.by_name.get(fold))
            .filter(|c| c.live(now, expiry) && c.has(key.as_bytes()))
            .ok_or_else(|| Refusal::new("this device's key holds no registered name"))?;
        let fold = names::fold(&claim.name);
        if claim.keys.len() >= MAX_KEYS_PER_NAME {
            return Err(Refusal::new(format!(
                "{} already has {MAX_KEYS_PER_NAME} keys, the most a name may have; remove one first (/device remove)",
                claim.name
            )));
        }
        let name = claim.name.clone();
        // Used and expired codes stay for a while to explain a refusal.
        let keep_ms = ttl_ms.max(u64::try_from(LINK_TTL.as_millis()).unwrap_or(u64::MAX));
        maps.codes
            .retain(|_, c| c.expires_ms.saturating_add(keep_ms) > now);
        let live = maps
            .codes
            .values()
            .filter(|c| c.fold == fold && !c.used && c.expires_ms > now)
            .count();
        if live >= LINK_CODES_PER_NAME {
            return Err(Refusal::new(format!(
                "{name} already has {LINK_CODES_PER_NAME} link codes waiting to be used; use one, or wait until one expires"
            )));
        }
        let code = fresh_code().map_err(|e| {
            tracing::warn!("no randomness for a link code: {e}");
            Refusal::new("the server cannot make a link code right now; try again later")
        })?;
        let expires_ms = now.saturating_add(ttl_ms);
        maps.codes.insert(
            code_hash(&code),
            Code {
                fold,
                expires_ms,
                used: false,
            },
        );
        Ok((code, expires_ms))
    }

    /// Adds `key` to `name` with a link code made on one of its devices.
    /// A wrong, used or expired code, or one made for another name, is
    /// refused and changes nothing.
    pub fn link(
        &self,
        name: &str,
        code: &str,
        key: Fingerprint,
        expiry: Duration,
    ) -> Result<Claimed, Refusal> {
        self.link_at(name, code, key, expiry, now_ms())
    }

    fn link_at(
        &self,
        name: &str,
        code: &str,
        key: Fingerprint,
        expiry: Duration,
        now: u64,
    ) -> Result<Claimed, Refusal> {
        retry(|| self.link_once(name, code, key, expiry, now))
    }

    fn link_once(
        &self,
        name: &str,
        code: &str,
        key: Fingerprint,
        expiry: Duration,
        now: u64,
    ) -> Result<Claimed, Retry> {
        let fold = names::fold(name);
        let hash = code_hash(code);
        let key = *key.as_bytes();
        let maps = self.lock();
        match maps.codes.get(&hash) {
            None => {
                return Err(Retry::No(Refusal::new(
                    "the link code is wrong: no such code (check it, or make a new one with /device link)",
                )))
            }
            Some(c) if c.used => {
                return Err(Retry::No(Refusal::new(
                    "the link code was already used; a code links one device (make a new one with /device link)",
                )))
            }
            Some(c) if c.expires_ms <= now => {
                return Err(Retry::No(Refusal::new(
                    "the link code has expired (make a new one with /device link)",
                )))
            }
            Some(c) if c.fold != fold => {
                return Err(Retry::No(Refusal::new(format!(
                    "the link code was made for another name than {name:?}"
                ))))
            }
            Some(_) => {}
        }
        let Some(claim) = maps.by_name.get(&fold).filter(|c| c.live(now, expiry)) else {
            return Err(Retry::No(Refusal::new(format!(
                "the name {name:?} is no longer registered; connect without --link to claim it"
            ))));
        };
        let mut claim = claim.clone();
        let mut rows = Vec::new();
        if !claim.has(&key) {
            // One key, one name: linking never takes a key from a name that
            // still counts on it.
            if let Some(old) = maps.by_key.get(&key).and_then(|f| maps.by_name.get(f)) {
                if old.live(now, expiry) {
                    return Err(Retry::No(Refusal::new(format!(
                        "this device's key already holds the name {:?}, and a key belongs to one name; \
                         remove it there first (/device remove), or link from a device with a key of its own",
                        old.name
                    ))));
                }
                rows.push((names::fold(&old.name), old.without(&key)));
            }
            if claim.keys.len() >= MAX_KEYS_PER_NAME {
                return Err(Retry::No(Refusal::new(format!(
                    "{} already has {MAX_KEYS_PER_NAME} keys, the most a name may have; remove one first (/device remove)",
                    claim.name
                ))));
            }
            claim.keys.push(Device {
                key,
                added_ms: now,
                last_ms: now,
            });
        }
        claim.used_by(&key, now);
        rows.insert(0, (fold, Some(claim)));
        let (mut maps, written) = self.apply(maps, rows);
        let before = written?;
        if let Some(c) = maps.codes.get_mut(&hash) {
            c.used = true;
        }
        Ok(Claimed::New {
            before,
            code: Some(hash),
        })
    }

    /// Removes `target` from the name `asker` holds; returns what is left.
    /// The last key is refused: a name is released by not using it for the
    /// name expiry, never by a slip of the finger.
    pub fn remove_key(
        &self,
        asker: Fingerprint,
        target: Fingerprint,
        expiry: Duration,
    ) -> Result<Claim, Refusal> {
        let now = now_ms();
        let maps = self.lock();
        let Some((fold, claim)) = maps
            .by_key
            .get(asker.as_bytes())
            .and_then(|f| maps.by_name.get(f).map(|c| (f.clone(), c)))
            .filter(|(_, c)| c.live(now, expiry) && c.has(asker.as_bytes()))
        else {
            return Err(Refusal::new("this device's key holds no registered name"));
        };
        if !claim.has(target.as_bytes()) {
            return Err(Refusal::new(format!(
                "{target} is not one of {}'s keys (see /device list)",
                claim.name
            )));
        }
        let Some(left) = claim.without(target.as_bytes()) else {
            return Err(Refusal::new(format!(
                "{target} is the only key of {}; a name keeps at least one key (it is released \
                 when none of its keys has used it for the name expiry)",
                claim.name
            )));
        };
        self.apply(maps, vec![(fold, Some(left.clone()))])
            .1
            .map_err(unavailable)?;
        Ok(left)
    }

    /// Takes back a claim or link whose join or rename did not happen.
    pub fn undo(&self, claimed: Claimed) {
        let Claimed::New { before, code } = claimed else {
            return;
        };
        let rows = before.into_iter().rev().collect();
        let (mut maps, written) = self.apply(self.lock(), rows);
        if let Err(e) = written {
            tracing::warn!("cannot take back a name claim: {e}");
        }
        if let Some(c) = code.and_then(|h| maps.codes.get_mut(&h)) {
            c.used = false;
        }
    }

    /// Records that `key` used its name now (it leaves, say), so the name
    /// counts as used from this moment.
    pub fn touch(&self, key: Fingerprint) {
        let key = *key.as_bytes();
        let maps = self.lock();
        let Some(fold) = maps.by_key.get(&key).cloned() else {
            return;
        };
        let Some(mut claim) = maps.by_name.get(&fold).cloned() else {
            return;
        };
        claim.used_by(&key, now_ms());
        if let Err(e) = self.apply(maps, vec![(fold, Some(claim))]).1 {
            tracing::warn!("cannot record a name's use: {e}");
        }
    }

    /// Writes `rows` (a claim, or `None` to delete) in one transaction,
    /// then to the maps, keeping the reverse index in step; returns the
    /// rows as they were, in the same order, and the lock again.
    ///
    /// In a cluster the rows go to the bucket one by one, each replacing
    /// the revision this node last saw, with the lock let go meanwhile (a
    /// round trip to NATS must not stall every lookup); a row another node
    /// changed first is read in and the write fails with
    /// [`RegistryError::Conflict`], for the caller to judge again.
    fn apply<'a>(
        &'a self,
        mut maps: MutexGuard<'a, Maps>,
        rows: Vec<(String, Option<Claim>)>,
    ) -> (MutexGuard<'a, Maps>, Result<Rows, RegistryError>) {
        if let Some(bucket) = &self.kv {
            let plan: Vec<(String, Option<Claim>, Option<u64>)> = rows
                .iter()
                .map(|(fold, claim)| {
                    let rev = maps
                        .revs
                        .get(fold)
                        .copied()
                        .filter(|_| maps.by_name.contains_key(fold));
                    (fold.clone(), claim.clone(), rev)
                })
                .collect();
            drop(maps);
            let written = write_kv(bucket, &plan);
            maps = self.lock();
            let done = match &written {
                Ok(_) => plan.len(),
                Err((n, _)) => *n,
            };
            let mut before = Vec::with_capacity(done);
            for ((fold, claim, _), rev) in plan.into_iter().zip(revisions(&written)).take(done) {
                if let Some(rev) = rev {
                    maps.revs.insert(fold.clone(), rev);
                }
                let old = maps.set(&fold, claim);
                before.push((fold, old));
            }
            return match written {
                Ok(_) => (maps, Ok(before)),
                Err((n, e)) => {
                    if matches!(e, RegistryError::Conflict) {
                        if let Some((fold, ..)) = rows.get(n) {
                            reload(bucket, &mut maps, fold);
                        }
                    }
                    if n > 0 {
                        tracing::warn!("a change of names was written in part: {e}");
                    }
                    (maps, Err(e))
                }
            };
        }
        if let Err(e) = self.write(&rows) {
            return (maps, Err(e));
        }
        let mut before = Vec::with_capacity(rows.len());
        for (fold, claim) in rows {
            let old = maps.set(&fold, claim);
            before.push((fold, old));
        }
        (maps, Ok(before))
    }

    /// Writes claims (or deletes them, for `None`) in one transaction.
    fn write(&self, rows: &[(String, Option<Claim>)]) -> Result<(), RegistryError> {
        let Some((db, path)) = &self.db else {
            return Ok(());
        };
        let err = |detail: String| RegistryError::File {
            path: path.clone(),
            detail,
        };
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            let mut table = tx.open_table(CLAIMS).map_err(|e| err(e.to_string()))?;
            for (fold, claim) in rows {
                match claim {
                    Some(c) => {
                        let bytes = postcard::to_allocvec(c).map_err(|e| err(e.to_string()))?;
                        table
                            .insert(fold.as_str(), bytes.as_slice())
                            .map_err(|e| err(e.to_string()))?;
                    }
                    None => {
                        table
                            .remove(fold.as_str())
                            .map_err(|e| err(e.to_string()))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))
    }
}

impl Maps {
    /// Puts `claim` under `fold` (or removes it, for `None`), keeping the
    /// reverse index in step; returns what was there.
    fn set(&mut self, fold: &str, claim: Option<Claim>) -> Option<Claim> {
        let old = self.by_name.remove(fold);
        for d in old.iter().flat_map(|c| &c.keys) {
            if self.by_key.get(&d.key).map(String::as_str) == Some(fold) {
                self.by_key.remove(&d.key);
            }
        }
        if let Some(c) = claim {
            for d in &c.keys {
                self.by_key.insert(d.key, fold.to_string());
            }
            self.by_name.insert(fold.to_string(), c);
        }
        old
    }
}

/// Claims by same-name key (`None`: absent), as written or as they were.
type Rows = Vec<(String, Option<Claim>)>;

/// Why a claim or link did not happen: a refusal, or a write that failed
/// (and, if it met another node's change, may be tried again).
enum Retry {
    No(Refusal),
    Write(RegistryError),
}

impl From<RegistryError> for Retry {
    fn from(e: RegistryError) -> Self {
        Retry::Write(e)
    }
}

/// Runs a claim or link until it is not undone by another node's change
/// met on writing (a few rounds: each round has read that change in).
fn retry(mut once: impl FnMut() -> Result<Claimed, Retry>) -> Result<Claimed, Refusal> {
    for _ in 0..4 {
        match once() {
            Ok(c) => return Ok(c),
            Err(Retry::No(r)) => return Err(r),
            Err(Retry::Write(RegistryError::Conflict)) => {}
            Err(Retry::Write(e)) => return Err(unavailable(e)),
        }
    }
    Err(unavailable(RegistryError::Conflict))
}

/// The bucket key of a claim.
fn claim_key(fold: &str) -> String {
    format!("{CLAIM_PREFIX}{}", crate::cluster::token(fold))
}

/// Prefix of the bucket's claim keys.
const CLAIM_PREFIX: &str = "claim.";

/// What [`write_kv`] wrote: each row's new revision (`None`: deleted), or
/// how many rows were written before the error.
type Written = Result<Vec<Option<u64>>, (usize, RegistryError)>;

fn revisions(written: &Written) -> Vec<Option<u64>> {
    match written {
        Ok(v) => v.clone(),
        Err((n, _)) => vec![None; *n],
    }
}

/// Writes claims to the cluster's bucket in order: a claim over the
/// revision this node saw (`None`: it saw none, so the key must be empty),
/// a deletion only of that revision.
fn write_kv(
    bucket: &crate::cluster::names::Bucket,
    plan: &[(String, Option<Claim>, Option<u64>)],
) -> Written {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    let mut revs = Vec::with_capacity(plan.len());
    for (i, (fold, claim, rev)) in plan.iter().enumerate() {
        let key = claim_key(fold);
        let store = bucket.store().clone();
        let fail = |e: RegistryError| Err((i, e));
        let outcome = match (claim, *rev) {
            (Some(c), rev) => {
                let bytes = match postcard::to_allocvec(c) {
                    Ok(b) => bytes::Bytes::from(b),
                    Err(e) => return fail(RegistryError::Cluster(e.to_string())),
                };
                bucket.block(async move {
                    match rev {
                        Some(rev) => store.update(&key, bytes, rev).await.map(Some).map_err(|e| {
                            (
                                e.kind() == UpdateErrorKind::WrongLastRevision,
                                e.to_string(),
                            )
                        }),
                        None => store.create(&key, bytes).await.map(Some).map_err(|e| {
                            (e.kind() == CreateErrorKind::AlreadyExists, e.to_string())
                        }),
                    }
                })
            }
            (None, Some(rev)) => bucket.block(async move {
                store
                    .delete_expect_revision(&key, Some(rev))
                    .await
                    .map(|()| None)
                    .map_err(|e| {
                        (
                            e.kind() == UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
            }),
            (None, None) => Some(Ok(None)),
        };
        match outcome {
            Some(Ok(r)) => revs.push(r),
            Some(Err((true, _))) => return fail(RegistryError::Conflict),
            Some(Err((false, e))) => return fail(RegistryError::Cluster(e)),
            None => return fail(RegistryError::Cluster("NATS did not answer".into())),
        }
    }
    Ok(revs)
}

/// Reads one claim from the bucket into the maps, after a write found it
/// changed by another node.
fn reload(bucket: &crate::cluster::names::Bucket, maps: &mut Maps, fold: &str) {
    let store = bucket.store().clone();
    let key = claim_key(fold);
    let got = bucket.block(async move { store.entry(key).await });
    let entry = match got {
        Some(Ok(e)) => e,
        Some(Err(e)) => return tracing::debug!("cannot read a claim: {e}"),
        None => return,
    };
    claim_changed(maps, fold, entry.as_ref());
}

/// Takes in a claim's change as the bucket reports it, unless this node
/// already knows a newer one.
fn claim_changed(maps: &mut Maps, fold: &str, entry: Option<&async_nats::jetstream::kv::Entry>) {
    let Some(e) = entry else {
        maps.set(fold, None);
        maps.revs.remove(fold);
        return;
    };
    if maps.revs.get(fold).is_some_and(|r| *r >= e.revision) {
        return;
    }
    maps.revs.insert(fold.to_string(), e.revision);
    let claim = match e.operation {
        async_nats::jetstream::kv::Operation::Put => postcard::from_bytes::<Claim>(&e.value).ok(),
        _ => None,
    };
    maps.set(fold, claim);
}

/// Follows the bucket: every node's claims, operators and bans, into this
/// node's copy. Returns once what was there is loaded (bounded), and
/// keeps following in a task for as long as `maps` lives.
pub(crate) async fn follow(
    bucket: &crate::cluster::names::Bucket,
    maps: std::sync::Weak<Mutex<Maps>>,
    remote: crate::moderation::Remote,
) -> Result<(), crate::cluster::ClusterError> {
    use async_nats::jetstream::kv::Operation;
    use futures_util::StreamExt;
    let store = bucket.store().clone();
    let mut stream = store.stream.clone();
    let last = stream
        .info()
        .await
        .map_err(|e| crate::cluster::ClusterError::JetStream(e.to_string()))?
        .state
        .last_sequence;
    // Claims' keys are hashes: which name a deletion is of is known from
    // the claim put before it.
    let mut folds: HashMap<String, String> = HashMap::new();
    let mut seen = 0u64;
    let mut take = move |e: async_nats::jetstream::kv::Entry, quiet: bool| -> bool {
        seen = seen.max(e.revision);
        if e.key.starts_with(CLAIM_PREFIX) {
            let Some(maps) = maps.upgrade() else {
                return false;
            };
            let fold = match e.operation {
                Operation::Put => match postcard::from_bytes::<Claim>(&e.value) {
                    Ok(c) => names::fold(&c.name),
                    Err(_) => return true,
                },
                _ => match folds.get(&e.key) {
                    Some(f) => f.clone(),
                    None => return true,
                },
            };
            folds.insert(e.key.clone(), fold.clone());
            let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
            if maps.revs.get(&fold).is_some_and(|r| *r >= e.revision) {
                return true;
            }
            maps.revs.insert(fold.clone(), e.revision);
            let claim = match e.operation {
                Operation::Put => postcard::from_bytes::<Claim>(&e.value).ok(),
                _ => None,
            };
            maps.set(&fold, claim);
        } else {
            remote.changed(&e, quiet);
        }
        true
    };
    let mut changes = store
        .watch_with_history(">")
        .await
        .map_err(|e| crate::cluster::ClusterError::JetStream(e.to_string()))?;
    let mut at = 0u64;
    if last > 0 {
        let deadline = tokio::time::Instant::now() + crate::cluster::REQUEST_TIMEOUT;
        while at < last {
            match tokio::time::timeout_at(deadline, changes.next()).await {
                Ok(Some(Ok(e))) => {
                    at = e.revision;
                    let more = e.delta > 0;
                    take(e, true);
                    if !more {
                        break;
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(crate::cluster::ClusterError::JetStream(e.to_string()))
                }
                Ok(None) | Err(_) => {
                    return Err(crate::cluster::ClusterError::JetStream(
                        "the names bucket did not load in time".into(),
                    ))
                }
            }
        }
    }
    let store = bucket.store().clone();
    tokio::spawn(async move {
        let mut last = at;
        loop {
            while let Some(change) = changes.next().await {
                let Ok(e) = change else { break };
                last = last.max(e.revision);
                if !take(e, false) {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match store.watch_all_from_revision(last + 1).await {
                Ok(w) => changes = w,
                Err(e) => tracing::debug!("cannot watch the names bucket: {e}"),
            }
        }
    });
    Ok(())
}

/// A new code, in groups of four joined by `-`, easy to read and type.
fn fresh_code() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; CODE_CHARS];
    getrandom::fill(&mut bytes)?;
    let mut code = String::with_capacity(CODE_CHARS + CODE_CHARS / 4);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        // 256 is a multiple of 32: every letter equally likely.
        code.push(char::from(CODE_ALPHABET[usize::from(b & 31)]));
    }
    Ok(code)
}

/// The lookup key of a code: SHA-256 of its normal form (no separators,
/// lowercase). Looking codes up by hash leaks nothing by timing about the
/// codes that exist, and the server never keeps a usable code.
fn code_hash(code: &str) -> [u8; 32] {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, normal.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn unavailable(e: RegistryError) -> Refusal {
    tracing::warn!("{e}");
    Refusal {
        detail: "the server cannot record names right now; try again later".into(),
    }
}

/// The refusal's sentence: which rule made `wanted` the registered name
/// `holder` — the same name, the same but for case, or one that only looks
/// the same (the confusable skeleton of UTS #39).
pub fn registered(wanted: &str, holder: &str) -> String {
    if wanted == holder {
        format!("the name {wanted:?} is registered to another key")
    } else if wanted.to_lowercase() == holder.to_lowercase() {
        format!(
            "the name {wanted:?} is registered to another key as {holder:?}, which differs only in letter case"
        )
    } else {
        format!(
            "the name {wanted:?} is registered to another key as {holder:?}, which it looks the same as \
             (Unicode's confusable look-alikes, fullwidth forms and the like count as the same name)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn key(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn first(c: &Claim) -> [u8; 32] {
        c.keys[0].key
    }

    fn keys(c: &Claim) -> Vec<[u8; 32]> {
        c.keys.iter().map(|d| d.key).collect()
    }

    #[test]
    fn the_first_key_claims_and_others_are_refused_by_every_rule() {
        let r = Registry::memory();
        assert!(matches!(
            r.claim("alice", key(1), YEAR),
            Ok(Claimed::New { .. })
        ));
        assert!(matches!(r.claim("alice", key(1), YEAR), Ok(Claimed::Kept)));
        let same = r.claim("alice", key(2), YEAR).expect_err("taken");
        assert!(
            same.detail.contains("registered to another key"),
            "{same:?}"
        );
        let case = r.claim("ALICE", key(2), YEAR).expect_err("case");
        assert!(case.detail.contains("letter case"), "{case:?}");
        let wide = r
            .claim("\u{FF41}\u{FF4C}\u{FF49}\u{FF43}\u{FF45}", key(2), YEAR)
            .expect_err("fullwidth");
        assert!(wide.detail.contains("looks the same"), "{wide:?}");
        let guest = r.check_guest("Alice", YEAR).expect_err("guest");
        assert!(guest.detail.contains("guest"), "{guest:?}");
        assert!(r.check_guest("bob", YEAR).is_ok());
        assert_eq!(r.lookup("ALICE", YEAR).map(|c| first(&c)), Some([1; 32]));
    }

    #[test]
    fn an_unused_claim_expires_and_goes_to_the_next_key() {
        let r = Registry::memory();
        let expiry = Duration::from_secs(2);
        let t0 = now_ms();
        let _ = r.claim_at("alice", key(1), expiry, t0).expect("claim");
        assert!(r.claim_at("alice", key(2), expiry, t0 + 2_000).is_err());
        let _ = r
            .claim_at("alice", key(2), expiry, t0 + 2_001)
            .expect("expired, so the next key claims it");
        assert_eq!(r.lookup("alice", YEAR).map(|c| first(&c)), Some([2; 32]));
        assert!(
            !r.lock().by_key.contains_key(&[1; 32]),
            "the old key lost it"
        );
    }

    #[test]
    fn a_key_holds_one_name_and_undo_restores_it() {
        let r = Registry::memory();
        let _ = r.claim("alice", key(1), YEAR).expect("claim");
        let moved = r.claim("alicia", key(1), YEAR).expect("move");
        assert!(r.lookup("alice", YEAR).is_none(), "the old name is free");
        assert_eq!(r.lookup("alicia", YEAR).map(|c| first(&c)), Some([1; 32]));
        r.undo(moved);
        assert!(r.lookup("alicia", YEAR).is_none());
        assert_eq!(r.lookup("alice", YEAR).map(|c| first(&c)), Some([1; 32]));
    }

    #[test]
    fn claims_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let r = Registry::open(dir.path()).expect("open");
            let _ = r.claim("alice", key(1), YEAR).expect("claim");
            let _ = r.claim("bob", key(2), YEAR).expect("claim");
            let _ = r.claim("bobby", key(2), YEAR).expect("move");
        }
        let r = Registry::open(dir.path()).expect("reopen");
        assert_eq!(r.lookup("alice", YEAR).map(|c| first(&c)), Some([1; 32]));
        assert!(r.lookup("bob", YEAR).is_none());
        assert!(r.claim("Alice", key(3), YEAR).is_err());
        assert!(matches!(r.claim("bobby", key(2), YEAR), Ok(Claimed::Kept)));
    }

    #[test]
    fn a_link_code_adds_a_key_once_and_only_for_its_name() {
        let r = Registry::memory();
        let ttl = Duration::from_secs(600);
        let t0 = now_ms();
        let _ = r.claim_at("alice", key(1), YEAR, t0).expect("claim");
        let _ = r.claim_at("bob", key(9), YEAR, t0).expect("claim");
        let (code, expires) = r.new_link_code_at(key(1), YEAR, ttl, t0).expect("code");
        assert_eq!(expires, t0 + 600_000);
        assert_eq!(code.len(), 19, "{code}");
        let wrong = r.link_at("alice", "aaaa-bbbb-cccc-dddd", key(2), YEAR, t0);
        assert!(wrong.expect_err("wrong").detail.contains("wrong"));
        let other = r.link_at("bob", &code, key(2), YEAR, t0);
        assert!(other.expect_err("bob").detail.contains("another name"));
        let held = r.link_at("alice", &code, key(9), YEAR, t0);
        assert!(held.expect_err("bob's key").detail.contains("\"bob\""));
        // Spelling: case and separators do not matter.
        let typed = code.to_uppercase().replace('-', " ");
        let _ = r.link_at("Alice", &typed, key(2), YEAR, t0).expect("link");
        let c = r.lookup("alice", YEAR).expect("claim");
        assert_eq!(keys(&c), vec![[1; 32], [2; 32]]);
        assert_eq!(
            r.claim_of(key(2), YEAR).map(|c| c.name),
            Some("alice".into())
        );
        let again = r.link_at("alice", &code, key(3), YEAR, t0);
        assert!(again.expect_err("reused").detail.contains("already used"));
        // The second device uses the name like the first.
        assert!(matches!(
            r.claim_at("alice", key(2), YEAR, t0),
            Ok(Claimed::Kept)
        ));
        assert!(r.claim_at("alice", key(3), YEAR, t0).is_err());
    }

    #[test]
    fn an_expired_code_is_refused_and_an_undone_link_frees_its_code() {
        let r = Registry::memory();
        let ttl = Duration::from_secs(60);
        let t0 = now_ms();
        let _ = r.claim_at("alice", key(1), YEAR, t0).expect("claim");
        let (old, _) = r.new_link_code_at(key(1), YEAR, ttl, t0).expect("code");
        let late = r.link_at("alice", &old, key(2), YEAR, t0 + 60_000);
        assert!(late.expect_err("expired").detail.contains("expired"));
        let (code, _) = r.new_link_code_at(key(1), YEAR, ttl, t0).expect("code");
        let linked = r.link_at("alice", &code, key(2), YEAR, t0).expect("link");
        r.undo(linked);
        assert_eq!(
            keys(&r.lookup("alice", YEAR).expect("claim")),
            vec![[1; 32]]
        );
        assert!(r.claim_of(key(2), YEAR).is_none());
        let _ = r
            .link_at("alice", &code, key(2), YEAR, t0)
            .expect("usable again");
    }

    #[test]
    fn keys_and_live_codes_per_name_are_bounded() {
        let r = Registry::memory();
        let ttl = Duration::from_secs(600);
        let t0 = now_ms();
        let _ = r.claim_at("alice", key(1), YEAR, t0).expect("claim");
        let codes: Vec<String> = (0..LINK_CODES_PER_NAME)
            .map(|_| r.new_link_code_at(key(1), YEAR, ttl, t0).expect("code").0)
            .collect();
        let more = r.new_link_code_at(key(1), YEAR, ttl, t0);
        assert!(more.expect_err("bounded").detail.contains("waiting"));
        let mut n = 2;
        for code in &codes {
            let _ = r.link_at("alice", code, key(n), YEAR, t0).expect("link");
            n += 1;
        }
        while r.lookup("alice", YEAR).map_or(0, |c| c.keys.len()) < MAX_KEYS_PER_NAME {
            let (code, _) = r.new_link_code_at(key(1), YEAR, ttl, t0).expect("code");
            let _ = r.link_at("alice", &code, key(n), YEAR, t0).expect("link");
            n += 1;
        }
        let full = r.new_link_code_at(key(2), YEAR, ttl, t0);
        assert!(full.expect_err("full").detail.contains("the most"));
        assert!(
            r.new_link_code_at(key(99), YEAR, ttl, t0).is_err(),
            "no name"
        );
    }

    #[test]
    fn a_removed_key_loses_the_name_but_the_last_key_stays() {
        let r = Registry::memory();
        let ttl = Duration::from_secs(600);
        let _ = r.claim("alice", key(1), YEAR).expect("claim");
        let (code, _) = r.new_link_code(key(1), YEAR, ttl).expect("code");
        let _ = r.link("alice", &code, key(2), YEAR).expect("link");
        assert!(
            r.remove_key(key(3), key(2), YEAR).is_err(),
            "not a key of any name"
        );
        assert!(r.remove_key(key(1), key(7), YEAR).is_err(), "not alice's");
        let left = r.remove_key(key(2), key(1), YEAR).expect("remove");
        assert_eq!(keys(&left), vec![[2; 32]]);
        let refused = r.claim("alice", key(1), YEAR).expect_err("removed");
        assert!(refused.detail.contains("registered to another key"));
        let last = r.remove_key(key(2), key(2), YEAR).expect_err("last");
        assert!(last.detail.contains("only key"), "{last:?}");
        // The removed key is free to claim a name of its own.
        let _ = r.claim("carol", key(1), YEAR).expect("claim");
    }

    #[test]
    fn linked_keys_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ttl = Duration::from_secs(600);
        {
            let r = Registry::open(dir.path()).expect("open");
            let _ = r.claim("alice", key(1), YEAR).expect("claim");
            for n in [2, 3] {
                let (code, _) = r.new_link_code(key(1), YEAR, ttl).expect("code");
                let _ = r.link("alice", &code, key(n), YEAR).expect("link");
            }
            let _ = r.remove_key(key(1), key(2), YEAR).expect("remove");
        }
        let r = Registry::open(dir.path()).expect("reopen");
        let c = r.lookup("alice", YEAR).expect("claim");
        assert_eq!(keys(&c), vec![[1; 32], [3; 32]]);
        assert!(matches!(r.claim("alice", key(3), YEAR), Ok(Claimed::Kept)));
        assert!(r.claim("alice", key(2), YEAR).is_err());
    }

    #[test]
    fn a_linked_key_that_moves_leaves_the_name_to_the_others() {
        let r = Registry::memory();
        let ttl = Duration::from_secs(600);
        let _ = r.claim("alice", key(1), YEAR).expect("claim");
        let (code, _) = r.new_link_code(key(1), YEAR, ttl).expect("code");
        let _ = r.link("alice", &code, key(2), YEAR).expect("link");
        let moved = r.claim("alicia", key(2), YEAR).expect("move");
        assert_eq!(
            keys(&r.lookup("alice", YEAR).expect("alice")),
            vec![[1; 32]]
        );
        r.undo(moved);
        assert_eq!(
            keys(&r.lookup("alice", YEAR).expect("alice")),
            vec![[1; 32], [2; 32]]
        );
        assert!(r.lookup("alicia", YEAR).is_none());
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::cluster::names::tests::node as cluster_node;
    use crate::cluster::names::ONLINE_TTL;
    use crate::cluster::testing::NatsServer as Nats;
    use crate::moderation::{Change, Entry};

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn key(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    async fn node(nats: &Nats) -> Arc<Registry> {
        Arc::new(
            Registry::clustered(cluster_node(nats).await, ONLINE_TTL)
                .await
                .expect("clustered registry"),
        )
    }

    /// Waits (bounded) until `ok` holds of `r`: the watch brings another
    /// node's change in its own time, and gives nothing to await here.
    async fn until(r: &Arc<Registry>, what: &str, ok: impl Fn(&Registry) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ok(r) {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_claiming_one_name_at_once_exactly_one_wins_and_both_see_it() {
        let nats = Nats::start().await;
        let (a, b) = (node(&nats).await, node(&nats).await);
        for round in 0..10u8 {
            let name = format!("name{round}");
            let (ra, rb) = (Arc::clone(&a), Arc::clone(&b));
            let (na, nb) = (name.clone(), name.to_uppercase());
            let ta = tokio::task::spawn_blocking(move || ra.claim(&na, key(1), YEAR));
            let tb = tokio::task::spawn_blocking(move || rb.claim(&nb, key(2), YEAR));
            let (ga, gb) = (ta.await.expect("a"), tb.await.expect("b"));
            assert!(ga.is_ok() != gb.is_ok(), "round {round}: {ga:?} {gb:?}");
            let loser = ga.err().or(gb.err()).expect("a refusal");
            assert!(
                loser.detail.contains("registered to another key"),
                "{loser:?}"
            );
            let winner = if a.lookup(&name, YEAR).is_some_and(|c| c.has(&[1; 32])) {
                [1; 32]
            } else {
                [2; 32]
            };
            for r in [&a, &b] {
                until(r, "both see the winner", |r| {
                    r.lookup(&name, YEAR)
                        .is_some_and(|c| c.keys.len() == 1 && c.has(&winner))
                })
                .await;
            }
        }
        // A claim on one is refused on the other to a guest and another key.
        let ra = Arc::clone(&a);
        let _ = tokio::task::spawn_blocking(move || ra.claim("zed", key(5), YEAR))
            .await
            .expect("task")
            .expect("claim");
        until(&b, "b sees zed", |r| r.check_guest("zed", YEAR).is_err()).await;
        let rb = Arc::clone(&b);
        let other = tokio::task::spawn_blocking(move || rb.claim("Zed", key(6), YEAR))
            .await
            .expect("task");
        assert!(other.is_err(), "{other:?}");
        // The key moves to another name on b: a sees zed free again.
        let rb = Arc::clone(&b);
        let _ = tokio::task::spawn_blocking(move || rb.claim("zora", key(5), YEAR))
            .await
            .expect("task")
            .expect("move");
        until(&a, "a sees the move", |r| {
            r.lookup("zed", YEAR).is_none()
                && r.claim_of(key(5), YEAR).map(|c| c.name) == Some("zora".into())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ban_or_grant_on_one_node_reaches_the_other() {
        let nats = Nats::start().await;
        let (a, b) = (node(&nats).await, node(&nats).await);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        b.moderation().on_change(move |c| {
            let _ = tx.send(c);
        });
        let ra = Arc::clone(&a);
        tokio::task::spawn_blocking(move || {
            ra.moderation().ban(Entry {
                name: "mallory".into(),
                keys: vec![[9; 32], [8; 32]],
                by: "host".into(),
                at_ms: 1,
                reason: "spam".into(),
            })
        })
        .await
        .expect("task")
        .expect("ban");
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("b heard of the ban in time");
        assert!(matches!(got, Some(Change::Ban(e)) if e.keys.contains(&[8; 32])));
        assert_eq!(
            b.moderation().banned(key(8)).map(|e| e.reason),
            Some("spam".into())
        );
        let ra = Arc::clone(&a);
        tokio::task::spawn_blocking(move || {
            ra.moderation().grant(Entry {
                name: "bob".into(),
                keys: vec![[5; 32]],
                by: "host".into(),
                at_ms: 1,
                reason: String::new(),
            })
        })
        .await
        .expect("task")
        .expect("grant");
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("b heard of the grant in time");
        assert!(matches!(got, Some(Change::Op(_, true))));
        assert!(b.moderation().is_operator(key(5)));
        let ra = Arc::clone(&a);
        tokio::task::spawn_blocking(move || ra.moderation().unban("Mallory"))
            .await
            .expect("task")
            .expect("unban");
        until(&b, "b sees the unban", |r| {
            r.moderation().banned(key(9)).is_none()
        })
        .await;
        // A node started now loads what is there, without news to act on.
        let c = node(&nats).await;
        assert!(c.moderation().is_operator(key(5)));
        assert!(c.moderation().banned(key(9)).is_none());
    }
}
