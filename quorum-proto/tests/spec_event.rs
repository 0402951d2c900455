//! SPEC.md R-EVENT-1..5: event shapes, sector math, QMP JSON text, strerror
//! texts, and "the library emits every event".

mod spec_util;
mod support;

use quorum_proto::{
    ChildId, Config, DefaultNames, Errno, Event, NodeNames, OpType, Outcome, ReadPattern, Request,
    RequestId, Timestamp,
};
use spec_util::{failure, pattern, rb, read_ok};
use support::Mem;

/// R-EVENT-1: a failing read is reported with type, error, child and the
/// request's sectors (`offset / 512`, `ceil((offset + len) / 512) - start`).
#[test]
fn r_event_1_sector_math() {
    // (offset, len) -> (sector_num, sectors_count)
    let table: [(u64, u64, u64, u64); 12] = [
        (0, 512, 0, 1),
        (0, 513, 0, 2),
        (0, 1, 0, 1),
        (511, 1, 0, 1),
        (511, 2, 0, 2),
        (512, 512, 1, 1),
        (1000, 100, 1, 2),
        (1000, 24, 1, 1),
        (1024, 1536, 2, 3),
        (4096, 4096, 8, 8),
        (1000, 0, 1, 1),
        (0, 0, 0, 0),
    ];
    for (offset, len, sn, sc) in table {
        let mut m = Mem::uniform(Config::new(2, 1), 8192, 7);
        m.faults.read.insert(ChildId(1), Errno::EIO);
        let (o, _) = m.read(offset, len);
        assert_eq!(o, read_ok(0, 0));
        assert_eq!(
            m.events_of(RequestId(1)),
            vec![rb(OpType::Read, Some(Errno::EIO), 1, sn, sc)],
            "offset {offset} len {len}"
        );
    }
}

/// R-EVENT-1: sector math far from zero (no overflow, no truncation).
#[test]
fn r_event_1_large_offsets() {
    let offset = (1u64 << 40) + 1000;
    let mut q: quorum_proto::Quorum = quorum_proto::Quorum::new(Config::new(1, 1)).unwrap();
    let r = spec_util::run(
        &mut q,
        1,
        Request::Write { offset, len: 100 },
        &[],
        &[Err(Errno::ENOSPC)],
    );
    let sn = offset / 512;
    assert_eq!(
        r.events(),
        vec![
            rb(OpType::Write, Some(Errno::ENOSPC), 0, sn, 2),
            failure(sn, 2)
        ]
    );
    // The largest valid range: ends at 2^63 - 1.
    let offset = i64::MAX as u64 - 100;
    let r = spec_util::run(
        &mut q,
        2,
        Request::Write { offset, len: 100 },
        &[],
        &[Err(Errno::EIO)],
    );
    let sn = offset / 512;
    let end = (i64::MAX as u64).div_ceil(512);
    assert_eq!(
        r.events(),
        vec![
            rb(OpType::Write, Some(Errno::EIO), 0, sn, end - sn),
            failure(sn, end - sn)
        ]
    );
}

/// R-EVENT-1, R-EVENT-3: a mismatch report carries the outvoted child and no
/// error; an I/O error report carries the strerror text.
#[test]
fn r_event_1_3_mismatch_and_error_reports() {
    let mut disks = pattern("A A B A", 4096);
    disks.push(vec![0xaa; 4096]);
    let mut m = Mem::new(Config::new(5, 3), disks);
    m.faults.read.insert(ChildId(3), Errno::ENOSPC);
    let (o, d) = m.read(1000, 100);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0xaa; 100]);
    assert_eq!(
        m.events_of(RequestId(1)),
        vec![
            rb(OpType::Read, Some(Errno::ENOSPC), 3, 1, 2),
            rb(OpType::Read, None, 2, 1, 2),
        ]
    );
    assert_eq!(
        m.qmp(),
        concat!(
            "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"read\", \"error\": \"No space left on device\", \"node-name\": \"children.3\", \"sector-num\": 1, \"sectors-count\": 2}, \"timestamp\": {\"seconds\": 0, \"microseconds\": 0}}\n",
            "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"read\", \"node-name\": \"children.2\", \"sector-num\": 1, \"sectors-count\": 2}, \"timestamp\": {\"seconds\": 0, \"microseconds\": 0}}\n",
        )
    );
}

