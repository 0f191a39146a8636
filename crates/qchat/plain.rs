//! Plain mode: one input line is one message or `/command`; one output line
//! per event, flushed at once.
//!
//! The output format is stable and documented in README.md, because
//! scripts and the end-to-end tests read it:
//!
//! ```text
//! <alice> hello                    a message
//! * alice waves                    an action (/me)
//! [alice -> bob] psst              a private message (to you, or yours)
//! [history] <alice> earlier        a message from before you joined
//! * bob joined                     join notice
//! * bob left (reason)              leave notice (no parentheses if no reason)
//! * alice is now known as alicia   a name change
//! * members (2): alice 5m, bob 12s
//! * notice: TEXT                   a notice from the server
//! * kicked by op: REASON           you were removed
//! * server shutting down: REASON
//! ```
//!
//! Everything that came from the network is sanitised. Errors, including
//! refused messages and failed commands, go to stderr as `qchat: …`.

use std::io::{BufRead, Write};

use qchat_client::{session, Command, Ended, Event, Link};
use qchat_proto::text::sanitize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::exit;
use crate::input::{self, Input};

/// Runs the session with lines from stdin until end of input, `/quit`, or
/// the server ending it; returns the exit status. `header` lines are
/// printed first (who we are, where, how trusted).
pub async fn run<W, R>(link: Link<W, R>, header: Vec<String>, operator: bool) -> u8
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut out = std::io::stdout();
    for line in header {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();

    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    spawn_stdin_reader(cmd_tx, operator);
    let net = tokio::spawn(session::run(link, cmd_rx, ev_tx));

    while let Some(ev) = ev_rx.recv().await {
        print_event(&mut out, &ev);
    }
    let ended = match net.await {
        Ok(e) => e,
        Err(e) => Ended::Lost {
            reason: format!("internal error: {e}"),
            unconfirmed: 0,
        },
    };
    exit_status(ended)
}

/// Reports how the session ended on stderr and picks the exit status.
pub fn exit_status(ended: Ended) -> u8 {
    match ended {
        Ended::Quit => exit::OK,
        Ended::ByServer {
            code,
            reason,
            unconfirmed,
        } => {
            let why = match (code, reason.is_empty()) {
                (Some(c), true) => c.describe().to_string(),
                _ => sanitize(&reason).into_owned(),
            };
            eprintln!("qchat: disconnected by the server: {why}");
            warn_unconfirmed(unconfirmed);
            exit::DISCONNECTED
        }
        Ended::Lost {
            reason,
            unconfirmed,
        } => {
            eprintln!("qchat: connection lost: {}", sanitize(&reason));
            warn_unconfirmed(unconfirmed);
            exit::FAILURE
        }
    }
}

fn warn_unconfirmed(n: usize) {
    if n > 0 {
        eprintln!(
            "qchat: {n} message(s) were sent but not confirmed; they may not have been delivered"
        );
    }
}

