//! Child operations, taken out of the core's actions with everything they
//! need — the child, a read buffer, shared write data — so that any thread
//! or future can carry one out and report its [`Done`].

use std::collections::BTreeMap;
use std::sync::Arc;

use quorum_proto::{Action, Errno};

use crate::bufs::ReadSet;
use crate::child::{Child, errno};
use crate::done::Done;
use crate::pool::Work;
use crate::zeroes::zeroes_or_write;

/// One child operation of a request, ready to run. `K` is the driver's
/// handle on a child (`Arc<dyn Child>`, `Arc<dyn AsyncChild>`, …).
#[derive(Debug)]
pub enum Op<K> {
    /// Nothing to run: this result (the child is not attached).
    Failed(Done),
    /// Read `buf.len()` bytes at `offset` into `buf`.
    Read {
        /// The request's slot.
        slot: usize,
        /// The child.
        child: K,
        /// The buffer, lent by the request's [`ReadSet`].
        buf: Vec<u8>,
        /// Byte offset.
        offset: u64,
    },
    /// Write `data` at `offset`.
    Write {
        /// The request's slot.
        slot: usize,
        /// The child.
        child: K,
        /// The request's data, shared by every child's write.
        data: Arc<[u8]>,
        /// Byte offset.
        offset: u64,
    },
    /// Write `len` zero bytes at `offset` (with the fallback of
    /// [`crate::zeroes`]).
    Zeroes {
        /// The request's slot.
        slot: usize,
        /// The child.
        child: K,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Flush.
    Flush {
        /// The request's slot.
        slot: usize,
        /// The child.
        child: K,
    },
    /// Ask whether `offset..offset + len` starts with data or zeroes.
    BlockStatus {
        /// The request's slot.
        slot: usize,
        /// The child.
        child: K,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Repair: write the winning content `data` at `offset` (R-READ-7).
    Rewrite {
        /// The slot being repaired.
        slot: usize,
        /// The child.
        child: K,
        /// The winner's bytes, shared by every rewrite of the request.
        data: Arc<[u8]>,
        /// Byte offset.
        offset: u64,
    },
}

/// The kind of a child operation, as its [`Done`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A read (its result carries a buffer).
    Read,
    /// A write or write-zeroes.
    Write,
    /// A flush.
    Flush,
    /// A rewrite.
    Rewrite,
    /// A block status query.
    BlockStatus,
}

impl OpKind {
    /// The result of an operation of this kind on `slot` that failed with
    /// `e` and lost its buffer (a read gets a fresh one of `len` bytes).
    pub fn failed(self, slot: usize, e: Errno, len: usize) -> Done {
        match self {
            OpKind::Read => Done::Read(slot, Err(e), vec![0; len]),
            OpKind::Write => Done::Write(slot, Err(e)),
            OpKind::Flush => Done::Flush(slot, Err(e)),
            OpKind::Rewrite => Done::Rewrite(slot, Err(e)),
            OpKind::BlockStatus => Done::BlockStatus(slot, Err(e)),
        }
    }
}

/// What a request's child operations share: the data of a write, and the
/// copy of a read's winner that its rewrites write.
#[derive(Debug, Default)]
pub struct Shared {
    /// The write's data (`None` for other requests).
    pub payload: Option<Arc<[u8]>>,
    /// The repair source, copied once from the read buffers.
    pub winner: Option<Arc<[u8]>>,
}

impl<K: Clone> Op<K> {
    /// The child operation `a` asks for, or `None` for actions that are not
    /// child operations (events, answers, completions). A child that is not
    /// in `children` (it cannot happen: membership changes wait for a
    /// drain) fails with `ENODEV`.
    pub fn from_action(
        a: &Action,
        children: &BTreeMap<u32, K>,
        bufs: &mut ReadSet,
        shared: &mut Shared,
    ) -> Option<Op<K>> {
        let child = |c: &quorum_proto::ChildId| children.get(&c.0).cloned();
        let gone = |d: Done| Some(Op::Failed(d));
        let e = Err(Errno::ENODEV);
        Some(match *a {
            Action::Read {
                slot,
                child: ref c,
                offset,
                len,
                ..
            } => {
                let buf = bufs.lend(slot, len as usize);
                match child(c) {
                    Some(child) => Op::Read {
                        slot,
                        child,
                        buf,
                        offset,
                    },
                    None => return gone(Done::Read(slot, e, buf)),
                }
            }
            Action::Write {
                slot,
                child: ref c,
                offset,
                ..
            } => match child(c) {
                Some(child) => Op::Write {
                    slot,
                    child,
                    data: shared
                        .payload
                        .get_or_insert_with(|| Arc::from(&[][..]))
                        .clone(),
                    offset,
                },
                None => return gone(Done::Write(slot, e)),
            },
            Action::WriteZeroes {
                slot,
                child: ref c,
                offset,
                len,
                ..
            } => match child(c) {
                Some(child) => Op::Zeroes {
                    slot,
                    child,
                    offset,
                    len,
                },
                None => return gone(Done::Write(slot, e)),
            },
            Action::Flush {
                slot, child: ref c, ..
            } => match child(c) {
                Some(child) => Op::Flush { slot, child },
                None => return gone(Done::Flush(slot, e)),
            },
            Action::Rewrite {
                slot,
                child: ref c,
                source,
                offset,
                ..
            } => match child(c) {
                Some(child) => Op::Rewrite {
                    slot,
                    child,
                    data: shared
                        .winner
                        .get_or_insert_with(|| Arc::from(bufs.get(source)))
                        .clone(),
                    offset,
                },
                None => return gone(Done::Rewrite(slot, e)),
            },
            Action::BlockStatus {
                slot,
                child: ref c,
                offset,
                len,
                ..
            } => match child(c) {
                Some(child) => Op::BlockStatus {
                    slot,
                    child,
                    offset,
                    len,
                },
                None => return gone(Done::BlockStatus(slot, Err(Errno::ENODEV))),
            },
            Action::Event { .. }
            | Action::Answer { .. }
            | Action::Mark { .. }
            | Action::Complete { .. } => return None,
        })
    }
}

impl<K> Op<K> {
    /// The slot this operation is for.
    pub fn slot(&self) -> usize {
        match self {
            Op::Failed(d) => d.slot(),
            Op::Read { slot, .. }
            | Op::Write { slot, .. }
            | Op::Zeroes { slot, .. }
            | Op::Flush { slot, .. }
            | Op::BlockStatus { slot, .. }
            | Op::Rewrite { slot, .. } => *slot,
        }
    }

