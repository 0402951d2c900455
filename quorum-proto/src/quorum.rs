//! The state machine: requests in flight, their child operations, and the
//! action queue the driver drains.
//!
//! Capacity is fixed at compile time: `C` children, `R` requests in flight,
//! `A` queued actions. Every request reserves, when it is submitted, room for
//! the most actions it can ever produce (`3n + 2` for `n` children: one child
//! operation, one report and one rewrite per child, a failure and a
//! completion), so no later input can find the queue full. `submit` says
//! [`Error::Busy`] instead.

use crate::config::{Config, ConfigError, ReadPattern};
use crate::errno::Errno;
use crate::event::{Event, OpType, sectors};
use crate::membership::{ChildId, MemberError, Membership};
use crate::request::{Action, ChildOp, Error, Extent, Outcome, ReadBuffers, Request, RequestId};
use crate::sync::{Chunks, Mark, Marks, NoMarks};
use crate::vote::{Mask, Tally, low_to_high};

/// The kind of a request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    WriteZeroes,
    Flush,
    BlockStatus,
    Resync,
}

/// One request in flight.
#[derive(Clone, Debug)]
pub(crate) struct Req<const C: usize> {
    pub(crate) live: bool,
    pub(crate) id: RequestId,
    pub(crate) kind: Kind,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// Number of slots (children at submission, R-MEMBER-4).
    pub(crate) n: usize,
    pub(crate) children: [ChildId; C],
    /// Child operations issued and not yet completed.
    pub(crate) outstanding: Mask,
    /// Child operations completed.
    pub(crate) done: Mask,
    /// Child operations completed successfully.
    pub(crate) ok: Mask,
    /// The error of each failed slot.
    pub(crate) errors: [Errno; C],
    /// Block status: each slot's first extent (its length; zero or not in
    /// `zero`).
    pub(crate) extent: [u64; C],
    pub(crate) zero: Mask,
    /// Rewrites issued and not yet completed.
    pub(crate) rewriting: Mask,
    /// The outcome, once decided, while rewrites are still running.
    pub(crate) pending: Option<Outcome>,
    /// A read that overlapped a write in flight: its view may mix old and new
    /// data, so it must not repair anything (see [`Quorum::submit`]).
    pub(crate) stale: bool,
    /// A write waiting for overlapping rewrites to finish before it starts.
    pub(crate) held: bool,
    /// Early quorum: the slot whose data answered the read, once answered.
    pub(crate) answered: Option<usize>,
    /// An answered read that a later write overlapped: for the caller the two
    /// were sequential, so a straggler that reads the new data is no sign of
    /// corruption — its content is not reported (errors still are).
    pub(crate) quiet: bool,
    /// Actions this request may still push.
    pub(crate) reserve: usize,
    /// Cancelled (R-CANCEL-1): completed for the caller, kept only until the
    /// child operations it had issued are completed (R-CANCEL-2).
    pub(crate) cancelled: bool,
    /// Sync tracking (R-SYNC): the chunks the request touches.
    pub(crate) chunks: Chunks,
    /// Slots stale on some of those chunks when it started: not read, not
    /// counted toward a write's threshold (R-SYNC-1); a resync's targets.
    pub(crate) skip: Mask,
    /// The range was unsettled when it started: the read settles it (R-SYNC-3).
    pub(crate) settle: bool,
    /// A resync of a settled range: the children not read yet, read only
    /// if those read first fail or disagree (see [`Quorum::start`]).
    pub(crate) deferred: Mask,
    /// A write waiting for its [`Mark::Unsettle`] to be durable (R-SYNC-2).
    pub(crate) marking: bool,
    /// A flush's epoch ([`Mark::Flushed`]).
    pub(crate) epoch: u64,
    /// Settling or resync writes that failed, and their errors.
    pub(crate) rewrite_failed: Mask,
    pub(crate) rewrite_errors: [Errno; C],
    /// The chunks a write that succeeds everywhere may mark clean: its
    /// chunks less a chunk it covers only partly that was unsettled when
    /// it started (what it did not write may still differ, R-SYNC-2).
    pub(crate) clean: Chunks,
    /// Another write to one of its chunks was in flight at the same time
    /// (or a cancelled one still had child writes out): the chunks may
    /// differ whatever this write did, so it marks nothing clean (R-SYNC-2,
    /// R-CANCEL-3).
    pub(crate) shared: bool,
}

impl<const C: usize> Req<C> {
    const EMPTY: Self = Req {
        live: false,
        id: RequestId(0),
        kind: Kind::Flush,
        offset: 0,
        len: 0,
        n: 0,
        children: [ChildId(0); C],
        outstanding: 0,
        done: 0,
        ok: 0,
        errors: [Errno(0); C],
        extent: [0; C],
        zero: 0,
        rewriting: 0,
        pending: None,
        stale: false,
        held: false,
        answered: None,
        quiet: false,
        reserve: 0,
        cancelled: false,
        chunks: Chunks { first: 0, end: 0 },
        skip: 0,
        settle: false,
        deferred: 0,
        marking: false,
        epoch: 0,
        rewrite_failed: 0,
        rewrite_errors: [Errno(0); C],
        clean: Chunks { first: 0, end: 0 },
        shared: false,
    };

