//! The messages, one enum per direction, postcard-encoded inside frames.
//!
//! postcard writes an enum as the variant's index (a varint) followed by its
//! fields in declaration order, so **the order of variants and fields is the
//! wire format**. New kinds are only ever appended; `docs/PROTOCOL.md` lists
//! every index. A receiver that meets a kind newer than itself gets
//! [`DecodeError::UnknownKind`] and can decide what that means: the client
//! skips it (an old client keeps working against a newer server), the server
//! closes the connection (the client ignored the negotiated version).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strum::EnumCount;

/// Messages from a client to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::EnumCount)]
#[cfg_attr(test, derive(strum::EnumIter))]
pub enum ClientMsg {
    /// 0: the first frame on the stream, and only the first.
    Hello {
        /// The highest protocol version the client speaks.
        version: u32,
        /// The name the member wants in the room.
        name: String,
    },
    /// 1: a line for the room.
    Say {
        /// Chosen by the client, increasing; echoed in [`ServerMsg::Ack`] or
        /// [`ServerMsg::Refused`] so the client knows what was delivered.
        seq: u64,
        /// The message text.
        text: String,
    },
    /// 2: an orderly goodbye; the reason is shown to the others.
    Bye {
        /// Why the member leaves (may be empty).
        reason: String,
    },
    /// 3 (version 2): a message for one member only.
    Private {
        /// As for `Say`.
        seq: u64,
        /// The recipient's name, matched as the same name (case and
        /// look-alikes ignored, see [`crate::names::fold`]).
        to: String,
        /// The text.
        text: String,
    },
    /// 4 (version 2): an action, shown as `* name text` (`/me`).
    Action {
        /// As for `Say`.
        seq: u64,
        /// The text.
        text: String,
    },
    /// 5 (version 2): change my name.
    Nick {
        /// The new name; the same rules as in the hello.
        name: String,
    },
    /// 6 (version 2): ask for the member list.
    Who,
    /// 7 (version 2): remove a member (operators only).
    Kick {
        /// Who.
        name: String,
        /// Why, shown to everyone.
        reason: String,
    },
    /// 8 (version 3): the first frame of a version-3 client, instead of
    /// `Hello`. It names the client's instance, which together with each
    /// message's `seq` is that message's idempotency key, and may ask to
    /// resume after the last message the client displayed.
    HelloV3 {
        /// The highest protocol version the client speaks (3 or more).
        version: u32,
        /// The name the member wants in the room.
        name: String,
        /// Random, chosen once per client process and kept across its
        /// reconnects. `(instance, seq)` identifies a `Say`, `Action` or
        /// `Private`: a copy re-sent after a reconnect is acknowledged, never
        /// delivered twice. It also lets the member take back its own name
        /// while the server still holds it for a reconnect.
        instance: [u8; 16],
        /// Where to resume, or `None` for a fresh join (the usual history).
        resume: Option<ResumePoint>,
    },
    /// 9 (version 4): who is this member — answered with
    /// [`ServerMsg::Whois`], or `Failed` with `what` = `whois`.
    Whois {
        /// The name, matched as the same name (see [`crate::names::fold`]).
        name: String,
    },
    /// 10 (version 4): the first frame of a new device joining a
    /// registered name with a link code, instead of `HelloV3`. The fields
    /// are `HelloV3`'s, then the code: the server adds the key the client
    /// presented to the name's keys if the code is live, unused and was
    /// made for this name; otherwise it refuses with `LinkRefused` and
    /// nothing is claimed.
    HelloLink {
        /// As in `HelloV3` (4 or more).
        version: u32,
        /// The registered name to join.
        name: String,
        /// As in `HelloV3`.
        instance: [u8; 16],
        /// As in `HelloV3`.
        resume: Option<ResumePoint>,
        /// The link code `/device link` printed on a device of the name.
        code: String,
    },
    /// 11 (version 4): manage the keys (devices) of my registered name —
    /// answered with [`ServerMsg::LinkCode`] or [`ServerMsg::Devices`], or
    /// `Failed` with `what` = `device`.
    Device {
        /// What to do.
        op: DeviceOp,
    },
    /// 12 (version 4): a private message signed by the sender's key,
    /// instead of `Private`; sent under the same conditions as
    /// [`ClientMsg::Signed`] and checked by the server the same way (the
    /// key is the connection's, the signature has the right length). The
    /// signature covers `to` exactly as sent.
    SignedPrivate {
        /// As for `Say`.
        seq: u64,
        /// As for `Private`.
        to: String,
        /// The text.
        text: String,
        /// The sender's clock when it wrote the message, ms since the epoch.
        sent_ms: u64,
        /// The sender's raw Ed25519 public key (32 bytes).
        key: [u8; 32],
        /// The Ed25519 signature over [`crate::signed::Signed::bytes`].
        #[serde(with = "raw_bytes")]
        sig: Vec<u8>,
    },
    /// 13 (version 4): an operator's request — `/op`, `/deop`, `/ban`,
    /// `/unban`, `/bans` — answered with [`ServerMsg::Bans`] (for `Bans`)
    /// or `Notice`, or `Failed` with `what` = `op`, `deop`, `ban`, `unban`
    /// or `bans`. Only operators may; anyone else is refused.
    Moderate {
        /// What to do.
        op: ModOp,
    },
    /// 14: reserved (a server treats it as a protocol error).
    #[doc(hidden)]
    Reserved14,
    /// 15 (version 4): a public line or action signed by the sender's key,
    /// instead of `Say`/`Action`; sent only to a server that speaks version
    /// 4 or later, by a client that presented a key. The server checks that
    /// `key` is the key of the connection's certificate and that `sig` is
    /// [`crate::signed::SIGNATURE_LEN`] bytes, stores the proof with the
    /// message and forwards it; it does not verify the signature (each
    /// recipient does).
    Signed {
        /// As for `Say`.
        seq: u64,
        /// The text.
        text: String,
        /// Whether it is an action (`/me`).
        action: bool,
        /// The sender's clock when it wrote the line, ms since the epoch.
        sent_ms: u64,
        /// The sender's raw Ed25519 public key (32 bytes).
        key: [u8; 32],
        /// The Ed25519 signature over [`crate::signed::Signed::bytes`].
        #[serde(with = "raw_bytes")]
        sig: Vec<u8>,
    },
    /// 16 (version 5): join a room, creating it if it does not exist (the
    /// creator is its operator). Answered with [`ServerMsg::RoomJoined`],
    /// the room's history or what came after `resume`, and
    /// [`ServerMsg::RoomReplayed`]; or `Failed` with `what` = `join`. A
    /// client that was in rooms sends one `Join` per room, with its point,
    /// right after the welcome of each (re)connection: that is how every
    /// room resumes.
    Join {
        /// The room, `#` and a name (see [`crate::names::validate_room`]).
        room: String,
        /// Where the client left off in this room's log, or `None`.
        resume: Option<ResumePoint>,
    },
    /// 17 (version 5): leave a room; answered with [`ServerMsg::Parted`],
    /// or `Failed` with `what` = `part`.
    Part {
        /// The room.
        room: String,
        /// Why, shown to the room's members (may be empty).
        reason: String,
    },
    /// 18 (version 5): list the rooms: answered with
    /// [`ServerMsg::RoomList`].
    Rooms,
    /// 19 (version 5): set a room's topic (its operators, and server
    /// operators); `Failed` with `what` = `topic` otherwise.
    Topic {
        /// The room.
        room: String,
        /// The topic (may be empty: no topic).
        text: String,
    },
    /// 20 (version 5): a line (or action) for a room the member is in;
    /// acknowledged with [`ServerMsg::RoomAck`] or refused with `Refused`.
    RoomSay {
        /// The room.
        room: String,
        /// As for `Say`: numbered in the same sequence as every other kind.
        seq: u64,
        /// The text.
        text: String,
        /// Whether it is an action (`/me`).
        action: bool,
    },
    /// 21 (version 5): [`ClientMsg::RoomSay`] signed by the sender's key,
    /// as [`ClientMsg::Signed`] is for the lobby. The signed bytes'
    /// recipient field holds the room's name as the server spells it
    /// (`RoomJoined`'s), which `room` repeats, so the signature binds the
    /// line to its room.
    RoomSigned {
        /// The room.
        room: String,
        /// As for `Say`.
        seq: u64,
        /// The text.
        text: String,
        /// Whether it is an action.
        action: bool,
        /// The sender's clock, ms since the epoch.
        sent_ms: u64,
        /// The sender's raw Ed25519 public key.
        key: [u8; 32],
        /// The signature over [`crate::signed::Signed::bytes`].
        #[serde(with = "raw_bytes")]
        sig: Vec<u8>,
    },
    /// 22 (version 5): remove a member from a room (its operators, and
    /// server operators); `Failed` with `what` = `kick` otherwise.
    RoomKick {
        /// The room.
        room: String,
        /// Who.
        name: String,
        /// Why, shown to the room.
        reason: String,
    },
    /// 23 (version 5): let a member into an invite-only room (its
    /// operators); `Failed` with `what` = `invite` otherwise.
    Invite {
        /// The room.
        room: String,
        /// Who, matched as the same name.
        name: String,
    },
    /// 24 (version 5): make a room invite-only or open (its operators);
    /// `Failed` with `what` = `room` otherwise.
    RoomMode {
        /// The room.
        room: String,
        /// Invite-only from now on, or open.
        invite_only: bool,
    },
    /// 25 (version 5): the private conversations' replay, asked for right
    /// after each welcome: the server answers [`ServerMsg::PrivateReplay`],
    /// then [`ServerMsg::PrivateHistory`] frames, then
    /// [`ServerMsg::PrivateReplayed`].
    PrivateResume {
        /// [`ServerMsg::PrivateReplay::log_id`] of the store the points
        /// belong to (zeros: none yet). Points of another store are ignored.
        log_id: [u8; 16],
        /// Where the client left off in each conversation it has seen; a
        /// conversation without a point gets its newest messages.
        points: Vec<PrivatePoint>,
    },
}

