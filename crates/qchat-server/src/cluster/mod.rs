//! Several servers, one chat: the nodes of a cluster share rooms, names and
//! presence through a NATS server with JetStream, never through a protocol
//! of our own. Without `--cluster` none of this runs and a server needs no
//! other process.
//!
//! This module is the connection every clustered part shares: the options
//! an operator gives (`--cluster` and its credentials and TLS), the node's
//! own identity, whether NATS is reachable right now, and the buckets
//! (JetStream key-value stores) the parts keep their shared state in.

pub mod feed;
pub mod follow;
pub mod forward;
pub mod guard;
pub mod log;
pub mod members;
pub mod names;
pub mod nodes;
pub mod presence;
pub mod private;
pub mod request;
pub mod rooms;
#[cfg(test)]
pub(crate) mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

/// How a node reaches NATS: what `qchat serve --cluster` and the flags
/// beside it give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// One or more NATS server URLs, comma-separated
    /// (`nats://host:4222`, `tls://host:4222`); user and password or a
    /// token may sit in a URL.
    pub urls: String,
    /// A NATS credentials file (a user JWT and its nkey seed), as NATS
    /// operators issue them.
    pub creds: Option<PathBuf>,
    /// A PEM file of the certificate authorities that sign the NATS
    /// server's certificate; giving it requires TLS.
    pub ca: Option<PathBuf>,
    /// A PEM client certificate and its key, for a NATS server that
    /// authenticates its clients by certificate.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// NATS could not be reached or refused the node.
    #[error("cannot connect to NATS at {urls}: {detail}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// What the client said.
        detail: String,
    },
    /// JetStream refused an operation (not enabled, a limit, no answer).
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// How long a request to JetStream may take before it counts as failed:
/// long enough for a busy server, short enough that a member is refused
/// rather than left waiting when NATS is gone.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node without NATS refuses lines and members: what they are told.
pub const LOST: &str =
    "this node lost its connection to the cluster; move to another node of the cluster";

/// A node's connection to its cluster, shared by every clustered part.
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    node: String,
    connected: watch::Receiver<bool>,
    /// The runtime the client's connection runs on.
    handle: tokio::runtime::Handle,
    /// That runtime, when it is the cluster's own ([`Cluster::connect_apart`]).
    _own: OwnRuntime,
}

/// A runtime owned by the cluster, stopped without waiting when the
/// cluster goes (which may happen inside another runtime, where waiting
/// is not allowed).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What a connection to NATS is made of.
type Parts = (
    async_nats::Client,
    jetstream::Context,
    String,
    watch::Receiver<bool>,
);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to NATS. The first connection must succeed (a node that
    /// starts without its cluster would serve a room nobody else sees);
    /// after that the client reconnects for ever, and
    /// [`Cluster::connected`] says whether it is connected now.
    pub async fn connect(options: &ClusterOptions) -> Result<Arc<Cluster>, ClusterError> {
        let (client, js, node, connected) = parts(options).await?;
        Ok(Arc::new(Cluster {
            client,
            js,
            node,
            connected,
            handle: tokio::runtime::Handle::current(),
            _own: OwnRuntime(None),
        }))
    }

    /// [`Cluster::connect`], the connection running on a runtime of its
    /// own (one thread): a server's room waits for NATS under its lock (a
    /// join reading history beyond what it holds in memory), and every
    /// worker of the server's runtime may then be waiting for that lock;
    /// the connection must not need one of them to answer.
    pub async fn connect_apart(options: &ClusterOptions) -> Result<Arc<Cluster>, ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qchat-nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Connect {
                urls: options.urls.clone(),
                detail: format!("cannot start its runtime: {e}"),
            })?;
        let handle = rt.handle().clone();
        // Owned at once: a runtime dropped inside another (a failed
        // connection returning) must not wait for its threads.
        let own = OwnRuntime(Some(rt));
        let opts = options.clone();
        let joined = handle.spawn(async move { parts(&opts).await }).await;
        let (client, js, node, connected) = joined.map_err(|e| ClusterError::Connect {
            urls: options.urls.clone(),
            detail: e.to_string(),
        })??;
        Ok(Arc::new(Cluster {
            client,
            js,
            node,
            connected,
            handle,
            _own: own,
        }))
    }

    /// The runtime the connection runs on: where waiting for NATS from
    /// synchronous code is sent ([`log::block_on`]).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// The core NATS client, for subjects outside JetStream.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// This node's identity in the cluster: random, new at every start,
    /// so a restarted node never inherits a dead one's presence.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Whether the node is connected to NATS now, and every change of it.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Opens the key-value bucket `name`, creating it if it does not exist
    /// yet: each entry expires `max_age` after it was last written
    /// (`None`: never), and `history` past values are kept per key.
    ///
    /// The bucket's stream is created here rather than by
    /// `create_key_value`: that call first reads the account's JetStream
    /// limits, and the client's parser needs fields that NATS servers
    /// before 2.10 (Debian's 2.9, for one) do not send. The stream is the
    /// one `create_key_value` would make, so any NATS tool reads it as a
    /// bucket.
    pub async fn bucket(
        &self,
        name: &str,
        max_age: Option<Duration>,
        history: i64,
    ) -> Result<jetstream::kv::Store, ClusterError> {
        if let Ok(store) = self.js.get_key_value(name).await {
            return Ok(store);
        }
        let config = jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: history.max(1),
            max_age: max_age.unwrap_or_default(),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        // Two nodes starting at once may both create it; the same config
        // twice is not an error, and the loser opens the winner's.
        if let Err(e) = self.js.get_or_create_stream(config).await {
            tracing::debug!(bucket = name, "creating the bucket: {e}");
        }
        self.js
            .get_key_value(name)
            .await
            .map_err(|e| ClusterError::JetStream(format!("the bucket {name}: {e}")))
    }
}

