//! The part of a driver that sits between the core and the callers: request
//! ids, routing every action the core emits to the request it belongs to,
//! waking whoever waits for it, events, the drain, cancellation, and the
//! early-quorum lifecycle. A driver keeps one [`Engine`] behind its lock and
//! adds only its way of waiting (a parked thread, a waker) and of running
//! child operations (threads, futures).
//!
//! Decisions stay in the core: whether a request may start (room, drain),
//! what a cancelled request still owes (R-CANCEL-2), when a drain is over.
//! This module only carries them out the same way for every driver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::Waker;
use std::thread::Thread;

use quorum_proto::{
    Action, ChildId, Config, Errno, Error, Event, Outcome, Quorum, Request, RequestId,
};

use crate::bufs::{ReadSet, Spare};
use crate::done::{self, Done};
use crate::error::{DeviceError, EventSink};
use crate::op::{Op, Shared};
use crate::sync::{Applied, MapSink, SyncMap};

/// The core as the drivers build it: up to 16 children, 64 requests in
/// flight (more callers wait for room), room for all their actions.
pub type Core = Quorum<16, 64, 3200>;

/// Who is told that a request has something new (mail, an answer, its
/// outcome) or that the device has room again.
#[derive(Clone, Debug, Default)]
pub enum Waiter {
    /// Nobody (the caller polls).
    #[default]
    None,
    /// A parked thread, unparked.
    Thread(Thread),
    /// A task, woken.
    Task(Waker),
}

impl Waiter {
    /// Wakes it.
    pub fn wake(&self) {
        match self {
            Waiter::None => {}
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => w.wake_by_ref(),
        }
    }
}

/// A request in flight, by its place in the table.
#[derive(Debug)]
struct Entry {
    /// Bumped at each reuse, so that an old id never finds a new request.
    generation: u32,
    /// The request's number in submission order (from 1): how events name
    /// it, as every driver and the simulator do, whatever the core's id.
    seq: u64,
    live: bool,
    /// Woken when the request has mail, an answer or its outcome.
    waiter: Waiter,
    /// Handed over ([`Engine::hand_over`]): its child operations go to
    /// whoever routes them ([`Engine::ready_ops`]), not to its caller — an
    /// early-quorum read of the blocking driver, driven by its completions
    /// on helper threads while its caller waits only for the answer.
    routed: bool,
    /// Child operations waiting for the owner.
    mail: Vec<Action>,
    /// Early quorum: the answer ([`Action::Answer`]), and whether the owner
    /// has been told.
    answer: Option<Outcome>,
    answer_told: bool,
    /// The completion, until the owner takes it.
    outcome: Option<Outcome>,
    /// Read buffers of a handed-over request, and what its rewrites share.
    parked: ReadSet,
    shared: Shared,
    /// The caller has left with its answer: the entry goes at completion.
    left: bool,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            generation: 0,
            seq: 0,
            live: false,
            waiter: Waiter::None,
            routed: false,
            mail: Vec::new(),
            answer: None,
            answer_told: false,
            outcome: None,
            parked: ReadSet::new(),
            shared: Shared::default(),
            left: false,
        }
    }
}

/// What [`Engine::submit`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Submit {
    /// The request started under this id.
    Started(RequestId),
    /// No room now, or a drain is under way: the waiter given will be woken
    /// when that may have changed; try again then.
    Wait,
    /// Refused: this is its outcome (an impossible range is `EINVAL`).
    Failed(Outcome),
}

/// What a request's owner has to do next ([`Engine::take`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Carry out the child operations moved into its vector.
    Run,
    /// Early quorum: the request is answered (said once); it goes on.
    Answered(Outcome),
    /// The request is over.
    Done(Outcome),
    /// Nothing yet: wait for the waiter to be woken.
    Wait,
}

/// An event subscriber: false once it wants no more.
pub type Subscriber = Box<dyn FnMut(RequestId, &Event) -> bool + Send>;

