//! The network task: owns the joined connection, turns [`Command`]s into
//! frames and frames into [`Event`]s. Reading and writing run side by side,
//! so receiving never waits for typing and sending never waits for
//! receiving.

use std::collections::BTreeSet;

use qchat_proto::{ClientMsg, CloseCode, DecodeError, FrameDecoder, ServerMsg};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::connection::Joined;

/// What the user interface asks of the network task.
///
/// `Say`, `Action` and `Private` are numbered 1, 2, 3… by the network task
/// in the order they are given. It reports each number with
/// [`Event::Sent`] as soon as the message is written, so an interface
/// never has to guess it; [`Event::Delivered`] and [`Event::Refused`] carry
/// the same number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a line to the room.
    Say(String),
    /// Send an action (`/me waves`).
    Action(String),
    /// Send a private message to one member.
    Private {
        /// The recipient.
        to: String,
        /// The text.
        text: String,
    },
    /// Change name.
    Nick(String),
    /// Ask for the member list.
    Who,
    /// Remove a member (operators only).
    Kick {
        /// Who.
        name: String,
        /// Why.
        reason: String,
    },
    /// Leave the room with a reason, after everything already sent has been
    /// confirmed.
    Quit(String),
}

/// The state of the connection to the server, for the status line and the
/// plain interface's transition lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Joined, and caught up: the replay after the welcome is complete.
    Connected {
        /// Whether this join resumed from where the client left off.
        resumed: bool,
        /// Messages replayed after the welcome.
        replayed: u64,
        /// Messages after the resume point the server did not replay.
        missed: u64,
    },
    /// Nothing heard from the server for `secs` seconds although
    /// keep-alives were sent (reported once a second while it lasts).
    NoAnswer {
        /// Seconds since the server was last heard.
        secs: u64,
    },
    /// The connection dropped; a reconnect follows unless it is disabled.
    Lost {
        /// What happened.
        reason: String,
    },
    /// Waiting before the next connection attempt.
    Reconnecting {
        /// Attempts made since the connection was lost, the next included.
        attempt: u32,
        /// Time until that attempt.
        next_in: std::time::Duration,
    },
}

