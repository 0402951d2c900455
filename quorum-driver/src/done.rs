//! Child operations' results, and how they reach the core.

use quorum_proto::{Errno, Error, Extent, NoBuffers, Quorum, RequestId};

use crate::bufs::ReadSet;

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
    /// A block status query of `slot` finished.
    BlockStatus(usize, Result<Extent, Errno>),
}

impl Done {
    /// The slot the operation was for.
    pub fn slot(&self) -> usize {
        match *self {
            Done::Read(s, ..)
            | Done::Write(s, _)
            | Done::Flush(s, _)
            | Done::Rewrite(s, _)
            | Done::BlockStatus(s, _) => s,
        }
    }
}

/// Feeds one result of request `id` to the core; a read's buffer goes back
/// into `bufs` first, so that the core can vote on it.
pub fn feed_one<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    id: RequestId,
    done: Done,
    bufs: &mut ReadSet,
) -> Result<(), Error> {
    match done {
        Done::Read(slot, r, buf) => {
            bufs.give_back(slot, buf);
            q.handle_read(id, slot, r, bufs)
        }
        Done::Write(slot, r) => q.handle_write(id, slot, r),
        Done::Flush(slot, r) => q.handle_flush(id, slot, r),
        Done::Rewrite(slot, r) => q.handle_rewrite(id, slot, r),
        Done::BlockStatus(slot, r) => q.handle_block_status(id, slot, r),
    }
}

/// Feeds one round of results of request `id` (drained from `results`,
/// whose allocation the caller keeps) to the core, in slot order: the same
/// events in the same order every time, whatever order the children
/// finished in — and QEMU's order for errors children return at once (its
/// coroutines start in child order). Every read buffer goes back into `bufs`
/// before any result is fed, so the core can vote on all of them.
pub fn feed_round<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    id: RequestId,
    results: &mut Vec<Done>,
    bufs: &mut ReadSet,
) {
    results.sort_by_key(Done::slot);
    for r in results.iter_mut() {
        if let Done::Read(slot, _, buf) = r {
            bufs.give_back(*slot, std::mem::take(buf));
        }
    }
    for r in results.drain(..) {
        let res = match r {
            Done::Read(slot, r, _) => q.handle_read(id, slot, r, &*bufs),
            Done::Write(slot, r) => q.handle_write(id, slot, r),
            Done::Flush(slot, r) => q.handle_flush(id, slot, r),
            Done::Rewrite(slot, r) => q.handle_rewrite(id, slot, r),
            Done::BlockStatus(slot, r) => q.handle_block_status(id, slot, r),
        };
        // A driver only reports what the core asked for; a refusal would be
        // a driver bug (and the request would never finish).
        debug_assert!(res.is_ok(), "core refused a completion: {res:?}");
    }
}

/// Feeds the result of an operation of a cancelled request: the core
/// ignores it (R-CANCEL-2), and never looks at a buffer.
pub fn feed_cancelled<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    id: RequestId,
    done: &Done,
) -> Result<(), Error> {
    match *done {
        Done::Read(slot, r, _) => q.handle_read(id, slot, r, &NoBuffers),
        Done::Write(slot, r) => q.handle_write(id, slot, r),
        Done::Flush(slot, r) => q.handle_flush(id, slot, r),
        Done::Rewrite(slot, r) => q.handle_rewrite(id, slot, r),
        Done::BlockStatus(slot, r) => q.handle_block_status(id, slot, r),
    }
}
