//! `quorum serve` end to end, with QEMU's tools as real peers: qemu-io and
//! qemu-img as clients, qemu-nbd as the server of NBD children. Hostile
//! clients are played by raw sockets. Everything runs on loopback or unix
//! sockets, every wait is bounded, and every process started is killed.
//!
//! Without QEMU the tests are skipped (with a note), except under `CI=true`
//! or `QUORUM_DIFF_REQUIRE_QEMU=1`, where they fail.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use quorum_nbd::client::Client;
use quorum_nbd::wire::{self, RequestHeader, cmd, err, opt};

#[test]
fn qemu_io_and_qemu_img_read_and_write_through_serve() {
    if !qemu_present() {
        return;
    }
    let tmp = Tmp::new("basic");
    let imgs = strs(&tmp.images(3, 4 << 20));
    let events = tmp.path("events.json").display().to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threshold",
        "2",
        "--rewrite-corrupted",
        "--events",
        &events,
    ];
    args.extend(imgs.iter().map(String::as_str));
    let (mut server, url) = serve(&tmp, &args);
    let out = ok(&qemu_io(
        &url,
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -z 64k 64k",
            "read -P 0 64k 64k",
            "flush",
            "length",
        ],
    ));
    assert!(out.contains("4 MiB"), "{out}");
    for p in &imgs {
        assert_eq!(read_at(Path::new(p), 0, 65536), vec![0xab; 65536]);
    }
    // A request past the end fails; the server goes on.
    let o = qemu_io(&url, &["read 4194300 8"]);
    assert!(!o.status.success() || String::from_utf8_lossy(&o.stdout).contains("failed"));
    // One replica corrupted behind the device's back: outvoted, reported,
    // rewritten (--rewrite-corrupted).
    write_at(Path::new(&imgs[1]), 4096, &[0x55; 512]);
    ok(&qemu_io(&url, &["read -P 0xab 0 8k"]));
    assert_eq!(read_at(Path::new(&imgs[1]), 4096, 512), vec![0xab; 512]);
    let ev = std::fs::read_to_string(&events).expect("events");
    assert!(
        ev.contains("QUORUM_REPORT_BAD") && ev.contains("children.1"),
        "{ev}"
    );
    // qemu-img as a client: a copy of the device, and a comparison.
    let copy = tmp.path("copy.img");
    let o = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &url])
        .arg(&copy));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&imgs[0]).unwrap()
    );
    let o =
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &url, &imgs[2]]));
    assert!(o.status.success(), "{o:?}");
    // And qemu-img writing the device: convert a file into it.
    let src = tmp.path("src.img");
    std::fs::write(
        &src,
        (0..4u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&url));
    assert!(o.status.success(), "{o:?}");
    for p in &imgs {
        assert!(std::fs::read(p).unwrap() == std::fs::read(&src).unwrap());
    }
    assert!(server.alive());
}

#[test]
fn several_clients_at_once_over_a_unix_socket() {
    if !qemu_present() {
        return;
    }
    let tmp = Tmp::new("multi");
    let imgs = strs(&tmp.images(3, 4 << 20));
    let sock = tmp.path("q.sock").display().to_string();
    let listen = format!("unix:{sock}");
    let mut args = vec!["--listen", &listen, "--export-name", "disk"];
    args.extend(imgs.iter().map(String::as_str));
    let (mut server, url) = serve(&tmp, &args);
    assert_eq!(url, format!("nbd+unix:///disk?socket={sock}"));
    let clients: Vec<_> = (0..6u64)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let base = i * (512 << 10);
                let cmds: Vec<String> = (0..8u64)
                    .flat_map(|k| {
                        let off = base + k * (64 << 10);
                        [
                            format!("write -P {} {off} 64k", 0x10 + i),
                            format!("read -P {} {off} 64k", 0x10 + i),
                        ]
                    })
                    .collect();
                let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
                qemu_io(&url, &cmds)
            })
        })
        .collect();
    for c in clients {
        ok(&c.join().expect("client thread"));
    }
    let a = std::fs::read(&imgs[0]).unwrap();
    for i in 0..6usize {
        let r = &a[i * (512 << 10)..(i + 1) * (512 << 10)];
        assert!(r.iter().all(|&b| b == 0x10 + i as u8), "region {i}");
    }
    for p in &imgs[1..] {
        assert!(std::fs::read(p).unwrap() == a);
    }
    assert!(server.alive());
}

