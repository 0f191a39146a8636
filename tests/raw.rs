//! A raw QUIC client for the hostile-traffic tests.
//!
//! The real client cannot misbehave, so these tests speak QUIC directly:
//! the same pinned TLS configuration as `qchat connect` (so the handshake is
//! real and the server cannot tell us apart from a client), then arbitrary
//! bytes on the session stream. Every wait is bounded by [`WAIT`], and
//! nothing here retries.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qchat_proto::{limits, ClientMsg, FrameDecoder, ServerMsg, ALPN, PROTOCOL_VERSION};
use qchat_tls::{Expectation, Fingerprint, PinVerifier};
use tokio::time::timeout;

use crate::util::{Server, WAIT};

/// The runtime for one test's raw clients: one worker, the machine is
/// shared.
pub fn runtime() -> tokio::runtime::Runtime {
    // A worker thread drives the raw connections between `block_on` calls,
    // as a real peer's stack would: a client that does not *read* must still
    // answer packets, or the server sees a dead peer instead of a slow one.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// QUIC settings for a well-behaved raw client: keep-alive well inside the
/// server's idle timeout, so only what a test does can end the connection.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t
}

/// Settings for a client that never reads: tiny receive windows, so the
/// server's sends block after a few kilobytes instead of after the
/// megabytes quinn would otherwise buffer for us.
pub fn tiny_window_transport() -> quinn::TransportConfig {
    let mut t = transport();
    t.stream_receive_window(4096u32.into());
    t.receive_window(8192u32.into());
    t
}

/// A connection to a qchat server, completed handshake included.
pub struct Raw {
    endpoint: quinn::Endpoint,
    /// The connection; tests may open streams on it directly.
    pub conn: quinn::Connection,
}

impl Raw {
    /// Connects to `server`, pinning the fingerprint it announced.
    pub async fn connect(server: &Server) -> Raw {
        Self::connect_with(server, transport()).await
    }

    /// Connects with the given transport settings.
    pub async fn connect_with(server: &Server, transport: quinn::TransportConfig) -> Raw {
        Self::try_connect_with(server, transport)
            .await
            .expect("the handshake succeeds")
    }

    /// Connects, or says how the server ended the attempt (a refused
    /// handshake, for one).
    pub async fn try_connect(server: &Server) -> Result<Raw, quinn::ConnectionError> {
        Self::try_connect_with(server, transport()).await
    }

    async fn try_connect_with(
        server: &Server,
        transport: quinn::TransportConfig,
    ) -> Result<Raw, quinn::ConnectionError> {
        Self::try_connect_as(server, transport, None).await
    }

    /// Connects presenting `me` as the client certificate: to the server,
    /// a device of whoever holds that key.
    pub async fn connect_as(server: &Server, me: &qchat_tls::Identity) -> Raw {
        Self::try_connect_as(server, transport(), Some(me))
            .await
            .expect("the handshake succeeds")
    }

    async fn try_connect_as(
        server: &Server,
        transport: quinn::TransportConfig,
        me: Option<&qchat_tls::Identity>,
    ) -> Result<Raw, quinn::ConnectionError> {
        let fingerprint: Fingerprint = server
            .fingerprint
            .parse()
            .expect("the server announces a valid fingerprint");
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint));
        let mut config =
            // Without `me`, no client certificate: what an older client
            // without a key looks like to the server (a guest).
            qchat_tls::quic_client_config(verifier, &[ALPN], me).expect("a client TLS config");
        config.transport_config(Arc::new(transport));
        let local: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let endpoint = quinn::Endpoint::client(local).expect("a client UDP socket");
        let connecting = endpoint
            .connect_with(config, server.addr, qchat_tls::SERVER_NAME)
            .expect("a connection attempt");
        let conn = timeout(WAIT, connecting)
            .await
            .expect("the handshake finishes in time")?;
        Ok(Raw { endpoint, conn })
    }

    /// Opens the session stream.
    pub async fn open(&self) -> RawStream {
        let (send, recv) = timeout(WAIT, self.conn.open_bi())
            .await
            .expect("the first stream opens in time")
            .expect("the first stream opens");
        RawStream {
            send,
            recv,
            decoder: FrameDecoder::new(limits::MAX_SERVER_FRAME),
        }
    }

    /// Opens the session stream and joins as `name`; panics unless welcomed.
    pub async fn join(&self, name: &str) -> RawStream {
        let mut stream = self.open().await;
        match stream.hello(name).await {
            Some(ServerMsg::Welcome { .. }) => stream,
            other => panic!("{name} was not welcomed: {other:?}"),
        }
    }

    /// Waits (bounded) for the server to close the connection and returns
    /// the application close code. Panics on any other ending, so a test
    /// cannot pass because of a timeout or a transport error.
    pub async fn close_code(&self) -> u64 {
        match timeout(WAIT, self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(close)) => close.error_code.into_inner(),
            Ok(other) => panic!("the connection ended without an application close: {other}"),
            Err(_) => panic!("the server did not close the connection within {WAIT:?}"),
        }
    }

    /// The application close reason, once the connection is closed.
    pub fn close_reason(&self) -> String {
        match self.conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => format!("{other:?}"),
        }
    }
}

impl Raw {
    /// The client's endpoint (to move it to another socket).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.endpoint.close(0u8.into(), b"test over");
    }
}

/// The session stream of a [`Raw`] connection.
pub struct RawStream {
    /// Sending half.
    pub send: quinn::SendStream,
    /// Receiving half.
    pub recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl RawStream {
    /// Writes `bytes` as they are. Errors are returned, not fatal: writing
    /// into a connection the server has just closed is expected.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), quinn::WriteError> {
        match timeout(WAIT, self.send.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => panic!("writing {} bytes took longer than {WAIT:?}", bytes.len()),
        }
    }

    /// Sends a hello for `name` and returns the server's answer.
    pub async fn hello(&mut self, name: &str) -> Option<ServerMsg> {
        self.write(&hello(name))
            .await
            .expect("the hello can be written");
        self.next_msg().await
    }

    /// The next message from the server; `None` when the stream or the
    /// connection ends, or nothing arrives within [`WAIT`].
    pub async fn next_msg(&mut self) -> Option<ServerMsg> {
        self.next_msg_within(WAIT).await
    }

    /// Like [`RawStream::next_msg`] with a shorter wait.
    pub async fn next_msg_within(&mut self, wait: Duration) -> Option<ServerMsg> {
        let frame = timeout(wait, self.decoder.read_frame(&mut self.recv))
            .await
            .ok()?
            .ok()??;
        Some(ServerMsg::decode(&frame).expect("the server sends valid messages"))
    }
}

/// A frame around an arbitrary body, with the correct length prefix.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a test body fits a u32");
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A valid hello frame.
pub fn hello(name: &str) -> Bytes {
    ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        name: name.to_string(),
    }
    .to_frame()
}

/// A valid `Say` frame.
pub fn say(seq: u64, text: &str) -> Bytes {
    ClientMsg::Say {
        seq,
        text: text.to_string(),
    }
    .to_frame()
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing garbage
/// case can be replayed exactly.
pub fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}
