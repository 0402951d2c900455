//! The async driver: a quorum device over [`AsyncChild`]ren, usable from many
//! tasks at once, under any executor.
//!
//! Every decision is the core's, and everything a driver does alike is the
//! kit's ([`quorum_driver::Engine`]): this file is only the way of waiting —
//! a task registers its waker and returns `Pending` until its request has
//! mail — and of running child operations: one round's operations as
//! futures polled together, their results reported in slot order under a
//! `std` mutex never held across an `.await` (so the same scenario gives the
//! same events as `quorum-sync`). A request whose children all answer in
//! their first `poll` (the page cache) takes the lock twice and is never
//! woken.
//!
//! Early-quorum reads report results one by one as they arrive, and move to
//! a spawned task of their own once answered (see [`AsyncDevice`]).
//!
//! A dropped request is cancelled in the core (R-CANCEL-1): it says nothing
//! about any child. The child operations it had started are not abandoned:
//! they become *orphans*, polled to completion — by a task spawned for them
//! when a spawner is at hand, otherwise by whichever task next waits on the
//! device — and their real results reach the core (R-CANCEL-2), so a repair
//! the dropped request started never lands after a later overlapping write.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_channel::mpsc::{UnboundedReceiver, unbounded};
use futures_channel::oneshot;
use futures_util::FutureExt;
use futures_util::future::join_all;
use futures_util::stream::Stream;
use quorum_driver::zeroes;
use quorum_driver::{
    Done, Engine, Guarded, Locked, Op, Progress, ReadSet, Shared as OpShared, Submit, Waiter,
};
use quorum_proto::{
    Action, ChildId, Config, Errno, Event, Extent, Outcome, Request, RequestId, device_length,
};

use crate::child::AsyncChild;

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

/// Runs a future to completion somewhere else: how an [`AsyncDevice`] with
/// early quorum keeps a read going after its caller has the answer, and how
/// the operations of a dropped request are seen to their end. Given to
/// [`AsyncDevice::set_spawner`]; for example, under smol,
/// `Arc::new(|f| smol::spawn(f).detach())`.
pub type Spawner = Arc<dyn Fn(Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync>;

/// A child operation in progress, owning its child and buffers, so that it
/// can outlive the request that started it (an orphan).
type Job = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What the async driver keeps beside its engine: the child operations of
/// dropped requests, still to be seen to their end (R-CANCEL-2). Opaque.
#[derive(Default)]
pub struct Orphans {
    jobs: Vec<(RequestId, Job)>,
    /// A task is polling them.
    reaping: bool,
}

/// The engine and, beside it, the orphans.
type State = Guarded<Arc<dyn AsyncChild>, Orphans>;

struct Shared {
    state: Locked<Arc<dyn AsyncChild>, Orphans>,
    spawner: Mutex<Option<Spawner>>,
}

/// A quorum device over async children. Share it (`Arc<AsyncDevice>`)
/// between as many tasks as you like; every method takes `&self`.
///
/// The driving code uses no executor: the futures it returns run under
/// tokio, smol, async-std or a hand-written `block_on` alike. Only children
/// may need a particular runtime ([`crate::TokioFileChild`] needs tokio).
///
/// Dropping a request's future before it completes cancels it (SPEC
/// R-CANCEL): the core completes it with `ECANCELED` and reports nothing
/// about any child — a dropped request is no sign of a bad replica. The
/// child operations it had already started run to their end (they may be on
/// another thread already: a write cannot be taken back), and until they
/// have, they still order against overlapping writes and hold up a drain.
/// They are polled by a task spawned for them (the [`Spawner`] given to
/// [`AsyncDevice::set_spawner`], or, with the `tokio` feature, the current
/// tokio runtime), or else by the next task that waits on this device. A
/// cancelled write may have reached some children and not others.
///
/// Early quorum ([`Config::early_quorum`]): a read returns as soon as
/// `threshold` children agree ([`Action::Answer`]) — a copy of the winning
/// buffer — while the rest of the request (the stragglers' reads, their
/// comparison, reports and rewrites) goes on in a task of its own until the
/// core completes it, spawned with the same spawner; with none, reads are
/// answered at their completion as without early quorum. Such a read's
/// results are reported to the core as they arrive, so its events follow
/// completion order. A drain (a membership change) waits for those tasks.
pub struct AsyncDevice {
    shared: Arc<Shared>,
    /// Early quorum in effect (fixed at creation).
    early: bool,
}

impl std::fmt::Debug for AsyncDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncDevice")
            .field("engine", &self.lock().eng)
            .finish_non_exhaustive()
    }
}

