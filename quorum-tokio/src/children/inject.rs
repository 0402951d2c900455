//! Error injection with QEMU blkdebug's meaning, for async children.
//!
//! [`InjectChild`] wraps any [`AsyncChild`] and fails its operations exactly
//! as `quorum_sync::InjectChild` fails a blocking child's — the rules, their
//! activation by events and every corner case are documented there, checked
//! against QEMU 10.0.2. The rule types are the same ([`InjectRule`],
//! [`InjectEvent`], re-exported from `quorum-sync`), so a front end parses
//! `--inject-error` once for both drivers.
//!
//! Rules are checked when the operation starts, in the order operations are
//! started on this child. `tests/inject.rs` checks it against the blocking
//! one on random operation sequences.

use std::io;
use std::sync::Arc;

use crate::child::{AsyncChild, ChildFuture};

use quorum_driver::Injected;
pub use quorum_driver::{InjectEvent, InjectRule};

/// An async child whose operations fail as a blkdebug node with the given
/// rules would make them fail.
pub type InjectChild = Injected<Arc<dyn AsyncChild>>;

impl AsyncChild for Injected<Arc<dyn AsyncChild>> {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        match self.state().before_read(offset, buf.len() as u64) {
            Ok(()) => self.inner().read_at(buf, offset),
            Err(e) => Box::pin(std::future::ready((Err(e), buf))),
        }
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        match self.state().before_write(offset, data.len() as u64) {
            Ok(()) => self.inner().write_at(data, offset),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        match self.state().before_write_zeroes(offset, len) {
            Ok(()) => self.inner().write_zeroes(offset, len),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// Passed through: blkdebug's rules do not apply to block status unless
    /// asked to (its `iotype`), which `inject-error` never does here.
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> ChildFuture<'_, io::Result<quorum_proto::Extent>> {
        self.inner().block_status(offset, len)
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        let r = self.state().before_flush();
        Box::pin(async move {
            let Some(generation) = r? else {
                return Ok(());
            };
            self.inner().flush().await?;
            self.state().flushed(generation);
            Ok(())
        })
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.inner().size()
    }
}
