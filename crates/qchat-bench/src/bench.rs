//! One bench run, or qchat and the baseline alternately, and the report:
//! a table for people, one JSON object per run for scripts.

use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::cluster::Nodes;
use crate::evict::Evicted;
use crate::load::{self, Outcome, Plan, Target};
use crate::proc::{Kind, ServerProc, Spawn, Watched};
use crate::stats::{median, Deliveries, Latency};

/// Connections the started server admits beyond the members: headroom for
/// a straggler from a previous run still closing.
const CONNECTION_HEADROOM: usize = 10;

/// Everything the bench was asked to do, checked.
struct Config {
    plan: Plan,
    mode: Mode,
    rounds: usize,
    queue: usize,
    server_threads: Option<u16>,
    retry_threshold: Option<u32>,
    bench_threads: u16,
    json: bool,
    /// The `qchat` executable started as the server under test.
    qchat: PathBuf,
    /// `--server-arg`s.
    server_args: Vec<String>,
    /// The NATS server program for clustered runs.
    nats_server: PathBuf,
}

enum Mode {
    /// Start one server of this kind and measure it.
    One(Kind),
    /// qchat and the baseline, alternately.
    Compare,
    /// A server someone else started.
    External(Target),
    /// Clusters of these many nodes, each round beside the single server.
    Cluster(Vec<usize>),
}

impl Config {
    fn from_args(a: BenchArgs) -> Result<Config> {
        let senders = a.senders.unwrap_or(a.clients);
        if senders + a.stalled > a.clients {
            bail!(
                "--senders {senders} plus --stalled {} is more than --clients {}: stalled members never send",
                a.stalled,
                a.clients
            );
        }
        let (rooms, per_member) = (a.rooms.unwrap_or(0), a.rooms_per_member);
        if rooms > 0 {
            if per_member > rooms {
                bail!("--rooms-per-member {per_member} is more than --rooms {rooms}");
            }
            if (a.clients * per_member) % rooms != 0 || a.stalled > 0 {
                bail!(
                    "--clients × --rooms-per-member ({}) must be a multiple of --rooms {rooms}, \
                     without --stalled, so that every room has as many members",
                    a.clients * per_member
                );
            }
        }
        let mode = match (&a.target, a.compare, a.baseline) {
            _ if !a.cluster_nodes.is_empty() => Mode::Cluster(a.cluster_nodes.clone()),
            (Some(t), _, _) => {
                let addr = t
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve --target {t}"))?
                    .next()
                    .with_context(|| format!("--target {t} has no address"))?;
                let fingerprint = a
                    .fingerprint
                    .context("--target needs the server's --fingerprint")?;
                Mode::External(Target {
                    addr,
                    fingerprint,
                    relay: false,
                    nodes: Vec::new(),
                })
            }
            (None, true, _) => Mode::Compare,
            (None, false, true) => Mode::One(Kind::Baseline),
            (None, false, false) => Mode::One(Kind::Qchat),
        };
        Ok(Config {
            plan: Plan {
                clients: a.clients,
                senders,
                messages: a.messages,
                size: a.size,
                rate: a.rate,
                window: (!a.flood).then_some(a.window),
                signed: a.signed,
                stalled: a.stalled,
                rooms,
                rooms_per_member: per_member,
                endpoints: a.endpoints(),
                timeout: a.timeout,
                settle: a.settle,
                progress: std::io::stderr().is_terminal(),
            },
            mode,
            rounds: a.rounds,
            queue: a.queue,
            server_threads: a.server_threads,
            retry_threshold: a.retry_threshold,
            bench_threads: a.bench_threads,
            json: a.json,
            qchat: match a.qchat {
                Some(path) => path,
                None => qchat_beside_me()?,
            },
            nats_server: a.nats_server.clone(),
            server_args: {
                let mut args = a.server_arg;
                if rooms > 0 {
                    // The server's room limits, lifted to the plan's (the
                    // user's --server-arg come after and win).
                    let raised = [
                        "--max-rooms".to_string(),
                        (rooms + 1).max(qchat_proto::limits::MAX_ROOMS).to_string(),
                        "--max-rooms-per-member".into(),
                        per_member.to_string(),
                        "--max-room-members".into(),
                        a.clients.to_string(),
                    ];
                    args.splice(0..0, raised);
                }
                args
            },
        })
    }
}

