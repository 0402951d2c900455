//! SPEC.md "Deliberate improvements", ordering: a corrupted-replica rewrite
//! (R-READ-7, and the fifo repair) must never overwrite data written by a
//! later, overlapping write. A read that overlaps a write in flight reports
//! but repairs nothing; a write that overlaps rewrites still running is held
//! back until they finish. Requests that do not overlap — adjacent ranges,
//! flushes, finished requests — are never affected.

mod spec_util;

use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Error, NoBuffers, OpType, Outcome, Quorum,
    ReadPattern, Request, RequestId,
};
use spec_util::{done, drain, ev, rb, read_ok};

fn core() -> Quorum {
    Quorum::new(Config::new(3, 2).with_rewrite_corrupted(true)).expect("config")
}

fn read(offset: u64, len: u64) -> Request {
    Request::Read { offset, len }
}

fn write(offset: u64, len: u64) -> Request {
    Request::Write { offset, len }
}

/// Completes all three reads of `id` with versions A B A: child 1 loses.
fn answer_aba(q: &mut Quorum, id: u64, len: usize) {
    let id = RequestId(id);
    q.handle_read(id, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(id, 1, Ok(()), &NoBuffers).unwrap();
    let bufs = [vec![0xaa; len], vec![0xbb; len], vec![0xaa; len]];
    q.handle_read(id, 2, Ok(()), &bufs).unwrap();
}

fn writes(id: u64, offset: u64, len: u64) -> Vec<Action> {
    (0..3)
        .map(|s| Action::Write {
            id: RequestId(id),
            slot: s,
            child: ChildId(s as u32),
            offset,
            len,
        })
        .collect()
}

fn rewrite(id: u64, offset: u64, len: u64) -> Action {
    Action::Rewrite {
        id: RequestId(id),
        slot: 1,
        child: ChildId(1),
        source: 0,
        offset,
        len,
    }
}

fn finish_writes(q: &mut Quorum, id: u64) {
    for s in 0..3 {
        q.handle_write(RequestId(id), s, Ok(())).unwrap();
    }
}

/// A read whose range a write, submitted while the read is undecided,
/// overlaps: it reports the loser but does not rewrite it.
#[test]
fn write_during_read_cancels_repair() {
    for (wo, wl) in [
        (1050, 10),
        (1000, 100),
        (900, 101),
        (1099, 500),
        (0, 1 << 20),
    ] {
        let mut q = core();
        q.submit(RequestId(1), read(1000, 100)).unwrap();
        assert_eq!(drain(&mut q).len(), 3);
        q.submit(RequestId(2), write(wo, wl)).unwrap();
        // The write is not held: no rewrite is running.
        assert_eq!(drain(&mut q), writes(2, wo, wl), "write {wo}+{wl}");
        answer_aba(&mut q, 1, 100);
        assert_eq!(
            drain(&mut q),
            vec![
                ev(1, rb(OpType::Read, None, 1, 1, 2)),
                done(1, read_ok(0, 0))
            ],
            "write {wo}+{wl}"
        );
        finish_writes(&mut q, 2);
        assert_eq!(drain(&mut q), vec![done(2, Outcome::Done)]);
        assert!(q.is_idle());
    }
}

/// A read submitted while an overlapping write (or write-zeroes) is in
/// flight does not repair.
#[test]
fn read_during_write_does_not_repair() {
    for zeroes in [false, true] {
        let mut q = core();
        let w = if zeroes {
            Request::WriteZeroes {
                offset: 0,
                len: 1024,
            }
        } else {
            write(0, 1024)
        };
        q.submit(RequestId(1), w).unwrap();
        assert_eq!(drain(&mut q).len(), 3);
        q.submit(RequestId(2), read(1000, 100)).unwrap();
        assert_eq!(drain(&mut q).len(), 3);
        answer_aba(&mut q, 2, 100);
        assert_eq!(
            drain(&mut q),
            vec![
                ev(2, rb(OpType::Read, None, 1, 1, 2)),
                done(2, read_ok(0, 0))
            ]
        );
        finish_writes(&mut q, 1);
        assert_eq!(drain(&mut q), vec![done(1, Outcome::Done)]);
        // Once the write is over, the same read repairs again.
        q.submit(RequestId(3), read(1000, 100)).unwrap();
        drain(&mut q);
        answer_aba(&mut q, 3, 100);
        assert_eq!(
            drain(&mut q),
            vec![
                ev(3, rb(OpType::Read, None, 1, 1, 2)),
                rewrite(3, 1000, 100)
            ]
        );
    }
}

/// A write that overlaps rewrites still running waits for them; its child
/// writes are issued right after the last one, after the read's completion.
#[test]
fn write_waits_for_running_rewrites() {
    for zeroes in [false, true] {
        let mut q = core();
        q.submit(RequestId(1), read(1000, 100)).unwrap();
        drain(&mut q);
        answer_aba(&mut q, 1, 100);
        assert_eq!(
            drain(&mut q),
            vec![
                ev(1, rb(OpType::Read, None, 1, 1, 2)),
                rewrite(1, 1000, 100)
            ]
        );
        let w = if zeroes {
            Request::WriteZeroes {
                offset: 1099,
                len: 100,
            }
        } else {
            write(1099, 100)
        };
        q.submit(RequestId(2), w).unwrap();
        assert_eq!(drain(&mut q), vec![]);
        assert_eq!(q.in_flight(), 2);
        // Nothing of the held write may complete yet.
        assert_eq!(
            q.handle_write(RequestId(2), 0, Ok(())),
            Err(Error::UnexpectedCompletion {
                id: RequestId(2),
                slot: 0,
                op: ChildOp::Write
            })
        );
        q.handle_rewrite(RequestId(1), 1, Err(Errno::EIO)).unwrap();
        let mut want = vec![done(1, read_ok(0, 0))];
        want.extend((0..3).map(|s| {
            let (id, slot, child) = (RequestId(2), s, ChildId(s as u32));
            if zeroes {
                Action::WriteZeroes {
                    id,
                    slot,
                    child,
                    offset: 1099,
                    len: 100,
                }
            } else {
                Action::Write {
                    id,
                    slot,
                    child,
                    offset: 1099,
                    len: 100,
                }
            }
        }));
        assert_eq!(drain(&mut q), want);
        finish_writes(&mut q, 2);
        assert_eq!(drain(&mut q), vec![done(2, Outcome::Done)]);
        assert!(q.is_idle());
    }
}

/// A held write waits for every overlapping repair, and is issued once.
#[test]
fn held_write_waits_for_all_and_is_issued_once() {
    let mut q = core();
    q.submit(RequestId(1), read(1000, 100)).unwrap();
    q.submit(RequestId(2), read(1050, 100)).unwrap();
    q.submit(RequestId(3), read(5000, 100)).unwrap();
    assert_eq!(drain(&mut q).len(), 9);
    for id in 1..=3 {
        answer_aba(&mut q, id, 100);
    }
    // All three repair: concurrent reads do not stop each other.
    let rewrites: Vec<_> = drain(&mut q)
        .into_iter()
        .filter(|a| matches!(a, Action::Rewrite { .. }))
        .collect();
    assert_eq!(
        rewrites,
        vec![
            rewrite(1, 1000, 100),
            rewrite(2, 1050, 100),
            rewrite(3, 5000, 100)
        ]
    );
    q.submit(RequestId(4), write(1080, 10)).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    // An unrelated repair finishing does not release it.
    q.handle_rewrite(RequestId(3), 1, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(3, read_ok(0, 0))]);
    // Nor does the first of the two overlapping ones.
    q.handle_rewrite(RequestId(2), 1, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(2, read_ok(0, 0))]);
    q.handle_rewrite(RequestId(1), 1, Ok(())).unwrap();
    let mut want = vec![done(1, read_ok(0, 0))];
    want.extend(writes(4, 1080, 10));
    assert_eq!(drain(&mut q), want);
    // Another repair finishing later does not issue the write again.
    q.submit(RequestId(5), read(8192, 8)).unwrap();
    drain(&mut q);
    answer_aba(&mut q, 5, 8);
    drain(&mut q);
    q.handle_rewrite(RequestId(5), 1, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(5, read_ok(0, 0))]);
    finish_writes(&mut q, 4);
    assert_eq!(drain(&mut q), vec![done(4, Outcome::Done)]);
    assert!(q.is_idle());
}

