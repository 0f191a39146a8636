//! Rooms besides `#lobby`: each its own log and its own lock, so rooms
//! never wait for each other's members; one log writer for all of them
//! ([`crate::log::run_shared_writer`]), which stores whatever any room has
//! queued in one commit and then publishes each room's part.
//!
//! `#lobby` is [`Room`] itself — the members, their names and connections,
//! the reconnect grace — and every member is in it. A room here ([`Channel`])
//! only holds which of those members are in it (a weak handle to each one's
//! queue, so leaving the lobby closes the queue whatever rooms still list
//! it), its own log ([`Store`], written by the rooms' shared writer) and
//! the in-memory window of its newest messages, its topic, operators,
//! invite-only flag and invitations. The map of rooms ([`Rooms`]) is behind
//! a read-write lock taken only to find, create or list a room; a session
//! keeps an `Arc` to each room it is in, so saying something in a room
//! touches that room's lock alone.
//!
//! What a room is (name, topic, operators, invite-only, invitations)
//! survives a restart in one small file beside the log, `rooms/rooms.meta`,
//! rewritten atomically whenever it changes (on a node of a cluster, in
//! the cluster's bucket instead: [`crate::cluster::rooms`]); every room's
//! messages are in one file, `rooms/rooms.redb`, each room in tables of
//! its own ([`crate::store::SharedRedb`]). Who is in a room is not stored:
//! a client rejoins each of its rooms, with its resume point, right after
//! every welcome. On a node of a cluster, each member's place in each room
//! is shared with the other nodes while it lasts
//! ([`crate::cluster::members`]), so a room's list, count and notices are
//! the cluster's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use bytes::Bytes;
use qchat_proto::{names, Proof, ResumePoint, RoomInfo, ServerMsg};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::cluster::forward::Afar;
use crate::cluster::members::{Notice, Why};
use crate::cluster::rooms::{Change, CreateResult, Record, SharedRooms};
use crate::log::{Log, LogItem, Pending, RoomItem};
use crate::metrics::Metrics;
use crate::room::{Ending, MemberId, MemberQueue, Room};
use crate::store::{Appended, Entry, NewEntry, Store, StoreError};

/// Makes (or opens) the log of the room whose folded name is given.
pub type StoreFactory = dyn Fn(&str) -> Result<Arc<dyn Store>, StoreError> + Send + Sync;

/// Who a room's operator is: a key when the member had one, otherwise a
/// (folded) name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OpId {
    Key([u8; 32]),
    Name(String),
}

/// What survives a restart of one room (in a cluster: what every node
/// shares of it, [`crate::cluster::rooms`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    name: String,
    topic: String,
    ops: Vec<OpId>,
    invite_only: bool,
    /// Folded names.
    invited: Vec<String>,
}

/// Who is asking, as a room needs to know it.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The member.
    pub id: MemberId,
    /// Its name now.
    pub name: String,
    /// Its key, if it has one.
    pub key: Option<[u8; 32]>,
    /// Whether it is a server operator (may do anything in every room).
    pub server_op: bool,
}

impl Actor {
    fn op_id(&self) -> OpId {
        match self.key {
            Some(k) => OpId::Key(k),
            None => OpId::Name(names::fold(&self.name)),
        }
    }
}

/// Every room but the lobby.
pub struct Rooms {
    map: RwLock<HashMap<String, Arc<Channel>>>,
    stores: Box<StoreFactory>,
    /// Where the rooms' descriptions are kept; `None`: memory only.
    meta: Option<PathBuf>,
    /// Serialises rewrites of the description file.
    saving: Mutex<()>,
    lobby: Weak<Room>,
    metrics: Metrics,
    /// The queue of the one writer of every room's log.
    queue: mpsc::Sender<RoomItem<Channel>>,
    /// The cluster's rooms, when the server is a node of one: the rooms'
    /// descriptions are then there, not in `meta`.
    shared: Option<Arc<SharedRooms>>,
}

impl Rooms {
    /// Rooms whose logs `stores` makes and whose descriptions live in
    /// `meta` (`None`: in memory). Rooms described there are opened now.
    pub fn open(
        lobby: &Arc<Room>,
        stores: Box<StoreFactory>,
        meta: Option<PathBuf>,
    ) -> Result<Arc<Self>, StoreError> {
        let rooms = Rooms::build(
            Arc::downgrade(lobby),
            lobby.metrics().clone(),
            stores,
            meta,
            None,
        );
        if let Some(path) = &rooms.meta {
            for m in load(path)? {
                let key = names::fold_room(&m.name);
                let ch = rooms.channel(&key, m, 0)?;
                rooms.write().insert(key, ch);
            }
        }
        Ok(rooms)
    }

    /// Rooms in memory only, their logs too (`--store memory`, tests).
    pub fn memory(lobby: Weak<Room>, metrics: Metrics) -> Arc<Self> {
        let keep = qchat_proto::limits::HISTORY_KEEP;
        let stores: Box<StoreFactory> =
            Box::new(move |_| Ok(Arc::new(crate::store::MemoryStore::new(keep)) as Arc<dyn Store>));
        Rooms::build(lobby, metrics, stores, None, None)
    }

    /// The rooms of a node of a cluster: their logs from `stores`, their
    /// descriptions from the cluster's bucket. A room is opened on this
    /// node when one of its members first joins it here.
    pub fn clustered(
        lobby: &Arc<Room>,
        stores: Box<StoreFactory>,
        shared: Arc<SharedRooms>,
    ) -> Arc<Self> {
        let rooms = Rooms::build(
            Arc::downgrade(lobby),
            lobby.metrics().clone(),
            stores,
            None,
            Some(Arc::clone(&shared)),
        );
        shared.attach(Arc::downgrade(&rooms));
        rooms
    }

    fn build(
        lobby: Weak<Room>,
        metrics: Metrics,
        stores: Box<StoreFactory>,
        meta: Option<PathBuf>,
        shared: Option<Arc<SharedRooms>>,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(qchat_proto::limits::LOG_QUEUE);
        start_writer(rx);
        Arc::new(Rooms {
            map: RwLock::new(HashMap::new()),
            stores,
            meta,
            saving: Mutex::new(()),
            lobby,
            metrics,
            queue,
            shared,
        })
    }

