//! Drawing: a pure function of the [`App`] state onto a ratatui frame.
//!
//! ```text
//! ┌ scrollback ───────────────────────────┬ members ┐
//! │ 12:01 <alice> hello                   │ alice   │
//! │ 12:02 * bob joined                    │ bob     │
//! ├ status: server, trust, connection, members ─────┤
//! │ > the input line, wrapped, with ⏎ for newlines   │
//! ```
//!
//! The scrollback is wrapped here rather than by ratatui's `Paragraph` so
//! that scrolling counts real rows and the view stays put while the user
//! reads older lines.

use qchat_client::TrustState;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;
use time::OffsetDateTime;
use unicode_width::UnicodeWidthChar;

use super::app::{App, Conn, Delivery, Kind, Line};
use qchat_proto::text::sanitize;

/// Below this width the member list is hidden: the conversation matters
/// more.
const MEMBERS_MIN_TERMINAL_WIDTH: u16 = 50;

/// The most rows the input may take.
const INPUT_MAX_ROWS: u16 = 5;

/// What `⏎` stands for in the input line.
const NEWLINE_MARK: char = '⏎';

/// Colours a name can get; bright enough on dark and light backgrounds.
const PALETTE: [Color; 10] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightBlue,
    Color::LightMagenta,
];

/// A name's colour: a stable hash (FNV-1a, case-insensitive), so everyone
/// keeps their colour across lines, sessions and renames back.
pub fn name_color(name: &str) -> Color {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.to_lowercase().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    PALETTE[h as usize % PALETTE.len()]
}

fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

/// `HH:MM` in the offset captured at startup.
pub fn hhmm(time_ms: u64, offset: time::UtcOffset) -> String {
    let secs = i64::try_from(time_ms / 1000).unwrap_or(0);
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => {
            let t = t.to_offset(offset);
            format!("{:02}:{:02}", t.hour(), t.minute())
        }
        Err(_) => "--:--".into(),
    }
}

/// The spans of one scrollback line, before wrapping.
fn line_spans(line: &Line, app: &App) -> Vec<Span<'static>> {
    let time_style = if line.mention {
        Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    } else {
        dim()
    };
    let mut out = vec![
        Span::styled(hhmm(line.time_ms, app.offset), time_style),
        Span::raw(" "),
    ];
    let text_style = if line.mention {
        Style::default()
            .fg(Color::Yellow)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let named = |n: &str| Span::styled(n.to_string(), Style::default().fg(name_color(n)));
    match &line.kind {
        Kind::Chat { from, text } => {
            out.extend([
                Span::raw("<"),
                named(from),
                Span::raw("> "),
                Span::styled(text.clone(), text_style),
            ]);
        }
        Kind::Action { from, text } => {
            out.extend([
                Span::raw("* "),
                named(from),
                Span::raw(" "),
                Span::styled(text.clone(), text_style.add_modifier(Modifier::ITALIC)),
            ]);
        }
        Kind::Own {
            text,
            action,
            delivery,
        } => {
            let me = sanitize(&app.me).into_owned();
            let me_span = Span::styled(
                me.clone(),
                Style::default()
                    .fg(name_color(&me))
                    .add_modifier(Modifier::BOLD),
            );
            let style = match delivery {
                // Grey until the server confirms, like a message in flight.
                Delivery::Pending => dim(),
                Delivery::Delivered => Style::default(),
                Delivery::Refused => Style::default()
                    .fg(Color::Red)
                    .add_modifier(Modifier::CROSSED_OUT),
            };
            if *action {
                out.extend([Span::raw("* "), me_span, Span::raw(" ")]);
            } else {
                out.extend([Span::raw("<"), me_span, Span::raw("> ")]);
            }
            out.push(Span::styled(text.clone(), style));
            if *delivery == Delivery::Refused {
                out.push(Span::styled(" (not sent)", Style::default().fg(Color::Red)));
            }
        }
        Kind::Private { from, to, text } => {
            let style = Style::default()
                .fg(Color::LightMagenta)
                .add_modifier(Modifier::BOLD);
            out.extend([
                Span::styled("[private ", style),
                named(from),
                Span::styled(" → ", style),
                named(to),
                Span::styled("] ", style),
                Span::styled(text.clone(), text_style),
            ]);
        }
        Kind::History { from, text, action } => {
            let style = dim().add_modifier(Modifier::ITALIC);
            out.push(Span::styled("[history] ", style));
            let body = if *action {
                format!("* {from} {text}")
            } else {
                format!("<{from}> {text}")
            };
            out.push(Span::styled(body, style));
        }
        Kind::Info(text) => out.push(Span::styled(
            format!("* {text}"),
            Style::default().fg(Color::Cyan),
        )),
        Kind::Error(text) => out.push(Span::styled(
            format!("! {text}"),
            Style::default().fg(Color::Red),
        )),
        Kind::Server(text) => out.push(Span::styled(
            format!("[server] {text}"),
            Style::default().fg(Color::Green),
        )),
    }
    out
}

