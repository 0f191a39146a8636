//! A connection's writer: drains its queue of encoded frames into the
//! stream in as few writes as possible. Public so that the bench's baseline
//! relay writes exactly as a qchat session does, and the comparison
//! measures what differs above it.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// How long a session may take to flush its last frames before the
/// connection is closed anyway.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Items a writer takes from its queue at once.
const WRITE_BATCH: usize = 256;

/// Items at least this long are handed to the stream as they are; shorter
/// ones are gathered into one buffer per batch. A room's part (many frames
/// in one item) is written without being copied a second time, and single
/// frames do not reach quinn one by one.
const PASS_THROUGH: usize = 4096;

/// What starts a queue item that holds several frames, before their count
/// ([`Part`]): a length prefix no frame has (frames are far shorter than
/// 4 GiB), so an item is told apart by its first four bytes. It is the
/// queue's own, never sent: the writer takes it off.
const PART: [u8; 4] = u32::MAX.to_be_bytes();

/// A part's header: [`PART`], then the number of its frames.
const PART_HEADER: usize = 8;

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

/// The frames a member's queue holds beyond one per item.
///
/// A room hands a member all its frames of one stored batch as one item
/// ([`Backlog::offer_part`]): one hand-over between threads per member
/// and batch instead of one per frame, and one buffer its writer passes
/// to the stream without copying it again. The queue's own bound counts
/// items, so the rest of each such item's frames are counted here, and
/// every sender checks both ([`Backlog::queued`]): a member is a slow
/// reader at the same number of frames, however they were queued. Shared
/// by the room, which adds, and the member's writer, which takes away as
/// it takes the items ([`write_loop`]).
#[derive(Debug, Default)]
pub struct Backlog(AtomicUsize);

impl Backlog {
    /// Frames waiting in `queue`, the member's queue.
    pub fn queued(&self, queue: &mpsc::Sender<Bytes>) -> usize {
        queue.max_capacity() - queue.capacity() + self.0.load(Ordering::Relaxed)
    }

    /// Frames `queue` can still take.
    pub fn room(&self, queue: &mpsc::Sender<Bytes>) -> usize {
        queue.max_capacity().saturating_sub(self.queued(queue))
    }

    /// Queues one frame, unless the queue holds its bound's worth of frames
    /// already (then `Full`, as a full queue answers).
    pub fn offer(
        &self,
        queue: &mpsc::Sender<Bytes>,
        frame: Bytes,
    ) -> Result<(), TrySendError<Bytes>> {
        if self.room(queue) == 0 {
            return Err(TrySendError::Full(frame));
        }
        queue.try_send(frame)
    }

    /// Queues `part` as one item: all its frames, or none if they do not
    /// all fit (`Full`) or the queue is closed.
    pub fn offer_part(
        &self,
        queue: &mpsc::Sender<Bytes>,
        part: Part,
    ) -> Result<(), TrySendError<()>> {
        let frames = part.frames;
        if frames > self.room(queue) {
            return Err(TrySendError::Full(()));
        }
        let mut buf = part.buf;
        buf[PART.len()..PART_HEADER]
            .copy_from_slice(&u32::try_from(frames).unwrap_or(u32::MAX).to_be_bytes());
        // Counted before it is queued, so that the writer, which takes it
        // away once it has the item, never finds less.
        let rest = frames.saturating_sub(1);
        self.0.fetch_add(rest, Ordering::Relaxed);
        queue.try_send(buf.freeze()).map_err(|e| {
            self.0.fetch_sub(rest, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Closed(_) => TrySendError::Closed(()),
            }
        })
    }

    /// The writer has `item`: a part's frames beyond the first are no
    /// longer waiting, and its header goes (the count in it, not a walk
    /// over the frames' prefixes, which would read the whole part from
    /// another core's cache).
    fn taken(&self, item: &mut Bytes) {
        if let Some(n) = part_len(item) {
            item.advance(PART_HEADER);
            self.0.fetch_sub(n.saturating_sub(1), Ordering::Relaxed);
        }
    }
}

/// Several frames for one member, gathered into one buffer behind the
/// header that makes them one queue item ([`Backlog::offer_part`]).
#[derive(Debug)]
pub struct Part {
    buf: BytesMut,
    frames: usize,
}

impl Part {
    /// An empty part with room for frames of `bytes` bytes in all (given
    /// as a bound, the frames are copied in once and the buffer never
    /// grows).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(PART_HEADER + bytes);
        buf.extend_from_slice(&PART);
        // The count, written when the part is queued.
        buf.extend_from_slice(&[0; PART_HEADER - PART.len()]);
        Part { buf, frames: 0 }
    }

    /// Adds a whole frame (its length prefix included).
    pub fn push(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
        self.frames += 1;
    }

    /// Adds `msg`, encoded as a frame in place.
    pub fn encode(&mut self, msg: &qchat_proto::ServerMsg) {
        // Encoding into memory does not fail; if it ever did, the part
        // would be left as it was rather than with half a frame.
        let start = self.buf.len();
        match qchat_proto::frame::encode_frame_into(msg, &mut self.buf) {
            Ok(()) => self.frames += 1,
            Err(_) => self.buf.truncate(start),
        }
    }
}

