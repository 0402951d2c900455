//! `quorum bench`'s options, checked as `qemu-img bench` checks them, with
//! its messages, and the quorum's own (`--driver`, `--delay`, …).

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::replicas;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum PatternArg {
    /// Read every child and vote.
    Quorum,
    /// Read children in order until one answers.
    Fifo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum DriverArg {
    /// quorum-sync's blocking Device, one thread per depth slot.
    Sync,
    /// quorum-tokio's AsyncDevice over TokioFileChild children, one task per
    /// depth slot on a multi-thread tokio runtime.
    Tokio,
    /// No quorum: plain positional reads (writes) of the same range from
    /// every child file, one after another, on each depth thread.
    Preads,
}

/// Options of `quorum bench` (qemu-img bench's, plus the quorum's own).
#[derive(Args, Debug)]
#[command(after_help = "\
Output, as qemu-img bench (QEMU 10):
  Sending COUNT read|write requests, SIZE bytes each, DEPTH in parallel (starting at offset OFFSET, step size STEP)
  [Sending flush every N requests]
  Run completed in X.XXX seconds.

Numbers take qemu-img's forms: COUNT, DEPTH, PATTERN and INTERVAL in decimal,
0x hex or 0 octal; sizes with suffixes k, M, G, T (binary). Offsets wrap
within the device as QEMU 10.1 does (modulo size minus buffer size).
Exit status: 0 done, 1 bad option value or a failed request (as qemu-img),
2 bad usage (clap).

Beyond qemu-img bench:
  --driver sync|tokio|preads   who carries the requests (preads: no quorum at
                               all, the baseline the voting is measured against)
  --early-quorum               reads answer once THRESHOLD children agree
  --delay SLOT=DURATION        slow down one child (e.g. --delay 2=1ms)
  --stats                      after the closing line, also print:
  Latency: p50 Aus, p90 Bus, p99 Cus, max Dus
  Peak RSS: N KiB
Latencies are per request, in microseconds, measured by the issuing thread
(or task); the peak RSS is VmHWM from /proc/self/status.")]
pub(crate) struct BenchArgs {
    /// Children: raw image files or block devices, each `PATH` or
    /// `NAME=PATH`.
    #[arg(required = true, value_name = "CHILD")]
    pub(super) children: Vec<String>,
    /// Number of I/O requests to perform [default: 75000]
    #[arg(
        short = 'c',
        long = "count",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub(super) count: Option<String>,
    /// Number of requests to perform in parallel (one thread each; the
    /// driver keeps at most 64 in flight) [default: 64]
    #[arg(
        short = 'd',
        long = "depth",
        value_name = "DEPTH",
        allow_hyphen_values = true
    )]
    pub(super) depth: Option<String>,
    /// Size of each I/O request [default: 4096]
    #[arg(
        short = 's',
        long = "buffer-size",
        value_name = "BUFFER_SIZE",
        allow_hyphen_values = true
    )]
    pub(super) buffer_size: Option<String>,
    /// Each next request's offset increment [default: 0, meaning the buffer
    /// size]
    #[arg(
        short = 'S',
        long = "step-size",
        value_name = "STEP_SIZE",
        allow_hyphen_values = true
    )]
    pub(super) step_size: Option<String>,
    /// Start the first request at this offset [default: 0]
    #[arg(
        short = 'o',
        long = "offset",
        value_name = "OFFSET",
        allow_hyphen_values = true
    )]
    pub(super) offset: Option<String>,
    /// Perform a write test (default is read); opens the children read-write.
    #[arg(short = 'w', long = "write")]
    pub(super) write: bool,
    /// Write this pattern byte instead of zero [default: 0]
    #[arg(long = "pattern", value_name = "PATTERN", allow_hyphen_values = true)]
    pub(super) pattern: Option<String>,
    /// Issue a flush after this number of requests (write tests only; the
    /// queue is drained first, as qemu-img does by default)
    #[arg(
        long = "flush-interval",
        value_name = "INTERVAL",
        allow_hyphen_values = true
    )]
    pub(super) flush_interval: Option<String>,
    /// Cache mode: `writeback` (default, page cache) or `none` (O_DIRECT for
    /// 4 KiB-aligned requests)
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub(super) cache: Option<String>,
    /// Accepted and ignored, as by qemu-img bench 10.
    #[arg(short = 'q', long = "quiet")]
    pub(super) quiet: bool,
    /// How many children must agree (vote-threshold) [default: a majority
    /// of the children, N/2+1]
    #[arg(long, value_name = "N")]
    pub(super) threshold: Option<usize>,
    /// Read pattern (read-pattern).
    #[arg(long = "read-pattern", value_enum, default_value_t = PatternArg::Quorum)]
    pub(super) read_pattern: PatternArg,
    /// Which driver carries the requests.
    #[arg(long, value_enum, default_value_t = DriverArg::Sync)]
    pub(super) driver: DriverArg,
    /// Early quorum: a read answers as soon as THRESHOLD children agree; the
    /// others are still compared, reported and rewritten afterwards.
    #[arg(long = "early-quorum")]
    pub(super) early_quorum: bool,
    /// Delay child SLOT (its 0-based position in the CHILD list) by
    /// DURATION before each of its reads, writes and flushes, then do the
    /// real I/O; DURATION is a number with a unit ns, us, ms or s (`2=1ms`,
    /// `0=100us`). Repeatable, once per child. Under --driver tokio, delays
    /// of 1 ms or more are tokio sleeps (millisecond timer), shorter ones
    /// sleep on the blocking pool.
    #[arg(
        long = "delay",
        value_name = "SLOT=DURATION",
        allow_hyphen_values = true
    )]
    pub(super) delay: Vec<String>,
    /// After the closing line, print per-request latency percentiles and
    /// the peak resident set size.
    #[arg(long = "stats")]
    pub(super) stats: bool,
}

