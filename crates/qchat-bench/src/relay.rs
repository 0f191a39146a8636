//! The baseline: the least a QUIC chat relay can do, so that qchat's
//! numbers can be quoted as a fraction of what QUIC does on this machine.
//!
//! Same identity, TLS configuration, ALPN and transport settings as
//! `qchat serve`; per connection it accepts the stream, answers the hello
//! with a welcome (so the real client's `join` works unchanged), and from
//! then on copies every frame verbatim to every other connection: framed
//! once into shared `Bytes`, a bounded queue per connection and the
//! server's own writer loop (`qchat_server::writer`). No acks in the
//! lobby, no names, no limits beyond the queue — whatever qchat costs on
//! top of this is the price of being a chat server.
//!
//! Rooms, because a bench with `--rooms` needs a control too: without one,
//! what 1,000 rooms cost could not be told from what their 10,000
//! connections cost. The relay reads exactly the two room frames the
//! bench's members send — `Join`, answered with the `RoomReplayed` the
//! member waits for, and `RoomSay`, copied verbatim to the room's other
//! members and answered with the `RoomAck` qchat sends its author — and
//! keeps a map of room → members, nothing else: no log (so nothing to
//! replay and no ids), no names, no operators, no `Part` (a member leaves
//! its rooms when it disconnects). Every other frame goes to the lobby as
//! before, unread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use bytes::Bytes;
use qchat_proto::frame::frame_body;
use qchat_proto::{limits, ClientMsg, CloseCode, FrameDecoder, ServerMsg, ALPN};
use qchat_server::writer::{write_loop, QuicSink};
use tokio::sync::mpsc;

use crate::cli::RelayArgs;

/// The kinds of [`ClientMsg::Join`] and [`ClientMsg::RoomSay`]: a body's
/// first byte is its kind (a varint, one byte below 128), so the relay
/// tells the two room frames from the rest without decoding the rest, and
/// the lobby's verbatim copy costs what it cost before rooms.
const JOIN: u8 = 16;
const ROOM_SAY: u8 = 20;

/// Runs the relay until the process is killed.
pub fn run(args: RelayArgs) -> Result<u8> {
    let (identity, _) = qchat_tls::identity::load_or_create(&args.cert_dir)
        .context("cannot load or create the relay's identity")?;
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.into())
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut config =
            qchat_tls::quic_server_config(&identity, &[ALPN]).context("cannot set up TLS")?;
        // qchat's own transport settings: the comparison is about what
        // happens above QUIC, not about different windows.
        config.transport_config(qchat_server::ServerOptions::default().transport());
        let endpoint = qchat_server::endpoint::bind(args.listen, config, None)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = endpoint.local_addr().context("cannot read the address")?;
        println!("relay listening on {local}");
        println!("fingerprint: {}", identity.fingerprint.canonical());
        let hub = Arc::new(Hub::default());
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(session(incoming, Arc::clone(&hub), args.queue));
        }
        Ok(crate::exit::OK)
    })
}

/// A connection's queue, and the connection to close when the queue is
/// full.
type Peer = (mpsc::Sender<Bytes>, quinn::Connection);

/// Connections by id: the lobby's, or one room's.
#[derive(Default)]
struct Members(Mutex<HashMap<u64, Peer>>);

