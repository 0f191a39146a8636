//! The network task: owns the joined connection, turns [`Command`]s into
//! frames and frames into [`Event`]s. Reading and writing run side by side,
//! so receiving never waits for typing and sending never waits for
//! receiving.
//!
//! With a [`Network`] it also outlives its connection: when the connection
//! is lost it reconnects (backoff with jitter), resumes from the last
//! message displayed, and writes again whatever the server had not
//! acknowledged. Typed messages wait in the outbox meanwhile, and while
//! connected they leave no faster than the server's rate.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use qchat_proto::{ClientMsg, CloseCode, DecodeError, FrameDecoder, ResumePoint, ServerMsg};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::connection::{ConnectError, Joined, WelcomeV3};
use crate::conversations::{Conversations, PrivateFile};
use crate::pacing::Pacer;
use crate::reconnect::{Backoff, Dialer};
use crate::resume::{Outbox, ResumeStore, RoomTranscripts, Transcript};

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
    /// Ask who a member is: its key fingerprints (version 4).
    Whois(String),
    /// Manage the devices (keys) of my registered name (version 4).
    Device(qchat_proto::DeviceOp),
    /// Record `name` as a verified contact if `fingerprint` is one of its
    /// keys. The contacts layer ([`crate::people`]) asks the server
    /// (`Whois`) and checks the answer; this task alone only asks.
    Verify {
        /// The member.
        name: String,
        /// The fingerprint the person gave the user out of band.
        fingerprint: qchat_tls::Fingerprint,
    },
    /// An operator's request: /op, /deop, /ban, /unban, /bans (version 4).
    Moderate(qchat_proto::ModOp),
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
    /// Move the connection to a fresh local UDP socket (a new port), as a
    /// network change would; the session goes on without a new handshake.
    /// A debugging aid (`/rebind`); without a network connection it does
    /// nothing.
    Rebind,
    /// Join a room, creating it if it does not exist (version 5). After
    /// every reconnect the task rejoins each room it is in by itself.
    Join(String),
    /// Leave a room (version 5).
    Part {
        /// The room.
        room: String,
        /// Why, shown to the room.
        reason: String,
    },
    /// List the rooms (version 5).
    Rooms,
    /// Set a room's topic (its operators; version 5).
    Topic {
        /// The room.
        room: String,
        /// The topic.
        text: String,
    },
    /// Let a member into an invite-only room (its operators; version 5).
    Invite {
        /// The room.
        room: String,
        /// Who.
        name: String,
    },
    /// Make a room invite-only or open (its operators; version 5).
    RoomMode {
        /// The room.
        room: String,
        /// Invite-only.
        invite_only: bool,
    },
    /// Remove a member from a room (its operators; version 5).
    RoomKick {
        /// The room.
        room: String,
        /// Who.
        name: String,
        /// Why.
        reason: String,
    },
    /// A line (or action) for a room besides the lobby, numbered like
    /// `Say` (version 5).
    RoomSay {
        /// The room.
        room: String,
        /// The text.
        text: String,
        /// Whether it is an action (`/me`).
        action: bool,
    },
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
    /// The next connection joined at another node of the server's cluster
    /// than the last one: reported just before that connection's
    /// `Connected`.
    Moved {
        /// The node's address, as `host:port`.
        node: String,
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
        /// Replayed from the conversation's history (sent while we were
        /// away, or before this device joined), not live.
        history: bool,
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
    /// Who a member is, in answer to [`Command::Whois`].
    Whois {
        /// The name as the server knows it.
        name: String,
        /// The keys the name is registered to (empty for a guest).
        keys: Vec<qchat_tls::Fingerprint>,
        /// Whether someone is in the room under the name now.
        here: bool,
        /// Whether that one is a guest (no key).
        guest: bool,
        /// Registered since (or, for a guest, here since), ms since the
        /// Unix epoch.
        since_ms: u64,
    },
    /// A one-time link code for a new device, in answer to
    /// `Command::Device(DeviceOp::Link)`.
    LinkCode {
        /// The code.
        code: String,
        /// When it stops working, ms since the Unix epoch.
        expires_ms: u64,
    },
    /// The keys of my name, in answer to `/device list` and `/device remove`.
    Devices {
        /// The name as registered.
        name: String,
        /// Its keys, oldest first.
        devices: Vec<qchat_proto::DeviceInfo>,
    },
    /// The bans in force, in answer to `/bans`.
    Bans(Vec<qchat_proto::BanInfo>),
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
        /// The longest message text this server accepts, in bytes, when it
        /// said so (version 3); an interface splits long blocks by it.
        max_message: Option<u32>,
    },
    /// From the contacts layer ([`crate::people`]): from now on `name`
    /// carries the verified mark (its key set is the one the user
    /// verified), or no longer does.
    Mark {
        /// The member.
        name: String,
        /// Whether the mark is shown.
        verified: bool,
    },
    /// From the contacts layer: `/verify` stored `name` as a contact.
    Verified {
        /// The name as the server spells it.
        name: String,
        /// Its keys, now the verified set.
        keys: Vec<qchat_tls::Fingerprint>,
        /// The set verified before, if the name was a contact already.
        previous: Option<Vec<qchat_tls::Fingerprint>>,
    },
    /// From the contacts layer: a verified contact's name is now held by
    /// other keys than the ones the user verified (or by a guest). Said
    /// once per name and key set; the mark stays off until `/verify`.
    ContactChanged {
        /// The name.
        name: String,
        /// The keys the user verified.
        verified: Vec<qchat_tls::Fingerprint>,
        /// The keys the server says the name has now (empty for a guest).
        now: Vec<qchat_tls::Fingerprint>,
        /// Whether a guest (no key) holds the name now.
        guest: bool,
    },
    /// From the network task: a line (a [`Event::Chat`], [`Event::Action`],
    /// [`Event::History`] or [`Event::Private`]) that came with its
    /// sender's signature, and
    /// what checking it found. The contacts layer ([`crate::people`])
    /// turns it into the line itself or into [`Event::Forged`]; an
    /// interface never sees it.
    Signed {
        /// The line.
        line: Box<Event>,
        /// The fingerprint of the key the signature names.
        key: qchat_tls::Fingerprint,
        /// Whether the signature verifies under that key.
        valid: bool,
    },
    /// From the contacts layer: a line under `from` that is not provably
    /// theirs — for a verified contact, unsigned, signed by a key that is
    /// not one the user verified, or with a signature that does not
    /// verify; for anyone else, with a signature that does not verify.
    Forged {
        /// The name the line claims.
        from: String,
        /// The text.
        text: String,
        /// Server receive time.
        time_ms: u64,
        /// Whether it is an action.
        action: bool,
        /// Whether it is a private message (to the user).
        private: bool,
        /// Whether `from` is a verified contact (the line is shown as
        /// forged) or not (shown as unverified).
        contact: bool,
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
    /// Something that happened in a room besides the lobby: `event` is a
    /// line ([`Event::Chat`], [`Event::Action`], [`Event::History`], or
    /// [`Event::Signed`] / [`Event::Forged`] around one), or a member
    /// entering ([`Event::Joined`]) or leaving ([`Event::Left`]) the room.
    /// Events without it are the lobby's.
    InRoom {
        /// The room's name as the server spells it.
        room: String,
        /// What happened there.
        event: Box<Event>,
    },
    /// We are in a room now (joined, or rejoined after a reconnect); its
    /// replay and [`Event::RoomReplayed`] follow.
    RoomJoined {
        /// The room.
        room: String,
        /// Its topic (empty: none).
        topic: String,
        /// Its members, us included.
        members: Vec<String>,
        /// Whether we are one of its operators.
        operator: bool,
        /// Whether it is invite-only.
        invite_only: bool,
    },
    /// A room's replay is complete.
    RoomReplayed {
        /// The room.
        room: String,
        /// Whether it resumed from where we left off.
        resumed: bool,
        /// Messages replayed.
        replayed: u64,
        /// Messages after our point the server did not replay.
        missed: u64,
    },
    /// We are no longer in a room: we left it, or `by` kicked us.
    Parted {
        /// The room.
        room: String,
        /// Who kicked us; empty if we left.
        by: String,
        /// Why.
        reason: String,
    },
    /// The rooms, in answer to [`Command::Rooms`], `#lobby` first.
    RoomList(Vec<qchat_proto::RoomInfo>),
    /// A room's topic was set.
    Topic {
        /// The room.
        room: String,
        /// Who set it.
        by: String,
        /// The topic (empty: none).
        text: String,
    },
    /// We were invited to a room.
    Invited {
        /// The room.
        room: String,
        /// Who invited us.
        by: String,
    },
    /// A room became invite-only, or open.
    RoomMode {
        /// The room.
        room: String,
        /// Who changed it.
        by: String,
        /// Invite-only now.
        invite_only: bool,
    },
}

/// A line signed for a version-4 server, re-sent after a reconnect to one
/// that speaks an older version (a downgrade): sent unsigned, since that
/// server would end the connection over a kind it does not know, and the
/// re-send after that reconnect would do the same again.
fn unsigned_for(msg: ClientMsg, version: u32) -> ClientMsg {
    match msg {
        ClientMsg::Signed {
            seq, text, action, ..
        } if version < 4 => {
            if action {
                ClientMsg::Action { seq, text }
            } else {
                ClientMsg::Say { seq, text }
            }
        }
        ClientMsg::SignedPrivate { seq, to, text, .. } if version < 4 => {
            ClientMsg::Private { seq, to, text }
        }
        other => other,
    }
}

/// A public message as it arrives live: an action or a chat line.
fn live_line(from: String, text: String, time_ms: u64, action: bool) -> Event {
    if action {
        Event::Action {
            from,
            text,
            time_ms,
        }
    } else {
        Event::Chat {
            from,
            text,
            time_ms,
        }
    }
}

/// A room's line, with what checking its signature found if it came with
/// one.
fn in_room(room: String, line: Event, action: bool, proof: Option<qchat_proto::Proof>) -> Event {
    let event = match proof {
        Some(p) => checked_in(line, action, &room, &p),
        None => line,
    };
    Event::InRoom {
        room,
        event: Box::new(event),
    }
}

