//! 1 to 16 children, every threshold, generated scenarios checked against a
//! straightforward model of SPEC.md written independently of the core, in
//! several completion orders: R-READ-1..7, R-VOTE-1..4, R-WRITE-1..3,
//! R-FLUSH-1..2, R-FIFO-1..2, R-EVENT-1. Plus 64 children, the core's maximum.

mod spec_util;
mod support;

use quorum_proto::{
    Action, ChildId, Config, Errno, Event, OpType, Outcome, Quorum, ReadPattern, Request, RequestId,
};
use spec_util::{Rng, failure, rb, read_ok, run};
use support::{Mem, Order};

const LEN: usize = 1536;
const OFFSET: u64 = 700;
const BYTES: u64 = 600;
const SN: u64 = 1; // 700 / 512
const SC: u64 = 2; // ceil(1300 / 512) - 1
const BASE: u8 = 0x5a;
const ERRS: [Errno; 3] = [Errno::EIO, Errno::ENOSPC, Errno::EPERM];

/// What a child does in a scenario: hold a version (a byte value at `pos`)
/// or fail.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Child {
    Data(u8),
    Fail(Errno),
}

struct Scenario {
    children: Vec<Child>,
    /// Where versions differ, inside the read range.
    pos: usize,
}

impl Scenario {
    fn disks(&self) -> Vec<Vec<u8>> {
        self.children
            .iter()
            .map(|c| {
                let mut d = vec![BASE; LEN];
                if let Child::Data(v) = c {
                    d[self.pos] = *v;
                }
                d
            })
            .collect()
    }
}

/// Scenarios that hit the boundaries on purpose: success count at, below
/// and above the threshold, winner count at and below it, ties.
fn scenario(rng: &mut Rng, n: usize, t: usize, kind: usize) -> Scenario {
    let err = |rng: &mut Rng| Child::Fail(ERRS[rng.below(3)]);
    let mut children: Vec<Child> = match kind {
        // Random: about a quarter fail, three versions.
        0 => (0..n)
            .map(|_| {
                if rng.below(4) == 0 {
                    err(rng)
                } else {
                    Child::Data(1 + rng.below(3) as u8)
                }
            })
            .collect(),
        // Exactly `threshold` successes, all agreeing.
        1 => (0..n)
            .map(|i| if i < t { Child::Data(1) } else { err(rng) })
            .collect(),
        // One success short of the threshold.
        2 => (0..n)
            .map(|i| if i + 1 < t { Child::Data(1) } else { err(rng) })
            .collect(),
        // Winner with exactly `threshold` members, the rest all distinct.
        3 => (0..n)
            .map(|i| {
                if i < t {
                    Child::Data(1)
                } else {
                    Child::Data(2 + i as u8)
                }
            })
            .collect(),
        // Winner one member short, the rest all distinct.
        4 => (0..n)
            .map(|i| {
                if i + 1 < t {
                    Child::Data(1)
                } else {
                    Child::Data(2 + i as u8)
                }
            })
            .collect(),
        // Two versions of (nearly) equal size, plus a failure or two.
        _ => (0..n)
            .map(|i| match i % 5 {
                4 => err(rng),
                k => Child::Data(1 + (k % 2) as u8),
            })
            .collect(),
    };
    // Shuffle (Fisher–Yates) so that positions vary.
    for i in (1..children.len()).rev() {
        let j = rng.below(i + 1);
        children.swap(i, j);
    }
    Scenario {
        children,
        pos: OFFSET as usize + rng.below(BYTES as usize),
    }
}

/// SPEC.md's vote, written with plain vectors: versions in order of first
/// appearance, the winner the *last* of the largest, losers most recent
/// version first, members from the highest slot down.
fn vote<T: PartialEq + Copy>(voters: &[(usize, T)]) -> Option<(Vec<usize>, Vec<usize>)> {
    let mut versions: Vec<(T, Vec<usize>)> = Vec::new();
    for &(slot, v) in voters {
        match versions.iter_mut().find(|(x, _)| *x == v) {
            Some((_, members)) => members.push(slot),
            None => versions.push((v, vec![slot])),
        }
    }
    let max = versions.iter().map(|(_, m)| m.len()).max()?;
    let w = versions.iter().rposition(|(_, m)| m.len() == max)?;
    let mut losers = Vec::new();
    for (i, (_, members)) in versions.iter().enumerate().rev() {
        if i != w {
            losers.extend(members.iter().rev());
        }
    }
    Some((versions[w].1.clone(), losers))
}

