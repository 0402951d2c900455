//! The map file (SPEC R-SYNC-6): the marks of one device in a file of
//! their own beside the children, like md's external bitmap.
//!
//! Two copies ("slots"), each a record: `QRMSYNC1`, a generation, the
//! payload's length, the payload (the children's ids and names, then the
//! marks, [`SyncMap::encode`]), a CRC-32 of all that. An update writes
//! the slot holding the older generation and syncs it, so a crash at any
//! byte leaves the other slot — the previous state — intact; opening takes
//! the valid slot with the higher generation. A file whose slots are both
//! damaged, or that is not a map at all, is refused with a message saying
//! which.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::map::SyncMap;
use crate::file::{read_exact_at, write_all_at};

const MAGIC: &[u8; 8] = b"QRMSYNC1";
const HEAD: usize = 8 + 8 + 8;

/// Most children a map file has room for.
pub const MAX_CHILDREN: usize = 64;

/// The longest child identity a map file keeps (a node name and the
/// child's path or NBD address), in bytes; longer ones are cut.
pub const MAX_NAME: usize = 255;

/// Why a map file was refused.
#[derive(Debug)]
pub enum MapError {
    /// The file could not be read or written.
    Io(PathBuf, io::Error),
    /// Neither slot starts like a map: not a map file.
    Foreign(PathBuf),
    /// Both slots are damaged (torn, truncated, or their checksums fail).
    Damaged(PathBuf),
    /// The map is for another device: other children or another size.
    Mismatch(PathBuf, String),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::Io(p, e) => write!(f, "map file {}: {e}", p.display()),
            MapError::Foreign(p) => write!(
                f,
                "map file {}: not a quorum sync map (use --map-reset to replace it)",
                p.display()
            ),
            MapError::Damaged(p) => write!(
                f,
                "map file {}: both copies are damaged (torn or truncated); --map-reset settles every chunk",
                p.display()
            ),
            MapError::Mismatch(p, why) => write!(
                f,
                "map file {}: {why} (use --map-reset to start it over, settling every chunk)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for MapError {}

/// The children a map is for: id and name, in slot order.
pub type Names = Vec<(u32, String)>;

/// An open map file.
#[derive(Debug)]
pub struct MapFile {
    path: PathBuf,
    file: File,
    /// Bytes per slot.
    slot: u64,
    /// The generation of each slot's record (0: none).
    gens: [u64; 2],
}

/// CRC-32 (IEEE), bitwise: a map is written a few times a second at most.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The room one slot needs for a map of `size` bytes in `chunk`s.
fn slot_size(size: u64, chunk: u64) -> u64 {
    let words = size.div_ceil(chunk).div_ceil(64);
    let names = MAX_CHILDREN as u64 * (4 + 4 + MAX_NAME as u64 + 1);
    let marks = 20 + MAX_CHILDREN as u64 * 4 + (1 + MAX_CHILDREN as u64) * words * 8;
    (HEAD as u64 + 4 + names + marks + 4).div_ceil(4096) * 4096
}

fn payload(map: &SyncMap, names: &Names) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for (id, name) in names {
        let n = &name.as_bytes()[..name.len().min(MAX_NAME)];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&(n.len() as u32).to_le_bytes());
        p.extend_from_slice(n);
    }
    p.extend_from_slice(&map.encode());
    p
}

fn parse_payload(p: &[u8]) -> Option<(SyncMap, Names)> {
    let n = u32::from_le_bytes(p.get(0..4)?.try_into().ok()?) as usize;
    if n > MAX_CHILDREN {
        return None;
    }
    let mut at = 4;
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let id = u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?);
        let l = u32::from_le_bytes(p.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(p.get(at + 8..at + 8 + l)?)
            .ok()?
            .to_string();
        names.push((id, name));
        at += 8 + l;
    }
    let map = SyncMap::decode(&p[at..])?;
    Some((map, names))
}

/// What a slot holds.
enum Slot {
    /// Not the start of a record: never written, or not a map.
    Missing,
    /// A record's start, but torn, truncated or failing its checksum.
    Damaged,
    /// A whole record: its generation and payload.
    Valid(u64, Vec<u8>),
}

fn read_slot(file: &File, at: u64, len: u64) -> Slot {
    let mut head = [0u8; HEAD];
    if len < 8 || read_exact_at(file, &mut head[..8], at).is_err() || &head[..8] != MAGIC {
        return Slot::Missing;
    }
    // A map's start cut short (a truncated file) is a damaged map.
    if read_exact_at(file, &mut head, at).is_err() {
        return Slot::Damaged;
    }
    let g = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
    let plen = u64::from_le_bytes(head[16..24].try_into().unwrap_or([0; 8]));
    if g == 0 || plen.saturating_add(HEAD as u64 + 4) > len {
        return Slot::Damaged;
    }
    let mut rest = vec![0u8; plen as usize + 4];
    if read_exact_at(file, &mut rest, at + HEAD as u64).is_err() {
        return Slot::Damaged;
    }
    let (p, c) = rest.split_at(plen as usize);
    let mut all = head.to_vec();
    all.extend_from_slice(p);
    if crc32(&all).to_le_bytes() != c {
        return Slot::Damaged;
    }
    Slot::Valid(g, p.to_vec())
}

