//! A real NATS server with JetStream for the crate's tests: on loopback, a
//! port of its own, a temporary store, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, ClusterOptions};

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
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The names branch's launcher, kept beside the cluster branch's until the two are unified.

/// How long a nats-server may take to say where it listens.
const START: Duration = Duration::from_secs(20);

/// A running nats-server, killed when dropped.
pub(crate) struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts one and waits (bounded) until it accepts clients.
    pub(crate) fn start() -> Nats {
        let dir = tempfile::tempdir().expect("a temporary store dir");
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server is installed (Debian: apt-get install nats-server)");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(START).expect("nats-server started");
        Nats {
            child,
            url: format!("nats://{addr}"),
            _dir: dir,
        }
    }

    /// A new node's connection to this server.
    pub(crate) async fn node(&self) -> Arc<Cluster> {
        Cluster::connect(&ClusterOptions {
            urls: self.url.clone(),
            ..Default::default()
        })
        .await
        .expect("connect to the test nats-server")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
