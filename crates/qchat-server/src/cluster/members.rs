//! Who is in each room across the cluster: one entry per member per room
//! in the key-value bucket [`MEMBERS_BUCKET`], written by the member's
//! node, watched by every node.
//!
//! Why a bucket of its own rather than the rooms in each member's
//! names-in-use entry ([`super::names::ONLINE_BUCKET`]): a member's entry
//! there is claimed with compare-and-set at the hello and rewritten by its
//! node alone, so carrying rooms in it would make every join and part a
//! rewrite of the entry the name's ownership rests on, and a room's
//! changes would reach every node as changes of presence. One key per
//! (room, member) keeps a join one small write, lets a node's rewrite of
//! one room's entry never race another room's, and gives each departure
//! its own value to carry the reason. It keeps presence's rules: the
//! bucket's maximum age is the same TTL, each node rewrites its own
//! entries every third of it, and a node that dies stops rewriting, so its
//! members leave every room (with [`super::presence::NODE_GONE`]) once
//! the TTL has passed without a rewrite, as they leave the lobby.
//!
//! A member's leaving is written as a value, not a delete: a delete has no
//! value to say why, and the room's other members are told why. That
//! value expires with the bucket's age like any other.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use qchat_proto::clock::now_ms;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Cluster, ClusterError};
use crate::rooms::{Channel, Rooms};

/// The bucket of rooms' members.
pub const MEMBERS_BUCKET: &str = "qchat_room_members";

/// The entries' format: a version byte, then postcard.
const VERSION: u8 = 1;

/// How many writes are in flight at once: after a failover a node takes
/// in thousands of members, each rejoining its rooms, and one write at a
/// time would make the last of them wait seconds.
const AT_ONCE: usize = 64;

/// One member in one room, as every node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The room, as its creator spelt it.
    pub room: String,
    /// The member's name as it spells it.
    pub name: String,
    /// The node the member is on ([`Cluster::node_id`]).
    pub node: String,
    /// When it entered the room, ms since the Unix epoch.
    pub since_ms: u64,
    /// In the room, or gone from it.
    pub state: InRoom,
}

/// Whether the member is in the room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InRoom {
    /// In it. `renamed`: it came in under this name by a rename, which the
    /// lobby's notice already told everyone of, so its arrival says
    /// nothing.
    In {
        /// Entered by a rename.
        renamed: bool,
    },
    /// Gone, and what the others are told (`None`: nothing, it renamed).
    Gone {
        /// Why it left, as its node's own members were told.
        reason: Option<String>,
    },
}

impl MemberEntry {
    fn encode(&self) -> Option<Bytes> {
        let mut body = vec![VERSION];
        body.extend(postcard::to_allocvec(self).ok()?);
        Some(body.into())
    }

    fn decode(bytes: &[u8]) -> Option<MemberEntry> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }

    fn is_in(&self) -> bool {
        matches!(self.state, InRoom::In { .. })
    }
}

/// The key of `name`'s entry in the room whose token is `room`.
pub fn key(room: &str, name: &str) -> String {
    format!("{room}.{}", super::names::key_of(name))
}

/// Why a member's entry is to be brought in line with its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// It entered or left without more to say (a join, a failed write).
    Changed,
    /// It left, and the others are told `reason`.
    Left(String),
    /// It took this name by a rename.
    RenamedIn,
    /// It gave this name up for `to` by a rename.
    Renamed {
        /// Its new name.
        to: String,
    },
    /// The periodic rewrite: the entry outlives the TTL.
    Refresh,
}

/// An entry waiting for its write.
struct Dirty {
    room: Weak<Channel>,
    name: String,
    why: Why,
    /// Rounds a rename waited for its new name's departure.
    waited: u8,
}

/// How many rounds a rename waits for the departure of a member that
/// renamed and left at once: its leaving is noted just after the room
/// lets it go, so it is there by the next round.
const RENAME_WAITS: u8 = 3;

/// An entry this node wrote, with the revision its next write replaces.
struct Held {
    revision: u64,
    entry: MemberEntry,
    room: Weak<Channel>,
}

/// Another node's entry, and when it was last seen rewritten.
struct Seen {
    entry: MemberEntry,
    at: Instant,
}

