//! SPEC.md R-VOTE-1..4: grouping by content, QEMU's tie-break, the error vote
//! and the report order — on `vote::Tally` directly and end to end through
//! the core with real buffers.

mod spec_util;
mod support;

use quorum_proto::vote::Tally;
use quorum_proto::{
    ChildId, Config, Errno, OpType, Outcome, Quorum, ReadPattern, Request, RequestId,
};
use spec_util::{byte, failure, letters, pattern, rb, read_ok, run};
use support::{Mem, Order};

/// `(pattern, winner letter, winner's lowest slot, winner count, report order)`.
const CONTENT_VOTES: &[(&str, char, usize, usize, &[usize])] = &[
    // SPEC.md's examples.
    ("A B", 'B', 1, 1, &[0]),
    ("A B A B", 'B', 1, 2, &[2, 0]),
    ("A B C", 'C', 2, 1, &[1, 0]),
    ("A B A C B", 'B', 1, 2, &[3, 2, 0]),
    // More.
    ("A", 'A', 0, 1, &[]),
    ("A A A", 'A', 0, 3, &[]),
    ("A A B", 'A', 0, 2, &[2]),
    ("A B B", 'B', 1, 2, &[0]),
    ("B A A B", 'A', 1, 2, &[3, 0]),
    ("A B C A B C D", 'C', 2, 2, &[6, 4, 1, 3, 0]),
    ("A B C D E F", 'F', 5, 1, &[4, 3, 2, 1, 0]),
    ("C C B B B A A A A", 'A', 5, 4, &[4, 3, 2, 1, 0]),
    ("A B A B A", 'A', 0, 3, &[3, 1]),
];

fn tally(pat: &str) -> Tally<16> {
    let vals: Vec<Option<char>> = letters(pat).into_iter().map(Some).collect();
    Tally::from_values(&vals)
}

/// R-VOTE-2, R-VOTE-4 on the tally: winner, its first member, its count and
/// the losers in report order.
#[test]
fn r_vote_2_4_tally_table() {
    for &(pat, w_letter, w_slot, w_count, losers) in CONTENT_VOTES {
        let ls = letters(pat);
        let t = tally(pat);
        let mut distinct = ls.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(t.versions(), distinct.len(), "{pat}");
        let w = t.winner().expect("a winner");
        assert_eq!(t.first(w), w_slot, "{pat}");
        assert_eq!(ls[t.first(w)], w_letter, "{pat}");
        assert_eq!(t.count(w), w_count, "{pat}");
        assert_eq!(t.losers(w).collect::<Vec<_>>(), losers, "{pat}");
        // Every version's first member and count.
        let mut seen = Vec::new();
        for (slot, &l) in ls.iter().enumerate() {
            if !seen.contains(&l) {
                let v = seen.len();
                seen.push(l);
                assert_eq!(t.first(v), slot, "{pat} version {v}");
                assert_eq!(
                    t.count(v),
                    ls.iter().filter(|&&x| x == l).count(),
                    "{pat} version {v}"
                );
            }
        }
    }
}

/// R-VOTE-2, R-VOTE-4 end to end: children hold the patterns' bytes; the
/// result is the winner's lowest-index slot with the winner's data, and the
/// reports come in R-VOTE-4 order.
#[test]
fn r_vote_2_4_end_to_end() {
    for &(pat, w_letter, w_slot, w_count, losers) in CONTENT_VOTES {
        let disks = pattern(pat, 1024);
        let n = disks.len();
        for t in 1..=n {
            let mut m = Mem::new(Config::new(n, t), disks.clone());
            let (o, d) = m.read(1000, 24);
            if w_count >= t {
                assert_eq!(o, read_ok(w_slot, w_slot as u32), "{pat} t={t}");
                assert_eq!(d.unwrap(), vec![byte(w_letter); 24]);
                let want: Vec<_> = losers
                    .iter()
                    .map(|&c| rb(OpType::Read, None, c as u32, 1, 1))
                    .collect();
                assert_eq!(m.events_of(RequestId(1)), want, "{pat} t={t}");
            } else {
                assert_eq!(o, Outcome::Failed(Errno::EIO), "{pat} t={t}");
                assert_eq!(m.events_of(RequestId(1)), vec![failure(1, 1)]);
            }
        }
    }
}

/// R-VOTE-4: rewrites follow the report order too.
#[test]
fn r_vote_4_rewrite_order() {
    for &(pat, _, w_slot, _, losers) in CONTENT_VOTES {
        let reads: Vec<_> = pattern(pat, 16).into_iter().map(Ok).collect();
        let mut q: Quorum =
            Quorum::new(Config::new(reads.len(), 1).with_rewrite_corrupted(true)).expect("config");
        let r = run(&mut q, 1, Request::Read { offset: 0, len: 16 }, &reads, &[]);
        let want: Vec<_> = losers.iter().map(|&s| (s, w_slot)).collect();
        assert_eq!(r.rewrites(), want, "{pat}");
    }
}

