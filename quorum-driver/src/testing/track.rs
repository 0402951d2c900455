//! What the [`Checker`](super::Checker) remembers of one accepted request:
//! everything the core was told about it and everything it said, with the
//! logical time of each, so that the checks can ask "was this write in
//! flight while that read was undecided?".
//!
//! The checker sees the core only through its public API, so it cannot
//! always tell whether a request whose child operations are all answered
//! has been decided (its completion may be queued, not yet polled). The
//! predicates here say what is certain ([`Gen::must_be_live`]) and what is
//! possible ([`Gen::may_be_live`]); the checks accept both outcomes only in
//! between.

use quorum_proto::{
    ChildId, ChildOp, Config, Errno, Event, Extent, Outcome, ReadPattern, Request, RequestId,
};

use super::model::{Case, Rewrite};

/// One accepted submission ("generation": an id may be reused once the
/// core has let go of its previous request).
#[derive(Debug)]
pub(crate) struct Gen {
    pub(crate) id: RequestId,
    pub(crate) req: Request,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// The child set at submission (R-MEMBER-4).
    pub(crate) children: Vec<ChildId>,
    pub(crate) submit_tick: u64,
    /// Child operations polled, rewrites included, in poll order.
    pub(crate) polled: Vec<(usize, ChildOp)>,
    /// Polled and not yet completed.
    pub(crate) outstanding: Vec<(usize, ChildOp)>,
    /// Completed (accepted by the core) before they were polled.
    pub(crate) early: Vec<(usize, ChildOp)>,
    /// Completed, accepted by the core.
    pub(crate) done: Vec<(usize, ChildOp)>,
    /// Results of the child operations (not rewrites), in completion order,
    /// with the tick of each.
    pub(crate) results: Vec<(usize, Result<(), Errno>, u64)>,
    /// Ticks at which rewrites completed.
    pub(crate) rewrites_done: Vec<u64>,
    /// Read buffers by slot, as the driver last lent them.
    pub(crate) bufs: Vec<Option<Vec<u8>>>,
    /// Block status: each slot's answer, as the core accepted it.
    pub(crate) extents: Vec<Option<Extent>>,
    pub(crate) events: Vec<Event>,
    /// Rewrites polled, in poll order.
    pub(crate) rewrites: Vec<Rewrite>,
    /// When the last child result was given (the one that decides).
    pub(crate) decide_tick: u64,
    /// When a child write of this request was last polled while still to
    /// be done.
    pub(crate) last_write_poll: Option<u64>,
    /// Actions of this request polled so far, of any kind.
    pub(crate) actions_polled: usize,
    /// When its `Action::Complete` was polled, and what it said.
    pub(crate) complete_tick: Option<u64>,
    pub(crate) outcome: Option<Outcome>,
    /// Early quorum: the answer the core owes, and the tick of the
    /// completion that made it due.
    pub(crate) answer_due: Option<(Outcome, u64)>,
    /// The `Action::Answer` polled.
    pub(crate) answered: Option<Outcome>,
    /// When `cancel` was accepted (R-CANCEL-1).
    pub(crate) cancelled: Option<u64>,
    /// A read that an overlapping write was certainly in flight with while
    /// it was undecided: it must repair nothing (ordering, R-CANCEL-2).
    pub(crate) no_repair: bool,
    /// A later request took its id: the core has certainly let go of it.
    pub(crate) superseded: bool,
    /// Sync tracking (R-SYNC): slots stale on the request's chunks at
    /// submission (not read, not counted), the range was unsettled (the
    /// read settles), and a write's `Unsettle` made durable yet.
    pub(crate) skip: u64,
    pub(crate) settle: bool,
    pub(crate) marked: Option<bool>,
}

impl Gen {
    pub(crate) fn new(id: RequestId, req: Request, children: Vec<ChildId>, tick: u64) -> Self {
        let (offset, len) = req.range();
        let n = children.len();
        Gen {
            id,
            req,
            offset,
            len,
            children,
            submit_tick: tick,
            polled: Vec::new(),
            outstanding: Vec::new(),
            early: Vec::new(),
            done: Vec::new(),
            results: Vec::new(),
            rewrites_done: Vec::new(),
            bufs: vec![None; n],
            extents: vec![None; n],
            events: Vec::new(),
            rewrites: Vec::new(),
            decide_tick: u64::MAX,
            last_write_poll: None,
            actions_polled: 0,
            complete_tick: None,
            outcome: None,
            answer_due: None,
            answered: None,
            cancelled: None,
            no_repair: false,
            superseded: false,
            skip: 0,
            settle: false,
            marked: None,
        }
    }

    /// Whether the reference model of SPEC.md's first half judges this
    /// request: not when sync tracking changed who votes or what is
    /// rewritten (R-SYNC-1, R-SYNC-3..4); those are held to the structural
    /// contract and R-SYNC's own checks.
    pub(crate) fn modelled(&self) -> bool {
        self.skip == 0 && !self.settle && !matches!(self.req, Request::Resync { .. })
    }

    pub(crate) fn n(&self) -> usize {
        self.children.len()
    }

