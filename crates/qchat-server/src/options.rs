//! What an operator can tune, with the defaults from `qchat_proto::limits`,
//! and the QUIC transport settings derived from them.

use std::sync::Arc;
use std::time::Duration;

use qchat_proto::limits;

/// Server settings. Every limit here is a flag of `qchat serve` and a line
/// in `docs/SECURITY.md`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The name shown to members in the welcome.
    pub server_name: String,
    /// Largest frame body accepted from a client.
    pub max_frame: usize,
    /// Longest message text accepted, in bytes.
    pub max_message: usize,
    /// Time a new connection has to open its stream and send its hello.
    pub hello_timeout: Duration,
    /// QUIC idle timeout; a vanished client is announced after this.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// Frames queued for one member before it is disconnected as not
    /// reading.
    pub queue_len: usize,
    /// Connections allowed at once, server-wide.
    pub max_connections: usize,
    /// Connections allowed at once from one IP address.
    pub max_per_ip: usize,
    /// Connections from one IP address allowed at once before they have
    /// joined (handshaking or waiting for their hello).
    pub max_unjoined_per_ip: usize,
    /// Join and leave notices are broadcast only while the room has fewer
    /// than this many members: in a big room they would be most of the
    /// traffic (every join costs one frame per member, so n joins cost n²;
    /// at 1,000 they were 500,000 frames for a room filling up). Members of
    /// a bigger room ask for the list (`Who`) instead.
    pub announce_limit: usize,
    /// Names sent in the welcome's member list, at most. Equal to the
    /// announce limit, so that the welcome plus the notices keep a client's
    /// list complete exactly while notices are sent.
    pub welcome_members: usize,
    /// Public messages replayed to a member who joins (0 disables).
    pub history: usize,
    /// Messages per second a member may send on average (0 = unlimited).
    pub rate: u32,
    /// Messages a member may send at once before the rate applies.
    pub burst: u32,
    /// Messages that may wait beyond the burst before the member counts as
    /// flooding and is disconnected.
    pub backlog: usize,
    /// Handshakes per second above which unvalidated addresses get a QUIC
    /// Retry first (0 = always).
    pub retry_threshold: u32,
    /// Messages replayed at most to a resuming member.
    pub replay_max: usize,
    /// How long a dropped version-3 member's name is kept for its
    /// reconnect (0: it leaves at once).
    pub grace: Duration,
    /// Public messages waiting for the log's writer before senders wait.
    pub log_queue: usize,
    /// Whether a member's connection may move to a new address (QUIC
    /// migration: a NAT rebinding, a new network).
    pub migration: bool,
    /// Refuse members without a key (guests) at the hello.
    pub keys_required: bool,
    /// How long a registered name stays its key's without being used.
    pub name_expiry: Duration,
    /// How long a link code from `/device link` works.
    pub link_ttl: Duration,
    /// Keys that are operators by the server's settings (`--operator`):
    /// chat can neither take their rights away nor ban them.
    pub operators: Vec<qchat_tls::Fingerprint>,
    /// The key of the person running the server, if known: an operator
    /// wherever it connects from, and never banned.
    pub host_key: Option<qchat_tls::Fingerprint>,
    /// How long banning a guest (no key) bans its address.
    pub guest_ban: Duration,
    /// Rooms the server keeps at most, `#lobby` included (`--max-rooms`).
    pub max_rooms: usize,
    /// Rooms besides `#lobby` one member may be in (`--max-rooms-per-member`).
    pub max_rooms_per_member: usize,
    /// Members a room besides `#lobby` admits (`--max-room-members`).
    pub max_room_members: usize,
}

impl ServerOptions {
    /// Whether `key` is an operator by the server's settings (the host's
    /// key or an `--operator` key), which chat cannot change.
    pub fn fixed_operator(&self, key: qchat_tls::Fingerprint) -> bool {
        self.host_key == Some(key) || self.operators.contains(&key)
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            server_name: "qchat".into(),
            max_frame: limits::MAX_CLIENT_FRAME,
            max_message: limits::MAX_MESSAGE_BYTES,
            hello_timeout: limits::HELLO_TIMEOUT,
            idle_timeout: limits::IDLE_TIMEOUT,
            keep_alive: limits::KEEP_ALIVE,
            queue_len: limits::SESSION_QUEUE,
            max_connections: limits::MAX_CONNECTIONS,
            max_per_ip: limits::MAX_PER_IP,
            max_unjoined_per_ip: limits::MAX_UNJOINED_PER_IP,
            announce_limit: 200,
            welcome_members: 200,
            history: limits::HISTORY,
            rate: limits::RATE,
            burst: limits::BURST,
            backlog: limits::BACKLOG,
            retry_threshold: limits::RETRY_THRESHOLD,
            replay_max: limits::REPLAY_MAX,
            grace: limits::RECONNECT_GRACE,
            log_queue: limits::LOG_QUEUE,
            migration: true,
            keys_required: false,
            name_expiry: limits::NAME_EXPIRY,
            link_ttl: limits::LINK_TTL,
            operators: Vec::new(),
            host_key: None,
            guest_ban: limits::GUEST_BAN,
            max_rooms: limits::MAX_ROOMS,
            max_rooms_per_member: limits::MAX_ROOMS_PER_MEMBER,
            max_room_members: limits::MAX_ROOM_MEMBERS,
        }
    }
}

