//! Private conversations on the client: what has been displayed of each
//! ([`Conversations`], plain, no I/O) and where that is kept between runs
//! ([`PrivateFile`]).
//!
//! The server keeps each conversation's messages under ids of its own
//! (`PrivateLive`, `PrivateHistory`); after every welcome from a version-5
//! server the client asks for what came after its point in each
//! (`PrivateResume`). Live messages can arrive before or during that
//! replay, and they are newer than the replay's: one shown early must not
//! move the point past older messages the replay is about to bring (that
//! would drop them as copies), so it is remembered apart and the replay
//! skips just it. Once the replay ends, the point moves past everything
//! shown.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use qchat_proto::limits::PRIVATE_POINTS;
use qchat_proto::{ClientMsg, PrivatePoint};

/// What the client has shown of its private conversations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversations {
    /// The store the points belong to.
    log_id: Option<[u8; 16]>,
    /// The newest id displayed, per conversation.
    last: HashMap<[u8; 16], u64>,
    /// Live messages shown while a replay was under way.
    early: HashSet<([u8; 16], u64)>,
    /// Between asking for the replay and its end.
    replaying: bool,
    /// Changed since [`Conversations::take_dirty`] last said so.
    dirty: bool,
}

impl Conversations {
    /// Starts from what was saved (or from nothing).
    pub fn new(saved: Option<Saved>) -> Self {
        match saved {
            Some(s) => Conversations {
                log_id: Some(s.log_id),
                last: s.points.into_iter().map(|p| (p.conv, p.after)).collect(),
                ..Conversations::default()
            },
            None => Conversations::default(),
        }
    }

    /// The request to send after a welcome: the points of the most active
    /// conversations (by their newest id), at most [`PRIVATE_POINTS`].
    pub fn request(&mut self) -> ClientMsg {
        self.replaying = true;
        let mut points: Vec<PrivatePoint> = self
            .last
            .iter()
            .map(|(conv, after)| PrivatePoint {
                conv: *conv,
                after: *after,
            })
            .collect();
        points.sort_by(|a, b| b.after.cmp(&a.after).then(a.conv.cmp(&b.conv)));
        points.truncate(PRIVATE_POINTS);
        ClientMsg::PrivateResume {
            log_id: self.log_id.unwrap_or([0; 16]),
            points,
        }
    }

    /// The replay begins, from store `log_id`: another store than the
    /// points name shares nothing with what was displayed.
    pub fn replay_start(&mut self, log_id: [u8; 16], kept: bool) {
        if !kept {
            return;
        }
        if self.log_id != Some(log_id) {
            self.log_id = Some(log_id);
            self.last.clear();
            self.dirty = true;
        }
    }

    /// Whether replayed message `id` of `conv` is new and should be shown.
    pub fn history(&mut self, conv: [u8; 16], id: u64) -> bool {
        let last = self.last.entry(conv).or_insert(0);
        if id <= *last {
            return false;
        }
        *last = id;
        self.dirty = true;
        !self.early.contains(&(conv, id))
    }

    /// Whether live message `id` of `conv` is new and should be shown.
    pub fn live(&mut self, conv: [u8; 16], id: u64) -> bool {
        let last = self.last.entry(conv).or_insert(0);
        if id <= *last {
            return false;
        }
        if self.replaying {
            return self.early.insert((conv, id));
        }
        *last = id;
        self.dirty = true;
        true
    }

    /// The replay is over: the point moves past what was shown early.
    pub fn replayed(&mut self) {
        self.replaying = false;
        for (conv, id) in self.early.drain() {
            let last = self.last.entry(conv).or_insert(0);
            *last = (*last).max(id);
            self.dirty = true;
        }
    }

    /// The connection dropped: a replay under way will not finish, and
    /// the next one will bring again what it did not.
    pub fn disconnected(&mut self) {
        self.replayed();
    }

    /// What to save, if anything has been seen.
    pub fn saved(&self) -> Option<Saved> {
        let log_id = self.log_id?;
        let mut points: Vec<PrivatePoint> = self
            .last
            .iter()
            .map(|(conv, after)| PrivatePoint {
                conv: *conv,
                after: *after,
            })
            .collect();
        points.sort_by_key(|p| p.conv);
        Some(Saved { log_id, points })
    }

    /// Whether the points changed since this was last asked.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}

/// The private points as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The store.
    pub log_id: [u8; 16],
    /// One per conversation.
    pub points: Vec<PrivatePoint>,
}

/// The private points could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing the file failed.
    #[error("cannot use the private conversations' points in {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not what this build writes.
    #[error(
        "the private conversations' points in {path} are not readable ({why}); starting fresh"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One server's private points on disk, beside its room point
