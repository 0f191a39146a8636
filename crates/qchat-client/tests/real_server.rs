//! The network task against a real in-process server over loopback QUIC:
//! the connection survives a change of the client's address (its socket
//! replaced behind a relay, or rebound by the client itself) with no
//! reconnect and nothing lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qchat_client::reconnect::Dialer;
use qchat_client::{session, Command, ConnectionState, Event, Link, Network, TrustMode, TrustPlan};
use qchat_proto::{FrameDecoder, ServerMsg, ALPN};
use qchat_server::{Server, ServerOptions};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Mutex};

const WAIT: Duration = Duration::from_secs(10);

struct Room {
    server: Arc<Server>,
    addr: SocketAddr,
    fingerprint: qchat_tls::Fingerprint,
    _dir: tempfile::TempDir,
}

fn room() -> Room {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = qchat_tls::identity::create_new(&dir.path().join("certs")).expect("identity");
    let options = ServerOptions::default();
    let mut config = qchat_tls::quic_server_config(&identity, &[ALPN]).expect("tls");
    config.transport_config(options.transport());
    let endpoint = qchat_server::endpoint::bind("127.0.0.1:0".parse().expect("addr"), config, None)
        .expect("bind");
    let addr = endpoint.local_addr().expect("local addr");
    let server = Arc::new(Server::new(options));
    let s = Arc::clone(&server);
    tokio::spawn(async move { s.run(endpoint, std::future::pending()).await });
    Room {
        server,
        addr,
        fingerprint: identity.fingerprint,
        _dir: dir,
    }
}

/// A UDP relay between one client and the server whose upstream socket
/// (the address the server sees) can be replaced, as a NAT rebinding does.
struct Relay {
    addr: SocketAddr,
    swap: mpsc::Sender<()>,
    /// While set, every datagram is dropped both ways (a frozen server or
    /// a dead network).
    hold: Arc<AtomicBool>,
}

async fn relay(server: SocketAddr) -> Relay {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let addr = front.local_addr().expect("addr");
    let (swap, mut swaps) = mpsc::channel::<()>(4);
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let hold = Arc::new(AtomicBool::new(false));
    let held = Arc::clone(&hold);
    tokio::spawn(async move {
        loop {
            let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
            // Server to client, from this upstream socket until it is replaced.
            let back = {
                let (up, front, client, held) = (
                    Arc::clone(&up),
                    Arc::clone(&front),
                    Arc::clone(&client),
                    Arc::clone(&held),
                );
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = up.recv(&mut buf).await {
                        if held.load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Some(c) = *client.lock().await {
                            let _ = front.send_to(&buf[..n], c).await;
                        }
                    }
                })
            };
            let mut buf = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { return };
                        *client.lock().await = Some(from);
                        if !held.load(Ordering::SeqCst) {
                            let _ = up.send_to(&buf[..n], server).await;
                        }
                    }
                    s = swaps.recv() => {
                        if s.is_none() { return; }
                        break;
                    }
                }
            }
            back.abort();
        }
    });
    Relay { addr, swap, hold }
}

/// Alice through `via`, run by the network task with reconnects on.
async fn alice(
    room: &Room,
    via: SocketAddr,
    home: &std::path::Path,
) -> (mpsc::Sender<Command>, mpsc::Receiver<Event>) {
    let host = qchat_tls::HostKey::parse(&via.to_string(), 8080).expect("host");
    let plan = TrustPlan::load(
        host,
        &home.join("known_hosts"),
        Some(room.fingerprint),
        TrustMode::Strict,
        false,
    )
    .expect("plan");
    let endpoint = qchat_client::client_endpoint(via).expect("endpoint");
    let instance = qchat_client::new_instance();
    let mut dialer = Dialer::new(
        endpoint,
        via,
        &plan,
        room.fingerprint,
        "alice".into(),
        instance,
        true,
    );
    let joined = tokio::time::timeout(WAIT, dialer.dial(None))
        .await
        .expect("join in time")
        .expect("joined");
    let network = Network {
        redial: Box::new(dialer),
        reconnect: true,
        store: None,
        resumed_from: None,
        welcome: joined.welcome.v3.clone(),
        name: joined.name.clone(),
        members: joined.members.clone(),
        signing: None,
    };
    let mut link = Link::from(joined);
    link.network = Some(network);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    tokio::spawn(session::run(link, cmd_rx, ev_tx));
    (cmd_tx, ev_rx)
}

/// Bob sits at the server and reads what the room says.
struct Bob {
    link: qchat_server::LocalLink,
    decoder: FrameDecoder,
}

impl Bob {
    async fn join(room: &Room) -> Bob {
        let mut link = room.server.join_local();
        let (decoder, _) = qchat_client::hello(&mut link.send, &mut link.recv, "bob")
            .await
            .expect("bob joins");
        Bob { link, decoder }
    }

