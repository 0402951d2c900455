//! The simulator: the real core driven against faulty simulated disks by a
//! seeded scheduler, with an oracle and the invariant checker.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

use quorum_proto::{
    Action, ChildId, Config, Errno, Event, OpType, Outcome, Quorum, ReadPattern, Request, RequestId,
};

use crate::config::{Mode, SimConfig};
use crate::faults::{ERRNOS, FaultRates};
use crate::report::{Report, Stats};
use crate::trace::{Tape, Trace, TraceError, render};
use quorum_driver::InjectState;

/// The core as the simulator builds it: 16 children, 32 requests in flight,
/// room for every action they can produce (32 × (3 × 16 + 2)).
type Core = Quorum<16, 32, 1600>;

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
}

/// A child operation in progress, completing at a virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: u64,
    seq: u64,
    action: ActionKey,
}

/// `Action` is not `Ord`; the heap orders by (time, seq) only, so this wrapper
/// compares equal for every action.
#[derive(Clone, Copy, Debug)]
struct ActionKey(Action);

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
    /// Boxed: the fixed-capacity core is ~90 KB, too much to move around on
    /// test threads' stacks.
    q: Box<Core>,
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
    /// Live requests already answered (early quorum): their callers have
    /// their data, so they no longer count against `depth`.
    answered_live: usize,
    stats: Stats,
    error: Option<String>,
    /// Progress callback: called every 1024 requests with the number done.
    progress: Option<Box<dyn FnMut(u64)>>,
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
        let config = Config::new(cfg.children, cfg.threshold)
            .with_read_pattern(cfg.pattern)
            .with_rewrite_corrupted(cfg.rewrite)
            .with_early_quorum(cfg.early);
        // validate() checked children and threshold; this cannot fail.
        let q = Box::new(
            Core::new(config).unwrap_or_else(|e| unreachable!("validated config refused: {e}")),
        );
        let n = cfg.children as u32;
        let oracle = vec![0u8; cfg.size as usize];
        let disks = (0..n)
            .map(|i| {
                (
                    i,
                    Disk {
                        data: oracle.clone(),
                        latent: BTreeSet::new(),
                        inject: None,
                    },
                )
            })
            .collect();
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
            answered_live: 0,
            pool: Vec::new(),
            script_data: None,
            event_log: None,
            finished: None,
            stats: Stats::default(),
            error: None,
            progress: None,
        }
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
        self.setup();
        self.workload();
        if self.cfg.mode == Mode::Safety && self.error.is_none() {
            self.liveness();
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
    }

    fn swarm(&mut self) -> FaultRates {
        FaultRates::swarm(|n| self.tape.below(n))
    }

    fn disk_id(&self, child: ChildId) -> u32 {
        match &self.alias {
            Some(a) => a.get(child.0 as usize).copied().unwrap_or(u32::MAX),
            None => child.0,
        }
    }

    fn is_faulty(&self, disk: u32) -> bool {
        self.faulty.contains(&disk)
    }

    fn workload(&mut self) {
        while !self.stopped() {
            // An answered read no longer occupies its caller (early quorum),
            // but stays live in the core, which holds 32 requests at most.
            let can_submit = self.submitted < self.cfg.ops
                && self.live.len() - self.answered_live < self.cfg.depth
                && self.live.len() < 32
                && !self.tape.exhausted();
            if can_submit && self.live.is_empty() && self.change_due {
                self.change_due = false;
                self.membership();
                continue;
            }
            if can_submit && !self.change_due && (self.queue.is_empty() || self.tape.below(2) == 0)
            {
                // Membership changes only between requests (R-MEMBER-4):
                // when one is drawn, let the requests in flight drain first.
                self.change_due = self.tape.chance(self.rates.membership);
                if !self.change_due {
                    self.submit_random();
                    self.drain();
                }
                continue;
            }
            if let Some(Reverse(p)) = self.queue.pop() {
                self.now = p.at;
                self.perform(p.action.0);
                self.drain();
                continue;
            }
            if !self.live.is_empty() {
                let ids: Vec<u64> = self.live.keys().copied().collect();
                self.violated(format!(
                    "requests {ids:?} never completed: nothing left to do"
                ));
            }
            break;
        }
    }

    /// Between requests: maybe add or remove a child (R-MEMBER).
    fn membership(&mut self) {
        let ids: Vec<ChildId> = self.q.children().to_vec();
        if self.tape.below(2) == 0 {
            if ids.len() >= 16 {
                return;
            }
            match self.q.add_child() {
                Ok(id) => {
                    self.disks.insert(
                        id.0,
                        Disk {
                            data: self.oracle.clone(),
                            latent: BTreeSet::new(),
                            inject: None,
                        },
                    );
                    self.stats.children_added += 1;
                    self.tape.out(&("add", id), || format!("add {id}"));
                }
                Err(e) => self.violated(format!("add_child refused: {e}")),
            }
        } else {
            let victim = ids[self.tape.below(ids.len() as u64) as usize];
            let n = ids.len();
            let t = self.cfg.threshold;
            if n <= t {
                // R-MEMBER-2: the core must refuse.
                if self.q.remove_child(victim).is_ok() {
                    self.violated(format!(
                        "removing {victim} left fewer children than threshold {t}"
                    ));
                }
                return;
            }
            let faulty_after = self.faulty.len() - usize::from(self.faulty.contains(&victim.0));
            if self.cfg.mode == Mode::Safety && faulty_after > self.cfg.safe_faulty(n - 1) {
                return;
            }
            match self.q.remove_child(victim) {
                Ok(()) => {
                    self.disks.remove(&victim.0);
                    self.faulty.remove(&victim.0);
                    self.slow.remove(&victim.0);
                    self.stats.children_removed += 1;
                    self.tape
                        .out(&("remove", victim), || format!("remove {victim}"));
                }
                Err(e) => self.violated(format!("remove_child({victim}) refused: {e}")),
            }
        }
    }

    /// Draws and submits one request. Writes never overlap a write in flight:
    /// block devices order nothing between concurrent overlapping writes, so
    /// any result would be allowed and nothing could be checked.
    fn submit_random(&mut self) {
        let size = self.cfg.size;
        let fixed = self.cfg.len != 0;
        let sectors = if fixed {
            self.cfg.len / SECTOR
        } else {
            1 + self.tape.below(16)
        };
        let mut len = sectors * SECTOR;
        let mut offset = self.tape.below(size / SECTOR - sectors + 1) * SECTOR;
        if !fixed && self.tape.below(16) == 0 {
            // unaligned, still inside the device
            let shift = self.tape.below(SECTOR);
            offset += shift;
            len -= shift.min(len - 1);
            len -= self.tape.below(len);
        }
        let kind = self.tape.below(100);
        let mut req = match kind {
            0..50 => Request::Read { offset, len },
            50..80 => Request::Write { offset, len },
            80..92 => Request::WriteZeroes { offset, len },
            _ => Request::Flush,
        };
        // Early quorum: a caller that got its read's answer writes the same
        // range while the read's stragglers are still out (drawn only when
        // such a read exists, so runs without early quorum are unchanged).
        if self.answered_live > 0 && self.tape.below(4) == 0 {
            let answered: Vec<(u64, u64)> = self
                .live
                .values()
                .filter(|l| l.answer.is_some())
                .map(|l| l.req.range())
                .collect();
            let (o, l) = answered[self.tape.below(answered.len() as u64) as usize];
            req = if self.tape.below(4) == 0 {
                Request::WriteZeroes { offset: o, len: l }
            } else {
                Request::Write { offset: o, len: l }
            };
        }
        let (offset, len) = req.range();
        let is_write = matches!(req, Request::Write { .. } | Request::WriteZeroes { .. });
        if is_write
            && self
                .live
                .values()
                .any(|l| is_write_req(&l.req) && overlaps(&l.req, offset, len))
        {
            req = Request::Read { offset, len };
        }
        let id = self.next_id;
        self.next_id += 1;
        self.submitted += 1;
        if let Some(p) = self.progress.as_mut()
            && self.submitted.is_multiple_of(1024)
        {
            p(self.submitted);
        }
        self.submit(id, req);
    }

    fn submit(&mut self, id: u64, req: Request) {
        let children = self.q.children().to_vec();
        let n = children.len();
        let (offset, len) = req.range();
        let (o, l) = (offset as usize, len as usize);
        let mut live = Live {
            req,
            children,
            bufs: Vec::new(),
            data: None,
            base: Vec::new(),
            concurrent: Vec::new(),
            results: vec![None; n],
            events: Vec::new(),
            rewrites: Vec::new(),
            answer: None,
            quiet: false,
        };
        match req {
            Request::Read { .. } => {
                // Empty buffers from the pool: a successful read fills its
                // own, and the core only looks at those.
                live.bufs = (0..n).map(|_| self.buffer()).collect();
                let mut base = self.buffer();
                base.extend_from_slice(&self.oracle[o..o + l]);
                live.base = base;
                live.concurrent = self
                    .live
                    .values()
                    .filter(|w| is_write_req(&w.req) && overlaps(&w.req, offset, len))
                    .filter_map(|w| w.data.clone().map(|d| (w.req.range().0, d)))
                    .collect();
            }
            Request::Write { .. } => {
                let data = match self.script_data.take() {
                    Some(d) => Rc::new(d),
                    None => {
                        let seed = self.tape.below(u64::MAX);
                        Rc::new(pattern(seed, l))
                    }
                };
                live.data = Some(data);
            }
            Request::WriteZeroes { .. } => live.data = Some(Rc::new(vec![0u8; l])),
            Request::Flush => {}
        }
        if let Some(d) = &live.data {
            for r in self.live.values_mut() {
                if matches!(r.req, Request::Read { .. }) && overlaps(&r.req, offset, len) {
                    // For an answered read this write came after it (for
                    // the caller), so the answer was checked without it; it
                    // still forbids repairs, and silences the content
                    // reports of stragglers not yet settled.
                    r.concurrent.push((offset, d.clone()));
                    let unsettled = r.results.iter().any(Option::is_none);
                    if r.answer.is_some() && unsettled && !r.quiet {
                        r.quiet = true;
                        self.stats.early_overwritten += 1;
                    }
                }
            }
        }
        self.tape.out(&(id, req), || {
            format!("submit #{id} {}", describe_req(&req))
        });
        if let Err(e) = self.q.submit(RequestId(id), req) {
            self.violated(format!("submit #{id} refused: {e}"));
            return;
        }
        self.live.insert(id, live);
    }

    /// Carries out every queued action.
    fn drain(&mut self) {
        while let Some(a) = self.q.poll_action() {
            self.tape.out(&a, || describe(&a));
            match a {
                Action::Event { id, event } => {
                    if let Some(log) = self.event_log.as_mut() {
                        log.push((id, event));
                    }
                    match event {
                        Event::ReportBad { .. } => self.stats.reports += 1,
                        Event::Failure { .. } => self.stats.failures += 1,
                    }
                    match self.live.get_mut(&id.0) {
                        Some(l) => l.events.push(event),
                        None => self.violated(format!("event for unknown request {id}: {event:?}")),
                    }
                }
                Action::Complete { id, outcome } => self.completed(id.0, outcome),
                Action::Answer { id, outcome } => self.answered(id.0, outcome),
                other => {
                    if let Action::Rewrite { id, slot, .. } = other {
                        match self.live.get_mut(&id.0) {
                            Some(l)
                                if !l.concurrent.is_empty() && self.cfg.mode == Mode::Safety =>
                            {
                                let msg = format!(
                                    "request {id} rewrites slot {slot} although a write overlapped it"
                                );
                                self.violated(msg);
                            }
                            Some(l) => l.rewrites.push(slot),
                            None => self.violated(format!("rewrite for unknown request {id}")),
                        }
                    }
                    self.schedule(other);
                }
            }
        }
    }

    fn schedule(&mut self, a: Action) {
        let child = match a {
            Action::Read { child, .. }
            | Action::Write { child, .. }
            | Action::WriteZeroes { child, .. }
            | Action::Flush { child, .. }
            | Action::Rewrite { child, .. } => child,
            _ => return,
        };
        let mut latency = 1;
        if self.rates.reorder != 0 {
            latency += self.tape.below(20);
        }
        if self.slow.contains(&self.disk_id(child)) {
            latency *= 10;
        }
        self.seq += 1;
        self.queue.push(Reverse(Pending {
            at: self.now + latency,
            seq: self.seq,
            action: ActionKey(a),
        }));
    }

    /// Executes a child operation with faults, and reports it to the core.
    fn perform(&mut self, a: Action) {
        self.stats.child_ios += 1;
        let r = match a {
            Action::Read {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let res = match self.injected(child, |st| st.before_read(offset, len)) {
                    Err(e) => Err(e),
                    Ok(_) => self.disk_read(child, offset, len, id.0, slot),
                };
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res);
                }
                let bufs = self
                    .live
                    .get(&id.0)
                    .map(|l| l.bufs.as_slice())
                    .unwrap_or(&[]);
                self.q.handle_read(id, slot, res, bufs)
            }
            Action::Write {
                id,
                slot,
                child,
                offset,
                ..
            }
            | Action::WriteZeroes {
                id,
                slot,
                child,
                offset,
                ..
            } => {
                let data = self
                    .live
                    .get(&id.0)
                    .and_then(|l| l.data.clone())
                    .unwrap_or_default();
                let len = data.len() as u64;
                let injected = if matches!(a, Action::WriteZeroes { .. }) {
                    // QEMU's block layer retries an unsupported write-zeroes
                    // as a plain write.
                    match self.injected(child, |st| st.before_write_zeroes(offset, len)) {
                        Err(Errno::ENOTSUP) => {
                            self.injected(child, |st| st.before_write(offset, len))
                        }
                        r => r,
                    }
                } else {
                    self.injected(child, |st| st.before_write(offset, len))
                };
                let res = match injected {
                    Err(e) => Err(e),
                    Ok(_) => self.disk_write(child, offset, &data),
                };
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res);
                }
                self.q.handle_write(id, slot, res)
            }
            Action::Flush { id, slot, child } => {
                let d = self.disk_id(child);
                let res = match self.injected(child, InjectState::before_flush) {
                    Err(e) => Err(e),
                    Ok(Some(None)) => Ok(()), // a clean child is not flushed
                    Ok(_) if self.is_faulty(d) && self.tape.chance(self.rates.flush_error) => {
                        self.stats.injected.flush_error += 1;
                        Err(self.errno())
                    }
                    Ok(generation) => {
                        if let Some(Some(g)) = generation {
                            let _ = self.injected(child, |st| {
                                st.flushed(g);
                                Ok(())
                            });
                        }
                        Ok(())
                    }
                };
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res);
                }
                self.q.handle_flush(id, slot, res)
            }
            Action::Rewrite {
                id,
                slot,
                child,
                source,
                offset,
                len,
            } => {
                let data: Vec<u8> = self
                    .live
                    .get(&id.0)
                    .map(|l| l.bufs[source].clone())
                    .unwrap_or_default();
                let (o, l) = (offset as usize, len as usize);
                if self.cfg.mode == Mode::Safety && data != self.oracle[o..o + l] {
                    self.violated(format!(
                        "request {id} rewrites {child} with data older than the last acknowledged write"
                    ));
                }
                let res = match self.injected(child, |st| st.before_write(offset, len)) {
                    Err(e) => Err(e),
                    Ok(_) => self.disk_write(child, offset, &data),
                };
                if res.is_ok() {
                    self.stats.repaired += 1;
                }
                self.q.handle_rewrite(id, slot, res)
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.violated(format!("the core refused a completion it asked for: {e}"));
        }
    }

    /// Runs `f` on the child's injection rules; `Ok(None)` when it has none.
    fn injected<T>(
        &mut self,
        child: ChildId,
        f: impl FnOnce(&mut InjectState) -> std::io::Result<T>,
    ) -> Result<Option<T>, Errno> {
        let d = self.disk_id(child);
        match self.disks.get_mut(&d).and_then(|k| k.inject.as_mut()) {
            Some(st) => f(st).map(Some).map_err(|e| Errno::from(&e)),
            None => Ok(None),
        }
    }

    fn errno(&mut self) -> Errno {
        ERRNOS[self.tape.below(ERRNOS.len() as u64) as usize]
    }

    fn disk_read(
        &mut self,
        child: ChildId,
        offset: u64,
        len: u64,
        id: u64,
        slot: usize,
    ) -> Result<(), Errno> {
        let d = self.disk_id(child);
        let faulty = self.is_faulty(d);
        let first = offset / SECTOR;
        let end = (offset + len).div_ceil(SECTOR);
        if faulty && len > 0 && self.tape.chance(self.rates.latent) {
            let s = first + self.tape.below(end - first);
            self.stats.injected.latent += 1;
            if let Some(disk) = self.disks.get_mut(&d) {
                disk.latent.insert(s);
            }
        }
        if faulty && len > 0 && self.tape.chance(self.rates.corrupt) {
            let at = offset + self.tape.below(len);
            // Deterministic: the same child flips the same bit at the same place.
            let bit = (d as u64 + at) % 8;
            self.stats.injected.corrupt += 1;
            if let Some(disk) = self.disks.get_mut(&d) {
                disk.data[at as usize] ^= 1 << bit;
            }
        }
        let Some(disk) = self.disks.get(&d) else {
            self.violated(format!("read from removed child {child}"));
            return Err(Errno::ENXIO);
        };
        if disk.latent.range(first..end).next().is_some() {
            return Err(Errno::EIO);
        }
        if faulty && self.tape.chance(self.rates.read_error) {
            self.stats.injected.read_error += 1;
            return Err(self.errno());
        }
        let (o, l) = (offset as usize, len as usize);
        let disk = &self.disks[&d];
        if let Some(live) = self.live.get_mut(&id) {
            let b = &mut live.bufs[slot];
            b.clear();
            b.extend_from_slice(&disk.data[o..o + l]);
        }
        Ok(())
    }

    fn disk_write(&mut self, child: ChildId, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let d = self.disk_id(child);
        let faulty = self.is_faulty(d);
        let len = data.len() as u64;
        if faulty && self.tape.chance(self.rates.write_error) {
            self.stats.injected.write_error += 1;
            return Err(self.errno());
        }
        if faulty && self.tape.chance(self.rates.lost_write) {
            self.stats.injected.lost_write += 1;
            return Ok(());
        }
        let mut at = offset;
        if faulty && self.tape.chance(self.rates.misdirected) {
            self.stats.injected.misdirected += 1;
            at = self.tape.below((self.cfg.size - len) / SECTOR + 1) * SECTOR;
        }
        let Some(disk) = self.disks.get_mut(&d) else {
            self.violated(format!("write to removed child {child}"));
            return Err(Errno::ENXIO);
        };
        disk.data[at as usize..(at + len) as usize].copy_from_slice(data);
        let (first, end) = (at / SECTOR, (at + len).div_ceil(SECTOR));
        let healed: Vec<u64> = disk.latent.range(first..end).copied().collect();
        for s in healed {
            disk.latent.remove(&s);
        }
        Ok(())
    }

    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// A request finished: check it (the invariants of DESIGN.md).
    fn completed(&mut self, id: u64, outcome: Outcome) {
        let Some(mut l) = self.live.remove(&id) else {
            self.violated(format!("completion of unknown or finished request #{id}"));
            return;
        };
        if l.answer.is_some() {
            self.answered_live -= 1;
        }
        self.check(id, &l, outcome);
        if self.event_log.is_some() {
            let data = match outcome {
                Outcome::Read { slot, .. } => l.bufs.get(slot).cloned(),
                _ => None,
            };
            self.finished = Some((outcome, data));
        }
        self.pool.append(&mut l.bufs);
        self.pool.push(std::mem::take(&mut l.base));
    }

    /// Early quorum: a read was answered. This is when its caller has the
    /// data, so the data is judged here, exactly as a completed read's would
    /// be; the request stays live until its completion, which must repeat
    /// the answer ([`Sim::check`]).
    fn answered(&mut self, id: u64, outcome: Outcome) {
        let Some(mut l) = self.live.remove(&id) else {
            self.violated(format!("answer for unknown or finished request #{id}"));
            return;
        };
        let t = self.cfg.threshold;
        let mut problems: Vec<String> = Vec::new();
        if !self.cfg.early_effective() {
            problems.push("an early answer without early quorum".into());
        }
        if !matches!(l.req, Request::Read { .. }) {
            problems.push("an answer to a request that is not a read".into());
        }
        if let Some(first) = l.answer {
            problems.push(format!("answered twice: {first:?}, then {outcome:?}"));
        } else {
            self.answered_live += 1;
        }
        match outcome {
            Outcome::Read { slot, child }
                if l.children.get(slot) == Some(&child)
                    && matches!(l.results[slot], Some(Ok(()))) =>
            {
                let data = &l.bufs[slot];
                let group: Vec<usize> = (0..l.children.len())
                    .filter(|&s| matches!(l.results[s], Some(Ok(()))) && l.bufs[s] == *data)
                    .collect();
                if group.len() < t {
                    problems.push(format!(
                        "answered with {} agreeing children, threshold {t}",
                        group.len()
                    ));
                }
                if group.first() != Some(&slot) {
                    problems.push(format!(
                        "answer names slot {slot}, not the lowest of its group {group:?}"
                    ));
                }
                if l.events.iter().any(|e| matches!(e, Event::Failure { .. })) {
                    problems.push("answered after QUORUM_FAILURE".into());
                }
                self.check_read_data(&l, slot, &mut problems);
                if l.results.iter().any(Option::is_none) {
                    self.stats.early_answers += 1;
                }
            }
            other => problems.push(format!(
                "answered with {other:?}, not a successful child of the request"
            )),
        }
        if l.answer.is_none() {
            l.answer = Some(outcome);
        }
        if !problems.is_empty() {
            self.violated(format!(
                "request #{id} ({}) answered: {}",
                describe_req(&l.req),
                problems.join("; ")
            ));
        }
        self.live.insert(id, l);
    }

    /// A successful read's data, as its caller gets it (at the completion,
    /// or at the answer with early quorum): in safety mode it must be what
    /// some serial order of acknowledged writes explains.
    fn check_read_data(&self, l: &Live, slot: usize, problems: &mut Vec<String>) {
        if self.cfg.mode != Mode::Safety {
            return;
        }
        let (offset, len) = l.req.range();
        let data = &l.bufs[slot];
        let answering = self.disk_id(l.children[slot]);
        // Healthy children only ever hold states some serial order of
        // writes explains. A write in flight can split them between
        // the old and the new data, and then a group of faulty
        // children holding the same wrong bytes (a write misdirected
        // to the same place on each, the same write lost by each) may
        // outvote both halves: QEMU's vote allows that. So with
        // overlapping writes in flight the data is checked when a
        // healthy child backs it; without, always (quorum pattern).
        // (With early quorum the cap on faulty children makes a healthy
        // child back every answer.)
        let healthy_backs = (0..l.children.len()).any(|s| {
            matches!(l.results[s], Some(Ok(())))
                && l.bufs[s] == *data
                && !self.faulty.contains(&self.disk_id(l.children[s]))
        });
        let checkable = match self.pattern {
            ReadPattern::Quorum => l.concurrent.is_empty() || healthy_backs,
            ReadPattern::Fifo => !self.faulty.contains(&answering),
        };
        if checkable && !matches_some_order(data, &l.base, offset, &l.concurrent) {
            problems.push(format!(
                "read {offset}+{len} returned data that no serial order of acknowledged writes explains"
            ));
        }
    }

    fn check(&mut self, id: u64, l: &Live, outcome: Outcome) {
        self.stats.requests += 1;
        let t = self.cfg.threshold;
        let (offset, len) = l.req.range();
        let secs = (
            offset / SECTOR,
            (offset + len).div_ceil(SECTOR) - offset / SECTOR,
        );
        let failures = l
            .events
            .iter()
            .filter(|e| matches!(e, Event::Failure { .. }))
            .count();
        let oks = l
            .results
            .iter()
            .filter(|r| matches!(r, Some(Ok(()))))
            .count();
        let safety = self.cfg.mode == Mode::Safety;
        let mut problems: Vec<String> = Vec::new();
        if let Some(a) = l.answer
            && a != outcome
        {
            problems.push(format!("answered {a:?} but completed with {outcome:?}"));
        }
        let op = match l.req {
            Request::Read { .. } => OpType::Read,
            Request::Write { .. } | Request::WriteZeroes { .. } => OpType::Write,
            Request::Flush => OpType::Flush,
        };

        // Every failed child is reported exactly once, with its error and the
        // request's sectors (R-READ-2, R-WRITE-1, R-FLUSH-1).
        let mut expected: Vec<Event> = Vec::new();
        for (slot, r) in l.results.iter().enumerate() {
            if let Some(Err(e)) = r {
                let (sector_num, sectors_count) = if op == OpType::Flush { (0, 0) } else { secs };
                expected.push(Event::ReportBad {
                    op,
                    error: Some(*e),
                    child: l.children[slot],
                    sector_num,
                    sectors_count,
                });
            }
        }
        match (l.req, outcome) {
            (Request::Read { .. }, Outcome::Read { slot, .. }) => {
                let data = &l.bufs[slot];
                // Slots that answered with bytes other than the result: one
                // memcmp each, shared by every check below.
                let losers: Vec<usize> = (0..l.children.len())
                    .filter(|&s| {
                        s != slot && matches!(l.results[s], Some(Ok(()))) && l.bufs[s] != *data
                    })
                    .collect();
                if self.pattern == ReadPattern::Quorum {
                    // Every one is reported once, without error (R-READ-6);
                    // with early quorum, relative to the answer, and not
                    // when a write followed the answer (then the caller saw
                    // the two in that order, and a straggler holding the
                    // write's data is no sign of corruption).
                    if !l.quiet {
                        for &s in &losers {
                            expected.push(Event::ReportBad {
                                op,
                                error: None,
                                child: l.children[s],
                                sector_num: secs.0,
                                sectors_count: secs.1,
                            });
                        }
                    }
                    if oks < t {
                        problems.push(format!(
                            "read succeeded with {oks} successful children, threshold {t}"
                        ));
                    }
                    let agree = oks - losers.len();
                    if agree < t {
                        problems.push(format!(
                            "read result backed by {agree} children, threshold {t}"
                        ));
                    }
                }
                // An answered read's data was judged at the answer, when its
                // caller got it.
                if l.answer.is_none() {
                    self.check_read_data(l, slot, &mut problems);
                }
                let mut rw: Vec<usize> = l.rewrites.clone();
                rw.sort_unstable();
                if !rw.is_empty() && rw != losers {
                    problems.push(format!(
                        "rewrote slots {rw:?}, but the losers were {losers:?}"
                    ));
                }
                if failures != 0 {
                    problems.push("a successful read emitted QUORUM_FAILURE".into());
                }
            }
            (Request::Read { .. }, Outcome::Failed(e)) => {
                if self.pattern == ReadPattern::Quorum {
                    if failures != 1 {
                        problems.push(format!(
                            "failed read emitted {failures} QUORUM_FAILURE events"
                        ));
                    }
                    expected.push(Event::Failure {
                        sector_num: secs.0,
                        sectors_count: secs.1,
                    });
                } else if failures != 0 {
                    problems.push("a fifo read emitted QUORUM_FAILURE".into());
                }
                let errs: Vec<Errno> = l
                    .results
                    .iter()
                    .filter_map(|r| r.and_then(Result::err))
                    .collect();
                if e != Errno::EIO && !errs.contains(&e) {
                    problems.push(format!("read failed with {e:?}, which no child returned"));
                }
                if safety && l.concurrent.is_empty() {
                    problems.push(format!(
                        "read {offset}+{len} failed ({e}) with at most {} faulty children",
                        self.faulty.len()
                    ));
                }
            }
            (Request::Write { .. } | Request::WriteZeroes { .. }, Outcome::Done) => {
                if oks < t {
                    problems.push(format!(
                        "write acknowledged by {oks} children, threshold {t}"
                    ));
                }
                if failures != 0 {
                    problems.push("a successful write emitted QUORUM_FAILURE".into());
                }
                if let Some(d) = &l.data {
                    self.oracle[offset as usize..(offset + len) as usize].copy_from_slice(d);
                }
            }
            (Request::Write { .. } | Request::WriteZeroes { .. }, Outcome::Failed(e)) => {
                if oks >= t {
                    problems.push(format!(
                        "write failed ({e}) although {oks} children succeeded"
                    ));
                }
                expected.push(Event::Failure {
                    sector_num: secs.0,
                    sectors_count: secs.1,
                });
                if safety {
                    problems.push(format!(
                        "write failed ({e}) with at most {} faulty children",
                        self.faulty.len()
                    ));
                }
                // Unknown content from here on: the children disagree.
                if let Some(d) = &l.data {
                    self.oracle[offset as usize..(offset + len) as usize].copy_from_slice(d);
                }
            }
            (Request::Flush, Outcome::Done) if oks < t => {
                problems.push(format!(
                    "flush succeeded with {oks} children, threshold {t}"
                ));
            }
            (Request::Flush, Outcome::Failed(_)) if oks >= t => {
                problems.push(format!("flush failed although {oks} children succeeded"));
            }
            (Request::Flush, Outcome::Done | Outcome::Failed(_)) => {}
            (req, o) => problems.push(format!("{req:?} ended with {o:?}")),
        }
        // Same events, as multisets (error reports follow completion order).
        if !same_multiset(&l.events, &expected) {
            problems.push(format!("events {:?}, expected {expected:?}", l.events));
        }
        self.stats.invariants += 1;
        if !problems.is_empty() {
            self.violated(format!(
                "request #{id} ({}): {}",
                describe_req(&l.req),
                problems.join("; ")
            ));
        }
    }

    /// Faults stop; a fresh core with rewrite on reads the whole device back.
    /// Every read must succeed with the oracle's data and afterwards every
    /// child must equal the oracle, except where it still has a latent bad
    /// sector (a failed read is never rewritten, R-READ-7).
    fn liveness(&mut self) {
        self.rates = FaultRates::none();
        let ids: Vec<u32> = self.q.children().iter().map(|c| c.0).collect();
        // Early quorum as in the workload: stragglers are settled after the
        // answer, and must still be repaired.
        let config = Config::new(ids.len(), self.cfg.threshold)
            .with_rewrite_corrupted(true)
            .with_early_quorum(self.cfg.early_effective());
        let Ok(q) = Core::new(config) else {
            self.violated("liveness core refused its configuration".into());
            return;
        };
        *self.q = q;
        self.pattern = ReadPattern::Quorum;
        self.alias = Some(ids.clone());
        self.tape.out(&"liveness", || "liveness".into());
        let mut offset = 0;
        while offset < self.cfg.size && !self.stopped() {
            let id = self.next_id;
            self.next_id += 1;
            self.submit(id, Request::Read { offset, len: SCAN });
            self.drain();
            while let Some(Reverse(p)) = self.queue.pop() {
                self.now = p.at;
                self.perform(p.action.0);
                self.drain();
            }
            if self.live.contains_key(&id) {
                self.violated(format!("liveness read at {offset} never completed"));
            }
            offset += SCAN;
        }
        // The reads themselves were checked in completed(); now the children.
        for (&d, disk) in &self.disks {
            for chunk in 0..self.cfg.size / SCAN {
                let (o, e) = (chunk * SCAN, (chunk + 1) * SCAN);
                if disk.latent.range(o / SECTOR..e / SECTOR).next().is_some() {
                    continue;
                }
                if disk.data[o as usize..e as usize] != self.oracle[o as usize..e as usize] {
                    let msg =
                        format!("after the liveness phase children.{d} still differs at {o}..{e}");
                    self.error.get_or_insert(msg);
                    return;
                }
            }
        }
    }
}