/// R-VOTE-1: versions are grouped by exact byte equality: one flipped bit
/// anywhere makes a new version, equal bytes are one version.
#[test]
fn r_vote_1_exact_bytes() {
    let base: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut first = base.clone();
    first[0] ^= 1;
    let mut last = base.clone();
    last[4095] ^= 0x80;
    let mut mid = base.clone();
    mid[2048] = mid[2048].wrapping_add(1);
    // c0 first-byte, c1 base, c2 last-byte, c3 base, c4 mid, c5 base copy
    let disks = vec![first, base.clone(), last, base.clone(), mid, base.clone()];
    let mut m = Mem::new(Config::new(6, 3), disks);
    let (o, d) = m.read(0, 4096);
    assert_eq!(o, read_ok(1, 1));
    assert_eq!(d.unwrap(), base);
    assert_eq!(
        m.events_of(RequestId(1)),
        vec![
            rb(OpType::Read, None, 4, 0, 8),
            rb(OpType::Read, None, 2, 0, 8),
            rb(OpType::Read, None, 0, 0, 8),
        ]
    );
    // Only three identical copies: with threshold 4 no quorum.
    let mut m = Mem::new(
        Config::new(6, 4),
        (0..6).map(|c| m.disk(c).to_vec()).collect(),
    );
    assert_eq!(m.read(0, 4096).0, Outcome::Failed(Errno::EIO));
    // A tally over byte slices groups by content.
    let bufs: [&[u8]; 4] = [b"xy", b"xz", b"xy", b"xz"];
    let mut t = Tally::<4>::new();
    for s in 0..4 {
        t.add(s, |rep| bufs[rep] == bufs[s]);
    }
    assert_eq!(t.versions(), 2);
    let w = t.winner().unwrap();
    assert_eq!(t.first(w), 1);
    assert_eq!(t.count(w), 2);
}

/// `(errors by child, voted error)`: SPEC.md's examples and more.
const ERROR_VOTES: &[(&[Errno], Errno)] = &[
    (&[Errno::EIO, Errno::ENOSPC], Errno::ENOSPC),
    (&[Errno::ENOSPC, Errno::EIO, Errno::EPERM], Errno::EPERM),
    (&[Errno::EIO, Errno::ENOSPC, Errno::ENOSPC], Errno::ENOSPC),
    (&[Errno::EIO], Errno::EIO),
    (&[Errno::EIO, Errno::EIO, Errno::ENOSPC], Errno::EIO),
    (
        &[Errno::ENOSPC, Errno::EIO, Errno::ENOSPC, Errno::EIO],
        Errno::EIO,
    ),
    (
        &[
            Errno::EPERM,
            Errno::EIO,
            Errno::EIO,
            Errno::EPERM,
            Errno::EROFS,
        ],
        Errno::EIO,
    ),
];

/// R-VOTE-3 on the tally.
#[test]
fn r_vote_3_error_vote_tally() {
    for &(errs, want) in ERROR_VOTES {
        let vals: Vec<Option<Errno>> = errs.iter().copied().map(Some).collect();
        let t = Tally::<8>::from_values(&vals);
        let w = t.winner().unwrap();
        assert_eq!(errs[t.first(w)], want, "{errs:?}");
    }
}

/// R-VOTE-3 end to end: reads, writes and flushes that miss the threshold
/// fail with the voted error; successful children do not vote.
#[test]
fn r_vote_3_error_vote_end_to_end() {
    for &(errs, want) in ERROR_VOTES {
        let n = errs.len();
        // Every child fails.
        let mut m = Mem::uniform(Config::new(n, 1), 512, 0);
        for (c, &e) in errs.iter().enumerate() {
            m.faults.read.insert(ChildId(c as u32), e);
            m.faults.write.insert(ChildId(c as u32), e);
            m.faults.flush.insert(ChildId(c as u32), e);
        }
        assert_eq!(m.read(0, 512).0, Outcome::Failed(want), "read {errs:?}");
        assert_eq!(
            m.write(0, &[1; 512]),
            Outcome::Failed(want),
            "write {errs:?}"
        );
        assert_eq!(
            m.write_zeroes(0, 512),
            Outcome::Failed(want),
            "zeroes {errs:?}"
        );
        assert_eq!(m.flush(), Outcome::Failed(want), "flush {errs:?}");
        // The same errors with a healthy child in front: it does not vote,
        // and the threshold is out of reach.
        let mut m = Mem::uniform(Config::new(n + 1, n + 1), 512, 0);
        for (c, &e) in errs.iter().enumerate() {
            m.faults.read.insert(ChildId(c as u32 + 1), e);
            m.faults.write.insert(ChildId(c as u32 + 1), e);
        }
        assert_eq!(m.read(0, 512).0, Outcome::Failed(want), "{errs:?}");
        assert_eq!(m.write(0, &[1; 512]), Outcome::Failed(want), "{errs:?}");
    }
    // QEMU: EIO(c0) ENOSPC(c1) ok(c2), threshold 2 → ENOSPC.
    let mut m = Mem::uniform(Config::new(3, 2), 512, 0);
    m.faults.read.insert(ChildId(0), Errno::EIO);
    m.faults.read.insert(ChildId(1), Errno::ENOSPC);
    assert_eq!(m.read(0, 512).0, Outcome::Failed(Errno::ENOSPC));
    // The vote does not depend on completion order.
    for order in [Order::Reverse, Order::Shuffle(3), Order::Shuffle(4)] {
        let mut m = Mem::uniform(Config::new(3, 1), 512, 0);
        m.order = order;
        for (c, e) in [Errno::ENOSPC, Errno::EIO, Errno::EPERM].iter().enumerate() {
            m.faults.read.insert(ChildId(c as u32), *e);
        }
        assert_eq!(m.read(0, 512).0, Outcome::Failed(Errno::EPERM), "{order:?}");
    }
    // Fifo does not vote (R-FIFO-2) even where the vote would differ.
    let cfg = Config::new(3, 1).with_read_pattern(ReadPattern::Fifo);
    let mut m = Mem::uniform(cfg, 512, 0);
    for (c, e) in [Errno::EIO, Errno::EIO, Errno::ENOSPC].iter().enumerate() {
        m.faults.read.insert(ChildId(c as u32), *e);
    }
    assert_eq!(m.read(0, 512).0, Outcome::Failed(Errno::ENOSPC));
}

