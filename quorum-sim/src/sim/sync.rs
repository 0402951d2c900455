//! Sync tracking in the simulator (SPEC R-SYNC): the map the core asks and
//! changes (the driver kit's [`SyncMap`], as the real drivers keep it), its
//! file on simulated storage (two slots, as `quorum_driver::sync::file`
//! writes them), `Unsettle` marks made durable by a map write that takes
//! simulated time (so a write's child writes really wait), a background
//! resync interleaved with the workload, children that go away for a while
//! (every operation failing, like an unreachable NBD child) and come back,
//! and the R-SYNC invariants each of these must keep.

use quorum_driver::sync::file::{parse_bytes, record_for_test};
use quorum_driver::sync::{Applied, SyncMap};
use quorum_proto::sync::{Chunks, Mark, Marks};

use super::crash::Logical;
use super::workload::{is_write_req, overlaps};
use super::*;
use crate::config::Faults;

/// A sector's bytes.
pub(super) type Sector = Vec<u8>;

/// What the map said about a request when it was submitted (the core asks
/// once, and keeps the answers for the request's whole life).
#[derive(Debug)]
pub(super) struct LiveSync {
    /// The chunks it touches.
    pub(super) chunks: Chunks,
    /// Per slot: stale on one of them (R-SYNC-1), for reads, resyncs and
    /// writes.
    pub(super) skip: Vec<bool>,
    /// The range was unsettled: a quorum read or a resync settles it (R-SYNC-3).
    pub(super) settle: bool,
    /// Writes: whether its `Unsettle` was made durable yet (R-SYNC-2).
    pub(super) marked: Option<bool>,
    /// Crash runs: the allowed values of the sectors of the range that may
    /// hold one of several writes.
    pub(super) ambig: Vec<(u64, Vec<Sector>)>,
    /// Settling reads and resyncs: the slot their rewrites copy.
    pub(super) source: Option<usize>,
    /// Disks that failed one of its child writes because they were away.
    pub(super) away_failed: Vec<u32>,
    /// Submission time, in completions ([`SyncState::serial`]).
    pub(super) serial: u64,
    /// Submitted by the simulator itself (resync passes, their flushes).
    pub(super) internal: bool,
    /// Another read or resync started writing its winner over this one's
    /// range before this one voted, or was still writing it when this one
    /// started (R-SYNC-3): it settles and repairs nothing, and its answer
    /// may be superseded (a resync ends with EAGAIN).
    pub(super) overlapped_settle: bool,
}

/// Rates of the faults sync tracking adds (parts per million per step).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SyncRates {
    /// The away-capable child goes away.
    pub(super) away: u32,
    /// A child away comes back.
    pub(super) back: u32,
    /// The device crashes.
    pub(super) crash: u32,
}

/// A map file write in progress.
#[derive(Debug)]
struct MapWrite {
    /// The slot written (the older one).
    slot: usize,
    /// The record going there.
    record: Vec<u8>,
    /// Its file generation.
    generation: u64,
    /// The map's generation when it was taken ([`SyncMap::written`]).
    map_generation: u64,
    /// The map as it was taken.
    snapshot: SyncMap,
}

/// Sync tracking's state in a run.
pub(super) struct SyncState {
    pub(super) chunk: u64,
    pub(super) map: SyncMap,
    pub(super) rates: SyncRates,
    /// The map file: two slots.
    file: Vec<u8>,
    slot: usize,
    gens: [u64; 2],
    writing: Option<MapWrite>,
    /// Changed since the last snapshot was taken.
    dirty: bool,
    /// Writes waiting for the map generation `.1` to be durable.
    waiting: Vec<(u64, u64)>,
    /// The map as the file holds it (the last completed write).
    durable: SyncMap,
    /// The resync: where the pass is, its request, the pass's flush, whether
    /// the pass did anything.
    cursor: u64,
    resync_id: Option<u64>,
    flush_id: Option<u64>,
    pass_work: bool,
    /// The child that goes away (a faulty child with no other fault), and
    /// whether it is away now.
    pub(super) away_child: Option<u32>,
    pub(super) away: bool,
    /// R-SYNC-8: chunks the away child missed a write on (ever), and those
    /// not resynced to it since.
    expected: BTreeSet<u64>,
    owed: BTreeSet<u64>,
    /// R-SYNC-4: (chunk, disk, serial) resynced Done, waiting for a flush.
    fresh_due: Vec<(u64, u32, u64)>,
    /// The serial of the last `Stale` mark of each (disk, chunk).
    last_stale: BTreeMap<(u32, u64), u64>,
    /// Completions so far: orders flushes after what they make durable.
    pub(super) serial: u64,
    /// Crash runs: what the device may hold.
    pub(super) logical: Option<Logical>,
    /// After a restart: the chunks the settle pass must settle, and the
    /// chunks stale then (what it may copy, R-SYNC-6, R-SYNC-8).
    pub(super) settle_pass: Option<(BTreeSet<u64>, BTreeSet<u64>)>,
    /// Chunks whose last resync found no quorum (left marked).
    pub(super) hopeless: BTreeSet<u64>,
    /// Internal requests live (they occupy no caller).
    pub(super) internal: usize,
    /// No more crashes, away or background resync (the end of the run).
    pub(super) ending: bool,
}

