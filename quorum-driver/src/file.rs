//! Raw image files (or block devices) with positional I/O: what the file
//! children of every driver do, once. Buffered requests go through a plain
//! descriptor with bare `pread`/`pwrite` (rustix: std's go through libc's
//! cancellation points, measurable at a few hundred thousand operations a
//! second); with `direct`, requests aligned to [`DIRECT_ALIGN`] go through an
//! `O_DIRECT` descriptor of the same file (the kernel keeps the two
//! coherent), from an aligned bounce buffer when the caller's is not.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use quorum_proto::Extent;

/// Alignment of offsets, lengths and buffers for `O_DIRECT` I/O.
pub const DIRECT_ALIGN: usize = 4096;

/// An open raw image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    /// Opened with `O_DIRECT`, used for requests aligned to [`DIRECT_ALIGN`].
    direct: Option<File>,
    /// Taken by large buffered writes ([`TAKE_TURNS`]).
    turns: std::sync::Mutex<()>,
}

/// Buffered writes of at least this many bytes to one file take turns here
/// rather than in the kernel. The kernel runs one buffered write per file at
/// a time anyway (ext4, xfs: the inode's lock), and its waiters spin for as
/// long as the writer copies: with a resync's and clients' large writes to
/// the same child, a whole core of a small machine burnt waiting (a 1 GiB
/// rebuild took 0.5 s or 2 s by chance). Here they sleep. Small writes
/// keep the kernel's lock: their wait is shorter than a sleep and a wake.
const TAKE_TURNS: usize = 128 << 10;

/// A large buffered write goes to the kernel in pieces of this size (its
/// turn held throughout). One `pwrite` of a whole 1 MiB chunk makes the
/// page cache take a 1 MiB folio for it, from memory not touched lately —
/// which under a hypervisor that takes free memory back (virtio-balloon
/// free page reporting, as on the machines this was measured on) costs a
/// host fault per page on first touch: a 1 GiB rebuild took 0.6–1.0 s with
/// 1 MiB writes and 0.33–0.39 s in 256 KiB pieces, interleaved runs, where
/// `cp` of the same file took 0.26–0.36 s. Smaller pieces cost syscalls
/// (64 KiB: 0.39–0.44 s).
const WRITE_PIECE: usize = 256 << 10;

impl RawFile {
    /// Opens `path` for reading and, if `writable`, writing; `direct` adds an
    /// `O_DIRECT` descriptor for aligned requests.
    pub fn open(path: &Path, writable: bool, direct: bool) -> io::Result<RawFile> {
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
        Ok(RawFile {
            file,
            direct,
            turns: std::sync::Mutex::new(()),
        })
    }

    /// The buffered descriptor (for work done without this type's help,
    /// such as `RWF_NOWAIT` reads).
    pub fn buffered_file(&self) -> &File {
        &self.file
    }

    /// Whether a request goes through the page cache (not `O_DIRECT`).
    pub fn buffered(&self, offset: u64, len: usize) -> bool {
        self.aligned(offset, len).is_none()
    }

    fn aligned(&self, offset: u64, len: usize) -> Option<&File> {
        let a = DIRECT_ALIGN as u64;
        self.direct
            .as_ref()
            .filter(|_| offset.is_multiple_of(a) && (len as u64).is_multiple_of(a))
    }

