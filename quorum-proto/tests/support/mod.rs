//! An in-memory driver for the core's tests: children are byte vectors, faults
//! are set per child, and pending child operations complete in an order the
//! test picks. Deliberately simple so that what it does is obvious.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;

use quorum_proto::{
    Action, ChildId, Config, DefaultNames, Errno, Event, Outcome, Quorum, Request, RequestId,
    Timestamp,
};

/// In which order queued child operations complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The order the core issued them.
    Issue,
    /// Newest first.
    Reverse,
    /// A deterministic shuffle from this seed.
    Shuffle(u64),
}

/// A child operation the driver has started and not yet completed.
#[derive(Clone, Debug)]
pub struct Pending(pub Action);

pub struct Mem {
    pub q: Quorum,
    /// Child contents, by `ChildId` number.
    pub disks: HashMap<u32, Vec<u8>>,
    /// Persistent read errors per child.
    pub read_err: HashMap<u32, Errno>,
    pub write_err: HashMap<u32, Errno>,
    pub flush_err: HashMap<u32, Errno>,
    pub rewrite_err: HashMap<u32, Errno>,
    pub events: Vec<(RequestId, Event)>,
    /// Early answers ([`Action::Answer`]), in the order polled.
    pub answers: Vec<(RequestId, Outcome)>,
    pub outcomes: Vec<(RequestId, Outcome)>,
    /// Every action, in the order polled.
    pub log: Vec<Action>,
    pub order: Order,
    rng: u64,
    bufs: HashMap<RequestId, Vec<Vec<u8>>>,
    wdata: HashMap<RequestId, Vec<u8>>,
    next_id: u64,
}

impl Mem {
    /// `disks.len()` children with these contents.
    pub fn new(config: Config, disks: Vec<Vec<u8>>) -> Self {
        let q = Quorum::new(config).expect("valid config");
        let disks = disks
            .into_iter()
            .enumerate()
            .map(|(i, d)| (i as u32, d))
            .collect();
        Mem {
            q,
            disks,
            read_err: HashMap::new(),
            write_err: HashMap::new(),
            flush_err: HashMap::new(),
            rewrite_err: HashMap::new(),
            events: Vec::new(),
            answers: Vec::new(),
            outcomes: Vec::new(),
            log: Vec::new(),
            order: Order::Issue,
            rng: 0,
            bufs: HashMap::new(),
            wdata: HashMap::new(),
            next_id: 1,
        }
    }

    /// `n` children each holding `len` bytes of `fill`.
    pub fn uniform(config: Config, len: usize, fill: u8) -> Self {
        let n = config.children;
        Self::new(config, vec![vec![fill; len]; n])
    }

    pub fn disk(&self, child: u32) -> &[u8] {
        &self.disks[&child]
    }

    pub fn disk_mut(&mut self, child: u32) -> &mut Vec<u8> {
        self.disks.get_mut(&child).expect("child exists")
    }

    fn fresh_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Submits a request (with its write data) without running it.
    pub fn submit(&mut self, req: Request, data: Option<Vec<u8>>) -> RequestId {
        let id = self.fresh_id();
        self.q.submit(id, req).expect("submit accepted");
        if let Request::Read { len, .. } = req {
            let n = self.q.children().len();
            self.bufs.insert(id, vec![vec![0u8; len as usize]; n]);
        }
        if let Some(d) = data {
            self.wdata.insert(id, d);
        }
        id
    }

    /// Runs until the core is idle, completing child operations in `self.order`.
    pub fn run(&mut self) {
        let mut pending: Vec<Action> = Vec::new();
        loop {
            while let Some(a) = self.q.poll_action() {
                self.log.push(a);
                match a {
                    Action::Event { id, event } => self.events.push((id, event)),
                    Action::Answer { id, outcome } => self.answers.push((id, outcome)),
                    Action::Complete { id, outcome } => {
                        self.outcomes.push((id, outcome));
                    }
                    other => pending.push(other),
                }
            }
            if pending.is_empty() {
                break;
            }
            let i = match self.order {
                Order::Issue => 0,
                Order::Reverse => pending.len() - 1,
                Order::Shuffle(seed) => {
                    self.rng = self
                        .rng
                        .wrapping_add(seed | 1)
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    ((self.rng >> 33) % pending.len() as u64) as usize
                }
            };
            let a = pending.remove(i);
            self.perform(a);
        }
    }