/// Two settings that contradict each other. The messages name the flags of
/// `qchat serve`, since that is where a user sets them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The idle timeout is not above the keep-alive interval.
    #[error(
        "--idle-timeout ({idle:?}) must be longer than --keep-alive ({keep_alive:?}), or quiet members would be dropped as gone"
    )]
    IdleBelowKeepAlive {
        /// The idle timeout.
        idle: Duration,
        /// The keep-alive interval.
        keep_alive: Duration,
    },
    /// A message of the longest allowed text would not fit in a frame.
    #[error(
        "--max-message ({max_message}) plus the {overhead}-byte message envelope must fit in --max-frame ({max_frame}); raise --max-frame to at least {need} or lower --max-message"
    )]
    MessageAboveFrame {
        /// The message limit.
        max_message: usize,
        /// The frame limit.
        max_frame: usize,
        /// [`limits::MESSAGE_OVERHEAD`].
        overhead: usize,
        /// The smallest frame limit that works.
        need: usize,
    },
    /// The frame limit is below what a qchat client may send.
    #[error(
        "--max-frame ({max_frame}) must be at least {min}, the largest frame a qchat client sends; a smaller limit would disconnect members for long lines instead of refusing the lines"
    )]
    FrameBelowClient {
        /// The frame limit.
        max_frame: usize,
        /// [`limits::MAX_CLIENT_FRAME`].
        min: usize,
    },
    /// The history would not fit in a joining member's queue.
    #[error(
        "--history ({history}) must be at most --queue minus 16 ({max}): a joining member's queue holds its welcome and the whole history"
    )]
    HistoryAboveQueue {
        /// The history length.
        history: usize,
        /// The most the queue allows.
        max: usize,
    },
}

/// Frames a new member's queue holds beyond its history or replay: the
/// welcome, the end of the replay, and what is published while it starts.
/// The `HistoryAboveQueue` message spells it out as 16.
pub(crate) const QUEUE_HEADROOM: usize = 16;

impl ServerOptions {
    /// The queue for a member that joins with up to `replay` messages of
    /// history or replay: long enough to take them and the welcome at once.
    pub(crate) fn queue_for(&self, replay: usize) -> usize {
        self.queue_len.max(replay.saturating_add(QUEUE_HEADROOM))
    }

    /// Checks the settings against each other. Each one alone is range
    /// checked where it is parsed; this finds the combinations that cannot
    /// work, so a server never starts with them.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.idle_timeout <= self.keep_alive {
            return Err(OptionsError::IdleBelowKeepAlive {
                idle: self.idle_timeout,
                keep_alive: self.keep_alive,
            });
        }
        if self.max_frame < limits::MAX_CLIENT_FRAME {
            return Err(OptionsError::FrameBelowClient {
                max_frame: self.max_frame,
                min: limits::MAX_CLIENT_FRAME,
            });
        }
        let need = self.max_message.saturating_add(limits::MESSAGE_OVERHEAD);
        if need > self.max_frame {
            return Err(OptionsError::MessageAboveFrame {
                max_message: self.max_message,
                max_frame: self.max_frame,
                overhead: limits::MESSAGE_OVERHEAD,
                need,
            });
        }
        let max_history = self.queue_len.saturating_sub(QUEUE_HEADROOM);
        if self.history > max_history {
            return Err(OptionsError::HistoryAboveQueue {
                history: self.history,
                max: max_history,
            });
        }
        Ok(())
    }

    /// The QUIC transport settings for these options.
    ///
    /// Each connection may open exactly one bidirectional stream and no
    /// unidirectional ones: a second stream is refused by QUIC flow control
    /// itself, so it is never read and thrown away.
    pub fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(1u8.into());
        t.max_concurrent_uni_streams(0u8.into());
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        t.keep_alive_interval(Some(self.keep_alive));
        // A client only ever sends small frames, so a small receive window
        // bounds what an unread peer can make us buffer.
        let window = (self.max_frame as u32).saturating_mul(8).max(64 * 1024);
        t.stream_receive_window(window.into());
        t.receive_window((window as u64 * 2).try_into().unwrap_or(quinn::VarInt::MAX));
        Arc::new(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServerOptions::default().validate(), Ok(()));
    }

    #[test]
    fn contradictions_are_found() {
        let base = ServerOptions::default;
        let idle = ServerOptions {
            idle_timeout: Duration::from_secs(2),
            ..base()
        };
        assert!(matches!(
            idle.validate(),
            Err(OptionsError::IdleBelowKeepAlive { .. })
        ));
        let small = ServerOptions {
            max_frame: 1024,
            max_message: 100,
            ..base()
        };
        assert!(matches!(
            small.validate(),
            Err(OptionsError::FrameBelowClient { .. })
        ));
        let long = ServerOptions {
            max_message: limits::MAX_CLIENT_FRAME,
            ..base()
        };
        let e = long.validate().expect_err("does not fit");
        assert!(e.to_string().contains("--max-frame"), "{e}");
        let fits = ServerOptions {
            max_message: limits::MAX_CLIENT_FRAME - limits::MESSAGE_OVERHEAD,
            ..base()
        };
        assert_eq!(fits.validate(), Ok(()));
        let history = ServerOptions {
            queue_len: 16,
            history: 1,
            ..base()
        };
        assert!(matches!(
            history.validate(),
            Err(OptionsError::HistoryAboveQueue { .. })
        ));
    }
}
