//! SPEC.md R-MEMBER-1..4: stable child names, refusals and their texts, and
//! requests keeping the child set they started with.

mod spec_util;
mod support;

use quorum_proto::{
    Action, ChildId, Config, Errno, MemberError, NoBuffers, OpType, Outcome, Quorum, Request,
    RequestId,
};
use spec_util::{done, drain, ev, pattern, rb, read_ok, snapshot};
use support::Mem;

const ID: RequestId = RequestId(1);

fn ids(q: &Quorum) -> Vec<u32> {
    q.children().iter().map(|c| c.0).collect()
}

/// R-MEMBER-1: SPEC.md's naming sequence, exactly.
#[test]
fn r_member_1_naming_sequence() {
    let mut q: Quorum = Quorum::new(Config::new(3, 1)).unwrap();
    assert_eq!(ids(&q), [0, 1, 2]);
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    assert_eq!(ids(&q), [0, 1, 2, 3]);
    assert_eq!(q.remove_child(ChildId(3)), Ok(()));
    assert_eq!(ids(&q), [0, 1, 2]);
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    assert_eq!(ids(&q), [0, 1, 2, 3]);
    assert_eq!(q.remove_child(ChildId(1)), Ok(()));
    assert_eq!(ids(&q), [0, 2, 3]);
    assert_eq!(q.add_child(), Ok(ChildId(4)));
    assert_eq!(ids(&q), [0, 2, 3, 4]);
    assert_eq!(ChildId(4).to_string(), "children.4");
}

/// R-MEMBER-1: only deleting the newest name moves `next` back, once per delete.
#[test]
fn r_member_1_next_moves_back_only_for_newest() {
    let mut q: Quorum = Quorum::new(Config::new(2, 1)).unwrap();
    assert_eq!(q.add_child(), Ok(ChildId(2)));
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    // Newest twice in a row: next goes 4 → 3 → 2.
    q.remove_child(ChildId(3)).unwrap();
    q.remove_child(ChildId(2)).unwrap();
    assert_eq!(q.add_child(), Ok(ChildId(2)));
    // An older one: next stays.
    q.remove_child(ChildId(0)).unwrap();
    assert_eq!(ids(&q), [1, 2]);
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    // children.3 is newest; deleting children.1 then children.3 moves back once.
    q.remove_child(ChildId(1)).unwrap();
    q.remove_child(ChildId(3)).unwrap();
    assert_eq!(ids(&q), [2]);
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    assert_eq!(q.add_child(), Ok(ChildId(4)));
    assert_eq!(ids(&q), [2, 3, 4]);
}

/// R-MEMBER-1: a full core refuses to add and does not consume a name.
#[test]
fn r_member_1_capacity() {
    let mut q = Quorum::<4, 1, 14>::new(Config::new(3, 1)).unwrap();
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    let before = format!("{q:?}");
    assert_eq!(q.add_child(), Err(MemberError::TooManyChildren));
    assert_eq!(format!("{q:?}"), before);
    assert_eq!(
        MemberError::TooManyChildren.to_string(),
        "Too many children"
    );
    q.remove_child(ChildId(1)).unwrap();
    assert_eq!(q.add_child(), Ok(ChildId(4)));
    assert_eq!(
        q.children(),
        &[ChildId(0), ChildId(2), ChildId(3), ChildId(4)]
    );
}

/// R-MEMBER-2: deleting is refused while children ≤ threshold, with QEMU's
/// text, and changes nothing.
#[test]
fn r_member_2_not_below_threshold() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    q.remove_child(ChildId(0)).unwrap(); // 3 > 2
    assert_eq!(ids(&q), [1, 2]);
    let before = snapshot(&q);
    for c in [1, 2] {
        let e = q.remove_child(ChildId(c)).unwrap_err();
        assert_eq!(e, MemberError::BelowThreshold { threshold: 2 });
        assert_eq!(
            e.to_string(),
            "The number of children cannot be lower than the vote threshold 2"
        );
    }
    assert_eq!(snapshot(&q), before);
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    q.remove_child(ChildId(1)).unwrap();
    assert_eq!(ids(&q), [2, 3]);

    let mut q: Quorum = Quorum::new(Config::new(3, 3)).unwrap();
    assert_eq!(
        q.remove_child(ChildId(2)),
        Err(MemberError::BelowThreshold { threshold: 3 })
    );
    assert_eq!(
        MemberError::BelowThreshold { threshold: 3 }.to_string(),
        "The number of children cannot be lower than the vote threshold 3"
    );
    assert_eq!(ids(&q), [0, 1, 2]);
    // Threshold 1 with one child: still refused.
    let mut q: Quorum = Quorum::new(Config::new(1, 1)).unwrap();
    assert_eq!(
        q.remove_child(ChildId(0)),
        Err(MemberError::BelowThreshold { threshold: 1 })
    );
}

