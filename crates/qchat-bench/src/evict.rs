//! Evictions: members the server disconnected during a run. An eviction
//! makes the run's remaining deliveries impossible, so the bench says so
//! at once, stops, and fails the run instead of waiting out its timeout
//! and calling the result slow.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use qchat_proto::CloseCode;
use serde::Serialize;
use tokio::sync::Notify;

/// Server notices kept for the report: enough to show why, few enough
/// that a notice per member cannot grow the report.
const NOTICES_KEPT: usize = 4;

/// Why a member's connection ended, as the bench saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// The server closed with an application close code (docs/PROTOCOL.md
    /// section 7) and a reason.
    Closed { code: u64, reason: String },
    /// QUIC itself closed the connection with a transport error.
    Transport(String),
    /// No packet from the server within the idle timeout: it is gone or
    /// too busy to answer.
    TimedOut,
    /// A stateless reset: the server lost the connection (e.g. restarted).
    Reset,
    /// Anything else quinn reports.
    Other(String),
}

impl Cause {
    /// The cause of a connection's end, or `None` when the bench closed it
    /// itself (the run's own teardown is not an eviction).
    pub fn of(e: &quinn::ConnectionError) -> Option<Cause> {
        use quinn::ConnectionError as E;
        Some(match e {
            E::LocallyClosed => return None,
            E::ApplicationClosed(c) => Cause::Closed {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            E::ConnectionClosed(c) => Cause::Transport(c.to_string()),
            E::TransportError(t) => Cause::Transport(t.to_string()),
            E::TimedOut => Cause::TimedOut,
            E::Reset => Cause::Reset,
            other => Cause::Other(other.to_string()),
        })
    }

    /// The close code, when the server gave one.
    pub fn code(&self) -> Option<u64> {
        match self {
            Cause::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The code's name as docs/PROTOCOL.md spells it, or what happened.
    pub fn name(&self) -> String {
        match self {
            Cause::Closed { code, .. } => match CloseCode::from_code(*code) {
                Some(c) => wire_name(c).into(),
                None => format!("unknown code {code}"),
            },
            Cause::Transport(_) => "QUIC transport error".into(),
            Cause::TimedOut => "timed out".into(),
            Cause::Reset => "stateless reset".into(),
            Cause::Other(_) => "connection lost".into(),
        }
    }

    /// The server's reason phrase or quinn's description.
    pub fn reason(&self) -> &str {
        match self {
            Cause::Closed { reason, .. } | Cause::Transport(reason) | Cause::Other(reason) => {
                reason
            }
            Cause::TimedOut | Cause::Reset => "",
        }
    }

    /// One phrase for people: `code 6 SLOW_READER ("not reading")`.
    pub fn describe(&self) -> String {
        let head = match self.code() {
            Some(code) => format!("code {code} {}", self.name()),
            None => self.name(),
        };
        match self.reason() {
            "" => head,
            r => format!("{head} ({r:?})"),
        }
    }
}

/// The names docs/PROTOCOL.md section 7 gives the codes.
fn wire_name(c: CloseCode) -> &'static str {
    match c {
        CloseCode::Normal => "NORMAL",
        CloseCode::ShuttingDown => "SHUTTING_DOWN",
        CloseCode::ProtocolError => "PROTOCOL_ERROR",
        CloseCode::FrameTooLarge => "FRAME_TOO_LARGE",
        CloseCode::HelloTimeout => "HELLO_TIMEOUT",
        CloseCode::Rejected => "REJECTED",
        CloseCode::SlowReader => "SLOW_READER",
        CloseCode::Flood => "FLOOD",
        CloseCode::Kicked => "KICKED",
        CloseCode::ServerFull => "SERVER_FULL",
        CloseCode::UnexpectedStream => "UNEXPECTED_STREAM",
    }
}

/// One member's end.
#[derive(Clone, Debug)]
struct Eviction {
    member: usize,
    at: Instant,
    cause: Cause,
}

/// Every eviction of a run, recorded from the members' watcher tasks.
pub struct Evictions {
    count: AtomicUsize,
    list: Mutex<Vec<Eviction>>,
    notices: Mutex<Vec<String>>,
    /// When the load started; evictions before it are reported at 0 s.
    start: OnceLock<Instant>,
    /// Signalled at the first eviction (a permit, so a waiter that comes
    /// later still sees it).
    pub first: Notify,
}

impl Evictions {
    /// No evictions yet.
    pub fn new() -> Evictions {
        Evictions {
            count: AtomicUsize::new(0),
            list: Mutex::new(Vec::new()),
            notices: Mutex::new(Vec::new()),
            start: OnceLock::new(),
            first: Notify::new(),
        }
    }

    /// The load starts now: times are counted from here.
    pub fn started(&self, at: Instant) {
        let _ = self.start.set(at);
    }

    /// Members evicted so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Records that the server ended `member`'s connection. The first one
    /// is said on stderr at once, because it is the reason the run will
    /// fail; the rest are summed up when the run stops.
    pub fn record(&self, member: usize, cause: Cause, label: &str) {
        let at = Instant::now();
        let first = self.count.fetch_add(1, Ordering::Relaxed) == 0;
        if first {
            let what = match cause {
                Cause::Closed { .. } => format!("the {label} server disconnected member m{member}"),
                _ => format!("member m{member} lost its connection to the {label} server"),
            };
            eprintln!(
                "qchat-bench: {what} {}: {} — stopping the run",
                self.when(at),
                cause.describe()
            );
        }
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Eviction { member, at, cause });
        if first {
            self.first.notify_one();
        }
    }

    /// Keeps a server notice (a warning or kick message may precede a
    /// disconnection and say more than the close code).
    pub fn notice(&self, text: &str) {
        let mut n = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        if n.len() < NOTICES_KEPT && !n.iter().any(|t| t == text) {
            n.push(text.chars().take(200).collect());
        }
    }

    fn since_start(&self, at: Instant) -> Option<Duration> {
        self.start.get().map(|s| at.saturating_duration_since(*s))
    }

    fn when(&self, at: Instant) -> String {
        match self.since_start(at) {
            Some(d) => format!("{:.3} s into the load", d.as_secs_f64()),
            None => "before the load started".into(),
        }
    }

    /// The summary for the report.
    pub fn summary(&self) -> Evicted {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let notices = self
            .notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Evicted::from_list(&list, |at| self.since_start(at), notices)
    }
}

/// Evictions as the report shows them: how many, grouped by code and
/// reason, and when.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evicted {
    /// Members the server disconnected.
    pub count: usize,
    /// Seconds from the start of the load to the first and the last
    /// (0 for any before the load started).
    pub first_s: Option<f64>,
    pub last_s: Option<f64>,
    /// One entry per distinct cause, most frequent first.
    pub codes: Vec<CodeCount>,
    /// Up to the first few members evicted, e.g. `m3`.
    pub members: Vec<String>,
    /// Server notices received during the run.
    pub notices: Vec<String>,
}

