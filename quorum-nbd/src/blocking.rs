//! A server connection: the [`server`](crate::server) handshake and checks
//! driven over a stream, then the transmission phase with the block device
//! behind a [`Backend`]. One call of [`serve_connection`] serves one client
//! until it leaves or misbehaves.
//!
//! Clients pipeline: they send many requests before reading a reply (QEMU's
//! client keeps 16 in flight, libnbd and the kernel more). This connection
//! reads every request the socket already holds with one `read`, and serves
//! them as they come:
//!
//! - While requests are quick (the backend answers within
//!   [`SLOW`] on average: the page cache), the connection's own thread runs
//!   them one after another and collects their replies in one buffer, sent
//!   with one `write` once the requests read so far are done — no thread
//!   hand-off, two system calls for a whole batch.
//! - When they turn slow (disks, replicas across a network), each runs on a
//!   helper thread of the server's [`Workers`] as soon as it is read, and
//!   replies as soon as it is done, in completion order, matched by cookie.
//!   Flushes and `FUA` writes always do (a flush takes milliseconds).
//!
//! The protocol's rules hold either way: a `FLUSH` covers every write whose
//! reply was sent (those writes are done); `FUA` is flushed before its
//! reply; `DISC` — and a client that goes away — lets everything already
//! read finish before the connection closes. At most [`MAX_IN_FLIGHT`]
//! requests and [`MAX_IN_FLIGHT_BYTES`] of their data are in flight per
//! connection, counted until their replies are written: past that, the
//! connection reads nothing more until some are done. So a client that
//! floods requests and never reads its replies holds a bounded amount of
//! memory (about five times the limit: a read's buffer, the children's
//! buffers the device votes over, a reply waiting to go) and one blocked
//! thread — one thread writes a connection's replies at a time, the others
//! leave theirs in its outbox and go on serving other connections.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use quorum_driver::{Pool, PoolConfig, Work};

use crate::server::{Decision, Export, Handshake, Session, Step, check};
use crate::wire::{self, RequestHeader};

/// A client has this long for each step of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests in flight per connection at most (QEMU's server allows 16).
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes of request data (write payloads, read buffers) in flight per
/// connection at most (a single request of any allowed size still runs).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Average request time above which a connection runs requests on helper
/// threads, concurrently, instead of in order on its own thread.
pub const SLOW: Duration = Duration::from_micros(200);

/// Requests up to this size, with more read behind them, keep their
/// children's operations on the connection's thread ([`Transmission::queued`]).
const SOLO_MAX: usize = 16 << 10;

/// Replies collected on the connection's thread are sent once they reach
/// this size, even if more requests are waiting.
const OUT_BATCH: usize = 256 << 10;

/// What [`Backend::read_with`] lends a read's bytes (or its error) to.
pub type ReadSink<'a> = dyn FnMut(Result<&[u8], u32>) + 'a;

/// What an export serves. Errors are NBD error values ([`wire::err`]);
/// [`wire::nbd_error`] turns an errno into one. Called from the
/// connection's thread and from helpers, concurrently.
pub trait Backend: Send + Sync {
    /// Fills `buf` from `offset` (within the export).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32>;
    /// Reads `len` bytes at `offset` and lends them to `f`, wherever the
    /// backend holds them (a device: the winning child's read buffer), so
    /// that a reply is sent from there without a copy. The default reads
    /// into a new buffer.
    fn read_with(&self, offset: u64, len: usize, f: &mut ReadSink<'_>) {
        let mut buf = vec![0u8; len];
        let r = self.read(offset, &mut buf);
        f(r.map(|()| &buf[..]));
    }
    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), u32>;
    /// Writes `len` zero bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), u32>;
    /// Makes everything written durable.
    fn flush(&self) -> Result<(), u32>;
    /// The first extent of `offset..offset + len`: its length (at least a
    /// byte, at most `len`) and whether it reads as zeroes. The default
    /// knows nothing: all data.
    fn block_status(&self, offset: u64, len: u64) -> Result<(u64, bool), u32> {
        let _ = offset;
        Ok((len, false))
    }
}

/// A client connection: a stream whose read timeout can be set, and which
/// can be cloned (replies are written while requests are read).
pub trait Conn: Read + Write + Send {
    /// Sets the read timeout (`None`: wait forever).
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Another handle on the same stream, for writing replies.
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>>;
    /// Ends the stream both ways, whoever else still holds a handle on it:
    /// a client that sent `NBD_CMD_DISC` waits for the server to close.
    fn close(&self);
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// One request run on a helper.
struct Task(Option<Box<dyn FnOnce() + Send>>);

impl Work for Task {
    type Output = ();
    fn run(&mut self) {
        if let Some(f) = self.0.take() {
            // A panicking backend: the request's reply is an error, sent by
            // the guard the closure holds (see `Answer`).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
    }
}

/// The helper threads that run slow requests, shared by every connection
/// of a server (the driver kit's pool: started on demand, stopped when idle),
/// and the count of connections serving requests.
pub struct Workers(Pool<Task>, AtomicUsize);

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").finish_non_exhaustive()
    }
}

impl Default for Workers {
    fn default() -> Self {
        Workers::new()
    }
}

impl Workers {
    /// Helpers for one server.
    pub fn new() -> Workers {
        Workers(
            Pool::new(PoolConfig {
                spin: Duration::from_micros(20),
                slow: Duration::ZERO,
                max_threads: 256,
                name: "nbd-io",
            }),
            AtomicUsize::new(0),
        )
    }

