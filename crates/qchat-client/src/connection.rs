//! Reaching a server: the handshake under the pinning verifier, the trust
//! decision, and the hello.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use qchat_proto::{
    limits, ClientMsg, CloseCode, FrameDecoder, RejectReason, ResumePoint, ServerMsg, ALPN,
    PROTOCOL_VERSION,
};
use qchat_tls::{Fingerprint, HostKey, PinVerifier};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::trust::{Decision, TrustError, TrustPlan, TrustState, UnknownServer};

/// How long the handshake and the hello may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why connecting failed. Each message is one sentence that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// As given.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The local UDP socket could not be created.
    #[error("cannot open a local UDP socket: {0}")]
    Socket(std::io::Error),
    /// The TLS or QUIC configuration could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// Nothing answered in time.
    #[error("no answer from {addr} within {secs} s; is `qchat serve` running there, and is UDP port {port} open?", secs = CONNECT_TIMEOUT.as_secs(), port = addr.port())]
    Timeout {
        /// The address tried.
        addr: SocketAddr,
    },
    /// The QUIC connection failed for another reason.
    #[error("cannot connect to {addr}: {reason}")]
    Transport {
        /// The address tried.
        addr: SocketAddr,
        /// What quinn said.
        reason: String,
    },
    /// The server's key is not the pinned one.
    #[error("{0}")]
    KeyChanged(Box<KeyChange>),
    /// An unknown server and no way to ask.
    #[error(
        "{host} is not in {file} and there is no terminal to ask; its key fingerprint is {presented}. \
         Verify it out of band, then connect with --fingerprint {presented} (or --accept-new to trust on first use)"
    )]
    UnknownHost {
        /// The server.
        host: HostKey,
        /// What it presented.
        presented: Fingerprint,
        /// The pin store.
        file: std::path::PathBuf,
    },
    /// An unknown server, refused because strict mode never adds a pin.
    #[error(
        "{host} is not pinned in {file}, and --trust strict refuses servers that are not pinned; \
         its key fingerprint is {presented}. Verify it out of band, then connect with --fingerprint {presented}"
    )]
    NotPinnedStrict {
        /// The server.
        host: HostKey,
        /// What it presented.
        presented: Fingerprint,
        /// The pin store.
        file: std::path::PathBuf,
    },
    /// The server sent a certificate but could not prove it holds the
    /// certificate's private key: the handshake signature did not verify.
    #[error(
        "{host} presented {what} ({presented}) but could not prove it holds the matching private key. \
         Someone may be impersonating the server with a copy of its public certificate, \
         or the server is misconfigured (its certificate and key files do not belong together). \
         Nothing was sent. Tell the server's operator; do not change any pin over this",
        what = if *.pinned { "the certificate pinned for it" } else { "a certificate" }
    )]
    KeyProofFailed {
        /// The server.
        host: HostKey,
        /// The certificate's fingerprint.
        presented: Fingerprint,
        /// Whether that certificate is the pinned one.
        pinned: bool,
    },
    /// The user declined an unknown server.
    #[error("host key verification failed: you did not accept {host}")]
    Declined {
        /// The server.
        host: HostKey,
    },
    /// Reading or writing pins failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The hello failed: refused, or answered with something else.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// On a reconnect, the pin store no longer holds the key this session
    /// accepted (removed or replaced meanwhile): never ask again mid-session.
    #[error(
        "the pin for {host} in {file} was removed or changed while you were connected; \
         reconnect by hand to decide again"
    )]
    PinGone {
        /// The server.
        host: HostKey,
        /// The pin store.
        file: std::path::PathBuf,
    },
}

impl ConnectError {
    /// Whether trying again later cannot help: the key is not the pinned
    /// one, the user said no, or the server refused the name. Everything
    /// else (no answer, a network error, a server shutting down) may pass.
    pub fn is_fatal(&self) -> bool {
        match self {
            ConnectError::Resolve { .. }
            | ConnectError::Socket(_)
            | ConnectError::Timeout { .. }
            | ConnectError::Transport { .. } => false,
            ConnectError::Hello(HelloError::Rejected { reason, .. }) => matches!(
                reason,
                RejectReason::NameTaken
                    | RejectReason::NameInvalid
                    | RejectReason::UnsupportedVersion
                    | RejectReason::NameRegistered
                    | RejectReason::KeyRequired
                    | RejectReason::LinkRefused
                    | RejectReason::Banned
            ),
            ConnectError::Hello(_) => false,
            _ => true,
        }
    }

