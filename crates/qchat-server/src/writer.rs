//! A connection's writer: drains its queue of encoded frames into the
//! stream in as few writes as possible. Public so that the bench's baseline
//! relay writes exactly as a qchat session does, and the comparison
//! measures what differs above it.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// How long a session may take to flush its last frames before the
/// connection is closed anyway.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames a writer takes from its queue for one write.
const WRITE_BATCH: usize = 256;

/// Where a session's outgoing bytes go. QUIC streams take owned chunks
/// without a copy; a pipe takes a slice.
pub trait Sink {
    /// Writes one chunk; an error means the peer is gone.
    fn write_chunk(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the stream and waits (bounded by the caller) until the peer has
    /// it all.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// A QUIC send stream.
pub struct QuicSink(pub quinn::SendStream);

impl Sink for QuicSink {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.write_chunk(chunk).await.map_err(io::Error::from)
    }

    async fn finish(&mut self) {
        if self.0.finish().is_ok() {
            let _ = self.0.stopped().await;
        }
    }
}

/// Sends everything queued for the member in as few writes as possible,
/// until the room drops the queue's sender; then finishes the stream.
///
/// Frames are copied into one contiguous buffer per batch: quinn walks its
/// list of unacknowledged chunks for every packet it builds, so thousands of
/// small chunks per stream would make sending quadratic.
///
/// While it waits the writer holds no memory of its own, because an idle
/// member's writer waits for good, ten thousand times over:
///
/// - each batch's buffer is made for that batch and handed to quinn whole,
///   never split off a buffer the writer keeps: the part left behind by a
///   split would keep the whole allocation alive (the welcome and its
///   member list, ~1 KiB, for every member that never hears anything
///   again);
/// - the batch vector is let go of when the queue is empty, just before
///   the writer waits. A busy member's writer finds more queued after
///   each write and keeps it (up to `WRITE_BATCH` slots, 8 KiB), so
///   fan-out does not allocate it again per batch.
pub async fn write_loop<S: Sink>(send: &mut S, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::new();
    loop {
        if rx.is_empty() {
            batch = Vec::new();
        }
        if rx.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            break;
        }
        let chunk = if batch.len() == 1 {
            batch.pop().unwrap_or_default()
        } else {
            let mut buf = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
            for b in batch.drain(..) {
                buf.extend_from_slice(&b);
            }
            buf.freeze()
        };
        if send.write_chunk(chunk).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.finish()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands each written chunk to the test.
    struct Chunks(mpsc::UnboundedSender<Bytes>);

    impl Sink for Chunks {
        async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
            self.0
                .send(chunk)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        }

        async fn finish(&mut self) {}
    }

    /// A waiting writer must not keep a share of what it wrote: the chunk
    /// it handed over is the only owner of its bytes, so they are freed
    /// once the peer has them — an idle member's welcome is not kept for
    /// the member's whole stay.
    #[tokio::test]
    async fn a_waiting_writer_keeps_nothing_it_wrote() {
        let (tx, rx) = mpsc::channel(16);
        let (out, mut written) = mpsc::unbounded_channel();
        // Queued before the writer starts, as the welcome and the end of
        // its replay are: one batch of several frames.
        for frame in [&b"welcome"[..], b"replayed", b"joined"] {
            tx.send(Bytes::from_static(frame)).await.expect("queued");
        }
        let writer = tokio::spawn(async move { write_loop(&mut Chunks(out), rx).await });
        let wait = std::time::Duration::from_secs(5);
        let batch = tokio::time::timeout(wait, written.recv())
            .await
            .expect("written in time")
            .expect("a chunk");
        assert_eq!(&batch[..], b"welcomereplayedjoined");
        // The writer is waiting for the next frame now (its queue is empty
        // and open); a frame sent after this one proves it got there.
        assert!(batch.is_unique(), "the writer keeps a share of the batch");
        tx.send(Bytes::from_static(b"alone")).await.expect("queued");
        let alone = tokio::time::timeout(wait, written.recv())
            .await
            .expect("written in time")
            .expect("a chunk");
        assert_eq!(&alone[..], b"alone");
        assert!(batch.is_unique(), "the writer keeps a share of the batch");
        drop(tx);
        tokio::time::timeout(wait, writer)
            .await
            .expect("the writer ends with its queue")
            .expect("no panic");
    }
}
