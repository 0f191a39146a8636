//! Sending no faster than the server allows: the welcome's rate and burst
//! drive a token bucket, so an honest client is never disconnected for
//! flooding; what the bucket holds back waits in the outbox.

use qchat_proto::rate::TokenBucket;
use tokio::time::{Duration, Instant};

/// The server's token bucket (the same type the server enforces with),
/// kept one message short of its burst.
#[derive(Debug, Clone)]
pub struct Pacer {
    bucket: TokenBucket,
}

impl Pacer {
    /// No limit: an old server tells no rate.
    pub fn unlimited() -> Self {
        Pacer::new(0, 0, Instant::now())
    }

    /// A full bucket for the welcome's `rate` and `burst`. One token is
    /// kept in reserve: the server's bucket started filling at its own
    /// clock, and being one message short of its burst costs nothing.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Pacer {
            bucket: TokenBucket::new_at(rate, burst.saturating_sub(1).max(1), now),
        }
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.bucket.try_take(now)
    }

    /// When the next token will be there (`now` if one is).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        let at = self.bucket.ready_at(now);
        if at <= now {
            return now;
        }
        // A little later than exact, so float rounding never makes the
        // server see a message a hair before its token.
        at + Duration::from_millis(5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_goes_at_once_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut p = Pacer::new(5, 10, t0);
        let sent = (0..20).filter(|_| p.try_take(t0)).count();
        assert_eq!(sent, 9, "one token short of the server's burst");
        let next = p.ready_at(t0);
        assert!(next > t0 && next <= t0 + Duration::from_millis(300));
        assert!(p.try_take(t0 + Duration::from_millis(200)));
        assert!(!p.try_take(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 10, t0);
        assert!((0..1000).all(|_| p.try_take(t0)));
        assert_eq!(p.ready_at(t0), t0);
    }
}
