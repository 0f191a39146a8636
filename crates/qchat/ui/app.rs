//! The UI's state and the only place it changes: [`App::update`] takes one
//! thing that happened (a key, a paste, a network event, a server log line)
//! and updates the conversations (each with its scrollback and unread
//! count), the member lists, the input line and the queue of commands for
//! the network task. Rendering only reads this.
//!
//! Which conversation an event belongs to is decided in one place,
//! [`App::route`]; what the user types goes to the conversation on the
//! screen ([`App::switch_to`] changes it).

use qchat_proto::clock::now_ms;
use std::borrow::Cow;
use std::collections::VecDeque;

use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent,
    MouseEventKind,
};
use qchat_client::{Command, ConnectionState, Event};
use qchat_proto::names::{self, is_lobby, LOBBY};
use ratatui::layout::Rect;
use time::UtcOffset;

use super::complete::{self, Completion};
use super::conv::{Conv, Conversation};
use super::editor::Editor;
use super::layout;
use super::scrollback::{line_rows, Delivery, Kind, Line};
use super::UiOptions;
use crate::input::{self, Input};
use crate::wording::{self, s, About, Words};

/// Conversations kept at most: each comes from the network (anyone can
/// write to us under any number of names), so their number is bounded like
/// every other thing the network can make us keep.
const MAX_CONVERSATIONS: usize = 100;

/// Rows one mouse-wheel notch scrolls.
const WHEEL_ROWS: usize = 3;

/// Something that happened, for [`App::update`].
#[derive(Debug)]
pub enum Msg {
    /// A key, paste, mouse or resize event from the terminal.
    Term(TermEvent),
    /// An event from the network task.
    Net(Event),
    /// News from the server itself, in words (the host only).
    Server(String),
    /// SIGTERM or SIGHUP: leave now, without asking.
    Stop,
}

/// What the event loop must do after an update: the state has changed,
/// these are its consequences outside it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Commands for the network task, in order.
    pub commands: Vec<Command>,
    /// Ring the bell.
    pub ring: bool,
    /// Clear and redraw everything (Ctrl-L).
    pub clear: bool,
}

/// Where an event's lines go (see [`App::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this conversation, begun if need be.
    To(Conv),
    /// To the conversation on the screen.
    Current,
}

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// As the network task last reported it: connected, silent, lost,
    /// waiting to reconnect, or just resumed.
    Online(ConnectionState),
    /// We asked to leave and wait for the server to confirm.
    Leaving,
    /// The server is ending the session.
    Closing(String),
}

/// The whole UI state.
pub struct App {
    /// The session's facts: server, address, trust, fingerprint.
    pub about: About,
    /// The server's name, sanitised.
    pub server_name: String,
    /// Where the server is, sanitised.
    pub server_addr: String,
    /// Whether we are the server's host (operator).
    pub operator: bool,
    /// Our name as the server knows it (raw, for comparisons).
    pub me: String,
    /// The conversations, in the order they began (the list's order, and
    /// Alt-1..9's); the lobby is first and always there.
    pub convs: Vec<Conversation>,
    /// The one on the screen, an index into `convs`.
    pub current: usize,
    /// Rooms the user asked to `/join` that the server has not yet said
    /// we are in: the answer for one of these puts it on the screen, while
    /// the rejoins after a reconnect (not asked for) leave the view alone.
    joining: Vec<String>,
    /// Lines added so far, in every conversation: a clock for which one
    /// was quiet for longest.
    touches: u64,
    /// The input line.
    pub editor: Editor,
    completion: Option<Completion>,
    /// Our numbered commands (messages, actions, private messages) whose
    /// number the network task has not reported yet, oldest first: the
    /// local id of the line each one shows, if it shows one.
    unnumbered: VecDeque<Option<u64>>,
    /// The local id of our next own line.
    next_local: u64,
    /// The longest message text the server accepts, in bytes: a block
    /// longer than this goes as several messages, split between lines.
    pub max_message: usize,
    /// The connection state.
    pub conn: Conn,
    /// Which connection changes were already said in the scrollback.
    transitions: wording::Transitions,
    /// Members whose connection dropped and whose name the server holds
    /// for their return (raw names).
    pub reconnecting: Vec<String>,
    /// Which names carry the verified mark now.
    pub marks: qchat_client::people::Marks,
    /// Why the server ended the session for good, to repeat on the normal
    /// screen once the view has closed (it closes at once).
    pub farewell: Option<String>,
    /// Whether the user asked to leave (the loop then waits for the end).
    pub quitting: bool,
    /// The reason given with `/quit`, if one was: the host's becomes the
    /// reason the server gives everyone for shutting down.
    pub quit_reason: String,
    /// The host pressed Ctrl-C once on an empty line; a second one shuts
    /// the server down.
    pub confirm_quit: bool,
    /// The terminal size, for scrolling by pages.
    pub size: (u16, u16),
    /// For timestamps.
    pub offset: UtcOffset,
    options: UiOptions,
    /// Consequences of the update in progress.
    effects: Effects,
}

/// The state right after joining.
const CONNECTED: ConnectionState = ConnectionState::Connected {
    resumed: false,
    replayed: 0,
    missed: 0,
};