/// The bytes one map file slot takes for a device of `size` in `chunk`s: as
/// `quorum_driver::sync::file` sizes them (`parse_bytes` refuses a file of
/// any other size, which the first map write checks).
fn slot_size(size: u64, chunk: u64) -> usize {
    const MAX_CHILDREN: u64 = 64;
    const MAX_NAME: u64 = 255;
    let words = size.div_ceil(chunk).div_ceil(64);
    let names = MAX_CHILDREN * (4 + 4 + MAX_NAME + 1);
    let marks = 20 + MAX_CHILDREN * 4 + (1 + MAX_CHILDREN) * words * 8;
    ((24 + 4 + names + marks + 4).div_ceil(4096) * 4096) as usize
}

impl SyncState {
    pub(super) fn new(cfg: &SimConfig) -> SyncState {
        let ids: Vec<u32> = (0..cfg.children as u32).collect();
        let map = SyncMap::new(cfg.size, cfg.sync, &ids);
        let slot = slot_size(cfg.size, cfg.sync);
        let mut s = SyncState {
            chunk: cfg.sync,
            durable: map.clone(),
            map,
            rates: SyncRates::default(),
            file: vec![0; 2 * slot],
            slot,
            gens: [0, 0],
            writing: None,
            dirty: false,
            waiting: Vec::new(),
            cursor: 0,
            resync_id: None,
            flush_id: None,
            pass_work: false,
            away_child: None,
            away: false,
            expected: BTreeSet::new(),
            owed: BTreeSet::new(),
            fresh_due: Vec::new(),
            last_stale: BTreeMap::new(),
            serial: 0,
            logical: None,
            settle_pass: None,
            hopeless: BTreeSet::new(),
            internal: 0,
            ending: false,
        };
        // As `MapFile::create`: both slots hold the map from the start.
        let names: Vec<(u32, String)> = ids.iter().map(|&i| (i, format!("d{i}"))).collect();
        for _ in 0..2 {
            let w = s.take_write(&names);
            s.land(w);
        }
        s
    }

    /// The chunk range of `offset..offset + len`.
    pub(super) fn chunks_of(&self, offset: u64, len: u64) -> Chunks {
        Chunks::of(offset, len, self.chunk)
    }

    /// Starts a map write of the map as it is now (over the older slot).
    fn take_write(&mut self, names: &[(u32, String)]) -> MapWrite {
        let slot = if self.gens[0] <= self.gens[1] { 0 } else { 1 };
        let generation = self.gens[0].max(self.gens[1]) + 1;
        let names: Vec<(u32, String)> = names.to_vec();
        self.dirty = false;
        MapWrite {
            slot,
            record: record_for_test(&self.map, &names, generation),
            generation,
            map_generation: self.map.generation(),
            snapshot: self.map.clone(),
        }
    }

    /// A map write reaches the file whole.
    fn land(&mut self, w: MapWrite) {
        let at = w.slot * self.slot;
        self.file[at..at + w.record.len()].copy_from_slice(&w.record);
        self.gens[w.slot] = w.generation;
        self.map.written(w.map_generation);
        self.durable = w.snapshot;
    }

    /// What the map file holds after a crash: the write in progress lost,
    /// torn (a prefix of its record over the older slot) or whole, as
    /// `decide(n)` draws; then what opening it yields.
    pub(super) fn crashed_file(
        &mut self,
        mut decide: impl FnMut(u64) -> u64,
    ) -> Option<(SyncMap, Vec<(u32, String)>)> {
        if let Some(w) = self.writing.take() {
            match decide(3) {
                0 => {}
                1 => {
                    let cut = decide(w.record.len() as u64) as usize;
                    let at = w.slot * self.slot;
                    self.file[at..at + cut].copy_from_slice(&w.record[..cut]);
                    // Whatever generation the slot had is gone with its record.
                    self.gens[w.slot] = 0;
                }
                _ => {
                    let at = w.slot * self.slot;
                    self.file[at..at + w.record.len()].copy_from_slice(&w.record);
                    self.gens[w.slot] = w.generation;
                }
            }
        }
        self.waiting.clear();
        parse_bytes(&self.file)
    }

    /// The file generation of its newest whole slot.
    pub(super) fn file_generation(&self) -> u64 {
        self.gens[0].max(self.gens[1])
    }

    /// After a restart: the new map, nothing in progress.
    pub(super) fn reopened(&mut self, map: SyncMap) {
        self.durable = map.clone();
        self.map = map;
        self.writing = None;
        self.dirty = false;
        self.waiting.clear();
        self.cursor = 0;
        self.resync_id = None;
        self.flush_id = None;
        self.pass_work = false;
        self.fresh_due.clear();
        self.internal = 0;
    }

    /// Whether a map file write is in progress.
    pub(super) fn writing_in_progress(&self) -> bool {
        self.writing.is_some()
    }

    /// A child removed: what was due for its disk goes with it (a child
    /// added later may get the same id).
    pub(super) fn forget_disk(&mut self, disk: u32) {
        self.fresh_due.retain(|&(_, d, _)| d != disk);
        self.last_stale.retain(|&(d, _), _| d != disk);
    }

    /// R-SYNC-8: the away child lost some stale marks (a crash): those
    /// chunks are no longer owed to it (they are unsettled, settled instead).
    pub(super) fn owed_after_reload(&mut self, stale: Option<&quorum_driver::sync::Bits>) {
        self.owed.retain(|&c| stale.is_some_and(|b| b.get(c)));
    }
}

