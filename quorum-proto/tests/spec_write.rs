//! SPEC.md R-WRITE-1..3 (writes, write-zeroes) and R-FLUSH-1..2.

mod spec_util;
mod support;

use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Error, OpType, Outcome, Quorum, Request, RequestId,
};
use spec_util::{done, drain, ev, failure, rb, run};
use support::{Mem, Order};

const ID: RequestId = RequestId(1);

fn core(cfg: Config) -> Quorum {
    Quorum::new(cfg).expect("valid config")
}

/// R-WRITE-1: a write goes to every child at once; each failure is reported
/// at once with its error.
#[test]
fn r_write_1_every_child_reports_at_once() {
    let mut q = core(Config::new(4, 2));
    q.submit(
        ID,
        Request::Write {
            offset: 1000,
            len: 100,
        },
    )
    .unwrap();
    let want: Vec<_> = (0..4)
        .map(|s| Action::Write {
            id: ID,
            slot: s,
            child: ChildId(s as u32),
            offset: 1000,
            len: 100,
        })
        .collect();
    assert_eq!(drain(&mut q), want);
    q.handle_write(ID, 2, Err(Errno::ENOSPC)).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![ev(1, rb(OpType::Write, Some(Errno::ENOSPC), 2, 1, 2))]
    );
    q.handle_write(ID, 0, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    q.handle_write(ID, 3, Err(Errno::EIO)).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![ev(1, rb(OpType::Write, Some(Errno::EIO), 3, 1, 2))]
    );
    assert_eq!(q.in_flight(), 1);
    q.handle_write(ID, 1, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, Outcome::Done)]);
    assert!(q.is_idle());

    // Through the driver: the data lands on every child.
    let mut m = Mem::uniform(Config::new(3, 3), 2048, 0);
    assert_eq!(m.write(1000, &[7; 100]), Outcome::Done);
    for c in 0..3 {
        assert_eq!(m.disk(c)[1000..1100], [7; 100]);
        assert_eq!((m.disk(c)[999], m.disk(c)[1100]), (0, 0));
    }
    assert!(m.events().is_empty());
}

/// R-WRITE-2: success iff at least `threshold` children succeeded; otherwise
/// the voted error and a FAILURE after the reports.
#[test]
fn r_write_2_threshold_boundary() {
    for n in 1..=6 {
        for t in 1..=n {
            for fails in 0..=n {
                // The last `fails` slots fail, all with EIO except the very
                // last which says ENOSPC when there are two or more failures.
                let results: Vec<Result<(), Errno>> = (0..n)
                    .map(|s| {
                        if s < n - fails {
                            Ok(())
                        } else if s == n - 1 && fails >= 2 {
                            Err(Errno::ENOSPC)
                        } else {
                            Err(Errno::EIO)
                        }
                    })
                    .collect();
                let mut q = core(Config::new(n, t));
                let r = run(
                    &mut q,
                    9,
                    Request::Write {
                        offset: 0,
                        len: 512,
                    },
                    &[],
                    &results,
                );
                let mut events: Vec<_> = (n - fails..n)
                    .map(|s| rb(OpType::Write, results[s].err(), s as u32, 0, 1))
                    .collect();
                let ok = n - fails;
                let want = if ok >= t {
                    Outcome::Done
                } else {
                    events.push(failure(0, 1));
                    // EIO outvotes ENOSPC unless they tie (2 failures: one
                    // each), where the later version, ENOSPC, wins.
                    if fails == 1 {
                        Outcome::Failed(Errno::EIO)
                    } else if fails == 2 {
                        Outcome::Failed(Errno::ENOSPC)
                    } else {
                        Outcome::Failed(Errno::EIO)
                    }
                };
                assert_eq!(r.outcome(), want, "n={n} t={t} fails={fails}");
                assert_eq!(r.events(), events, "n={n} t={t} fails={fails}");
                assert_eq!(r.log.len(), n + events.len() + 1);
                assert!(matches!(r.log.last(), Some(Action::Complete { .. })));
                assert!(q.is_idle());
            }
        }
    }
}

/// R-WRITE-2 through the driver, in every completion order.
#[test]
fn r_write_2_order_independent() {
    for order in [
        Order::Issue,
        Order::Reverse,
        Order::Shuffle(5),
        Order::Shuffle(6),
    ] {
        let mut m = Mem::uniform(Config::new(5, 3), 1024, 0);
        m.order = order;
        m.faults.write.insert(ChildId(1), Errno::EIO);
        m.faults.write.insert(ChildId(3), Errno::ENOSPC);
        assert_eq!(m.write(0, &[1; 1024]), Outcome::Done);
        m.faults.write.insert(ChildId(4), Errno::ENOSPC);
        assert_eq!(m.write(0, &[2; 1024]), Outcome::Failed(Errno::ENOSPC));
        let mut ev2 = m.events_of(RequestId(2));
        assert_eq!(ev2.pop(), Some(failure(0, 2)), "{order:?}");
        assert_eq!(ev2.len(), 3);
        for (c, e) in [(1, Errno::EIO), (3, Errno::ENOSPC), (4, Errno::ENOSPC)] {
            assert!(ev2.contains(&rb(OpType::Write, Some(e), c, 0, 2)));
        }
        // Children that succeeded hold the data even when the write failed.
        assert_eq!(m.disk(0), &[2; 1024][..]);
        assert_eq!(m.disk(2), &[2; 1024][..]);
        assert_eq!(m.disk(1), &[0; 1024][..]);
    }
}

