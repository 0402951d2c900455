//! Crashes (issue 14): the device stops at any point and restarts on the
//! same children and map file.
//!
//! Each disk remembers, for every sector written since its last completed
//! flush, the bytes it had then and every write since ([`Volatile`]); at
//! the crash it keeps, per sector, one of them — or, on a faulty child,
//! rarely, garbage — as the seed decides. The map file keeps what its two
//! slots hold (the write in progress lost, torn or whole,
//! [`super::sync::SyncState::crashed_file`]), and the restarted device
//! opens what `parse_bytes` yields: the newest whole copy, or nothing
//! (then every chunk is unsettled).
//!
//! What the device may return is tracked per sector ([`Logical`]): the
//! values a crash right now would allow are the last durable value (as of
//! the last flush that completed) and every write acknowledged or in
//! flight since; after a crash a sector may hold any of them, until a
//! write or a read decides it (a read, once answered, is repeatable:
//! R-SYNC-3). Crash runs write and read whole sectors only.

use quorum_driver::sync::SyncMap;

use super::sync::Sector;
use super::*;

/// What a disk has not flushed: per sector, its bytes as of its last
/// completed flush and every write since (with the disk's write sequence).
#[derive(Clone, Debug, Default)]
pub(super) struct Volatile {
    seq: u64,
    sectors: BTreeMap<u64, Hist>,
}

#[derive(Clone, Debug)]
struct Hist {
    durable: Sector,
    writes: Vec<(u64, Sector)>,
}

impl Volatile {
    /// Before `data[at..at + len]` is overwritten: remember what was durable.
    pub(super) fn before(&mut self, data: &[u8], at: u64, len: u64) {
        for s in at / SECTOR..(at + len).div_ceil(SECTOR) {
            self.sectors.entry(s).or_insert_with(|| Hist {
                durable: sector(data, s).to_vec(),
                writes: Vec::new(),
            });
        }
    }

    /// After: the sectors' new bytes, as one more write.
    pub(super) fn after(&mut self, data: &[u8], at: u64, len: u64) {
        self.seq += 1;
        for s in at / SECTOR..(at + len).div_ceil(SECTOR) {
            if let Some(h) = self.sectors.get_mut(&s) {
                h.writes.push((self.seq, sector(data, s).to_vec()));
            }
        }
    }

    /// The write sequence now (a flush issued now covers what came before).
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// A flush issued at sequence `upto` completed: those writes are durable.
    pub(super) fn flushed(&mut self, upto: u64) {
        self.sectors.retain(|_, h| {
            if let Some(k) = h.writes.iter().rposition(|&(q, _)| q <= upto) {
                h.durable = h.writes[k].1.clone();
                h.writes.drain(..=k);
            }
            !h.writes.is_empty()
        });
    }
}

fn sector(data: &[u8], s: u64) -> &[u8] {
    &data[(s * SECTOR) as usize..((s + 1) * SECTOR) as usize]
}

/// A write (or a read's answer, which settles a sector) since the last
/// durable point.
#[derive(Clone, Debug)]
struct Entry {
    /// The request (0 for a read's answer).
    id: u64,
    offset: u64,
    data: Rc<Vec<u8>>,
    /// When it completed (serial), if it did.
    done: Option<u64>,
    /// Whether one of its child writes was carried out: a write that never
    /// reached a disk cannot be left there by a crash.
    landed: bool,
}

/// What each sector may hold: one value (the oracle's) or, after a crash,
/// one of several.
#[derive(Clone, Debug)]
pub(super) struct Logical {
    /// As of the last durable point (a flush that completed), and the
    /// sectors where it is one of several values.
    dur: Vec<u8>,
    dur_alts: BTreeMap<u64, Vec<Sector>>,
    /// Now: the sectors that may hold one of several values (the oracle
    /// holds one of them).
    alts: BTreeMap<u64, Vec<Sector>>,
    /// Writes and answers since the durable point, in order.
    log: Vec<Entry>,
}

