//! SPEC.md R-SYNC-1..4 — sync tracking, settling and online resync — and
//! R-CANCEL-3 — a cancelled write under sync tracking — through the kit's
//! in-memory driver with its in-memory map (`MemDriver::sync`), which
//! applies every mark as it is polled and makes an `Unsettle` durable only
//! when that pending operation is performed. The kit's checker holds every
//! call to the structural contract and to its own R-SYNC-1/2 checks.
//!
//! The device: three children, threshold 2, four chunks of 64 KiB.

mod spec_util;

use quorum_driver::sync::SyncMap;
use quorum_driver::testing::{MemDriver, Order};
use quorum_proto::sync::{Chunks, Mark};
use quorum_proto::{
    Action, ChildId, Config, Errno, Error, Event, OpType, Outcome, ReadPattern, Request, RequestId,
};
use spec_util::{Rng, failure, rb, read_ok};

const CHUNK: u64 = 64 << 10;
const CHUNKS: u64 = 4;
const SIZE: u64 = CHUNK * CHUNKS;

fn cfg() -> Config {
    Config::new(3, 2).with_sync_tracking(CHUNK)
}

/// Three children of zeroes with a map where everything is settled and in
/// sync.
fn device(cfg: Config) -> MemDriver {
    let mut d: MemDriver = MemDriver::uniform(cfg, SIZE as usize, 0);
    d.sync = Some(SyncMap::new(SIZE, CHUNK, &[0, 1, 2]));
    d
}

fn map(d: &MemDriver) -> &SyncMap {
    d.sync.as_ref().expect("the device has a map")
}

fn map_mut(d: &mut MemDriver) -> &mut SyncMap {
    d.sync.as_mut().expect("the device has a map")
}

fn chunks(first: u64, end: u64) -> Chunks {
    Chunks { first, end }
}

/// Marks `child` stale on `c`, as an earlier failed write would have.
fn set_stale(d: &mut MemDriver, child: u32, c: Chunks) {
    map_mut(d).apply(&Mark::Stale {
        child: ChildId(child),
        chunks: c,
    });
}

/// Marks `c` unsettled and durable, as a crash in the middle of a write
/// would have left it.
fn set_unsettled(d: &mut MemDriver, c: Chunks) {
    let m = map_mut(d);
    m.apply(&Mark::Unsettle { chunks: c });
    let g = m.generation();
    m.written(g);
}

fn is_stale(d: &MemDriver, child: u32, chunk: u64) -> bool {
    map(d).stale_of(child).expect("a known child").get(chunk)
}

fn stale_chunks(d: &MemDriver, child: u32) -> Vec<u64> {
    (0..CHUNKS).filter(|&c| is_stale(d, child, c)).collect()
}

fn is_unsettled(d: &MemDriver, chunk: u64) -> bool {
    map(d).unsettled().get(chunk)
}

fn fill(d: &mut MemDriver, child: u32, offset: u64, len: u64, byte: u8) {
    d.disk_mut(child)[offset as usize..(offset + len) as usize].fill(byte);
}

fn range(d: &MemDriver, child: u32, offset: u64, len: u64) -> &[u8] {
    &d.disk(child)[offset as usize..(offset + len) as usize]
}

/// The marks request `id` made, in order.
fn marks_of(d: &MemDriver, id: RequestId) -> Vec<Mark> {
    d.marks
        .iter()
        .filter(|(i, _)| *i == id)
        .map(|(_, m)| *m)
        .collect()
}

/// The children request `id` read, in order.
fn reads_of(d: &MemDriver, id: RequestId) -> Vec<u32> {
    d.log()
        .iter()
        .filter_map(|a| match *a {
            Action::Read { id: i, child, .. } if i == id => Some(child.0),
            _ => None,
        })
        .collect()
}

/// The children request `id` wrote, in order.
fn writes_of(d: &MemDriver, id: RequestId) -> Vec<u32> {
    d.log()
        .iter()
        .filter_map(|a| match *a {
            Action::Write { id: i, child, .. } | Action::WriteZeroes { id: i, child, .. }
                if i == id =>
            {
                Some(child.0)
            }
            _ => None,
        })
        .collect()
}

/// The rewrites request `id` asked for: (child, source slot).
fn rewrites_of(d: &MemDriver, id: RequestId) -> Vec<(u32, usize)> {
    d.log()
        .iter()
        .filter_map(|a| match *a {
            Action::Rewrite {
                id: i,
                child,
                source,
                ..
            } if i == id => Some((child.0, source)),
            _ => None,
        })
        .collect()
}

/// Where in the log request `id` completed.
fn completed_at(d: &MemDriver, id: RequestId) -> usize {
    d.log()
        .iter()
        .position(|a| matches!(a, Action::Complete { id: i, .. } if *i == id))
        .unwrap_or_else(|| panic!("{id} did not complete"))
}

fn has_report_bad(d: &MemDriver, id: RequestId) -> bool {
    d.events_of(id)
        .iter()
        .any(|e| matches!(e, Event::ReportBad { .. }))
}

fn submit_read(d: &mut MemDriver, offset: u64, len: u64) -> RequestId {
    d.submit(Request::Read { offset, len }, None)
}

fn submit_write(d: &mut MemDriver, offset: u64, len: u64, byte: u8) -> RequestId {
    d.submit(
        Request::Write { offset, len },
        Some(vec![byte; len as usize]),
    )
}

fn resync(d: &mut MemDriver, offset: u64, len: u64) -> RequestId {
    d.submit(Request::Resync { offset, len }, None)
}

fn settled(d: &MemDriver) -> u64 {
    d.checker().core().settled_differences()
}

/// Performs the pending operation `pick` selects (panics if none does).
fn perform_where(d: &mut MemDriver, pick: impl Fn(&Action) -> bool) {
    d.poll();
    let i = d
        .pending()
        .iter()
        .position(pick)
        .unwrap_or_else(|| panic!("no such pending operation in {:?}", d.pending()));
    d.perform(i);
}

fn is_mark(a: &Action, id: RequestId) -> bool {
    matches!(a, Action::Mark { id: i, .. } if *i == id)
}

fn is_write_to(a: &Action, id: RequestId, child: u32) -> bool {
    matches!(a, Action::Write { id: i, child: c, .. } if *i == id && c.0 == child)
}

/// Ends every pending operation of `id` with `ECANCELED`, as a driver that
/// never started them does after a cancel (R-CANCEL-2).
fn drop_pending_of(d: &mut MemDriver, id: RequestId) {
    while let Some(i) = d.pending().iter().position(|a| a.id() == id) {
        if matches!(d.pending()[i], Action::Mark { .. }) {
            d.perform(i);
        } else {
            d.finish(i, Err(Errno::ECANCELED)).expect("accepted");
        }
    }
}

// ---- R-SYNC-1: stale children ----------------------------------------------

/// R-SYNC-1: a child stale on a chunk is not read for a range touching
/// that chunk — also a range that only touches it at one end — does not
/// vote and is not reported, even when its content differs and
/// rewrite-corrupted is on; it is read where it is not stale.
#[test]
fn r_sync_1_stale_child_not_read_not_voting_not_reported() {
    let mut d = device(cfg().with_rewrite_corrupted(true));
    set_stale(&mut d, 2, chunks(1, 2));
    // children.2 holds garbage on chunk 1 (it missed writes there).
    fill(&mut d, 2, CHUNK, CHUNK, 0xee);
    for (offset, len) in [
        (CHUNK, CHUNK),
        (CHUNK + 512, 4096),
        (CHUNK - 512, 1024), // chunks 0 and 1
        (0, SIZE),
    ] {
        let id = submit_read(&mut d, offset, len);
        d.run();
        assert_eq!(reads_of(&d, id), [0, 1], "{offset}+{len}");
        assert_eq!(d.outcome(id), read_ok(0, 0));
        assert!(d.events_of(id).is_empty(), "a stale child is not reported");
        assert!(rewrites_of(&d, id).is_empty(), "nor repaired by a read");
    }
    // Where it is not stale it is read, and votes as ever.
    let id = submit_read(&mut d, 0, CHUNK);
    d.run();
    assert_eq!(reads_of(&d, id), [0, 1, 2]);
    assert_eq!(range(&d, 2, CHUNK, CHUNK), vec![0xee; CHUNK as usize]);
}