    /// The workers of servers that bring none (tests, one-off servers).
    pub fn shared() -> &'static Workers {
        static W: OnceLock<Workers> = OnceLock::new();
        W.get_or_init(Workers::new)
    }

    /// Whether other connections are serving requests too: then every
    /// core has work, and the device's spinning assistant would only take
    /// one from them (four clients at depth 8 on two cores: the same IOPS,
    /// p99 1.4 ms with it, 0.35 ms without).
    fn crowded(&self) -> bool {
        self.1.load(Ordering::Relaxed) > 1
    }

    fn run(&self, f: impl FnOnce() + Send + 'static) {
        self.0
            .spawn(vec![Task(Some(Box::new(f)))], Box::new(|(), _| ()));
    }
}

/// Reads the bytes left over from the handshake first, then the stream, in
/// large gulps: every request already sent arrives with one `read`.
struct Input {
    conn: Box<dyn Conn>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    const SIZE: usize = 256 << 10;

    fn new(conn: Box<dyn Conn>, pending: Vec<u8>) -> Input {
        let end = pending.len();
        let mut buf = pending;
        buf.resize(Input::SIZE.max(end), 0);
        Input {
            conn,
            buf,
            start: 0,
            end,
        }
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Reads more from the stream (blocking); 0 at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.conn.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next `n` bytes if they are here, consumed.
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.available() < n {
            return None;
        }
        let s = self.start;
        self.start += n;
        Some(&self.buf[s..s + n])
    }

    /// Fills `out` from what is here, then from the stream.
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let n = self.available().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.conn.read_exact(&mut out[n..])
    }

    /// Reads and drops `n` bytes.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let here = (self.available() as u64).min(n);
        self.start += here as usize;
        n -= here;
        let mut scratch = [0u8; 16 << 10];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.conn.read_exact(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Where replies go: the stream (a clone of the reading one), shared by the
/// connection's thread and its helpers. One thread at a time writes; a
/// reply finished while another is being written waits in the outbox and
/// goes out with the writer's next `write`. So a client that stops reading
/// blocks one thread, never every helper that served it: the others put
/// their replies down and go on to other connections' work.
///
/// Every request counts in [`Flight`] until its reply is written (or the
/// stream is broken), which is what bounds a stuck client's memory.
struct Replies {
    out: Mutex<Box<dyn Conn>>,
    outbox: Mutex<Outbox>,
    flight: Flight,
    /// A write failed: the client is gone or stuck; nothing more is sent.
    broken: AtomicBool,
}

/// Replies waiting for the writer, and the in-flight counts they release
/// once written.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    requests: usize,
    held: usize,
    /// A thread is writing; it sends what is here before it stops.
    writing: bool,
}

impl Replies {
    fn new(out: Box<dyn Conn>) -> Replies {
        Replies {
            out: Mutex::new(out),
            outbox: Mutex::new(Outbox::default()),
            flight: Flight::default(),
            broken: AtomicBool::new(false),
        }
    }

    /// Sends `bytes` (one or more whole replies) and then counts `requests`
    /// holding `held` bytes out of the flight; or leaves them to the thread
    /// already writing.
    fn send(&self, bytes: &[u8], requests: usize, held: usize) {
        self.send_parts(bytes, &[], requests, held);
    }

    /// [`Replies::send`] of replies in two pieces (a read's header and its
    /// data, lent by the backend): written with one `writev` when no other
    /// thread is writing (the data is not copied), else queued.
    fn send_parts(&self, head: &[u8], data: &[u8], requests: usize, held: usize) {
        let mut ob = lock(&self.outbox);
        if ob.writing {
            ob.bytes.extend_from_slice(head);
            ob.bytes.extend_from_slice(data);
            ob.requests += requests;
            ob.held += held;
            return;
        }
        ob.writing = true;
        drop(ob);
        self.write(head, data);
        self.flight.leave(requests, held);
        self.drain();
    }

    /// Called by the writing thread once its own reply is out: sends what
    /// others queued meanwhile, until nothing is left, and stops writing.
    fn drain(&self) {
        let mut spare = Vec::new();
        loop {
            let mut ob = lock(&self.outbox);
            if ob.bytes.is_empty() && ob.requests == 0 {
                ob.writing = false;
                return;
            }
            std::mem::swap(&mut ob.bytes, &mut spare);
            let (requests, held) = (
                std::mem::take(&mut ob.requests),
                std::mem::take(&mut ob.held),
            );
            drop(ob);
            self.write(&spare, &[]);
            spare.clear();
            self.flight.leave(requests, held);
        }
    }

