//! The simulated disks: pristine bytes plus a fault overlay — transient
//! errors, latent bad sectors, silent bit flips, lost and misdirected writes
//! — and blkdebug-style rules, carrying out the core's child operations.

use super::*;

impl Sim {
    /// Executes a child operation with faults, and reports it to the core.
    pub(super) fn perform(&mut self, a: Action) {
        self.stats.child_ios += 1;
        let r = match a {
            Action::Read {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let res = if self.away(child) {
                    Err(Errno::ENOTCONN)
                } else {
                    match self.injected(child, |st| st.before_read(offset, len)) {
                        Err(e) => Err(e),
                        Ok(_) => self.disk_read(child, offset, len, id.0, slot),
                    }
                };
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res);
                }
                let bufs = self
                    .live
                    .get(&id.0)
                    .map(|l| l.bufs.as_slice())
                    .unwrap_or(&[]);
                self.q.handle_read(id, slot, res, bufs)
            }
            Action::Write {
                id,
                slot,
                child,
                offset,
                ..
            }
            | Action::WriteZeroes {
                id,
                slot,
                child,
                offset,
                ..
            } => {
                let data = self
                    .live
                    .get(&id.0)
                    .and_then(|l| l.data.clone())
                    .unwrap_or_default();
                let len = data.len() as u64;
                let injected = if matches!(a, Action::WriteZeroes { .. }) {
                    // QEMU's block layer retries an unsupported write-zeroes
                    // as a plain write.
                    match self.injected(child, |st| st.before_write_zeroes(offset, len)) {
                        Err(Errno::ENOTSUP) => {
                            self.injected(child, |st| st.before_write(offset, len))
                        }
                        r => r,
                    }
                } else {
                    self.injected(child, |st| st.before_write(offset, len))
                };
                if let Some(lg) = self.sync.as_mut().and_then(|s| s.logical.as_mut()) {
                    lg.write_landed(id.0);
                }
                let res = if self.away(child) {
                    self.away_write(id.0, child)
                } else {
                    match injected {
                        Err(e) => Err(e),
                        Ok(_) => self.disk_write(child, offset, &data),
                    }
                };
                if !self.rewrites_out.is_empty() {
                    let d = self.disk_id(child);
                    self.landed.push((d, offset, len, id.0));
                }
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res);
                }
                self.q.handle_write(id, slot, res)
            }
            Action::Flush { id, slot, child } => {
                let d = self.disk_id(child);
                let upto = self.flush_seq.remove(&(id.0, slot));
                let res = match self.injected(child, InjectState::before_flush) {
                    _ if self.away(child) => Err(Errno::ENOTCONN),
                    Err(e) => Err(e),
                    Ok(Some(None)) => Ok(()), // a clean child is not flushed
                    Ok(_) if self.is_faulty(d) && self.tape.chance(self.rates.flush_error) => {
                        self.stats.injected.flush_error += 1;
                        Err(self.errno())
                    }
                    Ok(generation) => {
                        if let Some(Some(g)) = generation {
                            let _ = self.injected(child, |st| {
                                st.flushed(g);
                                Ok(())
                            });
                        }
                        Ok(())
                    }
                };
                if let (Ok(()), Some(upto), Some(disk)) = (res, upto, self.disks.get_mut(&d)) {
                    disk.volatile.flushed(upto);
                }
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res);
                }
                self.q.handle_flush(id, slot, res)
            }
            Action::Rewrite {
                id,
                slot,
                child,
                source,
                offset,
                len,
            } => {
                let data: Vec<u8> = self
                    .live
                    .get(&id.0)
                    .map(|l| l.bufs[source].clone())
                    .unwrap_or_default();
                let (o, l) = (offset as usize, len as usize);
                let allowed = match self.sync.as_ref().and_then(|s| s.logical.as_ref()) {
                    Some(lg) => lg.holds(&self.oracle, offset, &data),
                    None => data == self.oracle[o..o + l],
                };
                if self.cfg.mode == Mode::Safety && !allowed {
                    self.violated(format!(
                        "request {id} rewrites {child} with data older than the last acknowledged write"
                    ));
                }
                // No write that came after this rewrite was issued may have
                // reached the child first: the core holds such writes back
                // until the rewrite completes (R-CANCEL-2 when its read was
                // cancelled meanwhile).
                let born = self.rewrites_out.remove(&(id.0, slot)).unwrap_or(u64::MAX);
                let d = self.disk_id(child);
                if let Some(&(_, wo, wl, w)) = self.landed.iter().find(|&&(ld, wo, wl, w)| {
                    ld == d && w >= born && wo < offset + len && offset < wo + wl
                }) {
                    self.violated(format!(
                        "request {id} rewrites {child} at {offset}+{len} after request #{w}'s later write to {wo}+{wl} reached it"
                    ));
                }
                if self.rewrites_out.is_empty() {
                    self.landed.clear();
                }
                let res = if self.away(child) {
                    self.away_write(id.0, child)
                } else {
                    match self.injected(child, |st| st.before_write(offset, len)) {
                        Err(e) => Err(e),
                        Ok(_) => self.disk_write(child, offset, &data),
                    }
                };
                if res.is_ok() {
                    self.stats.repaired += 1;
                }
                self.q.handle_rewrite(id, slot, res)
            }
            Action::BlockStatus {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                // As the drivers' memory children answer: the run of
                // all-zero (or not) sectors the range starts with.
                let d = self.disk_id(child);
                let res = match self.disks.get(&d) {
                    _ if self.away(child) => Err(Errno::ENOTCONN),
                    None => Err(Errno::ENXIO),
                    Some(disk) => {
                        let bytes = &disk.data[offset as usize..(offset + len) as usize];
                        let zero = |c: &[u8]| c.iter().all(|&b| b == 0);
                        let mut chunks = bytes.chunks(SECTOR as usize);
                        Ok(match chunks.next() {
                            None => quorum_proto::Extent { len, zero: false },
                            Some(first) => {
                                let z = zero(first);
                                let n = first.len()
                                    + chunks
                                        .take_while(|c| zero(c) == z)
                                        .map(<[u8]>::len)
                                        .sum::<usize>();
                                quorum_proto::Extent {
                                    len: n as u64,
                                    zero: z,
                                }
                            }
                        })
                    }
                };
                if let Some(l) = self.live.get_mut(&id.0) {
                    l.results[slot] = Some(res.map(|_| ()));
                }
                self.q.handle_block_status(id, slot, res)
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.violated(format!("the core refused a completion it asked for: {e}"));
        }
        let id = a.id().0;
        if let Some(l) = self.live.get_mut(&id) {
            l.outstanding = l.outstanding.saturating_sub(1);
            if let Some(c) = &l.cancelled {
                // R-CANCEL-2: accepted above like any other completion.
                self.stats.cancelled_ops += 1;
                if c.completed && l.outstanding == 0 {
                    self.reap(id);
                }
            }
        }
    }

    /// Runs `f` on the child's injection rules; `Ok(None)` when it has none.
    pub(super) fn injected<T>(
        &mut self,
        child: ChildId,
        f: impl FnOnce(&mut InjectState) -> std::io::Result<T>,
    ) -> Result<Option<T>, Errno> {
        let d = self.disk_id(child);
        match self.disks.get_mut(&d).and_then(|k| k.inject.as_mut()) {
            Some(st) => f(st).map(Some).map_err(|e| Errno::from(&e)),
            None => Ok(None),
        }
    }

    pub(super) fn errno(&mut self) -> Errno {
        ERRNOS[self.tape.below(ERRNOS.len() as u64) as usize]
    }

    pub(super) fn disk_read(
        &mut self,
        child: ChildId,
        offset: u64,
        len: u64,
        id: u64,
        slot: usize,
    ) -> Result<(), Errno> {
        let d = self.disk_id(child);
        let faulty = self.is_faulty(d);
        let first = offset / SECTOR;
        let end = (offset + len).div_ceil(SECTOR);
        if faulty && len > 0 && self.tape.chance(self.rates.latent) {
            let s = first + self.tape.below(end - first);
            self.stats.injected.latent += 1;
            if let Some(disk) = self.disks.get_mut(&d) {
                disk.latent.insert(s);
            }
        }
        if faulty && len > 0 && self.tape.chance(self.rates.corrupt) {
            let at = offset + self.tape.below(len);
            // Deterministic: the same child flips the same bit at the same place.
            let bit = (d as u64 + at) % 8;
            self.stats.injected.corrupt += 1;
            if let Some(disk) = self.disks.get_mut(&d) {
                disk.data[at as usize] ^= 1 << bit;
            }
        }
        let Some(disk) = self.disks.get(&d) else {
            self.violated(format!("read from removed child {child}"));
            return Err(Errno::ENXIO);
        };
        if disk.latent.range(first..end).next().is_some() {
            return Err(Errno::EIO);
        }
        if faulty && self.tape.chance(self.rates.read_error) {
            self.stats.injected.read_error += 1;
            return Err(self.errno());
        }
        let (o, l) = (offset as usize, len as usize);
        let disk = &self.disks[&d];
        if let Some(live) = self.live.get_mut(&id) {
            let b = &mut live.bufs[slot];
            b.clear();
            b.extend_from_slice(&disk.data[o..o + l]);
        }
        Ok(())
    }

    pub(super) fn disk_write(
        &mut self,
        child: ChildId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let d = self.disk_id(child);
        let faulty = self.is_faulty(d);
        let len = data.len() as u64;
        if faulty && self.tape.chance(self.rates.write_error) {
            self.stats.injected.write_error += 1;
            return Err(self.errno());
        }
        if faulty && self.tape.chance(self.rates.lost_write) {
            self.stats.injected.lost_write += 1;
            return Ok(());
        }
        let mut at = offset;
        if faulty && self.tape.chance(self.rates.misdirected) {
            self.stats.injected.misdirected += 1;
            at = self.tape.below((self.cfg.size - len) / SECTOR + 1) * SECTOR;
        }
        let Some(disk) = self.disks.get_mut(&d) else {
            self.violated(format!("write to removed child {child}"));
            return Err(Errno::ENXIO);
        };
        if self.cfg.crash {
            disk.volatile.before(&disk.data, at, len);
        }
        disk.data[at as usize..(at + len) as usize].copy_from_slice(data);
        if self.cfg.crash {
            disk.volatile.after(&disk.data, at, len);
        }
        let (first, end) = (at / SECTOR, (at + len).div_ceil(SECTOR));
        let healed: Vec<u64> = disk.latent.range(first..end).copied().collect();
        for s in healed {
            disk.latent.remove(&s);
        }
        Ok(())
    }

    /// Sync runs: whether the child is away (every operation fails).
    fn away(&self, child: ChildId) -> bool {
        self.sync.is_some() && self.is_away(self.disk_id(child))
    }

    /// A write-like operation of request `id` on a child away: it fails,
    /// and the child missed that write (R-SYNC-8).
    fn away_write(&mut self, id: u64, child: ChildId) -> Result<(), Errno> {
        let d = self.disk_id(child);
        if let Some(ls) = self.live.get_mut(&id).and_then(|l| l.sync.as_mut())
            && !ls.away_failed.contains(&d)
        {
            ls.away_failed.push(d);
        }
        Err(Errno::ENOTCONN)
    }

    pub(super) fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }
}
