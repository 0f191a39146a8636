//! The qchat server: accepts QUIC connections, runs one session per
//! connection, and fans every message out to the room.
//!
//! - [`options`]: the limits and transport settings an operator can tune.
//! - [`endpoint`]: binding the UDP socket (dual-stack where possible).
//! - [`gate`]: admission before any handshake work (connection limits,
//!   address validation under load).
//! - `session`: one connection's life: hello, reader, writer, close.
//! - `tally`: one log line per address and window for events a flood
//!   repeats (refusals, hello timeouts).
//! - [`room`]: the members and the fan-out; with the gate's counts, the
//!   only state shared between connections.
//! - [`writer`]: a connection's writer loop, shared with the bench's relay.
//! - [`store`]: the room log's storage (an embedded file, or memory).
//! - [`registry`]: names bound to keys (an embedded file, or memory).
//! - [`moderation`]: operators and bans by key, kept in the registry's file.
//! - [`log`]: the log's writer task: group commit, then publish.
//! - [`private`]: private conversations and their own stored history.
//! - [`cluster`]: several servers sharing rooms through NATS JetStream.
//!
//! The binary calls [`Server::run`]; tests call the same function.

pub mod cluster;
pub mod endpoint;
pub mod gate;
pub mod log;
pub mod metrics;
pub mod moderation;
pub mod options;
pub mod private;
pub mod registry;
pub mod room;
pub mod rooms;
mod session;
#[cfg(test)]
mod session_tests;
pub mod store;
mod tally;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qchat_proto::CloseCode;
use tracing::Instrument;

pub use options::{OptionsError, ServerOptions};
pub use room::Room;

/// Why the server stops: what members are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// For the user.
    pub reason: String,
    /// Whether the server expects to be back (a restart): version-3 clients
    /// reconnect and resume.
    pub back: bool,
    /// The host ended the server from its own interface: its `/quit`
    /// reason, if it gave one, is what members are told.
    pub from_host: bool,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            reason: "the server is shutting down".into(),
            back: false,
            from_host: false,
        }
    }
}

/// How long shutdown waits for sessions to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Buffer of the operator's in-process pipe, each way.
const LOCAL_PIPE: usize = 256 * 1024;

/// The operator's end of an in-process session.
pub struct LocalLink {
    /// Frames to the server.
    pub send: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    /// Frames from the server.
    pub recv: tokio::io::ReadHalf<tokio::io::DuplexStream>,
}

/// A joining member's queue must hold its welcome and the whole history
/// (a resuming member's queue is sized for its replay).
fn fit_queue(options: &mut ServerOptions) {
    options.queue_len = options.queue_for(options.history);
}

/// A server: its options and its room.
pub struct Server {
    room: Arc<Room>,
    gate: Arc<gate::Gate>,
    /// The cluster the server is a node of, if any.
    cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
}

impl Server {
    /// A server whose room log lives in memory (lost when it stops).
    pub fn new(options: ServerOptions) -> Self {
        let keep =
            (options.history.max(options.replay_max) as u64).max(qchat_proto::limits::HISTORY_KEEP);
        Self::with_store(options, Arc::new(store::MemoryStore::new(keep)))
    }

