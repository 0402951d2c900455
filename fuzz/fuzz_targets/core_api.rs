//! The raw core API under arbitrary call sequences: it must never panic, and
//! must keep its contract (see `quorum_sim::fuzz::core_api`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quorum_sim::fuzz::core_api(data);
});
