//! The resume logic as plain types, with no I/O: what the client has
//! displayed ([`Transcript`]), what it has typed but the server has not yet
//! acknowledged ([`Outbox`]), and where the resume point is kept between
//! runs ([`ResumeStore`]).
//!
//! The network task feeds these from frames and reconnects; keeping them
//! free of sockets lets a property test drive them through any interleaving
//! of drops, re-sends and replays.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use qchat_proto::{ClientMsg, ResumePoint};

/// How many numbered messages may wait for the server at once (typed while
/// disconnected, held back by pacing, or sent and not yet acknowledged).
pub const OUTBOX_CAP: usize = 1000;

/// What the client has shown of the room's log: the log's identity and the
/// newest message id displayed. Ids only grow, so anything at or below the
/// newest one is a copy (a replay overlapping live traffic, a re-sent
/// acknowledgement) and is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    log_id: Option<[u8; 16]>,
    last_id: u64,
}

impl Transcript {
    /// Starts from a saved point (or from nothing).
    pub fn new(point: Option<ResumePoint>) -> Self {
        match point {
            Some(p) => Transcript {
                log_id: Some(p.log_id),
                last_id: p.after,
            },
            None => Transcript::default(),
        }
    }

    /// The point to resume from, once a log has been seen.
    pub fn point(&self) -> Option<ResumePoint> {
        self.log_id.map(|log_id| ResumePoint {
            log_id,
            after: self.last_id,
        })
    }

    /// A welcome named the server's log. A different log (replaced or
    /// wiped) shares nothing with what was displayed, so this is a fresh
    /// join: its ids start again from wherever that log is.
    pub fn welcome(&mut self, log_id: [u8; 16]) {
        if self.log_id != Some(log_id) {
            self.log_id = Some(log_id);
            self.last_id = 0;
        }
    }

    /// Whether message `id` is new and should be displayed; it then becomes
    /// the newest displayed.
    pub fn accept(&mut self, id: u64) -> bool {
        if id <= self.last_id {
            return false;
        }
        self.last_id = id;
        true
    }

    /// The newest id displayed.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }
}

/// What the client has shown of each room besides the lobby: one
/// [`Transcript`] per room, by the room's folded name, with the room's
/// name as the server spells it. A reconnect (or a restart of the client)
/// rejoins each one from its point, so every room resumes exactly as the
/// lobby does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomTranscripts {
    rooms: BTreeMap<String, (String, Transcript)>,
}

impl RoomTranscripts {
    /// Starts from saved points (room name and point).
    pub fn new(saved: Vec<(String, ResumePoint)>) -> Self {
        let rooms = saved
            .into_iter()
            .map(|(name, p)| {
                (
                    qchat_proto::names::fold_room(&name),
                    (name, Transcript::new(Some(p))),
                )
            })
            .collect();
        RoomTranscripts { rooms }
    }

    /// The server put us in `room`, whose log is `log_id` (kept or fresh,
    /// as [`Transcript::welcome`] decides).
    pub fn joined(&mut self, room: &str, log_id: [u8; 16]) {
        let entry = self
            .rooms
            .entry(qchat_proto::names::fold_room(room))
            .or_insert_with(|| (room.to_string(), Transcript::default()));
        entry.0 = room.to_string();
        entry.1.welcome(log_id);
    }

    /// `room` as the server spells it, if we are in it: a line is sent and
    /// signed under that spelling, since the signature covers the room's
    /// name and every member checks it against the server's spelling.
    pub fn spelling(&self, room: &str) -> Option<&str> {
        self.rooms
            .get(&qchat_proto::names::fold_room(room))
            .map(|(name, _)| name.as_str())
    }

    /// We are no longer in `room`: nothing of it is resumed any more.
    pub fn parted(&mut self, room: &str) {
        self.rooms.remove(&qchat_proto::names::fold_room(room));
    }

    /// Whether message `id` of `room` is new (see [`Transcript::accept`]);
    /// a room we are not in shows nothing.
    pub fn accept(&mut self, room: &str, id: u64) -> bool {
        self.rooms
            .get_mut(&qchat_proto::names::fold_room(room))
            .is_some_and(|(_, t)| t.accept(id))
    }

