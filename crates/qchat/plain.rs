//! Plain mode: one input line is one message; one output line per event.
//!
//! The output format is stable and documented in README.md, because
//! scripts and the end-to-end tests read it:
//!
//! ```text
//! <alice> hello            a message
//! * bob joined             join notice
//! * bob left               leave notice (reason in parentheses if any)
//! * notice: TEXT           a notice from the server
//! * server shutting down: REASON
//! ```
//!
//! Status lines at the start also begin with `* `. Everything that came
//! from the network is sanitised. Errors go to stderr.

use std::io::{BufRead, Write};
use std::net::SocketAddr;

use qchat_client::{session, Command, Ended, Event, Joined, TrustState};
use qchat_proto::text::sanitize;
use tokio::sync::mpsc;

use crate::exit;

/// Runs the session with lines from stdin until end of input or until the
/// server ends it; returns the exit status.
pub async fn run(joined: Joined, trust: TrustState, addr: SocketAddr) -> u8 {
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "* connected to {} at {addr} ({trust}) as {}",
        sanitize(&joined.server_name),
        sanitize(&joined.name)
    );
    let members: Vec<String> = joined
        .members
        .iter()
        .map(|m| sanitize(m).into_owned())
        .collect();
    let _ = writeln!(out, "* in the room: {}", members.join(", "));
    let _ = out.flush();

    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    spawn_stdin_reader(cmd_tx);
    let net = tokio::spawn(session::run(joined, cmd_rx, ev_tx));

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
    match ended {
        Ended::Quit => exit::OK,
        Ended::ByServer {
            code,
            reason,
            unconfirmed,
            ..
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

fn print_event(out: &mut impl Write, ev: &Event) {
    let r = match ev {
        Event::Chat { from, text, .. } => writeln!(out, "<{}> {}", sanitize(from), sanitize(text)),
        Event::Joined { name } => writeln!(out, "* {} joined", sanitize(name)),
        Event::Left { name, reason } if reason.is_empty() => {
            writeln!(out, "* {} left", sanitize(name))
        }
        Event::Left { name, reason } => {
            writeln!(out, "* {} left ({})", sanitize(name), sanitize(reason))
        }
        Event::Notice { text } => writeln!(out, "* notice: {}", sanitize(text)),
        Event::ShuttingDown { reason } => {
            writeln!(out, "* server shutting down: {}", sanitize(reason))
        }
        Event::Refused { reason, .. } => {
            eprintln!("qchat: message not sent: {}", sanitize(reason));
            Ok(())
        }
        Event::Delivered { .. } => Ok(()),
    };
    if r.is_ok() {
        let _ = out.flush();
    }
}

/// Reads stdin on its own thread: a blocking read must never sit on a
/// runtime worker. End of input drops the sender, which tells the network
/// task to leave once everything already sent is confirmed.
fn spawn_stdin_reader(tx: mpsc::Sender<Command>) {
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
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let line = match String::from_utf8(std::mem::take(&mut buf)) {
                    Ok(l) => l,
                    Err(_) => {
                        eprintln!("qchat: input line {line_no} is not valid UTF-8; not sent");
                        continue;
                    }
                };
                if line.is_empty() {
                    continue;
                }
                if tx.blocking_send(Command::Say(line)).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("qchat: cannot start the input reader: {e}");
    }
}
