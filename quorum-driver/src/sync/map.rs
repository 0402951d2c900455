//! The sync map's contents (SPEC R-SYNC): per chunk, whether it is
//! unsettled; per child and chunk, whether the child is stale there; and
//! the clean and fresh marks that wait for a flush. The core asks it
//! ([`Marks`]) and changes it ([`Mark`]); it never decides anything.
//!
//! Plain data, no threads, no I/O: the simulator uses it as is, the real
//! drivers behind the engine, which persists it through a [`super::MapSink`].

use std::collections::{BTreeMap, VecDeque};

use quorum_proto::ChildId;
use quorum_proto::sync::{Chunks, Mark, Marks};

/// A bit per chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: u64,
}

impl Bits {
    /// `len` bits, all clear.
    pub fn new(len: u64) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// `len` bits, all set.
    pub fn full(len: u64) -> Bits {
        let mut b = Bits::new(len);
        b.set_range(Chunks { first: 0, end: len }, true);
        b
    }

    /// How many bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i` (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets or clears `i` (ignored past the end).
    pub fn set(&mut self, i: u64, on: bool) {
        if i >= self.len {
            return;
        }
        let w = &mut self.words[(i / 64) as usize];
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    /// Sets or clears `c` (clipped to the length).
    pub fn set_range(&mut self, c: Chunks, on: bool) {
        for i in c.first..c.end.min(self.len) {
            self.set(i, on);
        }
    }

    /// Whether any bit of `c` is set.
    pub fn any(&self, c: Chunks) -> bool {
        (c.first..c.end.min(self.len)).any(|i| self.get(i))
    }

    /// Whether every bit of `c` is set.
    pub fn all(&self, c: Chunks) -> bool {
        (c.first..c.end.min(self.len)).all(|i| self.get(i))
    }

    /// Bits set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The first set bit at or after `from`.
    pub fn next(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let w = self.words[(i / 64) as usize] >> (i % 64);
            if w != 0 {
                let at = i + u64::from(w.trailing_zeros());
                return (at < self.len).then_some(at);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Whether a bit set in `self` is set in none of `others` (of the same
    /// length).
    fn any_outside(&self, mut others: impl FnMut(usize) -> u64) -> bool {
        self.words
            .iter()
            .enumerate()
            .any(|(k, &w)| w & !others(k) != 0)
    }

    /// The words, for encoding.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// From encoded words.
    pub(crate) fn from_words(words: Vec<u64>, len: u64) -> Bits {
        let mut b = Bits { words, len };
        // Bits past the end are never set.
        if !len.is_multiple_of(64)
            && let Some(last) = b.words.last_mut()
        {
            *last &= (1u64 << (len % 64)) - 1;
        }
        b
    }
}

/// What [`SyncMap::apply`] asks of whoever keeps the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing to wait for.
    Done,
    /// A [`Mark::Unsettle`]: durable once the map's generation `.0` is
    /// written ([`SyncMap::generation`]).
    Durable(u64),
}

/// The marks of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncMap {
    chunk: u64,
    size: u64,
    unsettled: Bits,
    /// Chunks that were unsettled when the map was opened (a crash's, or
    /// a reset's): the resync settles these. Chunks unsettled since are
    /// writes in progress, cleared by their flush — or settled by the
    /// reads that meet them (R-SYNC-3).
    recovering: Bits,
    stale: BTreeMap<u32, Bits>,
    /// Clean and fresh (by child) marks waiting for a flush of a later
    /// epoch.
    clean: Waiting,
    fresh: BTreeMap<u32, Waiting>,
    /// Chunks no longer unsettled that the persisted map still calls
    /// unsettled for a while (md's bitmap does the same): a write to a
    /// chunk written lately finds its unsettled bit already durable and
    /// waits for no map write (R-SYNC-2). Newest first; [`SyncMap::tick`]
    /// drops the oldest. Empty when lagging is off ([`SyncMap::set_lag`]).
    /// A chunk enters only from `unsettled`, whose bit was durable then,
    /// and stays set in every write of the map until it leaves: the file
    /// holds a superset of the unsettled chunks, which is always safe (a
    /// crash settles a few chunks more than needed).
    lag: VecDeque<Bits>,
    /// Bumped by every change that must be durable before a write goes on
    /// (unsettled bits set); `durable` is the last one written.
    generation: u64,
    durable: u64,
    /// Changed since last written (anything, urgent or not).
    changed: bool,
    /// Differences settled, as the core counted them (kept for reports).
    pub settled: u64,
}

impl SyncMap {
    /// A map of a device of `size` bytes in chunks of `chunk`, over
    /// `children` (ids), everything settled and in sync.
    pub fn new(size: u64, chunk: u64, children: &[u32]) -> SyncMap {
        let n = size.div_ceil(chunk.max(1));
        SyncMap {
            chunk,
            size,
            unsettled: Bits::new(n),
            recovering: Bits::new(n),
            stale: children.iter().map(|&c| (c, Bits::new(n))).collect(),
            clean: Waiting::default(),
            fresh: BTreeMap::new(),
            lag: VecDeque::new(),
            generation: 0,
            durable: 0,
            changed: false,
            settled: 0,
        }
    }

    /// Keeps a chunk's unsettled bit in the persisted map for `ticks`
    /// [`SyncMap::tick`]s (at least `ticks - 1` whole ones) after it
    /// became clean; 0 (the default) clears it in the next write. For a
    /// map that is persisted and whose writer ticks it now and then.
    pub fn set_lag(&mut self, ticks: usize) {
        if ticks < self.lag.len() {
            self.drop_lag();
        }
        let n = self.chunks();
        self.lag.resize_with(ticks, || Bits::new(n));
    }

    /// Ages the lagging bits: those that entered `ticks` ticks ago leave
    /// the persisted map (written with the next lazy write).
    pub fn tick(&mut self) {
        let Some(mut oldest) = self.lag.pop_back() else {
            return;
        };
        if oldest.count() > 0 {
            let (unsettled, lag) = (&self.unsettled, &self.lag);
            if oldest
                .any_outside(|k| unsettled.words()[k] | lag.iter().fold(0, |a, b| a | b.words()[k]))
            {
                self.changed = true;
            }
            oldest.clear();
        }
        self.lag.push_front(oldest);
    }

    /// Every lagging bit leaves the persisted map at once (a clean stop:
    /// the file then says exactly what is unsettled).
    pub fn drop_lag(&mut self) {
        let unsettled = &self.unsettled;
        for b in &mut self.lag {
            if b.any_outside(|k| unsettled.words()[k]) {
                self.changed = true;
            }
            b.clear();
        }
    }

    /// The chunks the persisted map calls unsettled: the unsettled ones and
    /// those lagging ([`SyncMap::set_lag`]). What [`SyncMap::encode`]
    /// writes, and what a restart after a crash settles.
    pub fn unsettled_persisted(&self) -> Bits {
        let mut b = self.unsettled.clone();
        for l in &self.lag {
            for (w, x) in b.words.iter_mut().zip(l.words()) {
                *w |= x;
            }
        }
        b
    }

    /// Whether chunk `i` is set in the persisted map.
    fn persisted(&self, i: u64) -> bool {
        self.unsettled.get(i) || self.lag.iter().any(|l| l.get(i))
    }

    /// The chunk size.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// The device size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many chunks.
    pub fn chunks(&self) -> u64 {
        self.unsettled.len()
    }

    /// The byte range of chunk `i` (the last one cut at the device's end).
    pub fn range_of(&self, i: u64) -> (u64, u64) {
        let off = i * self.chunk;
        (off, self.chunk.min(self.size.saturating_sub(off)))
    }

    /// Children known to the map, by id.
    pub fn children(&self) -> impl Iterator<Item = u32> + '_ {
        self.stale.keys().copied()
    }

    /// The unsettled chunks.
    pub fn unsettled(&self) -> &Bits {
        &self.unsettled
    }

    /// The chunks where `child` is stale in the persisted map: those
    /// copied since but not flushed yet too ([`SyncMap::is_stale`]).
    pub fn stale_of(&self, child: u32) -> Option<&Bits> {
        self.stale.get(&child)
    }

    /// The chunks left unsettled by a crash (or a reset) and not settled
    /// since.
    pub fn recovering(&self) -> &Bits {
        &self.recovering
    }

    /// Chunks that need a resync: left unsettled by a crash, or stale on
    /// some child — and not already done, waiting for a flush.
    pub fn work(&self) -> u64 {
        (0..self.chunks()).filter(|&i| self.needs(i)).count() as u64
    }

    /// Whether chunk `i` needs a resync: settling (left unsettled by a
    /// crash and not settled since) or copying (stale on some child and
    /// not copied since). A chunk done and waiting for its flush needs
    /// nothing more: the flush clears its marks in the file.
    pub fn needs(&self, i: u64) -> bool {
        self.settling(i) || self.stale.keys().any(|&c| self.is_stale(c, i))
    }

    /// Whether chunk `i` was left unsettled by a crash (or a reset) and
    /// not settled since (its clean mark may still wait for a flush).
    pub fn settling(&self, i: u64) -> bool {
        self.recovering.get(i) && self.clean.covering(i).is_none()
    }

    /// Whether `child` is stale on chunk `i` now: it does not hold the
    /// device's data there. A chunk a resync copied to it is not, though
    /// the persisted map ([`SyncMap::stale_of`]) keeps calling it stale
    /// until a flush made the copy durable: the copy is in the child, it
    /// reads back and votes at once; only a crash before the flush loses
    /// it, and the file still says stale then (R-SYNC-1, R-SYNC-6).
    pub fn is_stale(&self, child: u32, i: u64) -> bool {
        self.stale.get(&child).is_some_and(|b| b.get(i))
            && self
                .fresh
                .get(&child)
                .is_none_or(|w| w.covering(i).is_none())
    }

    /// The next chunk at or after `from` that needs a resync.
    pub fn next_work(&self, from: u64) -> Option<u64> {
        let mut i = from;
        loop {
            // The next chunk with any mark, then whether it needs work.
            let mut best = self.recovering.next(i);
            for b in self.stale.values() {
                if let Some(j) = b.next(i) {
                    best = Some(best.map_or(j, |x| x.min(j)));
                }
            }
            let c = best?;
            if self.needs(c) {
                return Some(c);
            }
            i = c + 1;
        }
    }

    /// A child added to be rebuilt (R-SYNC-7): stale everywhere.
    pub fn add_stale_child(&mut self, child: u32) {
        self.stale.insert(child, Bits::full(self.chunks()));
        self.generation += 1;
        self.changed = true;
    }

    /// A child added as trusted (QEMU's behaviour): in sync everywhere.
    pub fn add_child(&mut self, child: u32) {
        self.stale.insert(child, Bits::new(self.chunks()));
        self.changed = true;
    }

    /// A child removed: its marks go.
    pub fn remove_child(&mut self, child: u32) {
        self.stale.remove(&child);
        self.fresh.remove(&child);
        self.changed = true;
    }

    /// The marks of `other` (a map read from its file), whose children
    /// were `other_ids` in the order this map's are: the same children,
    /// numbered afresh.
    pub fn copy_marks_from(&mut self, other: &SyncMap, other_ids: &[u32]) {
        if other.chunks() != self.chunks() {
            return;
        }
        self.unsettled = other.unsettled.clone();
        self.recovering = other.unsettled.clone();
        let mine: Vec<u32> = self.stale.keys().copied().collect();
        for (new, old) in mine.into_iter().zip(other_ids) {
            if let Some(b) = other.stale.get(old) {
                self.stale.insert(new, b.clone());
            }
        }
        self.changed = true;
    }

    /// Everything unsettled (`--map-reset`, or a map that cannot be
    /// trusted): a full settle pass.
    pub fn unsettle_all(&mut self) {
        self.unsettled = Bits::full(self.chunks());
        self.recovering = Bits::full(self.chunks());
        self.generation += 1;
        self.changed = true;
    }

    /// Applies a mark from the core.
    pub fn apply(&mut self, mark: &Mark) -> Applied {
        match *mark {
            Mark::Unsettle { chunks } => {
                // A write to these chunks may tear them from now on: a clean
                // mark waiting for a flush no longer holds there.
                self.clean.cut(chunks);
                // Already set in the persisted map (unsettled, or clean
                // lately and lagging): nothing new to make durable.
                let end = chunks.end.min(self.chunks());
                if !(chunks.first..end).all(|i| self.persisted(i)) {
                    self.generation += 1;
                    self.changed = true;
                }
                self.unsettled.set_range(chunks, true);
                if self.durable >= self.generation {
                    Applied::Done
                } else {
                    Applied::Durable(self.generation)
                }
            }
            Mark::Stale { child, chunks } => {
                // It missed a write since a resync copied to it: its fresh
                // mark waiting for a flush no longer holds there.
                if let Some(w) = self.fresh.get_mut(&child.0) {
                    w.cut(chunks);
                }
                if let Some(b) = self.stale.get_mut(&child.0)
                    && !b.all(chunks)
                {
                    b.set_range(chunks, true);
                    self.changed = true;
                }
                Applied::Done
            }
            Mark::Clean { chunks, epoch } => {
                self.clean.add(chunks, epoch);
                Applied::Done
            }
            Mark::Fresh {
                child,
                chunks,
                epoch,
            } => {
                if self.stale.contains_key(&child.0) {
                    self.fresh.entry(child.0).or_default().add(chunks, epoch);
                }
                Applied::Done
            }
            Mark::Flushed { epoch } => {
                let mut cleared = false;
                for c in self.clean.take_before(epoch) {
                    // Lagging: the persisted map keeps the bits a while,
                    // so it does not change now.
                    if let Some(newest) = self.lag.front_mut() {
                        for i in c.first..c.end.min(self.unsettled.len()) {
                            if self.unsettled.get(i) {
                                newest.set(i, true);
                            }
                        }
                    } else {
                        cleared = true;
                    }
                    self.unsettled.set_range(c, false);
                    self.recovering.set_range(c, false);
                }
                for (child, w) in &mut self.fresh {
                    for c in w.take_before(epoch) {
                        if let Some(b) = self.stale.get_mut(child) {
                            b.set_range(c, false);
                        }
                        cleared = true;
                    }
                }
                self.fresh.retain(|_, w| !w.is_empty());
                self.changed |= cleared;
                Applied::Done
            }
        }
    }

    /// The generation an urgent change last reached.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether something changed since the last [`SyncMap::written`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Whether an urgent change waits to be written.
    pub fn urgent(&self) -> bool {
        self.durable < self.generation
    }

    /// The contents as of now were written: generation `g` is durable.
    pub fn written(&mut self, g: u64) {
        self.durable = self.durable.max(g);
        if g >= self.generation {
            self.changed = false;
        }
    }
}

/// Marks waiting for a flush: disjoint chunk ranges, each with the flush
/// epoch it waits for past.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Waiting {
    /// First chunk → (end, epoch).
    ranges: BTreeMap<u64, (u64, u64)>,
}

