//! The checker: every completion (and early answer) is held to the
//! invariants of DESIGN.md against the oracle of what the device must
//! contain.

use super::workload::is_write_req;
use super::*;

impl Sim {
    /// A request finished: check it (the invariants of DESIGN.md).
    pub(super) fn completed(&mut self, id: u64, outcome: Outcome) {
        let Some(mut l) = self.live.remove(&id) else {
            self.violated(format!("completion of unknown or finished request #{id}"));
            return;
        };
        if let Some(c) = l.cancelled.as_mut() {
            if c.completed {
                self.violated(format!(
                    "R-CANCEL-1: cancelled request #{id} completed twice"
                ));
            }
            c.completed = true;
            self.check_cancelled(id, &l, outcome);
            if l.sync.as_ref().is_some_and(|ls| ls.internal) {
                self.internal_done(id);
            }
            let outstanding = l.outstanding;
            self.live.insert(id, l);
            if outstanding == 0 {
                self.reap(id);
            }
            return;
        }
        if l.answer.is_some() {
            self.answered_live -= 1;
        }
        self.check(id, &l, outcome);
        if l.sync.as_ref().is_some_and(|ls| ls.internal) {
            self.internal_done(id);
        }
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

    /// R-CANCEL-1: a cancelled request completes with `ECANCELED`, and its
    /// events are only those due before the cancel: each child operation
    /// that had failed by then reported once with its error, content
    /// mismatches only if the vote had already been taken, never
    /// `QUORUM_FAILURE`.
    pub(super) fn check_cancelled(&mut self, id: u64, l: &Live, outcome: Outcome) {
        self.stats.invariants += 1;
        let Some(c) = &l.cancelled else { return };
        let mut problems = Vec::new();
        if outcome != Outcome::Failed(Errno::ECANCELED) {
            problems.push(format!("completed with {outcome:?}, not ECANCELED"));
        }
        let (offset, len) = l.req.range();
        let op = match l.req {
            Request::Read { .. } | Request::BlockStatus { .. } | Request::Resync { .. } => {
                OpType::Read
            }
            Request::Write { .. } | Request::WriteZeroes { .. } => OpType::Write,
            Request::Flush => OpType::Flush,
        };
        let secs = if op == OpType::Flush {
            (0, 0)
        } else {
            (
                offset / SECTOR,
                (offset + len).div_ceil(SECTOR) - offset / SECTOR,
            )
        };
        let expected: Vec<Event> = c
            .results
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| match r {
                Some(Err(e)) => Some(Event::ReportBad {
                    op,
                    error: Some(*e),
                    child: l.children[slot],
                    sector_num: secs.0,
                    sectors_count: secs.1,
                }),
                _ => None,
            })
            .collect();
        let errors: Vec<Event> = l
            .events
            .iter()
            .filter(|e| matches!(e, Event::ReportBad { error: Some(_), .. }))
            .copied()
            .collect();
        if !same_multiset(&errors, &expected) {
            problems.push(format!(
                "error reports {errors:?}, expected those of the failures before the cancel {expected:?}"
            ));
        }
        // Children stale there are not read (R-SYNC-1): the vote is taken
        // once every other one has answered.
        let decided = c
            .results
            .iter()
            .enumerate()
            .all(|(slot, r)| r.is_some() || l.sync.as_ref().is_some_and(|ls| ls.skip[slot]));
        for e in &l.events {
            match e {
                Event::Failure { .. } => problems.push("QUORUM_FAILURE".into()),
                Event::ReportBad { error: None, .. } if !decided => {
                    problems.push(format!("{e:?} before the vote was taken"))
                }
                _ => {}
            }
        }
        if !problems.is_empty() {
            self.violated(format!(
                "R-CANCEL-1: cancelled request #{id} ({}): {}",
                describe_req(&l.req),
                problems.join("; ")
            ));
        }
    }

    /// A cancelled request whose issued operations have all been carried out
    /// leaves: a write that reached the children is the device's data now
    /// (its caller was told `ECANCELED`, so old or new were both allowed
    /// meanwhile: reads that overlapped it took it as a write in flight).
    pub(super) fn reap(&mut self, id: u64) {
        let Some(mut l) = self.live.remove(&id) else {
            return;
        };
        self.zombies -= 1;
        self.cancelled_missed(&l);
        if is_write_req(&l.req)
            && l.issued > 0
            && let Some(d) = &l.data
        {
            let (o, n) = l.req.range();
            self.oracle[o as usize..(o + n) as usize].copy_from_slice(d);
        }
        if is_write_req(&l.req)
            && let Some(s) = self.sync.as_mut()
            && let Some(lg) = s.logical.as_mut()
        {
            if l.issued > 0 {
                s.serial += 1;
                lg.write_done(id, s.serial);
            } else {
                lg.write_dropped(id);
            }
        }
        self.pool.append(&mut l.bufs);
        self.pool.push(std::mem::take(&mut l.base));
    }