    pub(crate) fn all(&self) -> Mask {
        if self.n >= 64 {
            Mask::MAX
        } else {
            (1 << self.n) - 1
        }
    }

    fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Write | Kind::WriteZeroes)
    }

    /// Reads whose child writes must not run into a later write: a client
    /// read's rewrites, a resync's copies.
    pub(crate) fn is_read(&self) -> bool {
        matches!(self.kind, Kind::Read | Kind::Resync)
    }

    fn overlaps(&self, offset: u64, len: u64) -> bool {
        self.live
            && self.kind != Kind::Flush
            && self.offset < offset + len
            && offset < self.offset + self.len
    }

    pub(crate) fn sectors(&self) -> (u64, u64) {
        sectors(self.offset, self.len)
    }

    /// R-VOTE-3: the most frequent error among failed slots, ties to the
    /// version whose first member has the highest slot.
    pub(crate) fn error_vote(&self) -> Errno {
        let mut t = Tally::<C>::new();
        for s in low_to_high(self.done & !self.ok) {
            t.add(s, |rep| self.errors[rep] == self.errors[s]);
        }
        match t.winner() {
            Some(w) => self.errors[t.first(w)],
            // Unreachable when the threshold is ≥ 1; EIO is QEMU's generic answer.
            None => Errno::EIO,
        }
    }
}

/// The chunks of a write of `offset..offset + len` (`chunks`) it may mark
/// clean once it succeeded everywhere (R-SYNC-2): all of them, less the
/// first or last if the write covers it only partly and it was already
/// unsettled — the bytes the write did not cover may still differ there.
fn clean_chunks(offset: u64, len: u64, chunk: u64, chunks: Chunks, marks: &dyn Marks) -> Chunks {
    let mut c = chunks;
    if c.is_empty() {
        return c;
    }
    let end = offset + len;
    let whole = |i: u64| offset <= i * chunk && (i + 1) * chunk <= end;
    let unsettled = |i: u64| {
        marks.unsettled(Chunks {
            first: i,
            end: i + 1,
        })
    };
    if !whole(c.first) && unsettled(c.first) {
        c.first += 1;
    }
    if c.first < c.end && !whole(c.end - 1) && unsettled(c.end - 1) {
        c.end -= 1;
    }
    c
}

/// QEMU's quorum block filter as a sans-IO state machine.
///
/// Feed it requests ([`Quorum::submit`]) and child completions
/// (`handle_*`), and carry out what [`Quorum::poll_action`] returns until it
/// returns `None`. It never does I/O, never allocates, never panics on input.
///
/// `C`: most children (≤ 64); `R`: most requests in flight; `A`: action
/// queue capacity (≥ `3C + 2`). The defaults suit a host driver.
#[derive(Clone, Debug)]
pub struct Quorum<const C: usize = 16, const R: usize = 32, const A: usize = 1024> {
    pub(crate) cfg: Config,
    members: Membership<C>,
    pub(crate) reqs: [Req<C>; R],
    live: usize,
    /// Live requests that were cancelled and wait for their issued child
    /// operations (R-CANCEL-2); they count in `live`.
    zombies: usize,
    /// Drains under way ([`Quorum::start_drain`]): while non-zero, `submit`
    /// refuses new requests.
    draining: u32,
    /// Indices of the live requests, ascending: lookups and overlap checks
    /// visit only these, not all `R` places.
    order: heapless::Vec<u16, R>,
    actions: heapless::Deque<Action, A>,
    /// Sum of the live requests' reserves.
    reserved: usize,
    /// Flushes submitted (sync tracking's epochs, [`Mark::Flushed`]).
    pub(crate) epoch: u64,
    /// Differences settled (R-SYNC-3): counted, never reported.
    pub(crate) settled: u64,
}

