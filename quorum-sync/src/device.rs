//! The blocking driver: a quorum device over [`Child`]ren, usable from many
//! threads at once.
//!
//! Every decision is the core's. This file only moves bytes: a caller submits
//! its request under the lock, the core's actions are routed to the mail of
//! the request they belong to, and each caller carries out its own — the
//! child operations of one round through the [`crate::pool`] (back to back
//! with one helper assisting when children are fast, one helper each when
//! they are slow) — then reports the round's results under the lock, in slot
//! order ([`round::feed`]), so the same scenario gives the same events.
//! Events go to the sink in the order the core emitted them.
//!
//! Early-quorum reads are the exception: their results are fed one by one,
//! as they arrive, by the helper that produced them, because the caller
//! leaves at the answer ([`Action::Answer`]) and the stragglers still have to
//! be judged. Their event order follows completion order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use quorum_proto::{
    Action, ChildId, Config, Errno, Outcome, Quorum, Request, RequestId, device_length,
};

use crate::pool::{Op, Pool, SPIN};
use quorum_driver::Child;
use quorum_driver::zeroes::zeroes_or_write;
use std::time::Duration;

use quorum_driver::done::{self as round, Done};
pub use quorum_driver::{DeviceError, EventSink, ReadError};

/// The core as this driver builds it: up to 16 children, 64 requests in flight.
type Core = Quorum<16, 64, 3200>;

struct State {
    q: Box<Core>,
    children: BTreeMap<u32, Arc<dyn Child>>,
    /// Actions waiting for the caller that owns their request.
    mail: Vec<Action>,
    /// Early-quorum reads, driven by their completions on helper threads.
    early: HashMap<u64, Early>,
    next_id: u64,
    sink: Option<EventSink>,
    /// Threads waiting on `changed` (nobody is woken needlessly).
    waiting: usize,
    /// Each child's recent operation time (ns, a running average): an
    /// early-quorum caller runs the fastest child's read itself.
    latency: HashMap<u32, u64>,
}

/// An early-quorum read in flight: its buffers live here, not with the
/// caller, because its stragglers finish after the caller has its answer.
struct Early {
    bufs: Vec<Vec<u8>>,
    /// The winning content, shared by the rewrites.
    winner: Option<Arc<[u8]>>,
    answer: Option<Outcome>,
    /// The caller has taken the answer.
    taken: bool,
    /// The core completed the request.
    finished: bool,
    caller: std::thread::Thread,
    /// The child of each slot, for the latency averages.
    child_of: Vec<u32>,
}

/// What the device shares with the helper threads that drive early reads.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a request completes or mail arrives, for waiters.
    changed: Condvar,
    pool: Pool,
}

/// A quorum device over blocking children.
pub struct Device {
    shared: Arc<Shared>,
    /// Early quorum in effect (fixed at creation).
    early: bool,
}

/// One child operation, owning what it touches so that any thread can run it.
pub(crate) enum Job {
    /// Nothing to run: this result (a child that is gone).
    Failed(Done),
    Read {
        slot: usize,
        child: Arc<dyn Child>,
        buf: Vec<u8>,
        offset: u64,
    },
    Write {
        slot: usize,
        child: Arc<dyn Child>,
        data: Arc<[u8]>,
        offset: u64,
    },
    Zeroes {
        slot: usize,
        child: Arc<dyn Child>,
        offset: u64,
        len: u64,
    },
    Flush {
        slot: usize,
        child: Arc<dyn Child>,
    },
    Rewrite {
        slot: usize,
        child: Arc<dyn Child>,
        data: Arc<[u8]>,
        offset: u64,
    },
}

