//! `quorum sim` and `quorum replay`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use quorum_proto::ReadPattern;
use quorum_sim::{Faults, Mode, Sim, SimConfig, SimError};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// Few enough faulty children: reads must return acknowledged data.
    Safety,
    /// Too many faulty children: failures must be the right ones.
    OverThreshold,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FaultsArg {
    /// Every fault kind at its default rate.
    All,
    /// Each kind on or off, with its own rate, drawn from the seed.
    Swarm,
    /// No faults.
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PatternArg {
    Quorum,
    Fifo,
}

/// Options of `quorum sim`.
#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// The seed: everything in a run follows from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Requests to run.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Children (1 to 16).
    #[arg(long, default_value_t = 3)]
    children: usize,
    /// Vote threshold (1 to the number of children).
    #[arg(long, default_value_t = 2)]
    threshold: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Device size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    size: u64,
    /// Every request's length in bytes (a multiple of 512); 0 draws them.
    #[arg(long, default_value_t = 0)]
    len: u64,
    /// Read pattern.
    #[arg(long, value_enum, default_value_t = PatternArg::Quorum)]
    read_pattern: PatternArg,
    /// Run the workload without rewrite-corrupted (the liveness phase always rewrites).
    #[arg(long)]
    no_rewrite: bool,
    /// Early quorum: answer a read as soon as `threshold` children agree,
    /// settle its stragglers afterwards (safety runs keep at most
    /// threshold - 1 children faulty). A sweep also turns it on for every
    /// odd seed.
    #[arg(long)]
    early_quorum: bool,
    /// Never cancel requests (by default requests in flight are cancelled at
    /// random and each cancellation is checked, SPEC R-CANCEL).
    #[arg(long)]
    no_cancel: bool,
    /// Sync tracking (SPEC R-SYNC) with chunks of this many bytes (a power
    /// of two, 64 KiB to 64 MiB; 0: none): the map and its file, durable
    /// Unsettle marks, a background resync, children away and back. A sweep
    /// also turns it on for half its seeds.
    #[arg(long, value_name = "CHUNK", default_value_t = 0)]
    sync: u64,
    /// Crashes and restarts (with sync tracking: 64 KiB chunks unless
    /// --sync says otherwise). A sweep with --crash runs only crash seeds.
    #[arg(long)]
    crash: bool,
    /// Invariant family.
    #[arg(long, value_enum, default_value_t = ModeArg::Safety)]
    mode: ModeArg,
    /// Which faults to inject.
    #[arg(long, value_enum, default_value_t = FaultsArg::All)]
    faults: FaultsArg,
    /// Write the run's trace to this file (replay it with `quorum replay`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Run this many seeds from --seed on, each in safety and over-threshold
    /// mode with swarm faults (early quorum on for odd seeds, or all with
    /// --early-quorum), and print one line (for CI).
    #[arg(long, value_name = "N", conflicts_with = "record")]
    sweep: Option<u64>,
}

impl SimArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            seed: self.seed,
            children: self.children,
            threshold: self.threshold,
            ops: self.ops,
            size: self.size,
            depth: self.depth,
            pattern: match self.read_pattern {
                PatternArg::Quorum => ReadPattern::Quorum,
                PatternArg::Fifo => ReadPattern::Fifo,
            },
            rewrite: !self.no_rewrite,
            mode: match self.mode {
                ModeArg::Safety => Mode::Safety,
                ModeArg::OverThreshold => Mode::OverThreshold,
            },
            faults: match self.faults {
                FaultsArg::All => Faults::All,
                FaultsArg::Swarm => Faults::Swarm,
                FaultsArg::None => Faults::None,
            },
            len: self.len,
            early: self.early_quorum,
            cancel: !self.no_cancel,
            sync: match self.sync {
                0 if self.crash => quorum_sim::SWEEP_CHUNK,
                s => s,
            },
            crash: self.crash,
        }
    }
}

