//! The blocking driver: a quorum device over [`Child`]ren, usable from many
//! threads at once.
//!
//! Every decision is the core's, and everything a driver does alike is the
//! kit's ([`quorum_driver::Engine`]): this file is only the way of waiting —
//! a caller parks its thread until its request has mail — and of running
//! child operations: the caller carries out its own request's round through
//! the [`Pool`] (back to back with one helper assisting when children are
//! fast, one helper each when they are slow), then reports the round's
//! results in slot order, so the same scenario gives the same events.
//!
//! Early-quorum reads are the exception: the caller runs the child that has
//! lately been fastest itself, hands the others to helpers, and leaves at
//! the answer; the request is then driven by its completions, each fed as it
//! arrives by the helper that produced it ([`Engine::hand_over`]). Their
//! event order follows completion order.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use quorum_driver::sync::{MapSink, SyncMap};
use quorum_driver::{
    BlockingOp, Child, Engine, Guarded, Latencies, Locked, Op, Pool, PoolConfig, Progress, ReadSet,
    Shared, Submit, Waiter,
};
use quorum_proto::{
    Action, ChildId, Config, Errno, Extent, Outcome, Request, RequestId, device_length,
};

pub use quorum_driver::{DeviceError, EventSink, ReadError};

/// How long an early-quorum caller spins for its answer before it parks:
/// the other fast children usually finish about when its own did.
const ANSWER_SPIN: Duration = Duration::from_micros(50);

/// The engine and, beside it, each child's recent operation time: an
/// early-quorum caller runs the fastest child's read itself.
type State = Guarded<Arc<dyn Child>, Latencies>;

/// What the device shares with the helper threads that drive early reads.
struct Inner {
    state: Locked<Arc<dyn Child>, Latencies>,
    pool: Pool<BlockingOp>,
}

impl AsRef<Locked<Arc<dyn Child>, Latencies>> for Inner {
    fn as_ref(&self) -> &Locked<Arc<dyn Child>, Latencies> {
        &self.state
    }
}

/// A quorum device over blocking children.
pub struct Device {
    shared: Arc<Inner>,
    /// Early quorum in effect (fixed at creation).
    early: bool,
}

/// What a read's outcome means for its caller.
fn read_result(outcome: Outcome) -> Result<(), ReadError> {
    match outcome {
        Outcome::Read { .. } => Ok(()),
        Outcome::ContentsMismatch { offset } => Err(ReadError::ContentsMismatch { offset }),
        Outcome::Failed(e) => Err(ReadError::Io(e)),
        Outcome::Done | Outcome::BlockStatus(_) => Err(ReadError::Io(Errno::EIO)),
    }
}

thread_local! {
    /// Read buffers of this thread's last request, reused so that a read
    /// neither allocates nor zeroes them again.
    static BUFS: RefCell<ReadSet> = const { RefCell::new(ReadSet::new()) };
    /// A resync's read buffers (one per child, a chunk each), kept for the
    /// thread's next chunk: no allocation, no zeroing per chunk.
    static RESYNC_BUFS: RefCell<ReadSet> = const { RefCell::new(ReadSet::new()) };
    /// The last write's payload, reused when nobody holds it any more.
    static PAYLOAD: RefCell<Option<Arc<[u8]>>> = const { RefCell::new(None) };
    /// The vectors a request's rounds go through, reused likewise.
    static SCRATCH: Cell<Scratch> = const { Cell::new(Scratch::new()) };
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
#[derive(Default)]
struct Scratch {
    mine: Vec<Action>,
    ops: Vec<BlockingOp>,
    results: Vec<quorum_driver::Done>,
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.engine()
    }

    /// Starts the child operations of handed-over (early) requests that the
    /// last routing produced: rewrites of stragglers, on helpers.
    fn start_ready(self: &Arc<Self>, st: &mut State) {
        if !st.eng.has_ready() {
            return;
        }
        for (id, ops) in st.eng.ready_ops() {
            self.spawn(id, ops, Vec::new());
        }
    }

    /// Hands `ops` of the handed-over request `id` to helpers, which feed
    /// each result as it arrives; `children[slot]` names the child of each
    /// read, for the latency averages.
    fn spawn(self: &Arc<Self>, id: RequestId, ops: Vec<BlockingOp>, children: Vec<u32>) {
        if ops.is_empty() {
            return;
        }
        let me = Arc::downgrade(self);
        self.pool.spawn(
            ops,
            Box::new(move |done, took| {
                if let Some(dev) = me.upgrade() {
                    dev.arrived(id, done, took, &children);
                }
            }),
        );
    }

    /// One result of a handed-over request: fed, routed, and whatever it
    /// caused started.
    fn arrived(
        self: &Arc<Self>,
        id: RequestId,
        done: quorum_driver::Done,
        took: Duration,
        children: &[u32],
    ) {
        let mut st = self.lock();
        if let quorum_driver::Done::Read(slot, ..) = &done
            && let Some(&c) = children.get(*slot)
        {
            st.own.record(c, took);
        }
        st.eng.feed_parked(id, done);
        st.eng.route(None);
        self.start_ready(&mut st);
    }
}

