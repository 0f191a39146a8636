//! A node cut off from NATS stops serving: nothing its members said would
//! be stored or reach the other nodes, and acknowledging it would be a lie.
//! After [`CUT_OFF_AFTER`] without NATS (a blip is ridden out: the NATS
//! client reconnects by itself), every member is told to move to another
//! node and nobody is admitted; once NATS is back, the node serves again,
//! and each room's feed goes on from the last line it showed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Cluster, LOST};
use crate::room::Room;

/// How long a node may be without NATS before it sends its members away.
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(2);

/// Watches the node's connection to NATS for as long as `room` exists.
pub async fn run(cluster: Arc<Cluster>, room: Weak<Room>) {
    let mut connected = cluster.connected();
    loop {
        // Connected: wait for the connection to drop.
        while *connected.borrow_and_update() {
            if connected.changed().await.is_err() {
                return;
            }
        }
        let back = tokio::time::timeout(CUT_OFF_AFTER, async {
            connected.wait_for(|c| *c).await.map(|_| ())
        })
        .await;
        match back {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        let Some(r) = room.upgrade() else { return };
        tracing::warn!(
            members = r.len(),
            "no NATS for {} s: sending every member to another node",
            CUT_OFF_AFTER.as_secs()
        );
        r.metrics().cluster_connected(false);
        r.cut_off(LOST);
        drop(r);
        if connected.wait_for(|c| *c).await.map(|_| ()).is_err() {
            return;
        }
        let Some(r) = room.upgrade() else { return };
        tracing::info!("NATS is back: admitting members again");
        r.metrics().cluster_connected(true);
        r.restore();
    }
}