    /// Waits for `text` from alice.
    async fn hears(&mut self, text: &str) {
        let wait = async {
            loop {
                let frame = self
                    .decoder
                    .read_frame(&mut self.link.recv)
                    .await
                    .expect("a frame")
                    .expect("not the end");
                match ServerMsg::decode(&frame) {
                    Ok(ServerMsg::Chat { text: t, .. } | ServerMsg::ChatV3 { text: t, .. })
                        if t == text =>
                    {
                        return
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("bob never heard {text:?}"));
    }
}

/// Alice's events until `found` picks one (its answer is returned), within
/// [`WAIT`]; none may say the connection was lost.
async fn until<T>(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    mut found: impl FnMut(&Event) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            let ev = events.recv().await.expect("the session runs");
            if let Event::Connection(ConnectionState::Lost { reason }) = &ev {
                panic!("the connection was lost: {reason}")
            }
            if let Some(t) = found(&ev) {
                return t;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

/// Alice's events until her message `seq` is delivered.
async fn delivered(events: &mut mpsc::Receiver<Event>, seq: u64) {
    until(events, &format!("message {seq} was never delivered"), |e| {
        (*e == Event::Delivered { seq }).then_some(())
    })
    .await;
}

async fn say(alice: &mpsc::Sender<Command>, text: &str) {
    alice.send(Command::Say(text.into())).await.expect("send");
}

/// Alice says `text`, Bob hears it, and Alice is told message `seq` was
/// delivered.
async fn say_heard_delivered(
    alice: &mpsc::Sender<Command>,
    bob: &mut Bob,
    events: &mut mpsc::Receiver<Event>,
    text: &str,
    seq: u64,
) {
    say(alice, text).await;
    bob.hears(text).await;
    delivered(events, seq).await;
}

#[tokio::test]
async fn a_new_source_address_behind_a_relay_keeps_the_session() {
    let room = room();
    let relay = relay(room.addr).await;
    let home = tempfile::tempdir().expect("home");
    let mut bob = Bob::join(&room).await;
    let (alice, mut events) = alice(&room, relay.addr, home.path()).await;

    say_heard_delivered(&alice, &mut bob, &mut events, "before", 1).await;

    relay.swap.send(()).await.expect("swap");
    say_heard_delivered(&alice, &mut bob, &mut events, "after", 2).await;
}

#[tokio::test]
async fn a_client_rebinding_its_own_socket_keeps_the_session() {
    let room = room();
    let home = tempfile::tempdir().expect("home");
    let mut bob = Bob::join(&room).await;
    let (alice, mut events) = alice(&room, room.addr, home.path()).await;

    say_heard_delivered(&alice, &mut bob, &mut events, "before", 1).await;

    alice.send(Command::Rebind).await.expect("rebind");
    say_heard_delivered(&alice, &mut bob, &mut events, "after", 2).await;
}

/// A server that stops answering is reported within seconds, long before
/// the idle timeout, and the answer's return is reported too; nothing typed
/// meanwhile is lost.
#[tokio::test]
async fn silence_is_reported_and_so_is_the_answer_coming_back() {
    let room = room();
    let relay = relay(room.addr).await;
    let home = tempfile::tempdir().expect("home");
    let mut bob = Bob::join(&room).await;
    let (alice, mut events) = alice(&room, relay.addr, home.path()).await;
    say(&alice, "before").await;
    delivered(&mut events, 1).await;

    relay.hold.store(true, Ordering::SeqCst);
    say(&alice, "during").await;
    let silent = until(
        &mut events,
        "no answer is reported before the idle timeout",
        |e| match e {
            Event::Connection(ConnectionState::NoAnswer { secs }) => Some(*secs),
            _ => None,
        },
    )
    .await;
    assert!(silent >= 3, "{silent}");

    relay.hold.store(false, Ordering::SeqCst);
    let mut acked = false;
    until(
        &mut events,
        "the answer's return is reported",
        |e| match e {
            Event::Delivered { seq: 2 } => {
                acked = true;
                None
            }
            Event::Connection(ConnectionState::Connected { .. }) => Some(()),
            _ => None,
        },
    )
    .await;
    bob.hears("during").await;
    if !acked {
        delivered(&mut events, 2).await;
    }
}

/// While another node is known, one that does not answer is given up
/// after the short node timeout (its error says so, rather than waiting
/// the full connect timeout), and the next attempt reaches the live one.
#[tokio::test]
async fn a_silent_node_is_left_for_a_live_one() {
    let room = room();
    // Bound and never read: a node that died with its address still held.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead = silent.local_addr().expect("addr");
    let home = tempfile::tempdir().expect("temp dir");
    let host = qchat_tls::HostKey::parse(&dead.to_string(), 8080).expect("host");
    let plan = TrustPlan::load(
        host.clone(),
        &home.path().join("known_hosts"),
        Some(room.fingerprint),
        TrustMode::Strict,
        false,
    )
    .expect("plan");
    let endpoint = qchat_client::client_endpoint(dead).expect("endpoint");
    let mut dialer = Dialer::new(
        endpoint,
        dead,
        &plan,
        room.fingerprint,
        "alice".into(),
        qchat_client::new_instance(),
        true,
    );
    dialer.learn(&[room.addr.to_string()]);
    let first = tokio::time::timeout(WAIT, dialer.dial(None))
        .await
        .expect("gives up on the silent node in time");
    match first {
        Err(e) => assert!(e.to_string().contains("trying another node"), "{e}"),
        Ok(_) => panic!("a silent node cannot be joined"),
    }
    let joined = tokio::time::timeout(WAIT, dialer.dial(None))
        .await
        .expect("joins in time")
        .expect("the live node takes alice");
    assert_eq!(joined.name, "alice");
    assert_ne!(dialer.joined_at(), &host, "joined at the live node");
}