/// Scripted scenarios: explicit requests and explicit faults, through the
/// same simulated disks, scheduler and checker as seeded runs. Completions
/// come in issue order and a round's completions reach the core in slot
/// order, as in the other drivers, so a script gives the same events through
/// all of them.
impl Sim {
    /// A scripted simulation of `config` over children of `size` zero bytes
    /// (any size; blkverify is not simulated). The checker runs in
    /// over-threshold mode: every request's events and outcome are checked,
    /// data is the script's business.
    pub fn scripted(config: Config, size: u64) -> Result<Sim, String> {
        let config = config.validate(16).map_err(|e| e.to_string())?;
        if config.blkverify {
            return Err("the simulator does not model blkverify".into());
        }
        if config.fifo_rewrite_failed {
            return Err("the simulator does not model fifo_rewrite_failed".into());
        }
        let cfg = SimConfig {
            seed: 0,
            children: config.children,
            threshold: config.threshold,
            ops: 0,
            size,
            depth: 1,
            pattern: config.read_pattern,
            rewrite: config.rewrite_corrupted,
            mode: Mode::OverThreshold,
            faults: crate::config::Faults::None,
            len: 0,
            early: config.early_quorum,
        };
        let mut sim = Sim::with_tape(cfg, Tape::live(0, false));
        sim.event_log = Some(Vec::new());
        Ok(sim)
    }

