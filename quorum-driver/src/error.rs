//! What a driver's caller gets back: errors and the event sink, the same
//! types for every driver, so code can switch drivers without changing how
//! it handles results and events.

use quorum_proto::{ConfigError, Errno, Event, MemberError, RequestId};

/// Receives every event, in order, from whichever thread or task caused it.
/// Called with the device's lock held: it must not call back into the device.
pub type EventSink = Box<dyn FnMut(RequestId, &Event) + Send>;

/// Why a read did not return data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The request failed with this error (R-READ-3, R-READ-5, R-FIFO-2).
    Io(Errno),
    /// blkverify mode: the children differ at this device offset (R-READ-8).
    ContentsMismatch {
        /// Device offset of the first differing byte.
        offset: u64,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::ContentsMismatch { offset } => {
                write!(f, "contents mismatch at offset {offset}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// Why a device could not be opened or a membership change was refused.
#[derive(Debug)]
pub enum DeviceError {
    /// The configuration was refused (QEMU's text).
    Config(ConfigError),
    /// The number of children does not match the configuration.
    ChildCount {
        /// Children in the configuration.
        expected: usize,
        /// Children given.
        got: usize,
    },
    /// The membership change was refused (QEMU's text).
    Member(MemberError),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Config(e) => write!(f, "{e}"),
            DeviceError::ChildCount { expected, got } => {
                write!(
                    f,
                    "the configuration has {expected} children, {got} were given"
                )
            }
            DeviceError::Member(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DeviceError {}
