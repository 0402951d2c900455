//! Sync tracking (SPEC R-SYNC, opt-in with [`crate::Config::with_sync_tracking`]):
//! which children hold the device's data where, and which chunks may
//! differ between children.
//!
//! The device is cut into chunks. Two kinds of marks:
//!
//! - **stale** (a child, a chunk): the child is known not to hold the
//!   device's data there. It is not read and does not vote where it is
//!   stale (R-SYNC-1), still receives writes, and does not count toward a
//!   write's threshold there.
//! - **unsettled** (a chunk): a write may have reached some children and
//!   not others. Set — durably, when the map is persisted — before the
//!   first child write of a write is issued (R-SYNC-2: write-intent); a
//!   read of an unsettled chunk settles what it reads (R-SYNC-3).
//!
//! The marks live in the driver's map, never here: the core stays
//! `no_std` without an allocator and never holds a device-sized bitmap.
//! It asks the map ([`Marks`]) when a request starts, and tells it what
//! to change with [`crate::Action::Mark`] — in the order the changes must
//! happen. A [`Mark::Unsettle`] is a question too: the request waits, its
//! child writes not issued, until the driver says the mark is durable
//! ([`crate::Quorum::handle_marked`]).
//!
//! Clearing is deferred to durability: a chunk a write completed on every
//! non-stale child becomes [`Mark::Clean`], and a stale chunk a resync
//! copied becomes [`Mark::Fresh`] — both tagged with the flush epoch they
//! wait for; the driver applies them when a later flush has succeeded on
//! every child ([`Mark::Flushed`]). Until then they stay marked, so a crash
//! in between costs a settle, never a silent divergence. (What the map
//! answers [`Marks`] may already count them cleared: the data is in the
//! children; only its durability waits.)

/// The smallest chunk (64 KiB).
pub const MIN_CHUNK: u64 = 64 << 10;
/// The largest chunk (64 MiB).
pub const MAX_CHUNK: u64 = 64 << 20;

use crate::membership::ChildId;

/// Chunks `first..end` (end exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunks {
    /// The first chunk.
    pub first: u64,
    /// One past the last chunk.
    pub end: u64,
}

impl Chunks {
    /// The chunks `offset..offset + len` touches with chunks of `chunk`
    /// bytes (a power of two); none for an empty range.
    pub fn of(offset: u64, len: u64, chunk: u64) -> Chunks {
        if len == 0 {
            return Chunks {
                first: offset / chunk,
                end: offset / chunk,
            };
        }
        Chunks {
            first: offset / chunk,
            end: (offset + len - 1) / chunk + 1,
        }
    }

    /// How many.
    pub fn count(&self) -> u64 {
        self.end.saturating_sub(self.first)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.end <= self.first
    }
}

/// What the core asks the driver's map when a request starts.
pub trait Marks {
    /// Whether `child` is stale on any chunk of `chunks`. A map may say no
    /// for a chunk still marked whose [`Mark::Fresh`] only waits for a
    /// flush (no [`Mark::Stale`] there since): the resync's copy is in the
    /// child, which reads it back; only the map's record waits, so that a
    /// crash before the flush copies it again.
    fn stale(&self, child: ChildId, chunks: Chunks) -> bool;
    /// Whether any chunk of `chunks` is unsettled: its children may hold
    /// different data. A map may say no for a chunk still marked whose
    /// [`Mark::Clean`] only waits for a flush (no [`Mark::Unsettle`] there
    /// since): its non-stale children hold the same data.
    fn unsettled(&self, chunks: Chunks) -> bool;
}

/// A map with no marks at all: what [`crate::Quorum::submit`] uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMarks;

impl Marks for NoMarks {
    fn stale(&self, _: ChildId, _: Chunks) -> bool {
        false
    }
    fn unsettled(&self, _: Chunks) -> bool {
        false
    }
}

/// A change to the map, in the order the core emits them
/// ([`crate::Action::Mark`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    /// Mark the chunks unsettled and make that durable (when the map is
    /// persisted), then call [`crate::Quorum::handle_marked`]: the request
    /// issues its child writes only then (R-SYNC-2). A [`Mark::Clean`] of
    /// these chunks still waiting for a flush no longer holds: drop it
    /// there (the write may tear them).
    Unsettle {
        /// The chunks.
        chunks: Chunks,
    },
    /// `child` no longer holds the device's data on these chunks: a write
    /// failed on it while the request succeeded, or a settling write
    /// failed (R-SYNC-1). A [`Mark::Fresh`] of `child` there still waiting
    /// for a flush no longer holds: drop it there.
    Stale {
        /// The child.
        child: ChildId,
        /// The chunks.
        chunks: Chunks,
    },
    /// Every non-stale child holds these chunks' data (a write completed
    /// on all of them, or a settle did): clear their unsettled mark once a
    /// flush of epoch greater than `epoch` has succeeded ([`Mark::Flushed`]).
    Clean {
        /// The chunks.
        chunks: Chunks,
        /// The flush epoch when the data was written.
        epoch: u64,
    },
    /// A resync copied these chunks to `child`: clear its stale mark once a
    /// flush of epoch greater than `epoch` has succeeded (R-SYNC-4).
    Fresh {
        /// The child.
        child: ChildId,
        /// The chunks.
        chunks: Chunks,
        /// The flush epoch when the data was written.
        epoch: u64,
    },
    /// A flush succeeded on every child: every [`Mark::Clean`] and
    /// [`Mark::Fresh`] of an epoch below `epoch` is durable; apply them.
    Flushed {
        /// The flush's epoch.
        epoch: u64,
    },
}
