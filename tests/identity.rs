//! The server identity: created once, kept, and reproducible with openssl.

use std::process::Command;

use crate::util::{Home, Server};

fn fingerprint_cmd(home: &Home) -> String {
    let out = home
        .command()
        .arg("fingerprint")
        .output()
        .expect("run qchat fingerprint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    lines[0].to_string()
}

/// The openssl one-liner from docs/SECURITY.md, as hex.
fn openssl_fingerprint(cert: &std::path::Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -hex",
        cert.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.rsplit('=').next().expect("digest").trim().to_string()
}

#[test]
fn fingerprint_matches_openssl_over_the_public_key() {
    let home = Home::new();
    let canonical = fingerprint_cmd(&home);
    assert!(canonical.starts_with("SHA256:"), "{canonical}");
    let hex_out = home
        .command()
        .args(["fingerprint", "--hex"])
        .output()
        .expect("run");
    let hex = String::from_utf8(hex_out.stdout)
        .expect("utf-8")
        .trim()
        .replace(':', "");
    assert_eq!(hex, openssl_fingerprint(&home.cert_pem()));
    // Canonical and hex are the same 32 bytes.
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(canonical.trim_start_matches("SHA256:"))
        .expect("base64");
    let raw_hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(raw_hex, hex);
}

#[test]
fn the_key_is_private_and_the_identity_is_kept() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let first = fingerprint_cmd(&home);
    let key = home.path().join("certs").join("key.pem");
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(home.path().join("certs"))
            .expect("dir")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(fingerprint_cmd(&home), first);
    let server = Server::start(&home);
    assert_eq!(server.fingerprint, first);
}

#[test]
fn a_corrupt_key_is_an_error_and_is_left_alone() {
    let home = Home::new();
    fingerprint_cmd(&home);
    let key = home.path().join("certs").join("key.pem");
    std::fs::write(&key, b"not a key").expect("write");
    let out = home.command().arg("fingerprint").output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key.pem"), "{err}");
    assert_eq!(std::fs::read(&key).expect("read"), b"not a key");
}