/// The `qchat` of the same build: cargo puts every binary of the workspace
/// in the same target folder, so the bench measures the server it was
/// built with unless `--qchat` says otherwise.
pub fn qchat_beside_me() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the qchat-bench executable")?;
    let qchat = me.with_file_name(format!("qchat{}", std::env::consts::EXE_SUFFIX));
    if !qchat.is_file() {
        bail!(
            "there is no qchat next to {}; build it (`cargo build --release`) or name it with --qchat PATH",
            me.display()
        );
    }
    Ok(qchat)
}

/// One run's results: the JSON object printed with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    /// `qchat`, `baseline`, `external`, or `cluster-N` for N clustered
    /// nodes.
    target: &'static str,
    /// Clustered nodes the members were spread over.
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    /// nats-server's CPU time over the measured phase (clustered runs; it
    /// is included in `server_cpu_s`, the nodes' and NATS's together).
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_cpu_s: Option<f64>,
    /// `nats_cpu_s` per delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_cpu_us_per_delivery: Option<f64>,
    /// The run's number within `--compare`.
    #[serde(skip_serializing_if = "Option::is_none")]
    round: Option<usize>,
    clients: usize,
    senders: usize,
    messages: u64,
    size: usize,
    rate: Option<f64>,
    /// Messages per sender on their way at most; `null` with `--flood`.
    window: Option<u64>,
    stalled: usize,
    /// Rooms besides #lobby the members were spread over (0: none).
    rooms: usize,
    /// Rooms each member joined.
    rooms_per_member: usize,
    /// Whether the run succeeded: everything delivered once and in order,
    /// in time, and nobody disconnected by the server.
    ok: bool,
    #[serde(flatten)]
    deliveries: Deliveries,
    /// Members (not `--stalled` ones) the server disconnected: each fails
    /// the run and stops it.
    evicted: Evicted,
    duration_s: f64,
    deliveries_per_s: f64,
    connect_s: f64,
    connect_retries: u64,
    latency_ms: Option<Latency>,
    server_cpu_s: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    server_cpu_connect_s: Option<f64>,
    /// The bench's own CPU time over the measured phase.
    bench_cpu_s: Option<f64>,
    server_peak_rss_kib: Option<u64>,
    server_rss_start_kib: Option<u64>,
    server_rss_connected_kib: Option<u64>,
    server_kib_per_member: Option<f64>,
    stalled_disconnected: usize,
    server_threads: Option<u16>,
    bench_threads: u16,
    /// The flags that lifted the started server's limits.
    limits_raised: Vec<String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.ok
    }

    /// Why the run failed, in one line; `None` when it did not.
    fn failure(&self) -> Option<String> {
        let d = &self.deliveries;
        let got = format!(
            "{} of {} deliveries arrived",
            d.deliveries_received, d.deliveries_expected
        );
        if self.evicted.count > 0 {
            Some(format!(
                "{}; the run stopped after {:.3} s ({got})",
                self.evicted.describe(),
                self.duration_s
            ))
        } else if d.timed_out {
            Some(format!("timed out after {:.3} s: {got}", self.duration_s))
        } else if !d.intact() {
            Some(format!(
                "{got}, {} missing, {} duplicated, {} out of order, {} malformed",
                d.missing, d.duplicates, d.out_of_order, d.malformed
            ))
        } else {
            None
        }
    }

    /// `qchat` or `qchat, round 2`.
    fn name(&self) -> String {
        match self.round {
            Some(n) => format!("{}, round {n}", self.target),
            None => self.target.to_string(),
        }
    }
}

