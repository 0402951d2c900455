//! The async driver under three executors — tokio (multi-thread), smol and
//! async-std — with the same workloads: a corrupted replica outvoted,
//! reported and rewritten (R-READ-6, R-READ-7), failing children (R-READ-2,
//! R-READ-3, R-WRITE-1), many requests in flight from many tasks, membership
//! changes that wait for the drain (R-MEMBER-4), and cancellation.

use std::future::{Future, poll_fn};
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use futures_util::{FutureExt, StreamExt};
use quorum_proto::{ChildId, Config, Errno, Event, OpType};
use quorum_tokio::{
    AsyncChild, AsyncDevice, ChildFuture, DeviceError, InjectChild, InjectEvent, InjectRule,
    MemChild, ReadError,
};

const SIZE: usize = 1 << 20;

fn mems(n: usize) -> Vec<Arc<MemChild>> {
    (0..n).map(|_| Arc::new(MemChild::new(SIZE))).collect()
}

fn dyns(m: &[Arc<MemChild>]) -> Vec<Arc<dyn AsyncChild>> {
    m.iter().map(|c| c.clone() as Arc<dyn AsyncChild>).collect()
}

/// Returns `Pending` once (waking itself), like any executor's `yield_now`.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// A child that yields before every operation, so requests interleave.
struct Yielding(Arc<MemChild>);

impl AsyncChild for Yielding {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        Box::pin(async move {
            yield_now().await;
            self.0.read_at(buf, offset).await
        })
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            yield_now().await;
            self.0.write_at(data, offset).await
        })
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            yield_now().await;
            Ok(())
        })
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.0.size()
    }
}

/// A gate child operations wait at until it opens.
#[derive(Default)]
struct Gate(Mutex<(bool, Vec<Waker>)>);

impl Gate {
    fn open(&self) {
        let mut g = self.0.lock().unwrap();
        g.0 = true;
        for w in g.1.drain(..) {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            let mut g = self.0.lock().unwrap();
            if g.0 {
                Poll::Ready(())
            } else {
                g.1.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A child whose writes wait at a gate.
struct Gated(Arc<MemChild>, Arc<Gate>);

impl AsyncChild for Gated {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.1.wait().await;
            self.0.write_at(data, offset).await
        })
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        self.0.flush()
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.0.size()
    }
}

/// A child whose reads wait at a gate.
struct GatedReads(Arc<MemChild>, Arc<Gate>);

impl AsyncChild for GatedReads {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        Box::pin(async move {
            self.1.wait().await;
            self.0.read_at(buf, offset).await
        })
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        self.0.write_at(data, offset)
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        self.0.flush()
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.0.size()
    }
}

/// A child whose first write is handed to a thread of its own that lands it
/// only when released — a write already on its way to the disk, which
/// dropping its future cannot take back. Later writes land at once.
struct SlowFirstWrite {
    inner: Arc<MemChild>,
    first: Mutex<Option<Arc<std::sync::Barrier>>>,
    /// The thread of the first write, once started.
    landed: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl AsyncChild for SlowFirstWrite {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        let Some(release) = self.first.lock().unwrap().take() else {
            return self.inner.write_at(data, offset);
        };
        let (tx, rx) = futures_channel::oneshot::channel();
        let inner = self.inner.clone();
        let t = std::thread::spawn(move || {
            release.wait();
            inner.poke(offset as usize, &data);
            let _ = tx.send(());
        });
        *self.landed.lock().unwrap() = Some(t);
        Box::pin(async move {
            let _ = rx.await;
            Ok(())
        })
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        self.inner.flush()
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.inner.size()
    }
}

// ---- workloads, executor-agnostic -------------------------------------------

