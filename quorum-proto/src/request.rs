//! What goes in and out of the core: requests, actions, outcomes, misuse errors.

use core::fmt;

use crate::errno::Errno;
use crate::event::Event;
use crate::membership::ChildId;
use crate::sync::Mark;

/// A caller-chosen request identifier, unique among requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl From<u64> for RequestId {
    fn from(v: u64) -> Self {
        RequestId(v)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A request on the quorum device. Offsets and lengths are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// Read `len` bytes at `offset` (R-READ, R-FIFO).
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Write the caller's `len` bytes at `offset` to every child (R-WRITE).
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Write zeroes to every child (R-WRITE-3).
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Flush every child (R-FLUSH).
    Flush,
    /// Whether the range starting at `offset` holds data or reads as zeroes,
    /// and for how long: every child is asked, and the answer is QEMU's
    /// quorum block status ([`crate::Quorum::handle_block_status`]).
    BlockStatus {
        /// Byte offset.
        offset: u64,
        /// Byte count (the most the answer covers).
        len: u64,
    },
    /// Sync tracking only (R-SYNC-4): bring `offset..offset + len` (whole
    /// chunks, as a resync walks them) back in sync — read the children
    /// that are not stale there, vote, write the winner to the stale ones
    /// and, where the range is unsettled, to every non-stale one that
    /// differs. Completes with [`Outcome::Done`]; with `EAGAIN`, nothing
    /// written, when a client write overlapped it (retry later); with `EIO`
    /// and `QUORUM_FAILURE` when the non-stale children have no quorum
    /// (the range stays marked).
    Resync {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
}

impl Request {
    /// `(offset, len)`; `(0, 0)` for a flush.
    pub const fn range(&self) -> (u64, u64) {
        match *self {
            Request::Read { offset, len }
            | Request::Write { offset, len }
            | Request::WriteZeroes { offset, len }
            | Request::BlockStatus { offset, len }
            | Request::Resync { offset, len } => (offset, len),
            Request::Flush => (0, 0),
        }
    }
}

/// How a request ended; exactly one per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A read succeeded: the result is the buffer of `slot` (the core never
    /// copies payload). `child` is the child that slot read from.
    Read {
        /// The slot whose buffer holds the result.
        slot: usize,
        /// The child behind that slot.
        child: ChildId,
    },
    /// A write, write-zeroes or flush reached the threshold.
    Done,
    /// The request failed with this error (voted, R-VOTE-3, or `EIO` when the
    /// content vote had no quorum, R-READ-5).
    Failed(Errno),
    /// A block status: the first extent of the range.
    BlockStatus(Extent),
    /// R-READ-8, blkverify mode: the two children differ; `offset` is the
    /// device offset of the first differing byte. QEMU exits here; a library
    /// reports it and lets the caller decide.
    ContentsMismatch {
        /// Device offset of the first differing byte.
        offset: u64,
    },
}

/// The first extent of a range, as a block status reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Its length in bytes (at least 1, at most the range asked about).
    pub len: u64,
    /// It reads as zeroes (a hole, or zeroes known to be there); otherwise
    /// it holds data.
    pub zero: bool,
}