/// A signed line with what checking its signature found.
pub(crate) fn checked(line: Event, action: bool, proof: &qchat_proto::Proof) -> Event {
    checked_in(line, action, "", proof)
}

/// [`checked`] for a line of `room` (empty: the lobby): a room's line is
/// signed with the room's name where a private message has its recipient,
/// so a line moved to another room does not verify.
fn checked_in(line: Event, action: bool, room: &str, proof: &qchat_proto::Proof) -> Event {
    let (kind, to, text) = match &line {
        Event::Chat { text, .. } | Event::Action { text, .. } | Event::History { text, .. } => (
            qchat_proto::signed::SignedKind::public(action),
            room,
            text.as_str(),
        ),
        Event::Private { to, text, .. } => (
            qchat_proto::signed::SignedKind::Private,
            to.as_str(),
            text.as_str(),
        ),
        _ => (qchat_proto::signed::SignedKind::public(action), "", ""),
    };
    let signed = qchat_proto::signed::Signed {
        kind,
        to,
        text,
        instance: proof.instance,
        seq: proof.seq,
        sent_ms: proof.sent_ms,
    };
    let valid = qchat_tls::signing::verify(&proof.key, &signed.bytes(), &proof.sig);
    Event::Signed {
        line: Box::new(line),
        key: qchat_tls::signing::fingerprint(&proof.key),
        valid,
    }
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
    /// server ended the session, and its statistics whether the server
    /// still answers.
    pub conn: Option<quinn::Connection>,
    /// How to come back after the connection is lost, and what the first
    /// join said; `None`: the session ends with its connection (the
    /// operator's in-process link).
    pub network: Option<Network>,
    /// Signs our public lines on a link without a [`Network`] (the
    /// operator's in-process link); a network member's is in its
    /// [`Network::signing`].
    pub signing: Option<Signing>,
}

impl From<Joined> for Link<quinn::SendStream, quinn::RecvStream> {
    fn from(j: Joined) -> Self {
        Link {
            send: j.send,
            recv: j.recv,
            decoder: j.decoder,
            conn: Some(j.conn),
            network: None,
            signing: None,
        }
    }
}

/// The sending half of a connection made after the first.
pub type BoxSend = Box<dyn AsyncWrite + Unpin + Send>;
/// The receiving half of a connection made after the first.
pub type BoxRecv = Box<dyn AsyncRead + Unpin + Send>;
/// A connection being made.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<Rejoined, ConnectError>> + Send + 'a>>;

/// A new connection, joined: its streams and its welcome.
pub struct Rejoined {
    /// The streams (the connection inside for a network member).
    pub link: Link<BoxSend, BoxRecv>,
    /// The node it joined at, when that is another than the last
    /// connection's (a cluster's failover); `None`: the same server.
    pub moved: Option<String>,
    /// The welcome's version-3 part (`None`: an older server).
    pub welcome: Option<WelcomeV3>,
    /// The room.
    pub members: Vec<String>,
}

/// Makes connections after the first. [`Dialer`] is the real one; tests
/// dial pipes.
pub trait Redial: Send {
    /// One attempt to connect and join again, resuming from `resume`.
    fn dial(&mut self, resume: Option<ResumePoint>) -> DialFuture<'_>;
    /// Move to a fresh local socket (see [`Command::Rebind`]).
    fn rebind(&mut self) -> Result<(), ConnectError>;
    /// Our name changed: rejoin under the new one.
    fn renamed(&mut self, name: String);
    /// The server listed its cluster's nodes ([`ServerMsg::Nodes`]): the
    /// places to go when this one is lost. Ignored by a dialer that knows
    /// only one server.
    fn learned(&mut self, _nodes: &[String]) {}
    /// Whether there is another node to go to than the current one.
    fn elsewhere(&self) -> bool {
        false
    }
}

impl Redial for Dialer {
    fn dial(&mut self, resume: Option<ResumePoint>) -> DialFuture<'_> {
        Box::pin(async move {
            let before = self.joined_at().clone();
            let j = Dialer::dial(self, resume).await?;
            let moved = (*self.joined_at() != before).then(|| self.joined_at().to_string());
            let welcome = j.welcome.v3.clone();
            let members = j.members.clone();
            let link = Link {
                send: Box::new(j.send) as BoxSend,
                recv: Box::new(j.recv) as BoxRecv,
                decoder: j.decoder,
                conn: Some(j.conn),
                network: None,
                signing: None,
            };
            Ok(Rejoined {
                link,
                moved,
                welcome,
                members,
            })
        })
    }

    fn rebind(&mut self) -> Result<(), ConnectError> {
        Dialer::rebind(self)
    }

    fn renamed(&mut self, name: String) {
        self.set_name(name);
    }

    fn learned(&mut self, nodes: &[String]) {
        self.learn(nodes);
    }

    fn elsewhere(&self) -> bool {
        self.nodes().elsewhere()
    }
}

/// What a network member's session needs beyond its first connection.
pub struct Network {
    /// Makes the later connections (and rebinds the socket).
    pub redial: Box<dyn Redial>,
    /// Whether to reconnect after a loss (`--no-reconnect`: no).
    pub reconnect: bool,
    /// Where the resume point is kept between runs (`None`: not kept).
    pub store: Option<ResumeStore>,
    /// The point the first join resumed from, if it asked to.
    pub resumed_from: Option<ResumePoint>,
    /// The first welcome's version-3 part (`None`: an older server).
    pub welcome: Option<WelcomeV3>,
    /// Our name as the first welcome registered it.
    pub name: String,
    /// The room at the first join.
    pub members: Vec<String>,
    /// Signs our public lines, if we have a key (`None`: a guest).
    pub signing: Option<Signing>,
}

/// What a client signs its lines with.
#[derive(Debug, Clone)]
pub struct Signing {
    /// The person key.
    pub signer: std::sync::Arc<qchat_tls::signing::Signer>,
    /// The instance id of the hello, which with each line's number is
    /// part of what is signed.
    pub instance: [u8; 16],
}

/// Silence after which the server counts as not answering: with a
/// keep-alive every second, three unanswered ones.
pub const NO_ANSWER_AFTER: Duration = Duration::from_secs(3);
/// Silence after which a client that knows other nodes of the server's
/// cluster leaves this one for them: well under the idle timeout, which
/// a server alone is still given to come back in.
pub const MOVE_AFTER: Duration = Duration::from_secs(3);
/// Silence after which the client moves to a fresh socket once, in case
/// its address changed under it (a NAT rebinding, a new network).
pub const REBIND_AFTER: Duration = Duration::from_secs(5);
/// How often the resume point may be written to disk.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Runs the session until it ends. Events go to `events`, a bounded channel:
/// if the interface stops taking them, reading pauses, and a server whose
/// queue for us fills up disconnects us rather than grow without bound.
pub async fn run<W, R>(
    link: impl Into<Link<W, R>>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> Ended
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let Link {
        send,
        recv,
        decoder,
        conn,
        network,
        signing,
    } = link.into();
    let mut net = network;
    let mut cur = Current {
        send: Box::new(send),
        recv: Box::new(recv),
        decoder,
        conn,
    };
    let mut st = State::new(net.as_ref());
    if signing.is_some() {
        st.signing = signing;
        if net.is_none() {
            // The operator's in-process link: its server is this very
            // build (no welcome reaches this task to say so).
            st.version = qchat_proto::PROTOCOL_VERSION;
        }
    }
    if let Some(n) = &net {
        let (welcome, members) = (n.welcome.clone(), n.members.clone());
        if st.joined(welcome, members, &events).await.is_err() {
            close(cur.conn.as_ref(), CloseCode::Normal);
            return Ended::Quit;
        }
    }
    let mut backoff = Backoff::default();
    loop {
        let end = match st
            .serve(&mut cur, &mut commands, &events, net.as_mut())
            .await
        {
            Served::Gone => {
                close(cur.conn.as_ref(), CloseCode::Normal);
                st.save_now(net.as_ref());
                return Ended::Quit;
            }
            Served::Ended(e) => e,
        };
        st.save_now(net.as_ref());
        let elsewhere = net.as_ref().is_some_and(|n| n.redial.elsewhere());
        let retry = match &mut net {
            Some(n) if n.reconnect && st.may_retry(&end, elsewhere) => n,
            _ => return end,
        };
        // A node that shuts down while others are up: go to one of them
        // at once, as a cluster expects of its clients.
        let hurry = elsewhere && st.told_to_go(&end);
        if st.quitting.is_some() && st.outbox.is_empty() {
            // Leaving, and nothing is waiting for the server: no reason
            // to come back.
            return Ended::Quit;
        }
        let reason = match &end {
            Ended::Lost { reason, .. } | Ended::ByServer { reason, .. } => reason.clone(),
            Ended::Quit => String::new(),
        };
        if emit(&events, Event::Connection(ConnectionState::Lost { reason }))
            .await
            .is_err()
        {
            return Ended::Quit;
        }
        st.outbox.requeue();
        st.disconnected();
        match st
            .reconnect(retry, &mut backoff, hurry, &mut commands, &events)
            .await
        {
            Reconnected::Yes(r) => {
                let Rejoined {
                    link,
                    moved,
                    welcome,
                    members,
                } = *r;
                if let Some(node) = moved {
                    let moved = Event::Connection(ConnectionState::Moved { node });
                    if emit(&events, moved).await.is_err() {
                        close(link.conn.as_ref(), CloseCode::Normal);
                        return Ended::Quit;
                    }
                }
                cur = Current {
                    send: link.send,
                    recv: link.recv,
                    decoder: link.decoder,
                    conn: link.conn,
                };
                if st.joined(welcome, members, &events).await.is_err() {
                    close(cur.conn.as_ref(), CloseCode::Normal);
                    return Ended::Quit;
                }
            }
            Reconnected::No(ended) => {
                st.save_now(net.as_ref());
                return ended;
            }
        }
    }
}

/// The connection the session is on now.
struct Current {
    send: BoxSend,
    recv: BoxRecv,
    decoder: FrameDecoder,
    conn: Option<quinn::Connection>,
}

enum Served {
    /// The interface is gone.
    Gone,
    /// The connection ended this way.
    Ended(Ended),
}

enum Reconnected {
    Yes(Box<Rejoined>),
    No(Ended),
}