/// R-READ-6, R-READ-7: one silently corrupted replica is outvoted, reported
/// without an error, and rewritten.
async fn corrupted_replica() {
    let m = mems(3);
    let dev = AsyncDevice::new(Config::new(3, 2).with_rewrite_corrupted(true), dyns(&m)).unwrap();
    let mut events = dev.events();
    dev.write(8192, vec![0x5a; 4096]).await.unwrap();
    m[1].poke(8192 + 17, &[0xff]);
    assert_eq!(dev.read(8192, 4096).await.unwrap(), vec![0x5a; 4096]);
    let (_, e) = events.next().await.unwrap();
    assert_eq!(
        e,
        Event::ReportBad {
            op: OpType::Read,
            error: None,
            child: ChildId(1),
            sector_num: 16,
            sectors_count: 8
        }
    );
    assert_eq!(m[1].contents(), m[0].contents(), "rewritten");
    assert_eq!(dev.read(8192, 4096).await.unwrap(), vec![0x5a; 4096]);
    assert!(
        events.try_next_now().is_none(),
        "a clean read reports nothing"
    );
    assert_eq!(dev.size().await, Ok(SIZE as u64));
}

fn failing(errno: Errno) -> Vec<InjectRule> {
    vec![InjectRule {
        event: InjectEvent::Read,
        errno,
        sector: None,
        once: false,
    }]
}

/// R-READ-2, R-READ-3, R-WRITE-1: a failing child is reported with its
/// error; with two failing, reads fail with the voted error and a FAILURE.
async fn failing_children() {
    let m = mems(3);
    let kids: Vec<Arc<dyn AsyncChild>> = vec![
        m[0].clone(),
        Arc::new(InjectChild::new(m[1].clone(), failing(Errno::EIO))),
        Arc::new(InjectChild::new(m[2].clone(), failing(Errno::ENOSPC))),
    ];
    let dev = AsyncDevice::new(Config::new(3, 1), kids).unwrap();
    let mut events = dev.events();
    dev.write(0, vec![7; 512]).await.unwrap();
    assert_eq!(dev.read(0, 512).await.unwrap(), vec![7; 512]);
    // Both failing children reported, in slot order, then nothing else.
    let got: Vec<Event> = (0..2).map(|_| events.try_next_now().unwrap().1).collect();
    assert!(matches!(
        got[0],
        Event::ReportBad {
            op: OpType::Read,
            error: Some(Errno::EIO),
            child: ChildId(1),
            ..
        }
    ));
    assert!(matches!(
        got[1],
        Event::ReportBad {
            op: OpType::Read,
            error: Some(Errno::ENOSPC),
            child: ChildId(2),
            ..
        }
    ));
    assert!(events.try_next_now().is_none());
    // The read rules stay active: writes fail on those children too, yet one
    // success reaches threshold 1.
    dev.write(0, vec![8; 512]).await.unwrap();
    assert_eq!(m[0].contents()[..512], [8; 512]);
    assert_eq!(m[1].contents()[..512], [7; 512]);

    // Threshold 2 with two failing children: R-VOTE-3's tie goes to the
    // highest slot's error, and FAILURE is emitted.
    let m = mems(3);
    let kids: Vec<Arc<dyn AsyncChild>> = vec![
        m[0].clone(),
        Arc::new(InjectChild::new(m[1].clone(), failing(Errno::EIO))),
        Arc::new(InjectChild::new(m[2].clone(), failing(Errno::ENOSPC))),
    ];
    let dev = AsyncDevice::new(Config::new(3, 2), kids).unwrap();
    let mut events = dev.events();
    assert_eq!(dev.read(0, 512).await, Err(ReadError::Io(Errno::ENOSPC)));
    let names: Vec<&str> = std::iter::from_fn(|| events.try_next_now())
        .map(|(_, e)| e.name())
        .collect();
    assert_eq!(
        names,
        ["QUORUM_REPORT_BAD", "QUORUM_REPORT_BAD", "QUORUM_FAILURE"]
    );
}

