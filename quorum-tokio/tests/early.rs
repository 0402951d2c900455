//! Early quorum ([`Config::early_quorum`]): a read returns once `threshold`
//! children agree, and its stragglers are still read, compared, reported and
//! rewritten afterwards, in a task of its own — spawned on the current tokio
//! runtime (feature `tokio`), or with the spawner given to the device;
//! without either, reads are answered at their completion.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use quorum_proto::{ChildId, Config, Event, OpType};
use quorum_tokio::{AsyncChild, AsyncDevice, ChildFuture, MemChild};

const SIZE: usize = 1 << 16;
const SLOW: Duration = Duration::from_millis(400);

type Sleep = fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// A memory child whose reads take `SLOW` (on the executor's timer).
struct SlowReads {
    inner: Arc<MemChild>,
    sleep: Sleep,
}

impl AsyncChild for SlowReads {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        Box::pin(async move {
            (self.sleep)(SLOW).await;
            self.inner.read_at(buf, offset).await
        })
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        self.inner.write_at(data, offset)
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        self.inner.flush()
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.inner.size()
    }
}

#[cfg(feature = "tokio")]
fn tokio_sleep(d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(tokio::time::sleep(d))
}

fn smol_sleep(d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        smol::Timer::after(d).await;
    })
}

/// Three children, the last one slow; early quorum and rewrites on.
fn device(sleep: Sleep) -> (AsyncDevice, Vec<Arc<MemChild>>) {
    let mems: Vec<Arc<MemChild>> = (0..3).map(|_| Arc::new(MemChild::new(SIZE))).collect();
    let mut kids: Vec<Arc<dyn AsyncChild>> = mems[..2]
        .iter()
        .map(|m| m.clone() as Arc<dyn AsyncChild>)
        .collect();
    kids.push(Arc::new(SlowReads {
        inner: mems[2].clone(),
        sleep,
    }));
    let config = Config::new(3, 2)
        .with_rewrite_corrupted(true)
        .with_early_quorum(true);
    (AsyncDevice::new(config, kids).unwrap(), mems)
}

/// The read returns before the slow child answers; the slow child, which
/// holds wrong bytes, is reported and rewritten afterwards.
async fn answers_early_then_repairs(dev: &AsyncDevice, mems: &[Arc<MemChild>], sleep: Sleep) {
    let mut events = dev.events();
    dev.write(4096, vec![0xab; 4096]).await.unwrap();
    mems[2].poke(4096, &[0x00; 16]);

    let start = Instant::now();
    assert_eq!(dev.read(4096, 4096).await.unwrap(), vec![0xab; 4096]);
    assert!(
        start.elapsed() < SLOW / 2,
        "answered after {:?}",
        start.elapsed()
    );
    assert_eq!(dev.in_flight(), 1, "the straggler is still being read");

    // The straggler is judged once it arrives: reported, then rewritten.
    let (_, event) = events.next().await.unwrap();
    assert!(matches!(
        event,
        Event::ReportBad {
            op: OpType::Read,
            error: None,
            child: ChildId(2),
            ..
        }
    ));
    while dev.in_flight() != 0 {
        sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(mems[2].contents(), mems[0].contents());
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_answers_early_and_repairs_later() {
    let (dev, mems) = device(tokio_sleep);
    answers_early_then_repairs(&dev, &mems, tokio_sleep).await;
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn tokio_current_thread_answers_early() {
    let (dev, mems) = device(tokio_sleep);
    answers_early_then_repairs(&dev, &mems, tokio_sleep).await;
}

#[test]
fn smol_with_a_spawner_answers_early() {
    smol::block_on(async {
        let (dev, mems) = device(smol_sleep);
        dev.set_spawner(Arc::new(|f| smol::spawn(f).detach()));
        answers_early_then_repairs(&dev, &mems, smol_sleep).await;
    });
}

#[test]
fn smol_without_a_spawner_answers_at_the_completion() {
    smol::block_on(async {
        let (dev, mems) = device(smol_sleep);
        dev.write(0, vec![1; 512]).await.unwrap();
        mems[2].poke(0, &[2; 512]);
        let start = Instant::now();
        assert_eq!(dev.read(0, 512).await.unwrap(), vec![1; 512]);
        assert!(start.elapsed() >= SLOW);
        assert_eq!(dev.in_flight(), 0);
        assert_eq!(mems[2].contents(), mems[0].contents());
    });
}

/// Many early reads at once, some dropped before their answer: every one
/// ends, the device drains, and a membership change still goes through.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_early_reads_some_dropped() {
    let (dev, _mems) = device(tokio_sleep);
    let dev = Arc::new(dev);
    dev.write(0, vec![5; SIZE]).await.unwrap();
    let tasks: Vec<_> = (0..40u64)
        .map(|i| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let r = dev.read(i * 512, 512);
                if i % 4 == 0 {
                    // Dropped before the answer: the read goes on without it.
                    let _ = tokio::time::timeout(Duration::from_micros(1), r).await;
                } else {
                    assert_eq!(r.await.unwrap(), vec![5; 512]);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let added = dev.add_child(Arc::new(MemChild::new(SIZE))).await.unwrap();
    assert_eq!(dev.in_flight(), 0);
    dev.remove_child(added).await.unwrap();
}
