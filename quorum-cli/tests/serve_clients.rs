//! `quorum serve` with the NBD clients people run: fio's `nbd` engine
//! (libnbd) pipelining at depth 32 with its own data verification,
//! `nbdinfo` and `nbdcopy` (libnbd-bin), `qemu-img convert` and `qemu-img
//! map` reading block status; and the server stopped by SIGTERM and SIGINT
//! under a write load.
//!
//! Without the tools the tests are skipped (with a note), except under
//! `CI=true` or `QUORUM_DIFF_REQUIRE_QEMU=1`, where they fail: `.ci/run`
//! installs fio, libnbd-bin and qemu-utils.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use quorum_nbd::wire::{self, RequestHeader, cmd};

/// `quorum serve` on loopback over three fresh sparse images of `size`.
fn three(tmp: &Tmp, size: u64, extra: &[&str]) -> (Proc, String, Vec<std::path::PathBuf>) {
    let imgs = tmp.images(3, size);
    let mut args: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(strs(&imgs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (p, url) = serve(tmp, &args);
    (p, url, imgs)
}

fn same_replicas(imgs: &[std::path::PathBuf]) {
    let a = std::fs::read(&imgs[0]).unwrap();
    for p in &imgs[1..] {
        assert!(std::fs::read(p).unwrap() == a, "replicas differ");
    }
}

/// fio writes random 4 KiB blocks at depth 32, each stamped with a CRC32C,
/// then reads every one back and checks it; any wrong byte (a reply sent
/// for the wrong cookie, data from the wrong offset, a lost write) fails
/// the run. One connection, then four (fio jobs, each over its own region);
/// then 64 KiB blocks on one connection (large reads run two at a time, one
/// on a helper: replies out of order).
#[test]
fn fio_verifies_crc32c_at_depth_32_on_one_and_on_four_connections() {
    if !tools(&["fio"]) {
        return;
    }
    let tmp = Tmp::new("fio");
    let (mut server, url, imgs) = three(&tmp, 64 << 20, &[]);
    for (jobs, size, bs) in [(1, "16M", "4k"), (4, "8M", "4k"), (1, "16M", "64k")] {
        let o = run(Command::new("fio").current_dir(&tmp.0).args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            &format!("--bs={bs}"),
            "--iodepth=32",
            &format!("--numjobs={jobs}"),
            &format!("--size={size}"),
            "--offset_increment=16M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--group_reporting",
        ]));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("err= 0"),
            "fio with {jobs} connection(s), {bs} blocks:\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // The verification pass read everything back.
        assert!(out.contains("READ: bw="), "no verification reads:\n{out}");
    }
    assert!(server.alive());
    drop(server);
    same_replicas(&imgs);
}

/// A sparse device: 64 MiB, with data at 1 MiB (64 KiB) and at 40 MiB
/// (1 MiB) written through the server, holes everywhere else.
fn sparse(tmp: &Tmp) -> (Proc, String, Vec<std::path::PathBuf>) {
    let (p, url, imgs) = three(tmp, 64 << 20, &[]);
    ok(&qemu_io(
        &url,
        &["write -P 0x61 1M 64k", "write -P 0x62 40M 1M", "flush"],
    ));
    (p, url, imgs)
}

