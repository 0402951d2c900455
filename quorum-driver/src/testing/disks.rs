//! Where [`MemDriver`](super::MemDriver) reads and writes: a small trait, so
//! that the same driver runs over byte vectors, over scripted answers, over
//! real [`Child`] implementations, or over a simulator's faulty disks.

use std::collections::BTreeMap;
use std::sync::Arc;

use quorum_proto::{ChildId, Errno, Extent};

use crate::Child;

/// The children's storage, by [`ChildId`]. Errors are the child's own (the
/// driver adds its persistent faults in front, see
/// [`Faults`](super::Faults)).
pub trait Disks {
    /// Fills `buf` from `offset` of `child`.
    fn read(&mut self, child: ChildId, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `offset` of `child` (a write or a rewrite).
    fn write(&mut self, child: ChildId, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// Writes `len` zero bytes at `offset` of `child`.
    fn write_zeroes(&mut self, child: ChildId, offset: u64, len: u64) -> Result<(), Errno>;
    /// Makes `child`'s writes durable.
    fn flush(&mut self, child: ChildId) -> Result<(), Errno>;
    /// The first extent of `offset..offset + len` on `child`. The default
    /// reads the range and reports the run of all-zero (or not) sectors it
    /// starts with.
    fn block_status(&mut self, child: ChildId, offset: u64, len: u64) -> Result<Extent, Errno> {
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Errno::EINVAL)?];
        self.read(child, offset, &mut buf)?;
        let zero = |s: &[u8]| s.iter().all(|&b| b == 0);
        let mut chunks = buf.chunks(512);
        let Some(first) = chunks.next() else {
            return Ok(Extent { len, zero: false });
        };
        let z = zero(first);
        let mut n = first.len() as u64;
        for c in chunks.take_while(|c| zero(c) == z) {
            n += c.len() as u64;
        }
        Ok(Extent { len: n, zero: z })
    }
}

/// The default: each child a byte vector. Reading past the end is
/// `EINVAL`, writing past it `ENOSPC`, an unknown child `ENXIO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemDisks {
    disks: BTreeMap<ChildId, Vec<u8>>,
}

impl MemDisks {
    /// `children.N` holds `contents[N]`.
    pub fn new(contents: Vec<Vec<u8>>) -> Self {
        MemDisks {
            disks: contents
                .into_iter()
                .enumerate()
                .map(|(i, d)| (ChildId(i as u32), d))
                .collect(),
        }
    }

    /// Gives `child` these contents (a child added at runtime).
    pub fn insert(&mut self, child: ChildId, contents: Vec<u8>) {
        self.disks.insert(child, contents);
    }

    /// The contents of `child`.
    pub fn get(&self, child: ChildId) -> Option<&[u8]> {
        self.disks.get(&child).map(Vec::as_slice)
    }

    /// The contents of `child`, to change behind the device's back.
    pub fn get_mut(&mut self, child: ChildId) -> Option<&mut Vec<u8>> {
        self.disks.get_mut(&child)
    }

    fn range(&mut self, child: ChildId, offset: u64, len: usize) -> Result<&mut [u8], Errno> {
        let d = self.disks.get_mut(&child).ok_or(Errno::ENXIO)?;
        let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        d.get_mut(start..end).ok_or(Errno::EINVAL)
    }
}

impl Disks for MemDisks {
    fn read(&mut self, child: ChildId, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        buf.copy_from_slice(self.range(child, offset, buf.len())?);
        Ok(())
    }

    fn write(&mut self, child: ChildId, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let r = self.range(child, offset, data.len());
        r.map_err(|e| if e == Errno::EINVAL { Errno::ENOSPC } else { e })?
            .copy_from_slice(data);
        Ok(())
    }

    fn write_zeroes(&mut self, child: ChildId, offset: u64, len: u64) -> Result<(), Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::ENOSPC)?;
        let r = self.range(child, offset, len);
        r.map_err(|e| if e == Errno::EINVAL { Errno::ENOSPC } else { e })?
            .fill(0);
        Ok(())
    }

    fn flush(&mut self, child: ChildId) -> Result<(), Errno> {
        if self.disks.contains_key(&child) {
            Ok(())
        } else {
            Err(Errno::ENXIO)
        }
    }
}

