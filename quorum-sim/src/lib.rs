//! Deterministic simulation testing for the quorum core.
//!
//! [`Sim`] drives the real `quorum-proto` core against simulated children that
//! hold pristine bytes plus faults — transient read, write and flush errors
//! with a chosen errno, latent sector errors that persist until rewritten,
//! silent bit flips, lost and misdirected writes, slow children, reordered
//! completions, children added and removed between requests — while an
//! oracle keeps what the device should contain and a checker verifies every
//! completion:
//!
//! * a successful read returns the last acknowledged data (or, with writes
//!   overlapping it in flight, what some serial order allows) whenever few
//!   enough children are faulty ([`faults::safe_faulty`]);
//! * a write acknowledged OK was acknowledged by at least `threshold` children;
//! * every failed or outvoted child is reported exactly once per request with
//!   the request's sectors; `QUORUM_FAILURE` exactly when a threshold failed;
//! * no repair writes data older than an acknowledged write;
//! * once faults stop, reading everything back with rewrite on makes every
//!   healthy child byte-identical to the oracle;
//! * the same seed gives the same trace hash.
//!
//! With early quorum ([`SimConfig::early`]) a read's data is checked at its
//! `Action::Answer`, when its caller has it, and its completion must repeat
//! the answer and settle the stragglers against it; safety runs then keep at
//! most [`faults::safe_faulty_early`] children faulty.
//!
//! One `u64` seed decides everything. A run can be recorded as a trace
//! ([`trace`]) and replayed exactly; a replay that diverges says where.
//!
//! [`Sim::scripted`] runs an explicit scenario instead — your requests, your
//! faults (bytes poked behind the device's back, blkdebug-style rules) —
//! through the same disks, scheduler and checker; `quorum-tokio`'s agreement
//! test uses it to show that the simulator and both drivers give the same
//! results and events.
//!
//! ```
//! use quorum_sim::{Sim, SimConfig};
//!
//! let cfg = SimConfig { seed: 42, ops: 500, ..SimConfig::default() };
//! let report = Sim::new(cfg, false).unwrap().run().unwrap();
//! assert!(report.stats.invariants >= 500);
//! // Same seed, same run.
//! let again = Sim::new(cfg, false).unwrap().run().unwrap();
//! assert_eq!(report.hash, again.hash);
//! ```

mod config;
pub mod faults;
pub mod fuzz;
mod report;
mod rng;
mod sim;
pub mod trace;

pub use config::{Faults, Mode, SWEEP_CHUNK, SWEEP_SYNC_SIZE, SimConfig};
pub use report::{Injected, Report, Stats, SyncStats};
pub use rng::Rng;
pub use sim::{Sim, SimError};