    /// Another node (or this one) changed a room in the cluster's bucket:
    /// the room, if open here, takes the change and tells its members.
    pub(crate) fn apply_shared(&self, rev: u64, rec: Record) {
        let ch = self.read().get(&names::fold_room(&rec.meta.name)).cloned();
        if let Some(ch) = ch {
            // Those in the room when the change arrived, taken before its
            // members are told: one who leaves on hearing it was in it.
            let closed = (rec.change == Change::Mode && rec.meta.invite_only)
                .then(|| (rec.by.clone(), ch.members_not_invited()));
            ch.apply(rev, rec);
            if let Some((by, here)) = closed {
                ch.invite_members_here(by, here);
            }
        }
    }

    /// Empties every room of members but `keep` (the server sent the
    /// others away).
    pub fn clear_members(&self, keep: &[MemberId]) {
        for ch in self.read().values() {
            let mut st = ch.lock();
            let mut gone: Vec<String> = Vec::new();
            st.members.retain(|id, m| {
                let stays = keep.contains(id);
                if !stays {
                    gone.push(m.name.clone());
                }
                stays
            });
            gone.extend(st.away.drain().map(|(_, (name, _))| name));
            drop(st);
            for name in gone {
                ch.touch(&name, Why::Changed);
            }
        }
    }

    /// The lobby, while the server lives.
    pub(crate) fn lobby(&self) -> Option<Arc<Room>> {
        self.lobby.upgrade()
    }

    /// Waits until everything queued for any room's log before now is
    /// stored and published (the server is stopping: what members said
    /// should reach them, acknowledged, first).
    pub async fn flush(&self) {
        let (tx, done) = tokio::sync::oneshot::channel();
        if self
            .queue
            .send((Weak::new(), LogItem::Barrier(tx)))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    fn channel(&self, key: &str, meta: Meta, rev: u64) -> Result<Arc<Channel>, StoreError> {
        let store = (self.stores)(key)?;
        let published = store.last_id();
        let ch = Arc::new_cyclic(|me| Channel {
            name: meta.name.clone(),
            key: key.to_string(),
            state: Mutex::new(ChanState {
                members: BTreeMap::new(),
                published,
                recent: VecDeque::new(),
                meta,
                rev,
                away: HashMap::new(),
            }),
            store,
            log: RoomQueue {
                tx: self.queue.clone(),
                room: me.clone(),
            },
            lobby: self.lobby.clone(),
            metrics: self.metrics.clone(),
            shared: self.shared.clone(),
            token: match self.shared {
                Some(_) => crate::cluster::token(key),
                None => String::new(),
            },
        });
        crate::cluster::feed::start(&ch);
        Ok(ch)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Channel>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Channel>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The room called `room` (as the same name), if it exists.
    pub fn get(&self, room: &str) -> Option<Arc<Channel>> {
        self.read().get(&names::fold_room(room)).cloned()
    }

    /// The room called `room`, created with `creator` as its operator if
    /// it does not exist (`true`: it was created, and the descriptions
    /// need saving). Refused past `max` rooms.
    pub fn get_or_create(
        &self,
        room: &str,
        creator: &Actor,
        max: usize,
    ) -> Result<(Arc<Channel>, bool), String> {
        let key = names::fold_room(room);
        if let Some(ch) = self.read().get(&key) {
            return Ok((Arc::clone(ch), false));
        }
        let meta = Meta {
            name: room.to_string(),
            topic: String::new(),
            ops: vec![creator.op_id()],
            invite_only: false,
            invited: Vec::new(),
        };
        let most = || format!("this server has its most rooms ({max}); join one of /rooms instead");
        // In a cluster the room may exist on other nodes: it is the
        // cluster's, created by whichever node's create landed first, and
        // the limit counts the cluster's rooms.
        let (meta, rev, created) = match &self.shared {
            None => (meta, 0, true),
            Some(shared) => {
                let token = crate::cluster::token(&key);
                let (known, count) = shared.known(&token);
                if !known && count + 1 >= max {
                    return Err(most());
                }
                let rec = Record {
                    meta,
                    by: creator.name.clone(),
                    change: Change::Created,
                };
                match shared.create(&token, &rec)? {
                    CreateResult::Created(rev) => (rec.meta, rev, true),
                    CreateResult::Exists(rev, theirs) => (theirs.meta, rev, false),
                }
            }
        };
        let mut map = self.write();
        if let Some(ch) = map.get(&key) {
            return Ok((Arc::clone(ch), false));
        }
        // The lobby counts as one of the server's rooms.
        if self.shared.is_none() && map.len() + 1 >= max {
            return Err(most());
        }
        let ch = self
            .channel(&key, meta, rev)
            .map_err(|e| format!("the server could not create the room: {e}"))?;
        map.insert(key, Arc::clone(&ch));
        Ok((ch, created))
    }

    /// The rooms `asker` may see: the public ones, and invite-only ones it
    /// is in, invited to or operates; a server operator sees every one.
    /// In a cluster, every room of the cluster, its members on every node
    /// counted.
    pub fn list(&self, asker: &Actor) -> Vec<RoomInfo> {
        let mut rooms: Vec<RoomInfo> = match &self.shared {
            None => self
                .read()
                .values()
                .filter_map(|ch| ch.info_for(asker))
                .collect(),
            Some(shared) => {
                let open = self.read();
                shared
                    .all()
                    .into_iter()
                    .filter_map(|(_, rec)| {
                        let key = names::fold_room(&rec.meta.name);
                        match open.get(&key) {
                            Some(ch) => ch.info_for(asker),
                            None => {
                                let afar = shared.members().count(&crate::cluster::token(&key));
                                info(&rec.meta, asker, false, afar)
                            }
                        }
                    })
                    .collect()
            }
        };
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// Rooms now, the lobby not counted.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are none besides the lobby.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every room's description, replacing the file atomically.
    /// Call off the runtime's threads (it syncs the file).
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(path) = &self.meta else {
            return Ok(());
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Meta> = self
            .read()
            .values()
            .map(|ch| ch.lock().meta.clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        save(path, &all)
    }
}

/// How `asker` sees a room described by `meta` (`inside`: it is in it),
/// `members` counted: nothing if the room is hidden from it.
fn info(meta: &Meta, asker: &Actor, inside: bool, members: usize) -> Option<RoomInfo> {
    let visible = !meta.invite_only
        || is_op(meta, asker)
        || inside
        || meta.invited.contains(&names::fold(&asker.name));
    visible.then(|| RoomInfo {
        name: meta.name.clone(),
        members: u32::try_from(members).unwrap_or(u32::MAX),
        topic: meta.topic.clone(),
        invite_only: meta.invite_only,
    })
}

/// Whether `who` may govern a room described by `meta`.
fn is_op(meta: &Meta, who: &Actor) -> bool {
    who.server_op || meta.ops.contains(&who.op_id())
}

/// The descriptions' file format: a version byte, then postcard.
const META_VERSION: u8 = 1;

fn load(path: &Path) -> Result<Vec<Meta>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
        }
    };
    match bytes.split_first() {
        Some((&META_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            detail: format!("the rooms' descriptions do not decode: {e}"),
        }),
        _ => Err(StoreError::Open {
            path: path.to_path_buf(),
            detail: "not a rooms file this version knows".into(),
        }),
    }
}

fn save(path: &Path, all: &[Meta]) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut body = vec![META_VERSION];
    body.extend(postcard::to_allocvec(all).map_err(|e| StoreError::Io(e.to_string()))?);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&body).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// One room's way into the rooms' shared log writer: the writer's queue,
