//! What one simulation run is: everything a seed does not decide.

use core::fmt;
use core::str::FromStr;

use quorum_proto::ReadPattern;

use crate::faults::{FaultRates, safe_faulty, safe_faulty_early};

/// Which invariant family a run checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Few enough faulty children ([`crate::faults::safe_faulty`]): every
    /// read must return the last acknowledged data, and a liveness phase must
    /// make healthy children identical.
    Safety,
    /// More faulty children than a quorum can outvote: requests may fail,
    /// and when they do they must fail with the right error and events.
    OverThreshold,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Safety => "safety",
            Mode::OverThreshold => "over-threshold",
        }
    }
}

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    /// Drawn from the seed (swarm testing): each kind on or off, own rates.
    Swarm,
    /// Every kind at its default rate ([`FaultRates::all`]).
    All,
    /// None.
    None,
}

/// A simulation run's parameters. Together with the seed they determine the
/// run completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed: every random decision derives from it.
    pub seed: u64,
    /// Children at start (1..=16).
    pub children: usize,
    /// Vote threshold.
    pub threshold: usize,
    /// Requests to run.
    pub ops: u64,
    /// Device size in bytes (a multiple of 512, at least 64 KiB).
    pub size: u64,
    /// Most requests in flight.
    pub depth: usize,
    /// Read pattern.
    pub pattern: ReadPattern,
    /// `rewrite-corrupted` during the workload.
    pub rewrite: bool,
    /// Invariant family.
    pub mode: Mode,
    /// Fault selection.
    pub faults: Faults,
    /// Every request's length in bytes; 0 draws lengths from 1 byte to 8 KiB.
    pub len: u64,
    /// Early quorum ([`quorum_proto::Config::early_quorum`]): a read is
    /// answered as soon as `threshold` children agree and its stragglers are
    /// settled afterwards. Only with the quorum read pattern (the core
    /// ignores it with fifo); safety runs then keep fewer children faulty
    /// ([`crate::faults::safe_faulty_early`]).
    pub early: bool,
    /// Requests in flight are cancelled at random (SPEC R-CANCEL, a fault
    /// kind with its own rate): each must complete at once with `ECANCELED`
    /// and say nothing, while the child operations it had issued still run
    /// and still order against later writes. On by default; traces written
    /// before it existed replay with it off.
    pub cancel: bool,
    /// Sync tracking (SPEC R-SYNC) with chunks of this many bytes, 0 for
    /// none: the simulator keeps the map (and its file, two slots), makes
    /// every `Unsettle` durable before the write goes on, resyncs in the
    /// background, takes children away for a while (all their operations
    /// fail, like an unreachable NBD child) and brings them back, and checks
    /// R-SYNC-1..4 and R-SYNC-8. Traces written before it existed replay
    /// with it off.
    pub sync: u64,
    /// Crashes (issue 14; needs [`SimConfig::sync`]): the device stops at
    /// any point, each child keeps old or new data (or, a faulty one,
    /// garbage) for what it had not flushed, the map file keeps what was
    /// durable (a map write in progress lost, torn or whole), and the device
    /// restarts on the same children and map: a fresh core, the settle pass,
    /// and the workload goes on. Traces written before it existed replay
    /// with it off.
    pub crash: bool,
}

impl Default for SimConfig {
    /// The default scenario: 3 children, threshold 2, every fault kind.
    fn default() -> Self {
        SimConfig {
            seed: 0,
            children: 3,
            threshold: 2,
            ops: 10_000,
            size: 256 * 1024,
            depth: 8,
            pattern: ReadPattern::Quorum,
            rewrite: true,
            mode: Mode::Safety,
            faults: Faults::All,
            len: 0,
            early: false,
            cancel: true,
            sync: 0,
            crash: false,
        }
    }
}

/// The chunk size sweeps use for their sync tracking seeds.
pub const SWEEP_CHUNK: u64 = 64 * 1024;

/// The smallest device sweeps give their sync tracking seeds (8 chunks of
/// [`SWEEP_CHUNK`]), so that a child back from away has chunks it missed and
/// chunks it did not.
pub const SWEEP_SYNC_SIZE: u64 = 512 * 1024;

