//! SPEC.md R-READ-1..8 (quorum reads, rewrite, blkverify) and R-FIFO-1..2
//! (fifo reads, and the opt-in fifo repair).

mod spec_util;
mod support;

use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Error, NoBuffers, OpType, Outcome, Quorum,
    ReadPattern, Request, RequestId,
};
use spec_util::{done, drain, ev, failure, pattern, rb, read_ok, run, snapshot};
use support::{Mem, Order};

const ID: RequestId = RequestId(1);

fn core(cfg: Config) -> Quorum {
    Quorum::new(cfg).expect("valid config")
}

fn read_action(slot: usize, offset: u64, len: u64) -> Action {
    Action::Read {
        id: ID,
        slot,
        child: ChildId(slot as u32),
        offset,
        len,
    }
}

fn rewrite_action(slot: usize, source: usize, offset: u64, len: u64) -> Action {
    Action::Rewrite {
        id: ID,
        slot,
        child: ChildId(slot as u32),
        source,
        offset,
        len,
    }
}

fn data(b: u8, len: usize) -> Result<Vec<u8>, Errno> {
    Ok(vec![b; len])
}

/// R-READ-1: one read per child, all issued at submission, each into its own
/// slot; nothing else is queued.
#[test]
fn r_read_1_reads_every_child_at_once() {
    for n in 1..=5 {
        let mut q = core(Config::new(n, 1));
        q.submit(
            ID,
            Request::Read {
                offset: 1000,
                len: 100,
            },
        )
        .unwrap();
        let want: Vec<_> = (0..n).map(|s| read_action(s, 1000, 100)).collect();
        assert_eq!(drain(&mut q), want);
        assert_eq!(q.in_flight(), 1);
        assert!(!q.is_idle());
        // The core reads no buffer before the last completion.
        for s in 0..n - 1 {
            q.handle_read(ID, s, Ok(()), &NoBuffers).unwrap();
            assert_eq!(drain(&mut q), vec![]);
        }
        let bufs = vec![vec![9u8; 100]; n];
        q.handle_read(ID, n - 1, Ok(()), bufs.as_slice()).unwrap();
        assert_eq!(drain(&mut q), vec![done(1, read_ok(0, 0))]);
        assert_eq!(q.in_flight(), 0);
        assert!(q.is_idle());
    }
}

/// R-READ-2: a failing child is reported at once, before the others complete,
/// with its strerror; the request still succeeds if the rest reach the threshold.
#[test]
fn r_read_2_errors_reported_at_once() {
    let mut q = core(Config::new(3, 2));
    q.submit(
        ID,
        Request::Read {
            offset: 1000,
            len: 100,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut q).len(), 3);
    q.handle_read(ID, 1, Err(Errno::EIO), &NoBuffers).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![ev(1, rb(OpType::Read, Some(Errno::EIO), 1, 1, 2))]
    );
    q.handle_read(ID, 2, Ok(()), &NoBuffers).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    let bufs = [vec![5u8; 100], vec![], vec![5u8; 100]];
    q.handle_read(ID, 0, Ok(()), &bufs).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(0, 0))]);

    // The last completion failing: its report comes before the completion.
    let mut q = core(Config::new(3, 2));
    let r = run(
        &mut q,
        1,
        Request::Read { offset: 0, len: 8 },
        &[data(1, 8), data(1, 8), Err(Errno::ENOSPC)],
        &[],
    );
    assert_eq!(
        r.log[3..],
        [
            ev(1, rb(OpType::Read, Some(Errno::ENOSPC), 2, 0, 1)),
            done(1, read_ok(0, 0)),
        ]
    );
    // A failed slot's buffer is not needed, even on the last call.
    let mut q = core(Config::new(3, 2));
    q.submit(ID, Request::Read { offset: 0, len: 8 }).unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    let bufs = [vec![1u8; 8], vec![1u8; 8], vec![]];
    q.handle_read(ID, 2, Err(Errno::EIO), &bufs).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Read, Some(Errno::EIO), 2, 0, 1)),
            done(1, read_ok(0, 0))
        ]
    );
}

