//! Property tests of the core contract (DESIGN.md, "The core contract").
//!
//! * `random_use_*`: random sequences of valid and invalid inputs, misuse
//!   included, against several capacities. A driver model tracks what the
//!   core asked for (from the polled actions) and checks, at every step, that
//!   nothing panics, misuse is an `Err` that changes nothing, every accepted
//!   request ends with exactly one `Action::Complete` (and a refused one with
//!   none), no action of a request shows up after its completion, and every
//!   child operation, event and rewrite belongs to a request in flight. When a
//!   request completes, its outcome, events and rewrites are checked against a
//!   small reference implementation of SPEC.md (R-READ, R-FIFO, R-WRITE,
//!   R-FLUSH, R-VOTE, R-EVENT) written from the spec, not from the core.
//!   `submit` may say `Busy` only when the documented reservation (`3n + 2`
//!   actions per request) leaves no room, must say it when R requests are
//!   in flight, and an idle core always takes the next request. Early quorum
//!   is drawn too: a read is answered (`Action::Answer`) at most once,
//!   exactly when the model says — the first success, not the request's
//!   last, that makes `threshold` successes agree, naming the group's lowest
//!   slot — before its completion, which repeats the answer; its stragglers
//!   are reported and rewritten relative to the answer, and not reported
//!   when an overlapping write was submitted after the answer.
//! * `full_*core_answered_at_once_never_overflows`: fill the core until
//!   `Busy`, then answer every child operation before polling again.
//! * `outcome_does_not_depend_on_completion_order`: the same request against
//!   the same child answers, completed in two orders, ends the same way.
//!
//! The model knows the core only through its public API, so it cannot always
//! tell whether a request whose child operations are all answered has been
//! decided yet; where that matters the checks accept both.

use std::collections::{HashMap, VecDeque};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Error, Event, MemberError, NoBuffers, OpType, Outcome,
    Quorum, ReadBuffers, ReadPattern, Request, RequestId,
};

type TestResult = Result<(), TestCaseError>;

/// Reads longer than this get no data buffer: the driver model completes them
/// with an error whenever the core would look at the data.
const MAX_BUF: u64 = 1536;

const ERRNOS: [Errno; 6] = [
    Errno::EIO,
    Errno::ENOSPC,
    Errno::EPERM,
    Errno(0),
    Errno(-5),
    Errno(4095),
];

/// Read contents from a small alphabet, so that votes both agree and
/// disagree: zeroes, 0xab, and zeroes with the last or the first byte set.
fn pattern(sym: u8, len: u64) -> Vec<u8> {
    let mut v = vec![if sym == 1 { 0xab } else { 0 }; len as usize];
    match sym {
        2 => {
            if let Some(b) = v.last_mut() {
                *b = 1;
            }
        }
        3 => {
            if let Some(b) = v.first_mut() {
                *b = 1;
            }
        }
        _ => {}
    }
    v
}

/// `(sector_num, sectors_count)` as SPEC.md defines them.
fn sectors(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / 512;
    (start, (offset + len).div_ceil(512) - start)
}

fn child_op_of(op: u8) -> ChildOp {
    match op % 4 {
        0 => ChildOp::Read,
        1 => ChildOp::Write,
        2 => ChildOp::Flush,
        _ => ChildOp::Rewrite,
    }
}

/// The child operation a request issues.
fn op_of(req: Request) -> ChildOp {
    match req {
        Request::Read { .. } => ChildOp::Read,
        Request::Write { .. } | Request::WriteZeroes { .. } => ChildOp::Write,
        Request::Flush => ChildOp::Flush,
    }
}

/// Read buffers by slot, one of them possibly replaced (misuse).
struct Bufs<'a> {
    bufs: &'a [Option<Vec<u8>>],
    replace: Option<(usize, Option<&'a [u8]>)>,
}

impl<'a> Bufs<'a> {
    fn new(bufs: &'a [Option<Vec<u8>>]) -> Self {
        Bufs {
            bufs,
            replace: None,
        }
    }
}

impl ReadBuffers for Bufs<'_> {
    fn buffer(&self, slot: usize) -> Option<&[u8]> {
        if let Some((s, b)) = self.replace
            && s == slot
        {
            return b;
        }
        self.bufs.get(slot)?.as_deref()
    }
}

// ---------------------------------------------------------------------------
// The reference votes (R-VOTE), written from SPEC.md.

/// Groups `(slot, value)` voters, given in slot order, into versions by
/// equality, in order of first appearance; each version lists its slots in
/// increasing order.
fn versions<T: PartialEq>(voters: &[(usize, T)]) -> Vec<Vec<usize>> {
    let mut vs: Vec<(usize, Vec<usize>)> = Vec::new(); // (index into voters of first, slots)
    for (i, (slot, v)) in voters.iter().enumerate() {
        match vs.iter_mut().find(|(f, _)| voters[*f].1 == *v) {
            Some((_, members)) => members.push(*slot),
            None => vs.push((i, vec![*slot])),
        }
    }
    vs.into_iter().map(|(_, m)| m).collect()
}

/// R-VOTE-2: most members wins; among equals, the version whose first member
/// has the highest slot (the one that appeared last).
fn winner(vs: &[Vec<usize>]) -> usize {
    let mut best = 0;
    for (v, m) in vs.iter().enumerate() {
        if m.len() >= vs[best].len() {
            best = v;
        }
    }
    best
}

/// R-VOTE-3 over `(slot, errno)` in slot order.
fn error_vote(failed: &[(usize, Errno)]) -> Errno {
    let vs = versions(failed);
    let w = winner(&vs);
    let first = vs[w][0];
    failed
        .iter()
        .find(|(s, _)| *s == first)
        .map(|(_, e)| *e)
        .expect("a member of the winning version")
}

/// R-VOTE-4: losing versions most recent first, inside a version from the
/// highest slot down.
fn losers(vs: &[Vec<usize>], w: usize) -> Vec<usize> {
    (0..vs.len())
        .rev()
        .filter(|&v| v != w)
        .flat_map(|v| vs[v].iter().rev().copied())
        .collect()
}

// ---------------------------------------------------------------------------
// The driver model for the random-use property.

/// A request's end as SPEC.md has it: outcome, events in order, rewrites
/// `(slot, child, source)` in order.
type Expected = (Outcome, Vec<Event>, Vec<(usize, ChildId, usize)>);

/// One accepted request ("generation": an id may be reused once its
/// request has completed).
#[derive(Debug)]
struct Gen {
    id: RequestId,
    req: Request,
    offset: u64,
    len: u64,
    /// The child set at submission (R-MEMBER-4).
    children: Vec<ChildId>,
    submit_tick: u64,
    /// Child operations polled, rewrites included, in poll order.
    polled: Vec<(usize, ChildOp)>,
    /// Polled and not yet completed.
    outstanding: Vec<(usize, ChildOp)>,
    /// Completed by the driver.
    done: Vec<(usize, ChildOp)>,
    /// Results of the child operations (not rewrites), in completion order.
    results: Vec<(usize, Result<(), Errno>)>,
    bufs: Vec<Option<Vec<u8>>>,
    events: Vec<Event>,
    rewrites: Vec<(usize, ChildId, usize)>,
    /// When the last child result was given (the one that decided a read).
    decide_tick: u64,
    /// When a child write of this request was last polled.
    last_op_poll: Option<u64>,
    /// Actions of this request polled so far, of any kind.
    actions_polled: usize,
    complete_tick: Option<u64>,
    outcome: Option<Outcome>,
    /// Early quorum: the answer the model says the core owes, and the tick
    /// of the completion that made it due.
    answer_due: Option<(Outcome, u64)>,
    /// The `Action::Answer` polled.
    answered: Option<Outcome>,
}