/// each item marked with the room.
pub struct RoomQueue {
    tx: mpsc::Sender<RoomItem<Channel>>,
    room: Weak<Channel>,
}

impl RoomQueue {
    /// Queues `item` for the room's log, waiting while the queue is full;
    /// an error (giving the item back) once the writer is gone.
    pub async fn send(&self, item: LogItem) -> Result<(), mpsc::error::SendError<LogItem>> {
        self.tx
            .send((self.room.clone(), item))
            .await
            .map_err(|e| mpsc::error::SendError(e.0 .1))
    }
}

/// One room besides the lobby.
pub struct Channel {
    /// As its creator spelt it.
    name: String,
    /// Its folded name ([`names::fold_room`]), made once: folding is
    /// Unicode normalisation and a confusables table, too dear per line.
    key: String,
    state: Mutex<ChanState>,
    store: Arc<dyn Store>,
    log: RoomQueue,
    lobby: Weak<Room>,
    metrics: Metrics,
    /// The cluster's rooms, when the server is a node of one.
    shared: Option<Arc<SharedRooms>>,
    /// The room's key in the cluster's bucket ([`crate::cluster::token`]
    /// of its folded name); empty outside a cluster.
    token: String,
}

struct ChanState {
    /// Keyed by id, so iteration is join order.
    members: BTreeMap<MemberId, ChanMember>,
    /// The newest id shown to the room.
    published: u64,
    /// The newest published messages (see the lobby's window).
    recent: VecDeque<Entry>,
    meta: Meta,
    /// The revision of the cluster's entry `meta` is (0 outside a
    /// cluster): an older one arriving late is not applied.
    rev: u64,
    /// Members whose connection dropped, by folded name: the name as
    /// spelt and the member it was. Still in the room for everyone else
    /// until the lobby's grace ends, as in the lobby.
    away: HashMap<String, (String, MemberId)>,
}

struct ChanMember {
    name: String,
    /// Weak: the lobby holds the queue; once the member leaves it, the
    /// queue closes even if a room still lists the member for a moment.
    outbox: mpsc::WeakSender<Bytes>,
    /// The member's lobby ending, for the frames its queue holds beyond one
    /// per item (the lobby's fan-out hands over several at once).
    ending: Arc<Ending>,
    instance: Option<[u8; 16]>,
}

impl ChanMember {
    /// Queues one frame in the member's lobby queue, counted against its
    /// bound like every frame there ([`crate::writer::Backlog`]).
    fn offer(&self, frame: Bytes) -> Result<(), TrySendError<Bytes>> {
        match self.outbox.upgrade() {
            Some(tx) => self.ending.backlog().offer(&tx, frame),
            None => Err(TrySendError::Closed(frame)),
        }
    }
}

/// Invitations one room keeps at most.
const MAX_INVITED: usize = 1_000;

