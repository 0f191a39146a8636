//! The "nothing lost" scenarios: a reconnect storm after a server restart
//! (`--restart term|kill`) and a mass resume (`--replay`).
//!
//! Both have the same shape. `--clients` members join over protocol
//! version 3 and read; one more member, the sender, sends `--messages`
//! stamped messages and waits for every member to have them. Then the
//! disruption: the server is stopped and started again on the same port
//! with the same home (identity and room log), or every member closes its
//! connection while the sender sends `--messages` more. Every member then
//! says `HelloV3` again with its own instance id and its resume point
//! (the log id and the last message id it saw) and reads the replay up to
//! `Replayed`. After a restart the sender sends its second half once the
//! server is back. Every member must end with each of the sender's
//! messages exactly once, ids strictly increasing.
//!
//! A member reconnects only once it has noticed its connection is gone
//! (the server's goodbye after SIGTERM, the stateless reset of the
//! restarted server after SIGKILL) and the server is back: the clock of
//! "time to resume" starts when the restarted server announces itself
//! (or, with `--replay`, when the members are let back). Rejoins go
//! through the same gate of concurrent handshakes as the first joins.
//!
//! `--failover` is the same shape on a cluster: the members are spread
//! over its nodes, the sender sits on the second, and the disruption is
//! the first node killed outright. Nothing resets its members'
//! connections, so each notices the silence itself (no datagram for
//! `--failover-silence`, as the client does), joins the next node with its
//! resume point, and replays what it missed there, while the sender sends
//! its second half at once. The clock starts at the kill.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qchat_client::connection::{new_instance, Greeting, Joined};
use qchat_client::{Decision, TrustPlan};
use qchat_proto::frame::encode_frame_into;
use qchat_proto::{ClientMsg, CloseCode, ResumePoint, ServerMsg};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::bench::qchat_beside_me;
use crate::cli::BenchArgs;
use crate::cluster::Nodes;
use crate::load::{parse_payload, payload, trust_plan, Target, CONNECT_CONCURRENCY};
use crate::proc::{Kind, ServerProc, Spawn, Stop};
use crate::stats::{Deliveries, Histogram, Latency};

/// Tries per (re)join before a member gives up.
const JOIN_ATTEMPTS: u32 = 20;

/// Bound on one join attempt: a handshake to a server that is not there
/// yet would otherwise wait for the client's own timeout.
const JOIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between failed join attempts.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The shortest `--failover-silence`: above the client's 1 s keep-alive
/// with room for an answer delayed by a busy machine.
const MIN_SILENCE: Duration = Duration::from_millis(1500);

/// How often a `--failover` member looks whether its node still answers.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// How often the coordinator looks at the counters while it waits.
const POLL: Duration = Duration::from_millis(5);

/// What the coordinator tells the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctl {
    /// Read.
    Live,
    /// Close the connection (`--replay`).
    Disconnect,
    /// The server is back (or the members may return) since this instant.
    Back(Instant),
    /// The run is over.
    Done,
}

/// Counters every member updates.
struct Shared {
    /// Messages the sender sends in all: two halves of `--messages`.
    total: u64,
    joined: AtomicU64,
    disconnected: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    malformed: AtomicU64,
    /// Members whose `Replayed` after the disruption said `resumed`.
    resumed: AtomicU64,
    /// Members whose `Replayed` after the disruption said fresh join.
    fresh: AtomicU64,
    /// Members that got their `Replayed` after the disruption.
    rejoined: AtomicU64,
    replayed: AtomicU64,
    server_missed: AtomicU64,
    retries: AtomicU64,
    /// From `Back` to each member's `Replayed`.
    resume: Histogram,
    last_resumed: Mutex<Option<Instant>>,
}