/// R-READ-3: fewer than `threshold` successes fails with the error vote and a
/// FAILURE, after the reports; exactly `threshold` successes is enough.
#[test]
fn r_read_3_threshold_boundary() {
    // n = 5, t = 3: two failures → success from the first good slot.
    let mut q = core(Config::new(5, 3));
    let reads = [
        Err(Errno::EIO),
        data(7, 16),
        Err(Errno::ENOSPC),
        data(7, 16),
        data(7, 16),
    ];
    let r = run(
        &mut q,
        1,
        Request::Read {
            offset: 512,
            len: 16,
        },
        &reads,
        &[],
    );
    assert_eq!(r.outcome(), read_ok(1, 1));
    assert_eq!(
        r.events(),
        vec![
            rb(OpType::Read, Some(Errno::EIO), 0, 1, 1),
            rb(OpType::Read, Some(Errno::ENOSPC), 2, 1, 1),
        ]
    );
    // Three failures → the error vote: EIO(c0) ENOSPC(c2) ENOSPC(c4) → ENOSPC.
    let reads = [
        Err(Errno::EIO),
        data(7, 16),
        Err(Errno::ENOSPC),
        data(7, 16),
        Err(Errno::ENOSPC),
    ];
    let r = run(
        &mut q,
        2,
        Request::Read {
            offset: 512,
            len: 16,
        },
        &reads,
        &[],
    );
    assert_eq!(
        r.log[5..],
        [
            Action::Event {
                id: RequestId(2),
                event: rb(OpType::Read, Some(Errno::EIO), 0, 1, 1)
            },
            Action::Event {
                id: RequestId(2),
                event: rb(OpType::Read, Some(Errno::ENOSPC), 2, 1, 1)
            },
            Action::Event {
                id: RequestId(2),
                event: rb(OpType::Read, Some(Errno::ENOSPC), 4, 1, 1)
            },
            Action::Event {
                id: RequestId(2),
                event: failure(1, 1)
            },
            done(2, Outcome::Failed(Errno::ENOSPC)),
        ]
    );
    // threshold = n: a single failure fails the read.
    let mut q = core(Config::new(3, 3));
    let r = run(
        &mut q,
        1,
        Request::Read { offset: 0, len: 4 },
        &[data(1, 4), Err(Errno::EPERM), data(1, 4)],
        &[],
    );
    assert_eq!(r.outcome(), Outcome::Failed(Errno::EPERM));
    assert_eq!(
        r.events(),
        vec![rb(OpType::Read, Some(Errno::EPERM), 1, 0, 1), failure(0, 1)]
    );
    // threshold = 1: one success among failures is enough.
    let mut q = core(Config::new(3, 1));
    let r = run(
        &mut q,
        1,
        Request::Read { offset: 0, len: 4 },
        &[Err(Errno::EIO), Err(Errno::EIO), data(3, 4)],
        &[],
    );
    assert_eq!(r.outcome(), read_ok(2, 2));
    assert_eq!(r.events().len(), 2);
    // Everything fails with threshold 1: voted error and FAILURE.
    let r = run(
        &mut q,
        2,
        Request::Read { offset: 0, len: 4 },
        &[Err(Errno::EIO), Err(Errno::EIO), Err(Errno::EIO)],
        &[],
    );
    assert_eq!(r.outcome(), Outcome::Failed(Errno::EIO));
    assert_eq!(r.events().last(), Some(&failure(0, 1)));
    assert_eq!(r.events().len(), 4);
}