/// (`$QCHAT_HOME/resume/<host>.private`): the first line is the store's id
/// in hex, then one line per conversation, `<conversation hex> <last id>`;
/// replaced atomically, never half-written.
#[derive(Debug, Clone)]
pub struct PrivateFile {
    path: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl PrivateFile {
    /// The file beside the room's resume point `room_point`.
    pub fn beside(room_point: &Path) -> Self {
        let mut name = room_point.as_os_str().to_owned();
        name.push(".private");
        PrivateFile {
            path: PathBuf::from(name),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved points: `Ok(None)` when there are none yet.
    pub fn load(&self) -> Result<Option<Saved>, FileError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FileError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let corrupt = |why: &str| FileError::Corrupt {
            path: self.path.clone(),
            why: why.into(),
        };
        let mut lines = text.lines();
        let log_id = lines
            .next()
            .and_then(|l| unhex(l.trim()))
            .ok_or_else(|| corrupt("the first line is not a store id"))?;
        let mut points = Vec::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(conv), Some(after), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(corrupt("expected a conversation and a message id"));
            };
            let conv = unhex(conv).ok_or_else(|| corrupt("a conversation is not 32 hex digits"))?;
            let after = after
                .parse()
                .map_err(|_| corrupt("a message id is not a number"))?;
            points.push(PrivatePoint { conv, after });
        }
        Ok(Some(Saved { log_id, points }))
    }

    /// Saves `saved`, replacing the file atomically.
    pub fn save(&self, saved: &Saved) -> Result<(), FileError> {
        let io = |source| FileError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let mut text = hex(&saved.log_id);
        text.push('\n');
        for p in &saved.points {
            text.push_str(&format!("{} {}\n", hex(&p.conv), p.after));
        }
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    #[test]
    fn a_live_message_during_the_replay_is_shown_once_and_hides_nothing_older() {
        let mut c = Conversations::new(Some(Saved {
            log_id: [9; 16],
            points: vec![PrivatePoint { conv: A, after: 7 }],
        }));
        c.request();
        // 10 arrives live before the replay of 8, 9, 10.
        assert!(c.live(A, 10));
        c.replay_start([9; 16], true);
        assert!(c.history(A, 8));
        assert!(c.history(A, 9));
        assert!(!c.history(A, 10), "already shown live");
        c.replayed();
        assert!(!c.live(A, 10));
        assert!(c.live(A, 11));
        assert_eq!(
            c.saved().map(|s| s.points),
            Some(vec![PrivatePoint { conv: A, after: 11 }])
        );
    }

    #[test]
    fn another_store_starts_every_conversation_afresh() {
        let mut c = Conversations::new(Some(Saved {
            log_id: [9; 16],
            points: vec![PrivatePoint { conv: A, after: 7 }],
        }));
        c.request();
        c.replay_start([8; 16], true);
        assert!(c.history(A, 1));
        assert!(c.history(B, 1));
        c.replayed();
        assert_eq!(c.saved().map(|s| s.log_id), Some([8; 16]));
    }

    #[test]
    fn copies_are_dropped_outside_a_replay() {
        let mut c = Conversations::default();
        assert!(c.live(A, 1));
        assert!(!c.live(A, 1));
        assert!(c.live(B, 1));
        assert!(c.take_dirty());
        assert!(!c.take_dirty());
    }

    #[test]
    fn the_request_sends_every_point_under_the_saved_store() {
        let mut c = Conversations::new(Some(Saved {
            log_id: [9; 16],
            points: vec![
                PrivatePoint { conv: A, after: 3 },
                PrivatePoint { conv: B, after: 5 },
            ],
        }));
        let ClientMsg::PrivateResume { log_id, points } = c.request() else {
            unreachable!("request() makes a PrivateResume");
        };
        assert_eq!(log_id, [9; 16]);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].conv, B, "the most active first");
    }

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let f = PrivateFile::beside(&dir.path().join("resume").join("host_1"));
        assert!(matches!(f.load(), Ok(None)));
        let saved = Saved {
            log_id: [0xab; 16],
            points: vec![PrivatePoint { conv: A, after: 42 }],
        };
        f.save(&saved).expect("save");
        assert!(f.path().to_string_lossy().ends_with("host_1.private"));
        assert_eq!(f.load().expect("load"), Some(saved));
        std::fs::write(f.path(), "nonsense\n").expect("write");
        assert!(matches!(f.load(), Err(FileError::Corrupt { .. })));
    }
}
