//! The liveness phase: once faults stop, reading the whole device back with
//! rewrite on must make every healthy child equal the oracle.

use super::*;

impl Sim {
    /// Faults stop; a fresh core with rewrite on reads the whole device back.
    /// Every read must succeed with the oracle's data and afterwards every
    /// child must equal the oracle, except where it still has a latent bad
    /// sector (a failed read is never rewritten, R-READ-7).
    pub(super) fn liveness(&mut self) {
        self.rates = FaultRates::none();
        let ids: Vec<u32> = self.q.children().iter().map(|&c| self.disk_id(c)).collect();
        // Early quorum as in the workload: stragglers are settled after the
        // answer, and must still be repaired.
        let mut config = Config::new(ids.len(), self.cfg.threshold)
            .with_rewrite_corrupted(true)
            .with_early_quorum(self.cfg.early_effective());
        if self.cfg.sync != 0 {
            config = config.with_sync_tracking(self.cfg.sync);
        }
        let Ok(q) = Core::new(config, self.q.checked()) else {
            self.violated("liveness core refused its configuration".into());
            return;
        };
        self.stats.sync.settled += self.q.settled_differences();
        let old: Vec<u32> = self.q.children().iter().map(|c| c.0).collect();
        self.q = q;
        if let Some(s) = self.sync.as_mut() {
            // A clean reopen: the same marks, the children numbered afresh.
            let fresh: Vec<u32> = (0..ids.len() as u32).collect();
            let mut m = quorum_driver::sync::SyncMap::new(self.cfg.size, self.cfg.sync, &fresh);
            m.copy_marks_from(&s.map, &old);
            s.reopened(m);
        }
        self.pattern = ReadPattern::Quorum;
        self.alias = Some(ids.clone());
        self.tape.out(&"liveness", || "liveness".into());
        let mut offset = 0;
        while offset < self.cfg.size && !self.stopped() {
            let id = self.next_id;
            self.next_id += 1;
            self.submit(id, Request::Read { offset, len: SCAN });
            self.drain();
            while let Some(Reverse(p)) = self.queue.pop() {
                self.now = p.at;
                self.run_op(p.action.0);
                self.drain();
            }
            if self.live.contains_key(&id) {
                self.violated(format!("liveness read at {offset} never completed"));
            }
            offset += SCAN;
        }
        self.stats.sync.settled += self.q.settled_differences();
        // The reads themselves were checked in completed(); now the children.
        let sync = self.sync.as_ref();
        for (&d, disk) in &self.disks {
            let core = ids.iter().position(|&x| x == d).map(|i| i as u32);
            for chunk in 0..self.cfg.size / SCAN {
                let (o, e) = (chunk * SCAN, (chunk + 1) * SCAN);
                if disk.latent.range(o / SECTOR..e / SECTOR).next().is_some() {
                    continue;
                }
                if let Some(s) = sync {
                    // Left stale or ambiguous where the resync found no
                    // quorum (a crash's): nothing to converge to.
                    let c = s.chunks_of(o, e - o);
                    let stale = core
                        .and_then(|k| s.map.stale_of(k))
                        .is_some_and(|b| b.any(c));
                    let ambiguous = s
                        .logical
                        .as_ref()
                        .is_some_and(|lg| !lg.ambiguous(o, e - o).is_empty());
                    if stale || ambiguous {
                        continue;
                    }
                }
                if disk.data[o as usize..e as usize] != self.oracle[o as usize..e as usize] {
                    let msg =
                        format!("after the liveness phase children.{d} still differs at {o}..{e}");
                    self.error.get_or_insert(msg);
                    return;
                }
            }
        }
    }
}