/// Many requests in flight at once from one task: each request's data lands
/// where it should.
async fn many_in_flight() {
    let m = mems(3);
    let kids: Vec<Arc<dyn AsyncChild>> = m
        .iter()
        .map(|c| Arc::new(Yielding(c.clone())) as Arc<dyn AsyncChild>)
        .collect();
    let dev = AsyncDevice::new(Config::new(3, 2), kids).unwrap();
    let writes = (0..100u64).map(|i| dev.write(i * 4096, vec![i as u8; 4096]));
    for r in futures_util::future::join_all(writes).await {
        r.unwrap();
    }
    let reads = (0..100u64).map(|i| dev.read(i * 4096, 4096));
    for (i, r) in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), vec![i as u8; 4096]);
    }
    assert_eq!(dev.in_flight(), 0);
    assert_eq!(m[0].contents(), m[2].contents());
}

/// R-MEMBER-4: a membership change waits for the requests in flight, and
/// requests submitted meanwhile wait for the change.
async fn membership_waits_for_drain() {
    let m = mems(3);
    let gate = Arc::new(Gate::default());
    let mut kids = dyns(&m);
    kids[0] = Arc::new(Gated(m[0].clone(), gate.clone()));
    let dev = AsyncDevice::new(Config::new(3, 2), kids).unwrap();

    let mut write = Box::pin(dev.write(0, vec![1; 512]));
    assert!((&mut write).now_or_never().is_none(), "stuck at the gate");
    assert_eq!(dev.in_flight(), 1);

    let extra = Arc::new(MemChild::new(SIZE));
    let mut add = Box::pin(dev.add_child(extra.clone()));
    assert!((&mut add).now_or_never().is_none(), "waits for the drain");
    let mut read = Box::pin(dev.read(0, 512));
    assert!((&mut read).now_or_never().is_none(), "held by the drain");
    assert_eq!(dev.in_flight(), 1, "the read was not submitted");
    assert_eq!(dev.children().len(), 3);

    gate.open();
    write.await.unwrap();
    assert_eq!(add.await.unwrap(), ChildId(3));
    // The read started after the change: four children, the new one outvoted.
    let mut events = dev.events();
    assert_eq!(read.await.unwrap(), vec![1; 512]);
    assert!(matches!(
        events.try_next_now(),
        Some((
            _,
            Event::ReportBad {
                child: ChildId(3),
                error: None,
                ..
            }
        ))
    ));

    dev.remove_child(ChildId(1)).await.unwrap();
    dev.remove_child(ChildId(3)).await.unwrap();
    assert!(matches!(
        dev.remove_child(ChildId(0)).await,
        Err(DeviceError::Member(
            quorum_proto::MemberError::BelowThreshold { threshold: 2 }
        ))
    ));
    assert_eq!(dev.children(), [ChildId(0), ChildId(2)]);
}

/// R-CANCEL-1: dropping a request's future cancels it — it is over at once
/// and nothing is said about any child, although none of them answered.
/// R-CANCEL-2: the writes it had started still run to their end, and a
/// drain waits for them.
async fn cancelled_request_ends() {
    let m = mems(3);
    let gate = Arc::new(Gate::default());
    let kids: Vec<Arc<dyn AsyncChild>> = m
        .iter()
        .map(|c| Arc::new(Gated(c.clone(), gate.clone())) as Arc<dyn AsyncChild>)
        .collect();
    let dev = AsyncDevice::new(Config::new(3, 2), kids).unwrap();
    let mut events = dev.events();
    let mut write = Box::pin(dev.write(0, vec![1; 512]));
    assert!((&mut write).now_or_never().is_none());
    assert_eq!(dev.in_flight(), 1);
    drop(write);
    assert_eq!(dev.in_flight(), 0, "over for its caller");
    // The drain waits for the three writes still at the gate.
    let mut add = Box::pin(dev.add_child(Arc::new(MemChild::new(SIZE))));
    assert!(
        (&mut add).now_or_never().is_none(),
        "a drain waits for a cancelled request's operations"
    );
    gate.open();
    assert_eq!(add.await.unwrap(), ChildId(3));
    assert_eq!(
        std::iter::from_fn(|| events.try_next_now()).count(),
        0,
        "a cancelled request reports nothing"
    );
    for c in &m {
        assert_eq!(c.contents()[..512], [1; 512], "the started write ran");
    }
    dev.write(0, vec![2; 512]).await.unwrap();
    assert_eq!(dev.read(0, 512).await.unwrap(), vec![2; 512]);
}

