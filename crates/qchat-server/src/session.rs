//! One connection, from handshake to close: the hello, then a reader and a
//! writer running side by side so that receiving never waits for sending.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qchat_proto::{
    frame::ReadError, ClientMsg, CloseCode, DecodeError, FrameDecoder, RejectReason, ServerMsg,
    ALPN, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::gate::Permit;
use crate::room::{MemberId, Room};
use crate::ServerOptions;

/// How long a writer waits for the peer to take the last bytes before the
/// connection is closed anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames a writer takes from its queue for one write.
const WRITE_BATCH: usize = 256;

/// Why a session ended abnormally: the close code and reason sent, and the
/// one log line.
#[derive(Debug, thiserror::Error)]
enum SessionError {
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
    #[error("connection lost before the hello: {0}")]
    Lost(String),
}

impl SessionError {
    fn code(&self) -> CloseCode {
        match self {
            SessionError::HelloTimeout(_) => CloseCode::HelloTimeout,
            SessionError::Frame(qchat_proto::FrameError::TooLarge { .. }) => {
                CloseCode::FrameTooLarge
            }
            SessionError::Lost(_) => CloseCode::Normal,
            _ => CloseCode::ProtocolError,
        }
    }
}

/// Serves one incoming connection until it ends. Never panics on anything
/// the peer sends; every failure ends this connection only.
pub(crate) async fn serve(
    incoming: quinn::Incoming,
    permit: Permit,
    room: Arc<Room>,
    options: Arc<ServerOptions>,
) {
    let peer = incoming.remote_address();
    let span = tracing::info_span!("conn", %peer, name = tracing::field::Empty);
    async move {
        let _permit = permit;
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
        };
        if let Err(e) = run(&conn, &room, &options).await {
            let code = e.code();
            if code != CloseCode::Normal {
                tracing::info!(code = code.code(), "closing: {e}");
                conn.close(code.code().into(), e.to_string().as_bytes());
            } else {
                tracing::debug!("{e}");
            }
        }
    }
    .instrument(span)
    .await
}

async fn run(
    conn: &quinn::Connection,
    room: &Arc<Room>,
    options: &ServerOptions,
) -> Result<(), SessionError> {
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() != Some(ALPN) {
        return Err(SessionError::WrongAlpn);
    }

    let hello = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| SessionError::Lost(e.to_string()))?;
        let mut decoder = FrameDecoder::new(options.max_frame);
        let first = read(&mut decoder, &mut recv).await?;
        Ok::<_, SessionError>((send, recv, decoder, first))
    };
    let (mut send, mut recv, mut decoder, first) =
        tokio::time::timeout(options.hello_timeout, hello)
            .await
            .map_err(|_| SessionError::HelloTimeout(options.hello_timeout))??;
    let Some(first) = first else {
        return Err(SessionError::Lost("stream closed before the hello".into()));
    };
    let ClientMsg::Hello { version, name } = ClientMsg::decode(&first)? else {
        return Err(SessionError::Protocol("data before the hello"));
    };
    if version < 1 {
        let detail = format!("protocol version {version} is not supported; this server speaks 1 to {PROTOCOL_VERSION}");
        reject(conn, &mut send, RejectReason::UnsupportedVersion, detail).await;
        return Ok(());
    }

    let (tx, rx) = mpsc::channel(options.queue_len);
    let joined = match room.join(&name, tx, Some(conn.clone()), Some(conn.remote_address())) {
        Ok(j) => j,
        Err(rej) => {
            tracing::info!(name = %qchat_proto::text::sanitize(&name), "hello refused: {}", rej.detail);
            reject(conn, &mut send, rej.reason, rej.detail).await;
            return Ok(());
        }
    };
    tracing::Span::current().record(
        "name",
        tracing::field::display(qchat_proto::text::sanitize(&joined.name)),
    );
    tracing::info!("joined");

    let id = joined.id;
    let reader = read_loop(id, &mut decoder, &mut recv, room, options);
    let writer = async {
        write_loop(send, rx).await;
        // The queue closes only once the member is out of the room, whoever
        // removed it; after the flush there is nothing left to say, and
        // closing also ends a reader whose peer never hangs up.
        conn.close(
            close_code(room).code().into(),
            close_code(room).describe().as_bytes(),
        );
    };
    let (outcome, ()) = tokio::join!(
        async {
            let outcome = reader.await;
            let reason = match &outcome {
                Ok(reason) => reason.clone(),
                Err(e) => {
                    // Close with the error's own code before the writer's
                    // orderly close can get there first.
                    tracing::info!(code = e.code().code(), "closing: {e}");
                    conn.close(e.code().code().into(), e.to_string().as_bytes());
                    format!("disconnected: {e}")
                }
            };
            room.leave(id, &reason);
            outcome
        },
        writer
    );
    // An error here was logged and the connection closed with its code above.
    let Ok(reason) = outcome else { return Ok(()) };
    tracing::info!(reason = %qchat_proto::text::sanitize(&reason), "left");
    Ok(())
}

