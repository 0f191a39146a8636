//! Plain mode: one input line is one message or `/command`; one output line
//! per event, flushed at once.
//!
//! The output format is stable and documented in README.md, because
//! scripts and the end-to-end tests read it:
//!
//! ```text
//! <alice> hello                    a message
//! <alice ✓> hello                  …from a verified contact (`/verify`)
//! * alice waves                    an action (/me)
//! [alice -> bob] psst              a private message (to you, or yours)
//! [history] <alice> earlier        a message from before you joined
//! * bob joined                     join notice
//! * bob left (reason)              leave notice (no parentheses if no reason)
//! * alice is now known as alicia   a name change
//! * members (2): alice ✓ 5m, bob 12s
//! * verified alice (SHA256:…): …   /verify stored a contact
//! * WARNING: alice's keys are not the ones you verified: verified …; now …
//! * notice: TEXT                   a notice from the server
//! * kicked by op: REASON           you were removed
//! * server shutting down: REASON
//! * server restarting: REASON, reconnecting
//! * alice is reconnecting          her connection dropped; the server holds her name
//! * alice is back                  …and she came back in time (no leave/join pair)
//! * no answer for 2s               the server went quiet (said once)
//! * connection lost: REASON        our connection dropped
//! * reconnecting (attempt 2, next in 4s)
//! * reconnected, 3 missed          back; ", N missed" only if some could not be replayed
//! <alice> first line               a multi-line message: continuation lines
//!   second line                    start with two spaces
//! #dev <alice> hi                  a line of another room: the room first
//! #dev * alice waves               (every line of a room has its name first,
//! #dev [history] <bob> earlier      and once you are in another room the
//! * #dev bob joined                 lobby's own lines and notices start with
//! #lobby <carol> hello              #lobby the same way)
//! * you joined #dev (2 members: alice, bob); topic: TEXT
//! * rooms (2): #lobby 3 members, #dev 2 members: TEXT
//! ```
//!
//! A typed line goes to the current room: `#lobby` at first, then the room
//! of the last `/join` or `/switch` (and `#lobby` again after `/part` of
//! the current room).
//!
//! The words come from [`crate::wording`], shared with the full-screen
//! view; this module only decides that they are lines. Errors, including
//! refused messages and failed commands, go to stderr as `qchat: …`.

use std::io::{BufRead, Write};

use qchat_client::people::{self, Marks};
use qchat_client::{Command, Ended, Event, Link};
use qchat_proto::text::sanitize;

use crate::wording::{self, About};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::exit;
use crate::input::{self, Input};

/// Runs the session with lines from stdin until end of input, `/quit`, or
/// the server ending it; returns the exit status. The header (who we are,
/// where, how trusted) is printed first.
pub async fn run<W, R>(link: Link<W, R>, about: About) -> u8
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut out = std::io::stdout();
    for line in about.header() {
        let _ = writeln!(out, "* {line}");
    }
    let _ = out.flush();

    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    spawn_stdin_reader(cmd_tx, about);
    let net = people::spawn(link, crate::home::contacts().ok(), cmd_rx, ev_tx);

    let mut transitions = wording::Transitions::default();
    let mut marks = Marks::default();
    // Once in another room, the lobby's lines say they are the lobby's; a
    // client that never joined one prints exactly what it always did.
    let mut in_rooms = false;
    while let Some(ev) = ev_rx.recv().await {
        marks.apply(&ev);
        in_rooms |= matches!(ev, Event::RoomJoined { .. });
        let ev = if in_rooms && lobby_line(&ev) {
            Event::InRoom {
                room: qchat_proto::names::LOBBY.into(),
                event: Box::new(ev),
            }
        } else {
            ev
        };
        match &ev {
            // One line per change, not one per report.
            Event::Connection(state) => {
                if let Some(line) = transitions.line(state) {
                    let _ = writeln!(out, "* {line}");
                    let _ = out.flush();
                }
            }
            _ => print_event(&mut out, &ev, &marks),
        }
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

/// Whether `ev` happened in the lobby itself: its lines, and members
/// coming and going.
fn lobby_line(ev: &Event) -> bool {
    match ev {
        Event::Chat { .. }
        | Event::Action { .. }
        | Event::History { .. }
        | Event::Joined { .. }
        | Event::Left { .. }
        | Event::MemberReconnecting { .. }
        | Event::MemberReturned { .. } => true,
        Event::Forged { private, .. } => !private,
        _ => false,
    }
}

fn print_event(out: &mut impl Write, ev: &Event, marks: &Marks) {
    match wording::marked(ev, marks).as_ref().map(wording::plain) {
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
fn spawn_stdin_reader(tx: mpsc::Sender<Command>, about: About) {
    // The operator is the one without a trust state: the server is theirs.
    let operator = about.trust.is_none();
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            let mut line_no = 0u64;
            // Where a typed line goes: the last /join or /switch.
            let mut room = qchat_proto::names::LOBBY.to_string();
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
                let cmd = match input::parse_in(line, &room) {
                    Input::Send(cmd) => {
                        match &cmd {
                            Command::Join(r) => room.clone_from(r),
                            Command::Part { room: r, .. }
                                if qchat_proto::names::fold_room(r)
                                    == qchat_proto::names::fold_room(&room) =>
                            {
                                room = qchat_proto::names::LOBBY.to_string();
                            }
                            _ => {}
                        }
                        cmd
                    }
                    Input::Switch(r) => {
                        room = r;
                        continue;
                    }
                    Input::Nothing => continue,
                    shown @ (Input::Help | Input::Fingerprint) => {
                        let lines = if shown == Input::Help {
                            input::help_lines(operator)
                        } else {
                            about.fingerprint_lines()
                        };
                        let mut out = std::io::stdout().lock();
                        for l in lines {
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