/// What happened, for the user interface to show. Text fields are raw:
/// sanitise before display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another member.
    Chat {
        /// The sender.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
    },
    /// An action (`/me`) from another member.
    Action {
        /// The sender.
        from: String,
        /// The text.
        text: String,
        /// Server receive time.
        time_ms: u64,
    },
    /// A private message, to us or (echoed) from us.
    Private {
        /// The sender.
        from: String,
        /// The recipient.
        to: String,
        /// The text.
        text: String,
        /// Server receive time.
        time_ms: u64,
    },
    /// A message from before we joined.
    History {
        /// The sender.
        from: String,
        /// The text.
        text: String,
        /// Server receive time.
        time_ms: u64,
        /// Whether it was an action.
        action: bool,
    },
    /// Our next numbered command (in the order they were given) got the
    /// number `seq`: it was written to the server, or refused here as too
    /// long (then [`Event::Refused`] follows at once). Always comes before
    /// that number's [`Event::Delivered`] or [`Event::Refused`].
    Sent {
        /// The number the network task gave it.
        seq: u64,
    },
    /// Our message `seq` reached the server and was delivered.
    Delivered {
        /// Its number (see [`Command`]).
        seq: u64,
    },
    /// Our message `seq` was refused; nothing was delivered.
    Refused {
        /// Its number.
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
    /// Someone (perhaps we) changed name.
    Renamed {
        /// The old name.
        old: String,
        /// The new name.
        new: String,
    },
    /// The member list, in answer to [`Command::Who`].
    Members(Vec<qchat_proto::MemberInfo>),
    /// A notice from the server.
    Notice {
        /// The text.
        text: String,
    },
    /// A request could not be carried out.
    Failed {
        /// Which request (`nick`, `kick`, `who`, `msg`).
        what: String,
        /// Why.
        reason: String,
    },
    /// An operator removed us.
    Kicked {
        /// The operator.
        by: String,
        /// Why.
        reason: String,
    },
    /// The server announced it is shutting down.
    ShuttingDown {
        /// Why.
        reason: String,
        /// Whether it expects to be back (a restart): the client reconnects.
        back: bool,
    },
    /// The connection's state changed.
    Connection(ConnectionState),
    /// The room as of the latest (re)join: the welcome's member list, which
    /// replaces whatever the interface knew.
    Roster {
        /// Everyone in the room, in join order.
        members: Vec<String>,
    },
    /// Another member's connection dropped; the server holds its name for
    /// its reconnect.
    MemberReconnecting {
        /// Their name.
        name: String,
    },
    /// A member that was reconnecting is back.
    MemberReturned {
        /// Their name.
        name: String,
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

/// A joined session's byte streams: a QUIC stream for a network member, or
/// an in-process pipe for the operator sitting at the server.
pub struct Link<W, R> {
    /// The sending half.
    pub send: W,
    /// The receiving half.
    pub recv: R,
    /// The frame decoder, which may already hold bytes after the welcome.
    pub decoder: FrameDecoder,
    /// The QUIC connection, when there is one: its close code tells why the
    /// server ended the session.
    pub conn: Option<quinn::Connection>,
}

impl From<Joined> for Link<quinn::SendStream, quinn::RecvStream> {
    fn from(j: Joined) -> Self {
        Link {
            send: j.send,
            recv: j.recv,
            decoder: j.decoder,
            conn: Some(j.conn),
        }
    }
}

/// Runs the session until it ends. Events go to `events`, a bounded channel:
/// if the interface stops taking them, reading pauses, and a server whose
/// queue for us fills up disconnects us rather than grow without bound.
pub async fn run<W, R>(
    link: impl Into<Link<W, R>>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> Ended
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let Link {
        mut send,
        mut recv,
        mut decoder,
        conn,
    } = link.into();
    let mut st = State::default();

    loop {
        tokio::select! {
            cmd = commands.recv(), if !st.quitting => {
                let (msg, seq) = st.command(cmd);
                if let Err(e) = msg.check_outgoing() {
                    // Refused here: sent, it would end the connection. The
                    // interface still learns the number first, so the
                    // refusal lands on the line that was typed.
                    if let Some(seq) = seq {
                        let _ = events.send(Event::Sent { seq }).await;
                    }
                    let _ = events.send(st.refuse_locally(&msg, e.to_string())).await;
                    continue;
                }
                if send.write_all(&msg.to_frame()).await.is_err() {
                    return st.ended(conn.as_ref()).await;
                }
                if let Some(seq) = seq {
                    if events.send(Event::Sent { seq }).await.is_err() {
                        close(conn.as_ref(), CloseCode::Normal);
                        return Ended::Quit;
                    }
                }
                if st.quitting {
                    // The server answers the goodbye by finishing its side
                    // once everything before it is delivered.
                    let _ = send.shutdown().await;
                }
            }
            frame = decoder.read_frame(&mut recv) => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) if st.quitting && st.pending.is_empty() => {
                        close(conn.as_ref(), CloseCode::Normal);
                        return Ended::Quit;
                    }
                    Ok(None) | Err(_) => return st.ended(conn.as_ref()).await,
                };
                let event = match ServerMsg::decode(&frame) {
                    Ok(msg) => match st.event(msg) {
                        Some(ev) => ev,
                        None => continue,
                    },
                    // A newer server's message kind: skip it, so an old
                    // client keeps working.
                    Err(DecodeError::UnknownKind(kind)) => {
                        tracing::debug!(kind, "skipping an unknown message kind");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("malformed message from the server: {e}");
                        close(conn.as_ref(), CloseCode::ProtocolError);
                        return st.ended(conn.as_ref()).await;
                    }
                };
                if events.send(event).await.is_err() {
                    // The interface is gone; leave quietly.
                    close(conn.as_ref(), CloseCode::Normal);
                    return Ended::Quit;
                }
            }
        }
    }
}

fn close(conn: Option<&quinn::Connection>, code: CloseCode) {
    if let Some(c) = conn {
        c.close(code.code().into(), code.describe().as_bytes());
    }
}