/// Continuation rows start under the text, past the timestamp.
const INDENT: usize = 6;

/// Wraps spans into rows of at most `width` columns, breaking at the last
/// space when there is one, continuation rows indented.
fn wrap(spans: Vec<Span<'static>>, width: usize) -> Vec<TextLine<'static>> {
    let width = width.max(INDENT + 4);
    // Flatten to styled characters: simple, and lines are short.
    let cells: Vec<(char, Style)> = spans
        .iter()
        .flat_map(|sp| sp.content.chars().map(move |c| (c, sp.style)))
        .collect();
    let mut rows: Vec<Vec<(char, Style)>> = Vec::new();
    let mut row: Vec<(char, Style)> = Vec::new();
    let mut col = 0;
    for (c, st) in cells {
        let w = c.width().unwrap_or(0);
        if col + w > width {
            // Carry the unfinished word to the next row if there is a
            // space to break at (past the indent).
            let floor = if rows.is_empty() { 0 } else { INDENT };
            let carry = match row.iter().rposition(|(c, _)| *c == ' ') {
                Some(i) if i + 1 > floor && i + 1 < row.len() => row.split_off(i + 1),
                _ => Vec::new(),
            };
            rows.push(std::mem::take(&mut row));
            row = vec![(' ', Style::default()); INDENT];
            col = INDENT;
            for (c, st) in carry {
                col += c.width().unwrap_or(0);
                row.push((c, st));
            }
        }
        col += w;
        row.push((c, st));
    }
    rows.push(row);
    rows.into_iter()
        .map(|r| {
            // Re-group runs of one style into spans.
            let mut spans: Vec<Span<'static>> = Vec::new();
            for (c, st) in r {
                match spans.last_mut() {
                    Some(last) if last.style == st => last.content.to_mut().push(c),
                    _ => spans.push(Span::styled(c.to_string(), st)),
                }
            }
            TextLine::from(spans)
        })
        .collect()
}

/// One scrollback line as the rows it takes at `width`.
pub fn line_rows(line: &Line, app: &App, width: u16) -> Vec<TextLine<'static>> {
    wrap(line_spans(line, app), usize::from(width))
}

/// The areas of the screen.
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

fn members_width(term_width: u16, app: &App) -> u16 {
    if term_width < MEMBERS_MIN_TERMINAL_WIDTH {
        return 0;
    }
    let longest = app
        .members
        .iter()
        .map(|m| sanitize(m).chars().count())
        .max()
        .unwrap_or(0);
    u16::try_from(longest + 4).unwrap_or(u16::MAX).clamp(12, 24)
}

/// The width of the scrollback pane for a terminal this wide.
pub fn scrollback_width(term_width: u16, app: &App) -> u16 {
    term_width
        .saturating_sub(members_width(term_width, app))
        .max(1)
}

/// The height of the scrollback pane for a terminal this size.
pub fn scrollback_height(size: (u16, u16), app: &App) -> u16 {
    layout(Rect::new(0, 0, size.0, size.1), app)
        .scrollback
        .height
}