/// Whether `text` mentions `name` as a word, compared as names are.
pub fn mentions(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    // The server's own comparison, so that "Bob" mentions bob exactly
    // when the server would call them the same name.
    let text = names::fold(text);
    let name = names::fold(name);
    text.match_indices(&name).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

impl App {
    /// The state right after joining.
    pub fn new(about: About, options: UiOptions, offset: UtcOffset, size: (u16, u16)) -> App {
        let mut app = App {
            server_name: s(&about.server_name),
            server_addr: s(&about.server_addr),
            operator: about.trust.is_none(),
            me: about.name.clone(),
            convs: vec![Conversation::new(Conv::lobby())],
            current: 0,
            joining: Vec::new(),
            touches: 0,
            about,
            editor: Editor::default(),
            completion: None,
            unnumbered: VecDeque::new(),
            next_local: 0,
            max_message: qchat_proto::limits::MAX_MESSAGE_BYTES,
            conn: Conn::Online(CONNECTED),
            transitions: wording::Transitions::default(),
            reconnecting: Vec::new(),
            marks: qchat_client::people::Marks::default(),
            farewell: None,
            quitting: false,
            quit_reason: String::new(),
            confirm_quit: false,
            size,
            offset,
            options,
            effects: Effects::default(),
        };
        app.convs[0].members = app.about.members.clone();
        let mut header = app.about.header();
        if let Some(first) = header.first_mut() {
            first.push_str("; /help lists the commands");
        }
        if app.operator {
            // The lines printed before the view opened are hidden by it;
            // the host's first need is telling people how to join.
            header.splice(1..1, app.about.fingerprint_lines());
        }
        for line in header {
            app.info(line);
        }
        app
    }

    /// Applies one thing that happened; returns what the event loop must
    /// do about it. The only place the state changes.
    pub fn update(&mut self, msg: Msg) -> Effects {
        match msg {
            Msg::Term(ev) => {
                // "resumed, N missed" has been seen once the user acts.
                if let (
                    TermEvent::Key(_) | TermEvent::Paste(_),
                    Conn::Online(ConnectionState::Connected { resumed: true, .. }),
                ) = (&ev, &self.conn)
                {
                    self.conn = Conn::Online(CONNECTED);
                }
                self.on_terminal(ev);
            }
            Msg::Net(ev) => self.on_network(ev),
            Msg::Server(line) => self.info(s(&line)),
            Msg::Stop => self.quit(String::new()),
        }
        std::mem::take(&mut self.effects)
    }

    fn info(&mut self, text: String) {
        self.push(Kind::Info(text), now_ms());
    }

    fn error(&mut self, text: String) {
        self.push(Kind::Error(text), now_ms());
    }

    /// Adds a line to the conversation on the screen.
    fn push(&mut self, kind: Kind, time_ms: u64) {
        let line = Line {
            time_ms,
            kind,
            mention: false,
            seq: None,
        };
        self.push_to(self.current, line, false);
    }

    /// Adds a line to conversation `at`, keeping its view where it is if
    /// the user scrolled up there. `message`: someone wrote it (it counts
    /// as unread while another conversation is on the screen).
    fn push_to(&mut self, at: usize, line: Line, message: bool) {
        if line.mention && self.options.bell {
            self.effects.ring = true;
        }
        let rows = if self.convs[at].scroll > 0 {
            let width = self.areas().scrollback.width;
            line_rows(&line, self.offset, width).len()
        } else {
            0
        };
        let on_screen = at == self.current;
        self.touches += 1;
        self.convs[at].touched = self.touches;
        self.convs[at].push(line, on_screen, message, rows);
    }

    /// The conversation on the screen.
    pub fn conv(&self) -> &Conversation {
        &self.convs[self.current]
    }

    fn conv_mut(&mut self) -> &mut Conversation {
        &mut self.convs[self.current]
    }

    /// The scrollback on the screen, oldest first.
    pub fn lines(&self) -> &VecDeque<Line> {
        &self.conv().lines
    }

    /// The members of the conversation on the screen (raw names): a
    /// room's list, or the two people of a private conversation.
    pub fn members(&self) -> Cow<'_, [String]> {
        match &self.conv().conv {
            Conv::Room(_) => Cow::Borrowed(&self.conv().members),
            Conv::Private(peer) => Cow::Owned(vec![self.me.clone(), peer.clone()]),
        }
    }

    /// Whether `name` is in any room we are in: a private conversation's
    /// other person is shown as absent otherwise.
    pub fn present(&self, name: &str) -> bool {
        self.convs
            .iter()
            .filter(|c| matches!(c.conv, Conv::Room(_)))
            .any(|c| c.members.iter().any(|m| same(m, name)))
    }

    /// The index of `conv`, which begins (empty) if it had not.
    /// At the limit of conversations, the private one (or room we left)
    /// quiet for longest makes way; never the one on the screen, never a
    /// room we are in.
    fn find_or_add(&mut self, conv: Conv) -> usize {
        if let Some(i) = self.convs.iter().position(|c| c.conv == conv) {
            return i;
        }
        if self.convs.len() >= MAX_CONVERSATIONS {
            let quietest = self
                .convs
                .iter()
                .enumerate()
                .filter(|&(i, c)| {
                    i != self.current && (c.parted || matches!(c.conv, Conv::Private(_)))
                })
                .min_by_key(|(_, c)| c.touched)
                .map(|(i, _)| i);
            if let Some(i) = quietest {
                self.convs.remove(i);
                if i < self.current {
                    self.current -= 1;
                }
            }
        }
        self.convs.push(Conversation::new(conv));
        self.convs.len() - 1
    }

    /// Puts `conv` on the screen, beginning it if need be. What `/join`,
    /// `/switch`, `/msg`, the keys and a click all come to. The one left
    /// gets its marker on the next line that arrives there; the one shown
    /// has nothing unread any more.
    pub fn switch_to(&mut self, conv: Conv) {
        let at = self.find_or_add(conv);
        self.switch_index(at);
    }

    fn switch_index(&mut self, at: usize) {
        if at == self.current || at >= self.convs.len() {
            return;
        }
        self.completion = None;
        let (offset, width) = (self.offset, self.areas().scrollback.width);
        let rows_below = |lines: &VecDeque<Line>, from: usize| {
            lines
                .iter()
                .skip(from)
                .map(|l| line_rows(l, offset, width).len())
                .sum()
        };
        self.conv_mut().left(rows_below);
        self.current = at;
        self.conv_mut().looked_at();
        // The new one may be narrower (another member list).
        let max = self.max_scroll();
        let c = self.conv_mut();
        c.scroll = c.scroll.min(max);
    }

    /// Ctrl-N / Ctrl-P: the next or previous conversation, round the list.
    fn switch_by(&mut self, step: isize) {
        let n = self.convs.len();
        let at = (self.current + n).saturating_add_signed(step) % n;
        self.switch_index(at);
    }

    /// Messages unread in every conversation together.
    pub fn unread(&self) -> usize {
        self.convs.iter().map(|c| c.unread).sum()
    }

    /// The terminal's title: the unread count first, so it shows in a
    /// task bar or a tab even when the window is elsewhere.
    pub fn title(&self) -> String {
        let base = format!("qchat — {}", self.server_addr);
        match self.unread() {
            0 => base,
            n => format!("({n}) {base}"),
        }
    }

    /// The conversation list's entries as drawn: Alt's number (1–9), the
    /// name, `(left)` for a room we are no longer in, the unread count and
    /// `!` if we were mentioned.
    pub fn conv_entries(&self) -> Vec<String> {
        self.convs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let number = if i < 9 {
                    (i + 1).to_string()
                } else {
                    " ".into()
                };
                let mut entry = format!("{number} {}", c.conv.label());
                if c.parted {
                    entry.push_str(" (left)");
                }
                if c.unread > 0 {
                    entry.push_str(&format!(" {}", c.unread));
                }
                if c.mentioned {
                    entry.push_str(" !");
                }
                entry
            })
            .collect()
    }

    /// The screen's areas at the current size.
    pub fn areas(&self) -> layout::Areas {
        let (w, h) = self.size;
        layout::areas(
            Rect::new(0, 0, w, h),
            &self.members(),
            &self.conv_entries(),
            &self.editor,
        )
    }

    /// Where an event's lines go: the one place that decides it. A room's
    /// lines, member news, topic and mode go to that room (events without
    /// a room are the lobby's), a private message to the conversation with
    /// the other person (in both directions), a refusal to the
    /// conversation where the refused line is; answers to commands (the
    /// room list, an invitation to a room we are not in), the connection's
    /// state and the server's notices to the conversation on the screen,
    /// where the user is looking.
    pub fn route(&self, ev: &Event) -> Route {
        match ev {
            Event::Chat { .. }
            | Event::Action { .. }
            | Event::History { .. }
            | Event::Forged { private: false, .. }
            | Event::Joined { .. }
            | Event::Left { .. }
            | Event::Renamed { .. }
            | Event::Members(_)
            | Event::Roster { .. }
            | Event::MemberReconnecting { .. }
            | Event::MemberReturned { .. } => Route::To(Conv::lobby()),
            Event::InRoom { room, .. }
            | Event::RoomJoined { room, .. }
            | Event::RoomReplayed { room, .. }
            | Event::Parted { room, .. }
            | Event::Topic { room, .. }
            | Event::RoomMode { room, .. } => Route::To(Conv::Room(room.clone())),
            Event::Private { from, to, .. } => {
                let peer = if same(from, &self.me) { to } else { from };
                Route::To(Conv::Private(peer.clone()))
            }
            Event::Forged {
                private: true,
                from,
                ..
            } => Route::To(Conv::Private(from.clone())),
            Event::Refused { seq, .. } => self
                .convs
                .iter()
                .find(|c| c.lines.iter().rev().any(|l| l.seq == Some(*seq)))
                .map_or(Route::Current, |c| Route::To(c.conv.clone())),
            Event::Sent { .. }
            | Event::Delivered { .. }
            | Event::Whois { .. }
            | Event::LinkCode { .. }
            | Event::Devices { .. }
            | Event::Bans(_)
            | Event::Notice { .. }
            | Event::Failed { .. }
            | Event::Kicked { .. }
            | Event::ShuttingDown { .. }
            | Event::Connection(_)
            | Event::Mark { .. }
            | Event::Verified { .. }
            | Event::ContactChanged { .. }
            | Event::Signed { .. }
            | Event::RoomList(_)
            | Event::Invited { .. } => Route::Current,
        }
    }

    fn on_network(&mut self, ev: Event) {
        // First what the event does to the state, then its words.
        self.marks.apply(&ev);
        let at = match self.route(&ev) {
            Route::To(conv) => self.find_or_add(conv),
            Route::Current => self.current,
        };
        // A room's line or member news is, in the room's own conversation,
        // what the same event is in the lobby's: its room is said by where
        // it is, not by a prefix on every line.
        let (ev, in_room) = match ev {
            Event::InRoom { event, .. } => (*event, true),
            other => (other, false),
        };
        let mut mention = false;
        let mut message = false;
        // Put the conversation on the screen once its line is in.
        let mut focus = false;
        match &ev {
            Event::Chat { text, .. } | Event::Action { text, .. } => {
                mention = mentions(text, &self.me);
                message = true;
            }
            Event::RoomJoined {
                room,
                topic,
                members,
                ..
            } => {
                let c = &mut self.convs[at];
                c.members.clone_from(members);
                c.topic.clone_from(topic);
                c.parted = false;
                let asked = Conv::Room(room.clone());
                let before = self.joining.len();
                self.joining.retain(|r| Conv::Room(r.clone()) != asked);
                focus = self.joining.len() < before;
            }
            Event::Parted { room, .. } => {
                let c = &mut self.convs[at];
                c.parted = true;
                c.members.clear();
                let gone = Conv::Room(room.clone());
                self.joining.retain(|r| Conv::Room(r.clone()) != gone);
            }
            Event::Topic { text, .. } => self.convs[at].topic.clone_from(text),
            // A refused join will not be answered with the room: the next
            // rejoin (after a reconnect) must not take the screen for it.
            Event::Failed { what, .. } if what == "join" => self.joining.clear(),
            Event::InRoom { .. }
            | Event::RoomReplayed { .. }
            | Event::RoomList(_)
            | Event::Invited { .. }
            | Event::RoomMode { .. } => {}
            Event::History { .. } | Event::Forged { .. } => message = true,
            // A private message to us is as good as a mention; our own,
            // echoed by the server, is not, nor is it news to us; nor is
            // one replayed from the conversation's history.
            Event::Private { from, history, .. } => {
                mention = !*history && !same(from, &self.me);
                message = mention;
            }
            Event::Sent { seq } => self.numbered(*seq),
            Event::Delivered { seq } => self.set_delivery(*seq, Delivery::Delivered),
            Event::Refused { seq, .. } => self.set_delivery(*seq, Delivery::Refused),
            Event::Joined { name } => {
                let members = &mut self.convs[at].members;
                if !members.iter().any(|m| same(m, name)) {
                    members.push(name.clone());
                }
            }
            Event::Left { name, .. } => {
                self.convs[at].members.retain(|m| !same(m, name));
                // Leaving a room is not leaving the server.
                if !in_room {
                    self.reconnecting.retain(|m| !same(m, name));
                }
            }
            Event::Renamed { old, new } => {
                if let Some(m) = self.reconnecting.iter_mut().find(|m| same(m, old)) {
                    *m = new.clone();
                }
                // A name is the server's, not a room's: the private
                // conversation follows its person.
                let renamed = Conv::Private(new.clone());
                if !self.convs.iter().any(|c| c.conv == renamed) {
                    if let Some(c) = self
                        .convs
                        .iter_mut()
                        .find(|c| c.conv == Conv::Private(old.clone()))
                    {
                        c.conv = renamed;
                    }
                }
                if same(old, &self.me) {
                    self.info(format!("you are now known as {}", s(new)));
                    self.me = new.clone();
                    self.about.name = new.clone();
                }
                // The name changes in every room the person is in.
                for (i, c) in self.convs.iter_mut().enumerate() {
                    if i == at || matches!(c.conv, Conv::Private(_)) {
                        continue;
                    }
                    if let Some(m) = c.members.iter_mut().find(|m| same(m, old)) {
                        *m = new.clone();
                    }
                }
                let members = &mut self.convs[at].members;
                match members.iter_mut().find(|m| same(m, old)) {
                    Some(m) => *m = new.clone(),
                    None => members.push(new.clone()),
                }
                if same(old, &self.me) || same(new, &self.me) {
                    // Said above, in the second person.
                    return;
                }
            }
            Event::Members(members) => {
                self.convs[at].members = members.iter().map(|m| m.name.clone()).collect();
            }
            Event::Whois { .. }
            | Event::LinkCode { .. }
            | Event::Devices { .. }
            | Event::Bans(_) => {}
            Event::Kicked { by, reason } => self.conn = Conn::Closing(wording::kicked(by, reason)),
            Event::ShuttingDown { reason, back } => {
                let words = wording::shutting_down(reason, *back);
                if !*back {
                    self.farewell = Some(words.clone());
                }
                self.conn = Conn::Closing(words);
            }
            Event::Roster {
                members,
                max_message,
            } => {
                // The server's own limit, once it has told it: a pasted
                // block is split to fit this server, not the default.
                if let Some(max) = max_message {
                    self.max_message = usize::try_from(*max).unwrap_or(usize::MAX);
                }
                self.convs[at].members = members.clone();
                self.reconnecting.clear();
            }
            Event::MemberReconnecting { name } => {
                if !self.reconnecting.iter().any(|m| same(m, name)) {
                    self.reconnecting.push(name.clone());
                }
                let members = &mut self.convs[at].members;
                if !members.iter().any(|m| same(m, name)) {
                    members.push(name.clone());
                }
            }
            Event::MemberReturned { name } => self.reconnecting.retain(|m| !same(m, name)),
            Event::Connection(state) => {
                // Leaving is leaving, whatever the connection does meanwhile.
                if !self.quitting {
                    self.conn = Conn::Online(state.clone());
                }
                // The header and the title name the node we are on, not
                // the one we started at (which may be dead).
                if let ConnectionState::Moved { node } = state {
                    self.server_addr = s(node);
                }
                if let Some(line) = self.transitions.line(state) {
                    match state {
                        ConnectionState::Lost { .. } => self.error(line),
                        _ => self.info(line),
                    }
                }
                return;
            }
            Event::Notice { .. }
            | Event::Failed { .. }
            | Event::Mark { .. }
            | Event::Verified { .. }
            | Event::ContactChanged { .. }
            | Event::Signed { .. } => {}
        }
        let time_ms = match &ev {
            Event::Chat { time_ms, .. }
            | Event::Action { time_ms, .. }
            | Event::Private { time_ms, .. }
            | Event::History { time_ms, .. }
            | Event::Forged { time_ms, .. } => *time_ms,
            _ => now_ms(),
        };
        let line = |kind| Line {
            time_ms,
            kind,
            mention,
            seq: None,
        };
        // A room's own news goes to its conversation, which names it.
        let words = wording::in_own_room(&ev).or_else(|| wording::marked(&ev, &self.marks));
        match words {
            Some(Words::Said(said)) => self.push_to(at, line(Kind::Said(said)), message),
            Some(Words::Info(text)) => self.push_to(at, line(Kind::Info(text)), false),
            Some(Words::Error(text) | Words::Removed(text) | Words::Warning(text)) => {
                self.push_to(at, line(Kind::Error(text)), message)
            }
            Some(Words::Members { heading, entries }) => {
                self.push_to(at, line(Kind::Info(heading)), false);
                for e in entries {
                    self.push_to(at, line(Kind::Info(format!("  {e}"))), false);
                }
            }
            None => {}
        }
        if focus {
            self.switch_index(at);
        }
    }

    /// The network task numbered our oldest unnumbered command `seq`.
    fn numbered(&mut self, seq: u64) {
        let Some(Some(local)) = self.unnumbered.pop_front() else {
            return;
        };
        // Recent, and most likely where the user still is: search from the
        // newest, the conversation on the screen first.
        let order = std::iter::once(self.current).chain(0..self.convs.len());
        for at in order {
            let line = self.convs[at]
                .lines
                .iter_mut()
                .rev()
                .find(|l| matches!(l.kind, Kind::Own { local: id, .. } if id == local));
            if let Some(line) = line {
                line.seq = Some(seq);
                return;
            }
        }
    }

    fn set_delivery(&mut self, seq: u64, delivery: Delivery) {
        // Pending lines are recent: search from the newest.
        for c in &mut self.convs {
            if let Some(line) = c.lines.iter_mut().rev().find(|l| l.seq == Some(seq)) {
                if let Kind::Own { delivery: d, .. } = &mut line.kind {
                    *d = delivery;
                }
                return;
            }
        }
    }

    fn on_terminal(&mut self, ev: TermEvent) {
        match ev {
            TermEvent::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key),
            TermEvent::Paste(text) => {
                self.completion = None;
                self.confirm_quit = false;
                self.editor.paste(&text);
            }
            TermEvent::Mouse(MouseEvent {
                kind, column, row, ..
            }) => match kind {
                MouseEventKind::ScrollUp => self.scroll_up(WHEEL_ROWS),
                MouseEventKind::ScrollDown => self.scroll_down(WHEEL_ROWS),
                MouseEventKind::Down(MouseButton::Left) => {
                    let (current, count) = (self.current, self.convs.len());
                    if let Some(at) = layout::conv_at(&self.areas(), current, count, column, row) {
                        self.switch_index(at);
                    }
                }
                _ => {}
            },
            TermEvent::Resize(w, h) => {
                self.size = (w, h);
                let max = self.max_scroll();
                let c = self.conv_mut();
                c.scroll = c.scroll.min(max);
            }
            _ => {}
        }
    }

    fn page(&self) -> usize {
        usize::from(self.areas().scrollback.height.saturating_sub(1)).max(1)
    }

    fn max_scroll(&self) -> usize {
        let area = self.areas().scrollback;
        let height = usize::from(area.height);
        let mut rows = 0;
        let scroll = self.conv().scroll;
        for line in self.lines().iter().rev() {
            rows += line_rows(line, self.offset, area.width).len();
            if rows > scroll + height * 2 + 1 {
                // Enough to know the limit is not here; no need to wrap the
                // whole scrollback.
                return usize::MAX;
            }
        }
        rows.saturating_sub(height)
    }

    fn scroll_up(&mut self, rows: usize) {
        let max = self.max_scroll();
        let c = self.conv_mut();
        c.scroll = (c.scroll + rows).min(max);
    }

    fn scroll_down(&mut self, rows: usize) {
        let c = self.conv_mut();
        c.scroll = c.scroll.saturating_sub(rows);
        if c.scroll == 0 {
            c.unseen = 0;
        }
    }

    fn on_key(&mut self, key: KeyEvent) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if key.code != KeyCode::Tab {
            self.completion = None;
        }
        let interrupt = key.code == KeyCode::Char('c') && ctrl;
        if !interrupt {
            // Any other key cancels the host's pending shutdown question.
            self.confirm_quit = false;
        }
        let e = &mut self.editor;
        match key.code {
            KeyCode::Char('c') if ctrl => self.interrupt(),
            KeyCode::Char('d') if ctrl => {
                if e.is_empty() {
                    self.quit(String::new());
                } else {
                    e.delete();
                }
            }
            KeyCode::Char('a') if ctrl => e.home(),
            KeyCode::Char('e') if ctrl => e.end(),
            KeyCode::Char('b') if ctrl => e.left(),
            KeyCode::Char('f') if ctrl => e.right(),
            KeyCode::Char('u') if ctrl => e.kill_to_start(),
            KeyCode::Char('k') if ctrl => e.kill_to_end(),
            KeyCode::Char('w') if ctrl => e.delete_word_before(),
            KeyCode::Char('h') if ctrl => e.backspace(),
            KeyCode::Char('p') if ctrl => self.switch_by(-1),
            KeyCode::Char('n') if ctrl => self.switch_by(1),
            KeyCode::Char('l') if ctrl => self.effects.clear = true,
            KeyCode::Char('b') if alt => e.word_left(),
            KeyCode::Char('f') if alt => e.word_right(),
            KeyCode::Char('d') if alt => e.delete_word_after(),
            KeyCode::Char(c @ '1'..='9') if alt => {
                self.switch_index(usize::from(c as u8 - b'1'));
            }
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => e.insert(c),
            KeyCode::Backspace if alt || ctrl => e.delete_word_before(),
            KeyCode::Backspace => e.backspace(),
            KeyCode::Delete => e.delete(),
            KeyCode::Left if ctrl || alt => e.word_left(),
            KeyCode::Right if ctrl || alt => e.word_right(),
            KeyCode::Left => e.left(),
            KeyCode::Right => e.right(),
            KeyCode::Home => e.home(),
            KeyCode::End => e.end(),
            KeyCode::Up => e.history_up(),
            KeyCode::Down => e.history_down(),
            KeyCode::PageUp => self.scroll_up(self.page()),
            KeyCode::PageDown => self.scroll_down(self.page()),
            KeyCode::Tab => self.complete(),
            // Alt-Enter starts a new line inside the input, to write a
            // block by hand the way a paste would.
            KeyCode::Enter if alt => e.insert('\n'),
            KeyCode::Enter => self.submit(),
            KeyCode::Esc => {}
            _ => {}
        }
    }

    fn complete(&mut self) {
        if let Some(c) = &mut self.completion {
            c.advance();
            let (start, text) = (c.start, c.current().to_string());
            self.editor.replace_before_cursor(start, &text);
            return;
        }
        let commands: Vec<&str> = input::COMMANDS
            .iter()
            .filter(|c| self.operator || !c.operator)
            .map(|c| c.name)
            .collect();
        // The conversation's own people first, then everyone else we
        // know of: `/msg` from a private conversation names someone else.
        let others = self.convs.iter().flat_map(|c| match &c.conv {
            Conv::Room(_) => c.members.iter(),
            Conv::Private(peer) => std::slice::from_ref(peer).iter(),
        });
        let mut names: Vec<String> = Vec::new();
        for m in self.members().iter().chain(others) {
            if !same(m, &self.me) && !names.iter().any(|n| same(n, m)) {
                names.push(m.clone());
            }
        }
        // And our rooms, for `/switch #d` and `/part #d`: a word that
        // starts with `#` matches no name but a room's (or one spelt so).
        for c in &self.convs {
            if let Conv::Room(room) = &c.conv {
                if !names.iter().any(|n| same(n, room)) {
                    names.push(room.clone());
                }
            }
        }
        if let Some(c) =
            complete::complete(self.editor.chars(), self.editor.cursor(), &commands, &names)
        {
            self.editor.replace_before_cursor(c.start, c.current());
            if c.candidates.len() > 1 {
                self.completion = Some(c);
            }
        }
    }

    fn submit(&mut self) {
        if self.quitting {
            return;
        }
        let text = self.editor.submit();
        // Sending brings the view back to the newest line, where the
        // message will appear; and the user has read this conversation.
        let c = self.conv_mut();
        c.scroll = 0;
        c.unseen = 0;
        c.clear_marker(|_, _| 0);
        if let Some(cmd) = block(&text) {
            for cmd in split_block(cmd, self.max_message) {
                self.send(cmd);
            }
            return;
        }
        // The room commands (/part, /topic, /invite, /room, /kick) apply to
        // the room on the screen; a private conversation is nobody's room.
        let room = match &self.conv().conv {
            Conv::Room(room) => room.clone(),
            Conv::Private(_) => LOBBY.to_string(),
        };
        for line in text.split('\n') {
            match input::parse_in(line, &room) {
                Input::Nothing => {}
                Input::Switch(room) => self.switch_room(&room),
                Input::Send(Command::Join(room)) => self.join(room),
                Input::Help => {
                    for l in help_lines(self.operator) {
                        self.info(l);
                    }
                }
                Input::Fingerprint => {
                    for l in self.about.fingerprint_lines() {
                        self.info(l);
                    }
                }
                // In a private conversation a bare /part would name the
                // lobby, whose refusal would not say what went wrong here.
                Input::Error(_)
                    if matches!(self.conv().conv, Conv::Private(_)) && bare_part(line) =>
                {
                    self.error(format!(
                        "a private conversation is not a room: /part #ROOM leaves a room, Alt-1 shows {LOBBY}"
                    ));
                }
                Input::Error(e) => self.error(e),
                Input::Send(Command::Quit(reason)) => {
                    self.quit(reason);
                    return;
                }
                Input::Send(Command::Who) => self.who(),
                Input::Send(cmd) => self.send(cmd),
            }
        }
    }

    /// `/switch #room`: only to a room we are in, since typing there must
    /// reach it.
    fn switch_room(&mut self, room: &str) {
        let conv = Conv::Room(room.to_string());
        match self.convs.iter().position(|c| c.conv == conv) {
            Some(at) if !self.convs[at].parted => self.switch_index(at),
            _ => self.error(format!("you are not in {0}; /join {0} first", s(room))),
        }
    }

    /// `/join #room`: a room we are in is only put on the screen; another
    /// is asked for, and goes on the screen when the server says we are in.
    fn join(&mut self, room: String) {
        let conv = Conv::Room(room.clone());
        if let Some(at) = self.convs.iter().position(|c| c.conv == conv && !c.parted) {
            self.switch_index(at);
            return;
        }
        if !self.joining.iter().any(|r| Conv::Room(r.clone()) == conv) {
            self.joining.push(room.clone());
        }
        self.effects.commands.push(Command::Join(room));
    }

    /// `/who`: the lobby's members from the server, with how long each has
    /// been there (the answer comes to the conversation on the screen);
    /// another room's from its list here, kept from the server's events; a
    /// private conversation's two people are known here.
    fn who(&mut self) {
        let peer = match &self.conv().conv {
            Conv::Room(room) if is_lobby(room) => {
                self.send(Command::Who);
                return;
            }
            Conv::Room(_) => {
                self.room_members();
                return;
            }
            Conv::Private(peer) => peer,
        };
        let here = if self.present(peer) {
            ""
        } else {
            " (not here)"
        };
        let line = format!("  {}{here}", s(peer));
        self.info("in this private conversation: you and".into());
        self.info(line);
    }

    /// `/who` in a room besides the lobby.
    fn room_members(&mut self) {
        let c = self.conv();
        let label = c.conv.label();
        if c.parted {
            let line = format!("you are no longer in {label}");
            self.info(line);
            return;
        }
        let mut members = c.members.clone();
        members.sort_by_key(|m| names::fold(m));
        self.info(format!("{label} members ({}):", members.len()));
        for m in members {
            let line = format!(
                "  {}",
                wording::name_marked(&s(&m), self.marks.verified(&m))
            );
            self.info(line);
        }
    }

    /// A typed message, to whom the conversation on the screen says: in a
    /// room besides the lobby, to that room; in a private one, to its
    /// other person. In a room we left it goes nowhere, and says so.
    fn addressed(&mut self, cmd: Command) -> Option<Command> {
        let peer = match &self.conv().conv {
            Conv::Room(room) if is_lobby(room) => return Some(cmd),
            Conv::Room(room) => {
                let room = room.clone();
                let typed = matches!(
                    cmd,
                    Command::Say(_) | Command::Action(_) | Command::RoomSay { .. }
                );
                if typed && self.conv().parted {
                    self.error(format!(
                        "not sent: you are no longer in {0}; /join {0} to go back, or Alt-1 for {LOBBY}",
                        s(&room)
                    ));
                    return None;
                }
                return Some(match cmd {
                    Command::Say(text) => Command::RoomSay {
                        room,
                        text,
                        action: false,
                    },
                    Command::Action(text) => Command::RoomSay {
                        room,
                        text,
                        action: true,
                    },
                    other => other,
                });
            }
            Conv::Private(peer) => peer,
        };
        match cmd {
            Command::Say(text) => Some(Command::Private {
                to: peer.clone(),
                text,
            }),
            Command::Action(_) => {
                self.error("/me is for rooms; a private message is text".into());
                None
            }
            other => Some(other),
        }
    }

    fn send(&mut self, cmd: Command) {
        let Some(cmd) = self.addressed(cmd) else {
            return;
        };
        match &cmd {
            Command::Say(text) | Command::Action(text) | Command::RoomSay { text, .. } => {
                self.next_local += 1;
                let local = self.next_local;
                self.unnumbered.push_back(Some(local));
                let line = Line {
                    time_ms: now_ms(),
                    kind: Kind::Own {
                        name: s(&self.me),
                        text: wording::message_text(text),
                        action: matches!(
                            cmd,
                            Command::Action(_) | Command::RoomSay { action: true, .. }
                        ),
                        delivery: Delivery::Pending,
                        local,
                    },
                    mention: false,
                    seq: None,
                };
                self.push_to(self.current, line, false);
            }
            // Numbered too, but shown when the server echoes it, which
            // also proves it went. `/msg` opens the conversation, where
            // the echo will be and the next lines go.
            Command::Private { to, .. } => {
                self.unnumbered.push_back(None);
                if !same(to, &self.me) {
                    self.switch_to(Conv::Private(to.clone()));
                }
            }
            Command::Kick { .. } if !self.operator => {
                self.error("/kick is for the server's operator".into());
                return;
            }
            _ => {}
        }
        self.effects.commands.push(cmd);
    }

    /// Ctrl-C: clears a typed line; on an empty one leaves, except that
    /// the host, whose leaving shuts the server down for everyone, is
    /// asked to press it again.
    fn interrupt(&mut self) {
        if !self.editor.is_empty() {
            self.editor.clear();
        } else if self.operator && !self.confirm_quit && !self.quitting {
            self.confirm_quit = true;
            self.info(
                "press Ctrl-C again to shut the server down for everyone; any other key cancels"
                    .into(),
            );
        } else {
            self.quit(String::new());
        }
    }

    fn quit(&mut self, reason: String) {
        if self.quitting {
            return;
        }
        self.quitting = true;
        self.confirm_quit = false;
        self.conn = Conn::Leaving;
        self.quit_reason.clone_from(&reason);
        self.effects.commands.push(Command::Quit(reason));
    }
}