impl Device {
    /// A device over `children` (slot order, named `children.0` …) with
    /// `config` (whose `children` must match).
    pub fn new(config: Config, children: Vec<Arc<dyn Child>>) -> Result<Device, DeviceError> {
        let eng = Engine::new(config, children)?;
        let early = eng.config().early_quorum;
        Ok(Device {
            early,
            shared: Arc::new(Inner {
                state: Locked::new(eng, Latencies::default()),
                // Early-quorum stragglers may each hold a helper for as long
                // as a slow child takes; they start only when needed.
                pool: Pool::new(PoolConfig::default()),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The device size in bytes: all children must agree (R-CFG-7).
    pub fn size(&self) -> Result<u64, Errno> {
        let kids = self.lock().eng.child_handles();
        device_length(kids.iter().map(|c| c.size().map_err(|e| Errno::from(&e))))
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// With early quorum ([`Config::early_quorum`]) this returns as soon as
    /// `threshold` children agree; the others are still compared, reported
    /// and repaired, on helper threads, before the request leaves the device
    /// (a drain — membership changes, dropping the device — waits for them).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.early {
            let req = Request::Read {
                offset,
                len: buf.len() as u64,
            };
            return read_result(self.run_early(req, buf));
        }
        let len = buf.len();
        self.read_with(offset, len, |r| r.map(|won| buf.copy_from_slice(won)))
    }

    /// [`Device::read`] of `len` bytes that lends `f` the bytes the vote
    /// chose where they lie, in the winning child's read buffer, instead of
    /// copying them out: a server sends them from there (a 64 KiB read
    /// costs one copy less, and no zeroing of a buffer to copy into).
    /// `f` must not read from this device on the same thread.
    pub fn read_with<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(Result<&[u8], ReadError>) -> R,
    ) -> R {
        if self.early {
            let mut buf = vec![0u8; len];
            let r = self.read(offset, &mut buf);
            return f(r.map(|()| &buf[..]));
        }
        let req = Request::Read {
            offset,
            len: len as u64,
        };
        BUFS.with(|cell| {
            let mut bufs = cell.take();
            let outcome = self.run(req, Payload::None, &mut bufs);
            let r = match outcome {
                Outcome::Read { slot, .. } => match bufs.get(slot) {
                    won if won.len() == len => f(Ok(won)),
                    _ => f(Err(ReadError::Io(Errno::EIO))),
                },
                other => f(read_result(other).map(|()| &[][..])),
            };
            cell.replace(bufs);
            r
        })
    }

    /// Writes `data` at `offset` to every child (R-WRITE). The children's
    /// writes may run on other threads, so `data` is copied once (into a
    /// buffer this thread reuses); [`Device::write_shared`] avoids even that.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let req = Request::Write {
            offset,
            len: data.len() as u64,
        };
        done(self.run(req, Payload::Borrowed(data), &mut ReadSet::new()))
    }

    /// [`Device::write`] without the copy: every child's write reads
    /// straight from `data`.
    pub fn write_shared(&self, offset: u64, data: Arc<[u8]>) -> Result<(), Errno> {
        let req = Request::Write {
            offset,
            len: data.len() as u64,
        };
        done(self.run(req, Payload::Shared(data), &mut ReadSet::new()))
    }

    /// Writes zeroes (R-WRITE-3).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let req = Request::WriteZeroes { offset, len };
        done(self.run(req, Payload::None, &mut ReadSet::new()))
    }