#[test]
fn nbdinfo_lists_structured_replies_and_base_allocation_and_maps_the_holes() {
    if !tools(&["nbdinfo"]) || !qemu_present() {
        return;
    }
    let tmp = Tmp::new("nbdinfo");
    let (mut server, url, _imgs) = sparse(&tmp);
    let info = ok(&run(Command::new("nbdinfo").arg(&url)));
    assert!(info.contains("structured"), "{info}");
    assert!(info.contains("base:allocation"), "{info}");
    assert!(info.contains("export-size: 67108864"), "{info}");
    // `nbdinfo --map`: offset, length, type (3 = hole,zero; 0 = data).
    let map = ok(&run(Command::new("nbdinfo").args(["--map", &url])));
    let extents: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let mib = 1u64 << 20;
    let data: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e.2 == 0)
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(data, [(mib, 64 << 10), (40 * mib, mib)], "{map}");
    assert!(
        extents.iter().all(|e| e.2 == 0 || e.2 == 3),
        "holes read as zero: {map}"
    );
    let covered: u64 = extents.iter().map(|e| e.1).sum();
    assert_eq!(covered, 64 * mib, "{map}");
    // qemu-img map reads the same through QEMU's client.
    let qmap = ok(&run(Command::new("qemu-img").args([
        "map",
        "-f",
        "raw",
        "--output=json",
        &url,
    ])));
    assert!(
        qmap.contains(r#""start": 0, "length": 1048576, "depth": 0, "present": true, "zero": true, "data": false"#),
        "{qmap}"
    );
    assert!(server.alive());
}

/// Bytes a file really occupies.
fn allocated(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn nbdcopy_and_qemu_img_convert_copy_a_sparse_device_sparsely_and_exactly() {
    if !tools(&["nbdcopy"]) || !qemu_present() {
        return;
    }
    let tmp = Tmp::new("copy");
    let (mut server, url, imgs) = sparse(&tmp);
    let by_nbdcopy = tmp.path("nbdcopy.img");
    ok(&run(
        Command::new("nbdcopy").args([url.as_str(), by_nbdcopy.to_str().unwrap()])
    ));
    // (qemu-img also finds zeroes in data it reads; `qemu-img map` in the
    // test above shows it reads the device's block status.)
    let by_qemu = tmp.path("qemu-img.img");
    ok(&run(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &url,
        by_qemu.to_str().unwrap(),
    ])));
    let want = std::fs::read(&imgs[0]).unwrap();
    for copy in [&by_nbdcopy, &by_qemu] {
        assert!(std::fs::read(copy).unwrap() == want, "{copy:?} differs");
        let a = allocated(copy);
        assert!(
            a < 4 << 20,
            "{copy:?} is not sparse: {a} bytes allocated for 1088 KiB of data"
        );
    }
    assert!(server.alive());
}

/// One pipelined writer over a raw connection: 4 KiB writes to blocks in
/// turn, each stamped with its sequence number, up to 16 in flight and
/// never two on the same block; what the server acknowledged, per block.
struct Writer {
    state: Mutex<WriterState>,
    changed: Condvar,
    ended: AtomicBool,
}

#[derive(Default)]
struct WriterState {
    /// cookie → (block, seq) of writes sent and not answered.
    in_flight: HashMap<u64, (u64, u64)>,
    /// block → the highest seq acknowledged.
    acked: HashMap<u64, u64>,
    errors: u64,
}

const BLOCKS: u64 = 4096;

fn stamp(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().repeat(512)
}