    /// Checks this scripted run in safety mode from now on: `faulty` are the
    /// children the script damages ([`Sim::poke`], [`Sim::inject`]), and
    /// every successful read must return the last acknowledged data (at its
    /// answer, with early quorum), every request must succeed, and no repair
    /// may write anything else. Whether the script keeps within
    /// [`crate::faults::safe_faulty`] (or [`crate::faults::safe_faulty_early`])
    /// is not checked: a script beyond it shows what the caps are for.
    pub fn check_safety(&mut self, faulty: &[ChildId]) {
        self.cfg.mode = Mode::Safety;
        self.faulty = faulty.iter().map(|c| c.0).collect();
    }

    /// Makes `child` slow (10× latency): its completions come after the
    /// others', so with early quorum it is a straggler.
    pub fn slow(&mut self, child: ChildId) {
        self.slow.insert(child.0);
    }

    /// Gives `child` blkdebug-style rules (see `quorum_driver::InjectState`).
    pub fn inject(&mut self, child: ChildId, rules: Vec<quorum_driver::InjectRule>) {
        if let Some(d) = self.disks.get_mut(&child.0) {
            d.inject = Some(InjectState::new(rules));
        }
    }

    /// Overwrites `child`'s bytes behind the device's back (silent corruption).
    pub fn poke(&mut self, child: ChildId, offset: u64, bytes: &[u8]) {
        if let Some(d) = self.disks.get_mut(&child.0) {
            let o = offset as usize;
            if let Some(dst) = d.data.get_mut(o..o + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
    }

    /// Runs one request to completion: its outcome and, for a successful
    /// read, its data. `data` is a write's payload.
    pub fn request(
        &mut self,
        req: Request,
        data: Option<&[u8]>,
    ) -> Result<(Outcome, Option<Vec<u8>>), SimError> {
        let (offset, len) = req.range();
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.cfg.size)
            || data.is_some_and(|d| d.len() as u64 != len)
        {
            return Err(SimError::Invariant {
                seed: 0,
                step: self.tape.steps,
                message: format!(
                    "scripted request {offset}+{len} does not fit the {}-byte device (or its data)",
                    self.cfg.size
                ),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.script_data = data.map(<[u8]>::to_vec);
        self.submit(id, req);
        self.drain();
        while let Some(Reverse(p)) = self.queue.pop() {
            self.now = p.at;
            self.perform(p.action.0);
            self.drain();
        }
        if let Some(message) = self.error.take() {
            return Err(SimError::Invariant {
                seed: 0,
                step: self.tape.steps,
                message,
            });
        }
        self.finished.take().ok_or_else(|| SimError::Invariant {
            seed: 0,
            step: self.tape.steps,
            message: format!("request #{id} never completed"),
        })
    }

    /// The events so far, in order; the log starts empty again.
    pub fn take_events(&mut self) -> Vec<(RequestId, Event)> {
        self.event_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A child's bytes.
    pub fn disk(&self, child: ChildId) -> Option<&[u8]> {
        self.disks.get(&child.0).map(|d| d.data.as_slice())
    }
}

impl Tape {
    pub(crate) fn hash_value(&self) -> u64 {
        use core::hash::Hasher;
        self.hash.finish()
    }
}

/// Whether `a` and `b` hold the same events, counting repeats, in any order.
fn same_multiset(a: &[Event], b: &[Event]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter()
        .all(|x| match (0..b.len()).find(|&i| !used[i] && b[i] == *x) {
            Some(i) => {
                used[i] = true;
                true
            }
            None => false,
        })
}

fn is_write_req(r: &Request) -> bool {
    matches!(r, Request::Write { .. } | Request::WriteZeroes { .. })
}

fn overlaps(r: &Request, offset: u64, len: u64) -> bool {
    let (o, l) = r.range();
    !matches!(r, Request::Flush) && o < offset + len && offset < o + l
}

/// Whether `data` (read at `offset`) is `base` with some subset of the
/// concurrent writes applied in submission order.
fn matches_some_order(
    data: &[u8],
    base: &[u8],
    offset: u64,
    concurrent: &[(u64, Rc<Vec<u8>>)],
) -> bool {
    if data == base {
        return true;
    }
    let k = concurrent.len().min(10);
    let mut buf = base.to_vec();
    for mask in 1u32..(1 << k) {
        buf.copy_from_slice(base);
        for (i, (wo, wd)) in concurrent.iter().take(k).enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let (ro, rl) = (offset, buf.len() as u64);
            let (s, e) = ((*wo).max(ro), (*wo + wd.len() as u64).min(ro + rl));
            if s < e {
                buf[(s - ro) as usize..(e - ro) as usize]
                    .copy_from_slice(&wd[(s - wo) as usize..(e - wo) as usize]);
            }
        }
        if buf == data {
            return true;
        }
    }
    false
}

/// Write payload: deterministic bytes from a seed, distinct per write (a
/// 64-byte random block, repeated: cheap, and no two writes share one).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = crate::rng::Rng::new(seed);
    let mut block = [0u8; 64];
    for c in block.chunks_exact_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        v.extend_from_slice(&block);
    }
    v.truncate(len);
    v
}

fn describe_req(r: &Request) -> String {
    match *r {
        Request::Read { offset, len } => format!("read {offset}+{len}"),
        Request::Write { offset, len } => format!("write {offset}+{len}"),
        Request::WriteZeroes { offset, len } => format!("zero {offset}+{len}"),
        Request::Flush => "flush".into(),
    }
}

/// One line per action, for traces.
pub(crate) fn describe(a: &Action) -> String {
    match *a {
        Action::Read {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("read {id} s{slot} {child} {offset}+{len}"),
        Action::Write {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("write {id} s{slot} {child} {offset}+{len}"),
        Action::WriteZeroes {
            id,
            slot,
            child,
            offset,
            len,
        } => format!("zero {id} s{slot} {child} {offset}+{len}"),
        Action::Flush { id, slot, child } => format!("flush {id} s{slot} {child}"),
        Action::Rewrite {
            id,
            slot,
            child,
            source,
            offset,
            len,
        } => {
            format!("rewrite {id} s{slot} {child} from s{source} {offset}+{len}")
        }
        Action::Event { id, event } => format!("event {id} {event:?}"),
        Action::Answer { id, outcome } => format!("answer {id} {outcome:?}"),
        Action::Complete { id, outcome } => format!("complete {id} {outcome:?}"),
    }
}
