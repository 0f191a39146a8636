//! `qchat serve`: load the identity, bind, announce how to connect, run
//! the server until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use qchat_proto::ALPN;
use qchat_server::{Server, ServerOptions, Stop};

use tokio::sync::mpsc;

use crate::cli::ServeArgs;
use crate::wording::About;

pub fn run(args: ServeArgs, server_events: Option<mpsc::Receiver<String>>) -> Result<u8> {
    if args.check_config {
        return check_config(&args);
    }
    if let Some(path) = &args.config_file {
        tracing::info!(path = %path.display(), "settings file read");
    }
    if crate::ui::wanted_for_serve(&args) {
        return run_with_ui(args, server_events);
    }
    let identity = super::identity(args.cert_dir.clone(), args.new_identity)?;
    let mut options = server_options(&args)?;
    let operator = operator_name(&args)?;
    // The host sits in the room as a person: with their own key, so their
    // name is theirs as anyone's is, and that key is an operator's.
    let host_key = match &operator {
        Some(_) => Some(std::sync::Arc::new(super::my_identity()?)),
        None => None,
    };
    options.host_key = host_key.as_ref().map(|k| k.fingerprint);
    let runtime = runtime(args.threads, args.cluster.is_some())?;
    runtime.block_on(async move {
        let (endpoint, local, server) = start(&identity, options, args).await?;
        if let Some(name) = operator {
            let link = server.join_local_as(host_key.as_ref().map(|k| k.fingerprint));
            tokio::spawn(operate(link, name, host_key, host_about(&identity, local)));
        }
        server.run_until(endpoint, shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(crate::exit::OK)
    })
}

/// `--check-config`: the settings were checked while parsing (a bad file or
/// flag never gets here); print each effective value, as a file would hold
/// it, with where it came from.
fn check_config(args: &ServeArgs) -> Result<u8> {
    server_options(args)?;
    match &args.config_file {
        Some(p) => println!("# settings file: {}", p.display()),
        None => println!("# settings file: none"),
    }
    for e in &args.effective {
        match &e.value {
            Some(v) => println!("{} = {v}  # {}", e.key, e.origin),
            None => println!("# {} is not set  # {}", e.key, e.origin),
        }
    }
    println!("# the settings are valid");
    Ok(crate::exit::OK)
}

/// The settings a reload applies (README.md, "Configuration"): they only
/// shape what the room says next and the sessions that start from now on.
/// Everything else (the address, the identity, the store, the transport —
/// whose stream windows are sized from --max-frame —, the connection
/// limits) needs a restart.
const RELOADABLE: &[&str] = &[
    "rate",
    "burst",
    "backlog",
    "history",
    "replay-max",
    "max-message",
    "queue",
    "hello-timeout",
    "reconnect-grace",
];

/// Binds the metrics endpoint, if asked for, before anything is announced:
/// an address in use stops the server like its own port would.
async fn bind_metrics(addr: Option<SocketAddr>) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the metrics address")?;
    println!("metrics at http://{local}/metrics");
    Ok(Some(listener))
}

/// Answers `GET /metrics` with the server's counters (hyper does the HTTP).
/// Each connection gets a bounded time, so an idle scraper holds nothing.
async fn serve_metrics(listener: tokio::net::TcpListener, server: std::sync::Arc<Server>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("metrics connection not accepted: {e}");
                continue;
            }
        };
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = metrics_answer(&server, &req);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
        });
    }
}

fn metrics_answer<B>(
    server: &Server,
    req: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    use hyper::{Method, StatusCode};
    let (status, body, kind) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "only /metrics is here\n".to_string(),
            "text/plain",
        )
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".to_string(),
            "text/plain",
        )
    } else {
        (
            StatusCode::OK,
            server.metrics_text(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    };
    let mut answer = hyper::Response::new(http_body_util::Full::new(body.into()));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    answer
}

/// SIGHUP, listened for before the server announces itself: the default
/// action of a SIGHUP that arrives with no handler is to end the process.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn listen() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!("cannot listen for SIGHUP, settings cannot be reloaded: {e}")
                })
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// The next SIGHUP; never, where there are none.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// On SIGHUP, reads the settings file again (with the same flags on top)
/// and applies what can change while running. A file that is now wrong
/// changes nothing: the server keeps its settings and says why.
async fn reload_on_hangup(mut hup: Hangup, server: std::sync::Arc<Server>, mut current: ServeArgs) {
    loop {
        hup.next().await;
        match reload(&server, &current) {
            Ok(next) => current = next,
            Err(e) => tracing::warn!("settings not reloaded, the current ones stay: {e:#}"),
        }
    }
}

