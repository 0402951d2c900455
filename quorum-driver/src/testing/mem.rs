//! The in-memory driver every test builds on.
//!
//! [`MemDriver`] carries out the core's actions against [`Disks`] (byte
//! vectors by default), with persistent per-child [`Faults`] in front and
//! child operations completed in an [`Order`] the test picks — or one at a
//! time by the caller ([`MemDriver::pending`], [`MemDriver::perform`],
//! [`MemDriver::finish`]). Every call to the core goes through a
//! [`Checker`], so every test that uses it also checks the core's contract.
//! It logs every action, event, early answer and outcome, and keeps each
//! request's read buffers and write payload until asked for them.
//!
//! ```
//! use quorum_driver::testing::MemDriver;
//! use quorum_proto::{Config, Outcome};
//!
//! let mut d: MemDriver = MemDriver::uniform(Config::new(3, 2), 4096, 0);
//! assert_eq!(d.write(0, &[7; 512]), Outcome::Done);
//! d.disk_mut(1)[10] ^= 1; // silent corruption on children.1
//! let (outcome, data) = d.read(0, 512);
//! assert!(matches!(outcome, Outcome::Read { .. }));
//! assert_eq!(data.unwrap(), vec![7; 512]);
//! assert_eq!(d.events().len(), 1); // children.1 reported (R-READ-6)
//! ```

use std::collections::{BTreeMap, HashMap};

use quorum_proto::{
    Action, ChildId, Config, DefaultNames, Errno, Error, Event, MemberError, Outcome, Request,
    RequestId, Timestamp,
};

use super::checker::Checker;
use super::disks::{Disks, MemDisks};

/// The largest read buffer the driver allocates; a longer read fails with
/// `ENOMEM` (the core accepts ranges up to 2^63 − 1).
const MAX_BUFFER: u64 = 1 << 30;

/// In which order [`MemDriver::run`] completes the child operations it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// The order the core issued them.
    #[default]
    Issue,
    /// Newest first.
    Reverse,
    /// A deterministic shuffle from this seed.
    Shuffle(u64),
}

/// Persistent faults, by child: every operation of that kind on that child
/// fails with the errno, before the disks are touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Child reads.
    pub read: BTreeMap<ChildId, Errno>,
    /// Child writes and write-zeroes (not rewrites).
    pub write: BTreeMap<ChildId, Errno>,
    /// Child flushes.
    pub flush: BTreeMap<ChildId, Errno>,
    /// Rewrites (repairs, R-READ-7).
    pub rewrite: BTreeMap<ChildId, Errno>,
}

/// The driver's side of one request: buffers, payload, outcome.
#[derive(Debug)]
struct Io {
    serial: u64,
    id: RequestId,
    /// Read buffers by slot, sized when the read is performed.
    bufs: Vec<Vec<u8>>,
    /// A write's data; `None` writes zeroes.
    payload: Option<Vec<u8>>,
    outcome: Option<Outcome>,
    /// Child operations polled and not yet completed.
    owed: usize,
}

/// A child operation polled from the core and not yet completed, with the
/// request it belongs to.
#[derive(Clone, Copy, Debug)]
struct Pending {
    action: Action,
    io: u64,
}

/// An in-memory driver over a checked core (see the module docs).
///
/// `D` is where the bytes live; `C`, `R`, `A` are the core's capacities.
/// Type inference does not apply defaults: name the type
/// (`let d: MemDriver = …`) or its disks (`MemDriver::<Script>::…`).
#[derive(Debug)]
pub struct MemDriver<
    D: Disks = MemDisks,
    const C: usize = 16,
    const R: usize = 32,
    const A: usize = 1024,
> {
    checker: Checker<C, R, A>,
    disks: D,
    /// Persistent faults, by child.
    pub faults: Faults,
    /// The completion order of [`MemDriver::run`].
    pub order: Order,
    rng: u64,
    pending: Vec<Pending>,
    live: Vec<Io>,
    /// The last finished request of each id, for its outcome and data.
    finished: HashMap<RequestId, Io>,
    log: Vec<Action>,
    events: Vec<(RequestId, Event)>,
    answers: Vec<(RequestId, Outcome)>,
    outcomes: Vec<(RequestId, Outcome)>,
    next_id: u64,
    serial: u64,
    /// Sync tracking (R-SYNC): the map the core asks and changes, in
    /// memory; an `Unsettle` waits as a pending operation (performed: the
    /// mark is durable).
    pub sync: Option<crate::sync::SyncMap>,
    /// Every mark polled, in order.
    pub marks: Vec<(RequestId, quorum_proto::sync::Mark)>,
}

