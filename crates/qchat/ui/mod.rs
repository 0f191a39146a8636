//! The full-screen terminal interface, used when standard input and output
//! are terminals.
//!
//! The split follows ratatui's templates: the network task
//! (`qchat_client::session::run`) owns the connection and talks to the UI
//! through bounded channels; one `tokio::select!` here waits on the
//! terminal's async event stream, the network events, the server's
//! warnings (host only) and a redraw deadline. State changes only in
//! [`app::App::update`], which returns what the loop must do (commands to
//! send, the bell, a full redraw); [`render::draw`] only reads it.
//!
//! - `app`: state and update, and which conversation an event goes to.
//! - `conv`: a conversation's scrollback, unread count and marker line.
//! - `layout`: where things go on the screen, and text widths.
//! - `scrollback`: what a scrollback line is and how it wraps into rows.
//! - `render`: drawing.
//! - `editor`: the input line.
//! - `complete`: tab completion.
//! - `terminal`: taking over the terminal and restoring it on every exit.

mod app;
mod complete;
mod conv;
mod editor;
mod layout;
mod render;
mod scrollback;
mod terminal;

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use crossterm::event::EventStream;
use futures_util::StreamExt;
use qchat_client::{Ended, Link};
use qchat_proto::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use app::{App, Msg};

/// What the user can turn on and off.
#[derive(Debug, Clone, Copy)]
pub struct UiOptions {
    /// Ring the terminal bell when someone mentions us or writes privately.
    pub bell: bool,
}

/// Commands waiting for the network task; a paste of many lines queues in
/// the app's outbox rather than here.
const COMMAND_QUEUE: usize = 64;

/// Events from the network task; if the UI falls behind, the network task
/// pauses reading (and a server whose queue for us fills up drops us).
const EVENT_QUEUE: usize = 256;

/// At most one redraw per this long: a flood of messages costs one frame,
/// not one frame per message.
const FRAME: Duration = Duration::from_millis(16);

/// How long to wait for the server to confirm our goodbye.
const QUIT_GRACE: Duration = Duration::from_secs(3);

static LOCAL_OFFSET: OnceLock<time::UtcOffset> = OnceLock::new();

/// Reads the local time zone offset. Call at startup while the process has
/// one thread: the `time` crate refuses (and libc is unsound) once other
/// threads exist. Without it timestamps are in UTC.
pub fn capture_local_offset() {
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    let _ = LOCAL_OFFSET.set(offset);
}

fn local_offset() -> time::UtcOffset {
    LOCAL_OFFSET.get().copied().unwrap_or(time::UtcOffset::UTC)
}

/// Whether standard input and output are both terminals, so the
/// full-screen interface can be used.
pub fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Whether this command line gets the full-screen interface: `connect`
/// without `--plain`, and `serve` (the operator at the table), when
/// standard input and output are terminals. Decided before logging starts,
/// because the interface needs the logs in a file.
pub fn wanted(cli: &crate::cli::Cli) -> bool {
    use crate::cli::Command;
    match &cli.command {
        Command::Connect(args) => !args.plain && on_terminal(),
        Command::Serve(args) => wanted_for_serve(args),
        Command::Fingerprint(_)
        | Command::Identity(_)
        | Command::KnownHosts(_)
        | Command::Contacts(_)
        | Command::Completions(_)
        | Command::Man => false,
    }
}

/// Whether `qchat serve` seats the operator in the full-screen interface.
/// The one place that decides it: logging (before the subscriber starts)
/// and `serve` itself must agree.
pub fn wanted_for_serve(args: &crate::cli::ServeArgs) -> bool {
    !args.headless && on_terminal()
}

/// Runs the full-screen UI until the user quits or the session ends;
/// returns the exit status (same meaning as plain mode), after reporting
/// how the session ended on stderr once the terminal is restored.
pub async fn run<W, R>(
    link: Link<W, R>,
    about: crate::wording::About,
    options: UiOptions,
    server_events: Option<mpsc::Receiver<String>>,
) -> u8
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    run_with_reason(link, about, options, server_events).await.0
}

