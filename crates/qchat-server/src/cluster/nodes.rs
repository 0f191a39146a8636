//! The cluster's node list: each node keeps its address in the key-value
//! bucket [`BUCKET`] under its node id, rewritten every [`REFRESH`] and
//! expiring [`TTL`] after the last write; each node reads the whole list
//! as often and hands it to the room, whose welcome tells clients where
//! else to go.
//!
//! The bucket's expiry alone does not take a dead node off the list soon
//! enough: NATS removes an expired entry when it gets round to it and says
//! nothing when it does, and a client that tries a dead node first loses a
//! whole connect timeout. So each reader also drops, by itself, every
//! entry it has not seen rewritten within the TTL ([`Seen`]).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::Cluster;
use crate::room::Room;

/// The bucket of node addresses.
pub const BUCKET: &str = "qchat_nodes";

/// How long a node's address outlives its last refresh.
pub const TTL: Duration = Duration::from_secs(15);

/// How often a node refreshes its address and reads the list.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Keeps `advertise` in the list for as long as `room` exists, and the
/// room's copy of the list current. A failure (NATS away) is retried at
/// the next refresh; the room keeps the last list meanwhile.
pub async fn run(cluster: Arc<Cluster>, room: Weak<Room>, advertise: String) {
    let mut kv = None;
    let mut seen = Seen::new(TTL);
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = room.upgrade() else { return };
        if kv.is_none() {
            match cluster.bucket(BUCKET, Some(TTL), 1).await {
                Ok(b) => kv = Some(b),
                Err(e) => {
                    tracing::warn!("the cluster's node list: {e}");
                    continue;
                }
            }
        }
        let Some(bucket) = &kv else { continue };
        match refresh(bucket, cluster.node_id(), &advertise, &mut seen).await {
            Ok(list) => {
                r.set_nodes(list);
            }
            Err(e) => tracing::debug!("the cluster's node list: {e}"),
        }
    }
}

/// Each node's entry as this node last read it: its revision, and when
/// this node first saw that revision. An entry whose revision stays the
/// same for the TTL belongs to a node that stopped refreshing it.
///
/// The clock is this node's own (the revision is the bucket's), so no two
/// machines' clocks are ever compared.
#[derive(Debug)]
struct Seen {
    ttl: Duration,
    revisions: HashMap<String, (u64, Instant)>,
}

impl Seen {
    fn new(ttl: Duration) -> Seen {
        Seen {
            ttl,
            revisions: HashMap::new(),
        }
    }

    /// Notes `key` read at `revision`; whether it still counts as alive.
    fn alive(&mut self, key: &str, revision: u64, now: Instant) -> bool {
        match self.revisions.get_mut(key) {
            Some((r, at)) if *r == revision => now.duration_since(*at) <= self.ttl,
            Some(slot) => {
                *slot = (revision, now);
                true
            }
            None => {
                self.revisions.insert(key.to_string(), (revision, now));
                true
            }
        }
    }

    /// Forgets the keys no longer in the bucket.
    fn keep_only(&mut self, keys: &[String]) {
        self.revisions.retain(|k, _| keys.contains(k));
    }
}

/// Writes this node's address, then reads every node's still refreshed
/// (see [`Seen`]), sorted.
async fn refresh(
    bucket: &async_nats::jetstream::kv::Store,
    node: &str,
    advertise: &str,
    seen: &mut Seen,
) -> Result<Vec<String>, String> {
    bucket
        .put(node, advertise.to_string().into())
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
    let mut list = Vec::new();
    let mut present = Vec::new();
    let now = Instant::now();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        let Some(entry) = bucket.entry(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        present.push(key.clone());
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            continue;
        }
        // This node's own entry was written just now, whatever its
        // revision says.
        if !seen.alive(&key, entry.revision, now) && key != node {
            continue;
        }
        if let Ok(addr) = String::from_utf8(entry.value.to_vec()) {
            list.push(addr);
        }
    }
    seen.keep_only(&present);
    list.sort();
    list.dedup();
    Ok(list)
}

