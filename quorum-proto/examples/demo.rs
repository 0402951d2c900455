//! Drives the quorum core over three in-memory children: writes, corrupts one
//! child silently, makes another fail a read, and shows what the core decides
//! and which QMP events it emits.
//!
//! `cargo run -p quorum-proto --example demo`

use std::time::{SystemTime, UNIX_EPOCH};

use quorum_proto::{
    Action, Config, DefaultNames, Errno, Outcome, Quorum, Request, RequestId, Timestamp,
};

const SIZE: usize = 64 * 1024;

/// A child: its bytes and an optional persistent read error.
struct Child {
    data: Vec<u8>,
    read_error: Option<Errno>,
}

/// The smallest complete driver: carries out every action at once.
struct Driver {
    q: Quorum,
    children: Vec<Child>,
    bufs: Vec<Vec<u8>>,
    write: Vec<u8>,
    next_id: u64,
}

impl Driver {
    fn run(&mut self, req: Request) -> (Outcome, Option<Vec<u8>>) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        if let Request::Read { len, .. } = req {
            self.bufs = vec![vec![0; len as usize]; self.q.children().len()];
        }
        self.q
            .submit(id, req)
            .expect("the demo never exceeds capacity");
        let names = DefaultNames { device: "quorum" };
        loop {
            let Some(action) = self.q.poll_action() else {
                unreachable!("every request completes")
            };
            match action {
                Action::Read {
                    id,
                    slot,
                    child,
                    offset,
                    len,
                } => {
                    let c = &self.children[child.0 as usize];
                    let result = match c.read_error {
                        Some(e) => Err(e),
                        None => {
                            let o = offset as usize;
                            self.bufs[slot].copy_from_slice(&c.data[o..o + len as usize]);
                            Ok(())
                        }
                    };
                    self.q
                        .handle_read(id, slot, result, self.bufs.as_slice())
                        .unwrap();
                }
                Action::Write {
                    id,
                    slot,
                    child,
                    offset,
                    len,
                } => {
                    let o = offset as usize;
                    let data = &self.write[..len as usize];
                    self.children[child.0 as usize].data[o..o + data.len()].copy_from_slice(data);
                    self.q.handle_write(id, slot, Ok(())).unwrap();
                }
                Action::WriteZeroes {
                    id,
                    slot,
                    child,
                    offset,
                    len,
                } => {
                    let o = offset as usize;
                    self.children[child.0 as usize].data[o..o + len as usize].fill(0);
                    self.q.handle_write(id, slot, Ok(())).unwrap();
                }
                Action::Flush { id, slot, .. } => self.q.handle_flush(id, slot, Ok(())).unwrap(),
                Action::Rewrite {
                    id,
                    slot,
                    child,
                    source,
                    offset,
                    len,
                } => {
                    let o = offset as usize;
                    let src = self.bufs[source].clone();
                    self.children[child.0 as usize].data[o..o + len as usize].copy_from_slice(&src);
                    println!("  repair: rewrote {child} from slot {source}");
                    self.q.handle_rewrite(id, slot, Ok(())).unwrap();
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
                // Early quorum is off here: the completion answers.
                Action::Answer { .. } => {}
                Action::Complete { outcome, .. } => {
                    let data = match outcome {
                        Outcome::Read { slot, .. } => Some(std::mem::take(&mut self.bufs[slot])),
                        _ => None,
                    };
                    return (outcome, data);
                }
            }
        }
    }
}

fn main() {
    let config = Config::new(3, 2).with_rewrite_corrupted(true);
    let q = Quorum::new(config).expect("valid configuration");
    let children = (0..3)
        .map(|_| Child {
            data: vec![0; SIZE],
            read_error: None,
        })
        .collect();
    let mut d = Driver {
        q,
        children,
        bufs: Vec::new(),
        write: vec![0x5a; SIZE],
        next_id: 1,
    };

    println!("3 children, vote-threshold 2, rewrite-corrupted on");
    println!("write 64 KiB of 0x5a:");
    let (o, _) = d.run(Request::Write {
        offset: 0,
        len: SIZE as u64,
    });
    println!("  -> {o:?}");

    println!("children.1 silently flips a bit at byte 4097; read 64 KiB:");
    d.children[1].data[4097] ^= 0x10;
    let (o, data) = d.run(Request::Read {
        offset: 0,
        len: SIZE as u64,
    });
    let good = data
        .as_deref()
        .is_some_and(|b| b.iter().all(|&x| x == 0x5a));
    println!("  -> {o:?}, data intact: {good}");
    println!(
        "  children.1 repaired: {}",
        d.children[1].data == d.children[0].data
    );

    println!("children.2 fails reads with EIO; read 4 KiB at 8 KiB:");
    d.children[2].read_error = Some(Errno::EIO);
    let (o, _) = d.run(Request::Read {
        offset: 8192,
        len: 4096,
    });
    println!("  -> {o:?}");

    println!("children.0 also corrupted at that range; read again (no quorum left):");
    d.children[0].data[8192] ^= 0xff;
    let (o, _) = d.run(Request::Read {
        offset: 8192,
        len: 4096,
    });
    println!("  -> {o:?}");
}