/// Where a client left off in one private conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct PrivatePoint {
    /// The conversation ([`ServerMsg::PrivateLive::conv`]).
    pub conv: [u8; 16],
    /// The last message id of it the client displayed.
    pub after: u64,
}

/// What [`ClientMsg::Moderate`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub enum ModOp {
    /// 0: the bans in force (answered with [`ServerMsg::Bans`]).
    #[cfg_attr(test, default)]
    Bans,
    /// 1: make every key the name has now an operator (stored).
    Op {
        /// The name, matched as the same name.
        name: String,
    },
    /// 2: take operator rights back from the name's keys.
    Deop {
        /// The name, matched as the same name.
        name: String,
    },
    /// 3: ban the name's keys (a guest: its address, for a while) and
    /// disconnect it.
    Ban {
        /// The name, matched as the same name.
        name: String,
        /// Why, shown to the banned member, at its refusals, and in the list.
        reason: String,
    },
    /// 4: lift a ban, by the banned name, a banned key's fingerprint (any
    /// spelling) or a banned address.
    Unban {
        /// The name, fingerprint or address.
        target: String,
    },
}

impl ModOp {
    /// The command's name, the `what` of its `Failed`.
    pub fn what(&self) -> &'static str {
        match self {
            ModOp::Bans => "bans",
            ModOp::Op { .. } => "op",
            ModOp::Deop { .. } => "deop",
            ModOp::Ban { .. } => "ban",
            ModOp::Unban { .. } => "unban",
        }
    }
}

/// One ban, as listed in [`ServerMsg::Bans`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct BanInfo {
    /// The name banned, as it was spelt.
    pub name: String,
    /// The keys banned; empty for a guest's address ban.
    pub keys: Vec<[u8; 32]>,
    /// The address banned (a guest's), or empty.
    pub addr: String,
    /// The operator who banned.
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// When the ban ends, ms since the Unix epoch; 0: never (keys).
    pub until_ms: u64,
    /// Why.
    pub reason: String,
}

/// What [`ClientMsg::Device`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub enum DeviceOp {
    /// 0: a new one-time link code for my name.
    #[cfg_attr(test, default)]
    Link,
    /// 1: the keys of my name.
    List,
    /// 2: remove this key from my name (answered with the list that is
    /// left).
    Remove {
        /// The key's fingerprint (SHA-256 of its SubjectPublicKeyInfo).
        key: [u8; 32],
    },
}

/// One key of a registered name, as listed in [`ServerMsg::Devices`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct DeviceInfo {
    /// The key's fingerprint.
    pub key: [u8; 32],
    /// When it was added to the name, ms since the Unix epoch.
    pub added_ms: u64,
    /// When a device with it last joined or left under the name, ms since
    /// the Unix epoch.
    pub last_ms: u64,
    /// Whether it is the key of the connection that asked.
    pub this: bool,
}

