//! QUIC application close codes.
//!
//! A connection closed by qchat carries one of these codes and a short UTF-8
//! reason, so that a peer (or a packet capture) can tell a kick from a flood
//! from a protocol error without parsing the reason text.

/// Why a connection was closed. The numeric values are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// An orderly goodbye from either side.
    Normal = 0,
    /// The server is shutting down.
    ShuttingDown = 1,
    /// The peer sent bytes that are not a valid frame or message, a message
    /// of an unknown kind, a second hello, or data before the hello.
    ProtocolError = 2,
    /// A length prefix above the receiver's maximum frame size.
    FrameTooLarge = 3,
    /// No hello arrived within the hello deadline.
    HelloTimeout = 4,
    /// The hello was refused (name taken or invalid, unsupported version).
    Rejected = 5,
    /// The member's outgoing queue stayed full: it is not reading.
    SlowReader = 6,
    /// The member kept sending faster than the message rate allows.
    Flood = 7,
    /// An operator removed the member.
    Kicked = 8,
    /// Reserved: the server is at its connection limit. The reference server
    /// refuses the QUIC handshake instead, before it costs anything.
    ServerFull = 9,
    /// Reserved: the peer opened a stream it was not allowed to open. QUIC's
    /// stream limits never grant such a stream, so there is none to close.
    UnexpectedStream = 10,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 11] = [
        CloseCode::Normal,
        CloseCode::ShuttingDown,
        CloseCode::ProtocolError,
        CloseCode::FrameTooLarge,
        CloseCode::HelloTimeout,
        CloseCode::Rejected,
        CloseCode::SlowReader,
        CloseCode::Flood,
        CloseCode::Kicked,
        CloseCode::ServerFull,
        CloseCode::UnexpectedStream,
    ];

    /// The value sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a wire value, if it is one we know.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// A short human description, used when the peer gave no reason.
    pub fn describe(self) -> &'static str {
        match self {
            CloseCode::Normal => "closed",
            CloseCode::ShuttingDown => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::FrameTooLarge => "frame too large",
            CloseCode::HelloTimeout => "no hello in time",
            CloseCode::Rejected => "rejected",
            CloseCode::SlowReader => "not reading fast enough",
            CloseCode::Flood => "sending too fast",
            CloseCode::Kicked => "kicked",
            CloseCode::ServerFull => "server full",
            CloseCode::UnexpectedStream => "unexpected stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, c) in CloseCode::ALL.iter().enumerate() {
            assert_eq!(c.code() as usize, i);
            assert_eq!(CloseCode::from_code(i as u64), Some(*c));
        }
        assert_eq!(CloseCode::from_code(999), None);
    }
}