impl Gen {
    fn is_write(&self) -> bool {
        matches!(
            self.req,
            Request::Write { .. } | Request::WriteZeroes { .. }
        )
    }

    /// The byte ranges share at least one byte.
    fn overlaps_data(&self, other: &Gen) -> bool {
        self.len > 0
            && other.len > 0
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }

    /// The ranges overlap in the loosest sense (an empty range strictly
    /// inside another counts): used only to allow the core to skip a repair.
    fn overlaps_loose(&self, other: &Gen) -> bool {
        self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }

    fn result_of(&self, slot: usize) -> Option<Result<(), Errno>> {
        self.results
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, r)| *r)
    }

    /// True when the core cannot have decided this request yet: the driver
    /// still owes it a child result.
    fn must_be_live(&self, cfg: &Config) -> bool {
        if self.outcome.is_some() {
            return false;
        }
        if !self.outstanding.is_empty() {
            return true;
        }
        let n = self.children.len();
        let fifo_read =
            matches!(self.req, Request::Read { .. }) && cfg.read_pattern == ReadPattern::Fifo;
        if fifo_read {
            !self.results.iter().any(|(_, r)| r.is_ok()) && self.results.len() < n
        } else {
            self.results.len() < n
        }
    }

    fn report(&self, op: OpType, error: Option<Errno>, slot: usize) -> Event {
        let (sector_num, sectors_count) = if op == OpType::Flush {
            (0, 0)
        } else {
            sectors(self.offset, self.len)
        };
        Event::ReportBad {
            op,
            error,
            child: self.children[slot],
            sector_num,
            sectors_count,
        }
    }

    fn failure(&self) -> Event {
        let (sector_num, sectors_count) = sectors(self.offset, self.len);
        Event::Failure {
            sector_num,
            sectors_count,
        }
    }

    /// What SPEC.md says this request ends with, from the child results the
    /// driver gave: outcome, events in order, rewrites in order. `quiet`: an
    /// early-answered read that an overlapping write followed before it was
    /// settled (its content mismatches are not reported).
    fn expected(&self, cfg: &Config, quiet: bool) -> Result<Expected, TestCaseError> {
        let n = self.children.len();
        let t = cfg.threshold;
        let mut by_slot: Vec<(usize, Result<(), Errno>)> = self.results.clone();
        by_slot.sort_by_key(|(s, _)| *s);
        let failed: Vec<(usize, Errno)> = by_slot
            .iter()
            .filter_map(|&(s, r)| r.err().map(|e| (s, e)))
            .collect();
        let ok: Vec<usize> = by_slot
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(s, _)| *s)
            .collect();
        let fifo =
            matches!(self.req, Request::Read { .. }) && cfg.read_pattern == ReadPattern::Fifo;
        if !fifo {
            let slots: Vec<usize> = by_slot.iter().map(|(s, _)| *s).collect();
            prop_assert_eq!(
                slots,
                (0..n).collect::<Vec<_>>(),
                "{:?} completed without a result from every child",
                self.id
            );
        }
        let mut rewrites = Vec::new();
        let (outcome, events) = match self.req {
            Request::Read { .. } if fifo => {
                // R-FIFO-1..2
                let order: Vec<usize> = self.results.iter().map(|(s, _)| *s).collect();
                prop_assert_eq!(
                    &order,
                    &(0..order.len()).collect::<Vec<_>>(),
                    "fifo reads out of order"
                );
                let mut events = Vec::new();
                let mut outcome = None;
                for &(s, r) in &self.results {
                    prop_assert!(outcome.is_none(), "fifo read after a success");
                    match r {
                        Err(e) => events.push(self.report(OpType::Read, Some(e), s)),
                        Ok(()) => {
                            outcome = Some(Outcome::Read {
                                slot: s,
                                child: self.children[s],
                            });
                            if cfg.fifo_rewrite_failed {
                                rewrites = (0..s).map(|f| (f, self.children[f], s)).collect();
                            }
                        }
                    }
                }
                let outcome = match outcome {
                    Some(o) => o,
                    None => {
                        prop_assert_eq!(order.len(), n, "fifo read gave up early");
                        let (_, last) = failed[failed.len() - 1];
                        Outcome::Failed(last)
                    }
                };
                (outcome, events)
            }
            Request::Read { .. } => {
                // R-READ-2: errors reported as they come.
                let mut events: Vec<Event> = self
                    .results
                    .iter()
                    .filter_map(|&(s, r)| r.err().map(|e| self.report(OpType::Read, Some(e), s)))
                    .collect();
                let answer = self.answer_due.map(|(o, _)| o);
                let outcome = if let Some(Outcome::Read { slot: a, child }) = answer {
                    // Early quorum: the stragglers are settled against the
                    // answer, not the full vote (they differ when threshold
                    // ≤ n/2), in R-VOTE-4 order.
                    let buf = |s: usize| self.bufs[s].as_deref().expect("an ok read has data");
                    let voters: Vec<(usize, &[u8])> = ok.iter().map(|&s| (s, buf(s))).collect();
                    let vs = versions(&voters);
                    let w = vs
                        .iter()
                        .position(|v| v.contains(&a))
                        .expect("the answer's slot succeeded");
                    let lose = losers(&vs, w);
                    if !quiet {
                        for &s in &lose {
                            events.push(self.report(OpType::Read, None, s));
                        }
                    }
                    if cfg.rewrite_corrupted {
                        rewrites = lose.iter().map(|&s| (s, self.children[s], a)).collect();
                    }
                    Outcome::Read { slot: a, child }
                } else if ok.len() < t {
                    // R-READ-3
                    events.push(self.failure());
                    Outcome::Failed(error_vote(&failed))
                } else {
                    let buf = |s: usize| self.bufs[s].as_deref().expect("an ok read has data");
                    // R-READ-8
                    let mismatch = if cfg.blkverify {
                        ok[1..].iter().find_map(|&s| {
                            buf(ok[0])
                                .iter()
                                .zip(buf(s))
                                .position(|(a, b)| a != b)
                                .map(|at| Outcome::ContentsMismatch {
                                    offset: self.offset + at as u64,
                                })
                        })
                    } else {
                        None
                    };
                    match mismatch {
                        Some(m) => m,
                        None => {
                            let voters: Vec<(usize, &[u8])> =
                                ok.iter().map(|&s| (s, buf(s))).collect();
                            let vs = versions(&voters);
                            let w = winner(&vs);
                            if vs[w].len() < t {
                                // R-READ-5: no mismatch reported.
                                events.push(self.failure());
                                Outcome::Failed(Errno::EIO)
                            } else {
                                // R-READ-6, R-READ-7
                                let source = vs[w][0];
                                let lose = losers(&vs, w);
                                for &s in &lose {
                                    events.push(self.report(OpType::Read, None, s));
                                }
                                if cfg.rewrite_corrupted {
                                    rewrites = lose
                                        .iter()
                                        .map(|&s| (s, self.children[s], source))
                                        .collect();
                                }
                                Outcome::Read {
                                    slot: source,
                                    child: self.children[source],
                                }
                            }
                        }
                    }
                };
                (outcome, events)
            }
            Request::Write { .. } | Request::WriteZeroes { .. } | Request::Flush => {
                let op = if self.req == Request::Flush {
                    OpType::Flush
                } else {
                    OpType::Write
                };
                // R-WRITE-1, R-FLUSH-1
                let mut events: Vec<Event> = self
                    .results
                    .iter()
                    .filter_map(|&(s, r)| r.err().map(|e| self.report(op, Some(e), s)))
                    .collect();
                let outcome = if ok.len() >= t {
                    Outcome::Done
                } else {
                    // R-WRITE-2; R-FLUSH-2: a flush never emits FAILURE.
                    if op == OpType::Write {
                        events.push(self.failure());
                    }
                    Outcome::Failed(error_vote(&failed))
                };
                (outcome, events)
            }
        };
        Ok((outcome, events, rewrites))
    }
}