/// R-MEMBER-3: no adding in blkverify mode; deleting an unknown child is an
/// error naming it (checked before the threshold).
#[test]
fn r_member_3_refusals() {
    let mut q: Quorum = Quorum::new(Config::new(2, 2).with_blkverify(true)).unwrap();
    let before = snapshot(&q);
    let e = q.add_child().unwrap_err();
    assert_eq!(e, MemberError::Blkverify);
    assert_eq!(
        e.to_string(),
        "Cannot add a child to a quorum in blkverify mode"
    );
    assert_eq!(snapshot(&q), before);
    assert_eq!(ids(&q), [0, 1]);

    let mut q: Quorum = Quorum::new(Config::new(3, 1)).unwrap();
    let e = q.remove_child(ChildId(7)).unwrap_err();
    assert_eq!(e, MemberError::NoSuchChild(ChildId(7)));
    assert_eq!(e.to_string(), "Quorum does not have child 'children.7'");
    q.remove_child(ChildId(1)).unwrap();
    assert_eq!(
        q.remove_child(ChildId(1)),
        Err(MemberError::NoSuchChild(ChildId(1)))
    );
    assert_eq!(ids(&q), [0, 2]);
    // Unknown is reported even where the threshold would also refuse.
    let mut q: Quorum = Quorum::new(Config::new(2, 2)).unwrap();
    assert_eq!(
        q.remove_child(ChildId(5)),
        Err(MemberError::NoSuchChild(ChildId(5)))
    );
    let dyn_err: &dyn std::error::Error = &MemberError::Blkverify;
    assert!(!dyn_err.to_string().is_empty());
}

/// R-MEMBER-1: names are stable: after deletions, slots and names differ, and
/// events name the child, outcomes give both.
#[test]
fn r_member_1_names_in_events_and_outcomes() {
    let mut m = Mem::new(Config::new(4, 1), pattern("A B B A", 512));
    m.remove_child(ChildId(0)).unwrap();
    // Slots now: 0 → children.1 (B), 1 → children.2 (B), 2 → children.3 (A).
    m.faults.read.insert(ChildId(2), Errno::EIO);
    let (o, d) = m.read(0, 512);
    // children.2 failed; B (children.1) and A (children.3) tie one to one
    // and A, which appeared later, wins.
    assert_eq!(o, read_ok(2, 3));
    assert_eq!(d.unwrap(), vec![0xaa; 512]);
    assert_eq!(
        m.events_of(ID),
        vec![
            rb(OpType::Read, Some(Errno::EIO), 2, 0, 1),
            rb(OpType::Read, None, 1, 0, 1),
        ]
    );
    let reads: Vec<_> = m
        .log()
        .iter()
        .filter_map(|a| match *a {
            Action::Read { slot, child, .. } => Some((slot, child.0)),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![(0, 1), (1, 2), (2, 3)]);
}

/// R-MEMBER-4: a child added while a read is in flight is not part of it.
#[test]
fn r_member_4_add_mid_flight() {
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).unwrap();
    q.submit(ID, Request::Read { offset: 0, len: 4 }).unwrap();
    assert_eq!(drain(&mut q).len(), 3);
    assert_eq!(q.add_child(), Ok(ChildId(3)));
    assert_eq!(q.children().len(), 4);
    assert_eq!(
        q.handle_read(ID, 3, Ok(()), &NoBuffers),
        Err(quorum_proto::Error::NoSuchSlot { id: ID, slot: 3 })
    );
    q.handle_read(ID, 0, Ok(()), &NoBuffers).unwrap();
    q.handle_read(ID, 1, Err(Errno::EIO), &NoBuffers).unwrap();
    // Three buffers are all the request needs.
    let bufs = [vec![1u8; 4], vec![], vec![1u8; 4]];
    q.handle_read(ID, 2, Ok(()), &bufs).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![
            ev(1, rb(OpType::Read, Some(Errno::EIO), 1, 0, 1)),
            done(1, read_ok(0, 0))
        ]
    );
    // The next request uses four children.
    q.submit(RequestId(2), Request::Flush).unwrap();
    assert_eq!(drain(&mut q).len(), 4);

    // Through the driver: the added child's different data does not count.
    let mut m = Mem::new(Config::new(3, 3), pattern("A A A", 512));
    let id = m.submit(
        Request::Read {
            offset: 0,
            len: 512,
        },
        None,
    );
    m.add_child_with(vec![0xbb; 512]);
    m.run();
    assert_eq!(m.outcome(id), read_ok(0, 0));
    assert!(m.events().is_empty());
    assert_eq!(m.log().len(), 4);
    // The next read sees it and reports it.
    let (o, _) = m.read(0, 512);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(
        m.events_of(RequestId(2)),
        vec![rb(OpType::Read, None, 3, 0, 1)]
    );
}

