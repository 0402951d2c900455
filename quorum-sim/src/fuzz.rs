//! Fuzzing entry points, shared by the cargo-fuzz targets (`fuzz/`) and the
//! stable corpus test (`tests/fuzz_corpus.rs`).
//!
//! * [`core_api`] reads its input as a sequence of calls on the raw core —
//!   valid ones and misuse alike — and checks the core's contract: it never
//!   panics, misuse changes nothing, every accepted request completes exactly
//!   once, no action follows a request's completion, and the core is idle
//!   once every child operation has been completed. With early quorum (a
//!   configuration bit) a read is answered at most once, exactly when a model
//!   of the rule says (the first non-last success that makes `threshold`
//!   successes agree, naming the group's lowest slot), before its completion,
//!   which repeats the answer.
//! * [`simulate`] runs the simulator with every decision taken from the
//!   input (early quorum included, a configuration bit), and fails when an
//!   invariant breaks.
//!
//! Both panic on a contract violation, which is what a fuzzer reports.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use quorum_proto::{
    Action, ChildId, Config, Errno, Error, Event, MemberError, NoBuffers, OpType, Outcome, Quorum,
    ReadPattern, Request, RequestId,
};

use crate::config::{Faults, Mode, SimConfig};
use crate::rng::Rng;
use crate::sim::Sim;

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

/// A child operation's kind, as completions name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Read,
    Write,
    Flush,
    Rewrite,
}

impl Op {
    const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Flush, Op::Rewrite];

    /// Whether a request of this kind can ever issue `self`.
    fn possible_for(self, req: &Request) -> bool {
        matches!(
            (self, req),
            (Op::Read | Op::Rewrite, Request::Read { .. })
                | (
                    Op::Write,
                    Request::Write { .. } | Request::WriteZeroes { .. }
                )
                | (Op::Flush, Request::Flush)
        )
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

/// One accepted submission, from `submit` to its `Complete`.
#[derive(Debug)]
struct Gen {
    req: Request,
    children: Vec<ChildId>,
    /// Read buffers by slot (reads of at most [`CAP`] bytes).
    bufs: Option<Vec<Vec<u8>>>,
    /// Child operations seen in polled actions.
    issued: BTreeSet<(usize, Op)>,
    /// Polled and not yet completed.
    outstanding: BTreeSet<(usize, Op)>,
    /// Completed (accepted) before their action was polled.
    early: BTreeSet<(usize, Op)>,
    /// Every accepted completion.
    completed: BTreeSet<(usize, Op)>,
    /// Each slot's read, write or flush result.
    results: Vec<Option<Result<(), Errno>>>,
    /// Every error given to this request.
    errnos: Vec<Errno>,
    /// Early quorum: the answer the core owes, from the first accepted
    /// successful read (not the request's last) after which `threshold`
    /// successes hold the same bytes.
    answer_due: Option<Outcome>,
    /// The `Action::Answer` polled, if any.
    answered: Option<Outcome>,
}

impl Gen {
    fn n(&self) -> usize {
        self.children.len()
    }

    fn oks(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|&s| self.results[s] == Some(Ok(())))
            .collect()
    }

    fn buf(&self, slot: usize) -> &[u8] {
        self.bufs
            .as_ref()
            .and_then(|b| b.get(slot))
            .map_or(&[][..], Vec::as_slice)
    }

    /// How many successful slots hold the same bytes as `slot`.
    fn group(&self, slot: usize) -> usize {
        self.oks()
            .into_iter()
            .filter(|&s| self.buf(s) == self.buf(slot))
            .count()
    }
}

/// The driver: the core, plus a model of what it was asked and what it said.
struct Driver<const C: usize, const R: usize, const A: usize> {
    q: Quorum<C, R, A>,
    cfg: Config,
    /// By request id: accepted submissions whose `Complete` is not yet
    /// polled, oldest first. Only the newest can be in flight in the core.
    gens: BTreeMap<u64, VecDeque<Gen>>,
    next_id: u64,
    /// Compare the whole core state around refused calls (small cores only:
    /// it formats the state twice per call).
    deep: bool,
}

