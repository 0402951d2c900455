//! Misuse of the core (DESIGN.md's contract, and the bookkeeping behind
//! R-READ-1, R-WRITE-1, R-FLUSH-1, R-READ-7): every refused input is an
//! `Error`, leaves the core exactly as it was, and the request still
//! completes normally afterwards. Also capacity (`Busy`), ranges, and the
//! small public helpers.

mod spec_util;

use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Error, NoBuffers, OpType, Outcome, Quorum,
    ReadBuffers, ReadPattern, Request, RequestId,
};
use spec_util::{done, drain, ev, rb, read_ok, snapshot};

const ID: RequestId = RequestId(1);

fn core(n: usize, t: usize) -> Quorum {
    Quorum::new(Config::new(n, t)).expect("valid config")
}

/// Asserts that `f` returns `want` and changes nothing observable.
fn refused<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    want: Error,
    f: impl FnOnce(&mut Quorum<C, R, A>) -> Result<(), Error>,
) {
    let before = snapshot(q);
    let (live, idle) = (q.in_flight(), q.is_idle());
    assert_eq!(f(q), Err(want));
    assert_eq!(snapshot(q), before, "state changed by refused {want:?}");
    assert_eq!((q.in_flight(), q.is_idle()), (live, idle));
}

/// Unknown ids, for every kind of completion.
#[test]
fn unknown_request() {
    let mut q = core(3, 2);
    let x = RequestId(42);
    let e = Error::UnknownRequest(x);
    refused(&mut q, e, |q| q.handle_read(x, 0, Ok(()), &NoBuffers));
    refused(&mut q, e, |q| q.handle_write(x, 0, Ok(())));
    refused(&mut q, e, |q| q.handle_flush(x, 0, Err(Errno::EIO)));
    refused(&mut q, e, |q| q.handle_rewrite(x, 0, Ok(())));
    // With another request in flight.
    q.submit(ID, Request::Flush).unwrap();
    drain(&mut q);
    refused(&mut q, e, |q| q.handle_flush(x, 0, Ok(())));
    refused(&mut q, e, |q| q.handle_read(x, 99, Ok(()), &NoBuffers));
    for s in 0..3 {
        q.handle_flush(ID, s, Ok(())).unwrap();
    }
    assert_eq!(drain(&mut q), vec![done(1, Outcome::Done)]);
    // A completed request is unknown.
    let e = Error::UnknownRequest(ID);
    refused(&mut q, e, |q| q.handle_flush(ID, 0, Ok(())));
}

/// A duplicate id is refused while in flight, allowed again after completion.
#[test]
fn duplicate_id() {
    let mut q = core(2, 1);
    q.submit(ID, Request::Read { offset: 0, len: 8 }).unwrap();
    let e = Error::DuplicateId(ID);
    refused(&mut q, e, |q| q.submit(ID, Request::Flush));
    refused(&mut q, e, |q| {
        q.submit(ID, Request::Read { offset: 0, len: 8 })
    });
    assert_eq!(drain(&mut q).len(), 2);
    refused(&mut q, e, |q| {
        q.submit(ID, Request::Write { offset: 8, len: 8 })
    });
    q.handle_read(ID, 0, Err(Errno::EIO), &NoBuffers).unwrap();
    q.handle_read(ID, 1, Ok(()), &[vec![], vec![3u8; 8]])
        .unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Read, Some(Errno::EIO), 0, 0, 1)),
            done(1, read_ok(1, 1))
        ]
    );
    q.submit(ID, Request::Flush).unwrap();
    assert_eq!(drain(&mut q).len(), 2);
    // Another id is fine alongside.
    q.submit(RequestId(2), Request::Flush).unwrap();
    assert_eq!(q.in_flight(), 2);
}

