//! The load: members that connect through the real client crate, senders
//! that stamp every message, and receivers that check every delivery.
//!
//! All members live in this one process, so a send time taken from one
//! shared `Instant` and compared on arrival gives the delivery latency
//! without any clock synchronisation. Members are spread over a few QUIC
//! endpoints (UDP sockets): one endpoint per member would cost a socket and
//! a driver task each, one endpoint for 10,000 members would serialise all
//! their packets through one task.
//!
//! Once joined, a member's stream is driven here directly with
//! `qchat_proto` rather than through the client's network task: the bytes
//! are the real protocol, but the bench avoids two channel hops and a
//! string sanitiser per message that would make the load generator, not
//! the server, the bottleneck.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use qchat_client::{Decision, TrustMode, TrustPlan};
use qchat_proto::frame::encode_frame_into;
use qchat_proto::{ClientMsg, FrameDecoder, ServerMsg};
use qchat_tls::{Fingerprint, HostKey};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::proc::ServerProc;
use crate::stats::{Histogram, Latency};

/// Handshakes in flight at once: enough to keep both sides busy, few
/// enough that none of them times out waiting for the CPU.
pub const CONNECT_CONCURRENCY: usize = 64;

/// Tries per member before the run fails.
const CONNECT_ATTEMPTS: u32 = 3;

/// Frames a sender packs into one write when sending flat out: one
/// contiguous chunk per write keeps quinn's send buffer short.
const SEND_BATCH: usize = 32;

/// How long closing connections may take before the run moves on.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The load to generate, already checked.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Members in the room.
    pub clients: usize,
    /// Members `0..senders` send.
    pub senders: usize,
    /// Messages per sender.
    pub messages: u64,
    /// Bytes of text per message.
    pub size: usize,
    /// Messages per second per sender; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// The last `stalled` members never read.
    pub stalled: usize,
    /// QUIC endpoints to spread members over.
    pub endpoints: usize,
    /// Bound on connecting, and on delivering after the last send.
    pub timeout: Duration,
    /// Quiet time between connecting and measuring memory.
    pub settle: Duration,
    /// Whether to draw a progress line on stderr.
    pub progress: bool,
}

impl Plan {
    /// Deliveries if nothing is lost: every message reaches every member
    /// but its sender and the stalled ones.
    pub fn expected(&self) -> u64 {
        let receivers = (self.clients - self.stalled).saturating_sub(1) as u64;
        self.senders as u64 * self.messages * receivers
    }

    /// The wall-clock time the senders need at `--rate`.
    fn send_time(&self) -> Duration {
        match self.rate {
            Some(r) => Duration::from_secs_f64(self.messages as f64 / r),
            None => Duration::ZERO,
        }
    }
}

/// The server to load.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its key, given to the pinning verifier.
    pub fingerprint: Fingerprint,
    /// The baseline relay forwards the client's `Say` frames verbatim
    /// instead of sending `Chat`.
    pub relay: bool,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Time until every member had joined.
    pub connect: Duration,
    /// Connection attempts that failed and were retried.
    pub connect_retries: u64,
    /// From the first send to the last delivery (or the timeout).
    pub duration: Duration,
    /// Deliveries expected.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// Deliveries received more than once.
    pub duplicates: u64,
    /// Deliveries that arrived after a later message from the same sender.
    pub out_of_order: u64,
    /// Frames that were not a bench message (should be zero).
    pub malformed: u64,
    /// Delivery latency.
    pub latency: Option<Latency>,
    /// Server CPU time while members connected.
    pub server_cpu_connect: Option<Duration>,
    /// Server CPU time from the first send to the last delivery.
    pub server_cpu: Option<Duration>,
    /// Server RSS before anyone connected, KiB.
    pub server_rss_start_kib: Option<u64>,
    /// Server RSS with every member connected and idle, KiB.
    pub server_rss_connected_kib: Option<u64>,
    /// Stalled members the server had disconnected by the end.
    pub stalled_disconnected: usize,
    /// Whether the deadline passed before every delivery arrived.
    pub timed_out: bool,
}

