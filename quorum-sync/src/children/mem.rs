//! An in-memory child, for tests and examples.

use std::io;
use std::sync::Mutex;

use quorum_driver::Child;

/// A child held in memory.
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
        self.data.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(start..end),
        _ => Err(io::Error::from_raw_os_error(libc::EIO)),
    }
}

impl Child for MemChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let r = range(d.len(), offset, buf.len())?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let r = range(d.len(), offset, buf.len())?;
        d[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.data.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
    }
}
