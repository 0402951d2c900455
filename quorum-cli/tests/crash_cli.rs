//! `kill -9` of `quorum serve --map` under load, then a restart on the
//! same children and the same map (SPEC R-SYNC-2, R-SYNC-3, R-SYNC-6,
//! R-SYNC-7, R-SYNC-8; DESIGN "Real clients and real hosts in tests",
//! crashes).
//!
//! - Under fio's writes (its `nbd` engine, `verify=crc32c` blocks, a
//!   flush every 32 writes), over raw file children and over `qemu-nbd`
//!   children, killed at 20 moments in all (150 ms to 3 s after fio's
//!   first write reaches a child; fio's seeds fixed per round):
//!   - before the restart, the map file opens (R-SYNC-6) and every chunk
//!     where the children differ is one it calls unsettled (R-SYNC-2);
//!   - every write fio saw acknowledged is there after the restart — those
//!     acknowledged before a completed flush, which survive any crash, and
//!     the others too: a process crash leaves the children everything they
//!     acknowledged, a majority of them for each write (fio's completion
//!     log has no flushes in it, so the test holds them all to it); every
//!     other block holds its old data or the round's, whole, never a third
//!     value;
//!   - reads of unsettled chunks answered while the settle pass runs
//!     (R-SYNC-3) are what the children hold after it;
//!   - the settle pass at startup (a block job `resync` of type
//!     `x-resync`) has the `len` of exactly the chunks the map calls
//!     unsettled (R-SYNC-8) — within the region fio writes, an eighth of
//!     the device — and leaves the children identical.
//! - During the rebuild of a child added over QMP: restarted with that
//!   child on the command line, the rebuild resumes where the map file
//!   says it stopped, a client writing through both lives of the server
//!   sees no error reply, the job ends with `offset` = `len`, and all four
//!   children end identical.
//!
//! fio's own `--verify_only` with a saved verify state is no judge here:
//! after the NBD connection dies fio's state counts every write of the job
//! as issued, so it checks blocks never written. Instead fio logs each
//! completed write (`--write_lat_log` with `--log_offset`: only writes
//! that succeeded are logged), and the blocks are checked here against
//! fio's verify format: the header's magic and offset, and the round's
//! `--verify_pattern` in every byte after the headers.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use quorum_nbd::client::Client;
use quorum_sync::sync::MapFile;
use serde_json::{Value, json};

/// The device (each child, sparse) and the region fio writes: whatever
/// the write rate, a settle pass stays within the region, an eighth of
/// the device.
const DEV: u64 = 256 << 20;
const REGION: u64 = 32 << 20;
/// The device of the rebuild test (filled, then copied whole).
const REBUILD_DEV: u64 = 64 << 20;
const BS: usize = 4096;
/// The map's chunk: small, so the settle figure says something.
const CHUNK: u64 = 64 << 10;
/// fio's verify header (`struct verify_header`, 40 bytes) and the
/// crc32c one after it (4): the pattern fills the rest.
const FIO_HEADERS: usize = 44;
const FIO_MAGIC: u16 = 0xacca;

// ---- QMP over a unix socket -------------------------------------------------

/// A QMP session: one JSON object a line; events are kept aside.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects (the monitor may not listen yet), reads the greeting and
    /// leaves capabilities negotiation.
    fn connect(path: &Path) -> Qmp {
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(20),
                        "QMP {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
        };
        let greeting = q.line().expect("QMP greeting");
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        q.ok("qmp_capabilities", None);
        q
    }

    fn line(&mut self) -> Option<Value> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))),
        }
    }

    /// `execute` with `arguments`: `Ok(return)` or `Err(error)`.
    fn execute(&mut self, execute: &str, arguments: Option<Value>) -> Result<Value, Value> {
        let mut cmd = json!({ "execute": execute });
        if let Some(a) = arguments {
            cmd["arguments"] = a;
        }
        let mut line = cmd.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).expect("QMP send");
        loop {
            let v = self
                .line()
                .unwrap_or_else(|| panic!("QMP closed before answering {execute}"));
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(e.clone());
            } else {
                panic!("QMP: unexpected {v}");
            }
        }
    }

    fn ok(&mut self, execute: &str, arguments: Option<Value>) -> Value {
        self.execute(execute, arguments)
            .unwrap_or_else(|e| panic!("{execute}: {e}"))
    }

    /// `query-named-block-nodes`: (node name, x-sync, x-stale-bytes) of
    /// every node that has `x-sync` (the children).
    fn sync_states(&mut self) -> Vec<(String, String, u64)> {
        let nodes = self.ok("query-named-block-nodes", None);
        nodes
            .as_array()
            .expect("node list")
            .iter()
            .filter_map(|n| {
                Some((
                    n["node-name"].as_str()?.to_string(),
                    n.get("x-sync")?.as_str()?.to_string(),
                    n.get("x-stale-bytes")?.as_u64()?,
                ))
            })
            .collect()
    }

    /// The one job `query-block-jobs` lists, checked to be the resync.
    fn job(&mut self) -> Option<Value> {
        let jobs = self.ok("query-block-jobs", None);
        let jobs = jobs.as_array().expect("job list");
        assert!(jobs.len() <= 1, "one resync job at most: {jobs:?}");
        let j = jobs.first()?.clone();
        assert_eq!(j["device"], "resync", "{j}");
        assert_eq!(j["type"], "x-resync", "{j}");
        assert!(j["offset"].as_u64() <= j["len"].as_u64(), "{j}");
        Some(j)
    }
}