/// Runs the bench. Exits with failure when any run failed (a delivery
/// missing, duplicated or out of order, a timeout, a member disconnected
/// by the server), so scripts can rely on the status.
pub fn run(args: BenchArgs) -> Result<u8> {
    if args.restart.is_some() || args.replay || args.failover {
        return crate::storm::run(args);
    }
    let config = Config::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.bench_threads.into())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reports = match &config.mode {
        Mode::One(kind) => vec![run_one(&runtime, &config, Some(*kind), None)?],
        Mode::External(_) => vec![run_one(&runtime, &config, None, None)?],
        Mode::Cluster(counts) => {
            let mut all = Vec::new();
            // Alternating, as with --compare, so that the machine's drift
            // spreads over every configuration.
            for round in 1..=config.rounds {
                all.push(run_one(&runtime, &config, Some(Kind::Qchat), Some(round))?);
                for &n in counts {
                    all.push(run_cluster(&runtime, &config, n, Some(round))?);
                }
            }
            all
        }
        Mode::Compare => {
            let mut all = Vec::new();
            // Alternating spreads slow drifts of the machine (other load,
            // thermal limits) over both sides instead of onto one.
            for round in 1..=config.rounds {
                for kind in [Kind::Qchat, Kind::Baseline] {
                    all.push(run_one(&runtime, &config, Some(kind), Some(round))?);
                }
            }
            all
        }
    };
    if let Mode::Cluster(counts) = &config.mode {
        let summary = cluster_summary(counts, &reports);
        if config.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            print_cluster_summary(&summary, config.rounds);
        }
    }
    if matches!(config.mode, Mode::Compare) {
        let summary = compare(&reports);
        if config.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            print_comparison(&summary, &reports);
        }
    }
    Ok(if reports.iter().all(Report::ok) {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    })
}

/// Starts the server (unless external), runs the load once, prints and
/// returns the report.
fn run_one(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    kind: Option<Kind>,
    round: Option<usize>,
) -> Result<Report> {
    let plan = &config.plan;
    let server = match kind {
        Some(kind) => Some(ServerProc::start(&Spawn {
            kind,
            connections: plan.clients + CONNECTION_HEADROOM,
            queue: config.queue,
            threads: config.server_threads,
            retry_threshold: config.retry_threshold,
            qchat: config.qchat.clone(),
            extra: config.server_args.clone(),
        })?),
        None => None,
    };
    let target = match (&server, &config.mode) {
        (Some(s), _) => Target {
            addr: s.addr,
            fingerprint: s.fingerprint,
            relay: kind == Some(Kind::Baseline),
            nodes: Vec::new(),
        },
        (None, Mode::External(t)) => t.clone(),
        (None, _) => bail!("no server to measure"),
    };
    let label = kind.map_or("external", Kind::label);
    if let Some(s) = &server {
        if !config.json {
            eprintln!(
                "qchat-bench: started the {label} server (pid {}) on {}{}",
                s.pid(),
                s.addr,
                if s.raised.is_empty() {
                    String::new()
                } else {
                    format!(
                        " with limits raised so that they do not throttle the measurement: {}",
                        s.raised.join(" ")
                    )
                }
            );
        }
    }
    let outcome = runtime
        .block_on(load::run(
            &target,
            plan,
            server.as_ref().map(|s| s as &dyn Watched),
            label,
        ))
        .map_err(|e| match &server {
            Some(s) => e.context(format!("the {label} run failed{}", s.stderr_excerpt())),
            None => e,
        })?;
    let peak = server.as_ref().and_then(ServerProc::peak_rss_kib);
    let raised = server
        .as_ref()
        .map(|s| s.raised.clone())
        .unwrap_or_default();
    if let Some(s) = server {
        s.stop();
    }
    let report = report(config, label, round, &outcome, peak, raised);
    emit(config, &report)?;
    Ok(report)
}

/// Prints one run's report and, when it failed, why.
fn emit(config: &Config, report: &Report) -> Result<()> {
    if config.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(report);
    }
    if let Some(why) = report.failure() {
        eprintln!("qchat-bench: FAILED ({}): {why}", report.name());
    }
    Ok(())
}