    /// Whether the server did not understand a version-3 hello: an older
    /// server, to be greeted as version 2 on a new connection.
    pub fn wants_older_protocol(&self) -> bool {
        matches!(
            self,
            ConnectError::Hello(HelloError::Rejected {
                reason: RejectReason::UnsupportedVersion,
                ..
            })
        )
    }
}

/// Everything the user needs to judge a changed key.
#[derive(Debug)]
pub struct KeyChange {
    /// The server: the address the pin is stored under.
    pub host: HostKey,
    /// The node of the server's cluster that presented the key, when it
    /// is not `host` itself (one pin covers every node).
    pub node: Option<HostKey>,
    /// The pinned fingerprint.
    pub pinned: Fingerprint,
    /// What the server presented.
    pub presented: Fingerprint,
    /// When the pin was first stored (RFC 3339), if stored.
    pub first_seen: Option<String>,
    /// Whether the pin was verified out of band.
    pub verified: bool,
    /// The pin store.
    pub file: std::path::PathBuf,
    /// The pin's line (0 when the expectation came from --fingerprint).
    pub line: usize,
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KeyChange {
            host,
            node,
            pinned,
            presented,
            first_seen,
            verified,
            file,
            line,
        } = self;
        let (file, line, verified) = (file.as_path(), *line, *verified);
        f.write_str(&key_changed_message(
            host,
            node.as_ref(),
            pinned,
            presented,
            first_seen,
            verified,
            file,
            line,
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn key_changed_message(
    host: &HostKey,
    node: Option<&HostKey>,
    pinned: &Fingerprint,
    presented: &Fingerprint,
    first_seen: &Option<String>,
    verified: bool,
    file: &std::path::Path,
    line: usize,
) -> String {
    let origin = if line == 0 {
        "the fingerprint given with --fingerprint".to_string()
    } else {
        format!(
            "the pin in {}:{} (first stored {}, {})",
            file.display(),
            line,
            first_seen.as_deref().unwrap_or("at an unknown time"),
            if verified {
                "verified out of band"
            } else {
                "trusted on first use, never verified"
            }
        )
    };
    // A node of a cluster answers to the pin of the address the user
    // gave: every node must present that one key.
    let who = match node {
        Some(node) if node != host => {
            format!("{node} (a node of {host}, which must present the key pinned for {host})")
        }
        _ => host.to_string(),
    };
    format!(
        "@@@ WARNING: THE SERVER'S KEY HAS CHANGED @@@\n\
         The key {who} presented does not match {origin}.\n\
         Someone may be intercepting this connection (a man-in-the-middle attack), or the \
         operator may have replaced the server's key on purpose. Nothing was sent.\n  \
         pinned:    {pinned}\n  \
         presented: {presented}\n\
         Ask the operator for the new fingerprint over a channel you trust (they can run `qchat fingerprint`). \
         Only if it matches, replace the pin with:\n  \
         qchat known-hosts replace {host} --fingerprint {presented}"
    )
}

/// A member in the room, with the connection its network task will own.
pub struct Joined {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// The session stream, sending half.
    pub send: quinn::SendStream,
    /// The session stream, receiving half.
    pub recv: quinn::RecvStream,
    /// The frame decoder, which may already hold bytes after the welcome.
    pub decoder: FrameDecoder,
    /// The server's name.
    pub server_name: String,
    /// Our name as registered.
    pub name: String,
    /// The room when we joined.
    pub members: Vec<String>,
    /// Everything the welcome said.
    pub welcome: Welcome,
}

/// Socket buffer size asked for, each way: a client receives the whole
/// room's traffic, and the kernel's default (~208 KiB) overflows under a
/// burst of it, which turns into QUIC loss recovery and late messages. The
/// kernel caps the request at `net.core.rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// A client endpoint bound to the wildcard address of `target`'s family,
/// with socket buffers as large as the kernel allows up to 4 MiB (best
/// effort: a smaller buffer is not a reason to fail).
pub fn client_endpoint(target: SocketAddr) -> Result<quinn::Endpoint, ConnectError> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        client_socket(target)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(ConnectError::Socket)
}

/// A fresh UDP socket for a client endpoint aimed at `target`: bound to a
/// new port of the wildcard address, with large buffers. Used at start and
/// for [`quinn::Endpoint::rebind`].
pub fn client_socket(target: SocketAddr) -> Result<std::net::UdpSocket, ConnectError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .map_err(ConnectError::Socket)?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the socket receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the socket send buffer");
    }
    socket.bind(&bind.into()).map_err(ConnectError::Socket)?;
    Ok(socket.into())
}