/// Tally edge cases: empty, abstentions, capacity, slots ≥ 64.
#[test]
fn tally_edges() {
    let t = Tally::<4>::new();
    assert_eq!(t.versions(), 0);
    assert_eq!(t.winner(), None);
    assert_eq!(t.count(0), 0);
    assert_eq!(t.first(0), 0);
    assert_eq!(t.losers(0).count(), 0);
    let d = Tally::<4>::default();
    assert_eq!((d.versions(), d.winner()), (0, None));

    let none: Vec<Option<u8>> = vec![None, None];
    let t = Tally::<4>::from_values(&none);
    assert_eq!((t.versions(), t.winner()), (0, None));

    // Abstentions keep their slot numbers.
    let t = Tally::<4>::from_values(&[None, Some(1), None, Some(2), Some(1)]);
    assert_eq!(t.versions(), 2);
    let w = t.winner().unwrap();
    assert_eq!((w, t.first(w), t.count(w)), (0, 1, 2));
    assert_eq!(t.first(1), 3);
    assert_eq!(t.losers(w).collect::<Vec<_>>(), vec![3]);
    assert_eq!(t.losers(1).collect::<Vec<_>>(), vec![4, 1]);
    // Out-of-range versions count nothing.
    assert_eq!(t.count(2), 0);
    assert_eq!(t.count(99), 0);
    assert_eq!(t.first(99), 0);

    // More versions than N: the extra ones are ignored.
    let t = Tally::<2>::from_values(&[Some('a'), Some('b'), Some('c'), Some('a')]);
    assert_eq!(t.versions(), 2);
    assert_eq!(t.count(0), 2);
    assert_eq!(t.winner(), Some(0));

    // Slots 63 and 64: 63 counts, 64 and above are ignored.
    let mut t = Tally::<70>::new();
    t.add(63, |_| false);
    t.add(64, |_| false);
    t.add(100, |_| false);
    assert_eq!(t.versions(), 1);
    assert_eq!(t.first(0), 63);
    assert_eq!(t.losers(1).collect::<Vec<_>>(), vec![63]);
    let mut t = Tally::<70>::new();
    t.add(0, |_| false);
    t.add(63, |_| true);
    t.add(64, |_| true);
    assert_eq!(t.versions(), 1);
    assert_eq!(t.count(0), 2);
    assert_eq!(t.losers(1).collect::<Vec<_>>(), vec![63, 0]);

    // `same` is asked about each version's first member, oldest first.
    let mut asked = Vec::new();
    let mut t = Tally::<8>::new();
    t.add(0, |_| unreachable!("no version yet"));
    t.add(1, |rep| {
        asked.push(rep);
        false
    });
    t.add(5, |rep| {
        asked.push(rep);
        rep == 1
    });
    assert_eq!(asked, vec![0, 0, 1]);
    assert_eq!(t.versions(), 2);
    assert_eq!(t.losers(0).collect::<Vec<_>>(), vec![5, 1]);
    assert_eq!(t.losers(1).collect::<Vec<_>>(), vec![0]);

    // 64 voters, all distinct: the last one wins; losers from 62 down.
    let vals: Vec<Option<usize>> = (0..64).map(Some).collect();
    let t = Tally::<64>::from_values(&vals);
    let w = t.winner().unwrap();
    assert_eq!((w, t.first(w)), (63, 63));
    assert_eq!(
        t.losers(w).collect::<Vec<_>>(),
        (0..63).rev().collect::<Vec<_>>()
    );
}
