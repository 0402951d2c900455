//! `quorum serve --map` end to end (SPEC R-SYNC-5, R-SYNC-7, R-SYNC-8;
//! DESIGN.md "Real clients and real hosts in tests"):
//!
//! - Three `qemu-nbd` replicas, each on a host of its own (a network
//!   namespace behind a veth pair), fio writing and verifying through
//!   `quorum serve --map`; one host's link goes down for a while and comes
//!   back: writes keep succeeding, the child is stale where it missed
//!   writes and nothing is copied while it cannot be reached, it
//!   reconnects by itself, the resync starts by itself and copies no more
//!   than the chunks fio wrote meanwhile; the images end identical.
//! - A fresh, empty child added over QMP while fio runs is rebuilt online:
//!   no client error, no `QUORUM_REPORT_BAD` at any point, identical
//!   images at the end.
//! - The resync job's control over QMP: `block-job-set-speed`,
//!   `block-job-pause` / `-resume`, `block-job-cancel`, their refusals,
//!   `JOB_STATUS_CHANGE`, `BLOCK_JOB_CANCELLED` and `BLOCK_JOB_COMPLETED`
//!   in QEMU's shapes.
//!
//! The namespace test needs root and iproute2's `ip`: without them it is
//! skipped with a note. fio, qemu-nbd and nbdcopy are required as
//! everywhere else ([`tools`]: skipped without them, failing under CI).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

// ---- a QMP client that keeps every event --------------------------------

