//! What an operator watches: counters the server keeps as it works, and
//! their Prometheus text form. Counting is a relaxed atomic add at the
//! place that decides (the accept loop, the session, the room, the log
//! writer), so it costs nothing measurable and cannot block the room.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The server's counters. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Connections admitted by the gate (their QUIC handshake goes ahead).
    pub handshakes_accepted: Counter,
    /// Connections refused by the gate (a connection limit).
    pub handshakes_refused: Counter,
    /// Connections sent a QUIC Retry first (handshakes arriving too fast).
    pub handshakes_retried: Counter,
    /// Say, Action and Private messages read from members.
    pub messages_received: Counter,
    /// Public messages queued to a member (one per recipient).
    pub messages_delivered: Counter,
    /// Messages answered with Refused (too long, no such recipient).
    pub messages_refused: Counter,
    /// Members disconnected for not reading their queue.
    pub slow_reader_evictions: Counter,
    /// Members disconnected for sending far beyond their rate.
    pub flood_disconnects: Counter,
    /// The deepest any member's outgoing queue has been, in frames.
    pub queue_depth_high_water: Gauge,
    /// Seconds each room-log batch took to store (with its sync).
    pub log_write_seconds: Histogram,
    /// Messages in each room-log batch.
    pub log_batch_size: Histogram,
    /// Lines this node stored in its cluster's JetStream.
    pub cluster_published: Counter,
    /// 1 while the node is connected to NATS; reported only by a node of
    /// a cluster (`clustered`).
    pub cluster_connected: Gauge,
    clustered: Gauge,
    members: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            handshakes_accepted: Counter::default(),
            handshakes_refused: Counter::default(),
            handshakes_retried: Counter::default(),
            messages_received: Counter::default(),
            messages_delivered: Counter::default(),
            messages_refused: Counter::default(),
            slow_reader_evictions: Counter::default(),
            flood_disconnects: Counter::default(),
            queue_depth_high_water: Gauge::default(),
            // 50 µs to about 3 s: a write without sync to a slow disk's fsync.
            log_write_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 to 1,024: the writer takes at most its batch limit (`log::LOG_BATCH`) at once.
            log_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            cluster_published: Counter::default(),
            cluster_connected: Gauge::default(),
            clustered: Gauge::default(),
            members: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Records a member queue's depth, keeping the highest.
    pub fn queue_depth(&self, depth: usize) {
        let depth = i64::try_from(depth).unwrap_or(i64::MAX);
        let gauge: &AtomicI64 = self.queue_depth_high_water.inner();
        gauge.fetch_max(depth, Ordering::Relaxed);
    }

    /// Records one room-log batch.
    pub fn log_batch(&self, messages: usize, took: Duration) {
        self.log_batch_size.observe(messages as f64);
        self.log_write_seconds.observe(took.as_secs_f64());
    }

    /// Records whether the node is connected to its cluster's NATS now
    /// (from then on the cluster's metrics are reported).
    pub fn cluster_connected(&self, connected: bool) {
        self.clustered.set(1);
        self.cluster_connected.set(i64::from(connected));
    }

    /// The Prometheus text exposition, with `members` members in the room.
    pub fn encode(&self, members: usize) -> String {
        self.members.set(i64::try_from(members).unwrap_or(i64::MAX));
        let mut r = Registry::with_prefix("qchat");
        let m = self.clone();
        r.register("members", "Members in the room", m.members);
        r.register(
            "handshakes_accepted",
            "Connections admitted by the gate",
            m.handshakes_accepted,
        );
        r.register(
            "handshakes_refused",
            "Connections refused by a connection limit",
            m.handshakes_refused,
        );
        r.register(
            "handshakes_retried",
            "Connections sent a QUIC Retry first",
            m.handshakes_retried,
        );
        r.register(
            "messages_received",
            "Say, Action and Private messages read from members",
            m.messages_received,
        );
        r.register(
            "messages_delivered",
            "Public messages queued to a member, one per recipient",
            m.messages_delivered,
        );
        r.register(
            "messages_refused",
            "Messages answered with Refused",
            m.messages_refused,
        );
        r.register(
            "slow_reader_evictions",
            "Members disconnected for not reading",
            m.slow_reader_evictions,
        );
        r.register(
            "flood_disconnects",
            "Members disconnected for flooding",
            m.flood_disconnects,
        );
        r.register(
            "queue_depth_high_water",
            "Deepest member queue seen, in frames",
            m.queue_depth_high_water,
        );
        r.register(
            "log_write_seconds",
            "Time to store one room-log batch",
            m.log_write_seconds,
        );
        r.register(
            "log_batch_size",
            "Messages per room-log batch",
            m.log_batch_size,
        );
        if m.clustered.get() == 1 {
            r.register(
                "cluster_published",
                "Lines this node stored in the cluster's JetStream",
                m.cluster_published,
            );
            r.register(
                "cluster_connected",
                "1 while the node is connected to NATS",
                m.cluster_connected,
            );
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_carries_every_counter_and_the_high_water() {
        let m = Metrics::default();
        m.messages_received.inc();
        m.messages_received.inc();
        m.queue_depth(7);
        m.queue_depth(3);
        m.log_batch(4, Duration::from_millis(2));
        let text = m.encode(5);
        assert!(text.contains("qchat_messages_received_total 2\n"), "{text}");
        assert!(text.contains("qchat_queue_depth_high_water 7\n"), "{text}");
        assert!(text.contains("qchat_members 5\n"), "{text}");
        assert!(text.contains("qchat_log_batch_size_count 1\n"), "{text}");
        assert!(text.contains("qchat_flood_disconnects_total 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("cluster"), "{text}");
        m.cluster_connected(true);
        m.cluster_published.inc();
        let text = m.encode(5);
        assert!(text.contains("qchat_cluster_connected 1\n"), "{text}");
        assert!(text.contains("qchat_cluster_published_total 1\n"), "{text}");
    }
}
