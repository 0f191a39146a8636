//! Where things go on the screen, and how wide text is.
//!
//! ```text
//! ┌ scrollback ───────────────────────────┬ members ┐
//! │ 12:01 <alice> hello                   │ alice   │
//! │ 12:02 * bob joined                    │ bob     │
//! ├ status: server, trust, connection, members ─────┤
//! │ > the input line, wrapped, with ⏎ for newlines   │
//! ```
//!
//! Used by the state (scrolling by pages needs the scrollback's height) and
//! by the drawing; it reads plain data, not the app, so neither depends on
//! the other through it.

use qchat_proto::text::sanitize;
use ratatui::layout::{Constraint, Layout, Rect};
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::editor::Editor;

/// Below this width the member list is hidden: the conversation matters
/// more.
const MEMBERS_MIN_TERMINAL_WIDTH: u16 = 50;

/// The most rows the input may take.
const INPUT_MAX_ROWS: u16 = 5;

/// What `⏎` stands for in the input line.
pub const NEWLINE_MARK: char = '⏎';

/// The prompt before the input.
pub const PROMPT: &str = "> ";

/// The columns a grapheme cluster takes on a terminal (a skin-tone
/// modifier or a combining mark adds nothing). The same measure ratatui
/// draws with, so the cursor we place and the text it draws agree.
pub fn cluster_width(g: &str) -> usize {
    UnicodeWidthStr::width(g)
}

/// The columns a string takes.
pub fn text_width(s: &str) -> usize {
    s.graphemes(true).map(cluster_width).sum()
}

/// The areas of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// The conversation.
    pub scrollback: Rect,
    /// The member list, if there is room.
    pub members: Option<Rect>,
    /// The status line.
    pub status: Rect,
    /// The input line(s).
    pub input: Rect,
}

fn members_width(term_width: u16, members: &[String]) -> u16 {
    if term_width < MEMBERS_MIN_TERMINAL_WIDTH {
        return 0;
    }
    let longest = members
        .iter()
        .map(|m| text_width(&sanitize(m)))
        .max()
        .unwrap_or(0);
    u16::try_from(longest + 4).unwrap_or(u16::MAX).clamp(12, 24)
}

/// The input text as shown (newlines as `⏎`), wrapped at `width`, and the
/// cursor's row and column.
pub fn input_rows(editor: &Editor, width: u16) -> (Vec<String>, (u16, u16)) {
    let width = usize::from(width.max(1));
    let text: String = editor
        .chars()
        .iter()
        .map(|&c| if c == '\n' { NEWLINE_MARK } else { c })
        .collect();
    let mut rows = vec![String::new()];
    let mut col = 0;
    let mut cursor = None;
    // `at` counts chars: the editor's cursor is a char index on a cluster
    // boundary.
    let mut at = 0;
    for g in text.graphemes(true) {
        let w = cluster_width(g);
        if col + w > width {
            rows.push(String::new());
            col = 0;
        }
        if at == editor.cursor() {
            cursor = Some((rows.len() - 1, col));
        }
        if let Some(r) = rows.last_mut() {
            r.push_str(g);
        }
        col += w;
        at += g.chars().count();
    }
    let (row, col) = match cursor {
        Some(c) => c,
        None => {
            if col >= width {
                rows.push(String::new());
                col = 0;
            }
            (rows.len() - 1, col)
        }
    };
    let row = u16::try_from(row).unwrap_or(u16::MAX);
    let col = u16::try_from(col).unwrap_or(u16::MAX);
    (rows, (row, col))
}

/// Splits the screen: the scrollback and member list on top, then one
/// status row, then the input (growing with its text, up to a limit).
pub fn areas(area: Rect, members: &[String], editor: &Editor) -> Areas {
    let prompt = u16::try_from(PROMPT.len()).unwrap_or(2);
    let (rows, _) = input_rows(editor, area.width.saturating_sub(prompt));
    let max_input = INPUT_MAX_ROWS.min(area.height / 3).max(1);
    let input_h = u16::try_from(rows.len())
        .unwrap_or(u16::MAX)
        .clamp(1, max_input);
    let [body, status, input] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(input_h),
    ])
    .areas(area);
    let mw = if body.height == 0 {
        0
    } else {
        members_width(area.width, members)
    };
    let [scrollback, list] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(mw)]).areas(body);
    Areas {
        scrollback,
        members: (list.width > 0 && list.height > 0).then_some(list),
        status,
        input,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emoji_with_a_modifier_is_two_columns() {
        assert_eq!(text_width("👍🏽"), 2);
        assert_eq!(text_width("a👍🏽b"), 4);
        assert_eq!(text_width("☺\u{FE0F}"), 2);
        assert_eq!(text_width("é"), 1);
    }

    #[test]
    fn the_cursor_stays_after_an_emoji() {
        let mut e = Editor::default();
        for c in "hi 👍🏽".chars() {
            e.insert(c);
        }
        let (rows, cursor) = input_rows(&e, 40);
        assert_eq!(rows, ["hi 👍🏽"]);
        assert_eq!(cursor, (0, 5));
        e.left();
        assert_eq!(input_rows(&e, 40).1, (0, 3));
    }

    #[test]
    fn the_areas_fill_the_screen_at_any_size() {
        let e = Editor::default();
        let members = vec!["alice".to_string()];
        for (w, h) in [(80, 24), (30, 8), (1, 1), (2, 40), (80, 1), (0, 0)] {
            let a = areas(Rect::new(0, 0, w, h), &members, &e);
            let side = a.members.map_or(0, |m| m.width);
            assert_eq!(a.scrollback.width + side, w, "{w}x{h}");
            assert!(a.status.height <= 1 && a.input.y + a.input.height <= h.max(1));
        }
    }
}