pub(super) const INT_MAX: u64 = i32::MAX as u64;

/// qemu's `qemu_strtoul(s, NULL, 0, ..)`: decimal, `0x` hex or `0` octal.
pub(super) fn parse_ulong(s: &str) -> Option<u64> {
    let s = s.trim_start();
    let s = s.strip_prefix('+').unwrap_or(s);
    // Digits only after the prefix: the parsers below would take a second sign.
    let digits = |d: &str, radix: u32| !d.is_empty() && d.chars().all(|c| c.is_digit(radix));
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        digits(h, 16)
            .then(|| u64::from_str_radix(h, 16).ok())
            .flatten()
    } else if s.len() > 1 && s.starts_with('0') {
        digits(&s[1..], 8)
            .then(|| u64::from_str_radix(&s[1..], 8).ok())
            .flatten()
    } else {
        digits(s, 10).then(|| s.parse().ok()).flatten()
    }
}

/// A negative number: parsable, but out of range (qemu says "Must be
/// between"); anything else unparsable.
pub(super) fn negative(s: &str) -> bool {
    s.trim_start()
        .strip_prefix('-')
        .is_some_and(|r| !r.is_empty() && r.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// One option's value checked as qemu-img bench does, with its messages.
pub(super) fn value(
    arg: &Option<String>,
    default: u64,
    what: &str,
    min: u64,
    max: u64,
    size: bool,
) -> Result<u64, String> {
    let Some(s) = arg else { return Ok(default) };
    let parsed = if size {
        replicas::parse_size(s)
    } else {
        parse_ulong(s)
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!(
            "Invalid {what} specified. Must be between {min} and {max}."
        )),
        None if negative(s) => Err(format!(
            "Invalid {what} specified. Must be between {min} and {max}."
        )),
        None => Err(format!("Invalid {what} specified: '{s}'.")),
    }
}

pub(super) struct Opts {
    pub(super) count: u64,
    pub(super) depth: u64,
    pub(super) bufsize: u64,
    pub(super) step: u64,
    pub(super) offset: u64,
    pub(super) pattern: u8,
    pub(super) flush_interval: u64,
    pub(super) direct: bool,
    /// Parsed `--delay`s, slots not yet checked against the children.
    pub(super) delays: Vec<(usize, Duration, String)>,
}

pub(super) fn options(a: &BenchArgs) -> Result<Opts, String> {
    let count = value(&a.count, 75000, "request count", 1, INT_MAX, false)?;
    let depth = value(&a.depth, 64, "queue depth", 1, INT_MAX, false)?;
    let offset = value(&a.offset, 0, "offset", 0, i64::MAX as u64, true)?;
    let bufsize = value(&a.buffer_size, 4096, "buffer size", 1, INT_MAX, true)?;
    let step = value(&a.step_size, 0, "step size", 0, INT_MAX, true)?;
    let pattern = value(&a.pattern, 0, "pattern byte", 0, 255, false)? as u8;
    let flush_interval = value(&a.flush_interval, 0, "flush interval", 0, INT_MAX, false)?;
    let direct = match a.cache.as_deref() {
        None | Some("writeback") => false,
        Some("none") => true,
        Some(_) => return Err("Invalid cache mode".into()),
    };
    if !a.write && flush_interval != 0 {
        return Err("--flush-interval is only available in write tests".into());
    }
    if flush_interval != 0 && flush_interval < depth {
        return Err("Flush interval can't be smaller than depth".into());
    }
    if a.driver == DriverArg::Preads && direct {
        return Err("--driver preads supports only --cache writeback".into());
    }
    let mut delays: Vec<(usize, Duration, String)> = Vec::new();
    for d in &a.delay {
        let (slot, dur) = parse_delay(d).ok_or_else(|| {
            format!(
                "Invalid delay specified: '{d}'. Expected SLOT=DURATION with a unit ns, us, ms or s, e.g. 2=1ms."
            )
        })?;
        if delays.iter().any(|(s, _, _)| *s == slot) {
            return Err(format!(
                "Invalid delay specified: '{d}'. Child {slot} already has a delay."
            ));
        }
        delays.push((slot, dur, d.clone()));
    }
    Ok(Opts {
        count,
        depth,
        bufsize,
        step: if step == 0 { bufsize } else { step },
        offset,
        pattern,
        flush_interval,
        direct,
        delays,
    })
}

/// `SLOT=DURATION`: a child position and a delay (see [`parse_duration`]).
pub(super) fn parse_delay(s: &str) -> Option<(usize, Duration)> {
    let (slot, dur) = s.split_once('=')?;
    if slot.is_empty() || !slot.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((slot.parse().ok()?, parse_duration(dur)?))
}

/// A duration: a decimal number (a fraction allowed) and a unit `ns`, `us`,
/// `ms` or `s`, which is required.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let nanos_per: u64 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return None,
    };
    let digits = |d: &str| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit());
    match num.split_once('.') {
        None if digits(num) => num
            .parse::<u64>()
            .ok()?
            .checked_mul(nanos_per)
            .map(Duration::from_nanos),
        Some((int, frac)) if digits(int) && digits(frac) => {
            let v: f64 = num.parse().ok()?;
            let nanos = (v * nanos_per as f64).round();
            (nanos < u64::MAX as f64).then(|| Duration::from_nanos(nanos as u64))
        }
        _ => None,
    }
}

