//! `quorum serve --qmp` end to end (SPEC "Management — rules R-QMP",
//! R-MEMBER):
//!
//! - QEMU's own client library (`qemu.qmp`, through `tests/qmp/session.py`)
//!   queries the nodes, adds a file child and an NBD child (served by
//!   qemu-nbd), removes children, hits the refusals and quits, while an NBD
//!   client keeps writing and reading back; not one of its requests may
//!   fail and its data must read back at the end (R-QMP-1, R-QMP-2,
//!   R-MEMBER-1, R-MEMBER-2).
//! - Events from corrupted reads, throttled as QEMU does (R-QMP-3).
//! - The same conversation against qemu-storage-daemon and `quorum serve`
//!   (`tests/qmp/differential.py`): the same bytes, apart from an explicit
//!   allow-list (R-QMP-1, R-QMP-2, R-QMP-3).
//! - Hostile and odd input over raw sockets, several monitors, a monitor
//!   that never reads, the address policy (R-QMP-1).
//!
//! The Python scripts run under `$QUORUM_QMP_PYTHON`, else
//! `target/qmp-venv/bin/python` (`.ci/run` makes it). Without it, or
//! without QEMU's tools, a test is skipped with a note — except under
//! `CI=true` or `QUORUM_DIFF_REQUIRE_QEMU=1`, where it fails.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use quorum_nbd::client::Client;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// Whether missing tools fail the test rather than skip it.
fn required() -> bool {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v == "true" || v == "1");
    on("CI") || on("QUORUM_DIFF_REQUIRE_QEMU")
}

/// The Python that has `qemu.qmp`: `$QUORUM_QMP_PYTHON`, else the
/// workspace's `target/qmp-venv`; `None` (test skipped) when missing.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("QUORUM_QMP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qmp-venv/bin/python")
        });
    let ok = Command::new(&p)
        .args(["-c", "import qemu.qmp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(p);
    }
    if required() {
        panic!(
            "{} cannot import qemu.qmp: required in CI (.ci/run makes target/qmp-venv)",
            p.display()
        );
    }
    eprintln!(
        "{} cannot import qemu.qmp (QEMU's QMP library): test skipped",
        p.display()
    );
    None
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/qmp")
        .join(name)
}

