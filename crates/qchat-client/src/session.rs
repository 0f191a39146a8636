//! The network task: owns the joined connection, turns [`Command`]s into
//! frames and frames into [`Event`]s. Reading and writing run side by side,
//! so receiving never waits for typing and sending never waits for
//! receiving.

use std::collections::BTreeSet;

use qchat_proto::{ClientMsg, CloseCode, DecodeError, ServerMsg};
use tokio::sync::mpsc;

use crate::connection::Joined;

/// What the user interface asks of the network task.
#[derive(Debug, Clone)]
pub enum Command {
    /// Send a line to the room.
    Say(String),
    /// Leave the room with a reason, after everything already sent has been
    /// confirmed.
    Quit(String),
}

/// What happened, for the user interface to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another member.
    Chat {
        /// The sender.
        from: String,
        /// The text, raw: sanitise before display.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
    },
    /// Our message `seq` reached the server and was delivered.
    Delivered {
        /// Its sequence number (the n-th `Say`, from 1).
        seq: u64,
    },
    /// Our message `seq` was refused; nothing was delivered.
    Refused {
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Someone joined.
    Joined {
        /// Their name.
        name: String,
    },
    /// Someone left.
    Left {
        /// Their name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A notice from the server.
    Notice {
        /// The text.
        text: String,
    },
    /// The server announced it is shutting down.
    ShuttingDown {
        /// Why.
        reason: String,
    },
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// We quit and the server confirmed everything we sent.
    Quit,
    /// The server ended the session (shutdown, kick, error). `unconfirmed`
    /// messages we sent may not have been delivered.
    ByServer {
        /// The close code, if the server sent a known one.
        code: Option<CloseCode>,
        /// The reason text.
        reason: String,
        /// Messages sent but never acknowledged.
        unconfirmed: usize,
    },
    /// The connection was lost.
    Lost {
        /// What happened.
        reason: String,
        /// Messages sent but never acknowledged.
        unconfirmed: usize,
    },
}

/// Runs the session until it ends. Events go to `events`, a bounded channel:
/// if the interface stops taking them, reading pauses, and a server whose
/// queue for us fills up disconnects us rather than grow without bound.
pub async fn run(
    joined: Joined,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> Ended {
    let Joined {
        conn,
        mut send,
        mut recv,
        mut decoder,
        ..
    } = joined;
    let mut next_seq = 1u64;
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    let mut quitting = false;
    let mut shutting_down = false;

    loop {
        tokio::select! {
            cmd = commands.recv(), if !quitting => {
                let msg = match cmd {
                    Some(Command::Say(text)) => {
                        let seq = next_seq;
                        next_seq += 1;
                        pending.insert(seq);
                        ClientMsg::Say { seq, text }
                    }
                    Some(Command::Quit(reason)) => { quitting = true; ClientMsg::Bye { reason } }
                    None => { quitting = true; ClientMsg::Bye { reason: String::new() } }
                };
                if send.write_all(&msg.to_frame()).await.is_err() {
                    return ended(&conn, pending.len(), shutting_down);
                }
                if quitting {
                    // The server answers the goodbye by finishing its side
                    // once everything before it is delivered.
                    let _ = send.finish();
                }
            }
            frame = decoder.read_frame(&mut recv) => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) if quitting && pending.is_empty() => {
                        conn.close(CloseCode::Normal.code().into(), b"bye");
                        return Ended::Quit;
                    }
                    Ok(None) | Err(_) => return ended(&conn, pending.len(), shutting_down),
                };
                let event = match ServerMsg::decode(&frame) {
                    Ok(ServerMsg::Chat { from, text, time_ms }) => Event::Chat { from, text, time_ms },
                    Ok(ServerMsg::Ack { seq }) => { pending.remove(&seq); Event::Delivered { seq } }
                    Ok(ServerMsg::Refused { seq, reason }) => { pending.remove(&seq); Event::Refused { seq, reason } }
                    Ok(ServerMsg::Joined { name }) => Event::Joined { name },
                    Ok(ServerMsg::Left { name, reason }) => Event::Left { name, reason },
                    Ok(ServerMsg::Notice { text }) => Event::Notice { text },
                    Ok(ServerMsg::ShuttingDown { reason }) => { shutting_down = true; Event::ShuttingDown { reason } }
                    // Only valid during the hello; ignoring a stray one is
                    // kinder than dropping the session.
                    Ok(ServerMsg::Welcome { .. } | ServerMsg::Rejected { .. }) => continue,
                    // A newer server's message kind: skip it, so an old
                    // client keeps working.
                    Err(DecodeError::UnknownKind(kind)) => {
                        tracing::debug!(kind, "skipping an unknown message kind");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("malformed message from the server: {e}");
                        conn.close(CloseCode::ProtocolError.code().into(), b"malformed message");
                        return ended(&conn, pending.len(), shutting_down);
                    }
                };
                if events.send(event).await.is_err() {
                    // The interface is gone; leave quietly.
                    conn.close(CloseCode::Normal.code().into(), b"bye");
                    return Ended::Quit;
                }
            }
        }
    }
}

fn ended(conn: &quinn::Connection, unconfirmed: usize, shutting_down: bool) -> Ended {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => Ended::ByServer {
            code: CloseCode::from_code(close.error_code.into_inner()),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
            unconfirmed,
        },
        Some(quinn::ConnectionError::TimedOut) => Ended::Lost {
            reason: "the connection timed out (no answer from the server)".into(),
            unconfirmed,
        },
        Some(other) => Ended::Lost {
            reason: other.to_string(),
            unconfirmed,
        },
        None if shutting_down => Ended::ByServer {
            code: Some(CloseCode::ShuttingDown),
            reason: "server shutting down".into(),
            unconfirmed,
        },
        None => {
            conn.close(CloseCode::Normal.code().into(), b"bye");
            Ended::Lost {
                reason: "the server ended the session".into(),
                unconfirmed,
            }
        }
    }
}