    /// Early quorum: a read was answered. This is when its caller has the
    /// data, so the data is judged here, exactly as a completed read's would
    /// be; the request stays live until its completion, which must repeat
    /// the answer ([`Sim::check`]).
    pub(super) fn answered(&mut self, id: u64, outcome: Outcome) {
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
        if l.sync.as_ref().is_some_and(|ls| ls.settle) {
            // R-SYNC-3: a settling read answers once settled, never early.
            problems.push("R-SYNC-3: a read of an unsettled range answered early".into());
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
    pub(super) fn check_read_data(&self, l: &Live, slot: usize, problems: &mut Vec<String>) {
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
        // After a crash healthy children may hold different writes
        // (R-SYNC-2 leaves their chunks unsettled), like writes in flight.
        let ambig: &[(u64, Vec<Vec<u8>>)] = l.sync.as_ref().map_or(&[], |ls| &ls.ambig);
        let checkable = match self.pattern {
            ReadPattern::Quorum => (l.concurrent.is_empty() && ambig.is_empty()) || healthy_backs,
            ReadPattern::Fifo => !self.faulty.contains(&answering),
        };
        if !checkable {
            return;
        }
        if ambig.is_empty() {
            if !matches_some_order(data, &l.base, offset, &l.concurrent) {
                problems.push(format!(
                    "read {offset}+{len} returned data that no serial order of acknowledged writes explains"
                ));
            }
        } else if let Some(s) = sector_outside(data, &l.base, offset, ambig, &l.concurrent) {
            // R-SYNC-6 (issue 14): after a crash, old or new, never a third value.
            problems.push(format!(
                "R-SYNC-6: read {offset}+{len} returned, in sector {s}, neither the last durable data nor a write since"
            ));
        }
    }

    /// Crash runs: a read (or resync) of a range a crash left holding one of
    /// several writes answered `data`: from now on the range reads the same
    /// until a later write (R-SYNC-3), durably once flushed. Checked first
    /// (when a healthy child backs it) against what the device may hold.
    pub(super) fn pin(&mut self, l: &Live, data: &[u8], problems: &mut Vec<String>) {
        let (offset, len) = l.req.range();
        if !l.concurrent.is_empty()
            || l.sync
                .as_ref()
                .is_none_or(|ls| ls.ambig.is_empty() || ls.overlapped_settle)
            || !offset.is_multiple_of(SECTOR)
            || !len.is_multiple_of(SECTOR)
            || self.cfg.mode != Mode::Safety
        {
            return;
        }
        let healthy_backs = (0..l.children.len()).any(|s| {
            matches!(l.results[s], Some(Ok(())))
                && l.bufs[s] == *data
                && !self.faulty.contains(&self.disk_id(l.children[s]))
        });
        let Some(s) = self.sync.as_mut() else { return };
        let Some(lg) = s.logical.as_mut() else { return };
        if healthy_backs && !lg.holds(&self.oracle, offset, data) {
            problems.push(format!(
                "R-SYNC-6: {offset}+{len} settled to data that is neither the last durable data nor a write since"
            ));
        }
        self.stats.sync.r_sync_3 += 1;
        lg.pin(&mut self.oracle, offset, data, s.serial);
    }

    pub(super) fn check(&mut self, id: u64, l: &Live, outcome: Outcome) {
        if let Some(s) = self.sync.as_mut() {
            s.serial += 1;
        }
        if matches!(l.req, Request::Resync { .. }) {
            self.check_resync(id, l, outcome);
            return;
        }
        self.stats.requests += 1;
        let t = self.cfg.threshold;
        let ls = l.sync.as_deref();
        let skip = |s: usize| ls.is_some_and(|x| x.skip[s]);
        let settle = ls.is_some_and(|x| x.settle);
        let ambiguous = ls.is_some_and(|x| !x.ambig.is_empty());
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
        // R-SYNC-1: only children not stale there count toward a write.
        let counted = (0..l.results.len())
            .filter(|&s| matches!(l.results[s], Some(Ok(()))) && !skip(s))
            .count();
        let safety = self.cfg.mode == Mode::Safety;
        let mut problems: Vec<String> = Vec::new();
        if let Some(a) = l.answer
            && a != outcome
        {
            problems.push(format!("answered {a:?} but completed with {outcome:?}"));
        }
        let op = match l.req {
            Request::Read { .. } | Request::BlockStatus { .. } | Request::Resync { .. } => {
                OpType::Read
            }
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
                    // R-SYNC-3: differences settled are not reported.
                    if settle {
                        self.stats.sync.r_sync_3 += 1;
                    }
                    if !l.quiet && !settle {
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
                // Settling (R-SYNC-3) writes the winner to every child not
                // stale there that lost or failed to read.
                let targets: Vec<usize> = if settle {
                    (0..l.children.len())
                        .filter(|&s| losers.contains(&s) || matches!(l.results[s], Some(Err(_))))
                        .collect()
                } else {
                    losers.clone()
                };
                if !rw.is_empty() && rw != targets {
                    problems.push(format!(
                        "rewrote slots {rw:?}, but the losers were {targets:?}"
                    ));
                }
                let overlapped = ls.is_some_and(|x| x.overlapped_settle);
                if settle
                    && rw.is_empty()
                    && !targets.is_empty()
                    && l.concurrent.is_empty()
                    && !overlapped
                {
                    problems.push(format!(
                        "R-SYNC-3: settled nothing, though slots {targets:?} lost or failed"
                    ));
                }
                if ambiguous && self.pattern == ReadPattern::Quorum && problems.is_empty() {
                    let data = l.bufs[slot].clone();
                    self.pin(l, &data, &mut problems);
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
                if safety && l.concurrent.is_empty() && !ambiguous {
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
                if ls.is_some() {
                    self.stats.sync.r_sync_1 += 1;
                    if counted < t {
                        problems.push(format!(
                            "R-SYNC-1: write acknowledged by {counted} children not stale there, threshold {t}"
                        ));
                    }
                }
                if failures != 0 {
                    problems.push("a successful write emitted QUORUM_FAILURE".into());
                }
                if let Some(d) = &l.data {
                    self.oracle[offset as usize..(offset + len) as usize].copy_from_slice(d);
                }
            }
            (Request::Write { .. } | Request::WriteZeroes { .. }, Outcome::Failed(e)) => {
                if counted >= t {
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
            // Scripted runs only (the workload draws none): the answer is
            // the contract checker's to judge against QEMU's rule.
            (Request::BlockStatus { .. }, Outcome::BlockStatus(_)) => {}
            (req, o) => problems.push(format!("{req:?} ended with {o:?}")),
        }
        // Same events, as multisets (error reports follow completion order).
        if !same_multiset(&l.events, &expected) {
            problems.push(format!("events {:?}, expected {expected:?}", l.events));
        }
        if let Some(ls) = ls {
            // R-SYNC-1: no report for a child stale on a read's range
            // (writes still go to stale children, and report their failures).
            self.stats.sync.r_sync_1 += 1;
            for e in &l.events {
                if let Event::ReportBad { child, .. } = e
                    && matches!(l.req, Request::Read { .. })
                    && let Some(s) = l.children.iter().position(|c| c == child)
                    && ls.skip[s]
                {
                    problems.push(format!("R-SYNC-1: reported {child}, stale there"));
                }
            }
            self.sync_completed(id, l, outcome);
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
}

/// Crash runs: the first sector of `data` (read at `offset`, whole
/// sectors) that is neither what the oracle held, nor one of the values a
/// crash left possible there, nor a write in flight's.
pub(super) fn sector_outside(
    data: &[u8],
    base: &[u8],
    offset: u64,
    ambig: &[(u64, Vec<Vec<u8>>)],
    concurrent: &[(u64, Rc<Vec<u8>>)],
) -> Option<u64> {
    let n = SECTOR as usize;
    for (k, b) in data.chunks(n).enumerate() {
        let s = offset / SECTOR + k as u64;
        if base.get(k * n..k * n + b.len()) == Some(b) {
            continue;
        }
        if ambig
            .iter()
            .any(|(a, v)| *a == s && v.iter().any(|x| x[..b.len()] == *b))
        {
            continue;
        }
        let at = s * SECTOR;
        let in_flight = concurrent.iter().any(|(wo, wd)| {
            *wo <= at
                && at + b.len() as u64 <= wo + wd.len() as u64
                && wd[(at - wo) as usize..(at - wo) as usize + b.len()] == *b
        });
        if !in_flight {
            return Some(s);
        }
    }
    None
}

/// Whether `a` and `b` hold the same events, counting repeats, in any order.
pub(super) fn same_multiset(a: &[Event], b: &[Event]) -> bool {
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

/// Whether `data` (read at `offset`) is `base` with some subset of the
/// concurrent writes applied in submission order.
pub(super) fn matches_some_order(
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
