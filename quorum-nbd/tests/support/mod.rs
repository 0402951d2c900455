//! What the client tests share: fake NBD servers on unix sockets (a
//! handshake of their own, so that a test decides whether structured
//! replies and `base:allocation` are offered, and replies of their own, so
//! that a test decides when and in what order — or what garbage — to send),
//! this crate's own server over a memory disk, and `qemu-nbd`.
//!
//! Every server thread and process ends with its socket or its guard; every
//! wait is bounded.

#![allow(dead_code, unreachable_pub)] // Each test file uses a part.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child as Process, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum_nbd::NbdAddr;
use quorum_nbd::wire::{self, RequestHeader, chunk, cmd, opt, rep, state, tflag};

/// A scratch directory, removed at the end.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(name: &str) -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "quorum-nbd-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Tmp(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The address of a unix socket's export.
pub fn unix_addr(sock: &Path) -> NbdAddr {
    NbdAddr::parse(&format!("nbd+unix:///?socket={}", sock.display())).expect("address")
}

/// The byte at `pos` of the test pattern (never all zero over 4 KiB).
pub fn pattern(pos: u64) -> u8 {
    ((pos / 4096).wrapping_mul(31) + pos % 251 + 1) as u8
}

pub fn pattern_at(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(offset + i)).collect()
}

/// What a fake server offers in its handshake.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub size: u64,
    /// Agree to structured replies (otherwise ERR_UNSUP, as an old server).
    pub structured: bool,
    /// Select `base:allocation` under this id (needs `structured`).
    pub meta: Option<u32>,
    pub flags: u16,
}

impl Offer {
    pub fn simple(size: u64) -> Offer {
        Offer {
            size,
            structured: false,
            meta: None,
            flags: tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_WRITE_ZEROES,
        }
    }

    pub fn structured(size: u64) -> Offer {
        Offer {
            structured: true,
            meta: Some(7),
            ..Offer::simple(size)
        }
    }
}

/// What a fake connection agreed to.
#[derive(Clone, Copy, Debug)]
pub struct Agreed {
    pub structured: bool,
    pub meta: Option<u32>,
}

fn option_reply(s: &mut UnixStream, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    s.write_all(&wire::encode_reply(option, reply, data))
}

/// The server's side of the handshake, as `offer` says.
pub fn handshake(s: &mut UnixStream, offer: &Offer) -> io::Result<Agreed> {
    s.write_all(&wire::greeting(
        wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES,
    ))?;
    let mut f = [0u8; 4];
    s.read_exact(&mut f)?;
    let mut agreed = Agreed {
        structured: false,
        meta: None,
    };
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        let h = wire::decode_option_header(&h).ok_or(io::ErrorKind::InvalidData)?;
        let mut data = vec![0u8; h.len.min(1 << 16) as usize];
        s.read_exact(&mut data)?;
        match h.option {
            opt::STRUCTURED_REPLY if offer.structured => {
                agreed.structured = true;
                option_reply(s, h.option, rep::ACK, &[])?;
            }
            opt::SET_META_CONTEXT if agreed.structured => {
                if let Some(id) = offer.meta {
                    let ctx = wire::encode_meta_context(id, wire::BASE_ALLOCATION);
                    option_reply(s, h.option, rep::META_CONTEXT, &ctx)?;
                    agreed.meta = Some(id);
                }
                option_reply(s, h.option, rep::ACK, &[])?;
            }
            opt::GO => {
                let info = wire::encode_info_export(offer.size, offer.flags);
                option_reply(s, h.option, rep::INFO, &info)?;
                option_reply(s, h.option, rep::ACK, &[])?;
                return Ok(agreed);
            }
            _ => option_reply(s, h.option, rep::ERR_UNSUP, b"not here")?,
        }
    }
}

/// Reads one request and a write's payload.
pub fn read_request(s: &mut UnixStream) -> io::Result<(RequestHeader, Vec<u8>)> {
    let mut h = [0u8; wire::REQUEST_LEN];
    s.read_exact(&mut h)?;
    let r = RequestHeader::decode(&h).ok_or(io::ErrorKind::InvalidData)?;
    let mut payload = Vec::new();
    if r.command == cmd::WRITE {
        payload = vec![0u8; r.len as usize];
        s.read_exact(&mut payload)?;
    }
    Ok((r, payload))
}

/// A fake server: every connection gets the handshake `offer` says, then
/// `serve` with the stream. Counts connections.
pub struct Fake {
    pub addr: NbdAddr,
    pub connections: Arc<AtomicUsize>,
    /// The accepted streams, to cut them.
    pub streams: Arc<Mutex<Vec<UnixStream>>>,
    _tmp: Tmp,
}

