//! rustls and quinn configurations for both ends.
//!
//! Every configuration is built with [`provider()`] passed explicitly rather
//! than a process-wide default, so no code path can silently pick up another
//! provider (such as *ring*) and the key exchange preferences are the same
//! everywhere: with rustls' `prefer-post-quantum` feature the aws-lc-rs
//! provider offers the hybrid X25519MLKEM768 group first. Only TLS 1.3 is
//! enabled: QUIC requires it, and it keeps the plain-TLS test harness honest.

use std::sync::Arc;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;

use crate::{AnyClientKey, Identity, PinVerifier};

/// The server name clients send. It is never checked (the pin is the
/// trust), but it matches the certificate's subject alternative name so
/// that generic tools inspecting a qchat server see a consistent certificate.
pub const SERVER_NAME: &str = "qchat";

/// Why a TLS or QUIC configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls rejected the configuration (for example a key that does not
    /// match the certificate).
    #[error("cannot set up TLS: {0}; check that the identity's key.pem belongs to its cert.pem")]
    Rustls(#[from] rustls::Error),
    /// The TLS configuration offers no cipher suite QUIC can start with.
    #[error("cannot set up QUIC encryption: {0}; this is a bug in qchat, please report it")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The aws-lc-rs crypto provider, the only one qchat uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS 1.3 server configuration presenting `identity`, offering `alpn`,
/// and asking (not requiring) each client for its certificate: a client that
/// sends one must prove it holds the key ([`AnyClientKey`]).
pub fn server_config(
    identity: &Identity,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(AnyClientKey::new())
        .with_single_cert(
            vec![identity.cert_der.clone()],
            identity.key_der.clone_key(),
        )?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed TLS 1.3 session skips the certificate, and with it the pin
    // check that is the whole trust model; qchat's client never resumes, and
    // without tickets no other client can either. It also keeps the tickets'
    // bytes out of every member's first flight.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A TLS 1.3 client configuration that trusts exactly what `verifier` allows
/// and, if `me` is given, presents that person's certificate when the server
/// asks for one.
///
/// Session resumption is disabled: a resumed TLS 1.3 session skips the
/// certificate, so the verifier would not run and could not report the
/// presented key. A chat connection is long-lived; the saved round trip is
/// not worth a handshake that bypasses the pin check.
pub fn client_config(
    verifier: Arc<PinVerifier>,
    alpn: &[&[u8]],
    me: Option<&Identity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match me {
        Some(me) => {
            builder.with_client_auth_cert(vec![me.cert_der.clone()], me.key_der.clone_key())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A quinn server configuration presenting `identity`. The transport
/// configuration is left at its defaults for the server to tune.
pub fn quic_server_config(
    identity: &Identity,
    alpn: &[&[u8]],
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = QuicServerConfig::try_from(Arc::new(server_config(identity, alpn)?))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(tls)))
}

/// A quinn client configuration that trusts exactly what `verifier` allows,
/// presenting `me` if given.
pub fn quic_client_config(
    verifier: Arc<PinVerifier>,
    alpn: &[&[u8]],
    me: Option<&Identity>,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = QuicClientConfig::try_from(Arc::new(client_config(verifier, alpn, me)?))?;
    Ok(quinn::ClientConfig::new(Arc::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{is_pin_failure, Expectation, Fingerprint};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use rustls::{ClientConnection, HandshakeKind, NamedGroup, ProtocolVersion, ServerConnection};

    const ALPN: &[&[u8]] = &[b"qchat-test/1"];

    #[derive(Debug)]
    #[allow(dead_code)] // the errors are read through Debug in panic messages
    enum Failure {
        Client(rustls::Error),
        Server(rustls::Error),
    }

    /// Runs a complete handshake over in-memory buffers.
    fn handshake(
        client_config: Arc<rustls::ClientConfig>,
        server_config: Arc<rustls::ServerConfig>,
    ) -> Result<(ClientConnection, ServerConnection), Failure> {
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let mut client = ClientConnection::new(client_config, name).map_err(Failure::Client)?;
        let mut server = ServerConnection::new(server_config).map_err(Failure::Server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("client write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server read");
                server.process_new_packets().map_err(Failure::Server)?;
            }

            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("server write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client read");
                client.process_new_packets().map_err(Failure::Client)?;
            }

            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
        }
        panic!("handshake did not finish");
    }

    fn identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, _) = crate::identity::load_or_create(dir.path()).expect("identity");
        (dir, identity)
    }

    fn pinned_client(fp: Fingerprint) -> (Arc<PinVerifier>, Arc<rustls::ClientConfig>) {
        let verifier = PinVerifier::new(Expectation::Pinned(fp));
        let config = client_config(verifier.clone(), ALPN, None).expect("client config");
        (verifier, Arc::new(config))
    }

    /// A server that sends `cert` but signs with `key`: what an attacker who
    /// copied the public certificate, but not the private key, can do.
    #[derive(Debug)]
    struct StolenCert(Arc<CertifiedKey>);

    impl ResolvesServerCert for StolenCert {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn impostor_server(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> rustls::ServerConfig {
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .expect("load key");
        let certified = CertifiedKey::new(vec![cert], signing_key);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(StolenCert(Arc::new(certified))));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config
    }

    #[test]
    fn key_exchange_is_post_quantum_hybrid() {
        let (_dir, id) = identity();
        let (_, client) = pinned_client(id.fingerprint);
        let server = Arc::new(server_config(&id, ALPN).expect("server config"));
        let (client, server) = handshake(client, server).expect("handshake");
        for group in [
            client.negotiated_key_exchange_group(),
            server.negotiated_key_exchange_group(),
        ] {
            assert_eq!(group.map(|g| g.name()), Some(NamedGroup::X25519MLKEM768));
        }
        assert_eq!(client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    }

    #[test]
    fn pinned_certificate_with_its_own_key_is_accepted() {
        let (_dir, id) = identity();
        let (verifier, client) = pinned_client(id.fingerprint);
        let server = Arc::new(server_config(&id, ALPN).expect("server config"));
        let (client, _) = handshake(client, server).expect("handshake");
        assert_eq!(client.alpn_protocol(), Some(ALPN[0]));
        assert_eq!(verifier.presented(), Some(id.fingerprint));
    }

    #[test]
    fn pinned_certificate_signed_with_another_key_is_refused() {
        let (_dir_a, real) = identity();
        let (_dir_b, attacker) = identity();
        let (verifier, client) = pinned_client(real.fingerprint);
        let server = Arc::new(impostor_server(
            real.cert_der.clone(),
            attacker.key_der.clone_key(),
        ));
        match handshake(client, server) {
            Err(Failure::Client(err)) => {
                assert!(
                    !is_pin_failure(&err),
                    "pin matched; the signature must fail: {err}"
                );
                assert_eq!(
                    err,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                );
            }
            other => panic!("expected the client to refuse, got {other:?}"),
        }
        assert_eq!(verifier.presented(), Some(real.fingerprint));
    }

    #[test]
    fn other_key_is_refused_as_pin_failure() {
        let (_dir_a, pinned) = identity();
        let (_dir_b, other) = identity();
        let (verifier, client) = pinned_client(pinned.fingerprint);
        let server = Arc::new(server_config(&other, ALPN).expect("server config"));
        match handshake(client, server) {
            Err(Failure::Client(err)) => assert!(is_pin_failure(&err), "{err}"),
            other => panic!("expected the client to refuse, got {other:?}"),
        }
        assert_eq!(verifier.presented(), Some(other.fingerprint));
    }

    #[test]
    fn strict_mode_refuses_unknown_server() {
        let (_dir, id) = identity();
        let verifier = PinVerifier::new(Expectation::Unknown { accept: false });
        let client = Arc::new(client_config(verifier.clone(), ALPN, None).expect("client config"));
        let server = Arc::new(server_config(&id, ALPN).expect("server config"));
        match handshake(client, server) {
            Err(Failure::Client(err)) => assert!(is_pin_failure(&err), "{err}"),
            other => panic!("expected the client to refuse, got {other:?}"),
        }
        assert_eq!(verifier.presented(), Some(id.fingerprint));
    }

    #[test]
    fn every_handshake_is_full_so_the_verifier_always_runs() {
        let (_dir, id) = identity();
        let (_, client) = pinned_client(id.fingerprint);
        let server = Arc::new(server_config(&id, ALPN).expect("server config"));
        for _ in 0..2 {
            let (mut c, _s) = handshake(client.clone(), server.clone()).expect("handshake");
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
            c.send_close_notify();
        }
    }

    #[test]
    fn server_issues_no_tickets_so_no_client_can_resume_past_the_pin() {
        let (_dir, id) = identity();
        let verifier = PinVerifier::new(Expectation::Pinned(id.fingerprint));
        let mut resuming = client_config(verifier, ALPN, None).expect("client config");
        resuming.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let resuming = Arc::new(resuming);
        let server = Arc::new(server_config(&id, ALPN).expect("server config"));
        for _ in 0..2 {
            let (mut c, _s) = handshake(resuming.clone(), server.clone()).expect("handshake");
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
            c.send_close_notify();
        }
    }

    #[test]
    fn server_config_refuses_mismatched_identity() {
        let (_dir_a, a) = identity();
        let (_dir_b, b) = identity();
        let mut broken = a.clone();
        broken.key_der = b.key_der.clone_key();
        let err = server_config(&broken, ALPN).expect_err("mismatch");
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");
    }

    fn person() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, _) = crate::identity::load_or_create_as(dir.path(), crate::Role::Person)
            .expect("person identity");
        (dir, id)
    }

    /// The server learns the person's key from the handshake, and the key
    /// is an Ed25519 one proven with an Ed25519 signature.
    #[test]
    fn a_persons_certificate_reaches_the_server_as_its_fingerprint() {
        let (_dir, server_id) = identity();
        let (_pdir, me) = person();
        let verifier = PinVerifier::new(Expectation::Pinned(server_id.fingerprint));
        let client = Arc::new(client_config(verifier, ALPN, Some(&me)).expect("client config"));
        let server = Arc::new(server_config(&server_id, ALPN).expect("server config"));
        let (_c, s) = handshake(client, server).expect("handshake");
        let chain = s.peer_certificates().expect("a client certificate");
        assert_eq!(crate::client_fingerprint(chain), Some(me.fingerprint));
        let (_, cert) = x509_parser::parse_x509_certificate(&me.cert_der).expect("parse");
        assert_eq!(
            cert.tbs_certificate.subject_pki.algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ED25519
        );
    }

    #[test]
    fn a_client_without_a_key_still_connects_and_presents_nothing() {
        let (_dir, server_id) = identity();
        let (_, client) = pinned_client(server_id.fingerprint);
        let server = Arc::new(server_config(&server_id, ALPN).expect("server config"));
        let (_c, s) = handshake(client, server).expect("handshake");
        assert!(s.peer_certificates().is_none_or(|c| c.is_empty()));
    }

    /// Someone with alice's certificate but not her key cannot pass as her.
    #[test]
    fn a_persons_certificate_with_another_key_is_refused_by_the_server() {
        let (_dir, server_id) = identity();
        let (_a, alice) = person();
        let (_m, mallory) = person();
        let verifier = PinVerifier::new(Expectation::Pinned(server_id.fingerprint));
        let mut stolen = alice.clone();
        stolen.key_der = mallory.key_der.clone_key();
        // rustls refuses a mismatched pair when it can tell; build the
        // client around a resolver that skips that check, as an attacker
        // would.
        let signing_key = provider()
            .key_provider
            .load_private_key(stolen.key_der.clone_key())
            .expect("load key");
        let certified = Arc::new(CertifiedKey::new(vec![alice.cert_der.clone()], signing_key));
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(StolenClientCert(certified)));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let server = Arc::new(server_config(&server_id, ALPN).expect("server config"));
        match handshake(Arc::new(config), server) {
            Err(Failure::Server(err)) => assert_eq!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            ),
            other => panic!("expected the server to refuse, got {other:?}"),
        }
    }

    #[derive(Debug)]
    struct StolenClientCert(Arc<CertifiedKey>);

    impl rustls::client::ResolvesClientCert for StolenClientCert {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    #[test]
    fn quic_configs_build() {
        let (_dir, id) = identity();
        quic_server_config(&id, ALPN).expect("quic server config");
        quic_client_config(
            PinVerifier::new(Expectation::Pinned(id.fingerprint)),
            ALPN,
            None,
        )
        .expect("quic client config");
    }
}
