//! Many requests in flight on one connection, for [`NbdChild`](super::NbdChild).
//!
//! Every request gets a slot (at most [`MAX_IN_FLIGHT`]); its cookie names
//! the slot, so a reply finds its request without a search. A caller
//! reserves a slot, sends its request under the writer lock (header and
//! payload in one vectored write, no copy), then waits for its reply.
//!
//! Replies are read by a *leader*: the first waiting caller that finds the
//! read half of the socket free takes it, reads reply after reply, and
//! hands each to its request — straight into its own buffer when the reply
//! is its own, into a buffer handed back through the slot otherwise (the
//! owner copies it into its own: one copy) — until its own reply is
//! complete. Then it puts the read half back and wakes one waiting caller to
//! lead next. A request alone on the connection is read by its own caller,
//! as a one-request-at-a-time client would: no thread of the child's own
//! sits between a reply and its caller, and nothing is spawned per request.
//! Each slot has its own condition variable, so a reply wakes its caller
//! only.
//!
//! Time limits: the socket's timeouts are short ticks (a quarter of the
//! timeout, at most a second) so that a blocked read or write can look at
//! the clock; the leader gives up when its own reply is late, a waiting
//! caller when its reply is late, a sender when its request could not be
//! sent in time. Giving up breaks the connection: every request in flight
//! on it fails with that error, the socket is shut down (which wakes the
//! leader and a blocked sender at once), and a background thread connects
//! again every [`RECONNECT_DELAY`]. Requests are tied to the connection
//! (its epoch: a counter of connections) they were sent on, so a late reply or a slow caller of
//! a dead connection never touches the next one.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    CHILD_MAX_PAYLOAD, MAX_IN_FLIGHT, NbdAddr, RECONNECT_DELAY, Sock, Timed, negotiate, proto,
};
use crate::wire::{self, chunk, cmd};

/// The cookie's low bits are the slot; the rest counts requests, so a
/// reused slot never has an old cookie.
const SLOT_BITS: u32 = 8;
const _: () = assert!(MAX_IN_FLIGHT <= 1 << SLOT_BITS);

/// The longest error chunk accepted: error, message length, a message of at
/// most 4096 bytes, an offset.
const MAX_ERROR_CHUNK: u32 = 6 + 4096 + 8;

/// ENOTCONN on Linux.
const ENOTCONN: i32 = 107;

/// What the current connection negotiated, as the operations need it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Info {
    /// The connection's epoch: requests are sent on it only.
    epoch: u64,
    /// Transmission flags.
    pub(super) flags: u16,
    /// Structured replies were agreed.
    pub(super) structured: bool,
    /// The id of `base:allocation`, if selected.
    pub(super) base_allocation: Option<u32>,
    /// The largest payload of one request.
    pub(super) max_payload: usize,
}

/// One request as it goes on the wire.
#[derive(Clone, Copy, Debug)]
pub(super) struct Req {
    pub(super) command: u16,
    pub(super) flags: u16,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// A successful reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// Done (a read's data is in the caller's buffer).
    Done,
    /// Block status: the first extent's length and `base:allocation` flags.
    Extent { len: u32, flags: u32 },
}

/// How a request ended.
#[derive(Debug)]
enum Outcome {
    Done,
    Extent {
        len: u32,
        flags: u32,
    },
    /// The server's error, as an errno.
    Errno(i32),
    /// The connection broke.
    Failed(io::Error),
}

/// The parts of a read a structured reply has covered, to refuse chunks
/// that overlap (then the lengths adding up means every byte arrived).
#[derive(Debug, Default)]
struct Cover {
    total: u64,
    /// Disjoint spans, start to end; adjacent ones merged.
    spans: BTreeMap<u64, u64>,
}

impl Cover {
    fn add(&mut self, start: u64, len: u64) -> io::Result<()> {
        let end = start + len;
        let mut merge = None;
        if let Some((&s, &e)) = self.spans.range(..end).next_back() {
            if e > start {
                return Err(proto("structured read chunks overlap"));
            }
            if e == start {
                merge = Some(s);
            }
        }
        match merge {
            Some(s) => {
                self.spans.insert(s, end);
            }
            None => {
                self.spans.insert(start, end);
            }
        }
        self.total += len;
        Ok(())
    }
}