/// How many messages a room keeps in memory for joins and resumes.
const RECENT: usize = 1024;

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.name).finish()
    }
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room's name, as its creator spelt it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `room` names this room: as spelt, or as the same name.
    pub fn is_called(&self, room: &str) -> bool {
        self.name == room || self.key == names::fold_room(room)
    }

    /// Its folded name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The queue to the rooms' log writer, for this room.
    pub fn log_queue(&self) -> &RoomQueue {
        &self.log
    }

    fn is_op(st: &ChanState, who: &Actor) -> bool {
        is_op(&st.meta, who)
    }

    fn info_for(&self, asker: &Actor) -> Option<RoomInfo> {
        let st = self.lock();
        let afar = self
            .shared
            .as_ref()
            .map_or(0, |s| s.members().count(&self.token));
        info(
            &st.meta,
            asker,
            st.members.contains_key(&asker.id),
            st.members.len() + st.away.len() + afar,
        )
    }

    /// The cluster's other nodes' members of the room (none outside a
    /// cluster), but `except`. A member moving to this node may be listed
    /// under both for the moment its entry takes to come back from NATS;
    /// not worth folding every name of the room to hide.
    fn afar_members(&self, except: Option<&str>) -> Vec<String> {
        match &self.shared {
            Some(shared) => shared.members().others(&self.token, except),
            None => Vec::new(),
        }
    }

    /// The cluster's rooms, when the server is a node of one.
    pub(crate) fn shared(&self) -> Option<&Arc<SharedRooms>> {
        self.shared.as_ref()
    }

    /// Has the cluster's entry of `name` in this room brought in line with
    /// the room (nothing outside a cluster).
    fn touch(&self, name: &str, why: Why) {
        if let Some(shared) = &self.shared {
            shared
                .members()
                .touch(&self.log.room, &self.token, name, why);
        }
    }

    /// Whether `name` (any spelling of it) is in the room on this node:
    /// its name as spelt, and whether it is connected (`false`: within its
    /// grace after its connection dropped).
    pub(crate) fn holds(&self, name: &str) -> Option<(String, bool)> {
        let st = self.lock();
        // As spelt: a member is noted under the name the room has for it
        // (one fold, not one per member, under the room's lock).
        if st.members.values().any(|m| m.name == name) {
            return Some((name.to_string(), true));
        }
        st.away
            .get(&names::fold(name))
            .map(|(n, _)| (n.clone(), false))
    }

    /// Another node's member entered or left the room: this node's
    /// members are told as they are of their own node's. Nothing when the
    /// member is in the room here (it moved here, and the room spoke for
    /// it already); one whose place was kept here after its connection
    /// dropped and that entered on another node is there now, silently.
    pub(crate) fn afar(&self, notice: Notice) {
        let mut st = self.lock();
        let (frame, name) = match notice {
            Notice::Entered { name, .. } => {
                let key = names::fold(&name);
                if st.away.remove(&key).is_some() {
                    return;
                }
                let frame = ServerMsg::RoomEntered {
                    room: self.name.clone(),
                    name: name.clone(),
                };
                (frame, name)
            }
            Notice::Left { name, reason, .. } => {
                st.away.remove(&names::fold(&name));
                let frame = ServerMsg::RoomLeft {
                    room: self.name.clone(),
                    name: name.clone(),
                    reason,
                };
                (frame, name)
            }
        };
        // As spelt: a member moving between nodes keeps its spelling.
        if st.members.values().any(|m| m.name == name) {
            return;
        }
        let slow = self.broadcast(&st, &frame.to_frame(), None);
        drop(st);
        self.evict(slow);
    }

    /// Adds `who` (whose lobby queue is `queue`) to the room: the
    /// [`ServerMsg::RoomJoined`], the replay and its end go to it, and the
    /// room hears that it entered. Refused (with the reason) if it is in
    /// already, the room is invite-only and it is not invited, or the room
    /// is full.
    pub fn join(
        &self,
        who: &Actor,
        instance: Option<[u8; 16]>,
        queue: &MemberQueue,
        resume: Option<ResumePoint>,
        history: usize,
        max_members: usize,
    ) -> Result<(), String> {
        self.refresh();
        let mut st = self.lock();
        if st.members.contains_key(&who.id) {
            return Err(format!("you are in {} already", self.name));
        }
        let op = Self::is_op(&st, who);
        let away = st.away.contains_key(&names::fold(&who.name));
        if st.meta.invite_only && !op && !away && !st.meta.invited.contains(&names::fold(&who.name))
        {
            return Err(format!(
                "{} is invite-only, and nobody invited you (its operators can, with /invite)",
                self.name
            ));
        }
        // Back from another node (its own died, or its connection moved):
        // for the others it never left.
        let moved = self
            .shared
            .as_ref()
            .is_some_and(|s| s.members().node_of(&self.token, &who.name).is_some());
        let afar = self.afar_members(moved.then_some(who.name.as_str()));
        if st.members.len() + afar.len() >= max_members && !who.server_op {
            return Err(format!("{} is full ({max_members} members)", self.name));
        }
        let upto = st.published;
        // What the queue can still take, less the two frames around the
        // replay: a replay that does not fit is cut short (and counted as
        // missed), never a reason to drop the member.
        let (outbox, backlog) = (&queue.tx, queue.ending.backlog());
        let room_for = backlog.room(outbox).saturating_sub(2);
        let (replay, resumed, missed) = match &resume {
            Some(p) if p.log_id == self.store.log_id() => {
                let after = p.after.min(upto);
                let got = self.read_log(&st, after, upto, room_for);
                let missed = (upto - after).saturating_sub(got.len() as u64);
                (got, true, missed)
            }
            _ => (self.read_log(&st, 0, upto, history.min(room_for)), false, 0),
        };
        // Back within its grace: for the others it never left.
        let returning = st.away.remove(&names::fold(&who.name)).is_some() || moved;
        let mut members: Vec<String> = st
            .members
            .values()
            .map(|m| m.name.clone())
            .chain(st.away.values().map(|a| a.0.clone()))
            .chain(afar)
            .collect();
        members.push(who.name.clone());
        let joined = ServerMsg::RoomJoined {
            room: self.name.clone(),
            log_id: self.store.log_id(),
            last_id: upto,
            topic: st.meta.topic.clone(),
            members,
            operator: op,
            invite_only: st.meta.invite_only,
        };
        if backlog.offer(outbox, joined.to_frame()).is_err() {
            return Err("the server could not queue the room for you; try again".into());
        }
        let count = replay.len() as u64;
        for e in replay {
            let msg = ServerMsg::RoomHistory {
                room: self.name.clone(),
                id: e.id,
                from: e.from,
                text: e.text,
                time_ms: e.time_ms,
                action: e.action,
                proof: e.proof.map(|p| *p),
            };
            let _ = backlog.offer(outbox, msg.to_frame());
        }
        let done = ServerMsg::RoomReplayed {
            room: self.name.clone(),
            resumed,
            count,
            missed,
        };
        let _ = backlog.offer(outbox, done.to_frame());
        let slow = if returning {
            Vec::new()
        } else {
            let entered = ServerMsg::RoomEntered {
                room: self.name.clone(),
                name: who.name.clone(),
            }
            .to_frame();
            self.broadcast(&st, &entered, None)
        };
        st.members.insert(
            who.id,
            ChanMember {
                name: who.name.clone(),
                outbox: outbox.downgrade(),
                ending: Arc::clone(&queue.ending),
                instance,
            },
        );
        drop(st);
        if moved {
            if let Some(shared) = &self.shared {
                shared.members().forget(&self.token, &who.name);
            }
        }
        self.touch(&who.name, Why::Changed);
        self.evict(slow);
        Ok(())
    }

    /// Reads the log for a join: from the window when it covers the
    /// request, otherwise from the store.
    fn read_log(&self, st: &ChanState, after: u64, upto: u64, max: usize) -> Vec<Entry> {
        if max == 0 || upto <= after {
            return Vec::new();
        }
        let from = (after + 1).max(upto.saturating_sub(max as u64).saturating_add(1));
        if st.recent.front().is_some_and(|e| e.id <= from) {
            return st.recent.iter().filter(|e| e.id >= from).cloned().collect();
        }
        match self.store.read(after, upto, max) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot replay a room's log: {e}");
                Vec::new()
            }
        }
    }

    /// Removes member `id`; `by` kicked it (`None`: it left), and `reason`
    /// is shown to the room. `tell`: the member itself is told it is out
    /// (not when its connection is gone). `false` if it was not in.
    pub fn leave(&self, id: MemberId, by: Option<&str>, reason: &str, tell: bool) -> bool {
        let mut st = self.lock();
        let Some(m) = st.members.remove(&id) else {
            return false;
        };
        if tell {
            let parted = ServerMsg::Parted {
                room: self.name.clone(),
                by: by.unwrap_or_default().to_string(),
                reason: reason.to_string(),
            };
            let _ = m.offer(parted.to_frame());
        }
        let why = match by {
            Some(by) if reason.is_empty() => format!("kicked by {by}"),
            Some(by) => format!("kicked by {by}: {reason}"),
            None => reason.to_string(),
        };
        let left = ServerMsg::RoomLeft {
            room: self.name.clone(),
            name: m.name.clone(),
            reason: why.clone(),
        }
        .to_frame();
        let slow = self.broadcast(&st, &left, None);
        drop(st);
        self.touch(&m.name, Why::Left(why));
        self.evict(slow);
        true
    }

    /// Member `id`'s connection dropped: it stays in the room for the
    /// others (nobody is told) for `grace`, the time the lobby keeps its
    /// name; if it has not rejoined by then, the room hears it left with
    /// `reason`. No grace: it leaves now.
    pub fn lose(self: &Arc<Self>, id: MemberId, reason: &str, grace: std::time::Duration) {
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(rt)) = (!grace.is_zero(), runtime) else {
            self.leave(id, None, reason, false);
            return;
        };
        let key = {
            let mut st = self.lock();
            let Some(m) = st.members.remove(&id) else {
                return;
            };
            let key = names::fold(&m.name);
            st.away.insert(key.clone(), (m.name, id));
            key
        };
        let me = Arc::downgrade(self);
        let reason = reason.to_string();
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(ch) = me.upgrade() {
                ch.expire(&key, id, &reason);
            }
        });
    }

    /// The grace of the member that was `was`, away under `key`, is over.
    fn expire(&self, key: &str, was: MemberId, reason: &str) {
        let mut st = self.lock();
        if st.away.get(key).map(|a| a.1) != Some(was) {
            return;
        }
        let Some((name, _)) = st.away.remove(key) else {
            return;
        };
        let left = ServerMsg::RoomLeft {
            room: self.name.clone(),
            name: name.clone(),
            reason: reason.to_string(),
        }
        .to_frame();
        let slow = self.broadcast(&st, &left, None);
        drop(st);
        self.touch(&name, Why::Left(reason.to_string()));
        self.evict(slow);
    }

    /// Whether member `id` is in the room.
    pub fn has(&self, id: MemberId) -> bool {
        self.lock().members.contains_key(&id)
    }

    /// The member in the room under `name`, as the same name.
    fn member_named(st: &ChanState, name: &str) -> Option<MemberId> {
        let key = names::fold(name);
        st.members
            .iter()
            .find(|(_, m)| names::fold(&m.name) == key)
            .map(|(id, _)| *id)
    }

    /// A member's new name, shown in the room's lists from now on.
    pub fn rename(&self, id: MemberId, new: &str) {
        let old = match self.lock().members.get_mut(&id) {
            Some(m) => std::mem::replace(&mut m.name, new.to_string()),
            None => return,
        };
        if self.shared.is_none() {
            return;
        }
        // The lobby's notice tells every node's members of the new name.
        if names::fold(&old) != names::fold(new) {
            self.touch(
                &old,
                Why::Renamed {
                    to: new.to_string(),
                },
            );
        }
        self.touch(new, Why::RenamedIn);
    }

    /// Takes a message from member `id` for the room's log; `None` if it
    /// is not in the room.
    pub fn submit(
        &self,
        id: MemberId,
        seq: u64,
        text: String,
        action: bool,
        proof: Option<Box<Proof>>,
    ) -> Option<Pending> {
        let st = self.lock();
        let m = st.members.get(&id)?;
        Some(Pending::said(
            id,
            m.instance,
            m.name.clone(),
            seq,
            text,
            action,
            proof,
        ))
    }

    /// `/topic`: the room's operators (and server operators) only.
    pub fn set_topic(&self, who: &Actor, text: &str) -> Result<(), String> {
        let name = &self.name;
        self.modify(who, Change::Topic, |meta| {
            if !is_op(meta, who) {
                return Err(format!("only {name}'s operators can set its topic"));
            }
            meta.topic = text.to_string();
            Ok(())
        })
    }

    /// `/room invite-only on|off`: operators only.
    pub fn set_invite_only(&self, who: &Actor, on: bool) -> Result<(), String> {
        let name = &self.name;
        // Those in the room on this node now are as good as invited: a
        // reconnect, or the server's restart, must not lock them out.
        let here: Vec<String> = self
            .lock()
            .members
            .values()
            .map(|m| names::fold(&m.name))
            .collect();
        self.modify(who, Change::Mode, |meta| {
            if !is_op(meta, who) {
                return Err(format!(
                    "only {name}'s operators can make it invite-only or open"
                ));
            }
            meta.invite_only = on;
            if on {
                for key in &here {
                    if !meta.invited.contains(key) {
                        meta.invited.push(key.clone());
                    }
                }
            }
            Ok(())
        })
    }

    /// `/invite NAME`: operators only; the invitation is kept (it is what
    /// lets the member back in after a reconnect or a restart) until the
    /// member is kicked.
    pub fn invite(&self, who: &Actor, name: &str) -> Result<(), String> {
        if let Err(e) = names::validate(name) {
            return Err(format!("nobody can be called {name:?}: {e}"));
        }
        let room = &self.name;
        let key = names::fold(name);
        self.modify(who, Change::Invited, |meta| {
            if !is_op(meta, who) {
                return Err(format!("only {room}'s operators can invite to it"));
            }
            if !meta.invited.contains(&key) {
                // Kept in the rooms' file (or the cluster's bucket):
                // bounded like everything a member can make the server
                // store.
                if meta.invited.len() >= MAX_INVITED {
                    return Err(format!(
                        "{room} has its most invitations ({MAX_INVITED}); /kick someone from it to free one"
                    ));
                }
                meta.invited.push(key.clone());
            }
            Ok(())
        })
    }

    /// `/kick NAME` in the room: operators only; the member leaves the room
    /// (not the server) and loses its invitation. A member in the room on
    /// another node of the cluster is left to that node: `Some` says
    /// where.
    pub fn kick(&self, who: &Actor, name: &str, reason: &str) -> Result<Option<Afar>, String> {
        let room = &self.name;
        let target = {
            let st = self.lock();
            match Self::member_named(&st, name) {
                Some(target) if target == who.id => {
                    return Err(format!("you cannot kick yourself; use /part {room}"));
                }
                Some(target) => Ok(target),
                None => match self
                    .shared
                    .as_ref()
                    .and_then(|s| s.members().node_of(&self.token, name))
                {
                    Some((node, name)) => Err(Afar { node, name }),
                    None if !Self::is_op(&st, who) => {
                        return Err(format!("only {room}'s operators can kick from it"));
                    }
                    None => return Err(format!("there is nobody called {name:?} in {room}")),
                },
            }
        };
        let key = names::fold(name);
        self.modify(who, Change::Kicked, |meta| {
            if !is_op(meta, who) {
                return Err(format!("only {room}'s operators can kick from it"));
            }
            meta.invited.retain(|k| *k != key);
            Ok(())
        })?;
        match target {
            Ok(target) => {
                self.leave(target, Some(&who.name), reason, true);
                Ok(None)
            }
            Err(afar) => Ok(Some(afar)),
        }
    }

    /// Another node's operator `by` kicked `name` from the room (its
    /// rights checked there): the member here leaves as from a kick made
    /// here. Its name as spelt, or why not.
    pub(crate) fn kick_here(&self, name: &str, by: &str, reason: &str) -> Result<String, String> {
        let target = {
            let st = self.lock();
            Self::member_named(&st, name)
                .map(|id| (id, st.members.get(&id).map(|m| m.name.clone())))
        };
        match target {
            Some((id, Some(spelt))) if self.leave(id, Some(by), reason, true) => Ok(spelt),
            _ => Err(format!(
                "nobody called {name:?} is in {} there now",
                self.name
            )),
        }
    }

    /// Makes a change to what the room is: here, or in a cluster in the
    /// cluster's entry (decided on the newest entry, so an operator removed
    /// on another node is no operator here), then applied here as any
    /// node's change is.
    fn modify(
        &self,
        who: &Actor,
        kind: Change,
        mut change: impl FnMut(&mut Meta) -> Result<(), String>,
    ) -> Result<(), String> {
        match &self.shared {
            None => {
                let mut st = self.lock();
                let before = st.meta.clone();
                change(&mut st.meta)?;
                self.announce(st, &before, &who.name, kind);
                Ok(())
            }
            Some(shared) => {
                let (rev, rec) = shared.update(&self.token, &who.name, kind, change)?;
                self.apply(rev, rec);
                Ok(())
            }
        }
    }

    /// Takes the cluster's entry at revision `rev` unless a newer one is
    /// here already, and tells the members what changed.
    pub(crate) fn apply(&self, rev: u64, rec: Record) {
        let mut st = self.lock();
        if rev <= st.rev {
            return;
        }
        st.rev = rev;
        let before = std::mem::replace(&mut st.meta, rec.meta);
        self.announce(st, &before, &rec.by, rec.change);
    }

    /// The room was made invite-only on another node: those in it on this
    /// node are as good as invited, as those on that node were, so a
    /// reconnect (to any node) does not lock them out. Written off the
    /// runtime's threads, as the cluster's entry it changes; in the name
    /// of `by`, who closed the room.
    fn invite_members_here(self: &Arc<Self>, by: String, here: Vec<String>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if here.is_empty() {
            return;
        }
        let me = Arc::clone(self);
        rt.spawn_blocking(move || {
            let done = shared.update(&me.token, &by, Change::Invited, |meta| {
                if !meta.invite_only {
                    return Err("opened again meanwhile".into());
                }
                for key in &here {
                    if !meta.invited.contains(key) && meta.invited.len() < MAX_INVITED {
                        meta.invited.push(key.clone());
                    }
                }
                Ok(())
            });
            match done {
                Ok((rev, rec)) => me.apply(rev, rec),
                Err(e) => tracing::debug!(room = me.name, "cannot invite its members here: {e}"),
            }
        });
    }

    /// The folded names of the members here that the room has not invited.
    fn members_not_invited(&self) -> Vec<String> {
        let st = self.lock();
        st.members
            .values()
            .map(|m| names::fold(&m.name))
            .filter(|k| !st.meta.invited.contains(k))
            .collect()
    }

    /// Reads the cluster's entry now, when there is one: what a join is
    /// decided on, so a room made invite-only on another node a moment ago
    /// is closed here too. Without an answer the entry last seen stands.
    fn refresh(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        match shared.read(&self.token) {
            Ok(Some((rev, rec))) => self.apply(rev, rec),
            Ok(None) => {}
            Err(e) => tracing::debug!(room = self.name, "cannot read the room's entry: {e}"),
        }
    }

    /// Tells the members of a change from `before` to what the room is now
    /// (`kind` by `by`, and whatever else differs: entries seen in a
    /// cluster may skip revisions), then releases the lock.
    fn announce(&self, st: MutexGuard<'_, ChanState>, before: &Meta, by: &str, kind: Change) {
        let mut frames = Vec::new();
        if kind == Change::Topic || before.topic != st.meta.topic {
            frames.push(ServerMsg::TopicSet {
                room: self.name.clone(),
                by: by.to_string(),
                text: st.meta.topic.clone(),
            });
        }
        if kind == Change::Mode || before.invite_only != st.meta.invite_only {
            frames.push(ServerMsg::ModeSet {
                room: self.name.clone(),
                by: by.to_string(),
                invite_only: st.meta.invite_only,
            });
        }
        let mut slow = Vec::new();
        for msg in frames {
            slow.extend(self.broadcast(&st, &msg.to_frame(), None));
        }
        drop(st);
        slow.sort_unstable();
        slow.dedup();
        self.evict(slow);
    }

    /// Queues `frame` for every member but `except`; the ids whose queue is
    /// full (not reading), for [`Channel::evict`] once the lock is released.
    fn broadcast(&self, st: &ChanState, frame: &Bytes, except: Option<MemberId>) -> Vec<MemberId> {
        let mut slow = Vec::new();
        for (id, m) in &st.members {
            if Some(*id) == except {
                continue;
            }
            if matches!(m.offer(frame.clone()), Err(TrySendError::Full(_))) {
                slow.push(*id);
            }
        }
        slow
    }

    /// Members not reading are disconnected by the lobby, as they would
    /// be for a full queue there; never under this room's lock, so the
    /// lobby's lock is never taken inside a room's.
    fn evict(&self, slow: Vec<MemberId>) {
        if slow.is_empty() {
            return;
        }
        if let Some(lobby) = self.lobby.upgrade() {
            lobby.evict(slow);
        }
    }

    /// Empties the room of members (the server is stopping).
    pub fn clear(&self) {
        self.lock().members.clear();
    }
}

