//! A room's feed: shows a clustered room's lines in the log's one order.
//!
//! The writer stores what this node's members say in the room's stream
//! but does not show it ([`crate::store::Appended::Ordered`]); the feed
//! reads the stream (an ordered consumer, from the newest id the room has
//! shown, plus one) and hands every line, whichever node took it, to the
//! room's usual publish path as newly stored. So every node shows every
//! line at the same place, a local author gets its acknowledgement where
//! its line falls in that order, and the room's window of recent lines and
//! its newest id stay what they are on one server. The consumer survives
//! a lost connection to NATS and goes on from the last line it read: no
//! gap, nothing twice.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use futures_util::{FutureExt, StreamExt};

use super::log::{decode, JetStreamLog};
use crate::log::{Log, Pending};
use crate::room::MemberId;
use crate::store::{Appended, Store};

/// Lines handed to the room at once, at most: what arrived together is
/// shown together (one lock, one wake-up per member), bounded so the
/// room's lock is not held for long.
const FEED_BATCH: usize = 256;

/// The author of a line said on another node: no member here has it.
const ELSEWHERE: MemberId = 0;

/// How long to wait before making the consumer again after it failed.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the feed of `room` if its log is a cluster's; does nothing for a
/// server's own log. The feed holds the room weakly and ends with it.
pub fn start<L: Log>(room: &Arc<L>) {
    let store = Arc::clone(room.store());
    let Some(log) = store.ordered() else {
        return;
    };
    let from = store.last_id() + 1;
    // On the server's runtime, where the room's other work runs: showing
    // a line takes the room's lock, which may be held by a join waiting
    // for NATS on the cluster's runtime.
    let handle = tokio::runtime::Handle::try_current().unwrap_or_else(|_| log.handle().clone());
    handle.spawn(run(Arc::downgrade(room), store, from));
}

