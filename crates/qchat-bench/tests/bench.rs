//! `qchat-bench`: a small run against qchat and against the baseline relay
//! must deliver everything exactly once and in order, and print well-formed
//! JSON. No timing is asserted: the numbers depend on the machine, and
//! docs/PERFORMANCE.md is where they belong.
//!
//! The bench starts the `qchat` beside its own executable, as it does for a
//! user: `cargo nextest run --workspace` builds both into the same target
//! folder (the root package's end-to-end tests need `qchat`).

use std::process::Command;

/// `qchat-bench` with a scrubbed environment and its own temporary home, so
/// nothing of the user's state is read.
fn command(home: &tempfile::TempDir) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qchat-bench"));
    c.env_clear()
        .env("QCHAT_HOME", home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "0");
    c
}

/// Runs a small bench with `extra` flags and returns its one JSON report.
fn bench(extra: &[&str]) -> serde_json::Value {
    run_json(
        &[
            "--clients",
            "4",
            "--senders",
            "2",
            "--messages",
            "20",
            "--timeout",
            "20",
            "--settle",
            "0.1",
        ],
        extra,
    )
}

/// Runs `qchat-bench --json` with `base` then `extra` flags, checks that it
/// succeeded and printed exactly one line, and returns that line as JSON.
/// The panics carry the whole transcript, which is what a failure needs.
fn run_json(base: &[&str], extra: &[&str]) -> serde_json::Value {
    let home = tempfile::tempdir().expect("temporary home");
    let out = command(&home)
        .args(base)
        .arg("--json")
        .args(extra)
        .output()
        .expect("run qchat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let transcript = format!(
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{transcript}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object per run\n{transcript}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}\n{transcript}"))
}

fn assert_complete(r: &serde_json::Value, target: &str) {
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a count in {r}"))
    };
    assert_eq!(r["target"], target, "{r}");
    assert_eq!(n("clients"), 4, "{r}");
    assert_eq!(n("senders"), 2, "{r}");
    // Every message reaches every member but its sender.
    assert_eq!(n("deliveries_expected"), 2 * 20 * 3, "{r}");
    assert_eq!(n("deliveries_received"), n("deliveries_expected"), "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    assert_eq!(n("out_of_order"), 0, "{r}");
    for k in [
        "duration_s",
        "deliveries_per_s",
        "connect_s",
        "server_cpu_s",
        "bench_cpu_s",
    ] {
        assert!(r[k].is_number(), "{k} missing in {r}");
    }
    for k in ["p50", "p90", "p99", "max"] {
        assert!(
            r["latency_ms"][k].is_number(),
            "latency_ms.{k} missing in {r}"
        );
    }
    // Known here because the bench started the server itself.
    assert!(r["server_peak_rss_kib"].is_u64(), "{r}");
}

#[test]
fn bench_delivers_everything_once_and_in_order() {
    let r = bench(&[]);
    assert_complete(&r, "qchat");
    // Windowed by default.
    assert_eq!(r["window"], 32, "{r}");
}

#[test]
fn bench_windowed_run_completes_without_evictions() {
    // A window smaller than one send batch: the senders must wait for
    // the receivers again and again, and still everything arrives.
    let r = bench(&["--window", "3"]);
    assert_complete(&r, "qchat");
    assert_eq!(r["window"], 3, "{r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
    assert_eq!(r["evicted"]["count"], 0, "{r}");
    assert_eq!(r["evicted"]["codes"], serde_json::json!([]), "{r}");
}

#[test]
fn bench_flood_run_has_no_window() {
    let r = bench(&["--flood"]);
    assert_complete(&r, "qchat");
    assert!(r["window"].is_null(), "{r}");
}

/// A flood into a server whose queues hold 16 frames: each sender writes
/// 32 frames at once, so the server disconnects the readers as slow.
const OVERLOAD: &[&str] = &[
    "--clients",
    "4",
    "--senders",
    "3",
    "--messages",
    "5000",
    "--flood",
    "--queue",
    "16",
    // The joining member's queue must hold the history, so none.
    "--server-arg=--history",
    "--server-arg=0",
    // Far beyond what the run needs: a bench that waited for its timeout
    // would report `timed_out`.
    "--timeout",
    "120",
    "--settle",
    "0.1",
    "--json",
];

/// Runs `qchat-bench` and returns its status, stdout lines and stderr.
fn run_raw(args: &[&str], extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let home = tempfile::tempdir().expect("temporary home");
    let out = command(&home)
        .args(args)
        .args(extra)
        .output()
        .expect("run qchat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e} in {l:?}\nstderr:\n{stderr}"))
        })
        .collect();
    (out.status.code(), lines, stderr)
}

