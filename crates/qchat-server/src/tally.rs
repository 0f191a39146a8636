//! Log lines for events a flood repeats thousands of times (refused
//! connections; connections closed before they joined: hello timeouts,
//! garbage instead of a hello, refused names): the first of each kind from
//! an address in a window is logged in full, the rest are counted and summed
//! up in one line when the window closes, so an attack is visible without
//! burying the log.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use qchat_proto::CloseCode;

/// How often the counts are summed up; also the window a summary covers.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Addresses tracked per window. A flood from more addresses than this is
/// summed up in one line for "other addresses", so the tally itself stays
/// small whatever the attacker does.
const MAX_ADDRESSES: usize = 1024;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Refused before the handshake: the server was at its connection limit.
    RefusedFull,
    /// Refused before the handshake: the address had all its connections.
    RefusedPerAddress,
    /// Refused before the handshake: the address had all the connections
    /// that have not joined yet that it may have.
    RefusedUnjoined,
    /// Closed before joining, with this close code (no hello in time, a
    /// protocol error, a refused hello…).
    ClosedBeforeJoin(CloseCode),
}

impl Kind {
    /// Why, in words, for a log line.
    pub fn why(self) -> &'static str {
        self.words().1
    }

    /// What was done, and why, for the summary line.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Kind::RefusedFull => ("refused", "the server is at its connection limit"),
            Kind::RefusedPerAddress => ("refused", "the address is at its connection limit"),
            Kind::RefusedUnjoined => (
                "refused",
                "the address has as many connections waiting to join as it may",
            ),
            Kind::ClosedBeforeJoin(code) => ("closed", code.describe()),
        }
    }
}

/// Events counted in the current window, by kind and address.
#[derive(Debug, Default)]
pub struct Tally {
    counts: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Events after the first, per kind and address; the first was logged.
    by_address: HashMap<(Kind, IpAddr), u64>,
    /// Events from addresses beyond [`MAX_ADDRESSES`], per kind.
    others: HashMap<Kind, u64>,
}

impl Tally {
    /// Counts one event. `true` means it is the first of its kind from this
    /// address in the window and the caller should log it in full.
    pub fn note(&self, kind: Kind, ip: IpAddr) -> bool {
        let mut w = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.by_address.get_mut(&(kind, ip)) {
            *n += 1;
            return false;
        }
        if w.by_address.len() >= MAX_ADDRESSES {
            *w.others.entry(kind).or_insert(0) += 1;
            return false;
        }
        w.by_address.insert((kind, ip), 0);
        true
    }

    /// Ends the window: one log line per kind and address that had more
    /// events than the one already logged.
    pub fn flush(&self) -> Vec<String> {
        let w = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        let secs = WINDOW.as_secs();
        let mut lines: Vec<String> = w
            .by_address
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((kind, ip), n)| {
                let (did, why) = kind.words();
                format!(
                    "{did} {} more connections from {ip} in the last {secs} s ({why})",
                    Thousands(n)
                )
            })
            .collect();
        lines.extend(w.others.into_iter().map(|(kind, n)| {
            let (did, why) = kind.words();
            format!(
                "{did} {} connections from other addresses in the last {secs} s ({why})",
                Thousands(n)
            )
        }));
        lines.sort();
        lines
    }
}

/// A count with thousands separators, as a person reads it in a log.
struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_logged_and_the_rest_summed_up_once() {
        let t = Tally::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(t.note(Kind::ClosedBeforeJoin(CloseCode::HelloTimeout), a));
        assert!((0..1702).all(|_| !t.note(Kind::ClosedBeforeJoin(CloseCode::HelloTimeout), a)));
        // Another address or another kind is news again.
        assert!(t.note(Kind::ClosedBeforeJoin(CloseCode::HelloTimeout), b));
        assert!(t.note(Kind::RefusedPerAddress, a));
        assert_eq!(
            t.flush(),
            ["closed 1,702 more connections from 127.0.0.1 in the last 10 s (no hello in time)"]
        );
        // A new window starts empty: the next event is logged in full.
        assert!(t.flush().is_empty());
        assert!(t.note(Kind::ClosedBeforeJoin(CloseCode::HelloTimeout), a));
    }

    #[test]
    fn many_addresses_share_one_line() {
        let t = Tally::default();
        let logged = (0..MAX_ADDRESSES as u32 + 10)
            .filter(|i| t.note(Kind::RefusedFull, IpAddr::from(i.to_be_bytes())))
            .count();
        assert_eq!(logged, MAX_ADDRESSES);
        assert_eq!(
            t.flush(),
            ["refused 10 connections from other addresses in the last 10 s (the server is at its connection limit)"]
        );
    }

    #[test]
    fn thousands_are_separated() {
        let s = |n| Thousands(n).to_string();
        assert_eq!(
            [s(0), s(999), s(1000), s(1_234_567)],
            ["0", "999", "1,000", "1,234,567"]
        );
    }
}