impl SimConfig {
    /// Checks the parameters; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=16).contains(&self.children) {
            return Err(format!("children must be 1..=16, got {}", self.children));
        }
        if self.threshold < 1 || self.threshold > self.children {
            return Err(format!(
                "threshold must be 1..={} (the number of children), got {}",
                self.children, self.threshold
            ));
        }
        // Multiples of 64 KiB: the liveness phase reads the device in pieces
        // of that size.
        if self.size < 65536 || !self.size.is_multiple_of(65536) || self.size > (1 << 30) {
            return Err(format!(
                "size must be a multiple of 64 KiB between 64 KiB and 1 GiB, got {}",
                self.size
            ));
        }
        if self.len > 65536 || !self.len.is_multiple_of(512) {
            return Err(format!(
                "len must be a multiple of 512 up to 64 KiB (0: random), got {}",
                self.len
            ));
        }
        if !(1..=32).contains(&self.depth) {
            return Err(format!("depth must be 1..=32, got {}", self.depth));
        }
        if self.sync != 0
            && (!self.sync.is_power_of_two()
                || !(quorum_proto::sync::MIN_CHUNK..=quorum_proto::sync::MAX_CHUNK)
                    .contains(&self.sync))
        {
            return Err(format!(
                "sync chunk must be a power of two from 64 KiB to 64 MiB (0: no sync tracking), got {}",
                self.sync
            ));
        }
        if self.crash && self.sync == 0 {
            return Err("crashes need sync tracking (a sync chunk size)".into());
        }
        Ok(())
    }

    /// The configuration a sweep runs for `seed` in `mode` (what `quorum sim
    /// --sweep` and the swarm tests run): `self` with swarm faults, early
    /// quorum on for every odd seed (always, when `self.early` is set), so
    /// that a sweep covers both read paths, and sync tracking (R-SYNC) for a
    /// quarter of the seeds and sync tracking with crashes for another
    /// quarter (`(seed >> 1) & 3` is 2 or 3; every seed when `self.sync` or
    /// `self.crash` is set), on a device of at least [`SWEEP_SYNC_SIZE`].
    pub fn sweep(&self, seed: u64, mode: Mode) -> SimConfig {
        let share = (seed >> 1) & 3;
        let crash = self.crash || share == 3;
        let sync = match self.sync {
            0 if crash || share == 2 => SWEEP_CHUNK,
            s => s,
        };
        SimConfig {
            seed,
            mode,
            faults: Faults::Swarm,
            early: self.early || seed & 1 == 1,
            sync,
            crash,
            size: if sync != 0 && self.sync == 0 {
                self.size.max(SWEEP_SYNC_SIZE)
            } else {
                self.size
            },
            ..*self
        }
    }

    /// Whether the core answers reads early: early quorum asked for, with
    /// the quorum read pattern (the core ignores it with fifo).
    pub fn early_effective(&self) -> bool {
        self.early && self.pattern == ReadPattern::Quorum
    }

    /// The most children a safety run keeps faulty: [`safe_faulty`], or
    /// [`safe_faulty_early`] when reads are answered early.
    pub fn safe_faulty(&self, children: usize) -> usize {
        if self.early_effective() {
            safe_faulty_early(children, self.threshold)
        } else {
            safe_faulty(children, self.threshold)
        }
    }

    /// The fault rates before any draw ([`Faults::Swarm`] draws later).
    pub(crate) fn fixed_rates(&self) -> Option<FaultRates> {
        match self.faults {
            Faults::Swarm => None,
            Faults::All => Some(FaultRates {
                cancel: if self.cancel {
                    FaultRates::all().cancel
                } else {
                    0
                },
                ..FaultRates::all()
            }),
            Faults::None => Some(FaultRates::none()),
        }
    }
}

impl fmt::Display for SimConfig {
    /// The trace's `config` line (without the prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} children={} threshold={} ops={} size={} depth={} pattern={} rewrite={} mode={} faults={}",
            self.seed,
            self.children,
            self.threshold,
            self.ops,
            self.size,
            self.depth,
            self.pattern,
            u8::from(self.rewrite),
            self.mode.as_str(),
            match self.faults {
                Faults::Swarm => "swarm",
                Faults::All => "all",
                Faults::None => "none",
            }
        )?;
        // Written only when set, so traces from before the key still parse.
        if self.len != 0 {
            write!(f, " len={}", self.len)?;
        }
        if self.early {
            write!(f, " early=1")?;
        }
        if self.cancel {
            write!(f, " cancel=1")?;
        }
        if self.sync != 0 {
            write!(f, " sync={}", self.sync)?;
        }
        if self.crash {
            write!(f, " crash=1")?;
        }
        Ok(())
    }
}

impl FromStr for SimConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Keys added later are off when absent: older traces replay as they
        // were recorded.
        let mut c = SimConfig {
            cancel: false,
            ..SimConfig::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for kv in s.split(' ') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("`{kv}` is not key=value"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}: `{v}` is not a number"))
            };
            match k {
                "seed" => c.seed = num(v)?,
                "children" => c.children = num(v)? as usize,
                "threshold" => c.threshold = num(v)? as usize,
                "ops" => c.ops = num(v)?,
                "size" => c.size = num(v)?,
                "depth" => c.depth = num(v)? as usize,
                "pattern" => c.pattern = v.parse().map_err(|e| format!("{e}"))?,
                "rewrite" => c.rewrite = num(v)? != 0,
                "mode" => {
                    c.mode = match v {
                        "safety" => Mode::Safety,
                        "over-threshold" => Mode::OverThreshold,
                        _ => {
                            return Err(format!(
                                "mode: `{v}` is neither safety nor over-threshold"
                            ));
                        }
                    }
                }
                "faults" => {
                    c.faults = match v {
                        "swarm" => Faults::Swarm,
                        "all" => Faults::All,
                        "none" => Faults::None,
                        _ => return Err(format!("faults: `{v}` is not swarm, all or none")),
                    }
                }
                "len" => c.len = num(v)?,
                "early" => c.early = num(v)? != 0,
                "cancel" => c.cancel = num(v)? != 0,
                "sync" => c.sync = num(v)?,
                "crash" => c.crash = num(v)? != 0,
                _ => return Err(format!("unknown key `{k}`")),
            }
            if seen.contains(&k) {
                return Err(format!("key `{k}` given twice"));
            }
            seen.push(k);
        }
        let required = [
            "seed",
            "children",
            "threshold",
            "ops",
            "size",
            "depth",
            "pattern",
            "rewrite",
            "mode",
            "faults",
        ];
        if let Some(missing) = required.iter().find(|k| !seen.contains(k)) {
            return Err(format!("key `{missing}` is missing"));
        }
        c.validate()?;
        Ok(c)
    }
}
