//! `quorum bench`: `qemu-img bench` over a quorum device, with its flags,
//! defaults, messages and output lines, so the two run side by side on the
//! same files.
//!
//! Depth D means D requests in flight: D threads issue requests on the one
//! shared [`Device`] (or D tasks on one [`AsyncDevice`] with `--driver
//! tokio`, or D threads doing plain positional I/O with `--driver preads`).
//! Offsets are handed out in issue order, starting at `-o` and advancing by
//! `-S`, wrapped as QEMU does (see [`next_offset`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use quorum_proto::{Config, Errno, ReadPattern};
use quorum_sync::{Child, Device};
use quorum_tokio::{AsyncChild, AsyncDevice, Blocking, ChildFuture, TokioFileChild};

use crate::replicas;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PatternArg {
    /// Read every child and vote.
    Quorum,
    /// Read children in order until one answers.
    Fifo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DriverArg {
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
    /// Which driver carries the requests.
    #[arg(long, value_enum, default_value_t = DriverArg::Sync)]
    driver: DriverArg,
    /// Early quorum: a read answers as soon as THRESHOLD children agree; the
    /// others are still compared, reported and rewritten afterwards.
    #[arg(long = "early-quorum")]
    early_quorum: bool,
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
    delay: Vec<String>,
    /// After the closing line, print per-request latency percentiles and
    /// the peak resident set size.
    #[arg(long = "stats")]
    stats: bool,
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
    /// Parsed `--delay`s, slots not yet checked against the children.
    delays: Vec<(usize, Duration, String)>,
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
fn parse_delay(s: &str) -> Option<(usize, Duration)> {
    let (slot, dur) = s.split_once('=')?;
    if slot.is_empty() || !slot.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((slot.parse().ok()?, parse_duration(dur)?))
}

/// A duration: a decimal number (a fraction allowed) and a unit `ns`, `us`,
/// `ms` or `s`, which is required.
fn parse_duration(s: &str) -> Option<Duration> {
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

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("quorum bench: {msg}");
    ExitCode::from(1)
}

/// Who issues what: shared by the depth threads (or tasks).
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

/// What a depth thread does next.
enum Take {
    /// Issue a request at this offset.
    Issue(u64),
    /// A flush is due: wait until it is done.
    Hold,
    /// Nothing left to issue.
    Done,
}

impl Sched {
    fn new(count: u64, offset: u64) -> Sched {
        Sched {
            unissued: count,
            in_flight: 0,
            offset,
            hold: false,
            final_flush: false,
        }
    }

    fn take(&mut self, j: &Job) -> Take {
        if self.unissued == 0 {
            return Take::Done;
        }
        if self.hold {
            return Take::Hold;
        }
        self.unissued -= 1;
        self.in_flight += 1;
        let offset = self.offset;
        self.offset = next_offset(self.offset, j.step, j.size, j.bufsize);
        Take::Issue(offset)
    }

    /// A request ended (`ok` or not). A failure stops everyone, as qemu-img
    /// exits at the first one. Every `fi` requests a flush is due: issuing
    /// holds, and the last request in flight to end does the flush (true).
    fn done(&mut self, ok: bool, fi: u64) -> bool {
        self.in_flight -= 1;
        if !ok {
            self.unissued = 0;
            return false;
        }
        if fi != 0 && self.unissued.is_multiple_of(fi) {
            if self.unissued == 0 {
                self.final_flush = true;
            } else {
                self.hold = true;
                return self.in_flight == 0;
            }
        }
        false
    }
}

/// The workload, as every depth thread or task sees it.
#[derive(Clone, Copy)]
struct Job {
    /// Device size.
    size: u64,
    bufsize: u64,
    step: u64,
    /// Flush interval (0: none).
    fi: u64,
    write: bool,
    pattern: u8,
    /// Record each request's latency.
    stats: bool,
}

/// What carries the requests, built before the opening line is printed.
enum Engine {
    Sync(Arc<Device>),
    Tokio(tokio::runtime::Runtime, Arc<AsyncDevice>),
    Preads(Arc<Plain>),
}

/// The children as plain files, for `--driver preads`.
struct Plain {
    files: Vec<File>,
    /// Each file's `--delay` (zero for none).
    delays: Vec<Duration>,
}

/// A `--delay`ed child for the blocking driver: sleeps, then does the I/O.
struct DelayChild {
    inner: Arc<dyn Child>,
    delay: Duration,
}

impl Child for DelayChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.write_zeroes(offset, len)
    }
    fn flush(&self) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.flush()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

/// A `--delay`ed child for the async driver: sleeps, then does the I/O.
struct AsyncDelay {
    inner: Arc<dyn AsyncChild>,
    delay: Duration,
}

impl AsyncDelay {
    /// tokio's timer counts whole milliseconds and rounds a sleep up to the
    /// next tick (a 1 ms sleep takes up to 2), which would make a `--delay`
    /// mean different things to the two drivers: the delay sleeps on the
    /// blocking pool instead, as precisely as the sync driver's.
    async fn pause(&self) {
        let d = self.delay;
        if !d.is_zero() {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
        }
    }
}

impl AsyncChild for AsyncDelay {
    fn read_at(&self, buf: Vec<u8>, offset: u64) -> ChildFuture<'_, (io::Result<()>, Vec<u8>)> {
        Box::pin(async move {
            self.pause().await;
            self.inner.read_at(buf, offset).await
        })
    }
    fn write_at(&self, data: Arc<[u8]>, offset: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.pause().await;
            self.inner.write_at(data, offset).await
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.pause().await;
            self.inner.write_zeroes(offset, len).await
        })
    }
    fn flush(&self) -> ChildFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.pause().await;
            self.inner.flush().await
        })
    }
    fn size(&self) -> ChildFuture<'_, io::Result<u64>> {
        self.inner.size()
    }
}

