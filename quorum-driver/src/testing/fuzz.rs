//! The raw core API driven by fuzz bytes, for the cargo-fuzz target
//! `core_api` (`fuzz/`) and the tests that replay its corpus on stable;
//! and the sync map file's parser ([`map_file`], target `map_file`).
//!
//! [`core_api`] reads its input as a sequence of calls — valid ones and
//! misuse alike: submits of any range and id, polls, completions right and
//! wrong (unknown requests and slots, the wrong kind, twice, before they
//! were polled, with missing or wrongly sized buffers), cancels (R-CANCEL),
//! drains (R-MEMBER-4) and membership changes — and makes every one through
//! the [`Checker`], which panics when the core breaks its contract. At the
//! end every outstanding child operation is completed and every accepted
//! request must have completed exactly once, with the core idle.

use std::collections::HashMap;

use quorum_proto::{ChildId, ChildOp, Config, Errno, NoBuffers, ReadPattern, Request, RequestId};

use super::checker::Checker;

/// Reads longer than this never get read buffers: their child reads are
/// completed with errors only.
const CAP: u64 = 4096;
/// The most calls one input makes before the final drain.
const MAX_CALLS: usize = 4096;

/// The input, read front to back; zeroes once it is used up.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// A number in `0..n` (0 when `n` is 0) from one or two bytes.
    fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            1..=256 => self.u8() as usize % n,
            _ => self.u16() as usize % n,
        }
    }

    fn errno(&mut self) -> Errno {
        const ERRNOS: [Errno; 6] = [
            Errno::EIO,
            Errno::ENOSPC,
            Errno::EPERM,
            Errno::ETIMEDOUT,
            Errno::EIO,
            Errno::ENXIO,
        ];
        let b = self.u8();
        match b {
            0..=239 => ERRNOS[b as usize % ERRNOS.len()],
            // Any number is accepted, even nonsense.
            240..=247 => Errno(b as i32 - 244),
            _ => Errno(i32::MAX - (b as i32 - 248)),
        }
    }

    fn result(&mut self) -> Result<(), Errno> {
        if self.u8().is_multiple_of(4) {
            Err(self.errno())
        } else {
            Ok(())
        }
    }
}

const OPS: [ChildOp; 6] = [
    ChildOp::Read,
    ChildOp::Write,
    ChildOp::Flush,
    ChildOp::Rewrite,
    ChildOp::BlockStatus,
    ChildOp::Marked,
];

fn op_index(op: ChildOp) -> usize {
    match op {
        ChildOp::Read => 0,
        ChildOp::Write => 1,
        ChildOp::Flush => 2,
        ChildOp::Rewrite => 3,
        ChildOp::BlockStatus => 4,
        ChildOp::Marked => 5,
    }
}

/// How a read completion lends its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bufs {
    /// The request's buffers, one per slot, each of the request's length.
    Right,
    /// No buffers at all.
    None,
    /// The request's buffers with one slot one byte too long.
    Long(usize),
    /// Only the first `k` slots.
    Short(usize),
}

/// The fuzz driver: the checked core, and each read's buffers.
struct Driver<const C: usize, const R: usize, const A: usize> {
    q: Checker<C, R, A>,
    /// Read buffers of the newest request of each id (reads of at most
    /// [`CAP`] bytes); `None` for anything else.
    bufs: HashMap<u64, Option<Vec<Vec<u8>>>>,
    next_id: u64,
}