/// Something the driver must do, or learn. Popped with
/// [`crate::Quorum::poll_action`]; owned, so popping commits it.
///
/// `slot` is the child's position in the request's child set (fixed when the
/// request was submitted, R-MEMBER-4): completions and buffers are indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read `len` bytes at `offset` from `child` into the buffer of `slot`,
    /// then call [`crate::Quorum::handle_read`].
    Read {
        /// The request.
        id: RequestId,
        /// The slot (buffer index) of this child in the request.
        slot: usize,
        /// The child to read.
        child: ChildId,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Write the request's data to `child`, then call [`crate::Quorum::handle_write`].
    Write {
        /// The request.
        id: RequestId,
        /// The slot of this child in the request.
        slot: usize,
        /// The child to write.
        child: ChildId,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Write zeroes to `child`, then call [`crate::Quorum::handle_write`].
    WriteZeroes {
        /// The request.
        id: RequestId,
        /// The slot of this child in the request.
        slot: usize,
        /// The child to write.
        child: ChildId,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Flush `child`, then call [`crate::Quorum::handle_flush`].
    Flush {
        /// The request.
        id: RequestId,
        /// The slot of this child in the request.
        slot: usize,
        /// The child to flush.
        child: ChildId,
    },
    /// Ask `child` whether `offset..offset + len` starts with data or with
    /// zeroes, and for how long; then call
    /// [`crate::Quorum::handle_block_status`].
    BlockStatus {
        /// The request.
        id: RequestId,
        /// The slot of this child in the request.
        slot: usize,
        /// The child to ask.
        child: ChildId,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Write the buffer of slot `source` to `child` (a repair, R-READ-7), then
    /// call [`crate::Quorum::handle_rewrite`]. Keep the read buffers until the
    /// request completes.
    Rewrite {
        /// The request.
        id: RequestId,
        /// The slot of the child being repaired.
        slot: usize,
        /// The child being repaired.
        child: ChildId,
        /// The slot whose buffer holds the winning content.
        source: usize,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// An event for the monitor (R-EVENT).
    Event {
        /// The request that caused it.
        id: RequestId,
        /// The event.
        event: Event,
    },
    /// Early quorum only ([`crate::Config::early_quorum`]): a read's answer,
    /// given as soon as `threshold` children agree. The request stays in
    /// flight: its stragglers are still read, compared, reported and
    /// rewritten, so keep every read buffer until its [`Action::Complete`],
    /// which repeats this outcome. A driver may ignore this action and answer
    /// at the completion instead; nothing else changes.
    Answer {
        /// The request.
        id: RequestId,
        /// The read's result ([`Outcome::Read`]).
        outcome: Outcome,
    },
    /// Sync tracking only (R-SYNC): change the driver's map
    /// ([`crate::sync`]). Apply marks in the order they come; after a
    /// [`Mark::Unsettle`], call [`crate::Quorum::handle_marked`] once the mark
    /// is durable (at once if the map is not persisted).
    Mark {
        /// The request that caused it.
        id: RequestId,
        /// The change.
        mark: Mark,
    },
    /// The request is finished; its id is free again — except after
    /// [`crate::Quorum::cancel`], which completes a request at once with
    /// `ECANCELED` but keeps its id taken until the child operations it had
    /// issued are completed (R-CANCEL-2).
    Complete {
        /// The request.
        id: RequestId,
        /// How it ended.
        outcome: Outcome,
    },
}

impl Action {
    /// The request this action belongs to.
    pub const fn id(&self) -> RequestId {
        match *self {
            Action::Read { id, .. }
            | Action::Write { id, .. }
            | Action::WriteZeroes { id, .. }
            | Action::Flush { id, .. }
            | Action::BlockStatus { id, .. }
            | Action::Rewrite { id, .. }
            | Action::Event { id, .. }
            | Action::Answer { id, .. }
            | Action::Mark { id, .. }
            | Action::Complete { id, .. } => id,
        }
    }
}

/// Which child operation a completion reports, for [`Error::UnexpectedCompletion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildOp {
    /// A read.
    Read,
    /// A write or write-zeroes.
    Write,
    /// A flush.
    Flush,
    /// A rewrite (repair).
    Rewrite,
    /// A block status query.
    BlockStatus,
    /// A durable [`Mark::Unsettle`] ([`crate::Quorum::handle_marked`]).
    Marked,
}

/// Misuse of the core: the input was refused and the state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// A request with this id is already in flight.
    DuplicateId(RequestId),
    /// No request with this id is in flight.
    UnknownRequest(RequestId),
    /// `offset + len` overflows or exceeds the largest device offset (2^63 − 1).
    InvalidRange {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// No room for another request now (the fixed capacity is in use, or
    /// actions are waiting to be polled). Poll and complete, then retry.
    Busy,
    /// The request has no child at this slot.
    NoSuchSlot {
        /// The request.
        id: RequestId,
        /// The slot given.
        slot: usize,
    },
    /// This completion was never asked for, or was already given.
    UnexpectedCompletion {
        /// The request.
        id: RequestId,
        /// The slot given.
        slot: usize,
        /// The operation the completion claimed to finish.
        op: ChildOp,
    },
    /// A drain is under way ([`crate::Quorum::start_drain`]): no new request
    /// is accepted until it ends. Wait, then retry.
    Draining,
    /// [`crate::Quorum::end_drain`] without a drain under way.
    NotDraining,
    /// A successful read's buffer is missing or not the request's length.
    BadBuffer {
        /// The request.
        id: RequestId,
        /// The slot whose buffer is wrong.
        slot: usize,
        /// The request's length.
        expected: u64,
        /// The buffer's length, `None` if missing.
        got: Option<usize>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::DuplicateId(id) => write!(f, "request {id} is already in flight"),
            Error::UnknownRequest(id) => write!(f, "no request {id} is in flight"),
            Error::InvalidRange { offset, len } => {
                write!(
                    f,
                    "invalid range: offset {offset} + length {len} is past 2^63 - 1"
                )
            }
            Error::Busy => f.write_str(
                "no capacity for another request: poll actions and complete requests first",
            ),
            Error::Draining => f.write_str(
                "the device is draining (a membership change is waiting): retry once it is over",
            ),
            Error::NotDraining => f.write_str("end_drain without a drain under way"),
            Error::NoSuchSlot { id, slot } => write!(f, "request {id} has no child slot {slot}"),
            Error::UnexpectedCompletion { id, slot, op } => write!(
                f,
                "request {id} slot {slot}: no {op:?} is outstanding (never asked for, or already completed)"
            ),
            Error::BadBuffer {
                id,
                slot,
                expected,
                got: Some(got),
            } => write!(
                f,
                "request {id} slot {slot}: read buffer holds {got} bytes, expected {expected}"
            ),
            Error::BadBuffer { id, slot, .. } => {
                write!(f, "request {id} slot {slot}: no read buffer given")
            }
        }
    }
}

impl core::error::Error for Error {}

/// Read buffers of one request, indexed by slot, lent to the core while it
/// votes (R-READ-4..6, R-READ-8). The core compares them and never copies.
pub trait ReadBuffers {
    /// The buffer of `slot`, if the driver has one.
    fn buffer(&self, slot: usize) -> Option<&[u8]>;
}

impl<T: AsRef<[u8]>> ReadBuffers for [T] {
    fn buffer(&self, slot: usize) -> Option<&[u8]> {
        self.get(slot).map(AsRef::as_ref)
    }
}

impl<T: AsRef<[u8]>, const N: usize> ReadBuffers for [T; N] {
    fn buffer(&self, slot: usize) -> Option<&[u8]> {
        self.get(slot).map(AsRef::as_ref)
    }
}

/// For completions that carry no data (failed reads, fifo reads).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBuffers;

impl ReadBuffers for NoBuffers {
    fn buffer(&self, _slot: usize) -> Option<&[u8]> {
        None
    }
}
