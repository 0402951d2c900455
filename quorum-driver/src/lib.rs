//! The driver kit: what every quorum driver does alike, once.
//!
//! The core (`quorum-proto`) decides; a driver moves bytes and time. Much of
//! moving bytes is the same whether a driver waits on threads, on futures or
//! on a simulated clock — this crate is that part, so the drivers
//! (`quorum-sync`, `quorum-tokio`, `quorum-sim`) are only what is particular
//! to their way of waiting, and none depends on another.
#![forbid(unsafe_code)]

mod bufs;
mod child;
mod children;
pub mod done;
pub mod engine;
mod error;
mod file;
mod inject;
mod latency;
mod op;
pub mod pool;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod zeroes;

pub use bufs::{ReadSet, Spare};
pub use child::{Child, errno};
pub use children::{Delayed, MemChild};
pub use done::Done;
pub use engine::{Core, Engine, Guarded, Locked, MapJob, Progress, Submit, Waiter};
pub use error::{DeviceError, EventSink, ReadError};
pub use file::{DIRECT_ALIGN, RawFile, read_exact_at, write_all_at};
pub use inject::{InjectEvent, InjectRule, InjectState, Injected};
pub use latency::{Ewma, Latencies};
pub use op::{BlockingOp, Op, OpKind, Shared};
pub use pool::{Pool, PoolConfig, TIMED_MAX, Work, solo};
pub use quorum_proto::Errno;
