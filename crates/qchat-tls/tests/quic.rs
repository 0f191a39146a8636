//! QUIC handshakes over loopback with the configurations this crate builds,
//! checking that pinning works through quinn exactly as through plain rustls.

use std::net::SocketAddr;
use std::sync::Arc;

use qchat_tls::{
    quic_client_config, quic_server_config, Expectation, Fingerprint, Identity, PinVerifier,
    SERVER_NAME,
};

const ALPN: &[&[u8]] = &[b"qchat-test/1"];

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn identity() -> (tempfile::TempDir, Identity) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (identity, _) = qchat_tls::identity::load_or_create(dir.path()).expect("identity");
    (dir, identity)
}

/// Starts a server that accepts one connection and reports whether its
/// handshake completed.
fn serve(identity: &Identity) -> (SocketAddr, tokio::task::JoinHandle<bool>) {
    let config = quic_server_config(identity, ALPN).expect("server config");
    let endpoint = quinn::Endpoint::server(config, loopback()).expect("server endpoint");
    let addr = endpoint.local_addr().expect("server address");
    let task = tokio::spawn(async move {
        let Some(incoming) = endpoint.accept().await else {
            return false;
        };
        let ok = match incoming.await {
            Ok(conn) => {
                // Wait for the client to hang up so the connection is not
                // torn down while the client is still checking it.
                conn.closed().await;
                true
            }
            Err(_) => false,
        };
        endpoint.wait_idle().await;
        ok
    });
    (addr, task)
}

async fn connect(
    addr: SocketAddr,
    verifier: Arc<PinVerifier>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
    endpoint.set_default_client_config(
        quic_client_config(verifier, ALPN, None).expect("client config"),
    );
    endpoint
        .connect(addr, SERVER_NAME)
        .expect("connect parameters")
        .await
}

#[tokio::test]
async fn pinned_server_is_reached_over_quic() {
    let (_dir, id) = identity();
    let (addr, server) = serve(&id);
    let verifier = PinVerifier::new(Expectation::Pinned(id.fingerprint));
    let conn = connect(addr, verifier.clone()).await.expect("handshake");
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    assert_eq!(alpn.as_deref(), Some(ALPN[0]));
    assert_eq!(verifier.presented(), Some(id.fingerprint));
    conn.close(0u32.into(), b"done");
    assert!(server.await.expect("server task"));
}

#[tokio::test]
async fn changed_key_is_refused_over_quic() {
    let (_dir, id) = identity();
    let (addr, server) = serve(&id);
    let pinned = Fingerprint::from_bytes([7; 32]);
    let verifier = PinVerifier::new(Expectation::Pinned(pinned));
    let err = connect(addr, verifier.clone())
        .await
        .expect_err("must refuse a different key");
    // The refusal text travels in the QUIC error, naming both keys.
    let text = err.to_string();
    assert!(text.contains(&pinned.canonical()), "{text}");
    assert!(text.contains(&id.fingerprint.canonical()), "{text}");
    assert_eq!(verifier.presented(), Some(id.fingerprint));
    assert!(!server.await.expect("server task"));
}
