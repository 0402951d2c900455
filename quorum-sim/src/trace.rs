//! Trace files: record a run and replay it exactly.
//!
//! A trace holds every random decision the simulator made and every output
//! the core produced, in order. Replaying feeds the recorded decisions back
//! instead of drawing them, so a scenario survives changes to how the
//! simulator uses its generator, and compares the core's outputs line by line:
//! the first difference is reported with its step.
//!
//! # Format (version 1)
//!
//! UTF-8 text, one item per line:
//!
//! ```text
//! quorum-sim trace v1
//! config seed=7 children=3 threshold=2 ops=100 size=262144 depth=8 pattern=quorum rewrite=1 mode=safety faults=default
//! d 42                      a decision: the value drawn (always below its bound)
//! o read #1 s0 c0 0+4096    an output of the core or an observation of the simulator
//! ...
//! end lines=1234 hash=0123456789abcdef
//! ```
//!
//! The `config` keys are [`crate::SimConfig`]'s; `len=` and `early=1` are
//! written only when set, so traces from before those keys still replay.
//!
//! `hash` is FNV-1a over every `d` and `o` line (with their newlines), so a
//! file edited anywhere, even in a way that would replay, is refused.

use core::fmt;
use core::hash::{Hash, Hasher};

use crate::rng::Rng;

/// The first line of every trace.
pub const MAGIC: &str = "quorum-sim trace v1";

/// Why a trace was refused or a replay diverged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// Not a quorum-sim trace at all.
    NotATrace,
    /// A quorum-sim trace of a version this build does not read.
    Version(String),
    /// A line that does not parse; `line` is 1-based.
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The `end` line's hash does not match the contents.
    Hash {
        /// Hash in the file.
        expected: u64,
        /// Hash of the lines.
        actual: u64,
    },
    /// The replay did something else than the recording.
    Diverged {
        /// 0-based step (line after the header) where it happened.
        step: usize,
        /// The recorded line.
        expected: String,
        /// What the replay produced.
        actual: String,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::NotATrace => {
                write!(f, "not a quorum-sim trace (first line is not `{MAGIC}`)")
            }
            TraceError::Version(v) => write!(
                f,
                "unsupported trace format `{v}` (this build reads `{MAGIC}`)"
            ),
            TraceError::Malformed { line, why } => write!(f, "corrupt trace, line {line}: {why}"),
            TraceError::Hash { expected, actual } => write!(
                f,
                "corrupt trace: content hash {actual:016x} does not match the recorded {expected:016x}"
            ),
            TraceError::Diverged {
                step,
                expected,
                actual,
            } => write!(
                f,
                "replay diverged at step {step}: recorded `{expected}`, replay produced `{actual}`"
            ),
        }
    }
}

impl std::error::Error for TraceError {}

/// FNV-1a, 64 bits: cheap enough to run on every line of a fast simulation.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl core::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A parsed trace: its config line and its steps.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The `config …` line, without the `config ` prefix.
    pub config: String,
    /// `d`/`o` lines, without newline.
    pub steps: Vec<String>,
    /// The recorded hash.
    pub hash: u64,
}

impl Trace {
    /// Parses and verifies a trace file's text.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut lines = text.lines();
        match lines.next() {
            Some(MAGIC) => {}
            Some(l) if l.starts_with("quorum-sim trace ") => {
                return Err(TraceError::Version(l.to_string()));
            }
            _ => return Err(TraceError::NotATrace),
        }
        let config = lines
            .next()
            .and_then(|l| l.strip_prefix("config "))
            .ok_or_else(|| TraceError::Malformed {
                line: 2,
                why: "expected a `config …` line".into(),
            })?
            .to_string();
        let mut steps = Vec::new();
        let mut h = Fnv::default();
        for (i, l) in lines.by_ref().enumerate() {
            let lineno = i + 3;
            if let Some(end) = l.strip_prefix("end ") {
                let (n, hash) = parse_end(end).ok_or_else(|| TraceError::Malformed {
                    line: lineno,
                    why: "expected `end lines=N hash=HEX`".into(),
                })?;
                if n != steps.len() {
                    return Err(TraceError::Malformed {
                        line: lineno,
                        why: format!("the trace says {n} steps but holds {}", steps.len()),
                    });
                }
                if h.finish() != hash {
                    return Err(TraceError::Hash {
                        expected: hash,
                        actual: h.finish(),
                    });
                }
                return Ok(Trace {
                    config,
                    steps,
                    hash,
                });
            }
            if !(l.starts_with("d ") || l.starts_with("o ")) {
                return Err(TraceError::Malformed {
                    line: lineno,
                    why: format!("unexpected line `{l}`"),
                });
            }
            h.write(l.as_bytes());
            h.write(b"\n");
            steps.push(l.to_string());
        }
        Err(TraceError::Malformed {
            line: text.lines().count() + 1,
            why: "missing `end` line (truncated trace?)".into(),
        })
    }
}

impl Trace {
    /// The trace as file text, with a freshly computed hash.
    pub fn to_text(&self) -> String {
        render(&self.config, &self.steps)
    }
}

fn parse_end(s: &str) -> Option<(usize, u64)> {
    let mut it = s.split(' ');
    let n = it.next()?.strip_prefix("lines=")?.parse().ok()?;
    let h = u64::from_str_radix(it.next()?.strip_prefix("hash=")?, 16).ok()?;
    it.next().is_none().then_some((n, h))
}

