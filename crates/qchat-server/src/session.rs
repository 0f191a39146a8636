//! One member's session, from hello to close: the hello, then a reader and
//! a writer running side by side so that receiving never waits for sending.
//!
//! The session itself works on any pair of byte streams ([`run_stream`]): a
//! QUIC stream for a network member ([`serve_quic`]), or an in-process pipe
//! for the operator sitting at the server ([`crate::Server::join_local`]).
//! Both go through exactly the same hello, limits and room calls.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qchat_proto::rate::TokenBucket;
use qchat_proto::{
    frame::ReadError, ClientMsg, CloseCode, DecodeError, DeviceInfo, DeviceOp, FrameDecoder,
    RejectReason, ServerMsg, ALPN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::gate::Permit;
use crate::log::{LogItem, Pending};
use crate::registry::{Claim, Claimed, Refusal};
use crate::room::{Ending, MemberId, Peer, Rejection, Room};
use crate::rooms::{Actor, Channel};
use crate::tally::Kind;
use crate::writer::{write_loop, QuicSink, Sink, FLUSH_TIMEOUT};
use crate::ServerOptions;

/// Why a session ended abnormally: the close code sent, and the one log
/// line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("the client did not negotiate the qchat ALPN")]
    WrongAlpn,
    #[error("{0}")]
    Frame(#[from] qchat_proto::FrameError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("kept more than {0} messages waiting: flooding")]
    Flood(usize),
    #[error("connection lost: {0}")]
    Lost(String),
}

impl SessionError {
    fn code(&self) -> CloseCode {
        match self {
            SessionError::HelloTimeout(_) => CloseCode::HelloTimeout,
            SessionError::Frame(qchat_proto::FrameError::TooLarge { .. }) => {
                CloseCode::FrameTooLarge
            }
            SessionError::Flood(_) => CloseCode::Flood,
            SessionError::Lost(_) => CloseCode::Normal,
            _ => CloseCode::ProtocolError,
        }
    }
}

/// How a session ended: what to put in the close frame.
#[derive(Debug)]
pub(crate) struct End {
    pub code: CloseCode,
    pub reason: String,
}

/// Serves one incoming QUIC connection until it ends. Never panics on
/// anything the peer sends; every failure ends this connection only.
///
/// A plain function returning the future, not an `async fn`: an `async fn`
/// keeps its arguments in the task beside the block that moved them, and
/// this future lives as long as the member, ten thousand times over.
pub(crate) fn serve_quic(
    incoming: quinn::Incoming,
    permit: Permit,
    room: Arc<Room>,
    options: Arc<ServerOptions>,
) -> impl Future<Output = ()> + Send {
    let peer = incoming.remote_address();
    let span = tracing::info_span!("conn", %peer, name = tracing::field::Empty);
    // What the task captures it keeps until it ends, even once moved out;
    // boxed, the 384-byte `Incoming` costs a pointer after the handshake.
    let incoming = Box::new(incoming);
    async move {
        let conn = match unbox(incoming).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
        };
        // One deadline for opening the stream and saying hello: a peer that
        // opens its stream late has that much less time for the hello.
        let deadline = Instant::now() + options.hello_timeout;
        // Taken out of the result before the session runs: a `match` on
        // the result would keep it (64 bytes, the streams already moved
        // out) in the task for the member's whole stay.
        let (send, recv) = match open_session(&conn, &options, deadline).await {
            Ok(streams) => streams,
            Err(e) => {
                let end = before_join(&e, Some(&permit));
                conn.close(end.code.code().into(), end.reason.as_bytes());
                return;
            }
        };
        let peer = Box::new(Peer {
            addr: Some(conn.remote_address()),
            operator: false,
            version: PROTOCOL_VERSION,
            instance: None,
            conn: Some(conn.clone()),
            key: client_key(&conn),
        });
        let sink = QuicSink(send);
        let end = run_stream(sink, recv, peer, &room, &options, deadline, Some(&permit)).await;
        conn.close(end.code.code().into(), end.reason.as_bytes());
    }
    .instrument(span)
}

/// Moves a value out of its box and frees the box now, not when the
/// variable holding it goes out of scope.
#[allow(clippy::boxed_local)] // the box is the point: it is freed here
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// The key the client proved in the handshake, if it presented one.
fn client_key(conn: &quinn::Connection) -> Option<qchat_tls::Fingerprint> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<quinn::rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    qchat_tls::client_fingerprint(&chain)
}

/// Checks the ALPN and accepts the session stream within the hello deadline.
async fn open_session(
    conn: &quinn::Connection,
    options: &ServerOptions,
    deadline: Instant,
) -> Result<(quinn::SendStream, quinn::RecvStream), SessionError> {
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() != Some(ALPN) {
        return Err(SessionError::WrongAlpn);
    }
    match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Err(_) => Err(SessionError::HelloTimeout(options.hello_timeout)),
        Ok(Err(e)) => Err(SessionError::Lost(e.to_string())),
        Ok(Ok(streams)) => Ok(streams),
    }
}

/// Ends a connection that has not joined. A flood repeats these by the
/// thousand (silent connections, garbage, refused names), so only the first
/// of each kind from an address in a window is logged in full; the gate's
/// tally sums up the rest.
fn before_join(e: &SessionError, permit: Option<&Permit>) -> End {
    if first_before_join(e.code(), permit) {
        failed(e)
    } else {
        tracing::debug!(code = e.code().code(), "closing: {e}");
        End {
            code: e.code(),
            reason: e.to_string(),
        }
    }
}

/// Whether an ending before the join deserves its own log line.
fn first_before_join(code: CloseCode, permit: Option<&Permit>) -> bool {
    match permit {
        Some(p) if code != CloseCode::Normal => p.gate().note(Kind::ClosedBeforeJoin(code), p.ip()),
        _ => true,
    }
}

fn failed(e: &SessionError) -> End {
    if e.code() == CloseCode::Normal {
        tracing::debug!("{e}");
    } else {
        tracing::info!(code = e.code().code(), "closing: {e}");
    }
    End {
        code: e.code(),
        reason: e.to_string(),
    }
}

/// A pipe (the operator's in-process link).
pub(crate) struct PipeSink<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> Sink for PipeSink<W> {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.write_all(&chunk).await
    }

    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// What the hello leaves a joined member's session.
struct Entered {
    version: u32,
    instance: Option<[u8; 16]>,
    key: Option<qchat_tls::Fingerprint>,
    ending: Arc<Ending>,
    rx: mpsc::Receiver<Bytes>,
    id: MemberId,
    name: Arc<str>,
}