impl Job {
    /// Does the operation, leaving the job spent (its buffer, if any, moved
    /// into the result) but still holding its child and data: whoever drops
    /// it pays for the reference counts, which the assistant leaves to the
    /// caller (the caller touches those counts next anyway).
    fn run_mut(&mut self) -> Done {
        match self {
            Job::Failed(done) => std::mem::replace(done, Done::Flush(0, Ok(()))),
            Job::Read {
                slot,
                child,
                buf,
                offset,
            } => {
                let mut buf = std::mem::take(buf);
                let r = errno(child.read_at(&mut buf, *offset));
                Done::Read(*slot, r, buf)
            }
            Job::Write {
                slot,
                child,
                data,
                offset,
            } => Done::Write(*slot, errno(child.write_at(data, *offset))),
            Job::Zeroes {
                slot,
                child,
                offset,
                len,
            } => Done::Write(*slot, errno(zeroes_or_write(&**child, *offset, *len))),
            Job::Flush { slot, child } => Done::Flush(*slot, errno(child.flush())),
            Job::Rewrite {
                slot,
                child,
                data,
                offset,
            } => Done::Rewrite(*slot, errno(child.write_at(data, *offset))),
        }
    }

    /// A child read (its result carries a buffer).
    pub(crate) fn is_read(&self) -> bool {
        matches!(self, Job::Read { .. })
    }

    /// Runs the operation; a panic in the child becomes an I/O error for
    /// that slot, so the request still completes.
    pub(crate) fn run_caught(mut self) -> Done {
        self.run_caught_mut()
    }

    /// [`Job::run_caught`], leaving the spent job to be dropped by the caller.
    pub(crate) fn run_caught_mut(&mut self) -> Done {
        let (slot, read) = match &*self {
            Job::Failed(_) => return self.run_mut(),
            Job::Read { slot, buf, .. } => (*slot, Some(buf.len())),
            Job::Write { slot, .. }
            | Job::Zeroes { slot, .. }
            | Job::Flush { slot, .. }
            | Job::Rewrite { slot, .. } => (*slot, None),
        };
        let flush = matches!(self, Job::Flush { .. });
        let rewrite = matches!(self, Job::Rewrite { .. });
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_mut())).unwrap_or_else(
            |_| {
                let e = Err(Errno::EIO);
                match read {
                    Some(len) => Done::Read(slot, e, vec![0; len]),
                    None if flush => Done::Flush(slot, e),
                    None if rewrite => Done::Rewrite(slot, e),
                    None => Done::Write(slot, e),
                }
            },
        )
    }
}

/// The child operation an action asks for, if its child is still attached.
/// `bufs` supplies read buffers (taken) and rewrite sources; `payload` the
/// request's data, `winner` the shared copy of a repair's source.
fn job_for(
    a: &Action,
    children: &BTreeMap<u32, Arc<dyn Child>>,
    bufs: &mut [Vec<u8>],
    payload: &mut Option<Arc<[u8]>>,
    winner: &mut Option<Arc<[u8]>>,
) -> Option<Job> {
    let child = |c: &ChildId| children.get(&c.0).cloned();
    Some(match *a {
        Action::Read {
            slot,
            child: ref c,
            offset,
            len,
            ..
        } => {
            let child = child(c)?;
            let b = bufs.get_mut(slot)?;
            let mut buf = std::mem::take(b);
            // Reused buffers keep their length: no zeroing, no allocation.
            buf.resize(len as usize, 0);
            Job::Read {
                slot,
                child,
                buf,
                offset,
            }
        }
        Action::Write {
            slot,
            child: ref c,
            offset,
            ..
        } => Job::Write {
            slot,
            child: child(c)?,
            // One buffer per request, shared by every child.
            data: payload.get_or_insert_with(|| Arc::from(&[][..])).clone(),
            offset,
        },
        Action::WriteZeroes {
            slot,
            child: ref c,
            offset,
            len,
            ..
        } => Job::Zeroes {
            slot,
            child: child(c)?,
            offset,
            len,
        },
        Action::Flush {
            slot, child: ref c, ..
        } => Job::Flush {
            slot,
            child: child(c)?,
        },
        Action::Rewrite {
            slot,
            child: ref c,
            source,
            offset,
            ..
        } => {
            let src = bufs.get(source).map(Vec::as_slice).unwrap_or(&[]);
            Job::Rewrite {
                slot,
                child: child(c)?,
                data: winner.get_or_insert_with(|| Arc::from(src)).clone(),
                offset,
            }
        }
        Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => return None,
    })
}

