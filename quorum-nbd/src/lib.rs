//! The Network Block Device protocol, as `quorum serve` and NBD children
//! speak it: the fixed newstyle handshake and the transmission phase with
//! simple replies, written from the protocol document
//! (NetworkBlockDevice/nbd `doc/proto.md`).
//!
//! - [`wire`]: constants, and the encoding and decoding of every message
//!   this crate sends or accepts. No I/O.
//! - [`server`]: the server's handshake as a state machine fed with bytes
//!   ([`server::Handshake`]), and the checks a request passes before it
//!   reaches the device ([`server::check`]). No I/O.
//! - [`blocking`]: one server connection driven over a stream, with the
//!   device behind a [`blocking::Backend`].
//! - [`client`]: a blocking client over any `Read + Write` stream, and
//!   [`NbdChild`], an NBD export as a [`quorum_driver::Child`] that reconnects
//!   after an error.

pub mod blocking;
pub mod client;
pub mod server;
pub mod wire;

pub use client::{NbdAddr, NbdChild};
