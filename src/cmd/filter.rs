//! `netmux filter`: pcap-filter commands.
//!
//! Minimal registration made on the classifier branch so `netmux filter classify` runs; the
//! compiler branch owns this file (with `compile` and `match`): when merging, keep its version
//! and add the `Classify` variant and its dispatch line below to it.

use std::process::ExitCode;

use clap::Subcommand;

use super::classify::ClassifyArgs;
use super::Run;

/// `netmux filter ...`
#[derive(Subcommand)]
pub enum FilterCommand {
    /// Print, for every frame of each capture, the rules of RULES.txt that accept it, through
    /// the merged classifier (`--linear`: by running every rule).
    Classify(ClassifyArgs),
}

impl Run for FilterCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            FilterCommand::Classify(a) => a.run(),
        }
    }
}