/// How long to wait for the server's close frame after its stream ended.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the network task remembers between frames.
#[derive(Default)]
struct State {
    next_seq: u64,
    /// Numbers of messages sent but not yet acknowledged or refused.
    pending: BTreeSet<u64>,
    quitting: bool,
    /// Why the server said it would end the session, if it did.
    server_end: Option<(CloseCode, String)>,
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.pending.insert(self.next_seq);
        self.next_seq
    }

    /// The event for a message that was never sent because it is too long.
    fn refuse_locally(&mut self, msg: &ClientMsg, reason: String) -> Event {
        if let Some(seq) = msg.seq() {
            self.pending.remove(&seq);
            return Event::Refused { seq, reason };
        }
        let what = match msg {
            ClientMsg::Nick { .. } => "nick",
            ClientMsg::Kick { .. } => "kick",
            _ => {
                // A goodbye too long to send: leave without the reason.
                self.quitting = false;
                "quit"
            }
        };
        Event::Failed {
            what: what.into(),
            reason,
        }
    }

    /// The message for a command, and its number if it has one.
    fn command(&mut self, cmd: Option<Command>) -> (ClientMsg, Option<u64>) {
        let msg = match cmd {
            Some(Command::Say(text)) => ClientMsg::Say {
                seq: self.seq(),
                text,
            },
            Some(Command::Action(text)) => ClientMsg::Action {
                seq: self.seq(),
                text,
            },
            Some(Command::Private { to, text }) => ClientMsg::Private {
                seq: self.seq(),
                to,
                text,
            },
            Some(Command::Nick(name)) => ClientMsg::Nick { name },
            Some(Command::Who) => ClientMsg::Who,
            Some(Command::Kick { name, reason }) => ClientMsg::Kick { name, reason },
            Some(Command::Quit(reason)) => {
                self.quitting = true;
                ClientMsg::Bye { reason }
            }
            None => {
                self.quitting = true;
                ClientMsg::Bye {
                    reason: String::new(),
                }
            }
        };
        let seq = match &msg {
            ClientMsg::Say { seq, .. }
            | ClientMsg::Action { seq, .. }
            | ClientMsg::Private { seq, .. } => Some(*seq),
            _ => None,
        };
        (msg, seq)
    }

    fn event(&mut self, msg: ServerMsg) -> Option<Event> {
        Some(match msg {
            // This session says hello as version 2, and a server sends
            // version-3 kinds only to a version-3 hello.
            ServerMsg::WelcomeV3 { .. }
            | ServerMsg::ChatV3 { .. }
            | ServerMsg::HistoryV3 { .. }
            | ServerMsg::AckV3 { .. }
            | ServerMsg::Replayed { .. }
            | ServerMsg::Reconnecting { .. }
            | ServerMsg::Returned { .. }
            | ServerMsg::ShuttingDownV3 { .. } => return None,
            ServerMsg::Chat {
                from,
                text,
                time_ms,
            } => Event::Chat {
                from,
                text,
                time_ms,
            },
            ServerMsg::Action {
                from,
                text,
                time_ms,
            } => Event::Action {
                from,
                text,
                time_ms,
            },
            ServerMsg::Private {
                from,
                to,
                text,
                time_ms,
            } => Event::Private {
                from,
                to,
                text,
                time_ms,
            },
            ServerMsg::History {
                from,
                text,
                time_ms,
                action,
            } => Event::History {
                from,
                text,
                time_ms,
                action,
            },
            ServerMsg::Ack { seq } => {
                self.pending.remove(&seq);
                Event::Delivered { seq }
            }
            ServerMsg::Refused { seq, reason } => {
                self.pending.remove(&seq);
                Event::Refused { seq, reason }
            }
            ServerMsg::Joined { name } => Event::Joined { name },
            ServerMsg::Left { name, reason } => Event::Left { name, reason },
            ServerMsg::Renamed { old, new } => Event::Renamed { old, new },
            ServerMsg::Members { members } => Event::Members(members),
            ServerMsg::Notice { text } => Event::Notice { text },
            ServerMsg::Failed { what, reason } => Event::Failed { what, reason },
            ServerMsg::Kicked { by, reason } => {
                self.server_end = Some((CloseCode::Kicked, format!("kicked by {by}: {reason}")));
                Event::Kicked { by, reason }
            }
            ServerMsg::ShuttingDown { reason } => {
                self.server_end = Some((CloseCode::ShuttingDown, reason.clone()));
                Event::ShuttingDown {
                    reason,
                    back: false,
                }
            }
            // Only valid during the hello; ignoring a stray one is kinder
            // than dropping the session.
            ServerMsg::Welcome { .. } | ServerMsg::Rejected { .. } => return None,
        })
    }

    async fn ended(&self, conn: Option<&quinn::Connection>) -> Ended {
        let unconfirmed = self.pending.len();
        // The server finishes its side of the stream before it closes the
        // connection with a code; wait briefly for the close so the user is
        // told why (flood, kick) rather than just "ended".
        let reason = match conn {
            Some(c) => match c.close_reason() {
                Some(r) => Some(r),
                None => tokio::time::timeout(CLOSE_WAIT, c.closed()).await.ok(),
            },
            None => None,
        };
        match reason {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                return Ended::ByServer {
                    code: CloseCode::from_code(close.error_code.into_inner()),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                    unconfirmed,
                }
            }
            Some(quinn::ConnectionError::TimedOut) => {
                return Ended::Lost {
                    reason: "the connection timed out (no answer from the server)".into(),
                    unconfirmed,
                }
            }
            Some(quinn::ConnectionError::LocallyClosed) | None => {}
            Some(other) => {
                return Ended::Lost {
                    reason: other.to_string(),
                    unconfirmed,
                }
            }
        }
        close(conn, CloseCode::Normal);
        match &self.server_end {
            Some((code, reason)) => Ended::ByServer {
                code: Some(*code),
                reason: reason.clone(),
                unconfirmed,
            },
            None => Ended::Lost {
                reason: "the server ended the session".into(),
                unconfirmed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session over an in-memory pipe, the test playing the server.
    #[tokio::test]
    async fn each_number_is_reported_when_sent_and_before_its_answer() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (c_recv, c_send) = tokio::io::split(client);
        let (mut s_recv, mut s_send) = tokio::io::split(server);
        let link = Link {
            send: c_send,
            recv: c_recv,
            decoder: FrameDecoder::new(64 * 1024),
            conn: None,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        let task = tokio::spawn(run(link, cmd_rx, ev_tx));

        for cmd in [
            Command::Say("a".into()),
            Command::Who,
            Command::Private {
                to: "x".into(),
                text: "b".into(),
            },
            Command::Action("c".into()),
        ] {
            cmd_tx.send(cmd).await.expect("the session takes commands");
        }
        // What the server received, with the numbers on the wire.
        let mut decoder = FrameDecoder::new(64 * 1024);
        let mut wire = Vec::new();
        for _ in 0..4 {
            let frame = decoder
                .read_frame(&mut s_recv)
                .await
                .expect("a frame")
                .expect("not the end");
            wire.push(ClientMsg::decode(&frame).expect("a message"));
        }
        let seqs: Vec<u64> = wire
            .iter()
            .filter_map(|m| match m {
                ClientMsg::Say { seq, .. }
                | ClientMsg::Action { seq, .. }
                | ClientMsg::Private { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs.len(), 3, "{wire:?}");
        s_send
            .write_all(&ServerMsg::Ack { seq: seqs[2] }.to_frame())
            .await
            .expect("answer");

        let mut events = Vec::new();
        while events.len() < 4 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), ev_rx.recv())
                .await
                .expect("events in time")
                .expect("the session is running");
            events.push(ev);
        }
        // The numbers reported are the ones on the wire, in command order,
        // and a number is reported before the answer that carries it.
        assert_eq!(
            events,
            [
                Event::Sent { seq: seqs[0] },
                Event::Sent { seq: seqs[1] },
                Event::Sent { seq: seqs[2] },
                Event::Delivered { seq: seqs[2] },
            ]
        );
        task.abort();
    }
}
