//! Replays every trace under the workspace's `tests/replays/`: each is a
//! scenario that once exposed a bug (see the file name), so each must replay
//! step for step and keep every invariant.

use std::path::Path;

use quorum_sim::Sim;

#[test]
fn every_checked_in_trace_replays_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/replays");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/replays exists") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "trace") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let sim = Sim::replay(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(e) = sim.run() {
            panic!("{}: {e}", path.display());
        }
        n += 1;
    }
    assert!(n >= 2, "expected the checked-in traces, found {n}");
}
