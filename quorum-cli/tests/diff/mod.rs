//! Support for `qemu_diff.rs`: the scenario generator, the three ways of
//! running a scenario, and the comparison.

pub(crate) mod compare;
pub(crate) mod nbd;
pub(crate) mod run;
pub(crate) mod scenario;
