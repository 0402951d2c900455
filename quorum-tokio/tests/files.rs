//! `TokioFileChild` in both modes, with and without `O_DIRECT`: the bytes on
//! disk, reads served from the page cache, from the disk (pages evicted, in
//! whole or in part), past the end, and many tasks with reads of varied
//! lengths (which reuse each other's buffers).
#![cfg(all(feature = "tokio", target_os = "linux"))]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quorum_proto::Config;
use quorum_tokio::{AsyncChild, AsyncDevice, IoMode, ReadError, TokioFileChild};

const SIZE: usize = 1 << 20;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("quorum-tokio-files-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Three image files of SIZE bytes, each filled with `fill`.
fn images(d: &Dir, fill: u8) -> Vec<PathBuf> {
    (0..3)
        .map(|i| {
            let p = d.0.join(format!("c{i}.img"));
            std::fs::write(&p, vec![fill; SIZE]).unwrap();
            p
        })
        .collect()
}

async fn device(paths: &[PathBuf], mode: IoMode, direct: bool) -> AsyncDevice {
    let mut kids: Vec<Arc<dyn AsyncChild>> = Vec::new();
    for p in paths {
        let c = TokioFileChild::open(p, true, direct)
            .await
            .unwrap()
            .with_mode(mode);
        assert_eq!(c.mode(), mode);
        kids.push(Arc::new(c));
    }
    let config = Config::new(3, 2).with_rewrite_corrupted(true);
    AsyncDevice::new(config, kids).unwrap()
}

/// Drops a file's pages from the page cache (they must be clean: flushed),
/// then reads `cached` back into it (without read-ahead), so that a read of
/// more than that finds only a part of its bytes cached.
fn evict(p: &Path, cached: std::ops::Range<u64>) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Random).unwrap();
    let mut buf = vec![0; (cached.end - cached.start) as usize];
    f.read_exact_at(&mut buf, cached.start).unwrap();
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

