//! The contacts layer: between an interface and the network task, it turns
//! `/verify` into a checked contact, learns the key sets of members whose
//! names are contacts, and tells the interface which names carry the
//! verified mark and which contacts changed keys.
//!
//! It sits on the command and event channels rather than inside the network
//! task because nothing it does is about the connection: it only reads what
//! the server says (`Whois` answers) and adds events ([`Event::Mark`],
//! [`Event::Verified`], [`Event::ContactChanged`]). [`Watch`] is the whole
//! logic, as a plain type tested without channels; [`spawn`] wires it.
//!
//! What the mark proves: the server says the name's keys are exactly the
//! set the user checked with that person. The server also decides which
//! name a line carries, so the lines are checked too: a public line or a
//! private message under a contact's name is shown as theirs only if it is
//! signed by one of the keys the user verified, and otherwise as
//! [`Event::Forged`].
//!
//! No request storm: it asks only about names that are contacts, only when
//! they appear (the roster at each join, a join, a rename), never twice at
//! once for one name, and never more than [`MAX_CHECKS`] at a time.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

use qchat_proto::names;
use qchat_tls::Fingerprint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::contacts::{self, Contact, Contacts, ContactsError};
use crate::session::{self, Command, Ended, Event, Link};

/// The most key-set checks waiting for an answer at once; in a room full
/// of contacts the others wait their turn, asked as answers come back.
pub const MAX_CHECKS: usize = 32;

/// Which names carry the verified mark now, as the interface keeps it from
/// the [`Event::Mark`]s it is given.
#[derive(Debug, Default, Clone)]
pub struct Marks(HashSet<String>);

impl Marks {
    /// Takes in an event: only [`Event::Mark`] changes anything.
    pub fn apply(&mut self, ev: &Event) {
        if let Event::Mark { name, verified } = ev {
            if *verified {
                self.0.insert(names::fold(name));
            } else {
                self.0.remove(&names::fold(name));
            }
        }
    }

    /// Whether `name` carries the mark.
    pub fn verified(&self, name: &str) -> bool {
        !self.0.is_empty() && self.0.contains(&names::fold(name))
    }
}

/// The most questions remembered: ones lost with a connection are never
/// answered, and the oldest go first.
const MAX_ASKED: usize = 256;

/// The channels between this layer and the network task: short, since
/// this layer passes things on at once and the interface's own channels
/// hold the backlog.
const QUEUE: usize = 16;

/// A `Whois` on its way. The server answers each with one `Whois` or one
/// `Failed`, in order; but the answers and the interface's commands reach
/// this layer on two channels, so a command may pass the event of a
/// reconnect (the new roster) that came before it. A `Whois` answer is
/// therefore paired by name (the oldest question about that name), and
/// only a `Failed`, which names nothing, by order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// The user's `/whois`: the answer is theirs to see.
    User(String),
    /// Ours: does this contact still have the keys the user verified?
    Check(String),
    /// The user's `/verify`.
    Verify {
        name: String,
        fingerprint: Fingerprint,
    },
}

impl Asked {
    fn name(&self) -> &str {
        match self {
            Asked::User(name) | Asked::Check(name) | Asked::Verify { name, .. } => name,
        }
    }
}

/// What [`Watch`] wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this to the network task.
    Send(Command),
    /// Give this to the interface.
    Show(Event),
    /// Store this contact (as verified now), then call [`Watch::saved`].
    Save {
        /// The contact.
        contact: Contact,
        /// Whether its name is in the room now (and so gets the mark).
        here: bool,
    },
}

/// The contacts layer's state.
#[derive(Debug, Default)]
pub struct Watch {
    contacts: Vec<Contact>,
    asked: VecDeque<Asked>,
    /// Contacts in the room still to be checked once fewer than
    /// [`MAX_CHECKS`] are asked.
    waiting: VecDeque<String>,
    /// Folded names shown with the mark now.
    marked: HashSet<String>,
    /// Changes already reported: folded name and the key set seen (empty
    /// for a guest), so each one is said once, however often the member
    /// comes and goes.
    flagged: HashSet<(String, Vec<Fingerprint>)>,
}

impl Watch {
    /// A watch over `contacts`.
    pub fn new(contacts: Vec<Contact>) -> Self {
        Watch {
            contacts,
            ..Watch::default()
        }
    }

    /// Replaces the contacts (re-read from the file), e.g. before a new
    /// roster, so a contact removed or added elsewhere counts.
    pub fn set_contacts(&mut self, contacts: Vec<Contact>) {
        self.contacts = contacts;
    }

