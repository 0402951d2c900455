//! A reference model of `SPEC.md`, and a property test holding the core to it.
//!
//! The model ([`model`]) is a pure function from a configuration, one request
//! and every child's answer to what the quorum device must do: the outcome,
//! the events (R-EVENT) and the rewrites (R-READ-7). It is written the way
//! `SPEC.md` and QEMU's `quorum.c` read, not the way the core is built: votes
//! are QEMU's linked list simulated with a `Vec` (a new version goes in at
//! index 0, a new member at the head of its version, the winner is the first
//! strictly greater count walking the list, R-VOTE-2), content is compared
//! with `==` (R-VOTE-1), and nothing from `quorum_proto::vote` is used. Only
//! the crate's plain data types (`Outcome`, `Event`, `Errno`, `ChildId`) are
//! shared, so the two can be compared with `==`.
//!
//! [`run_core`] drives the real core over the same case with the driver kit's
//! in-memory driver over scripted children, whose checker also holds every
//! call to the core's contract. Every case runs twice: once completing child operations in slot
//! order, where the event sequence must equal the model's exactly, and once in
//! an order drawn by proptest, where the outcome must not change and the
//! per-child reports (R-READ-2, R-WRITE-1, R-FLUSH-1) follow completion order.
//!
//! Early quorum (`Config::early_quorum`) stays off here, deliberately: this is
//! a model of QEMU, which has no early answer, and with it the outcome would
//! depend on completion order, which the second run above rules out. The
//! core runs with it off and any `Action::Answer` fails the test; early mode
//! is held to its own model in `props.rs` (random use) and `early.rs`.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use quorum_driver::testing::{Checker, MemDriver, Script};
use quorum_proto::{
    Action, ChildId, Config, Errno, Event, OpType, Outcome, Quorum, ReadPattern, Request, RequestId,
};

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// The options of a device (R-CFG). The model applies R-CFG-6 itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cfg {
    n: usize,
    threshold: usize,
    /// `read-pattern=fifo` (R-FIFO); otherwise `quorum` (R-READ).
    fifo: bool,
    rewrite_corrupted: bool,
    blkverify: bool,
    /// The opt-in improvement: with fifo, repair the children that failed
    /// before the one that answered.
    fifo_rewrite_failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    WriteZeroes,
    Flush,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Req {
    op: Op,
    offset: u64,
    len: u64,
}

/// One child's answer to its child operation. For writes and flushes the
/// bytes of `Ok` mean nothing; only success counts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Ok(Vec<u8>),
    Err(Errno),
}

/// When an event is due: when a child's own operation completes (R-READ-2,
/// R-FIFO-1, R-WRITE-1, R-FLUSH-1), or once every child has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Child(usize),
    End,
}

/// What the device must do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    outcome: Outcome,
    /// The bytes of a successful read.
    data: Option<Vec<u8>>,
    /// Events in order: per-child reports in slot order, then the rest.
    events: Vec<(When, Event)>,
    /// Rewrites `(slot repaired, slot whose content is written)`, in order.
    rewrites: Vec<(usize, usize)>,
    /// The children asked to do the request's operation (in order, for fifo).
    asked: Vec<usize>,
}

/// R-CFG-1..5: is the configuration accepted? (QEMU 10 reads `blkverify` and
/// `rewrite-corrupted` only with `read-pattern=quorum`, R-CFG-6; checked with
/// qemu-io 10.0.2: `read-pattern=fifo,blkverify=on` with 3 children opens.)
fn model_accepts(cfg: &Cfg) -> bool {
    if cfg.n < 1 {
        return false; // R-CFG-1
    }
    if cfg.threshold < 1 || cfg.threshold > cfg.n {
        return false; // R-CFG-2
    }
    if !cfg.fifo {
        if cfg.blkverify && !(cfg.n == 2 && cfg.threshold == 2) {
            return false; // R-CFG-4
        }
        if cfg.rewrite_corrupted && cfg.blkverify {
            return false; // R-CFG-5
        }
    }
    true
}

/// SPEC "Sizes": `sector_num = offset / 512`,
/// `sectors_count = ceil((offset + bytes) / 512) - sector_num`.
fn sectors(offset: u64, bytes: u64) -> (u64, u64) {
    let sector_num = offset / 512;
    let end = (offset + bytes).div_ceil(512);
    (sector_num, end - sector_num)
}

/// R-EVENT-1 `QUORUM_REPORT_BAD` about child `slot` (children are
/// `children.0` … on a fresh device, so the child of slot `s` is `s`).
fn report_bad(op: OpType, error: Option<Errno>, slot: usize, req: &Req) -> Event {
    // R-FLUSH-1: flush reports carry sector 0 and count 0 (QEMU 10).
    let (sector_num, sectors_count) = match op {
        OpType::Flush => (0, 0),
        _ => sectors(req.offset, req.len),
    };
    Event::ReportBad {
        op,
        error,
        child: ChildId(slot as u32),
        sector_num,
        sectors_count,
    }
}

