//! Micro-benchmarks for the per-message work every qchat server and client
//! does (issue 5): framing, decoding, name checks and text sanitising.
//! `cargo bench -p qchat-proto`; results are in docs/PERFORMANCE.md.

#![allow(missing_docs)]

use std::hint::black_box;

use bytes::BytesMut;
use divan::Bencher;
use qchat_proto::frame::encode_frame_into;
use qchat_proto::{names, text, ClientMsg, FrameDecoder, ServerMsg};

fn main() {
    divan::main();
}

/// The bench's own 100-byte message: digits and padding, plain ASCII.
fn text_of(len: usize) -> String {
    let mut t = String::from("00000001 000000000042 00000000001234567890 ");
    while t.len() < len {
        t.push('x');
    }
    t
}

fn chat(len: usize) -> ServerMsg {
    ServerMsg::Chat {
        from: "alice".into(),
        text: text_of(len),
        time_ms: 1_750_000_000_000,
    }
}

/// Encoding a broadcast: done once per message, whatever the room size.
#[divan::bench(args = [100, 1000, 4096])]
fn encode_chat(bencher: Bencher, len: usize) {
    let msg = chat(len);
    bencher.bench_local(|| black_box(&msg).to_frame());
}

/// Encoding many frames into one buffer, as a batching sender does.
/// The live frame of an unsigned public message (`ChatV3`, what the room
/// sends to version-3 members), once per message.
#[divan::bench(args = [100, 4096])]
fn encode_live_v3(bencher: Bencher, len: usize) {
    let text = text_of(len);
    bencher.bench_local(|| {
        qchat_proto::message::LiveChat {
            id: 7,
            from: "alice",
            text: black_box(&text),
            time_ms: 1_750_000_000_000,
            action: false,
        }
        .to_frame(true)
    });
}

/// The same message signed (`ChatSigned`, for version-4 members): the
/// server's extra encoding work per signed message.
#[divan::bench(args = [100, 4096])]
fn encode_live_signed(bencher: Bencher, len: usize) {
    let text = text_of(len);
    let proof = qchat_proto::Proof {
        instance: [7; 16],
        seq: 42,
        sent_ms: 1_750_000_000_000,
        key: [9; 32],
        sig: vec![1; 64],
    };
    bencher.bench_local(|| {
        ServerMsg::ChatSigned {
            id: 7,
            from: "alice".into(),
            text: black_box(&text).clone(),
            time_ms: 1_750_000_000_000,
            action: false,
            proof: proof.clone(),
        }
        .to_frame()
    });
}

/// Decoding a signed line as the server reads it.
#[divan::bench(args = [100, 4096])]
fn decode_signed(bencher: Bencher, len: usize) {
    let frame = ClientMsg::Signed {
        seq: 42,
        text: text_of(len),
        action: false,
        sent_ms: 1_750_000_000_000,
        key: [9; 32],
        sig: vec![1; 64],
    }
    .to_frame();
    bencher.bench_local(|| ClientMsg::decode(black_box(&frame[4..])));
}

#[divan::bench]
fn encode_say_into_batch(bencher: Bencher) {
    let msg = ClientMsg::Say {
        seq: 42,
        text: text_of(100),
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    bencher.bench_local(|| {
        buf.clear();
        for _ in 0..32 {
            encode_frame_into(black_box(&msg), &mut buf).expect("encodes");
        }
    });
}

/// Decoding a client's `Say`: the server does this once per message.
#[divan::bench(args = [100, 1000, 4096])]
fn decode_say(bencher: Bencher, len: usize) {
    let frame = ClientMsg::Say {
        seq: 42,
        text: text_of(len),
    }
    .to_frame();
    bencher.bench_local(|| ClientMsg::decode(black_box(&frame[4..])));
}

/// Decoding a `Chat`: every receiving client does this once per delivery.
#[divan::bench(args = [100, 1000, 4096])]
fn decode_chat(bencher: Bencher, len: usize) {
    let frame = chat(len).to_frame();
    bencher.bench_local(|| ServerMsg::decode(black_box(&frame[4..])));
}

/// Splitting 256 buffered 100-byte frames out of one read, as a receiver
/// does after a large read.
#[divan::bench]
fn split_256_frames(bencher: Bencher) {
    let frame = chat(100).to_frame();
    let wire: Vec<u8> = (0..256).flat_map(|_| frame.iter().copied()).collect();
    bencher.bench_local(|| {
        let mut d = FrameDecoder::new(qchat_proto::limits::MAX_SERVER_FRAME);
        d.extend(black_box(&wire));
        let mut n = 0;
        while let Ok(Some(f)) = d.next_frame() {
            n += f.len();
        }
        n
    });
}

/// Name validation runs once per join.
#[divan::bench(args = ["bob", "Zoë-the-3rd", "名前はとても長いですがまだ有効な名前です"])]
fn validate_name(bencher: Bencher, name: &str) {
    bencher.bench_local(|| names::validate(black_box(name)));
}

/// The same-name key (NFKC, case, confusable skeleton): once per join, per
/// name change and per private message.
#[divan::bench(args = ["bob", "Zoë-the-3rd"])]
fn fold_name(bencher: Bencher, name: &str) {
    bencher.bench_local(|| names::fold(black_box(name)));
}

/// Sanitising runs once per displayed line: the common case needs no copy.
#[divan::bench(args = [100, 4096])]
fn sanitize_clean(bencher: Bencher, len: usize) {
    let t = text_of(len);
    bencher.bench_local(|| text::sanitize(black_box(&t)));
}

/// The hostile case: escapes and direction overrides throughout.
#[divan::bench(args = [100, 4096])]
fn sanitize_hostile(bencher: Bencher, len: usize) {
    let mut t = String::new();
    while t.len() < len {
        t.push_str("a\u{1b}[31m\u{202E}b");
    }
    bencher.bench_local(|| text::sanitize(black_box(&t)));
}
