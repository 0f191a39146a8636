//! Names held online across the cluster: one entry per name in use on any
//! node, in the key-value bucket [`ONLINE_BUCKET`].
//!
//! Each node's room already keeps two of its own members from one name in
//! the same instant; this is what keeps two members on two nodes apart.
//! The hello claims the name with a create, which JetStream carries out
//! only if the key has no value (compare-and-set on the key's last
//! revision), so of two nodes claiming one name at once exactly one
//! wins. Every later write of an entry names the revision it replaces, so
//! a node never overwrites an entry another node took over.
//!
//! Entries expire: the bucket's maximum age is the TTL, and each node
//! rewrites its own entries every third of it. A node that dies stops
//! rewriting, and its members' names are free again within the TTL,
//! with nobody having to notice the death.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use qchat_proto::clock::now_ms;
use qchat_proto::names;
use serde::{Deserialize, Serialize};

use super::{token, Cluster, ClusterError};
use crate::room::Room;

/// The bucket of names in use.
pub const ONLINE_BUCKET: &str = "qchat_online";

/// How long an entry lives without being rewritten: the longest a dead
/// node's members still count as online. Short enough that a name is soon
/// free after a crash, long enough that a busy NATS or a paused node does
/// not drop live members (each entry is rewritten three times within it).
pub const ONLINE_TTL: Duration = Duration::from_secs(30);

/// How long after a member took its entry over from another node its
/// joins here (the lobby's, then each room's again) read as a return: the
/// rejoins of one reconnect follow its claim within this.
pub const RETURN_WINDOW: Duration = Duration::from_secs(30);

/// The bucket of registered names (claims), key bans and operators
/// granted in chat: `claim.<token>`, `ban.<token>`, `op.<token>`, each
/// token the hash of a same-name key ([`token`]).
pub const NAMES_BUCKET: &str = "qchat_names";

/// The registry's bucket, and a way to use it from the registry's
/// synchronous calls (which run off the runtime's threads, as they did
/// when they wrote only to a file).
pub struct Bucket {
    kv: kv::Store,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.kv.name)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// Opens (or creates) [`NAMES_BUCKET`]: entries never expire (a
    /// claim's own expiry is the registry's rule), one value per key.
    pub async fn open(cluster: &Cluster) -> Result<Arc<Bucket>, ClusterError> {
        let kv = cluster.bucket(NAMES_BUCKET, None, 1).await?;
        Ok(Arc::new(Bucket {
            kv,
            rt: tokio::runtime::Handle::current(),
        }))
    }

    /// The store.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// Runs `work` on the runtime and waits for it, at most twice the
    /// request timeout (`None` then). For the registry's calls, which run
    /// on blocking threads: waiting there holds up no session.
    pub(crate) fn block<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv_timeout(super::REQUEST_TIMEOUT * 2).ok()
    }
}

/// One name in use, as every node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineEntry {
    /// The name as its member spells it.
    pub name: String,
    /// The node the member is connected to ([`Cluster::node_id`]).
    pub node: String,
    /// The member's key fingerprint; `None` for a guest.
    pub key: Option<[u8; 32]>,
    /// The member's client instance (version 3 and later).
    pub instance: Option<[u8; 16]>,
    /// Whether the member is an operator, for the list operators see.
    pub operator: bool,
    /// When the member joined under the name, ms since the Unix epoch.
    pub since_ms: u64,
    /// Connected, or waiting for its connection to come back.
    pub state: State,
}

/// Whether a member is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Connected to its node.
    Online,
    /// Its connection dropped; its node keeps the name for it until then
    /// (ms since the Unix epoch).
    Reconnecting {
        /// The end of its grace.
        until_ms: u64,
    },
}

/// How many rewrites of a refresh round are in flight at once.
const REFRESH_AT_ONCE: usize = 64;

/// Who wants a name: what the hello says about the member.
#[derive(Clone, Copy, Debug)]
pub struct Claimant<'a> {
    /// The name.
    pub name: &'a str,
    /// Its key, if it has one.
    pub key: Option<[u8; 32]>,
    /// Its client instance.
    pub instance: Option<[u8; 16]>,
    /// Whether it is an operator.
    pub operator: bool,
}