/// A QMP monitor connection: commands answered in order, every event kept
/// (with the time it arrived) by a reader thread.
struct Qmp {
    w: UnixStream,
    replies: mpsc::Receiver<Value>,
    events: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).expect("QMP connect");
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = s.try_clone().unwrap();
        let (tx, replies) = mpsc::channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"));
                if v.get("event").is_some() {
                    ev.lock().unwrap().push((Instant::now(), v));
                } else if v.get("QMP").is_none() && tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut q = Qmp {
            w: s,
            replies,
            events,
        };
        q.ok("qmp_capabilities", json!({}));
        q
    }

    /// The reply to `execute` with `arguments`: `Ok(return)` or
    /// `Err(error)`.
    fn cmd(&mut self, execute: &str, arguments: Value) -> Result<Value, Value> {
        let mut m = json!({ "execute": execute });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            m["arguments"] = arguments;
        }
        // One write: `writeln!` sends the JSON in pieces and the newline
        // after them, and a server that runs `quit` as soon as the object
        // is whole may close the socket before the newline goes out.
        self.w
            .write_all(format!("{m}\n").as_bytes())
            .expect("QMP write");
        let mut r = self
            .replies
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no reply to {m}"));
        match r.get_mut("return") {
            Some(v) => Ok(v.take()),
            None => Err(r["error"].take()),
        }
    }

    fn ok(&mut self, execute: &str, arguments: Value) -> Value {
        let a = arguments.to_string();
        self.cmd(execute, arguments)
            .unwrap_or_else(|e| panic!("{execute} {a}: {e}"))
    }

    /// The resync job, if one runs (`query-block-jobs`).
    fn job(&mut self) -> Option<Value> {
        let jobs = self.ok("query-block-jobs", json!({}));
        let jobs = jobs.as_array().expect("a list of jobs");
        assert!(jobs.len() <= 1, "one resync job at most: {jobs:?}");
        jobs.first().cloned()
    }

    /// `query-named-block-nodes`' entry for `node`.
    fn node(&mut self, node: &str) -> Value {
        let nodes = self.ok("query-named-block-nodes", json!({}));
        nodes
            .as_array()
            .expect("a list of nodes")
            .iter()
            .find(|n| n["node-name"] == node)
            .cloned()
            .unwrap_or_else(|| panic!("no node {node}: {nodes}"))
    }

    fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.1.clone())
            .collect()
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits up to `t` for the first event named `name`; its data.
    fn wait_event(&self, name: &str, t: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self.named(name).first() {
                return e["data"].clone();
            }
            assert!(
                start.elapsed() < t,
                "no {name} within {t:?}; events: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The statuses `JOB_STATUS_CHANGE` announced, in order.
    fn statuses(&self) -> Vec<String> {
        self.named("JOB_STATUS_CHANGE")
            .iter()
            .map(|e| {
                assert_eq!(e["data"]["id"], "resync", "{e}");
                e["data"]["status"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `t`.
fn until<T>(what: &str, t: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < t, "{what}: not within {t:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- images, processes, fio ------------------------------------------------

/// Pseudo-random bytes (xorshift64*), the same for the same seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `n` images of the same random data, and a fresh empty one per name in
/// `empty`.
fn filled(tmp: &Tmp, n: usize, size: u64, empty: &[&str]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let data = noise(0x5eed, size as usize);
    let full = (0..n)
        .map(|i| {
            let p = tmp.path(&format!("r{i}.img"));
            std::fs::write(&p, &data).expect("image");
            p
        })
        .collect();
    let fresh = empty
        .iter()
        .map(|name| {
            let p = tmp.path(&format!("{name}.img"));
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(size))
                .expect("image");
            p
        })
        .collect();
    (full, fresh)
}

/// Asserts every image is byte for byte the first one.
fn identical(imgs: &[PathBuf]) {
    for p in &imgs[1..] {
        let o = run(Command::new("cmp").arg(&imgs[0]).arg(p));
        assert!(
            o.status.success(),
            "{} and {} differ: {}",
            imgs[0].display(),
            p.display(),
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// `quorum serve --map` on a unix socket with a QMP monitor and an events
/// file: (server, NBD URI, QMP socket).
fn serve_map(tmp: &Tmp, children: &[String], extra: &[&str]) -> (Proc, String, PathBuf) {
    let nbd = tmp.path("nbd.sock");
    let qmp = tmp.path("qmp.sock");
    let mut args = vec![
        "--listen".to_string(),
        format!("unix:{}", nbd.display()),
        "--qmp".to_string(),
        format!("unix:{}", qmp.display()),
        "--map".to_string(),
        tmp.path("map").display().to_string(),
        "--events".to_string(),
        tmp.path("events.json").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(children.iter().cloned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (p, url) = serve(tmp, &a);
    (p, url, qmp)
}

/// fio's `nbd` engine against `url`: 4 KiB random writes over the whole
/// device, each block read back and checked (CRC32C) soon after it is
/// written (`verify_backlog`), for `secs` seconds; `extra` options added.
fn fio(tmp: &Tmp, url: &str, size: u64, secs: u32, extra: &[&str]) -> Proc {
    let mut c = Command::new("fio");
    c.current_dir(&tmp.0)
        .args([
            "--name=sync",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            "--bs=4k",
            &format!("--size={size}"),
            "--time_based",
            &format!("--runtime={secs}"),
            "--verify=crc32c",
            "--verify_backlog=64",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(tmp.path("fio.out")).unwrap())
        .stderr(std::fs::File::create(tmp.path("fio.err")).unwrap());
    Proc(c.spawn().expect("fio starts"))
}

/// Waits for fio (at most `t`) and asserts that it saw no error and
/// verified what it wrote; its output.
fn fio_done(tmp: &Tmp, mut p: Proc, t: Duration) -> String {
    let start = Instant::now();
    let status = loop {
        if let Some(st) = p.0.try_wait().expect("fio") {
            break st;
        }
        assert!(start.elapsed() < t, "fio did not finish within {t:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(tmp.path("fio.out")).unwrap_or_default();
    let err = std::fs::read_to_string(tmp.path("fio.err")).unwrap_or_default();
    assert!(
        status.success() && out.contains("err= 0"),
        "fio failed ({status:?}):\n{out}\n{err}"
    );
    // The backlog verification read what was written: "issued rwts:
    // total=READS,WRITES,..." (time-based verification reads are not in
    // the read statistics).
    let issued: Vec<u64> = out
        .split("issued rwts: total=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|r| r.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        issued.len() >= 2 && issued[0] > 0 && issued[1] > 0,
        "fio did not both write and verify:\n{out}"
    );
    out
}

fn serve_log(tmp: &Tmp) -> String {
    std::fs::read_to_string(tmp.path("serve.log")).unwrap_or_default()
}

/// No `QUORUM_REPORT_BAD` or `QUORUM_FAILURE`, on the monitor or in the
/// events file.
fn no_quorum_events(q: &Qmp, tmp: &Tmp) {
    let bad: Vec<Value> = q
        .events()
        .into_iter()
        .filter(|e| {
            e["event"]
                .as_str()
                .is_some_and(|n| n.starts_with("QUORUM_"))
        })
        .collect();
    assert!(bad.is_empty(), "events on the monitor: {bad:?}");
    let file = std::fs::read_to_string(tmp.path("events.json")).unwrap_or_default();
    assert!(
        !file.contains("QUORUM_"),
        "events in the events file: {file}"
    );
}

/// Stops the server with QMP `quit`; it must exit 0.
fn quit(q: &mut Qmp, server: &mut Proc, tmp: &Tmp) {
    q.ok("quit", json!({}));
    let st = wait_exit(server);
    assert!(st.success(), "exit status {st:?}: {}", serve_log(tmp));
}

// ---- hosts of their own -------------------------------------------------------

fn ip(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("ip").args(args).stdin(Stdio::null()).output()
}

/// A network namespace with a veth pair to it: `addr` inside, `host_addr`
/// on the host's end `veth`. Dropping it deletes both.
struct Netns {
    name: String,
    veth: String,
    addr: String,
    subnet: String,
}

impl Netns {
    /// `Err` with why when namespaces cannot be made here (not root, no
    /// `ip`): the caller skips. Any later step that fails panics.
    fn new(name: &str, veth: &str, subnet: &str) -> Result<Netns, String> {
        // Only this step may fail for want of rights or tools.
        let o = ip(&["netns", "add", name]).map_err(|e| format!("ip: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let ns = Netns {
            name: name.into(),
            veth: veth.into(),
            addr: format!("{subnet}.2"),
            subnet: subnet.into(),
        };
        let peer = format!("{veth}p");
        let host = format!("{subnet}.1/24");
        let inside = format!("{subnet}.2/24");
        let net = format!("{subnet}.0/24");
        for cmd in [
            vec!["link", "add", veth, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", name],
            vec!["addr", "add", &host, "dev", veth],
            vec!["link", "set", veth, "up"],
            vec!["-n", name, "addr", "add", &inside, "dev", &peer],
            vec!["-n", name, "link", "set", &peer, "up"],
            vec!["-n", name, "link", "set", "lo", "up"],
            // While the link is down its route is gone: the subnet is then
            // unreachable (as a router's ICMP says), not sent to the
            // default gateway (which, on some machines, accepts any
            // connection and never answers).
            vec!["route", "add", "unreachable", &net, "metric", "4000"],
        ] {
            let o = ip(&cmd).expect("ip");
            assert!(
                o.status.success(),
                "ip {}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(ns)
    }

    /// The link up or down, on the host's side.
    fn link(&self, up: bool) {
        let o = ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]).expect("ip");
        assert!(o.status.success(), "ip link set {} failed", self.veth);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let net = format!("{}.0/24", self.subnet);
        let _ = ip(&["route", "del", "unreachable", &net, "metric", "4000"]);
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A replica host: `qemu-nbd` serving an image inside its namespace. The
/// server is killed before the namespace goes (fields drop in order).
struct Replica {
    nbd: Proc,
    ns: Netns,
}

impl Replica {
    fn url(&self) -> String {
        format!("nbd://{}:10809", self.ns.addr)
    }
}

/// Three free /24 subnets 10.77.X for this run (not on any interface
/// now), picked from the process id so that runs at the same time differ.
fn subnets() -> Vec<String> {
    let used = ip(&["-o", "addr"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = std::process::id() as usize % 250;
    (0..250)
        .map(|i| format!("10.77.{}", (start + i) % 250 + 1))
        .filter(|s| !used.contains(&format!("{s}.")))
        .take(3)
        .collect()
}

/// Three hosts, each `qemu-nbd` over its image (`-t`: it outlives a
/// client; `-e 4`: a reconnecting client is let in while the server still
/// holds the connection the partition broke); `Err` when namespaces
/// cannot be made here.
fn hosts(tmp: &Tmp, imgs: &[PathBuf]) -> Result<Vec<Replica>, String> {
    let tag = std::process::id() % 100_000;
    let mut out = Vec::new();
    for ((i, img), subnet) in imgs.iter().enumerate().zip(subnets()) {
        let ns = Netns::new(
            &format!("quorum-sync-{}-{i}", std::process::id()),
            &format!("qs{tag}h{i}"),
            &subnet,
        )?;
        let log = tmp.path(&format!("qemu-nbd{i}.log"));
        let c = Command::new("ip")
            .args(["netns", "exec", &ns.name, "qemu-nbd", "-f", "raw", "-b"])
            .arg(&ns.addr)
            .args(["-p", "10809", "-t", "-e", "4"])
            .arg(img)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("qemu-nbd starts");
        let mut r = Replica { nbd: Proc(c), ns };
        let addr: SocketAddr = format!("{}:10809", r.ns.addr).parse().unwrap();
        until("qemu-nbd listening", Duration::from_secs(20), || {
            assert!(
                r.nbd.alive(),
                "qemu-nbd exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
        out.push(r);
    }
    assert_eq!(out.len(), 3, "three free subnets in 10.77.0.0/16");
    Ok(out)
}

/// The chunks of a fio latency log (`--write_lat_log` with `--log_offset`:
/// `msec, nsec, direction, size, offset, ...`) written by writes that
/// completed within `from..=to` ms of fio's start, and by all writes.
fn written_chunks(log: &Path, chunk: u64, from: f64, to: f64) -> (usize, usize) {
    let text = std::fs::read_to_string(log).expect("fio's latency log");
    let (mut window, mut all) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for l in text.lines() {
        let f: Vec<u64> = l
            .split(',')
            .map(|x| x.trim().parse().expect("a number"))
            .collect();
        let (ms, dir, size, off) = (f[0] as f64, f[2], f[3], f[4]);
        if dir != 1 {
            continue; // a verification read
        }
        for c in off / chunk..=(off + size - 1) / chunk {
            all.insert(c);
            if (from..=to).contains(&ms) {
                window.insert(c);
            }
        }
    }
    (window.len(), all.len())
}

// ---- 1. a partitioned host comes back ----------------------------------------

/// R-SYNC-8 (and R-SYNC-1, R-SYNC-4, R-SYNC-5 through the real stack):
/// three qemu-nbd hosts in namespaces of their own behind `quorum serve
/// --map --chunk-size 64K`; fio writes 4 KiB blocks at random and verifies
/// them. Host 1's link goes down: the writes in flight on it wait for the
/// NBD child's 10 s timeout, then every write succeeds on the other two and
/// marks host 1 stale where it missed them (`x-stale-bytes` > 0), and no
/// resync starts while it cannot be reached. The link comes back: the
/// child reconnects by itself, a resync job starts by itself and copies at
/// most the chunks fio wrote from the moment the link went down to the
/// moment the child was back (counted from fio's own log of every write);
/// fio never sees an error; the three images end identical.
#[test]
fn r_sync_8_host_partitioned_then_back_is_resynced_on_the_chunks_it_missed() {
    if !tools(&["fio", "qemu-nbd"]) {
        return;
    }
    let tmp = Tmp::new("sync-partition");
    const SIZE: u64 = 256 * MIB;
    const CHUNK: u64 = 64 << 10;
    let imgs = tmp.images(3, SIZE);
    let hosts = match hosts(&tmp, &imgs) {
        Ok(h) => h,
        Err(why) => {
            eprintln!(
                "network namespaces cannot be created here ({why}; root and iproute2's ip \
                 are needed): test skipped"
            );
            return;
        }
    };
    let children: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("host{i}={}", h.url()))
        .collect();
    let (mut server, url, qmp) = serve_map(&tmp, &children, &["--chunk-size", "64K"]);
    let mut q = Qmp::connect(&qmp);

    // About 200 writes a second, two at a time (a think time, not a rate:
    // fio does not catch up after the partition's stall), for 22 s.
    let spawned = Instant::now();
    let load = fio(
        &tmp,
        &url,
        SIZE,
        22,
        &[
            "--iodepth=2",
            "--thinktime=10000",
            "--thinktime_blocks=2",
            "--write_lat_log=fio",
            "--log_offset=1",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(q.node("host1")["x-reachable"] == true);
    assert_eq!(q.node("host1")["x-stale-bytes"], 0);

    // The partition.
    let down = spawned.elapsed();
    hosts[1].ns.link(false);
    let stale = until("host1 stale", Duration::from_secs(30), || {
        let n = q.node("host1");
        let s = n["x-stale-bytes"].as_u64().unwrap();
        (s > 0).then_some(s)
    });
    assert_eq!(q.node("host1")["x-sync"], "stale");
    for other in ["host0", "host2"] {
        assert_eq!(q.node(other)["x-stale-bytes"], 0, "{other}");
    }
    // Writes go on; host 1's stale chunks wait for it (R-SYNC-8).
    let mut stale_max = stale;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(q.job(), None, "a resync started while host1 is away");
        stale_max = stale_max.max(q.node("host1")["x-stale-bytes"].as_u64().unwrap());
    }
    assert!(
        stale_max > stale,
        "writes did not go on during the partition"
    );
    assert!(server.alive());

    // The host comes back.
    let up = spawned.elapsed();
    hosts[1].ns.link(true);
    until("host1 reconnected", Duration::from_secs(30), || {
        (q.node("host1")["x-reachable"] == true).then_some(())
    });
    let back = spawned.elapsed();
    let done = q.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(60));
    let out = fio_done(&tmp, load, Duration::from_secs(90));
    assert_eq!(done["device"], "resync");
    assert_eq!(done["type"], "x-resync");
    assert!(done.get("error").is_none(), "{done}");
    let (len, offset) = (
        done["len"].as_u64().unwrap(),
        done["offset"].as_u64().unwrap(),
    );
    assert_eq!(len, offset, "{done}");
    assert!(
        len >= stale_max,
        "the job copied {len} bytes, host1 had {stale_max} stale"
    );
    // What fio wrote while host 1 was away: writes that completed from
    // the moment the link went down (fio's clock starts after it is
    // spawned, so its times are at most ours; a second earlier to be
    // safe — the writes host 1 missed completed at least 9 s after it,
    // when its connection timed out) to the moment the child was back
    // (writes that fail on it complete before that).
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (window, all) = written_chunks(
        &tmp.path("fio_clat.1.log"),
        CHUNK,
        ms(down) - 1000.0,
        ms(back),
    );
    eprintln!(
        "link down at {:.1} s, up at {:.1} s, host1 reconnected at {:.1} s; host1 stale {stale_max} bytes at most while away; \
         resync job len {len} bytes = {} chunks of 64 KiB; fio wrote {window} chunks in that \
         time, {all} in the whole run ({} chunks in the device)",
        down.as_secs_f64(),
        up.as_secs_f64(),
        back.as_secs_f64(),
        len / CHUNK,
        SIZE / CHUNK
    );
    assert!(
        len <= window as u64 * CHUNK,
        "resync copied {len} bytes, more than the {window} chunks written while host1 was away"
    );
    assert!(
        len < all as u64 * CHUNK,
        "resync copied every chunk ever written ({all})"
    );
    for n in ["host0", "host1", "host2"] {
        let node = q.node(n);
        assert_eq!(node["x-sync"], "in-sync", "{node}");
        assert_eq!(node["x-stale-bytes"], 0, "{node}");
    }
    assert!(q.job().is_none());
    let statuses = q.statuses();
    assert_eq!(
        statuses,
        [
            "created",
            "running",
            "waiting",
            "pending",
            "concluded",
            "null"
        ],
        "one job, to its end"
    );
    quit(&mut q, &mut server, &tmp);
    let log = serve_log(&tmp);
    assert!(log.contains(&format!("resync done: {len} bytes")), "{log}");
    drop(hosts);
    identical(&imgs);
    assert!(out.contains("err= 0"));
}

// ---- 2. a fresh child rebuilt under fio -----------------------------------------

/// R-SYNC-7: three children of the same random data behind `quorum serve
/// --map`; while fio writes and verifies, an empty image is added over QMP
/// (`blockdev-add`, `x-blockdev-change`): it is rebuilt online by a job
/// that starts by itself (`len`: the whole device), it never votes before
/// it is copied — not one `QUORUM_REPORT_BAD` or `QUORUM_FAILURE`, during
/// the rebuild, after it, or in a whole-device read (nbdcopy) at the end —
/// fio sees no error, and the four images end identical.
#[test]
fn r_sync_7_fresh_child_added_over_qmp_is_rebuilt_online_under_fio() {
    if !tools(&["fio", "nbdcopy"]) {
        return;
    }
    let tmp = Tmp::new("sync-rebuild");
    const SIZE: u64 = 64 * MIB;
    let (mut imgs, fresh) = filled(&tmp, 3, SIZE, &["new"]);
    let children: Vec<String> = imgs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("c{i}={}", p.display()))
        .collect();
    // 16 MiB/s: the rebuild takes about 4 s, all under fio.
    let (mut server, url, qmp) = serve_map(&tmp, &children, &["--resync-speed", "16M"]);
    let mut q = Qmp::connect(&qmp);
    let load = fio(&tmp, &url, SIZE, 10, &["--iodepth=16"]);
    std::thread::sleep(Duration::from_secs(1));
    q.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "new", "filename": fresh[0].display().to_string()}),
    );
    q.ok(
        "x-blockdev-change",
        json!({"parent": "quorum", "node": "new"}),
    );
    let added = Instant::now();
    let job = until("a rebuild job", Duration::from_secs(5), || {
        q.job().filter(|j| j["status"] == "running")
    });
    assert_eq!(job["len"], SIZE, "the whole device: {job}");
    assert_eq!(q.node("new")["x-sync"], "resyncing");
    let done = q.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(60));
    let took = added.elapsed();
    assert_eq!(done["len"], SIZE, "{done}");
    assert_eq!(done["offset"], SIZE, "{done}");
    assert!(done.get("error").is_none(), "{done}");
    let out = fio_done(&tmp, load, Duration::from_secs(60));
    eprintln!("rebuilt 64 MiB in {:.1} s under fio", took.as_secs_f64());
    assert_eq!(q.node("new")["x-sync"], "in-sync");
    assert_eq!(q.node("new")["x-stale-bytes"], 0);
    // Every byte read through the device now, the new child voting.
    let copy = tmp.path("copy.img");
    ok(&run(Command::new("nbdcopy").arg(&url).arg(&copy)));
    no_quorum_events(&q, &tmp);
    quit(&mut q, &mut server, &tmp);
    imgs.push(fresh[0].clone());
    imgs.push(copy);
    identical(&imgs);
    assert!(out.contains("err= 0"));
}

// ---- 3. the job's control ---------------------------------------------------------

/// R-SYNC-5 over QMP, with QEMU's commands and shapes: a rebuild job (a
/// fresh child added over QMP) at `--resync-speed 2M` shows in
/// `query-block-jobs` as QEMU's `BlockJobInfo`; `block-job-set-speed`
/// changes its pace (no faster than the new speed afterwards);
/// `block-job-pause` stops it (`status: paused`, `paused: true`, no
/// progress) and `block-job-resume` starts it again, each refused when
/// repeated with QEMU's texts; a device that is not a job is
/// `DeviceNotActive`; `block-job-cancel` ends it with `BLOCK_JOB_CANCELLED`
/// (what was copied stays copied, and no job starts again on the same
/// work); a second child added starts a job that runs unthrottled
/// (`block-job-set-speed 0`) to `BLOCK_JOB_COMPLETED`; `JOB_STATUS_CHANGE`
/// tells both stories in QEMU's order. The five images end identical.
#[test]
fn r_sync_5_block_job_speed_pause_resume_cancel_over_qmp() {
    let tmp = Tmp::new("sync-control");
    const SIZE: u64 = 32 * MIB;
    let (mut imgs, fresh) = filled(&tmp, 3, SIZE, &["new1", "new2"]);
    let children: Vec<String> = imgs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("c{i}={}", p.display()))
        .collect();
    let (mut server, _url, qmp) = serve_map(&tmp, &children, &["--resync-speed", "2M"]);
    let mut q = Qmp::connect(&qmp);
    assert_eq!(q.job(), None);
    let add = |q: &mut Qmp, name: &str, p: &Path| {
        q.ok(
            "blockdev-add",
            json!({"driver": "file", "node-name": name, "filename": p.display().to_string()}),
        );
        q.ok(
            "x-blockdev-change",
            json!({"parent": "quorum", "node": name}),
        );
    };
    add(&mut q, "new1", &fresh[0]);
    let job = until("a rebuild job", Duration::from_secs(5), || {
        q.job().filter(|j| j["status"] == "running")
    });
    // QEMU's BlockJobInfo, member for member.
    let mut keys: Vec<&str> = job
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "auto-dismiss",
            "auto-finalize",
            "busy",
            "device",
            "io-status",
            "len",
            "offset",
            "paused",
            "ready",
            "speed",
            "status",
            "type"
        ],
        "{job}"
    );
    assert_eq!(job["device"], "resync");
    assert_eq!(job["type"], "x-resync");
    assert_eq!(job["len"], SIZE);
    assert_eq!(job["speed"], 2 * MIB);
    assert_eq!(job["status"], "running");
    assert_eq!(job["paused"], false);
    assert_eq!(job["ready"], false);
    assert_eq!(job["io-status"], "ok");

    // A new speed, and no faster than it from then on (one 1 MiB chunk
    // of slack: a chunk is copied whole once it is due).
    q.ok(
        "block-job-set-speed",
        json!({"device": "resync", "speed": 4 * MIB}),
    );
    let set = Instant::now();
    let from = q.job().unwrap()["offset"].as_u64().unwrap();
    assert_eq!(q.job().unwrap()["speed"], 4 * MIB);
    std::thread::sleep(Duration::from_millis(1500));
    let at = q.job().unwrap()["offset"].as_u64().unwrap();
    let allowed = (4 * MIB) as f64 * set.elapsed().as_secs_f64() + 2.0 * MIB as f64;
    assert!(
        ((at - from) as f64) <= allowed,
        "{} bytes in {:?} at 4 MiB/s",
        at - from,
        set.elapsed()
    );
    assert!(at > from, "no progress at 4 MiB/s in 1.5 s");

    // Pause, resume; each refused when repeated.
    q.ok("block-job-pause", json!({"device": "resync"}));
    let paused = until("paused", Duration::from_secs(5), || {
        q.job().filter(|j| j["status"] == "paused")
    });
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["busy"], false);
    let e = q
        .cmd("block-job-pause", json!({"device": "resync"}))
        .unwrap_err();
    assert_eq!(
        e,
        json!({"class": "GenericError", "desc": "Job is already paused"})
    );
    std::thread::sleep(Duration::from_millis(700));
    let still = q.job().unwrap();
    assert_eq!(still["offset"], paused["offset"], "progress while paused");
    assert_eq!(q.node("new1")["x-sync"], "resyncing");
    q.ok("block-job-resume", json!({"device": "resync"}));
    let resumed = until("running again", Duration::from_secs(5), || {
        q.job().filter(|j| j["status"] == "running")
    });
    assert_eq!(resumed["paused"], false);
    let e = q
        .cmd("block-job-resume", json!({"device": "resync"}))
        .unwrap_err();
    assert_eq!(
        e,
        json!({"class": "GenericError", "desc": "Can't resume a job that was not paused"})
    );
    until("progress after resume", Duration::from_secs(5), || {
        let o = q.job().unwrap()["offset"].as_u64().unwrap();
        (o > still["offset"].as_u64().unwrap()).then_some(())
    });
    for cmd in ["block-job-pause", "block-job-resume", "block-job-cancel"] {
        let e = q.cmd(cmd, json!({"device": "mirror0"})).unwrap_err();
        assert_eq!(
            e,
            json!({"class": "DeviceNotActive", "desc": "Block job 'mirror0' not found"}),
            "{cmd}"
        );
    }
    let e = q
        .cmd(
            "block-job-set-speed",
            json!({"device": "resync", "speed": -1}),
        )
        .unwrap_err();
    assert_eq!(
        e,
        json!({"class": "GenericError", "desc": "Invalid parameter 'speed'"})
    );

    // Cancel: BLOCK_JOB_CANCELLED with what was done.
    q.ok("block-job-cancel", json!({"device": "resync"}));
    let c = q.wait_event("BLOCK_JOB_CANCELLED", Duration::from_secs(10));
    let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["device", "len", "offset", "speed", "type"], "{c}");
    assert_eq!(c["device"], "resync");
    assert_eq!(c["type"], "x-resync");
    assert_eq!(c["len"], SIZE);
    assert_eq!(c["speed"], 4 * MIB);
    let copied = c["offset"].as_u64().unwrap();
    assert!(copied > 0 && copied < SIZE, "{c}");
    until("the job gone", Duration::from_secs(5), || {
        q.job().is_none().then_some(())
    });
    let statuses = q.statuses();
    assert_eq!(
        statuses,
        [
            "created",
            "running",
            "paused",
            "running",
            "aborting",
            "concluded",
            "null"
        ]
    );
    // The cancel event comes between aborting and concluded, as in QEMU.
    let order: Vec<String> = q
        .events()
        .iter()
        .filter_map(|e| match e["event"].as_str().unwrap() {
            "JOB_STATUS_CHANGE" => Some(e["data"]["status"].as_str().unwrap().to_string()),
            "BLOCK_JOB_CANCELLED" => Some("CANCELLED".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        &order[4..],
        ["aborting", "CANCELLED", "concluded", "null"],
        "{order:?}"
    );
    // What was copied stays copied; the rest waits — no job starts again
    // by itself on the same work.
    let left = q.node("new1")["x-stale-bytes"].as_u64().unwrap();
    assert!(
        left >= SIZE - copied && left < SIZE,
        "{left} stale after {copied} copied"
    );
    assert_eq!(q.node("new1")["x-sync"], "stale");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(q.job(), None, "a job started again after the cancel");

    // New work (another child) starts a job again; unthrottled, to the end.
    let before = q.events().len();
    add(&mut q, "new2", &fresh[1]);
    until("a second job", Duration::from_secs(5), || q.job());
    q.ok(
        "block-job-set-speed",
        json!({"device": "resync", "speed": 0}),
    );
    let done = q.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(60));
    let mut keys: Vec<&str> = done
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["device", "len", "offset", "speed", "type"], "{done}");
    assert_eq!(done["len"], done["offset"]);
    assert_eq!(done["len"], SIZE, "chunks stale on either new child");
    assert_eq!(done["speed"], 0);
    let second: Vec<String> = q.events()[before..]
        .iter()
        .filter(|e| e["event"] == "JOB_STATUS_CHANGE")
        .map(|e| e["data"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        second,
        [
            "created",
            "running",
            "waiting",
            "pending",
            "concluded",
            "null"
        ]
    );
    for n in ["new1", "new2"] {
        assert_eq!(q.node(n)["x-sync"], "in-sync", "{n}");
    }
    until("the job gone", Duration::from_secs(5), || {
        q.job().is_none().then_some(())
    });
    no_quorum_events(&q, &tmp);
    quit(&mut q, &mut server, &tmp);
    imgs.extend(fresh);
    identical(&imgs);
}