/// Each child's delay, by slot; refuses a slot with no child.
fn slot_delays(o: &Opts, children: usize) -> Result<Vec<Duration>, String> {
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

/// Opens the children for `driver` (after `replicas::open_children` has
/// checked them) and builds its device.
fn engine(
    driver: DriverArg,
    config: Config,
    specs: &[replicas::ChildSpec],
    kids: Vec<Arc<dyn Child>>,
    delays: &[Duration],
    write: bool,
    direct: bool,
) -> Result<Engine, String> {
    match driver {
        DriverArg::Sync => {
            let kids = kids
                .into_iter()
                .zip(delays)
                .map(|(k, &delay)| {
                    if delay.is_zero() {
                        k
                    } else {
                        Arc::new(DelayChild { inner: k, delay }) as Arc<dyn Child>
                    }
                })
                .collect();
            let dev = Device::new(config, kids).map_err(|e| e.to_string())?;
            Ok(Engine::Sync(Arc::new(dev)))
        }
        DriverArg::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the tokio runtime: {}", replicas::io_msg(&e)))?;
            let children = rt.block_on(async {
                let mut out: Vec<Arc<dyn AsyncChild>> = Vec::new();
                for ((s, k), &delay) in specs.iter().zip(kids).zip(delays) {
                    let is_nbd = s.path.to_str().is_some_and(quorum_nbd::NbdAddr::is_nbd);
                    let child: Arc<dyn AsyncChild> = if is_nbd {
                        // An NBD export is a blocking child: on the blocking pool.
                        Arc::new(Blocking::new(k))
                    } else {
                        drop(k);
                        let f = TokioFileChild::open(&s.path, write, direct)
                            .await
                            .map_err(|e| s.error(&e))?;
                        Arc::new(f)
                    };
                    out.push(if delay.is_zero() {
                        child
                    } else {
                        Arc::new(AsyncDelay {
                            inner: child,
                            delay,
                        })
                    });
                }
                Ok::<_, String>(out)
            })?;
            let dev = AsyncDevice::new(config, children).map_err(|e| e.to_string())?;
            Ok(Engine::Tokio(rt, Arc::new(dev)))
        }
        DriverArg::Preads => {
            drop(kids);
            let mut files = Vec::new();
            for s in specs {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(&s.path)
                    .map_err(|e| s.error(&e))?;
                files.push(f);
            }
            Ok(Engine::Preads(Arc::new(Plain {
                files,
                delays: delays.to_vec(),
            })))
        }
    }
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
    let delays = match slot_delays(&o, specs.len()) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let threshold = a.threshold.unwrap_or(replicas::majority(specs.len()));
    let pattern = match a.read_pattern {
        PatternArg::Quorum => ReadPattern::Quorum,
        PatternArg::Fifo => ReadPattern::Fifo,
    };
    let config = Config::new(specs.len(), threshold)
        .with_read_pattern(pattern)
        .with_early_quorum(a.early_quorum);
    if let Err(e) = config.validate(16) {
        return fail(e);
    }
    if a.driver == DriverArg::Preads {
        if let Some(s) = specs
            .iter()
            .find(|s| s.path.to_str().is_some_and(quorum_nbd::NbdAddr::is_nbd))
        {
            return fail(format!(
                "--driver preads takes files only, not {} ({})",
                s.name,
                s.path.display()
            ));
        }
    }
    let kids = match replicas::open_children(&specs, a.write, o.direct) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let size = match replicas::common_size(&specs, &kids) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let engine = match engine(a.driver, config, &specs, kids, &delays, a.write, o.direct) {
        Ok(e) => e,
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

    // The drivers' cores hold 64 requests in flight; more threads (or
    // tasks) would only wait for a slot.
    let threads = o.depth.min(o.count).min(MAX_IN_FLIGHT) as usize;
    let job = Job {
        size,
        bufsize: o.bufsize,
        step: o.step,
        fi: o.flush_interval,
        write: a.write,
        pattern: o.pattern,
        stats: a.stats,
    };
    let start = Instant::now();
    let (results, final_flush) = match &engine {
        Engine::Sync(dev) => run_threads(threads, o.count, o.offset, job, |j| {
            let dev = dev.clone();
            let mut buf = vec![j.pattern; j.bufsize as usize];
            // Like qemu-img bench's one buffer: written from, never copied.
            let data: Arc<[u8]> = Arc::from(&buf[..]);
            let flusher = dev.clone();
            (
                move |offset: u64| {
                    if j.write {
                        dev.write_shared(offset, data.clone())
                            .map_err(|e| e.to_string())
                    } else {
                        dev.read(offset, &mut buf).map_err(|e| match e {
                            quorum_sync::ReadError::Io(e) => e.to_string(),
                            other => other.to_string(),
                        })
                    }
                },
                move || flusher.flush().map_err(|e| e.to_string()),
            )
        }),
        Engine::Preads(plain) => run_threads(threads, o.count, o.offset, job, |j| {
            let p = plain.clone();
            let mut bufs = vec![vec![j.pattern; j.bufsize as usize]; p.files.len()];
            let flusher = plain.clone();
            (
                move |offset: u64| plain_io(&p, &mut bufs, offset, j.write),
                move || plain_flush(&flusher),
            )
        }),
        Engine::Tokio(rt, dev) => run_tasks(rt, dev, threads, o.count, o.offset, job),
    };
    let elapsed = start.elapsed();
    let mut latencies = Vec::new();
    let mut failed = None;
    for r in results {
        match r {
            Ok(l) => latencies.extend(l),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        // qemu-img prints this and exits 1 at the first failed request.
        return fail(format!("Failed request: {e}"));
    }
    println!("Run completed in {:.3} seconds.", elapsed.as_secs_f64());
    if final_flush {
        let r = match &engine {
            Engine::Sync(dev) => dev.flush().map_err(|e| e.to_string()),
            Engine::Tokio(rt, dev) => rt.block_on(dev.flush()).map_err(|e| e.to_string()),
            Engine::Preads(p) => plain_flush(p),
        };
        if let Err(e) = r {
            return fail(format!("Failed request: {e}"));
        }
    }
    if a.stats {
        print_stats(latencies);
    }
    ExitCode::SUCCESS
}

/// One thread per depth slot; `make` gives each its request and flush
/// functions. Returns each thread's latencies (or its failure) and whether
/// a final flush is due.
fn run_threads<F, R, L>(
    threads: usize,
    count: u64,
    offset: u64,
    job: Job,
    mut make: F,
) -> (Vec<Result<Vec<u64>, String>>, bool)
where
    F: FnMut(Job) -> (R, L),
    R: FnMut(u64) -> Result<(), String> + Send + 'static,
    L: Fn() -> Result<(), String> + Send + 'static,
{
    let sched = Arc::new((Mutex::new(Sched::new(count, offset)), Condvar::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let sched = sched.clone();
            let (io, flush) = make(job);
            std::thread::spawn(move || worker(&sched, job, io, flush))
        })
        .collect();
    let results = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a worker thread panicked".to_string()))
        })
        .collect();
    let final_flush = sched.0.lock().map(|s| s.final_flush).unwrap_or(false);
    (results, final_flush)
}

