//! The end-to-end harness: runs the real `qchat` binary, each party with its
//! own temporary `QCHAT_HOME`, and reads what a user would see. Every wait is
//! bounded, and a failed expectation prints the whole transcript.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single expectation may take. Generous because CI machines
/// are shared; a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qchat")
}

/// A temporary home directory for one party.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn cert_pem(&self) -> PathBuf {
        self.path().join("certs").join("cert.pem")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.path().join("known_hosts")
    }
    /// A `qchat` command with a scrubbed environment pointing at this home.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("QCHAT_HOME", self.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0");
        c
    }
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A running `qchat` process.
pub struct Proc {
    pub label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Stream, String)>,
    transcript: Arc<Mutex<Vec<String>>>,
    seen: Vec<(Stream, String)>,
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn qchat");
        let (tx, rx) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        for (stream, reader) in [
            (
                Stream::Out,
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            ),
            (Stream::Err, Box::new(child.stderr.take().expect("stderr"))),
        ] {
            let tx = tx.clone();
            let transcript = Arc::clone(&transcript);
            let label = label.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let tag = if stream == Stream::Out { "out" } else { "err" };
                    transcript
                        .lock()
                        .expect("lock")
                        .push(format!("[{label} {tag}] {line}"));
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Proc {
            label: label.to_string(),
            child,
            stdin,
            lines: rx,
            transcript,
            seen: Vec::new(),
        }
    }

    pub fn transcript(&self) -> String {
        self.transcript.lock().expect("lock").join("\n")
    }

    /// Waits for a line on `stream` that satisfies `pred`; returns it.
    pub fn expect(&mut self, stream: Stream, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.expect_within(WAIT, stream, what, pred)
    }

    /// [`Proc::expect`] with a bound of its own: for what is due only after
    /// a known delay longer than [`WAIT`] (an expiry, say).
    pub fn expect_within(
        &mut self,
        wait: Duration,
        stream: Stream,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((s, line)) => {
                    self.seen.push((s, line.clone()));
                    if s == stream && pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: timed out waiting for {what}\n--- transcript ---\n{}",
                        self.label,
                        self.transcript()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited before {what}\n--- transcript ---\n{}",
                        self.label,
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Waits for a line on either stream that satisfies `pred`: for an
    /// attempt that may end either way (joined, or refused).
    pub fn expect_any(
        &mut self,
        what: &str,
        pred: impl Fn(Stream, &str) -> bool,
    ) -> (Stream, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((s, line)) => {
                    self.seen.push((s, line.clone()));
                    if pred(s, &line) {
                        return (s, line);
                    }
                }
                Err(_) => panic!(
                    "{}: no {what}\n--- transcript ---\n{}",
                    self.label,
                    self.transcript()
                ),
            }
        }
    }

    /// Waits for exactly this stdout line.
    pub fn expect_out(&mut self, line: &str) -> String {
        self.expect(Stream::Out, &format!("stdout line {line:?}"), |l| l == line)
    }

    /// Waits for a stderr line containing `needle`.
    pub fn expect_err_contains(&mut self, needle: &str) -> String {
        self.expect(Stream::Err, &format!("stderr containing {needle:?}"), |l| {
            l.contains(needle)
        })
    }

    /// Everything read so far from stdout, including lines consumed by
    /// earlier expectations.
    pub fn stdout_so_far(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(s, _)| *s == Stream::Out)
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Closes stdin: end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit, and drains its output into the
    /// transcript.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads deliver the last lines.
                while let Ok((s, l)) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push((s, l));
                }
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: did not exit\n--- transcript ---\n{}",
                    self.label,
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (by number) to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Kills the process hard, as a crash or pulled cable would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `qchat serve` on 127.0.0.1 and what it announced.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub fingerprint: String,
}

impl Server {
    pub fn start(home: &Home) -> Server {
        Self::start_on(home, "127.0.0.1:0", &[])
    }

