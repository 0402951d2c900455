//! SPEC.md R-SYNC-6 — the map file: stale marks and unsettled marks
//! survive a restart, and a torn, truncated or foreign map file is
//! detected, never taken for a map.
//!
//! The file keeps two checksummed copies and writes the older one, so a
//! crash at any byte of an update leaves either the previous or the new
//! state readable. These tests cut an update short at every byte, damage
//! both copies, truncate the file, and feed it files that are no map at
//! all; `parse_bytes` (what the fuzzer calls) must agree with `open` on
//! every one of them.

use std::fs;
use std::path::{Path, PathBuf};

use quorum_driver::sync::file::{parse_bytes, record_for_test};
use quorum_driver::sync::{MapError, MapFile, Names, SyncMap};
use quorum_proto::ChildId;
use quorum_proto::sync::{Chunks, Mark};

const CHUNK: u64 = 64 << 10;

/// A scratch directory of this test process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("quorum-map-file-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn names() -> Names {
    vec![
        (0, "children.0".to_string()),
        (1, "disk-b".to_string()),
        (2, "nbd://10.0.0.2:10809/c".to_string()),
    ]
}

/// A map of a 64 MiB device (1024 chunks) in three versions that differ in
/// unsettled and stale marks.
fn version(v: u32) -> SyncMap {
    let mut m = SyncMap::new(64 << 20, CHUNK, &[0, 1, 2]);
    for k in 0..v {
        let c = u64::from(k) * 97 % 1024;
        m.apply(&Mark::Unsettle {
            chunks: Chunks {
                first: c,
                end: c + 3,
            },
        });
        m.apply(&Mark::Stale {
            child: ChildId(k % 3),
            chunks: Chunks {
                first: 1000 - c / 2,
                end: 1001 - c / 2 + u64::from(k),
            },
        });
    }
    m
}

/// A map's chunk size, size, unsettled chunks and stale chunks by child.
type Summary = (u64, u64, Vec<u64>, Vec<(u32, Vec<u64>)>);

/// The marks of a map, to compare maps read back with those written
/// (waiting clean and fresh marks are not persisted).
fn marks(m: &SyncMap) -> Summary {
    let set = |b: &quorum_driver::sync::Bits| (0..b.len()).filter(|&i| b.get(i)).collect();
    (
        m.chunk(),
        m.size(),
        set(m.unsettled()),
        m.children()
            .map(|c| (c, set(m.stale_of(c).expect("a child"))))
            .collect(),
    )
}

fn open(path: &Path) -> Result<(SyncMap, Names), MapError> {
    MapFile::open(path).map(|(_, m, n)| (m, n))
}

/// Opens `path` and checks `parse_bytes` agrees on its bytes.
fn open_agreeing(path: &Path) -> Result<(SyncMap, Names), MapError> {
    let r = open(path);
    let bytes = fs::read(path).expect("read back");
    let parsed = parse_bytes(&bytes);
    match (&r, &parsed) {
        (Ok((m, n)), Some((pm, pn))) => {
            assert_eq!(marks(m), marks(pm), "parse_bytes read another map");
            assert_eq!(n, pn);
        }
        (Err(_), None) => {}
        _ => panic!(
            "open gave {:?} but parse_bytes {:?}",
            r.as_ref().map(|_| "a map"),
            parsed.as_ref().map(|_| "a map")
        ),
    }
    r
}

/// A file whose newest copy is `version(2)` (generation 3, in slot 0) and
/// whose older copy is `version(1)` (generation 2, in slot 1); returns its
/// bytes and the slot size.
fn two_versions(path: &Path) -> (Vec<u8>, usize) {
    let mut f = MapFile::create(path, &version(1), &names()).expect("create");
    f.write(&version(2), &names()).expect("write");
    let bytes = fs::read(path).expect("read");
    assert_eq!(bytes.len() % 2, 0);
    let slot = bytes.len() / 2;
    // Slot 0 was written last: create wrote slot 0 then slot 1.
    assert_eq!(&bytes[..8], b"QRMSYNC1");
    assert_eq!(bytes[8], 3, "generation 3 in slot 0");
    assert_eq!(bytes[slot + 8], 2, "generation 2 in slot 1");
    (bytes, slot)
}