async fn run<L: Log>(room: Weak<L>, store: Arc<dyn Store>, mut next: u64) {
    let Some(log) = store.ordered() else {
        return;
    };
    loop {
        if room.strong_count() == 0 {
            return;
        }
        match feed(&room, log, &mut next).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    subject = log.subject(),
                    next,
                    "the room's feed: {e}; again soon"
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Reads the stream from `next` and shows each line, until the room is
/// gone (`Ok`) or the consumer fails (then `next` is where to go on).
async fn feed<L: Log>(room: &Weak<L>, log: &JetStreamLog, next: &mut u64) -> Result<(), String> {
    let deliver_policy = if *next <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: *next,
        }
    };
    let consumer = log
        .stream()
        .create_consumer(push::OrderedConfig {
            deliver_subject: log.cluster().client().new_inbox(),
            filter_subject: log.subject().to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the room's stream: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read the room's stream: {e}"))?;
    let node = log.cluster().node_id().to_string();
    let mut batch: Vec<(Pending, Appended)> = Vec::new();
    loop {
        // Waits for one line, then takes whatever else is there already.
        let Some(first) = messages.next().await else {
            return Err("the stream ended".into());
        };
        let mut item = Some(first);
        while let Some(got) = item.take() {
            let m = got.map_err(|e| format!("reading the room's stream: {e}"))?;
            let seq = m
                .info()
                .map_err(|e| format!("a message without its place: {e}"))?
                .stream_sequence;
            if seq >= *next {
                *next = seq + 1;
                log.saw(seq);
                // A line this version cannot read is skipped: its id is
                // a gap here, as retention would make one.
                if let Some(line) = decode(&m.payload) {
                    let member = if line.node == node {
                        line.member
                    } else {
                        ELSEWHERE
                    };
                    batch.push((
                        Pending {
                            member,
                            seq: line.seq,
                            entry: line.entry,
                        },
                        Appended::New(seq),
                    ));
                }
            }
            if batch.len() < FEED_BATCH {
                item = messages.next().now_or_never().flatten();
            }
        }
        let Some(room) = room.upgrade() else {
            return Ok(());
        };
        let (lines, ids): (Vec<Pending>, Vec<Appended>) = batch.drain(..).unzip();
        if !lines.is_empty() {
            room.publish(lines.into_iter(), Ok(ids));
        }
        log.shown(*next - 1);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use qchat_proto::ServerMsg;
    use tokio::sync::mpsc;

    use crate::cluster::log::JetStreamLog;
    use crate::cluster::testing::NatsServer;
    use crate::cluster::Cluster;
    use crate::log::LogItem;
    use crate::room::{Ending, MemberId, Peer, Room};
    use crate::ServerOptions;

    use super::*;

    async fn node(nats: &NatsServer) -> Arc<Room> {
        let cluster = Cluster::connect(&nats.options()).await.expect("connects");
        let log = JetStreamLog::open(&cluster, "#lobby", 1000, None)
            .await
            .expect("opens");
        let room = Room::new(Arc::new(ServerOptions::default()), log);
        start(&room);
        let rx = room.take_log().expect("the queue");
        crate::log::spawn_writer(&room, rx).expect("a thread");
        room
    }

    fn join(room: &Room, name: &str, instance: u8) -> (MemberId, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(1000);
        let peer = Peer {
            addr: None,
            operator: false,
            version: qchat_proto::PROTOCOL_VERSION,
            instance: Some([instance; 16]),
            conn: None,
            key: None,
        };
        let j = room
            .join(name, tx, Ending::new(), peer, None)
            .expect("joins");
        (j.id, rx)
    }

    /// What a member was sent, as (kind, id, text): `said` for a line,
    /// `ack` for its own line's acknowledgement.
    async fn until(rx: &mut mpsc::Receiver<Bytes>, n: usize) -> Vec<(String, u64, String)> {
        let mut got = Vec::new();
        while got.len() < n {
            let item = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("in time")
                .expect("the queue is open");
            for frame in crate::writer::frames(item) {
                match ServerMsg::decode(&frame[4..]).expect("a valid frame") {
                    ServerMsg::ChatV3 { id, text, .. } => got.push(("said".into(), id, text)),
                    ServerMsg::AckV3 { seq, id } => got.push(("ack".into(), id, seq.to_string())),
                    _ => {}
                }
            }
        }
        got
    }

    /// Alice on one node and bob on another say lines at once: both see
    /// every line in one order, with the same ids, and each gets its own
    /// line's acknowledgement at its place in that order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_show_one_order() {
        let nats = NatsServer::start().await;
        let (a, b) = (node(&nats).await, node(&nats).await);
        let (alice, mut ra) = join(&a, "alice", 1);
        let (bob, mut rb) = join(&b, "bob", 2);
        let (qa, qb) = (a.log_queue().clone(), b.log_queue().clone());
        for seq in 1..=20u64 {
            let p = a
                .submit(alice, seq, format!("a{seq}"), false, None)
                .expect("a member");
            qa.send(LogItem::Message(p)).await.expect("the writer runs");
            let p = b
                .submit(bob, seq, format!("b{seq}"), false, None)
                .expect("a member");
            qb.send(LogItem::Message(p)).await.expect("the writer runs");
        }
        let (got_a, got_b) = (until(&mut ra, 40).await, until(&mut rb, 40).await);
        // Each member's view: its own lines as acknowledgements, the
        // other's as lines; by id, the same forty in the same order.
        let order = |v: &[(String, u64, String)], me: char| -> Vec<(u64, String)> {
            v.iter()
                .map(|(kind, id, t)| {
                    let text = if kind == "ack" {
                        format!("{me}{t}")
                    } else {
                        t.clone()
                    };
                    (*id, text)
                })
                .collect()
        };
        let (oa, ob) = (order(&got_a, 'a'), order(&got_b, 'b'));
        assert_eq!(oa, ob);
        let ids: Vec<u64> = oa.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>());
        // Each author's lines in the order it said them.
        for me in ['a', 'b'] {
            let mine: Vec<String> = oa
                .iter()
                .filter(|(_, t)| t.starts_with(me))
                .map(|(_, t)| t.clone())
                .collect();
            assert_eq!(
                mine,
                (1..=20).map(|i| format!("{me}{i}")).collect::<Vec<_>>()
            );
        }
        // A barrier (a member leaving, the server stopping) is answered
        // only once the feed has shown, and so acknowledged, every line
        // queued before it.
        for seq in 21..=25u64 {
            let p = a
                .submit(alice, seq, format!("a{seq}"), false, None)
                .expect("a member");
            qa.send(LogItem::Message(p)).await.expect("the writer runs");
        }
        let (tx, done) = tokio::sync::oneshot::channel();
        qa.send(LogItem::Barrier(tx))
            .await
            .expect("the writer runs");
        tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .expect("in time")
            .expect("answered");
        let mut acked = Vec::new();
        while let Ok(item) = ra.try_recv() {
            for frame in crate::writer::frames(item) {
                if let Ok(ServerMsg::AckV3 { seq, .. }) = ServerMsg::decode(&frame[4..]) {
                    acked.push(seq);
                }
            }
        }
        assert_eq!(acked, (21..=25).collect::<Vec<_>>());
        let oa: Vec<(u64, String)> = oa
            .into_iter()
            .chain((21..=25u64).map(|i| (20 + i, format!("a{i}"))))
            .collect();
        // A node started later has none of it in memory: a member joining
        // it gets the history from the stream, with the same ids and log id.
        let c = node(&nats).await;
        assert_eq!(c.store().log_id(), a.store().log_id());
        let (_, mut rc) = join(&c, "carol", 3);
        let mut history = Vec::new();
        while let Ok(item) = rc.try_recv() {
            for frame in crate::writer::frames(item) {
                if let Ok(ServerMsg::HistoryV3 { id, text, .. }) = ServerMsg::decode(&frame[4..]) {
                    history.push((id, text));
                }
            }
        }
        let wanted: Vec<(u64, String)> = oa
            .into_iter()
            .rev()
            .take(history.len().max(1))
            .rev()
            .collect();
        assert!(!history.is_empty(), "the history is replayed");
        assert_eq!(history, wanted);
    }

    /// Many members joining at once a room whose history is only in the
    /// stream: each join reads it under the room's lock, with the
    /// server's workers all waiting for that lock; the cluster's own
    /// runtime still answers, and every join completes with the history.
    /// (With the connection on the server's runtime this hung for good.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joins_reading_history_from_the_stream_all_complete() {
        let nats = NatsServer::start().await;
        let cluster = Cluster::connect_apart(&nats.options())
            .await
            .expect("connects");
        let log = JetStreamLog::open_blocking(&cluster, "#lobby", 1000, None).expect("opens");
        let lines: Vec<crate::store::NewEntry> = (0..100)
            .map(|i| crate::store::NewEntry {
                key: None,
                from: "old".into(),
                text: format!("line {i}"),
                time_ms: 1,
                action: false,
                proof: None,
            })
            .collect();
        let l = Arc::clone(&log);
        tokio::task::spawn_blocking(move || {
            l.append(&lines.iter().collect::<Vec<_>>())
                .expect("appends")
        })
        .await
        .expect("ran");
        let room = Room::new(Arc::new(ServerOptions::default()), log);
        let joins: Vec<_> = (0..16u8)
            .map(|i| {
                let r = Arc::clone(&room);
                tokio::spawn(async move {
                    let (_, mut rx) = join(&r, &format!("m{i}"), i + 1);
                    let mut history = 0;
                    while let Ok(item) = rx.try_recv() {
                        for frame in crate::writer::frames(item) {
                            if let Ok(ServerMsg::HistoryV3 { .. }) = ServerMsg::decode(&frame[4..])
                            {
                                history += 1;
                            }
                        }
                    }
                    history
                })
            })
            .collect();
        for j in joins {
            let history = tokio::time::timeout(Duration::from_secs(30), j)
                .await
                .expect("every join completes")
                .expect("ran");
            assert_eq!(history, ServerOptions::default().history);
        }
    }
}