/// R-CANCEL-1 for reads: a read dropped while its children are slow reports
/// none of them.
async fn dropped_read_reports_nothing() {
    let m = mems(3);
    let gate = Arc::new(Gate::default());
    let kids: Vec<Arc<dyn AsyncChild>> = m
        .iter()
        .map(|c| Arc::new(GatedReads(c.clone(), gate.clone())) as Arc<dyn AsyncChild>)
        .collect();
    let dev = AsyncDevice::new(Config::new(3, 2).with_rewrite_corrupted(true), kids).unwrap();
    m[1].poke(0, &[9]); // it would lose the vote
    let mut events = dev.events();
    let mut read = Box::pin(dev.read(0, 512));
    assert!((&mut read).now_or_never().is_none());
    drop(read);
    gate.open();
    // Something that waits on the device sees the orphans to their end.
    dev.write(4096, vec![1; 512]).await.unwrap();
    dev.flush().await.unwrap();
    let names: Vec<&str> = std::iter::from_fn(|| events.try_next_now())
        .map(|(_, e)| e.name())
        .collect();
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(m[1].contents()[0], 9, "a cancelled read repairs nothing");
}

/// The bug R-CANCEL-2 fixes: a read dropped mid-repair, whose rewrite has
/// already left for the disk (a thread holds it), must not have that
/// rewrite land after a later write to the same range. The later write is
/// held back until the rewrite has ended, so the replica ends up with the
/// new data.
async fn dropped_repair_never_lands_after_a_later_write() {
    let m = mems(3);
    let release = Arc::new(std::sync::Barrier::new(2));
    let landed = Arc::new(Mutex::new(None));
    let mut kids = dyns(&m);
    kids[0] = Arc::new(SlowFirstWrite {
        inner: m[0].clone(),
        first: Mutex::new(Some(release.clone())),
        landed: landed.clone(),
    });
    let dev = AsyncDevice::new(Config::new(3, 2).with_rewrite_corrupted(true), kids).unwrap();
    m[0].poke(0, &[9]); // children.0 loses the vote; its rewrite is slow
    let mut read = Box::pin(dev.read(0, 512));
    assert!(
        (&mut read).now_or_never().is_none(),
        "the repair has left for children.0"
    );
    drop(read);
    let mut write = Box::pin(dev.write(0, vec![4; 512]));
    // Held behind the dropped read's repair (without R-CANCEL-2 it would
    // complete here, before the repair lands).
    let early = (&mut write).now_or_never();
    release.wait(); // the repair's thread lands the old data now
    let handle = landed.lock().unwrap().take().expect("the repair's thread");
    handle.join().unwrap();
    match early {
        Some(r) => r.unwrap(),
        None => write.await.unwrap(),
    }
    assert!(
        m[0].contents()[..512].iter().all(|&b| b == 4),
        "children.0 must hold the new data, not the dropped read's repair"
    );
    assert!(m[0].contents() == m[1].contents());
    assert_eq!(dev.read(0, 512).await.unwrap(), vec![4; 512]);
}

async fn all_workloads() {
    corrupted_replica().await;
    failing_children().await;
    many_in_flight().await;
    membership_waits_for_drain().await;
    cancelled_request_ends().await;
    dropped_read_reports_nothing().await;
    dropped_repair_never_lands_after_a_later_write().await;
}

// ---- tokio ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_runs_every_workload() {
    all_workloads().await;
}

/// Many tasks on tokio's worker threads, each with its own requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_many_tasks() {
    many_tasks(|f| {
        let h = tokio::spawn(f);
        Box::pin(async move { h.await.unwrap() })
    })
    .await;
}