/// Resolves `host` to the address to dial.
pub async fn resolve(host: &HostKey) -> Result<SocketAddr, ConnectError> {
    let mut addrs = tokio::net::lookup_host((host.host.as_str(), host.port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: host.to_string(),
            source,
        })?;
    addrs.next().ok_or_else(|| ConnectError::Resolve {
        host: host.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
    })
}

/// Moves `endpoint` to a socket of `target`'s address family if it is on
/// the other one: a cluster's nodes may be listed by IPv4 and IPv6
/// addresses alike. Only between connections (a rebind migrates a live
/// one).
pub fn aim(endpoint: &quinn::Endpoint, target: SocketAddr) -> Result<(), ConnectError> {
    match endpoint.local_addr() {
        Ok(local) if local.is_ipv6() != target.is_ipv6() => endpoint
            .rebind(client_socket(target)?)
            .map_err(ConnectError::Socket),
        _ => Ok(()),
    }
}

/// Performs the QUIC handshake, enforcing `plan`, and — for an unknown
/// server — asks `decide` before anything else is sent. Returns the
/// connection and how far the server is trusted.
pub async fn connect<D>(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    plan: &TrustPlan,
    decide: D,
) -> Result<(quinn::Connection, TrustState, Fingerprint), ConnectError>
where
    D: FnOnce(UnknownServer) -> Decision + Send + 'static,
{
    connect_to(endpoint, addr, &plan.host, plan, decide).await
}

/// [`connect`] to `node`, an address of the server `plan` is for (a node
/// of its cluster, or its own address): the handshake must show the key
/// pinned for `plan.host`, and a pin made on first use is stored under
/// `plan.host`, whichever node answered.
pub async fn connect_to<D>(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    node: &HostKey,
    plan: &TrustPlan,
    decide: D,
) -> Result<(quinn::Connection, TrustState, Fingerprint), ConnectError>
where
    D: FnOnce(UnknownServer) -> Decision + Send + 'static,
{
    let verifier = PinVerifier::new(plan.expectation());
    // A server the user has not yet decided to trust does not learn who
    // the user is: the key is only shown to a pinned (or pinned-on-first-
    // use) server.
    let me = plan.me.as_deref().filter(|_| !plan.needs_decision());
    let mut config = qchat_tls::quic_client_config(Arc::clone(&verifier), &[ALPN], me)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    config.transport_config(client_transport());
    // The name only fills in SNI: with a pinned key it carries no trust.
    let connecting = endpoint
        .connect_with(config, addr, &node.host)
        .map_err(|e| ConnectError::Transport {
            addr,
            reason: e.to_string(),
        })?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(ConnectError::Timeout { addr }),
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(handshake_error(plan, node, &verifier, addr, e)),
    };
    let presented = verifier
        .presented()
        .ok_or_else(|| ConnectError::Transport {
            addr,
            reason: "the server presented no certificate".into(),
        })?;

    let decision = if plan.needs_decision() {
        let info = UnknownServer {
            host: plan.host.clone(),
            addr,
            fingerprint: presented,
            known_hosts: plan.known_hosts.clone(),
        };
        // The prompt reads the terminal: a blocking read belongs on a
        // blocking thread, never on a runtime worker.
        let decision = tokio::task::spawn_blocking(move || decide(info))
            .await
            .unwrap_or(Decision::Refuse);
        if decision == Decision::Refuse {
            conn.close(
                qchat_proto::CloseCode::Normal.code().into(),
                b"host key not accepted",
            );
            return Err(ConnectError::Declined {
                host: plan.host.clone(),
            });
        }
        decision
    } else {
        Decision::Accept
    };
    let state = plan.record(presented, decision)?;
    Ok((conn, state, presented))
}