fn assert_evicted_slow_readers(r: &serde_json::Value, stderr: &str) {
    assert_eq!(r["ok"], false, "{r}\n{stderr}");
    assert_eq!(r["timed_out"], false, "stopped early\n{r}\n{stderr}");
    let evicted = &r["evicted"];
    assert!(evicted["count"].as_u64() >= Some(1), "{r}\n{stderr}");
    let codes = evicted["codes"].as_array().expect("codes");
    assert!(
        codes.iter().any(|c| c["code"] == 6
            && c["name"] == "SLOW_READER"
            && c["members"].as_u64() >= Some(1)),
        "{r}\n{stderr}"
    );
    assert!(evicted["first_s"].is_number(), "{r}");
    assert!(
        r["deliveries_received"].as_u64() < r["deliveries_expected"].as_u64(),
        "{r}"
    );
}

#[test]
fn bench_stops_at_once_and_fails_when_the_server_evicts_a_member() {
    let (status, lines, stderr) = run_raw(OVERLOAD, &[]);
    assert_eq!(status, Some(1), "{stderr}");
    assert_eq!(lines.len(), 1, "one JSON object per run\n{stderr}");
    assert_evicted_slow_readers(&lines[0], &stderr);
    // Said at once, with the code, and a one-line verdict at the end.
    assert!(
        stderr.contains("the qchat server disconnected member m") && stderr.contains("SLOW_READER"),
        "{stderr}"
    );
    let verdict = stderr
        .lines()
        .find(|l| l.starts_with("qchat-bench: FAILED (qchat): "))
        .unwrap_or_else(|| panic!("no verdict\n{stderr}"));
    assert!(
        verdict.contains(" disconnected (") && verdict.contains("SLOW_READER"),
        "{stderr}"
    );
}

#[test]
fn bench_compare_names_the_server_whose_round_failed() {
    let (status, lines, stderr) = run_raw(OVERLOAD, &["--compare", "--rounds", "1"]);
    assert_eq!(status, Some(1), "{stderr}");
    // One object per run, then the summary.
    assert_eq!(lines.len(), 3, "{lines:?}\n{stderr}");
    assert_eq!(lines[0]["target"], "qchat");
    assert_eq!(lines[1]["target"], "baseline");
    for r in &lines[..2] {
        assert_evicted_slow_readers(r, &stderr);
    }
    let failed = lines[2]["failed"].as_array().expect("failed runs listed");
    assert_eq!(failed.len(), 2, "{}", lines[2]);
    assert!(
        failed[0]
            .as_str()
            .is_some_and(|f| f.starts_with("qchat, round 1: ")),
        "{}",
        lines[2]
    );
    assert!(
        failed[1]
            .as_str()
            .is_some_and(|f| f.starts_with("baseline, round 1: ")),
        "{}",
        lines[2]
    );
    // Nothing to take a median of.
    assert!(
        lines[2]["qchat"]["deliveries_per_s"].is_null(),
        "{}",
        lines[2]
    );
}

#[test]
fn bench_baseline_relay_delivers_everything_once_and_in_order() {
    assert_complete(&bench(&["--baseline"]), "baseline");
}

/// Members 0 and 2 in `#r0`, 1 and 3 in `#r1`; the senders 0 and 1 each
/// reach the one other member of their room, and a line routed to the
/// other room would count as malformed.
fn assert_rooms_complete(r: &serde_json::Value, target: &str) {
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a count in {r}"))
    };
    assert_eq!(r["target"], target, "{r}");
    assert_eq!(n("rooms"), 2, "{r}");
    assert_eq!(n("deliveries_expected"), 2 * 20, "{r}");
    assert_eq!(n("deliveries_received"), 2 * 20, "{r}");
    for k in ["missing", "duplicates", "out_of_order", "malformed"] {
        assert_eq!(n(k), 0, "{k} in {r}");
    }
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn bench_baseline_relay_keeps_rooms_apart() {
    assert_rooms_complete(&bench(&["--baseline", "--rooms", "2"]), "baseline");
}

#[test]
fn bench_compare_runs_both_servers_in_rooms() {
    let (status, lines, stderr) = run_raw(
        &[
            "--clients",
            "4",
            "--senders",
            "2",
            "--messages",
            "20",
            "--timeout",
            "20",
            "--settle",
            "0.1",
            "--rooms",
            "2",
            "--compare",
            "--rounds",
            "1",
            "--json",
        ],
        &[],
    );
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(lines.len(), 3, "{lines:?}\n{stderr}");
    assert_rooms_complete(&lines[0], "qchat");
    assert_rooms_complete(&lines[1], "baseline");
    // Both sides' medians, so a ratio (CPU time is too coarse to assert on
    // in a run this short).
    let summary = &lines[2];
    assert_eq!(summary["failed"], serde_json::json!([]), "{summary}");
    assert!(
        summary["ratio"]["deliveries_per_s"].is_number(),
        "{summary}"
    );
}

#[test]
fn bench_without_a_qchat_to_start_says_how_to_name_one() {
    let home = tempfile::tempdir().expect("temporary home");
    let missing = home.path().join("no-such-qchat");
    let out = command(&home)
        .args(["--clients", "2", "--messages", "1", "--qchat"])
        .arg(&missing)
        .output()
        .expect("run qchat-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-qchat"), "{stderr}");
}