/// One reload: the new settings, with the values that need a restart kept
/// as they run, so the next reload compares against what is in force.
fn reload(server: &Server, current: &ServeArgs) -> Result<ServeArgs> {
    let cli = crate::cli::resolve(current.argv.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let crate::cli::Command::Serve(next) = cli.command else {
        anyhow::bail!("the command line is not `serve` any more");
    };
    let mut next = *next;
    let fresh = server_options(&next)?;
    let mut options = (*server.room().options()).clone();
    options.rate = fresh.rate;
    options.burst = fresh.burst;
    options.backlog = fresh.backlog;
    options.history = fresh.history;
    options.replay_max = fresh.replay_max;
    options.max_message = fresh.max_message;
    options.queue_len = fresh.queue_len;
    options.hello_timeout = fresh.hello_timeout;
    options.grace = fresh.grace;
    options.validate()?;
    let mut applied = Vec::new();
    let mut restart = Vec::new();
    for (old, new) in current.effective.iter().zip(next.effective.iter_mut()) {
        if old.key != new.key || old.value == new.value {
            continue;
        }
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        if RELOADABLE.contains(&new.key.as_str()) {
            applied.push(format!(
                "{} {} -> {}",
                new.key,
                show(&old.value),
                show(&new.value)
            ));
        } else {
            restart.push(new.key.clone());
            *new = old.clone();
        }
    }
    server.reload(options);
    if applied.is_empty() {
        tracing::info!("settings reloaded: nothing to change");
    } else {
        tracing::info!("settings reloaded: {}", applied.join(", "));
    }
    if !restart.is_empty() {
        tracing::warn!(
            "settings changed that only take effect after a restart: {}",
            restart.join(", ")
        );
    }
    Ok(next)
}

/// Who sits at the server. Standard input that is not a terminal carries
/// the operator's lines only when a name is given; otherwise the server
/// runs alone (a closed or redirected stdin must never stop a server).
fn operator_name(args: &ServeArgs) -> Result<Option<String>> {
    if args.headless {
        return Ok(None);
    }
    let Some(name) = args.name.clone() else {
        return Ok(None);
    };
    if let Err(e) = qchat_proto::names::validate(&name) {
        anyhow::bail!(
            "cannot join the room as {:?}: {e}; choose another --name or use --headless",
            qchat_proto::text::sanitize(&name)
        );
    }
    Ok(Some(name))
}

/// The operator, in plain mode: lines from stdin, events on stdout. When
/// the operator leaves (end of input, /quit) the server keeps serving.
async fn operate(
    link: qchat_server::LocalLink,
    name: String,
    me: Option<std::sync::Arc<qchat_tls::Identity>>,
    about: About,
) {
    let (link, welcome) = match join_as_operator(link, &name, me.as_deref()).await {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!("the operator could not join the room: {e}");
            return;
        }
    };
    crate::plain::run(link, about.welcomed(welcome)).await;
    tracing::info!("the operator left the room; still serving");
}

/// The server's settings from the flags (checked against each other when
/// the command line was parsed).
fn server_options(args: &ServeArgs) -> Result<ServerOptions> {
    check_cluster_flags(args)?;
    let base = ServerOptions {
        server_name: args.name.clone().unwrap_or_else(|| "qchat".into()),
        migration: !args.no_migration,
        keys_required: args.keys_required,
        name_expiry: args.name_expiry.0,
        link_ttl: args.link_ttl.0,
        operators: args.operators.clone(),
        guest_ban: args.guest_ban.0,
        ..ServerOptions::default()
    };
    Ok(args.limits.apply(base)?)
}

