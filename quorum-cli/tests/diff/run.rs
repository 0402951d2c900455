//! Running one scenario three ways: QEMU behind an NBD export (events over
//! QMP), QEMU's `qemu-io` opening the quorum node itself (exact messages and
//! errnos, blkverify), and `quorum io`.

use super::scenario::{Scenario, inject_arg};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one run produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) stdout: Vec<String>,
    pub(crate) stderr: Vec<String>,
    pub(crate) code: Option<i32>,
    /// Events as `{"event", "data"}`, timestamps removed, in arrival order.
    pub(crate) events: Vec<Value>,
    /// How many of `events` arrived before the commands' end (QMP's
    /// immediate emissions; the rest were held back by its throttle).
    pub(crate) immediate: usize,
    /// The commands took long enough that QMP's one-second throttle window
    /// may have expired in the middle of them.
    pub(crate) slow: bool,
    /// Each child's bytes after the run.
    pub(crate) images: Vec<Vec<u8>>,
}

/// Writes the scenario's images into `dir` and returns their paths.
pub(crate) fn make_images(sc: &Scenario, dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("create scenario directory");
    (0..sc.children.len())
        .map(|i| {
            let p = dir.join(format!("c{i}.img"));
            std::fs::write(&p, sc.image(i)).expect("write image");
            p
        })
        .collect()
}

fn read_images(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("read image back"))
        .collect()
}

/// The quorum node as QMP's `blockdev-add` takes it; also what
/// `qemu-storage-daemon --blockdev` and a `json:` filename take.
pub(crate) fn quorum_json(sc: &Scenario, paths: &[PathBuf]) -> Value {
    let children: Vec<Value> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut file = json!({"driver": "file", "filename": p});
            let inject = &sc.children[i].inject;
            if !inject.is_empty() {
                let rules: Vec<Value> = inject
                    .iter()
                    .map(|j| {
                        let mut r = json!({"event": j.kind.blkdebug_event(), "errno": j.errno});
                        if let Some(s) = j.sector {
                            r["sector"] = json!(s);
                        }
                        if j.once {
                            r["once"] = json!(true);
                        }
                        r
                    })
                    .collect();
                file = json!({"driver": "blkdebug", "image": file, "inject-error": rules});
            }
            json!({"driver": "raw", "node-name": sc.child_name(i), "file": file})
        })
        .collect();
    json!({
        "driver": "quorum",
        "node-name": sc.device_name(),
        "vote-threshold": sc.threshold,
        "read-pattern": if sc.fifo { "fifo" } else { "quorum" },
        "rewrite-corrupted": sc.rewrite,
        "blkverify": sc.blkverify,
        "children": children,
    })
}

fn lines(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A finished process: stdout, stderr, exit code.
pub(crate) type Captured = (Vec<u8>, Vec<u8>, Option<i32>);

/// Runs `cmd` with a time limit.
pub(crate) fn run_timeout(mut cmd: Command, limit: Duration) -> Result<Captured, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {limit:?}: {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok((
        to.join().unwrap_or_default(),
        te.join().unwrap_or_default(),
        status.code(),
    ))
}

fn strip_timestamp(mut v: Value) -> Result<Value, String> {
    let ts = v
        .get("timestamp")
        .ok_or_else(|| format!("event without timestamp: {v}"))?;
    if !(ts["seconds"].is_i64() || ts["seconds"].is_u64())
        || !(ts["microseconds"].is_i64() || ts["microseconds"].is_u64())
    {
        return Err(format!("event with a malformed timestamp: {v}"));
    }
    v.as_object_mut().expect("object").remove("timestamp");
    Ok(v)
}

/// `quorum io` on fresh images in `dir`.
pub(crate) fn ours(bin: &Path, sc: &Scenario, dir: &Path) -> Result<Outcome, String> {
    let paths = make_images(sc, dir);
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(bin);
    cmd.arg("io")
        .arg("--threshold")
        .arg(sc.threshold.to_string());
    if sc.fifo {
        cmd.args(["--read-pattern", "fifo"]);
    }
    if sc.rewrite {
        cmd.arg("--rewrite-corrupted");
    }
    if sc.blkverify {
        cmd.arg("--blkverify");
    }
    if let Some(n) = &sc.node_name {
        cmd.args(["--node-name", n]);
    }
    cmd.arg("--events").arg(&events);
    for (i, c) in sc.children.iter().enumerate() {
        for j in &c.inject {
            cmd.arg("--inject-error")
                .arg(inject_arg(j, &sc.child_name(i)));
        }
    }
    for (i, p) in paths.iter().enumerate() {
        match &sc.children[i].name {
            Some(n) => cmd.arg(format!("{n}={}", p.display())),
            None => cmd.arg(p),
        };
    }
    for c in &sc.commands {
        cmd.arg("-c").arg(c);
    }
    let (so, se, code) = run_timeout(cmd, Duration::from_secs(30))?;
    let mut evs = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&events) {
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(l).map_err(|e| format!("events file line {l:?}: {e}"))?;
            evs.push(strip_timestamp(v)?);
        }
    }
    Ok(Outcome {
        stdout: lines(&so),
        stderr: lines(&se),
        code,
        immediate: evs.len(),
        events: evs,
        slow: false,
        images: read_images(&paths),
    })
}

