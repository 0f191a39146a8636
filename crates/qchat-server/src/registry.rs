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
//! Claims live in memory, in a map each way, and — unless the server runs
//! with `--store memory` — in `names.redb` beside the room log: a file of
//! its own, because the log's file is about messages and may be wiped or
//! replaced (a new log id) without anyone losing their name. Every change
//! is committed before it is acted on. The reverse index is rebuilt from
//! the claims when the file is opened, so the two cannot disagree on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qchat_proto::names;
use qchat_tls::Fingerprint;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Same-name key → claim (postcard).
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");

/// A name bound to a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The name as its key first used it.
    pub name: String,
    /// The key's fingerprint (SHA-256 of its SubjectPublicKeyInfo).
    pub key: [u8; 32],
    /// When the key claimed it, ms since the Unix epoch.
    pub since_ms: u64,
    /// When the key last used it (joined or left under it).
    pub last_ms: u64,
}

impl Claim {
    /// The key, as the fingerprint type people compare.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_bytes(self.key)
    }

    fn live(&self, now_ms: u64, expiry: Duration) -> bool {
        now_ms.saturating_sub(self.last_ms) <= u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why a name could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// One sentence for the user, naming the rule that made the names the
    /// same.
    pub detail: String,
}

/// What a successful claim changed, so that it can be taken back if the
/// join or rename it was for fails after all.
#[derive(Debug)]
#[must_use = "a claim for a join that fails must be undone"]
pub enum Claimed {
    /// The key already held the name; only its use was recorded.
    Kept,
    /// The key claimed the name now; it held `moved_from` before (freed
    /// now), and `replaced` was an expired claim of another key.
    New {
        /// The same-name key claimed.
        fold: String,
        /// The key's previous claim, freed by this one.
        moved_from: Option<Claim>,
        /// Another key's expired claim on the name.
        replaced: Option<Claim>,
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

#[derive(Default)]
struct Maps {
    by_name: HashMap<String, Claim>,
    /// The reverse index: each key holds at most one name.
    by_key: HashMap<[u8; 32], String>,
}

/// The registered names.
pub struct Registry {
    maps: Mutex<Maps>,
    db: Option<(Database, PathBuf)>,
}

impl Registry {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "names.redb";

    /// Claims kept in memory only (`--store memory`, tests).
    pub fn memory() -> Self {
        Registry {
            maps: Mutex::new(Maps::default()),
            db: None,
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
                maps.by_key.insert(claim.key, fold.value().to_string());
                maps.by_name.insert(fold.value().to_string(), claim);
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        Ok(Registry {
            maps: Mutex::new(maps),
            db: Some((db, path)),
        })
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

    /// Whether a guest (no key) may use `name`: only if nobody holds it.
    pub fn check_guest(&self, name: &str, expiry: Duration) -> Result<(), Refusal> {
        match self.lookup(name, expiry) {
            Some(claim) => Err(Refusal {
                detail: format!(
                    "{}, and you connected without a key (as a guest); choose a name nobody has registered",
                    registered(name, &claim.name)
                ),
            }),
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
        let replaced = match maps.by_name.get(&fold) {
            Some(c) if c.key == key => {
                let mut kept = c.clone();
                kept.last_ms = now;
                self.write(&[(&fold, Some(&kept))]).map_err(unavailable)?;
                maps.by_name.insert(fold, kept);
                return Ok(Claimed::Kept);
            }
            Some(c) if c.live(now, expiry) => {
                return Err(Refusal {
                    detail: format!("{}; choose another name", registered(name, &c.name)),
                });
            }
            other => other.cloned(),
        };
        let moved_from = maps
            .by_key
            .get(&key)
            .and_then(|old| maps.by_name.get(old))
            .cloned();
        let claim = Claim {
            name: name.to_string(),
            key,
            since_ms: now,
            last_ms: now,
        };
        let old_fold = moved_from.as_ref().map(|c| names::fold(&c.name));
        let mut writes: Vec<(&str, Option<&Claim>)> = vec![(&fold, Some(&claim))];
        if let Some(old) = &old_fold {
            writes.push((old, None));
        }
        self.write(&writes).map_err(unavailable)?;
        if let Some(old) = &old_fold {
            maps.by_name.remove(old);
        }
        if let Some(r) = &replaced {
            maps.by_key.remove(&r.key);
        }
        maps.by_key.insert(key, fold.clone());
        maps.by_name.insert(fold.clone(), claim);
        Ok(Claimed::New {
            fold,
            moved_from,
            replaced,
        })
    }

    /// Takes back a claim whose join or rename did not happen: the name
    /// goes back to whoever held it before (an expired claim), and the key
    /// gets its previous name back.
    pub fn undo(&self, claimed: Claimed) {
        let Claimed::New {
            fold,
            moved_from,
            replaced,
        } = claimed
        else {
            return;
        };
        let mut maps = self.lock();
        let old_fold = moved_from.as_ref().map(|c| names::fold(&c.name));
        let mut writes: Vec<(&str, Option<&Claim>)> = vec![(&fold, replaced.as_ref())];
        if let (Some(old), Some(c)) = (&old_fold, &moved_from) {
            writes.push((old, Some(c)));
        }
        if let Err(e) = self.write(&writes) {
            tracing::warn!("cannot take back a name claim: {e}");
        }
        if let Some(c) = maps.by_name.remove(&fold) {
            maps.by_key.remove(&c.key);
        }
        if let Some(r) = replaced {
            maps.by_key.insert(r.key, fold.clone());
            maps.by_name.insert(fold, r);
        }
        if let (Some(old), Some(c)) = (old_fold, moved_from) {
            maps.by_key.insert(c.key, old.clone());
            maps.by_name.insert(old, c);
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
        claim.last_ms = now_ms();
        if let Err(e) = self.write(&[(&fold, Some(&claim))]) {
            tracing::warn!("cannot record a name's use: {e}");
        }
        maps.by_name.insert(fold, claim);
    }

    /// Writes claims (or deletes them, for `None`) in one transaction.
    fn write(&self, rows: &[(&str, Option<&Claim>)]) -> Result<(), RegistryError> {
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
                            .insert(*fold, bytes.as_slice())
                            .map_err(|e| err(e.to_string()))?;
                    }
                    None => {
                        table.remove(*fold).map_err(|e| err(e.to_string()))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))
    }
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn key(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
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
        assert_eq!(r.lookup("ALICE", YEAR).map(|c| c.key), Some([1; 32]));
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
        assert_eq!(r.lookup("alice", YEAR).map(|c| c.key), Some([2; 32]));
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
        assert_eq!(r.lookup("alicia", YEAR).map(|c| c.key), Some([1; 32]));
        r.undo(moved);
        assert!(r.lookup("alicia", YEAR).is_none());
        assert_eq!(r.lookup("alice", YEAR).map(|c| c.key), Some([1; 32]));
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
        assert_eq!(r.lookup("alice", YEAR).map(|c| c.key), Some([1; 32]));
        assert!(r.lookup("bob", YEAR).is_none());
        assert!(r.claim("Alice", key(3), YEAR).is_err());
        assert!(matches!(r.claim("bobby", key(2), YEAR), Ok(Claimed::Kept)));
    }
}