/// The host at the table: the server runs in the background and the
/// operator joins its room in the full-screen interface, as `--name`
/// (asked for if not given). The view opens with how others connect (the
/// lines printed on the normal screen are hidden behind it), and the
/// server's warnings (`events_rx`, from logging) appear in it as sentences;
/// joins and leaves come from the room itself, once. When the operator
/// quits, the whole server shuts down gracefully; SIGINT and SIGTERM still
/// work too.
fn run_with_ui(mut args: ServeArgs, events_rx: Option<mpsc::Receiver<String>>) -> Result<u8> {
    // Asked before the runtime starts: the question blocks on stdin.
    let name = match args.name.clone() {
        Some(n) => n,
        None => crate::prompt::ask_name()?,
    };
    if let Err(e) = qchat_proto::names::validate(&name) {
        anyhow::bail!(
            "cannot use the name {:?}: {e}",
            qchat_proto::text::sanitize(&name)
        );
    }
    args.name = Some(name.clone());
    let identity = super::identity(args.cert_dir.clone(), args.new_identity)?;
    let host_key = super::my_identity()?;
    let options = ServerOptions {
        host_key: Some(host_key.fingerprint),
        ..server_options(&args)?
    };
    let bell = !args.no_bell;
    let runtime = runtime(args.threads, args.cluster.is_some())?;
    runtime.block_on(async move {
        // Announced on the normal screen too, so it is there after the
        // interface closes.
        let (endpoint, local, server) = start(&identity, options, args).await?;
        // Carries the host's `/quit REASON` (empty without one).
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
        let task = {
            let server = std::sync::Arc::clone(&server);
            tokio::spawn(async move {
                let stop = async {
                    tokio::select! {
                        why = shutdown_signal() => why,
                        reason = stop_rx => match reason {
                            Ok(reason) if !reason.is_empty() => Stop {
                                reason,
                                back: false,
                                from_host: true,
                            },
                            _ => Stop { from_host: true, ..Stop::default() },
                        },
                    }
                };
                server.run_until(endpoint, stop).await;
            })
        };
        let local_link = server.join_local_as(Some(host_key.fingerprint));
        let (link, welcome) = join_as_operator(local_link, &name, Some(&host_key))
            .await
            .context("cannot join the room as the operator")?;
        let about = host_about(&identity, local).welcomed(welcome);
        let (code, reason) =
            crate::ui::run_with_reason(link, about, crate::ui::UiOptions { bell }, events_rx).await;
        // The host's `/quit REASON` is why the server stops: every member is
        // told it, whatever their interface.
        let _ = stop_tx.send(reason);
        // Server::run bounds its own shutdown; this is a backstop.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        tracing::info!("stopped");
        Ok(code)
    })
}