/// Starts nats-server and `n` clustered nodes, spreads the members over
/// them, runs the load once, prints and returns the report.
fn run_cluster(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    n: usize,
    round: Option<usize>,
) -> Result<Report> {
    let plan = &config.plan;
    let spawn = Spawn {
        kind: Kind::Qchat,
        connections: plan.clients + CONNECTION_HEADROOM,
        queue: config.queue,
        threads: config.server_threads,
        retry_threshold: config.retry_threshold,
        qchat: config.qchat.clone(),
        extra: config.server_args.clone(),
    };
    let nodes = Nodes::start(n, &spawn, &config.nats_server)?;
    let label: &'static str = Box::leak(format!("cluster-{n}").into_boxed_str());
    if !config.json {
        eprintln!(
            "qchat-bench: started nats-server on {} and {n} clustered node(s) on {}",
            nodes.nats.url(),
            nodes
                .addrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let first = &nodes.nodes[0];
    let target = Target {
        addr: first.addr,
        fingerprint: first.fingerprint,
        relay: false,
        nodes: nodes.addrs(),
    };
    let raised = first.raised.clone();
    let outcome = runtime
        .block_on(load::run(
            &target,
            plan,
            Some(&nodes as &dyn Watched),
            label,
        ))
        .map_err(|e| e.context(format!("the {label} run failed{}", nodes.excerpt())))?;
    let peak = nodes.peak_rss_kib();
    let nats_cpu = nodes.nats_cpu_last_span().map(|c| c.as_secs_f64());
    nodes.stop();
    let mut report = report(config, label, round, &outcome, peak, raised);
    report.nodes = Some(n);
    report.nats_cpu_s = nats_cpu;
    report.nats_cpu_us_per_delivery = nats_cpu
        .filter(|_| outcome.received > 0)
        .map(|c| c * 1e6 / outcome.received as f64);
    emit(config, &report)?;
    Ok(report)
}

/// One configuration's medians in a clustered comparison.
#[derive(Debug, Serialize)]
struct ClusterRow {
    /// `qchat` (the single server, embedded store) or `cluster-N`.
    target: String,
    /// Runs that succeeded, of the rounds.
    ok_runs: usize,
    #[serde(flatten)]
    figures: Figures,
    /// nats-server's CPU µs per delivery (clustered rows).
    nats_cpu_us_per_delivery: Option<f64>,
}

/// `--cluster-nodes`' summary (`--json`: this object, after the runs').
#[derive(Debug, Serialize)]
struct ClusterSummary {
    cluster: bool,
    rows: Vec<ClusterRow>,
    failed: Vec<String>,
}

fn cluster_summary(counts: &[usize], reports: &[Report]) -> ClusterSummary {
    let mut targets = vec!["qchat".to_string()];
    targets.extend(counts.iter().map(|n| format!("cluster-{n}")));
    let rows = targets
        .into_iter()
        .map(|t| {
            let rs: Vec<&Report> = reports.iter().filter(|r| r.target == t && r.ok()).collect();
            let m = |f: &dyn Fn(&Report) -> Option<f64>| {
                median(rs.iter().filter_map(|r| f(r)).collect())
            };
            ClusterRow {
                ok_runs: rs.len(),
                figures: Figures {
                    deliveries_per_s: m(&|r| Some(r.deliveries_per_s)),
                    latency_p50_ms: m(&|r| r.latency_ms.map(|l| l.p50)),
                    latency_p99_ms: m(&|r| r.latency_ms.map(|l| l.p99)),
                    server_cpu_us_per_delivery: m(&|r| r.server_cpu_us_per_delivery),
                    connect_s: m(&|r| Some(r.connect_s)),
                    server_peak_rss_kib: m(&|r| r.server_peak_rss_kib.map(|k| k as f64)),
                },
                nats_cpu_us_per_delivery: m(&|r| r.nats_cpu_us_per_delivery),
                target: t,
            }
        })
        .collect();
    ClusterSummary {
        cluster: true,
        rows,
        failed: reports
            .iter()
            .filter_map(|r| Some(format!("{}: {}", r.name(), r.failure()?)))
            .collect(),
    }
}

fn print_cluster_summary(s: &ClusterSummary, rounds: usize) {
    println!("== clustered: medians of the runs that succeeded, of {rounds} each");
    for f in &s.failed {
        println!("  FAILED {f}");
    }
    println!(
        "  {:<10} {:>4} {:>13} {:>9} {:>9} {:>12} {:>12} {:>10}",
        "", "ok", "deliveries/s", "p50 ms", "p99 ms", "CPU µs/del", "NATS µs/del", "connect s"
    );
    let f = |v: Option<f64>, prec: usize| v.map_or_else(|| "—".into(), |v| format!("{v:.prec$}"));
    for r in &s.rows {
        println!(
            "  {:<10} {:>4} {:>13} {:>9} {:>9} {:>12} {:>12} {:>10}",
            r.target,
            r.ok_runs,
            f(r.figures.deliveries_per_s, 0),
            f(r.figures.latency_p50_ms, 3),
            f(r.figures.latency_p99_ms, 3),
            f(r.figures.server_cpu_us_per_delivery, 2),
            f(r.nats_cpu_us_per_delivery, 2),
            f(r.figures.connect_s, 3),
        );
    }
}

fn report(
    config: &Config,
    label: &'static str,
    round: Option<usize>,
    o: &Outcome,
    peak: Option<u64>,
    limits_raised: Vec<String>,
) -> Report {
    let plan = &config.plan;
    let secs = o.duration.as_secs_f64();
    let cpu = o.server_cpu.map(|c| c.as_secs_f64());
    let deliveries = Deliveries::new(
        o.expected,
        o.received,
        o.duplicates,
        o.out_of_order,
        o.malformed,
        o.timed_out,
    );
    Report {
        target: label,
        nodes: None,
        nats_cpu_s: None,
        nats_cpu_us_per_delivery: None,
        round,
        clients: plan.clients,
        senders: plan.senders,
        messages: plan.messages,
        size: plan.size,
        rate: plan.rate,
        window: plan.window,
        stalled: plan.stalled,
        rooms: plan.rooms,
        rooms_per_member: plan.rooms_per_member,
        ok: succeeded(&deliveries, &o.evicted),
        deliveries,
        evicted: o.evicted.clone(),
        duration_s: secs,
        deliveries_per_s: if secs > 0.0 {
            o.received as f64 / secs
        } else {
            0.0
        },
        connect_s: o.connect.as_secs_f64(),
        connect_retries: o.connect_retries,
        latency_ms: o.latency,
        server_cpu_s: cpu,
        server_cpu_us_per_delivery: cpu
            .filter(|_| o.received > 0)
            .map(|c| c * 1e6 / o.received as f64),
        server_cpu_connect_s: o.server_cpu_connect.map(|c| c.as_secs_f64()),
        bench_cpu_s: o.bench_cpu.map(|c| c.as_secs_f64()),
        server_peak_rss_kib: peak,
        server_rss_start_kib: o.server_rss_start_kib,
        server_rss_connected_kib: o.server_rss_connected_kib,
        server_kib_per_member: match (o.server_rss_start_kib, o.server_rss_connected_kib) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / plan.clients as f64),
            _ => None,
        },
        stalled_disconnected: o.stalled_disconnected,
        server_threads: config.server_threads,
        bench_threads: config.bench_threads,
        limits_raised,
    }
}