/// `qemu-io` opening the quorum node itself (`json:` filename): exact
/// errnos and blkverify's exit, no events.
pub(crate) fn qemu_direct(sc: &Scenario, dir: &Path) -> Result<Outcome, String> {
    let paths = make_images(sc, dir);
    let mut cmd = Command::new("qemu-io");
    for c in &sc.commands {
        cmd.arg("-c").arg(c);
    }
    cmd.arg(format!("json:{}", quorum_json(sc, &paths)));
    let (so, se, code) = run_timeout(cmd, Duration::from_secs(30))?;
    Ok(Outcome {
        stdout: lines(&so),
        stderr: lines(&se),
        code,
        images: read_images(&paths),
        ..Outcome::default()
    })
}

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events seen while waiting for command replies, with arrival time.
    events: Vec<(Instant, Value)>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp, String> {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    return Err(format!("QMP socket {}: {e}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
            events: Vec::new(),
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting {greeting}"));
        }
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Value, String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => serde_json::from_str(&l).map_err(|e| format!("QMP line {l:?}: {e}")),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    fn cmd(&mut self, name: &str, args: Value) -> Result<Value, String> {
        let msg = json!({"execute": name, "arguments": args});
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let v = self.line()?;
            if v.get("event").is_some() {
                self.events.push((Instant::now(), v));
            } else if v.get("QMP").is_some() {
                // A repeated greeting (seen once under load): not a reply.
                continue;
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else {
                return Err(format!("QMP {name} failed: {v}"));
            }
        }
    }

    /// Collects the events QMP's throttle still holds back: each is sent at
    /// most one second after the previous event of its kind, so wait until
    /// a little over a second has passed with no event at all.
    fn drain_throttled(&mut self) -> Result<(), String> {
        let Some(mut last) = self.events.last().map(|e| e.0) else {
            return Ok(());
        };
        let quiet = Duration::from_millis(1250);
        loop {
            let now = Instant::now();
            if now >= last + quiet {
                return Ok(());
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(last + quiet - now))
                .map_err(|e| e.to_string())?;
            let mut l = String::new();
            match self.reader.read_line(&mut l) {
                Ok(0) => return Err("QMP connection closed".into()),
                Ok(_) => {
                    let v: Value =
                        serde_json::from_str(&l).map_err(|e| format!("QMP line {l:?}: {e}"))?;
                    if v.get("event").is_some() {
                        last = Instant::now();
                        self.events.push((last, v));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(format!("QMP read: {e}")),
            }
        }
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qemu-storage-daemon` with the quorum node exported over NBD on a unix
/// socket; [`super::nbd::run`] runs the commands against the export (see
/// there why not `qemu-io`), and the QMP events are collected.
pub(crate) fn qemu_nbd(sc: &Scenario, dir: &Path) -> Result<Outcome, String> {
    let paths = make_images(sc, dir);
    let qmp_sock = dir.join("qmp.sock");
    let nbd_sock = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&qmp_sock);
    let _ = std::fs::remove_file(&nbd_sock);
    let pidfile = dir.join("qsd.pid");
    let _ = std::fs::remove_file(&pidfile);
    // The node, the NBD server and the export come from the command line
    // (processed in order, before the monitor below exists), so once the QMP
    // socket answers the export is ready; QMP itself carries only
    // `qmp_capabilities`, a sync command and the events. (Under load QEMU's
    // monitor has been seen to drop a byte of a long command; the node
    // definition must not be exposed to that.)
    let daemon = Daemon(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(quorum_json(sc, &paths).to_string())
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd_sock.display()))
            .arg("--export")
            .arg(format!(
                "type=nbd,id=e,node-name={},writable=on",
                sc.device_name()
            ))
            .arg("--chardev")
            .arg(format!(
                "socket,id=m,path={},server=on,wait=off",
                qmp_sock.display()
            ))
            .args(["--monitor", "chardev=m"])
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start qemu-storage-daemon: {e}"))?,
    );
    // qemu-storage-daemon writes its pid file once every option above is
    // set up; connecting earlier has been seen to lose the QMP greeting.
    let start = Instant::now();
    while !pidfile.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("qemu-storage-daemon did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut qmp = Qmp::connect(&qmp_sock)?;
    let start = Instant::now();
    let log = super::nbd::run(&nbd_sock, sc.device_name(), &sc.commands)?;
    let took = start.elapsed();
    // Every event emitted during the commands precedes this reply.
    qmp.cmd("query-version", json!({}))?;
    let immediate = qmp.events.len();
    qmp.drain_throttled()?;
    let slow = took > Duration::from_millis(700);
    let events = std::mem::take(&mut qmp.events)
        .into_iter()
        .map(|(_, v)| strip_timestamp(v))
        .collect::<Result<Vec<_>, _>>()?;
    let _ = qmp.cmd("quit", json!({}));
    let mut daemon = daemon;
    let start = Instant::now();
    while daemon.0.try_wait().ok().flatten().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(daemon);
    Ok(Outcome {
        stdout: log,
        events,
        immediate,
        slow,
        images: read_images(&paths),
        ..Outcome::default()
    })
}