impl Log for Channel {
    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn publish(
        &self,
        batch: impl Iterator<Item = Pending>,
        stored: Result<Vec<Appended>, StoreError>,
    ) {
        let mut st = self.lock();
        let mut slow = Vec::new();
        let results = match stored {
            Ok(r) => r,
            Err(e) => {
                let reason =
                    format!("the server could not store the message ({e}); nothing was sent");
                for p in batch {
                    self.metrics.messages_refused.inc();
                    if let Some(m) = st.members.get(&p.member) {
                        let refused = ServerMsg::Refused {
                            seq: p.seq,
                            reason: reason.clone(),
                        };
                        let _ = m.offer(refused.to_frame());
                    }
                }
                return;
            }
        };
        let mut delivered = 0u64;
        for (p, r) in batch.zip(results) {
            let id = match r {
                // The room's feed shows it, in the cluster's order.
                Appended::Ordered(_) => continue,
                Appended::Duplicate(id) => id,
                Appended::New(id) => {
                    st.published = st.published.max(id);
                    let e = &p.entry;
                    let frame = ServerMsg::RoomChat {
                        room: self.name.clone(),
                        id,
                        from: e.from.clone(),
                        text: e.text.clone(),
                        time_ms: e.time_ms,
                        action: e.action,
                        proof: e.proof.as_deref().cloned(),
                    }
                    .to_frame();
                    let instance = e.key.map(|k| k.0);
                    for (mid, m) in &st.members {
                        // Not to the author, nor to the author's new
                        // connection (same instance) after a reconnect.
                        if *mid == p.member || (instance.is_some() && m.instance == instance) {
                            continue;
                        }
                        match m.offer(frame.clone()) {
                            Ok(()) => delivered += 1,
                            Err(TrySendError::Full(_)) => slow.push(*mid),
                            Err(_) => {}
                        }
                    }
                    if st.recent.len() >= RECENT {
                        st.recent.pop_front();
                    }
                    let NewEntry {
                        from,
                        text,
                        time_ms,
                        action,
                        proof,
                        ..
                    } = p.entry;
                    st.recent.push_back(Entry {
                        id,
                        from,
                        text,
                        time_ms,
                        action,
                        proof,
                    });
                    id
                }
            };
            if let Some(m) = st.members.get(&p.member) {
                let ack = ServerMsg::RoomAck {
                    room: self.name.clone(),
                    seq: p.seq,
                    id,
                };
                if matches!(m.offer(ack.to_frame()), Err(TrySendError::Full(_))) {
                    slow.push(p.member);
                }
            }
        }
        if delivered > 0 {
            self.metrics.messages_delivered.inc_by(delivered);
        }
        drop(st);
        self.evict(slow);
    }
}

