//! The frame decoder and message decoding over arbitrary bytes, delivered
//! in arbitrary pieces, exactly as the server's read loop sees a stream.
//!
//! Input layout: the first byte picks how the rest is split into the
//! chunks a transport might deliver; the remainder is the stream. The
//! decoder must never panic, never return a frame longer than its limit,
//! and give the same frames however the bytes were split.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qchat_proto::{limits, ClientMsg, FrameDecoder, ServerMsg};

/// Feeds `data` in chunks of the sizes `split` dictates and collects the
/// frames until the first error.
fn decode(data: &[u8], split: u8) -> (Vec<Vec<u8>>, bool) {
    let max = limits::MAX_CLIENT_FRAME;
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let step = usize::from(split % 17) + 1;
    let mut offset = 0;
    while offset < data.len() {
        // Vary the chunk size along the way, like a real transport.
        let len = (step + offset % 5).min(data.len() - offset);
        decoder.extend(&data[offset..offset + len]);
        offset += len;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= max);
                    // Whatever the body is, decoding must return, not panic.
                    let _ = ClientMsg::decode(&frame);
                    let _ = ServerMsg::decode(&frame);
                    frames.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    let failed = decoder.finish().is_err();
    (frames, failed)
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let whole = {
        let mut decoder = FrameDecoder::new(limits::MAX_CLIENT_FRAME);
        decoder.extend(data);
        let mut frames = Vec::new();
        let mut failed = false;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        (frames, failed || decoder.finish().is_err())
    };
    assert_eq!(decode(data, split), whole, "splitting changed the result");
});
