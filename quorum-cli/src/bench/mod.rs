//! `quorum bench`: `qemu-img bench` over a quorum device, with its flags,
//! defaults, messages and output lines, so the two run side by side on the
//! same files.
//!
//! Depth D means D requests in flight: D threads issue requests on the one
//! shared [`quorum_sync::Device`] (or D tasks on one [`quorum_tokio::AsyncDevice`] with `--driver
//! tokio`, or D threads doing plain positional I/O with `--driver preads`).
//! Offsets are handed out in issue order, starting at `-o` and advancing by
//! `-S`, wrapped as QEMU does (see [`run::next_offset`]).
//!
//! One file per role: [`args`] (options and their checks), [`engine`](mod@engine) (the
//! driver that carries the requests), [`run`] (the schedule and the depth
//! threads or tasks), [`stats`] (`--stats`).

mod args;
mod engine;
mod run;
mod stats;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use quorum_proto::{Config, ReadPattern};

pub(crate) use args::BenchArgs;
use args::{DriverArg, PatternArg, options, slot_delays};
use engine::{Engine, engine, plain_flush, plain_io};
use run::{Job, run_tasks, run_threads};
use stats::print_stats;

use crate::replicas;

/// Requests the drivers keep in flight at most: more threads (or tasks)
/// would only wait for a slot.
const MAX_IN_FLIGHT: u64 = 64;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("quorum bench: {msg}");
    ExitCode::from(1)
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