/// Counters every receiver updates.
struct Shared {
    /// The zero of every send and receive timestamp.
    epoch: Instant,
    expected: u64,
    senders: usize,
    messages: u64,
    relay: bool,
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    malformed: AtomicU64,
    connected: AtomicU64,
    connect_retries: AtomicU64,
    phase: AtomicU8,
    latency: Histogram,
    /// Signalled once, by the receiver that completes the expected count.
    done: Notify,
}

const PHASE_CONNECT: u8 = 0;
const PHASE_DELIVER: u8 = 1;

/// One joined member.
struct Member {
    conn: quinn::Connection,
    send: Option<quinn::SendStream>,
    /// Held unread by a stalled member, so the server's data piles up.
    stalled_recv: Option<quinn::RecvStream>,
    receiver: Option<JoinHandle<()>>,
}

/// Connects the members, runs the load, and tears it down.
pub async fn run(target: &Target, plan: &Plan, server: Option<&ServerProc>) -> Result<Outcome> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        expected: plan.expected(),
        senders: plan.senders,
        messages: plan.messages,
        relay: target.relay,
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        connect_retries: AtomicU64::new(0),
        phase: AtomicU8::new(PHASE_CONNECT),
        latency: Histogram::new(),
        done: Notify::new(),
    });
    let progress = plan
        .progress
        .then(|| tokio::spawn(progress_line(Arc::clone(&shared), plan.clients)));

    let endpoints = (0..plan.endpoints.min(plan.clients))
        .map(|_| qchat_client::client_endpoint(target.addr))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot open the client endpoints")?;

    let server_rss_start_kib = server.and_then(ServerProc::rss_kib);
    let cpu_start = server.and_then(ServerProc::cpu);
    let connect_start = Instant::now();
    let members =
        tokio::time::timeout(plan.timeout, connect_all(target, plan, &endpoints, &shared))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {} members connected within {} s",
                    shared.connected.load(Ordering::Relaxed),
                    plan.clients,
                    plan.timeout.as_secs_f64()
                )
            })??;
    let connect = connect_start.elapsed();
    let cpu_connected = server.and_then(ServerProc::cpu);

    // Let join notices and welcomes drain before memory is read and the
    // measured phase starts.
    tokio::time::sleep(plan.settle).await;
    let server_rss_connected_kib = server.and_then(ServerProc::rss_kib);

    let mut members = members;
    let cpu_before = server.and_then(ServerProc::cpu);
    shared.phase.store(PHASE_DELIVER, Ordering::Relaxed);
    let start = Instant::now();
    let mut senders = Vec::with_capacity(plan.senders);
    for (i, m) in members.iter_mut().take(plan.senders).enumerate() {
        if let Some(send) = m.send.take() {
            senders.push(tokio::spawn(send_loop(
                send,
                i,
                Arc::clone(&shared),
                plan.clone(),
                start,
            )));
        }
    }
    let deadline = start + plan.send_time() + plan.timeout;
    let timed_out = if shared.expected == 0 {
        false
    } else {
        tokio::time::timeout_at(deadline.into(), shared.done.notified())
            .await
            .is_err()
    };
    let duration = start.elapsed();
    let cpu_after = server.and_then(ServerProc::cpu);

    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[K");
    }
    // A sender's stream must outlive its last write: dropping a
    // `SendStream` finishes it, which the server takes as the member
    // leaving, and it would miss what the others still send.
    let mut streams = Vec::with_capacity(senders.len());
    for s in senders {
        if s.is_finished() {
            streams.push(s.await.ok());
        } else {
            s.abort();
        }
    }
    let stalled_disconnected = members
        .iter()
        .skip(plan.clients - plan.stalled)
        .filter(|m| m.conn.close_reason().is_some())
        .count();
    for m in &mut members {
        if let Some(r) = m.receiver.take() {
            r.abort();
        }
        m.stalled_recv.take();
        m.conn
            .close(qchat_proto::CloseCode::Normal.code().into(), b"bench done");
    }
    drop(members);
    drop(streams);
    for e in &endpoints {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, e.wait_idle()).await;
    }

    let delta = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
    Ok(Outcome {
        connect,
        connect_retries: shared.connect_retries.load(Ordering::Relaxed),
        duration,
        expected: shared.expected,
        received: shared.received.load(Ordering::Relaxed),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        malformed: shared.malformed.load(Ordering::Relaxed),
        latency: shared.latency.summary(),
        server_cpu_connect: delta(cpu_start, cpu_connected),
        server_cpu: delta(cpu_before, cpu_after),
        server_rss_start_kib,
        server_rss_connected_kib,
        stalled_disconnected,
        timed_out,
    })
}