impl Sim {
    /// Sync runs: the rates of the faults sync tracking adds, and the child
    /// that goes away (drawn after everything runs without sync draw).
    pub(super) fn sync_setup(&mut self) {
        let crash = self.cfg.crash;
        let kind = |tape: &mut Tape, max: u64| -> u32 {
            if tape.below(2) == 0 {
                0
            } else {
                1 + tape.below(max) as u32
            }
        };
        let rates = match self.cfg.faults {
            Faults::Swarm => SyncRates {
                away: kind(&mut self.tape, 3_000),
                back: 1 + self.tape.below(20_000) as u32,
                crash: if crash {
                    1 + self.tape.below(3_000) as u32
                } else {
                    0
                },
            },
            Faults::All => SyncRates {
                away: 1_000,
                back: 10_000,
                crash: if crash { 1_000 } else { 0 },
            },
            Faults::None => SyncRates {
                away: 0,
                back: 0,
                crash: if crash { 1_000 } else { 0 },
            },
        };
        // The child that goes away is one of the faulty ones: it counts
        // toward the safety bound, and has no other fault.
        let away_child = if rates.away != 0 && !self.faulty.is_empty() {
            let f: Vec<u32> = self.faulty.iter().copied().collect();
            Some(f[self.tape.below(f.len() as u64) as usize])
        } else {
            None
        };
        let s = self.sync.as_mut().expect("sync run");
        s.rates = rates;
        s.away_child = away_child;
        if crash {
            s.logical = Some(Logical::new(&self.oracle));
        }
        self.tape.out(&("sync", away_child), || {
            format!("sync away={away_child:?}")
        });
    }

    /// The names the map file knows the children by: core id and disk.
    pub(super) fn map_names(&self) -> Vec<(u32, String)> {
        self.q
            .children()
            .iter()
            .map(|&c| (c.0, format!("d{}", self.disk_id(c))))
            .collect()
    }

    /// One step of sync tracking's own activity, between workload steps:
    /// children going away and coming back, a lazy map write, the next
    /// chunk of the background resync.
    pub(super) fn sync_step(&mut self) {
        let Some(s) = self.sync.as_ref() else { return };
        if s.ending {
            return;
        }
        let (rates, away_child, away) = (s.rates, s.away_child, s.away);
        if let Some(d) = away_child {
            if away && self.tape.chance(rates.back) {
                self.set_away(d, false);
            } else if !away && self.tape.chance(rates.away) {
                self.set_away(d, true);
            }
        }
        let s = self.sync.as_ref().expect("sync run");
        if s.writing.is_none() && s.dirty && self.tape.below(8) == 0 {
            self.start_map_write();
        }
        let s = self.sync.as_ref().expect("sync run");
        if s.resync_id.is_none()
            && s.flush_id.is_none()
            && !self.change_due
            && self.live.len() < 32
            && self.submitted < self.cfg.ops
            && self.tape.below(4) == 0
        {
            self.resync_next();
        }
    }

    fn set_away(&mut self, disk: u32, away: bool) {
        let s = self.sync.as_mut().expect("sync run");
        s.away = away;
        if !away {
            self.stats.sync.away += 1;
        }
        self.tape.out(&("away", disk, away), || {
            format!("{} d{disk}", if away { "away" } else { "back" })
        });
    }

    /// Whether `disk` is away now: every operation on it fails.
    pub(super) fn is_away(&self, disk: u32) -> bool {
        self.sync
            .as_ref()
            .is_some_and(|s| s.away && s.away_child == Some(disk))
    }

    /// The background resync: the next chunk that needs work (skipping
    /// those that only wait for a child away to come back), or the pass's
    /// flush once it has walked them all.
    fn resync_next(&mut self) {
        let s = self.sync.as_ref().expect("sync run");
        let mut from = s.cursor;
        let found = loop {
            let Some(c) = s.map.next_work(from) else {
                break None;
            };
            if !self.waits_for_away(c) {
                break Some(c);
            }
            from = c + 1;
        };
        match found {
            Some(c) => self.submit_resync(c),
            None => {
                let s = self.sync.as_mut().expect("sync run");
                s.cursor = 0;
                if std::mem::take(&mut s.pass_work) {
                    self.submit_internal(Request::Flush);
                }
            }
        }
    }

    /// Whether chunk `c` needs work only for the child away (R-SYNC-8: its
    /// stale chunks wait while it cannot be reached).
    fn waits_for_away(&self, c: u64) -> bool {
        let s = self.sync.as_ref().expect("sync run");
        if !s.away || s.map.recovering().get(c) {
            return false;
        }
        self.q.children().iter().all(|&ch| {
            let stale = s.map.stale_of(ch.0).is_some_and(|b| b.get(c));
            !stale || s.away_child == Some(self.disk_id(ch))
        })
    }

    /// Submits a resync of chunk `c` (the simulator's own request).
    pub(super) fn submit_resync(&mut self, c: u64) {
        let s = self.sync.as_mut().expect("sync run");
        s.cursor = c + 1;
        s.pass_work = true;
        let (offset, len) = s.map.range_of(c);
        self.stats.sync.resyncs += 1;
        self.submit_internal(Request::Resync { offset, len });
    }

    pub(super) fn submit_internal(&mut self, req: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.submit(id, req);
        if let Some(ls) = self.live.get_mut(&id).and_then(|l| l.sync.as_mut()) {
            ls.internal = true;
            let s = self.sync.as_mut().expect("sync run");
            s.internal += 1;
            match req {
                Request::Resync { .. } => s.resync_id = Some(id),
                _ => s.flush_id = Some(id),
            }
        }
        self.drain();
        id
    }