/// One of the depth threads: issue, wait, repeat; drain and flush every
/// `fi` requests as qemu-img's `bench_cb` does. Returns the latency of each
/// request in nanoseconds (with `--stats`).
fn worker(
    sched: &(Mutex<Sched>, Condvar),
    j: Job,
    mut io: impl FnMut(u64) -> Result<(), String>,
    flush: impl Fn() -> Result<(), String>,
) -> Result<Vec<u64>, String> {
    let (lock, cv) = sched;
    let relock = || lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = Vec::new();
    let mut s = relock();
    loop {
        let offset = match s.take(&j) {
            Take::Done => return Ok(lat),
            Take::Hold => {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            Take::Issue(offset) => offset,
        };
        drop(s);
        let t = j.stats.then(Instant::now);
        let r = io(offset);
        if let Some(t) = t {
            lat.push(t.elapsed().as_nanos() as u64);
        }
        s = relock();
        let must_flush = s.done(r.is_ok(), j.fi);
        if let Err(e) = r {
            cv.notify_all();
            return Err(e);
        }
        if must_flush {
            drop(s);
            let r = flush();
            s = relock();
            s.hold = false;
            cv.notify_all();
            if let Err(e) = r {
                s.unissued = 0;
                return Err(e);
            }
        }
    }
}

/// `--driver tokio`: one task per depth slot on the runtime, the same
/// schedule as the threads'.
fn run_tasks(
    rt: &tokio::runtime::Runtime,
    dev: &Arc<AsyncDevice>,
    tasks: usize,
    count: u64,
    offset: u64,
    job: Job,
) -> (Vec<Result<Vec<u64>, String>>, bool) {
    let sched = Arc::new((
        Mutex::new(Sched::new(count, offset)),
        tokio::sync::Notify::new(),
    ));
    let data: Arc<[u8]> = vec![job.pattern; job.bufsize as usize].into();
    let handles: Vec<_> = (0..tasks)
        .map(|_| rt.spawn(task(dev.clone(), sched.clone(), job, data.clone())))
        .collect();
    let results = rt.block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(
                h.await
                    .unwrap_or_else(|_| Err("a worker task panicked".to_string())),
            );
        }
        out
    });
    let final_flush = sched.0.lock().map(|s| s.final_flush).unwrap_or(false);
    (results, final_flush)
}

