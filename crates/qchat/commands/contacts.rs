//! `qchat contacts`: look at and change the people this user verified.
//!
//! The counterpart of `qchat known-hosts` for people: `list` and `remove`
//! work on `$QCHAT_HOME/contacts`, `verify` records a fingerprint a person
//! gave out of band without connecting (in a chat, `/verify` does the same
//! and checks it against what the server says). Every change goes through
//! `Contacts::update` (locked, atomic), so it is safe while a client runs.
//! Text output is for people; `--json` is for scripts and keeps its field
//! names stable.

use std::path::Path;

use anyhow::{bail, Result};
use qchat_client::contacts::{self, Contact, ContactName, Contacts, ContactsError};
use qchat_tls::Fingerprint;
use serde_json::{json, Value};

use super::{print_json, shown, warn_file};
use crate::cli::{ContactsAction, ContactsArgs};
use crate::wording::s;

/// Runs one `contacts` action; returns the exit status.
pub fn run(args: ContactsArgs) -> Result<u8> {
    let path = match &args.contacts {
        Some(p) => p.clone(),
        None => crate::home::contacts()?,
    };
    match args.action {
        ContactsAction::List => list(&path, args.json),
        ContactsAction::Remove { name } => remove(&path, &name, args.json),
        ContactsAction::Verify { name, fingerprint } => {
            verify(&path, &name, fingerprint, args.json)
        }
    }
}

fn when(contact: &Contact) -> String {
    qchat_tls::pinfile::timestamp(contact.verified_at)
}

fn contact_json(c: &Contact) -> Value {
    json!({
        "name": c.name,
        "fingerprints": c.keys.iter().map(Fingerprint::canonical).collect::<Vec<_>>(),
        "verified_at": when(c),
        "line": c.line,
    })
}

fn list(path: &Path, json: bool) -> Result<u8> {
    let file = Contacts::load(path)?;
    warn_file(file.warnings());
    if json {
        let contacts: Vec<Value> = file.records().iter().map(contact_json).collect();
        print_json(&json!({
            "file": path.display().to_string(),
            "contacts": contacts,
            "warnings": file.warnings(),
        }))?;
        return Ok(crate::exit::OK);
    }
    if file.records().is_empty() {
        println!(
            "no contacts in {}; `/verify NAME FINGERPRINT` in a chat adds one",
            shown(path)
        );
        return Ok(crate::exit::OK);
    }
    println!("contacts in {}:", shown(path));
    let width = file
        .records()
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  {:<20}  FINGERPRINTS", "NAME", "VERIFIED");
    for c in file.records() {
        println!(
            "{:<width$}  {:<20}  {}",
            s(&c.name),
            when(c),
            contacts::list(&c.keys)
        );
    }
    Ok(crate::exit::OK)
}

fn remove(path: &Path, name: &str, json: bool) -> Result<u8> {
    let key = ContactName::new(name);
    // Checked first so that removing a contact that is not there creates
    // no file, directory or lock.
    let current = Contacts::load(path)?;
    if current.get(&key).is_none() {
        warn_file(current.warnings());
        bail!(
            "{} is not a contact in {}; nothing was changed (`qchat contacts list` shows them)",
            s(name),
            shown(path)
        );
    }
    let (file, previous) = Contacts::update(path, |e| Ok(e.remove(&key)))?;
    warn_file(file.warnings());
    let Some(previous) = previous else {
        // Another process removed it between the check and the lock.
        bail!(
            "{} is not a contact in {}; nothing was changed",
            s(name),
            shown(path)
        );
    };
    if json {
        print_json(&json!({
            "action": "remove",
            "file": path.display().to_string(),
            "removed": contact_json(&previous),
        }))?;
    } else {
        println!(
            "removed {} ({}) from {}; the name no longer carries ✓",
            s(&previous.name),
            contacts::list(&previous.keys),
            shown(path)
        );
    }
    Ok(crate::exit::OK)
}

fn verify(path: &Path, name: &str, fingerprint: Fingerprint, json: bool) -> Result<u8> {
    if let Err(e) = qchat_proto::names::validate(name) {
        bail!("{} is not a name qchat accepts: {e}", s(name));
    }
    let key = ContactName::new(name);
    let (file, previous) = Contacts::update(path, |e| match e.get(&key) {
        Some(c) if c.keys.contains(&fingerprint) => Ok(Some(c.clone())),
        Some(c) => Err(ContactsError::NotTheirKey {
            name: c.name.clone(),
            given: fingerprint,
            keys: c.keys.clone(),
        }),
        None => {
            e.put(Contact::new(name, &[fingerprint]));
            Ok(None)
        }
    })
    .map_err(|e| match e {
        ContactsError::NotTheirKey { .. } => anyhow::anyhow!(
            "{e}. If they gave you a new key, `qchat contacts remove {}` first, or `/verify` in a chat",
            s(name)
        ),
        e => e.into(),
    })?;
    warn_file(file.warnings());
    let Some(contact) = file.get(&key) else {
        bail!("the contact was written but cannot be read back; run `qchat contacts list`");
    };
    if json {
        print_json(&json!({
            "action": "verify",
            "file": path.display().to_string(),
            "already_verified": previous.is_some(),
            "contact": contact_json(contact),
        }))?;
    } else if previous.is_some() {
        println!(
            "{} already has {fingerprint} among the keys you verified; nothing changed",
            s(&contact.name)
        );
    } else {
        println!(
            "{} is now a contact ({fingerprint}) in {}; the name carries ✓ where its keys are exactly this one",
            s(&contact.name),
            shown(path)
        );
    }
    Ok(crate::exit::OK)
}