/// The hello by `hello_deadline`, then the join: the member is in the
/// room, or the connection's ending is returned.
#[allow(clippy::too_many_arguments)] // the session's parts, each used
async fn enter<S: Sink, R: AsyncRead + Unpin>(
    send: &mut S,
    recv: &mut R,
    decoder: &mut FrameDecoder,
    peer: Box<Peer>,
    room: &Room,
    options: &ServerOptions,
    hello_deadline: Instant,
    permit: Option<&Permit>,
) -> Result<Entered, End> {
    let first = match tokio::time::timeout_at(hello_deadline, read(decoder, recv)).await {
        Err(_) => {
            return Err(before_join(
                &SessionError::HelloTimeout(options.hello_timeout),
                permit,
            ))
        }
        Ok(Err(e)) => return Err(before_join(&e, permit)),
        Ok(Ok(None)) => {
            return Err(before_join(
                &SessionError::Lost("stream closed before the hello".into()),
                permit,
            ))
        }
        Ok(Ok(Some(f))) => f,
    };
    let (version, name, instance, resume, link) = match ClientMsg::decode(&first) {
        // The first hello speaks at most version 2, whatever number it
        // carries: version 3 starts with its own hello.
        Ok(ClientMsg::Hello { version, name }) => (version.min(2), name, None, None, None),
        Ok(ClientMsg::HelloV3 {
            version,
            name,
            instance,
            resume,
        }) if version >= 3 => (version, name, Some(instance), resume, None),
        Ok(ClientMsg::HelloLink {
            version,
            name,
            instance,
            resume,
            code,
        }) if version >= 4 => (version, name, Some(instance), resume, Some(code)),
        Ok(ClientMsg::HelloLink { .. }) => {
            return Err(before_join(
                &SessionError::Protocol("a link hello with a version before 4"),
                permit,
            ))
        }
        Ok(ClientMsg::HelloV3 { .. }) => {
            return Err(before_join(
                &SessionError::Protocol("a version-3 hello with an older version"),
                permit,
            ))
        }
        Ok(_) => {
            return Err(before_join(
                &SessionError::Protocol("data before the hello"),
                permit,
            ))
        }
        Err(e) => return Err(before_join(&e.into(), permit)),
    };
    if version < MIN_PROTOCOL_VERSION {
        let detail = format!(
        "protocol version {version} is not supported; this server speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
    );
        return Err(reject(send, RejectReason::UnsupportedVersion, detail).await);
    }

    let operator = peer.operator || crate::moderation::is_operator(room, options, peer.key);
    let peer = Peer {
        version: version.min(PROTOCOL_VERSION),
        instance,
        operator,
        ..*peer
    };
    let key = peer.key;
    let claimed = match admit(room, options, &peer, &name, link.as_deref()).await {
        Ok(c) => c,
        Err(rej) => {
            if first_before_join(CloseCode::Rejected, permit) {
                tracing::info!(name = %qchat_proto::text::sanitize(&name), "hello refused: {}", rej.detail);
            }
            return Err(reject(send, rej.reason, rej.detail).await);
        }
    };
    // The new queue holds the welcome, the history or replay, and the end
    // of the replay, before anything else can fill it.
    let replay = if resume.is_some() {
        options.replay_max
    } else {
        options.history
    };
    // The lobby owns the queue (its removal of the member must close it);
    // another room the member joins asks the lobby for it.
    let (tx, rx) = mpsc::channel(options.queue_for(replay));
    let ending = Ending::new();
    let joined = match room.join(&name, tx, Arc::clone(&ending), peer, resume) {
        Ok(j) => j,
        Err(rej) => {
            if let Some(c) = claimed {
                let registry = Arc::clone(room.registry());
                let _ = tokio::task::spawn_blocking(move || registry.undo(c)).await;
            }
            settle_online(room, &name).await;
            if first_before_join(CloseCode::Rejected, permit) {
                tracing::info!(name = %qchat_proto::text::sanitize(&name), "hello refused: {}", rej.detail);
            }
            return Err(reject(send, rej.reason, rej.detail).await);
        }
    };
    // Back within its grace: the name's entry says so at once.
    settle_online(room, &joined.name).await;
    Ok(Entered {
        version,
        instance,
        key,
        ending,
        rx,
        id: joined.id,
        name: joined.name,
    })
}

/// Runs one member's session over a pair of streams: the hello by
/// `hello_deadline`, the room, then reader and writer side by side until the
/// member leaves or is removed. The `permit`, if any, is told when the
/// member has joined.
///
/// A plain function returning the future, as [`serve_quic`] is: an `async
/// fn` would keep the streams twice in every member's task, once as
/// arguments and once as the locals they are moved into.
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
pub(crate) fn run_stream<'a, S, R>(
    mut send: S,
    mut recv: R,
    peer: Box<Peer>,
    room: &'a Room,
    options: &'a ServerOptions,
    hello_deadline: Instant,
    permit: Option<&'a Permit>,
) -> impl Future<Output = End> + 'a
where
    S: Sink + 'a,
    R: AsyncRead + Unpin + 'a,
{
    async move {
        let mut decoder = FrameDecoder::new(options.max_frame);
        // The hello and the join are a future of their own, boxed and freed
        // once the member is in: their locals (the hello's frame, its name
        // and link code, the claim, the peer) live across several waits, and
        // the compiler gives such locals a place of their own in the task
        // that no later wait reuses — ~440 bytes of every member's task for
        // its whole stay, inline. Its result is taken apart in the same
        // statement: a `Result` bound to a local and then matched would
        // stay in the task (112 bytes) for the member's whole stay.
        let Entered {
            version,
            instance,
            key,
            ending,
            rx,
            id,
            name,
        } = match Box::pin(enter(
            &mut send,
            &mut recv,
            &mut decoder,
            peer,
            room,
            options,
            hello_deadline,
            permit,
        ))
        .await
        {
            Ok(e) => e,
            Err(end) => return end,
        };
        tracing::Span::current().record(
            "name",
            tracing::field::display(qchat_proto::text::sanitize(&name)),
        );
        tracing::info!("joined");
        if let Some(permit) = permit {
            permit.joined();
        }

        let me = Speaker {
            name,
            instance,
            ending: Arc::clone(&ending),
            signer: Signer::new(key, instance),
        };
        // Reader and writer are boxed because they are raced and then
        // awaited again: pinned on the heap they can be, and the task holds
        // two pointers while they run.
        let mut reader = Box::pin(reader(
            id,
            version,
            me,
            &ending,
            &mut decoder,
            &mut recv,
            room,
            options,
        ));
        let mut writer = Box::pin(write_loop(&mut send, rx, ending.backlog()));
        // The room's removal of the member is watched in one place, the
        // reader, which then ends at once: a second wait on it here would be
        // another ~100 bytes in every member's task for an event that happens
        // once or never.
        let outcome = tokio::select! {
            outcome = &mut reader => {
                if ending.get().is_some() {
                    // Removed by the room (kick, slow reader): give the writer
                    // a moment to deliver the last words, then close
                    // regardless. Boxed: a timer held for the member's whole
                    // stay for a wait at its end.
                    let _ = Box::pin(tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)).await;
                } else {
                    (&mut writer).await;
                }
                outcome
            }
            // The writer stops first when the connection fails under it or the
            // room closes the queue; the reader follows at once in both cases
            // (its read fails, or the removal ends it).
            () = &mut writer => reader.await,
        };
        if let Some(key) = key {
            // The name was in use until now: its expiry counts from here.
            let registry = Arc::clone(room.registry());
            let _ = tokio::task::spawn_blocking(move || registry.touch(key)).await;
        }
        if let Some((code, reason)) = ending.get() {
            tracing::info!(code = code.code(), "removed: {reason}");
            return End {
                code: *code,
                reason: reason.clone(),
            };
        }
        match outcome {
            Ok(reason) => {
                tracing::info!(reason = %qchat_proto::text::sanitize(&reason), "left");
                let code = if room.is_closed() {
                    CloseCode::ShuttingDown
                } else {
                    CloseCode::Normal
                };
                End {
                    code,
                    reason: code.describe().into(),
                }
            }
            Err(e) => failed(&e),
        }
    }
}