thread_local! {
    /// Read buffers of this thread's last request, reused so that a read
    /// neither allocates nor zeroes them again.
    static BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The last write's payload, reused when nobody holds it any more.
    static PAYLOAD: std::cell::RefCell<Option<Arc<[u8]>>> = const { std::cell::RefCell::new(None) };
    /// The vectors a request's rounds go through, reused likewise.
    static SCRATCH: std::cell::Cell<Scratch> = const { std::cell::Cell::new(Scratch::new()) };
}

/// A write's data, as the caller gave it.
enum Payload<'a> {
    /// Not a write.
    None,
    /// To be copied once for the children.
    Borrowed(&'a [u8]),
    /// Shared with the children as it is.
    Shared(Arc<[u8]>),
}

/// Per-thread vectors for [`Device::run`] (taken out while a request runs).
struct Scratch {
    mine: Vec<Action>,
    ops: Vec<Op>,
    results: Vec<Done>,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            mine: Vec::new(),
            ops: Vec::new(),
            results: Vec::new(),
        }
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl State {
    /// Routes every queued action: events to the sink, early reads' actions
    /// to their record (returning the child operations to start), the rest
    /// to the mail of their caller.
    fn route(&mut self, shared: &Arc<Shared>) -> Vec<(u64, Vec<Op>)> {
        let mut start: Vec<(u64, Vec<Op>)> = Vec::new();
        while let Some(a) = self.q.poll_action() {
            let id = a.id().0;
            if let Action::Event { id, event } = a {
                if let Some(s) = self.sink.as_mut() {
                    s(id, &event);
                }
                continue;
            }
            // (No hashing at all without early reads in flight.)
            let e = match self.early.is_empty() {
                true => None,
                false => self.early.get_mut(&id),
            };
            let Some(e) = e else {
                self.mail.push(a);
                continue;
            };
            match a {
                Action::Answer { outcome, .. } => {
                    e.answer = Some(outcome);
                    e.caller.unpark();
                }
                Action::Complete { outcome, .. } => {
                    e.answer.get_or_insert(outcome);
                    e.finished = true;
                    e.caller.unpark();
                    if e.taken {
                        self.early.remove(&id);
                    }
                    if self.waiting > 0 {
                        shared.changed.notify_all();
                    }
                }
                other => {
                    if let Action::Read { slot, child, .. } = other
                        && let Some(c) = e.child_of.get_mut(slot)
                    {
                        *c = child.0;
                    }
                    let job = job_for(
                        &other,
                        &self.children,
                        &mut e.bufs,
                        &mut None,
                        &mut e.winner,
                    );
                    let op = match job {
                        Some(j) => j,
                        // The child is gone (cannot happen: membership
                        // changes wait for a drain): report an error.
                        None => Job::Failed(match other {
                            Action::Read { slot, .. } => {
                                Done::Read(slot, Err(Errno::EIO), Vec::new())
                            }
                            Action::Rewrite { slot, .. } => Done::Rewrite(slot, Err(Errno::EIO)),
                            _ => continue,
                        }),
                    };
                    match start.last_mut() {
                        Some((i, ops)) if *i == id => ops.push(op),
                        _ => start.push((id, vec![op])),
                    }
                }
            }
        }
        start
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere (in a child implementation) leaves the state
        // consistent: the core never panics mid-update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiting += 1;
        st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        st.waiting -= 1;
        st
    }

    /// Starts early reads' child operations on the helpers.
    fn start(self: &Arc<Self>, ops: Vec<(u64, Vec<Op>)>) {
        for (id, ops) in ops {
            let me = self.clone();
            self.pool.spawn(
                ops,
                Box::new(move |done, took| me.early_done(id, done, took)),
            );
        }
    }

    /// One child operation of early read `id` finished, after `took`.
    fn early_done(self: &Arc<Self>, id: u64, done: Done, took: Duration) {
        let start = {
            let mut st = self.lock();
            let State {
                q, early, latency, ..
            } = &mut *st;
            let Some(e) = early.get_mut(&id) else { return };
            if let Done::Read(slot, ..) = done
                && let Some(&c) = e.child_of.get(slot)
            {
                let ns = took.as_nanos().min(u64::MAX as u128) as u64;
                let avg = latency.entry(c).or_insert(ns);
                *avg = *avg - *avg / 4 + ns / 4;
            }
            round::feed(q, RequestId(id), vec![done], &mut e.bufs);
            st.route(self)
        };
        self.start(start);
    }
}

