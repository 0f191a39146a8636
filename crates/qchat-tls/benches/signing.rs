//! What signing messages costs: a sender signs each line once, every
//! recipient checks it once, and the server only hashes the key it names
//! (to compare with the connection's). `cargo bench -p qchat-tls --bench
//! signing`; results are in docs/PERFORMANCE.md.

#![allow(missing_docs)]

use std::hint::black_box;

use divan::Bencher;
use qchat_proto::signed::{Signed, SignedKind};
use qchat_tls::signing::{fingerprint, verify, Signer};

fn main() {
    divan::main();
}

fn signer() -> (tempfile::TempDir, Signer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, _) =
        qchat_tls::identity::load_or_create_as(dir.path(), qchat_tls::Role::Person).expect("a key");
    let s = Signer::new(&id).expect("Ed25519");
    (dir, s)
}

fn line(text: &str) -> Signed<'_> {
    Signed {
        kind: SignedKind::Say,
        to: "",
        text,
        instance: [7; 16],
        seq: 42,
        sent_ms: 1_750_000_000_000,
    }
}

/// The sender's work per line: the signed bytes and the signature.
#[divan::bench(args = [100, 4096])]
fn sign(bencher: Bencher, len: usize) {
    let (_d, s) = signer();
    let text = "x".repeat(len);
    bencher.bench_local(|| s.sign(&black_box(line(&text)).bytes()));
}

/// Each recipient's work per delivered line: the signed bytes, the
/// check, and the fingerprint of the key to compare with the contact's.
#[divan::bench(args = [100, 4096])]
fn verify_line(bencher: Bencher, len: usize) {
    let (_d, s) = signer();
    let text = "x".repeat(len);
    let sig = s.sign(&line(&text).bytes());
    let key = s.public_key();
    bencher.bench_local(|| {
        let ok = verify(&key, &black_box(line(&text)).bytes(), &sig);
        (ok, fingerprint(&key))
    });
}

/// The server's work per signed line: the key's fingerprint.
#[divan::bench]
fn server_key_check(bencher: Bencher) {
    let (_d, s) = signer();
    let key = s.public_key();
    bencher.bench_local(|| fingerprint(black_box(&key)));
}