/// R-READ-4: identical successful reads: the first successful slot's buffer,
/// no event.
#[test]
fn r_read_4_all_agree() {
    let mut m = Mem::new(Config::new(4, 4), pattern("C C C C", 2048));
    let (o, d) = m.read(100, 1000);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0xcc; 1000]);
    assert!(m.events().is_empty());
    assert_eq!(m.log().len(), 5); // four reads, one completion

    let mut m = Mem::new(Config::new(4, 2), pattern("A A A A", 2048));
    m.faults.read.insert(ChildId(0), Errno::EIO);
    m.faults.read.insert(ChildId(1), Errno::EIO);
    let (o, d) = m.read(0, 2048);
    assert_eq!(o, read_ok(2, 2));
    assert_eq!(d.unwrap(), vec![0xaa; 2048]);
    assert_eq!(m.events().len(), 2);
}

/// R-READ-5: when the winner has fewer than `threshold` members the read fails
/// with EIO (not the children's errors) and a FAILURE, no mismatch reported.
#[test]
fn r_read_5_no_quorum_on_content() {
    let cases: [(&str, usize); 4] = [("A B C", 2), ("A A B", 3), ("A B A B C", 3), ("A B", 2)];
    for (pat, t) in cases {
        let reads: Vec<_> = pattern(pat, 64).into_iter().map(Ok).collect();
        let mut q = core(Config::new(reads.len(), t));
        let r = run(
            &mut q,
            1,
            Request::Read {
                offset: 1000,
                len: 64,
            },
            &reads,
            &[],
        );
        let n = reads.len();
        assert_eq!(
            r.log[n..],
            [ev(1, failure(1, 2)), done(1, Outcome::Failed(Errno::EIO))],
            "{pat} t={t}"
        );
    }
    // With failed children too: their reports stay, the error is still EIO.
    let mut q = core(Config::new(3, 2));
    let r = run(
        &mut q,
        1,
        Request::Read {
            offset: 1000,
            len: 100,
        },
        &[Err(Errno::ENOSPC), data(0xaa, 100), data(0xbb, 100)],
        &[],
    );
    assert_eq!(r.outcome(), Outcome::Failed(Errno::EIO));
    assert_eq!(
        r.events(),
        vec![
            rb(OpType::Read, Some(Errno::ENOSPC), 0, 1, 2),
            failure(1, 2)
        ]
    );
    // Winner count == threshold succeeds.
    for (pat, t, slot, losers) in [
        ("A A B", 2, 0, vec![2]),
        ("A B A B C", 2, 1, vec![4, 2, 0]),
        ("A B C C", 2, 2, vec![1, 0]),
        ("A B B A C C C", 3, 4, vec![2, 1, 3, 0]),
    ] {
        let reads: Vec<_> = pattern(pat, 8).into_iter().map(Ok).collect();
        let mut q = core(Config::new(reads.len(), t));
        let r = run(&mut q, 1, Request::Read { offset: 0, len: 8 }, &reads, &[]);
        assert_eq!(r.outcome(), read_ok(slot, slot as u32), "{pat}");
        let want: Vec<_> = losers
            .iter()
            .map(|&c| rb(OpType::Read, None, c, 0, 1))
            .collect();
        assert_eq!(r.events(), want, "{pat}");
    }
}

/// R-READ-6: the winner's content is the result; every child of every losing
/// version is reported without an error, in R-VOTE-4 order, before completion.
#[test]
fn r_read_6_losers_reported() {
    let mut disks = pattern("A A B A C", 4096);
    disks[4][4000] = 0; // differs only outside the read
    disks[2] = vec![0xaa; 4096];
    disks[2][1050] ^= 0x80; // differs in one bit inside the read
    let mut m = Mem::new(Config::new(5, 2), disks);
    let (o, d) = m.read(1000, 100);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0xaa; 100]);
    // c4 holds C everywhere in the range; c2 differs by one bit.
    assert_eq!(
        m.events_of(ID),
        vec![
            rb(OpType::Read, None, 4, 1, 2),
            rb(OpType::Read, None, 2, 1, 2)
        ]
    );
    // Reports precede the completion, which is last.
    assert!(matches!(m.log().last(), Some(Action::Complete { .. })));
    assert!(matches!(m.log()[5], Action::Event { .. }));
    assert!(matches!(m.log()[6], Action::Event { .. }));
    assert_eq!(m.log().len(), 8);
    // No rewrite without rewrite-corrupted.
    assert!(!m.log().iter().any(|a| matches!(a, Action::Rewrite { .. })));
    assert_eq!(m.disk(2)[1050], 0x2a);
}