type AnswerTx = oneshot::Sender<(Outcome, Option<Vec<u8>>)>;

impl AsyncDevice {
    /// A device over `children` (slot order, named `children.0` …) with
    /// `config` (whose `children` must match).
    pub fn new(
        config: Config,
        children: Vec<Arc<dyn AsyncChild>>,
    ) -> Result<AsyncDevice, DeviceError> {
        let eng = Engine::new(config, children)?;
        let early = eng.config().early_quorum;
        Ok(AsyncDevice {
            shared: Arc::new(Shared {
                state: Locked::new(eng, Orphans::default()),
                spawner: Mutex::new(None),
            }),
            early,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Every event from now on, in the order the core emitted them.
    pub fn events(&self) -> EventStream {
        let (tx, rx) = unbounded();
        self.lock().eng.subscribe(Box::new(move |id, e: &Event| {
            tx.unbounded_send((id, *e)).is_ok()
        }));
        EventStream(rx)
    }

    /// Where early-quorum reads continue after their answer, and where the
    /// operations of dropped requests are seen to their end (see
    /// [`AsyncDevice`]). Without one, the current tokio runtime is used when
    /// there is one (feature `tokio`).
    pub fn set_spawner(&self, spawner: Spawner) {
        *lock(&self.shared.spawner) = Some(spawner);
    }

    /// The device size in bytes: all children must agree (R-CFG-7).
    pub async fn size(&self) -> Result<u64, Errno> {
        let kids = self.lock().eng.child_handles();
        let sizes = join_all(kids.iter().map(|c| c.size())).await;
        device_length(sizes.into_iter().map(|r| r.map_err(|e| Errno::from(&e))))
    }

    /// Reads `len` bytes at `offset`; the result is the winning child's own
    /// buffer, not a copy.
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
            (Outcome::Done | Outcome::BlockStatus(_), _) => Err(ReadError::Io(Errno::EIO)),
        }
    }

    /// Writes `data` at `offset` to every child (R-WRITE); every child reads
    /// from the same shared buffer.
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

    /// Whether `offset..offset + len` starts with data or reads as zeroes,
    /// and for how long: every child is asked, zeroes only where all say so
    /// ([`quorum_proto::Quorum::handle_block_status`]).
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Extent, Errno> {
        match self.run(Request::BlockStatus { offset, len }, None).await.0 {
            Outcome::BlockStatus(e) => Ok(e),
            Outcome::Failed(e) => Err(e),
            _ => Err(Errno::EIO),
        }
    }

    /// Adds a child once the device is drained (R-MEMBER-1, R-MEMBER-4):
    /// new requests wait meanwhile.
    pub async fn add_child(&self, child: Arc<dyn AsyncChild>) -> Result<ChildId, DeviceError> {
        let _drained = self.drain().await;
        self.lock().eng.add_child(child)
    }

    /// Removes a child once the device is drained (R-MEMBER-1..4).
    pub async fn remove_child(&self, id: ChildId) -> Result<(), DeviceError> {
        let _drained = self.drain().await;
        self.lock().eng.remove_child(id)
    }

    /// Waits until nothing is in flight, holding new requests back (the
    /// core's drain gate) until the guard is dropped.
    async fn drain(&self) -> DrainGuard<'_> {
        self.lock().eng.start_drain();
        let guard = DrainGuard(&self.shared);
        poll_fn(|cx| {
            let mut st = self.lock();
            if st.eng.drained(Waiter::Task(cx.waker().clone())) {
                return Poll::Ready(());
            }
            self.shared.poll_orphans(st, cx);
            Poll::Pending
        })
        .await;
        guard
    }