impl Waiting {
    /// Nothing waits any more on `cut` (splitting a range it falls inside).
    fn cut(&mut self, cut: Chunks) {
        if cut.is_empty() {
            return;
        }
        let hit: Vec<(u64, u64, u64)> = self
            .ranges
            .range(..cut.end)
            .rev()
            .take_while(|(_, (end, _))| *end > cut.first)
            .map(|(&first, &(end, epoch))| (first, end, epoch))
            .collect();
        for (first, end, epoch) in hit {
            self.ranges.remove(&first);
            if first < cut.first {
                self.ranges.insert(first, (cut.first, epoch));
            }
            if cut.end < end {
                self.ranges.insert(cut.end, (end, epoch));
            }
        }
    }

    /// `c` waits for a flush of an epoch above `epoch` (epochs only grow:
    /// a later mark replaces an earlier one where they overlap).
    fn add(&mut self, c: Chunks, epoch: u64) {
        if c.is_empty() {
            return;
        }
        self.cut(c);
        self.ranges.insert(c.first, (c.end, epoch));
    }

    /// The end of the range holding chunk `i`, if one does.
    fn covering(&self, i: u64) -> Option<u64> {
        self.ranges
            .range(..=i)
            .next_back()
            .map(|(_, &(end, _))| end)
            .filter(|&end| i < end)
    }