/// The core, the children, and the requests in flight: one per device,
/// behind the driver's lock. `K` is the driver's handle on a child.
pub struct Engine<K> {
    q: Box<Core>,
    /// By child id; copied on write (membership changes happen drained), so
    /// that a request can hold the map without holding the lock.
    children: Arc<BTreeMap<u32, K>>,
    table: Vec<Entry>,
    free: Vec<u32>,
    /// Mail of handed-over requests, for whoever routed it.
    ready: Vec<(RequestId, Vec<Action>)>,
    /// Waiting for room, for the end of a drain, or for a drain to finish.
    gate: Vec<Waiter>,
    sink: Option<EventSink>,
    subscribers: Vec<Subscriber>,
    /// The next request's number ([`Entry::seq`]).
    next_seq: u64,
    /// Spare read buffers.
    pub spare: Spare,
    /// Sync tracking (R-SYNC): the map, and its persistence.
    sync: Option<EngineSync>,
}

/// What an engine with sync tracking keeps: the map the core asks and
/// changes, the writes waiting for an `Unsettle` to be durable, and where
/// the map is persisted (taken out while a writer writes it).
struct EngineSync {
    map: SyncMap,
    /// Requests waiting for the map's generation `.0` to be written.
    waiting: Vec<(u64, RequestId)>,
    /// Where the map goes; `None` while being written, or never (a map
    /// that is not persisted: every mark is durable at once).
    sink: Option<Box<dyn MapSink>>,
    persisted: bool,
    /// Woken when the map has something to write.
    writer: Waiter,
    /// Children added at runtime start stale everywhere (R-SYNC-7).
    rebuild: bool,
}

/// How many lazy map writes ([`Engine::map_job`] with `lazy`) a chunk's
/// unsettled bit stays in a persisted map after the chunk became clean:
/// between two and three of them, so two to three seconds for a writer
/// that writes lazily every second (`quorum serve`'s).
pub const MAP_LAG_TICKS: usize = 3;

/// A map write to do outside the device's lock ([`Engine::map_job`]).
pub struct MapJob {
    /// The generation it makes durable.
    pub generation: u64,
    /// The map as of now.
    pub map: SyncMap,
    /// Where to write it; hand it back with [`Engine::map_done`].
    pub sink: Box<dyn MapSink>,
}

impl std::fmt::Debug for MapJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapJob")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<K> std::fmt::Debug for Engine<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("in_flight", &self.q.in_flight())
            .field("children", &self.q.children())
            .finish_non_exhaustive()
    }
}

fn place(id: RequestId) -> (usize, u32) {
    ((id.0 & 0xffff_ffff) as usize, (id.0 >> 32) as u32)
}

impl<K: Clone> Engine<K> {
    /// A device over `children` (slot order, `children.0` …) with `config`,
    /// whose `children` must match.
    pub fn new(config: Config, children: Vec<K>) -> Result<Engine<K>, DeviceError> {
        if config.children != children.len() {
            return Err(DeviceError::ChildCount {
                expected: config.children,
                got: children.len(),
            });
        }
        let q = Core::new_boxed(config).map_err(DeviceError::Config)?;
        let children = q.children().iter().map(|c| c.0).zip(children).collect();
        Ok(Engine {
            q,
            children: Arc::new(children),
            table: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            gate: Vec::new(),
            sink: None,
            subscribers: Vec::new(),
            next_seq: 1,
            spare: Spare::default(),
            sync: None,
        })
    }

    /// Turns sync tracking on (the configuration must have a chunk size,
    /// `map` the same one): the core asks `map` and changes it; with a
    /// `sink`, an `Unsettle` waits until the map is written there
    /// ([`Engine::map_job`]), otherwise marks are durable at once. Children
    /// added later start stale everywhere when `rebuild` (R-SYNC-7).
    pub fn enable_sync(&mut self, mut map: SyncMap, sink: Option<Box<dyn MapSink>>, rebuild: bool) {
        if sink.is_some() {
            // A persisted map keeps a chunk's unsettled bit a few lazy
            // writes after it became clean: a write there soon after finds
            // it durable already ([`SyncMap::set_lag`]; aged by lazy
            // [`Engine::map_job`]s).
            map.set_lag(MAP_LAG_TICKS);
        }
        self.sync = Some(EngineSync {
            map,
            waiting: Vec::new(),
            persisted: sink.is_some(),
            sink,
            writer: Waiter::None,
            rebuild,
        });
    }

