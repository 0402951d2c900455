//! R-QMP-3: the quorum events as QEMU sends them over QMP, through QEMU's
//! throttle: the lines and the sequence qemu-storage-daemon 10.0.2 produced
//! for 20 reads of a corrupted child 150 ms apart, and for two children.

use quorum_proto::{ChildId, Event, OpType, Timestamp};
use quorum_qmp::event::{outgoing, quorum_data};
use quorum_qmp::throttle::Throttle;

const MS: u64 = 1_000_000;

fn bad(node: &str, at_ms: u64) -> quorum_qmp::event::Outgoing {
    let ev = Event::ReportBad {
        op: OpType::Read,
        error: None,
        child: ChildId(2),
        sector_num: 0,
        sectors_count: 128,
    };
    let ts = Timestamp {
        seconds: 1_796_125_941 + at_ms / 1000,
        microseconds: ((at_ms % 1000) * 1000) as u32,
    };
    outgoing(ev.name(), quorum_data(&ev, "quorum0", node), ts)
}

/// Runs offers at their times and the timer at every millisecond: the
/// lines sent, with the time each was sent.
fn run(offers: Vec<(u64, quorum_qmp::event::Outgoing)>, until_ms: u64) -> Vec<(u64, String)> {
    let mut t = Throttle::new();
    let mut sent = Vec::new();
    let mut offers = offers.into_iter().peekable();
    for ms in 0..=until_ms {
        let now = ms * MS;
        for line in t.expire(now) {
            sent.push((ms, line));
        }
        while offers.peek().is_some_and(|o| o.0 == ms) {
            let (_, o) = offers.next().unwrap();
            if let Some(line) = t.offer(o.key, o.period.unwrap(), now, o.line) {
                sent.push((ms, line));
            }
        }
    }
    sent
}

#[test]
fn r_qmp_3_one_corrupted_child_read_20_times_in_3_s_gives_4_events() {
    let offers: Vec<_> = (0..20).map(|i| (i * 150, bad("c2", i * 150))).collect();
    let sent = run(offers, 5000);
    let at: Vec<u64> = sent.iter().map(|s| s.0).collect();
    // The first at once; then, each second, the last one held.
    assert_eq!(at, [0, 1000, 2000, 3000], "{sent:?}");
    assert_eq!(
        sent[0].1,
        "{\"timestamp\": {\"seconds\": 1796125941, \"microseconds\": 0}, \"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"node-name\": \"c2\", \"sectors-count\": 128, \"sector-num\": 0, \"type\": \"read\"}}\r\n"
    );
    // A held event keeps the time it was made: the read at 900 ms.
    assert!(
        sent[1]
            .1
            .contains("\"seconds\": 1796125941, \"microseconds\": 900000"),
        "{}",
        sent[1].1
    );
    assert!(
        sent[3]
            .1
            .contains("\"seconds\": 1796125943, \"microseconds\": 850000"),
        "{}",
        sent[3].1
    );
}

#[test]
fn r_qmp_3_two_children_have_streams_of_their_own() {
    let mut offers = Vec::new();
    for i in 0..10 {
        offers.push((i * 150, bad("c2", i * 150)));
        offers.push((i * 150, bad("c1", i * 150)));
    }
    offers.sort_by_key(|o| o.0);
    let sent = run(offers, 4000);
    let c1 = sent.iter().filter(|s| s.1.contains("\"c1\"")).count();
    let c2 = sent.iter().filter(|s| s.1.contains("\"c2\"")).count();
    // Reads over 1.35 s: at once, at 1 s (the read at 900 ms), at 2 s (1350 ms).
    assert_eq!((c1, c2), (3, 3), "{sent:?}");
    assert_eq!(sent[0].0, 0);
    assert_eq!(sent[1].0, 0, "the second node's first event is not held");
}
