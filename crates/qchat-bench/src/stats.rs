//! Latency statistics: a fixed-size, log-linear histogram that every
//! receiver records into at once, and the summary a run reports.
//!
//! Storing one sample per delivery would cost tens of megabytes in large
//! runs, and a histogram per member would cost more than that at 10,000
//! members. One shared histogram of atomic counters costs 30 KiB, records in
//! a few nanoseconds from any task, and keeps a relative error under 1.6 %
//! (64 linear sub-buckets per power of two), which is finer than the
//! run-to-run noise of any latency worth reporting.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// How complete a run's deliveries were: the part of the report the plain
/// bench and the `--restart`/`--replay` storms share, flattened into their
/// JSON so both print the same keys.
#[derive(Debug, Serialize)]
pub struct Deliveries {
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub timed_out: bool,
}

impl Deliveries {
    /// `missing` is derived here so the two reports cannot count it apart.
    pub fn new(
        expected: u64,
        received: u64,
        duplicates: u64,
        out_of_order: u64,
        malformed: u64,
        timed_out: bool,
    ) -> Deliveries {
        Deliveries {
            deliveries_expected: expected,
            deliveries_received: received,
            missing: expected.saturating_sub(received),
            duplicates,
            out_of_order,
            malformed,
            timed_out,
        }
    }

    /// Everything arrived exactly once, in order, and well-formed (whether
    /// a timeout also fails the run is the caller's to say).
    pub fn intact(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.out_of_order == 0 && self.malformed == 0
    }
}

/// Linear sub-buckets per power of two: 2^6 = 64.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below `SUB` get one row of single-value buckets; above, one row
/// of `SUB` buckets per power of two from 2^SUB_BITS up to 2^63.
const BUCKETS: usize = SUB * (64 - SUB_BITS as usize + 1);

/// A concurrent histogram of durations in nanoseconds.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value. Relaxed ordering suffices: the counts are read
    /// only after every recording task has finished or been stopped.
    pub fn record(&self, ns: u64) {
        self.buckets[index(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value below which a fraction `q` (0 to 1) of the samples lie,
    /// to within one bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the sample we want, 1-based: the smallest sample at
        // or above the quantile, as HdrHistogram reports it.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                // The bucket's midpoint, but never above the true maximum.
                return Some(midpoint(i).min(self.max.load(Ordering::Relaxed)));
            }
        }
        Some(self.max.load(Ordering::Relaxed))
    }

    /// The summary a report shows, in milliseconds.
    pub fn summary(&self) -> Option<Latency> {
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(Latency {
            p50: ms(self.quantile(0.50)?),
            p90: ms(self.quantile(0.90)?),
            p99: ms(self.quantile(0.99)?),
            max: ms(self.max.load(Ordering::Relaxed)),
        })
    }
}

/// Delivery latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest delivery.
    pub max: f64,
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
    (exp - SUB_BITS + 1) as usize * SUB + sub
}

/// The value in the middle of bucket `i`.
fn midpoint(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let row = (i / SUB) as u32; // >= 1
    let sub = (i % SUB) as u64;
    let shift = row - 1;
    let low = (SUB as u64 + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

/// The median of some measurements (the lower middle for an even count);
/// `None` when there are none.
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[(xs.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..200_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last, "index must not decrease at {v}");
            assert!(i < BUCKETS);
            last = i;
            let m = midpoint(i);
            let err = (m as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 1.0 / SUB as f64, "{v} -> bucket {i} midpoint {m}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).expect("samples") as f64;
        let p99 = h.quantile(0.99).expect("samples") as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert!(Histogram::new().summary().is_none());
    }

    #[test]
    fn median_ignores_order() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }
}
