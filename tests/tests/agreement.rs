//! DESIGN.md, "Drivers": the same scenario run by the simulator
//! (`quorum_sim::Sim::scripted`, its simulated disks carrying the same
//! blkdebug-style rules), quorum-sync, quorum-tokio (under tokio and smol) and
//! the bare core (through the driver kit's checked in-memory driver,
//! `quorum_driver::testing::MemDriver`) gives the same results, read data,
//! events (R-EVENT) and final child bytes.
//!
//! The scenario (3 children, threshold 2, rewrite-corrupted on) covers
//! writes, write-zeroes, flushes, a silently corrupted replica that is
//! outvoted, reported and rewritten (R-READ-6, R-READ-7), a child failing
//! reads and writes through a blkdebug-style rule (R-READ-2, R-WRITE-1), a
//! failing flush (R-FLUSH-1), and a read without quorum (R-READ-5).

use std::sync::{Arc, Mutex};

use quorum_driver::testing::{Checker, ChildDisks, MemDriver};
use quorum_proto::{Config, Errno, Event, Extent, Outcome, Request, RequestId};
use quorum_sync::{Child, InjectChild, InjectEvent, InjectRule};

const SIZE: usize = 32 * 1024;

#[derive(Clone, Debug)]
enum Step {
    Write(u64, u8, usize),
    Zeroes(u64, u64),
    Read(u64, usize),
    Flush,
    /// Block status of a range.
    Status(u64, u64),
    /// Overwrite a child's bytes behind the device's back.
    Poke(usize, usize, u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Res {
    Data(Vec<u8>),
    Ok,
    Err(Errno),
    Status(Extent),
    Poked,
}

fn scenario() -> Vec<Step> {
    use Step::*;
    vec![
        Write(0, 0xab, 16384),
        Write(16384, 0xcd, 8192),
        Poke(1, 100, 0x00),
        Read(0, 4096),     // children.1 outvoted, reported, rewritten
        Read(0, 4096),     // clean now
        Read(12288, 4096), // children.2 fails the read (sector 24)
        Write(12288, 0x11, 512),
        Zeroes(20480, 4096),
        Flush, // children.0 fails its first dirty flush
        Poke(0, 8192, 0x01),
        Poke(1, 8192, 0x02),
        Read(8192, 512), // three versions: no quorum, FAILURE
        Read(12288, 512),
        Flush,
        Read(0, SIZE),
        Read(16384, 8192),
        Status(20480, 8192), // zeroed on every child: zeroes, 4 KiB
        Status(0, 8192),     // data
        Status(24576, 8192), // never written: zeroes to the end
    ]
}

fn rules() -> Vec<Vec<InjectRule>> {
    vec![
        vec![InjectRule {
            event: InjectEvent::Flush,
            errno: Errno::ENOSPC,
            sector: None,
            once: true,
        }],
        vec![],
        vec![InjectRule {
            event: InjectEvent::Read,
            errno: Errno::EIO,
            sector: Some(24),
            once: false,
        }],
    ]
}

fn config() -> Config {
    Config::new(3, 2).with_rewrite_corrupted(true)
}

/// What one driver produced.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    results: Vec<Res>,
    events: Vec<(RequestId, Event)>,
    children: Vec<Vec<u8>>,
}

fn pattern(b: u8, n: usize) -> Vec<u8> {
    vec![b; n]
}

fn with_sync() -> Run {
    let mems: Vec<Arc<quorum_sync::MemChild>> = (0..3)
        .map(|_| Arc::new(quorum_sync::MemChild::new(SIZE)))
        .collect();
    let kids: Vec<Arc<dyn Child>> = mems
        .iter()
        .zip(rules())
        .map(|(m, r)| Arc::new(InjectChild::new(m.clone(), r)) as Arc<dyn Child>)
        .collect();
    let dev = quorum_sync::Device::new(config(), kids).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    dev.set_event_sink(Box::new(move |id, e| ev.lock().unwrap().push((id, *e))));
    let mut results = Vec::new();
    for step in scenario() {
        let r = match step {
            Step::Write(o, b, n) => dev
                .write(o, &pattern(b, n))
                .map_or_else(Res::Err, |_| Res::Ok),
            Step::Zeroes(o, n) => dev.write_zeroes(o, n).map_or_else(Res::Err, |_| Res::Ok),
            Step::Flush => dev.flush().map_or_else(Res::Err, |_| Res::Ok),
            Step::Status(o, n) => dev.block_status(o, n).map_or_else(Res::Err, Res::Status),
            Step::Read(o, n) => {
                let mut buf = vec![0; n];
                match dev.read(o, &mut buf) {
                    Ok(()) => Res::Data(buf),
                    Err(quorum_sync::ReadError::Io(e)) => Res::Err(e),
                    Err(e) => panic!("{e}"),
                }
            }
            Step::Poke(c, o, b) => {
                mems[c].write_at(&[b], o as u64).unwrap();
                Res::Poked
            }
        };
        results.push(r);
    }
    let events = events.lock().unwrap().clone();
    Run {
        results,
        events,
        children: mems.iter().map(|m| m.contents()).collect(),
    }
}

async fn with_async() -> Run {
    let mems: Vec<Arc<quorum_tokio::MemChild>> = (0..3)
        .map(|_| Arc::new(quorum_tokio::MemChild::new(SIZE)))
        .collect();
    let kids: Vec<Arc<dyn quorum_tokio::AsyncChild>> = mems
        .iter()
        .zip(rules())
        .map(|(m, r)| Arc::new(quorum_tokio::InjectChild::new(m.clone(), r)) as _)
        .collect();
    let dev = quorum_tokio::AsyncDevice::new(config(), kids).unwrap();
    let mut stream = dev.events();
    let mut results = Vec::new();
    for step in scenario() {
        let r = match step {
            Step::Write(o, b, n) => dev
                .write(o, pattern(b, n))
                .await
                .map_or_else(Res::Err, |_| Res::Ok),
            Step::Zeroes(o, n) => dev
                .write_zeroes(o, n)
                .await
                .map_or_else(Res::Err, |_| Res::Ok),
            Step::Flush => dev.flush().await.map_or_else(Res::Err, |_| Res::Ok),
            Step::Status(o, n) => dev
                .block_status(o, n)
                .await
                .map_or_else(Res::Err, Res::Status),
            Step::Read(o, n) => match dev.read(o, n).await {
                Ok(d) => Res::Data(d),
                Err(quorum_tokio::ReadError::Io(e)) => Res::Err(e),
                Err(e) => panic!("{e}"),
            },
            Step::Poke(c, o, b) => {
                mems[c].poke(o, &[b]);
                Res::Poked
            }
        };
        results.push(r);
    }
    drop(dev); // ends the stream
    let mut events = Vec::new();
    while let Some(e) = futures_util::StreamExt::next(&mut stream).await {
        events.push(e);
    }
    Run {
        results,
        events,
        children: mems.iter().map(|m| m.contents()).collect(),
    }
}

/// The simulator, scripted: same disks, scheduler and checker as its seeded
/// runs, with the scenario's requests and faults instead of drawn ones.
fn with_sim() -> Run {
    let mut sim = quorum_sim::Sim::scripted(config(), SIZE as u64).unwrap();
    for (c, r) in rules().into_iter().enumerate() {
        sim.inject(quorum_proto::ChildId(c as u32), r);
    }
    let mut results = Vec::new();
    for step in scenario() {
        let (req, data) = match step {
            Step::Write(o, b, n) => (
                Request::Write {
                    offset: o,
                    len: n as u64,
                },
                Some(pattern(b, n)),
            ),
            Step::Zeroes(offset, len) => (Request::WriteZeroes { offset, len }, None),
            Step::Read(offset, n) => (
                Request::Read {
                    offset,
                    len: n as u64,
                },
                None,
            ),
            Step::Flush => (Request::Flush, None),
            Step::Status(offset, len) => (Request::BlockStatus { offset, len }, None),
            Step::Poke(c, o, b) => {
                sim.poke(quorum_proto::ChildId(c as u32), o as u64, &[b]);
                results.push(Res::Poked);
                continue;
            }
        };
        let (outcome, bytes) = sim
            .request(req, data.as_deref())
            .unwrap_or_else(|e| panic!("{e}"));
        results.push(match outcome {
            Outcome::Read { .. } => Res::Data(bytes.expect("read data")),
            Outcome::Done => Res::Ok,
            Outcome::Failed(e) => Res::Err(e),
            Outcome::BlockStatus(e) => Res::Status(e),
            Outcome::ContentsMismatch { offset } => panic!("blkverify is off: {offset}"),
        });
    }
    Run {
        results,
        events: sim.take_events(),
        children: (0..3)
            .map(|c| sim.disk(quorum_proto::ChildId(c)).unwrap().to_vec())
            .collect(),
    }
}

/// The bare core, one request at a time, through the driver kit's in-memory
/// driver over the same children (memory behind the blkdebug-style rules):
/// child operations carried out in the order the core issued them, every
/// call held to the core's contract by the kit's checker.
fn with_core() -> Run {
    let mems: Vec<Arc<quorum_sync::MemChild>> = (0..3)
        .map(|_| Arc::new(quorum_sync::MemChild::new(SIZE)))
        .collect();
    let kids: Vec<Arc<dyn Child>> = mems
        .iter()
        .zip(rules())
        .map(|(m, r)| Arc::new(InjectChild::new(m.clone(), r)) as Arc<dyn Child>)
        .collect();
    let checker: Checker = Checker::new(config()).unwrap();
    let mut d = MemDriver::with_disks(checker, ChildDisks::new(kids));
    let mut results = Vec::new();
    for step in scenario() {
        let (req, data) = match step {
            Step::Write(o, b, n) => (
                Request::Write {
                    offset: o,
                    len: n as u64,
                },
                Some(pattern(b, n)),
            ),
            Step::Zeroes(offset, len) => (Request::WriteZeroes { offset, len }, None),
            Step::Read(offset, n) => (
                Request::Read {
                    offset,
                    len: n as u64,
                },
                None,
            ),
            Step::Flush => (Request::Flush, None),
            Step::Status(offset, len) => (Request::BlockStatus { offset, len }, None),
            Step::Poke(c, o, b) => {
                mems[c].write_at(&[b], o as u64).unwrap();
                results.push(Res::Poked);
                continue;
            }
        };
        let id = d.submit(req, data);
        d.run();
        results.push(match d.outcome(id) {
            Outcome::Read { .. } => Res::Data(d.data(id).expect("read data").to_vec()),
            Outcome::Done => Res::Ok,
            Outcome::Failed(e) => Res::Err(e),
            Outcome::BlockStatus(e) => Res::Status(e),
            Outcome::ContentsMismatch { offset } => panic!("blkverify is off: {offset}"),
        });
        d.forget(id);
    }
    Run {
        results,
        events: d.events().to_vec(),
        children: mems.iter().map(|m| m.contents()).collect(),
    }
}

fn render(events: &[(RequestId, Event)]) -> String {
    let names = quorum_proto::DefaultNames { device: "quorum" };
    let mut s = String::new();
    for (id, e) in events {
        s.push_str(&format!("{id} "));
        e.write_qmp(&mut s, &names, Default::default()).unwrap();
        s.push('\n');
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_sync_tokio_and_core_agree_on_results_events_and_bytes() {
    let core = with_core();
    let sim = with_sim();
    let sync = with_sync();
    let tokio_run = tokio::spawn(with_async()).await.unwrap();
    let smol_run = with_async_under_smol();

    // The scenario did what it is meant to exercise.
    use Res::*;
    let r = &core.results;
    assert_eq!(r[3], Data(pattern(0xab, 4096)));
    assert_eq!(r[5], Data(pattern(0xab, 4096)));
    assert_eq!(r[6], Ok, "children.2 fails the write, two are enough");
    assert_eq!(r[8], Ok, "children.0 fails the flush, two are enough");
    assert_eq!(r[11], Err(Errno::EIO), "three versions: no quorum");
    assert_eq!(r[12], Data(pattern(0x11, 512)));
    let text = render(&core.events);
    for needle in [
        "\"type\": \"read\", \"node-name\": \"children.1\"",
        "\"type\": \"read\", \"error\": \"Input/output error\", \"node-name\": \"children.2\"",
        "\"type\": \"write\", \"error\": \"Input/output error\", \"node-name\": \"children.2\"",
        "\"type\": \"flush\", \"error\": \"No space left on device\", \"node-name\": \"children.0\"",
        "QUORUM_FAILURE",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    for (name, other) in [
        ("quorum-sim (scripted)", &sim),
        ("quorum-sync", &sync),
        ("quorum-tokio (tokio)", &tokio_run),
        ("quorum-tokio (smol)", &smol_run),
    ] {
        for (i, (a, b)) in core.results.iter().zip(&other.results).enumerate() {
            assert_eq!(a, b, "{name}: step {i} ({:?}) differs", scenario()[i]);
        }
        assert_eq!(
            render(&core.events),
            render(&other.events),
            "{name}: events differ"
        );
        assert_eq!(core.children, other.children, "{name}: child bytes differ");
        assert_eq!(&core, other);
    }
}

fn with_async_under_smol() -> Run {
    std::thread::spawn(|| smol::block_on(with_async()))
        .join()
        .unwrap()
}
