//! Conversations: what the view can show one of at a time (a room, or a
//! private conversation with one person), each with its own scrollback,
//! scroll position, unread count and the marker line that says where the
//! user stopped reading.
//!
//! The rules live here, as plain data, so they are tested without a
//! screen; [`super::app`] decides which conversation an event belongs to
//! and when the user switches.

use std::collections::VecDeque;

use qchat_proto::names;

use super::scrollback::{Kind, Line};
use crate::wording::s;

/// The room everyone is in: the only one a server without rooms has.
pub const LOBBY: &str = "#lobby";

/// Scrollback lines kept per conversation; older ones are dropped.
pub const SCROLLBACK: usize = 5_000;

/// Which conversation: the key the view files lines under.
#[derive(Debug, Clone)]
pub enum Conv {
    /// A room, by its name with the `#`.
    Room(String),
    /// A private conversation, by the other person's name.
    Private(String),
}

impl PartialEq for Conv {
    /// Room names and member names are compared as the server compares
    /// them (case and look-alikes folded), so `#Dev` and `#dev`, or `Alice`
    /// and `alice`, are one conversation.
    fn eq(&self, other: &Conv) -> bool {
        match (self, other) {
            (Conv::Room(a), Conv::Room(b)) | (Conv::Private(a), Conv::Private(b)) => {
                names::fold(a) == names::fold(b)
            }
            _ => false,
        }
    }
}

impl Eq for Conv {}

impl Conv {
    /// The room everyone starts in.
    pub fn lobby() -> Conv {
        Conv::Room(LOBBY.into())
    }

    /// The name the list and the status line show, sanitised. A private
    /// conversation's has an `@` before the person's name, which a room's
    /// never has: a member may be called `#lobby`, and must not pass for
    /// the room in the list.
    pub fn label(&self) -> String {
        match self {
            Conv::Room(name) => s(name),
            Conv::Private(name) => format!("@{}", s(name)),
        }
    }
}

/// One conversation's state.
#[derive(Debug)]
pub struct Conversation {
    /// Which one.
    pub conv: Conv,
    /// The scrollback, oldest first.
    pub lines: VecDeque<Line>,
    /// Its members (raw names) for a room; a private conversation's two
    /// people are known without a list.
    pub members: Vec<String>,
    /// How many rows the view is scrolled up from the bottom.
    pub scroll: usize,
    /// Lines that arrived while scrolled up.
    pub unseen: usize,
    /// Messages that arrived while another conversation was on the screen.
    pub unread: usize,
    /// Whether one of those mentioned us.
    pub mentioned: bool,
    /// When a line last came (the app's count of lines added).
    pub touched: u64,
    /// A room's topic (empty: none), as the server last said it.
    pub topic: String,
    /// We are no longer in this room (we left it, or were removed): its
    /// lines stay to be read, but nothing typed here can go anywhere.
    pub parted: bool,
    /// The user left this conversation: the next line that arrives gets
    /// the marker before it.
    armed: bool,
}

impl Conversation {
    /// An empty conversation, not yet looked at.
    pub fn new(conv: Conv) -> Conversation {
        Conversation {
            conv,
            lines: VecDeque::new(),
            members: Vec::new(),
            scroll: 0,
            unseen: 0,
            unread: 0,
            mentioned: false,
            touched: 0,
            topic: String::new(),
            parted: false,
            armed: false,
        }
    }

    /// Adds a line. `on_screen`: the user is looking at this conversation
    /// (nothing is unread then); `message`: the line is something someone
    /// wrote, which is what the unread count counts (joins and answers to
    /// commands are news, not messages); `rows`: how many rows the line
    /// takes, to keep a scrolled-up view still.
    pub fn push(&mut self, line: Line, on_screen: bool, message: bool, rows: usize) {
        if !on_screen {
            if std::mem::take(&mut self.armed) {
                self.lines.push_back(Line {
                    time_ms: line.time_ms,
                    kind: Kind::Marker,
                    mention: false,
                    seq: None,
                });
                if self.scroll > 0 {
                    self.scroll += 1;
                }
            }
            if message {
                self.unread += 1;
                self.mentioned |= line.mention;
            }
        }
        if self.scroll > 0 {
            self.scroll += rows;
            self.unseen += 1;
        }
        self.lines.push_back(line);
        if self.lines.len() > SCROLLBACK {
            self.lines.pop_front();
        }
    }

    /// The user looks at this conversation now: nothing in it is unread,
    /// and the marker (if lines came while away) stays where it is, so the
    /// user sees where the new ones start.
    pub fn looked_at(&mut self) {
        self.unread = 0;
        self.mentioned = false;
        self.armed = false;
    }