/// The number of frames in `item` if it is a part.
fn part_len(item: &[u8]) -> Option<usize> {
    match item {
        [a, b, c, d, n0, n1, n2, n3, ..] if [*a, *b, *c, *d] == PART => {
            Some(u32::from_be_bytes([*n0, *n1, *n2, *n3]) as usize)
        }
        _ => None,
    }
}

/// The frames of one queue item, each with its length prefix: several for
/// a [`Part`], else the one; for tests that read a member's queue
/// directly. The items are the server's own frames, whose prefixes are
/// right; a prefix that ran past the end would end the walk there.
#[cfg(test)]
pub(crate) fn frames(mut item: Bytes) -> impl Iterator<Item = Bytes> {
    if part_len(&item).is_some() {
        item.advance(PART_HEADER);
    }
    std::iter::from_fn(move || {
        if item.len() < 4 {
            return None;
        }
        let len = 4 + u32::from_be_bytes([item[0], item[1], item[2], item[3]]) as usize;
        if len > item.len() {
            return None;
        }
        Some(item.split_to(len))
    })
}

/// Everything queued in `rx` now, as messages: what a member would read
/// next, for tests that read its queue directly.
#[cfg(test)]
pub(crate) fn drained(rx: &mut mpsc::Receiver<Bytes>) -> Vec<qchat_proto::ServerMsg> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .flat_map(frames)
        .map(|f| qchat_proto::ServerMsg::decode(&f[4..]).expect("a valid frame"))
        .collect()
}

/// Turns a batch of queue items into the chunks to write, in place and in
/// reverse order (the writer pops them): a part's count is taken off the
/// backlog and its header off its bytes; items of [`PASS_THROUGH`] bytes or
/// more stay as they are; the small ones between them are copied together,
/// each run into one chunk.
fn gather(batch: &mut Vec<Bytes>, backlog: &Backlog) {
    for item in batch.iter_mut() {
        backlog.taken(item);
    }
    let small: usize = batch
        .iter()
        .map(Bytes::len)
        .filter(|&n| n < PASS_THROUGH)
        .sum();
    if batch.len() > 1 && small > 0 {
        // One buffer for every small item; each run of them is split off
        // it. The chunks written never outnumber the items read so far, so
        // they fit in the slots already read.
        let mut buf = BytesMut::with_capacity(small);
        let mut written = 0;
        for read in 0..batch.len() {
            let item = std::mem::take(&mut batch[read]);
            if item.len() < PASS_THROUGH {
                buf.extend_from_slice(&item);
                continue;
            }
            if !buf.is_empty() {
                batch[written] = buf.split().freeze();
                written += 1;
            }
            batch[written] = item;
            written += 1;
        }
        batch.truncate(written);
        if !buf.is_empty() {
            batch.push(buf.freeze());
        }
    }
    batch.reverse();
}