fn error_vote(children: &[Child]) -> Errno {
    let errs: Vec<(usize, Errno)> = children
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Child::Fail(e) => Some((i, *e)),
            Child::Data(_) => None,
        })
        .collect();
    let (winner, _) = vote(&errs).expect("some error");
    errs.iter().find(|(i, _)| *i == winner[0]).unwrap().1
}

struct Expect {
    outcome: Outcome,
    /// Events when children complete in slot order.
    events: Vec<Event>,
    /// Children rewritten with the winner (slots).
    rewritten: Vec<usize>,
    /// Where the result comes from.
    source: Option<usize>,
}

fn model_read(children: &[Child], t: usize) -> Expect {
    let mut events: Vec<Event> = children
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Child::Fail(e) => Some(rb(OpType::Read, Some(*e), i as u32, SN, SC)),
            Child::Data(_) => None,
        })
        .collect();
    let ok: Vec<(usize, u8)> = children
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Child::Data(v) => Some((i, *v)),
            Child::Fail(_) => None,
        })
        .collect();
    let fail = |events: &mut Vec<Event>, e| {
        events.push(failure(SN, SC));
        Expect {
            outcome: Outcome::Failed(e),
            events: events.clone(),
            rewritten: vec![],
            source: None,
        }
    };
    if ok.len() < t {
        let e = error_vote(children);
        return fail(&mut events, e);
    }
    let (winner, losers) = vote(&ok).unwrap();
    if winner.len() < t {
        return fail(&mut events, Errno::EIO);
    }
    events.extend(
        losers
            .iter()
            .map(|&s| rb(OpType::Read, None, s as u32, SN, SC)),
    );
    Expect {
        outcome: read_ok(winner[0], winner[0] as u32),
        events,
        rewritten: losers,
        source: Some(winner[0]),
    }
}

fn sorted(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    v.sort();
    v
}

const ORDERS: [Order; 4] = [
    Order::Issue,
    Order::Reverse,
    Order::Shuffle(7),
    Order::Shuffle(1234),
];

