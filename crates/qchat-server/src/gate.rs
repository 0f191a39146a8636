//! The accept gate: decides about a connection attempt before any
//! handshake work is spent on it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts live connections, overall and per source address.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    retry_threshold: u32,
    counts: Mutex<Counts>,
    attempts: Mutex<Window>,
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
    per_ip: HashMap<IpAddr, usize>,
}

/// Why an attempt was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server-wide limit is reached.
    Full,
    /// This address has as many connections as it may.
    PerAddress,
}

/// Held by a session for as long as its connection lives; dropping it frees
/// the slot.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    /// A gate with these limits.
    pub fn new(max_total: usize, max_per_ip: usize, retry_threshold: u32) -> Arc<Self> {
        Arc::new(Gate {
            max_total,
            max_per_ip,
            retry_threshold,
            counts: Mutex::new(Counts::default()),
            attempts: Mutex::new(Window {
                start: Instant::now(),
                count: 0,
            }),
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
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerAddress);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            gate: Arc::clone(self),
            ip,
        })
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_address_and_frees_on_drop() {
        let g = Gate::new(3, 2, 100);
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
    fn attempts_above_the_threshold_count_as_load() {
        let g = Gate::new(10, 10, 3);
        assert!(!(0..3).any(|_| g.under_load()));
        assert!(g.under_load());
        assert!(Gate::new(1, 1, 0).under_load());
    }
}