/// What another node's change is worth to this node's members of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `name` entered `room` on another node.
    Entered {
        /// The room as spelt.
        room: String,
        /// Who.
        name: String,
    },
    /// `name` left `room` on another node, for `reason`.
    Left {
        /// The room as spelt.
        room: String,
        /// Who.
        name: String,
        /// Why.
        reason: String,
    },
}

/// This node's part of the rooms' members: its own entries, written; the
/// other nodes', watched.
pub struct Members {
    node: String,
    kv: kv::Store,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
    dirty: Mutex<HashMap<String, Dirty>>,
    wake: Notify,
    /// Other nodes' members in rooms: by room token, then by entry key.
    seen: Mutex<HashMap<String, HashMap<String, Seen>>>,
    rooms: OnceLock<Weak<Rooms>>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only whole entries go in or out.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Members {
    /// Opens (or creates) [`MEMBERS_BUCKET`] (entries live `ttl`), and
    /// starts writing this node's entries and watching the others', for
    /// as long as the returned value lives.
    pub async fn start(cluster: &Cluster, ttl: Duration) -> Result<Arc<Members>, ClusterError> {
        let kv = cluster.bucket(MEMBERS_BUCKET, Some(ttl), 1).await?;
        let members = Arc::new(Members {
            node: cluster.node_id().to_string(),
            kv: kv.clone(),
            ttl,
            held: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            seen: Mutex::new(HashMap::new()),
            rooms: OnceLock::new(),
        });
        // What was there before now is history, taken in without notices.
        let mut stream = kv.stream.clone();
        let before = match stream.info().await {
            Ok(info) => info.state.last_sequence,
            Err(e) => {
                tracing::warn!("cannot read the rooms' members bucket's state: {e}");
                0
            }
        };
        tokio::spawn(write_all(Arc::downgrade(&members)));
        tokio::spawn(watch(kv, before, Arc::downgrade(&members)));
        super::every(ttl / 3, Arc::downgrade(&members), |m| {
            m.refresh();
            m.sweep();
            std::future::ready(())
        });
        Ok(members)
    }

    /// Tells `rooms` of the other nodes' members from now on (once).
    pub(crate) fn attach(&self, rooms: Weak<Rooms>) {
        let _ = self.rooms.set(rooms);
    }

    /// The node's rooms, once attached and while they live.
    pub(crate) fn rooms(&self) -> Option<Arc<Rooms>> {
        self.rooms.get().and_then(Weak::upgrade)
    }

    /// Has `name`'s entry in `room` brought in line with the room, soon:
    /// called under the room's lock, so it only notes the wish.
    pub(crate) fn touch(&self, room: &Weak<Channel>, token: &str, name: &str, why: Why) {
        let key = key(token, name);
        {
            let mut dirty = lock(&self.dirty);
            match dirty.get_mut(&key) {
                Some(d) => {
                    d.room = room.clone();
                    d.name = name.to_string();
                    d.why = why;
                }
                None => {
                    dirty.insert(
                        key,
                        Dirty {
                            room: room.clone(),
                            name: name.to_string(),
                            why,
                            waited: 0,
                        },
                    );
                }
            }
        }
        self.wake.notify_one();
    }

    /// Marks every held entry for its rewrite.
    fn refresh(&self) {
        let all: Vec<(String, Weak<Channel>, String)> = lock(&self.held)
            .iter()
            .map(|(k, h)| (k.clone(), h.room.clone(), h.entry.name.clone()))
            .collect();
        {
            let mut dirty = lock(&self.dirty);
            for (key, room, name) in all {
                dirty.entry(key).or_insert(Dirty {
                    room,
                    name,
                    why: Why::Refresh,
                    waited: 0,
                });
            }
        }
        self.wake.notify_one();
    }

    /// Writes one entry as its room now has it: kept (rewritten) while
    /// the member is in the room here, written anew when it entered,
    /// marked gone when it left. Never two writes of one key at once
    /// ([`write_all`] takes each key once per round).
    async fn settle(&self, key: String, d: Dirty) {
        let wanted = d.room.upgrade().and_then(|ch| ch.holds(&d.name));
        let held = lock(&self.held)
            .get(&key)
            .map(|h| (h.revision, h.entry.clone()));
        match (wanted, held) {
            (Some((name, active)), Some((revision, before))) => {
                let entry = MemberEntry { name, ..before };
                match self.update(&key, &entry, revision).await {
                    Ok(revision) => self.keep(key, revision, entry, d.room),
                    Err(true) => {
                        // Another node wrote since: the member is there
                        // now, unless it is back here, connected.
                        lock(&self.held).remove(&key);
                        if active {
                            self.put(key, entry, d.room).await;
                        }
                    }
                    Err(false) => {}
                }
            }
            (Some((name, true)), None) => {
                let Some(ch) = d.room.upgrade() else {
                    return;
                };
                let entry = MemberEntry {
                    room: ch.name().to_string(),
                    name,
                    node: self.node.clone(),
                    since_ms: now_ms(),
                    state: InRoom::In {
                        renamed: d.why == Why::RenamedIn,
                    },
                };
                self.put(key, entry, d.room).await;
            }
            // Away within its grace and never written: nobody learned it
            // was in, and another node may have it now.
            (Some((_, false)), None) | (None, None) => {}
            (None, Some((revision, before))) => {
                lock(&self.held).remove(&key);
                let reason = match d.why {
                    Why::Left(r) => Some(r),
                    Why::Changed | Why::RenamedIn | Why::Renamed { .. } | Why::Refresh => {
                        Some(String::new())
                    }
                };
                let gone = MemberEntry {
                    state: InRoom::Gone { reason },
                    ..before
                };
                // Refused: another node has the member now, and says so.
                let _ = self.update(&key, &gone, revision).await;
            }
        }
    }

    /// Moves a member's entry from its old name to its new one: the new
    /// one written (saying nothing: the lobby tells of renames) before the
    /// old one is marked gone (saying nothing either), so that every node
    /// always lists the member under one name or the other. A member that
    /// left the room under its new name before it was written is gone
    /// under the new name, with the reason it left for (`round`'s): if
    /// that is not noted yet, the rename is given back to wait a round.
    async fn rename(
        &self,
        old_key: String,
        d: Dirty,
        to: String,
        round: &HashMap<String, Dirty>,
    ) -> Option<Dirty> {
        let ch = d.room.upgrade()?;
        // The old name is in the room again (renamed back, or another
        // member took it): an ordinary change.
        if ch.holds(&d.name).is_some() {
            let d = Dirty {
                why: Why::Changed,
                ..d
            };
            self.settle(old_key, d).await;
            return None;
        }
        let (room, _) = old_key.split_once('.')?;
        let new_key = key(room, &to);
        let held_old = lock(&self.held)
            .get(&old_key)
            .map(|h| (h.revision, h.entry.clone()));
        let held_new = lock(&self.held).contains_key(&new_key);
        let (revision, before) = match (held_old, ch.holds(&to)) {
            // Nobody heard of the old name: the new one arrives.
            (None, Some((name, true))) if !held_new => {
                let entry = MemberEntry {
                    room: ch.name().to_string(),
                    name,
                    node: self.node.clone(),
                    since_ms: now_ms(),
                    state: InRoom::In { renamed: false },
                };
                self.put(new_key, entry, d.room).await;
                return None;
            }
            (None, _) => return None,
            (Some(old), _) => old,
        };
        let now = ch.holds(&to);
        let left = match round.get(&new_key).map(|d| &d.why) {
            Some(Why::Left(r)) => Some(r.clone()),
            _ => None,
        };
        if now.is_none() && left.is_none() && d.waited < RENAME_WAITS {
            return Some(Dirty {
                waited: d.waited + 1,
                why: Why::Renamed { to },
                ..d
            });
        }
        lock(&self.held).remove(&old_key);
        let gone = match now {
            Some((name, true)) => {
                if !held_new {
                    let entry = MemberEntry {
                        name,
                        state: InRoom::In { renamed: true },
                        ..before.clone()
                    };
                    self.put(new_key, entry, d.room).await;
                }
                MemberEntry {
                    state: InRoom::Gone { reason: None },
                    ..before
                }
            }
            _ => MemberEntry {
                name: to,
                state: InRoom::Gone {
                    reason: Some(left.unwrap_or_default()),
                },
                ..before
            },
        };
        let _ = self.update(&old_key, &gone, revision).await;
        None
    }

    fn keep(&self, key: String, revision: u64, entry: MemberEntry, room: Weak<Channel>) {
        lock(&self.held).insert(
            key,
            Held {
                revision,
                entry,
                room,
            },
        );
    }

    /// Writes `entry` whatever is there: the member is here now.
    async fn put(&self, key: String, entry: MemberEntry, room: Weak<Channel>) {
        let Some(body) = entry.encode() else {
            return;
        };
        match self.kv.put(&key, body).await {
            Ok(revision) => self.keep(key, revision, entry, room),
            // NATS away: kept as written at no revision, so that the
            // next refresh writes it again.
            Err(e) => {
                tracing::debug!(%key, "cannot write a room member's entry: {e}");
                self.keep(key, 0, entry, room);
            }
        }
    }

    /// Rewrites `key` over `revision`: the new revision, or whether it
    /// failed because another node wrote since (`true`) or NATS failed.
    async fn update(&self, key: &str, entry: &MemberEntry, revision: u64) -> Result<u64, bool> {
        let Some(body) = entry.encode() else {
            return Err(false);
        };
        match self.kv.update(key, body, revision).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(true),
            Err(e) => {
                tracing::debug!(%key, "cannot rewrite a room member's entry: {e}");
                Err(false)
            }
        }
    }