/// A slot the request does not have, for every kind of completion.
#[test]
fn no_such_slot() {
    for n in [1, 3] {
        let mut q = core(n, 1);
        q.submit(ID, Request::Read { offset: 0, len: 4 }).unwrap();
        q.submit(RequestId(2), Request::Write { offset: 8, len: 4 })
            .unwrap();
        q.submit(RequestId(3), Request::Flush).unwrap();
        drain(&mut q);
        for slot in [n, n + 1, 63, 64, 65, usize::MAX] {
            let e = Error::NoSuchSlot { id: ID, slot };
            refused(&mut q, e, |q| q.handle_read(ID, slot, Ok(()), &NoBuffers));
            refused(&mut q, e, |q| q.handle_rewrite(ID, slot, Ok(())));
            let e = Error::NoSuchSlot {
                id: RequestId(2),
                slot,
            };
            refused(&mut q, e, |q| q.handle_write(RequestId(2), slot, Ok(())));
            let e = Error::NoSuchSlot {
                id: RequestId(3),
                slot,
            };
            refused(&mut q, e, |q| q.handle_flush(RequestId(3), slot, Ok(())));
        }
        // The last slot exists.
        q.handle_flush(RequestId(3), n - 1, Ok(())).unwrap();
    }
}

/// Completions of the wrong kind, twice, or for operations never asked for.
#[test]
fn unexpected_completions() {
    let mut q = core(2, 1);
    q.submit(ID, Request::Read { offset: 0, len: 4 }).unwrap();
    q.submit(RequestId(2), Request::Write { offset: 8, len: 4 })
        .unwrap();
    q.submit(RequestId(3), Request::Flush).unwrap();
    q.submit(RequestId(4), Request::WriteZeroes { offset: 16, len: 4 })
        .unwrap();
    assert_eq!(drain(&mut q).len(), 8);
    let unexpected = |id: u64, slot: usize, op: ChildOp| Error::UnexpectedCompletion {
        id: RequestId(id),
        slot,
        op,
    };
    // Wrong kind.
    refused(&mut q, unexpected(1, 0, ChildOp::Write), |q| {
        q.handle_write(ID, 0, Ok(()))
    });
    refused(&mut q, unexpected(1, 0, ChildOp::Flush), |q| {
        q.handle_flush(ID, 0, Ok(()))
    });
    refused(&mut q, unexpected(1, 0, ChildOp::Rewrite), |q| {
        q.handle_rewrite(ID, 0, Ok(()))
    });
    refused(&mut q, unexpected(2, 1, ChildOp::Read), |q| {
        q.handle_read(RequestId(2), 1, Ok(()), &NoBuffers)
    });
    refused(&mut q, unexpected(2, 1, ChildOp::Flush), |q| {
        q.handle_flush(RequestId(2), 1, Ok(()))
    });
    refused(&mut q, unexpected(2, 1, ChildOp::Rewrite), |q| {
        q.handle_rewrite(RequestId(2), 1, Ok(()))
    });
    refused(&mut q, unexpected(3, 0, ChildOp::Read), |q| {
        q.handle_read(RequestId(3), 0, Err(Errno::EIO), &NoBuffers)
    });
    refused(&mut q, unexpected(3, 0, ChildOp::Write), |q| {
        q.handle_write(RequestId(3), 0, Ok(()))
    });
    refused(&mut q, unexpected(4, 0, ChildOp::Read), |q| {
        q.handle_read(RequestId(4), 0, Ok(()), &NoBuffers)
    });
    refused(&mut q, unexpected(4, 0, ChildOp::Flush), |q| {
        q.handle_flush(RequestId(4), 0, Ok(()))
    });
    // Second completions.
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    refused(&mut q, unexpected(1, 0, ChildOp::Read), |q| {
        q.handle_read(ID, 0, Ok(()), &NoBuffers)
    });
    refused(&mut q, unexpected(1, 0, ChildOp::Read), |q| {
        q.handle_read(ID, 0, Err(Errno::EIO), &NoBuffers)
    });
    q.handle_write(RequestId(2), 0, Err(Errno::EIO)).unwrap();
    drain(&mut q);
    refused(&mut q, unexpected(2, 0, ChildOp::Write), |q| {
        q.handle_write(RequestId(2), 0, Ok(()))
    });
    q.handle_flush(RequestId(3), 1, Ok(())).unwrap();
    refused(&mut q, unexpected(3, 1, ChildOp::Flush), |q| {
        q.handle_flush(RequestId(3), 1, Ok(()))
    });
    q.handle_write(RequestId(4), 1, Ok(())).unwrap();
    refused(&mut q, unexpected(4, 1, ChildOp::Write), |q| {
        q.handle_write(RequestId(4), 1, Ok(()))
    });
    assert_eq!(drain(&mut q), vec![]);
    // Everything still completes normally.
    q.handle_read(ID, 1, Ok(()), &[[5u8; 4], [5u8; 4]]).unwrap();
    q.handle_write(RequestId(2), 1, Ok(())).unwrap();
    q.handle_flush(RequestId(3), 0, Err(Errno::EIO)).unwrap();
    q.handle_write(RequestId(4), 0, Err(Errno::EIO)).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            done(1, read_ok(0, 0)),
            done(2, Outcome::Done),
            ev(3, rb(OpType::Flush, Some(Errno::EIO), 0, 0, 0)),
            done(3, Outcome::Done),
            ev(4, rb(OpType::Write, Some(Errno::EIO), 0, 0, 1)),
            done(4, Outcome::Done),
        ]
    );
    assert!(q.is_idle());
}

