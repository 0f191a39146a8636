//! Records the commit the binary is built from, for `qchat --version`.
//! Outside a git checkout (a crates.io tarball) it says so instead.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let commit = match commit {
        Some(c) if dirty => format!("commit {c}, modified"),
        Some(c) => format!("commit {c}"),
        None => "not built from a git checkout".into(),
    };
    println!("cargo:rustc-env=QCHAT_COMMIT={commit}");
    // A new commit, a checkout or a change to the tracked files changes one
    // of these; outside git there is nothing to watch.
    let git = |arg: &str| {
        Command::new("git")
            .args(["rev-parse", arg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| std::path::PathBuf::from(s.trim()))
    };
    if let (Some(dir), Some(common)) = (git("--absolute-git-dir"), git("--git-common-dir")) {
        let common = if common.is_absolute() {
            common
        } else {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(common)
        };
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", dir.join("index").display());
        if let Ok(head) = std::fs::read_to_string(dir.join("HEAD")) {
            if let Some(r) = head.strip_prefix("ref: ") {
                let r = common.join(r.trim());
                if r.exists() {
                    println!("cargo:rerun-if-changed={}", r.display());
                } else {
                    // A packed ref: watch the pack file instead.
                    println!(
                        "cargo:rerun-if-changed={}",
                        common.join("packed-refs").display()
                    );
                }
            }
        }
    }
}