/// How the driver answers a child operation.
#[derive(Clone, Copy, Debug)]
struct Choice {
    ok: bool,
    sym: u8,
    errno: Errno,
}

/// The core under test plus the driver's model of it.
struct Harness<const C: usize, const R: usize, const A: usize> {
    q: Quorum<C, R, A>,
    cfg: Config,
    gens: Vec<Gen>,
    /// Accepted requests whose `Complete` has not been polled, by id, oldest first.
    pending: HashMap<RequestId, VecDeque<usize>>,
    /// R-MEMBER-1: the children and `next`.
    members: Vec<ChildId>,
    next: u32,
    tick: u64,
    rng: u64,
    used_ids: Vec<RequestId>,
}

impl<const C: usize, const R: usize, const A: usize> Harness<C, R, A> {
    fn new(config: Config, seed: u64) -> Result<Self, TestCaseError> {
        let q = match Quorum::<C, R, A>::new(config) {
            Ok(q) => q,
            Err(e) => return Err(TestCaseError::fail(format!("{config:?} refused: {e}"))),
        };
        let cfg = *q.config();
        Ok(Harness {
            q,
            cfg,
            gens: Vec::new(),
            pending: HashMap::new(),
            members: (0..config.children as u32).map(ChildId).collect(),
            next: config.children as u32,
            tick: 0,
            rng: seed | 1,
            used_ids: Vec::new(),
        })
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn open(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.gens.len()).filter(|&g| self.gens[g].outcome.is_none())
    }

    /// The request an id names in the core, if any: only the newest
    /// generation of an id can still be in flight there.
    fn newest(&self, id: RequestId) -> Option<usize> {
        self.pending.get(&id).and_then(|d| d.back().copied())
    }

    fn outstanding_ops(&self) -> Vec<(usize, usize, ChildOp)> {
        self.open()
            .flat_map(|g| {
                self.gens[g]
                    .outstanding
                    .iter()
                    .map(move |&(s, op)| (g, s, op))
            })
            .collect()
    }

    fn state(&self) -> String {
        format!("{:?}", self.q)
    }

    fn check_invariants(&self) -> TestResult {
        prop_assert_eq!(self.q.children(), &self.members[..], "R-MEMBER-1 child set");
        let open = self.open().count();
        let sure = self
            .open()
            .filter(|&g| self.gens[g].must_be_live(&self.cfg))
            .count();
        let live = self.q.in_flight();
        prop_assert!(
            sure <= live && live <= open,
            "in_flight() = {} but between {} and {} requests are in flight",
            live,
            sure,
            open
        );
        prop_assert_eq!(
            self.q.is_idle(),
            open == 0,
            "is_idle() while {} requests have not completed",
            open
        );
        Ok(())
    }

    // -- polling ------------------------------------------------------------

    fn poll_one(&mut self) -> Result<bool, TestCaseError> {
        let Some(a) = self.q.poll_action() else {
            return Ok(false);
        };
        self.tick += 1;
        let tick = self.tick;
        let id = a.id();
        let Some(gi) = self.pending.get(&id).and_then(|d| d.front().copied()) else {
            return Err(TestCaseError::fail(format!(
                "{a:?}: request {id} is not in flight (never accepted, or already completed)"
            )));
        };
        let cfg = self.cfg;
        self.gens[gi].actions_polled += 1;
        match a {
            Action::Read {
                slot,
                child,
                offset,
                len,
                ..
            } => {
                self.child_op(gi, slot, child, ChildOp::Read, &a)?;
                let g = &self.gens[gi];
                prop_assert!(
                    matches!(g.req, Request::Read { .. }),
                    "{:?} for {:?}",
                    a,
                    g.req
                );
                prop_assert_eq!((offset, len), (g.offset, g.len), "{:?}", a);
                if cfg.read_pattern == ReadPattern::Fifo {
                    // R-FIFO-1: slot k only after slots 0..k failed.
                    let reads = g.polled.iter().filter(|(_, o)| *o == ChildOp::Read).count();
                    prop_assert_eq!(slot + 1, reads, "fifo read out of order: {:?}", a);
                    for s in 0..slot {
                        prop_assert!(
                            matches!(g.result_of(s), Some(Err(_))),
                            "fifo read {:?} before slot {} failed",
                            a,
                            s
                        );
                    }
                }
            }
            Action::Write {
                slot,
                child,
                offset,
                len,
                ..
            }
            | Action::WriteZeroes {
                slot,
                child,
                offset,
                len,
                ..
            } => {
                self.child_op(gi, slot, child, ChildOp::Write, &a)?;
                let g = &self.gens[gi];
                let kind_ok = match a {
                    Action::Write { .. } => matches!(g.req, Request::Write { .. }),
                    _ => matches!(g.req, Request::WriteZeroes { .. }),
                };
                prop_assert!(kind_ok, "{:?} for {:?}", a, g.req);
                prop_assert_eq!((offset, len), (g.offset, g.len), "{:?}", a);
                // Ordering (SPEC.md improvements): no child write while an
                // overlapping repair is under way.
                for r in &self.gens {
                    let repairing = r.outstanding.iter().any(|(_, o)| *o == ChildOp::Rewrite);
                    prop_assert!(
                        !(repairing && r.overlaps_data(g)),
                        "{:?} issued while {:?} is still rewriting an overlapping range",
                        a,
                        r.id
                    );
                }
                self.gens[gi].last_op_poll = Some(tick);
            }
            Action::Flush { slot, child, .. } => {
                self.child_op(gi, slot, child, ChildOp::Flush, &a)?;
                let g = &self.gens[gi];
                prop_assert_eq!(g.req, Request::Flush, "{:?}", a);
            }
            Action::Rewrite {
                slot,
                child,
                source,
                offset,
                len,
                ..
            } => {
                self.child_op(gi, slot, child, ChildOp::Rewrite, &a)?;
                let g = &self.gens[gi];
                prop_assert!(
                    matches!(g.req, Request::Read { .. }),
                    "{:?} for {:?}",
                    a,
                    g.req
                );
                prop_assert_eq!((offset, len), (g.offset, g.len), "{:?}", a);
                prop_assert!(g.result_of(slot).is_some(), "{:?}: slot not read yet", a);
                prop_assert_eq!(
                    g.result_of(source),
                    Some(Ok(())),
                    "{:?}: the source slot has no data",
                    a
                );
                // Ordering: a repair never follows a child write of an
                // overlapping request that was in flight during this read.
                for w in &self.gens {
                    if w.is_write()
                        && w.overlaps_data(g)
                        && w.last_op_poll.is_some_and(|t| t > g.submit_tick)
                    {
                        return Err(TestCaseError::fail(format!(
                            "{a:?} after {:?} wrote an overlapping range during the read",
                            w.id
                        )));
                    }
                }
                self.gens[gi].rewrites.push((slot, child, source));
            }
            Action::Answer { outcome, .. } => {
                prop_assert!(
                    cfg.early_quorum,
                    "{:?}: an early answer without early quorum",
                    a
                );
                let g = &mut self.gens[gi];
                prop_assert!(
                    g.answered.is_none(),
                    "{:?}: answered twice (first {:?})",
                    a,
                    g.answered
                );
                prop_assert_eq!(
                    Some(outcome),
                    g.answer_due.map(|(o, _)| o),
                    "{:?}: not the answer the model owes",
                    a
                );
                g.answered = Some(outcome);
            }
            Action::Event { event, .. } => {
                let g = &self.gens[gi];
                if let Event::ReportBad { child, .. } = event {
                    prop_assert!(
                        g.children.contains(&child),
                        "{:?} names a child outside the request",
                        event
                    );
                }
                self.gens[gi].events.push(event);
            }
            Action::Complete { outcome, .. } => {
                let g = &self.gens[gi];
                prop_assert!(
                    g.outstanding.is_empty(),
                    "{:?} completed with child operations outstanding: {:?}",
                    id,
                    g.outstanding
                );
                prop_assert_eq!(
                    g.answered,
                    g.answer_due.map(|(o, _)| o),
                    "{:?}: the answer owed was not polled before the completion",
                    id
                );
                // Early quorum: a write overlapping the read submitted
                // after the answer, before the stragglers were settled.
                let quiet = g.answer_due.is_some_and(|(_, at)| {
                    self.gens.iter().any(|w| {
                        w.is_write()
                            && w.overlaps_loose(g)
                            && w.submit_tick > at
                            && w.submit_tick < g.decide_tick
                    })
                });
                let (o, events, rewrites) = g.expected(&cfg, quiet)?;
                prop_assert_eq!(outcome, o, "{:?} ({:?}) outcome", id, g.req);
                prop_assert_eq!(&g.events, &events, "{:?} ({:?}) events", id, g.req);
                // A read that overlapped a write may skip its repair.
                let may_skip = self.gens.iter().any(|w| {
                    w.is_write()
                        && w.overlaps_loose(g)
                        && w.submit_tick < g.decide_tick
                        && w.complete_tick.is_none_or(|c| c > g.submit_tick)
                });
                if !(may_skip && g.rewrites.is_empty()) {
                    prop_assert_eq!(&g.rewrites, &rewrites, "{:?} ({:?}) rewrites", id, g.req);
                }
                let g = &mut self.gens[gi];
                g.outcome = Some(outcome);
                g.complete_tick = Some(tick);
                let d = self.pending.get_mut(&id).expect("pending");
                d.pop_front();
                if d.is_empty() {
                    self.pending.remove(&id);
                }
            }
        }
        Ok(true)
    }