/// The input text as shown (newlines as `⏎`), wrapped at `width`, and the
/// cursor's row and column.
fn input_rows(app: &App, width: u16) -> (Vec<String>, (u16, u16)) {
    let width = usize::from(width.max(1));
    let mut rows = vec![String::new()];
    let mut col = 0;
    let mut cursor = (0, 0);
    let chars = app.editor.chars();
    for (i, &c) in chars.iter().enumerate() {
        let shown = if c == '\n' { NEWLINE_MARK } else { c };
        let w = shown.width().unwrap_or(0);
        if col + w > width {
            rows.push(String::new());
            col = 0;
        }
        if i == app.editor.cursor() {
            cursor = (rows.len() - 1, col);
        }
        if let Some(r) = rows.last_mut() {
            r.push(shown);
        }
        col += w;
    }
    if app.editor.cursor() >= chars.len() {
        if col >= width {
            rows.push(String::new());
            col = 0;
        }
        cursor = (rows.len() - 1, col);
    }
    let row = u16::try_from(cursor.0).unwrap_or(u16::MAX);
    let col = u16::try_from(cursor.1).unwrap_or(u16::MAX);
    (rows, (row, col))
}

/// The prompt before the input.
const PROMPT: &str = "> ";

/// Splits the screen.
pub fn layout(area: Rect, app: &App) -> Areas {
    let input_width = area.width.saturating_sub(2);
    let (rows, _) = input_rows(app, input_width);
    let max_input = INPUT_MAX_ROWS.min(area.height / 3).max(1);
    let input_h = u16::try_from(rows.len())
        .unwrap_or(u16::MAX)
        .clamp(1, max_input)
        .min(area.height);
    let status_h = 1.min(area.height - input_h);
    let body_h = area.height - input_h - status_h;
    let mw = members_width(area.width, app);
    let body = Rect::new(area.x, area.y, area.width, body_h);
    Areas {
        scrollback: Rect::new(body.x, body.y, body.width - mw, body_h),
        members: (mw > 0 && body_h > 0)
            .then(|| Rect::new(body.x + body.width - mw, body.y, mw, body_h)),
        status: Rect::new(area.x, area.y + body_h, area.width, status_h),
        input: Rect::new(area.x, area.y + body_h + status_h, area.width, input_h),
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let areas = layout(frame.area(), app);
    draw_scrollback(frame, app, areas.scrollback);
    if let Some(area) = areas.members {
        draw_members(frame, app, area);
    }
    draw_status(frame, app, areas.status);
    draw_input(frame, app, areas.input);
}

fn draw_scrollback(frame: &mut Frame, app: &App, area: Rect) {
    let height = usize::from(area.height);
    if height == 0 {
        return;
    }
    let need = app.scroll + height;
    // Newest row first, only as far back as the view needs.
    let mut rev: Vec<TextLine<'static>> = Vec::with_capacity(need);
    for line in app.lines.iter().rev() {
        let rows = line_rows(line, app, area.width);
        rev.extend(rows.into_iter().rev());
        if rev.len() >= need {
            break;
        }
    }
    let scroll = app.scroll.min(rev.len().saturating_sub(height));
    let end = (scroll + height).min(rev.len());
    let visible: Vec<TextLine<'static>> = rev[scroll..end].iter().rev().cloned().collect();
    frame.render_widget(Paragraph::new(visible), area);
}

fn draw_members(frame: &mut Frame, app: &App, area: Rect) {
    let mut names: Vec<&String> = app.members.iter().collect();
    names.sort_by_key(|n| n.to_lowercase());
    let lines: Vec<TextLine> = names
        .into_iter()
        .map(|n| {
            let shown = sanitize(n).into_owned();
            let mut style = Style::default().fg(name_color(&shown));
            if *n == app.me {
                style = style.add_modifier(Modifier::BOLD);
            }
            TextLine::from(Span::styled(shown, style))
        })
        .collect();
    let block = Block::default()
        .borders(Borders::LEFT)
        .border_style(dim())
        .title(Span::styled(format!(" {} ", app.members.len()), dim()));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    if area.height == 0 {
        return;
    }
    let base = Style::default().bg(Color::Blue).fg(Color::White);
    let sep = Span::styled(" │ ", base);
    let trust = match app.trust {
        Some(TrustState::Verified) => Span::styled("verified", base.fg(Color::LightGreen)),
        Some(TrustState::TrustedOnFirstUse) => {
            Span::styled("trusted on first use", base.fg(Color::LightYellow))
        }
        None => Span::styled("operator", base.fg(Color::LightCyan)),
    };
    let conn = match &app.conn {
        Conn::Connected => Span::styled("connected", base),
        Conn::Leaving => Span::styled("leaving…", base.fg(Color::LightYellow)),
        Conn::Closing(why) => Span::styled(why.clone(), base.fg(Color::LightRed)),
    };
    let n = app.members.len();
    let mut spans = vec![
        Span::styled(
            format!(" {} {}", app.server_name, app.server_addr),
            base.add_modifier(Modifier::BOLD),
        ),
        sep.clone(),
        trust,
        sep.clone(),
        conn,
        sep.clone(),
        Span::styled(format!("{n} member{}", if n == 1 { "" } else { "s" }), base),
        sep,
        Span::styled(format!("as {}", sanitize(&app.me)), base),
    ];
    if app.scroll > 0 {
        // First, so a narrow terminal does not cut it off: the user must
        // know the newest lines are below.
        spans.insert(
            0,
            Span::styled(
                format!(" ↓ scrolled up, {} new ", app.unseen),
                base.fg(Color::LightYellow).add_modifier(Modifier::BOLD),
            ),
        );
        spans.insert(1, Span::styled("│", base));
    }
    frame.render_widget(Paragraph::new(TextLine::from(spans)).style(base), area);
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    if area.height == 0 {
        return;
    }
    let prompt_w = u16::try_from(PROMPT.len()).unwrap_or(2);
    let text_w = area.width.saturating_sub(prompt_w);
    let (rows, (crow, ccol)) = input_rows(app, text_w);
    // Keep the cursor's row in view when the input is taller than its
    // area.
    let first = crow.saturating_sub(area.height - 1);
    let lines: Vec<TextLine> = rows
        .iter()
        .enumerate()
        .skip(usize::from(first))
        .take(usize::from(area.height))
        .map(|(i, r)| {
            let lead = if i == 0 { PROMPT } else { "  " };
            let mut spans = vec![Span::styled(
                lead,
                Style::default().add_modifier(Modifier::BOLD),
            )];
            // The newline markers are dimmed so a pasted block reads as
            // lines rather than as text with odd characters.
            for (j, part) in r.split(NEWLINE_MARK).enumerate() {
                if j > 0 {
                    spans.push(Span::styled(NEWLINE_MARK.to_string(), dim()));
                }
                spans.push(Span::raw(part.to_string()));
            }
            TextLine::from(spans)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
    frame.set_cursor_position(Position::new(
        area.x + prompt_w + ccol.min(text_w),
        area.y + crow - first,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::app::Msg;
    use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
    use qchat_client::Event;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn app(size: (u16, u16)) -> App {
        crate::ui::app::tests::app_with(size, false)
    }

    fn chat(a: &mut App, from: &str, text: &str) {
        a.update(Msg::Net(Event::Chat {
            from: from.into(),
            text: text.into(),
            time_ms: 45_240_000, // 12:34 UTC
        }));
    }

    fn key(a: &mut App, code: KeyCode) {
        a.update(Msg::Term(TermEvent::Key(KeyEvent::new(
            code,
            KeyModifiers::NONE,
        ))));
    }

    /// Draws and returns the screen as text rows, and the cursor.
    fn screen(a: &App) -> (Vec<String>, Position) {
        let (w, h) = a.size;
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        let frame = t.draw(|f| draw(f, a)).expect("draw");
        let area = frame.area;
        let buf = frame.buffer.clone();
        let rows = (0..area.height)
            .map(|y| {
                (0..area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect();
        let cursor = t.get_cursor_position().expect("cursor");
        (rows, cursor)
    }

    #[test]
    fn the_layout() {
        let mut a = app((72, 10));
        chat(&mut a, "alice", "hello there");
        for c in "draft".chars() {
            key(&mut a, KeyCode::Char(c));
        }
        let (rows, cursor) = screen(&a);
        let all = rows.join("\n");
        assert!(rows[3].starts_with("12:34 <alice> hello there"), "{all}");
        // The member list on the right, sorted, with its count.
        assert!(rows[0].ends_with("│ 2         "), "{all}");
        assert!(rows[1].contains("│alice"), "{all}");
        assert!(rows[2].contains("│bob"), "{all}");
        let status = &rows[8];
        for part in [
            "den 127.0.0.1:8080",
            "verified",
            "connected",
            "2 members",
            "as bob",
        ] {
            assert!(status.contains(part), "status lacks {part:?}: {status}");
        }
        assert!(rows[9].starts_with("> draft"), "{all}");
        assert_eq!(cursor, Position::new(7, 9));
    }

    #[test]
    fn a_long_input_line_wraps_and_keeps_the_cursor_in_view() {
        let mut a = app((40, 12));
        let long: String = ('a'..='z').cycle().take(100).collect();
        for c in long.chars() {
            key(&mut a, KeyCode::Char(c));
        }
        let (rows, cursor) = screen(&a);
        let all = rows.join("\n");
        // 100 characters in 38 columns: three rows, the status line above.
        assert!(rows[8].contains("verified"), "{all}");
        assert!(
            rows[9].starts_with("> abcdefghijklmnopqrstuvwxyzabcdefghijkl"),
            "{all}"
        );
        assert!(rows[10].starts_with("  mnopqrstuvwxyz"), "{all}");
        let joined: String = rows[9..]
            .iter()
            .map(|r| r[2..].trim_end().to_string())
            .collect();
        assert_eq!(joined, long);
        assert_eq!(cursor, Position::new(2 + 24, 11));
        // Moving home puts the cursor back on the first row.
        key(&mut a, KeyCode::Home);
        assert_eq!(screen(&a).1, Position::new(2, 9));
    }

    #[test]
    fn a_paste_is_shown_with_newline_marks() {
        let mut a = app((40, 8));
        a.update(Msg::Term(TermEvent::Paste("one\ntwo".into())));
        let (rows, _) = screen(&a);
        assert!(rows[7].starts_with("> one⏎two"), "{}", rows.join("\n"));
    }

    #[test]
    fn a_narrow_terminal_hides_the_member_list_and_wraps() {
        let mut a = app((30, 8));
        chat(&mut a, "alice", "a message that is too long for one row");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        // No member list: only the status line has separators.
        for (i, r) in rows.iter().enumerate() {
            assert!(i == 6 || !r.contains('│'), "{all}");
        }
        let at = rows
            .iter()
            .position(|r| r.starts_with("12:34 <alice>"))
            .expect("the message is shown");
        assert!(
            rows[at].starts_with("12:34 <alice> a message that "),
            "{all}"
        );
        assert!(
            rows[at + 1].starts_with("      is too long for one row"),
            "{all}"
        );
        // Even absurd sizes draw without panicking.
        for size in [(1, 1), (5, 2), (80, 1), (2, 40)] {
            let mut a = app(size);
            chat(&mut a, "alice", "hi");
            let _ = screen(&a);
        }
    }

    #[test]
    fn history_and_mentions_and_private_messages_stand_apart() {
        let mut a = app((70, 10));
        a.update(Msg::Net(Event::History {
            from: "alice".into(),
            text: "earlier".into(),
            time_ms: 0,
            action: false,
        }));
        a.update(Msg::Net(Event::Private {
            from: "alice".into(),
            to: "bob".into(),
            text: "psst".into(),
            time_ms: 0,
        }));
        chat(&mut a, "alice", "\u{1b}[2J bob!");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(all.contains("00:00 [history] <alice> earlier"), "{all}");
        assert!(all.contains("[private alice → bob] psst"), "{all}");
        // Escape sequences from the network are shown, not obeyed.
        assert!(all.contains("<alice> ^[[2J bob!"), "{all}");
    }

    #[test]
    fn page_up_scrolls_and_the_view_stays_put_while_reading() {
        let mut a = app((60, 10));
        for i in 0..40 {
            chat(&mut a, "alice", &format!("line {i}"));
        }
        let (rows, _) = screen(&a);
        assert!(rows[7].contains("line 39"), "{}", rows.join("\n"));
        key(&mut a, KeyCode::PageUp);
        let (before, _) = screen(&a);
        assert!(before[7].contains("line 32"), "{}", before.join("\n"));
        chat(&mut a, "alice", "line 40");
        let (after, _) = screen(&a);
        assert_eq!(before[..8], after[..8]);
        assert!(after[8].contains("scrolled up, 1 new"), "{}", after[8]);
        // The new line moved the limit one row further: two pages down.
        key(&mut a, KeyCode::PageDown);
        key(&mut a, KeyCode::PageDown);
        let (rows, _) = screen(&a);
        assert!(rows[7].contains("line 40"), "{}", rows.join("\n"));
        assert!(!rows[8].contains("scrolled"), "{}", rows[8]);
    }
}