/// The member's reader: the read loop until the member leaves, is lost or
/// is removed by the room, then its departure from the lobby and its rooms.
///
/// A plain function returning the future: what an `async fn` takes it keeps
/// twice (the argument and the local it is moved into), and the `Speaker`
/// is the largest part of an idle member's reader.
#[allow(clippy::too_many_arguments)] // the session's parts, each used
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
fn reader<'a, R: AsyncRead + Unpin + 'a>(
    id: MemberId,
    version: u32,
    mut me: Speaker,
    ending: &'a Ending,
    decoder: &'a mut FrameDecoder,
    recv: &'a mut R,
    room: &'a Room,
    options: &'a ServerOptions,
) -> impl Future<Output = Result<String, SessionError>> + 'a {
    async move {
        // The rooms besides the lobby this member is in.
        let mut mine: Vec<Arc<Channel>> = Vec::new();
        let outcome = tokio::select! {
            outcome = read_loop(id, version, &mut me, decoder, recv, room, options, &mut mine) => Some(outcome),
            // Removed by the room (kick, shutdown): nothing more the member
            // sends matters, and waiting for it to stop talking would only
            // hold the session open; the writer delivers the last words.
            () = ending.wait() => None,
        };
        let Some(outcome) = outcome else {
            let why = ending.get().map_or(String::new(), |(_, r)| r.clone());
            for ch in &mine {
                ch.leave(id, None, &why, false);
            }
            return Ok(String::new());
        };
        let why = match &outcome {
            Ok(reason) => reason.clone(),
            Err(e) => format!("disconnected: {e}"),
        };
        for ch in &mine {
            match &outcome {
                // Its client rejoins with the room's point: as in the
                // lobby, the room keeps its place meanwhile.
                Err(SessionError::Lost(_)) => ch.lose(id, &why, options.grace),
                _ => {
                    ch.leave(id, None, &why, false);
                }
            }
        }
        let last = room.member_name(id);
        match &outcome {
            Ok(reason) => room.leave(id, reason),
            // A connection that dropped may come back: the room keeps the
            // member's name for a while.
            Err(SessionError::Lost(_)) => room.lose(id, &why),
            Err(_) => room.leave(id, &why),
        }
        if let Some(last) = last {
            // Boxed: in a cluster this is a round trip to NATS whose
            // future is kilobytes, and inline it would be reserved in
            // every member's reader for its whole stay.
            Box::pin(settle_online(room, &last)).await;
        }
        outcome
    }
}

/// Whether the hello's name may be used by this peer: a key claims it (or
/// already holds it), a guest may use it only if nobody holds it, and a
/// server that requires keys refuses guests — but never its own host, who
/// sits at the server. `Some` is a claim to take back if the join fails.
async fn admit(
    room: &Room,
    options: &ServerOptions,
    peer: &Peer,
    name: &str,
    link: Option<&str>,
) -> Result<Option<Claimed>, Rejection> {
    // A node cut off from its cluster admits nobody, and says so, before
    // it tries the cluster's names it cannot reach.
    if let Some(why) = room.cut_off_reason() {
        return Err(Rejection {
            reason: RejectReason::ShuttingDown,
            detail: why,
        });
    }
    // An invalid name is the room's to refuse, with its own reason; it is
    // never claimed.
    crate::moderation::check_banned(room, peer)?;
    if qchat_proto::names::validate(name).is_err() {
        return Ok(None);
    }
    let other = other_device(room, options, peer, name);
    let claimed = match link {
        Some(code) => admit_link(room, options, peer, name, code).await,
        None => admit_claim(room, options, peer, name, other.is_some()).await,
    }?;
    // In a cluster the name must also be free on every other node.
    if let Err(rej) = hold_online(room, options, peer, name).await {
        if let Some(c) = claimed {
            let registry = Arc::clone(room.registry());
            let _ = tokio::task::spawn_blocking(move || registry.undo(c)).await;
        }
        return Err(rej);
    }
    // Another device of the name is in the room under it: the newest
    // device takes the name over (one member per name), and the older one
    // is told why and stays away rather than taking it back.
    let other = other.or_else(|| other_device(room, options, peer, name));
    if let Some(other) = other {
        room.end_key(
            other,
            name,
            "you joined under this name from another of your devices; only one device can be in the room under a name",
        );
    }
    Ok(claimed)
}

/// In a cluster, holds `name` for this member across the nodes (see
/// [`crate::cluster::names`]): a member of another node under it refuses
/// the name here as a member of this node would.
async fn hold_online(
    room: &Room,
    options: &ServerOptions,
    peer: &Peer,
    name: &str,
) -> Result<(), Rejection> {
    use crate::cluster::names::{Claimant, Refused};
    let Some(online) = room.registry().online() else {
        return Ok(());
    };
    let who = Claimant {
        name,
        key: peer.key.map(|k| *k.as_bytes()),
        instance: peer.instance,
        operator: peer.operator,
    };
    match online.claim(who).await {
        Ok(()) => Ok(()),
        Err(Refused::Taken {
            holder,
            reconnecting,
            ..
        }) => Err(Rejection {
            reason: RejectReason::NameTaken,
            detail: if reconnecting {
                format!(
                    "{} on another server of this cluster (their connection dropped; the name is \
                     kept for them for {} s); choose another",
                    qchat_proto::names::clash(name, &holder),
                    options.grace.as_secs()
                )
            } else {
                format!(
                    "{} on another server of this cluster; choose another",
                    qchat_proto::names::clash(name, &holder)
                )
            },
        }),
        Err(Refused::Unavailable(e)) => {
            tracing::warn!("cannot hold a name in the cluster: {e}");
            Err(Rejection {
                reason: RejectReason::ServerFull,
                detail: "this server cannot reach its cluster to check the name right now; try \
                         again soon, or another server of the cluster"
                    .into(),
            })
        }
    }
}

/// In a cluster, brings the entry for `name` in line with the room after
/// a member left, was lost, renamed or failed to join.
async fn settle_online(room: &Room, name: &str) {
    if let Some(online) = room.registry().online() {
        online.settle(name).await;
    }
}

/// The key of the member in the room under `name` if it is another key
/// of the same registered name as `peer`'s: another device of the same
/// person.
fn other_device(
    room: &Room,
    options: &ServerOptions,
    peer: &Peer,
    name: &str,
) -> Option<qchat_tls::Fingerprint> {
    let mine = peer.key?;
    let (_, Some(theirs), _) = room.member_named(name)? else {
        return None;
    };
    let claim = room.registry().lookup(name, options.name_expiry)?;
    (theirs != mine && claim.has(mine.as_bytes()) && claim.has(theirs.as_bytes())).then_some(theirs)
}

/// [`admit`] without a link code: the name is claimed, kept, or checked
/// for a guest.
async fn admit_claim(
    room: &Room,
    options: &ServerOptions,
    peer: &Peer,
    name: &str,
    other_device: bool,
) -> Result<Option<Claimed>, Rejection> {
    let guest_refused = peer.key.is_none() && options.keys_required && peer.addr.is_some();
    // Someone in the room has the name: the room refuses it as taken (or
    // lets the same client replace its old connection), which says more
    // than the registry would.
    if !guest_refused && !other_device && room.member_named(name).is_some() {
        return Ok(None);
    }
    let registry = Arc::clone(room.registry());
    let expiry = options.name_expiry;
    let registered = |r: Refusal| Rejection {
        reason: RejectReason::NameRegistered,
        detail: r.detail,
    };
    match peer.key {
        Some(key) => {
            let name = name.to_string();
            // The claim is committed to the registry's file: off the
            // runtime's threads.
            tokio::task::spawn_blocking(move || registry.claim(&name, key, expiry))
                .await
                .unwrap_or_else(|_| {
                    Err(Refusal {
                        detail: "the server could not check the name; try again".into(),
                    })
                })
                .map(Some)
                .map_err(registered)
        }
        None if options.keys_required && peer.addr.is_some() => Err(Rejection {
            reason: RejectReason::KeyRequired,
            detail: "this server admits only members who present a key, and you connected \
                     without one (as a guest); connect with a qchat that has keys (version 4 or \
                     later), without --guest"
                .into(),
        }),
        None => registry
            .check_guest(name, expiry)
            .map(|()| None)
            .map_err(registered),
    }
}