/// A request in flight.
#[derive(Debug, Default)]
struct Slot {
    used: bool,
    epoch: u64,
    cookie: u64,
    command: u16,
    offset: u64,
    len: u32,
    /// The owner waits on its condition variable and may be woken to lead.
    waiting: bool,
    /// The owner has led: read data went to its own buffer, not `data`.
    led: bool,
    /// Read data a leader other than the owner received.
    data: Option<Vec<u8>>,
    cover: Cover,
    /// The first error chunk (structured replies go on after one).
    error: Option<i32>,
    /// The first extent of a block status reply.
    extent: Option<(u32, u32)>,
    outcome: Option<Outcome>,
}

/// A live connection's reading side and shutdown handle.
struct Live {
    info: Info,
    /// The read half, while no caller leads.
    reader: Option<Sock>,
    /// Shuts the connection down for every clone.
    ctl: Sock,
}

struct State {
    /// The epoch of the current (or last) connection.
    epoch: u64,
    live: Option<Live>,
    /// A background thread is trying to connect.
    reconnecting: bool,
    slots: Vec<Slot>,
    free: Vec<usize>,
    seq: u64,
}

/// The sending side: whoever holds it writes one whole request.
struct Writer {
    epoch: u64,
    sock: Option<Sock>,
}

/// A fresh, negotiated connection.
struct Conn {
    writer: Sock,
    reader: Sock,
    ctl: Sock,
    info: Info,
}

/// One child's connection and everything in flight on it.
pub(super) struct Mux {
    pub(super) addr: NbdAddr,
    pub(super) size: u64,
    timeout: Duration,
    state: Mutex<State>,
    writer: Mutex<Writer>,
    /// A slot was freed, or the connection went.
    room: Condvar,
    /// One per slot: its reply is in, or it may lead.
    wake: Vec<Condvar>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A copy of a connection's error for each request that fails with it.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

fn enotconn() -> io::Error {
    io::Error::from_raw_os_error(ENOTCONN)
}

/// The connection went while a reply was being read.
fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "NBD: connection lost")
}

/// Fills `buf`, giving up at `deadline` (checked whenever a read times
/// out, which the socket's tick bounds).
fn read_full(
    r: &mut Sock,
    mut buf: &mut [u8],
    deadline: Instant,
    late: &dyn Fn() -> io::Error,
) -> io::Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "NBD: the server closed the connection",
                ));
            }
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if Instant::now() >= deadline {
                    return Err(late());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `n` bytes into a new vector (not zeroed first).
fn read_vec(
    r: &mut Sock,
    n: usize,
    deadline: Instant,
    late: &dyn Fn() -> io::Error,
) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let want = (n - v.len()) as u64;
        match Read::by_ref(r).take(want).read_to_end(&mut v) {
            Ok(_) if v.len() < n => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "NBD: the server closed the connection",
                ));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                if Instant::now() >= deadline {
                    return Err(late());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(v)
}

/// Reads and drops `n` bytes.
fn skip(
    r: &mut Sock,
    mut n: u64,
    deadline: Instant,
    late: &dyn Fn() -> io::Error,
) -> io::Result<()> {
    let mut scratch = [0u8; 4096];
    while n > 0 {
        let k = n.min(scratch.len() as u64) as usize;
        read_full(r, &mut scratch[..k], deadline, late)?;
        n -= k as u64;
    }
    Ok(())
}