/// R-MEMBER-4: a child deleted while requests are in flight stays part of
/// them: its completion is still expected, it still votes, and its reports
/// still name it.
#[test]
fn r_member_4_remove_mid_flight() {
    let mut q: Quorum = Quorum::new(Config::new(4, 2)).unwrap();
    q.submit(
        ID,
        Request::Write {
            offset: 0,
            len: 512,
        },
    )
    .unwrap();
    q.submit(
        RequestId(2),
        Request::Read {
            offset: 4096,
            len: 8,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut q).len(), 8);
    q.remove_child(ChildId(1)).unwrap();
    q.remove_child(ChildId(2)).unwrap();
    assert_eq!(ids(&q), [0, 3]);
    assert_eq!(
        q.remove_child(ChildId(0)),
        Err(MemberError::BelowThreshold { threshold: 2 })
    );
    // The write: slot 1 (children.1, deleted) fails and is reported under its name.
    q.handle_write(ID, 1, Err(Errno::EIO)).unwrap();
    q.handle_write(ID, 0, Ok(())).unwrap();
    q.handle_write(ID, 2, Ok(())).unwrap();
    assert_eq!(
        drain(&mut q),
        vec![ev(1, rb(OpType::Write, Some(Errno::EIO), 1, 0, 1))]
    );
    q.handle_write(ID, 3, Ok(())).unwrap();
    assert_eq!(drain(&mut q), vec![done(1, Outcome::Done)]);
    // The read: the deleted children.1 and children.2 still vote: B B wins
    // over A A by the tie-break (B appeared later), reported c3, c0.
    let bufs = [vec![0xaa; 8], vec![0xbb; 8], vec![0xbb; 8], vec![0xaa; 8]];
    for s in 0..4 {
        q.handle_read(RequestId(2), s, Ok(()), &bufs).unwrap();
    }
    assert_eq!(
        drain(&mut q),
        vec![
            ev(2, rb(OpType::Read, None, 3, 8, 1)),
            ev(2, rb(OpType::Read, None, 0, 8, 1)),
            done(2, read_ok(1, 1)),
        ]
    );
    assert!(q.is_idle());
    // New requests see two children.
    q.submit(RequestId(3), Request::Read { offset: 0, len: 8 })
        .unwrap();
    let reads = drain(&mut q);
    assert_eq!(
        reads,
        vec![
            Action::Read {
                id: RequestId(3),
                slot: 0,
                child: ChildId(0),
                offset: 0,
                len: 8
            },
            Action::Read {
                id: RequestId(3),
                slot: 1,
                child: ChildId(3),
                offset: 0,
                len: 8
            },
        ]
    );
    let bufs = [vec![0xaa; 8], vec![0xaa; 8]];
    q.handle_read(RequestId(3), 1, Ok(()), &NoBuffers).unwrap();
    q.handle_read(RequestId(3), 0, Ok(()), &bufs).unwrap();
    assert_eq!(drain(&mut q), vec![done(3, read_ok(0, 0))]);
}
