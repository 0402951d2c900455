//! The sync map file's parser (SPEC R-SYNC-6) on arbitrary bytes: a torn,
//! truncated or foreign file must be refused, never panic, and whatever is
//! accepted must be a map that encodes back to itself (see
//! `quorum_driver::testing::fuzz::map_file`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quorum_driver::testing::fuzz::map_file(data);
});
