//! A real nats-server for the crate's own tests: JetStream on, loopback
//! only, a random port and a temporary store that goes with it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, ClusterOptions};

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