/// Whether a run succeeded. A timeout fails it even when the count
/// happened to be complete at the deadline, as it fails a storm run; an
/// eviction fails it because the run stopped there.
fn succeeded(d: &Deliveries, evicted: &Evicted) -> bool {
    d.intact() && !d.timed_out && evicted.count == 0
}

/// A report line's optional part: the text for `n`, or nothing when `n` is 0.
fn counted(n: u64, text: impl FnOnce(u64) -> String) -> String {
    if n > 0 {
        text(n)
    } else {
        String::new()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "unknown".into(), |v| format!("{v} {unit}"))
}

fn print_table(r: &Report) {
    let d = &r.deliveries;
    let round = r.round.map(|n| format!(", round {n}")).unwrap_or_default();
    println!("== {}{round}", r.target);
    let load = match (r.rate, r.window) {
        (Some(rate), Some(w)) => format!("{rate} msg/s per sender, at most {w} on their way"),
        (Some(rate), None) => format!("{rate} msg/s per sender, no window"),
        (None, Some(w)) => format!("window of {w} per sender"),
        (None, None) => "flood (no window)".into(),
    };
    let mut rows: Vec<(&str, String)> = vec![
        (
            "load",
            format!(
                "{} members, {} senders × {} messages of {} B, {load}{}{}",
                r.clients,
                r.senders,
                r.messages,
                r.size,
                counted(r.stalled as u64, |n| format!(", {n} stalled")),
                counted(r.rooms as u64, |n| format!(
                    ", in {n} rooms ({} each, sending in the first)",
                    r.rooms_per_member
                )),
            ),
        ),
        (
            "connect",
            format!(
                "{:.3} s for all members{}",
                r.connect_s,
                counted(r.connect_retries, |n| format!(
                    " ({n} join attempts failed and were retried; -v shows why)"
                )),
            ),
        ),
        (
            "deliveries",
            format!(
                "{} of {} ({} missing, {} duplicated, {} out of order{}){}",
                d.deliveries_received,
                d.deliveries_expected,
                d.missing,
                d.duplicates,
                d.out_of_order,
                counted(d.malformed, |n| format!(", {n} malformed")),
                if d.timed_out { ", TIMED OUT" } else { "" }
            ),
        ),
        (
            "throughput",
            format!(
                "{:.0} deliveries/s over {:.3} s",
                r.deliveries_per_s, r.duration_s
            ),
        ),
        (
            "latency",
            match &r.latency_ms {
                Some(l) => format!(
                    "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                    l.p50, l.p90, l.p99, l.max
                ),
                None => "no deliveries".into(),
            },
        ),
        (
            "server CPU",
            match (r.server_cpu_s, r.server_cpu_us_per_delivery) {
                (Some(c), Some(per)) => format!("{c:.2} s ({per:.2} µs per delivery)"),
                (Some(c), None) => format!("{c:.2} s"),
                _ => "unknown".into(),
            },
        ),
        (
            "bench CPU",
            opt(r.bench_cpu_s.map(|c| format!("{c:.2}")), "s"),
        ),
        (
            "server memory",
            format!(
                "peak {}; {} before connecting, {} connected{}",
                opt(r.server_peak_rss_kib, "KiB"),
                opt(r.server_rss_start_kib, "KiB"),
                opt(r.server_rss_connected_kib, "KiB"),
                r.server_kib_per_member
                    .map(|k| format!(" ({k:.1} KiB per member)"))
                    .unwrap_or_default()
            ),
        ),
    ];
    if let (Some(c), Some(per)) = (r.nats_cpu_s, r.nats_cpu_us_per_delivery) {
        // Beside the server CPU row, which counts it too.
        rows.insert(
            6,
            (
                "NATS CPU",
                format!("{c:.2} s ({per:.2} µs per delivery), within the server CPU above"),
            ),
        );
    }
    for (k, v) in rows {
        println!("  {k:<14} {v}");
    }
    if r.evicted.count > 0 {
        println!("  {:<14} {}", "EVICTED", r.evicted.describe());
    }
    if r.stalled > 0 {
        println!(
            "  {:<14} {} of {} disconnected by the server",
            "stalled", r.stalled_disconnected, r.stalled
        );
    }
}

