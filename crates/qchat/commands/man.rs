//! `qchat man`: the manual page in roff, generated from the clap
//! definitions. One page for the whole program, with every subcommand's
//! usage and flags, so `man qchat` answers what `--help` would.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

pub fn run() -> Result<u8> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    render(&cmd, &mut out).context("cannot render the manual page")?;
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the manual page")?;
    Ok(crate::exit::OK)
}

/// One page for the whole program: clap_mangen renders one command per
/// page and would point at `qchat-serve(1)` pages nobody installs, so the
/// main page's sections are laid out here with a section per subcommand,
/// then what clap does not know (environment, files, exit status).
fn render(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = sub.get_name();
        writeln!(out, ".SH \"QCHAT {}\"", name.to_uppercase())?;
        let sub = sub.clone().bin_name(format!("qchat {name}"));
        let man = clap_mangen::Man::new(sub.clone());
        man.render_synopsis_section(out)?;
        man.render_description_section(out)?;
        man.render_options_section(out)?;
        for action in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            writeln!(out, ".SS \"qchat {name} {}\"", action.get_name())?;
            let action = action
                .clone()
                .bin_name(format!("qchat {name} {}", action.get_name()));
            let man = clap_mangen::Man::new(action);
            man.render_synopsis_section(out)?;
            man.render_description_section(out)?;
            man.render_options_section(out)?;
        }
    }
    out.write_all(TAIL.as_bytes())?;
    man.render_version_section(out)
}

/// What the flags cannot say: where state lives and what the exit status
/// means (the same as `crate::exit`).
const TAIL: &str = r#".SH ENVIRONMENT
.TP
\fBQCHAT_HOME\fR
The folder for all of qchat's state. Unset, the platform's data directory
(\fI~/.local/share/qchat\fR on Linux).
.TP
\fBRUST_LOG\fR
Log filter (for example \fIinfo\fR or \fIqchat_server=debug\fR); overrides \fB-v\fR and \fB-q\fR.
.SH FILES
.TP
\fI$QCHAT_HOME/certs/cert.pem\fR, \fI$QCHAT_HOME/certs/key.pem\fR
The server's identity; the key is created mode 0600. Its fingerprint is
what clients pin.
.TP
\fI$QCHAT_HOME/known_hosts\fR
The servers this client has pinned.
.TP
\fI$QCHAT_HOME/qchat.log\fR
The log while the full-screen interface is up.
.SH "EXIT STATUS"
.TP
0
Success.
.TP
1
Something failed; the error says what.
.TP
2
The command line was wrong.
.TP
3
The server ended the session (shut down, kicked, flood, slow reader).
"#;