/// R-EVENT-2: a failure names the device (`reference`) and the request's sectors.
#[test]
fn r_event_2_failure() {
    let mut m = Mem::uniform(Config::new(3, 2), 8192, 0);
    m.faults.write.insert(ChildId(0), Errno::EIO);
    m.faults.write.insert(ChildId(2), Errno::EIO);
    assert_eq!(m.write(1000, &[1; 100]), Outcome::Failed(Errno::EIO));
    assert_eq!(
        m.events_of(RequestId(1)),
        vec![
            rb(OpType::Write, Some(Errno::EIO), 0, 1, 2),
            rb(OpType::Write, Some(Errno::EIO), 2, 1, 2),
            failure(1, 2),
        ]
    );
    let names = DefaultNames {
        device: "my-quorum",
    };
    let mut s = String::new();
    failure(1, 2)
        .write_qmp(&mut s, &names, Timestamp::default())
        .unwrap();
    assert_eq!(
        s,
        "{\"event\": \"QUORUM_FAILURE\", \"data\": {\"reference\": \"my-quorum\", \"sector-num\": 1, \"sectors-count\": 2}, \"timestamp\": {\"seconds\": 0, \"microseconds\": 0}}"
    );
}

/// R-EVENT-3: `error` is the strerror text of the errno, present only for I/O errors.
#[test]
fn r_event_3_error_field() {
    let names = DefaultNames { device: "q" };
    for (e, text) in [
        (Errno::EIO, "Input/output error"),
        (Errno::ENOSPC, "No space left on device"),
        (Errno::EPERM, "Operation not permitted"),
        (Errno(41), "Unknown error 41"),
    ] {
        let mut s = String::new();
        rb(OpType::Write, Some(e), 0, 0, 1)
            .write_qmp(&mut s, &names, Timestamp::default())
            .unwrap();
        assert!(
            s.contains(&format!(
                "\"type\": \"write\", \"error\": \"{text}\", \"node-name\""
            )),
            "{s}"
        );
    }
    let mut s = String::new();
    rb(OpType::Read, None, 0, 0, 1)
        .write_qmp(&mut s, &names, Timestamp::default())
        .unwrap();
    assert!(!s.contains("error"), "{s}");
}

/// R-EVENT-4: the exact QMP wire text of both event kinds.
#[test]
fn r_event_4_exact_qmp_json() {
    let names = DefaultNames { device: "quorum0" };
    let ts = Timestamp {
        seconds: 1_700_000_123,
        microseconds: 45_678,
    };
    let cases: [(Event, &str); 5] = [
        (
            rb(OpType::Read, Some(Errno::EIO), 2, 1, 2),
            "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"read\", \"error\": \"Input/output error\", \"node-name\": \"children.2\", \"sector-num\": 1, \"sectors-count\": 2}, \"timestamp\": {\"seconds\": 1700000123, \"microseconds\": 45678}}",
        ),
        (
            rb(OpType::Read, None, 0, 8, 8),
            "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"read\", \"node-name\": \"children.0\", \"sector-num\": 8, \"sectors-count\": 8}, \"timestamp\": {\"seconds\": 1700000123, \"microseconds\": 45678}}",
        ),
        (
            rb(OpType::Write, Some(Errno::ENOSPC), 11, 0, 1),
            "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"write\", \"error\": \"No space left on device\", \"node-name\": \"children.11\", \"sector-num\": 0, \"sectors-count\": 1}, \"timestamp\": {\"seconds\": 1700000123, \"microseconds\": 45678}}",
        ),
        (
            rb(OpType::Flush, Some(Errno::EIO), 3, 0, 0),
            "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"flush\", \"error\": \"Input/output error\", \"node-name\": \"children.3\", \"sector-num\": 0, \"sectors-count\": 0}, \"timestamp\": {\"seconds\": 1700000123, \"microseconds\": 45678}}",
        ),
        (
            failure(123_456_789_012, 7),
            "{\"event\": \"QUORUM_FAILURE\", \"data\": {\"reference\": \"quorum0\", \"sector-num\": 123456789012, \"sectors-count\": 7}, \"timestamp\": {\"seconds\": 1700000123, \"microseconds\": 45678}}",
        ),
    ];
    for (e, want) in cases {
        let mut s = String::new();
        e.write_qmp(&mut s, &names, ts).unwrap();
        assert_eq!(s, want);
    }
    assert_eq!(rb(OpType::Read, None, 0, 0, 0).name(), "QUORUM_REPORT_BAD");
    assert_eq!(failure(0, 0).name(), "QUORUM_FAILURE");
    assert_eq!(OpType::Read.as_str(), "read");
    assert_eq!(OpType::Write.as_str(), "write");
    assert_eq!(OpType::Flush.as_str(), "flush");
    assert_eq!(ChildId(7).to_string(), "children.7");
}

