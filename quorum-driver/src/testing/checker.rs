//! The core's contract, checked on every call.
//!
//! [`Checker`] wraps a [`Quorum`] and forwards every input to it — valid
//! calls and misuse alike — checking what the core answers and every action
//! it emits against DESIGN.md's core contract and the reference model of
//! SPEC.md ([`super::model`]). A violation panics with what was expected,
//! what the core did and the last calls that led there: that is what
//! proptest shrinks and what a fuzzer reports. Nothing here relies on the
//! core panicking.
//!
//! What it checks:
//!
//! * misuse is an `Err` naming the call that changes nothing (the whole
//!   state is compared when [`Checker::set_deep`] is on), and the `Err` is
//!   the one the contract gives, exactly wherever the checker can know;
//! * a completion the core asked for is accepted — unless a read buffer it
//!   must look at is missing or of the wrong length, then exactly that
//!   `BadBuffer`;
//! * `submit` says `Busy` only when the documented reservation (`3n + 2`
//!   actions per request) leaves no room, must say it when `R` requests are
//!   held, `Draining` exactly while a drain is under way (R-MEMBER-4), and
//!   an idle core takes the next request;
//! * every action belongs to a request the core still owes it for; child
//!   operations have the request's child, range and kind (R-MEMBER-4),
//!   each is issued once; fifo reads go one slot at a time after failures
//!   (R-FIFO-1); no request produces more than its `3n + 2` actions;
//! * events name the request's children with its sectors and operation
//!   (R-EVENT-1..2, R-FLUSH-1); `QUORUM_FAILURE` never for a flush or a fifo
//!   read (R-FLUSH-2, R-FIFO-2);
//! * early quorum answers once, exactly when the first non-last success
//!   makes `threshold` successes agree, naming the group's lowest slot;
//! * ordering: no child write is issued while an overlapping rewrite is out
//!   (also a cancelled request's, R-CANCEL-2), no rewrite follows a child
//!   write of an overlapping request that ran during the read, and a read
//!   that certainly overlapped a write in flight repairs nothing;
//! * every accepted request ends with exactly one `Complete`, nothing of it
//!   follows; its outcome, events in order and rewrites in order are the
//!   reference model's, given the answers its children gave;
//! * R-CANCEL-1..2: `cancel` completes at once with `ECANCELED`; of the
//!   request only what was due before the cancel is emitted; its issued
//!   operations are still accepted, keep the id taken, count in
//!   [`Quorum::is_idle`] and not in [`Quorum::in_flight`];
//! * liveness: once the queue is empty, no request whose child operations
//!   are all answered is left without its completion, and none waits
//!   without a reason (a held write waits only for an overlapping rewrite);
//! * `in_flight`, `is_idle`, `is_draining`, `is_drained` and `children`
//!   agree with the model after every call; membership follows R-MEMBER-1..3.

use std::collections::VecDeque;
use std::fmt::Write as _;

use quorum_proto::{
    Action, ChildId, ChildOp, Config, ConfigError, Errno, Error, Event, MemberError, NoBuffers,
    OpType, Outcome, Quorum, ReadBuffers, ReadPattern, Request, RequestId,
};

use super::model::{Rewrite, sectors};
use super::track::Gen;

/// How many recent calls a violation message lists.
const HISTORY: usize = 40;

/// Fails the check with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($self:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $self.fail(format!($($arg)+));
        }
    };
}

/// A request as the checker knows it, for drivers that pick what to do
/// next from the checker's model (property tests, fuzzers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Its id.
    pub id: RequestId,
    /// What was submitted.
    pub request: Request,
    /// Its child set, by slot (R-MEMBER-4).
    pub children: Vec<ChildId>,
    /// The core certainly still holds it (it waits for a result the driver
    /// owes); otherwise it may already have been decided.
    pub certain: bool,
    /// Cancelled (R-CANCEL-1): completed for the caller; its issued child
    /// operations are still to be completed.
    pub cancelled: bool,
}

/// A summary of the core's observable state, compared around every refused
/// call.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    in_flight: usize,
    idle: bool,
    draining: bool,
    drained: bool,
    children: Vec<ChildId>,
}

/// The state before a call that may be refused.
struct Before {
    fingerprint: Fingerprint,
    deep: Option<String>,
}

/// A [`Quorum`] whose every input and output is checked against the core's
/// contract and the reference model of SPEC.md (see the module docs).
///
/// Use it exactly like the core: the same methods, the same results. A
/// contract violation panics.
#[derive(Debug)]
pub struct Checker<const C: usize = 16, const R: usize = 32, const A: usize = 1024> {
    q: Quorum<C, R, A>,
    cfg: Config,
    gens: Vec<Gen>,
    /// R-MEMBER-1: the children and `next` (unknown for an adopted core
    /// until its first add).
    members: Vec<ChildId>,
    next: Option<u32>,
    drains: u32,
    tick: u64,
    deep: bool,
    history: VecDeque<String>,
}