/// What both ways of serving (headless and with the host's interface) do
/// before the room opens: open the store, bind the metrics listener and the
/// endpoint (which announces it), and start the metrics and SIGHUP reload
/// tasks. Kept in one place so the two paths cannot drift apart.
async fn start(
    identity: &qchat_tls::Identity,
    options: ServerOptions,
    args: ServeArgs,
) -> Result<(quinn::Endpoint, SocketAddr, std::sync::Arc<Server>)> {
    let cluster = join_cluster(&args).await?;
    let store = match &cluster {
        Some(c) => cluster_store(c, &args).await?,
        None => open_store(&args)?,
    };
    // A node's names, bans and operators are the cluster's, and so are the
    // names in use on every node.
    let registry = match &cluster {
        Some(c) => std::sync::Arc::new(
            qchat_server::registry::Registry::clustered(
                std::sync::Arc::clone(c),
                qchat_server::cluster::names::ONLINE_TTL,
            )
            .await
            .context("cannot open the cluster's name registry")?,
        ),
        None => open_registry(&args)?,
    };
    let room_stores = match &cluster {
        Some(c) => Some(cluster_room_stores(c, &args)),
        None => room_stores(&args)?,
    };
    // A node's rooms are the cluster's: what each is (topic, operators,
    // invitations) is in the cluster's bucket, not in its own file.
    let shared_rooms = match &cluster {
        Some(c) => Some(
            qchat_server::cluster::rooms::SharedRooms::start(std::sync::Arc::clone(c))
                .await
                .context("cannot open the cluster's rooms")?,
        ),
        None => None,
    };
    let conversations = open_conversations(&args)?;
    let hup = Hangup::listen();
    let metrics = bind_metrics(args.metrics).await?;
    let (endpoint, local) = listen(identity, &options, args.listen)?;
    let server = std::sync::Arc::new(Server::with_store(options, store));
    if let Some(c) = cluster {
        let advertise = match &args.advertise {
            Some(a) => a.clone(),
            None => connect_addresses(local)
                .first()
                .copied()
                .unwrap_or(local)
                .to_string(),
        };
        println!(
            "node {} of the cluster at {}, advertised as {advertise}",
            c.node_id(),
            args.cluster.as_deref().unwrap_or_default()
        );
        anyhow::ensure!(
            server.join_cluster(c, advertise),
            "internal error: the server joined its cluster twice"
        );
    }
    // Before the endpoint accepts anyone: nobody has used the registry yet.
    anyhow::ensure!(
        server.room().set_registry(registry),
        "internal error: the room used its name registry before the file was opened"
    );
    // A clustered registry follows the room's members (names in use,
    // presence, bans from other nodes); any other does nothing here.
    qchat_server::cluster::presence::attach(server.room()).await;
    // Private messages from members of the other nodes.
    qchat_server::cluster::private::attach(server.room()).await?;
    if let Some((stores, meta)) = room_stores {
        let rooms = match shared_rooms {
            Some(shared) => qchat_server::rooms::Rooms::clustered(server.room(), stores, shared),
            None => qchat_server::rooms::Rooms::open(server.room(), stores, meta)?,
        };
        tracing::info!(rooms = rooms.len(), "rooms open");
        anyhow::ensure!(
            server.room().set_rooms(rooms),
            "internal error: the room used its rooms before their file was opened"
        );
    }
    if let Some(c) = conversations {
        anyhow::ensure!(
            server.room().set_conversations(c),
            "internal error: the private conversations were set twice"
        );
    }
    if let Some(listener) = metrics {
        tokio::spawn(serve_metrics(listener, std::sync::Arc::clone(&server)));
    }
    tokio::spawn(reload_on_hangup(hup, std::sync::Arc::clone(&server), args));
    Ok((endpoint, local, server))
}

/// The operator's side of the in-process link, as a client link.
type OperatorLink = qchat_client::Link<
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
>;

/// The operator joins its room over the in-process link, headless or at
/// the host's interface alike. It speaks the current protocol like any
/// member; its link never drops, so it has nothing to resume and no
/// connection or network to keep.
async fn join_as_operator(
    mut local: qchat_server::LocalLink,
    name: &str,
    me: Option<&qchat_tls::Identity>,
) -> Result<(OperatorLink, qchat_client::Welcome), qchat_client::HelloError> {
    let instance = qchat_client::new_instance();
    let greeting = qchat_client::Greeting::V3 {
        instance,
        resume: None,
    };
    // The host signs its lines like any member with a key.
    let signing = me.and_then(|id| match qchat_tls::signing::Signer::new(id) {
        Ok(signer) => Some(qchat_client::session::Signing {
            signer: std::sync::Arc::new(signer),
            instance,
        }),
        Err(e) => {
            tracing::warn!("the host's lines will not be signed: {e}");
            None
        }
    });
    let (decoder, welcome) =
        qchat_client::hello_as(&mut local.send, &mut local.recv, name, &greeting).await?;
    let link = qchat_client::Link {
        send: local.send,
        recv: local.recv,
        decoder,
        conn: None,
        network: None,
        signing,
    };
    Ok((link, welcome))
}

