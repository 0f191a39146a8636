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

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use qchat_client::{Decision, TrustMode, TrustPlan};
use qchat_proto::frame::encode_frame_into;
use qchat_proto::{ClientMsg, FrameDecoder, ServerMsg};
use qchat_tls::{Fingerprint, HostKey};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::evict::{Cause, Evicted, Evictions};
use crate::proc::Watched;
use crate::stats::{Histogram, Latency};
use crate::window::Windows;

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

/// After the first eviction, how long the run goes on so that members
/// disconnected in the same burst are counted too.
const EVICTION_GRACE: Duration = Duration::from_millis(250);

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
    /// Messages each sender may have on their way (not yet delivered to
    /// every reading member); `None` is the unwindowed flood.
    pub window: Option<u64>,
    /// Members greet as version 4 and senders sign their lines.
    pub signed: bool,
    /// The last `stalled` members never read.
    pub stalled: usize,
    /// Rooms besides #lobby the members are spread over (0: all in
    /// #lobby); each member joins `rooms_per_member` and sends in the
    /// first.
    pub rooms: usize,
    /// Rooms each member joins (with `rooms`).
    pub rooms_per_member: usize,
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
    /// Members that read each sender's messages: every member but the
    /// sender and the stalled ones.
    pub fn receivers(&self) -> u64 {
        // Every room has as many members (checked with the flags).
        if let Some(per_room) = (self.clients * self.rooms_per_member).checked_div(self.rooms) {
            return per_room.saturating_sub(1) as u64;
        }
        (self.clients - self.stalled).saturating_sub(1) as u64
    }

    /// The rooms member `i` joins, the one it sends in first.
    pub fn rooms_of(&self, i: usize) -> Vec<String> {
        (0..self.rooms_per_member)
            .map(|j| format!("#r{}", (i * self.rooms_per_member + j) % self.rooms.max(1)))
            .collect()
    }

    /// Deliveries if nothing is lost.
    pub fn expected(&self) -> u64 {
        self.senders as u64 * self.messages * self.receivers()
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
    /// The baseline relay forwards the client's `Say` and `RoomSay` frames
    /// verbatim instead of sending `Chat` and `RoomChat`.
    pub relay: bool,
    /// A cluster's nodes, all presenting `fingerprint`: member `i` joins
    /// node `i % len`. Empty: every member joins `addr`.
    pub nodes: Vec<SocketAddr>,
}

impl Target {
    /// Where member `i` joins: the nodes round-robin, or the one server.
    pub fn addr_of(&self, i: usize) -> SocketAddr {
        match self.nodes.len() {
            0 => self.addr,
            n => self.nodes[i % n],
        }
    }
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
    /// Frames that were not a bench message, or a line from a room the
    /// member is not in (should be zero).
    pub malformed: u64,
    /// Delivery latency.
    pub latency: Option<Latency>,
    /// Server CPU time while members connected.
    pub server_cpu_connect: Option<Duration>,
    /// Server CPU time from the first send to the last delivery.
    pub server_cpu: Option<Duration>,
    /// The load generator's own CPU time over the same span: near its
    /// threads × the duration, the bench is the limit, not the server.
    pub bench_cpu: Option<Duration>,
    /// Server RSS before anyone connected, KiB.
    pub server_rss_start_kib: Option<u64>,
    /// Server RSS with every member connected and idle, KiB.
    pub server_rss_connected_kib: Option<u64>,
    /// Stalled members the server had disconnected by the end.
    pub stalled_disconnected: usize,
    /// Whether the deadline passed before every delivery arrived.
    pub timed_out: bool,
    /// Members (not stalled ones) the server disconnected.
    pub evicted: Evicted,
}

/// Counters every receiver updates.
struct Shared {
    /// The zero of every send and receive timestamp.
    epoch: Instant,
    expected: u64,
    senders: usize,
    messages: u64,
    /// `Plan::rooms` and `Plan::rooms_per_member`: which senders' lines
    /// each member may hear.
    rooms: usize,
    rooms_per_member: usize,
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
    /// The senders' windows; `None` in flood mode.
    windows: Option<Windows>,
    evictions: Evictions,
    /// `qchat`, `baseline` or `external`, for what is said on stderr.
    label: &'static str,
}

const PHASE_CONNECT: u8 = 0;
const PHASE_DELIVER: u8 = 1;

