//! What a room is, shared by the nodes of a cluster: its name, topic,
//! operators, invite-only mode and invitations, one entry per room in the
//! key-value bucket [`ROOMS_BUCKET`], in place of each node's own
//! `rooms.meta`.
//!
//! Creating a room is a create of its key, which JetStream carries out only
//! if the key has no value: of two nodes creating one room at once exactly
//! one makes its creator the room's operator, and the other takes the
//! winner's entry. Every change names the revision it replaces and, when
//! another node changed the room in between, is made again on what that
//! node wrote, so no node's change overwrites another's.
//!
//! Every node watches the bucket: it keeps the list of the cluster's rooms
//! (for `/rooms` and the limit on rooms) and hands each change to its own
//! open room ([`crate::rooms::Rooms::apply_shared`]), which tells its
//! members as it tells them of a change made here.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};
use crate::rooms::{Meta, Rooms};
use crate::store::StoreError;

/// The bucket of rooms.
pub const ROOMS_BUCKET: &str = "qchat_rooms";

/// The entries' format: a version byte, then postcard.
const VERSION: u8 = 1;

/// How often a change is made again after other nodes changed the room
/// first, before it is given up: each retry means another node's change
/// landed, so running out takes a storm of changes to one room.
const RETRIES: usize = 32;

/// What changed last in a room: what its members are told of when a node
/// applies the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The room was created.
    Created,
    /// Its topic was set.
    Topic,
    /// It was made invite-only or open.
    Mode,
    /// Someone was invited.
    Invited,
    /// Someone was kicked (and lost the invitation).
    Kicked,
}

/// One room's entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub(crate) meta: Meta,
    /// Who made the last change, as spelt then.
    pub by: String,
    /// What it was.
    pub change: Change,
}

impl Record {
    fn encode(&self) -> Result<bytes::Bytes, String> {
        let mut body = vec![VERSION];
        body.extend(postcard::to_allocvec(self).map_err(|e| e.to_string())?);
        Ok(body.into())
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }
}

/// The cluster's rooms, as this node sees and changes them.
pub struct SharedRooms {
    cluster: Arc<Cluster>,
    kv: kv::Store,
    /// Every room of the cluster as last seen, by key: revision and entry.
    all: Mutex<HashMap<String, (u64, Record)>>,
    /// This node's open rooms, told of every change.
    rooms: OnceLock<Weak<Rooms>>,
    /// Who is in each room on every node.
    members: Arc<super::members::Members>,
}