/// Where the simulator's decisions come from, and where its steps go.
#[derive(Debug)]
pub(crate) enum Source {
    /// Draw from the generator; optionally keep the lines.
    Live { rng: Rng, keep: Option<Vec<String>> },
    /// Take decisions from a trace and check outputs against it.
    Replay { steps: Vec<String>, at: usize },
    /// Take decisions from raw bytes (a fuzzer's input), zeroes once exhausted.
    Bytes { data: Vec<u8>, at: usize },
}

/// The stream of steps: decisions in, outputs out, all hashed.
#[derive(Debug)]
pub(crate) struct Tape {
    pub(crate) source: Source,
    pub(crate) hash: Fnv,
    pub(crate) steps: usize,
    /// The first divergence of a replay; after it, the replay stops.
    pub(crate) diverged: Option<TraceError>,
}

impl Tape {
    pub(crate) fn live(seed: u64, keep: bool) -> Self {
        Tape {
            source: Source::Live {
                rng: Rng::new(seed),
                keep: keep.then(Vec::new),
            },
            hash: Fnv::default(),
            steps: 0,
            diverged: None,
        }
    }

    pub(crate) fn bytes(data: &[u8]) -> Self {
        Tape {
            source: Source::Bytes {
                data: data.to_vec(),
                at: 0,
            },
            hash: Fnv::default(),
            steps: 0,
            diverged: None,
        }
    }

    /// True once a byte-driven tape has used all its bytes.
    pub(crate) fn exhausted(&self) -> bool {
        matches!(&self.source, Source::Bytes { data, at } if *at >= data.len())
    }

    pub(crate) fn replay(trace: Trace) -> Self {
        Tape {
            source: Source::Replay {
                steps: trace.steps,
                at: 0,
            },
            hash: Fnv::default(),
            steps: 0,
            diverged: None,
        }
    }

    /// A decision in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let v = match &mut self.source {
            Source::Live { rng, keep } => {
                let v = rng.below(n);
                if let Some(k) = keep {
                    k.push(format!("d {v}"));
                }
                v
            }
            Source::Bytes { data, at } => {
                // Four bytes a decision: enough spread for any bound used here.
                let mut v = 0u64;
                for _ in 0..4 {
                    v = (v << 8) | data.get(*at).copied().unwrap_or(0) as u64;
                    *at += 1;
                }
                if n == 0 { 0 } else { v % n }
            }
            Source::Replay { steps, at } => {
                let step = *at;
                let line = steps.get(step).cloned();
                *at += 1;
                let parsed = line
                    .as_deref()
                    .and_then(|l| l.strip_prefix("d "))
                    .and_then(|v| v.parse::<u64>().ok());
                match parsed {
                    Some(v) if v < n.max(1) => v,
                    _ => {
                        self.fail(
                            step,
                            line.unwrap_or_else(|| "<end of trace>".into()),
                            format!("a decision below {n}"),
                        );
                        0
                    }
                }
            }
        };
        self.hash.write_u8(b'd');
        self.hash.write_u64(v);
        self.steps += 1;
        v
    }

    /// True with probability `ppm` / 1 000 000.
    pub(crate) fn chance(&mut self, ppm: u32) -> bool {
        if ppm == 0 {
            return false; // no decision drawn: a disabled fault costs nothing
        }
        self.below(crate::faults::PPM as u64) < ppm as u64
    }

    /// An output: hashed always, rendered as text only when recording or
    /// replaying, so a plain run pays no formatting.
    pub(crate) fn out<T: Hash>(&mut self, value: &T, text: impl FnOnce() -> String) {
        self.hash.write_u8(b'o');
        value.hash(&mut self.hash);
        self.steps += 1;
        match &mut self.source {
            Source::Live { keep: None, .. } | Source::Bytes { .. } => {}
            Source::Live { keep: Some(k), .. } => k.push(format!("o {}", text())),
            Source::Replay { steps, at } => {
                let step = *at;
                let rec = steps.get(step).cloned();
                *at += 1;
                let line = format!("o {}", text());
                if rec.as_deref() != Some(line.as_str()) {
                    self.fail(step, rec.unwrap_or_else(|| "<end of trace>".into()), line);
                }
            }
        }
    }

    fn fail(&mut self, step: usize, expected: String, actual: String) {
        if self.diverged.is_none() {
            self.diverged = Some(TraceError::Diverged {
                step,
                expected,
                actual,
            });
        }
    }

    /// For a replay: whether every recorded step was replayed.
    pub(crate) fn finish_replay(&mut self) {
        if let Source::Replay { steps, at } = &self.source
            && *at < steps.len()
        {
            let (step, expected) = (*at, steps[*at].clone());
            self.fail(step, expected, "<end of run>".into());
        }
    }

    /// The recorded lines, if kept.
    pub(crate) fn lines(&self) -> Option<&[String]> {
        match &self.source {
            Source::Live { keep: Some(k), .. } => Some(k),
            _ => None,
        }
    }
}

/// Renders a complete trace file.
pub(crate) fn render(config: &str, lines: &[String]) -> String {
    let mut h = Fnv::default();
    for l in lines {
        h.write(l.as_bytes());
        h.write(b"\n");
    }
    let hash = h.finish();
    let mut s = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 128);
    s.push_str(MAGIC);
    s.push('\n');
    s.push_str("config ");
    s.push_str(config);
    s.push('\n');
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&format!("end lines={} hash={hash:016x}\n", lines.len()));
    s
}