    /// The user turns to another conversation: the old marker goes, and
    /// the next line to arrive gets a new one. `rows_below` tells how many
    /// rows the lines after the old marker take, to keep a scrolled-up
    /// view where it was.
    pub fn left(&mut self, rows_below: impl FnOnce(&VecDeque<Line>, usize) -> usize) {
        self.clear_marker(rows_below);
        self.armed = true;
    }

    /// The marker has done its job (the user wrote here: they have read
    /// up to now).
    pub fn clear_marker(&mut self, rows_below: impl FnOnce(&VecDeque<Line>, usize) -> usize) {
        let Some(at) = self.marker() else {
            return;
        };
        if self.scroll > 0 && rows_below(&self.lines, at + 1) < self.scroll {
            // The marker's row was below the view: the view moves down
            // with the rows under it.
            self.scroll -= 1;
        }
        self.lines.remove(at);
    }

    /// Where the marker line is, if there is one.
    pub fn marker(&self) -> Option<usize> {
        self.lines
            .iter()
            .rposition(|l| matches!(l.kind, Kind::Marker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line {
            time_ms: 0,
            kind: Kind::Info(text.into()),
            mention: false,
            seq: None,
        }
    }

    fn texts(c: &Conversation) -> Vec<String> {
        c.lines
            .iter()
            .map(|l| match &l.kind {
                Kind::Info(t) => t.clone(),
                Kind::Marker => "--".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn no_rows(_: &VecDeque<Line>, _: usize) -> usize {
        0
    }

    #[test]
    fn names_compare_as_the_server_compares_them() {
        assert_eq!(Conv::Room("#Lobby".into()), Conv::lobby());
        assert_eq!(Conv::Private("ALICE".into()), Conv::Private("alice".into()));
        assert_ne!(Conv::Private("lobby".into()), Conv::Room("lobby".into()));
        assert_eq!(Conv::Private("a\u{1b}b".into()).label(), "@a^[b");
        // Never taken for the room.
        assert_ne!(Conv::Private(LOBBY.into()).label(), LOBBY);
    }

    #[test]
    fn the_marker_goes_before_the_first_line_that_came_while_away() {
        let mut c = Conversation::new(Conv::lobby());
        c.push(line("seen"), true, true, 1);
        assert_eq!(c.unread, 0);
        c.left(no_rows);
        // Nothing new: no marker, even after looking again.
        c.looked_at();
        assert_eq!(c.marker(), None);
        c.left(no_rows);
        c.push(line("new 1"), false, true, 1);
        c.push(line("a join"), false, false, 1);
        c.push(line("new 2"), false, true, 1);
        assert_eq!(texts(&c), ["seen", "--", "new 1", "a join", "new 2"]);
        // Joins are news, not messages.
        assert_eq!(c.unread, 2);
        c.looked_at();
        assert_eq!(c.unread, 0);
        // While looking, the marker stays and nothing new is unread.
        c.push(line("live"), true, true, 1);
        assert_eq!(c.marker(), Some(1));
        // Left again: it moves to where the user stopped this time.
        c.left(no_rows);
        c.push(line("later"), false, true, 1);
        assert_eq!(
            texts(&c),
            ["seen", "new 1", "a join", "new 2", "live", "--", "later"]
        );
        // Writing here clears it.
        c.looked_at();
        c.clear_marker(no_rows);
        assert_eq!(c.marker(), None);
    }

    #[test]
    fn a_mention_while_away_marks_the_conversation_until_looked_at() {
        let mut c = Conversation::new(Conv::Private("alice".into()));
        let mut l = line("bob!");
        l.mention = true;
        c.push(l.clone(), true, true, 1);
        assert!(!c.mentioned, "seen as it came");
        c.push(l, false, true, 1);
        assert!(c.mentioned);
        assert_eq!(c.unread, 1);
        c.looked_at();
        assert!(!c.mentioned);
    }

    #[test]
    fn a_scrolled_up_view_stays_still_as_the_marker_comes_and_goes() {
        let mut c = Conversation::new(Conv::lobby());
        for i in 0..10 {
            c.push(line(&format!("{i}")), true, true, 1);
        }
        c.scroll = 4;
        c.left(no_rows);
        c.push(line("two rows"), false, true, 2);
        // The marker's row and the line's two.
        assert_eq!(c.scroll, 7);
        assert_eq!(c.unseen, 1);
        c.looked_at();
        // Leaving again removes the old marker, which was below the view.
        c.left(|lines, from| lines.iter().skip(from).count() + 1);
        assert_eq!(c.scroll, 6);
        assert_eq!(c.marker(), None);
    }
}
