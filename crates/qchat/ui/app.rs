//! The UI's state and the only place it changes: [`App::update`] takes one
//! thing that happened (a key, a paste, a network event, a server log line)
//! and updates the scrollback, the member list, the input line and the
//! queue of commands for the network task. Rendering only reads this.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind,
};
use qchat_client::{Command, Event, TrustState};
use qchat_proto::text::sanitize;
use time::UtcOffset;

use super::complete::{self, Completion};
use super::editor::Editor;
use super::render;
use super::{SessionInfo, UiOptions};
use crate::input::{self, Input};

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
    /// A line about the server's own doings (operator only).
    Server(String),
}

/// Whether our message reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent, not yet confirmed.
    Pending,
    /// The server delivered it.
    Delivered,
    /// The server refused it; nobody saw it.
    Refused,
}

/// What a scrollback line is. All text is already sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A message from someone else.
    Chat {
        /// Sender.
        from: String,
        /// Text.
        text: String,
    },
    /// An action (`/me`) from someone else.
    Action {
        /// Sender.
        from: String,
        /// Text.
        text: String,
    },
    /// Our own message or action, shown as soon as it is typed.
    Own {
        /// Text.
        text: String,
        /// Whether it was `/me`.
        action: bool,
        /// Its fate.
        delivery: Delivery,
    },
    /// A private message, to us or from us.
    Private {
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// A message from before we joined.
    History {
        /// Sender.
        from: String,
        /// Text.
        text: String,
        /// Whether it was an action.
        action: bool,
    },
    /// Joins, leaves, renames, notices, /who and /help output.
    Info(String),
    /// Something went wrong (refused message, failed command, typo).
    Error(String),
    /// The server's own events (operator only).
    Server(String),
}

/// One scrollback line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When, in ms since the Unix epoch (server time for messages).
    pub time_ms: u64,
    /// What.
    pub kind: Kind,
    /// Whether it mentions us (highlighted, rings the bell).
    pub mention: bool,
    /// The `seq` of our own message, to match `Delivered`/`Refused`.
    pub seq: Option<u64>,
}

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// Joined and talking.
    Connected,
    /// We asked to leave and wait for the server to confirm.
    Leaving,
    /// The server is ending the session.
    Closing(String),
}