/// Runs a tiny `--restart`/`--replay` run and returns its JSON report.
fn storm(extra: &[&str]) -> serde_json::Value {
    let r = run_json(
        &["--clients", "3", "--messages", "5", "--timeout", "20"],
        extra,
    );
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a count in {r}"))
    };
    // Every member came back on its resume point, and holds each of the
    // sender's 2 × 5 messages exactly once, in the log's order.
    assert_eq!(n("resumed"), 3, "{r}");
    assert_eq!(n("fresh_joins"), 0, "{r}");
    assert_eq!(n("messages"), 10, "{r}");
    assert_eq!(n("deliveries_expected"), 30, "{r}");
    assert_eq!(n("deliveries_received"), 30, "{r}");
    assert_eq!(n("missing"), 0, "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    assert_eq!(n("out_of_order"), 0, "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
    assert!(r["all_resumed_s"].is_number(), "{r}");
    assert!(r["resume_ms"]["p99"].is_number(), "{r}");
    r
}

#[test]
fn bench_restart_term_every_member_resumes_and_nothing_is_lost() {
    let r = storm(&["--restart", "term"]);
    assert_eq!(r["mode"], "restart", "{r}");
    assert_eq!(r["restart"], "term", "{r}");
    assert!(r["server_down_s"].is_number(), "{r}");
}

#[test]
fn bench_restart_kill_every_member_resumes_and_nothing_is_lost() {
    let r = storm(&["--restart", "kill"]);
    assert_eq!(r["restart"], "kill", "{r}");
}

#[test]
fn bench_replay_resumes_what_each_member_missed() {
    let r = storm(&["--replay"]);
    assert_eq!(r["mode"], "replay", "{r}");
    // Each of the 3 members missed the second 5 while it was away.
    assert_eq!(r["replayed"].as_u64(), Some(15), "{r}");
    assert_eq!(r["server_missed"].as_u64(), Some(0), "{r}");
}

/// Clustered runs need a NATS server, as the end-to-end tests do
/// (`.ci/run` installs Debian's `nats-server`).
fn nats_server() -> String {
    std::env::var("QCHAT_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

#[test]
fn bench_cluster_runs_deliver_everything_beside_the_embedded_store() {
    let home = tempfile::tempdir().expect("temporary home");
    let out = command(&home)
        .args([
            "--clients",
            "4",
            "--senders",
            "2",
            "--messages",
            "20",
            "--timeout",
            "20",
            "--settle",
            "0.1",
            "--cluster-nodes",
            "1,2",
            "--rounds",
            "1",
            "--nats-server",
            &nats_server(),
            "--json",
        ])
        .output()
        .expect("run qchat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let transcript = format!(
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{transcript}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}\n{transcript}")))
        .collect();
    // The embedded store, one node, two nodes, then the summary.
    assert_eq!(lines.len(), 4, "{transcript}");
    assert_complete(&lines[0], "qchat");
    for (r, n) in [(&lines[1], 1), (&lines[2], 2)] {
        assert_complete(r, &format!("cluster-{n}"));
        assert_eq!(r["nodes"].as_u64(), Some(n), "{r}");
        assert!(r["nats_cpu_us_per_delivery"].is_number(), "{r}");
    }
    let summary = &lines[3];
    assert_eq!(summary["cluster"], true, "{summary}");
    let rows = summary["rows"].as_array().expect("rows");
    let targets: Vec<&str> = rows.iter().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(targets, ["qchat", "cluster-1", "cluster-2"], "{summary}");
    assert!(rows.iter().all(|r| r["ok_runs"] == 1), "{summary}");
}

#[test]
fn bench_failover_moves_the_killed_nodes_members_and_loses_nothing() {
    let r = run_json(
        &[
            "--clients",
            "4",
            "--messages",
            "5",
            "--timeout",
            "30",
            "--cluster-nodes",
            "2",
            "--failover",
            "--failover-silence",
            "2",
            "--nats-server",
            &nats_server(),
        ],
        &[],
    );
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a count in {r}"))
    };
    assert_eq!(r["mode"], "failover", "{r}");
    assert_eq!(n("nodes"), 2, "{r}");
    // Members 0 and 2 were on the first node, the one killed; each resumed
    // on the other from where it was.
    assert_eq!(n("moved"), 2, "{r}");
    assert_eq!(n("resumed"), 2, "{r}");
    assert_eq!(n("fresh_joins"), 0, "{r}");
    // Every member holds each of the 2 × 5 acknowledged messages once.
    assert_eq!(n("deliveries_expected"), 40, "{r}");
    assert_eq!(n("deliveries_received"), 40, "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    assert_eq!(n("out_of_order"), 0, "{r}");
    assert!(r["all_resumed_s"].is_number(), "{r}");
}