/// Takes this node out of the list at once (it is stopping), rather than
/// when its entry expires.
pub async fn leave(cluster: &Cluster) {
    if let Ok(bucket) = cluster.bucket(BUCKET, Some(TTL), 1).await {
        let _ = bucket.delete(cluster.node_id()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::NatsServer;

    /// Two nodes write their addresses: each reads both; one that leaves
    /// is gone from the list at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_node_reads_every_nodes_address() {
        let nats = NatsServer::start().await;
        let options = nats.options();
        let a = Cluster::connect(&options).await.expect("connects");
        let b = Cluster::connect(&options).await.expect("connects");
        let ka = a.bucket(BUCKET, Some(TTL), 1).await.expect("the bucket");
        let kb = b.bucket(BUCKET, Some(TTL), 1).await.expect("the bucket");
        let (mut sa, mut sb) = (Seen::new(TTL), Seen::new(TTL));
        refresh(&ka, a.node_id(), "a.example:8080", &mut sa)
            .await
            .expect("refreshes");
        let both = refresh(&kb, b.node_id(), "b.example:8080", &mut sb)
            .await
            .expect("refreshes");
        assert_eq!(both, ["a.example:8080", "b.example:8080"]);
        leave(&b).await;
        let one = refresh(&ka, a.node_id(), "a.example:8080", &mut sa)
            .await
            .expect("refreshes");
        assert_eq!(one, ["a.example:8080"]);
    }

    /// A node that stops refreshing (killed: it never leaves) drops off
    /// the others' lists once its entry is older than the TTL, although
    /// the bucket still holds it (its own expiry is far longer here);
    /// the node that keeps refreshing stays, and one that comes back is
    /// listed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_stops_refreshing_leaves_the_others_lists() {
        let nats = NatsServer::start().await;
        let options = nats.options();
        let a = Cluster::connect(&options).await.expect("connects");
        let b = Cluster::connect(&options).await.expect("connects");
        let ka = a.bucket(BUCKET, Some(TTL), 1).await.expect("the bucket");
        let kb = b.bucket(BUCKET, Some(TTL), 1).await.expect("the bucket");
        let short = Duration::from_millis(600);
        let (mut sa, mut sb) = (Seen::new(short), Seen::new(short));
        refresh(&ka, a.node_id(), "a.example:8080", &mut sa)
            .await
            .expect("refreshes");
        let both = refresh(&kb, b.node_id(), "b.example:8080", &mut sb)
            .await
            .expect("refreshes");
        assert_eq!(both, ["a.example:8080", "b.example:8080"]);
        // Now a is silent; b refreshes on.
        let deadline = Instant::now() + Duration::from_secs(10);
        let list = loop {
            tokio::time::sleep(short / 4).await;
            let list = refresh(&kb, b.node_id(), "b.example:8080", &mut sb)
                .await
                .expect("refreshes");
            if list.len() == 1 || Instant::now() > deadline {
                break list;
            }
        };
        assert_eq!(list, ["b.example:8080"], "a dropped, b kept");
        let stored = kb.get(a.node_id()).await.expect("reads");
        assert!(stored.is_some(), "the bucket itself still holds a");
        refresh(&ka, a.node_id(), "a.example:8080", &mut sa)
            .await
            .expect("refreshes");
        let back = refresh(&kb, b.node_id(), "b.example:8080", &mut sb)
            .await
            .expect("refreshes");
        assert_eq!(back, ["a.example:8080", "b.example:8080"], "a is back");
    }

    #[test]
    fn an_entry_counts_as_alive_until_its_revision_is_older_than_the_ttl() {
        let mut seen = Seen::new(Duration::from_secs(15));
        let t0 = Instant::now();
        assert!(seen.alive("a", 1, t0));
        assert!(seen.alive("a", 1, t0 + Duration::from_secs(15)));
        assert!(!seen.alive("a", 1, t0 + Duration::from_secs(16)));
        assert!(
            seen.alive("a", 2, t0 + Duration::from_secs(17)),
            "rewritten"
        );
        assert!(seen.alive("a", 2, t0 + Duration::from_secs(31)));
        seen.keep_only(&[]);
        assert!(seen.revisions.is_empty());
    }
}
