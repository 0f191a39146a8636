//! The qchat server: accepts QUIC connections, runs one session per
//! connection, and fans every message out to the room.
//!
//! - [`options`]: the limits and transport settings an operator can tune.
//! - [`endpoint`]: binding the UDP socket (dual-stack where possible).
//! - [`gate`]: admission before any handshake work (connection limits).
//! - `session`: one connection's life: hello, reader, writer, close.
//! - [`room`]: the members and the fan-out; the only shared state.
//!
//! The binary calls [`Server::run`]; tests call the same function.

pub mod endpoint;
pub mod gate;
pub mod options;
pub mod room;
mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qchat_proto::CloseCode;
use tokio::task::JoinSet;

pub use options::ServerOptions;
pub use room::Room;

/// How long shutdown waits for sessions to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A server: its options and its room.
pub struct Server {
    options: Arc<ServerOptions>,
    room: Arc<Room>,
    gate: Arc<gate::Gate>,
}

impl Server {
    /// A server with an empty room.
    pub fn new(options: ServerOptions) -> Self {
        let options = Arc::new(options);
        Server {
            room: Arc::new(Room::new(Arc::clone(&options))),
            gate: gate::Gate::new(options.max_connections, options.max_per_ip),
            options,
        }
    }

    /// The room, for an in-process member such as the operator.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Accepts connections on `endpoint` until `shutdown` completes, then
    /// tells every member the server is going away, lets their queues
    /// drain, closes every connection and waits for the endpoint to go idle.
    pub async fn run(&self, endpoint: quinn::Endpoint, shutdown: impl Future<Output = ()>) {
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let peer = incoming.remote_address();
                    match self.gate.admit(peer.ip()) {
                        Ok(permit) => {
                            sessions.spawn(session::serve(
                                incoming,
                                permit,
                                Arc::clone(&self.room),
                                Arc::clone(&self.options),
                            ));
                        }
                        Err(why) => {
                            tracing::info!(%peer, ?why, "connection refused: at the connection limit");
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