/// R-SYNC-1: the stale child's data never wins, however many stale
/// children agree on it: here the two fresh children's version is the
/// answer although both stale ones hold another.
#[test]
fn r_sync_1_stale_children_do_not_vote() {
    let mut d: MemDriver = MemDriver::uniform(
        Config::new(4, 2).with_sync_tracking(CHUNK),
        SIZE as usize,
        0,
    );
    d.sync = Some(SyncMap::new(SIZE, CHUNK, &[0, 1, 2, 3]));
    set_stale(&mut d, 0, chunks(0, 1));
    set_stale(&mut d, 1, chunks(0, 1));
    fill(&mut d, 0, 0, 4096, 0xbb);
    fill(&mut d, 1, 0, 4096, 0xbb);
    let (o, data) = d.read(0, 4096);
    assert_eq!(o, read_ok(2, 2));
    assert_eq!(data.unwrap(), vec![0; 4096]);
    assert!(d.events().is_empty());
}

/// R-SYNC-1: with fewer than `threshold` children not stale there, a read
/// fails with EIO and QUORUM_FAILURE at once, as if they had failed — no
/// child is read and no child is reported.
#[test]
fn r_sync_1_too_few_fresh_children_fail_with_eio_and_failure() {
    let mut d = device(cfg());
    set_stale(&mut d, 1, chunks(2, 3));
    set_stale(&mut d, 2, chunks(3, 4));
    let id = submit_read(&mut d, 3 * CHUNK - 512, 1024); // chunks 2 and 3
    d.run();
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::EIO));
    assert_eq!(
        d.events_of(id),
        [failure((3 * CHUNK - 512) / 512, 2)],
        "QUORUM_FAILURE, no REPORT_BAD"
    );
    assert!(reads_of(&d, id).is_empty());
    // Each chunk alone still has two fresh children.
    for offset in [2 * CHUNK, 3 * CHUNK] {
        let (o, _) = d.read(offset, 512);
        assert!(matches!(o, Outcome::Read { .. }), "{o:?}");
    }
}

/// R-SYNC-1, R-FIFO-1..2: fifo skips stale children, both for its first
/// read and after a failure; with only stale children left after a
/// failure, the read fails with that failure's error.
#[test]
fn r_sync_1_fifo_skips_stale_children() {
    let mut d = device(
        Config::new(3, 1)
            .with_read_pattern(ReadPattern::Fifo)
            .with_sync_tracking(CHUNK),
    );
    set_stale(&mut d, 0, chunks(0, 1));
    let id = submit_read(&mut d, 0, 512);
    d.run();
    assert_eq!(reads_of(&d, id), [1]);
    assert_eq!(d.outcome(id), read_ok(1, 1));

    // children.1 fails: the next one not stale is children.2.
    set_stale(&mut d, 1, chunks(1, 2));
    set_stale(&mut d, 0, chunks(1, 2));
    d.faults.read.insert(ChildId(2), Errno::ENOSPC);
    let id = submit_read(&mut d, CHUNK, 512);
    d.run();
    assert_eq!(reads_of(&d, id), [2]);
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::ENOSPC));
    assert_eq!(
        d.events_of(id),
        [rb(OpType::Read, Some(Errno::ENOSPC), 2, CHUNK / 512, 1)]
    );

    d.faults.read.clear();
    d.faults.read.insert(ChildId(0), Errno::EIO);
    set_stale(&mut d, 1, chunks(2, 3));
    let id = submit_read(&mut d, 2 * CHUNK, 512);
    d.run();
    assert_eq!(
        reads_of(&d, id),
        [0, 2],
        "children.1 skipped after a failure"
    );
    assert_eq!(d.outcome(id), read_ok(2, 2));
}

/// R-SYNC-1: writes still go to stale children, but only children not
/// stale on every chunk of the range count toward the threshold: one fresh
/// success and a stale success are a failed write (EIO, QUORUM_FAILURE).
#[test]
fn r_sync_1_writes_reach_stale_children_but_only_fresh_ones_count() {
    let mut d = device(cfg());
    set_stale(&mut d, 2, chunks(1, 2));
    // A write over chunks 0 and 1: children.2 is stale on one of them.
    let (offset, len) = (CHUNK - 1024, 2048);
    let id = submit_write(&mut d, offset, len, 0x5a);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(
        writes_of(&d, id),
        [0, 1, 2],
        "the stale child is written too"
    );
    assert_eq!(range(&d, 2, offset, len), vec![0x5a; len as usize]);

    d.faults.write.insert(ChildId(1), Errno::ENOSPC);
    let id = submit_write(&mut d, offset, len, 0x6b);
    d.run();
    assert_eq!(writes_of(&d, id), [0, 1, 2]);
    assert_eq!(
        d.outcome(id),
        Outcome::Failed(Errno::ENOSPC),
        "children.0 and the stale children.2 succeeded: one fresh success is below 2"
    );
    let ev = d.events_of(id);
    assert!(ev.contains(&failure(offset / 512, len / 512)), "{ev:?}");
    // The same write where children.2 is not stale succeeds.
    let id = submit_write(&mut d, 0, 1024, 0x6b);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
}

// ---- R-SYNC-2: unsettled, write-intent, stale marks, clean marks --------------

/// R-SYNC-2: a write's Unsettle is polled before any of its child writes,
/// the map has the chunks unsettled (and waiting to be written) at once,
/// and no child write is issued until the driver says the mark is durable.
#[test]
fn r_sync_2_unsettle_before_any_child_write() {
    let mut d = device(cfg());
    let (offset, len) = (CHUNK + 4096, 2 * CHUNK); // chunks 1..4
    let id = submit_write(&mut d, offset, len, 0x11);
    let new = d.poll();
    assert_eq!(
        new,
        [Action::Mark {
            id,
            mark: Mark::Unsettle {
                chunks: chunks(1, 4)
            }
        }],
        "the mark, and nothing else yet"
    );
    assert!((1..4).all(|c| is_unsettled(&d, c)) && !is_unsettled(&d, 0));
    assert!(map(&d).urgent(), "not yet durable");
    // Polling again issues nothing while the mark is not durable.
    assert!(d.poll().is_empty());
    assert!(writes_of(&d, id).is_empty());
    assert_eq!(d.pending().len(), 1);
    d.perform(0);
    assert!(!map(&d).urgent());
    let new = d.poll();
    assert_eq!(new.len(), 3);
    assert!(new.iter().all(|a| matches!(a, Action::Write { .. })));
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    // The Unsettle is the first action of the request in the log.
    let first = d.log().iter().find(|a| a.id() == id).unwrap();
    assert!(is_mark(first, id));
}

/// R-SYNC-2: write-zeroes is a write: its chunks are unsettled first too.
#[test]
fn r_sync_2_write_zeroes_unsettles_first() {
    let mut d = device(cfg());
    let id = d.submit(
        Request::WriteZeroes {
            offset: 2 * CHUNK,
            len: 512,
        },
        None,
    );
    assert_eq!(
        d.poll(),
        [Action::Mark {
            id,
            mark: Mark::Unsettle {
                chunks: chunks(2, 3)
            }
        }]
    );
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(
        marks_of(&d, id),
        [
            Mark::Unsettle {
                chunks: chunks(2, 3)
            },
            Mark::Clean {
                chunks: chunks(2, 3),
                epoch: 0
            }
        ]
    );
}

/// R-SYNC-1..2: a write that fails on one child while the request succeeds
/// makes that child stale on exactly the write's chunks, and its chunks
/// clean (once flushed).
#[test]
fn r_sync_2_failed_child_write_marks_it_stale_on_exactly_its_chunks() {
    let mut d = device(cfg());
    d.faults.write.insert(ChildId(1), Errno::EIO);
    let id = submit_write(&mut d, CHUNK + 512, CHUNK, 0x22); // chunks 1 and 2
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(
        marks_of(&d, id),
        [
            Mark::Unsettle {
                chunks: chunks(1, 3)
            },
            Mark::Stale {
                child: ChildId(1),
                chunks: chunks(1, 3)
            },
            Mark::Clean {
                chunks: chunks(1, 3),
                epoch: 0
            }
        ]
    );
    assert_eq!(stale_chunks(&d, 1), [1, 2]);
    assert!(stale_chunks(&d, 0).is_empty() && stale_chunks(&d, 2).is_empty());
    // The failure is still reported (R-WRITE-1).
    assert_eq!(
        d.events_of(id),
        [rb(
            OpType::Write,
            Some(Errno::EIO),
            1,
            (CHUNK + 512) / 512,
            128
        )]
    );
    // And a later read there does not read children.1 (R-SYNC-1).
    d.faults.write.clear();
    let r = submit_read(&mut d, 2 * CHUNK, 512);
    d.run();
    assert_eq!(reads_of(&d, r), [0, 2]);
}