impl<const C: usize, const R: usize, const A: usize> Quorum<C, R, A> {
    /// A quorum device with the children `children.0` … `children.N-1` of
    /// `config` (R-CFG-1..6).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let cfg = Self::checked(config)?;
        Ok(Self::fresh(cfg))
    }

    /// [`Quorum::new`] on the heap. A core with room for many requests is
    /// large (hundreds of KiB for a host driver's capacities) and an
    /// unoptimised build copies a value at every move: built this way it is
    /// copied at most once on the stack, so a debug build on a 2 MiB thread
    /// stack (a test thread, an async executor's) does not overflow.
    #[cfg(feature = "alloc")]
    pub fn new_boxed(config: Config) -> Result<alloc::boxed::Box<Self>, ConfigError> {
        let cfg = Self::checked(config)?;
        Ok(alloc::boxed::Box::new(Self::fresh(cfg)))
    }

    /// `config` validated for this capacity (R-CFG-1..6), and the capacity
    /// checked against what sync tracking needs.
    fn checked(config: Config) -> Result<Config, ConfigError> {
        const {
            assert!(C >= 1 && C <= 64, "C (children capacity) must be 1..=64");
            assert!(R >= 1, "R (requests in flight) must be at least 1");
            assert!(R <= 1 << 16, "R (requests in flight) must be at most 65536");
            assert!(A >= 3 * C + 2, "A (action queue) must hold 3C + 2 actions");
        }
        let cfg = config.validate(C)?;
        if cfg.sync_chunk.is_some() && A < 5 * C + 5 {
            return Err(ConfigError::SyncCapacity);
        }
        Ok(cfg)
    }

    /// A new core over a validated `cfg`, built in its caller's place.
    #[inline(always)]
    fn fresh(cfg: Config) -> Self {
        Quorum {
            cfg,
            members: Membership::new(cfg.children),
            reqs: [const { Req::EMPTY }; R],
            live: 0,
            zombies: 0,
            draining: 0,
            order: heapless::Vec::new(),
            actions: heapless::Deque::new(),
            reserved: 0,
            epoch: 0,
            settled: 0,
        }
    }

    /// Children whose content differed from the winner where a read or a
    /// resync settled an unsettled range (R-SYNC-3): counted here, never
    /// reported as corruption.
    pub fn settled_differences(&self) -> u64 {
        self.settled
    }

    /// The configuration in effect (after R-CFG-6).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current children, in slot order.
    pub fn children(&self) -> &[ChildId] {
        self.members.ids()
    }

    /// Requests submitted and not yet completed. A cancelled request has
    /// completed and is not counted, even while its issued child operations
    /// are still outstanding (see [`Quorum::is_idle`]).
    pub fn in_flight(&self) -> usize {
        self.live - self.zombies
    }

    /// True when no request is in flight, no cancelled request still waits
    /// for a child operation it had issued (R-CANCEL-2), and no action is
    /// waiting to be polled.
    pub fn is_idle(&self) -> bool {
        self.live == 0 && self.actions.is_empty()
    }

    /// Starts a drain: until [`Quorum::end_drain`], [`Quorum::submit`]
    /// refuses new requests with [`Error::Draining`], while the requests
    /// already in flight run on. Drains nest: each `start_drain` needs its
    /// `end_drain`.
    ///
    /// This is QEMU's drain before a membership change (R-MEMBER-4), decided
    /// here so that every driver does it alike: start a drain, carry out
    /// actions until [`Quorum::is_drained`], change the children, end the
    /// drain.
    pub fn start_drain(&mut self) {
        self.draining = self.draining.saturating_add(1);
    }

    /// Ends a drain started by [`Quorum::start_drain`];
    /// [`Error::NotDraining`] if none is under way.
    pub fn end_drain(&mut self) -> Result<(), Error> {
        match self.draining.checked_sub(1) {
            Some(d) => {
                self.draining = d;
                Ok(())
            }
            None => Err(Error::NotDraining),
        }
    }

    /// True while a drain is under way.
    pub fn is_draining(&self) -> bool {
        self.draining > 0
    }

    /// True when a drain is under way and nothing is left to wait for:
    /// no request in flight, no cancelled request's child operation
    /// outstanding (R-CANCEL-2), no action to poll.
    pub fn is_drained(&self) -> bool {
        self.is_draining() && self.is_idle()
    }

    /// The next action, oldest first; `None` when there is nothing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Adds a child named `children.<next>` (R-MEMBER-1, R-MEMBER-3).
    /// Requests already in flight keep their child set (R-MEMBER-4).
    pub fn add_child(&mut self) -> Result<ChildId, MemberError> {
        self.members.add(self.cfg.blkverify)
    }

    /// Deletes a child (R-MEMBER-1..3). Requests in flight keep their child
    /// set (R-MEMBER-4): a driver that wants QEMU's drain waits for
    /// [`Quorum::in_flight`] to reach 0 first.
    pub fn remove_child(&mut self, child: ChildId) -> Result<(), MemberError> {
        self.members.remove(child, self.cfg.threshold)
    }

    /// Starts a request. Its child operations are queued as actions.
    ///
    /// Ordering (SPEC.md, "Deliberate improvements"): a repair must never
    /// leave a replica older than an acknowledged write. So a read that
    /// overlaps a write in flight, in either order of submission, reports
    /// what it saw but repairs nothing; and a write that overlaps rewrites
    /// still running is held back, its child writes issued only once those
    /// rewrites have completed. Neither changes any result; sequential
    /// requests, all QEMU can compare against, are never affected.
    pub fn submit(&mut self, id: RequestId, request: Request) -> Result<(), Error> {
        self.submit_with(id, request, &NoMarks)
    }

    /// [`Quorum::submit`] with sync tracking (R-SYNC): `marks` is the
    /// driver's map, asked which children are stale on the request's chunks
    /// and whether they are unsettled; the answers hold for the request's
    /// whole life, as its child set does. Without
    /// [`crate::Config::sync_chunk`] the map is not asked.
    pub fn submit_with(
        &mut self,
        id: RequestId,
        request: Request,
        marks: &dyn Marks,
    ) -> Result<(), Error> {
        let (offset, len) = request.range();
        if offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(Error::InvalidRange { offset, len });
        }
        if self.cfg.sync_chunk.is_none() && matches!(request, Request::Resync { .. }) {
            // Nothing is tracked: nothing to bring back in sync.
            return Err(Error::InvalidRange { offset, len });
        }
        if self.find(id).is_some() {
            return Err(Error::DuplicateId(id));
        }
        if self.draining > 0 {
            return Err(Error::Draining);
        }
        // The lowest free place: the first gap in the ascending live list.
        let pos = self
            .order
            .iter()
            .enumerate()
            .position(|(k, &i)| k != i as usize)
            .unwrap_or(self.order.len());
        if pos >= R || pos > u16::MAX as usize {
            return Err(Error::Busy);
        }
        let ri = pos;
        let ids = self.members.ids();
        let n = ids.len();
        let sync = self.cfg.sync_chunk;
        let need = if sync.is_some() { 5 * n + 5 } else { 3 * n + 2 };
        if self.actions.len() + self.reserved + need > A {
            return Err(Error::Busy);
        }
        let kind = match request {
            Request::Read { .. } => Kind::Read,
            Request::Write { .. } => Kind::Write,
            Request::WriteZeroes { .. } => Kind::WriteZeroes,
            Request::Flush => Kind::Flush,
            Request::BlockStatus { .. } => Kind::BlockStatus,
            Request::Resync { .. } => Kind::Resync,
        };
        let r = &mut self.reqs[ri];
        *r = Req {
            live: true,
            id,
            kind,
            offset,
            len,
            n,
            reserve: need,
            ..Req::EMPTY
        };
        r.children[..n].copy_from_slice(ids);
        if let Some(chunk) = sync {
            r.chunks = Chunks::of(offset, len, chunk);
            if matches!(
                kind,
                Kind::Read | Kind::Resync | Kind::Write | Kind::WriteZeroes
            ) {
                for slot in 0..n {
                    if marks.stale(r.children[slot], r.chunks) {
                        r.skip |= 1 << slot;
                    }
                }
            }
            // A fifo read does not vote: it cannot settle; a resync always
            // votes.
            r.settle = (kind == Kind::Resync
                || (kind == Kind::Read && self.cfg.read_pattern == ReadPattern::Quorum))
                && marks.unsettled(r.chunks);
            if r.is_write() {
                r.clean = clean_chunks(offset, len, chunk, r.chunks, marks);
                // Every other write to one of these chunks still in flight
                // (a cancelled one too, R-CANCEL-2) and this one mark
                // nothing clean.
                let c = r.chunks;
                let mut shared = false;
                for &i in &self.order {
                    let o = &mut self.reqs[i as usize];
                    if o.live && o.is_write() && o.chunks.first < c.end && c.first < o.chunks.end {
                        o.shared = true;
                        shared = true;
                    }
                }
                self.reqs[ri].shared = shared;
            }
        }
        self.live += 1;
        self.reserved += need;
        // Cannot fail: `pos < R` places are live.
        let _ = self.order.insert(pos, ri as u16);

        let (mut stale, mut held) = (false, false);
        let settle = self.reqs[ri].settle;
        for &i in &self.order {
            let i = i as usize;
            let o = &mut self.reqs[i];
            if i == ri || !o.overlaps(offset, len) {
                continue;
            }
            match kind {
                // A settle still writing its winner (R-SYNC-3): what this
                // read sees may be half of it (see `settle`).
                Kind::Read | Kind::Resync => {
                    stale |= o.is_write() || (settle && o.settle && o.rewriting != 0)
                }
                Kind::Write | Kind::WriteZeroes => {
                    held |= o.rewriting != 0;
                    // A read that has already decided has issued its rewrites
                    // (and so holds this write back); marking it changes nothing.
                    o.stale |= o.is_read();
                    o.quiet |= o.kind == Kind::Read && o.answered.is_some();
                }
                Kind::Flush | Kind::BlockStatus => {}
            }
        }
        let r = &mut self.reqs[ri];
        r.stale = stale;
        r.held = held;
        if kind == Kind::Flush {
            self.epoch += 1;
            self.reqs[ri].epoch = self.epoch;
        }
        if sync.is_some() && matches!(kind, Kind::Write | Kind::WriteZeroes) {
            // R-SYNC-2: the chunks are unsettled, durably, before any child
            // write is issued.
            let chunks = self.reqs[ri].chunks;
            if !chunks.is_empty() {
                self.reqs[ri].marking = true;
                self.push(
                    ri,
                    Action::Mark {
                        id,
                        mark: Mark::Unsettle { chunks },
                    },
                );
            }
        }
        if sync.is_some() && self.reqs[ri].is_read() {
            // R-SYNC-1: too few children hold the data here.
            let r = &self.reqs[ri];
            let fresh = (r.all() & !r.skip).count_ones() as usize;
            if fresh < self.cfg.threshold || fresh == 0 {
                self.failure(ri);
                self.complete(ri, Outcome::Failed(Errno::EIO));
                return Ok(());
            }
        }
        self.start(ri);
        Ok(())
    }

    /// Issues a request's child operations, unless it waits (for rewrites
    /// to finish, or for its marks to be durable). R-FIFO-1 reads one child
    /// at a time; everything else goes to every child at once (R-READ-1,
    /// R-WRITE-1, R-FLUSH-1) — reads and resyncs only to the children not
    /// stale there (R-SYNC-1).
    ///
    /// A resync of a settled range reads a quorum first (R-SYNC-4): the
    /// lowest non-stale slots, as many as `threshold` and more than half of
    /// the non-stale children. If they all succeed and agree, no other
    /// content can have more votes: that is the vote's winner, and the
    /// others are not read — a rebuild then reads two replicas of three
    /// per chunk, not three. Otherwise the others are read and the vote is
    /// the full one. (A settling resync reads everything: it must find
    /// every child that differs.)
    fn start(&mut self, ri: usize) {
        let r = &self.reqs[ri];
        if r.held || r.marking {
            return;
        }
        let (n, skip) = (r.n, if r.is_read() { r.skip } else { 0 });
        let fifo = r.kind == Kind::Read && self.cfg.read_pattern == ReadPattern::Fifo;
        let mut first = n;
        if r.kind == Kind::Resync && !r.settle {
            let fresh = (r.all() & !skip).count_ones() as usize;
            first = self.cfg.threshold.max(fresh / 2 + 1);
        }
        let mut issued = 0;
        for slot in 0..n {
            if skip & (1 << slot) != 0 {
                continue;
            }
            if issued == first {
                self.reqs[ri].deferred |= 1 << slot;
                continue;
            }
            self.issue(ri, slot);
            issued += 1;
            if fifo {
                break;
            }
        }
    }

    /// A resync's first reads are all in (see [`Quorum::start`]): whether
    /// they decide, or the deferred children are read now (then true).
    fn read_the_rest<B: ReadBuffers + ?Sized>(&mut self, ri: usize, buffers: &B) -> bool {
        let r = &self.reqs[ri];
        let deferred = r.deferred;
        if deferred == 0 {
            return false;
        }
        let buf = |s: usize| buffers.buffer(s).unwrap_or(&[]);
        let first = r.ok.trailing_zeros() as usize;
        let agree = r.ok != 0 && r.ok == r.done && low_to_high(r.ok).all(|s| buf(s) == buf(first));
        self.reqs[ri].deferred = 0;
        if agree {
            return false;
        }
        for slot in low_to_high(deferred) {
            self.issue(ri, slot);
        }
        true
    }

    /// Request `ri` starts writing a settle's winner (R-SYNC-3): every
    /// other settling read or resync over its range that has not voted yet
    /// settles nothing.
    pub(crate) fn settle_overlapping(&mut self, ri: usize) {
        let (offset, len) = (self.reqs[ri].offset, self.reqs[ri].len);
        for &i in &self.order {
            let o = &mut self.reqs[i as usize];
            if i as usize != ri
                && o.is_read()
                && o.settle
                && o.pending.is_none()
                && o.overlaps(offset, len)
            {
                o.stale = true;
            }
        }
    }

    /// The driver made a [`Mark::Unsettle`] durable (R-SYNC-2): the write
    /// issues its child writes (unless a rewrite still holds it back).
    pub fn handle_marked(&mut self, id: RequestId) -> Result<(), Error> {
        let ri = self.find(id).ok_or(Error::UnknownRequest(id))?;
        if !self.reqs[ri].marking {
            return Err(Error::UnexpectedCompletion {
                id,
                slot: 0,
                op: ChildOp::Marked,
            });
        }
        self.reqs[ri].marking = false;
        if !self.reap(ri) {
            self.start(ri);
        }
        Ok(())
    }

    /// Queues the child operation of `slot`.
    pub(crate) fn issue(&mut self, ri: usize, slot: usize) {
        let r = &mut self.reqs[ri];
        r.outstanding |= 1 << slot;
        let (id, child, offset, len) = (r.id, r.children[slot], r.offset, r.len);
        let a = match r.kind {
            Kind::Read | Kind::Resync => Action::Read {
                id,
                slot,
                child,
                offset,
                len,
            },
            Kind::Write => Action::Write {
                id,
                slot,
                child,
                offset,
                len,
            },
            Kind::WriteZeroes => Action::WriteZeroes {
                id,
                slot,
                child,
                offset,
                len,
            },
            Kind::Flush => Action::Flush { id, slot, child },
            Kind::BlockStatus => Action::BlockStatus {
                id,
                slot,
                child,
                offset,
                len,
            },
        };
        self.push(ri, a);
    }

    /// Queues an action against `ri`'s reservation.
    pub(crate) fn push(&mut self, ri: usize, a: Action) {
        let r = &mut self.reqs[ri];
        debug_assert!(r.reserve > 0, "request {:?} exceeded its reservation", r.id);
        r.reserve = r.reserve.saturating_sub(1);
        self.reserved = self.reserved.saturating_sub(1);
        // Cannot fail: the reservation guarantees room.
        let pushed = self.actions.push_back(a);
        debug_assert!(pushed.is_ok(), "action queue overflow");
    }

    /// Queues a `QUORUM_REPORT_BAD` for `slot`.
    pub(crate) fn report(&mut self, ri: usize, slot: usize, op: OpType, error: Option<Errno>) {
        let r = &self.reqs[ri];
        let (sector_num, sectors_count) = if op == OpType::Flush {
            (0, 0) // R-FLUSH-1 (QEMU 10)
        } else {
            r.sectors()
        };
        let a = Action::Event {
            id: r.id,
            event: Event::ReportBad {
                op,
                error,
                child: r.children[slot],
                sector_num,
                sectors_count,
            },
        };
        self.push(ri, a);
    }

    /// Queues a `QUORUM_FAILURE`.
    pub(crate) fn failure(&mut self, ri: usize) {
        let r = &self.reqs[ri];
        let (sector_num, sectors_count) = r.sectors();
        let a = Action::Event {
            id: r.id,
            event: Event::Failure {
                sector_num,
                sectors_count,
            },
        };
        self.push(ri, a);
    }

    /// Ends the request: queues its completion and frees its place.
    pub(crate) fn complete(&mut self, ri: usize, outcome: Outcome) {
        let id = self.reqs[ri].id;
        self.push(ri, Action::Complete { id, outcome });
        self.free(ri);
    }

    /// Frees the place of a request that has pushed its completion.
    fn free(&mut self, ri: usize) {
        let r = &mut self.reqs[ri];
        self.reserved = self.reserved.saturating_sub(r.reserve);
        r.reserve = 0;
        r.live = false;
        if r.cancelled {
            self.zombies -= 1;
        }
        self.live -= 1;
        if let Some(k) = self.order.iter().position(|&i| i as usize == ri) {
            self.order.remove(k);
        }
    }

    /// Cancels a request in flight (R-CANCEL-1): it completes at once with
    /// `ECANCELED` ([`Action::Complete`]) and nothing more is said about it —
    /// no `QUORUM_REPORT_BAD`, no `QUORUM_FAILURE`, no new child operation,
    /// no rewrite.
    ///
    /// The child operations it had already issued (polled or not) stay
    /// accounted for until their completions are handed in with the usual
    /// `handle_*` calls (R-CANCEL-2): until then the request still orders
    /// against overlapping writes — a write that overlaps one of its
    /// rewrites is held back until that rewrite completed, a read that
    /// overlaps one of its writes repairs nothing — its id stays taken
    /// ([`Error::DuplicateId`]), and [`Quorum::is_idle`] and
    /// [`Quorum::is_drained`] wait for them. Their results are ignored: a
    /// driver that never started one may complete it with any error.
    ///
    /// A cancelled write may have reached some children and not others.
    /// Cancelling a request that is not in flight (unknown, completed, or
    /// already cancelled) is [`Error::UnknownRequest`] and changes nothing.
    pub fn cancel(&mut self, id: RequestId) -> Result<(), Error> {
        let ri = match self.find(id) {
            Some(ri) if !self.reqs[ri].cancelled => ri,
            _ => return Err(Error::UnknownRequest(id)),
        };
        let r = &mut self.reqs[ri];
        r.cancelled = true;
        r.pending = None;
        r.held = false;
        self.zombies += 1;
        let outcome = Outcome::Failed(Errno::ECANCELED);
        self.push(ri, Action::Complete { id, outcome });
        let r = &mut self.reqs[ri];
        // It pushes nothing more: give its reservation back.
        self.reserved = self.reserved.saturating_sub(r.reserve);
        r.reserve = 0;
        self.reap(ri);
        Ok(())
    }

    /// Frees a cancelled request once nothing it issued is outstanding.
    /// True if `ri` is a cancelled request (whether freed or not).
    fn reap(&mut self, ri: usize) -> bool {
        let r = &self.reqs[ri];
        if !r.cancelled {
            return false;
        }
        if r.outstanding == 0 && r.rewriting == 0 && !r.marking {
            self.free(ri);
        }
        true
    }

    pub(crate) fn find(&self, id: RequestId) -> Option<usize> {
        self.order
            .iter()
            .map(|&i| i as usize)
            .find(|&i| self.reqs[i].id == id)
    }

    /// Finds the request and checks that `slot` has an operation of `op`
    /// outstanding.
    pub(crate) fn lookup(&self, id: RequestId, slot: usize, op: ChildOp) -> Result<usize, Error> {
        let ri = self.find(id).ok_or(Error::UnknownRequest(id))?;
        let r = &self.reqs[ri];
        if slot >= r.n {
            return Err(Error::NoSuchSlot { id, slot });
        }
        let bit = 1 << slot;
        let expected = match op {
            ChildOp::Read => r.is_read() && r.outstanding & bit != 0,
            ChildOp::Write => {
                matches!(r.kind, Kind::Write | Kind::WriteZeroes) && r.outstanding & bit != 0
            }
            ChildOp::Flush => r.kind == Kind::Flush && r.outstanding & bit != 0,
            ChildOp::BlockStatus => r.kind == Kind::BlockStatus && r.outstanding & bit != 0,
            ChildOp::Rewrite => r.rewriting & bit != 0,
            ChildOp::Marked => r.marking,
        };
        if expected {
            Ok(ri)
        } else {
            Err(Error::UnexpectedCompletion { id, slot, op })
        }
    }

    /// Records the completion of `slot`'s child operation.
    fn record(&mut self, ri: usize, slot: usize, result: Result<(), Errno>) {
        let r = &mut self.reqs[ri];
        let bit = 1 << slot;
        r.outstanding &= !bit;
        r.done |= bit;
        match result {
            Ok(()) => r.ok |= bit,
            Err(e) => r.errors[slot] = e,
        }
    }

    /// A read issued by [`Action::Read`] finished. On success the data must be
    /// in `buffers` at `slot`; the core looks at the buffers only when it
    /// votes, and refuses the call ([`Error::BadBuffer`], nothing changed) if
    /// one it needs is missing or of the wrong length.
    pub fn handle_read<B: ReadBuffers + ?Sized>(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
        buffers: &B,
    ) -> Result<(), Error> {
        let ri = self.lookup(id, slot, ChildOp::Read)?;
        if self.reqs[ri].cancelled {
            // R-CANCEL-1..2: accounted for, and nothing more.
            self.record(ri, slot, result);
            self.reap(ri);
            return Ok(());
        }
        // A resync always votes (R-SYNC-4), whatever the read pattern.
        let fifo = self.cfg.read_pattern == ReadPattern::Fifo && self.reqs[ri].kind == Kind::Read;
        if fifo {
            if result.is_ok() && self.cfg.fifo_rewrite_failed && slot > 0 {
                self.check_buffers(ri, 1 << slot, buffers)?;
            }
            self.record(ri, slot, result);
            self.fifo_step(ri, slot, result);
        } else {
            let r = &self.reqs[ri];
            let last = r.outstanding == 1 << slot;
            // Early quorum: every success before the last may answer,
            // so it is compared with the successes so far — but not a
            // read that settles: it answers once settled (R-SYNC-3).
            let early = !last
                && result.is_ok()
                && self.cfg.early_quorum
                && r.kind == Kind::Read
                && !r.settle
                && r.answered.is_none();
            if last || early {
                let ok = r.ok | if result.is_ok() { 1 << slot } else { 0 };
                self.check_buffers(ri, ok, buffers)?;
            }
            self.record(ri, slot, result);
            if let Err(e) = result {
                // R-READ-2: reported at once.
                self.report(ri, slot, OpType::Read, Some(e));
            }
            if last {
                // A resync's quorum read first may not decide yet.
                if !self.read_the_rest(ri, buffers) {
                    self.decide_read(ri, buffers);
                }
            } else if early {
                self.try_answer(ri, slot, buffers);
            }
        }
        Ok(())
    }

    /// A write or write-zeroes finished (R-WRITE).
    pub fn handle_write(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        let ri = self.lookup(id, slot, ChildOp::Write)?;
        self.record(ri, slot, result);
        if self.reap(ri) {
            return Ok(()); // R-CANCEL-1..2
        }
        if let Err(e) = result {
            self.report(ri, slot, OpType::Write, Some(e)); // R-WRITE-1
        }
        let r = &self.reqs[ri];
        if r.done == r.all() {
            // R-SYNC-1: a child stale there does not count.
            let counted = r.ok & !r.skip;
            if counted.count_ones() as usize >= self.cfg.threshold {
                if self.cfg.sync_chunk.is_some() {
                    self.written(ri);
                }
                self.complete(ri, Outcome::Done);
            } else {
                // R-WRITE-2
                let e = r.error_vote();
                self.failure(ri);
                self.complete(ri, Outcome::Failed(e));
            }
        }
        Ok(())
    }

    /// A successful write's marks (R-SYNC-1..2): the children it failed on
    /// are stale on its chunks; every other holds the data, so the chunks
    /// are clean once flushed — those it may clean ([`Req::clean`]), unless
    /// another write to them ran at the same time ([`Req::shared`]).
    fn written(&mut self, ri: usize) {
        let r = &self.reqs[ri];
        let (id, chunks, failed) = (r.id, r.chunks, r.all() & !r.ok);
        let clean = if r.shared {
            Chunks {
                first: r.clean.first,
                end: r.clean.first,
            }
        } else {
            r.clean
        };
        if chunks.is_empty() {
            return;
        }
        for s in low_to_high(failed) {
            let child = self.reqs[ri].children[s];
            self.push(
                ri,
                Action::Mark {
                    id,
                    mark: Mark::Stale { child, chunks },
                },
            );
        }
        if clean.is_empty() {
            return;
        }
        let epoch = self.epoch;
        self.push(
            ri,
            Action::Mark {
                id,
                mark: Mark::Clean {
                    chunks: clean,
                    epoch,
                },
            },
        );
    }

    /// A flush finished (R-FLUSH).
    pub fn handle_flush(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        let ri = self.lookup(id, slot, ChildOp::Flush)?;
        self.record(ri, slot, result);
        if self.reap(ri) {
            return Ok(()); // R-CANCEL-1..2
        }
        if let Err(e) = result {
            self.report(ri, slot, OpType::Flush, Some(e)); // R-FLUSH-1
        }
        let r = &self.reqs[ri];
        if r.done == r.all() {
            // R-FLUSH-2: no FAILURE event, ever.
            let outcome = if r.ok.count_ones() as usize >= self.cfg.threshold {
                Outcome::Done
            } else {
                Outcome::Failed(r.error_vote())
            };
            if self.cfg.sync_chunk.is_some() && r.ok == r.all() {
                // Every child flushed: what was written before is durable.
                let (id, epoch) = (r.id, r.epoch);
                self.push(
                    ri,
                    Action::Mark {
                        id,
                        mark: Mark::Flushed { epoch },
                    },
                );
            }
            self.complete(ri, outcome);
        }
        Ok(())
    }

    /// A child's block status ([`Action::BlockStatus`]) is in: the first
    /// extent of the range, or the child's error.
    ///
    /// The answer is QEMU's (`quorum_co_block_status`): children are taken
    /// in slot order; the first one that failed is reported
    /// (`QUORUM_REPORT_BAD`, type `read`, with its error and the request's
    /// sectors) and the whole range is data, the children after it
    /// disregarded; otherwise the range starts with data — as long as the
    /// longest data extent any child reports — if any child has data there,
    /// and reads as zeroes — as long as the shortest zero extent — only
    /// where every child says so. No `QUORUM_FAILURE`, ever.
    pub fn handle_block_status(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<Extent, Errno>,
    ) -> Result<(), Error> {
        let ri = self.lookup(id, slot, ChildOp::BlockStatus)?;
        self.record(ri, slot, result.map(|_| ()));
        if self.reap(ri) {
            return Ok(()); // R-CANCEL-1..2
        }
        let r = &mut self.reqs[ri];
        if let Ok(e) = result {
            // An extent is at least a byte and at most the range.
            r.extent[slot] = e.len.clamp(1.min(r.len), r.len);
            if e.zero {
                r.zero |= 1 << slot;
            }
        }
        if r.done != r.all() {
            return Ok(());
        }
        let (mut data, mut zero, mut failed) = (0u64, r.len, None);
        for s in 0..r.n {
            if r.ok & (1 << s) == 0 {
                failed = Some((s, r.errors[s]));
                data = r.len;
                break;
            }
            if r.zero & (1 << s) != 0 {
                zero = zero.min(r.extent[s]);
            } else {
                data = data.max(r.extent[s]);
            }
        }
        if let Some((s, e)) = failed {
            self.report(ri, s, OpType::Read, Some(e));
        }
        let outcome = if data > 0 {
            Outcome::BlockStatus(Extent {
                len: data,
                zero: false,
            })
        } else {
            Outcome::BlockStatus(Extent {
                len: zero,
                zero: true,
            })
        };
        self.complete(ri, outcome);
        Ok(())
    }

    /// A rewrite issued by [`Action::Rewrite`] finished. Its result is
    /// ignored, as QEMU ignores it (R-READ-7), except under sync tracking
    /// where a settling write that failed leaves its child stale and a
    /// resync's copy that failed leaves it stale (R-SYNC-3..4); the request
    /// completes after its last rewrite.
    pub fn handle_rewrite(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        let ri = self.lookup(id, slot, ChildOp::Rewrite)?;
        let r = &mut self.reqs[ri];
        r.rewriting &= !(1 << slot);
        if let Err(e) = result {
            r.rewrite_failed |= 1 << slot;
            r.rewrite_errors[slot] = e;
        }
        if !self.reap(ri) {
            let r = &self.reqs[ri];
            if r.rewriting == 0 && r.pending.is_some() {
                if r.settle || r.kind == Kind::Resync {
                    self.settled_marks(ri);
                }
                let r = &self.reqs[ri];
                // A resync whose copy to a stale child failed did not do
                // its work: the child stays stale, and the caller hears it
                // (a job must not take it for done and try forever).
                let copy_failed = match r.kind {
                    Kind::Resync => low_to_high(r.rewrite_failed & r.skip).next(),
                    _ => None,
                };
                if let Some(outcome) = self.reqs[ri].pending.take() {
                    let outcome = match copy_failed {
                        Some(s) => Outcome::Failed(self.reqs[ri].rewrite_errors[s]),
                        None => outcome,
                    };
                    self.complete(ri, outcome);
                }
            }
        }
        // R-CANCEL-2: a cancelled request's rewrite held writes back too.
        self.release_held_writes();
        Ok(())
    }

    /// Starts the held writes that no running rewrite overlaps any more.
    fn release_held_writes(&mut self) {
        // Issuing adds no request, so the live list cannot change meanwhile.
        let order = self.order.clone();
        for &wi in &order {
            let wi = wi as usize;
            let w = &self.reqs[wi];
            if !(w.live && w.held) {
                continue;
            }
            let (o, l) = (w.offset, w.len);
            if order.iter().any(|&r| {
                let r = &self.reqs[r as usize];
                r.rewriting != 0 && r.overlaps(o, l)
            }) {
                continue;
            }
            self.reqs[wi].held = false;
            self.start(wi);
        }
    }
}