/// Both output streams, for failure messages.
fn shown(o: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a Python script to its end (bounded by [`run`]'s deadline) and
/// fails the test, showing everything it printed, if it failed.
fn run_script(py: &Path, name: &str, args: &[&str]) -> Output {
    let o = run(Command::new(py).arg(script(name)).args(args));
    assert!(o.status.success(), "{name} failed:\n{}", shown(&o));
    o
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn wait_for_path(p: &Path, what: &str, proc_: &mut Proc, log: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            proc_.alive(),
            "{what} exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what}: no {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `qemu-nbd` serving `image` (export "") on the unix socket `sock`.
fn qemu_nbd(tmp: &Tmp, image: &Path, sock: &Path) -> Proc {
    let log = tmp.path("qemu-nbd.log");
    let c = Command::new("qemu-nbd")
        .args(["-f", "raw", "--persistent", "-k"])
        .arg(sock)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("qemu-nbd starts");
    let mut p = Proc(c);
    wait_for_path(sock, "qemu-nbd", &mut p, &log);
    p
}

fn image(p: &Path, size: u64) {
    std::fs::File::create(p)
        .and_then(|f| f.set_len(size))
        .expect("image");
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---- an NBD client that keeps writing and reading back --------------------

const BLOCK: usize = 4096;

/// What the NBD load did.
#[derive(Debug)]
struct LoadReport {
    ops: u64,
    passes: u64,
    failures: Vec<String>,
    /// The last data written to each block.
    model: Vec<Vec<u8>>,
}

/// An NBD client on its own thread over `blocks` blocks from `base`: each
/// block written with new data and read back, another block read and
/// compared, pass after pass; every failed request or wrong byte is
/// recorded. Its passes are counted (and written to `passes_file`, which
/// `session.py` watches).
struct Load {
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicU64>,
    handle: Option<JoinHandle<LoadReport>>,
}

fn pattern(block: usize, generation: u64) -> Vec<u8> {
    let mut d = vec![(generation as u8).wrapping_mul(31) ^ block as u8; BLOCK];
    d[..8].copy_from_slice(&(block as u64).to_le_bytes());
    d[8..16].copy_from_slice(&generation.to_le_bytes());
    d
}

fn nbd_client(sock: &Path) -> Client<UnixStream> {
    let s = UnixStream::connect(sock).expect("NBD connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    Client::handshake(s, "").expect("NBD handshake")
}

impl Load {
    fn start(sock: &Path, base: u64, blocks: usize, passes_file: Option<PathBuf>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicU64::new(0));
        let mut c = nbd_client(sock);
        let (st, ps) = (stop.clone(), passes.clone());
        let handle = std::thread::spawn(move || {
            let mut r = LoadReport {
                ops: 0,
                passes: 0,
                failures: Vec::new(),
                model: vec![Vec::new(); blocks],
            };
            let fail = |r: &mut LoadReport, what: String| {
                if r.failures.len() < 20 {
                    r.failures.push(what);
                }
            };
            let mut generation = 0u64;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64;
            let mut buf = vec![0u8; BLOCK];
            'run: while !st.load(Ordering::SeqCst) {
                for b in 0..blocks {
                    generation += 1;
                    let data = pattern(b, generation);
                    let off = base + (b * BLOCK) as u64;
                    match c.write(&data, off, BLOCK) {
                        Ok(Ok(())) => r.ops += 1,
                        Ok(Err(e)) => fail(&mut r, format!("write {off}: errno {e}")),
                        Err(e) => {
                            fail(&mut r, format!("write {off}: connection: {e}"));
                            break 'run;
                        }
                    }
                    r.model[b] = data;
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let other = (rng % blocks as u64) as usize;
                    for x in [b, other] {
                        if r.model[x].is_empty() {
                            continue;
                        }
                        let off = base + (x * BLOCK) as u64;
                        match c.read(&mut buf, off, BLOCK) {
                            Ok(Ok(())) if buf == r.model[x] => r.ops += 1,
                            Ok(Ok(())) => {
                                let what = format!(
                                    "read {off}: got generation {}, wrote {}",
                                    u64::from_le_bytes(buf[8..16].try_into().unwrap()),
                                    u64::from_le_bytes(r.model[x][8..16].try_into().unwrap())
                                );
                                fail(&mut r, what)
                            }
                            Ok(Err(e)) => fail(&mut r, format!("read {off}: errno {e}")),
                            Err(e) => {
                                fail(&mut r, format!("read {off}: connection: {e}"));
                                break 'run;
                            }
                        }
                    }
                    if st.load(Ordering::SeqCst) {
                        break 'run;
                    }
                }
                r.passes += 1;
                ps.store(r.passes, Ordering::SeqCst);
                if let Some(f) = &passes_file {
                    let t = f.with_extension("new");
                    let _ = std::fs::write(&t, r.passes.to_string());
                    let _ = std::fs::rename(&t, f);
                }
            }
            // Everything written reads back.
            for x in 0..blocks {
                if r.model[x].is_empty() {
                    continue;
                }
                let off = base + (x * BLOCK) as u64;
                match c.read(&mut buf, off, BLOCK) {
                    Ok(Ok(())) if buf == r.model[x] => r.ops += 1,
                    other => fail(&mut r, format!("final read {off}: {other:?}")),
                }
            }
            if !matches!(c.flush(), Ok(Ok(()))) {
                fail(&mut r, "flush failed".into());
            }
            let _ = c.disconnect();
            r
        });
        Load {
            stop,
            passes,
            handle: Some(handle),
        }
    }

    fn wait_passes(&self, n: u64) {
        let t = Instant::now();
        while self.passes.load(Ordering::SeqCst) < n {
            assert!(
                self.handle.as_ref().is_some_and(|h| !h.is_finished()),
                "the NBD load ended early"
            );
            assert!(t.elapsed() < WAIT, "the NBD load makes no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the load; its report, which must show no failure.
    fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let r = self
            .handle
            .take()
            .expect("running")
            .join()
            .expect("load thread");
        assert!(
            r.failures.is_empty(),
            "NBD requests failed while the monitor worked: {:?}",
            r.failures
        );
        r
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---- a raw monitor connection ----------------------------------------------

/// A unix or TCP stream.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn set_read_timeout(&self, t: Option<Duration>) {
        match self {
            Sock::Unix(s) => s.set_read_timeout(t).unwrap(),
            Sock::Tcp(s) => s.set_read_timeout(t).unwrap(),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) {
        match self {
            Sock::Unix(s) => s.set_write_timeout(t).unwrap(),
            Sock::Tcp(s) => s.set_write_timeout(t).unwrap(),
        }
    }
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
}

/// A monitor connection read line by line (lines keep their `\r\n`).
struct Monitor {
    s: Sock,
    buf: Vec<u8>,
    eof: bool,
}

impl Monitor {
    fn connect(path: &Path) -> Monitor {
        Monitor::new(Sock::Unix(
            UnixStream::connect(path).expect("monitor connect"),
        ))
    }

    fn new(s: Sock) -> Monitor {
        s.set_write_timeout(Some(Duration::from_secs(30)));
        Monitor {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next line within `t`, or `None` (nothing, or EOF).
    fn line_within(&mut self, t: Duration) -> Option<String> {
        let end = Instant::now() + t;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line).expect("UTF-8 line"));
            }
            let left = end.saturating_duration_since(Instant::now());
            if self.eof || left.is_zero() {
                return None;
            }
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let mut chunk = vec![0u8; 1 << 20];
            match self.s.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.eof = true,
            }
        }
    }

    fn line(&mut self) -> String {
        self.line_within(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no line from the monitor (eof: {})", self.eof))
    }

    /// Lines arriving within `t`.
    fn quiet(&mut self, t: Duration) -> Vec<String> {
        let end = Instant::now() + t;
        let mut v = Vec::new();
        while let Some(l) = self.line_within(end.saturating_duration_since(Instant::now())) {
            v.push(l);
        }
        v
    }

    fn send(&mut self, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            match self.s.write(&data[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("monitor write: {e}"),
            }
        }
    }

    /// Sends `line` (a newline added) and returns the next line.
    fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }

    /// Reads the greeting and negotiates.
    fn negotiate(&mut self) {
        let g = self.line();
        assert!(g.starts_with("{\"QMP\": {\"version\": {\"qemu\": "), "{g}");
        assert!(g.ends_with(", \"capabilities\": [\"oob\"]}}\r\n"), "{g}");
        assert_eq!(
            self.ask(r#"{"execute":"qmp_capabilities"}"#),
            "{\"return\": {}}\r\n"
        );
    }
}

fn generic(desc: &str, id: Option<&str>) -> String {
    let e = json!({"class": "GenericError", "desc": desc});
    match id {
        // QEMU puts the id first in error replies.
        Some(id) => format!("{{\"id\": {id}, \"error\": {}}}\r\n", qemu_json(&e)),
        None => format!("{{\"error\": {}}}\r\n", qemu_json(&e)),
    }
}

/// `v` written as QEMU writes JSON (`": "`, `", "`; these tests only use
/// ASCII).
fn qemu_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let members: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), qemu_json(v)))
                .collect();
            format!("{{{}}}", members.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(qemu_json).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

const NOT_NEGOTIATED: &str = "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n";

/// `quorum serve` over three images with a unix NBD socket and a unix QMP
/// socket: (server, NBD socket, QMP socket).
fn serve_qmp(tmp: &Tmp, images: &[PathBuf], extra: &[&str]) -> (Proc, PathBuf, PathBuf) {
    let nbd = tmp.path("nbd.sock");
    let qmp = tmp.path("qmp.sock");
    let mut args = vec![
        "--listen".to_string(),
        format!("unix:{}", nbd.display()),
        "--qmp".to_string(),
        format!("unix:{}", qmp.display()),
        "--node-name".to_string(),
        "quorum0".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    for (i, p) in images.iter().enumerate() {
        args.push(format!("c{i}={}", p.display()));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (p, _) = serve(tmp, &a);
    (p, nbd, qmp)
}

// ---- 1. a real client while NBD I/O runs ------------------------------------

/// R-QMP-1, R-QMP-2, R-MEMBER-1, R-MEMBER-2: QEMU's client library, as it
/// is, manages a serving device — query-named-block-nodes, blockdev-add of
/// a file child and of an NBD child (qemu-nbd), x-blockdev-change adds
/// (children.3, children.4) and deletes, QEMU's naming sequence (add → 3;
/// del 3; add → 3; del 1; add → 4), the threshold refusal, blockdev-del of
/// attached (refused) and detached nodes, quit (BLOCK_EXPORT_DELETED before
/// the reply, exit 0) — while an NBD client writes and reads back without
/// a single failed request, and its data reads back at the end from the
/// export and from the remaining children's images.
#[test]
fn r_qmp_1_2_r_member_1_2_real_client_manages_children_under_live_nbd_io() {
    if !tools(&["qemu-nbd"]) {
        return;
    }
    let Some(py) = python() else {
        return;
    };
    let tmp = Tmp::new("qmp-session");
    let size = 16 * MIB;
    let imgs = tmp.images(3, size);
    let new0 = tmp.path("new0.img");
    let nbd_img = tmp.path("nbdchild.img");
    image(&new0, size);
    image(&nbd_img, size);
    let nbd_child = tmp.path("qn.sock");
    let _qn = qemu_nbd(&tmp, &nbd_img, &nbd_child);
    let (mut server, nbd, qmp) = serve_qmp(&tmp, &imgs, &[]);
    let passes = tmp.path("passes");
    let base = MIB;
    let blocks = 64;
    let load = Load::start(&nbd, base, blocks, Some(passes.clone()));
    load.wait_passes(1);
    let cfg = |phase: &str| {
        json!({
            "phase": phase,
            "qmp": path_str(&qmp),
            "children": imgs.iter().map(|p| path_str(p)).collect::<Vec<_>>(),
            "new0": path_str(&new0),
            "nbd_child": path_str(&nbd_child),
            "size": size,
            "threshold": 2,
            "passes": path_str(&passes),
            "export_id": "export0",
        })
        .to_string()
    };
    let o = run_script(&py, "session.py", &[&cfg("changes")]);
    let log = String::from_utf8_lossy(&o.stdout).into_owned();
    for step in [
        "\"step\": \"query-named-block-nodes\"",
        "\"desc\": \"The number of children cannot be lower than the vote threshold 2\"",
        "\"desc\": \"Block device new0 is in use\"",
        "\"node\": \"n0\", \"step\": \"blockdev-del\"",
    ] {
        assert!(
            log.contains(step),
            "session.py did not report {step}:\n{log}"
        );
    }
    let report = load.finish();
    assert!(
        report.passes >= 8,
        "the NBD load barely ran: {} passes",
        report.passes
    );
    // The data reads back through a new connection, and from the images
    // of the two children left (c0, c2).
    let mut c = nbd_client(&nbd);
    let mut buf = vec![0u8; BLOCK];
    for (x, want) in report.model.iter().enumerate() {
        let off = base + (x * BLOCK) as u64;
        assert!(matches!(c.read(&mut buf, off, BLOCK), Ok(Ok(()))));
        assert!(buf == *want, "block {x} through NBD");
        for img in [&imgs[0], &imgs[2]] {
            assert!(
                read_at(img, off, BLOCK) == *want,
                "block {x} in {}",
                img.display()
            );
        }
    }
    let _ = c.disconnect();
    let o = run_script(&py, "session.py", &[&cfg("quit")]);
    let log = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(log.contains("\"step\": \"quit\""), "{log}");
    let st = wait_exit(&mut server);
    assert!(
        st.success(),
        "quit: exit {st:?}; log: {}",
        std::fs::read_to_string(tmp.path("serve.log")).unwrap_or_default()
    );
    assert!(!qmp.exists(), "the monitor socket is removed at exit");
}

// ---- 2. events and their throttling -----------------------------------------

/// One read through NBD: (start, end) wall-clock times; `ok` whether it
/// succeeded with the right data (zeroes).
fn timed_read(c: &mut Client<UnixStream>, off: u64, len: usize) -> (f64, f64, bool) {
    let mut buf = vec![0u8; len];
    let t0 = wall();
    let r = c.read(&mut buf, off, len);
    let t1 = wall();
    let ok = matches!(r, Ok(Ok(()))) && buf.iter().all(|&b| b == 0);
    (t0, t1, ok)
}

/// R-QMP-3: QUORUM_REPORT_BAD is throttled per node-name as QEMU does it —
/// the first at once, then at most one a second: the last event of each
/// period, sent when the period ends, with the timestamp of when it was
/// made (the read it is about), not of when it was sent. Two corrupted
/// children give two independent streams; QUORUM_FAILURE has its own
/// slot. A monitor that has not sent qmp_capabilities gets no event, and
/// none is replayed to it afterwards.
#[test]
fn r_qmp_3_events_throttled_per_node_first_at_once_last_of_each_second() {
    let Some(py) = python() else {
        return;
    };
    let tmp = Tmp::new("qmp-events");
    let imgs = tmp.images(3, 16 * MIB);
    // c1 differs at 1 MiB, c2 at 2 MiB; at 3 MiB all three differ.
    let k64 = vec![0u8; 64 << 10];
    let fill = |b: u8| vec![b; k64.len()];
    write_at(&imgs[1], MIB, &fill(0x11));
    write_at(&imgs[2], 2 * MIB, &fill(0x22));
    write_at(&imgs[1], 3 * MIB, &fill(0x33));
    write_at(&imgs[2], 3 * MIB, &fill(0x44));
    // --rewrite-corrupted is off: the corruption stays.
    let (_server, nbd, qmp) = serve_qmp(&tmp, &imgs, &[]);
    let mut unnegotiated = Monitor::connect(&qmp);
    let g = unnegotiated.line();
    assert!(g.starts_with("{\"QMP\": "), "{g}");

    let mut child = Proc(
        Command::new(&py)
            .arg(script("events.py"))
            .arg(&qmp)
            .arg("6.0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python"),
    );
    let out = child.0.stdout.take().expect("stdout");
    let err = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::BufReader::new(err).read_to_string(&mut s);
        s
    });
    let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    assert!(
        ready.contains("ready"),
        "events.py did not start: {ready:?}"
    );

    // One read with no quorum, then each corrupted range ten times in
    // about 2.5 s.
    let mut failing = nbd_client(&nbd);
    let mut buf = vec![0u8; 64 << 10];
    let f0 = wall();
    let r = failing.read(&mut buf, 3 * MIB, 64 << 10);
    let f1 = wall();
    assert!(matches!(r, Ok(Err(_))), "no quorum: the read fails: {r:?}");
    let mut c = nbd_client(&nbd);
    let mut reads: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..10 {
        for (i, off) in [MIB, 2 * MIB].into_iter().enumerate() {
            let (t0, t1, ok) = timed_read(&mut c, off, 64 << 10);
            assert!(ok, "the majority's data at {off}");
            reads[i].push((t0, t1));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut lines = Vec::new();
    let t = Instant::now();
    while !lines.iter().any(|l: &String| l.contains("\"done\"")) {
        assert!(t.elapsed() < Duration::from_secs(30), "events.py hangs");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    let st = wait_exit(&mut child);
    let all = format!(
        "{}\n--- stderr ---\n{}",
        lines.join("\n"),
        err_text.join().unwrap_or_default()
    );
    assert!(st.success(), "events.py: {st:?}\n{all}");
    let events: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect();

    // QUORUM_FAILURE: one, at once, QEMU's members.
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "QUORUM_FAILURE")
        .collect();
    assert_eq!(failures.len(), 1, "{all}");
    assert_eq!(
        failures[0]["data"],
        json!({"reference": "quorum0", "sector-num": 6144, "sectors-count": 128}),
        "{all}"
    );
    let fe = &failures[0];
    assert!(
        fe["arrival"].as_f64().unwrap() - f1 < 0.5,
        "FAILURE at once: {all}"
    );
    let fts = fe["ts"].as_f64().unwrap();
    assert!(
        fts >= f0 - 0.05 && fts <= f1 + 0.05,
        "FAILURE's timestamp: {all}"
    );

    for (i, (node, sector)) in [("c1", 2048), ("c2", 4096)].into_iter().enumerate() {
        let ev: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "QUORUM_REPORT_BAD" && e["data"]["node-name"] == node)
            .collect();
        let rd = &reads[i];
        // Ten reads over ~2.5 s: at 0, ~1, ~2 and ~3 s; never ten.
        assert!(
            (3..=5).contains(&ev.len()),
            "{node}: {} events for 10 reads in 2.5 s:\n{all}",
            ev.len()
        );
        for e in &ev {
            assert_eq!(
                e["data"],
                json!({"node-name": node, "sector-num": sector, "sectors-count": 128, "type": "read"}),
                "{all}"
            );
        }
        let arrival = |k: usize| ev[k]["arrival"].as_f64().unwrap();
        let ts = |k: usize| ev[k]["ts"].as_f64().unwrap();
        // The first at once (its own stream: the other node's does not
        // hold it back).
        assert!(
            arrival(0) - rd[0].1 < 0.5,
            "{node}: the first event at once:\n{all}"
        );
        assert!(ts(0) >= rd[0].0 - 0.05 && ts(0) <= rd[0].1 + 0.05, "{all}");
        for k in 1..ev.len() {
            let gap = arrival(k) - arrival(k - 1);
            assert!(
                (0.8..=1.4).contains(&gap),
                "{node}: events {k} and {} {gap:.3} s apart, not one a second:\n{all}",
                k - 1
            );
            // Its timestamp is a read's (when the event was made) ...
            let j = rd
                .iter()
                .position(|&(a, b)| ts(k) >= a - 0.05 && ts(k) <= b + 0.05)
                .unwrap_or_else(|| {
                    panic!("{node}: event {k}'s timestamp is no read's time:\n{all}")
                });
            assert!(ts(k) <= arrival(k), "{all}");
            // ... the last read before it was sent (held events replace
            // each other).
            assert!(
                !rd[j + 1..].iter().any(|&(_, end)| end < arrival(k) - 0.15),
                "{node}: event {k} is not the last of its period:\n{all}"
            );
        }
    }
    assert_eq!(
        events.len(),
        1 + events
            .iter()
            .filter(|e| e["event"] == "QUORUM_REPORT_BAD"
                && (e["data"]["node-name"] == "c1" || e["data"]["node-name"] == "c2"))
            .count(),
        "no other events: {all}"
    );

    // The monitor that never negotiated got nothing, and gets no replay.
    let got = unnegotiated.quiet(Duration::from_millis(100));
    assert!(got.is_empty(), "events before negotiation: {got:?}");
    assert_eq!(
        unnegotiated.ask(r#"{"execute":"qmp_capabilities"}"#),
        "{\"return\": {}}\r\n"
    );
    let got = unnegotiated.quiet(Duration::from_millis(300));
    assert!(got.is_empty(), "replayed: {got:?}");
    // Negotiated now, it gets the next one at once (once c1's last period
    // has ended), as QEMU writes it.
    let last = events
        .iter()
        .filter(|e| e["data"]["node-name"] == "c1")
        .filter_map(|e| e["arrival"].as_f64())
        .fold(0.0, f64::max);
    while wall() < last + 1.2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, t1, ok) = timed_read(&mut c, MIB, 64 << 10);
    assert!(ok);
    let e = unnegotiated
        .line_within(Duration::from_secs(1))
        .expect("an event at once");
    assert!(wall() - t1 < 1.0);
    assert!(e.starts_with("{\"timestamp\": {\"seconds\": "), "{e}");
    assert!(
        e.ends_with(", \"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"node-name\": \"c1\", \"sectors-count\": 128, \"sector-num\": 2048, \"type\": \"read\"}}\r\n"),
        "{e}"
    );
}

// ---- 3. the same conversation against qemu-storage-daemon -------------------

/// R-QMP-1, R-QMP-2, R-QMP-3: one conversation (tests/qmp/differential.py)
/// against qemu-storage-daemon and `quorum serve`, both a quorum node
/// `quorum0` over file nodes c0..c2 exported as `e0`: QEMU's client
/// library, then raw bytes — greeting, negotiation, ids of every JSON
/// type, unknown commands, bad arguments, malformed JSON, the queries,
/// blockdev-add and its refusals, x-blockdev-change with R-MEMBER-1's
/// names and every refusal (R-MEMBER-2/3), blockdev-del, a corrupted read's
/// QUORUM_REPORT_BAD and a QUORUM_FAILURE, quit. Every difference is
/// printed; any one not in the script's allow-list fails the test.
#[test]
fn r_qmp_1_2_3_differential_same_conversation_as_qemu_storage_daemon() {
    if !tools(&["qemu-storage-daemon", "qemu-io"]) {
        return;
    }
    let Some(py) = python() else {
        return;
    };
    let tmp = Tmp::new("qmp-diff");
    let (qd, sd) = (tmp.path("q"), tmp.path("s"));
    for d in [&qd, &sd] {
        std::fs::create_dir_all(d).unwrap();
        for n in ["r0", "r1", "r2", "new0", "new1", "new2", "new9"] {
            image(&d.join(format!("{n}.img")), 4 * MIB);
        }
    }
    // qemu-storage-daemon: file nodes c0..c2 under quorum0, exported as e0.
    let mut args: Vec<String> = Vec::new();
    for i in 0..3 {
        args.push("--blockdev".into());
        args.push(format!(
            "driver=file,node-name=c{i},filename={}/r{i}.img",
            qd.display()
        ));
    }
    args.push("--blockdev".into());
    args.push(
        r#"{"driver":"quorum","node-name":"quorum0","vote-threshold":2,"children":["c0","c1","c2"]}"#
            .into(),
    );
    args.push("--nbd-server".into());
    args.push(format!(
        "addr.type=unix,addr.path={}/nbd.sock",
        qd.display()
    ));
    args.push("--export".into());
    args.push("type=nbd,id=e0,node-name=quorum0,writable=on".into());
    args.push("--chardev".into());
    args.push(format!(
        "socket,id=m0,path={}/qmp.sock,server=on,wait=off",
        qd.display()
    ));
    args.push("--monitor".into());
    args.push("chardev=m0,mode=control".into());
    let qlog = tmp.path("qsd.log");
    let mut qsd = Proc(
        Command::new("qemu-storage-daemon")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qlog).unwrap())
            .spawn()
            .expect("qemu-storage-daemon starts"),
    );
    wait_for_path(&qd.join("qmp.sock"), "qemu-storage-daemon", &mut qsd, &qlog);
    wait_for_path(&qd.join("nbd.sock"), "qemu-storage-daemon", &mut qsd, &qlog);
    let imgs: Vec<PathBuf> = (0..3).map(|i| sd.join(format!("r{i}.img"))).collect();
    let snbd = sd.join("nbd.sock");
    let sqmp = sd.join("qmp.sock");
    let mut a = vec![
        "--listen".to_string(),
        format!("unix:{}", snbd.display()),
        "--qmp".into(),
        format!("unix:{}", sqmp.display()),
        "--node-name".into(),
        "quorum0".into(),
        "--export-id".into(),
        "e0".into(),
    ];
    for (i, p) in imgs.iter().enumerate() {
        a.push(format!("c{i}={}", p.display()));
    }
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (mut server, _) = serve(&tmp, &a);
    let cfg = json!({
        "sides": {
            "qemu": {
                "qmp": path_str(&qd.join("qmp.sock")),
                "nbd": format!("nbd+unix:///quorum0?socket={}/nbd.sock", qd.display()),
                "dir": path_str(&qd),
            },
            "quorum": {
                "qmp": path_str(&sqmp),
                "nbd": format!("nbd+unix:///?socket={}", snbd.display()),
                "dir": path_str(&sd),
            },
        },
        "qemu_io": "qemu-io",
    })
    .to_string();
    let o = run(Command::new(&py).arg(script("differential.py")).arg(&cfg));
    let text = shown(&o);
    assert!(
        o.status.success(),
        "quorum serve's QMP differs from qemu-storage-daemon's (lines with \"allowed\": null):\n{text}"
    );
    // The allowed differences (cargo test -- --nocapture shows them).
    println!("{text}");
    let qst = wait_exit(&mut qsd);
    let sst = wait_exit(&mut server);
    assert!(qst.success() && sst.success(), "quit: {qst:?} {sst:?}");
}

// ---- 4. bad input over raw sockets ------------------------------------------

/// R-QMP-1: QEMU's replies to bad input, byte for byte — a command before
/// qmp_capabilities, malformed JSON, unknown commands, wrong argument
/// types, missing arguments, two commands in one write, one command over
/// two writes, a 1 MiB and a 20 MiB line — and several monitors at once,
/// each negotiating on its own, replies to the sender only, events to
/// every negotiated monitor; an NBD client's requests all succeed
/// meanwhile.
#[test]
fn r_qmp_1_bad_input_and_several_monitors_while_nbd_serves() {
    let tmp = Tmp::new("qmp-raw");
    let imgs = tmp.images(3, 16 * MIB);
    let (mut server, nbd, qmp) = serve_qmp(&tmp, &imgs, &[]);
    let load = Load::start(&nbd, 4 * MIB, 64, None);
    load.wait_passes(1);

    let mut a = Monitor::connect(&qmp);
    // A second monitor, connected at the same time, negotiates on its own.
    let mut b = Monitor::connect(&qmp);
    assert!(b.line().starts_with("{\"QMP\": "));
    let g = a.line();
    assert!(g.starts_with("{\"QMP\": {\"version\": {\"qemu\": "), "{g}");
    assert_eq!(a.ask(r#"{"execute":"query-version"}"#), NOT_NEGOTIATED);
    assert_eq!(
        a.ask(r#"{"execute":"quit","id":7}"#),
        NOT_NEGOTIATED.replacen("{", "{\"id\": 7, ", 1)
    );
    assert_eq!(
        a.ask(r#"{"execute":"qmp_capabilities","id":1}"#),
        "{\"return\": {}, \"id\": 1}\r\n"
    );
    assert_eq!(b.ask(r#"{"execute":"query-version"}"#), NOT_NEGOTIATED);
    assert_eq!(
        b.ask(r#"{"execute":"qmp_capabilities"}"#),
        "{\"return\": {}}\r\n"
    );
    assert_eq!(
        a.ask(r#"{"execute":"qmp_capabilities"}"#),
        "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already complete, command ignored\"}}\r\n"
    );

    // Malformed JSON, unknown commands, bad arguments.
    for (input, want) in [
        (
            r#"{"execute":}"#,
            generic("JSON parse error, expecting value", None),
        ),
        (
            r#"{"execute" "query-version"}"#,
            generic("JSON parse error, missing : in object pair", None),
        ),
        ("@", generic("JSON parse error, stray '@'", None)),
        ("xyz", generic("JSON parse error, invalid keyword 'xyz'", None)),
        (
            r#"{"a":1,"a":2}"#,
            generic("JSON parse error, duplicate key", None),
        ),
        ("[1,2]", generic("QMP input must be a JSON object", None)),
        (
            r#"{"id":"x"}"#,
            generic("QMP input lacks member 'execute'", Some("\"x\"")),
        ),
        (
            r#"{"execute":5}"#,
            generic("QMP input member 'execute' must be a string", None),
        ),
        (
            r#"{"execute":"nope","id":2}"#,
            "{\"id\": 2, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n".to_string(),
        ),
        (
            r#"{"execute":"x-blockdev-change","arguments":{"parent":5}}"#,
            generic("Invalid parameter type for 'parent', expected: string", None),
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"x","filename":["a"]}}"#,
            generic("Invalid parameter type for 'filename', expected: string", None),
        ),
        (
            r#"{"execute":"query-named-block-nodes","arguments":{"flat":1}}"#,
            generic("Invalid parameter type for 'flat', expected: boolean", None),
        ),
        (
            r#"{"execute":"blockdev-del"}"#,
            generic("Parameter 'node-name' is missing", None),
        ),
        (
            r#"{"execute":"x-blockdev-change","arguments":{"child":"children.0"}}"#,
            generic("Parameter 'parent' is missing", None),
        ),
        (
            r#"{"execute":"query-version","arguments":{"x":1}}"#,
            generic("Parameter 'x' is unexpected", None),
        ),
    ] {
        assert_eq!(a.ask(input), want, "{input}");
    }

    // Two commands in one write; one command over two writes.
    a.send(b"{\"execute\":\"nope\",\"id\":\"one\"}{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":\"ghost\"},\"id\":\"two\"}\n");
    assert!(a.line().starts_with("{\"id\": \"one\", \"error\""));
    assert_eq!(
        a.line(),
        generic(
            "Failed to find node with node-name='ghost'",
            Some("\"two\"")
        )
    );
    a.send(b"{\"execute\":\"blockdev-del\",\"argu");
    assert!(a.quiet(Duration::from_millis(300)).is_empty());
    a.send(b"ments\":{\"node-name\":\"c0\"},\"id\":\"split\"}\n");
    assert_eq!(
        a.line(),
        generic("Block device c0 is in use", Some("\"split\""))
    );

    // A 1 MiB string argument, echoed in the error text.
    let name = "n".repeat(MIB as usize);
    let t = Instant::now();
    assert_eq!(
        a.ask(&format!(
            r#"{{"execute":"blockdev-del","arguments":{{"node-name":"{name}"}},"id":"big1"}}"#
        )),
        generic(
            &format!("Failed to find node with node-name='{name}'"),
            Some("\"big1\"")
        )
    );
    // A 20 MiB line: QEMU reads up to 64 MiB a token.
    let pad = "p".repeat(20 * MIB as usize);
    assert_eq!(
        a.ask(&format!(
            r#"{{"execute":"query-version","arguments":{{"pad":"{pad}"}},"id":"big20"}}"#
        )),
        generic("Parameter 'pad' is unexpected", Some("\"big20\""))
    );
    drop(pad);
    eprintln!("1 MiB and 20 MiB lines answered in {:?}", t.elapsed());
    assert!(
        a.ask(r#"{"execute":"query-version"}"#)
            .starts_with("{\"return\": {\"qemu\": ")
    );

    // Replies go to the sender only; events go to every negotiated monitor.
    assert!(b.quiet(Duration::from_millis(100)).is_empty());
    write_at(&imgs[2], 0, &vec![0xAB; 64 << 10]);
    let mut c = nbd_client(&nbd);
    let (_, _, ok) = timed_read(&mut c, 0, 64 << 10);
    assert!(ok, "the majority's data");
    let ea = a.line_within(Duration::from_secs(2)).expect("event on A");
    let eb = b.line_within(Duration::from_secs(2)).expect("event on B");
    assert_eq!(ea, eb, "the same event line on both monitors");
    assert!(
        ea.starts_with("{\"timestamp\": {\"seconds\": ")
            && ea.ends_with(", \"event\": \"QUORUM_REPORT_BAD\", \"data\": {\"node-name\": \"c2\", \"sectors-count\": 128, \"sector-num\": 0, \"type\": \"read\"}}\r\n"),
        "{ea}"
    );
    let _ = c.disconnect();

    let report = load.finish();
    assert!(report.ops > 0);
    // quit on A: the export goes (to both monitors), then A's reply; the
    // server exits 0.
    a.send(b"{\"execute\":\"quit\",\"id\":\"bye\"}\n");
    let ev = a.line();
    assert!(
        ev.ends_with(", \"event\": \"BLOCK_EXPORT_DELETED\", \"data\": {\"id\": \"export0\"}}\r\n"),
        "{ev}"
    );
    assert_eq!(a.line(), "{\"return\": {}, \"id\": \"bye\"}\r\n");
    assert_eq!(b.line(), ev);
    let st = wait_exit(&mut server);
    assert!(st.success(), "{st:?}");
    assert!(a.line_within(Duration::from_secs(5)).is_none() && a.eof);
    assert!(b.line_within(Duration::from_secs(5)).is_none() && b.eof);
}

/// R-QMP-1: a monitor that sends and never reads while replies and events
/// pile up for it is cut off once 16 MiB are unread — without having to
/// read — and nothing else suffers: other monitors, new monitors and the
/// NBD clients carry on, memory stays bounded.
#[test]
fn r_qmp_1_a_monitor_that_never_reads_is_disconnected() {
    let tmp = Tmp::new("qmp-stuck");
    let imgs = tmp.images(3, 16 * MIB);
    write_at(&imgs[2], 0, &vec![0xAB; 64 << 10]);
    let (mut server, nbd, qmp) = serve_qmp(&tmp, &imgs, &[]);
    let pid = server.0.id();
    let load = Load::start(&nbd, 4 * MIB, 64, None);
    let mut a = Monitor::connect(&qmp);
    a.negotiate();
    let mut stuck = Monitor::connect(&qmp);
    stuck.negotiate();
    // Requests of 38 bytes whose replies are ~3 KiB, sent without reading
    // until the server stops reading them (or 48 MiB of replies).
    let batch = "{\"execute\":\"query-named-block-nodes\"}\n".repeat(1000);
    stuck.s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut sent = 0usize;
    let mut refused = None;
    let t = Instant::now();
    'flood: while sent < 16_000 {
        let mut done = 0;
        while done < batch.len() {
            match stuck.s.write(&batch.as_bytes()[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    refused = Some(e.kind());
                    break 'flood;
                }
            }
        }
        sent += 1000;
    }
    // Events pile up for it too.
    let mut c = nbd_client(&nbd);
    let _ = timed_read(&mut c, 0, 64 << 10);
    eprintln!(
        "stuck monitor: {sent} requests sent in {:?}, then {refused:?}",
        t.elapsed()
    );
    // Meanwhile the other monitor answers, and gets the event.
    let e = a.line_within(Duration::from_secs(2)).expect("event on A");
    assert!(e.contains("QUORUM_REPORT_BAD"), "{e}");
    assert!(
        a.ask(r#"{"execute":"query-version"}"#)
            .starts_with("{\"return\": ")
    );
    // The server closes the stuck monitor: its writes fail (EPIPE), with
    // no read needed.
    stuck.s.set_write_timeout(Some(Duration::from_millis(200)));
    let t = Instant::now();
    let mut closed = None;
    while closed.is_none() && t.elapsed() < Duration::from_secs(10) {
        match stuck.s.write(b"{\"execute\":\"query-version\"}\n") {
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                closed = Some(e.kind())
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let rss = rss_kib(pid);
    // Still serving: a new monitor, the old one, the NBD client.
    let mut d = Monitor::connect(&qmp);
    d.negotiate();
    assert!(
        a.ask(r#"{"execute":"query-named-block-nodes"}"#)
            .starts_with("{\"return\": [")
    );
    let report = load.finish();
    assert!(report.ops > 0);
    assert!(server.alive());
    assert!(rss < 512 * 1024, "RSS {rss} KiB after the flood");
    assert!(
        closed.is_some(),
        "a monitor with {sent} replies of ~3 KiB unread is still open 10 s later \
         (its writes time out: the server stopped reading it but did not close it)"
    );
    // What it can still read is bounded, then EOF.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    stuck.s.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        match stuck.s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 24 << 20, "{total} bytes left for the stuck monitor");
}

/// R-QMP-1: a monitor listens on unix:PATH or loopback only —
/// `--qmp 0.0.0.0:PORT` is refused at startup (exit 1, one line on
/// stderr, nothing served); `--qmp 127.0.0.1:0` serves QMP over TCP.
#[test]
fn r_qmp_1_monitor_on_loopback_or_unix_only() {
    let tmp = Tmp::new("qmp-addr");
    let imgs = tmp.images(3, MIB);
    let nbd = tmp.path("nbd.sock");
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let o = run(Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", nbd.display()))
            .arg("--qmp")
            .arg(addr)
            .args(&imgs));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{addr}: {}", shown(&o));
        assert_eq!(err.lines().count(), 1, "{addr}: one line: {err:?}");
        assert!(
            err.starts_with("quorum serve: --qmp ") && err.contains(addr),
            "{err:?}"
        );
        assert!(o.stdout.is_empty(), "{addr}: {}", shown(&o));
        assert!(!nbd.exists(), "{addr}: nothing is served");
    }
    // Loopback TCP works; the port is in the log.
    let a = [
        "--listen".to_string(),
        format!("unix:{}", nbd.display()),
        "--qmp".into(),
        "127.0.0.1:0".into(),
    ];
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let imgs_s = strs(&imgs);
    a.extend(imgs_s.iter().map(String::as_str));
    let (mut server, _) = serve(&tmp, &a);
    let log = tmp.path("serve.log");
    let t = Instant::now();
    let port = loop {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(p) = l
            .lines()
            .find_map(|l| l.strip_prefix("quorum serve: QMP monitor on 127.0.0.1:"))
        {
            break p.trim().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no QMP line: {l}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let s = TcpStream::connect(format!("127.0.0.1:{port}")).expect("QMP over TCP");
    let mut m = Monitor::new(Sock::Tcp(s));
    m.negotiate();
    let ev = m.ask(r#"{"execute":"quit","id":1}"#);
    assert!(ev.contains("\"event\": \"BLOCK_EXPORT_DELETED\""), "{ev}");
    assert_eq!(m.line(), "{\"return\": {}, \"id\": 1}\r\n");
    let st = wait_exit(&mut server);
    assert!(st.success(), "{st:?}");
}