    /// What the map says about a request about to be submitted.
    pub(super) fn live_sync(&self, req: &Request, children: &[ChildId]) -> LiveSync {
        let s = self.sync.as_ref().expect("sync run");
        let (offset, len) = req.range();
        let chunks = s.chunks_of(offset, len);
        let asks = matches!(
            req,
            Request::Read { .. }
                | Request::Resync { .. }
                | Request::Write { .. }
                | Request::WriteZeroes { .. }
        );
        let skip: Vec<bool> = children
            .iter()
            .map(|&c| asks && Marks::stale(&s.map, c, chunks))
            .collect();
        let settle = (matches!(req, Request::Resync { .. })
            || (matches!(req, Request::Read { .. }) && self.pattern == ReadPattern::Quorum))
            && Marks::unsettled(&s.map, chunks);
        let ambig = match (&s.logical, req) {
            (Some(lg), Request::Read { .. } | Request::Resync { .. }) => lg.ambiguous(offset, len),
            _ => Vec::new(),
        };
        let serial = s.serial;
        let overlapped_settle = settle
            && self.live.iter().any(|(&id, w)| {
                w.sync.as_ref().is_some_and(|ws| ws.settle)
                    && overlaps(&w.req, offset, len)
                    && self
                        .rewrites_out
                        .range((id, 0)..(id + 1, 0))
                        .next()
                        .is_some()
            });
        LiveSync {
            chunks,
            skip,
            settle,
            marked: None,
            ambig,
            source: None,
            away_failed: Vec::new(),
            serial,
            internal: false,
            overlapped_settle,
        }
    }

    /// Request `id` issued its first settling write (R-SYNC-3): the reads
    /// and resyncs over its range that have not voted yet settle nothing.
    pub(super) fn settle_started(&mut self, id: u64) {
        let Some((o, n)) = self.live.get(&id).map(|l| l.req.range()) else {
            return;
        };
        for (&k, r) in self.live.iter_mut() {
            if k != id
                && matches!(r.req, Request::Read { .. } | Request::Resync { .. })
                && r.rewrites.is_empty()
                && overlaps(&r.req, o, n)
                && let Some(ls) = r.sync.as_mut()
                && ls.settle
            {
                ls.overlapped_settle = true;
            }
        }
    }

    // ---- marks and the map file ----------------------------------------

    /// The core asked for a mark: applied to the map; an `Unsettle` waits
    /// to be durable, the request's child writes with it (R-SYNC-2).
    pub(super) fn mark(&mut self, id: u64, mark: Mark) {
        self.stats.sync.marks += 1;
        let serial = self.sync.as_ref().map_or(0, |s| s.serial);
        if let Mark::Stale { child, chunks } = mark {
            let d = self.disk_id(child);
            // R-SYNC-3: a settling read leaves the children it did not read
            // stale on its whole range; for the child away, chunks it may
            // be resynced on (R-SYNC-8).
            let settling = self.live.get(&id).is_some_and(|l| {
                matches!(l.req, Request::Read { .. }) && l.sync.as_ref().is_some_and(|ls| ls.settle)
            });
            let s = self.sync.as_mut().expect("sync run");
            for c in chunks.first..chunks.end {
                s.last_stale.insert((d, c), serial);
                if settling && s.away_child == Some(d) {
                    s.expected.insert(c);
                }
            }
        }
        if let Mark::Fresh { child, chunks, .. } = mark {
            // A later copy to the child (a resync that may still fail on
            // another target) replaces a Fresh still waiting for its flush:
            // the chunk now waits for a flush after this copy (R-SYNC-4).
            let d = self.disk_id(child);
            let s = self.sync.as_mut().expect("sync run");
            for e in s.fresh_due.iter_mut() {
                if e.1 == d && (chunks.first..chunks.end).contains(&e.0) {
                    e.2 = serial;
                }
            }
        }
        let before = match mark {
            Mark::Flushed { .. } => Some(
                self.sync
                    .as_ref()
                    .expect("sync run")
                    .map
                    .unsettled()
                    .clone(),
            ),
            _ => None,
        };
        let s = self.sync.as_mut().expect("sync run");
        let applied = s.map.apply(&mark);
        if !matches!(mark, Mark::Unsettle { .. }) {
            s.dirty = true;
        }
        match mark {
            Mark::Unsettle { .. } => {
                s.dirty = true;
                match self.live.get_mut(&id) {
                    Some(l) => {
                        l.outstanding += 1;
                        if let Some(ls) = l.sync.as_mut() {
                            ls.marked = Some(false);
                        }
                    }
                    None => self.violated(format!("mark for unknown request #{id}")),
                }
                match applied {
                    Applied::Done => self.schedule_op(Op::Marked(id), None),
                    Applied::Durable(g) => {
                        let s = self.sync.as_mut().expect("sync run");
                        s.waiting.push((id, g));
                        if s.writing.is_none() {
                            self.start_map_write();
                        }
                    }
                }
            }
            Mark::Flushed { .. } => {
                let cleared: Vec<u64> = match before {
                    Some(b) => {
                        let now = self.sync.as_ref().expect("sync run").map.unsettled();
                        (0..b.len()).filter(|&c| b.get(c) && !now.get(c)).collect()
                    }
                    None => Vec::new(),
                };
                for c in cleared {
                    self.check_settled_chunk(c, "once flushed");
                }
                let fs = self
                    .live
                    .get(&id)
                    .and_then(|l| l.sync.as_ref())
                    .map_or(0, |ls| ls.serial);
                self.check_fresh_due(fs);
            }
            _ => {}
        }
    }

    /// Starts writing the map file (simulated time).
    pub(super) fn start_map_write(&mut self) {
        let names = self.map_names();
        let s = self.sync.as_mut().expect("sync run");
        let w = s.take_write(&names);
        s.writing = Some(w);
        self.schedule_op(Op::MapWrite, None);
    }