/// Each child's delay, by slot; refuses a slot with no child.
pub(super) fn slot_delays(o: &Opts, children: usize) -> Result<Vec<Duration>, String> {
    let mut out = vec![Duration::ZERO; children];
    for (slot, d, text) in &o.delays {
        match out.get_mut(*slot) {
            Some(x) => *x = *d,
            None => {
                return Err(format!(
                    "Invalid delay specified: '{text}'. There is no child {slot}: the children are 0 to {}.",
                    children - 1
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_qemu() {
        assert_eq!(parse_ulong("0x10"), Some(16));
        assert_eq!(parse_ulong("010"), Some(8));
        assert_eq!(parse_ulong("0"), Some(0));
        assert_eq!(parse_ulong("75000"), Some(75000));
        assert_eq!(parse_ulong("++5"), None);
        assert_eq!(parse_ulong("0x+5"), None);
        assert_eq!(parse_ulong("0+5"), None);
        assert_eq!(parse_ulong("3G"), None);
        assert!(negative("-1"));
        assert!(!negative("x"));
    }

    #[test]
    fn delays_read_slot_and_unit() {
        assert_eq!(parse_delay("2=1ms"), Some((2, Duration::from_millis(1))));
        assert_eq!(
            parse_delay("0=100us"),
            Some((0, Duration::from_micros(100)))
        );
        assert_eq!(
            parse_delay("1=1.5ms"),
            Some((1, Duration::from_micros(1500)))
        );
        assert_eq!(parse_delay("1=2s"), Some((1, Duration::from_secs(2))));
        assert_eq!(parse_delay("1=7ns"), Some((1, Duration::from_nanos(7))));
        for bad in [
            "2", "=1ms", "x=1ms", "-1=1ms", "1=1", "1=ms", "1=1m", "1=.5ms", "1=1.ms", "1=-1ms",
            "1=1 ms",
        ] {
            assert_eq!(parse_delay(bad), None, "{bad}");
        }
    }
}
