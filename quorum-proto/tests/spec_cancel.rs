//! SPEC.md R-CANCEL-1..2 — cancellation — and the drain gate every driver
//! uses before a membership change (R-MEMBER-4).
//!
//! A cancelled request completes at once with `ECANCELED` and says nothing
//! bad about any child; the child operations it had issued stay accounted
//! for until their completions arrive: they still order against
//! overlapping writes, keep the id taken, and hold up a drain.

mod spec_util;
mod support;

use quorum_proto::{
    Action, ChildId, Config, Errno, Error, NoBuffers, OpType, Outcome, Quorum, ReadPattern,
    Request, RequestId,
};
use spec_util::{done, drain, ev, rb, snapshot};

const CANCELED: Outcome = Outcome::Failed(Errno::ECANCELED);

fn id(n: u64) -> RequestId {
    RequestId(n)
}

fn read(offset: u64, len: u64) -> Request {
    Request::Read { offset, len }
}

fn write(offset: u64, len: u64) -> Request {
    Request::Write { offset, len }
}

fn child_ops(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| {
            !matches!(
                a,
                Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. }
            )
        })
        .count()
}

#[test]
fn r_cancel_1_read_completes_at_once_and_reports_nothing_after() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    q.submit(id(1), read(0, 512)).unwrap();
    assert_eq!(child_ops(&drain(&mut q)), 3);
    // A failure before the cancel is reported as usual (R-READ-2)…
    q.handle_read(id(1), 0, Err(Errno::EIO), &NoBuffers)
        .unwrap();
    assert_eq!(
        drain(&mut q),
        [ev(1, rb(OpType::Read, Some(Errno::EIO), 0, 0, 1))]
    );
    // …the cancel completes the request at once, with ECANCELED…
    q.cancel(id(1)).unwrap();
    assert_eq!(drain(&mut q), [done(1, CANCELED)]);
    assert_eq!(q.in_flight(), 0, "completed for the caller");
    assert!(!q.is_idle(), "two child reads are still out (R-CANCEL-2)");
    // …and the operations it had issued end without a word: no report for
    // the failure, no vote, no FAILURE although the threshold is missed.
    q.handle_read(id(1), 1, Err(Errno::ENOSPC), &NoBuffers)
        .unwrap();
    q.handle_read(id(1), 2, Ok(()), &NoBuffers).unwrap();
    assert_eq!(drain(&mut q), []);
    assert!(q.is_idle());
}

#[test]
fn r_cancel_1_failing_write_emits_no_failure_and_no_report() {
    let mut q: Quorum = Quorum::new(Config::new(3, 3)).unwrap();
    q.submit(id(7), write(4096, 1024)).unwrap();
    assert_eq!(child_ops(&drain(&mut q)), 3);
    q.cancel(id(7)).unwrap();
    assert_eq!(drain(&mut q), [done(7, CANCELED)]);
    for slot in 0..3 {
        q.handle_write(id(7), slot, Err(Errno::EIO)).unwrap();
    }
    assert_eq!(drain(&mut q), [], "no REPORT_BAD, no FAILURE");
    assert!(q.is_idle());
}

#[test]
fn r_cancel_1_flush_and_write_zeroes_alike() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    q.submit(id(1), Request::Flush).unwrap();
    q.submit(
        id(2),
        Request::WriteZeroes {
            offset: 0,
            len: 512,
        },
    )
    .unwrap();
    drain(&mut q);
    q.cancel(id(1)).unwrap();
    q.cancel(id(2)).unwrap();
    assert_eq!(drain(&mut q), [done(1, CANCELED), done(2, CANCELED)]);
    q.handle_flush(id(1), 0, Err(Errno::EIO)).unwrap();
    q.handle_write(id(2), 1, Err(Errno::EIO)).unwrap();
    q.handle_flush(id(1), 1, Ok(())).unwrap();
    q.handle_write(id(2), 0, Ok(())).unwrap();
    assert_eq!(drain(&mut q), []);
    assert!(q.is_idle());
}

#[test]
fn r_cancel_1_a_request_with_nothing_outstanding_is_freed_at_once() {
    // A read whose every child already answered but which waits for its
    // rewrites is covered below; here a write held back behind a repair
    // has issued nothing: cancelled, it leaves no trace.
    let mut q: Quorum = Quorum::new(Config::new(3, 2).with_rewrite_corrupted(true)).unwrap();
    q.submit(id(1), read(0, 512)).unwrap();
    drain(&mut q);
    let bufs = [vec![1u8; 512], vec![1; 512], vec![2; 512]];
    for s in 0..3 {
        q.handle_read(id(1), s, Ok(()), &bufs).unwrap();
    }
    drain(&mut q); // the report and the rewrite of slot 2
    q.submit(id(2), write(0, 512)).unwrap();
    assert_eq!(drain(&mut q), [], "held behind the rewrite");
    q.cancel(id(2)).unwrap();
    assert_eq!(drain(&mut q), [done(2, CANCELED)]);
    q.submit(id(2), write(0, 512))
        .expect("the id is free at once: nothing was issued");
    q.cancel(id(2)).unwrap();
    drain(&mut q);
    q.handle_rewrite(id(1), 2, Ok(())).unwrap();
    assert_eq!(
        drain(&mut q),
        [done(
            1,
            Outcome::Read {
                slot: 0,
                child: ChildId(0)
            }
        )]
    );
    assert!(q.is_idle());
}

