//! A cluster under test: one nats-server with JetStream (loopback, a
//! temporary store) and N `qchat serve --cluster` nodes sharing one server
//! identity, each its own process so that its CPU time and memory are read
//! apart from the load's, and all stopped when the run ends (also on every
//! error path, through `Drop`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::proc::{cpu_of, ServerProc, Spawn, Watched};

/// How long nats-server has to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of nats-server's output kept to explain a failure.
const OUTPUT_TAIL: usize = 20;

/// A running nats-server.
pub struct NatsProc {
    child: Child,
    /// The port it listens on for clients, on 127.0.0.1.
    pub port: u16,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Its JetStream store, removed when the server is gone.
    _store: tempfile::TempDir,
}

impl NatsProc {
    /// Starts `program` on 127.0.0.1 on a port of its choosing, JetStream
    /// on, and waits until it is ready.
    pub fn start(program: &PathBuf) -> Result<NatsProc> {
        let store = tempfile::tempdir().context("cannot create a JetStream store folder")?;
        let mut cmd = Command::new(program);
        cmd.args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} (the cluster runs need a NATS server: apt-get install \
                 nats-server, or name it with --nats-server PATH)",
                program.display()
            )
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            let tail = Arc::clone(&tail);
            // Keeps draining so that the server never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == OUTPUT_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let mut nats = NatsProc {
            child,
            port: 0,
            tail,
            _store: store,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut port = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!(
                    "nats-server did not say it was ready within {} s{}",
                    READY_TIMEOUT.as_secs(),
                    nats.excerpt()
                ),
            };
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
            }
            if line.contains("Server is ready") {
                break;
            }
        }
        nats.port = port.with_context(|| format!("nats-server named no port{}", nats.excerpt()))?;
        Ok(nats)
    }

    /// The URL nodes are given with `--cluster`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// CPU time used so far.
    pub fn cpu(&self) -> Option<Duration> {
        cpu_of(self.child.id())
    }

    /// The last lines nats-server wrote, for error messages.
    pub fn excerpt(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = t.iter().map(String::as_str).collect();
            format!("; nats-server's last output:\n  {}", lines.join("\n  "))
        }
    }
}

impl Drop for NatsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nats-server and the nodes connected to it.
pub struct Nodes {
    /// The nodes, in the order they were started; a killed node stays
    /// here, its address still one of the members' fallbacks.
    pub nodes: Vec<ServerProc>,
    /// The NATS server they share.
    pub nats: NatsProc,
    /// NATS CPU time at each [`Watched::cpu`] call: the load reads CPU
    /// around its phases, and the last two samples bracket the measured
    /// one, which gives NATS's share of it.
    nats_samples: Mutex<Vec<Duration>>,
    /// The one identity every node presents, as an operator copies it.
    _certs: tempfile::TempDir,
}

impl Nodes {
    /// Starts nats-server and `n` nodes, one after the other: the first
    /// creates the identity in the shared folder, the others load it.
    pub fn start(n: usize, spawn: &Spawn, nats_server: &PathBuf) -> Result<Nodes> {
        let nats = NatsProc::start(nats_server)?;
        let certs = tempfile::tempdir().context("cannot create the identity folder")?;
        let cert_dir = certs.path().join("certs");
        let mut nodes: Vec<ServerProc> = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = spawn.clone();
            let mut extra = vec![
                "--cluster".to_string(),
                nats.url(),
                "--cert-dir".into(),
                cert_dir.to_string_lossy().into_owned(),
            ];
            // The user's --server-arg come after and win.
            extra.append(&mut s.extra);
            s.extra = extra;
            let home = tempfile::tempdir().context("cannot create a node's home")?;
            let node = ServerProc::start_in(&s, home).with_context(|| {
                format!("node {} of {n} did not start{}", i + 1, nats.excerpt())
            })?;
            if let Some(first) = nodes.first() {
                if node.fingerprint != first.fingerprint {
                    bail!(
                        "node {} presents another identity than node 1: --cert-dir was not honoured",
                        i + 1
                    );
                }
            }
            nodes.push(node);
        }
        Ok(Nodes {
            nodes,
            nats,
            nats_samples: Mutex::new(Vec::new()),
            _certs: certs,
        })
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// NATS's CPU time between the last two [`Watched::cpu`] readings.
    pub fn nats_cpu_last_span(&self) -> Option<Duration> {
        let s = self.nats_samples.lock().unwrap_or_else(|p| p.into_inner());
        match s.as_slice() {
            [.., a, b] => Some(b.saturating_sub(*a)),
            _ => None,
        }
    }

    /// Peak resident memory of the nodes together, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.nodes.iter().map(ServerProc::peak_rss_kib).sum()
    }

    /// The nodes' last output, for error messages.
    pub fn excerpt(&self) -> String {
        let mut s: String = self.nodes.iter().map(ServerProc::stderr_excerpt).collect();
        s.push_str(&self.nats.excerpt());
        s
    }

    /// Stops the nodes (SIGTERM, as in production), then NATS.
    pub fn stop(self) {
        for n in self.nodes {
            n.stop();
        }
    }
}

impl Watched for Nodes {
    /// The nodes' and NATS's CPU time together: the cost of a delivery in
    /// a cluster is all of it.
    fn cpu(&self) -> Option<Duration> {
        let nats = self.nats.cpu()?;
        self.nats_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(nats);
        let nodes: Option<Duration> = self.nodes.iter().map(ServerProc::cpu).sum();
        Some(nodes? + nats)
    }

    /// The nodes' memory together (NATS's is its own, and not per member).
    fn rss_kib(&self) -> Option<u64> {
        self.nodes.iter().map(ServerProc::rss_kib).sum()
    }
}