    /// Flushes every child (R-FLUSH).
    pub fn flush(&self) -> Result<(), Errno> {
        done(self.run(Request::Flush, Payload::None, &mut ReadSet::new()))
    }

    /// Whether `offset..offset + len` starts with data or reads as zeroes,
    /// and for how long: every child is asked, zeroes only where all say so
    /// ([`quorum_proto::Quorum::handle_block_status`]).
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Extent, Errno> {
        let req = Request::BlockStatus { offset, len };
        match self.run(req, Payload::None, &mut ReadSet::new()) {
            Outcome::BlockStatus(e) => Ok(e),
            Outcome::Failed(e) => Err(e),
            _ => Err(Errno::EIO),
        }
    }

    /// A device with sync tracking (SPEC R-SYNC; `config` must have a chunk
    /// size, `map` the same one, and know these children by id): reads skip
    /// stale children and settle unsettled chunks, writes are unsettled
    /// first. With a `sink` the map is persisted — a write's `Unsettle` is
    /// durable before its child writes go out (a map writer thread groups
    /// them) and every other change is written within `lazy`.
    pub fn with_sync(
        config: Config,
        children: Vec<Arc<dyn Child>>,
        map: SyncMap,
        sink: Option<Box<dyn MapSink>>,
        lazy: Duration,
    ) -> Result<Device, DeviceError> {
        let dev = Device::new(config, children)?;
        let persisted = sink.is_some();
        dev.lock().eng.enable_sync(map, sink, true);
        if persisted {
            let weak = Arc::downgrade(&dev.shared);
            let _ = std::thread::Builder::new()
                .name("quorum-map".into())
                .spawn(move || Locked::map_writer(weak, lazy));
        }
        Ok(dev)
    }

    /// Brings `offset..offset + len` (whole chunks) back in sync
    /// (R-SYNC-4): `Ok` when done, `EAGAIN` when a client write overlapped
    /// it (nothing was written; retry), `EIO` when the children that are
    /// not stale there have no quorum.
    pub fn resync(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let req = Request::Resync { offset, len };
        RESYNC_BUFS.with(|cell| {
            let mut bufs = cell.take();
            let o = self.run(req, Payload::None, &mut bufs);
            cell.replace(bufs);
            done(o)
        })
    }

    /// A copy of the sync map, if sync tracking is on.
    pub fn sync_map(&self) -> Option<SyncMap> {
        self.lock().eng.sync_map().cloned()
    }

    /// Children added from now on are rebuilt (stale everywhere, R-SYNC-7)
    /// or trusted (QEMU's behaviour: in sync at once).
    pub fn set_rebuild(&self, rebuild: bool) {
        self.lock().eng.set_rebuild(rebuild);
    }