/// A block of several lines sent as one message, if `text` is one: its
/// lines go with the first line's message (`/me` and `/msg` included);
/// a block that starts with another command is a list of commands, one a
/// line, as it would be typed.
fn block(text: &str) -> Option<Command> {
    let text = text.trim_matches('\n');
    let (first, rest) = text.split_once('\n')?;
    let with_rest = |t: String| format!("{t}\n{rest}");
    match input::parse(first) {
        Input::Send(Command::Say(t)) => Some(Command::Say(with_rest(t))),
        Input::Send(Command::Action(t)) => Some(Command::Action(with_rest(t))),
        Input::Send(Command::Private { to, text }) => Some(Command::Private {
            to,
            text: with_rest(text),
        }),
        _ => None,
    }
}

/// A block too long for one message, as several, each as many whole lines
/// as fit in `max` bytes: refused whole, a long paste would be lost, and
/// cut mid-line it would read wrongly. A single line longer than `max`
/// goes alone and is refused with the reason, never truncated.
fn split_block(cmd: Command, max: usize) -> Vec<Command> {
    let text = match &cmd {
        Command::Say(t) | Command::Action(t) | Command::Private { text: t, .. } => t,
        _ => return vec![cmd],
    };
    if text.len() <= max {
        return vec![cmd];
    }
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for line in text.split('\n') {
        if !piece.is_empty() && piece.len() + 1 + line.len() > max {
            pieces.push(std::mem::take(&mut piece));
        }
        if !piece.is_empty() {
            piece.push('\n');
        }
        piece.push_str(line);
    }
    pieces.push(piece);
    pieces
        .into_iter()
        .map(|text| match &cmd {
            Command::Action(_) => Command::Action(text),
            Command::Private { to, .. } => Command::Private {
                to: to.clone(),
                text,
            },
            _ => Command::Say(text),
        })
        .collect()
}

