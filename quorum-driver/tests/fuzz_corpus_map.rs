//! Replays the checked-in `map_file` fuzz corpus (`fuzz/corpus/map_file/`)
//! on stable Rust through the function the cargo-fuzz target calls
//! (`quorum_driver::testing::fuzz::map_file`: the map file's parser and
//! the map's decoder, SPEC R-SYNC-6), then every seed damaged in the ways a
//! crash or a stray write damages a file — cut at many lengths, a byte
//! flipped at many places, a header field set to extremes — and a few
//! thousand pseudo-random inputs, some of them starting like a map.
//!
//! Needs the kit's feature `testing` (on in `cargo test --workspace`,
//! where quorum-proto's dev-dependency turns it on).
#![cfg(feature = "testing")]

use std::fs;
use std::path::{Path, PathBuf};

use quorum_driver::sync::file::parse_bytes;
use quorum_driver::testing::fuzz::map_file;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/map_file");
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect();
    files.sort();
    files
}

fn run(what: &str, data: &[u8]) {
    if std::panic::catch_unwind(|| map_file(data)).is_err() {
        let head: String = data.iter().take(64).map(|b| format!("{b:02x}")).collect();
        panic!(
            "map_file: {what} fails ({} bytes, starting {head})",
            data.len()
        );
    }
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[test]
fn map_file_corpus_r_sync_6() {
    let files = corpus();
    assert!(files.len() >= 2, "the map_file corpus is too small");
    for (path, data) in &files {
        run(&path.display().to_string(), data);
        // The seeds are map files, and read as such.
        assert!(
            parse_bytes(data).is_some(),
            "{}: a seed that is no map",
            path.display()
        );
    }
}

/// Each seed cut short, bit-flipped and with its header fields (generation,
/// payload length) and payload counts set to extremes, in both copies.
#[test]
fn map_file_damaged_seeds_r_sync_6() {
    let extremes: [u64; 7] = [
        0,
        1,
        0xff,
        u32::MAX as u64,
        1 << 62,
        u64::MAX - 24,
        u64::MAX,
    ];
    for (path, data) in corpus() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let slot = data.len() / 2;
        let mut rng = Rng(data.len() as u64);
        for _ in 0..200 {
            let len = rng.below(data.len() as u64 + 1) as usize;
            run(&format!("{name} cut to {len}"), &data[..len]);
        }
        for _ in 0..300 {
            let mut d = data.clone();
            // Mostly where the records are (their first few hundred bytes).
            let base = if rng.below(2) == 0 { 0 } else { slot };
            let at = (base + rng.below(600) as usize).min(d.len() - 1);
            d[at] ^= 1 << rng.below(8);
            run(&format!("{name} with byte {at} flipped"), &d);
        }
        for base in [0, slot] {
            // Generation, payload length; the payload's child count, first
            // name length; the map's chunk, size and child count.
            for field in [8usize, 16, 24, 32] {
                for &v in &extremes {
                    let mut d = data.clone();
                    let w = if field >= 24 { 4 } else { 8 };
                    d[base + field..base + field + w].copy_from_slice(&v.to_le_bytes()[..w]);
                    run(&format!("{name} field {field} of slot at {base} = {v}"), &d);
                }
            }
        }
    }
}

/// Random inputs, half of them starting with the magic and a plausible
/// header so the parser gets past its first check.
#[test]
fn map_file_random_r_sync_6() {
    let mut rng = Rng(6);
    for i in 0..3000 {
        let len = rng.below(2049) as usize;
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            data.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        data.truncate(len);
        if i % 2 == 0 && len >= 48 {
            let slot = len / 2;
            for base in [0, slot] {
                if base + 24 <= len {
                    data[base..base + 8].copy_from_slice(b"QRMSYNC1");
                    data[base + 8..base + 16].copy_from_slice(&(1 + rng.below(3)).to_le_bytes());
                    let plen = rng.below(slot as u64 + 8);
                    data[base + 16..base + 24].copy_from_slice(&plen.to_le_bytes());
                }
            }
        }
        run(&format!("random input #{i}"), &data);
    }
}

/// Damage past the checksum: each seed's newest record with payload bytes
/// changed and its checksum made right again, so the payload parser and
/// the map's decoder see nonsense that passed the checksum; and the
/// decoder alone on damaged encodings of the seed's map.
#[test]
fn map_file_rechecksummed_payloads_r_sync_6() {
    use quorum_driver::sync::file::record_for_test;
    for (path, data) in corpus() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (map, names) = parse_bytes(&data).expect("a seed is a map");
        let rec = record_for_test(&map, &names, 1000);
        let slot = data.len() / 2;
        let payload = &rec[24..rec.len() - 4];
        let mut rng = Rng(slot as u64);
        let encoded = map.encode();
        for i in 0..1500 {
            let mut p = payload.to_vec();
            mutate(&mut p, i, &mut rng);
            let mut e = encoded.clone();
            mutate(&mut e, i, &mut rng);
            run(&format!("{name} bare map variant {i}"), &e);
            let mut r = Vec::new();
            r.extend_from_slice(b"QRMSYNC1");
            r.extend_from_slice(&1000u64.to_le_bytes());
            r.extend_from_slice(&(p.len() as u64).to_le_bytes());
            r.extend_from_slice(&p);
            let c = crc32(&r);
            r.extend_from_slice(&c.to_le_bytes());
            let mut d = data.clone();
            if r.len() <= slot {
                d[slot..slot + r.len()].copy_from_slice(&r);
            }
            run(&format!("{name} payload variant {i}"), &d);
        }
    }
}

/// Changes `p` the `i`-th way: a byte set, a cut, or a 64-bit field set
/// to an extreme.
fn mutate(p: &mut Vec<u8>, i: usize, rng: &mut Rng) {
    match i % 3 {
        0 => {
            let at = rng.below(p.len() as u64) as usize;
            p[at] = rng.next_u64() as u8;
        }
        1 => {
            let cut = rng.below(p.len() as u64 + 1) as usize;
            p.truncate(cut);
        }
        _ => {
            let at = rng.below(p.len() as u64) as usize;
            let v = [0u64, 1, u64::MAX, 1 << 63, 64, 65][rng.below(6) as usize];
            for (k, b) in v.to_le_bytes().iter().enumerate() {
                if let Some(x) = p.get_mut(at + k) {
                    *x = *b;
                }
            }
        }
    }
}

/// The map file's CRC-32 (IEEE).
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
