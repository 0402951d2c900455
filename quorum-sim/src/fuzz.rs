//! Fuzzing entry point of the simulator, shared by the cargo-fuzz target
//! `simulate` (`fuzz/`) and the stable corpus test (`tests/fuzz_corpus.rs`).
//!
//! [`simulate`] runs the simulator with every decision taken from the input
//! (early quorum included, a configuration bit), and panics when an
//! invariant breaks, which is what a fuzzer reports.
//!
//! The raw core API's fuzz entry point, `core_api`, lives with the contract
//! checker it drives: `quorum_driver::testing::fuzz::core_api` (feature
//! `testing`).

use quorum_proto::ReadPattern;

use crate::config::{Faults, Mode, SimConfig};
use crate::sim::Sim;

/// The input, read front to back; zeroes once it is used up.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data, at: 0 }
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
}

/// Runs the simulator with a configuration taken from the first bytes of
/// `data` and every later decision from the rest; panics with the
/// simulator's message if an invariant breaks.
pub fn simulate(data: &[u8]) {
    let mut inp = Input::new(data);
    let children = 1 + inp.u8() as usize % 16;
    let threshold = 1 + inp.u8() as usize % children;
    let flags = inp.u8();
    let ops = 1 + inp.u8() as u64 % 200;
    let depth = 1 + inp.u8() as usize % 16;
    let cfg = SimConfig {
        seed: 0,
        children,
        threshold,
        ops,
        size: 64 * 1024,
        depth,
        pattern: if flags & 1 != 0 {
            ReadPattern::Fifo
        } else {
            ReadPattern::Quorum
        },
        rewrite: flags & 2 != 0,
        mode: if flags & 4 != 0 {
            Mode::OverThreshold
        } else {
            Mode::Safety
        },
        faults: Faults::Swarm,
        early: flags & 8 != 0,
        ..SimConfig::default()
    };
    let rest = data.get(inp.at..).unwrap_or(&[]);
    let sim = match Sim::from_bytes(cfg, rest) {
        Ok(s) => s,
        Err(e) => panic!("simulate: the derived configuration was refused: {e}"),
    };
    if let Err(e) = sim.run() {
        panic!("simulate ({cfg}): {e}");
    }
}