    /// The sync map, if sync tracking is on.
    pub fn sync_map(&self) -> Option<&SyncMap> {
        self.sync.as_ref().map(|s| &s.map)
    }

    /// The sync map, to change (a child's name, a reset).
    pub fn sync_map_mut(&mut self) -> Option<&mut SyncMap> {
        self.sync.as_mut().map(|s| &mut s.map)
    }

    /// Children added from now on start stale everywhere (`true`, R-SYNC-7)
    /// or in sync (QEMU's trusted add).
    pub fn set_rebuild(&mut self, rebuild: bool) {
        if let Some(s) = self.sync.as_mut() {
            s.rebuild = rebuild;
        }
    }

    /// A map write to do now, outside the lock: when a write waits for an
    /// `Unsettle` to be durable, or (`lazy`) when anything changed. `None`
    /// when there is nothing to write, nowhere to write it, or another
    /// writer has the sink.
    pub fn map_job(&mut self, lazy: bool) -> Option<MapJob> {
        let s = self.sync.as_mut()?;
        // A lazy write ages the lagging bits (only while the sink is here:
        // what the tick dropped goes into this write, not lost to the
        // `written` of another in progress).
        if lazy && s.sink.is_some() {
            s.map.tick();
        }
        if !(s.map.urgent() || (lazy && s.map.changed())) {
            return None;
        }
        let sink = s.sink.take()?;
        Some(MapJob {
            generation: s.map.generation(),
            map: s.map.clone(),
            sink,
        })
    }

    /// A [`MapJob`] is over: its sink comes back; if it succeeded, the
    /// writes waiting for its generation go on. Route afterwards (done here).
    pub fn map_done(&mut self, generation: u64, sink: Box<dyn MapSink>, ok: bool) {
        let Some(s) = self.sync.as_mut() else { return };
        s.sink = Some(sink);
        if !ok {
            return;
        }
        s.map.written(generation);
        let ready: Vec<RequestId> = s
            .waiting
            .iter()
            .filter(|w| w.0 <= generation)
            .map(|w| w.1)
            .collect();
        s.waiting.retain(|w| w.0 > generation);
        for id in ready {
            let _ = self.q.handle_marked(id);
        }
        self.route(None);
    }

    /// Who is woken when the map has an urgent write.
    pub fn set_map_writer(&mut self, w: Waiter) {
        if let Some(s) = self.sync.as_mut() {
            s.writer = w;
        }
    }

    /// Differences settled so far (R-SYNC-3), as the core counts them.
    pub fn settled_differences(&self) -> u64 {
        self.q.settled_differences()
    }

    /// The configuration in effect.
    pub fn config(&self) -> Config {
        *self.q.config()
    }

    /// The current children, in slot order.
    pub fn child_ids(&self) -> &[ChildId] {
        self.q.children()
    }

    /// The children by id (shared; replaced, never changed, by membership
    /// changes).
    pub fn children(&self) -> &Arc<BTreeMap<u32, K>> {
        &self.children
    }

    /// The current children's handles, in slot order.
    pub fn child_handles(&self) -> Vec<K> {
        self.q
            .children()
            .iter()
            .filter_map(|c| self.children.get(&c.0).cloned())
            .collect()
    }

    /// Requests in flight (cancelled ones are over).
    pub fn in_flight(&self) -> usize {
        self.q.in_flight()
    }

    /// Sends every event to `sink` from now on (replacing an earlier one).
    /// Events name their request by its number in submission order, from 1.
    pub fn set_sink(&mut self, sink: EventSink) {
        self.sink = Some(sink);
    }

    /// Sends every event to `s` too, until it returns false.
    pub fn subscribe(&mut self, s: Subscriber) {
        self.subscribers.push(s);
    }