/// "5m", "2h", "12s": how long someone has been here.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The plain-mode line for an event, or `None` for events plain mode does
/// not show. Errors are returned as `Err` for stderr.
pub fn format_event(ev: &Event) -> Option<Result<String, String>> {
    let s = |t: &str| sanitize(t).into_owned();
    Some(Ok(match ev {
        Event::Chat { from, text, .. } => format!("<{}> {}", s(from), s(text)),
        Event::Action { from, text, .. } => format!("* {} {}", s(from), s(text)),
        Event::Private { from, to, text, .. } => format!("[{} -> {}] {}", s(from), s(to), s(text)),
        Event::History {
            from,
            text,
            action: false,
            ..
        } => format!("[history] <{}> {}", s(from), s(text)),
        Event::History {
            from,
            text,
            action: true,
            ..
        } => format!("[history] * {} {}", s(from), s(text)),
        Event::Joined { name } => format!("* {} joined", s(name)),
        Event::Left { name, reason } if reason.is_empty() => format!("* {} left", s(name)),
        Event::Left { name, reason } => format!("* {} left ({})", s(name), s(reason)),
        Event::Renamed { old, new } => format!("* {} is now known as {}", s(old), s(new)),
        Event::Members(members) => {
            let list: Vec<String> = members
                .iter()
                .map(|m| {
                    let mut item = format!("{} {}", s(&m.name), short_duration(m.connected_secs));
                    if !m.addr.is_empty() {
                        item.push_str(&format!(" {}", s(&m.addr)));
                    }
                    if m.operator {
                        item.push_str(" (operator)");
                    }
                    item
                })
                .collect();
            format!("* members ({}): {}", members.len(), list.join(", "))
        }
        Event::Notice { text } => format!("* notice: {}", s(text)),
        Event::Kicked { by, reason } if reason.is_empty() => format!("* kicked by {}", s(by)),
        Event::Kicked { by, reason } => format!("* kicked by {}: {}", s(by), s(reason)),
        Event::ShuttingDown { reason } => format!("* server shutting down: {}", s(reason)),
        Event::Refused { reason, .. } => {
            return Some(Err(format!("message not sent: {}", s(reason))))
        }
        Event::Failed { what, reason } => {
            return Some(Err(format!("/{} failed: {}", s(what), s(reason))))
        }
        Event::Delivered { .. } => return None,
    }))
}

fn print_event(out: &mut impl Write, ev: &Event) {
    match format_event(ev) {
        Some(Ok(line)) if writeln!(out, "{line}").is_ok() => {
            let _ = out.flush();
        }
        Some(Err(line)) => eprintln!("qchat: {line}"),
        Some(Ok(_)) | None => {}
    }
}

/// Reads stdin on its own thread: a blocking read must never sit on a
/// runtime worker. End of input (or `/quit`) drops the sender, which tells
/// the network task to leave once everything already sent is confirmed.
fn spawn_stdin_reader(tx: mpsc::Sender<Command>, operator: bool) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            let mut line_no = 0u64;
            loop {
                buf.clear();
                match lock.read_until(b'\n', &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("qchat: cannot read standard input: {e}");
                        return;
                    }
                }
                line_no += 1;
                let Ok(line) = std::str::from_utf8(&buf) else {
                    eprintln!("qchat: input line {line_no} is not valid UTF-8; not sent");
                    continue;
                };
                let cmd = match input::parse(line) {
                    Input::Send(cmd) => cmd,
                    Input::Nothing => continue,
                    Input::Help => {
                        let mut out = std::io::stdout().lock();
                        for l in input::help_lines(operator) {
                            let _ = writeln!(out, "* {l}");
                        }
                        let _ = out.flush();
                        continue;
                    }
                    Input::Error(e) => {
                        eprintln!("qchat: {e}");
                        continue;
                    }
                };
                let quit = matches!(cmd, Command::Quit(_));
                if tx.blocking_send(cmd).is_err() || quit {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("qchat: cannot start the input reader: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_lines() {
        let line = |ev: Event| format_event(&ev).expect("shown").expect("stdout");
        assert_eq!(
            line(Event::Chat {
                from: "alice".into(),
                text: "hi\u{1b}[2J".into(),
                time_ms: 0
            }),
            "<alice> hi^[[2J"
        );
        assert_eq!(
            line(Event::Private {
                from: "a".into(),
                to: "b".into(),
                text: "psst".into(),
                time_ms: 0
            }),
            "[a -> b] psst"
        );
        assert_eq!(
            line(Event::Left {
                name: "bob".into(),
                reason: String::new()
            }),
            "* bob left"
        );
        assert_eq!(
            line(Event::Renamed {
                old: "a".into(),
                new: "b".into()
            }),
            "* a is now known as b"
        );
        assert!(format_event(&Event::Delivered { seq: 1 }).is_none());
        assert!(matches!(
            format_event(&Event::Refused {
                seq: 1,
                reason: "x".into()
            }),
            Some(Err(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(300), "5m");
        assert_eq!(short_duration(7200), "2h");
    }
}
