//! What a scrollback line is, and how it becomes rows on the screen.
//!
//! Both the state ([`super::app`], which must know how many rows a line
//! takes to keep the view still while the user reads older lines) and the
//! drawing ([`super::render`]) need this; it depends on neither, so neither
//! depends on the other.
//!
//! Lines are wrapped here rather than by ratatui's `Paragraph` so that
//! scrolling counts real rows.

use qchat_proto::names;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use time::OffsetDateTime;
use unicode_segmentation::UnicodeSegmentation;

use super::layout::{cluster_width, text_width};

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
    /// A message or action from someone else, a private message, or a line
    /// from before we joined.
    Said(crate::wording::Said),
    /// Our own message or action, shown as soon as it is typed.
    Own {
        /// The name we sent it under: a later `/nick` does not rewrite it.
        name: String,
        /// Text.
        text: String,
        /// Whether it was `/me`.
        action: bool,
        /// Its fate.
        delivery: Delivery,
        /// Which of our lines it is, until the network task numbers it.
        local: u64,
    },
    /// Joins, leaves, renames, notices, /who and /help output, and the
    /// server's own news for the host.
    Info(String),
    /// Something went wrong (refused message, failed command, typo).
    Error(String),
    /// Where the user stopped reading when they turned to another
    /// conversation: the lines below it came while they were away.
    Marker,
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
    /// The `seq` the network task gave our own message, once it said so.
    pub seq: Option<u64>,
}

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

/// A name's colour: a stable hash (FNV-1a) of the name as the server
/// compares it, so everyone keeps their colour across lines, sessions and
/// renames back.
pub fn name_color(name: &str) -> Color {
    let mut h: u32 = 0x811c_9dc5;
    for b in names::fold(name).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    PALETTE[h as usize % PALETTE.len()]
}