/// R-SYNC-1..2: a write that fails its threshold marks no child stale and
/// emits no Clean: its chunks stay unsettled, even after a flush.
#[test]
fn r_sync_2_failed_write_marks_nobody_stale_and_nothing_clean() {
    let mut d = device(cfg());
    d.faults.write.insert(ChildId(1), Errno::EIO);
    d.faults.write.insert(ChildId(2), Errno::EIO);
    let id = submit_write(&mut d, 0, 4096, 0x33);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::EIO));
    assert_eq!(
        marks_of(&d, id),
        [Mark::Unsettle {
            chunks: chunks(0, 1)
        }]
    );
    assert!((0..3).all(|c| stale_chunks(&d, c).is_empty()));
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0));
    // The vote settles it (R-SYNC-3): children.0 holds the write, the others
    // do not; the majority wins and children.0 is rewritten.
    d.faults.write.clear();
    let (o, data) = d.read(0, CHUNK);
    assert_eq!(o, read_ok(1, 1));
    assert_eq!(data.unwrap(), vec![0; CHUNK as usize]);
    assert_eq!(range(&d, 0, 0, 4096), vec![0; 4096]);
    assert!(d.events().iter().all(|(_, e)| !matches!(
        e,
        Event::ReportBad {
            op: OpType::Read,
            ..
        }
    )));
}

/// R-SYNC-2: a write's Clean waits for a flush submitted after the write
/// completed; Flushed then clears the chunks in the map.
#[test]
fn r_sync_2_clean_applied_by_a_later_flush() {
    let mut d = device(cfg());
    let w = submit_write(&mut d, 3 * CHUNK, 4096, 0x44);
    d.run();
    assert_eq!(
        marks_of(&d, w).last(),
        Some(&Mark::Clean {
            chunks: chunks(3, 4),
            epoch: 0
        })
    );
    assert!(is_unsettled(&d, 3), "not cleared before a flush");
    let f = d.submit(Request::Flush, None);
    d.run();
    assert_eq!(d.outcome(f), Outcome::Done);
    assert_eq!(marks_of(&d, f), [Mark::Flushed { epoch: 1 }]);
    assert!(!is_unsettled(&d, 3));
    assert_eq!(map(&d).unsettled().count(), 0);
}

/// R-SYNC-2: a write that completes after a flush was submitted is not
/// made durable by that flush (its child flushes may have run first): its
/// Clean is of that flush's epoch and waits for the next one.
#[test]
fn r_sync_2_clean_waits_for_a_flush_of_a_later_epoch() {
    let mut d = device(cfg());
    let w = submit_write(&mut d, 0, 4096, 0x55);
    perform_where(&mut d, |a| is_mark(a, w));
    d.poll(); // the child writes, pending
    let f = d.submit(Request::Flush, None);
    d.poll();
    // The flushes land first, then the writes.
    while let Some(i) = d
        .pending()
        .iter()
        .position(|a| matches!(a, Action::Flush { .. }))
    {
        d.perform(i);
        d.poll();
    }
    d.run();
    assert_eq!(d.outcome(f), Outcome::Done);
    assert_eq!(marks_of(&d, f), [Mark::Flushed { epoch: 1 }]);
    assert_eq!(
        marks_of(&d, w).last(),
        Some(&Mark::Clean {
            chunks: chunks(0, 1),
            epoch: 1
        })
    );
    assert!(is_unsettled(&d, 0), "the flush ran before the write landed");
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_unsettled(&d, 0));
}

/// R-SYNC-2, R-SYNC-4: Flushed is emitted only when every child's flush
/// succeeded — a flush that succeeds by its threshold with one child
/// failing clears nothing, Clean nor Fresh.
#[test]
fn r_sync_2_flush_failing_on_a_child_clears_nothing() {
    let mut d = device(cfg());
    set_stale(&mut d, 2, chunks(1, 2));
    let w = submit_write(&mut d, 0, 512, 0x66);
    d.run();
    let r = resync(&mut d, CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(w), Outcome::Done);
    assert_eq!(d.outcome(r), Outcome::Done);
    d.faults.flush.insert(ChildId(1), Errno::EIO);
    let f = d.submit(Request::Flush, None);
    d.run();
    assert_eq!(d.outcome(f), Outcome::Done, "two of three flushed");
    assert!(marks_of(&d, f).is_empty(), "no Flushed");
    assert!(is_unsettled(&d, 0));
    assert!(is_stale(&d, 2, 1));
    d.faults.flush.clear();
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_unsettled(&d, 0));
    assert!(!is_stale(&d, 2, 1));
}

// ---- R-SYNC-3: settling ----------------------------------------------------

/// R-SYNC-3: a read of an unsettled chunk whose children differ writes the
/// winner to the losers although rewrite-corrupted is off, reports no
/// QUORUM_REPORT_BAD for the difference, counts it, and completes only
/// once the rewrite is done; the whole chunk it covered is clean once
/// flushed.
#[test]
fn r_sync_3_read_of_unsettled_chunk_settles_without_reports() {
    let mut d = device(cfg());
    assert!(!d.checker().config().rewrite_corrupted);
    set_unsettled(&mut d, chunks(0, 1));
    // A torn write: children.2 got it, the others did not.
    fill(&mut d, 2, 100, 4000, 0x77);
    let id = submit_read(&mut d, 0, CHUNK);
    d.poll();
    for _ in 0..3 {
        d.perform(0);
    }
    d.poll();
    assert_eq!(d.try_outcome(id), None, "not before the rewrite");
    assert_eq!(rewrites_of(&d, id), [(2, 0)]);
    assert_eq!(d.pending().len(), 1);
    d.perform(0);
    d.poll();
    assert_eq!(d.outcome(id), read_ok(0, 0));
    assert_eq!(d.data(id).unwrap(), vec![0; CHUNK as usize]);
    assert!(d.events_of(id).is_empty(), "a settle reports nothing");
    assert_eq!(settled(&d), 1);
    assert_eq!(d.disk(2), d.disk(0));
    let rewrite_at = d
        .log()
        .iter()
        .position(|a| matches!(a, Action::Rewrite { .. }))
        .unwrap();
    assert!(rewrite_at < completed_at(&d, id));
    assert_eq!(
        marks_of(&d, id),
        [Mark::Clean {
            chunks: chunks(0, 1),
            epoch: 0
        }]
    );
    assert!(is_unsettled(&d, 0));
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_unsettled(&d, 0));
    // Now settled: the same difference is corruption, reported (R-READ-6).
    fill(&mut d, 2, 100, 4000, 0x77);
    let id = submit_read(&mut d, 0, CHUNK);
    d.run();
    assert_eq!(d.events_of(id), [rb(OpType::Read, None, 2, 0, CHUNK / 512)]);
    assert!(rewrites_of(&d, id).is_empty());
    assert_eq!(settled(&d), 1);
}

