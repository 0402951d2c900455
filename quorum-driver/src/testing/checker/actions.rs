//! The checks of everything the core emits: each action as it is polled
//! (it belongs to a request the core still owes it for, with the request's
//! child, range and kind; events with its sectors; early answers when due;
//! ordering), each completion against the reference model (R-CANCEL-1 for
//! a cancelled request), and liveness once the queue is empty.

use quorum_proto::{Action, ChildId, ChildOp, Errno, Event, OpType, Outcome, ReadPattern, Request};

use super::{Call, Checker};
use crate::testing::model::{Rewrite, sectors};
use crate::testing::track::Gen;

impl<const C: usize, const R: usize, const A: usize> Checker<C, R, A> {
    // ---- actions -------------------------------------------------------------

    /// [`Quorum::poll_action`](quorum_proto::Quorum::poll_action), checked.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.tick += 1;
        let a = self.q.poll_action();
        match a {
            None => self.check_quiet(),
            Some(a) => {
                self.note(Call::Poll(a));
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
            // R-SYNC-2: a write waits for its Unsettle to be made durable.
            if !g.outstanding.is_empty() || g.marked == Some(false) {
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
        let budget = self.budget(n);
        ensure!(
            self,
            polled <= budget,
            "{a:?}: request {id} produced {polled} actions, more than the {budget} reserved"
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
                    g.skip & (1 << slot) == 0,
                    "{a:?}: reads a child stale on the request's chunks (R-SYNC-1)"
                );
                ensure!(
                    self,
                    (offset, len) == (g.offset, g.len),
                    "{a:?}: not the request's range"
                );
                if g.is_fifo_read(&cfg) {
                    // R-FIFO-1: slot k only after slots 0..k failed (those
                    // not stale there, R-SYNC-1).
                    let reads = g.polled.iter().filter(|(_, o)| *o == ChildOp::Read).count();
                    let fresh = |s: &usize| g.skip & (1 << s) == 0;
                    ensure!(
                        self,
                        (0..=slot).filter(fresh).count() == reads,
                        "{a:?}: fifo read out of order (R-FIFO-1)"
                    );
                    for s in (0..slot).filter(fresh) {
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
                // R-SYNC-2: write-intent before any child write.
                ensure!(
                    self,
                    g.marked != Some(false),
                    "{a:?}: a child write issued before its Unsettle was durable (R-SYNC-2)"
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
            Action::BlockStatus {
                slot,
                child,
                offset,
                len,
                ..
            } => {
                self.child_op(gi, slot, child, ChildOp::BlockStatus, &a);
                let g = &self.gens[gi];
                ensure!(
                    self,
                    matches!(g.req, Request::BlockStatus { .. }),
                    "{a:?} for {:?}",
                    g.req
                );
                ensure!(
                    self,
                    (offset, len) == (g.offset, g.len),
                    "{a:?}: not the request's range"
                );
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
            Action::Mark { mark, .. } => self.check_mark(gi, mark, &a),
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
            g.result_of(source) == Some(Ok(())),
            "{a:?}: the source slot's read did not succeed"
        );
        if !g.modelled() {
            self.check_sync_rewrite(g, slot, source, a);
        } else {
            self.check_repair(g, slot, source, a);
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

    /// R-SYNC-3..4: a settling or resync write goes to a child stale there
    /// (a resync's copy, never read) or to a child that was read and either
    /// failed or differs from the winner; whatever rewrite-corrupted says.
    fn check_sync_rewrite(&self, g: &Gen, slot: usize, source: usize, a: &Action) {
        ensure!(
            self,
            g.skip & (1 << source) == 0,
            "{a:?}: the source is stale there (R-SYNC-1)"
        );
        if g.skip & (1 << slot) != 0 {
            ensure!(
                self,
                matches!(g.req, Request::Resync { .. }),
                "{a:?}: a read writes to a child stale there (only a resync copies to it, R-SYNC-4)"
            );
            return;
        }
        ensure!(
            self,
            g.result_of(slot).is_some(),
            "{a:?}: the slot was not read yet"
        );
        if g.settle {
            if g.result_of(slot) == Some(Ok(())) {
                let (b, s) = (&g.bufs[slot], &g.bufs[source]);
                ensure!(
                    self,
                    b.is_none() || s.is_none() || b != s,
                    "{a:?}: settles a slot that agrees with the winner (R-SYNC-3)"
                );
            }
        } else {
            // Stale children only changed who votes: repairs are R-READ-7's.
            self.check_repair(g, slot, source, a);
        }
    }

    /// R-READ-7 and fifo's repair: what a repair of a modelled read may be.
    fn check_repair(&self, g: &Gen, slot: usize, source: usize, a: &Action) {
        let cfg = &self.cfg;
        ensure!(
            self,
            g.result_of(slot).is_some(),
            "{a:?}: the slot was not read yet"
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
    }

    /// R-SYNC: a mark belongs to sync tracking, and each kind to the
    /// requests that may make it.
    fn check_mark(&mut self, gi: usize, mark: quorum_proto::sync::Mark, a: &Action) {
        use quorum_proto::sync::Mark;
        ensure!(
            self,
            self.cfg.sync_chunk.is_some(),
            "{a:?}: a mark without sync tracking"
        );
        let g = &self.gens[gi];
        match mark {
            Mark::Unsettle { .. } => {
                ensure!(
                    self,
                    g.is_write() && g.marked == Some(false),
                    "{a:?}: Unsettle for {:?} (only a write, once, before its child writes: R-SYNC-2)",
                    g.req
                );
                ensure!(
                    self,
                    !g.polled.iter().any(|p| p.1 == ChildOp::Write),
                    "{a:?}: Unsettle after a child write was issued (R-SYNC-2)"
                );
            }
            Mark::Flushed { .. } => {
                ensure!(
                    self,
                    g.req == Request::Flush,
                    "{a:?}: Flushed for {:?}",
                    g.req
                );
            }
            Mark::Stale { child, .. } | Mark::Fresh { child, .. } => {
                ensure!(
                    self,
                    g.children.contains(&child),
                    "{a:?}: a mark for a child outside the request's child set"
                );
            }
            Mark::Clean { .. } => {
                ensure!(
                    self,
                    g.is_write() || g.is_read(),
                    "{a:?}: Clean for {:?}",
                    g.req
                );
            }
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
                    Request::Read { .. } | Request::BlockStatus { .. } | Request::Resync { .. } => {
                        (OpType::Read, sectors(g.offset, g.len))
                    }
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
        if !g.modelled() {
            // Sync tracking changed who votes or what is rewritten: the
            // structural contract only (and R-SYNC's checks on the way).
            if g.cancelled.is_some() {
                ensure!(
                    self,
                    outcome == Outcome::Failed(Errno::ECANCELED),
                    "{what}, but it was cancelled: ECANCELED (R-CANCEL-1)"
                );
            } else {
                ensure!(
                    self,
                    g.outstanding.is_empty(),
                    "{what} with child operations outstanding: {:?}",
                    g.outstanding
                );
            }
            return;
        }
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
}
