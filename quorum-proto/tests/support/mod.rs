//! The in-memory driver of the core's tests is the kit's
//! (`quorum_driver::testing::MemDriver`): children are byte vectors, faults
//! are set per child, pending child operations complete in an order the test
//! picks, and every call to the core goes through the kit's contract
//! checker, so each of these tests also checks the core's contract and the
//! reference model of SPEC.md.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use quorum_driver::testing::{Faults, MemDriver, Order};

/// The driver the tests use: default capacities, byte-vector children.
pub type Mem = MemDriver;
