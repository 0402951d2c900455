//! Block status: whether a range starts with data or zeroes, and for how
//! long — QEMU's `quorum_co_block_status`, which `qemu-img map`, `qemu-img
//! convert` and NBD clients rely on to copy a quorum device sparsely:
//! zeroes only where every child says so, the first failing child reported
//! as a failed read (R-EVENT-1, R-EVENT-3) and the range then taken as data.

mod spec_util;

use quorum_proto::{
    Action, ChildId, Config, Errno, Extent, OpType, Outcome, Quorum, Request, RequestId,
};
use spec_util::{done, drain, ev, rb};

fn status(
    q: &mut Quorum,
    id: u64,
    offset: u64,
    len: u64,
    answers: &[Result<Extent, Errno>],
) -> Vec<Action> {
    q.submit(RequestId(id), Request::BlockStatus { offset, len })
        .unwrap();
    let asked = drain(q);
    assert_eq!(
        asked.len(),
        answers.len(),
        "every child is asked: {asked:?}"
    );
    for (slot, a) in asked.iter().enumerate() {
        assert_eq!(
            *a,
            Action::BlockStatus {
                id: RequestId(id),
                slot,
                child: ChildId(slot as u32),
                offset,
                len
            }
        );
    }
    // Answers in reverse slot order: the decision does not depend on it.
    for (slot, r) in answers.iter().enumerate().rev() {
        q.handle_block_status(RequestId(id), slot, *r).unwrap();
    }
    drain(q)
}

fn zero(len: u64) -> Result<Extent, Errno> {
    Ok(Extent { len, zero: true })
}

fn data(len: u64) -> Result<Extent, Errno> {
    Ok(Extent { len, zero: false })
}

fn outcome(len: u64, zero: bool) -> Outcome {
    Outcome::BlockStatus(Extent { len, zero })
}

#[test]
fn zeroes_only_where_every_child_says_so_and_as_far_as_the_shortest() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    let got = status(&mut q, 1, 0, 65536, &[zero(65536), zero(4096), zero(8192)]);
    assert_eq!(got, [done(1, outcome(4096, true))]);
    assert!(q.is_idle());
}

#[test]
fn data_on_any_child_is_data_as_far_as_the_longest_data_extent() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    let got = status(
        &mut q,
        1,
        4096,
        65536,
        &[zero(65536), data(512), data(8192)],
    );
    assert_eq!(got, [done(1, outcome(8192, false))]);
}

#[test]
fn the_first_failing_child_is_reported_as_a_read_and_the_range_is_data() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    // Slots 1 and 2 fail: only slot 1 (the first, in slot order) is
    // reported, and slot 2 is not heard at all, as QEMU stops there.
    let got = status(
        &mut q,
        1,
        1024,
        4096,
        &[zero(4096), Err(Errno::EIO), Err(Errno::ENOSPC)],
    );
    assert_eq!(
        got,
        [
            ev(1, rb(OpType::Read, Some(Errno::EIO), 1, 2, 8)),
            done(1, outcome(4096, false))
        ]
    );
}

#[test]
fn extents_are_clamped_to_the_range_and_to_at_least_a_byte() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    let got = status(&mut q, 1, 0, 4096, &[zero(1 << 40), zero(0)]);
    assert_eq!(got, [done(1, outcome(1, true))]);
    let got = status(&mut q, 2, 0, 4096, &[data(1 << 40), zero(4096)]);
    assert_eq!(got, [done(2, outcome(4096, false))]);
}

#[test]
fn block_status_never_fails_and_emits_no_failure_even_when_every_child_fails() {
    let mut q: Quorum = Quorum::new(Config::new(2, 2)).unwrap();
    let got = status(&mut q, 1, 0, 512, &[Err(Errno::EIO), Err(Errno::EIO)]);
    assert_eq!(
        got,
        [
            ev(1, rb(OpType::Read, Some(Errno::EIO), 0, 0, 1)),
            done(1, outcome(512, false))
        ]
    );
}

#[test]
fn r_cancel_1_a_cancelled_block_status_reports_nothing() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    q.submit(
        RequestId(1),
        Request::BlockStatus {
            offset: 0,
            len: 512,
        },
    )
    .unwrap();
    drain(&mut q);
    q.cancel(RequestId(1)).unwrap();
    assert_eq!(drain(&mut q), [done(1, Outcome::Failed(Errno::ECANCELED))]);
    q.handle_block_status(RequestId(1), 0, Err(Errno::EIO))
        .unwrap();
    q.handle_block_status(RequestId(1), 1, zero(512)).unwrap();
    assert_eq!(drain(&mut q), []);
    assert!(q.is_idle());
}

#[test]
fn completions_of_the_wrong_kind_are_refused() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    q.submit(
        RequestId(1),
        Request::BlockStatus {
            offset: 0,
            len: 512,
        },
    )
    .unwrap();
    drain(&mut q);
    assert!(
        q.handle_read(RequestId(1), 0, Ok(()), &quorum_proto::NoBuffers)
            .is_err()
    );
    assert!(q.handle_write(RequestId(1), 0, Ok(())).is_err());
    q.submit(RequestId(2), Request::Flush).unwrap();
    drain(&mut q);
    assert!(q.handle_block_status(RequestId(2), 0, zero(1)).is_err());
    q.handle_block_status(RequestId(1), 0, zero(512)).unwrap();
    q.handle_block_status(RequestId(1), 1, zero(512)).unwrap();
    assert!(q.handle_block_status(RequestId(1), 1, zero(512)).is_err());
}
