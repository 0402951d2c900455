//! The workload: requests drawn from the seed — reads, writes, write-zeroes
//! and flushes over overlapping ranges, up to `depth` in flight —
//! membership changes between requests (after the core's drain), and
//! cancellations.

use super::*;

impl Sim {
    pub(super) fn workload(&mut self) {
        while !self.stopped() {
            if self.sync.is_some() {
                // Sync runs: crashes, children away and back, map writes,
                // the background resync.
                if self.maybe_crash() {
                    continue;
                }
                self.sync_step();
                if self.stopped() {
                    break;
                }
            }
            let internal = self.sync.as_ref().map_or(0, |s| s.internal);
            // An answered read no longer occupies its caller (early quorum),
            // nor does a cancelled request, nor one of the simulator's own,
            // but all stay live in the core, which holds 32 requests at most.
            let can_submit = self.submitted < self.cfg.ops
                && self.live.len() - self.answered_live - self.zombies - internal < self.cfg.depth
                && self.live.len() < 32
                && !self.tape.exhausted();
            if self.rates.cancel != 0
                && self.live.len() > self.zombies
                && self.tape.chance(self.rates.cancel)
            {
                self.cancel_random();
                continue;
            }
            if can_submit && self.change_due && self.live.is_empty() {
                if !self.q.is_drained() {
                    self.violated("nothing is live, yet the core's drain is not over".into());
                }
                self.change_due = false;
                self.membership();
                if let Err(e) = self.q.end_drain() {
                    self.violated(format!("end_drain refused: {e}"));
                }
                continue;
            }
            if can_submit && !self.change_due && (self.queue.is_empty() || self.tape.below(2) == 0)
            {
                // Membership changes only between requests (R-MEMBER-4):
                // when one is drawn, the core's drain gate holds new requests
                // back until the ones in flight — cancelled ones' operations
                // included (R-CANCEL-2) — are over.
                self.change_due = self.tape.chance(self.rates.membership);
                if !self.change_due {
                    self.submit_random();
                    self.drain();
                } else {
                    self.q.start_drain();
                    if self.q.is_drained() != self.live.is_empty() {
                        self.violated(format!(
                            "is_drained() is {} with {} requests live",
                            self.q.is_drained(),
                            self.live.len()
                        ));
                    }
                }
                continue;
            }
            if let Some(Reverse(p)) = self.queue.pop() {
                self.now = p.at;
                self.run_op(p.action.0);
                self.drain();
                continue;
            }
            if !self.live.is_empty() {
                let ids: Vec<u64> = self.live.keys().copied().collect();
                self.violated(format!(
                    "requests {ids:?} never completed: nothing left to do"
                ));
            }
            break;
        }
    }

