//! The baseline: the least a QUIC chat relay can do, so that qchat's
//! numbers can be quoted as a fraction of what QUIC does on this machine.
//!
//! Same identity, TLS configuration, ALPN and transport settings as
//! `qchat serve`; per connection it accepts the stream, answers the hello
//! with a welcome (so the real client's `join` works unchanged), and from
//! then on copies every frame verbatim to every other connection: framed
//! once into shared `Bytes`, a bounded queue per connection and the
//! server's own writer loop (`qchat_server::writer`). No acks,
//! no names, no limits beyond the queue — whatever qchat costs on top of
//! this is the price of being a chat server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use qchat_proto::frame::frame_body;
use qchat_proto::{limits, ClientMsg, CloseCode, FrameDecoder, ServerMsg, ALPN};
use qchat_server::writer::{write_loop, QuicSink};
use tokio::sync::mpsc;

use crate::cli::RelayArgs;

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

/// Every connection's queue, by id.
#[derive(Default)]
struct Hub {
    next: AtomicU64,
    members: Mutex<HashMap<u64, (mpsc::Sender<Bytes>, quinn::Connection)>>,
}

impl Hub {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (mpsc::Sender<Bytes>, quinn::Connection)>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
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
                conn.close(CloseCode::SlowReader.code().into(), b"slow reader");
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
    hub.lock().insert(id, (tx, conn.clone()));
    let writer = tokio::spawn(async move { write_loop(&mut QuicSink(send), rx).await });
    while let Ok(Some(body)) = decoder.read_frame(&mut recv).await {
        // The decoder hands out the body; frame it once, and every
        // recipient shares these bytes.
        hub.broadcast(id, &frame_body(&body)?);
    }
    // Dropping the queue's sender lets the writer flush and finish.
    hub.lock().remove(&id);
    let _ = writer.await;
    Ok(())
}
