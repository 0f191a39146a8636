//! The input line: a small line editor with the keys people know from
//! shells and IRC clients, a history, and paste that never sends by itself.
//!
//! The buffer may hold newlines (from a pasted block, or Alt-Enter); they
//! are shown as `⏎` and each line becomes its own message when the user
//! presses Enter. Nothing here touches the terminal: the app feeds it keys.
//!
//! The cursor moves and deletes by grapheme cluster, not by `char`: a
//! thumbs-up with a skin tone (`👍🏽`) is two `char`s but one thing on the
//! screen, and stepping into its middle would split the modifier off.

use unicode_segmentation::UnicodeSegmentation;

/// How many submitted lines Up/Down can recall.
const HISTORY: usize = 200;

/// The text being typed, the cursor, and the history.
#[derive(Debug, Default)]
pub struct Editor {
    /// The text, one `char` per element so the cursor is a plain index.
    buf: Vec<char>,
    /// Index into `buf`, `0..=buf.len()`.
    cursor: usize,
    history: Vec<String>,
    /// Which history entry is shown, if the user went back in time.
    hist_pos: Option<usize>,
    /// What was being typed before Up was first pressed.
    draft: String,
}

impl Editor {
    /// The text as a string.
    pub fn text(&self) -> String {
        self.buf.iter().collect()
    }

    /// The text as characters.
    pub fn chars(&self) -> &[char] {
        &self.buf
    }

    /// The cursor, in characters from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Whether nothing is typed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Inserts one character at the cursor.
    pub fn insert(&mut self, c: char) {
        self.buf.insert(self.cursor, c);
        self.cursor += 1;
    }

    /// Inserts pasted text at the cursor. Line endings become `\n` (shown
    /// as `⏎`), tabs become spaces, other control characters are dropped:
    /// the paste is text to review, not keystrokes.
    pub fn paste(&mut self, text: &str) {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let text = text.strip_suffix('\n').unwrap_or(&text);
        for c in text.chars() {
            match c {
                '\n' => self.insert('\n'),
                '\t' => {
                    for _ in 0..4 {
                        self.insert(' ');
                    }
                }
                c if c.is_control() => {}
                c => self.insert(c),
            }
        }
    }

    /// Replaces `start..cursor` with `with` and puts the cursor after it
    /// (tab completion).
    pub fn replace_before_cursor(&mut self, start: usize, with: &str) {
        let start = start.min(self.cursor);
        self.buf.splice(start..self.cursor, with.chars());
        self.cursor = start + with.chars().count();
    }

    /// Where each grapheme cluster starts, in `char`s, and the end.
    fn boundaries(&self) -> Vec<usize> {
        let text = self.text();
        let mut out = Vec::with_capacity(self.buf.len() + 1);
        let mut at = 0;
        for g in text.graphemes(true) {
            out.push(at);
            at += g.chars().count();
        }
        out.push(at);
        out
    }

    /// The cluster boundary before the cursor.
    fn prev_boundary(&self) -> usize {
        self.boundaries()
            .into_iter()
            .rev()
            .find(|&b| b < self.cursor)
            .unwrap_or(0)
    }

    /// The cluster boundary after the cursor.
    fn next_boundary(&self) -> usize {
        self.boundaries()
            .into_iter()
            .find(|&b| b > self.cursor)
            .unwrap_or(self.buf.len())
    }

    /// Backspace: the cluster before the cursor.
    pub fn backspace(&mut self) {
        let start = self.prev_boundary();
        self.buf.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Delete: the cluster under the cursor.
    pub fn delete(&mut self) {
        let end = self.next_boundary();
        self.buf.drain(self.cursor..end);
    }

    /// Left arrow.
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary();
    }

    /// Right arrow.
    pub fn right(&mut self) {
        self.cursor = self.next_boundary();
    }

