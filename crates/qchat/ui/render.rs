//! Drawing: a pure function of the [`App`] state onto a ratatui frame.
//! Where things go is [`super::layout`]'s; what a scrollback line looks
//! like is [`super::scrollback`]'s.

use qchat_client::{ConnectionState, TrustState};
use qchat_proto::names;
use qchat_proto::text::sanitize;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;
use unicode_segmentation::UnicodeSegmentation;

use super::app::{App, Conn};
use super::conv::Conv;
use super::layout::{cluster_width, input_rows, text_width, NEWLINE_MARK, PROMPT};
use super::scrollback::{dim, line_rows, name_color};

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let members = app.members();
    let entries = app.conv_entries();
    let areas = super::layout::areas(frame.area(), &members, &entries, &app.editor);
    draw_scrollback(frame, app, areas.scrollback);
    if let Some(area) = areas.members {
        draw_members(frame, app, &members, area);
    }
    if let Some(area) = areas.convs {
        draw_convs(frame, app, area, area.x == 0);
    }
    draw_status(frame, app, areas.status, areas.convs.is_some());
    draw_input(frame, app, areas.input);
}

fn draw_scrollback(frame: &mut Frame, app: &App, area: Rect) {
    let height = usize::from(area.height);
    if height == 0 {
        return;
    }
    let need = app.conv().scroll + height;
    // Newest row first, only as far back as the view needs.
    let mut rev: Vec<TextLine<'static>> = Vec::with_capacity(need);
    for line in app.lines().iter().rev() {
        let rows = line_rows(line, app.offset, area.width);
        rev.extend(rows.into_iter().rev());
        if rev.len() >= need {
            break;
        }
    }
    let scroll = app.conv().scroll.min(rev.len().saturating_sub(height));
    let end = (scroll + height).min(rev.len());
    let visible: Vec<TextLine<'static>> = rev[scroll..end].iter().rev().cloned().collect();
    frame.render_widget(Paragraph::new(visible), area);
}

