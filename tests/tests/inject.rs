//! `quorum_tokio::InjectChild` fails exactly the operations
//! `quorum_sync::InjectChild` fails (blkdebug's meaning, checked against QEMU
//! there), on seeded random operation sequences and rule sets.

use std::sync::Arc;

use quorum_proto::Errno;
use quorum_sync::Child;
use quorum_tokio::{AsyncChild, InjectEvent, InjectRule};

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn rules(rng: &mut Lcg) -> Vec<InjectRule> {
    let errnos = [Errno::EIO, Errno::ENOSPC, Errno::EPERM];
    (0..rng.below(4))
        .map(|_| InjectRule {
            event: [InjectEvent::Read, InjectEvent::Write, InjectEvent::Flush]
                [rng.below(3) as usize],
            errno: errnos[rng.below(3) as usize],
            sector: (rng.below(2) == 0).then(|| rng.below(16)),
            once: rng.below(2) == 0,
        })
        .collect()
}

#[test]
fn async_inject_child_matches_the_blocking_one() {
    const SIZE: usize = 16 * 512;
    smol::block_on(async {
        for seed in 0..300 {
            let mut rng = Lcg(seed);
            let rules = rules(&mut rng);
            let sync_mem = Arc::new(quorum_sync::MemChild::new(SIZE));
            let sync = quorum_sync::InjectChild::new(sync_mem.clone(), rules.clone());
            let async_mem = Arc::new(quorum_tokio::MemChild::new(SIZE));
            let asy = quorum_tokio::InjectChild::new(async_mem.clone(), rules.clone());
            for step in 0..40 {
                let off = rng.below(14) * 512;
                let len = (1 + rng.below(2)) * 512;
                let byte = rng.below(256) as u8;
                let (a, b) = match rng.below(4) {
                    0 => {
                        let mut buf = vec![0; len as usize];
                        let a = sync.read_at(&mut buf, off).map(|_| buf);
                        let (r, buf) = asy.read_at(vec![0; len as usize], off).await;
                        (
                            a.map_err(|e| e.raw_os_error()),
                            r.map(|_| buf).map_err(|e| e.raw_os_error()),
                        )
                    }
                    1 => {
                        let data = vec![byte; len as usize];
                        let a = sync.write_at(&data, off).map(|_| vec![]);
                        let b = asy.write_at(data.into(), off).await.map(|_| vec![]);
                        (
                            a.map_err(|e| e.raw_os_error()),
                            b.map_err(|e| e.raw_os_error()),
                        )
                    }
                    2 => {
                        let a = sync.write_zeroes(off, len).map(|_| vec![]);
                        let b = asy.write_zeroes(off, len).await.map(|_| vec![]);
                        (
                            a.map_err(|e| e.raw_os_error()),
                            b.map_err(|e| e.raw_os_error()),
                        )
                    }
                    _ => {
                        let a = sync.flush().map(|_| vec![]);
                        let b = asy.flush().await.map(|_| vec![]);
                        (
                            a.map_err(|e| e.raw_os_error()),
                            b.map_err(|e| e.raw_os_error()),
                        )
                    }
                };
                assert_eq!(a, b, "seed {seed} step {step}, rules {rules:?}");
            }
            assert_eq!(sync_mem.contents(), async_mem.contents(), "seed {seed}");
        }
    });
}