/// What `--restart` / `--replay` / `--failover` report (`--json`: this
/// object).
#[derive(Debug, Serialize)]
struct StormReport {
    /// `restart`, `replay` or `failover`.
    mode: &'static str,
    restart: Option<Stop>,
    clients: usize,
    /// Clustered nodes (`--failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    /// Members that had to resume: all of them, or with `--failover` those
    /// of the killed node.
    moved: u64,
    /// Messages the sender sent in all (twice `--messages`).
    messages: u64,
    server_args: Vec<String>,
    connect_s: f64,
    /// From the stop signal to the restarted server announcing itself.
    server_down_s: Option<f64>,
    /// Members whose resume point the server accepted.
    resumed: u64,
    /// Members the server treated as a fresh join instead.
    fresh_joins: u64,
    /// From the server being back (with `--failover`: from the kill) to
    /// every member's `Replayed`.
    all_resumed_s: Option<f64>,
    /// From the server being back (the kill) to each member's `Replayed`.
    resume_ms: Option<Latency>,
    /// Messages the server replayed to resuming members, in all.
    replayed: u64,
    replayed_per_s: Option<f64>,
    /// What the server said it could not replay (`Replayed::missed`).
    server_missed: u64,
    rejoin_retries: u64,
    #[serde(flatten)]
    deliveries: Deliveries,
    server_peak_rss_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
}

impl StormReport {
    fn ok(&self) -> bool {
        self.deliveries.intact() && self.resumed == self.moved && !self.deliveries.timed_out
    }
}

/// The servers a storm runs against.
enum Under {
    /// One server (`--restart`, `--replay`).
    One(ServerProc),
    /// A cluster whose first node is killed (`--failover`).
    Cluster(Nodes),
}

impl Under {
    fn excerpt(&self) -> String {
        match self {
            Under::One(s) => s.stderr_excerpt(),
            Under::Cluster(c) => c.excerpt(),
        }
    }

    /// The nodes still running: their peak memory and memory now, summed.
    fn memory(&self) -> (Option<u64>, Option<u64>) {
        match self {
            Under::One(s) => (s.peak_rss_kib(), s.rss_kib()),
            Under::Cluster(c) => {
                let alive = || c.nodes.iter().skip(1);
                (
                    alive().map(ServerProc::peak_rss_kib).sum(),
                    alive().map(ServerProc::rss_kib).sum(),
                )
            }
        }
    }

    fn stop(self) {
        match self {
            Under::One(s) => s.stop(),
            Under::Cluster(c) => c.stop(),
        }
    }
}

/// Runs `--restart`, `--replay` or `--failover` once and prints the
/// report.
pub fn run(a: BenchArgs) -> Result<u8> {
    if a.messages == 0 {
        bail!("--restart, --replay and --failover need --messages of at least 1");
    }
    if a.failover && a.failover_silence < MIN_SILENCE {
        bail!(
            "--failover-silence must be at least {} s: a live node is heard about once a second \
             (the keep-alive), so a shorter silence moves members off nodes that are up",
            MIN_SILENCE.as_secs_f64()
        );
    }
    let qchat = match &a.qchat {
        Some(p) => p.clone(),
        None => qchat_beside_me()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.bench_threads.into())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let spawn = Spawn {
        kind: Kind::Qchat,
        // The sender, and the old connections a restart leaves behind.
        connections: 2 * a.clients + 10,
        queue: a.queue,
        threads: a.server_threads,
        retry_threshold: a.retry_threshold,
        qchat,
        extra: a.server_arg.clone(),
    };
    let mut under = if a.failover {
        let n = a.cluster_nodes.iter().copied().max().unwrap_or(0);
        if n < 2 {
            bail!("--failover needs a cluster of at least 2 nodes (--cluster-nodes 2 or 3)");
        }
        let nodes = Nodes::start(n, &spawn, &a.nats_server)?;
        if !a.json {
            eprintln!(
                "qchat-bench: started nats-server on {} and {n} clustered nodes with {}",
                nodes.nats.url(),
                nodes.nodes[0].raised.join(" ")
            );
        }
        Under::Cluster(nodes)
    } else {
        let server = ServerProc::start(&spawn)?;
        if !a.json {
            eprintln!(
                "qchat-bench: started the qchat server (pid {}) on {} with {}",
                server.pid(),
                server.addr,
                server.raised.join(" ")
            );
        }
        Under::One(server)
    };
    let result = runtime.block_on(scenario(&a, &mut under));
    let report = result.map_err(|e| e.context(format!("the run failed{}", under.excerpt())))?;
    under.stop();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print(&report);
    }
    Ok(if report.ok() {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    })
}

