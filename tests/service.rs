//! Running qchat as people run servers: the systemd unit in `docs/`, shell
//! completions, the man page and `--version`, all checked against the real
//! binary so they cannot drift from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, Home};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/qchat.service")
}

/// The value of every `Key=` line of the unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

#[test]
fn the_service_unit_runs_a_headless_server_in_its_state_directory() {
    let unit = std::fs::read_to_string(unit_path()).expect("docs/qchat.service");
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec, ["/usr/local/bin/qchat serve --headless"]);
    assert_eq!(unit_values(&unit, "StateDirectory"), ["qchat"]);
    // %S is /var/lib for a system service: the state directory is QCHAT_HOME.
    assert!(
        unit_values(&unit, "Environment").contains(&"QCHAT_HOME=%S/qchat".to_string()),
        "{unit}"
    );
    for hardening in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "missing {hardening}");
    }

    // With QCHAT_HOME set as the unit sets it, the identity lands inside
    // it: the only directory the sandbox lets the service write.
    let home = Home::new();
    let out = home
        .command()
        .arg("fingerprint")
        .output()
        .expect("run qchat fingerprint");
    assert!(out.status.success(), "{out:?}");
    assert!(home.path().join("certs/cert.pem").is_file());
    assert!(home.path().join("certs/key.pem").is_file());

    // systemd's own check, with the binary under test in place of the
    // installed one. `.ci/run` installs systemd-analyze; a developer
    // machine without it still runs the checks above.
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: skipping `systemd-analyze verify`");
        return;
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("qchat.service");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/local/bin/qchat",
            &format!("ExecStart={}", bin()),
        ),
    )
    .expect("write the unit copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        !stderr.contains("qchat.service"),
        "systemd-analyze has complaints about the unit: {stderr}"
    );
}

fn run(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env("QCHAT_HOME", "/nonexistent-qchat-home")
        .output()
        .expect("run qchat");
    assert!(out.status.success(), "qchat {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Every `--flag` that `qchat SUB --help` lists.
fn flags_of(sub: &str) -> Vec<String> {
    let help = run(&[sub, "--help"]);
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(['.', ')', ';']).to_string())
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn the_man_page_and_completions_cover_every_flag() {
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH qchat 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    for section in [
        "QCHAT SERVE",
        "QCHAT CONNECT",
        "QCHAT KNOWN-HOSTS",
        "EXIT STATUS",
        "QCHAT_HOME",
    ] {
        assert!(man.contains(section), "the man page lacks {section}");
    }
    let bash = run(&["completions", "bash"]);
    let fish = run(&["completions", "fish"]);
    let zsh = run(&["completions", "zsh"]);
    for sub in ["serve", "connect", "known-hosts"] {
        let flags = flags_of(sub);
        assert!(flags.len() > 2, "{sub}: {flags:?}");
        for flag in flags {
            // roff escapes each '-' as '\-'.
            let in_man = flag.replace('-', "\\-");
            assert!(man.contains(&in_man), "the man page lacks {flag} of {sub}");
            assert!(
                bash.contains(&flag),
                "bash completion lacks {flag} of {sub}"
            );
            let long = flag.trim_start_matches("--");
            assert!(
                fish.contains(&format!("-l {long}")),
                "fish completion lacks {flag}"
            );
            assert!(zsh.contains(&flag), "zsh completion lacks {flag} of {sub}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("qchat.bash");
    std::fs::write(&script, &bash).expect("write the script");
    let ok = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("run bash -n");
    assert!(ok.success(), "bash -n rejects the completion script");

    let out = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .expect("run qchat");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_version_names_the_commit() {
    let v = run(&["--version"]);
    let v = v.trim();
    assert!(
        v.starts_with(&format!("qchat {} (", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        v.contains("(commit ") || v.contains("(not built from a git checkout)"),
        "{v}"
    );
}
