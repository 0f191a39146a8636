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
}

/// A link code, known by its hash.
struct Code {
    /// The same-name key it was made for.
    fold: String,
    expires_ms: u64,
    used: bool,
}

#[derive(Default)]
struct Maps {
    by_name: HashMap<String, Claim>,
    /// The reverse index: each key holds at most one name.
    by_key: HashMap<[u8; 32], String>,
    /// Link codes by the SHA-256 of their normal form. Used and expired
    /// ones stay a while (a lifetime past their end) so that a refusal
    /// can say "used" or "expired" rather than "wrong".
    codes: HashMap<[u8; 32], Code>,
}

/// The registered names.
pub struct Registry {
    maps: Mutex<Maps>,
    db: Option<(Arc<Database>, PathBuf)>,
    /// Operators and bans, by key, in the same file.
    moderation: Moderation,
}

impl Registry {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "names.redb";

    /// Claims kept in memory only (`--store memory`, tests).
    pub fn memory() -> Self {
        Registry {
            maps: Mutex::new(Maps::default()),
            db: None,
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
            maps: Mutex::new(maps),
            db: Some((db, path)),
            moderation,
        })
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
        let fold = names::fold(name);
        let key = *key.as_bytes();
        let mut maps = self.lock();
        match maps.by_name.get(&fold) {
            Some(c) if c.has(&key) => {
                let mut kept = c.clone();
                kept.used_by(&key, now);
                self.apply(&mut maps, vec![(fold, Some(kept))])
                    .map_err(unavailable)?;
                return Ok(Claimed::Kept);
            }
            Some(c) if c.live(now, expiry) => {
                return Err(Refusal::new(format!(
                    "{}; choose another name",
                    registered(name, &c.name)
                )));
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
        let before = self.apply(&mut maps, rows).map_err(unavailable)?;
        Ok(Claimed::New { before, code: None })
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
        let fold = names::fold(name);
        let hash = code_hash(code);
        let key = *key.as_bytes();
        let mut maps = self.lock();
        match maps.codes.get(&hash) {
            None => {
                return Err(Refusal::new(
                    "the link code is wrong: no such code (check it, or make a new one with /device link)",
                ))
            }
            Some(c) if c.used => {
                return Err(Refusal::new(
                    "the link code was already used; a code links one device (make a new one with /device link)",
                ))
            }
            Some(c) if c.expires_ms <= now => {
                return Err(Refusal::new(
                    "the link code has expired (make a new one with /device link)",
                ))
            }
            Some(c) if c.fold != fold => {
                return Err(Refusal::new(format!(
                    "the link code was made for another name than {name:?}"
                )))
            }
            Some(_) => {}
        }
        let Some(claim) = maps.by_name.get(&fold).filter(|c| c.live(now, expiry)) else {
            return Err(Refusal::new(format!(
                "the name {name:?} is no longer registered; connect without --link to claim it"
            )));
        };
        let mut claim = claim.clone();
        let mut rows = Vec::new();
        if !claim.has(&key) {
            // One key, one name: linking never takes a key from a name that
            // still counts on it.
            if let Some(old) = maps.by_key.get(&key).and_then(|f| maps.by_name.get(f)) {
                if old.live(now, expiry) {
                    return Err(Refusal::new(format!(
                        "this device's key already holds the name {:?}, and a key belongs to one name; \
                         remove it there first (/device remove), or link from a device with a key of its own",
                        old.name
                    )));
                }
                rows.push((names::fold(&old.name), old.without(&key)));
            }
            if claim.keys.len() >= MAX_KEYS_PER_NAME {
                return Err(Refusal::new(format!(
                    "{} already has {MAX_KEYS_PER_NAME} keys, the most a name may have; remove one first (/device remove)",
                    claim.name
                )));
            }
            claim.keys.push(Device {
                key,
                added_ms: now,
                last_ms: now,
            });
        }
        claim.used_by(&key, now);
        rows.insert(0, (fold, Some(claim)));
        let before = self.apply(&mut maps, rows).map_err(unavailable)?;
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
        let mut maps = self.lock();
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
        self.apply(&mut maps, vec![(fold, Some(left.clone()))])
            .map_err(unavailable)?;
        Ok(left)
    }

    /// Takes back a claim or link whose join or rename did not happen.
    pub fn undo(&self, claimed: Claimed) {
        let Claimed::New { before, code } = claimed else {
            return;
        };
        let mut maps = self.lock();
        let rows = before.into_iter().rev().collect();
        if let Err(e) = self.apply(&mut maps, rows) {
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
        let mut maps = self.lock();
        let Some(fold) = maps.by_key.get(&key).cloned() else {
            return;
        };
        let Some(mut claim) = maps.by_name.get(&fold).cloned() else {
            return;
        };
        claim.used_by(&key, now_ms());
        if let Err(e) = self.apply(&mut maps, vec![(fold, Some(claim))]) {
            tracing::warn!("cannot record a name's use: {e}");
        }
    }

    /// Writes `rows` (a claim, or `None` to delete) in one transaction,
    /// then to the maps, keeping the reverse index in step; returns the
    /// rows as they were, in the same order.
    fn apply(
        &self,
        maps: &mut Maps,
        rows: Vec<(String, Option<Claim>)>,
    ) -> Result<Vec<(String, Option<Claim>)>, RegistryError> {
        self.write(&rows)?;
        let mut before = Vec::with_capacity(rows.len());
        for (fold, claim) in rows {
            let old = maps.by_name.remove(&fold);
            for d in old.iter().flat_map(|c| &c.keys) {
                if maps.by_key.get(&d.key) == Some(&fold) {
                    maps.by_key.remove(&d.key);
                }
            }
            if let Some(c) = claim {
                for d in &c.keys {
                    maps.by_key.insert(d.key, fold.clone());
                }
                maps.by_name.insert(fold.clone(), c);
            }
            before.push((fold, old));
        }
        Ok(before)
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