/// Messages from the server to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::EnumCount)]
#[cfg_attr(test, derive(strum::EnumIter))]
pub enum ServerMsg {
    /// 0: the hello was accepted; the member is now in the room.
    Welcome {
        /// The protocol version the server will speak on this connection.
        version: u32,
        /// The server's display name.
        server_name: String,
        /// The member's name as registered.
        name: String,
        /// Everyone in the room, the new member included, in join order.
        members: Vec<String>,
    },
    /// 1: the hello was refused; the server closes the connection after it.
    Rejected {
        /// Machine-readable cause.
        reason: RejectReason,
        /// One sentence for the user.
        detail: String,
    },
    /// 2: a message from another member.
    Chat {
        /// The sender's name.
        from: String,
        /// The text.
        text: String,
        /// When the server received it, milliseconds since the Unix epoch.
        time_ms: u64,
    },
    /// 3: the server accepted the client's `Say` with this `seq` and has
    /// queued it for every other member.
    Ack {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// 4: someone entered the room.
    Joined {
        /// Their name.
        name: String,
    },
    /// 5: someone left the room.
    Left {
        /// Their name.
        name: String,
        /// Why: their own quit reason, or what the server saw.
        reason: String,
    },
    /// 6: the server refused the client's `Say` with this `seq`; nothing was
    /// delivered.
    Refused {
        /// The refused sequence number.
        seq: u64,
        /// Why, for the user.
        reason: String,
    },
    /// 7: a message from the server itself (warnings, operator notes).
    Notice {
        /// The text.
        text: String,
    },
    /// 8: the server is shutting down; the connection closes after this.
    ShuttingDown {
        /// Why, for the user.
        reason: String,
    },
    /// 9: a private message, sent to its recipient and echoed to its
    /// sender so both show the same line.
    Private {
        /// The sender's name.
        from: String,
        /// The recipient's name.
        to: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
    },
    /// 10: an action (`/me`) from another member.
    Action {
        /// The sender's name.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
    },
    /// 11: a member changed name (sent to everyone, the member included).
    Renamed {
        /// The old name.
        old: String,
        /// The new name.
        new: String,
    },
    /// 12: the member list, in answer to `Who`.
    Members {
        /// Everyone in the room, in join order.
        members: Vec<MemberInfo>,
    },
    /// 13: a message from before the member joined, replayed right after the
    /// welcome. Private messages are never replayed here (see
    /// [`ServerMsg::PrivateHistory`]).
    History {
        /// The sender's name at the time.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// Whether it was an action (`/me`).
        action: bool,
    },
    /// 14: a request (`Nick`, `Kick`, `Who`) could not be carried out.
    Failed {
        /// Which request: `nick`, `kick`, `who`, `msg`.
        what: String,
        /// Why, for the user.
        reason: String,
    },
    /// 15: you were removed by an operator; the connection closes after
    /// this with `KICKED`.
    Kicked {
        /// The operator's name.
        by: String,
        /// Why.
        reason: String,
    },
    /// 16 (version 3): the hello was accepted (the version-3 `Welcome`).
    WelcomeV3 {
        /// The protocol version the server will speak on this connection.
        version: u32,
        /// The server's display name.
        server_name: String,
        /// The member's name as registered.
        name: String,
        /// Everyone in the room, the new member included, in join order.
        members: Vec<String>,
        /// The room log's identity: random, made once when the log was
        /// created. A client whose saved point names another log is talking
        /// to a replaced or wiped log and must not resume from it.
        log_id: [u8; 16],
        /// The newest message id in the log when the member joined: every
        /// message after it arrives live, everything up to it by replay.
        last_id: u64,
        /// Messages per second the member may send on average (0 =
        /// unlimited); a client paces itself to it.
        rate: u32,
        /// Messages the member may send at once before the rate applies.
        burst: u32,
        /// Longest message text the server accepts, in bytes.
        max_message: u32,
        /// Seconds the server keeps a dropped member's name and place for
        /// its reconnect.
        grace_secs: u32,
    },
    /// 17 (version 3): a public message as the room's log stored it. Sent
    /// live to every member but its author (who gets `AckV3`).
    ChatV3 {
        /// Its id in the log: strictly increasing, assigned by the server.
        id: u64,
        /// The sender's name.
        from: String,
        /// The text.
        text: String,
        /// When the server received it, milliseconds since the Unix epoch.
        time_ms: u64,
        /// Whether it is an action (`/me`).
        action: bool,
    },
    /// 18 (version 3): a stored public message replayed after the welcome:
    /// the history of a fresh join, or what a resuming member missed.
    HistoryV3 {
        /// Its id in the log.
        id: u64,
        /// The sender's name at the time.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// Whether it was an action.
        action: bool,
    },
    /// 19 (version 3): the client's `Say`/`Action`/`Private` with this `seq`
    /// was stored (public messages) and delivered.
    AckV3 {
        /// The acknowledged sequence number.
        seq: u64,
        /// The message's id in the log; 0 for a private message, which is
        /// not logged.
        id: u64,
    },
    /// 20 (version 3): the replay after the welcome is complete; live
    /// messages follow.
    Replayed {
        /// Whether the server resumed from the client's point (`false`: a
        /// fresh join, because none was asked for or the log id differs).
        resumed: bool,
        /// Messages replayed.
        count: u64,
        /// Messages after the client's point that were not replayed (older
        /// than the log keeps, or beyond what the server replays at once).
        missed: u64,
    },
    /// 21 (version 3): a member's connection dropped; the server keeps its
    /// name and place for `grace_secs` in case it comes back.
    Reconnecting {
        /// Their name.
        name: String,
    },
    /// 22 (version 3): a member that was reconnecting is back (no `Joined`
    /// follows; if it does not come back, `Left` does).
    Returned {
        /// Their name.
        name: String,
    },
    /// 23 (version 3): the server is going away; the connection closes
    /// after this.
    ShuttingDownV3 {
        /// Why, for the user.
        reason: String,
        /// Whether the server expects to be back (a restart): the client
        /// reconnects and resumes.
        back: bool,
    },
    /// 24 (version 4): the answer to `Whois`.
    Whois {
        /// The name as the server knows it: as registered, or as the
        /// member in the room spells it.
        name: String,
        /// The fingerprints (SHA-256 of the SubjectPublicKeyInfo) of the
        /// keys the name is registered to; empty for a guest.
        keys: Vec<[u8; 32]>,
        /// Whether someone is in the room under the name now.
        here: bool,
        /// Whether the one in the room is a guest (no key; the name is not
        /// registered).
        guest: bool,
        /// Since when, ms since the Unix epoch: when the name was
        /// registered, or for a guest when it joined.
        since_ms: u64,
    },
    /// 25 (version 4): a new one-time link code, in answer to
    /// `Device { op: Link }`.
    LinkCode {
        /// The code, for `qchat connect --link` on the new device.
        code: String,
        /// When it stops working, ms since the Unix epoch.
        expires_ms: u64,
    },
    /// 26 (version 4): the keys of the asker's name, in answer to
    /// `Device { op: List }` and `Device { op: Remove }`.
    Devices {
        /// The name as registered.
        name: String,
        /// Its keys, oldest first.
        devices: Vec<DeviceInfo>,
    },
    /// 27 (version 4): a signed private message, sent to its recipient
    /// (instead of `Private`, for recipients that speak version 4) and
    /// echoed to its sender.
    PrivateSigned {
        /// The sender's name.
        from: String,
        /// The recipient's name as the sender addressed it: the name the
        /// signature covers.
        to: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// What the sender signed it with.
        proof: Proof,
    },
    /// 28 (version 4): the bans in force, in answer to
    /// `Moderate { op: Bans }`.
    Bans {
        /// Oldest first.
        bans: Vec<BanInfo>,
    },
    /// 29: reserved (a client skips it).
    #[doc(hidden)]
    Reserved29,
    /// 30 (version 4): a signed public message, live (instead of `ChatV3`
    /// for members that speak version 4).
    ChatSigned {
        /// Its id in the log.
        id: u64,
        /// The sender's name.
        from: String,
        /// The text.
        text: String,
        /// When the server received it, ms since the Unix epoch.
        time_ms: u64,
        /// Whether it is an action (`/me`).
        action: bool,
        /// What the sender signed it with.
        proof: Proof,
    },
    /// 31 (version 4): a signed public message replayed after the welcome
    /// (instead of `HistoryV3`).
    HistorySigned {
        /// Its id in the log.
        id: u64,
        /// The sender's name at the time.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// Whether it was an action.
        action: bool,
        /// What the sender signed it with.
        proof: Proof,
    },
    /// 32 (version 5): the member is in a room now (its `Join`
    /// succeeded); the room's replay and [`ServerMsg::RoomReplayed`]
    /// follow.
    RoomJoined {
        /// The room, as its creator spelt it.
        room: String,
        /// The room log's identity (each room has its own log).
        log_id: [u8; 16],
        /// The newest id in the room's log at the join.
        last_id: u64,
        /// The topic (empty: none).
        topic: String,
        /// The room's members, the joiner included.
        members: Vec<String>,
        /// Whether the joiner is one of the room's operators.
        operator: bool,
        /// Whether the room is invite-only.
        invite_only: bool,
    },
    /// 33 (version 5): a stored message of a room, replayed after
    /// [`ServerMsg::RoomJoined`].
    RoomHistory {
        /// The room.
        room: String,
        /// Its id in the room's log.
        id: u64,
        /// The sender's name at the time.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// Whether it was an action.
        action: bool,
        /// The sender's signature, if it signed.
        proof: Option<Proof>,
    },
    /// 34 (version 5): a room's replay is complete.
    RoomReplayed {
        /// The room.
        room: String,
        /// As in [`ServerMsg::Replayed`].
        resumed: bool,
        /// Messages replayed.
        count: u64,
        /// Messages after the point that were not replayed.
        missed: u64,
    },
    /// 35 (version 5): a room's message, live, to every member of the room
    /// but its author (who gets [`ServerMsg::RoomAck`]).
    RoomChat {
        /// The room.
        room: String,
        /// Its id in the room's log.
        id: u64,
        /// The sender's name.
        from: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// Whether it is an action.
        action: bool,
        /// The sender's signature, if it signed.
        proof: Option<Proof>,
    },
    /// 36 (version 5): the author's `RoomSay`/`RoomSigned` was stored.
    RoomAck {
        /// The room.
        room: String,
        /// The acknowledged sequence number.
        seq: u64,
        /// The message's id in the room's log.
        id: u64,
    },
    /// 37 (version 5): someone entered a room the member is in.
    RoomEntered {
        /// The room.
        room: String,
        /// Their name.
        name: String,
    },
    /// 38 (version 5): someone left a room the member is in (parted,
    /// kicked, disconnected).
    RoomLeft {
        /// The room.
        room: String,
        /// Their name.
        name: String,
        /// Why.
        reason: String,
    },
    /// 39 (version 5): the member is no longer in a room: it parted
    /// (`by` empty) or was kicked by `by`.
    Parted {
        /// The room.
        room: String,
        /// The operator who kicked, or empty.
        by: String,
        /// Why.
        reason: String,
    },
    /// 40 (version 5): the rooms, in answer to `Rooms`: the public ones
    /// and those the asker is in or invited to.
    RoomList {
        /// By name.
        rooms: Vec<RoomInfo>,
    },
    /// 41 (version 5): a room's topic changed.
    TopicSet {
        /// The room.
        room: String,
        /// Who set it.
        by: String,
        /// The topic (empty: none).
        text: String,
    },
    /// 42 (version 5): the member was invited to a room.
    Invited {
        /// The room.
        room: String,
        /// Who invited.
        by: String,
    },
    /// 43 (version 5): a room became invite-only, or open.
    ModeSet {
        /// The room.
        room: String,
        /// Who changed it.
        by: String,
        /// Invite-only now.
        invite_only: bool,
    },
    /// 44 (version 5): the start of the answer to
    /// [`ClientMsg::PrivateResume`]: which store the conversations' ids
    /// belong to.
    PrivateReplay {
        /// The private store's identity: random, made once with the store.
        /// A client whose points name another store starts afresh.
        log_id: [u8; 16],
        /// Whether the server keeps private history at all (`false`:
        /// `--private-history off`; nothing is replayed, and private
        /// messages come live only, as `Private`/`PrivateSigned`).
        kept: bool,
    },
    /// 45 (version 5): a stored private message replayed after
    /// `PrivateReplay`, oldest first within each conversation.
    PrivateHistory {
        /// The conversation, the same for both of its parties.
        conv: [u8; 16],
        /// Its id in the conversation: from 1, increasing by 1.
        id: u64,
        /// The sender's name when it was sent.
        from: String,
        /// The recipient's name as the sender addressed it.
        to: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// The sender's signature, if it signed the message.
        proof: Option<Proof>,
    },
    /// 46 (version 5): the private replay is complete.
    PrivateReplayed {
        /// Conversations replayed (those with anything to replay).
        conversations: u64,
        /// `PrivateHistory` frames sent.
        count: u64,
        /// Messages after the client's points that were not replayed
        /// (deleted by retention, or beyond what is replayed at once).
        missed: u64,
    },
    /// 47 (version 5): a stored private message, live: sent to its
    /// recipient and echoed to its sender, instead of `Private` and
    /// `PrivateSigned` to members that speak version 5.
    PrivateLive {
        /// As in `PrivateHistory`.
        conv: [u8; 16],
        /// As in `PrivateHistory`.
        id: u64,
        /// The sender's name.
        from: String,
        /// The recipient's name as the sender addressed it.
        to: String,
        /// The text.
        text: String,
        /// Server receive time, ms since the Unix epoch.
        time_ms: u64,
        /// The sender's signature, if it signed the message.
        proof: Option<Proof>,
    },
    /// 48 (version 6): the cluster's nodes, each a `host:port` where a
    /// node of this cluster accepts QUIC, for a client to move to when it
    /// loses its node. Sent after the welcome when the server knows of
    /// nodes, and again whenever the list changes; each list replaces the
    /// one before. Every node presents the same key, so the list adds
    /// places to connect to, never anyone to trust: a receiver checks it
    /// with [`check_nodes`] and ignores one beyond the limits.
    Nodes {
        /// The addresses, at most [`crate::limits::MAX_NODES`] of at most
        /// [`crate::limits::MAX_NODE_ADDR_BYTES`] bytes each.
        addrs: Vec<String>,
    },
}

/// A node list ([`ServerMsg::Nodes`]) beyond the limits: a server sends
/// none, a client ignores one.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NodesError {
    /// More addresses than [`crate::limits::MAX_NODES`].
    #[error("{0} node addresses, more than the {max} a list may hold", max = crate::limits::MAX_NODES)]
    TooMany(usize),
    /// An address longer than [`crate::limits::MAX_NODE_ADDR_BYTES`].
    #[error("a node address of {0} bytes, longer than the {max} an address may have", max = crate::limits::MAX_NODE_ADDR_BYTES)]
    TooLong(usize),
}