/// R-READ-7: losers are rewritten with the winner (source = winner's first
/// slot, the request's range); the request completes only after the last
/// rewrite; rewrite errors are ignored and not reported; failed children are
/// not rewritten.
#[test]
fn r_read_7_rewrite_then_complete() {
    let mut q = core(Config::new(6, 2).with_rewrite_corrupted(true));
    q.submit(
        ID,
        Request::Read {
            offset: 1000,
            len: 100,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut q).len(), 6);
    let bufs = [
        vec![0xaa; 100],
        vec![0xbb; 100],
        vec![0xaa; 100],
        vec![0xcc; 100],
        vec![0xbb; 100],
        vec![],
    ];
    q.handle_read(ID, 5, Err(Errno::EIO), &NoBuffers).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![ev(1, rb(OpType::Read, Some(Errno::EIO), 5, 1, 2))]
    );
    for s in 0..4 {
        q.handle_read(ID, s, Ok(()), &NoBuffers).unwrap();
    }
    assert_eq!(drain(&mut q), vec![]);
    q.handle_read(ID, 4, Ok(()), &bufs).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Read, None, 3, 1, 2)),
            ev(1, rb(OpType::Read, None, 2, 1, 2)),
            ev(1, rb(OpType::Read, None, 0, 1, 2)),
            rewrite_action(3, 1, 1000, 100),
            rewrite_action(2, 1, 1000, 100),
            rewrite_action(0, 1, 1000, 100),
        ]
    );
    assert_eq!(q.in_flight(), 1);
    assert!(!q.is_idle());
    // Neither the winner nor the failed child is being rewritten.
    for s in [1, 4, 5] {
        assert_eq!(
            q.handle_rewrite(ID, s, Ok(())),
            Err(Error::UnexpectedCompletion {
                id: ID,
                slot: s,
                op: ChildOp::Rewrite
            })
        );
    }
    // Reads are over: a read or write completion is refused.
    assert!(matches!(
        q.handle_read(ID, 2, Ok(()), &bufs),
        Err(Error::UnexpectedCompletion { .. })
    ));
    assert!(matches!(
        q.handle_write(ID, 2, Ok(())),
        Err(Error::UnexpectedCompletion { .. })
    ));
    // A failing rewrite: no event, no completion yet.
    q.handle_rewrite(ID, 3, Err(Errno::EIO)).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    assert_eq!(
        q.handle_rewrite(ID, 3, Ok(())),
        Err(Error::UnexpectedCompletion {
            id: ID,
            slot: 3,
            op: ChildOp::Rewrite
        })
    );
    q.handle_rewrite(ID, 0, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    assert_eq!(q.in_flight(), 1);
    q.handle_rewrite(ID, 2, Err(Errno::ENOSPC)).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(1, 1))]);
    assert_eq!(q.in_flight(), 0);
    assert!(q.is_idle());
    assert_eq!(
        q.handle_rewrite(ID, 2, Ok(())),
        Err(Error::UnknownRequest(ID))
    );
}