    fn entry(&mut self, id: RequestId) -> Option<&mut Entry> {
        let (i, g) = place(id);
        self.table
            .get_mut(i)
            .filter(|e| e.live && e.generation == g)
    }

    fn free_entry(&mut self, id: RequestId) {
        let (i, _) = place(id);
        if let Some(e) = self.table.get_mut(i) {
            e.live = false;
            e.mail.clear();
            e.answer = None;
            e.outcome = None;
            e.waiter = Waiter::None;
            e.routed = false;
            e.shared = Shared::default();
            let mut parked = std::mem::take(&mut e.parked);
            parked.recycle(&mut self.spare);
            self.free.push(i as u32);
        }
    }

    /// Starts `req` under a fresh id, owned by the caller `waiter` (woken
    /// when it has mail). When the core has no room or a drain is under
    /// way, `waiter` is kept and woken when that may have changed.
    pub fn submit(&mut self, req: Request, waiter: Waiter) -> Submit {
        let i = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.table.push(Entry::new());
                self.table.len() - 1
            }
        };
        let e = &mut self.table[i];
        e.generation = e.generation.wrapping_add(1);
        let id = RequestId((u64::from(e.generation) << 32) | i as u64);
        let r = match &self.sync {
            Some(s) => self.q.submit_with(id, req, &s.map),
            None => self.q.submit(id, req),
        };
        match r {
            Ok(()) => {
                let e = &mut self.table[i];
                e.seq = self.next_seq;
                self.next_seq += 1;
                e.live = true;
                e.waiter = waiter;
                e.answer_told = false;
                e.left = false;
                Submit::Started(id)
            }
            Err(err) => {
                self.free.push(i as u32);
                match err {
                    Error::InvalidRange { .. } => Submit::Failed(Outcome::Failed(Errno::EINVAL)),
                    // Busy, Draining (and nothing else: ids are unique).
                    _ => {
                        self.gate.push(waiter);
                        Submit::Wait
                    }
                }
            }
        }
    }

    /// Routes every action the core has queued: events to the sink and the
    /// subscribers, answers and completions to their request's entry, child
    /// operations to its owner's mail. Owners are woken, except `own`: the
    /// caller routing for its own request, which takes its mail next.
    /// Child operations of a cancelled request are answered `ECANCELED` at
    /// once (nothing was started; R-CANCEL-2).
    pub fn route(&mut self, own: Option<RequestId>) {
        let mut progress = false;
        while let Some(a) = self.q.poll_action() {
            match a {
                Action::Event { id, event } => {
                    let id = self.entry(id).map_or(id, |e| RequestId(e.seq));
                    if let Some(s) = self.sink.as_mut() {
                        s(id, &event);
                    }
                    if !self.subscribers.is_empty() {
                        self.subscribers.retain_mut(|s| s(id, &event));
                    }
                }
                Action::Mark { id, mark } => {
                    let Some(s) = self.sync.as_mut() else {
                        // Marks come only with sync tracking on.
                        continue;
                    };
                    let unsettle = matches!(mark, quorum_proto::sync::Mark::Unsettle { .. });
                    match s.map.apply(&mark) {
                        Applied::Durable(g) if s.persisted => {
                            s.waiting.push((g, id));
                            s.writer.wake();
                        }
                        Applied::Durable(g) => {
                            s.map.written(g);
                            let _ = self.q.handle_marked(id);
                        }
                        Applied::Done if unsettle => {
                            let _ = self.q.handle_marked(id);
                        }
                        Applied::Done => {}
                    }
                }
                Action::Answer { id, outcome } => {
                    if let Some(e) = self.entry(id) {
                        e.answer = Some(outcome);
                        if own != Some(id) {
                            e.waiter.wake();
                        }
                    }
                }
                Action::Complete { id, outcome } => {
                    progress = true;
                    let Some(e) = self.entry(id) else { continue };
                    if e.left {
                        self.free_entry(id);
                        continue;
                    }
                    e.outcome = Some(outcome);
                    if own != Some(id) {
                        e.waiter.wake();
                    }
                }
                op => {
                    let id = op.id();
                    match self.entry(id) {
                        Some(e) if e.routed => match self.ready.last_mut() {
                            Some((r, ops)) if *r == id => ops.push(op),
                            _ => self.ready.push((id, vec![op])),
                        },
                        Some(e) => {
                            e.mail.push(op);
                            if own != Some(id) {
                                e.waiter.wake();
                            }
                        }
                        None => {
                            // Cancelled, its entry gone: nothing was started.
                            let _ = self.cancelled_op(&op);
                        }
                    }
                }
            }
        }
        if progress {
            self.wake_gate();
        }
    }

    /// Answers a child operation nobody will run with `ECANCELED`.
    fn cancelled_op(&mut self, a: &Action) -> Result<(), Error> {
        let e = Err(Errno::ECANCELED);
        let done = match *a {
            Action::Read { slot, .. } => Done::Read(slot, e, Vec::new()),
            Action::Write { slot, .. } | Action::WriteZeroes { slot, .. } => Done::Write(slot, e),
            Action::Flush { slot, .. } => Done::Flush(slot, e),
            Action::Rewrite { slot, .. } => Done::Rewrite(slot, e),
            Action::BlockStatus { slot, .. } => Done::BlockStatus(slot, Err(Errno::ECANCELED)),
            Action::Event { .. }
            | Action::Answer { .. }
            | Action::Mark { .. }
            | Action::Complete { .. } => return Ok(()),
        };
        done::feed_cancelled(&mut self.q, a.id(), &done)
    }

    fn wake_gate(&mut self) {
        for w in self.gate.drain(..) {
            w.wake();
        }
    }

    /// What `id`'s owner does next: its mail is moved into `out` (`Run`),
    /// or it learns of its answer or its outcome. A finished request's entry
    /// is freed when its outcome is taken.
    pub fn take(&mut self, id: RequestId, out: &mut Vec<Action>) -> Progress {
        let Some(e) = self.entry(id) else {
            return Progress::Done(Outcome::Failed(Errno::ECANCELED));
        };
        if !e.mail.is_empty() {
            if out.is_empty() {
                std::mem::swap(out, &mut e.mail);
            } else {
                out.append(&mut e.mail);
            }
            return Progress::Run;
        }
        if let Some(o) = e.outcome.take() {
            self.free_entry(id);
            return Progress::Done(o);
        }
        if let Some(a) = e.answer
            && !e.answer_told
        {
            e.answer_told = true;
            return Progress::Answered(a);
        }
        Progress::Wait
    }

    /// Sets who is woken for `id` (a task's waker changes between polls).
    pub fn set_waiter(&mut self, id: RequestId, waiter: Waiter) {
        if let Some(e) = self.entry(id) {
            e.waiter = waiter;
        }
    }

    /// Feeds one round of `id`'s results to the core, in slot order
    /// ([`done::feed_round`]). Route afterwards.
    pub fn feed(&mut self, id: RequestId, results: &mut Vec<Done>, bufs: &mut ReadSet) {
        done::feed_round(&mut self.q, id, results, bufs);
    }

    /// Feeds one result of `id` as it arrives (early quorum), with the
    /// request's buffers in `bufs`. Route afterwards.
    pub fn feed_one(&mut self, id: RequestId, done: Done, bufs: &mut ReadSet) {
        let r = done::feed_one(&mut self.q, id, done, bufs);
        debug_assert!(r.is_ok(), "core refused a completion: {r:?}");
    }

    /// Feeds the result of an operation that outlived its cancelled request
    /// (R-CANCEL-2): the core only counts it. Route afterwards.
    pub fn feed_orphan(&mut self, id: RequestId, done: Done) {
        let r = done::feed_cancelled(&mut self.q, id, &done);
        debug_assert!(r.is_ok(), "core refused a cancelled completion: {r:?}");
        if let Done::Read(_, _, buf) = done {
            self.spare.give(buf);
        }
        if self.q.is_drained() {
            self.wake_gate();
        }
    }

    /// Cancels `id` for a caller that gave up on it (R-CANCEL-1): the core
    /// completes it at once with `ECANCELED` and says nothing about any
    /// child; operations it had queued for the caller are answered
    /// `ECANCELED` here, while those already running must still be fed with
    /// [`Engine::feed_orphan`] when they end (R-CANCEL-2). A request that
    /// had already completed is only forgotten.
    pub fn cancel(&mut self, id: RequestId) {
        let Some(e) = self.entry(id) else { return };
        let mail = std::mem::take(&mut e.mail);
        if self.q.cancel(id).is_ok() {
            for a in &mail {
                let _ = self.cancelled_op(a);
            }
            // Its entry goes now: later operations of it are cancelled ones.
            self.free_entry(id);
            self.route(None);
        } else {
            self.free_entry(id);
        }
        self.wake_gate();
    }

    /// Early quorum, blocking driver: from now on `id` is driven by its
    /// completions — its mail goes to whoever routes ([`Engine::ready_ops`])
    /// and its results are fed with [`Engine::feed_parked`] — and `bufs`
    /// stays with it until it completes. Its waiter is still woken for the
    /// answer and the outcome.
    pub fn hand_over(&mut self, id: RequestId, bufs: ReadSet) {
        if let Some(e) = self.entry(id) {
            e.routed = true;
            e.parked = bufs;
            if !e.mail.is_empty() {
                let mail = std::mem::take(&mut e.mail);
                self.ready.push((id, mail));
            }
        }
    }

    /// Feeds one result of a handed-over request (or of a cancelled one).
    /// Route afterwards.
    pub fn feed_parked(&mut self, id: RequestId, done: Done) {
        let (i, _) = place(id);
        match self.entry(id) {
            Some(_) => {
                let mut bufs = std::mem::take(&mut self.table[i].parked);
                self.feed_one(id, done, &mut bufs);
                self.table[i].parked = bufs;
            }
            None => self.feed_orphan(id, done),
        }
    }

    /// The child operations of handed-over requests, to be started by the
    /// caller (read buffers and rewrite sources from their parked sets).
    pub fn ready_ops(&mut self) -> Vec<(RequestId, Vec<Op<K>>)> {
        let ready = std::mem::take(&mut self.ready);
        let mut out = Vec::with_capacity(ready.len());
        for (id, actions) in ready {
            let (i, _) = place(id);
            let children = self.children.clone();
            let Some(e) = self.table.get_mut(i) else {
                continue;
            };
            let ops = actions
                .iter()
                .filter_map(|a| Op::from_action(a, &children, &mut e.parked, &mut e.shared))
                .collect();
            out.push((id, ops));
        }
        out
    }

    /// True if handed-over requests have mail.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A handed-over request's answer (or outcome, if it ended without one)
    /// and its buffers, for its caller to copy from.
    pub fn answered(&mut self, id: RequestId) -> Option<(Outcome, &ReadSet)> {
        let e = self.entry(id)?;
        let o = e.answer.or(e.outcome)?;
        Some((o, &e.parked))
    }

    /// The caller of a handed-over request leaves with its answer: its entry
    /// goes at completion (or now, if it is over).
    pub fn leave(&mut self, id: RequestId) {
        if let Some(e) = self.entry(id) {
            if e.outcome.is_some() {
                self.free_entry(id);
            } else {
                e.left = true;
            }
        }
    }

    /// Starts a drain (R-MEMBER-4): no request starts until
    /// [`Engine::end_drain`].
    pub fn start_drain(&mut self) {
        self.q.start_drain();
    }

    /// True once nothing is left in flight, cancelled requests' operations
    /// included; otherwise `waiter` is woken when that may have changed.
    pub fn drained(&mut self, waiter: Waiter) -> bool {
        if self.q.is_drained() {
            return true;
        }
        self.gate.push(waiter);
        false
    }

    /// Ends a drain; waiting submitters are woken.
    pub fn end_drain(&mut self) {
        let _ = self.q.end_drain();
        self.wake_gate();
    }

    /// Adds a child (R-MEMBER-1, R-MEMBER-3); call drained.
    pub fn add_child(&mut self, child: K) -> Result<ChildId, DeviceError> {
        let id = self.q.add_child().map_err(DeviceError::Member)?;
        Arc::make_mut(&mut self.children).insert(id.0, child);
        if let Some(s) = self.sync.as_mut() {
            if s.rebuild {
                s.map.add_stale_child(id.0);
                s.writer.wake();
            } else {
                s.map.add_child(id.0);
            }
        }
        Ok(id)
    }

    /// Removes a child (R-MEMBER-1..3); call drained.
    pub fn remove_child(&mut self, id: ChildId) -> Result<(), DeviceError> {
        self.q.remove_child(id).map_err(DeviceError::Member)?;
        Arc::make_mut(&mut self.children).remove(&id.0);
        if let Some(s) = self.sync.as_mut() {
            s.map.remove_child(id.0);
        }
        Ok(())
    }
}