/// One joined member.
struct Member {
    conn: quinn::Connection,
    send: Option<quinn::SendStream>,
    /// The room it sends in (`--rooms`); `None`: the lobby.
    room: Option<String>,
    /// A signing sender's key and instance (`--signed`).
    signing: Option<Signing>,
    /// Held unread by a stalled member, so the server's data piles up.
    stalled_recv: Option<quinn::RecvStream>,
    receiver: Option<JoinHandle<()>>,
    /// Waits for the connection's end and records it as an eviction.
    watcher: Option<JoinHandle<()>>,
}

/// Why the measured phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Delivered,
    Evicted,
    Deadline,
}

/// Connects the members, runs the load, and tears it down. `label` names
/// the server in what is said on stderr.
pub async fn run(
    target: &Target,
    plan: &Plan,
    server: Option<&dyn Watched>,
    label: &'static str,
) -> Result<Outcome> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        expected: plan.expected(),
        senders: plan.senders,
        messages: plan.messages,
        rooms: plan.rooms,
        rooms_per_member: plan.rooms_per_member,
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
        windows: plan
            .window
            .map(|w| Windows::new(plan.senders, plan.receivers(), w)),
        evictions: Evictions::new(),
        label,
    });
    let progress = plan
        .progress
        .then(|| tokio::spawn(progress_line(Arc::clone(&shared), plan.clients)));

    let endpoints = (0..plan.endpoints.min(plan.clients))
        .map(|_| qchat_client::client_endpoint(target.addr))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot open the client endpoints")?;

    let server_rss_start_kib = server.and_then(|s| s.rss_kib());
    let cpu_start = server.and_then(|s| s.cpu());
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
    let cpu_connected = server.and_then(|s| s.cpu());

    // Let join notices and welcomes drain before memory is read and the
    // measured phase starts.
    tokio::time::sleep(plan.settle).await;
    let server_rss_connected_kib = server.and_then(|s| s.rss_kib());

    let mut members = members;
    let cpu_before = server.and_then(|s| s.cpu());
    let me = std::process::id();
    let bench_cpu_before = crate::proc::cpu_of(me);
    shared.phase.store(PHASE_DELIVER, Ordering::Relaxed);
    let start = Instant::now();
    shared.evictions.started(start);
    let mut senders = Vec::with_capacity(plan.senders);
    for (i, m) in members.iter_mut().take(plan.senders).enumerate() {
        if let Some(send) = m.send.take() {
            senders.push(tokio::spawn(send_loop(
                send,
                m.room.take(),
                m.signing.take(),
                i,
                Arc::clone(&shared),
                plan.clone(),
                start,
            )));
        }
    }
    let deadline = start + plan.send_time() + plan.timeout;
    let end = if shared.expected == 0 {
        End::Delivered
    } else {
        tokio::select! {
            biased;
            () = shared.done.notified() => End::Delivered,
            () = shared.evictions.first.notified() => End::Evicted,
            () = tokio::time::sleep_until(deadline.into()) => End::Deadline,
        }
    };
    if end == End::Evicted {
        // Members of one burst go within milliseconds of each other;
        // counting them all says how many the load was too much for.
        tokio::time::sleep(EVICTION_GRACE).await;
    }
    let timed_out = end == End::Deadline;
    let duration = start.elapsed();
    let cpu_after = server.and_then(|s| s.cpu());
    let bench_cpu_after = crate::proc::cpu_of(me);

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
    // Watchers first: the closes below are the bench's own.
    for m in &mut members {
        if let Some(w) = m.watcher.take() {
            w.abort();
        }
    }
    let evicted = shared.evictions.summary();
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
        bench_cpu: delta(bench_cpu_before, bench_cpu_after),
        server_rss_start_kib,
        server_rss_connected_kib,
        stalled_disconnected,
        timed_out,
        evicted,
    })
}

/// A signing sender's key and instance (`--signed`).
struct Signing {
    identity: Arc<qchat_tls::Identity>,
    signer: qchat_tls::signing::Signer,
    instance: [u8; 16],
}