/// Whether a node list is within the limits: its length first, so a
/// hostile list costs one comparison, then each address.
pub fn check_nodes(addrs: &[String]) -> Result<(), NodesError> {
    if addrs.len() > crate::limits::MAX_NODES {
        return Err(NodesError::TooMany(addrs.len()));
    }
    match addrs
        .iter()
        .find(|a| a.len() > crate::limits::MAX_NODE_ADDR_BYTES)
    {
        Some(long) => Err(NodesError::TooLong(long.len())),
        None => Ok(()),
    }
}

/// One room, as listed in [`ServerMsg::RoomList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct RoomInfo {
    /// The room's name.
    pub name: String,
    /// Members in it now.
    pub members: u32,
    /// Its topic.
    pub topic: String,
    /// Whether it is invite-only (listed only to its members and those
    /// invited).
    pub invite_only: bool,
}

/// A sender's signature over a message, as the server stores and forwards
/// it: with the fields of [`crate::signed::Signed`] that are not in the
/// message itself, and the key to check it with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct Proof {
    /// The sender's instance id.
    pub instance: [u8; 16],
    /// The sender's number for the message.
    pub seq: u64,
    /// The sender's clock, ms since the Unix epoch.
    pub sent_ms: u64,
    /// The sender's raw Ed25519 public key; its fingerprint (SHA-256 of
    /// its SubjectPublicKeyInfo) is the key the server bound the sender's
    /// name to.
    pub key: [u8; 32],
    /// The signature ([`crate::signed::SIGNATURE_LEN`] bytes).
    #[serde(with = "raw_bytes")]
    pub sig: Vec<u8>,
}