async fn scenario(a: &BenchArgs, under: &mut Under) -> Result<StormReport> {
    let target = match &*under {
        Under::One(s) => Target {
            addr: s.addr,
            fingerprint: s.fingerprint,
            relay: false,
            nodes: vec![s.addr],
        },
        Under::Cluster(c) => Target {
            addr: c.nodes[0].addr,
            fingerprint: c.nodes[0].fingerprint,
            relay: false,
            nodes: c.addrs(),
        },
    };
    let nodes = target.nodes.len();
    // Members that must resume: all of them, or the killed node's.
    let moved = if a.failover {
        (0..a.clients).filter(|i| i % nodes == 0).count() as u64
    } else {
        a.clients as u64
    };
    let silence = a.failover.then_some(a.failover_silence);
    let trust = Arc::new(trust_plan(&target));
    let endpoints = (0..a.endpoints().min(a.clients))
        .map(|_| qchat_client::client_endpoint(target.addr))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot open the client endpoints")?;
    let shared = Arc::new(Shared {
        total: 2 * a.messages,
        joined: AtomicU64::new(0),
        disconnected: AtomicU64::new(0),
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        fresh: AtomicU64::new(0),
        rejoined: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        server_missed: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        resume: Histogram::new(),
        last_resumed: Mutex::new(None),
    });
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (ctl, ctl_rx) = watch::channel(Ctl::Live);
    let n = a.clients as u64;

    let start = Instant::now();
    let mut members = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let dial = Dial {
            endpoint: endpoints[i % endpoints.len()].clone(),
            addrs: target.nodes.clone(),
            trust: Arc::clone(&trust),
            gate: Arc::clone(&gate),
        };
        members.push(tokio::spawn(member(
            i,
            dial,
            Arc::clone(&shared),
            ctl_rx.clone(),
            silence,
        )));
    }
    wait_until(a.timeout, "every member to join", || {
        shared.joined.load(Ordering::Relaxed) >= n
    })
    .await?;
    let connect = start.elapsed();

    // On the second node with --failover, which stays up.
    let sender_dial = Dial {
        endpoint: endpoints[0].clone(),
        addrs: vec![target.addr_of(usize::from(a.failover))],
        trust: Arc::clone(&trust),
        gate: Arc::clone(&gate),
    };
    let mut sender = sender_dial.join("sender", &shared, new_instance()).await?;
    send(&mut sender, 1, a.messages, a.size, a.timeout).await?;
    wait_until(a.timeout, "the first half to be delivered", || {
        shared.received.load(Ordering::Relaxed) >= n * a.messages
    })
    .await?;

    let mut server_down = None;
    let back = match (a.restart, &mut *under) {
        (_, Under::Cluster(c)) => {
            let killed = Instant::now();
            tokio::task::block_in_place(|| c.nodes[0].kill());
            let _ = ctl.send(Ctl::Back(killed));
            // At once, while the killed node's members are moving: what
            // they miss meanwhile is theirs to replay on another node.
            send(
                &mut sender,
                a.messages + 1,
                2 * a.messages,
                a.size,
                a.timeout,
            )
            .await?;
            killed
        }
        (Some(how), Under::One(server)) => {
            let stopped = Instant::now();
            tokio::task::block_in_place(|| server.restart(how))?;
            server_down = Some(stopped.elapsed());
            Instant::now()
        }
        (None, Under::One(_)) => {
            let _ = ctl.send(Ctl::Disconnect);
            wait_until(a.timeout, "every member to disconnect", || {
                shared.disconnected.load(Ordering::Relaxed) >= n
            })
            .await?;
            send(
                &mut sender,
                a.messages + 1,
                2 * a.messages,
                a.size,
                a.timeout,
            )
            .await?;
            Instant::now()
        }
    };
    let _ = ctl.send(Ctl::Back(back));
    let mut timed_out = wait_until(a.timeout, "every member to resume", || {
        shared.rejoined.load(Ordering::Relaxed) >= moved
    })
    .await
    .is_err();
    let all_resumed = shared
        .last_resumed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|t| t.saturating_duration_since(back));
    if a.restart.is_some() && !timed_out {
        sender.conn.close(CloseCode::Normal.code().into(), b"bench");
        let mut again = sender_dial.join("sender2", &shared, new_instance()).await?;
        send(
            &mut again,
            a.messages + 1,
            2 * a.messages,
            a.size,
            a.timeout,
        )
        .await?;
        sender = again;
    }
    if !timed_out {
        timed_out = wait_until(a.timeout, "every delivery", || {
            shared.received.load(Ordering::Relaxed) >= n * shared.total
        })
        .await
        .is_err();
    }
    let (peak, rss_after) = under.memory();
    let _ = ctl.send(Ctl::Done);
    sender
        .conn
        .close(CloseCode::Normal.code().into(), b"bench done");
    for m in members {
        match tokio::time::timeout(Duration::from_secs(2), m).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("a member failed: {e:#}"),
            _ => {}
        }
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }

    let replayed = shared.replayed.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    Ok(StormReport {
        mode: if a.failover {
            "failover"
        } else if a.restart.is_some() {
            "restart"
        } else {
            "replay"
        },
        restart: a.restart,
        clients: a.clients,
        nodes: a.failover.then_some(nodes),
        moved,
        messages: shared.total,
        server_args: a.server_arg.clone(),
        connect_s: connect.as_secs_f64(),
        server_down_s: server_down.map(|d| d.as_secs_f64()),
        resumed: shared.resumed.load(Ordering::Relaxed),
        fresh_joins: shared.fresh.load(Ordering::Relaxed),
        all_resumed_s: all_resumed.map(|d| d.as_secs_f64()),
        resume_ms: shared.resume.summary(),
        replayed,
        replayed_per_s: all_resumed
            .filter(|d| !d.is_zero() && replayed > 0)
            .map(|d| replayed as f64 / d.as_secs_f64()),
        server_missed: shared.server_missed.load(Ordering::Relaxed),
        rejoin_retries: shared.retries.load(Ordering::Relaxed),
        deliveries: Deliveries::new(
            n * shared.total,
            received,
            shared.duplicates.load(Ordering::Relaxed),
            shared.out_of_order.load(Ordering::Relaxed),
            shared.malformed.load(Ordering::Relaxed),
            timed_out,
        ),
        server_peak_rss_kib: peak,
        server_rss_after_kib: rss_after,
    })
}