    /// Writes the map file at once (membership changes: a child added to
    /// be rebuilt must be known stale before it is used).
    pub(super) fn map_write_now(&mut self) {
        let names = self.map_names();
        let s = self.sync.as_mut().expect("sync run");
        if let Some(w) = s.writing.take() {
            s.land(w);
        }
        let w = s.take_write(&names);
        s.land(w);
        self.stats.sync.map_writes += 1;
        self.release_waiting();
    }

    /// The map write in progress reached the file: the writes waiting for
    /// it go on.
    pub(super) fn map_written(&mut self) {
        let Some(s) = self.sync.as_mut() else { return };
        let Some(w) = s.writing.take() else { return };
        s.land(w);
        self.stats.sync.map_writes += 1;
        self.release_waiting();
    }

    fn release_waiting(&mut self) {
        let s = self.sync.as_mut().expect("sync run");
        let written = s.durable.generation();
        let (ready, rest): (Vec<_>, Vec<_>) = s.waiting.drain(..).partition(|&(_, g)| g <= written);
        s.waiting = rest;
        let more = !s.waiting.is_empty();
        for (id, _) in ready {
            self.marked(id);
        }
        if more && self.sync.as_ref().is_some_and(|s| s.writing.is_none()) {
            self.start_map_write();
        }
    }

    /// The `Unsettle` of request `id` is durable: it may issue its child
    /// writes (R-SYNC-2).
    pub(super) fn marked(&mut self, id: u64) {
        let reap = match self.live.get_mut(&id) {
            Some(l) => {
                l.outstanding = l.outstanding.saturating_sub(1);
                if let Some(ls) = l.sync.as_mut() {
                    ls.marked = Some(true);
                }
                l.cancelled.as_ref().is_some_and(|c| c.completed) && l.outstanding == 0
            }
            None => false,
        };
        if let Err(e) = self.q.handle_marked(RequestId(id)) {
            self.violated(format!("handle_marked(#{id}) refused: {e}"));
        }
        if reap {
            self.reap(id);
        }
        self.drain();
    }

    /// Schedules an operation of the simulator's own at the usual latency.
    pub(super) fn schedule_op(&mut self, op: Op, child: Option<ChildId>) {
        let mut latency = 1;
        if self.rates.reorder != 0 {
            latency += self.tape.below(20);
        }
        if child.is_some_and(|c| self.slow.contains(&self.disk_id(c))) {
            latency *= 10;
        }
        self.seq += 1;
        self.queue.push(Reverse(Pending {
            at: self.now + latency,
            seq: self.seq,
            action: ActionKey(op),
        }));
    }

    // ---- invariants ----------------------------------------------------

    /// R-SYNC-2: a child write is issued only once its request's `Unsettle`
    /// is durable — the map file's newest whole copy has its chunks
    /// unsettled.
    pub(super) fn check_write_issue(&mut self, a: &Action) {
        let (id, child, offset, len) = match *a {
            Action::Write {
                id,
                child,
                offset,
                len,
                ..
            }
            | Action::WriteZeroes {
                id,
                child,
                offset,
                len,
                ..
            } => (id, child, offset, len),
            _ => return,
        };
        let Some(s) = self.sync.as_ref() else { return };
        self.stats.sync.r_sync_2 += 1;
        let chunks = s.chunks_of(offset, len);
        let marked = self
            .live
            .get(&id.0)
            .and_then(|l| l.sync.as_ref())
            .and_then(|ls| ls.marked);
        let durable = s.durable.unsettled().all(chunks);
        if marked != Some(true) || !durable {
            self.violated(format!(
                "R-SYNC-2: request {id} issued its write to {child} at {offset}+{len} before its Unsettle was durable (marked {marked:?}, the map file has chunks {}..{} unsettled: {durable})",
                chunks.first, chunks.end
            ));
        }
    }

    /// R-SYNC-1: no read is issued to a child stale on the request's chunks.
    pub(super) fn check_read_issue(&mut self, a: &Action) {
        let Action::Read {
            id, slot, child, ..
        } = *a
        else {
            return;
        };
        let Some(ls) = self.live.get(&id.0).and_then(|l| l.sync.as_ref()) else {
            return;
        };
        self.stats.sync.r_sync_1 += 1;
        if ls.skip.get(slot).copied().unwrap_or(false) {
            self.violated(format!(
                "R-SYNC-1: request {id} reads {child} (slot {slot}), stale on chunks {}..{}",
                ls.chunks.first, ls.chunks.end
            ));
        }
    }

    /// The disks that must hold the same bytes wherever the map says a
    /// chunk is settled: those with no random fault (the child that only
    /// goes away too), each with its core id.
    fn healthy(&self) -> Vec<(ChildId, u32)> {
        self.q
            .children()
            .iter()
            .map(|&c| (c, self.disk_id(c)))
            .filter(|&(_, d)| {
                !self.faulty.contains(&d)
                    || self.sync.as_ref().is_some_and(|s| s.away_child == Some(d))
            })
            .collect()
    }

    /// Whether a write in flight (a cancelled one's child writes too) or a
    /// rewrite touches chunk `c`.
    fn busy_chunk(&self, c: u64) -> bool {
        let Some(s) = self.sync.as_ref() else {
            return false;
        };
        let (o, l) = s.map.range_of(c);
        self.live
            .values()
            .any(|w| (is_write_req(&w.req) || !w.rewrites.is_empty()) && overlaps(&w.req, o, l))
            || !self.rewrites_out.is_empty()
    }