    /// Common checks of a polled child operation.
    fn child_op(
        &mut self,
        gi: usize,
        slot: usize,
        child: ChildId,
        op: ChildOp,
        a: &Action,
    ) -> TestResult {
        let g = &mut self.gens[gi];
        prop_assert!(slot < g.children.len(), "{:?}: no such slot", a);
        prop_assert_eq!(child, g.children[slot], "{:?}: R-MEMBER-4", a);
        prop_assert!(
            !g.polled.contains(&(slot, op)),
            "{:?} issued twice in one request",
            a
        );
        g.polled.push((slot, op));
        g.outstanding.push((slot, op));
        Ok(())
    }

    fn poll_all(&mut self) -> TestResult {
        let mut n = 0;
        while self.poll_one()? {
            n += 1;
            prop_assert!(n < 1_000_000, "poll_action never runs dry");
        }
        Ok(())
    }

    // -- inputs -------------------------------------------------------------

    fn submit(&mut self, id: RequestId, req: Request) -> TestResult {
        let (offset, len) = req.range();
        let invalid = offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64);
        let newest = self.newest(id);
        let dup_for_sure = newest.is_some_and(|g| self.gens[g].must_be_live(&self.cfg));
        let sure_live = self
            .open()
            .filter(|&g| self.gens[g].must_be_live(&self.cfg))
            .count();
        let before = self.state();
        let r = self.q.submit(id, req);
        self.used_ids.push(id);
        if invalid {
            prop_assert_eq!(r, Err(Error::InvalidRange { offset, len }));
        } else if dup_for_sure {
            prop_assert_eq!(r, Err(Error::DuplicateId(id)));
        } else if newest.is_none() {
            prop_assert_ne!(
                r,
                Err(Error::DuplicateId(id)),
                "no request {} in flight",
                id
            );
        }
        // The documented capacity rule (quorum.rs): a request reserves
        // `3n + 2` actions. What the core holds is at most what the open
        // requests can still produce, so when that and this request fit,
        // and fewer than R requests are open, there is no reason for Busy.
        let worst: usize = self
            .open()
            .map(|g| {
                let g = &self.gens[g];
                (3 * g.children.len() + 2).saturating_sub(g.actions_polled)
            })
            .sum();
        let need = 3 * self.members.len() + 2;
        if !invalid && newest.is_none() && self.open().count() < R && worst + need <= A {
            prop_assert_eq!(
                r,
                Ok(()),
                "refused with room: {} open, at most {} actions held, {} needed, A = {}",
                self.open().count(),
                worst,
                need,
                A
            );
        }
        if !invalid && !dup_for_sure && sure_live >= R {
            // DuplicateId, when it applies, is checked first.
            prop_assert!(
                r == Err(Error::Busy) || (newest.is_some() && r == Err(Error::DuplicateId(id))),
                "{} requests in flight, R = {}, submit gave {:?}",
                sure_live,
                R,
                r
            );
        }
        match r {
            Err(Error::Busy) => {
                prop_assert!(
                    self.open().count() > 0,
                    "Busy although every request has completed"
                );
            }
            Err(Error::InvalidRange { .. } | Error::DuplicateId(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("submit: unexpected {e:?}"))),
            Ok(()) => {}
        }
        if r.is_err() {
            prop_assert_eq!(self.state(), before, "a refused submit changed the core");
            return Ok(());
        }
        self.tick += 1;
        let n = self.members.len();
        self.gens.push(Gen {
            id,
            req,
            offset,
            len,
            children: self.members.clone(),
            submit_tick: self.tick,
            polled: Vec::new(),
            outstanding: Vec::new(),
            done: Vec::new(),
            results: Vec::new(),
            bufs: vec![None; n],
            events: Vec::new(),
            rewrites: Vec::new(),
            decide_tick: u64::MAX,
            last_op_poll: None,
            actions_polled: 0,
            complete_tick: None,
            outcome: None,
            answer_due: None,
            answered: None,
        });
        self.pending
            .entry(id)
            .or_default()
            .push_back(self.gens.len() - 1);
        Ok(())
    }

    /// Completes a polled, outstanding child operation the way a correct
    /// driver would, with the result `c` asks for where it can.
    fn complete(&mut self, gi: usize, slot: usize, op: ChildOp, c: Choice) -> TestResult {
        let cfg = self.cfg;
        let g = &mut self.gens[gi];
        let id = g.id;
        let res = if c.ok { Ok(()) } else { Err(c.errno) };
        let r = match op {
            ChildOp::Read => {
                let fifo = cfg.read_pattern == ReadPattern::Fifo;
                // A huge read has no buffer: say Ok only where the core will
                // not look at the data.
                let can_ok = g.len <= MAX_BUF || (fifo && !(cfg.fifo_rewrite_failed && slot > 0));
                let res = if can_ok { res } else { Err(c.errno) };
                if res.is_ok() && g.len <= MAX_BUF {
                    g.bufs[slot] = Some(pattern(c.sym, g.len));
                }
                g.results.push((slot, res));
                self.q.handle_read(id, slot, res, &Bufs::new(&g.bufs))
            }
            ChildOp::Write => {
                g.results.push((slot, res));
                self.q.handle_write(id, slot, res)
            }
            ChildOp::Flush => {
                g.results.push((slot, res));
                self.q.handle_flush(id, slot, res)
            }
            ChildOp::Rewrite => self.q.handle_rewrite(id, slot, res),
        };
        prop_assert_eq!(
            r,
            Ok(()),
            "a valid completion ({:?} slot {} {:?}) was refused",
            id,
            slot,
            op
        );
        self.tick += 1;
        let g = &mut self.gens[gi];
        g.outstanding.retain(|&x| x != (slot, op));
        g.done.push((slot, op));
        if op != ChildOp::Rewrite {
            g.decide_tick = self.tick;
        }
        // Early quorum: a success that is not the request's last answers
        // once `threshold` successes hold its bytes; the answer names the
        // group's lowest slot.
        let succeeded = g.results.last() == Some(&(slot, Ok(())));
        if op == ChildOp::Read
            && succeeded
            && cfg.early_quorum
            && g.answer_due.is_none()
            && g.results.len() < g.children.len()
        {
            let mine = g.bufs[slot].as_deref();
            let mut group: Vec<usize> = g
                .results
                .iter()
                .filter(|(s, r)| r.is_ok() && g.bufs[*s].as_deref() == mine)
                .map(|(s, _)| *s)
                .collect();
            group.sort_unstable();
            if group.len() >= cfg.threshold {
                let outcome = Outcome::Read {
                    slot: group[0],
                    child: g.children[group[0]],
                };
                g.answer_due = Some((outcome, self.tick));
            }
        }
        Ok(())
    }

    /// A completion call with the given shape, for misuse.
    fn call(
        &mut self,
        id: RequestId,
        slot: usize,
        op: ChildOp,
        res: Result<(), Errno>,
        gi: Option<usize>,
    ) -> Result<(), Error> {
        match op {
            ChildOp::Read => match gi {
                Some(gi) => self
                    .q
                    .handle_read(id, slot, res, &Bufs::new(&self.gens[gi].bufs)),
                None => self.q.handle_read(id, slot, res, &NoBuffers),
            },
            ChildOp::Write => self.q.handle_write(id, slot, res),
            ChildOp::Flush => self.q.handle_flush(id, slot, res),
            ChildOp::Rewrite => self.q.handle_rewrite(id, slot, res),
        }
    }

    fn misuse(&mut self, m: &Misuse) -> TestResult {
        let before = self.state();
        match *m {
            Misuse::UnknownId { id, op, slot, ok } => {
                let id = RequestId(id);
                if self.pending.contains_key(&id) {
                    return Ok(());
                }
                let res = if ok { Ok(()) } else { Err(Errno::EIO) };
                let r = self.call(id, slot, child_op_of(op), res, None);
                prop_assert_eq!(r, Err(Error::UnknownRequest(id)));
            }
            Misuse::BadSlot { pick, extra, op } => {
                let cands: Vec<usize> = self
                    .pending
                    .values()
                    .filter_map(|d| d.back().copied())
                    .collect();
                let mut cands = cands;
                cands.sort_unstable();
                let Some(&gi) = cands.get(pick % cands.len().max(1)) else {
                    return Ok(());
                };
                let g = &self.gens[gi];
                let (id, slot, live) = (
                    g.id,
                    g.children.len().saturating_add(extra),
                    g.must_be_live(&self.cfg),
                );
                let r = self.call(id, slot, child_op_of(op), Ok(()), Some(gi));
                if live {
                    prop_assert_eq!(r, Err(Error::NoSuchSlot { id, slot }));
                } else {
                    prop_assert!(
                        r == Err(Error::NoSuchSlot { id, slot })
                            || r == Err(Error::UnknownRequest(id)),
                        "{:?}",
                        r
                    );
                }
            }
            Misuse::WrongOp { pick, op } => {
                let ops = self.outstanding_ops();
                let Some(&(gi, slot, real)) = ops.get(pick % ops.len().max(1)) else {
                    return Ok(());
                };
                let mut wrong = child_op_of(op);
                if wrong == real {
                    wrong = child_op_of(op.wrapping_add(1));
                }
                let id = self.gens[gi].id;
                // An error result: the buffers are not looked at.
                let r = self.call(id, slot, wrong, Err(Errno::EIO), Some(gi));
                prop_assert_eq!(
                    r,
                    Err(Error::UnexpectedCompletion {
                        id,
                        slot,
                        op: wrong
                    })
                );
            }
            Misuse::Duplicate { pick, ok } => {
                let mut done: Vec<(usize, usize, ChildOp)> = Vec::new();
                for d in self.pending.values() {
                    let gi = *d.back().expect("non-empty");
                    done.extend(self.gens[gi].done.iter().map(|&(s, o)| (gi, s, o)));
                }
                done.sort_unstable_by_key(|&(g, s, o)| (g, s, o as u8));
                let Some(&(gi, slot, op)) = done.get(pick % done.len().max(1)) else {
                    return Ok(());
                };
                let g = &self.gens[gi];
                let (id, live) = (g.id, g.must_be_live(&self.cfg));
                let res = if ok { Ok(()) } else { Err(Errno::EIO) };
                let r = self.call(id, slot, op, res, Some(gi));
                let unexpected = Err(Error::UnexpectedCompletion { id, slot, op });
                if live {
                    prop_assert_eq!(r, unexpected);
                } else {
                    prop_assert!(
                        r == unexpected || r == Err(Error::UnknownRequest(id)),
                        "second completion: {:?}",
                        r
                    );
                }
            }
            Misuse::BadBuffer { pick, how } => {
                let reads: Vec<(usize, usize)> = self
                    .outstanding_ops()
                    .into_iter()
                    .filter(|&(_, _, o)| o == ChildOp::Read)
                    .map(|(g, s, _)| (g, s))
                    .collect();
                let Some(&(gi, slot)) = reads.get(pick % reads.len().max(1)) else {
                    return Ok(());
                };
                let g = &self.gens[gi];
                let n = g.children.len();
                // Only where the core must look at the buffers.
                let checked = match self.cfg.read_pattern {
                    ReadPattern::Quorum => g.results.len() == n - 1,
                    ReadPattern::Fifo => self.cfg.fifo_rewrite_failed && slot > 0,
                };
                if !checked {
                    return Ok(());
                }
                let len = g.len;
                let wrong: Option<Vec<u8>> = match how % 3 {
                    0 => None,
                    1 if len > 0 && len <= MAX_BUF => Some(vec![0; len as usize - 1]),
                    1 => Some(vec![0; 7.min(len as usize + 1)]),
                    _ if len < MAX_BUF => Some(vec![0; len as usize + 1]),
                    _ => Some(Vec::new()),
                };
                let got = wrong.as_ref().map(Vec::len);
                let id = g.id;
                let r = if how % 4 == 3 {
                    // No buffers at all: the first slot looked at is the
                    // lowest successful one, this one included.
                    let first = g
                        .results
                        .iter()
                        .filter(|(_, r)| r.is_ok())
                        .map(|(s, _)| *s)
                        .chain([slot])
                        .filter(|_| self.cfg.read_pattern == ReadPattern::Quorum)
                        .min()
                        .unwrap_or(slot);
                    let r = self.q.handle_read(id, slot, Ok(()), &NoBuffers);
                    prop_assert_eq!(
                        r,
                        Err(Error::BadBuffer {
                            id,
                            slot: first,
                            expected: len,
                            got: None
                        })
                    );
                    r
                } else {
                    let bufs = Bufs {
                        bufs: &g.bufs,
                        replace: Some((slot, wrong.as_deref())),
                    };
                    let r = self.q.handle_read(id, slot, Ok(()), &bufs);
                    // Slots below this one hold good data, or none needed.
                    prop_assert_eq!(
                        r,
                        Err(Error::BadBuffer {
                            id,
                            slot,
                            expected: len,
                            got
                        })
                    );
                    r
                };
                prop_assert!(r.is_err());
            }
            Misuse::DuplicateSubmit { pick, offset } => {
                let live: Vec<usize> = self
                    .open()
                    .filter(|&g| self.gens[g].must_be_live(&self.cfg))
                    .collect();
                let Some(&gi) = live.get(pick % live.len().max(1)) else {
                    return Ok(());
                };
                let id = self.gens[gi].id;
                let r = self.q.submit(id, Request::Read { offset, len: 512 });
                prop_assert_eq!(r, Err(Error::DuplicateId(id)));
            }
            Misuse::RemoveUnknown { child } => {
                let child = ChildId(child);
                if self.members.contains(&child) {
                    return Ok(());
                }
                prop_assert_eq!(
                    self.q.remove_child(child),
                    Err(MemberError::NoSuchChild(child))
                );
            }
        }
        prop_assert_eq!(self.state(), before, "misuse {:?} changed the core", m);
        Ok(())
    }

    fn add_child(&mut self) -> TestResult {
        let expected = if self.cfg.blkverify {
            Err(MemberError::Blkverify) // R-MEMBER-3
        } else if self.members.len() == C {
            Err(MemberError::TooManyChildren)
        } else {
            Ok(ChildId(self.next)) // R-MEMBER-1
        };
        let r = self.q.add_child();
        prop_assert_eq!(r, expected);
        if let Ok(c) = r {
            self.members.push(c);
            self.next += 1;
        }
        Ok(())
    }

    fn remove_child(&mut self, pick: usize) -> TestResult {
        let child = self.members[pick % self.members.len()];
        let expected = if self.members.len() <= self.cfg.threshold {
            // R-MEMBER-2
            Err(MemberError::BelowThreshold {
                threshold: self.cfg.threshold,
            })
        } else {
            Ok(())
        };
        let r = self.q.remove_child(child);
        prop_assert_eq!(r, expected);
        if r.is_ok() {
            self.members.retain(|&c| c != child);
            if self.next.checked_sub(1) == Some(child.0) {
                self.next -= 1;
            }
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> TestResult {
        match *step {
            Step::Submit {
                kind,
                offset,
                len,
                id,
            } => {
                // Reads are where the votes are: half of all requests.
                let req = match kind % 6 {
                    0..=2 => Request::Read { offset, len },
                    3 => Request::Write { offset, len },
                    4 => Request::WriteZeroes { offset, len },
                    _ => Request::Flush,
                };
                let id = match id {
                    IdPick::Small(v) | IdPick::Any(v) => RequestId(v),
                    IdPick::Reuse(i) => match self.used_ids.get(i % self.used_ids.len().max(1)) {
                        Some(&id) => id,
                        None => RequestId(0),
                    },
                };
                self.submit(id, req)?;
            }
            Step::Complete { pick, choice } => {
                let ops = self.outstanding_ops();
                if let Some(&(gi, slot, op)) = ops.get(pick % ops.len().max(1)) {
                    self.complete(gi, slot, op, choice)?;
                }
            }
            Step::Poll { count } => {
                for _ in 0..count {
                    if !self.poll_one()? {
                        break;
                    }
                }
            }
            Step::PollAll => self.poll_all()?,
            Step::CompleteAll { seed } => {
                // A burst: every known child operation completes before the
                // driver polls again, the most actions the queue must hold.
                let mut ops = self.outstanding_ops();
                let mut r = seed | 1;
                while !ops.is_empty() {
                    r = r.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
                    let (gi, slot, op) = ops.remove((r >> 33) as usize % ops.len());
                    let choice = Choice {
                        ok: (r >> 7) % 4 != 0,
                        sym: (r >> 11) as u8 % 4,
                        errno: ERRNOS[(r >> 17) as usize % ERRNOS.len()],
                    };
                    self.complete(gi, slot, op, choice)?;
                }
            }
            Step::Misuse(ref m) => self.misuse(m)?,
            Step::AddChild => self.add_child()?,
            Step::RemoveChild { pick } => self.remove_child(pick)?,
        }
        self.check_invariants()
    }

    /// Polls and completes everything, correctly, until the core is idle.
    fn drain(&mut self) -> TestResult {
        for _ in 0..100_000 {
            self.poll_all()?;
            let ops = self.outstanding_ops();
            if ops.is_empty() {
                break;
            }
            let i = (self.rand() % ops.len() as u64) as usize;
            let (gi, slot, op) = ops[i];
            let r = self.rand();
            let choice = Choice {
                ok: !r.is_multiple_of(3),
                sym: (r >> 8) as u8 % 4,
                errno: ERRNOS[(r >> 16) as usize % ERRNOS.len()],
            };
            self.complete(gi, slot, op, choice)?;
            self.check_invariants()?;
        }
        let never: Vec<(RequestId, Request)> = self
            .open()
            .map(|g| (self.gens[g].id, self.gens[g].req))
            .collect();
        prop_assert!(
            never.is_empty(),
            "requests never completed: {:?}, in_flight() = {}",
            never,
            self.q.in_flight()
        );
        prop_assert_eq!(self.q.in_flight(), 0);
        prop_assert!(self.q.is_idle());
        prop_assert_eq!(self.q.poll_action(), None);
        // Every accepted request completed exactly once (a second Complete
        // would have found nothing in flight).
        prop_assert!(self.gens.iter().all(|g| g.outcome.is_some()));
        Ok(())
    }
}

fn run<const C: usize, const R: usize, const A: usize>(
    config: Config,
    steps: &[Step],
    seed: u64,
) -> TestResult {
    let mut h = Harness::<C, R, A>::new(config, seed)?;
    h.check_invariants()?;
    for s in steps {
        h.step(s)?;
    }
    h.drain()?;
    // Busy never sticks: an idle core takes the next request.
    h.submit(RequestId(u64::MAX), Request::Flush)?;
    prop_assert_eq!(h.open().count(), 1, "an idle core refused a request");
    h.drain()
}

/// Fills the core with requests (polling their child operations each time)
/// until it says `Busy`, then answers every child operation at once before
/// polling again: the most actions the queue ever has to hold. With
/// threshold 1 and rewrite on, reads report and rewrite nearly every child.
fn fill_then_burst<const C: usize, const R: usize, const A: usize>(
    config: Config,
    kinds: &[u8],
    seed: u64,
) -> TestResult {
    let mut steps = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        steps.push(Step::Submit {
            kind,
            offset: 512 * (i as u64 % 3),
            len: 1024,
            id: IdPick::Any(i as u64),
        });
        steps.push(Step::PollAll);
    }
    steps.push(Step::CompleteAll { seed });
    run::<C, R, A>(config, &steps, seed)
}

