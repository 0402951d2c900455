//! `quorum bench`: `qemu-img bench` over a quorum device, with its flags,
//! defaults, messages and output lines, so the two run side by side on the
//! same files.
//!
//! Depth D means D requests in flight: D threads issue requests on the one
//! shared [`Device`]. Offsets are handed out in issue order, starting at
//! `-o` and advancing by `-S`, wrapped as QEMU does (see [`next_offset`]).

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use clap::{Args, ValueEnum};
use quorum_proto::{Config, ReadPattern};
use quorum_sync::Device;

use crate::replicas;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PatternArg {
    /// Read every child and vote.
    Quorum,
    /// Read children in order until one answers.
    Fifo,
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
2 bad usage (clap).")]
pub(crate) struct BenchArgs {
    /// Children: raw image files or block devices, each `PATH` or
    /// `NAME=PATH`.
    #[arg(required = true, value_name = "CHILD")]
    children: Vec<String>,
    /// Number of I/O requests to perform [default: 75000]
    #[arg(
        short = 'c',
        long = "count",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    count: Option<String>,
    /// Number of requests to perform in parallel (one thread each; the
    /// driver keeps at most 64 in flight) [default: 64]
    #[arg(
        short = 'd',
        long = "depth",
        value_name = "DEPTH",
        allow_hyphen_values = true
    )]
    depth: Option<String>,
    /// Size of each I/O request [default: 4096]
    #[arg(
        short = 's',
        long = "buffer-size",
        value_name = "BUFFER_SIZE",
        allow_hyphen_values = true
    )]
    buffer_size: Option<String>,
    /// Each next request's offset increment [default: 0, meaning the buffer
    /// size]
    #[arg(
        short = 'S',
        long = "step-size",
        value_name = "STEP_SIZE",
        allow_hyphen_values = true
    )]
    step_size: Option<String>,
    /// Start the first request at this offset [default: 0]
    #[arg(
        short = 'o',
        long = "offset",
        value_name = "OFFSET",
        allow_hyphen_values = true
    )]
    offset: Option<String>,
    /// Perform a write test (default is read); opens the children read-write.
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// Write this pattern byte instead of zero [default: 0]
    #[arg(long = "pattern", value_name = "PATTERN", allow_hyphen_values = true)]
    pattern: Option<String>,
    /// Issue a flush after this number of requests (write tests only; the
    /// queue is drained first, as qemu-img does by default)
    #[arg(
        long = "flush-interval",
        value_name = "INTERVAL",
        allow_hyphen_values = true
    )]
    flush_interval: Option<String>,
    /// Cache mode: `writeback` (default, page cache) or `none` (O_DIRECT for
    /// 4 KiB-aligned requests)
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    cache: Option<String>,
    /// Accepted and ignored, as by qemu-img bench 10.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// How many children must agree (vote-threshold) [default: a majority
    /// of the children, N/2+1]
    #[arg(long, value_name = "N")]
    threshold: Option<usize>,
    /// Read pattern (read-pattern).
    #[arg(long = "read-pattern", value_enum, default_value_t = PatternArg::Quorum)]
    read_pattern: PatternArg,
}

const INT_MAX: u64 = i32::MAX as u64;

/// Requests the blocking driver keeps in flight at most.
const MAX_IN_FLIGHT: u64 = 64;