/// A new device joining `name` with a link code: its key is added to the
/// name's keys, or the hello is refused with `LinkRefused` and nothing
/// changes. If the room then refuses the join (a device of the name is in
/// it now, say), the link is taken back and the code works again.
async fn admit_link(
    room: &Room,
    options: &ServerOptions,
    peer: &Peer,
    name: &str,
    code: &str,
) -> Result<Option<Claimed>, Rejection> {
    let refused = |detail: String| Rejection {
        reason: RejectReason::LinkRefused,
        detail,
    };
    let Some(key) = peer.key else {
        return Err(refused(
            "linking a device adds its key to the name, and you connected without one (as a guest)"
                .into(),
        ));
    };
    let registry = Arc::clone(room.registry());
    let (expiry, name, code) = (options.name_expiry, name.to_string(), code.to_string());
    tokio::task::spawn_blocking(move || registry.link(&name, &code, key, expiry))
        .await
        .unwrap_or_else(|_| {
            Err(Refusal {
                detail: "the server could not check the link code; try again".into(),
            })
        })
        .map(Some)
        .map_err(|r| refused(r.detail))
}

/// `/device link|list|remove`: only for a device whose key holds a
/// registered name; guests are told they have no devices to manage.
async fn device(id: MemberId, op: DeviceOp, room: &Room, options: &ServerOptions) {
    let failed = |reason: String| ServerMsg::Failed {
        what: "device".into(),
        reason,
    };
    let Some(me) = room.key_of(id) else {
        return;
    };
    let Some(key) = me else {
        room.reply(
            id,
            &failed(
                "you connected without a key (as a guest): your name is not registered, so it has no devices"
                    .into(),
            ),
        );
        return;
    };
    let registry = Arc::clone(room.registry());
    let (expiry, ttl) = (options.name_expiry, options.link_ttl);
    let list = |c: &Claim| ServerMsg::Devices {
        name: c.name.clone(),
        devices: c
            .keys
            .iter()
            .map(|d| DeviceInfo {
                key: d.key,
                added_ms: d.added_ms,
                last_ms: d.last_ms,
                this: d.key == *key.as_bytes(),
            })
            .collect(),
    };
    let answer = match op {
        DeviceOp::Link => registry
            .new_link_code(key, expiry, ttl)
            .map(|(code, expires_ms)| ServerMsg::LinkCode { code, expires_ms }),
        DeviceOp::List => registry
            .claim_of(key, expiry)
            .map(|c| list(&c))
            .ok_or_else(|| Refusal {
                detail: "this device's key holds no registered name".into(),
            }),
        DeviceOp::Remove { key: target } => {
            let target = qchat_tls::Fingerprint::from_bytes(target);
            let reg = Arc::clone(&registry);
            let removed = tokio::task::spawn_blocking(move || reg.remove_key(key, target, expiry))
                .await
                .unwrap_or_else(|_| {
                    Err(Refusal {
                        detail: "the server could not remove the key; try again".into(),
                    })
                });
            match removed {
                Ok(left) => {
                    room.reply(id, &list(&left));
                    let by = room.member_name(id).unwrap_or_else(|| left.name.clone());
                    let n = room.end_key(
                        target,
                        &by,
                        &format!(
                            "this device's key was removed from the name {:?}; it can no longer join under it",
                            left.name
                        ),
                    );
                    tracing::info!(key = %target, ended = n, "a device was removed from its name");
                    return;
                }
                Err(r) => Err(r),
            }
        }
    };
    match answer {
        Ok(msg) => room.reply(id, &msg),
        Err(r) => room.reply(id, &failed(r.detail)),
    }
}

/// `/nick` under the same rules as the hello's name: a key moves its claim
/// to the new name (if nobody else holds it), a guest may take only a name
/// nobody holds. The claim is taken back if the room refuses the rename.
async fn nick(id: MemberId, name: &str, room: &Room, options: &ServerOptions) {
    let Some(key) = room.key_of(id) else {
        return;
    };
    // An invalid name, or one somebody in the room has (another member:
    // taken; ourselves: a change of case, which keeps the same claim), is
    // the room's to decide.
    if qchat_proto::names::validate(name).is_err() || room.member_named(name).is_some() {
        room.nick(id, name);
        return;
    }
    let Some((_, peer)) = room.peer_of(id) else {
        return;
    };
    if let Err(rej) = hold_online(room, options, &peer, name).await {
        room.reply(
            id,
            &ServerMsg::Failed {
                what: "nick".into(),
                reason: rej.detail,
            },
        );
        return;
    }
    let registry = Arc::clone(room.registry());
    let expiry = options.name_expiry;
    let claimed = match key {
        Some(key) => {
            let (registry, name) = (Arc::clone(&registry), name.to_string());
            tokio::task::spawn_blocking(move || registry.claim(&name, key, expiry))
                .await
                .unwrap_or_else(|_| {
                    Err(Refusal {
                        detail: "the server could not check the name; try again".into(),
                    })
                })
        }
        None => registry.check_guest(name, expiry).map(|()| Claimed::Kept),
    };
    let old = room.member_name(id);
    match claimed {
        Err(r) => room.reply(
            id,
            &ServerMsg::Failed {
                what: "nick".into(),
                reason: r.detail,
            },
        ),
        Ok(c) => {
            if !room.nick(id, name) {
                // Off the runtime's threads: in a cluster the undo is a
                // write to NATS.
                let _ = tokio::task::spawn_blocking(move || registry.undo(c)).await;
            }
        }
    }
    // The name not taken is let go; the one left behind too.
    settle_online(room, name).await;
    if let Some(old) = old {
        settle_online(room, &old).await;
    }
}

/// Answers `/whois`: the keys a name is registered to and since when, or
/// that the one in the room under it is a guest.
fn whois(id: MemberId, name: &str, room: &Room, options: &ServerOptions) {
    let here = room.member_named(name);
    let claim = room.registry().lookup(name, options.name_expiry);
    let now = qchat_proto::clock::now_ms();
    let joined_ms = |d: Duration| now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(0));
    let msg = match (here, claim) {
        (None, None) => ServerMsg::Failed {
            what: "whois".into(),
            reason: format!("nobody called {name:?} is here, and nobody has registered the name"),
        },
        (Some((name, None, dur)), _) => ServerMsg::Whois {
            name,
            keys: Vec::new(),
            here: true,
            guest: true,
            since_ms: joined_ms(dur),
        },
        (here, Some(c)) => ServerMsg::Whois {
            name: here.as_ref().map_or(c.name.clone(), |h| h.0.clone()),
            keys: c.keys.iter().map(|d| d.key).collect(),
            here: here.is_some(),
            guest: false,
            since_ms: c.since_ms,
        },
        // In the room with a key but no live claim (the registry could not
        // record it): the key is still the one it proved.
        (Some((name, Some(key), dur)), None) => ServerMsg::Whois {
            name,
            keys: vec![*key.as_bytes()],
            here: true,
            guest: false,
            since_ms: joined_ms(dur),
        },
    };
    room.reply(id, &msg);
}