use quorum_driver::errno;

impl Device {
    /// A device over `children` (slot order, named `children.0` …) with
    /// `config` (whose `children` must match).
    pub fn new(config: Config, children: Vec<Arc<dyn Child>>) -> Result<Device, DeviceError> {
        if config.children != children.len() {
            return Err(DeviceError::ChildCount {
                expected: config.children,
                got: children.len(),
            });
        }
        let q = Box::new(Core::new(config).map_err(DeviceError::Config)?);
        let early = q.config().early_quorum;
        let children = q.children().iter().map(|c| c.0).zip(children).collect();
        Ok(Device {
            early,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    q,
                    children,
                    mail: Vec::new(),
                    early: HashMap::new(),
                    next_id: 1,
                    sink: None,
                    waiting: 0,
                    latency: HashMap::new(),
                }),
                changed: Condvar::new(),
                // Early-quorum stragglers may each hold a helper for as long
                // as a slow child takes; they start only when needed.
                pool: Pool::new(256),
            }),
        })
    }

    /// Sends every event to `sink` from now on. The sink runs with the
    /// device's lock held (that is what keeps events in order), so it must
    /// not call back into this device.
    pub fn set_event_sink(&self, sink: EventSink) {
        self.lock().sink = Some(sink);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The configuration in effect.
    pub fn config(&self) -> Config {
        *self.lock().q.config()
    }

    /// The current children, in slot order.
    pub fn children(&self) -> Vec<ChildId> {
        self.lock().q.children().to_vec()
    }

    /// The device size in bytes: all children must agree (R-CFG-7).
    pub fn size(&self) -> Result<u64, Errno> {
        let kids: Vec<Arc<dyn Child>> = {
            let st = self.lock();
            st.q.children()
                .iter()
                .filter_map(|c| st.children.get(&c.0).cloned())
                .collect()
        };
        device_length(kids.iter().map(|c| c.size().map_err(|e| Errno::from(&e))))
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// With early quorum ([`Config::early_quorum`]) this returns as soon as
    /// `threshold` children agree; the others are still compared, reported
    /// and repaired, on helper threads, before the request leaves the device
    /// (a drain — membership changes, dropping the device — waits for them).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let req = Request::Read {
            offset,
            len: buf.len() as u64,
        };
        let outcome = if self.early {
            self.run_early(req, buf)
        } else {
            BUFS.with(|cell| {
                let mut bufs = cell.take();
                let o = self.run(req, Payload::None, &mut bufs);
                if let Outcome::Read { slot, .. } = o {
                    buf.copy_from_slice(&bufs[slot]);
                }
                cell.replace(bufs);
                o
            })
        };
        match outcome {
            Outcome::Read { .. } => Ok(()),
            Outcome::ContentsMismatch { offset } => Err(ReadError::ContentsMismatch { offset }),
            Outcome::Failed(e) => Err(ReadError::Io(e)),
            Outcome::Done => Err(ReadError::Io(Errno::EIO)),
        }
    }

    /// Writes `data` at `offset` to every child (R-WRITE). The children's
    /// writes may run on other threads, so `data` is copied once (into a
    /// buffer this thread reuses); [`Device::write_shared`] avoids even that.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        done(self.run(
            Request::Write {
                offset,
                len: data.len() as u64,
            },
            Payload::Borrowed(data),
            &mut Vec::new(),
        ))
    }

    /// [`Device::write`] without the copy: every child's write reads
    /// straight from `data`.
    pub fn write_shared(&self, offset: u64, data: Arc<[u8]>) -> Result<(), Errno> {
        done(self.run(
            Request::Write {
                offset,
                len: data.len() as u64,
            },
            Payload::Shared(data),
            &mut Vec::new(),
        ))
    }

    /// Writes zeroes (R-WRITE-3).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Errno> {
        done(self.run(
            Request::WriteZeroes { offset, len },
            Payload::None,
            &mut Vec::new(),
        ))
    }

    /// Flushes every child (R-FLUSH).
    pub fn flush(&self) -> Result<(), Errno> {
        done(self.run(Request::Flush, Payload::None, &mut Vec::new()))
    }

    /// Adds a child once no request is in flight (R-MEMBER-1, R-MEMBER-4).
    pub fn add_child(&self, child: Arc<dyn Child>) -> Result<ChildId, DeviceError> {
        let mut st = self.idle();
        let id = st.q.add_child().map_err(DeviceError::Member)?;
        st.children.insert(id.0, child);
        Ok(id)
    }

    /// Removes a child once no request is in flight (R-MEMBER-1..4).
    pub fn remove_child(&self, id: ChildId) -> Result<(), DeviceError> {
        let mut st = self.idle();
        st.q.remove_child(id).map_err(DeviceError::Member)?;
        st.children.remove(&id.0);
        Ok(())
    }

    /// Waits until no request is in flight and returns the lock (QEMU drains
    /// the node before changing its children).
    fn idle(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        while st.q.in_flight() != 0 {
            st = self.shared.wait(st);
        }
        st
    }

    /// Submits `req` under a fresh id, waiting for room.
    fn submit(&self, req: Request) -> Result<(MutexGuard<'_, State>, RequestId), Outcome> {
        let mut st = self.lock();
        loop {
            let id = RequestId(st.next_id);
            st.next_id = st.next_id.wrapping_add(1).max(1);
            match st.q.submit(id, req) {
                Ok(()) => return Ok((st, id)),
                Err(quorum_proto::Error::Busy) => st = self.shared.wait(st),
                Err(quorum_proto::Error::InvalidRange { .. }) => {
                    return Err(Outcome::Failed(Errno::EINVAL));
                }
                Err(_) => continue, // an id still in flight from a wrapped counter
            }
        }
    }

    /// Runs one request to completion on this thread (and on helpers).
    fn run(&self, req: Request, data: Payload<'_>, bufs: &mut Vec<Vec<u8>>) -> Outcome {
        let (mut st, id) = match self.submit(req) {
            Ok(x) => x,
            Err(o) => return o,
        };
        let n = st.q.children().len();
        if matches!(req, Request::Read { .. }) && bufs.len() < n {
            bufs.resize_with(n, Vec::new);
        }
        // One copy of the data per request, shared by every child's write
        // (the children may be written from other threads); the allocation
        // of this thread's last write is reused when it is free again.
        let copied = matches!(data, Payload::Borrowed(_));
        let mut payload: Option<Arc<[u8]>> = match data {
            Payload::None => None,
            Payload::Shared(a) => Some(a),
            Payload::Borrowed(d) => Some({
                let cached = PAYLOAD.with(|p| p.borrow_mut().take());
                match cached {
                    Some(mut a) if a.len() == d.len() => match Arc::get_mut(&mut a) {
                        Some(m) => {
                            m.copy_from_slice(d);
                            a
                        }
                        None => Arc::from(d),
                    },
                    _ => Arc::from(d),
                }
            }),
        };
        let mut winner: Option<Arc<[u8]>> = None;
        let mut scratch = SCRATCH.take();
        let Scratch {
            mine, ops, results, ..
        } = &mut scratch;
        let outcome = loop {
            // Route what the core said; take this request's part, waiting
            // for some if there is none (a write held behind a repair).
            let start = st.route(&self.shared);
            if !start.is_empty() {
                drop(st);
                self.shared.start(start);
                st = self.lock();
            }
            loop {
                if st.mail.iter().all(|a| a.id() == id) {
                    // The usual case: everything is ours.
                    std::mem::swap(mine, &mut st.mail);
                } else {
                    let mut i = 0;
                    while i < st.mail.len() {
                        if st.mail[i].id() == id {
                            mine.push(st.mail.remove(i));
                        } else {
                            i += 1;
                        }
                    }
                    // Others' mail arrived: their owners may be waiting.
                    if st.waiting > 0 {
                        self.shared.changed.notify_all();
                    }
                }
                if !mine.is_empty() {
                    break;
                }
                st = self.shared.wait(st);
            }
            let mut done = None;
            for a in mine.drain(..) {
                if let Action::Complete { outcome, .. } = a {
                    done = Some(outcome);
                } else if let Some(j) = job_for(&a, &st.children, bufs, &mut payload, &mut winner) {
                    ops.push(j);
                }
            }
            if let Some(outcome) = done {
                if st.waiting > 0 {
                    self.shared.changed.notify_all();
                }
                break outcome;
            }
            drop(st);
            self.shared.pool.execute(ops, results);
            st = self.lock();
            round::feed_all(&mut st.q, id, results, bufs);
        };
        drop(st);
        SCRATCH.set(scratch);
        if let Some(p) = payload.filter(|_| copied) {
            // Every child operation is over: no one else holds it now.
            PAYLOAD.with(|c| *c.borrow_mut() = Some(p));
        }
        outcome
    }

    /// An early-quorum read: its child operations run on helpers, which
    /// feed each result to the core as it arrives; this thread waits for the
    /// answer only.
    fn run_early(&self, req: Request, buf: &mut [u8]) -> Outcome {
        let (_, len) = req.range();
        let (id, mine, others) = match self.submit(req) {
            Ok((mut st, id)) => {
                let n = st.q.children().len();
                st.early.insert(
                    id.0,
                    Early {
                        bufs: vec![vec![0u8; len as usize]; n],
                        winner: None,
                        answer: None,
                        taken: false,
                        finished: false,
                        caller: std::thread::current(),
                        child_of: vec![0; n],
                    },
                );
                let mut start = st.route(&self.shared);
                // This thread reads the child that has lately been fastest
                // itself (no handoff on the way to the answer); the others
                // go to helpers. A child that has just turned slow costs one
                // late answer before its average shows it.
                let mut mine = None;
                if let Some(k) = start.iter().position(|(r, _)| *r == id.0) {
                    let e = &st.early[&id.0];
                    let ops = &mut start[k].1;
                    let lat = |op: &Op| match op {
                        Job::Read { slot, .. } => e
                            .child_of
                            .get(*slot)
                            .and_then(|c| st.latency.get(c))
                            .copied()
                            .unwrap_or(0),
                        _ => u64::MAX,
                    };
                    if let Some(best) = (0..ops.len()).min_by_key(|&i| lat(&ops[i])) {
                        mine = Some(ops.swap_remove(best));
                    }
                }
                (id, mine, start)
            }
            Err(o) => return o,
        };
        self.shared.start(others);
        if let Some(op) = mine {
            let (done, took) = self.shared.pool.inner.run_here(op);
            self.shared.early_done(id.0, done, took);
        }
        let waited = std::time::Instant::now();
        loop {
            {
                let mut st = self.lock();
                let Some(e) = st.early.get_mut(&id.0) else {
                    // Cannot happen: the record stays until the answer is taken.
                    return Outcome::Failed(Errno::EIO);
                };
                if let Some(o) = e.answer {
                    if let Outcome::Read { slot, .. } = o
                        && let Some(b) = e.bufs.get(slot)
                    {
                        buf.copy_from_slice(b);
                    }
                    e.taken = true;
                    if e.finished {
                        st.early.remove(&id.0);
                    }
                    return o;
                }
            }
            // The other fast children usually finish about when ours did:
            // spin a little before sleeping.
            if waited.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Device {
    /// Waits for early reads' stragglers, so that no child is touched after
    /// the device is gone.
    fn drop(&mut self) {
        drop(self.idle());
    }
}

fn done(o: Outcome) -> Result<(), Errno> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
        _ => Err(Errno::EIO),
    }
}