    /// Empties the line (Ctrl-C with something typed); the history stays.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.cursor = 0;
        self.hist_pos = None;
    }

    /// Home, Ctrl-A.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// End, Ctrl-E.
    pub fn end(&mut self) {
        self.cursor = self.buf.len();
    }

    /// Where the word before the cursor starts (skipping spaces first, as
    /// shells do).
    fn word_start(&self) -> usize {
        let mut i = self.cursor;
        while i > 0 && self.buf[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !self.buf[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    /// Where the word after the cursor ends.
    fn word_end(&self) -> usize {
        let mut i = self.cursor;
        while i < self.buf.len() && self.buf[i].is_whitespace() {
            i += 1;
        }
        while i < self.buf.len() && !self.buf[i].is_whitespace() {
            i += 1;
        }
        i
    }

    /// Ctrl-W, Alt-Backspace: delete the word before the cursor.
    pub fn delete_word_before(&mut self) {
        let start = self.word_start();
        self.buf.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Alt-D: delete the word after the cursor.
    pub fn delete_word_after(&mut self) {
        let end = self.word_end();
        self.buf.drain(self.cursor..end);
    }

    /// Ctrl-Left, Alt-B.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start();
    }

    /// Ctrl-Right, Alt-F.
    pub fn word_right(&mut self) {
        self.cursor = self.word_end();
    }

    /// Ctrl-U: delete everything before the cursor.
    pub fn kill_to_start(&mut self) {
        self.buf.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Ctrl-K: delete everything from the cursor on.
    pub fn kill_to_end(&mut self) {
        self.buf.truncate(self.cursor);
    }

    fn set_text(&mut self, text: &str) {
        self.buf = text.chars().collect();
        self.cursor = self.buf.len();
    }

    /// Up: the previous history entry; what was being typed is kept and
    /// comes back with Down.
    pub fn history_up(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let pos = match self.hist_pos {
            None => {
                self.draft = self.text();
                self.history.len() - 1
            }
            Some(p) => p.saturating_sub(1),
        };
        self.hist_pos = Some(pos);
        let entry = self.history[pos].clone();
        self.set_text(&entry);
    }

    /// Down: the next history entry, then the draft.
    pub fn history_down(&mut self) {
        let Some(pos) = self.hist_pos else { return };
        if pos + 1 < self.history.len() {
            self.hist_pos = Some(pos + 1);
            let entry = self.history[pos + 1].clone();
            self.set_text(&entry);
        } else {
            self.hist_pos = None;
            let draft = std::mem::take(&mut self.draft);
            self.set_text(&draft);
        }
    }

    /// Enter: takes the text (for sending), remembers it in the history and
    /// clears the line.
    pub fn submit(&mut self) -> String {
        let text = self.text();
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            if self.history.len() == HISTORY {
                self.history.remove(0);
            }
            self.history.push(text.clone());
        }
        self.buf.clear();
        self.cursor = 0;
        self.hist_pos = None;
        self.draft.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Editor {
        let mut e = Editor::default();
        for c in s.chars() {
            e.insert(c);
        }
        e
    }

    #[test]
    fn cursor_movement_and_insertion() {
        let mut e = typed("helo");
        e.left();
        e.insert('l');
        assert_eq!(e.text(), "hello");
        e.home();
        e.insert('>');
        e.end();
        e.insert('!');
        assert_eq!(e.text(), ">hello!");
        e.right();
        assert_eq!(e.cursor(), 7);
    }

    #[test]
    fn an_emoji_with_a_modifier_moves_and_deletes_as_one() {
        let mut e = typed("a👍🏽b");
        assert_eq!(e.chars().len(), 4);
        e.left();
        e.left();
        assert_eq!(e.cursor(), 1, "the cursor never lands between 👍 and 🏽");
        e.right();
        assert_eq!(e.cursor(), 3);
        e.backspace();
        assert_eq!(e.text(), "ab");
        let mut e = typed("👍🏽x");
        e.home();
        e.delete();
        assert_eq!(e.text(), "x");
    }

    #[test]
    fn word_and_line_deletion() {
        let mut e = typed("one two  three");
        e.delete_word_before();
        assert_eq!(e.text(), "one two  ");
        e.delete_word_before();
        assert_eq!(e.text(), "one ");
        e.home();
        e.delete_word_after();
        assert_eq!(e.text(), " ");
        let mut e = typed("abc def");
        e.word_left();
        e.kill_to_end();
        assert_eq!(e.text(), "abc ");
        e.left();
        e.kill_to_start();
        assert_eq!(e.text(), " ");
        assert_eq!(e.cursor(), 0);
    }

    #[test]
    fn history_keeps_the_draft() {
        let mut e = typed("first");
        e.submit();
        for c in "second".chars() {
            e.insert(c);
        }
        e.submit();
        for c in "draft".chars() {
            e.insert(c);
        }
        e.history_up();
        assert_eq!(e.text(), "second");
        e.history_up();
        e.history_up();
        assert_eq!(e.text(), "first");
        e.history_down();
        assert_eq!(e.text(), "second");
        e.history_down();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn paste_keeps_lines_and_drops_controls() {
        let mut e = typed("> ");
        e.paste("a\r\nb\tc\u{1b}[2J\n");
        assert_eq!(e.text(), "> a\nb    c[2J");
        assert_eq!(e.submit(), "> a\nb    c[2J");
        assert!(e.is_empty());
    }
}
