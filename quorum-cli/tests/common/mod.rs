//! What the `quorum serve` tests share: scratch directories, processes
//! killed when dropped, the server started and its address read, commands
//! run with a deadline, and raw NBD connections for requests built by hand.
//!
//! External tools are checked by [`tools`]: a test without them is skipped
//! with a note, except under `CI=true` or `QUORUM_DIFF_REQUIRE_QEMU=1`,
//! where it fails.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quorum_nbd::wire::{self, RequestHeader, opt};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_quorum");
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Whether every tool in `names` runs (`--version`); panics instead of
/// skipping where CI requires them.
pub(crate) fn tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|t| {
            !Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = |v: &str| std::env::var(v).is_ok_and(|v| v == "true" || v == "1");
    if required("CI") || required("QUORUM_DIFF_REQUIRE_QEMU") {
        panic!("{missing:?} required in CI (.ci/run installs them)");
    }
    eprintln!("{missing:?} not installed: test skipped");
    false
}

pub(crate) fn qemu_present() -> bool {
    tools(&["qemu-io", "qemu-img", "qemu-nbd"])
}

/// A scratch directory, removed at the end.
pub(crate) struct Tmp(pub(crate) PathBuf);

impl Tmp {
    pub(crate) fn new(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("quorum-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Tmp(d)
    }
    pub(crate) fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    /// `n` images of `size` bytes, zeroed.
    pub(crate) fn images(&self, n: usize, size: u64) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = self.path(&format!("{i}.img"));
                std::fs::File::create(&p)
                    .and_then(|f| f.set_len(size))
                    .expect("image");
                p
            })
            .collect()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `quorum serve` with `args`, and the address it printed.
pub(crate) fn serve(tmp: &Tmp, args: &[&str]) -> (Proc, String) {
    let mut c = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path("serve.log")).expect("log"))
        .spawn()
        .expect("quorum serve starts");
    let out = c.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut p = Proc(c);
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    assert!(
        line.contains("listening on"),
        "quorum serve did not start: {line:?} {:?}",
        std::fs::read_to_string(tmp.path("serve.log"))
    );
    assert!(p.alive());
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("nbd"))
        .expect("url")
        .to_string();
    (p, url)
}

/// Runs a command to completion, killing it after [`WAIT`].
pub(crate) fn run(c: &mut Command) -> Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(o) => o.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("{c:?} took more than {WAIT:?}");
        }
    }
}

pub(crate) fn qemu_io(url: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(url);
    run(&mut c)
}

pub(crate) fn ok(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && !s.contains("failed"),
        "failed: {s}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    s
}

pub(crate) fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(p)
        .and_then(|f| f.read_exact_at(&mut b, off))
        .expect("read image");
    b
}

pub(crate) fn write_at(p: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .and_then(|f| f.write_all_at(data, off))
        .expect("write image");
}

pub(crate) fn strs(v: &[PathBuf]) -> Vec<String> {
    v.iter().map(|p| p.display().to_string()).collect()
}

/// A raw connection through the handshake, for requests built by hand.
pub(crate) fn handshaken(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert!(wire::decode_greeting(&g).is_some());
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&wire::encode_option(
        opt::GO,
        &wire::encode_go_data("", &[]),
    ))
    .unwrap();
    // INFO export, INFO block size, ACK: 20 + 12, 20 + 14, 20 bytes.
    let mut r = [0u8; 86];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        wire::decode_reply_header(r[66..].try_into().unwrap())
            .unwrap()
            .reply,
        wire::rep::ACK
    );
    s
}

pub(crate) fn request(
    s: &mut TcpStream,
    command: u16,
    flags: u16,
    offset: u64,
    len: u32,
    payload: &[u8],
) -> u32 {
    let h = RequestHeader {
        flags,
        command,
        cookie: 42,
        offset,
        len,
    };
    s.write_all(&h.encode()).unwrap();
    s.write_all(payload).unwrap();
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    let (error, cookie) = wire::decode_simple_reply(&r).expect("simple reply");
    assert_eq!(cookie, 42);
    error
}

/// Whether the server closed the connection (EOF or reset within 10 s).
pub(crate) fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

/// Reads option replies up to and including the final one (`ACK` or an
/// error); returns them as (reply type, data).
fn option_replies(s: &mut TcpStream) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).expect("option reply");
        let h = wire::decode_reply_header(&h).expect("option reply header");
        let mut d = vec![0u8; h.len as usize];
        s.read_exact(&mut d).expect("option reply data");
        let last = h.reply == wire::rep::ACK || h.reply & wire::rep::ERR != 0;
        out.push((h.reply, d));
        if last {
            return out;
        }
    }
}

/// A raw connection that negotiated structured replies and the
/// `base:allocation` meta context; returns the context's id too.
pub(crate) fn structured(addr: &str) -> (TcpStream, u32) {
    negotiated(addr, true)
}