/// The interface stopped taking events.
struct Gone;

async fn emit(events: &mpsc::Sender<Event>, ev: Event) -> Result<(), Gone> {
    events.send(ev).await.map_err(|_| Gone)
}

fn close(conn: Option<&quinn::Connection>, code: CloseCode) {
    if let Some(c) = conn {
        c.close(code.code().into(), code.describe().as_bytes());
    }
}

/// How long to wait for the server's close frame after its stream ended.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the network task remembers across frames and connections.
struct State {
    next_seq: u64,
    /// Numbered messages not yet answered by the server.
    outbox: Outbox,
    /// What was displayed of the room's log.
    transcript: Transcript,
    /// What was displayed of each other room we are in.
    rooms: RoomTranscripts,
    /// The rooms to rejoin, written first on a new connection.
    rejoin: Vec<ClientMsg>,
    /// Room lines that waited for a connection to a server that turned
    /// out to have no rooms (an older server after a reconnect): not
    /// written (the server would end the connection over them), and
    /// reported refused.
    roomless: Vec<u64>,
    /// The goodbye to send once the outbox is empty.
    quitting: Option<String>,
    /// The goodbye is written on this connection.
    bye_sent: bool,
    /// Why the server said it would end the session, if it did.
    server_end: Option<(CloseCode, String)>,
    /// The server said it expects to be back.
    back: bool,
    /// Connected now (commands are written, not only queued).
    connected: bool,
    /// Sends no faster than the server allows.
    pacer: Pacer,
    /// Whether the server speaks version 3 on this connection.
    v3: bool,
    /// The protocol version the server speaks on this connection.
    version: u32,
    /// Signs our public lines to a server that speaks version 4.
    signing: Option<Signing>,
    /// Our name as the server knows it.
    name: String,
    /// Liveness: the datagram count last seen and when it last grew.
    rx_datagrams: u64,
    heard_at: Instant,
    no_answer: bool,
    rebound: bool,
    /// The resume point changed since it was last written.
    dirty: bool,
    saved_at: Option<Instant>,
    /// What was shown of the private conversations.
    private: Conversations,
    /// Where their points are kept between runs.
    private_file: Option<PrivateFile>,
    /// The private replay is still to be asked for on this connection.
    private_due: bool,
}