/// Names supplied by the front end, with characters JSON must escape.
struct Odd;

impl NodeNames for Odd {
    fn write_device(&self, w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        w.write_str("dev\"\\\n\r\t\u{1}\u{1f} é/")
    }
    fn write_child(&self, child: ChildId, w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        write!(w, "disk\"{}\\", child.0)
    }
}

/// R-EVENT-4: node names go through JSON string escaping.
#[test]
fn r_event_4_names_are_escaped() {
    let mut s = String::new();
    failure(0, 1)
        .write_qmp(&mut s, &Odd, Timestamp::default())
        .unwrap();
    assert_eq!(
        s,
        "{\"event\": \"QUORUM_FAILURE\", \"data\": {\"reference\": \"dev\\\"\\\\\\n\\r\\t\\u0001\\u001f é/\", \"sector-num\": 0, \"sectors-count\": 1}, \"timestamp\": {\"seconds\": 0, \"microseconds\": 0}}"
    );
    let mut s = String::new();
    rb(OpType::Read, Some(Errno::EIO), 5, 0, 1)
        .write_qmp(&mut s, &Odd, Timestamp::default())
        .unwrap();
    assert_eq!(
        s,
        "{\"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"type\": \"read\", \"error\": \"Input/output error\", \"node-name\": \"disk\\\"5\\\\\", \"sector-num\": 0, \"sectors-count\": 1}, \"timestamp\": {\"seconds\": 0, \"microseconds\": 0}}"
    );
    // Plain names pass unchanged, into any fmt::Write (here a dyn one).
    let mut s = String::new();
    let w: &mut dyn std::fmt::Write = &mut s;
    failure(0, 1)
        .write_qmp(w, &DefaultNames { device: "a b" }, Timestamp::default())
        .unwrap();
    assert!(s.contains("\"reference\": \"a b\""), "{s}");
    let mut t = String::new();
    DefaultNames { device: "x" }
        .write_child(ChildId(3), &mut t)
        .unwrap();
    DefaultNames { device: "x" }.write_device(&mut t).unwrap();
    assert_eq!(t, "children.3x");
}

/// R-EVENT-5: every event is emitted, nothing is rate-limited or merged:
/// the same child failing on consecutive requests is reported every time.
#[test]
fn r_event_5_no_rate_limit() {
    let mut m = Mem::uniform(Config::new(3, 2), 4096, 0);
    m.faults.read.insert(ChildId(1), Errno::EIO);
    m.faults.write.insert(ChildId(1), Errno::EIO);
    m.faults.flush.insert(ChildId(1), Errno::EIO);
    for _ in 0..50 {
        let (o, _) = m.read(0, 512);
        assert_eq!(o, read_ok(0, 0));
        assert_eq!(m.write(512, &[1; 512]), Outcome::Done);
        assert_eq!(m.flush(), Outcome::Done);
    }
    assert_eq!(m.events().len(), 150);
    for (i, (id, e)) in m.events().iter().enumerate() {
        assert_eq!(id.0, i as u64 + 1);
        let want = match i % 3 {
            0 => rb(OpType::Read, Some(Errno::EIO), 1, 0, 1),
            1 => rb(OpType::Write, Some(Errno::EIO), 1, 1, 1),
            _ => rb(OpType::Flush, Some(Errno::EIO), 1, 0, 0),
        };
        assert_eq!(*e, want);
    }
    // And within one request, several identical reports are all emitted.
    let mut m = Mem::new(Config::new(4, 1), pattern("A B B B", 512));
    let (o, _) = m.read(0, 512);
    assert_eq!(o, read_ok(1, 1));
    assert_eq!(m.events().len(), 1);
    let mut m = Mem::new(Config::new(4, 1), pattern("A A A B", 512));
    let (o, _) = m.read(0, 512);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(
        m.events(),
        vec![(RequestId(1), rb(OpType::Read, None, 3, 0, 1))]
    );
    let mut m = Mem::new(Config::new(4, 1), pattern("A B B B", 512));
    m.order = support::Order::Reverse;
    let (_, _) = m.read(0, 512);
    assert_eq!(
        m.events(),
        vec![(RequestId(1), rb(OpType::Read, None, 0, 0, 1))]
    );
    // Fifo reports too, and every one of its failures.
    let cfg = Config::new(4, 1).with_read_pattern(ReadPattern::Fifo);
    let mut m = Mem::uniform(cfg, 512, 0);
    for c in 0..3 {
        m.faults.read.insert(ChildId(c), Errno::EIO);
    }
    let (o, _) = m.read(0, 512);
    assert_eq!(o, read_ok(3, 3));
    assert_eq!(m.events().len(), 3);
}