/// R-EVENT-2 `QUORUM_FAILURE` for the request.
fn failure(req: &Req) -> Event {
    let (sector_num, sectors_count) = sectors(req.offset, req.len);
    Event::Failure {
        sector_num,
        sectors_count,
    }
}

/// QEMU's `QuorumVoteVersion`.
#[derive(Debug)]
struct Version<V> {
    value: V,
    /// The first member's slot (QEMU's `version->index`).
    index: usize,
    vote_count: usize,
    /// Members, each new one inserted at the head (QEMU's `items` list).
    items: Vec<usize>,
}

/// QEMU's `quorum_count_vote`, literally (R-VOTE-1, R-VOTE-2): find the
/// version with this value walking the list; a version not yet there is
/// inserted at the head of the list; the member is inserted at the head of
/// its version's items.
fn count_vote<V: PartialEq>(list: &mut Vec<Version<V>>, value: V, index: usize) {
    match list.iter().position(|v| v.value == value) {
        Some(i) => {
            list[i].vote_count += 1;
            list[i].items.insert(0, index);
        }
        None => list.insert(
            0,
            Version {
                value,
                index,
                vote_count: 1,
                items: vec![index],
            },
        ),
    }
}

/// QEMU's `quorum_get_vote_winner`, literally (R-VOTE-2): walk the list and
/// keep the first version whose count is strictly greater than the best so far.
fn vote_winner<V>(list: &[Version<V>]) -> usize {
    let mut max = 0;
    let mut winner = None;
    for (i, candidate) in list.iter().enumerate() {
        if candidate.vote_count > max {
            max = candidate.vote_count;
            winner = Some(i);
        }
    }
    winner.expect("a vote with at least one voter")
}

/// R-VOTE-3: the error vote over the failed children, in slot order.
fn error_vote(answers: &[Answer]) -> Errno {
    let mut votes = Vec::new();
    for (slot, a) in answers.iter().enumerate() {
        if let Answer::Err(e) = a {
            count_vote(&mut votes, *e, slot);
        }
    }
    votes[vote_winner(&votes)].value
}

fn read_ok(slot: usize) -> Outcome {
    Outcome::Read {
        slot,
        child: ChildId(slot as u32),
    }
}

/// The reference model: what `SPEC.md` says the device does with `req` when
/// child `s` answers `answers[s]`.
fn model(cfg: &Cfg, req: &Req, answers: &[Answer]) -> Expected {
    assert!(
        model_accepts(cfg),
        "the model only runs valid configurations"
    );
    assert_eq!(answers.len(), cfg.n);
    match req.op {
        Op::Read if cfg.fifo => model_fifo_read(cfg, req, answers),
        Op::Read => model_quorum_read(cfg, req, answers),
        Op::Write | Op::WriteZeroes => model_write(cfg, req, answers),
        Op::Flush => model_flush(cfg, req, answers),
    }
}