/// The whole UI state.
pub struct App {
    /// The server's name, sanitised.
    pub server_name: String,
    /// Where the server is.
    pub server_addr: String,
    /// How far the server is trusted; `None` for the operator.
    pub trust: Option<TrustState>,
    /// Whether we are the server's operator.
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
    /// Commands waiting for room in the network task's channel.
    pub outbox: VecDeque<Command>,
    /// The `seq` the network task will give the next Say/Action/Private.
    next_seq: u64,
    /// The connection state.
    pub conn: Conn,
    /// Whether the user asked to leave (the loop then waits for the end).
    pub quitting: bool,
    /// Ring the bell at the next draw.
    pub ring: bool,
    /// Clear and redraw everything at the next draw (Ctrl-L).
    pub clear: bool,
    /// The terminal size, for scrolling by pages.
    pub size: (u16, u16),
    /// For timestamps.
    pub offset: UtcOffset,
    options: UiOptions,
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn s(text: &str) -> String {
    sanitize(text).into_owned()
}

/// Whether `text` mentions `name` as a word, ignoring case.
pub fn mentions(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let text = text.to_lowercase();
    let name = name.to_lowercase();
    text.match_indices(&name).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

impl App {
    /// The state right after joining.
    pub fn new(info: SessionInfo, options: UiOptions, offset: UtcOffset, size: (u16, u16)) -> App {
        let mut app = App {
            server_name: s(&info.server_name),
            server_addr: s(&info.server_addr),
            trust: info.trust,
            operator: info.operator,
            me: info.name,
            members: info.members,
            lines: VecDeque::new(),
            scroll: 0,
            unseen: 0,
            editor: Editor::default(),
            completion: None,
            outbox: VecDeque::new(),
            next_seq: 0,
            conn: Conn::Connected,
            quitting: false,
            ring: false,
            clear: false,
            size,
            offset,
            options,
        };
        let trust = match app.trust {
            Some(t) => format!(" ({t})"),
            None => " (operator)".into(),
        };
        let who = app
            .members
            .iter()
            .map(|m| s(m))
            .collect::<Vec<_>>()
            .join(", ");
        app.info(format!(
            "connected to {} at {}{trust} as {}; /help lists the commands",
            app.server_name,
            app.server_addr,
            s(&app.me)
        ));
        app.info(format!("in the room: {who}"));
        app
    }

    /// Applies one thing that happened.
    pub fn update(&mut self, msg: Msg) {
        match msg {
            Msg::Term(ev) => self.on_terminal(ev),
            Msg::Net(ev) => self.on_network(ev),
            Msg::Server(line) => self.push(Kind::Server(s(&line)), now_ms()),
        }
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
            self.ring = true;
        }
        if self.scroll > 0 {
            let width = render::scrollback_width(self.size.0, self);
            self.scroll += render::line_rows(&line, self, width).len();
            self.unseen += 1;
        }
        self.lines.push_back(line);
        if self.lines.len() > SCROLLBACK {
            self.lines.pop_front();
        }
    }

    fn on_network(&mut self, ev: Event) {
        match ev {
            Event::Chat {
                from,
                text,
                time_ms,
            } => {
                let mention = mentions(&text, &self.me);
                let kind = Kind::Chat {
                    from: s(&from),
                    text: s(&text),
                };
                self.push_mention(kind, time_ms, mention);
            }
            Event::Action {
                from,
                text,
                time_ms,
            } => {
                let mention = mentions(&text, &self.me);
                let kind = Kind::Action {
                    from: s(&from),
                    text: s(&text),
                };
                self.push_mention(kind, time_ms, mention);
            }
            Event::Private {
                from,
                to,
                text,
                time_ms,
            } => {
                // A private message to us is as good as a mention; our own,
                // echoed by the server, is not.
                let mention = !from.eq_ignore_ascii_case(&self.me);
                let kind = Kind::Private {
                    from: s(&from),
                    to: s(&to),
                    text: s(&text),
                };
                self.push_mention(kind, time_ms, mention);
            }
            Event::History {
                from,
                text,
                time_ms,
                action,
            } => self.push(
                Kind::History {
                    from: s(&from),
                    text: s(&text),
                    action,
                },
                time_ms,
            ),
            Event::Delivered { seq } => self.set_delivery(seq, Delivery::Delivered),
            Event::Refused { seq, reason } => {
                self.set_delivery(seq, Delivery::Refused);
                self.error(format!("message not sent: {}", s(&reason)));
            }
            Event::Joined { name } => {
                self.info(format!("{} joined", s(&name)));
                if !self
                    .members
                    .iter()
                    .any(|m| m.to_lowercase() == name.to_lowercase())
                {
                    self.members.push(name);
                }
            }
            Event::Left { name, reason } => {
                if reason.is_empty() {
                    self.info(format!("{} left", s(&name)));
                } else {
                    self.info(format!("{} left ({})", s(&name), s(&reason)));
                }
                self.members
                    .retain(|m| m.to_lowercase() != name.to_lowercase());
            }
            Event::Renamed { old, new } => {
                if old == self.me {
                    self.info(format!("you are now known as {}", s(&new)));
                    self.me = new.clone();
                } else {
                    self.info(format!("{} is now known as {}", s(&old), s(&new)));
                }
                match self.members.iter_mut().find(|m| **m == old) {
                    Some(m) => *m = new,
                    None => self.members.push(new),
                }
            }
            Event::Members(members) => {
                self.info(format!("members ({}):", members.len()));
                for m in &members {
                    let mut line = format!(
                        "  {:<16} {:>4}",
                        s(&m.name),
                        crate::plain::short_duration(m.connected_secs)
                    );
                    if !m.addr.is_empty() {
                        line.push_str(&format!("  {}", s(&m.addr)));
                    }
                    if m.operator {
                        line.push_str("  (operator)");
                    }
                    self.info(line);
                }
                self.members = members.into_iter().map(|m| m.name).collect();
            }
            Event::Notice { text } => self.info(format!("notice: {}", s(&text))),
            Event::Failed { what, reason } => {
                self.error(format!("/{} failed: {}", s(&what), s(&reason)));
            }
            Event::Kicked { by, reason } => {
                let why = if reason.is_empty() {
                    format!("kicked by {}", s(&by))
                } else {
                    format!("kicked by {}: {}", s(&by), s(&reason))
                };
                self.error(why.clone());
                self.conn = Conn::Closing(why);
            }
            Event::ShuttingDown { reason } => {
                self.info(format!("server shutting down: {}", s(&reason)));
                self.conn = Conn::Closing("server shutting down".into());
            }
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
        usize::from(render::scrollback_height(self.size, self).saturating_sub(1)).max(1)
    }

    fn max_scroll(&self) -> usize {
        let width = render::scrollback_width(self.size.0, self);
        let height = usize::from(render::scrollback_height(self.size, self));
        let mut rows = 0;
        for line in self.lines.iter().rev() {
            rows += render::line_rows(line, self, width).len();
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
        let e = &mut self.editor;
        match key.code {
            KeyCode::Char('c') if ctrl => self.quit(String::new()),
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
            KeyCode::Char('l') if ctrl => self.clear = true,
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
            .filter(|m| **m != self.me)
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
        for line in text.split('\n') {
            match input::parse(line) {
                Input::Nothing => {}
                Input::Help => {
                    for l in help_lines(self.operator) {
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
                self.next_seq += 1;
                let action = matches!(cmd, Command::Action(_));
                self.push_line(Line {
                    time_ms: now_ms(),
                    kind: Kind::Own {
                        text: s(text),
                        action,
                        delivery: Delivery::Pending,
                    },
                    mention: false,
                    seq: Some(self.next_seq),
                });
            }
            // Shown when the server echoes it, which also proves it went.
            Command::Private { .. } => self.next_seq += 1,
            Command::Kick { .. } if !self.operator => {
                self.error("/kick is for the server's operator".into());
                return;
            }
            _ => {}
        }
        self.outbox.push_back(cmd);
    }

    fn quit(&mut self, reason: String) {
        if self.quitting {
            return;
        }
        self.quitting = true;
        self.conn = Conn::Leaving;
        self.outbox.push_back(Command::Quit(reason));
    }
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
        "keys: Tab completes, Up/Down history, PageUp/PageDown scroll, Ctrl-W deletes a word, Alt-Enter a new line, Ctrl-C quits"
            .into(),
    );
    lines
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn app() -> App {
        app_with((80, 24), true)
    }

    /// The fixture every UI test starts from: bob in "den", alice present.
    pub(crate) fn app_with(size: (u16, u16), bell: bool) -> App {
        App::new(
            SessionInfo {
                server_name: "den".into(),
                server_addr: "127.0.0.1:8080".into(),
                trust: Some(TrustState::Verified),
                name: "bob".into(),
                members: vec!["alice".into(), "bob".into()],
                operator: false,
            },
            UiOptions { bell },
            UtcOffset::UTC,
            size,
        )
    }

    fn key(code: KeyCode) -> Msg {
        Msg::Term(TermEvent::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            app.update(key(KeyCode::Char(c)));
        }
    }

    #[test]
    fn mention_rules() {
        assert!(mentions("hey Bob, look", "bob"));
        assert!(mentions("bob", "bob"));
        assert!(!mentions("bobby tables", "bob"));
        assert!(!mentions("kebob", "bob"));
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
        a.update(key(KeyCode::Enter));
        assert_eq!(a.outbox, [Command::Say("half a thought".into())]);
        let last = a.lines.back().expect("own line");
        assert_eq!(last.seq, Some(1));
        a.update(Msg::Net(Event::Delivered { seq: 1 }));
        assert!(matches!(
            a.lines.back().map(|l| &l.kind),
            Some(Kind::Own {
                delivery: Delivery::Delivered,
                ..
            })
        ));
    }

    #[test]
    fn a_paste_waits_for_enter_then_sends_each_line() {
        let mut a = app();
        a.update(Msg::Term(TermEvent::Paste("one\ntwo\n".into())));
        assert!(a.outbox.is_empty());
        a.update(key(KeyCode::Enter));
        assert_eq!(
            a.outbox,
            [Command::Say("one".into()), Command::Say("two".into())]
        );
    }

    #[test]
    fn private_messages_are_numbered_but_shown_when_echoed() {
        let mut a = app();
        typed(&mut a, "/msg alice psst");
        a.update(key(KeyCode::Enter));
        typed(&mut a, "hi");
        a.update(key(KeyCode::Enter));
        assert_eq!(a.lines.back().and_then(|l| l.seq), Some(2));
        assert!(!a
            .lines
            .iter()
            .any(|l| matches!(&l.kind, Kind::Private { .. })));
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
            name: "carol".into(),
            reason: String::new(),
        }));
        assert_eq!(a.members, ["alicia", "bob"]);
        assert!(!a.ring);
        a.update(Msg::Net(Event::Chat {
            from: "alicia".into(),
            text: "bob: ping".into(),
            time_ms: 0,
        }));
        assert!(a.ring);
        a.update(Msg::Net(Event::Renamed {
            old: "bob".into(),
            new: "robert".into(),
        }));
        assert_eq!(a.me, "robert");
    }

    #[test]
    fn quit_keys() {
        let mut a = app();
        typed(&mut a, "x");
        a.update(Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Char('d'),
            KeyModifiers::CONTROL,
        ))));
        assert!(!a.quitting, "Ctrl-D on a non-empty line is delete");
        a.update(Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
        ))));
        assert!(a.quitting);
        assert_eq!(a.outbox, [Command::Quit(String::new())]);
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