    /// R-SYNC-2: a chunk the map says is settled (not unsettled, not
    /// waiting) holds the same bytes on every healthy child not stale
    /// there, whenever no write touching it is in flight; in crash runs
    /// none of its sectors may hold one of several writes.
    pub(super) fn check_settled_chunk(&mut self, c: u64, when: &str) {
        let Some(s) = self.sync.as_ref() else { return };
        if s.map.unsettled().get(c) || self.busy_chunk(c) || self.cfg.mode != Mode::Safety {
            return;
        }
        self.stats.sync.r_sync_2 += 1;
        let (o, l) = s.map.range_of(c);
        let (o, e) = (o as usize, (o + l) as usize);
        let healthy: Vec<u32> = self
            .healthy()
            .into_iter()
            .filter(|&(ch, _)| !s.map.stale_of(ch.0).is_some_and(|b| b.get(c)))
            .map(|(_, d)| d)
            .collect();
        let mut first: Option<(u32, &[u8])> = None;
        for d in healthy {
            let Some(disk) = self.disks.get(&d) else {
                continue;
            };
            let bytes = &disk.data[o..e];
            match first {
                None => first = Some((d, bytes)),
                Some((d0, b0)) if b0 != bytes => {
                    let at = o + b0.iter().zip(bytes).position(|(x, y)| x != y).unwrap_or(0);
                    let msg = format!(
                        "R-SYNC-2: chunk {c} is settled in the map ({when}) but d{d0} and d{d} differ at byte {at}"
                    );
                    self.violated(msg);
                    return;
                }
                _ => {}
            }
        }
        if let Some(lg) = &s.logical
            && !lg.ambiguous(o as u64, (e - o) as u64).is_empty()
        {
            let msg = format!(
                "R-SYNC-2: chunk {c} is settled in the map ({when}) but a crash left it holding one of several writes"
            );
            self.violated(msg);
        }
    }

    /// R-SYNC-2 on every chunk (after a restart, at the end).
    pub(super) fn check_all_settled(&mut self, when: &str) {
        let n = self.sync.as_ref().map_or(0, |s| s.map.chunks());
        for c in 0..n {
            self.check_settled_chunk(c, when);
        }
    }

    /// R-SYNC-4: once a flush submitted after a resync completed Done has
    /// made it durable, the children the resync copied to are no longer
    /// stale there, and hold the device's data.
    fn check_fresh_due(&mut self, flush_serial: u64) {
        let Some(s) = self.sync.as_mut() else { return };
        let (due, rest): (Vec<_>, Vec<_>) = s
            .fresh_due
            .drain(..)
            .partition(|&(_, _, at)| at <= flush_serial);
        s.fresh_due = rest;
        for (c, d, at) in due {
            let s = self.sync.as_ref().expect("sync run");
            if s.last_stale.get(&(d, c)).is_some_and(|&ls| ls >= at) {
                continue; // stale again since: a later write failed on it
            }
            let Some(&core) = self.q.children().iter().find(|&&ch| self.disk_id(ch) == d) else {
                continue; // removed since
            };
            self.stats.sync.r_sync_4 += 1;
            if s.map.stale_of(core.0).is_some_and(|b| b.get(c)) {
                self.violated(format!(
                    "R-SYNC-4: d{d} ({core}) was resynced on chunk {c} and a flush followed, yet it is still stale there"
                ));
                return;
            }
            if self.cfg.mode == Mode::Safety && !self.is_faulty(d) && !self.busy_chunk(c) {
                let (o, l) = s.map.range_of(c);
                let (o, e) = (o as usize, (o + l) as usize);
                let ok = match &s.logical {
                    Some(lg) => lg.holds(&self.oracle, o as u64, &self.disks[&d].data[o..e]),
                    None => self.disks[&d].data[o..e] == self.oracle[o..e],
                };
                if !ok {
                    self.violated(format!(
                        "R-SYNC-4: d{d} ({core}) was resynced on chunk {c} and flushed, but does not hold the device's data there"
                    ));
                    return;
                }
            }
        }
    }

