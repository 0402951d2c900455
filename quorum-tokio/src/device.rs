//! The async driver: a quorum device over [`AsyncChild`]ren, usable from many
//! tasks at once, under any executor.
//!
//! Every decision is the core's. This file only moves bytes, with nothing but
//! `std` and `futures` primitives: a task submits its request under a
//! `std::sync::Mutex` (never held across an `.await`), the core's actions are
//! routed to the mailbox of the request they belong to (waking the task that
//! owns it), and each task carries out its own mailbox — the child operations
//! of one round concurrently, joined — then reports the results back under the
//! lock, in slot order, as `quorum-sync` does, so the same scenario gives the
//! same events in the same order. Tasks waiting for capacity or for a drain
//! park their wakers in the state and are woken whenever a request makes
//! progress.
//!
//! A request's own actions skip the mailbox when its task is the one that
//! made the core emit them (its submission, its own round's results), so a
//! request whose children answer at once takes the lock twice and is never
//! woken. Early-quorum reads report results one by one as they arrive, and
//! move to a spawned task of their own once answered (see [`AsyncDevice`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

/// Linux `ENOTSUP`.
const ENOTSUP: i32 = quorum_proto::Errno::ENOTSUP.get();
use std::task::{Context, Poll, Waker};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures_channel::oneshot;
use futures_util::FutureExt;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use quorum_proto::{
    Action, ChildId, Config, Errno, Event, NoBuffers, Outcome, Quorum, Request, RequestId,
    device_length,
};

use crate::child::AsyncChild;
use quorum_driver::done::{self as round, Done};

/// The core as this driver builds it: up to 16 children, 64 requests in flight
/// (more callers wait for room).
type Core = Quorum<16, 64, 3200>;

/// The blocking driver's types, shared so that code can switch drivers
/// without changing how it handles results and events.
pub use quorum_driver::{DeviceError, EventSink, ReadError};

/// The events of a device, in the order the core emitted them, as a
/// [`Stream`] of `(request, event)`. From [`AsyncDevice::events`].
///
/// Unbounded: events queue until read. The stream ends when the device is
/// dropped.
#[derive(Debug)]
pub struct EventStream(UnboundedReceiver<(RequestId, Event)>);