    fn contact(&self, name: &str) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.is(name))
    }

    /// A command from the interface.
    pub fn command(&mut self, cmd: Command) -> Vec<Step> {
        match &cmd {
            Command::Whois(name) => self.ask(Asked::User(name.clone())),
            Command::Verify { name, fingerprint } => self.ask(Asked::Verify {
                name: name.clone(),
                fingerprint: *fingerprint,
            }),
            _ => {}
        }
        vec![Step::Send(cmd)]
    }

    /// An event from the network task.
    pub fn event(&mut self, ev: Event) -> Vec<Step> {
        if let Event::InRoom { room, event } = ev {
            // A room's line is judged as a lobby line would be; it keeps
            // its room.
            let judged = match *event {
                line @ Event::Signed { .. } => self.judge_line(line),
                line @ (Event::Chat { .. } | Event::Action { .. } | Event::History { .. })
                    if line_from(&line).is_some_and(|f| self.contact(f).is_some()) =>
                {
                    forged(line, true)
                }
                other => other,
            };
            return vec![Step::Show(Event::InRoom {
                room,
                event: Box::new(judged),
            })];
        }
        let mut steps = Vec::new();
        match &ev {
            Event::Roster { members, .. } => {
                // A new connection: the keys may have changed while we were
                // away, so every contact here is checked again (the old
                // checks' answers, if any come, are taken silently). The
                // user's questions stay: they may have been sent on this
                // connection already.
                self.asked.retain(|a| !matches!(a, Asked::Check(_)));
                self.waiting.clear();
                for name in std::mem::take(&mut self.marked) {
                    steps.push(Step::Show(Event::Mark {
                        name,
                        verified: false,
                    }));
                }
                steps.push(Step::Show(ev.clone()));
                for m in members {
                    self.check(m, &mut steps);
                }
                return steps;
            }
            // Whoever comes in under a name earns its mark afresh: only an
            // answer about the member now in the room grants it.
            Event::Joined { name } => {
                self.unmark(name, &mut steps);
                steps.push(Step::Show(ev.clone()));
                self.check(name, &mut steps);
                return steps;
            }
            Event::Renamed { old, new } => {
                self.waiting.retain(|w| !names::same(w, old));
                self.unmark(old, &mut steps);
                self.unmark(new, &mut steps);
                steps.push(Step::Show(ev.clone()));
                self.check(new, &mut steps);
                return steps;
            }
            Event::Left { name, .. } => {
                self.waiting.retain(|w| !names::same(w, name));
                self.unmark(name, &mut steps);
            }
            Event::Whois {
                name,
                keys,
                here,
                guest,
                ..
            } => {
                let asked = self
                    .asked
                    .iter()
                    .position(|a| names::same(a.name(), name))
                    .and_then(|i| self.asked.remove(i));
                self.next_checks(&mut steps);
                match asked {
                    Some(Asked::Verify { fingerprint, .. }) => {
                        verify(name, keys, *here, *guest, fingerprint, &mut steps);
                    }
                    Some(Asked::User(_)) => {
                        steps.push(Step::Show(ev.clone()));
                        self.judge(name, keys, *here, *guest, &mut steps);
                    }
                    Some(Asked::Check(_)) | None => {
                        self.judge(name, keys, *here, *guest, &mut steps);
                    }
                }
                return steps;
            }
            Event::Failed { what, reason } if what == "whois" => {
                let asked = self.asked.pop_front();
                self.next_checks(&mut steps);
                match asked {
                    Some(Asked::Check(name)) => {
                        tracing::debug!(name, reason, "cannot check a contact's keys");
                    }
                    Some(Asked::Verify { name, .. }) => steps.push(Step::Show(Event::Failed {
                        what: "verify".into(),
                        reason: format!("cannot look up {name}: {reason}; nothing was stored"),
                    })),
                    Some(Asked::User(_)) | None => steps.push(Step::Show(ev.clone())),
                }
                return steps;
            }
            Event::Signed { .. } => {
                steps.push(Step::Show(self.judge_line(ev)));
                return steps;
            }
            Event::Chat { from, .. }
            | Event::Action { from, .. }
            | Event::History { from, .. }
            | Event::Private { from, .. }
                if self.contact(from).is_some() =>
            {
                steps.push(Step::Show(forged(ev, true)));
                return steps;
            }
            _ => {}
        }
        steps.push(Step::Show(ev));
        steps
    }

    /// A signed line: the line itself if it is provably its sender's, or
    /// the same line as [`Event::Forged`]. A contact's line must be signed
    /// by one of the keys the user verified for it (not merely by a key
    /// the server says the name has: that is the server's word); anyone
    /// else's only needs a signature that verifies under the key it names.
    fn judge_line(&self, ev: Event) -> Event {
        let Event::Signed { line, key, valid } = ev else {
            return ev;
        };
        let from = match &*line {
            Event::Chat { from, .. }
            | Event::Action { from, .. }
            | Event::History { from, .. }
            | Event::Private { from, .. } => from.as_str(),
            _ => return *line,
        };
        match self.contact(from) {
            Some(c) if valid && c.keys.contains(&key) => *line,
            Some(_) => forged(*line, true),
            None if valid => *line,
            None => forged(*line, false),
        }
    }

    /// The contact from [`Step::Save`] was stored (`Ok` with the contact it
    /// replaced, if any) or could not be.
    pub fn saved(
        &mut self,
        contact: Contact,
        here: bool,
        result: Result<Option<Contact>, String>,
    ) -> Vec<Step> {
        let previous = match result {
            Ok(previous) => previous,
            Err(reason) => {
                return vec![Step::Show(Event::Failed {
                    what: "verify".into(),
                    reason: format!("{} was not stored: {reason}", contact.name),
                })]
            }
        };
        let folded = names::fold(&contact.name);
        self.flagged.retain(|(name, _)| name != &folded);
        self.contacts.retain(|c| !c.is(&contact.name));
        self.contacts.push(contact.clone());
        let mut steps = vec![Step::Show(Event::Verified {
            name: contact.name.clone(),
            keys: contact.keys.clone(),
            previous: previous.map(|p| p.keys),
        })];
        if here && self.marked.insert(folded) {
            steps.push(Step::Show(Event::Mark {
                name: contact.name,
                verified: true,
            }));
        }
        steps
    }

    fn ask(&mut self, asked: Asked) {
        if self.asked.len() >= MAX_ASKED {
            self.asked.pop_front();
        }
        self.asked.push_back(asked);
    }

    /// Asks for `name`'s keys if it is a contact and not being asked about.
    fn check(&mut self, name: &str, steps: &mut Vec<Step>) {
        if self.contact(name).is_none() {
            return;
        }
        let checks = self
            .asked
            .iter()
            .filter(|a| matches!(a, Asked::Check(_)))
            .count();
        let pending = self
            .asked
            .iter()
            .any(|a| matches!(a, Asked::Check(n) if names::same(n, name)));
        if pending || self.waiting.iter().any(|w| names::same(w, name)) {
            return;
        }
        if checks >= MAX_CHECKS {
            self.waiting.push_back(name.to_owned());
            return;
        }
        self.ask(Asked::Check(name.to_owned()));
        steps.push(Step::Send(Command::Whois(name.to_owned())));
    }

    /// Asks about the contacts waiting their turn, as far as there is room.
    fn next_checks(&mut self, steps: &mut Vec<Step>) {
        while let Some(name) = self.waiting.pop_front() {
            let before = self.asked.len();
            self.check(&name, steps);
            if self.asked.len() == before {
                // Still no room: it went back to the end of the line.
                break;
            }
        }
    }

    fn unmark(&mut self, name: &str, steps: &mut Vec<Step>) {
        if self.marked.remove(&names::fold(name)) {
            steps.push(Step::Show(Event::Mark {
                name: name.to_owned(),
                verified: false,
            }));
        }
    }

    /// A `Whois` answer about a name: marks a contact whose keys are the
    /// verified set, flags one whose keys are not.
    fn judge(
        &mut self,
        name: &str,
        keys: &[Fingerprint],
        here: bool,
        guest: bool,
        steps: &mut Vec<Step>,
    ) {
        let Some(contact) = self.contact(name).cloned() else {
            return;
        };
        if !guest && contact.holds(keys) {
            if here && self.marked.insert(names::fold(name)) {
                steps.push(Step::Show(Event::Mark {
                    name: name.to_owned(),
                    verified: true,
                }));
            }
            return;
        }
        self.unmark(name, steps);
        let now = if guest {
            Vec::new()
        } else {
            contacts::key_set(keys)
        };
        if self.flagged.insert((names::fold(name), now.clone())) {
            steps.push(Step::Show(Event::ContactChanged {
                name: name.to_owned(),
                verified: contact.keys,
                now,
                guest,
            }));
        }
    }
}