impl<const C: usize, const R: usize, const A: usize> Driver<C, R, A> {
    /// Ids of the requests the core may hold, ascending, once each.
    fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.q.requests().iter().map(|r| r.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn pick_id(&mut self, inp: &mut Input<'_>) -> u64 {
        match inp.u8() % 8 {
            0..=3 => {
                self.next_id += 1;
                self.next_id
            }
            4 | 5 => inp.u8() as u64 % 8,
            6 => {
                let ids = self.ids();
                if ids.is_empty() {
                    0
                } else {
                    ids[inp.below(ids.len())]
                }
            }
            _ => inp.u64(),
        }
    }

    fn pick_range(inp: &mut Input<'_>) -> (u64, u64) {
        match inp.u8() % 10 {
            0..=5 => (
                (inp.u8() % 32) as u64 * 512,
                (1 + inp.u8() % 8) as u64 * 512,
            ),
            6 => (inp.u16() as u64 % 16384, inp.u16() as u64 % (CAP + 1)),
            7 => (inp.u64(), inp.u64()),
            8 => (inp.u64() >> (inp.u8() % 64), inp.u16() as u64),
            _ => {
                let back = inp.u16() as u64;
                ((i64::MAX as u64).wrapping_sub(back), inp.u16() as u64)
            }
        }
    }

    fn submit(&mut self, inp: &mut Input<'_>) {
        let id = self.pick_id(inp);
        let kind = inp.u8() % 16;
        let (offset, len) = Self::pick_range(inp);
        let req = match kind {
            0..=6 => Request::Read { offset, len },
            7..=10 => Request::Write { offset, len },
            11..=13 => Request::WriteZeroes { offset, len },
            14 => Request::Flush,
            _ => Request::BlockStatus { offset, len },
        };
        let n = self.q.children().len();
        let bufs = match req {
            Request::Read { len, .. } if len <= CAP => Some(read_buffers(inp, n, len as usize)),
            _ => None,
        };
        if self.q.submit(RequestId(id), req).is_ok() {
            self.bufs.insert(id, bufs);
        }
    }

    /// A completion call; the checker judges it.
    fn complete(
        &mut self,
        id: u64,
        slot: usize,
        op: ChildOp,
        mut result: Result<(), Errno>,
        bufs: Bufs,
    ) {
        let right: &[Vec<u8>] = self.bufs.get(&id).and_then(Option::as_deref).unwrap_or(&[]);
        if op == ChildOp::Read && right.is_empty() && result.is_ok() {
            // No buffers exist for this read: a success could never be voted.
            result = Err(Errno::EIO);
        }
        let rid = RequestId(id);
        let _ = match op {
            ChildOp::Read => match bufs {
                Bufs::Right => self.q.handle_read(rid, slot, result, right),
                Bufs::None => self.q.handle_read(rid, slot, result, &NoBuffers),
                Bufs::Long(s) => {
                    let mut b = right.to_vec();
                    if let Some(x) = b.get_mut(s) {
                        x.push(0);
                    }
                    self.q.handle_read(rid, slot, result, b.as_slice())
                }
                Bufs::Short(k) => {
                    let short = right[..k.min(right.len())].to_vec();
                    self.q.handle_read(rid, slot, result, short.as_slice())
                }
            },
            ChildOp::Write => self.q.handle_write(rid, slot, result),
            ChildOp::Flush => self.q.handle_flush(rid, slot, result),
            ChildOp::Rewrite => self.q.handle_rewrite(rid, slot, result),
            ChildOp::Marked => self.q.handle_marked(rid),
            ChildOp::BlockStatus => {
                // Any extent at all: the core clamps it to the range.
                let extent = quorum_proto::Extent {
                    len: (slot as u64 * 4096) ^ (result.is_ok() as u64),
                    zero: slot.is_multiple_of(2),
                };
                self.q
                    .handle_block_status(rid, slot, result.map(|()| extent))
            }
        };
    }

    fn outstanding(&self) -> Vec<(u64, usize, ChildOp)> {
        let mut out: Vec<(u64, usize, ChildOp)> = self
            .q
            .outstanding()
            .into_iter()
            .map(|(id, s, op)| (id.0, s, op))
            .collect();
        out.sort_by_key(|&(id, s, op)| (id, s, op_index(op)));
        out
    }

    fn pick_bufs(inp: &mut Input<'_>) -> Bufs {
        match inp.u8() % 8 {
            0..=4 => Bufs::Right,
            5 => Bufs::None,
            6 => Bufs::Long(inp.u8() as usize % 17),
            _ => Bufs::Short(inp.u8() as usize % 17),
        }
    }

    /// One call chosen by the input.
    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 20 {
            0..=3 => self.submit(inp),
            4..=5 => {
                self.q.poll_action();
            }
            6 => while self.q.poll_action().is_some() {},
            7..=10 => {
                // A completion the core asked for.
                let out = self.outstanding();
                if !out.is_empty() {
                    let (id, slot, op) = out[inp.below(out.len())];
                    let result = inp.result();
                    let bufs = Self::pick_bufs(inp);
                    self.complete(id, slot, op, result, bufs);
                }
            }
            11 => {
                // Anything at all, also what was issued and not yet polled.
                let id = match inp.u8() % 3 {
                    0 => inp.u8() as u64 % 8,
                    1 => self.next_id.saturating_sub(inp.u8() as u64 % 8),
                    _ => inp.u64(),
                };
                let slot = inp.below(70);
                let op = OPS[inp.below(OPS.len())];
                let result = inp.result();
                let bufs = Self::pick_bufs(inp);
                self.complete(id, slot, op, result, bufs);
            }
            12 => {
                // The same completion again.
                let done: Vec<(RequestId, usize, ChildOp)> = self.q.completed();
                if !done.is_empty() {
                    let (id, slot, op) = done[inp.below(done.len())];
                    let result = inp.result();
                    self.complete(id.0, slot, op, result, Bufs::Right);
                }
            }
            13 => {
                // The right request and slot, the wrong kind of completion.
                let out = self.outstanding();
                if !out.is_empty() {
                    let (id, slot, op) = out[inp.below(out.len())];
                    let other = OPS[(op_index(op) + 1 + inp.below(OPS.len() - 1)) % OPS.len()];
                    let result = inp.result();
                    self.complete(id, slot, other, result, Bufs::Right);
                }
            }
            14 => {
                // A known request, a slot it does not have.
                let out = self.outstanding();
                if !out.is_empty() {
                    let (id, _, op) = out[inp.below(out.len())];
                    let slot = C + inp.below(8);
                    self.complete(id, slot, op, Ok(()), Bufs::Right);
                }
            }
            15 => {
                let _ = self.q.add_child();
            }
            16 | 17 => self.remove_child(inp),
            18 => {
                // Complete everything outstanding, correctly.
                for (id, slot, op) in self.outstanding() {
                    let result = inp.result();
                    self.complete(id, slot, op, result, Bufs::Right);
                }
            }
            _ => match inp.u8() % 8 {
                // R-CANCEL-1..2: a request the core may hold…
                1..=3 => {
                    let ids = self.ids();
                    if !ids.is_empty() {
                        let id = ids[inp.below(ids.len())];
                        let _ = self.q.cancel(RequestId(id));
                    }
                }
                // …or anything.
                4 => {
                    let id = self.pick_id(inp);
                    let _ = self.q.cancel(RequestId(id));
                }
                // R-MEMBER-4: the drain gate, ended more often than started
                // so that submits get through.
                5 => self.q.start_drain(),
                6 | 7 => {
                    let _ = self.q.end_drain();
                }
                _ => {
                    let _ = self.q.config();
                    let _ = self.q.in_flight();
                    let _ = self.q.is_idle();
                    let _ = self.q.is_drained();
                }
            },
        }
    }

