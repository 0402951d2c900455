//! Events on a monitor, as QEMU sends them: `{"timestamp": {"seconds",
//! "microseconds"}, "event", "data"}` (QEMU's member order, which is not
//! SPEC R-EVENT-4's file order), and the quorum events' data in QEMU's
//! order too — `QUORUM_REPORT_BAD`: `node-name`, `sectors-count`,
//! `sector-num`, `type`, then `error` for I/O errors; `QUORUM_FAILURE`:
//! `reference`, `sectors-count`, `sector-num`.

use quorum_proto::{Event, Timestamp};
use serde_json::{Map, Value, json};

use crate::json::to_line;

/// One event, ready to send: its line (with `\r\n`) and its throttling
/// key and period ([`crate::throttle`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The line.
    pub line: String,
    /// The throttling key.
    pub key: String,
    /// The throttling period in nanoseconds, or `None`.
    pub period: Option<u64>,
}

/// `name` with `data`, stamped `ts`.
pub fn outgoing(name: &str, data: Value, ts: Timestamp) -> Outgoing {
    let node = data
        .get("node-name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let v = json!({
        "timestamp": {"seconds": ts.seconds, "microseconds": ts.microseconds},
        "event": name,
        "data": data,
    });
    let mut line = to_line(&v);
    line.push_str("\r\n");
    Outgoing {
        line,
        key: crate::throttle::key_of(name, node.as_deref()),
        period: crate::throttle::period_of(name),
    }
}

/// A core event's `data`; `device` is the quorum node's name, `child` the
/// node name of the child it is about.
pub fn quorum_data(ev: &Event, device: &str, child: &str) -> Value {
    let mut m = Map::new();
    match *ev {
        Event::ReportBad {
            op,
            error,
            sector_num,
            sectors_count,
            ..
        } => {
            m.insert("node-name".into(), json!(child));
            m.insert("sectors-count".into(), json!(sectors_count));
            m.insert("sector-num".into(), json!(sector_num));
            m.insert("type".into(), json!(op.as_str()));
            if let Some(e) = error {
                m.insert("error".into(), json!(e.to_string()));
            }
        }
        Event::Failure {
            sector_num,
            sectors_count,
        } => {
            m.insert("reference".into(), json!(device));
            m.insert("sectors-count".into(), json!(sectors_count));
            m.insert("sector-num".into(), json!(sector_num));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorum_proto::{ChildId, Errno, OpType};

    /// R-QMP-3's lines, byte for byte as qemu-storage-daemon 10.0 sent them.
    #[test]
    fn r_qmp_3_quorum_events_are_qemus_bytes() {
        let ts = Timestamp {
            seconds: 1796125966,
            microseconds: 764483,
        };
        let bad = Event::ReportBad {
            op: OpType::Read,
            error: Some(Errno::EIO),
            child: ChildId(3),
            sector_num: 1024,
            sectors_count: 128,
        };
        let o = outgoing(bad.name(), quorum_data(&bad, "quorum0", "errc"), ts);
        assert_eq!(
            o.line,
            "{\"timestamp\": {\"seconds\": 1796125966, \"microseconds\": 764483}, \"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"node-name\": \"errc\", \"sectors-count\": 128, \"sector-num\": 1024, \"type\": \"read\", \"error\": \"Input/output error\"}}\r\n"
        );
        assert_eq!(o.period, Some(1_000_000_000));
        let fail = Event::Failure {
            sector_num: 256,
            sectors_count: 128,
        };
        let o = outgoing(fail.name(), quorum_data(&fail, "quorum0", ""), ts);
        assert!(o.line.contains(
            "\"data\": {\"reference\": \"quorum0\", \"sectors-count\": 128, \"sector-num\": 256}}"
        ));
        assert_eq!(o.key, "QUORUM_FAILURE");
    }
}
