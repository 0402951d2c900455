//! Early quorum through the blocking driver: a read returns once
//! `threshold` children agree; the straggler is still compared, reported
//! (R-READ-6) and rewritten (R-READ-7) in the background, and the device
//! drains it before membership changes or drop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorum_proto::{Config, Event};
use quorum_sync::{Child, DelayChild, Device, MemChild};

const SLOW: Duration = Duration::from_millis(300);

/// Two fast children and one `SLOW` one (slot 2).
fn kids() -> (Vec<Arc<MemChild>>, Vec<Arc<dyn Child>>) {
    let mem: Vec<Arc<MemChild>> = (0..3).map(|_| Arc::new(MemChild::new(1 << 16))).collect();
    let mut dyns: Vec<Arc<dyn Child>> = mem.iter().map(|m| m.clone() as Arc<dyn Child>).collect();
    dyns[2] = Arc::new(DelayChild::new(mem[2].clone(), SLOW));
    (mem, dyns)
}

fn events(dev: &Device) -> Arc<Mutex<Vec<Event>>> {
    let ev = Arc::new(Mutex::new(Vec::new()));
    let sink = ev.clone();
    dev.set_event_sink(Box::new(move |_, e| sink.lock().unwrap().push(*e)));
    ev
}

#[test]
fn answers_without_the_slow_replica_then_repairs_it() {
    let (mem, dyns) = kids();
    let cfg = Config::new(3, 2)
        .with_rewrite_corrupted(true)
        .with_early_quorum(true);
    let dev = Device::new(cfg, dyns).unwrap();
    let ev = events(&dev);
    dev.write(0, &[5u8; 4096]).unwrap();
    // The slow replica rots behind the device's back.
    mem[2].write_at(&[6u8; 16], 100).unwrap();

    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    dev.read(0, &mut buf).unwrap();
    let took = t.elapsed();
    assert_eq!(buf, vec![5u8; 4096]);
    assert!(took < SLOW / 2, "answered after {took:?}");
    assert!(ev.lock().unwrap().is_empty(), "nothing judged yet");

    // Dropping the device waits for the straggler: compared, reported, rewritten.
    drop(dev);
    assert_eq!(
        mem[2].contents(),
        mem[0].contents(),
        "R-READ-7 after the answer"
    );
    let ev = ev.lock().unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(matches!(ev[0], Event::ReportBad { error: None, .. }));
}

#[test]
fn without_early_quorum_the_slow_replica_sets_the_pace() {
    let (_, dyns) = kids();
    let dev = Device::new(Config::new(3, 2), dyns).unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 512];
    dev.read(0, &mut buf).unwrap();
    assert!(t.elapsed() >= SLOW, "{:?}", t.elapsed());
}

#[test]
fn membership_changes_wait_for_stragglers() {
    let (mem, dyns) = kids();
    let dev = Device::new(Config::new(3, 2).with_early_quorum(true), dyns).unwrap();
    let mut buf = vec![0u8; 512];
    let t = Instant::now();
    dev.read(0, &mut buf).unwrap();
    assert!(t.elapsed() < SLOW / 2);
    // R-MEMBER: the drain includes the straggler still reading.
    let id = dev.add_child(mem[0].clone() as Arc<dyn Child>).unwrap();
    assert!(t.elapsed() >= SLOW, "added at {:?}", t.elapsed());
    assert_eq!(dev.children().len(), 4);
    dev.remove_child(id).unwrap();
}

#[test]
fn many_threads_with_slow_stragglers_read_their_own_writes() {
    let mem: Vec<Arc<MemChild>> = (0..3).map(|_| Arc::new(MemChild::new(1 << 20))).collect();
    let mut dyns: Vec<Arc<dyn Child>> = mem.iter().map(|m| m.clone() as Arc<dyn Child>).collect();
    dyns[1] = Arc::new(DelayChild::new(mem[1].clone(), Duration::from_millis(2)));
    let cfg = Config::new(3, 2)
        .with_rewrite_corrupted(true)
        .with_early_quorum(true);
    let dev = Arc::new(Device::new(cfg, dyns).unwrap());
    let ev = events(&dev);
    std::thread::scope(|s| {
        for t in 0..6u8 {
            let dev = dev.clone();
            s.spawn(move || {
                let off = t as u64 * 65536;
                for i in 0..40u32 {
                    let fill = (i as u8).wrapping_mul(7).wrapping_add(t);
                    dev.write(off, &[fill; 4096]).unwrap();
                    let mut b = [0u8; 4096];
                    dev.read(off, &mut b).unwrap();
                    assert_eq!(b, [fill; 4096], "thread {t} round {i}");
                }
            });
        }
    });
    drop(Arc::try_unwrap(dev).ok().expect("the only owner"));
    // Writes right after early answers never let a repair put old data back,
    // and nothing was corrupted, so nothing may be reported either.
    assert_eq!(mem[0].contents(), mem[1].contents());
    assert_eq!(mem[0].contents(), mem[2].contents());
    assert!(ev.lock().unwrap().is_empty(), "{:?}", ev.lock().unwrap());
}

#[test]
fn slow_children_are_served_in_parallel() {
    // Not early quorum: every child is waited for, but side by side once the
    // driver has seen that they are slow.
    let delay = Duration::from_millis(100);
    let dyns: Vec<Arc<dyn Child>> = (0..3)
        .map(|_| Arc::new(DelayChild::new(Arc::new(MemChild::new(4096)), delay)) as Arc<dyn Child>)
        .collect();
    let dev = Device::new(Config::new(3, 2), dyns).unwrap();
    let mut buf = vec![0u8; 512];
    dev.read(0, &mut buf).unwrap(); // learns that they are slow
    let t = Instant::now();
    for _ in 0..3 {
        dev.read(0, &mut buf).unwrap();
    }
    let took = t.elapsed();
    assert!(took < delay * 3 * 3 / 2, "3 reads took {took:?}");
}
