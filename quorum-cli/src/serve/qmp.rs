//! `quorum serve --qmp`: monitor sockets. Each monitor connection gets a
//! reader thread (bytes → [`Splitter`] → [`Session`] → the shared
//! [`Manager`]) and a writer thread (its [`Outbox`]: replies and events in
//! order). Events reach every negotiated monitor through the [`Hub`], which
//! throttles them as QEMU does ([`Throttle`], R-QMP-3) with a timer thread
//! for the held ones. Nothing here decides anything about the device: the
//! manager and the core do.
//!
//! A monitor is as powerful as root over the data (it can remove replicas
//! and add others): it listens on a unix socket or on loopback only.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quorum_qmp::event::Outgoing;
use quorum_qmp::manager::{Device as ManagedDevice, Manager};
use quorum_qmp::message::{self, QmpError};
use quorum_qmp::session::{Session, Version, greeting};
use quorum_qmp::stream::{Piece, Splitter};
use quorum_qmp::throttle::Throttle;

use crate::io::Bad;

/// Bytes of replies and events a monitor may leave unread before it is
/// disconnected (a client that never reads must not hold memory).
const MAX_UNREAD: usize = 16 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one monitor connection has to send, in order.
pub(crate) struct Outbox {
    state: Mutex<OutState>,
    more: Condvar,
    /// Negotiated: events go to it.
    events: AtomicBool,
    /// A command is being handled and its reply is not queued yet: the
    /// end of the device waits for it ([`Hub::end`]), or `quit`'s reply,
    /// queued after the stop it asks for, could find the monitor closed.
    handling: AtomicBool,
    /// The stream, to cut when the client leaves too much unread (its
    /// reader and writer threads may both be blocked on it).
    cut: Mutex<Option<Box<dyn Stream>>>,
}

#[derive(Default)]
struct OutState {
    lines: VecDeque<String>,
    bytes: usize,
    closed: bool,
    /// Closed because the client left too much unread.
    overflowed: bool,
}