/// [`run`], also returning the reason given with `/quit` (empty if none):
/// the host's is what the server tells everyone as it shuts down.
pub async fn run_with_reason<W, R>(
    link: Link<W, R>,
    about: crate::wording::About,
    options: UiOptions,
    server_events: Option<mpsc::Receiver<String>>,
) -> (u8, String)
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let operator = about.trust.is_none();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let net = qchat_client::people::spawn(link, crate::home::contacts().ok(), cmd_rx, ev_tx);

    let size = crossterm::terminal::size().unwrap_or((80, 24));
    let mut app = App::new(about, options, local_offset(), size);
    let outcome = match terminal::enter() {
        Ok(mut guard) => {
            let r = event_loop(&mut guard, &mut app, cmd_tx, ev_rx, server_events).await;
            // Restore before anything is printed.
            drop(guard);
            r
        }
        Err(e) => Err(e),
    };
    // The view closed with the session: say on the normal screen why the
    // server went away (the host's `/quit REASON`), or it is lost with it.
    if let Some(words) = &app.farewell {
        if !operator {
            eprintln!("qchat: {words}");
        }
    }
    let terminal_failed = match outcome {
        Ok(()) => false,
        Err(e) => {
            tracing::error!("terminal error: {e}");
            eprintln!("qchat: terminal error: {e}");
            true
        }
    };
    // The channels are closed by now, so the network task leaves (with a
    // goodbye if it was still connected); do not hang on a dead peer.
    let ended = match tokio::time::timeout(QUIT_GRACE, net).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => Ended::Lost {
            reason: format!("internal error: {e}"),
            unconfirmed: 0,
        },
        Err(_) => Ended::Lost {
            reason: "the server did not confirm the goodbye in time".into(),
            unconfirmed: 0,
        },
    };
    let code = match ended {
        // The operator's own server stopping (SIGINT/SIGTERM) is a normal
        // end, not a disconnection.
        Ended::ByServer {
            code: Some(CloseCode::ShuttingDown),
            ..
        } if operator => crate::exit::OK,
        other => crate::plain::exit_status(other),
    };
    let code = if terminal_failed && code == crate::exit::OK {
        crate::exit::FAILURE
    } else {
        code
    };
    (code, app.quit_reason)
}

async fn event_loop(
    guard: &mut terminal::Guard,
    app: &mut App,
    cmd_tx: mpsc::Sender<qchat_client::Command>,
    mut ev_rx: mpsc::Receiver<qchat_client::Event>,
    mut server_events: Option<mpsc::Receiver<String>>,
) -> std::io::Result<()> {
    let mut keys = EventStream::new();
    let mut signals = Signals::new();
    let mut redraw_at: Option<Instant> = Some(Instant::now());
    let mut last_draw = Instant::now() - FRAME;
    let mut quit_deadline: Option<Instant> = None;
    // Commands the app gave that wait for room in the network task's
    // channel (a paste of many lines): the loop's I/O, not the app's state.
    let mut outbox: VecDeque<qchat_client::Command> = VecDeque::new();
    let mut clear = false;
    let mut ring = false;
    // The title as last set: written only when it changes.
    let mut title = String::new();
    loop {
        let mut msgs = Vec::new();
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(ev)) => msgs.push(Msg::Term(ev)),
                // The terminal is gone (hung up): leave.
                Some(Err(_)) | None => break,
            },
            ev = ev_rx.recv() => match ev {
                Some(ev) => {
                    msgs.push(Msg::Net(ev));
                    // Take whatever else is already waiting before drawing.
                    for _ in 0..EVENT_QUEUE {
                        match ev_rx.try_recv() {
                            Ok(ev) => msgs.push(Msg::Net(ev)),
                            Err(_) => break,
                        }
                    }
                }
                // The session is over.
                None => break,
            },
            line = recv_opt(&mut server_events) => match line {
                Some(line) => msgs.push(Msg::Server(line)),
                None => server_events = None,
            },
            permit = cmd_tx.reserve(), if !outbox.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(cmd) = outbox.pop_front() {
                        permit.send(cmd);
                    }
                }
                Err(_) => break,
            },
            () = signals.recv() => msgs.push(Msg::Stop),
            () = sleep_until(redraw_at) => {
                redraw_at = None;
                if terminal::active() {
                    if std::mem::take(&mut clear) {
                        guard.terminal.clear()?;
                    }
                    guard.terminal.draw(|f| render::draw(f, app))?;
                    let now = app.title();
                    if now != title {
                        terminal::set_title(&now);
                        title = now;
                    }
                    if std::mem::take(&mut ring) {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(b"\x07");
                        let _ = out.flush();
                    }
                }
                last_draw = Instant::now();
                continue;
            }
            () = sleep_until(quit_deadline) => break,
        }
        for msg in msgs {
            let fx = app.update(msg);
            outbox.extend(fx.commands);
            clear |= fx.clear;
            ring |= fx.ring;
        }
        if app.quitting && quit_deadline.is_none() {
            quit_deadline = Some(Instant::now() + QUIT_GRACE);
        }
        if redraw_at.is_none() {
            redraw_at = Some((last_draw + FRAME).max(Instant::now()));
        }
    }
    Ok(())
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGHUP: without handling them the process would die with
/// the terminal still in raw mode on the alternate screen. They leave at
/// once (Ctrl-C in the view is a key, and asks first where that matters).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = one(&mut self.term) => {}
                () = one(&mut self.hup) => {}
            }
        }
        #[cfg(not(unix))]
        std::future::pending().await
    }
}