    fn write(&self, head: &[u8], data: &[u8]) {
        if head.len() + data.len() == 0 || self.broken.load(Ordering::Relaxed) {
            return;
        }
        if write_all_parts(&mut **lock(&self.out), head, data).is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Ends the stream, after the last reply.
    fn close(&self) {
        lock(&self.out).close();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Requests of one connection read and not yet answered: how many, and the
/// bytes they hold. The connection's thread waits here when the limits are
/// reached, and for everything to end before it closes.
#[derive(Default)]
struct Flight {
    state: Mutex<(usize, usize)>,
    changed: Condvar,
}

impl Flight {
    fn count(&self) -> usize {
        lock(&self.state).0
    }

    /// Waits for room for a request of `bytes`, then counts it.
    fn enter(&self, bytes: usize) {
        let mut st = lock(&self.state);
        while st.0 > 0 && (st.0 >= MAX_IN_FLIGHT || st.1 + bytes > MAX_IN_FLIGHT_BYTES) {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.0 += 1;
        st.1 += bytes;
    }

    fn leave(&self, requests: usize, bytes: usize) {
        if requests == 0 {
            return;
        }
        let mut st = lock(&self.state);
        st.0 -= requests;
        st.1 -= bytes;
        self.changed.notify_all();
    }

    /// Waits until nothing is in flight.
    fn drain(&self) {
        let mut st = lock(&self.state);
        while st.0 > 0 {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The running average of a request's service time, in nanoseconds: it
/// decides where the connection runs requests ([`SLOW`]).
#[derive(Default)]
struct Pace(AtomicU64);

impl Pace {
    fn record(&self, took: Duration) {
        // One request held up by the scheduler (a busy host) must not flip
        // the connection to helpers: a sample counts for at most four times
        // the limit, so it takes three slow requests in a row to flip it.
        let cap = 4 * SLOW.as_nanos() as u64;
        let ns = (took.as_nanos().min(u64::MAX as u128) as u64).min(cap);
        let avg = self.0.load(Ordering::Relaxed);
        self.0.store(avg - avg / 8 + ns / 8, Ordering::Relaxed);
    }

    /// Slow, with some hysteresis: slow above `SLOW`, fast again below half.
    fn slow(&self, was: bool) -> bool {
        let avg = self.0.load(Ordering::Relaxed);
        let limit = SLOW.as_nanos() as u64;
        if was { avg > limit / 2 } else { avg > limit }
    }
}

/// Serves one client of `export` from `backend`; returns why the connection
/// ended (for a log line). The handshake has [`HANDSHAKE_TIMEOUT`] per read;
/// afterwards an idle client may stay as long as it likes. Slow requests
/// run on `workers`.
pub fn serve_connection(
    mut conn: Box<dyn Conn>,
    export: &Export,
    backend: Arc<dyn Backend>,
    workers: &Workers,
) -> String {
    let (hs, buf) = match handshake(&mut *conn, export) {
        Ok(x) => x,
        Err(why) => {
            // Others may hold the stream (a server's list of connections):
            // the client must see it end now.
            conn.close();
            return why;
        }
    };
    let _ = conn.set_timeout(None);
    let out = match conn.try_clone_conn() {
        Ok(o) => o,
        Err(e) => {
            conn.close();
            return format!("closed: {e}");
        }
    };
    // Counted among the connections serving requests until it returns.
    struct Serving<'a>(&'a AtomicUsize);
    impl Drop for Serving<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    workers.1.fetch_add(1, Ordering::Relaxed);
    let _serving = Serving(&workers.1);
    let mut t = Transmission {
        input: Input::new(conn, buf),
        replies: Arc::new(Replies::new(out)),
        batch: Vec::new(),
        pace: Arc::new(Pace::default()),
        slow: false,
        session: hs.session(),
        export,
        backend,
        workers,
        payload: Vec::new(),
    };
    let why = match t.run() {
        Ok(why) => why.into(),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => "client went away".into(),
        Err(e) => format!("closed: {e}"),
    };
    // Whatever was read runs to its end, whether or not its reply can still
    // be sent.
    t.send_batch();
    t.replies.flight.drain();
    t.replies.close();
    why
}

/// The handshake, with its deadline per step: the session agreed and the
/// bytes read past its end (requests pipelined behind `GO`), or why not.
fn handshake(conn: &mut dyn Conn, export: &Export) -> Result<(Handshake, Vec<u8>), String> {
    let _ = conn.set_timeout(Some(HANDSHAKE_TIMEOUT));
    let (mut hs, greeting) = Handshake::new(export.clone());
    if let Err(e) = conn.write_all(&greeting) {
        return Err(format!("handshake: {e}"));
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match hs.step(&buf) {
            Step::NeedMore(n) => {
                let have = buf.len();
                buf.resize(n.max(have), 0);
                if let Err(e) = conn.read_exact(&mut buf[have..]) {
                    return Err(format!("handshake: {e}"));
                }
            }
            Step::Reply { consumed, reply } => {
                buf.drain(..consumed.min(buf.len()));
                if let Err(e) = conn.write_all(&reply) {
                    return Err(format!("handshake: {e}"));
                }
            }
            Step::Transmission { consumed, reply } => {
                buf.drain(..consumed.min(buf.len()));
                if let Err(e) = conn.write_all(&reply) {
                    return Err(format!("handshake: {e}"));
                }
                return Ok((hs, buf));
            }
            Step::Close { reply, reason } => {
                let _ = conn.write_all(&reply);
                return Err(format!("handshake refused: {reason}"));
            }
        }
    }
}

/// The transmission phase of one connection.
struct Transmission<'a> {
    input: Input,
    replies: Arc<Replies>,
    /// Replies of requests run on this thread, not yet sent.
    batch: Vec<u8>,
    pace: Arc<Pace>,
    /// Requests run on helpers (see [`Pace::slow`]).
    slow: bool,
    session: Session,
    export: &'a Export,
    backend: Arc<dyn Backend>,
    workers: &'a Workers,
    /// A write's payload, reused when the write runs here.
    payload: Vec<u8>,
}

impl Transmission<'_> {
    fn run(&mut self) -> io::Result<&'static str> {
        loop {
            if self.replies.broken.load(Ordering::Relaxed) {
                return Ok("client stopped reading (write failed)");
            }
            let Some(h) = self.input.take(wire::REQUEST_LEN) else {
                // Every request read so far is served: send their replies
                // before waiting for more.
                self.send_batch();
                if self.input.fill()? == 0 {
                    return if self.input.available() == 0 {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    } else {
                        Ok("client went away mid-request")
                    };
                }
                continue;
            };
            let Some(req) = RequestHeader::decode(h.try_into().unwrap_or(&[0; wire::REQUEST_LEN]))
            else {
                return Ok("bad request magic");
            };
            self.slow = self.pace.slow(self.slow);
            match check(self.export, &self.session, &req) {
                Decision::Disconnect => {
                    self.send_batch();
                    self.replies.flight.drain();
                    let _ = self.backend.flush();
                    return Ok("client disconnected");
                }
                Decision::ErrorClose { error } => {
                    self.error(req.cookie, req.command, error);
                    return Ok("oversized write refused");
                }
                Decision::Error { error, skip } => {
                    self.input.skip(u64::from(skip))?;
                    self.error(req.cookie, req.command, error);
                }
                Decision::Trim => self
                    .batch
                    .extend_from_slice(&wire::simple_reply(req.cookie, 0)),
                Decision::Read { offset, len } => self.read(req.cookie, offset, len as usize),
                Decision::Write { offset, len, fua } => {
                    self.write(req.cookie, offset, len as usize, fua)?;
                }
                Decision::WriteZeroes { offset, len, fua } => {
                    let job = Job::Zeroes {
                        offset,
                        len: u64::from(len),
                        fua,
                    };
                    self.dispatch_or_run(req.cookie, job, fua);
                }
                Decision::Flush => self.dispatch_or_run(req.cookie, Job::Flush, true),
                Decision::BlockStatus { offset, len, one } => {
                    let job = Job::Status { offset, len, one };
                    self.dispatch_or_run(req.cookie, job, false);
                }
            }
            if self.batch.len() >= OUT_BATCH {
                self.send_batch();
            }
        }
    }

    /// Sends the replies of the requests run on this thread: counted in
    /// the flight like any other, in case the writer is stuck and they wait.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len();
        self.replies.flight.enter(n);
        self.replies.send(&self.batch, 1, n);
        self.batch.clear();
    }

    /// An error reply: a structured `ERROR` chunk for the commands whose
    /// replies must be structured, a simple reply otherwise.
    fn error(&mut self, cookie: u64, command: u16, error: u32) {
        push_error(&mut self.batch, &self.session, cookie, command, error);
    }

    fn read(&mut self, cookie: u64, offset: u64, len: usize) {
        if self.slow {
            let job = Job::Read { offset, len };
            return self.dispatch(cookie, job, len);
        }
        if self.pair(len) {
            let job = Job::Read { offset, len };
            return self.dispatch_solo(cookie, job, len, true);
        }
        let t = Instant::now();
        // The data goes straight into the reply batch, after its header:
        // sent with the others when no request is waiting any more. (Sent
        // from the backend's buffer at once, as helpers do, this thread
        // waited for the client to read it instead of starting the next:
        // 64 KiB reads at depth 8, 18k IOPS instead of 23.5k.)
        let start = self.batch.len();
        let head = if self.session.structured { 28 } else { 16 };
        self.batch.resize(start + head + len, 0);
        let queued = self.queued(len);
        let buf = &mut self.batch[start + head..];
        let r = if len == 0 {
            Ok(())
        } else if queued {
            quorum_driver::solo(|| self.backend.read(offset, buf))
        } else {
            self.backend.read(offset, buf)
        };
        self.pace.record(t.elapsed());
        finish_read(
            &mut self.batch,
            start,
            &self.session,
            cookie,
            offset,
            len,
            r,
        );
    }

    /// Whether a large read goes to a helper while this thread reads the
    /// next request: when more are waiting, none of this connection's is
    /// on a helper already, and no other connection is serving (each core
    /// has work then). Two large reads then run at once, one per core,
    /// instead of one request's three copies waiting on each other: 64 KiB
    /// reads at depth 8 on two cores, 22k IOPS instead of 17.6k, p99 the
    /// same. With no limit of one the helpers crowd the cores: p99 0.65 ms
    /// became 4 ms. Both reads of a pair keep their children's operations
    /// to their own thread ([`quorum_driver::solo`], and
    /// [`Transmission::queued`] while one is on a helper): the two cores
    /// are taken, and the device's spinning assistant only took turns
    /// from them (26k IOPS instead of 23.5k, p99 0.7 ms instead of 1 ms).
    fn pair(&self, len: usize) -> bool {
        len > SOLO_MAX
            && self.input.available() >= wire::REQUEST_LEN
            && !self.workers.crowded()
            && self.replies.flight.count() == 0
    }

    /// Whether a request's children's operations stay on this thread
    /// ([`quorum_driver::solo`]): a small one with more already read behind
    /// it, any while other connections serve requests too (every core
    /// has work then), or a large one while another of this connection's
    /// runs on a helper ([`Transmission::pair`]). A lone request of a lone
    /// client (depth 1) or a large one (each child's copy long enough to
    /// pay for a handoff) shares them out.
    fn queued(&self, len: usize) -> bool {
        (len <= SOLO_MAX && self.input.available() >= wire::REQUEST_LEN)
            || self.workers.crowded()
            || (len > SOLO_MAX && self.replies.flight.count() > 0)
    }

    fn write(&mut self, cookie: u64, offset: u64, len: usize, fua: bool) -> io::Result<()> {
        if self.slow || fua {
            let mut data = vec![0u8; len];
            self.input.read_exact(&mut data)?;
            self.dispatch(cookie, Job::Write { offset, data, fua }, len);
            return Ok(());
        }
        let mut data = std::mem::take(&mut self.payload);
        data.resize(len, 0);
        self.input.read_exact(&mut data)?;
        let t = Instant::now();
        let r = if len == 0 {
            Ok(())
        } else if self.queued(len) {
            quorum_driver::solo(|| self.backend.write(offset, &data))
        } else {
            self.backend.write(offset, &data)
        };
        self.pace.record(t.elapsed());
        self.payload = data;
        self.batch
            .extend_from_slice(&wire::simple_reply(cookie, error_of(r)));
        Ok(())
    }

    fn dispatch_or_run(&mut self, cookie: u64, job: Job, always: bool) {
        if self.slow || always {
            return self.dispatch(cookie, job, 0);
        }
        let t = Instant::now();
        let batch = &mut self.batch;
        job.reply(&*self.backend, &self.session, cookie, &mut |h, d| {
            batch.extend_from_slice(h);
            batch.extend_from_slice(d);
        });
        self.pace.record(t.elapsed());
    }

    /// Runs `job` on a helper; its reply is sent when it is done.
    fn dispatch(&mut self, cookie: u64, job: Job, bytes: usize) {
        self.dispatch_solo(cookie, job, bytes, false);
    }

    /// [`Transmission::dispatch`]; with `solo`, the helper keeps the
    /// request's child operations to itself ([`quorum_driver::solo`]).
    fn dispatch_solo(&mut self, cookie: u64, job: Job, bytes: usize, solo: bool) {
        if self.replies.flight.count() > 0 {
            // About to wait, maybe: whatever is ready goes first.
            self.send_batch();
        }
        self.replies.flight.enter(bytes);
        let (backend, replies, pace, session) = (
            self.backend.clone(),
            self.replies.clone(),
            self.pace.clone(),
            self.session,
        );
        let mut answer = Answer {
            replies,
            bytes,
            session,
            cookie,
            command: job.command(),
            sent: false,
        };
        self.workers.run(move || {
            let t = Instant::now();
            let run = || {
                job.reply(&*backend, &session, cookie, &mut |h, d| {
                    answer.send_parts(h, d);
                });
            };
            if solo {
                quorum_driver::solo(run);
            } else {
                run();
            }
            pace.record(t.elapsed());
        });
    }
}

/// A request running on a helper, answered exactly once: with its reply,
/// or — if the backend panicked — with `EIO`.
struct Answer {
    replies: Arc<Replies>,
    bytes: usize,
    session: Session,
    cookie: u64,
    command: u16,
    sent: bool,
}

impl Answer {
    fn send(&mut self, reply: &[u8]) {
        self.sent = true;
        self.replies.send(reply, 1, self.bytes);
    }

    fn send_parts(&mut self, head: &[u8], data: &[u8]) {
        self.sent = true;
        self.replies.send_parts(head, data, 1, self.bytes);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            let mut out = Vec::new();
            push_error(
                &mut out,
                &self.session,
                self.cookie,
                self.command,
                wire::err::EIO,
            );
            self.send(&out);
        }
    }
}

/// A request to run, with what it needs.
enum Job {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Zeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    Status {
        offset: u64,
        len: u32,
        one: bool,
    },
}

impl Job {
    fn command(&self) -> u16 {
        match self {
            Job::Read { .. } => wire::cmd::READ,
            Job::Write { .. } => wire::cmd::WRITE,
            Job::Zeroes { .. } => wire::cmd::WRITE_ZEROES,
            Job::Flush => wire::cmd::FLUSH,
            Job::Status { .. } => wire::cmd::BLOCK_STATUS,
        }
    }