    pub fn start_on(home: &Home, listen: &str, extra: &[&str]) -> Server {
        let mut cmd = home.command();
        cmd.args(["serve", "--listen", listen]).args(extra);
        let mut proc = Proc::spawn("server", cmd);
        let line = proc.expect(Stream::Out, "the listening line", |l| {
            l.contains("listening on ")
        });
        let addr: SocketAddr = line
            .rsplit("listening on ")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot parse address from {line:?}"));
        let fp = proc.expect(Stream::Out, "the fingerprint line", |l| {
            l.starts_with("fingerprint: ")
        });
        let fingerprint = fp.trim_start_matches("fingerprint: ").trim().to_string();
        Server {
            proc,
            addr,
            fingerprint,
        }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// A node of the cluster at `nats` (`serve --headless --cluster`),
    /// with the identity in `certs`' cert dir — the operator's copy of the
    /// first node's — or, without it, an identity of its own; `extra`
    /// flags after those. Returns once the node has said it joined.
    pub fn node(home: &Home, nats: &Nats, certs: Option<&Home>, extra: &[&str]) -> Server {
        let url = nats.url();
        let dir = certs.map(|c| c.path().join("certs").display().to_string());
        let mut flags = vec!["--headless", "--cluster", url.as_str()];
        if let Some(dir) = &dir {
            flags.extend(["--cert-dir", dir.as_str()]);
        }
        flags.extend(extra);
        let mut s = Server::start_on(home, "127.0.0.1:0", &flags);
        s.proc
            .expect(Stream::Out, "the node line", |l| l.starts_with("node "));
        s
    }
}

/// Starts `qchat connect` in plain mode as `name`, trusting the server on
/// first use, and waits until it is in the room.
pub fn join(home: &Home, server: &Server, name: &str) -> Proc {
    join_target(home, &server.target(), name)
}

/// [`join`] for a server reached at `target` rather than started here: a
/// host in the full-screen view, or an address behind a relay.
pub fn join_target(home: &Home, target: &str, name: &str) -> Proc {
    let mut p = connect(home, target, name, &["--accept-new"]);
    p.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    p
}

/// Starts `qchat connect` in plain mode without waiting.
pub fn connect(home: &Home, target: &str, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = home.command();
    cmd.args(["connect", target, "--name", name, "--plain"])
        .args(extra);
    Proc::spawn(name, cmd)
}

/// The NATS server a cluster's nodes share: Debian's `nats-server` (which
/// `.ci/run` installs) on 127.0.0.1, with JetStream and its store in a
/// temporary folder. It listens on a port it picks itself; a restart keeps
/// that port and the store, as a restarted production server would.
pub struct Nats {
    pub proc: Proc,
    pub port: u16,
    store: tempfile::TempDir,
}

/// The NATS server program, overridable where it lives elsewhere.
fn nats_server_bin() -> String {
    std::env::var("QCHAT_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl Nats {
    pub fn start() -> Nats {
        let store = tempfile::tempdir().expect("temp dir for JetStream");
        let (proc, port) = Self::launch(store.path(), None);
        Nats { proc, port, store }
    }

    fn launch(store: &Path, port: Option<u16>) -> (Proc, u16) {
        let mut cmd = Command::new(nats_server_bin());
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        cmd.args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store);
        // Asked first, so a missing program says what to install rather
        // than failing inside Proc::spawn.
        if let Err(e) = Command::new(nats_server_bin()).arg("--version").output() {
            panic!(
                "cannot run {}: {e}; the cluster tests need a NATS server \
                 (apt-get install nats-server, as .ci/run does)",
                nats_server_bin()
            );
        }
        let mut proc = Proc::spawn("nats", cmd);
        let line = proc.expect(Stream::Err, "NATS listening", |l| {
            l.contains("Listening for client connections on ")
        });
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot parse the NATS port from {line:?}"));
        proc.expect(Stream::Err, "NATS ready", |l| l.contains("Server is ready"));
        (proc, port)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server hard and starts it again on the same port with the
    /// same store.
    pub fn restart(&mut self) {
        self.proc.kill();
        let (proc, _) = Self::launch(self.store.path(), Some(self.port));
        self.proc = proc;
    }

    /// Stops the server hard, leaving the store for [`Nats::restart`].
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}