/// Reads until the member leaves. `Ok` carries the reason shown to the
/// others; an error is the peer's fault.
///
/// Messages pass through a token bucket: a burst goes straight through, a
/// pasted block waits in a bounded backlog and trickles out at the rate, and
/// a member that keeps the backlog full is flooding and is disconnected
/// (after a notice at half). Requests wait in the same backlog so that
/// everything keeps the order it was sent in.
///
/// A plain function returning the future, so that its arguments are kept
/// once: this future is most of an idle member's reader.
#[allow(clippy::too_many_arguments)] // the session's parts, each used
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
fn read_loop<'a, R: AsyncRead + Unpin + 'a>(
    id: MemberId,
    version: u32,
    me: &'a mut Speaker,
    decoder: &'a mut FrameDecoder,
    recv: &'a mut R,
    room: &'a Room,
    options: &'a ServerOptions,
    mine: &'a mut Vec<Arc<Channel>>,
) -> impl Future<Output = Result<String, SessionError>> + 'a {
    async move {
        let mut bucket = TokenBucket::new(options.rate, options.burst);
        let mut backlog: VecDeque<ClientMsg> = VecDeque::new();
        let mut warned = false;
        let mut eof = false;
        // The private replay is free of the rate limit, so it is given once
        // per connection: asked for again, it would be a cheap way to make the
        // server read thousands of stored messages.
        let mut private_replayed = false;
        loop {
            // Hand over whatever the bucket allows.
            while let Some(msg) = backlog.front() {
                if costs_a_token(msg) && !bucket.try_take(Instant::now()) {
                    break;
                }
                let msg = backlog
                    .pop_front()
                    .ok_or(SessionError::Protocol("backlog"))?;
                if matches!(msg, ClientMsg::PrivateResume { .. })
                    && std::mem::replace(&mut private_replayed, true)
                {
                    let reason = "the private replay was already sent on this connection".into();
                    let what = "private".into();
                    room.reply(id, &ServerMsg::Failed { what, reason });
                    continue;
                }
                if let Some(reason) = Box::pin(handle(id, me, msg, room, options, mine)).await {
                    Box::pin(published(room)).await;
                    for ch in mine.iter() {
                        Box::pin(rooms_published(ch)).await;
                    }
                    return Ok(reason);
                }
            }
            if backlog.len() < options.backlog / 4 {
                warned = false;
            }
            let_go_when_idle(&mut backlog, decoder);
            if eof {
                if backlog.is_empty() {
                    Box::pin(published(room)).await;
                    for ch in mine.iter() {
                        Box::pin(rooms_published(ch)).await;
                    }
                    return Ok(String::new());
                }
                Box::pin(tokio::time::sleep_until(bucket.next_token())).await;
                continue;
            }
            let next_token = (!backlog.is_empty()).then(|| bucket.next_token());
            tokio::select! {
                frame = read(decoder, recv) => {
                    let Some(frame) = frame? else {
                        eof = true;
                        continue;
                    };
                    let msg = ClientMsg::decode(&frame)?;
                    check_kind(&msg, version)?;
                    backlog.push_back(msg);
                    if backlog.len() > options.backlog + 1 {
                        room.metrics().flood_disconnects.inc();
                        return Err(SessionError::Flood(options.backlog));
                    }
                    if backlog.len() > options.backlog / 2 && !warned {
                        warned = true;
                        let text = format!(
                            "you are sending too fast: {} messages are waiting; at {} you will be disconnected",
                            backlog.len(),
                            options.backlog
                        );
                        room.reply(id, &ServerMsg::Notice { text });
                    }
                }
                // Boxed, and only made when there is a backlog: `select!` builds
                // every branch's future even when its condition is false, and an
                // inline timer (~100 bytes) would sit in every idle member's
                // reader.
                () = async {
                    if let Some(t) = next_token {
                        Box::pin(tokio::time::sleep_until(t)).await;
                    }
                }, if next_token.is_some() => {}
            }
        }
    }
}

/// Frees a drained backlog's buffer (room for four messages, 512 bytes)
/// once nothing more has been read either. Every client sends a frame
/// after its hello (the private replay's request), and the buffer it took
/// would otherwise stay with each idle member for good. Not while the
/// decoder holds the start of more: a busy sender would then allocate it
/// again for every message rather than once per burst.
fn let_go_when_idle(backlog: &mut VecDeque<ClientMsg>, decoder: &FrameDecoder) {
    if backlog.is_empty() && backlog.capacity() > 0 && decoder.buffered() == 0 {
        *backlog = VecDeque::new();
    }
}

/// Sending to the room costs a token; asking for the member list or
/// leaving does not.
fn costs_a_token(msg: &ClientMsg) -> bool {
    !matches!(
        msg,
        ClientMsg::Who
            | ClientMsg::Bye { .. }
            | ClientMsg::Rooms
            | ClientMsg::Part { .. }
            | ClientMsg::PrivateResume { .. }
    )
}

/// Kinds newer than the version the client announced are a protocol error.
fn check_kind(msg: &ClientMsg, version: u32) -> Result<(), SessionError> {
    match msg {
        ClientMsg::Hello { .. } | ClientMsg::HelloV3 { .. } | ClientMsg::HelloLink { .. } => {
            Err(SessionError::Protocol("second hello"))
        }
        ClientMsg::Say { .. } | ClientMsg::Bye { .. } => Ok(()),
        ClientMsg::Reserved14 => Err(SessionError::Protocol("a reserved message kind")),
        ClientMsg::Join { .. }
        | ClientMsg::Part { .. }
        | ClientMsg::Rooms
        | ClientMsg::Topic { .. }
        | ClientMsg::RoomSay { .. }
        | ClientMsg::RoomSigned { .. }
        | ClientMsg::RoomKick { .. }
        | ClientMsg::Invite { .. }
        | ClientMsg::RoomMode { .. }
            if version < 5 =>
        {
            Err(SessionError::Protocol(
                "message kind not in the negotiated version",
            ))
        }
        ClientMsg::Whois { .. }
        | ClientMsg::Device { .. }
        | ClientMsg::Moderate { .. }
        | ClientMsg::Signed { .. }
        | ClientMsg::SignedPrivate { .. }
            if version < 4 =>
        {
            Err(SessionError::Protocol(
                "message kind not in the negotiated version",
            ))
        }
        ClientMsg::PrivateResume { .. } if version < 5 => Err(SessionError::Protocol(
            "message kind not in the negotiated version",
        )),
        _ if version < 2 => Err(SessionError::Protocol(
            "message kind not in the negotiated version",
        )),
        _ => Ok(()),
    }
}

/// Why a message of `len` bytes is refused under the limit of `max`.
pub(crate) fn too_long(len: usize, max: usize) -> String {
    format!("message of {len} bytes is longer than the limit of {max} bytes; nothing was sent")
}