/// Fifo: only the slot being read may complete.
#[test]
fn fifo_unissued_slots() {
    let mut q: Quorum =
        Quorum::new(Config::new(3, 1).with_read_pattern(ReadPattern::Fifo)).unwrap();
    q.submit(ID, Request::Read { offset: 0, len: 4 }).unwrap();
    drain(&mut q);
    for s in [1, 2] {
        refused(
            &mut q,
            Error::UnexpectedCompletion {
                id: ID,
                slot: s,
                op: ChildOp::Read,
            },
            |q| q.handle_read(ID, s, Err(Errno::EIO), &NoBuffers),
        );
    }
    q.handle_read(ID, 0, Err(Errno::EIO), &NoBuffers).unwrap();
    drain(&mut q);
    refused(
        &mut q,
        Error::UnexpectedCompletion {
            id: ID,
            slot: 2,
            op: ChildOp::Read,
        },
        |q| q.handle_read(ID, 2, Ok(()), &NoBuffers),
    );
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(1, 1))]);
}

/// A successful read's buffer must be there and of the request's length,
/// checked when the core votes; a refusal changes nothing and the request
/// completes with the right buffers.
#[test]
fn bad_buffers() {
    let mut q = core(3, 2);
    q.submit(ID, Request::Read { offset: 0, len: 8 }).unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    let bad = |slot, got| Error::BadBuffer {
        id: ID,
        slot,
        expected: 8,
        got,
    };
    let good = vec![vec![1u8; 8]; 3];
    refused(&mut q, bad(0, None), |q| {
        q.handle_read(ID, 2, Ok(()), &NoBuffers)
    });
    refused(&mut q, bad(2, None), |q| {
        q.handle_read(ID, 2, Ok(()), &good[..2])
    });
    let mut short = good.clone();
    short[1] = vec![1; 7];
    refused(&mut q, bad(1, Some(7)), |q| {
        q.handle_read(ID, 2, Ok(()), short.as_slice())
    });
    let mut long = good.clone();
    long[2] = vec![1; 9];
    refused(&mut q, bad(2, Some(9)), |q| {
        q.handle_read(ID, 2, Ok(()), long.as_slice())
    });
    let mut empty = good.clone();
    empty[0] = vec![];
    refused(&mut q, bad(0, Some(0)), |q| {
        q.handle_read(ID, 2, Ok(()), empty.as_slice())
    });
    // Several bad: the lowest slot is named.
    let two_bad = vec![vec![1u8; 8], vec![1; 3], vec![1; 2]];
    refused(&mut q, bad(1, Some(3)), |q| {
        q.handle_read(ID, 2, Ok(()), two_bad.as_slice())
    });
    // A failing last completion needs only the successful slots' buffers.
    let mut failing = good.clone();
    failing[2] = vec![];
    refused(&mut q, bad(0, Some(0)), |q| {
        q.handle_read(ID, 2, Err(Errno::EIO), empty.as_slice())
    });
    assert_eq!(drain(&mut q), vec![]);
    q.handle_read(ID, 2, Err(Errno::EIO), failing.as_slice())
        .unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Read, Some(Errno::EIO), 2, 0, 1)),
            done(1, read_ok(0, 0))
        ]
    );

    // Zero-length reads need zero-length buffers.
    let mut q = core(2, 2);
    q.submit(
        ID,
        Request::Read {
            offset: 512,
            len: 0,
        },
    )
    .unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    refused(
        &mut q,
        Error::BadBuffer {
            id: ID,
            slot: 0,
            expected: 0,
            got: Some(1),
        },
        |q| q.handle_read(ID, 1, Ok(()), &[vec![0u8], vec![]]),
    );
    q.handle_read(ID, 1, Ok(()), &[[0u8; 0], [0u8; 0]]).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(0, 0))]);
}

