//! Children of the blocking driver: raw files, memory, and the wrappers for
//! tests and benchmarks (blkdebug-style injection, delays). Any
//! [`quorum_driver::Child`] will do — an NBD export (`quorum_nbd::NbdChild`)
//! or your own. Memory, injection and delays are the kit's, shared with the
//! async driver.

use std::sync::Arc;

use quorum_driver::Child;

mod file;

pub use file::FileChild;
pub use quorum_driver::MemChild;

/// A blocking child that fails as a QEMU blkdebug node with the given rules
/// would make it fail ([`quorum_driver::InjectState`] has the rules, checked
/// against QEMU 10.0.2).
pub type InjectChild = quorum_driver::Injected<Arc<dyn Child>>;

/// A blocking child that sleeps before each of its reads, writes and
/// flushes ([`quorum_driver::Delayed`]).
pub type DelayChild = quorum_driver::Delayed<Arc<dyn Child>>;
