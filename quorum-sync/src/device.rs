//! The blocking driver: a quorum device over [`Child`]ren, usable from many
//! threads at once.
//!
//! Every decision is the core's. This file only moves bytes: a caller submits
//! its request under the lock, the core's actions are routed to the mailbox of
//! the request they belong to, and each caller carries out its own mailbox —
//! the child operations of one round in parallel, on scoped threads — then
//! reports the results back under the lock. Events go to the sink in the order
//! the core emitted them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};

use quorum_proto::{
    Action, ChildId, Config, ConfigError, Errno, Event, MemberError, Outcome, Quorum, Request,
    RequestId, device_length,
};

use crate::child::Child;
use crate::round::{self, Done};

/// The core as this driver builds it: up to 16 children, 64 requests in flight.
type Core = Quorum<16, 64, 3200>;

/// Receives every event, in order, from whichever thread caused it. Called
/// with the device's lock held: it must not call back into the device.
pub type EventSink = Box<dyn FnMut(RequestId, &Event) + Send>;

/// Why a read did not return data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The request failed with this error (R-READ-3, R-READ-5, R-FIFO-2).
    Io(Errno),
    /// blkverify mode: the children differ at this device offset (R-READ-8).
    ContentsMismatch {
        /// Device offset of the first differing byte.
        offset: u64,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::ContentsMismatch { offset } => {
                write!(f, "contents mismatch at offset {offset}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// Why a device could not be opened or a membership change was refused.
#[derive(Debug)]
pub enum DeviceError {
    /// The configuration was refused (QEMU's text).
    Config(ConfigError),
    /// The number of children does not match the configuration.
    ChildCount {
        /// Children in the configuration.
        expected: usize,
        /// Children given.
        got: usize,
    },
    /// The membership change was refused (QEMU's text).
    Member(MemberError),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Config(e) => write!(f, "{e}"),
            DeviceError::ChildCount { expected, got } => {
                write!(
                    f,
                    "the configuration has {expected} children, {got} were given"
                )
            }
            DeviceError::Member(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DeviceError {}

struct State {
    q: Box<Core>,
    children: BTreeMap<u32, Arc<dyn Child>>,
    /// Actions waiting for the caller that owns their request.
    inbox: HashMap<u64, Vec<Action>>,
    next_id: u64,
    sink: Option<EventSink>,
}

impl State {
    /// Routes every queued action to its request's mailbox; events go to the sink.
    fn route(&mut self) {
        while let Some(a) = self.q.poll_action() {
            match a {
                Action::Event { id, event } => {
                    if let Some(s) = self.sink.as_mut() {
                        s(id, &event);
                    }
                }
                other => self.inbox.entry(other.id().0).or_default().push(other),
            }
        }
    }
}

/// A quorum device over blocking children.
pub struct Device {
    state: Mutex<State>,
    /// Signalled whenever a mailbox gets actions or a request completes.
    changed: Condvar,
    pool: Pool,
}

/// One child operation to carry out. Jobs own what they touch, so that any
/// thread of the pool can run them.
enum Job {
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
    fn run(self) -> Done {
        match self {
            Job::Read {
                slot,
                child,
                mut buf,
                offset,
            } => {
                let r = errno(child.read_at(&mut buf, offset));
                Done::Read(slot, r, buf)
            }
            Job::Write {
                slot,
                child,
                data,
                offset,
            } => Done::Write(slot, errno(child.write_at(&data, offset))),
            Job::Zeroes {
                slot,
                child,
                offset,
                len,
            } => Done::Write(slot, errno(zeroes_or_write(&*child, offset, len))),
            Job::Flush { slot, child } => Done::Flush(slot, errno(child.flush())),
            Job::Rewrite {
                slot,
                child,
                data,
                offset,
            } => Done::Rewrite(slot, errno(child.write_at(&data, offset))),
        }
    }

    /// What to report if the child implementation panics: an I/O error for
    /// that slot, so the request still completes.
    fn failed(&self) -> Done {
        let e = Err(Errno::EIO);
        match *self {
            Job::Read { slot, ref buf, .. } => Done::Read(slot, e, vec![0; buf.len()]),
            Job::Write { slot, .. } | Job::Zeroes { slot, .. } => Done::Write(slot, e),
            Job::Flush { slot, .. } => Done::Flush(slot, e),
            Job::Rewrite { slot, .. } => Done::Rewrite(slot, e),
        }
    }

    /// Runs the job, turning a panic in the child into an I/O error.
    fn run_caught(self) -> Done {
        let fallback = self.failed();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())).unwrap_or(fallback)
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// Threads that carry out child operations, started once: a request hands
/// all but one of its child operations to the pool and does the last itself,
/// so one request's children are served in parallel without a thread start.
struct Pool {
    tx: Mutex<Option<mpsc::Sender<Task>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("quorum-io-{i}"))
                    .spawn(move || {
                        loop {
                            let task = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => return,
                            };
                            match task {
                                Ok(t) => t(),
                                Err(_) => return, // the device is gone
                            }
                        }
                    })
            })
            .filter_map(Result::ok)
            .collect();
        Pool {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
        }
    }

    /// Runs `jobs` in parallel and returns their results (in any order).
    fn execute(&self, jobs: Vec<Job>) -> Vec<Done> {
        let mut jobs = jobs.into_iter();
        let Some(first) = jobs.next() else {
            return Vec::new();
        };
        let (tx, rx) = mpsc::channel();
        let mut here: Vec<Task> = Vec::new();
        let mut sent = 0;
        {
            let pool = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            for job in jobs {
                let tx = tx.clone();
                let task: Task = Box::new(move || {
                    let _ = tx.send(job.run_caught());
                });
                sent += 1;
                match pool.as_ref() {
                    Some(p) => {
                        // No worker left to take it: run it here.
                        if let Err(mpsc::SendError(task)) = p.send(task) {
                            here.push(task);
                        }
                    }
                    None => here.push(task),
                }
            }
        }
        let mut out = vec![first.run_caught()];
        for task in here {
            task();
        }
        for _ in 0..sent {
            match rx.recv() {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel ends every worker.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
    }
}

/// Write-zeroes, falling back to a plain write of zeroes when the child does
/// not support it — what QEMU's block layer does for `-ENOTSUP`, so the
/// fallback write is seen (and can fail) like any write.
/// The largest piece of zeroes written at once by the write-zeroes fallback.
pub const ZERO_CHUNK: u64 = 1 << 20;

pub(crate) fn zeroes_or_write(child: &dyn Child, offset: u64, len: u64) -> std::io::Result<()> {
    match child.write_zeroes(offset, len) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            // In bounded pieces, like QEMU's bounce buffer.
            let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(ZERO_CHUNK);
                child.write_at(&zeros[..n as usize], offset + done)?;
                done += n;
            }
            Ok(())
        }
        r => r,
    }
}