// ---- the settle pass at startup ---------------------------------------------

/// What the settle pass at a restart did.
#[derive(Debug, Default)]
struct Settle {
    /// The largest `len` seen in `query-block-jobs` (0 if the job was
    /// never seen there).
    job_len: u64,
    /// The bytes of each "resync done: N bytes" line of the log.
    done: Vec<u64>,
    /// BLOCK_JOB_COMPLETED events received (their data).
    completed: Vec<Value>,
    /// Chunks the pass left without quorum (the log's "N chunk(s) left
    /// without quorum").
    left: u64,
}

impl Settle {
    /// The settle pass's size, from whichever source saw it.
    fn len(&self) -> u64 {
        self.done
            .iter()
            .copied()
            .chain(self.completed.iter().filter_map(|d| d["len"].as_u64()))
            .chain([self.job_len])
            .max()
            .unwrap_or(0)
    }
}

/// The bytes of each "resync done" line of the log, and the chunks those
/// lines say were left without quorum.
fn done_lines(log: &Path) -> (Vec<u64>, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut left = 0;
    let done = text
        .lines()
        .filter_map(|l| l.strip_prefix("quorum serve: resync done: "))
        .map(|l| {
            if let Some((_, tail)) = l.split_once(", ") {
                left += tail
                    .strip_suffix(" chunk(s) left without quorum")
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("resync line: {l}"));
            }
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("resync line: {l}"))
        })
        .collect();
    (done, left)
}

