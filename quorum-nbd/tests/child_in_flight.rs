//! An NBD child keeps many requests in flight on its one connection: they
//! overlap on the wire, each reply reaches its own caller whatever the
//! order, at most `MAX_IN_FLIGHT` are out at once; when the connection
//! breaks every request in flight fails and the child reconnects; and
//! nothing a hostile server sends panics or hangs a caller.

mod support;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use quorum_driver::Child;
use quorum_nbd::NbdChild;
use quorum_nbd::client::MAX_IN_FLIGHT;
use quorum_nbd::wire::{self, chunk};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const ENOTCONN: i32 = 107;

/// Runs `f(k)` on `n` threads at once; their results in order.
fn on_threads<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|k| {
            let f = f.clone();
            std::thread::spawn(move || f(k))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn thirty_two_reads_are_on_the_wire_at_once_and_each_finds_its_reply() {
    // The server answers nobody before 32 requests wait, then answers them
    // in reverse order (structured: their chunks interleaved). A client
    // that sent one request at a time would get nothing for 5 s.
    for offer in [Offer::simple(1 << 20), Offer::structured(1 << 20)] {
        let disk = Disk::patterned(1 << 20);
        let d = disk.clone();
        let fake = Fake::start("held", offer, move |s, a, _| {
            serve_held(s, a, d.clone(), 32, Duration::from_secs(5))
        });
        let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
        assert_eq!(child.structured(), offer.structured);
        let t = Instant::now();
        within(Duration::from_secs(30), move || {
            on_threads(32, move |k| {
                let offset = k as u64 * 24576 + 512;
                let mut b = vec![0u8; 8192];
                child.read_at(&mut b, offset).unwrap();
                assert!(b == pattern_at(offset, 8192), "read {k} got another's data");
            })
        });
        assert_eq!(disk.max_pending.load(Ordering::SeqCst), 32);
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }
}

#[test]
fn thirty_two_reads_against_a_server_that_takes_20ms_each_take_about_20ms() {
    let disk = Disk::patterned(1 << 20);
    let d = disk.clone();
    let fake = Fake::start("delayed", Offer::structured(1 << 20), move |s, a, _| {
        serve_delayed(s, a, d.clone(), Duration::from_millis(20))
    });
    let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
    let mut b = vec![0u8; 4096];
    child.read_at(&mut b, 0).unwrap(); // Warm up.
    let mut best = Duration::MAX;
    for _round in 0..3 {
        let start = Arc::new(Barrier::new(33));
        let (c, s) = (child.clone(), start.clone());
        let threads = std::thread::spawn(move || {
            on_threads(32, move |k| {
                let mut b = vec![0u8; 4096];
                s.wait();
                c.read_at(&mut b, k as u64 * 4096).unwrap();
                assert!(b == pattern_at(k as u64 * 4096, 4096));
            })
        });
        start.wait();
        let t = Instant::now();
        threads.join().unwrap();
        best = best.min(t.elapsed());
    }
    eprintln!("32 concurrent reads, 20 ms each: {best:?}");
    // One at a time would be 640 ms.
    assert!(best < Duration::from_millis(200), "{best:?}");
}

#[test]
fn at_most_max_in_flight_requests_are_out_and_the_others_wait() {
    // The server holds replies until one more than the limit wait: it
    // never sees them, and gives up holding after 1.5 s.
    let disk = Disk::patterned(1 << 20);
    let d = disk.clone();
    let fake = Fake::start("limit", Offer::simple(1 << 20), move |s, a, _| {
        serve_held(
            s,
            a,
            d.clone(),
            MAX_IN_FLIGHT + 1,
            Duration::from_millis(1500),
        )
    });
    let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
    let c = child.clone();
    let readers = std::thread::spawn(move || {
        on_threads(100, move |k| {
            let mut b = vec![0u8; 512];
            c.read_at(&mut b, k as u64 * 512).unwrap();
            assert!(b == pattern_at(k as u64 * 512, 512));
        })
    });
    wait_until("the limit reached", || child.in_flight() == MAX_IN_FLIGHT);
    readers.join().unwrap();
    assert_eq!(disk.max_pending.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    assert_eq!(disk.requests.load(Ordering::SeqCst), 100);
    assert_eq!(child.in_flight(), 0);
}

#[test]
fn sixteen_threads_share_one_connection_to_our_server() {
    // Bigger writes than the server's 16 KiB payload limit are split.
    let disk = Arc::new(Ours {
        data: Mutex::new(vec![0; 1 << 20]),
    });
    let (_tmp, addr) = serve_ours("ours", disk.clone(), 16 << 10);
    let child = Arc::new(NbdChild::open(addr, TIMEOUT).unwrap());
    // Either way: this test holds with simple or structured replies.
    eprintln!(
        "our server: structured replies {}, block status {}",
        child.structured(),
        child.has_block_status()
    );
    let c = child.clone();
    within(Duration::from_secs(60), move || {
        on_threads(16, move |k| {
            let base = k as u64 * (64 << 10);
            let mut x = k as u64 * 7919 + 1;
            for round in 0..40u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = 512 + (x >> 33) as usize % (40 << 10);
                let at = base + (x >> 20) % ((64 << 10) - len as u64);
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u64 + round + k as u64) as u8 | 1)
                    .collect();
                c.write_at(&data, at).unwrap();
                let mut back = vec![0u8; len];
                c.read_at(&mut back, at).unwrap();
                assert!(back == data, "thread {k} round {round}");
                if round % 8 == 0 {
                    c.write_zeroes(at, len as u64).unwrap();
                    c.read_at(&mut back, at).unwrap();
                    assert!(back.iter().all(|&b| b == 0));
                    c.flush().unwrap();
                }
                // Whatever block status says must be true of the data.
                let e = c.block_status(at, len as u64).unwrap();
                assert!(e.len >= 1 && e.len <= len as u64);
                if e.zero {
                    let mut z = vec![1u8; e.len as usize];
                    c.read_at(&mut z, at).unwrap();
                    assert!(z.iter().all(|&b| b == 0));
                }
            }
        })
    });
    assert_eq!(child.in_flight(), 0);
}

