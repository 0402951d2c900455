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

use quorum_proto::{ChildId, ChildOp, Config, ConfigError, Errno, Quorum, Request, RequestId};

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

mod actions;
mod inputs;

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
    history: VecDeque<Call>,
    /// The extent of the block status completion being handed in.
    extent: Option<quorum_proto::Extent>,
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
            extent: None,
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

    /// Remembers a call for [`Checker::fail`]'s message: kept as data,
    /// formatted only if something fails (the simulator makes millions of
    /// calls).
    fn note(&mut self, call: Call) {
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

    /// The actions a request of `n` children may produce: `3n + 2`, or
    /// `5n + 5` with sync tracking (its marks).
    pub(crate) fn budget(&self, n: usize) -> usize {
        if self.cfg.sync_chunk.is_some() {
            5 * n + 5
        } else {
            3 * n + 2
        }
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
    fn unchanged(&self, before: Before, what: &dyn std::fmt::Display, e: &dyn std::fmt::Debug) {
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
        what: &dyn std::fmt::Display,
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
            .any(|g| g.open() || !g.outstanding.is_empty() || g.marking());
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

/// A call made to the core, as the failure message lists it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Call {
    Submit(RequestId, Request),
    Poll(quorum_proto::Action),
    Handle(ChildOp, RequestId, usize, Result<(), Errno>),
    Cancel(RequestId),
    StartDrain,
    EndDrain,
    AddChild,
    RemoveChild(ChildId),
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Submit(id, r) => write!(f, "submit({id}, {r:?})"),
            Call::Poll(a) => write!(f, "poll_action() → {a:?}"),
            Call::Handle(op, id, slot, r) => {
                let call = format!("handle_{op:?}({id}, slot {slot}, {r:?})").to_lowercase();
                f.write_str(&call)
            }
            Call::Cancel(id) => write!(f, "cancel({id})"),
            Call::StartDrain => f.write_str("start_drain()"),
            Call::EndDrain => f.write_str("end_drain()"),
            Call::AddChild => f.write_str("add_child()"),
            Call::RemoveChild(c) => write!(f, "remove_child({c})"),
        }
    }
}
