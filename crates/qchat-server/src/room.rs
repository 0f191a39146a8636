//! The room: who is in it, and the fan-out of everything said in it.
//!
//! All room state lives behind one mutex, held only for the synchronous work
//! of queueing frames (never across an await). One lock gives the ordering
//! guarantee for free: whatever order messages take the lock in is the order
//! every member receives them. Each broadcast is encoded once per kind
//! (version-3 members get one encoding, older members another, each only
//! if such members exist); every recipient's queue gets a reference-counted
//! clone of the same bytes.
//!
//! Public messages go through the room log first ([`crate::log`]): a member
//! submits, the log's writer stores a batch in one commit, and only then does
//! [`Room::publish`] show the batch to the room and acknowledge it, under the
//! lock, in id order. The lock is also what makes a resume exact: a joining
//! member is registered and the newest *published* id noted in one step, so
//! everything up to that id comes from the log and everything after it
//! arrives live, with no gap and no duplicate.

use qchat_proto::clock::now_ms;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use qchat_proto::message::LiveChat;
use qchat_proto::{
    names, CloseCode, MemberInfo, RejectReason, ResumePoint, ServerMsg, PROTOCOL_VERSION,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

use crate::log::{LogItem, Pending};
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::registry::Registry;
use crate::store::{Appended, Entry, NewEntry, Store, StoreError};
use crate::writer::{Backlog, Part};
use qchat_proto::Proof;

/// Private message keys remembered per client instance for deduplication:
/// a client re-sends only what was unacknowledged when its connection
/// dropped, which is far fewer than this.
const PRIVATE_KEYS: usize = 1024;

/// Most messages the room keeps in memory for joins and resumes; older ones
/// are read from the store.
const RECENT_MAX: usize = 1024;

/// How often the room looks whether its members' addresses changed.
pub const ADDRESS_CHECK: Duration = Duration::from_secs(2);

/// A member's identity inside this server process; never reused.
pub type MemberId = u64;

/// A private message as it travels: to its recipient on this node, or
/// to the node the recipient is on (postcard, the same encoding as the
/// wire's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrivateLine {
    /// The sender's name.
    pub from: String,
    /// The recipient's name as the sender wrote it: what a signature
    /// covers.
    pub to: String,
    /// What was said.
    pub text: String,
    /// When the sender's node took it.
    pub time_ms: u64,
    /// The sender's signature, when it signed.
    pub proof: Option<Proof>,
}

impl PrivateLine {
    /// The frame that shows it to a member speaking `version`, whose copy
    /// names the recipient `to_name`: signed with its proof (and the name
    /// as addressed, which the signature covers) from version 4, plain
    /// before, for members that could not check it.
    pub fn frame(&self, to_name: &str, version: u32) -> Bytes {
        match &self.proof {
            Some(proof) if version >= 4 => ServerMsg::PrivateSigned {
                from: self.from.clone(),
                to: self.to.clone(),
                text: self.text.clone(),
                time_ms: self.time_ms,
                proof: proof.clone(),
            },
            _ => ServerMsg::Private {
                from: self.from.clone(),
                to: to_name.to_owned(),
                text: self.text.clone(),
                time_ms: self.time_ms,
            },
        }
        .to_frame()
    }
}

/// A private message whose recipient is on another node of the cluster.
#[derive(Debug)]
pub struct Away {
    /// That node's id.
    pub node: String,
    /// The message.
    pub line: PrivateLine,
}

/// A refused hello: the cause and one sentence for the user.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Machine-readable cause.
    pub reason: RejectReason,
    /// For the user.
    pub detail: String,
}

/// How the room tells a session that it has removed its member, and why.
/// The session flushes what it can for a moment, then closes with the code.
///
/// The code and reason are boxed: they are set once or never, and inline
/// they made every member's `Ending` 24 bytes larger.
///
/// It also carries the member's [`Backlog`]: like the ending, it is shared
/// by the room (which queues) and the session (whose writer takes), and
/// one shared allocation per member serves both.
#[derive(Debug, Default)]
pub struct Ending {
    code: OnceLock<Box<(CloseCode, String)>>,
    notify: Notify,
    backlog: Backlog,
}

impl Ending {
    /// A fresh, untriggered ending.
    pub fn new() -> Arc<Self> {
        Arc::new(Ending::default())
    }

    /// The frames the member's queue holds beyond one per item.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    fn trigger(&self, code: CloseCode, reason: &str) {
        if self.code.set(Box::new((code, reason.to_string()))).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// Completes once the room has removed the member. Any number of tasks
    /// may wait (the session's reader and its closing both do).
    pub async fn wait(&self) {
        // Registered before the check, so a trigger between the two is not
        // missed.
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.code.get().is_none() {
            notified.await;
        }
    }

    /// The code and reason, once triggered.
    pub fn get(&self) -> Option<&(CloseCode, String)> {
        self.code.get().map(|c| &**c)
    }
}

/// Who is joining, as the session knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The network address, as last seen ([`Room::note_moves`]); `None`
    /// for the operator's in-process link.
    pub addr: Option<SocketAddr>,
    /// Operators may kick and see addresses.
    pub operator: bool,
    /// The protocol version agreed in the hello.
    pub version: u32,
    /// The version-3 client instance (`None` before version 3).
    pub instance: Option<[u8; 16]>,
    /// The connection, to show its current address (it may migrate).
    pub conn: Option<quinn::Connection>,
    /// The key the member proved in the handshake (its client
    /// certificate); `None` for a guest and for the host's own link.
    pub key: Option<qchat_tls::Fingerprint>,
}

impl Peer {
    /// The address the member is reachable at now.
    fn current_addr(&self) -> Option<SocketAddr> {
        self.conn
            .as_ref()
            .map(quinn::Connection::remote_address)
            .or(self.addr)
    }
}

/// The shared room.
pub struct Room {
    state: Mutex<State>,
    /// Swapped whole on a reload; each session keeps the snapshot it
    /// started with, the room reads the current one.
    options: std::sync::RwLock<Arc<ServerOptions>>,
    store: Arc<dyn Store>,
    /// The log writer's queue: public messages waiting to be stored.
    log: mpsc::Sender<LogItem>,
    /// Its other end, until the writer takes it.
    log_rx: Mutex<Option<mpsc::Receiver<LogItem>>>,
    /// For the grace timers, which outlive the session that started them.
    me: Weak<Room>,
    metrics: Metrics,
    /// Names bound to keys; in memory unless the server sets a file-backed
    /// one before the first join.
    registry: OnceLock<Arc<Registry>>,
    /// The other rooms; in memory unless the server sets stored ones
    /// before the first join.
    rooms: OnceLock<Arc<crate::rooms::Rooms>>,
    /// Private conversations' history; unset: none is kept (live only).
    conversations: OnceLock<Arc<crate::private::Conversations>>,
    /// Who is online on the cluster's other nodes; unset without a
    /// cluster.
    presence: OnceLock<Arc<crate::cluster::presence::Presence>>,
    /// Why the server admits nobody for now (a cluster's node cut off
    /// from NATS); `None`: it admits.
    cut_off: Mutex<Option<String>>,
}

struct State {
    next_id: MemberId,
    /// Keyed by id, so iteration is join order. Boxed: a B-tree filled in
    /// join order keeps about half of each node's eleven slots, so an
    /// inline entry (~150 bytes) cost twice its size per idle member; a
    /// box costs its own size and an eighth of a node.
    members: BTreeMap<MemberId, Box<Member>>,
    /// Same-name key (`names::fold`) to id: names are unique ignoring case
    /// and look-alikes. A name that is its own key (most are) shares the
    /// member's copy: one allocation per idle member fewer.
    by_name: HashMap<Arc<str>, MemberId>,
    /// The last public messages, as `History` messages. Kept unencoded:
    /// saying something must not pay for a replay that only a later join
    /// needs, and the text moves here without a copy.
    /// The newest id shown to the room. Members joining now get everything
    /// up to it from the log.
    published: u64,
    /// The newest published messages, a window of the log kept in memory:
    /// most joins and resumes (a short reconnect) need only these, and are
    /// then served without reading the store under the room's lock.
    recent: VecDeque<Entry>,
    /// Members whose connection dropped, by same-name key: their name is
    /// theirs until the grace ends.
    ghosts: HashMap<String, Ghost>,
    /// Private messages already delivered, per client instance.
    private_seen: HashMap<[u8; 16], (HashSet<u64>, VecDeque<u64>)>,
    /// The host's `/quit` reason, for the shutdown that follows it.
    host_reason: Option<String>,
    closed: bool,
    /// The cluster's node addresses ([`Room::set_nodes`]); empty on a
    /// server alone, which then sends no list.
    nodes: Vec<String>,
}

struct Member {
    /// Shared with the member's session, which signs its lines with it.
    name: Arc<str>,
    outbox: mpsc::Sender<Bytes>,
    ending: Arc<Ending>,
    peer: Peer,
    joined: Instant,
}

impl Member {
    fn v3(&self) -> bool {
        self.peer.version >= 3
    }

    /// Queues one frame for the member, unless its queue holds its bound's
    /// worth of frames already.
    fn offer(&self, frame: Bytes) -> Result<(), TrySendError<Bytes>> {
        self.ending.backlog.offer(&self.outbox, frame)
    }
}

/// A member whose connection dropped, waiting for it to come back.
struct Ghost {
    name: String,
    instance: [u8; 16],
    /// The member it was, so that a timer finds only its own ghost.
    was: MemberId,
}

/// A member's queue as another room sees it ([`Room::queue_of`]): the
/// lobby's queue, and the ending whose [`Backlog`] counts what its items
/// hold beyond one frame each. Rooms keep the queue only weakly, so that
/// the lobby's removal of the member still closes it.
#[derive(Debug, Clone)]
pub struct MemberQueue {
    /// The queue.
    pub tx: mpsc::Sender<Bytes>,
    /// The member's ending, shared with the lobby and the session.
    pub ending: Arc<Ending>,
}

