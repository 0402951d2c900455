//! The blocking driver over memory and file children.

use std::sync::{Arc, Mutex};

use quorum_proto::{Config, Errno, Event, ReadPattern};
use quorum_sync::{Child, Device, FileChild, MemChild, ReadError};

fn mem(n: usize, len: usize) -> Vec<Arc<MemChild>> {
    (0..n).map(|_| Arc::new(MemChild::new(len))).collect()
}

fn dyns(k: &[Arc<MemChild>]) -> Vec<Arc<dyn Child>> {
    k.iter().map(|c| c.clone() as Arc<dyn Child>).collect()
}

#[test]
fn corrupted_replica_is_outvoted_reported_and_rewritten() {
    let kids = mem(3, 1 << 16);
    let dev = Device::new(Config::new(3, 2).with_rewrite_corrupted(true), dyns(&kids)).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    dev.set_event_sink(Box::new(move |_, e| ev.lock().unwrap().push(*e)));
    dev.write(0, &[7u8; 8192]).unwrap();
    kids[1].write_at(&[9u8; 10], 4000).unwrap();
    let mut buf = vec![0u8; 8192];
    dev.read(0, &mut buf).unwrap();
    assert_eq!(buf, vec![7u8; 8192]);
    assert_eq!(kids[1].contents(), kids[0].contents(), "R-READ-7: repaired");
    let ev = events.lock().unwrap();
    assert_eq!(ev.len(), 1);
    assert!(matches!(
        ev[0],
        Event::ReportBad {
            error: None,
            sector_num: 0,
            sectors_count: 16,
            ..
        }
    ));
}

#[test]
fn many_threads_at_once() {
    let kids = mem(3, 1 << 20);
    let dev = Arc::new(Device::new(Config::new(3, 2), dyns(&kids)).unwrap());
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let dev = dev.clone();
            s.spawn(move || {
                let off = t as u64 * 65536;
                for i in 0..200u32 {
                    let fill = (i as u8).wrapping_add(t);
                    dev.write(off, &[fill; 4096]).unwrap();
                    let mut b = [0u8; 4096];
                    dev.read(off, &mut b).unwrap();
                    assert_eq!(b, [fill; 4096]);
                }
                dev.flush().unwrap();
            });
        }
    });
    assert_eq!(kids[0].contents(), kids[2].contents());
}

#[test]
fn failing_children_and_no_quorum() {
    struct Broken;
    impl Child for Broken {
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(28))
        }
        fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(28))
        }
        fn flush(&self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(5))
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(65536)
        }
    }
    let kids = mem(1, 65536);
    let children: Vec<Arc<dyn Child>> = vec![kids[0].clone(), Arc::new(Broken), Arc::new(Broken)];
    let dev = Device::new(Config::new(3, 2), children).unwrap();
    let mut b = [0u8; 512];
    assert_eq!(dev.read(0, &mut b), Err(ReadError::Io(Errno::ENOSPC)));
    assert_eq!(dev.write(0, &b), Err(Errno::ENOSPC));
    assert_eq!(dev.flush(), Err(Errno::EIO));
    assert_eq!(dev.size(), Ok(65536));
}

#[test]
fn membership_changes_wait_for_idle_and_keep_names() {
    let kids = mem(3, 65536);
    let dev = Device::new(Config::new(3, 2), dyns(&kids)).unwrap();
    let id = dev.add_child(Arc::new(MemChild::new(65536))).unwrap();
    assert_eq!(id.0, 3);
    dev.remove_child(quorum_proto::ChildId(1)).unwrap();
    assert_eq!(
        dev.children().iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![0, 2, 3]
    );
    assert_eq!(
        dev.remove_child(quorum_proto::ChildId(9))
            .unwrap_err()
            .to_string(),
        "Quorum does not have child 'children.9'"
    );
}

#[test]
fn file_children_fifo_and_direct() {
    let dir = std::env::temp_dir().join(format!("quorum-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut children: Vec<Arc<dyn Child>> = Vec::new();
    for i in 0..3 {
        let p = dir.join(format!("c{i}.img"));
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        // O_DIRECT may be unsupported on some filesystems (tmpfs): fall back.
        let c = FileChild::open(&p, true, true)
            .or_else(|_| FileChild::open(&p, true, false))
            .unwrap();
        children.push(Arc::new(c));
    }
    let dev = Device::new(
        Config::new(3, 2).with_read_pattern(ReadPattern::Fifo),
        children,
    )
    .unwrap();
    dev.write(4096, &[0x5a; 8192]).unwrap();
    dev.write(100, &[1, 2, 3]).unwrap(); // unaligned: buffered descriptor
    let mut b = vec![0u8; 8192];
    dev.read(4096, &mut b).unwrap();
    assert_eq!(b, vec![0x5a; 8192]);
    let mut s = [0u8; 3];
    dev.read(100, &mut s).unwrap();
    assert_eq!(s, [1, 2, 3]);
    assert_eq!(dev.size(), Ok(1 << 20));
    dev.flush().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn write_shared_reaches_every_child_without_copying_the_callers_buffer() {
    let kids = mem(3, 1 << 16);
    let dev = Device::new(Config::new(3, 2), dyns(&kids)).unwrap();
    let data: Arc<[u8]> = Arc::from(vec![0x5au8; 4096]);
    dev.write_shared(8192, data.clone()).unwrap();
    // Every child operation is over: the device holds no clone any more.
    assert_eq!(Arc::strong_count(&data), 1);
    for k in &kids {
        assert_eq!(&k.contents()[8192..12288], &data[..]);
    }
    let mut buf = vec![0u8; 4096];
    dev.read(8192, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[..]);
}

#[test]
fn file_children_refuse_reads_past_the_end() {
    let dir = std::env::temp_dir().join(format!("quorum-sync-eof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("short.img");
    std::fs::write(&path, vec![1u8; 4096]).unwrap();
    let f = FileChild::open(&path, true, false).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, vec![1u8; 4096]);
    let e = f.read_at(&mut buf, 2048).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    f.write_at(&[2u8; 100], 4000).unwrap();
    f.read_at(&mut buf[..100], 4000).unwrap();
    assert_eq!(&buf[..100], &[2u8; 100][..]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `read_with` lends the vote's winner where it lies: the same bytes as
/// `read` (R-READ-3: the majority's, a corrupted minority outvoted), and
/// the same errors (no quorum: every child differs, R-READ-5).
#[test]
fn read_with_lends_the_winner_and_says_the_same_errors_as_read() {
    let kids = mem(3, 1 << 16);
    let dev = Device::new(Config::new(3, 2), dyns(&kids)).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    dev.write(0, &data).unwrap();
    kids[2].write_at(&[0xAA; 100], 1000).unwrap();
    let mut lent = Vec::new();
    let r = dev.read_with(4096, 8192, |r| r.map(|d| lent.extend_from_slice(d)));
    assert_eq!(r, Ok(()));
    assert_eq!(lent, &data[4096..4096 + 8192]);
    let got = dev.read_with(0, 65536, |r| r.map(<[u8]>::to_vec));
    assert_eq!(got.as_deref(), Ok(&data[..]), "the minority is outvoted");
    // Three versions of the first sector: no quorum, the same error as read.
    kids[1].write_at(&[0xBB; 10], 0).unwrap();
    kids[2].write_at(&[0xCC; 10], 0).unwrap();
    let via_with = dev.read_with(0, 512, |r| r.map(<[u8]>::len));
    let mut b = [0u8; 512];
    let via_read = dev.read(0, &mut b);
    assert!(via_with.is_err(), "{via_with:?}");
    assert_eq!(via_with.map(|_| ()), via_read);
}