/// `line` as a line that is not provably its sender's.
fn forged(line: Event, contact: bool) -> Event {
    let (from, text, time_ms, action, private) = match line {
        Event::Chat {
            from,
            text,
            time_ms,
        } => (from, text, time_ms, false, false),
        Event::Action {
            from,
            text,
            time_ms,
        } => (from, text, time_ms, true, false),
        Event::History {
            from,
            text,
            time_ms,
            action,
        } => (from, text, time_ms, action, false),
        Event::Private {
            from,
            text,
            time_ms,
            ..
        } => (from, text, time_ms, false, true),
        other => return other,
    };
    Event::Forged {
        from,
        text,
        time_ms,
        action,
        private,
        contact,
    }
}

/// The answer to a `/verify`: a contact to store, or why not.
fn verify(
    name: &str,
    keys: &[Fingerprint],
    here: bool,
    guest: bool,
    given: Fingerprint,
    steps: &mut Vec<Step>,
) {
    let refuse = |reason: String| {
        Step::Show(Event::Failed {
            what: "verify".into(),
            reason,
        })
    };
    if guest || keys.is_empty() {
        steps.push(refuse(format!(
            "{name} is a guest (no key), so there is nothing to verify; nothing was stored"
        )));
    } else if !keys.contains(&given) {
        steps.push(refuse(format!(
            "the fingerprint you gave ({given}) is not {name}'s key here ({}); nothing was stored. \
             Check it with them again: if it is theirs, someone else may be using the name",
            contacts::list(keys)
        )));
    } else {
        steps.push(Step::Save {
            contact: Contact::new(name, keys),
            here,
        });
    }
}

