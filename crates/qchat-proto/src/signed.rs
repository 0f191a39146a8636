//! What a member signs for each message it writes: the exact bytes, so
//! that another implementation can sign and verify the same way.
//!
//! The signature binds what the sender wrote (kind, recipient, text) to its
//! idempotency key and its own clock, and is made with the sender's person
//! key (Ed25519, the key of its client certificate). The server stores and
//! forwards it untouched; it is never part of what the server decides, so a
//! server that alters a line's text or puts it under another name makes a
//! line whose signature does not verify under that name's keys.
//!
//! The layout (all integers big-endian, lengths in bytes):
//!
//! ```text
//! "qchat message v1\0"          17 bytes, domain separation
//! kind                           1 byte: 0 say, 1 action, 2 private
//! len(to)   u32, to              the recipient's name for a private
//!                                message as the sender typed it; empty
//!                                (length 0) for public messages
//! len(text) u32, text            UTF-8, exactly as sent
//! instance                       16 bytes, the client's instance id
//! seq       u64                  the message's number
//! sent_ms   u64                  the sender's clock, ms since the epoch
//! ```
//!
//! The prefix keeps these signatures from ever being mistaken for any
//! other use of the key (its TLS handshake signs with a different,
//! TLS-defined context); the lengths make every field boundary
//! unambiguous.

/// The domain-separation prefix, the first bytes of every signed message.
pub const DOMAIN: &[u8] = b"qchat message v1\0";

/// The length of an Ed25519 signature: the only length a server forwards.
pub const SIGNATURE_LEN: usize = 64;

/// Which kind of message is signed (its byte in the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedKind {
    /// A public line.
    Say,
    /// A public action (`/me`).
    Action,
    /// A private message.
    Private,
}

impl SignedKind {
    fn byte(self) -> u8 {
        match self {
            SignedKind::Say => 0,
            SignedKind::Action => 1,
            SignedKind::Private => 2,
        }
    }

    /// The public kind for a line that is an action or not.
    pub fn public(action: bool) -> Self {
        if action {
            SignedKind::Action
        } else {
            SignedKind::Say
        }
    }
}

/// The fields a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    /// The kind.
    pub kind: SignedKind,
    /// The recipient (private messages; empty otherwise).
    pub to: &'a str,
    /// The text.
    pub text: &'a str,
    /// The sender's instance id.
    pub instance: [u8; 16],
    /// The message's number.
    pub seq: u64,
    /// The sender's clock when it wrote the message, ms since the epoch.
    pub sent_ms: u64,
}

impl Signed<'_> {
    /// The exact bytes that are signed.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DOMAIN.len() + 1 + 8 + self.to.len() + self.text.len() + 32);
        b.extend_from_slice(DOMAIN);
        b.push(self.kind.byte());
        put_str(&mut b, self.to);
        put_str(&mut b, self.text);
        b.extend_from_slice(&self.instance);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.sent_ms.to_be_bytes());
        b
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // Texts are bounded far below 4 GiB by the frame limit; a longer one
    // could not have arrived in one frame.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_layout() {
        let s = Signed {
            kind: SignedKind::Action,
            to: "",
            text: "hi",
            instance: [7; 16],
            seq: 300,
            sent_ms: 1,
        };
        let mut want = b"qchat message v1\0".to_vec();
        want.push(1);
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0x2c]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.bytes(), want);
    }

    #[test]
    fn the_documented_layout_of_a_private_message() {
        let s = Signed {
            kind: SignedKind::Private,
            to: "Bob",
            text: "hi",
            instance: [7; 16],
            seq: 1,
            sent_ms: 2,
        };
        let mut want = b"qchat message v1\0".to_vec();
        want.push(2);
        want.extend_from_slice(&[0, 0, 0, 3, b'B', b'o', b'b']);
        want.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(s.bytes(), want);
        // The recipient is signed as addressed: another spelling of the
        // same name is other bytes.
        assert_ne!(Signed { to: "bob", ..s }.bytes(), want);
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = Signed {
            kind: SignedKind::Private,
            to: "bob",
            text: "hi",
            instance: [1; 16],
            seq: 2,
            sent_ms: 3,
        };
        let variants = [
            Signed {
                kind: SignedKind::Say,
                ..base
            },
            Signed { to: "bo", ..base },
            Signed { text: "hj", ..base },
            Signed {
                instance: [2; 16],
                ..base
            },
            Signed { seq: 3, ..base },
            Signed { sent_ms: 4, ..base },
        ];
        for v in variants {
            assert_ne!(v.bytes(), base.bytes(), "{v:?}");
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Moving bytes from the recipient to the text must not sign the
        // same bytes.
        let a = Signed {
            kind: SignedKind::Private,
            to: "ab",
            text: "c",
            instance: [0; 16],
            seq: 0,
            sent_ms: 0,
        };
        let b = Signed {
            to: "a",
            text: "bc",
            ..a
        };
        assert_ne!(a.bytes(), b.bytes());
    }
}