/// A measured choice, not a guess: see docs/PERFORMANCE.md.
///
/// A node of a cluster always runs the multi-threaded runtime, one worker
/// or more: its room logs wait for NATS from synchronous code (a joining
/// member's history), which hands its worker over while it waits, and
/// only that runtime can.
fn runtime(threads: u16, cluster: bool) -> Result<tokio::runtime::Runtime> {
    let mut b = if threads == 1 && !cluster {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads.into());
        b
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Completes on the first SIGINT or SIGTERM. SIGTERM is what service
/// managers send before a restart or an upgrade, so members are told the
/// server will be back and their clients resume; SIGINT is a person
/// stopping it.
async fn shutdown_signal() -> Stop {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {
                        return Stop {
                            reason: "the server is restarting".into(),
                            back: true,
                            from_host: false,
                        };
                    }
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    Stop::default()
}

/// The room log the flags ask for. A log that cannot be opened stops the
/// server with the reason and the file's name; the file is left as it is.
fn open_store(args: &ServeArgs) -> Result<std::sync::Arc<dyn qchat_server::store::Store>> {
    use qchat_server::store::{MemoryStore, RedbStore, Store};
    let max_age = args.history_max_age.map(|s| s.0);
    if args.store == crate::cli::StoreKind::Memory {
        let store = MemoryStore::new(args.history_keep).with_max_age(max_age);
        return Ok(std::sync::Arc::new(store));
    }
    let dir = data_dir(args, "")?;
    let sync = sync_policy(args);
    let store = RedbStore::open(&dir, args.history_keep, sync)?.with_max_age(max_age);
    tracing::info!(path = %store.path().display(), messages = store.len(), "room log open");
    Ok(std::sync::Arc::new(store))
}

/// The cluster's flags belong together. Checked here rather than by clap,
/// which checks each value of the settings file on its own.
fn check_cluster_flags(args: &ServeArgs) -> Result<()> {
    if args.cluster.is_none() {
        let given = [
            ("--cluster-creds", args.cluster_creds.is_some()),
            ("--cluster-ca", args.cluster_ca.is_some()),
            ("--cluster-cert", args.cluster_cert.is_some()),
            ("--cluster-key", args.cluster_key.is_some()),
            ("--advertise", args.advertise.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            anyhow::bail!("{flag} is for a node of a cluster; give --cluster too");
        }
    }
    anyhow::ensure!(
        args.cluster_cert.is_some() == args.cluster_key.is_some(),
        "--cluster-cert and --cluster-key go together (a client certificate and its key)"
    );
    anyhow::ensure!(
        args.cluster.is_none() || args.store != crate::cli::StoreKind::Memory,
        "--cluster keeps the rooms' logs in the cluster's JetStream; it cannot be used with --store memory"
    );
    Ok(())
}

/// Connects to the cluster `--cluster` names, if any: a node that cannot
/// reach NATS does not start (it would serve rooms nobody else sees).
async fn join_cluster(
    args: &ServeArgs,
) -> Result<Option<std::sync::Arc<qchat_server::cluster::Cluster>>> {
    let Some(urls) = &args.cluster else {
        return Ok(None);
    };
    let options = qchat_server::cluster::ClusterOptions {
        urls: urls.clone(),
        creds: args.cluster_creds.clone(),
        ca: args.cluster_ca.clone(),
        cert: args.cluster_cert.clone().zip(args.cluster_key.clone()),
    };
    let cluster = qchat_server::cluster::Cluster::connect_apart(&options)
        .await
        .context("cannot join the cluster")?;
    Ok(Some(cluster))
}

/// The lobby's log in the cluster: the stream of `#lobby`.
async fn cluster_store(
    cluster: &std::sync::Arc<qchat_server::cluster::Cluster>,
    args: &ServeArgs,
) -> Result<std::sync::Arc<dyn qchat_server::store::Store>> {
    let lobby = qchat_proto::names::fold_room("#lobby");
    let max_age = args.history_max_age.map(|s| s.0);
    let log =
        qchat_server::cluster::log::JetStreamLog::open(cluster, &lobby, args.history_keep, max_age)
            .await
            .context("cannot open #lobby's log in the cluster")?;
    tracing::info!(
        messages = qchat_server::store::Store::len(&*log),
        "room log open in the cluster"
    );
    Ok(log)
}

/// The other rooms' logs in the cluster, each its own stream, opened when
/// the room is. Their descriptions (topic, operators, invitations) are the
/// cluster's ([`qchat_server::cluster::rooms`]): a node keeps no file of
/// them, nor a folder for one (`None`).
fn cluster_room_stores(
    cluster: &std::sync::Arc<qchat_server::cluster::Cluster>,
    args: &ServeArgs,
) -> (
    Box<qchat_server::rooms::StoreFactory>,
    Option<std::path::PathBuf>,
) {
    use qchat_server::cluster::log::JetStreamLog;
    use qchat_server::store::Store;
    let (keep, max_age) = (args.history_keep, args.history_max_age.map(|s| s.0));
    let cluster = std::sync::Arc::clone(cluster);
    let stores: Box<qchat_server::rooms::StoreFactory> = Box::new(move |key: &str| {
        let log = JetStreamLog::open_blocking(&cluster, key, keep, max_age)?;
        Ok(log as std::sync::Arc<dyn Store>)
    });
    (stores, None)
}

/// The server's data folder (`--data-dir`, or the default under the
/// home), or the folder `sub` in it, made private (0700) if it is new.
fn data_dir(args: &ServeArgs, sub: &str) -> Result<std::path::PathBuf> {
    let mut dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => crate::home::server_dir()?,
    };
    // Joining "" would add a trailing separator to every path shown.
    if !sub.is_empty() {
        dir.push(sub);
    }
    create_private_dir(&dir)?;
    Ok(dir)
}

/// `--sync` as the stores take it.
fn sync_policy(args: &ServeArgs) -> qchat_server::store::SyncPolicy {
    match args.sync {
        crate::cli::SyncArg::Full => qchat_server::store::SyncPolicy::Full,
        crate::cli::SyncArg::None => qchat_server::store::SyncPolicy::None,
    }
}

/// The storage engine's cache for the rooms' shared log, in bytes: one
/// cache for every room, sized for the pages a commit touching many rooms
/// rewrites (each room's newest leaf and its tables' roots), not per room.
const ROOMS_LOG_CACHE: usize = 16 * 1024 * 1024;

/// Where the rooms besides #lobby keep their logs and descriptions: a
/// `rooms` folder in the data folder, with every room's log in one file,
/// `rooms.redb` (a table pair per room, one writer for all), and their
/// descriptions in `rooms.meta`. `None` with `--store memory`: the rooms
/// live in memory.
fn room_stores(
    args: &ServeArgs,
) -> Result<
    Option<(
        Box<qchat_server::rooms::StoreFactory>,
        Option<std::path::PathBuf>,
    )>,
> {
    use qchat_server::store::{SharedRedb, Store};
    if args.store == crate::cli::StoreKind::Memory {
        return Ok(None);
    }
    let dir = data_dir(args, "rooms")?;
    let sync = sync_policy(args);
    let (keep, max_age) = (args.history_keep, args.history_max_age.map(|s| s.0));
    let shared = SharedRedb::open(&dir, keep, max_age, sync, ROOMS_LOG_CACHE)?;
    let stores: Box<qchat_server::rooms::StoreFactory> =
        Box::new(move |key: &str| Ok(shared.open_room(key)? as std::sync::Arc<dyn Store>));
    Ok(Some((stores, Some(dir.join("rooms.meta")))))
}

/// The registered names, kept where the room log is (`names.redb` in the
/// data folder), or in memory with `--store memory`.
fn open_registry(args: &ServeArgs) -> Result<std::sync::Arc<qchat_server::registry::Registry>> {
    use qchat_server::registry::Registry;
    if args.store == crate::cli::StoreKind::Memory {
        return Ok(std::sync::Arc::new(Registry::memory()));
    }
    let dir = data_dir(args, "")?;
    Ok(std::sync::Arc::new(Registry::open(&dir)?))
}

/// The private conversations' store (`private.redb` in the data folder, or
/// memory with `--store memory`), or `None` with `--private-history off`.
fn open_conversations(
    args: &ServeArgs,
) -> Result<Option<std::sync::Arc<qchat_server::private::Conversations>>> {
    use qchat_server::private::Conversations;
    if args.private_history == crate::cli::Switch::Off {
        return Ok(None);
    }
    // A node's private store is its own: a message stored for someone on
    // another node would wait there unseen. In a cluster private messages
    // are live only (they cross nodes as they are said), until
    // conversations are kept in the cluster too.
    if args.cluster.is_some() {
        tracing::info!("private history is not kept in a cluster: private messages are live only");
        return Ok(None);
    }
    if args.store == crate::cli::StoreKind::Memory {
        return Ok(Some(std::sync::Arc::new(Conversations::memory(
            args.private_keep,
        )?)));
    }
    let dir = data_dir(args, "")?;
    let sync = sync_policy(args);
    let c = Conversations::open(&dir, args.private_keep, sync)?;
    match c.path() {
        Some(path) => {
            tracing::info!(path = %path.display(), conversations = c.len(), "private conversations open");
        }
        None => tracing::info!(
            conversations = c.len(),
            "private conversations open, in memory"
        ),
    }
    Ok(Some(std::sync::Arc::new(c)))
}

/// Creates the data folder readable by its owner alone: it holds everything
/// said in the room.
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    // An existing folder keeps its mode; say so if others can look in.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "the data folder {} is open to other users, who can read the room's messages; fix with: chmod 700 {}",
                    dir.display(),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// Binds the server's endpoint and announces how to reach it. Needs the
/// runtime: quinn registers the socket with it.
fn listen(
    identity: &qchat_tls::Identity,
    options: &ServerOptions,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, SocketAddr)> {
    let mut config =
        qchat_tls::quic_server_config(identity, &[ALPN]).context("cannot set up TLS")?;
    config.transport_config(options.transport());
    config.migration(options.migration);
    let reset_key = std::sync::Arc::new(identity.stateless_reset_key());
    let endpoint = qchat_server::endpoint::bind(addr, config, Some(reset_key))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = endpoint
        .local_addr()
        .context("cannot read the bound address")?;
    announce(local, &identity.fingerprint);
    Ok((endpoint, local))
}

/// Prints where the server listens, its fingerprint in both forms, and a
/// ready-to-copy connect line for each address people can reach it on.
fn announce(local: SocketAddr, fp: &qchat_tls::Fingerprint) {
    println!("qchat listening on {local}");
    println!("fingerprint: {}", fp.canonical());
    println!("read aloud:  {}", fp.read_aloud());
    println!("connect with:");
    for line in connect_lines(local, fp) {
        println!("  {line}");
    }
}

/// A ready-to-send `qchat connect` line for each address people can reach
/// the server on.
fn connect_lines(local: SocketAddr, fp: &qchat_tls::Fingerprint) -> Vec<String> {
    connect_addresses(local)
        .into_iter()
        .map(|addr| format!("qchat connect {addr} --fingerprint {}", fp.canonical()))
        .collect()
}

/// What the host's interface shows about the server before the welcome
/// fills in the room: its key and how others connect.
fn host_about(identity: &qchat_tls::Identity, local: SocketAddr) -> About {
    About {
        server_name: String::new(),
        server_addr: local.to_string(),
        trust: None,
        name: String::new(),
        members: Vec::new(),
        fingerprint: identity.fingerprint.canonical(),
        read_aloud: identity.fingerprint.read_aloud(),
        connect_lines: connect_lines(local, &identity.fingerprint),
    }
}

fn connect_addresses(local: SocketAddr) -> Vec<SocketAddr> {
    let ip = local.ip();
    if !ip.is_unspecified() {
        return vec![local];
    }
    let dual = ip.is_ipv6();
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|a| !a.is_loopback() && (dual || a.is_ipv4()) && !is_link_local(a))
        .map(|a| SocketAddr::new(a, local.port()))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        // No network: the loopback line is still a working example.
        let lo: IpAddr = if dual {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        out.push(SocketAddr::new(lo, local.port()));
    }
    out
}

/// IPv6 link-local addresses need a zone to be usable, which a copied
/// command line would not carry.
fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}