impl Outbox {
    fn new() -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(OutState::default()),
            more: Condvar::new(),
            events: AtomicBool::new(false),
            handling: AtomicBool::new(false),
            cut: Mutex::new(None),
        })
    }

    /// Queues `line`; a monitor too far behind is closed instead.
    fn push(&self, line: String) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        // One reply of any size goes out; lines piling up behind unread
        // ones do not.
        if st.bytes > 0 && st.bytes + line.len() > MAX_UNREAD {
            st.closed = true;
            st.overflowed = true;
            st.lines.clear();
            if let Some(s) = lock(&self.cut).take() {
                s.shut();
            }
        } else {
            st.bytes += line.len();
            st.lines.push_back(line);
        }
        self.more.notify_all();
    }

    /// No more lines: the writer sends what is queued, then ends.
    fn close(&self) {
        lock(&self.state).closed = true;
        self.more.notify_all();
    }

    /// The next line to send, waiting; `None` once closed and empty.
    fn next(&self) -> Option<String> {
        let mut st = lock(&self.state);
        loop {
            if let Some(l) = st.lines.pop_front() {
                st.bytes -= l.len();
                return Some(l);
            }
            if st.closed {
                return None;
            }
            st = self.more.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Every monitor, and the events held back by throttling.
pub(crate) struct Hub {
    state: Mutex<HubState>,
    tick: Condvar,
    epoch: Instant,
}

struct HubState {
    monitors: Vec<Arc<Outbox>>,
    throttle: Throttle<String>,
    ended: bool,
}

impl Hub {
    /// A hub with its timer thread.
    pub(crate) fn start() -> Arc<Hub> {
        let hub = Arc::new(Hub {
            state: Mutex::new(HubState {
                monitors: Vec::new(),
                throttle: Throttle::new(),
                ended: false,
            }),
            tick: Condvar::new(),
            epoch: Instant::now(),
        });
        let h = hub.clone();
        let _ = std::thread::Builder::new()
            .name("qmp-events".into())
            .spawn(move || h.timer());
        hub
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Sends `o` to every negotiated monitor, or holds it (R-QMP-3).
    pub(crate) fn publish(&self, o: Outgoing) {
        let now = self.now();
        let mut st = lock(&self.state);
        let line = match o.period {
            None => Some(o.line),
            Some(p) => st.throttle.offer(o.key, p, now, o.line),
        };
        if let Some(line) = line {
            broadcast(&st.monitors, &line);
        }
        self.tick.notify_all();
    }

    fn add(&self, m: Arc<Outbox>) {
        let mut st = lock(&self.state);
        st.monitors.retain(|m| !lock(&m.state).closed);
        st.monitors.push(m);
    }

    /// Sends what throttling holds when its period ends.
    fn timer(&self) {
        let mut st = lock(&self.state);
        while !st.ended {
            let now = self.now();
            for line in st.throttle.expire(now) {
                broadcast(&st.monitors, &line);
            }
            let wait = st
                .throttle
                .deadline()
                .map_or(Duration::from_secs(3600), |d| {
                    Duration::from_nanos(d.saturating_sub(now))
                });
            st = self
                .tick
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The device is going away: every monitor sends what it has queued,
    /// then closes; waits (a little) for them to be written.
    pub(crate) fn end(&self) {
        let monitors = {
            let mut st = lock(&self.state);
            st.ended = true;
            self.tick.notify_all();
            st.monitors.clone()
        };
        // A command still being handled (`quit`, whose stop brought us
        // here) gets its reply queued first.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2)
            && monitors.iter().any(|m| m.handling.load(Ordering::SeqCst))
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        for m in &monitors {
            m.close();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2)
            && monitors.iter().any(|m| !lock(&m.state).lines.is_empty())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn broadcast(monitors: &[Arc<Outbox>], line: &str) {
    for m in monitors {
        if m.events.load(Ordering::SeqCst) {
            m.push(line.to_string());
        }
    }
}

/// A monitor stream of either kind.
trait Stream: Read + Write + Send {
    fn clone_box(&self) -> std::io::Result<Box<dyn Stream>>;
    fn shut(&self);
}

impl Stream for UnixStream {
    fn clone_box(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Stream for TcpStream {
    fn clone_box(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// Where monitors connect.
pub(crate) enum MonitorListener {
    Unix(UnixListener, String),
    Tcp(TcpListener),
}

/// Binds `--qmp ADDR`: `unix:PATH`, or `HOST:PORT` on loopback only.
pub(crate) fn bind(addr: &str) -> Result<MonitorListener, Bad> {
    if let Some(path) = addr.strip_prefix("unix:") {
        use std::os::unix::fs::FileTypeExt;
        if path.is_empty() {
            return Err(Bad("--qmp unix:PATH: the path is empty".into()));
        }
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path).map_err(|e| format!("--qmp {addr}: {e}"))?;
        return Ok(MonitorListener::Unix(l, path.to_string()));
    }
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("--qmp {addr}: expected unix:PATH or HOST:PORT ({e})"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(Bad(format!(
            "--qmp {addr}: a monitor is as powerful as root over the data; it listens on unix:PATH or on a loopback address only"
        )));
    }
    let l = TcpListener::bind(&addrs[..]).map_err(|e| format!("--qmp {addr}: {e}"))?;
    Ok(MonitorListener::Tcp(l))
}

impl MonitorListener {
    /// Where it listens, for the log line.
    pub(crate) fn describe(&self) -> String {
        match self {
            MonitorListener::Unix(_, p) => format!("unix:{p}"),
            MonitorListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
        }
    }
}

/// Serves monitors on `listener` until the process ends.
pub(crate) fn spawn<D>(
    listener: MonitorListener,
    manager: Arc<Mutex<Manager<D>>>,
    hub: Arc<Hub>,
    version: Version,
) where
    D: ManagedDevice + Send + 'static,
    D::Child: Send,
{
    let _ = std::thread::Builder::new()
        .name("qmp-accept".into())
        .spawn(move || {
            loop {
                let s: Box<dyn Stream> = match &listener {
                    MonitorListener::Unix(l, _) => match l.accept() {
                        Ok((s, _)) => Box::new(s),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    },
                    MonitorListener::Tcp(l) => match l.accept() {
                        Ok((s, _)) => Box::new(s),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    },
                };
                let (m, h, v) = (manager.clone(), hub.clone(), version.clone());
                let _ = std::thread::Builder::new()
                    .name("qmp-monitor".into())
                    .spawn(move || monitor(s, &m, &h, &v));
            }
        });
}

/// One monitor connection, to its end.
fn monitor<D: ManagedDevice>(
    mut input: Box<dyn Stream>,
    manager: &Mutex<Manager<D>>,
    hub: &Hub,
    version: &Version,
) {
    let Ok(mut out) = input.clone_box() else {
        return;
    };
    let outbox = Outbox::new();
    *lock(&outbox.cut) = input.clone_box().ok();
    outbox.push(greeting(version));
    let writer = {
        let outbox = outbox.clone();
        std::thread::Builder::new()
            .name("qmp-write".into())
            .spawn(move || {
                while let Some(line) = outbox.next() {
                    if out.write_all(line.as_bytes()).is_err() {
                        outbox.close();
                        break;
                    }
                }
                out.shut();
            })
    };
    hub.add(outbox.clone());
    let mut session = Session::new();
    let mut splitter = Splitter::new();
    let mut buf = vec![0u8; 64 << 10];
    'read: loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if lock(&outbox.state).closed {
            break;
        }
        for piece in splitter.feed(&buf[..n]) {
            outbox.handling.store(true, Ordering::SeqCst);
            let r = match piece {
                Piece::Message(m) => session.handle(&m, &mut *lock(manager)),
                Piece::Error(e) => {
                    let v = message::error(&QmpError::generic(e), None);
                    quorum_qmp::session::Response {
                        line: format!("{}\r\n", quorum_qmp::json::to_line(&v)),
                        quit: false,
                    }
                }
            };
            outbox.push(r.line);
            outbox.handling.store(false, Ordering::SeqCst);
            if session.negotiated() {
                outbox.events.store(true, Ordering::SeqCst);
            }
            if r.quit {
                // QEMU answers nothing after `quit`.
                break 'read;
            }
        }
    }
    outbox.close();
    if lock(&outbox.state).overflowed {
        // The writer is stuck in a write to a client that reads nothing:
        // cut the stream so that it returns.
        input.shut();
    }
    if let Ok(w) = writer {
        let _ = w.join();
    }
    input.shut();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of the device waits for a monitor still handling a command
    /// (`quit`, whose stop is what ended it) to queue its reply before
    /// closing it: the reply is sent, not dropped.
    #[test]
    fn the_end_waits_for_the_reply_being_made() {
        let hub = Hub::start();
        let outbox = Outbox::new();
        hub.add(outbox.clone());
        outbox.handling.store(true, Ordering::SeqCst);
        let h = hub.clone();
        let ended = std::thread::spawn(move || h.end());
        // The command takes a while to make its reply.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!ended.is_finished(), "ended while a reply was being made");
        outbox.push("{\"return\": {}}\r\n".into());
        outbox.handling.store(false, Ordering::SeqCst);
        // The writer's part: take the line; then the monitor is closed.
        assert_eq!(outbox.next().as_deref(), Some("{\"return\": {}}\r\n"));
        ended.join().unwrap();
        assert_eq!(outbox.next(), None, "closed after the reply");
    }
}
