//! The raw core API under arbitrary call sequences, through the driver kit's
//! contract checker: it must never panic, and must keep its contract (see
//! `quorum_driver::testing::fuzz::core_api`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quorum_driver::testing::fuzz::core_api(data);
});
