//! Children: what the async driver reads from and writes to.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// The future a child operation returns: boxed, so children of different
/// types can sit behind one `Arc<dyn AsyncChild>`, and `Send`, so requests
/// can run on any executor's worker threads.
pub type ChildFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A replica, as the async driver sees it: positional I/O with owned buffers.
///
/// Buffers are owned so that an implementation can hand them to another
/// thread (a blocking pool, an `io_uring` submission queue) without copying:
/// a read takes a buffer of the length to read and gives it back, filled
/// or not, with the result; a write takes shared data that every child of a
/// request reads from.
///
/// Nothing here names an executor. An implementation that needs one (like
/// [`crate::TokioFileChild`]) says so.
pub trait AsyncChild: Send + Sync {
    /// Fills `buf` (all of it) from `offset` and returns it; reading past the
    /// end is an error. `buf`'s contents on entry are unspecified (the
    /// device recycles read buffers: it may hold bytes of an earlier read),
    /// so a successful read must overwrite every byte.
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)>;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>>;
    /// Writes `len` zero bytes at `offset`. The default writes a zeroed buffer.
    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            const CHUNK: u64 = 1 << 20;
            let zeros: Arc<[u8]> = vec![0u8; len.min(CHUNK) as usize].into();
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK);
                let chunk = if n as usize == zeros.len() {
                    zeros.clone()
                } else {
                    Arc::from(&zeros[..n as usize])
                };
                self.write_at(chunk, offset + done).await?;
                done += n;
            }
            Ok(())
        })
    }
    /// Makes written data durable.
    fn flush(&self) -> ChildFuture<'_, io::Result<()>>;
    /// The child's length in bytes.
    fn size(&self) -> ChildFuture<'_, io::Result<u64>>;
}

/// A child held in memory; its futures are ready at once, under any executor.
#[derive(Debug)]
pub struct MemChild {
    data: Mutex<Vec<u8>>,
}

impl MemChild {
    /// `len` zero bytes.
    pub fn new(len: usize) -> MemChild {
        MemChild {
            data: Mutex::new(vec![0; len]),
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Overwrites bytes behind the device's back (to simulate corruption).
    ///
    /// # Panics
    ///
    /// If the range is past the end.
    pub fn poke(&self, offset: usize, bytes: &[u8]) {
        self.lock()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let eio = || io::Error::from_raw_os_error(quorum_proto::Errno::EIO.get());
    let start = usize::try_from(offset).map_err(|_| eio())?;
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(start..end),
        _ => Err(eio()),
    }
}

impl AsyncChild for MemChild {
    fn read_at(&self, mut buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        let r = {
            let d = self.lock();
            range(d.len(), offset, buf.len()).map(|r| buf.copy_from_slice(&d[r]))
        };
        Box::pin(std::future::ready((r, buf)))
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        let r = {
            let mut d = self.lock();
            let len = d.len();
            range(len, offset, data.len()).map(|r| d[r].copy_from_slice(&data))
        };
        Box::pin(std::future::ready(r))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        let r = {
            let mut d = self.lock();
            let dl = d.len();
            usize::try_from(len)
                .map_err(|_| io::Error::from_raw_os_error(quorum_proto::Errno::EIO.get()))
                .and_then(|n| range(dl, offset, n))
                .map(|r| d[r].fill(0))
        };
        Box::pin(std::future::ready(r))
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        let n = self.lock().len() as u64;
        Box::pin(std::future::ready(Ok(n)))
    }
}
