//! Votes: grouping by equality, QEMU's tie-break and report order (R-VOTE).
//!
//! QEMU keeps versions in a list, inserting each new one at the head, and the
//! winner is the first version with a strictly greater count while walking
//! that list. Members are likewise inserted at the head of their version. So,
//! stated without lists:
//!
//! * the winner is, among the versions with the highest count, the one that
//!   appeared *last* (its first member has the highest slot) — R-VOTE-2;
//! * losers are reported most recent version first, and inside a version from
//!   the highest slot down — R-VOTE-4.
//!
//! The same [`Tally`] serves content votes (members compared byte for byte,
//! R-VOTE-1) and error votes (errno equality, R-VOTE-3).

/// A set of slots as a bit mask: the core holds at most 64 children.
pub(crate) type Mask = u64;

/// The versions of one vote, in order of first appearance.
///
/// `N` bounds the number of versions (at most one per voter).
#[derive(Clone, Debug)]
pub struct Tally<const N: usize> {
    /// First member (lowest slot) of each version.
    first: [u8; N],
    /// Members of each version.
    members: [Mask; N],
    len: usize,
}

impl<const N: usize> Default for Tally<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Tally<N> {
    /// An empty tally.
    pub const fn new() -> Self {
        Tally {
            first: [0; N],
            members: [0; N],
            len: 0,
        }
    }

    /// Counts `slot`'s vote. `same(rep)` says whether `slot` votes like the
    /// version whose first member is `rep`. Slots must be added in
    /// increasing order; a slot ≥ 64 or past `N` versions is ignored
    /// (the core never produces one).
    pub fn add(&mut self, slot: usize, mut same: impl FnMut(usize) -> bool) {
        if slot >= 64 {
            return;
        }
        for v in 0..self.len {
            if same(self.first[v] as usize) {
                self.members[v] |= 1 << slot;
                return;
            }
        }
        if self.len < N {
            self.first[self.len] = slot as u8;
            self.members[self.len] = 1 << slot;
            self.len += 1;
        }
    }

    /// Builds a tally from values compared with `==`, one voter per slot;
    /// `None` abstains. Handy for error votes and tables.
    pub fn from_values<T: PartialEq>(values: &[Option<T>]) -> Self {
        let mut t = Tally::new();
        for (slot, v) in values.iter().enumerate() {
            if let Some(v) = v {
                t.add(slot, |rep| values[rep].as_ref() == Some(v));
            }
        }
        t
    }

    /// Number of distinct versions.
    pub fn versions(&self) -> usize {
        self.len
    }

    /// The winning version (R-VOTE-2), or `None` when nobody voted.
    pub fn winner(&self) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for v in (0..self.len).rev() {
            let c = self.members[v].count_ones();
            if best.is_none_or(|(_, bc)| c > bc) {
                best = Some((v, c));
            }
        }
        best.map(|(v, _)| v)
    }

    /// How many slots voted for version `v`.
    pub fn count(&self, v: usize) -> usize {
        self.members.get(v).map_or(0, |m| m.count_ones() as usize)
    }

    /// The lowest slot of version `v`: where its data is read from (R-VOTE-2).
    pub fn first(&self, v: usize) -> usize {
        self.first.get(v).map_or(0, |&s| s as usize)
    }

    /// The slots of every version but `winner`, in report order (R-VOTE-4).
    pub fn losers(&self, winner: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.len)
            .rev()
            .filter(move |&v| v != winner)
            .flat_map(move |v| high_to_low(self.members[v]))
    }

    pub(crate) fn members(&self, v: usize) -> Mask {
        self.members.get(v).copied().unwrap_or(0)
    }
}

/// The slots of `m` from the highest down.
pub(crate) fn high_to_low(mut m: Mask) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let s = 63 - m.leading_zeros() as usize;
        m &= !(1 << s);
        Some(s)
    })
}

/// The slots of `m` from the lowest up.
pub(crate) fn low_to_high(mut m: Mask) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let s = m.trailing_zeros() as usize;
        m &= m - 1;
        Some(s)
    })
}
