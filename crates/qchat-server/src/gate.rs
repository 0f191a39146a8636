//! The accept gate: decides about a connection attempt before any
//! handshake work is spent on it.
//!
//! Besides the room, this is the server's only state shared between
//! connections: how many each address holds, and the tally of refusals.
//! Its count of live permits is also how shutdown knows every session has
//! ended.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::tally::{Kind, Tally};

/// Counts live connections, overall and per source address, and how many
/// of an address's connections have not joined the room yet.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    max_unjoined_per_ip: usize,
    retry_threshold: u32,
    counts: Mutex<Counts>,
    attempts: Mutex<Window>,
    tally: Tally,
    /// Woken when the last permit goes. Every session task holds a permit
    /// for its whole life, so this count is also what shutdown waits on:
    /// no set of tasks with an entry per member is needed beside it.
    emptied: Notify,
}

/// Connection attempts in the current one-second window.
#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, PerAddress>,
}

#[derive(Debug, Default)]
struct PerAddress {
    /// Every live connection from the address.
    live: usize,
    /// Those still in their handshake or waiting for their hello.
    unjoined: usize,
}

/// Why an attempt was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server-wide limit is reached.
    Full,
    /// This address has as many connections as it may.
    PerAddress,
    /// This address has as many connections that have not joined yet as it
    /// may.
    Unjoined,
}

/// Held by a session for as long as its connection lives; dropping it frees
/// the slot. It counts against the address's budget of unjoined
/// connections until [`Permit::joined`].
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
    joined: AtomicBool,
}

impl Gate {
    /// A gate with these limits.
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        max_unjoined_per_ip: usize,
        retry_threshold: u32,
    ) -> Arc<Self> {
        Arc::new(Gate {
            max_total,
            max_per_ip,
            max_unjoined_per_ip,
            retry_threshold,
            counts: Mutex::new(Counts::default()),
            attempts: Mutex::new(Window {
                start: Instant::now(),
                count: 0,
            }),
            tally: Tally::default(),
            emptied: Notify::new(),
        })
    }

    /// Counts an attempt and says whether attempts are arriving faster than
    /// the retry threshold, in which case unvalidated addresses should be
    /// sent a Retry. A threshold of 0 always asks for one.
    pub fn under_load(&self) -> bool {
        let mut w = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            w.start = now;
            w.count = 0;
        }
        w.count = w.count.saturating_add(1);
        w.count > self.retry_threshold
    }

    /// Takes a slot for a connection from `ip`, if one is free.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(Refusal::Full);
        }
        let n = c.per_ip.entry(ip).or_default();
        let refusal = if n.live >= self.max_per_ip {
            Some(Refusal::PerAddress)
        } else if n.unjoined >= self.max_unjoined_per_ip {
            Some(Refusal::Unjoined)
        } else {
            None
        };
        if let Some(why) = refusal {
            if n.live == 0 {
                // Only reachable with a limit of 0; keep the map free of
                // addresses that hold nothing.
                c.per_ip.remove(&ip);
            }
            return Err(why);
        }
        n.live += 1;
        n.unjoined += 1;
        c.total += 1;
        Ok(Permit {
            gate: Arc::clone(self),
            ip,
            joined: AtomicBool::new(false),
        })
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Completes once no connection holds a permit: every session that
    /// was admitted has ended.
    pub async fn emptied(&self) {
        loop {
            // Registered before the count is read, so a last permit that
            // goes in between is not missed.
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts a refused attempt or a hello timeout from `ip`; `true` means
    /// it is the first such event from the address in the current window and
    /// deserves a log line of its own (see `tally`).
    pub(crate) fn note(&self, kind: Kind, ip: IpAddr) -> bool {
        self.tally.note(kind, ip)
    }

    /// Ends the tally's window; the summary lines to log.
    pub(crate) fn summarise(&self) -> Vec<String> {
        self.tally.flush()
    }
}

impl Refusal {
    pub(crate) fn kind(self) -> Kind {
        match self {
            Refusal::Full => Kind::RefusedFull,
            Refusal::PerAddress => Kind::RefusedPerAddress,
            Refusal::Unjoined => Kind::RefusedUnjoined,
        }
    }
}

impl Permit {
    /// The connection's member has joined the room: it no longer counts
    /// against the address's budget of unjoined connections.
    pub fn joined(&self) {
        if self.joined.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut c = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            n.unjoined = n.unjoined.saturating_sub(1);
        }
    }

    /// The address the connection came from.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The gate that issued the permit.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let joined = *self.joined.get_mut();
        let mut c = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            n.live = n.live.saturating_sub(1);
            if !joined {
                n.unjoined = n.unjoined.saturating_sub(1);
            }
            if n.live == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        if c.total == 0 {
            self.gate.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_address_and_frees_on_drop() {
        let g = Gate::new(3, 2, 2, 100);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let p1 = g.admit(a).expect("free");
        let _p2 = g.admit(a).expect("free");
        assert_eq!(g.admit(a).err(), Some(Refusal::PerAddress));
        let _p3 = g.admit(b).expect("free");
        assert_eq!(g.admit(b).err(), Some(Refusal::Full));
        drop(p1);
        assert!(g.admit(a).is_ok());
    }

    #[test]
    fn unjoined_connections_have_a_tighter_budget_than_members() {
        let g = Gate::new(100, 4, 2, 100);
        let a: IpAddr = [127, 0, 0, 1].into();
        let first = g.admit(a).expect("free");
        let second = g.admit(a).expect("free");
        // Two waiting for their hello: a third must wait for one to join.
        assert_eq!(g.admit(a).err(), Some(Refusal::Unjoined));
        first.joined();
        first.joined(); // twice changes nothing
        let third = g.admit(a).expect("a joined member frees an unjoined slot");
        assert_eq!(g.admit(a).err(), Some(Refusal::Unjoined));
        // A connection that never joined frees both its slots.
        drop(second);
        let fourth = g.admit(a).expect("free");
        third.joined();
        fourth.joined();
        let fifth = g.admit(a).expect("free");
        // Members count against the per-address limit too.
        assert_eq!(g.admit(a).err(), Some(Refusal::PerAddress));
        drop((first, third, fourth, fifth));
        assert_eq!(g.live(), 0);
        assert!(g.counts.lock().expect("lock").per_ip.is_empty());
    }

    /// Shutdown waits on this for the sessions to end: it must complete
    /// when the last permit goes, and not before.
    #[tokio::test]
    async fn emptied_completes_when_the_last_permit_goes() {
        let g = Gate::new(10, 10, 10, 100);
        let a: IpAddr = [127, 0, 0, 1].into();
        let (first, second) = (g.admit(a).expect("free"), g.admit(a).expect("free"));
        let waiter = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.emptied().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one permit is still held");
        drop(second);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("emptied once no permit is held")
            .expect("the waiter does not panic");
        // With nothing held it completes at once.
        tokio::time::timeout(Duration::from_secs(10), g.emptied())
            .await
            .expect("nothing held");
    }

    #[test]
    fn attempts_above_the_threshold_count_as_load() {
        let g = Gate::new(10, 10, 10, 3);
        assert!(!(0..3).any(|_| g.under_load()));
        assert!(g.under_load());
        assert!(Gate::new(1, 1, 1, 0).under_load());
    }
}
