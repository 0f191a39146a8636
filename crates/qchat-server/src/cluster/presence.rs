//! Who is online on the cluster's other nodes, from the names-in-use
//! bucket ([`super::names::ONLINE_BUCKET`]): the lobby's `/who` lists
//! them beside the node's own members, and their joins, departures and
//! reconnects reach this node's members as the node's own do.
//!
//! The bucket is watched. A new entry is a join; a deleted one a
//! departure; a change of state a reconnect or a return. An entry that
//! expires (its node died and stopped rewriting it) leaves no event in
//! the bucket, so each entry also counts as gone when it has not been
//! rewritten for the TTL.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use qchat_proto::clock::now_ms;
use qchat_proto::{MemberInfo, ServerMsg};
use tokio::time::Instant;

use super::names::{Online, OnlineEntry, State};
use crate::room::Room;

/// Why a member of a node that died is said to have left.
pub const NODE_GONE: &str = "its server stopped answering";

/// An entry another node wrote, and when it was last seen rewritten.
struct Seen {
    entry: OnlineEntry,
    at: Instant,
}

/// The other nodes' members, as last seen in the bucket.
pub struct Presence {
    node: String,
    ttl: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.node)
            .field("others", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// Starts watching `online`'s bucket for `room`'s notices; the watch
    /// ends when the room is gone. The entries already in the bucket are
    /// taken in without a notice (nobody joined just now).
    pub async fn start(online: &Arc<Online>, room: &Arc<Room>) -> Arc<Presence> {
        let presence = Arc::new(Presence {
            node: online.cluster().node_id().to_string(),
            ttl: online.ttl(),
            seen: Mutex::new(HashMap::new()),
        });
        let store = online.store().clone();
        // What was there before now is history, told without notices.
        let mut stream = store.stream.clone();
        let before = match stream.info().await {
            Ok(info) => info.state.last_sequence,
            Err(e) => {
                tracing::warn!("cannot read the names bucket's state: {e}");
                0
            }
        };
        let (p, r) = (Arc::downgrade(&presence), Arc::downgrade(room));
        tokio::spawn(watch(store, before, p, r));
        let (p, r) = (Arc::downgrade(&presence), Arc::downgrade(room));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(online_sweep(presence_ttl(&p)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(p), Some(r)) = (p.upgrade(), r.upgrade()) else {
                    return;
                };
                p.sweep(&r);
            }
        });
        presence
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        // Only whole entries go in or out.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The other nodes' connected members, for `/who`; operators also see
    /// which node each is on.
    pub fn others(&self, asker_is_op: bool) -> Vec<MemberInfo> {
        let now = now_ms();
        let mut list: Vec<MemberInfo> = self
            .lock()
            .values()
            .filter(|s| s.entry.state == State::Online)
            .map(|s| MemberInfo {
                name: s.entry.name.clone(),
                connected_secs: now.saturating_sub(s.entry.since_ms) / 1000,
                addr: if asker_is_op {
                    format!("node {}", s.entry.node)
                } else {
                    String::new()
                },
                operator: s.entry.operator,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// How many members the other nodes have connected, for the lobby's
    /// line of `/rooms`.
    pub fn count(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| s.entry.state == State::Online)
            .count()
    }

    /// Up to `max` of the other nodes' connected members' names, but
    /// `except` (a same-name key), for a welcome: no sorting, and no more
    /// of the list read than the welcome takes.
    pub fn names(&self, max: usize, except: &str) -> Vec<String> {
        self.lock()
            .values()
            .filter(|s| s.entry.state == State::Online)
            .map(|s| &s.entry.name)
            .filter(|n| qchat_proto::names::fold(n) != except)
            .take(max)
            .cloned()
            .collect()
    }

    /// The node `name` (any spelling of it) is connected to, when that is
    /// another node: where a private message to it is sent.
    pub fn node_of(&self, name: &str) -> Option<String> {
        let wanted = qchat_proto::names::fold(name);
        self.lock()
            .values()
            .find(|s| {
                s.entry.state == State::Online && qchat_proto::names::fold(&s.entry.name) == wanted
            })
            .map(|s| s.entry.node.clone())
    }

    /// Takes in one change of the bucket; returns the notice it is worth.
    fn apply(&self, e: &kv::Entry, quiet: bool) -> Option<ServerMsg> {
        let now: Option<OnlineEntry> = match e.operation {
            kv::Operation::Put => postcard::from_bytes(&e.value).ok(),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let mut seen = self.lock();
        let before = match &now {
            Some(entry) if entry.node != self.node => {
                let before = seen
                    .insert(
                        e.key.clone(),
                        Seen {
                            entry: entry.clone(),
                            at: Instant::now(),
                        },
                    )
                    .map(|s| s.entry);
                // A new name for a client that holds another on the same
                // node: a rename (`/nick` holds the new name, then lets the
                // old go). The old one's deletion then says nothing more.
                let renamed = (before.is_none() && !quiet && entry.instance.is_some())
                    .then(|| {
                        seen.iter()
                            .find(|(k, s)| {
                                **k != e.key
                                    && s.entry.node == entry.node
                                    && s.entry.instance == entry.instance
                                    && s.entry.state == State::Online
                            })
                            .map(|(k, _)| k.clone())
                    })
                    .flatten()
                    .and_then(|k| seen.remove(&k));
                if let Some(old) = renamed {
                    return Some(ServerMsg::Renamed {
                        old: old.entry.name,
                        new: entry.name.clone(),
                    });
                }
                before
            }
            // This node's own member, back here from another node: the
            // room speaks for it now, and has already.
            Some(_) => {
                seen.remove(&e.key);
                return None;
            }
            None => seen.remove(&e.key).map(|s| s.entry),
        };
        drop(seen);
        if quiet {
            return None;
        }
        notice(before.as_ref(), now.as_ref())
    }

    /// Forgets the entries no node rewrote for the TTL, telling the room.
    fn sweep(&self, room: &Room) {
        let gone: Vec<OnlineEntry> = {
            let mut seen = self.lock();
            let dead: Vec<String> = seen
                .iter()
                .filter(|(_, s)| s.at.elapsed() > self.ttl)
                .map(|(k, _)| k.clone())
                .collect();
            dead.iter()
                .filter_map(|k| seen.remove(k))
                .map(|s| s.entry)
                .collect()
        };
        for entry in gone {
            room.announce(&ServerMsg::Left {
                name: entry.name,
                reason: NODE_GONE.into(),
            });
        }
    }
}

/// Ties a clustered registry's shared parts to the node's room: the names
/// in use follow the room's members, `/who` and the join and leave
/// notices take in the other nodes' members, and bans and grants made on
/// another node are carried out here. Does nothing for a registry that is
/// not clustered.
pub async fn attach(room: &Arc<Room>) {
    let registry = Arc::clone(room.registry());
    let Some(online) = registry.online() else {
        return;
    };
    online.attach(room);
    let presence = Presence::start(online, room).await;
    if !room.set_presence(presence) {
        tracing::warn!("the room's presence was attached twice");
    }
    crate::moderation::enforce(room);
}

fn presence_ttl(p: &Weak<Presence>) -> Duration {
    p.upgrade().map_or(super::names::ONLINE_TTL, |p| p.ttl)
}

/// How often to look for entries nobody rewrites: as often as they are
/// rewritten.
fn online_sweep(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// The notice a change from `before` to `now` (another node's entries
/// only) is worth, in the words the room uses for its own members.
fn notice(before: Option<&OnlineEntry>, now: Option<&OnlineEntry>) -> Option<ServerMsg> {
    match (before, now) {
        (None, Some(n)) if n.state == State::Online => Some(ServerMsg::Joined {
            name: n.name.clone(),
        }),
        (Some(b), Some(n)) if b.state == State::Online && n.state != State::Online => {
            Some(ServerMsg::Reconnecting {
                name: n.name.clone(),
            })
        }
        (Some(b), Some(n)) if b.state != State::Online && n.state == State::Online => {
            Some(ServerMsg::Returned {
                name: n.name.clone(),
            })
        }
        (Some(b), None) => Some(ServerMsg::Left {
            name: b.name.clone(),
            reason: String::new(),
        }),
        _ => None,
    }
}

/// Follows the bucket for as long as both ends live, watching again from
/// the last change seen whenever NATS goes away and comes back.
async fn watch(store: kv::Store, before: u64, presence: Weak<Presence>, room: Weak<Room>) {
    let alive = || presence.strong_count() > 0 && room.strong_count() > 0;
    super::follow::bucket(store, "the names in use", alive, |change| {
        let (Some(p), Some(r)) = (presence.upgrade(), room.upgrade()) else {
            return std::future::ready(ControlFlow::Break(()));
        };
        match p.apply(&change, change.revision <= before) {
            // This node's own member, reconnecting, came back on
            // another node: to this room it returned, and its
            // place here is not kept for it any longer.
            Some(ServerMsg::Joined { name }) if r.forget_ghost(&name) => {
                r.announce(&ServerMsg::Returned { name });
            }
            Some(msg) => r.announce(&msg),
            None => {}
        }
        std::future::ready(ControlFlow::Continue(()))
    })
    .await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn entry(name: &str, state: State) -> OnlineEntry {
        OnlineEntry {
            name: name.into(),
            node: "b".into(),
            key: None,
            instance: None,
            operator: false,
            since_ms: 0,
            state,
        }
    }

    #[test]
    fn each_change_of_another_nodes_entry_is_the_notice_the_room_gives_its_own() {
        let on = entry("bob", State::Online);
        let away = entry("bob", State::Reconnecting { until_ms: 5 });
        assert!(
            matches!(notice(None, Some(&on)), Some(ServerMsg::Joined { name }) if name == "bob")
        );
        assert!(notice(None, Some(&away)).is_none());
        assert!(matches!(
            notice(Some(&on), Some(&away)),
            Some(ServerMsg::Reconnecting { .. })
        ));
        assert!(matches!(
            notice(Some(&away), Some(&on)),
            Some(ServerMsg::Returned { .. })
        ));
        assert!(notice(Some(&on), Some(&on)).is_none(), "a rewrite");
        assert!(matches!(
            notice(Some(&away), None),
            Some(ServerMsg::Left { .. })
        ));
    }

    pub(crate) mod nodes {
        //! Two nodes in process, sharing a real nats-server: members join
        //! each through the same session code a QUIC member runs.

        use std::sync::Arc;
        use std::time::Duration;

        use qchat_proto::{
            limits, ClientMsg, FrameDecoder, RejectReason, ServerMsg, PROTOCOL_VERSION,
        };
        use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
        use tokio::time::{timeout, Instant};

        use crate::cluster::names::tests::node as cluster_node;
        use crate::cluster::names::ONLINE_TTL;
        use crate::cluster::testing::NatsServer as Nats;
        use crate::registry::Registry;
        use crate::room::Peer;
        use crate::session::{run_stream, PipeSink};
        use crate::{Server, ServerOptions};

        const WAIT: Duration = Duration::from_secs(10);

        pub(crate) async fn node(nats: &Nats) -> Server {
            let server = Server::new(ServerOptions::default());
            let registry = Registry::clustered(cluster_node(nats).await, ONLINE_TTL)
                .await
                .expect("clustered registry");
            assert!(server.room().set_registry(Arc::new(registry)));
            super::super::attach(server.room()).await;
            server
        }

        pub(crate) struct Client {
            send: WriteHalf<DuplexStream>,
            recv: ReadHalf<DuplexStream>,
            decoder: FrameDecoder,
        }

        impl Client {
            pub(crate) async fn send(&mut self, msg: ClientMsg) {
                self.send
                    .write_all(&msg.to_frame())
                    .await
                    .expect("the pipe is open");
            }

            pub(crate) async fn next(&mut self) -> Option<ServerMsg> {
                let frame = timeout(WAIT, self.decoder.read_frame(&mut self.recv))
                    .await
                    .expect("the server answers in time")
                    .expect("whole frames");
                frame.map(|f| ServerMsg::decode(&f).expect("valid messages"))
            }

            pub(crate) async fn until(
                &mut self,
                what: &str,
                pred: impl Fn(&ServerMsg) -> bool,
            ) -> ServerMsg {
                loop {
                    match self.next().await {
                        Some(m) if pred(&m) => return m,
                        Some(_) => {}
                        None => panic!("the stream ended before {what}"),
                    }
                }
            }
        }

        /// A reading end whose end of stream is a lost connection (as a
        /// network drop is), not a member's goodbye.
        struct Dropping(ReadHalf<DuplexStream>);

        impl tokio::io::AsyncRead for Dropping {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let before = buf.filled().len();
                match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
                    std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => {
                        std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
                    }
                    other => other,
                }
            }
        }

        /// A guest's session on `server`, its hello sent.
        pub(crate) async fn hello(server: &Server, name: &str, instance: u8) -> Client {
            hello_as(server, name, instance, None, false).await
        }

        /// A session on `server` with the key `[key; 32]` (`None`: a
        /// guest), an operator or not, its hello sent.
        async fn hello_as(
            server: &Server,
            name: &str,
            instance: u8,
            key: Option<u8>,
            operator: bool,
        ) -> Client {
            let (client, server_end) = tokio::io::duplex(64 * 1024);
            let (server_recv, server_send) = tokio::io::split(server_end);
            let server_recv = Dropping(server_recv);
            let room = Arc::clone(server.room());
            let options = room.options();
            tokio::spawn(async move {
                let peer = Peer {
                    addr: None,
                    operator,
                    version: PROTOCOL_VERSION,
                    instance: None,
                    conn: None,
                    key: key.map(|k| qchat_tls::Fingerprint::from_bytes([k; 32])),
                };
                let deadline = Instant::now() + options.hello_timeout;
                run_stream(
                    PipeSink(server_send),
                    server_recv,
                    Box::new(peer),
                    &room,
                    &options,
                    deadline,
                    None,
                )
                .await
            });
            let (recv, send) = tokio::io::split(client);
            let mut c = Client {
                send,
                recv,
                decoder: FrameDecoder::new(limits::MAX_SERVER_FRAME),
            };
            c.send(ClientMsg::HelloV3 {
                version: PROTOCOL_VERSION,
                name: name.into(),
                instance: [instance; 16],
                resume: None,
            })
            .await;
            c
        }

        pub(crate) async fn member(server: &Server, name: &str, instance: u8) -> Client {
            let mut c = hello(server, name, instance).await;
            c.until("the end of the replay", |m| {
                matches!(m, ServerMsg::Replayed { .. })
            })
            .await;
            c
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_name_in_use_on_one_node_is_refused_on_another_and_presence_crosses() {
            let nats = Nats::start().await;
            let (a, b) = (node(&nats).await, node(&nats).await);
            let mut bob = member(&b, "bob", 2).await;
            // The watch brings bob to a in its own time; nothing to await.
            let deadline = Instant::now() + WAIT;
            while a.room().presence().map_or(0, |p| p.others(false).len()) == 0 {
                assert!(Instant::now() < deadline, "a never saw bob");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut alice = hello(&a, "alice", 1).await;
            // Her welcome lists bob, on the other node.
            match alice.next().await {
                Some(ServerMsg::WelcomeV3 { members, .. }) => assert_eq!(members, ["bob", "alice"]),
                got => panic!("no welcome: {got:?}"),
            }
            alice
                .until("the end of the replay", |m| {
                    matches!(m, ServerMsg::Replayed { .. })
                })
                .await;
            bob.until(
                "alice's join",
                |m| matches!(m, ServerMsg::Joined { name } if name == "alice"),
            )
            .await;
            // Another member wanting her name on the other node.
            let mut other = hello(&b, "ALICE", 3).await;
            match other.next().await {
                Some(ServerMsg::Rejected { reason, detail }) => {
                    assert_eq!(reason, RejectReason::NameTaken);
                    assert!(detail.contains("another server"), "{detail}");
                }
                got => panic!("not refused: {got:?}"),
            }
            // /who on b lists both nodes' members.
            bob.send(ClientMsg::Who).await;
            let list = bob
                .until("the list", |m| matches!(m, ServerMsg::Members { .. }))
                .await;
            let ServerMsg::Members { members } = list else {
                unreachable!()
            };
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["bob", "alice"]);
            // She renames on a: b hears a rename, as a's members do.
            alice
                .send(ClientMsg::Nick {
                    name: "alicia".into(),
                })
                .await;
            match bob
                .until("the rename", |m| {
                    matches!(
                        m,
                        ServerMsg::Renamed { .. }
                            | ServerMsg::Joined { .. }
                            | ServerMsg::Left { .. }
                    )
                })
                .await
            {
                ServerMsg::Renamed { old, new } => {
                    assert_eq!((old.as_str(), new.as_str()), ("alice", "alicia"))
                }
                got => panic!("not a rename: {got:?}"),
            }
            // She leaves: b hears it, and her first name is free there.
            alice
                .send(ClientMsg::Bye {
                    reason: "bye".into(),
                })
                .await;
            match bob
                .until("a departure", |m| {
                    matches!(m, ServerMsg::Left { .. } | ServerMsg::Joined { .. })
                })
                .await
            {
                ServerMsg::Left { name, .. } => assert_eq!(name, "alicia"),
                got => panic!("not her departure: {got:?}"),
            }
            let _alice_on_b = member(&b, "Alice", 3).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_member_lost_on_one_node_and_back_on_another_returns_there() {
            let nats = Nats::start().await;
            let (a, b) = (node(&nats).await, node(&nats).await);
            let mut carol = member(&a, "carol", 3).await;
            let mut bob = member(&b, "bob", 2).await;
            let alice = member(&a, "alice", 1).await;
            bob.until(
                "alice's join",
                |m| matches!(m, ServerMsg::Joined { name } if name == "alice"),
            )
            .await;
            // Her connection to a drops.
            drop(alice);
            carol
                .until(
                    "alice reconnecting",
                    |m| matches!(m, ServerMsg::Reconnecting { name } if name == "alice"),
                )
                .await;
            bob.until(
                "alice reconnecting, on the other node",
                |m| matches!(m, ServerMsg::Reconnecting { name } if name == "alice"),
            )
            .await;
            // Within her grace nobody else may take the name on b.
            let mut other = hello(&b, "alice", 9).await;
            match other.next().await {
                Some(ServerMsg::Rejected { reason, detail }) => {
                    assert_eq!(reason, RejectReason::NameTaken);
                    assert!(detail.contains("connection dropped"), "{detail}");
                }
                got => panic!("not refused: {got:?}"),
            }
            // She comes back on b: the same client instance takes her name.
            let _alice = member(&b, "alice", 1).await;
            carol
                .until(
                    "alice's return, on the other node",
                    |m| matches!(m, ServerMsg::Returned { name } if name == "alice"),
                )
                .await;
            assert_eq!(a.room().holds("alice"), None, "a keeps no place for her");
            carol.send(ClientMsg::Who).await;
            let list = carol
                .until("the list", |m| matches!(m, ServerMsg::Members { .. }))
                .await;
            let ServerMsg::Members { members } = list else {
                unreachable!()
            };
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            assert!(
                names.contains(&"alice") && names.contains(&"bob"),
                "{names:?}"
            );
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_ban_on_one_node_ends_the_session_on_another_and_refuses_it_there() {
            let nats = Nats::start().await;
            let (a, b) = (node(&nats).await, node(&nats).await);
            let mut op = hello_as(&a, "op", 1, Some(1), true).await;
            op.until("the end of the replay", |m| {
                matches!(m, ServerMsg::Replayed { .. })
            })
            .await;
            let mut mallory = hello_as(&b, "mallory", 2, Some(2), false).await;
            mallory
                .until("the end of the replay", |m| {
                    matches!(m, ServerMsg::Replayed { .. })
                })
                .await;
            op.until(
                "mallory's join",
                |m| matches!(m, ServerMsg::Joined { name } if name == "mallory"),
            )
            .await;
            // Her claim has reached a, so a knows her key.
            let deadline = Instant::now() + WAIT;
            while a
                .room()
                .registry()
                .lookup("mallory", ServerOptions::default().name_expiry)
                .is_none()
            {
                assert!(Instant::now() < deadline, "a never saw mallory's claim");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            op.send(ClientMsg::Moderate {
                op: qchat_proto::ModOp::Ban {
                    name: "mallory".into(),
                    reason: "spam".into(),
                },
            })
            .await;
            op.until(
                "the ban's answer",
                |m| matches!(m, ServerMsg::Notice { text } if text.contains("banned mallory")),
            )
            .await;
            let told = mallory
                .until("the ban, on the other node", |m| {
                    matches!(m, ServerMsg::Kicked { .. })
                })
                .await;
            assert!(matches!(told, ServerMsg::Kicked { reason, .. } if reason.contains("banned")));
            // And her key is refused at b's door from now on.
            let mut again = hello_as(&b, "mallory", 3, Some(2), false).await;
            match again.next().await {
                Some(ServerMsg::Rejected { reason, .. }) => {
                    assert_eq!(reason, RejectReason::Banned);
                }
                got => panic!("not refused: {got:?}"),
            }
        }
    }
}
