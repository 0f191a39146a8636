//! `qchat connect`: decide trust, connect, join, then hand over to the
//! interface.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use qchat_client::reconnect::Dialer;
use qchat_client::resume::ResumeStore;
use qchat_client::{
    ConnectError, Decision, Greeting, HelloError, Link, Network, TrustMode, TrustPlan, TrustState,
    UnknownServer,
};
use qchat_proto::{names, RejectReason};

use crate::cli::{ConnectArgs, Trust};
use crate::wording::About;

pub fn run(args: ConnectArgs) -> Result<u8> {
    // The nodes of one server (a cluster), in the order given: the first is
    // home, under which the pin and the resume points live, whichever
    // node answers.
    let nodes = args.hosts.clone();
    let Some(host) = nodes.first().cloned() else {
        bail!("no server given");
    };
    if nodes.len() > qchat_proto::limits::MAX_NODES {
        bail!(
            "{} addresses given; a server's cluster is reached through at most {}",
            nodes.len(),
            qchat_proto::limits::MAX_NODES
        );
    }
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
    let me = if args.guest {
        None
    } else {
        Some(std::sync::Arc::new(super::my_identity()?))
    };
    // One per process, kept across reconnects: with each message's number
    // it is what makes a re-send harmless.
    let instance = qchat_client::new_instance();
    let signing = match &me {
        Some(id) => match qchat_tls::signing::Signer::new(id) {
            Ok(signer) => Some(qchat_client::session::Signing {
                signer: std::sync::Arc::new(signer),
                instance,
            }),
            Err(e) => {
                eprintln!("qchat: warning: your lines will not be signed: {e}");
                None
            }
        },
        None => None,
    };
    let load = || {
        TrustPlan::load(
            host.clone(),
            &known_hosts,
            args.fingerprint,
            mode,
            interactive,
        )
        .map(|plan| plan.presenting(me.clone()))
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut plan = plan;
        let mut v3 = true;
        // The node to try first: the first given, then whichever answered
        // (a retry after a refused name goes back to it).
        let mut start = 0;
        let (joined, trust, fingerprint, at, addr, endpoint) = loop {
            let mut reached = None;
            for i in (start..nodes.len()).chain(0..start) {
                let node = &nodes[i];
                if std::io::stderr().is_terminal() {
                    // Otherwise a slow or silent server is a blank screen.
                    eprintln!("connecting to {node}…");
                }
                match reach(&mut endpoint, node, &mut plan, &load).await {
                    Ok(got) => {
                        reached = Some((i, got));
                        break;
                    }
                    Err(e) if unreachable(&e) && nodes.len() > 1 => {
                        eprintln!("qchat: {e:#}");
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((i, (conn, trust, fingerprint, addr, endpoint))) = reached else {
                bail!(
                    "none of the {} addresses given for {} answered",
                    nodes.len(),
                    plan.host
                );
            };
            start = i;
            let at = nodes[i].clone();
            if plan.pin.is_none() && plan.mode != TrustMode::Strict {
                say_pinned(&plan, &fingerprint, trust);
            }
            let greeting = match (&args.link, v3) {
                // Only the first join carries the code: the Dialer's
                // reconnects greet as version 3, the key being linked.
                (Some(code), _) => Greeting::Link {
                    instance,
                    resume: resume.clone(),
                    code: code.clone(),
                },
                (None, true) => Greeting::V3 {
                    instance,
                    resume: resume.clone(),
                },
                (None, false) => Greeting::V2,
            };
            let joined = qchat_client::join_as(conn.clone(), &name, &greeting).await;
            if joined.is_err() {
                // join_as closed the connection; the process may exit
                // next, so let the close leave this machine first.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    endpoint.wait_idle(),
                )
                .await;
            }
            match joined {
                Ok(joined) => break (joined, trust, fingerprint, at, addr, endpoint),
                Err(e) if args.link.is_some() && e.wants_older_protocol() => {
                    bail!(
                        "{} does not know link codes (it speaks an older protocol than 4); \
                         connect this device without --link",
                        plan.host
                    )
                }
                // A node of a cluster that is leaving it (or cut off from
                // it) refuses newcomers: another node may take us.
                Err(ConnectError::Hello(HelloError::Rejected {
                    reason: RejectReason::ShuttingDown,
                    detail,
                })) if nodes.len() > 1 => {
                    eprintln!("qchat: {at}: {}", qchat_proto::text::sanitize(&detail));
                    start = (i + 1) % nodes.len();
                    plan = load()?;
                }
                Err(e) if v3 && e.wants_older_protocol() => {
                    // An older server: greet it as version 2 on a new
                    // connection (the pin, if just accepted, is on disk).
                    v3 = false;
                    plan = load()?;
                }
                Err(ConnectError::Hello(HelloError::Rejected {
                    reason: RejectReason::NameTaken | RejectReason::NameRegistered,
                    detail,
                })) if asked && interactive => {
                    eprintln!("{}", qchat_proto::text::sanitize(&detail));
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
            redial: Box::new(
                Dialer::new(
                    endpoint.clone(),
                    addr,
                    &plan,
                    fingerprint,
                    joined.name.clone(),
                    instance,
                    joined.welcome.v3.is_some(),
                )
                .with_nodes(nodes.clone(), at),
            ),
            reconnect,
            store,
            resumed_from: if v3 { resume } else { None },
            welcome: joined.welcome.v3.clone(),
            name: joined.name.clone(),
            members: joined.members.clone(),
            signing: signing.clone(),
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

/// What reaching one node gives: the connection, how far it is trusted,
/// its key, its address and the endpoint (made for the first address
/// resolved, moved to another family when a node needs it).
type Reached = (
    quinn::Connection,
    TrustState,
    qchat_tls::Fingerprint,
    std::net::SocketAddr,
    quinn::Endpoint,
);

/// One node's handshake under `plan` (the home address's pin), asking the
/// user first if nothing is pinned yet: the pin, stored under the home
/// address, then covers every other node.
async fn reach(
    endpoint: &mut Option<quinn::Endpoint>,
    node: &qchat_tls::HostKey,
    plan: &mut TrustPlan,
    load: &impl Fn() -> Result<TrustPlan, qchat_client::trust::TrustError>,
) -> Result<Reached> {
    let addr = qchat_client::connection::resolve(node).await?;
    let endpoint = match endpoint {
        Some(e) => {
            qchat_client::connection::aim(e, addr)?;
            e.clone()
        }
        None => endpoint
            .insert(qchat_client::client_endpoint(addr)?)
            .clone(),
    };
    if plan.needs_decision() {
        // The new pin is on disk now: connect with it below.
        first_contact(&endpoint, addr, node, plan).await?;
        *plan = load()?;
    }
    let (conn, trust, fingerprint) = qchat_client::connection::connect_to(
        &endpoint,
        addr,
        node,
        plan,
        crate::prompt::confirm_unknown,
    )
    .await?;
    Ok((conn, trust, fingerprint, addr, endpoint))
}

/// Whether a node failed by not being there (another may answer), rather
/// than by being refused (which no other node changes).
fn unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ConnectError>(),
        Some(
            ConnectError::Resolve { .. }
                | ConnectError::Timeout { .. }
                | ConnectError::Transport { .. }
        )
    )
}

/// The first contact with an unknown server, when the user is to decide:
/// look at the key the server presents, close that connection politely,
/// and only then ask. A person may take as long as they like to compare
/// fingerprints, and the server's hello deadline runs on a connection that
/// is not there; the caller connects again with the pin this stores.
async fn first_contact(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    node: &qchat_tls::HostKey,
    plan: &TrustPlan,
) -> Result<()> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<UnknownServer>));
    let keep = std::sync::Arc::clone(&seen);
    // Declining closes the connection with code 0 before anything is sent:
    // the polite way to hang up while the person decides.
    let look = move |info: UnknownServer| {
        if let Ok(mut slot) = keep.lock() {
            *slot = Some(info);
        }
        Decision::Refuse
    };
    match qchat_client::connection::connect_to(endpoint, addr, node, plan, look).await {
        Err(ConnectError::Declined { .. }) => {}
        Err(e) => return Err(e.into()),
        Ok(_) => bail!(
            "internal error: the first look at {} was not closed",
            plan.host
        ),
    }
    let info = seen
        .lock()
        .ok()
        .and_then(|mut slot| slot.take())
        .context("internal error: the server's key was not recorded")?;
    let presented = info.fingerprint;
    let decision = tokio::task::spawn_blocking(move || crate::prompt::confirm_unknown(info))
        .await
        .context("the trust prompt failed")?;
    if decision == Decision::Refuse {
        return Err(ConnectError::Declined {
            host: plan.host.clone(),
        }
        .into());
    }
    let trust = plan.record(presented, decision)?;
    say_pinned(plan, &presented, trust);
    Ok(())
}

/// Tells the user a server's key was just written to the known hosts,
/// whether it was pinned after asking or without asking.
fn say_pinned(plan: &TrustPlan, fingerprint: &qchat_tls::Fingerprint, trust: TrustState) {
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