/// The conversation list: Alt's number, the name, the unread count in
/// bold and `!` reversed if we were mentioned; the one on the screen in
/// reverse video. `left`: it has a column of its own on the left (its
/// border on the right), rather than the top of the member list's.
fn draw_convs(frame: &mut Frame, app: &App, area: Rect, left: bool) {
    let count = app.convs.len();
    let first = super::layout::list_offset(app.current, count, area.height);
    let lines: Vec<TextLine> = app
        .convs
        .iter()
        .enumerate()
        .skip(first)
        .take(usize::from(area.height))
        .map(|(i, c)| {
            let current = i == app.current;
            let base = if current {
                Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
            } else if c.unread > 0 {
                Style::default().add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            let number = if i < 9 {
                (i + 1).to_string()
            } else {
                " ".into()
            };
            let mut spans = vec![
                Span::styled(format!("{number} "), if current { base } else { dim() }),
                Span::styled(c.conv.label(), base),
            ];
            if c.parted {
                spans.push(Span::styled(" (left)", if current { base } else { dim() }));
            }
            if c.unread > 0 {
                spans.push(Span::styled(
                    format!(" {}", c.unread),
                    base.fg(Color::LightYellow).add_modifier(Modifier::BOLD),
                ));
            }
            if c.mentioned {
                spans.push(Span::raw(" "));
                spans.push(Span::styled(
                    "!",
                    Style::default()
                        .fg(Color::LightRed)
                        .add_modifier(Modifier::BOLD | Modifier::REVERSED),
                ));
            }
            TextLine::from(spans)
        })
        .collect();
    let block = Block::default()
        .borders(if left { Borders::RIGHT } else { Borders::LEFT })
        .border_style(dim());
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_members(frame: &mut Frame, app: &App, members: &[String], area: Rect) {
    let count = members.len();
    let private = matches!(app.conv().conv, Conv::Private(_));
    let mut members: Vec<&String> = members.iter().collect();
    members.sort_by_key(|n| names::fold(n));
    let lines: Vec<TextLine> = members
        .into_iter()
        .map(|n| {
            let shown = sanitize(n).into_owned();
            // Presence is asked only of a private conversation's two
            // people: for a room's list it would cost a search of every
            // room per member.
            let away = app
                .reconnecting
                .iter()
                .any(|r| names::fold(r) == names::fold(n))
                || (private && !app.present(n));
            let mut style = if away {
                // Still in the room (the server holds the name), not
                // there right now.
                dim().add_modifier(Modifier::ITALIC)
            } else {
                Style::default().fg(name_color(&shown))
            };
            if names::fold(n) == names::fold(&app.me) {
                style = style.add_modifier(Modifier::BOLD);
            }
            let mut spans = vec![Span::styled(shown, style)];
            if app.marks.verified(n) {
                spans.push(Span::styled(
                    format!(" {}", crate::wording::MARK),
                    Style::default()
                        .fg(Color::LightGreen)
                        .add_modifier(Modifier::BOLD),
                ));
            }
            TextLine::from(spans)
        })
        .collect();
    let block = Block::default()
        .borders(Borders::LEFT)
        .border_style(dim())
        .title(Span::styled(format!(" {count} "), dim()));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// The status line. What it must never lose, however narrow the
/// terminal: whether we are scrolled up, the connection and the trust
/// state (in short words if need be). Then, when the lists are hidden
/// (`!lists`), the conversation on the screen and the unread count; the
/// member count and our name go next, and the server's name and address
/// take what is left (cut short with `…`); in a room with a topic, the
/// topic takes that place, since it is what the room is about and the
/// server is named in the title and the first lines.
fn draw_status(frame: &mut Frame, app: &App, area: Rect, lists: bool) {
    if area.height == 0 {
        return;
    }
    let avail = usize::from(area.width);
    let base = Style::default().bg(Color::Blue).fg(Color::White);
    let sep = || Span::styled(" │ ", base);
    let width = |spans: &[Span]| spans.iter().map(|s| text_width(&s.content)).sum::<usize>();
    let essentials = |short: bool| {
        let mut head = Vec::new();
        let c = app.conv();
        if c.scroll > 0 {
            let text = if short {
                format!(" ↓{} ", c.unseen)
            } else {
                format!(" ↓ scrolled up, {} new ", c.unseen)
            };
            head.push(Span::styled(
                text,
                base.fg(Color::LightYellow).add_modifier(Modifier::BOLD),
            ));
            head.push(Span::styled("│", base));
        }
        let trust = match (app.about.trust, short) {
            (Some(TrustState::Verified), _) => Span::styled("verified", base.fg(Color::LightGreen)),
            (Some(TrustState::TrustedOnFirstUse), false) => {
                Span::styled("trusted on first use", base.fg(Color::LightYellow))
            }
            (Some(TrustState::TrustedOnFirstUse), true) => {
                Span::styled("unverified", base.fg(Color::LightYellow))
            }
            (None, false) => Span::styled("operator", base.fg(Color::LightCyan)),
            (None, true) => Span::styled("host", base.fg(Color::LightCyan)),
        };
        let conn = match &app.conn {
            Conn::Online(state) => {
                let style = match state {
                    ConnectionState::Connected { .. } | ConnectionState::Moved { .. } => base,
                    ConnectionState::NoAnswer { .. } => base.fg(Color::LightYellow),
                    ConnectionState::Lost { .. } | ConnectionState::Reconnecting { .. } => {
                        base.fg(Color::LightRed).add_modifier(Modifier::BOLD)
                    }
                };
                let words = match state {
                    ConnectionState::Reconnecting { .. } if short => "reconnecting".into(),
                    ConnectionState::NoAnswer { .. } if short => "no answer".into(),
                    _ => crate::wording::status(state),
                };
                Span::styled(words, style)
            }
            Conn::Leaving => Span::styled("leaving…", base.fg(Color::LightYellow)),
            Conn::Closing(_) if short => Span::styled("closing", base.fg(Color::LightRed)),
            Conn::Closing(why) => Span::styled(why.clone(), base.fg(Color::LightRed)),
        };
        (head, vec![sep(), trust, sep(), conn])
    };
    let (mut head, mut tail) = essentials(false);
    if width(&head) + width(&tail) > avail {
        (head, tail) = essentials(true);
    }
    // Without the lists (a narrow terminal) the status line says where
    // typing goes and whether anything waits elsewhere, before all else
    // that is not essential.
    if !lists {
        let mut here = app.conv().conv.label();
        if app.conv().parted {
            here.push_str(" (left)");
        }
        let unread = app.unread();
        if unread > 0 {
            here.push_str(&format!(" +{unread}"));
        }
        if width(&head) + width(&tail) + 3 + text_width(&here) <= avail {
            tail.extend([sep(), Span::styled(here, base.add_modifier(Modifier::BOLD))]);
        }
    }
    let n = app.members().len();
    for extra in [
        format!("{n} member{}", if n == 1 { "" } else { "s" }),
        format!("as {}", sanitize(&app.me)),
    ] {
        // Only if the server keeps a few columns of its name.
        if width(&head) + width(&tail) + 3 + text_width(&extra) + 8 <= avail {
            tail.extend([sep(), Span::styled(extra, base)]);
        }
    }
    let room = avail.saturating_sub(width(&head) + width(&tail));
    let c = app.conv();
    let what = match &c.conv {
        Conv::Room(_) if !c.topic.is_empty() => format!(" topic: {}", sanitize(&c.topic)),
        _ => format!(" {} {}", app.server_name, app.server_addr),
    };
    let server = fit(&what, room);
    let mut spans = head;
    if server.chars().count() < 3 {
        // No room for the server: start with the trust state.
        tail.remove(0);
        spans.push(Span::styled(" ", base));
    } else {
        spans.push(Span::styled(server, base.add_modifier(Modifier::BOLD)));
    }
    spans.extend(tail);
    frame.render_widget(Paragraph::new(TextLine::from(spans)).style(base), area);
}

/// `text` cut to `width` columns, ending with `…` if it was cut.
fn fit(text: &str, width: usize) -> String {
    if text_width(text) <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in text.graphemes(true) {
        let w = cluster_width(g);
        if used + w + 1 > width {
            break;
        }
        out.push_str(g);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    if area.height == 0 {
        return;
    }
    let prompt_w = u16::try_from(PROMPT.len()).unwrap_or(2);
    let text_w = area.width.saturating_sub(prompt_w);
    let (rows, (crow, ccol)) = input_rows(&app.editor, text_w);
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

    #[test]
    fn an_emoji_keeps_its_modifier_and_the_cursor_stays_on_the_text() {
        let mut a = app((40, 8));
        chat(&mut a, "alice", "nice 👍🏽 work");
        for c in "ok 👍🏽".chars() {
            key(&mut a, KeyCode::Char(c));
        }
        let (rows, cursor) = screen(&a);
        let all = rows.join("\n");
        // ratatui fills the emoji's second cell with a blank.
        assert!(all.contains("<alice> nice 👍🏽  work"), "{all}");
        assert!(rows[7].starts_with("> ok 👍🏽"), "{all}");
        // "> ok " is 5 columns and the emoji 2 more.
        assert_eq!(cursor, Position::new(7, 7));
    }

    #[test]
    fn after_a_move_the_status_line_names_the_node_connected_to() {
        use qchat_client::ConnectionState;
        let mut a = app((100, 8));
        let (rows, _) = screen(&a);
        assert!(rows[6].contains("127.0.0.1:8080"), "{}", rows.join("\n"));
        a.update(Msg::Net(Event::Connection(ConnectionState::Moved {
            node: "127.0.0.1:8091".into(),
        })));
        let (rows, _) = screen(&a);
        assert!(rows[6].contains("127.0.0.1:8091"), "{}", rows.join("\n"));
        assert!(!rows[6].contains("127.0.0.1:8080"), "{}", rows.join("\n"));
    }

    #[test]
    fn the_status_line_says_reconnecting_and_the_list_marks_the_absent() {
        use qchat_client::ConnectionState;
        let mut a = app((100, 8));
        a.update(Msg::Net(Event::MemberReconnecting {
            name: "alice".into(),
        }));
        a.update(Msg::Net(Event::Connection(ConnectionState::Reconnecting {
            attempt: 2,
            next_in: std::time::Duration::from_secs(4),
        })));
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(
            rows[6].contains("│ reconnecting (attempt 2, next in 4s)"),
            "{all}"
        );
        assert!(all.contains("* alice is reconnecting"), "{all}");
        // Still listed, in the absent style.
        let t = Terminal::new(TestBackend::new(100, 8));
        let mut t = t.expect("test terminal");
        let frame = t.draw(|f| draw(f, &a)).expect("draw");
        let buf = frame.buffer.clone();
        // The member list is on the right: the rightmost "alice".
        let (x, y) = (0..6u16)
            .flat_map(|y| (0..95u16).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                (0..5u16)
                    .map(|i| buf[(x + i, y)].symbol())
                    .collect::<String>()
                    == "alice"
            })
            .max()
            .expect("alice in the member list");
        assert!(x > 60, "{all}");
        assert_eq!(buf[(x, y)].fg, Color::DarkGray, "{all}");
        // Narrow: still says it, in short.
        let mut a = app((30, 8));
        a.update(Msg::Net(Event::Connection(ConnectionState::Reconnecting {
            attempt: 2,
            next_in: std::time::Duration::from_secs(4),
        })));
        let (rows, _) = screen(&a);
        assert!(rows[6].contains("reconnecting"), "{}", rows.join("\n"));
    }

    #[test]
    fn a_verified_name_carries_the_mark_on_its_lines_and_in_the_list() {
        let mut a = app((60, 8));
        chat(&mut a, "alice", "before");
        a.update(Msg::Net(Event::Mark {
            name: "ALICE".into(),
            verified: true,
        }));
        chat(&mut a, "alice", "after");
        chat(&mut a, "bob", "not me");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        // The mark is decided when a line arrives, not after the fact.
        assert!(all.contains("<alice> before"), "{all}");
        assert!(all.contains("<alice ✓> after"), "{all}");
        assert!(all.contains("<bob> not me"), "{all}");
        assert!(rows.iter().any(|r| r.contains("│alice ✓")), "{all}");
        assert!(!rows.iter().any(|r| r.contains("│bob ✓")), "{all}");
        // Withheld again: new lines and the list lose it.
        a.update(Msg::Net(Event::Mark {
            name: "alice".into(),
            verified: false,
        }));
        chat(&mut a, "alice", "later");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(all.contains("<alice> later"), "{all}");
        assert!(!rows.iter().any(|r| r.contains("│alice ✓")), "{all}");
    }

    #[test]
    fn status_line_priorities_when_scrolled_and_narrow() {
        let mut a = app((30, 8));
        for i in 0..20 {
            chat(&mut a, "alice", &format!("line {i}"));
        }
        key(&mut a, KeyCode::PageUp);
        let (rows, _) = screen(&a);
        let status = &rows[6];
        assert!(status.starts_with(" ↓0 │ verified │ connected"), "{status}");
        assert!(status.contains("verified"), "{status}");
        assert_eq!(fit(" den 127.0.0.1:8080", 8), " den 12…");
        assert_eq!(fit("abc", 3), "abc");
    }

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
        // One column on the right: the conversations, then the member
        // list, sorted, with its count.
        assert!(rows[0].ends_with("│1 #lobby   "), "{all}");
        assert!(rows[1].ends_with("│ 2         "), "{all}");
        assert!(rows[2].contains("│alice"), "{all}");
        assert!(rows[3].contains("│bob"), "{all}");
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
        // The status line keeps the connection and the trust state; the
        // server's name gives way first.
        assert!(rows[6].contains("verified"), "{all}");
        assert!(rows[6].contains("connected"), "{all}");
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
            history: false,
        }));
        chat(&mut a, "alice", "\u{1b}[2J bob!");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(all.contains("00:00 [history] <alice> earlier"), "{all}");
        // Escape sequences from the network are shown, not obeyed.
        assert!(all.contains("<alice> ^[[2J bob!"), "{all}");
        // The private message is in its own conversation.
        assert!(!all.contains("psst"), "{all}");
        a.update(Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Char('2'),
            KeyModifiers::ALT,
        ))));
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(all.contains("[private alice → bob] psst"), "{all}");
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

    fn alt(a: &mut App, c: char) {
        a.update(Msg::Term(TermEvent::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::ALT,
        ))));
    }

    fn private(a: &mut App, from: &str, text: &str) {
        a.update(Msg::Net(Event::Private {
            from: from.into(),
            to: "bob".into(),
            text: text.into(),
            time_ms: 45_240_000,
            history: false,
        }));
    }

    #[test]
    fn the_conversation_list_shows_unread_counts_mentions_and_where_we_are() {
        let mut a = app((100, 10));
        private(&mut a, "carol", "psst");
        private(&mut a, "carol", "still there?");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        // A column of its own on the left, the current one highlighted.
        assert!(rows[0].starts_with("1 #lobby       │"), "{all}");
        assert!(rows[1].starts_with("2 @carol 2 !   │"), "{all}");
        assert!(rows[0].ends_with("│ 2         "), "{all}");
        let t = Terminal::new(TestBackend::new(100, 10));
        let mut t = t.expect("test terminal");
        let buf = t.draw(|f| draw(f, &a)).expect("draw").buffer.clone();
        assert!(buf[(2, 0)].modifier.contains(Modifier::REVERSED), "{all}");
        assert!(!buf[(2, 1)].modifier.contains(Modifier::REVERSED), "{all}");
        assert_eq!(buf[(9, 1)].fg, Color::LightYellow, "the count");
        assert!(
            buf[(11, 1)].modifier.contains(Modifier::REVERSED),
            "the mark"
        );
        // There: the lines, the list's highlight moved, the count gone.
        alt(&mut a, '2');
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(all.contains("[private carol → bob] still there?"), "{all}");
        assert!(rows[1].starts_with("2 @carol   │"), "{all}");
        // The member list is the conversation's two people.
        assert!(rows[1].trim_end().ends_with("│bob"), "{all}");
        assert!(rows[2].trim_end().ends_with("│carol"), "{all}");
    }

    #[test]
    fn the_marker_is_a_row_across_the_scrollback() {
        let mut a = app((70, 12));
        chat(&mut a, "alice", "old");
        private(&mut a, "carol", "psst");
        alt(&mut a, '2');
        chat(&mut a, "alice", "new");
        alt(&mut a, '1');
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        let at = rows
            .iter()
            .position(|r| r.starts_with("12:34 <alice> new"))
            .expect("the new line");
        assert!(
            rows[at - 1].starts_with("──── new since you last looked ───"),
            "{all}"
        );
        assert!(rows[at - 2].starts_with("12:34 <alice> old"), "{all}");
    }

    #[test]
    fn a_narrow_terminal_names_the_conversation_in_the_status_line() {
        let mut a = app((49, 8));
        private(&mut a, "carol", "psst");
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        assert!(!all.contains("│1 #lobby"), "no lists: {all}");
        assert!(rows[6].contains("│ #lobby +1"), "{all}");
        alt(&mut a, '2');
        let (rows, _) = screen(&a);
        assert!(rows[6].contains("│ @carol │"), "{}", rows.join("\n"));
    }

    #[test]
    fn a_room_shows_its_topic_its_members_and_whether_we_left() {
        let mut a = app((100, 10));
        for c in "/join #dev".chars() {
            key(&mut a, KeyCode::Char(c));
        }
        key(&mut a, KeyCode::Enter);
        a.update(Msg::Net(Event::RoomJoined {
            room: "#dev".into(),
            topic: "ship\u{1b}[2J it".into(),
            members: vec!["bob".into(), "zed".into()],
            operator: true,
            invite_only: false,
        }));
        a.update(Msg::Net(Event::InRoom {
            room: "#dev".into(),
            event: Box::new(Event::Chat {
                from: "zed".into(),
                text: "hello dev".into(),
                time_ms: 45_240_000,
            }),
        }));
        let (rows, _) = screen(&a);
        let all = rows.join("\n");
        // Its line without a room before it, its people beside it, its
        // topic (sanitised) in the status line.
        assert!(all.contains("12:34 <zed> hello dev"), "{all}");
        assert!(!all.contains("#dev <zed>"), "{all}");
        assert!(rows[2].trim_end().ends_with("│zed"), "{all}");
        assert!(rows[8].contains(" topic: ship^[[2J it"), "{all}");
        // The lobby's status line names the server instead.
        alt(&mut a, '1');
        let (rows, _) = screen(&a);
        assert!(
            rows[8].contains("den 127.0.0.1:8080"),
            "{}",
            rows.join("\n")
        );
        a.update(Msg::Net(Event::Parted {
            room: "#dev".into(),
            by: String::new(),
            reason: String::new(),
        }));
        let (rows, _) = screen(&a);
        assert!(rows[1].starts_with("2 #dev (left)"), "{}", rows.join("\n"));
    }
}
