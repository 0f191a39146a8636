//! One module per subcommand; each returns the process exit status.

mod completions;
mod connect;
mod contacts;
mod fingerprint;
mod identity;
mod known_hosts;
mod man;
mod serve;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand. `server_events` is the server's news for
/// the host's full-screen view, when logging set it up.
pub fn run(cli: Cli, server_events: Option<tokio::sync::mpsc::Receiver<String>>) -> Result<u8> {
    match cli.command {
        Command::Serve(args) => serve::run(*args, server_events),
        Command::Connect(args) => connect::run(args),
        Command::Fingerprint(args) => fingerprint::run(args),
        Command::Identity(args) => identity::run(args),
        Command::KnownHosts(args) => known_hosts::run(args),
        Command::Contacts(args) => contacts::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man => man::run(),
    }
}

/// Loads the server identity from `dir`, creating it on first use, and
/// reports where it came from on stderr. Shared by `serve` and
/// `fingerprint`, which must agree on the identity.
fn identity(dir: Option<std::path::PathBuf>, new: bool) -> Result<qchat_tls::Identity> {
    use anyhow::Context;
    let dir = match dir {
        Some(d) => d,
        None => crate::home::cert_dir()?,
    };
    let identity = if new {
        let id =
            qchat_tls::identity::create_new(&dir).context("cannot create a new server identity")?;
        tracing::warn!(dir = %dir.display(), "created a NEW server identity; clients that pinned the old key will refuse to connect until they replace the pin");
        id
    } else {
        let (id, outcome) =
            qchat_tls::identity::load_or_create(&dir).context("cannot load the server identity")?;
        if outcome == qchat_tls::LoadOutcome::Created {
            tracing::info!(dir = %dir.display(), "created a new server identity");
        }
        id
    };
    for w in qchat_tls::identity::permission_warnings(&identity) {
        tracing::warn!("{w}");
    }
    Ok(identity)
}

/// Loads the person's own key, creating it on first use and saying so on
/// stderr (with where it lives: it is worth a backup). Shared by `connect`
/// and `fingerprint --mine`, which must agree on the key.
fn my_identity() -> Result<qchat_tls::Identity> {
    use anyhow::Context;
    let dir = crate::home::identity_dir()?;
    let (id, outcome) = qchat_tls::identity::load_or_create_as(&dir, qchat_tls::Role::Person)
        .context("cannot load your key")?;
    if outcome == qchat_tls::LoadOutcome::Created {
        eprintln!(
            "qchat: created your key {} in {}; servers bind your name to it, so keep a backup",
            id.fingerprint,
            dir.display()
        );
    }
    for w in qchat_tls::identity::permission_warnings(&id) {
        eprintln!("qchat: warning: {w}");
    }
    Ok(id)
}

/// A path for display: it is the user's own, but a hostile directory name
/// must not get to drive the terminal either.
fn shown(path: &std::path::Path) -> String {
    qchat_proto::text::sanitize(&path.display().to_string()).into_owned()
}

/// Problems with a record file (malformed lines as `file:line: what`, loose
/// permissions) go to stderr in every mode: they are for a person even when
/// a script reads stdout. The file's contents are untrusted text.
fn warn_file(warnings: &[String]) {
    for w in warnings {
        eprintln!("qchat: warning: {}", qchat_proto::text::sanitize(w));
    }
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    use anyhow::Context;
    let text = serde_json::to_string_pretty(value).context("cannot format JSON")?;
    println!("{text}");
    Ok(())
}
