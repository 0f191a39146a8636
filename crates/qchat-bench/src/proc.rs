//! The server under test as a separate process: started from this same
//! executable with a temporary home, watched through `/proc`, and stopped
//! when the run ends (also on every error path, through `Drop`).
//!
//! A separate process keeps the server's CPU time and memory apart from the
//! load generator's, which lives in this process.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qchat_tls::Fingerprint;

/// How long a started server has to print its address and fingerprint.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of the server's stderr kept to explain a failure.
const STDERR_TAIL: usize = 20;

/// Which server to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `qchat serve`.
    Qchat,
    /// `qchat-bench relay`, the minimal QUIC relay.
    Baseline,
}

impl Kind {
    /// The name used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Qchat => "qchat",
            Kind::Baseline => "baseline",
        }
    }
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// Which server.
    pub kind: Kind,
    /// Connections it must admit (members plus headroom).
    pub connections: usize,
    /// Frames queued per member.
    pub queue: usize,
    /// Runtime worker threads, when not the server's default.
    pub threads: Option<u16>,
    /// The server's `--retry-threshold`; `None` lifts it above the number
    /// of connections.
    pub retry_threshold: Option<u32>,
    /// The `qchat` executable (the relay is this executable).
    pub qchat: PathBuf,
    /// Extra flags for `qchat serve` (`--server-arg`), after the bench's
    /// own; ignored for the relay.
    pub extra: Vec<String>,
}

/// How [`ServerProc::restart`] stops the server before starting it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    /// SIGTERM: the server says goodbye (`ShuttingDown`, back) and exits.
    Term,
    /// SIGKILL: a crash; clients learn from the stateless reset.
    Kill,
}

/// What the load reads of the servers under test: one process, or a
/// cluster's nodes and its NATS server together.
pub trait Watched {
    /// CPU time used so far (user + system).
    fn cpu(&self) -> Option<Duration>;
    /// Resident memory now, in KiB.
    fn rss_kib(&self) -> Option<u64>;
}

impl Watched for ServerProc {
    fn cpu(&self) -> Option<Duration> {
        ServerProc::cpu(self)
    }
    fn rss_kib(&self) -> Option<u64> {
        ServerProc::rss_kib(self)
    }
}

/// A running server process.
pub struct ServerProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its key's fingerprint.
    pub fingerprint: Fingerprint,
    /// The flags that lifted its limits, for the report.
    pub raised: Vec<String>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// How it was started, for a restart.
    spawn: Spawn,
    /// The server's stdout lines, read until it has announced itself.
    ready: mpsc::Receiver<String>,
    /// Kept for its `Drop`, which removes the identity and any state; a
    /// restart reuses it, so identity and room log survive.
    home: tempfile::TempDir,
}

impl ServerProc {
    /// Starts the server and waits until it announces its address.
    pub fn start(spawn: &Spawn) -> Result<ServerProc> {
        let home = tempfile::tempdir().context("cannot create a temporary home")?;
        Self::start_in(spawn, home)
    }

    /// [`ServerProc::start`] with a home made by the caller.
    pub fn start_in(spawn: &Spawn, home: tempfile::TempDir) -> Result<ServerProc> {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = ServerProc::launch(spawn, home, listen)?;
        server.wait_ready()?;
        Ok(server)
    }

