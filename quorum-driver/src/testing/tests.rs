//! The kit's own pieces: disks, the driver's lower level, the checker's
//! views. (The checker's checks are exercised by every test that drives the
//! core through it, and were held to mutants of the core when written.)

use std::sync::{Arc, Mutex};

use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Error, Outcome, Quorum, Request, RequestId,
};

use super::{Checker, ChildDisks, Disks, MemDisks, MemDriver, Order, Script};
use crate::Child;

fn read(offset: u64, len: u64) -> Request {
    Request::Read { offset, len }
}

#[test]
fn mem_disks_refuse_what_is_out_of_range() {
    let mut d = MemDisks::new(vec![vec![1; 8]]);
    let mut buf = [0u8; 4];
    assert_eq!(d.read(ChildId(0), 4, &mut buf), Ok(()));
    assert_eq!(buf, [1; 4]);
    assert_eq!(d.read(ChildId(0), 5, &mut buf), Err(Errno::EINVAL));
    assert_eq!(d.write(ChildId(0), 6, &[2; 4]), Err(Errno::ENOSPC));
    assert_eq!(d.write_zeroes(ChildId(0), 0, 2), Ok(()));
    assert_eq!(d.get(ChildId(0)), Some(&[0, 0, 1, 1, 1, 1, 1, 1][..]));
    assert_eq!(d.flush(ChildId(1)), Err(Errno::ENXIO));
    assert_eq!(d.read(ChildId(1), 0, &mut buf), Err(Errno::ENXIO));
}

/// Scripted children answer at any offset, up to the largest the core
/// takes (R-EVENT-1's sector arithmetic far from zero).
#[test]
fn scripted_children_answer_at_any_offset() {
    let checker: Checker = Checker::new(Config::new(3, 2)).unwrap();
    let mut script = Script::new();
    script
        .read(ChildId(0), Ok(vec![5; 100]))
        .read(ChildId(1), Ok(vec![5; 100]))
        .read(ChildId(2), Err(Errno::EIO));
    let mut d = MemDriver::with_disks(checker, script);
    let id = d.submit(read(i64::MAX as u64 - 100, 100), None);
    d.run();
    assert!(matches!(d.outcome(id), Outcome::Read { .. }));
    assert_eq!(d.data(id), Some(&[5; 100][..]));
    assert_eq!(d.events_of(id).len(), 1);
}

/// A child behind the blocking `Child` trait.
struct Bytes(Mutex<Vec<u8>>);

impl Child for Bytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.0.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let o = offset as usize;
        self.0.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(28))
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().len() as u64)
    }
}

#[test]
fn child_disks_drive_real_children() {
    let kids: Vec<Arc<dyn Child>> = (0..2)
        .map(|_| Arc::new(Bytes(Mutex::new(vec![0; 1024]))) as Arc<dyn Child>)
        .collect();
    let checker: Checker = Checker::new(Config::new(2, 1)).unwrap();
    let mut d = MemDriver::with_disks(checker, ChildDisks::new(kids.clone()));
    assert_eq!(d.write(100, &[9; 50]), Outcome::Done);
    assert_eq!(d.write_zeroes(110, 10), Outcome::Done);
    let (o, data) = d.read(100, 50);
    assert!(matches!(o, Outcome::Read { .. }));
    let mut want = vec![9; 50];
    want[10..20].fill(0);
    assert_eq!(data.unwrap(), want);
    // R-FLUSH-1..2: both fail with ENOSPC, reported with sector 0.
    assert_eq!(d.flush(), Outcome::Failed(Errno::ENOSPC));
    assert_eq!(d.events().len(), 2);
}

