//! `qchat known-hosts`: look at and change the client's pins.
//!
//! The pin file can be edited by hand, but a changed key must be handled
//! with care, so this is the supported way: `replace` is the command the
//! changed-key warning prints, `verify` upgrades a pin trusted on first use
//! after an out-of-band check. Every change goes through
//! `KnownHosts::update` (locked, atomic), so it is safe while a client is
//! connecting. Text output is for people; `--json` is for scripts and keeps
//! its field names stable.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{print_json, shown};
use qchat_tls::known_hosts::KnownHostsError;
use qchat_tls::{Fingerprint, HostKey, KnownHosts, Pin};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::cli::{KnownHostsAction, KnownHostsArgs};

/// Runs one `known-hosts` action; returns the exit status.
pub fn run(args: KnownHostsArgs) -> Result<u8> {
    let path = match &args.known_hosts {
        Some(p) => p.clone(),
        None => crate::home::known_hosts()?,
    };
    match args.action {
        KnownHostsAction::List => list(&path, args.json),
        KnownHostsAction::Remove { host } => remove(&path, &host, args.json),
        KnownHostsAction::Replace { host, fingerprint } => {
            replace(&path, &host, fingerprint, args.json)
        }
        KnownHostsAction::Verify { host, fingerprint } => {
            verify(&path, &host, fingerprint, args.json)
        }
    }
}

fn when(pin: &Pin) -> String {
    pin.first_seen
        .format(&Rfc3339)
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn status(pin: &Pin) -> &'static str {
    if pin.verified {
        "verified"
    } else {
        "tofu"
    }
}

fn pin_json(pin: &Pin) -> Value {
    json!({
        "host": pin.host.to_string(),
        "hostname": pin.host.host,
        "port": pin.host.port,
        "fingerprint": pin.fingerprint.canonical(),
        "hex": pin.fingerprint.hex(),
        "first_seen": when(pin),
        "verified": pin.verified,
        "line": pin.line,
    })
}

fn warn_all(store: &KnownHosts) {
    super::warn_file(store.warnings());
}

fn list(path: &Path, json: bool) -> Result<u8> {
    let store = KnownHosts::load(path)?;
    warn_all(&store);
    if json {
        let pins: Vec<Value> = store.pins().iter().map(pin_json).collect();
        print_json(&json!({
            "file": path.display().to_string(),
            "pins": pins,
            "warnings": store.warnings(),
        }))?;
        return Ok(crate::exit::OK);
    }
    if store.pins().is_empty() {
        println!("no pinned servers in {}", shown(path));
        return Ok(crate::exit::OK);
    }
    println!("pinned servers in {}:", shown(path));
    let width = store
        .pins()
        .iter()
        .map(|p| p.host.to_string().len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<50}  {:<20}  STATUS",
        "HOST", "FINGERPRINT", "FIRST SEEN"
    );
    for pin in store.pins() {
        let status = if pin.verified {
            "verified"
        } else {
            "tofu (not verified)"
        };
        println!(
            "{:<width$}  {:<50}  {:<20}  {status}",
            pin.host.to_string(),
            pin.fingerprint.canonical(),
            when(pin),
        );
    }
    Ok(crate::exit::OK)
}

fn remove(path: &Path, host: &HostKey, json: bool) -> Result<u8> {
    // Checked first so that asking to remove a pin that is not there
    // creates no file, directory or lock.
    let current = KnownHosts::load(path)?;
    if current.get(host).is_none() {
        warn_all(&current);
        bail!(
            "{host} has no pin in {}; nothing was changed (`qchat known-hosts list` shows what is pinned)",
            shown(path)
        );
    }
    let (store, previous) = KnownHosts::update(path, |e| {
        let previous = e.get(host).cloned();
        e.remove(host);
        Ok(previous)
    })?;
    warn_all(&store);
    let Some(previous) = previous else {
        // Another process removed it between the check and the lock.
        bail!("{host} has no pin in {}; nothing was changed", shown(path));
    };
    if json {
        print_json(&json!({
            "action": "remove",
            "file": path.display().to_string(),
            "host": host.to_string(),
            "removed": pin_json(&previous),
        }))?;
    } else {
        println!(
            "removed the pin for {host} ({}, {}) from {}; the next connection will treat it as a new server",
            previous.fingerprint,
            status(&previous),
            shown(path)
        );
    }
    Ok(crate::exit::OK)
}

/// The pin an update just wrote, after reporting the store's warnings.
fn written_pin<'a>(store: &'a KnownHosts, host: &HostKey) -> Result<&'a qchat_tls::Pin> {
    warn_all(store);
    store
        .get(host)
        .context("the pin was written but cannot be read back; run `qchat known-hosts list`")
}

fn replace(path: &Path, host: &HostKey, fingerprint: Fingerprint, json: bool) -> Result<u8> {
    let (store, previous) = KnownHosts::update(path, |e| Ok(e.replace(host, fingerprint)))?;
    let pin = written_pin(&store, host)?;
    if json {
        print_json(&json!({
            "action": "replace",
            "file": path.display().to_string(),
            "host": host.to_string(),
            "previous": previous.as_ref().map(pin_json),
            "pin": pin_json(pin),
        }))?;
        return Ok(crate::exit::OK);
    }
    match previous {
        Some(old) if old.fingerprint == fingerprint => println!(
            "{host} was already pinned to {fingerprint}; it is now recorded as verified in {}",
            shown(path)
        ),
        Some(old) => println!(
            "replaced the pin for {host} in {}:\n  old: {} ({})\n  new: {fingerprint} (verified)",
            shown(path),
            old.fingerprint,
            status(&old)
        ),
        None => println!(
            "pinned {host} to {fingerprint} (verified) in {}",
            shown(path)
        ),
    }
    Ok(crate::exit::OK)
}

fn verify(path: &Path, host: &HostKey, fingerprint: Fingerprint, json: bool) -> Result<u8> {
    let current = KnownHosts::load(path)?;
    if current.get(host).is_none() {
        warn_all(&current);
        bail!(
            "{host} has no pin in {}; connect with `qchat connect {host} --fingerprint {fingerprint}` to pin it as verified",
            shown(path)
        );
    }
    let result = KnownHosts::update(path, |e| {
        let was_verified = e.get(host).is_some_and(|p| p.verified);
        e.mark_verified(host, fingerprint)?;
        Ok(was_verified)
    });
    let (store, was_verified) = match result {
        Ok(r) => r,
        Err(KnownHostsError::FingerprintMismatch { pinned, given, .. }) => bail!(
            "the fingerprint you gave for {host} ({given}) is not the pinned one ({pinned}); \
             the pin stays unverified. If you have been connecting to this server, you may have \
             been talking to someone else: ask the operator (`qchat fingerprint` on the server). \
             If the operator confirms {given}, run `qchat known-hosts replace {host} --fingerprint {given}`"
        ),
        Err(e) => return Err(e.into()),
    };
    let pin = written_pin(&store, host)?;
    if json {
        print_json(&json!({
            "action": "verify",
            "file": path.display().to_string(),
            "host": host.to_string(),
            "already_verified": was_verified,
            "pin": pin_json(pin),
        }))?;
    } else if was_verified {
        println!("{host} was already verified ({fingerprint}); nothing changed");
    } else {
        println!(
            "{host} is now marked verified ({fingerprint}) in {}",
            shown(path)
        );
    }
    Ok(crate::exit::OK)
}