/// Errno Display is glibc's strerror, byte for byte (checked against the
/// host's libc through `std`, which formats OS errors with `strerror_r`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn errno_display_is_glibc_strerror() {
    for n in -3..=300 {
        let host = std::io::Error::from_raw_os_error(n).to_string();
        let want = host
            .strip_suffix(&format!(" (os error {n})"))
            .expect("std's format");
        assert_eq!(Errno(n).to_string(), want, "errno {n}");
        match Errno(n).message() {
            Some(m) => assert_eq!(m, want),
            None => assert_eq!(format!("Unknown error {n}"), want),
        }
    }
}

/// Errno texts and numbers, independent of the host.
#[test]
fn errno_texts() {
    let table: [(Errno, i32, &str); 12] = [
        (Errno::EPERM, 1, "Operation not permitted"),
        (Errno::ENOENT, 2, "No such file or directory"),
        (Errno::EIO, 5, "Input/output error"),
        (Errno::EAGAIN, 11, "Resource temporarily unavailable"),
        (Errno::EINVAL, 22, "Invalid argument"),
        (Errno::ENOSPC, 28, "No space left on device"),
        (Errno::EROFS, 30, "Read-only file system"),
        (Errno::ENOTSUP, 95, "Operation not supported"),
        (Errno::ETIMEDOUT, 110, "Connection timed out"),
        (Errno::ECANCELED, 125, "Operation canceled"),
        (Errno(0), 0, "Success"),
        (Errno(133), 133, "Memory page has hardware error"),
    ];
    for (e, n, text) in table {
        assert_eq!(e.get(), n);
        assert_eq!(e.0, n);
        assert_eq!(e.to_string(), text);
        assert_eq!(e.message(), Some(text));
    }
    for n in [-1, 41, 58, 134, 4096, i32::MAX, i32::MIN] {
        assert_eq!(Errno(n).message(), None);
        assert_eq!(Errno(n).to_string(), format!("Unknown error {n}"));
    }
}

/// `From<std::io::Error>`: the OS number when there is one, else the kind's
/// closest errno, else EIO.
#[test]
fn errno_from_io_error() {
    use std::io::{Error, ErrorKind as K};
    assert_eq!(Errno::from(Error::from_raw_os_error(28)), Errno::ENOSPC);
    assert_eq!(Errno::from(&Error::from_raw_os_error(1)), Errno::EPERM);
    assert_eq!(Errno::from(Error::from_raw_os_error(999)), Errno(999));
    let kinds = [
        (K::NotFound, Errno::ENOENT),
        (K::PermissionDenied, Errno::EACCES),
        (K::ConnectionRefused, Errno::ECONNREFUSED),
        (K::ConnectionReset, Errno::ECONNRESET),
        (K::NotConnected, Errno::ENOTCONN),
        (K::BrokenPipe, Errno::EPIPE),
        (K::AlreadyExists, Errno::EEXIST),
        (K::WouldBlock, Errno::EAGAIN),
        (K::InvalidInput, Errno::EINVAL),
        (K::InvalidData, Errno::EINVAL),
        (K::TimedOut, Errno::ETIMEDOUT),
        (K::Interrupted, Errno::EINTR),
        (K::Unsupported, Errno::ENOTSUP),
        (K::OutOfMemory, Errno::ENOMEM),
        (K::UnexpectedEof, Errno::EIO),
        (K::Other, Errno::EIO),
        (K::WriteZero, Errno::EIO),
    ];
    for (k, e) in kinds {
        assert_eq!(Errno::from(Error::from(k)), e, "{k:?}");
        assert_eq!(Errno::from(&Error::new(k, "x")), e, "{k:?}");
    }
}