#[test]
fn r_sync_6_create_open_round_trip() {
    let dir = Scratch::new("round-trip");
    let path = dir.path("map");
    let m = version(5);
    MapFile::create(&path, &m, &names()).expect("create");
    let (file, back, n) = MapFile::open(&path).expect("open");
    assert_eq!(marks(&back), marks(&m));
    assert_eq!(n, names());
    assert_eq!(file.path(), path);
    assert!(back.unsettled().count() > 0);
    assert!(back.stale_of(1).unwrap().count() > 0);

    // Updates survive a reopen: each open sees the last write.
    let (mut file, _, _) = MapFile::open(&path).unwrap();
    for v in [0, 7, 3] {
        file.write(&version(v), &names()).expect("write");
        let (back, _) = open_agreeing(&path).expect("open");
        assert_eq!(
            marks(&back),
            marks(&version(v)),
            "after writing version {v}"
        );
    }
    // A reopened file goes on writing over its older copy.
    drop(file);
    let (mut file, _, _) = MapFile::open(&path).unwrap();
    file.write(&version(9), &names()).unwrap();
    file.write(&version(4), &names()).unwrap();
    let (back, _) = open_agreeing(&path).unwrap();
    assert_eq!(marks(&back), marks(&version(4)));
}

/// A device whose size is not a multiple of the chunk, with more children
/// than names and long names (cut at 255 bytes).
#[test]
fn r_sync_6_round_trip_odd_sizes_and_names() {
    let dir = Scratch::new("odd");
    let path = dir.path("map");
    let mut m = SyncMap::new((3 << 30) + 4097, 64 << 20, &[0, 5, 63]);
    m.apply(&Mark::Stale {
        child: ChildId(63),
        chunks: Chunks { first: 48, end: 49 },
    });
    m.apply(&Mark::Unsettle {
        chunks: Chunks { first: 0, end: 49 },
    });
    let long = "n".repeat(300);
    let names: Names = vec![(0, "a".into()), (63, long.clone())];
    MapFile::create(&path, &m, &names).unwrap();
    let (back, n) = open_agreeing(&path).unwrap();
    assert_eq!(marks(&back), marks(&m));
    assert_eq!(back.chunks(), 49);
    assert_eq!(n, vec![(0, "a".into()), (63, long[..255].to_string())]);
}

/// R-SYNC-6: an update cut short at every byte — the new record written
/// over the older copy up to byte k — opens as the previous state or, once
/// whole, the new one; never an error. The same with the record's tail
/// landing and its head not (sectors written out of order).
#[test]
fn r_sync_6_torn_update_at_every_byte_gives_old_or_new() {
    let dir = Scratch::new("torn");
    let path = dir.path("map");
    let (bytes, slot) = two_versions(&path);
    let old = marks(&version(2));
    let new_map = version(3);
    let new = marks(&new_map);
    assert_ne!(old, new);
    // The next write goes to slot 1 (generation 2, the older) as
    // generation 4.
    let rec = record_for_test(&new_map, &names(), 4);
    assert!(rec.len() < slot);
    {
        let (mut f, _, _) = MapFile::open(&path).unwrap();
        f.write(&new_map, &names()).unwrap();
        let whole = fs::read(&path).unwrap();
        assert_eq!(&whole[slot..slot + rec.len()], rec.as_slice());
        assert_eq!(&whole[..slot], &bytes[..slot], "slot 0 untouched");
    }
    // The new state exactly when the slot ends up holding the whole new
    // record (the old one's first bytes — the magic — are the same).
    let check = |torn: &[u8], what: &str| {
        fs::write(&path, torn).unwrap();
        let (back, n) = open_agreeing(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n, names(), "{what}");
        let whole = torn[slot..slot + rec.len()] == rec[..];
        assert_eq!(&marks(&back), if whole { &new } else { &old }, "{what}");
        whole
    };
    let (mut head_new, mut tail_new) = (Vec::new(), Vec::new());
    for k in 0..=rec.len() {
        // Head first: rec[..k] landed.
        let mut torn = bytes.clone();
        torn[slot..slot + k].copy_from_slice(&rec[..k]);
        if check(&torn, &format!("cut at byte {k} of {}", rec.len())) {
            head_new.push(k);
        }
        // Tail first: rec[k..] landed, the head still the old record's.
        let mut torn = bytes.clone();
        torn[slot + k..slot + rec.len()].copy_from_slice(&rec[k..]);
        if check(&torn, &format!("tail from byte {k} of {}", rec.len())) {
            tail_new.push(k);
        }
    }
    assert_eq!(head_new, [rec.len()], "only the whole record is new");
    // The magic is the same in both records: a tail from byte 8 on is the
    // whole new record; from the generation on it is not.
    assert_eq!(tail_new, (0..=8).collect::<Vec<_>>());
}

