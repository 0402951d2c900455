//! Seeded scenario generator: one `u64` seed decides a whole scenario.

use std::fmt;

/// splitmix64: tiny, deterministic, good enough for test generation.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// True with probability `pct` percent.
    pub(crate) fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// The kind of child I/O an injected error hits (blkdebug's event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoKind {
    Read,
    Write,
    Flush,
}

impl IoKind {
    pub(crate) fn cli(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
        }
    }
    /// blkdebug's event name.
    pub(crate) fn blkdebug_event(self) -> &'static str {
        match self {
            IoKind::Read => "read_aio",
            IoKind::Write => "write_aio",
            IoKind::Flush => "flush_to_disk",
        }
    }
}

/// One `--inject-error` rule (blkdebug `inject-error`).
#[derive(Clone, Debug)]
pub(crate) struct Inject {
    pub(crate) kind: IoKind,
    pub(crate) errno: i32,
    pub(crate) sector: Option<u64>,
    pub(crate) once: bool,
}

/// One child: its optional explicit name, corruptions applied to its
/// image before the run, and injected errors.
#[derive(Clone, Debug)]
pub(crate) struct Child {
    pub(crate) name: Option<String>,
    /// `(offset, len, byte)`: the range is overwritten with `byte`.
    pub(crate) corrupt: Vec<(u64, u64, u8)>,
    pub(crate) inject: Vec<Inject>,
}

/// A complete scenario: images, options, commands.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) size: u64,
    /// The byte every child holds in each 4 KiB block before corruption.
    pub(crate) base: Vec<u8>,
    pub(crate) children: Vec<Child>,
    pub(crate) threshold: usize,
    pub(crate) fifo: bool,
    pub(crate) rewrite: bool,
    pub(crate) blkverify: bool,
    pub(crate) node_name: Option<String>,
    pub(crate) commands: Vec<String>,
}

pub(crate) const BLOCK: u64 = 4096;

/// errnos injected: EIO (often), ENOSPC, EPERM, EINVAL, EACCES, EDQUOT,
/// EOPNOTSUPP, EFBIG, EROFS — some survive NBD, some are mapped by it.
const ERRNOS: &[i32] = &[5, 5, 5, 28, 1, 22, 13, 122, 95, 27, 30];

impl Scenario {
    pub(crate) fn child_name(&self, i: usize) -> String {
        self.children[i]
            .name
            .clone()
            .unwrap_or_else(|| format!("children.{i}"))
    }

    pub(crate) fn device_name(&self) -> &str {
        self.node_name.as_deref().unwrap_or("quorum")
    }

    /// The initial image of child `i`.
    pub(crate) fn image(&self, i: usize) -> Vec<u8> {
        let mut img = vec![0u8; self.size as usize];
        for (b, chunk) in img.chunks_mut(BLOCK as usize).enumerate() {
            chunk.fill(self.base[b]);
        }
        for &(off, len, byte) in &self.children[i].corrupt {
            img[off as usize..(off + len) as usize].fill(byte);
        }
        img
    }