impl Stream for EventStream {
    type Item = (RequestId, Event);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

impl EventStream {
    /// The next event if one is already queued, without waiting.
    pub fn try_next_now(&mut self) -> Option<(RequestId, Event)> {
        self.0.try_recv().ok()
    }
}

#[derive(Default)]
struct Mailbox {
    actions: Vec<Action>,
    waker: Option<Waker>,
}

/// The children by id. Shared with the requests in flight, so that a request
/// takes one reference rather than one per child operation; replaced (copy
/// on write) by a membership change, which only happens once idle.
type Children = Arc<BTreeMap<u32, Arc<dyn AsyncChild>>>;

/// Read buffers handed back by finished reads (the losing slots), reused by
/// later reads so that a read costs no fresh allocation, no page faults and
/// no zeroing per slot. Bounded in count and bytes (the oldest go first);
/// buffers over [`Spare::MAX_BUF`] are freed at once. A read only takes a
/// buffer that fits it closely, so the buffer a caller gets back is never
/// much larger than what it asked for.
#[derive(Default)]
struct Spare {
    bufs: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Spare {
    const MAX_BUFS: usize = 128;
    const MAX_BYTES: usize = 8 << 20;
    const MAX_BUF: usize = 1 << 20;
    /// How many of the most recent buffers a read looks at.
    const SCAN: usize = 8;

    /// A spare buffer that can hold `len` bytes (to be resized) without
    /// wasting more than as much again, or an empty one. Its contents are
    /// unspecified: a read overwrites them.
    fn take(&mut self, len: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.capacity() >= len && b.capacity() / 2 <= len.max(4096);
        let n = self.bufs.len();
        let found = (n.saturating_sub(Self::SCAN)..n)
            .rev()
            .find(|&i| fits(&self.bufs[i]));
        match found.and_then(|i| self.bufs.remove(i)) {
            Some(b) => {
                self.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    fn give(&mut self, b: Vec<u8>) {
        let cap = b.capacity();
        if cap == 0 || cap > Self::MAX_BUF {
            return;
        }
        self.bytes += cap;
        self.bufs.push_back(b);
        while self.bufs.len() > Self::MAX_BUFS || self.bytes > Self::MAX_BYTES {
            match self.bufs.pop_front() {
                Some(old) => self.bytes -= old.capacity(),
                None => break,
            }
        }
    }
}

struct State {
    q: Box<Core>,
    children: Children,
    /// Actions waiting for the task that owns their request, when that task
    /// was not the one that made the core emit them.
    inbox: HashMap<u64, Mailbox>,
    next_id: u64,
    subscribers: Vec<UnboundedSender<(RequestId, Event)>>,
    sink: Option<EventSink>,
    /// Tasks waiting for room in the core or for a drain.
    waiters: Vec<Waker>,
    /// Membership changes waiting for the drain: no new request starts.
    draining: usize,
    /// Requests whose future was dropped: their child operations are
    /// answered `ECANCELED` at once until the core completes them.
    abandoned: HashSet<u64>,
    spare: Spare,
}

impl State {
    /// Routes every queued action: events to the subscribers, the rest to
    /// its request's mailbox (or straight back as cancelled).
    fn route(&mut self) {
        self.route_for(None);
    }

    /// [`State::route`], except that the actions of `own` (queued earlier
    /// in its mailbox, then new ones) go into `own`'s vector: the calling
    /// task runs them without a trip through the mailbox.
    fn route_for(&mut self, mut own: Option<(RequestId, &mut Vec<Action>)>) {
        if let Some((id, out)) = own.as_mut()
            && !self.inbox.is_empty()
            && let Some(mb) = self.inbox.remove(&id.0)
        {
            out.extend(mb.actions);
        }
        loop {
            let mut cancel = Vec::new();
            while let Some(a) = self.q.poll_action() {
                match a {
                    Action::Event { id, event } => {
                        if let Some(s) = self.sink.as_mut() {
                            s(id, &event);
                        }
                        if !self.subscribers.is_empty() {
                            self.subscribers
                                .retain(|s| s.unbounded_send((id, event)).is_ok());
                        }
                    }
                    Action::Complete { id, .. } if self.abandoned.contains(&id.0) => {
                        self.abandoned.remove(&id.0);
                    }
                    other if own.as_ref().is_some_and(|(id, _)| *id == other.id()) => {
                        if let Some((_, out)) = own.as_mut() {
                            out.push(other);
                        }
                    }
                    other if self.abandoned.contains(&other.id().0) => cancel.push(other),
                    other => {
                        let mb = self.inbox.entry(other.id().0).or_default();
                        mb.actions.push(other);
                        if let Some(w) = mb.waker.take() {
                            w.wake();
                        }
                    }
                }
            }
            if cancel.is_empty() {
                return;
            }
            for a in cancel {
                self.cancel(&a);
            }
        }
    }

    /// Answers a child operation of an abandoned request with `ECANCELED`.
    fn cancel(&mut self, a: &Action) {
        let e = Err(Errno::ECANCELED);
        // A quorum read's child reads are all issued, and answered, in one
        // round, and a fifo read's earlier slots all failed: a cancelled read
        // never needs a buffer, so the core cannot refuse these.
        let _ = match *a {
            Action::Read { id, slot, .. } => self.q.handle_read(id, slot, e, &NoBuffers),
            Action::Write { id, slot, .. } | Action::WriteZeroes { id, slot, .. } => {
                self.q.handle_write(id, slot, e)
            }
            Action::Flush { id, slot, .. } => self.q.handle_flush(id, slot, e),
            Action::Rewrite { id, slot, .. } => self.q.handle_rewrite(id, slot, e),
            Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => Ok(()),
        };
    }

    fn wake_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

/// Runs a future to completion somewhere else: how an [`AsyncDevice`] with
/// early quorum keeps a read going after its caller has the answer. Given
/// to [`AsyncDevice::set_spawner`]; for example, under smol,
/// `Arc::new(|f| smol::spawn(f).detach())`.
pub type Spawner = Arc<dyn Fn(Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync>;

/// A quorum device over async children. Share it (`Arc<AsyncDevice>`)
/// between as many tasks as you like; every method takes `&self`.
///
/// The driving code uses no executor: the futures it returns run under
/// tokio, smol, async-std or a hand-written `block_on` alike. Only children
/// may need a particular runtime ([`crate::TokioFileChild`] needs tokio).
///
/// Dropping a request's future before it completes cancels it: the child
/// operations it had started are dropped, the core is told they failed with
/// `ECANCELED` (so it reports them, as it would any failure), and any
/// further child operation of that request is answered the same way, so the
/// request still ends and never blocks a drain. A write cancelled this way
/// may have reached some children and not others.
///
/// Known limit: dropping a child operation's future does not stop work a
/// child already handed to another thread ([`crate::TokioFileChild`]'s I/O
/// threads or tokio's blocking pool, [`crate::Blocking`]). Such a write or
/// repair can still land after the request has ended — and so after a later
/// write that overlapped it, which breaks the repair ordering the core
/// otherwise guarantees. Let read and write futures run to completion when
/// that ordering matters. (Writes of [`crate::IoMode::Inline`] children
/// finish inside `poll`, so they never outlive their future.)
///
/// Early quorum ([`Config::early_quorum`]): a read returns as soon as
/// `threshold` children agree ([`Action::Answer`]) — a copy of the winning
/// buffer — while the rest of the request (the stragglers' reads, their
/// comparison, reports and rewrites) goes on in a task of its own until the
/// core completes it. That task is spawned with the [`Spawner`] given to
/// [`AsyncDevice::set_spawner`], or, without one and with the `tokio`
/// feature, on the tokio runtime the read runs in; with neither, reads are
/// answered at their completion as without early quorum. Such a read's
/// results are reported to the core as they arrive, so its events follow
/// the children's completion order (as with `quorum-sync`). Once answered,
/// dropping its future no longer cancels it, and its task keeps the
/// children (and the event stream) alive until it ends, even after the
/// device is dropped.
pub struct AsyncDevice {
    shared: Arc<Shared>,
    /// Early quorum is in effect (reads may be answered early).
    early: bool,
    spawner: Mutex<Option<Spawner>>,
}

/// What the device's tasks share: the state under its lock.
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The core never panics mid-update, and child code never runs under
        // the lock: a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for AsyncDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("AsyncDevice")
            .field("config", st.q.config())
            .field("children", &st.q.children())
            .field("in_flight", &st.q.in_flight())
            .finish_non_exhaustive()
    }
}

/// The kind of a child operation a round is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    Rewrite,
}

impl Op {
    fn of(d: &Done) -> Op {
        match d {
            Done::Read(..) => Op::Read,
            Done::Write(..) => Op::Write,
            Done::Flush(..) => Op::Flush,
            Done::Rewrite(..) => Op::Rewrite,
        }
    }
}

fn errno(r: std::io::Result<()>) -> Result<(), Errno> {
    r.map_err(|e| Errno::from(&e))
}

/// A request between its submission and its completion. Dropped early (the
/// caller's future was dropped), it hands the request to the cancellation
/// path so the core still completes it.
struct Running<'a> {
    dev: &'a Shared,
    id: RequestId,
    /// Child operations started and not yet reported to the core.
    pending: Vec<(Op, usize)>,
    finished: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut st = self.dev.lock();
        let id = self.id;
        st.abandoned.insert(id.0);
        let mut cancel: Vec<Action> = st
            .inbox
            .remove(&id.0)
            .map(|mb| mb.actions)
            .unwrap_or_default();
        let e = Err(Errno::ECANCELED);
        for &(op, slot) in &self.pending {
            let _ = match op {
                Op::Read => st.q.handle_read(id, slot, e, &NoBuffers),
                Op::Write => st.q.handle_write(id, slot, e),
                Op::Flush => st.q.handle_flush(id, slot, e),
                Op::Rewrite => st.q.handle_rewrite(id, slot, e),
            };
        }
        if cancel.iter().any(|a| matches!(a, Action::Complete { .. })) {
            st.abandoned.remove(&id.0);
            cancel.clear();
        }
        for a in &cancel {
            st.cancel(a);
        }
        st.route();
        st.wake_waiters();
    }
}

/// Holds off new requests while a membership change waits for the drain.
struct DrainGuard<'a>(&'a Shared);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.draining -= 1;
        st.wake_waiters();
    }
}