/// R-READ-1..8, R-VOTE-1..4.
fn model_quorum_read(cfg: &Cfg, req: &Req, answers: &[Answer]) -> Expected {
    let mut events = Vec::new();
    // R-READ-1: every child is read.
    let asked: Vec<usize> = (0..cfg.n).collect();
    // R-READ-2: each failing child is reported at once, with its error.
    for (slot, a) in answers.iter().enumerate() {
        if let Answer::Err(e) = a {
            events.push((
                When::Child(slot),
                report_bad(OpType::Read, Some(*e), slot, req),
            ));
        }
    }
    let ok: Vec<usize> = (0..cfg.n)
        .filter(|&s| matches!(answers[s], Answer::Ok(_)))
        .collect();
    let data = |s: usize| match &answers[s] {
        Answer::Ok(d) => d.clone(),
        Answer::Err(_) => unreachable!("slot {s} failed"),
    };
    // R-READ-3: fewer than threshold succeeded: error vote and FAILURE.
    if ok.len() < cfg.threshold {
        events.push((When::End, failure(req)));
        return Expected {
            outcome: Outcome::Failed(error_vote(answers)),
            data: None,
            events,
            rewrites: vec![],
            asked,
        };
    }
    // R-READ-4: compare the first successful read with every other one.
    let first = ok[0];
    let mut all_agree = true;
    for &other in &ok[1..] {
        if data(other) != data(first) {
            all_agree = false;
            // R-READ-8: in blkverify mode a difference is fatal.
            if cfg.blkverify {
                let (a, b) = (data(first), data(other));
                let at = (0..a.len()).find(|&i| a[i] != b[i]).expect("they differ");
                return Expected {
                    outcome: Outcome::ContentsMismatch {
                        offset: req.offset + at as u64,
                    },
                    data: None,
                    events,
                    rewrites: vec![],
                    asked,
                };
            }
            break;
        }
    }
    if all_agree {
        return Expected {
            outcome: read_ok(first),
            data: Some(data(first)),
            events,
            rewrites: vec![],
            asked,
        };
    }
    // R-READ-5, R-VOTE-1, R-VOTE-2: group by content, most members wins.
    let mut votes = Vec::new();
    for &s in &ok {
        count_vote(&mut votes, data(s), s);
    }
    let w = vote_winner(&votes);
    if votes[w].vote_count < cfg.threshold {
        // R-READ-5: EIO and FAILURE, no mismatch reported.
        events.push((When::End, failure(req)));
        return Expected {
            outcome: Outcome::Failed(Errno::EIO),
            data: None,
            events,
            rewrites: vec![],
            asked,
        };
    }
    // R-VOTE-2: the result comes from the winner's lowest-index member.
    let source = votes[w].index;
    // R-READ-6, R-VOTE-4: every member of every losing version, walking the
    // version list from its head and each version's items from their head.
    let mut rewrites = Vec::new();
    for (i, version) in votes.iter().enumerate() {
        if i == w {
            continue;
        }
        for &item in &version.items {
            events.push((When::End, report_bad(OpType::Read, None, item, req)));
            // R-READ-7: same order; failed children are never in a version.
            if cfg.rewrite_corrupted {
                rewrites.push((item, source));
            }
        }
    }
    Expected {
        outcome: read_ok(source),
        data: Some(votes[w].value.clone()),
        events,
        rewrites,
        asked,
    }
}

/// R-FIFO-1..2 (R-CFG-6: blkverify and rewrite-corrupted are ignored), and the
/// opt-in repair of the children that failed before the answering one.
fn model_fifo_read(cfg: &Cfg, req: &Req, answers: &[Answer]) -> Expected {
    let mut events = Vec::new();
    let mut asked = Vec::new();
    let mut failed = Vec::new();
    for (slot, a) in answers.iter().enumerate() {
        asked.push(slot);
        match a {
            Answer::Err(e) => {
                // R-FIFO-1: report it, try the next child.
                events.push((
                    When::Child(slot),
                    report_bad(OpType::Read, Some(*e), slot, req),
                ));
                failed.push(slot);
            }
            Answer::Ok(d) => {
                // R-FIFO-1: its data is the result, unchecked.
                let rewrites = if cfg.fifo_rewrite_failed {
                    failed.iter().map(|&f| (f, slot)).collect()
                } else {
                    vec![]
                };
                return Expected {
                    outcome: read_ok(slot),
                    data: Some(d.clone()),
                    events,
                    rewrites,
                    asked,
                };
            }
        }
    }
    // R-FIFO-2: all failed: the last child's error, no FAILURE, no vote.
    let Answer::Err(last) = answers[cfg.n - 1] else {
        unreachable!()
    };
    Expected {
        outcome: Outcome::Failed(last),
        data: None,
        events,
        rewrites: vec![],
        asked,
    }
}

/// R-WRITE-1..3.
fn model_write(cfg: &Cfg, req: &Req, answers: &[Answer]) -> Expected {
    let mut events = Vec::new();
    let mut success_count = 0;
    for (slot, a) in answers.iter().enumerate() {
        match a {
            Answer::Ok(_) => success_count += 1,
            // R-WRITE-1: each failure reported, with its error.
            Answer::Err(e) => {
                events.push((
                    When::Child(slot),
                    report_bad(OpType::Write, Some(*e), slot, req),
                ));
            }
        }
    }
    // R-WRITE-2
    let outcome = if success_count >= cfg.threshold {
        Outcome::Done
    } else {
        events.push((When::End, failure(req)));
        Outcome::Failed(error_vote(answers))
    };
    Expected {
        outcome,
        data: None,
        events,
        rewrites: vec![],
        asked: (0..cfg.n).collect(),
    }
}

/// R-FLUSH-1..2.
fn model_flush(cfg: &Cfg, req: &Req, answers: &[Answer]) -> Expected {
    let mut events = Vec::new();
    let mut success_count = 0;
    for (slot, a) in answers.iter().enumerate() {
        match a {
            Answer::Ok(_) => success_count += 1,
            Answer::Err(e) => {
                events.push((
                    When::Child(slot),
                    report_bad(OpType::Flush, Some(*e), slot, req),
                ));
            }
        }
    }
    // R-FLUSH-2: never a FAILURE event.
    let outcome = if success_count >= cfg.threshold {
        Outcome::Done
    } else {
        Outcome::Failed(error_vote(answers))
    };
    Expected {
        outcome,
        data: None,
        events,
        rewrites: vec![],
        asked: (0..cfg.n).collect(),
    }
}

