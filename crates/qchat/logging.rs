//! Logging: `RUST_LOG` if set, else a level from `-v`/`-q`.
//!
//! Where logs go is decided once, before the subscriber is installed,
//! because it depends on which interface will run:
//!
//! - Normally they go to stderr, so that stdout stays the program's output
//!   (events in plain mode, the fingerprint for `qchat fingerprint`).
//! - When the full-screen interface will take over the terminal
//!   (`connect` or `serve` with stdin and stdout on a terminal, see
//!   [`crate::ui::wanted`]), a log line on the screen would corrupt it: logs
//!   are appended to `$QCHAT_HOME/qchat.log` (created 0600) instead.
//! - For `serve` with the interface, the server's warnings and errors are
//!   also forwarded to the host's screen as sentences, through a bounded
//!   channel that [`init`] returns ([`Logging::server_events`]) and `main`
//!   hands to `serve`. Joins and leaves are not: the host sees those once,
//!   as the room's own words, like every member. Forwarding uses
//!   `try_send` and drops lines when the UI is behind: logging must never
//!   block the server.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::{Cli, Command};

/// Server news the host's screen can fall behind by before lines are
/// dropped.
const SERVER_EVENTS: usize = 256;

/// What the installed subscriber hands to the rest of the program.
pub struct Logging {
    /// The server's warnings as sentences, for the host's view (`serve`
    /// with the full-screen interface only).
    pub server_events: Option<mpsc::Receiver<String>>,
}

/// Installs the subscriber.
pub fn init(cli: &Cli) -> Logging {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,qchat={level},qchat_server={level},qchat_client={level},qchat_tls={level}"
        ))
    });
    let ui = crate::ui::wanted(cli);
    let writer = if ui { log_file() } else { None };
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = match writer {
        Some(file) => fmt.with_ansi(false).with_writer(Mutex::new(file)).boxed(),
        None if ui => fmt.with_writer(io::sink).boxed(),
        None => fmt
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_writer(io::stderr)
            .boxed(),
    };
    let (forward, server_events) = if ui && matches!(cli.command, Command::Serve(_)) {
        let (tx, rx) = mpsc::channel(SERVER_EVENTS);
        // Its own filter: the host hears of the server's trouble even when
        // the log file is quieter.
        let layer = ServerEventLayer { tx }.with_filter(server_warnings());
        (Some(layer), Some(rx))
    } else {
        (None, None)
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(forward)
        .try_init();
    Logging { server_events }
}

/// What the host's view hears of: the server's warnings and errors, with
/// the spans they happen in (INFO spans carry the peer and the name).
fn server_warnings() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool>
{
    tracing_subscriber::filter::filter_fn(|meta| {
        let limit = if meta.is_span() {
            Level::INFO
        } else {
            Level::WARN
        };
        meta.target().starts_with("qchat_server") && *meta.level() <= limit
    })
}

/// Opens `$QCHAT_HOME/qchat.log` for appending, private to the user. A
/// failure is reported now, on the normal screen, and logs are dropped.
fn log_file() -> Option<File> {
    let open = || -> anyhow::Result<File> {
        let home = crate::home::home()?;
        std::fs::create_dir_all(&home)?;
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        Ok(opts.open(home.join("qchat.log"))?)
    };
    match open() {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("qchat: warning: cannot open the log file, logs are off: {e}");
            None
        }
    }
}

/// Forwards server events to the host's screen as one sentence each: the
/// message, then the fields of the event and its spans (`peer`, `name`…)
/// in parentheses.
struct ServerEventLayer {
    tx: mpsc::Sender<String>,
}

/// A span's fields, formatted once when recorded.
struct SpanFields(String);

/// Formats fields as `key=value` pairs and keeps the message apart.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let _ = write!(self.pairs, ", {} {}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.pairs, ", {} {:?}", field.name(), value);
        }
    }
}

impl<S> Layer<S> for ServerEventLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(f.pairs));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        values.record(&mut f);
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<SpanFields>() {
                Some(existing) => existing.0.push_str(&f.pairs),
                None => ext.insert(SpanFields(f.pairs)),
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let mut context = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    context.push_str(&fields.0);
                }
            }
        }
        context.push_str(&f.pairs);
        let what = if *event.metadata().level() == Level::WARN {
            "server warning"
        } else {
            "server error"
        };
        let mut line = format!("{what}: {}", f.message);
        if let Some(context) = context.strip_prefix(", ") {
            line.push_str(&format!(" ({context})"));
        }
        // Never wait: a full channel means the operator's screen is
        // behind, and the server must not be.
        let _ = self.tx.try_send(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_gets_warnings_as_sentences_and_no_routine_lines() {
        let (tx, mut rx) = mpsc::channel(8);
        let subscriber = tracing_subscriber::registry()
            .with(ServerEventLayer { tx }.with_filter(server_warnings()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: "qchat_server", "conn", peer = "192.0.2.1:4433");
            let _in = span.enter();
            tracing::info!(target: "qchat_server", name = "alice", "joined");
            tracing::warn!(target: "qchat_server", code = 6, "a member is not reading");
            tracing::error!(target: "qchat_server", "cannot accept");
        });
        assert_eq!(
            rx.try_recv().ok().as_deref(),
            Some("server warning: a member is not reading (peer 192.0.2.1:4433, code 6)")
        );
        assert_eq!(
            rx.try_recv().ok().as_deref(),
            Some("server error: cannot accept (peer 192.0.2.1:4433)")
        );
        assert!(rx.try_recv().is_err(), "joins are the room's to announce");
    }
}
