//! Sync tracking through the blocking driver (SPEC R-SYNC): a child that
//! fails writes is marked stale on their chunks, skipped by reads, and
//! brought back by a resync job; the marks clear once flushed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quorum_proto::Config;
use quorum_sync::sync::{Job, ResyncTarget, SyncMap};
use quorum_sync::{Child, Device, MemChild};

const CHUNK: u64 = 64 << 10;

/// A memory child whose writes fail while `down` (a replica away).
struct Flaky {
    inner: MemChild,
    down: AtomicBool,
}

impl Child for Flaky {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn reachable(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }
}

fn device() -> (Device, Arc<Flaky>) {
    let flaky = Arc::new(Flaky {
        inner: MemChild::new(1 << 20),
        down: AtomicBool::new(false),
    });
    let kids: Vec<Arc<dyn Child>> = vec![
        Arc::new(MemChild::new(1 << 20)),
        Arc::new(MemChild::new(1 << 20)),
        flaky.clone(),
    ];
    let map = SyncMap::new(1 << 20, CHUNK, &[0, 1, 2]);
    let cfg = Config::new(3, 2).with_sync_tracking(CHUNK);
    let d = Device::with_sync(cfg, kids, map, None, Duration::from_secs(1)).expect("device");
    (d, flaky)
}

/// R-SYNC-1, R-SYNC-8: while a child is away, writes succeed and mark it
/// stale on exactly their chunks; its stale chunks wait while it cannot be
/// reached; once back, a resync job copies those chunks only, and their
/// marks clear at the flush.
#[test]
fn r_sync_8_a_child_back_from_away_is_resynced_on_the_written_chunks_only() {
    let (d, flaky) = device();
    d.write(0, &[1u8; 1 << 20]).expect("all three");
    d.flush().expect("flush");
    flaky.down.store(true, Ordering::SeqCst);
    d.write(3 * CHUNK + 100, &[7u8; 2 * CHUNK as usize])
        .expect("threshold 2 of 3");
    d.flush().ok();
    let map = d.sync_map().expect("sync on");
    let stale: Vec<u64> = (0..map.chunks())
        .filter(|&c| map.stale_of(2).is_some_and(|b| b.get(c)))
        .collect();
    assert_eq!(stale, [3, 4, 5], "the chunks the write touched");
    // Away: nothing can be done for it yet.
    assert_eq!(d.work(), 0);
    assert!(d.next(0).is_none());
    // A read of a stale chunk does not ask it.
    let mut b = vec![0u8; 4096];
    d.read(4 * CHUNK, &mut b).expect("read");
    assert_eq!(b, vec![7u8; 4096]);
    // Back: the job copies three chunks.
    flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(d.work(), 3 * CHUNK);
    let job = Job::new(0);
    let end = job.run(&d, &mut |_| {});
    assert_eq!((end.offset, end.failed), (3 * CHUNK, 0));
    assert_eq!(d.work(), 0, "the marks clear once flushed");
    let mut want = vec![1u8; 1 << 20];
    want[(3 * CHUNK + 100) as usize..(5 * CHUNK + 100) as usize].fill(7);
    let mut got = vec![0u8; 1 << 20];
    flaky.read_at(&mut got, 0).expect("read");
    assert!(got == want, "the child holds the device's data again");
}

/// R-SYNC-5: a copy that fails (the child went away again) ends the job
/// without looping: the chunk is counted as failed and stays stale.
#[test]
fn r_sync_5_a_failing_copy_ends_the_job() {
    let (d, flaky) = device();
    flaky.down.store(true, Ordering::SeqCst);
    d.write(0, &[3u8; 4096]).expect("write");
    // Reachable again for the planner, but its writes still fail.
    struct Lying<'a>(&'a Device);
    impl ResyncTarget for Lying<'_> {
        fn next(&self, from: u64) -> Option<(u64, u64, u64)> {
            let m = self.0.sync_map()?;
            let c = m.next_work(from)?;
            let (o, l) = m.range_of(c);
            Some((c, o, l))
        }
        fn work(&self) -> u64 {
            self.0.sync_map().map_or(0, |m| m.work() * CHUNK)
        }
        fn resync(&self, offset: u64, len: u64) -> Result<(), quorum_proto::Errno> {
            self.0.resync(offset, len)
        }
        fn flush(&self) -> Result<(), quorum_proto::Errno> {
            self.0.flush()
        }
    }
    let end = Job::new(0).run(&Lying(&d), &mut |_| {});
    assert_eq!((end.offset, end.failed), (0, 1));
    assert!(d.sync_map().unwrap().stale_of(2).unwrap().get(0));
}