impl Signing {
    /// A fresh person key; its files live only while it is loaded.
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir().context("a temporary directory for a key")?;
        let (identity, _) =
            qchat_tls::identity::load_or_create_as(dir.path(), qchat_tls::Role::Person)?;
        let signer = qchat_tls::signing::Signer::new(&identity)?;
        Ok(Signing {
            identity: Arc::new(identity),
            signer,
            instance: qchat_client::new_instance(),
        })
    }

    /// `text` as line `seq`, signed as the real client signs it.
    fn line(&self, seq: u64, text: String) -> ClientMsg {
        let sent_ms = qchat_proto::clock::now_ms();
        let bytes = qchat_proto::signed::Signed {
            kind: qchat_proto::signed::SignedKind::Say,
            to: "",
            text: &text,
            instance: self.instance,
            seq,
            sent_ms,
        }
        .bytes();
        ClientMsg::Signed {
            seq,
            sig: self.signer.sign(&bytes),
            text,
            action: false,
            sent_ms,
            key: self.signer.public_key(),
        }
    }
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
        let addr = target.addr_of(i);
        let stalled = i >= plan.clients - plan.stalled;
        let signed = plan.signed;
        let my_rooms = if plan.rooms > 0 {
            plan.rooms_of(i)
        } else {
            Vec::new()
        };
        // A fresh key per signing sender, made before the clock starts.
        let signing = if signed && i < plan.senders {
            Some(Signing::new().with_context(|| format!("member {i}'s key"))?)
        } else {
            None
        };
        let trust = match &signing {
            Some(s) => Arc::new(trust_plan(target).presenting(Some(Arc::clone(&s.identity)))),
            None => trust,
        };
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let instance = signing
                .as_ref()
                .map_or_else(qchat_client::new_instance, |s| s.instance);
            let mut attempt = 1;
            let joined = loop {
                let tried = async {
                    let (conn, _, _) =
                        qchat_client::connect(&endpoint, addr, &trust, |_| Decision::Refuse)
                            .await
                            .with_context(|| format!("member {i} could not connect"))?;
                    let name = format!("m{i}");
                    let joined = if signed || !my_rooms.is_empty() {
                        let greeting = qchat_client::Greeting::V3 {
                            instance,
                            resume: None,
                        };
                        qchat_client::join_as(conn, &name, &greeting).await
                    } else {
                        qchat_client::join(conn, &name).await
                    };
                    joined.with_context(|| format!("member {i} could not join"))
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
            let mut joined = joined;
            if !my_rooms.is_empty() {
                join_rooms(&mut joined, &my_rooms)
                    .await
                    .with_context(|| format!("member {i} could not join its rooms"))?;
            }
            shared.connected.fetch_add(1, Ordering::Relaxed);
            let (receiver, stalled_recv, watcher) = if stalled {
                // Their disconnection is the scenario, counted apart.
                (None, Some(joined.recv), None)
            } else {
                let task = receive(joined.recv, joined.decoder, i, Arc::clone(&shared));
                let watch = watch(joined.conn.clone(), i, Arc::clone(&shared));
                (Some(tokio::spawn(task)), None, Some(tokio::spawn(watch)))
            };
            Ok::<_, anyhow::Error>(Member {
                conn: joined.conn,
                send: Some(joined.send),
                room: my_rooms.into_iter().next(),
                signing,
                stalled_recv,
                receiver,
                watcher,
            })
        }));
    }
    let mut members = Vec::with_capacity(plan.clients);
    for t in tasks {
        members.push(t.await.context("a connecting task failed")??);
    }
    Ok(members)
}