    /// Cancels a request in flight, drawn at random (R-CANCEL-1): the core
    /// must complete it at once with `ECANCELED`, checked when its completion
    /// is drained ([`Sim::completed`]), and say nothing more about it
    /// ([`Sim::drain`]); the child operations it had issued stay scheduled
    /// and are carried out as usual (R-CANCEL-2).
    pub(super) fn cancel_random(&mut self) {
        let ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.cancelled.is_none())
            .map(|(&id, _)| id)
            .collect();
        let id = ids[self.tape.below(ids.len() as u64) as usize];
        let Some(l) = self.live.get_mut(&id) else {
            return;
        };
        l.cancelled = Some(Cancelled {
            results: l.results.clone(),
            completed: false,
        });
        if l.answer.is_some() {
            self.answered_live -= 1;
        }
        self.zombies += 1;
        self.stats.cancelled += 1;
        self.tape.out(&("cancel", id), || format!("cancel #{id}"));
        if let Err(e) = self.q.cancel(RequestId(id)) {
            self.violated(format!(
                "R-CANCEL-1: cancelling #{id}, in flight, was refused: {e}"
            ));
        }
        self.drain();
    }

    /// Between requests: maybe add or remove a child (R-MEMBER).
    pub(super) fn membership(&mut self) {
        let ids: Vec<ChildId> = self.q.children().to_vec();
        if self.tape.below(2) == 0 {
            if ids.len() >= 16 {
                return;
            }
            match self.q.add_child() {
                Ok(id) => {
                    let d = self.new_disk(id);
                    if self.sync.is_some() {
                        // R-SYNC-7: added to be rebuilt — stale everywhere,
                        // durably, before it is used; it starts empty.
                        self.disks.insert(d, Disk::new(vec![0; self.oracle.len()]));
                        let s = self.sync.as_mut().expect("sync run");
                        s.map.add_stale_child(id.0);
                        self.map_write_now();
                    } else {
                        self.disks.insert(d, Disk::new(self.oracle.clone()));
                    }
                    self.stats.children_added += 1;
                    self.tape.out(&("add", id), || format!("add {id}"));
                }
                Err(e) => self.violated(format!("add_child refused: {e}")),
            }
        } else {
            let victim = ids[self.tape.below(ids.len() as u64) as usize];
            let n = ids.len();
            let t = self.cfg.threshold;
            if n <= t {
                // R-MEMBER-2: the core must refuse.
                if self.q.remove_child(victim).is_ok() {
                    self.violated(format!(
                        "removing {victim} left fewer children than threshold {t}"
                    ));
                }
                return;
            }
            let vd = self.disk_id(victim);
            let faulty_after = self.faulty.len() - usize::from(self.faulty.contains(&vd));
            if self.cfg.mode == Mode::Safety && faulty_after > self.cfg.safe_faulty(n - 1) {
                return;
            }
            if self.cfg.mode == Mode::Safety && self.sync.is_some() {
                // Children being rebuilt hold nothing yet: enough others
                // must stay to outvote the faulty ones (R-SYNC-1).
                let rebuilding = self.rebuilding(victim);
                if n - 1 < faulty_after + rebuilding + t {
                    return;
                }
            }
            match self.q.remove_child(victim) {
                Ok(()) => {
                    self.disks.remove(&vd);
                    self.faulty.remove(&vd);
                    self.slow.remove(&vd);
                    if let Some(s) = self.sync.as_mut() {
                        s.map.remove_child(victim.0);
                        s.forget_disk(vd);
                        if s.away_child == Some(vd) {
                            s.away_child = None;
                            s.away = false;
                        }
                        self.map_write_now();
                    }
                    self.stats.children_removed += 1;
                    self.tape
                        .out(&("remove", victim), || format!("remove {victim}"));
                }
                Err(e) => self.violated(format!("remove_child({victim}) refused: {e}")),
            }
        }
    }

    /// Draws and submits one request. Writes never overlap a write in flight:
    /// block devices order nothing between concurrent overlapping writes, so
    /// any result would be allowed and nothing could be checked.
    pub(super) fn submit_random(&mut self) {
        let size = self.cfg.size;
        let fixed = self.cfg.len != 0;
        let sectors = if fixed {
            self.cfg.len / SECTOR
        } else {
            1 + self.tape.below(16)
        };
        let mut len = sectors * SECTOR;
        let mut offset = self.tape.below(size / SECTOR - sectors + 1) * SECTOR;
        // Crash runs read and write whole sectors: what a crash leaves is
        // judged per sector.
        if !fixed && !self.cfg.crash && self.tape.below(16) == 0 {
            // unaligned, still inside the device
            let shift = self.tape.below(SECTOR);
            offset += shift;
            len -= shift.min(len - 1);
            len -= self.tape.below(len);
        }
        let kind = self.tape.below(100);
        let mut req = match kind {
            0..50 => Request::Read { offset, len },
            50..80 => Request::Write { offset, len },
            80..92 => Request::WriteZeroes { offset, len },
            _ => Request::Flush,
        };
        // Early quorum: a caller that got its read's answer writes the same
        // range while the read's stragglers are still out (drawn only when
        // such a read exists, so runs without early quorum are unchanged).
        if self.answered_live > 0 && self.tape.below(4) == 0 {
            let answered: Vec<(u64, u64)> = self
                .live
                .values()
                .filter(|l| l.answer.is_some())
                .map(|l| l.req.range())
                .collect();
            let (o, l) = answered[self.tape.below(answered.len() as u64) as usize];
            req = if self.tape.below(4) == 0 {
                Request::WriteZeroes { offset: o, len: l }
            } else {
                Request::Write { offset: o, len: l }
            };
        }
        let (offset, len) = req.range();
        let is_write = matches!(req, Request::Write { .. } | Request::WriteZeroes { .. });
        if is_write
            && self
                .live
                .values()
                .any(|l| is_write_req(&l.req) && overlaps(&l.req, offset, len))
        {
            req = Request::Read { offset, len };
        }
        let id = self.next_id;
        self.next_id += 1;
        self.submitted += 1;
        if let Some(p) = self.progress.as_mut()
            && self.submitted.is_multiple_of(1024)
        {
            p(self.submitted);
        }
        self.submit(id, req);
    }

    pub(super) fn submit(&mut self, id: u64, req: Request) {
        let children = self.q.children().to_vec();
        let n = children.len();
        let (offset, len) = req.range();
        let (o, l) = (offset as usize, len as usize);
        let mut live = Live {
            req,
            children,
            bufs: Vec::new(),
            data: None,
            base: Vec::new(),
            concurrent: Vec::new(),
            results: vec![None; n],
            events: Vec::new(),
            rewrites: Vec::new(),
            answer: None,
            quiet: false,
            outstanding: 0,
            issued: 0,
            cancelled: None,
            sync: None,
        };
        if self.sync.is_some() {
            live.sync = Some(Box::new(self.live_sync(&req, &live.children)));
        }
        match req {
            Request::Read { .. } | Request::Resync { .. } => {
                // Empty buffers from the pool: a successful read fills its
                // own, and the core only looks at those.
                live.bufs = (0..n).map(|_| self.buffer()).collect();
                let mut base = self.buffer();
                base.extend_from_slice(&self.oracle[o..o + l]);
                live.base = base;
                live.concurrent = self
                    .live
                    .values()
                    .filter(|w| is_write_req(&w.req) && overlaps(&w.req, offset, len))
                    .filter_map(|w| w.data.clone().map(|d| (w.req.range().0, d)))
                    .collect();
            }
            Request::Write { .. } => {
                let data = match self.script_data.take() {
                    Some(d) => Rc::new(d),
                    None => {
                        let seed = self.tape.below(u64::MAX);
                        Rc::new(pattern(seed, l))
                    }
                };
                live.data = Some(data);
            }
            Request::WriteZeroes { .. } => live.data = Some(Rc::new(vec![0u8; l])),
            Request::Flush | Request::BlockStatus { .. } => {}
        }
        if let (Some(d), Some(lg)) = (
            &live.data,
            self.sync.as_mut().and_then(|s| s.logical.as_mut()),
        ) {
            lg.write_submitted(id, offset, d.clone());
        }
        if let Some(d) = &live.data {
            for r in self.live.values_mut() {
                if matches!(r.req, Request::Read { .. } | Request::Resync { .. })
                    && overlaps(&r.req, offset, len)
                {
                    // For an answered read this write came after it (for
                    // the caller), so the answer was checked without it; it
                    // still forbids repairs, and silences the content
                    // reports of stragglers not yet settled.
                    r.concurrent.push((offset, d.clone()));
                    // Children stale there are never read (R-SYNC-1).
                    let unsettled =
                        r.results.iter().enumerate().any(|(s, x)| {
                            x.is_none() && r.sync.as_ref().is_none_or(|ls| !ls.skip[s])
                        });
                    if r.answer.is_some() && unsettled && !r.quiet {
                        r.quiet = true;
                        self.stats.early_overwritten += 1;
                    }
                }
            }
        }
        self.tape.out(&(id, req), || {
            format!("submit #{id} {}", describe_req(&req))
        });
        let r = match &self.sync {
            Some(s) => self.q.submit_with(RequestId(id), req, &s.map),
            None => self.q.submit(RequestId(id), req),
        };
        if let Err(e) = r {
            self.violated(format!("submit #{id} refused: {e}"));
            return;
        }
        self.live.insert(id, live);
        if matches!(req, Request::Resync { .. }) {
            self.check_resync_submit(id);
        }
    }

    /// A disk for the child the core just added: its own id, or a fresh
    /// one once a restart renumbered the children.
    fn new_disk(&mut self, id: ChildId) -> u32 {
        match self.alias.as_mut() {
            None => id.0,
            Some(a) => {
                let d = self
                    .disks
                    .keys()
                    .next_back()
                    .map_or(0, |&k| k + 1)
                    .max(a.iter().copied().max().map_or(0, |m| m + 1));
                let i = id.0 as usize;
                if a.len() <= i {
                    a.resize(i + 1, u32::MAX);
                }
                a[i] = d;
                d
            }
        }
    }

    /// Children other than `except`, not faulty, still stale somewhere
    /// (being rebuilt, R-SYNC-7).
    fn rebuilding(&self, except: ChildId) -> usize {
        let Some(s) = self.sync.as_ref() else {
            return 0;
        };
        self.q
            .children()
            .iter()
            .filter(|&&c| c != except && !self.faulty.contains(&self.disk_id(c)))
            .filter(|&&c| s.map.stale_of(c.0).is_some_and(|b| b.count() > 0))
            .count()
    }
}

pub(super) fn is_write_req(r: &Request) -> bool {
    matches!(r, Request::Write { .. } | Request::WriteZeroes { .. })
}

pub(super) fn overlaps(r: &Request, offset: u64, len: u64) -> bool {
    let (o, l) = r.range();
    !matches!(r, Request::Flush) && o < offset + len && offset < o + l
}

/// Write payload: deterministic bytes from a seed, distinct per write (a
/// 64-byte random block, repeated: cheap, and no two writes share one).
pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = crate::rng::Rng::new(seed);
    let mut block = [0u8; 64];
    for c in block.chunks_exact_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        v.extend_from_slice(&block);
    }
    v.truncate(len);
    v
}