    /// Runs the request and hands its reply to `send` in two pieces: a
    /// header, and a read's data where the backend holds it
    /// ([`Backend::read_with`]; the data is not copied into a reply).
    fn reply(
        self,
        backend: &dyn Backend,
        session: &Session,
        cookie: u64,
        send: &mut dyn FnMut(&[u8], &[u8]),
    ) {
        let fua =
            |r: Result<(), u32>, f: bool| r.and_then(|()| if f { backend.flush() } else { Ok(()) });
        let simple = |r| wire::simple_reply(cookie, error_of(r));
        match self {
            Job::Read { offset, len } => read_reply(backend, session, cookie, offset, len, send),
            Job::Write {
                offset,
                data,
                fua: f,
            } => {
                let r = if data.is_empty() {
                    Ok(())
                } else {
                    backend.write(offset, &data)
                };
                send(&simple(fua(r, f)), &[]);
            }
            Job::Zeroes {
                offset,
                len,
                fua: f,
            } => {
                let r = if len == 0 {
                    Ok(())
                } else {
                    backend.write_zeroes(offset, len)
                };
                send(&simple(fua(r, f)), &[]);
            }
            Job::Flush => send(&simple(backend.flush()), &[]),
            Job::Status { offset, len, one } => {
                send(
                    &block_status(backend, session, cookie, offset, len, one),
                    &[],
                );
            }
        }
    }
}

/// The NBD error of a result (0 for success; a backend's 0 error is EIO).
fn error_of(r: Result<(), u32>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(0) => wire::err::EIO,
        Err(e) => e,
    }
}