/// qemu's `qemu_strtoul(s, NULL, 0, ..)`: decimal, `0x` hex or `0` octal.
fn parse_ulong(s: &str) -> Option<u64> {
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
fn negative(s: &str) -> bool {
    s.trim_start()
        .strip_prefix('-')
        .is_some_and(|r| !r.is_empty() && r.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// One option's value checked as qemu-img bench does, with its messages.
fn value(
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

/// The next request's offset: QEMU's `bench_cb` with the fix of QEMU 10.1
/// (commit ff2ab634), which wraps within `[0, size - bufsize)` so that no
/// request reaches past the end. (QEMU 10.0 wraps modulo the size and fails
/// a request that crosses the end with EIO.)
pub(crate) fn next_offset(cur: u64, step: u64, size: u64, bufsize: u64) -> u64 {
    let n = cur.saturating_add(step);
    if size <= bufsize {
        0
    } else {
        n % (size - bufsize)
    }
}

struct Opts {
    count: u64,
    depth: u64,
    bufsize: u64,
    step: u64,
    offset: u64,
    pattern: u8,
    flush_interval: u64,
    direct: bool,
}

fn options(a: &BenchArgs) -> Result<Opts, String> {
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
    Ok(Opts {
        count,
        depth,
        bufsize,
        step: if step == 0 { bufsize } else { step },
        offset,
        pattern,
        flush_interval,
        direct,
    })
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("quorum bench: {msg}");
    ExitCode::from(1)
}

/// Who issues what: shared by the depth threads.
struct Sched {
    /// Requests not yet issued.
    unissued: u64,
    in_flight: u64,
    /// The next request's offset.
    offset: u64,
    /// A flush is due: issue nothing until it is done (drain, then flush).
    hold: bool,
    /// A flush is due after the last request (done after the clock stops,
    /// as qemu-img's main loop stops counting when the last request is done).
    final_flush: bool,
}

/// Runs `quorum bench`.
pub(crate) fn bench(a: BenchArgs) -> ExitCode {
    let _ = a.quiet;
    let o = match options(&a) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let specs = match replicas::parse_children(&a.children) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let threshold = a.threshold.unwrap_or(replicas::majority(specs.len()));
    let pattern = match a.read_pattern {
        PatternArg::Quorum => ReadPattern::Quorum,
        PatternArg::Fifo => ReadPattern::Fifo,
    };
    let config = Config::new(specs.len(), threshold).with_read_pattern(pattern);
    if let Err(e) = config.validate(16) {
        return fail(e);
    }
    let kids = match replicas::open_children(&specs, a.write, o.direct) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let size = match replicas::common_size(&specs, &kids) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let dev = match Device::new(config, kids) {
        Ok(d) => Arc::new(d),
        Err(e) => return fail(e),
    };

    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        o.count,
        if a.write { "write" } else { "read" },
        o.bufsize,
        o.depth,
        o.offset,
        o.step
    );
    if o.flush_interval != 0 {
        println!("Sending flush every {} requests", o.flush_interval);
    }

    let sched = Arc::new((
        Mutex::new(Sched {
            unissued: o.count,
            in_flight: 0,
            offset: o.offset,
            hold: false,
            final_flush: false,
        }),
        Condvar::new(),
    ));
    // The blocking driver's core holds 64 requests in flight; more threads
    // would only wait for a slot.
    let threads = o.depth.min(o.count).min(MAX_IN_FLIGHT) as usize;
    let (bufsize, step, fi, write, pat) = (o.bufsize, o.step, o.flush_interval, a.write, o.pattern);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let dev = dev.clone();
            let sched = sched.clone();
            std::thread::spawn(move || worker(&dev, &sched, size, bufsize, step, fi, write, pat))
        })
        .collect();
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some("a worker thread panicked".to_string())),
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = failed {
        // qemu-img prints this and exits 1 at the first failed request.
        return fail(format!("Failed request: {e}"));
    }
    println!("Run completed in {:.3} seconds.", elapsed.as_secs_f64());
    let final_flush = sched.0.lock().map(|s| s.final_flush).unwrap_or(false);
    if final_flush {
        if let Err(e) = dev.flush() {
            return fail(format!("Failed request: {e}"));
        }
    }
    ExitCode::SUCCESS
}

/// One of the depth threads: issue, wait, repeat; drain and flush every
/// `fi` requests as qemu-img's `bench_cb` does.
#[allow(clippy::too_many_arguments)]
fn worker(
    dev: &Device,
    sched: &(Mutex<Sched>, Condvar),
    size: u64,
    bufsize: u64,
    step: u64,
    fi: u64,
    write: bool,
    pattern: u8,
) -> Result<(), String> {
    let (lock, cv) = sched;
    let relock = || lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut buf = vec![pattern; bufsize as usize];
    let mut s = relock();
    loop {
        if s.unissued == 0 {
            return Ok(());
        }
        if s.hold {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        s.unissued -= 1;
        s.in_flight += 1;
        let offset = s.offset;
        s.offset = next_offset(s.offset, step, size, bufsize);
        drop(s);
        let r = if write {
            dev.write(offset, &buf).map_err(|e| e.to_string())
        } else {
            dev.read(offset, &mut buf).map_err(|e| match e {
                quorum_sync::ReadError::Io(e) => e.to_string(),
                other => other.to_string(),
            })
        };
        s = relock();
        s.in_flight -= 1;
        if let Err(e) = r {
            // Stop everyone: qemu-img exits at the first failure.
            s.unissued = 0;
            cv.notify_all();
            return Err(e);
        }
        if fi != 0 && s.unissued % fi == 0 {
            if s.unissued == 0 {
                s.final_flush = true;
            } else {
                s.hold = true;
                if s.in_flight == 0 {
                    drop(s);
                    let r = dev.flush();
                    s = relock();
                    s.hold = false;
                    cv.notify_all();
                    if let Err(e) = r {
                        s.unissued = 0;
                        return Err(e.to_string());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_wrap_inside_the_device() {
        assert_eq!(next_offset(0, 4096, 16384, 4096), 4096);
        assert_eq!(next_offset(8192, 4096, 16384, 4096), 0);
        assert_eq!(next_offset(0, 14336, 16384, 4096), 2048);
        assert_eq!(next_offset(0, 4096, 4096, 4096), 0);
        assert_eq!(next_offset(0, 4096, 0, 4096), 0);
    }

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
}