fn close_code(room: &Room) -> CloseCode {
    if room.is_closed() {
        CloseCode::ShuttingDown
    } else {
        CloseCode::Normal
    }
}

/// Reads until the member leaves. `Ok` carries the reason shown to the
/// others; an error is the peer's fault and is shown to them too.
async fn read_loop(
    id: MemberId,
    decoder: &mut FrameDecoder,
    recv: &mut quinn::RecvStream,
    room: &Room,
    options: &ServerOptions,
) -> Result<String, SessionError> {
    loop {
        let frame = match read(decoder, recv).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(String::new()),
            Err(SessionError::Lost(why)) => return Ok(why),
            Err(e) => return Err(e),
        };
        match ClientMsg::decode(&frame)? {
            ClientMsg::Say { seq, text } => {
                if text.len() > options.max_message {
                    let reason = format!(
                        "message of {} bytes is longer than the limit of {} bytes; nothing was sent",
                        text.len(),
                        options.max_message
                    );
                    room.reply(id, &ServerMsg::Refused { seq, reason });
                } else {
                    room.say(id, seq, text);
                }
            }
            ClientMsg::Bye { mut reason } => {
                truncate_utf8(&mut reason, qchat_proto::limits::MAX_REASON_BYTES);
                return Ok(reason);
            }
            ClientMsg::Hello { .. } => return Err(SessionError::Protocol("second hello")),
        }
    }
}

async fn read(
    decoder: &mut FrameDecoder,
    recv: &mut quinn::RecvStream,
) -> Result<Option<Bytes>, SessionError> {
    match decoder.read_frame(recv).await {
        Ok(f) => Ok(f),
        Err(ReadError::Frame(e)) => Err(SessionError::Frame(e)),
        Err(ReadError::Io(e)) => Err(SessionError::Lost(describe_loss(&e))),
    }
}

fn describe_loss(e: &std::io::Error) -> String {
    let read_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>());
    match read_err {
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut)) => {
            "connection timed out".into()
        }
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(_))) => {
            String::new()
        }
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
            String::new()
        }
        Some(quinn::ReadError::Reset(_)) => "connection reset".into(),
        _ => "connection lost".into(),
    }
}

/// Sends everything queued for the member in as few writes as possible.
///
/// Frames are copied into one contiguous buffer per batch: quinn walks its
/// list of unacknowledged chunks for every packet it builds, so thousands of
/// small chunks per stream would make sending quadratic.
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::new();
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let chunk = if batch.len() == 1 {
            batch.pop().unwrap_or_default()
        } else {
            buf.reserve(batch.iter().map(Bytes::len).sum());
            for b in batch.drain(..) {
                buf.extend_from_slice(&b);
            }
            buf.split().freeze()
        };
        if send.write_chunk(chunk).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
}

async fn reject(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: RejectReason,
    detail: String,
) {
    let frame = ServerMsg::Rejected { reason, detail }.to_frame();
    if send.write_chunk(frame).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
    }
    conn.close(CloseCode::Rejected.code().into(), b"rejected");
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
