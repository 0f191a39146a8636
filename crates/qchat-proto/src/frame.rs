//! Length-prefixed framing.
//!
//! A frame is a 4-byte big-endian unsigned length followed by that many bytes
//! of postcard-encoded message. A fixed-width prefix (rather than a varint)
//! keeps the "is a whole frame buffered?" check trivial for implementations
//! in any language. The length is checked against the receiver's maximum
//! before a single byte of the body is reserved, so a hostile prefix costs
//! nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the length prefix in bytes.
pub const PREFIX_LEN: usize = 4;

/// A framing failure. Either one ends the connection: after a bad prefix the
/// byte stream can no longer be trusted to be aligned on frame boundaries.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announced more than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// A zero-length frame: no message encodes to nothing, so it can only be
    /// garbage.
    #[error("empty frame")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
}

/// The least spare buffer a read asks the transport to fill: enough for a
/// typical chat frame, small enough that ten thousand idle members waiting
/// on a read hold little memory.
const READ_MIN: usize = 256;

/// The most spare buffer a read asks for: a busy stream is read in chunks
/// this large, so a flat-out sender costs few reads.
const READ_MAX: usize = 8 * 1024;

/// Why [`FrameDecoder::read_frame`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes do not frame correctly.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The transport failed.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Encodes one message as a complete frame (prefix and body) in one
/// allocation. The result is immutable and cheap to clone, so a broadcast is
/// encoded once and the same bytes are queued for every recipient.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Bytes, postcard::Error> {
    let mut buf = BytesMut::with_capacity(64);
    encode_frame_into(msg, &mut buf)?;
    Ok(buf.freeze())
}

/// Appends one frame to `buf`, for callers that batch several frames into
/// one write.
pub fn encode_frame_into<T: Serialize>(msg: &T, buf: &mut BytesMut) -> Result<(), postcard::Error> {
    let start = buf.len();
    buf.put_u32(0);
    let buf = postcard::serialize_with_flavor(msg, BytesFlavor(buf))?;
    let len = buf.len() - start - PREFIX_LEN;
    let len = u32::try_from(len).map_err(|_| postcard::Error::SerializeBufferFull)?;
    buf[start..start + PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Frames a body that is already encoded — one a [`FrameDecoder`] handed
/// out, say — so that it can be passed on verbatim: a relay forwards what
/// it received without decoding it, and still never writes the prefix by
/// hand.
pub fn frame_body(body: &[u8]) -> Result<Bytes, FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + body.len());
    buf.put_u32(len);
    buf.extend_from_slice(body);
    Ok(buf.freeze())
}

/// Lets postcard serialize straight into a `BytesMut`, without an
/// intermediate `Vec` and its copy.
struct BytesFlavor<'a>(&'a mut BytesMut);

impl<'a> postcard::ser_flavors::Flavor for BytesFlavor<'a> {
    type Output = &'a mut BytesMut;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        Ok(self.0)
    }
}

