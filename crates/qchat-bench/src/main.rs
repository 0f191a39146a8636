//! `qchat-bench`: measures what a qchat room costs, with a load that speaks
//! the real protocol through the client crate, against a minimal QUIC relay
//! on the same transport. A separate binary so that the load generator and
//! the baseline never ship in the user's `qchat`.
//!
//! - `cli`: the flags.
//! - `bench`: one run or a comparison, and the report.
//! - `load`: members, senders and receivers, and the checks on every
//!   delivery (nothing missing, duplicated or reordered).
//! - `window`: how many messages each sender may have on their way.
//! - `evict`: members the server disconnected, which fail the run.
//! - `stats`: the latency histogram and medians.
//! - `proc`: the server under test as its own process, read through
//!   `/proc`.
//! - `storm`: a restart or a mass disconnect, and every member resuming.
//! - `cluster`: a nats-server and `qchat serve --cluster` nodes
//!   (`--cluster-nodes`, `--failover`).
//! - `relay`: the baseline (`qchat-bench relay`, hidden).
//!
//! How to reproduce the published numbers is in docs/PERFORMANCE.md.

mod bench;
mod cli;
mod cluster;
mod evict;
mod load;
mod proc;
mod relay;
mod stats;
mod storm;
mod window;

use std::process::ExitCode;

use clap::Parser;

/// Exit statuses.
mod exit {
    /// Success: every delivery arrived once and in order.
    pub const OK: u8 = 0;
    /// Something failed, the server disconnected a member, the run timed
    /// out, or a delivery was missing, duplicated or reordered.
    pub const FAILURE: u8 = 1;
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Quiet unless asked (RUST_LOG=debug shows, e.g., retried joins): the
    // bench's output is its report.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Some(cli::Command::Relay(args)) => relay::run(args),
        None => bench::run(*cli.bench),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("qchat-bench: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
