//! The driver kit: what every quorum driver does alike, once.
//!
//! The core (`quorum-proto`) decides; a driver moves bytes and time. Much of
//! moving bytes is the same whether a driver waits on threads, on futures or
//! on a simulated clock — this crate is that part, so the drivers
//! (`quorum-sync`, `quorum-tokio`, `quorum-sim`) are only what is particular
//! to their way of waiting, and none depends on another.
#![forbid(unsafe_code)]

mod child;
pub mod done;
mod error;
mod file;
mod inject;
#[cfg(feature = "testing")]
pub mod testing;
pub mod zeroes;

pub use child::{Child, errno};
pub use done::Done;
pub use error::{DeviceError, EventSink, ReadError};
pub use file::{DIRECT_ALIGN, RawFile, read_exact_at, write_all_at};
pub use inject::{InjectEvent, InjectRule, InjectState};
pub use quorum_proto::Errno;
