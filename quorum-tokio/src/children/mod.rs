//! Children of the async driver: memory and blkdebug-style injection under
//! any executor; with the `tokio` feature, raw files that serve the page
//! cache from the task itself and any blocking child on tokio's blocking
//! pool. Any [`crate::AsyncChild`] of your own will do too.

#[cfg(feature = "tokio")]
mod blocking;
#[cfg(feature = "tokio")]
mod delay;
#[cfg(feature = "tokio")]
mod file;
pub mod inject;
#[cfg(feature = "tokio")]
mod io_pool;
mod mem;

#[cfg(feature = "tokio")]
pub use blocking::Blocking;
#[cfg(feature = "tokio")]
pub use delay::DelayChild;
#[cfg(feature = "tokio")]
pub use file::{IoMode, TokioFileChild};
pub use inject::InjectChild;
pub use mem::MemChild;