/// R-READ-1..7, R-VOTE-1..4 for n = 1..=16 and every threshold, against the
/// model, in four completion orders, with and without rewrite-corrupted.
#[test]
fn reads_1_to_16_children() {
    let mut rng = Rng(0x5eed);
    let mut checked = 0;
    // (agreed, outvoted losers, no content quorum, too many errors)
    let mut kinds = [0usize; 4];
    for n in 1..=16 {
        for t in 1..=n {
            for kind in 0..6 {
                let sc = scenario(&mut rng, n, t, kind);
                let want = model_read(&sc.children, t);
                let rewrite = (n + t + kind) % 2 == 0;
                let ok = sc
                    .children
                    .iter()
                    .filter(|c| matches!(c, Child::Data(_)))
                    .count();
                kinds[match want.outcome {
                    Outcome::Read { .. } if want.rewritten.is_empty() => 0,
                    Outcome::Read { .. } => 1,
                    _ if ok >= t => 2,
                    _ => 3,
                }] += 1;
                for order in ORDERS {
                    let cfg = Config::new(n, t).with_rewrite_corrupted(rewrite);
                    let mut m = Mem::new(cfg, sc.disks());
                    m.order = order;
                    for (i, c) in sc.children.iter().enumerate() {
                        if let Child::Fail(e) = c {
                            m.faults.read.insert(ChildId(i as u32), *e);
                        }
                    }
                    let (o, d) = m.read(OFFSET, BYTES);
                    let ctx = format!("n={n} t={t} {:?} {order:?} rw={rewrite}", sc.children);
                    assert_eq!(o, want.outcome, "{ctx}");
                    let got = m.events_of(RequestId(1));
                    if order == Order::Issue {
                        assert_eq!(got, want.events, "{ctx}");
                    } else {
                        assert_eq!(sorted(&got), sorted(&want.events), "{ctx}");
                    }
                    // The result is the winner's bytes.
                    let mut disks = sc.disks();
                    if let Some(s) = want.source {
                        let lo = OFFSET as usize;
                        let hi = lo + BYTES as usize;
                        assert_eq!(d.as_deref(), Some(&disks[s][lo..hi]), "{ctx}");
                        if rewrite {
                            for &l in &want.rewritten {
                                let src = disks[s][lo..hi].to_vec();
                                disks[l][lo..hi].copy_from_slice(&src);
                            }
                        }
                    } else {
                        assert_eq!(d, None);
                    }
                    // Rewrites: exactly the losers, in report order, in any
                    // completion order.
                    let rewrites: Vec<usize> = m
                        .log()
                        .iter()
                        .filter_map(|a| match *a {
                            Action::Rewrite { slot, .. } => Some(slot),
                            _ => None,
                        })
                        .collect();
                    let want_rw = if rewrite {
                        want.rewritten.clone()
                    } else {
                        vec![]
                    };
                    assert_eq!(rewrites, want_rw, "{ctx}");
                    for (c, disk) in disks.iter().enumerate() {
                        assert_eq!(m.disk(c as u32), &disk[..], "{ctx} child {c}");
                    }
                    assert!(m.checker().is_idle());
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 136 * 6 * ORDERS.len());
    // The scenarios reach every branch, many times.
    assert!(kinds.iter().all(|&k| k >= 100), "{kinds:?}");
}

/// R-WRITE-1..3, R-FLUSH-1..2, R-VOTE-3 for n = 1..=16 and every threshold.
#[test]
fn writes_and_flushes_1_to_16_children() {
    let mut rng = Rng(0xfeed);
    for n in 1..=16 {
        for t in 1..=n {
            for kind in 0..4 {
                let sc = scenario(&mut rng, n, t, kind);
                let fails: Vec<Option<Errno>> = sc
                    .children
                    .iter()
                    .map(|c| match c {
                        Child::Fail(e) => Some(*e),
                        Child::Data(_) => None,
                    })
                    .collect();
                let ok = fails.iter().filter(|f| f.is_none()).count();
                for (op, zeroes) in [
                    (OpType::Write, false),
                    (OpType::Write, true),
                    (OpType::Flush, false),
                ] {
                    let flush = op == OpType::Flush;
                    let (sn, sc_) = if flush { (0, 0) } else { (SN, SC) };
                    let mut events: Vec<Event> = fails
                        .iter()
                        .enumerate()
                        .filter_map(|(i, f)| f.map(|e| rb(op, Some(e), i as u32, sn, sc_)))
                        .collect();
                    let outcome = if ok >= t {
                        Outcome::Done
                    } else {
                        if !flush {
                            events.push(failure(SN, SC));
                        }
                        Outcome::Failed(error_vote(&sc.children))
                    };
                    for order in [Order::Issue, Order::Shuffle(n as u64)] {
                        let mut m = Mem::uniform(Config::new(n, t), LEN, BASE);
                        m.order = order;
                        for (i, f) in fails.iter().enumerate() {
                            if let Some(e) = f {
                                m.faults.write.insert(ChildId(i as u32), *e);
                                m.faults.flush.insert(ChildId(i as u32), *e);
                            }
                        }
                        let o = match (flush, zeroes) {
                            (true, _) => m.flush(),
                            (false, true) => m.write_zeroes(OFFSET, BYTES),
                            (false, false) => m.write(OFFSET, &[0x77; BYTES as usize]),
                        };
                        let ctx = format!("n={n} t={t} {fails:?} {op:?} z={zeroes} {order:?}");
                        assert_eq!(o, outcome, "{ctx}");
                        let got = m.events_of(RequestId(1));
                        if order == Order::Issue {
                            assert_eq!(got, events, "{ctx}");
                        } else {
                            assert_eq!(sorted(&got), sorted(&events), "{ctx}");
                        }
                        if !flush {
                            let byte = if zeroes { 0 } else { 0x77 };
                            for (c, f) in fails.iter().enumerate() {
                                let d = m.disk(c as u32);
                                let want = if f.is_some() { BASE } else { byte };
                                assert_eq!(d[OFFSET as usize], want, "{ctx} child {c}");
                                assert_eq!(d[(OFFSET + BYTES) as usize - 1], want);
                                assert_eq!(d[OFFSET as usize - 1], BASE);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// R-FIFO-1..2 for n = 1..=16, with and without the repair option.
#[test]
fn fifo_1_to_16_children() {
    let mut rng = Rng(0xf1f0);
    for n in 1..=16 {
        for kind in 0..6 {
            let t = 1 + rng.below(n);
            let sc = scenario(&mut rng, n, t, kind);
            let first_ok = sc.children.iter().position(|c| matches!(c, Child::Data(_)));
            let upto = first_ok.unwrap_or(n - 1);
            let events: Vec<Event> = (0..=upto)
                .filter_map(|i| match sc.children[i] {
                    Child::Fail(e) => Some(rb(OpType::Read, Some(e), i as u32, SN, SC)),
                    Child::Data(_) => None,
                })
                .collect();
            let outcome = match first_ok {
                Some(s) => read_ok(s, s as u32),
                None => match sc.children[n - 1] {
                    Child::Fail(e) => Outcome::Failed(e),
                    Child::Data(_) => unreachable!(),
                },
            };
            for repair in [false, true] {
                let cfg = Config::new(n, t)
                    .with_read_pattern(ReadPattern::Fifo)
                    .with_fifo_rewrite_failed(repair);
                let mut m = Mem::new(cfg, sc.disks());
                for (i, c) in sc.children.iter().enumerate() {
                    if let Child::Fail(e) = c {
                        m.faults.read.insert(ChildId(i as u32), *e);
                    }
                }
                let (o, d) = m.read(OFFSET, BYTES);
                let ctx = format!("n={n} {:?} repair={repair}", sc.children);
                assert_eq!(o, outcome, "{ctx}");
                assert_eq!(m.events_of(RequestId(1)), events, "{ctx}");
                let reads = m
                    .log()
                    .iter()
                    .filter(|a| matches!(a, Action::Read { .. }))
                    .count();
                assert_eq!(reads, upto + 1, "{ctx}");
                let mut disks = sc.disks();
                if let Some(s) = first_ok {
                    let (lo, hi) = (OFFSET as usize, (OFFSET + BYTES) as usize);
                    assert_eq!(d.as_deref(), Some(&disks[s][lo..hi]));
                    if repair {
                        for f in 0..s {
                            let src = disks[s][lo..hi].to_vec();
                            disks[f][lo..hi].copy_from_slice(&src);
                        }
                    }
                }
                for (c, disk) in disks.iter().enumerate() {
                    assert_eq!(m.disk(c as u32), &disk[..], "{ctx} child {c}");
                }
            }
        }
    }
}

/// The core's maximum, 64 children: masks use every bit.
#[test]
fn sixty_four_children() {
    let mut q = Quorum::<64, 1, 194>::new(Config::new(64, 33)).unwrap();
    // All agree.
    let reads: Vec<_> = (0..64).map(|_| Ok(vec![9u8; 8])).collect();
    let r = run(&mut q, 1, Request::Read { offset: 0, len: 8 }, &reads, &[]);
    assert_eq!(r.outcome(), read_ok(0, 0));
    assert_eq!(r.log.len(), 65);
    // Slot 63 fails, slots 0..31 hold another version: 32 agree, threshold 33.
    let mut reads: Vec<_> = (0..64)
        .map(|i| Ok(vec![if i < 31 { 1u8 } else { 2 }; 8]))
        .collect();
    reads[63] = Err(Errno::EIO);
    let r = run(&mut q, 2, Request::Read { offset: 0, len: 8 }, &reads, &[]);
    assert_eq!(r.outcome(), Outcome::Failed(Errno::EIO));
    assert_eq!(
        r.events(),
        vec![rb(OpType::Read, Some(Errno::EIO), 63, 0, 1), failure(0, 1)]
    );
    // Slot 63 agrees with the majority of 33: success, 31 losers reported.
    reads[63] = Ok(vec![2u8; 8]);
    let r = run(&mut q, 3, Request::Read { offset: 0, len: 8 }, &reads, &[]);
    assert_eq!(r.outcome(), read_ok(31, 31));
    let want: Vec<_> = (0..31)
        .rev()
        .map(|c| rb(OpType::Read, None, c, 0, 1))
        .collect();
    assert_eq!(r.events(), want);
    // Writes: 31 failures leave 33.
    let results: Vec<_> = (0..64)
        .map(|i| {
            if i % 2 == 0 && i < 62 {
                Err(Errno::ENOSPC)
            } else {
                Ok(())
            }
        })
        .collect();
    let r = run(
        &mut q,
        4,
        Request::Write { offset: 0, len: 8 },
        &[],
        &results,
    );
    assert_eq!(r.outcome(), Outcome::Done);
    assert_eq!(r.events().len(), 31);
    // One more failure is one too many.
    let mut results = results;
    results[63] = Err(Errno::EIO);
    let r = run(&mut q, 5, Request::Flush, &[], &results);
    assert_eq!(r.outcome(), Outcome::Failed(Errno::ENOSPC));
    assert_eq!(r.events().len(), 32);
    assert_eq!(
        r.events()[31],
        Event::ReportBad {
            op: OpType::Flush,
            error: Some(Errno::EIO),
            child: ChildId(63),
            sector_num: 0,
            sectors_count: 0
        }
    );
    assert!(q.is_idle());
    assert_eq!(q.children().len(), 64);
    assert_eq!(
        q.add_child(),
        Err(quorum_proto::MemberError::TooManyChildren)
    );
}
