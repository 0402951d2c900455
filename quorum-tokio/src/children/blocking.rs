//! Any blocking child on tokio's blocking pool (feature `tokio`).

use std::io;
use std::sync::Arc;

use quorum_driver::Child;

use crate::child::{AsyncChild, ChildFuture};

/// Any blocking [`quorum_driver::Child`] (a `quorum_sync::FileChild`, an NBD
/// export, your own) as an [`AsyncChild`]: every operation
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

/// Runs `f` on tokio's blocking pool; a panic (or a runtime shutting down)
/// becomes an error.
pub(super) async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    ::tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// A read on tokio's blocking pool, which gives the buffer back.
pub(super) async fn offload_read(
    buf: Vec<u8>,
    f: impl FnOnce(&mut [u8]) -> io::Result<()> + Send + 'static,
) -> (io::Result<()>, Vec<u8>) {
    let len = buf.len();
    let job = ::tokio::task::spawn_blocking(move || {
        let mut buf = buf;
        let r = f(&mut buf);
        (r, buf)
    });
    match job.await {
        Ok(x) => x,
        // The closure panicked or the runtime is shutting down.
        Err(e) => (Err(io::Error::other(e)), vec![0; len]),
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
        offload(move || f(&*c)).await
    }
}

impl AsyncChild for Blocking {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        let c = self.inner.clone();
        Box::pin(offload_read(buf, move |b| c.read_at(b, offset)))
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(self.run(move |c| c.write_at(&data, offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(self.run(move |c| c.write_zeroes(offset, len)))
    }

    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> ChildFuture<'_, io::Result<quorum_proto::Extent>> {
        Box::pin(self.run(move |c| c.block_status(offset, len)))
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(self.run(|c| c.flush()))
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        Box::pin(self.run(|c| c.size()))
    }
}