/// Carries out one message. `Some(reason)` means the member is leaving.
/// A public message waits for room in the log's queue: a full queue slows
/// its senders down instead of dropping anything.
async fn handle(
    id: MemberId,
    me: &mut Speaker,
    msg: ClientMsg,
    room: &Room,
    options: &ServerOptions,
    mine: &mut Vec<Arc<Channel>>,
) -> Option<String> {
    if matches!(
        msg,
        ClientMsg::Say { .. }
            | ClientMsg::Action { .. }
            | ClientMsg::Private { .. }
            | ClientMsg::Signed { .. }
            | ClientMsg::SignedPrivate { .. }
            | ClientMsg::RoomSay { .. }
            | ClientMsg::RoomSigned { .. }
    ) {
        room.metrics().messages_received.inc();
    }
    match msg {
        ClientMsg::Say { seq, text }
        | ClientMsg::Action { seq, text }
        | ClientMsg::Private { seq, text, .. }
        | ClientMsg::Signed { seq, text, .. }
        | ClientMsg::SignedPrivate { seq, text, .. }
        | ClientMsg::RoomSay { seq, text, .. }
        | ClientMsg::RoomSigned { seq, text, .. }
            if text.len() > options.max_message =>
        {
            let reason = too_long(text.len(), options.max_message);
            room.metrics().messages_refused.inc();
            room.reply(id, &ServerMsg::Refused { seq, reason });
        }
        ClientMsg::Say { seq, text } => submit(room, id, me, seq, text, false, None).await,
        ClientMsg::Action { seq, text } => submit(room, id, me, seq, text, true, None).await,
        ClientMsg::Private { seq, to, text } => {
            crate::private::send(room, options, id, seq, &to, text, None).await;
        }
        ClientMsg::SignedPrivate {
            seq,
            to,
            text,
            sent_ms,
            key,
            sig,
        } => match me.proof(seq, sent_ms, key, sig) {
            Ok(p) => crate::private::send(room, options, id, seq, &to, text, Some(p)).await,
            Err(reason) => {
                room.metrics().messages_refused.inc();
                room.reply(id, &ServerMsg::Refused { seq, reason });
            }
        },
        ClientMsg::Signed {
            seq,
            text,
            action,
            sent_ms,
            key,
            sig,
        } => match me.proof(seq, sent_ms, key, sig) {
            Ok(p) => submit(room, id, me, seq, text, action, Some(p)).await,
            Err(reason) => {
                room.metrics().messages_refused.inc();
                room.reply(id, &ServerMsg::Refused { seq, reason });
            }
        },
        ClientMsg::Nick { name } => {
            nick(id, &name, room, options).await;
            if let Some(now) = room.member_name(id) {
                for ch in mine.iter() {
                    ch.rename(id, &now);
                }
                // The name the member's next lines are stored under (a
                // copy of its own: a rename is rare).
                me.name = now.into();
            }
        }
        ClientMsg::RoomSay {
            room: name,
            seq,
            text,
            action,
        } => in_room(id, room, mine, &name, seq, text, action, None).await,
        ClientMsg::RoomSigned {
            room: name,
            seq,
            text,
            action,
            sent_ms,
            key,
            sig,
        } => match me.proof(seq, sent_ms, key, sig) {
            Ok(p) => in_room(id, room, mine, &name, seq, text, action, Some(p)).await,
            Err(reason) => {
                room.metrics().messages_refused.inc();
                room.reply(id, &ServerMsg::Refused { seq, reason });
            }
        },
        ClientMsg::Join { room: name, resume } => {
            join_room(id, room, options, mine, &name, resume).await;
        }
        ClientMsg::Part { room: name, reason } => part_room(id, room, mine, &name, reason),
        ClientMsg::Rooms => list_rooms(id, room),
        ClientMsg::Topic { room: name, text } => {
            // Refused, never cut: a topic is something its setter means to
            // be read whole.
            let max = qchat_proto::limits::MAX_TOPIC_BYTES;
            if text.len() > max {
                let reason = format!(
                    "a topic of {} bytes is longer than the limit of {max} bytes; the topic is unchanged",
                    text.len()
                );
                room_failed(room, id, "topic", reason);
            } else {
                room_request(id, room, "topic", &name, |ch, who| ch.set_topic(who, &text)).await;
            }
        }
        ClientMsg::RoomMode {
            room: name,
            invite_only,
        } => {
            room_request(id, room, "room", &name, |ch, who| {
                ch.set_invite_only(who, invite_only)
            })
            .await;
        }
        ClientMsg::RoomKick {
            room: name,
            name: target,
            mut reason,
        } => {
            truncate_utf8(&mut reason, qchat_proto::limits::MAX_REASON_BYTES);
            let mut afar = None;
            let done = room_request(id, room, "kick", &name, |ch, who| {
                afar = ch.kick(who, &target, &reason)?;
                Ok(())
            })
            .await;
            // In the room on another node of the cluster: that node takes
            // the member out.
            if let (Some((ch, who)), Some(afar)) = (done, afar) {
                crate::cluster::forward::kick(room, id, &ch, &who.name, afar, &reason).await;
            }
        }
        ClientMsg::Invite {
            room: name,
            name: target,
        } => {
            let done =
                room_request(id, room, "invite", &name, |ch, who| ch.invite(who, &target)).await;
            if let Some((ch, who)) = done {
                let invited = room.peer_named(&target);
                if let Some((tid, _, _)) = &invited {
                    let msg = ServerMsg::Invited {
                        room: ch.name().to_string(),
                        by: who.name.clone(),
                    };
                    room.reply(*tid, &msg);
                }
                let afar = match invited {
                    Some(_) => None,
                    // Connected to another node of the cluster: told there.
                    None => crate::cluster::forward::invite(room, &ch, &who.name, &target).await,
                };
                let text = match (invited, afar) {
                    (Some((_, tname, _)), _) | (None, Some(Ok(tname))) => {
                        format!("{tname} may now join {}", ch.name())
                    }
                    (None, Some(Err(why))) => format!(
                        "{target} may now join {} ({target} is on another server of this \
                         cluster, which {why}: they were not told)",
                        ch.name()
                    ),
                    (None, None) => format!(
                        "{target} may now join {} (nobody is here under that name now)",
                        ch.name()
                    ),
                };
                room.reply(id, &ServerMsg::Notice { text });
            }
        }
        ClientMsg::Whois { name } => whois(id, &name, room, options),
        ClientMsg::Device { op } => device(id, op, room, options).await,
        ClientMsg::Moderate { op } => crate::moderation::handle(id, op, room, options).await,
        ClientMsg::PrivateResume { log_id, points } => {
            crate::private::resume(room, options, id, log_id, points).await;
        }
        ClientMsg::Who => room.who(id),
        ClientMsg::Kick { name, mut reason } => {
            truncate_utf8(&mut reason, qchat_proto::limits::MAX_REASON_BYTES);
            room.kick(id, &name, &reason);
        }
        ClientMsg::Bye { mut reason } => {
            truncate_utf8(&mut reason, qchat_proto::limits::MAX_REASON_BYTES);
            return Some(reason);
        }
        // Refused by check_kind before it gets here.
        ClientMsg::Hello { .. }
        | ClientMsg::HelloV3 { .. }
        | ClientMsg::HelloLink { .. }
        | ClientMsg::Reserved14 => {}
    }
    None
}

/// The member as its session knows it, for what it says: kept here so that
/// a message costs no room lock. The name changes only by the member's own
/// `/nick`, after which the session reads it back from the room.
struct Speaker {
    /// The room's copy of the name, shared: one allocation per member.
    name: Arc<str>,
    instance: Option<[u8; 16]>,
    /// Triggered once the room has removed the member: nothing it sends
    /// after that is stored.
    ending: Arc<Ending>,
    signer: Signer,
}