impl Logical {
    pub(super) fn new(oracle: &[u8]) -> Logical {
        Logical {
            dur: oracle.to_vec(),
            dur_alts: BTreeMap::new(),
            alts: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// The sectors of `offset..offset + len` that may hold one of several
    /// values, with those values.
    pub(super) fn ambiguous(&self, offset: u64, len: u64) -> Vec<(u64, Vec<Sector>)> {
        if self.alts.is_empty() || len == 0 {
            return Vec::new();
        }
        self.alts
            .range(offset / SECTOR..(offset + len).div_ceil(SECTOR))
            .map(|(&s, v)| (s, v.clone()))
            .collect()
    }

    /// Whether `bytes` (at `offset`, whole sectors) is something the device
    /// may hold: the oracle's bytes, or one of a sector's values.
    pub(super) fn holds(&self, oracle: &[u8], offset: u64, bytes: &[u8]) -> bool {
        bytes.chunks(SECTOR as usize).enumerate().all(|(k, b)| {
            let s = offset / SECTOR + k as u64;
            sector(oracle, s) == b || self.alts.get(&s).is_some_and(|v| v.iter().any(|x| x == b))
        })
    }

    /// A write was submitted: from now on a crash may leave it anywhere.
    pub(super) fn write_submitted(&mut self, id: u64, offset: u64, data: Rc<Vec<u8>>) {
        self.log.push(Entry {
            id,
            offset,
            data,
            done: None,
            landed: false,
        });
    }

    /// One of write `id`'s child writes was carried out.
    pub(super) fn write_landed(&mut self, id: u64) {
        if let Some(e) = self.log.iter_mut().rev().find(|e| e.id == id) {
            e.landed = true;
        }
    }

    /// A write ended (its data is the oracle's now): its sectors hold one
    /// value again.
    pub(super) fn write_done(&mut self, id: u64, serial: u64) {
        if let Some(e) = self.log.iter_mut().rev().find(|e| e.id == id) {
            e.done = Some(serial);
            let (o, l) = (e.offset, e.data.len() as u64);
            let keys: Vec<u64> = self
                .alts
                .range(o / SECTOR..(o + l).div_ceil(SECTOR))
                .map(|(&s, _)| s)
                .collect();
            for s in keys {
                self.alts.remove(&s);
            }
        }
    }

    /// A cancelled write that never reached a child: forgotten.
    pub(super) fn write_dropped(&mut self, id: u64) {
        self.log.retain(|e| e.id != id);
    }

    /// A read answered `data` at `offset` (whole sectors): repeatable from
    /// now on (R-SYNC-3), so those sectors hold that one value; durable
    /// once a flush submitted after it completes.
    pub(super) fn pin(&mut self, oracle: &mut [u8], offset: u64, data: &[u8], serial: u64) {
        let first = offset / SECTOR;
        let mut any = false;
        for k in 0..data.len() as u64 / SECTOR {
            if self.alts.remove(&(first + k)).is_some() {
                any = true;
            }
        }
        if !any {
            return;
        }
        oracle[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        self.log.push(Entry {
            id: 0,
            offset,
            data: Rc::new(data.to_vec()),
            done: Some(serial),
            landed: true,
        });
    }

    /// A flush submitted at `serial` completed: what ended before it was
    /// submitted (at a serial up to `serial`: completions count up before
    /// anything else happens) is durable.
    pub(super) fn flushed(&mut self, serial: u64) {
        let (due, rest): (Vec<Entry>, Vec<Entry>) = self
            .log
            .drain(..)
            .partition(|e| e.done.is_some_and(|d| d <= serial));
        self.log = rest;
        for e in due {
            let (o, l) = (e.offset as usize, e.data.len());
            self.dur[o..o + l].copy_from_slice(&e.data);
            for s in o as u64 / SECTOR..(o + l) as u64 / SECTOR {
                self.dur_alts.remove(&s);
            }
        }
    }

    /// The crash: every sector a write since the durable point touched (one
    /// that reached a disk) may hold the durable value or any of those writes'. The oracle holds
    /// one of them (the durable one).
    pub(super) fn crashed(&mut self, oracle: &mut [u8]) {
        let mut sets = self.dur_alts.clone();
        for e in self.log.iter().filter(|e| e.landed) {
            let first = e.offset / SECTOR;
            for k in 0..e.data.len() as u64 / SECTOR {
                let s = first + k;
                let v = sets
                    .entry(s)
                    .or_insert_with(|| vec![sector(&self.dur, s).to_vec()]);
                let b = &e.data[(k * SECTOR) as usize..((k + 1) * SECTOR) as usize];
                if !v.iter().any(|x| x == b) {
                    v.push(b.to_vec());
                }
            }
        }
        sets.retain(|_, v| v.len() > 1);
        oracle.copy_from_slice(&self.dur);
        for (&s, v) in &sets {
            oracle[(s * SECTOR) as usize..((s + 1) * SECTOR) as usize].copy_from_slice(&v[0]);
        }
        self.dur_alts = sets.clone();
        self.alts = sets;
        self.log.clear();
    }
}

impl Sim {
    /// Crash runs, between steps of the workload: maybe crash.
    pub(super) fn maybe_crash(&mut self) -> bool {
        let Some(s) = self.sync.as_ref() else {
            return false;
        };
        if s.ending || s.rates.crash == 0 || !self.tape.chance(s.rates.crash) {
            return false;
        }
        self.crash();
        true
    }

    /// The device stops: the disks keep what they keep, the map file what
    /// it holds; then it restarts on them ([`Sim::restart`]).
    pub(super) fn crash(&mut self) {
        self.tape.out(&"crash", || "crash".into());
        // The disks: per unflushed sector, the old bytes, one of the writes
        // since, or (a faulty child, rarely) garbage.
        let ids: Vec<u32> = self.disks.keys().copied().collect();
        for d in ids {
            let garbage_ok = self.is_faulty(d);
            let Some(disk) = self.disks.get_mut(&d) else {
                continue;
            };
            let vol = std::mem::take(&mut disk.volatile);
            for (s, h) in vol.sectors {
                let at = (s * SECTOR) as usize;
                let dst = &mut self.disks.get_mut(&d).expect("disk").data[at..at + SECTOR as usize];
                if garbage_ok && self.tape.below(32) == 0 {
                    let g = super::workload::pattern(self.tape.below(u64::MAX), SECTOR as usize);
                    dst.copy_from_slice(&g);
                    continue;
                }
                let k = self.tape.below(h.writes.len() as u64 + 1) as usize;
                let img = if k == 0 {
                    &h.durable
                } else {
                    &h.writes[k - 1].1
                };
                dst.copy_from_slice(img);
            }
        }
        // The map file.
        let tape = &mut self.tape;
        let s = self.sync.as_mut().expect("sync run");
        let in_progress = s.writing_in_progress();
        let before = s.file_generation();
        let loaded = s.crashed_file(|n| tape.below(n));
        if in_progress && s.file_generation() <= before {
            self.stats.sync.map_older += 1;
        }
        // What the device may hold now.
        if let Some(lg) = s.logical.as_mut() {
            lg.crashed(&mut self.oracle);
        }
        // Requests in flight are gone with the device.
        let live = std::mem::take(&mut self.live);
        for (_, mut l) in live {
            self.pool.append(&mut l.bufs);
            self.pool.push(std::mem::take(&mut l.base));
        }
        self.queue.clear();
        self.flush_seq.clear();
        self.rewrites_out.clear();
        self.landed.clear();
        self.answered_live = 0;
        self.zombies = 0;
        self.change_due = false;
        self.restart(loaded);
    }

    /// A fresh core on the same children (in the same slot order) and the
    /// map file's marks; the settle pass starts (the background resync
    /// walks `recovering` first), and every chunk the map says is settled
    /// must be identical on the healthy children (R-SYNC-2, R-SYNC-6).
    fn restart(&mut self, loaded: Option<(SyncMap, Vec<(u32, String)>)>) {
        let alias: Vec<u32> = self.q.children().iter().map(|&c| self.disk_id(c)).collect();
        let n = alias.len();
        let q = match Core::new(
            core_config(&self.cfg, n, self.cfg.rewrite),
            self.q.checked(),
        ) {
            Ok(q) => q,
            Err(e) => {
                self.violated(format!("the restarted core refused its configuration: {e}"));
                return;
            }
        };
        self.stats.sync.settled += self.q.settled_differences();
        self.q = q;
        self.alias = Some(alias.clone());
        let (size, chunk) = (self.cfg.size, self.cfg.sync);
        let ids: Vec<u32> = (0..n as u32).collect();
        let mut map = SyncMap::new(size, chunk, &ids);
        let mut reset = !self.forget_map;
        if let Some((m, names)) = loaded.filter(|_| !self.forget_map)
            && m.chunk() == chunk
            && m.size() == size
            && names.len() == n
        {
            let other: Option<Vec<u32>> = alias
                .iter()
                .map(|d| {
                    let want = format!("d{d}");
                    names.iter().find(|(_, nm)| *nm == want).map(|&(id, _)| id)
                })
                .collect();
            if let Some(other) = other {
                map.copy_marks_from(&m, &other);
                reset = false;
            }
        }
        if reset {
            // Both copies damaged (or for other children): every chunk
            // unsettled, a full settle pass.
            map.unsettle_all();
            self.stats.sync.map_reset += 1;
        }
        let away = self.sync.as_ref().and_then(|s| s.away_child);
        let away_core = away.and_then(|d| alias.iter().position(|&a| a == d));
        let s = self.sync.as_mut().expect("sync run");
        let recovering: BTreeSet<u64> = (0..map.chunks())
            .filter(|&c| map.recovering().get(c))
            .collect();
        let stale: BTreeSet<u64> = (0..map.chunks())
            .filter(|&c| {
                ids.iter()
                    .any(|&i| map.stale_of(i).is_some_and(|b| b.get(c)))
            })
            .collect();
        s.owed_after_reload(away_core.and_then(|i| map.stale_of(i as u32)));
        s.reopened(map);
        s.settle_pass = Some((recovering, stale));
        s.hopeless.clear();
        let (r, st) = (s.settle_pass.as_ref().map_or(0, |p| p.0.len()), reset);
        self.tape.out(&("restart", r, st), || {
            format!("restart recovering={r} reset={st}")
        });
        self.stats.sync.restarts += 1;
        self.stats.sync.r_sync_6 += 1;
        self.check_all_settled("after a restart");
    }
}
