//! A real NATS server with JetStream for the crate's tests: on loopback, a
//! port of its own, a temporary store, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `nats-server -js`.
pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

/// How long a server may take to say it is ready.
const READY: Duration = Duration::from_secs(20);

impl NatsServer {
    /// Starts one (the program is `nats-server`, or
    /// `QCHAT_TEST_NATS_SERVER`); waits until it accepts clients.
    pub async fn start() -> NatsServer {
        tokio::task::spawn_blocking(NatsServer::start_blocking)
            .await
            .expect("the launcher ran")
    }

    fn start_blocking() -> NatsServer {
        let program =
            std::env::var("QCHAT_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let store = tempfile::tempdir().expect("a temp dir for JetStream");
        let mut child = Command::new(&program)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {program}: {e} (apt-get install nats-server, as .ci/run does)")
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut port = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Listening for client connections on ") {
                    port = line.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port);
                }
                // Read on to the end: a full pipe would stop the server.
            }
        });
        let port = match rx.recv_timeout(READY) {
            Ok(Some(port)) => port,
            other => {
                let _ = child.kill();
                panic!("{program} did not start: {other:?}");
            }
        };
        NatsServer {
            child,
            port,
            _store: store,
        }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// How a node joins it: its URL, nothing else set.
    pub fn options(&self) -> super::ClusterOptions {
        super::ClusterOptions {
            urls: self.url(),
            ..Default::default()
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
