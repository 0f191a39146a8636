//! A small UDP relay that stands between a client and the server, so a test
//! can change the address the server sees in the middle of a conversation:
//! the NAT rebinding or network change that QUIC connection migration is
//! for. Everything stays on 127.0.0.1; the relay's threads stop when it is
//! dropped.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the relay's threads look up from a blocking read to check
/// whether they should stop.
const TICK: Duration = Duration::from_millis(50);

/// Largest datagram relayed; QUIC's are far smaller.
const MAX_DATAGRAM: usize = 65_535;

struct Shared {
    server: SocketAddr,
    /// The client-facing socket: the client sends here, and hears back from
    /// here.
    front: UdpSocket,
    /// Where the client is, once it has sent something.
    client: Mutex<Option<SocketAddr>>,
    /// The server-facing socket of the current generation.
    back: Mutex<Arc<UdpSocket>>,
    /// Bumped by every swap; a back-side reader of an older generation
    /// stops.
    generation: AtomicU64,
    stop: AtomicBool,
}

/// A running relay.
pub struct UdpRelay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    /// Starts a relay to `server` on a fresh 127.0.0.1 port.
    pub fn start(server: SocketAddr) -> UdpRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the relay's front socket");
        front.set_read_timeout(Some(TICK)).expect("read timeout");
        let back = Arc::new(new_back_socket());
        let shared = Arc::new(Shared {
            server,
            front,
            client: Mutex::new(None),
            back: Mutex::new(Arc::clone(&back)),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mut relay = UdpRelay {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        relay
            .threads
            .push(std::thread::spawn(move || forward_up(&shared)));
        relay.spawn_back_reader(back, 0);
        relay
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.front.local_addr().expect("front address")
    }

    /// The address the server currently sees the client at.
    pub fn server_side_addr(&self) -> SocketAddr {
        self.shared
            .back
            .lock()
            .expect("lock")
            .local_addr()
            .expect("back address")
    }

    /// Replaces the server-facing socket with a new one on another port, as
    /// a NAT that forgot its mapping would; returns the new address the
    /// server will see.
    pub fn swap(&mut self) -> SocketAddr {
        let back = Arc::new(new_back_socket());
        let addr = back.local_addr().expect("back address");
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.shared.back.lock().expect("lock") = Arc::clone(&back);
        self.spawn_back_reader(back, generation);
        addr
    }

    fn spawn_back_reader(&mut self, back: Arc<UdpSocket>, generation: u64) {
        let shared = Arc::clone(&self.shared);
        self.threads.push(std::thread::spawn(move || {
            forward_down(&shared, &back, generation)
        }));
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn new_back_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a relay back socket");
    s.set_read_timeout(Some(TICK)).expect("read timeout");
    s
}

/// Client → server, always through the current back socket.
fn forward_up(shared: &Shared) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = shared.front.recv_from(&mut buf) else {
            continue;
        };
        *shared.client.lock().expect("lock") = Some(from);
        let back = Arc::clone(&shared.back.lock().expect("lock"));
        let _ = back.send_to(&buf[..n], shared.server);
    }
}

/// Server → client, from one generation's back socket until it is
/// replaced. The old socket is dropped with its reader, so the server's
/// packets to the old address go nowhere, as with a real rebinding.
fn forward_down(shared: &Shared, back: &UdpSocket, generation: u64) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(Ordering::SeqCst)
        && shared.generation.load(Ordering::SeqCst) == generation
    {
        let Ok((n, from)) = back.recv_from(&mut buf) else {
            continue;
        };
        if from != shared.server {
            continue;
        }
        let client = *shared.client.lock().expect("lock");
        if let Some(client) = client {
            let _ = shared.front.send_to(&buf[..n], client);
        }
    }
}
