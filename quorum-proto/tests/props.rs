//! Property tests of the core contract (DESIGN.md, "The core contract").
//!
//! The checks themselves live in the driver kit
//! (`quorum_driver::testing::Checker` and its reference model of SPEC.md,
//! `quorum_driver::testing::model`), shared with the `core_api` fuzzer; this
//! file draws what to do and lets the checker judge every call.
//!
//! * `random_use_*`: random sequences of valid and invalid inputs, misuse
//!   included, against several capacities: submits of any range and id,
//!   polls, completions with chosen results and contents, bursts of
//!   completions, wrong completions (unknown ids and slots, the wrong kind,
//!   twice, wrong buffers where the core looks), duplicate submits, cancels
//!   (R-CANCEL-1..2) of requests in flight and of anything, drains
//!   (R-MEMBER-4) and membership changes (R-MEMBER-1..3). The checker holds
//!   every answer and every action to the contract: nothing panics, misuse
//!   is the right `Err` and changes nothing, `Busy` only when the `3n + 2`
//!   reservation leaves no room, `Draining` exactly while draining, every
//!   accepted request ends with exactly one `Complete` and nothing after,
//!   child operations, events and rewrites belong to it, early quorum
//!   answers exactly when due, ordering holds (also for a cancelled
//!   request's rewrites), a cancel completes at once with `ECANCELED` and
//!   says nothing more, and every outcome, event sequence and rewrite
//!   sequence is the reference model's. At the end everything is completed,
//!   the core must be idle, and an idle core takes the next request.
//! * `full_*core_answered_at_once_never_overflows`: fill the core until
//!   `Busy`, then answer every child operation before polling again.
//! * `outcome_does_not_depend_on_completion_order`: the same request against
//!   the same children, completed in two orders through the kit's in-memory
//!   driver, ends the same way.

use std::collections::HashMap;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use quorum_driver::testing::{Checker, MemDriver, Script};
use quorum_proto::{
    Action, ChildId, ChildOp, Config, Errno, Event, Extent, NoBuffers, Outcome, ReadBuffers,
    ReadPattern, Request, RequestId,
};

type TestResult = Result<(), TestCaseError>;

/// Reads longer than this get no data buffer: the driver completes them
/// with an error whenever the core would look at the data.
const MAX_BUF: u64 = 1536;

const ERRNOS: [Errno; 6] = [
    Errno::EIO,
    Errno::ENOSPC,
    Errno::EPERM,
    Errno(0),
    Errno(-5),
    Errno(4095),
];

/// Read contents from a small alphabet, so that votes both agree and
/// disagree: zeroes, 0xab, and zeroes with the last or the first byte set.
fn pattern(sym: u8, len: u64) -> Vec<u8> {
    let mut v = vec![if sym == 1 { 0xab } else { 0 }; len as usize];
    match sym {
        2 => {
            if let Some(b) = v.last_mut() {
                *b = 1;
            }
        }
        3 => {
            if let Some(b) = v.first_mut() {
                *b = 1;
            }
        }
        _ => {}
    }
    v
}

fn child_op_of(op: u8) -> ChildOp {
    match op % 4 {
        0 => ChildOp::Read,
        1 => ChildOp::Write,
        2 => ChildOp::Flush,
        _ => ChildOp::Rewrite,
    }
}

/// Read buffers by slot, one of them possibly replaced (misuse).
struct Bufs<'a> {
    bufs: &'a [Option<Vec<u8>>],
    replace: Option<(usize, Option<&'a [u8]>)>,
}

impl ReadBuffers for Bufs<'_> {
    fn buffer(&self, slot: usize) -> Option<&[u8]> {
        if let Some((s, b)) = self.replace
            && s == slot
        {
            return b;
        }
        self.bufs.get(slot)?.as_deref()
    }
}

/// How the driver answers a child operation.
#[derive(Clone, Copy, Debug)]
struct Choice {
    ok: bool,
    sym: u8,
    errno: Errno,
}

// ---------------------------------------------------------------------------
// The driver for the random-use property: it draws, the checker judges.

/// A request's read buffers, by slot (`None`: no data).
type SlotBufs = Vec<Option<Vec<u8>>>;

/// A checked core, plus what a driver keeps: each request's read buffers.
struct Harness<const C: usize, const R: usize, const A: usize> {
    q: Checker<C, R, A>,
    /// The newest accepted request of each id, with its buffers by slot.
    reqs: HashMap<RequestId, (Request, SlotBufs)>,
    rng: u64,
    used_ids: Vec<RequestId>,
}

