//! Where child operations run: on the calling thread, on helper threads, or
//! both — chosen by how long child operations take.
//!
//! Fast children (the page cache, memory): a thread wake-up costs tens of
//! microseconds on a virtual machine, a cached 4 KiB `pread` one. So the
//! caller runs its request's operations itself, back to back, and hands a
//! share of them to the *assistant* if there is one: a helper that spins for
//! a short while ([`PoolConfig::spin`]) after its last piece of work, watching a single
//! slot. Under a steady load the assistant never sleeps and the handoff is a
//! few cache-line transfers — that is how a 3-replica write takes little
//! more than two `pwrite`s.
//!
//! Slow children (disks, the network): once the running average of an
//! operation's duration passes [`PoolConfig::slow`], each operation goes to its own
//! helper (started on demand) and the caller runs what nobody has claimed
//! yet, so a request takes as long as its slowest child, not the sum.
//!
//! Early-quorum reads hand every operation but one to helpers:
//! their caller must be free to return before the stragglers finish; the
//! async driver's file children hand their blocking writes to helpers the
//! same way ([`Pool::spawn`]).
//!
//! One pool serves every driver; what differs is in [`PoolConfig`]: how long
//! a helper spins, when operations count as slow, how many helpers at most.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

thread_local! {
    /// Counts a caller's rounds, to time only some of them.
    static TICK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Set by [`solo`]: this thread's rounds hand nothing to the assistant.
    static SOLO: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's [`Pool::execute`] calls keeping their
/// operations to themselves: none handed to the spinning assistant, none
/// woken. For a caller with more requests queued behind this one (an NBD
/// connection reading a pipelined batch): on a busy machine the other core
/// is better spent on the client and the next request than on half of this
/// one's small operations, and an assistant that spins for nothing takes it
/// from them (a depth-32 client of `quorum serve` on two cores: 87k IOPS
/// with the handoff, 135k without). Slow children still fan out.
pub fn solo<R>(f: impl FnOnce() -> R) -> R {
    let was = SOLO.with(|c| c.replace(true));
    let r = f();
    SOLO.with(|c| c.set(was));
    r
}

/// A piece of work a pool runs: a child operation. `run` must not panic
/// (catch the child's panic and make it an error result) and leaves `self`
/// spent: whoever drops it pays for the reference counts it holds, which
/// the assistant leaves to the caller (who touches them next anyway).
pub trait Work: Send + 'static {
    /// The result.
    type Output: Send + 'static;
    /// Does the work.
    fn run(&mut self) -> Self::Output;
    /// When a batch is split between the caller and the assistant, whether
    /// the caller keeps the larger share: true for reads, whose buffers the
    /// caller compares next (one filled on another core has to cross over
    /// first); otherwise the assistant takes it, since the caller still has
    /// the request's bookkeeping to do around its own share.
    fn caller_keeps_more(&self) -> bool {
        false
    }
    /// The bytes it moves (0 when that does not say how long it takes).
    /// Operations of more than [`TIMED_MAX`] bytes stay out of the
    /// average that decides whether children are slow.
    fn bytes(&self) -> usize {
        0
    }
}

/// The largest operation whose time counts toward the pool's average. A
/// child is slow when it answers late (a disk, the network), not when it
/// copies much: a resync's 1 MiB copies on the page cache take a few
/// hundred microseconds each, and counting them made every small client
/// request fan out to helpers while a rebuild ran (a quarter of a
/// client's IOPS gone at a 50 MiB/s rebuild).
pub const TIMED_MAX: usize = 64 << 10;

/// What differs between the drivers' pools.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// How long an idle helper spins (as the assistant) before it sleeps.
    pub spin: Duration,
    /// Average operation time above which a batch fans out to one helper
    /// per operation.
    pub slow: Duration,
    /// Helpers at most (spawned work may each hold one for as long as a
    /// slow child takes); they start only when needed.
    pub max_threads: usize,
    /// Thread names.
    pub name: &'static str,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            spin: Duration::from_micros(50),
            slow: Duration::from_micros(50),
            max_threads: 256,
            name: "quorum-io",
        }
    }
}