impl std::fmt::Debug for SharedRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRooms")
            .field("rooms", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// A NATS failure as a member reads it.
fn unavailable(e: impl std::fmt::Display) -> String {
    format!("the cluster did not answer ({e}); try again")
}

impl SharedRooms {
    /// Opens (or creates) [`ROOMS_BUCKET`] and starts watching it, for as
    /// long as the returned value lives. Entries never expire: a room is
    /// kept as a node's `rooms.meta` kept it.
    ///
    /// Changes are applied to the rooms on the runtime this is called on,
    /// never on the connection's: a room's lock may be held by a join
    /// waiting for NATS, and the connection's one thread must stay free to
    /// answer it.
    pub async fn start(cluster: Arc<Cluster>) -> Result<Arc<SharedRooms>, ClusterError> {
        SharedRooms::start_with(cluster, super::names::ONLINE_TTL).await
    }

    /// [`SharedRooms::start`], a room's member on another node counting
    /// as gone `ttl` after its node last rewrote its entry (presence's
    /// TTL; shorter in tests).
    pub async fn start_with(
        cluster: Arc<Cluster>,
        ttl: Duration,
    ) -> Result<Arc<SharedRooms>, ClusterError> {
        let kv = cluster.bucket(ROOMS_BUCKET, None, 1).await?;
        let members = super::members::Members::start(&cluster, ttl).await?;
        super::forward::attach(&cluster, Arc::downgrade(&members)).await?;
        let shared = Arc::new(SharedRooms {
            cluster: Arc::clone(&cluster),
            kv: kv.clone(),
            all: Mutex::new(HashMap::new()),
            rooms: OnceLock::new(),
            members,
        });
        let (tx, rx) = tokio::sync::mpsc::channel(APPLY_QUEUE);
        tokio::spawn(apply(rx, Arc::downgrade(&shared)));
        cluster
            .handle()
            .spawn(watch(kv, Arc::downgrade(&shared), tx));
        Ok(shared)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, Record)>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells `rooms` of every change from now on (once).
    pub(crate) fn attach(&self, rooms: Weak<Rooms>) {
        self.members.attach(rooms.clone());
        let _ = self.rooms.set(rooms);
    }

    /// Who is in each room on every node.
    pub fn members(&self) -> &Arc<super::members::Members> {
        &self.members
    }

    /// The node's connection.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Every room of the cluster as last seen: its revision and entry.
    pub(crate) fn all(&self) -> Vec<(u64, Record)> {
        self.lock().values().cloned().collect()
    }

    /// Whether the room with key `key` is known, and how many rooms are.
    pub(crate) fn known(&self, key: &str) -> (bool, usize) {
        let all = self.lock();
        (all.contains_key(key), all.len())
    }

    /// Keeps `rec` at `rev` as the newest known entry of `key` (if it is).
    fn seen(&self, key: &str, rev: u64, rec: &Record) {
        let mut all = self.lock();
        if all.get(key).is_none_or(|(r, _)| *r < rev) {
            all.insert(key.to_string(), (rev, rec.clone()));
        }
    }

    /// Runs `work` on the connection's runtime and waits for it (from
    /// synchronous code, a room's lock maybe held).
    fn wait<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        let timed = async move {
            match tokio::time::timeout(super::REQUEST_TIMEOUT * 2, work).await {
                Ok(r) => Ok(r),
                Err(_) => Ok(Err(unavailable("no answer in time"))),
            }
        };
        match super::log::block_on(self.cluster.handle(), timed) {
            Ok(r) => r,
            Err::<_, StoreError>(e) => Err(unavailable(e)),
        }
    }

    /// The entry of `key` now, and its revision.
    pub(crate) fn read(&self, key: &str) -> Result<Option<(u64, Record)>, String> {
        let (kv, k) = (self.kv.clone(), key.to_string());
        let got = self.wait(async move { kv.entry(k).await.map_err(unavailable) })?;
        let Some(entry) = got.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let Some(rec) = Record::decode(&entry.value) else {
            return Err(format!(
                "the cluster holds a description of this room this version cannot read (revision {})",
                entry.revision
            ));
        };
        self.seen(key, entry.revision, &rec);
        Ok(Some((entry.revision, rec)))
    }

    /// Creates the entry of `key` as `rec` if there is none: the new
    /// revision, or the entry another node made first.
    pub(crate) fn create(&self, key: &str, rec: &Record) -> Result<CreateResult, String> {
        let (kv, k, body) = (self.kv.clone(), key.to_string(), rec.encode()?);
        let made = self.wait(async move {
            match kv.create(k, body).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })?;
        if let Some(rev) = made {
            self.seen(key, rev, rec);
            return Ok(CreateResult::Created(rev));
        }
        match self.read(key)? {
            Some((rev, theirs)) => Ok(CreateResult::Exists(rev, theirs)),
            None => Err(unavailable("the room was created and is gone")),
        }
    }

    /// Changes the entry of `key`: `change` is applied to the newest entry
    /// (and applied again to a newer one when another node wrote first),
    /// refusing with its reason. The revision written and the entry.
    pub(crate) fn update(
        &self,
        key: &str,
        by: &str,
        kind: Change,
        mut change: impl FnMut(&mut Meta) -> Result<(), String>,
    ) -> Result<(u64, Record), String> {
        for _ in 0..RETRIES {
            let Some((rev, mut rec)) = self.read(key)? else {
                return Err("the cluster does not know this room any more".into());
            };
            change(&mut rec.meta)?;
            rec.by = by.to_string();
            rec.change = kind;
            let (kv, k, body) = (self.kv.clone(), key.to_string(), rec.encode()?);
            let wrote = self.wait(async move {
                match kv.update(k, body, rev).await {
                    Ok(new) => Ok(Some(new)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                    Err(e) => Err(unavailable(e)),
                }
            })?;
            if let Some(new) = wrote {
                self.seen(key, new, &rec);
                return Ok((new, rec));
            }
        }
        Err(unavailable("the room kept changing on other nodes"))
    }
}

/// What a create found.
pub(crate) enum CreateResult {
    /// Made, at this revision.
    Created(u64),
    /// Another node made it first: its revision and entry.
    Exists(u64, Record),
}

/// Changes on their way from the watch to the rooms: bounded, the watch
/// waits when the rooms fall behind.
const APPLY_QUEUE: usize = 256;

/// Hands each change the watch saw to this node's open rooms.
async fn apply(mut rx: tokio::sync::mpsc::Receiver<(u64, Record)>, shared: Weak<SharedRooms>) {
    while let Some((rev, rec)) = rx.recv().await {
        let Some(s) = shared.upgrade() else {
            return;
        };
        if let Some(rooms) = s.rooms.get().and_then(Weak::upgrade) {
            rooms.apply_shared(rev, rec);
        }
    }
}

/// Follows the bucket for as long as `shared` lives, watching again from
/// the last revision seen whenever the watch ends; keeps the list of rooms
/// and sends each change on to `rooms`.
async fn watch(
    kv: kv::Store,
    shared: Weak<SharedRooms>,
    rooms: tokio::sync::mpsc::Sender<(u64, Record)>,
) {
    let alive = || shared.strong_count() > 0;
    super::follow::bucket(kv, "the rooms", alive, |entry| {
        let shared = shared.clone();
        let rooms = rooms.clone();
        async move {
            let Some(s) = shared.upgrade() else {
                return ControlFlow::Break(());
            };
            if entry.operation != kv::Operation::Put {
                return ControlFlow::Continue(());
            }
            let Some(rec) = Record::decode(&entry.value) else {
                tracing::warn!(key = entry.key, "a room's description does not decode");
                return ControlFlow::Continue(());
            };
            s.seen(&entry.key, entry.revision, &rec);
            drop(s);
            if rooms.send((entry.revision, rec)).await.is_err() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::log::JetStreamLog;
    use crate::cluster::members::tests::until;
    use crate::cluster::testing::NatsServer;
    use crate::room::{MemberId, Room};
    use crate::rooms::{Actor, StoreFactory};
    use crate::store::Store;
    use crate::ServerOptions;
    use qchat_proto::ServerMsg;

    /// A node: its lobby (kept alive by the caller) and its rooms, the
    /// rooms' logs and descriptions the cluster's.
    async fn node(nats: &NatsServer) -> (Arc<Room>, Arc<Rooms>) {
        let cluster = Cluster::connect_apart(&nats.options())
            .await
            .expect("connects");
        let lobby = Room::new(
            Arc::new(ServerOptions::default()),
            Arc::new(crate::store::MemoryStore::new(100)),
        );
        let shared = SharedRooms::start(Arc::clone(&cluster))
            .await
            .expect("the bucket opens");
        let stores: Box<StoreFactory> = Box::new(move |key: &str| {
            let log = JetStreamLog::open_blocking(&cluster, key, 100, None)?;
            Ok(log as Arc<dyn Store>)
        });
        let rooms = Rooms::clustered(&lobby, stores, shared);
        (lobby, rooms)
    }

    fn actor(id: MemberId, name: &str) -> Actor {
        Actor {
            id,
            name: name.into(),
            key: None,
            server_op: false,
        }
    }

    /// A topic set on one node reaches the room's members on another, as
    /// the same notice a local change gives; the room's creator on one node
    /// is its operator on every node, and `/rooms` on a node lists a room
    /// only another node has open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_set_on_one_node_is_seen_on_the_other() {
        let nats = NatsServer::start().await;
        let ((_la, a), (_lb, b)) = (node(&nats).await, node(&nats).await);
        let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
        let (cha, created) = a.get_or_create("#dev", &alice, 10).expect("created");
        assert!(created);
        let (ta, _ra) = crate::room::MemberQueue::channel(64);
        cha.join(&alice, None, &ta, None, 50, 10).expect("joins");
        let (chb, created) = b.get_or_create("#DEV", &bob, 10).expect("opened");
        assert!(!created, "the cluster has it already");
        assert_eq!(chb.name(), "#dev", "as its creator spelt it");
        let (tb, mut rb) = crate::room::MemberQueue::channel(64);
        chb.join(&bob, None, &tb, None, 50, 10).expect("joins");
        let refused = chb.set_topic(&bob, "mine").expect_err("bob is no operator");
        assert!(refused.contains("operators"), "{refused}");
        cha.set_topic(&alice, "deploys only")
            .expect("the creator's");
        let seen = until(&mut rb, |m| matches!(m, ServerMsg::TopicSet { .. })).await;
        assert!(
            matches!(&seen, ServerMsg::TopicSet { room, by, text } if room == "#dev" && by == "alice" && text == "deploys only"),
            "{seen:?}"
        );
        // A room only node A has open is still in node B's list.
        a.get_or_create("#ops", &alice, 10).expect("created");
        let wait = async {
            loop {
                let names: Vec<String> = b.list(&bob).into_iter().map(|r| r.name).collect();
                if names.contains(&"#ops".to_string()) {
                    return names;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let names = tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("listed in time");
        assert!(names.contains(&"#dev".to_string()), "{names:?}");
    }

    /// A room made invite-only on one node is closed on another to anyone
    /// not invited, at once; an invitation given on the first lets in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invite_only_on_one_node_closes_the_room_on_the_other() {
        let nats = NatsServer::start().await;
        let ((_la, a), (_lb, b)) = (node(&nats).await, node(&nats).await);
        let (alice, carol) = (actor(1, "alice"), actor(2, "carol"));
        let (cha, _) = a.get_or_create("#ops", &alice, 10).expect("created");
        let (chb, _) = b.get_or_create("#ops", &carol, 10).expect("opened");
        cha.set_invite_only(&alice, true).expect("its operator");
        let (tc, _rc) = crate::room::MemberQueue::channel(64);
        let refused = chb
            .join(&carol, None, &tc, None, 50, 10)
            .expect_err("closed on the other node too");
        assert!(refused.contains("invite-only"), "{refused}");
        assert!(b.list(&carol).is_empty(), "hidden from carol");
        cha.invite(&alice, "Carol").expect("invited");
        chb.join(&carol, None, &tc, None, 50, 10)
            .expect("invited on one node, let in on the other");
        // The kick takes the invitation back for every node.
        let kicked = chb.kick(&alice, "carol", "bye");
        kicked.expect("alice operates the room on every node");
        let (tc2, _rc2) = crate::room::MemberQueue::channel(64);
        assert!(cha.join(&carol, None, &tc2, None, 50, 10).is_err());
    }

    /// Those in a room on one node when it is made invite-only on another
    /// are as good as invited: after a move to the other node they get in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_on_every_node_keep_their_place_when_a_room_closes() {
        let nats = NatsServer::start().await;
        let ((_la, a), (_lb, b)) = (node(&nats).await, node(&nats).await);
        let (alice, dave) = (actor(1, "alice"), actor(2, "dave"));
        let (cha, _) = a.get_or_create("#ops", &alice, 10).expect("created");
        let (chb, _) = b.get_or_create("#ops", &dave, 10).expect("opened");
        let (td, mut rd) = crate::room::MemberQueue::channel(64);
        chb.join(&dave, None, &td, None, 50, 10).expect("open yet");
        cha.set_invite_only(&alice, true).expect("its operator");
        until(&mut rd, |m| matches!(m, ServerMsg::ModeSet { .. })).await;
        assert!(chb.leave(2, None, "moving", false));
        // Node B writes dave's invitation once it has seen the change.
        let wait = async {
            loop {
                let (td2, _rd2) = crate::room::MemberQueue::channel(64);
                if cha.join(&dave, None, &td2, None, 50, 10).is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("dave gets in on node A");
    }

    /// Two nodes creating the same rooms at the same moment: each room has
    /// exactly one creator, and it is that room's operator on both nodes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_creates_at_once_make_one_creator() {
        let nats = NatsServer::start().await;
        let ((_la, a), (_lb, b)) = (node(&nats).await, node(&nats).await);
        for i in 0..8 {
            let room = format!("#race{i}");
            let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
            let (ra, rb) = (room.clone(), room.clone());
            let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
            let (al, bo) = (alice.clone(), bob.clone());
            let one = tokio::task::spawn_blocking(move || a2.get_or_create(&ra, &al, 100));
            let two = tokio::task::spawn_blocking(move || b2.get_or_create(&rb, &bo, 100));
            let (one, two) = (one.await.expect("ran"), two.await.expect("ran"));
            let ((cha, ca), (chb, cb)) = (one.expect("a room"), two.expect("a room"));
            assert!(ca ^ cb, "exactly one creator of {room}: {ca} {cb}");
            let (winner, loser) = if ca { (alice, bob) } else { (bob, alice) };
            for ch in [&cha, &chb] {
                assert!(ch.set_topic(&loser, "x").is_err(), "{room}");
                ch.set_topic(&winner, "y").expect("the creator operates it");
            }
        }
    }

    /// The limit on rooms counts the cluster's rooms, not a node's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_room_limit_counts_every_node() {
        let nats = NatsServer::start().await;
        let ((_la, a), (_lb, b)) = (node(&nats).await, node(&nats).await);
        let alice = actor(1, "alice");
        a.get_or_create("#one", &alice, 3).expect("room 2 of 3");
        a.get_or_create("#two", &alice, 3).expect("room 3 of 3");
        // Node B counts the rooms it has seen in the bucket: once it has
        // seen A's two, a third is refused there.
        let wait = async {
            while b.list(&alice).len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("seen in time");
        let most = b
            .get_or_create("#three", &alice, 3)
            .expect_err("the cluster has its most rooms");
        assert!(most.contains("most rooms (3)"), "{most}");
        b.get_or_create("#ONE", &alice, 3)
            .expect("one of the cluster's rooms opens on another node");
    }
}