/// Medians of each side of a `--compare` and their ratios.
#[derive(Debug, Serialize)]
struct Comparison {
    compare: bool,
    rounds: usize,
    /// The runs that failed, each with why; the medians leave them out,
    /// since a run cut short by an eviction measured nothing.
    failed: Vec<String>,
    qchat: Figures,
    baseline: Figures,
    /// qchat ÷ baseline for each median.
    ratio: Figures,
}

/// The figures a comparison reports: one side's medians, or their ratio.
#[derive(Debug, Default, Serialize)]
struct Figures {
    deliveries_per_s: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    connect_s: Option<f64>,
    server_peak_rss_kib: Option<f64>,
}

impl Figures {
    /// `self ÷ other`, figure by figure; unknown where either side is
    /// unknown or the divisor is not positive.
    fn ratio_to(&self, other: &Figures) -> Figures {
        let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        Figures {
            deliveries_per_s: r(self.deliveries_per_s, other.deliveries_per_s),
            latency_p50_ms: r(self.latency_p50_ms, other.latency_p50_ms),
            latency_p99_ms: r(self.latency_p99_ms, other.latency_p99_ms),
            server_cpu_us_per_delivery: r(
                self.server_cpu_us_per_delivery,
                other.server_cpu_us_per_delivery,
            ),
            connect_s: r(self.connect_s, other.connect_s),
            server_peak_rss_kib: r(self.server_peak_rss_kib, other.server_peak_rss_kib),
        }
    }
}