/// A raw connection with structured replies, and the `base:allocation`
/// context if `meta` (its id, else 0).
pub(crate) fn negotiated(addr: &str, meta: bool) -> (TcpStream, u32) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert!(wire::decode_greeting(&g).is_some());
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&wire::encode_option(opt::STRUCTURED_REPLY, &[]))
        .unwrap();
    assert_eq!(option_replies(&mut s)[0].0, wire::rep::ACK);
    let mut id = 0;
    if meta {
        s.write_all(&wire::encode_option(
            opt::SET_META_CONTEXT,
            &wire::encode_meta_context_data("", &[wire::BASE_ALLOCATION]),
        ))
        .unwrap();
        let r = option_replies(&mut s);
        assert_eq!(r.len(), 2, "one context, then ACK: {r:?}");
        assert_eq!(r[0].0, wire::rep::META_CONTEXT);
        id = u32::from_be_bytes(r[0].1[..4].try_into().unwrap());
        assert_eq!(&r[0].1[4..], wire::BASE_ALLOCATION.as_bytes());
    }
    s.write_all(&wire::encode_option(
        opt::GO,
        &wire::encode_go_data("", &[]),
    ))
    .unwrap();
    assert_eq!(option_replies(&mut s).last().unwrap().0, wire::rep::ACK);
    (s, id)
}

/// One reply read whole: a simple reply, or every chunk of a structured one
/// up to the one flagged done.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub(crate) cookie: u64,
    /// The simple reply's error, or the first error chunk's.
    pub(crate) error: u32,
    /// Structured chunks: (type, payload).
    pub(crate) chunks: Vec<(u16, Vec<u8>)>,
}

/// Reads one reply; `read_len` is the data that follows a simple reply
/// without error (the length of the read it answers, else 0).
pub(crate) fn read_reply(s: &mut TcpStream, read_len: usize) -> Reply {
    let mut magic = [0u8; 4];
    s.read_exact(&mut magic).expect("reply");
    if u32::from_be_bytes(magic) == wire::SIMPLE_REPLY_MAGIC {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&magic);
        s.read_exact(&mut r[4..]).expect("simple reply");
        let (error, cookie) = wire::decode_simple_reply(&r).expect("simple reply");
        let mut data = vec![0u8; if error == 0 { read_len } else { 0 }];
        s.read_exact(&mut data).expect("read data");
        return Reply {
            cookie,
            error,
            chunks: vec![(wire::chunk::OFFSET_DATA, data)],
        };
    }
    let mut reply = Reply::default();
    let mut first = true;
    loop {
        let mut h = [0u8; wire::CHUNK_HEADER_LEN];
        if first {
            h[..4].copy_from_slice(&magic);
            s.read_exact(&mut h[4..]).expect("chunk");
            first = false;
        } else {
            s.read_exact(&mut h).expect("chunk");
        }
        let (flags, kind, cookie, len) = wire::decode_chunk_header(&h).expect("chunk header");
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).expect("chunk payload");
        reply.cookie = cookie;
        if kind & (1 << 15) != 0 && reply.error == 0 {
            reply.error = u32::from_be_bytes(payload[..4].try_into().unwrap());
        }
        reply.chunks.push((kind, payload));
        if flags & wire::chunk::FLAG_DONE != 0 {
            return reply;
        }
    }
}

/// The resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends signal `sig` (`TERM`, `INT`) to `pid` with kill(1): the tests
/// stay free of `unsafe`.
pub(crate) fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Waits up to [`WAIT`] for `p` to exit; its exit status.
pub(crate) fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = p.0.try_wait() {
            return st;
        }
        assert!(t.elapsed() < WAIT, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replicas on "hosts": `qemu-nbd` serving each of `imgs` on a unix
/// socket in `tmp`. Returns the servers, their sockets and the child
/// arguments `hostN=nbd+unix:///?socket=...` for `quorum serve`.
pub(crate) fn qemu_nbd_hosts(
    tmp: &Tmp,
    imgs: &[PathBuf],
) -> (Vec<Proc>, Vec<PathBuf>, Vec<String>) {
    let socks: Vec<PathBuf> = (0..imgs.len())
        .map(|i| tmp.path(&format!("r{i}.sock")))
        .collect();
    let hosts = imgs
        .iter()
        .zip(&socks)
        .map(|(i, s)| qemu_nbd(i, s))
        .collect();
    let kids = socks
        .iter()
        .enumerate()
        .map(|(i, s)| format!("host{i}=nbd+unix:///?socket={}", s.display()))
        .collect();
    (hosts, socks, kids)
}

/// `qemu-nbd` serving `img` on the unix socket `sock`.
pub(crate) fn qemu_nbd(img: &Path, sock: &Path) -> Proc {
    let _ = std::fs::remove_file(sock);
    let c = Command::new("qemu-nbd")
        .args(["-f", "raw", "-t", "-e", "4", "-k"])
        .arg(sock)
        .arg(img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd starts");
    let p = Proc(c);
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(t.elapsed() < WAIT, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}
