//! Children of the blocking driver: raw files, memory, and the wrappers for
//! tests and benchmarks (blkdebug-style injection, delays). Any
//! [`quorum_driver::Child`] will do — an NBD export (`quorum_nbd::NbdChild`)
//! or your own.

mod delay;
mod file;
mod inject;
mod mem;

pub use delay::DelayChild;
pub use file::FileChild;
pub use inject::InjectChild;
pub use mem::MemChild;
