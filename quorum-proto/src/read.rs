//! Deciding reads: the content vote (R-READ), blkverify, and fifo (R-FIFO).

use crate::config::ReadPattern;
use crate::errno::Errno;
use crate::event::OpType;
use crate::quorum::{Kind, Quorum};
use crate::request::{Action, Error, Outcome, ReadBuffers};
use crate::sync::{Chunks, Mark};
use crate::vote::{Mask, Tally, low_to_high};

/// Where `a` and `b` first differ, if they do. `memcmp` first: equal
/// buffers, the common case, never take the byte loop.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

impl<const C: usize, const R: usize, const A: usize> Quorum<C, R, A> {
    /// Checks that every slot of `slots` has a buffer of the request's length.
    pub(crate) fn check_buffers<B: ReadBuffers + ?Sized>(
        &self,
        ri: usize,
        slots: Mask,
        buffers: &B,
    ) -> Result<(), Error> {
        let r = &self.reqs[ri];
        for slot in low_to_high(slots) {
            let got = buffers.buffer(slot).map(<[u8]>::len);
            if got.is_none_or(|g| g as u64 != r.len) {
                return Err(Error::BadBuffer {
                    id: r.id,
                    slot,
                    expected: r.len,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Early quorum: `slot` just read successfully; answer if `threshold`
    /// successes now hold its bytes. The answer names the group's lowest
    /// slot, as the full vote would (R-VOTE-2). Buffers were checked.
    pub(crate) fn try_answer<B: ReadBuffers + ?Sized>(
        &mut self,
        ri: usize,
        slot: usize,
        buffers: &B,
    ) {
        let r = &self.reqs[ri];
        let buf = |s: usize| buffers.buffer(s).unwrap_or(&[]);
        let mut agree = 0;
        let mut first = slot;
        for s in low_to_high(r.ok) {
            if s == slot || buf(s) == buf(slot) {
                agree += 1;
                first = first.min(s);
            }
        }
        if agree < self.cfg.threshold {
            return;
        }
        let outcome = Outcome::Read {
            slot: first,
            child: r.children[first],
        };
        self.reqs[ri].answered = Some(first);
        let id = self.reqs[ri].id;
        self.push(ri, Action::Answer { id, outcome });
    }

    /// All children answered: vote (R-READ-3..8). Buffers were checked.
    ///
    /// A read already answered by early quorum is judged against its answer
    /// instead of the full vote's winner (they differ only when
    /// `threshold ≤ N/2`): the stragglers that differ from what the caller
    /// got are reported and repaired.
    pub(crate) fn decide_read<B: ReadBuffers + ?Sized>(&mut self, ri: usize, buffers: &B) {
        let r = &self.reqs[ri];
        if r.kind == Kind::Resync && r.stale {
            // R-SYNC-4: a client write overlapped it: what it read may mix
            // older and newer data — no vote is a sign of anything then
            // (not even one without quorum: writes racing on different
            // blocks of the chunk can leave every child different for a
            // moment). It copies nothing and is retried.
            self.complete(ri, Outcome::Failed(Errno::EAGAIN));
            return;
        }
        let buf = |s: usize| buffers.buffer(s).unwrap_or(&[]);
        let ok = r.ok;
        // An answer had `threshold` agreeing successes, and early quorum is
        // off with blkverify: neither check below can apply to it.
        if r.answered.is_none() {
            // R-READ-3: too few successful reads; the error vote decides.
            if (ok.count_ones() as usize) < self.cfg.threshold {
                let e = r.error_vote();
                self.failure(ri);
                self.complete(ri, Outcome::Failed(e));
                return;
            }
            let first = ok.trailing_zeros() as usize;

            // R-READ-8: blkverify compares the first answer with the others
            // and stops at the first difference.
            if self.cfg.blkverify {
                for s in low_to_high(ok).skip(1) {
                    if let Some(at) = first_difference(buf(first), buf(s)) {
                        let offset = r.offset.saturating_add(at as u64);
                        self.complete(ri, Outcome::ContentsMismatch { offset });
                        return;
                    }
                }
            }
        }

        // R-READ-4..5, R-VOTE-1: group by exact content. When everything
        // agrees this is one memcmp per child, the fast path of R-READ-4.
        let mut tally = Tally::<C>::new();
        for s in low_to_high(ok) {
            tally.add(s, |rep| buf(rep) == buf(s));
        }
        let found = match r.answered {
            Some(a) => (0..tally.versions())
                .find(|&v| tally.members(v) & (1 << a) != 0)
                .map(|v| (v, a)),
            None => tally.winner().map(|w| (w, tally.first(w))),
        };
        let Some((w, source)) = found else {
            // Unreachable: ok has at least `threshold` ≥ 1 members, and an
            // answered slot is one of them.
            self.complete(ri, Outcome::Failed(Errno::EIO));
            return;
        };
        if r.answered.is_none() && tally.count(w) < self.cfg.threshold {
            // R-READ-5: no mismatch is reported.
            self.failure(ri);
            self.complete(ri, Outcome::Failed(Errno::EIO));
            return;
        }
        let outcome = Outcome::Read {
            slot: source,
            child: r.children[source],
        };
        if r.settle || r.kind == Kind::Resync {
            let losers = ok & !tally.members(w);
            self.settle(ri, source, losers, outcome);
            return;
        }

        // R-READ-6, R-VOTE-4: report every loser — unless a write followed
        // an early answer, making the stragglers' content no sign of anything.
        if !r.quiet {
            for s in tally.losers(w) {
                self.report(ri, s, OpType::Read, None);
            }
        }
        // R-READ-7: rewrite them, then complete.
        if self.cfg.rewrite_corrupted && tally.versions() > 1 && !self.reqs[ri].stale {
            for s in tally.losers(w) {
                self.rewrite(ri, s, source);
            }
            let r = &mut self.reqs[ri];
            r.rewriting = ok & !tally.members(w);
            r.pending = Some(outcome);
            return;
        }
        self.complete(ri, outcome);
    }

    /// Sync tracking (R-SYNC-3..4): the vote is in and `source` won.
    /// Settling (an unsettled range) writes the winner to every non-stale
    /// child that lost or failed to read, whatever `rewrite-corrupted`
    /// says, and counts the differences instead of reporting them; a
    /// resync also writes it to the children stale there. The request
    /// completes once those writes are done ([`Quorum::settled_marks`]).
    /// A read that a client write overlapped writes nothing: what it saw
    /// may be older than that write (a resync then ends with `EAGAIN`).
    fn settle(&mut self, ri: usize, source: usize, losers: crate::vote::Mask, outcome: Outcome) {
        let r = &self.reqs[ri];
        let resync = r.kind == Kind::Resync;
        let outcome = if resync { Outcome::Done } else { outcome };
        if r.stale {
            let o = if resync {
                Outcome::Failed(Errno::EAGAIN)
            } else {
                outcome
            };
            self.complete(ri, o);
            return;
        }
        let mut targets = if resync { r.skip & r.all() } else { 0 };
        if r.settle {
            self.settled += u64::from(losers.count_ones());
            targets |= losers | (r.done & !r.ok);
        } else {
            // A resync of a settled range: losers are corruption, as ever.
            if !r.quiet {
                for s in low_to_high(losers) {
                    self.report(ri, s, OpType::Read, None);
                }
            }
            if self.cfg.rewrite_corrupted {
                targets |= losers;
            }
        }
        if targets == 0 {
            self.settled_marks(ri);
            self.complete(ri, outcome);
            return;
        }
        if self.reqs[ri].settle {
            // R-SYNC-3: after a crash the children may hold different
            // writes, and an overlapping settling read that has not voted yet may
            // pick another winner (over its own range) and settle it over
            // this one — a read once answered would not be repeatable. It
            // votes as usual but settles and repairs nothing (a resync ends
            // with EAGAIN), as when a write overlaps it; a settling read submitted
            // while these writes run starts so (`submit_with`).
            self.settle_overlapping(ri);
        }
        for s in low_to_high(targets) {
            self.rewrite(ri, s, source);
        }
        let r = &mut self.reqs[ri];
        r.rewriting = targets;
        r.pending = Some(outcome);
    }

    /// The marks a settle or resync leaves once its writes are done: a
    /// non-stale child whose write failed is stale there; a stale child
    /// the resync copied to is fresh once flushed; a settled range is
    /// clean once flushed (whole chunks only: a client read may cover part
    /// of one; a resync's range is whole chunks).
    pub(crate) fn settled_marks(&mut self, ri: usize) {
        let Some(chunk) = self.cfg.sync_chunk else {
            return;
        };
        let r = &self.reqs[ri];
        // A write submitted since the vote (held until these writes were
        // done) may still tear the range: it is not clean (R-SYNC-2).
        let (id, resync, settle) = (r.id, r.kind == Kind::Resync, r.settle && !r.stale);
        let chunks = if resync {
            r.chunks
        } else {
            let first = r.offset.div_ceil(chunk);
            let end = (r.offset + r.len) / chunk;
            Chunks { first, end }
        };
        let (failed, skip, all, touched) = (r.rewrite_failed, r.skip, r.all(), r.chunks);
        let epoch = self.epoch;
        // A settling write that failed leaves its child without the winner
        // on every chunk it touches, a chunk the read covers only partly too
        // (a resync's copy that failed leaves its target stale as it was).
        // A settling read did not read the children stale on some chunk of
        // its range, nor write them: where they are not stale they may hold
        // another of a crash's writes, and a later read there could vote
        // otherwise — stale on the whole range (R-SYNC-3: repeatable). A
        // read within one chunk skipped only children stale on that very
        // chunk: marking them again would change nothing but cut a
        // rebuild's copy that waits for its flush, copied again and again
        // under a client's reads.
        let spans = touched.end.saturating_sub(touched.first) > 1;
        let stale = match (resync, settle) {
            (true, _) => failed & !skip,
            (false, true) if spans => failed | (skip & all),
            (false, _) => failed,
        };
        for s in low_to_high(stale) {
            let child = self.reqs[ri].children[s];
            self.push(
                ri,
                Action::Mark {
                    id,
                    mark: Mark::Stale {
                        child,
                        chunks: touched,
                    },
                },
            );
        }
        if chunks.is_empty() {
            return;
        }
        if resync {
            for s in low_to_high(skip & all & !failed) {
                let child = self.reqs[ri].children[s];
                self.push(
                    ri,
                    Action::Mark {
                        id,
                        mark: Mark::Fresh {
                            child,
                            chunks,
                            epoch,
                        },
                    },
                );
            }
        }
        if settle {
            self.push(
                ri,
                Action::Mark {
                    id,
                    mark: Mark::Clean { chunks, epoch },
                },
            );
        }
    }

    fn rewrite(&mut self, ri: usize, slot: usize, source: usize) {
        let r = &self.reqs[ri];
        let a = Action::Rewrite {
            id: r.id,
            slot,
            child: r.children[slot],
            source,
            offset: r.offset,
            len: r.len,
        };
        self.push(ri, a);
    }

    /// R-FIFO-1..2: one child at a time, in slot order.
    pub(crate) fn fifo_step(&mut self, ri: usize, slot: usize, result: Result<(), Errno>) {
        debug_assert_eq!(self.cfg.read_pattern, ReadPattern::Fifo);
        match result {
            Err(e) => {
                self.report(ri, slot, OpType::Read, Some(e));
                // The next child in slot order not stale here (R-SYNC-1).
                let r = &self.reqs[ri];
                let next = (slot + 1..r.n).find(|s| r.skip & (1 << s) == 0);
                if let Some(next) = next {
                    self.issue(ri, next);
                } else {
                    // R-FIFO-2: the last child's error, no FAILURE, no vote.
                    self.complete(ri, Outcome::Failed(e));
                }
            }
            Ok(()) => {
                let r = &self.reqs[ri];
                let outcome = Outcome::Read {
                    slot,
                    child: r.children[slot],
                };
                // Improvement (SPEC.md, opt-in): repair the children that
                // failed before this one.
                let failed = r.done & !r.ok;
                if self.cfg.fifo_rewrite_failed && failed != 0 && !r.stale {
                    for s in low_to_high(failed) {
                        self.rewrite(ri, s, slot);
                    }
                    let r = &mut self.reqs[ri];
                    r.rewriting = failed;
                    r.pending = Some(outcome);
                } else {
                    self.complete(ri, outcome);
                }
            }
        }
    }
}