    /// Every room with the point to rejoin it from.
    pub fn points(&self) -> Vec<(String, Option<ResumePoint>)> {
        self.rooms
            .values()
            .map(|(name, t)| (name.clone(), t.point()))
            .collect()
    }

    /// Whether we are in no room besides the lobby.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// The outbox is full: the message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{OUTBOX_CAP} messages are already waiting for the server; this one was not sent")]
pub struct OutboxFull;

/// Numbered messages (`Say`, `Action`, `Private`) from the moment they get
/// their number until the server acknowledges or refuses them. Those not
/// yet written wait in order; those written stay until answered, so after a
/// reconnect they are written again with the same number (the server
/// recognises a copy of a stored message by its instance and number and
/// acknowledges it without delivering it twice).
#[derive(Debug, Clone)]
pub struct Outbox {
    cap: usize,
    unsent: VecDeque<(u64, ClientMsg)>,
    in_flight: BTreeMap<u64, ClientMsg>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(OUTBOX_CAP)
    }
}

impl Outbox {
    /// An empty outbox that holds at most `cap` messages.
    pub fn new(cap: usize) -> Self {
        Outbox {
            cap,
            unsent: VecDeque::new(),
            in_flight: BTreeMap::new(),
        }
    }

    /// Queues message `seq` behind the others.
    pub fn push(&mut self, seq: u64, msg: ClientMsg) -> Result<(), OutboxFull> {
        if self.len() >= self.cap {
            return Err(OutboxFull);
        }
        self.unsent.push_back((seq, msg));
        Ok(())
    }

    /// The next message to write, which counts as written from now on.
    pub fn next_to_send(&mut self) -> Option<ClientMsg> {
        let (seq, msg) = self.unsent.pop_front()?;
        self.in_flight.insert(seq, msg.clone());
        Some(msg)
    }

    /// Whether a message is waiting to be written.
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// The server answered `seq` (acknowledged or refused); returns whether
    /// it was waiting.
    pub fn answered(&mut self, seq: u64) -> bool {
        if self.in_flight.remove(&seq).is_some() {
            return true;
        }
        let before = self.unsent.len();
        self.unsent.retain(|(s, _)| *s != seq);
        before != self.unsent.len()
    }

    /// The connection dropped: everything written but not answered is
    /// written again first, in number order, then the rest.
    pub fn requeue(&mut self) {
        let in_flight = std::mem::take(&mut self.in_flight);
        for (seq, msg) in in_flight.into_iter().rev() {
            self.unsent.push_front((seq, msg));
        }
    }

    /// Whether a public message with this text (an action or not) is
    /// waiting for its answer: a replayed copy of it, stored before the
    /// connection dropped, is the line the interface already shows as
    /// pending.
    pub fn holds_public(&self, text: &str, action: bool) -> bool {
        let same = |m: &ClientMsg| match m {
            ClientMsg::Say { text: t, .. } => !action && t == text,
            ClientMsg::Action { text: t, .. } => action && t == text,
            ClientMsg::Signed {
                text: t, action: a, ..
            } => *a == action && t == text,
            _ => false,
        };
        self.in_flight.values().any(same) || self.unsent.iter().any(|(_, m)| same(m))
    }

    /// As [`Outbox::holds_public`], for a line of `room` (compared as the
    /// same room name).
    pub fn holds_in_room(&self, room: &str, text: &str, action: bool) -> bool {
        let room = qchat_proto::names::fold_room(room);
        let same = |m: &ClientMsg| match m {
            ClientMsg::RoomSay {
                room: r,
                text: t,
                action: a,
                ..
            }
            | ClientMsg::RoomSigned {
                room: r,
                text: t,
                action: a,
                ..
            } => *a == action && t == text && qchat_proto::names::fold_room(r) == room,
            _ => false,
        };
        self.in_flight.values().any(same) || self.unsent.iter().any(|(_, m)| same(m))
    }

    /// Messages not yet answered.
    pub fn len(&self) -> usize {
        self.unsent.len() + self.in_flight.len()
    }

