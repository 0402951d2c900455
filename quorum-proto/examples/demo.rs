//! Drives the quorum core over three in-memory children: writes, corrupts one
//! child silently, makes another fail a read, and shows what the core decides
//! and which QMP events it emits.
//!
//! The driver is the kit's in-memory one (`quorum_driver::testing::MemDriver`,
//! which also checks the core's contract on every call); the lib.rs example
//! shows the loop a driver runs, written out.
//!
//! `cargo run -p quorum-proto --example demo`

use std::time::{SystemTime, UNIX_EPOCH};

use quorum_driver::testing::MemDriver;
use quorum_proto::{Action, ChildId, Config, DefaultNames, Errno, Outcome, Timestamp};

const SIZE: usize = 64 * 1024;

/// Prints what the driver saw since the last call: repairs, and events as
/// QMP sends them.
fn show(d: &MemDriver, from: &mut usize) {
    let names = DefaultNames { device: "quorum" };
    for a in &d.log()[*from..] {
        match *a {
            Action::Rewrite { child, source, .. } => {
                println!("  repair: rewrote {child} from slot {source}")
            }
            Action::Event { event, .. } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let ts = Timestamp {
                    seconds: now.as_secs(),
                    microseconds: now.subsec_micros(),
                };
                let mut line = String::new();
                event.write_qmp(&mut line, &names, ts).unwrap();
                println!("  event: {line}");
            }
            _ => {}
        }
    }
    *from = d.log().len();
}

fn main() {
    let config = Config::new(3, 2).with_rewrite_corrupted(true);
    let mut d: MemDriver = MemDriver::uniform(config, SIZE, 0);
    let mut seen = 0;

    println!("3 children, vote-threshold 2, rewrite-corrupted on");
    println!("write 64 KiB of 0x5a:");
    let o = d.write(0, &[0x5a; SIZE]);
    show(&d, &mut seen);
    println!("  -> {o:?}");

    println!("children.1 silently flips a bit at byte 4097; read 64 KiB:");
    d.disk_mut(1)[4097] ^= 0x10;
    let (o, data) = d.read(0, SIZE as u64);
    show(&d, &mut seen);
    let good = data
        .as_deref()
        .is_some_and(|b| b.iter().all(|&x| x == 0x5a));
    println!("  -> {o:?}, data intact: {good}");
    println!("  children.1 repaired: {}", d.disk(1) == d.disk(0));

    println!("children.2 fails reads with EIO; read 4 KiB at 8 KiB:");
    d.faults.read.insert(ChildId(2), Errno::EIO);
    let (o, _) = d.read(8192, 4096);
    show(&d, &mut seen);
    println!("  -> {o:?}");

    println!("children.0 also corrupted at that range; read again (no quorum left):");
    d.disk_mut(0)[8192] ^= 0xff;
    let (o, _) = d.read(8192, 4096);
    show(&d, &mut seen);
    println!("  -> {o:?}");
    assert_eq!(o, Outcome::Failed(Errno::EIO));
}