/// Adjacent ranges, flushes and reads do not count as overlapping writes.
#[test]
fn non_overlapping_requests_are_independent() {
    // Writes that end where the read starts, or start where it ends.
    for (wo, wl) in [
        (900, 100),
        (1100, 100),
        (0, 1000),
        (1100, 1 << 30),
        (5000, 1),
    ] {
        // Write first, then read.
        let mut q = core();
        q.submit(RequestId(1), write(wo, wl)).unwrap();
        drain(&mut q);
        q.submit(RequestId(2), read(1000, 100)).unwrap();
        drain(&mut q);
        answer_aba(&mut q, 2, 100);
        assert_eq!(
            drain(&mut q),
            vec![
                ev(2, rb(OpType::Read, None, 1, 1, 2)),
                rewrite(2, 1000, 100)
            ],
            "write {wo}+{wl} then read"
        );
        // Read first, write during the read, then during its repair.
        let mut q = core();
        q.submit(RequestId(1), read(1000, 100)).unwrap();
        drain(&mut q);
        q.submit(RequestId(2), write(wo, wl)).unwrap();
        assert_eq!(drain(&mut q), writes(2, wo, wl));
        answer_aba(&mut q, 1, 100);
        assert_eq!(drain(&mut q)[1], rewrite(1, 1000, 100));
        q.submit(RequestId(3), write(wo, wl)).unwrap();
        assert_eq!(drain(&mut q), writes(3, wo, wl), "write {wo}+{wl}");
    }
    // A flush in flight does not stop a repair, and is never held.
    let mut q = core();
    q.submit(RequestId(1), Request::Flush).unwrap();
    q.submit(RequestId(2), read(0, 100)).unwrap();
    drain(&mut q);
    answer_aba(&mut q, 2, 100);
    assert_eq!(drain(&mut q)[1], rewrite(2, 0, 100));
    q.submit(RequestId(3), Request::Flush).unwrap();
    assert_eq!(drain(&mut q).len(), 3);
    // A read in flight does not stop another read's repair.
    let mut q = core();
    q.submit(RequestId(1), read(1000, 100)).unwrap();
    q.submit(RequestId(2), read(1000, 100)).unwrap();
    drain(&mut q);
    answer_aba(&mut q, 2, 100);
    assert_eq!(drain(&mut q)[1], rewrite(2, 1000, 100));
    // A read during another read's repair is not held either.
    q.submit(RequestId(3), read(1000, 100)).unwrap();
    assert_eq!(drain(&mut q).len(), 3);
}