fn handshake_error(
    plan: &TrustPlan,
    node: &HostKey,
    verifier: &PinVerifier,
    addr: SocketAddr,
    e: quinn::ConnectionError,
) -> ConnectError {
    if let Some(presented) = verifier.presented() {
        match plan.expectation() {
            qchat_tls::Expectation::Pinned(pinned) if pinned != presented => {
                let (first_seen, verified, line) = match &plan.pin {
                    Some(pin) if plan.given.is_none() => (
                        pin.first_seen
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok(),
                        pin.verified,
                        pin.line,
                    ),
                    _ => (None, true, 0),
                };
                return ConnectError::KeyChanged(Box::new(KeyChange {
                    host: plan.host.clone(),
                    node: (*node != plan.host).then(|| node.clone()),
                    pinned,
                    presented,
                    first_seen,
                    verified,
                    file: plan.known_hosts.clone(),
                    line,
                }));
            }
            qchat_tls::Expectation::Unknown { accept: false } => {
                let (host, file) = (plan.host.clone(), plan.known_hosts.clone());
                return if plan.mode == crate::TrustMode::Strict {
                    ConnectError::NotPinnedStrict {
                        host,
                        presented,
                        file,
                    }
                } else {
                    ConnectError::UnknownHost {
                        host,
                        presented,
                        file,
                    }
                };
            }
            expectation if is_bad_key_proof(&e) => {
                return ConnectError::KeyProofFailed {
                    host: plan.host.clone(),
                    presented,
                    pinned: expectation == qchat_tls::Expectation::Pinned(presented),
                };
            }
            _ => {}
        }
    }
    match e {
        quinn::ConnectionError::TimedOut => ConnectError::Timeout { addr },
        other => ConnectError::Transport {
            addr,
            reason: other.to_string(),
        },
    }
}

/// Whether the handshake failed because the server's signature over the
/// handshake did not verify against its certificate's key: rustls then
/// sends the `decrypt_error` alert (51), which QUIC reports as crypto error
/// 0x133. Checked only after the verifier accepted the certificate, so it
/// is the key proof, not the certificate, that failed.
fn is_bad_key_proof(e: &quinn::ConnectionError) -> bool {
    const DECRYPT_ERROR: u8 = 51;
    matches!(
        e,
        quinn::ConnectionError::TransportError(t)
            if u64::from(t.code) == u64::from(quinn::TransportErrorCode::crypto(DECRYPT_ERROR))
    )
}

/// How often the client sends a keep-alive. Every keep-alive is answered
/// (acknowledged) by a live server, so a second of it lets the network task
/// tell "no answer" from "nothing to say" within a few seconds, well before
/// the idle timeout.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Client transport settings: keep-alive well inside the idle timeout so a
/// quiet chat is never dropped, and a dead server is noticed in seconds.
pub fn client_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(limits::IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(CLIENT_KEEP_ALIVE.min(limits::KEEP_ALIVE)));
    t.max_concurrent_bidi_streams(0u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    Arc::new(t)
}

/// What the server said when it let us in.
#[derive(Debug, Clone)]
pub struct Welcome {
    /// The protocol version the server speaks with us.
    pub version: u32,
    /// The server's name.
    pub server_name: String,
    /// Our name as registered.
    pub name: String,
    /// The room when we joined (possibly truncated in huge rooms).
    pub members: Vec<String>,
    /// What a version-3 server adds; `None` from an older server.
    pub v3: Option<WelcomeV3>,
}

/// The version-3 part of a welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeV3 {
    /// The protocol version the server speaks on this connection (3 or
    /// more): what it can be asked.
    pub version: u32,
    /// The room log's identity.
    pub log_id: [u8; 16],
    /// The newest message id when we joined.
    pub last_id: u64,
    /// Messages per second we may send (0 = unlimited).
    pub rate: u32,
    /// Messages we may send at once.
    pub burst: u32,
    /// Longest message text accepted, in bytes.
    pub max_message: u32,
    /// Seconds our name is held for a reconnect.
    pub grace_secs: u32,
}