#[test]
fn r_cancel_1_fifo_read_tries_no_further_child() {
    let mut q: Quorum =
        Quorum::new(Config::new(3, 1).with_read_pattern(ReadPattern::Fifo)).unwrap();
    q.submit(id(1), read(0, 512)).unwrap();
    assert_eq!(child_ops(&drain(&mut q)), 1);
    q.cancel(id(1)).unwrap();
    assert_eq!(drain(&mut q), [done(1, CANCELED)]);
    q.handle_read(id(1), 0, Err(Errno::EIO), &NoBuffers)
        .unwrap();
    assert_eq!(drain(&mut q), [], "no report, and children.1 is not asked");
    assert!(q.is_idle());
}

#[test]
fn r_cancel_1_an_answered_early_read_completes_cancelled() {
    let cfg = Config::new(3, 2).with_early_quorum(true);
    let mut q: Quorum = Quorum::new(cfg).unwrap();
    q.submit(id(1), read(0, 512)).unwrap();
    drain(&mut q);
    let bufs = [vec![5u8; 512], vec![5; 512], vec![6; 512]];
    q.handle_read(id(1), 0, Ok(()), &bufs).unwrap();
    q.handle_read(id(1), 1, Ok(()), &bufs).unwrap();
    let answered = drain(&mut q);
    assert!(matches!(answered[..], [Action::Answer { .. }]));
    q.cancel(id(1)).unwrap();
    assert_eq!(drain(&mut q), [done(1, CANCELED)]);
    // The straggler disagrees, but nothing is said about it any more.
    q.handle_read(id(1), 2, Ok(()), &bufs).unwrap();
    assert_eq!(drain(&mut q), []);
    assert!(q.is_idle());
}

#[test]
fn r_cancel_2_a_cancelled_repair_still_holds_back_a_later_write() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2).with_rewrite_corrupted(true)).unwrap();
    q.submit(id(1), read(0, 512)).unwrap();
    drain(&mut q);
    let bufs = [vec![1u8; 512], vec![2; 512], vec![1; 512]];
    for s in 0..3 {
        q.handle_read(id(1), s, Ok(()), &bufs).unwrap();
    }
    let acts = drain(&mut q);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Rewrite { slot: 1, .. }))
    );
    q.cancel(id(1)).unwrap();
    assert_eq!(drain(&mut q), [done(1, CANCELED)]);
    // The repair is still running: a write to the range must wait for it,
    // or the old data could land after the new.
    q.submit(id(2), write(256, 512)).unwrap();
    assert_eq!(
        drain(&mut q),
        [],
        "held behind the cancelled request's rewrite"
    );
    q.handle_rewrite(id(1), 1, Ok(())).unwrap();
    assert_eq!(child_ops(&drain(&mut q)), 3, "released once it completed");
    for s in 0..3 {
        q.handle_write(id(2), s, Ok(())).unwrap();
    }
    assert_eq!(drain(&mut q), [done(2, Outcome::Done)]);
    assert!(q.is_idle());
}

#[test]
fn r_cancel_2_a_cancelled_write_still_in_flight_forbids_repairs() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2).with_rewrite_corrupted(true)).unwrap();
    q.submit(id(1), write(0, 512)).unwrap();
    drain(&mut q);
    q.cancel(id(1)).unwrap();
    drain(&mut q);
    // Its child writes may still land: a read now may see them split.
    q.submit(id(2), read(0, 512)).unwrap();
    drain(&mut q);
    let bufs = [vec![1u8; 512], vec![1; 512], vec![2; 512]];
    for s in 0..3 {
        q.handle_read(id(2), s, Ok(()), &bufs).unwrap();
    }
    let acts = drain(&mut q);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Rewrite { .. })),
        "no repair while the cancelled write may still land: {acts:?}"
    );
    assert_eq!(
        acts,
        [
            ev(2, rb(OpType::Read, None, 2, 0, 1)),
            done(
                2,
                Outcome::Read {
                    slot: 0,
                    child: ChildId(0)
                }
            )
        ]
    );
    for s in 0..3 {
        q.handle_write(id(1), s, Ok(())).unwrap();
    }
    assert!(q.is_idle());
}