    pub(crate) fn is_read(&self) -> bool {
        matches!(self.req, Request::Read { .. } | Request::Resync { .. })
    }

    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self.req,
            Request::Write { .. } | Request::WriteZeroes { .. }
        )
    }

    /// A client read under `read-pattern=fifo` (a resync always votes).
    pub(crate) fn is_fifo_read(&self, cfg: &Config) -> bool {
        matches!(self.req, Request::Read { .. }) && cfg.read_pattern == ReadPattern::Fifo
    }

    /// R-SYNC-1: the slots a read or resync does not read (stale there).
    pub(crate) fn skipped(&self) -> usize {
        if self.is_read() {
            self.skip.count_ones() as usize
        } else {
            0
        }
    }

    /// R-SYNC-2: the core waits for `handle_marked` (also when cancelled).
    pub(crate) fn marking(&self) -> bool {
        self.marked == Some(false)
    }

    /// Its `Action::Complete` has not been polled yet.
    pub(crate) fn open(&self) -> bool {
        self.complete_tick.is_none()
    }

    /// The byte ranges share at least one byte.
    pub(crate) fn overlaps_data(&self, other: &Gen) -> bool {
        self.len > 0
            && other.len > 0
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }

    /// The ranges overlap as the core judges it (an empty range strictly
    /// inside another counts); flushes overlap nothing.
    pub(crate) fn overlaps_loose(&self, other: &Gen) -> bool {
        self.req != Request::Flush
            && other.req != Request::Flush
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }

    pub(crate) fn result_of(&self, slot: usize) -> Option<Result<(), Errno>> {
        self.results
            .iter()
            .find(|(s, _, _)| *s == slot)
            .map(|(_, r, _)| *r)
    }

    /// The results given before `tick`, without their ticks.
    pub(crate) fn results_before(&self, tick: u64) -> Vec<(usize, Result<(), Errno>)> {
        self.results
            .iter()
            .filter(|(_, _, t)| *t < tick)
            .map(|&(s, r, _)| (s, r))
            .collect()
    }

    /// The model's view of this request with `results`.
    pub(crate) fn case<'a>(
        &'a self,
        cfg: &'a Config,
        results: &'a [(usize, Result<(), Errno>)],
    ) -> Case<'a> {
        Case {
            config: cfg,
            request: self.req,
            children: &self.children,
            results,
            buffers: &self.bufs,
            extents: &self.extents,
            answer: self.answer_due.map(|(o, _)| o),
            quiet: false,
            repair: !self.no_repair,
        }
    }

    /// Every child result the request waits for is in (ignoring a cancel).
    pub(crate) fn results_complete(&self, cfg: &Config) -> bool {
        let n = self.n();
        // Stale slots are never read (R-SYNC-1); with fewer than `threshold`
        // others the read fails at once.
        let fresh = n - self.skipped().min(n);
        if self.is_read() && cfg.sync_chunk.is_some() && (fresh < cfg.threshold || fresh == 0) {
            return true;
        }
        if self.is_fifo_read(cfg) {
            self.results.iter().any(|(_, r, _)| r.is_ok()) || self.results.len() >= fresh
        } else {
            self.results.len() >= fresh || self.first_wave_decides(cfg)
        }
    }

    /// How many children a read reads at first: every one not stale
    /// there, but a resync of a settled range reads a quorum first — as
    /// many as `threshold` and more than half of them (R-SYNC-4).
    pub(crate) fn first_wave(&self, cfg: &Config) -> usize {
        let fresh = self.n() - self.skipped().min(self.n());
        if matches!(self.req, Request::Resync { .. }) && !self.settle {
            cfg.threshold.max(fresh / 2 + 1).min(fresh)
        } else {
            fresh
        }
    }

    /// A resync's first reads are in, all succeeded and agree: they decide
    /// and the other children are never read.
    pub(crate) fn first_wave_decides(&self, cfg: &Config) -> bool {
        let k = self.first_wave(cfg);
        if k == 0 || self.results.len() != k || self.results.iter().any(|(_, r, _)| r.is_err()) {
            return false;
        }
        let buf = |s: usize| self.bufs.get(s).and_then(Option::as_ref);
        let first = buf(self.results[0].0);
        first.is_some() && self.results.iter().all(|(s, _, _)| buf(*s) == first)
    }

    /// The core certainly holds this request (its id is taken, it counts
    /// against capacity): it waits for a child result the driver owes, or
    /// it was cancelled and a child operation it issued is still out.
    pub(crate) fn must_be_live(&self, cfg: &Config) -> bool {
        if self.superseded {
            return false;
        }
        if self.cancelled.is_some() {
            return !self.outstanding.is_empty() || self.marking();
        }
        self.open() && (!self.outstanding.is_empty() || !self.results_complete(cfg))
    }

    /// The core may still hold this request.
    pub(crate) fn may_be_live(&self) -> bool {
        !self.superseded
            && (self.open()
                || (self.cancelled.is_some() && (!self.outstanding.is_empty() || self.marking())))
    }

    /// Live for the caller: accepted, not cancelled, not completed.
    pub(crate) fn in_flight_for_sure(&self, cfg: &Config) -> bool {
        self.cancelled.is_none() && self.must_be_live(cfg)
    }

    /// Nothing is left to happen to it: completed for the caller and every
    /// child operation it issued ended.
    pub(crate) fn finished(&self) -> bool {
        !self.open() && self.outstanding.is_empty() && !self.marking()
    }

    /// When the core let go of it at the latest; `None` while it may still
    /// hold it.
    pub(crate) fn gone_tick(&self) -> Option<u64> {
        if !self.finished() {
            return None;
        }
        let last_done = self.results.iter().map(|(_, _, t)| *t);
        let last_done = last_done.chain(self.rewrites_done.iter().copied()).max();
        self.complete_tick.max(last_done)
    }
}
