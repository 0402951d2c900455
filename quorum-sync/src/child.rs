//! Children: what the blocking driver reads from and writes to.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// A replica, as the blocking driver sees it: positional I/O from any thread.
pub trait Child: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `len` zero bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; len.min(CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.write_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
    /// Makes written data durable.
    fn flush(&self) -> io::Result<()>;
    /// The child's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A raw image file (or block device) child, with positional I/O.
#[derive(Debug)]
pub struct FileChild {
    file: File,
    /// Opened with `O_DIRECT`, used for requests aligned to [`DIRECT_ALIGN`];
    /// others go through `file` (the kernel keeps the two coherent).
    direct: Option<File>,
}

/// Alignment of offsets, lengths and buffers for `O_DIRECT` I/O.
pub const DIRECT_ALIGN: usize = 4096;

impl FileChild {
    /// Opens `path` for reading and, if `writable`, writing; `direct` adds an
    /// `O_DIRECT` descriptor for aligned requests.
    pub fn open(path: &Path, writable: bool, direct: bool) -> io::Result<FileChild> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let direct = if direct {
            Some(
                OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)?,
            )
        } else {
            None
        };
        Ok(FileChild { file, direct })
    }

    fn aligned(&self, offset: u64, len: usize) -> Option<&File> {
        let a = DIRECT_ALIGN as u64;
        self.direct
            .as_ref()
            .filter(|_| offset.is_multiple_of(a) && (len as u64).is_multiple_of(a))
    }
}

/// A buffer aligned for `O_DIRECT`, carved out of a slightly larger vector
/// (no unsafe code needed).
fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + DIRECT_ALIGN];
    let start = v.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    (v, start)
}

/// `FileExt::read_exact_at` with bare `pread`s.
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pread(f, &mut *buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ));
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `FileExt::write_all_at` with bare `pwrite`s.
fn write_all_at(f: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(f, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write whole buffer",
                ));
            }
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Child for FileChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.aligned(offset, buf.len()) {
            Some(f) if (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) => {
                f.read_exact_at(buf, offset)
            }
            Some(f) => {
                let (mut v, s) = aligned_buffer(buf.len());
                let n = buf.len();
                f.read_exact_at(&mut v[s..s + n], offset)?;
                buf.copy_from_slice(&v[s..s + n]);
                Ok(())
            }
            None => read_exact_at(&self.file, buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.aligned(offset, buf.len()) {
            Some(f) if (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) => {
                f.write_all_at(buf, offset)
            }
            Some(f) => {
                let (mut v, s) = aligned_buffer(buf.len());
                v[s..s + buf.len()].copy_from_slice(buf);
                f.write_all_at(&v[s..s + buf.len()], offset)
            }
            None => write_all_at(&self.file, buf, offset),
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        use std::io::{Seek, SeekFrom};
        // Works for block devices too, where metadata().len() is 0.
        let mut f = &self.file;
        f.seek(SeekFrom::End(0))
    }
}