#[test]
fn r_cancel_2_the_id_stays_taken_until_the_operations_end() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    q.submit(id(3), read(0, 512)).unwrap();
    drain(&mut q);
    q.cancel(id(3)).unwrap();
    drain(&mut q);
    assert_eq!(
        q.submit(id(3), read(0, 512)),
        Err(Error::DuplicateId(id(3)))
    );
    q.handle_read(id(3), 0, Ok(()), &NoBuffers).unwrap();
    assert_eq!(
        q.submit(id(3), read(0, 512)),
        Err(Error::DuplicateId(id(3)))
    );
    q.handle_read(id(3), 1, Ok(()), &NoBuffers).unwrap();
    q.submit(id(3), read(0, 512))
        .expect("free once both reads ended");
}

#[test]
fn r_cancel_2_completions_of_a_cancelled_request_are_checked_as_ever() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    q.submit(id(1), write(0, 512)).unwrap();
    drain(&mut q);
    q.cancel(id(1)).unwrap();
    drain(&mut q);
    let before = snapshot(&q);
    assert!(matches!(
        q.handle_read(id(1), 0, Ok(()), &NoBuffers),
        Err(Error::UnexpectedCompletion { .. })
    ));
    assert!(matches!(
        q.handle_write(id(1), 5, Ok(())),
        Err(Error::NoSuchSlot { .. })
    ));
    assert_eq!(snapshot(&q), before);
    q.handle_write(id(1), 0, Ok(())).unwrap();
    assert!(matches!(
        q.handle_write(id(1), 0, Ok(())),
        Err(Error::UnexpectedCompletion { .. })
    ));
    q.handle_write(id(1), 1, Ok(())).unwrap();
    assert_eq!(
        q.handle_write(id(1), 1, Ok(())),
        Err(Error::UnknownRequest(id(1)))
    );
}

#[test]
fn r_cancel_1_cancelling_what_is_not_in_flight_changes_nothing() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    assert_eq!(q.cancel(id(1)), Err(Error::UnknownRequest(id(1))));
    q.submit(id(1), Request::Flush).unwrap();
    drain(&mut q);
    q.cancel(id(1)).unwrap();
    drain(&mut q);
    let before = snapshot(&q);
    assert_eq!(
        q.cancel(id(1)),
        Err(Error::UnknownRequest(id(1))),
        "cancelled twice"
    );
    assert_eq!(snapshot(&q), before);
    for s in 0..3 {
        q.handle_flush(id(1), s, Ok(())).unwrap();
    }
    q.submit(id(2), Request::Flush).unwrap();
    drain(&mut q);
    for s in 0..3 {
        q.handle_flush(id(2), s, Ok(())).unwrap();
    }
    drain(&mut q);
    assert_eq!(
        q.cancel(id(2)),
        Err(Error::UnknownRequest(id(2))),
        "completed"
    );
}

#[test]
fn r_cancel_2_a_drain_waits_for_a_cancelled_requests_operations() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    q.submit(id(1), write(0, 512)).unwrap();
    drain(&mut q);
    q.cancel(id(1)).unwrap();
    q.start_drain();
    assert!(!q.is_drained(), "the completion is still to be polled");
    drain(&mut q);
    assert!(!q.is_drained(), "three child writes are still out");
    q.handle_write(id(1), 0, Ok(())).unwrap();
    q.handle_write(id(1), 1, Ok(())).unwrap();
    assert!(!q.is_drained());
    q.handle_write(id(1), 2, Ok(())).unwrap();
    assert!(q.is_drained());
    q.end_drain().unwrap();
}

#[test]
fn r_member_4_drain_gate_refuses_new_requests_and_lets_old_ones_finish() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    assert!(!q.is_draining() && !q.is_drained());
    q.submit(id(1), read(0, 512)).unwrap();
    drain(&mut q);
    q.start_drain();
    let before = snapshot(&q);
    assert_eq!(q.submit(id(2), read(0, 512)), Err(Error::Draining));
    assert_eq!(snapshot(&q), before, "a refused submit changes nothing");
    for s in 0..3 {
        q.handle_read(id(1), s, Ok(()), &[[0u8; 512]; 3]).unwrap();
    }
    assert!(!q.is_drained(), "its completion waits to be polled");
    drain(&mut q);
    assert!(q.is_drained());
    // Membership changes now, as QEMU does them after its drain.
    let c = q.add_child().unwrap();
    assert_eq!(c, ChildId(3));
    // Drains nest.
    q.start_drain();
    q.end_drain().unwrap();
    assert_eq!(q.submit(id(2), read(0, 512)), Err(Error::Draining));
    q.end_drain().unwrap();
    assert_eq!(q.end_drain(), Err(Error::NotDraining));
    q.submit(id(2), read(0, 512)).unwrap();
    assert_eq!(child_ops(&drain(&mut q)), 4, "the new child is read too");
}