impl<const C: usize, const R: usize, const A: usize> Checker<C, R, A> {
    /// A new core with `config`, checked: `Quorum::new` must agree with
    /// `Config::validate` (R-CFG-1..6), report the configuration in effect,
    /// and start idle with the children `children.0 …`.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let valid = config.validate(C);
        let q = match Quorum::<C, R, A>::new(config) {
            Ok(q) => q,
            Err(e) => {
                assert_eq!(
                    valid,
                    Err(e),
                    "quorum core contract violated: Quorum::new and Config::validate disagree on {config:?}"
                );
                return Err(e);
            }
        };
        let effective = match valid {
            Ok(c) => c,
            Err(e) => panic!(
                "quorum core contract violated: Quorum::new accepted {config:?}, which validate refuses: {e}"
            ),
        };
        assert_eq!(
            *q.config(),
            effective,
            "quorum core contract violated: config() is not the configuration in effect"
        );
        let ids: Vec<ChildId> = (0..effective.children as u32).map(ChildId).collect();
        assert_eq!(
            q.children(),
            ids.as_slice(),
            "quorum core contract violated: a new device's children are not children.0 … (R-MEMBER-1)"
        );
        assert!(
            q.is_idle() && q.in_flight() == 0 && !q.is_draining(),
            "quorum core contract violated: a new core is busy"
        );
        let mut c = Self::adopt(q);
        c.next = Some(effective.children as u32);
        Ok(c)
    }

    /// Checks from now on a core that is idle and not draining (panics
    /// otherwise: the checker cannot know what an earlier driver asked for).
    /// Its `next` child name (R-MEMBER-1) is learnt at the first add.
    pub fn adopt(q: Quorum<C, R, A>) -> Self {
        assert!(
            q.is_idle() && !q.is_draining(),
            "Checker::adopt needs an idle core that is not draining"
        );
        Checker {
            cfg: *q.config(),
            members: q.children().to_vec(),
            q,
            gens: Vec::new(),
            next: None,
            drains: 0,
            tick: 0,
            deep: true,
            history: VecDeque::new(),
        }
    }

    /// The core, to hand back to code that drives it directly.
    pub fn into_core(self) -> Quorum<C, R, A> {
        self.q
    }

    /// The core, for queries. Inputs go through the checker.
    pub fn core(&self) -> &Quorum<C, R, A> {
        &self.q
    }

    /// Compare the whole core state (its `Debug` text) around every call
    /// that may be refused, not just its observable summary. On by default;
    /// fuzzers with large cores turn it off for speed.
    pub fn set_deep(&mut self, on: bool) {
        self.deep = on;
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current children, in slot order.
    pub fn children(&self) -> &[ChildId] {
        self.q.children()
    }

    /// [`Quorum::in_flight`].
    pub fn in_flight(&self) -> usize {
        self.q.in_flight()
    }

    /// [`Quorum::is_idle`].
    pub fn is_idle(&self) -> bool {
        self.q.is_idle()
    }

    /// [`Quorum::is_draining`].
    pub fn is_draining(&self) -> bool {
        self.q.is_draining()
    }

    /// [`Quorum::is_drained`].
    pub fn is_drained(&self) -> bool {
        self.q.is_drained()
    }

    /// Drains under way, as the checker counts them.
    pub fn drains(&self) -> u32 {
        self.drains
    }

    // ---- the model, for drivers that pick from it ----------------------

    /// Child operations polled and not yet completed, rewrites included,
    /// oldest request first, each request's in poll order. A driver owes
    /// the core each of them (R-CANCEL-2: a cancelled request's too).
    pub fn outstanding(&self) -> Vec<(RequestId, usize, ChildOp)> {
        self.gens
            .iter()
            .flat_map(|g| g.outstanding.iter().map(move |&(s, op)| (g.id, s, op)))
            .collect()
    }

    /// Child operations already completed, of requests the core may still
    /// hold: completing one again is misuse.
    pub fn completed(&self) -> Vec<(RequestId, usize, ChildOp)> {
        self.gens
            .iter()
            .filter(|g| g.may_be_live())
            .flat_map(|g| g.done.iter().map(move |&(s, op)| (g.id, s, op)))
            .collect()
    }

    /// The requests the core may still hold, oldest first.
    pub fn requests(&self) -> Vec<RequestInfo> {
        self.gens
            .iter()
            .filter(|g| g.may_be_live())
            .map(|g| RequestInfo {
                id: g.id,
                request: g.req,
                children: g.children.clone(),
                certain: g.must_be_live(&self.cfg),
                cancelled: g.cancelled.is_some(),
            })
            .collect()
    }

    /// The slots whose read buffers the core looks at if `slot`'s read of
    /// request `id` completes with `result` now, in the order it checks
    /// them: empty when it looks at none (a driver without data for a read
    /// may answer it only then).
    pub fn buffers_needed(
        &self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Vec<usize> {
        match self.target(id).map(|gi| &self.gens[gi]) {
            Some(g) if g.is_read() && slot < g.n() => self.looked_at(g, slot, result),
            _ => Vec::new(),
        }
    }

    // ---- failing --------------------------------------------------------

    fn note(&mut self, call: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(call);
    }

    /// Panics with `msg` and the calls that led there.
    #[track_caller]
    fn fail(&self, msg: String) -> ! {
        let mut s = format!("quorum core contract violated: {msg}\n  recent calls, oldest first:");
        for h in &self.history {
            let _ = write!(s, "\n    {h}");
        }
        panic!("{s}");
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            in_flight: self.q.in_flight(),
            idle: self.q.is_idle(),
            draining: self.q.is_draining(),
            drained: self.q.is_drained(),
            children: self.q.children().to_vec(),
        }
    }

    fn before(&self) -> Before {
        Before {
            fingerprint: self.fingerprint(),
            deep: self.deep.then(|| format!("{:?}", self.q)),
        }
    }

    /// A refused call must change nothing.
    fn unchanged(&self, before: Before, what: &str, e: &dyn std::fmt::Debug) {
        ensure!(
            self,
            before.fingerprint == self.fingerprint(),
            "{what} was refused ({e:?}) but changed the core: {:?} → {:?}",
            before.fingerprint,
            self.fingerprint()
        );
        if let Some(d) = before.deep {
            ensure!(
                self,
                d == format!("{:?}", self.q),
                "{what} was refused ({e:?}) but changed the core's state"
            );
        }
    }

    /// Checks `r` against what the contract allows for a call.
    fn allowed<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        r: &T,
        allowed: &[T],
        why: impl FnOnce() -> String,
    ) {
        if !allowed.contains(r) {
            self.fail(format!(
                "{what} returned {r:?}; the contract allows only {allowed:?} here ({})",
                why()
            ));
        }
    }

    // ---- lookups --------------------------------------------------------

    /// The request the core may hold under `id`: only the newest can be.
    fn target(&self, id: RequestId) -> Option<usize> {
        self.gens
            .iter()
            .rposition(|g| g.id == id && g.may_be_live())
    }

    /// The request a polled action of `id` belongs to: the oldest whose
    /// completion has not been polled (the queue is first in, first out).
    fn owner(&self, id: RequestId) -> Option<usize> {
        self.gens.iter().position(|g| g.id == id && g.open())
    }

    /// Drops what no check can need any more: finished requests that ended
    /// before every unfinished one started.
    fn prune(&mut self) {
        let oldest = self
            .gens
            .iter()
            .filter(|g| !g.finished())
            .map(|g| g.submit_tick)
            .min()
            .unwrap_or(u64::MAX);
        self.gens
            .retain(|g| !g.finished() || g.gone_tick().is_some_and(|t| t > oldest));
    }

    // ---- invariants ------------------------------------------------------

    fn check_invariants(&self) {
        ensure!(
            self,
            self.q.children() == self.members.as_slice(),
            "children() is {:?}, R-MEMBER-1..3 give {:?}",
            self.q.children(),
            self.members
        );
        let sure = self
            .gens
            .iter()
            .filter(|g| g.in_flight_for_sure(&self.cfg))
            .count();
        let upper = self
            .gens
            .iter()
            .filter(|g| g.cancelled.is_none() && g.open() && !g.superseded)
            .count();
        let live = self.q.in_flight();
        ensure!(
            self,
            sure <= live && live <= upper,
            "in_flight() = {live} but between {sure} and {upper} requests are in flight (cancelled ones excluded, R-CANCEL-1)"
        );
        let busy = self
            .gens
            .iter()
            .any(|g| g.open() || !g.outstanding.is_empty());
        ensure!(
            self,
            self.q.is_idle() != busy,
            "is_idle() is {} while {} (a cancelled request's issued operations count, R-CANCEL-2)",
            self.q.is_idle(),
            if busy {
                "requests are not over"
            } else {
                "every request is over"
            }
        );
        ensure!(
            self,
            self.q.is_draining() == (self.drains > 0),
            "is_draining() is {} after {} unended drains",
            self.q.is_draining(),
            self.drains
        );
        ensure!(
            self,
            self.q.is_drained() == (self.drains > 0 && self.q.is_idle()),
            "is_drained() is {} (draining: {}, idle: {})",
            self.q.is_drained(),
            self.drains > 0,
            self.q.is_idle()
        );
    }

    // ---- submit ------------------------------------------------------------

    /// [`Quorum::submit`], checked.
    pub fn submit(&mut self, id: RequestId, request: Request) -> Result<(), Error> {
        self.tick += 1;
        let tick = self.tick;
        self.note(format!("submit({id}, {request:?})"));
        let (offset, len) = request.range();
        let invalid = offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64);
        let target = self.target(id);
        let dup_sure = target.is_some_and(|g| self.gens[g].must_be_live(&self.cfg));
        let sure_places = self
            .gens
            .iter()
            .filter(|g| g.must_be_live(&self.cfg))
            .count();
        let maybe_places = self.gens.iter().filter(|g| g.may_be_live()).count();
        // What the core holds is at most what the open requests can still
        // produce: `3n + 2` each, less what was polled.
        let worst: usize = self
            .gens
            .iter()
            .filter(|g| g.open())
            .map(|g| (3 * g.n() + 2).saturating_sub(g.actions_polled))
            .sum();
        let need = 3 * self.members.len() + 2;
        let room = maybe_places < R && worst + need <= A;
        let mut allowed = Vec::new();
        if invalid {
            allowed.push(Err(Error::InvalidRange { offset, len }));
        } else {
            if target.is_some() {
                allowed.push(Err(Error::DuplicateId(id)));
            }
            if !dup_sure {
                if self.drains > 0 {
                    allowed.push(Err(Error::Draining)); // R-MEMBER-4
                } else {
                    if sure_places < R {
                        allowed.push(Ok(()));
                    }
                    if !room {
                        allowed.push(Err(Error::Busy));
                    }
                }
            }
        }
        let before = allowed.iter().any(Result::is_err).then(|| self.before());
        let in_flight = self.q.in_flight();
        let r = self.q.submit(id, request);
        self.allowed(&format!("submit({id}, {request:?})"), &r, &allowed, || {
            format!(
                "{sure_places} to {maybe_places} places held of R = {R}, at most {worst} actions \
                 held and {need} needed of A = {A}, {} drains",
                self.drains
            )
        });
        if let Err(e) = r {
            if let Some(b) = before {
                self.unchanged(b, "submit", &e);
            }
            self.check_invariants();
            return r;
        }
        ensure!(
            self,
            self.q.in_flight() == in_flight + 1,
            "an accepted submit took in_flight() from {in_flight} to {}",
            self.q.in_flight()
        );
        for g in self.gens.iter_mut().filter(|g| g.id == id) {
            g.superseded = true;
        }
        let mut g = Gen::new(id, request, self.members.clone(), tick);
        let cfg = self.cfg;
        if g.is_read() {
            // Submitted while an overlapping write is certainly in flight
            // (a cancelled one whose child writes are out too, R-CANCEL-2).
            g.no_repair = self
                .gens
                .iter()
                .any(|w| w.is_write() && w.overlaps_loose(&g) && w.must_be_live(&cfg));
        } else if g.is_write() {
            // Reads certainly undecided that this write overlaps may have
            // seen part of it.
            for r in self.gens.iter_mut() {
                if r.is_read()
                    && r.overlaps_loose(&g)
                    && r.open()
                    && r.cancelled.is_none()
                    && !r.superseded
                    && !r.results_complete(&cfg)
                {
                    r.no_repair = true;
                }
            }
        }
        self.gens.push(g);
        self.check_invariants();
        Ok(())
    }

    // ---- actions -------------------------------------------------------------

    /// [`Quorum::poll_action`], checked.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.tick += 1;
        let a = self.q.poll_action();
        match a {
            None => self.check_quiet(),
            Some(a) => {
                self.note(format!("poll_action() → {a:?}"));
                self.check_action(a);
            }
        }
        self.check_invariants();
        a
    }

    /// The queue is empty: nothing may be stuck.
    fn check_quiet(&self) {
        for g in self.gens.iter().filter(|g| g.open()) {
            let id = g.id;
            ensure!(
                self,
                g.cancelled.is_none(),
                "{id} was cancelled but its completion never came (R-CANCEL-1: at once)"
            );
            ensure!(
                self,
                !g.superseded,
                "{id} was let go of by the core (its id was taken again) without a completion"
            );
            if !g.outstanding.is_empty() {
                continue;
            }
            ensure!(
                self,
                !g.results_complete(&self.cfg),
                "{id} ({:?}) has every child answer and nothing outstanding, but no completion",
                g.req
            );
            // Only a write held behind an overlapping rewrite may wait.
            let held = g.is_write()
                && g.polled.is_empty()
                && self.gens.iter().any(|r| {
                    r.overlaps_loose(g) && r.outstanding.iter().any(|o| o.1 == ChildOp::Rewrite)
                });
            ensure!(
                self,
                held,
                "{id} ({:?}) waits for nothing: no child operation out and no overlapping rewrite",
                g.req
            );
        }
    }

    fn check_action(&mut self, a: Action) {
        let tick = self.tick;
        let id = a.id();
        let Some(gi) = self.owner(id) else {
            self.fail(format!(
                "{a:?}: request {id} is not in flight (never accepted, or already completed: \
                 nothing follows a completion, nor a cancel, R-CANCEL-1)"
            ));
        };
        let cfg = self.cfg;
        let g = &mut self.gens[gi];
        g.actions_polled += 1;
        let (n, polled) = (g.n(), g.actions_polled);
        ensure!(
            self,
            polled <= 3 * n + 2,
            "{a:?}: request {id} produced {polled} actions, more than the 3n + 2 = {} reserved",
            3 * n + 2
        );
        match a {
            Action::Read {
                slot,
                child,
                offset,
                len,
                ..
            } => {
                self.child_op(gi, slot, child, ChildOp::Read, &a);
                let g = &self.gens[gi];
                ensure!(self, g.is_read(), "{a:?} for {:?}", g.req);
                ensure!(
                    self,
                    (offset, len) == (g.offset, g.len),
                    "{a:?}: not the request's range"
                );
                if cfg.read_pattern == ReadPattern::Fifo {
                    // R-FIFO-1: slot k only after slots 0..k failed.
                    let reads = g.polled.iter().filter(|(_, o)| *o == ChildOp::Read).count();
                    ensure!(
                        self,
                        slot + 1 == reads,
                        "{a:?}: fifo read out of order (R-FIFO-1)"
                    );
                    for s in 0..slot {
                        ensure!(
                            self,
                            matches!(g.result_of(s), Some(Err(_))),
                            "{a:?}: fifo read before slot {s} failed (R-FIFO-1)"
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
                let fresh = self.child_op(gi, slot, child, ChildOp::Write, &a);
                let g = &self.gens[gi];
                let kind = match a {
                    Action::Write { .. } => matches!(g.req, Request::Write { .. }),
                    _ => matches!(g.req, Request::WriteZeroes { .. }),
                };
                ensure!(self, kind, "{a:?} for {:?}", g.req);
                ensure!(
                    self,
                    (offset, len) == (g.offset, g.len),
                    "{a:?}: not the request's range"
                );
                // Ordering (SPEC.md improvements, R-CANCEL-2): no child
                // write while an overlapping repair is under way.
                if let Some(r) = self.gens.iter().find(|r| {
                    r.overlaps_data(g) && r.outstanding.iter().any(|o| o.1 == ChildOp::Rewrite)
                }) {
                    self.fail(format!(
                        "{a:?} issued while {}{} is still rewriting an overlapping range \
                         (ordering, R-CANCEL-2)",
                        r.id,
                        if r.cancelled.is_some() {
                            " (cancelled)"
                        } else {
                            ""
                        }
                    ));
                }
                if fresh {
                    self.gens[gi].last_write_poll = Some(tick);
                }
            }
            Action::Flush { slot, child, .. } => {
                self.child_op(gi, slot, child, ChildOp::Flush, &a);
                let g = &self.gens[gi];
                ensure!(self, g.req == Request::Flush, "{a:?} for {:?}", g.req);
            }
            Action::Rewrite {
                slot,
                child,
                source,
                offset,
                len,
                ..
            } => {
                self.child_op(gi, slot, child, ChildOp::Rewrite, &a);
                self.check_rewrite(gi, slot, source, offset, len, &a);
                let g = &mut self.gens[gi];
                g.rewrites.push(Rewrite {
                    slot,
                    child,
                    source,
                });
            }
            Action::Answer { outcome, .. } => {
                let g = &self.gens[gi];
                ensure!(
                    self,
                    cfg.early_quorum,
                    "{a:?}: an early answer without early quorum"
                );
                ensure!(self, g.is_read(), "{a:?} for {:?}", g.req);
                ensure!(
                    self,
                    g.answered.is_none(),
                    "{a:?}: answered twice (first {:?})",
                    g.answered
                );
                ensure!(
                    self,
                    Some(outcome) == g.answer_due.map(|(o, _)| o),
                    "{a:?}: early quorum owes {:?} (the first non-last success that makes {} \
                     successes agree, naming the group's lowest slot)",
                    g.answer_due.map(|(o, _)| o),
                    cfg.threshold
                );
                self.gens[gi].answered = Some(outcome);
            }
            Action::Event { event, .. } => {
                self.check_event(gi, event, &a);
                self.gens[gi].events.push(event);
            }
            Action::Complete { outcome, .. } => {
                self.check_complete(gi, outcome);
                let g = &mut self.gens[gi];
                g.outcome = Some(outcome);
                g.complete_tick = Some(tick);
                if g.finished() {
                    self.prune();
                }
            }
        }
    }

    /// Common checks of a polled child operation; true unless the driver
    /// had already completed it.
    fn child_op(
        &mut self,
        gi: usize,
        slot: usize,
        child: ChildId,
        op: ChildOp,
        a: &Action,
    ) -> bool {
        let g = &self.gens[gi];
        ensure!(self, slot < g.n(), "{a:?}: the request has {} slots", g.n());
        ensure!(
            self,
            child == g.children[slot],
            "{a:?}: slot {slot} is {} in this request (R-MEMBER-4)",
            g.children[slot]
        );
        ensure!(
            self,
            !g.polled.contains(&(slot, op)),
            "{a:?}: issued twice in one request"
        );
        let g = &mut self.gens[gi];
        g.polled.push((slot, op));
        match g.early.iter().position(|&x| x == (slot, op)) {
            Some(i) => {
                g.early.remove(i);
                false
            }
            None => {
                g.outstanding.push((slot, op));
                true
            }
        }
    }

    fn check_rewrite(
        &self,
        gi: usize,
        slot: usize,
        source: usize,
        offset: u64,
        len: u64,
        a: &Action,
    ) {
        let cfg = &self.cfg;
        let g = &self.gens[gi];
        ensure!(self, g.is_read(), "{a:?} for {:?}", g.req);
        ensure!(
            self,
            (offset, len) == (g.offset, g.len),
            "{a:?}: not the request's range"
        );
        ensure!(
            self,
            source < g.n() && source != slot,
            "{a:?}: bad source slot"
        );
        ensure!(
            self,
            g.result_of(slot).is_some(),
            "{a:?}: the slot was not read yet"
        );
        ensure!(
            self,
            g.result_of(source) == Some(Ok(())),
            "{a:?}: the source slot's read did not succeed"
        );
        match cfg.read_pattern {
            ReadPattern::Quorum => {
                ensure!(
                    self,
                    cfg.rewrite_corrupted,
                    "{a:?} without rewrite-corrupted (R-READ-7)"
                );
                ensure!(
                    self,
                    g.result_of(slot) == Some(Ok(())),
                    "{a:?}: rewrites a slot whose read failed (R-READ-7)"
                );
                let (b, s) = (&g.bufs[slot], &g.bufs[source]);
                ensure!(
                    self,
                    b.is_none() || s.is_none() || b != s,
                    "{a:?}: rewrites a slot that agrees with the winner"
                );
            }
            ReadPattern::Fifo => {
                ensure!(
                    self,
                    cfg.fifo_rewrite_failed,
                    "{a:?} in fifo mode without the repair option"
                );
                ensure!(
                    self,
                    matches!(g.result_of(slot), Some(Err(_))) && slot < source,
                    "{a:?}: fifo repairs only children that failed before the answer"
                );
            }
        }
        ensure!(
            self,
            !g.no_repair,
            "{a:?}: a repair by a read that an overlapping write was in flight with \
             (its view may mix old and new data; ordering, R-CANCEL-2)"
        );
        // Ordering: a repair never follows a child write of an overlapping
        // request that ran during the read.
        if let Some(w) = self.gens.iter().find(|w| {
            w.is_write()
                && w.overlaps_data(g)
                && w.last_write_poll.is_some_and(|t| t > g.submit_tick)
        }) {
            self.fail(format!(
                "{a:?} after {} wrote an overlapping range during the read (ordering)",
                w.id
            ));
        }
    }

    fn check_event(&self, gi: usize, event: Event, a: &Action) {
        let cfg = &self.cfg;
        let g = &self.gens[gi];
        match event {
            Event::ReportBad {
                op,
                child,
                sector_num,
                sectors_count,
                ..
            } => {
                ensure!(
                    self,
                    g.children.contains(&child),
                    "{a:?}: reports a child outside the request's child set (R-MEMBER-4)"
                );
                let (want_op, want) = match g.req {
                    Request::Read { .. } => (OpType::Read, sectors(g.offset, g.len)),
                    Request::Write { .. } | Request::WriteZeroes { .. } => {
                        (OpType::Write, sectors(g.offset, g.len))
                    }
                    Request::Flush => (OpType::Flush, (0, 0)),
                };
                ensure!(
                    self,
                    op == want_op,
                    "{a:?}: the wrong operation type (R-EVENT-1)"
                );
                ensure!(
                    self,
                    (sector_num, sectors_count) == want,
                    "{a:?}: sectors should be {want:?} (R-EVENT-1, R-FLUSH-1)"
                );
            }
            Event::Failure {
                sector_num,
                sectors_count,
            } => {
                ensure!(
                    self,
                    g.req != Request::Flush && !g.is_fifo_read(cfg),
                    "{a:?}: QUORUM_FAILURE for a {:?} ({}) (R-FLUSH-2, R-FIFO-2)",
                    g.req,
                    cfg.read_pattern
                );
                ensure!(
                    self,
                    (sector_num, sectors_count) == sectors(g.offset, g.len),
                    "{a:?}: wrong sectors (R-EVENT-2)"
                );
            }
        }
    }

    /// An early-answered read that a write overlapping it followed after
    /// the answer and before the decision: its mismatches are not reported.
    fn quiet(&self, g: &Gen) -> bool {
        g.answer_due.is_some_and(|(_, at)| {
            self.gens.iter().any(|w| {
                w.is_write()
                    && w.overlaps_loose(g)
                    && w.submit_tick > at
                    && w.submit_tick < g.decide_tick
            })
        })
    }

    fn check_complete(&self, gi: usize, outcome: Outcome) {
        let cfg = self.cfg;
        let g = &self.gens[gi];
        let id = g.id;
        let what = format!("{id} ({:?}) completed with {outcome:?}", g.req);
        ensure!(
            self,
            g.early.is_empty(),
            "{what}, but the core accepted completions of {:?} it never issued",
            g.early
        );
        ensure!(
            self,
            g.answered == g.answer_due.map(|(o, _)| o),
            "{what}: the early answer owed ({:?}) and the one polled ({:?}) differ",
            g.answer_due.map(|(o, _)| o),
            g.answered
        );
        let quiet = self.quiet(g);
        if let Some(at) = g.cancelled {
            // R-CANCEL-1: at once, with ECANCELED, saying only what was due
            // before the cancel.
            ensure!(
                self,
                outcome == Outcome::Failed(Errno::ECANCELED),
                "{what}, but it was cancelled: ECANCELED (R-CANCEL-1)"
            );
            let results = g.results_before(at);
            let mut case = g.case(&cfg, &results);
            case.quiet = quiet;
            if case.decided() {
                // Decided before the cancel, yet still in flight: only a
                // read waiting for its rewrites (R-READ-7).
                let want = case
                    .expect()
                    .unwrap_or_else(|e| self.fail(format!("{what}: {e}")));
                let done_before = g.rewrites_done.iter().filter(|&&t| t < at).count();
                ensure!(
                    self,
                    g.is_read() && !g.rewrites.is_empty() && done_before < g.rewrites.len(),
                    "{what}: cancel accepted after it was decided, with no rewrite running"
                );
                ensure!(
                    self,
                    g.events == want.events,
                    "{what}: events {:?}, the decision gave {:?}",
                    g.events,
                    want.events
                );
                ensure!(
                    self,
                    g.rewrites == want.rewrites,
                    "{what}: rewrites {:?}, the decision gave {:?}",
                    g.rewrites,
                    want.rewrites
                );
            } else {
                let want = case.reports_so_far();
                ensure!(
                    self,
                    g.events == want,
                    "{what}: events {:?}, but before the cancel only {:?} were due and nothing \
                     after it (R-CANCEL-1)",
                    g.events,
                    want
                );
                ensure!(
                    self,
                    g.rewrites.is_empty(),
                    "{what}: rewrites {:?} although it was cancelled undecided",
                    g.rewrites
                );
            }
            return;
        }
        ensure!(
            self,
            g.outstanding.is_empty(),
            "{what} with child operations outstanding: {:?}",
            g.outstanding
        );
        let results = g.results_before(u64::MAX);
        let mut case = g.case(&cfg, &results);
        case.quiet = quiet;
        let want = case
            .expect()
            .unwrap_or_else(|e| self.fail(format!("{what}: {e}")));
        ensure!(
            self,
            outcome == want.outcome,
            "{what}; SPEC.md gives {:?} for the answers {:?}",
            want.outcome,
            results
        );
        ensure!(
            self,
            g.events == want.events,
            "{what}: events {:?}; SPEC.md gives {:?} for the answers {:?}",
            g.events,
            want.events,
            results
        );
        // A read that may have overlapped a write in flight may skip its
        // repair (the core cannot always be known to have seen the write).
        let may_skip = self.gens.iter().any(|w| {
            w.is_write()
                && w.overlaps_loose(g)
                && w.submit_tick < g.decide_tick
                && w.gone_tick().is_none_or(|c| c > g.submit_tick)
        });
        if !(may_skip && g.rewrites.is_empty()) {
            ensure!(
                self,
                g.rewrites == want.rewrites,
                "{what}: rewrites {:?}; SPEC.md gives {:?} (R-READ-7, R-VOTE-4)",
                g.rewrites,
                want.rewrites
            );
        }
    }

    // ---- completions -----------------------------------------------------------

    /// [`Quorum::handle_read`], checked.
    pub fn handle_read<B: ReadBuffers + ?Sized>(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
        buffers: &B,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Read, result, buffers)
    }

    /// [`Quorum::handle_write`], checked.
    pub fn handle_write(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Write, result, &NoBuffers)
    }

    /// [`Quorum::handle_flush`], checked.
    pub fn handle_flush(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Flush, result, &NoBuffers)
    }

    /// [`Quorum::handle_rewrite`], checked.
    pub fn handle_rewrite(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Rewrite, result, &NoBuffers)
    }

    /// Whether a request could ever ask for `op`.
    fn possible(&self, g: &Gen, op: ChildOp) -> bool {
        let cfg = &self.cfg;
        match op {
            ChildOp::Read => g.is_read(),
            ChildOp::Write => g.is_write(),
            ChildOp::Flush => g.req == Request::Flush,
            ChildOp::Rewrite => {
                g.is_read()
                    && match cfg.read_pattern {
                        ReadPattern::Quorum => cfg.rewrite_corrupted,
                        ReadPattern::Fifo => cfg.fifo_rewrite_failed,
                    }
            }
        }
    }

    /// The slots whose buffers the core must look at for this read
    /// completion, in the order it checks them.
    fn looked_at(&self, g: &Gen, slot: usize, result: Result<(), Errno>) -> Vec<usize> {
        let cfg = &self.cfg;
        if g.cancelled.is_some() {
            return Vec::new(); // R-CANCEL-1: nothing is voted any more
        }
        match cfg.read_pattern {
            ReadPattern::Quorum => {
                // Every read of a quorum request is issued at submission.
                let last = g.results.len() + 1 == g.n();
                let early = !last && result.is_ok() && cfg.early_quorum && g.answer_due.is_none();
                if !(last || early) {
                    return Vec::new();
                }
                let mut slots: Vec<usize> = g
                    .results
                    .iter()
                    .filter(|(_, r, _)| r.is_ok())
                    .map(|(s, _, _)| *s)
                    .collect();
                if result.is_ok() {
                    slots.push(slot);
                }
                slots.sort_unstable();
                slots
            }
            ReadPattern::Fifo if result.is_ok() && cfg.fifo_rewrite_failed && slot > 0 => {
                vec![slot]
            }
            ReadPattern::Fifo => Vec::new(),
        }
    }

    fn completion<B: ReadBuffers + ?Sized>(
        &mut self,
        id: RequestId,
        slot: usize,
        op: ChildOp,
        result: Result<(), Errno>,
        buffers: &B,
    ) -> Result<(), Error> {
        self.tick += 1;
        let tick = self.tick;
        let call = format!("handle_{op:?}({id}, slot {slot}, {result:?})").to_lowercase();
        self.note(call.clone());
        let target = self.target(id);
        let mut allowed = Vec::new();
        let mut looked = Vec::new();
        let unexpected = Err(Error::UnexpectedCompletion { id, slot, op });
        match target {
            None => allowed.push(Err(Error::UnknownRequest(id))),
            Some(gi) => {
                let g = &self.gens[gi];
                if !g.must_be_live(&self.cfg) {
                    allowed.push(Err(Error::UnknownRequest(id)));
                }
                if slot >= g.n() {
                    allowed.push(Err(Error::NoSuchSlot { id, slot }));
                } else if !self.possible(g, op) || g.done.contains(&(slot, op)) {
                    allowed.push(unexpected);
                } else {
                    if !g.outstanding.contains(&(slot, op)) {
                        // Not polled yet: the core may not have issued it.
                        allowed.push(unexpected);
                    }
                    if op == ChildOp::Read {
                        looked = self.looked_at(g, slot, result);
                    }
                    let bad = looked.iter().find_map(|&s| {
                        let got = buffers.buffer(s).map(<[u8]>::len);
                        got.is_none_or(|n| n as u64 != g.len)
                            .then_some(Error::BadBuffer {
                                id,
                                slot: s,
                                expected: g.len,
                                got,
                            })
                    });
                    allowed.push(bad.map_or(Ok(()), Err));
                }
            }
        }
        let before = allowed.iter().any(Result::is_err).then(|| self.before());
        let r = match op {
            ChildOp::Read => self.q.handle_read(id, slot, result, buffers),
            ChildOp::Write => self.q.handle_write(id, slot, result),
            ChildOp::Flush => self.q.handle_flush(id, slot, result),
            ChildOp::Rewrite => self.q.handle_rewrite(id, slot, result),
        };
        self.allowed(&call, &r, &allowed, || match target {
            None => "no request with this id can be in flight".into(),
            Some(gi) => {
                let g = &self.gens[gi];
                format!(
                    "polled and outstanding: {:?}, completed: {:?}, cancelled: {}",
                    g.outstanding,
                    g.done,
                    g.cancelled.is_some()
                )
            }
        });
        if let Err(e) = r {
            if let Some(b) = before {
                self.unchanged(b, &call, &e);
            }
            self.check_invariants();
            return r;
        }
        let Some(gi) = target else {
            self.fail(format!("{call} accepted for no request"));
        };
        let cfg = self.cfg;
        let g = &mut self.gens[gi];
        g.done.push((slot, op));
        match g.outstanding.iter().position(|&x| x == (slot, op)) {
            Some(i) => {
                g.outstanding.remove(i);
            }
            None => g.early.push((slot, op)),
        }
        if op == ChildOp::Rewrite {
            g.rewrites_done.push(tick);
        } else {
            g.results.push((slot, result, tick));
            g.decide_tick = tick;
        }
        if op == ChildOp::Read && g.cancelled.is_none() {
            // The buffers as the core saw them: this slot's, and every slot
            // it looked at.
            let len = g.len;
            let take = |s: usize| {
                buffers
                    .buffer(s)
                    .filter(|b| b.len() as u64 == len)
                    .map(<[u8]>::to_vec)
            };
            if result.is_ok()
                && let Some(b) = take(slot)
            {
                g.bufs[slot] = Some(b);
            }
            for &s in &looked {
                if let Some(b) = take(s) {
                    g.bufs[s] = Some(b);
                }
            }
            if result.is_ok() && g.answer_due.is_none() {
                let results = g.results_before(u64::MAX);
                let answer = g.case(&cfg, &results).early_answer(slot);
                let g = &mut self.gens[gi];
                g.answer_due = answer.map(|o| (o, tick));
            }
        }
        if self.gens[gi].finished() {
            self.prune();
        }
        self.check_invariants();
        Ok(())
    }

    // ---- cancel, drain ------------------------------------------------------

    /// [`Quorum::cancel`], checked (R-CANCEL-1..2).
    pub fn cancel(&mut self, id: RequestId) -> Result<(), Error> {
        self.tick += 1;
        let tick = self.tick;
        self.note(format!("cancel({id})"));
        let target = self.target(id);
        let unknown = Err(Error::UnknownRequest(id));
        let allowed = match target.map(|g| &self.gens[g]) {
            None => vec![unknown],
            Some(g) if g.cancelled.is_some() => vec![unknown],
            Some(g) if g.must_be_live(&self.cfg) => vec![Ok(())],
            // Decided, its completion not yet polled: too late, unless it
            // still waits for its rewrites.
            Some(_) => vec![Ok(()), unknown],
        };
        let before = allowed.iter().any(Result::is_err).then(|| self.before());
        let in_flight = self.q.in_flight();
        let r = self.q.cancel(id);
        self.allowed(&format!("cancel({id})"), &r, &allowed, || {
            "cancel applies to a request in flight, once".into()
        });
        match (r, target) {
            (Err(e), _) => {
                if let Some(b) = before {
                    self.unchanged(b, "cancel", &e);
                }
            }
            (Ok(()), Some(gi)) => {
                ensure!(
                    self,
                    self.q.in_flight() + 1 == in_flight,
                    "cancel took in_flight() from {in_flight} to {} (R-CANCEL-1: completed for the caller)",
                    self.q.in_flight()
                );
                self.gens[gi].cancelled = Some(tick);
            }
            (Ok(()), None) => self.fail(format!("cancel({id}) accepted for no request")),
        }
        self.check_invariants();
        r
    }

    /// [`Quorum::start_drain`], checked.
    pub fn start_drain(&mut self) {
        self.tick += 1;
        self.note("start_drain()".into());
        self.q.start_drain();
        self.drains = self.drains.saturating_add(1);
        self.check_invariants();
    }

    /// [`Quorum::end_drain`], checked.
    pub fn end_drain(&mut self) -> Result<(), Error> {
        self.tick += 1;
        self.note("end_drain()".into());
        let allowed = if self.drains == 0 {
            [Err(Error::NotDraining)]
        } else {
            [Ok(())]
        };
        let before = (self.drains == 0).then(|| self.before());
        let r = self.q.end_drain();
        self.allowed("end_drain()", &r, &allowed, || {
            format!("{} drains under way", self.drains)
        });
        match r {
            Ok(()) => self.drains -= 1,
            Err(e) => {
                if let Some(b) = before {
                    self.unchanged(b, "end_drain", &e);
                }
            }
        }
        self.check_invariants();
        r
    }

    // ---- membership -----------------------------------------------------------

    /// [`Quorum::add_child`], checked (R-MEMBER-1, R-MEMBER-3).
    pub fn add_child(&mut self) -> Result<ChildId, MemberError> {
        self.tick += 1;
        self.note("add_child()".into());
        let before = self.before();
        let r = self.q.add_child();
        let expected = if self.cfg.blkverify {
            Some(Err(MemberError::Blkverify)) // R-MEMBER-3
        } else if self.members.len() == C || self.next == Some(u32::MAX) {
            Some(Err(MemberError::TooManyChildren))
        } else {
            self.next.map(|n| Ok(ChildId(n))) // R-MEMBER-1
        };
        match (r, expected) {
            (r, Some(want)) => {
                ensure!(self, r == want, "add_child() returned {r:?}, not {want:?}");
            }
            (Ok(c), None) => {
                // An adopted core's `next` is unknown: at least one past
                // every current child.
                let max = self.members.iter().map(|c| c.0).max();
                ensure!(
                    self,
                    max.is_none_or(|m| c.0 > m),
                    "add_child() named {c}, not past the existing children (R-MEMBER-1)"
                );
            }
            (Err(e), None) => self.fail(format!("add_child() refused with {e:?}")),
        }
        match r {
            Ok(c) => {
                self.members.push(c);
                self.next = Some(c.0 + 1);
            }
            Err(e) => self.unchanged(before, "add_child", &e),
        }
        self.check_invariants();
        r
    }

    /// [`Quorum::remove_child`], checked (R-MEMBER-1..3).
    pub fn remove_child(&mut self, child: ChildId) -> Result<(), MemberError> {
        self.tick += 1;
        self.note(format!("remove_child({child})"));
        let before = self.before();
        let r = self.q.remove_child(child);
        let expected = if !self.members.contains(&child) {
            Err(MemberError::NoSuchChild(child)) // R-MEMBER-3
        } else if self.members.len() <= self.cfg.threshold {
            Err(MemberError::BelowThreshold {
                threshold: self.cfg.threshold,
            }) // R-MEMBER-2
        } else {
            Ok(())
        };
        ensure!(
            self,
            r == expected,
            "remove_child({child}) returned {r:?}, not {expected:?}"
        );
        match r {
            Ok(()) => {
                self.members.retain(|&c| c != child);
                if self.next.and_then(|n| n.checked_sub(1)) == Some(child.0) {
                    self.next = Some(child.0);
                }
            }
            Err(e) => self.unchanged(before, "remove_child", &e),
        }
        self.check_invariants();
        r
    }

    // ---- the end ----------------------------------------------------------------

    /// Checks that everything is over: no action left to poll, every
    /// accepted request completed exactly once, no child operation
    /// outstanding, the core idle with nothing in flight.
    pub fn assert_finished(&mut self) {
        if let Some(a) = self.poll_action() {
            self.fail(format!("assert_finished: {a:?} is still queued"));
        }
        let left: Vec<(RequestId, Request)> = self
            .gens
            .iter()
            .filter(|g| !g.finished())
            .map(|g| (g.id, g.req))
            .collect();
        ensure!(
            self,
            left.is_empty(),
            "requests never finished: {left:?}, in_flight() = {}",
            self.q.in_flight()
        );
        ensure!(self, self.q.in_flight() == 0, "requests left in flight");
        ensure!(self, self.q.is_idle(), "the core is not idle at the end");
    }
}
