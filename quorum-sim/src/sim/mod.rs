//! The simulator: the real core driven against faulty simulated disks by a
//! seeded scheduler, with an oracle and the invariant checker.
//!
//! One file per role: the run and its state here; [`workload`] draws the
//! requests; [`schedule`] decides when child operations complete; [`disk`]
//! carries them out with faults; [`checker`] holds every completion to the
//! invariants; [`liveness`] checks that healthy children converge;
//! [`scripted`] runs explicit scenarios through all of it; [`describe`]
//! writes requests and actions for traces.

mod checker;
mod crash;
mod describe;
mod disk;
mod liveness;
mod quorum;
mod schedule;
mod scripted;
mod sync;
mod workload;

pub(crate) use describe::describe;
use describe::describe_req;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

use quorum_proto::{
    Action, ChildId, Config, Errno, Event, OpType, Outcome, ReadPattern, Request, RequestId,
};

use crate::config::{Mode, SimConfig};
use crate::faults::{ERRNOS, FaultRates};
use crate::report::{Report, Stats};
use crate::trace::{Tape, Trace, TraceError, render};
use quorum_driver::InjectState;

use quorum::Core;

const SECTOR: u64 = 512;
/// The liveness phase reads the device in pieces of this size.
const SCAN: u64 = 64 * 1024;

/// One simulated disk: its bytes (faults already applied) and its latent
/// sector errors.
#[derive(Clone, Debug)]
struct Disk {
    data: Vec<u8>,
    latent: BTreeSet<u64>,
    /// blkdebug-style rules, for scripted scenarios ([`Sim::inject`]).
    inject: Option<InjectState>,
    /// Crash runs: what the disk has not flushed yet ([`crash`]).
    volatile: crash::Volatile,
}

impl Disk {
    fn new(data: Vec<u8>) -> Disk {
        Disk {
            data,
            latent: BTreeSet::new(),
            inject: None,
            volatile: crash::Volatile::default(),
        }
    }
}

/// A request the simulator has submitted and the core not yet completed.
#[derive(Debug)]
struct Live {
    req: Request,
    children: Vec<ChildId>,
    /// Read buffers, by slot.
    bufs: Vec<Vec<u8>>,
    /// Write payload (zeroes for write-zeroes).
    data: Option<Rc<Vec<u8>>>,
    /// Reads: the oracle's bytes when submitted.
    base: Vec<u8>,
    /// Reads: overlapping writes in flight at some point during the read.
    concurrent: Vec<(u64, Rc<Vec<u8>>)>,
    /// Each slot's child result.
    results: Vec<Option<Result<(), Errno>>>,
    events: Vec<Event>,
    rewrites: Vec<usize>,
    /// Early quorum: the answer, once given. The caller has its data from
    /// then on; the request stays live until its completion.
    answer: Option<Outcome>,
    /// An overlapping write was submitted after the answer: the stragglers'
    /// content is not reported (the caller saw the read and the write in
    /// that order).
    quiet: bool,
    /// Child operations scheduled and not yet carried out.
    outstanding: usize,
    /// Child operations ever scheduled.
    issued: usize,
    /// Cancelled (R-CANCEL): what had happened by the cancel.
    cancelled: Option<Cancelled>,
    /// Sync tracking: what the map said when it was submitted.
    sync: Option<Box<sync::LiveSync>>,
}

/// A request as it stood when it was cancelled.
#[derive(Debug)]
struct Cancelled {
    /// Each slot's child result by then.
    results: Vec<Option<Result<(), Errno>>>,
    /// Its completion (`ECANCELED`) has been seen; it stays only until the
    /// child operations it had issued are carried out (R-CANCEL-2).
    completed: bool,
}

/// A child operation in progress, completing at a virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: u64,
    seq: u64,
    action: ActionKey,
}

/// What completes at a virtual time: a child operation, or (sync tracking)
/// a mark made durable or a write of the map file.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// A child operation the core asked for.
    Child(Action),
    /// An `Unsettle` that was already durable: the request hears so.
    Marked(u64),
    /// The map file write in progress ends.
    MapWrite,
}

/// `Op` is not `Ord`; the heap orders by (time, seq) only, so this wrapper
/// compares equal for every operation.
#[derive(Clone, Copy, Debug)]
struct ActionKey(Op);

