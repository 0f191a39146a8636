//! `qchat connect`: decide trust, connect, join, then hand over to the
//! interface.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use qchat_client::reconnect::Dialer;
use qchat_client::resume::ResumeStore;
use qchat_client::{
    ConnectError, Greeting, HelloError, Link, Network, TrustMode, TrustPlan, TrustState,
};
use qchat_proto::{names, RejectReason};

use crate::cli::{ConnectArgs, Trust};
use crate::wording::About;

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
    // A name typed at the prompt can be typed again if it is taken; one
    // given with --name is the caller's to change.
    let asked = args.name.is_none();
    let mut name = match args.name {
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
    let load = || {
        TrustPlan::load(
            host.clone(),
            &known_hosts,
            args.fingerprint,
            mode,
            interactive,
        )
    };
    let plan = load()?;
    for w in &plan.warnings {
        eprintln!("qchat: warning: {w}");
    }

    // The full-screen interface on a terminal; the trust question above
    // is asked before it takes the screen.
    let use_ui = !args.plain && crate::ui::on_terminal();
    let no_bell = args.no_bell;
    let reconnect = !args.no_reconnect;
    // Where this client left off with this server, kept between runs.
    let store = crate::home::resume_dir()
        .ok()
        .map(|dir| ResumeStore::new(&dir, &host.to_string()));
    let resume = match &store {
        Some(s) if !args.no_resume => s.load().unwrap_or_else(|e| {
            eprintln!("qchat: warning: {e}");
            None
        }),
        _ => None,
    };
    // One per process, kept across reconnects: with each message's number
    // it is what makes a re-send harmless.
    let instance = qchat_client::new_instance();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = qchat_client::connection::resolve(&plan.host).await?;
        let endpoint = qchat_client::client_endpoint(addr)?;
        let mut plan = plan;
        let mut v3 = true;
        let (joined, trust, fingerprint) = loop {
            if std::io::stderr().is_terminal() {
                // Otherwise a slow or silent server is a blank screen.
                eprintln!("connecting to {}…", plan.host);
            }
            let (conn, trust, fingerprint) =
                qchat_client::connect(&endpoint, addr, &plan, crate::prompt::confirm_unknown)
                    .await?;
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
            let greeting = if v3 {
                Greeting::V3 {
                    instance,
                    resume: resume.clone(),
                }
            } else {
                Greeting::V2
            };
            match qchat_client::join_as(conn.clone(), &name, &greeting).await {
                Ok(joined) => break (joined, trust, fingerprint),
                Err(e) if v3 && e.wants_older_protocol() => {
                    // An older server: greet it as version 2 on a new
                    // connection (the pin, if just accepted, is on disk).
                    v3 = false;
                    plan = load()?;
                }
                Err(ConnectError::Hello(HelloError::Rejected {
                    reason: RejectReason::NameTaken,
                    detail,
                })) if asked && interactive => {
                    eprintln!("{}", qchat_proto::text::sanitize(&detail));
                    conn.close(0u32.into(), b"");
                    name = tokio::task::spawn_blocking(crate::prompt::ask_name)
                        .await
                        .context("the name prompt failed")??;
                    // The pin, if just accepted, is on disk now: the next
                    // attempt must not ask again.
                    plan = load()?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let about = About {
            server_name: joined.server_name.clone(),
            server_addr: addr.to_string(),
            trust: Some(trust),
            name: joined.name.clone(),
            members: joined.members.clone(),
            fingerprint: fingerprint.canonical(),
            read_aloud: fingerprint.read_aloud(),
            connect_lines: Vec::new(),
        };
        let network = Network {
            redial: Box::new(Dialer::new(
                endpoint.clone(),
                addr,
                &plan,
                fingerprint,
                joined.name.clone(),
                instance,
                joined.welcome.v3.is_some(),
            )),
            reconnect,
            store,
            resumed_from: if v3 { resume } else { None },
            welcome: joined.welcome.v3.clone(),
            name: joined.name.clone(),
            members: joined.members.clone(),
        };
        let mut link = Link::from(joined);
        link.network = Some(network);
        let code = if use_ui {
            let options = crate::ui::UiOptions { bell: !no_bell };
            crate::ui::run(link, about, options, None).await
        } else {
            crate::plain::run(link, about).await
        };
        // Closing is a protocol: without waiting, the close (and our last
        // lines) may never leave this machine.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        Ok(code)
    })
}