/// R-READ-7 through the in-memory driver: only the request's range of the
/// losers is repaired, failed children and rewrite failures are left alone,
/// and the outcome and events do not depend on rewrite errors.
#[test]
fn r_read_7_repairs_disks() {
    for rewrite_fails in [false, true] {
        let mut disks = pattern("A B A C B", 4096);
        disks.push(vec![0xdd; 4096]);
        let mut m = Mem::new(Config::new(6, 2).with_rewrite_corrupted(true), disks);
        m.faults.read.insert(ChildId(5), Errno::EIO);
        if rewrite_fails {
            m.faults.rewrite.insert(ChildId(3), Errno::ENOSPC);
        }
        let (o, d) = m.read(1000, 100);
        assert_eq!(o, read_ok(1, 1));
        assert_eq!(d.unwrap(), vec![0xbb; 100]);
        assert_eq!(
            m.events_of(ID),
            vec![
                rb(OpType::Read, Some(Errno::EIO), 5, 1, 2),
                rb(OpType::Read, None, 3, 1, 2),
                rb(OpType::Read, None, 2, 1, 2),
                rb(OpType::Read, None, 0, 1, 2),
            ]
        );
        for c in [0u32, 2, 3] {
            let want = if rewrite_fails && c == 3 { 0xcc } else { 0xbb };
            let disk = m.disk(c);
            assert_eq!(disk[1000..1100], [want; 100], "child {c}");
            let old = if c == 3 { 0xcc } else { 0xaa };
            assert_eq!(disk[999], old);
            assert_eq!(disk[1100], old);
        }
        assert_eq!(m.disk(1), &[0xbb; 4096][..]);
        assert_eq!(m.disk(4), &[0xbb; 4096][..]);
        assert_eq!(m.disk(5), &[0xdd; 4096][..]);
        // The completion is the very last action.
        assert_eq!(m.log().last(), Some(&done(1, read_ok(1, 1))));
    }
}

/// R-READ-7: nothing to rewrite when all agree, or when the read failed.
#[test]
fn r_read_7_no_rewrite_without_losers() {
    let cfg = Config::new(3, 2).with_rewrite_corrupted(true);
    let mut q = core(cfg);
    let r = run(
        &mut q,
        1,
        Request::Read { offset: 0, len: 8 },
        &[data(1, 8), Err(Errno::EIO), data(1, 8)],
        &[],
    );
    assert_eq!(r.outcome(), read_ok(0, 0));
    assert!(r.rewrites().is_empty());
    assert_eq!(r.log.len(), 5);
    assert!(q.is_idle());
    // No quorum on content: FAILURE, no rewrite.
    let r = run(
        &mut q,
        2,
        Request::Read { offset: 0, len: 8 },
        &[data(1, 8), data(2, 8), data(3, 8)],
        &[],
    );
    assert_eq!(r.outcome(), Outcome::Failed(Errno::EIO));
    assert!(r.rewrites().is_empty());
    // Too many I/O errors: no rewrite.
    let r = run(
        &mut q,
        3,
        Request::Read { offset: 0, len: 8 },
        &[data(1, 8), Err(Errno::EIO), Err(Errno::EIO)],
        &[],
    );
    assert_eq!(r.outcome(), Outcome::Failed(Errno::EIO));
    assert!(r.rewrites().is_empty());
    // One loser: exactly one rewrite, then completion.
    let r = run(
        &mut q,
        4,
        Request::Read { offset: 0, len: 8 },
        &[data(1, 8), data(2, 8), data(1, 8)],
        &[],
    );
    assert_eq!(r.rewrites(), vec![(1, 0)]);
    assert_eq!(r.outcome(), read_ok(0, 0));
    assert!(matches!(r.log.last(), Some(Action::Complete { .. })));
}