    /// Fills `buf` from `offset`; a short file is an error.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
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

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.aligned(offset, buf.len()) {
            Some(f) if (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) => {
                f.write_all_at(buf, offset)
            }
            Some(f) => {
                let (mut v, s) = aligned_buffer(buf.len());
                v[s..s + buf.len()].copy_from_slice(buf);
                f.write_all_at(&v[s..s + buf.len()], offset)
            }
            None if buf.len() >= TAKE_TURNS => {
                let _turn = self.turns.lock().unwrap_or_else(|p| p.into_inner());
                let mut at = offset;
                for piece in buf.chunks(WRITE_PIECE) {
                    write_all_at(&self.file, piece, at)?;
                    at += piece.len() as u64;
                }
                Ok(())
            }
            None => write_all_at(&self.file, buf, offset),
        }
    }

    /// Writes `len` zero bytes at `offset`.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::zeroes::write_as_data(offset, len, |piece, at| self.write_at(piece, at))
    }

    /// Whether `offset..offset + len` starts with data or a hole, and for
    /// how long, from `SEEK_DATA` / `SEEK_HOLE` (a file system without them
    /// reports everything as data, which is always true).
    pub fn block_status(&self, offset: u64, len: u64) -> io::Result<Extent> {
        use rustix::fs::{SeekFrom, seek};
        let end = offset.saturating_add(len);
        let clamp = |to: u64| to.min(end).saturating_sub(offset).max(1.min(len));
        match seek(&self.file, SeekFrom::Data(offset)) {
            // In a hole up to the next data.
            Ok(d) if d > offset => Ok(Extent {
                len: clamp(d),
                zero: true,
            }),
            Ok(_) => match seek(&self.file, SeekFrom::Hole(offset)) {
                Ok(h) => Ok(Extent {
                    len: clamp(h),
                    zero: false,
                }),
                Err(_) => Ok(Extent { len, zero: false }),
            },
            // No data from here to the end of the file: a hole.
            Err(rustix::io::Errno::NXIO) => Ok(Extent { len, zero: true }),
            // Not supported here: data, as far as anyone can tell.
            Err(_) => Ok(Extent { len, zero: false }),
        }
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The length: seeking to the end works for block devices too, where
    /// `metadata().len()` is 0.
    pub fn size(&self) -> io::Result<u64> {
        use std::io::{Seek, SeekFrom};
        let mut f = &self.file;
        f.seek(SeekFrom::End(0))
    }

    /// The bytes the file occupies (its allocated blocks).
    pub fn allocated(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.blocks() * 512)
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
pub fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
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
pub fn write_all_at(f: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_status_follows_the_files_holes() {
        let dir = std::env::temp_dir().join(format!("quorum-rawfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sparse.img");
        let f = File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        let raw = RawFile::open(&p, true, false).unwrap();
        raw.write_at(&[7u8; 65536], 1 << 18).unwrap();
        raw.flush().unwrap();
        // A hole up to the data (file systems without holes say data).
        let e = raw.block_status(0, 1 << 20).unwrap();
        assert!(e.len >= 1 && e.len <= 1 << 20);
        if e.zero {
            assert_eq!(e.len, 1 << 18, "the hole ends where the data starts");
            let d = raw.block_status(1 << 18, 1 << 20).unwrap();
            assert!(!d.zero && d.len >= 65536, "{d:?}");
            let tail = raw.block_status((1 << 18) + (1 << 16) * 4, 4096).unwrap();
            assert!(tail.zero && tail.len == 4096, "{tail:?}");
        }
        // Clamped to the range asked about.
        let e = raw.block_status(1 << 18, 512).unwrap();
        assert_eq!(
            e,
            Extent {
                len: 512,
                zero: false
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A write larger than [`TAKE_TURNS`] goes in [`WRITE_PIECE`]s: every
    /// byte lands where it belongs, up to a last piece shorter than the
    /// rest, and nothing beyond it is touched.
    #[test]
    fn a_large_write_in_pieces_lands_whole() {
        let dir = std::env::temp_dir().join(format!("quorum-rawpieces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pieces.img");
        std::fs::write(&p, vec![0xeeu8; 4 << 20]).unwrap();
        let raw = RawFile::open(&p, true, false).unwrap();
        let len = 2 * WRITE_PIECE + WRITE_PIECE / 2 + 17;
        assert!(len >= TAKE_TURNS);
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let at = 4096 + 3;
        raw.write_at(&data, at as u64).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(back.len(), 4 << 20);
        assert!(back[..at].iter().all(|&b| b == 0xee));
        assert!(back[at..at + len] == data[..], "the written range differs");
        assert!(back[at + len..].iter().all(|&b| b == 0xee));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