#[test]
fn a_connection_cut_with_requests_in_flight_fails_them_all_then_the_child_reconnects() {
    let disk = Disk::patterned(1 << 20);
    let seen = Arc::new(AtomicUsize::new(0));
    let (d, s) = (disk.clone(), seen.clone());
    // The first connection takes requests and never answers; later ones serve.
    let fake = Fake::start("cut", Offer::structured(1 << 20), move |st, a, n| {
        if n == 0 {
            swallow(st, s.clone())
        } else {
            serve_plain(st, a, d.clone())
        }
    });
    let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
    let c = child.clone();
    let t = Instant::now();
    let callers = std::thread::spawn(move || {
        on_threads(8, move |k| {
            let mut b = vec![0u8; 4096];
            match k {
                0 => c.write_at(&b, 0),
                1 => c.flush(),
                2 => c.block_status(0, 4096).map(|_| ()),
                _ => c.read_at(&mut b, k as u64 * 4096),
            }
        })
    });
    wait_until("8 requests at the server", || {
        seen.load(Ordering::SeqCst) == 8
    });
    assert_eq!(child.in_flight(), 8);
    fake.cut();
    let results = callers.join().unwrap();
    // All failed, at the cut (not at the 10 s timeout), with the cut's error.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for r in &results {
        let e = r.as_ref().expect_err("failed");
        assert_ne!(e.raw_os_error(), Some(ENOTCONN), "{e}");
    }
    // Later operations fail at once until the child has reconnected.
    let mut b = vec![0u8; 4096];
    let e = child.read_at(&mut b, 0).expect_err("not connected");
    assert_eq!(e.raw_os_error(), Some(ENOTCONN));
    assert!(!child.connected());
    wait_until("reconnected", || child.read_at(&mut b, 4096).is_ok());
    assert!(b == pattern_at(4096, 4096));
    assert_eq!(fake.connections.load(Ordering::SeqCst), 2);
    // And many at once work again.
    let c = child.clone();
    on_threads(16, move |k| {
        let mut b = vec![0u8; 4096];
        c.read_at(&mut b, k as u64 * 8192).unwrap();
        assert!(b == pattern_at(k as u64 * 8192, 4096));
    });
}

