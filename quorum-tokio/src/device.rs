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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

/// Linux `ENOTSUP`.
const ENOTSUP: i32 = quorum_proto::Errno::ENOTSUP.get();
use std::task::{Context, Poll, Waker};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures_util::FutureExt;
use futures_util::future::join_all;
use futures_util::stream::Stream;
use quorum_proto::{
    Action, ChildId, Config, Errno, Event, NoBuffers, Outcome, Quorum, Request, RequestId,
    device_length,
};

use crate::child::AsyncChild;
use quorum_sync::round::{self, Done};

/// The core as this driver builds it: up to 16 children, 64 requests in flight
/// (more callers wait for room).
type Core = Quorum<16, 64, 3200>;

/// The blocking driver's types, shared so that code can switch drivers
/// without changing how it handles results and events.
pub use quorum_sync::{DeviceError, EventSink, ReadError};

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

struct State {
    q: Box<Core>,
    children: BTreeMap<u32, Arc<dyn AsyncChild>>,
    /// Actions waiting for the task that owns their request.
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
}

impl State {
    /// Routes every queued action: events to the subscribers, the rest to
    /// its request's mailbox (or straight back as cancelled).
    fn route(&mut self) {
        loop {
            let mut cancel = Vec::new();
            while let Some(a) = self.q.poll_action() {
                match a {
                    Action::Event { id, event } => {
                        if let Some(s) = self.sink.as_mut() {
                            s(id, &event);
                        }
                        self.subscribers
                            .retain(|s| s.unbounded_send((id, event)).is_ok());
                    }
                    Action::Complete { id, .. } if self.abandoned.contains(&id.0) => {
                        self.abandoned.remove(&id.0);
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
/// child already handed to a blocking thread ([`crate::TokioFileChild`],
/// [`crate::Blocking`]). Such a write or repair can still land after the
/// request has ended — and so after a later write that overlapped it, which
/// breaks the repair ordering the core otherwise guarantees. Let read and
/// write futures run to completion when that ordering matters.
pub struct AsyncDevice {
    state: Mutex<State>,
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
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Flush,
    Rewrite,
}

type Job = Pin<Box<dyn Future<Output = Done> + Send>>;

fn errno(r: std::io::Result<()>) -> Result<(), Errno> {
    r.map_err(|e| Errno::from(&e))
}

/// A request between its submission and its completion. Dropped early (the
/// caller's future was dropped), it hands the request to the cancellation
/// path so the core still completes it.
struct Running<'a> {
    dev: &'a AsyncDevice,
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
struct DrainGuard<'a>(&'a AsyncDevice);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.draining -= 1;
        st.wake_waiters();
    }
}

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
        let children = q.children().iter().map(|c| c.0).zip(children).collect();
        Ok(AsyncDevice {
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
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The core never panics mid-update, and child code never runs under
        // the lock: a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
    /// child's own read buffer: nothing is copied.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let (outcome, mut bufs) = self
            .run(
                Request::Read {
                    offset,
                    len: len as u64,
                },
                None,
            )
            .await;
        match outcome {
            Outcome::Read { slot, .. } => match bufs.get_mut(slot) {
                Some(b) => Ok(std::mem::take(b)),
                None => Err(ReadError::Io(Errno::EIO)),
            },
            Outcome::ContentsMismatch { offset } => Err(ReadError::ContentsMismatch { offset }),
            Outcome::Failed(e) => Err(ReadError::Io(e)),
            Outcome::Done => Err(ReadError::Io(Errno::EIO)),
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
        st.children.insert(id.0, child);
        Ok(id)
    }

    /// Removes a child once the requests in flight have drained
    /// (R-MEMBER-1..4). Requests submitted meanwhile wait for the change.
    pub async fn remove_child(&self, id: ChildId) -> Result<(), DeviceError> {
        let _drained = self.drain().await;
        let mut st = self.lock();
        st.q.remove_child(id).map_err(DeviceError::Member)?;
        st.children.remove(&id.0);
        Ok(())
    }

    /// Stops new requests and waits until none is in flight. New requests
    /// start again when the guard is dropped.
    async fn drain(&self) -> DrainGuard<'_> {
        self.lock().draining += 1;
        let guard = DrainGuard(self);
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

    /// Submits `req` once there is room and no drain is waiting; returns its
    /// id and its number of slots.
    async fn submit(&self, req: Request) -> Result<(RequestId, usize), Outcome> {
        poll_fn(|cx| {
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
                        st.route();
                        return Poll::Ready(Ok((id, n)));
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
        .await
    }

    /// Waits for actions in `id`'s mailbox and returns them with the
    /// children they name.
    async fn take(&self, id: RequestId) -> Vec<(Action, Option<Arc<dyn AsyncChild>>)> {
        poll_fn(|cx| {
            let mut st = self.lock();
            match st.inbox.get_mut(&id.0) {
                Some(mb) if !mb.actions.is_empty() => {
                    let actions = std::mem::take(&mut mb.actions);
                    st.inbox.remove(&id.0);
                    let out = actions
                        .into_iter()
                        .map(|a| {
                            let c = match a {
                                Action::Read { child, .. }
                                | Action::Write { child, .. }
                                | Action::WriteZeroes { child, .. }
                                | Action::Flush { child, .. }
                                | Action::Rewrite { child, .. } => {
                                    st.children.get(&child.0).cloned()
                                }
                                Action::Event { .. }
                                | Action::Answer { .. }
                                | Action::Complete { .. } => None,
                            };
                            (a, c)
                        })
                        .collect();
                    Poll::Ready(out)
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
    /// outcome and, for reads, the slots' buffers.
    async fn run(&self, req: Request, data: Option<Arc<[u8]>>) -> (Outcome, Vec<Vec<u8>>) {
        let (id, n) = match self.submit(req).await {
            Ok(x) => x,
            Err(o) => return (o, Vec::new()),
        };
        let mut run = Running {
            dev: self,
            id,
            pending: Vec::new(),
            finished: false,
        };
        let len = req.range().1 as usize;
        let mut bufs: Vec<Vec<u8>> = if matches!(req, Request::Read { .. }) {
            vec![vec![0u8; len]; n]
        } else {
            Vec::new()
        };
        let mut winner: Option<Arc<[u8]>> = None;
        loop {
            let actions = self.take(id).await;
            let mut jobs: Vec<Job> = Vec::new();
            for (a, child) in actions {
                let (op, slot, fut): (Op, usize, Job) = match (a, child) {
                    (Action::Complete { outcome, .. }, _) => {
                        run.finished = true;
                        return (outcome, bufs);
                    }
                    // Answered at the completion: this driver does not
                    // answer early (an early answer changes nothing else).
                    (Action::Event { .. } | Action::Answer { .. }, _) => continue,
                    (Action::Read { slot, offset, .. }, c) => {
                        let buf = bufs.get_mut(slot).map(std::mem::take).unwrap_or_default();
                        (
                            Op::Read,
                            slot,
                            Box::pin(async move {
                                let Some(c) = c else {
                                    return Done::Read(slot, Err(Errno::ENODEV), buf);
                                };
                                let (r, buf) = c.read_at(buf, offset).await;
                                Done::Read(slot, errno(r), buf)
                            }),
                        )
                    }
                    (Action::Write { slot, offset, .. }, c) => {
                        let d = data.clone().unwrap_or_else(|| Arc::from(&[][..]));
                        (
                            Op::Write,
                            slot,
                            Box::pin(async move {
                                let r = match c {
                                    Some(c) => errno(c.write_at(d, offset).await),
                                    None => Err(Errno::ENODEV),
                                };
                                Done::Write(slot, r)
                            }),
                        )
                    }
                    (
                        Action::WriteZeroes {
                            slot, offset, len, ..
                        },
                        c,
                    ) => (
                        Op::Write,
                        slot,
                        Box::pin(async move {
                            let r = match c {
                                Some(c) => {
                                    // QEMU's block layer: an unsupported
                                    // write-zeroes becomes a write of zeroes.
                                    match c.write_zeroes(offset, len).await {
                                        Err(e) if e.raw_os_error() == Some(ENOTSUP) => {
                                            // In bounded pieces, like QEMU's bounce buffer.
                                            let chunk = len.min(quorum_sync::ZERO_CHUNK);
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
                                None => Err(Errno::ENODEV),
                            };
                            Done::Write(slot, r)
                        }),
                    ),
                    (Action::Flush { slot, .. }, c) => (
                        Op::Flush,
                        slot,
                        Box::pin(async move {
                            let r = match c {
                                Some(c) => errno(c.flush().await),
                                None => Err(Errno::ENODEV),
                            };
                            Done::Flush(slot, r)
                        }),
                    ),
                    (
                        Action::Rewrite {
                            slot,
                            source,
                            offset,
                            ..
                        },
                        c,
                    ) => {
                        let src = bufs.get(source).map(Vec::as_slice).unwrap_or(&[]);
                        let d = winner.get_or_insert_with(|| Arc::from(src)).clone();
                        (
                            Op::Rewrite,
                            slot,
                            Box::pin(async move {
                                let r = match c {
                                    Some(c) => errno(c.write_at(d, offset).await),
                                    None => Err(Errno::ENODEV),
                                };
                                Done::Rewrite(slot, r)
                            }),
                        )
                    }
                };
                run.pending.push((op, slot));
                jobs.push(caught(op, slot, len, fut));
            }
            // One round's child operations run concurrently.
            let results = join_all(jobs).await;
            let mut st = self.lock();
            round::feed(&mut st.q, id, results, &mut bufs);
            run.pending.clear();
            st.route();
            st.wake_waiters();
        }
    }
}

/// A child operation whose panic becomes an `EIO` for its slot, so the
/// request still completes.
fn caught(op: Op, slot: usize, len: usize, fut: Job) -> Job {
    Box::pin(
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
            }),
    )
}

fn done(o: Outcome) -> Result<(), Errno> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
        _ => Err(Errno::EIO),
    }
}