    fn spawner(&self) -> Option<Spawner> {
        self.shared.spawner()
    }

    /// Runs one request. An early-quorum read (with a spawner) returns at its
    /// answer: the rest of it is spawned as a task of its own once the answer
    /// is in, and this returns. Reads whose children all finish at once (the
    /// page cache) complete here without spawning anything; dropped before
    /// the answer, the read is cancelled like any other.
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

/// `config()`, `children()`, `in_flight()`, `set_event_sink()`: the kit's,
/// as every driver answers them.
impl std::ops::Deref for AsyncDevice {
    type Target = Locked<Arc<dyn AsyncChild>, Orphans>;

    fn deref(&self) -> &Self::Target {
        &self.shared.state
    }
}

/// Ends the drain when the membership change is over (or dropped).
struct DrainGuard<'a>(&'a Shared);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().eng.end_drain();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No child code runs under these locks; a poisoned one only means a
    // panicking event sink, and the state is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request between its submission and its completion, with the child
/// operations it is running and the results it has not yet reported.
/// Dropped before the end (its caller's future was dropped), it cancels the
/// request and hands its operations over as orphans.
struct Running {
    shared: Arc<Shared>,
    id: RequestId,
    jobs: Vec<Option<Job>>,
    results: Vec<Done>,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut st = self.shared.lock();
        // R-CANCEL-1: over at once, nothing said about any child.
        st.eng.cancel(self.id);
        // R-CANCEL-2: what already ran is reported, what runs still is seen
        // to its end.
        for d in self.results.drain(..) {
            st.eng.feed_orphan(self.id, d);
        }
        let id = self.id;
        st.own
            .jobs
            .extend(self.jobs.drain(..).flatten().map(|j| (id, j)));
        st.eng.route(None);
        let reap = !st.own.jobs.is_empty() && !st.own.reaping;
        if reap && let Some(spawn) = self.shared.spawner() {
            st.own.reaping = true;
            drop(st);
            let shared = self.shared.clone();
            spawn(Box::pin(async move {
                poll_fn(|cx| {
                    let mut st = shared.lock();
                    if st.own.jobs.is_empty() {
                        st.own.reaping = false;
                        return Poll::Ready(());
                    }
                    shared.poll_orphans(st, cx);
                    Poll::Pending
                })
                .await;
            }));
        }
    }
}