/// Loads the contacts at `path`, logging (not failing on) a file that
/// cannot be read: a damaged contacts file must not keep anyone out of a
/// chat, it only means no marks, and `/verify` then says what is wrong.
fn load(path: &std::path::Path) -> Vec<Contact> {
    match Contacts::load(path) {
        Ok(file) => {
            for w in file.warnings() {
                tracing::warn!("{w}");
            }
            file.records().to_vec()
        }
        Err(e) => {
            tracing::warn!("{e}");
            Vec::new()
        }
    }
}

/// Stores `contact` in the file at `path`, replacing any contact of the
/// same name; returns the one replaced.
fn store(path: PathBuf, contact: Contact) -> Result<Option<Contact>, ContactsError> {
    Contacts::update(&path, |e| Ok(e.put(contact))).map(|(_, previous)| previous)
}

/// Starts the network task ([`session::run`]) behind the contacts layer,
/// which keeps its contacts in `contacts` (`None`: no contacts, nothing is
/// checked, `/verify` only asks). The channels and the result are the
/// network task's.
pub fn spawn<W, R>(
    link: impl Into<Link<W, R>> + Send + 'static,
    contacts: Option<PathBuf>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> JoinHandle<Ended>
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let Some(path) = contacts else {
        return tokio::spawn(session::run(link, commands, events));
    };
    let (net_tx, net_cmds) = mpsc::channel(QUEUE);
    let (net_events, net_rx) = mpsc::channel(QUEUE);
    let net = tokio::spawn(session::run(link, net_cmds, net_events));
    tokio::spawn(relay(path, commands, events, net_tx, net_rx));
    net
}

/// Commands waiting for room in the network task's channel, at most: the
/// interface's commands are read only while there are fewer.
const OUTBOX: usize = 64;

