//! The cluster's node list: each node keeps its address in the key-value
//! bucket [`BUCKET`] under its node id, rewritten every [`REFRESH`] and
//! expiring [`TTL`] after the last write, so a node that died leaves the
//! list by itself; each node reads the whole list as often and hands it to
//! the room, whose welcome tells clients where else to go.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

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
        match refresh(bucket, cluster.node_id(), &advertise).await {
            Ok(list) => {
                r.set_nodes(list);
            }
            Err(e) => tracing::debug!("the cluster's node list: {e}"),
        }
    }
}

/// Writes this node's address, then reads every node's, sorted.
async fn refresh(
    bucket: &async_nats::jetstream::kv::Store,
    node: &str,
    advertise: &str,
) -> Result<Vec<String>, String> {
    bucket
        .put(node, advertise.to_string().into())
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
    let mut list = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        if let Some(addr) = bucket.get(key).await.map_err(|e| e.to_string())? {
            if let Ok(addr) = String::from_utf8(addr.to_vec()) {
                list.push(addr);
            }
        }
    }
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
    use crate::cluster::ClusterOptions;

    /// Two nodes write their addresses: each reads both; one that leaves
    /// is gone from the list at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_node_reads_every_nodes_address() {
        let nats = NatsServer::start().await;
        let options = ClusterOptions {
            urls: nats.url(),
            ..Default::default()
        };
        let a = Cluster::connect(&options).await.expect("connects");
        let b = Cluster::connect(&options).await.expect("connects");
        let ka = a.bucket(BUCKET, Some(TTL), 1).await.expect("the bucket");
        let kb = b.bucket(BUCKET, Some(TTL), 1).await.expect("the bucket");
        refresh(&ka, a.node_id(), "a.example:8080")
            .await
            .expect("refreshes");
        let both = refresh(&kb, b.node_id(), "b.example:8080")
            .await
            .expect("refreshes");
        assert_eq!(both, ["a.example:8080", "b.example:8080"]);
        leave(&b).await;
        let one = refresh(&ka, a.node_id(), "a.example:8080")
            .await
            .expect("refreshes");
        assert_eq!(one, ["a.example:8080"]);
    }
}
