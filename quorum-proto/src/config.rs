//! Configuration and its validation (R-CFG).
//!
//! Validation follows QEMU 10's `quorum_open` check by check, in the same
//! order and with the same texts, so a front end can print our error where a
//! user would have seen QEMU's.

use core::fmt;
use core::str::FromStr;

/// How reads are served (R-CFG-3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadPattern {
    /// Read every child and vote on the content (R-READ).
    #[default]
    Quorum,
    /// Read children in order until one succeeds, unchecked (R-FIFO).
    Fifo,
}

impl ReadPattern {
    /// The name QEMU uses for the `read-pattern` option.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReadPattern::Quorum => "quorum",
            ReadPattern::Fifo => "fifo",
        }
    }
}

impl fmt::Display for ReadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReadPattern {
    type Err = ConfigError;

    /// R-CFG-3: `quorum` or `fifo`; anything else names both.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "quorum" => Ok(ReadPattern::Quorum),
            "fifo" => Ok(ReadPattern::Fifo),
            _ => Err(ConfigError::ReadPattern),
        }
    }
}

/// The options of a quorum device, as QEMU's `blockdev-add` takes them.
///
/// Build one with [`Config::new`] and the `with_*` methods, then hand it to
/// [`crate::Quorum::new`], which validates it ([`Config::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Number of children at start; they are named `children.0` … `children.N-1`.
    pub children: usize,
    /// `vote-threshold`: how many children must agree (R-CFG-2).
    pub threshold: usize,
    /// `read-pattern` (R-CFG-3).
    pub read_pattern: ReadPattern,
    /// `rewrite-corrupted`: rewrite the losers of a read vote (R-READ-7).
    pub rewrite_corrupted: bool,
    /// `blkverify`: a content mismatch between the two children is fatal (R-READ-8).
    pub blkverify: bool,
    /// Deliberate improvement (SPEC.md, the seed's FIXME), off by default: with
    /// `fifo`, rewrite the children that failed before the one that answered.
    pub fifo_rewrite_failed: bool,
    /// Opt-in, not in QEMU: answer a read as soon as `threshold` children
    /// agree ([`crate::Action::Answer`]), then compare, report and rewrite the
    /// stragglers before the request completes. Only with `read-pattern=quorum`
    /// and without `blkverify` (which must see both children); ignored
    /// otherwise. See SPEC.md's deliberate improvements and [`crate::Action::Answer`].
    pub early_quorum: bool,
    /// Opt-in, not in QEMU: sync tracking (SPEC R-SYNC) with chunks of
    /// this many bytes (a power of two, 64 KiB to 64 MiB); `None`, the
    /// default, is QEMU's behaviour. See [`crate::sync`].
    pub sync_chunk: Option<u64>,
}

impl Config {
    /// `children` children, `threshold` votes needed, everything else QEMU's default.
    pub const fn new(children: usize, threshold: usize) -> Self {
        Config {
            children,
            threshold,
            read_pattern: ReadPattern::Quorum,
            rewrite_corrupted: false,
            blkverify: false,
            fifo_rewrite_failed: false,
            early_quorum: false,
            sync_chunk: None,
        }
    }

    /// Turns sync tracking on with chunks of `chunk` bytes (see
    /// [`Config::sync_chunk`]).
    pub const fn with_sync_tracking(mut self, chunk: u64) -> Self {
        self.sync_chunk = Some(chunk);
        self
    }

    /// Sets `read-pattern`.
    pub const fn with_read_pattern(mut self, p: ReadPattern) -> Self {
        self.read_pattern = p;
        self
    }

    /// Sets `rewrite-corrupted`.
    pub const fn with_rewrite_corrupted(mut self, on: bool) -> Self {
        self.rewrite_corrupted = on;
        self
    }

    /// Sets `blkverify`.
    pub const fn with_blkverify(mut self, on: bool) -> Self {
        self.blkverify = on;
        self
    }

    /// Sets the fifo repair improvement (see [`Config::fifo_rewrite_failed`]).
    pub const fn with_fifo_rewrite_failed(mut self, on: bool) -> Self {
        self.fifo_rewrite_failed = on;
        self
    }