/// How to say hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// Version 2 (`Hello`): no ids, no resume; for old servers.
    V2,
    /// Version 3 (`HelloV3`).
    V3 {
        /// The process's instance id (see [`new_instance`]).
        instance: [u8; 16],
        /// Where to resume, if anywhere.
        resume: Option<ResumePoint>,
    },
    /// Version 4 with a link code (`HelloLink`): a new device joining a
    /// registered name. Only for the first join: a reconnect greets as
    /// `V3`, since the code is used up and the key already linked.
    Link {
        /// As for `V3`.
        instance: [u8; 16],
        /// As for `V3`.
        resume: Option<ResumePoint>,
        /// The code from `/device link`.
        code: String,
    },
}

/// A random instance id for this process: with a message's number, the key
/// that makes a re-send after a reconnect harmless.
pub fn new_instance() -> [u8; 16] {
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        // No OS randomness (never seen in practice): a weaker id still
        // tells this process from others almost surely.
        for b in &mut id {
            *b = fastrand::u8(..);
        }
    }
    id
}

/// Says hello as version 2 on an open session stream and waits for the
/// answer. Shared by network members ([`join`]) and the operator's
/// in-process link.
pub async fn hello<W, R>(
    send: &mut W,
    recv: &mut R,
    name: &str,
) -> Result<(FrameDecoder, Welcome), HelloError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    hello_as(send, recv, name, &Greeting::V2).await
}

/// Says hello with `greeting` and waits for the welcome. After a version-3
/// welcome the replay follows on the stream: the session reads it.
pub async fn hello_as<W, R>(
    send: &mut W,
    recv: &mut R,
    name: &str,
    greeting: &Greeting,
) -> Result<(FrameDecoder, Welcome), HelloError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let frame = match greeting {
        Greeting::V2 => ClientMsg::Hello {
            version: PROTOCOL_VERSION.min(2),
            name: name.to_string(),
        },
        Greeting::V3 { instance, resume } => ClientMsg::HelloV3 {
            version: PROTOCOL_VERSION.max(3),
            name: name.to_string(),
            instance: *instance,
            resume: resume.clone(),
        },
        Greeting::Link {
            instance,
            resume,
            code,
        } => ClientMsg::HelloLink {
            version: PROTOCOL_VERSION.max(4),
            name: name.to_string(),
            instance: *instance,
            resume: resume.clone(),
            code: code.clone(),
        },
    }
    .to_frame();
    send.write_all(&frame).await.map_err(HelloError::Io)?;
    let mut decoder = FrameDecoder::new(limits::MAX_SERVER_FRAME);
    let first = match decoder.read_frame(recv).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(HelloError::Protocol(
                "the server closed the stream before answering".into(),
            ))
        }
        Err(qchat_proto::ReadError::Io(e)) => return Err(HelloError::Io(e)),
        Err(e) => return Err(HelloError::Protocol(e.to_string())),
    };
    match ServerMsg::decode(&first) {
        Ok(ServerMsg::Welcome {
            version,
            server_name,
            name,
            members,
        }) => Ok((
            decoder,
            Welcome {
                version,
                server_name,
                name,
                members,
                v3: None,
            },
        )),
        Ok(ServerMsg::WelcomeV3 {
            version,
            server_name,
            name,
            members,
            log_id,
            last_id,
            rate,
            burst,
            max_message,
            grace_secs,
        }) => Ok((
            decoder,
            Welcome {
                version,
                server_name,
                name,
                members,
                v3: Some(WelcomeV3 {
                    version,
                    log_id,
                    last_id,
                    rate,
                    burst,
                    max_message,
                    grace_secs,
                }),
            },
        )),
        Ok(ServerMsg::Rejected { reason, detail }) => Err(HelloError::Rejected { reason, detail }),
        Ok(other) => Err(HelloError::Protocol(format!(
            "expected a welcome, got {other:?}"
        ))),
        Err(e) => Err(HelloError::Protocol(e.to_string())),
    }
}

/// Why a hello failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The stream failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The server refused us.
    #[error("the server refused to let you in: {detail}")]
    Rejected {
        /// The cause.
        reason: RejectReason,
        /// The server's words.
        detail: String,
    },
    /// The server answered with something other than a welcome.
    #[error("the server broke the protocol during the hello: {0}")]
    Protocol(String),
}