/// A signature as postcard's byte string rather than serde's default for
/// `Vec<u8>`, a sequence of `u8`: the bytes are the same (a varint
/// length, then the bytes, each `u8` being one raw byte), but they are
/// written and read in one copy instead of one call per byte, on every
/// signed line the server takes in, stores and sends on.
pub(crate) mod raw_bytes {
    use serde::{de, Deserializer, Serializer};

    /// Writes `v` as a byte string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Reads a byte string, or a sequence of `u8` from a format that
    /// writes byte strings that way.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The hint comes from the input: bounded, not trusted.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// Where a resuming client left off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct ResumePoint {
    /// [`ServerMsg::WelcomeV3::log_id`] of the log the client followed.
    pub log_id: [u8; 16],
    /// The last message id the client displayed; the server replays what
    /// came after it.
    pub after: u64,
}

/// One member, as listed in [`ServerMsg::Members`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct MemberInfo {
    /// The name.
    pub name: String,
    /// Seconds since the member joined.
    pub connected_secs: u64,
    /// The member's address; empty unless the asker is an operator.
    pub addr: String,
    /// Whether the member is an operator.
    pub operator: bool,
}

/// Why a hello was refused. Sent as a `u32` so that an older client can
/// still decode a cause it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
#[serde(from = "u32", into = "u32")]
pub enum RejectReason {
    /// 0: another member has the same name (case and look-alikes ignored,
    /// see [`crate::names::fold`]).
    #[cfg_attr(test, default)]
    NameTaken,
    /// 1: the name breaks the name rules.
    NameInvalid,
    /// 2: the client's protocol version is not supported.
    UnsupportedVersion,
    /// 3: reserved (the server or this address is at its connection
    /// limit); the reference server refuses the handshake instead.
    ServerFull,
    /// 4: the server is shutting down.
    ShuttingDown,
    /// 5: the name is registered to another key (or, for a client without
    /// a key, to any key); the detail says which rule made it the same name.
    NameRegistered,
    /// 6: the server admits only clients that present a key.
    KeyRequired,
    /// 7: a `HelloLink`'s code is wrong, used, expired or for another
    /// name, or the key cannot be linked (no key, another name's key, the
    /// name has its most keys); the detail says which.
    LinkRefused,
    /// 8: the key the client presented (or, for a guest, its address) is
    /// banned; the detail says by whom, when, why and, for an address,
    /// until when.
    Banned,
    /// A cause this build does not know.
    Other(u32),
}

impl From<u32> for RejectReason {
    fn from(v: u32) -> Self {
        match v {
            0 => RejectReason::NameTaken,
            1 => RejectReason::NameInvalid,
            2 => RejectReason::UnsupportedVersion,
            3 => RejectReason::ServerFull,
            4 => RejectReason::ShuttingDown,
            5 => RejectReason::NameRegistered,
            6 => RejectReason::KeyRequired,
            7 => RejectReason::LinkRefused,
            8 => RejectReason::Banned,
            other => RejectReason::Other(other),
        }
    }
}

impl From<RejectReason> for u32 {
    fn from(r: RejectReason) -> u32 {
        match r {
            RejectReason::NameTaken => 0,
            RejectReason::NameInvalid => 1,
            RejectReason::UnsupportedVersion => 2,
            RejectReason::ServerFull => 3,
            RejectReason::ShuttingDown => 4,
            RejectReason::NameRegistered => 5,
            RejectReason::KeyRequired => 6,
            RejectReason::LinkRefused => 7,
            RejectReason::Banned => 8,
            RejectReason::Other(v) => v,
        }
    }
}

/// A message too long to send: the client refuses it instead of letting the
/// server end the connection over it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the message is {len} bytes long; the most one message can carry is {max} bytes")]
pub struct TooLong {
    /// The message's text, in bytes.
    pub len: usize,
    /// [`crate::limits::MAX_SEND_BYTES`].
    pub max: usize,
}

/// A frame body that is not a message this build understands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The kind index is beyond the last one this build knows.
    #[error("unknown message kind {0}")]
    UnknownKind(u32),
    /// The body does not decode (bad varint, invalid UTF-8, cut short…).
    #[error("malformed message: {0}")]
    Malformed(postcard::Error),
    /// A valid message followed by extra bytes.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
}

/// Decodes exactly one message. The kind index is read first and compared
/// with the number of variants the enum has, counted by the compiler
/// (`EnumCount`), so adding a kind can never leave a stale count behind:
/// postcard itself reports an out-of-range index only as a generic serde
/// error, indistinguishable from a malformed body.
fn decode_exact<'a, T: Deserialize<'a> + EnumCount>(body: &'a [u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<u32>(body) {
        Ok((kind, _)) if kind as usize >= T::COUNT => return Err(DecodeError::UnknownKind(kind)),
        Ok(_) => {}
        Err(e) => return Err(DecodeError::Malformed(e)),
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(DecodeError::Malformed)?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(DecodeError::TrailingBytes(rest.len()))
    }
}

