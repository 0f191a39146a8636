//! Logging: `RUST_LOG` if set, else a level from `-v`/`-q`. Logs go to
//! stderr so that stdout stays the program's output (events in plain mode,
//! the fingerprint for `qchat fingerprint`).

use tracing_subscriber::EnvFilter;

use crate::cli::Cli;

/// Keeps whatever the subscriber needs alive for the program's lifetime.
pub struct Guard;

/// Installs the subscriber.
pub fn init(cli: &Cli) -> Guard {
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    Guard
}