/// Members evicted for one cause.
#[derive(Clone, Debug, Serialize)]
pub struct CodeCount {
    /// The application close code, `null` for a timeout, reset or
    /// transport error.
    pub code: Option<u64>,
    /// Its name (`SLOW_READER`) or what happened (`timed out`).
    pub name: String,
    pub reason: String,
    pub members: usize,
}

impl Evicted {
    fn from_list(
        list: &[Eviction],
        since: impl Fn(Instant) -> Option<Duration>,
        notices: Vec<String>,
    ) -> Evicted {
        let mut by_cause: BTreeMap<&Cause, usize> = BTreeMap::new();
        for e in list {
            *by_cause.entry(&e.cause).or_default() += 1;
        }
        let mut codes: Vec<CodeCount> = by_cause
            .into_iter()
            .map(|(c, n)| CodeCount {
                code: c.code(),
                name: c.name(),
                reason: c.reason().to_string(),
                members: n,
            })
            .collect();
        codes.sort_by_key(|c| std::cmp::Reverse(c.members));
        let secs = |at: Instant| since(at).unwrap_or_default().as_secs_f64();
        let mut members: Vec<usize> = list.iter().map(|e| e.member).collect();
        members.sort_unstable();
        Evicted {
            count: list.len(),
            first_s: list.iter().map(|e| e.at).min().map(secs),
            last_s: list.iter().map(|e| e.at).max().map(secs),
            codes,
            members: members.iter().take(8).map(|m| format!("m{m}")).collect(),
            notices,
        }
    }