fn compare(reports: &[Report]) -> Comparison {
    let side = |t: &str| {
        let rs: Vec<&Report> = reports.iter().filter(|r| r.target == t && r.ok()).collect();
        let m =
            |f: &dyn Fn(&Report) -> Option<f64>| median(rs.iter().filter_map(|r| f(r)).collect());
        Figures {
            deliveries_per_s: m(&|r| Some(r.deliveries_per_s)),
            latency_p50_ms: m(&|r| r.latency_ms.map(|l| l.p50)),
            latency_p99_ms: m(&|r| r.latency_ms.map(|l| l.p99)),
            server_cpu_us_per_delivery: m(&|r| r.server_cpu_us_per_delivery),
            connect_s: m(&|r| Some(r.connect_s)),
            server_peak_rss_kib: m(&|r| r.server_peak_rss_kib.map(|k| k as f64)),
        }
    };
    let (q, b) = (side("qchat"), side("baseline"));
    Comparison {
        compare: true,
        rounds: reports.len() / 2,
        failed: reports
            .iter()
            .filter_map(|r| Some(format!("{}: {}", r.name(), r.failure()?)))
            .collect(),
        ratio: q.ratio_to(&b),
        qchat: q,
        baseline: b,
    }
}

fn print_comparison(c: &Comparison, reports: &[Report]) {
    let good = |t: &str| reports.iter().filter(|r| r.target == t && r.ok()).count();
    println!(
        "== comparison: medians of {} qchat and {} baseline runs that succeeded, of {} each",
        good("qchat"),
        good("baseline"),
        c.rounds
    );
    for f in &c.failed {
        println!("  FAILED {f}");
    }
    println!(
        "  {:<24} {:>14} {:>14} {:>8}",
        "", "qchat", "baseline", "ratio"
    );
    let f = |v: Option<f64>, prec: usize| v.map_or_else(|| "—".into(), |v| format!("{v:.prec$}"));
    let rows = [
        (
            "deliveries/s",
            c.qchat.deliveries_per_s,
            c.baseline.deliveries_per_s,
            c.ratio.deliveries_per_s,
            0,
        ),
        (
            "latency p50 (ms)",
            c.qchat.latency_p50_ms,
            c.baseline.latency_p50_ms,
            c.ratio.latency_p50_ms,
            3,
        ),
        (
            "latency p99 (ms)",
            c.qchat.latency_p99_ms,
            c.baseline.latency_p99_ms,
            c.ratio.latency_p99_ms,
            3,
        ),
        (
            "CPU µs/delivery",
            c.qchat.server_cpu_us_per_delivery,
            c.baseline.server_cpu_us_per_delivery,
            c.ratio.server_cpu_us_per_delivery,
            3,
        ),
        (
            "connect (s)",
            c.qchat.connect_s,
            c.baseline.connect_s,
            c.ratio.connect_s,
            3,
        ),
        (
            "peak RSS (KiB)",
            c.qchat.server_peak_rss_kib,
            c.baseline.server_peak_rss_kib,
            c.ratio.server_peak_rss_kib,
            0,
        ),
    ];
    for (name, q, b, r, prec) in rows {
        println!(
            "  {name:<24} {:>14} {:>14} {:>8}",
            f(q, prec),
            f(b, prec),
            r.map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(timed_out: bool) -> Deliveries {
        Deliveries::new(10, 10, 0, 0, 0, timed_out)
    }

    #[test]
    fn a_complete_run_in_time_without_evictions_succeeds() {
        assert!(succeeded(&complete(false), &Evicted::default()));
    }

    #[test]
    fn a_timeout_fails_the_run_even_with_every_delivery_counted() {
        assert!(!succeeded(&complete(true), &Evicted::default()));
    }

    #[test]
    fn an_eviction_fails_the_run() {
        let evicted = Evicted {
            count: 1,
            ..Evicted::default()
        };
        assert!(!succeeded(&complete(false), &evicted));
        let lost = Deliveries::new(10, 9, 0, 0, 0, false);
        assert!(!succeeded(&lost, &Evicted::default()));
    }
}
