//! Replays the checked-in `core_api` fuzz corpus (`fuzz/corpus/core_api/`)
//! on stable Rust, plus a few thousand pseudo-random inputs, through the
//! function the cargo-fuzz target calls: the driver kit's
//! `quorum_driver::testing::fuzz::core_api`, which decodes the bytes into
//! calls on the raw core — submits, polls, completions right and wrong,
//! cancels (R-CANCEL-1..2), drains (R-MEMBER-4), membership changes
//! (R-MEMBER-1..3) — and holds every one to the core's contract with the
//! kit's checker.

use std::fs;
use std::path::{Path, PathBuf};

use quorum_driver::testing::fuzz::core_api;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
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

/// SplitMix64 with Lemire's bounded draw (the simulator's generator, so the
/// inputs are those the simulator's corpus test used to draw).
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

/// `count` inputs of up to `max_len` bytes, reproducible from `seed`.
fn random_inputs(seed: u64, count: usize, max_len: u64) {
    let mut rng = Rng(seed);
    for i in 0..count {
        let len = rng.below(max_len + 1) as usize;
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            data.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        data.truncate(len);
        let r = std::panic::catch_unwind(|| core_api(&data));
        if r.is_err() {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            panic!("input #{i} of seed {seed} fails: {hex}");
        }
    }
}

#[test]
fn core_api_corpus() {
    let files = corpus("core_api");
    assert!(!files.is_empty(), "the core_api corpus is empty");
    for (path, data) in files {
        let r = std::panic::catch_unwind(|| core_api(&data));
        if r.is_err() {
            panic!("core_api: {} fails", path.display());
        }
    }
}

#[test]
fn core_api_random() {
    random_inputs(1, 4000, 1000);
}

/// Longer inputs: more calls per core, so cancels (R-CANCEL-1..2) and drains
/// (R-MEMBER-4) meet requests at every stage.
#[test]
fn core_api_random_long_r_cancel() {
    random_inputs(3, 300, 8000);
}
