//! What a run did: counters and the summary table.

use core::fmt;

use crate::config::SimConfig;
use crate::faults::FaultRates;

/// Faults injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Transient read errors.
    pub read_error: u64,
    /// Transient write errors.
    pub write_error: u64,
    /// Transient flush errors.
    pub flush_error: u64,
    /// Latent sector errors created.
    pub latent: u64,
    /// Silent bit flips.
    pub corrupt: u64,
    /// Writes acknowledged and dropped.
    pub lost_write: u64,
    /// Writes stored at the wrong offset.
    pub misdirected: u64,
}

impl Injected {
    /// All faults injected.
    pub fn total(&self) -> u64 {
        self.read_error
            + self.write_error
            + self.flush_error
            + self.latent
            + self.corrupt
            + self.lost_write
            + self.misdirected
    }
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests completed (workload and liveness).
    pub requests: u64,
    /// Child operations carried out (reads, writes, flushes, rewrites).
    pub child_ios: u64,
    /// Faults injected.
    pub injected: Injected,
    /// `QUORUM_REPORT_BAD` events (faults detected).
    pub reports: u64,
    /// `QUORUM_FAILURE` events.
    pub failures: u64,
    /// Successful rewrites (repairs).
    pub repaired: u64,
    /// Requests whose invariants were checked.
    pub invariants: u64,
    /// Children added between requests.
    pub children_added: u64,
    /// Children removed between requests.
    pub children_removed: u64,
    /// Early quorum: reads answered while some of their children were still
    /// outstanding (checked at the answer, settled at the completion).
    pub early_answers: u64,
    /// Early quorum: answered reads that an overlapping write followed
    /// before their stragglers were settled.
    pub early_overwritten: u64,
    /// Requests cancelled (R-CANCEL), each checked.
    pub cancelled: u64,
    /// Child operations of cancelled requests carried out after the cancel
    /// (R-CANCEL-2).
    pub cancelled_ops: u64,
}

/// The result of a run that broke no invariant.
#[derive(Clone, Debug)]
pub struct Report {
    /// The run's configuration.
    pub config: SimConfig,
    /// The fault rates in force (drawn, for swarm runs).
    pub rates: FaultRates,
    /// How many children were faulty at the end of the run.
    pub faulty: usize,
    /// Counters.
    pub stats: Stats,
    /// Hash of every decision and output: equal for equal seeds.
    pub hash: u64,
    /// Steps (decisions and outputs).
    pub steps: usize,
    /// The trace file's text, when recording.
    pub trace: Option<String>,
}

impl fmt::Display for Report {
    /// The summary table `quorum sim` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let i = &s.injected;
        writeln!(
            f,
            "seed {}: {} children, threshold {}, {} requests ({} children faulty at the end)",
            self.config.seed, self.config.children, self.config.threshold, s.requests, self.faulty
        )?;
        writeln!(f, "{:<28}{:>12}", "fault", "injected")?;
        for (name, n) in [
            ("read error", i.read_error),
            ("write error", i.write_error),
            ("flush error", i.flush_error),
            ("latent sector error", i.latent),
            ("silent corruption", i.corrupt),
            ("lost write", i.lost_write),
            ("misdirected write", i.misdirected),
        ] {
            writeln!(f, "{name:<28}{n:>12}")?;
        }
        writeln!(f, "{:<28}{:>12}", "total injected", i.total())?;
        writeln!(f, "{:<28}{:>12}", "detected (REPORT_BAD)", s.reports)?;
        writeln!(f, "{:<28}{:>12}", "quorum failures", s.failures)?;
        writeln!(f, "{:<28}{:>12}", "repaired (rewrites)", s.repaired)?;
        writeln!(
            f,
            "{:<28}{:>12}",
            "children added/removed",
            format!("{}/{}", s.children_added, s.children_removed)
        )?;
        if self.config.early {
            writeln!(f, "{:<28}{:>12}", "early answers", s.early_answers)?;
        }
        if self.config.cancel {
            writeln!(
                f,
                "{:<28}{:>12}",
                "cancelled (ops after)",
                format!("{}/{}", s.cancelled, s.cancelled_ops)
            )?;
        }
        writeln!(f, "{:<28}{:>12}", "child I/Os", s.child_ios)?;
        writeln!(f, "{:<28}{:>12}", "invariants checked", s.invariants)?;
        write!(
            f,
            "{:<28}{:>12}",
            "trace hash",
            format!("{:016x}", self.hash)
        )
    }
}
