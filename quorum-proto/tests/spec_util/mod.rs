//! Helpers shared by the `spec_*` tests: event constructors, a content
//! pattern notation (`"A B A C B"`), and [`run`], one request on a core of
//! any capacity with scripted child answers, through the kit's in-memory
//! driver (`support::Mem` is the same driver over byte-vector children).
#![allow(dead_code, unreachable_pub)]

use quorum_driver::testing::{Checker, MemDriver, Script};
use quorum_proto::{
    Action, ChildId, Config, Errno, Event, OpType, Outcome, Quorum, Request, RequestId,
};

/// The fill byte of a version letter: `A` → 0xaa, `B` → 0xbb, …
pub fn byte(letter: char) -> u8 {
    match letter {
        'A' => 0xaa,
        'B' => 0xbb,
        'C' => 0xcc,
        'D' => 0xdd,
        'E' => 0xee,
        'F' => 0xff,
        other => panic!("unknown version letter {other}"),
    }
}

/// Children contents for a pattern such as `"A B A C B"`: child `i` holds
/// `len` bytes of its letter's fill byte.
pub fn pattern(pat: &str, len: usize) -> Vec<Vec<u8>> {
    letters(pat)
        .into_iter()
        .map(|c| vec![byte(c); len])
        .collect()
}

/// The letters of a pattern.
pub fn letters(pat: &str) -> Vec<char> {
    pat.split_whitespace()
        .map(|w| w.chars().next().expect("letter"))
        .collect()
}

/// `QUORUM_REPORT_BAD` for child `children.<child>`.
pub fn rb(op: OpType, error: Option<Errno>, child: u32, sector_num: u64, count: u64) -> Event {
    Event::ReportBad {
        op,
        error,
        child: ChildId(child),
        sector_num,
        sectors_count: count,
    }
}

/// `QUORUM_FAILURE`.
pub fn failure(sector_num: u64, sectors_count: u64) -> Event {
    Event::Failure {
        sector_num,
        sectors_count,
    }
}

/// An `Action::Event` of request `id`.
pub fn ev(id: u64, event: Event) -> Action {
    Action::Event {
        id: RequestId(id),
        event,
    }
}

/// An `Action::Complete` of request `id`.
pub fn done(id: u64, outcome: Outcome) -> Action {
    Action::Complete {
        id: RequestId(id),
        outcome,
    }
}

/// A successful read outcome from slot `slot` whose child is `children.<child>`.
pub fn read_ok(slot: usize, child: u32) -> Outcome {
    Outcome::Read {
        slot,
        child: ChildId(child),
    }
}

/// Every queued action, oldest first.
pub fn drain<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
) -> Vec<Action> {
    core::iter::from_fn(|| q.poll_action()).collect()
}

/// The whole state of a core, to check that refused input changed nothing.
pub fn snapshot<const C: usize, const R: usize, const A: usize>(q: &Quorum<C, R, A>) -> String {
    format!("{q:?}")
}

/// What [`run`] saw.
#[derive(Debug, Default)]
pub struct Run {
    /// Every action polled, in order.
    pub log: Vec<Action>,
    /// The read buffers, by slot.
    pub bufs: Vec<Vec<u8>>,
}

impl Run {
    /// The events, in order.
    pub fn events(&self) -> Vec<Event> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Event { event, .. } => Some(*event),
                _ => None,
            })
            .collect()
    }

    /// The single completion.
    pub fn outcome(&self) -> Outcome {
        let mut it = self.log.iter().filter_map(|a| match a {
            Action::Complete { outcome, .. } => Some(*outcome),
            _ => None,
        });
        let o = it.next().expect("completed");
        assert!(it.next().is_none(), "completed twice");
        o
    }

    /// The slots rewritten, in the order the rewrites were asked for, with
    /// their source slots.
    pub fn rewrites(&self) -> Vec<(usize, usize)> {
        self.log
            .iter()
            .filter_map(|a| match *a {
                Action::Rewrite { slot, source, .. } => Some((slot, source)),
                _ => None,
            })
            .collect()
    }
}

/// Submits `req` as `id` and runs it to completion with the kit's
/// in-memory driver over scripted children (`quorum_driver::testing::Script`),
/// completing every child operation in issue order: slot `s`'s read returns
/// `reads[s]`, its write or flush `results[s]`; rewrites succeed. The core is
/// lent to the driver (which checks the core's contract on every call) and
/// handed back. Works for any capacity.
pub fn run<const C: usize, const R: usize, const A: usize>(
    q: &mut Quorum<C, R, A>,
    id: u64,
    req: Request,
    reads: &[Result<Vec<u8>, Errno>],
    results: &[Result<(), Errno>],
) -> Run {
    let placeholder = Quorum::new(Config::new(1, 1)).expect("a one-child core");
    let core = std::mem::replace(q, placeholder);
    let mut script = Script::new();
    for (slot, &child) in core.children().iter().enumerate() {
        if let Some(r) = reads.get(slot) {
            script.read(child, r.clone());
        }
        if let Some(&r) = results.get(slot) {
            script.result(child, r);
        }
    }
    let mut d = MemDriver::with_disks(Checker::adopt(core), script);
    let id = RequestId(id);
    d.try_submit(id, req, None).expect("submit accepted");
    d.run();
    let run = Run {
        log: d.log().to_vec(),
        bufs: d.buffers(id).expect("the request's buffers").to_vec(),
    };
    *q = d.into_checker().into_core();
    run
}

/// A deterministic PRNG (splitmix64) for table generation.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