    /// A server over a room log. Inside a runtime the log's writer starts
    /// at once; otherwise when [`Server::run`] starts.
    pub fn with_store(mut options: ServerOptions, store: Arc<dyn store::Store>) -> Self {
        fit_queue(&mut options);
        let options = Arc::new(options);
        let room = Room::new(Arc::clone(&options), store);
        cluster::feed::start(&room);
        if tokio::runtime::Handle::try_current().is_ok() {
            start_writer(&room);
        }
        Server {
            room,
            gate: gate::Gate::new(
                options.max_connections,
                options.max_per_ip,
                options.max_unjoined_per_ip,
                options.retry_threshold,
            ),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Makes the server a node of `cluster` (its logs must be the
    /// cluster's: [`cluster::log::JetStreamLog`]): it keeps `advertise`,
    /// the address clients reach it at, in the cluster's node list, and
    /// sends its members away while it is cut off from NATS. Once, inside
    /// the runtime; `false` if it already is a node.
    pub fn join_cluster(&self, cluster: Arc<cluster::Cluster>, advertise: String) -> bool {
        if self.cluster.set(Arc::clone(&cluster)).is_err() {
            return false;
        }
        self.room
            .metrics()
            .cluster_connected(*cluster.connected().borrow());
        let room = Arc::downgrade(&self.room);
        tokio::spawn(cluster::guard::run(Arc::clone(&cluster), room.clone()));
        tokio::spawn(cluster::nodes::run(cluster, room, advertise));
        true
    }

    /// The metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.room.metrics().encode(self.room.len())
    }

    /// Applies new options to everything that can change while running:
    /// the room's welcome, history and reconnect grace, and every session
    /// that starts from now on (rate, burst, backlog, message size, queue,
    /// hello timeout, and the frame size its decoder accepts). The
    /// transport (sized from the frame size when the endpoint was made),
    /// the address and the connection limits of the running gate keep
    /// their first values: the caller decides which options to change.
    pub fn reload(&self, mut options: ServerOptions) {
        fit_queue(&mut options);
        self.room.set_options(Arc::new(options));
    }

    /// The room.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Opens an in-process link for the operator, who sits at the server
    /// as a member with operator rights. The returned streams carry the
    /// same protocol as a QUIC session stream: say hello on them
    /// (`qchat_client::hello`) and run a client session.
    pub fn join_local(&self) -> LocalLink {
        self.join_local_as(None)
    }

    /// [`Server::join_local`] for an operator with a key of their own (the
    /// person running the server): the name it joins under is registered to
    /// that key, as for any member.
    pub fn join_local_as(&self, key: Option<qchat_tls::Fingerprint>) -> LocalLink {
        let (client, server) = tokio::io::duplex(LOCAL_PIPE);
        let (server_recv, server_send) = tokio::io::split(server);
        let room = Arc::clone(&self.room);
        let options = self.room.options();
        let span = tracing::info_span!("operator", name = tracing::field::Empty);
        tokio::spawn(
            async move {
                let peer = Box::new(room::Peer {
                    addr: None,
                    operator: true,
                    version: qchat_proto::PROTOCOL_VERSION,
                    instance: None,
                    conn: None,
                    key,
                });
                let deadline = tokio::time::Instant::now() + options.hello_timeout;
                session::run_stream(
                    session::PipeSink(server_send),
                    server_recv,
                    peer,
                    &room,
                    &options,
                    deadline,
                    None,
                )
                .await;
            }
            .instrument(span),
        );
        let (recv, send) = tokio::io::split(client);
        LocalLink { send, recv }
    }

    /// Accepts connections on `endpoint` until `shutdown` completes, then
    /// tells every member the server is going away, lets their queues
    /// drain, closes every connection and waits for the endpoint to go idle.
    pub async fn run(&self, endpoint: quinn::Endpoint, shutdown: impl Future<Output = ()>) {
        self.run_until(endpoint, async {
            shutdown.await;
            Stop::default()
        })
        .await;
    }

    /// As [`Server::run`], telling members why the server stops and whether
    /// it will be back.
    pub async fn run_until(&self, endpoint: quinn::Endpoint, shutdown: impl Future<Output = Stop>) {
        start_writer(&self.room);
        let mut stop = Stop::default();
        let mut summaries = tokio::time::interval(tally::WINDOW);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut moves = tokio::time::interval(room::ADDRESS_CHECK);
        moves.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                why = &mut shutdown => {
                    stop = why;
                    break;
                }
                _ = summaries.tick() => {
                    for line in self.gate.summarise() {
                        tracing::info!("{line}");
                    }
                }
                _ = moves.tick() => self.room.note_moves(),
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let peer = incoming.remote_address();
                    if !incoming.remote_address_validated() && incoming.may_retry() && self.gate.under_load() {
                        // Make the address prove it receives our packets
                        // before any handshake work is spent on it.
                        self.room.metrics().handshakes_retried.inc();
                        let _ = incoming.retry();
                        continue;
                    }
                    match self.gate.admit(peer.ip()) {
                        Ok(permit) => {
                            self.room.metrics().handshakes_accepted.inc();
                            // Not kept in a set: the permit it holds is
                            // counted by the gate, which is all shutdown
                            // waits on, and a set costs an entry per member
                            // and a wake-up of this loop per session's end.
                            tokio::spawn(session::serve_quic(
                                incoming,
                                permit,
                                Arc::clone(&self.room),
                                self.room.options(),
                            ));
                        }
                        Err(why) => {
                            self.room.metrics().handshakes_refused.inc();
                            // A flood repeats this thousands of times: the
                            // first per address and window is logged, the
                            // rest are summed up every `tally::WINDOW`.
                            if self.gate.note(why.kind(), peer.ip()) {
                                tracing::info!(%peer, ?why, "connection refused: {}", why.kind().why());
                            }
                            incoming.refuse();
                        }
                    }
                }
            }
        }
        tracing::info!(members = self.room.len(), "shutting down");
        endpoint.set_server_config(None);
        flush_log(&self.room).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.room.rooms().flush()).await;
        if let Some(c) = self.cluster.get() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, cluster::nodes::leave(c)).await;
        }
        self.room.shutdown(&stop.reason, stop.back, stop.from_host);
        // Sessions still running after the grace end with their
        // connections, which the endpoint's close below cuts.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.gate.emptied()).await;
        endpoint.close(
            CloseCode::ShuttingDown.code().into(),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
    }
}