impl MapFile {
    /// Creates `path` (replacing what was there) holding `map`.
    pub fn create(path: &Path, map: &SyncMap, names: &Names) -> Result<MapFile, MapError> {
        let io = |e| MapError::Io(path.to_path_buf(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        let slot = slot_size(map.size(), map.chunk());
        file.set_len(2 * slot).map_err(io)?;
        let mut f = MapFile {
            path: path.to_path_buf(),
            file,
            slot,
            gens: [0, 0],
        };
        f.write(map, names).map_err(io)?;
        // Both slots hold a valid record from the start.
        f.write(map, names).map_err(io)?;
        Ok(f)
    }

    /// Opens `path`: the newest whole copy of the map, and the children it
    /// is for.
    pub fn open(path: &Path) -> Result<(MapFile, SyncMap, Names), MapError> {
        let io = |e| MapError::Io(path.to_path_buf(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let slot = len / 2;
        let mut best: Option<(u64, usize, SyncMap, Names)> = None;
        let mut any_magic = false;
        let mut gens = [0u64; 2];
        for (k, at) in [0, slot].into_iter().enumerate() {
            let (g, p) = match read_slot(&file, at, slot) {
                Slot::Missing => continue,
                Slot::Damaged => {
                    any_magic = true;
                    continue;
                }
                Slot::Valid(g, p) => (g, p),
            };
            any_magic = true;
            let Some((map, names)) = parse_payload(&p) else {
                continue;
            };
            if slot_size(map.size(), map.chunk()) != slot {
                continue;
            }
            gens[k] = g;
            if best.as_ref().is_none_or(|b| g > b.0) {
                best = Some((g, k, map, names));
            }
        }
        match best {
            Some((_, _, map, names)) => Ok((
                MapFile {
                    path: path.to_path_buf(),
                    file,
                    slot,
                    gens,
                },
                map,
                names,
            )),
            None if any_magic => Err(MapError::Damaged(path.to_path_buf())),
            None => Err(MapError::Foreign(path.to_path_buf())),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `map` over the older copy and syncs it.
    pub fn write(&mut self, map: &SyncMap, names: &Names) -> io::Result<()> {
        let p = payload(map, names);
        let k = if self.gens[0] <= self.gens[1] { 0 } else { 1 };
        let g = self.gens[0].max(self.gens[1]) + 1;
        let mut rec = Vec::with_capacity(HEAD + p.len() + 4);
        rec.extend_from_slice(MAGIC);
        rec.extend_from_slice(&g.to_le_bytes());
        rec.extend_from_slice(&(p.len() as u64).to_le_bytes());
        rec.extend_from_slice(&p);
        let c = crc32(&rec);
        rec.extend_from_slice(&c.to_le_bytes());
        if rec.len() as u64 > self.slot {
            return Err(io::Error::other("the map outgrew its file"));
        }
        write_all_at(&self.file, &rec, k as u64 * self.slot)?;
        self.file.sync_data()?;
        self.gens[k] = g;
        Ok(())
    }
}

/// The record bytes [`MapFile::write`] would put in a slot: for tests that
/// cut a write short at every byte.
pub fn record_for_test(map: &SyncMap, names: &Names, generation: u64) -> Vec<u8> {
    let p = payload(map, names);
    let mut rec = Vec::new();
    rec.extend_from_slice(MAGIC);
    rec.extend_from_slice(&generation.to_le_bytes());
    rec.extend_from_slice(&(p.len() as u64).to_le_bytes());
    rec.extend_from_slice(&p);
    let c = crc32(&rec);
    rec.extend_from_slice(&c.to_le_bytes());
    rec
}

/// Parses a whole map file's bytes as [`MapFile::open`] would: the map
/// and its children, or `None` where `open` refuses the file. For the
/// fuzzer; never panics.
pub fn parse_bytes(bytes: &[u8]) -> Option<(SyncMap, Names)> {
    let slot = bytes.len() / 2;
    let mut best: Option<(u64, SyncMap, Names)> = None;
    for at in [0, slot] {
        let s = bytes.get(at..at + slot)?;
        if s.len() < HEAD + 4 || &s[..8] != MAGIC {
            continue;
        }
        let g = u64::from_le_bytes(s[8..16].try_into().ok()?);
        let plen = u64::from_le_bytes(s[16..24].try_into().ok()?);
        // As `read_slot`: generation 0 is never written.
        if g == 0 {
            continue;
        }
        let Some(end) = usize::try_from(plen).ok().and_then(|p| p.checked_add(HEAD)) else {
            continue;
        };
        let Some(c) = end.checked_add(4).and_then(|e| s.get(end..e)) else {
            continue;
        };
        if crc32(&s[..end]).to_le_bytes() != c {
            continue;
        }
        let Some((map, names)) = parse_payload(&s[HEAD..end]) else {
            continue;
        };
        // As `open`: a map of another size than its file's slots.
        if slot_size(map.size(), map.chunk()) != slot as u64 {
            continue;
        }
        if best.as_ref().is_none_or(|b| g > b.0) {
            best = Some((g, map, names));
        }
    }
    best.map(|b| (b.1, b.2))
}
