//! The `netmux` command.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Share one network link among untrusting user-space network stacks.
#[derive(Debug, Parser)]
#[command(name = "netmux", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile pcap-filter expressions and run them over captures.
    Filter(cmd::filter::FilterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Filter(args) => cmd::filter::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netmux: {e:#}");
            ExitCode::FAILURE
        }
    }
}
