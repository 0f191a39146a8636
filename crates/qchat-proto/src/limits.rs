//! Default limits. Each one is also a flag of `qchat serve` and a line in
//! `docs/SECURITY.md`; the values are here so that both ends and the docs
//! agree on one number.

use std::time::Duration;

/// Largest frame body a server accepts from a client, in bytes. Big enough
/// for the longest message plus its envelope, small enough that a hostile
/// length prefix cannot make the server allocate much.
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;

/// Largest frame body a client accepts from a server. The welcome carries the
/// whole member list, so this is sized for 10,000 members with the longest
/// names (32 characters of up to 4 bytes each).
pub const MAX_SERVER_FRAME: usize = 4 * 1024 * 1024;

/// The most bytes a client message adds around its strings: the kind (1),
/// a sequence number or version (a varint of up to 10) and the lengths of
/// at most two strings (a varint of up to 5 each).
pub const ENVELOPE: usize = 1 + 10 + 5 + 5;

/// The most bytes a chat message adds around its text, a private one
/// included (its recipient's name of up to [`MAX_NAME_CHARS`] characters of
/// 4 bytes): a server's `--max-message` plus this must fit in its
/// `--max-frame`, or a message it should refuse politely would instead end
/// the connection.
pub const MESSAGE_OVERHEAD: usize = ENVELOPE + 4 * MAX_NAME_CHARS;

/// The most bytes of text (all of a message's strings together) a client
/// sends in one message. Anything longer would not fit in a default
/// server's frame ([`MAX_CLIENT_FRAME`]) and would make the server end the
/// connection, so the client refuses it itself and says so. Between a
/// server's `--max-message` and this, the server refuses the message.
pub const MAX_SEND_BYTES: usize = MAX_CLIENT_FRAME - ENVELOPE;

/// The most bytes a signed message (`Signed`, `SignedPrivate`) adds to its
/// strings beyond what a `Say` or `Private` does: the action flag, the
/// clock (a varint), the key and the signature with its length.
pub const SIGNED_EXTRA: usize = 1 + 10 + 32 + 1 + crate::signed::SIGNATURE_LEN;

/// [`MAX_SEND_BYTES`] for a signed line: its proof takes the rest.
pub const MAX_SIGNED_SEND_BYTES: usize = MAX_SEND_BYTES - SIGNED_EXTRA;

/// Longest chat message, in bytes of UTF-8. Longer messages are refused with
/// a reason rather than truncated, so nothing is silently lost.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Connections a server allows at once.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Longest member name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Longest reason text (kick, quit, rejection) that is relayed.
pub const MAX_REASON_BYTES: usize = 256;

/// How long a new connection has to send its hello before it is closed.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// QUIC idle timeout: a peer that vanished without closing is noticed and
/// announced as gone after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive interval, well under the idle timeout so quiet chats survive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// Frames queued for one member before it counts as not reading and is
/// disconnected.
pub const SESSION_QUEUE: usize = 1024;

/// Messages per second a member may send on average (0 = unlimited).
pub const RATE: u32 = 5;

/// Messages a member may send at once before the rate applies.
pub const BURST: u32 = 10;

/// Messages that may wait beyond the burst. A pasted block of lines waits
/// here and is delivered at the rate; a member that keeps more than this
/// waiting is flooding and is disconnected (with a notice at half).
pub const BACKLOG: usize = 100;

/// Public messages kept for replay to members who join later.
pub const HISTORY: usize = 50;

/// Handshakes per second above which new addresses must prove they can
/// receive packets (a QUIC Retry) before the server spends work on them.
pub const RETRY_THRESHOLD: u32 = 100;

/// Connections allowed at once from one IP address. Small enough that one
/// host cannot take a noticeable share of a server's slots, large enough for
/// a household, a classroom or a small office sharing one address behind a
/// NAT (`docs/SECURITY.md` explains the choice).
pub const MAX_PER_IP: usize = 32;

/// Connections from one IP address that may be in their handshake or
/// waiting for their hello at once. Far below [`MAX_PER_IP`]: a member has
/// chosen a free name and is in the room, whereas these slots cost a
/// stranger nothing to take and are what a flood of silent connections
/// would use to keep newcomers out.
pub const MAX_UNJOINED_PER_IP: usize = 4;

/// Messages replayed at most to a member resuming after a reconnect; the
/// rest are counted as missed.
pub const REPLAY_MAX: usize = 1000;

/// How long a server keeps a dropped member's name for its reconnect.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(60);

/// How long a registered name stays bound to its key without being used;
/// after that the first key to use it claims it anew.
pub const NAME_EXPIRY: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// Keys (devices) one registered name may have: a handful, as ergo allows
/// per account, so that a leaked link code or a careless user cannot grow
/// a name's key set without bound.
pub const MAX_KEYS_PER_NAME: usize = 5;

/// How long a link code from `/device link` works.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);

/// Link codes one name may have live at once; asking for more is refused
/// until one is used or expires.
pub const LINK_CODES_PER_NAME: usize = 3;

/// Letters in a link code (lowercase base32, 5 bits each: 80 bits from the
/// OS CSPRNG, far beyond what guessing at any connection rate reaches in a
/// code's lifetime). Shown in groups of four joined by `-`.
pub const LINK_CODE_LETTERS: usize = 16;

/// The letters a link code is made of: RFC 4648 base32 in lowercase, which
/// has no 0, 1 or 8 to mistake for o, l or b.
pub const LINK_CODE_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Public messages the server's room log keeps; older ones are deleted.
pub const HISTORY_KEEP: u64 = 100_000;

/// Private messages each conversation keeps when the server keeps private
/// history; older ones are deleted.
pub const PRIVATE_KEEP: u64 = 1000;

/// Most private conversations a client resumes (and sends points for) at
/// once: its newest ones. Their points fit a default frame.
pub const PRIVATE_POINTS: usize = 500;

/// Public messages waiting to be stored before senders wait their turn.
pub const LOG_QUEUE: usize = 8192;

/// How long banning a guest bans its address: long enough to end a bout of
/// abuse, short enough that the next person to get the address (a shared
/// or reassigned one) is not shut out for long.
pub const GUEST_BAN: Duration = Duration::from_secs(60 * 60);

/// Rooms a server keeps at most (`--max-rooms`), `#lobby` included: each
/// has its own log file and in-memory window, so their number is bounded
/// like everything else a member can create.
pub const MAX_ROOMS: usize = 1_000;

/// Rooms one member may be in at once besides `#lobby`
/// (`--max-rooms-per-member`).
pub const MAX_ROOMS_PER_MEMBER: usize = 20;

/// Members one room other than `#lobby` admits at once
/// (`--max-room-members`); the lobby is bounded by the connection limit.
pub const MAX_ROOM_MEMBERS: usize = 1_000;

/// Longest room topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Node addresses a cluster's node list (`Nodes`) may hold. More than any
/// cluster this design serves, few enough that a client walks the whole
/// list in one round of reconnect attempts.
pub const MAX_NODES: usize = 64;

/// Longest node address in a node list, in bytes: a DNS name's 253 bytes
/// and a port fit in this, with room to spare for `[v6]:port`.
pub const MAX_NODE_ADDR_BYTES: usize = 255;