/// A cheap summary of the core's observable state.
fn fingerprint<const C: usize, const R: usize, const A: usize>(
    q: &Quorum<C, R, A>,
) -> (usize, bool, Vec<ChildId>) {
    (q.in_flight(), q.is_idle(), q.children().to_vec())
}

impl<const C: usize, const R: usize, const A: usize> Driver<C, R, A> {
    fn state(&self) -> Option<String> {
        self.deep.then(|| format!("{:?}", self.q))
    }

    fn unchanged(&self, before: &(usize, bool, Vec<ChildId>), deep: Option<String>, what: &str) {
        assert_eq!(
            *before,
            fingerprint(&self.q),
            "{what} was refused but changed the core"
        );
        if let Some(d) = deep {
            assert!(
                d == format!("{:?}", self.q),
                "{what} was refused but changed the core's state"
            );
        }
    }

    // ---- submit -------------------------------------------------------

    fn pick_id(&mut self, inp: &mut Input<'_>) -> u64 {
        match inp.u8() % 8 {
            0..=3 => {
                self.next_id += 1;
                self.next_id
            }
            4 | 5 => inp.u8() as u64 % 8,
            6 => {
                let keys: Vec<u64> = self.gens.keys().copied().collect();
                if keys.is_empty() {
                    0
                } else {
                    keys[inp.below(keys.len())]
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
            _ => Request::Flush,
        };
        let (o, l) = req.range();
        let children = self.q.children().to_vec();
        let n = children.len();
        let bufs = match req {
            Request::Read { len, .. } if len <= CAP => Some(read_buffers(inp, n, len as usize)),
            _ => None,
        };
        let invalid = o.checked_add(l).is_none_or(|end| end > i64::MAX as u64);
        let before = fingerprint(&self.q);
        let deep = self.state();
        match self.q.submit(RequestId(id), req) {
            Ok(()) => {
                assert!(!invalid, "submit accepted an invalid range {o}+{l}");
                assert_eq!(
                    self.q.in_flight(),
                    before.0 + 1,
                    "an accepted submit did not add a request in flight"
                );
                self.gens.entry(id).or_default().push_back(Gen {
                    req,
                    children,
                    bufs,
                    issued: BTreeSet::new(),
                    outstanding: BTreeSet::new(),
                    early: BTreeSet::new(),
                    completed: BTreeSet::new(),
                    results: vec![None; n],
                    errnos: Vec::new(),
                    answer_due: None,
                    answered: None,
                });
            }
            Err(e) => {
                self.unchanged(&before, deep, "submit");
                match e {
                    Error::InvalidRange { offset, len } => {
                        assert!(invalid, "submit refused a valid range {o}+{l}");
                        assert_eq!((offset, len), (o, l), "InvalidRange names another range");
                    }
                    _ if invalid => panic!("submit of the invalid range {o}+{l} said {e:?}"),
                    Error::DuplicateId(x) => {
                        assert_eq!(x.0, id, "DuplicateId names another id");
                        assert!(
                            self.gens.get(&id).is_some_and(|d| !d.is_empty()),
                            "submit #{id}: DuplicateId although no request #{id} is in flight"
                        );
                    }
                    Error::Busy => {}
                    other => panic!("submit #{id} refused with {other:?}"),
                }
            }
        }
    }

    // ---- actions ------------------------------------------------------

    /// Polls and checks one action; false when there was none.
    fn poll_one(&mut self) -> bool {
        let Some(a) = self.q.poll_action() else {
            return false;
        };
        let id = a.id().0;
        let Some(gen_) = self.gens.get_mut(&id).and_then(VecDeque::front_mut) else {
            panic!(
                "{a:?}: an action for a request that is not in flight (never accepted, or already completed)"
            );
        };
        let (ro, rl) = gen_.req.range();
        let n = gen_.n();
        let check_child = |slot: usize, child: ChildId| {
            assert!(slot < n, "{a:?}: slot {slot} of a request with {n} slots");
            assert_eq!(
                child, gen_.children[slot],
                "{a:?}: slot {slot} is another child"
            );
        };
        match a {
            Action::Read {
                slot,
                child,
                offset,
                len,
                ..
            }
            | Action::Write {
                slot,
                child,
                offset,
                len,
                ..
            }
            | Action::WriteZeroes {
                slot,
                child,
                offset,
                len,
                ..
            } => {
                check_child(slot, child);
                let matches = matches!(
                    (&a, &gen_.req),
                    (Action::Read { .. }, Request::Read { .. })
                        | (Action::Write { .. }, Request::Write { .. })
                        | (Action::WriteZeroes { .. }, Request::WriteZeroes { .. })
                );
                assert!(matches, "{a:?} for a {:?}", gen_.req);
                assert_eq!((offset, len), (ro, rl), "{a:?}: not the request's range");
                let op = if matches!(a, Action::Read { .. }) {
                    Op::Read
                } else {
                    Op::Write
                };
                issue(gen_, slot, op, &a);
            }
            Action::Flush { slot, child, .. } => {
                check_child(slot, child);
                assert!(
                    matches!(gen_.req, Request::Flush),
                    "{a:?} for a {:?}",
                    gen_.req
                );
                issue(gen_, slot, Op::Flush, &a);
            }
            Action::Rewrite {
                slot,
                child,
                source,
                offset,
                len,
                ..
            } => {
                check_child(slot, child);
                assert!(
                    matches!(gen_.req, Request::Read { .. }),
                    "{a:?} for a {:?}",
                    gen_.req
                );
                assert_eq!((offset, len), (ro, rl), "{a:?}: not the request's range");
                assert!(source < n && source != slot, "{a:?}: bad source slot");
                assert_eq!(
                    gen_.results[source],
                    Some(Ok(())),
                    "{a:?}: the source slot's read did not succeed"
                );
                match self.cfg.read_pattern {
                    ReadPattern::Quorum => {
                        assert!(
                            self.cfg.rewrite_corrupted,
                            "{a:?} without rewrite-corrupted"
                        );
                        assert_eq!(
                            gen_.results[slot],
                            Some(Ok(())),
                            "{a:?}: rewrites a slot whose read failed"
                        );
                        assert!(
                            gen_.buf(slot) != gen_.buf(source),
                            "{a:?}: rewrites a slot that agrees with the winner"
                        );
                    }
                    ReadPattern::Fifo => {
                        assert!(
                            self.cfg.fifo_rewrite_failed,
                            "{a:?} in fifo mode without the repair option"
                        );
                        assert!(
                            matches!(gen_.results[slot], Some(Err(_))) && slot < source,
                            "{a:?}: fifo repairs only children that failed before the answer"
                        );
                    }
                }
                issue(gen_, slot, Op::Rewrite, &a);
            }
            Action::Answer { outcome, .. } => {
                assert!(
                    self.cfg.early_quorum,
                    "{a:?}: an early answer without early quorum"
                );
                assert!(
                    matches!(gen_.req, Request::Read { .. }),
                    "{a:?} for a {:?}",
                    gen_.req
                );
                assert!(
                    gen_.answered.is_none(),
                    "{a:?}: answered twice (first {:?})",
                    gen_.answered
                );
                assert_eq!(
                    Some(outcome),
                    gen_.answer_due,
                    "{a:?}: not the answer the first {} agreeing successes give",
                    self.cfg.threshold
                );
                gen_.answered = Some(outcome);
            }
            Action::Event { event, .. } => match event {
                Event::ReportBad {
                    op,
                    child,
                    sector_num,
                    sectors_count,
                    ..
                } => {
                    assert!(
                        gen_.children.contains(&child),
                        "{a:?}: reports a child outside the request's child set"
                    );
                    let (want_op, want_secs) = match gen_.req {
                        Request::Read { .. } => (OpType::Read, sectors(ro, rl)),
                        Request::Write { .. } | Request::WriteZeroes { .. } => {
                            (OpType::Write, sectors(ro, rl))
                        }
                        Request::Flush => (OpType::Flush, (0, 0)),
                    };
                    assert_eq!(op, want_op, "{a:?}: wrong operation type");
                    assert_eq!(
                        (sector_num, sectors_count),
                        want_secs,
                        "{a:?}: wrong sectors"
                    );
                }
                Event::Failure {
                    sector_num,
                    sectors_count,
                } => {
                    let fifo_read = matches!(gen_.req, Request::Read { .. })
                        && self.cfg.read_pattern == ReadPattern::Fifo;
                    assert!(
                        !matches!(gen_.req, Request::Flush) && !fifo_read,
                        "{a:?}: QUORUM_FAILURE for a {:?} ({})",
                        gen_.req,
                        self.cfg.read_pattern
                    );
                    assert_eq!(
                        (sector_num, sectors_count),
                        sectors(ro, rl),
                        "{a:?}: wrong sectors"
                    );
                }
            },
            Action::Complete { outcome, .. } => {
                let done = self
                    .gens
                    .get_mut(&id)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or_else(|| unreachable!("checked above"));
                if self.gens.get(&id).is_some_and(VecDeque::is_empty) {
                    self.gens.remove(&id);
                }
                self.check_outcome(id, &done, outcome);
            }
        }
        true
    }

    fn check_outcome(&self, id: u64, g: &Gen, outcome: Outcome) {
        let what = format!("request #{id} ({:?}) completed with {outcome:?}", g.req);
        assert!(
            g.outstanding.is_empty(),
            "{what} while child operations {:?} were outstanding",
            g.outstanding
        );
        assert!(
            g.early.is_empty(),
            "{what} although operations {:?} it completed were never issued",
            g.early
        );
        let t = self.cfg.threshold;
        let n = g.n();
        let oks = g.oks();
        let error_ok = |e: Errno| g.errnos.contains(&e);
        // Early quorum: an answered read completes with its answer, polled
        // before the completion; the answered group need not be the largest
        // version (threshold ≤ n/2), so the vote checks below do not apply.
        assert_eq!(
            g.answered, g.answer_due,
            "{what}: the answer owed and the answer polled differ"
        );
        if let Some(answer) = g.answered {
            assert_eq!(outcome, answer, "{what}: not the early answer");
            assert!(
                g.results.iter().all(Option::is_some),
                "{what} before every child answered: {:?}",
                g.results
            );
            return;
        }
        match g.req {
            Request::Read { offset, .. } if self.cfg.read_pattern == ReadPattern::Quorum => {
                assert!(
                    g.results.iter().all(Option::is_some),
                    "{what} before every child answered: {:?}",
                    g.results
                );
                if oks.len() < t {
                    let ok = matches!(outcome, Outcome::Failed(e) if error_ok(e));
                    assert!(
                        ok,
                        "{what}: expected a voted error ({} successes)",
                        oks.len()
                    );
                    return;
                }
                if self.cfg.blkverify {
                    let first = oks[0];
                    let diff = oks[1..].iter().find_map(|&s| {
                        let (a, b) = (g.buf(first), g.buf(s));
                        (a != b).then(|| {
                            a.iter()
                                .zip(b)
                                .position(|(x, y)| x != y)
                                .unwrap_or(a.len().min(b.len()))
                        })
                    });
                    if let Some(at) = diff {
                        assert_eq!(
                            outcome,
                            Outcome::ContentsMismatch {
                                offset: offset + at as u64
                            },
                            "{what}"
                        );
                        return;
                    }
                }
                let best = oks.iter().map(|&s| g.group(s)).max().unwrap_or(0);
                if best < t {
                    assert_eq!(outcome, Outcome::Failed(Errno::EIO), "{what}: no quorum");
                    return;
                }
                let Outcome::Read { slot, child } = outcome else {
                    panic!("{what}: {best} of {n} agree, threshold {t}");
                };
                assert!(slot < n && child == g.children[slot], "{what}: bad slot");
                assert_eq!(g.results[slot], Some(Ok(())), "{what}: that slot failed");
                assert_eq!(g.group(slot), best, "{what}: not the largest version");
            }
            Request::Read { .. } => match outcome {
                // R-FIFO: children in order until one answers.
                Outcome::Read { slot, child } => {
                    assert!(slot < n && child == g.children[slot], "{what}: bad slot");
                    assert_eq!(g.results[slot], Some(Ok(())), "{what}: that slot failed");
                    assert!(
                        g.results[..slot].iter().all(|r| matches!(r, Some(Err(_))))
                            && g.results[slot + 1..].iter().all(Option::is_none),
                        "{what}: not the first child to answer: {:?}",
                        g.results
                    );
                }
                Outcome::Failed(e) => {
                    assert!(
                        g.results.iter().all(|r| matches!(r, Some(Err(_)))),
                        "{what}: a child answered: {:?}",
                        g.results
                    );
                    assert_eq!(g.results[n - 1], Some(Err(e)), "{what}: not the last error");
                }
                _ => panic!("{what}: impossible outcome for a fifo read"),
            },
            Request::Write { .. } | Request::WriteZeroes { .. } | Request::Flush => {
                assert!(
                    g.results.iter().all(Option::is_some),
                    "{what} before every child answered: {:?}",
                    g.results
                );
                match outcome {
                    Outcome::Done => {
                        assert!(oks.len() >= t, "{what} with {} successes", oks.len())
                    }
                    Outcome::Failed(e) => {
                        assert!(oks.len() < t, "{what} with {} successes", oks.len());
                        assert!(error_ok(e), "{what}: an error no child returned");
                    }
                    _ => panic!("{what}: impossible outcome"),
                }
            }
        }
    }

    // ---- completions --------------------------------------------------

    /// Calls the core's completion for `op` and checks the answer against
    /// the model: right calls must be accepted, wrong ones refused unchanged.
    fn complete(
        &mut self,
        id: u64,
        slot: usize,
        op: Op,
        mut result: Result<(), Errno>,
        bufs: Bufs,
    ) -> Result<(), Error> {
        let back = self.gens.get(&id).and_then(VecDeque::back);
        if op == Op::Read && back.is_some_and(|g| g.bufs.is_none()) && result.is_ok() {
            // No buffers exist for this read: a success could never be voted.
            result = Err(Errno::EIO);
        }
        let valid = back.is_some_and(|g| g.outstanding.contains(&(slot, op)));
        let duplicate = back.is_some_and(|g| g.completed.contains(&(slot, op)));
        let impossible = back.is_some_and(|g| !op.possible_for(&g.req));
        let unknown = back.is_none();
        let no_slot = back.is_some_and(|g| slot >= g.n());

        let before = fingerprint(&self.q);
        let deep = self.state();
        let rid = RequestId(id);
        let right: &[Vec<u8>] = self
            .gens
            .get(&id)
            .and_then(VecDeque::back)
            .and_then(|g| g.bufs.as_deref())
            .unwrap_or(&[]);
        let r = match op {
            Op::Read => match bufs {
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
                    self.q
                        .handle_read(rid, slot, result, &right[..k.min(right.len())])
                }
            },
            Op::Write => self.q.handle_write(rid, slot, result),
            Op::Flush => self.q.handle_flush(rid, slot, result),
            Op::Rewrite => self.q.handle_rewrite(rid, slot, result),
        };
        let call = || format!("handle_{op:?}(#{id}, slot {slot}, {result:?}, {bufs:?})");
        match r {
            Ok(()) => {
                assert!(!unknown, "{} accepted for a request not in flight", call());
                assert!(!no_slot, "{} accepted for a slot the request lacks", call());
                assert!(
                    !impossible,
                    "{} accepted: that request never issues a {op:?}",
                    call()
                );
                assert!(!duplicate, "{} accepted twice", call());
                let g = self
                    .gens
                    .get_mut(&id)
                    .and_then(VecDeque::back_mut)
                    .unwrap_or_else(|| unreachable!("checked above"));
                g.completed.insert((slot, op));
                if !g.outstanding.remove(&(slot, op)) {
                    g.early.insert((slot, op));
                }
                if op != Op::Rewrite {
                    g.results[slot] = Some(result);
                }
                // Early quorum: a success that is not the request's last
                // answers once `threshold` successes hold its bytes.
                let t = self.cfg.threshold;
                if op == Op::Read
                    && result.is_ok()
                    && self.cfg.early_quorum
                    && g.answer_due.is_none()
                    && g.results.iter().any(Option::is_none)
                {
                    let group: Vec<usize> = g
                        .oks()
                        .into_iter()
                        .filter(|&s| g.buf(s) == g.buf(slot))
                        .collect();
                    if group.len() >= t {
                        g.answer_due = Some(Outcome::Read {
                            slot: group[0],
                            child: g.children[group[0]],
                        });
                    }
                }
                if let Err(e) = result {
                    g.errnos.push(e);
                }
            }
            Err(e) => {
                self.unchanged(&before, deep, &call());
                let names_call = match e {
                    Error::UnknownRequest(x) => x == rid,
                    Error::NoSuchSlot { id: x, slot: s } => x == rid && s == slot,
                    Error::UnexpectedCompletion { id: x, slot: s, .. } => x == rid && s == slot,
                    Error::BadBuffer { id: x, .. } => x == rid && op == Op::Read,
                    _ => false,
                };
                assert!(
                    names_call,
                    "{} refused with an unrelated error {e:?}",
                    call()
                );
                if unknown {
                    assert_eq!(e, Error::UnknownRequest(rid), "{}", call());
                }
                if valid {
                    // Only the buffers may be wrong: a read's last completion needs
                    // every successful slot's buffer, whatever its own result.
                    let bad_buffers = op == Op::Read && bufs != Bufs::Right;
                    assert!(
                        bad_buffers && matches!(e, Error::BadBuffer { .. }),
                        "{}: a completion the core asked for was refused: {e:?}",
                        call()
                    );
                }
            }
        }
        r
    }

    fn outstanding(&self) -> Vec<(u64, usize, Op)> {
        self.gens
            .iter()
            .flat_map(|(&id, d)| {
                d.iter()
                    .flat_map(move |g| g.outstanding.iter().map(move |&(s, op)| (id, s, op)))
            })
            .collect()
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
                self.poll_one();
            }
            6 => while self.poll_one() {},
            7..=10 => {
                // A completion the core asked for.
                let out = self.outstanding();
                if !out.is_empty() {
                    let (id, slot, op) = out[inp.below(out.len())];
                    let result = inp.result();
                    let bufs = Self::pick_bufs(inp);
                    let _ = self.complete(id, slot, op, result, bufs);
                }
            }
            11 => {
                // Anything at all.
                let id = match inp.u8() % 3 {
                    0 => inp.u8() as u64 % 8,
                    1 => self.next_id.saturating_sub(inp.u8() as u64 % 8),
                    _ => inp.u64(),
                };
                let slot = inp.below(70);
                let op = Op::ALL[inp.below(4)];
                let result = inp.result();
                let bufs = Self::pick_bufs(inp);
                let _ = self.complete(id, slot, op, result, bufs);
            }
            12 => {
                // The same completion again.
                let done: Vec<(u64, usize, Op)> = self
                    .gens
                    .iter()
                    .filter_map(|(&id, d)| d.back().map(|g| (id, g)))
                    .flat_map(|(id, g)| g.completed.iter().map(move |&(s, op)| (id, s, op)))
                    .collect();
                if !done.is_empty() {
                    let (id, slot, op) = done[inp.below(done.len())];
                    let result = inp.result();
                    let _ = self.complete(id, slot, op, result, Bufs::Right);
                }
            }
            13 => {
                // The right request and slot, the wrong kind of completion.
                let out = self.outstanding();
                if !out.is_empty() {
                    let (id, slot, op) = out[inp.below(out.len())];
                    let other = Op::ALL[(op as usize + 1 + inp.below(3)) % 4];
                    let result = inp.result();
                    let _ = self.complete(id, slot, other, result, Bufs::Right);
                }
            }
            14 => {
                // A known request, a slot it does not have.
                let out = self.outstanding();
                if !out.is_empty() {
                    let (id, _, op) = out[inp.below(out.len())];
                    let slot = C + inp.below(8);
                    let _ = self.complete(id, slot, op, Ok(()), Bufs::Right);
                }
            }
            15 => self.add_child(),
            16 | 17 => self.remove_child(inp),
            18 => {
                // Complete everything outstanding, correctly.
                for (id, slot, op) in self.outstanding() {
                    let result = inp.result();
                    let _ = self.complete(id, slot, op, result, Bufs::Right);
                }
            }
            _ => {
                let _ = self.q.config();
                let _ = self.q.in_flight();
                let _ = self.q.is_idle();
            }
        }
    }

    fn add_child(&mut self) {
        let before = self.q.children().to_vec();
        let (fp, deep) = (fingerprint(&self.q), self.state());
        match self.q.add_child() {
            Ok(id) => {
                assert!(!self.cfg.blkverify, "add_child accepted in blkverify mode");
                assert!(!before.contains(&id), "add_child reused the name of {id}");
                let mut want = before;
                want.push(id);
                assert_eq!(self.q.children(), want.as_slice(), "add_child");
            }
            Err(e) => {
                self.unchanged(&fp, deep, "add_child");
                match e {
                    MemberError::Blkverify => assert!(self.cfg.blkverify, "add_child: {e}"),
                    MemberError::TooManyChildren => {
                        assert_eq!(before.len(), C, "add_child: {e}")
                    }
                    other => panic!("add_child refused with {other:?}"),
                }
            }
        }
    }

    fn remove_child(&mut self, inp: &mut Input<'_>) {
        let before = self.q.children().to_vec();
        let victim = if before.is_empty() || inp.u8().is_multiple_of(4) {
            ChildId(inp.u8() as u32 % 80)
        } else {
            before[inp.below(before.len())]
        };
        let (fp, deep) = (fingerprint(&self.q), self.state());
        match self.q.remove_child(victim) {
            Ok(()) => {
                assert!(before.contains(&victim), "removed {victim}, not a child");
                assert!(
                    before.len() > self.cfg.threshold,
                    "removing {victim} left fewer children than the threshold"
                );
                let want: Vec<ChildId> = before.into_iter().filter(|&c| c != victim).collect();
                assert_eq!(self.q.children(), want.as_slice(), "remove_child");
            }
            Err(e) => {
                self.unchanged(&fp, deep, "remove_child");
                match e {
                    MemberError::NoSuchChild(c) => {
                        assert!(
                            c == victim && !before.contains(&victim),
                            "remove_child: {e}"
                        )
                    }
                    MemberError::BelowThreshold { threshold } => assert!(
                        threshold == self.cfg.threshold && before.len() <= threshold,
                        "remove_child: {e}"
                    ),
                    other => panic!("remove_child refused with {other:?}"),
                }
            }
        }
    }

    /// Completes everything correctly until the core has nothing left, then
    /// checks that every accepted request completed and the core is idle.
    fn drain(&mut self) {
        // Each round completes at least one child operation, and a request
        // issues at most 2 per child, so this bound is never reached by a
        // correct core.
        let limit = 4 * R * C + 8;
        for _ in 0..limit {
            while self.poll_one() {}
            let out = self.outstanding();
            if out.is_empty() {
                break;
            }
            for (id, slot, op) in out {
                if let Err(e) = self.complete(id, slot, op, Ok(()), Bufs::Right) {
                    panic!("drain: the core refused a completion it asked for: {e}");
                }
            }
        }
        assert!(
            self.outstanding().is_empty(),
            "drain made no progress in {limit} rounds"
        );
        let lost: Vec<(u64, Request)> = self
            .gens
            .iter()
            .flat_map(|(&id, d)| d.iter().map(move |g| (id, g.req)))
            .collect();
        assert!(
            lost.is_empty(),
            "requests never completed although nothing is outstanding: {lost:?}"
        );
        assert_eq!(self.q.in_flight(), 0, "requests left in flight");
        assert!(self.q.is_idle(), "the core is not idle after the drain");
    }
}

