//! The send window: each sender keeps at most `limit` of its messages not
//! yet delivered to every reading member, so the load runs as fast as the
//! slowest receiver allows — a steady state — instead of piling messages
//! into the server's queues until it disconnects someone.
//!
//! Deliveries from one sender reach each receiver in order, so "message
//! `seq` reached everyone" also means every earlier one did, and the
//! sender's completed count is the minimum over receivers of what each has
//! seen. Computing that minimum per delivery would cost O(members) at
//! 1,000 members; instead each sender has a ring of `limit` arrival
//! counters. Message `seq` lands in slot `(seq - 1) % limit`, and the
//! counter is never reset: in round `r` of the ring it climbs from
//! `r × receivers` to `(r + 1) × receivers`, and the receiver whose
//! increment reaches the top completes `seq`. That needs no reset because
//! the sender cannot send `seq + limit` (the next message in that slot)
//! before `seq` has completed. A delivery therefore costs one atomic add on
//! a counter only that sender's messages share, and a wake-up is sent only
//! when the sender is waiting for exactly that much room.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The windows of every sender of one run.
pub struct Windows {
    limit: u64,
    /// Members that read each sender's messages (the sender and stalled
    /// members excluded).
    receivers: u64,
    senders: Box<[SenderWindow]>,
}

struct SenderWindow {
    /// Arrivals per slot, cumulative over the ring's rounds.
    slots: Box<[AtomicU64]>,
    /// Messages `1..=done` have reached every receiver.
    done: AtomicU64,
    /// The `done` the waiting sender needs; `u64::MAX` when it is not
    /// waiting, so completions then skip the wake-up.
    wake_at: AtomicU64,
    wake: Notify,
}

impl Windows {
    /// Windows of `limit` messages for `senders` senders whose messages
    /// each reach `receivers` members. With no receivers nothing can be
    /// outstanding, so the window never closes.
    pub fn new(senders: usize, receivers: u64, limit: u64) -> Windows {
        let limit = limit.max(1);
        Windows {
            limit,
            receivers,
            senders: (0..senders)
                .map(|_| SenderWindow {
                    slots: (0..limit).map(|_| AtomicU64::new(0)).collect(),
                    done: AtomicU64::new(0),
                    wake_at: AtomicU64::new(u64::MAX),
                    wake: Notify::new(),
                })
                .collect(),
        }
    }

    /// The window size.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// One receiver got `sender`'s message `seq` (1-based, checked by the
    /// caller, never twice for one receiver).
    pub fn delivered(&self, sender: usize, seq: u64) {
        let Some(w) = self.senders.get(sender) else {
            return;
        };
        let Some(slot) = seq.checked_sub(1) else {
            return;
        };
        let round = slot / self.limit;
        let arrivals = w.slots[(slot % self.limit) as usize].fetch_add(1, Ordering::AcqRel) + 1;
        if arrivals == (round + 1) * self.receivers {
            // SeqCst pairs with `wait_for_room`: either it sees this
            // `done`, or this sees its `wake_at` and wakes it.
            w.done.fetch_max(seq, Ordering::SeqCst);
            if seq >= w.wake_at.load(Ordering::SeqCst) {
                w.wake.notify_one();
            }
        }
    }

    /// Messages of `sender` that have reached every receiver.
    pub fn done(&self, sender: usize) -> u64 {
        self.senders
            .get(sender)
            .map_or(0, |w| w.done.load(Ordering::SeqCst))
    }

    /// How many more messages `sender` may send now, having sent `sent`.
    pub fn room(&self, sender: usize, sent: u64) -> u64 {
        if self.receivers == 0 {
            return u64::MAX;
        }
        (self.done(sender) + self.limit).saturating_sub(sent)
    }

    /// Waits until `sender`, having sent `sent`, may send at least `want`
    /// more (at most the window), and returns how many it may send.
    /// Unbounded in time by itself: the run's deadline or an eviction
    /// stops the sender's task.
    pub async fn wait_for_room(&self, sender: usize, sent: u64, want: u64) -> u64 {
        let want = want.clamp(1, self.limit);
        let Some(w) = self.senders.get(sender) else {
            return want;
        };
        loop {
            let room = self.room(sender, sent);
            if room >= want {
                w.wake_at.store(u64::MAX, Ordering::SeqCst);
                return room;
            }
            // Room for `want` means done + limit >= sent + want.
            w.wake_at
                .store((sent + want).saturating_sub(self.limit), Ordering::SeqCst);
            if self.room(sender, sent) >= want {
                continue;
            }
            // A completion between the check and here leaves a permit,
            // so this cannot miss it.
            w.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// A tiny deterministic generator: the interleavings differ per seed
    /// and a failure names the seed.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn done_is_the_minimum_over_receivers_in_any_interleaving() {
        for seed in 0..200 {
            let mut rng = Lcg(seed);
            let (senders, receivers, limit, messages) = (3usize, 4u64, 5u64, 40u64);
            let w = Windows::new(senders, receivers, limit);
            let mut sent = vec![0u64; senders];
            // seen[r][s]: how many of s's messages receiver r has read.
            let mut seen = vec![vec![0u64; senders]; receivers as usize];
            let mut steps = 0;
            while seen.iter().flatten().any(|&n| n < messages) {
                steps += 1;
                assert!(steps < 100_000, "seed {seed}: no progress");
                let s = rng.next(senders as u64) as usize;
                if rng.next(2) == 0 {
                    // The sender sends what its window allows.
                    let n = w.room(s, sent[s]).min(messages - sent[s]);
                    sent[s] += n;
                } else {
                    let r = rng.next(receivers) as usize;
                    if seen[r][s] < sent[s] {
                        seen[r][s] += 1;
                        w.delivered(s, seen[r][s]);
                    }
                }
                let min = (0..receivers as usize).map(|r| seen[r][s]).min();
                assert_eq!(Some(w.done(s)), min, "seed {seed}, sender {s}");
                assert!(sent[s] - w.done(s) <= limit, "seed {seed}: window exceeded");
            }
            for s in 0..senders {
                assert_eq!(w.done(s), messages, "seed {seed}");
            }
        }
    }

    #[test]
    fn without_receivers_the_window_never_closes() {
        let w = Windows::new(1, 0, 4);
        assert_eq!(w.room(0, 1_000), u64::MAX);
    }

    #[test]
    fn out_of_range_deliveries_are_ignored() {
        let w = Windows::new(1, 1, 4);
        w.delivered(7, 1);
        w.delivered(0, 0);
        assert_eq!(w.done(0), 0);
        assert_eq!(w.room(0, 4), 0);
    }

    #[tokio::test]
    async fn a_waiting_sender_wakes_when_the_last_receiver_catches_up() {
        let w = Arc::new(Windows::new(1, 2, 4));
        // Four sent: the window is full; the sender wants room for two.
        let waiter = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.wait_for_room(0, 4, 2).await })
        };
        for seq in 1..=2 {
            w.delivered(0, seq);
        }
        // Receiver 1 has both, receiver 2 none: still no room.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        w.delivered(0, 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "room for one is not room for two");
        w.delivered(0, 2);
        let room = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken within the bound")
            .expect("the waiting task");
        assert_eq!(room, 2);
    }
}