    /// Stops the server the way `how` says, waits for it to exit, and
    /// starts it again on the same address with the same home (identity,
    /// room log). Returns when the new process has announced itself: the
    /// moment the server is back.
    pub fn restart(&mut self, how: Stop) -> Result<()> {
        let signal = match how {
            Stop::Term => "-TERM",
            Stop::Kill => "-KILL",
        };
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.exited() {
            if Instant::now() > deadline {
                bail!(
                    "the server did not exit within {} s of {signal}",
                    READY_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let home = std::mem::replace(
            &mut self.home,
            tempfile::tempdir().context("cannot create a temporary home")?,
        );
        let spawn = self.spawn.clone();
        let addr = self.addr;
        let mut next = ServerProc::launch(&spawn, home, addr)?;
        next.wait_ready()?;
        // The old value's Drop only removes the placeholder home: its
        // child has exited.
        *self = next;
        Ok(())
    }

    fn launch(spawn: &Spawn, home: tempfile::TempDir, listen: SocketAddr) -> Result<ServerProc> {
        let exe = match spawn.kind {
            Kind::Qchat => spawn.qchat.clone(),
            Kind::Baseline => {
                std::env::current_exe().context("cannot find the qchat-bench executable")?
            }
        };
        let listen_arg = listen.to_string();
        let mut cmd = Command::new(&exe);
        cmd.env("QCHAT_HOME", home.path());
        cmd.env_remove("RUST_LOG");
        let mut raised = Vec::new();
        match spawn.kind {
            Kind::Qchat => {
                // Logging off: 10,000 "joined" lines would be measured as
                // server work that a production server would not do at
                // this level.
                cmd.args(["--quiet", "serve", "--listen", &listen_arg]);
                let conns = spawn.connections.to_string();
                raised.extend([
                    "--max-connections".to_string(),
                    conns.clone(),
                    "--max-per-ip".into(),
                    conns.clone(),
                    // Every member joins from this one address, many
                    // handshakes at once.
                    "--max-unjoined-per-ip".into(),
                    conns,
                    "--queue".into(),
                    spawn.queue.to_string(),
                ]);
                // Flood control (per-member message rate) would throttle
                // the senders and measure the limiter, not the fan-out.
                raised.extend(["--rate".to_string(), "0".into()]);
                // Above the threshold every join pays a Retry round trip
                // (address validation under load); a join storm from one
                // load generator is exactly that load, so by default the
                // threshold is lifted above the number of members.
                match spawn.retry_threshold {
                    None => {
                        let above = u32::try_from(spawn.connections).unwrap_or(u32::MAX);
                        raised.extend(["--retry-threshold".to_string(), above.to_string()]);
                    }
                    Some(t) => {
                        cmd.args(["--retry-threshold", &t.to_string()]);
                    }
                }
                cmd.args(&raised);
                cmd.args(&spawn.extra);
            }
            Kind::Baseline => {
                cmd.args(["relay", "--listen", &listen_arg, "--cert-dir"])
                    .arg(home.path().join("certs"))
                    .args(["--queue", &spawn.queue.to_string()]);
            }
        }
        if let Some(t) = spawn.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            // Keeps draining after the announcement so the server never
            // blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }

        Ok(ServerProc {
            child,
            addr: listen,
            fingerprint: Fingerprint::from_bytes([0; 32]),
            raised,
            stderr_tail,
            spawn: spawn.clone(),
            home,
            ready: rx,
        })
    }

    /// Waits until the process announces its address and fingerprint.
    fn wait_ready(&mut self) -> Result<()> {
        let (mut addr, mut fp) = (None, None);
        let deadline = Instant::now() + READY_TIMEOUT;
        while addr.is_none() || fp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.ready.recv_timeout(left) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the {} server exited before announcing itself{}",
                    self.spawn.kind.label(),
                    self.stderr_excerpt()
                ),
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "the {} server did not announce itself within {} s{}",
                    self.spawn.kind.label(),
                    READY_TIMEOUT.as_secs(),
                    self.stderr_excerpt()
                ),
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = Some(
                    rest.trim()
                        .parse::<SocketAddr>()
                        .with_context(|| format!("unexpected server output {line:?}"))?,
                );
            } else if let Some(rest) = line.strip_prefix("fingerprint:") {
                fp = Some(
                    rest.trim()
                        .parse::<Fingerprint>()
                        .map_err(|e| anyhow::anyhow!("unexpected fingerprint {rest:?}: {e}"))?,
                );
            }
        }
        if let (Some(a), Some(f)) = (addr, fp) {
            self.addr = a;
            self.fingerprint = f;
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far (user + system), from `/proc/<pid>/stat`.
    pub fn cpu(&self) -> Option<Duration> {
        cpu_of(self.pid())
    }

    /// Resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// Peak resident memory, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines the server wrote on stderr, for error messages.
    pub fn stderr_excerpt(&self) -> String {
        let t = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = t.iter().map(String::as_str).collect();
            format!("; its last output:\n  {}", lines.join("\n  "))
        }
    }

    /// Kills the server outright (SIGKILL), as a crash or a pulled plug
    /// would, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the server to stop (SIGTERM, so a qchat server says goodbye as
    /// it would in production), and kills it if it has not gone within a
    /// few seconds.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.exited() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// CPU time process `pid` has used so far (user + system), from
/// `/proc/<pid>/stat`; the bench reads its own too, to show when the load
/// generator rather than the server is the limit.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses;
    // everything after the last ')' is space-separated, starting with
    // field 3, so utime (14) and stime (15) are at 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// Kernel clock ticks per second, the unit of `/proc/<pid>/stat` times.
/// Asked of `getconf` once (reading it from libc would need `unsafe`);
/// 100 is the value on every common Linux configuration.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}
