//! `qchat completions SHELL`: a completion script generated from the same
//! clap definitions that parse the command line, so it cannot drift.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "qchat", &mut std::io::stdout());
    Ok(crate::exit::OK)
}