    /// Sets early quorum (see [`Config::early_quorum`]).
    pub const fn with_early_quorum(mut self, on: bool) -> Self {
        self.early_quorum = on;
        self
    }

    /// Checks the options in QEMU 10's order and returns the configuration in
    /// effect: with `fifo`, `blkverify` and `rewrite-corrupted` are ignored
    /// (R-CFG-6), and with `quorum` the fifo repair option is.
    ///
    /// `capacity` is the most children the core was built for.
    pub fn validate(self, capacity: usize) -> Result<Config, ConfigError> {
        // R-CFG-1
        if self.children < 1 {
            return Err(ConfigError::NoChildren);
        }
        if self.children > capacity {
            return Err(ConfigError::TooManyChildren { capacity });
        }
        // R-CFG-2
        if self.threshold < 1 {
            return Err(ConfigError::ThresholdTooLow);
        }
        if self.threshold > self.children {
            return Err(ConfigError::ThresholdTooHigh);
        }
        if let Some(c) = self.sync_chunk
            && (!c.is_power_of_two()
                || !(crate::sync::MIN_CHUNK..=crate::sync::MAX_CHUNK).contains(&c))
        {
            return Err(ConfigError::ChunkSize);
        }
        let mut eff = self;
        match self.read_pattern {
            ReadPattern::Quorum => {
                // R-CFG-4 (QEMU 10: an error, the seed only warned)
                if self.blkverify && (self.children != 2 || self.threshold != 2) {
                    return Err(ConfigError::Blkverify);
                }
                // R-CFG-5
                if self.rewrite_corrupted && self.blkverify {
                    return Err(ConfigError::RewriteWithBlkverify);
                }
                eff.fifo_rewrite_failed = false;
                eff.early_quorum &= !self.blkverify;
            }
            ReadPattern::Fifo => {
                // R-CFG-6
                eff.blkverify = false;
                eff.rewrite_corrupted = false;
                eff.early_quorum = false;
            }
        }
        Ok(eff)
    }
}

/// Why a [`Config`] was refused. `Display` gives QEMU 10's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigError {
    /// R-CFG-1: zero children.
    NoChildren,
    /// More children than the core's fixed capacity.
    TooManyChildren {
        /// The capacity the core was built with.
        capacity: usize,
    },
    /// R-CFG-2: threshold below 1 (a missing threshold is 0 in QEMU).
    ThresholdTooLow,
    /// R-CFG-2: threshold above the number of children.
    ThresholdTooHigh,
    /// R-CFG-3: an unknown read pattern.
    ReadPattern,
    /// R-CFG-4: blkverify without exactly two children and threshold 2.
    Blkverify,
    /// R-CFG-5: rewrite-corrupted together with blkverify.
    RewriteWithBlkverify,
    /// R-SYNC: a chunk size that is not a power of two from 64 KiB to 64 MiB.
    ChunkSize,
    /// R-SYNC: the action queue cannot hold a request's marks (`A` below
    /// `5C + 5`).
    SyncCapacity,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoChildren => f.write_str("Number of provided children must be 1 or more"),
            ConfigError::TooManyChildren { capacity } => {
                write!(f, "Too many children (this build holds at most {capacity})")
            }
            ConfigError::ThresholdTooLow => {
                f.write_str("Parameter 'vote-threshold' expects a value >= 1")
            }
            ConfigError::ThresholdTooHigh => f.write_str("threshold may not exceed children count"),
            ConfigError::ReadPattern => f.write_str("Please set read-pattern as fifo or quorum"),
            ConfigError::Blkverify => f.write_str(
                "blkverify=on can only be set if there are exactly two files and vote-threshold is 2",
            ),
            ConfigError::RewriteWithBlkverify => {
                f.write_str("rewrite-corrupted=on cannot be used with blkverify=on")
            }
            ConfigError::ChunkSize => {
                f.write_str("the chunk size must be a power of two from 64 KiB to 64 MiB")
            }
            ConfigError::SyncCapacity => {
                f.write_str("sync tracking needs an action queue of at least 5C + 5")
            }
        }
    }
}

impl core::error::Error for ConfigError {}