/// Sends everything queued for the member in as few writes as possible,
/// until the room drops the queue's sender; then finishes the stream.
///
/// Small items are copied into one contiguous buffer per batch: quinn walks
/// its list of unacknowledged chunks for every packet it builds, so
/// thousands of small chunks per stream would make sending quadratic. Items
/// of [`PASS_THROUGH`] bytes or more — a room's part of a stored batch —
/// go to quinn as they are: they are few, and were gathered once already.
///
/// While it waits the writer holds no memory of its own, because an idle
/// member's writer waits for good, ten thousand times over:
///
/// - each batch's buffer is made for that batch and handed to quinn whole
///   (in pieces split off it, around the large items, and its last piece
///   itself), never kept by the writer: a buffer it kept would keep the
///   whole allocation alive (the welcome and its member list, ~1 KiB, for
///   every member that never hears anything again);
/// - the batch vector is let go of when the queue is empty, just before
///   the writer waits. A busy member's writer finds more queued after
///   each write and keeps it (up to `WRITE_BATCH` slots, 8 KiB), so
///   fan-out does not allocate it again per batch.
///
/// `backlog` is the member's, from the room that fills the queue; a queue
/// whose items are single frames (the bench's relay) has one that stays
/// empty.
pub async fn write_loop<S: Sink>(send: &mut S, mut rx: mpsc::Receiver<Bytes>, backlog: &Backlog) {
    let mut batch = Vec::new();
    loop {
        if rx.is_empty() {
            batch = Vec::new();
        }
        if rx.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            break;
        }
        gather(&mut batch, backlog);
        // Written from the back (`gather` leaves them reversed): the only
        // things held across the write are the vector and the one chunk,
        // as an idle member's writer waits here too.
        while let Some(chunk) = batch.pop() {
            if send.write_chunk(chunk).await.is_err() {
                return;
            }
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

    fn part_of(frames: &[Bytes]) -> Part {
        let mut part = Part::with_capacity(frames.iter().map(Bytes::len).sum());
        for f in frames {
            part.push(f);
        }
        part
    }

    fn frame(body: &[u8]) -> Bytes {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        Bytes::from(f)
    }

    /// Frames handed over as one item count against the queue's bound one
    /// by one, whoever queues next: a member is a slow reader at the same
    /// number of frames however they came. None of a part that does not
    /// fit is queued.
    #[test]
    fn a_queue_is_bounded_in_frames_however_they_are_handed_over() {
        let (tx, mut rx) = mpsc::channel(8);
        let backlog = Backlog::default();
        let five: Vec<Bytes> = (0..5u8).map(|i| frame(&[i])).collect();
        backlog
            .offer_part(&tx, part_of(&five))
            .expect("five fit in eight");
        assert_eq!(backlog.queued(&tx), 5);
        assert!(matches!(
            backlog.offer_part(&tx, part_of(&five[..4])),
            Err(TrySendError::Full(()))
        ));
        assert_eq!(backlog.queued(&tx), 5, "nothing of a refused part stays");
        for i in 0..3u8 {
            backlog.offer(&tx, frame(&[10 + i])).expect("fits");
        }
        assert!(matches!(
            backlog.offer(&tx, frame(b"x")),
            Err(TrySendError::Full(_))
        ));
        // Four items for eight frames: the queue alone would take four more.
        assert_eq!(tx.capacity(), 4);
        let first = rx.try_recv().expect("the part");
        let bodies: Vec<u8> = frames(first).map(|f| f[4]).collect();
        assert_eq!(bodies, vec![0, 1, 2, 3, 4], "in order, each whole");
    }

    /// The writer takes a part's frames off the count as it takes the item,
    /// and sends the part as one chunk, as it was queued.
    #[tokio::test]
    async fn the_writer_takes_a_parts_frames_off_the_count() {
        let (tx, rx) = mpsc::channel(8);
        let backlog = std::sync::Arc::new(Backlog::default());
        let (out, mut written) = mpsc::unbounded_channel();
        let part: Vec<Bytes> = (0..6u8).map(|i| frame(&[i; 3])).collect();
        backlog.offer_part(&tx, part_of(&part)).expect("fits");
        let theirs = std::sync::Arc::clone(&backlog);
        let writer = tokio::spawn(async move { write_loop(&mut Chunks(out), rx, &theirs).await });
        let wait = std::time::Duration::from_secs(5);
        let chunk = tokio::time::timeout(wait, written.recv())
            .await
            .expect("written in time")
            .expect("a chunk");
        assert_eq!(chunk, part.concat());
        assert_eq!(backlog.queued(&tx), 0);
        // All eight places are free again.
        let eight: Vec<Bytes> = (0..8u8).map(|i| frame(&[i])).collect();
        backlog
            .offer_part(&tx, part_of(&eight))
            .expect("the whole bound is free");
        drop(tx);
        tokio::time::timeout(wait, writer)
            .await
            .expect("the writer ends with its queue")
            .expect("no panic");
    }

    /// Small items are written together, large ones as they are, all in
    /// the order they were queued; a part's header never reaches the
    /// stream.
    #[test]
    fn a_batch_is_written_in_order_large_items_uncopied() {
        let small = |b: u8| frame(&[b; 10]);
        let large = |b: u8| frame(&vec![b; PASS_THROUGH]);
        let backlog = Backlog::default();
        let (tx, mut rx) = mpsc::channel(64);
        backlog
            .offer_part(&tx, part_of(&[large(7), large(8)]))
            .expect("fits");
        let part = rx.try_recv().expect("the part");
        let items = vec![
            small(1),
            small(2),
            large(3),
            small(4),
            part,
            large(5),
            small(6),
        ];
        let expected: Vec<u8> = items
            .iter()
            .flat_map(|i| frames(i.clone()))
            .flat_map(|f| f.to_vec())
            .collect();
        let large_three = items[2].clone();
        let mut batch = items;
        gather(&mut batch, &backlog);
        batch.reverse();
        let lens: Vec<usize> = batch.iter().map(Bytes::len).collect();
        let big = PASS_THROUGH + 4;
        assert_eq!(lens, vec![28, big, 14, 2 * big, big, 14]);
        assert_eq!(batch[1].as_ptr(), large_three.as_ptr(), "not copied");
        assert_eq!(batch.concat(), expected);
        assert_eq!(backlog.queued(&tx), 0, "the part's frames were taken off");
    }

    /// A frame's length prefix says where the next starts; a prefix past
    /// the end ends the walk rather than reading beyond it.
    #[test]
    fn frames_are_split_at_their_prefixes() {
        let item = [frame(b"ab"), frame(b""), frame(b"cde")].concat();
        let got: Vec<Bytes> = frames(Bytes::from(item.clone())).collect();
        assert_eq!(got, vec![frame(b"ab"), frame(b""), frame(b"cde")]);
        let mut cut = frame(b"abc").to_vec();
        cut.truncate(5);
        assert_eq!(frames(Bytes::from(cut)).count(), 0);
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
        let writer =
            tokio::spawn(
                async move { write_loop(&mut Chunks(out), rx, &Backlog::default()).await },
            );
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