async fn every_path(mode: IoMode, direct: bool) {
    let d = dir(&format!("{mode:?}-{direct}"));
    let paths = images(&d, 0x11);
    let dev = device(&paths, mode, direct).await;
    assert_eq!(dev.size().await, Ok(SIZE as u64));

    // Aligned (O_DIRECT when asked) and unaligned writes and reads.
    for (off, len) in [
        (4096u64, 4096usize),
        (8192, 65536),
        (1000, 3000),
        (300_001, 77),
    ] {
        let data = pattern(off, len);
        dev.write(off, data.clone()).await.unwrap();
        assert_eq!(dev.read(off, len).await.unwrap(), data, "{off} {len}");
        for p in &paths {
            let on_disk = std::fs::read(p).unwrap();
            assert_eq!(&on_disk[off as usize..off as usize + len], &data[..]);
        }
    }
    dev.flush().await.unwrap();

    // Reads the page cache no longer holds: whole, and in part (the first
    // half cached, the rest not; and the other way round).
    let data = pattern(9, 65536);
    dev.write(131072, data.clone()).await.unwrap();
    for cached in [0..0, 131072..131072 + 8192, 131072 + 32768..131072 + 36864] {
        for p in &paths {
            evict(p, cached.clone());
        }
        assert_eq!(dev.read(131072, 65536).await.unwrap(), data);
    }

    // A corrupted replica is outvoted and rewritten.
    let mut bytes = std::fs::read(&paths[2]).unwrap();
    bytes[4100] ^= 0xff;
    std::fs::write(&paths[2], &bytes).unwrap();
    assert_eq!(dev.read(4096, 4096).await.unwrap(), pattern(4096, 4096));
    assert_eq!(
        std::fs::read(&paths[2]).unwrap(),
        std::fs::read(&paths[0]).unwrap()
    );

    dev.write_zeroes(4096, 8192).await.unwrap();
    assert_eq!(dev.read(4096, 8192).await.unwrap(), vec![0; 8192]);
    assert_eq!(dev.read(0, 0).await.unwrap(), Vec::<u8>::new());

    // Past the end: the request fails, and so does a child's read.
    assert!(matches!(
        dev.read(SIZE as u64 - 10, 20).await,
        Err(ReadError::Io(_))
    ));
    let short = TokioFileChild::open(&paths[0], false, direct)
        .await
        .unwrap()
        .with_mode(mode);
    let (r, buf) = short.read_at(vec![0; 4096], SIZE as u64 - 2048).await;
    assert!(r.is_err(), "a read past the end must fail");
    assert_eq!(buf.len(), 4096);
    let (r, _) = short.read_at(vec![0; 4096], u64::MAX - 100).await;
    assert!(r.is_err());
    assert!(
        short.write_at(vec![1; 16].into(), 0).await.is_err(),
        "read-only"
    );
    assert_eq!(dev.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_blocking_mode_every_path() {
    every_path(IoMode::NonBlocking, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_mode_every_path() {
    every_path(IoMode::Inline, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_blocking_mode_direct() {
    every_path(IoMode::NonBlocking, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_mode_direct() {
    every_path(IoMode::Inline, true).await;
}

/// The modes on a current-thread runtime too (the I/O threads' wake-ups
/// reach it; inline writes simply run on it).
#[tokio::test(flavor = "current_thread")]
async fn both_modes_current_thread() {
    for mode in [IoMode::NonBlocking, IoMode::Inline] {
        let d = dir(&format!("ct-{mode:?}"));
        let paths = images(&d, 0);
        let dev = device(&paths, mode, false).await;
        for i in 0..200u64 {
            let data = pattern(i, 4096);
            dev.write(i * 4096, data.clone()).await.unwrap();
            assert_eq!(dev.read(i * 4096, 4096).await.unwrap(), data);
        }
        dev.flush().await.unwrap();
    }
}

/// 16 tasks at once, writes and reads of varied lengths on overlapping
/// tasks' buffers: every read returns what its task wrote, every replica
/// ends equal.
async fn many_tasks(mode: IoMode) {
    let d = dir(&format!("many-{mode:?}"));
    let paths = images(&d, 0);
    let dev = Arc::new(device(&paths, mode, false).await);
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let dev = dev.clone();
            tokio::spawn(async move {
                for i in 0..60u64 {
                    let len = [512usize, 4096, 100, 65536, 8192, 1][(i % 6) as usize];
                    let off = t * 65536 + (i * 977) % 1024;
                    let data = pattern(t * 1000 + i, len.min(65536 - 1024));
                    dev.write(off, data.clone()).await.unwrap();
                    let back = dev.read(off, data.len()).await.unwrap();
                    assert_eq!(back, data, "task {t} request {i}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(dev.in_flight(), 0);
    let first = std::fs::read(&paths[0]).unwrap();
    for p in &paths[1..] {
        assert!(std::fs::read(p).unwrap() == first, "replicas differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_non_blocking() {
    many_tasks(IoMode::NonBlocking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_inline() {
    many_tasks(IoMode::Inline).await;
}

/// Dropping request futures at every point leaves a device that still
/// completes everything and keeps its replicas equal once writes settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests() {
    let d = dir("dropped");
    let paths = images(&d, 0);
    let dev = Arc::new(device(&paths, IoMode::NonBlocking, false).await);
    for i in 0..200u64 {
        let dev2 = dev.clone();
        let w = tokio::spawn(async move { dev2.write(i * 512, vec![i as u8; 512]).await });
        if i % 3 == 0 {
            w.abort();
        }
        let _ = w.await;
        let r = dev.read(i * 512, 512);
        // Poll once, then drop.
        let _ = futures_util::FutureExt::now_or_never(r);
    }
    // Everything ended (cancelled writes may still land on a helper thread).
    for _ in 0..100 {
        if dev.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(dev.in_flight(), 0);
    dev.write(0, vec![7; 4096]).await.unwrap();
    assert_eq!(dev.read(0, 4096).await.unwrap(), vec![7; 4096]);
}