/// What a signed line from this connection must name: the key it proved
/// in its handshake (with its client instance, the `Speaker`'s), fixed for
/// the connection's life. Kept by the session rather than asked of the
/// room, so that a signed line costs no room lock, and once a line's key
/// has matched, the next lines' no hash. One enum rather than the
/// fingerprint and the matched key side by side: it is in every member's
/// reader, and the key once matched stands for the fingerprint.
#[derive(Debug, Clone, Copy)]
enum Signer {
    /// A guest, or a client before version 3, which cannot sign.
    Cannot,
    /// The fingerprint of the key the connection proved; no line has
    /// named that key yet.
    Proved(qchat_tls::Fingerprint),
    /// The key a line named that hashed to the proved fingerprint.
    Matched([u8; 32]),
}

impl Signer {
    fn new(key: Option<qchat_tls::Fingerprint>, instance: Option<[u8; 16]>) -> Self {
        match (key, instance) {
            (Some(key), Some(_)) => Signer::Proved(key),
            _ => Signer::Cannot,
        }
    }
}

impl Speaker {
    /// The proof to store with a signed message, or why it is refused.
    /// The signature itself is not checked here (each recipient checks
    /// it; see docs/PERFORMANCE.md): only what is cheap and bounds what is
    /// stored — its length, and that the key is the one this connection
    /// proved, so an honest server never forwards a line under a key its
    /// sender does not hold.
    fn proof(
        &mut self,
        seq: u64,
        sent_ms: u64,
        key: [u8; 32],
        sig: Vec<u8>,
    ) -> Result<Box<qchat_proto::Proof>, String> {
        if sig.len() != qchat_proto::signed::SIGNATURE_LEN {
            return Err(format!(
                "a signature is {} bytes, not {}; nothing was sent",
                qchat_proto::signed::SIGNATURE_LEN,
                sig.len()
            ));
        }
        let (Some(instance), false) = (self.instance, matches!(self.signer, Signer::Cannot)) else {
            return Err(
                "only a client that presented a key (and a version-3 instance) can sign; nothing was sent"
                    .into(),
            );
        };
        let matched = match self.signer {
            Signer::Matched(k) => k == key,
            Signer::Proved(proved) => {
                let ok = qchat_tls::signing::fingerprint(&key) == proved;
                if ok {
                    self.signer = Signer::Matched(key);
                }
                ok
            }
            Signer::Cannot => false,
        };
        if !matched {
            return Err(
                "the message is signed with another key than this connection's; nothing was sent"
                    .into(),
            );
        }
        Ok(Box::new(qchat_proto::Proof {
            instance,
            seq,
            sent_ms,
            key,
            sig,
        }))
    }
}

/// Member `id` as a room sees it; `None` if it is gone.
fn actor(id: MemberId, room: &Room) -> Option<(Actor, Option<[u8; 16]>)> {
    let (name, peer) = room.peer_of(id)?;
    Some((
        Actor {
            id,
            name,
            key: peer.key.map(|k| *k.as_bytes()),
            server_op: peer.operator,
        },
        peer.instance,
    ))
}

fn room_failed(room: &Room, id: MemberId, what: &str, reason: String) {
    room.reply(
        id,
        &ServerMsg::Failed {
            what: what.into(),
            reason,
        },
    );
}

/// Writes the rooms' descriptions (a topic, an operator, an invitation
/// changed) on a blocking thread: the write syncs the file.
async fn persist(room: &Room) {
    let rooms = Arc::clone(room.rooms());
    match tokio::task::spawn_blocking(move || rooms.save()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot save the rooms: {e}"),
        Err(e) => tracing::warn!("cannot save the rooms: {e}"),
    }
}

/// `/join #room`: creates the room if it does not exist (the member is
/// its operator), then puts the member in it. The lobby is not joined:
/// every member is always in it.
async fn join_room(
    id: MemberId,
    room: &Room,
    options: &ServerOptions,
    mine: &mut Vec<Arc<Channel>>,
    name: &str,
    resume: Option<qchat_proto::ResumePoint>,
) {
    if let Err(e) = qchat_proto::names::validate_room(name) {
        return room_failed(
            room,
            id,
            "join",
            format!("{name:?} is not a room's name: {e}"),
        );
    }
    if qchat_proto::names::is_lobby(name) {
        return room_failed(
            room,
            id,
            "join",
            format!("everyone is always in {}", qchat_proto::names::LOBBY),
        );
    }
    let Some((who, instance)) = actor(id, room) else {
        return;
    };
    // A kick takes the member out of a room behind the session's back.
    mine.retain(|ch| ch.has(id));
    if mine.len() >= options.max_rooms_per_member {
        return room_failed(
            room,
            id,
            "join",
            format!(
                "you are in {} rooms besides {}, the most this server allows; /part one first",
                options.max_rooms_per_member,
                qchat_proto::names::LOBBY
            ),
        );
    }
    let found = match room.rooms().get(name) {
        Some(ch) => Ok((ch, false)),
        None => {
            // Creating a room opens (and syncs) its log file: off the
            // runtime's threads.
            let (rooms, name, who, max) = (
                Arc::clone(room.rooms()),
                name.to_string(),
                who.clone(),
                options.max_rooms,
            );
            tokio::task::spawn_blocking(move || rooms.get_or_create(&name, &who, max))
                .await
                .unwrap_or_else(|_| Err("the server could not create the room; try again".into()))
        }
    };
    let (ch, created) = match found {
        Ok(c) => c,
        Err(reason) => return room_failed(room, id, "join", reason),
    };
    if created {
        persist(room).await;
    }
    let Some(queue) = room.queue_of(id) else {
        return;
    };
    let max = options.max_room_members;
    match ch.join(&who, instance, &queue, resume, options.history, max) {
        Ok(()) => mine.push(ch),
        Err(reason) => room_failed(room, id, "join", reason),
    }
}

/// `/part #room [REASON]`.
fn part_room(
    id: MemberId,
    room: &Room,
    mine: &mut Vec<Arc<Channel>>,
    name: &str,
    mut reason: String,
) {
    truncate_utf8(&mut reason, qchat_proto::limits::MAX_REASON_BYTES);
    let pos = mine.iter().position(|ch| ch.is_called(name));
    match pos {
        Some(i) if mine[i].leave(id, None, &reason, true) => {
            mine.remove(i);
        }
        _ if qchat_proto::names::is_lobby(name) => room_failed(
            room,
            id,
            "part",
            format!(
                "everyone is always in {}; /quit leaves the server",
                qchat_proto::names::LOBBY
            ),
        ),
        _ => room_failed(room, id, "part", format!("you are not in {name}")),
    }
}

/// `/rooms`: the lobby first, then the rooms the member may see.
fn list_rooms(id: MemberId, room: &Room) {
    let Some((who, _)) = actor(id, room) else {
        return;
    };
    // Everyone is in the lobby, on every node of a cluster.
    let afar = room.presence().map_or(0, |p| p.count());
    let mut list = vec![qchat_proto::RoomInfo {
        name: qchat_proto::names::LOBBY.into(),
        members: u32::try_from(room.len() + afar).unwrap_or(u32::MAX),
        topic: String::new(),
        invite_only: false,
    }];
    list.extend(room.rooms().list(&who));
    room.reply(id, &ServerMsg::RoomList { rooms: list });
}