type Op<W> = W;
type Out<W> = <W as Work>::Output;

/// Where a batch's results go.
enum Sink<W: Work> {
    /// Back to the caller, who waits for all of them.
    Caller {
        results: Mutex<Vec<Out<W>>>,
        remaining: AtomicUsize,
        caller: Thread,
    },
    /// To a function run by whichever thread finished the operation, with
    /// how long it took (early quorum: the request is driven by its
    /// completions).
    Each(Each<W>),
}

/// Receives each result of [`Pool::spawn`]ed work, with how long it took,
/// on the thread that produced it.
pub type Each<W> = Box<dyn Fn(Out<W>, Duration) + Send + Sync>;

/// Operations published for helpers to claim.
struct Batch<W: Work> {
    ops: Box<[Mutex<Option<Op<W>>>]>,
    next: AtomicUsize,
    sink: Sink<W>,
}

impl<W: Work> Batch<W> {
    fn new(ops: Vec<Op<W>>, sink: Sink<W>) -> Batch<W> {
        Batch {
            ops: ops.into_iter().map(|o| Mutex::new(Some(o))).collect(),
            next: AtomicUsize::new(0),
            sink,
        }
    }

    /// Claims the next unclaimed operation, if any.
    fn claim(&self) -> Option<Op<W>> {
        let i = self.next.fetch_add(1, Ordering::AcqRel);
        lock(self.ops.get(i)?).take()
    }

    fn unclaimed(&self) -> usize {
        self.ops
            .len()
            .saturating_sub(self.next.load(Ordering::Acquire))
    }