impl Members {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Peer>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` for everyone but `from`; a connection whose queue is
    /// full is not reading and is dropped, as qchat drops a slow reader.
    fn broadcast(&self, from: u64, frame: &Bytes) {
        let mut members = self.lock();
        let mut slow = Vec::new();
        for (id, (tx, _)) in members.iter() {
            if *id != from && tx.try_send(frame.clone()).is_err() {
                slow.push(*id);
            }
        }
        for id in slow {
            if let Some((_, conn)) = members.remove(&id) {
                close_slow(&conn);
            }
        }
    }
}

fn close_slow(conn: &quinn::Connection) {
    conn.close(CloseCode::SlowReader.code().into(), b"slow reader");
}

/// The lobby's connections and the rooms. Each room has a lock of its own
/// and a session keeps the rooms it joined, so a room's line takes that
/// room's lock alone: rooms do not serialise on the map, which is locked
/// only to join and to leave.
#[derive(Default)]
struct Hub {
    next: AtomicU64,
    lobby: Members,
    rooms: Mutex<HashMap<String, Arc<Members>>>,
}

impl Hub {
    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Members>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `peer` in `room`, creating it; names are compared as sent,
    /// since the bench spells each room one way.
    fn join(&self, room: &str, id: u64, peer: Peer) -> Arc<Members> {
        let mut rooms = self.rooms();
        let members = Arc::clone(rooms.entry(room.to_string()).or_default());
        members.lock().insert(id, peer);
        members
    }

    /// Takes `id` out of the lobby and of each of `joined`, and forgets the
    /// rooms it leaves empty.
    fn leave(&self, id: u64, joined: &HashMap<String, Arc<Members>>) {
        self.lobby.lock().remove(&id);
        let mut rooms = self.rooms();
        for (name, members) in joined {
            let mut m = members.lock();
            m.remove(&id);
            // A join holds the map's lock while it adds to a room, so an
            // empty room here stays empty.
            if m.is_empty() && rooms.get(name).is_some_and(|r| Arc::ptr_eq(r, members)) {
                rooms.remove(name);
            }
        }
    }
}

async fn session(incoming: quinn::Incoming, hub: Arc<Hub>, queue: usize) {
    let Ok(conn) = incoming.await else { return };
    let _ = relay(&conn, &hub, queue).await;
    conn.close(CloseCode::Normal.code().into(), b"");
}

async fn relay(conn: &quinn::Connection, hub: &Hub, queue: usize) -> Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut decoder = FrameDecoder::new(limits::MAX_CLIENT_FRAME);
    let hello = decoder.read_frame(&mut recv).await?.context("no hello")?;
    // A version-4 member (`--signed`) is answered like any other: the
    // relay forwards frames as they come, signed or not.
    let (ClientMsg::Hello { name, .. } | ClientMsg::HelloV3 { name, .. }) =
        ClientMsg::decode(&hello)?
    else {
        anyhow::bail!("data before the hello");
    };
    let welcome = ServerMsg::Welcome {
        version: qchat_proto::PROTOCOL_VERSION,
        server_name: "relay".into(),
        name: name.clone(),
        members: vec![name],
    };
    send.write_chunk(welcome.to_frame()).await?;

    let (tx, rx) = mpsc::channel(queue);
    let id = hub.next.fetch_add(1, Ordering::Relaxed);
    hub.lobby.lock().insert(id, (tx.clone(), conn.clone()));
    let writer = tokio::spawn(async move {
        write_loop(
            &mut QuicSink(send),
            rx,
            &qchat_server::writer::Backlog::default(),
        )
        .await
    });
    let mut joined = HashMap::new();
    let read = read_loop(conn, hub, id, &tx, &mut decoder, &mut recv, &mut joined).await;
    // Dropping every sender of the queue lets the writer flush and finish.
    hub.leave(id, &joined);
    drop((tx, joined));
    let _ = writer.await;
    read
}

/// Relays this member's frames until its stream ends, its own queue is
/// full (it is then closed as a slow reader) or a room frame is malformed.
async fn read_loop(
    conn: &quinn::Connection,
    hub: &Hub,
    id: u64,
    tx: &mpsc::Sender<Bytes>,
    decoder: &mut FrameDecoder,
    recv: &mut quinn::RecvStream,
    joined: &mut HashMap<String, Arc<Members>>,
) -> Result<()> {
    while let Some(body) = decoder.read_frame(recv).await? {
        let answer = match body.first() {
            Some(&JOIN) => {
                let ClientMsg::Join { room, .. } = ClientMsg::decode(&body)? else {
                    anyhow::bail!("kind {JOIN} is not a join");
                };
                if !joined.contains_key(&room) {
                    let members = hub.join(&room, id, (tx.clone(), conn.clone()));
                    joined.insert(room.clone(), members);
                }
                // Nothing to replay: the relay keeps no log.
                ServerMsg::RoomReplayed {
                    room,
                    resumed: false,
                    count: 0,
                    missed: 0,
                }
            }
            Some(&ROOM_SAY) => {
                let ClientMsg::RoomSay { room, seq, .. } = ClientMsg::decode(&body)? else {
                    anyhow::bail!("kind {ROOM_SAY} is not a room line");
                };
                // A line for a room the member is not in goes nowhere.
                let Some(members) = joined.get(&room) else {
                    continue;
                };
                members.broadcast(id, &frame_body(&body)?);
                // No log, so no id: 0.
                ServerMsg::RoomAck { room, seq, id: 0 }
            }
            // The decoder hands out the body; frame it once, and every
            // recipient shares these bytes.
            _ => {
                hub.lobby.broadcast(id, &frame_body(&body)?);
                continue;
            }
        };
        if tx.try_send(answer.to_frame()).is_err() {
            close_slow(conn);
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first byte of each room frame's body is the kind the relay
    /// looks for (the frame's 4-byte length prefix comes first).
    #[test]
    fn room_kinds_are_the_first_byte_of_the_body() {
        let join = ClientMsg::Join {
            room: "#r1".into(),
            resume: None,
        };
        let say = ClientMsg::RoomSay {
            room: "#r1".into(),
            seq: 1,
            text: "hi".into(),
            action: false,
        };
        assert_eq!(join.to_frame()[4], JOIN);
        assert_eq!(say.to_frame()[4], ROOM_SAY);
        let say_lobby = ClientMsg::Say {
            seq: 1,
            text: "hi".into(),
        };
        assert!(![JOIN, ROOM_SAY].contains(&say_lobby.to_frame()[4]));
    }
}
