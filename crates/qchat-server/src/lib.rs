//! The qchat server: accepts QUIC connections, runs one session per
//! connection, and fans every message out to the room.
//!
//! - [`options`]: the limits and transport settings an operator can tune.
//! - [`endpoint`]: binding the UDP socket (dual-stack where possible).
//! - [`gate`]: admission before any handshake work (connection limits,
//!   address validation under load).
//! - `rate`: the per-member token bucket.
//! - `session`: one connection's life: hello, reader, writer, close.
//! - `tally`: one log line per address and window for events a flood
//!   repeats (refusals, hello timeouts).
//! - [`room`]: the members and the fan-out; with the gate's counts, the
//!   only state shared between connections.
//! - [`writer`]: a connection's writer loop, shared with the bench's relay.
//!
//! The binary calls [`Server::run`]; tests call the same function.

pub mod endpoint;
pub mod gate;
pub mod options;
mod rate;
pub mod room;
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
use tokio::task::JoinSet;
use tracing::Instrument;

pub use options::{OptionsError, ServerOptions};
pub use room::Room;

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

/// A server: its options and its room.
pub struct Server {
    options: Arc<ServerOptions>,
    room: Arc<Room>,
    gate: Arc<gate::Gate>,
}

impl Server {
    /// A server with an empty room.
    pub fn new(mut options: ServerOptions) -> Self {
        // A joining member's queue must hold its welcome and the whole
        // history.
        options.queue_len = options.queue_len.max(options.history + 16);
        let options = Arc::new(options);
        Server {
            room: Arc::new(Room::new(Arc::clone(&options))),
            gate: gate::Gate::new(
                options.max_connections,
                options.max_per_ip,
                options.max_unjoined_per_ip,
                options.retry_threshold,
            ),
            options,
        }
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
        let (client, server) = tokio::io::duplex(LOCAL_PIPE);
        let (server_recv, server_send) = tokio::io::split(server);
        let room = Arc::clone(&self.room);
        let options = Arc::clone(&self.options);
        let span = tracing::info_span!("operator", name = tracing::field::Empty);
        tokio::spawn(
            async move {
                let peer = room::Peer {
                    addr: None,
                    operator: true,
                    version: qchat_proto::PROTOCOL_VERSION,
                };
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
        let mut sessions = JoinSet::new();
        let mut summaries = tokio::time::interval(tally::WINDOW);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = summaries.tick() => {
                    for line in self.gate.summarise() {
                        tracing::info!("{line}");
                    }
                }
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let peer = incoming.remote_address();
                    if !incoming.remote_address_validated() && incoming.may_retry() && self.gate.under_load() {
                        // Make the address prove it receives our packets
                        // before any handshake work is spent on it.
                        let _ = incoming.retry();
                        continue;
                    }
                    match self.gate.admit(peer.ip()) {
                        Ok(permit) => {
                            sessions.spawn(session::serve_quic(
                                incoming,
                                permit,
                                Arc::clone(&self.room),
                                Arc::clone(&self.options),
                            ));
                        }
                        Err(why) => {
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
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        tracing::info!(members = self.room.len(), "shutting down");
        endpoint.set_server_config(None);
        self.room.shutdown("the server is shutting down");
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            sessions.abort_all();
        }
        endpoint.close(
            CloseCode::ShuttingDown.code().into(),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
    }
}