/// Starts the rooms' log writer: a thread of its own
/// ([`crate::log::spawn_shared_writer`]); in the crate's tests, whose
/// clock is paused, a task on the runtime instead (none without a
/// runtime: such tests say nothing in rooms).
fn start_writer(rx: mpsc::Receiver<RoomItem<Channel>>) {
    #[cfg(test)]
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(crate::log::run_shared_writer_on_runtime(rx));
    }
    #[cfg(not(test))]
    if let Err(e) = crate::log::spawn_shared_writer(rx) {
        // Then nothing said in any room is stored or shown: members'
        // lines wait in the full queue, and the log says why.
        tracing::error!("cannot start the rooms' log writer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::drained;
    use crate::ServerOptions;

    fn actor(id: MemberId, name: &str) -> Actor {
        Actor {
            id,
            name: name.into(),
            key: None,
            server_op: false,
        }
    }

    fn lobby() -> Arc<Room> {
        Room::new(
            Arc::new(ServerOptions::default()),
            Arc::new(crate::store::MemoryStore::new(1000)),
        )
    }

    #[test]
    fn an_invite_only_room_is_hidden_and_closed_until_an_invitation() {
        let lobby = lobby();
        let rooms = lobby.rooms();
        let (alice, carol) = (actor(1, "alice"), actor(2, "carol"));
        let (ch, created) = rooms.get_or_create("#dev", &alice, 10).expect("created");
        assert!(created);
        let (ta, mut ra) = crate::room::MemberQueue::channel(64);
        ch.join(&alice, None, &ta, None, 50, 10)
            .expect("the creator joins");
        ch.set_invite_only(&alice, true)
            .expect("the creator is its operator");
        assert!(
            ch.set_topic(&carol, "mine").is_err(),
            "carol is no operator"
        );
        assert!(rooms.list(&carol).is_empty(), "hidden from carol");
        assert_eq!(rooms.list(&alice).len(), 1);
        let (tc, _rc) = crate::room::MemberQueue::channel(64);
        let refused = ch
            .join(&carol, None, &tc, None, 50, 10)
            .expect_err("closed");
        assert!(refused.contains("invite-only"), "{refused}");
        ch.invite(&alice, "CAROL")
            .expect("invited, as the same name");
        assert_eq!(rooms.list(&carol).len(), 1, "visible once invited");
        ch.join(&carol, None, &tc, None, 50, 10)
            .expect("invited joins");
        assert!(drained(&mut ra)
            .iter()
            .any(|m| matches!(m, ServerMsg::RoomEntered { name, .. } if name == "carol")));
        ch.kick(&alice, "carol", "bye").expect("kicked");
        assert!(!ch.has(2));
        assert!(
            ch.join(&carol, None, &tc, None, 50, 10).is_err(),
            "the kick took the invitation"
        );
    }

    /// A member whose connection dropped is still in the room for the
    /// others through the grace: rejoining says nothing, and only a
    /// member that does not come back is announced as gone.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_member_rejoins_silently_within_the_grace() {
        let lobby = lobby();
        let rooms = lobby.rooms();
        let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
        let (ch, _) = rooms.get_or_create("#dev", &alice, 10).expect("created");
        let (ta, mut ra) = crate::room::MemberQueue::channel(64);
        let (tb, _rb) = crate::room::MemberQueue::channel(64);
        ch.join(&alice, None, &ta, None, 50, 10).expect("joins");
        ch.join(&bob, None, &tb, None, 50, 10).expect("joins");
        drained(&mut ra);
        let grace = std::time::Duration::from_secs(60);
        ch.lose(2, "disconnected", grace);
        let bob_again = actor(3, "bob");
        let (tb2, mut rb2) = crate::room::MemberQueue::channel(64);
        ch.join(&bob_again, None, &tb2, None, 50, 10)
            .expect("rejoins");
        assert!(drained(&mut ra).is_empty(), "nothing to tell alice");
        assert!(drained(&mut rb2)
            .iter()
            .any(|m| matches!(m, ServerMsg::RoomJoined { members, .. } if members.len() == 2)));
        ch.lose(3, "disconnected", grace);
        tokio::time::sleep(grace * 2).await;
        let left = drained(&mut ra);
        assert!(
            matches!(&left[..], [ServerMsg::RoomLeft { name, reason, .. }] if name == "bob" && reason == "disconnected"),
            "{left:?}"
        );
    }

    /// Two rooms in the shared file, both members saying things in both
    /// at once through the one writer: each room's messages reach the
    /// other member in that room's own id order, each author has every
    /// acknowledgement in order, and a barrier for all rooms comes after
    /// everything queued before it. Reopened, each room keeps its log.
    #[tokio::test]
    async fn rooms_share_one_writer_and_keep_their_own_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = crate::store::SharedRedb::open(
            dir.path(),
            1000,
            None,
            crate::store::SyncPolicy::None,
            1 << 20,
        )
        .expect("opens");
        let lobby = lobby();
        let f = Arc::clone(&file);
        let stores: Box<StoreFactory> =
            Box::new(move |key: &str| Ok(f.open_room(key)? as Arc<dyn Store>));
        let meta = dir.path().join("rooms.meta");
        let rooms = Rooms::open(&lobby, stores, Some(meta.clone())).expect("opens");
        let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
        let (ta, mut ra) = crate::room::MemberQueue::channel(10_000);
        let (tb, mut rb) = crate::room::MemberQueue::channel(10_000);
        let mut chans = Vec::new();
        for name in ["#one", "#two"] {
            let (ch, _) = rooms.get_or_create(name, &alice, 10).expect("created");
            ch.join(&alice, None, &ta, None, 50, 10).expect("joins");
            ch.join(&bob, None, &tb, None, 50, 10).expect("joins");
            chans.push(ch);
        }
        rooms.save().expect("saves");
        drained(&mut ra);
        drained(&mut rb);
        for seq in 1..=300u64 {
            for (ch, who) in chans.iter().zip([1, 2]) {
                let p = ch
                    .submit(who, seq, format!("{}{seq}", ch.name()), false, None)
                    .expect("a member");
                ch.log_queue()
                    .send(LogItem::Message(p))
                    .await
                    .expect("the writer runs");
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), rooms.flush())
            .await
            .expect("flushed in time");
        // Alice says everything in #one, bob in #two.
        let (a, b) = (drained(&mut ra), drained(&mut rb));
        let chat = |v: &[ServerMsg], room: &str| -> Vec<(u64, String)> {
            v.iter()
                .filter_map(|m| match m {
                    ServerMsg::RoomChat {
                        room: r, id, text, ..
                    } if r == room => Some((*id, text.clone())),
                    _ => None,
                })
                .collect()
        };
        let acks = |v: &[ServerMsg], room: &str| -> Vec<(u64, u64)> {
            v.iter()
                .filter_map(|m| match m {
                    ServerMsg::RoomAck { room: r, seq, id } if r == room => Some((*seq, *id)),
                    _ => None,
                })
                .collect()
        };
        let want = |room: &str| -> Vec<(u64, String)> {
            (1..=300u64).map(|i| (i, format!("{room}{i}"))).collect()
        };
        assert_eq!(chat(&b, "#one"), want("#one"));
        assert_eq!(chat(&a, "#two"), want("#two"));
        assert!(chat(&a, "#one").is_empty() && chat(&b, "#two").is_empty());
        let ordered: Vec<(u64, u64)> = (1..=300).map(|i| (i, i)).collect();
        assert_eq!(acks(&a, "#one"), ordered);
        assert_eq!(acks(&b, "#two"), ordered);
        let ids: Vec<[u8; 16]> = chans.iter().map(|c| c.store.log_id()).collect();
        drop((chans, rooms, lobby));
        drop(file);
        let file = crate::store::SharedRedb::open(
            dir.path(),
            1000,
            None,
            crate::store::SyncPolicy::None,
            1 << 20,
        )
        .expect("reopens");
        let lobby2 = super::tests::lobby();
        let stores: Box<StoreFactory> =
            Box::new(move |key: &str| Ok(file.open_room(key)? as Arc<dyn Store>));
        let rooms = Rooms::open(&lobby2, stores, Some(meta)).expect("reopens");
        for (name, id) in ["#one", "#two"].into_iter().zip(ids) {
            let ch = rooms.get(name).expect("kept");
            assert_eq!((ch.store.log_id(), ch.store.last_id()), (id, 300));
        }
    }

    #[test]
    fn the_room_limits_refuse_with_reasons() {
        let lobby = lobby();
        let rooms = lobby.rooms();
        let a = actor(1, "a");
        rooms.get_or_create("#one", &a, 3).expect("room 2 of 3");
        rooms.get_or_create("#two", &a, 3).expect("room 3 of 3");
        let most = rooms
            .get_or_create("#three", &a, 3)
            .expect_err("the lobby counts as one");
        assert!(most.contains("most rooms (3)"), "{most}");
        let (ch, _) = rooms
            .get_or_create("#ONE", &a, 3)
            .expect("exists, as the same name");
        let (t, _r) = crate::room::MemberQueue::channel(64);
        ch.join(&a, None, &t, None, 50, 1).expect("first member");
        let b = actor(2, "b");
        let (tb, _rb) = crate::room::MemberQueue::channel(64);
        let full = ch.join(&b, None, &tb, None, 50, 1).expect_err("full");
        assert!(full.contains("full"), "{full}");
    }
}