/// Waits for the settle pass that follows a restart: the job seen in
/// `query-block-jobs` until it is gone, or its "resync done" line in the
/// log (it may end before the monitor answers); when neither shows within
/// 3 s there was nothing to settle (the job starts within 200 ms).
fn wait_settled(q: &mut Qmp, p: &mut Proc, log: &Path) -> Settle {
    let t = Instant::now();
    let mut s = Settle::default();
    let mut seen = false;
    loop {
        assert!(p.alive(), "quorum serve died: {}", read_log(log));
        let job = q.job();
        if let Some(j) = &job {
            seen = true;
            s.job_len = s.job_len.max(j["len"].as_u64().expect("len"));
        }
        (s.done, s.left) = done_lines(log);
        if job.is_none() && (!s.done.is_empty() || (!seen && t.elapsed() > Duration::from_secs(3)))
        {
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "the settle pass did not end: {}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for e in q.events.drain(..) {
        if e["event"] == "BLOCK_JOB_COMPLETED" {
            let d = &e["data"];
            assert_eq!(d["device"], "resync", "{e}");
            assert_eq!(d["type"], "x-resync", "{e}");
            if s.left == 0 {
                assert_eq!(d["offset"], d["len"], "a completed job did all: {e}");
                assert!(d.get("error").is_none(), "{e}");
            } else {
                // What it could not settle is left to do, and said.
                assert!(d["offset"].as_u64() < d["len"].as_u64(), "{e}");
                assert!(d["error"].is_string(), "{e}");
            }
            for k in ["len", "offset", "speed"] {
                assert!(d[k].is_u64(), "{e}");
            }
            s.completed.push(d.clone());
        }
    }
    s
}

fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Every child node in sync: `x-sync` "in-sync", no stale bytes.
fn all_in_sync(q: &mut Qmp, want: usize) {
    let st = q.sync_states();
    assert_eq!(st.len(), want, "{st:?}");
    for (n, state, stale) in &st {
        assert!(state == "in-sync" && *stale == 0, "{n}: {state}, {stale}");
    }
}

// ---- children and images ----------------------------------------------------

/// `qemu-nbd` serving `image` on `sock`, reconnectable (`-t`).
fn qemu_nbd(image: &Path, sock: &Path, log: &Path) -> Proc {
    let c = Command::new("qemu-nbd")
        .args(["-f", "raw", "-t", "-k"])
        .arg(sock)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("qemu-nbd starts");
    let mut p = Proc(c);
    let t = Instant::now();
    while !sock.exists() {
        assert!(p.alive(), "qemu-nbd exited: {}", read_log(log));
        assert!(t.elapsed() < Duration::from_secs(20), "qemu-nbd: no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    p
}

/// When each image was last written: a change means a write reached it.
fn mtimes(imgs: &[PathBuf]) -> Vec<std::time::SystemTime> {
    imgs.iter()
        .map(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("image mtime")
        })
        .collect()
}

/// The images identical, byte for byte (read 4 MiB at a time).
fn identical(imgs: &[PathBuf]) {
    let len = std::fs::metadata(&imgs[0]).expect("image").len();
    for p in &imgs[1..] {
        assert_eq!(std::fs::metadata(p).expect("image").len(), len);
    }
    let step = 4u64 << 20;
    for at in (0..len).step_by(step as usize) {
        let n = step.min(len - at) as usize;
        let first = read_at(&imgs[0], at, n);
        for p in &imgs[1..] {
            let other = read_at(p, at, n);
            if first == other {
                continue; // memcmp; the search below is slow in a debug build
            }
            let i = at + first.iter().zip(&other).position(|(a, b)| a != b).unwrap() as u64;
            panic!(
                "{} and {} differ at byte {i} (chunk {})",
                imgs[0].display(),
                p.display(),
                i / CHUNK
            );
        }
    }
}

/// The chunks of the first `len` bytes whose copies, one per image, `pick`
/// picks.
fn chunks_where(imgs: &[PathBuf], len: u64, pick: impl Fn(&[&[u8]]) -> bool) -> Vec<u64> {
    let data: Vec<Vec<u8>> = imgs.iter().map(|p| read_at(p, 0, len as usize)).collect();
    let c = CHUNK as usize;
    (0..len / CHUNK)
        .filter(|&i| {
            let r = i as usize * c..(i as usize + 1) * c;
            let copies: Vec<&[u8]> = data.iter().map(|d| &d[r.clone()]).collect();
            pick(&copies)
        })
        .collect()
}

/// The chunks of the first `len` bytes where the images do not all hold
/// the same data.
fn differing_chunks(imgs: &[PathBuf], len: u64) -> Vec<u64> {
    chunks_where(imgs, len, |c| c[1..].iter().any(|d| *d != c[0]))
}

/// The chunks of the first `len` bytes where no two images hold the same
/// data: no version has the threshold (2) behind it.
fn without_majority(imgs: &[PathBuf], len: u64) -> Vec<u64> {
    chunks_where(imgs, len, |c| {
        !c.iter()
            .enumerate()
            .any(|(a, x)| c[a + 1..].iter().any(|y| y == x))
    })
}

/// The map file as the crash left it: the chunks it calls unsettled, after
/// checking that it opens, is for `children` children and marks none of
/// them stale (no child failed).
fn map_after_crash(map: &Path, children: usize) -> BTreeSet<u64> {
    let (_, m, names) =
        MapFile::open(map).unwrap_or_else(|e| panic!("R-SYNC-6: the map opens after a crash: {e}"));
    assert_eq!(names.len(), children, "{names:?}");
    assert_eq!((m.size(), m.chunk()), (DEV, CHUNK));
    for id in m.children() {
        let stale = m.stale_of(id).map_or(0, |b| b.count());
        assert_eq!(
            stale, 0,
            "child {id}: {stale} chunks stale, no child failed"
        );
    }
    (0..m.chunks()).filter(|&i| m.unsettled().get(i)).collect()
}

// ---- fio ----------------------------------------------------------------------

/// The 4 bytes of round `round`'s `--verify_pattern` as fio writes them.
fn pattern(round: u32) -> [u8; 4] {
    [0xa5, round as u8, 0x5a, 0xc3]
}

/// fio's randwrite job through `url` in `dir`: 4 KiB writes 16 deep over
/// the first [`REGION`] bytes, fio's verify blocks with this round's
/// pattern, a flush every 32 writes, each completed write logged.
fn fio(dir: &Path, sock: &Path, round: u32) -> Child {
    let p = pattern(round);
    let pat = format!("0x{:02x}{:02x}{:02x}{:02x}", p[0], p[1], p[2], p[3]);
    Command::new("fio")
        .current_dir(dir)
        .args([
            "--name=crash",
            "--ioengine=nbd",
            &format!("--uri=nbd+unix:///?socket={}", sock.display()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            &format!("--size={REGION}"),
            "--time_based",
            "--runtime=30",
            "--verify=crc32c",
            &format!("--verify_pattern={pat}"),
            "--do_verify=0",
            "--verify_state_save=0",
            "--fsync=32",
            &format!("--randseed={}", 1000 + round),
            "--write_lat_log=acked",
            "--log_offset=1",
            "--output=fio.out",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fio.err")).expect("log"))
        .spawn()
        .expect("fio starts")
}

/// The offsets of the writes fio logged as completed (`time, value, ddir,
/// bs, offset, ...` with ddir 1: a write).
fn acked(dir: &Path) -> BTreeSet<u64> {
    let log = std::fs::read_to_string(dir.join("acked_clat.1.log")).unwrap_or_else(|e| {
        panic!(
            "fio's completion log: {e}; fio said: {}",
            read_log(&dir.join("fio.err"))
        )
    });
    let mut out = BTreeSet::new();
    for l in log.lines() {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        assert!(f.len() >= 5, "clat log line {l:?}");
        if f[2] != "1" {
            continue;
        }
        assert_eq!(f[3], "4096", "{l:?}");
        let off: u64 = f[4].parse().expect("offset");
        assert!(off < REGION && off.is_multiple_of(BS as u64), "{l:?}");
        out.insert(off);
    }
    out
}

/// What a block of the region holds: never written, or fio's block of
/// round `r` (its header names this offset, the rest is the pattern).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Block {
    Zero,
    Round(u8),
}

fn block(b: &[u8], off: u64) -> Result<Block, String> {
    // Whole slices compared (memcmp): byte loops are slow in a debug
    // build, and this looks at 32 MiB a round.
    if b == [0u8; BS] {
        return Ok(Block::Zero);
    }
    let magic = u16::from_le_bytes([b[0], b[1]]);
    let len = u32::from_le_bytes(b[4..8].try_into().unwrap());
    let at = u64::from_le_bytes(b[16..24].try_into().unwrap());
    if magic != FIO_MAGIC || len != BS as u32 || at != off {
        return Err(format!(
            "not fio's block for {off}: magic {magic:#x}, len {len}, offset {at}"
        ));
    }
    let p = &b[FIO_HEADERS..FIO_HEADERS + 4];
    if p[0] != 0xa5 || p[2] != 0x5a || p[3] != 0xc3 {
        return Err(format!("block {off}: no round's pattern: {p:02x?}"));
    }
    let whole = p.repeat((BS - FIO_HEADERS).div_ceil(4));
    if b[FIO_HEADERS..] == whole[..BS - FIO_HEADERS] {
        return Ok(Block::Round(p[1]));
    }
    if let Some(i) = b[FIO_HEADERS..].chunks(4).position(|c| c != &p[..c.len()]) {
        return Err(format!(
            "block {off}: torn, the pattern {p:02x?} stops at byte {}",
            FIO_HEADERS + 4 * i
        ));
    }
    Ok(Block::Round(p[1]))
}

/// Checks the region of `img` after round `round`, each block against
/// what it held before the round (`before`): a write fio saw acknowledged
/// holds this round's data; any other block holds what it held before or
/// this round's data — whole, never a third value. What each block holds
/// now.
fn check_region(img: &Path, acked: &BTreeSet<u64>, round: u32, before: &[Block]) -> Vec<Block> {
    let data = read_at(img, 0, REGION as usize);
    let mut wrong = Vec::new();
    let mut now = Vec::with_capacity(before.len());
    for (i, b) in data.chunks(BS).enumerate() {
        let off = (i * BS) as u64;
        let new = Block::Round(round as u8);
        match block(b, off) {
            Err(e) => {
                wrong.push(e);
                now.push(Block::Zero);
            }
            Ok(got) => {
                if acked.contains(&off) && got != new {
                    wrong.push(format!(
                        "block {off}: acknowledged in round {round}, holds {got:?}"
                    ));
                } else if got != new && got != before[i] {
                    wrong.push(format!(
                        "block {off}: {got:?}, neither the old {:?} nor round {round}'s",
                        before[i]
                    ));
                }
                now.push(got);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "round {round}: {} bad blocks ({} writes acknowledged): {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(10)]
    );
    now
}

/// One round's figures.
#[derive(Debug)]
struct Round {
    round: u32,
    kill_ms: u64,
    acked: usize,
    settle: u64,
}

/// Rounds of fio writes through `quorum serve --map` over `children`
/// (whose data is in `imgs`), each ended by `kill -9` after
/// `round * 150` ms and followed by a restart on the same children and
/// map, the settle pass, and the checks.
fn crash_rounds(tmp: &Tmp, children: &[String], imgs: &[PathBuf], rounds: &[u32]) -> Vec<Round> {
    let sock = tmp.path("q.sock");
    let qmp = tmp.path("qmp.sock");
    let map = tmp.path("map");
    let log = tmp.path("serve.log");
    let mut args: Vec<String> = [
        "--listen",
        &format!("unix:{}", sock.display()),
        "--qmp",
        &format!("unix:{}", qmp.display()),
        "--map",
        &map.display().to_string(),
        "--chunk-size",
        "64K",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(children.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, _) = serve(tmp, &args);
    let mut out = Vec::new();
    let mut blocks = vec![Block::Zero; (REGION / BS as u64) as usize];
    for &round in rounds {
        let dir = tmp.path(&format!("fio{round}"));
        std::fs::create_dir_all(&dir).expect("fio dir");
        let kill_ms = 150 * u64::from(round);
        let before = mtimes(imgs);
        let mut f = Proc(fio(&dir, &sock, round));
        // The moment counts from fio's first write reaching a child (fio
        // connects and sets up first, in a time of its own).
        let t = Instant::now();
        while mtimes(imgs) == before {
            assert!(
                f.alive() && t.elapsed() < WAIT,
                "round {round}: fio wrote nothing: {}",
                read_log(&dir.join("fio.err"))
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(kill_ms));
        assert!(
            f.alive(),
            "round {round}: fio stopped before the crash: {}",
            read_log(&dir.join("fio.err"))
        );
        // The crash.
        server.0.kill().expect("kill -9");
        let _ = server.0.wait();
        let t = Instant::now();
        while f.alive() {
            assert!(t.elapsed() < WAIT, "fio did not end after the crash");
            std::thread::sleep(Duration::from_millis(10));
        }
        let acked = acked(&dir);
        // R-SYNC-2: a chunk the map calls settled is the same on every
        // child (its marks were made durable before any child write).
        // qemu-nbd may still finish a write the dead server sent: a chunk
        // found differing later was unsettled all the same.
        let unsettled = map_after_crash(&map, children.len());
        for c in differing_chunks(imgs, REGION) {
            assert!(
                unsettled.contains(&c),
                "round {round}: chunk {c} differs between the children, the map calls it \
                 settled ({} chunks unsettled)",
                unsettled.len()
            );
        }
        assert!(
            unsettled.iter().all(|&c| c < REGION / CHUNK),
            "round {round}: unsettled chunks where fio never wrote: {unsettled:?}"
        );
        // The restart: same children, same map.
        let (p, _) = serve(tmp, &args);
        server = p;
        // Two writes in flight to different blocks of one chunk can each
        // miss a different child: every block has a majority, the chunk
        // as a whole none (three versions), and the whole-chunk vote of a
        // read or of the settle pass fails (R-READ-5, R-SYNC-4).
        let split = without_majority(imgs, REGION);
        // Reads of unsettled chunks at once, racing the settle pass: each
        // answer is final (R-SYNC-3), what the children all hold after it.
        let mut c = nbd_client(&sock);
        let mut early: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut refused: Vec<u64> = Vec::new();
        for &i in unsettled.iter().rev().take(8) {
            let mut b = vec![0u8; CHUNK as usize];
            match c.read(&mut b, i * CHUNK, CHUNK as usize).unwrap() {
                Ok(()) => early.push((i * CHUNK, b)),
                Err(e) => {
                    assert_eq!(e, 5, "round {round}: read of chunk {i}: not EIO");
                    refused.push(i);
                }
            }
        }
        let mut q = Qmp::connect(&qmp);
        let settle = wait_settled(&mut q, &mut server, &log);
        all_in_sync(&mut q, children.len());
        // Such chunks, and only they, are left without quorum, and stay
        // unsettled until a client writes them: as an operator would,
        // this one writes what child 0 holds there (old or new in every
        // sector) and flushes.
        let split_end = without_majority(imgs, REGION);
        assert_eq!(
            settle.left,
            split_end.len() as u64,
            "round {round}: chunks left without quorum against chunks whose children \
             have no majority now ({split_end:?}; after the crash: {split:?})"
        );
        for i in &refused {
            assert!(
                split.contains(i) || split_end.contains(i),
                "round {round}: a read of chunk {i} failed, but its children have a majority"
            );
        }
        for &i in &split_end {
            assert!(
                unsettled.contains(&i),
                "round {round}: chunk {i} split but settled"
            );
            let b = read_at(&imgs[0], i * CHUNK, CHUNK as usize);
            assert_eq!(c.write(&b, i * CHUNK, CHUNK as usize).unwrap(), Ok(()));
        }
        assert_eq!(c.flush().unwrap(), Ok(()));
        drop(c);
        // R-SYNC-8: after a crash only the unsettled chunks are settled:
        // exactly those the map marks, within the region fio writes — but
        // those the early reads settled first (R-SYNC-3) are done already.
        let marked = unsettled.len() as u64 * CHUNK;
        if !split.is_empty() || !split_end.is_empty() {
            eprintln!(
                "round {round:2}: chunks without a majority after the crash {split:?}, after the \
                 settle pass {split_end:?} (left without quorum: {}; rewritten by the client)",
                settle.left
            );
        }
        assert!(
            settle.len() <= marked && settle.len() + early.len() as u64 * CHUNK >= marked,
            "round {round}: the settle pass against the map's {} unsettled chunks, {} of them \
             read first: {settle:?}",
            unsettled.len(),
            early.len()
        );
        assert!(settle.len() <= REGION, "round {round}: {settle:?}");
        identical(imgs);
        for (at, b) in &early {
            assert!(
                read_at(&imgs[0], *at, CHUNK as usize) == *b,
                "round {round}: a read at {at} answered during the settle pass changed"
            );
        }
        blocks = check_region(&imgs[0], &acked, round, &blocks);
        eprintln!(
            "round {round:2}: kill after {kill_ms:4} ms, {:5} writes acknowledged, settled {:8} bytes \
             of {DEV} ({} chunks; job seen {}, log {:?}, events {})",
            acked.len(),
            settle.len(),
            settle.len() / CHUNK,
            settle.job_len,
            settle.done,
            settle.completed.len()
        );
        out.push(Round {
            round,
            kill_ms,
            acked: acked.len(),
            settle: settle.len(),
        });
    }
    signal(server.0.id(), "TERM");
    assert!(wait_exit(&mut server).success(), "{}", read_log(&log));
    out
}

fn summary(kind: &str, rounds: &[Round]) {
    let acked: usize = rounds.iter().map(|r| r.acked).sum();
    assert!(acked > 0, "{kind}: fio never completed a write: {rounds:?}");
    let max = rounds.iter().map(|r| r.settle).max().unwrap_or(0);
    eprintln!(
        "{kind}: {} rounds, {acked} writes acknowledged, settle passes of at most {max} bytes \
         (device {DEV}, region {REGION}): {:?}",
        rounds.len(),
        rounds
            .iter()
            .map(|r| (r.round, r.kill_ms, r.settle))
            .collect::<Vec<_>>()
    );
}

/// R-SYNC-2, R-SYNC-3, R-SYNC-6, R-SYNC-8 over three raw file children:
/// fio writes, `kill -9` at 10 moments (150, 450, ... 2850 ms), restart
/// on the same files and map; nothing acknowledged is lost, the unsettled
/// chunks only are settled, the children end identical.
#[test]
fn r_sync_2_3_6_kill_under_fio_file_children() {
    if !tools(&["fio"]) {
        return;
    }
    let tmp = Tmp::new("crash-files");
    let imgs = tmp.images(3, DEV);
    let rounds: Vec<u32> = (1..=20).filter(|k| k % 2 == 1).collect();
    let r = crash_rounds(&tmp, &strs(&imgs), &imgs, &rounds);
    summary("file children", &r);
}

/// R-SYNC-2, R-SYNC-3, R-SYNC-6, R-SYNC-8 over three `qemu-nbd`
/// children: as with files, at the 10 other moments (300, 600, ... 3000
/// ms); the NBD servers live
/// on through the crashes and the restarted device reconnects to them.
#[test]
fn r_sync_2_3_6_kill_under_fio_qemu_nbd_children() {
    if !tools(&["fio", "qemu-nbd"]) {
        return;
    }
    let tmp = Tmp::new("crash-nbd");
    let imgs = tmp.images(3, DEV);
    let _servers: Vec<Proc> = imgs
        .iter()
        .enumerate()
        .map(|(i, img)| {
            qemu_nbd(
                img,
                &tmp.path(&format!("c{i}.sock")),
                &tmp.path(&format!("qemu-nbd{i}.log")),
            )
        })
        .collect();
    let children: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "nbd+unix:///?socket={}",
                tmp.path(&format!("c{i}.sock")).display()
            )
        })
        .collect();
    let rounds: Vec<u32> = (1..=20).filter(|k| k % 2 == 0).collect();
    let r = crash_rounds(&tmp, &children, &imgs, &rounds);
    summary("qemu-nbd children", &r);
}

// ---- a crash during a rebuild -------------------------------------------------

/// A block of the client's data: its index and generation in the first 16
/// bytes, the rest a byte of both.
fn client_block(i: usize, generation: u64) -> Vec<u8> {
    let mut d = vec![(generation as u8).wrapping_mul(29) ^ (i as u8) | 1; BS];
    d[..8].copy_from_slice(&(i as u64).to_le_bytes());
    d[8..16].copy_from_slice(&generation.to_le_bytes());
    d
}

/// Where the client's block `i` is: one block in each of 64 MiB / 48
/// places, spread over the device.
const CLIENT_BLOCKS: usize = 48;
fn client_offset(i: usize) -> u64 {
    (i as u64 * (REBUILD_DEV / CLIENT_BLOCKS as u64) + 12288) / BS as u64 * BS as u64
}

fn nbd_client(sock: &Path) -> Client<UnixStream> {
    let s = UnixStream::connect(sock).expect("NBD connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    Client::handshake(s, "").expect("NBD handshake")
}

/// A client writing its blocks in turn (each write answered before the
/// next) until stopped or its connection breaks; what it did.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<WriterReport>>,
}

#[derive(Debug)]
struct WriterReport {
    writes: u64,
    /// The generation each block holds as far as the client knows:
    /// `(acknowledged, maybe)`: the last write answered, and one sent but
    /// not answered when the connection broke.
    last: Vec<(u64, Option<u64>)>,
    /// Requests that failed with an error reply (not a broken connection).
    errors: Vec<String>,
    broken: bool,
}

impl Writer {
    fn start(sock: &Path, mut last: Vec<(u64, Option<u64>)>, first_gen: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = nbd_client(sock);
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut r = WriterReport {
                writes: 0,
                last: Vec::new(),
                errors: Vec::new(),
                broken: false,
            };
            let mut generation = first_gen;
            'outer: while !st.load(Ordering::SeqCst) {
                for (i, l) in last.iter_mut().enumerate() {
                    let d = client_block(i, generation);
                    l.1 = Some(generation);
                    match c.write(&d, client_offset(i), BS) {
                        Ok(Ok(())) => *l = (generation, None),
                        Ok(Err(e)) => r.errors.push(format!("write {i}: errno {e}")),
                        Err(_) => {
                            r.broken = true;
                            break 'outer;
                        }
                    }
                    r.writes += 1;
                    if st.load(Ordering::SeqCst) {
                        break 'outer;
                    }
                }
                if r.writes.is_multiple_of(4 * CLIENT_BLOCKS as u64) {
                    match c.flush() {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => r.errors.push(format!("flush: errno {e}")),
                        Err(_) => {
                            r.broken = true;
                            break;
                        }
                    }
                }
                generation += 1;
            }
            r.last = last;
            r
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("once").join().expect("writer")
    }
}

/// The stale bytes of node `name` as `query-named-block-nodes` shows them.
fn stale_of(q: &mut Qmp, name: &str) -> (String, u64) {
    q.sync_states()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, s, b)| (s, b))
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// The stale bytes the map file at `map` records for the child whose
/// name (NAME=PATH) starts with `name` (read while the server runs: the
/// newest whole copy).
fn map_stale(map: &Path, name: &str) -> u64 {
    let (_, m, names) = MapFile::open(map).expect("map file");
    let id = names
        .iter()
        .find(|(_, n)| n.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in the map file: {names:?}"))
        .0;
    m.stale_of(id).expect("stale marks").count() * m.chunk()
}

/// R-SYNC-6, R-SYNC-7: `kill -9` during the rebuild of a child added over
/// QMP (`blockdev-add`, `x-blockdev-change`). Restarted with that child
/// on the command line (NAME=PATH, in its place), the rebuild resumes
/// from the map — the child is still stale where it was not copied
/// (`x-stale-bytes` > 0, below the device's size: the progress survived),
/// then 0 — while a client writes through both lives of the server without
/// an error reply; all four children end identical and hold the client's
/// last acknowledged writes.
#[test]
fn r_sync_6_7_kill_during_rebuild_resumes() {
    let tmp = Tmp::new("crash-rebuild");
    let imgs = tmp.images(4, REBUILD_DEV);
    let sock = tmp.path("q.sock");
    let qmp = tmp.path("qmp.sock");
    let log = tmp.path("serve.log");
    let named: Vec<String> = ["c0", "c1", "c2", "new0"]
        .iter()
        .zip(&imgs)
        .map(|(n, p)| format!("{n}={}", p.display()))
        .collect();
    let common = |speed: &str| -> Vec<String> {
        [
            "--listen",
            &format!("unix:{}", sock.display()),
            "--qmp",
            &format!("unix:{}", qmp.display()),
            "--map",
            &tmp.path("map").display().to_string(),
            "--threshold",
            "2",
            "--resync-speed",
            speed,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Three children, then data everywhere (the rebuild has to copy it).
    let mut args = common("8M");
    args.extend(named[..3].iter().cloned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, _) = serve(&tmp, &a);
    {
        let mut c = nbd_client(&sock);
        let fill: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
        for m in 0..REBUILD_DEV >> 20 {
            assert_eq!(c.write(&fill, m << 20, 1 << 20).unwrap(), Ok(()));
        }
        assert_eq!(c.flush().unwrap(), Ok(()));
    }
    let mut q = Qmp::connect(&qmp);
    q.ok(
        "blockdev-add",
        Some(json!({"driver": "raw", "node-name": "new0",
            "file": {"driver": "file", "filename": imgs[3].display().to_string()}})),
    );
    q.ok(
        "x-blockdev-change",
        Some(json!({"parent": "quorum", "node": "new0"})),
    );
    let writer = Writer::start(&sock, vec![(0, None); CLIENT_BLOCKS], 1);
    // The rebuild at 8 MiB/s: let it copy 8 MiB at least, then crash once
    // the map file holds some of it.
    let t = Instant::now();
    let before = loop {
        let (state, stale) = stale_of(&mut q, "new0");
        assert!(stale > 0, "the rebuild ended before the crash");
        if stale <= REBUILD_DEV - (8 << 20) {
            assert_eq!(state, "resyncing");
            break stale;
        }
        assert!(
            t.elapsed() < WAIT,
            "no rebuild progress: {}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Then until the map file holds some of that progress (the job's
    // flush every 5 s clears copied chunks in the file, the map writer saves it).
    let map = tmp.path("map");
    let t = Instant::now();
    let durable = loop {
        let stale = map_stale(&map, "new0=");
        if stale < REBUILD_DEV {
            break stale;
        }
        assert!(t.elapsed() < WAIT, "no rebuild progress in the map file");
        std::thread::sleep(Duration::from_millis(50));
    };
    server.0.kill().expect("kill -9");
    let _ = server.0.wait();
    drop(q);
    let first = writer.finish();
    assert!(first.errors.is_empty(), "client errors: {first:?}");
    assert!(first.writes > 0 && first.broken, "{first:?}");

    // The restart, the added child on the command line in its place.
    let mut args = common("8M");
    args.extend(named.iter().cloned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (p, _) = serve(&tmp, &a);
    server = p;
    let mut q = Qmp::connect(&qmp);
    let (state, after) = stale_of(&mut q, "new0");
    eprintln!(
        "rebuild: {before} bytes stale seen before the crash ({durable} in the map file), \
         {after} after the restart"
    );
    assert!(
        after > 0 && after <= durable,
        "R-SYNC-6: the rebuild resumes where it stopped: {after} of {REBUILD_DEV} bytes stale \
         ({state}), the map file said {durable} before the crash"
    );
    for c in ["c0", "c1", "c2"] {
        assert_eq!(stale_of(&mut q, c), ("in-sync".to_string(), 0));
    }
    let writer = Writer::start(&sock, first.last.clone(), 1 << 20);
    // Now at full speed to the end.
    let t = Instant::now();
    loop {
        match q.execute(
            "block-job-set-speed",
            Some(json!({"device": "resync", "speed": 0})),
        ) {
            Ok(_) => break,
            Err(e) => {
                // The job starts within 200 ms of the restart.
                assert!(t.elapsed() < Duration::from_secs(10), "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let t = Instant::now();
    loop {
        let (state, stale) = stale_of(&mut q, "new0");
        if stale == 0 && q.job().is_none() {
            assert_eq!(state, "in-sync");
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "the rebuild did not end: {stale} bytes stale"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = writer.finish();
    assert!(
        second.errors.is_empty() && !second.broken && second.writes > 0,
        "client: {second:?}"
    );
    assert!(
        q.events.iter().any(|e| e["event"] == "BLOCK_JOB_COMPLETED"
            && e["data"]["device"] == "resync"
            && e["data"]["offset"] == e["data"]["len"]),
        "BLOCK_JOB_COMPLETED: {:?}",
        q.events
    );
    all_in_sync(&mut q, 4);
    q.ok("quit", None);
    assert!(wait_exit(&mut server).success(), "{}", read_log(&log));
    identical(&imgs);
    // The client's blocks: the last acknowledged generation of each (the
    // second life wrote every block at least once), the fill elsewhere.
    for (i, (g, maybe)) in second.last.iter().enumerate() {
        assert!(maybe.is_none(), "block {i}: a write was left unanswered");
        assert_eq!(
            read_at(&imgs[3], client_offset(i), BS),
            client_block(i, *g),
            "block {i}"
        );
    }
    // Elsewhere the fill, copied by the rebuild (7 MiB: no client block).
    assert!((0..CLIENT_BLOCKS).all(|i| client_offset(i).abs_diff(7 << 20) >= BS as u64));
    let want: Vec<u8> = (0..BS as u32).map(|i| (i % 251) as u8 + 1).collect();
    assert_eq!(read_at(&imgs[3], 7 << 20, BS), want);
    assert_eq!(read_at(&imgs[3], REBUILD_DEV - BS as u64, BS), {
        let i0 = ((1 << 20) - BS) as u32;
        (i0..i0 + BS as u32)
            .map(|i| (i % 251) as u8 + 1)
            .collect::<Vec<u8>>()
    });
}