/// Joins `rooms` (one `Join` each, written at once) and reads until each
/// one's replay is over; anything else read meanwhile (the lobby's
/// replay, presence) is not a delivery.
async fn join_rooms(joined: &mut qchat_client::Joined, rooms: &[String]) -> Result<()> {
    let mut buf = BytesMut::new();
    for room in rooms {
        let join = ClientMsg::Join {
            room: room.clone(),
            resume: None,
        };
        encode_frame_into(&join, &mut buf).expect("encoding into a growable buffer cannot fail");
    }
    joined.send.write_all(&buf).await?;
    let mut left = rooms.len();
    while left > 0 {
        let frame = joined
            .decoder
            .read_frame(&mut joined.recv)
            .await?
            .context("the server ended the stream while joining rooms")?;
        match ServerMsg::decode(&frame) {
            Ok(ServerMsg::RoomReplayed { .. }) => left -= 1,
            Ok(ServerMsg::Failed { what, reason }) if what == "join" => {
                bail!("the server refused a room: {reason}")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Records the end of a member's connection unless the bench ended it.
async fn watch(conn: quinn::Connection, member: usize, shared: Arc<Shared>) {
    if let Some(cause) = Cause::of(&conn.closed().await) {
        shared.evictions.record(member, cause, shared.label);
    }
}

/// Sends this member's messages — in batches as fast as the window (or,
/// in flood mode, flow control) allows, or one per tick and still within
/// the window — and hands the stream back so that it stays open until the
/// run ends.
#[allow(clippy::too_many_arguments)] // a sender's parts
async fn send_loop(
    mut send: quinn::SendStream,
    room: Option<String>,
    signing: Option<Signing>,
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
        let text_now = std::mem::take(&mut text);
        let msg = match (&signing, &room) {
            (Some(s), _) => s.line(seq, text_now),
            (None, Some(room)) => ClientMsg::RoomSay {
                room: room.clone(),
                seq,
                text: text_now,
                action: false,
            },
            (None, None) => ClientMsg::Say {
                seq,
                text: text_now,
            },
        };
        encode_frame_into(&msg, buf).expect("encoding into a growable buffer cannot fail");
        if let ClientMsg::Say { text: t, .. }
        | ClientMsg::Signed { text: t, .. }
        | ClientMsg::RoomSay { text: t, .. } = msg
        {
            text = t;
        }
    };
    let windows = shared.windows.as_ref();
    match plan.rate {
        None => {
            // Refill a quarter window at a time: one write per freed
            // message would make the bench, not the server, the limit.
            let refill = windows.map_or(1, |w| (w.limit() / 4).max(1));
            let mut sent = 0;
            while sent < plan.messages {
                let left = plan.messages - sent;
                let room = match windows {
                    Some(w) => w.wait_for_room(me, sent, refill.min(left)).await,
                    None => u64::MAX,
                };
                let n = room.min(SEND_BATCH as u64).min(left);
                for s in sent + 1..=sent + n {
                    encode(&mut buf, s);
                }
                sent += n;
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
                // A full window delays this tick; the ticks missed
                // meanwhile are sent at once when it opens.
                if let Some(w) = windows {
                    w.wait_for_room(me, seq - 1, 1).await;
                }
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

/// Whether member `me` is in the room where `sender` sends (always, without
/// rooms): member i is in the rooms i·K … i·K+K−1 (mod N), and sends in
/// the first ([`Plan::rooms_of`]).
fn hears(rooms: usize, per_member: usize, me: usize, sender: usize) -> bool {
    if rooms == 0 {
        return true;
    }
    let said_in = sender * per_member % rooms;
    (said_in + rooms - me * per_member % rooms) % rooms < per_member
}

/// Reads every frame for member `me` and checks each delivery: per sender,
/// each sequence number exactly once and in order, and only from a room
/// the member is in.
async fn receive(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    me: usize,
    shared: Arc<Shared>,
) {
    let (senders, messages) = (shared.senders, shared.messages);
    // One bit per (sender, seq): tells a duplicate from a late arrival.
    let mut seen = vec![0u64; (senders * messages as usize).div_ceil(64)];
    let mut highest = vec![0u64; senders];
    while let Ok(Some(frame)) = decoder.read_frame(&mut recv).await {
        let now = shared.epoch.elapsed().as_nanos() as u64;
        let text = if shared.relay {
            match relayed(&frame) {
                Relayed::Line(text) => text,
                Relayed::Ack => continue,
                Relayed::Other => {
                    shared.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        } else {
            match ServerMsg::decode(&frame) {
                Ok(
                    ServerMsg::Chat { text, .. }
                    | ServerMsg::ChatV3 { text, .. }
                    | ServerMsg::ChatSigned { text, .. }
                    | ServerMsg::RoomChat { text, .. },
                ) => text,
                // What the server says before it disconnects someone.
                Ok(ServerMsg::Notice { text } | ServerMsg::ShuttingDown { reason: text }) => {
                    shared.evictions.notice(&text);
                    continue;
                }
                // Acks, join and leave notices: not deliveries.
                Ok(_) => continue,
                Err(_) => {
                    shared.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        };
        // A line from another room is not one this member should get: the
        // server (or the relay) routed it wrong.
        let Some((s, seq, sent)) = parse_payload(&text).filter(|&(s, seq, _)| {
            s < senders
                && (1..=messages).contains(&seq)
                && hears(shared.rooms, shared.rooms_per_member, me, s)
        }) else {
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
        if let Some(w) = &shared.windows {
            w.delivered(s, seq);
        }
        if shared.received.fetch_add(1, Ordering::Relaxed) + 1 == shared.expected {
            shared.done.notify_one();
        }
    }
}

/// A frame from the baseline relay, which forwards members' frames as
/// they came and answers a room line with its own `RoomAck`.
#[derive(Debug, PartialEq, Eq)]
enum Relayed {
    /// A member's line (`Say`, `Signed`, `RoomSay`): its text.
    Line(String),
    /// The relay's acknowledgement of this member's own room line.
    Ack,
    /// Anything else.
    Other,
}

/// Tells what the relay sent. The relay's `RoomAck` is a server kind whose
/// index no client kind has (an unknown kind to `ClientMsg::decode`), so a
/// forwarded line is never mistaken for it, nor it for a line.
fn relayed(frame: &[u8]) -> Relayed {
    match ClientMsg::decode(frame) {
        Ok(
            ClientMsg::Say { text, .. }
            | ClientMsg::Signed { text, .. }
            | ClientMsg::RoomSay { text, .. },
        ) => Relayed::Line(text),
        Ok(_) => Relayed::Other,
        Err(_) => match ServerMsg::decode(frame) {
            Ok(ServerMsg::RoomAck { .. }) => Relayed::Ack,
            _ => Relayed::Other,
        },
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
            let evicted = shared.evictions.count();
            eprint!(
                "\r\x1b[Kdelivering: {}/{} ({:.0}/s){}",
                now.1,
                shared.expected,
                rate,
                if evicted > 0 {
                    format!(", {evicted} members disconnected by the server")
                } else {
                    String::new()
                }
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

    /// What the relay forwards and what it answers, told apart on the
    /// bytes a member reads (a frame body: the 4-byte prefix cut off).
    #[test]
    fn relayed_lines_and_acks_are_told_apart() {
        let body = |frame: bytes::Bytes| frame.slice(4..);
        let line = ClientMsg::RoomSay {
            room: "#r0".into(),
            seq: 7,
            text: "hi".into(),
            action: false,
        };
        assert_eq!(relayed(&body(line.to_frame())), Relayed::Line("hi".into()));
        let lobby = ClientMsg::Say {
            seq: 7,
            text: "yo".into(),
        };
        assert_eq!(relayed(&body(lobby.to_frame())), Relayed::Line("yo".into()));
        let ack = ServerMsg::RoomAck {
            room: "#r0".into(),
            seq: 7,
            id: 0,
        };
        assert_eq!(relayed(&body(ack.to_frame())), Relayed::Ack);
        let bye = ClientMsg::Bye {
            reason: String::new(),
        };
        assert_eq!(relayed(&body(bye.to_frame())), Relayed::Other);
    }

    #[test]
    fn expected_excludes_sender_and_stalled() {
        let plan = Plan {
            clients: 10,
            senders: 2,
            messages: 5,
            size: 100,
            rate: None,
            window: Some(32),
            signed: false,
            stalled: 3,
            rooms: 0,
            rooms_per_member: 1,
            endpoints: 1,
            timeout: Duration::from_secs(1),
            settle: Duration::ZERO,
            progress: false,
        };
        assert_eq!(plan.expected(), 2 * 5 * 6);
        // 12 members in 4 rooms, 2 each: 6 per room, 5 besides the sender.
        let rooms = Plan {
            clients: 12,
            stalled: 0,
            rooms: 4,
            rooms_per_member: 2,
            ..plan
        };
        assert_eq!(rooms.expected(), 2 * 5 * 5);
        assert_eq!(rooms.rooms_of(3), ["#r2", "#r3"]);
        let mut count = std::collections::HashMap::new();
        for i in 0..12 {
            for r in rooms.rooms_of(i) {
                *count.entry(r).or_insert(0) += 1;
            }
        }
        assert!(count.values().all(|&n| n == 6), "{count:?}");
        // `hears` agrees with the rooms each member joins.
        for me in 0..12 {
            let mine = rooms.rooms_of(me);
            for sender in 0..12 {
                let said_in = &rooms.rooms_of(sender)[0];
                assert_eq!(
                    hears(4, 2, me, sender),
                    mine.contains(said_in),
                    "{me} {sender}"
                );
            }
        }
        assert!(hears(0, 1, 3, 5));
    }
}
