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

/// A batch this small means the member is not busy: the writer lets go of
/// a larger batch vector rather than hold it while waiting.
const SMALL_BATCH: usize = 8;

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
/// The batch vector starts empty and is emptied again after a large batch:
/// it is held while the writer waits, and `WRITE_BATCH` slots are 8 KiB —
/// more than the rest of an idle member's session.
pub async fn write_loop<S: Sink>(send: &mut S, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::new();
    let mut buf = BytesMut::new();
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if batch.len() <= SMALL_BATCH && batch.capacity() > SMALL_BATCH {
            batch.shrink_to(SMALL_BATCH);
        }
        let chunk = if batch.len() == 1 {
            batch.pop().unwrap_or_default()
        } else {
            buf.reserve(batch.iter().map(Bytes::len).sum());
            for b in batch.drain(..) {
                buf.extend_from_slice(&b);
            }
            buf.split().freeze()
        };
        if send.write_chunk(chunk).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.finish()).await;
}