/// R-WRITE-3: write-zeroes sends a zero write to each child, same rules,
/// reports of type `write`.
#[test]
fn r_write_3_write_zeroes() {
    let mut q = core(Config::new(3, 2));
    q.submit(
        ID,
        Request::WriteZeroes {
            offset: 4096,
            len: 8192,
        },
    )
    .unwrap();
    let want: Vec<_> = (0..3)
        .map(|s| Action::WriteZeroes {
            id: ID,
            slot: s,
            child: ChildId(s as u32),
            offset: 4096,
            len: 8192,
        })
        .collect();
    assert_eq!(drain(&mut q), want);
    // Completed with handle_write, not handle_flush.
    assert_eq!(
        q.handle_flush(ID, 0, Ok(())),
        Err(Error::UnexpectedCompletion {
            id: ID,
            slot: 0,
            op: ChildOp::Flush
        })
    );
    q.handle_write(ID, 0, Err(Errno::EIO)).unwrap();
    q.handle_write(ID, 1, Err(Errno::EPERM)).unwrap();
    q.handle_write(ID, 2, Ok(())).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Write, Some(Errno::EIO), 0, 8, 16)),
            ev(1, rb(OpType::Write, Some(Errno::EPERM), 1, 8, 16)),
            ev(1, failure(8, 16)),
            done(1, Outcome::Failed(Errno::EPERM)),
        ]
    );

    let mut m = Mem::uniform(Config::new(3, 2), 4096, 0xff);
    m.faults.write.insert(ChildId(2), Errno::EIO);
    assert_eq!(m.write_zeroes(1000, 100), Outcome::Done);
    for c in 0..2 {
        assert_eq!(m.disk(c)[1000..1100], [0; 100]);
        assert_eq!((m.disk(c)[999], m.disk(c)[1100]), (0xff, 0xff));
    }
    assert_eq!(m.disk(2), &[0xff; 4096][..]);
    assert_eq!(
        m.events_of(ID),
        vec![rb(OpType::Write, Some(Errno::EIO), 2, 1, 2)]
    );
    m.faults.write.insert(ChildId(1), Errno::EIO);
    assert_eq!(m.write_zeroes(0, 512), Outcome::Failed(Errno::EIO));
    assert_eq!(m.events_of(RequestId(2)).last(), Some(&failure(0, 1)));
}

/// R-FLUSH-1: every child is flushed; each failure is reported with its error
/// and sector 0, count 0.
#[test]
fn r_flush_1_reports_sector_zero() {
    let mut q = core(Config::new(3, 1));
    q.submit(ID, Request::Flush).unwrap();
    let want: Vec<_> = (0..3)
        .map(|s| Action::Flush {
            id: ID,
            slot: s,
            child: ChildId(s as u32),
        })
        .collect();
    assert_eq!(drain(&mut q), want);
    assert_eq!(
        q.handle_write(ID, 0, Ok(())),
        Err(Error::UnexpectedCompletion {
            id: ID,
            slot: 0,
            op: ChildOp::Write
        })
    );
    q.handle_flush(ID, 1, Err(Errno::EIO)).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![ev(1, rb(OpType::Flush, Some(Errno::EIO), 1, 0, 0))]
    );
    q.handle_flush(ID, 0, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![]);
    q.handle_flush(ID, 2, Err(Errno::ENOSPC)).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Flush, Some(Errno::ENOSPC), 2, 0, 0)),
            done(1, Outcome::Done)
        ]
    );
    assert!(q.is_idle());
}

/// R-FLUSH-2: success iff at least `threshold` flushed; otherwise the voted
/// error — and never a FAILURE event.
#[test]
fn r_flush_2_threshold_no_failure_event() {
    for n in 1..=6 {
        for t in 1..=n {
            for fails in 0..=n {
                let results: Vec<Result<(), Errno>> = (0..n)
                    .map(|s| {
                        if s < fails {
                            // First failures say ENOSPC, then EPERM ×2 …
                            Err(if s == 0 { Errno::ENOSPC } else { Errno::EPERM })
                        } else {
                            Ok(())
                        }
                    })
                    .collect();
                let mut q = core(Config::new(n, t));
                let r = run(&mut q, 3, Request::Flush, &[], &results);
                let events: Vec<_> = (0..fails)
                    .map(|s| rb(OpType::Flush, results[s].err(), s as u32, 0, 0))
                    .collect();
                let want = if n - fails >= t {
                    Outcome::Done
                } else if fails == 2 {
                    // ENOSPC(c0) EPERM(c1): a tie, the later version wins.
                    Outcome::Failed(Errno::EPERM)
                } else if fails == 1 {
                    Outcome::Failed(Errno::ENOSPC)
                } else {
                    Outcome::Failed(Errno::EPERM)
                };
                assert_eq!(r.outcome(), want, "n={n} t={t} fails={fails}");
                assert_eq!(r.events(), events, "n={n} t={t} fails={fails}");
                assert!(q.is_idle());
            }
        }
    }
    // The documented votes, through flush.
    for (errs, want) in [
        (vec![Errno::EIO, Errno::ENOSPC], Errno::ENOSPC),
        (vec![Errno::ENOSPC, Errno::EIO, Errno::EPERM], Errno::EPERM),
        (
            vec![Errno::EIO, Errno::ENOSPC, Errno::ENOSPC],
            Errno::ENOSPC,
        ),
    ] {
        let n = errs.len();
        let mut m = Mem::uniform(Config::new(n, 1), 0, 0);
        for (c, e) in errs.iter().enumerate() {
            m.faults.flush.insert(ChildId(c as u32), *e);
        }
        assert_eq!(m.flush(), Outcome::Failed(want));
        assert_eq!(m.events().len(), n);
        assert!(
            m.events()
                .iter()
                .all(|(_, e)| matches!(e, quorum_proto::Event::ReportBad { .. }))
        );
    }
}
