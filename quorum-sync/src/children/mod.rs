//! Children of the blocking driver: raw files, memory, and the wrappers for
//! tests and benchmarks (blkdebug-style injection, delays). Any
//! [`quorum_driver::Child`] will do — an NBD export (`quorum_nbd::NbdChild`)
//! or your own.

mod delay;
mod file;
mod mem;

pub use delay::DelayChild;
pub use file::FileChild;
pub use mem::MemChild;

/// A blocking child that fails as a QEMU blkdebug node with the given rules
/// would make it fail ([`quorum_driver::InjectState`] has the rules, checked
/// against QEMU 10.0.2).
pub type InjectChild = quorum_driver::Injected<std::sync::Arc<dyn quorum_driver::Child>>;
