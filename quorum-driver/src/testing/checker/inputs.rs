//! The core's inputs, forwarded and checked: what the contract allows the
//! core to answer to each call (exactly, wherever the model can know), that
//! a refusal changes nothing, and what an accepted call means for the model
//! (R-CANCEL-1..2, the drain gate, R-MEMBER-1..3).

use quorum_proto::{
    ChildId, ChildOp, Errno, Error, Extent, MemberError, NoBuffers, ReadBuffers, ReadPattern,
    Request, RequestId,
};

use super::{Call, Checker};
use crate::testing::track::Gen;

impl<const C: usize, const R: usize, const A: usize> Checker<C, R, A> {
    // ---- submit ------------------------------------------------------------

    /// [`Quorum::submit`](quorum_proto::Quorum::submit), checked.
    pub fn submit(&mut self, id: RequestId, request: Request) -> Result<(), Error> {
        self.submit_with(id, request, &quorum_proto::sync::NoMarks)
    }

    /// [`Quorum::submit_with`](quorum_proto::Quorum::submit_with), checked:
    /// the marks asked are recorded with the request (R-SYNC-1, R-SYNC-3).
    pub fn submit_with(
        &mut self,
        id: RequestId,
        request: Request,
        marks: &dyn quorum_proto::sync::Marks,
    ) -> Result<(), Error> {
        self.tick += 1;
        let tick = self.tick;
        self.note(Call::Submit(id, request));
        let (offset, len) = request.range();
        let invalid = offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64)
            // R-SYNC-4: nothing to resync without sync tracking.
            || (matches!(request, Request::Resync { .. }) && self.cfg.sync_chunk.is_none());
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
            .map(|g| self.budget(g.n()).saturating_sub(g.actions_polled))
            .sum();
        let need = self.budget(self.members.len());
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
        let r = self.q.submit_with(id, request, marks);
        self.allowed(&Call::Submit(id, request), &r, &allowed, || {
            format!(
                "{sure_places} to {maybe_places} places held of R = {R}, at most {worst} actions \
                 held and {need} needed of A = {A}, {} drains",
                self.drains
            )
        });
        if let Err(e) = r {
            if let Some(b) = before {
                self.unchanged(b, &"submit", &e);
            }
            self.check_invariants();
            return r;
        }
        // R-SYNC-1: a read with fewer than `threshold` children not stale
        // there fails at once.
        let at_once = self.cfg.sync_chunk.is_some_and(|chunk| {
            let chunks = quorum_proto::sync::Chunks::of(offset, len, chunk);
            let fresh = self
                .members
                .iter()
                .filter(|&&c| !marks.stale(c, chunks))
                .count();
            matches!(request, Request::Read { .. } | Request::Resync { .. })
                && (fresh < self.cfg.threshold || fresh == 0)
        });
        let want = in_flight + usize::from(!at_once);
        ensure!(
            self,
            self.q.in_flight() == want,
            "an accepted submit took in_flight() from {in_flight} to {}, not {want}",
            self.q.in_flight()
        );
        for g in self.gens.iter_mut().filter(|g| g.id == id) {
            g.superseded = true;
        }
        let mut g = Gen::new(id, request, self.members.clone(), tick);
        let cfg = self.cfg;
        if let Some(chunk) = cfg.sync_chunk {
            let (o, l) = request.range();
            let chunks = quorum_proto::sync::Chunks::of(o, l, chunk);
            let writes = g.is_write();
            if g.is_read() || writes {
                for (s, c) in g.children.iter().enumerate() {
                    if marks.stale(*c, chunks) {
                        g.skip |= 1 << s;
                    }
                }
            }
            g.settle = (matches!(request, Request::Resync { .. })
                || (g.is_read() && cfg.read_pattern == ReadPattern::Quorum))
                && marks.unsettled(chunks);
            if writes && !chunks.is_empty() {
                g.marked = Some(false);
            }
        }
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

    // ---- completions -----------------------------------------------------------

