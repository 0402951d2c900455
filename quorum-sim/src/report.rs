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
    /// Sync tracking and crashes ([`SimConfig::sync`], [`SimConfig::crash`]).
    pub sync: SyncStats,
}

/// What sync tracking and crashes did in a run, and how many times each
/// R-SYNC invariant was checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Marks applied to the map.
    pub marks: u64,
    /// Map file writes completed (each makes the `Unsettle`s before it durable).
    pub map_writes: u64,
    /// Resync requests submitted (background and settle passes).
    pub resyncs: u64,
    /// Resyncs that completed `Done`.
    pub resynced: u64,
    /// Resyncs a client write overlapped (`EAGAIN`), retried later.
    pub retried: u64,
    /// Resyncs that found no quorum (`EIO`, `QUORUM_FAILURE`; chunk left marked).
    pub no_quorum: u64,
    /// Differences settled, as the core counted them (R-SYNC-3).
    pub settled: u64,
    /// Times a child went away (all its operations failing) and came back.
    pub away: u64,
    /// Chunks a child away missed a write on (R-SYNC-8: what it must get back).
    pub away_chunks: u64,
    /// Chunks resynced to a child back from away (R-SYNC-8).
    pub away_resynced: u64,
    /// Crashes, each followed by a restart that was checked.
    pub restarts: u64,
    /// Restarts whose map file kept the older copy (a map write lost or torn).
    pub map_older: u64,
    /// Restarts whose map file was unreadable (reset: everything unsettled).
    pub map_reset: u64,
    /// Settle passes (resync of the chunks a crash left unsettled) finished.
    pub settle_passes: u64,
    /// R-SYNC-1 checks: reads not issued to stale children, writes counted
    /// without them, no report for them.
    pub r_sync_1: u64,
    /// R-SYNC-2 checks: child writes only after a durable `Unsettle`;
    /// settled chunks identical on every healthy child not stale there.
    pub r_sync_2: u64,
    /// R-SYNC-3 checks: settling reads report no mismatch; reads repeatable.
    pub r_sync_3: u64,
    /// R-SYNC-4 checks: a resynced child is fresh and holds the data once
    /// flushed.
    pub r_sync_4: u64,
    /// R-SYNC-6 checks (after a restart): acknowledged and flushed writes
    /// read back, the rest old or new; the settle pass only on what it must.
    pub r_sync_6: u64,
    /// R-SYNC-8 checks: a child back from away resynced on the chunks it
    /// missed, and only those.
    pub r_sync_8: u64,
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
        if self.config.sync != 0 {
            let y = &s.sync;
            writeln!(
                f,
                "{:<28}{:>12}",
                "resyncs (done/again/no q.)",
                format!("{}/{}/{}", y.resynced, y.retried, y.no_quorum)
            )?;
            writeln!(f, "{:<28}{:>12}", "map writes", y.map_writes)?;
            writeln!(f, "{:<28}{:>12}", "settled differences", y.settled)?;
            writeln!(
                f,
                "{:<28}{:>12}",
                "away (missed/resynced)",
                format!("{} ({}/{})", y.away, y.away_chunks, y.away_resynced)
            )?;
            writeln!(
                f,
                "{:<28}{:>12}",
                "R-SYNC-1/2/3/4/8 checks",
                format!(
                    "{}/{}/{}/{}/{}",
                    y.r_sync_1, y.r_sync_2, y.r_sync_3, y.r_sync_4, y.r_sync_8
                )
            )?;
        }
        if self.config.crash {
            writeln!(
                f,
                "{:<28}{:>12}",
                "restarts checked",
                format!(
                    "{} ({} older map, {} reset)",
                    s.sync.restarts, s.sync.map_older, s.sync.map_reset
                )
            )?;
            writeln!(f, "{:<28}{:>12}", "settle passes", s.sync.settle_passes)?;
            writeln!(f, "{:<28}{:>12}", "R-SYNC-6 checks", s.sync.r_sync_6)?;
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