/// Writes the header and payload, giving up at `deadline`.
fn send_all(
    w: &mut Sock,
    header: &[u8],
    payload: &[u8],
    deadline: Instant,
    late: &dyn Fn() -> io::Error,
) -> io::Result<()> {
    let mut parts = [IoSlice::new(header), IoSlice::new(payload)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() && parts.iter().any(|p| !p.is_empty()) {
        match w.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if Instant::now() >= deadline {
                    return Err(late());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// What a chunk does to its request, applied under the lock.
enum Effect {
    None,
    /// A read's `len` bytes at `start` (relative to the request) arrived.
    Cover(u64, u64),
    Extent(u32, u32),
    Error(i32),
}

impl Mux {
    /// Connects and negotiates; the export's size is fixed from now on.
    pub(super) fn open(addr: NbdAddr, timeout: Duration) -> io::Result<Arc<Mux>> {
        let (conn, size) = Mux::connect(&addr, timeout)?;
        let mux = Arc::new(Mux {
            addr,
            size,
            timeout,
            state: Mutex::new(State {
                epoch: 0,
                live: None,
                reconnecting: false,
                slots: (0..MAX_IN_FLIGHT).map(|_| Slot::default()).collect(),
                free: (0..MAX_IN_FLIGHT).rev().collect(),
                seq: 0,
            }),
            writer: Mutex::new(Writer {
                epoch: 0,
                sock: None,
            }),
            room: Condvar::new(),
            wake: (0..MAX_IN_FLIGHT).map(|_| Condvar::new()).collect(),
        });
        mux.install(conn);
        Ok(mux)
    }

    /// A fresh, negotiated connection to the export at `addr`, and its size.
    fn connect(addr: &NbdAddr, timeout: Duration) -> io::Result<(Conn, u64)> {
        let deadline = Instant::now() + timeout;
        let mut s = addr.connect(timeout)?;
        // Short enough for a blocked read or write to look at the clock
        // now and then (see the module's documentation).
        let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        s.set_timeouts(tick)?;
        let mut timed = Timed {
            sock: &mut s,
            deadline,
        };
        let n = negotiate(&mut timed, addr.export(), true)?;
        let max_payload = n
            .max_payload
            .map_or(CHILD_MAX_PAYLOAD, |m| (m as usize).min(CHILD_MAX_PAYLOAD))
            .max(1);
        let info = Info {
            epoch: 0,
            flags: n.flags,
            structured: n.structured,
            base_allocation: n.base_allocation.filter(|_| n.structured),
            max_payload,
        };
        let conn = Conn {
            reader: s.try_clone()?,
            ctl: s.try_clone()?,
            writer: s,
            info,
        };
        Ok((conn, n.size))
    }

    /// Makes `conn` the current connection, of a new epoch.
    fn install(&self, mut conn: Conn) {
        // Only `install` changes the epoch, and only the opener or the
        // one reconnecting thread calls it.
        let epoch = lock(&self.state).epoch + 1;
        conn.info.epoch = epoch;
        {
            let mut w = lock(&self.writer);
            w.epoch = epoch;
            w.sock = Some(conn.writer);
        }
        let mut st = lock(&self.state);
        st.epoch = epoch;
        st.live = Some(Live {
            info: conn.info,
            reader: Some(conn.reader),
            ctl: conn.ctl,
        });
        st.reconnecting = false;
    }

    /// The current connection, if there is one.
    pub(super) fn info(&self) -> Option<Info> {
        lock(&self.state).live.as_ref().map(|l| l.info)
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - lock(&self.state).free.len()
    }

    /// The current connection, or `ENOTCONN` at once (and a reconnection
    /// started, if none runs).
    pub(super) fn connection(self: &Arc<Self>) -> io::Result<Info> {
        let mut st = lock(&self.state);
        match &st.live {
            Some(l) => Ok(l.info),
            None => {
                self.reconnect(&mut st);
                Err(enotconn())
            }
        }
    }

    /// Starts the background reconnection, unless it runs already.
    fn reconnect(self: &Arc<Self>, st: &mut State) {
        if st.reconnecting {
            return;
        }
        st.reconnecting = true;
        let weak = Arc::downgrade(self);
        let started = std::thread::Builder::new()
            .name("nbd-reconnect".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RECONNECT_DELAY);
                    // The child is gone: stop.
                    let Some(mux) = weak.upgrade() else { return };
                    match Mux::connect(&mux.addr, mux.timeout) {
                        Ok((conn, size)) if size == mux.size => {
                            mux.install(conn);
                            return;
                        }
                        // Another export now, or still no server: later.
                        Ok(_) | Err(_) => {}
                    }
                }
            });
        if started.is_err() {
            st.reconnecting = false;
        }
    }

    /// Breaks connection `epoch` (if it is still the current one) with `e`:
    /// every request in flight on it fails, the socket is shut down, and a
    /// reconnection starts.
    fn break_conn(self: &Arc<Self>, st: &mut State, epoch: u64, e: io::Error) {
        if st.epoch != epoch {
            return;
        }
        let Some(live) = st.live.take() else { return };
        live.ctl.shutdown();
        for (i, s) in st.slots.iter_mut().enumerate() {
            if s.used && s.epoch == epoch && s.outcome.is_none() {
                s.outcome = Some(Outcome::Failed(copy_error(&e)));
                self.wake[i].notify_one();
            }
        }
        self.room.notify_all();
        self.reconnect(st);
    }

    /// The error of a request not answered in time.
    fn late(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("NBD: {}: no reply within {:?}", self.addr, self.timeout),
        )
    }

    /// Sends `req` (with `payload`, a write's) on connection `info` and waits
    /// for its reply; a read's data lands in `own` (exactly `req.len`
    /// bytes). The server's error is returned as its errno.
    pub(super) fn call(
        self: &Arc<Self>,
        info: &Info,
        req: Req,
        payload: &[u8],
        own: &mut [u8],
    ) -> io::Result<Reply> {
        let (i, cookie) = self.reserve(info.epoch, &req)?;
        let deadline = Instant::now() + self.timeout;
        self.send(info.epoch, cookie, &req, payload, deadline);
        let (outcome, data, led) = self.finish(info, i, own, deadline);
        match outcome {
            Outcome::Done => {
                // A read another caller received is copied here, out of
                // the lock (one that led itself has its data in place: what
                // came before it led was copied when it started).
                match data {
                    Some(d) if d.len() == own.len() => own.copy_from_slice(&d),
                    None if led || own.is_empty() => {}
                    _ => return Err(proto("read reply without its data")),
                }
                Ok(Reply::Done)
            }
            Outcome::Extent { len, flags } => Ok(Reply::Extent { len, flags }),
            Outcome::Errno(e) => Err(io::Error::from_raw_os_error(e)),
            Outcome::Failed(e) => Err(e),
        }
    }

    /// A free slot for `req` on connection `epoch`, waiting while all are in
    /// use (at most the timeout).
    fn reserve(self: &Arc<Self>, epoch: u64, req: &Req) -> io::Result<(usize, u64)> {
        let deadline = Instant::now() + self.timeout;
        let mut st = lock(&self.state);
        loop {
            if st.epoch != epoch || st.live.is_none() {
                self.reconnect(&mut st);
                return Err(enotconn());
            }
            if let Some(i) = st.free.pop() {
                st.seq += 1;
                let cookie = (st.seq << SLOT_BITS) | i as u64;
                st.slots[i] = Slot {
                    used: true,
                    epoch,
                    cookie,
                    command: req.command,
                    offset: req.offset,
                    len: req.len,
                    ..Slot::default()
                };
                return Ok((i, cookie));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "NBD: {}: {MAX_IN_FLIGHT} requests in flight for {:?}",
                        self.addr, self.timeout
                    ),
                ));
            }
            st = self
                .room
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Writes the request; a failure breaks the connection (a request half
    /// sent leaves the stream unusable), which fails this request too.
    fn send(
        self: &Arc<Self>,
        epoch: u64,
        cookie: u64,
        req: &Req,
        payload: &[u8],
        deadline: Instant,
    ) {
        let header = wire::RequestHeader {
            flags: req.flags,
            command: req.command,
            cookie,
            offset: req.offset,
            len: req.len,
        }
        .encode();
        let mut w = lock(&self.writer);
        if w.epoch != epoch {
            return; // That connection broke: the slot has failed already.
        }
        let Some(sock) = w.sock.as_mut() else { return };
        if let Err(e) = send_all(sock, &header, payload, deadline, &|| self.late()) {
            w.sock = None;
            drop(w);
            let mut st = lock(&self.state);
            self.break_conn(&mut st, epoch, e);
        }
    }

    /// Waits for slot `i`'s reply, leading while nobody else reads; frees
    /// the slot and returns how it ended (with read data another leader
    /// received).
    fn finish(
        self: &Arc<Self>,
        info: &Info,
        i: usize,
        own: &mut [u8],
        deadline: Instant,
    ) -> (Outcome, Option<Vec<u8>>, bool) {
        let epoch = info.epoch;
        let mut st = lock(&self.state);
        loop {
            if st.slots[i].outcome.is_none() && (st.epoch != epoch || st.live.is_none()) {
                // Cannot happen (breaking fails every request of the
                // connection); never wait for a reply that cannot come.
                st.slots[i].outcome = Some(Outcome::Failed(enotconn()));
            }
            if let Some(outcome) = st.slots[i].outcome.take() {
                let s = std::mem::take(&mut st.slots[i]);
                st.free.push(i);
                self.room.notify_one();
                return (outcome, s.data, s.led);
            }
            let reader = st.live.as_mut().and_then(|l| l.reader.take());
            if let Some(mut r) = reader {
                let early = st.slots[i].data.take();
                st.slots[i].led = true;
                drop(st);
                // Data received for us before we led: into our buffer.
                if let Some(d) = early {
                    let n = d.len().min(own.len());
                    own[..n].copy_from_slice(&d[..n]);
                }
                let res = self.lead(info, i, own, &mut r, deadline);
                st = lock(&self.state);
                match res {
                    Err(e) => self.break_conn(&mut st, epoch, e),
                    Ok(()) => {
                        if st.epoch == epoch {
                            if let Some(l) = st.live.as_mut() {
                                l.reader = Some(r);
                                // Someone else waits: it reads next.
                                let next = st.slots.iter().position(|s| {
                                    s.used && s.epoch == epoch && s.waiting && s.outcome.is_none()
                                });
                                if let Some(k) = next {
                                    self.wake[k].notify_one();
                                }
                            }
                        }
                    }
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                let e = self.late();
                self.break_conn(&mut st, epoch, e);
                continue;
            }
            st.slots[i].waiting = true;
            st = self.wake[i]
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.slots[i].waiting = false;
        }
    }

    /// Reads replies until slot `me`'s is complete. An error means the
    /// connection is unusable.
    fn lead(
        &self,
        info: &Info,
        me: usize,
        own: &mut [u8],
        r: &mut Sock,
        deadline: Instant,
    ) -> io::Result<()> {
        loop {
            if self.one_reply(info, me, own, r, deadline)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.late());
            }
        }
    }

    /// The slot of a reply's `cookie` on connection `epoch`, if a request with
    /// that cookie waits for a reply; anything else is a protocol error.
    fn lookup(st: &State, epoch: u64, cookie: u64) -> io::Result<usize> {
        let i = (cookie & ((1 << SLOT_BITS) - 1)) as usize;
        match st.slots.get(i) {
            Some(s) if s.used && s.epoch == epoch && s.cookie == cookie && s.outcome.is_none() => {
                Ok(i)
            }
            _ => Err(proto(&format!(
                "reply to a request not in flight (cookie {cookie:#x})"
            ))),
        }
    }

    /// Slot `i` again after the lock was let go, if it still waits for the
    /// reply to `cookie` on the current connection `epoch`.
    fn slot_again(st: &mut State, epoch: u64, i: usize, cookie: u64) -> Option<&mut Slot> {
        if st.epoch != epoch || st.live.is_none() {
            return None;
        }
        st.slots
            .get_mut(i)
            .filter(|s| s.used && s.epoch == epoch && s.cookie == cookie && s.outcome.is_none())
    }

    /// Reads one reply (simple) or one chunk (structured) and hands it to
    /// its request; whether slot `me`'s reply is now complete.
    fn one_reply(
        &self,
        info: &Info,
        me: usize,
        own: &mut [u8],
        r: &mut Sock,
        deadline: Instant,
    ) -> io::Result<bool> {
        let late = || self.late();
        let mut h = [0u8; wire::CHUNK_HEADER_LEN];
        read_full(r, &mut h[..4], deadline, &late)?;
        match be32(&h) {
            wire::SIMPLE_REPLY_MAGIC => {
                let h = &mut h[..wire::SIMPLE_REPLY_LEN];
                read_full(r, &mut h[4..], deadline, &late)?;
                let (error, cookie) = (be32(&h[4..]), be64(&h[8..]));
                self.simple(info, me, own, r, error, cookie, deadline)
            }
            wire::STRUCTURED_REPLY_MAGIC if info.structured => {
                read_full(r, &mut h[4..], deadline, &late)?;
                let (flags, kind, cookie, len) =
                    wire::decode_chunk_header(&h).ok_or_else(|| proto("bad reply magic"))?;
                self.chunk(info, me, own, r, (flags, kind, cookie, len), deadline)
            }
            _ => Err(proto("bad reply magic")),
        }
    }

    /// A simple reply: an error, or success (with a read's data after it).
    #[allow(clippy::too_many_arguments)]
    fn simple(
        &self,
        info: &Info,
        me: usize,
        own: &mut [u8],
        r: &mut Sock,
        error: u32,
        cookie: u64,
        deadline: Instant,
    ) -> io::Result<bool> {
        let late = || self.late();
        let (i, command, len) = {
            let st = lock(&self.state);
            let i = Self::lookup(&st, info.epoch, cookie)?;
            let s = &st.slots[i];
            (i, s.command, s.len as usize)
        };
        let mine = i == me;
        let mut data = None;
        if error == 0 {
            // With structured replies a read's data and a block status come
            // in chunks: a simple success would carry nothing.
            if info.structured && matches!(command, cmd::READ | cmd::BLOCK_STATUS) {
                return Err(proto("simple reply to a read or block status"));
            }
            if command == cmd::BLOCK_STATUS {
                return Err(proto("block status without structured replies"));
            }
            if command == cmd::READ {
                if mine {
                    let dst = own.get_mut(..len).ok_or_else(|| proto("read buffer"))?;
                    read_full(r, dst, deadline, &late)?;
                } else {
                    data = Some(read_vec(r, len, deadline, &late)?);
                }
            }
        }
        let mut st = lock(&self.state);
        let s = Self::slot_again(&mut st, info.epoch, i, cookie).ok_or_else(lost)?;
        if s.cover.total != 0 || s.error.is_some() || s.extent.is_some() {
            return Err(proto("simple reply after structured chunks"));
        }
        if data.is_some() {
            s.data = data;
        }
        s.outcome = Some(if error == 0 {
            Outcome::Done
        } else {
            Outcome::Errno(wire::errno_of(error))
        });
        if !mine {
            self.wake[i].notify_one();
        }
        Ok(mine)
    }

    /// One structured reply chunk.
    fn chunk(
        &self,
        info: &Info,
        me: usize,
        own: &mut [u8],
        r: &mut Sock,
        (flags, kind, cookie, len): (u16, u16, u64, u32),
        deadline: Instant,
    ) -> io::Result<bool> {
        let late = || self.late();
        let done = flags & chunk::FLAG_DONE != 0;
        let content = matches!(kind, chunk::OFFSET_DATA | chunk::OFFSET_HOLE);
        // Find the request; another's read buffer comes out of its slot
        // while the data is read into it.
        let (i, command, offset, n, mut data) = {
            let mut st = lock(&self.state);
            let i = Self::lookup(&st, info.epoch, cookie)?;
            let s = &mut st.slots[i];
            let data = if i != me && content {
                s.data.take()
            } else {
                None
            };
            (i, s.command, s.offset, u64::from(s.len), data)
        };
        let mine = i == me;
        let effect = match kind {
            chunk::NONE => {
                if len != 0 || !done {
                    return Err(proto("NONE chunk with a payload or not the last"));
                }
                Effect::None
            }
            chunk::OFFSET_DATA | chunk::OFFSET_HOLE => {
                if command != cmd::READ {
                    return Err(proto("read data in reply to something else"));
                }
                let (at, count) = if kind == chunk::OFFSET_DATA {
                    // Checked before reading on: a length that cannot fit
                    // fails at once, not after waiting for bytes.
                    if len < 9 || u64::from(len - 8) > n {
                        return Err(proto("OFFSET_DATA chunk of the wrong length"));
                    }
                    let mut b = [0u8; 8];
                    read_full(r, &mut b, deadline, &late)?;
                    (be64(&b), u64::from(len - 8))
                } else {
                    if len != 12 {
                        return Err(proto("OFFSET_HOLE chunk of the wrong length"));
                    }
                    let mut b = [0u8; 12];
                    read_full(r, &mut b, deadline, &late)?;
                    (be64(&b), u64::from(be32(&b[8..])))
                };
                let rel = at
                    .checked_sub(offset)
                    .filter(|&rel| count > 0 && rel.checked_add(count).is_some_and(|e| e <= n))
                    .ok_or_else(|| proto("read chunk outside the request"))?;
                let range = rel as usize..(rel + count) as usize;
                let hole = kind == chunk::OFFSET_HOLE;
                if mine {
                    let dst = own.get_mut(range).ok_or_else(|| proto("read buffer"))?;
                    if hole {
                        dst.fill(0);
                    } else {
                        read_full(r, dst, deadline, &late)?;
                    }
                } else if !hole && data.is_none() && count == n {
                    // The usual case: all the data in one chunk, read
                    // straight into the buffer handed to the owner.
                    data = Some(read_vec(r, n as usize, deadline, &late)?);
                } else {
                    let buf = data.get_or_insert_with(|| vec![0; n as usize]);
                    let dst = buf.get_mut(range).ok_or_else(|| proto("read buffer"))?;
                    if hole {
                        dst.fill(0);
                    } else {
                        read_full(r, dst, deadline, &late)?;
                    }
                }
                Effect::Cover(rel, count)
            }
            chunk::BLOCK_STATUS => {
                if command != cmd::BLOCK_STATUS {
                    return Err(proto("block status in reply to something else"));
                }
                if len < 12 || (len - 4) % 8 != 0 {
                    return Err(proto("BLOCK_STATUS chunk of the wrong length"));
                }
                let mut b = [0u8; 12];
                read_full(r, &mut b, deadline, &late)?;
                skip(r, u64::from(len - 12), deadline, &late)?;
                if Some(be32(&b)) != info.base_allocation {
                    return Err(proto("block status of a context not selected"));
                }
                let (ext, flags) = (be32(&b[4..]), be32(&b[8..]));
                if ext == 0 {
                    return Err(proto("empty extent"));
                }
                // At most what was asked (REQ_ONE: a server may not send
                // more, but clamping costs nothing).
                Effect::Extent(ext.min(n as u32), flags)
            }
            k if k & (1 << 15) != 0 => {
                // ERROR, ERROR_OFFSET, or an error type not known here,
                // which the document says to treat as an error all the same.
                if !(6..=MAX_ERROR_CHUNK).contains(&len) {
                    return Err(proto("error chunk of the wrong length"));
                }
                let p = read_vec(r, len as usize, deadline, &late)?;
                let (error, msg) = (be32(&p), u32::from(u16::from_be_bytes([p[4], p[5]])));
                let fits = match kind {
                    chunk::ERROR => 6 + msg == len,
                    chunk::ERROR_OFFSET => 6 + msg + 8 == len,
                    _ => 6 + msg <= len,
                };
                if !fits || error == 0 {
                    return Err(proto("malformed error chunk"));
                }
                Effect::Error(wire::errno_of(error))
            }
            _ => return Err(proto(&format!("unknown chunk type {kind}"))),
        };
        let mut st = lock(&self.state);
        let s = Self::slot_again(&mut st, info.epoch, i, cookie).ok_or_else(lost)?;
        if data.is_some() {
            s.data = data;
        }
        match effect {
            Effect::None => {}
            Effect::Cover(start, count) => s.cover.add(start, count)?,
            Effect::Extent(len, flags) => {
                s.extent.get_or_insert((len, flags));
            }
            Effect::Error(e) => {
                s.error.get_or_insert(e);
            }
        }
        if !done {
            return Ok(false);
        }
        let outcome = match (s.error, command) {
            (Some(e), _) => Outcome::Errno(e),
            (None, cmd::READ) if s.cover.total == n => Outcome::Done,
            (None, cmd::READ) => return Err(proto("read reply without all its data")),
            (None, cmd::BLOCK_STATUS) => match s.extent {
                Some((len, flags)) => Outcome::Extent { len, flags },
                None => return Err(proto("block status reply without an extent")),
            },
            (None, _) => Outcome::Done,
        };
        s.outcome = Some(outcome);
        if !mine {
            self.wake[i].notify_one();
        }
        Ok(mine)
    }
}
