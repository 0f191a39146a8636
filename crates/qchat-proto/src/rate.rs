//! The message rate both ends apply: a token bucket. The server enforces it
//! per member (its `--rate` and `--burst`, announced in the version-3
//! welcome); a client paces itself by the same rule, so an honest client
//! is never cut off for flooding. One type, so the two cannot disagree
//! about what "5 per second, bursts of 10" means.
//!
//! Time is tokio's, so tests on a paused clock drive it.

use tokio::time::{Duration, Instant};

/// Allows `burst` messages at once and `rate` per second on average.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0 means unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, filling from now.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    /// A full bucket, filling from `now`.
    pub fn new_at(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (as of the last take or refill).
    pub fn next_token(&self) -> Instant {
        if self.rate == 0.0 || self.tokens >= 1.0 {
            return self.last;
        }
        self.last + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

impl TokenBucket {
    /// When a token will be there, looking from `now`: `now` if one is.
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        if self.rate == 0.0 {
            return now;
        }
        self.refill(now);
        self.next_token().max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 3);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert_eq!(b.next_token(), t0 + Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(600)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 1);
        assert!((0..10_000).all(|_| b.try_take(Instant::now())));
    }
}
