//! `quorum`: the command line of the quorum workspace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod io;
mod replicas;
mod scrub;
mod serve;
mod sim;
mod syncmap;

/// N replica disks that behave as one block device you can trust.
#[derive(Parser, Debug)]
#[command(name = "quorum", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the real quorum core against simulated faulty disks.
    Sim(sim::SimArgs),
    /// Replay a trace recorded with `quorum sim --record`, step by step.
    Replay(sim::ReplayArgs),
    /// Vote over the whole device region by region; report (and with
    /// --repair rewrite) the children that were outvoted.
    Scrub(scrub::ScrubArgs),
    /// qemu-img bench over a quorum device: same flags, same output lines.
    Bench(bench::BenchArgs),
    /// qemu-io's read/write/flush/length commands and messages over a quorum
    /// of raw images, with error injection and QMP events.
    Io(io::IoArgs),
    /// The quorum device as an NBD export, for any number of clients.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(a) => sim::sim(a),
        Command::Replay(a) => sim::replay(a),
        Command::Scrub(a) => scrub::scrub(a),
        Command::Bench(a) => bench::bench(a),
        Command::Io(a) => io::io(a),
        Command::Serve(a) => serve::serve(a),
    }
}