    /// A child read (its result carries a buffer).
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Read { .. })
    }

    /// A read's length (0 for anything else).
    pub fn read_len(&self) -> usize {
        match self {
            Op::Read { buf, .. } => buf.len(),
            _ => 0,
        }
    }

    /// This operation's result when it failed with `e` without running (a
    /// panic in the child, a cancellation): a read gives its buffer back.
    pub fn fail(self, e: Errno) -> Done {
        match self {
            Op::Failed(d) => d,
            Op::Read { slot, buf, .. } => Done::Read(slot, Err(e), buf),
            Op::Write { slot, .. } | Op::Zeroes { slot, .. } => Done::Write(slot, Err(e)),
            Op::Flush { slot, .. } => Done::Flush(slot, Err(e)),
            Op::Rewrite { slot, .. } => Done::Rewrite(slot, Err(e)),
            Op::BlockStatus { slot, .. } => Done::BlockStatus(slot, Err(e)),
        }
    }

    /// What kind of operation this is (to make a result of its failure
    /// once the operation itself is gone, e.g. after a panic).
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Failed(Done::Read(..)) | Op::Read { .. } => OpKind::Read,
            Op::Failed(Done::Flush(..)) | Op::Flush { .. } => OpKind::Flush,
            Op::Failed(Done::Rewrite(..)) | Op::Rewrite { .. } => OpKind::Rewrite,
            Op::Failed(Done::BlockStatus(..)) | Op::BlockStatus { .. } => OpKind::BlockStatus,
            Op::Failed(Done::Write(..)) | Op::Write { .. } | Op::Zeroes { .. } => OpKind::Write,
        }
    }
}

/// A child operation of a blocking child, as the blocking driver and the
/// async driver's blocking pool run it.
pub type BlockingOp = Op<Arc<dyn Child>>;

impl BlockingOp {
    /// Does the operation, leaving it spent (a read's buffer moved into the
    /// result) but still holding its child and data: whoever drops it pays
    /// for the reference counts ([`Work::run`]).
    fn run_mut(&mut self) -> Done {
        match self {
            Op::Failed(done) => std::mem::replace(done, Done::Flush(0, Ok(()))),
            Op::Read {
                slot,
                child,
                buf,
                offset,
            } => {
                let mut buf = std::mem::take(buf);
                let r = errno(child.read_at(&mut buf, *offset));
                Done::Read(*slot, r, buf)
            }
            Op::Write {
                slot,
                child,
                data,
                offset,
            } => Done::Write(*slot, errno(child.write_at(data, *offset))),
            Op::Zeroes {
                slot,
                child,
                offset,
                len,
            } => Done::Write(*slot, errno(zeroes_or_write(&**child, *offset, *len))),
            Op::Flush { slot, child } => Done::Flush(*slot, errno(child.flush())),
            Op::Rewrite {
                slot,
                child,
                data,
                offset,
            } => Done::Rewrite(*slot, errno(child.write_at(data, *offset))),
            Op::BlockStatus {
                slot,
                child,
                offset,
                len,
            } => Done::BlockStatus(
                *slot,
                child
                    .block_status(*offset, *len)
                    .map_err(|e| Errno::from(&e)),
            ),
        }
    }
}

impl Work for BlockingOp {
    type Output = Done;

    /// Runs the operation; a panic in the child becomes an `EIO` for its
    /// slot, so the request still completes.
    fn run(&mut self) -> Done {
        let (slot, kind, len) = (self.slot(), self.kind(), self.read_len());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_mut()))
            .unwrap_or_else(|_| kind.failed(slot, Errno::EIO, len))
    }

    fn caller_keeps_more(&self) -> bool {
        self.is_read()
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Read { buf, .. } => buf.len(),
            Op::Write { data, .. } | Op::Rewrite { data, .. } => data.len(),
            Op::Zeroes { len, .. } => usize::try_from(*len).unwrap_or(usize::MAX),
            Op::Failed(_) | Op::Flush { .. } | Op::BlockStatus { .. } => 0,
        }
    }
}
