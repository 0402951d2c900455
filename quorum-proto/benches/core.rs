//! The core alone, no I/O: what one voted read costs in `quorum-proto`,
//! side by side with what QEMU pays to hash the copies.
//!
//! Each group holds a pair measured on the same buffers, with the same
//! throughput (`3 × len`: every copy the vote looks at), so criterion prints
//! comparable figures:
//!
//! * `read_4KiB_3_children_agree`: `quorum_core` is one 3-child 4 KiB read
//!   where all agree (submit, poll, three `handle_read` with pre-filled
//!   buffers, poll to `Complete`); `sha256_3_copies` is SHA-256 over the three
//!   copies, which QEMU does not need here either (it memcmps first) but which
//!   is the unit price of its vote.
//! * `read_64KiB_3_children_one_disagrees`: `quorum_core` is a 3-child 64 KiB
//!   read where children.1 differs in its last byte (the worst case for a byte
//!   comparison: both memcmps run to the end), with the full vote and the
//!   `QUORUM_REPORT_BAD`; `sha256_3_copies` is SHA-256 over the three copies,
//!   which QEMU computes on every disagreement (R-VOTE-1) before it can vote.
//!
//! `cargo bench -p quorum-proto --bench core -- --quick`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quorum_proto::{Action, Config, Event, Outcome, Quorum, Request, RequestId};
use sha2::{Digest, Sha256};

/// One read through the core, as a driver runs it: submit, poll the child
/// reads, complete them (the buffers are already filled), poll to the
/// completion. Returns the outcome and the number of events.
fn read_once(q: &mut Quorum, bufs: &[Vec<u8>], len: u64) -> (Outcome, usize) {
    let id = RequestId(1);
    q.submit(id, Request::Read { offset: 0, len })
        .expect("room for a request");
    let mut slots = [0usize; 3];
    let mut n = 0;
    while let Some(a) = q.poll_action() {
        match a {
            Action::Read { slot, .. } => {
                slots[n] = slot;
                n += 1;
            }
            other => unreachable!("a read issues no {other:?} first"),
        }
    }
    for &slot in &slots[..n] {
        q.handle_read(id, slot, Ok(()), bufs)
            .expect("expected completion");
    }
    let mut events = 0;
    let mut outcome = None;
    while let Some(a) = q.poll_action() {
        match a {
            Action::Event { event, .. } => {
                black_box(event);
                events += 1;
            }
            Action::Complete { outcome: o, .. } => outcome = Some(o),
            other => unreachable!("no rewrite configured: {other:?}"),
        }
    }
    (outcome.expect("the read completed"), events)
}

/// What QEMU computes on a disagreement: one SHA-256 per copy.
fn sha256_every_copy(bufs: &[Vec<u8>]) {
    for b in bufs {
        black_box(Sha256::digest(black_box(b.as_slice())));
    }
}

/// Three copies of `len` bytes; with `disagree`, children.1's last byte differs.
fn copies(len: usize, disagree: bool) -> Vec<Vec<u8>> {
    let base: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let mut bufs = vec![base; 3];
    if disagree {
        bufs[1][len - 1] ^= 0x01;
    }
    bufs
}

fn bench_pair(c: &mut Criterion, name: &str, len: usize, disagree: bool) {
    let bufs = copies(len, disagree);
    let mut q: Quorum = Quorum::new(Config::new(3, 2)).expect("valid configuration");

    // Check once, outside the measurement, that the path is the intended one.
    let (outcome, events) = read_once(&mut q, &bufs, len as u64);
    assert!(
        matches!(outcome, Outcome::Read { slot: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        events,
        usize::from(disagree),
        "one REPORT_BAD iff a child disagrees"
    );
    if disagree {
        let mut probe: Quorum = Quorum::new(Config::new(3, 2)).expect("valid configuration");
        probe
            .submit(
                RequestId(1),
                Request::Read {
                    offset: 0,
                    len: len as u64,
                },
            )
            .expect("room");
        while probe.poll_action().is_some() {}
        for slot in 0..3 {
            probe
                .handle_read(RequestId(1), slot, Ok(()), bufs.as_slice())
                .expect("expected completion");
        }
        let report = probe.poll_action();
        assert!(
            matches!(
                report,
                Some(Action::Event {
                    event: Event::ReportBad { error: None, .. },
                    ..
                })
            ),
            "{report:?}"
        );
    }

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(3 * len as u64));
    g.bench_function("quorum_core", |b| {
        b.iter(|| read_once(&mut q, black_box(&bufs), len as u64))
    });
    g.bench_function("sha256_3_copies", |b| {
        b.iter(|| sha256_every_copy(black_box(&bufs)))
    });
    g.finish();
}

fn agree_4k(c: &mut Criterion) {
    bench_pair(c, "read_4KiB_3_children_agree", 4096, false);
}

fn one_disagrees_64k(c: &mut Criterion) {
    bench_pair(c, "read_64KiB_3_children_one_disagrees", 64 * 1024, true);
}

criterion_group!(benches, agree_4k, one_disagrees_64k);
criterion_main!(benches);
