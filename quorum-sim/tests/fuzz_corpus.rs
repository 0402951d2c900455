//! Replays the checked-in `simulate` fuzz corpus (`fuzz/corpus/simulate/`)
//! on stable Rust, plus a thousand pseudo-random inputs, through the same
//! function the cargo-fuzz target calls ([`quorum_sim::fuzz::simulate`]).
//!
//! The `core_api` corpus is replayed by `quorum-proto/tests/fuzz_corpus.rs`,
//! beside the core whose contract it checks (its entry point is the driver
//! kit's `quorum_driver::testing::fuzz::core_api`).

use std::fs;
use std::path::{Path, PathBuf};

use quorum_sim::Rng;
use quorum_sim::fuzz::simulate;

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

fn replay(target: &str, f: fn(&[u8])) {
    let files = corpus(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for (path, data) in files {
        let r = std::panic::catch_unwind(|| f(&data));
        if r.is_err() {
            panic!("{target}: {} fails", path.display());
        }
    }
}

/// `count` inputs of up to `max_len` bytes, reproducible from `seed`.
fn random_inputs(seed: u64, count: usize, max_len: u64, f: fn(&[u8])) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let len = rng.below(max_len + 1) as usize;
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            data.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        data.truncate(len);
        let r = std::panic::catch_unwind(|| f(&data));
        if r.is_err() {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            panic!("input #{i} of seed {seed} fails: {hex}");
        }
    }
}

#[test]
fn simulate_corpus() {
    replay("simulate", simulate);
}

#[test]
fn simulate_random() {
    random_inputs(2, 1000, 3000, simulate);
}