impl State {
    fn new(net: Option<&Network>) -> Self {
        let resumed_from = net.and_then(|n| n.resumed_from.clone());
        let private_file = net
            .and_then(|n| n.store.as_ref())
            .map(|s| PrivateFile::beside(s.path()));
        // Only a client that resumes its room resumes its conversations:
        // `--fresh` (no room point) starts both afresh.
        let private_saved = match (&private_file, &resumed_from) {
            (Some(f), Some(_)) => f.load().unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            }),
            _ => None,
        };
        State {
            next_seq: 0,
            outbox: Outbox::default(),
            transcript: Transcript::new(resumed_from),
            // A restarted client that resumes (not `--no-resume`) rejoins
            // the rooms it was in, each from where it left off.
            rooms: RoomTranscripts::new(
                net.filter(|n| n.resumed_from.is_some())
                    .and_then(|n| n.store.as_ref())
                    .map(ResumeStore::load_rooms)
                    .unwrap_or_default(),
            ),
            rejoin: Vec::new(),
            roomless: Vec::new(),
            quitting: None,
            bye_sent: false,
            server_end: None,
            back: false,
            connected: true,
            pacer: Pacer::unlimited(),
            v3: false,
            version: 0,
            signing: net.and_then(|n| n.signing.clone()),
            name: net.map(|n| n.name.clone()).unwrap_or_default(),
            rx_datagrams: 0,
            heard_at: Instant::now(),
            no_answer: false,
            rebound: false,
            dirty: false,
            saved_at: None,
            private: Conversations::new(private_saved),
            private_file,
            private_due: false,
        }
    }

    /// A (re)join: pacing from the welcome, the roster, and for an older
    /// server (no replay summary follows) the connected state at once.
    async fn joined(
        &mut self,
        welcome: Option<WelcomeV3>,
        members: Vec<String>,
        events: &mpsc::Sender<Event>,
    ) -> Result<(), Gone> {
        self.connected = true;
        self.bye_sent = false;
        self.server_end = None;
        self.back = false;
        self.no_answer = false;
        self.rebound = false;
        self.heard_at = Instant::now();
        self.rx_datagrams = 0;
        self.v3 = welcome.is_some();
        self.version = welcome.as_ref().map_or(2, |w| w.version);
        // Every room resumes on the new connection: its join, with its
        // point, goes before anything else we write.
        self.rejoin = if self.version >= 5 {
            self.rooms
                .points()
                .into_iter()
                .map(|(room, resume)| ClientMsg::Join { room, resume })
                .collect()
        } else {
            Vec::new()
        };
        self.private_due = self.version >= 5;
        match &welcome {
            Some(w) => {
                self.transcript.welcome(w.log_id);
                self.dirty = true;
                self.pacer = Pacer::new(w.rate, w.burst, Instant::now());
            }
            None => self.pacer = Pacer::unlimited(),
        }
        let max_message = welcome.as_ref().map(|w| w.max_message);
        emit(
            events,
            Event::Roster {
                members,
                max_message,
            },
        )
        .await?;
        if welcome.is_none() {
            emit(
                events,
                Event::Connection(ConnectionState::Connected {
                    resumed: false,
                    replayed: 0,
                    missed: 0,
                }),
            )
            .await?;
        }
        Ok(())
    }

    fn disconnected(&mut self) {
        self.connected = false;
        self.private.disconnected();
    }

    /// Whether the server ended the session by shutting down (its close
    /// code, or its notice before an ordinary close).
    fn told_to_go(&self, end: &Ended) -> bool {
        match end {
            Ended::ByServer { code, .. } => {
                *code == Some(CloseCode::ShuttingDown)
                    || (*code == Some(CloseCode::Normal) || code.is_none())
                        && matches!(self.server_end, Some((CloseCode::ShuttingDown, _)))
            }
            _ => false,
        }
    }

    /// Whether a connection that ended this way is worth coming back to;
    /// `elsewhere`: there is another node of the server's cluster to go
    /// to, which makes a shutdown worth it too.
    fn may_retry(&self, end: &Ended, elsewhere: bool) -> bool {
        if elsewhere && self.told_to_go(end) {
            return true;
        }
        match end {
            Ended::Quit => false,
            Ended::Lost { .. } => true,
            Ended::ByServer { code, .. } => match code {
                Some(CloseCode::ShuttingDown) => self.back,
                // We fell behind (a sleeping laptop, a slow link) or were
                // slow to say hello: the connection, not a verdict on us;
                // the resume brings back what was dropped.
                Some(CloseCode::SlowReader | CloseCode::HelloTimeout) => true,
                // A server that vanished mid-stream without a word, or a
                // stream reset: the network, not a decision.
                Some(CloseCode::Normal) | None => {
                    !matches!(self.server_end, Some((CloseCode::Kicked, _)))
                        && (self.server_end.is_none() || self.back)
                }
                _ => false,
            },
        }
    }

    /// Serves one connection until it ends.
    async fn serve(
        &mut self,
        cur: &mut Current,
        commands: &mut mpsc::Receiver<Command>,
        events: &mpsc::Sender<Event>,
        mut net: Option<&mut Network>,
    ) -> Served {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Write what the pacer allows, then the goodbye once nothing
            // is waiting.
            match self.flush(cur).await {
                Ok(()) => {}
                Err(()) => return Served::Ended(self.ended(cur.conn.as_ref()).await),
            }
            for seq in std::mem::take(&mut self.roomless) {
                let reason = format!(
                    "this server speaks protocol version {}, which has only {} (version 5 added rooms)",
                    self.version,
                    qchat_proto::names::LOBBY
                );
                if emit(events, Event::Refused { seq, reason }).await.is_err() {
                    return Served::Gone;
                }
            }
            let next_send = if self.outbox.has_unsent() {
                Some(self.pacer.ready_at(Instant::now()))
            } else {
                None
            };
            tokio::select! {
                cmd = commands.recv(), if self.quitting.is_none() => {
                    if self.command(cmd, Some(cur), events, net.as_deref_mut()).await.is_err() {
                        return Served::Gone;
                    }
                }
                () = async {
                    match next_send {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tick.tick() => {
                    let received = cur.conn.as_ref().map(|c| c.stats().udp_rx.datagrams);
                    let silent = match self.liveness(received, events, net.as_deref_mut()).await {
                        Ok(silent) => silent,
                        Err(Gone) => return Served::Gone,
                    };
                    self.save(net.as_deref());
                    // In a cluster, a node that stopped answering is left
                    // for another at once rather than after the idle
                    // timeout: the others serve the same rooms, and the
                    // resume brings back whatever was in flight.
                    let elsewhere = net.as_deref().is_some_and(|n| n.reconnect && n.redial.elsewhere());
                    if elsewhere && silent.is_some_and(|s| s >= MOVE_AFTER) {
                        close(cur.conn.as_ref(), CloseCode::Normal);
                        return Served::Ended(Ended::Lost {
                            reason: format!(
                                "no answer from this node for {} s; trying another",
                                MOVE_AFTER.as_secs()
                            ),
                            unconfirmed: self.outbox.len(),
                        });
                    }
                }
                frame = cur.decoder.read_frame(&mut cur.recv) => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) if self.bye_sent && self.outbox.is_empty() => {
                            close(cur.conn.as_ref(), CloseCode::Normal);
                            return Served::Ended(Ended::Quit);
                        }
                        Ok(None) | Err(_) => return Served::Ended(self.ended(cur.conn.as_ref()).await),
                    };
                    let ev = match ServerMsg::decode(&frame) {
                        Ok(msg) => self.event(msg, net.as_deref_mut()),
                        // A newer server's message kind: skip it, so an old
                        // client keeps working.
                        Err(DecodeError::UnknownKind(kind)) => {
                            tracing::debug!(kind, "skipping an unknown message kind");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("malformed message from the server: {e}");
                            close(cur.conn.as_ref(), CloseCode::ProtocolError);
                            let mut end = self.ended(cur.conn.as_ref()).await;
                            // A server that breaks the protocol is not
                            // worth reconnecting to in a loop.
                            if let Ended::Lost { reason, unconfirmed } = end {
                                end = Ended::ByServer { code: Some(CloseCode::ProtocolError), reason, unconfirmed };
                            }
                            return Served::Ended(end);
                        }
                    };
                    if let Some(ev) = ev {
                        if emit(events, ev).await.is_err() {
                            return Served::Gone;
                        }
                    }
                }
            }
        }
    }

    /// Writes queued messages while the pacer allows, then the goodbye.
    async fn flush(&mut self, cur: &mut Current) -> Result<(), ()> {
        for join in std::mem::take(&mut self.rejoin) {
            cur.send.write_all(&join.to_frame()).await.map_err(|_| ())?;
        }
        if std::mem::take(&mut self.private_due) {
            // First on the connection, so the replay is asked for before
            // anything typed meanwhile is answered.
            let ask = self.private.request();
            cur.send.write_all(&ask.to_frame()).await.map_err(|_| ())?;
        }
        while self.outbox.has_unsent() && self.pacer.try_take(Instant::now()) {
            let Some(msg) = self.outbox.next_to_send() else {
                break;
            };
            if let (ClientMsg::RoomSay { seq, .. } | ClientMsg::RoomSigned { seq, .. }, true) =
                (&msg, self.version < 5)
            {
                self.outbox.answered(*seq);
                self.roomless.push(*seq);
                continue;
            }
            let msg = unsigned_for(msg, self.version);
            cur.send.write_all(&msg.to_frame()).await.map_err(|_| ())?;
        }
        if !self.outbox.has_unsent() && !self.bye_sent {
            if let Some(reason) = &self.quitting {
                let bye = ClientMsg::Bye {
                    reason: reason.clone(),
                };
                cur.send.write_all(&bye.to_frame()).await.map_err(|_| ())?;
                self.bye_sent = true;
                // The server answers the goodbye by finishing its side
                // once everything before it is delivered.
                let _ = cur.send.shutdown().await;
            }
        }
        Ok(())
    }

    /// Takes one command: numbered messages into the outbox, the others
    /// straight to the server (or refused while disconnected).
    async fn command(
        &mut self,
        cmd: Option<Command>,
        cur: Option<&mut Current>,
        events: &mpsc::Sender<Event>,
        net: Option<&mut Network>,
    ) -> Result<(), Gone> {
        let msg = match cmd {
            Some(Command::Say(text)) => self.public(text, false),
            Some(Command::Action(text)) => self.public(text, true),
            Some(Command::Private { to, text }) => self.private(to, text),
            Some(Command::Nick(name)) => ClientMsg::Nick { name },
            Some(Command::Who) => ClientMsg::Who,
            Some(Command::Whois(_) | Command::Verify { .. })
                if self.version < 4 && self.connected =>
            {
                let reason = format!(
                    "this server speaks protocol version {}, which has no /whois (version 4 added it)",
                    self.version
                );
                return emit(
                    events,
                    Event::Failed {
                        what: "whois".into(),
                        reason,
                    },
                )
                .await;
            }
            Some(Command::Whois(name) | Command::Verify { name, .. }) => ClientMsg::Whois { name },
            Some(Command::Device(_)) if self.version < 4 && self.connected => {
                let reason = format!(
                    "this server speaks protocol version {}, which has no /device (version 4 added it)",
                    self.version
                );
                return emit(
                    events,
                    Event::Failed {
                        what: "device".into(),
                        reason,
                    },
                )
                .await;
            }
            Some(Command::Device(op)) => ClientMsg::Device { op },
            Some(Command::Moderate(op)) if self.version < 4 && self.connected => {
                let reason = format!(
                    "this server speaks protocol version {}, which has no /{} (version 4 added it)",
                    self.version,
                    op.what()
                );
                return emit(
                    events,
                    Event::Failed {
                        what: op.what().into(),
                        reason,
                    },
                )
                .await;
            }
            Some(Command::Moderate(op)) => ClientMsg::Moderate { op },
            Some(
                cmd @ (Command::Join(_)
                | Command::Part { .. }
                | Command::Rooms
                | Command::Topic { .. }
                | Command::Invite { .. }
                | Command::RoomMode { .. }
                | Command::RoomKick { .. }
                | Command::RoomSay { .. }),
            ) if self.version < 5 && self.connected => {
                let reason = format!(
                    "this server speaks protocol version {}, which has only {} (version 5 added rooms)",
                    self.version,
                    qchat_proto::names::LOBBY
                );
                if let Command::RoomSay { .. } = cmd {
                    let seq = self.seq();
                    emit(events, Event::Sent { seq }).await?;
                    return emit(events, Event::Refused { seq, reason }).await;
                }
                return emit(
                    events,
                    Event::Failed {
                        what: "join".into(),
                        reason,
                    },
                )
                .await;
            }
            Some(Command::Join(room)) => ClientMsg::Join { room, resume: None },
            Some(Command::Part { room, reason }) => ClientMsg::Part { room, reason },
            Some(Command::Rooms) => ClientMsg::Rooms,
            Some(Command::Topic { room, text }) => ClientMsg::Topic { room, text },
            Some(Command::Invite { room, name }) => ClientMsg::Invite { room, name },
            Some(Command::RoomMode { room, invite_only }) => {
                ClientMsg::RoomMode { room, invite_only }
            }
            Some(Command::RoomKick { room, name, reason }) => {
                ClientMsg::RoomKick { room, name, reason }
            }
            Some(Command::RoomSay { room, text, action }) => self.in_room(room, text, action),
            Some(Command::Kick { name, reason }) => ClientMsg::Kick { name, reason },
            Some(Command::Rebind) => {
                if let Some(n) = net {
                    match n.redial.rebind() {
                        Ok(()) => tracing::info!("moved to a fresh local socket"),
                        Err(e) => tracing::warn!("cannot move to a fresh socket: {e}"),
                    }
                }
                return Ok(());
            }
            Some(Command::Quit(reason)) => {
                self.quit(reason);
                return Ok(());
            }
            None => {
                self.quit(String::new());
                return Ok(());
            }
        };
        if let Some(seq) = msg.seq() {
            // The interface learns the number first, so whatever follows
            // lands on the line that was typed.
            emit(events, Event::Sent { seq }).await?;
            // Refused here if too long: sent, it would end the connection.
            let queued = match msg.check_outgoing() {
                Ok(()) => self.outbox.push(seq, msg).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            return match queued {
                Ok(()) => Ok(()),
                Err(reason) => emit(events, Event::Refused { seq, reason }).await,
            };
        }
        let what = match &msg {
            ClientMsg::Nick { .. } => "nick",
            ClientMsg::Kick { .. } => "kick",
            ClientMsg::Whois { .. } => "whois",
            ClientMsg::Device { .. } => "device",
            ClientMsg::Moderate { op } => op.what(),
            ClientMsg::Join { .. } => "join",
            ClientMsg::Part { .. } => "part",
            ClientMsg::Rooms => "rooms",
            ClientMsg::Topic { .. } => "topic",
            ClientMsg::Invite { .. } => "invite",
            ClientMsg::RoomMode { .. } => "room",
            ClientMsg::RoomKick { .. } => "kick",
            _ => "who",
        };
        if let Err(e) = msg.check_outgoing() {
            return emit(
                events,
                Event::Failed {
                    what: what.into(),
                    reason: e.to_string(),
                },
            )
            .await;
        }
        match cur {
            Some(cur) if self.connected => {
                // A failed write shows up as the end of the stream.
                let _ = cur.send.write_all(&msg.to_frame()).await;
                Ok(())
            }
            _ => {
                emit(
                    events,
                    Event::Failed {
                        what: what.into(),
                        reason: "not connected to the server; try again once reconnected".into(),
                    },
                )
                .await
            }
        }
    }

    fn quit(&mut self, reason: String) {
        // A goodbye too long to send is sent without its reason.
        let reason = if (ClientMsg::Bye {
            reason: reason.clone(),
        })
        .check_outgoing()
        .is_ok()
        {
            reason
        } else {
            String::new()
        };
        self.quitting = Some(reason);
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Once a second: has the server been heard? Reports silence, moves to
    /// a fresh socket once if it lasts, and reports the answer's return.
    /// Returns how long the server has been silent, if it has been for
    /// long enough to say so.
    async fn liveness(
        &mut self,
        received: Option<u64>,
        events: &mpsc::Sender<Event>,
        net: Option<&mut Network>,
    ) -> Result<Option<Duration>, Gone> {
        // Datagrams received, from the connection's statistics: every
        // keep-alive a live server acknowledges counts, so silence here
        // means no answer, not a quiet room.
        let Some(received) = received else {
            return Ok(None);
        };
        let now = Instant::now();
        if received != self.rx_datagrams {
            self.rx_datagrams = received;
            self.heard_at = now;
            if self.no_answer {
                self.no_answer = false;
                emit(
                    events,
                    Event::Connection(ConnectionState::Connected {
                        resumed: false,
                        replayed: 0,
                        missed: 0,
                    }),
                )
                .await?;
            }
            return Ok(None);
        }
        let silent = now.saturating_duration_since(self.heard_at);
        if silent < NO_ANSWER_AFTER {
            return Ok(None);
        }
        self.no_answer = true;
        if silent >= REBIND_AFTER && !self.rebound {
            self.rebound = true;
            if let Some(n) = net {
                match n.redial.rebind() {
                    Ok(()) => tracing::info!("no answer; moved to a fresh local socket"),
                    Err(e) => tracing::warn!("cannot move to a fresh socket: {e}"),
                }
            }
        }
        emit(
            events,
            Event::Connection(ConnectionState::NoAnswer {
                secs: silent.as_secs(),
            }),
        )
        .await?;
        Ok(Some(silent))
    }

    /// Writes the resume point if it changed and the last write is old
    /// enough.
    fn save(&mut self, net: Option<&Network>) {
        if self.saved_at.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return;
        }
        self.save_now(net);
    }

    fn save_now(&mut self, net: Option<&Network>) {
        if self.private.take_dirty() {
            if let (Some(f), Some(saved)) = (&self.private_file, self.private.saved()) {
                if let Err(e) = f.save(&saved) {
                    tracing::warn!("{e}");
                }
            }
        }
        if !self.dirty {
            return;
        }
        let (Some(store), Some(point)) =
            (net.and_then(|n| n.store.as_ref()), self.transcript.point())
        else {
            return;
        };
        self.dirty = false;
        self.saved_at = Some(Instant::now());
        let rooms: Vec<(String, ResumePoint)> = self
            .rooms
            .points()
            .into_iter()
            .filter_map(|(room, p)| Some((room, p?)))
            .collect();
        if let Err(e) = store.save_all(&point, &rooms) {
            tracing::warn!("{e}");
        }
    }

    /// Waits and dials until joined again, taking commands meanwhile
    /// (messages are queued; they leave once connected).
    /// `hurry`: the first attempt goes at once, without the backoff's wait.
    async fn reconnect(
        &mut self,
        net: &mut Network,
        backoff: &mut Backoff,
        mut hurry: bool,
        commands: &mut mpsc::Receiver<Command>,
        events: &mpsc::Sender<Event>,
    ) -> Reconnected {
        let gone = Reconnected::No(Ended::Quit);
        loop {
            let (attempt, wait) = backoff.next_wait();
            let wait = if std::mem::take(&mut hurry) {
                Duration::ZERO
            } else {
                wait
            };
            if emit(
                events,
                Event::Connection(ConnectionState::Reconnecting {
                    attempt,
                    next_in: wait,
                }),
            )
            .await
            .is_err()
            {
                return gone;
            }
            let until = Instant::now() + wait;
            loop {
                if self.quitting.is_some() && self.outbox.is_empty() {
                    return Reconnected::No(Ended::Quit);
                }
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    cmd = commands.recv(), if self.quitting.is_none() => {
                        if self.command(cmd, None, events, None).await.is_err() {
                            return gone;
                        }
                    }
                }
            }
            let resume = self.transcript.point();
            let mut pending_cmds = Vec::new();
            // Once the channel has closed, `recv` would answer `None` at
            // once forever: stop asking for the rest of the attempt.
            let mut closed = false;
            let result = {
                let dial = net.redial.dial(resume);
                tokio::pin!(dial);
                loop {
                    tokio::select! {
                        r = &mut dial => break r,
                        // Held until the attempt is over: `command` needs
                        // the state the attempt does not touch, but the
                        // borrow of the dialer stays with the attempt.
                        cmd = commands.recv(), if !closed && self.quitting.is_none() && pending_cmds.len() < 64 => {
                            closed = cmd.is_none();
                            pending_cmds.push(cmd);
                        }
                    }
                }
            };
            for cmd in pending_cmds {
                if self.command(cmd, None, events, None).await.is_err() {
                    return gone;
                }
            }
            match result {
                Ok(r) => {
                    backoff.reset();
                    return Reconnected::Yes(Box::new(r));
                }
                Err(e) if e.is_fatal() => {
                    return Reconnected::No(Ended::Lost {
                        reason: e.to_string(),
                        unconfirmed: self.outbox.len(),
                    });
                }
                Err(e) => {
                    tracing::info!(attempt, "reconnecting failed: {e}");
                }
            }
        }
    }

    /// The proof for a line this client sends, when the server speaks
    /// version 4 and we have a key: the sender's clock, the public key and
    /// the signature over the signed bytes (`to` is empty for a public line;
    /// for a private one, the recipient as typed).
    fn sign(
        &self,
        kind: qchat_proto::signed::SignedKind,
        to: &str,
        text: &str,
        seq: u64,
    ) -> Option<(u64, [u8; 32], Vec<u8>)> {
        let s = self.signing.as_ref().filter(|_| self.version >= 4)?;
        let sent_ms = qchat_proto::clock::now_ms();
        let signed = qchat_proto::signed::Signed {
            kind,
            to,
            text,
            instance: s.instance,
            seq,
            sent_ms,
        };
        Some((
            sent_ms,
            s.signer.public_key(),
            s.signer.sign(&signed.bytes()),
        ))
    }

    /// A public line, signed when [`Self::sign`] can.
    fn public(&mut self, text: String, action: bool) -> ClientMsg {
        let seq = self.seq();
        let kind = qchat_proto::signed::SignedKind::public(action);
        match self.sign(kind, "", &text, seq) {
            Some((sent_ms, key, sig)) => ClientMsg::Signed {
                seq,
                text,
                action,
                sent_ms,
                key,
                sig,
            },
            None if action => ClientMsg::Action { seq, text },
            None => ClientMsg::Say { seq, text },
        }
    }

    /// A line for a room, signed under the same conditions as a lobby
    /// line; the signature covers the room's name as the server spells it
    /// (however the user typed it), which is what the others check.
    fn in_room(&mut self, room: String, text: String, action: bool) -> ClientMsg {
        let room = self.rooms.spelling(&room).map_or(room, str::to_string);
        let seq = self.seq();
        let kind = qchat_proto::signed::SignedKind::public(action);
        match self.sign(kind, &room, &text, seq) {
            Some((sent_ms, key, sig)) => ClientMsg::RoomSigned {
                room,
                seq,
                text,
                action,
                sent_ms,
                key,
                sig,
            },
            None => ClientMsg::RoomSay {
                room,
                seq,
                text,
                action,
            },
        }
    }

    /// A private message, signed under the same conditions as a public
    /// line; the signature covers the recipient's name as typed.
    fn private(&mut self, to: String, text: String) -> ClientMsg {
        let seq = self.seq();
        let kind = qchat_proto::signed::SignedKind::Private;
        match self.sign(kind, &to, &text, seq) {
            Some((sent_ms, key, sig)) => ClientMsg::SignedPrivate {
                seq,
                to,
                text,
                sent_ms,
                key,
                sig,
            },
            None => ClientMsg::Private { seq, to, text },
        }
    }

    /// The event, if any, for one message from the server: never more than
    /// one, so no `Vec` is allocated per message received.
    fn event(&mut self, msg: ServerMsg, net: Option<&mut Network>) -> Option<Event> {
        let ev = match msg {
            ServerMsg::ChatSigned {
                id,
                from,
                text,
                time_ms,
                action,
                proof,
            } => {
                if !self.fresh(id, &from, &text, action) {
                    return None;
                }
                checked(live_line(from, text, time_ms, action), action, &proof)
            }
            ServerMsg::HistorySigned {
                id,
                from,
                text,
                time_ms,
                action,
                proof,
            } => {
                if !self.fresh(id, &from, &text, action) {
                    return None;
                }
                let line = Event::History {
                    from,
                    text,
                    time_ms,
                    action,
                };
                checked(line, action, &proof)
            }
            ServerMsg::PrivateReplay { log_id, kept } => {
                self.private.replay_start(log_id, kept);
                return None;
            }
            ServerMsg::PrivateReplayed { .. } => {
                self.private.replayed();
                return None;
            }
            ServerMsg::PrivateHistory {
                conv,
                id,
                from,
                to,
                text,
                time_ms,
                proof,
            } => {
                if !self.private.history(conv, id) {
                    return None;
                }
                self.private_line(from, to, text, time_ms, true, proof)
            }
            ServerMsg::PrivateLive {
                conv,
                id,
                from,
                to,
                text,
                time_ms,
                proof,
            } => {
                if !self.private.live(conv, id) {
                    return None;
                }
                self.private_line(from, to, text, time_ms, false, proof)
            }
            ServerMsg::PrivateSigned {
                from,
                to,
                text,
                time_ms,
                proof,
            } => self.private_line(from, to, text, time_ms, false, Some(proof)),
            // Kinds of changes this build does not have.
            ServerMsg::Reserved29 => return None,
            ServerMsg::RoomJoined {
                room,
                log_id,
                topic,
                members,
                operator,
                invite_only,
                ..
            } => {
                self.rooms.joined(&room, log_id);
                self.dirty = true;
                Event::RoomJoined {
                    room,
                    topic,
                    members,
                    operator,
                    invite_only,
                }
            }
            ServerMsg::RoomHistory {
                room,
                id,
                from,
                text,
                time_ms,
                action,
                proof,
            } => {
                if !self.fresh_in(&room, id, &from, &text, action) {
                    return None;
                }
                let line = Event::History {
                    from,
                    text,
                    time_ms,
                    action,
                };
                in_room(room, line, action, proof)
            }
            ServerMsg::RoomChat {
                room,
                id,
                from,
                text,
                time_ms,
                action,
                proof,
            } => {
                if !self.fresh_in(&room, id, &from, &text, action) {
                    return None;
                }
                in_room(room, live_line(from, text, time_ms, action), action, proof)
            }
            ServerMsg::RoomReplayed {
                room,
                resumed,
                count,
                missed,
            } => Event::RoomReplayed {
                room,
                resumed,
                replayed: count,
                missed,
            },
            ServerMsg::RoomAck { room, seq, id } => {
                self.dirty |= self.rooms.accept(&room, id);
                return self.answer(seq, Event::Delivered { seq });
            }
            ServerMsg::RoomEntered { room, name } => Event::InRoom {
                room,
                event: Box::new(Event::Joined { name }),
            },
            ServerMsg::RoomLeft { room, name, reason } => Event::InRoom {
                room,
                event: Box::new(Event::Left { name, reason }),
            },
            ServerMsg::Parted { room, by, reason } => {
                self.rooms.parted(&room);
                self.dirty = true;
                Event::Parted { room, by, reason }
            }
            ServerMsg::RoomList { rooms } => Event::RoomList(rooms),
            ServerMsg::TopicSet { room, by, text } => Event::Topic { room, by, text },
            ServerMsg::Invited { room, by } => Event::Invited { room, by },
            ServerMsg::ModeSet {
                room,
                by,
                invite_only,
            } => Event::RoomMode {
                room,
                by,
                invite_only,
            },
            ServerMsg::ChatV3 {
                id,
                from,
                text,
                time_ms,
                action,
            } => {
                if !self.fresh(id, &from, &text, action) {
                    return None;
                }
                live_line(from, text, time_ms, action)
            }
            ServerMsg::HistoryV3 {
                id,
                from,
                text,
                time_ms,
                action,
            } => {
                if !self.fresh(id, &from, &text, action) {
                    return None;
                }
                Event::History {
                    from,
                    text,
                    time_ms,
                    action,
                }
            }
            ServerMsg::AckV3 { seq, id } => {
                if id != 0 {
                    self.display(id);
                }
                return self.answer(seq, Event::Delivered { seq });
            }
            ServerMsg::Replayed {
                resumed,
                count,
                missed,
            } => Event::Connection(ConnectionState::Connected {
                resumed,
                replayed: count,
                missed,
            }),
            ServerMsg::Reconnecting { name } => Event::MemberReconnecting { name },
            ServerMsg::Nodes { addrs } => {
                if let Some(n) = net {
                    n.redial.learned(&addrs);
                }
                return None;
            }
            ServerMsg::Returned { name } => Event::MemberReturned { name },
            ServerMsg::ShuttingDownV3 { reason, back } => {
                self.back = back;
                self.server_end = Some((CloseCode::ShuttingDown, reason.clone()));
                Event::ShuttingDown { reason, back }
            }
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
                history: false,
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
            ServerMsg::Ack { seq } => return self.answer(seq, Event::Delivered { seq }),
            ServerMsg::Refused { seq, reason } => {
                return self.answer(seq, Event::Refused { seq, reason })
            }
            ServerMsg::Joined { name } => Event::Joined { name },
            ServerMsg::Left { name, reason } => Event::Left { name, reason },
            ServerMsg::Renamed { old, new } => {
                if qchat_proto::names::same(&old, &self.name) {
                    self.name = new.clone();
                    if let Some(n) = net {
                        n.redial.renamed(new.clone());
                    }
                }
                Event::Renamed { old, new }
            }
            ServerMsg::Members { members } => Event::Members(members),
            ServerMsg::Whois {
                name,
                keys,
                here,
                guest,
                since_ms,
            } => Event::Whois {
                name,
                keys: keys
                    .into_iter()
                    .map(qchat_tls::Fingerprint::from_bytes)
                    .collect(),
                here,
                guest,
                since_ms,
            },
            ServerMsg::LinkCode { code, expires_ms } => Event::LinkCode { code, expires_ms },
            ServerMsg::Devices { name, devices } => Event::Devices { name, devices },
            ServerMsg::Bans { bans } => Event::Bans(bans),
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
            ServerMsg::Welcome { .. }
            | ServerMsg::WelcomeV3 { .. }
            | ServerMsg::Rejected { .. } => return None,
        };
        Some(ev)
    }

    /// Whether log message `id` is to be shown: new, and not one of ours
    /// coming back in a replay while its re-sent copy is pending.
    fn fresh(&mut self, id: u64, from: &str, text: &str, action: bool) -> bool {
        self.display(id) && !self.own_pending(from, text, action)
    }

    /// As [`Self::fresh`], for a message of `room`'s log.
    fn fresh_in(&mut self, room: &str, id: u64, from: &str, text: &str, action: bool) -> bool {
        let new = self.rooms.accept(room, id);
        self.dirty |= new;
        new && !(self.outbox.holds_in_room(room, text, action)
            && qchat_proto::names::same(from, &self.name))
    }

    /// A private message as shown: with its signature checked if it has
    /// one. Live and addressed to someone else (or, for our own echo, not
    /// from us), it fails the check as a wrong signature would: a server
    /// that redirects a private message to another member is caught here.
    fn private_line(
        &self,
        from: String,
        to: String,
        text: String,
        time_ms: u64,
        history: bool,
        proof: Option<qchat_proto::Proof>,
    ) -> Event {
        let to_us = qchat_proto::names::same(&to, &self.name);
        // A replayed one may name us, or be from us, under a name we had
        // then: it shows the recipient it was signed for, so a message
        // for someone else cannot pass as one to us.
        let ours = to_us || history || qchat_proto::names::same(&from, &self.name);
        let line = Event::Private {
            from,
            to,
            text,
            time_ms,
            history,
        };
        let Some(proof) = proof else {
            return line;
        };
        match checked(line, false, &proof) {
            Event::Signed {
                mut line,
                key,
                valid,
            } => {
                // Checked against the spelling the sender signed; shown to
                // us under our name as the room knows it, as an unsigned
                // `Private` would be.
                if let Event::Private { to, .. } = &mut *line {
                    if to_us {
                        to.clone_from(&self.name);
                    }
                }
                Event::Signed {
                    line,
                    key,
                    valid: valid && ours,
                }
            }
            other => other,
        }
    }

    /// `ev`, the answer to message `seq`, unless that was already answered
    /// (a re-sent copy's answer was reported the first time).
    fn answer(&mut self, seq: u64, ev: Event) -> Option<Event> {
        self.outbox.answered(seq).then_some(ev)
    }

    /// Whether a stored message is one of ours still waiting for its
    /// acknowledgement: stored before the connection dropped, it comes back
    /// in the replay, and its re-sent copy's acknowledgement will mark the
    /// pending line delivered. Shown again, it would be there twice. Names
    /// are unique in the room, so a message under our name that we have
    /// not displayed is ours.
    fn own_pending(&self, from: &str, text: &str, action: bool) -> bool {
        // The outbox test first: it is usually empty, and folding two names
        // (NFKC and a confusable skeleton) for every message received is not.
        self.outbox.holds_public(text, action) && qchat_proto::names::same(from, &self.name)
    }

    /// Whether log message `id` is new; it is then the newest displayed.
    fn display(&mut self, id: u64) -> bool {
        let new = self.transcript.accept(id);
        self.dirty |= new;
        new
    }

    async fn ended(&self, conn: Option<&quinn::Connection>) -> Ended {
        let unconfirmed = self.outbox.len();
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
    use super::network_tests::pipe;
    use super::*;

    /// The operator's in-process link has no network to come back over:
    /// it takes version-3 traffic all the same, and its end is the end.
    #[tokio::test]
    async fn a_link_without_a_network_speaks_v3_and_never_reconnects() {
        let (link, mut server) = pipe();
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (ev_tx, mut ev_rx) = mpsc::channel(32);
        let task = tokio::spawn(run(link, cmd_rx, ev_tx));
        cmd_tx.send(Command::Say("hi".into())).await.expect("send");
        assert_eq!(server.read().await.seq(), Some(1));
        for msg in [
            ServerMsg::HistoryV3 {
                id: 1,
                from: "bob".into(),
                text: "old".into(),
                time_ms: 0,
                action: false,
            },
            ServerMsg::Replayed {
                resumed: false,
                count: 1,
                missed: 0,
            },
            ServerMsg::AckV3 { seq: 1, id: 2 },
            ServerMsg::ChatV3 {
                id: 2,
                from: "bob".into(),
                text: "a copy".into(),
                time_ms: 0,
                action: false,
            },
            ServerMsg::ChatV3 {
                id: 3,
                from: "bob".into(),
                text: "new".into(),
                time_ms: 0,
                action: true,
            },
        ] {
            server.write(msg).await;
        }
        drop(server);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("ends in time")
            .expect("the task ran");
        assert!(matches!(ended, Ended::Lost { .. }), "{ended:?}");
        let mut events = Vec::new();
        while let Ok(ev) = ev_rx.try_recv() {
            events.push(ev);
        }
        assert_eq!(
            events,
            [
                Event::Sent { seq: 1 },
                Event::History {
                    from: "bob".into(),
                    text: "old".into(),
                    time_ms: 0,
                    action: false
                },
                Event::Connection(ConnectionState::Connected {
                    resumed: false,
                    replayed: 1,
                    missed: 0
                }),
                Event::Delivered { seq: 1 },
                Event::Action {
                    from: "bob".into(),
                    text: "new".into(),
                    time_ms: 0
                },
            ]
        );
    }

    /// A signed line waiting in the outbox goes unsigned to a server that
    /// came back speaking an older version, and as it is to a version-4 one.
    #[test]
    fn a_signed_line_is_resent_unsigned_to_an_older_server() {
        let signed = |action| ClientMsg::Signed {
            seq: 4,
            text: "hi".into(),
            action,
            sent_ms: 1,
            key: [2; 32],
            sig: vec![3; 64],
        };
        assert_eq!(
            unsigned_for(signed(false), 3),
            ClientMsg::Say {
                seq: 4,
                text: "hi".into()
            }
        );
        assert_eq!(
            unsigned_for(signed(true), 2),
            ClientMsg::Action {
                seq: 4,
                text: "hi".into()
            }
        );
        assert_eq!(unsigned_for(signed(false), 4), signed(false));
        let private = ClientMsg::SignedPrivate {
            seq: 5,
            to: "bob".into(),
            text: "psst".into(),
            sent_ms: 1,
            key: [2; 32],
            sig: vec![3; 64],
        };
        assert_eq!(
            unsigned_for(private.clone(), 3),
            ClientMsg::Private {
                seq: 5,
                to: "bob".into(),
                text: "psst".into()
            }
        );
        assert_eq!(unsigned_for(private.clone(), 4), private);
    }

    /// Decisions end the session; the network and restarts do not.
    #[test]
    fn which_ends_are_worth_a_reconnect() {
        let by = |code| Ended::ByServer {
            code: Some(code),
            reason: String::new(),
            unconfirmed: 0,
        };
        let mut st = State::new(None);
        let lost = Ended::Lost {
            reason: "timed out".into(),
            unconfirmed: 0,
        };
        assert!(st.may_retry(&lost, false));
        assert!(st.may_retry(&by(CloseCode::SlowReader), false));
        assert!(!st.may_retry(&by(CloseCode::Kicked), false));
        assert!(!st.may_retry(&by(CloseCode::Flood), false));
        assert!(!st.may_retry(&by(CloseCode::ProtocolError), false));
        assert!(!st.may_retry(&Ended::Quit, false));
        // Shutting down for good, then the same with "back soon".
        st.event(
            ServerMsg::ShuttingDownV3 {
                reason: "bye".into(),
                back: false,
            },
            None,
        );
        assert!(!st.may_retry(&by(CloseCode::ShuttingDown), false));
        st.event(
            ServerMsg::ShuttingDownV3 {
                reason: "restart".into(),
                back: true,
            },
            None,
        );
        assert!(st.may_retry(&by(CloseCode::ShuttingDown), false));
        // With another node of a cluster to go to, a shutdown for good is
        // worth a reconnect too (there), but a kick or a flood is not.
        st.back = false;
        assert!(st.may_retry(&by(CloseCode::ShuttingDown), true));
        assert!(!st.may_retry(&by(CloseCode::Kicked), true));
        assert!(!st.may_retry(&by(CloseCode::Flood), true));
        st.event(
            ServerMsg::Kicked {
                by: "op".into(),
                reason: String::new(),
            },
            None,
        );
        assert!(!st.may_retry(&by(CloseCode::Normal), false));
    }

    /// The session over an in-memory pipe, the test playing the server.
    #[tokio::test]
    async fn each_number_is_reported_when_sent_and_before_its_answer() {
        let (link, mut server) = pipe();
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
        let mut wire = Vec::new();
        for _ in 0..4 {
            wire.push(server.read().await);
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
        server.write(ServerMsg::Ack { seq: seqs[2] }).await;

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

/// The network task over pipes, with a dialer that hands each new
/// connection's server side to the test.
#[cfg(test)]
mod network_tests {
    use super::*;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    const LOG: [u8; 16] = [9; 16];
    const WAIT: Duration = Duration::from_secs(10);

    /// The test's end of one connection.
    pub(super) struct ServerSide {
        recv: ReadHalf<DuplexStream>,
        send: WriteHalf<DuplexStream>,
        decoder: FrameDecoder,
    }

    impl ServerSide {
        /// The next message but the private replay's request, which a
        /// version-5 client sends after every welcome and the tests of
        /// other things do not answer.
        pub(super) async fn read(&mut self) -> ClientMsg {
            loop {
                match self.read_any().await {
                    ClientMsg::PrivateResume { .. } => continue,
                    m => return m,
                }
            }
        }

        pub(super) async fn read_any(&mut self) -> ClientMsg {
            let frame = tokio::time::timeout(WAIT, self.decoder.read_frame(&mut self.recv))
                .await
                .expect("a frame in time")
                .expect("a frame")
                .expect("not the end");
            ClientMsg::decode(&frame).expect("a message")
        }

        pub(super) async fn write(&mut self, msg: ServerMsg) {
            self.send.write_all(&msg.to_frame()).await.expect("write");
        }
    }

    /// A session's link over an in-memory pipe, and the test's end of it.
    pub(super) fn pipe() -> (Link<BoxSend, BoxRecv>, ServerSide) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (c_recv, c_send) = tokio::io::split(client);
        let (s_recv, s_send) = tokio::io::split(server);
        let link = Link {
            send: Box::new(c_send) as BoxSend,
            recv: Box::new(c_recv) as BoxRecv,
            decoder: FrameDecoder::new(64 * 1024),
            conn: None,
            network: None,
            signing: None,
        };
        let side = ServerSide {
            recv: s_recv,
            send: s_send,
            decoder: FrameDecoder::new(64 * 1024),
        };
        (link, side)
    }

    fn welcome(rate: u32, burst: u32) -> WelcomeV3 {
        WelcomeV3 {
            version: qchat_proto::PROTOCOL_VERSION,
            log_id: LOG,
            last_id: 0,
            rate,
            burst,
            max_message: 4096,
            grace_secs: 60,
        }
    }

    /// Each dial is a new pipe; the test gets its server side and the
    /// resume point asked for.
    struct PipeDialer {
        sides: mpsc::Sender<(ServerSide, Option<ResumePoint>)>,
        welcome: WelcomeV3,
        /// The node list the session passed on, shared with the test.
        learned: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl PipeDialer {
        fn list(&self) -> Vec<String> {
            self.learned.lock().map(|l| l.clone()).unwrap_or_default()
        }
    }

    impl Redial for PipeDialer {
        fn dial(&mut self, resume: Option<ResumePoint>) -> DialFuture<'_> {
            Box::pin(async move {
                let (link, side) = pipe();
                let _ = self.sides.send((side, resume)).await;
                // With a list, the pipe plays its first node.
                let moved = self.list().first().cloned();
                Ok(Rejoined {
                    link,
                    moved,
                    welcome: Some(self.welcome.clone()),
                    members: vec!["me".into()],
                })
            })
        }
        fn rebind(&mut self) -> Result<(), ConnectError> {
            Ok(())
        }
        fn renamed(&mut self, _: String) {}
        fn learned(&mut self, nodes: &[String]) {
            if let Ok(mut l) = self.learned.lock() {
                *l = nodes.to_vec();
            }
        }
        fn elsewhere(&self) -> bool {
            !self.list().is_empty()
        }
    }

    struct Harness {
        commands: mpsc::Sender<Command>,
        events: mpsc::Receiver<Event>,
        server: Option<ServerSide>,
        redials: mpsc::Receiver<(ServerSide, Option<ResumePoint>)>,
        task: tokio::task::JoinHandle<Ended>,
        learned: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    fn start(rate: u32, burst: u32) -> Harness {
        let (mut link, server) = pipe();
        let (sides, redials) = mpsc::channel(4);
        let learned = std::sync::Arc::default();
        link.network = Some(Network {
            redial: Box::new(PipeDialer {
                sides,
                welcome: welcome(rate, burst),
                learned: std::sync::Arc::clone(&learned),
            }),
            reconnect: true,
            store: None,
            resumed_from: None,
            welcome: Some(welcome(rate, burst)),
            name: "me".into(),
            members: vec!["me".into()],
            signing: None,
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let task = tokio::spawn(run(link, cmd_rx, ev_tx));
        Harness {
            commands: cmd_tx,
            events: ev_rx,
            server: Some(server),
            redials,
            task,
            learned,
        }
    }

    impl Harness {
        async fn say(&self, text: &str) {
            self.commands
                .send(Command::Say(text.into()))
                .await
                .expect("the session takes commands");
        }

        async fn event(&mut self) -> Event {
            tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("an event in time")
                .expect("the session is running")
        }

        /// Events up to and including the first that matches.
        async fn until(&mut self, done: impl Fn(&Event) -> bool) -> Vec<Event> {
            let mut seen = Vec::new();
            loop {
                let ev = self.event().await;
                let stop = done(&ev);
                seen.push(ev);
                if stop {
                    return seen;
                }
            }
        }

        /// Drops the connection; the events up to the session's
        /// "reconnecting".
        async fn drop_connection(&mut self) -> Vec<Event> {
            self.server = None;
            self.until(|e| matches!(e, Event::Connection(ConnectionState::Reconnecting { .. })))
                .await
        }

        /// The next dial's server side and the resume point it asked for.
        async fn redial(&mut self) -> (ServerSide, Option<ResumePoint>) {
            tokio::time::timeout(WAIT, self.redials.recv())
                .await
                .expect("a reconnect in time")
                .expect("a dial")
        }
    }

    fn seq_of(m: &ClientMsg) -> u64 {
        m.seq().expect("a numbered message")
    }

    fn chat(id: u64, from: &str, text: &str) -> ServerMsg {
        ServerMsg::ChatV3 {
            id,
            from: from.into(),
            text: text.into(),
            time_ms: 0,
            action: false,
        }
    }

    fn history(id: u64, from: &str, text: &str) -> ServerMsg {
        ServerMsg::HistoryV3 {
            id,
            from: from.into(),
            text: text.into(),
            time_ms: 0,
            action: false,
        }
    }

    /// A drop between a message being stored and its acknowledgement: the
    /// message is written again with the same number after the reconnect,
    /// the resume asks for what came after the last message displayed, and
    /// the replay's overlap with what was already shown is not shown again.
    fn private_msg(history: bool, conv: [u8; 16], id: u64, text: &str) -> ServerMsg {
        let (from, to, text, time_ms, proof) = ("bob".into(), "me".into(), text.into(), 0, None);
        if history {
            ServerMsg::PrivateHistory {
                conv,
                id,
                from,
                to,
                text,
                time_ms,
                proof,
            }
        } else {
            ServerMsg::PrivateLive {
                conv,
                id,
                from,
                to,
                text,
                time_ms,
                proof,
            }
        }
    }

    /// After every welcome the client asks for its conversations' replay
    /// from its points; a live message that overtakes the replay is shown
    /// once, the older ones the replay brings are not lost, and the next
    /// connection resumes past all of them.
    #[tokio::test]
    async fn private_conversations_resume_from_their_points_with_no_gap_or_copy() {
        const STORE: [u8; 16] = [5; 16];
        const C: [u8; 16] = [6; 16];
        let mut h = start(0, 0);
        let server = h.server.as_mut().expect("connected");
        assert_eq!(
            server.read_any().await,
            ClientMsg::PrivateResume {
                log_id: [0; 16],
                points: Vec::new()
            }
        );
        server
            .write(ServerMsg::PrivateReplay {
                log_id: STORE,
                kept: true,
            })
            .await;
        // 3 is stored while the replay is read: it arrives live first.
        server.write(private_msg(false, C, 3, "three")).await;
        for (id, text) in [(1, "one"), (2, "two"), (3, "three")] {
            server.write(private_msg(true, C, id, text)).await;
        }
        server
            .write(ServerMsg::PrivateReplayed {
                conversations: 1,
                count: 3,
                missed: 0,
            })
            .await;
        server.write(private_msg(false, C, 3, "three")).await;
        server.write(private_msg(false, C, 4, "four")).await;
        let seen = h
            .until(|e| matches!(e, Event::Private { text, .. } if text == "four"))
            .await;
        let shown: Vec<(&str, bool)> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Private { text, history, .. } => Some((text.as_str(), *history)),
                _ => None,
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("three", false),
                ("one", true),
                ("two", true),
                ("four", false)
            ]
        );
        h.drop_connection().await;
        let (mut server, _) = h.redial().await;
        assert_eq!(
            server.read_any().await,
            ClientMsg::PrivateResume {
                log_id: STORE,
                points: vec![qchat_proto::PrivatePoint { conv: C, after: 4 }]
            }
        );
        h.task.abort();
    }

    #[tokio::test]
    async fn a_drop_resends_the_unacknowledged_and_the_replay_never_duplicates() {
        let mut h = start(0, 0);
        h.say("one").await;
        h.say("two").await;
        let first = h.server.as_mut().expect("connected").read().await;
        let second = h.server.as_mut().expect("connected").read().await;
        assert_eq!((seq_of(&first), seq_of(&second)), (1, 2));
        h.server
            .as_mut()
            .expect("connected")
            .write(ServerMsg::AckV3 { seq: 1, id: 1 })
            .await;
        h.server
            .as_mut()
            .expect("connected")
            .write(chat(2, "bob", "hi"))
            .await;
        let before = h
            .until(|e| matches!(e, Event::Chat { text, .. } if text == "hi"))
            .await;
        assert!(before.contains(&Event::Delivered { seq: 1 }), "{before:?}");

        // "two" was stored as id 3, but the connection drops before the
        // acknowledgement leaves.
        let lost = h.drop_connection().await;
        assert!(
            lost.iter()
                .any(|e| matches!(e, Event::Connection(ConnectionState::Lost { .. }))),
            "{lost:?}"
        );
        let (mut server, resume) = h.redial().await;
        assert_eq!(
            resume,
            Some(ResumePoint {
                log_id: LOG,
                after: 2
            })
        );
        let again = server.read().await;
        assert_eq!(again, second, "the same message under the same number");
        // The server subscribed before reading the log: id 2 comes twice.
        server.write(history(2, "bob", "hi")).await;
        server.write(history(3, "me", "two")).await;
        server.write(chat(2, "bob", "hi")).await;
        server
            .write(ServerMsg::Replayed {
                resumed: true,
                count: 2,
                missed: 0,
            })
            .await;
        server.write(ServerMsg::AckV3 { seq: 2, id: 3 }).await;
        server.write(chat(4, "bob", "after")).await;
        let after = h
            .until(|e| matches!(e, Event::Chat { text, .. } if text == "after"))
            .await;
        let shown: Vec<&str> = after
            .iter()
            .filter_map(|e| match e {
                Event::Chat { text, .. } | Event::History { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        // "two" is ours: its pending line turns delivered, no second copy.
        assert_eq!(shown, ["after"], "{after:?}");
        assert!(after.contains(&Event::Delivered { seq: 2 }), "{after:?}");
        assert!(
            after.contains(&Event::Connection(ConnectionState::Connected {
                resumed: true,
                replayed: 2,
                missed: 0
            })),
            "{after:?}"
        );
        assert!(after
            .iter()
            .any(|e| matches!(e, Event::Roster { members, .. } if members == &["me".to_string()])));
        h.task.abort();
    }

    /// Typed while disconnected: numbered at once, held, and sent on the
    /// next connection in order.
    #[tokio::test]
    async fn a_reconnect_rejoins_each_room_from_its_point_before_resending_its_lines() {
        let mut h = start(0, 0);
        let room_log = [7; 16];
        let server = h.server.as_mut().expect("connected");
        server
            .write(ServerMsg::RoomJoined {
                room: "#dev".into(),
                log_id: room_log,
                last_id: 0,
                topic: String::new(),
                members: vec!["me".into(), "bob".into()],
                operator: true,
                invite_only: false,
            })
            .await;
        for id in 1..=2 {
            server
                .write(ServerMsg::RoomChat {
                    room: "#dev".into(),
                    id,
                    from: "bob".into(),
                    text: format!("dev {id}"),
                    time_ms: 0,
                    action: false,
                    proof: None,
                })
                .await;
        }
        // Ids of the lobby's log are another log's: no effect on the room.
        server.write(chat(5, "bob", "lobby")).await;
        let shown = h
            .until(|e| matches!(e, Event::Chat { text, .. } if text == "lobby"))
            .await;
        let in_dev = shown
            .iter()
            .filter(|e| matches!(e, Event::InRoom { room, .. } if room == "#dev"))
            .count();
        assert_eq!(in_dev, 2, "{shown:?}");
        h.drop_connection().await;
        h.commands
            .send(Command::RoomSay {
                room: "#dev".into(),
                text: "while away".into(),
                action: false,
            })
            .await
            .expect("the task runs");
        h.until(|e| *e == Event::Sent { seq: 1 }).await;
        let (mut server, _) = h.redial().await;
        assert_eq!(
            server.read().await,
            ClientMsg::Join {
                room: "#dev".into(),
                resume: Some(ResumePoint {
                    log_id: room_log,
                    after: 2
                })
            }
        );
        assert!(
            matches!(server.read().await, ClientMsg::RoomSay { seq: 1, room, .. } if room == "#dev")
        );
        // The replay overlapping what was shown shows nothing twice.
        server
            .write(ServerMsg::RoomHistory {
                room: "#dev".into(),
                id: 2,
                from: "bob".into(),
                text: "dev 2".into(),
                time_ms: 0,
                action: false,
                proof: None,
            })
            .await;
        server
            .write(ServerMsg::RoomHistory {
                room: "#dev".into(),
                id: 3,
                from: "bob".into(),
                text: "dev 3".into(),
                time_ms: 0,
                action: false,
                proof: None,
            })
            .await;
        let replay = h
            .until(|e| matches!(e, Event::InRoom { event, .. } if matches!(&**event, Event::History { text, .. } if text == "dev 3")))
            .await;
        assert!(
            !replay.iter().any(|e| matches!(e, Event::InRoom { event, .. } if matches!(&**event, Event::History { text, .. } if text == "dev 2"))),
            "{replay:?}"
        );
        h.task.abort();
    }

    /// A node of a cluster that shuts down for good sends its members to
    /// another node at once: the list it gave reaches the dialer, the first
    /// attempt waits for nothing, and the user is told where the session
    /// went.
    #[tokio::test]
    async fn a_node_shutting_down_sends_the_session_to_another_at_once() {
        let mut h = start(0, 0);
        let server = h.server.as_mut().expect("connected");
        server
            .write(ServerMsg::Nodes {
                addrs: vec!["10.0.0.2:8080".into()],
            })
            .await;
        server
            .write(ServerMsg::ShuttingDownV3 {
                reason: "node leaving".into(),
                back: false,
            })
            .await;
        h.until(|e| matches!(e, Event::ShuttingDown { .. })).await;
        let seen = h.drop_connection().await;
        assert_eq!(
            seen.last(),
            Some(&Event::Connection(ConnectionState::Reconnecting {
                attempt: 1,
                next_in: Duration::ZERO
            }))
        );
        assert_eq!(
            *h.learned.lock().expect("not poisoned"),
            vec!["10.0.0.2:8080".to_string()]
        );
        let (_server, _) = h.redial().await;
        let seen = h
            .until(|e| matches!(e, Event::Connection(ConnectionState::Moved { .. })))
            .await;
        assert_eq!(
            seen.last(),
            Some(&Event::Connection(ConnectionState::Moved {
                node: "10.0.0.2:8080".into()
            }))
        );
        h.task.abort();
    }

    /// The same shutdown from a server alone ends the session: there is
    /// nowhere else to go, and it said it is not coming back.
    #[tokio::test]
    async fn a_server_alone_shutting_down_for_good_ends_the_session() {
        let mut h = start(0, 0);
        let server = h.server.as_mut().expect("connected");
        server
            .write(ServerMsg::ShuttingDownV3 {
                reason: "closing".into(),
                back: false,
            })
            .await;
        h.until(|e| matches!(e, Event::ShuttingDown { .. })).await;
        h.server = None;
        let ended = tokio::time::timeout(WAIT, &mut h.task)
            .await
            .expect("the session ends in time")
            .expect("the session does not panic");
        assert!(
            matches!(
                ended,
                Ended::ByServer {
                    code: Some(CloseCode::ShuttingDown),
                    ..
                }
            ),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn messages_typed_while_disconnected_leave_on_reconnect() {
        let mut h = start(0, 0);
        h.drop_connection().await;
        h.say("while").await;
        h.say("away").await;
        let sent = h.until(|e| *e == Event::Sent { seq: 2 }).await;
        assert!(sent.contains(&Event::Sent { seq: 1 }));
        let (mut server, _) = h.redial().await;
        let a = server.read().await;
        let b = server.read().await;
        assert_eq!((seq_of(&a), seq_of(&b)), (1, 2));
        h.task.abort();
    }

    /// Quitting while disconnected with a message waiting: the session
    /// comes back to deliver it, says goodbye after it, and only then ends.
    #[tokio::test]
    async fn a_quit_while_disconnected_delivers_what_waits_first() {
        let mut h = start(0, 0);
        h.drop_connection().await;
        h.say("last words").await;
        h.commands
            .send(Command::Quit("done".into()))
            .await
            .expect("the session takes commands");
        let (mut server, _) = h.redial().await;
        let say = server.read().await;
        assert_eq!(seq_of(&say), 1);
        server.write(ServerMsg::AckV3 { seq: 1, id: 1 }).await;
        assert_eq!(
            server.read().await,
            ClientMsg::Bye {
                reason: "done".into()
            }
        );
        // The server finishes its side once everything is delivered.
        server.send.shutdown().await.expect("finish");
        let ended = tokio::time::timeout(WAIT, h.task)
            .await
            .expect("the session ends in time")
            .expect("the task ran");
        assert_eq!(ended, Ended::Quit);
        let mut rest = Vec::new();
        while let Ok(ev) = h.events.try_recv() {
            rest.push(ev);
        }
        assert!(rest.contains(&Event::Delivered { seq: 1 }), "{rest:?}");
    }

    /// A paste larger than the server's burst leaves at the server's rate
    /// (measured on tokio's paused clock, so this is not a timing test):
    /// never faster, and all of it.
    #[tokio::test(start_paused = true)]
    async fn a_paste_is_paced_to_the_welcome() {
        let mut h = start(5, 4);
        let t0 = Instant::now();
        for i in 0..12 {
            h.say(&format!("line {i}")).await;
        }
        let mut arrivals = Vec::new();
        for i in 0..12u64 {
            let m = h.server.as_mut().expect("connected").read().await;
            assert_eq!(seq_of(&m), i + 1);
            arrivals.push(Instant::now().duration_since(t0));
        }
        // One message short of the burst at once, then one per 200 ms.
        for (i, at) in arrivals.iter().enumerate().skip(3) {
            let earliest = Duration::from_millis(200) * (i as u32 - 2);
            assert!(
                *at >= earliest,
                "message {i} left at {at:?}, before {earliest:?}"
            );
        }
        h.task.abort();
    }
}
