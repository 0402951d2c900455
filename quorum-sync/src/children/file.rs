//! Raw image files (or block devices) as blocking children.

use std::io;
use std::path::Path;

use quorum_driver::{Child, RawFile};

/// A raw image file (or block device) child, with positional I/O
/// ([`quorum_driver::RawFile`]: bare `pread`/`pwrite`, optional `O_DIRECT`
/// for aligned requests).
#[derive(Debug)]
pub struct FileChild(RawFile);

impl FileChild {
    /// Opens `path` for reading and, if `writable`, writing; `direct` adds an
    /// `O_DIRECT` descriptor for aligned requests.
    pub fn open(path: &Path, writable: bool, direct: bool) -> io::Result<FileChild> {
        RawFile::open(path, writable, direct).map(FileChild)
    }
}

impl Child for FileChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write_zeroes(offset, len)
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<quorum_proto::Extent> {
        self.0.block_status(offset, len)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }

    fn size(&self) -> io::Result<u64> {
        self.0.size()
    }

    fn allocated(&self) -> Option<u64> {
        self.0.allocated()
    }
}