    /// A resync completed: R-SYNC-1, R-SYNC-4 and R-SYNC-8 bookkeeping and
    /// checks, and its outcome's rules (`Done`; `EAGAIN` when a write
    /// overlapped it; `EIO` and `QUORUM_FAILURE` without quorum; the copy's
    /// error when the copy to a stale child failed).
    pub(super) fn check_resync(&mut self, id: u64, l: &Live, outcome: Outcome) {
        self.stats.requests += 1;
        self.stats.invariants += 1;
        let Some(ls) = l.sync.as_ref() else { return };
        let (offset, len) = l.req.range();
        let c = ls.chunks.first;
        let failures = l
            .events
            .iter()
            .filter(|e| matches!(e, Event::Failure { .. }))
            .count();
        let mut problems: Vec<String> = Vec::new();
        // R-SYNC-1: no report for a child stale there; errors as they came.
        for e in &l.events {
            if let Event::ReportBad { child, error, .. } = *e {
                let slot = l.children.iter().position(|&ch| ch == child);
                match slot {
                    Some(s) if ls.skip[s] => {
                        problems.push(format!("R-SYNC-1: reported {child}, stale there"))
                    }
                    Some(s) => {
                        if let Some(err) = error
                            && l.results[s] != Some(Err(err))
                        {
                            problems.push(format!(
                                "reported {child} with {err}, which it did not return"
                            ));
                        }
                    }
                    None => problems.push(format!("reported {child}, not one of its children")),
                }
            }
        }
        self.stats.sync.r_sync_1 += 1;
        let targets: Vec<u32> = (0..l.children.len())
            .filter(|&s| ls.skip[s])
            .map(|s| self.disk_id(l.children[s]))
            .collect();
        let safety = self.cfg.mode == Mode::Safety;
        match outcome {
            Outcome::Done => {
                if failures != 0 {
                    problems.push("a resync that succeeded emitted QUORUM_FAILURE".into());
                }
                self.stats.sync.resynced += 1;
                let s = self.sync.as_mut().expect("sync run");
                s.hopeless.remove(&c);
                let serial = s.serial;
                for &d in &targets {
                    // A later resync's Fresh mark replaces one still waiting
                    // for its flush: the chunk waits for a flush after this
                    // copy.
                    s.fresh_due.retain(|&(c2, d2, _)| (c2, d2) != (c, d));
                    s.fresh_due.push((c, d, serial));
                    if s.away_child == Some(d) && s.owed.remove(&c) {
                        self.stats.sync.away_resynced += 1;
                    }
                }
                // Crash runs: the winner is on every child not stale there now.
                if self.sync.as_ref().is_some_and(|s| s.logical.is_some()) && safety {
                    let src = ls.source.or_else(|| {
                        (0..l.children.len()).find(|&s| matches!(l.results[s], Some(Ok(()))))
                    });
                    if let Some(src) = src {
                        let data = l.bufs[src].clone();
                        self.pin(l, &data, &mut problems);
                    }
                }
            }
            Outcome::Failed(Errno::EAGAIN) if failures == 0 => {
                self.stats.sync.retried += 1;
                if l.concurrent.is_empty() && !ls.overlapped_settle {
                    problems.push("EAGAIN although no write overlapped it".into());
                }
            }
            Outcome::Failed(e) if failures == 1 => {
                // No quorum (R-READ-3, R-READ-5): EIO, or the error vote of
                // too few successful reads.
                let errs: Vec<Errno> = l
                    .results
                    .iter()
                    .filter_map(|r| r.and_then(Result::err))
                    .collect();
                if e != Errno::EIO && !errs.contains(&e) {
                    problems.push(format!("failed with {e}, which no child returned"));
                }
                self.stats.sync.no_quorum += 1;
                self.sync.as_mut().expect("sync run").hopeless.insert(c);
                // With few enough faulty children a quorum is there, unless
                // a crash left the healthy ones holding different writes or
                // a write overlapped it.
                if safety && ls.ambig.is_empty() && l.concurrent.is_empty() {
                    problems.push(format!(
                        "no quorum with at most {} faulty children",
                        self.faulty.len()
                    ));
                }
            }
            Outcome::Failed(e) => {
                // The copy to a stale child failed: its error, no FAILURE.
                let copy_failed = targets.iter().any(|&d| self.faulty.contains(&d));
                if failures != 0 || !copy_failed && safety {
                    problems.push(format!("failed with {e} ({failures} QUORUM_FAILURE)"));
                }
                if !safety && failures > 1 {
                    problems.push(format!("{failures} QUORUM_FAILURE events"));
                }
                // The vote was won and written to the children not stale
                // there before the copy failed: the range is settled
                // (R-SYNC-3), to the winner.
                if failures == 0
                    && safety
                    && self.sync.as_ref().is_some_and(|s| s.logical.is_some())
                    && let Some(src) = ls.source
                {
                    let data = l.bufs[src].clone();
                    self.pin(l, &data, &mut problems);
                }
            }
            other => problems.push(format!("ended with {other:?}")),
        }
        // R-SYNC-8 bookkeeping: a settling write that failed on the child
        // away makes it stale on the resync's chunk.
        self.away_failures(l, outcome);
        if !problems.is_empty() {
            self.violated(format!(
                "R-SYNC-4: resync #{id} of {offset}+{len} (chunk {c}): {}",
                problems.join("; ")
            ));
        }
    }

    /// A client request of a sync run completed (checked already): what a
    /// crash may leave changes (a write ended, a flush made writes
    /// durable), and what the child away missed (R-SYNC-8).
    pub(super) fn sync_completed(&mut self, id: u64, l: &Live, outcome: Outcome) {
        let Some(ls) = l.sync.as_ref() else { return };
        if let Some(s) = self.sync.as_mut()
            && let Some(lg) = s.logical.as_mut()
        {
            match (l.req, outcome) {
                (Request::Write { .. } | Request::WriteZeroes { .. }, _) => {
                    lg.write_done(id, s.serial)
                }
                (Request::Flush, Outcome::Done) => lg.flushed(ls.serial),
                _ => {}
            }
        }
        self.away_failures(l, outcome);
    }

    /// A cancelled write whose child write failed on the child away: it
    /// misses that write, and no mark says so (R-CANCEL-1: a cancelled
    /// request says nothing bad about a child) — the chunks stay unsettled
    /// instead (R-CANCEL-3). What R-SYNC-4 expects of a resync to it there
    /// before no longer holds.
    pub(super) fn cancelled_missed(&mut self, l: &Live) {
        let Some(ls) = l.sync.as_ref() else { return };
        if ls.away_failed.is_empty() || !is_write_req(&l.req) {
            return;
        }
        let Some(s) = self.sync.as_mut() else { return };
        for &d in &ls.away_failed {
            for c in ls.chunks.first..ls.chunks.end {
                s.last_stale.insert((d, c), s.serial);
            }
        }
    }