/// Trust exactly the target's fingerprint, without any pin file.
pub fn trust_plan(target: &Target) -> TrustPlan {
    TrustPlan {
        host: HostKey {
            host: target.addr.ip().to_string(),
            port: target.addr.port(),
        },
        // Strict mode with a given fingerprint never reads or writes it.
        known_hosts: std::env::temp_dir().join("qchat-bench-known-hosts-unused"),
        pin: None,
        given: Some(target.fingerprint),
        mode: TrustMode::Strict,
        interactive: false,
        warnings: vec![],
        // Bench members join as guests: the load is about the fan-out.
        me: None,
    }
}

/// Connects and joins every member, a bounded number at a time, and
/// starts each reading member's receiver as soon as it has joined.
async fn connect_all(
    target: &Target,
    plan: &Plan,
    endpoints: &[quinn::Endpoint],
    shared: &Arc<Shared>,
) -> Result<Vec<Member>> {
    let trust = Arc::new(trust_plan(target));
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (trust, gate, shared) = (Arc::clone(&trust), Arc::clone(&gate), Arc::clone(shared));
        let addr = target.addr;
        let stalled = i >= plan.clients - plan.stalled;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut attempt = 1;
            let joined = loop {
                let tried = async {
                    let (conn, _, _) =
                        qchat_client::connect(&endpoint, addr, &trust, |_| Decision::Refuse)
                            .await
                            .with_context(|| format!("member {i} could not connect"))?;
                    qchat_client::join(conn, &format!("m{i}"))
                        .await
                        .with_context(|| format!("member {i} could not join"))
                };
                match tried.await {
                    Ok(j) => break j,
                    // An overloaded server can let a handshake time out;
                    // retried and counted, because it is a result too.
                    Err(e) if attempt < CONNECT_ATTEMPTS => {
                        tracing::debug!(member = i, attempt, "join failed, retrying: {e:#}");
                        attempt += 1;
                        shared.connect_retries.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            };
            shared.connected.fetch_add(1, Ordering::Relaxed);
            let (receiver, stalled_recv) = if stalled {
                (None, Some(joined.recv))
            } else {
                let task = receive(joined.recv, joined.decoder, Arc::clone(&shared));
                (Some(tokio::spawn(task)), None)
            };
            Ok::<_, anyhow::Error>(Member {
                conn: joined.conn,
                send: Some(joined.send),
                stalled_recv,
                receiver,
            })
        }));
    }
    let mut members = Vec::with_capacity(plan.clients);
    for t in tasks {
        members.push(t.await.context("a connecting task failed")??);
    }
    Ok(members)
}

/// Sends this member's messages, flat out in batches or one per tick, and
/// hands the stream back so that it stays open until the run ends.
async fn send_loop(
    mut send: quinn::SendStream,
    me: usize,
    shared: Arc<Shared>,
    plan: Plan,
    start: Instant,
) -> quinn::SendStream {
    let mut buf = BytesMut::new();
    let mut text = String::with_capacity(plan.size);
    let mut encode = |buf: &mut BytesMut, seq: u64| {
        let now = shared.epoch.elapsed().as_nanos() as u64;
        payload(&mut text, me, seq, now, plan.size);
        let msg = ClientMsg::Say {
            seq,
            text: std::mem::take(&mut text),
        };
        encode_frame_into(&msg, buf).expect("encoding into a growable buffer cannot fail");
        if let ClientMsg::Say { text: t, .. } = msg {
            text = t;
        }
    };
    match plan.rate {
        None => {
            let mut seq = 1;
            while seq <= plan.messages {
                let end = (seq + SEND_BATCH as u64).min(plan.messages + 1);
                for s in seq..end {
                    encode(&mut buf, s);
                }
                seq = end;
                if send.write_chunk(buf.split().freeze()).await.is_err() {
                    break;
                }
            }
        }
        Some(rate) => {
            // Senders are spread evenly over one period so that the server
            // sees a steady stream rather than synchronised bursts.
            let period = Duration::from_secs_f64(1.0 / rate);
            let phase = period.mul_f64(me as f64 / plan.senders.max(1) as f64);
            let mut tick = tokio::time::interval_at((start + phase).into(), period);
            // A late tick is sent at once, keeping the average rate.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 1..=plan.messages {
                tick.tick().await;
                encode(&mut buf, seq);
                if send.write_chunk(buf.split().freeze()).await.is_err() {
                    break;
                }
            }
        }
    }
    send
}