    pub(crate) fn generate(seed: u64) -> Scenario {
        let mut r = Rng::new(seed);
        let blkverify = r.chance(8);
        let n = if blkverify {
            2
        } else {
            r.pick(&[1, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5])
        };
        let threshold = if blkverify {
            2
        } else if r.chance(50) {
            n / 2 + 1
        } else {
            r.range(1, n as u64) as usize
        };
        let fifo = !blkverify && r.chance(20);
        let rewrite = !blkverify && r.chance(35);
        let size = BLOCK * 16 * r.range(1, 4);
        let base: Vec<u8> = (0..size / BLOCK)
            .map(|_| r.range(0x10, 0x4f) as u8)
            .collect();
        let named = r.chance(15);
        let node_name = r.chance(15).then(|| "qdev".to_string());
        let sectors = size / 512;
        let mut children = Vec::new();
        for i in 0..n {
            let mut corrupt = Vec::new();
            if r.chance(40) {
                for _ in 0..r.range(1, 2) {
                    // Mostly in the first 16 KiB so reads hit them often.
                    let hi = if r.chance(70) { 32 } else { sectors - 1 };
                    let s = r.range(0, hi);
                    let len = r.range(1, 16).min(sectors - s);
                    corrupt.push((s * 512, len * 512, r.pick(&[0xc1u8, 0xc1, 0xc2, 0xc3])));
                }
            }
            let mut inject: Vec<Inject> = Vec::new();
            if r.chance(30) {
                for _ in 0..r.range(1, 2) {
                    let kind = r.pick(&[
                        IoKind::Read,
                        IoKind::Read,
                        IoKind::Read,
                        IoKind::Write,
                        IoKind::Write,
                        IoKind::Flush,
                    ]);
                    if inject.iter().any(|j| j.kind == kind) {
                        continue;
                    }
                    let sector = r.chance(35).then(|| r.range(0, 40));
                    inject.push(Inject {
                        kind,
                        errno: r.pick(ERRNOS),
                        sector,
                        once: r.chance(40),
                    });
                }
            }
            children.push(Child {
                name: named.then(|| format!("disk{i}")),
                corrupt,
                inject,
            });
        }
        let mut commands = Vec::new();
        for _ in 0..r.range(1, 8) {
            let (off, len) = if r.chance(10) {
                // Unaligned: exercises the sector arithmetic.
                let len = r.range(1, 3000);
                (r.range(0, size - len), len)
            } else {
                let len = r.range(1, 24) * 512;
                let hi = if r.chance(70) { 40 } else { sectors };
                let s = r.range(0, hi.min(sectors - len / 512));
                (s * 512, len)
            };
            let k = r.range(0, 99);
            let cmd = if k < 55 {
                let blk = (off / BLOCK) as usize;
                let one_block = (off + len - 1) / BLOCK == blk as u64;
                if r.chance(10) {
                    // A hexdump: keep it short.
                    format!("read -v {off} {}", len.min(r.range(1, 80)))
                } else if one_block && r.chance(60) {
                    let b: u8 = base[blk];
                    format!("read -P 0x{b:x} {off} {len}")
                } else {
                    format!("read {off} {len}")
                }
            } else if k < 75 {
                format!("write -P 0x{:x} {off} {len}", r.range(0x50, 0x5f))
            } else if k < 87 {
                format!("write -z {off} {len}")
            } else if k < 96 {
                "flush".to_string()
            } else {
                "length".to_string()
            };
            commands.push(cmd);
        }
        Scenario {
            seed,
            size,
            base,
            children,
            threshold,
            fifo,
            rewrite,
            blkverify,
            node_name,
            commands,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} children, threshold {}, size {}, read-pattern {}{}{}{}",
            self.seed,
            self.children.len(),
            self.threshold,
            self.size,
            if self.fifo { "fifo" } else { "quorum" },
            if self.rewrite {
                ", rewrite-corrupted"
            } else {
                ""
            },
            if self.blkverify { ", blkverify" } else { "" },
            match &self.node_name {
                Some(n) => format!(", node-name {n}"),
                None => String::new(),
            }
        )?;
        let blocks: Vec<String> = self.base.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(f, "  base bytes per 4 KiB block: {}", blocks.join(" "))?;
        for (i, c) in self.children.iter().enumerate() {
            write!(f, "  child {i} ({})", self.child_name(i))?;
            for (off, len, b) in &c.corrupt {
                write!(f, " corrupt[{off}+{len}=0x{b:02x}]")?;
            }
            for j in &c.inject {
                write!(f, " inject[{}]", inject_arg(j, &self.child_name(i)))?;
            }
            writeln!(f)?;
        }
        for c in &self.commands {
            writeln!(f, "  -c '{c}'")?;
        }
        Ok(())
    }
}

/// `CHILD:read|write|flush:ERRNO[:SECTOR][:once]`.
pub(crate) fn inject_arg(j: &Inject, child: &str) -> String {
    let mut s = format!("{child}:{}:{}", j.kind.cli(), j.errno);
    if let Some(sec) = j.sector {
        s += &format!(":{sec}");
    }
    if j.once {
        s += ":once";
    }
    s
}