/// `Busy`: action-queue room (3n + 2 per request, queued actions included)
/// and request places; freed by completion and by polling.
#[test]
fn busy_when_full() {
    // Room for exactly one request of three children.
    let mut q = Quorum::<3, 2, 11>::new(Config::new(3, 2)).unwrap();
    q.submit(ID, Request::Read { offset: 0, len: 4 }).unwrap();
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(2), Request::Flush)
    });
    // A duplicate is named as such even when busy.
    refused(&mut q, Error::DuplicateId(ID), |q| {
        q.submit(ID, Request::Flush)
    });
    assert_eq!(drain(&mut q).len(), 3);
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(2), Request::Flush)
    });
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 2, Ok(()), &[[1u8; 4]; 3]).unwrap();
    assert_eq!(q.in_flight(), 0);
    assert!(!q.is_idle()); // the completion waits in the queue
    // The unpolled completion still takes room.
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(2), Request::Flush)
    });
    assert_eq!(q.poll_action(), Some(done(1, read_ok(0, 0))));
    assert!(q.is_idle());
    q.submit(RequestId(2), Request::Flush).unwrap();
    assert_eq!(q.in_flight(), 1);

    // Exactly two requests fit in 22; 21 holds one.
    let mut q = Quorum::<3, 3, 22>::new(Config::new(3, 1)).unwrap();
    q.submit(ID, Request::Flush).unwrap();
    q.submit(RequestId(2), Request::Flush).unwrap();
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(3), Request::Flush)
    });
    let mut q = Quorum::<3, 3, 21>::new(Config::new(3, 1)).unwrap();
    q.submit(ID, Request::Flush).unwrap();
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(2), Request::Flush)
    });
    // Fewer children need less room: 3·1 + 2 = 5 each.
    let mut q = Quorum::<3, 4, 11>::new(Config::new(1, 1)).unwrap();
    q.submit(ID, Request::Flush).unwrap();
    q.submit(RequestId(2), Request::Flush).unwrap();
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(3), Request::Flush)
    });
    // Room is released as the request's actions are pushed and polled, and
    // the unused reserve at completion.
    assert_eq!(drain(&mut q).len(), 2);
    q.handle_flush(ID, 0, Ok(())).unwrap();
    assert_eq!(drain(&mut q).len(), 1);
    q.submit(RequestId(3), Request::Flush).unwrap();

    // Request places: R = 2.
    let mut q = Quorum::<1, 2, 100>::new(Config::new(1, 1)).unwrap();
    q.submit(ID, Request::Flush).unwrap();
    q.submit(RequestId(2), Request::Flush).unwrap();
    refused(&mut q, Error::Busy, |q| {
        q.submit(RequestId(3), Request::Flush)
    });
    drain(&mut q);
    q.handle_flush(RequestId(2), 0, Ok(())).unwrap();
    // The place is free at completion, before the completion is polled.
    q.submit(RequestId(3), Request::Flush).unwrap();
    assert_eq!(q.in_flight(), 2);
    assert_eq!(
        drain(&mut q),
        vec![
            done(2, Outcome::Done),
            Action::Flush {
                id: RequestId(3),
                slot: 0,
                child: ChildId(0)
            }
        ]
    );
    // A request that runs through every action it reserved.
    let mut q = Quorum::<3, 1, 11>::new(Config::new(3, 1).with_rewrite_corrupted(true)).unwrap();
    q.submit(ID, Request::Read { offset: 0, len: 1 }).unwrap();
    drain(&mut q);
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 1, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 2, Ok(()), &[[1u8], [2], [3]]).unwrap();
    let acts = drain(&mut q);
    assert_eq!(acts.len(), 4); // two reports, two rewrites
    q.handle_rewrite(ID, 0, Ok(())).unwrap();
    q.handle_rewrite(ID, 1, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, read_ok(2, 2))]);
    q.submit(RequestId(2), Request::Flush).unwrap();
}