    fn remove_child(&mut self, inp: &mut Input<'_>) {
        let children = self.q.children().to_vec();
        let victim = if children.is_empty() || inp.u8().is_multiple_of(4) {
            ChildId(inp.u8() as u32 % 80)
        } else {
            children[inp.below(children.len())]
        };
        let _ = self.q.remove_child(victim);
    }

    /// Completes everything correctly until nothing is left, then checks
    /// that every accepted request completed and the core is idle.
    fn drain(&mut self) {
        // Each round completes at least one child operation, and a request
        // issues at most 2 per child, so a correct core never reaches this.
        let limit = 4 * R * C + 8;
        for _ in 0..limit {
            while self.q.poll_action().is_some() {}
            let out = self.outstanding();
            if out.is_empty() {
                break;
            }
            for (id, slot, op) in out {
                self.complete(id, slot, op, Ok(()), Bufs::Right);
            }
        }
        assert!(
            self.outstanding().is_empty(),
            "drain made no progress in {limit} rounds"
        );
        self.q.assert_finished();
    }
}

/// Read buffers for `n` slots: a few versions, sometimes one flipped bit.
fn read_buffers(inp: &mut Input<'_>, n: usize, len: usize) -> Vec<Vec<u8>> {
    let f = inp.u8();
    let mut rng = SplitMix(f as u64);
    let versions = 1 + (f as u64 % 3);
    let mut bufs: Vec<Vec<u8>> = (0..n)
        .map(|_| vec![rng.below(versions) as u8; len])
        .collect();
    if f & 0x80 != 0 && len > 0 && n > 0 {
        let s = rng.below(n as u64) as usize;
        let at = rng.below(len as u64) as usize;
        bufs[s][at] ^= 1 << (f % 8);
    }
    bufs
}