/// R-READ-8: blkverify: differing children end the request with the absolute
/// offset of the first differing byte; no event, no rewrite.
#[test]
fn r_read_8_blkverify_mismatch() {
    for (diffs, offset, want) in [
        (vec![37usize], 1000u64, 1037u64),
        (vec![0], 1000, 1000),
        (vec![99], 1000, 1099),
        (vec![50, 10, 70], 1000, 1010),
        (vec![0], 0, 0),
        (vec![4095], 1 << 40, (1 << 40) + 4095),
    ] {
        let len = if offset == 1000 { 100 } else { 4096 };
        let a = vec![0xab; len];
        let mut b = a.clone();
        for &d in &diffs {
            b[d] ^= 1;
        }
        let mut q = core(Config::new(2, 2).with_blkverify(true));
        q.submit(
            ID,
            Request::Read {
                offset,
                len: len as u64,
            },
        )
        .unwrap();
        assert_eq!(drain(&mut q).len(), 2);
        // Completion order does not matter: slot 1 first.
        q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
        q.handle_read(ID, 0, Ok(()), &[a.clone(), b.clone()])
            .unwrap();
        assert_eq!(
            drain(&mut q),
            vec![done(1, Outcome::ContentsMismatch { offset: want })],
            "diffs {diffs:?}"
        );
        assert!(q.is_idle());
        // Same with the buffers swapped.
        q.submit(
            ID,
            Request::Read {
                offset,
                len: len as u64,
            },
        )
        .unwrap();
        drain(&mut q);
        q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
        q.handle_read(ID, 1, Ok(()), &[b, a]).unwrap();
        assert_eq!(
            drain(&mut q),
            vec![done(1, Outcome::ContentsMismatch { offset: want })]
        );
    }
}

/// R-READ-8: blkverify with equal children reads normally; an I/O error
/// fails the threshold (2) like any read.
#[test]
fn r_read_8_blkverify_agree_and_errors() {
    let mut m = Mem::new(Config::new(2, 2).with_blkverify(true), pattern("A A", 1024));
    let (o, d) = m.read(24, 1000);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0xaa; 1000]);
    assert!(m.events().is_empty());

    let mut m = Mem::new(Config::new(2, 2).with_blkverify(true), pattern("A B", 1024));
    m.faults.read.insert(ChildId(1), Errno::EIO);
    let (o, _) = m.read(0, 1024);
    assert_eq!(o, Outcome::Failed(Errno::EIO));
    assert_eq!(
        m.events_of(ID),
        vec![rb(OpType::Read, Some(Errno::EIO), 1, 0, 2), failure(0, 2)]
    );
    // Mismatch through the driver, unaligned.
    let mut m = Mem::new(Config::new(2, 2).with_blkverify(true), pattern("A A", 4096));
    m.disk_mut(1)[2222] = 0;
    let (o, d) = m.read(2000, 1000);
    assert_eq!(o, Outcome::ContentsMismatch { offset: 2222 });
    assert_eq!(d, None);
    assert!(m.events().is_empty());
    // Outside the read range the children agree.
    let (o, _) = m.read(0, 2000);
    assert_eq!(o, read_ok(0, 0));
}

/// R-FIFO-1: child 0 only; an error is reported and the next child read, in
/// order; the first success is the result, unchecked.
#[test]
fn r_fifo_1_in_order_until_success() {
    let mut q = core(Config::new(3, 2).with_read_pattern(ReadPattern::Fifo));
    q.submit(
        ID,
        Request::Read {
            offset: 1000,
            len: 100,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut q), vec![read_action(0, 1000, 100)]);
    // Slot 1 was never issued.
    let before = snapshot(&q);
    assert_eq!(
        q.handle_read(ID, 1, Ok(()), &NoBuffers),
        Err(Error::UnexpectedCompletion {
            id: ID,
            slot: 1,
            op: ChildOp::Read
        })
    );
    assert_eq!(snapshot(&q), before);
    q.handle_read(ID, 0, Err(Errno::EIO), &NoBuffers).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Read, Some(Errno::EIO), 0, 1, 2)),
            read_action(1, 1000, 100)
        ]
    );
    assert_eq!(
        q.handle_read(ID, 0, Ok(()), &NoBuffers),
        Err(Error::UnexpectedCompletion {
            id: ID,
            slot: 0,
            op: ChildOp::Read
        })
    );
    // The data is not looked at: no buffer needed.
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(1, 1))]);
    assert!(q.is_idle());

    // Child 0 succeeds: one read only, even when the children differ.
    let cfg = Config::new(3, 3).with_read_pattern(ReadPattern::Fifo);
    let mut m = Mem::new(cfg, pattern("A B C", 512));
    let (o, d) = m.read(0, 512);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0xaa; 512]);
    assert_eq!(m.log().len(), 2);
    assert!(m.events().is_empty());
    // Children 0 and 1 fail: child 2's data.
    m.faults.read.insert(ChildId(0), Errno::EIO);
    m.faults.read.insert(ChildId(1), Errno::ENOSPC);
    let (o, d) = m.read(0, 512);
    assert_eq!(o, read_ok(2, 2));
    assert_eq!(d.unwrap(), vec![0xcc; 512]);
    assert_eq!(
        m.events_of(RequestId(2)),
        vec![
            rb(OpType::Read, Some(Errno::EIO), 0, 0, 1),
            rb(OpType::Read, Some(Errno::ENOSPC), 1, 0, 1),
        ]
    );
    let reads: Vec<_> = m
        .log()
        .iter()
        .filter_map(|a| match *a {
            Action::Read {
                id: RequestId(2),
                slot,
                ..
            } => Some(slot),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![0, 1, 2]);
}