/// An operator's request in a room (`what` names it in a refusal):
/// `act` decides and does it; what changed is saved. The room and the
/// asker when it was done.
async fn room_request(
    id: MemberId,
    room: &Room,
    what: &str,
    name: &str,
    act: impl FnOnce(&Channel, &Actor) -> Result<(), String>,
) -> Option<(Arc<Channel>, Actor)> {
    let (who, _) = actor(id, room)?;
    let Some(ch) = room.rooms().get(name) else {
        let reason = if qchat_proto::names::is_lobby(name) {
            format!(
                "{} is the server's own room: /kick and the server's operators govern it",
                qchat_proto::names::LOBBY
            )
        } else {
            format!("there is no room called {name:?} (see /rooms)")
        };
        room_failed(room, id, what, reason);
        return None;
    };
    match act(&ch, &who) {
        Ok(()) => {
            persist(room).await;
            Some((ch, who))
        }
        Err(reason) => {
            room_failed(room, id, what, reason);
            None
        }
    }
}

/// A line for a room the member is in, to that room's log.
#[allow(clippy::too_many_arguments)] // one line's parts
async fn in_room(
    id: MemberId,
    room: &Room,
    mine: &[Arc<Channel>],
    name: &str,
    seq: u64,
    text: String,
    action: bool,
    proof: Option<Box<qchat_proto::Proof>>,
) {
    // Clients send the room's name as the server spells it: compared as
    // it is first, folded only when that fails.
    let ch = mine.iter().find(|ch| ch.name() == name).or_else(|| {
        let key = qchat_proto::names::fold_room(name);
        mine.iter().find(|ch| ch.key() == key)
    });
    // A signature covers the room's name as the sender spelt it, and every
    // member checks it against the server's spelling: another spelling
    // would reach them as a forgery, so it is refused here, with the reason.
    if let (Some(ch), Some(_)) = (ch, &proof) {
        if ch.name() != name {
            room.metrics().messages_refused.inc();
            let reason = format!(
                "a signed line must name the room as the server spells it ({}), not {name}; nothing was sent",
                ch.name()
            );
            room.reply(id, &ServerMsg::Refused { seq, reason });
            return;
        }
    }
    match ch.and_then(|ch| Some((ch, ch.submit(id, seq, text, action, proof)?))) {
        Some((ch, p)) => {
            let _ = ch.log_queue().send(LogItem::Message(p)).await;
        }
        None => {
            room.metrics().messages_refused.inc();
            let reason = format!("you are not in {name}; nothing was sent (/join it first)");
            room.reply(id, &ServerMsg::Refused { seq, reason });
        }
    }
}

/// Waits until everything the member said in a room is published.
async fn rooms_published(ch: &Channel) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if ch.log_queue().send(LogItem::Barrier(tx)).await.is_ok() {
        let _ = rx.await;
    }
}

/// Waits until everything this member said is published (and so
/// acknowledged), before it leaves.
async fn published(room: &Room) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if room.log_queue().send(LogItem::Barrier(tx)).await.is_ok() {
        let _ = rx.await;
    }
}

/// Queues a public message (or action) for the log; the log's writer
/// stores it, then the room shows it. Built from the session's own copy of
/// the member (its name, instance, whether the room has removed it), not
/// under the room's lock: the log's writer holds that lock while it fans a
/// batch out, and a session waiting for it would block its runtime thread.
async fn submit(
    room: &Room,
    id: MemberId,
    me: &Speaker,
    seq: u64,
    text: String,
    action: bool,
    proof: Option<Box<qchat_proto::Proof>>,
) {
    if me.ending.get().is_some() {
        return;
    }
    let p = Pending::said(
        id,
        me.instance,
        me.name.to_string(),
        seq,
        text,
        action,
        proof,
    );
    // Only fails once the writer is gone, when the server is stopping.
    let _ = room.log_queue().send(LogItem::Message(p)).await;
}

/// The next frame. A plain function returning the future (its two
/// references kept once): an idle member's reader waits in it.
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
fn read<'a, R: AsyncRead + Unpin + 'a>(
    decoder: &'a mut FrameDecoder,
    recv: &'a mut R,
) -> impl Future<Output = Result<Option<Bytes>, SessionError>> + 'a {
    async move {
        match decoder.read_frame(recv).await {
            Ok(f) => Ok(f),
            Err(ReadError::Frame(e)) => Err(SessionError::Frame(e)),
            Err(ReadError::Io(e)) => match describe_loss(&e) {
                // Closing the connection with code 0 is as clean an ending as
                // finishing the stream: a normal leave, not a failure.
                None => Ok(None),
                Some(why) => Err(SessionError::Lost(why)),
            },
        }
    }
}

/// Why the peer's side went away; `None` for a normal close (code 0).
fn describe_loss(e: &io::Error) -> Option<String> {
    let read_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>());
    let why = match read_err {
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut)) => {
            "connection timed out".into()
        }
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c))) => {
            match CloseCode::from_code(c.error_code.into_inner()) {
                Some(CloseCode::Normal) => return None,
                Some(code) => format!("closed by the client: {}", code.describe()),
                None => format!("closed by the client with code {}", c.error_code),
            }
        }
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
            "connection closed".into()
        }
        Some(quinn::ReadError::Reset(_)) => "connection reset".into(),
        _ => "connection lost".into(),
    };
    Some(why)
}

async fn reject<S: Sink>(send: &mut S, reason: RejectReason, detail: String) -> End {
    let frame = ServerMsg::Rejected { reason, detail }.to_frame();
    if send.write_chunk(frame).await.is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.finish()).await;
    }
    End {
        code: CloseCode::Rejected,
        reason: "rejected".into(),
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A member that said something once and went quiet keeps no backlog
    /// buffer; one whose next frame has begun to arrive keeps it.
    #[test]
    fn a_drained_backlog_lets_go_of_its_buffer_when_idle() {
        let mut decoder = FrameDecoder::new(1024);
        let mut backlog = VecDeque::new();
        backlog.push_back(ClientMsg::Who);
        backlog.pop_front();
        decoder.extend(&[0, 0]);
        let_go_when_idle(&mut backlog, &decoder);
        assert!(backlog.capacity() > 0, "freed while a frame was arriving");
        let idle = FrameDecoder::new(1024);
        let_go_when_idle(&mut backlog, &idle);
        assert_eq!(
            backlog.capacity(),
            0,
            "an idle member keeps its backlog's buffer"
        );
        backlog.push_back(ClientMsg::Who);
        let_go_when_idle(&mut backlog, &idle);
        assert_eq!(backlog.len(), 1, "a waiting message is never dropped");
    }

    /// An idle member's reader waits in [`read`] for as long as the member
    /// stays, ten thousand times over on a busy server. It was 3,288 bytes
    /// while the cluster's settling of a departed name (a NATS round trip,
    /// ~2.9 KiB of future) sat inline in it, and 1,056 while the `Speaker`
    /// was kept three times over (an argument's slot and its local, in the
    /// reader and again in the read loop): 672 since, 664 with the name
    /// shared with the room (`Arc<str>`, not a `String`). A reader that grows
    /// past this bound again most likely holds a wait that happens once,
    /// or an argument twice.
    #[tokio::test]
    async fn an_idle_members_reader_stays_small() {
        let server = crate::Server::new(ServerOptions::default());
        let room = server.room();
        let options = room.options();
        let ending = Ending::new();
        let mut decoder = FrameDecoder::new(options.max_frame);
        let mut recv = tokio::io::empty();
        let me = Speaker {
            name: "alice".into(),
            instance: None,
            ending: Arc::clone(&ending),
            signer: Signer::Cannot,
        };
        let reading = reader(
            1,
            PROTOCOL_VERSION,
            me,
            &ending,
            &mut decoder,
            &mut recv,
            room,
            &options,
        );
        let size = std::mem::size_of_val(&reading);
        assert!(
            size <= 672,
            "an idle member's reader is {size} bytes; box what it holds across waits"
        );
    }
}