impl<const C: usize, const R: usize, const A: usize> Harness<C, R, A> {
    fn new(config: Config, seed: u64) -> Result<Self, TestCaseError> {
        let q = Checker::<C, R, A>::new(config)
            .map_err(|e| TestCaseError::fail(format!("{config:?} refused: {e}")))?;
        Ok(Harness {
            q,
            reqs: HashMap::new(),
            rng: seed | 1,
            used_ids: Vec::new(),
        })
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn submit(&mut self, id: RequestId, req: Request) -> Result<(), quorum_proto::Error> {
        let n = self.q.children().len();
        let r = self.q.submit(id, req);
        self.used_ids.push(id);
        if r.is_ok() {
            self.reqs.insert(id, (req, vec![None; n]));
        }
        r
    }

    /// Completes a polled, outstanding child operation the way a correct
    /// driver would, with the result `c` asks for where it can.
    fn complete(&mut self, id: RequestId, slot: usize, op: ChildOp, c: Choice) -> TestResult {
        let res = if c.ok { Ok(()) } else { Err(c.errno) };
        let r = match op {
            ChildOp::Read => {
                let len = self.reqs.get(&id).map_or(0, |(r, _)| r.range().1);
                // A huge read has no buffer: say Ok only where the core will
                // never look at the data (a quorum read votes on every
                // success at its last completion; fifo looks only to repair).
                let fifo = self.q.config().read_pattern == ReadPattern::Fifo;
                let res = if len <= MAX_BUF
                    || (fifo && self.q.buffers_needed(id, slot, res).is_empty())
                {
                    res
                } else {
                    Err(c.errno)
                };
                if res.is_ok()
                    && len <= MAX_BUF
                    && let Some((_, bufs)) = self.reqs.get_mut(&id)
                {
                    bufs[slot] = Some(pattern(c.sym, len));
                }
                let bufs = Bufs {
                    bufs: self.reqs.get(&id).map_or(&[], |(_, b)| b.as_slice()),
                    replace: None,
                };
                self.q.handle_read(id, slot, res, &bufs)
            }
            ChildOp::Write => self.q.handle_write(id, slot, res),
            ChildOp::Flush => self.q.handle_flush(id, slot, res),
            ChildOp::Rewrite => self.q.handle_rewrite(id, slot, res),
            ChildOp::Marked => self.q.handle_marked(id),
            ChildOp::BlockStatus => {
                let len = self.reqs.get(&id).map_or(0, |(r, _)| r.range().1);
                // An extent drawn from the choice: zeroes or data, some
                // length (the core clamps it to the range).
                let extent = Extent {
                    len: len / (1 + u64::from(c.sym)),
                    zero: c.sym.is_multiple_of(2),
                };
                self.q.handle_block_status(id, slot, res.map(|()| extent))
            }
        };
        prop_assert_eq!(
            r,
            Ok(()),
            "a valid completion ({:?} slot {} {:?}) was refused",
            id,
            slot,
            op
        );
        Ok(())
    }

    /// A completion call of any shape, for misuse.
    fn call(&mut self, id: RequestId, slot: usize, op: ChildOp, res: Result<(), Errno>) {
        let _ = match op {
            ChildOp::Read => match self.reqs.get(&id) {
                Some((_, bufs)) => self.q.handle_read(
                    id,
                    slot,
                    res,
                    &Bufs {
                        bufs,
                        replace: None,
                    },
                ),
                None => self.q.handle_read(id, slot, res, &NoBuffers),
            },
            ChildOp::Write => self.q.handle_write(id, slot, res),
            ChildOp::Flush => self.q.handle_flush(id, slot, res),
            ChildOp::Rewrite => self.q.handle_rewrite(id, slot, res),
            ChildOp::Marked => self.q.handle_marked(id),
            ChildOp::BlockStatus => {
                self.q
                    .handle_block_status(id, slot, res.map(|()| Extent { len: 1, zero: true }))
            }
        };
    }

    fn misuse(&mut self, m: &Misuse) -> TestResult {
        match *m {
            Misuse::UnknownId { id, op, slot, ok } => {
                let id = RequestId(id);
                if self.q.requests().iter().any(|r| r.id == id) {
                    return Ok(());
                }
                let res = if ok { Ok(()) } else { Err(Errno::EIO) };
                self.call(id, slot, child_op_of(op), res);
            }
            Misuse::BadSlot { pick, extra, op } => {
                let reqs = self.q.requests();
                let Some(r) = reqs.get(pick % reqs.len().max(1)) else {
                    return Ok(());
                };
                let slot = r.children.len().saturating_add(extra);
                self.call(r.id, slot, child_op_of(op), Ok(()));
            }
            Misuse::WrongOp { pick, op } => {
                let ops = self.q.outstanding();
                let Some(&(id, slot, real)) = ops.get(pick % ops.len().max(1)) else {
                    return Ok(());
                };
                let mut wrong = child_op_of(op);
                if wrong == real {
                    wrong = child_op_of(op.wrapping_add(1));
                }
                // An error result: the buffers are not looked at.
                self.call(id, slot, wrong, Err(Errno::EIO));
            }
            Misuse::Duplicate { pick, ok } => {
                let done = self.q.completed();
                let Some(&(id, slot, op)) = done.get(pick % done.len().max(1)) else {
                    return Ok(());
                };
                let res = if ok { Ok(()) } else { Err(Errno::EIO) };
                self.call(id, slot, op, res);
            }
            Misuse::BadBuffer { pick, how } => {
                let reads: Vec<(RequestId, usize)> = self
                    .q
                    .outstanding()
                    .into_iter()
                    .filter(|&(_, _, o)| o == ChildOp::Read)
                    .map(|(id, s, _)| (id, s))
                    .collect();
                let Some(&(id, slot)) = reads.get(pick % reads.len().max(1)) else {
                    return Ok(());
                };
                // Only where the core must look at the buffers: there the
                // checker knows the exact `BadBuffer` it owes.
                let no_buffers = how % 4 == 3;
                let needed = self.q.buffers_needed(id, slot, Ok(()));
                if needed.is_empty() || (!no_buffers && !needed.contains(&slot)) {
                    return Ok(());
                }
                let len = self.reqs.get(&id).map_or(0, |(r, _)| r.range().1);
                let wrong: Option<Vec<u8>> = match how % 3 {
                    0 => None,
                    1 if len > 0 && len <= MAX_BUF => Some(vec![0; len as usize - 1]),
                    1 => Some(vec![0; 7.min(len as usize + 1)]),
                    _ if len < MAX_BUF => Some(vec![0; len as usize + 1]),
                    _ => Some(Vec::new()),
                };
                let r = if no_buffers {
                    self.q.handle_read(id, slot, Ok(()), &NoBuffers)
                } else {
                    let bufs = Bufs {
                        bufs: self.reqs.get(&id).map_or(&[], |(_, b)| b.as_slice()),
                        replace: Some((slot, wrong.as_deref())),
                    };
                    self.q.handle_read(id, slot, Ok(()), &bufs)
                };
                prop_assert!(r.is_err(), "a wrong buffer where the core looks: {:?}", r);
            }
            Misuse::DuplicateSubmit { pick, offset } => {
                let live: Vec<RequestId> = self
                    .q
                    .requests()
                    .into_iter()
                    .filter(|r| r.certain)
                    .map(|r| r.id)
                    .collect();
                let Some(&id) = live.get(pick % live.len().max(1)) else {
                    return Ok(());
                };
                let r = self.q.submit(id, Request::Read { offset, len: 512 });
                prop_assert!(r.is_err(), "a second request under {:?} accepted", id);
            }
            Misuse::RemoveUnknown { child } => {
                let child = ChildId(child);
                if self.q.children().contains(&child) {
                    return Ok(());
                }
                let _ = self.q.remove_child(child);
            }
            // R-CANCEL-1: cancelling what is not in flight is refused.
            Misuse::CancelAny { id } => {
                let _ = self.q.cancel(RequestId(id));
            }
            Misuse::EndDrainAlone => {
                if self.q.drains() == 0 {
                    let _ = self.q.end_drain();
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> TestResult {
        match *step {
            Step::Submit {
                kind,
                offset,
                len,
                id,
            } => {
                // Reads are where the votes are: half of all requests.
                let req = match kind % 7 {
                    0..=2 => Request::Read { offset, len },
                    3 => Request::Write { offset, len },
                    4 => Request::WriteZeroes { offset, len },
                    5 => Request::BlockStatus { offset, len },
                    _ => Request::Flush,
                };
                let id = match id {
                    IdPick::Small(v) | IdPick::Any(v) => RequestId(v),
                    IdPick::Reuse(i) => match self.used_ids.get(i % self.used_ids.len().max(1)) {
                        Some(&id) => id,
                        None => RequestId(0),
                    },
                };
                let _ = self.submit(id, req);
            }
            Step::Complete { pick, choice } => {
                let ops = self.q.outstanding();
                if let Some(&(id, slot, op)) = ops.get(pick % ops.len().max(1)) {
                    self.complete(id, slot, op, choice)?;
                }
            }
            Step::Poll { count } => {
                for _ in 0..count {
                    if self.q.poll_action().is_none() {
                        break;
                    }
                }
            }
            Step::PollAll => while self.q.poll_action().is_some() {},
            Step::CompleteAll { seed } => {
                // A burst: every known child operation completes before the
                // driver polls again, the most actions the queue must hold.
                let mut ops = self.q.outstanding();
                let mut r = seed | 1;
                while !ops.is_empty() {
                    r = r.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
                    let (id, slot, op) = ops.remove((r >> 33) as usize % ops.len());
                    let choice = Choice {
                        ok: (r >> 7) % 4 != 0,
                        sym: (r >> 11) as u8 % 4,
                        errno: ERRNOS[(r >> 17) as usize % ERRNOS.len()],
                    };
                    self.complete(id, slot, op, choice)?;
                }
            }
            Step::Misuse(ref m) => self.misuse(m)?,
            Step::AddChild => {
                let _ = self.q.add_child();
            }
            Step::RemoveChild { pick } => {
                let children = self.q.children().to_vec();
                let _ = self.q.remove_child(children[pick % children.len()]);
            }
            // R-CANCEL-1..2: any request the core may hold, cancelled or not.
            Step::Cancel { pick } => {
                let reqs = self.q.requests();
                if let Some(r) = reqs.get(pick % reqs.len().max(1)) {
                    let _ = self.q.cancel(r.id);
                }
            }
            Step::StartDrain => self.q.start_drain(),
            Step::EndDrain => {
                if self.q.drains() > 0 {
                    let _ = self.q.end_drain();
                }
            }
        }
        Ok(())
    }

    /// Ends every drain, then polls and completes everything, correctly,
    /// until the core is idle.
    fn drain(&mut self) -> TestResult {
        while self.q.drains() > 0 {
            let _ = self.q.end_drain();
        }
        for _ in 0..100_000 {
            while self.q.poll_action().is_some() {}
            let ops = self.q.outstanding();
            if ops.is_empty() {
                break;
            }
            let i = (self.rand() % ops.len() as u64) as usize;
            let (id, slot, op) = ops[i];
            let r = self.rand();
            let choice = Choice {
                ok: !r.is_multiple_of(3),
                sym: (r >> 8) as u8 % 4,
                errno: ERRNOS[(r >> 16) as usize % ERRNOS.len()],
            };
            self.complete(id, slot, op, choice)?;
        }
        self.q.assert_finished();
        Ok(())
    }
}

fn run<const C: usize, const R: usize, const A: usize>(
    config: Config,
    steps: &[Step],
    seed: u64,
) -> TestResult {
    let mut h = Harness::<C, R, A>::new(config, seed)?;
    for s in steps {
        h.step(s)?;
    }
    h.drain()?;
    // Busy never sticks: an idle core takes the next request.
    let r = h.submit(RequestId(u64::MAX), Request::Flush);
    prop_assert_eq!(r, Ok(()), "an idle core refused a request");
    h.drain()
}

/// Fills the core with requests (polling their child operations each time)
/// until it says `Busy`, then answers every child operation at once before
/// polling again: the most actions the queue ever has to hold. With
/// threshold 1 and rewrite on, reads report and rewrite nearly every child.
fn fill_then_burst<const C: usize, const R: usize, const A: usize>(
    config: Config,
    kinds: &[u8],
    seed: u64,
) -> TestResult {
    let mut steps = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        steps.push(Step::Submit {
            kind,
            offset: 512 * (i as u64 % 3),
            len: 1024,
            id: IdPick::Any(i as u64),
        });
        steps.push(Step::PollAll);
    }
    steps.push(Step::CompleteAll { seed });
    run::<C, R, A>(config, &steps, seed)
}

// ---------------------------------------------------------------------------
// Generators.

#[derive(Clone, Copy, Debug)]
enum IdPick {
    /// From a handful of ids, so ids collide and get reused.
    Small(u64),
    Any(u64),
    /// An id submitted before (accepted or not).
    Reuse(usize),
}

#[derive(Clone, Debug)]
enum Misuse {
    /// A completion for an id with no request in flight.
    UnknownId {
        id: u64,
        op: u8,
        slot: usize,
        ok: bool,
    },
    /// A slot the request does not have.
    BadSlot { pick: usize, extra: usize, op: u8 },
    /// An outstanding child operation completed as another kind.
    WrongOp { pick: usize, op: u8 },
    /// A second completion.
    Duplicate { pick: usize, ok: bool },
    /// A successful read whose buffer is missing or of the wrong length,
    /// given where the core must look at it.
    BadBuffer { pick: usize, how: u8 },
    /// Submitting an id that is certainly in flight.
    DuplicateSubmit { pick: usize, offset: u64 },
    /// Removing a child that does not exist (R-MEMBER-3).
    RemoveUnknown { child: u32 },
    /// Cancelling any id: refused unless a request under it is in flight
    /// and not cancelled yet (R-CANCEL-1).
    CancelAny { id: u64 },
    /// Ending a drain that was never started.
    EndDrainAlone,
}

#[derive(Clone, Debug)]
enum Step {
    Submit {
        kind: u8,
        offset: u64,
        len: u64,
        id: IdPick,
    },
    Complete {
        pick: usize,
        choice: Choice,
    },
    Poll {
        count: u8,
    },
    PollAll,
    CompleteAll {
        seed: u64,
    },
    Misuse(Misuse),
    AddChild,
    RemoveChild {
        pick: usize,
    },
    /// Cancels a request the core may hold (R-CANCEL-1..2).
    Cancel {
        pick: usize,
    },
    /// Starts a drain (R-MEMBER-4); drains nest.
    StartDrain,
    /// Ends one, if any is under way.
    EndDrain,
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..4096,
        4 => (0u64..8).prop_map(|s| s * 512),
        1 => (0u64..4).prop_map(|d| i64::MAX as u64 - d),
        1 => (0u64..4).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=1100,
        4 => (0u64..=3).prop_map(|s| s * 512),
        1 => Just(1u64 << 40),
        1 => (0u64..4).prop_map(|d| i64::MAX as u64 - d),
        1 => (0u64..4).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

fn choice() -> impl Strategy<Value = Choice> {
    (prop::bool::weighted(0.7), 0u8..4, select(ERRNOS.to_vec()))
        .prop_map(|(ok, sym, errno)| Choice { ok, sym, errno })
}

fn misuse() -> impl Strategy<Value = Misuse> {
    prop_oneof![
        (any::<u64>(), any::<u8>(), 0usize..20, any::<bool>())
            .prop_map(|(id, op, slot, ok)| Misuse::UnknownId { id, op, slot, ok }),
        (
            any::<usize>(),
            select(vec![0usize, 1, 2, 63, 64, usize::MAX]),
            any::<u8>()
        )
            .prop_map(|(pick, extra, op)| Misuse::BadSlot { pick, extra, op }),
        (any::<usize>(), any::<u8>()).prop_map(|(pick, op)| Misuse::WrongOp { pick, op }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, ok)| Misuse::Duplicate { pick, ok }),
        (any::<usize>(), any::<u8>()).prop_map(|(pick, how)| Misuse::BadBuffer { pick, how }),
        (any::<usize>(), 0u64..4096)
            .prop_map(|(pick, offset)| Misuse::DuplicateSubmit { pick, offset }),
        (0u32..40).prop_map(|child| Misuse::RemoveUnknown { child }),
        prop_oneof![(0u64..8), any::<u64>()].prop_map(|id| Misuse::CancelAny { id }),
        Just(Misuse::EndDrainAlone),
    ]
}

/// A step; `cancels` weighs cancels and drains against everything else.
fn step(cancels: u32) -> impl Strategy<Value = Step> {
    let id = prop_oneof![
        4 => (0u64..6).prop_map(IdPick::Small),
        1 => any::<u64>().prop_map(IdPick::Any),
        2 => any::<usize>().prop_map(IdPick::Reuse),
    ];
    prop_oneof![
        5 => (0u8..6, offset(), len(), id)
            .prop_map(|(kind, offset, len, id)| Step::Submit { kind, offset, len, id }),
        8 => (any::<usize>(), choice()).prop_map(|(pick, choice)| Step::Complete { pick, choice }),
        3 => (1u8..8).prop_map(|count| Step::Poll { count }),
        1 => Just(Step::PollAll),
        1 => any::<u64>().prop_map(|seed| Step::CompleteAll { seed }),
        4 => misuse().prop_map(Step::Misuse),
        1 => Just(Step::AddChild),
        1 => any::<usize>().prop_map(|pick| Step::RemoveChild { pick }),
        2 * cancels => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        cancels => Just(Step::StartDrain),
        2 * cancels => Just(Step::EndDrain),
    ]
}

/// Steps for R-CANCEL: a handful of ids and narrow, overlapping ranges, so
/// that repairs hold writes back, reads overlap writes in flight, and the
/// requests cancelled are caught at every stage.
fn cancel_step() -> impl Strategy<Value = Step> {
    let id = prop_oneof![
        3 => (0u64..6).prop_map(IdPick::Small),
        1 => any::<usize>().prop_map(IdPick::Reuse),
    ];
    let offset = (0u64..4).prop_map(|k| k * 256);
    let len = (1u64..=3).prop_map(|k| k * 256);
    prop_oneof![
        6 => (0u8..6, offset, len, id)
            .prop_map(|(kind, offset, len, id)| Step::Submit { kind, offset, len, id }),
        8 => (any::<usize>(), choice()).prop_map(|(pick, choice)| Step::Complete { pick, choice }),
        3 => (1u8..8).prop_map(|count| Step::Poll { count }),
        2 => Just(Step::PollAll),
        1 => any::<u64>().prop_map(|seed| Step::CompleteAll { seed }),
        4 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        1 => Just(Step::StartDrain),
        2 => Just(Step::EndDrain),
        1 => misuse().prop_map(Step::Misuse),
    ]
}

/// 2..=`max` children with repairs on (R-READ-7, or fifo's), so that
/// cancelled requests leave rewrites running.
fn repair_config(max: usize) -> impl Strategy<Value = Config> {
    (2usize..=max)
        .prop_flat_map(|n| (Just(n), 1..=n, prop::bool::weighted(0.2), any::<bool>()))
        .prop_map(|(n, t, fifo, early)| {
            let pattern = if fifo {
                ReadPattern::Fifo
            } else {
                ReadPattern::Quorum
            };
            Config::new(n, t)
                .with_read_pattern(pattern)
                .with_rewrite_corrupted(true)
                .with_fifo_rewrite_failed(true)
                .with_early_quorum(early)
        })
}

/// 1..=`max` children, threshold 1..=n, quorum or fifo, rewrite on or off,
/// blkverify only where QEMU accepts it (2 children, threshold 2, no
/// rewrite; or fifo, which ignores it, R-CFG-6).
fn config(max: usize) -> impl Strategy<Value = Config> {
    let general = (1usize..=max)
        .prop_flat_map(|n| {
            (
                Just(n),
                1..=n,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(|(n, t, fifo, rewrite, blk, fifo_rewrite, early)| {
            let pattern = if fifo {
                ReadPattern::Fifo
            } else {
                ReadPattern::Quorum
            };
            Config::new(n, t)
                .with_read_pattern(pattern)
                .with_rewrite_corrupted(rewrite)
                .with_blkverify(blk && fifo)
                .with_fifo_rewrite_failed(fifo_rewrite)
                .with_early_quorum(early)
        });
    // Early quorum is ignored with blkverify (it must see both children).
    let blkverify = (any::<bool>(), any::<bool>()).prop_map(|(fifo_rewrite, early)| {
        Config::new(2, 2)
            .with_blkverify(true)
            .with_fifo_rewrite_failed(fifo_rewrite)
            .with_early_quorum(early)
    });
    prop_oneof![6 => general, 1 => blkverify]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Random use, misuse included, with the default capacities.
    #[test]
    fn random_use_never_panics_and_finishes_every_request(
        cfg in config(16),
        steps in vec(step(1), 0..120),
        seed in any::<u64>(),
    ) {
        run::<16, 32, 1024>(cfg, &steps, seed)?;
    }

    /// The same with a queue that holds one 16-child request at most
    /// (`A = 3C + 2`) and 4 requests in flight: `Busy` is common.
    #[test]
    fn random_use_small_queue_busy_paths(
        cfg in config(16),
        steps in vec(step(1), 0..120),
        seed in any::<u64>(),
    ) {
        run::<16, 4, 50>(cfg, &steps, seed)?;
    }

    /// The same with 4 children at most (adding hits the capacity) and 2
    /// requests in flight.
    #[test]
    fn random_use_tiny_capacities(
        cfg in config(4),
        steps in vec(step(1), 0..120),
        seed in any::<u64>(),
    ) {
        run::<4, 2, 14>(cfg, &steps, seed)?;
    }

    /// R-CANCEL-1..2 and the drain gate (R-MEMBER-4) drawn often: cancels of
    /// requests at every stage (unpolled, partly answered, decided and
    /// repairing, early-answered), their operations completed afterwards in
    /// any order, ids reused once free, drains started and ended around them.
    #[test]
    fn random_use_r_cancel_and_drains(
        cfg in config(6),
        steps in vec(step(6), 0..160),
        seed in any::<u64>(),
    ) {
        run::<8, 4, 26>(cfg, &steps, seed)?;
    }

    /// R-CANCEL-2 with overlapping ranges and repairs on: a cancelled
    /// request's rewrites still hold later writes back, a held write that is
    /// cancelled never starts, a cancelled write still in flight forbids
    /// repairs, and the id stays taken until its operations end.
    #[test]
    fn random_use_r_cancel_2_overlapping_repairs(
        cfg in repair_config(5),
        steps in vec(cancel_step(), 0..160),
        seed in any::<u64>(),
    ) {
        run::<8, 4, 26>(cfg, &steps, seed)?;
    }
}

/// A configuration for [`fill_then_burst`]: up to `max` children, threshold
/// 1, rewrite on (or fifo with its repair), early quorum on or off (an
/// answer is one more action in the reservation).
fn burst_config(max: usize) -> impl Strategy<Value = Config> {
    (1usize..=max, any::<bool>(), any::<bool>()).prop_map(|(n, fifo, early)| {
        let pattern = if fifo {
            ReadPattern::Fifo
        } else {
            ReadPattern::Quorum
        };
        Config::new(n, 1)
            .with_read_pattern(pattern)
            .with_rewrite_corrupted(true)
            .with_fifo_rewrite_failed(true)
            .with_early_quorum(early)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The reservation holds: however full, the queue never overflows.
    #[test]
    fn full_core_answered_at_once_never_overflows(
        cfg in burst_config(16),
        kinds in vec(prop_oneof![3 => Just(0u8), 1 => 3u8..6], 6),
        seed in any::<u64>(),
    ) {
        fill_then_burst::<16, 4, 50>(cfg, &kinds, seed)?;
    }

    /// The same with 4 children and 2 requests at most.
    #[test]
    fn full_tiny_core_answered_at_once_never_overflows(
        cfg in burst_config(4),
        kinds in vec(prop_oneof![3 => Just(0u8), 1 => 3u8..6], 4),
        seed in any::<u64>(),
    ) {
        fill_then_burst::<4, 2, 14>(cfg, &kinds, seed)?;
    }
}

// ---------------------------------------------------------------------------
// (b) Completion order does not change the outcome.

#[derive(Clone, Debug)]
struct OrderCase {
    cfg: Config,
    req: Request,
    /// Each child's answer: its content symbol, or its error.
    answers: Vec<Result<u8, Errno>>,
    /// Two completion orders of the child operations, and of the rewrites.
    orders: [Vec<usize>; 2],
    rewrite_orders: [Vec<usize>; 2],
    rewrite_ok: Vec<bool>,
}

#[derive(Debug)]
struct Trace {
    outcome: Outcome,
    events: Vec<Event>,
    rewrites: Vec<(usize, ChildId, usize)>,
}

fn order_case() -> impl Strategy<Value = OrderCase> {
    (1usize..=8)
        .prop_flat_map(|n| {
            let perm = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
            let answer = prop_oneof![
                3 => (0u8..3).prop_map(Ok),
                1 => select(ERRNOS[..3].to_vec()).prop_map(Err),
            ];
            (
                (Just(n), 1..=n, any::<bool>(), any::<bool>()),
                (0u8..4, 0u64..2048, 0u64..=64),
                vec(answer, n),
                (perm.clone(), perm.clone(), perm.clone(), perm),
                vec(any::<bool>(), n),
            )
        })
        .prop_map(
            |((n, t, rewrite, blk), (kind, offset, len), answers, (o1, o2, r1, r2), rewrite_ok)| {
                let req = match kind {
                    0 | 1 => Request::Read { offset, len },
                    2 => Request::Write { offset, len },
                    _ => Request::Flush,
                };
                let blk = blk && n == 2 && t == 2 && !rewrite;
                OrderCase {
                    cfg: Config::new(n, t)
                        .with_rewrite_corrupted(rewrite)
                        .with_blkverify(blk),
                    req,
                    answers,
                    orders: [o1, o2],
                    rewrite_orders: [r1, r2],
                    rewrite_ok,
                }
            },
        )
}

/// The slot of a pending child operation, and whether it is a rewrite.
fn slot_of(a: &Action) -> (usize, bool) {
    match *a {
        Action::Read { slot, .. }
        | Action::Write { slot, .. }
        | Action::WriteZeroes { slot, .. }
        | Action::Flush { slot, .. } => (slot, false),
        Action::Rewrite { slot, .. } => (slot, true),
        _ => (usize::MAX, false),
    }
}

/// Runs `case` through the kit's in-memory driver over scripted children,
/// completing child operations in `orders[which]` and rewrites in
/// `rewrite_orders[which]`.
fn run_in_order(case: &OrderCase, which: usize) -> Result<Trace, TestCaseError> {
    let checker: Checker =
        Checker::new(case.cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let len = case.req.range().1;
    let mut script = Script::new();
    for (c, a) in case.answers.iter().enumerate() {
        let child = ChildId(c as u32);
        script.read(child, a.map(|s| pattern(s, len)));
        script.result(child, a.map(|_| ()));
    }
    let mut d = MemDriver::with_disks(checker, script);
    for (c, &ok) in case.rewrite_ok.iter().enumerate() {
        if !ok {
            d.faults.rewrite.insert(ChildId(c as u32), Errno::EIO);
        }
    }
    let id = RequestId(7);
    d.try_submit(id, case.req, None)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    d.poll();
    for &slot in &case.orders[which] {
        let pos = d.pending().iter().position(|a| slot_of(a) == (slot, false));
        prop_assert!(pos.is_some(), "slot {} was not issued", slot);
        d.perform(pos.unwrap_or(0));
        d.poll();
    }
    for &slot in &case.rewrite_orders[which] {
        if let Some(pos) = d.pending().iter().position(|a| slot_of(a) == (slot, true)) {
            d.perform(pos);
            d.poll();
        }
    }
    prop_assert!(d.pending().is_empty(), "never completed: {:?}", d.pending());
    prop_assert!(d.checker().is_idle());
    let rewrites = d
        .log()
        .iter()
        .filter_map(|a| match *a {
            Action::Rewrite {
                slot,
                child,
                source,
                ..
            } => Some((slot, child, source)),
            _ => None,
        })
        .collect();
    match d.try_outcome(id) {
        Some(outcome) => Ok(Trace {
            outcome,
            events: d.events_of(id),
            rewrites,
        }),
        None => Err(TestCaseError::fail("the request never completed")),
    }
}

fn is_error_report(e: &Event) -> bool {
    matches!(e, Event::ReportBad { error: Some(_), .. })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Two completion orders, same outcome, same content-mismatch reports in
    /// the same (R-VOTE-4) order, same FAILURE, same rewrites; I/O error
    /// reports are the same set, each run in its own completion order.
    #[test]
    fn outcome_does_not_depend_on_completion_order(case in order_case()) {
        let a = run_in_order(&case, 0)?;
        let b = run_in_order(&case, 1)?;
        prop_assert_eq!(a.outcome, b.outcome);
        prop_assert_eq!(&a.rewrites, &b.rewrites);
        let decided = |t: &Trace| -> Vec<Event> {
            t.events.iter().filter(|e| !is_error_report(e)).copied().collect()
        };
        prop_assert_eq!(decided(&a), decided(&b));
        for (t, order) in [(&a, &case.orders[0]), (&b, &case.orders[1])] {
            // Error reports come first, as the children fail, then what the
            // decision emits.
            let k = t.events.iter().take_while(|e| is_error_report(e)).count();
            prop_assert!(
                t.events[k..].iter().all(|e| !is_error_report(e)),
                "an error report after the decision: {:?}",
                t.events
            );
            let reported: Vec<ChildId> = t.events[..k]
                .iter()
                .map(|e| match e {
                    Event::ReportBad { child, .. } => *child,
                    Event::Failure { .. } => ChildId(u32::MAX),
                })
                .collect();
            let failed_in_order: Vec<ChildId> = order
                .iter()
                .filter(|&&s| case.answers[s].is_err())
                .map(|&s| ChildId(s as u32))
                .collect();
            prop_assert_eq!(reported, failed_in_order);
        }
        let mut ea: Vec<String> = a.events.iter().map(|e| format!("{e:?}")).collect();
        let mut eb: Vec<String> = b.events.iter().map(|e| format!("{e:?}")).collect();
        ea.sort();
        eb.sort();
        prop_assert_eq!(ea, eb, "different multisets of events");
    }
}