impl<const C: usize, const R: usize, const A: usize> MemDriver<MemDisks, C, R, A> {
    /// `contents.len()` children with these contents (`children.N` holds
    /// `contents[N]`). Panics on an invalid configuration.
    pub fn new(config: Config, contents: Vec<Vec<u8>>) -> Self {
        let checker = Checker::new(config)
            .unwrap_or_else(|e| panic!("MemDriver: invalid configuration {config:?}: {e}"));
        Self::with_disks(checker, MemDisks::new(contents))
    }

    /// `config.children` children each holding `len` bytes of `fill`.
    pub fn uniform(config: Config, len: usize, fill: u8) -> Self {
        let n = config.children;
        Self::new(config, vec![vec![fill; len]; n])
    }

    /// The bytes of `children.<child>`.
    pub fn disk(&self, child: u32) -> &[u8] {
        self.disks
            .get(ChildId(child))
            .unwrap_or_else(|| panic!("no disk for children.{child}"))
    }

    /// The bytes of `children.<child>`, to change behind the device's back.
    pub fn disk_mut(&mut self, child: u32) -> &mut Vec<u8> {
        self.disks
            .get_mut(ChildId(child))
            .unwrap_or_else(|| panic!("no disk for children.{child}"))
    }

    /// Adds a child backed by `contents` (R-MEMBER-1); panics if refused.
    pub fn add_child_with(&mut self, contents: Vec<u8>) -> ChildId {
        let id = self
            .add_child()
            .unwrap_or_else(|e| panic!("add_child refused: {e}"));
        self.disks.insert(id, contents);
        id
    }
}

impl<D: Disks, const C: usize, const R: usize, const A: usize> MemDriver<D, C, R, A> {
    /// A driver over `disks` for the checked core `checker`.
    pub fn with_disks(checker: Checker<C, R, A>, disks: D) -> Self {
        MemDriver {
            checker,
            disks,
            faults: Faults::default(),
            order: Order::Issue,
            rng: 0,
            pending: Vec::new(),
            live: Vec::new(),
            finished: HashMap::new(),
            log: Vec::new(),
            events: Vec::new(),
            answers: Vec::new(),
            outcomes: Vec::new(),
            next_id: 1,
            serial: 0,
            sync: None,
            marks: Vec::new(),
        }
    }

    /// The checked core, for queries.
    pub fn checker(&self) -> &Checker<C, R, A> {
        &self.checker
    }

    /// The checked core, for calls the driver does not make itself (misuse,
    /// membership in the middle of requests). Child operations the driver
    /// polled must be completed through the driver.
    pub fn checker_mut(&mut self) -> &mut Checker<C, R, A> {
        &mut self.checker
    }

    /// The checker, to hand the core on (the driver must be idle).
    pub fn into_checker(self) -> Checker<C, R, A> {
        self.checker
    }

    /// The disks.
    pub fn disks(&self) -> &D {
        &self.disks
    }

    /// The disks, to change behind the device's back.
    pub fn disks_mut(&mut self) -> &mut D {
        &mut self.disks
    }

    /// Every action polled, in order.
    pub fn log(&self) -> &[Action] {
        &self.log
    }

    /// Every event, in order, with its request.
    pub fn events(&self) -> &[(RequestId, Event)] {
        &self.events
    }

    /// Every early answer ([`Action::Answer`]), in order.
    pub fn answers(&self) -> &[(RequestId, Outcome)] {
        &self.answers
    }

    /// Every completion, in order.
    pub fn outcomes(&self) -> &[(RequestId, Outcome)] {
        &self.outcomes
    }