/// R-SYNC-3: several losers, and a child that failed its read, all get the
/// winner; the stale child is neither read nor written; only the
/// differences are counted.
#[test]
fn r_sync_3_every_differing_or_failed_fresh_child_gets_the_winner() {
    let mut d: MemDriver = MemDriver::uniform(
        Config::new(5, 2).with_sync_tracking(CHUNK),
        SIZE as usize,
        0x10,
    );
    d.sync = Some(SyncMap::new(SIZE, CHUNK, &[0, 1, 2, 3, 4]));
    set_unsettled(&mut d, chunks(1, 2));
    set_stale(&mut d, 4, chunks(1, 2));
    fill(&mut d, 4, CHUNK, 512, 0xee);
    // 0x20, 0x10, 0x30, 0x10: 0x10 wins from children.1.
    fill(&mut d, 0, CHUNK, 512, 0x20);
    fill(&mut d, 2, CHUNK, 512, 0x30);
    let id = submit_read(&mut d, CHUNK, 512);
    d.run();
    assert_eq!(d.outcome(id), read_ok(1, 1));
    assert_eq!(reads_of(&d, id), [0, 1, 2, 3]);
    let mut rw = rewrites_of(&d, id);
    rw.sort();
    assert_eq!(rw, [(0, 1), (2, 1)]);
    assert_eq!(settled(&d), 2);
    assert!(d.events_of(id).is_empty());
    assert_eq!(
        range(&d, 4, CHUNK, 512),
        vec![0xee; 512],
        "stale: untouched"
    );
    for c in 0..4 {
        assert_eq!(range(&d, c, CHUNK, 512), vec![0x10; 512]);
    }

    // A failed read is rewritten too (and reported as the read error it
    // is), but is no difference.
    fill(&mut d, 0, CHUNK, 512, 0x20);
    d.faults.read.insert(ChildId(1), Errno::ENOSPC);
    let id = submit_read(&mut d, CHUNK, 512);
    d.run();
    assert_eq!(d.outcome(id), read_ok(2, 2));
    let mut rw = rewrites_of(&d, id);
    rw.sort();
    assert_eq!(rw, [(0, 2), (1, 2)]);
    assert_eq!(settled(&d), 3);
    assert_eq!(
        d.events_of(id),
        [rb(OpType::Read, Some(Errno::ENOSPC), 1, CHUNK / 512, 1)]
    );

    // No version with two votes: EIO and FAILURE, nothing written.
    d.faults.read.clear();
    for (c, b) in [(0, 0x01), (1, 0x02), (2, 0x03), (3, 0x04)] {
        fill(&mut d, c, CHUNK, 512, b);
    }
    let id = submit_read(&mut d, CHUNK, 512);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::EIO));
    assert_eq!(d.events_of(id), [failure(CHUNK / 512, 1)]);
    assert!(rewrites_of(&d, id).is_empty());
    assert_eq!(settled(&d), 3);
}

/// R-SYNC-3: a read covering only part of an unsettled chunk settles what
/// it read but cannot clean the chunk: the rest was not compared.
#[test]
fn r_sync_3_partial_read_settles_but_leaves_the_chunk_unsettled() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 2));
    fill(&mut d, 1, 0, 512, 0x99);
    fill(&mut d, 1, CHUNK + 8192, 512, 0x99);
    // Chunk 0 partly, chunk 1 whole.
    let id = submit_read(&mut d, 0, 2 * CHUNK);
    d.run();
    assert_eq!(d.outcome(id), read_ok(0, 0));
    assert_eq!(
        marks_of(&d, id),
        [Mark::Clean {
            chunks: chunks(0, 2),
            epoch: 0
        }]
    );
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 2));
    fill(&mut d, 1, 512, 512, 0x99);
    let id = submit_read(&mut d, 512, 2 * CHUNK - 512);
    d.run();
    assert_eq!(rewrites_of(&d, id), [(1, 0)]);
    assert_eq!(
        marks_of(&d, id),
        [Mark::Clean {
            chunks: chunks(1, 2),
            epoch: 0
        }],
        "chunk 0 was read from 512 on only"
    );
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0) && !is_unsettled(&d, 1));
}

/// R-SYNC-1, R-SYNC-3: a settling write that fails leaves that child stale
/// on the chunks settled, and the request still completes with the vote.
#[test]
fn r_sync_3_failed_settling_write_marks_the_child_stale() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(2, 3));
    fill(&mut d, 0, 2 * CHUNK, CHUNK, 0x42);
    d.faults.rewrite.insert(ChildId(0), Errno::EIO);
    let id = submit_read(&mut d, 2 * CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), read_ok(1, 1));
    assert_eq!(rewrites_of(&d, id), [(0, 1)]);
    assert_eq!(
        marks_of(&d, id),
        [
            Mark::Stale {
                child: ChildId(0),
                chunks: chunks(2, 3)
            },
            Mark::Clean {
                chunks: chunks(2, 3),
                epoch: 0
            }
        ]
    );
    assert_eq!(stale_chunks(&d, 0), [2]);
    assert!(d.events_of(id).is_empty());
    // From now on children.0 is neither read nor voting there.
    let id = submit_read(&mut d, 2 * CHUNK, 512);
    d.run();
    assert_eq!(reads_of(&d, id), [1, 2]);
}

/// R-SYNC-3: once a settling read has answered, the answer is repeatable
/// even if the child it was read from fails afterwards: without the
/// settle, the two children left would disagree and fail the read.
#[test]
fn r_sync_3_read_repeatable_after_settling_even_if_a_child_fails() {
    for settle in [true, false] {
        let mut d = device(cfg());
        if settle {
            set_unsettled(&mut d, chunks(0, 1));
        }
        // A, A, B: A wins from children.0.
        fill(&mut d, 2, 0, 4096, 0xbb);
        let (o, first) = d.read(0, 4096);
        assert_eq!(o, read_ok(0, 0));
        d.faults.read.insert(ChildId(0), Errno::EIO);
        let (o, again) = d.read(0, 4096);
        if settle {
            assert_eq!(o, read_ok(1, 1));
            assert_eq!(again, first);
        } else {
            // QEMU's behaviour (rewrite-corrupted off): A vs B, no quorum.
            assert_eq!(o, Outcome::Failed(Errno::EIO));
        }
    }
}

/// R-SYNC-3: a read that an overlapping write was submitted behind settles
/// nothing — what it read may be older than the write — and leaves the
/// chunk unsettled.
#[test]
fn r_sync_3_read_overlapped_by_a_write_settles_nothing() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 1));
    fill(&mut d, 2, 0, 512, 0xbb);
    let r = submit_read(&mut d, 0, CHUNK);
    d.poll();
    let w = submit_write(&mut d, CHUNK - 512, 512, 0x12);
    d.run();
    assert!(matches!(d.outcome(r), Outcome::Read { .. }));
    assert_eq!(d.outcome(w), Outcome::Done);
    assert!(rewrites_of(&d, r).is_empty());
    assert!(marks_of(&d, r).is_empty());
    assert_eq!(settled(&d), 0);
    assert_eq!(d.flush(), Outcome::Done);
    assert!(
        is_unsettled(&d, 0),
        "children.2 still differs on the first sector"
    );
}

/// R-SYNC-3, R-CANCEL-3: a settling read whose rewrites are still out when
/// a write to the range is submitted (held behind them) marks nothing
/// clean: that write may still tear the chunk — here it is cancelled after
/// reaching one child.
#[test]
fn r_sync_3_settle_followed_by_a_write_marks_nothing_clean() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 1));
    fill(&mut d, 2, 0, 512, 0xbb);
    let r = submit_read(&mut d, 0, CHUNK);
    d.poll();
    for _ in 0..3 {
        d.perform(0);
    }
    d.poll();
    assert_eq!(rewrites_of(&d, r), [(2, 0)], "the settling write, out");
    let w = submit_write(&mut d, 0, 512, 0x77);
    perform_where(&mut d, |a| is_mark(a, w));
    d.poll();
    assert!(
        writes_of(&d, w).is_empty(),
        "held behind the settling write"
    );
    perform_where(&mut d, |a| matches!(a, Action::Rewrite { .. }));
    d.poll();
    assert_eq!(d.outcome(r), read_ok(0, 0));
    assert!(
        !marks_of(&d, r)
            .iter()
            .any(|m| matches!(m, Mark::Clean { .. })),
        "{:?}",
        marks_of(&d, r)
    );
    perform_where(&mut d, |a| is_write_to(a, w, 0));
    d.cancel(w).unwrap();
    drop_pending_of(&mut d, w);
    d.run();
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0), "children.0 holds the torn write");
}

/// R-SYNC-3 with early quorum: a read that settles gives no early answer —
/// the caller is answered once the losers hold the winner, so the answer
/// is repeatable from then on; a read of a settled range still answers
/// early.
#[test]
fn r_sync_3_settling_read_answers_only_once_settled_with_early_quorum() {
    let mut d = device(cfg().with_early_quorum(true));
    set_unsettled(&mut d, chunks(0, 1));
    fill(&mut d, 2, 0, 512, 0xbb);
    let r = submit_read(&mut d, 0, CHUNK);
    d.poll();
    d.perform(0);
    d.perform(0);
    d.poll();
    assert!(
        d.answers().is_empty(),
        "two agree, but the range is unsettled"
    );
    d.run();
    assert_eq!(d.outcome(r), read_ok(0, 0));
    assert_eq!(rewrites_of(&d, r), [(2, 0)]);
    assert!(d.answers().is_empty());
    // Settled (and flushed): early answers again.
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_unsettled(&d, 0));
    let r = submit_read(&mut d, 0, 512);
    d.poll();
    d.perform(0);
    d.perform(0);
    d.poll();
    assert_eq!(d.answers(), [(r, read_ok(0, 0))]);
    d.run();
}

