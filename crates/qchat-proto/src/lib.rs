//! The qchat wire format, and nothing else: no sockets, no TLS, no tasks.
//!
//! Everything a peer must agree on lives here so that the server, the
//! client, the benchmark and the fuzzers share one definition, and so that
//! `docs/PROTOCOL.md` has exactly one place to be checked against.
//!
//! - [`frame`]: the length-prefixed framing and the incremental decoder that
//!   enforces the maximum frame size before allocating.
//! - [`message`]: the postcard-encoded messages in each direction. Variant
//!   order is the wire format: append only.
//! - [`close`]: QUIC application close codes and their meanings.
//! - [`names`]: what a member name may be, and how uniqueness is decided.
//! - [`text`]: neutralising network text before it reaches a terminal.
//! - [`limits`]: the defaults every limit starts from.
//! - [`signed`]: the bytes a member signs for each message.

pub mod clock;
pub mod close;
pub mod frame;
pub mod limits;
pub mod message;
pub mod names;
pub mod rate;
pub mod signed;
pub mod text;

pub use close::CloseCode;
pub use frame::{encode_frame, FrameDecoder, FrameError, ReadError};
pub use message::{
    check_nodes, BanInfo, ClientMsg, DecodeError, DeviceInfo, DeviceOp, MemberInfo, ModOp,
    NodesError, PrivatePoint, Proof, RejectReason, ResumePoint, RoomInfo, ServerMsg, TooLong,
};

/// The ALPN protocol identifier. The major protocol version is part of it, so
/// a future incompatible wire format fails in the TLS handshake with a clear
/// "no application protocol" error instead of as garbage after it.
pub const ALPN: &[u8] = b"qchat/1";

/// The protocol version this build speaks, sent in the hello. Minor,
/// backwards-compatible additions (new message kinds appended at the end)
/// raise it; the server accepts any version from 1 up to its own.
/// Version 2 added private messages, actions, name changes, the member list
/// and kicks; version 3 the room log's message ids, resuming after a
/// reconnect, idempotent re-sends and the server's pacing in the welcome;
/// version 4 `Whois` (members' keys), several devices (keys) per name
/// with their link codes (`HelloLink`, `Device`), alongside names bound to keys and
/// the refusals that go with them, which older clients receive as reasons
/// they do not know, signed public messages (`Signed`, `ChatSigned`,
/// `HistorySigned`) and signed private messages (`SignedPrivate`,
/// `PrivateSigned`); version 5 rooms besides `#lobby` (`Join`, `Part`,
/// `RoomSay`, `RoomChat` and the rest of the room kinds) and private
/// conversations with their own stored history and resume points
/// (`PrivateResume`, `PrivateReplay`, `PrivateHistory`, `PrivateReplayed`,
/// `PrivateLive`); version 6 the cluster's node list (`Nodes`), which a
/// client moves along when it loses its node.
pub const PROTOCOL_VERSION: u32 = 6;

/// The oldest protocol version this build still serves.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The port from the original tutorial, used when an address names none.
pub const DEFAULT_PORT: u16 = 8080;