/// The contacts layer's task: passes commands on and events back through
/// [`Watch`] until the network task ends.
///
/// It never waits to hand the network task a command: that task may itself
/// be waiting for this one to take an event (a replay after a join is many
/// events, each check one more command), and neither would move again.
/// Commands wait in `outbox` instead, which the network task empties as it
/// reads; the interface's commands wait in their own channel while it is
/// full.
async fn relay(
    path: PathBuf,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    net_tx: mpsc::Sender<Command>,
    mut net_rx: mpsc::Receiver<Event>,
) {
    let mut watch = Watch::new(load(&path));
    let mut outbox: VecDeque<Command> = VecDeque::new();
    // Dropped once the interface has closed its side and everything it
    // sent is passed on, which tells the network task to leave; events are
    // still passed back until it has.
    let mut net_tx = Some(net_tx);
    let mut interface_done = false;
    loop {
        if interface_done && outbox.is_empty() {
            net_tx = None;
        }
        let room = async {
            match &net_tx {
                Some(tx) => tx.clone().reserve_owned().await.ok(),
                None => None,
            }
        };
        let steps = tokio::select! {
            permit = room, if !outbox.is_empty() => {
                match (permit, outbox.pop_front()) {
                    (Some(permit), Some(cmd)) => {
                        permit.send(cmd);
                    }
                    // The network task is gone: its end comes as events.
                    _ => outbox.clear(),
                }
                continue;
            }
            cmd = commands.recv(), if !interface_done && outbox.len() < OUTBOX => match cmd {
                Some(cmd) => watch.command(cmd),
                None => {
                    interface_done = true;
                    continue;
                }
            },
            ev = net_rx.recv() => match ev {
                Some(ev) => {
                    if matches!(ev, Event::Roster { .. }) {
                        let path = path.clone();
                        if let Ok(contacts) = tokio::task::spawn_blocking(move || load(&path)).await {
                            watch.set_contacts(contacts);
                        }
                    }
                    watch.event(ev)
                }
                None => return,
            },
        };
        let mut queue: VecDeque<Step> = steps.into();
        while let Some(step) = queue.pop_front() {
            match step {
                Step::Send(cmd) => outbox.push_back(cmd),
                Step::Show(ev) => {
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                Step::Save { contact, here } => {
                    let (path, c) = (path.clone(), contact.clone());
                    let result = match tokio::task::spawn_blocking(move || store(path, c)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(e) => Err(format!("internal error: {e}")),
                    };
                    queue.extend(watch.saved(contact, here, result));
                }
            }
        }
    }
}

/// The sender of a public line.
fn line_from(ev: &Event) -> Option<&str> {
    match ev {
        Event::Chat { from, .. } | Event::Action { from, .. } | Event::History { from, .. } => {
            Some(from)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn whois(name: &str, keys: &[Fingerprint], guest: bool) -> Event {
        Event::Whois {
            name: name.into(),
            keys: keys.to_vec(),
            here: true,
            guest,
            since_ms: 0,
        }
    }

    fn roster(members: &[&str]) -> Event {
        Event::Roster {
            members: members.iter().map(|m| m.to_string()).collect(),
            max_message: None,
        }
    }

    fn sent(steps: &[Step]) -> Vec<Command> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Send(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    fn shown(steps: &[Step]) -> Vec<Event> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Show(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn mark(name: &str, verified: bool) -> Event {
        Event::Mark {
            name: name.into(),
            verified,
        }
    }

    /// A person key in a temporary directory, as a signer.
    fn person() -> (tempfile::TempDir, qchat_tls::signing::Signer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, _) = qchat_tls::identity::load_or_create_as(dir.path(), qchat_tls::Role::Person)
            .expect("a key");
        (dir, qchat_tls::signing::Signer::new(&id).expect("Ed25519"))
    }

    /// What a signed line looks like when it reaches the contacts layer:
    /// signed by `by` over `signed_text`, delivered under `from` carrying
    /// `text` (a server may change both), checked by the network task.
    fn delivered(
        by: &qchat_tls::signing::Signer,
        from: &str,
        text: &str,
        signed_text: &str,
        history: bool,
    ) -> Event {
        use qchat_proto::signed::{Signed, SignedKind};
        let proof = qchat_proto::Proof {
            instance: [3; 16],
            seq: 9,
            sent_ms: 1234,
            key: by.public_key(),
            sig: by.sign(
                &Signed {
                    kind: SignedKind::Say,
                    to: "",
                    text: signed_text,
                    instance: [3; 16],
                    seq: 9,
                    sent_ms: 1234,
                }
                .bytes(),
            ),
        };
        let line = if history {
            Event::History {
                from: from.into(),
                text: text.into(),
                time_ms: 1,
                action: false,
            }
        } else {
            Event::Chat {
                from: from.into(),
                text: text.into(),
                time_ms: 1,
            }
        };
        crate::session::checked(line, false, &proof)
    }

    fn is_forged(ev: &Event, as_contact: bool) -> bool {
        matches!(ev, Event::Forged { contact, .. } if *contact == as_contact)
    }

    /// The forgery cases, through the real signature check: a line whose
    /// text was altered after signing, or that was put under another
    /// contact's name, or that a verified contact did not sign at all, is
    /// shown as forged; the unchanged line is shown as the contact's, live
    /// and replayed.
    #[test]
    fn altered_or_reattributed_or_unsigned_lines_of_contacts_are_forged() {
        let (_a, alice) = person();
        let (_c, carol) = person();
        let alice_fp = qchat_tls::signing::fingerprint(&alice.public_key());
        let carol_fp = qchat_tls::signing::fingerprint(&carol.public_key());
        let mut w = Watch::new(vec![
            Contact::new("alice", &[alice_fp]),
            Contact::new("carol", &[carol_fp]),
        ]);
        for history in [false, true] {
            let genuine = delivered(&alice, "alice", "hi", "hi", history);
            let Event::Signed { line, .. } = &genuine else {
                panic!("a signed line: {genuine:?}");
            };
            let want = (**line).clone();
            assert_eq!(shown(&w.event(genuine)), [want]);
            // Another spelling of the same name is the same contact.
            let shown_as = shown(&w.event(delivered(&alice, "ALICE", "hi", "hi", history)));
            assert!(!is_forged(&shown_as[0], true), "{shown_as:?}");

            let altered = shown(&w.event(delivered(&alice, "alice", "pay bob", "hi", history)));
            assert!(is_forged(&altered[0], true), "{altered:?}");
            // Alice's genuine signature under carol's name: not carol's key.
            let moved = shown(&w.event(delivered(&alice, "carol", "hi", "hi", history)));
            assert!(is_forged(&moved[0], true), "{moved:?}");
            // Carol's genuine line under alice's name.
            let moved = shown(&w.event(delivered(&carol, "alice", "hi", "hi", history)));
            assert!(is_forged(&moved[0], true), "{moved:?}");
        }
        let unsigned = Event::Chat {
            from: "alice".into(),
            text: "trust me".into(),
            time_ms: 1,
        };
        let steps = shown(&w.event(unsigned));
        assert_eq!(
            steps,
            [Event::Forged {
                from: "alice".into(),
                text: "trust me".into(),
                time_ms: 1,
                action: false,
                private: false,
                contact: true,
            }]
        );
    }

    /// A private message signed by `by` over `signed_text` to `signed_to`,
    /// delivered under `from` carrying `text`.
    fn private_delivered(
        by: &qchat_tls::signing::Signer,
        from: &str,
        text: &str,
        signed_to: &str,
        signed_text: &str,
    ) -> Event {
        use qchat_proto::signed::{Signed, SignedKind};
        let bytes = Signed {
            kind: SignedKind::Private,
            to: signed_to,
            text: signed_text,
            instance: [3; 16],
            seq: 9,
            sent_ms: 1234,
        }
        .bytes();
        let proof = qchat_proto::Proof {
            instance: [3; 16],
            seq: 9,
            sent_ms: 1234,
            key: by.public_key(),
            sig: by.sign(&bytes),
        };
        let line = Event::Private {
            from: from.into(),
            to: "bob".into(),
            text: text.into(),
            time_ms: 1,
            history: false,
        };
        crate::session::checked(line, false, &proof)
    }

    /// Private messages are judged like public lines: a contact's is
    /// theirs only when signed by a verified key over exactly this text
    /// and recipient, otherwise a forged private message; a bad signature
    /// from anyone else is an unverified one.
    #[test]
    fn private_messages_of_contacts_are_checked_like_lines() {
        let (_a, alice) = person();
        let (_d, dave) = person();
        let alice_fp = qchat_tls::signing::fingerprint(&alice.public_key());
        let mut w = Watch::new(vec![Contact::new("alice", &[alice_fp])]);
        let genuine = private_delivered(&alice, "alice", "hi", "bob", "hi");
        let Event::Signed { line, .. } = &genuine else {
            panic!("a signed private message: {genuine:?}");
        };
        let want = (**line).clone();
        assert_eq!(shown(&w.event(genuine)), [want]);
        let private_forged = |ev: &Event, as_contact: bool| matches!(ev, Event::Forged { private: true, contact, .. } if *contact == as_contact);
        let altered = shown(&w.event(private_delivered(&alice, "alice", "pay", "bob", "hi")));
        assert!(private_forged(&altered[0], true), "{altered:?}");
        // Signed for carol: the recipient is covered too.
        let redirected = shown(&w.event(private_delivered(&alice, "alice", "hi", "carol", "hi")));
        assert!(private_forged(&redirected[0], true), "{redirected:?}");
        let unsigned = shown(&w.event(Event::Private {
            from: "alice".into(),
            to: "bob".into(),
            text: "trust me".into(),
            time_ms: 1,
            history: false,
        }));
        assert!(private_forged(&unsigned[0], true), "{unsigned:?}");
        let bad = shown(&w.event(private_delivered(&dave, "dave", "pay", "bob", "hi")));
        assert!(private_forged(&bad[0], false), "{bad:?}");
        let good = shown(&w.event(private_delivered(&dave, "dave", "hi", "bob", "hi")));
        assert!(
            matches!(&good[0], Event::Private { from, .. } if from == "dave"),
            "{good:?}"
        );
    }

    /// Someone not verified: a signature that verifies is enough (there is
    /// no key set to hold it to), one that does not is shown unverified,
    /// and an unsigned line passes as it is (older clients, guests).
    #[test]
    fn lines_of_others_are_unverified_only_when_their_signature_fails() {
        let (_d, dave) = person();
        let mut w = Watch::new(vec![]);
        let ok = shown(&w.event(delivered(&dave, "dave", "hi", "hi", false)));
        assert!(
            matches!(&ok[0], Event::Chat { from, .. } if from == "dave"),
            "{ok:?}"
        );
        let bad = shown(&w.event(delivered(&dave, "dave", "hj", "hi", false)));
        assert!(is_forged(&bad[0], false), "{bad:?}");
        let plain = Event::Chat {
            from: "erin".into(),
            text: "hi".into(),
            time_ms: 1,
        };
        assert_eq!(shown(&w.event(plain.clone())), [plain]);
    }

    #[test]
    fn only_contacts_are_checked_and_each_once_at_a_time() {
        let mut w = Watch::new(vec![Contact::new("alice", &[fp(1)])]);
        let steps = w.event(roster(&["bob", "alice", "carol"]));
        assert_eq!(sent(&steps), [Command::Whois("alice".into())]);
        assert_eq!(shown(&steps), [roster(&["bob", "alice", "carol"])]);
        // Alice flaps before the answer: no second question.
        assert!(sent(&w.event(Event::Joined {
            name: "ALICE".into()
        }))
        .is_empty());
        assert!(sent(&w.event(Event::Joined {
            name: "dave".into()
        }))
        .is_empty());
    }

    #[test]
    fn checks_are_bounded() {
        let contacts: Vec<Contact> = (0..100)
            .map(|i| Contact::new(&format!("p{i}"), &[fp(1)]))
            .collect();
        let mut w = Watch::new(contacts);
        let names: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(sent(&w.event(roster(&refs))).len(), MAX_CHECKS);
        // Each answer lets the next one waiting be asked, until all are.
        let mut asked = MAX_CHECKS;
        for i in 0..100 {
            let steps = w.event(whois(&format!("p{i}"), &[fp(1)], false));
            asked += sent(&steps).len();
            assert!(asked <= 100);
        }
        assert_eq!(asked, 100);
    }

    #[test]
    fn the_verified_set_marks_and_the_check_is_not_shown() {
        let mut w = Watch::new(vec![Contact::new("alice", &[fp(1)])]);
        w.event(roster(&["alice"]));
        let steps = w.event(whois("alice", &[fp(1)], false));
        assert_eq!(shown(&steps), [mark("alice", true)]);
        // Leaving takes the mark away; a rename to a non-contact too.
        assert_eq!(
            shown(&w.event(Event::Left {
                name: "alice".into(),
                reason: String::new()
            }))[0],
            mark("alice", false)
        );
    }

    #[test]
    fn a_changed_key_set_is_flagged_once_with_both_sets_and_no_mark() {
        let mut w = Watch::new(vec![Contact::new("alice", &[fp(1)])]);
        w.event(roster(&["alice"]));
        w.event(whois("alice", &[fp(1)], false));
        w.event(Event::Left {
            name: "alice".into(),
            reason: String::new(),
        });
        w.event(Event::Joined {
            name: "alice".into(),
        });
        let steps = w.event(whois("alice", &[fp(2), fp(1)], false));
        let changed = Event::ContactChanged {
            name: "alice".into(),
            verified: vec![fp(1)],
            now: vec![fp(1), fp(2)],
            guest: false,
        };
        assert_eq!(shown(&steps), [changed]);
        // Seen again: not said again, still no mark.
        w.event(Event::Joined {
            name: "alice".into(),
        });
        assert!(shown(&w.event(whois("alice", &[fp(1), fp(2)], false))).is_empty());
        // A guest under the name is another change.
        w.event(Event::Joined {
            name: "alice".into(),
        });
        let steps = w.event(whois("alice", &[], true));
        assert!(
            matches!(&shown(&steps)[..], [Event::ContactChanged { guest: true, now, .. }] if now.is_empty()),
            "{steps:?}"
        );
    }

    #[test]
    fn verify_stores_only_a_fingerprint_in_the_key_set() {
        let mut w = Watch::new(Vec::new());
        let cmd = Command::Verify {
            name: "alice".into(),
            fingerprint: fp(9),
        };
        assert_eq!(sent(&w.command(cmd.clone())), [cmd]);
        let steps = w.event(whois("alice", &[fp(1)], false));
        assert!(
            matches!(&shown(&steps)[..], [Event::Failed { what, reason }] if what == "verify" && reason.contains(&fp(9).canonical()) && reason.contains(&fp(1).canonical())),
            "{steps:?}"
        );

        w.command(Command::Verify {
            name: "alice".into(),
            fingerprint: fp(2),
        });
        let steps = w.event(whois("Alice", &[fp(1), fp(2)], false));
        let [Step::Save {
            contact,
            here: true,
        }] = &steps[..]
        else {
            panic!("{steps:?}");
        };
        assert_eq!(contact.name, "Alice");
        assert_eq!(contact.keys, [fp(1), fp(2)]);
        let steps = w.saved(contact.clone(), true, Ok(None));
        assert_eq!(
            shown(&steps),
            [
                Event::Verified {
                    name: "Alice".into(),
                    keys: vec![fp(1), fp(2)],
                    previous: None
                },
                mark("Alice", true)
            ]
        );
    }

    #[test]
    fn a_guest_cannot_be_verified_and_a_failed_lookup_says_verify() {
        let mut w = Watch::new(Vec::new());
        w.command(Command::Verify {
            name: "gus".into(),
            fingerprint: fp(1),
        });
        let steps = w.event(whois("gus", &[], true));
        assert!(
            matches!(&shown(&steps)[..], [Event::Failed { what, .. }] if what == "verify"),
            "{steps:?}"
        );
        w.command(Command::Verify {
            name: "nobody".into(),
            fingerprint: fp(1),
        });
        let steps = w.event(Event::Failed {
            what: "whois".into(),
            reason: "no such member".into(),
        });
        assert!(
            matches!(&shown(&steps)[..], [Event::Failed { what, reason }] if what == "verify" && reason.contains("no such member")),
            "{steps:?}"
        );
    }

    #[test]
    fn answers_pair_with_questions_in_order() {
        let mut w = Watch::new(vec![Contact::new("alice", &[fp(1)])]);
        w.event(roster(&["alice"]));
        w.command(Command::Whois("bob".into()));
        // The check's answer is silent; the user's is shown.
        assert_eq!(
            shown(&w.event(whois("alice", &[fp(1)], false))),
            [mark("alice", true)]
        );
        let bob = whois("bob", &[fp(5)], false);
        assert_eq!(shown(&w.event(bob.clone())), [bob]);
        // A failed check is not the user's business.
        w.event(Event::Joined {
            name: "alice".into(),
        });
        w.event(Event::Left {
            name: "alice".into(),
            reason: String::new(),
        });
        assert!(shown(&w.event(Event::Failed {
            what: "whois".into(),
            reason: "gone".into()
        }))
        .is_empty());
    }

    #[test]
    fn a_newcomer_under_a_verified_name_has_no_mark_until_checked() {
        let mut w = Watch::new(vec![Contact::new("alice", &[fp(1)])]);
        w.event(roster(&["alice"]));
        w.event(whois("alice", &[fp(1)], false));
        // No Left seen (say, it was lost with a connection we resumed):
        // a join under the name still takes the mark back first.
        let steps = w.event(Event::Joined {
            name: "alice".into(),
        });
        assert_eq!(shown(&steps)[0], mark("alice", false));
        assert_eq!(sent(&steps), [Command::Whois("alice".into())]);
        // Verified while away: stored, but marked only once here.
        let mut w = Watch::new(Vec::new());
        w.command(Command::Verify {
            name: "bob".into(),
            fingerprint: fp(2),
        });
        let mut away = whois("bob", &[fp(2)], false);
        if let Event::Whois { here, .. } = &mut away {
            *here = false;
        }
        let steps = w.event(away);
        let [Step::Save {
            contact,
            here: false,
        }] = &steps[..]
        else {
            panic!("{steps:?}");
        };
        let steps = w.saved(contact.clone(), false, Ok(None));
        assert!(
            matches!(&shown(&steps)[..], [Event::Verified { .. }]),
            "{steps:?}"
        );
    }

    #[test]
    fn a_verify_that_passes_the_roster_of_its_join_still_verifies() {
        let mut w = Watch::new(Vec::new());
        w.command(Command::Verify {
            name: "alice".into(),
            fingerprint: fp(1),
        });
        w.event(roster(&["bob"]));
        let steps = w.event(whois("alice", &[fp(1)], false));
        assert!(
            matches!(&steps[..], [Step::Save { contact, .. }] if contact.name == "alice"),
            "{steps:?}"
        );
        // And answers pair by name, whatever order they come in.
        w.command(Command::Whois("carol".into()));
        w.command(Command::Verify {
            name: "dave".into(),
            fingerprint: fp(4),
        });
        let steps = w.event(whois("DAVE", &[fp(4)], false));
        assert!(matches!(&steps[..], [Step::Save { .. }]), "{steps:?}");
        let carol = whois("carol", &[fp(3)], false);
        assert_eq!(shown(&w.event(carol.clone())), [carol]);
    }

    #[test]
    fn a_new_roster_checks_again() {
        let mut w = Watch::new(vec![Contact::new("alice", &[fp(1)])]);
        w.event(roster(&["alice"]));
        w.event(whois("alice", &[fp(1)], false));
        w.command(Command::Whois("lost".into()));
        let steps = w.event(roster(&["alice"]));
        assert_eq!(shown(&steps)[0], mark("alice", false));
        assert_eq!(sent(&steps), [Command::Whois("alice".into())]);
        assert_eq!(
            shown(&w.event(whois("alice", &[fp(1)], false))),
            [mark("alice", true)]
        );
    }

    /// A join into a room full of contacts, with a long replay: the
    /// network task emits everything before it reads a command again, and
    /// the relay must not wait on it meanwhile. Bounded by a timeout.
    #[tokio::test]
    async fn the_relay_never_waits_on_a_network_task_that_waits_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("contacts");
        let names: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        Contacts::update(&path, |e| {
            for n in &names {
                e.put(Contact::new(n, &[fp(1)]));
            }
            Ok(())
        })
        .expect("contacts");

        let (ui_tx, ui_cmds) = mpsc::channel(QUEUE);
        let (ui_events, mut ui_rx) = mpsc::channel(QUEUE);
        let (net_tx, mut net_cmds) = mpsc::channel(QUEUE);
        let (net_events, net_rx) = mpsc::channel(QUEUE);
        let relay = tokio::spawn(relay(path, ui_cmds, ui_events, net_tx, net_rx));
        let ui = tokio::spawn(async move {
            let mut seen = 0;
            while ui_rx.recv().await.is_some() {
                seen += 1;
            }
            seen
        });
        let network = async move {
            net_events
                .send(Event::Roster {
                    members: names.clone(),
                    max_message: None,
                })
                .await
                .expect("roster");
            for i in 0..200 {
                net_events
                    .send(Event::History {
                        from: "x".into(),
                        text: format!("{i}"),
                        time_ms: 0,
                        action: false,
                    })
                    .await
                    .expect("history");
            }
            let mut asked = 0;
            while asked < MAX_CHECKS {
                match net_cmds.recv().await {
                    Some(Command::Whois(_)) => asked += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            drop(net_events);
            asked
        };
        let asked = tokio::time::timeout(std::time::Duration::from_secs(10), network)
            .await
            .expect("no deadlock");
        assert_eq!(asked, MAX_CHECKS);
        drop(ui_tx);
        relay.await.expect("relay");
        assert_eq!(ui.await.expect("ui"), 201, "the roster and the replay");
    }
}