#[test]
fn hostile_clients_get_errors_or_closed_connections_and_others_carry_on() {
    if !qemu_present() {
        return;
    }
    let tmp = Tmp::new("hostile");
    let imgs = strs(&tmp.images(3, 1 << 20));
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend(imgs.iter().map(String::as_str));
    let (mut server, url) = serve(&tmp, &args);
    let addr = url
        .trim_start_matches("nbd://")
        .trim_end_matches('/')
        .to_string();
    // A well-behaved client stays connected through everything below.
    let good = TcpStream::connect(&addr).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut good = Client::handshake(good, "").expect("handshake");
    assert_eq!(good.size(), 1 << 20);
    let mut check_good = |round: u8| {
        assert_eq!(good.write(&[round; 4096], 0, 1 << 20).unwrap(), Ok(()));
        let mut b = [0u8; 4096];
        assert_eq!(good.read(&mut b, 0, 1 << 20).unwrap(), Ok(()));
        assert_eq!(b, [round; 4096]);
    };
    // Garbage instead of client flags.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&[0xff; 1000]);
    assert!(closed(&mut s));
    check_good(1);
    // Old-style client (no fixed newstyle flag).
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&[0, 0, 0, 0]);
    assert!(closed(&mut s));
    // A truncated option, then the client goes away.
    let mut s = TcpStream::connect(&addr).unwrap();
    let _ = s.write_all(&3u32.to_be_bytes());
    let _ = s.write_all(&wire::encode_option(opt::GO, &[0; 40])[..30]);
    drop(s);
    // An option announcing 4 GiB of data.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut o = wire::encode_option(opt::INFO, &[]);
    o[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    let _ = s.write_all(&3u32.to_be_bytes());
    let _ = s.write_all(&o);
    assert!(closed(&mut s));
    // Connect and say nothing; another sends half a greeting's worth and stops.
    let silent = TcpStream::connect(&addr).unwrap();
    let mut half = TcpStream::connect(&addr).unwrap();
    let _ = half.write_all(&[0, 0]);
    check_good(2);
    // After the handshake: past the end, oversize, unknown command and flag.
    let mut s = handshaken(&addr);
    assert_eq!(request(&mut s, cmd::READ, 0, 1 << 20, 1, &[]), err::EINVAL);
    assert_eq!(
        request(&mut s, cmd::READ, 0, u64::MAX, 4096, &[]),
        err::EINVAL
    );
    assert_eq!(
        request(&mut s, cmd::WRITE, 0, (1 << 20) - 1, 2, &[9, 9]),
        err::ENOSPC
    );
    assert_eq!(
        request(&mut s, cmd::WRITE_ZEROES, 0, 1 << 20, 512, &[]),
        err::ENOSPC
    );
    assert_eq!(request(&mut s, cmd::READ, 0, 0, 64 << 20, &[]), err::EINVAL);
    assert_eq!(request(&mut s, 77, 0, 0, 0, &[]), err::EINVAL);
    assert_eq!(request(&mut s, cmd::READ, 0x4000, 0, 512, &[]), err::EINVAL);
    // The connection still works after those errors.
    assert_eq!(request(&mut s, cmd::WRITE, 0, 8192, 4, &[1, 2, 3, 4]), 0);
    assert_eq!(request(&mut s, cmd::FLUSH, 0, 0, 0, &[]), 0);
    // An oversize write: an error reply, then the connection closes.
    assert_eq!(
        request(&mut s, cmd::WRITE, 0, 0, u32::MAX, &[]),
        err::EINVAL
    );
    assert!(closed(&mut s));
    // Bad request magic: closed.
    let mut s = handshaken(&addr);
    let _ = s.write_all(&[0x77; 28]);
    assert!(closed(&mut s));
    // A write whose payload never fully arrives, then the client vanishes.
    let mut s = handshaken(&addr);
    let h = RequestHeader {
        flags: 0,
        command: cmd::WRITE,
        cookie: 1,
        offset: 0,
        len: 1 << 16,
    };
    let _ = s.write_all(&h.encode());
    let _ = s.write_all(&[0xee; 100]);
    drop(s);
    check_good(3);
    // The bytes of the good client are there; the vanished write is not.
    assert_eq!(read_at(Path::new(&imgs[0]), 0, 4096), vec![3; 4096]);
    assert_eq!(read_at(Path::new(&imgs[0]), 8192, 4), vec![1, 2, 3, 4]);
    // A real client still works, while the silent ones hold their sockets.
    ok(&qemu_io(
        &url,
        &[
            "read -P 3 0 4k",
            "write -P 0x42 64k 64k",
            "read -P 0x42 64k 64k",
        ],
    ));
    drop((silent, half));
    good.disconnect().unwrap();
    assert!(server.alive(), "server died");
}