    /// Whether every message was answered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a saved resume point could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("cannot use the resume point in {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a resume point.
    #[error("the resume point in {path} is not readable ({why}); starting fresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One server's resume point on disk, so a client restarted by hand still
/// catches up. The file is one line, `<log id hex> <last id>`, replaced
/// atomically (a crash leaves the old point or the new one, never half).
#[derive(Debug, Clone)]
pub struct ResumeStore {
    path: PathBuf,
}

impl ResumeStore {
    /// The point for `host` under `dir` (one file per server; characters
    /// that do not belong in a file name become `_`).
    pub fn new(dir: &Path, host: &str) -> Self {
        let file: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        ResumeStore {
            path: dir.join(file),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved point: `Ok(None)` when there is none yet, an error for a
    /// file that cannot be read or parsed (the caller warns and goes on
    /// without it; the next save replaces it).
    pub fn load(&self) -> Result<Option<ResumePoint>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        std::str::from_utf8(&bytes)
            .map_err(|_| "not text".to_string())
            .and_then(|t| parse_point(t.lines().next().unwrap_or_default()))
            .map(Some)
            .map_err(|why| StoreError::Corrupt {
                path: self.path.clone(),
                why,
            })
    }

    /// The rooms besides the lobby saved with the point (the lines after
    /// the first, `#room <log id> <id>`): a line that does not parse is
    /// skipped, costing that room its resume, not the others theirs.
    pub fn load_rooms(&self) -> Vec<(String, ResumePoint)> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let (room, rest) = line.split_once(' ')?;
                qchat_proto::names::validate_room(room).ok()?;
                Some((room.to_string(), parse_point(rest).ok()?))
            })
            .collect()
    }

    /// Saves `point`, replacing the file atomically; the folder is created
    /// private to the user (it says which servers they talk to).
    pub fn save(&self, point: &ResumePoint) -> Result<(), StoreError> {
        self.save_all(point, &[])
    }

    /// Saves the lobby's `point` and each room's, one line each.
    pub fn save_all(
        &self,
        point: &ResumePoint,
        rooms: &[(String, ResumePoint)],
    ) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let hex: String = point.log_id.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(tmp, "{hex} {}", point.after).map_err(io)?;
        for (room, p) in rooms {
            let hex: String = p.log_id.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(tmp, "{room} {hex} {}", p.after).map_err(io)?;
        }
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn parse_point(text: &str) -> Result<ResumePoint, String> {
    let mut parts = text.split_whitespace();
    let (Some(hex), Some(after), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected a log id and a message id".into());
    };
    if hex.len() != 32 || !hex.is_ascii() {
        return Err("the log id is not 32 hex digits".into());
    }
    let mut log_id = [0u8; 16];
    for (i, b) in log_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "the log id is not 32 hex digits".to_string())?;
    }
    let after = after
        .parse()
        .map_err(|_| "the message id is not a number".to_string())?;
    Ok(ResumePoint { log_id, after })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn say(seq: u64) -> ClientMsg {
        ClientMsg::Say {
            seq,
            text: seq.to_string(),
        }
    }

    /// A signed line waiting for its answer is recognised in the replay
    /// like a plain one: otherwise a line stored just before the connection
    /// dropped would be shown twice, pending and replayed.
    #[test]
    fn a_signed_line_waiting_for_its_answer_is_held() {
        let mut o = Outbox::default();
        o.push(
            1,
            ClientMsg::Signed {
                seq: 1,
                text: "hi".into(),
                action: false,
                sent_ms: 0,
                key: [0; 32],
                sig: vec![0; 64],
            },
        )
        .expect("room in the outbox");
        assert!(o.holds_public("hi", false));
        assert!(!o.holds_public("hi", true));
        assert!(!o.holds_public("other", false));
    }

    #[test]
    fn a_copy_at_or_below_the_newest_id_is_dropped() {
        let mut t = Transcript::default();
        t.welcome([1; 16]);
        assert!(t.accept(1));
        assert!(t.accept(3));
        assert!(!t.accept(3));
        assert!(!t.accept(2));
        assert_eq!(
            t.point(),
            Some(ResumePoint {
                log_id: [1; 16],
                after: 3
            })
        );
    }

    #[test]
    fn another_log_is_a_fresh_join() {
        let mut t = Transcript::new(Some(ResumePoint {
            log_id: [1; 16],
            after: 40,
        }));
        t.welcome([1; 16]);
        assert_eq!(t.last_id(), 40);
        t.welcome([2; 16]);
        assert_eq!(t.last_id(), 0);
        assert!(t.accept(1));
    }

    #[test]
    fn unanswered_messages_are_written_again_in_order_before_the_rest() {
        let mut o = Outbox::new(10);
        for seq in 1..=4 {
            o.push(seq, say(seq)).expect("room");
        }
        assert_eq!(o.next_to_send(), Some(say(1)));
        assert_eq!(o.next_to_send(), Some(say(2)));
        assert_eq!(o.next_to_send(), Some(say(3)));
        assert!(o.answered(2));
        o.requeue();
        let order: Vec<_> = std::iter::from_fn(|| o.next_to_send()).collect();
        assert_eq!(order, [say(1), say(3), say(4)]);
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_full_outbox_refuses() {
        let mut o = Outbox::new(2);
        o.push(1, say(1)).expect("room");
        o.push(2, say(2)).expect("room");
        assert_eq!(o.push(3, say(3)), Err(OutboxFull));
        o.next_to_send();
        assert!(o.answered(1));
        o.push(3, say(3)).expect("room again");
    }

    #[test]
    fn a_room_is_spelt_as_the_server_spells_it() {
        let mut rooms = RoomTranscripts::default();
        assert_eq!(rooms.spelling("#Dev"), None);
        rooms.joined("#dev", [1; 16]);
        assert_eq!(rooms.spelling("#DEV"), Some("#dev"));
        rooms.parted("#Dev");
        assert_eq!(rooms.spelling("#dev"), None);
    }

    #[test]
    fn each_room_resumes_from_its_own_point_and_survives_a_restart() {
        let mut rooms = RoomTranscripts::default();
        rooms.joined("#dev", [1; 16]);
        rooms.joined("#ops", [2; 16]);
        assert!(rooms.accept("#dev", 1) && rooms.accept("#dev", 2));
        assert!(rooms.accept("#OPS", 1), "the same room, another spelling");
        assert!(!rooms.accept("#dev", 2), "a copy is dropped");
        assert!(!rooms.accept("#elsewhere", 9), "not in it: nothing shown");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ResumeStore::new(dir.path(), "h:1");
        let lobby = ResumePoint {
            log_id: [9; 16],
            after: 7,
        };
        let saved: Vec<(String, ResumePoint)> = rooms
            .points()
            .into_iter()
            .filter_map(|(r, p)| Some((r, p?)))
            .collect();
        store.save_all(&lobby, &saved).expect("saved");
        assert_eq!(store.load().expect("loads"), Some(lobby));
        let mut back = RoomTranscripts::new(store.load_rooms());
        assert_eq!(back, rooms);
        // Reconnected to the same logs: what was shown stays shown.
        back.joined("#dev", [1; 16]);
        assert!(!back.accept("#dev", 2) && back.accept("#dev", 3));
        // A room whose log was replaced starts afresh.
        back.joined("#ops", [3; 16]);
        assert!(back.accept("#ops", 1));
        back.parted("#dev");
        assert_eq!(back.points().len(), 1);
    }

    #[test]
    fn the_store_round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ResumeStore::new(&dir.path().join("resume"), "[::1]:8080");
        assert!(store.load().expect("no file is fine").is_none());
        let p = ResumePoint {
            log_id: [0xab; 16],
            after: 12345,
        };
        store.save(&p).expect("save");
        assert_eq!(store.load().expect("load"), Some(p.clone()));
        std::fs::write(store.path(), b"\xff\x00 not a point").expect("write");
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        store.save(&p).expect("a bad file is replaced");
        assert_eq!(store.load().expect("load"), Some(p));
    }

    /// One step of a session between the client and a model server.
    #[derive(Debug, Clone)]
    enum Step {
        /// The user types a message.
        Type,
        /// Another member says something.
        Other,
        /// The next frame reaches the server.
        ToServer,
        /// The next frame reaches the client.
        ToClient,
        /// The connection drops: whatever is on the wire is lost.
        Drop,
        /// The client reconnects and resumes; the server replays, and the
        /// first `overlap` replayed messages also arrive live (the server
        /// subscribed before reading the log).
        Reconnect { overlap: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Type),
            3 => Just(Step::Other),
            4 => Just(Step::ToServer),
            4 => Just(Step::ToClient),
            1 => Just(Step::Drop),
            1 => (0usize..4).prop_map(|overlap| Step::Reconnect { overlap }),
        ]
    }

    /// Server to client.
    #[derive(Debug, Clone)]
    enum Down {
        Message(u64),
        Ack { seq: u64, id: u64 },
    }

    /// The model: a log with idempotent appends, one connection with a
    /// queue each way, and the client's state machine.
    struct World {
        log: Vec<Option<u64>>,
        stored: HashMap<u64, u64>,
        up: VecDeque<u64>,
        down: VecDeque<Down>,
        connected: bool,
        transcript: Transcript,
        outbox: Outbox,
        shown: Vec<u64>,
        next_seq: u64,
        acked: Vec<u64>,
    }

    impl World {
        fn new() -> Self {
            World {
                log: Vec::new(),
                stored: HashMap::new(),
                up: VecDeque::new(),
                down: VecDeque::new(),
                connected: true,
                transcript: Transcript::default(),
                outbox: Outbox::new(1000),
                shown: Vec::new(),
                next_seq: 0,
                acked: Vec::new(),
            }
        }

        fn flush(&mut self) {
            if !self.connected {
                return;
            }
            while let Some(msg) = self.outbox.next_to_send() {
                if let Some(seq) = msg.seq() {
                    self.up.push_back(seq);
                }
            }
        }

        fn show(&mut self, id: u64) {
            if self.transcript.accept(id) {
                self.shown.push(id);
            }
        }

        fn apply(&mut self, s: &Step) {
            match *s {
                Step::Type => {
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    self.outbox.push(seq, say(seq)).expect("room");
                    self.flush();
                }
                Step::Other => {
                    self.log.push(None);
                    let id = self.log.len() as u64;
                    if self.connected {
                        self.down.push_back(Down::Message(id));
                    }
                }
                Step::ToServer => {
                    if let Some(seq) = self.up.pop_front() {
                        let id = match self.stored.get(&seq) {
                            Some(id) => *id,
                            None => {
                                self.log.push(Some(seq));
                                let id = self.log.len() as u64;
                                self.stored.insert(seq, id);
                                id
                            }
                        };
                        self.down.push_back(Down::Ack { seq, id });
                    }
                }
                Step::ToClient => match self.down.pop_front() {
                    Some(Down::Message(id)) => self.show(id),
                    Some(Down::Ack { seq, id }) => {
                        if self.outbox.answered(seq) {
                            self.acked.push(seq);
                        }
                        self.show(id);
                    }
                    None => {}
                },
                Step::Drop => {
                    self.connected = false;
                    self.up.clear();
                    self.down.clear();
                }
                Step::Reconnect { overlap } => {
                    self.connected = true;
                    self.up.clear();
                    self.down.clear();
                    let after = self.transcript.point().map_or(0, |p| p.after);
                    self.transcript.welcome([7; 16]);
                    let replay: Vec<u64> = (after + 1..=self.log.len() as u64).collect();
                    for id in &replay {
                        self.down.push_back(Down::Message(*id));
                    }
                    for id in replay.iter().take(overlap) {
                        self.down.push_back(Down::Message(*id));
                    }
                    self.outbox.requeue();
                    self.flush();
                }
            }
        }

        /// Reconnects and delivers everything until nothing moves.
        fn settle(&mut self) {
            self.apply(&Step::Reconnect { overlap: 2 });
            while !self.up.is_empty() || !self.down.is_empty() {
                self.apply(&Step::ToServer);
                self.apply(&Step::ToClient);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any interleaving of typing, drops, re-sends and replays: the
        /// transcript is the log, each message once and in order, and each
        /// typed message is in the log exactly once, in typing order.
        #[test]
        fn the_transcript_is_the_log_exactly_once(steps in proptest::collection::vec(step(), 0..200)) {
            let mut w = World::new();
            w.transcript.welcome([7; 16]);
            for s in &steps {
                w.apply(s);
            }
            w.settle();
            let log: Vec<u64> = (1..=w.log.len() as u64).collect();
            prop_assert_eq!(&w.shown, &log);
            let mine: Vec<u64> = w.log.iter().flatten().copied().collect();
            let typed: Vec<u64> = (1..=w.next_seq).collect();
            prop_assert_eq!(&mine, &typed);
            prop_assert!(w.outbox.is_empty());
            let mut acked = w.acked.clone();
            acked.sort_unstable();
            prop_assert_eq!(acked, typed);
        }
    }
}