    /// [`Quorum::handle_read`](quorum_proto::Quorum::handle_read), checked.
    pub fn handle_read<B: ReadBuffers + ?Sized>(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
        buffers: &B,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Read, result, buffers)
    }

    /// [`Quorum::handle_write`](quorum_proto::Quorum::handle_write), checked.
    pub fn handle_write(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Write, result, &NoBuffers)
    }

    /// [`Quorum::handle_flush`](quorum_proto::Quorum::handle_flush), checked.
    pub fn handle_flush(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Flush, result, &NoBuffers)
    }

    /// [`Quorum::handle_marked`](quorum_proto::Quorum::handle_marked),
    /// checked: accepted only for a write whose `Unsettle` was polled and
    /// not yet answered (R-SYNC-2).
    pub fn handle_marked(&mut self, id: RequestId) -> Result<(), Error> {
        self.tick += 1;
        // Also a cancelled write: its mark is still owed (R-CANCEL-2).
        let owner = self.target(id);
        let waiting = owner.is_some_and(|g| self.gens[g].marking());
        let before = (!waiting).then(|| self.before());
        let r = self.q.handle_marked(id);
        match (&r, waiting) {
            (Ok(()), true) => {
                if let Some(g) = owner {
                    self.gens[g].marked = Some(true);
                }
            }
            (Err(e), false) => {
                if let Some(b) = before {
                    self.unchanged(b, &"handle_marked", e);
                }
            }
            (r, w) => self.fail(format!(
                "handle_marked({id}) answered {r:?}, but the request {} waiting for its mark",
                if w { "was" } else { "was not" }
            )),
        }
        self.check_invariants();
        r
    }

    /// [`Quorum::handle_rewrite`](quorum_proto::Quorum::handle_rewrite), checked.
    pub fn handle_rewrite(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<(), Errno>,
    ) -> Result<(), Error> {
        self.completion(id, slot, ChildOp::Rewrite, result, &NoBuffers)
    }

    /// [`Quorum::handle_block_status`](quorum_proto::Quorum::handle_block_status),
    /// checked.
    pub fn handle_block_status(
        &mut self,
        id: RequestId,
        slot: usize,
        result: Result<Extent, Errno>,
    ) -> Result<(), Error> {
        self.extent = result.ok();
        let r = self.completion(
            id,
            slot,
            ChildOp::BlockStatus,
            result.map(|_| ()),
            &NoBuffers,
        );
        self.extent = None;
        r
    }

    /// Whether a request could ever ask for `op`.
    fn possible(&self, g: &Gen, op: ChildOp) -> bool {
        let cfg = &self.cfg;
        match op {
            ChildOp::Read => g.is_read(),
            ChildOp::Write => g.is_write(),
            ChildOp::Flush => g.req == Request::Flush,
            ChildOp::BlockStatus => matches!(g.req, Request::BlockStatus { .. }),
            ChildOp::Rewrite => {
                g.is_read()
                    && (g.settle
                        || matches!(g.req, Request::Resync { .. })
                        || match cfg.read_pattern {
                            ReadPattern::Quorum => cfg.rewrite_corrupted,
                            ReadPattern::Fifo => cfg.fifo_rewrite_failed,
                        })
            }
            ChildOp::Marked => g.marked == Some(false),
        }
    }

    /// The slots whose buffers the core must look at for this read
    /// completion, in the order it checks them.
    pub(super) fn looked_at(&self, g: &Gen, slot: usize, result: Result<(), Errno>) -> Vec<usize> {
        let cfg = &self.cfg;
        if g.cancelled.is_some() {
            return Vec::new(); // R-CANCEL-1: nothing is voted any more
        }
        if g.is_fifo_read(cfg) {
            return if result.is_ok() && cfg.fifo_rewrite_failed && slot > 0 {
                vec![slot]
            } else {
                Vec::new()
            };
        }
        match cfg.read_pattern {
            ReadPattern::Quorum | ReadPattern::Fifo => {
                // Every read of a quorum request (and of a resync) is issued
                // at submission, except to the slots stale there (R-SYNC-1);
                // a resync of a settled range reads a quorum first and looks
                // at it when it is in (R-SYNC-4).
                let done = g.results.len() + 1;
                let last = done + g.skipped() == g.n() || done == g.first_wave(cfg);
                let early = !last && result.is_ok() && Self::may_answer_early(cfg, g);
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
        }
    }

    /// Whether a successful read of `g` that is not its last may answer
    /// early: a client read with early quorum not yet answered, and not
    /// settling (R-SYNC-3: answered only once settled).
    fn may_answer_early(cfg: &quorum_proto::Config, g: &Gen) -> bool {
        cfg.early_quorum
            && matches!(g.req, Request::Read { .. })
            && !g.settle
            && g.answer_due.is_none()
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
        let call = Call::Handle(op, id, slot, result);
        self.note(call);
        let call = &call;
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
            ChildOp::Marked => self.q.handle_marked(id),
            ChildOp::BlockStatus => {
                let e = result.map(|()| {
                    self.extent.unwrap_or(Extent {
                        len: 0,
                        zero: false,
                    })
                });
                self.q.handle_block_status(id, slot, e)
            }
        };
        self.allowed(call, &r, &allowed, || match target {
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
                self.unchanged(b, call, &e);
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
        if op == ChildOp::BlockStatus
            && let Some(e) = self.extent
            && slot < g.extents.len()
        {
            g.extents[slot] = Some(e);
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
            let not_last = g.results.len() + g.skipped() < g.n();
            if result.is_ok() && not_last && Self::may_answer_early(&cfg, g) {
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

    /// [`Quorum::cancel`](quorum_proto::Quorum::cancel), checked (R-CANCEL-1..2).
    pub fn cancel(&mut self, id: RequestId) -> Result<(), Error> {
        self.tick += 1;
        let tick = self.tick;
        self.note(Call::Cancel(id));
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
        self.allowed(&Call::Cancel(id), &r, &allowed, || {
            "cancel applies to a request in flight, once".into()
        });
        match (r, target) {
            (Err(e), _) => {
                if let Some(b) = before {
                    self.unchanged(b, &"cancel", &e);
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

    /// [`Quorum::start_drain`](quorum_proto::Quorum::start_drain), checked.
    pub fn start_drain(&mut self) {
        self.tick += 1;
        self.note(Call::StartDrain);
        self.q.start_drain();
        self.drains = self.drains.saturating_add(1);
        self.check_invariants();
    }

    /// [`Quorum::end_drain`](quorum_proto::Quorum::end_drain), checked.
    pub fn end_drain(&mut self) -> Result<(), Error> {
        self.tick += 1;
        self.note(Call::EndDrain);
        let allowed = if self.drains == 0 {
            [Err(Error::NotDraining)]
        } else {
            [Ok(())]
        };
        let before = (self.drains == 0).then(|| self.before());
        let r = self.q.end_drain();
        self.allowed(&Call::EndDrain, &r, &allowed, || {
            format!("{} drains under way", self.drains)
        });
        match r {
            Ok(()) => self.drains -= 1,
            Err(e) => {
                if let Some(b) = before {
                    self.unchanged(b, &"end_drain", &e);
                }
            }
        }
        self.check_invariants();
        r
    }

    // ---- membership -----------------------------------------------------------

    /// [`Quorum::add_child`](quorum_proto::Quorum::add_child), checked (R-MEMBER-1, R-MEMBER-3).
    pub fn add_child(&mut self) -> Result<ChildId, MemberError> {
        self.tick += 1;
        self.note(Call::AddChild);
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
            Err(e) => self.unchanged(before, &"add_child", &e),
        }
        self.check_invariants();
        r
    }

    /// [`Quorum::remove_child`](quorum_proto::Quorum::remove_child), checked (R-MEMBER-1..3).
    pub fn remove_child(&mut self, child: ChildId) -> Result<(), MemberError> {
        self.tick += 1;
        self.note(Call::RemoveChild(child));
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
            Err(e) => self.unchanged(before, &"remove_child", &e),
        }
        self.check_invariants();
        r
    }
}