impl ClientMsg {
    /// Decodes one frame body; the whole body must be exactly one message.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(body)
    }

    /// Encodes as a complete frame.
    pub fn to_frame(&self) -> Bytes {
        crate::frame::encode_frame(self).expect(ENCODE_INFALLIBLE)
    }

    /// Whether a client may send this: its strings together must not exceed
    /// [`crate::limits::MAX_SEND_BYTES`], so that its frame fits a default
    /// server's frame limit. Call before sending; a message that fails was
    /// never going to be delivered, and sending it would end the connection.
    pub fn check_outgoing(&self) -> Result<(), TooLong> {
        let signed_len = match self {
            ClientMsg::Signed { text, .. } => Some(text.len()),
            ClientMsg::RoomSigned { room, text, .. } => Some(room.len() + text.len()),
            ClientMsg::SignedPrivate { to, text, .. } => Some(to.len() + text.len()),
            _ => None,
        };
        if let Some(len) = signed_len {
            // The proof takes room in the frame: a signed line's limit is
            // lower, and the user is told that limit.
            let max = crate::limits::MAX_SIGNED_SEND_BYTES;
            return if len > max {
                Err(TooLong { len, max })
            } else {
                Ok(())
            };
        }
        let len = match self {
            ClientMsg::Hello { name, .. } | ClientMsg::HelloV3 { name, .. } => name.len(),
            ClientMsg::HelloLink { name, code, .. } => name.len() + code.len(),
            ClientMsg::Device { .. } => 0,
            // Each point is a fixed 16 bytes and a varint: at the client's
            // cap of points, well inside a frame.
            ClientMsg::PrivateResume { points, .. } => points.len() * 26,
            ClientMsg::Moderate { op } => match op {
                ModOp::Bans => 0,
                ModOp::Op { name } | ModOp::Deop { name } => name.len(),
                ModOp::Ban { name, reason } => name.len() + reason.len(),
                ModOp::Unban { target } => target.len(),
            },
            ClientMsg::Say { text, .. } | ClientMsg::Action { text, .. } => text.len(),
            ClientMsg::Signed { .. }
            | ClientMsg::SignedPrivate { .. }
            | ClientMsg::RoomSigned { .. } => 0,
            ClientMsg::Join { room, .. } => room.len(),
            ClientMsg::Part { room, reason } => room.len() + reason.len(),
            ClientMsg::Rooms => 0,
            ClientMsg::Topic { room, text } => room.len() + text.len(),
            ClientMsg::RoomSay { room, text, .. } => room.len() + text.len(),
            ClientMsg::RoomKick { room, name, reason } => room.len() + name.len() + reason.len(),
            ClientMsg::Invite { room, name } => room.len() + name.len(),
            ClientMsg::RoomMode { room, .. } => room.len(),
            ClientMsg::Reserved14 => 0,
            ClientMsg::Private { to, text, .. } => to.len() + text.len(),
            ClientMsg::Bye { reason } => reason.len(),
            ClientMsg::Nick { name } => name.len(),
            ClientMsg::Who => 0,
            ClientMsg::Whois { name } => name.len(),
            ClientMsg::Kick { name, reason } => name.len() + reason.len(),
        };
        let max = crate::limits::MAX_SEND_BYTES;
        if len > max {
            Err(TooLong { len, max })
        } else {
            Ok(())
        }
    }

    /// The sequence number of a message that carries one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ClientMsg::Say { seq, .. }
            | ClientMsg::Action { seq, .. }
            | ClientMsg::Private { seq, .. }
            | ClientMsg::Signed { seq, .. }
            | ClientMsg::SignedPrivate { seq, .. }
            | ClientMsg::RoomSay { seq, .. }
            | ClientMsg::RoomSigned { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

impl ServerMsg {
    /// Decodes one frame body; the whole body must be exactly one message.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(body)
    }

    /// Encodes as a complete frame.
    pub fn to_frame(&self) -> Bytes {
        crate::frame::encode_frame(self).expect(ENCODE_INFALLIBLE)
    }
}

/// A public message as the server sends it live — [`ServerMsg::ChatV3`] to
/// version-3 members, [`ServerMsg::Chat`] or [`ServerMsg::Action`] to older
/// ones — with its strings borrowed: the server encodes each stored message
/// for its recipients without first copying the sender's name and text into
/// an owned [`ServerMsg`]. The bytes are exactly those of the owned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveChat<'a> {
    /// Its id in the log (sent to version-3 members only).
    pub id: u64,
    /// The sender's name.
    pub from: &'a str,
    /// The text.
    pub text: &'a str,
    /// When the server received it, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Whether it is an action (`/me`).
    pub action: bool,
}

impl LiveChat<'_> {
    /// The complete frame for a version-3 member (`v3`) or an older one.
    pub fn to_frame(&self, v3: bool) -> Bytes {
        // Sized for the whole frame (prefix, kind, varints at their
        // longest), so the text is copied once and never reallocated.
        let mut buf = bytes::BytesMut::with_capacity(48 + self.from.len() + self.text.len());
        crate::frame::encode_frame_into(&LiveFor { msg: self, v3 }, &mut buf)
            .expect(ENCODE_INFALLIBLE);
        buf.freeze()
    }
}

impl LiveChat<'_> {
    /// The complete [`ServerMsg::ChatSigned`] frame for a version-4 member,
    /// with `proof`: the same bytes as the owned message, without first
    /// copying the name, the text and the proof into one.
    pub fn to_signed_frame(&self, proof: &Proof) -> Bytes {
        // The proof's fixed part is at most 68 bytes (16, two varints of
        // at most 10, 32), then the signature and its length.
        let mut buf = bytes::BytesMut::with_capacity(
            48 + 72 + self.from.len() + self.text.len() + proof.sig.len(),
        );
        crate::frame::encode_frame_into(&SignedLive { msg: self, proof }, &mut buf)
            .expect(ENCODE_INFALLIBLE);
        buf.freeze()
    }
}

/// [`LiveChat`] with its proof, encoded as [`ServerMsg::ChatSigned`].
struct SignedLive<'a, 'b> {
    msg: &'b LiveChat<'a>,
    proof: &'b Proof,
}

impl Serialize for SignedLive<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let m = self.msg;
        let mut v = s.serialize_struct_variant("ServerMsg", KIND_CHAT_SIGNED, "ChatSigned", 6)?;
        v.serialize_field("id", &m.id)?;
        v.serialize_field("from", m.from)?;
        v.serialize_field("text", m.text)?;
        v.serialize_field("time_ms", &m.time_ms)?;
        v.serialize_field("action", &m.action)?;
        v.serialize_field("proof", self.proof)?;
        v.end()
    }
}