/// R-SYNC-6: after a torn update was opened as the previous state, the
/// next update goes over the damaged copy and both are whole again.
#[test]
fn r_sync_6_write_after_a_torn_update_repairs_the_damaged_copy() {
    let dir = Scratch::new("repair");
    let path = dir.path("map");
    let (mut bytes, slot) = two_versions(&path);
    let rec = record_for_test(&version(3), &names(), 4);
    bytes[slot..slot + rec.len() / 2].copy_from_slice(&rec[..rec.len() / 2]);
    fs::write(&path, &bytes).unwrap();
    let (mut f, back, _) = MapFile::open(&path).unwrap();
    assert_eq!(marks(&back), marks(&version(2)));
    f.write(&version(6), &names()).unwrap();
    let after = fs::read(&path).unwrap();
    assert_eq!(&after[..slot], &bytes[..slot], "the whole copy is kept");
    let (back, _) = open_agreeing(&path).unwrap();
    assert_eq!(marks(&back), marks(&version(6)));
    // And the next one over the now older slot 0.
    f.write(&version(7), &names()).unwrap();
    let after2 = fs::read(&path).unwrap();
    assert_eq!(&after2[slot..], &after[slot..]);
    let (back, _) = open_agreeing(&path).unwrap();
    assert_eq!(marks(&back), marks(&version(7)));
}

/// R-SYNC-6: one copy damaged anywhere (a flipped bit in its header,
/// payload or checksum) — the other is used; both damaged — refused with
/// `Damaged`, a message naming the file and the way out.
#[test]
fn r_sync_6_both_copies_damaged_is_refused() {
    let dir = Scratch::new("damaged");
    let path = dir.path("map");
    let (bytes, slot) = two_versions(&path);
    let rec_len = record_for_test(&version(2), &names(), 3).len();
    let old_len = record_for_test(&version(1), &names(), 2).len();
    for at in [9, 17, 30, rec_len / 2, rec_len - 1] {
        // Slot 0 (the newest) damaged: the older copy wins.
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        fs::write(&path, &b).unwrap();
        let (back, _) = open_agreeing(&path).unwrap();
        assert_eq!(marks(&back), marks(&version(1)), "slot 0 byte {at}");
        // Both damaged.
        let at1 = at.min(old_len - 1);
        b[slot + at1] ^= 0x01;
        fs::write(&path, &b).unwrap();
        match open_agreeing(&path) {
            Err(MapError::Damaged(p)) => assert_eq!(p, path),
            other => panic!("byte {at}: {:?}", other.map(|_| "a map")),
        }
        let msg = open(&path).err().unwrap().to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("both copies are damaged")
                && msg.contains("--map-reset"),
            "{msg}"
        );
    }
    // Both copies torn by the same cut update (magic intact).
    let mut b = bytes.clone();
    b[30..rec_len].fill(0);
    b[slot + 30..slot + old_len].fill(0);
    fs::write(&path, &b).unwrap();
    assert!(matches!(open_agreeing(&path), Err(MapError::Damaged(_))));
}

/// R-SYNC-6: a truncated map file is refused (`Damaged`: its copies start
/// like maps but are not whole where the file says they are), at every
/// length from a byte short to the first copy's magic; with not even one
/// magic left it is not a map (`Foreign`).
#[test]
fn r_sync_6_truncated_file_is_refused() {
    let dir = Scratch::new("truncated");
    let path = dir.path("map");
    let (bytes, slot) = two_versions(&path);
    let mut lens: Vec<usize> = vec![2 * slot - 1, 2 * slot - 4096, slot + 100, slot, slot - 1];
    lens.extend([100, 64, 32, 25, 24, 20, 8]);
    let rec_len = record_for_test(&version(2), &names(), 3).len();
    lens.extend([2 * rec_len, 2 * rec_len + 1, rec_len + 8]);
    for len in lens {
        fs::write(&path, &bytes[..len]).unwrap();
        match open_agreeing(&path) {
            Err(MapError::Damaged(_)) => {}
            Err(MapError::Foreign(_)) if len < 2 * 8 => {}
            other => panic!("truncated to {len}: {:?}", other.map(|_| "a map")),
        }
    }
    // A file that grew (appended to) is not taken either.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4096]);
    fs::write(&path, &longer).unwrap();
    assert!(matches!(open_agreeing(&path), Err(MapError::Damaged(_))));
}

/// R-SYNC-6: what is not a map file at all — random bytes, a raw disk
/// image, a qcow2 header, text — is refused as `Foreign`, saying so.
#[test]
fn r_sync_6_foreign_files_are_refused() {
    let dir = Scratch::new("foreign");
    let path = dir.path("map");
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut random = vec![0u8; 256 << 10];
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut qcow2 = vec![0u8; 1 << 20];
    qcow2[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    let mut mbr = vec![0u8; 1 << 20];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("a raw image of zeroes", vec![0; 1 << 20]),
        ("a qcow2 header", qcow2),
        ("an MBR disk", mbr),
        ("text", b"children.0 children.1\n".repeat(1000)),
        ("one byte", vec![b'Q']),
        ("the magic alone, once", b"QRMSYNC1".to_vec()),
    ];
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        match open_agreeing(&path) {
            Err(MapError::Foreign(p)) => assert_eq!(p, path, "{what}"),
            other => panic!("{what}: {:?}", other.map(|_| "a map")),
        }
        let msg = open(&path).err().unwrap().to_string();
        assert!(
            msg.contains("not a quorum sync map") && msg.contains(&path.display().to_string()),
            "{what}: {msg}"
        );
    }
}

