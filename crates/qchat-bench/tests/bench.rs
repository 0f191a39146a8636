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
    assert_complete(&bench(&[]), "qchat");
}

#[test]
fn bench_baseline_relay_delivers_everything_once_and_in_order() {
    assert_complete(&bench(&["--baseline"]), "baseline");
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
