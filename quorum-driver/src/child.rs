//! The blocking child trait: positional I/O from any thread. The blocking
//! driver runs it on its threads, the async driver on a blocking pool, NBD
//! children implement it, and so do the wrappers every driver shares
//! (blkdebug injection, delays).

use std::io;

use quorum_proto::{Errno, Extent};

/// A replica, as blocking code sees it: positional I/O from any thread.
pub trait Child: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `len` zero bytes at `offset`. The default writes zeroed
    /// buffers of at most [`crate::zeroes::ZERO_CHUNK`] bytes.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::zeroes::write_as_data(offset, len, |piece, at| self.write_at(piece, at))
    }
    /// Whether `offset..offset + len` starts with data or with zeroes (a
    /// hole), and for how long (at least one byte, at most `len`). The
    /// default knows nothing: all data.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Extent> {
        let _ = offset;
        Ok(Extent { len, zero: false })
    }
    /// Makes written data durable.
    fn flush(&self) -> io::Result<()>;
    /// The child's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Whether I/O can reach the child now (an NBD child's connection is
    /// up); what a monitor shows, never a reason to skip it. The default:
    /// always.
    fn reachable(&self) -> bool {
        true
    }
    /// Bytes the child occupies on its storage, where that is known (a
    /// file's allocated blocks); what a monitor shows.
    fn allocated(&self) -> Option<u64> {
        None
    }
}

/// An I/O result as the core votes on it (R-VOTE-3): its errno, `EIO` for
/// errors without one.
pub fn errno(r: io::Result<()>) -> Result<(), Errno> {
    r.map_err(|e| Errno::from(&e))
}
