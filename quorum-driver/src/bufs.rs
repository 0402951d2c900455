//! Read buffers: one per slot, kept from a read's first child operation to
//! its completion — the core's "keep every read buffer until `Complete`"
//! obligation as a type — and recycled between requests so that a read
//! costs no fresh allocation, no page faults and no zeroing per slot.

use quorum_proto::ReadBuffers;

/// The read buffers of one request, by slot. The core borrows them while it
/// votes ([`ReadBuffers`]); child reads borrow one each ([`ReadSet::lend`]),
/// owned, so that another thread or a future can fill it, and give it back
/// with their result.
#[derive(Debug, Default)]
pub struct ReadSet {
    bufs: Vec<Vec<u8>>,
}

impl ReadSet {
    /// An empty set (no allocation).
    pub const fn new() -> ReadSet {
        ReadSet { bufs: Vec::new() }
    }

    /// Gets ready for a read of `len` bytes over `n` slots, taking buffers
    /// from `spare` where this set has none.
    pub fn prepare(&mut self, n: usize, len: usize, spare: &mut Spare) {
        if self.bufs.len() < n {
            self.bufs.resize_with(n, Vec::new);
        }
        for b in &mut self.bufs[..n] {
            if b.capacity() < len {
                *b = spare.take(len);
            }
        }
    }

    /// The buffer of `slot`, sized `len`, for a child read to fill (its
    /// contents are unspecified: a successful read overwrites them all).
    pub fn lend(&mut self, slot: usize, len: usize) -> Vec<u8> {
        let mut b = self
            .bufs
            .get_mut(slot)
            .map(std::mem::take)
            .unwrap_or_default();
        // Reused buffers keep their bytes: no zeroing unless it grows.
        b.resize(len, 0);
        b
    }

    /// Takes back the buffer a child read filled (or did not).
    pub fn give_back(&mut self, slot: usize, buf: Vec<u8>) {
        if self.bufs.len() <= slot {
            self.bufs.resize_with(slot + 1, Vec::new);
        }
        self.bufs[slot] = buf;
    }

    /// The bytes of `slot` (empty when it has none).
    pub fn get(&self, slot: usize) -> &[u8] {
        self.bufs.get(slot).map_or(&[], Vec::as_slice)
    }

    /// Takes `slot`'s buffer out (the winner of a read, handed to its
    /// caller without a copy); the others stay.
    pub fn take(&mut self, slot: usize) -> Vec<u8> {
        self.bufs
            .get_mut(slot)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Gives every buffer to `spare`.
    pub fn recycle(&mut self, spare: &mut Spare) {
        for b in self.bufs.drain(..) {
            spare.give(b);
        }
    }
}

impl ReadBuffers for ReadSet {
    fn buffer(&self, slot: usize) -> Option<&[u8]> {
        self.bufs.get(slot).map(Vec::as_slice)
    }
}

/// Buffers handed back by finished reads, for later reads. Bounded in count
/// and bytes (the oldest go first); buffers over [`Spare::MAX_BUF`] are
/// freed at once. A read only takes a buffer that fits it closely, so the
/// buffer a caller gets back is never much larger than what it asked for.
#[derive(Debug, Default)]
pub struct Spare {
    bufs: std::collections::VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Spare {
    const MAX_BUFS: usize = 128;
    const MAX_BYTES: usize = 8 << 20;
    /// Larger buffers are not kept.
    pub const MAX_BUF: usize = 1 << 20;
    /// How many of the most recent buffers a read looks at.
    const SCAN: usize = 8;

    /// A buffer that can hold `len` bytes without wasting more than as much
    /// again (a recent spare one, or a new empty one). Its length is
    /// unspecified.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.capacity() >= len && b.capacity() / 2 <= len.max(4096);
        let n = self.bufs.len();
        let found = (n.saturating_sub(Self::SCAN)..n)
            .rev()
            .find(|&i| fits(&self.bufs[i]));
        match found.and_then(|i| self.bufs.remove(i)) {
            Some(b) => {
                self.bytes -= b.capacity();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Keeps `b` for a later read (or frees it).
    pub fn give(&mut self, b: Vec<u8>) {
        let cap = b.capacity();
        if cap == 0 || cap > Self::MAX_BUF {
            return;
        }
        self.bytes += cap;
        self.bufs.push_back(b);
        while self.bufs.len() > Self::MAX_BUFS || self.bytes > Self::MAX_BYTES {
            match self.bufs.pop_front() {
                Some(old) => self.bytes -= old.capacity(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_lent_given_back_and_reused() {
        let mut spare = Spare::default();
        let mut set = ReadSet::new();
        set.prepare(3, 4096, &mut spare);
        let mut b = set.lend(1, 4096);
        assert_eq!(b.len(), 4096);
        b[0] = 7;
        let ptr = b.as_ptr();
        set.give_back(1, b);
        assert_eq!(set.get(1)[0], 7);
        assert_eq!(set.buffer(1).map(<[u8]>::len), Some(4096));
        set.recycle(&mut spare);
        assert_eq!(set.buffer(0), None);
        // The next read of a similar size gets one of them back.
        let mut set = ReadSet::new();
        set.prepare(1, 4000, &mut spare);
        let again = set.lend(0, 4000);
        assert!(again.capacity() >= 4096);
        let _ = ptr;
    }

    #[test]
    fn spare_is_bounded_and_takes_only_close_fits() {
        let mut spare = Spare::default();
        spare.give(Vec::with_capacity(Spare::MAX_BUF + 1));
        assert_eq!(spare.bufs.len(), 0, "too large to keep");
        spare.give(Vec::with_capacity(1 << 20));
        assert!(
            spare.take(4096).capacity() < 1 << 20,
            "no 1 MiB buffer for 4 KiB"
        );
        for _ in 0..200 {
            spare.give(Vec::with_capacity(4096));
        }
        assert!(spare.bufs.len() <= Spare::MAX_BUFS);
        assert!(spare.bytes <= Spare::MAX_BYTES);
    }
}