#[cfg(test)]
impl MemberQueue {
    /// A queue of `capacity` frames with an ending of its own, and its
    /// receiving end: a member no lobby holds, for the rooms' tests.
    pub(crate) fn channel(capacity: usize) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(capacity);
        let queue = MemberQueue {
            tx,
            ending: Ending::new(),
        };
        (queue, rx)
    }
}

/// What a newly joined member needs to know.
#[derive(Debug)]
pub struct Joined {
    /// Its id.
    pub id: MemberId,
    /// Its registered name: the room's own copy, shared.
    pub name: Arc<str>,
}

impl Room {
    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The current options (new sessions start with them).
    pub fn options(&self) -> Arc<ServerOptions> {
        // A poisoned lock still holds a whole, valid Arc.
        let guard = self.options.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    /// Replaces the options: the room and sessions that start from now on
    /// use them; running sessions keep theirs.
    pub fn set_options(&self, options: Arc<ServerOptions>) {
        let mut guard = self.options.write().unwrap_or_else(|e| e.into_inner());
        *guard = options;
    }

    /// An empty room over a log. Its writer must be started
    /// ([`crate::log::run_writer`] with [`Room::take_log`]) for public
    /// messages to reach anyone.
    pub fn new(options: Arc<ServerOptions>, store: Arc<dyn Store>) -> Arc<Self> {
        let (log, log_rx) = mpsc::channel(options.log_queue.max(1));
        let published = store.last_id();
        Arc::new_cyclic(|me| Room {
            state: Mutex::new(State {
                next_id: 1,
                members: BTreeMap::new(),
                by_name: HashMap::new(),
                published,
                recent: VecDeque::new(),
                ghosts: HashMap::new(),
                private_seen: HashMap::new(),
                host_reason: None,
                closed: false,
                nodes: Vec::new(),
            }),
            options: std::sync::RwLock::new(options),
            store,
            log,
            log_rx: Mutex::new(Some(log_rx)),
            me: me.clone(),
            metrics: Metrics::default(),
            registry: OnceLock::new(),
            presence: OnceLock::new(),
            rooms: OnceLock::new(),
            conversations: OnceLock::new(),
            cut_off: Mutex::new(None),
        })
    }

    /// The rooms besides this one.
    pub fn rooms(&self) -> &Arc<crate::rooms::Rooms> {
        self.rooms
            .get_or_init(|| crate::rooms::Rooms::memory(self.me.clone(), self.metrics.clone()))
    }

    /// Uses `rooms`; only before the rooms were first used (otherwise
    /// `false`).
    pub fn set_rooms(&self, rooms: Arc<crate::rooms::Rooms>) -> bool {
        self.rooms.set(rooms).is_ok()
    }

    /// Disconnects members a room found not reading (their queue is
    /// full), as the lobby's own fan-out does.
    pub fn evict(&self, ids: Vec<MemberId>) {
        let mut st = self.lock();
        let ids: Vec<MemberId> = ids
            .into_iter()
            .filter(|id| st.members.contains_key(id))
            .collect();
        if !ids.is_empty() {
            self.evict_slow(&mut st, ids);
        }
    }

    /// The log writer's end of the queue; `None` once taken.
    pub fn take_log(&self) -> Option<mpsc::Receiver<LogItem>> {
        self.log_rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The room log.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The registered names.
    pub fn registry(&self) -> &Arc<Registry> {
        self.registry.get_or_init(|| Arc::new(Registry::memory()))
    }

    /// Uses `registry` for names; only before the room has used one (a
    /// join, a `/whois`): later it is refused, and `false` returned.
    pub fn set_registry(&self, registry: Arc<Registry>) -> bool {
        self.registry.set(registry).is_ok()
    }

    /// The private conversations' store, if the server keeps private
    /// history.
    pub fn conversations(&self) -> Option<&Arc<crate::private::Conversations>> {
        self.conversations.get()
    }

    /// Keeps private history in `store`; only once (`false` after).
    pub fn set_conversations(&self, store: Arc<crate::private::Conversations>) -> bool {
        self.conversations.set(store).is_ok()
    }

    /// Lists the cluster's other nodes' members in `/who` and is the
    /// source of their notices; only once (`false` after).
    pub fn set_presence(&self, presence: Arc<crate::cluster::presence::Presence>) -> bool {
        self.presence.set(presence).is_ok()
    }

    /// Who is online on the cluster's other nodes, if in a cluster.
    pub fn presence(&self) -> Option<&Arc<crate::cluster::presence::Presence>> {
        self.presence.get()
    }

    /// Whether a member of this node holds `name`: `Some(false)` one is
    /// here under it, `Some(true)` one whose connection dropped is within
    /// its grace, `None` neither.
    pub(crate) fn holds(&self, name: &str) -> Option<bool> {
        let st = self.lock();
        let key = names::fold(name);
        if st.by_name.contains_key(key.as_str()) {
            Some(false)
        } else {
            st.ghosts.contains_key(&key).then_some(true)
        }
    }

    /// Drops the place kept for a member whose connection dropped, without
    /// a word: it came back on another node of the cluster. `false` if
    /// there was none.
    pub(crate) fn forget_ghost(&self, name: &str) -> bool {
        let mut st = self.lock();
        match st.ghosts.remove(&names::fold(name)) {
            Some(g) => {
                st.private_seen.remove(&g.instance);
                true
            }
            None => false,
        }
    }

    /// Tells the room of another node's member joining, leaving,
    /// reconnecting or returning, as it would be told of its own (and
    /// under the same limit on announcements).
    pub(crate) fn announce(&self, msg: &ServerMsg) {
        let mut st = self.lock();
        if st.closed || st.members.len() >= self.options().announce_limit {
            return;
        }
        let frame = msg.to_frame();
        match msg {
            ServerMsg::Reconnecting { .. } | ServerMsg::Returned { .. } => {
                self.broadcast_v3(&mut st, frame, None);
            }
            _ => self.broadcast(&mut st, frame, None),
        }
    }

    /// The room itself, shared, for work that must finish even if the
    /// session that started it ends; `None` only while it is dropped.
    pub fn shared(&self) -> Option<Arc<Room>> {
        self.me.upgrade()
    }

    /// Queues `frame` for member `id`, if it is still here.
    pub fn deliver(&self, id: MemberId, frame: Bytes) {
        let mut st = self.lock();
        self.send_to(&mut st, id, frame);
    }

    /// Queues `frames` for member `id` in order, waiting for room in its
    /// queue instead of taking a full one for a reader that stopped: for
    /// answers longer than a queue is sure to hold. `false` if the member
    /// is gone.
    pub async fn deliver_waiting(&self, id: MemberId, frames: Vec<Bytes>) -> bool {
        let Some(outbox) = self.lock().members.get(&id).map(|m| m.outbox.clone()) else {
            return false;
        };
        for f in frames {
            if outbox.send(f).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The key member `id` proved; `None` if it is gone, `Some(None)` for
    /// a guest.
    pub fn key_of(&self, id: MemberId) -> Option<Option<qchat_tls::Fingerprint>> {
        self.lock().members.get(&id).map(|m| m.peer.key)
    }

    /// Member `id`'s name, if it is still here.
    pub fn member_name(&self, id: MemberId) -> Option<String> {
        self.lock().members.get(&id).map(|m| m.name.to_string())
    }

    /// The member in the room under `name` (as the same name): its name,
    /// its key (`None`: a guest) and how long it has been here.
    pub fn member_named(
        &self,
        name: &str,
    ) -> Option<(String, Option<qchat_tls::Fingerprint>, std::time::Duration)> {
        let st = self.lock();
        let id = st.by_name.get(names::fold(name).as_str())?;
        st.members
            .get(id)
            .map(|m| (m.name.to_string(), m.peer.key, m.joined.elapsed()))
    }

    /// Member `id`'s name and peer, if it is still here.
    pub fn peer_of(&self, id: MemberId) -> Option<(String, Peer)> {
        let st = self.lock();
        st.members
            .get(&id)
            .map(|m| (m.name.to_string(), m.peer.clone()))
    }

    /// Member `id`'s queue, for another room that queues to it; `None` if
    /// it is gone.
    pub fn queue_of(&self, id: MemberId) -> Option<MemberQueue> {
        let st = self.lock();
        let m = st.members.get(&id)?;
        Some(MemberQueue {
            tx: m.outbox.clone(),
            ending: Arc::clone(&m.ending),
        })
    }

    /// The member in the room under `name` (as the same name): its id,
    /// name and peer.
    pub fn peer_named(&self, name: &str) -> Option<(MemberId, String, Peer)> {
        let st = self.lock();
        let id = *st.by_name.get(names::fold(name).as_str())?;
        st.members
            .get(&id)
            .map(|m| (id, m.name.to_string(), m.peer.clone()))
    }

    /// Gives or takes operator rights to the members in the room with one
    /// of `keys`, now; the host's own link keeps its rights.
    pub fn set_operator(&self, keys: &[[u8; 32]], on: bool) {
        let mut st = self.lock();
        for m in st.members.values_mut() {
            if m.peer.addr.is_some() && m.peer.key.is_some_and(|k| keys.contains(k.as_bytes())) {
                m.peer.operator = on;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters more than stopping the whole room would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Members in the room now.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the server has begun shutting down.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The server can no longer keep its word (a cluster's node cut off
    /// from NATS: nothing said here would be stored or seen elsewhere):
    /// every member is told `reason` and that the server will be back, so
    /// that its client moves on (to another node) and resumes there, and
    /// its session ends with the shutting-down code; nobody is admitted
    /// until [`Room::restore`].
    pub fn cut_off(&self, reason: &str) {
        *self.cut_off.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        let mut st = self.lock();
        let mut frames = PerKind::default();
        // The host at the server's own interface stays: it has no other
        // node to go to, and its session ending would stop the server.
        let away: Vec<MemberId> = st
            .members
            .iter()
            .filter(|(_, m)| m.peer.conn.is_some() || m.peer.addr.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in away {
            let Some(m) = st.members.remove(&id) else {
                continue;
            };
            let frame = frames.frame(m.v3(), |v3| {
                let reason = reason.to_string();
                if v3 {
                    ServerMsg::ShuttingDownV3 { reason, back: true }
                } else {
                    ServerMsg::ShuttingDown { reason }
                }
            });
            let _ = m.offer(frame);
            m.ending.trigger(CloseCode::ShuttingDown, reason);
            st.by_name.remove(names::fold(&m.name).as_str());
        }
        st.ghosts.clear();
        let keep: Vec<MemberId> = st.members.keys().copied().collect();
        drop(st);
        self.rooms().clear_members(&keep);
    }

    /// Admits members again after [`Room::cut_off`].
    pub fn restore(&self) {
        *self.cut_off.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why nobody is admitted now, if so ([`Room::cut_off`]).
    pub fn cut_off_reason(&self) -> Option<String> {
        self.cut_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds a member, if its name is valid and free (or held for this very
    /// client, whose connection dropped). The welcome, then the replay, are
    /// the first frames in its queue, before anything published afterwards.
    pub fn join(
        &self,
        name: &str,
        outbox: mpsc::Sender<Bytes>,
        ending: Arc<Ending>,
        peer: Peer,
        resume: Option<ResumePoint>,
    ) -> Result<Joined, Rejection> {
        if let Err(e) = names::validate(name) {
            return Err(Rejection {
                reason: RejectReason::NameInvalid,
                detail: format!("invalid name: {e}"),
            });
        }
        // One snapshot for the whole join: each read takes the options'
        // lock, and a reload in between must not mix two configurations in
        // one welcome.
        let options = self.options();
        let mut st = self.lock();
        if st.closed {
            return Err(Rejection {
                reason: RejectReason::ShuttingDown,
                detail: "the server is shutting down".into(),
            });
        }
        if let Some(why) = self.cut_off_reason() {
            return Err(Rejection {
                reason: RejectReason::ShuttingDown,
                detail: why,
            });
        }
        let key = names::fold(name);
        // The same client back on a new connection before the server
        // noticed its old one die (a frozen server, a NAT that forgot the
        // mapping): the new connection replaces the old one, which is
        // closed without a word to the room — to the others, the member
        // never left.
        let replaced = match (peer.instance, st.by_name.get(key.as_str()).copied()) {
            (Some(i), Some(old))
                if st.members.get(&old).and_then(|m| m.peer.instance) == Some(i) =>
            {
                Some(old)
            }
            _ => None,
        };
        if let Some(old) = replaced {
            if let Some(m) = st.members.remove(&old) {
                m.ending
                    .trigger(CloseCode::Normal, "replaced by the member's new connection");
            }
            st.by_name.remove(key.as_str());
        }
        let returning = match st.ghosts.get(&key) {
            Some(g) if peer.instance == Some(g.instance) => true,
            Some(g) => {
                return Err(Rejection {
                    reason: RejectReason::NameTaken,
                    detail: format!(
                        "{} (their connection dropped; the name is kept for them for {} s); choose another",
                        names::clash(name, &g.name),
                        options.grace.as_secs()
                    ),
                })
            }
            None => false,
        };
        // A returning member's name is held by its own ghost, and by no
        // one else.
        if let Some(other) = taken(&st, &key, None).filter(|_| !returning) {
            return Err(Rejection {
                reason: RejectReason::NameTaken,
                detail: format!("{}; choose another", names::clash(name, &other)),
            });
        }
        // In a cluster, a member back from another node (its node died or
        // it was reconnecting there) was never said to leave: it returns.
        let from_elsewhere = !returning
            && replaced.is_none()
            && self.registry().online().is_some_and(|o| o.returned(name));
        let upto = st.published;
        let v3 = peer.version >= 3;
        let (replay, resumed, missed) = match &resume {
            Some(p) if v3 && p.log_id == self.store.log_id() => {
                let after = p.after.min(upto);
                let got = self.read_log(&st, after, upto, options.replay_max);
                let missed = (upto - after).saturating_sub(got.len() as u64);
                (got, true, missed)
            }
            _ => (self.read_log(&st, 0, upto, options.history), false, 0),
        };
        let id = st.next_id;
        st.next_id += 1;
        // Members whose connection dropped are still in the room for
        // everyone else (nobody was told they left), so they are in the
        // list too; the newcomer's own ghost is the newcomer.
        let mut members: Vec<String> = st
            .members
            .values()
            .map(|m| m.name.to_string())
            .chain(
                st.ghosts
                    .iter()
                    .filter(|(k, _)| **k != key)
                    .map(|(_, g)| g.name.clone()),
            )
            .take(options.welcome_members.saturating_sub(1))
            .collect();
        // In a cluster, the other nodes' members are in the room too.
        if let Some(p) = self.presence.get() {
            let room_left = options
                .welcome_members
                .saturating_sub(1)
                .saturating_sub(members.len());
            members.extend(p.names(room_left, &key));
        }
        members.push(name.to_string());
        let welcome = if v3 {
            ServerMsg::WelcomeV3 {
                version: peer.version.min(PROTOCOL_VERSION),
                server_name: options.server_name.clone(),
                name: name.to_string(),
                members,
                log_id: self.store.log_id(),
                last_id: upto,
                rate: options.rate,
                burst: options.burst,
                max_message: u32::try_from(options.max_message).unwrap_or(u32::MAX),
                grace_secs: u32::try_from(options.grace.as_secs()).unwrap_or(u32::MAX),
            }
        } else {
            ServerMsg::Welcome {
                version: peer.version.min(PROTOCOL_VERSION),
                server_name: options.server_name.clone(),
                name: name.to_string(),
                members,
            }
        };
        // The queue is new and empty, and longer than the replay plus two
        // (the options guarantee it), so none of this can fail for lack of
        // room.
        let _ = outbox.try_send(welcome.to_frame());
        // Under the same lock as `set_nodes`: a list that changes during
        // the join reaches the newcomer after this one, never before it.
        if peer.version >= 6 && !st.nodes.is_empty() {
            let nodes = ServerMsg::Nodes {
                addrs: st.nodes.clone(),
            };
            let _ = outbox.try_send(nodes.to_frame());
        }
        let count = replay.len() as u64;
        let signed = peer.version >= 4;
        for e in replay {
            let msg = if let (true, Some(proof)) = (signed, e.proof) {
                ServerMsg::HistorySigned {
                    id: e.id,
                    from: e.from,
                    text: e.text,
                    time_ms: e.time_ms,
                    action: e.action,
                    proof: *proof,
                }
            } else if v3 {
                ServerMsg::HistoryV3 {
                    id: e.id,
                    from: e.from,
                    text: e.text,
                    time_ms: e.time_ms,
                    action: e.action,
                }
            } else {
                ServerMsg::History {
                    from: e.from,
                    text: e.text,
                    time_ms: e.time_ms,
                    action: e.action,
                }
            };
            let _ = outbox.try_send(msg.to_frame());
        }
        if v3 {
            let done = ServerMsg::Replayed {
                resumed,
                count,
                missed,
            };
            let _ = outbox.try_send(done.to_frame());
        }
        if returning || from_elsewhere {
            st.ghosts.remove(&key);
            if st.members.len() < options.announce_limit {
                let frame = ServerMsg::Returned {
                    name: name.to_string(),
                }
                .to_frame();
                self.broadcast_v3(&mut st, frame, None);
            }
        } else if replaced.is_none() && st.members.len() < options.announce_limit {
            let frame = ServerMsg::Joined {
                name: name.to_string(),
            }
            .to_frame();
            self.broadcast(&mut st, frame, None);
        }
        let name: Arc<str> = name.into();
        let key = if *key == *name {
            Arc::clone(&name)
        } else {
            key.into()
        };
        st.by_name.insert(key, id);
        st.members.insert(
            id,
            Box::new(Member {
                name: Arc::clone(&name),
                outbox,
                ending,
                peer,
                joined: Instant::now(),
            }),
        );
        Ok(Joined { id, name })
    }

    /// Reads the log for a join. A log that cannot be read costs the member
    /// its replay, not its place: it is told how many it missed.
    fn read_log(&self, st: &State, after: u64, upto: u64, max: usize) -> Vec<Entry> {
        // The window holds every id from its first to `published`: if the
        // request starts inside it (or the newest `max` all lie inside it),
        // it is the answer.
        let first = st.recent.front().map(|e| e.id);
        let from = (after + 1).max(upto.saturating_sub(max as u64).saturating_add(1));
        if upto == st.published && first.is_some_and(|f| f <= from) || upto <= after {
            let skip =
                st.recent.len() - st.recent.iter().rev().take_while(|e| e.id >= from).count();
            return st.recent.iter().skip(skip).cloned().collect();
        }
        match self.store.read(after, upto, max) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot replay the room log: {e}");
                Vec::new()
            }
        }
    }

    /// Takes a public message (or action) from `id` for the log; the log's
    /// writer stores it, then [`Room::publish`] shows it. `None` if the
    /// member is gone. For the crate's tests: a session builds its lines
    /// from its own copy of the member, without the room's lock
    /// (`session.rs::submit`).
    #[cfg(test)]
    pub(crate) fn submit(
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
            m.peer.instance,
            m.name.to_string(),
            seq,
            text,
            action,
            proof,
        ))
    }

    /// The queue to the log's writer.
    pub fn log_queue(&self) -> &mpsc::Sender<LogItem> {
        &self.log
    }

    /// Shows a stored batch to the room, in id order, and acknowledges each
    /// message to its author; a duplicate is only acknowledged. `stored` is
    /// what the store made of each message, or why it could not store them
    /// (then each author is told nothing was sent).
    pub fn publish(
        &self,
        batch: impl IntoIterator<Item = Pending>,
        stored: Result<Vec<Appended>, StoreError>,
    ) {
        let mut st = self.lock();
        let results = match stored {
            Ok(r) => r,
            Err(e) => {
                let reason =
                    format!("the server could not store the message ({e}); nothing was sent");
                for p in batch {
                    self.metrics.messages_refused.inc();
                    self.send_to(
                        &mut st,
                        p.member,
                        ServerMsg::Refused {
                            seq: p.seq,
                            reason: reason.clone(),
                        }
                        .to_frame(),
                    );
                }
                return;
            }
        };
        // Lines stored in a cluster's log are shown by the room's feed, in
        // the log's order, on every server alike.
        let outgoing: Vec<Outgoing> = batch
            .into_iter()
            .zip(results)
            .filter(|(_, r)| !matches!(r, Appended::Ordered(_)))
            .map(|(p, r)| Outgoing::new(&st, p, r))
            .collect();
        if let Some(id) = outgoing.iter().filter_map(|o| o.id).max() {
            st.published = st.published.max(id);
        }
        self.fan_out(&mut st, outgoing);
    }

    /// Messages kept in the in-memory window: what a fresh join needs, and
    /// enough for the usual short reconnect.
    fn recent_len(&self) -> usize {
        let options = self.options();
        options.history.max(options.replay_max.min(RECENT_MAX))
    }

    /// Queues a stored batch for the room, member by member: each member
    /// gets the batch's messages by others and the acknowledgements of its
    /// own, in id order, as one item of its queue ([`Backlog::offer_part`]):
    /// one hand-over to its writer, which sends them in one write without
    /// copying them again, instead of one per message. Each message is
    /// encoded once per kind of member (version 3 or older, and signed for
    /// version 4), and only if such a member exists. A member whose queue
    /// cannot take its whole part is not reading: it gets none of it and is
    /// removed once the batch is queued.
    fn fan_out(&self, st: &mut State, mut outgoing: Vec<Outgoing>) {
        let mut slow = Vec::new();
        // Summed here and recorded once after the loop: two atomic updates
        // per batch rather than per recipient.
        let (mut delivered, mut deepest) = (0u64, 0usize);
        for (mid, m) in &st.members {
            // Sized first, so the part is copied into once, never grown.
            let (mut frames, mut bytes, mut others) = (0, 0, 0);
            for o in &mut outgoing {
                if let Some(p) = o.piece(*mid, m) {
                    frames += 1;
                    bytes += p.len_bound();
                    others += u64::from(*mid != o.author);
                }
            }
            // The depth of the queue this part joins, read before it is
            // queued (the member's writer, on another thread, may take
            // frames meanwhile, so adding the part's is at most the deepest
            // it got).
            let depth = m.ending.backlog.queued(&m.outbox);
            let full = match frames {
                0 => continue,
                1 => match outgoing.iter_mut().find_map(|o| o.piece(*mid, m)) {
                    Some(p) => is_full(m.offer(p.frame())),
                    None => continue,
                },
                _ => {
                    let mut part = Part::with_capacity(bytes);
                    for o in &mut outgoing {
                        if let Some(p) = o.piece(*mid, m) {
                            p.add_to(&mut part);
                        }
                    }
                    is_full(m.ending.backlog.offer_part(&m.outbox, part))
                }
            };
            if full {
                slow.push(*mid);
                continue;
            }
            delivered += others;
            deepest = deepest.max(depth + frames);
        }
        if delivered > 0 {
            self.metrics.messages_delivered.inc_by(delivered);
            self.metrics.queue_depth(deepest);
        }
        // Read once per batch, not per message: it takes the options' lock.
        let keep = self.recent_len();
        if keep > 0 {
            for o in outgoing {
                if let (Some(id), Some(e)) = (o.id, o.entry) {
                    if st.recent.len() >= keep {
                        st.recent.pop_front();
                    }
                    st.recent.push_back(Entry {
                        id,
                        from: e.from,
                        text: e.text,
                        time_ms: e.time_ms,
                        action: e.action,
                        proof: e.proof,
                    });
                }
            }
        }
        if !slow.is_empty() {
            self.evict_slow(st, slow);
        }
    }

    /// Delivers a private message to one member, echoes it to the sender,
    /// and acknowledges it; or refuses it if there is no such member. A
    /// signed one goes with its proof to members that speak version 4 and
    /// as a plain `Private` to the others, who could not check it.
    ///
    /// A recipient connected to another node of the cluster is not
    /// reached here: the message comes back as [`Away`], for the caller to
    /// send to that node without holding the room's lock, and to finish
    /// with [`Room::private_sent`]. Nothing is acknowledged before then.
    pub fn private(
        &self,
        id: MemberId,
        seq: u64,
        to: &str,
        text: String,
        proof: Option<Box<Proof>>,
    ) -> Option<Away> {
        let mut st = self.lock();
        let (from, instance) = st
            .members
            .get(&id)
            .map(|m| (m.name.to_string(), m.peer.instance))?;
        // Private messages are not logged; a re-send after a reconnect is
        // recognised in memory instead.
        if let Some(i) = instance {
            let seen = st.private_seen.entry(i).or_default();
            if seen.0.contains(&seq) {
                self.send_to(&mut st, id, ServerMsg::AckV3 { seq, id: 0 }.to_frame());
                return None;
            }
        }
        let line = PrivateLine {
            from,
            to: to.to_owned(),
            text,
            time_ms: now_ms(),
            proof: proof.map(|p| *p),
        };
        let target = st.by_name.get(names::fold(to).as_str()).copied();
        let Some(target) = target else {
            if let Some(node) = self.presence().and_then(|p| p.node_of(to)) {
                return Some(Away { node, line });
            }
            let reason = format!("there is nobody called {to:?} here");
            self.metrics.messages_refused.inc();
            self.send_to(&mut st, id, ServerMsg::Refused { seq, reason }.to_frame());
            return None;
        };
        let to_name = self.deliver_private(&mut st, target, &line);
        if target != id {
            self.echo_and_ack(&mut st, id, seq, &line, &to_name);
        } else {
            self.ack_private(&mut st, id, seq);
        }
        None
    }

    /// Delivers a private message another node sent to one of this
    /// node's members (it is addressed by name); the recipient's name as
    /// this node knows it, or why it could not be delivered.
    pub fn private_from_afar(&self, line: &PrivateLine) -> Result<String, String> {
        let mut st = self.lock();
        let target = st.by_name.get(names::fold(&line.to).as_str()).copied();
        let Some(target) = target else {
            return Err(format!("there is nobody called {:?} here", line.to));
        };
        Ok(self.deliver_private(&mut st, target, line))
    }

    /// Finishes a private message sent to another node: on delivery (the
    /// recipient's name as that node knows it) the sender gets its echo
    /// and acknowledgement, otherwise the refusal.
    pub fn private_sent(
        &self,
        id: MemberId,
        seq: u64,
        line: &PrivateLine,
        outcome: Result<String, String>,
    ) {
        let mut st = self.lock();
        match outcome {
            Ok(to_name) => self.echo_and_ack(&mut st, id, seq, line, &to_name),
            Err(reason) => {
                self.metrics.messages_refused.inc();
                self.send_to(&mut st, id, ServerMsg::Refused { seq, reason }.to_frame());
            }
        }
    }

    /// Queues `line` for `target`; the target's name.
    fn deliver_private(&self, st: &mut State, target: MemberId, line: &PrivateLine) -> String {
        let (to_name, version) = st
            .members
            .get(&target)
            .map(|m| (m.name.to_string(), m.peer.version))
            .unwrap_or_default();
        self.send_to(st, target, line.frame(&to_name, version));
        to_name
    }

    /// The sender's copy of its private line, then its acknowledgement.
    fn echo_and_ack(
        &self,
        st: &mut State,
        id: MemberId,
        seq: u64,
        line: &PrivateLine,
        to_name: &str,
    ) {
        let version = st.members.get(&id).map_or(0, |m| m.peer.version);
        self.send_to(st, id, line.frame(to_name, version));
        self.ack_private(st, id, seq);
    }

    /// Acknowledges a delivered private message, remembering it so a
    /// re-send is acknowledged without a second delivery.
    fn ack_private(&self, st: &mut State, id: MemberId, seq: u64) {
        let Some(instance) = st.members.get(&id).map(|m| m.peer.instance) else {
            return;
        };
        let ack = match instance {
            Some(i) => {
                let seen = st.private_seen.entry(i).or_default();
                if seen.0.insert(seq) {
                    seen.1.push_back(seq);
                }
                while seen.1.len() > PRIVATE_KEYS {
                    if let Some(old) = seen.1.pop_front() {
                        seen.0.remove(&old);
                    }
                }
                ServerMsg::AckV3 { seq, id: 0 }
            }
            None => ServerMsg::Ack { seq },
        };
        self.send_to(st, id, ack.to_frame());
    }

    /// Renames a member, under the same rules as a new name, and tells
    /// everyone; `false` if it was refused (the member is told why).
    pub fn nick(&self, id: MemberId, new: &str) -> bool {
        let mut st = self.lock();
        let failed = |reason: String| {
            ServerMsg::Failed {
                what: "nick".into(),
                reason,
            }
            .to_frame()
        };
        if let Err(e) = names::validate(new) {
            self.send_to(&mut st, id, failed(format!("invalid name: {e}")));
            return false;
        }
        let key = names::fold(new);
        if let Some(other) = taken(&st, &key, Some(id)) {
            self.send_to(&mut st, id, failed(names::clash(new, &other)));
            return false;
        }
        let Some(m) = st.members.get_mut(&id) else {
            return false;
        };
        let new_name: Arc<str> = new.into();
        let old = std::mem::replace(&mut m.name, Arc::clone(&new_name)).to_string();
        st.by_name.remove(names::fold(&old).as_str());
        let key = if *key == *new_name {
            new_name
        } else {
            key.into()
        };
        st.by_name.insert(key, id);
        let frame = ServerMsg::Renamed {
            old,
            new: new.to_string(),
        }
        .to_frame();
        self.broadcast(&mut st, frame, None);
        true
    }

    /// Answers `Who`: everyone, with addresses only for operators.
    pub fn who(&self, id: MemberId) {
        let mut st = self.lock();
        let Some(asker_is_op) = st.members.get(&id).map(|m| m.peer.operator) else {
            return;
        };
        let mut members: Vec<MemberInfo> = st
            .members
            .values()
            .map(|m| MemberInfo {
                name: m.name.to_string(),
                connected_secs: m.joined.elapsed().as_secs(),
                addr: match (asker_is_op, m.peer.current_addr()) {
                    (true, Some(a)) => a.to_string(),
                    (true, None) => "local".into(),
                    (false, _) => String::new(),
                },
                operator: m.peer.operator,
            })
            .collect();
        if let Some(p) = self.presence.get() {
            members.extend(p.others(asker_is_op));
        }
        self.send_to(&mut st, id, ServerMsg::Members { members }.to_frame());
    }

    /// Logs each member whose connection migrated (a NAT rebinding, a new
    /// network) since the last look, once per move. One pass over the room
    /// every [`ADDRESS_CHECK`] instead of a timer in every session: ten
    /// thousand idle members would otherwise keep ten thousand timers and
    /// wake five thousand times a second to find nothing.
    pub fn note_moves(&self) {
        let mut st = self.lock();
        for m in st.members.values_mut() {
            let (Some(conn), Some(seen)) = (&m.peer.conn, m.peer.addr) else {
                continue;
            };
            let now = conn.remote_address();
            if now != seen {
                tracing::info!(
                    name = %qchat_proto::text::sanitize(&m.name),
                    from = %seen,
                    to = %now,
                    "the member's address changed"
                );
                m.peer.addr = Some(now);
            }
        }
    }

    /// Removes a member on an operator's request.
    pub fn kick(&self, id: MemberId, name: &str, reason: &str) {
        let mut st = self.lock();
        let failed = |reason: String| {
            ServerMsg::Failed {
                what: "kick".into(),
                reason,
            }
            .to_frame()
        };
        let Some((by, is_op)) = st
            .members
            .get(&id)
            .map(|m| (m.name.to_string(), m.peer.operator))
        else {
            return;
        };
        if !is_op {
            self.send_to(
                &mut st,
                id,
                failed(
                    "only operators can kick, and you are not one (operators are the host, \
                     keys the server was started with --operator, and keys an operator gave /op)"
                        .into(),
                ),
            );
            return;
        }
        let Some(target) = st.by_name.get(names::fold(name).as_str()).copied() else {
            self.send_to(
                &mut st,
                id,
                failed(format!("there is nobody called {name:?} here")),
            );
            return;
        };
        if target == id {
            self.send_to(
                &mut st,
                id,
                failed("you cannot kick yourself; use /quit".into()),
            );
            return;
        }
        // Operators at a distance are the host's helpers, not its
        // replacement: the host's own link (at the server) stays.
        if st
            .members
            .get(&target)
            .is_some_and(|m| m.peer.operator && m.peer.addr.is_none())
        {
            self.send_to(
                &mut st,
                id,
                failed(format!(
                    "{name} is the host, at the server, and cannot be kicked"
                )),
            );
            return;
        }
        let frame = ServerMsg::Kicked {
            by: by.clone(),
            reason: reason.to_string(),
        }
        .to_frame();
        if let Some(m) = st.members.get(&target) {
            let _ = m.offer(frame);
        }
        let why = if reason.is_empty() {
            format!("kicked by {by}")
        } else {
            format!("kicked by {by}: {reason}")
        };
        self.end(&mut st, target, CloseCode::Kicked, &why);
    }

    /// Ends the sessions of members who proved `key` — a key just removed
    /// from its name by `by` — telling them why, as a kick; returns how
    /// many there were.
    pub fn end_key(&self, key: qchat_tls::Fingerprint, by: &str, reason: &str) -> usize {
        self.end_matching(
            |p| p.key == Some(key),
            by,
            reason,
            "its device was removed from the name",
        )
    }

    /// Ends the sessions of the members whose peer `matches`, telling them
    /// `reason` from `by` as a kick, and the room `why`; returns how many
    /// there were.
    pub fn end_matching(
        &self,
        matches: impl Fn(&Peer) -> bool,
        by: &str,
        reason: &str,
        why: &str,
    ) -> usize {
        let mut st = self.lock();
        let ids: Vec<MemberId> = st
            .members
            .iter()
            .filter(|(_, m)| matches(&m.peer))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            let frame = ServerMsg::Kicked {
                by: by.to_string(),
                reason: reason.to_string(),
            }
            .to_frame();
            if let Some(m) = st.members.get(id) {
                let _ = m.offer(frame);
            }
            self.end(&mut st, *id, CloseCode::Kicked, why);
        }
        ids.len()
    }

    /// Sends one frame to one member.
    pub fn reply(&self, id: MemberId, msg: &ServerMsg) {
        let mut st = self.lock();
        self.send_to(&mut st, id, msg.to_frame());
    }

    /// Removes a member and tells the others why. Dropping its queue's only
    /// sender lets its writer flush what is queued and finish the stream.
    /// Calling it for a member already gone does nothing.
    pub fn leave(&self, id: MemberId, reason: &str) {
        let mut st = self.lock();
        if let Some(m) = st.members.get(&id) {
            let host = m.peer.operator && m.peer.addr.is_none() && !reason.is_empty();
            let instance = m.peer.instance;
            if host {
                // The host leaving with a reason ends the server; the
                // shutdown that follows carries the reason.
                st.host_reason = Some(reason.to_string());
            }
            if let Some(i) = instance {
                st.private_seen.remove(&i);
            }
        }
        self.remove(&mut st, id, reason);
    }

    /// A member's connection dropped without a goodbye. A version-3 member
    /// keeps its name for the grace period, and the room hears that it is
    /// reconnecting rather than that it left; if it is not back in time it
    /// leaves with `reason`. Older members leave at once.
    pub fn lose(&self, id: MemberId, reason: &str) {
        let mut st = self.lock();
        let grace = self.options().grace;
        let instance = st.members.get(&id).and_then(|m| m.peer.instance);
        let (Some(instance), false, false) = (instance, grace.is_zero(), st.closed) else {
            drop(st);
            self.leave(id, reason);
            return;
        };
        let Some(m) = st.members.remove(&id) else {
            return;
        };
        let key = names::fold(&m.name);
        st.by_name.remove(key.as_str());
        if st.members.len() < self.options().announce_limit {
            let frame = ServerMsg::Reconnecting {
                name: m.name.to_string(),
            }
            .to_frame();
            self.broadcast_v3(&mut st, frame, None);
        }
        st.ghosts.insert(
            key.clone(),
            Ghost {
                name: m.name.to_string(),
                instance,
                was: id,
            },
        );
        let me = self.me.clone();
        let reason = reason.to_string();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(grace).await;
                if let Some(room) = me.upgrade() {
                    room.expire(&key, id, &reason);
                }
            });
        }
    }

    /// The grace of the ghost that was member `was` is over.
    fn expire(&self, key: &str, was: MemberId, reason: &str) {
        let mut st = self.lock();
        if st.ghosts.get(key).map(|g| g.was) != Some(was) {
            return;
        }
        let Some(g) = st.ghosts.remove(key) else {
            return;
        };
        st.private_seen.remove(&g.instance);
        if st.members.len() < self.options().announce_limit {
            let frame = ServerMsg::Left {
                name: g.name,
                reason: reason.to_string(),
            }
            .to_frame();
            self.broadcast(&mut st, frame, None);
        }
    }

    /// Tells every member the server is closing and empties the room; no one
    /// can join afterwards. `back`: a restart, after which members resume.
    /// When the host ended the server (`from_host`), its own `/quit`
    /// reason, if it gave one, is what members are told.
    pub fn shutdown(&self, reason: &str, back: bool, from_host: bool) {
        let mut st = self.lock();
        st.closed = true;
        let reason = match (&st.host_reason, from_host) {
            (Some(r), true) => r.clone(),
            _ => reason.to_string(),
        };
        let mut frames = PerKind::default();
        for m in st.members.values() {
            let frame = frames.frame(m.v3(), |v3| {
                let reason = reason.clone();
                if v3 {
                    ServerMsg::ShuttingDownV3 { reason, back }
                } else {
                    ServerMsg::ShuttingDown { reason }
                }
            });
            let _ = m.offer(frame);
        }
        st.members.clear();
        st.by_name.clear();
        st.ghosts.clear();
    }

    /// Sets the cluster's node addresses (`host:port`, each where a node
    /// accepts QUIC) and, when the list changed, sends it to every member
    /// that speaks version 6; members joining later get it after their
    /// welcome. Addresses beyond the protocol's limits are left out (a
    /// client would ignore the whole list otherwise). Returns whether the
    /// list changed.
    pub fn set_nodes(&self, addrs: Vec<String>) -> bool {
        use qchat_proto::limits::{MAX_NODES, MAX_NODE_ADDR_BYTES};
        let mut addrs: Vec<String> = addrs
            .into_iter()
            .filter(|a| !a.is_empty() && a.len() <= MAX_NODE_ADDR_BYTES)
            .collect();
        addrs.truncate(MAX_NODES);
        let mut st = self.lock();
        if st.nodes == addrs {
            return false;
        }
        let frame = ServerMsg::Nodes {
            addrs: addrs.clone(),
        }
        .to_frame();
        st.nodes = addrs;
        let mut slow = Vec::new();
        for (id, m) in &st.members {
            if m.peer.version >= 6 && is_full(m.offer(frame.clone())) {
                slow.push(*id);
            }
        }
        if !slow.is_empty() {
            self.evict_slow(&mut st, slow);
        }
        true
    }

    /// The cluster's node addresses as last set (empty: no cluster).
    pub fn nodes(&self) -> Vec<String> {
        self.lock().nodes.clone()
    }

    fn send_to(&self, st: &mut State, id: MemberId, frame: Bytes) {
        let full = match st.members.get(&id) {
            Some(m) => is_full(m.offer(frame)),
            None => false,
        };
        if full {
            self.evict_slow(st, vec![id]);
        }
    }

    /// Queues `frame` for every member but `except`. Members whose queue is
    /// full are not reading; they are disconnected rather than allowed to
    /// stall the room or grow memory without bound.
    fn broadcast(&self, st: &mut State, frame: Bytes, except: Option<MemberId>) {
        let mut slow = Vec::new();
        for (id, m) in &st.members {
            if Some(*id) != except && is_full(m.offer(frame.clone())) {
                slow.push(*id);
            }
        }
        if !slow.is_empty() {
            self.evict_slow(st, slow);
        }
    }

    /// Queues `frame` for every version-3 member but `except`: presence
    /// kinds older members would not understand.
    fn broadcast_v3(&self, st: &mut State, frame: Bytes, except: Option<MemberId>) {
        let mut slow = Vec::new();
        for (id, m) in &st.members {
            if Some(*id) != except && m.v3() && is_full(m.offer(frame.clone())) {
                slow.push(*id);
            }
        }
        if !slow.is_empty() {
            self.evict_slow(st, slow);
        }
    }

    fn evict_slow(&self, st: &mut State, ids: Vec<MemberId>) {
        for id in ids {
            tracing::info!(member = id, "disconnecting a member that is not reading");
            self.metrics.slow_reader_evictions.inc();
            self.end(
                st,
                id,
                CloseCode::SlowReader,
                "not reading (disconnected by the server)",
            );
        }
    }

    /// Removes a member on the server's initiative and tells its session to
    /// close with `code`.
    fn end(&self, st: &mut State, id: MemberId, code: CloseCode, reason: &str) {
        if let Some(m) = st.members.get(&id) {
            m.ending.trigger(code, reason);
        }
        self.remove(st, id, reason);
    }

    fn remove(&self, st: &mut State, id: MemberId, reason: &str) {
        let Some(m) = st.members.remove(&id) else {
            return;
        };
        st.by_name.remove(names::fold(&m.name).as_str());
        if st.members.len() < self.options().announce_limit {
            let frame = ServerMsg::Left {
                name: m.name.to_string(),
                reason: reason.to_string(),
            }
            .to_frame();
            self.broadcast(st, frame, None);
        }
    }
}

impl crate::log::Log for Room {
    fn store(&self) -> &Arc<dyn Store> {
        Room::store(self)
    }

    /// Half the smallest member queue (`--queue`): a member's part of a
    /// batch is queued whole, so a member still holding the previous
    /// batch's part can take the next one.
    fn max_batch(&self) -> usize {
        (self.options().queue_len / 2).clamp(1, crate::log::LOG_BATCH)
    }

    fn metrics(&self) -> &Metrics {
        Room::metrics(self)
    }

    fn publish(
        &self,
        batch: impl Iterator<Item = Pending>,
        stored: Result<Vec<Appended>, StoreError>,
    ) {
        Room::publish(self, batch, stored);
    }
}

/// One message of a batch being published, and what each member gets of
/// it: its author the acknowledgement, the others the message (if it is
/// new), each kind of frame encoded the first time a member needs it.
struct Outgoing {
    author: MemberId,
    /// The author's client instance: the author may already be back on a
    /// new connection (same instance, new member id), which gets its
    /// acknowledgement when it re-sends, never its own message.
    instance: Option<[u8; 16]>,
    seq: u64,
    /// Its id in the log if it was stored anew; `None` for a duplicate,
    /// which is only acknowledged.
    id: Option<u64>,
    /// Its id in the log, new or not, for the acknowledgement.
    acked_id: u64,
    /// Whether its author speaks version 3 (`None`: the author is gone).
    author_v3: Option<bool>,
    entry: Option<NewEntry>,
    frames: PerKind,
    /// For version-4 members, a signed message with its proof.
    signed: Option<Bytes>,
}

impl Outgoing {
    fn new(st: &State, p: Pending, appended: Appended) -> Self {
        let (id, acked_id) = match appended {
            Appended::New(id) => (Some(id), id),
            // Filtered out before (`Room::publish`): only acknowledged if
            // it ever got here.
            Appended::Duplicate(id) | Appended::Ordered(id) => (None, id),
        };
        Outgoing {
            author: p.member,
            instance: p.entry.key.map(|k| k.0),
            seq: p.seq,
            id,
            acked_id,
            author_v3: st.members.get(&p.member).map(|m| m.v3()),
            entry: id.map(|_| p.entry),
            frames: PerKind::default(),
            signed: None,
        }
    }

    /// What member `mid` gets of this message, if anything: the message's
    /// shared frame, borrowed (copied into the member's part, never
    /// cloned per member), or its author's acknowledgement.
    fn piece(&mut self, mid: MemberId, m: &Member) -> Option<Piece<'_>> {
        if mid == self.author {
            return match (self.id, self.author_v3) {
                (_, Some(true)) => Some(Piece::Ack(ServerMsg::AckV3 {
                    seq: self.seq,
                    id: self.acked_id,
                })),
                (Some(_), _) => Some(Piece::Ack(ServerMsg::Ack { seq: self.seq })),
                // A duplicate from a client before version 3 cannot have
                // happened (only version 3 re-sends); nothing to say.
                (None, _) => None,
            };
        }
        let (id, e) = (self.id?, self.entry.as_ref()?);
        if self.instance.is_some() && m.peer.instance == self.instance {
            return None;
        }
        let live = LiveChat {
            id,
            from: &e.from,
            text: &e.text,
            time_ms: e.time_ms,
            action: e.action,
        };
        Some(Piece::Shared(match &e.proof {
            // Encoded from the entry's own strings and proof: the entry
            // moves on to the recent window, so nothing is cloned for it.
            Some(proof) if m.peer.version >= 4 => self
                .signed
                .get_or_insert_with(|| live.to_signed_frame(proof)),
            _ => self.frames.slot(m.v3(), |v3| live.to_frame(v3)),
        }))
    }
}

/// What one member gets of one message ([`Outgoing::piece`]).
enum Piece<'a> {
    /// The message, encoded once for every member of its kind.
    Shared(&'a Bytes),
    /// The author's acknowledgement, encoded into its part.
    Ack(ServerMsg),
}

impl Piece<'_> {
    /// At most how many bytes it takes in a part: an acknowledgement's
    /// kind and two varints after the length prefix.
    fn len_bound(&self) -> usize {
        match self {
            Piece::Shared(f) => f.len(),
            Piece::Ack(_) => 4 + 1 + 2 * 10,
        }
    }

    fn add_to(&self, part: &mut Part) {
        match self {
            Piece::Shared(f) => part.push(f),
            Piece::Ack(msg) => part.encode(msg),
        }
    }

    /// The piece as a frame of its own, for a part of one frame: a shared
    /// frame is queued as is, not copied.
    fn frame(self) -> Bytes {
        match self {
            Piece::Shared(f) => f.clone(),
            Piece::Ack(msg) => msg.to_frame(),
        }
    }
}

/// One broadcast, encoded at most once per kind of member: version-3
/// members get one encoding, older members another, each made only when the
/// first member of its kind needs it.
#[derive(Default)]
struct PerKind {
    v3: Option<Bytes>,
    older: Option<Bytes>,
}

impl PerKind {
    /// The frame for a member (`v3` or older); `msg` builds the message
    /// for that kind the first time.
    fn frame(&mut self, v3: bool, msg: impl FnOnce(bool) -> ServerMsg) -> Bytes {
        self.slot(v3, |v3| msg(v3).to_frame()).clone()
    }

    /// The frame for a member (`v3` or older), borrowed; `encode` makes it
    /// for that kind the first time.
    fn slot(&mut self, v3: bool, encode: impl FnOnce(bool) -> Bytes) -> &Bytes {
        let slot = if v3 { &mut self.v3 } else { &mut self.older };
        slot.get_or_insert_with(|| encode(v3))
    }
}

/// Whether a queue refused a frame because it is full: its member is not
/// reading. A *closed* queue is not that: the member's writer has stopped
/// because its connection is gone (closed by the member, say, when many
/// leave at once), and its session is about to remove it with the reason
/// it saw. Counting it as slow would log a false alarm and announce the
/// wrong reason.
fn is_full<T>(sent: Result<(), TrySendError<T>>) -> bool {
    matches!(sent, Err(TrySendError::Full(_)))
}

/// The name of the member (other than `except`) that already has the
/// same-name key `key` (`names::fold`, which the callers need anyway).
fn taken(st: &State, key: &str, except: Option<MemberId>) -> Option<String> {
    st.by_name
        .get(key)
        .filter(|id| Some(**id) != except)
        .and_then(|id| st.members.get(id))
        .map(|m| m.name.to_string())
        .or_else(|| st.ghosts.get(key).map(|g| g.name.clone()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::writer::drained;

    use crate::log::{drain_now, LogItem};
    use crate::store::MemoryStore;

    /// A room and its log's queue, which the tests drain themselves.
    struct TestRoom {
        room: Arc<Room>,
        log: mpsc::Receiver<LogItem>,
    }

    impl std::ops::Deref for TestRoom {
        type Target = Room;
        fn deref(&self) -> &Room {
            &self.room
        }
    }

    impl TestRoom {
        /// Says something and lets the log's writer store and publish it.
        fn say(&mut self, id: MemberId, seq: u64, text: String, action: bool) {
            if let Some(p) = self.room.submit(id, seq, text, action, None) {
                self.room
                    .log_queue()
                    .try_send(LogItem::Message(p))
                    .expect("room in the queue");
            }
            drain_now(&self.room, &mut self.log);
        }
    }

    fn room() -> TestRoom {
        let room = Room::new(
            Arc::new(ServerOptions::default()),
            Arc::new(MemoryStore::new(1000)),
        );
        let log = room.take_log().expect("the queue is there");
        TestRoom { room, log }
    }

    fn peer(operator: bool) -> Peer {
        Peer {
            addr: None,
            operator,
            version: 2,
            instance: None,
            conn: None,
            key: None,
        }
    }

    fn member(r: &Room, name: &str, cap: usize) -> (Joined, mpsc::Receiver<Bytes>, Arc<Ending>) {
        let (tx, rx) = mpsc::channel(cap);
        let ending = Ending::new();
        let j = r
            .join(name, tx, Arc::clone(&ending), peer(name == "op"), None)
            .expect("joins");
        (j, rx, ending)
    }

    /// A node cut off from its cluster: every member over the network is
    /// told to move and removed (the shutting-down code), the host at the
    /// server's own interface stays, nobody is admitted and is told why;
    /// once restored, members are admitted again.
    #[test]
    fn a_cut_off_room_sends_members_away_and_admits_nobody_until_restored() {
        let r = room();
        let (tx, mut rx) = mpsc::channel(8);
        let ending = Ending::new();
        let remote = Peer {
            addr: Some("127.0.0.1:9".parse().expect("an address")),
            version: 3,
            instance: Some([1; 16]),
            ..peer(false)
        };
        r.join("alice", tx, Arc::clone(&ending), remote, None)
            .expect("joins");
        let (_op, _rop, op_ending) = member(&r, "op", 8);
        drained(&mut rx);
        r.cut_off("no cluster; move");
        assert_eq!(
            drained(&mut rx),
            [ServerMsg::ShuttingDownV3 {
                reason: "no cluster; move".into(),
                back: true
            }]
        );
        assert_eq!(
            ending.get().map(|(code, _)| *code),
            Some(CloseCode::ShuttingDown)
        );
        assert!(op_ending.get().is_none(), "the host stays");
        assert_eq!(r.len(), 1);
        let (tx, _rx) = mpsc::channel(8);
        let refused = r
            .join("bob", tx, Ending::new(), peer(false), None)
            .expect_err("nobody is admitted");
        assert_eq!(
            (refused.reason, refused.detail.as_str()),
            (RejectReason::ShuttingDown, "no cluster; move")
        );
        r.restore();
        let (tx, _rx) = mpsc::channel(8);
        r.join("alice", tx, Ending::new(), peer(false), None)
            .expect("the name is free again, and the room admits");
    }

    #[test]
    fn names_are_unique_without_regard_to_case() {
        let r = room();
        let _a = member(&r, "Alice", 8);
        let (tx2, _rx2) = mpsc::channel(8);
        let err = r
            .join("aLICE", tx2, Ending::new(), peer(false), None)
            .expect_err("taken");
        assert_eq!(err.reason, RejectReason::NameTaken);
    }

    /// One batch from two authors, fanned out member by member: each
    /// member gets the others' messages and its own acknowledgements
    /// interleaved in id order, exactly as if they had come one by one.
    #[test]
    fn a_batch_reaches_each_member_in_id_order_with_its_acks_in_place() {
        let mut r = room();
        let (a, mut ra) = v3_member(&r, "a", 1, None);
        let (b, mut rb) = v3_member(&r, "b", 2, None);
        let (_c, mut rc) = v3_member(&r, "c", 3, None);
        for rx in [&mut ra, &mut rb, &mut rc] {
            drained(rx);
        }
        let said = [(a.id, 1), (b.id, 1), (a.id, 2), (a.id, 3), (b.id, 2)];
        for (who, seq) in said {
            let p = r
                .room
                .submit(who, seq, format!("{who}/{seq}"), false, None)
                .expect("a member");
            r.room
                .log_queue()
                .try_send(LogItem::Message(p))
                .expect("room in the queue");
        }
        drain_now(&r.room, &mut r.log);
        // What member `me` should see: ids 1..=5 in order, its own as
        // acknowledgements, the others' as messages.
        let expect = |me: MemberId| -> Vec<(bool, u64)> {
            said.iter()
                .zip(1u64..)
                .map(|(&(who, _), id)| (who == me, id))
                .collect()
        };
        let seen = |msgs: Vec<ServerMsg>| -> Vec<(bool, u64)> {
            msgs.into_iter()
                .filter_map(|m| match m {
                    ServerMsg::AckV3 { id, .. } => Some((true, id)),
                    ServerMsg::ChatV3 { id, .. } => Some((false, id)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(seen(drained(&mut ra)), expect(a.id));
        assert_eq!(seen(drained(&mut rb)), expect(b.id));
        assert_eq!(seen(drained(&mut rc)), expect(u64::MAX));
    }

    #[test]
    fn broadcast_reaches_others_in_order_and_acks_sender() {
        let mut r = room();
        let (a, mut ra, _) = member(&r, "a", 8);
        let (_b, mut rb, _) = member(&r, "b", 8);
        r.say(a.id, 1, "one".into(), false);
        r.say(a.id, 2, "two".into(), false);
        let got_a = drained(&mut ra);
        assert!(matches!(got_a[0], ServerMsg::Welcome { .. }));
        assert!(matches!(got_a[1], ServerMsg::Joined { .. }));
        assert_eq!(
            got_a[2..],
            [ServerMsg::Ack { seq: 1 }, ServerMsg::Ack { seq: 2 }]
        );
        let got_b = drained(&mut rb);
        let texts: Vec<_> = got_b
            .iter()
            .filter_map(|m| match m {
                ServerMsg::Chat { from, text, .. } => Some((from.as_str(), text.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(texts, [("a", "one"), ("a", "two")]);
    }

    #[test]
    fn a_member_that_does_not_read_is_removed_and_announced() {
        let mut r = room();
        let (a, mut ra, _) = member(&r, "a", 64);
        let (_b, _rb, ending_b) = member(&r, "b", 2);
        for i in 0..4 {
            r.say(a.id, i, "x".into(), false);
        }
        assert_eq!(r.len(), 1);
        assert_eq!(ending_b.get().map(|e| e.0), Some(CloseCode::SlowReader));
        assert!(drained(&mut ra)
            .iter()
            .any(|m| matches!(m, ServerMsg::Left { name, .. } if name == "b")));
    }

    #[test]
    fn a_member_whose_connection_is_gone_is_not_taken_for_a_slow_reader() {
        let mut r = room();
        let (a, mut ra, _) = member(&r, "a", 64);
        let (b, rb, ending_b) = member(&r, "b", 2);
        // b's writer stopped (its connection closed): its queue is closed,
        // not full.
        drop(rb);
        for i in 0..4 {
            r.say(a.id, i, "x".into(), false);
        }
        assert!(ending_b.get().is_none(), "{:?}", ending_b.get());
        assert_eq!(r.len(), 2);
        // Its session then removes it with the reason it saw.
        r.leave(b.id, "");
        let left: Vec<_> = drained(&mut ra)
            .into_iter()
            .filter(|m| matches!(m, ServerMsg::Left { .. }))
            .collect();
        assert_eq!(
            left,
            [ServerMsg::Left {
                name: "b".into(),
                reason: String::new()
            }]
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        let r = room();
        let (tx, _rx) = mpsc::channel(8);
        let err = r
            .join("bad name", tx, Ending::new(), peer(false), None)
            .expect_err("invalid");
        assert_eq!(err.reason, RejectReason::NameInvalid);
    }

    #[test]
    fn history_is_replayed_to_newcomers_without_private_messages() {
        let mut r = room();
        let (a, _ra, _) = member(&r, "a", 64);
        let (_b, _rb, _) = member(&r, "b", 64);
        r.say(a.id, 1, "public".into(), false);
        r.private(a.id, 2, "b", "secret".into(), None);
        r.say(a.id, 3, "waves".into(), true);
        let (_c, mut rc, _) = member(&r, "c", 64);
        let got = drained(&mut rc);
        let history: Vec<_> = got
            .iter()
            .filter_map(|m| match m {
                ServerMsg::History { text, action, .. } => Some((text.as_str(), *action)),
                _ => None,
            })
            .collect();
        assert_eq!(history, [("public", false), ("waves", true)]);
    }

    #[test]
    fn private_messages_reach_only_the_target_and_echo_to_the_sender() {
        let r = room();
        let (a, mut ra, _) = member(&r, "a", 64);
        let (_b, mut rb, _) = member(&r, "b", 64);
        let (_c, mut rc, _) = member(&r, "c", 64);
        r.private(a.id, 1, "B", "psst".into(), None);
        let is_private =
            |m: &ServerMsg| matches!(m, ServerMsg::Private { text, .. } if text == "psst");
        assert!(drained(&mut rb).iter().any(is_private));
        assert!(drained(&mut ra).iter().any(is_private));
        assert!(!drained(&mut rc).iter().any(is_private));
        r.private(a.id, 2, "nobody", "x".into(), None);
        assert!(drained(&mut ra)
            .iter()
            .any(|m| matches!(m, ServerMsg::Refused { seq: 2, .. })));
    }

    /// An idle member's name is one allocation: the room's entry, its
    /// same-name key (when the name is its own key) and the session's copy
    /// (the join's answer) share it; the entry and the key also after a
    /// rename. Ten thousand idle members kept three copies each before.
    #[test]
    fn a_members_name_is_kept_once() {
        let r = room();
        let (alice, _rx, _e) = member(&r, "alice", 8);
        let (bob, _rx2, _e2) = member(&r, "Bob", 8);
        let shared = |id: MemberId, name: &Arc<str>| {
            let st = r.lock();
            let m = st.members.get(&id).expect("a member");
            let (key, _) = st
                .by_name
                .get_key_value(names::fold(name).as_str())
                .expect("its key");
            (Arc::ptr_eq(&m.name, name), Arc::ptr_eq(key, &m.name))
        };
        assert_eq!(shared(alice.id, &alice.name), (true, true));
        // "Bob" is not its own same-name key: the key is a copy of its own.
        assert_eq!(shared(bob.id, &bob.name), (true, false));
        assert!(r.nick(alice.id, "carol"));
        let st = r.lock();
        let m = st.members.get(&alice.id).expect("still a member");
        assert_eq!(&*m.name, "carol");
        let (key, _) = st.by_name.get_key_value("carol").expect("the new key");
        assert!(Arc::ptr_eq(key, &m.name), "the new key shares the new name");
        assert!(!st.by_name.contains_key("alice"), "the old key is gone");
    }

    /// The room's "you were removed" signal is in every member's session:
    /// its reason is boxed, since it is set once or never. With the
    /// member's backlog it is 56 bytes, 72 with the `Arc`'s counts: the
    /// same 80-byte allocation glibc made for the 64 before it.
    #[test]
    fn an_ending_stays_small() {
        let size = std::mem::size_of::<Ending>();
        assert!(size <= 56, "Ending is {size} bytes; box what is set once");
    }

    #[test]
    fn nick_is_announced_and_checked() {
        let r = room();
        let (a, mut ra, _) = member(&r, "a", 64);
        let (_b, mut rb, _) = member(&r, "b", 64);
        r.nick(a.id, "alice");
        let renamed = ServerMsg::Renamed {
            old: "a".into(),
            new: "alice".into(),
        };
        assert!(drained(&mut ra).contains(&renamed));
        assert!(drained(&mut rb).contains(&renamed));
        r.nick(a.id, "B");
        assert!(drained(&mut ra)
            .iter()
            .any(|m| matches!(m, ServerMsg::Failed { what, .. } if what == "nick")));
        // Changing only the case of one's own name is allowed.
        r.nick(a.id, "Alice");
        assert!(drained(&mut rb)
            .iter()
            .any(|m| matches!(m, ServerMsg::Renamed { new, .. } if new == "Alice")));
    }

    #[test]
    fn only_operators_kick() {
        let r = room();
        let (op, mut rop, _) = member(&r, "op", 64);
        let (b, mut rb, ending_b) = member(&r, "b", 64);
        let (_c, _rc, ending_c) = member(&r, "c", 64);
        r.kick(b.id, "c", "no");
        assert!(ending_c.get().is_none());
        assert!(drained(&mut rb)
            .iter()
            .any(|m| matches!(m, ServerMsg::Failed { what, .. } if what == "kick")));
        r.kick(op.id, "B", "spam");
        assert_eq!(ending_b.get().map(|e| e.0), Some(CloseCode::Kicked));
        assert!(drained(&mut rb)
            .iter()
            .any(|m| matches!(m, ServerMsg::Kicked { reason, .. } if reason == "spam")));
        assert!(drained(&mut rop)
            .iter()
            .any(|m| matches!(m, ServerMsg::Left { name, reason } if name == "b" && reason.contains("spam"))));
        assert_eq!(r.len(), 2);
        // An operator over the network (an --operator or /op key) kicks
        // members, but not the host at the server.
        let (tx, mut rr) = mpsc::channel(64);
        let remote = Peer {
            operator: true,
            addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9))),
            ..peer(false)
        };
        let remote = r
            .join("remote", tx, Ending::new(), remote, None)
            .expect("joins");
        r.kick(remote.id, "op", "coup");
        assert!(drained(&mut rr)
            .iter()
            .any(|m| matches!(m, ServerMsg::Failed { reason, .. } if reason.contains("the host"))));
        r.kick(remote.id, "c", "spam");
        assert_eq!(ending_c.get().map(|e| e.0), Some(CloseCode::Kicked));
    }

    #[test]
    fn who_shows_addresses_only_to_operators() {
        let r = room();
        let (op, mut rop, _) = member(&r, "op", 64);
        let (b, mut rb, _) = member(&r, "b", 64);
        r.who(op.id);
        r.who(b.id);
        let list = |msgs: Vec<ServerMsg>| {
            msgs.into_iter()
                .find_map(|m| match m {
                    ServerMsg::Members { members } => Some(members),
                    _ => None,
                })
                .expect("a member list")
        };
        let for_op = list(drained(&mut rop));
        assert_eq!(for_op.len(), 2);
        assert!(for_op.iter().all(|m| !m.addr.is_empty()));
        assert!(list(drained(&mut rb)).iter().all(|m| m.addr.is_empty()));
    }

    fn v3_member(
        r: &Room,
        name: &str,
        instance: u8,
        resume: Option<ResumePoint>,
    ) -> (Joined, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(4096);
        let peer = Peer {
            version: 3,
            instance: Some([instance; 16]),
            ..peer(false)
        };
        let j = r
            .join(name, tx, Ending::new(), peer, resume)
            .expect("joins");
        (j, rx)
    }

    /// Public messages among `msgs`, as (id, text), replayed or live; the
    /// session tests read them the same way.
    pub(crate) fn stored(msgs: &[ServerMsg]) -> Vec<(u64, String)> {
        msgs.iter()
            .filter_map(|m| match m {
                ServerMsg::HistoryV3 { id, text, .. } | ServerMsg::ChatV3 { id, text, .. } => {
                    Some((*id, text.clone()))
                }
                _ => None,
            })
            .collect()
    }

    proptest::proptest! {
        /// Any interleaving of new messages, re-sends, commits and a
        /// reader that drops and resumes from the last id it saw: the
        /// reader's transcript is the log, each message once, in order.
        #[test]
        fn a_resuming_reader_sees_the_log_exactly_once(ops in proptest::collection::vec(0u8..4, 1..80)) {
            let mut r = room();
            let log_id = r.store().log_id();
            let (writer, _wrx) = v3_member(&r, "w", 1, None);
            let (mut reader, mut rrx) = v3_member(&r, "r", 2, None);
            let mut transcript = stored(&drained(&mut rrx));
            let mut next_seq = 1u64;
            for op in ops {
                match op {
                    // A new message, not yet committed.
                    0 => {
                        let seq = next_seq;
                        next_seq += 1;
                        if let Some(p) = r.room.submit(writer.id, seq, seq.to_string(), false, None) {
                            r.room.log_queue().try_send(LogItem::Message(p)).expect("room");
                        }
                    }
                    // A re-send of an earlier message.
                    1 if next_seq > 1 => {
                        let seq = next_seq / 2;
                        if let Some(p) = r.room.submit(writer.id, seq, seq.to_string(), false, None) {
                            r.room.log_queue().try_send(LogItem::Message(p)).expect("room");
                        }
                    }
                    // The writer commits what is queued.
                    2 => drain_now(&r.room, &mut r.log),
                    // The reader's connection drops; it comes back resuming
                    // from the last id it displayed.
                    _ => {
                        transcript.extend(stored(&drained(&mut rrx)));
                        r.leave(reader.id, "");
                        let after = transcript.last().map(|t| t.0).unwrap_or(0);
                        let (j, rx) = v3_member(&r, "r", 2, Some(ResumePoint { log_id, after }));
                        reader = j;
                        rrx = rx;
                    }
                }
            }
            drain_now(&r.room, &mut r.log);
            transcript.extend(stored(&drained(&mut rrx)));
            let log = r.store().read(0, u64::MAX, usize::MAX).expect("reads");
            let log: Vec<(u64, String)> = log.into_iter().map(|e| (e.id, e.text)).collect();
            proptest::prop_assert_eq!(&transcript, &log);
            let texts: Vec<u64> = log.iter().map(|e| e.1.parse().expect("a number")).collect();
            let want: Vec<u64> = (1..next_seq).collect();
            proptest::prop_assert_eq!(texts, want, "each message stored once, in the order sent");
        }
    }

    #[test]
    fn the_memory_window_and_the_store_replay_the_same() {
        let options = Arc::new(ServerOptions {
            history: 2,
            replay_max: 3,
            ..ServerOptions::default()
        });
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1000));
        let room = Room::new(Arc::clone(&options), Arc::clone(&store));
        let mut r = TestRoom {
            log: room.take_log().expect("the queue"),
            room,
        };
        let (w, _wrx) = v3_member(&r, "w", 1, None);
        for seq in 1..=10 {
            r.say(w.id, seq, seq.to_string(), false);
        }
        let log_id = store.log_id();
        // A second room on the same log: nothing in memory, all from the
        // store (a restarted server).
        let cold = Room::new(options, Arc::clone(&store));
        for after in [0, 2, 7, 8, 10] {
            let resume = Some(ResumePoint { log_id, after });
            let (_a, mut warm_rx) = v3_member(&r, &format!("a{after}"), 9, resume.clone());
            let (_b, mut cold_rx) = v3_member(&cold, &format!("b{after}"), 9, resume);
            let warm = drained(&mut warm_rx);
            let cold_msgs = drained(&mut cold_rx);
            let want: Vec<u64> = (after.max(7) + 1..=10).collect();
            let got: Vec<u64> = stored(&warm).into_iter().map(|x| x.0).collect();
            assert_eq!(got, want, "after {after}");
            assert_eq!(stored(&warm), stored(&cold_msgs), "after {after}");
            assert_eq!(warm.last(), cold_msgs.last(), "the same Replayed");
        }
    }
}