/// Waits (bounded) until everything queued for the log is stored and
/// published: the writer is a thread of its own, and what members said
/// before the stop should reach them, acknowledged, before they are told
/// the server is going, not be cut off when the process ends.
async fn flush_log(room: &Room) {
    let (tx, done) = tokio::sync::oneshot::channel();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        if room
            .log_queue()
            .send(log::LogItem::Barrier(tx))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    })
    .await;
}

/// Starts the room log's writer, once.
fn start_writer(room: &Arc<Room>) {
    if let Some(rx) = room.take_log() {
        #[cfg(test)]
        {
            tokio::spawn(log::run_writer_on_runtime(Arc::clone(room), rx));
        }
        #[cfg(not(test))]
        if let Err(e) = log::spawn_writer(room, rx) {
            // Then nothing public is stored or shown: members' messages
            // wait in the full queue, and the log says why.
            tracing::error!("cannot start the room log's writer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A member's session task is allocated once per connection and lives
    /// as long as the member: at ten thousand idle members each KiB of it
    /// is 10 MiB. It was 4.6 KiB while its reader and writer were stored
    /// unboxed (each two or three times over), 1,432 bytes before the
    /// hello's locals were scoped to a block and the peer boxed, and 1,304
    /// before the hello and join became a boxed future of their own and
    /// the session an `async` block instead of an `async fn`, then 696
    /// and 632 until the opened streams' and the join's `Result`s stopped
    /// outliving the matches on them (520 since);
    /// tokio rounds a task up to 128 bytes, so a little growth costs a
    /// whole step. A future that grows past this bound again is most
    /// likely a large wait or a long-lived local held inline.
    #[test]
    fn a_members_session_task_stays_small() {
        fn serve(
            incoming: quinn::Incoming,
            permit: gate::Permit,
            room: Arc<Room>,
            options: Arc<ServerOptions>,
        ) -> impl Future<Output = ()> + Send {
            session::serve_quic(incoming, permit, room, options)
        }
        let size = returned_size(serve as fn(_, _, _, _) -> _);
        assert!(
            size <= 528,
            "the session task's future is {size} bytes; box what it holds across waits"
        );
    }
}