/// Waits, bounded, until `done` holds.
async fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!(
                "timed out after {} s waiting for {what}",
                limit.as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Everything a member needs to (re)join.
struct Dial {
    endpoint: quinn::Endpoint,
    /// Where it may join: one server, or a cluster's nodes.
    addrs: Vec<SocketAddr>,
    trust: Arc<TrustPlan>,
    gate: Arc<Semaphore>,
}

impl Dial {
    /// Joins over version 3 as `name` with `instance`, fresh.
    async fn join(&self, name: &str, shared: &Shared, instance: [u8; 16]) -> Result<Joined> {
        Ok(self.join_at(name, shared, instance, None, 0).await?.0)
    }

    /// Joins over version 3, resuming from `resume` if given, at address
    /// `first` and, should that fail, the next ones in turn; retried,
    /// because after a restart the first tries may reach no one. Returns
    /// the connection and the index of the address that took it.
    async fn join_at(
        &self,
        name: &str,
        shared: &Shared,
        instance: [u8; 16],
        resume: Option<ResumePoint>,
        first: usize,
    ) -> Result<(Joined, usize)> {
        let _permit = self.gate.acquire().await;
        let greeting = Greeting::V3 { instance, resume };
        let mut attempt = 1;
        loop {
            let at = (first + attempt as usize - 1) % self.addrs.len();
            let tried = tokio::time::timeout(JOIN_ATTEMPT_TIMEOUT, async {
                let (conn, _, _) =
                    qchat_client::connect(&self.endpoint, self.addrs[at], &self.trust, |_| {
                        Decision::Refuse
                    })
                    .await?;
                anyhow::Ok(qchat_client::connection::join_as(conn, name, &greeting).await?)
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer")));
            match tried {
                Ok(j) => return Ok((j, at)),
                Err(e) if attempt < JOIN_ATTEMPTS => {
                    tracing::debug!(name, attempt, "join failed, retrying: {e:#}");
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    tokio::time::sleep(JOIN_RETRY_PAUSE).await;
                }
                Err(e) => return Err(e.context(format!("{name} could not join"))),
            }
        }
    }
}

/// Sends messages `from..=to` and waits for the server's `AckV3` of the
/// last one.
async fn send(j: &mut Joined, from: u64, to: u64, size: usize, limit: Duration) -> Result<()> {
    let mut buf = bytes::BytesMut::new();
    let mut text = String::with_capacity(size);
    for seq in from..=to {
        payload(&mut text, 0, seq, 0, size);
        encode_frame_into(
            &ClientMsg::Say {
                seq,
                text: text.clone(),
            },
            &mut buf,
        )
        .context("cannot encode a message")?;
    }
    j.send
        .write_all(&buf)
        .await
        .context("the sender's stream failed")?;
    let acked = async {
        loop {
            match j.decoder.read_frame(&mut j.recv).await {
                Ok(Some(frame)) => {
                    if let Ok(ServerMsg::AckV3 { seq, .. }) = ServerMsg::decode(&frame) {
                        if seq >= to {
                            return Ok(());
                        }
                    }
                }
                Ok(None) => bail!("the server ended the sender's stream"),
                Err(e) => bail!("the sender's stream failed: {e}"),
            }
        }
    };
    tokio::time::timeout(limit, acked)
        .await
        .context("the sender's messages were not all acknowledged in time")?
}

/// One member: joins, reads and checks every message, and after the
/// disruption resumes from the last id it saw, until told the run is over.
/// With `silence`, a connection that hears nothing for that long counts as
/// lost, and the member moves on to the next address.
async fn member(
    i: usize,
    dial: Dial,
    shared: Arc<Shared>,
    mut ctl: watch::Receiver<Ctl>,
    silence: Option<Duration>,
) -> Result<()> {
    let name = format!("m{i}");
    let instance = new_instance();
    let mut seen = vec![false; shared.total as usize + 1];
    let mut last_id = 0u64;
    let mut resume: Option<ResumePoint> = None;
    let mut back: Option<Instant> = None;
    let mut node = i;
    loop {
        let (mut j, at) = dial
            .join_at(&name, &shared, instance, resume.clone(), node)
            .await?;
        node = at;
        let log_id = j
            .welcome
            .v3
            .as_ref()
            .map(|w| w.log_id)
            .context("the server did not answer with a version-3 welcome")?;
        if back.is_none() {
            shared.joined.fetch_add(1, Ordering::Relaxed);
        }
        // Created once per connection so that a read is never cancelled
        // half-way through a frame.
        let mut told = Box::pin(async {
            let _ = ctl
                .wait_for(|c| matches!(c, Ctl::Disconnect | Ctl::Done))
                .await;
        });
        let mut done = false;
        let mut heard = (j.conn.stats().udp_rx.datagrams, Instant::now());
        let mut check = tokio::time::interval(LIVENESS_CHECK);
        loop {
            tokio::select! {
                biased;
                () = &mut told => {
                    j.conn.close(CloseCode::Normal.code().into(), b"bench");
                    done = true;
                    break;
                }
                _ = check.tick(), if silence.is_some() => {
                    // Datagrams received, as the client counts them: every
                    // keep-alive a live node acknowledges is one.
                    let rx = j.conn.stats().udp_rx.datagrams;
                    if rx != heard.0 {
                        heard = (rx, Instant::now());
                    } else if silence.is_some_and(|s| heard.1.elapsed() >= s) {
                        j.conn.close(CloseCode::Normal.code().into(), b"no answer");
                        break;
                    }
                }
                frame = j.decoder.read_frame(&mut j.recv) => {
                    let Ok(Some(frame)) = frame else { break };
                    match ServerMsg::decode(&frame) {
                        Ok(ServerMsg::HistoryV3 { id, text, .. } | ServerMsg::ChatV3 { id, text, .. }) => {
                            if id <= last_id {
                                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            last_id = last_id.max(id);
                            match parse_payload(&text).filter(|&(_, seq, _)| (1..=shared.total).contains(&seq)) {
                                Some((_, seq, _)) if seen[seq as usize] => {
                                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                                }
                                Some((_, seq, _)) => {
                                    seen[seq as usize] = true;
                                    shared.received.fetch_add(1, Ordering::Relaxed);
                                }
                                None => {
                                    shared.malformed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok(ServerMsg::Replayed { resumed, count, missed }) => {
                            if let Some(t) = back {
                                let now = Instant::now();
                                shared.resume.record(now.saturating_duration_since(t).as_nanos() as u64);
                                let counter = if resumed { &shared.resumed } else { &shared.fresh };
                                counter.fetch_add(1, Ordering::Relaxed);
                                shared.replayed.fetch_add(count, Ordering::Relaxed);
                                shared.server_missed.fetch_add(missed, Ordering::Relaxed);
                                let mut last = shared.last_resumed.lock().unwrap_or_else(|p| p.into_inner());
                                *last = Some(last.map_or(now, |l| l.max(now)));
                                drop(last);
                                shared.rejoined.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            shared.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        drop(told);
        if *ctl.borrow() == Ctl::Done {
            return Ok(());
        }
        if done {
            shared.disconnected.fetch_add(1, Ordering::Relaxed);
        }
        resume = Some(ResumePoint {
            log_id,
            after: last_id,
        });
        // The node that went silent is the last to try again.
        node += 1;
        let t = {
            let c = ctl
                .wait_for(|c| matches!(c, Ctl::Back(_) | Ctl::Done))
                .await
                .context("the coordinator is gone")?;
            match *c {
                Ctl::Back(t) => t,
                _ => return Ok(()),
            }
        };
        back = Some(t);
    }
}

fn print(r: &StormReport) {
    let opt = |v: Option<f64>, unit: &str| {
        v.map_or_else(|| "unknown".into(), |v| format!("{v:.3} {unit}"))
    };
    println!(
        "== {}{}",
        r.mode,
        r.restart
            .map(|s| format!(
                " ({})",
                if s == Stop::Term {
                    "SIGTERM"
                } else {
                    "SIGKILL"
                }
            ))
            .unwrap_or_default()
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "load",
            format!(
                "{} members{}, 1 sender × {} messages",
                r.clients,
                r.nodes
                    .map(|n| format!(" over {n} nodes ({} on the node killed)", r.moved))
                    .unwrap_or_default(),
                r.messages
            ),
        ),
        ("connect", format!("{:.3} s for all members", r.connect_s)),
        (
            if r.nodes.is_some() {
                "killed"
            } else {
                "server down"
            },
            match r.nodes {
                Some(_) => "the first node, SIGKILL; the clock starts there".into(),
                None => opt(r.server_down_s, "s"),
            },
        ),
        (
            "resumed",
            format!(
                "{} of {} ({} fresh joins, {} join attempts retried){}",
                r.resumed,
                r.moved,
                r.fresh_joins,
                r.rejoin_retries,
                if r.deliveries.timed_out {
                    ", TIMED OUT"
                } else {
                    ""
                }
            ),
        ),
        (
            "time to resume",
            match &r.resume_ms {
                Some(l) => format!(
                    "all {}; per member p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    opt(r.all_resumed_s, "s"),
                    l.p50,
                    l.p99,
                    l.max
                ),
                None => "nobody resumed".into(),
            },
        ),
        (
            "replayed",
            format!(
                "{} messages ({}; {} missed by the server)",
                r.replayed,
                opt(r.replayed_per_s, "msg/s"),
                r.server_missed
            ),
        ),
        (
            "deliveries",
            format!(
                "{} of {} ({} missing, {} duplicated, {} out of order{})",
                r.deliveries.deliveries_received,
                r.deliveries.deliveries_expected,
                r.deliveries.missing,
                r.deliveries.duplicates,
                r.deliveries.out_of_order,
                if r.deliveries.malformed > 0 {
                    format!(", {} malformed", r.deliveries.malformed)
                } else {
                    String::new()
                }
            ),
        ),
        (
            "server memory",
            format!(
                "peak {} KiB, {} KiB at the end",
                r.server_peak_rss_kib
                    .map_or("unknown".into(), |k| k.to_string()),
                r.server_rss_after_kib
                    .map_or("unknown".into(), |k| k.to_string())
            ),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<14} {v}");
    }
}
