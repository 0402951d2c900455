//! A child that takes its time: for tail-latency tests and benchmarks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use quorum_driver::Child;

/// Wraps a child and sleeps `delay` before each of its reads, writes and
/// flushes — a replica on a slow disk or a far network, reproducibly.
pub struct DelayChild {
    inner: Arc<dyn Child>,
    delay: Duration,
}

impl std::fmt::Debug for DelayChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayChild")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl DelayChild {
    /// `inner`, `delay` slower.
    pub fn new(inner: Arc<dyn Child>, delay: Duration) -> DelayChild {
        DelayChild { inner, delay }
    }

    fn wait(&self) {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }
}

impl Child for DelayChild {
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

    fn flush(&self) -> io::Result<()> {
        self.wait();
        self.inner.flush()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}