/// The lower level: the caller picks, fills buffers and hands results in;
/// a completion the core refuses (a wrong buffer) stays pending.
#[test]
fn finish_hands_in_results_and_keeps_refused_ones() {
    let mut d: MemDriver = MemDriver::uniform(Config::new(2, 2), 1024, 0);
    let id = d.submit(read(0, 512), None);
    assert_eq!(d.poll().len(), 2);
    // Slot 0's buffer is not looked at yet: accepted empty.
    assert_eq!(d.finish(0, Ok(())), Ok(()));
    // The last read votes: slot 0's buffer is needed.
    let got = d.finish(0, Ok(()));
    assert!(
        matches!(got, Err(Error::BadBuffer { slot: 0, .. })),
        "{got:?}"
    );
    assert_eq!(d.pending().len(), 1);
    let last = d.pending()[0];
    assert_eq!(d.index_of(&last), Some(0));
    d.buffer_mut(id, 0).unwrap().resize(512, 3);
    d.buffer_mut(id, 1).unwrap().resize(512, 3);
    assert_eq!(d.finish(0, Ok(())), Ok(()));
    d.poll();
    assert_eq!(
        d.outcome(id),
        Outcome::Read {
            slot: 0,
            child: ChildId(0)
        }
    );
    assert_eq!(d.data(id), Some(&[3; 512][..]));
    assert_eq!(d.index_of(&last), None);
    d.clear_logs();
    assert!(d.log().is_empty() && d.try_outcome(id).is_none());
}

#[test]
fn every_order_gives_the_same_outcomes() {
    let mut seen = Vec::new();
    for order in [Order::Issue, Order::Reverse, Order::Shuffle(3)] {
        let mut d: MemDriver = MemDriver::uniform(Config::new(4, 2), 4096, 0);
        d.order = order;
        d.faults.read.insert(ChildId(3), Errno::EIO);
        d.disk_mut(2)[10] = 1;
        let ids: Vec<RequestId> = (0..4)
            .map(|k| d.submit(read(k * 512, 1024), None))
            .collect();
        d.run();
        seen.push(ids.iter().map(|&id| d.outcome(id)).collect::<Vec<_>>());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

/// The checker's model views follow a request through its life.
#[test]
fn checker_views() {
    let mut q: Checker = Checker::new(Config::new(2, 1)).unwrap();
    let id = RequestId(4);
    q.submit(id, read(0, 8)).unwrap();
    assert_eq!(q.requests().len(), 1);
    assert!(q.requests()[0].certain);
    while q.poll_action().is_some() {}
    assert_eq!(
        q.outstanding(),
        [(id, 0, ChildOp::Read), (id, 1, ChildOp::Read)]
    );
    assert!(q.buffers_needed(id, 0, Ok(())).is_empty());
    q.handle_read(id, 0, Ok(()), &[[1u8; 8], [1; 8]]).unwrap();
    assert_eq!(q.completed(), [(id, 0, ChildOp::Read)]);
    assert_eq!(q.buffers_needed(id, 1, Ok(())), [0, 1]);
    q.cancel(id).unwrap();
    assert!(q.requests()[0].cancelled);
    q.handle_read(id, 1, Err(Errno::EIO), &[[1u8; 8], [1; 8]])
        .unwrap();
    let a = q.poll_action();
    assert!(matches!(a, Some(Action::Complete { .. })), "{a:?}");
    q.assert_finished();
    let core: Quorum<16, 32, 1024> = q.into_core();
    let mut again = Checker::adopt(core);
    again.submit(id, Request::Flush).unwrap();
}

#[test]
#[should_panic(expected = "idle core")]
fn adopting_a_busy_core_is_refused() {
    let mut q: Quorum = Quorum::new(Config::new(1, 1)).unwrap();
    q.submit(RequestId(1), Request::Flush).unwrap();
    let _ = Checker::adopt(q);
}

#[test]
fn fuzz_entry_point_takes_any_bytes() {
    super::fuzz::core_api(&[]);
    super::fuzz::core_api(&[0x80, 3, 2]);
    super::fuzz::core_api(&[0xff; 64]);
    let bytes: Vec<u8> = (0..2000u32).map(|i| (i * 37 % 251) as u8).collect();
    super::fuzz::core_api(&bytes);
}