// ---------------------------------------------------------------------------
// Generators.

#[derive(Clone, Copy, Debug)]
enum IdPick {
    /// From a handful of ids, so ids collide and get reused.
    Small(u64),
    Any(u64),
    /// An id submitted before (accepted or not).
    Reuse(usize),
}

#[derive(Clone, Debug)]
enum Misuse {
    /// A completion for an id with no request in flight.
    UnknownId {
        id: u64,
        op: u8,
        slot: usize,
        ok: bool,
    },
    /// A slot the request does not have.
    BadSlot { pick: usize, extra: usize, op: u8 },
    /// An outstanding child operation completed as another kind.
    WrongOp { pick: usize, op: u8 },
    /// A second completion.
    Duplicate { pick: usize, ok: bool },
    /// A successful read whose buffer is missing or of the wrong length,
    /// given where the core must look at it.
    BadBuffer { pick: usize, how: u8 },
    /// Submitting an id that is certainly in flight.
    DuplicateSubmit { pick: usize, offset: u64 },
    /// Removing a child that does not exist (R-MEMBER-3).
    RemoveUnknown { child: u32 },
}

#[derive(Clone, Debug)]
enum Step {
    Submit {
        kind: u8,
        offset: u64,
        len: u64,
        id: IdPick,
    },
    Complete {
        pick: usize,
        choice: Choice,
    },
    Poll {
        count: u8,
    },
    PollAll,
    CompleteAll {
        seed: u64,
    },
    Misuse(Misuse),
    AddChild,
    RemoveChild {
        pick: usize,
    },
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..4096,
        4 => (0u64..8).prop_map(|s| s * 512),
        1 => (0u64..4).prop_map(|d| i64::MAX as u64 - d),
        1 => (0u64..4).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=1100,
        4 => (0u64..=3).prop_map(|s| s * 512),
        1 => Just(1u64 << 40),
        1 => (0u64..4).prop_map(|d| i64::MAX as u64 - d),
        1 => (0u64..4).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

fn choice() -> impl Strategy<Value = Choice> {
    (prop::bool::weighted(0.7), 0u8..4, select(ERRNOS.to_vec()))
        .prop_map(|(ok, sym, errno)| Choice { ok, sym, errno })
}

fn misuse() -> impl Strategy<Value = Misuse> {
    prop_oneof![
        (any::<u64>(), any::<u8>(), 0usize..20, any::<bool>())
            .prop_map(|(id, op, slot, ok)| Misuse::UnknownId { id, op, slot, ok }),
        (
            any::<usize>(),
            select(vec![0usize, 1, 2, 63, 64, usize::MAX]),
            any::<u8>()
        )
            .prop_map(|(pick, extra, op)| Misuse::BadSlot { pick, extra, op }),
        (any::<usize>(), any::<u8>()).prop_map(|(pick, op)| Misuse::WrongOp { pick, op }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, ok)| Misuse::Duplicate { pick, ok }),
        (any::<usize>(), any::<u8>()).prop_map(|(pick, how)| Misuse::BadBuffer { pick, how }),
        (any::<usize>(), 0u64..4096)
            .prop_map(|(pick, offset)| Misuse::DuplicateSubmit { pick, offset }),
        (0u32..40).prop_map(|child| Misuse::RemoveUnknown { child }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let id = prop_oneof![
        4 => (0u64..6).prop_map(IdPick::Small),
        1 => any::<u64>().prop_map(IdPick::Any),
        2 => any::<usize>().prop_map(IdPick::Reuse),
    ];
    prop_oneof![
        5 => (0u8..6, offset(), len(), id)
            .prop_map(|(kind, offset, len, id)| Step::Submit { kind, offset, len, id }),
        8 => (any::<usize>(), choice()).prop_map(|(pick, choice)| Step::Complete { pick, choice }),
        3 => (1u8..8).prop_map(|count| Step::Poll { count }),
        1 => Just(Step::PollAll),
        1 => any::<u64>().prop_map(|seed| Step::CompleteAll { seed }),
        4 => misuse().prop_map(Step::Misuse),
        1 => Just(Step::AddChild),
        1 => any::<usize>().prop_map(|pick| Step::RemoveChild { pick }),
    ]
}

/// 1..=`max` children, threshold 1..=n, quorum or fifo, rewrite on or off,
/// blkverify only where QEMU accepts it (2 children, threshold 2, no
/// rewrite; or fifo, which ignores it, R-CFG-6).
fn config(max: usize) -> impl Strategy<Value = Config> {
    let general = (1usize..=max)
        .prop_flat_map(|n| {
            (
                Just(n),
                1..=n,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(|(n, t, fifo, rewrite, blk, fifo_rewrite, early)| {
            let pattern = if fifo {
                ReadPattern::Fifo
            } else {
                ReadPattern::Quorum
            };
            Config::new(n, t)
                .with_read_pattern(pattern)
                .with_rewrite_corrupted(rewrite)
                .with_blkverify(blk && fifo)
                .with_fifo_rewrite_failed(fifo_rewrite)
                .with_early_quorum(early)
        });
    // Early quorum is ignored with blkverify (it must see both children).
    let blkverify = (any::<bool>(), any::<bool>()).prop_map(|(fifo_rewrite, early)| {
        Config::new(2, 2)
            .with_blkverify(true)
            .with_fifo_rewrite_failed(fifo_rewrite)
            .with_early_quorum(early)
    });
    prop_oneof![6 => general, 1 => blkverify]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Random use, misuse included, with the default capacities.
    #[test]
    fn random_use_never_panics_and_finishes_every_request(
        cfg in config(16),
        steps in vec(step(), 0..120),
        seed in any::<u64>(),
    ) {
        run::<16, 32, 1024>(cfg, &steps, seed)?;
    }

    /// The same with a queue that holds one 16-child request at most
    /// (`A = 3C + 2`) and 4 requests in flight: `Busy` is common.
    #[test]
    fn random_use_small_queue_busy_paths(
        cfg in config(16),
        steps in vec(step(), 0..120),
        seed in any::<u64>(),
    ) {
        run::<16, 4, 50>(cfg, &steps, seed)?;
    }

    /// The same with 4 children at most (adding hits the capacity) and 2
    /// requests in flight.
    #[test]
    fn random_use_tiny_capacities(
        cfg in config(4),
        steps in vec(step(), 0..120),
        seed in any::<u64>(),
    ) {
        run::<4, 2, 14>(cfg, &steps, seed)?;
    }
}

/// A configuration for [`fill_then_burst`]: up to `max` children, threshold
/// 1, rewrite on (or fifo with its repair), early quorum on or off (an
/// answer is one more action in the reservation).
fn burst_config(max: usize) -> impl Strategy<Value = Config> {
    (1usize..=max, any::<bool>(), any::<bool>()).prop_map(|(n, fifo, early)| {
        let pattern = if fifo {
            ReadPattern::Fifo
        } else {
            ReadPattern::Quorum
        };
        Config::new(n, 1)
            .with_read_pattern(pattern)
            .with_rewrite_corrupted(true)
            .with_fifo_rewrite_failed(true)
            .with_early_quorum(early)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The reservation holds: however full, the queue never overflows.
    #[test]
    fn full_core_answered_at_once_never_overflows(
        cfg in burst_config(16),
        kinds in vec(prop_oneof![3 => Just(0u8), 1 => 3u8..6], 6),
        seed in any::<u64>(),
    ) {
        fill_then_burst::<16, 4, 50>(cfg, &kinds, seed)?;
    }

    /// The same with 4 children and 2 requests at most.
    #[test]
    fn full_tiny_core_answered_at_once_never_overflows(
        cfg in burst_config(4),
        kinds in vec(prop_oneof![3 => Just(0u8), 1 => 3u8..6], 4),
        seed in any::<u64>(),
    ) {
        fill_then_burst::<4, 2, 14>(cfg, &kinds, seed)?;
    }
}

// ---------------------------------------------------------------------------
// (b) Completion order does not change the outcome.

#[derive(Clone, Debug)]
struct OrderCase {
    cfg: Config,
    req: Request,
    /// Each child's answer: its content symbol, or its error.
    answers: Vec<Result<u8, Errno>>,
    /// Two completion orders of the child operations, and of the rewrites.
    orders: [Vec<usize>; 2],
    rewrite_orders: [Vec<usize>; 2],
    rewrite_ok: Vec<bool>,
}

#[derive(Debug)]
struct Trace {
    outcome: Outcome,
    events: Vec<Event>,
    rewrites: Vec<(usize, ChildId, usize)>,
}

fn order_case() -> impl Strategy<Value = OrderCase> {
    (1usize..=8)
        .prop_flat_map(|n| {
            let perm = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
            let answer = prop_oneof![
                3 => (0u8..3).prop_map(Ok),
                1 => select(ERRNOS[..3].to_vec()).prop_map(Err),
            ];
            (
                (Just(n), 1..=n, any::<bool>(), any::<bool>()),
                (0u8..4, 0u64..2048, 0u64..=64),
                vec(answer, n),
                (perm.clone(), perm.clone(), perm.clone(), perm),
                vec(any::<bool>(), n),
            )
        })
        .prop_map(
            |((n, t, rewrite, blk), (kind, offset, len), answers, (o1, o2, r1, r2), rewrite_ok)| {
                let req = match kind {
                    0 | 1 => Request::Read { offset, len },
                    2 => Request::Write { offset, len },
                    _ => Request::Flush,
                };
                let blk = blk && n == 2 && t == 2 && !rewrite;
                OrderCase {
                    cfg: Config::new(n, t)
                        .with_rewrite_corrupted(rewrite)
                        .with_blkverify(blk),
                    req,
                    answers,
                    orders: [o1, o2],
                    rewrite_orders: [r1, r2],
                    rewrite_ok,
                }
            },
        )
}

/// Runs `case` completing child operations in `orders[which]` and rewrites in
/// `rewrite_orders[which]`.
fn run_in_order(case: &OrderCase, which: usize) -> Result<Trace, TestCaseError> {
    let mut q: Quorum = Quorum::new(case.cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let id = RequestId(7);
    let len = case.req.range().1;
    let bufs: Vec<Option<Vec<u8>>> = case
        .answers
        .iter()
        .map(|a| a.ok().map(|s| pattern(s, len)))
        .collect();
    q.submit(id, case.req)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut issued: Vec<(usize, ChildOp)> = Vec::new();
    let mut events = Vec::new();
    let mut rewrites = Vec::new();
    let mut outcome = None;
    let mut poll = |q: &mut Quorum, issued: &mut Vec<(usize, ChildOp)>| -> TestResult {
        while let Some(a) = q.poll_action() {
            prop_assert!(outcome.is_none(), "{:?} after the completion", a);
            match a {
                Action::Read { slot, .. } => issued.push((slot, ChildOp::Read)),
                Action::Write { slot, .. } | Action::WriteZeroes { slot, .. } => {
                    issued.push((slot, ChildOp::Write))
                }
                Action::Flush { slot, .. } => issued.push((slot, ChildOp::Flush)),
                Action::Rewrite {
                    slot,
                    child,
                    source,
                    ..
                } => {
                    issued.push((slot, ChildOp::Rewrite));
                    rewrites.push((slot, child, source));
                }
                Action::Event { event, .. } => events.push(event),
                Action::Answer { .. } => {
                    prop_assert!(false, "an early answer without early quorum")
                }
                Action::Complete { outcome: o, .. } => outcome = Some(o),
            }
        }
        Ok(())
    };
    poll(&mut q, &mut issued)?;
    let op = op_of(case.req);
    for &slot in &case.orders[which] {
        let pos = issued.iter().position(|&x| x == (slot, op));
        prop_assert!(pos.is_some(), "slot {} was not issued", slot);
        issued.remove(pos.unwrap_or(0));
        let res = case.answers[slot].map(|_| ());
        let r = match op {
            ChildOp::Read => q.handle_read(id, slot, res, &Bufs::new(&bufs)),
            ChildOp::Write => q.handle_write(id, slot, res),
            _ => q.handle_flush(id, slot, res),
        };
        prop_assert_eq!(r, Ok(()));
        poll(&mut q, &mut issued)?;
    }
    for &slot in &case.rewrite_orders[which] {
        if let Some(pos) = issued.iter().position(|&x| x == (slot, ChildOp::Rewrite)) {
            issued.remove(pos);
            let res = if case.rewrite_ok[slot] {
                Ok(())
            } else {
                Err(Errno::EIO)
            };
            prop_assert_eq!(q.handle_rewrite(id, slot, res), Ok(()));
            poll(&mut q, &mut issued)?;
        }
    }
    prop_assert!(issued.is_empty(), "never completed: {:?}", issued);
    prop_assert!(q.is_idle());
    match outcome {
        Some(outcome) => Ok(Trace {
            outcome,
            events,
            rewrites,
        }),
        None => Err(TestCaseError::fail("the request never completed")),
    }
}

fn is_error_report(e: &Event) -> bool {
    matches!(e, Event::ReportBad { error: Some(_), .. })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Two completion orders, same outcome, same content-mismatch reports in
    /// the same (R-VOTE-4) order, same FAILURE, same rewrites; I/O error
    /// reports are the same set, each run in its own completion order.
    #[test]
    fn outcome_does_not_depend_on_completion_order(case in order_case()) {
        let a = run_in_order(&case, 0)?;
        let b = run_in_order(&case, 1)?;
        prop_assert_eq!(a.outcome, b.outcome);
        prop_assert_eq!(&a.rewrites, &b.rewrites);
        let decided = |t: &Trace| -> Vec<Event> {
            t.events.iter().filter(|e| !is_error_report(e)).copied().collect()
        };
        prop_assert_eq!(decided(&a), decided(&b));
        for (t, order) in [(&a, &case.orders[0]), (&b, &case.orders[1])] {
            // Error reports come first, as the children fail, then what the
            // decision emits.
            let k = t.events.iter().take_while(|e| is_error_report(e)).count();
            prop_assert!(
                t.events[k..].iter().all(|e| !is_error_report(e)),
                "an error report after the decision: {:?}",
                t.events
            );
            let reported: Vec<ChildId> = t.events[..k]
                .iter()
                .map(|e| match e {
                    Event::ReportBad { child, .. } => *child,
                    Event::Failure { .. } => ChildId(u32::MAX),
                })
                .collect();
            let failed_in_order: Vec<ChildId> = order
                .iter()
                .filter(|&&s| case.answers[s].is_err())
                .map(|&s| ChildId(s as u32))
                .collect();
            prop_assert_eq!(reported, failed_in_order);
        }
        let mut ea: Vec<String> = a.events.iter().map(|e| format!("{e:?}")).collect();
        let mut eb: Vec<String> = b.events.iter().map(|e| format!("{e:?}")).collect();
        ea.sort();
        eb.sort();
        prop_assert_eq!(ea, eb, "different multisets of events");
    }
}