    /// The events of request `id`, in order.
    pub fn events_of(&self, id: RequestId) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, e)| *e)
            .collect()
    }

    /// All events so far as QMP JSON lines (timestamp 0, `children.N`
    /// names, device `quorum`).
    pub fn qmp(&self) -> String {
        let names = DefaultNames { device: "quorum" };
        let mut s = String::new();
        for (_, e) in &self.events {
            // Writing to a String cannot fail.
            let _ = e.write_qmp(&mut s, &names, Timestamp::default());
            s.push('\n');
        }
        s
    }

    /// The outcome of the last completed request `id`, if it completed.
    pub fn try_outcome(&self, id: RequestId) -> Option<Outcome> {
        self.outcomes
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, o)| *o)
    }

    /// The outcome of request `id`, which must have completed.
    pub fn outcome(&self, id: RequestId) -> Outcome {
        self.try_outcome(id)
            .unwrap_or_else(|| panic!("request {id} has not completed"))
    }

    fn io(&self, id: RequestId) -> Option<&Io> {
        self.live
            .iter()
            .rev()
            .find(|io| io.id == id)
            .or_else(|| self.finished.get(&id))
    }

    /// The read buffers of request `id`, by slot (the newest request of that
    /// id; kept until [`MemDriver::forget`]).
    pub fn buffers(&self, id: RequestId) -> Option<&[Vec<u8>]> {
        self.io(id).map(|io| io.bufs.as_slice())
    }

    /// A read buffer to fill before [`MemDriver::finish`]ing its read.
    pub fn buffer_mut(&mut self, id: RequestId, slot: usize) -> Option<&mut Vec<u8>> {
        self.live
            .iter_mut()
            .rev()
            .find(|io| io.id == id)
            .and_then(|io| io.bufs.get_mut(slot))
    }

    /// The data a write of request `id` writes (`None`: zeroes).
    pub fn payload(&self, id: RequestId) -> Option<&[u8]> {
        self.io(id).and_then(|io| io.payload.as_deref())
    }

    /// The data a completed read returned: the winning slot's buffer.
    pub fn data(&self, id: RequestId) -> Option<&[u8]> {
        let io = self.io(id)?;
        match io.outcome? {
            Outcome::Read { slot, .. } => io.bufs.get(slot).map(Vec::as_slice),
            _ => None,
        }
    }

    /// Drops what is kept of the finished request `id`.
    pub fn forget(&mut self, id: RequestId) {
        self.finished.remove(&id);
    }

    /// Empties the logs (actions, events, answers, outcomes) and what is
    /// kept of finished requests: for long runs.
    pub fn clear_logs(&mut self) {
        self.log.clear();
        self.events.clear();
        self.answers.clear();
        self.outcomes.clear();
        self.finished.clear();
    }

    // ---- requests -----------------------------------------------------

    /// An id no request of this driver used.
    pub fn fresh_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Submits `request` under `id`, with its write `data` (`None` for a
    /// write writes zeroes), without running it.
    pub fn try_submit(
        &mut self,
        id: RequestId,
        request: Request,
        data: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        if let (Request::Write { len, .. }, Some(d)) = (request, &data) {
            assert_eq!(
                d.len() as u64,
                len,
                "MemDriver: a write of {len} bytes with {} bytes of data",
                d.len()
            );
        }
        let n = self.checker.children().len();
        match &self.sync {
            Some(m) => self.checker.submit_with(id, request, m)?,
            None => self.checker.submit(id, request)?,
        }
        self.serial += 1;
        self.live.push(Io {
            serial: self.serial,
            id,
            bufs: vec![Vec::new(); n],
            payload: data,
            outcome: None,
            owed: 0,
        });
        Ok(())
    }

    /// Submits `request` under a fresh id (panics if the core refuses).
    pub fn submit(&mut self, request: Request, data: Option<Vec<u8>>) -> RequestId {
        let id = self.fresh_id();
        if let Err(e) = self.try_submit(id, request, data) {
            panic!("MemDriver: submit {id} {request:?} refused: {e}");
        }
        id
    }

    /// Cancels request `id` (R-CANCEL-1). Its issued child operations stay
    /// pending here and are still carried out (R-CANCEL-2).
    pub fn cancel(&mut self, id: RequestId) -> Result<(), Error> {
        self.checker.cancel(id)
    }

    /// Adds a child (R-MEMBER-1); requests in flight keep their child set
    /// (R-MEMBER-4). Back it in the disks before it is read.
    pub fn add_child(&mut self) -> Result<ChildId, MemberError> {
        self.checker.add_child()
    }

    /// Removes a child (R-MEMBER-1..3); requests in flight keep it.
    pub fn remove_child(&mut self, child: ChildId) -> Result<(), MemberError> {
        self.checker.remove_child(child)
    }

    /// QEMU's way of changing membership (R-MEMBER-4): starts a drain, runs
    /// every request in flight to its end, calls `f`, ends the drain.
    pub fn with_drain<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.checker.start_drain();
        self.run();
        assert!(
            self.checker.is_drained(),
            "MemDriver: not drained after run"
        );
        let t = f(self);
        if let Err(e) = self.checker.end_drain() {
            panic!("MemDriver: end_drain refused: {e}");
        }
        t
    }

    // ---- the lower level: poll, pick, perform -------------------------------

    /// Polls every action, logging events, answers and outcomes; returns the
    /// child operations it issued, which are now [`MemDriver::pending`].
    pub fn poll(&mut self) -> Vec<Action> {
        let mut new = Vec::new();
        while let Some(a) = self.checker.poll_action() {
            self.log.push(a);
            match a {
                Action::Event { id, event } => self.events.push((id, event)),
                Action::Answer { id, outcome } => self.answers.push((id, outcome)),
                Action::Mark { id, mark } => {
                    self.marks.push((id, mark));
                    let unsettle = matches!(mark, quorum_proto::sync::Mark::Unsettle { .. });
                    if let Some(m) = self.sync.as_mut() {
                        m.apply(&mark);
                    }
                    if unsettle {
                        // Durable when performed, like any child operation.
                        let k = self.open_io(id);
                        self.live[k].owed += 1;
                        let io = self.live[k].serial;
                        self.pending.push(Pending { action: a, io });
                        new.push(a);
                    }
                }
                Action::Complete { id, outcome } => {
                    self.outcomes.push((id, outcome));
                    let k = self.open_io(id);
                    self.live[k].outcome = Some(outcome);
                    self.retire(k);
                }
                op => {
                    let k = self.open_io(op.id());
                    self.live[k].owed += 1;
                    let io = self.live[k].serial;
                    self.pending.push(Pending { action: op, io });
                    new.push(op);
                }
            }
        }
        new
    }

    /// The request a polled action of `id` belongs to: the oldest not yet
    /// completed (created if the request was submitted past the driver).
    fn open_io(&mut self, id: RequestId) -> usize {
        if let Some(k) = self
            .live
            .iter()
            .position(|io| io.id == id && io.outcome.is_none())
        {
            return k;
        }
        self.serial += 1;
        self.live.push(Io {
            serial: self.serial,
            id,
            bufs: Vec::new(),
            payload: None,
            outcome: None,
            owed: 0,
        });
        self.live.len() - 1
    }

    /// Moves a request that is over (completed, nothing owed) to `finished`.
    fn retire(&mut self, k: usize) {
        let io = &self.live[k];
        if io.outcome.is_some() && io.owed == 0 {
            let io = self.live.remove(k);
            self.finished.insert(io.id, io);
        }
    }

    /// The child operations polled and not yet completed, oldest first.
    pub fn pending(&self) -> Vec<Action> {
        self.pending.iter().map(|p| p.action).collect()
    }

    /// Where `action` is in [`MemDriver::pending`]: for a driver that
    /// schedules the operations [`MemDriver::poll`] returned on a clock of
    /// its own and performs each when its time comes.
    pub fn index_of(&self, action: &Action) -> Option<usize> {
        self.pending.iter().position(|p| p.action == *action)
    }

    /// Carries out `pending()[i]` on the disks, with the faults, and hands
    /// its completion to the core.
    pub fn perform(&mut self, i: usize) {
        let p = self.pending.remove(i);
        let k = self.io_of(&p);
        let io = &mut self.live[k];
        let (f, d) = (&self.faults, &mut self.disks);
        let fault =
            |m: &BTreeMap<ChildId, Errno>, c: ChildId| m.get(&c).map_or(Ok(()), |&e| Err(e));
        let r = match p.action {
            Action::Read {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let res = fault(&f.read, child).and_then(|()| {
                    if len > MAX_BUFFER {
                        return Err(Errno::ENOMEM);
                    }
                    let buf = slot_buffer(&mut io.bufs, slot);
                    buf.resize(len as usize, 0);
                    d.read(child, offset, buf)
                });
                self.checker.handle_read(id, slot, res, io.bufs.as_slice())
            }
            Action::Write {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let res = fault(&f.write, child).and_then(|()| match &io.payload {
                    Some(data) => d.write(child, offset, data),
                    None => d.write_zeroes(child, offset, len),
                });
                self.checker.handle_write(id, slot, res)
            }
            Action::WriteZeroes {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let res = fault(&f.write, child).and_then(|()| d.write_zeroes(child, offset, len));
                self.checker.handle_write(id, slot, res)
            }
            Action::Flush { id, slot, child } => {
                let res = fault(&f.flush, child).and_then(|()| d.flush(child));
                self.checker.handle_flush(id, slot, res)
            }
            Action::Rewrite {
                id,
                slot,
                child,
                source,
                offset,
                ..
            } => {
                let res = fault(&f.rewrite, child).and_then(|()| {
                    let data = io.bufs.get(source).map(Vec::as_slice).unwrap_or(&[]);
                    d.write(child, offset, data)
                });
                self.checker.handle_rewrite(id, slot, res)
            }
            Action::BlockStatus {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                // A child that fails reads fails block status too.
                let res = fault(&f.read, child).and_then(|()| {
                    if len > MAX_BUFFER {
                        return Ok(quorum_proto::Extent { len, zero: false });
                    }
                    d.block_status(child, offset, len)
                });
                self.checker.handle_block_status(id, slot, res)
            }
            Action::Mark { id, .. } => {
                if let Some(m) = self.sync.as_mut() {
                    let g = m.generation();
                    m.written(g);
                }
                self.checker.handle_marked(id)
            }
            Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => Ok(()),
        };
        if let Err(e) = r {
            panic!(
                "MemDriver: the core refused the completion of {:?} it asked for: {e}",
                p.action
            );
        }
        self.live[k].owed -= 1;
        self.retire(k);
    }

    /// Hands `result` in for `pending()[i]` without touching the disks; a
    /// read's data is whatever its buffer holds ([`MemDriver::buffer_mut`]).
    /// If the core refuses (a wrong buffer), the operation stays pending.
    pub fn finish(&mut self, i: usize, result: Result<(), Errno>) -> Result<(), Error> {
        let p = self.pending[i];
        let k = self.io_of(&p);
        let io = &self.live[k];
        let r = match p.action {
            Action::Read { id, slot, .. } => {
                self.checker
                    .handle_read(id, slot, result, io.bufs.as_slice())
            }
            Action::Write { id, slot, .. } | Action::WriteZeroes { id, slot, .. } => {
                self.checker.handle_write(id, slot, result)
            }
            Action::Flush { id, slot, .. } => self.checker.handle_flush(id, slot, result),
            Action::Rewrite { id, slot, .. } => self.checker.handle_rewrite(id, slot, result),
            Action::BlockStatus { id, slot, len, .. } => self.checker.handle_block_status(
                id,
                slot,
                result.map(|()| quorum_proto::Extent { len, zero: false }),
            ),
            Action::Mark { id, .. } => {
                if let Some(m) = self.sync.as_mut() {
                    let g = m.generation();
                    m.written(g);
                }
                self.checker.handle_marked(id)
            }
            Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => Ok(()),
        };
        r?;
        self.pending.remove(i);
        self.live[k].owed -= 1;
        self.retire(k);
        Ok(())
    }

    fn io_of(&self, p: &Pending) -> usize {
        self.live
            .iter()
            .position(|io| io.serial == p.io)
            .unwrap_or_else(|| panic!("MemDriver: no request for {:?}", p.action))
    }

    /// The index of the next operation [`MemDriver::run`] performs.
    fn pick(&mut self) -> usize {
        let n = self.pending.len();
        match self.order {
            Order::Issue => 0,
            Order::Reverse => n - 1,
            Order::Shuffle(seed) => {
                self.rng = self
                    .rng
                    .wrapping_add(seed | 1)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                ((self.rng >> 33) % n as u64) as usize
            }
        }
    }

    /// Performs one pending operation in [`MemDriver::order`], after
    /// polling; false when nothing was pending.
    pub fn step(&mut self) -> bool {
        self.poll();
        if self.pending.is_empty() {
            return false;
        }
        let i = self.pick();
        self.perform(i);
        true
    }

    /// Runs until the core is idle, completing child operations in
    /// [`MemDriver::order`].
    pub fn run(&mut self) {
        while self.step() {}
        assert!(
            self.checker.is_idle(),
            "MemDriver: nothing left to perform but the core is not idle"
        );
    }

    // ---- conveniences ------------------------------------------------------

    /// Reads and returns the outcome and, on success, the data.
    pub fn read(&mut self, offset: u64, len: u64) -> (Outcome, Option<Vec<u8>>) {
        let id = self.submit(Request::Read { offset, len }, None);
        self.run();
        let o = self.outcome(id);
        let data = self.data(id).map(<[u8]>::to_vec);
        self.forget(id);
        (o, data)
    }

    /// Writes `data` at `offset` and returns the outcome.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Outcome {
        let len = data.len() as u64;
        let id = self.submit(Request::Write { offset, len }, Some(data.to_vec()));
        self.run();
        self.forget(id);
        self.outcome(id)
    }

    /// Writes zeroes and returns the outcome.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Outcome {
        let id = self.submit(Request::WriteZeroes { offset, len }, None);
        self.run();
        self.forget(id);
        self.outcome(id)
    }

    /// Flushes and returns the outcome.
    pub fn flush(&mut self) -> Outcome {
        let id = self.submit(Request::Flush, None);
        self.run();
        self.forget(id);
        self.outcome(id)
    }
}

/// The buffer of `slot`, growing the set for a request the driver did not
/// submit itself.
fn slot_buffer(bufs: &mut Vec<Vec<u8>>, slot: usize) -> &mut Vec<u8> {
    if bufs.len() <= slot {
        bufs.resize(slot + 1, Vec::new());
    }
    &mut bufs[slot]
}
