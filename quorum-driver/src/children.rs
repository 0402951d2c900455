//! Children every driver offers alike: bytes in memory, and a delay in front
//! of another child. Each is a blocking [`Child`] here; the async driver
//! makes them async children over the same state.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quorum_proto::{Errno, Extent};

use crate::child::Child;

/// A child held in memory, for tests and examples.
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

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // Plain byte copies: a poisoned lock still holds consistent bytes.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes of `offset..offset + n`, or `EIO` past the end.
    fn range(len: usize, offset: u64, n: u64) -> io::Result<std::ops::Range<usize>> {
        let eio = || io::Error::from_raw_os_error(Errno::EIO.get());
        let start = usize::try_from(offset).map_err(|_| eio())?;
        let n = usize::try_from(n).map_err(|_| eio())?;
        match start.checked_add(n) {
            Some(end) if end <= len => Ok(start..end),
            _ => Err(eio()),
        }
    }
}

impl Child for MemChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.lock();
        let r = Self::range(d.len(), offset, buf.len() as u64)?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.lock();
        let r = Self::range(d.len(), offset, buf.len() as u64)?;
        d[r].copy_from_slice(buf);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.lock();
        let r = Self::range(d.len(), offset, len)?;
        d[r].fill(0);
        Ok(())
    }

    /// Sector by sector: the run of all-zero (or not) sectors the range
    /// starts with.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Extent> {
        let d = self.lock();
        let r = Self::range(d.len(), offset, len)?;
        let zero = |s: &[u8]| s.iter().all(|&b| b == 0);
        let mut chunks = d[r].chunks(512);
        let Some(first) = chunks.next() else {
            return Ok(Extent { len, zero: false });
        };
        let z = zero(first);
        let mut n = first.len() as u64;
        for c in chunks {
            if zero(c) != z {
                break;
            }
            n += c.len() as u64;
        }
        Ok(Extent { len: n, zero: z })
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.lock().len() as u64)
    }
}

/// A child that takes its time: `inner`, waiting `delay` before each of its
/// reads, writes and flushes — a replica on a slow disk or a far network,
/// reproducibly, for tail-latency tests and benchmarks. This crate makes it
/// a blocking [`Child`] (it sleeps) when `C` is one; the async driver makes
/// it an async child the same way.
pub struct Delayed<C> {
    inner: C,
    delay: Duration,
}

impl<C> std::fmt::Debug for Delayed<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<C> Delayed<C> {
    /// `inner`, `delay` slower.
    pub fn new(inner: C, delay: Duration) -> Delayed<C> {
        Delayed { inner, delay }
    }

    /// The wrapped child.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The delay before each operation.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    fn wait(&self) {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }
}

impl Child for Delayed<Arc<dyn Child>> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.write_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.wait();
        self.inner.write_zeroes(offset, len)
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Extent> {
        self.inner.block_status(offset, len)
    }

    fn flush(&self) -> io::Result<()> {
        self.wait();
        self.inner.flush()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn reachable(&self) -> bool {
        self.inner.reachable()
    }

    fn allocated(&self) -> Option<u64> {
        self.inner.allocated()
    }
}
