//! A child held in memory, for tests and examples: its futures are ready at
//! once, under any executor.

use std::io;
use std::sync::{Arc, Mutex};

use crate::child::{AsyncChild, ChildFuture};

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