/// The style of things that matter less (timestamps, pending lines).
pub fn dim() -> Style {
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
fn line_spans(line: &Line, offset: time::UtcOffset) -> Vec<Span<'static>> {
    let time_style = if line.mention {
        Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    } else {
        dim()
    };
    let mut out = vec![
        Span::styled(hhmm(line.time_ms, offset), time_style),
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
    // The verified mark goes right after the sender's name, in the same
    // place as plain mode's `<alice ✓>`.
    let mark = |verified: bool| {
        Span::styled(
            if verified {
                format!(" {}", crate::wording::MARK)
            } else {
                String::new()
            },
            Style::default()
                .fg(Color::LightGreen)
                .add_modifier(Modifier::BOLD),
        )
    };
    match &line.kind {
        Kind::Said(said) if said.history => {
            let style = dim().add_modifier(Modifier::ITALIC);
            out.push(Span::styled("[history] ", style));
            let from = crate::wording::name_marked(&said.from, said.verified);
            let body = if said.action {
                format!("* {from} {}", said.text)
            } else {
                format!("<{from}> {}", said.text)
            };
            out.push(Span::styled(body, style));
        }
        Kind::Said(said) => match &said.to {
            Some(to) => {
                let style = Style::default()
                    .fg(Color::LightMagenta)
                    .add_modifier(Modifier::BOLD);
                out.extend([
                    Span::styled("[private ", style),
                    named(&said.from),
                    mark(said.verified),
                    Span::styled(" → ", style),
                    named(to),
                    Span::styled("] ", style),
                    Span::styled(said.text.clone(), text_style),
                ]);
            }
            None if said.action => out.extend([
                Span::raw("* "),
                named(&said.from),
                mark(said.verified),
                Span::raw(" "),
                Span::styled(said.text.clone(), text_style.add_modifier(Modifier::ITALIC)),
            ]),
            None => out.extend([
                Span::raw("<"),
                named(&said.from),
                mark(said.verified),
                Span::raw("> "),
                Span::styled(said.text.clone(), text_style),
            ]),
        },
        Kind::Own {
            name,
            text,
            action,
            delivery,
            ..
        } => {
            let me_span = Span::styled(
                name.clone(),
                Style::default()
                    .fg(name_color(name))
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
        Kind::Info(text) => out.push(Span::styled(
            format!("* {text}"),
            Style::default().fg(Color::Cyan),
        )),
        Kind::Error(text) => out.push(Span::styled(
            format!("! {text}"),
            Style::default().fg(Color::Red),
        )),
        // Drawn whole by `marker_row`, which knows the width.
        Kind::Marker => {}
    }
    out
}

/// What the marker line says.
pub const MARKER_TEXT: &str = " new since you last looked ";

/// The marker: one row across the whole width, with no timestamp, so it
/// reads as a divider rather than as something somebody said.
fn marker_row(width: usize) -> TextLine<'static> {
    let label = if width >= text_width(MARKER_TEXT) + 4 {
        MARKER_TEXT
    } else {
        " new "
    };
    let side = width.saturating_sub(text_width(label));
    let left = (side / 2).min(4);
    let right = side - left;
    let text: String = "─".repeat(left) + label + &"─".repeat(right);
    let text: String = text.chars().take(width).collect();
    TextLine::from(Span::styled(
        text,
        Style::default()
            .fg(Color::LightRed)
            .add_modifier(Modifier::BOLD),
    ))
}

/// Continuation rows start under the text, past the timestamp.
const INDENT: usize = 6;

/// Wraps spans into rows of at most `width` columns, breaking at the last
/// space when there is one, continuation rows indented. Works on grapheme
/// clusters, so an emoji keeps its modifier and a wide character counts
/// two columns.
fn wrap(spans: Vec<Span<'static>>, width: usize) -> Vec<TextLine<'static>> {
    let width = width.max(INDENT + 4);
    // Flatten to styled clusters: simple, and lines are short.
    let cells: Vec<(&str, Style)> = spans
        .iter()
        .flat_map(|sp| sp.content.graphemes(true).map(move |g| (g, sp.style)))
        .collect();
    let mut rows: Vec<Vec<(&str, Style)>> = Vec::new();
    let mut row: Vec<(&str, Style)> = Vec::new();
    let mut col = 0;
    for (g, st) in cells {
        if g == "\n" {
            // A multi-line message: its next line starts under the text,
            // like a wrapped one.
            rows.push(std::mem::take(&mut row));
            row = vec![(" ", Style::default()); INDENT];
            col = INDENT;
            continue;
        }
        let w = cluster_width(g);
        if col + w > width {
            // Carry the unfinished word to the next row if there is a
            // space to break at (past the indent).
            let floor = if rows.is_empty() { 0 } else { INDENT };
            let carry = match row.iter().rposition(|(g, _)| *g == " ") {
                Some(i) if i + 1 > floor && i + 1 < row.len() => row.split_off(i + 1),
                _ => Vec::new(),
            };
            rows.push(std::mem::take(&mut row));
            row = vec![(" ", Style::default()); INDENT];
            col = INDENT;
            for (g, st) in carry {
                col += cluster_width(g);
                row.push((g, st));
            }
        }
        col += w;
        row.push((g, st));
    }
    rows.push(row);
    rows.into_iter()
        .map(|r| {
            // Re-group runs of one style into spans.
            let mut spans: Vec<Span<'static>> = Vec::new();
            for (g, st) in r {
                match spans.last_mut() {
                    Some(last) if last.style == st => last.content.to_mut().push_str(g),
                    _ => spans.push(Span::styled(g.to_string(), st)),
                }
            }
            TextLine::from(spans)
        })
        .collect()
}

/// One scrollback line as the rows it takes at `width`.
pub fn line_rows(line: &Line, offset: time::UtcOffset, width: u16) -> Vec<TextLine<'static>> {
    if line.kind == Kind::Marker {
        return vec![marker_row(usize::from(width))];
    }
    wrap(line_spans(line, offset), usize::from(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(rows: &[TextLine<'static>]) -> Vec<String> {
        rows.iter()
            .map(|r| r.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    #[test]
    fn a_multi_line_message_is_rows_indented_under_its_author() {
        let line = Line {
            time_ms: 0,
            kind: Kind::Said(crate::wording::Said {
                verified: false,
                from: "alice".into(),
                to: None,
                text: "first\nsecond\n\nfourth".into(),
                action: false,
                history: false,
                room: None,
            }),
            mention: false,
            seq: None,
        };
        let rows = text_of(&line_rows(&line, time::UtcOffset::UTC, 40));
        assert_eq!(
            rows,
            [
                "00:00 <alice> first",
                "      second",
                "      ",
                "      fourth"
            ]
        );
    }

    #[test]
    fn wrapping_keeps_an_emoji_and_its_modifier_together() {
        let line = Line {
            time_ms: 0,
            kind: Kind::Info("ok 👍🏽👍🏽👍🏽 fine".into()),
            mention: false,
            seq: None,
        };
        let rows = text_of(&line_rows(&line, time::UtcOffset::UTC, 14));
        let all: String = rows.concat();
        assert_eq!(all.matches("👍🏽").count(), 3, "{rows:?}");
        for r in &rows {
            let w: usize = r.graphemes(true).map(cluster_width).sum();
            assert!(w <= 14, "{r:?} is {w} columns");
        }
    }
}
