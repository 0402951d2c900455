//! A child held in memory, for tests and examples: its futures are ready at
//! once, under any executor. The bytes and their checks are the kit's
//! ([`quorum_driver::MemChild`]).

use std::io;
use std::sync::Arc;

use quorum_driver::Child;
use quorum_proto::Extent;

use crate::child::{AsyncChild, ChildFuture};

/// A child held in memory; its futures are ready at once, under any executor.
#[derive(Debug)]
pub struct MemChild(quorum_driver::MemChild);

impl MemChild {
    /// `len` zero bytes.
    pub fn new(len: usize) -> MemChild {
        MemChild(quorum_driver::MemChild::new(len))
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.0.contents()
    }

    /// Overwrites bytes behind the device's back (to simulate corruption).
    ///
    /// # Panics
    ///
    /// If the range is past the end.
    pub fn poke(&self, offset: usize, bytes: &[u8]) {
        self.0.poke(offset, bytes);
    }
}

impl AsyncChild for MemChild {
    fn read_at(&self, mut buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        let r = self.0.read_at(&mut buf, offset);
        Box::pin(std::future::ready((r, buf)))
    }

    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(std::future::ready(self.0.write_at(&data, offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(std::future::ready(self.0.write_zeroes(offset, len)))
    }

    fn block_status(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<Extent>> {
        Box::pin(std::future::ready(self.0.block_status(offset, len)))
    }

    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        Box::pin(std::future::ready(self.0.size()))
    }
}
