//! `qchat serve --metrics`: a real HTTP scrape of the real binary during a
//! short chat, checking the counters moved by exactly what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::util::{join, Home, Server, Stream, WAIT};

/// One `GET path` over plain TCP; the answer is parsed by httparse (the
/// parser hyper uses), never by hand. Returns the status and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the metrics port");
    s.set_read_timeout(Some(WAIT)).expect("set a read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(&raw).expect("a valid HTTP answer") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("a truncated HTTP answer"),
    };
    let status = answer.code.expect("a status code");
    let length: usize = answer
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .expect("a content-length");
    let body = String::from_utf8(raw[len..].to_vec()).expect("a UTF-8 body");
    assert_eq!(body.len(), length, "the whole body arrived");
    (status, body)
}

/// The value of the sample named `name` (no labels).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
fn the_counters_follow_a_short_chat() {
    let home = Home::new();
    let server = Server::start_on(
        &home,
        "127.0.0.1:0",
        &[
            "--headless",
            "--store",
            "memory",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let line = server
        .proc
        .stdout_so_far()
        .into_iter()
        .find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")
                .map(String::from)
        })
        .expect("the metrics address is announced");
    let addr: SocketAddr = line.parse().expect("a metrics address");
    assert!(addr.ip().is_loopback());

    let (status, before) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "qchat_members"), 0.0);
    assert_eq!(sample(&before, "qchat_messages_received_total"), 0.0);

    let (ha, hb) = (Home::new(), Home::new());
    let mut alice = join(&ha, &server, "alice");
    let mut bob = join(&hb, &server, "bob");
    alice.expect_out("* bob joined");
    for text in ["one", "two", "three"] {
        alice.send_line(text);
        bob.expect_out(&format!("<alice> {text}"));
    }
    alice.send_line("/msg nobody are you there");
    alice.expect(Stream::Err, "the refusal", |l| {
        l.contains("message not sent")
    });

    let (status, after) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&after, "qchat_members"), 2.0);
    assert_eq!(sample(&after, "qchat_handshakes_accepted_total"), 2.0);
    assert_eq!(sample(&after, "qchat_handshakes_refused_total"), 0.0);
    // Three public messages and the private one, read from alice.
    assert_eq!(sample(&after, "qchat_messages_received_total"), 4.0);
    // Each public message went to bob alone (the author gets an ack).
    assert_eq!(sample(&after, "qchat_messages_delivered_total"), 3.0);
    assert_eq!(sample(&after, "qchat_messages_refused_total"), 1.0);
    assert_eq!(sample(&after, "qchat_slow_reader_evictions_total"), 0.0);
    assert_eq!(sample(&after, "qchat_flood_disconnects_total"), 0.0);
    assert!(sample(&after, "qchat_queue_depth_high_water") >= 1.0);
    // Every public message was stored, in however many batches.
    assert_eq!(sample(&after, "qchat_log_batch_size_sum"), 3.0);
    let batches = sample(&after, "qchat_log_batch_size_count");
    assert!((1.0..=3.0).contains(&batches), "{batches} batches");
    assert_eq!(sample(&after, "qchat_log_write_seconds_count"), batches);

    let (status, _) = get(addr, "/elsewhere");
    assert_eq!(status, 404);
}

#[test]
fn metrics_are_off_unless_asked_for() {
    let home = Home::new();
    let o = home
        .command()
        .args(["serve", "--check-config", "--metrics", "9464"])
        .output()
        .expect("run qchat serve --check-config");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("metrics = \"9464\"  # flag"), "{out}");
    let o = home
        .command()
        .args(["serve", "--check-config"])
        .output()
        .expect("run qchat serve --check-config");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("# metrics is not set  # default"), "{out}");
}