impl Fake {
    pub fn start<F>(name: &str, offer: Offer, serve: F) -> Fake
    where
        F: Fn(UnixStream, Agreed, usize) + Send + Sync + 'static,
    {
        let tmp = Tmp::new(name);
        let sock = tmp.path("s");
        let l = UnixListener::bind(&sock).expect("bind");
        let connections = Arc::new(AtomicUsize::new(0));
        let streams: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let serve = Arc::new(serve);
        let (c, st) = (connections.clone(), streams.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let n = c.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = s.try_clone() {
                    st.lock().unwrap().push(clone);
                }
                let serve = serve.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    if let Ok(agreed) = handshake(&mut s, &offer) {
                        serve(s, agreed, n);
                    }
                });
            }
        });
        Fake {
            addr: unix_addr(&sock),
            connections,
            streams,
            _tmp: tmp,
        }
    }

    /// Cuts every connection made so far.
    pub fn cut(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A memory disk a fake server serves.
pub struct Disk {
    pub data: Mutex<Vec<u8>>,
    /// The most requests seen waiting for a reply at once.
    pub max_pending: AtomicUsize,
    pub requests: AtomicUsize,
}

impl Disk {
    pub fn new(data: Vec<u8>) -> Arc<Disk> {
        Arc::new(Disk {
            data: Mutex::new(data),
            max_pending: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        })
    }

    pub fn patterned(size: usize) -> Arc<Disk> {
        Disk::new(pattern_at(0, size))
    }

    /// Carries `r` out; the reply as chunks to send (one for a simple
    /// reply). Structured reads come as 4 KiB pieces in reverse order, zero
    /// pieces as holes, then a NONE chunk; block status says whether the
    /// 4 KiB blocks from the offset are zero (`HOLE | ZERO`) or data.
    pub fn reply(&self, r: &RequestHeader, payload: &[u8], agreed: &Agreed) -> Vec<Vec<u8>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut d = self.data.lock().unwrap();
        let range = r.offset as usize..(r.offset + u64::from(r.len)) as usize;
        let inside = range.end <= d.len();
        let simple = |error: u32, data: &[u8]| {
            let mut v = wire::simple_reply(r.cookie, error).to_vec();
            v.extend_from_slice(data);
            vec![v]
        };
        if !inside && r.command != cmd::FLUSH {
            return if agreed.structured {
                vec![wire::chunk_error(
                    r.cookie,
                    wire::err::EINVAL,
                    "out of range",
                )]
            } else {
                simple(wire::err::EINVAL, &[])
            };
        }
        match r.command {
            cmd::READ if agreed.structured => {
                let mut chunks = Vec::new();
                let mut at = range.start;
                while at < range.end {
                    let end = (at + 4096).min(range.end);
                    let piece = &d[at..end];
                    if piece.iter().all(|&b| b == 0) {
                        let mut c =
                            wire::chunk_header(0, chunk::OFFSET_HOLE, r.cookie, 12).to_vec();
                        c.extend_from_slice(&(at as u64).to_be_bytes());
                        c.extend_from_slice(&(piece.len() as u32).to_be_bytes());
                        chunks.push(c);
                    } else {
                        let mut c = wire::chunk_header(
                            0,
                            chunk::OFFSET_DATA,
                            r.cookie,
                            8 + piece.len() as u32,
                        )
                        .to_vec();
                        c.extend_from_slice(&(at as u64).to_be_bytes());
                        c.extend_from_slice(piece);
                        chunks.push(c);
                    }
                    at = end;
                }
                chunks.reverse();
                chunks.push(wire::chunk_none(r.cookie).to_vec());
                chunks
            }
            cmd::READ => simple(0, &d[range]),
            cmd::WRITE => {
                d[range].copy_from_slice(payload);
                simple(0, &[])
            }
            cmd::WRITE_ZEROES => {
                d[range].fill(0);
                simple(0, &[])
            }
            cmd::FLUSH => simple(0, &[]),
            cmd::BLOCK_STATUS => {
                let Some(id) = agreed.meta else {
                    return simple(wire::err::EINVAL, &[]);
                };
                let zero = |at: usize| d[at..(at + 4096).min(range.end)].iter().all(|&b| b == 0);
                let first = zero(range.start);
                let mut end = range.start;
                while end < range.end && zero(end) == first {
                    end = (end + 4096).min(range.end);
                }
                let flags = if first { state::HOLE | state::ZERO } else { 0 };
                vec![wire::chunk_block_status(
                    r.cookie,
                    id,
                    &[((end - range.start) as u32, flags)],
                )]
            }
            _ => simple(wire::err::EINVAL, &[]),
        }
    }
}

