//! The room's fan-out, four ways, measured in isolation: the room's design
//! (one mutex) against the alternatives it was chosen over.
//!
//! Every design keeps what the real room promises: each public message is
//! encoded once into shared `Bytes`; every other member gets it through a
//! bounded queue of `QUEUE` frames, and a member whose queue is full is
//! counted as a slow reader instead of stalling the room; the sender gets an
//! `Ack` after its message is queued for everyone; all members see messages
//! in one order. Members are tasks that drain their queue the way the
//! server's writer does (`recv_many`), without a network: what is left is
//! the cost of the fan-out itself, which the end-to-end profile puts at
//! 5–7 % of the server's CPU (docs/PERFORMANCE.md).
//!
//! - `mutex` — what `room.rs` does: one `std::sync::Mutex` over the member
//!   list, a `try_send` per recipient under the lock.
//! - `actor` — one task owns the member list; senders hand it their message
//!   through a bounded channel.
//! - `sharded` — members spread over 4 locks; a message takes each in turn
//!   (total order then needs a sequencer; this one uses the first shard's
//!   lock, held across the others).
//! - `broadcast` — one `tokio::sync::broadcast` ring for public messages
//!   plus a per-member channel for acks; each member's writer takes from
//!   both. One push per message instead of one per recipient, but every
//!   member wakes for every message, its own included.
//!
//! `cargo bench -p qchat-server --bench fanout`; results in
//! docs/PERFORMANCE.md.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use divan::counter::ItemsCount;
use divan::Bencher;
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

fn main() {
    divan::main();
}

/// Frames a member may have queued (the server's `--queue` default).
const QUEUE: usize = 1024;
/// The server writer's batch.
const WRITE_BATCH: usize = 256;
const MESSAGES: usize = 100;
const SHARDS: usize = 4;

/// Members in the room; the first `SENDERS` of them speak.
const ROOMS: &[usize] = &[10, 100, 1000];
const SENDERS: usize = 10;

/// Same shape as the server's runtime: two worker threads.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a tokio runtime")
    })
}

/// A message's frame: ~100 B, encoded once.
fn frame(from: usize, seq: usize) -> Bytes {
    let mut v = vec![b'x'; 100];
    v[..8].copy_from_slice(&(from as u64).to_be_bytes());
    v[8..16].copy_from_slice(&(seq as u64).to_be_bytes());
    Bytes::from(v)
}

const ACK: Bytes = Bytes::from_static(b"ack");

fn sender_of(frame: &Bytes) -> usize {
    let mut id = [0; 8];
    id.copy_from_slice(&frame[..8]);
    u64::from_be_bytes(id) as usize
}

/// What a run must deliver, and what it did.
struct Tally {
    /// Public frames each member still expects.
    expected: Vec<usize>,
    slow: AtomicUsize,
}

impl Tally {
    fn new(members: usize, senders: usize) -> Arc<Self> {
        let expected = (0..members)
            .map(|m| MESSAGES * (senders - usize::from(m < senders)))
            .collect();
        Arc::new(Tally {
            expected,
            slow: AtomicUsize::new(0),
        })
    }

    fn deliveries(&self) -> usize {
        self.expected.iter().sum()
    }
}

/// A member's writer for the channel designs: drains its queue in batches
/// until every public frame and (for a sender) every ack has arrived.
async fn drain(mut rx: mpsc::Receiver<Bytes>, public: usize, acks: usize) {
    let (mut got_public, mut got_acks) = (0, 0);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while got_public < public || got_acks < acks {
        if rx.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            return;
        }
        for f in batch.drain(..) {
            if f.len() == ACK.len() {
                got_acks += 1;
            } else {
                got_public += 1;
            }
        }
    }
}

fn channels(members: usize) -> (Vec<mpsc::Sender<Bytes>>, Vec<mpsc::Receiver<Bytes>>) {
    (0..members).map(|_| mpsc::channel(QUEUE)).unzip()
}