// ---------------------------------------------------------------------------
// The real core, through the kit's in-memory driver
// ---------------------------------------------------------------------------

/// 8 children, 1 request, exactly the `3C + 2` actions one request reserves.
type Core = Quorum<8, 1, 26>;

fn core_config(cfg: &Cfg) -> Config {
    Config::new(cfg.n, cfg.threshold)
        .with_read_pattern(if cfg.fifo {
            ReadPattern::Fifo
        } else {
            ReadPattern::Quorum
        })
        .with_rewrite_corrupted(cfg.rewrite_corrupted)
        .with_blkverify(cfg.blkverify)
        .with_fifo_rewrite_failed(cfg.fifo_rewrite_failed)
}

/// In which order the driver completes the child operations it holds.
#[derive(Clone, Copy, Debug)]
enum Sched<'a> {
    /// Lowest slot first, the request's operations before any rewrite.
    SlotOrder,
    /// Each step completes `pending[d % pending.len()]`, `d` drawn in turn
    /// (0 once the draws run out).
    Drawn(&'a [usize]),
    /// Newest first.
    Reverse,
}

/// What the core did.
#[derive(Debug, Default)]
struct Seen {
    outcome: Option<Outcome>,
    data: Option<Vec<u8>>,
    events: Vec<Event>,
    rewrites: Vec<(usize, usize)>,
    asked: Vec<usize>,
    /// Slots whose request operation completed, in completion order.
    completed: Vec<usize>,
}

fn slot_of(a: &Action) -> (bool, usize) {
    match *a {
        Action::Read { slot, .. }
        | Action::Write { slot, .. }
        | Action::WriteZeroes { slot, .. }
        | Action::Flush { slot, .. } => (false, slot),
        Action::Rewrite { slot, .. } => (true, slot),
        _ => unreachable!("not a child operation: {a:?}"),
    }
}

/// Runs the real core over the case with the kit's in-memory driver over
/// scripted children (`children.N` answers `answers[N]`), which checks the
/// core's contract on every call; `sched` picks which pending child
/// operation completes next.
fn run_core(
    cfg: &Cfg,
    req: &Req,
    answers: &[Answer],
    rewrite_results: &[Result<(), Errno>],
    sched: Sched<'_>,
) -> Result<Seen, TestCaseError> {
    let fail = |what: &str, e: &dyn std::fmt::Debug| TestCaseError::fail(format!("{what}: {e:?}"));
    let checker =
        Checker::<8, 1, 26>::new(core_config(cfg)).map_err(|e| fail("config refused", &e))?;
    let mut script = Script::new();
    for (slot, a) in answers.iter().enumerate() {
        let child = ChildId(slot as u32);
        match a {
            Answer::Ok(d) => script.read(child, Ok(d.clone())),
            Answer::Err(e) => script.read(child, Err(*e)).result(child, Err(*e)),
        };
    }
    let mut d = MemDriver::with_disks(checker, script);
    for (slot, r) in rewrite_results.iter().enumerate() {
        if let Err(e) = r {
            // R-READ-7: the rewrite's own result must change nothing.
            d.faults.rewrite.insert(ChildId(slot as u32), *e);
        }
    }
    let id = RequestId(7);
    let request = match req.op {
        Op::Read => Request::Read {
            offset: req.offset,
            len: req.len,
        },
        Op::Write => Request::Write {
            offset: req.offset,
            len: req.len,
        },
        Op::WriteZeroes => Request::WriteZeroes {
            offset: req.offset,
            len: req.len,
        },
        Op::Flush => Request::Flush,
    };
    d.try_submit(id, request, None)
        .map_err(|e| fail("submit", &e))?;
    let mut draws = match sched {
        Sched::Drawn(d) => d.iter(),
        Sched::SlotOrder | Sched::Reverse => [].iter(),
    };
    let mut seen = Seen::default();
    loop {
        d.poll();
        let pending = d.pending();
        if pending.is_empty() {
            break;
        }
        let i = match sched {
            Sched::SlotOrder => (0..pending.len())
                .min_by_key(|&i| slot_of(&pending[i]))
                .expect("non-empty"),
            Sched::Drawn(_) => draws.next().copied().unwrap_or(0) % pending.len(),
            Sched::Reverse => pending.len() - 1,
        };
        if let (false, slot) = slot_of(&pending[i]) {
            seen.completed.push(slot);
        }
        d.perform(i);
    }
    // What the core did, from the driver's log (the checker has already
    // held every action to the request: its id, kind, child, range, and
    // nothing after its completion).
    for a in d.log() {
        match *a {
            Action::Read { slot, .. }
            | Action::Write { slot, .. }
            | Action::WriteZeroes { slot, .. }
            | Action::Flush { slot, .. }
            | Action::BlockStatus { slot, .. } => seen.asked.push(slot),
            Action::Rewrite { slot, source, .. } => seen.rewrites.push((slot, source)),
            Action::Event { event, .. } => seen.events.push(event),
            Action::Answer { .. } => prop_assert!(false, "an early answer without early quorum"),
            Action::Mark { .. } => prop_assert!(false, "a mark without sync tracking"),
            Action::Complete { outcome, .. } => seen.outcome = Some(outcome),
        }
    }
    seen.data = d.data(id).map(<[u8]>::to_vec);
    prop_assert!(seen.outcome.is_some(), "the request never completed");
    prop_assert!(d.checker().is_idle());
    Ok(seen)
}

