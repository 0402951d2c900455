//! Blocking children on tokio's blocking pool (feature `tokio`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use quorum_sync::{Child, FileChild};

use crate::child::{AsyncChild, ChildFuture};

/// Any blocking [`quorum_sync::Child`] as an [`AsyncChild`]: every operation
/// runs on tokio's blocking pool (`spawn_blocking`), so the runtime's worker
/// threads never wait for a disk. Its futures must be polled inside a tokio
/// runtime; elsewhere the operation fails with `EIO`.
#[derive(Clone)]
pub struct Blocking {
    inner: Arc<dyn Child>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking").finish_non_exhaustive()
    }
}

impl Blocking {
    /// Wraps a blocking child.
    pub fn new(inner: Arc<dyn Child>) -> Blocking {
        Blocking { inner }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Child) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let c = self.inner.clone();
        ::tokio::task::spawn_blocking(move || f(&*c))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

impl AsyncChild for Blocking {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        let c = self.inner.clone();
        let len = buf.len();
        Box::pin(async move {
            let job = ::tokio::task::spawn_blocking(move || {
                let mut buf = buf;
                let r = c.read_at(&mut buf, offset);
                (r, buf)
            });
            match job.await {
                Ok(x) => x,
                // The closure panicked or the runtime is shutting down.
                Err(e) => (Err(io::Error::other(e)), vec![0; len]),
            }
        })
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(self.run(move |c| c.write_at(&data, offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(self.run(move |c| c.write_zeroes(offset, len)))
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(self.run(|c| c.flush()))
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        Box::pin(self.run(|c| c.size()))
    }
}

/// A raw image file (or block device) child for tokio: `quorum_sync`'s
/// [`FileChild`] (positional I/O, optional `O_DIRECT`) on tokio's blocking
/// pool. Needs a tokio runtime.
#[derive(Clone, Debug)]
pub struct TokioFileChild(Blocking);

impl TokioFileChild {
    /// Opens `path` for reading and, if `writable`, writing; `direct` adds an
    /// `O_DIRECT` descriptor for aligned requests. The open itself runs on the
    /// blocking pool.
    pub async fn open(
        path: impl AsRef<Path>,
        writable: bool,
        direct: bool,
    ) -> io::Result<TokioFileChild> {
        let path = path.as_ref().to_path_buf();
        let f = ::tokio::task::spawn_blocking(move || FileChild::open(&path, writable, direct))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))?;
        Ok(TokioFileChild(Blocking::new(Arc::new(f))))
    }
}

impl AsyncChild for TokioFileChild {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        self.0.write_at(data, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        self.0.write_zeroes(offset, len)
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        self.0.flush()
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.0.size()
    }
}
