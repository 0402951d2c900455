//! The quorum core driven from blocking threads.
//!
//! [`Device`] turns N [`Child`]ren — raw image files ([`FileChild`]), or
//! anything with positional I/O — into one block device with QEMU's quorum
//! semantics. Many threads may call it at once. Fast children (the page
//! cache) are served back to back by the caller with one spinning helper
//! assisting, which beats any thread handoff; slow ones in parallel, so a
//! request takes as long as its slowest child — or, with early quorum, as its
//! `threshold`-th fastest ([`quorum_proto::Config::early_quorum`]).
//!
//! ```
//! use std::sync::Arc;
//! use quorum_proto::Config;
//! use quorum_sync::{Child, Device, MemChild};
//!
//! let kids: Vec<Arc<dyn Child>> = (0..3).map(|_| Arc::new(MemChild::new(1 << 16)) as _).collect();
//! let dev = Device::new(Config::new(3, 2), kids.clone()).unwrap();
//! dev.write(4096, &[0xab; 512]).unwrap();
//! kids[2].write_at(&[0; 512], 4096).unwrap(); // corrupt one replica behind the device's back
//! let mut buf = [0u8; 512];
//! dev.read(4096, &mut buf).unwrap();
//! assert_eq!(buf, [0xab; 512]); // outvoted
//! ```

mod children;
mod device;

pub use children::{DelayChild, FileChild, InjectChild, MemChild};
pub use device::{Device, DeviceError, EventSink, ReadError};
/// Sync tracking's map, its file and the resync job (SPEC R-SYNC), from the kit.
pub use quorum_driver::sync;
pub use quorum_driver::{Child, DIRECT_ALIGN, InjectEvent, InjectRule, InjectState};