    /// One line for people, e.g. `5 members disconnected (5 × code 6
    /// SLOW_READER ("not reading")) 1.204–1.377 s into the load`.
    pub fn describe(&self) -> String {
        let causes: Vec<String> = self
            .codes
            .iter()
            .map(|c| {
                let head = match c.code {
                    Some(code) => format!("{} × code {code} {}", c.members, c.name),
                    None => format!("{} × {}", c.members, c.name),
                };
                if c.reason.is_empty() {
                    head
                } else {
                    format!("{head} ({:?})", c.reason)
                }
            })
            .collect();
        let when = match (self.first_s, self.last_s) {
            (Some(a), Some(b)) if (b - a).abs() < 0.0005 => format!(" {a:.3} s into the load"),
            (Some(a), Some(b)) => format!(" {a:.3}–{b:.3} s into the load"),
            _ => String::new(),
        };
        let notices = if self.notices.is_empty() {
            String::new()
        } else {
            format!("; server notices: {}", self.notices.join(" | "))
        };
        format!(
            "{} member{} disconnected ({}){when}{notices}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            causes.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionError, VarInt};

    fn app(code: u32, reason: &'static str) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(code),
            reason: Bytes::from_static(reason.as_bytes()),
        })
    }

    #[test]
    fn our_own_close_is_not_an_eviction() {
        assert_eq!(Cause::of(&ConnectionError::LocallyClosed), None);
    }

    #[test]
    fn close_codes_are_named_as_the_protocol_names_them() {
        let c = Cause::of(&app(6, "not reading")).expect("an eviction");
        assert_eq!(c.code(), Some(6));
        assert_eq!(c.name(), "SLOW_READER");
        assert_eq!(c.describe(), "code 6 SLOW_READER (\"not reading\")");
        let f = Cause::of(&app(7, "")).expect("an eviction");
        assert_eq!(f.describe(), "code 7 FLOOD");
        let odd = Cause::of(&app(4711, "?")).expect("an eviction");
        assert_eq!(odd.name(), "unknown code 4711");
    }

    #[test]
    fn timeouts_and_resets_have_no_code() {
        let t = Cause::of(&ConnectionError::TimedOut).expect("an eviction");
        assert_eq!((t.code(), t.name().as_str()), (None, "timed out"));
        let r = Cause::of(&ConnectionError::Reset).expect("an eviction");
        assert_eq!(r.describe(), "stateless reset");
    }

    #[test]
    fn the_summary_groups_by_cause_and_times_from_the_start() {
        let e = Evictions::new();
        let start = Instant::now();
        e.started(start);
        let slow = || Cause::of(&app(6, "not reading")).expect("an eviction");
        e.record(3, slow(), "qchat");
        e.record(1, slow(), "qchat");
        e.record(2, Cause::TimedOut, "qchat");
        e.notice("slow down");
        e.notice("slow down");
        let s = e.summary();
        assert_eq!(s.count, 3);
        assert_eq!(e.count(), 3);
        assert_eq!(s.codes.len(), 2);
        assert_eq!((s.codes[0].code, s.codes[0].members), (Some(6), 2));
        assert_eq!((s.codes[1].code, s.codes[1].members), (None, 1));
        assert_eq!(s.members, ["m1", "m2", "m3"]);
        assert_eq!(s.notices, ["slow down"]);
        let (first, last) = (s.first_s.expect("first"), s.last_s.expect("last"));
        assert!(first >= 0.0 && first <= last, "{first} {last}");
        let line = s.describe();
        assert!(
            line.starts_with("3 members disconnected (2 × code 6 SLOW_READER"),
            "{line}"
        );
        assert!(line.contains("1 × timed out"), "{line}");
    }

    #[test]
    fn no_evictions_summarise_as_zero() {
        let s = Evictions::new().summary();
        assert_eq!((s.count, s.first_s), (0, None));
        assert!(s.codes.is_empty());
    }
}