/// R-SYNC-3: after a crash, overlapping reads may vote different winners
/// (each over its own range). Once one starts writing its winner, a read
/// over its range that has not voted yet, or that starts while those
/// writes run, settles and repairs nothing (it answers its vote, before
/// the settle for the caller): a read once answered stays repeatable. The
/// simulator's crash seeds found the second settle overwriting the first.
#[test]
fn r_sync_3_a_settle_in_progress_makes_overlapping_reads_settle_nothing() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 1));
    fill(&mut d, 2, 0, 512, 0xbb);
    let a = submit_read(&mut d, 0, CHUNK);
    let b = submit_read(&mut d, 0, 4096);
    d.poll();
    for _ in 0..3 {
        perform_where(&mut d, |x| matches!(x, Action::Read { id, .. } if *id == a));
    }
    d.poll();
    assert_eq!(rewrites_of(&d, a), [(2, 0)], "a settles children.2");
    // c starts while a's settling write is still pending.
    let c = submit_read(&mut d, 0, 512);
    d.run();
    assert_eq!(d.outcome(a), read_ok(0, 0));
    for r in [b, c] {
        assert!(matches!(d.outcome(r), Outcome::Read { .. }));
        assert!(rewrites_of(&d, r).is_empty(), "{r} settles nothing");
        assert!(marks_of(&d, r).is_empty(), "{r} cleans nothing");
    }
    assert_eq!(range(&d, 2, 0, 512), &[0u8; 512][..]);
}

/// R-SYNC-3: a settling read does not read the children stale on some
/// chunk of its range; where they are not stale they may hold another of a
/// crash's writes, and a later read there would vote with them: they become
/// stale on the whole range it settled. A settling write that fails leaves
/// its child stale on every chunk the read touches, one it covers only
/// partly too.
#[test]
fn r_sync_3_children_a_settle_did_not_reach_become_stale_on_its_range() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 2));
    set_stale(&mut d, 2, chunks(0, 1));
    let id = submit_read(&mut d, 0, 2 * CHUNK);
    d.run();
    assert_eq!(reads_of(&d, id), [0, 1]);
    assert_eq!(
        marks_of(&d, id),
        [
            Mark::Stale {
                child: ChildId(2),
                chunks: chunks(0, 2)
            },
            Mark::Clean {
                chunks: chunks(0, 2),
                epoch: 0
            }
        ]
    );
    assert_eq!(stale_chunks(&d, 2), [0, 1]);

    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 1));
    fill(&mut d, 0, 512, 512, 0x42);
    d.faults.rewrite.insert(ChildId(0), Errno::EIO);
    let id = submit_read(&mut d, 512, 512);
    d.run();
    assert_eq!(d.outcome(id), read_ok(1, 1));
    assert_eq!(
        marks_of(&d, id),
        [Mark::Stale {
            child: ChildId(0),
            chunks: chunks(0, 1)
        }],
        "stale on the chunk read in part; nothing clean"
    );
    assert_eq!(stale_chunks(&d, 0), [0]);
}

/// R-SYNC-3, R-SYNC-7: a settling read within one chunk skips a child
/// stale on that chunk and leaves no `Stale` mark for it — it is stale
/// there already, and a mark would only cut the `Fresh` of a rebuild's copy
/// waiting for its flush (copied again and again under a client's reads).
#[test]
fn r_sync_3_a_settle_within_one_chunk_does_not_mark_its_stale_child_again() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(1, 2));
    set_stale(&mut d, 2, chunks(1, 2));
    let id = submit_read(&mut d, CHUNK + 512, 512);
    d.run();
    assert_eq!(reads_of(&d, id), [0, 1]);
    assert!(
        !marks_of(&d, id)
            .iter()
            .any(|m| matches!(m, Mark::Stale { .. })),
        "{:?}",
        marks_of(&d, id)
    );
    assert_eq!(stale_chunks(&d, 2), [1]);
}

// ---- R-SYNC-4: resync -------------------------------------------------------

/// R-SYNC-4: a resync reads the children not stale there, writes the
/// winner to the stale one, completes Done, and marks it Fresh — cleared
/// by the next successful flush.
#[test]
fn r_sync_4_resync_copies_the_winner_to_the_stale_child() {
    let mut d = device(cfg());
    fill(&mut d, 0, CHUNK, CHUNK, 0xaa);
    fill(&mut d, 1, CHUNK, CHUNK, 0xaa);
    fill(&mut d, 2, CHUNK, CHUNK, 0xee);
    set_stale(&mut d, 2, chunks(1, 2));
    let id = resync(&mut d, CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(reads_of(&d, id), [0, 1]);
    assert_eq!(rewrites_of(&d, id), [(2, 0)]);
    assert_eq!(range(&d, 2, CHUNK, CHUNK), vec![0xaa; CHUNK as usize]);
    assert_eq!(
        marks_of(&d, id),
        [Mark::Fresh {
            child: ChildId(2),
            chunks: chunks(1, 2),
            epoch: 0
        }]
    );
    assert!(d.events_of(id).is_empty());
    assert!(is_stale(&d, 2, 1), "until flushed");
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_stale(&d, 2, 1));
    // It votes there again.
    let r = submit_read(&mut d, CHUNK, 512);
    d.run();
    assert_eq!(reads_of(&d, r), [0, 1, 2]);
    assert!(d.events_of(r).is_empty());
}

/// A device of `n` children of zeroes, threshold `t`, everything settled
/// and in sync but `stale` on chunk 1 (a rebuild).
fn rebuild_device(n: usize, t: usize, stale: u32) -> MemDriver {
    let mut d: MemDriver = MemDriver::uniform(
        Config::new(n, t).with_sync_tracking(CHUNK),
        SIZE as usize,
        0,
    );
    let ids: Vec<u32> = (0..n as u32).collect();
    d.sync = Some(SyncMap::new(SIZE, CHUNK, &ids));
    for c in 0..n as u32 {
        fill(
            &mut d,
            c,
            CHUNK,
            CHUNK,
            if c == stale { 0xee } else { 0xaa },
        );
    }
    set_stale(&mut d, stale, chunks(1, 2));
    d
}

/// R-SYNC-4: a resync of a settled range reads a quorum of the fresh
/// children first — `threshold` of them and more than half — and, when
/// they agree, copies without reading the others: no other content can
/// have more votes.
#[test]
fn r_sync_4_a_resync_reads_a_quorum_first() {
    // (children, threshold) → the children read: 3 of 4 fresh with
    // threshold 3; 2 of 3 fresh with threshold 2; 3 of 4 fresh (more than
    // half) with threshold 2; 1 of 1 with threshold 1.
    for (n, t, read) in [
        (4, 3, vec![0, 1, 2]),
        (4, 2, vec![0, 1]),
        (5, 2, vec![0, 1, 2]),
        (2, 1, vec![0]),
    ] {
        let stale = n as u32 - 1;
        let mut d = rebuild_device(n, t, stale);
        let id = resync(&mut d, CHUNK, CHUNK);
        d.run();
        assert_eq!(d.outcome(id), Outcome::Done, "{n} children, threshold {t}");
        assert_eq!(reads_of(&d, id), read, "{n} children, threshold {t}");
        assert_eq!(rewrites_of(&d, id), [(stale, 0)]);
        assert!(d.events_of(id).is_empty());
        assert_eq!(range(&d, stale, CHUNK, CHUNK), vec![0xaa; CHUNK as usize]);
        assert!(matches!(marks_of(&d, id)[..], [Mark::Fresh { .. }]));
    }
}