impl Running {
    /// Polls the running jobs; their results join `results` as they come.
    /// Ready when every job has ended.
    fn poll_jobs(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut pending = false;
        for j in &mut self.jobs {
            if let Some(f) = j.as_mut() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(d) => {
                        self.results.push(d);
                        *j = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            self.jobs.clear();
            Poll::Ready(())
        }
    }

    /// Polls the running jobs until at least one has ended.
    fn poll_any(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let before = self.results.len();
        let _ = self.poll_jobs(cx);
        if self.results.len() > before || self.jobs.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.engine()
    }

    fn spawner(&self) -> Option<Spawner> {
        if let Some(s) = lock(&self.spawner).clone() {
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

    /// Polls the orphans (outside the lock: they are child operations) and
    /// reports those that ended. Called by tasks that wait on the device,
    /// since they may be waiting for exactly those (a held write, a drain).
    fn poll_orphans(&self, mut st: MutexGuard<'_, State>, cx: &mut Context<'_>) {
        if st.own.jobs.is_empty() {
            return;
        }
        let mut orphans = std::mem::take(&mut st.own.jobs);
        drop(st);
        let mut ended = Vec::new();
        orphans.retain_mut(|(id, job)| match job.as_mut().poll(cx) {
            Poll::Ready(d) => {
                ended.push((*id, d));
                false
            }
            Poll::Pending => true,
        });
        let mut st = self.lock();
        st.own.jobs.append(&mut orphans);
        if !ended.is_empty() {
            for (id, d) in ended {
                st.eng.feed_orphan(id, d);
            }
            st.eng.route(None);
        }
    }

    /// Submits `req` once there is room and no drain is under way; the
    /// request's first actions are in `actions`. Returns its id, what to do
    /// next, and the children to run it on.
    async fn submit(
        self: &Arc<Self>,
        req: Request,
        actions: &mut Vec<Action>,
        bufs: &mut ReadSet,
    ) -> Result<(RequestId, Progress, Children), Outcome> {
        poll_fn(|cx| {
            let mut st = self.lock();
            match st.eng.submit(req, Waiter::Task(cx.waker().clone())) {
                Submit::Started(id) => {
                    if let Request::Read { len, .. } = req {
                        let n = st.eng.child_ids().len();
                        bufs.prepare(n, len as usize, &mut st.eng.spare);
                    }
                    st.eng.route(Some(id));
                    let next = st.eng.take(id, actions);
                    Poll::Ready(Ok((id, next, st.eng.children().clone())))
                }
                Submit::Failed(o) => Poll::Ready(Err(o)),
                Submit::Wait => {
                    self.poll_orphans(st, cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Waits until `id` has something new.
    async fn take(&self, id: RequestId, actions: &mut Vec<Action>) -> Progress {
        poll_fn(|cx| {
            let mut st = self.lock();
            match st.eng.take(id, actions) {
                Progress::Wait => {
                    st.eng.set_waiter(id, Waiter::Task(cx.waker().clone()));
                    // Maybe held back behind an orphan's repair.
                    self.poll_orphans(st, cx);
                    Poll::Pending
                }
                p => Poll::Ready(p),
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
    /// from the page cache) costs no wake-up at all. With `answer` (an
    /// early-quorum read in a task of its own), results are reported one by
    /// one as they arrive, and the answer is sent as soon as the core gives
    /// it.
    async fn drive(
        self: &Arc<Self>,
        req: Request,
        data: Option<Arc<[u8]>>,
        mut answer: Option<AnswerTx>,
    ) -> (Outcome, Option<Vec<u8>>) {
        let early = answer.is_some();
        let mut actions = Vec::new();
        let mut bufs = ReadSet::new();
        let (id, mut next, children) = match self.submit(req, &mut actions, &mut bufs).await {
            Ok(x) => x,
            Err(o) => return deliver(answer, o, None),
        };
        let mut run = Running {
            shared: self.clone(),
            id,
            jobs: Vec::new(),
            results: Vec::new(),
            finished: false,
        };
        let mut shared = OpShared {
            payload: data,
            winner: None,
        };
        loop {
            match next {
                Progress::Done(outcome) => {
                    // (Only when the request ended without a round of ours.)
                    run.finished = true;
                    let won = finish(&mut self.lock(), outcome, &mut bufs);
                    return deliver(answer, outcome, won);
                }
                Progress::Answered(outcome) => {
                    // The winning buffer stays: the stragglers are compared
                    // with it.
                    if let (Some(tx), Outcome::Read { slot, .. }) = (answer.take(), outcome) {
                        let _ = tx.send((outcome, Some(bufs.get(slot).to_vec())));
                    }
                }
                Progress::Wait => {}
                Progress::Run => {
                    for a in actions.drain(..) {
                        if let Some(op) = Op::from_action(&a, &children, &mut bufs, &mut shared) {
                            run.jobs.push(Some(job(op)));
                        }
                    }
                }
            }
            if run.jobs.is_empty() {
                // Nothing to run: this request's next actions come from
                // another request's progress (a write held behind a repair).
                next = self.take(id, &mut actions).await;
                continue;
            }
            // One round's child operations run concurrently and are reported
            // together, in slot order; an early read's each as it arrives.
            if early {
                poll_fn(|cx| run.poll_any(cx)).await;
            } else {
                poll_fn(|cx| run.poll_jobs(cx)).await;
            }
            let mut st = self.lock();
            if early {
                for d in run.results.drain(..) {
                    st.eng.feed_one(id, d, &mut bufs);
                }
            } else {
                st.eng.feed(id, &mut run.results, &mut bufs);
            }
            st.eng.route(Some(id));
            next = st.eng.take(id, &mut actions);
            if let Progress::Done(outcome) = next {
                run.finished = true;
                let won = finish(&mut st, outcome, &mut bufs);
                drop(st);
                return deliver(answer, outcome, won);
            }
        }
    }
}

/// The children by id, as a request runs on them.
type Children = Arc<std::collections::BTreeMap<u32, Arc<dyn AsyncChild>>>;

/// A finished request's winning buffer (the others go back to the spare
/// buffers).
fn finish(st: &mut State, outcome: Outcome, bufs: &mut ReadSet) -> Option<Vec<u8>> {
    let won = match outcome {
        Outcome::Read { slot, .. } => Some(bufs.take(slot)),
        _ => None,
    };
    bufs.recycle(&mut st.eng.spare);
    won
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

/// A child operation as a future that owns what it touches; a panic in the
/// child becomes an `EIO` for its slot, so the request still completes.
fn job(op: Op<Arc<dyn AsyncChild>>) -> Job {
    let (slot, kind, len) = (op.slot(), op.kind(), op.read_len());
    Box::pin(
        std::panic::AssertUnwindSafe(run_op(op))
            .catch_unwind()
            .map(move |r| r.unwrap_or_else(|_| kind.failed(slot, Errno::EIO, len))),
    )
}

async fn run_op(op: Op<Arc<dyn AsyncChild>>) -> Done {
    match op {
        Op::Failed(d) => d,
        Op::Read {
            slot,
            child,
            buf,
            offset,
        } => {
            let (r, buf) = child.read_at(buf, offset).await;
            Done::Read(slot, errno(r), buf)
        }
        Op::Write {
            slot,
            child,
            data,
            offset,
        } => Done::Write(slot, errno(child.write_at(data, offset).await)),
        Op::Zeroes {
            slot,
            child,
            offset,
            len,
        } => Done::Write(slot, write_zeroes(&*child, offset, len).await),
        Op::Flush { slot, child } => Done::Flush(slot, errno(child.flush().await)),
        Op::BlockStatus {
            slot,
            child,
            offset,
            len,
        } => Done::BlockStatus(
            slot,
            child
                .block_status(offset, len)
                .await
                .map_err(|e| Errno::from(&e)),
        ),
        Op::Rewrite {
            slot,
            child,
            data,
            offset,
        } => Done::Rewrite(slot, errno(child.write_at(data, offset).await)),
    }
}

/// Write-zeroes with the kit's fallback ([`quorum_driver::zeroes`]): an
/// unsupported write-zeroes becomes a write of zeroes, in bounded pieces.
async fn write_zeroes(c: &dyn AsyncChild, offset: u64, len: u64) -> Result<(), Errno> {
    let r = c.write_zeroes(offset, len).await;
    if !zeroes::unsupported(&r) {
        return errno(r);
    }
    let zeros: Arc<[u8]> = vec![0u8; len.min(zeroes::ZERO_CHUNK) as usize].into();
    for (at, n) in zeroes::pieces(offset, len) {
        let piece = if n as usize == zeros.len() {
            zeros.clone()
        } else {
            zeros[..n as usize].into()
        };
        errno(c.write_at(piece, at).await)?;
    }
    Ok(())
}

fn errno(r: std::io::Result<()>) -> Result<(), Errno> {
    r.map_err(|e| Errno::from(&e))
}

fn done(o: Outcome) -> Result<(), Errno> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
        _ => Err(Errno::EIO),
    }
}