/// An engine behind its lock, with what the driver keeps beside it (`X`):
/// what a device shares with the threads or tasks that carry its requests.
/// A device derefs to it, so every driver answers `config()`,
/// `children()`, `in_flight()` and `set_event_sink()` the same way.
pub struct Locked<K, X> {
    state: std::sync::Mutex<Guarded<K, X>>,
}

/// What [`Locked`] guards.
pub struct Guarded<K, X> {
    /// The engine.
    pub eng: Engine<K>,
    /// The driver's own state.
    pub own: X,
}

impl<K: Clone, X> Locked<K, X> {
    /// `eng` and `own` behind one lock.
    pub fn new(eng: Engine<K>, own: X) -> Locked<K, X> {
        Locked {
            state: std::sync::Mutex::new(Guarded { eng, own }),
        }
    }

    /// The engine, for the driver: hold it briefly (every request of the
    /// device waits for it) and never across child I/O.
    pub fn engine(&self) -> std::sync::MutexGuard<'_, Guarded<K, X>> {
        // No child code runs under this lock: a poisoned one only means a
        // panicking event sink, and the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration in effect.
    pub fn config(&self) -> Config {
        self.engine().eng.config()
    }

    /// The current children, in slot order.
    pub fn children(&self) -> Vec<ChildId> {
        self.engine().eng.child_ids().to_vec()
    }

