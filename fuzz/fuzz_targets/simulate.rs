//! The simulator with every decision taken from the fuzzer's bytes: every
//! invariant must hold (see `quorum_sim::fuzz::simulate`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quorum_sim::fuzz::simulate(data);
});
