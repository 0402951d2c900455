//! QEMU's `quorum` block filter as a `no_std`, sans-IO state machine.
//!
//! A quorum device makes N replica disks ("children") behave as one: every
//! read is voted across the children, every write goes to all of them, a
//! minority that fails or returns different bytes is reported (and can be
//! rewritten), and the device fails only when no quorum is left. The rules
//! are those of `SPEC.md` (R-CFG, R-READ, R-FIFO, R-WRITE, R-FLUSH, R-VOTE,
//! R-MEMBER, R-EVENT), which follow QEMU 10, and R-CANCEL.
//!
//! This crate decides; it does no I/O, keeps no clock, draws no random
//! numbers and allocates nothing. A driver owns the children, the buffers and
//! time:
//!
//! 1. [`Quorum::submit`] a [`Request`] under an id of your choosing;
//! 2. drain [`Quorum::poll_action`] and carry out each [`Action`]: child
//!    reads, writes, flushes and rewrites, [`Event`]s to publish, and one
//!    [`Action::Complete`] per request;
//! 3. feed each child operation's result back with [`Quorum::handle_read`],
//!    [`Quorum::handle_write`], [`Quorum::handle_flush`] or
//!    [`Quorum::handle_rewrite`], in any order, and go to 2.
//!
//! A caller that gives up on a request (a dropped future, a client gone)
//! [`Quorum::cancel`]s it: it completes at once with `ECANCELED` and says
//! nothing about any child (SPEC R-CANCEL-1), while the child operations it
//! had issued are still completed as usual and keep ordering against
//! overlapping writes until they are (R-CANCEL-2). Before a membership
//! change a driver drains the device: [`Quorum::start_drain`] refuses new
//! requests ([`Error::Draining`]) until [`Quorum::end_drain`], and
//! [`Quorum::is_drained`] says when nothing is left in flight (R-MEMBER-4).
//!
//! Buffers stay with the driver: a read's result names the slot whose buffer
//! won ([`Outcome::Read`]), and the core only borrows buffers while it votes.
//! Misuse (an unknown id, a completion nobody asked for) is an [`Error`]
//! value and changes nothing.
//!
//! # Example
//!
//! Three in-memory children, one silently corrupted; the vote outvotes it,
//! reports it, and with `rewrite-corrupted` repairs it.
//!
//! ```
//! use quorum_proto::{Action, Config, DefaultNames, Outcome, Quorum, Request, RequestId, Timestamp};
//!
//! let mut children = vec![vec![0xabu8; 4096]; 3];
//! children[1][100] ^= 0x01; // silent corruption on children.1
//!
//! let config = Config::new(3, 2).with_rewrite_corrupted(true);
//! let mut q: Quorum = Quorum::new(config).expect("valid configuration");
//! let id = RequestId(1);
//! q.submit(id, Request::Read { offset: 0, len: 4096 }).expect("room for a request");
//!
//! // One buffer per slot, owned by the driver.
//! let mut bufs = vec![vec![0u8; 4096]; 3];
//! let mut events = String::new();
//! let mut result = None;
//! while let Some(action) = q.poll_action() {
//!     match action {
//!         Action::Read { id, slot, child, offset, len } => {
//!             let (o, l) = (offset as usize, len as usize);
//!             bufs[slot].copy_from_slice(&children[child.0 as usize][o..o + l]);
//!             q.handle_read(id, slot, Ok(()), bufs.as_slice()).expect("expected completion");
//!         }
//!         Action::Rewrite { id, slot, child, source, offset, len } => {
//!             let (o, l) = (offset as usize, len as usize);
//!             let data = bufs[source].clone();
//!             children[child.0 as usize][o..o + l].copy_from_slice(&data);
//!             q.handle_rewrite(id, slot, Ok(())).expect("expected completion");
//!         }
//!         Action::Event { event, .. } => {
//!             let names = DefaultNames { device: "quorum" };
//!             event.write_qmp(&mut events, &names, Timestamp::default()).unwrap();
//!             events.push('\n');
//!         }
//!         Action::Complete { outcome, .. } => result = Some(outcome),
//!         other => unreachable!("a read issues no {other:?}"),
//!     }
//! }
//!
//! let Some(Outcome::Read { slot, .. }) = result else { panic!("read failed: {result:?}") };
//! assert_eq!(bufs[slot], vec![0xab; 4096]);
//! assert_eq!(
//!     events,
//!     "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"read\", \"node-name\": \
//!      \"children.1\", \"sector-num\": 0, \"sectors-count\": 8}, \"timestamp\": \
//!      {\"seconds\": 0, \"microseconds\": 0}}\n"
//! );
//! assert_eq!(children[1], children[0]); // repaired
//! ```
//!
//! # Capacity
//!
//! [`Quorum`] takes three const parameters: the most children `C` (≤ 64),
//! requests in flight `R`, and queued actions `A`. Each request reserves room
//! for every action it can produce when it is submitted, so once accepted a
//! request always runs to completion; when there is no room, `submit` says
//! [`Error::Busy`].
//!
//! # Features
//!
//! `std` (default) only adds `From<std::io::Error> for Errno`, `alloc` (part of
//! `std`) only [`Quorum::new_boxed`]. Without them the crate needs neither
//! `std` nor an allocator.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::panic, clippy::unwrap_used, clippy::expect_used)
)]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod config;
mod errno;
mod event;
mod length;
mod membership;
mod quorum;
mod read;
mod request;
pub mod sync;
pub mod vote;

pub use config::{Config, ConfigError, ReadPattern};
pub use errno::Errno;
pub use event::{DefaultNames, Event, NodeNames, OpType, Timestamp};
pub use length::device_length;
pub use membership::{ChildId, MemberError};
pub use quorum::Quorum;
pub use request::{
    Action, ChildOp, Error, Extent, NoBuffers, Outcome, ReadBuffers, Request, RequestId,
};