    /// Writes the sync map now if anything changed (a clean stop, or a
    /// resync job's end), without the bits of chunks clean lately that the
    /// file keeps a while ([`SyncMap::set_lag`]): it then says exactly
    /// what is unsettled. Waits for a write of the map writer in progress.
    pub fn write_map(&self) -> bool {
        if let Some(m) = self.lock().eng.sync_map_mut() {
            m.drop_lag();
        }
        // Bounded: a map writer holds the file for one write at a time.
        for _ in 0..5000 {
            if self.shared.state.write_map(true) {
                return true;
            }
            let pending = self
                .lock()
                .eng
                .sync_map()
                .is_some_and(|m| m.changed() || m.urgent());
            if !pending {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Differences settled so far (R-SYNC-3).
    pub fn settled_differences(&self) -> u64 {
        self.lock().eng.settled_differences()
    }

    /// Whether chunk `c` of `map` needs a resync that can be done now: it
    /// is unsettled, or stale on a child that can be reached (a stale child
    /// that cannot be reached waits for its return, R-SYNC-8).
    fn needs_now(map: &SyncMap, reach: &std::collections::BTreeMap<u32, bool>, c: u64) -> bool {
        map.settling(c)
            || map
                .children()
                .any(|ch| reach.get(&ch).copied().unwrap_or(false) && map.is_stale(ch, c))
    }

    fn reachability(st: &State) -> std::collections::BTreeMap<u32, bool> {
        st.eng
            .children()
            .iter()
            .map(|(id, c)| (*id, c.reachable()))
            .collect()
    }

    /// Adds a child once the device is drained (R-MEMBER-1, R-MEMBER-4):
    /// new requests wait meanwhile.
    pub fn add_child(&self, child: Arc<dyn Child>) -> Result<ChildId, DeviceError> {
        self.drained(|eng| eng.add_child(child))
    }

    /// Removes a child once the device is drained (R-MEMBER-1..4).
    pub fn remove_child(&self, id: ChildId) -> Result<(), DeviceError> {
        self.drained(|eng| eng.remove_child(id))
    }

    /// Runs `f` with the device drained: no request in flight, none
    /// starting (QEMU drains a node before changing its children; the core
    /// keeps the gate).
    fn drained<T>(&self, f: impl FnOnce(&mut Engine<Arc<dyn Child>>) -> T) -> T {
        let me = Waiter::Thread(std::thread::current());
        let mut st = self.lock();
        st.eng.start_drain();
        while !st.eng.drained(me.clone()) {
            drop(st);
            std::thread::park();
            st = self.lock();
        }
        let r = f(&mut st.eng);
        st.eng.end_drain();
        r
    }

    /// Submits `req`, waiting for room (or for a drain to end).
    fn submit(
        &self,
        req: Request,
        me: &Waiter,
    ) -> Result<(MutexGuard<'_, State>, RequestId), Outcome> {
        let mut st = self.lock();
        loop {
            match st.eng.submit(req, me.clone()) {
                Submit::Started(id) => return Ok((st, id)),
                Submit::Failed(o) => return Err(o),
                Submit::Wait => {
                    drop(st);
                    std::thread::park();
                    st = self.lock();
                }
            }
        }
    }

    /// Runs one request to completion on this thread (and on helpers).
    fn run(&self, req: Request, data: Payload<'_>, bufs: &mut ReadSet) -> Outcome {
        let me = Waiter::Thread(std::thread::current());
        let (mut st, id) = match self.submit(req, &me) {
            Ok(x) => x,
            Err(o) => return o,
        };
        if let Request::Read { len, .. } = req {
            let n = st.eng.child_ids().len();
            bufs.prepare(n, len as usize, &mut st.eng.spare);
        }
        // One copy of the data per request, shared by every child's write
        // (the children may be written from other threads); the allocation
        // of this thread's last write is reused when it is free again.
        let copied = matches!(data, Payload::Borrowed(_));
        let payload: Option<Arc<[u8]>> = match data {
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
        let mut shared = Shared {
            payload,
            winner: None,
        };
        let mut scratch = SCRATCH.take();
        let Scratch { mine, ops, results } = &mut scratch;
        let outcome = loop {
            st.eng.route(Some(id));
            self.shared.start_ready(&mut st);
            match st.eng.take(id, mine) {
                Progress::Done(o) => break o,
                Progress::Answered(_) => {}
                Progress::Wait => {
                    // A write held back behind a repair: another request's
                    // progress routes this one's mail.
                    drop(st);
                    std::thread::park();
                    st = self.lock();
                }
                Progress::Run => {
                    // (Not a clone of the map: its reference count is one
                    // more line every thread would write.)
                    let children = st.eng.children();
                    for a in mine.drain(..) {
                        if let Some(op) = Op::from_action(&a, children, bufs, &mut shared) {
                            ops.push(op);
                        }
                    }
                    drop(st);
                    self.shared.pool.execute(ops, results);
                    st = self.lock();
                    st.eng.feed(id, results, bufs);
                }
            }
        };
        drop(st);
        SCRATCH.set(scratch);
        if let Some(p) = shared.payload.filter(|_| copied) {
            // Every child operation is over: no one else holds it now.
            PAYLOAD.with(|c| *c.borrow_mut() = Some(p));
        }
        outcome
    }

    /// An early-quorum read: this thread reads the child that has lately
    /// been fastest itself (no handoff on the way to the answer), helpers
    /// the others, each result fed as it arrives; this thread waits for the
    /// answer only.
    fn run_early(&self, req: Request, buf: &mut [u8]) -> Outcome {
        let me = Waiter::Thread(std::thread::current());
        let (mut st, id) = match self.submit(req, &me) {
            Ok(x) => x,
            Err(o) => return o,
        };
        let mut bufs = ReadSet::new();
        let n = st.eng.child_ids().len();
        bufs.prepare(n, buf.len(), &mut st.eng.spare);
        st.eng.route(Some(id));
        let mut mine = Vec::new();
        let mut ops = Vec::new();
        let mut child_of = vec![0u32; n];
        if st.eng.take(id, &mut mine) == Progress::Run {
            let children = st.eng.children().clone();
            let mut shared = Shared::default();
            for a in &mine {
                if let Action::Read { slot, child, .. } = *a
                    && let Some(c) = child_of.get_mut(slot)
                {
                    *c = child.0;
                }
                ops.extend(Op::from_action(a, &children, &mut bufs, &mut shared));
            }
        }
        // A child that has just turned slow costs one late answer before
        // its average shows it.
        let lat = |op: &BlockingOp| match op {
            Op::Read { slot, .. } => st.own.nanos(child_of[*slot]),
            _ => u64::MAX,
        };
        let best = (0..ops.len()).min_by_key(|&i| lat(&ops[i]));
        let own = best.map(|i| ops.swap_remove(i));
        st.eng.hand_over(id, bufs);
        drop(st);
        self.shared.spawn(id, ops, child_of.clone());
        if let Some(op) = own {
            let slot = op.slot();
            let (done, took) = self.shared.pool.run_here(op);
            let mut st = self.lock();
            st.own.record(child_of[slot], took);
            st.eng.feed_parked(id, done);
            st.eng.route(None);
            self.shared.start_ready(&mut st);
        }
        let waited = Instant::now();
        loop {
            {
                let mut st = self.lock();
                if let Some((o, bufs)) = st.eng.answered(id) {
                    if let Outcome::Read { slot, .. } = o {
                        buf.copy_from_slice(bufs.get(slot));
                    }
                    st.eng.leave(id);
                    return o;
                }
            }
            if waited.elapsed() < ANSWER_SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
    }
}

/// `config()`, `children()`, `in_flight()`, `set_event_sink()`: the kit's,
/// as every driver answers them.
/// The device as a resync job's target (R-SYNC-4..5, R-SYNC-8): the
/// chunks that need work and can get it now, the core's resync, a flush.
impl quorum_driver::sync::ResyncTarget for Device {
    fn next(&self, from: u64) -> Option<(u64, u64, u64)> {
        let st = self.lock();
        let map = st.eng.sync_map()?;
        let reach = Device::reachability(&st);
        let mut i = from;
        loop {
            let c = map.next_work(i)?;
            if Device::needs_now(map, &reach, c) {
                let (o, l) = map.range_of(c);
                return Some((c, o, l));
            }
            i = c + 1;
        }
    }

    fn work(&self) -> u64 {
        let st = self.lock();
        let Some(map) = st.eng.sync_map() else {
            return 0;
        };
        let reach = Device::reachability(&st);
        let mut bytes = 0;
        let mut i = 0;
        while let Some(c) = map.next_work(i) {
            if Device::needs_now(map, &reach, c) {
                bytes += map.range_of(c).1;
            }
            i = c + 1;
        }
        bytes
    }

    fn resync(&self, offset: u64, len: u64) -> Result<(), Errno> {
        Device::resync(self, offset, len)
    }

    fn flush(&self) -> Result<(), Errno> {
        Device::flush(self)
    }
}

impl std::ops::Deref for Device {
    type Target = Locked<Arc<dyn Child>, Latencies>;

    fn deref(&self) -> &Self::Target {
        &self.shared.state
    }
}

impl Drop for Device {
    /// Waits for early reads' stragglers, so that no child is touched after
    /// the device is gone.
    fn drop(&mut self) {
        self.drained(|_| ());
    }
}

fn done(o: Outcome) -> Result<(), Errno> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
        _ => Err(Errno::EIO),
    }
}
