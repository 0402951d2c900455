//! Children: what the async driver reads from and writes to.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use quorum_proto::Extent;

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
    /// Writes `len` zero bytes at `offset`. The default writes zeroed
    /// buffers, in the kit's pieces ([`quorum_driver::zeroes::pieces`]).
    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let chunk = len.min(quorum_driver::zeroes::ZERO_CHUNK) as usize;
            let zeros: Arc<[u8]> = vec![0u8; chunk].into();
            for (at, n) in quorum_driver::zeroes::pieces(offset, len) {
                let piece = if n as usize == zeros.len() {
                    zeros.clone()
                } else {
                    Arc::from(&zeros[..n as usize])
                };
                self.write_at(piece, at).await?;
            }
            Ok(())
        })
    }
    /// Whether `offset..offset + len` starts with data or with zeroes (a
    /// hole), and for how long (at least one byte, at most `len`). The
    /// default knows nothing: all data.
    fn block_status(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<Extent>> {
        let _ = offset;
        Box::pin(std::future::ready(Ok(Extent { len, zero: false })))
    }
    /// Makes written data durable.
    fn flush(&self) -> ChildFuture<'_, io::Result<()>>;
    /// The child's length in bytes.
    fn size(&self) -> ChildFuture<'_, io::Result<u64>>;
}