/// SIGTERM under a write load: the server stops taking connections, answers
/// what it has read, flushes, exits 0; every write it acknowledged is on
/// every child, and the children agree.
#[test]
fn sigterm_under_writes_keeps_every_acknowledged_write_on_every_child() {
    let tmp = Tmp::new("sigterm");
    let (mut server, url, imgs) = three(&tmp, BLOCKS * 4096, &[]);
    let addr = url.trim_start_matches("nbd://").trim_end_matches('/');
    let mut s = handshaken(addr);
    let mut r = s.try_clone().unwrap();
    let w = Arc::new(Writer {
        state: Mutex::new(WriterState::default()),
        changed: Condvar::new(),
        ended: AtomicBool::new(false),
    });
    let w2 = w.clone();
    let reader = std::thread::spawn(move || {
        let mut h = [0u8; 16];
        while r.read_exact(&mut h).is_ok() {
            let (error, cookie) = wire::decode_simple_reply(&h).expect("simple reply");
            let mut st = w2.state.lock().unwrap();
            let (block, seq) = st.in_flight.remove(&cookie).expect("a cookie sent");
            if error == 0 {
                let a = st.acked.entry(block).or_insert(seq);
                *a = (*a).max(seq);
            } else {
                st.errors += 1;
            }
            w2.changed.notify_all();
        }
        w2.ended.store(true, Ordering::SeqCst);
        w2.changed.notify_all();
    });
    let start = Instant::now();
    let mut signalled = false;
    let mut seq = 0u64;
    while !w.ended.load(Ordering::SeqCst) {
        assert!(start.elapsed() < WAIT, "the server never stopped");
        let block = seq % BLOCKS;
        {
            let mut st = w.state.lock().unwrap();
            while !w.ended.load(Ordering::SeqCst)
                && (st.in_flight.len() >= 16 || st.in_flight.values().any(|v| v.0 == block))
            {
                st = w
                    .changed
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
            st.in_flight.insert(seq, (block, seq));
        }
        let h = RequestHeader {
            flags: 0,
            command: cmd::WRITE,
            cookie: seq,
            offset: block * 4096,
            len: 4096,
        };
        let mut msg = h.encode().to_vec();
        msg.extend(stamp(seq));
        if s.write_all(&msg).is_err() {
            break;
        }
        seq += 1;
        let acked = w.state.lock().unwrap().acked.len();
        if !signalled && acked >= 2000 {
            signal(server.0.id(), "TERM");
            signalled = true;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    reader.join().unwrap();
    assert!(signalled, "no write acknowledged before the server ended");
    let status = wait_exit(&mut server);
    let log = std::fs::read_to_string(tmp.path("serve.log")).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(log.contains("stopped:"), "{log}");
    let st = w.state.lock().unwrap();
    assert_eq!(st.errors, 0, "write errors: {log}");
    let acked: usize = st.acked.len();
    assert!(acked >= 2000);
    same_replicas(&imgs);
    let disk = std::fs::read(&imgs[0]).unwrap();
    for (&block, &seq) in &st.acked {
        let b = &disk[(block * 4096) as usize..][..4096];
        let on_disk = u64::from_le_bytes(b[..8].try_into().unwrap());
        // The acknowledged write, or one sent after it (which may land).
        assert!(
            b == stamp(on_disk) && on_disk >= seq,
            "block {block}: write {seq} acknowledged, {on_disk} on the children"
        );
    }
}

/// SIGINT on an idle server with a client connected: the same clean stop.
#[test]
fn sigint_stops_an_idle_server_cleanly() {
    let tmp = Tmp::new("sigint");
    let (mut server, url, _imgs) = three(&tmp, 1 << 20, &[]);
    let addr = url.trim_start_matches("nbd://").trim_end_matches('/');
    let mut s = handshaken(addr);
    signal(server.0.id(), "INT");
    let status = wait_exit(&mut server);
    let log = std::fs::read_to_string(tmp.path("serve.log")).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(
        log.contains("stopped: 1 connection(s) finished, children flushed"),
        "{log}"
    );
    assert!(closed(&mut s), "the client's connection is closed");
    // And nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// SIGTERM stops a server whose socket file is gone (removed, or taken
/// over by another server's): stopping does not depend on reaching the
/// listener by its address.
#[test]
fn sigterm_stops_a_server_whose_socket_file_was_removed() {
    let tmp = Tmp::new("sigterm-unlinked");
    let imgs = tmp.images(3, 1 << 20);
    let sock = tmp.path("q.sock");
    let mut args = vec![
        "--listen".to_string(),
        format!("unix:{}", sock.display()),
        "--threshold".into(),
        "2".into(),
    ];
    args.extend(strs(&imgs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, _url) = serve(&tmp, &args);
    std::fs::remove_file(&sock).expect("the socket file exists");
    // Another server's socket now sits at that path.
    let _other = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    signal(server.0.id(), "TERM");
    let status = wait_exit(&mut server);
    let log = std::fs::read_to_string(tmp.path("serve.log")).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(
        log.contains("stopped: 0 connection(s) finished, children flushed"),
        "{log}"
    );
}
