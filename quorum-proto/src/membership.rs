//! The child set and its stable names (R-MEMBER).
//!
//! QEMU names children `children.N` and keeps a `next_child_index` that only
//! moves back when the newest child is deleted, so names are never reused
//! while an older child still holds them. We keep just the numbers; a front
//! end maps them to whatever node names it likes.

use core::fmt;

/// A child's stable identity: the `N` of its QEMU child name `children.N`.
///
/// It does not change when other children are added or deleted, unlike the
/// child's position (its *slot*), which decides vote tie-breaks (R-VOTE-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildId(pub u32);

impl fmt::Display for ChildId {
    /// `children.N`, QEMU's child name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "children.{}", self.0)
    }
}

/// Why a membership change was refused. `Display` gives QEMU 10's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberError {
    /// R-MEMBER-3: adding is refused in blkverify mode.
    Blkverify,
    /// The core's fixed capacity (or QEMU's index space) is exhausted.
    TooManyChildren,
    /// R-MEMBER-2: deleting would leave fewer children than the threshold.
    BelowThreshold {
        /// The vote threshold.
        threshold: usize,
    },
    /// R-MEMBER-3: no child has this name.
    NoSuchChild(ChildId),
}

impl fmt::Display for MemberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberError::Blkverify => {
                f.write_str("Cannot add a child to a quorum in blkverify mode")
            }
            MemberError::TooManyChildren => f.write_str("Too many children"),
            MemberError::BelowThreshold { threshold } => write!(
                f,
                "The number of children cannot be lower than the vote threshold {threshold}"
            ),
            MemberError::NoSuchChild(id) => write!(f, "Quorum does not have child '{id}'"),
        }
    }
}

impl core::error::Error for MemberError {}

/// The current children in slot order, plus QEMU's `next_child_index`.
#[derive(Clone, Debug)]
pub(crate) struct Membership<const C: usize> {
    ids: heapless::Vec<ChildId, C>,
    next: u32,
}

impl<const C: usize> Membership<C> {
    /// `n` children named `children.0` … `children.n-1` (n ≤ C, checked by config).
    pub(crate) fn new(n: usize) -> Self {
        let mut ids = heapless::Vec::new();
        let mut next = 0u32;
        while ids.len() < n.min(C) {
            // Cannot fail: bounded by C above.
            let _ = ids.push(ChildId(next));
            next += 1;
        }
        Membership { ids, next }
    }

    pub(crate) fn ids(&self) -> &[ChildId] {
        &self.ids
    }

    /// R-MEMBER-1, R-MEMBER-3: appends `children.<next>`.
    pub(crate) fn add(&mut self, blkverify: bool) -> Result<ChildId, MemberError> {
        if blkverify {
            return Err(MemberError::Blkverify);
        }
        if self.next == u32::MAX {
            return Err(MemberError::TooManyChildren);
        }
        let id = ChildId(self.next);
        self.ids
            .push(id)
            .map_err(|_| MemberError::TooManyChildren)?;
        self.next += 1;
        Ok(id)
    }

    /// R-MEMBER-1..3: removes `id`, keeping the others' order.
    pub(crate) fn remove(&mut self, id: ChildId, threshold: usize) -> Result<(), MemberError> {
        let pos = self
            .ids
            .iter()
            .position(|&c| c == id)
            .ok_or(MemberError::NoSuchChild(id))?;
        if self.ids.len() <= threshold {
            return Err(MemberError::BelowThreshold { threshold });
        }
        self.ids.remove(pos);
        if self.next.checked_sub(1) == Some(id.0) {
            self.next -= 1;
        }
        Ok(())
    }
}
