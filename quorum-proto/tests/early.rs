//! Early quorum (SPEC.md, deliberate improvements, opt-in): a read answers
//! as soon as `threshold` children agree, and its stragglers are compared,
//! reported (R-READ-6) and rewritten (R-READ-7) before it completes.
//!
//! These tests drive the core by hand so that the order of child completions
//! — which child is the straggler — is explicit.

use quorum_proto::{
    Action, ChildId, Config, Errno, Error, Event, NoBuffers, OpType, Outcome, Quorum, ReadPattern,
    Request, RequestId,
};

const LEN: usize = 512;

fn core(cfg: Config) -> Quorum {
    Quorum::new(cfg).expect("valid config")
}

fn drain(q: &mut Quorum) -> Vec<Action> {
    core::iter::from_fn(|| q.poll_action()).collect()
}

fn answers(actions: &[Action]) -> Vec<Outcome> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect()
}

fn completes(actions: &[Action]) -> Vec<Outcome> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Complete { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect()
}

fn bad_reports(actions: &[Action]) -> Vec<(ChildId, Option<Errno>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                event:
                    Event::ReportBad {
                        op: OpType::Read,
                        child,
                        error,
                        ..
                    },
                ..
            } => Some((*child, *error)),
            _ => None,
        })
        .collect()
}

fn rewrites(actions: &[Action]) -> Vec<(usize, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Rewrite { slot, source, .. } => Some((*slot, *source)),
            _ => None,
        })
        .collect()
}

fn read(q: &mut Quorum, id: u64) -> RequestId {
    let id = RequestId(id);
    q.submit(
        id,
        Request::Read {
            offset: 0,
            len: LEN as u64,
        },
    )
    .expect("submitted");
    let issued = drain(q);
    assert!(
        issued.iter().all(|a| matches!(a, Action::Read { .. })),
        "{issued:?}"
    );
    id
}