/// The message text: sender, sequence number and send time (ns since the
/// shared epoch) as fixed-width decimals, padded to `size` bytes.
pub fn payload(text: &mut String, sender: usize, seq: u64, sent_ns: u64, size: usize) {
    use std::fmt::Write;
    text.clear();
    let _ = write!(text, "{sender:08} {seq:012} {sent_ns:020} ");
    while text.len() < size {
        text.push('x');
    }
}

/// The sender, sequence number and send time from a message text.
pub fn parse_payload(text: &str) -> Option<(usize, u64, u64)> {
    let mut it = text.splitn(4, ' ');
    let sender = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((sender, seq, sent))
}

/// Reads every frame for one member and checks each delivery: per sender,
/// each sequence number exactly once and in order.
async fn receive(mut recv: quinn::RecvStream, mut decoder: FrameDecoder, shared: Arc<Shared>) {
    let (senders, messages) = (shared.senders, shared.messages);
    // One bit per (sender, seq): tells a duplicate from a late arrival.
    let mut seen = vec![0u64; (senders * messages as usize).div_ceil(64)];
    let mut highest = vec![0u64; senders];
    while let Ok(Some(frame)) = decoder.read_frame(&mut recv).await {
        let now = shared.epoch.elapsed().as_nanos() as u64;
        let text = if shared.relay {
            match ClientMsg::decode(&frame) {
                Ok(ClientMsg::Say { text, .. }) => text,
                _ => {
                    shared.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        } else {
            match ServerMsg::decode(&frame) {
                Ok(ServerMsg::Chat { text, .. }) => text,
                // Acks, join and leave notices: not deliveries.
                Ok(_) => continue,
                Err(_) => {
                    shared.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        };
        let Some((s, seq, sent)) = parse_payload(&text)
            .filter(|&(s, seq, _)| s < senders && (1..=messages).contains(&seq))
        else {
            shared.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let bit = s * messages as usize + (seq - 1) as usize;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if seen[word] & mask != 0 {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        seen[word] |= mask;
        if seq < highest[s] {
            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
        } else {
            highest[s] = seq;
        }
        shared.latency.record(now.saturating_sub(sent));
        if shared.received.fetch_add(1, Ordering::Relaxed) + 1 == shared.expected {
            shared.done.notify_one();
        }
    }
}

/// Redraws one status line on stderr a few times a second, once the run
/// has lasted more than a second.
async fn progress_line(shared: Arc<Shared>, clients: usize) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), shared.received.load(Ordering::Relaxed));
    loop {
        tick.tick().await;
        if shared.phase.load(Ordering::Relaxed) == PHASE_CONNECT {
            let n = shared.connected.load(Ordering::Relaxed);
            eprint!("\r\x1b[Kconnecting: {n}/{clients} members");
        } else {
            let now = (Instant::now(), shared.received.load(Ordering::Relaxed));
            let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64().max(1e-3);
            last = now;
            eprint!(
                "\r\x1b[Kdelivering: {}/{} ({:.0}/s)",
                now.1, shared.expected, rate
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_at_the_minimum_size() {
        let mut t = String::new();
        payload(&mut t, 12, 34, u64::MAX, 48);
        assert_eq!(t.len(), 48);
        assert_eq!(parse_payload(&t), Some((12, 34, u64::MAX)));
    }

    #[test]
    fn expected_excludes_sender_and_stalled() {
        let plan = Plan {
            clients: 10,
            senders: 2,
            messages: 5,
            size: 100,
            rate: None,
            stalled: 3,
            endpoints: 1,
            timeout: Duration::from_secs(1),
            settle: Duration::ZERO,
            progress: false,
        };
        assert_eq!(plan.expected(), 2 * 5 * 6);
    }
}
