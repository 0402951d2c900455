//! Raw image files for tokio (feature `tokio`) that serve the page cache
//! from the task itself.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};

use quorum_driver::RawFile;

use super::blocking::{offload, offload_read};
use crate::child::{AsyncChild, ChildFuture};

/// Where a [`TokioFileChild`] does its work: the choice between never
/// blocking the runtime and the lowest latency on page-cache-backed files.
///
/// In both modes a read through the page cache first tries
/// `preadv2(…, RWF_NOWAIT)` right in the future's `poll` (Linux): when the
/// bytes are cached the kernel copies them at once — no thread hand-off, no
/// wake-up — and when any of them are not it says so (`EAGAIN`) instead of
/// waiting for the disk, and the rest of the read runs on tokio's blocking
/// pool. So reads never block the runtime in either mode. The modes differ
/// in where writes run, which Linux cannot attempt that way (a buffered
/// `pwritev2(RWF_NOWAIT)` fails with `EOPNOTSUPP` on ext4).
///
/// Flushes, write-zeroes, the size, and all `O_DIRECT` I/O (requests aligned
/// to [`quorum_driver::DIRECT_ALIGN`] on a child opened with `direct`) always run on tokio's
/// blocking pool.
///
/// Measured on a 2-core virtual machine, three 256 MiB replicas in the page
/// cache, 4 KiB writes one at a time (`examples/tokio_bench.rs`): about
/// 10 µs a request with [`IoMode::NonBlocking`], 5.5 µs with
/// [`IoMode::Inline`], against 28 µs when every write went through
/// `spawn_blocking`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// Never blocks the runtime (the default). Writes through the page cache
    /// run on a small pool of I/O threads shared by every `TokioFileChild`:
    /// one idle I/O thread spins for 50 µs before it sleeps, so the next
    /// write is handed over without waking anybody, and while the pool's
    /// writes are quick (under 20 µs on average) a task waiting for one
    /// stays runnable for up to 50 µs — it is re-queued rather than put to
    /// sleep, so the runtime's thread does not park and need not be woken
    /// (which costs more than the write). Other tasks run meanwhile; the
    /// price is CPU time spent polling and spinning near a write. When
    /// writes are slow, each goes to its own I/O thread (up to 64) and the
    /// waiting task sleeps until it is done.
    #[default]
    NonBlocking,
    /// Writes through the page cache are done directly in the future's
    /// `poll`, on the runtime's worker thread: a `pwrite` into the page
    /// cache takes a few microseconds, far less than any hand-off, so this is
    /// the fastest way to drive page-cache-backed files (benchmarks, images
    /// on a fast local disk).
    ///
    /// The trade-off: a buffered write can still block — when the kernel
    /// throttles a writer for too much dirty data, on a page it must first
    /// read in for a partial-page write, on file-system locks or journal
    /// space — and while it does, that worker thread runs no other task.
    /// With a `current_thread` runtime, nothing else runs at all. Choose it
    /// only when the files live in the page cache and such stalls are
    /// acceptable; it is wrong for network file systems or slow disks.
    /// Reads whose data is not cached still never block the runtime (they
    /// are detected with `RWF_NOWAIT` and moved to the blocking pool), except
    /// where the file system refuses `RWF_NOWAIT` altogether, where this mode
    /// reads in `poll` too.
    Inline,
}

/// A raw image file (or block device) child for tokio: positional I/O, with
/// an optional `O_DIRECT` descriptor for aligned requests, like
/// `quorum_sync::FileChild` (the kit's [`RawFile`] does the blocking work of both).
///
/// Reads served by the page cache complete in the future's first `poll`
/// (`preadv2` with `RWF_NOWAIT`); writes through the page cache run on a
/// small pool of I/O threads, or in `poll` with [`IoMode::Inline`] (see
/// [`TokioFileChild::with_mode`]); everything else runs on tokio's blocking
/// pool. Needs a tokio runtime for the work on the blocking pool (outside
/// one, that work fails with `EIO`).
#[derive(Clone, Debug)]
pub struct TokioFileChild {
    inner: Arc<FileInner>,
    mode: IoMode,
}

#[derive(Debug)]
struct FileInner {
    /// The file: every operation that leaves the task, and (its buffered
    /// descriptor) the work done in `poll`.
    blocking: RawFile,
    /// `RWF_NOWAIT` reads have not been refused by this file's file system.
    #[cfg(target_os = "linux")]
    nowait: AtomicBool,
}

impl FileInner {
    /// Whether a request goes through the page cache (not `O_DIRECT`).
    fn buffered(&self, offset: u64, len: usize) -> bool {
        self.blocking.buffered(offset, len)
    }