/// Serves `disk` on `s`: replies only once `hold` requests wait (or
/// `give_up` went by), then in reverse order and with their chunks
/// interleaved; after that batch, each request at once. Records the most
/// requests waiting.
pub fn serve_held(
    mut s: UnixStream,
    agreed: Agreed,
    disk: Arc<Disk>,
    hold: usize,
    give_up: Duration,
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut held = true;
    loop {
        match read_request(&mut s) {
            Ok((r, payload)) => {
                if r.command == cmd::DISC {
                    return;
                }
                pending.push(disk.reply(&r, &payload, &agreed));
                disk.max_pending.fetch_max(pending.len(), Ordering::SeqCst);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if held && (pending.len() >= hold || started.elapsed() > give_up) {
            held = false;
            // Reverse order, and the chunks of different replies interleaved.
            pending.reverse();
            let mut out = Vec::new();
            let longest = pending.iter().map(Vec::len).max().unwrap_or(0);
            for k in 0..longest {
                for p in &pending {
                    if let Some(c) = p.get(k) {
                        out.extend_from_slice(c);
                    }
                }
            }
            pending.clear();
            if s.write_all(&out).is_err() {
                return;
            }
        } else if !held {
            for p in pending.drain(..) {
                if s.write_all(&p.concat()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves `disk` on `s`, each reply `delay` after its request arrived
/// (requests are not held behind each other's delays).
pub fn serve_delayed(mut s: UnixStream, agreed: Agreed, disk: Arc<Disk>, delay: Duration) {
    let mut w = s.try_clone().expect("clone");
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, bytes) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if w.write_all(&bytes).is_err() {
                return;
            }
        }
    });
    while let Ok((r, payload)) = read_request(&mut s) {
        if r.command == cmd::DISC {
            break;
        }
        let due = Instant::now() + delay;
        if tx
            .send((due, disk.reply(&r, &payload, &agreed).concat()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// Reads requests and never answers, counting them in `seen`.
pub fn swallow(mut s: UnixStream, seen: Arc<AtomicUsize>) {
    while read_request(&mut s).is_ok() {
        seen.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits (at most 10 s) until `f` holds.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Serves `disk` on `s`, one reply right after each request.
pub fn serve_plain(mut s: UnixStream, agreed: Agreed, disk: Arc<Disk>) {
    while let Ok((r, payload)) = read_request(&mut s) {
        if r.command == cmd::DISC {
            return;
        }
        if s.write_all(&disk.reply(&r, &payload, &agreed).concat())
            .is_err()
        {
            return;
        }
    }
}

/// Whether `qemu-nbd` runs here. Where it must (`CI=true` or
/// `QUORUM_DIFF_REQUIRE_QEMU=1`), its absence fails the test instead.
pub fn qemu_nbd_present() -> bool {
    let ok = Command::new("qemu-nbd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = |v: &str| std::env::var(v).is_ok_and(|v| v == "true" || v == "1");
        if required("CI") || required("QUORUM_DIFF_REQUIRE_QEMU") {
            panic!("qemu-nbd is required in CI");
        }
        eprintln!("qemu-nbd not installed: test skipped");
    }
    ok
}

/// A `qemu-nbd` process, killed when dropped.
pub struct QemuNbd(Process);

impl QemuNbd {
    /// Serves the raw image `img` on the unix socket `sock` (`-t`: it stays
    /// when a client leaves; `-e 8`: several clients).
    pub fn start(img: &Path, sock: &Path) -> QemuNbd {
        let _ = std::fs::remove_file(sock);
        let p = Command::new("qemu-nbd")
            .args(["-f", "raw", "-t", "-e", "8", "-k"])
            .arg(sock)
            .arg(img)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd starts");
        let q = QemuNbd(p);
        let t = Instant::now();
        while UnixStream::connect(sock).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "qemu-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on a thread and fails the test if it has not finished within
/// `limit` (a hung client must fail, not hang the test run).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("not finished within {limit:?}: the client hangs"),
        Err(RecvTimeoutError::Disconnected) => panic!("the test's thread panicked"),
    }
}

/// A memory disk behind this crate's own server ([`quorum_nbd::blocking`]).
pub struct Ours {
    pub data: Mutex<Vec<u8>>,
}

impl quorum_nbd::blocking::Backend for Ours {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), u32> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), u32> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn flush(&self) -> Result<(), u32> {
        Ok(())
    }
    /// Zero or data by 512-byte sectors from `offset`.
    fn block_status(&self, offset: u64, len: u64) -> Result<(u64, bool), u32> {
        let d = self.data.lock().unwrap();
        let range = &d[offset as usize..(offset + len) as usize];
        let zero = |s: &[u8]| s.iter().all(|&b| b == 0);
        let first = zero(&range[..range.len().min(512)]);
        let n = range.chunks(512).take_while(|s| zero(s) == first).count();
        Ok(((n as u64 * 512).min(len), first))
    }
}

/// This crate's server for `disk` on a unix socket, each connection on a
/// thread of its own, with `max_payload` as its largest payload.
pub fn serve_ours(name: &str, disk: Arc<Ours>, max_payload: u32) -> (Tmp, NbdAddr) {
    let tmp = Tmp::new(name);
    let sock = tmp.path("s");
    let l = UnixListener::bind(&sock).expect("bind");
    let export = quorum_nbd::server::Export {
        name: String::new(),
        size: disk.data.lock().unwrap().len() as u64,
        read_only: false,
        max_payload,
    };
    let workers = Arc::new(quorum_nbd::blocking::Workers::new());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (disk, export, workers) = (disk.clone(), export.clone(), workers.clone());
            std::thread::spawn(move || {
                quorum_nbd::blocking::serve_connection(Box::new(s), &export, disk, &workers)
            });
        }
    });
    let addr = unix_addr(&sock);
    (tmp, addr)
}