/// R-SYNC-4: when the quorum read first disagrees (R-READ-6: the loser is
/// reported as ever) or one of its reads fails (R-READ-2: reported at
/// once), the other fresh children are read, the full vote decides and the
/// copy is the winner's.
#[test]
fn r_sync_4_a_quorum_read_first_that_disagrees_or_fails_reads_the_rest() {
    let disagrees = rb(OpType::Read, None, 0, CHUNK / 512, CHUNK / 512);
    let fails = rb(OpType::Read, Some(Errno::EIO), 1, CHUNK / 512, CHUNK / 512);
    for (event, source) in [(disagrees, 1), (fails, 0)] {
        let mut d = rebuild_device(4, 2, 3);
        if event == fails {
            d.faults.read.insert(ChildId(1), Errno::EIO);
        } else {
            fill(&mut d, 0, CHUNK, 512, 0x55);
        }
        let id = resync(&mut d, CHUNK, CHUNK);
        d.run();
        assert_eq!(d.outcome(id), Outcome::Done, "{event:?}");
        assert_eq!(reads_of(&d, id), [0, 1, 2], "{event:?}");
        assert_eq!(d.events_of(id), [event]);
        assert_eq!(rewrites_of(&d, id), [(3, source)], "{event:?}");
        assert_eq!(range(&d, 3, CHUNK, CHUNK), vec![0xaa; CHUNK as usize]);
    }
}

/// R-SYNC-3..4: a resync of an unsettled range reads every fresh child:
/// it must find every one that differs.
#[test]
fn r_sync_4_a_settling_resync_reads_every_fresh_child() {
    let mut d = rebuild_device(4, 2, 3);
    set_unsettled(&mut d, chunks(1, 2));
    fill(&mut d, 2, CHUNK, 512, 0x55);
    let id = resync(&mut d, CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(reads_of(&d, id), [0, 1, 2]);
    assert!(d.events_of(id).is_empty(), "settling reports nothing");
    let mut copied = rewrites_of(&d, id);
    copied.sort_unstable();
    assert_eq!(copied, [(2, 0), (3, 0)]);
}

/// R-SYNC-4: a resync of a range that is unsettled too settles it on the
/// way: losers among the fresh children get the winner (counted, not
/// reported) and the range is clean once flushed.
#[test]
fn r_sync_4_resync_settles_unsettled_chunks() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(3, 4));
    set_stale(&mut d, 0, chunks(3, 4));
    fill(&mut d, 0, 3 * CHUNK, CHUNK, 0xee);
    // Nothing stale, two fresh children differing is no quorum; add one.
    let mut d4: MemDriver = MemDriver::uniform(
        Config::new(4, 2).with_sync_tracking(CHUNK),
        SIZE as usize,
        0,
    );
    d4.sync = Some(SyncMap::new(SIZE, CHUNK, &[0, 1, 2, 3]));
    set_unsettled(&mut d4, chunks(3, 4));
    set_stale(&mut d4, 0, chunks(3, 4));
    fill(&mut d4, 0, 3 * CHUNK, CHUNK, 0xee);
    fill(&mut d4, 2, 3 * CHUNK + 4096, 512, 0x01);
    let id = resync(&mut d4, 3 * CHUNK, CHUNK);
    d4.run();
    assert_eq!(d4.outcome(id), Outcome::Done);
    assert_eq!(reads_of(&d4, id), [1, 2, 3]);
    let mut rw = rewrites_of(&d4, id);
    rw.sort();
    assert_eq!(rw, [(0, 1), (2, 1)]);
    assert!(d4.events_of(id).is_empty());
    assert_eq!(d4.checker().core().settled_differences(), 1);
    let m = marks_of(&d4, id);
    assert!(m.contains(&Mark::Fresh {
        child: ChildId(0),
        chunks: chunks(3, 4),
        epoch: 0
    }));
    assert!(m.contains(&Mark::Clean {
        chunks: chunks(3, 4),
        epoch: 0
    }));
    assert_eq!(d4.flush(), Outcome::Done);
    assert!(!is_unsettled(&d4, 3) && !is_stale(&d4, 0, 3));
    for c in 0..4 {
        assert_eq!(d4.disk(c), d4.disk(1), "children.{c}");
    }
    // The three-child device: one stale, two fresh that agree.
    let id = resync(&mut d, 3 * CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(d.disk(0), d.disk(1));
}

/// R-SYNC-4: a client write submitted while a resync is under way ends the
/// resync with EAGAIN, nothing written by it and the marks left alone.
#[test]
fn r_sync_4_resync_overlapped_by_a_write_ends_with_eagain() {
    let mut d = device(cfg());
    set_stale(&mut d, 2, chunks(1, 2));
    fill(&mut d, 2, CHUNK, CHUNK, 0xee);
    let r = resync(&mut d, CHUNK, CHUNK);
    d.poll();
    let w = submit_write(&mut d, CHUNK + CHUNK / 2, 512, 0x31);
    d.run();
    assert_eq!(d.outcome(r), Outcome::Failed(Errno::EAGAIN));
    assert_eq!(d.outcome(w), Outcome::Done);
    assert!(rewrites_of(&d, r).is_empty());
    assert!(marks_of(&d, r).is_empty());
    assert!(d.events_of(r).is_empty());
    assert!(is_stale(&d, 2, 1));
    // Retried with nothing in the way, it goes through.
    let r = resync(&mut d, CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(r), Outcome::Done);
    assert_eq!(d.disk(2), d.disk(0));
}

/// R-SYNC-4: a resync overlapped by client writes ends with EAGAIN even
/// when what it read has no quorum at all (writes racing on different
/// blocks of the chunk left every child different for a moment): no
/// `QUORUM_FAILURE`, no copy, the marks left alone.
#[test]
fn r_sync_4_resync_overlapped_by_writes_without_quorum_ends_with_eagain() {
    let mut d = rebuild_device(4, 2, 3);
    fill(&mut d, 0, CHUNK, 512, 0x01);
    fill(&mut d, 1, CHUNK + 512, 512, 0x02);
    let r = resync(&mut d, CHUNK, CHUNK);
    d.poll();
    let w = submit_write(&mut d, CHUNK + 4096, 512, 0x31);
    d.run();
    assert_eq!(d.outcome(r), Outcome::Failed(Errno::EAGAIN));
    assert_eq!(d.outcome(w), Outcome::Done);
    assert!(d.events_of(r).is_empty(), "{:?}", d.events_of(r));
    assert!(rewrites_of(&d, r).is_empty());
    assert!(marks_of(&d, r).is_empty());
    assert!(map(&d).is_stale(3, 1));
}

/// R-SYNC-4: a write submitted while the resync's copy is being written
/// waits for it (the resync's write can never land after it).
#[test]
fn r_sync_4_write_waits_for_a_resync_copy_in_flight() {
    let mut d = device(cfg());
    set_stale(&mut d, 2, chunks(0, 1));
    fill(&mut d, 2, 0, CHUNK, 0xee);
    let r = resync(&mut d, 0, CHUNK);
    d.poll();
    d.perform(0);
    d.perform(0);
    d.poll(); // the copy to children.2, pending
    assert_eq!(rewrites_of(&d, r), [(2, 0)]);
    let w = submit_write(&mut d, 0, 512, 0x31);
    // Unsettle performed, the write's children writes are held.
    perform_where(&mut d, |a| is_mark(a, w));
    d.poll();
    assert!(writes_of(&d, w).is_empty(), "held behind the copy");
    d.run();
    assert_eq!(d.outcome(r), Outcome::Done);
    assert_eq!(d.outcome(w), Outcome::Done);
    assert_eq!(range(&d, 2, 0, 512), vec![0x31; 512]);
}

/// R-SYNC-4: without a quorum among the fresh children a resync fails with
/// EIO and QUORUM_FAILURE, writes nothing and leaves the chunk marked;
/// with too few fresh children it fails at once.
#[test]
fn r_sync_4_resync_without_quorum_fails_and_leaves_the_marks() {
    let mut d = device(cfg());
    set_stale(&mut d, 2, chunks(1, 2));
    fill(&mut d, 0, CHUNK, 512, 0xaa);
    fill(&mut d, 1, CHUNK, 512, 0xbb);
    fill(&mut d, 2, CHUNK, CHUNK, 0xee);
    let id = resync(&mut d, CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::EIO));
    assert_eq!(d.events_of(id), [failure(CHUNK / 512, CHUNK / 512)]);
    assert!(rewrites_of(&d, id).is_empty());
    assert!(marks_of(&d, id).is_empty());
    assert!(is_stale(&d, 2, 1));
    assert_eq!(range(&d, 2, CHUNK, CHUNK), vec![0xee; CHUNK as usize]);

    set_stale(&mut d, 1, chunks(2, 3));
    set_stale(&mut d, 2, chunks(2, 3));
    let id = resync(&mut d, 2 * CHUNK, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::EIO));
    assert_eq!(d.events_of(id), [failure(2 * CHUNK / 512, CHUNK / 512)]);
    assert!(reads_of(&d, id).is_empty());
}

