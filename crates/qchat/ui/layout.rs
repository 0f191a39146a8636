//! Where things go on the screen, and how wide text is.
//!
//! ```text
//! ┌ conversations ┬ scrollback ─────────────────────┬ members ┐
//! │1 #lobby       │ 12:01 <alice> hello             │ alice   │
//! │2 @carol 3 !   │ 12:02 * bob joined              │ bob     │
//! ├ status: server, trust, connection, members ─────────────────┤
//! │ > the input line, wrapped, with ⏎ for newlines              │
//! ```
//!
//! On a terminal narrower than [`SPLIT_MIN_TERMINAL_WIDTH`] the two lists
//! share one column on the right (conversations above, members below);
//! narrower than [`SIDE_MIN_TERMINAL_WIDTH`] both are hidden and the status
//! line names the conversation instead.
//!
//! Used by the state (scrolling by pages needs the scrollback's height, a
//! click needs to know which entry is where) and by the drawing; it reads
//! plain data, not the app, so neither depends on the other through it.

use qchat_proto::text::sanitize;
use ratatui::layout::{Constraint, Layout, Rect};
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::editor::Editor;

/// Below this width the lists are hidden: the conversation matters more,
/// and the status line says which one it is.
pub const SIDE_MIN_TERMINAL_WIDTH: u16 = 50;

/// From this width the conversation list has a column of its own on the
/// left; below it, it shares the member list's column: three columns on an
/// 80-column terminal would leave the messages too little room.
pub const SPLIT_MIN_TERMINAL_WIDTH: u16 = 100;

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
    /// The conversation list, if there is room: entry `i` (from
    /// [`list_offset`]) on its row `i`.
    pub convs: Option<Rect>,
    /// The status line.
    pub status: Rect,
    /// The input line(s).
    pub input: Rect,
}

fn list_width<'a>(entries: impl Iterator<Item = &'a str>) -> u16 {
    let longest = entries.map(|m| text_width(&sanitize(m))).max().unwrap_or(0);
    u16::try_from(longest + 4).unwrap_or(u16::MAX).clamp(12, 24)
}

/// The first entry the conversation list shows when it has `rows` rows
/// for `count` entries: the top, unless that would hide the current one.
pub fn list_offset(current: usize, count: usize, rows: u16) -> usize {
    let rows = usize::from(rows).max(1);
    if current < rows {
        0
    } else {
        (current + 1 - rows).min(count.saturating_sub(rows))
    }
}

