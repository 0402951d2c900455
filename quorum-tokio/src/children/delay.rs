//! A child that takes its time (feature `tokio`): the kit's
//! [`quorum_driver::Delayed`] as an async child.

use std::io;
use std::sync::Arc;

use quorum_driver::Delayed;

use crate::child::{AsyncChild, ChildFuture};

/// Wraps a child and waits a delay before each of its reads, writes and
/// flushes — a replica on a slow disk or a far network, reproducibly.
///
/// The wait sleeps on tokio's blocking pool rather than on tokio's timer:
/// the timer counts whole milliseconds and rounds a sleep up to the next
/// tick (a 1 ms sleep takes up to 2), which would make a delay mean
/// something else here than under the blocking driver.
pub type DelayChild = Delayed<Arc<dyn AsyncChild>>;

async fn pause(c: &DelayChild) {
    let d = c.delay();
    if !d.is_zero() {
        let _ = ::tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    }
}

impl AsyncChild for Delayed<Arc<dyn AsyncChild>> {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        Box::pin(async move {
            pause(self).await;
            self.inner().read_at(buf, offset).await
        })
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            pause(self).await;
            self.inner().write_at(data, offset).await
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            pause(self).await;
            self.inner().write_zeroes(offset, len).await
        })
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            pause(self).await;
            self.inner().flush().await
        })
    }

    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> ChildFuture<'_, io::Result<quorum_proto::Extent>> {
        self.inner().block_status(offset, len)
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.inner().size()
    }
}