/// R-SYNC-6: an empty file (created, never written: a crash right after
/// creating it) is refused, not taken for an empty map.
#[test]
fn r_sync_6_zero_length_file_is_refused() {
    let dir = Scratch::new("empty");
    let path = dir.path("map");
    fs::write(&path, b"").unwrap();
    let e = open_agreeing(&path).expect_err("refused");
    assert!(matches!(e, MapError::Foreign(_)), "{e}");
    assert!(parse_bytes(&[]).is_none());
}

#[test]
fn r_sync_6_missing_file_is_an_io_error() {
    let dir = Scratch::new("missing");
    let path = dir.path("nothing-here");
    match open(&path) {
        Err(MapError::Io(p, e)) => {
            assert_eq!(p, path);
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{:?}", other.map(|_| "a map")),
    }
}

/// R-SYNC-6: a record whose checksum is right but whose payload does not
/// add up (its marks cut short, a child count past the limit, a length
/// field pointing past the slot) is no map: refused, never a panic.
#[test]
fn r_sync_6_well_checksummed_nonsense_is_refused() {
    let good = record_for_test(&version(1), &names(), 7);
    let slot = fs_slot_len(&version(1));
    // Header fields (magic, generation, payload length) then the payload.
    let payload = &good[24..good.len() - 4];
    let variants: Vec<Vec<u8>> = vec![
        payload[..payload.len() - 8].to_vec(),
        {
            let mut p = payload.to_vec();
            p[..4].copy_from_slice(&1000u32.to_le_bytes());
            p
        },
        {
            let mut p = payload.to_vec();
            p.extend_from_slice(&[0; 8]);
            p
        },
        Vec::new(),
    ];
    for (k, p) in variants.into_iter().enumerate() {
        let rec = raw_record(&p, 7);
        let mut file = vec![0u8; 2 * slot];
        file[..rec.len()].copy_from_slice(&rec);
        assert!(parse_bytes(&file).is_none(), "variant {k}");
        let dir = Scratch::new(&format!("nonsense-{k}"));
        let path = dir.path("map");
        fs::write(&path, &file).unwrap();
        assert!(
            matches!(open_agreeing(&path), Err(MapError::Damaged(_))),
            "variant {k}"
        );
    }
    // A payload length near u64::MAX: no overflow anywhere.
    for plen in [u64::MAX, u64::MAX - 24, u64::MAX - 28, 1 << 62] {
        let mut file = vec![0u8; 2 * slot];
        file[..8].copy_from_slice(b"QRMSYNC1");
        file[8..16].copy_from_slice(&1u64.to_le_bytes());
        file[16..24].copy_from_slice(&plen.to_le_bytes());
        assert!(parse_bytes(&file).is_none());
    }
    // A map claiming an enormous device in a few bytes.
    let mut huge = Vec::new();
    huge.extend_from_slice(&1u64.to_le_bytes());
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    huge.extend_from_slice(&64u32.to_le_bytes());
    huge.extend_from_slice(&[0; 256]);
    assert!(SyncMap::decode(&huge).is_none());
}

/// The size of one slot of a map file holding `m`.
fn fs_slot_len(m: &SyncMap) -> usize {
    let dir = Scratch::new("slot-len");
    let path = dir.path("map");
    MapFile::create(&path, m, &names()).unwrap();
    fs::metadata(&path).unwrap().len() as usize / 2
}

/// A record with a right checksum around any payload (the file's CRC-32).
fn raw_record(payload: &[u8], generation: u64) -> Vec<u8> {
    let mut rec = Vec::new();
    rec.extend_from_slice(b"QRMSYNC1");
    rec.extend_from_slice(&generation.to_le_bytes());
    rec.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    rec.extend_from_slice(payload);
    let c = crc32(&rec);
    rec.extend_from_slice(&c.to_le_bytes());
    rec
}

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

/// `raw_record` computes the file's checksum: it reproduces a real record.
#[test]
fn r_sync_6_test_checksum_matches_the_files() {
    let good = record_for_test(&version(2), &names(), 9);
    assert_eq!(raw_record(&good[24..good.len() - 4], 9), good);
}
