//! The reference model of `SPEC.md`: what one request must end with, given
//! the configuration and every child's answer.
//!
//! It is written from the rules, not from the core: votes group `(slot,
//! value)` pairs with `==` in plain vectors (R-VOTE-1), the tie-break and the
//! report order are the rules' own wording (R-VOTE-2..4), and nothing of
//! `quorum_proto::vote` is used. Only the core's plain data types
//! ([`Outcome`], [`Event`], [`Errno`], [`ChildId`]) are shared, so results
//! compare with `==`. The [`Checker`](super::Checker) holds the core to it at
//! every completion; tests may call it directly.

use quorum_proto::{ChildId, Config, Errno, Event, Extent, OpType, Outcome, ReadPattern, Request};

/// `(sector_num, sectors_count)` as SPEC.md's "Sizes" defines them:
/// `offset / 512` and `ceil((offset + bytes) / 512) - sector_num`.
pub fn sectors(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / 512;
    (start, offset.saturating_add(len).div_ceil(512) - start)
}

/// Groups `(slot, value)` voters, given in slot order, into versions by
/// equality (R-VOTE-1), in order of first appearance; each version lists its
/// slots in increasing order.
pub fn versions<T: PartialEq>(voters: &[(usize, T)]) -> Vec<Vec<usize>> {
    // (index into `voters` of the version's first member, its slots)
    let mut vs: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, (slot, v)) in voters.iter().enumerate() {
        match vs.iter_mut().find(|(f, _)| voters[*f].1 == *v) {
            Some((_, members)) => members.push(*slot),
            None => vs.push((i, vec![*slot])),
        }
    }
    vs.into_iter().map(|(_, m)| m).collect()
}

/// R-VOTE-2: the version with the most members wins; among equals, the one
/// whose first member has the highest slot (the one that appeared last).
/// `None` when nobody voted.
pub fn winner(vs: &[Vec<usize>]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (v, m) in vs.iter().enumerate() {
        if best.is_none_or(|b| m.len() >= vs[b].len()) {
            best = Some(v);
        }
    }
    best
}

/// R-VOTE-3 over `(slot, errno)` in slot order: the most frequent error,
/// ties as in R-VOTE-2. `None` when nothing failed.
pub fn error_vote(failed: &[(usize, Errno)]) -> Option<Errno> {
    let vs = versions(failed);
    let first = vs[winner(&vs)?][0];
    failed.iter().find(|(s, _)| *s == first).map(|(_, e)| *e)
}

/// R-VOTE-4: the slots of every version but `w`, losing versions most
/// recent first, inside a version from the highest slot down.
pub fn losers(vs: &[Vec<usize>], w: usize) -> Vec<usize> {
    (0..vs.len())
        .rev()
        .filter(|&v| v != w)
        .flat_map(|v| vs[v].iter().rev().copied())
        .collect()
}

/// A repair the model expects (R-READ-7, or the fifo improvement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rewrite {
    /// The slot rewritten.
    pub slot: usize,
    /// The child behind that slot.
    pub child: ChildId,
    /// The slot whose buffer is written.
    pub source: usize,
}

/// What SPEC.md says a request ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The outcome of its `Action::Complete`.
    pub outcome: Outcome,
    /// Its events, in the order they must be emitted.
    pub events: Vec<Event>,
    /// Its rewrites, in the order they must be asked for.
    pub rewrites: Vec<Rewrite>,
}

/// One request and every answer its children gave: the model's input.
#[derive(Clone, Copy, Debug)]
pub struct Case<'a> {
    /// The configuration in effect (after R-CFG-6, as `Quorum::config` says).
    pub config: &'a Config,
    /// The request.
    pub request: Request,
    /// Its child set, by slot (R-MEMBER-4).
    pub children: &'a [ChildId],
    /// The results of its child reads, writes or flushes (not rewrites), in
    /// the order they completed.
    pub results: &'a [(usize, Result<(), Errno>)],
    /// Read buffers by slot: every successful slot of a `quorum` read needs
    /// one.
    pub buffers: &'a [Option<Vec<u8>>],
    /// Block status: each successful slot's first extent.
    pub extents: &'a [Option<Extent>],
    /// Early quorum: the answer given before the completion, if any.
    pub answer: Option<Outcome>,
    /// An early-answered read that an overlapping write followed before it
    /// was decided: its content mismatches are not reported (the caller saw
    /// the two as sequential).
    pub quiet: bool,
    /// False when a write overlapped the read while it was undecided: its
    /// view may mix old and new data, so it must repair nothing (the
    /// ordering improvement, R-CANCEL-2).
    pub repair: bool,
}