/// Records that `slot`'s `op` was issued.
fn issue(g: &mut Gen, slot: usize, op: Op, a: &Action) {
    assert!(g.issued.insert((slot, op)), "{a:?}: issued twice");
    if !g.early.remove(&(slot, op)) {
        g.outstanding.insert((slot, op));
    }
}

fn sectors(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / 512;
    (start, (offset + len).div_ceil(512) - start)
}

/// Read buffers for `n` slots: a few versions, sometimes one flipped bit.
fn read_buffers(inp: &mut Input<'_>, n: usize, len: usize) -> Vec<Vec<u8>> {
    let f = inp.u8();
    let mut rng = Rng::new(f as u64);
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
    let q = match Quorum::<C, R, A>::new(config) {
        Ok(q) => q,
        Err(e) => {
            assert_eq!(
                config.validate(C),
                Err(e),
                "Quorum::new and Config::validate disagree"
            );
            return;
        }
    };
    let cfg = match config.validate(C) {
        Ok(c) => c,
        Err(e) => panic!("Quorum::new accepted {config:?}, which validate refuses: {e}"),
    };
    assert_eq!(
        *q.config(),
        cfg,
        "config() is not the effective configuration"
    );
    assert!(q.is_idle() && q.in_flight() == 0, "a new core is busy");
    let mut d = Driver::<C, R, A> {
        q,
        cfg,
        gens: BTreeMap::new(),
        next_id: 0,
        deep: C * R <= 64,
    };
    let mut calls = 0;
    while !inp.done() && calls < MAX_CALLS {
        d.step(inp);
        calls += 1;
    }
    d.drain();
}