    /// Runs `op` and delivers its result.
    fn run(&self, op: Op<W>, inner: &Inner<W>) {
        let (done, took) = inner.timed(op);
        match &self.sink {
            Sink::Caller {
                results,
                remaining,
                caller,
            } => {
                lock(results).push(done);
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    caller.unpark();
                }
            }
            Sink::Each(f) => f(done, took),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Child code runs outside every lock here, so a poisoned lock only means
    // a panic between two plain updates; the data is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a value on cache lines of its own: the spinning assistant polls a
/// few atomics, and a write to anything sharing their line would cost the
/// writer a transfer of that line on every request.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The assistant's slot: a handoff of a few operations between a caller and
/// the spinning helper.
struct Assist<W: Work> {
    state: AtomicU8,
    ops: Mutex<Vec<Op<W>>>,
    done: Mutex<Vec<Out<W>>>,
}

impl<W: Work> Default for Assist<W> {
    fn default() -> Self {
        Assist {
            state: AtomicU8::new(AWAY),
            ops: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
        }
    }
}

/// No assistant is spinning.
const AWAY: u8 = 0;
/// The assistant is spinning and takes an operation.
const READY: u8 = 1;
/// A caller is putting an operation in.
const FILLING: u8 = 2;
/// An operation is in the slot.
const GIVEN: u8 = 3;
/// Its result is in the slot.
const DONE: u8 = 4;
/// The assistant is running the operations in the slot.
const RUNNING: u8 = 6;
/// The caller took the result; the assistant makes the slot ready again.
const TAKEN: u8 = 5;

struct Queue<W: Work> {
    batches: VecDeque<Arc<Batch<W>>>,
    /// Helpers started and not yet stopped.
    threads: usize,
    /// Helpers asleep on `wake`.
    sleeping: usize,
    /// Wake-ups sent and not yet taken by a sleeper.
    wakeups: usize,
    stop: bool,
}

impl<W: Work> Queue<W> {
    /// Wakes a sleeping helper that nobody has woken yet; false if none.
    fn wake_one(&mut self, cv: &Condvar) -> bool {
        if self.sleeping > self.wakeups {
            self.wakeups += 1;
            cv.notify_one();
            true
        } else {
            false
        }
    }
}

struct Inner<W: Work> {
    cfg: PoolConfig,
    queue: Mutex<Queue<W>>,
    wake: Condvar,
    /// Unclaimed operations in published batches (a hint for spinners).
    pending: Padded<AtomicUsize>,
    /// Helpers spinning for work (at most one: the assistant).
    spinning: Padded<AtomicUsize>,
    /// Helpers running an operation.
    busy: Padded<AtomicUsize>,
    assist: Padded<Assist<W>>,
    /// Running average of an operation's duration, in nanoseconds.
    avg_ns: Padded<AtomicU64>,
    /// Helpers for early-quorum reads (each may sit in a slow straggler).
    max_threads: usize,
    /// Helpers for fanned-out requests, whose callers work too: a few per
    /// core, so that slowness from a busy CPU cannot snowball into threads.
    fan_threads: usize,
}

impl<W: Work> Inner<W> {
    /// Runs `op`, folding its duration into the running average.
    fn timed(&self, mut op: Op<W>) -> (Out<W>, Duration) {
        let big = op.bytes() > TIMED_MAX;
        let t = Instant::now();
        let done = op.run();
        let took = t.elapsed();
        if !big {
            self.record(took);
        }
        (done, took)
    }

    /// Folds one operation's duration into the running average.
    fn record(&self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.avg_ns.load(Ordering::Relaxed);
        // An exponential average over about eight operations; a race
        // between two updates only loses one sample.
        let next = avg - avg / 8 + ns / 8;
        if next != avg {
            self.avg_ns.store(next, Ordering::Relaxed);
        }
    }

    fn slow(&self) -> bool {
        self.avg_ns.load(Ordering::Relaxed) > self.cfg.slow.as_nanos() as u64
    }
}

/// Helper threads for child operations.
pub struct Pool<W: Work> {
    /// Shared with the helpers.
    inner: Arc<Inner<W>>,
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<W: Work> std::fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("cfg", &self.inner.cfg)
            .field("avg_ns", &self.inner.avg_ns.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<W: Work> Pool<W> {
    /// A pool with `cfg` (helpers start when needed).
    pub fn new(cfg: PoolConfig) -> Pool<W> {
        let max_threads = cfg.max_threads.max(1);
        Pool {
            inner: Arc::new(Inner {
                cfg,
                queue: Mutex::new(Queue {
                    batches: VecDeque::new(),
                    threads: 0,
                    sleeping: 0,
                    wakeups: 0,
                    stop: false,
                }),
                wake: Condvar::new(),
                pending: Padded(AtomicUsize::new(0)),
                spinning: Padded(AtomicUsize::new(0)),
                busy: Padded(AtomicUsize::new(0)),
                assist: Padded::default(),
                avg_ns: Padded(AtomicU64::new(0)),
                max_threads: max_threads.max(1),
                fan_threads: std::thread::available_parallelism()
                    .map_or(2, |n| 4 * n.get())
                    .min(max_threads.max(1)),
            }),
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Runs `op` on this thread, timed (for the average).
    pub fn run_here(&self, op: W) -> (W::Output, Duration) {
        self.inner.timed(op)
    }

    /// True while operations take longer than [`PoolConfig::slow`] on
    /// average.
    pub fn is_slow(&self) -> bool {
        self.inner.slow()
    }

    /// True while operations take longer than a quarter of
    /// [`PoolConfig::slow`] on average: every round is timed then.
    fn slowish(&self) -> bool {
        self.inner.avg_ns.load(Ordering::Relaxed) > self.inner.cfg.slow.as_nanos() as u64 / 4
    }

    /// Runs `ops` (drained) — on this thread, and on helpers when that pays
    /// — and appends their results to `out`, in any order.
    pub fn execute(&self, ops: &mut Vec<W>, out: &mut Vec<W::Output>) {
        let inner = &*self.inner;
        if ops.len() > 1 && inner.slow() {
            out.extend(self.fan_out(std::mem::take(ops)));
            return;
        }
        // Fast children: a share of the operations to the assistant, if it
        // is there (the last slots: results are fed in slot order anyway)…
        let mut handed = false;
        let assist = ops.len() > 1 && !SOLO.with(std::cell::Cell::get);
        if assist
            && inner
                .assist
                .state
                .compare_exchange(READY, FILLING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Reads: this thread keeps the larger half, because it compares
            // the buffers afterwards and one filled on another core has to
            // cross over first. Everything else: the assistant takes the
            // larger half, since this thread still has the request's
            // bookkeeping to do around its own share.
            let n = ops.len();
            let keep = if ops.first().is_some_and(|o| o.caller_keeps_more()) {
                n.div_ceil(2)
            } else {
                n / 2
            };
            lock(&inner.assist.ops).extend(ops.drain(keep..));
            handed = true;
            inner.assist.state.store(GIVEN, Ordering::Release);
        } else if assist && inner.spinning.load(Ordering::Acquire) == 0 {
            // …or make sure one is around for the next request.
            self.ensure_helper();
        }
        // …and the rest here, back to back, timed together for the average
        // — one round in eight: the clock is not free either.
        let n = ops.len() as u32;
        // (Every round while the children look slowish, and a thread's first.)
        let timed = n > 0
            && (self.slowish()
                || TICK.with(|t| {
                    let v = t.get().wrapping_add(1);
                    t.set(v);
                    v % 8 == 1
                }))
            && ops.iter().all(|o| o.bytes() <= TIMED_MAX);
        let t = timed.then(Instant::now);
        out.extend(ops.drain(..).map(|mut o| o.run()));
        if let Some(t) = t {
            inner.record(t.elapsed() / n);
        }
        if handed {
            let start = Instant::now();
            while inner.assist.state.load(Ordering::Acquire) != DONE {
                let waited = start.elapsed();
                // Briefly: the assistant may share this CPU.
                if waited < Duration::from_micros(2) {
                    std::hint::spin_loop();
                    continue;
                }
                if waited >= RECLAIM_AFTER
                    && inner
                        .assist
                        .state
                        .compare_exchange(GIVEN, FILLING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    // This thread's share is done and the assistant has not
                    // even started on its own: it is not running (another
                    // thread has its CPU, on a machine with few cores), and
                    // waiting for it costs more than the operations. This
                    // thread takes them back and runs them.
                    let mut ops = lock(&inner.assist.ops);
                    out.extend(ops.iter_mut().map(W::run));
                    ops.clear();
                    drop(ops);
                    inner.assist.state.store(READY, Ordering::Release);
                    return;
                }
                std::thread::yield_now();
            }
            out.append(&mut lock(&inner.assist.done));
            // The spent operations are dropped here, while the slot is still
            // this caller's (DONE): once it says TAKEN the assistant makes it
            // READY and another caller may fill it at once — a vector put
            // back after that would replace that caller's operations, and
            // its request would wait forever for their results.
            lock(&inner.assist.ops).clear();
            inner.assist.state.store(TAKEN, Ordering::Release);
        }
    }

    /// Slow children: every operation is offered to its own helper; this
    /// thread runs whatever is still unclaimed, then waits for the rest.
    fn fan_out(&self, ops: Vec<W>) -> Vec<W::Output> {
        let n = ops.len();
        let batch = Arc::new(Batch::new(
            ops,
            Sink::Caller {
                results: Mutex::new(Vec::with_capacity(n)),
                remaining: AtomicUsize::new(n),
                caller: std::thread::current(),
            },
        ));
        // The caller takes one itself: n - 1 helpers are enough.
        self.publish(batch.clone(), n - 1, self.inner.fan_threads, false);
        while let Some(op) = batch.claim() {
            self.inner.pending.fetch_sub(1, Ordering::AcqRel);
            batch.run(op, &self.inner);
        }
        let Sink::Caller {
            results, remaining, ..
        } = &batch.sink
        else {
            return Vec::new();
        };
        while remaining.load(Ordering::Acquire) != 0 {
            std::thread::park_timeout(Duration::from_millis(10));
        }
        std::mem::take(&mut *lock(results))
    }

    /// Hands `ops` to the helpers only; `sink` receives each result on the
    /// thread that produced it.
    pub fn spawn(&self, ops: Vec<W>, sink: Each<W>) {
        let n = ops.len();
        if n == 0 {
            return;
        }
        self.publish(
            Arc::new(Batch::new(ops, Sink::Each(sink))),
            n,
            self.inner.max_threads,
            true,
        );
    }

    /// Queues a batch and wakes or starts up to `want` helpers for it, with
    /// at most `cap` helpers in all.
    /// With `backlog`, work published earlier and still unclaimed counts
    /// too: spawned work has no caller to run it, so four single operations
    /// spawned back to back need four helpers, not one (fanned-out batches
    /// are run by their callers as well, and do not count it).
    fn publish(&self, batch: Arc<Batch<W>>, want: usize, cap: usize, backlog: bool) {
        let inner = &*self.inner;
        let mine = batch.unclaimed();
        let earlier = inner.pending.fetch_add(mine, Ordering::AcqRel);
        let want = if backlog { want + earlier } else { want };
        let mut q = lock(&inner.queue);
        if q.stop {
            // Dropping: run them here rather than lose them.
            drop(q);
            while let Some(op) = batch.claim() {
                inner.pending.fetch_sub(1, Ordering::AcqRel);
                batch.run(op, inner);
            }
            return;
        }
        q.batches.push_back(batch);
        // Helpers awake and not running anything will claim these anyway.
        let mut covered = q
            .threads
            .saturating_sub(inner.busy.load(Ordering::Acquire))
            .saturating_sub(q.sleeping - q.wakeups.min(q.sleeping));
        while covered < want {
            if q.wake_one(&inner.wake) {
            } else if q.threads < cap {
                self.start(&mut q);
            } else {
                break;
            }
            covered += 1;
        }
    }

    /// Wakes or starts a helper, so that an assistant is spinning soon.
    fn ensure_helper(&self) {
        let inner = &*self.inner;
        let mut q = lock(&inner.queue);
        if q.stop || inner.spinning.load(Ordering::Acquire) != 0 {
            return;
        }
        if !q.wake_one(&inner.wake) && q.threads == 0 {
            self.start(&mut q);
        }
    }

    /// Wakes or starts a helper if work is waiting and nobody is free to
    /// take it (a caller whose work has waited a while calls this, in case
    /// the helper that would have taken it is stuck in a slow operation).
    pub fn nudge(&self) {
        let inner = &*self.inner;
        if inner.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut q = lock(&inner.queue);
        if !q.stop && !q.wake_one(&inner.wake) && q.threads < inner.max_threads {
            self.start(&mut q);
        }
    }

    fn start(&self, q: &mut MutexGuard<'_, Queue<W>>) {
        let inner = self.inner.clone();
        let mut handles = lock(&self.handles);
        // Helpers that stopped when idle for long.
        handles.retain(|h| !h.is_finished());
        q.threads += 1;
        let name = format!("{}-{}", inner.cfg.name, q.threads);
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || helper(&inner))
        {
            Ok(h) => handles.push(h),
            Err(_) => q.threads -= 1, // no thread: callers run their own
        }
    }
}

/// Claims one operation from the published batches.
fn claim<W: Work>(inner: &Inner<W>) -> Option<(Arc<Batch<W>>, Op<W>)> {
    if inner.pending.load(Ordering::Acquire) == 0 {
        return None;
    }
    let mut q = lock(&inner.queue);
    while let Some(b) = q.batches.front() {
        if let Some(op) = b.claim() {
            let b = b.clone();
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            if b.unclaimed() == 0 {
                q.batches.pop_front();
            }
            return Some((b, op));
        }
        q.batches.pop_front();
    }
    None
}

/// Serves the assistant's slot if an operation is in it; true if it was.
fn assist<W: Work>(inner: &Inner<W>) -> bool {
    let slot = &inner.assist;
    match slot.state.load(Ordering::Acquire) {
        GIVEN => {
            // Claimed first: until then the caller may take them back.
            if slot
                .state
                .compare_exchange(GIVEN, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return false;
            }
            // Untimed and uncounted: the caller's own operations feed the
            // average, and nothing here may touch lines the caller writes.
            // The spent operation stays in the slot: the caller drops it, so
            // the reference counts it holds never leave the caller's cache.
            let mut ops = lock(&slot.ops);
            let mut done = lock(&slot.done);
            done.extend(ops.iter_mut().map(W::run));
            drop((ops, done));
            slot.state.store(DONE, Ordering::Release);
            true
        }
        TAKEN => {
            slot.state.store(READY, Ordering::Release);
            true
        }
        _ => false,
    }
}

/// Spins as the assistant until `PoolConfig::spin` passes without work; returns when
/// the slot is closed again (no caller can hand it anything any more).
fn spin<W: Work>(inner: &Inner<W>) {
    let slot = &inner.assist;
    slot.state.store(READY, Ordering::Release);
    let mut last = Instant::now();
    let mut idle_rounds = 0u32;
    loop {
        if assist(inner) {
            idle_rounds = 0;
            last = Instant::now();
            continue;
        }
        if let Some((batch, op)) = claim(inner) {
            inner.busy.fetch_add(1, Ordering::AcqRel);
            batch.run(op, inner);
            inner.busy.fetch_sub(1, Ordering::AcqRel);
            idle_rounds = 0;
            last = Instant::now();
            continue;
        }
        idle_rounds = idle_rounds.wrapping_add(1);
        // Now and then: let a thread that shares this CPU run (a spinning
        // assistant must never hold up the caller it assists), and read the
        // clock, which costs more than a poll.
        if idle_rounds.is_multiple_of(16) {
            std::thread::yield_now();
        }
        if idle_rounds.is_multiple_of(64)
            && last.elapsed() >= inner.cfg.spin
            && slot
                .state
                .compare_exchange(READY, AWAY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return;
        }
        std::hint::spin_loop();
    }
}

/// How long a caller whose share is done waits for the assistant to start
/// on the operations handed to it before taking them back
/// ([`Pool::execute`]). An assistant that is running claims them within a
/// microsecond; past this it has lost its CPU. (Taken back at once, a
/// 4 KiB read at depth 1 lost a quarter of its IOPS: the assistant was
/// often a yield away, and the three reads ran one after another.)
const RECLAIM_AFTER: Duration = Duration::from_micros(8);

/// Helpers kept however long they idle (more stop after `IDLE_STOP`).
const KEEP: usize = 2;
/// How long an idle helper sleeps before it stops.
const IDLE_STOP: Duration = Duration::from_millis(500);

fn helper<W: Work>(inner: &Inner<W>) {
    loop {
        if let Some((batch, op)) = claim(inner) {
            inner.busy.fetch_add(1, Ordering::AcqRel);
            batch.run(op, inner);
            inner.busy.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        // Idle: one helper becomes the assistant, the others sleep.
        if inner
            .spinning
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            spin(inner);
            inner.spinning.store(0, Ordering::Release);
        }
        let mut q = lock(&inner.queue);
        if q.stop {
            q.threads -= 1;
            return;
        }
        if inner.pending.load(Ordering::Acquire) > 0 {
            continue;
        }
        q.sleeping += 1;
        let deadline = Instant::now() + IDLE_STOP;
        while q.wakeups == 0 && !q.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = inner
                .wake
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.sleeping -= 1;
        if q.wakeups > 0 {
            q.wakeups -= 1;
        } else if q.threads > KEEP && inner.pending.load(Ordering::Acquire) == 0 {
            // Idle for long: fewer threads to keep around.
            q.threads -= 1;
            return;
        }
    }
}

impl<W: Work> Drop for Pool<W> {
    fn drop(&mut self) {
        {
            let mut q = lock(&self.inner.queue);
            q.stop = true;
            self.inner.wake.notify_all();
        }
        let me = std::thread::current().id();
        for h in lock(&self.handles).drain(..) {
            // The last owner of a device may be a helper finishing its work.
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that returns its own number; it holds an allocation, as child
    /// operations hold buffers and reference counts, so that dropping a
    /// spent one takes a moment.
    struct Echo(u64, Vec<u8>);

    impl Work for Echo {
        type Output = u64;
        fn run(&mut self) -> u64 {
            // (The allocation is the point: it is freed with the spent op.)
            assert_eq!(self.1.len(), 4096);
            self.0
        }
    }

    fn echo(v: u64) -> Echo {
        Echo(v, vec![0; 4096])
    }

    /// Work that says which thread ran it.
    struct Where;

    impl Work for Where {
        type Output = std::thread::ThreadId;
        fn run(&mut self) -> std::thread::ThreadId {
            std::thread::current().id()
        }
    }

    /// `solo`: every operation runs on the caller's thread, even with an
    /// assistant spinning for work; outside it the assistant takes a share.
    #[test]
    fn solo_keeps_every_operation_on_the_callers_thread() {
        let pool = Pool::<Where>::new(PoolConfig {
            spin: Duration::from_secs(1),
            ..PoolConfig::default()
        });
        let me = std::thread::current().id();
        let mut out = Vec::new();
        // The first round starts the assistant; wait until it spins.
        pool.execute(&mut vec![Where, Where], &mut out);
        let t = Instant::now();
        while pool.inner.spinning.load(Ordering::Acquire) == 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "no assistant");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10));
        out.clear();
        solo(|| pool.execute(&mut vec![Where, Where, Where, Where], &mut out));
        assert_eq!(out, vec![me; 4]);
        // Outside it the assistant takes a share — unless it has lost its
        // CPU for longer than `RECLAIM_AFTER` (a loaded test machine), and
        // the caller took its share back: so some round of many.
        let t = Instant::now();
        loop {
            out.clear();
            pool.execute(&mut vec![Where, Where, Where, Where], &mut out);
            assert_eq!(out.len(), 4);
            if out.iter().any(|&t| t != me) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the assistant took none"
            );
        }
    }

    /// An assistant that took the slot (READY) but does not run — its CPU
    /// given to another thread — never holds a caller up: the caller runs
    /// its own share, finds the handed share still unclaimed, and runs
    /// that too. Played here by a slot made READY with no assistant at
    /// all: without the reclaim the caller would wait forever.
    #[test]
    fn a_caller_takes_back_what_a_descheduled_assistant_has_not_started() {
        let pool = Arc::new(Pool::<Where>::new(PoolConfig {
            spin: Duration::from_secs(1),
            ..PoolConfig::default()
        }));
        pool.inner.assist.state.store(READY, Ordering::Release);
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            p.execute(&mut vec![Where, Where, Where, Where], &mut out);
            let _ = tx.send((std::thread::current().id(), out));
        });
        let (caller, out) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the caller waited for an assistant that never ran");
        assert_eq!(out, vec![caller; 4], "each operation once, on the caller");
        assert!(lock(&pool.inner.assist.ops).is_empty());
        // The slot is open again for the next caller.
        assert_eq!(pool.inner.assist.state.load(Ordering::Acquire), READY);
    }

    /// Many callers sharing the assistant: every batch gets back exactly
    /// the results of its own operations. (A caller that put the slot's
    /// vector back after handing the slot on once emptied the next caller's
    /// operations: its request then waited forever for results that never
    /// came.)
    #[test]
    fn every_caller_gets_exactly_its_own_results() {
        let pool = Arc::new(Pool::<Echo>::new(PoolConfig::default()));
        let threads: Vec<_> = (0..32u64)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let (mut ops, mut out) = (Vec::new(), Vec::new());
                    for i in 0..20_000u64 {
                        let base = (t << 40) | (i << 4);
                        ops.extend((0..3).map(|k| echo(base + k)));
                        pool.execute(&mut ops, &mut out);
                        out.sort_unstable();
                        assert_eq!(out, [base, base + 1, base + 2], "thread {t}, batch {i}");
                        out.clear();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Spawned work reaches its sink, each result once.
    #[test]
    fn spawned_work_reaches_its_sink() {
        let pool = Pool::<Echo>::new(PoolConfig::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        pool.spawn(
            (0..50).map(echo).collect(),
            Box::new(move |v, _| {
                let _ = lock(&tx).send(v);
            }),
        );
        let mut got: Vec<u64> = (0..50)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }
}
