//! QMP — QEMU's machine protocol — for a quorum device (SPEC R-QMP), as
//! state machines that do no I/O: a driver (`quorum serve --qmp`) reads
//! lines from a socket and hands them in, and writes out what comes back.
//!
//! - [`message`]: a line parsed into a command with QEMU's checks and
//!   texts; replies and errors built as QEMU builds them.
//! - [`json`]: JSON written as QEMU writes it, byte for byte.
//! - [`schema`]: arguments checked as QEMU's QAPI visitor checks them.
//! - [`throttle`]: QEMU's event rate limits (R-QMP-3).

pub mod event;
pub mod json;
pub mod manager;
pub mod message;
pub mod node;
pub mod schema;
pub mod session;
pub mod stream;
pub mod throttle;