/// R-SYNC-7: a child added at runtime starts stale everywhere, is not read
/// until a resync has copied it, and is in sync when the job ends; added
/// as trusted (QEMU's behaviour) it votes at once.
#[test]
fn r_sync_7_a_child_added_at_runtime_is_rebuilt_online() {
    let (d, _flaky) = device();
    d.write(0, &[9u8; 1 << 20]).expect("write");
    d.flush().expect("flush");
    let fresh = Arc::new(MemChild::new(1 << 20));
    d.set_rebuild(true);
    let id = d.add_child(fresh.clone()).expect("add");
    let map = d.sync_map().expect("sync on");
    assert_eq!(map.stale_of(id.0).map(|b| b.count()), Some(map.chunks()));
    // Reads keep answering from the three that hold the data.
    let mut b = vec![0u8; 4096];
    d.read(4096, &mut b).expect("read");
    assert_eq!(b, vec![9u8; 4096]);
    let end = Job::new(0).run(&d, &mut |_| {});
    assert_eq!(end.offset, 1 << 20);
    assert_eq!(d.work(), 0);
    let mut got = vec![0u8; 1 << 20];
    fresh.read_at(&mut got, 0).expect("read");
    assert!(got.iter().all(|&x| x == 9), "rebuilt");
    // Trusted: in sync at once, nothing to copy.
    d.set_rebuild(false);
    let other = d.add_child(Arc::new(MemChild::new(1 << 20))).expect("add");
    assert_eq!(
        d.sync_map().unwrap().stale_of(other.0).map(|b| b.count()),
        Some(0)
    );
    assert_eq!(d.work(), 0);
}

/// A map sink that counts its writes and keeps the last map written.
struct Counting(Arc<std::sync::Mutex<(u32, Option<SyncMap>)>>);

impl quorum_sync::sync::MapSink for Counting {
    fn write(&mut self, map: &SyncMap) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.0 += 1;
        // As a restart would read it back.
        s.1 = SyncMap::decode(&map.encode());
        Ok(())
    }
}

/// R-SYNC-2 with a persisted map: a write to a chunk written and flushed
/// clean lately finds its unsettled bit still in the map file and goes out
/// without a map write; the file meanwhile calls every chunk written
/// unsettled (a crash settles them); a clean stop's write leaves only what
/// is unsettled.
#[test]
fn r_sync_2_a_write_to_a_chunk_written_lately_needs_no_map_write() {
    let kids: Vec<Arc<dyn Child>> = (0..3)
        .map(|_| Arc::new(MemChild::new(1 << 20)) as Arc<dyn Child>)
        .collect();
    let map = SyncMap::new(1 << 20, CHUNK, &[0, 1, 2]);
    let cfg = Config::new(3, 2).with_sync_tracking(CHUNK);
    let sink = Arc::new(std::sync::Mutex::new((0u32, None)));
    // No lazy write (hence no tick) during the test.
    let d = Device::with_sync(
        cfg,
        kids,
        map,
        Some(Box::new(Counting(sink.clone()))),
        Duration::from_secs(3600),
    )
    .expect("device");
    d.write(CHUNK, &[1u8; 4096]).expect("write");
    let first = sink.lock().unwrap().0;
    assert!(
        first >= 1,
        "the first write to the chunk waited for the map"
    );
    d.flush().expect("flush");
    let m = d.sync_map().expect("sync on");
    assert!(!m.unsettled().get(1), "clean for the core at once");
    assert!(!m.recovering().get(1));
    for k in 0..20u64 {
        d.write(CHUNK + 4096 * (k % 8), &[2u8; 4096])
            .expect("write");
        d.flush().expect("flush");
    }
    let (writes, file) = sink.lock().unwrap().clone();
    assert_eq!(writes, first, "no map write for a chunk clean lately");
    let file = file.expect("written");
    assert!(file.unsettled().get(1), "the file still calls it unsettled");
    assert_eq!(file.unsettled().count(), 1);
    // A clean stop: the file says exactly what is unsettled (nothing).
    assert!(d.write_map());
    let (writes, file) = sink.lock().unwrap().clone();
    assert_eq!(writes, first + 1);
    assert_eq!(file.expect("written").unsettled().count(), 0);
}