/// One writer per member, each expecting its share of the run.
fn spawn_writers(
    rxs: Vec<mpsc::Receiver<Bytes>>,
    tally: &Tally,
    senders: usize,
) -> Vec<JoinHandle<()>> {
    rxs.into_iter()
        .enumerate()
        .map(|(m, rx)| {
            let acks = if m < senders { MESSAGES } else { 0 };
            tokio::spawn(drain(rx, tally.expected[m], acks))
        })
        .collect()
}

/// `senders` speakers, each publishing `MESSAGES` frames one at a time
/// (yielding in between, as messages arrive one by one from the network).
fn spawn_speakers<P>(senders: usize, publish: Arc<P>) -> Vec<JoinHandle<()>>
where
    P: Fn(usize, Bytes) + Send + Sync + 'static,
{
    (0..senders)
        .map(|s| {
            let publish = Arc::clone(&publish);
            tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    publish(s, frame(s, seq));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

/// Queues `f` for everyone but `from`, then the ack for `from`.
fn fan_out(outboxes: &[mpsc::Sender<Bytes>], from: usize, f: &Bytes, tally: &Tally) {
    for (id, tx) in outboxes.iter().enumerate() {
        if id != from && tx.try_send(f.clone()).is_err() {
            tally.slow.fetch_add(1, Ordering::Relaxed);
        }
    }
    if outboxes[from].try_send(ACK).is_err() {
        tally.slow.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run_mutex(members: usize, senders: usize) -> usize {
    let tally = Tally::new(members, senders);
    let (txs, rxs) = channels(members);
    let room = Mutex::new(txs);
    let writers = spawn_writers(rxs, &tally, senders);
    let t = Arc::clone(&tally);
    let speakers = spawn_speakers(
        senders,
        Arc::new(move |s: usize, f: Bytes| {
            let outboxes = room.lock().unwrap_or_else(|p| p.into_inner());
            fan_out(&outboxes, s, &f, &t);
        }),
    );
    join_all(speakers, writers).await;
    tally.slow.load(Ordering::Relaxed)
}

async fn run_actor(members: usize, senders: usize) -> usize {
    let tally = Tally::new(members, senders);
    let (txs, rxs) = channels(members);
    let (ops, mut inbox) = mpsc::channel::<(usize, Bytes)>(QUEUE);
    let owner = {
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            while inbox.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                for (from, f) in batch.drain(..) {
                    fan_out(&txs, from, &f, &tally);
                }
            }
        })
    };
    let writers = spawn_writers(rxs, &tally, senders);
    let speakers: Vec<_> = (0..senders)
        .map(|s| {
            let ops = ops.clone();
            tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    if ops.send((s, frame(s, seq))).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    drop(ops);
    join_all(speakers, writers).await;
    let _ = owner.await;
    tally.slow.load(Ordering::Relaxed)
}

/// One shard's members: id and queue.
type Shard = Vec<(usize, mpsc::Sender<Bytes>)>;

async fn run_sharded(members: usize, senders: usize) -> usize {
    let tally = Tally::new(members, senders);
    let (txs, rxs) = channels(members);
    // Member m lives in shard m % SHARDS.
    let mut shards: Vec<Shard> = vec![Vec::new(); SHARDS];
    for (m, tx) in txs.into_iter().enumerate() {
        shards[m % SHARDS].push((m, tx));
    }
    let shards: Vec<Mutex<Shard>> = shards.into_iter().map(Mutex::new).collect();
    let writers = spawn_writers(rxs, &tally, senders);
    let t = Arc::clone(&tally);
    let speakers = spawn_speakers(
        senders,
        Arc::new(move |s: usize, f: Bytes| {
            // The first shard's lock orders messages room-wide.
            let first = shards[0].lock().unwrap_or_else(|p| p.into_inner());
            for (i, shard) in shards.iter().enumerate() {
                let other;
                let list = if i == 0 {
                    &*first
                } else {
                    other = shard.lock().unwrap_or_else(|p| p.into_inner());
                    &*other
                };
                for (id, tx) in list {
                    let f = if *id == s { ACK } else { f.clone() };
                    if tx.try_send(f).is_err() {
                        t.slow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }),
    );
    join_all(speakers, writers).await;
    tally.slow.load(Ordering::Relaxed)
}

async fn run_broadcast(members: usize, senders: usize) -> usize {
    let tally = Tally::new(members, senders);
    let (txs, rxs) = channels(members);
    let (ring, _) = broadcast::channel::<Bytes>(QUEUE);
    // Subscribed before anyone speaks, as a member is before its welcome.
    let subs: Vec<_> = (0..members).map(|_| ring.subscribe()).collect();
    let room = Mutex::new((ring, txs));
    let writers: Vec<_> = rxs
        .into_iter()
        .zip(subs)
        .enumerate()
        .map(|(m, (mut direct, mut public))| {
            let (tally, expected) = (Arc::clone(&tally), tally.expected[m]);
            let acks = if m < senders { MESSAGES } else { 0 };
            tokio::spawn(async move {
                let (mut got_public, mut got_acks) = (0, 0);
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                while got_public < expected || got_acks < acks {
                    tokio::select! {
                        biased;
                        n = direct.recv_many(&mut batch, WRITE_BATCH) => {
                            if n == 0 { return; }
                            got_acks += batch.len();
                            batch.clear();
                        }
                        r = public.recv() => match r {
                            Ok(f) => {
                                if sender_of(&f) != m {
                                    got_public += 1;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                tally.slow.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            })
        })
        .collect();
    let t = Arc::clone(&tally);
    let speakers = spawn_speakers(
        senders,
        Arc::new(move |s: usize, f: Bytes| {
            let guard = room.lock().unwrap_or_else(|p| p.into_inner());
            let (ring, outboxes) = &*guard;
            let _ = ring.send(f);
            if outboxes[s].try_send(ACK).is_err() {
                t.slow.fetch_add(1, Ordering::Relaxed);
            }
        }),
    );
    join_all(speakers, writers).await;
    tally.slow.load(Ordering::Relaxed)
}

async fn join_all(speakers: Vec<JoinHandle<()>>, writers: Vec<JoinHandle<()>>) {
    for t in speakers.into_iter().chain(writers) {
        t.await.expect("a bench task panicked");
    }
}

fn bench_design<F, Fut>(bencher: Bencher, members: usize, run: F)
where
    F: Fn(usize, usize) -> Fut + Sync,
    Fut: std::future::Future<Output = usize>,
{
    let senders = SENDERS.min(members);
    let deliveries = Tally::new(members, senders).deliveries();
    bencher.counter(ItemsCount::new(deliveries)).bench(|| {
        let slow = runtime().block_on(run(members, senders));
        // A design that dropped deliveries would look fast; none may.
        assert_eq!(slow, 0, "a member fell behind its {QUEUE}-frame queue");
    });
}

#[divan::bench(args = ROOMS, sample_count = 20, sample_size = 1)]
fn mutex(bencher: Bencher, members: usize) {
    bench_design(bencher, members, run_mutex);
}

#[divan::bench(args = ROOMS, sample_count = 20, sample_size = 1)]
fn actor(bencher: Bencher, members: usize) {
    bench_design(bencher, members, run_actor);
}

#[divan::bench(args = ROOMS, sample_count = 20, sample_size = 1)]
fn sharded(bencher: Bencher, members: usize) {
    bench_design(bencher, members, run_sharded);
}

#[divan::bench(args = ROOMS, sample_count = 20, sample_size = 1)]
fn broadcast(bencher: Bencher, members: usize) {
    bench_design(bencher, members, run_broadcast);
}