    fn perform(&mut self, a: Action) {
        match a {
            Action::Read {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let r = match self.read_err.get(&child.0) {
                    Some(&e) => Err(e),
                    None => {
                        let (o, l) = (offset as usize, len as usize);
                        let data = self.disks[&child.0][o..o + l].to_vec();
                        self.bufs.get_mut(&id).expect("read buffers")[slot] = data;
                        Ok(())
                    }
                };
                let bufs = self.bufs.get(&id).expect("read buffers");
                self.q
                    .handle_read(id, slot, r, bufs.as_slice())
                    .expect("read completion");
            }
            Action::Write {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let r = self.do_write(child, offset, len, Some(id));
                self.q.handle_write(id, slot, r).expect("write completion");
            }
            Action::WriteZeroes {
                id,
                slot,
                child,
                offset,
                len,
            } => {
                let r = self.do_write(child, offset, len, None);
                self.q.handle_write(id, slot, r).expect("write completion");
            }
            Action::Flush { id, slot, child } => {
                let r = match self.flush_err.get(&child.0) {
                    Some(&e) => Err(e),
                    None => Ok(()),
                };
                self.q.handle_flush(id, slot, r).expect("flush completion");
            }
            Action::Rewrite {
                id,
                slot,
                child,
                source,
                offset,
                len,
            } => {
                let r = match self.rewrite_err.get(&child.0) {
                    Some(&e) => Err(e),
                    None => {
                        let data = self.bufs[&id][source].clone();
                        let (o, l) = (offset as usize, len as usize);
                        self.disk_mut(child.0)[o..o + l].copy_from_slice(&data);
                        Ok(())
                    }
                };
                self.q
                    .handle_rewrite(id, slot, r)
                    .expect("rewrite completion");
            }
            Action::Event { .. } | Action::Answer { .. } | Action::Complete { .. } => {
                unreachable!()
            }
        }
    }

    /// Writes request `data_of`'s data, or zeroes when it is `None`.
    fn do_write(
        &mut self,
        child: ChildId,
        offset: u64,
        len: u64,
        data_of: Option<RequestId>,
    ) -> Result<(), Errno> {
        if let Some(&e) = self.write_err.get(&child.0) {
            return Err(e);
        }
        let (o, l) = (offset as usize, len as usize);
        let data = match data_of {
            Some(id) => self.wdata[&id].clone(),
            None => vec![0u8; l],
        };
        self.disk_mut(child.0)[o..o + l].copy_from_slice(&data);
        Ok(())
    }

    /// The outcome of request `id`, which must have completed exactly once.
    pub fn outcome(&self, id: RequestId) -> Outcome {
        let mut it = self.outcomes.iter().filter(|(i, _)| *i == id);
        let (_, o) = it.next().expect("request completed");
        assert!(it.next().is_none(), "request completed twice");
        *o
    }

    /// Reads and returns the outcome and, on success, the data.
    pub fn read(&mut self, offset: u64, len: u64) -> (Outcome, Option<Vec<u8>>) {
        let id = self.submit(Request::Read { offset, len }, None);
        self.run();
        let o = self.outcome(id);
        let data = match o {
            Outcome::Read { slot, .. } => Some(self.bufs[&id][slot].clone()),
            _ => None,
        };
        self.bufs.remove(&id);
        (o, data)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Outcome {
        let id = self.submit(
            Request::Write {
                offset,
                len: data.len() as u64,
            },
            Some(data.to_vec()),
        );
        self.run();
        self.outcome(id)
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Outcome {
        let id = self.submit(Request::WriteZeroes { offset, len }, None);
        self.run();
        self.outcome(id)
    }

    pub fn flush(&mut self) -> Outcome {
        let id = self.submit(Request::Flush, None);
        self.run();
        self.outcome(id)
    }

    /// The events of request `id`, in order.
    pub fn events_of(&self, id: RequestId) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, e)| *e)
            .collect()
    }

    /// All events so far as QMP JSON lines (timestamp 0), `children.N` names.
    pub fn qmp(&self) -> String {
        let names = DefaultNames { device: "quorum" };
        let mut s = String::new();
        for (_, e) in &self.events {
            e.write_qmp(&mut s, &names, Timestamp::default())
                .expect("render");
            s.push('\n');
        }
        s
    }

    /// Adds a child backed by `contents`.
    pub fn add_child(&mut self, contents: Vec<u8>) -> ChildId {
        let id = self.q.add_child().expect("add child");
        self.disks.insert(id.0, contents);
        id
    }
}