/// Which conversation entry is at column `x`, row `y`, if any.
pub fn conv_at(areas: &Areas, current: usize, count: usize, x: u16, y: u16) -> Option<usize> {
    let area = areas.convs?;
    if !area.contains(ratatui::layout::Position::new(x, y)) {
        return None;
    }
    let i = list_offset(current, count, area.height) + usize::from(y - area.y);
    (i < count).then_some(i)
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

/// Splits the screen: the scrollback and the lists on top, then one
/// status row, then the input (growing with its text, up to a limit).
/// `convs` are the conversation list's entries as drawn.
pub fn areas(area: Rect, members: &[String], convs: &[String], editor: &Editor) -> Areas {
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
    let some = |r: Rect| (r.width > 0 && r.height > 0).then_some(r);
    let members_w = list_width(members.iter().map(String::as_str));
    let convs_w = list_width(convs.iter().map(String::as_str));
    if body.height == 0 || area.width < SIDE_MIN_TERMINAL_WIDTH {
        return Areas {
            scrollback: body,
            members: None,
            convs: None,
            status,
            input,
        };
    }
    if area.width >= SPLIT_MIN_TERMINAL_WIDTH {
        let [left, scrollback, right] = Layout::horizontal([
            Constraint::Length(convs_w),
            Constraint::Fill(1),
            Constraint::Length(members_w),
        ])
        .areas(body);
        return Areas {
            scrollback,
            members: some(right),
            convs: some(left),
            status,
            input,
        };
    }
    // One column: the conversations on top (at most half of it, so the
    // member list keeps room), the members below.
    let [scrollback, side] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(members_w.max(convs_w)),
    ])
    .areas(body);
    let count = u16::try_from(convs.len()).unwrap_or(u16::MAX);
    let top = count.clamp(1, (side.height / 2).max(1));
    let [upper, lower] =
        Layout::vertical([Constraint::Length(top), Constraint::Fill(1)]).areas(side);
    Areas {
        scrollback,
        members: some(lower),
        convs: some(upper),
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
        let convs = vec!["1 #lobby".to_string(), "2 @carol 3 !".to_string()];
        for (w, h) in [
            (120, 24),
            (80, 24),
            (30, 8),
            (1, 1),
            (2, 40),
            (80, 1),
            (0, 0),
            (60, 3),
        ] {
            let a = areas(Rect::new(0, 0, w, h), &members, &convs, &e);
            let right = a
                .members
                .or(a.convs.filter(|c| c.x > 0))
                .map_or(0, |m| m.width);
            let left = a.convs.filter(|c| c.x == 0).map_or(0, |c| c.width);
            assert_eq!(left + a.scrollback.width + right, w, "{w}x{h}");
            assert!(a.status.height <= 1 && a.input.y + a.input.height <= h.max(1));
        }
    }

    #[test]
    fn the_lists_collapse_as_the_terminal_narrows() {
        let e = Editor::default();
        let members = vec!["alice".to_string(), "bob".to_string()];
        let convs = vec!["1 #lobby".to_string(), "2 @carol".to_string()];
        let at = |w| areas(Rect::new(0, 0, w, 20), &members, &convs, &e);
        // Wide: conversations on the left, members on the right.
        let wide = at(SPLIT_MIN_TERMINAL_WIDTH);
        let (c, m) = (wide.convs.expect("convs"), wide.members.expect("members"));
        assert_eq!(c.x, 0);
        assert!(wide.scrollback.x >= c.width && m.x > wide.scrollback.x);
        assert_eq!(c.height, m.height);
        // Narrower: one column on the right, conversations above members.
        let mid = at(SPLIT_MIN_TERMINAL_WIDTH - 1);
        let (c, m) = (mid.convs.expect("convs"), mid.members.expect("members"));
        assert_eq!(mid.scrollback.x, 0);
        assert_eq!((c.x, c.height), (m.x, 2));
        assert_eq!(m.y, c.y + 2);
        // Narrowest: no lists at all.
        let narrow = at(SIDE_MIN_TERMINAL_WIDTH - 1);
        assert_eq!((narrow.convs, narrow.members), (None, None));
        assert_eq!(narrow.scrollback.width, SIDE_MIN_TERMINAL_WIDTH - 1);
    }

    #[test]
    fn a_click_finds_the_entry_under_it_even_when_the_list_scrolls() {
        let e = Editor::default();
        let convs: Vec<String> = (1..=12).map(|i| format!("{i} #room{i}")).collect();
        // 8 rows of body: the list shares the column and gets 4 of them.
        let a = areas(Rect::new(0, 0, 60, 10), &[], &convs, &e);
        let c = a.convs.expect("convs");
        assert_eq!(c.height, 4);
        assert_eq!(conv_at(&a, 0, 12, c.x, c.y), Some(0));
        assert_eq!(conv_at(&a, 0, 12, c.x + 3, c.y + 3), Some(3));
        assert_eq!(conv_at(&a, 0, 12, 0, c.y), None, "in the scrollback");
        // The current one is always shown: the list starts further down.
        assert_eq!(list_offset(9, 12, 4), 6);
        assert_eq!(conv_at(&a, 9, 12, c.x, c.y + 3), Some(9));
        assert_eq!(list_offset(11, 12, 40), 0);
    }
}