/// [`LiveChat`] with the version it is encoded for.
struct LiveFor<'a, 'b> {
    msg: &'b LiveChat<'a>,
    v3: bool,
}

/// The kind indices of the three live forms in [`ServerMsg`]; the tests
/// check them against the owned messages' encoding.
const KIND_CHAT: u32 = 2;
const KIND_ACTION: u32 = 10;
const KIND_CHAT_V3: u32 = 17;
const KIND_CHAT_SIGNED: u32 = 30;

impl Serialize for LiveFor<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let m = self.msg;
        if self.v3 {
            let mut v = s.serialize_struct_variant("ServerMsg", KIND_CHAT_V3, "ChatV3", 5)?;
            v.serialize_field("id", &m.id)?;
            v.serialize_field("from", m.from)?;
            v.serialize_field("text", m.text)?;
            v.serialize_field("time_ms", &m.time_ms)?;
            v.serialize_field("action", &m.action)?;
            v.end()
        } else {
            let (kind, name) = if m.action {
                (KIND_ACTION, "Action")
            } else {
                (KIND_CHAT, "Chat")
            };
            let mut v = s.serialize_struct_variant("ServerMsg", kind, name, 3)?;
            v.serialize_field("from", m.from)?;
            v.serialize_field("text", m.text)?;
            v.serialize_field("time_ms", &m.time_ms)?;
            v.end()
        }
    }
}