/// R-SYNC-4: a resync copy that fails leaves the child stale (no Fresh)
/// and the resync fails with the copy's error: its job must not take the
/// chunk for done.
#[test]
fn r_sync_4_failed_copy_leaves_the_child_stale() {
    let mut d = device(cfg());
    set_stale(&mut d, 1, chunks(0, 1));
    fill(&mut d, 1, 0, 512, 0xee);
    d.faults.rewrite.insert(ChildId(1), Errno::ENOSPC);
    let id = resync(&mut d, 0, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Failed(Errno::ENOSPC));
    assert_eq!(rewrites_of(&d, id), [(1, 0)]);
    assert!(
        !marks_of(&d, id)
            .iter()
            .any(|m| matches!(m, Mark::Fresh { .. }))
    );
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_stale(&d, 1, 0));
}

/// R-SYNC-4: without sync tracking there is nothing to resync: refused.
#[test]
fn r_sync_4_resync_without_sync_tracking_is_refused() {
    let mut d: MemDriver = MemDriver::uniform(Config::new(3, 2), SIZE as usize, 0);
    let id = d.fresh_id();
    assert_eq!(
        d.try_submit(
            id,
            Request::Resync {
                offset: 0,
                len: CHUNK
            },
            None
        ),
        Err(Error::InvalidRange {
            offset: 0,
            len: CHUNK
        })
    );
}

/// R-SYNC-4: a resync also works with read-pattern fifo configured (a
/// resync always votes among the fresh children).
#[test]
fn r_sync_4_resync_with_fifo_configured() {
    let mut d = device(
        Config::new(3, 1)
            .with_read_pattern(ReadPattern::Fifo)
            .with_sync_tracking(CHUNK),
    );
    set_stale(&mut d, 0, chunks(0, 1));
    fill(&mut d, 0, 0, CHUNK, 0xee);
    let id = resync(&mut d, 0, CHUNK);
    d.run();
    assert_eq!(d.outcome(id), Outcome::Done);
    assert_eq!(reads_of(&d, id), [1, 2]);
    assert_eq!(rewrites_of(&d, id), [(0, 1)]);
    assert_eq!(d.disk(0), d.disk(1));
}

// ---- R-CANCEL-3 -------------------------------------------------------------

/// R-CANCEL-3: a write cancelled after it reached one child leaves its
/// chunks unsettled — no Clean, not even after a flush — and a later read
/// settles them (counted, not reported).
#[test]
fn r_cancel_3_cancelled_write_stays_unsettled_until_a_read_settles_it() {
    let mut d = device(cfg());
    let w = submit_write(&mut d, 0, 4096, 0x77);
    perform_where(&mut d, |a| is_mark(a, w));
    perform_where(&mut d, |a| is_write_to(a, w, 0));
    d.cancel(w).unwrap();
    d.poll();
    assert_eq!(d.outcome(w), Outcome::Failed(Errno::ECANCELED));
    drop_pending_of(&mut d, w);
    d.run();
    assert_eq!(
        marks_of(&d, w),
        [Mark::Unsettle {
            chunks: chunks(0, 1)
        }],
        "no Clean, no Stale"
    );
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0), "still unsettled after a flush");
    assert_eq!(range(&d, 0, 0, 4096), vec![0x77; 4096]);
    // The read settles: the majority (the old data) wins.
    let r = submit_read(&mut d, 0, CHUNK);
    d.run();
    assert_eq!(d.outcome(r), read_ok(1, 1));
    assert_eq!(rewrites_of(&d, r), [(0, 1)]);
    assert!(d.events_of(r).is_empty());
    assert_eq!(settled(&d), 1);
    assert_eq!(d.disk(0), d.disk(1));
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_unsettled(&d, 0));
}

/// R-CANCEL-3: a write cancelled while its Unsettle is not yet durable
/// issues no child write at all, and is freed once the mark is answered.
#[test]
fn r_cancel_3_cancelled_before_the_mark_is_durable() {
    let mut d = device(cfg());
    let w = submit_write(&mut d, CHUNK, 512, 0x77);
    d.poll();
    d.cancel(w).unwrap();
    d.poll();
    assert_eq!(d.outcome(w), Outcome::Failed(Errno::ECANCELED));
    assert!(!d.checker().is_idle(), "its mark is still out");
    d.run();
    assert!(d.checker().is_idle());
    assert!(writes_of(&d, w).is_empty());
    assert_eq!(
        marks_of(&d, w),
        [Mark::Unsettle {
            chunks: chunks(1, 2)
        }]
    );
    assert!(is_unsettled(&d, 1));
}

/// R-CANCEL-3, R-SYNC-2: a later successful write to another part of the
/// chunk a cancelled write left unsettled does not settle the chunk: the
/// bytes the cancelled write tore were not rewritten, so the chunk must
/// stay unsettled until a read or resync settles it — else a read of the
/// torn bytes would report corruption instead of settling, and after a
/// crash nothing would say the children may differ there.
#[test]
fn r_cancel_3_later_partial_write_does_not_settle_the_torn_chunk() {
    let mut d = device(cfg());
    let w = submit_write(&mut d, 0, 4096, 0x77);
    perform_where(&mut d, |a| is_mark(a, w));
    perform_where(&mut d, |a| is_write_to(a, w, 0));
    d.cancel(w).unwrap();
    drop_pending_of(&mut d, w);
    d.run();
    assert_eq!(d.write(8192, &[0x55; 4096]), Outcome::Done);
    assert_eq!(d.flush(), Outcome::Done);
    assert!(
        is_unsettled(&d, 0),
        "the torn first 4 KiB were never settled"
    );
    let r = submit_read(&mut d, 0, 4096);
    d.run();
    assert!(!has_report_bad(&d, r), "{:?}", d.events_of(r));
    assert_eq!(settled(&d), 1);
}

/// R-SYNC-2: the same after a write that failed its threshold (its chunks
/// "stay unsettled and the vote settles them").
#[test]
fn r_sync_2_later_partial_write_does_not_settle_a_failed_writes_chunk() {
    let mut d = device(cfg());
    d.faults.write.insert(ChildId(1), Errno::EIO);
    d.faults.write.insert(ChildId(2), Errno::EIO);
    assert_eq!(d.write(0, &[0x77; 4096]), Outcome::Failed(Errno::EIO));
    d.faults.write.clear();
    assert_eq!(d.write(8192, &[0x55; 4096]), Outcome::Done);
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0));
    // A write covering the whole chunk does settle it.
    assert_eq!(d.write(0, &[0x56; CHUNK as usize]), Outcome::Done);
    assert_eq!(d.flush(), Outcome::Done);
    assert!(!is_unsettled(&d, 0));
}

/// R-SYNC-2: a chunk unsettled by a crash (the map says so on open) is not
/// settled by a write to part of it.
#[test]
fn r_sync_2_partial_write_does_not_settle_a_chunk_unsettled_before() {
    let mut d = device(cfg());
    set_unsettled(&mut d, chunks(0, 2));
    fill(&mut d, 2, 0, 512, 0xbb);
    // Partly chunk 0, all of chunk 1.
    assert_eq!(
        d.write(4096, &[0x55; 2 * CHUNK as usize - 4096]),
        Outcome::Done
    );
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0), "its first sector still differs");
    assert!(!is_unsettled(&d, 1), "wholly rewritten");
}

/// R-SYNC-2, R-CANCEL-3: a write's Clean must not settle a chunk another
/// write to that chunk was still in flight on: here the other one is then
/// cancelled after reaching a single child.
#[test]
fn r_cancel_3_clean_of_a_concurrent_write_does_not_settle_the_chunk() {
    let mut d = device(cfg());
    let torn = submit_write(&mut d, 0, 4096, 0x77);
    perform_where(&mut d, |a| is_mark(a, torn));
    perform_where(&mut d, |a| is_write_to(a, torn, 0));
    // Another write to the same chunk, other bytes, runs to completion.
    let w = submit_write(&mut d, 8192, 4096, 0x55);
    perform_where(&mut d, |a| is_mark(a, w));
    for c in 0..3 {
        perform_where(&mut d, |a| is_write_to(a, w, c));
    }
    d.poll();
    assert_eq!(d.outcome(w), Outcome::Done);
    let f = d.submit(Request::Flush, None);
    d.poll();
    while let Some(i) = d.pending().iter().position(|a| a.id() == f) {
        d.perform(i);
    }
    d.poll();
    assert_eq!(d.outcome(f), Outcome::Done);
    d.cancel(torn).unwrap();
    drop_pending_of(&mut d, torn);
    d.run();
    assert!(is_unsettled(&d, 0), "children differ on the first 4 KiB");
}

