//! Pinning: first use, reconnecting, and a different server at the same
//! address.

use crate::util::{connect, join, Home, Server, Stream};

#[test]
fn a_restarted_server_keeps_its_key_and_a_pinned_client_reconnects_without_flags() {
    let (hs, ha) = (Home::new(), Home::new());
    let mut server = Server::start(&hs);
    let first_fp = server.fingerprint.clone();
    let mut alice = join(&ha, &server, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    let pins = std::fs::read_to_string(ha.known_hosts()).expect("known_hosts written");
    assert!(pins.contains(&first_fp), "{pins}");

    let port = server.addr.port();
    server.proc.signal("TERM");
    assert!(server.proc.wait().success());
    let server = Server::start_on(&hs, &format!("127.0.0.1:{port}"), &[]);
    assert_eq!(server.fingerprint, first_fp);

    // No --accept-new, no --fingerprint, no terminal: only the pin can
    // make this work.
    let mut again = connect(&ha, &server.target(), "alice", &[]);
    again.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
}

#[test]
fn an_unknown_server_without_a_terminal_is_refused_with_advice() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut p = connect(&ha, &server.target(), "alice", &[]);
    let line = p.expect_err_contains("--fingerprint");
    assert!(line.contains(&server.fingerprint), "{line}");
    assert!(!p.wait().success());
    assert!(
        !ha.known_hosts().exists()
            || !std::fs::read_to_string(ha.known_hosts())
                .expect("read")
                .contains("SHA256")
    );
}

#[test]
fn a_fingerprint_given_out_of_band_is_checked() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    // Any spelling: lower-case hex with colons.
    let hex = hs
        .command()
        .args(["fingerprint", "--hex"])
        .output()
        .expect("run");
    let hex = String::from_utf8(hex.stdout)
        .expect("utf-8")
        .trim()
        .to_lowercase();
    let mut ok = connect(&ha, &server.target(), "alice", &["--fingerprint", &hex]);
    ok.expect(Stream::Out, "the connected line", |l| {
        l.contains("(verified)")
    });

    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut bad = connect(&hb, &server.target(), "bob", &["--fingerprint", wrong]);
    bad.expect_err_contains("KEY HAS CHANGED");
    assert!(!bad.wait().success());
}

#[test]
fn a_different_server_on_the_same_address_is_refused_and_nothing_reaches_its_room() {
    let (hs1, hs2, ha, hb) = (Home::new(), Home::new(), Home::new(), Home::new());
    let mut first = Server::start(&hs1);
    let mut alice = join(&ha, &first, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    let port = first.addr.port();
    first.proc.signal("TERM");
    assert!(first.proc.wait().success());

    // Another key on the same address: what an attacker in the middle
    // would present.
    let second = Server::start_on(&hs2, &format!("127.0.0.1:{port}"), &[]);
    assert_ne!(second.fingerprint, first.fingerprint);
    let mut bob = join(&hb, &second, "bob");

    let mut again = connect(&ha, &second.target(), "alice", &["--accept-new"]);
    again.send_line("secret for the real server");
    again.close_stdin();
    let warning = again.expect_err_contains("KEY HAS CHANGED");
    assert!(warning.contains("WARNING"));
    again.expect_err_contains(&first.fingerprint);
    again.expect_err_contains(&second.fingerprint);
    again.expect_err_contains("qchat known-hosts replace");
    assert!(!again.wait().success());

    // bob's room never heard of alice.
    let mut carol = join(&Home::new(), &second, "carol");
    bob.expect_out("* carol joined");
    bob.send_line("anyone?");
    carol.expect_out("<bob> anyone?");
    assert!(!bob
        .stdout_so_far()
        .iter()
        .any(|l| l.contains("alice") || l.contains("secret")));
}

#[test]
fn strict_mode_says_the_server_is_not_pinned_rather_than_asking() {
    let (hs, ha) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut p = connect(&ha, &server.target(), "alice", &["--trust", "strict"]);
    let line = p.expect_err_contains("--trust strict refuses servers that are not pinned");
    assert!(line.contains(&server.fingerprint), "{line}");
    assert!(!line.contains("terminal"), "{line}");
    assert!(!p.wait().success());
}

#[test]
fn a_changed_fingerprint_given_over_an_old_pin_is_what_replace_is_told() {
    let (hs1, hs2, ha) = (Home::new(), Home::new(), Home::new());
    let first = Server::start(&hs1);
    let mut alice = join(&ha, &first, "alice");
    alice.close_stdin();
    assert!(alice.wait().success());
    let new_fp = Server::start(&hs2).fingerprint;
    let mut again = connect(&ha, &first.target(), "alice", &["--fingerprint", &new_fp]);
    let line = again.expect_err_contains("does not match the pin");
    let advice = format!(
        "qchat known-hosts replace {} --fingerprint {new_fp}",
        first.target()
    );
    assert!(line.contains(&advice), "{line}");
    assert!(!line.contains("<new>"), "{line}");
    assert!(!again.wait().success());
}

/// A QUIC server that presents `cert` but signs the handshake with `key`:
/// what someone who copied a server's public certificate, but not its
/// private key, can run. Returns its address; it serves until `rt` drops.
fn impostor(
    rt: &tokio::runtime::Runtime,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> std::net::SocketAddr {
    use std::sync::Arc;

    #[derive(Debug)]
    struct Stolen(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Stolen {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(Arc::clone(&self.0))
        }
    }

    let provider = qchat_tls::provider();
    let signing_key = provider.key_provider.load_private_key(key).expect("key");
    let certified = rustls::sign::CertifiedKey::new(vec![cert], signing_key);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Stolen(Arc::new(certified))));
    tls.alpn_protocols = vec![qchat_proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).expect("quic");
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let _guard = rt.enter();
    let endpoint =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = endpoint.local_addr().expect("local addr");
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let _ = incoming.await;
            });
        }
    });
    addr
}

#[test]
fn the_pinned_certificate_without_its_key_is_called_what_it_is() {
    let (real, other, ha) = (Home::new(), Home::new(), Home::new());
    let (genuine, _) =
        qchat_tls::identity::load_or_create(&real.path().join("certs")).expect("identity");
    let (stranger, _) =
        qchat_tls::identity::load_or_create(&other.path().join("certs")).expect("identity");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = impostor(&rt, genuine.cert_der.clone(), stranger.key_der.clone_key());
    let pinned = genuine.fingerprint.canonical();
    let mut p = connect(&ha, &addr.to_string(), "alice", &["--fingerprint", &pinned]);
    let line = p.expect_err_contains("could not prove it holds the matching private key");
    assert!(line.contains("impersonating"), "{line}");
    assert!(line.contains("misconfigured"), "{line}");
    assert!(line.contains("the certificate pinned for it"), "{line}");
    assert!(line.contains(&pinned), "{line}");
    assert!(!line.contains("BadSignature"), "{line}");
    assert!(!p.wait().success());
}