/// Ranges past 2^63 − 1 or overflowing are refused; the largest valid range
/// is accepted.
#[test]
fn invalid_range() {
    let mut q = core(2, 1);
    let max = i64::MAX as u64;
    for (offset, len) in [
        (u64::MAX, 1),
        (1, u64::MAX),
        (u64::MAX, u64::MAX),
        (max, 1),
        (max - 10, 11),
        (max + 1, 0),
        (0, max + 1),
    ] {
        let e = Error::InvalidRange { offset, len };
        refused(&mut q, e, |q| q.submit(ID, Request::Read { offset, len }));
        refused(&mut q, e, |q| q.submit(ID, Request::Write { offset, len }));
        refused(&mut q, e, |q| {
            q.submit(ID, Request::WriteZeroes { offset, len })
        });
    }
    // Checked before duplicate ids.
    q.submit(ID, Request::Flush).unwrap();
    refused(
        &mut q,
        Error::InvalidRange {
            offset: max,
            len: 1,
        },
        |q| {
            q.submit(
                ID,
                Request::Read {
                    offset: max,
                    len: 1,
                },
            )
        },
    );
    for (i, (offset, len)) in [(max - 10, 10), (max, 0), (0, max), (max - 1, 1)]
        .into_iter()
        .enumerate()
    {
        let id = RequestId(10 + i as u64);
        q.submit(id, Request::WriteZeroes { offset, len }).unwrap();
    }
    assert_eq!(q.in_flight(), 5);
}

/// `is_idle` needs both no request in flight and an empty queue.
#[test]
fn idle_and_in_flight() {
    let mut q = core(1, 1);
    assert!(q.is_idle());
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.poll_action(), None);
    q.submit(ID, Request::Flush).unwrap();
    assert!(!q.is_idle());
    drain(&mut q);
    assert!(!q.is_idle()); // in flight, nothing queued
    assert_eq!(q.in_flight(), 1);
    q.submit(RequestId(2), Request::Flush).unwrap();
    assert_eq!(q.in_flight(), 2);
    q.handle_flush(ID, 0, Ok(())).unwrap();
    assert_eq!(q.in_flight(), 1);
    drain(&mut q);
    q.handle_flush(RequestId(2), 0, Ok(())).unwrap();
    assert_eq!(q.in_flight(), 0);
    assert!(!q.is_idle()); // nothing in flight, completion queued
    assert_eq!(q.poll_action(), Some(done(2, Outcome::Done)));
    assert!(q.is_idle());
    assert_eq!(q.poll_action(), None);
}