/// One of the depth tasks: [`worker`]'s loop, awaiting instead of blocking.
async fn task(
    dev: Arc<AsyncDevice>,
    sched: Arc<(Mutex<Sched>, tokio::sync::Notify)>,
    j: Job,
    data: Arc<[u8]>,
) -> Result<Vec<u64>, String> {
    let (lock, notify) = &*sched;
    let relock = || lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = Vec::new();
    loop {
        let next = {
            let mut s = relock();
            match s.take(&j) {
                Take::Done => return Ok(lat),
                // Registered under the lock: the flusher's notify_waiters
                // (also under the lock) cannot be missed.
                Take::Hold => Err(notify.notified()),
                Take::Issue(offset) => Ok(offset),
            }
        };
        let offset = match next {
            Ok(offset) => offset,
            Err(wait) => {
                wait.await;
                continue;
            }
        };
        let t = j.stats.then(Instant::now);
        let r = if j.write {
            dev.write(offset, data.clone())
                .await
                .map_err(|e| e.to_string())
        } else {
            dev.read(offset, j.bufsize as usize)
                .await
                .map(drop)
                .map_err(|e| match e {
                    quorum_tokio::ReadError::Io(e) => e.to_string(),
                    other => other.to_string(),
                })
        };
        if let Some(t) = t {
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let must_flush = {
            let mut s = relock();
            let must = s.done(r.is_ok(), j.fi);
            if r.is_err() {
                notify.notify_waiters();
            }
            must
        };
        r?;
        if must_flush {
            let r = dev.flush().await.map_err(|e| e.to_string());
            {
                let mut s = relock();
                s.hold = false;
                if r.is_err() {
                    s.unissued = 0;
                }
                notify.notify_waiters();
            }
            r?;
        }
    }
}

/// One `--driver preads` request: the same range of every child file, one
/// after another (each after its `--delay`).
fn plain_io(p: &Plain, bufs: &mut [Vec<u8>], offset: u64, write: bool) -> Result<(), String> {
    for ((f, buf), &delay) in p.files.iter().zip(bufs.iter_mut()).zip(&p.delays) {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let r = if write {
            f.write_all_at(buf, offset)
        } else {
            f.read_exact_at(buf, offset)
        };
        r.map_err(|e| match e.kind() {
            // A read past the end, as the quorum drivers word it.
            io::ErrorKind::UnexpectedEof => Errno::EIO.to_string(),
            _ => replicas::io_msg(&e),
        })?;
    }
    Ok(())
}

/// A `--driver preads` flush: `fdatasync` every file, as a file child does.
fn plain_flush(p: &Plain) -> Result<(), String> {
    for (f, &delay) in p.files.iter().zip(&p.delays) {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        f.sync_data().map_err(|e| replicas::io_msg(&e))?;
    }
    Ok(())
}

/// `--stats`: latency percentiles (nearest rank) and the peak RSS.
fn print_stats(mut lat: Vec<u64>) {
    lat.sort_unstable();
    let us = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = (p / 100.0 * lat.len() as f64).ceil() as usize;
        lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0
    };
    println!(
        "Latency: p50 {:.1}us, p90 {:.1}us, p99 {:.1}us, max {:.1}us",
        us(50.0),
        us(90.0),
        us(99.0),
        us(100.0)
    );
    match peak_rss_kib() {
        Some(k) => println!("Peak RSS: {k} KiB"),
        None => println!("Peak RSS: unknown"),
    }
}

/// VmHWM from /proc/self/status, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
