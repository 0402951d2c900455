//! Running averages of how long child operations take: the pool's (fast
//! children are served back to back by the caller, slow ones in parallel)
//! and each child's (an early-quorum caller reads the child that has lately
//! been fastest itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An exponential average over about the last eight samples, updated
/// without a lock; a race between two updates only loses one sample.
#[derive(Debug, Default)]
pub struct Ewma(AtomicU64);

impl Ewma {
    /// Folds in one sample.
    pub fn record(&self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.0.load(Ordering::Relaxed);
        let next = avg - avg / 8 + ns / 8;
        if next != avg {
            self.0.store(next, Ordering::Relaxed);
        }
    }

    /// The average, in nanoseconds.
    pub fn nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Each child's recent operation time, by child id (kept under the
/// device's lock).
#[derive(Debug, Default)]
pub struct Latencies(HashMap<u32, u64>);

impl Latencies {
    /// Folds in one operation of `child`.
    pub fn record(&mut self, child: u32, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.0.entry(child).or_insert(ns);
        *avg = *avg - *avg / 8 + ns / 8;
    }

    /// `child`'s average in nanoseconds; 0 when nothing is known yet (an
    /// unknown child is tried first).
    pub fn nanos(&self, child: u32) -> u64 {
        self.0.get(&child).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_follow_the_samples() {
        let e = Ewma::default();
        for _ in 0..64 {
            e.record(Duration::from_micros(100));
        }
        assert!((90_000..=100_000).contains(&e.nanos()), "{}", e.nanos());
        let mut l = Latencies::default();
        assert_eq!(l.nanos(3), 0);
        l.record(3, Duration::from_micros(10));
        assert_eq!(l.nanos(3), 10_000);
        for _ in 0..64 {
            l.record(3, Duration::from_micros(1));
        }
        assert!(l.nanos(3) < 2_000);
    }
}