/// Serializing these types into a growable buffer has no failure mode:
/// postcard only fails on a full fixed-size buffer or on types it cannot
/// represent, and ours contain neither.
const ENCODE_INFALLIBLE: &str = "postcard encoding into a growable buffer cannot fail";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The borrowed live forms encode to exactly the owned messages'
        /// bytes, for every version and kind.
        #[test]
        fn live_chat_encodes_as_the_owned_messages(
            id in any::<u64>(),
            from in ".{0,40}",
            text in ".{0,300}",
            time_ms in any::<u64>(),
            action in any::<bool>(),
        ) {
            let live = LiveChat { id, from: &from, text: &text, time_ms, action };
            let v3 = ServerMsg::ChatV3 { id, from: from.clone(), text: text.clone(), time_ms, action };
            prop_assert_eq!(live.to_frame(true), v3.to_frame());
            let older = if action {
                ServerMsg::Action { from: from.clone(), text: text.clone(), time_ms }
            } else {
                ServerMsg::Chat { from: from.clone(), text: text.clone(), time_ms }
            };
            prop_assert_eq!(live.to_frame(false), older.to_frame());
        }

        /// A signature written as a byte string is exactly the sequence
        /// of `u8` it was before, both ways: the wire did not change.
        #[test]
        fn a_proof_encodes_as_it_did_with_a_sequence_of_bytes(
            instance in any::<[u8; 16]>(),
            seq in any::<u64>(),
            sent_ms in any::<u64>(),
            key in any::<[u8; 32]>(),
            sig in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            #[derive(Serialize, Deserialize, PartialEq, Debug)]
            struct AsSequence {
                instance: [u8; 16],
                seq: u64,
                sent_ms: u64,
                key: [u8; 32],
                sig: Vec<u8>,
            }
            let proof = Proof { instance, seq, sent_ms, key, sig: sig.clone() };
            let before = AsSequence { instance, seq, sent_ms, key, sig };
            let bytes = postcard::to_allocvec(&proof).expect("encodes");
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&before).expect("encodes"));
            prop_assert_eq!(postcard::from_bytes::<AsSequence>(&bytes).expect("decodes"), before);
            prop_assert_eq!(postcard::from_bytes::<Proof>(&bytes).expect("decodes"), proof);
        }

        /// The borrowed signed form encodes to exactly the owned
        /// `ChatSigned`'s bytes, whatever the proof holds.
        #[test]
        fn live_signed_encodes_as_the_owned_message(
            id in any::<u64>(),
            from in ".{0,40}",
            text in ".{0,300}",
            time_ms in any::<u64>(),
            action in any::<bool>(),
            instance in any::<[u8; 16]>(),
            seq in any::<u64>(),
            sent_ms in any::<u64>(),
            key in any::<[u8; 32]>(),
            sig in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let proof = Proof { instance, seq, sent_ms, key, sig };
            let live = LiveChat { id, from: &from, text: &text, time_ms, action };
            let owned = ServerMsg::ChatSigned { id, from: from.clone(), text: text.clone(), time_ms, action, proof: proof.clone() };
            prop_assert_eq!(live.to_signed_frame(&proof), owned.to_frame());
        }
    }

    #[test]
    fn documented_byte_layouts() {
        // These exact bytes are the examples in docs/PROTOCOL.md.
        let hello = ClientMsg::Hello {
            version: 1,
            name: "bob".into(),
        };
        assert_eq!(
            &hello.to_frame()[..],
            &[0, 0, 0, 6, 0, 1, 3, b'b', b'o', b'b']
        );
        let say = ClientMsg::Say {
            seq: 300,
            text: "hi".into(),
        };
        assert_eq!(
            &say.to_frame()[..],
            &[0, 0, 0, 6, 1, 0xac, 0x02, 2, b'h', b'i']
        );
        let ack = ServerMsg::Ack { seq: 1 };
        assert_eq!(&ack.to_frame()[..], &[0, 0, 0, 2, 3, 1]);
        let rej = ServerMsg::Rejected {
            reason: RejectReason::NameTaken,
            detail: "x".into(),
        };
        assert_eq!(&rej.to_frame()[..], &[0, 0, 0, 4, 1, 0, 1, b'x']);
    }

    #[test]
    fn unknown_kind_is_distinguished() {
        assert_eq!(ServerMsg::decode(&[49]), Err(DecodeError::UnknownKind(49)));
        assert_eq!(
            ClientMsg::decode(&[26, 0]),
            Err(DecodeError::UnknownKind(26))
        );
    }

    /// Every variant, as the enum declares it, encodes with its position as
    /// the kind byte and decodes back; the first index past the last variant
    /// is an unknown kind. A kind added to either enum is covered here
    /// without editing the test, and a kind that does not round-trip fails.
    #[test]
    fn every_kind_round_trips_and_the_next_is_unknown() {
        use strum::IntoEnumIterator;
        let mut n = 0;
        for (i, m) in ClientMsg::iter().enumerate() {
            let f = m.to_frame();
            assert_eq!(usize::from(f[4]), i, "{m:?}");
            assert_eq!(ClientMsg::decode(&f[4..]), Ok(m));
            n += 1;
        }
        assert_eq!(n, ClientMsg::COUNT);
        assert_eq!(
            ClientMsg::decode(&[n as u8]),
            Err(DecodeError::UnknownKind(n as u32))
        );
        let mut n = 0;
        for (i, m) in ServerMsg::iter().enumerate() {
            let f = m.to_frame();
            assert_eq!(usize::from(f[4]), i, "{m:?}");
            assert_eq!(ServerMsg::decode(&f[4..]), Ok(m));
            n += 1;
        }
        assert_eq!(n, ServerMsg::COUNT);
        assert_eq!(
            ServerMsg::decode(&[n as u8]),
            Err(DecodeError::UnknownKind(n as u32))
        );
    }

    #[test]
    fn invalid_utf8_and_trailing_bytes_are_errors() {
        assert!(matches!(
            ClientMsg::decode(&[1, 0, 1, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            ClientMsg::decode(&[2, 0, 7]),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn unknown_reject_reason_survives() {
        let bytes = [1u8, 42, 0];
        assert_eq!(
            ServerMsg::decode(&bytes),
            Ok(ServerMsg::Rejected {
                reason: RejectReason::Other(42),
                detail: String::new()
            })
        );
    }

    #[test]
    fn what_passes_the_outgoing_check_fits_a_default_frame() {
        use crate::limits::{MAX_CLIENT_FRAME, MAX_NAME_CHARS, MAX_SEND_BYTES};
        use crate::FrameDecoder;
        let name = "\u{1F600}".repeat(MAX_NAME_CHARS);
        let fits = [
            ClientMsg::Say {
                seq: u64::MAX,
                text: "x".repeat(MAX_SEND_BYTES),
            },
            ClientMsg::Private {
                seq: u64::MAX,
                to: name.clone(),
                text: "x".repeat(MAX_SEND_BYTES - name.len()),
            },
            ClientMsg::Kick {
                name: name.clone(),
                reason: "x".repeat(MAX_SEND_BYTES - name.len()),
            },
            ClientMsg::Signed {
                seq: u64::MAX,
                text: "x".repeat(crate::limits::MAX_SIGNED_SEND_BYTES),
                action: true,
                sent_ms: u64::MAX,
                key: [0xff; 32],
                sig: vec![0xff; crate::signed::SIGNATURE_LEN],
            },
            ClientMsg::SignedPrivate {
                seq: u64::MAX,
                to: name.clone(),
                text: "x".repeat(crate::limits::MAX_SIGNED_SEND_BYTES - name.len()),
                sent_ms: u64::MAX,
                key: [0xff; 32],
                sig: vec![0xff; crate::signed::SIGNATURE_LEN],
            },
        ];
        for m in fits {
            assert_eq!(m.check_outgoing(), Ok(()));
            let mut d = FrameDecoder::new(MAX_CLIENT_FRAME);
            d.extend(&m.to_frame());
            assert!(matches!(d.next_frame(), Ok(Some(_))), "{:?}", m.seq());
        }
        let long = ClientMsg::Say {
            seq: 1,
            text: "x".repeat(20 * 1024),
        };
        let e = long.check_outgoing().expect_err("too long");
        assert_eq!(e.len, 20 * 1024);
        assert!(e.to_string().contains(&MAX_SEND_BYTES.to_string()), "{e}");
        let mut d = FrameDecoder::new(MAX_CLIENT_FRAME);
        d.extend(&long.to_frame());
        assert!(
            d.next_frame().is_err(),
            "the check exists because this fails"
        );
    }

    #[test]
    fn a_node_list_round_trips_and_is_checked_against_its_limits() {
        use crate::limits::{MAX_NODES, MAX_NODE_ADDR_BYTES};
        let nodes = ServerMsg::Nodes {
            addrs: vec!["10.0.0.1:8080".into(), "[2001:db8::1]:8080".into()],
        };
        let f = nodes.to_frame();
        assert_eq!(f[4], 48, "the kind is the 49th server message");
        assert_eq!(ServerMsg::decode(&f[4..]), Ok(nodes));
        let full: Vec<String> = (0..MAX_NODES)
            .map(|i| format!("{}:{}", "h".repeat(MAX_NODE_ADDR_BYTES - 6), 10_000 + i))
            .collect();
        assert!(full.iter().all(|a| a.len() == MAX_NODE_ADDR_BYTES));
        assert_eq!(check_nodes(&full), Ok(()));
        assert_eq!(check_nodes(&[]), Ok(()));
        let mut over = full.clone();
        over.push("x:1".into());
        assert_eq!(check_nodes(&over), Err(NodesError::TooMany(MAX_NODES + 1)));
        let mut long = full;
        long[3].push('9');
        assert_eq!(
            check_nodes(&long),
            Err(NodesError::TooLong(MAX_NODE_ADDR_BYTES + 1))
        );
    }

    /// What a hostile server could send: a list of 10,000 addresses or one
    /// address of 10 KB. Both fit a frame and decode (the frame limit bounds
    /// the memory), and both are refused by the check a client applies.
    #[test]
    fn a_hostile_node_list_decodes_without_panic_and_is_refused() {
        let many = ServerMsg::Nodes {
            addrs: (0..10_000)
                .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
                .collect(),
        };
        let f = many.to_frame();
        assert!(f.len() <= crate::limits::MAX_SERVER_FRAME);
        let Ok(ServerMsg::Nodes { addrs }) = ServerMsg::decode(&f[4..]) else {
            panic!("a long list is still a well-formed message");
        };
        assert_eq!(check_nodes(&addrs), Err(NodesError::TooMany(10_000)));
        let huge = vec!["a".repeat(10 * 1024)];
        let f = ServerMsg::Nodes { addrs: huge }.to_frame();
        let Ok(ServerMsg::Nodes { addrs }) = ServerMsg::decode(&f[4..]) else {
            panic!("a long address is still a well-formed message");
        };
        assert_eq!(check_nodes(&addrs), Err(NodesError::TooLong(10 * 1024)));
        // Cut short or lying about its length: an error, not a panic.
        for cut in [5, f.len() / 2, f.len() - 1] {
            assert!(ServerMsg::decode(&f[4..cut]).is_err());
        }
        assert!(ServerMsg::decode(&[48, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ClientMsg::decode(&body);
            let _ = ServerMsg::decode(&body);
        }

        #[test]
        fn client_messages_round_trip(seq in any::<u64>(), text in ".{0,64}", name in "[a-z]{1,32}") {
            for m in [
                ClientMsg::Hello { version: 1, name: name.clone() },
                ClientMsg::Say { seq, text: text.clone() },
                ClientMsg::Bye { reason: text.clone() },
                ClientMsg::Private { seq, to: name.clone(), text: text.clone() },
                ClientMsg::Action { seq, text: text.clone() },
                ClientMsg::Nick { name: name.clone() },
                ClientMsg::Who,
                ClientMsg::Kick { name: name.clone(), reason: text.clone() },
            ] {
                let f = m.to_frame();
                prop_assert_eq!(ClientMsg::decode(&f[4..]), Ok(m));
            }
        }
    }
}