    /// Removes and returns the ranges a flush of `epoch` makes durable.
    fn take_before(&mut self, epoch: u64) -> Vec<Chunks> {
        let mut out = Vec::new();
        self.ranges.retain(|&first, &mut (end, e)| {
            let due = e < epoch;
            if due {
                out.push(Chunks { first, end });
            }
            !due
        });
        out
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl Marks for SyncMap {
    /// Stale on a chunk not copied since ([`SyncMap::is_stale`]).
    fn stale(&self, child: ChildId, chunks: Chunks) -> bool {
        let Some(b) = self.stale.get(&child.0) else {
            return false;
        };
        let fresh = self.fresh.get(&child.0);
        let end = chunks.end.min(b.len());
        let mut i = chunks.first;
        while let Some(j) = b.next(i) {
            if j >= end {
                return false;
            }
            match fresh.and_then(|w| w.covering(j)) {
                None => return true,
                Some(past) => i = past,
            }
        }
        false
    }
    /// Unsettled and not waiting for a flush to be clean: a chunk whose
    /// last writes all completed on every non-stale child holds the same
    /// data on all of them, though its mark stays until a flush — a read
    /// need not settle it, and a write to part of it may clean it
    /// (R-SYNC-2..3). A write started there since cancels the wait.
    fn unsettled(&self, chunks: Chunks) -> bool {
        let end = chunks.end.min(self.unsettled.len());
        let mut i = chunks.first;
        while let Some(j) = self.unsettled.next(i) {
            if j >= end {
                return false;
            }
            match self.clean.covering(j) {
                None => return true,
                Some(past) => i = past,
            }
        }
        false
    }
}

/// Serialised form, one copy of the map file's payload
/// ([`super::file`] adds the header, checksums and the two copies).
impl SyncMap {
    /// The marks as bytes: chunk size, device size, the children's ids,
    /// then the unsettled bits (lagging ones included,
    /// [`SyncMap::unsettled_persisted`]) and each child's stale bits (64-bit
    /// little endian words). Waiting clean and fresh marks are not kept:
    /// after a restart their chunks are simply still marked.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.stale.len() as u32).to_le_bytes());
        for &c in self.stale.keys() {
            out.extend_from_slice(&c.to_le_bytes());
        }
        for (k, w) in self.unsettled.words().iter().enumerate() {
            let w = self.lag.iter().fold(*w, |a, l| a | l.words()[k]);
            out.extend_from_slice(&w.to_le_bytes());
        }
        for b in self.stale.values() {
            for w in b.words() {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    /// Parses [`SyncMap::encode`]'s bytes; `None` when they do not add up.
    pub fn decode(b: &[u8]) -> Option<SyncMap> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let chunk = u64_at(0)?;
        let size = u64_at(8)?;
        if !chunk.is_power_of_two() || size == 0 {
            return None;
        }
        let n = u32::from_le_bytes(b.get(16..20)?.try_into().ok()?) as usize;
        if n > 64 {
            return None;
        }
        let mut at = 20;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
            at += 4;
        }
        let chunks = size.div_ceil(chunk);
        let words = usize::try_from(chunks.div_ceil(64)).ok()?;
        // Checked: a huge size in a few bytes must not overflow.
        let need = (1 + n)
            .checked_mul(words)
            .and_then(|w| w.checked_mul(8))
            .and_then(|w| w.checked_add(at))?;
        if b.len() != need {
            return None;
        }
        let read_bits = |at: &mut usize| {
            let w: Vec<u64> = (0..words)
                .map(|k| {
                    u64::from_le_bytes(b[*at + k * 8..*at + k * 8 + 8].try_into().unwrap_or([0; 8]))
                })
                .collect();
            *at += words * 8;
            Bits::from_words(w, chunks)
        };
        let unsettled = read_bits(&mut at);
        let recovering = unsettled.clone();
        let mut stale = BTreeMap::new();
        for id in ids {
            if stale.insert(id, read_bits(&mut at)).is_some() {
                return None;
            }
        }
        Some(SyncMap {
            chunk,
            size,
            unsettled,
            recovering,
            stale,
            clean: Waiting::default(),
            fresh: BTreeMap::new(),
            lag: VecDeque::new(),
            generation: 0,
            durable: 0,
            changed: false,
            settled: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_next_any_all_count() {
        let mut b = Bits::new(200);
        b.set_range(Chunks { first: 70, end: 73 }, true);
        b.set(199, true);
        assert_eq!(b.next(0), Some(70));
        assert_eq!(b.next(73), Some(199));
        assert_eq!(b.next(200), None);
        assert!(b.any(Chunks { first: 72, end: 80 }));
        assert!(!b.all(Chunks { first: 72, end: 80 }));
        assert_eq!(b.count(), 4);
        assert_eq!(Bits::full(70).count(), 70);
    }

    #[test]
    fn unsettle_waits_for_durability_once() {
        let mut m = SyncMap::new(10 << 20, 1 << 20, &[0, 1, 2]);
        let c = Chunks { first: 2, end: 4 };
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Durable(1));
        // Still not durable: the next writer waits for the same generation.
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Durable(1));
        m.written(1);
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Done);
        // Clean waits for a flush of a later epoch.
        m.apply(&Mark::Clean {
            chunks: c,
            epoch: 3,
        });
        m.apply(&Mark::Flushed { epoch: 3 });
        assert!(m.unsettled().any(c));
        m.apply(&Mark::Flushed { epoch: 4 });
        assert!(!m.unsettled().any(c));
    }

    #[test]
    fn a_later_unsettle_cancels_a_waiting_clean_where_they_overlap() {
        let mut m = SyncMap::new(10 << 20, 1 << 20, &[0, 1]);
        let all = Chunks { first: 0, end: 10 };
        m.apply(&Mark::Unsettle { chunks: all });
        m.apply(&Mark::Clean {
            chunks: all,
            epoch: 0,
        });
        // Waiting to be clean: not unsettled as far as the core asks.
        assert!(!Marks::unsettled(&m, all));
        m.apply(&Mark::Unsettle {
            chunks: Chunks { first: 3, end: 5 },
        });
        assert!(Marks::unsettled(&m, Chunks { first: 4, end: 5 }));
        assert!(!Marks::unsettled(&m, Chunks { first: 5, end: 10 }));
        assert!(!Marks::unsettled(&m, Chunks { first: 0, end: 3 }));
        m.apply(&Mark::Flushed { epoch: 1 });
        let left: Vec<u64> = (0..10).filter(|&i| m.unsettled().get(i)).collect();
        assert_eq!(left, [3, 4], "the chunks written since stay unsettled");
    }

    /// A chunk a crash left unsettled needs work until it is settled; its
    /// settle waits for a flush only to leave the file (a resync job stops
    /// asking for it at once, a crash before the flush settles it again).
    #[test]
    fn a_recovering_chunk_is_done_once_settled_and_leaves_the_file_once_flushed() {
        let mut m = SyncMap::new(4 << 20, 1 << 20, &[0, 1]);
        m.unsettle_all();
        assert_eq!(m.work(), 4);
        m.apply(&Mark::Clean {
            chunks: Chunks { first: 1, end: 2 },
            epoch: 0,
        });
        assert_eq!(m.work(), 3, "settled, its flush still to come");
        assert_eq!(m.next_work(1), Some(2));
        assert!(
            m.unsettled_persisted().get(1),
            "the file still says unsettled"
        );
        // A write there since: it may tear the chunk again.
        m.apply(&Mark::Unsettle {
            chunks: Chunks { first: 1, end: 2 },
        });
        assert_eq!(m.work(), 4);
        m.apply(&Mark::Clean {
            chunks: Chunks { first: 1, end: 2 },
            epoch: 0,
        });
        m.apply(&Mark::Flushed { epoch: 1 });
        assert_eq!(m.work(), 3);
        assert!(!m.unsettled_persisted().get(1));
        assert_eq!(m.next_work(1), Some(2));
    }

    /// R-SYNC-1, R-SYNC-6, R-SYNC-7: a chunk a resync copied votes at
    /// once, and the map file calls it stale until a flush made the copy
    /// durable; a write it missed meanwhile makes it stale again.
    #[test]
    fn r_sync_7_a_copied_chunk_votes_at_once_and_leaves_the_file_once_flushed() {
        let mut m = SyncMap::new(4 << 20, 1 << 20, &[0, 1]);
        m.add_stale_child(2);
        assert_eq!(m.work(), 4);
        m.apply(&Mark::Fresh {
            child: ChildId(2),
            chunks: Chunks { first: 0, end: 2 },
            epoch: 0,
        });
        assert!(!m.is_stale(2, 0) && !m.is_stale(2, 1) && m.is_stale(2, 2));
        assert!(!Marks::stale(&m, ChildId(2), Chunks { first: 0, end: 2 }));
        assert!(Marks::stale(&m, ChildId(2), Chunks { first: 1, end: 3 }));
        assert_eq!(m.work(), 2);
        assert_eq!(m.next_work(0), Some(2));
        let file = m.stale_of(2).unwrap();
        assert!(
            file.get(0) && file.get(1),
            "the file keeps them until a flush"
        );
        assert!(
            SyncMap::decode(&m.encode())
                .unwrap()
                .stale_of(2)
                .unwrap()
                .get(0)
        );
        m.apply(&Mark::Stale {
            child: ChildId(2),
            chunks: Chunks { first: 1, end: 2 },
        });
        assert!(m.is_stale(2, 1), "it missed a write since");
        assert_eq!(m.work(), 3);
        m.apply(&Mark::Flushed { epoch: 1 });
        let file = m.stale_of(2).unwrap();
        assert!(!file.get(0) && file.get(1));
        assert_eq!(m.work(), 3);
    }

    #[test]
    fn a_later_stale_mark_cancels_a_waiting_fresh_one() {
        let mut m = SyncMap::new(10 << 20, 1 << 20, &[0, 1]);
        m.add_stale_child(2);
        m.apply(&Mark::Fresh {
            child: ChildId(2),
            chunks: Chunks { first: 0, end: 10 },
            epoch: 0,
        });
        m.apply(&Mark::Stale {
            child: ChildId(2),
            chunks: Chunks { first: 7, end: 8 },
        });
        // Another child's stale mark changes nothing for children.2.
        m.apply(&Mark::Stale {
            child: ChildId(1),
            chunks: Chunks { first: 2, end: 3 },
        });
        m.apply(&Mark::Flushed { epoch: 1 });
        let stale: Vec<u64> = (0..10).filter(|&i| m.stale_of(2).unwrap().get(i)).collect();
        assert_eq!(stale, [7]);
        assert!(m.stale_of(1).unwrap().get(2));
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut m = SyncMap::new((5 << 20) + 7, 1 << 20, &[0, 3, 9]);
        m.apply(&Mark::Unsettle {
            chunks: Chunks { first: 1, end: 2 },
        });
        m.apply(&Mark::Stale {
            child: ChildId(3),
            chunks: Chunks { first: 4, end: 6 },
        });
        let d = SyncMap::decode(&m.encode()).expect("decodes");
        assert_eq!(d.unsettled(), m.unsettled());
        assert_eq!(d.stale_of(3), m.stale_of(3));
        assert_eq!(d.chunks(), 6);
        assert!(SyncMap::decode(&m.encode()[..20]).is_none());
    }

    /// R-SYNC-2 with lagging bits: a chunk clean lately stays set in the
    /// persisted map, so a write to it needs no map write; the core's
    /// question (is it unsettled?) is answered clean at once; the bit
    /// leaves the file after the ticks, and a write then waits again.
    #[test]
    fn r_sync_2_a_write_to_a_chunk_clean_lately_waits_for_no_map_write() {
        let mut m = SyncMap::new(8 << 20, 1 << 20, &[0, 1, 2]);
        m.set_lag(3);
        let c = Chunks { first: 2, end: 3 };
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Durable(1));
        m.written(1);
        m.apply(&Mark::Clean {
            chunks: c,
            epoch: 0,
        });
        m.apply(&Mark::Flushed { epoch: 1 });
        // Clean for the core and for the resync at once...
        assert!(!Marks::unsettled(&m, c));
        assert!(!m.unsettled().get(2));
        assert!(!m.recovering().get(2));
        // ... still set in the file, which does not change.
        assert!(m.unsettled_persisted().get(2));
        assert!(!m.changed(), "the file already says so");
        let d = SyncMap::decode(&m.encode()).expect("decodes");
        assert!(d.unsettled().get(2), "a crash now settles it");
        // A write there: durable already, no new generation.
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Done);
        assert_eq!(m.generation(), 1);
        assert!(!m.urgent());
        m.apply(&Mark::Clean {
            chunks: c,
            epoch: 1,
        });
        m.apply(&Mark::Flushed { epoch: 2 });
        // Two ticks: still there (it entered after none of them).
        m.tick();
        m.tick();
        assert!(m.unsettled_persisted().get(2));
        assert!(!m.changed());
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Done);
        m.apply(&Mark::Clean {
            chunks: c,
            epoch: 2,
        });
        m.apply(&Mark::Flushed { epoch: 3 });
        for _ in 0..3 {
            m.tick();
        }
        assert!(!m.unsettled_persisted().get(2), "gone after three ticks");
        assert!(m.changed(), "the file must drop it (lazily)");
        m.written(1);
        // Not in the file any more: the next write waits for a map write.
        assert_eq!(m.apply(&Mark::Unsettle { chunks: c }), Applied::Durable(2));
        // An Unsettle of a chunk partly lagging waits too.
        m.written(2);
        let two = Chunks { first: 2, end: 4 };
        assert_eq!(
            m.apply(&Mark::Unsettle { chunks: two }),
            Applied::Durable(3)
        );
    }

    /// Lagging bits leave at once on a clean stop; lagging off (the
    /// default) writes the cleared bits at the next write, as before.
    #[test]
    fn r_sync_2_drop_lag_and_no_lag() {
        let c = Chunks { first: 0, end: 4 };
        for lag in [0, 3] {
            let mut m = SyncMap::new(8 << 20, 1 << 20, &[0, 1]);
            m.set_lag(lag);
            m.apply(&Mark::Unsettle { chunks: c });
            m.written(1);
            m.apply(&Mark::Clean {
                chunks: c,
                epoch: 0,
            });
            m.apply(&Mark::Flushed { epoch: 1 });
            assert_eq!(m.unsettled().count(), 0);
            assert_eq!(m.changed(), lag == 0, "lag {lag}");
            assert_eq!(
                m.unsettled_persisted().count(),
                if lag == 0 { 0 } else { 4 }
            );
            m.drop_lag();
            assert!(m.changed());
            assert_eq!(m.unsettled_persisted().count(), 0);
            assert_eq!(SyncMap::decode(&m.encode()).unwrap().unsettled().count(), 0);
        }
    }

    /// R-SYNC-2, crash safety with lagging bits: random writes (each
    /// unsettles its chunk, issues once that is durable, completes, is
    /// cleaned by a later flush), map writes, ticks and flushes; at every
    /// step the last map written (as a crash would leave it, decoded) calls
    /// unsettled every chunk a write was issued to and not yet flushed
    /// clean — the chunks that may differ — and writes to chunks written
    /// lately issued without a map write.
    #[test]
    fn r_sync_2_the_file_covers_every_chunk_that_may_differ() {
        #[derive(Clone, Copy, PartialEq)]
        enum W {
            Idle,
            Waiting(u64),
            Issued,
            Completed(u64),
        }
        let n = 16u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |k: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % k
        };
        let mut m = SyncMap::new(n << 20, 1 << 20, &[0, 1, 2]);
        m.set_lag(3);
        let mut file = SyncMap::decode(&m.encode()).unwrap();
        let mut st = vec![W::Idle; n as usize];
        let (mut epoch, mut free_issues) = (0u64, 0u32);
        for step in 0..20_000 {
            match rnd(10) {
                0..=3 => {
                    let i = rnd(n);
                    if st[i as usize] != W::Idle {
                        continue;
                    }
                    let chunks = Chunks {
                        first: i,
                        end: i + 1,
                    };
                    st[i as usize] = match m.apply(&Mark::Unsettle { chunks }) {
                        Applied::Done => {
                            free_issues += 1;
                            W::Issued
                        }
                        Applied::Durable(g) => W::Waiting(g),
                    };
                }
                4 => {
                    // A map write, whole (a crash keeps it).
                    let g = m.generation();
                    file = SyncMap::decode(&m.encode()).unwrap();
                    m.written(g);
                    for w in &mut st {
                        if matches!(*w, W::Waiting(x) if x <= g) {
                            *w = W::Issued;
                        }
                    }
                }
                5..=6 => {
                    let i = rnd(n) as usize;
                    if st[i] == W::Issued {
                        st[i] = W::Completed(epoch);
                        m.apply(&Mark::Clean {
                            chunks: Chunks {
                                first: i as u64,
                                end: i as u64 + 1,
                            },
                            epoch,
                        });
                    }
                }
                7..=8 => {
                    epoch += 1;
                    m.apply(&Mark::Flushed { epoch });
                    for w in &mut st {
                        if matches!(*w, W::Completed(e) if e < epoch) {
                            *w = W::Idle;
                        }
                    }
                }
                _ => m.tick(),
            }
            for (i, w) in st.iter().enumerate() {
                let differ = matches!(w, W::Issued | W::Completed(_));
                assert!(
                    !differ || file.unsettled().get(i as u64),
                    "step {step}: chunk {i} may differ but the file calls it settled"
                );
                assert_eq!(
                    Marks::unsettled(
                        &m,
                        Chunks {
                            first: i as u64,
                            end: i as u64 + 1
                        }
                    ),
                    matches!(w, W::Waiting(_) | W::Issued),
                    "step {step}: chunk {i}: the core sees it as it is"
                );
            }
        }
        assert!(
            free_issues > 100,
            "lagging bits spared map writes: {free_issues}"
        );
    }
}
