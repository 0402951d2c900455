//! Feature `testing`: one in-memory driver, one contract checker and one
//! reference model, for every test, property test and fuzzer.
//!
//! Before this module each test suite carried its own loop executing the
//! core's actions and its own idea of what the core must do; they drifted
//! apart. Now:
//!
//! * [`model`] is the reference model of `SPEC.md`: what one request ends
//!   with (outcome, events in order, rewrites in order) given the
//!   configuration and its children's answers.
//! * [`Checker`] wraps the core and checks its contract on every input and
//!   every action — misuse refused without change, exactly one completion
//!   per request, the model's result at each completion, capacity, early
//!   quorum, ordering, cancellation (R-CANCEL-1..2) and the drain gate
//!   (R-MEMBER-4). A violation panics.
//! * [`MemDriver`] is the in-memory driver: [`Disks`] (byte vectors by
//!   default, scripted answers, real children) behind per-child
//!   [`Faults`], completions in an [`Order`] or picked one by one, logs of
//!   everything. It calls the core only through a [`Checker`].
//! * [`fuzz::core_api`] drives the checker from fuzz bytes.
//!
//! Whoever drives the core — a test, a property test, a fuzzer, the
//! simulator — gets every check by going through [`Checker`], directly or
//! through [`MemDriver`].

mod checker;
mod disks;
pub mod fuzz;
mod mem;
pub mod model;
#[cfg(test)]
mod tests;
mod track;

pub use checker::{Checker, RequestInfo};
pub use disks::{ChildDisks, Disks, MemDisks, Script};
pub use mem::{Faults, MemDriver, Order};