// ---------------------------------------------------------------------------
// Through the kit's in-memory driver: every call also checked against the
// contract and the reference model by its checker.

/// R-CANCEL-1..2 at every stage of a read that repairs, next to an
/// overlapping write, in several completion orders, cancelled or not: a
/// cancel that is accepted completes the read at once with ECANCELED, its
/// operations are still carried out, the write is never overtaken by the
/// read's repair (cancelled or not), and the device ends idle with the
/// write's data everywhere it overlaps.
#[test]
fn r_cancel_1_2_through_the_driver_at_every_stage() {
    use spec_util::pattern;
    use support::{Mem, Order};
    let orders = [
        Order::Issue,
        Order::Reverse,
        Order::Shuffle(1),
        Order::Shuffle(7),
        Order::Shuffle(42),
    ];
    for order in orders {
        for stage in 0..12 {
            for cancel in [true, false] {
                let cfg = Config::new(3, 2).with_rewrite_corrupted(true);
                let mut m = Mem::new(cfg, pattern("A A B", 4096));
                m.order = order;
                let r = m.submit(read(0, 1024), None);
                for _ in 0..stage {
                    m.step();
                }
                let w = m.submit(write(512, 1024), Some(vec![7; 1024]));
                let ctx = format!("{order:?} stage {stage} cancel {cancel}");
                let cancelled = if cancel {
                    m.cancel(r)
                } else {
                    Err(Error::Busy)
                };
                m.run();
                match cancelled {
                    Ok(()) => assert_eq!(m.outcome(r), CANCELED, "{ctx}"),
                    Err(e) => {
                        assert!(!cancel || e == Error::UnknownRequest(r), "{ctx}");
                        // Racing the write it may see a mix and fail its vote:
                        // the checker holds it to the reference model.
                        assert_ne!(m.outcome(r), CANCELED, "{ctx}");
                    }
                }
                assert_eq!(m.outcome(w), Outcome::Done);
                for c in 0..3 {
                    assert_eq!(m.disk(c)[512..1536], [7; 1024], "{ctx}");
                }
                assert!(m.checker().is_idle());
            }
        }
    }
}

/// R-CANCEL-1: the completion comes at once, before the driver has
/// performed anything; R-CANCEL-2: the driver still holds the three reads,
/// carries them out, and only then is the device idle and the id free.
#[test]
fn r_cancel_2_the_driver_still_owes_the_issued_operations() {
    use support::Mem;
    let mut m = Mem::uniform(Config::new(3, 2), 4096, 0);
    let id = m.submit(read(0, 512), None);
    assert_eq!(m.poll().len(), 3);
    m.cancel(id).unwrap();
    assert!(m.poll().is_empty());
    assert_eq!(m.outcome(id), CANCELED);
    assert_eq!(m.pending().len(), 3);
    assert!(!m.checker().is_idle());
    assert_eq!(
        m.try_submit(id, read(0, 512), None),
        Err(Error::DuplicateId(id))
    );
    m.faults.read.insert(ChildId(1), Errno::EIO);
    m.run();
    assert!(m.events().is_empty(), "nothing said about children.1");
    assert!(m.checker().is_idle());
    m.try_submit(id, read(0, 512), None).unwrap();
    m.run();
    assert!(matches!(m.outcome(id), Outcome::Read { .. }));
}

/// R-MEMBER-4 as QEMU does it: drain (new requests refused, the one in
/// flight finished with its three children), change the children, end the
/// drain; the next read uses the new child.
#[test]
fn r_member_4_membership_changes_inside_a_drain() {
    use support::Mem;
    let mut m = Mem::uniform(Config::new(3, 2), 4096, 0x11);
    let before = m.submit(read(0, 512), None);
    let added = m.with_drain(|m| {
        assert!(m.checker().is_drained());
        assert_eq!(
            m.try_submit(RequestId(99), read(0, 512), None),
            Err(Error::Draining)
        );
        m.add_child_with(vec![0x22; 4096])
    });
    assert_eq!(added, ChildId(3));
    assert!(matches!(m.outcome(before), Outcome::Read { .. }));
    let (o, d) = m.read(0, 512);
    assert!(matches!(o, Outcome::Read { .. }));
    assert_eq!(d.unwrap(), vec![0x11; 512]);
    let reads = m
        .log()
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Read {
                    child: ChildId(3),
                    ..
                }
            )
        })
        .count();
    assert_eq!(reads, 1, "children.3 is read by the second read only");
}