/// SplitMix64 with Lemire's bounded draw: the simulator's generator, so
/// that the corpus recorded against it decodes to the same buffers.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

fn run_core<const C: usize, const R: usize, const A: usize>(inp: &mut Input<'_>, flags: u8) {
    let mut children = inp.u8() as usize % 18;
    let mut threshold = inp.u8() as usize % (children + 2);
    if flags & 0x40 != 0 {
        // blkverify's only valid shape, so that it is reached often.
        (children, threshold) = (2, 2);
    }
    let config = Config::new(children, threshold)
        .with_read_pattern(if flags & 0x04 != 0 {
            ReadPattern::Fifo
        } else {
            ReadPattern::Quorum
        })
        .with_rewrite_corrupted(flags & 0x08 != 0)
        .with_blkverify(flags & 0x10 != 0)
        .with_fifo_rewrite_failed(flags & 0x20 != 0)
        .with_early_quorum(flags & 0x80 != 0);
    // The checker holds Quorum::new to Config::validate.
    let Ok(mut q) = Checker::<C, R, A>::new(config) else {
        return;
    };
    // Formatting the whole state around every call is for small cores.
    q.set_deep(C * R <= 64);
    let mut d = Driver {
        q,
        bufs: HashMap::new(),
        next_id: 0,
    };
    let mut calls = 0;
    while !inp.done() && calls < MAX_CALLS {
        d.step(inp);
        calls += 1;
    }
    d.drain();
}

/// Drives the raw core API with calls decoded from `data`, valid and invalid
/// alike, through the [`Checker`]; panics if the core breaks its contract
/// (or panics itself).
///
/// The first bytes choose the core's capacity and configuration (invalid
/// configurations must be refused with a `ConfigError`); the rest is a
/// sequence of submits, polls, completions (right, wrong, repeated, for
/// unknown requests and slots, with wrong buffers), cancels, drains and
/// membership changes. At the end every outstanding child operation is
/// completed and the core must have completed each accepted request exactly
/// once and be idle.
pub fn core_api(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    match flags & 0x03 {
        0 => run_core::<16, 32, 1024>(&mut inp, flags),
        1 => run_core::<16, 4, 50>(&mut inp, flags),
        2 => run_core::<4, 2, 14>(&mut inp, flags),
        _ => run_core::<64, 8, 194>(&mut inp, flags),
    }
}

/// The sync map file's parser (SPEC R-SYNC-6) on arbitrary bytes, for the
/// cargo-fuzz target `map_file`: [`crate::sync::file::parse_bytes`] as a
/// whole file and [`crate::sync::SyncMap::decode`] as a bare payload must
/// never panic, and whatever they accept must encode back to itself and
/// answer every question about its marks.
pub fn map_file(data: &[u8]) {
    use crate::sync::SyncMap;
    use crate::sync::file::{parse_bytes, record_for_test};
    use quorum_proto::sync::{Chunks, Marks};

    let check = |m: &SyncMap| {
        let bytes = m.encode();
        let again = SyncMap::decode(&bytes).expect("a map's own encoding decodes");
        assert_eq!(again.encode(), bytes, "encode and decode disagree");
        let all = Chunks {
            first: 0,
            end: m.chunks(),
        };
        let _ = Marks::unsettled(m, all);
        for c in m.children() {
            let _ = Marks::stale(m, ChildId(c), all);
        }
        assert!(m.work() <= m.chunks());
        if let Some(i) = m.next_work(0) {
            assert!(m.needs(i));
        }
    };
    if let Some((m, names)) = parse_bytes(data) {
        check(&m);
        assert!(names.len() <= crate::sync::file::MAX_CHILDREN);
        // What was read fits its slot again when written back (names are
        // never longer than they were).
        let rec = record_for_test(&m, &names, 1);
        assert!(rec.len() <= data.len() / 2, "the record outgrew its slot");
    }
    if let Some(m) = SyncMap::decode(data) {
        check(&m);
    }
}
