//! Structured replies and block status on NBD children: reads answered in
//! chunks (data, holes, errors, in any order, interleaved with other
//! replies), `NBD_CMD_BLOCK_STATUS` over `base:allocation`, servers that
//! refuse either, and `qemu-nbd` on a sparse image.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quorum_driver::Child;
use quorum_nbd::NbdChild;
use quorum_nbd::wire::{self, chunk, cmd, err, state};
use quorum_proto::Extent;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

/// 1 MiB: data, then zeroes from 64 KiB to 256 KiB and from 512 KiB on
/// (but for 4 KiB of data at 768 KiB).
fn layered() -> Vec<u8> {
    let mut d = pattern_at(0, MIB as usize);
    d[64 << 10..256 << 10].fill(0);
    d[512 << 10..].fill(0);
    d[768 << 10..772 << 10].copy_from_slice(&pattern_at(768 << 10, 4096));
    d
}

#[test]
fn structured_reads_in_interleaved_chunks_reach_their_callers() {
    // Eight reads held until all are in, then their chunks (4 KiB pieces,
    // holes for zeroes, in reverse order) interleaved on the wire. Their
    // lengths differ, so the caller reading for all usually has its reply
    // before others have theirs complete, and one of those reads on.
    for round in 0..5 {
        let disk = Disk::new(layered());
        let d = disk.clone();
        let fake = Fake::start("chunks", Offer::structured(MIB), move |s, a, _| {
            serve_held(s, a, d.clone(), 8, Duration::from_secs(5))
        });
        let child = Arc::new(NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap());
        assert!(child.structured() && child.has_block_status());
        let expect = Arc::new(layered());
        let c = child.clone();
        within(Duration::from_secs(30), move || {
            let threads: Vec<_> = (0..8u64)
                .map(|k| {
                    let (c, expect) = (c.clone(), expect.clone());
                    std::thread::spawn(move || {
                        let offset = k * (96 << 10) + round * 512;
                        let mut b = vec![0xeeu8; (8 + 6 * k as usize) << 10];
                        c.read_at(&mut b, offset).unwrap();
                        let want = &expect[offset as usize..offset as usize + b.len()];
                        assert!(b == want, "read {k} at {offset}");
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
        assert_eq!(disk.max_pending.load(Ordering::SeqCst), 8);
    }
}

#[test]
fn block_status_reports_zeroes_as_zero_and_data_as_data() {
    let disk = Disk::new(layered());
    let d = disk.clone();
    let fake = Fake::start("status", Offer::structured(MIB), move |s, a, _| {
        serve_plain(s, a, d.clone())
    });
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    let k = 1024;
    let e = |offset: u64, len: u64| child.block_status(offset, len).unwrap();
    let x = |len: u64, zero: bool| Extent { len, zero };
    assert_eq!(e(0, MIB), x(64 * k, false));
    assert_eq!(e(64 * k, MIB - 64 * k), x(192 * k, true));
    assert_eq!(e(100 * k, 8 * k), x(8 * k, true));
    assert_eq!(e(256 * k, MIB - 256 * k), x(256 * k, false));
    assert_eq!(e(512 * k, MIB - 512 * k), x(256 * k, true));
    assert_eq!(e(768 * k, 256 * k), x(4 * k, false));
    assert_eq!(e(772 * k, 252 * k), x(252 * k, true));
    assert_eq!(e(0, 0), x(0, false));
}

/// A server whose block status answers with `flags` for an extent of
/// `len` bytes, whatever was asked.
fn status_server(len: u32, flags: u32) -> Fake {
    Fake::start("flags", Offer::structured(MIB), move |mut s, a, _| {
        while let Ok((r, _)) = read_request(&mut s) {
            assert_eq!(r.command, cmd::BLOCK_STATUS);
            assert_eq!(r.flags, wire::cflag::REQ_ONE);
            let id = a.meta.unwrap();
            if s.write_all(&wire::chunk_block_status(r.cookie, id, &[(len, flags)]))
                .is_err()
            {
                return;
            }
        }
    })
}

#[test]
fn only_the_zero_flag_means_zeroes() {
    let cases = [
        (0, false),
        (state::HOLE, false), // Unallocated, contents unknown (a backing file).
        (state::ZERO, true),
        (state::HOLE | state::ZERO, true), // What QEMU sends for a hole.
        (0xfff0 | state::ZERO, true),      // Other bits are not ours.
    ];
    for (flags, zero) in cases {
        let fake = status_server(8192, flags);
        let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
        assert_eq!(
            child.block_status(4096, 65536).unwrap(),
            Extent { len: 8192, zero }
        );
    }
    // An extent longer than asked is cut to what was asked.
    let fake = status_server(1 << 19, state::ZERO);
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    assert_eq!(
        child.block_status(0, 4096).unwrap(),
        Extent {
            len: 4096,
            zero: true
        }
    );
}

#[test]
fn a_server_refusing_structured_replies_is_used_with_simple_replies() {
    let disk = Disk::new(layered());
    let d = disk.clone();
    let fake = Fake::start("simple", Offer::simple(MIB), move |s, a, _| {
        assert!(!a.structured);
        serve_plain(s, a, d.clone())
    });
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    assert!(!child.structured() && !child.has_block_status());
    let mut b = vec![0u8; 128 << 10];
    child.read_at(&mut b, 0).unwrap();
    assert!(b == layered()[..128 << 10]);
    // No block status on the wire: all data, as far as asked.
    let before = disk.requests.load(Ordering::SeqCst);
    assert_eq!(
        child.block_status(64 << 10, 4096).unwrap(),
        Extent {
            len: 4096,
            zero: false
        }
    );
    assert_eq!(disk.requests.load(Ordering::SeqCst), before);
    child.write_at(&[9; 4096], 4096).unwrap();
    child.read_at(&mut b[..4096], 4096).unwrap();
    assert_eq!(b[..4096], [9; 4096]);
}

#[test]
fn structured_replies_without_base_allocation_mean_no_block_status() {
    let disk = Disk::new(layered());
    let d = disk.clone();
    let offer = Offer {
        meta: None,
        ..Offer::structured(MIB)
    };
    let fake = Fake::start("nometa", offer, move |s, a, _| serve_plain(s, a, d.clone()));
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    assert!(child.structured() && !child.has_block_status());
    let before = disk.requests.load(Ordering::SeqCst);
    assert_eq!(
        child.block_status(64 << 10, 8192).unwrap(),
        Extent {
            len: 8192,
            zero: false
        }
    );
    assert_eq!(disk.requests.load(Ordering::SeqCst), before);
    let mut b = vec![0u8; 256 << 10];
    child.read_at(&mut b, 0).unwrap();
    assert!(b == layered()[..256 << 10]);
}

#[test]
fn errors_in_structured_replies_are_errnos_and_keep_the_connection() {
    // Reads at 64 KiB fail with an error chunk (EIO) after some data and
    // before the end; writes at 64 KiB with ENOSPC (simple); block status
    // with an error value unknown to NBD (EINVAL, as the document says).
    let served = Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    let fake = Fake::start("errors", Offer::structured(MIB), move |mut s, a, _| {
        let disk = Disk::patterned(MIB as usize);
        while let Ok((r, payload)) = read_request(&mut s) {
            n.fetch_add(1, Ordering::SeqCst);
            let out = match (r.command, r.offset) {
                (cmd::READ, 65536) => {
                    let mut v =
                        wire::chunk_header(0, chunk::OFFSET_DATA, r.cookie, 8 + 512).to_vec();
                    v.extend(r.offset.to_be_bytes());
                    v.extend([1; 512]);
                    let mut e = wire::chunk_error(r.cookie, err::EIO, "bad sector");
                    // ERROR_OFFSET, not the last chunk: an offset follows.
                    e[4..6].copy_from_slice(&0u16.to_be_bytes());
                    e[6..8].copy_from_slice(&chunk::ERROR_OFFSET.to_be_bytes());
                    let len = u32::from_be_bytes(e[16..20].try_into().unwrap()) + 8;
                    e[16..20].copy_from_slice(&len.to_be_bytes());
                    e.extend((r.offset + 1024).to_be_bytes());
                    v.extend(e);
                    v.extend(wire::chunk_none(r.cookie));
                    v
                }
                (cmd::WRITE, 65536) => wire::simple_reply(r.cookie, err::ENOSPC).to_vec(),
                (cmd::BLOCK_STATUS, _) => wire::chunk_error(r.cookie, 12345, "what"),
                _ => disk.reply(&r, &payload, &a).concat(),
            };
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    let child = NbdChild::open(fake.addr.clone(), TIMEOUT).unwrap();
    let mut b = vec![0u8; 4096];
    assert_eq!(
        child.read_at(&mut b, 65536).unwrap_err().raw_os_error(),
        Some(5)
    );
    assert_eq!(
        child.write_at(&b, 65536).unwrap_err().raw_os_error(),
        Some(28)
    );
    assert_eq!(
        child.block_status(0, 4096).unwrap_err().raw_os_error(),
        Some(22)
    );
    assert!(child.connected());
    child.read_at(&mut b, 0).unwrap();
    assert!(b == pattern_at(0, 4096));
    assert_eq!(served.load(Ordering::SeqCst), 4);
}

/// A 4 MiB sparse image: 64 KiB of data at 1 MiB and 4 KiB at 3 MiB,
/// holes elsewhere.
fn sparse_image(tmp: &Tmp) -> (std::path::PathBuf, Vec<u8>) {
    let img = tmp.path("sparse.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(4 * MIB).unwrap();
    let mut content = vec![0u8; 4 * MIB as usize];
    for (at, len) in [(MIB, 64 << 10), (3 * MIB, 4096)] {
        let data = pattern_at(at, len);
        std::os::unix::fs::FileExt::write_all_at(&f, &data, at).unwrap();
        content[at as usize..at as usize + len].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    (img, content)
}

#[test]
fn qemu_nbd_serves_structured_reads_and_block_status_of_a_sparse_image() {
    if !qemu_nbd_present() {
        return;
    }
    let tmp = Tmp::new("qemu-sparse");
    let (img, content) = sparse_image(&tmp);
    let sock = tmp.path("s");
    let _q = QemuNbd::start(&img, &sock);
    let child = Arc::new(NbdChild::open(unix_addr(&sock), TIMEOUT).unwrap());
    assert!(child.structured(), "qemu-nbd agrees to structured replies");
    assert!(child.has_block_status(), "qemu-nbd selects base:allocation");
    let x = |len: u64, zero: bool| Extent { len, zero };
    let k = 1024;
    assert_eq!(child.block_status(0, 4 * MIB).unwrap(), x(MIB, true));
    assert_eq!(child.block_status(4096, 8192).unwrap(), x(8192, true));
    assert_eq!(child.block_status(MIB, 3 * MIB).unwrap(), x(64 * k, false));
    assert_eq!(
        child.block_status(MIB + 4096, 4096).unwrap(),
        x(4096, false)
    );
    assert_eq!(
        child.block_status(MIB + 64 * k, 3 * MIB - 64 * k).unwrap(),
        x(2 * MIB - 64 * k, true)
    );
    assert_eq!(child.block_status(3 * MIB, MIB).unwrap(), x(4096, false));
    // Reads across holes and data (QEMU answers them with hole and data
    // chunks), whole and from many threads at once.
    let mut all = vec![0xeeu8; 4 * MIB as usize];
    child.read_at(&mut all, 0).unwrap();
    assert!(all == content);
    let content = Arc::new(content);
    let (c, want) = (child.clone(), content.clone());
    within(Duration::from_secs(60), move || {
        let threads: Vec<_> = (0..32u64)
            .map(|t| {
                let (c, want) = (c.clone(), want.clone());
                std::thread::spawn(move || {
                    for i in 0..20u64 {
                        let at = (t * 131_071 + i * 524_287) % (4 * MIB - 200_000);
                        let len = 1 + ((t * 7 + i * 13) * 4099) as usize % 200_000;
                        let mut b = vec![0xeeu8; len];
                        c.read_at(&mut b, at).unwrap();
                        assert!(b == want[at as usize..at as usize + len]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    // Data written through the child is data to block status.
    child.write_at(&[5; 8192], 2 * MIB).unwrap();
    child.flush().unwrap();
    assert_eq!(child.block_status(2 * MIB, 64 * k).unwrap(), x(8192, false));
    let mut b = vec![0u8; 8192];
    child.read_at(&mut b, 2 * MIB).unwrap();
    assert_eq!(b, vec![5; 8192]);
    assert!(child.connected());
}

#[test]
fn a_qemu_nbd_killed_under_load_fails_the_requests_and_is_found_again() {
    if !qemu_nbd_present() {
        return;
    }
    let tmp = Tmp::new("qemu-kill");
    let (img, content) = sparse_image(&tmp);
    let sock = tmp.path("s");
    let mut q = QemuNbd::start(&img, &sock);
    let child = Arc::new(NbdChild::open(unix_addr(&sock), TIMEOUT).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let content = Arc::new(content);
    let readers: Vec<_> = (0..16u64)
        .map(|t| {
            let (c, stop, failures, want) = (
                child.clone(),
                stop.clone(),
                failures.clone(),
                content.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let at = (t * 65_536 + i * 8192) % (4 * MIB - 65_536);
                    let mut b = vec![0u8; 65_536];
                    match c.read_at(&mut b, at) {
                        Ok(()) => assert!(b == want[at as usize..at as usize + 65_536]),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    q.kill();
    wait_until("the child sees it", || !child.connected());
    wait_until("requests failing", || failures.load(Ordering::SeqCst) > 16);
    let _q = QemuNbd::start(&img, &sock);
    wait_until("reconnected", || child.connected());
    let mut b = vec![0u8; 65_536];
    wait_until("reads again", || child.read_at(&mut b, MIB).is_ok());
    assert!(b == content[MIB as usize..MIB as usize + 65_536]);
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
}