/// Error texts.
#[test]
fn error_display() {
    let cases = [
        (
            Error::DuplicateId(RequestId(3)),
            "request #3 is already in flight",
        ),
        (
            Error::UnknownRequest(RequestId(4)),
            "no request #4 is in flight",
        ),
        (
            Error::InvalidRange { offset: 5, len: 6 },
            "invalid range: offset 5 + length 6 is past 2^63 - 1",
        ),
        (
            Error::Busy,
            "no capacity for another request: poll actions and complete requests first",
        ),
        (
            Error::NoSuchSlot {
                id: RequestId(1),
                slot: 9,
            },
            "request #1 has no child slot 9",
        ),
        (
            Error::UnexpectedCompletion {
                id: RequestId(2),
                slot: 1,
                op: ChildOp::Rewrite,
            },
            "request #2 slot 1: no Rewrite is outstanding (never asked for, or already completed)",
        ),
        (
            Error::BadBuffer {
                id: RequestId(7),
                slot: 2,
                expected: 512,
                got: Some(511),
            },
            "request #7 slot 2: read buffer holds 511 bytes, expected 512",
        ),
        (
            Error::BadBuffer {
                id: RequestId(7),
                slot: 0,
                expected: 512,
                got: None,
            },
            "request #7 slot 0: no read buffer given",
        ),
    ];
    for (e, text) in cases {
        assert_eq!(e.to_string(), text);
        let dyn_err: &dyn std::error::Error = &e;
        assert_eq!(dyn_err.to_string(), text);
    }
}

/// Small public helpers: ids, ranges, `Action::id`, the buffer impls.
#[test]
fn helpers() {
    assert_eq!(RequestId::from(9), RequestId(9));
    assert_eq!(RequestId(12).to_string(), "#12");
    assert_eq!(Request::Read { offset: 1, len: 2 }.range(), (1, 2));
    assert_eq!(Request::Write { offset: 3, len: 4 }.range(), (3, 4));
    assert_eq!(Request::WriteZeroes { offset: 5, len: 6 }.range(), (5, 6));
    assert_eq!(Request::Flush.range(), (0, 0));
    let id = RequestId(77);
    let c = ChildId(1);
    let actions = [
        Action::Read {
            id,
            slot: 0,
            child: c,
            offset: 0,
            len: 1,
        },
        Action::Write {
            id,
            slot: 0,
            child: c,
            offset: 0,
            len: 1,
        },
        Action::WriteZeroes {
            id,
            slot: 0,
            child: c,
            offset: 0,
            len: 1,
        },
        Action::Flush {
            id,
            slot: 0,
            child: c,
        },
        Action::Rewrite {
            id,
            slot: 0,
            child: c,
            source: 1,
            offset: 0,
            len: 1,
        },
        Action::Event {
            id,
            event: rb(OpType::Read, None, 1, 0, 1),
        },
        Action::Complete {
            id,
            outcome: Outcome::Done,
        },
    ];
    for a in actions {
        assert_eq!(a.id(), id, "{a:?}");
    }
    let v: Vec<Vec<u8>> = vec![vec![1, 2], vec![3]];
    assert_eq!(v.as_slice().buffer(0), Some(&[1u8, 2][..]));
    assert_eq!(v.as_slice().buffer(1), Some(&[3u8][..]));
    assert_eq!(v.as_slice().buffer(2), None);
    let arr: [&[u8]; 2] = [b"ab", b""];
    assert_eq!(arr.buffer(0), Some(&b"ab"[..]));
    assert_eq!(arr.buffer(1), Some(&b""[..]));
    assert_eq!(arr.buffer(2), None);
    assert_eq!(NoBuffers.buffer(0), None);
    let default_nobuf = NoBuffers;
    assert_eq!(default_nobuf.buffer(usize::MAX), None);
}