    /// Requests in flight (a cancelled one is over, even while operations
    /// it started are still running).
    pub fn in_flight(&self) -> usize {
        self.engine().eng.in_flight()
    }

    /// Sends every event to `sink` from now on. The sink runs with the
    /// device's lock held (that is what keeps events in order), so it must
    /// not call back into the device.
    pub fn set_event_sink(&self, sink: EventSink) {
        self.engine().eng.set_sink(sink);
    }

    /// Writes the sync map if something waits for it (or, `lazy`, if
    /// anything changed): the map writer's one step, outside the lock
    /// while the file is written. Returns whether it wrote (or tried).
    pub fn write_map(&self, lazy: bool) -> bool {
        let job = self.engine().eng.map_job(lazy);
        let Some(mut job) = job else { return false };
        let ok = job.sink.write(&job.map).is_ok();
        self.engine().eng.map_done(job.generation, job.sink, ok);
        true
    }

    /// The sync map writer of a device: until `alive` says the device is
    /// gone, writes the map whenever a write waits for it, and what else
    /// changed at least every `lazy` (stale marks, cleared marks). Run it
    /// on a thread of its own.
    pub fn map_writer(
        this: std::sync::Weak<impl AsRef<Locked<K, X>> + Send + Sync>,
        lazy: std::time::Duration,
    ) {
        let mut last = std::time::Instant::now();
        loop {
            let Some(dev) = this.upgrade() else { return };
            let me: &Locked<K, X> = (*dev).as_ref();
            let due = last.elapsed() >= lazy;
            if me.write_map(due) {
                if due {
                    last = std::time::Instant::now();
                }
                continue;
            }
            if due {
                last = std::time::Instant::now();
            }
            me.engine()
                .eng
                .set_map_writer(Waiter::Thread(std::thread::current()));
            drop(dev);
            std::thread::park_timeout(lazy.min(std::time::Duration::from_millis(200)));
        }
    }
}
