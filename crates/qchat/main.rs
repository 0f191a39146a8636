//! `qchat`: encrypted terminal chat over QUIC.
//!
//! This crate is only the command line: it parses flags into checked
//! settings, wires the library crates together, and owns everything that
//! touches the terminal. The layout:
//!
//! - `cli`: the flags, with clap.
//! - `config`: `qchat serve`'s settings file, checked by the flags' parsers.
//! - `home`: where state lives (`QCHAT_HOME` or the platform directories).
//! - `logging`: the tracing subscriber; libraries only emit.
//! - `commands/`: one module per subcommand.
//! - `input`: what a typed line means (messages and `/commands`).
//! - `wording`: the words for every event, shared by both interfaces.
//! - `plain`: the line-oriented interface for scripts and tests.
//! - `prompt`: questions asked on the terminal (trust on first use, name).
//! - `ui/`: the full-screen interface for people at a terminal.

mod cli;
mod commands;
mod config;
mod home;
mod input;
mod logging;
mod plain;
mod prompt;
mod ui;
mod wording;

use std::process::ExitCode;

/// Exit statuses, documented in README.md.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Something failed; stderr says what.
    pub const FAILURE: u8 = 1;
    /// The flags were wrong (clap's own status).
    pub const USAGE: u8 = 2;
    /// The server ended the session (shutdown, kick, flood, slow reader).
    pub const DISCONNECTED: u8 = 3;
}

fn main() -> ExitCode {
    // Before any thread exists: reading the time zone later is refused.
    ui::capture_local_offset();
    let cli = cli::parse();
    let logging = logging::init(&cli);
    match commands::run(cli, logging.server_events) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("qchat: {}", error_chain(&e));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// One line with the causes, without a backtrace.
fn error_chain(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}