    /// The other nodes' members of the room whose token is `room`, by name
    /// as each spells it, but `except` (any spelling of it).
    pub(crate) fn others(&self, room: &str, except: Option<&str>) -> Vec<String> {
        let except = except.map(|n| key(room, n));
        lock(&self.seen)
            .get(room)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| except.as_ref() != Some(*k))
                    .map(|(_, s)| s.entry.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets another node's entry of `name` in `room`: the member is in
    /// the room on this node now (its own entry, once written, would say
    /// so a moment later; till then it would count twice).
    pub(crate) fn forget(&self, room: &str, name: &str) {
        let k = key(room, name);
        let mut seen = lock(&self.seen);
        if let Some(map) = seen.get_mut(room) {
            map.remove(&k);
            if map.is_empty() {
                seen.remove(room);
            }
        }
    }

    /// How many members the other nodes have in the room `room`.
    pub(crate) fn count(&self, room: &str) -> usize {
        lock(&self.seen).get(room).map_or(0, HashMap::len)
    }

    /// The node `name` is in the room `room` on, when another one.
    pub(crate) fn node_of(&self, room: &str, name: &str) -> Option<(String, String)> {
        let k = key(room, name);
        lock(&self.seen)
            .get(room)
            .and_then(|m| m.get(&k))
            .map(|s| (s.entry.node.clone(), s.entry.name.clone()))
    }

    /// Takes in one change of the bucket; returns the notice it is worth.
    fn apply(&self, e: &kv::Entry, quiet: bool) -> Option<Notice> {
        let (room, _) = e.key.split_once('.')?;
        let now = match e.operation {
            // A name shown to members passes the rules a hello's does,
            // whoever wrote it.
            kv::Operation::Put => Some(
                MemberEntry::decode(&e.value)
                    .filter(|n| qchat_proto::names::validate(&n.name).is_ok())?,
            ),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let mut seen = lock(&self.seen);
        let before = match &now {
            Some(n) if n.node != self.node && n.is_in() => seen
                .entry(room.to_string())
                .or_default()
                .insert(
                    e.key.clone(),
                    Seen {
                        entry: n.clone(),
                        at: Instant::now(),
                    },
                )
                .map(|s| s.entry),
            // This node's own, or a departure: either way no other node
            // has the member in the room any more.
            _ => {
                let map = seen.get_mut(room)?;
                let before = map.remove(&e.key).map(|s| s.entry);
                if map.is_empty() {
                    seen.remove(room);
                }
                before
            }
        };
        drop(seen);
        if quiet {
            return None;
        }
        match (before, now) {
            (None, Some(n))
                if n.node != self.node && n.state == (InRoom::In { renamed: false }) =>
            {
                Some(Notice::Entered {
                    room: n.room,
                    name: n.name,
                })
            }
            // Named as the departure names it: a member that renamed and
            // left before its new name was written leaves under the new.
            (Some(b), Some(n)) if n.node == b.node && !n.is_in() => match n.state {
                InRoom::Gone {
                    reason: Some(reason),
                } => Some(Notice::Left {
                    room: b.room,
                    name: n.name,
                    reason,
                }),
                _ => None,
            },
            (Some(b), None) => Some(Notice::Left {
                room: b.room,
                name: b.name,
                reason: String::new(),
            }),
            _ => None,
        }
    }

    /// Forgets the entries no node rewrote for the TTL, telling the rooms.
    fn sweep(&self) {
        let gone: Vec<MemberEntry> = {
            let mut seen = lock(&self.seen);
            let mut gone = Vec::new();
            for map in seen.values_mut() {
                map.retain(|_, s| {
                    let live = s.at.elapsed() <= self.ttl;
                    if !live {
                        gone.push(s.entry.clone());
                    }
                    live
                });
            }
            seen.retain(|_, m| !m.is_empty());
            gone
        };
        for e in gone {
            self.tell(Notice::Left {
                room: e.room,
                name: e.name,
                reason: super::presence::NODE_GONE.into(),
            });
        }
    }

    /// Hands a notice to the room it is about, if it is open here.
    fn tell(&self, notice: Notice) {
        let Some(rooms) = self.rooms.get().and_then(Weak::upgrade) else {
            return;
        };
        let room = match &notice {
            Notice::Entered { room, .. } | Notice::Left { room, .. } => room,
        };
        if let Some(ch) = rooms.get(room) {
            ch.afar(notice);
        }
    }

    /// How many entries this node holds.
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

/// Writes the entries rooms asked for, a round at a time: every key once
/// per round, many keys at once.
async fn write_all(members: Weak<Members>) {
    // Renames waiting a round for their new name's departure.
    let mut waiting: HashMap<String, Dirty> = HashMap::new();
    loop {
        let Some(m) = members.upgrade() else {
            return;
        };
        let mut round: HashMap<String, Dirty> = std::mem::take(&mut *lock(&m.dirty));
        if round.is_empty() {
            // A wish noted since the drain left a permit: no wait then.
            // Bounded, so that the node's end is noticed.
            let _ = tokio::time::timeout(Duration::from_secs(1), m.wake.notified()).await;
            if waiting.is_empty() {
                continue;
            }
            round = std::mem::take(&mut *lock(&m.dirty));
        }
        // A newer wish for the same key stands (a rewrite is no wish).
        for (k, d) in waiting.drain() {
            match round.get(&k) {
                Some(newer) if newer.why != Why::Refresh => {}
                _ => {
                    round.insert(k, d);
                }
            }
        }
        // Renames first, one by one: each writes two keys, and the new
        // name's own change (in this round too) must find it written.
        let renames: Vec<String> = round
            .iter()
            .filter(|(_, d)| matches!(d.why, Why::Renamed { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        let mut moved = Vec::with_capacity(renames.len());
        for k in renames {
            if let Some(d) = round.remove(&k) {
                moved.push((k, d));
            }
        }
        for (k, d) in moved {
            if let Why::Renamed { to } = d.why.clone() {
                if let Some(d) = m.rename(k.clone(), d, to, &round).await {
                    waiting.insert(k, d);
                }
            }
        }
        futures_util::stream::iter(round)
            .for_each_concurrent(AT_ONCE, |(key, d)| m.settle(key, d))
            .await;
    }
}

/// Follows the bucket for as long as `members` lives, watching again from
/// the last change seen whenever NATS goes away and comes back.
async fn watch(store: kv::Store, before: u64, members: Weak<Members>) {
    let alive = || members.strong_count() > 0;
    super::follow::bucket(store, "the rooms' members", alive, |change| {
        let flow = match members.upgrade() {
            None => ControlFlow::Break(()),
            Some(m) => {
                if let Some(notice) = m.apply(&change, change.revision <= before) {
                    m.tell(notice);
                }
                ControlFlow::Continue(())
            }
        };
        std::future::ready(flow)
    })
    .await;
}

#[cfg(test)]
pub(crate) mod tests {
    //! Two nodes in process over a real nats-server, their rooms' logs,
    //! descriptions and members the cluster's.

    use super::*;
    use crate::cluster::log::JetStreamLog;
    use crate::cluster::names::ONLINE_TTL;
    use crate::cluster::rooms::SharedRooms;
    use crate::cluster::testing::NatsServer;
    use crate::room::{MemberId, Room};
    use crate::rooms::{Actor, StoreFactory};
    use crate::store::Store;
    use crate::ServerOptions;
    use qchat_proto::ServerMsg;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(20);

    /// A node whose other nodes' members count as gone after `ttl`: its
    /// lobby (kept alive by the caller) and its rooms.
    pub(crate) async fn node(nats: &NatsServer, ttl: Duration) -> (Arc<Room>, Arc<Rooms>) {
        let cluster = Cluster::connect_apart(&nats.options())
            .await
            .expect("connects");
        let lobby = Room::new(
            Arc::new(ServerOptions::default()),
            Arc::new(crate::store::MemoryStore::new(100)),
        );
        let shared = SharedRooms::start_with(Arc::clone(&cluster), ttl)
            .await
            .expect("the buckets open");
        let stores: Box<StoreFactory> = Box::new(move |key: &str| {
            let log = JetStreamLog::open_blocking(&cluster, key, 100, None)?;
            Ok(log as Arc<dyn Store>)
        });
        let rooms = Rooms::clustered(&lobby, stores, shared);
        (lobby, rooms)
    }

    pub(crate) fn actor(id: MemberId, name: &str) -> Actor {
        Actor {
            id,
            name: name.into(),
            key: None,
            server_op: false,
        }
    }

    /// Waits (bounded) for the first frame `want` accepts.
    pub(crate) async fn until(
        rx: &mut mpsc::Receiver<Bytes>,
        want: impl Fn(&ServerMsg) -> bool,
    ) -> ServerMsg {
        let wait = async {
            loop {
                let item = rx.recv().await.expect("the queue is open");
                for frame in crate::writer::frames(item) {
                    let msg = ServerMsg::decode(&frame[4..]).expect("a valid frame");
                    if want(&msg) {
                        return msg;
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, wait).await.expect("in time")
    }

    /// The next room join or departure `rx` is told of.
    pub(crate) async fn next_move(rx: &mut mpsc::Receiver<Bytes>) -> ServerMsg {
        until(rx, |m| {
            matches!(
                m,
                ServerMsg::RoomEntered { .. } | ServerMsg::RoomLeft { .. }
            )
        })
        .await
    }

    /// Waits (bounded) until `rooms` counts `n` members in `room`. The
    /// bucket's watch brings other nodes' members in its own time, with no
    /// event to await on this side.
    pub(crate) async fn counts(rooms: &Rooms, asker: &Actor, room: &str, n: u32) {
        let wait = async {
            loop {
                let listed = rooms
                    .list(asker)
                    .into_iter()
                    .find(|r| r.name == room)
                    .map(|r| r.members);
                if listed == Some(n) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("{room} never counted {n}"));
    }

    #[test]
    fn entries_round_trip_and_foreign_bytes_are_refused() {
        let e = MemberEntry {
            room: "#dev".into(),
            name: "alice".into(),
            node: "n1".into(),
            since_ms: 5,
            state: InRoom::Gone {
                reason: Some("bye".into()),
            },
        };
        let body = e.encode().expect("encodes");
        assert_eq!(MemberEntry::decode(&body), Some(e));
        assert_eq!(MemberEntry::decode(&[]), None);
        assert_eq!(MemberEntry::decode(&[9, 1, 2]), None, "another version");
        assert_eq!(MemberEntry::decode(&[VERSION, 0xff]), None);
        assert_ne!(key("r", "Alice"), key("r", "bob"));
        assert_eq!(key("r", "Alice"), key("r", "alice"), "one key per name");
    }

    /// A room's members on two nodes: each node counts and lists both, a
    /// member of the room on one node sees the other's entering, rename
    /// (silently: the lobby tells of renames) and leaving, with the
    /// reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rooms_members_on_every_node_are_its_members_everywhere() {
        let nats = NatsServer::start().await;
        let ttl = ONLINE_TTL;
        let ((_la, a), (_lb, b)) = (node(&nats, ttl).await, node(&nats, ttl).await);
        let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
        let (chb, _) = b.get_or_create("#dev", &bob, 10).expect("created");
        let (tb, mut rb) = crate::room::MemberQueue::channel(64);
        chb.join(&bob, None, &tb, None, 50, 10).expect("joins");
        counts(&a, &alice, "#dev", 1).await;

        let (cha, _) = a.get_or_create("#dev", &alice, 10).expect("opened");
        let (ta, mut ra) = crate::room::MemberQueue::channel(64);
        cha.join(&alice, None, &ta, None, 50, 10).expect("joins");
        match until(&mut ra, |m| matches!(m, ServerMsg::RoomJoined { .. })).await {
            ServerMsg::RoomJoined { members, .. } => assert_eq!(members, ["bob", "alice"]),
            _ => unreachable!(),
        }
        match next_move(&mut rb).await {
            ServerMsg::RoomEntered { room, name } => {
                assert_eq!((room.as_str(), name.as_str()), ("#dev", "alice"))
            }
            other => panic!("{other:?}"),
        }
        counts(&a, &alice, "#dev", 2).await;
        counts(&b, &bob, "#dev", 2).await;

        cha.rename(1, "alicia");
        assert!(cha.leave(1, None, "bye", false));
        match next_move(&mut rb).await {
            ServerMsg::RoomLeft { name, reason, .. } => {
                assert_eq!((name.as_str(), reason.as_str()), ("alicia", "bye"))
            }
            other => panic!("the rename said something: {other:?}"),
        }
        counts(&b, &bob, "#dev", 1).await;
    }

    /// A node that dies stops rewriting its members' entries: on the
    /// other nodes they leave the room, with the words presence uses, once
    /// the TTL has passed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_nodes_members_leave_the_room_after_the_ttl() {
        let nats = NatsServer::start().await;
        let ttl = Duration::from_secs(2);
        let (la, a) = node(&nats, ttl).await;
        let (_lb, b) = node(&nats, ttl).await;
        let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
        let (chb, _) = b.get_or_create("#dev", &bob, 10).expect("created");
        let (tb, mut rb) = crate::room::MemberQueue::channel(64);
        chb.join(&bob, None, &tb, None, 50, 10).expect("joins");
        let (cha, _) = a.get_or_create("#dev", &alice, 10).expect("opened");
        let (ta, _ra) = crate::room::MemberQueue::channel(64);
        cha.join(&alice, None, &ta, None, 50, 10).expect("joins");
        assert!(matches!(
            next_move(&mut rb).await,
            ServerMsg::RoomEntered { .. }
        ));
        // Node A goes, without a word.
        drop((cha, a, la));
        match next_move(&mut rb).await {
            ServerMsg::RoomLeft { name, reason, .. } => {
                assert_eq!(name, "alice");
                assert_eq!(reason, crate::cluster::presence::NODE_GONE);
            }
            other => panic!("{other:?}"),
        }
        counts(&b, &bob, "#dev", 1).await;
    }

    /// A member whose connection to one node dropped and who rejoins on
    /// another is, for the room's members on every node, still there: no
    /// departure, no arrival, and once its first node's grace is over,
    /// still no departure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_moving_between_nodes_neither_leaves_nor_enters() {
        let nats = NatsServer::start().await;
        let ttl = ONLINE_TTL;
        let ((_la, a), (_lb, b)) = (node(&nats, ttl).await, node(&nats, ttl).await);
        let (alice, bob, carol) = (actor(1, "alice"), actor(2, "bob"), actor(3, "carol"));
        let (chb, _) = b.get_or_create("#dev", &bob, 10).expect("created");
        let (tb, mut rb) = crate::room::MemberQueue::channel(64);
        chb.join(&bob, None, &tb, None, 50, 10).expect("joins");
        let (cha, _) = a.get_or_create("#dev", &alice, 10).expect("opened");
        // A has seen bob before carol joins there: otherwise bob's entry,
        // reaching A later, is the first move carol hears of.
        counts(&a, &alice, "#dev", 1).await;
        let (tc, mut rc) = crate::room::MemberQueue::channel(64);
        cha.join(&carol, None, &tc, None, 50, 10).expect("joins");
        assert!(
            matches!(next_move(&mut rb).await, ServerMsg::RoomEntered { name, .. } if name == "carol")
        );
        let (ta, _ra) = crate::room::MemberQueue::channel(64);
        cha.join(&alice, None, &ta, None, 50, 10).expect("joins");
        assert!(
            matches!(next_move(&mut rb).await, ServerMsg::RoomEntered { name, .. } if name == "alice")
        );
        assert!(
            matches!(next_move(&mut rc).await, ServerMsg::RoomEntered { name, .. } if name == "alice")
        );
        // Her connection to A drops; a short grace there.
        let grace = Duration::from_secs(1);
        cha.lose(1, "connection lost", grace);
        // She is back on B.
        let alice_on_b = actor(4, "alice");
        let (ta2, mut ra2) = crate::room::MemberQueue::channel(64);
        chb.join(&alice_on_b, None, &ta2, None, 50, 10)
            .expect("rejoins");
        match until(&mut ra2, |m| matches!(m, ServerMsg::RoomJoined { .. })).await {
            ServerMsg::RoomJoined { members, .. } => {
                let mut members = members;
                members.sort();
                assert_eq!(members, ["alice", "bob", "carol"]);
            }
            _ => unreachable!(),
        }
        // Carol (on A) and bob (on B) next hear of carol's departure, and
        // nothing of alice's move between.
        tokio::time::sleep(grace * 2).await;
        assert!(cha.leave(3, None, "later", false));
        match next_move(&mut rb).await {
            ServerMsg::RoomLeft { name, .. } => assert_eq!(name, "carol"),
            other => panic!("alice's move was told: {other:?}"),
        }
        counts(&a, &alice, "#dev", 2).await;
        assert_eq!(chb.holds("alice"), Some(("alice".into(), true)));
        assert_eq!(cha.holds("alice"), None, "A keeps no place for her");
        for msg in crate::writer::drained(&mut rc) {
            assert!(
                !matches!(&msg, ServerMsg::RoomLeft { name, .. } | ServerMsg::RoomEntered { name, .. } if name == "alice"),
                "carol was told of alice's move: {msg:?}"
            );
        }
    }

    /// What another writer puts in the bucket is not trusted: entries
    /// that do not decode or name nobody valid are passed over, and the
    /// room carries on with the next good one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_entries_are_passed_over() {
        let nats = NatsServer::start().await;
        let (_la, a) = node(&nats, ONLINE_TTL).await;
        let bob = actor(2, "bob");
        let (ch, _) = a.get_or_create("#dev", &bob, 10).expect("created");
        let (tb, mut rb) = crate::room::MemberQueue::channel(64);
        ch.join(&bob, None, &tb, None, 50, 10).expect("joins");
        let other = Cluster::connect(&nats.options()).await.expect("connects");
        let kv = other
            .bucket(MEMBERS_BUCKET, Some(ONLINE_TTL), 1)
            .await
            .expect("the bucket");
        let room = crate::cluster::token(&qchat_proto::names::fold_room("#dev"));
        let entry = |name: &str| MemberEntry {
            room: "#dev".into(),
            name: name.into(),
            node: "elsewhere".into(),
            since_ms: 1,
            state: InRoom::In { renamed: false },
        };
        let put = |k: String, v: Bytes| {
            let kv = kv.clone();
            async move { kv.put(k, v).await.expect("written") }
        };
        put(format!("{room}.a"), Bytes::from_static(&[0xff, 1, 2])).await;
        put(format!("{room}.b"), entry("").encode().expect("encodes")).await;
        put(
            format!("{room}.c"),
            entry("e\u{7}ve").encode().expect("encodes"),
        )
        .await;
        put("nodot".into(), entry("mallory").encode().expect("encodes")).await;
        put(key(&room, "zed"), entry("zed").encode().expect("encodes")).await;
        match next_move(&mut rb).await {
            ServerMsg::RoomEntered { name, .. } => assert_eq!(name, "zed"),
            other => panic!("{other:?}"),
        }
        counts(&a, &bob, "#dev", 2).await;
    }

    /// Not a test but a measurement (run by hand, `--run-ignored only`,
    /// `N` members): how long after the last of N joins on one node the
    /// other node counts them all, i.e. how far the entries' writes and
    /// the watch trail the joins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn measure_how_far_the_other_node_trails_a_burst_of_joins() {
        let nats = NatsServer::start().await;
        let ((_la, a), (_lb, b)) = (node(&nats, ONLINE_TTL).await, node(&nats, ONLINE_TTL).await);
        let n: u64 = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let (ch, _) = a
            .get_or_create("#big", &actor(0, "m0"), 10)
            .expect("created");
        let mut queues = Vec::new();
        let start = std::time::Instant::now();
        for i in 1..=n {
            let (tx, rx) = crate::room::MemberQueue::channel(8);
            ch.join(&actor(i, &format!("m{i}")), None, &tx, None, 0, usize::MAX)
                .expect("joins");
            queues.push((tx, rx));
        }
        let joined = start.elapsed();
        let asker = actor(u64::MAX, "asker");
        counts(&b, &asker, "#big", u32::try_from(n).expect("fits")).await;
        let seen = start.elapsed();
        println!(
            "{n} joins on one node: {joined:?}; all counted on the other {:?} after the last",
            seen.saturating_sub(joined)
        );
    }
}
