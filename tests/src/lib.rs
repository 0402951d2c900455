//! Nothing here: the tests in `tests/` hold the drivers to each other —
//! `quorum-sync`, `quorum-tokio` and `quorum-sim` give the same results and
//! events for the same scenario — which no driver's own tests can do, since
//! no driver depends on another.