    fn cached(&self) -> &File {
        self.blocking.buffered_file()
    }

    /// Reads what the page cache holds of `buf`'s range without waiting for
    /// the disk; returns how many bytes (from the start) were read, or `None`
    /// when the file system does not support `RWF_NOWAIT`.
    #[cfg(target_os = "linux")]
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> Option<usize> {
        use rustix::io::{Errno, IoSliceMut, ReadWriteFlags, preadv2};
        if !self.nowait.load(Ordering::Relaxed) {
            return None;
        }
        let mut done = 0;
        while done < buf.len() {
            // Past i64::MAX the kernel refuses the offset (and u64::MAX
            // would mean "the file position"): leave it to the blocking path.
            let Some(off) = offset
                .checked_add(done as u64)
                .filter(|&o| o <= i64::MAX as u64)
            else {
                break;
            };
            let mut iov = [IoSliceMut::new(&mut buf[done..])];
            match preadv2(self.cached(), &mut iov, off, ReadWriteFlags::NOWAIT) {
                Ok(0) => break, // the end of the file: the blocking path reports it
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(Errno::OPNOTSUPP | Errno::NOSYS) if done == 0 => {
                    // Not supported here (an old kernel, a file system
                    // without it): stop trying on this file.
                    self.nowait.store(false, Ordering::Relaxed);
                    return None;
                }
                // EAGAIN (not cached) or a real error, which the blocking
                // path meets and reports.
                Err(_) => break,
            }
        }
        Some(done)
    }

    #[cfg(not(target_os = "linux"))]
    fn read_nowait(&self, _buf: &mut [u8], _offset: u64) -> Option<usize> {
        None
    }
}

impl TokioFileChild {
    /// Opens `path` for reading and, if `writable`, writing; `direct` adds an
    /// `O_DIRECT` descriptor for aligned requests. The open itself runs on the
    /// blocking pool. The mode is [`IoMode::NonBlocking`].
    pub async fn open(
        path: impl AsRef<Path>,
        writable: bool,
        direct: bool,
    ) -> io::Result<TokioFileChild> {
        let path = path.as_ref().to_path_buf();
        let inner = offload(move || {
            let blocking = RawFile::open(&path, writable, direct)?;
            Ok(FileInner {
                blocking,
                #[cfg(target_os = "linux")]
                nowait: AtomicBool::new(true),
            })
        })
        .await?;
        Ok(TokioFileChild {
            inner: Arc::new(inner),
            mode: IoMode::NonBlocking,
        })
    }

    /// The same child (sharing its descriptors) working in `mode`; see
    /// [`IoMode`] for what [`IoMode::Inline`] gains and risks.
    #[must_use]
    pub fn with_mode(mut self, mode: IoMode) -> TokioFileChild {
        self.mode = mode;
        self
    }

    /// The mode this child works in.
    pub fn mode(&self) -> IoMode {
        self.mode
    }
}

impl AsyncChild for TokioFileChild {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        Box::pin(async move {
            let mut buf = buf;
            let mut done = 0;
            if self.inner.buffered(offset, buf.len()) {
                match self.inner.read_nowait(&mut buf, offset) {
                    Some(n) if n == buf.len() => return (Ok(()), buf),
                    Some(n) => done = n,
                    None if self.mode == IoMode::Inline => {
                        let r = self.inner.cached().read_exact_at(&mut buf, offset);
                        return (r, buf);
                    }
                    None => {}
                }
            }
            // The rest (all of it, unless the cache held a first part).
            let inner = self.inner.clone();
            offload_read(buf, move |b| {
                inner.blocking.read_at(&mut b[done..], offset + done as u64)
            })
            .await
        })
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            if self.mode == IoMode::Inline && self.inner.buffered(offset, data.len()) {
                return self.inner.cached().write_all_at(&data, offset);
            }
            let inner = self.inner.clone();
            if !self.inner.buffered(offset, data.len()) {
                return offload(move || inner.blocking.write_at(&data, offset)).await;
            }
            super::io_pool::run(move || inner.blocking.write_at(&data, offset))
                .await
                .unwrap_or_else(|| Err(io::Error::other("a write panicked")))
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        let inner = self.inner.clone();
        Box::pin(offload(move || inner.blocking.write_zeroes(offset, len)))
    }

    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> ChildFuture<'_, io::Result<quorum_proto::Extent>> {
        let inner = self.inner.clone();
        Box::pin(offload(move || inner.blocking.block_status(offset, len)))
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        let inner = self.inner.clone();
        Box::pin(offload(move || inner.blocking.flush()))
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        let inner = self.inner.clone();
        Box::pin(offload(move || inner.blocking.size()))
    }
}