/// The command line that runs exactly `cfg` again.
fn replay_command(cfg: &SimConfig) -> String {
    format!(
        "quorum sim --seed {} --ops {} --children {} --threshold {} --depth {} --size {} --len {} --read-pattern {} {}{}{}{}{}--mode {} --faults {}",
        cfg.seed,
        cfg.ops,
        cfg.children,
        cfg.threshold,
        cfg.depth,
        cfg.size,
        cfg.len,
        cfg.pattern,
        if cfg.rewrite { "" } else { "--no-rewrite " },
        if cfg.early { "--early-quorum " } else { "" },
        if cfg.cancel { "" } else { "--no-cancel " },
        if cfg.sync != 0 {
            format!("--sync {} ", cfg.sync)
        } else {
            String::new()
        },
        if cfg.crash { "--crash " } else { "" },
        match cfg.mode {
            Mode::Safety => "safety",
            Mode::OverThreshold => "over-threshold",
        },
        match cfg.faults {
            Faults::All => "all",
            Faults::Swarm => "swarm",
            Faults::None => "none",
        }
    )
}

fn fail(cfg: &SimConfig, e: &SimError) -> ExitCode {
    eprintln!("quorum sim: {e}");
    eprintln!("replay with: {}", replay_command(cfg));
    ExitCode::FAILURE
}

/// `quorum sim`.
pub(crate) fn sim(args: SimArgs) -> ExitCode {
    let cfg = args.config();
    if let Err(e) = cfg.validate() {
        eprintln!("quorum sim: {e}");
        return ExitCode::from(2);
    }
    if let Some(n) = args.sweep {
        return sweep(cfg, n);
    }
    let mut sim = match Sim::new(cfg, args.record.is_some()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quorum sim: {e}");
            return ExitCode::from(2);
        }
    };
    let bar = ProgressBar::new(cfg.ops);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests {per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    sim.on_progress(move |done| b.set_position(done));
    let result = sim.run();
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            println!("{report}");
            if let (Some(path), Some(trace)) = (&args.record, &report.trace) {
                if let Err(e) = std::fs::write(path, trace) {
                    eprintln!("quorum sim: cannot write trace {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                println!(
                    "trace written to {} ({} steps)",
                    path.display(),
                    report.steps
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&cfg, &e),
    }
}

fn sweep(base: SimConfig, n: u64) -> ExitCode {
    let bar = ProgressBar::new(n);
    let (mut runs, mut ios, mut checked, mut faults) = (0u64, 0u64, 0u64, 0u64);
    let (mut early, mut cancelled, mut restarts) = (0u64, 0u64, 0u64);
    let (mut sync_runs, mut crash_runs) = (0u64, 0u64);
    for i in 0..n {
        let seed = base.seed.wrapping_add(i);
        for mode in [Mode::Safety, Mode::OverThreshold] {
            let cfg = base.sweep(seed, mode);
            let result = Sim::new(cfg, false).map_err(|e| SimError::Invariant {
                seed,
                step: 0,
                message: e,
            });
            match result.and_then(Sim::run) {
                Ok(r) => {
                    runs += 1;
                    ios += r.stats.child_ios;
                    checked += r.stats.invariants;
                    faults += r.stats.injected.total();
                    early += r.stats.early_answers;
                    cancelled += r.stats.cancelled;
                    restarts += r.stats.sync.restarts;
                    sync_runs += u64::from(cfg.sync != 0);
                    crash_runs += u64::from(cfg.crash);
                }
                Err(e) => {
                    bar.finish_and_clear();
                    return fail(&cfg, &e);
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{n} seeds, {runs} runs ({sync_runs} with sync tracking, {crash_runs} with crashes): {faults} faults injected, {ios} child I/Os, {checked} requests checked, {early} early answers, {cancelled} cancelled, {restarts} restarts checked, no invariant violated"
    );
    ExitCode::SUCCESS
}

/// Options of `quorum replay`.
#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    /// The trace file.
    file: PathBuf,
}

/// `quorum replay FILE`.
pub(crate) fn replay(args: ReplayArgs) -> ExitCode {
    let text = match std::fs::read(&args.file) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                eprintln!(
                    "quorum replay: {}: not a quorum-sim trace (not UTF-8 text)",
                    args.file.display()
                );
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("quorum replay: cannot read {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let sim = match Sim::replay(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quorum replay: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let cfg = *sim.config();
    match sim.run() {
        Ok(r) => {
            println!("{r}");
            println!(
                "replayed {} steps of {}: identical",
                r.steps,
                args.file.display()
            );
            ExitCode::SUCCESS
        }
        Err(SimError::Trace(e)) => {
            eprintln!("quorum replay: {}: {e}", args.file.display());
            ExitCode::FAILURE
        }
        Err(e) => fail(&cfg, &e),
    }
}