/// Finished writes do not matter, wherever their records lie.
#[test]
fn finished_writes_do_not_count() {
    let mut q = core();
    // Places 0 and 1: flushes; place 2: the write.
    q.submit(RequestId(1), Request::Flush).unwrap();
    q.submit(RequestId(2), Request::Flush).unwrap();
    q.submit(RequestId(3), write(1000, 100)).unwrap();
    drain(&mut q);
    finish_writes(&mut q, 3);
    for s in 0..3 {
        q.handle_flush(RequestId(2), s, Ok(())).unwrap();
    }
    drain(&mut q);
    // The read takes place 1; the finished write still sits in place 2.
    q.submit(RequestId(4), read(1000, 100)).unwrap();
    drain(&mut q);
    answer_aba(&mut q, 4, 100);
    assert_eq!(drain(&mut q)[1], rewrite(4, 1000, 100));
    // And a write now is held by that repair, not by the old write.
    q.submit(RequestId(5), write(1000, 100)).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    q.handle_rewrite(RequestId(4), 1, Ok(())).unwrap();
    assert_eq!(drain(&mut q).len(), 4);
}

/// The fifo repair follows the same rule.
#[test]
fn fifo_repair_not_during_overlapping_write() {
    let cfg = Config::new(3, 1)
        .with_read_pattern(ReadPattern::Fifo)
        .with_fifo_rewrite_failed(true);
    for overlapping in [true, false] {
        let mut q: Quorum = Quorum::new(cfg).unwrap();
        let wo = if overlapping { 1050 } else { 1100 };
        q.submit(RequestId(1), write(wo, 10)).unwrap();
        drain(&mut q);
        q.submit(RequestId(2), read(1000, 100)).unwrap();
        drain(&mut q);
        q.handle_read(RequestId(2), 0, Err(Errno::EIO), &NoBuffers)
            .unwrap();
        drain(&mut q);
        let bufs = [vec![], vec![7u8; 100]];
        q.handle_read(RequestId(2), 1, Ok(()), &bufs).unwrap();
        let want = if overlapping {
            vec![done(2, read_ok(1, 1))]
        } else {
            vec![Action::Rewrite {
                id: RequestId(2),
                slot: 0,
                child: ChildId(0),
                source: 1,
                offset: 1000,
                len: 100,
            }]
        };
        assert_eq!(drain(&mut q), want, "overlapping={overlapping}");
    }
}