/// Opens the session stream and says hello as version 2. The server learns
/// of a stream only when data arrives on it, so the hello is written at
/// once.
pub async fn join(conn: quinn::Connection, name: &str) -> Result<Joined, ConnectError> {
    join_as(conn, name, &Greeting::V2).await
}

/// Opens the session stream and says hello with `greeting`. An older
/// server that does not know the version-3 hello closes the connection as
/// a protocol error: that is reported as
/// [`RejectReason::UnsupportedVersion`] (see
/// [`ConnectError::wants_older_protocol`]).
///
/// A hello that fails closes its connection at once: merely dropped, it
/// would keep the server waiting for an acknowledgement that never comes,
/// holding one of this address's few slots for connections not yet in the
/// room — and a user retrying a name, or a client reconnecting, would be
/// refused meanwhile.
pub async fn join_as(
    conn: quinn::Connection,
    name: &str,
    greeting: &Greeting,
) -> Result<Joined, ConnectError> {
    let joined = hello_on(conn.clone(), name, greeting).await;
    if joined.is_err() {
        conn.close(qchat_proto::CloseCode::Normal.code().into(), b"");
    }
    joined
}

async fn hello_on(
    conn: quinn::Connection,
    name: &str,
    greeting: &Greeting,
) -> Result<Joined, ConnectError> {
    let addr = conn.remote_address();
    let attempt = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| ConnectError::Transport {
            addr,
            reason: e.to_string(),
        })?;
        let answer = hello_as(&mut send, &mut recv, name, greeting).await;
        Ok::<_, ConnectError>((send, recv, answer))
    };
    let (send, recv, answer) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| ConnectError::Timeout { addr })??;
    match answer {
        Ok((decoder, w)) => Ok(Joined {
            conn,
            send,
            recv,
            decoder,
            server_name: w.server_name.clone(),
            name: w.name.clone(),
            members: w.members.clone(),
            welcome: w,
        }),
        Err(HelloError::Io(_) | HelloError::Protocol(_))
            if *greeting != Greeting::V2 && closed_as_protocol_error(&conn).await =>
        {
            Err(HelloError::Rejected {
                reason: RejectReason::UnsupportedVersion,
                detail: "the server does not speak protocol version 3".into(),
            }
            .into())
        }
        Err(HelloError::Io(e)) => Err(closed_error(&conn, addr, &e)),
        Err(other) => Err(other.into()),
    }
}

/// Whether the server closed the connection over a protocol error (waiting
/// a moment for its close frame, which follows the end of its stream).
async fn closed_as_protocol_error(conn: &quinn::Connection) -> bool {
    let reason = match conn.close_reason() {
        Some(r) => r,
        None => match tokio::time::timeout(Duration::from_secs(1), conn.closed()).await {
            Ok(r) => r,
            Err(_) => return false,
        },
    };
    matches!(reason, quinn::ConnectionError::ApplicationClosed(c)
        if CloseCode::from_code(c.error_code.into_inner()) == Some(CloseCode::ProtocolError))
}

fn closed_error(conn: &quinn::Connection, addr: SocketAddr, e: &std::io::Error) -> ConnectError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => HelloError::Rejected {
            reason: RejectReason::Other(0),
            detail: String::from_utf8_lossy(&close.reason).into_owned(),
        }
        .into(),
        _ => ConnectError::Transport {
            addr,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(reason: RejectReason) -> ConnectError {
        HelloError::Rejected {
            reason,
            detail: String::new(),
        }
        .into()
    }

    /// A reconnect that meets a name now registered to another key, or a
    /// server that now requires keys, would be refused the same way for
    /// ever: it ends instead of retrying.
    #[test]
    fn refusals_that_cannot_pass_by_waiting_are_fatal() {
        for reason in [
            RejectReason::NameTaken,
            RejectReason::NameInvalid,
            RejectReason::NameRegistered,
            RejectReason::KeyRequired,
            RejectReason::LinkRefused,
            RejectReason::Banned,
        ] {
            assert!(rejected(reason).is_fatal(), "{reason:?}");
        }
        assert!(!rejected(RejectReason::ShuttingDown).is_fatal());
    }
}
