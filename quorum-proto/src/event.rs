//! Events as typed values, and their QMP JSON rendering (R-EVENT).
//!
//! The core emits every event (R-EVENT-5); rate limiting is a front end's
//! business. Rendering needs no allocator: it writes into any
//! [`core::fmt::Write`], asking a [`NodeNames`] for the names the core does
//! not keep.

use core::fmt::{self, Write};

use crate::errno::Errno;
use crate::membership::ChildId;

/// The operation a `QUORUM_REPORT_BAD` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpType {
    /// A read failed or returned a losing version.
    Read,
    /// A write or write-zeroes failed.
    Write,
    /// A flush failed.
    Flush,
}

impl OpType {
    /// The QAPI `QuorumOpType` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OpType::Read => "read",
            OpType::Write => "write",
            OpType::Flush => "flush",
        }
    }
}

/// A quorum event, as QEMU's `QUORUM_REPORT_BAD` and `QUORUM_FAILURE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// R-EVENT-1: one child failed or was outvoted.
    ReportBad {
        /// What the child was doing.
        op: OpType,
        /// R-EVENT-3: the I/O error, `None` for a content mismatch.
        error: Option<Errno>,
        /// The child; its node name comes from [`NodeNames`].
        child: ChildId,
        /// First sector of the request (`offset / 512`; 0 for flushes).
        sector_num: u64,
        /// Sectors the request touches (0 for flushes).
        sectors_count: u64,
    },
    /// R-EVENT-2: the request could not reach the threshold.
    Failure {
        /// First sector of the request.
        sector_num: u64,
        /// Sectors the request touches.
        sectors_count: u64,
    },
}

/// Wall-clock time of an event, as QMP's `timestamp` member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: u64,
    /// Microseconds within the second.
    pub microseconds: u32,
}

/// Supplies the names an event carries: the device's own (`reference`) and each
/// child's node name. The core only knows children by [`ChildId`].
pub trait NodeNames {
    /// The quorum device's node name (QEMU's `reference`).
    fn write_device(&self, w: &mut dyn Write) -> fmt::Result;
    /// The node name of `child`.
    fn write_child(&self, child: ChildId, w: &mut dyn Write) -> fmt::Result;
}

/// Names children `children.N`, as the `quorum` command line does by default.
#[derive(Clone, Copy, Debug)]
pub struct DefaultNames<'a> {
    /// The device's node name.
    pub device: &'a str,
}

impl NodeNames for DefaultNames<'_> {
    fn write_device(&self, w: &mut dyn Write) -> fmt::Result {
        w.write_str(self.device)
    }
    fn write_child(&self, child: ChildId, w: &mut dyn Write) -> fmt::Result {
        write!(w, "{child}")
    }
}

impl Event {
    /// The QMP event name.
    pub const fn name(&self) -> &'static str {
        match self {
            Event::ReportBad { .. } => "QUORUM_REPORT_BAD",
            Event::Failure { .. } => "QUORUM_FAILURE",
        }
    }

    /// Writes the event as one QMP JSON object (no newline), R-EVENT-4:
    /// `{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": U}}`.
    ///
    /// `data` members come in QAPI declaration order; `error` is present only
    /// for I/O errors (R-EVENT-3).
    pub fn write_qmp<W: Write + ?Sized>(
        &self,
        w: &mut W,
        names: &dyn NodeNames,
        ts: Timestamp,
    ) -> fmt::Result {
        write!(w, "{{\"event\": \"{}\", \"data\": {{", self.name())?;
        match *self {
            Event::ReportBad {
                op,
                error,
                child,
                sector_num,
                sectors_count,
            } => {
                write!(w, "\"type\": \"{}\", ", op.as_str())?;
                if let Some(e) = error {
                    w.write_str("\"error\": \"")?;
                    write!(JsonEscape(&mut *w), "{e}")?;
                    w.write_str("\", ")?;
                }
                w.write_str("\"node-name\": \"")?;
                names.write_child(child, &mut JsonEscape(&mut *w))?;
                write!(
                    w,
                    "\", \"sector-num\": {sector_num}, \"sectors-count\": {sectors_count}"
                )?;
            }
            Event::Failure {
                sector_num,
                sectors_count,
            } => {
                w.write_str("\"reference\": \"")?;
                names.write_device(&mut JsonEscape(&mut *w))?;
                write!(
                    w,
                    "\", \"sector-num\": {sector_num}, \"sectors-count\": {sectors_count}"
                )?;
            }
        }
        write!(
            w,
            "}}, \"timestamp\": {{\"seconds\": {}, \"microseconds\": {}}}}}",
            ts.seconds, ts.microseconds
        )
    }
}

/// Escapes what passes through it as the inside of a JSON string.
struct JsonEscape<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for JsonEscape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let esc: Option<&str> = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                c if (c as u32) < 0x20 => None,
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            match esc {
                Some(e) => self.0.write_str(e)?,
                None => write!(self.0, "\\u{:04x}", c as u32)?,
            }
            start = i + c.len_utf8();
        }
        self.0.write_str(&s[start..])
    }
}

/// `(sector_num, sectors_count)` of a request, as QEMU computes them.
pub(crate) fn sectors(offset: u64, len: u64) -> (u64, u64) {
    const SECTOR: u64 = 512;
    let start = offset / SECTOR;
    // offset + len is checked not to overflow when the request is submitted.
    let end = offset.saturating_add(len).div_ceil(SECTOR);
    (start, end - start)
}