/// R-MEMBER-4 with real tasks: the change lands between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_membership_change_between_busy_tasks() {
    let m = mems(3);
    let kids: Vec<Arc<dyn AsyncChild>> = m
        .iter()
        .map(|c| Arc::new(Yielding(c.clone())) as Arc<dyn AsyncChild>)
        .collect();
    let dev = Arc::new(AsyncDevice::new(Config::new(3, 2), kids).unwrap());
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let dev = dev.clone();
            tokio::spawn(async move {
                for i in 0..50u64 {
                    let off = (t * 50 + i) * 512;
                    dev.write(off, vec![t as u8 + 1; 512]).await.unwrap();
                    assert_eq!(dev.read(off, 512).await.unwrap(), vec![t as u8 + 1; 512]);
                }
            })
        })
        .collect();
    let added = dev.add_child(Arc::new(MemChild::new(SIZE))).await.unwrap();
    dev.remove_child(added).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(dev.in_flight(), 0);
}

/// TokioFileChild: raw image files (tests/files.rs covers every path and mode).
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_file_children() {
    let dir = std::env::temp_dir().join(format!("quorum-tokio-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut kids: Vec<Arc<dyn AsyncChild>> = Vec::new();
    let mut paths = Vec::new();
    for i in 0..3 {
        let p = dir.join(format!("c{i}.img"));
        std::fs::write(&p, vec![0u8; 65536]).unwrap();
        kids.push(Arc::new(
            quorum_tokio::TokioFileChild::open(&p, true, false)
                .await
                .unwrap(),
        ));
        paths.push(p);
    }
    let dev = AsyncDevice::new(Config::new(3, 2).with_rewrite_corrupted(true), kids).unwrap();
    assert_eq!(dev.size().await, Ok(65536));
    dev.write(4096, vec![0xee; 4096]).await.unwrap();
    dev.flush().await.unwrap();
    let mut bytes = std::fs::read(&paths[2]).unwrap();
    bytes[4100] = 0;
    std::fs::write(&paths[2], &bytes).unwrap();
    assert_eq!(dev.read(4096, 4096).await.unwrap(), vec![0xee; 4096]);
    assert_eq!(
        std::fs::read(&paths[2]).unwrap(),
        std::fs::read(&paths[0]).unwrap()
    );
    dev.write_zeroes(4096, 512).await.unwrap();
    assert_eq!(dev.read(4096, 512).await.unwrap(), vec![0; 512]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- smol ----------------------------------------------------------------------

#[test]
fn smol_runs_every_workload() {
    smol::block_on(all_workloads());
}

#[test]
fn smol_many_tasks() {
    smol::block_on(many_tasks(|f| Box::pin(smol::spawn(f))));
}

// ---- async-std (deprecated upstream; here only to prove compatibility) ----------

#[test]
fn async_std_runs_every_workload() {
    async_std::task::block_on(all_workloads());
}

#[test]
fn async_std_many_tasks() {
    async_std::task::block_on(many_tasks(|f| Box::pin(async_std::task::spawn(f))));
}

// ---- shared --------------------------------------------------------------------

type Spawned = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// 16 tasks spawned on the executor, 20 requests each, all sharing one device.
async fn many_tasks(spawn: impl Fn(Spawned) -> Spawned) {
    let m = mems(3);
    let kids: Vec<Arc<dyn AsyncChild>> = m
        .iter()
        .map(|c| Arc::new(Yielding(c.clone())) as Arc<dyn AsyncChild>)
        .collect();
    let dev = Arc::new(AsyncDevice::new(Config::new(3, 2), kids).unwrap());
    let handles: Vec<Spawned> = (0..16u64)
        .map(|t| {
            let dev = dev.clone();
            spawn(Box::pin(async move {
                for i in 0..20u64 {
                    let off = (t * 20 + i) * 1024;
                    let b = (t * 20 + i) as u8;
                    dev.write(off, vec![b; 1024]).await.unwrap();
                    assert_eq!(dev.read(off, 1024).await.unwrap(), vec![b; 1024]);
                }
                dev.flush().await.unwrap();
            }))
        })
        .collect();
    for h in handles {
        h.await;
    }
    assert_eq!(dev.in_flight(), 0);
    assert_eq!(m[0].contents(), m[1].contents());
    assert_eq!(m[1].contents(), m[2].contents());
}
