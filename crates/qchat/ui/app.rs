//! The UI's state and the only place it changes: [`App::update`] takes one
//! thing that happened (a key, a paste, a network event, a server log line)
//! and updates the scrollback, the member list, the input line and the
//! queue of commands for the network task. Rendering only reads this.

use qchat_proto::clock::now_ms;
use std::collections::VecDeque;

use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind,
};
use qchat_client::{Command, ConnectionState, Event};
use qchat_proto::names;
use ratatui::layout::Rect;
use time::UtcOffset;

use super::complete::{self, Completion};
use super::editor::Editor;
use super::layout;
use super::scrollback::{line_rows, Delivery, Kind, Line};
use super::UiOptions;
use crate::input::{self, Input};
use crate::wording::{self, s, About, Words};

/// Scrollback lines kept; older ones are dropped.
const SCROLLBACK: usize = 5_000;

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
    /// The room (raw names), in the order they came.
    pub members: Vec<String>,
    /// The scrollback, oldest first.
    pub lines: VecDeque<Line>,
    /// How many rows the view is scrolled up from the bottom.
    pub scroll: usize,
    /// Lines that arrived while scrolled up.
    pub unseen: usize,
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
            members: about.members.clone(),
            about,
            lines: VecDeque::new(),
            scroll: 0,
            unseen: 0,
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

    /// Adds a line, keeping the view where it is if the user scrolled up.
    fn push(&mut self, kind: Kind, time_ms: u64) {
        self.push_mention(kind, time_ms, false);
    }

    fn push_mention(&mut self, kind: Kind, time_ms: u64, mention: bool) {
        self.push_line(Line {
            time_ms,
            kind,
            mention,
            seq: None,
        });
    }

    fn push_line(&mut self, line: Line) {
        if line.mention && self.options.bell {
            self.effects.ring = true;
        }
        if self.scroll > 0 {
            let width = self.areas().scrollback.width;
            self.scroll += line_rows(&line, self.offset, width).len();
            self.unseen += 1;
        }
        self.lines.push_back(line);
        if self.lines.len() > SCROLLBACK {
            self.lines.pop_front();
        }
    }

    /// The screen's areas at the current size.
    pub fn areas(&self) -> layout::Areas {
        let (w, h) = self.size;
        layout::areas(Rect::new(0, 0, w, h), &self.members, &self.editor)
    }

    fn on_network(&mut self, ev: Event) {
        // First what the event does to the state, then its words.
        self.marks.apply(&ev);
        let mut mention = false;
        match &ev {
            Event::Chat { text, .. } | Event::Action { text, .. } => {
                mention = mentions(text, &self.me);
            }
            // Rooms besides the lobby: shown in the one view, each line
            // with its room first, as plain mode shows them.
            Event::InRoom { .. }
            | Event::RoomJoined { .. }
            | Event::RoomReplayed { .. }
            | Event::Parted { .. }
            | Event::RoomList(_)
            | Event::Topic { .. }
            | Event::Invited { .. }
            | Event::RoomMode { .. } => {}
            // A private message to us is as good as a mention; our own,
            // echoed by the server, is not, nor one replayed from the
            // conversation's history (room history is no mention either).
            Event::Private { from, history, .. } => {
                mention = !*history && !same(from, &self.me);
            }
            Event::Sent { seq } => self.numbered(*seq),
            Event::Delivered { seq } => self.set_delivery(*seq, Delivery::Delivered),
            Event::Refused { seq, .. } => self.set_delivery(*seq, Delivery::Refused),
            Event::Joined { name } => {
                if !self.members.iter().any(|m| same(m, name)) {
                    self.members.push(name.clone());
                }
            }
            Event::Left { name, .. } => {
                self.members.retain(|m| !same(m, name));
                self.reconnecting.retain(|m| !same(m, name));
            }
            Event::Renamed { old, new } => {
                if let Some(m) = self.reconnecting.iter_mut().find(|m| same(m, old)) {
                    *m = new.clone();
                }
                if same(old, &self.me) {
                    self.info(format!("you are now known as {}", s(new)));
                    self.me = new.clone();
                    self.about.name = new.clone();
                }
                match self.members.iter_mut().find(|m| same(m, old)) {
                    Some(m) => *m = new.clone(),
                    None => self.members.push(new.clone()),
                }
                if same(old, &self.me) || same(new, &self.me) {
                    // Said above, in the second person.
                    return;
                }
            }
            Event::Members(members) => {
                self.members = members.iter().map(|m| m.name.clone()).collect();
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
                self.members = members.clone();
                self.reconnecting.clear();
            }
            Event::MemberReconnecting { name } => {
                if !self.reconnecting.iter().any(|m| same(m, name)) {
                    self.reconnecting.push(name.clone());
                }
                if !self.members.iter().any(|m| same(m, name)) {
                    self.members.push(name.clone());
                }
            }
            Event::MemberReturned { name } => self.reconnecting.retain(|m| !same(m, name)),
            Event::Connection(state) => {
                // Leaving is leaving, whatever the connection does meanwhile.
                if !self.quitting {
                    self.conn = Conn::Online(state.clone());
                }
                if let Some(line) = self.transitions.line(state) {
                    match state {
                        ConnectionState::Lost { .. } => self.error(line),
                        _ => self.info(line),
                    }
                }
                return;
            }
            Event::History { .. }
            | Event::Notice { .. }
            | Event::Failed { .. }
            | Event::Mark { .. }
            | Event::Verified { .. }
            | Event::ContactChanged { .. }
            | Event::Signed { .. }
            | Event::Forged { .. } => {}
        }
        let time_ms = match &ev {
            Event::Chat { time_ms, .. }
            | Event::Action { time_ms, .. }
            | Event::Private { time_ms, .. }
            | Event::History { time_ms, .. }
            | Event::Forged { time_ms, .. } => *time_ms,
            _ => now_ms(),
        };
        match wording::marked(&ev, &self.marks) {
            Some(Words::Said(said)) => self.push_mention(Kind::Said(said), time_ms, mention),
            Some(Words::Info(text)) => self.info(text),
            Some(Words::Error(text) | Words::Removed(text) | Words::Warning(text)) => {
                self.error(text)
            }
            Some(Words::Members { heading, entries }) => {
                self.info(heading);
                for e in entries {
                    self.info(format!("  {e}"));
                }
            }
            None => {}
        }
    }

    /// The network task numbered our oldest unnumbered command `seq`.
    fn numbered(&mut self, seq: u64) {
        let Some(Some(local)) = self.unnumbered.pop_front() else {
            return;
        };
        // Recent: search from the newest.
        let line = self
            .lines
            .iter_mut()
            .rev()
            .find(|l| matches!(l.kind, Kind::Own { local: id, .. } if id == local));
        if let Some(line) = line {
            line.seq = Some(seq);
        }
    }

    fn set_delivery(&mut self, seq: u64, delivery: Delivery) {
        // Pending lines are recent: search from the newest.
        if let Some(line) = self.lines.iter_mut().rev().find(|l| l.seq == Some(seq)) {
            if let Kind::Own { delivery: d, .. } = &mut line.kind {
                *d = delivery;
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
            TermEvent::Mouse(MouseEvent { kind, .. }) => match kind {
                MouseEventKind::ScrollUp => self.scroll_up(WHEEL_ROWS),
                MouseEventKind::ScrollDown => self.scroll_down(WHEEL_ROWS),
                _ => {}
            },
            TermEvent::Resize(w, h) => {
                self.size = (w, h);
                self.scroll = self.scroll.min(self.max_scroll());
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
        for line in self.lines.iter().rev() {
            rows += line_rows(line, self.offset, area.width).len();
            if rows > self.scroll + height * 2 + 1 {
                // Enough to know the limit is not here; no need to wrap the
                // whole scrollback.
                return usize::MAX;
            }
        }
        rows.saturating_sub(height)
    }

    fn scroll_up(&mut self, rows: usize) {
        self.scroll = (self.scroll + rows).min(self.max_scroll());
    }

    fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
        if self.scroll == 0 {
            self.unseen = 0;
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
            KeyCode::Char('p') if ctrl => e.history_up(),
            KeyCode::Char('n') if ctrl => e.history_down(),
            KeyCode::Char('l') if ctrl => self.effects.clear = true,
            KeyCode::Char('b') if alt => e.word_left(),
            KeyCode::Char('f') if alt => e.word_right(),
            KeyCode::Char('d') if alt => e.delete_word_after(),
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
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|m| !same(m, &self.me))
            .cloned()
            .collect();
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
        // message will appear.
        self.scroll = 0;
        self.unseen = 0;
        if let Some(cmd) = block(&text) {
            for cmd in split_block(cmd, self.max_message) {
                self.send(cmd);
            }
            return;
        }
        for line in text.split('\n') {
            match input::parse(line) {
                Input::Nothing => {}
                Input::Switch(_) => self.error(
                    "this view shows every room's lines in one place, and typed lines go to #lobby; \
                     use plain mode (--plain) to talk in another room"
                        .into(),
                ),
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
                Input::Error(e) => self.error(e),
                Input::Send(Command::Quit(reason)) => {
                    self.quit(reason);
                    return;
                }
                Input::Send(cmd) => self.send(cmd),
            }
        }
    }

    fn send(&mut self, cmd: Command) {
        match &cmd {
            Command::Say(text) | Command::Action(text) => {
                self.next_local += 1;
                let local = self.next_local;
                self.unnumbered.push_back(Some(local));
                self.push_line(Line {
                    time_ms: now_ms(),
                    kind: Kind::Own {
                        name: s(&self.me),
                        text: wording::message_text(text),
                        action: matches!(cmd, Command::Action(_)),
                        delivery: Delivery::Pending,
                        local,
                    },
                    mention: false,
                    seq: None,
                });
            }
            // Numbered too, but shown when the server echoes it, which
            // also proves it went.
            Command::Private { .. } => self.unnumbered.push_back(None),
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
        app.lines
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
        let last = a.lines.back().expect("a line");
        match &last.kind {
            Kind::Error(t) => {
                assert_eq!(t, "WARNING: forged line claiming to be alice: pay mallory")
            }
            other => panic!("not an error line: {other:?}"),
        }
        assert!(!a
            .lines
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
            &a.lines.back().map(|l| &l.kind),
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
        a.lines
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Info(t) | Kind::Error(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
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
        assert_eq!(a.members, ["alice", "bob"], "still in the room");
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
        assert_eq!(a.members, ["bob"]);
        // A new roster (our own rejoin) replaces the room.
        a.update(Msg::Net(Event::MemberReconnecting {
            name: "carol".into(),
        }));
        a.update(Msg::Net(Event::Roster {
            members: vec!["bob".into(), "dave".into()],
            max_message: None,
        }));
        assert_eq!(a.members, ["bob", "dave"]);
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
        assert_eq!(a.members, ["alicia", "bob"]);
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
            &a.lines.back().map(|l| &l.kind),
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
            .lines
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
            a.lines
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
            .lines
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
    }
}