#[test]
fn answers_when_threshold_agree_then_settles_the_straggler() {
    // R-READ-6, R-READ-7 after the answer: the straggler differs.
    let mut q = core(
        Config::new(3, 2)
            .with_rewrite_corrupted(true)
            .with_early_quorum(true),
    );
    let id = read(&mut q, 1);
    let mut bufs = vec![vec![7u8; LEN]; 3];
    bufs[2][9] = 0;
    q.handle_read(id, 0, Ok(()), bufs.as_slice()).unwrap();
    assert!(drain(&mut q).is_empty(), "one child is no quorum");
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    let want = Outcome::Read {
        slot: 0,
        child: ChildId(0),
    };
    assert_eq!(answers(&a), vec![want]);
    assert!(completes(&a).is_empty(), "still in flight: {a:?}");
    assert_eq!(q.in_flight(), 1);

    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert_eq!(bad_reports(&a), vec![(ChildId(2), None)]);
    assert_eq!(rewrites(&a), vec![(2, 0)]);
    assert!(completes(&a).is_empty(), "completes after its rewrite");
    q.handle_rewrite(id, 2, Ok(())).unwrap();
    assert_eq!(completes(&drain(&mut q)), vec![want]);
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn an_agreeing_straggler_is_silent() {
    let mut q = core(
        Config::new(3, 2)
            .with_rewrite_corrupted(true)
            .with_early_quorum(true),
    );
    let id = read(&mut q, 1);
    let bufs = vec![vec![1u8; LEN]; 3];
    // Slots 2 and 1 answer first: the answer is the lower slot of the group.
    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert_eq!(
        answers(&a),
        vec![Outcome::Read {
            slot: 1,
            child: ChildId(1)
        }]
    );
    q.handle_read(id, 0, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert!(
        bad_reports(&a).is_empty() && rewrites(&a).is_empty(),
        "{a:?}"
    );
    assert_eq!(
        completes(&a),
        vec![Outcome::Read {
            slot: 1,
            child: ChildId(1)
        }]
    );
}

#[test]
fn errors_do_not_count_and_are_reported_at_once() {
    // R-READ-2: the error is reported when it happens.
    let mut q = core(Config::new(3, 2).with_early_quorum(true));
    let id = read(&mut q, 1);
    let bufs = vec![vec![3u8; LEN]; 3];
    q.handle_read(id, 0, Err(Errno::EIO), bufs.as_slice())
        .unwrap();
    let a = drain(&mut q);
    assert_eq!(bad_reports(&a), vec![(ChildId(0), Some(Errno::EIO))]);
    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    assert!(answers(&drain(&mut q)).is_empty());
    // The last child: a normal decision, no separate answer.
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert!(answers(&a).is_empty());
    assert_eq!(
        completes(&a),
        vec![Outcome::Read {
            slot: 1,
            child: ChildId(1)
        }]
    );
}

#[test]
fn disagreement_waits_for_the_full_vote() {
    // R-READ-4: with 0 and 1 differing, only the third child decides.
    let mut q = core(Config::new(3, 2).with_early_quorum(true));
    let id = read(&mut q, 1);
    let mut bufs = vec![vec![5u8; LEN]; 3];
    bufs[1][0] = 6;
    q.handle_read(id, 0, Ok(()), bufs.as_slice()).unwrap();
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    assert!(drain(&mut q).is_empty());
    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert!(answers(&a).is_empty());
    assert_eq!(bad_reports(&a), vec![(ChildId(1), None)]);
    assert_eq!(
        completes(&a),
        vec![Outcome::Read {
            slot: 0,
            child: ChildId(0)
        }]
    );
}

#[test]
fn threshold_one_answers_with_the_first_success() {
    let mut q = core(Config::new(3, 1).with_early_quorum(true));
    let id = read(&mut q, 1);
    let bufs = vec![vec![0u8; LEN]; 3];
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    assert_eq!(
        answers(&drain(&mut q)),
        vec![Outcome::Read {
            slot: 1,
            child: ChildId(1)
        }]
    );
}

#[test]
fn stragglers_are_judged_against_the_answer() {
    // Four children, threshold 2: {0,1} answer; {2,3} hold other bytes. The
    // full vote would pick {2,3} (R-VOTE-2, the later of a tie); early quorum
    // has already answered {0,1}, so {2,3} are the ones reported.
    let mut q = core(Config::new(4, 2).with_early_quorum(true));
    let id = read(&mut q, 1);
    let mut bufs = vec![vec![1u8; LEN]; 4];
    bufs[2] = vec![2u8; LEN];
    bufs[3] = vec![2u8; LEN];
    for s in 0..4 {
        q.handle_read(id, s, Ok(()), bufs.as_slice()).unwrap();
    }
    let a = drain(&mut q);
    let want = Outcome::Read {
        slot: 0,
        child: ChildId(0),
    };
    assert_eq!(answers(&a), vec![want]);
    assert_eq!(completes(&a), vec![want]);
    assert_eq!(
        bad_reports(&a),
        vec![(ChildId(3), None), (ChildId(2), None)],
        "R-VOTE-4 order"
    );
}

#[test]
fn a_later_overlapping_write_silences_and_stops_the_repair() {
    // Ordering improvement: after the answer the caller may write the same
    // range; a straggler that then reads new bytes is neither reported nor
    // "repaired" back to the old ones.
    let mut q = core(
        Config::new(3, 2)
            .with_rewrite_corrupted(true)
            .with_early_quorum(true),
    );
    let id = read(&mut q, 1);
    let mut bufs = vec![vec![7u8; LEN]; 3];
    q.handle_read(id, 0, Ok(()), bufs.as_slice()).unwrap();
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    assert_eq!(answers(&drain(&mut q)).len(), 1);
    let w = RequestId(2);
    q.submit(
        w,
        Request::Write {
            offset: 0,
            len: LEN as u64,
        },
    )
    .unwrap();
    let issued = drain(&mut q);
    assert_eq!(
        issued
            .iter()
            .filter(|a| matches!(a, Action::Write { .. }))
            .count(),
        3,
        "the write is not held: {issued:?}"
    );
    bufs[2] = vec![8u8; LEN]; // the new data
    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert!(
        bad_reports(&a).is_empty() && rewrites(&a).is_empty(),
        "{a:?}"
    );
    assert_eq!(completes(&a).len(), 1);
}

#[test]
fn a_later_write_elsewhere_does_not_silence() {
    let mut q = core(Config::new(3, 2).with_early_quorum(true));
    let id = read(&mut q, 1);
    let mut bufs = vec![vec![7u8; LEN]; 3];
    bufs[2][0] = 1;
    q.handle_read(id, 0, Ok(()), bufs.as_slice()).unwrap();
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    q.submit(
        RequestId(2),
        Request::Write {
            offset: LEN as u64,
            len: 512,
        },
    )
    .unwrap();
    drain(&mut q);
    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    assert_eq!(bad_reports(&drain(&mut q)), vec![(ChildId(2), None)]);
}

#[test]
fn early_successes_need_the_buffers_so_far() {
    // Misuse: early quorum compares at every success, so the buffers must be
    // there; a refusal changes nothing.
    let mut q = core(Config::new(3, 2).with_early_quorum(true));
    let id = read(&mut q, 1);
    let err = q.handle_read(id, 0, Ok(()), &NoBuffers).unwrap_err();
    assert!(matches!(err, Error::BadBuffer { slot: 0, .. }), "{err:?}");
    let bufs = vec![vec![0u8; LEN]; 3];
    q.handle_read(id, 0, Ok(()), bufs.as_slice()).unwrap();
    q.handle_read(id, 1, Ok(()), bufs.as_slice()).unwrap();
    assert_eq!(answers(&drain(&mut q)).len(), 1);
}

#[test]
fn without_early_quorum_the_same_run_answers_only_at_the_end() {
    let mut q = core(Config::new(3, 2));
    let id = read(&mut q, 1);
    let bufs = vec![vec![0u8; LEN]; 3];
    q.handle_read(id, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(id, 1, Ok(()), &NoBuffers).unwrap();
    assert!(drain(&mut q).is_empty());
    q.handle_read(id, 2, Ok(()), bufs.as_slice()).unwrap();
    let a = drain(&mut q);
    assert!(answers(&a).is_empty());
    assert_eq!(completes(&a).len(), 1);
}

#[test]
fn fifo_and_blkverify_switch_it_off() {
    let fifo = Config::new(3, 1)
        .with_read_pattern(ReadPattern::Fifo)
        .with_early_quorum(true);
    assert!(!fifo.validate(16).unwrap().early_quorum);
    let verify = Config::new(2, 2)
        .with_blkverify(true)
        .with_early_quorum(true);
    assert!(!verify.validate(16).unwrap().early_quorum);
    assert!(
        Config::new(3, 2)
            .with_early_quorum(true)
            .validate(16)
            .unwrap()
            .early_quorum
    );
}
