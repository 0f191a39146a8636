//! `qchat bench` (issue 5): a small run against qchat and against the
//! baseline relay must deliver everything exactly once and in order, and
//! print well-formed JSON. No timing is asserted: the numbers depend on the
//! machine, and docs/PERFORMANCE.md is where they belong.

use crate::util::Home;

/// Runs a small bench with `extra` flags and returns its one JSON report.
fn bench(extra: &[&str]) -> serde_json::Value {
    let home = Home::new();
    let out = home
        .command()
        .args([
            "bench",
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
            "--json",
        ])
        .args(extra)
        .output()
        .expect("run qchat bench");
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
