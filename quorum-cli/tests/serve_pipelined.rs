//! Hostile clients of `quorum serve` with many requests in flight, played
//! by raw sockets: one that disconnects with 32 requests outstanding, one
//! that asks for block status it never negotiated or past the end, ones
//! that flood requests and never read a reply. Each gets an error or a
//! closed connection; the server's memory stays bounded, a well-behaved
//! client carries on beside them, and nothing acknowledged is lost.
//! Structured replies are checked chunk by chunk on the way.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use quorum_nbd::blocking::MAX_IN_FLIGHT_BYTES;
use quorum_nbd::client::Client;
use quorum_nbd::wire::{RequestHeader, cflag, chunk, cmd, err, state};

fn header(command: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    RequestHeader {
        flags,
        command,
        cookie,
        offset,
        len,
    }
    .encode()
}

/// `quorum serve` on loopback over three sparse images of `size`; its
/// address (HOST:PORT) and images.
fn server(tmp: &Tmp, size: u64) -> (Proc, String, Vec<std::path::PathBuf>) {
    let imgs = tmp.images(3, size);
    let mut args: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
    args.extend(strs(&imgs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (p, url) = serve(tmp, &args);
    let addr = url
        .trim_start_matches("nbd://")
        .trim_end_matches('/')
        .to_string();
    (p, addr, imgs)
}

fn good_client(addr: &str) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Client::handshake(s, "").expect("handshake")
}

/// A round of work by the well-behaved client: write, read back, flush.
fn check_good(good: &mut Client<TcpStream>, round: u8) {
    let off = 60 << 20;
    assert_eq!(good.write(&[round; 65536], off, 1 << 20).unwrap(), Ok(()));
    let mut b = vec![0u8; 65536];
    assert_eq!(good.read(&mut b, off, 1 << 20).unwrap(), Ok(()));
    assert!(b.iter().all(|&x| x == round), "round {round}");
    assert_eq!(good.flush().unwrap(), Ok(()));
}

fn connections_ended(tmp: &Tmp) -> usize {
    std::fs::read_to_string(tmp.path("serve.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("connection "))
        .count()
}

#[test]
fn clients_that_vanish_with_32_requests_outstanding_harm_no_one() {
    let tmp = Tmp::new("vanish32");
    let (mut server, addr, imgs) = server(&tmp, 64 << 20);
    let mut good = good_client(&addr);
    for round in 0..8u8 {
        let mut s = handshaken(&addr);
        let mut msg = Vec::new();
        for i in 0..32u64 {
            let off = (i % 16) * (1 << 20);
            if i % 2 == 0 {
                msg.extend(header(cmd::WRITE, 0, i, off, 65536));
                msg.extend(std::iter::repeat_n(round, 65536));
            } else {
                msg.extend(header(cmd::READ, 0, i, off, 65536));
            }
        }
        s.write_all(&msg).unwrap();
        // Gone before reading one reply.
        let _ = s.shutdown(std::net::Shutdown::Both);
        drop(s);
        check_good(&mut good, round + 1);
    }
    // Each vanished connection finishes what it read, then ends.
    let t = Instant::now();
    while connections_ended(&tmp) < 8 {
        assert!(t.elapsed() < WAIT, "connections still open");
        std::thread::sleep(Duration::from_millis(20));
    }
    check_good(&mut good, 100);
    good.disconnect().unwrap();
    assert!(server.alive());
    drop(server);
    let a = std::fs::read(&imgs[0]).unwrap();
    for p in &imgs[1..] {
        assert!(std::fs::read(p).unwrap() == a, "replicas differ");
    }
    // The good client's last write is there.
    assert!(a[60 << 20..][..65536].iter().all(|&x| x == 100));
}

#[test]
fn block_status_unnegotiated_or_past_the_end_is_einval_and_structured_replies_are_right() {
    let tmp = Tmp::new("bstatus");
    let size = 8u64 << 20;
    let (mut server, addr, _imgs) = server(&tmp, size);
    let mut good = good_client(&addr);
    assert_eq!(good.write(&[7; 8192], 1 << 20, 1 << 20).unwrap(), Ok(()));

    // Simple replies, no context: block status is EINVAL, a simple reply,
    // and the connection goes on.
    let mut s = handshaken(&addr);
    s.write_all(&header(cmd::BLOCK_STATUS, 0, 1, 0, 4096))
        .unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!((r.cookie, r.error), (1, err::EINVAL));
    s.write_all(&header(cmd::READ, 0, 2, 1 << 20, 16)).unwrap();
    let r = read_reply(&mut s, 16);
    assert_eq!((r.cookie, r.error), (2, 0));
    assert_eq!(r.chunks[0].1, [7; 16]);

    // Structured replies without the context: an ERROR chunk.
    let (mut s, _) = negotiated(&addr, false);
    s.write_all(&header(cmd::BLOCK_STATUS, 0, 3, 0, 4096))
        .unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!((r.cookie, r.error), (3, err::EINVAL));
    assert_eq!(r.chunks.len(), 1);
    assert_eq!(r.chunks[0].0, chunk::ERROR);

    // With the context: past the end, zero length, an unknown flag.
    let (mut s, id) = structured(&addr);
    for (cookie, flags, offset, len) in [
        (4, 0, size, 4096),
        (5, 0, size - 4096, 8192),
        (6, 0, u64::MAX - 10, 4096),
        (7, 0, 0, 0),
        (8, cflag::FUA, 0, 4096),
    ] {
        s.write_all(&header(cmd::BLOCK_STATUS, flags, cookie, offset, len))
            .unwrap();
        let r = read_reply(&mut s, 0);
        assert_eq!((r.cookie, r.error), (cookie, err::EINVAL), "{r:?}");
        assert_eq!(r.chunks[0].0, chunk::ERROR);
    }
    // And the real thing: zeroes up to 1 MiB, data for 8 KiB, zeroes on.
    s.write_all(&header(cmd::BLOCK_STATUS, 0, 9, 0, size as u32))
        .unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!((r.cookie, r.error), (9, 0));
    assert_eq!(r.chunks.len(), 1);
    assert_eq!(r.chunks[0].0, chunk::BLOCK_STATUS);
    let p = &r.chunks[0].1;
    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), id);
    let extents: Vec<(u32, u32)> = p[4..]
        .chunks(8)
        .map(|e| {
            (
                u32::from_be_bytes(e[..4].try_into().unwrap()),
                u32::from_be_bytes(e[4..].try_into().unwrap()),
            )
        })
        .collect();
    let zero = state::HOLE | state::ZERO;
    assert_eq!(
        extents,
        [(1 << 20, zero), (8192, 0), ((7 << 20) - 8192, zero)]
    );
    // REQ_ONE: one extent, no longer than asked.
    s.write_all(&header(cmd::BLOCK_STATUS, cflag::REQ_ONE, 10, 4096, 8192))
        .unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!(r.chunks.len(), 1);
    assert_eq!(
        r.chunks[0].1[4..],
        [&8192u32.to_be_bytes()[..], &zero.to_be_bytes()[..]].concat()
    );
    // Reads: zeroes as OFFSET_HOLE, data as OFFSET_DATA (DF accepted).
    s.write_all(&header(cmd::READ, cflag::DF, 11, 0, 4096))
        .unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!(r.error, 0);
    assert_eq!(r.chunks.len(), 1);
    assert_eq!(r.chunks[0].0, chunk::OFFSET_HOLE);
    assert_eq!(
        r.chunks[0].1,
        [&0u64.to_be_bytes()[..], &4096u32.to_be_bytes()[..]].concat()
    );
    s.write_all(&header(cmd::READ, 0, 12, 1 << 20, 4096))
        .unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!(r.chunks.len(), 1);
    assert_eq!(r.chunks[0].0, chunk::OFFSET_DATA);
    assert_eq!(r.chunks[0].1[..8], (1u64 << 20).to_be_bytes());
    assert!(r.chunks[0].1[8..] == [7; 4096]);
    // A read past the end: an ERROR chunk, and the connection goes on.
    s.write_all(&header(cmd::READ, 0, 13, size, 1)).unwrap();
    let r = read_reply(&mut s, 0);
    assert_eq!((r.cookie, r.error), (13, err::EINVAL));
    assert_eq!(good.flush().unwrap(), Ok(()));
    assert!(server.alive());
}

/// Floods `addr` with 32 MiB reads and never reads a reply, until the
/// server stops taking requests (a write blocks for two seconds); how many
/// went out.
fn flood(addr: &str) -> (TcpStream, u64) {
    let mut s = handshaken(addr);
    // A few big reads answered first: they take milliseconds, so the
    // connection runs what comes next on helper threads, side by side.
    for i in 0..4 {
        s.write_all(&header(cmd::READ, 0, i, 0, 32 << 20)).unwrap();
        assert_eq!(read_reply(&mut s, 32 << 20).error, 0);
    }
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0u64;
    let burst: Vec<u8> = (0..64)
        .flat_map(|i| header(cmd::READ, 0, i, 0, 32 << 20))
        .collect();
    while sent < 1 << 20 {
        if s.write_all(&burst).is_err() {
            break;
        }
        sent += 64;
    }
    (s, sent)
}

#[test]
fn clients_that_flood_and_never_read_hold_bounded_memory_and_block_no_one() {
    let tmp = Tmp::new("flood");
    let (mut server, addr, imgs) = server(&tmp, 64 << 20);
    let pid = server.0.id();
    let mut good = good_client(&addr);
    check_good(&mut good, 1);
    let before = rss_kib(pid);
    // Two floods, side by side: each asks for gigabytes of replies.
    let a = std::thread::spawn({
        let addr = addr.clone();
        move || flood(&addr)
    });
    let b = std::thread::spawn({
        let addr = addr.clone();
        move || flood(&addr)
    });
    let (fa, sent_a) = a.join().unwrap();
    let (fb, sent_b) = b.join().unwrap();
    assert!(
        sent_a < 1 << 20 && sent_b < 1 << 20,
        "the server read a million requests it could not answer"
    );
    let during = rss_kib(pid);
    eprintln!(
        "server RSS {before} KiB before the floods, {during} KiB during ({sent_a} + {sent_b} requests sent)"
    );
    // Per connection, at most MAX_IN_FLIGHT_BYTES of requests, each read
    // held by its reply and by every child's buffer for the vote (4x),
    // plus one reply waiting to be sent: 5x (6x with the allocator's
    // slack). Without the bound, the floods would ask for terabytes.
    let bound = 2 * 6 * (MAX_IN_FLIGHT_BYTES as u64 / 1024);
    assert!(
        during < before + bound,
        "resident memory grew from {before} KiB to {during} KiB, over {bound} KiB (requests sent: {sent_a} + {sent_b}, {} GiB of replies)",
        (sent_a + sent_b) * 32 / 1024
    );
    // The others carry on: reads, writes, flushes (which run on helper
    // threads, none of them all held by the floods).
    for round in 2..6 {
        check_good(&mut good, round);
    }
    // A stop with the floods still connected: the server answers what it
    // can, cuts the floods off after its grace period, flushes, exits 0.
    signal(pid, "TERM");
    let status = wait_exit(&mut server);
    let log = std::fs::read_to_string(tmp.path("serve.log")).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(log.contains("cut off"), "{log}");
    assert!(log.contains("stopped: 3 connection(s) finished"), "{log}");
    drop((fa, fb));
    let d = std::fs::read(&imgs[0]).unwrap();
    assert!(d[60 << 20..][..65536].iter().all(|&x| x == 5));
    for p in &imgs[1..] {
        assert!(std::fs::read(p).unwrap() == d, "replicas differ");
    }
}