impl PartialEq for ActionKey {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ActionKey {}
impl PartialOrd for ActionKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ActionKey {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// An invariant violation, or a replay that went another way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// The core broke an invariant.
    Invariant {
        /// The run's seed.
        seed: u64,
        /// Step at which it was seen.
        step: usize,
        /// What was wrong.
        message: String,
    },
    /// The trace was refused or the replay diverged.
    Trace(TraceError),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::Invariant {
                seed,
                step,
                message,
            } => {
                write!(
                    f,
                    "invariant violated (seed {seed}, step {step}): {message}"
                )
            }
            SimError::Trace(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<TraceError> for SimError {
    fn from(e: TraceError) -> Self {
        SimError::Trace(e)
    }
}

/// A simulation in progress.
pub struct Sim {
    cfg: SimConfig,
    rates: FaultRates,
    /// The read pattern of the core in use (the liveness core votes).
    pattern: ReadPattern,
    tape: Tape,
    /// Bare or checked ([`quorum::Core`]).
    q: Core,
    /// Core child id → disk id (the liveness core renumbers children).
    alias: Option<Vec<u32>>,
    disks: BTreeMap<u32, Disk>,
    faulty: BTreeSet<u32>,
    slow: BTreeSet<u32>,
    oracle: Vec<u8>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Pending>>,
    live: BTreeMap<u64, Live>,
    next_id: u64,
    submitted: u64,
    /// Scripted runs: the next write's payload.
    script_data: Option<Vec<u8>>,
    /// Scripted runs: every event, in order.
    event_log: Option<Vec<(RequestId, Event)>>,
    /// Scripted runs: the last request's outcome and data.
    finished: Option<(Outcome, Option<Vec<u8>>)>,
    /// Spare buffers, so reads neither allocate nor zero memory.
    pool: Vec<Vec<u8>>,
    /// A membership change is due: submit nothing until in-flight requests drain.
    change_due: bool,
    /// Live requests that were cancelled: they no longer occupy a caller.
    zombies: usize,
    /// Rewrites scheduled and not yet carried out, by (request, slot): the
    /// id the next request would get when it was issued — every request
    /// from that id on came after it.
    rewrites_out: BTreeMap<(u64, usize), u64>,
    /// While rewrites are out: the writes carried out meanwhile, as (disk,
    /// offset, length, request id), so that a rewrite landing after a later
    /// overlapping write is seen (the ordering of SPEC's deliberate
    /// improvements, and R-CANCEL-2 for cancelled requests' repairs).
    landed: Vec<(u32, u64, u64, u64)>,
    /// Crash runs: each child flush in flight, with its disk's write
    /// sequence when it was issued (what it makes durable).
    flush_seq: BTreeMap<(u64, usize), u64>,
    /// Live requests already answered (early quorum): their callers have
    /// their data, so they no longer count against `depth`.
    answered_live: usize,
    stats: Stats,
    error: Option<String>,
    /// Progress callback: called every 1024 requests with the number done.
    progress: Option<Box<dyn FnMut(u64)>>,
    /// Tests of the checker only ([`Sim::forget_map_at_crash`]).
    forget_map: bool,
    /// Sync tracking ([`SimConfig::sync`]): the map, its file, the resync,
    /// children away, crashes.
    sync: Option<Box<sync::SyncState>>,
}

impl Sim {
    /// A live run of `cfg`; `record` keeps every step for a trace file.
    pub fn new(cfg: SimConfig, record: bool) -> Result<Sim, String> {
        cfg.validate()?;
        Ok(Sim::with_tape(cfg, Tape::live(cfg.seed, record)))
    }

    /// A run whose every decision comes from `bytes` (for fuzzing): the
    /// workload ends early once the bytes are used up.
    pub fn from_bytes(cfg: SimConfig, bytes: &[u8]) -> Result<Sim, String> {
        cfg.validate()?;
        Ok(Sim::with_tape(cfg, Tape::bytes(bytes)))
    }

    /// A replay of `trace` (its text), checked step by step.
    pub fn replay(text: &str) -> Result<Sim, SimError> {
        let trace = Trace::parse(text)?;
        let cfg: SimConfig = trace.config.parse().map_err(|why| TraceError::Malformed {
            line: 2,
            why: format!("bad config: {why}"),
        })?;
        Ok(Sim::with_tape(cfg, Tape::replay(trace)))
    }

    fn with_tape(cfg: SimConfig, tape: Tape) -> Sim {
        // validate() checked children, threshold and chunk; this cannot fail.
        let q = Core::new(core_config(&cfg, cfg.children, cfg.rewrite), true)
            .unwrap_or_else(|e| unreachable!("validated config refused: {e}"));
        let n = cfg.children as u32;
        let oracle = vec![0u8; cfg.size as usize];
        let disks = (0..n).map(|i| (i, Disk::new(oracle.clone()))).collect();
        let sync = (cfg.sync != 0).then(|| Box::new(sync::SyncState::new(&cfg)));
        Sim {
            cfg,
            rates: FaultRates::none(),
            pattern: cfg.pattern,
            tape,
            q,
            alias: None,
            disks,
            faulty: BTreeSet::new(),
            slow: BTreeSet::new(),
            oracle,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            live: BTreeMap::new(),
            next_id: 1,
            submitted: 0,
            change_due: false,
            zombies: 0,
            rewrites_out: BTreeMap::new(),
            landed: Vec::new(),
            flush_seq: BTreeMap::new(),
            answered_live: 0,
            pool: Vec::new(),
            script_data: None,
            event_log: None,
            finished: None,
            stats: Stats::default(),
            error: None,
            progress: None,
            forget_map: false,
            sync,
        }
    }

    /// Drives the bare core, without the driver kit's contract checker (the
    /// simulator's own invariants still hold every request to the oracle):
    /// about twice as fast, for benchmarks of the simulator itself.
    #[must_use]
    pub fn unchecked(mut self) -> Sim {
        let config = core_config(&self.cfg, self.cfg.children, self.cfg.rewrite);
        if let Ok(q) = Core::new(config, false) {
            self.q = q;
        }
        self
    }

    /// Calls `f(done)` every 1024 requests.
    pub fn on_progress(&mut self, f: impl FnMut(u64) + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Runs to the end: setup, workload, drain, liveness (safety mode).
    pub fn run(mut self) -> Result<Report, SimError> {
        // The contract checker says what is wrong by panicking: that is an
        // invariant violated like any other, with this run's seed and step.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.setup();
            self.workload();
            if self.sync.is_some() && !self.stopped() {
                self.sync_end();
            }
            if self.cfg.mode == Mode::Safety && !self.stopped() {
                self.liveness();
            } else {
                self.stats.sync.settled += self.q.settled_differences();
            }
        }));
        if let Err(panic) = ran {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            return Err(SimError::Invariant {
                seed: self.cfg.seed,
                step: self.tape.steps,
                message: why,
            });
        }
        self.tape.finish_replay();
        if let Some(d) = self.tape.diverged.take() {
            return Err(SimError::Trace(d));
        }
        if let Some(message) = self.error.take() {
            return Err(SimError::Invariant {
                seed: self.cfg.seed,
                step: self.tape.steps,
                message,
            });
        }
        let trace = self.tape.lines().map(|l| render(&self.cfg.to_string(), l));
        Ok(Report {
            config: self.cfg,
            rates: self.rates,
            faulty: self.faulty.len(),
            stats: self.stats,
            hash: self.tape.hash_value(),
            steps: self.tape.steps,
            trace,
        })
    }