/// `write_all` of `head` then `data` with `writev`: the kernel copies both
/// into the socket at once.
fn write_all_parts(w: &mut dyn Write, head: &[u8], data: &[u8]) -> io::Result<()> {
    let mut parts = [io::IoSlice::new(head), io::IoSlice::new(data)];
    let mut rest = &mut parts[..];
    io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends the reply to a read of `len` bytes at `offset` that `backend`
/// lends its data for ([`Backend::read_with`]), through `send(head, data)`:
/// the data is never copied into a reply buffer. What
/// [`finish_read`] makes, in two pieces.
fn read_reply(
    backend: &dyn Backend,
    session: &Session,
    cookie: u64,
    offset: u64,
    len: usize,
    send: &mut dyn FnMut(&[u8], &[u8]),
) {
    // A read of nothing asks the backend nothing (as a connection's own
    // reads: `Transmission::read`).
    let mut reply = |r: Result<&[u8], u32>| match r {
        Err(e) => {
            let mut out = Vec::new();
            push_error(&mut out, session, cookie, wire::cmd::READ, error_of(Err(e)));
            send(&out, &[]);
        }
        Ok(data) if data.len() != len => {
            let mut out = Vec::new();
            push_error(&mut out, session, cookie, wire::cmd::READ, wire::err::EIO);
            send(&out, &[]);
        }
        Ok(data) if !session.structured => send(&wire::simple_reply(cookie, 0), data),
        Ok(_) if len == 0 => send(&wire::chunk_none(cookie), &[]),
        Ok(data) if data.iter().all(|&b| b == 0) => {
            send(&wire::offset_hole(cookie, offset, len as u32), &[]);
        }
        Ok(data) => send(&wire::offset_data(cookie, offset, len as u32), data),
    };
    if len == 0 {
        reply(Ok(&[]));
    } else {
        backend.read_with(offset, len, &mut reply);
    }
}

/// A read's reply in `out[start..]`, whose data is already in place after
/// room for its header: the header written in front of it; with structured
/// replies an `OFFSET_HOLE` chunk instead when the data is all zeroes (the
/// client need not receive them); on an error, only the error.
fn finish_read(
    out: &mut Vec<u8>,
    start: usize,
    session: &Session,
    cookie: u64,
    offset: u64,
    len: usize,
    r: Result<(), u32>,
) {
    let head = if session.structured { 28 } else { 16 };
    match r {
        Err(_) => {
            out.truncate(start);
            push_error(out, session, cookie, wire::cmd::READ, error_of(r));
        }
        Ok(()) if !session.structured => {
            out[start..start + 16].copy_from_slice(&wire::simple_reply(cookie, 0));
        }
        Ok(()) if len == 0 => {
            out.truncate(start);
            out.extend_from_slice(&wire::chunk_none(cookie));
        }
        Ok(())
            if out[start + head..start + head + len]
                .iter()
                .all(|&b| b == 0) =>
        {
            out.truncate(start);
            out.extend_from_slice(&wire::offset_hole(cookie, offset, len as u32));
        }
        Ok(()) => {
            out[start..start + 28].copy_from_slice(&wire::offset_data(cookie, offset, len as u32));
        }
    }
}

/// An error reply: structured (`ERROR`, `DONE`) for reads and block status
/// when structured replies were negotiated, simple otherwise.
fn push_error(out: &mut Vec<u8>, session: &Session, cookie: u64, command: u16, error: u32) {
    let chunked = matches!(command, wire::cmd::READ | wire::cmd::BLOCK_STATUS);
    if session.structured && chunked {
        let msg = match error {
            wire::err::EINVAL => "invalid request",
            wire::err::EIO => "input/output error",
            _ => "request failed",
        };
        out.extend_from_slice(&wire::chunk_error(cookie, error, msg));
    } else {
        out.extend_from_slice(&wire::simple_reply(cookie, error));
    }
}

/// Extents of `base:allocation` from `offset`, one backend answer each,
/// neighbours with the same flags merged: as many as cover the range (at
/// most 256, or one with `REQ_ONE`).
fn block_status(
    backend: &dyn Backend,
    session: &Session,
    cookie: u64,
    offset: u64,
    len: u32,
    one: bool,
) -> Vec<u8> {
    let Some(id) = session.base_allocation else {
        let mut out = Vec::new();
        push_error(
            &mut out,
            session,
            cookie,
            wire::cmd::BLOCK_STATUS,
            wire::err::EINVAL,
        );
        return out;
    };
    let mut extents: Vec<(u32, u32)> = Vec::new();
    let mut done = 0u64;
    let len = u64::from(len);
    while done < len && extents.len() < 256 {
        let (n, zero) = match backend.block_status(offset + done, len - done) {
            Ok(x) => x,
            Err(e) if extents.is_empty() => {
                let mut out = Vec::new();
                push_error(&mut out, session, cookie, wire::cmd::BLOCK_STATUS, e);
                return out;
            }
            Err(_) => break,
        };
        let n = n.clamp(1, len - done);
        let flags = if zero {
            wire::state::HOLE | wire::state::ZERO
        } else {
            0
        };
        match extents.last_mut() {
            Some((l, f)) if *f == flags => *l += n as u32,
            _ => extents.push((n as u32, flags)),
        }
        done += n;
        if one {
            break;
        }
    }
    wire::chunk_block_status(cookie, id, &extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, NbdAddr, NbdChild};
    use crate::wire::err;
    use quorum_driver::Child;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::{Arc, Mutex};

    /// A memory disk that fails at `bad_offset`.
    struct Mem {
        data: Mutex<Vec<u8>>,
        flushes: Mutex<u32>,
    }

    impl Mem {
        fn new(n: usize) -> Arc<Mem> {
            Arc::new(Mem {
                data: Mutex::new(vec![0; n]),
                flushes: Mutex::new(0),
            })
        }
    }

    const BAD: u64 = 4096 * 7;

    impl Backend for Mem {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
            if offset == BAD {
                return Err(err::EIO);
            }
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), u32> {
            if offset == BAD {
                return Err(wire::nbd_error(122)); // EDQUOT
            }
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), u32> {
            self.write(offset, &vec![0; len as usize])
        }
        fn flush(&self) -> Result<(), u32> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn export(size: u64) -> Export {
        Export {
            name: "m".into(),
            size,
            read_only: false,
            max_payload: 1 << 16,
        }
    }

    /// A server thread on one end of a socket pair; the client gets the other.
    fn pair(mem: Arc<Mem>) -> (UnixStream, std::thread::JoinHandle<String>) {
        let (a, b) = UnixStream::pair().unwrap();
        let size = mem.data.lock().unwrap().len() as u64;
        let t = std::thread::spawn(move || {
            serve_connection(Box::new(b), &export(size), mem, Workers::shared())
        });
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (a, t)
    }

    #[test]
    fn one_request_held_up_does_not_flip_the_connection_to_helpers() {
        let pace = Pace::default();
        for _ in 0..32 {
            pace.record(Duration::from_micros(10));
        }
        // A request preempted for 50 ms on a busy host: still quick.
        pace.record(Duration::from_millis(50));
        assert!(!pace.slow(false));
        for _ in 0..32 {
            pace.record(Duration::from_micros(10));
        }
        // A backend that turned slow (1 ms a request) flips it within three.
        for _ in 0..3 {
            pace.record(Duration::from_millis(1));
        }
        assert!(pace.slow(false));
        // And quick again once requests are quick again, with hysteresis.
        pace.record(Duration::from_micros(10));
        assert!(pace.slow(true));
        for _ in 0..32 {
            pace.record(Duration::from_micros(10));
        }
        assert!(!pace.slow(true));
    }

    #[test]
    fn our_client_and_server_agree() {
        let mem = Mem::new(1 << 18);
        let (s, t) = pair(mem.clone());
        let mut c = Client::handshake(s, "m").unwrap();
        assert_eq!(c.size(), 1 << 18);
        // Bigger than the payload limit: the client splits it.
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(c.write(&data, 100, 1 << 16).unwrap(), Ok(()));
        let mut back = vec![0u8; data.len()];
        assert_eq!(c.read(&mut back, 100, 1 << 16).unwrap(), Ok(()));
        assert!(back == data);
        assert_eq!(c.write_zeroes(100, 1000, 1 << 16).unwrap(), Ok(()));
        assert_eq!(mem.data.lock().unwrap()[100..1100], [0; 1000]);
        assert_eq!(c.flush().unwrap(), Ok(()));
        // Backend errors arrive as errnos (EDQUOT became ENOSPC on the wire).
        let mut b = [0u8; 512];
        assert_eq!(c.read(&mut b, BAD, 1 << 16).unwrap(), Err(5));
        assert_eq!(c.write(&b, BAD, 1 << 16).unwrap(), Err(28));
        // Past the end: EINVAL, and the connection goes on.
        assert_eq!(c.read(&mut b, (1 << 18) - 1, 1 << 16).unwrap(), Err(22));
        assert_eq!(c.read(&mut b, 0, 1 << 16).unwrap(), Ok(()));
        let flushes = *mem.flushes.lock().unwrap();
        c.disconnect().unwrap();
        assert_eq!(t.join().unwrap(), "client disconnected");
        assert_eq!(*mem.flushes.lock().unwrap(), flushes + 1);
    }

    #[test]
    fn a_client_asking_for_another_export_is_refused() {
        let (s, t) = pair(Mem::new(4096));
        let e = Client::handshake(s, "other").err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(t.join().unwrap().starts_with("handshake"));
    }

    #[test]
    fn requests_pipelined_behind_go_are_served() {
        let (mut s, t) = pair(Mem::new(8192));
        let mut msg = 3u32.to_be_bytes().to_vec();
        msg.extend(wire::encode_option(
            crate::wire::opt::GO,
            &wire::encode_go_data("", &[]),
        ));
        // A request sent before the GO reply arrived.
        msg.extend(
            RequestHeader {
                flags: 0,
                command: wire::cmd::READ,
                cookie: 9,
                offset: 0,
                len: 16,
            }
            .encode(),
        );
        s.write_all(&msg).unwrap();
        let mut r = vec![0u8; 18 + 86 + 16 + 16];
        s.read_exact(&mut r).unwrap();
        let tail: [u8; 16] = r[18 + 86..18 + 86 + 16].try_into().unwrap();
        assert_eq!(wire::decode_simple_reply(&tail), Some((0, 9)));
        drop(s);
        assert_eq!(t.join().unwrap(), "client went away");
    }

    /// Serves `mem` on a unix socket until `stop` is set; each connection
    /// in its own thread.
    fn listen(path: &std::path::Path, mem: Arc<Mem>) -> Arc<Mutex<Vec<UnixStream>>> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        let open: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let o = open.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                o.lock().unwrap().push(c.try_clone().unwrap());
                let mem = mem.clone();
                std::thread::spawn(move || {
                    let size = mem.data.lock().unwrap().len() as u64;
                    serve_connection(Box::new(c), &export(size), mem, Workers::shared())
                });
            }
        });
        open
    }

    #[test]
    fn an_nbd_child_fails_while_its_server_is_gone_and_reconnects() {
        let dir = std::env::temp_dir().join(format!("quorum-nbd-child-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("s");
        let mem = Mem::new(1 << 16);
        let open = listen(&sock, mem.clone());
        let addr = NbdAddr::parse(&format!("nbd+unix:///m?socket={}", sock.display())).unwrap();
        let child = NbdChild::open(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(child.size().unwrap(), 1 << 16);
        child.write_at(&[7; 4096], 4096).unwrap();
        let mut b = [0u8; 4096];
        child.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [7; 4096]);
        assert!(child.read_at(&mut b, 1 << 16).is_err());
        // The server goes away: every connection is cut, the socket removed.
        std::fs::remove_file(&sock).unwrap();
        for c in open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        assert!(child.read_at(&mut b, 0).is_err());
        assert!(child.flush().is_err());
        assert!(!child.connected());
        // It comes back: the child reconnects in the background.
        let _open = listen(&sock, mem.clone());
        let t = std::time::Instant::now();
        while child.read_at(&mut b, 4096).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "no reconnection");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(b, [7; 4096]);
        child.write_zeroes(4096, 4096).unwrap();
        assert_eq!(mem.data.lock().unwrap()[4096..8192], [0; 4096]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A backend whose reads take a millisecond, where the read at 0 waits
    /// (two seconds at most) for the read at 4096 to be done, and whose
    /// flush panics.
    struct Latched {
        second_done: Mutex<bool>,
        changed: std::sync::Condvar,
    }

    impl Backend for Latched {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
            std::thread::sleep(Duration::from_millis(1));
            buf.fill(offset as u8 + 1);
            let mut done = self.second_done.lock().unwrap();
            match offset {
                0 => {
                    let t = std::time::Instant::now();
                    while !*done {
                        if t.elapsed() > Duration::from_secs(2) {
                            return Err(err::EIO); // served one at a time
                        }
                        done = self
                            .changed
                            .wait_timeout(done, Duration::from_millis(50))
                            .unwrap()
                            .0;
                    }
                    // The read at 4096 still has its reply to send: give
                    // it the time to, on a loaded machine too (the test
                    // checks completion order, not who wins this race).
                    drop(done);
                    std::thread::sleep(Duration::from_millis(100));
                    return Ok(());
                }
                4096 => {
                    *done = true;
                    self.changed.notify_all();
                }
                _ => {}
            }
            Ok(())
        }
        fn write(&self, _: u64, _: &[u8]) -> Result<(), u32> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64) -> Result<(), u32> {
            Ok(())
        }
        fn flush(&self) -> Result<(), u32> {
            panic!("a backend bug");
        }
    }

    fn latched() -> (UnixStream, std::thread::JoinHandle<String>) {
        let backend = Arc::new(Latched {
            second_done: Mutex::new(false),
            changed: std::sync::Condvar::new(),
        });
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_connection(Box::new(b), &export(1 << 16), backend, Workers::shared())
        });
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (a, t)
    }

    fn send(s: &mut UnixStream, command: u16, cookie: u64, offset: u64, len: u32) {
        let h = RequestHeader {
            flags: 0,
            command,
            cookie,
            offset,
            len,
        };
        s.write_all(&h.encode()).unwrap();
    }

    /// (error, cookie) of the next simple reply, its data skipped.
    fn reply(s: &mut UnixStream, data: usize) -> (u32, u64) {
        let mut r = [0u8; 16];
        s.read_exact(&mut r).unwrap();
        let (e, cookie) = wire::decode_simple_reply(&r).unwrap();
        let mut d = vec![0u8; if e == 0 { data } else { 0 }];
        s.read_exact(&mut d).unwrap();
        (e, cookie)
    }

    fn go(s: &mut UnixStream) {
        let mut msg = 3u32.to_be_bytes().to_vec();
        msg.extend(wire::encode_option(
            crate::wire::opt::GO,
            &wire::encode_go_data("", &[]),
        ));
        s.write_all(&msg).unwrap();
        let mut r = vec![0u8; 18 + 86];
        s.read_exact(&mut r).unwrap();
    }

    #[test]
    fn slow_requests_run_side_by_side_and_reply_in_completion_order() {
        let (mut s, t) = latched();
        go(&mut s);
        // Slow reads (a millisecond each) move the connection to helpers.
        for i in 0..16 {
            send(&mut s, wire::cmd::READ, 100 + i, 8192, 512);
            assert_eq!(reply(&mut s, 512), (0, 100 + i));
        }
        // The read at 0 can only finish once the read at 4096, sent after
        // it, has: both succeed, the second answered first.
        send(&mut s, wire::cmd::READ, 1, 0, 512);
        send(&mut s, wire::cmd::READ, 2, 4096, 512);
        assert_eq!(reply(&mut s, 512), (0, 2));
        assert_eq!(reply(&mut s, 512), (0, 1));
        drop(s);
        assert_eq!(t.join().unwrap(), "client went away");
    }

    #[test]
    fn a_backend_that_panics_answers_eio_and_the_connection_goes_on() {
        let (mut s, t) = latched();
        go(&mut s);
        send(&mut s, wire::cmd::FLUSH, 7, 0, 0);
        assert_eq!(reply(&mut s, 0), (err::EIO, 7));
        send(&mut s, wire::cmd::READ, 8, 8192, 16);
        assert_eq!(reply(&mut s, 16), (0, 8));
        send(&mut s, wire::cmd::FLUSH, 9, 0, 0);
        assert_eq!(reply(&mut s, 0), (err::EIO, 9));
        drop(s);
        assert_eq!(t.join().unwrap(), "client went away");
    }

    /// A read's reply goes out whole with `writev` even when the stream
    /// takes a few bytes at a time (a client reading slowly), the header
    /// first; an empty data part adds nothing.
    #[test]
    fn write_all_parts_survives_short_writes() {
        struct Dribble(Vec<u8>);
        impl Write for Dribble {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let n = b.len().min(5);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                // At most 5 bytes, across slices.
                let mut n = 0;
                for b in bufs {
                    let take = b.len().min(5 - n);
                    self.0.extend_from_slice(&b[..take]);
                    n += take;
                    if n == 5 {
                        break;
                    }
                }
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let head: Vec<u8> = (0..16).collect();
        let data: Vec<u8> = (100..=255).collect();
        let mut w = Dribble(Vec::new());
        write_all_parts(&mut w, &head, &data).unwrap();
        assert_eq!(w.0, [&head[..], &data[..]].concat());
        let mut w = Dribble(Vec::new());
        write_all_parts(&mut w, &head, &[]).unwrap();
        assert_eq!(w.0, head);
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = write_all_parts(&mut Closed, &head, &data).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }

    /// A helper's read reply (header and data sent in two pieces, the data
    /// where the backend lends it) is byte for byte what the connection's
    /// own path builds in its batch (`finish_read`): simple and structured,
    /// data, a hole (all zeroes: `OFFSET_HOLE`), an error, and a read of
    /// nothing, which asks the backend nothing (at `BAD` it would fail).
    #[test]
    fn a_lent_read_reply_is_the_batched_one() {
        let mem = Mem::new(1 << 16);
        mem.write(4096, &[5u8; 4096]).unwrap();
        for structured in [false, true] {
            let session = Session {
                structured,
                base_allocation: None,
            };
            for (offset, len) in [(4096, 4096), (8192, 4096), (BAD, 4096), (BAD, 0)] {
                let mut lent = Vec::new();
                read_reply(&*mem, &session, 9, offset, len, &mut |h, d| {
                    lent.extend_from_slice(h);
                    lent.extend_from_slice(d);
                });
                let head = if structured { 28 } else { 16 };
                let mut batch = vec![0u8; head + len];
                let r = if len == 0 {
                    Ok(())
                } else {
                    mem.read(offset, &mut batch[head..])
                };
                finish_read(&mut batch, 0, &session, 9, offset, len, r);
                assert_eq!(
                    lent, batch,
                    "structured {structured}, {len} bytes at {offset}"
                );
            }
        }
    }
}