#[test]
fn a_server_that_stops_answering_times_every_request_in_flight_out() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let fake = Fake::start("silent", Offer::structured(1 << 20), move |st, _, _| {
        swallow(st, s.clone())
    });
    let timeout = Duration::from_millis(600);
    let child = Arc::new(NbdChild::open(fake.addr.clone(), timeout).unwrap());
    let c = child.clone();
    let t = Instant::now();
    let results = within(Duration::from_secs(20), move || {
        on_threads(6, move |k| {
            let mut b = vec![0u8; 4096];
            if k == 0 {
                c.write_at(&b, 0)
            } else {
                c.read_at(&mut b, k as u64 * 4096)
            }
        })
    });
    let took = t.elapsed();
    for r in results {
        assert_eq!(r.expect_err("timed out").kind(), io::ErrorKind::TimedOut);
    }
    assert!(took >= timeout && took < Duration::from_secs(4), "{took:?}");
    let mut b = [0u8; 512];
    let e = child.read_at(&mut b, 0).expect_err("not connected");
    assert_eq!(e.raw_os_error(), Some(ENOTCONN));
}

#[test]
fn a_server_that_stops_reading_times_a_big_write_out() {
    // The server reads nothing after the handshake: a 1 MiB write cannot
    // all be sent.
    let fake = Fake::start("deaf", Offer::simple(4 << 20), move |st, _, _| {
        std::thread::sleep(Duration::from_secs(20));
        drop(st);
    });
    let child = NbdChild::open(fake.addr.clone(), Duration::from_millis(600)).unwrap();
    let t = Instant::now();
    let r = within(Duration::from_secs(10), move || {
        child.write_at(&vec![1u8; 1 << 20], 0)
    });
    assert_eq!(r.expect_err("timed out").kind(), io::ErrorKind::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

/// A hostile reply to the first request: the bytes to send.
type Hostile = fn(&wire::RequestHeader) -> Vec<u8>;

fn data_chunk(flags: u16, cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut c =
        wire::chunk_header(flags, chunk::OFFSET_DATA, cookie, 8 + data.len() as u32).to_vec();
    c.extend_from_slice(&offset.to_be_bytes());
    c.extend_from_slice(data);
    c
}

fn hostile_cases() -> Vec<(&'static str, bool, Hostile)> {
    const DONE: u16 = chunk::FLAG_DONE;
    vec![
        ("an unknown cookie", false, |r| {
            wire::simple_reply(r.cookie ^ 0x5a5a_0000, 0).to_vec()
        }),
        ("a bad magic", false, |_| vec![0xab; 64]),
        ("a chunk without structured replies", false, |r| {
            wire::chunk_none(r.cookie).to_vec()
        }),
        ("data outside the request", true, |r| {
            data_chunk(DONE, r.cookie, r.offset + 4096, &[1; 4096])
        }),
        ("a 4 GiB data chunk", true, |r| {
            wire::chunk_header(DONE, chunk::OFFSET_DATA, r.cookie, u32::MAX).to_vec()
        }),
        ("a hole of the wrong length", true, |r| {
            wire::chunk_header(DONE, chunk::OFFSET_HOLE, r.cookie, 8).to_vec()
        }),
        ("overlapping data", true, |r| {
            let mut v = data_chunk(0, r.cookie, r.offset, &[1; 2048]);
            v.extend(data_chunk(0, r.cookie, r.offset + 1024, &[1; 2048]));
            v.extend(wire::chunk_none(r.cookie));
            v
        }),
        ("done without all the data", true, |r| {
            data_chunk(DONE, r.cookie, r.offset, &[1; 2048])
        }),
        ("an error chunk with error 0", true, |r| {
            wire::chunk_error(r.cookie, 0, "fine")
        }),
        ("an error chunk whose message length lies", true, |r| {
            let mut v = wire::chunk_error(r.cookie, wire::err::EIO, "broken");
            v[24..26].copy_from_slice(&100u16.to_be_bytes());
            v
        }),
        ("an unknown chunk type", true, |r| {
            wire::chunk_header(DONE, 42, r.cookie, 0).to_vec()
        }),
        ("NONE that is not the last chunk", true, |r| {
            wire::chunk_header(0, chunk::NONE, r.cookie, 0).to_vec()
        }),
        ("a simple success to a structured read", true, |r| {
            let mut v = wire::simple_reply(r.cookie, 0).to_vec();
            v.extend([0; 4096]);
            v
        }),
        ("block status in reply to a read", true, |r| {
            wire::chunk_block_status(r.cookie, 7, &[(4096, 0)])
        }),
    ]
}

/// Serves the handshake, answers the first request with `reply`'s bytes,
/// then swallows whatever comes (the client must break the connection
/// itself, not wait for the server to close it).
fn hostile_server(name: &str, structured: bool, reply: Hostile) -> Fake {
    let offer = if structured {
        Offer::structured(1 << 20)
    } else {
        Offer::simple(1 << 20)
    };
    Fake::start(name, offer, move |mut s, _, _| {
        use std::io::Write;
        let Ok((r, _)) = read_request(&mut s) else {
            return;
        };
        let _ = s.write_all(&reply(&r));
        swallow(s, Arc::default());
    })
}

#[test]
fn a_server_sending_garbage_breaks_the_connection_without_a_panic_or_a_hang() {
    for (what, structured, reply) in hostile_cases() {
        let fake = hostile_server("hostile", structured, reply);
        let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
        let c = child.clone();
        let t = Instant::now();
        let r = within(Duration::from_secs(20), move || {
            let mut b = vec![0u8; 4096];
            c.read_at(&mut b, 8192)
        });
        let e = r.expect_err(what);
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{what}: not at once");
        assert!(!child.connected(), "{what}");
    }
}

#[test]
fn hostile_block_status_replies_break_the_connection() {
    let cases: Vec<(&str, Hostile)> = vec![
        ("another context", |r| {
            wire::chunk_block_status(r.cookie, 99, &[(4096, 0)])
        }),
        ("an empty extent", |r| {
            wire::chunk_block_status(r.cookie, 7, &[(0, 0)])
        }),
        ("no extent", |r| {
            let mut v =
                wire::chunk_header(chunk::FLAG_DONE, chunk::BLOCK_STATUS, r.cookie, 4).to_vec();
            v.extend(7u32.to_be_bytes());
            v
        }),
        ("done without status", |r| {
            wire::chunk_none(r.cookie).to_vec()
        }),
        ("data in reply to block status", |r| {
            data_chunk(chunk::FLAG_DONE, r.cookie, r.offset, &[1; 512])
        }),
        ("a simple success", |r| {
            wire::simple_reply(r.cookie, 0).to_vec()
        }),
    ];
    for (what, reply) in cases {
        let fake = hostile_server("hostile-bs", true, reply);
        let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
        assert!(child.has_block_status());
        let c = child.clone();
        let r = within(Duration::from_secs(20), move || c.block_status(0, 8192));
        let e = r.expect_err(what);
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
        assert!(!child.connected(), "{what}");
    }
}

#[test]
fn a_second_reply_to_one_request_breaks_the_connection_for_the_next() {
    let fake = Fake::start("twice", Offer::simple(1 << 20), move |mut s, _, _| {
        use std::io::Write;
        let Ok((r, _)) = read_request(&mut s) else {
            return;
        };
        let mut v = wire::simple_reply(r.cookie, 0).to_vec();
        v.extend(wire::simple_reply(r.cookie, 0));
        let _ = s.write_all(&v);
        swallow(s, Arc::default());
    });
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    child.flush().unwrap();
    let e = child.flush().expect_err("duplicate reply");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn random_replies_never_panic_or_hang() {
    // Chunk headers with the right magic and cookie (so that the client
    // reads further) and random everything else, then random bytes.
    for seed in 0..40u64 {
        let fake = Fake::start("random", Offer::structured(1 << 20), move |mut s, _, _| {
            use std::io::Write;
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            while let Ok((r, _)) = read_request(&mut s) {
                let mut v = Vec::new();
                for _ in 0..1 + next() % 4 {
                    let kinds = [0, 1, 2, 5, 0x8001, 0x8002, 0x8003, 7];
                    let kind = kinds[next() as usize % kinds.len()];
                    let len = (next() % 64) as u32;
                    v.extend(wire::chunk_header(next() as u16 & 1, kind, r.cookie, len));
                    let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if p.len() >= 8 && next() % 2 == 0 {
                        p[..8].copy_from_slice(&r.offset.to_be_bytes());
                    }
                    v.extend(p);
                }
                if s.write_all(&v).is_err() {
                    return;
                }
            }
        });
        let child = Arc::new(NbdChild::open(fake.addr.clone(), Duration::from_secs(1)).unwrap());
        let c = child.clone();
        within(Duration::from_secs(20), move || {
            on_threads(4, move |k| {
                let mut b = vec![0u8; 32];
                let _ = match k {
                    0 => c.block_status(0, 4096).map(|_| ()),
                    1 => c.write_at(&b, 0),
                    _ => c.read_at(&mut b, 0),
                };
            })
        });
    }
}

#[test]
fn reads_past_the_end_fail_without_a_request() {
    let disk = Disk::patterned(1 << 16);
    let d = disk.clone();
    let fake = Fake::start("end", Offer::structured(1 << 16), move |s, a, _| {
        serve_plain(s, a, d.clone())
    });
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    let mut b = [0u8; 512];
    assert_eq!(
        child
            .read_at(&mut b, (1 << 16) - 256)
            .unwrap_err()
            .raw_os_error(),
        Some(22)
    );
    assert_eq!(
        child.block_status(1 << 16, 1).unwrap_err().raw_os_error(),
        Some(22)
    );
    child.read_at(&mut [], 1 << 16).unwrap();
    assert_eq!(disk.requests.load(Ordering::SeqCst), 0);
    // The server's own errors arrive as errnos and keep the connection.
    let e = child.write_at(&b, (1 << 16) - 256).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(22));
    assert!(child.connected());
}

#[test]
fn a_handshake_dribbled_or_without_end_gives_up_at_the_timeout() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    let tmp = Tmp::new("dribble");
    for endless in [false, true] {
        let sock = tmp.path(if endless { "endless" } else { "dribble" });
        let l = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let g = wire::greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
            if !endless {
                // A byte every 100 ms: each read is quick, the whole is not.
                for b in g {
                    std::thread::sleep(Duration::from_millis(100));
                    if s.write_all(&[b]).is_err() {
                        return;
                    }
                }
                return;
            }
            let _ = s.write_all(&g);
            let mut opt = [0u8; 4 + 16];
            let _ = s.read_exact(&mut opt);
            // INFO replies to STRUCTURED_REPLY, for ever.
            let info = wire::encode_reply(
                wire::opt::STRUCTURED_REPLY,
                wire::rep::INFO,
                &wire::encode_info_export(4096, 1),
            );
            while s.write_all(&info).is_ok() {}
        });
        let addr = unix_addr(&sock);
        let t = Instant::now();
        let r = within(Duration::from_secs(10), move || {
            NbdChild::open(addr, Duration::from_millis(700))
        });
        assert_eq!(
            r.unwrap_err().kind(),
            io::ErrorKind::TimedOut,
            "endless: {endless}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