/// Children that answer every read with fixed bytes (or an error) and every
/// write, write-zeroes and flush with a fixed result, whatever the range:
/// for one request at any offset, up to the largest (2^63 − 1). Unscripted
/// children read zeroes and succeed. Rewrites are writes (the driver's
/// rewrite faults script them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    reads: BTreeMap<ChildId, Result<Vec<u8>, Errno>>,
    results: BTreeMap<ChildId, Result<(), Errno>>,
}

impl Script {
    /// No child scripted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `child` answers reads with `answer`; its bytes must be as long as
    /// the read (a mistake in the script panics).
    pub fn read(&mut self, child: ChildId, answer: Result<Vec<u8>, Errno>) -> &mut Self {
        self.reads.insert(child, answer);
        self
    }

    /// `child` answers writes, write-zeroes and flushes with `result`.
    pub fn result(&mut self, child: ChildId, result: Result<(), Errno>) -> &mut Self {
        self.results.insert(child, result);
        self
    }
}

impl Disks for Script {
    fn read(&mut self, child: ChildId, _offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match self.reads.get(&child) {
            None => {
                buf.fill(0);
                Ok(())
            }
            Some(Err(e)) => Err(*e),
            Some(Ok(d)) => {
                assert_eq!(
                    d.len(),
                    buf.len(),
                    "Script: {child} answers reads with {} bytes, the read is of {}",
                    d.len(),
                    buf.len()
                );
                buf.copy_from_slice(d);
                Ok(())
            }
        }
    }

    fn write(&mut self, child: ChildId, _offset: u64, _data: &[u8]) -> Result<(), Errno> {
        self.results.get(&child).copied().unwrap_or(Ok(()))
    }

    fn write_zeroes(&mut self, child: ChildId, _offset: u64, _len: u64) -> Result<(), Errno> {
        self.results.get(&child).copied().unwrap_or(Ok(()))
    }

    fn flush(&mut self, child: ChildId) -> Result<(), Errno> {
        self.results.get(&child).copied().unwrap_or(Ok(()))
    }
}

/// Real children ([`Child`]: files, memory, blkdebug-style injection,
/// NBD), driven one operation at a time: to hold the other drivers to the
/// same children. An unknown child is `ENXIO`.
#[derive(Clone, Default)]
pub struct ChildDisks {
    children: BTreeMap<ChildId, Arc<dyn Child>>,
}

impl ChildDisks {
    /// `children.N` is `children[N]`.
    pub fn new(children: Vec<Arc<dyn Child>>) -> Self {
        ChildDisks {
            children: children
                .into_iter()
                .enumerate()
                .map(|(i, c)| (ChildId(i as u32), c))
                .collect(),
        }
    }

    /// Backs `child` (a child added at runtime) with `c`.
    pub fn insert(&mut self, child: ChildId, c: Arc<dyn Child>) {
        self.children.insert(child, c);
    }

    fn child(&self, child: ChildId) -> Result<&Arc<dyn Child>, Errno> {
        self.children.get(&child).ok_or(Errno::ENXIO)
    }
}

impl std::fmt::Debug for ChildDisks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildDisks")
            .field("children", &self.children.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Disks for ChildDisks {
    fn read(&mut self, child: ChildId, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        crate::errno(self.child(child)?.read_at(buf, offset))
    }

    fn write(&mut self, child: ChildId, offset: u64, data: &[u8]) -> Result<(), Errno> {
        crate::errno(self.child(child)?.write_at(data, offset))
    }

    fn write_zeroes(&mut self, child: ChildId, offset: u64, len: u64) -> Result<(), Errno> {
        crate::errno(self.child(child)?.write_zeroes(offset, len))
    }

    fn flush(&mut self, child: ChildId) -> Result<(), Errno> {
        crate::errno(self.child(child)?.flush())
    }
}