/// Drives the raw core API with calls decoded from `data`, valid and invalid
/// alike, and panics if the core breaks its contract (or panics itself).
///
/// The first bytes choose the core's capacity and configuration (invalid
/// configurations must be refused with a `ConfigError`); the rest is a
/// sequence of submits, polls, completions (right, wrong, repeated, for
/// unknown requests and slots, with wrong buffers), and membership changes.
/// At the end every outstanding child operation is completed and the core
/// must have completed each accepted request exactly once and be idle.
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

/// Runs the simulator with a configuration taken from the first bytes of
/// `data` and every later decision from the rest; panics with the
/// simulator's message if an invariant breaks.
pub fn simulate(data: &[u8]) {
    let mut inp = Input::new(data);
    let children = 1 + inp.u8() as usize % 16;
    let threshold = 1 + inp.u8() as usize % children;
    let flags = inp.u8();
    let ops = 1 + inp.u8() as u64 % 200;
    let depth = 1 + inp.u8() as usize % 16;
    let cfg = SimConfig {
        seed: 0,
        children,
        threshold,
        ops,
        size: 64 * 1024,
        depth,
        pattern: if flags & 1 != 0 {
            ReadPattern::Fifo
        } else {
            ReadPattern::Quorum
        },
        rewrite: flags & 2 != 0,
        mode: if flags & 4 != 0 {
            Mode::OverThreshold
        } else {
            Mode::Safety
        },
        faults: Faults::Swarm,
        early: flags & 8 != 0,
        ..SimConfig::default()
    };
    let rest = data.get(inp.at..).unwrap_or(&[]);
    let sim = match Sim::from_bytes(cfg, rest) {
        Ok(s) => s,
        Err(e) => panic!("simulate: the derived configuration was refused: {e}"),
    };
    if let Err(e) = sim.run() {
        panic!("simulate ({cfg}): {e}");
    }
}