fn errno(r: std::io::Result<()>) -> Result<(), Errno> {
    r.map_err(|e| Errno::from(&e))
}

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
        let children = q.children().iter().map(|c| c.0).zip(children).collect();
        Ok(Device {
            state: Mutex::new(State {
                q,
                children,
                inbox: HashMap::new(),
                next_id: 1,
                sink: None,
            }),
            changed: Condvar::new(),
            // Enough threads for every child of a few requests at once; more
            // only queue (the page cache or the disk is the limit then).
            pool: Pool::new(2 * config.children + 4),
        })
    }

    /// Sends every event to `sink` from now on. The sink runs with the
    /// device's lock held (that is what keeps events in order), so it must
    /// not call back into this device.
    pub fn set_event_sink(&self, sink: EventSink) {
        self.lock().sink = Some(sink);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere (in a child implementation) leaves the state
        // consistent: the core never panics mid-update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut bufs = Vec::new();
        match self.run(
            Request::Read {
                offset,
                len: buf.len() as u64,
            },
            None,
            &mut bufs,
        ) {
            Outcome::Read { slot, .. } => {
                buf.copy_from_slice(&bufs[slot]);
                Ok(())
            }
            Outcome::ContentsMismatch { offset } => Err(ReadError::ContentsMismatch { offset }),
            Outcome::Failed(e) => Err(ReadError::Io(e)),
            Outcome::Done => Err(ReadError::Io(Errno::EIO)),
        }
    }

    /// Writes `data` at `offset` to every child (R-WRITE).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        done(self.run(
            Request::Write {
                offset,
                len: data.len() as u64,
            },
            Some(data),
            &mut Vec::new(),
        ))
    }

    /// Writes zeroes (R-WRITE-3).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Errno> {
        done(self.run(Request::WriteZeroes { offset, len }, None, &mut Vec::new()))
    }

    /// Flushes every child (R-FLUSH).
    pub fn flush(&self) -> Result<(), Errno> {
        done(self.run(Request::Flush, None, &mut Vec::new()))
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
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// Runs one request to completion on this thread.
    fn run(&self, req: Request, data: Option<&[u8]>, bufs: &mut Vec<Vec<u8>>) -> Outcome {
        let (_, len) = req.range();
        let id = {
            let mut st = self.lock();
            loop {
                let id = RequestId(st.next_id);
                st.next_id += 1;
                match st.q.submit(id, req) {
                    Ok(()) => {
                        if matches!(req, Request::Read { .. }) {
                            bufs.resize_with(st.q.children().len(), Vec::new);
                            for b in bufs.iter_mut() {
                                b.resize(len as usize, 0);
                            }
                        }
                        st.route();
                        break id;
                    }
                    Err(quorum_proto::Error::Busy) => {
                        st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    Err(quorum_proto::Error::InvalidRange { .. }) => {
                        return Outcome::Failed(Errno::EINVAL);
                    }
                    Err(_) => continue, // an id still in flight from a wrapped counter
                }
            }
        };
        let mut payload: Option<Arc<[u8]>> = None;
        let mut winner: Option<Arc<[u8]>> = None;
        loop {
            // Take this request's actions, waiting for some if there are none.
            let (actions, children) = {
                let mut st = self.lock();
                let mut actions = st.inbox.remove(&id.0).unwrap_or_default();
                while actions.is_empty() {
                    st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                    actions = st.inbox.remove(&id.0).unwrap_or_default();
                }
                let children = st.children.clone();
                (actions, children)
            };
            let mut outcome = None;
            let mut jobs = Vec::new();
            for a in actions {
                let child = |c: ChildId| children.get(&c.0).cloned();
                match a {
                    Action::Complete { outcome: o, .. } => outcome = Some(o),
                    Action::Read {
                        slot,
                        child: c,
                        offset,
                        ..
                    } => {
                        if let (Some(child), Some(b)) = (child(c), bufs.get_mut(slot)) {
                            let buf = std::mem::take(b);
                            jobs.push(Job::Read {
                                slot,
                                child,
                                buf,
                                offset,
                            });
                        }
                    }
                    Action::Write {
                        slot,
                        child: c,
                        offset,
                        ..
                    } => {
                        if let Some(child) = child(c) {
                            // One copy per request, shared by every child.
                            let data = payload
                                .get_or_insert_with(|| Arc::from(data.unwrap_or(&[])))
                                .clone();
                            jobs.push(Job::Write {
                                slot,
                                child,
                                data,
                                offset,
                            });
                        }
                    }
                    Action::WriteZeroes {
                        slot,
                        child: c,
                        offset,
                        len,
                        ..
                    } => {
                        if let Some(child) = child(c) {
                            jobs.push(Job::Zeroes {
                                slot,
                                child,
                                offset,
                                len,
                            });
                        }
                    }
                    Action::Flush { slot, child: c, .. } => {
                        if let Some(child) = child(c) {
                            jobs.push(Job::Flush { slot, child });
                        }
                    }
                    Action::Rewrite {
                        slot,
                        child: c,
                        source,
                        offset,
                        ..
                    } => {
                        if let Some(child) = child(c) {
                            let src = bufs.get(source).map(Vec::as_slice).unwrap_or(&[]);
                            let data = winner.get_or_insert_with(|| Arc::from(src)).clone();
                            jobs.push(Job::Rewrite {
                                slot,
                                child,
                                data,
                                offset,
                            });
                        }
                    }
                    // Answered at the completion (early quorum is not wired here yet).
                    Action::Event { .. } | Action::Answer { .. } => {}
                }
            }
            if let Some(o) = outcome {
                self.changed.notify_all();
                return o;
            }
            let results = self.pool.execute(jobs);
            let mut st = self.lock();
            round::feed(&mut st.q, id, results, bufs);
            st.route();
            drop(st);
            self.changed.notify_all();
        }
    }
}

fn done(o: Outcome) -> Result<(), Errno> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
        _ => Err(Errno::EIO),
    }
}
