//! Operators and bans, by key.
//!
//! Operator rights and bans belong to keys, not names: a name can be given
//! up and claimed by someone else, a key cannot. Both are kept as a list
//! of entries, one per name acted on, each holding the keys that name had
//! at the time: `/op alice` makes every key alice has now an operator, and
//! `/ban alice` bans every device of alice's, so that another of her
//! devices cannot walk back in.
//!
//! Operators given by `/op` and key bans are stored in `names.redb` beside
//! the name claims (one file for everything that says who someone is), so
//! they survive a restart; with `--store memory` they live in memory like
//! the claims. Operators given on the command line (`--operator`) and the
//! host's own key are not stored here: the server's settings own them, so
//! chat can neither take them away nor ban them.
//!
//! A guest has no key; banning one bans the address it came from, for a
//! while (`--guest-ban`), in memory only: addresses are shared and
//! reassigned, so a lasting address ban would shut out the wrong people,
//! and a restart forgetting one costs only banning again.

use qchat_proto::clock::{now_ms, utc_minute};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use qchat_proto::{names, BanInfo, ModOp, RejectReason, ServerMsg};
use qchat_tls::Fingerprint;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::cluster::names::Bucket;
use crate::options::ServerOptions;
use crate::registry::RegistryError;
use crate::room::{MemberId, Peer, Rejection, Room};

/// Same-name key → operator entry (postcard).
const OPERATORS: TableDefinition<&str, &[u8]> = TableDefinition::new("operators");
/// Same-name key → ban entry (postcard).
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");

/// An operator grant or a key ban: a name and the keys it had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name acted on, as it was spelt.
    pub name: String,
    /// Its keys at the time; never empty.
    pub keys: Vec<[u8; 32]>,
    /// The operator who did it.
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Why (bans; empty for operator grants).
    pub reason: String,
}

/// A guest's address ban, in memory only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrBan {
    /// The name the guest used.
    pub name: String,
    /// The address.
    pub addr: IpAddr,
    /// The operator who banned it.
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// When it ends, ms since the Unix epoch.
    pub until_ms: u64,
    /// Why.
    pub reason: String,
}

/// Entries by same-name key, with a reverse index by key.
#[derive(Default)]
struct List {
    by_name: HashMap<String, Entry>,
    by_key: HashMap<[u8; 32], String>,
}

impl List {
    fn get_key(&self, key: &[u8; 32]) -> Option<&Entry> {
        self.by_key.get(key).and_then(|f| self.by_name.get(f))
    }

    /// Puts `entry` under `fold` (or removes it, for `None`), keeping the
    /// reverse index in step; returns what was there.
    fn set(&mut self, fold: &str, entry: Option<Entry>) -> Option<Entry> {
        let old = self.by_name.remove(fold);
        for k in old.iter().flat_map(|e| &e.keys) {
            if self.by_key.get(k).map(String::as_str) == Some(fold) {
                self.by_key.remove(k);
            }
        }
        if let Some(e) = entry {
            for k in &e.keys {
                self.by_key.insert(*k, fold.to_string());
            }
            self.by_name.insert(fold.to_string(), e);
        }
        old
    }

    /// The same-name key of the entry `target` names: a name, or a key's
    /// fingerprint in any spelling.
    fn find(&self, target: &str) -> Option<String> {
        let fold = names::fold(target);
        if self.by_name.contains_key(&fold) {
            return Some(fold);
        }
        let key = target.parse::<Fingerprint>().ok()?;
        self.by_key.get(key.as_bytes()).cloned()
    }
}

#[derive(Default)]
struct Lists {
    ops: List,
    bans: List,
    addrs: HashMap<IpAddr, AddrBan>,
}

/// Operators granted in chat, key bans and guest address bans.
pub struct Moderation {
    lists: Arc<Mutex<Lists>>,
    db: Option<(Arc<Database>, PathBuf)>,
    /// In a cluster: the bucket shared with the claims.
    kv: Option<Arc<Bucket>>,
    /// What to do when another node bans or grants (set once the room
    /// exists).
    hook: Arc<OnceLock<Hook>>,
}