    /// R-SYNC-8 bookkeeping at a request's completion: what the core must
    /// have marked stale for the child away.
    pub(super) fn away_failures(&mut self, l: &Live, outcome: Outcome) {
        let Some(ls) = l.sync.as_ref() else { return };
        if ls.away_failed.is_empty() || l.cancelled.is_some() {
            return;
        }
        // A failed settling write leaves its child stale on every chunk the
        // read touches (R-SYNC-3).
        let chunks = match (l.req, outcome) {
            (Request::Write { .. } | Request::WriteZeroes { .. }, Outcome::Done) => ls.chunks,
            (Request::Read { .. }, Outcome::Read { .. }) if ls.settle => ls.chunks,
            (Request::Resync { .. }, _) if ls.settle => ls.chunks,
            _ => return,
        };
        for &d in &ls.away_failed {
            let slot = l.children.iter().position(|&c| self.disk_id(c) == d);
            // A stale target of a resync stays stale; nothing new is owed.
            if matches!(l.req, Request::Resync { .. }) && slot.is_some_and(|s| ls.skip[s]) {
                continue;
            }
            let s = self.sync.as_mut().expect("sync run");
            for c in chunks.first..chunks.end {
                s.expected.insert(c);
                if s.owed.insert(c) {
                    self.stats.sync.away_chunks += 1;
                }
            }
        }
    }

    /// R-SYNC-8 at a resync's submission: a child back from away is copied
    /// to only on chunks it missed a write on; R-SYNC-6 after a restart:
    /// the settle pass touches only chunks left unsettled or stale.
    pub(super) fn check_resync_submit(&mut self, id: u64) {
        let Some(l) = self.live.get(&id) else { return };
        let Some(ls) = l.sync.as_ref() else { return };
        let c = ls.chunks.first;
        let targets: Vec<u32> = (0..l.children.len())
            .filter(|&s| ls.skip[s])
            .map(|s| self.disk_id(l.children[s]))
            .collect();
        let s = self.sync.as_ref().expect("sync run");
        let mut problems = Vec::new();
        if let Some(x) = s.away_child
            && targets.contains(&x)
        {
            self.stats.sync.r_sync_8 += 1;
            if !s.expected.contains(&c) {
                problems.push(format!(
                    "R-SYNC-8: resync of chunk {c} copies to d{x}, back from away, which missed no write there"
                ));
            }
        }
        if let Some((recovering, stale)) = &s.settle_pass {
            self.stats.sync.r_sync_6 += 1;
            if !recovering.contains(&c) && !stale.contains(&c) && !s.map.needs(c) {
                problems.push(format!(
                    "R-SYNC-6: the settle pass resyncs chunk {c}, neither left unsettled by the crash nor stale"
                ));
            }
        }
        if !s.map.needs(c) {
            problems.push(format!("resync of chunk {c}, which needs no work"));
        }
        if !problems.is_empty() {
            self.violated(problems.join("; "));
        }
    }

    /// The resync or its flush completed: the pass goes on.
    pub(super) fn internal_done(&mut self, id: u64) {
        let Some(s) = self.sync.as_mut() else { return };
        if s.resync_id == Some(id) {
            s.resync_id = None;
        }
        if s.flush_id == Some(id) {
            s.flush_id = None;
        }
        s.internal = s.internal.saturating_sub(1);
        // The settle pass is over once no chunk it must settle is left
        // (those without quorum stay marked).
        let over = s.settle_pass.is_some()
            && (0..s.map.chunks()).all(|c| !s.map.recovering().get(c) || s.hopeless.contains(&c));
        if over && let Some((recovering, _)) = s.settle_pass.take() {
            self.stats.sync.settle_passes += 1;
            for c in recovering {
                self.check_settled_chunk(c, "after the settle pass");
            }
        }
    }

    /// The end of a sync run: faults stop, the child away comes back, and
    /// the resync runs to the end (as a job would); then every chunk the
    /// away child missed was resynced to it (R-SYNC-8) and every settled
    /// chunk is identical on the healthy children (R-SYNC-2).
    pub(super) fn sync_end(&mut self) {
        let s = self.sync.as_mut().expect("sync run");
        s.ending = true;
        if self.cfg.mode != Mode::Safety {
            return;
        }
        self.rates = FaultRates::none();
        if let Some(d) = s.away_child
            && s.away
        {
            self.set_away(d, false);
        }
        self.sync.as_mut().expect("sync run").hopeless.clear();
        for _pass in 0..16 {
            let mut from = 0;
            loop {
                let s = self.sync.as_ref().expect("sync run");
                let Some(c) = s.map.next_work(from) else {
                    break;
                };
                from = c + 1;
                if s.hopeless.contains(&c) {
                    continue;
                }
                self.submit_resync(c);
                self.run_out();
                if self.stopped() {
                    return;
                }
            }
            self.submit_internal(Request::Flush);
            self.run_out();
            let s = self.sync.as_ref().expect("sync run");
            if (0..s.map.chunks()).all(|c| !s.map.needs(c) || s.hopeless.contains(&c)) {
                break;
            }
        }
        let s = self.sync.as_ref().expect("sync run");
        let left: Vec<u64> = (0..s.map.chunks())
            .filter(|&c| s.map.needs(c) && !s.hopeless.contains(&c))
            .collect();
        if !left.is_empty() {
            self.violated(format!(
                "the resync did not converge: chunks {left:?} still need work after 16 passes without faults"
            ));
            return;
        }
        if s.away_child.is_some() {
            self.stats.sync.r_sync_8 += 1;
            let owed: Vec<u64> = s
                .owed
                .iter()
                .filter(|c| !s.hopeless.contains(c))
                .copied()
                .collect();
            if !owed.is_empty() {
                self.violated(format!(
                    "R-SYNC-8: the child back from away was never resynced on chunks {owed:?} it missed writes on"
                ));
                return;
            }
        }
        self.check_all_settled("at the end");
    }

    /// Carries out every queued operation.
    pub(super) fn run_out(&mut self) {
        while let Some(Reverse(p)) = self.queue.pop() {
            self.now = p.at;
            self.run_op(p.action.0);
            self.drain();
            if self.stopped() {
                return;
            }
        }
    }
}