/// R-FIFO-2: all fail → the last child's error (not the vote), no FAILURE.
#[test]
fn r_fifo_2_all_fail_last_error() {
    for (errs, want) in [
        (vec![Errno::EIO, Errno::EIO, Errno::ENOSPC], Errno::ENOSPC),
        (vec![Errno::ENOSPC, Errno::EPERM], Errno::EPERM),
        (vec![Errno::EROFS], Errno::EROFS),
    ] {
        let n = errs.len();
        let cfg = Config::new(n, n).with_read_pattern(ReadPattern::Fifo);
        let mut m = Mem::uniform(cfg, 1024, 0);
        for (c, e) in errs.iter().enumerate() {
            m.faults.read.insert(ChildId(c as u32), *e);
        }
        let (o, _) = m.read(1000, 24);
        assert_eq!(o, Outcome::Failed(want));
        let reports: Vec<_> = errs
            .iter()
            .enumerate()
            .map(|(c, e)| rb(OpType::Read, Some(*e), c as u32, 1, 1))
            .collect();
        assert_eq!(m.events_of(ID), reports);
        assert_eq!(m.log().last(), Some(&done(1, Outcome::Failed(want))));
        // n reads, n reports, one completion.
        assert_eq!(m.log().len(), 2 * n + 1);
    }
}

