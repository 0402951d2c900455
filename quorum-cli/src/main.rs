//! `quorum`: the command line of the quorum workspace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod sim;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(a) => sim::sim(a),
        Command::Replay(a) => sim::replay(a),
    }
}