/// Incremental frame decoder over a growing receive buffer.
///
/// Feed it whatever the transport delivers with [`FrameDecoder::extend`] and
/// take whole frames out with [`FrameDecoder::next_frame`]. Frames are split
/// off the buffer without copying.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
    /// Spare capacity the next read asks for, between [`READ_MIN`] and
    /// [`READ_MAX`]: it doubles when a read fills all it was given and
    /// halves when a read uses less than a quarter, so it follows how busy
    /// the stream is.
    read_hint: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frame bodies longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
            read_hint: READ_MIN,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame body, `Ok(None)` if more bytes are needed, or an
    /// error if the next prefix is unacceptable.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[..PREFIX_LEN]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if self.buf.len() < PREFIX_LEN + len {
            // Reserve only what the (already bounded) frame still needs.
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Reads from `src` until a whole frame is buffered. `Ok(None)` is a
    /// clean end of stream on a frame boundary; a stream that ends inside a
    /// frame is an error. Reads go straight into the decoder's buffer, so a
    /// byte is copied once on its way from the transport to a message.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        src: &mut R,
    ) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            let spare = self.make_room();
            let n = src.read_buf(&mut self.buf).await.map_err(ReadError::Io)?;
            if n == 0 {
                self.finish()?;
                return Ok(None);
            }
            if n >= spare {
                self.read_hint = (self.read_hint * 2).min(READ_MAX);
            } else if n < self.read_hint / 4 {
                self.read_hint = (self.read_hint / 2).max(READ_MIN);
            }
        }
    }

    /// Makes at least `read_hint` bytes of spare capacity for the next
    /// read, and returns the spare capacity.
    fn make_room(&mut self) -> usize {
        if self.buf.capacity() - self.buf.len() < self.read_hint {
            self.buf.reserve(self.read_hint);
        }
        self.buf.capacity() - self.buf.len()
    }

    /// Call at end of stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_relayed_body_is_framed_exactly_as_its_sender_framed_it() {
        let msg = crate::ClientMsg::Say {
            seq: 7,
            text: "relay me".into(),
        };
        let sent = encode_frame(&msg).expect("encodes");
        let mut d = FrameDecoder::new(1024);
        d.extend(&sent);
        let body = d.next_frame().expect("valid").expect("whole frame");
        assert_eq!(frame_body(&body).expect("fits"), sent);
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut wire = frame(b"hello");
        wire.extend(frame(b"w"));
        for split in 0..wire.len() {
            let mut d = FrameDecoder::new(100);
            d.extend(&wire[..split]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame().expect("valid") {
                got.push(f);
            }
            d.extend(&wire[split..]);
            while let Some(f) = d.next_frame().expect("valid") {
                got.push(f);
            }
            assert_eq!(
                got,
                vec![Bytes::from_static(b"hello"), Bytes::from_static(b"w")]
            );
            assert!(d.finish().is_ok());
        }
    }

    #[test]
    fn giant_prefix_is_refused_before_allocation() {
        let mut d = FrameDecoder::new(1024);
        d.extend(&u32::MAX.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1024
            })
        );
        assert!(d.buf.capacity() < 1024);
    }

    #[test]
    fn empty_frame_is_an_error() {
        let mut d = FrameDecoder::new(10);
        d.extend(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn cut_off_frame_is_reported_at_end() {
        let mut d = FrameDecoder::new(10);
        d.extend(&[0, 0, 0, 5, b'a']);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 5 }));
    }

    #[test]
    fn encode_matches_the_documented_layout() {
        let f = encode_frame(&(7u8, "hi")).expect("encodes");
        // postcard: u8 7, then string as varint length 2 and the bytes.
        assert_eq!(&f[..], &[0, 0, 0, 4, 7, 2, b'h', b'i']);
    }

    #[tokio::test]
    async fn reads_frames_from_a_byte_stream() {
        let mut wire: Vec<u8> = frame(b"abc");
        wire.extend(frame(b"de"));
        let mut src = &wire[..];
        let mut d = FrameDecoder::new(16);
        assert_eq!(
            d.read_frame(&mut src).await.expect("ok"),
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            d.read_frame(&mut src).await.expect("ok"),
            Some(Bytes::from_static(b"de"))
        );
        assert_eq!(d.read_frame(&mut src).await.expect("ok"), None);
        let cut = [0u8, 0, 0, 3, 1];
        let mut src = &cut[..];
        let mut d = FrameDecoder::new(16);
        assert!(matches!(
            d.read_frame(&mut src).await,
            Err(ReadError::Frame(FrameError::Truncated { .. }))
        ));
    }

    /// A source that hands out at most `chunk` bytes per read, like a
    /// transport delivering packets.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl tokio::io::AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.chunk.min(buf.remaining()).min(self.data.len());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_buffer_stays_small_when_quiet_and_grows_when_busy() {
        // A member that said hello and then waits: what the decoder holds
        // while it waits is a few hundred bytes, not a busy stream's chunk.
        let hello = frame(b"hello, I am new here");
        let mut src = Trickle {
            data: &hello,
            chunk: usize::MAX,
        };
        let mut d = FrameDecoder::new(1024);
        assert!(d.read_frame(&mut src).await.expect("ok").is_some());
        d.make_room();
        assert!(d.buf.capacity() <= 2 * READ_MIN, "{}", d.buf.capacity());
        // A busy stream: reads fill whatever they are given, so the hint
        // climbs to the maximum and frames still come out whole.
        let body = [7u8; 100];
        let wire: Vec<u8> = (0..500).flat_map(|_| frame(&body)).collect();
        let mut src = Trickle {
            data: &wire,
            chunk: usize::MAX,
        };
        for _ in 0..500 {
            let f = d.read_frame(&mut src).await.expect("ok").expect("a frame");
            assert_eq!(&f[..], &body[..]);
        }
        assert_eq!(d.read_hint, READ_MAX);
        // Quiet again: small reads bring the hint back down.
        let small: Vec<u8> = (0..8).flat_map(|_| frame(b"hi")).collect();
        let mut src = Trickle {
            data: &small,
            chunk: 6,
        };
        for _ in 0..8 {
            assert!(d.read_frame(&mut src).await.expect("ok").is_some());
        }
        assert_eq!(d.read_hint, READ_MIN);
        assert_eq!(d.read_frame(&mut src).await.expect("ok"), None);
    }

    proptest! {
        #[test]
        fn decoder_never_panics_and_respects_limit(data in proptest::collection::vec(any::<u8>(), 0..2048), max in 1usize..512) {
            let mut d = FrameDecoder::new(max);
            d.extend(&data);
            while let Ok(Some(f)) = d.next_frame() {
                prop_assert!(!f.is_empty() && f.len() <= max);
            }
        }

        #[test]
        fn round_trips_any_bodies(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..16)) {
            let mut d = FrameDecoder::new(64);
            for b in &bodies { d.extend(&frame(b)); }
            for b in &bodies {
                let f = d.next_frame().expect("valid").expect("whole");
                prop_assert_eq!(&f[..], &b[..]);
            }
            prop_assert_eq!(d.next_frame(), Ok(None));
        }
    }
}