impl Case<'_> {
    fn fifo(&self) -> bool {
        matches!(self.request, Request::Read { .. })
            && self.config.read_pattern == ReadPattern::Fifo
    }

    fn report(&self, op: OpType, error: Option<Errno>, slot: usize) -> Event {
        let (offset, len) = self.request.range();
        let (sector_num, sectors_count) = if op == OpType::Flush {
            (0, 0) // R-FLUSH-1 (QEMU 10)
        } else {
            sectors(offset, len)
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
        let (offset, len) = self.request.range();
        let (sector_num, sectors_count) = sectors(offset, len);
        Event::Failure {
            sector_num,
            sectors_count,
        }
    }

    fn op(&self) -> OpType {
        match self.request {
            Request::Read { .. } => OpType::Read,
            Request::Write { .. } | Request::WriteZeroes { .. } => OpType::Write,
            Request::Flush => OpType::Flush,
            // QEMU reports a child's block status failure as a read.
            Request::BlockStatus { .. } | Request::Resync { .. } => OpType::Read,
        }
    }

    fn buf(&self, slot: usize) -> Result<&[u8], String> {
        self.buffers
            .get(slot)
            .and_then(Option::as_deref)
            .ok_or_else(|| format!("slot {slot} read successfully but has no buffer"))
    }

    /// True when every answer the request waits for is in: every child's
    /// (R-READ-1, R-WRITE-1, R-FLUSH-1), or for `fifo` the first success or
    /// the last child's failure (R-FIFO-1..2).
    pub fn decided(&self) -> bool {
        let n = self.children.len();
        if self.fifo() {
            self.results.iter().any(|(_, r)| r.is_ok()) || self.results.len() >= n
        } else {
            self.results.len() >= n
        }
    }

    /// The events due so far, before any decision: each failed child is
    /// reported as it completes (R-READ-2, R-FIFO-1, R-WRITE-1, R-FLUSH-1).
    pub fn reports_so_far(&self) -> Vec<Event> {
        if matches!(self.request, Request::BlockStatus { .. }) {
            // Only the first failed child in slot order, at the decision.
            return Vec::new();
        }
        let op = self.op();
        self.results
            .iter()
            .filter_map(|&(s, r)| r.err().map(|e| self.report(op, Some(e), s)))
            .collect()
    }

    /// Early quorum: the answer owed right after `slot`'s successful read
    /// (the last entry of `results`), if this success, not the request's
    /// last, makes `threshold` successes hold the same bytes. It names the
    /// group's lowest slot, as the full vote would (R-VOTE-2).
    pub fn early_answer(&self, slot: usize) -> Option<Outcome> {
        if !self.config.early_quorum || self.fifo() || self.results.len() >= self.children.len() {
            return None;
        }
        let mine = self.buffers.get(slot)?.as_deref()?;
        let mut group: Vec<usize> = self
            .results
            .iter()
            .filter(|(s, r)| {
                r.is_ok() && self.buffers.get(*s).and_then(Option::as_deref) == Some(mine)
            })
            .map(|(s, _)| *s)
            .collect();
        group.sort_unstable();
        let first = *group.first()?;
        (group.len() >= self.config.threshold).then_some(Outcome::Read {
            slot: first,
            child: self.children[first],
        })
    }

    /// What SPEC.md says the request ends with; an error when the answers
    /// cannot have decided it (a child result missing, fifo out of order).
    pub fn expect(&self) -> Result<Expected, String> {
        let n = self.children.len();
        let t = self.config.threshold;
        let mut by_slot: Vec<(usize, Result<(), Errno>)> = self.results.to_vec();
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
        let voted = || error_vote(&failed).ok_or("an error vote without a failure");
        if !self.fifo() {
            let slots: Vec<usize> = by_slot.iter().map(|(s, _)| *s).collect();
            if slots != (0..n).collect::<Vec<_>>() {
                return Err(format!(
                    "decided with results from slots {slots:?} of {n}, not one from each"
                ));
            }
        }
        let mut rewrites = Vec::new();
        let mut events = self.reports_so_far();
        let outcome = match self.request {
            Request::Read { .. } if self.fifo() => {
                // R-FIFO-1..2
                let order: Vec<usize> = self.results.iter().map(|(s, _)| *s).collect();
                if order != (0..order.len()).collect::<Vec<_>>() {
                    return Err(format!("fifo reads out of slot order: {order:?}"));
                }
                let mut outcome = None;
                for &(s, r) in self.results {
                    if outcome.is_some() {
                        return Err(format!("fifo read of slot {s} after a success"));
                    }
                    if r.is_ok() {
                        outcome = Some(Outcome::Read {
                            slot: s,
                            child: self.children[s],
                        });
                        if self.config.fifo_rewrite_failed && self.repair {
                            rewrites = (0..s)
                                .map(|f| Rewrite {
                                    slot: f,
                                    child: self.children[f],
                                    source: s,
                                })
                                .collect();
                        }
                    }
                }
                match outcome {
                    Some(o) => o,
                    None if order.len() == n => match failed.last() {
                        // R-FIFO-2: the last child's error, no FAILURE.
                        Some(&(_, last)) => Outcome::Failed(last),
                        None => return Err("a fifo read of no child".into()),
                    },
                    None => return Err(format!("fifo read gave up after {order:?} of {n}")),
                }
            }
            Request::Read { .. } => {
                if let Some(answer) = self.answer {
                    // Early quorum: the stragglers are settled against the
                    // answer, not the full vote (they differ when threshold
                    // ≤ n/2), in R-VOTE-4 order.
                    let Outcome::Read { slot: a, .. } = answer else {
                        return Err(format!("an early answer that is no read: {answer:?}"));
                    };
                    let voters = ok
                        .iter()
                        .map(|&s| Ok((s, self.buf(s)?)))
                        .collect::<Result<Vec<_>, String>>()?;
                    let vs = versions(&voters);
                    let Some(w) = vs.iter().position(|v| v.contains(&a)) else {
                        return Err(format!("the answer's slot {a} did not read successfully"));
                    };
                    let lose = losers(&vs, w);
                    if !self.quiet {
                        events.extend(lose.iter().map(|&s| self.report(OpType::Read, None, s)));
                    }
                    if self.config.rewrite_corrupted && self.repair {
                        rewrites = self.rewrites(&lose, a);
                    }
                    answer
                } else if ok.len() < t {
                    // R-READ-3
                    events.push(self.failure());
                    Outcome::Failed(voted()?)
                } else {
                    let voters = ok
                        .iter()
                        .map(|&s| Ok((s, self.buf(s)?)))
                        .collect::<Result<Vec<_>, String>>()?;
                    // R-READ-8: the first answer against the others, the
                    // first difference ends it.
                    let (offset, _) = self.request.range();
                    let mismatch = if self.config.blkverify {
                        voters[1..].iter().find_map(|(_, b)| {
                            let a = voters[0].1;
                            (a != *b).then(|| {
                                let at = a
                                    .iter()
                                    .zip(b.iter())
                                    .position(|(x, y)| x != y)
                                    .unwrap_or(a.len().min(b.len()));
                                Outcome::ContentsMismatch {
                                    offset: offset + at as u64,
                                }
                            })
                        })
                    } else {
                        None
                    };
                    match mismatch {
                        Some(m) => m,
                        None => {
                            let vs = versions(&voters);
                            let w = winner(&vs).ok_or("a vote without voters")?;
                            if vs[w].len() < t {
                                // R-READ-5: no mismatch reported.
                                events.push(self.failure());
                                Outcome::Failed(Errno::EIO)
                            } else {
                                // R-READ-6, R-READ-7
                                let source = vs[w][0];
                                let lose = losers(&vs, w);
                                events.extend(
                                    lose.iter().map(|&s| self.report(OpType::Read, None, s)),
                                );
                                if self.config.rewrite_corrupted && self.repair {
                                    rewrites = self.rewrites(&lose, source);
                                }
                                Outcome::Read {
                                    slot: source,
                                    child: self.children[source],
                                }
                            }
                        }
                    }
                }
            }
            Request::Resync { .. } => {
                // Sync tracking is not SPEC's first half: the checker holds
                // resyncs to the structural contract only.
                return Err("the reference model does not decide resyncs (R-SYNC-4)".into());
            }
            Request::BlockStatus { len, .. } => {
                // QEMU's quorum_co_block_status, as its source reads: the
                // children in order; the first that fails is reported as a
                // failed read and makes the whole range data, those after it
                // unheard; otherwise data as long as the longest data
                // extent if any child has data, else zeroes as long as the
                // shortest zero extent. Never a FAILURE.
                let mut data = 0u64;
                let mut zero = len;
                for &(s, r) in &by_slot {
                    if let Err(e) = r {
                        events.push(self.report(OpType::Read, Some(e), s));
                        data = len;
                        break;
                    }
                    let Some(Some(x)) = self.extents.get(s) else {
                        return Err(format!(
                            "slot {s}'s block status succeeded without an extent"
                        ));
                    };
                    let l = x.len.clamp(1.min(len), len);
                    if x.zero {
                        zero = zero.min(l);
                    } else {
                        data = data.max(l);
                    }
                }
                Outcome::BlockStatus(if data > 0 {
                    Extent {
                        len: data,
                        zero: false,
                    }
                } else {
                    Extent {
                        len: zero,
                        zero: true,
                    }
                })
            }
            Request::Write { .. } | Request::WriteZeroes { .. } | Request::Flush => {
                if ok.len() >= t {
                    Outcome::Done
                } else {
                    // R-WRITE-2; R-FLUSH-2: a flush never emits FAILURE.
                    if self.request != Request::Flush {
                        events.push(self.failure());
                    }
                    Outcome::Failed(voted()?)
                }
            }
        };
        Ok(Expected {
            outcome,
            events,
            rewrites,
        })
    }

    fn rewrites(&self, slots: &[usize], source: usize) -> Vec<Rewrite> {
        slots
            .iter()
            .map(|&slot| Rewrite {
                slot,
                child: self.children[slot],
                source,
            })
            .collect()
    }
}
