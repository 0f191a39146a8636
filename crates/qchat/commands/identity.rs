//! `qchat identity new`: replace the person's own key, after asking.
//!
//! A new key is a new person as far as every server is concerned: the
//! names the old key registered stay bound to it until they expire, and
//! friends who verified the old fingerprint see a different one. So it asks
//! first (or wants `--yes` when there is no terminal), and keeps the old
//! files beside the new ones.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};

use crate::cli::{IdentityAction, IdentityArgs};

pub fn run(args: IdentityArgs) -> Result<u8> {
    match args.action {
        IdentityAction::New { yes } => new(yes),
    }
}

fn new(yes: bool) -> Result<u8> {
    let dir = crate::home::identity_dir()?;
    let old = match qchat_tls::identity::load_as(&dir, qchat_tls::Role::Person) {
        Ok(id) => Some(id.fingerprint),
        Err(qchat_tls::IdentityError::NotFound { .. }) => None,
        // A damaged key is exactly when a new one is wanted; the old files
        // are kept all the same.
        Err(e) => {
            eprintln!("qchat: warning: {e}");
            None
        }
    };
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "replacing your key needs a confirmation; pass --yes to replace it without asking"
            );
        }
        if !confirm(old)? {
            eprintln!("qchat: your key was not changed");
            return Ok(crate::exit::FAILURE);
        }
    }
    let id = qchat_tls::identity::create_new_as(&dir, qchat_tls::Role::Person)
        .context("cannot create a new key")?;
    eprintln!(
        "qchat: created a new key in {}; the old files are kept there as *.old-*",
        dir.display()
    );
    println!("{}", id.fingerprint.canonical());
    Ok(crate::exit::OK)
}

fn confirm(old: Option<qchat_tls::Fingerprint>) -> Result<bool> {
    let mut err = std::io::stderr();
    if let Some(old) = old {
        writeln!(
            err,
            "Your key is {old}.\n\
             A new key is a new identity: names your old key registered on servers stay \
             bound to it until they expire, and people who verified you see a different key."
        )?;
    }
    write!(err, "Replace your key (yes/no)? ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "yes" | "y"
    ))
}