#[test]
fn nbd_children_outlive_a_dead_replica_and_scrub_resyncs_it() {
    if !qemu_present() {
        return;
    }
    let tmp = Tmp::new("children");
    let imgs = tmp.images(3, 2 << 20);
    let (mut replicas, socks, kids) = qemu_nbd_hosts(&tmp, &imgs);
    let events = tmp.path("events.json").display().to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threshold",
        "2",
        "--events",
        &events,
    ];
    args.extend(kids.iter().map(String::as_str));
    let (mut server, url) = serve(&tmp, &args);
    ok(&qemu_io(
        &url,
        &["write -P 0x11 0 256k", "read -P 0x11 0 256k"],
    ));
    // A client keeps reading and writing while host2's server dies.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let url2 = url.clone();
    let worker = std::thread::spawn(move || {
        let mut rounds = 0u64;
        while stop_rx.try_recv().is_err() && rounds < 200 {
            let off = (rounds % 8) * (64 << 10) + (512 << 10);
            let p = 0x20 + (rounds % 8) as u8;
            let w = format!("write -P {p} {off} 64k");
            let r = format!("read -P {p} {off} 64k");
            ok(&qemu_io(&url2, &[&w, &r, "read -P 0x11 0 64k"]));
            rounds += 1;
        }
        rounds
    });
    std::thread::sleep(Duration::from_millis(300));
    replicas[2].0.kill().expect("kill qemu-nbd");
    let _ = replicas[2].0.wait();
    std::thread::sleep(Duration::from_millis(700));
    let _ = stop_tx.send(());
    let rounds = worker.join().expect("the client kept working");
    assert!(rounds > 0);
    // Written while host2 was down: quorum of two.
    ok(&qemu_io(
        &url,
        &["write -P 0x33 1M 128k", "read -P 0x33 1M 128k", "flush"],
    ));
    let ev = std::fs::read_to_string(&events).expect("events");
    assert!(
        ev.lines()
            .any(|l| l.contains("QUORUM_REPORT_BAD") && l.contains("\"host2\"")),
        "the dead child is not reported: {ev}"
    );
    assert!(!ev.contains("QUORUM_FAILURE"), "{ev}");
    assert!(server.alive());
    drop(server);
    // host2 comes back, stale; scrub --repair over the three NBD children.
    replicas[2] = qemu_nbd(&imgs[2], &socks[2]);
    assert_ne!(
        std::fs::read(&imgs[2]).unwrap(),
        std::fs::read(&imgs[0]).unwrap()
    );
    let o = run(Command::new(BIN).args(["scrub", "--repair"]).args(&kids));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let o = run(Command::new(BIN).arg("scrub").args(&kids));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    drop(replicas);
    let a = std::fs::read(&imgs[0]).unwrap();
    assert!(std::fs::read(&imgs[1]).unwrap() == a);
    assert!(std::fs::read(&imgs[2]).unwrap() == a, "host2 not re-synced");
}