/// The model's events in the order a run that completed child operations in
/// `completed` order must show them: each child's report when that child
/// completed, the rest (FAILURE, R-VOTE-4 mismatch reports) after all of them.
fn in_completion_order(events: &[(When, Event)], completed: &[usize]) -> Vec<Event> {
    let mut out = Vec::new();
    for &slot in completed {
        out.extend(
            events
                .iter()
                .filter(|(w, _)| *w == When::Child(slot))
                .map(|(_, e)| *e),
        );
    }
    out.extend(
        events
            .iter()
            .filter(|(w, _)| *w == When::End)
            .map(|(_, e)| *e),
    );
    out
}

fn sorted(mut v: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    v.sort_unstable();
    v
}

/// Runs the model and the core (slot order, then `other` order) and asserts
/// they agree. Returns the model's answer for the explicit cases to inspect.
fn check(
    cfg: &Cfg,
    req: &Req,
    answers: &[Answer],
    rewrite_results: &[Result<(), Errno>],
    other: Sched<'_>,
) -> Result<Expected, TestCaseError> {
    let want = model(cfg, req, answers);
    // The fifo repair is an improvement SPEC.md gives no order for; the
    // R-READ-7 rewrites follow R-VOTE-4 exactly.
    let rewrites = |v: &[(usize, usize)]| {
        if cfg.fifo {
            sorted(v.to_vec())
        } else {
            v.to_vec()
        }
    };
    for sched in [Sched::SlotOrder, other] {
        let got = run_core(cfg, req, answers, rewrite_results, sched)?;
        prop_assert_eq!(got.outcome, Some(want.outcome), "outcome ({:?})", sched);
        prop_assert_eq!(&got.data, &want.data, "read data ({:?})", sched);
        prop_assert_eq!(
            rewrites(&got.rewrites),
            rewrites(&want.rewrites),
            "rewrites ({:?})",
            sched
        );
        // R-READ-1, R-WRITE-1, R-FLUSH-1: every child at once (any order);
        // R-FIFO-1: one by one, in order, stopping at the first success.
        if cfg.fifo && req.op == Op::Read {
            prop_assert_eq!(&got.asked, &want.asked, "children read ({:?})", sched);
        } else {
            let mut asked = got.asked.clone();
            asked.sort_unstable();
            prop_assert_eq!(&asked, &want.asked, "children asked ({:?})", sched);
        }
        let expected_events = match sched {
            // Slots complete in order: the model's own sequence, exactly.
            Sched::SlotOrder => want.events.iter().map(|(_, e)| *e).collect(),
            Sched::Drawn(_) | Sched::Reverse => in_completion_order(&want.events, &got.completed),
        };
        prop_assert_eq!(expected_events.len(), want.events.len());
        prop_assert_eq!(&got.events, &expected_events, "events ({:?})", sched);
    }
    Ok(want)
}

// ---------------------------------------------------------------------------
// Case generation
// ---------------------------------------------------------------------------

/// The content alphabet for a read of `len` bytes: `0` a pattern, `1` the same
/// pattern with one byte flipped at `flip % len`, `2` another pattern, `3`
/// zeroes. (With `len == 0` all four are equal, as they should be.)
fn alphabet(len: usize, flip: usize) -> [Vec<u8>; 4] {
    let a: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect();
    let mut a1 = a.clone();
    if len > 0 {
        a1[flip % len] ^= 0x80;
    }
    let b: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(17) ^ 0x5a)
        .collect();
    [a, a1, b, vec![0; len]]
}

/// A child's answer before the alphabet is known: content index or errno.
#[derive(Clone, Copy, Debug)]
enum Draw {
    Content(usize),
    Err(Errno),
}