/// A change made on another node, for this node's room to carry out.
#[derive(Debug, Clone)]
pub enum Change {
    /// Keys were banned: their sessions here end.
    Ban(Entry),
    /// Keys were made operators (`true`) or no longer are (`false`).
    Op(Entry, bool),
}

type Hook = Box<dyn Fn(Change) + Send + Sync>;

/// The watch's way into the lists: every node's operators and key bans,
/// as the bucket reports them.
pub(crate) struct Remote {
    lists: Weak<Mutex<Lists>>,
    hook: Arc<OnceLock<Hook>>,
    /// Bucket key to same-name key: a deletion names only its key.
    folds: Mutex<HashMap<String, String>>,
}

impl Remote {
    /// Takes in one change of the bucket's `ban.` or `op.` keys; `quiet`:
    /// one already there when the node started, not news to act on.
    pub(crate) fn changed(&self, e: &async_nats::jetstream::kv::Entry, quiet: bool) {
        let kind = if e.key.starts_with(BAN_PREFIX) {
            Kind::Ban
        } else if e.key.starts_with(OP_PREFIX) {
            Kind::Op
        } else {
            return;
        };
        let Some(lists) = self.lists.upgrade() else {
            return;
        };
        let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match e.operation {
            async_nats::jetstream::kv::Operation::Put => {
                match postcard::from_bytes::<Entry>(&e.value) {
                    Ok(entry) => Some(entry),
                    Err(_) => return,
                }
            }
            _ => None,
        };
        let fold = match &entry {
            Some(entry) => names::fold(&entry.name),
            None => match folds.get(&e.key) {
                Some(f) => f.clone(),
                None => return,
            },
        };
        folds.insert(e.key.clone(), fold.clone());
        drop(folds);
        let old = {
            let mut lists = lists.lock().unwrap_or_else(|p| p.into_inner());
            kind.list(&mut lists).set(&fold, entry.clone())
        };
        if quiet {
            return;
        }
        let Some(hook) = self.hook.get() else {
            return;
        };
        match (kind, entry, old) {
            (Kind::Ban, Some(e), _) => hook(Change::Ban(e)),
            (Kind::Op, Some(e), _) => hook(Change::Op(e, true)),
            (Kind::Op, None, Some(old)) => hook(Change::Op(old, false)),
            _ => {}
        }
    }
}

/// Bucket key prefixes.
const BAN_PREFIX: &str = "ban.";
const OP_PREFIX: &str = "op.";

impl Moderation {
    /// Everything in memory only.
    pub fn memory() -> Self {
        Moderation {
            lists: Arc::new(Mutex::new(Lists::default())),
            db: None,
            kv: None,
            hook: Arc::new(OnceLock::new()),
        }
    }

    /// Operators and key bans in a cluster's bucket, shared by every
    /// node; guests' address bans stay with each node (an address is
    /// where a guest met this node, and such bans are short and in memory
    /// anyway).
    pub(crate) fn clustered(bucket: Arc<Bucket>) -> Self {
        Moderation {
            kv: Some(bucket),
            ..Moderation::memory()
        }
    }

    /// The way for the bucket's watch into the lists.
    pub(crate) fn remote(&self) -> Remote {
        Remote {
            lists: Arc::downgrade(&self.lists),
            hook: Arc::clone(&self.hook),
            folds: Mutex::new(HashMap::new()),
        }
    }