/// What a request does next, decided under the lock.
enum Next {
    /// Run the child operations in hand.
    Run,
    /// Finished: the outcome and, for a successful read, the winning buffer.
    Done(Outcome, Option<Vec<u8>>),
}

impl State {
    /// After `actions` were routed to their request: if they hold its
    /// completion, the outcome with the winning read buffer (the others go
    /// back to the spare buffers).
    fn next(&mut self, actions: &[Action], bufs: &mut [Vec<u8>]) -> Next {
        let Some(outcome) = actions.iter().find_map(|a| match *a {
            Action::Complete { outcome, .. } => Some(outcome),
            _ => None,
        }) else {
            return Next::Run;
        };
        let won = match outcome {
            Outcome::Read { slot, .. } => bufs.get_mut(slot).map(std::mem::take),
            _ => None,
        };
        for b in bufs.iter_mut() {
            self.spare.give(std::mem::take(b));
        }
        Next::Done(outcome, won)
    }
}

/// Where an early read's answer goes: the caller waiting for it.
type AnswerTx = oneshot::Sender<(Outcome, Option<Vec<u8>>)>;

impl AsyncDevice {
    /// A device over `children` (slot order, named `children.0` …) with
    /// `config` (whose `children` must match).
    pub fn new(
        config: Config,
        children: Vec<Arc<dyn AsyncChild>>,
    ) -> Result<AsyncDevice, DeviceError> {
        if config.children != children.len() {
            return Err(DeviceError::ChildCount {
                expected: config.children,
                got: children.len(),
            });
        }
        let q = Box::new(Core::new(config).map_err(DeviceError::Config)?);
        let early = q.config().early_quorum;
        let children = Arc::new(q.children().iter().map(|c| c.0).zip(children).collect());
        Ok(AsyncDevice {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    q,
                    children,
                    inbox: HashMap::new(),
                    next_id: 1,
                    subscribers: Vec::new(),
                    sink: None,
                    waiters: Vec::new(),
                    draining: 0,
                    abandoned: HashSet::new(),
                    spare: Spare::default(),
                }),
            }),
            early,
            spawner: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// A stream of every event from now on, in the core's order (R-EVENT).
    /// Each call makes a new, independent subscriber.
    pub fn events(&self) -> EventStream {
        let (tx, rx) = unbounded();
        self.lock().subscribers.push(tx);
        EventStream(rx)
    }

    /// Also calls `sink` with every event from now on, synchronously, in the
    /// core's order (replaces an earlier sink). Keep it quick: it runs under
    /// the device's lock.
    pub fn set_event_sink(&self, sink: EventSink) {
        self.lock().sink = Some(sink);
    }

    /// Sets how early-quorum reads run their stragglers after answering
    /// (replaces an earlier spawner; see [`AsyncDevice`]). Without early
    /// quorum it is never used.
    pub fn set_spawner(&self, spawner: Spawner) {
        *self.spawner.lock().unwrap_or_else(|p| p.into_inner()) = Some(spawner);
    }

    /// The spawner for early reads: the one set, else the current tokio
    /// runtime's (feature `tokio`).
    fn spawner(&self) -> Option<Spawner> {
        if let Some(s) = self
            .spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(s);
        }
        #[cfg(feature = "tokio")]
        if let Ok(h) = ::tokio::runtime::Handle::try_current() {
            return Some(Arc::new(move |f| {
                h.spawn(f);
            }));
        }
        None
    }

    /// The configuration in effect.
    pub fn config(&self) -> Config {
        *self.lock().q.config()
    }

    /// The current children, in slot order.
    pub fn children(&self) -> Vec<ChildId> {
        self.lock().q.children().to_vec()
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.lock().q.in_flight()
    }

    /// The device size in bytes: all children must agree (R-CFG-7).
    pub async fn size(&self) -> Result<u64, Errno> {
        let kids: Vec<Arc<dyn AsyncChild>> = {
            let st = self.lock();
            st.q.children()
                .iter()
                .filter_map(|c| st.children.get(&c.0).cloned())
                .collect()
        };
        let sizes = join_all(kids.iter().map(|c| c.size())).await;
        device_length(sizes.into_iter().map(|r| r.map_err(|e| Errno::from(&e))))
    }

    /// Reads `len` bytes at `offset`. The returned buffer is the winning
    /// child's own read buffer: nothing is copied (except for a read
    /// answered early, see [`AsyncDevice`]).
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let req = Request::Read {
            offset,
            len: len as u64,
        };
        match self.run(req, None).await {
            (Outcome::Read { .. }, Some(b)) => Ok(b),
            (Outcome::Read { .. }, None) => Err(ReadError::Io(Errno::EIO)),
            (Outcome::ContentsMismatch { offset }, _) => {
                Err(ReadError::ContentsMismatch { offset })
            }
            (Outcome::Failed(e), _) => Err(ReadError::Io(e)),
            (Outcome::Done, _) => Err(ReadError::Io(Errno::EIO)),
        }
    }

    /// Writes `data` at `offset` to every child (R-WRITE). The data is shared
    /// by every child's write, not copied per child.
    pub async fn write(&self, offset: u64, data: impl Into<Arc<[u8]>>) -> Result<(), Errno> {
        let data = data.into();
        let req = Request::Write {
            offset,
            len: data.len() as u64,
        };
        done(self.run(req, Some(data)).await.0)
    }

    /// Writes zeroes (R-WRITE-3).
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Errno> {
        done(self.run(Request::WriteZeroes { offset, len }, None).await.0)
    }

    /// Flushes every child (R-FLUSH).
    pub async fn flush(&self) -> Result<(), Errno> {
        done(self.run(Request::Flush, None).await.0)
    }

    /// Adds a child once the requests in flight have drained (R-MEMBER-1,
    /// R-MEMBER-3, R-MEMBER-4). Requests submitted meanwhile wait for the
    /// change, as QEMU's drain holds them.
    pub async fn add_child(&self, child: Arc<dyn AsyncChild>) -> Result<ChildId, DeviceError> {
        let _drained = self.drain().await;
        let mut st = self.lock();
        let id = st.q.add_child().map_err(DeviceError::Member)?;
        Arc::make_mut(&mut st.children).insert(id.0, child);
        Ok(id)
    }

    /// Removes a child once the requests in flight have drained
    /// (R-MEMBER-1..4). Requests submitted meanwhile wait for the change.
    pub async fn remove_child(&self, id: ChildId) -> Result<(), DeviceError> {
        let _drained = self.drain().await;
        let mut st = self.lock();
        st.q.remove_child(id).map_err(DeviceError::Member)?;
        Arc::make_mut(&mut st.children).remove(&id.0);
        Ok(())
    }

    /// Stops new requests and waits until none is in flight. New requests
    /// start again when the guard is dropped.
    async fn drain(&self) -> DrainGuard<'_> {
        self.lock().draining += 1;
        let guard = DrainGuard(&self.shared);
        poll_fn(|cx| {
            let mut st = self.lock();
            if st.q.in_flight() == 0 {
                Poll::Ready(())
            } else {
                st.waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        guard
    }

    /// Runs one request to completion; returns its outcome and, for a
    /// successful read, the winning buffer.
    ///
    /// An early-quorum read (with a spawner) is driven here, boxed, until the
    /// core answers it; if stragglers remain then, the box — the rest of the
    /// request, its child futures included — moves to a task of its own and
    /// this returns. Reads whose children all finish at once (the page
    /// cache) complete here without spawning anything; dropped before the
    /// answer, the read is cancelled like any other.
    async fn run(&self, req: Request, data: Option<Arc<[u8]>>) -> (Outcome, Option<Vec<u8>>) {
        if self.early
            && matches!(req, Request::Read { .. })
            && let Some(spawn) = self.spawner()
        {
            let (tx, mut rx) = oneshot::channel();
            let shared = self.shared.clone();
            let mut rest: Option<Pin<Box<dyn Future<Output = ()> + Send>>> =
                Some(Box::pin(async move {
                    shared.drive(req, None, Some(tx)).await;
                }));
            let answer = poll_fn(|cx| {
                if let Some(f) = rest.as_mut()
                    && f.as_mut().poll(cx).is_ready()
                {
                    rest = None;
                }
                // The answer is sent from inside that poll, or never.
                match rx.try_recv() {
                    Ok(Some(a)) => Poll::Ready(a),
                    Ok(None) => Poll::Pending,
                    Err(_) => Poll::Ready((Outcome::Failed(Errno::ECANCELED), None)),
                }
            })
            .await;
            if let Some(rest) = rest {
                // Its wakers are registered again when the new task polls it.
                spawn(rest);
            }
            return answer;
        }
        self.shared.drive(req, data, None).await
    }
}

impl Shared {
    /// Submits `req` once there is room and no drain is waiting. Returns its
    /// id, its read buffers (one per slot, for a read), the children to run
    /// it on and what to do next; the request's first actions are in
    /// `actions`.
    async fn submit(
        &self,
        req: Request,
        actions: &mut Vec<Action>,
    ) -> Result<(RequestId, Vec<Vec<u8>>, Children, Next), Outcome> {
        let len = req.range().1 as usize;
        let is_read = matches!(req, Request::Read { .. });
        let (id, mut bufs, children, next) = poll_fn(|cx| {
            let mut st = self.lock();
            if st.draining > 0 {
                st.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            loop {
                let id = RequestId(st.next_id);
                st.next_id = st.next_id.wrapping_add(1);
                match st.q.submit(id, req) {
                    Ok(()) => {
                        let n = st.q.children().len();
                        // Spare buffers now; sized (and new ones made)
                        // outside the lock.
                        let mut bufs: Vec<Vec<u8>> = if is_read {
                            (0..n).map(|_| st.spare.take(len)).collect()
                        } else {
                            Vec::new()
                        };
                        st.route_for(Some((id, actions)));
                        let next = st.next(actions, &mut bufs);
                        let children = st.children.clone();
                        return Poll::Ready(Ok((id, bufs, children, next)));
                    }
                    Err(quorum_proto::Error::Busy) => {
                        st.waiters.push(cx.waker().clone());
                        return Poll::Pending;
                    }
                    Err(quorum_proto::Error::InvalidRange { .. }) => {
                        return Poll::Ready(Err(Outcome::Failed(Errno::EINVAL)));
                    }
                    Err(_) => continue, // an id still in flight from a wrapped counter
                }
            }
        })
        .await?;
        for b in &mut bufs {
            if b.capacity() >= len {
                // A spare buffer: its old bytes are overwritten by the read.
                b.resize(len, 0);
            } else {
                *b = vec![0; len];
            }
        }
        Ok((id, bufs, children, next))
    }

    /// Waits for actions in `id`'s mailbox (routed there by another task's
    /// progress) and moves them into `actions`.
    async fn take(&self, id: RequestId, actions: &mut Vec<Action>, bufs: &mut [Vec<u8>]) -> Next {
        poll_fn(|cx| {
            let mut st = self.lock();
            match st.inbox.get_mut(&id.0) {
                Some(mb) if !mb.actions.is_empty() => {
                    actions.append(&mut mb.actions);
                    st.inbox.remove(&id.0);
                    Poll::Ready(st.next(actions, bufs))
                }
                _ => {
                    st.inbox.entry(id.0).or_default().waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Runs one request to completion in the calling task; returns its
    /// outcome and, for a successful read, the winning buffer.
    ///
    /// The fast path takes the device's lock twice for a one-round request:
    /// to submit it (its first actions come back at once) and to report the
    /// round (its completion comes back at once). A round's child operations
    /// are polled in place: a child that finishes in its first `poll` (a read
    /// from the page cache) costs no wake-up at all.
    ///
    /// With `answer` (an early-quorum read in a task of its own), results are
    /// reported one by one as they arrive, and the answer is sent as soon as
    /// the core gives it ([`Action::Answer`], or the completion).
    async fn drive(
        &self,
        req: Request,
        data: Option<Arc<[u8]>>,
        mut answer: Option<AnswerTx>,
    ) -> (Outcome, Option<Vec<u8>>) {
        let early = answer.is_some();
        let mut actions = Vec::new();
        let (id, mut bufs, children, mut next) = match self.submit(req, &mut actions).await {
            Ok(x) => x,
            Err(o) => return deliver(answer, o, None),
        };
        let mut run = Running {
            dev: self,
            id,
            pending: Vec::new(),
            finished: false,
        };
        let len = req.range().1 as usize;
        let mut winner: Option<Arc<[u8]>> = None;
        let mut jobs = Vec::new();
        loop {
            if let Next::Done(outcome, won) = next {
                run.finished = true;
                return deliver(answer, outcome, won);
            }
            for a in actions.drain(..) {
                if let Action::Answer { outcome, .. } = a {
                    // The winning buffer stays: the stragglers are compared
                    // with it.
                    if let (Some(tx), Outcome::Read { slot, .. }) = (answer.take(), outcome) {
                        let _ = tx.send((outcome, bufs.get(slot).cloned()));
                    }
                    continue;
                }
                if let Some((op, slot, job)) = job(a, &children, &mut bufs, &data, &mut winner, len)
                {
                    run.pending.push((op, slot));
                    jobs.push(job);
                }
            }
            if jobs.is_empty() {
                // Nothing to run: the core will route this request's next
                // actions from another request's progress.
                next = self.take(id, &mut actions, &mut bufs).await;
                continue;
            }
            if !early {
                // One round's child operations run concurrently, and are
                // reported together, in slot order.
                let results = join_all(jobs.drain(..)).await;
                let mut st = self.lock();
                round::feed(&mut st.q, id, results, &mut bufs);
                run.pending.clear();
                st.route_for(Some((id, &mut actions)));
                next = st.next(&actions, &mut bufs);
                st.wake_waiters();
                continue;
            }
            // Early quorum: each result is reported as it arrives.
            let mut running: FuturesUnordered<_> = jobs.drain(..).collect();
            while let Some(done) = running.next().await {
                let op = Op::of(&done);
                let slot = done.slot();
                {
                    let mut st = self.lock();
                    round::feed(&mut st.q, id, vec![done], &mut bufs);
                    if let Some(i) = run.pending.iter().position(|&p| p == (op, slot)) {
                        run.pending.swap_remove(i);
                    }
                    st.route_for(Some((id, &mut actions)));
                    next = st.next(&actions, &mut bufs);
                    st.wake_waiters();
                }
                if matches!(next, Next::Done(..)) {
                    break;
                }
                for a in actions.drain(..) {
                    if let Action::Answer { outcome, .. } = a {
                        if let (Some(tx), Outcome::Read { slot, .. }) = (answer.take(), outcome) {
                            let _ = tx.send((outcome, bufs.get(slot).cloned()));
                        }
                        continue;
                    }
                    if let Some((op, slot, job)) =
                        job(a, &children, &mut bufs, &data, &mut winner, len)
                    {
                        run.pending.push((op, slot));
                        running.push(job);
                    }
                }
            }
        }
    }
}

/// Hands a finished request's result to the caller waiting for an early
/// answer that never came (or returns it, without one).
fn deliver(
    answer: Option<AnswerTx>,
    outcome: Outcome,
    won: Option<Vec<u8>>,
) -> (Outcome, Option<Vec<u8>>) {
    match answer {
        Some(tx) => {
            let _ = tx.send((outcome, won));
            (outcome, None)
        }
        None => (outcome, won),
    }
}

/// The child operation an action asks for, ready to run (`None` for the
/// actions that are not child operations).
fn job<'a>(
    a: Action,
    children: &'a BTreeMap<u32, Arc<dyn AsyncChild>>,
    bufs: &mut [Vec<u8>],
    data: &Option<Arc<[u8]>>,
    winner: &mut Option<Arc<[u8]>>,
    len: usize,
) -> Option<(Op, usize, impl Future<Output = Done> + Send + 'a)> {
    let (op, slot, child, buf, d) = match a {
        // Events went to the subscribers; answers and completions are the
        // caller's business.
        Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => return None,
        Action::Read { slot, child, .. } => {
            let buf = bufs.get_mut(slot).map(std::mem::take).unwrap_or_default();
            (Op::Read, slot, child, buf, None)
        }
        Action::Write { slot, child, .. } => (Op::Write, slot, child, Vec::new(), data.clone()),
        Action::WriteZeroes { slot, child, .. } => (Op::Write, slot, child, Vec::new(), None),
        Action::Flush { slot, child, .. } => (Op::Flush, slot, child, Vec::new(), None),
        Action::Rewrite {
            slot,
            child,
            source,
            ..
        } => {
            let src = bufs.get(source).map(Vec::as_slice).unwrap_or(&[]);
            let d = winner.get_or_insert_with(|| Arc::from(src)).clone();
            (Op::Rewrite, slot, child, Vec::new(), Some(d))
        }
    };
    let c = children.get(&child.0).map(|c| &**c);
    Some((op, slot, caught(op, slot, len, child_op(a, c, buf, d))))
}

/// One child operation, carried out.
async fn child_op(
    a: Action,
    c: Option<&dyn AsyncChild>,
    buf: Vec<u8>,
    data: Option<Arc<[u8]>>,
) -> Done {
    let data = || data.unwrap_or_else(|| Arc::from(&[][..]));
    match a {
        Action::Read { slot, offset, .. } => {
            let Some(c) = c else {
                return Done::Read(slot, Err(Errno::ENODEV), buf);
            };
            let (r, buf) = c.read_at(buf, offset).await;
            Done::Read(slot, errno(r), buf)
        }
        Action::Write { slot, offset, .. } => {
            let r = match c {
                Some(c) => errno(c.write_at(data(), offset).await),
                None => Err(Errno::ENODEV),
            };
            Done::Write(slot, r)
        }
        Action::WriteZeroes {
            slot, offset, len, ..
        } => {
            let r = match c {
                Some(c) => write_zeroes(c, offset, len).await,
                None => Err(Errno::ENODEV),
            };
            Done::Write(slot, r)
        }
        Action::Flush { slot, .. } => {
            let r = match c {
                Some(c) => errno(c.flush().await),
                None => Err(Errno::ENODEV),
            };
            Done::Flush(slot, r)
        }
        Action::Rewrite { slot, offset, .. } => {
            let r = match c {
                Some(c) => errno(c.write_at(data(), offset).await),
                None => Err(Errno::ENODEV),
            };
            Done::Rewrite(slot, r)
        }
        // Never handed to a child (see `run`).
        Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => {
            Done::Write(0, Err(Errno::EIO))
        }
    }
}

/// Write-zeroes as QEMU's block layer does it: an unsupported write-zeroes
/// becomes a write of zeroes, in bounded pieces like QEMU's bounce buffer.
async fn write_zeroes(c: &dyn AsyncChild, offset: u64, len: u64) -> Result<(), Errno> {
    match c.write_zeroes(offset, len).await {
        Err(e) if e.raw_os_error() == Some(ENOTSUP) => {
            let chunk = len.min(quorum_driver::zeroes::ZERO_CHUNK);
            let zeros: Arc<[u8]> = vec![0u8; chunk as usize].into();
            let mut done = 0;
            let mut r = Ok(());
            while done < len && r.is_ok() {
                let n = (len - done).min(chunk);
                let piece: Arc<[u8]> = if n == chunk {
                    zeros.clone()
                } else {
                    zeros[..n as usize].into()
                };
                r = c.write_at(piece, offset + done).await;
                done += n;
            }
            errno(r)
        }
        r => errno(r),
    }
}

/// A child operation whose panic becomes an `EIO` for its slot, so the
/// request still completes.
fn caught<'a>(
    op: Op,
    slot: usize,
    len: usize,
    fut: impl Future<Output = Done> + Send + 'a,
) -> impl Future<Output = Done> + Send + 'a {
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .map(move |r| match r {
            Ok(d) => d,
            Err(_) => {
                let e = Err(Errno::EIO);
                match op {
                    Op::Read => Done::Read(slot, e, vec![0; len]),
                    Op::Write => Done::Write(slot, e),
                    Op::Flush => Done::Flush(slot, e),
                    Op::Rewrite => Done::Rewrite(slot, e),
                }
            }
        })
}

fn done(o: Outcome) -> Result<(), Errno> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
        _ => Err(Errno::EIO),
    }
}