fn arb_errno() -> impl Strategy<Value = Errno> {
    prop::sample::select(vec![
        Errno::EIO,
        Errno::ENOSPC,
        Errno::EPERM,
        Errno::EROFS,
        Errno::ENOMEDIUM,
    ])
}

fn arb_draw() -> impl Strategy<Value = Draw> {
    prop_oneof![
        8 => Just(Draw::Content(0)),
        2 => Just(Draw::Content(1)),
        2 => Just(Draw::Content(2)),
        1 => Just(Draw::Content(3)),
        3 => arb_errno().prop_map(Draw::Err),
    ]
}

/// Which family of valid configuration (R-CFG-1..6) a case uses.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `read-pattern=quorum`; `fifo_rewrite_failed` is ignored there.
    Quorum,
    /// R-CFG-4, R-CFG-5: blkverify needs 2 children, threshold 2, no rewrite.
    Blkverify,
    /// R-CFG-6: with fifo, blkverify and rewrite-corrupted are ignored.
    Fifo,
}

fn arb_req() -> impl Strategy<Value = Req> {
    let op = prop_oneof![
        5 => Just(Op::Read),
        1 => Just(Op::Write),
        1 => Just(Op::WriteZeroes),
        1 => Just(Op::Flush),
    ];
    let offset = prop_oneof![
        Just(0u64),
        0u64..2048,
        (0u64..1 << 20).prop_map(|s| s * 512),
        (0u64..1 << 40).prop_map(|s| s * 512 + 511),
        0u64..1 << 50,
    ];
    let len = prop_oneof![
        1 => Just(0u64),
        8 => 16u64..=64,
        2 => 1u64..16,
        1 => Just(512u64),
        2 => 500u64..=1100,
    ];
    (op, offset, len).prop_map(|(op, offset, len)| match op {
        Op::Flush => Req {
            op,
            offset: 0,
            len: 0,
        },
        _ => Req { op, offset, len },
    })
}

/// One generated case. Answers are kept as alphabet letters so a failing
/// case prints small; [`Case::answers`] turns them into bytes.
#[derive(Clone, Debug)]
struct Case {
    cfg: Cfg,
    req: Req,
    /// Where content `1` differs from content `0` (modulo the length).
    flip: usize,
    draws: Vec<Draw>,
    rewrite_results: Vec<Result<(), Errno>>,
    drawn: Vec<usize>,
}

impl Case {
    fn answers(&self) -> Vec<Answer> {
        let contents = alphabet(self.req.len as usize, self.flip);
        self.draws
            .iter()
            .map(|d| match *d {
                Draw::Content(i) => Answer::Ok(contents[i].clone()),
                Draw::Err(e) => Answer::Err(e),
            })
            .collect()
    }
}

