//! Reporting a round of child operations back to the core — the one piece of
//! driving logic every driver shares, kept in one place so that they cannot
//! drift apart.

use quorum_proto::{Errno, Quorum, RequestId};

/// A child operation's result, as a driver reports it (reads hand their
/// buffer back).
#[derive(Debug)]
pub enum Done {
    /// A read of `slot` finished; the buffer it read into.
    Read(usize, Result<(), Errno>, Vec<u8>),
    /// A write or write-zeroes of `slot` finished.
    Write(usize, Result<(), Errno>),
    /// A flush of `slot` finished.
    Flush(usize, Result<(), Errno>),
    /// A rewrite of `slot` finished.
    Rewrite(usize, Result<(), Errno>),
}

impl Done {
    /// The slot the operation was for.
    pub fn slot(&self) -> usize {
        match *self {
            Done::Read(s, ..) | Done::Write(s, _) | Done::Flush(s, _) | Done::Rewrite(s, _) => s,
        }
    }
}

/// Feeds one round of results of request `id` to the core, in slot order:
/// the same events in the same order every time, whatever order the children
/// finished in — and QEMU's order for errors children return at once (its
/// coroutines start in child order). Read buffers go back into `bufs` first,
/// so the core can vote on them.
pub fn feed<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    id: RequestId,
    mut results: Vec<Done>,
    bufs: &mut [Vec<u8>],
) {
    feed_all(q, id, &mut results, bufs);
}

/// [`feed`], draining `results` (whose allocation the caller keeps).
pub fn feed_all<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    id: RequestId,
    results: &mut Vec<Done>,
    bufs: &mut [Vec<u8>],
) {
    results.sort_by_key(Done::slot);
    for r in results.iter_mut() {
        if let Done::Read(slot, _, buf) = r
            && let Some(b) = bufs.get_mut(*slot)
        {
            *b = std::mem::take(buf);
        }
    }
    for r in results.drain(..) {
        let res = match r {
            Done::Read(slot, r, _) => q.handle_read(id, slot, r, &*bufs),
            Done::Write(slot, r) => q.handle_write(id, slot, r),
            Done::Flush(slot, r) => q.handle_flush(id, slot, r),
            Done::Rewrite(slot, r) => q.handle_rewrite(id, slot, r),
        };
        // A driver only reports what the core asked for; a refusal would be
        // a driver bug (and the request would never finish).
        debug_assert!(res.is_ok(), "core refused a completion: {res:?}");
    }
}