/// Why a name could not be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A member on another node has it.
    Taken {
        /// The name as that member spells it.
        holder: String,
        /// That member's node.
        node: String,
        /// Whether that member is waiting to reconnect.
        reconnecting: bool,
    },
    /// NATS did not answer: the name cannot be checked now.
    Unavailable(String),
}

/// An entry this node wrote, with the revision its next write replaces.
struct Held {
    revision: u64,
    entry: OnlineEntry,
}

/// This node's part of the names in use.
pub struct Online {
    cluster: Arc<Cluster>,
    kv: kv::Store,
    ttl: Duration,
    /// Entries this node holds, by key.
    held: Mutex<HashMap<String, Held>>,
    /// Keys whose member came here from another node, and when: its join
    /// is a return, not a join ([`Online::returned`]).
    returns: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The room whose members and reconnecting members hold them: what
    /// decides whether a held entry is still wanted.
    room: OnceLock<Weak<Room>>,
}

impl std::fmt::Debug for Online {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Online")
            .field("ttl", &self.ttl)
            .field("held", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// The key of a name's entry.
pub fn key_of(name: &str) -> String {
    token(&names::fold(name))
}

impl Online {
    /// Opens the bucket (entries live `ttl`) and starts rewriting this
    /// node's entries every third of it, for as long as the returned value
    /// lives.
    pub async fn start(cluster: Arc<Cluster>, ttl: Duration) -> Result<Arc<Online>, ClusterError> {
        let kv = cluster.bucket(ONLINE_BUCKET, Some(ttl), 1).await?;
        let online = Arc::new(Online {
            cluster,
            kv,
            ttl,
            held: Mutex::new(HashMap::new()),
            returns: Mutex::new(HashMap::new()),
            room: OnceLock::new(),
        });
        super::every(ttl / 3, Arc::downgrade(&online), |online| async move {
            online.refresh().await;
        });
        Ok(online)
    }

    /// The bucket, for presence to watch.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// The node's connection.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// How long an entry lives unless rewritten.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Ties the held entries to the room whose members hold them; once.
    pub fn attach(&self, room: &Arc<Room>) {
        let _ = self.room.set(Arc::downgrade(room));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // Only whole entries are put in or taken out.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn returns(&self) -> MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        // Only whole entries are put in or taken out.
        self.returns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes whether the member now claiming `key` came from another node.
    fn note_return(&self, key: &str, from_elsewhere: bool) {
        let mut returns = self.returns();
        returns.retain(|_, at| at.elapsed() <= RETURN_WINDOW);
        if from_elsewhere {
            returns.insert(key.to_string(), tokio::time::Instant::now());
        } else {
            returns.remove(key);
        }
    }

    /// Whether `name`'s member took its entry over from another node
    /// within [`RETURN_WINDOW`]: a member of a node that died (its entry
    /// still online, since no node marked it reconnecting) or one that
    /// left a node while reconnecting. To this node's members it returned:
    /// the others' nodes already told them it was there.
    pub fn returned(&self, name: &str) -> bool {
        self.returns()
            .get(&key_of(name))
            .is_some_and(|at| at.elapsed() <= RETURN_WINDOW)
    }

    /// Claims `who.name` for a member joining this node. Another node's
    /// entry is refused unless it is this very member back on a new node
    /// (the same key, or for a guest the same client instance), which
    /// takes its own entry over. This node's own entry is left to the
    /// room, which decides between two members of one node.
    pub async fn claim(&self, who: Claimant<'_>) -> Result<(), Refused> {
        let key = key_of(who.name);
        let entry = OnlineEntry {
            name: who.name.to_string(),
            node: self.cluster.node_id().to_string(),
            key: who.key,
            instance: who.instance,
            operator: who.operator,
            since_ms: now_ms(),
            state: State::Online,
        };
        let bytes = encode(&entry)?;
        // A few rounds: the entry seen may change or vanish between the
        // failed create and the takeover.
        for _ in 0..4 {
            match self.kv.create(&key, bytes.clone()).await {
                Ok(revision) => {
                    self.note_return(&key, false);
                    self.lock().insert(key, Held { revision, entry });
                    return Ok(());
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(Refused::Unavailable(e.to_string())),
            }
            let current = self
                .kv
                .entry(&key)
                .await
                .map_err(|e| Refused::Unavailable(e.to_string()))?;
            let Some(current) = current.filter(|c| c.operation == kv::Operation::Put) else {
                continue;
            };
            let theirs: OnlineEntry = match postcard::from_bytes(&current.value) {
                Ok(t) => t,
                // A damaged entry holds no name worth keeping.
                Err(_) => match self.kv.update(&key, bytes.clone(), current.revision).await {
                    Ok(revision) => {
                        self.lock().insert(key, Held { revision, entry });
                        return Ok(());
                    }
                    Err(_) => continue,
                },
            };
            // This node's own entry: the room decides between its members.
            // One this node no longer keeps (its release failed) is taken
            // back, so that it is rewritten again.
            if theirs.node == entry.node && self.lock().contains_key(&key) {
                return Ok(());
            }
            let same_member = theirs.node == entry.node
                || match (who.key, theirs.key) {
                    (Some(mine), Some(old)) => mine == old,
                    (None, None) => who.instance.is_some() && who.instance == theirs.instance,
                    _ => false,
                };
            if !same_member {
                return Err(Refused::Taken {
                    holder: theirs.name,
                    node: theirs.node,
                    reconnecting: matches!(theirs.state, State::Reconnecting { .. }),
                });
            }
            let took = OnlineEntry {
                since_ms: theirs.since_ms,
                ..entry.clone()
            };
            let took_bytes = encode(&took)?;
            match self.kv.update(&key, took_bytes, current.revision).await {
                Ok(revision) => {
                    self.note_return(&key, theirs.node != entry.node);
                    self.lock().insert(
                        key,
                        Held {
                            revision,
                            entry: took,
                        },
                    );
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(Refused::Unavailable(e.to_string())),
            }
        }
        Err(Refused::Unavailable(
            "the name changed hands too often while being claimed".into(),
        ))
    }

    /// Brings the entry for `name` in line with the room: kept while a
    /// member is under it, marked reconnecting while its member's grace
    /// lasts, released when neither. Called when a member leaves, is lost,
    /// renames or fails to join; the periodic rewrite does the same for
    /// every entry, so a missed call costs only a delay.
    pub async fn settle(&self, name: &str) {
        let key = key_of(name);
        let Some((revision, entry)) = self.lock().get(&key).map(|h| (h.revision, h.entry.clone()))
        else {
            return;
        };
        match self.wanted(&entry) {
            Some(state) if state == entry.state => {}
            Some(state) => {
                let entry = OnlineEntry { state, ..entry };
                self.write(key, revision, entry).await;
            }
            None => self.release(key, revision).await,
        }
    }

    /// What the entry should say now, or `None` if nobody on this node
    /// holds the name any more.
    fn wanted(&self, entry: &OnlineEntry) -> Option<State> {
        // Not yet tied to a room (or in a test without one): the entry is
        // kept as it is.
        let Some(room) = self.room.get() else {
            return Some(entry.state);
        };
        let room = room.upgrade()?;
        match room.holds(&entry.name)? {
            false => Some(State::Online),
            true => Some(match entry.state {
                State::Reconnecting { until_ms } => State::Reconnecting { until_ms },
                State::Online => State::Reconnecting {
                    until_ms: now_ms().saturating_add(
                        u64::try_from(room.options().grace.as_millis()).unwrap_or(u64::MAX),
                    ),
                },
            }),
        }
    }

    /// Rewrites a held entry over `revision`. Refused because another
    /// node wrote since (its member took its own entry over there): the
    /// entry is no longer this node's to keep. Refused because it expired
    /// (NATS was out of reach for longer than the TTL): it is created
    /// again, unless someone else took the name meanwhile.
    async fn write(&self, key: String, revision: u64, entry: OnlineEntry) {
        let Ok(bytes) = encode(&entry) else {
            return;
        };
        let written = match self.kv.update(&key, bytes.clone(), revision).await {
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.kv.create(&key, bytes).await.map_err(|e| {
                    if e.kind() == kv::CreateErrorKind::AlreadyExists {
                        kv::UpdateError::new(kv::UpdateErrorKind::WrongLastRevision)
                    } else {
                        kv::UpdateError::new(kv::UpdateErrorKind::Other)
                    }
                })
            }
            other => other,
        };
        match written {
            Ok(revision) => {
                let mut held = self.lock();
                // Still ours, and not replaced by a newer claim meanwhile.
                if let Some(h) = held.get_mut(&key).filter(|h| h.revision <= revision) {
                    h.revision = revision;
                    h.entry = entry;
                }
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let mut held = self.lock();
                if held.get(&key).is_some_and(|h| h.revision == revision) {
                    held.remove(&key);
                }
                tracing::debug!(%key, "a name entry was taken over elsewhere");
            }
            // NATS away: the next round tries again.
            Err(e) => tracing::debug!(%key, "cannot rewrite a name entry: {e}"),
        }
    }

    /// Deletes a held entry, only if it is still the one this node wrote.
    async fn release(&self, key: String, revision: u64) {
        {
            let mut held = self.lock();
            if held.get(&key).is_some_and(|h| h.revision == revision) {
                held.remove(&key);
            } else {
                return;
            }
        }
        if let Err(e) = self.kv.delete_expect_revision(&key, Some(revision)).await {
            // Taken over meanwhile, or NATS away: either way the entry is
            // no longer rewritten, and expires.
            tracing::debug!(%key, "cannot release a name entry: {e}");
        }
    }

    /// Rewrites (or releases) every held entry, so that it outlives the
    /// TTL only while its member is on this node. Many at a time: each
    /// write is one small request, and waiting for each answer before the
    /// next would make a round for ten thousand members take seconds.
    async fn refresh(&self) {
        use futures_util::StreamExt;
        let all: Vec<(String, u64, OnlineEntry)> = self
            .lock()
            .iter()
            .map(|(k, h)| (k.clone(), h.revision, h.entry.clone()))
            .collect();
        futures_util::stream::iter(all)
            .for_each_concurrent(REFRESH_AT_ONCE, |(key, revision, entry)| async move {
                match self.wanted(&entry) {
                    Some(state) => {
                        let entry = OnlineEntry { state, ..entry };
                        self.write(key, revision, entry).await;
                    }
                    None => self.release(key, revision).await,
                }
            })
            .await;
    }

    /// How many entries this node holds.
    pub fn held(&self) -> usize {
        self.lock().len()
    }
}

fn encode(entry: &OnlineEntry) -> Result<Bytes, Refused> {
    postcard::to_allocvec(entry)
        .map(Bytes::from)
        .map_err(|e| Refused::Unavailable(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::testing::NatsServer;

    /// A new node's connection to `nats`.
    pub(crate) async fn node(nats: &NatsServer) -> Arc<Cluster> {
        Cluster::connect(&nats.options())
            .await
            .expect("connect to the test nats-server")
    }

    fn guest(name: &str, instance: u8) -> Claimant<'_> {
        Claimant {
            name,
            key: None,
            instance: Some([instance; 16]),
            operator: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_fifty_concurrent_claims_of_one_name_on_fifty_nodes_exactly_one_wins() {
        let nats = NatsServer::start().await;
        let mut nodes = Vec::new();
        for _ in 0..50 {
            let node = node(&nats).await;
            nodes.push(Online::start(node, ONLINE_TTL).await.expect("online"));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let node = Arc::clone(node);
            tasks.spawn(async move {
                // Fifty members (instances), spelling one name two ways.
                let name = if i % 2 == 0 { "Alice" } else { "alice" };
                let n = u8::try_from(i).expect("fifty");
                (i, node.claim(guest(name, n)).await)
            });
        }
        let mut winners = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (i, got) = done.expect("task");
            match got {
                Ok(()) => winners.push(i),
                Err(Refused::Taken { node, holder, .. }) => {
                    assert_ne!(node, nodes[i].cluster().node_id());
                    assert_eq!(names::fold(&holder), "alice");
                }
                Err(Refused::Unavailable(e)) => panic!("NATS failed: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let held: usize = nodes.iter().map(|n| n.held()).sum();
        assert_eq!(held, 1, "one entry in all");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_takes_its_own_entry_over_on_another_node_and_others_cannot() {
        let nats = NatsServer::start().await;
        let a = Online::start(node(&nats).await, ONLINE_TTL)
            .await
            .expect("a");
        let b = Online::start(node(&nats).await, ONLINE_TTL)
            .await
            .expect("b");
        let carol = Claimant {
            name: "carol",
            key: Some([7; 32]),
            instance: Some([1; 16]),
            operator: false,
        };
        a.claim(carol).await.expect("claim on a");
        let other = Claimant {
            key: Some([8; 32]),
            ..carol
        };
        match b.claim(other).await {
            Err(Refused::Taken { holder, node, .. }) => {
                assert_eq!(holder, "carol");
                assert_eq!(node, a.cluster().node_id());
            }
            got => panic!("another key took carol: {got:?}"),
        }
        // Her own key, a new instance (another client run): hers.
        let back = Claimant {
            instance: Some([2; 16]),
            ..carol
        };
        assert!(!b.returned("carol"), "not here yet");
        b.claim(back).await.expect("her own entry");
        assert!(b.returned("Carol"), "back from another node: a return");
        assert!(!a.returned("carol"));
        let entry = b.store().entry(key_of("carol")).await.expect("read");
        let entry: OnlineEntry =
            postcard::from_bytes(&entry.expect("present").value).expect("decode");
        assert_eq!(entry.node, b.cluster().node_id());
        // a's next rewrite finds the entry taken over and lets it go.
        a.refresh().await;
        assert_eq!(a.held(), 0);
        assert_eq!(b.held(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_nobody_rewrites_expires_within_the_ttl() {
        let nats = NatsServer::start().await;
        let ttl = Duration::from_secs(2);
        let dead = Online::start(node(&nats).await, ttl).await.expect("a");
        let live = Online::start(node(&nats).await, ttl).await.expect("b");
        dead.claim(guest("dave", 1)).await.expect("claim");
        assert!(matches!(
            live.claim(guest("dave", 2)).await,
            Err(Refused::Taken { .. })
        ));
        // The node dies: nothing rewrites its entry any more.
        drop(dead);
        // Expiry by age writes no event anyone could await: ask again
        // until the name is free, within a bound.
        let deadline = tokio::time::Instant::now() + ttl * 5;
        loop {
            match live.claim(guest("dave", 2)).await {
                Ok(()) => break,
                Err(Refused::Taken { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dead node's name never expired"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_that_expired_while_nats_was_away_is_made_again() {
        let nats = NatsServer::start().await;
        let ttl = Duration::from_secs(1);
        let a = Online::start(node(&nats).await, ttl).await.expect("a");
        a.claim(guest("erin", 1)).await.expect("claim");
        // As if NATS had been out of reach: the entry ages out unrewritten.
        let store = a.store().clone();
        let deadline = tokio::time::Instant::now() + ttl * 10;
        // The node's own rewrites keep it alive; stop them by forgetting
        // the revision they would replace, then let it expire.
        let held = a.lock().remove(&key_of("erin")).expect("held");
        while store.entry(key_of("erin")).await.expect("read").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.lock().insert(key_of("erin"), held);
        a.refresh().await;
        assert_eq!(a.held(), 1, "still held");
        let entry = store.entry(key_of("erin")).await.expect("read");
        assert!(entry.is_some(), "made again");
    }
}