/// Everything is drawn independently (no `prop_flat_map`), 8 of each per-child
/// value, then cut to `n`, so that proptest shrinks every part on its own.
fn arb_case() -> impl Strategy<Value = Case> {
    let shape = prop_oneof![
        4 => Just(Shape::Quorum),
        1 => Just(Shape::Blkverify),
        2 => Just(Shape::Fifo),
    ];
    let rewrite_result = prop_oneof![3 => Just(Ok(())), 1 => arb_errno().prop_map(Err)];
    (
        (shape, 1usize..=8, 0usize..8, any::<[bool; 3]>()),
        arb_req(),
        0usize..64,
        prop::collection::vec(arb_draw(), 8),
        prop::collection::vec(rewrite_result, 8),
        prop::collection::vec(0usize..16, 16),
    )
        .prop_map(
            |((shape, n, t, [rw, bv, frf]), req, flip, mut draws, mut rewrite_results, drawn)| {
                let threshold = 1 + t % n;
                let cfg = match shape {
                    Shape::Quorum => Cfg {
                        n,
                        threshold,
                        fifo: false,
                        rewrite_corrupted: rw,
                        blkverify: false,
                        fifo_rewrite_failed: frf,
                    },
                    Shape::Blkverify => Cfg {
                        n: 2,
                        threshold: 2,
                        fifo: false,
                        rewrite_corrupted: false,
                        blkverify: true,
                        fifo_rewrite_failed: frf,
                    },
                    Shape::Fifo => Cfg {
                        n,
                        threshold,
                        fifo: true,
                        rewrite_corrupted: rw,
                        blkverify: bv,
                        fifo_rewrite_failed: frf,
                    },
                };
                draws.truncate(cfg.n);
                rewrite_results.truncate(cfg.n);
                Case {
                    cfg,
                    req,
                    flip,
                    draws,
                    rewrite_results,
                    drawn,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The core agrees with the model on every rule the model covers
    /// (R-READ-1..8, R-FIFO-1..2, R-WRITE-1..3, R-FLUSH-1..2, R-VOTE-1..4,
    /// R-EVENT-1..3), whatever order child operations complete in.
    #[test]
    fn core_matches_model(case in arb_case()) {
        check(&case.cfg, &case.req, &case.answers(), &case.rewrite_results, Sched::Drawn(&case.drawn))?;
    }

    /// R-CFG-1..6: the core accepts exactly the configurations the model does.
    #[test]
    fn config_validity_matches_model(
        n in 0usize..=8,
        threshold in 0usize..=9,
        fifo: bool,
        rewrite_corrupted: bool,
        blkverify: bool,
        fifo_rewrite_failed: bool,
    ) {
        let cfg = Cfg { n, threshold, fifo, rewrite_corrupted, blkverify, fifo_rewrite_failed };
        prop_assert_eq!(Core::new(core_config(&cfg)).is_ok(), model_accepts(&cfg));
    }
}

// ---------------------------------------------------------------------------
// SPEC.md's examples, through model and core
// ---------------------------------------------------------------------------

const LEN: u64 = 32;

fn quorum_cfg(n: usize, threshold: usize) -> Cfg {
    Cfg {
        n,
        threshold,
        fifo: false,
        rewrite_corrupted: false,
        blkverify: false,
        fifo_rewrite_failed: false,
    }
}

fn read_at(offset: u64) -> Req {
    Req {
        op: Op::Read,
        offset,
        len: LEN,
    }
}

/// Answers from letters: `A`, `B`, `C` are distinct contents (`B` differs
/// from `A` in one byte), `x` is EIO.
fn answers(votes: &str) -> Vec<Answer> {
    let [a, a1, b, _] = alphabet(LEN as usize, 5);
    votes
        .chars()
        .map(|c| match c {
            'A' => Answer::Ok(a.clone()),
            'B' => Answer::Ok(a1.clone()),
            'C' => Answer::Ok(b.clone()),
            'x' => Answer::Err(Errno::EIO),
            _ => unreachable!(),
        })
        .collect()
}

/// Model and core, in slot order and in reverse order, all rewrites failing.
fn both(cfg: &Cfg, req: &Req, answers: &[Answer]) -> Expected {
    let rewrite_results = vec![Err(Errno::EIO); cfg.n];
    check(cfg, req, answers, &rewrite_results, Sched::Reverse).unwrap_or_else(|e| panic!("{e}"))
}

fn mismatch(slot: u32, offset: u64) -> Event {
    let (sector_num, sectors_count) = sectors(offset, LEN);
    Event::ReportBad {
        op: OpType::Read,
        error: None,
        child: ChildId(slot),
        sector_num,
        sectors_count,
    }
}

fn events(x: &Expected) -> Vec<Event> {
    x.events.iter().map(|(_, e)| *e).collect()
}

/// R-VOTE-2's examples: `A B` [B], `A B A B` [B], `A B C` [C],
/// `A B A C B` [B]; the result comes from the winner's lowest-index member.
/// R-VOTE-4: losers reported most recent version first, highest slot first
/// (`A B A C B` → c3, c2, c0), and R-READ-7 rewrites them in that order.
#[test]
fn r_vote_2_and_4_spec_examples() {
    let cases: [(&str, usize, &[u32]); 4] = [
        ("AB", 1, &[0]),
        ("ABAB", 1, &[2, 0]),
        ("ABC", 2, &[1, 0]),
        ("ABACB", 1, &[3, 2, 0]),
    ];
    for (votes, winner, losers) in cases {
        let n = votes.len();
        let mut cfg = quorum_cfg(n, 1);
        cfg.rewrite_corrupted = true;
        let req = read_at(4096 + 3);
        let x = both(&cfg, &req, &answers(votes));
        assert_eq!(x.outcome, read_ok(winner), "{votes}");
        let want: Vec<Event> = losers.iter().map(|&s| mismatch(s, req.offset)).collect();
        assert_eq!(events(&x), want, "{votes}");
        let rewrites: Vec<(usize, usize)> = losers.iter().map(|&s| (s as usize, winner)).collect();
        assert_eq!(x.rewrites, rewrites, "{votes}");
    }
}

/// R-VOTE-3's examples: `EIO(c0) ENOSPC(c1)` → ENOSPC; `ENOSPC EIO EPERM` →
/// EPERM; `EIO ENOSPC ENOSPC` → ENOSPC. For reads (R-READ-3), writes
/// (R-WRITE-2, with FAILURE) and flushes (R-FLUSH-2, without).
#[test]
fn r_vote_3_spec_examples() {
    let cases: [(&[Errno], Errno); 3] = [
        (&[Errno::EIO, Errno::ENOSPC], Errno::ENOSPC),
        (&[Errno::ENOSPC, Errno::EIO, Errno::EPERM], Errno::EPERM),
        (&[Errno::EIO, Errno::ENOSPC, Errno::ENOSPC], Errno::ENOSPC),
    ];
    for (errs, winner) in cases {
        let a: Vec<Answer> = errs.iter().map(|&e| Answer::Err(e)).collect();
        let cfg = quorum_cfg(errs.len(), 1);
        for op in [Op::Read, Op::Write, Op::WriteZeroes, Op::Flush] {
            let req = Req {
                op,
                offset: if op == Op::Flush { 0 } else { 1000 },
                len: if op == Op::Flush { 0 } else { 100 },
            };
            let x = both(&cfg, &req, &a);
            assert_eq!(x.outcome, Outcome::Failed(winner), "{errs:?} {op:?}");
            let last = events(&x).last().copied();
            if op == Op::Flush {
                assert!(matches!(last, Some(Event::ReportBad { .. })), "{last:?}");
            } else {
                // sectors 1..=2: offset 1000 + 100 bytes ends in sector 2.
                let f = Event::Failure {
                    sector_num: 1,
                    sectors_count: 2,
                };
                assert_eq!(last, Some(f), "{errs:?} {op:?}");
            }
        }
    }
}

/// R-READ-5: `A B` with threshold 2: EIO and FAILURE, no mismatch report.
#[test]
fn r_read_5_no_quorum_reports_no_mismatch() {
    let req = read_at(0);
    let x = both(&quorum_cfg(2, 2), &req, &answers("AB"));
    assert_eq!(x.outcome, Outcome::Failed(Errno::EIO));
    assert_eq!(
        events(&x),
        [Event::Failure {
            sector_num: 0,
            sectors_count: 1
        }]
    );
}

/// R-READ-2, R-READ-6, R-READ-7: the failed child is reported with its error
/// and not rewritten; the outvoted one is reported without error, after it.
#[test]
fn r_read_7_failed_children_are_not_rewritten() {
    let mut cfg = quorum_cfg(4, 2);
    cfg.rewrite_corrupted = true;
    let req = read_at(512);
    let x = both(&cfg, &req, &answers("xABA"));
    assert_eq!(x.outcome, read_ok(1));
    assert_eq!(x.rewrites, [(2, 1)]);
    let ev = events(&x);
    assert_eq!(ev.len(), 2);
    assert!(matches!(
        ev[0],
        Event::ReportBad {
            error: Some(Errno::EIO),
            child: ChildId(0),
            ..
        }
    ));
    assert_eq!(ev[1], mismatch(2, 512));
}

/// R-READ-8: blkverify returns the device offset of the first differing byte.
#[test]
fn r_read_8_blkverify_mismatch_offset() {
    let mut cfg = quorum_cfg(2, 2);
    cfg.blkverify = true;
    let x = both(&cfg, &read_at(1000), &answers("AB"));
    assert_eq!(x.outcome, Outcome::ContentsMismatch { offset: 1005 });
    assert!(x.events.is_empty());
}

/// R-FIFO-1..2: children in order until one answers; all failing gives the
/// last error, with a report for each and no FAILURE.
#[test]
fn r_fifo_spec_cases() {
    let mut cfg = quorum_cfg(3, 3);
    cfg.fifo = true;
    let x = both(&cfg, &read_at(0), &answers("xCA"));
    assert_eq!(x.outcome, read_ok(1));
    assert_eq!(x.asked, [0, 1]);
    let a = vec![
        Answer::Err(Errno::EIO),
        Answer::Err(Errno::EIO),
        Answer::Err(Errno::EPERM),
    ];
    let x = both(&cfg, &read_at(0), &a);
    assert_eq!(x.outcome, Outcome::Failed(Errno::EPERM));
    assert_eq!(x.events.len(), 3);
    assert!(
        x.events
            .iter()
            .all(|(_, e)| matches!(e, Event::ReportBad { .. }))
    );
}

/// R-FLUSH-1: flush reports carry sector 0 and count 0.
#[test]
fn r_flush_1_reports_sector_zero() {
    let req = Req {
        op: Op::Flush,
        offset: 0,
        len: 0,
    };
    let a = vec![Answer::Ok(vec![]), Answer::Err(Errno::EROFS)];
    let x = both(&quorum_cfg(2, 1), &req, &a);
    assert_eq!(x.outcome, Outcome::Done);
    assert_eq!(
        events(&x),
        [Event::ReportBad {
            op: OpType::Flush,
            error: Some(Errno::EROFS),
            child: ChildId(1),
            sector_num: 0,
            sectors_count: 0
        }]
    );
}