/// R-SYNC-2, R-CANCEL-3: a Clean waiting for a flush must not settle what a
/// later write to the chunk tore (here cancelled after one child).
#[test]
fn r_cancel_3_waiting_clean_does_not_settle_a_later_torn_write() {
    let mut d = device(cfg());
    assert_eq!(d.write(8192, &[0x55; 4096]), Outcome::Done);
    let torn = submit_write(&mut d, 0, 4096, 0x77);
    perform_where(&mut d, |a| is_mark(a, torn));
    perform_where(&mut d, |a| is_write_to(a, torn, 0));
    d.cancel(torn).unwrap();
    drop_pending_of(&mut d, torn);
    d.run();
    assert_eq!(d.flush(), Outcome::Done);
    assert!(is_unsettled(&d, 0), "children differ on the first 4 KiB");
}

/// R-SYNC-4, R-SYNC-1: a Fresh waiting for a flush must not clear the stale
/// mark of a child that a later write failed on: it missed that write.
#[test]
fn r_sync_4_waiting_fresh_does_not_clear_a_later_stale_mark() {
    let mut d = device(cfg());
    set_stale(&mut d, 2, chunks(0, 1));
    let r = resync(&mut d, 0, CHUNK);
    d.run();
    assert_eq!(d.outcome(r), Outcome::Done);
    d.faults.write.insert(ChildId(2), Errno::EIO);
    assert_eq!(d.write(0, &[0x55; 4096]), Outcome::Done);
    d.faults.write.clear();
    assert_eq!(d.flush(), Outcome::Done);
    assert!(
        is_stale(&d, 2, 0),
        "children.2 missed the write after the copy"
    );
    assert_ne!(range(&d, 2, 0, 4096), range(&d, 0, 0, 4096));
}

/// R-SYNC-2: sequential writes to parts of one chunk within a flush epoch,
/// all successful everywhere, leave it clean after the flush (the cost of
/// the rules above must not be a chunk that never settles).
#[test]
fn r_sync_2_sequential_partial_writes_settle_after_a_flush() {
    let mut d = device(cfg());
    for k in 0..8u64 {
        assert_eq!(d.write(k * 4096, &[k as u8 + 1; 4096]), Outcome::Done);
    }
    assert_eq!(d.flush(), Outcome::Done);
    assert_eq!(map(&d).unsettled().count(), 0);
}

// ---- all together -------------------------------------------------------------

/// The invariant R-SYNC-1..4 and R-CANCEL-3 add up to: whenever the device
/// is idle, on every chunk the map does not say is unsettled, every child
/// not stale there holds the same bytes. Random writes (some children failing), cancels,
/// flushes (some failing), reads and resyncs, completed in random orders;
/// with rewrite-corrupted, early quorum or fifo on for some runs.
#[test]
fn r_sync_1_to_4_and_r_cancel_3_settled_chunks_agree_random_runs() {
    const SECTOR: u64 = 4096;
    for seed in 0..400u64 {
        let mut rng = Rng(seed);
        let mut d = device(match seed % 4 {
            0 => cfg(),
            1 => cfg().with_rewrite_corrupted(true),
            2 => cfg().with_early_quorum(true),
            _ => Config::new(3, 1)
                .with_read_pattern(ReadPattern::Fifo)
                .with_fifo_rewrite_failed(true)
                .with_sync_tracking(CHUNK),
        });
        d.order = Order::Shuffle(seed);
        let mut live: Vec<RequestId> = Vec::new();
        for step in 0..40 {
            let offset = rng.below((SIZE / SECTOR) as usize) as u64 * SECTOR;
            let len =
                ((rng.below(3) as u64 + 1) * SECTOR * [1, 1, 8][rng.below(3)]).min(SIZE - offset);
            d.faults = Default::default();
            if rng.below(6) == 0 {
                d.faults
                    .write
                    .insert(ChildId(rng.below(3) as u32), Errno::EIO);
            }
            if rng.below(8) == 0 {
                d.faults
                    .rewrite
                    .insert(ChildId(rng.below(3) as u32), Errno::EIO);
            }
            if rng.below(8) == 0 {
                d.faults
                    .flush
                    .insert(ChildId(rng.below(3) as u32), Errno::EIO);
            }
            let byte = (step + 1) as u8;
            let id = match rng.below(10) {
                0..=3 => submit_write(&mut d, offset, len, byte),
                4 | 5 => submit_read(&mut d, offset, len),
                6 => d.submit(Request::Flush, None),
                7 => {
                    let first = offset / CHUNK;
                    resync(&mut d, first * CHUNK, CHUNK)
                }
                _ => {
                    if let Some(&v) = live.get(rng.below(live.len().max(1))) {
                        let _ = d.cancel(v);
                    }
                    continue;
                }
            };
            live.push(id);
            // Run a few operations, or everything.
            let k = rng.below(6);
            for _ in 0..k {
                if !d.step() {
                    break;
                }
            }
            if rng.below(4) == 0 {
                d.run();
                live.clear();
                check_settled_chunks_agree(&d, seed, step);
            }
        }
        d.faults = Default::default();
        d.run();
        check_settled_chunks_agree(&d, seed, 99);
        // Settle everything and check the vote is now the same everywhere.
        for c in 0..CHUNKS {
            let id = resync(&mut d, c * CHUNK, CHUNK);
            d.run();
            let o = d.outcome(id);
            assert!(
                matches!(o, Outcome::Done | Outcome::Failed(Errno::EIO)),
                "seed {seed}: {o:?}"
            );
        }
        check_settled_chunks_agree(&d, seed, 100);
    }
}

fn check_settled_chunks_agree(d: &MemDriver, seed: u64, step: usize) {
    let m = map(d);
    for c in 0..CHUNKS {
        if m.unsettled().get(c) {
            continue;
        }
        let fresh: Vec<u32> = (0..3).filter(|&k| !m.stale_of(k).unwrap().get(c)).collect();
        for w in fresh.windows(2) {
            assert!(
                range(d, w[0], c * CHUNK, CHUNK) == range(d, w[1], c * CHUNK, CHUNK),
                "seed {seed} step {step}: chunk {c} is settled, yet children.{} and \
                 children.{} (both fresh there) differ",
                w[0],
                w[1]
            );
        }
    }
}

/// R-SYNC-2: every interleaving of one write's three child writes with a
/// flush's three child flushes: the chunk is clean after the flush exactly
/// when all three writes had landed before the flush was submitted — here
/// never, since the flush is submitted while the write is in flight — and
/// after one more flush always.
#[test]
fn r_sync_2_every_order_of_a_write_and_a_flush() {
    // Six operations: each order is a permutation; try them all.
    let mut perms = Vec::new();
    permutations(&mut (0..6).collect::<Vec<usize>>(), 0, &mut perms);
    assert_eq!(perms.len(), 720);
    for p in perms {
        let mut d = device(cfg());
        let w = submit_write(&mut d, 0, 512, 0x12);
        perform_where(&mut d, |a| is_mark(a, w));
        d.poll();
        let f = d.submit(Request::Flush, None);
        d.poll();
        let ops = d.pending();
        assert_eq!(ops.len(), 6);
        for &k in &p {
            let i = d.index_of(&ops[k]).unwrap();
            d.perform(i);
        }
        d.poll();
        assert_eq!(d.outcome(w), Outcome::Done);
        assert_eq!(d.outcome(f), Outcome::Done);
        assert!(is_unsettled(&d, 0), "{p:?}");
        assert_eq!(d.flush(), Outcome::Done);
        assert!(!is_unsettled(&d, 0), "{p:?}");
    }
}

fn permutations(v: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k == v.len() {
        out.push(v.clone());
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, out);
        v.swap(k, i);
    }
}