    /// Sets what is done when another node bans or grants; once.
    pub fn on_change(&self, hook: impl Fn(Change) + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    /// Loads the stored operators and bans from the registry's file.
    pub(crate) fn open(db: Arc<Database>, path: PathBuf) -> Result<Self, RegistryError> {
        let err = |detail: String| RegistryError::File {
            path: path.clone(),
            detail,
        };
        let mut lists = Lists::default();
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        for (def, list) in [(OPERATORS, &mut lists.ops), (BANS, &mut lists.bans)] {
            let table = tx.open_table(def).map_err(|e| err(e.to_string()))?;
            for row in table.iter().map_err(|e| err(e.to_string()))? {
                let (fold, entry) = row.map_err(|e| err(e.to_string()))?;
                let entry: Entry = postcard::from_bytes(entry.value())
                    .map_err(|e| err(format!("a damaged operator or ban entry: {e}")))?;
                list.set(fold.value(), Some(entry));
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        Ok(Moderation {
            lists: Arc::new(Mutex::new(lists)),
            db: Some((db, path)),
            kv: None,
            hook: Arc::new(OnceLock::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lists> {
        // Changed only after the file was, in lines that cannot panic
        // halfway: a poisoned lock still holds whole lists.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` was made an operator in chat.
    pub fn is_operator(&self, key: Fingerprint) -> bool {
        self.lock().ops.get_key(key.as_bytes()).is_some()
    }

    /// The ban on `key`, if any.
    pub fn banned(&self, key: Fingerprint) -> Option<Entry> {
        self.lock().bans.get_key(key.as_bytes()).cloned()
    }

    /// The ban on a guest's address, if one is in force at `now_ms`.
    pub fn banned_addr(&self, addr: IpAddr, now_ms: u64) -> Option<AddrBan> {
        let mut lists = self.lock();
        match lists.addrs.get(&addr) {
            Some(b) if b.until_ms > now_ms => Some(b.clone()),
            Some(_) => {
                lists.addrs.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// Makes `entry`'s keys operators, under its name (replacing an
    /// earlier grant to the same name).
    pub fn grant(&self, entry: Entry) -> Result<(), RegistryError> {
        self.put(Kind::Op, entry).map(drop)
    }

    /// Takes operator rights from the keys granted under `target` (a name
    /// or a key); returns the grant taken back.
    pub fn revoke(&self, target: &str) -> Result<Option<Entry>, RegistryError> {
        self.take(Kind::Op, target)
    }

    /// Bans `entry`'s keys.
    pub fn ban(&self, entry: Entry) -> Result<(), RegistryError> {
        self.put(Kind::Ban, entry).map(drop)
    }

    /// Bans a guest's address until `ban.until_ms`.
    pub fn ban_addr(&self, ban: AddrBan) {
        self.lock().addrs.insert(ban.addr, ban);
    }

    /// Lifts the ban on `target`: a banned name, a banned key's
    /// fingerprint, a guest's address, or the name a banned guest used.
    /// Returns what was lifted: the key ban, or the address bans.
    pub fn unban(&self, target: &str) -> Result<Lifted, RegistryError> {
        if let Some(e) = self.take(Kind::Ban, target)? {
            return Ok(Lifted::Keys(e));
        }
        let fold = names::fold(target);
        let addr = target.parse::<IpAddr>().ok();
        let mut lists = self.lock();
        let gone: Vec<AddrBan> = lists
            .addrs
            .values()
            .filter(|b| Some(b.addr) == addr || names::fold(&b.name) == fold)
            .cloned()
            .collect();
        for b in &gone {
            lists.addrs.remove(&b.addr);
        }
        Ok(if gone.is_empty() {
            Lifted::Nothing
        } else {
            Lifted::Addrs(gone)
        })
    }

    /// Every ban in force at `now_ms`: key bans by name, then address bans
    /// by address.
    pub fn list(&self, now_ms: u64) -> (Vec<Entry>, Vec<AddrBan>) {
        let mut lists = self.lock();
        lists.addrs.retain(|_, b| b.until_ms > now_ms);
        let mut keys: Vec<Entry> = lists.bans.by_name.values().cloned().collect();
        keys.sort_by_key(|e| e.at_ms);
        let mut addrs: Vec<AddrBan> = lists.addrs.values().cloned().collect();
        addrs.sort_by_key(|b| b.at_ms);
        (keys, addrs)
    }

    fn put(&self, kind: Kind, entry: Entry) -> Result<Option<Entry>, RegistryError> {
        let fold = names::fold(&entry.name);
        if self.kv.is_some() {
            // A round trip to NATS, without holding up every check.
            self.write(kind, &fold, Some(&entry))?;
            return Ok(kind.list(&mut self.lock()).set(&fold, Some(entry)));
        }
        let mut lists = self.lock();
        self.write(kind, &fold, Some(&entry))?;
        Ok(kind.list(&mut lists).set(&fold, Some(entry)))
    }

    fn take(&self, kind: Kind, target: &str) -> Result<Option<Entry>, RegistryError> {
        let mut lists = self.lock();
        let Some(fold) = kind.list(&mut lists).find(target) else {
            return Ok(None);
        };
        if self.kv.is_some() {
            drop(lists);
            self.write(kind, &fold, None)?;
            return Ok(kind.list(&mut self.lock()).set(&fold, None));
        }
        self.write(kind, &fold, None)?;
        Ok(kind.list(&mut lists).set(&fold, None))
    }

    /// Stores (or, for `None`, deletes) one entry, before the lists change.
    fn write(&self, kind: Kind, fold: &str, entry: Option<&Entry>) -> Result<(), RegistryError> {
        if let Some(bucket) = &self.kv {
            let prefix = match kind {
                Kind::Op => OP_PREFIX,
                Kind::Ban => BAN_PREFIX,
            };
            let key = format!("{prefix}{}", crate::cluster::token(fold));
            let bytes = entry
                .map(postcard::to_allocvec)
                .transpose()
                .map_err(|e| RegistryError::Cluster(e.to_string()))?;
            let store = bucket.store().clone();
            // Last writer wins: a ban or grant replaces the one before.
            let done = bucket.block(async move {
                match bytes {
                    Some(b) => store
                        .put(&key, b.into())
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    None => store.delete(&key).await.map_err(|e| e.to_string()),
                }
            });
            return match done {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(RegistryError::Cluster(e)),
                None => Err(RegistryError::Cluster("NATS did not answer".into())),
            };
        }
        let Some((db, path)) = &self.db else {
            return Ok(());
        };
        let err = |detail: String| RegistryError::File {
            path: path.clone(),
            detail,
        };
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            let def = match kind {
                Kind::Op => OPERATORS,
                Kind::Ban => BANS,
            };
            let mut table = tx.open_table(def).map_err(|e| err(e.to_string()))?;
            match entry {
                Some(e) => {
                    let bytes = postcard::to_allocvec(e).map_err(|e| err(e.to_string()))?;
                    table
                        .insert(fold, bytes.as_slice())
                        .map_err(|e| err(e.to_string()))?;
                }
                None => {
                    table.remove(fold).map_err(|e| err(e.to_string()))?;
                }
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))
    }
}

/// What [`Moderation::unban`] lifted.
#[derive(Debug, PartialEq, Eq)]
pub enum Lifted {
    /// Nothing matched.
    Nothing,
    /// A key ban.
    Keys(Entry),
    /// Address bans (a guest may have come from more than one).
    Addrs(Vec<AddrBan>),
}

#[derive(Clone, Copy)]
enum Kind {
    Op,
    Ban,
}

impl Kind {
    fn list(self, lists: &mut Lists) -> &mut List {
        match self {
            Kind::Op => &mut lists.ops,
            Kind::Ban => &mut lists.bans,
        }
    }
}

/// Whether `key` is an operator: by the server's settings or by `/op`.
pub(crate) fn is_operator(room: &Room, options: &ServerOptions, key: Option<Fingerprint>) -> bool {
    key.is_some_and(|k| options.fixed_operator(k) || room.registry().moderation().is_operator(k))
}

/// Refuses a banned key, or a guest from a banned address, at the hello.
/// A member with a key is judged by its key alone: an address ban is for
/// guests, who have nothing else to be known by.
pub(crate) fn check_banned(room: &Room, peer: &Peer) -> Result<(), Rejection> {
    let m = room.registry().moderation();
    let banned = |detail: String| Rejection {
        reason: RejectReason::Banned,
        detail,
    };
    if let Some(key) = peer.key {
        return match m.banned(key) {
            Some(e) => Err(banned(format!(
                "your key is banned from this server: banned as {:?} by {} on {}{}",
                e.name,
                e.by,
                utc_minute(e.at_ms),
                because(&e.reason)
            ))),
            None => Ok(()),
        };
    }
    match addr_of(peer).and_then(|a| m.banned_addr(a, now_ms())) {
        Some(b) => Err(banned(format!(
            "your address is banned from this server until {}: the guest {:?} was banned from it by {} on {}{}",
            utc_minute(b.until_ms),
            b.name,
            b.by,
            utc_minute(b.at_ms),
            because(&b.reason)
        ))),
        None => Ok(()),
    }
}

/// Carries out an operator's request, answering the asker with a notice,
/// the list, or `Failed` with the command's name.
pub(crate) async fn handle(id: MemberId, op: ModOp, room: &Room, options: &ServerOptions) {
    let what = op.what();
    let Some((me, peer)) = room.peer_of(id) else {
        return;
    };
    let answer = if peer.operator {
        match op {
            ModOp::Bans => Ok(bans(room.registry().moderation())),
            ModOp::Op { name } => op_name(room, options, &me, &name).await,
            ModOp::Deop { name } => deop(room, options, &name).await,
            ModOp::Ban { name, reason } => ban(room, options, &me, &name, &reason).await,
            ModOp::Unban { target } => unban(room, &target).await,
        }
    } else {
        Err(format!(
            "only operators may use /{what}, and you are not one (operators are the host, keys the \
             server was started with --operator, and keys an operator gave /op)"
        ))
    };
    let msg = match answer {
        Ok(msg) => msg,
        Err(reason) => ServerMsg::Failed {
            what: what.into(),
            reason,
        },
    };
    room.reply(id, &msg);
}

/// Who a request is about.
enum Target {
    /// A registered name (or a member with a key), and its keys.
    Keys { name: String, keys: Vec<[u8; 32]> },
    /// A guest in the room: its address (`None`: the host's own link).
    Guest { name: String, addr: Option<IpAddr> },
}

fn target(room: &Room, options: &ServerOptions, name: &str) -> Result<Target, String> {
    if let Some(c) = room.registry().lookup(name, options.name_expiry) {
        return Ok(Target::Keys {
            name: c.name,
            keys: c.keys.iter().map(|d| d.key).collect(),
        });
    }
    match room.peer_named(name) {
        Some((_, name, Peer { key: Some(k), .. })) => Ok(Target::Keys {
            name,
            keys: vec![*k.as_bytes()],
        }),
        Some((_, name, peer)) => Ok(Target::Guest {
            name,
            addr: addr_of(&peer),
        }),
        None => Err(format!(
            "nobody called {name:?} is here, and nobody has registered the name"
        )),
    }
}

/// `/op NAME`: every key the name has now becomes an operator, at once
/// and after a restart.
async fn op_name(
    room: &Room,
    options: &ServerOptions,
    me: &str,
    name: &str,
) -> Result<ServerMsg, String> {
    let (name, keys) = match target(room, options, name)? {
        Target::Guest { name, .. } => {
            return Err(format!(
                "{name} is a guest (no key): operator rights belong to keys"
            ))
        }
        Target::Keys { name, keys } => (name, keys),
    };
    if keys.iter().all(|k| fixed(options, k)) {
        return Err(format!(
            "{name} is already an operator by the server's settings"
        ));
    }
    let entry = Entry {
        name: name.clone(),
        keys: keys.clone(),
        by: me.to_string(),
        at_ms: now_ms(),
        reason: String::new(),
    };
    record(room, move |m| m.grant(entry)).await?;
    room.set_operator(&keys, true);
    if let Some((id, ..)) = room.peer_named(&name) {
        room.reply(
            id,
            &ServerMsg::Notice {
                text: format!("{me} made you an operator: you may /kick, /ban and /op"),
            },
        );
    }
    Ok(notice(format!(
        "{name} is now an operator ({})",
        n_keys(keys.len())
    )))
}

/// `/deop NAME`: takes back what `/op` gave; never what the server's
/// settings gave.
async fn deop(room: &Room, options: &ServerOptions, name: &str) -> Result<ServerMsg, String> {
    let (name, keys) = match target(room, options, name) {
        Ok(Target::Keys { name, keys }) => (name, keys),
        Ok(Target::Guest { name, .. }) => return Err(format!("{name} is not an operator")),
        // The name may be gone while its grant remains: look it up as given.
        Err(_) => (name.to_string(), Vec::new()),
    };
    if keys.iter().any(|k| fixed(options, k)) {
        return Err(format!(
            "{name} is an operator by the server's settings (the host's key, or --operator), \
             which chat cannot take away"
        ));
    }
    let targets: Vec<String> = std::iter::once(name.clone())
        .chain(keys.iter().map(|k| Fingerprint::from_bytes(*k).canonical()))
        .collect();
    let revoked = record(room, move |m| {
        let mut gone = Vec::new();
        for t in &targets {
            if let Some(e) = m.revoke(t)? {
                gone.push(e);
            }
        }
        Ok(gone)
    })
    .await?;
    if revoked.is_empty() {
        return Err(format!("{name} is not an operator"));
    }
    let keys: Vec<[u8; 32]> = revoked.iter().flat_map(|e| e.keys.clone()).collect();
    let dropped: Vec<[u8; 32]> = keys.into_iter().filter(|k| !fixed(options, k)).collect();
    room.set_operator(&dropped, false);
    Ok(notice(format!("{name} is no longer an operator")))
}

/// `/ban NAME [REASON]`: the name's keys (a guest: its address, for
/// `--guest-ban`), and every session with them ends now.
async fn ban(
    room: &Room,
    options: &ServerOptions,
    me: &str,
    name: &str,
    reason: &str,
) -> Result<ServerMsg, String> {
    if names::fold(name) == names::fold(me) {
        return Err("you cannot ban yourself".into());
    }
    let (told, why) = ban_words(me, reason);
    match target(room, options, name)? {
        Target::Keys { name, keys } => {
            if keys.iter().any(|k| fixed(options, k)) {
                return Err(format!(
                    "{name} is an operator by the server's settings (the host's key, or --operator), \
                     and cannot be banned"
                ));
            }
            let m = room.registry().moderation();
            if keys
                .iter()
                .any(|k| m.is_operator(Fingerprint::from_bytes(*k)))
            {
                return Err(format!(
                    "{name} is an operator; take that back first (/deop {name})"
                ));
            }
            let entry = Entry {
                name: name.clone(),
                keys: keys.clone(),
                by: me.to_string(),
                at_ms: now_ms(),
                reason: reason.to_string(),
            };
            record(room, move |m| m.ban(entry)).await?;
            let ended = room.end_matching(
                |p| p.key.is_some_and(|k| keys.contains(k.as_bytes())),
                me,
                &told,
                &why,
            );
            tracing::info!(name = %qchat_proto::text::sanitize(&name), keys = keys.len(), ended, "banned");
            Ok(notice(format!(
                "banned {name} ({}){}",
                n_keys(keys.len()),
                because(reason)
            )))
        }
        Target::Guest {
            addr: None, name, ..
        } => Err(format!(
            "{name} sits at the server (the host's own link) and cannot be banned"
        )),
        Target::Guest {
            name,
            addr: Some(addr),
        } => {
            let now = now_ms();
            let until_ms = now
                .saturating_add(u64::try_from(options.guest_ban.as_millis()).unwrap_or(u64::MAX));
            room.registry().moderation().ban_addr(AddrBan {
                name: name.clone(),
                addr,
                by: me.to_string(),
                at_ms: now,
                until_ms,
                reason: reason.to_string(),
            });
            // Every guest from the address goes: the ban is the address's.
            room.end_matching(
                |p| p.key.is_none() && addr_of(p) == Some(addr),
                me,
                &told,
                &why,
            );
            tracing::info!(%addr, "guest address banned");
            Ok(notice(format!(
                "banned the guest {name}'s address {addr} until {} (guests have no key; the address \
                 ban lasts {} and is forgotten at a restart){}",
                utc_minute(until_ms),
                humanize(options.guest_ban),
                because(reason)
            )))
        }
    }
}

/// What a banned member is told, and what the room is told of it.
fn ban_words(by: &str, reason: &str) -> (String, String) {
    (
        format!("you are banned from this server{}", because(reason)),
        format!("banned by {by}{}", because(reason)),
    )
}

/// Carries out on this node's room what another node's operator did:
/// a ban ends the banned keys' sessions here too, a grant or its taking
/// back changes the rights of the keys' members here. The server's own
/// operators (`--operator`, the host) keep theirs whatever chat does.
pub fn enforce(room: &Arc<Room>) {
    let weak = Arc::downgrade(room);
    room.registry().moderation().on_change(move |change| {
        let Some(room) = weak.upgrade() else {
            return;
        };
        match change {
            Change::Ban(e) => {
                let (told, why) = ban_words(&e.by, &e.reason);
                let ended = room.end_matching(
                    |p| p.key.is_some_and(|k| e.keys.contains(k.as_bytes())),
                    &e.by,
                    &told,
                    &why,
                );
                if ended > 0 {
                    tracing::info!(ended, "banned on another node");
                }
            }
            Change::Op(e, true) => room.set_operator(&e.keys, true),
            Change::Op(e, false) => {
                let options = room.options();
                let keys: Vec<[u8; 32]> =
                    e.keys.into_iter().filter(|k| !fixed(&options, k)).collect();
                room.set_operator(&keys, false);
            }
        }
    });
}

/// `/unban NAME-or-FP-or-ADDRESS`.
async fn unban(room: &Room, target: &str) -> Result<ServerMsg, String> {
    let t = target.to_string();
    match record(room, move |m| m.unban(&t)).await? {
        Lifted::Nothing => Err(format!("{target:?} is not banned (see /bans)")),
        Lifted::Keys(e) => Ok(notice(format!(
            "unbanned {} ({})",
            e.name,
            n_keys(e.keys.len())
        ))),
        Lifted::Addrs(v) => {
            let addrs: Vec<String> = v.iter().map(|b| b.addr.to_string()).collect();
            Ok(notice(format!("unbanned the address {}", addrs.join(", "))))
        }
    }
}

fn bans(m: &Moderation) -> ServerMsg {
    let (keys, addrs) = m.list(now_ms());
    let bans = keys
        .into_iter()
        .map(|e| BanInfo {
            name: e.name,
            keys: e.keys,
            addr: String::new(),
            by: e.by,
            at_ms: e.at_ms,
            until_ms: 0,
            reason: e.reason,
        })
        .chain(addrs.into_iter().map(|b| BanInfo {
            name: b.name,
            keys: Vec::new(),
            addr: b.addr.to_string(),
            by: b.by,
            at_ms: b.at_ms,
            until_ms: b.until_ms,
            reason: b.reason,
        }))
        .collect();
    ServerMsg::Bans { bans }
}

/// Runs a change to the stored lists off the runtime's threads (it
/// commits to the file), and words a failure for the asker.
async fn record<T: Send + 'static>(
    room: &Room,
    f: impl FnOnce(&Moderation) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, String> {
    let registry = Arc::clone(room.registry());
    match tokio::task::spawn_blocking(move || f(registry.moderation())).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            Err("the server cannot record this right now; try again later".into())
        }
        Err(_) => Err("the server could not record this; try again".into()),
    }
}

fn fixed(options: &ServerOptions, key: &[u8; 32]) -> bool {
    options.fixed_operator(Fingerprint::from_bytes(*key))
}

/// The address a member connects from now, in one form for both the ban
/// and the check (an IPv4 address, not its IPv6-mapped spelling).
fn addr_of(peer: &Peer) -> Option<IpAddr> {
    peer.conn
        .as_ref()
        .map(quinn::Connection::remote_address)
        .or(peer.addr)
        .map(|a| a.ip().to_canonical())
}

fn notice(text: String) -> ServerMsg {
    ServerMsg::Notice { text }
}

fn n_keys(n: usize) -> String {
    if n == 1 {
        "1 key".into()
    } else {
        format!("{n} keys")
    }
}

fn because(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

fn humanize(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86_400 == 0 && s > 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn entry(name: &str, keys: &[u8], reason: &str) -> Entry {
        Entry {
            name: name.into(),
            keys: keys.iter().map(|n| [*n; 32]).collect(),
            by: "host".into(),
            at_ms: 1,
            reason: reason.into(),
        }
    }

    #[test]
    fn a_ban_covers_every_key_of_the_name_and_lifts_by_name_or_key() {
        let m = Moderation::memory();
        m.ban(entry("Alice", &[1, 2], "spam")).expect("ban");
        assert_eq!(m.banned(key(1)).map(|e| e.reason), Some("spam".into()));
        assert!(m.banned(key(2)).is_some(), "the other device too");
        assert!(m.banned(key(3)).is_none());
        assert_eq!(m.unban("nobody").expect("unban"), Lifted::Nothing);
        // Any spelling of any of the keys finds the ban.
        let lifted = m.unban(&key(2).read_aloud()).expect("unban");
        assert!(matches!(lifted, Lifted::Keys(e) if e.name == "Alice"));
        assert!(m.banned(key(1)).is_none());
        m.ban(entry("Alice", &[1], "again")).expect("ban");
        assert!(matches!(m.unban("ALICE"), Ok(Lifted::Keys(_))));
        assert!(m.list(0).0.is_empty());
    }

    #[test]
    fn operators_are_granted_and_revoked_by_name_or_key() {
        let m = Moderation::memory();
        m.grant(entry("bob", &[5, 6], "")).expect("grant");
        assert!(m.is_operator(key(5)) && m.is_operator(key(6)));
        assert!(!m.is_operator(key(7)));
        let gone = m.revoke(&key(6).canonical()).expect("revoke");
        assert_eq!(gone.map(|e| e.name), Some("bob".into()));
        assert!(!m.is_operator(key(5)), "every key of the grant");
        assert_eq!(m.revoke("bob").expect("revoke"), None);
    }

    #[test]
    fn an_address_ban_ends_at_its_time_and_lifts_by_name_or_address() {
        let m = Moderation::memory();
        let addr: IpAddr = "192.0.2.7".parse().expect("addr");
        let ban = |name: &str| AddrBan {
            name: name.into(),
            addr,
            by: "host".into(),
            at_ms: 1_000,
            until_ms: 2_000,
            reason: "flood".into(),
        };
        m.ban_addr(ban("guest1"));
        assert!(m.banned_addr(addr, 1_999).is_some());
        assert!(m.banned_addr(addr, 2_000).is_none(), "over");
        assert!(m.list(2_000).1.is_empty());
        m.ban_addr(ban("guest1"));
        assert!(matches!(m.unban("192.0.2.7"), Ok(Lifted::Addrs(v)) if v.len() == 1));
        m.ban_addr(ban("guest1"));
        assert!(matches!(m.unban("GUEST1"), Ok(Lifted::Addrs(_))));
        assert!(m.banned_addr(addr, 1_500).is_none());
    }

    #[test]
    fn bans_and_operators_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || {
            let path = dir.path().join("names.redb");
            let db = Database::create(&path).expect("db");
            Moderation::open(Arc::new(db), path).expect("open")
        };
        {
            let m = open();
            m.ban(entry("mallory", &[9], "spam")).expect("ban");
            m.ban(entry("eve", &[8], "")).expect("ban");
            m.grant(entry("bob", &[5], "")).expect("grant");
            m.grant(entry("carol", &[4], "")).expect("grant");
            assert!(matches!(m.unban("eve"), Ok(Lifted::Keys(_))));
            assert!(m.revoke("carol").expect("revoke").is_some());
        }
        let m = open();
        assert_eq!(
            m.banned(key(9)).map(|e| (e.name, e.reason)),
            Some(("mallory".into(), "spam".into()))
        );
        assert!(m.banned(key(8)).is_none());
        assert!(m.is_operator(key(5)));
        assert!(!m.is_operator(key(4)));
    }
}
