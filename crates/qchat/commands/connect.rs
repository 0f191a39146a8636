//! `qchat connect`: decide trust, connect, join, then hand over to the
//! interface.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use qchat_client::{TrustMode, TrustPlan, TrustState};
use qchat_proto::names;
use qchat_proto::text::sanitize;

use crate::cli::{ConnectArgs, Trust};

pub fn run(args: ConnectArgs) -> Result<u8> {
    let host = args.host.clone();
    let known_hosts = match &args.known_hosts {
        Some(p) => p.clone(),
        None => crate::home::known_hosts()?,
    };
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let mode = if args.accept_new {
        TrustMode::AcceptNew
    } else {
        match args.trust {
            Trust::Ask => TrustMode::Ask,
            Trust::AcceptNew => TrustMode::AcceptNew,
            Trust::Strict => TrustMode::Strict,
        }
    };
    let name = match args.name {
        Some(n) => n,
        None if interactive => crate::prompt::ask_name()?,
        None => bail!("no name given; pass --name NAME"),
    };
    if let Err(e) = names::validate(&name) {
        bail!(
            "cannot use the name {:?}: {e}",
            qchat_proto::text::sanitize(&name)
        );
    }
    let plan = TrustPlan::load(host, &known_hosts, args.fingerprint, mode, interactive)?;
    for w in &plan.warnings {
        eprintln!("qchat: warning: {w}");
    }

    // The full-screen interface on a terminal; the trust question above
    // is asked before it takes the screen.
    let use_ui = !args.plain && crate::ui::on_terminal();
    let no_bell = args.no_bell;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = qchat_client::connection::resolve(&plan.host).await?;
        let endpoint = qchat_client::client_endpoint(addr)?;
        let (conn, trust, fingerprint) =
            qchat_client::connect(&endpoint, addr, &plan, crate::prompt::confirm_unknown).await?;
        if plan.pin.is_none() && plan.mode != TrustMode::Strict {
            eprintln!(
                "qchat: permanently added {} ({}, {}) to the known hosts in {}",
                plan.host,
                fingerprint,
                if trust == TrustState::Verified {
                    "verified"
                } else {
                    "not verified"
                },
                plan.known_hosts.display()
            );
        }
        let joined = qchat_client::join(conn.clone(), &name).await?;
        if use_ui {
            let info = crate::ui::SessionInfo {
                server_name: joined.server_name.clone(),
                server_addr: addr.to_string(),
                trust: Some(trust),
                name: joined.name.clone(),
                members: joined.members.clone(),
                operator: false,
            };
            let options = crate::ui::UiOptions { bell: !no_bell };
            let code = crate::ui::run(joined.into(), info, options, None).await;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
            return Ok(code);
        }
        let header = vec![
            format!(
                "* connected to {} at {addr} ({trust}) as {}",
                sanitize(&joined.server_name),
                sanitize(&joined.name)
            ),
            format!(
                "* in the room: {}",
                joined
                    .members
                    .iter()
                    .map(|m| sanitize(m).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        let code = crate::plain::run(joined.into(), header, false).await;
        // Closing is a protocol: without waiting, the close (and our last
        // lines) may never leave this machine.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        Ok(code)
    })
}