/// Fifo repair (opt-in improvement): the children that failed before the
/// successful one are rewritten from it, and the request completes after.
#[test]
fn fifo_rewrite_failed_opt_in() {
    let cfg = Config::new(3, 1)
        .with_read_pattern(ReadPattern::Fifo)
        .with_fifo_rewrite_failed(true);
    let mut q = core(cfg);
    q.submit(
        ID,
        Request::Read {
            offset: 1000,
            len: 100,
        },
    )
    .unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Err(Errno::EIO), &NoBuffers).unwrap();
    drain(&mut q);
    q.handle_read(ID, 1, Err(Errno::ENOSPC), &NoBuffers)
        .unwrap();
    drain(&mut q);
    // The source buffer is needed now, and checked.
    let before = snapshot(&q);
    assert_eq!(
        q.handle_read(ID, 2, Ok(()), &NoBuffers),
        Err(Error::BadBuffer {
            id: ID,
            slot: 2,
            expected: 100,
            got: None
        })
    );
    assert_eq!(
        q.handle_read(ID, 2, Ok(()), &[vec![], vec![], vec![1; 99]]),
        Err(Error::BadBuffer {
            id: ID,
            slot: 2,
            expected: 100,
            got: Some(99)
        })
    );
    assert_eq!(snapshot(&q), before);
    assert_eq!(drain(&mut q), vec![]);
    q.handle_read(ID, 2, Ok(()), &[vec![], vec![], vec![1; 100]])
        .unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            rewrite_action(0, 2, 1000, 100),
            rewrite_action(1, 2, 1000, 100)
        ]
    );
    q.handle_rewrite(ID, 1, Err(Errno::EIO)).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    assert_eq!(q.in_flight(), 1);
    q.handle_rewrite(ID, 0, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(2, 2))]);
    assert!(q.is_idle());

    // Child 0 answers: nothing to repair, no buffer needed.
    q.submit(ID, Request::Read { offset: 0, len: 8 }).unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(0, 0))]);

    // Everything fails: nothing to repair from.
    q.submit(ID, Request::Read { offset: 0, len: 8 }).unwrap();
    for s in 0..3 {
        drain(&mut q);
        q.handle_read(ID, s, Err(Errno::EIO), &NoBuffers).unwrap();
    }
    let last = drain(&mut q);
    assert_eq!(last.last(), Some(&done(1, Outcome::Failed(Errno::EIO))));
    assert!(!last.iter().any(|a| matches!(a, Action::Rewrite { .. })));

    // Through the driver: the failed children get the data in the range.
    let mut m = Mem::new(cfg, pattern("A B C", 2048));
    m.faults.read.insert(ChildId(0), Errno::EIO);
    m.faults.read.insert(ChildId(1), Errno::EIO);
    let (o, d) = m.read(1000, 100);
    assert_eq!(o, read_ok(2, 2));
    assert_eq!(d.unwrap(), vec![0xcc; 100]);
    assert_eq!(m.disk(0)[1000..1100], [0xcc; 100]);
    assert_eq!(m.disk(1)[1000..1100], [0xcc; 100]);
    assert_eq!((m.disk(0)[999], m.disk(0)[1100]), (0xaa, 0xaa));
    assert_eq!((m.disk(1)[999], m.disk(1)[1100]), (0xbb, 0xbb));
    assert_eq!(m.events().len(), 2);
}

/// R-FIFO-1 without the opt-in: no repair, no buffer needed, immediate completion.
#[test]
fn fifo_without_opt_in_does_not_repair() {
    let mut q = core(Config::new(3, 1).with_read_pattern(ReadPattern::Fifo));
    q.submit(ID, Request::Read { offset: 0, len: 8 }).unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Err(Errno::EIO), &NoBuffers).unwrap();
    drain(&mut q);
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(1, 1))]);
    assert!(q.is_idle());

    let cfg = Config::new(2, 1).with_read_pattern(ReadPattern::Fifo);
    let mut m = Mem::new(cfg, pattern("A B", 512));
    m.faults.read.insert(ChildId(0), Errno::EIO);
    let (o, _) = m.read(0, 512);
    assert_eq!(o, read_ok(1, 1));
    assert_eq!(m.disk(0), &[0xaa; 512][..]);
}

/// R-READ-1..7 are independent of completion order.
#[test]
fn reads_independent_of_completion_order() {
    let mut base = None;
    for order in [
        Order::Issue,
        Order::Reverse,
        Order::Shuffle(1),
        Order::Shuffle(2),
        Order::Shuffle(3),
        Order::Shuffle(99),
    ] {
        let mut disks = pattern("A B A C B A", 2048);
        disks.push(vec![0; 2048]);
        let mut m = Mem::new(Config::new(7, 3).with_rewrite_corrupted(true), disks);
        m.order = order;
        m.faults.read.insert(ChildId(6), Errno::EIO);
        let (o, d) = m.read(1000, 100);
        let mut events: Vec<String> = m.events().iter().map(|e| format!("{e:?}")).collect();
        events.sort();
        let disks: Vec<Vec<u8>> = (0..7).map(|c| m.disk(c).to_vec()).collect();
        let got = (o, d, events, disks);
        assert_eq!(got.0, read_ok(0, 0));
        match &base {
            None => base = Some(got),
            Some(b) => assert_eq!(&got, b, "{order:?}"),
        }
    }
}