    fn violated(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    fn stopped(&self) -> bool {
        self.error.is_some() || self.tape.diverged.is_some()
    }

    /// Draws the fault mix, the faulty children and the slow ones.
    fn setup(&mut self) {
        self.rates = match self.cfg.fixed_rates() {
            Some(r) => r,
            None => self.swarm(),
        };
        let n = self.cfg.children;
        let safe = self.cfg.safe_faulty(n);
        let k = match self.cfg.mode {
            Mode::Safety => safe,
            Mode::OverThreshold => {
                (safe + 1).min(n) + self.tape.below((n - (safe + 1).min(n)) as u64 + 1) as usize
            }
        };
        let mut pool: Vec<u32> = (0..n as u32).collect();
        for _ in 0..k.min(n) {
            let i = self.tape.below(pool.len() as u64) as usize;
            self.faulty.insert(pool.remove(i));
        }
        for c in 0..n as u32 {
            if self.tape.chance(self.rates.slow) {
                self.slow.insert(c);
            }
        }
        let (f, s) = (self.faulty.clone(), self.slow.clone());
        self.tape
            .out(&(&f, &s), || format!("setup faulty={f:?} slow={s:?}"));
        if self.sync.is_some() {
            self.sync_setup();
        }
    }

    fn swarm(&mut self) -> FaultRates {
        FaultRates::swarm(self.cfg.cancel, |n| self.tape.below(n))
    }

    fn disk_id(&self, child: ChildId) -> u32 {
        match &self.alias {
            Some(a) => a.get(child.0 as usize).copied().unwrap_or(u32::MAX),
            None => child.0,
        }
    }

    /// Whether random faults strike `disk` (a child that only goes away
    /// counts as faulty for the safety bound, but has no other fault).
    fn is_faulty(&self, disk: u32) -> bool {
        self.faulty.contains(&disk)
            && self
                .sync
                .as_ref()
                .is_none_or(|s| s.away_child != Some(disk))
    }

    /// A broken map, for tests that the crash checks can fail: every
    /// restart forgets the map file's marks (no chunk unsettled, no child
    /// stale), as a map that lost its write-intent bits would.
    #[doc(hidden)]
    pub fn forget_map_at_crash(&mut self) {
        self.forget_map = true;
    }

    /// Carries out an operation that came due.
    fn run_op(&mut self, op: Op) {
        match op {
            Op::Child(a) => self.perform(a),
            Op::Marked(id) => self.marked(id),
            Op::MapWrite => self.map_written(),
        }
    }
}

/// The core's configuration for `cfg` with `children` children.
fn core_config(cfg: &SimConfig, children: usize, rewrite: bool) -> Config {
    let c = Config::new(children, cfg.threshold)
        .with_read_pattern(cfg.pattern)
        .with_rewrite_corrupted(rewrite)
        .with_early_quorum(cfg.early);
    if cfg.sync != 0 {
        c.with_sync_tracking(cfg.sync)
    } else {
        c
    }
}

impl Tape {
    pub(crate) fn hash_value(&self) -> u64 {
        use core::hash::Hasher;
        self.hash.finish()
    }
}