#[test]
fn tcp_nbd_children_served_by_quorum_serve_itself() {
    if !qemu_present() {
        return;
    }
    // Three single-replica servers (threshold 1) stand in for three hosts;
    // `quorum io` and `quorum scrub` use them as nbd:// children over TCP.
    let tmp = Tmp::new("tcp");
    let imgs = strs(&tmp.images(3, 1 << 20));
    let mut hosts = Vec::new();
    let mut urls = Vec::new();
    for (i, img) in imgs.iter().enumerate() {
        let sub = Tmp::new(&format!("tcp-host{i}"));
        let (p, url) = serve(
            &sub,
            &["--listen", "127.0.0.1:0", "--export-name", "r", img],
        );
        hosts.push((p, sub));
        urls.push(url);
    }
    assert!(
        urls.iter()
            .all(|u| u.starts_with("nbd://127.0.0.1:") && u.ends_with("/r"))
    );
    let o = run(Command::new(BIN)
        .args(["io", "--threshold", "2"])
        .args(&urls)
        .args(["-c", "write -P 0x5a 0 128k", "-c", "read -P 0x5a 0 128k"]));
    ok(&o);
    for p in &imgs {
        assert_eq!(read_at(Path::new(p), 0, 131072), vec![0x5a; 131072]);
    }
    // A wrong export name is refused, clearly.
    let bad = urls[0].replace("/r", "/nope");
    let o = run(Command::new(BIN).args(["io", "--threshold", "1", &bad, "-c", "read 0 4k"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.starts_with("quorum io: can't open:") && err.contains("nope"),
        "{err}"
    );
    write_at(Path::new(&imgs[0]), 0, &[1; 512]);
    let o = run(Command::new(BIN).args(["scrub", "--repair"]).args(&urls));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(read_at(Path::new(&imgs[0]), 0, 512), vec![0x5a; 512]);
    for (p, _) in &mut hosts {
        assert!(p.alive());
    }
}

#[test]
fn bad_input_is_one_line_and_exit_status_1() {
    let tmp = Tmp::new("bad");
    let imgs = strs(&tmp.images(2, 1 << 20));
    std::fs::File::create(tmp.path("small.img"))
        .and_then(|f| f.set_len(4096))
        .unwrap();
    let small = tmp.path("small.img").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--threshold", "x", &imgs[0]], "not a number"),
        (vec!["--threshold", "3", &imgs[0], &imgs[1]], "threshold"),
        (vec!["--read-pattern", "x", &imgs[0]], "read-pattern"),
        (vec![&imgs[0], &small], "differ in size"),
        (vec![&imgs[0], "/nonexistent/x.img"], "x.img"),
        (
            vec![&imgs[0], "nbd+unix:///?socket=/nonexistent/s"],
            "socket",
        ),
        (vec!["--listen", "256.0.0.1:1", &imgs[0]], "--listen"),
        (vec!["--inject-error", "9:read:5", &imgs[0]], "inject-error"),
    ];
    for (args, want) in cases {
        let o = run(Command::new(BIN).arg("serve").args(&args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("quorum serve: ") && err.lines().count() == 1 && err.contains(want),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn connections_over_the_limit_are_closed_and_the_limit_frees_up() {
    let tmp = Tmp::new("limit");
    let imgs = strs(&tmp.images(1, 1 << 20));
    let (mut server, url) = serve(
        &tmp,
        &[
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "1",
            &imgs[0],
        ],
    );
    let addr = url
        .trim_start_matches("nbd://")
        .trim_end_matches('/')
        .to_string();
    let first = handshaken(&addr);
    let mut second = TcpStream::connect(&addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(closed(&mut second), "over the limit, yet served");
    drop(first);
    // The first connection's thread ends soon after its client leaves.
    let t = Instant::now();
    loop {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = [0u8; 18];
        if s.read_exact(&mut g).is_ok() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the limit never freed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.alive());
}

/// R-CANCEL-1 for the blocking driver: a client that goes away with
/// requests in flight — reads and writes sent, the connection closed
/// before their replies — says nothing about any child: not one
/// `QUORUM_REPORT_BAD`, and the replicas stay identical. (The device
/// finishes what the client had sent; the NBD protocol lets a write that
/// was never acknowledged land or not.)
#[test]
fn r_cancel_1_clients_gone_mid_request_report_nothing() {
    if !qemu_present() {
        return;
    }
    let tmp = Tmp::new("gone");
    let imgs = tmp.images(3, 64 << 20);
    let events = tmp.path("events.json");
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--events".into(),
        events.to_str().unwrap().into(),
    ];
    args.extend(strs(&imgs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, url) = serve(&tmp, &args);
    let addr = url.trim_start_matches("nbd://").trim_end_matches('/');
    let big = vec![0x5au8; 8 << 20];
    for i in 0..20u64 {
        let mut s = handshaken(addr);
        let off = (i % 6) * (8 << 20);
        let h = |command, cookie| RequestHeader {
            flags: 0,
            command,
            cookie,
            offset: off,
            len: big.len() as u32,
        };
        if i % 2 == 0 {
            s.write_all(&h(cmd::WRITE, 1).encode()).unwrap();
            s.write_all(&big).unwrap();
        }
        s.write_all(&h(cmd::READ, 2).encode()).unwrap();
        // Gone before any reply.
        let _ = s.shutdown(std::net::Shutdown::Both);
        drop(s);
    }
    // A client that stays, away from what the others left behind (their
    // unacknowledged writes may land whenever they do): everything it does
    // succeeds.
    let o = qemu_io(
        &url,
        &["write -P 0x11 60M 64k", "read -P 0x11 60M 64k", "flush"],
    );
    ok(&o);
    assert!(server.alive());
    // The server finishes what the clients sent before they left: wait for
    // every connection to end, so that no write is cut short by the kill.
    let t = Instant::now();
    let ended = || {
        std::fs::read_to_string(tmp.path("serve.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("connection "))
            .count()
    };
    while ended() < 21 {
        assert!(t.elapsed() < WAIT, "connections still open");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(
        !text.contains("QUORUM_REPORT_BAD") && !text.contains("QUORUM_FAILURE"),
        "a client going away is no sign of a bad replica: {text}"
    );
    let a = std::fs::read(&imgs[0]).unwrap();
    for p in &imgs[1..] {
        assert!(std::fs::read(p).unwrap() == a, "replicas differ");
    }
}
