//! The quorum core driven from async tasks, under any executor.
//!
//! [`AsyncDevice`] turns N [`AsyncChild`]ren into one block device with
//! QEMU's quorum semantics (`SPEC.md`): many tasks may call it at once, the
//! child operations of one request run concurrently (a request takes as long
//! as its slowest child), events arrive as a [`Stream`](futures_util::Stream)
//! ([`AsyncDevice::events`]) in the order the core emitted them, and
//! membership changes wait for the requests in flight to drain (R-MEMBER-4).
//!
//! The driving code uses only `std` and the `futures` crates — no executor,
//! no reactor, no timer — so it runs under tokio, smol, async-std or your own
//! `block_on` (its tests run it under all three). Children decide what they
//! need: [`MemChild`] and [`InjectChild`] need nothing; with the `tokio`
//! feature (default) [`TokioFileChild`] serves raw image files and
//! [`Blocking`] any blocking `quorum_driver::Child`, without ever blocking the
//! runtime (unless asked to: [`IoMode::Inline`]).
//!
//! Speed: a request whose child operations all finish in their first `poll`
//! — [`TokioFileChild`] reads served by the page cache, [`MemChild`] — runs
//! start to end in one `poll` of the caller's future, with two short holds of
//! the device's lock and no wake-up; read buffers are recycled between
//! requests. `examples/tokio_bench.rs` measures it on real files.
//!
//! Like `quorum-sync`, the completions of one round of child operations are
//! fed to the core in slot order, so a scenario gives the same results and
//! the same events through this driver, `quorum-sync`, and the core driven
//! directly (`tests/agreement.rs` proves it). The exception, as there, is
//! early quorum (opt-in, [`quorum_proto::Config::early_quorum`]): such reads
//! are answered once `threshold` children agree, their stragglers judged in
//! a task of their own ([`AsyncDevice::set_spawner`], or the current tokio
//! runtime), and their results reported in completion order.
//!
//! ```
//! use std::sync::Arc;
//! use futures_util::StreamExt;
//! use quorum_proto::{ChildId, Config, Event, OpType};
//! use quorum_tokio::{AsyncChild, AsyncDevice, MemChild};
//!
//! # smol::block_on(async {
//! let mems: Vec<Arc<MemChild>> = (0..3).map(|_| Arc::new(MemChild::new(1 << 16))).collect();
//! let kids: Vec<Arc<dyn AsyncChild>> = mems.iter().map(|m| m.clone() as _).collect();
//! let config = Config::new(3, 2).with_rewrite_corrupted(true);
//! let dev = AsyncDevice::new(config, kids).unwrap();
//! let mut events = dev.events();
//!
//! dev.write(4096, vec![0xab; 512]).await.unwrap();
//! mems[2].poke(4096, &[0; 512]); // corrupt one replica behind the device's back
//! assert_eq!(dev.read(4096, 512).await.unwrap(), vec![0xab; 512]); // outvoted
//!
//! let (_, event) = events.next().await.unwrap();
//! assert!(matches!(
//!     event,
//!     Event::ReportBad { op: OpType::Read, error: None, child: ChildId(2), .. }
//! ));
//! assert_eq!(mems[2].contents(), mems[0].contents()); // rewritten
//! # });
//! ```

mod child;
mod children;
mod device;

pub use child::{AsyncChild, ChildFuture};
#[cfg(feature = "tokio")]
pub use children::{Blocking, DelayChild, IoMode, TokioFileChild};
pub use children::{InjectChild, MemChild, inject};
pub use device::{AsyncDevice, DeviceError, EventSink, EventStream, Orphans, ReadError, Spawner};
pub use quorum_driver::{InjectEvent, InjectRule};