/// Whether `line` is `/part` (or `/leave`) without a room.
fn bare_part(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let is_part = words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("/part") || w.eq_ignore_ascii_case("/leave"));
    is_part && !words.next().is_some_and(|w| w.starts_with('#'))
}

/// Whether two names are the same name, as the server decides it.
fn same(a: &str, b: &str) -> bool {
    names::fold(a) == names::fold(b)
}

/// The `/help` lines; the operator's `/quit` also stops the server.
pub fn help_lines(operator: bool) -> Vec<String> {
    let mut lines = input::help_lines(operator);
    if operator {
        for l in &mut lines {
            if l.starts_with("/quit") {
                *l = format!("{:<22} leave and shut the server down", "/quit [REASON]");
            }
        }
    }
    lines.push(
        "keys: Tab completes, Up/Down history, PageUp/PageDown scroll, Ctrl-W deletes a word, Alt-Enter a new line, Ctrl-C clears the line or quits"
            .into(),
    );
    lines.push(
        "conversations: Alt-1..9 or a click picks one, Ctrl-N/Ctrl-P the next or previous; /msg NAME TEXT opens a private one, where what you type goes to NAME"
            .into(),
    );
    lines.push(
        "rooms: /join #ROOM enters one and shows it, /switch #ROOM shows one you are in, /part leaves the one on the screen (it stays in the list, marked left); what you type goes to the room on the screen"
            .into(),
    );
    lines
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use qchat_client::TrustState;

    pub(crate) fn app() -> App {
        app_with((80, 24), true)
    }

    pub(crate) fn about(trust: Option<TrustState>) -> About {
        About {
            server_name: "den".into(),
            server_addr: "127.0.0.1:8080".into(),
            trust,
            name: "bob".into(),
            members: vec!["alice".into(), "bob".into()],
            fingerprint: "SHA256:abc".into(),
            read_aloud: "apple banana".into(),
            connect_lines: vec!["qchat connect 127.0.0.1:8080 --fingerprint SHA256:abc".into()],
        }
    }

    /// The fixture every UI test starts from: bob in "den", alice present.
    pub(crate) fn app_with(size: (u16, u16), bell: bool) -> App {
        App::new(
            about(Some(TrustState::Verified)),
            UiOptions { bell },
            UtcOffset::UTC,
            size,
        )
    }

    fn key(code: KeyCode) -> Msg {
        Msg::Term(TermEvent::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn alt(c: char) -> Msg {
        Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::ALT,
        )))
    }

    fn ctrl(c: char) -> Msg {
        Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::CONTROL,
        )))
    }

    /// Types `text`, returning the commands it caused.
    fn typed(app: &mut App, text: &str) -> Vec<Command> {
        let mut out = Vec::new();
        for c in text.chars() {
            out.extend(app.update(key(KeyCode::Char(c))).commands);
        }
        out
    }

    fn enter(app: &mut App) -> Vec<Command> {
        app.update(key(KeyCode::Enter)).commands
    }

    fn own_lines(app: &App) -> Vec<(String, Option<u64>, Delivery)> {
        app.lines()
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Own { text, delivery, .. } => Some((text.clone(), l.seq, *delivery)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mention_rules() {
        assert!(mentions("hey Bob, look", "bob"));
        assert!(mentions("bob", "bob"));
        assert!(!mentions("bobby tables", "bob"));
        assert!(!mentions("kebob", "bob"));
    }

    /// A forged line is an error line (red), never a line of the name it
    /// claims.
    #[test]
    fn a_forged_line_is_shown_as_an_error_not_as_theirs() {
        let mut a = app();
        a.update(Msg::Net(Event::Forged {
            from: "alice".into(),
            text: "pay mallory".into(),
            time_ms: 5,
            action: false,
            private: false,
            contact: true,
        }));
        let last = a.lines().back().expect("a line");
        match &last.kind {
            Kind::Error(t) => {
                assert_eq!(t, "WARNING: forged line claiming to be alice: pay mallory")
            }
            other => panic!("not an error line: {other:?}"),
        }
        assert!(!a
            .lines()
            .iter()
            .any(|l| matches!(&l.kind, Kind::Said(s) if s.from == "alice")));
    }

    #[test]
    fn typing_survives_incoming_messages() {
        let mut a = app();
        typed(&mut a, "half a thou");
        a.update(Msg::Net(Event::Chat {
            from: "alice".into(),
            text: "interrupting".into(),
            time_ms: 0,
        }));
        assert_eq!(a.editor.text(), "half a thou");
        typed(&mut a, "ght");
        assert_eq!(enter(&mut a), [Command::Say("half a thought".into())]);
        a.update(Msg::Net(Event::Sent { seq: 1 }));
        a.update(Msg::Net(Event::Delivered { seq: 1 }));
        assert_eq!(
            own_lines(&a),
            [("half a thought".into(), Some(1), Delivery::Delivered)]
        );
    }

    #[test]
    fn delivery_marks_follow_the_numbers_the_network_task_reports() {
        let mut a = app();
        // A private message between two lines: numbered, but not shown.
        typed(&mut a, "one");
        enter(&mut a);
        typed(&mut a, "/msg alice psst");
        enter(&mut a);
        // Back in the room.
        a.update(alt('1'));
        typed(&mut a, "two");
        enter(&mut a);
        assert_eq!(
            own_lines(&a),
            [
                ("one".into(), None, Delivery::Pending),
                ("two".into(), None, Delivery::Pending)
            ]
        );
        // Whatever numbers the network task chose, the marks land on the
        // lines it sent under them.
        for seq in [7, 8, 9] {
            a.update(Msg::Net(Event::Sent { seq }));
        }
        a.update(Msg::Net(Event::Refused {
            seq: 9,
            reason: "too fast".into(),
        }));
        a.update(Msg::Net(Event::Delivered { seq: 7 }));
        assert_eq!(
            own_lines(&a),
            [
                ("one".into(), Some(7), Delivery::Delivered),
                ("two".into(), Some(9), Delivery::Refused)
            ]
        );
        assert!(matches!(
            &a.lines().back().map(|l| &l.kind),
            Some(Kind::Error(e)) if e == "message not sent: too fast"
        ));
    }

    #[test]
    fn a_paste_waits_for_enter_then_is_one_message() {
        let mut a = app();
        let fx = a.update(Msg::Term(TermEvent::Paste("one\ntwo\n".into())));
        assert!(fx.commands.is_empty());
        assert_eq!(enter(&mut a), [Command::Say("one\ntwo".into())]);
        // Shown once, with its lines, pending until delivered.
        assert_eq!(
            own_lines(&a),
            [("one\ntwo".into(), None, Delivery::Pending)]
        );
        // Alt-Enter writes a block by hand; /me and /msg take it whole.
        typed(&mut a, "/me waves");
        a.update(Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Enter,
            KeyModifiers::ALT,
        ))));
        typed(&mut a, "twice");
        assert_eq!(enter(&mut a), [Command::Action("waves\ntwice".into())]);
        a.update(Msg::Term(TermEvent::Paste("/msg alice a\nb".into())));
        assert_eq!(
            enter(&mut a),
            [Command::Private {
                to: "alice".into(),
                text: "a\nb".into()
            }]
        );
        // A pasted list of commands is still commands, one a line.
        a.update(alt('1'));
        a.update(Msg::Term(TermEvent::Paste("/nick robert\n/who".into())));
        assert_eq!(
            enter(&mut a),
            [Command::Nick("robert".into()), Command::Who]
        );
    }

    #[test]
    fn a_block_too_long_for_one_message_goes_as_several_between_lines() {
        let mut a = app();
        a.max_message = 10;
        a.update(Msg::Term(TermEvent::Paste(
            "aaaa\nbbbb\ncccc\nthis one is long\ndd".into(),
        )));
        assert_eq!(
            enter(&mut a),
            [
                Command::Say("aaaa\nbbbb".into()),
                Command::Say("cccc".into()),
                Command::Say("this one is long".into()),
                Command::Say("dd".into()),
            ]
        );
        // Every piece is shown, pending, in order.
        assert_eq!(own_lines(&a).len(), 4);
        // A block that fits is one message.
        assert_eq!(
            split_block(Command::Action("a\nb".into()), 10),
            [Command::Action("a\nb".into())]
        );
    }

    fn connection(state: ConnectionState) -> Msg {
        Msg::Net(Event::Connection(state))
    }

    fn status(a: &App) -> String {
        match &a.conn {
            Conn::Online(state) => wording::status(state),
            other => format!("{other:?}"),
        }
    }

    fn infos(a: &App) -> Vec<String> {
        a.lines()
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Info(t) | Kind::Error(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn after_a_move_the_header_names_the_node_connected_to() {
        let mut a = app();
        assert_eq!(a.server_addr, "127.0.0.1:8080");
        a.update(connection(ConnectionState::Lost {
            reason: "timed out".into(),
        }));
        a.update(connection(ConnectionState::Moved {
            node: "127.0.0.1:8091".into(),
        }));
        a.update(connection(CONNECTED));
        assert_eq!(a.server_addr, "127.0.0.1:8091");
        // A node's address is the server's text: shown sanitised.
        a.update(connection(ConnectionState::Moved {
            node: "evil\u{1b}[31m:1".into(),
        }));
        assert!(!a.server_addr.contains('\u{1b}'), "{:?}", a.server_addr);
    }

    #[test]
    fn the_status_line_follows_the_connection_and_the_conversation_stays() {
        let mut a = app();
        assert_eq!(status(&a), "connected");
        typed(&mut a, "before");
        enter(&mut a);
        a.update(Msg::Net(Event::Sent { seq: 1 }));
        a.update(Msg::Net(Event::Delivered { seq: 1 }));
        a.update(connection(ConnectionState::NoAnswer { secs: 2 }));
        assert_eq!(status(&a), "no answer for 2s");
        a.update(connection(ConnectionState::NoAnswer { secs: 3 }));
        assert_eq!(status(&a), "no answer for 3s");
        a.update(connection(ConnectionState::Lost {
            reason: "timed out".into(),
        }));
        assert_eq!(status(&a), "connection lost");
        a.update(connection(ConnectionState::Reconnecting {
            attempt: 1,
            next_in: std::time::Duration::from_secs(1),
        }));
        // Later attempts are in the status line only.
        a.update(connection(ConnectionState::Reconnecting {
            attempt: 3,
            next_in: std::time::Duration::from_secs(4),
        }));
        assert_eq!(status(&a), "reconnecting (attempt 3, next in 4s)");
        // Typed while disconnected: shown at once, pending.
        typed(&mut a, "meanwhile");
        assert_eq!(enter(&mut a), [Command::Say("meanwhile".into())]);
        a.update(Msg::Net(Event::Sent { seq: 2 }));
        a.update(connection(ConnectionState::Connected {
            resumed: true,
            replayed: 5,
            missed: 2,
        }));
        assert_eq!(status(&a), "resumed, 2 missed");
        assert_eq!(
            own_lines(&a),
            [
                ("before".into(), Some(1), Delivery::Delivered),
                ("meanwhile".into(), Some(2), Delivery::Pending)
            ]
        );
        a.update(Msg::Net(Event::Delivered { seq: 2 }));
        assert_eq!(own_lines(&a)[1].2, Delivery::Delivered);
        // Seen once the user acts, then back to plain "connected".
        typed(&mut a, "x");
        assert_eq!(status(&a), "connected");
        // One line per transition, and the header is still there.
        let said = infos(&a);
        assert!(said[0].starts_with("connected to den"), "{said:?}");
        let news: Vec<&str> = said[2..].iter().map(String::as_str).collect();
        assert_eq!(
            news,
            [
                "no answer for 2s",
                "connection lost: timed out",
                "reconnecting (attempt 1, next in 1s)",
                "reconnected, 2 missed"
            ]
        );
    }

    #[test]
    fn a_refused_line_says_so() {
        let mut a = app();
        typed(&mut a, "spam");
        enter(&mut a);
        a.update(Msg::Net(Event::Sent { seq: 4 }));
        a.update(Msg::Net(Event::Refused {
            seq: 4,
            reason: "too long".into(),
        }));
        assert_eq!(own_lines(&a), [("spam".into(), Some(4), Delivery::Refused)]);
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("message not sent: too long")
        );
    }

    #[test]
    fn blocks_are_split_by_the_limit_the_server_announced() {
        let mut a = app();
        a.update(Msg::Net(Event::Roster {
            members: vec!["bob".into()],
            max_message: Some(100),
        }));
        assert_eq!(a.max_message, 100);
        // A version-2 server says nothing: the last known limit stays.
        a.update(Msg::Net(Event::Roster {
            members: vec!["bob".into()],
            max_message: None,
        }));
        assert_eq!(a.max_message, 100);
    }

    #[test]
    fn reconnecting_members_are_marked_until_they_return_or_leave() {
        let mut a = app();
        a.update(Msg::Net(Event::MemberReconnecting {
            name: "alice".into(),
        }));
        assert_eq!(a.reconnecting, ["alice"]);
        assert_eq!(*a.members(), ["alice", "bob"], "still in the room");
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("alice is reconnecting")
        );
        a.update(Msg::Net(Event::MemberReturned {
            name: "Alice".into(),
        }));
        assert!(a.reconnecting.is_empty());
        assert_eq!(infos(&a).last().map(String::as_str), Some("Alice is back"));
        a.update(Msg::Net(Event::MemberReconnecting {
            name: "alice".into(),
        }));
        a.update(Msg::Net(Event::Left {
            name: "alice".into(),
            reason: String::new(),
        }));
        assert!(a.reconnecting.is_empty());
        assert_eq!(*a.members(), ["bob"]);
        // A new roster (our own rejoin) replaces the room.
        a.update(Msg::Net(Event::MemberReconnecting {
            name: "carol".into(),
        }));
        a.update(Msg::Net(Event::Roster {
            members: vec!["bob".into(), "dave".into()],
            max_message: None,
        }));
        assert_eq!(*a.members(), ["bob", "dave"]);
        assert!(a.reconnecting.is_empty());
    }

    #[test]
    fn the_shutdown_reason_is_kept_and_a_restart_is_not_an_end() {
        let mut a = app();
        a.update(Msg::Net(Event::ShuttingDown {
            reason: "upgrade".into(),
            back: true,
        }));
        assert_eq!(
            a.conn,
            Conn::Closing("server restarting: upgrade, reconnecting".into())
        );
        assert_eq!(a.farewell, None);
        // The reconnect takes over the status line.
        a.update(connection(ConnectionState::Reconnecting {
            attempt: 1,
            next_in: std::time::Duration::from_millis(300),
        }));
        assert_eq!(status(&a), "reconnecting (attempt 1, next in 1s)");
        let mut a = app();
        a.update(Msg::Net(Event::ShuttingDown {
            reason: "closing time".into(),
            back: false,
        }));
        assert_eq!(
            a.farewell.as_deref(),
            Some("server shutting down: closing time")
        );
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("server shutting down: closing time")
        );
    }

    #[test]
    fn members_follow_events_and_mentions_ring() {
        let mut a = app();
        a.update(Msg::Net(Event::Joined {
            name: "carol".into(),
        }));
        a.update(Msg::Net(Event::Renamed {
            old: "alice".into(),
            new: "alicia".into(),
        }));
        a.update(Msg::Net(Event::Left {
            name: "CAROL".into(),
            reason: String::new(),
        }));
        assert_eq!(*a.members(), ["alicia", "bob"]);
        let fx = a.update(Msg::Net(Event::Chat {
            from: "alicia".into(),
            text: "bob: ping".into(),
            time_ms: 0,
        }));
        assert!(fx.ring);
        let fx = a.update(Msg::Net(Event::Chat {
            from: "alicia".into(),
            text: "kebob".into(),
            time_ms: 0,
        }));
        assert!(!fx.ring);
        a.update(Msg::Net(Event::Renamed {
            old: "bob".into(),
            new: "robert".into(),
        }));
        assert_eq!(a.me, "robert");
        assert!(matches!(
            &a.lines().back().map(|l| &l.kind),
            Some(Kind::Info(t)) if t == "you are now known as robert"
        ));
    }

    #[test]
    fn own_lines_keep_the_name_they_were_sent_under() {
        let mut a = app();
        typed(&mut a, "before");
        enter(&mut a);
        a.update(Msg::Net(Event::Renamed {
            old: "bob".into(),
            new: "robert".into(),
        }));
        typed(&mut a, "after");
        enter(&mut a);
        let names: Vec<&str> = a
            .lines()
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Own { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["bob", "robert"]);
    }

    #[test]
    fn ctrl_c_clears_a_typed_line_then_quits() {
        let mut a = app();
        typed(&mut a, "x");
        assert!(a.update(ctrl('d')).commands.is_empty());
        assert!(!a.quitting, "Ctrl-D on a non-empty line is delete");
        typed(&mut a, "half");
        assert!(a.update(ctrl('c')).commands.is_empty());
        assert!(!a.quitting, "the first Ctrl-C clears the line");
        assert!(a.editor.is_empty());
        assert_eq!(a.update(ctrl('c')).commands, [Command::Quit(String::new())]);
        assert!(a.quitting);
        assert_eq!(a.conn, Conn::Leaving);
    }

    #[test]
    fn the_host_is_asked_before_ctrl_c_shuts_the_server_down() {
        let mut a = App::new(
            about(None),
            UiOptions { bell: false },
            UtcOffset::UTC,
            (80, 24),
        );
        assert!(a.update(ctrl('c')).commands.is_empty());
        assert!(a.confirm_quit);
        // Any other key cancels.
        typed(&mut a, "x");
        assert!(!a.confirm_quit);
        a.update(key(KeyCode::Backspace));
        a.update(ctrl('c'));
        assert_eq!(a.update(ctrl('c')).commands, [Command::Quit(String::new())]);
        // A signal does not ask.
        let mut a = App::new(
            about(None),
            UiOptions { bell: false },
            UtcOffset::UTC,
            (80, 24),
        );
        assert_eq!(a.update(Msg::Stop).commands, [Command::Quit(String::new())]);
    }

    #[test]
    fn the_host_sees_how_to_connect_and_fingerprint_repeats_it() {
        let mut a = App::new(
            about(None),
            UiOptions { bell: false },
            UtcOffset::UTC,
            (80, 24),
        );
        let connect = "  qchat connect 127.0.0.1:8080 --fingerprint SHA256:abc";
        let count = |a: &App| {
            a.lines()
                .iter()
                .filter(|l| matches!(&l.kind, Kind::Info(t) if t == connect))
                .count()
        };
        assert_eq!(count(&a), 1);
        typed(&mut a, "/fingerprint");
        assert!(enter(&mut a).is_empty());
        assert_eq!(count(&a), 2);
        // A member learns the key and how far it is trusted.
        let mut a = app();
        typed(&mut a, "/fingerprint");
        enter(&mut a);
        assert!(a
            .lines()
            .iter()
            .any(|l| matches!(&l.kind, Kind::Info(t) if t.starts_with("trust: verified"))));
    }

    #[test]
    fn tab_completes_names() {
        let mut a = app();
        typed(&mut a, "/msg al");
        a.update(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "/msg alice ");
        let mut a = app();
        typed(&mut a, "/ni");
        a.update(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "/nick ");
        // In a private conversation: its person, and the room's people.
        let mut a = app();
        a.update(private("carol", "bob", "hi"));
        a.update(alt('2'));
        typed(&mut a, "/msg al");
        a.update(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "/msg alice ");
        a.editor.clear();
        typed(&mut a, "c");
        a.update(key(KeyCode::Tab));
        assert_eq!(a.editor.text(), "carol: ");
    }

    fn private(from: &str, to: &str, text: &str) -> Msg {
        Msg::Net(Event::Private {
            from: from.into(),
            to: to.into(),
            text: text.into(),
            history: false,
            time_ms: 0,
        })
    }

    fn chat(from: &str, text: &str) -> Msg {
        Msg::Net(Event::Chat {
            from: from.into(),
            text: text.into(),
            time_ms: 0,
        })
    }

    /// The conversation on the screen, and every one's unread count and
    /// mention mark, as the list shows them.
    fn list(a: &App) -> (String, Vec<String>) {
        (a.conv().conv.label(), a.conv_entries())
    }

    /// The scrollback's text on the screen, the marker as `--`.
    fn texts(a: &App) -> Vec<String> {
        a.lines()
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Said(s) => Some(s.text.clone()),
                Kind::Own { text, .. } => Some(text.clone()),
                Kind::Marker => Some("--".into()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_private_message_waits_in_its_own_conversation_with_an_unread_count() {
        let mut a = app();
        assert_eq!(list(&a), ("#lobby".into(), vec!["1 #lobby".into()]));
        let fx = a.update(private("alice", "bob", "psst"));
        assert!(fx.ring, "a private message rings like a mention");
        a.update(private("alice", "bob", "are you there?"));
        a.update(chat("carol", "hello all"));
        // Still looking at the lobby, where the private lines are not.
        assert_eq!(
            list(&a),
            (
                "#lobby".into(),
                vec!["1 #lobby".into(), "2 @alice 2 !".into()]
            )
        );
        assert_eq!(texts(&a), ["hello all"]);
        assert_eq!(a.unread(), 2);
        assert_eq!(a.title(), "(2) qchat — 127.0.0.1:8080");
        // Alt-2: the conversation, read, with nothing left unread.
        a.update(alt('2'));
        assert_eq!(
            list(&a),
            ("@alice".into(), vec!["1 #lobby".into(), "2 @alice".into()])
        );
        assert_eq!(texts(&a), ["psst", "are you there?"]);
        assert_eq!(a.title(), "qchat — 127.0.0.1:8080");
        // What is typed here goes to alice, privately.
        typed(&mut a, "yes");
        assert_eq!(
            enter(&mut a),
            [Command::Private {
                to: "alice".into(),
                text: "yes".into()
            }]
        );
        typed(&mut a, "/me waves");
        assert!(enter(&mut a).is_empty(), "no private actions");
        // Our own echo lands here and is not news.
        a.update(private("bob", "Alice", "yes"));
        assert_eq!(texts(&a), ["psst", "are you there?", "yes"]);
        a.update(alt('1'));
        a.update(private("bob", "alice", "from elsewhere"));
        assert_eq!(a.unread(), 0);
        // A room message mentioning us, while away, marks the room.
        a.update(alt('2'));
        a.update(chat("carol", "bob: lunch?"));
        assert_eq!(a.conv_entries()[0], "1 #lobby 1 !");
    }

    #[test]
    fn the_marker_shows_where_the_user_stopped_reading() {
        let mut a = app();
        a.update(chat("alice", "read"));
        a.update(private("carol", "bob", "hi"));
        a.update(alt('2'));
        a.update(chat("alice", "new one"));
        a.update(chat("alice", "new two"));
        a.update(alt('1'));
        assert_eq!(texts(&a), ["read", "--", "new one", "new two"]);
        // Still there while reading on.
        a.update(chat("alice", "live"));
        assert_eq!(texts(&a), ["read", "--", "new one", "new two", "live"]);
        // Away and back with nothing new: no marker.
        a.update(alt('2'));
        a.update(alt('1'));
        assert_eq!(texts(&a), ["read", "new one", "new two", "live"]);
        // Away again: it moves to where we left this time.
        a.update(alt('2'));
        a.update(chat("alice", "later"));
        a.update(alt('1'));
        assert_eq!(
            texts(&a),
            ["read", "new one", "new two", "live", "--", "later"]
        );
        // Writing here says we have caught up.
        typed(&mut a, "ok");
        enter(&mut a);
        assert_eq!(
            texts(&a),
            ["read", "new one", "new two", "live", "later", "ok"]
        );
    }

    #[test]
    fn switching_by_keys_and_by_msg_and_by_click() {
        let mut a = app_with((60, 20), false);
        a.update(private("alice", "bob", "one"));
        a.update(private("carol", "bob", "two"));
        // Ctrl-N and Ctrl-P go round the list.
        a.update(ctrl('n'));
        assert_eq!(a.current, 1);
        a.update(ctrl('n'));
        a.update(ctrl('n'));
        assert_eq!(a.current, 0);
        a.update(ctrl('p'));
        assert_eq!(a.conv().conv, Conv::Private("carol".into()));
        // Alt with a number past the end does nothing.
        a.update(alt('9'));
        assert_eq!(a.current, 2);
        // /msg opens (or continues) the conversation with its person.
        typed(&mut a, "/msg dave hi");
        enter(&mut a);
        assert_eq!(a.conv().conv, Conv::Private("dave".into()));
        typed(&mut a, "/msg ALICE again");
        enter(&mut a);
        assert_eq!(a.current, 1);
        // The entry point /join and /switch use.
        a.switch_to(Conv::Room("#dev".into()));
        assert_eq!(a.conv_entries().len(), 5);
        assert_eq!(a.current, 4);
        // A click on an entry in the list.
        let area = a.areas().convs.expect("a conversation list");
        a.update(Msg::Term(TermEvent::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: area.x + 2,
            row: area.y + 2,
            modifiers: KeyModifiers::NONE,
        })));
        assert_eq!(a.conv().conv, Conv::Private("carol".into()));
        // A click in the scrollback does not switch.
        a.update(Msg::Term(TermEvent::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: 0,
            row: area.y,
            modifiers: KeyModifiers::NONE,
        })));
        assert_eq!(a.current, 2);
    }

    #[test]
    fn each_conversation_keeps_its_scroll_and_its_people() {
        let mut a = app_with((60, 10), false);
        for i in 0..30 {
            a.update(chat("alice", &format!("line {i}")));
        }
        a.update(key(KeyCode::PageUp));
        let scrolled = a.conv().scroll;
        assert!(scrolled > 0);
        a.update(private("alice", "bob", "psst"));
        a.update(alt('2'));
        assert_eq!(a.conv().scroll, 0);
        assert_eq!(*a.members(), ["bob", "alice"]);
        // /who here is answered here: the two people, and whether the
        // other one is in a room with us.
        typed(&mut a, "/who");
        assert!(enter(&mut a).is_empty());
        assert_eq!(
            infos(&a)[infos(&a).len() - 2..],
            ["in this private conversation: you and", "  alice"]
        );
        a.update(Msg::Net(Event::Left {
            name: "alice".into(),
            reason: String::new(),
        }));
        typed(&mut a, "/who");
        enter(&mut a);
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("  alice (not here)")
        );
        a.update(alt('1'));
        // Where it was: two rows further up, as the marker and "alice
        // left" came in below.
        assert_eq!(a.conv().scroll, scrolled + 2);
        assert_eq!(a.conv().unseen, 1);
        assert_eq!(*a.members(), ["bob"]);
        // In a room, /who asks the server.
        typed(&mut a, "/who");
        assert_eq!(enter(&mut a), [Command::Who]);
    }

    #[test]
    fn a_rename_takes_the_private_conversation_along() {
        let mut a = app();
        a.update(private("alice", "bob", "psst"));
        a.update(Msg::Net(Event::Renamed {
            old: "alice".into(),
            new: "alicia".into(),
        }));
        assert_eq!(a.conv_entries()[1], "2 @alicia 1 !");
        a.update(private("alicia", "bob", "it is me"));
        assert_eq!(a.convs.len(), 2);
        a.update(alt('2'));
        typed(&mut a, "hi");
        assert_eq!(
            enter(&mut a),
            [Command::Private {
                to: "alicia".into(),
                text: "hi".into()
            }]
        );
    }

    #[test]
    fn answers_go_where_the_user_is_and_a_refusal_to_its_line() {
        let mut a = app();
        typed(&mut a, "in the lobby");
        enter(&mut a);
        a.update(Msg::Net(Event::Sent { seq: 3 }));
        a.update(private("alice", "bob", "psst"));
        a.update(alt('2'));
        assert_eq!(a.route(&Event::Notice { text: "x".into() }), Route::Current);
        a.update(Msg::Net(Event::Failed {
            what: "whois".into(),
            reason: "no such name".into(),
        }));
        assert!(infos(&a).iter().any(|l| l.contains("no such name")));
        // The refusal of a lobby line is said in the lobby, beside it.
        a.update(Msg::Net(Event::Refused {
            seq: 3,
            reason: "too fast".into(),
        }));
        assert!(!infos(&a).iter().any(|l| l.contains("too fast")));
        a.update(alt('1'));
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("message not sent: too fast")
        );
        assert_eq!(
            own_lines(&a),
            [("in the lobby".into(), Some(3), Delivery::Refused)]
        );
    }

    fn in_room(room: &str, event: Event) -> Msg {
        Msg::Net(Event::InRoom {
            room: room.into(),
            event: Box::new(event),
        })
    }

    fn room_joined(room: &str, members: &[&str], topic: &str) -> Msg {
        Msg::Net(Event::RoomJoined {
            room: room.into(),
            topic: topic.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            operator: false,
            invite_only: false,
        })
    }

    fn chat_event(from: &str, text: &str) -> Event {
        Event::Chat {
            from: from.into(),
            text: text.into(),
            time_ms: 0,
        }
    }

    /// The index of `room`'s conversation.
    fn room_at(a: &App, room: &str) -> usize {
        a.convs
            .iter()
            .position(|c| c.conv == Conv::Room(room.into()))
            .expect("the room's conversation")
    }

    /// Every line's words in conversation `at`, the marker as `--`.
    fn words_in(a: &App, at: usize) -> Vec<String> {
        a.convs[at]
            .lines
            .iter()
            .map(|l| match &l.kind {
                Kind::Said(s) => format!("<{}> {}", s.from, s.text),
                Kind::Own { text, .. } => format!("own {text}"),
                Kind::Info(t) | Kind::Error(t) => t.clone(),
                Kind::Marker => "--".into(),
            })
            .collect()
    }

    #[test]
    fn each_room_event_goes_to_its_room() {
        let mut a = app();
        a.update(room_joined("#dev", &["alice", "bob"], "builds"));
        // Not asked for here (a rejoin): listed, not put on the screen.
        assert_eq!(a.current, 0);
        let dev = room_at(&a, "#dev");
        assert_eq!(a.convs[dev].topic, "builds");
        assert_eq!(a.convs[dev].members, ["alice", "bob"]);
        a.update(in_room("#dev", chat_event("alice", "in dev")));
        a.update(in_room("#Dev", chat_event("alice", "bob: look")));
        a.update(chat("carol", "in the lobby"));
        assert_eq!(
            a.conv_entries(),
            ["1 #lobby".to_string(), "2 #dev 2 !".to_string()]
        );
        assert_eq!(texts(&a), ["in the lobby"]);
        // The room's lines carry no room: they are in it.
        assert!(a.convs[dev].lines.iter().any(|l| matches!(
            &l.kind,
            Kind::Said(s) if s.text == "in dev" && s.room.is_none()
        )));
        // Its members come and go there, and only there.
        a.update(in_room(
            "#dev",
            Event::Joined {
                name: "dave".into(),
            },
        ));
        a.update(in_room(
            "#dev",
            Event::Left {
                name: "alice".into(),
                reason: String::new(),
            },
        ));
        assert_eq!(a.convs[dev].members, ["bob", "dave"]);
        assert_eq!(*a.members(), ["alice", "bob"]);
        // A new name is a new name in every room.
        a.update(in_room(
            "#dev",
            Event::Joined {
                name: "carol".into(),
            },
        ));
        a.update(Msg::Net(Event::Renamed {
            old: "carol".into(),
            new: "caroline".into(),
        }));
        assert_eq!(a.convs[dev].members, ["bob", "dave", "caroline"]);
        // Topic, mode and the end of a replay are the room's; the room
        // list and an invitation answer where the user is.
        for ev in [
            Event::Topic {
                room: "#dev".into(),
                by: "dave".into(),
                text: "releases".into(),
            },
            Event::RoomMode {
                room: "#dev".into(),
                by: "dave".into(),
                invite_only: true,
            },
            Event::RoomReplayed {
                room: "#dev".into(),
                resumed: true,
                replayed: 0,
                missed: 0,
            },
        ] {
            assert_eq!(a.route(&ev), Route::To(Conv::Room("#dev".into())));
            a.update(Msg::Net(ev));
        }
        assert_eq!(a.convs[dev].topic, "releases");
        for ev in [
            Event::RoomList(Vec::new()),
            Event::Invited {
                room: "#ops".into(),
                by: "dave".into(),
            },
        ] {
            assert_eq!(a.route(&ev), Route::Current);
        }
        let news = words_in(&a, dev);
        assert!(
            news.contains(&"dave set the topic: releases".to_string()),
            "{news:?}"
        );
        assert!(
            news.contains(&"dave made the room invite-only".to_string()),
            "{news:?}"
        );
        // Still two messages unread there: news is not messages.
        assert_eq!(a.convs[dev].unread, 2);
        // Removed from the room: it says so there, and stays listed.
        a.update(Msg::Net(Event::Parted {
            room: "#dev".into(),
            by: "dave".into(),
            reason: "enough".into(),
        }));
        assert!(a.convs[dev].parted);
        assert!(a.convs[dev].members.is_empty());
        assert_eq!(a.conv_entries()[1], "2 #dev (left) 2 !");
        assert_eq!(
            words_in(&a, dev).last().map(String::as_str),
            Some("kicked by dave: enough")
        );
    }

    #[test]
    fn join_shows_the_room_when_it_is_answered_but_a_rejoin_does_not() {
        let mut a = app();
        typed(&mut a, "/join #dev");
        assert_eq!(enter(&mut a), [Command::Join("#dev".into())]);
        // Not yet: the server may refuse.
        assert_eq!(a.current, 0);
        a.update(room_joined("#Dev", &["bob"], ""));
        assert_eq!(a.conv().conv, Conv::Room("#dev".into()));
        assert_eq!(words_in(&a, a.current), ["you joined #Dev (1 member: bob)"]);
        a.update(alt('1'));
        // After a reconnect the network task rejoins by itself: the view
        // stays where the user is.
        a.update(room_joined("#dev", &["bob", "alice"], ""));
        assert_eq!(a.current, 0);
        assert_eq!(a.convs.len(), 2);
        // A refused join does not make a later rejoin take the screen.
        typed(&mut a, "/join #ops");
        assert_eq!(enter(&mut a), [Command::Join("#ops".into())]);
        a.update(Msg::Net(Event::Failed {
            what: "join".into(),
            reason: "#ops is invite-only".into(),
        }));
        a.update(room_joined("#ops", &["bob"], ""));
        assert_eq!(a.current, 0);
        // /join of a room we are in, and /switch, only show it.
        typed(&mut a, "/join #DEV");
        assert!(enter(&mut a).is_empty());
        assert_eq!(a.conv().conv, Conv::Room("#dev".into()));
        typed(&mut a, "/switch #lobby");
        assert!(enter(&mut a).is_empty());
        assert_eq!(a.current, 0);
        typed(&mut a, "/switch #dev");
        enter(&mut a);
        assert_eq!(a.conv().conv, Conv::Room("#dev".into()));
        typed(&mut a, "/join #lobby");
        assert!(enter(&mut a).is_empty());
        assert_eq!(a.current, 0);
        // Tab completes the rooms we know.
        typed(&mut a, "/switch #d");
        a.update(key(KeyCode::Tab));
        // As the server spells it.
        assert_eq!(a.editor.text(), "/switch #Dev ");
        a.editor.clear();
        typed(&mut a, "/switch #nowhere");
        assert!(enter(&mut a).is_empty());
        assert_eq!(a.current, 0);
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("you are not in #nowhere; /join #nowhere first")
        );
    }

    #[test]
    fn typing_in_a_room_goes_to_it_until_it_is_left() {
        let mut a = app();
        typed(&mut a, "/join #dev");
        enter(&mut a);
        a.update(room_joined("#dev", &["bob", "carol"], "builds"));
        typed(&mut a, "hi dev");
        assert_eq!(
            enter(&mut a),
            [Command::RoomSay {
                room: "#dev".into(),
                text: "hi dev".into(),
                action: false
            }]
        );
        typed(&mut a, "/me waves");
        assert_eq!(
            enter(&mut a),
            [Command::RoomSay {
                room: "#dev".into(),
                text: "waves".into(),
                action: true
            }]
        );
        // Shown here at once, and marked as the server answers.
        a.update(Msg::Net(Event::Sent { seq: 1 }));
        a.update(Msg::Net(Event::Delivered { seq: 1 }));
        assert_eq!(
            own_lines(&a),
            [
                ("hi dev".into(), Some(1), Delivery::Delivered),
                ("waves".into(), None, Delivery::Pending)
            ]
        );
        // A pasted block goes to the room too.
        a.update(Msg::Term(TermEvent::Paste("one\ntwo".into())));
        assert_eq!(
            enter(&mut a),
            [Command::RoomSay {
                room: "#dev".into(),
                text: "one\ntwo".into(),
                action: false
            }]
        );
        // The room commands apply to the room on the screen.
        for (line, cmd) in [
            (
                "/topic releases",
                Command::Topic {
                    room: "#dev".into(),
                    text: "releases".into(),
                },
            ),
            (
                "/invite dave",
                Command::Invite {
                    room: "#dev".into(),
                    name: "dave".into(),
                },
            ),
            (
                "/room invite-only on",
                Command::RoomMode {
                    room: "#dev".into(),
                    invite_only: true,
                },
            ),
            (
                "/kick carol noisy",
                Command::RoomKick {
                    room: "#dev".into(),
                    name: "carol".into(),
                    reason: "noisy".into(),
                },
            ),
            (
                "/part done here",
                Command::Part {
                    room: "#dev".into(),
                    reason: "done here".into(),
                },
            ),
        ] {
            typed(&mut a, line);
            assert_eq!(enter(&mut a), [cmd], "{line}");
        }
        a.update(Msg::Net(Event::Parted {
            room: "#dev".into(),
            by: String::new(),
            reason: "done here".into(),
        }));
        // Still on the screen, listed as left, and nothing typed here goes.
        assert_eq!(a.conv().conv, Conv::Room("#dev".into()));
        assert_eq!(a.conv_entries()[1], "2 #dev (left)");
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("you left #dev (done here)")
        );
        typed(&mut a, "anyone?");
        assert!(enter(&mut a).is_empty());
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("not sent: you are no longer in #dev; /join #dev to go back, or Alt-1 for #lobby")
        );
        typed(&mut a, "/switch #dev");
        enter(&mut a);
        assert!(infos(&a)
            .last()
            .is_some_and(|l| l.starts_with("you are not in #dev")));
        // /join brings it back, in its place in the list.
        typed(&mut a, "/join #dev");
        assert_eq!(enter(&mut a), [Command::Join("#dev".into())]);
        a.update(room_joined("#dev", &["bob"], ""));
        assert_eq!(a.conv_entries()[1], "2 #dev");
        typed(&mut a, "back");
        assert_eq!(
            enter(&mut a),
            [Command::RoomSay {
                room: "#dev".into(),
                text: "back".into(),
                action: false
            }]
        );
        // In the lobby, today's commands.
        a.update(alt('1'));
        typed(&mut a, "lobby line");
        assert_eq!(enter(&mut a), [Command::Say("lobby line".into())]);
        typed(&mut a, "/topic x");
        assert!(enter(&mut a).is_empty(), "the lobby has no topic to set");
        // A private conversation is not a room to leave.
        a.update(private("carol", "bob", "hi"));
        a.update(alt('3'));
        typed(&mut a, "/part bye");
        assert!(enter(&mut a).is_empty());
        assert!(infos(&a)
            .last()
            .is_some_and(|l| l.starts_with("a private conversation is not a room")));
        typed(&mut a, "/part #dev bye");
        assert_eq!(
            enter(&mut a),
            [Command::Part {
                room: "#dev".into(),
                reason: "bye".into()
            }]
        );
    }

    #[test]
    fn who_in_a_room_lists_the_members_kept_from_its_events() {
        let mut a = app();
        typed(&mut a, "/join #dev");
        enter(&mut a);
        a.update(room_joined("#dev", &["bob", "carol", "alice"], ""));
        a.update(in_room(
            "#dev",
            Event::Joined {
                name: "Dave".into(),
            },
        ));
        a.update(in_room(
            "#dev",
            Event::Left {
                name: "carol".into(),
                reason: "bye".into(),
            },
        ));
        // The list beside the scrollback is the room's.
        assert_eq!(*a.members(), ["bob", "alice", "Dave"]);
        typed(&mut a, "/who");
        assert!(enter(&mut a).is_empty(), "answered here, not by the server");
        let said = infos(&a);
        assert_eq!(
            said[said.len() - 4..],
            ["#dev members (3):", "  alice", "  bob", "  Dave"]
        );
        a.update(Msg::Net(Event::Parted {
            room: "#dev".into(),
            by: String::new(),
            reason: String::new(),
        }));
        typed(&mut a, "/who");
        enter(&mut a);
        assert_eq!(
            infos(&a).last().map(String::as_str),
            Some("you are no longer in #dev")
        );
    }

    #[test]
    fn conversations_are_bounded_and_the_quietest_private_one_goes() {
        let mut a = app();
        a.update(private("first", "bob", "hi"));
        a.update(alt('2'));
        for i in 0..MAX_CONVERSATIONS + 20 {
            a.update(private(&format!("n{i}"), "bob", "spam"));
        }
        assert_eq!(a.convs.len(), MAX_CONVERSATIONS);
        // The lobby and the one on the screen stay; the oldest others go.
        assert_eq!(a.convs[0].conv, Conv::lobby());
        assert_eq!(a.conv().conv, Conv::Private("first".into()));
        assert!(!a.convs.iter().any(|c| c.conv == Conv::Private("n0".into())));
        assert!(a
            .convs
            .iter()
            .any(|c| c.conv == Conv::Private(format!("n{}", MAX_CONVERSATIONS + 19))));
    }
}
