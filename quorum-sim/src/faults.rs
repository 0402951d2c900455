//! The fault model (DESIGN.md, "The simulator") and swarm testing.
//!
//! Rates are in parts per million per child operation, so that a seed means
//! the same thing on every machine (no floating point anywhere).

use quorum_proto::Errno;

/// One million: a rate of `PPM` always fires.
pub const PPM: u32 = 1_000_000;

/// How often each fault kind fires, per operation on a faulty child.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRates {
    /// A read fails once with a chosen errno.
    pub read_error: u32,
    /// A write (or write-zeroes, or rewrite) fails once.
    pub write_error: u32,
    /// A flush fails once.
    pub flush_error: u32,
    /// A sector in a read's range goes bad and fails every read until rewritten.
    pub latent: u32,
    /// A bit flips in a sector in a read's range, silently, until rewritten.
    pub corrupt: u32,
    /// A write is acknowledged but not stored.
    pub lost_write: u32,
    /// A write is acknowledged but stored at another offset.
    pub misdirected: u32,
    /// Chance a child is slow (10× latency) for the whole run.
    pub slow: u32,
    /// Completions are reordered (random latency) when non-zero.
    pub reorder: u32,
    /// Chance, between requests, that a child is added or removed.
    pub membership: u32,
    /// Chance, at each step of the schedule, that a request in flight is
    /// cancelled (R-CANCEL).
    pub cancel: u32,
}

impl FaultRates {
    /// Every kind on, at moderate rates: the default scenario.
    pub fn all() -> Self {
        FaultRates {
            read_error: 20_000,
            write_error: 20_000,
            flush_error: 20_000,
            latent: 5_000,
            corrupt: 20_000,
            lost_write: 10_000,
            misdirected: 5_000,
            slow: 300_000,
            reorder: 1,
            membership: 1_000,
            cancel: 5_000,
        }
    }

    /// No faults at all (the liveness phase).
    pub fn none() -> Self {
        FaultRates::default()
    }

    /// Swarm testing: each kind is on or off by a coin toss, and when on gets
    /// its own rate, so that seeds explore very different mixes.
    /// `below(n)` draws a number in `0..n`. Cancellation is drawn (last)
    /// only with `cancel`, so runs without it draw what they always drew.
    pub fn swarm(cancel: bool, mut below: impl FnMut(u64) -> u64) -> Self {
        let mut kind = |max: u32| -> u32 {
            if below(2) == 0 {
                0
            } else {
                1 + below(max as u64) as u32
            }
        };
        let mut rates = FaultRates {
            read_error: kind(100_000),
            write_error: kind(100_000),
            flush_error: kind(100_000),
            latent: kind(20_000),
            corrupt: kind(100_000),
            lost_write: kind(50_000),
            misdirected: kind(20_000),
            slow: kind(PPM),
            reorder: kind(1),
            membership: kind(20_000),
            cancel: 0,
        };
        if cancel {
            rates.cancel = kind(50_000);
        }
        rates
    }
}

/// The errnos transient faults pick from.
pub const ERRNOS: [Errno; 5] = [
    Errno::EIO,
    Errno::ENOSPC,
    Errno::EPERM,
    Errno::ETIMEDOUT,
    Errno::EREMOTEIO,
];

/// The most children that may be faulty for a read to be guaranteed correct:
/// at most `N − threshold` (so enough answer) and fewer than half (so no
/// faulty group can tie the healthy one, R-VOTE-2 would pick by index).
pub fn safe_faulty(children: usize, threshold: usize) -> usize {
    children
        .saturating_sub(threshold)
        .min(children.saturating_sub(1) / 2)
}

/// [`safe_faulty`] for early quorum: also at most `threshold − 1`.
///
/// An early answer is given by the first `threshold` children that agree,
/// before the others have been heard. With `threshold` faulty children
/// holding the same wrong bytes (the same lost write, the same misdirected
/// write landing on each) that group can answer before any healthy child
/// completes, and the full vote that would have outvoted it never runs. With
/// at most `threshold − 1` faulty children every agreeing group of
/// `threshold` contains a healthy child, so the answer is right; the other
/// two bounds are [`safe_faulty`]'s (enough children answer, and a read
/// whose threshold is only reached by its last child is decided by the full
/// vote, which must not tie).
pub fn safe_faulty_early(children: usize, threshold: usize) -> usize {
    safe_faulty(children, threshold).min(threshold.saturating_sub(1))
}
