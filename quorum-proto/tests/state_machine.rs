//! Sequences of requests with membership changes, checked against a model
//! that is a flat byte array plus the set of children known to be corrupt.
//!
//! proptest draws the sequence and shrinks a failure to the shortest one.
//! Corruption is only injected while a healthy group strictly outnumbers the
//! corrupt children and reaches the threshold, so every read has one right
//! answer: the model's bytes (R-READ-6), reporting exactly the corrupt
//! children in range (R-VOTE-4) and, with rewrite on, repairing them
//! (R-READ-7). Membership follows R-MEMBER-1..4.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use quorum_proto::{ChildId, Config, Event, MemberError, Outcome};
use support::{Mem, Order};

const SIZE: usize = 8 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Read { off: u64, len: u64 },
    Write { off: u64, len: u64, fill: u8 },
    Zero { off: u64, len: u64 },
    Flush,
    Add,
    Remove { pick: usize },
    Corrupt { pick: usize, at: usize },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE as u64 - 1).prop_flat_map(|off| (Just(off), 1..=(SIZE as u64 - off).min(2048)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => range().prop_map(|(off, len)| Op::Read { off, len }),
        3 => (range(), any::<u8>()).prop_map(|((off, len), fill)| Op::Write { off, len, fill }),
        1 => range().prop_map(|(off, len)| Op::Zero { off, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Add),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        3 => (any::<usize>(), 0..SIZE).prop_map(|(pick, at)| Op::Corrupt { pick, at }),
    ]
}

/// How many corrupt children a read can outvote (SPEC R-READ-5, R-VOTE-2).
fn safe(n: usize, t: usize) -> usize {
    n.saturating_sub(t).min(n.saturating_sub(1) / 2)
}

struct Model {
    data: Vec<u8>,
    names: Vec<u32>,
    next: u32,
    /// Child → corrupted byte offsets.
    corrupt: BTreeMap<u32, BTreeSet<usize>>,
}

impl Model {
    fn corrupt_children(&self) -> usize {
        self.corrupt.values().filter(|s| !s.is_empty()).count()
    }
}

fn run(n: usize, t: usize, rewrite: bool, order: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = Config::new(n, t).with_rewrite_corrupted(rewrite);
    let mut m = Mem::uniform(config, SIZE, 0);
    m.order = Order::Shuffle(order);
    let mut model = Model {
        data: vec![0; SIZE],
        names: (0..n as u32).collect(),
        next: n as u32,
        corrupt: BTreeMap::new(),
    };
    for op in ops {
        let seen = m.events().len();
        match op {
            Op::Read { off, len } => {
                let (o, d) = m.read(off, len);
                prop_assert!(matches!(o, Outcome::Read { .. }), "read failed: {o:?}");
                let (a, b) = (off as usize, (off + len) as usize);
                prop_assert_eq!(
                    d.as_deref(),
                    Some(&model.data[a..b]),
                    "R-READ-6: wrong data"
                );
                let reported: BTreeSet<u32> = m.events()[seen..]
                    .iter()
                    .map(|(_, e)| match e {
                        Event::ReportBad {
                            child, error: None, ..
                        } => Ok(child.0),
                        other => Err(format!("unexpected event {other:?}")),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(TestCaseError::fail)?;
                let bad: BTreeSet<u32> = model
                    .corrupt
                    .iter()
                    .filter(|(_, s)| s.range(a..b).next().is_some())
                    .map(|(&c, _)| c)
                    .collect();
                prop_assert_eq!(&reported, &bad, "R-VOTE-4: reported children");
                if rewrite {
                    // R-READ-7: the losers now hold the winner's bytes.
                    for c in &bad {
                        prop_assert_eq!(&m.disk(*c)[a..b], &model.data[a..b]);
                        let s = model.corrupt.get_mut(c).expect("tracked");
                        let gone: Vec<usize> = s.range(a..b).copied().collect();
                        for x in gone {
                            s.remove(&x);
                        }
                    }
                }
            }
            Op::Write { off, len, .. } | Op::Zero { off, len } => {
                let (a, b) = (off as usize, (off + len) as usize);
                let (zero, fill) = match op {
                    Op::Write { fill, .. } => (false, fill),
                    _ => (true, 0),
                };
                let o = if zero {
                    m.write_zeroes(off, len)
                } else {
                    m.write(off, &vec![fill; b - a])
                };
                prop_assert_eq!(o, Outcome::Done);
                model.data[a..b].fill(fill);
                for s in model.corrupt.values_mut() {
                    let gone: Vec<usize> = s.range(a..b).copied().collect();
                    for x in gone {
                        s.remove(&x);
                    }
                }
                prop_assert_eq!(m.events().len(), seen, "a healthy write reports nothing");
            }
            Op::Flush => prop_assert_eq!(m.flush(), Outcome::Done),
            Op::Add => {
                if model.names.len() == 16 {
                    continue;
                }
                // R-MEMBER-1: the newcomer is children.<next>.
                let id = m.add_child_with(model.data.clone());
                prop_assert_eq!(id, ChildId(model.next));
                model.names.push(model.next);
                model.next += 1;
            }
            Op::Remove { pick } => {
                let victim = model.names[pick % model.names.len()];
                let after = model.names.len() - 1;
                let corrupt_after = model.corrupt_children()
                    - usize::from(model.corrupt.get(&victim).is_some_and(|s| !s.is_empty()));
                if model.names.len() > t && corrupt_after > safe(after, t) {
                    continue; // would leave reads without a right answer
                }
                let r = m.remove_child(ChildId(victim));
                if model.names.len() <= t {
                    // R-MEMBER-2
                    prop_assert_eq!(r, Err(MemberError::BelowThreshold { threshold: t }));
                } else {
                    prop_assert_eq!(r, Ok(()));
                    model.names.retain(|&c| c != victim);
                    model.corrupt.remove(&victim);
                    if victim + 1 == model.next {
                        model.next -= 1;
                    }
                }
            }
            Op::Corrupt { pick, at } => {
                let c = model.names[pick % model.names.len()];
                let already = model.corrupt.get(&c).is_some_and(|s| !s.is_empty());
                if !already && model.corrupt_children() + 1 > safe(model.names.len(), t) {
                    continue;
                }
                if model.corrupt.get(&c).is_some_and(|s| s.contains(&at)) {
                    continue; // flipping twice would heal it
                }
                m.disk_mut(c)[at] ^= 0x20;
                model.corrupt.entry(c).or_default().insert(at);
            }
        }
        let ids: Vec<u32> = m.checker().children().iter().map(|c| c.0).collect();
        prop_assert_eq!(&ids, &model.names, "R-MEMBER-1: child names");
        prop_assert!(m.checker().is_idle());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// R-MEMBER-1..4, R-READ-6..7, R-WRITE-1..3: random sequences against the model.
    #[test]
    fn sequences_with_membership_changes(
        (n, t) in (1usize..=6).prop_flat_map(|n| (Just(n), 1..=n)),
        rewrite in any::<bool>(),
        order in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(n, t, rewrite, order, ops)?;
    }
}