/// Connects to NATS: the client, its JetStream context, a new node id, and
/// whether it is connected (kept current by the client's events).
async fn parts(options: &ClusterOptions) -> Result<Parts, ClusterError> {
    let node = node_id();
    let (tx, connected) = watch::channel(true);
    let tx = Arc::new(tx);
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("qchat node {node}"))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None::<usize>)
        .event_callback(move |event| {
            let tx = Arc::clone(&tx);
            async move {
                match event {
                    // The state first, then the word: whoever reads the
                    // log line finds the node already acting on it.
                    async_nats::Event::Connected => {
                        tx.send_replace(true);
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        tx.send_replace(false);
                        tracing::warn!("lost the connection to NATS");
                    }
                    other => tracing::debug!(event = %other, "NATS"),
                }
            }
        });
    if let Some(path) = &options.creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| ClusterError::Creds {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(ca) = &options.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &options.cert {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let urls: Vec<String> = options
        .urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let client = opts
        .connect(urls.as_slice())
        .await
        .map_err(|e| ClusterError::Connect {
            urls: options.urls.clone(),
            detail: e.to_string(),
        })?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(REQUEST_TIMEOUT);
    Ok((client, js, node, connected))
}

/// Calls `f` every `period`, the first time one period from now, for as
/// long as `target` lives: how a node rewrites the entries it keeps in NATS
/// with expiry, and drops other nodes' entries nobody rewrote. A tick
/// missed while the runtime was busy is not made up for: one rewrite after
/// a stall does what several would.
pub(crate) fn every<T, F, Fut>(period: Duration, target: std::sync::Weak<T>, mut f: F)
where
    T: Send + Sync + 'static,
    F: FnMut(Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(t) = target.upgrade() else {
                return;
            };
            f(t).await;
        }
    });
}

/// A subject token, stream name part or key for a folded name: names may
/// hold any letters and NATS allows only a few characters there, so the
/// name is hashed (128 bits of SHA-256, in hex: no two names meet).
pub fn token(folded: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, folded.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh node identity: 64 random bits in hex.
fn node_id() -> String {
    let mut bytes = [0u8; 8];
    // A clock-based fallback still differs between two nodes started at
    // different instants, which is all presence needs.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = qchat_proto::clock::now_ms().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_nats_safe_and_differ_per_name() {
        let a = token("alice");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, token("alicf"));
        assert_eq!(a, token("alice"));
        assert_eq!(token("日本").len(), 32);
    }
}
