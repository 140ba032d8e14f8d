//! The command line: argument parsing, dispatch to one module per command group, and the exit
//! status convention every command follows.
//!
//! To add a command `foo`: write `src/cmd/foo.rs` with a clap type that implements [`Run`], add
//! `mod foo;` below, and one entry to [`command_groups!`]: a group of subcommands (a clap
//! `Subcommand` type) is marked `#[command(subcommand)]`; a single command with arguments (a
//! clap `Args` type) is not.
//!
//! # Exit status
//!
//! * 0: success (for `vm verify`: the program verifies).
//! * 1: the input was examined and refused: a program that does not verify or assemble, a
//!   capture that cannot be read. The reason is printed.
//! * 2: the command could not do its work: bad usage, a missing or unreadable file, a failed
//!   write.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod capture;
mod classify;
mod defrag;
mod demo;
mod driver;
mod example;
mod filter;
mod firewall;
mod instance;
mod ls;
mod overlay;
mod props;
mod stat;
mod up;
mod vm;

/// What a command group does when it is chosen.
pub trait Run {
    /// Runs the command; `Err` is reported by [`main`] with the exit status it implies.
    fn run(self) -> anyhow::Result<ExitCode>;
}

/// An input was examined and refused (exit status 1); the message says why.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Generates the top-level [`Command`] enum and its dispatch from one list, so adding a group
/// is one line here.
macro_rules! command_groups {
    ($($(#[$attr:meta])* $variant:ident($ty:ty),)*) => {
        /// The command groups.
        #[derive(Subcommand)]
        enum Command {
            $($(#[$attr])* $variant($ty),)*
        }

        impl Run for Command {
            fn run(self) -> anyhow::Result<ExitCode> {
                match self {
                    $(Command::$variant(c) => c.run(),)*
                }
            }
        }
    };
}

command_groups! {
    /// Assemble, disassemble, verify and run filter VM programs.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Reassemble the IP fragments of a capture as the driver would.
    Defrag(defrag::Defrag),
    /// Compile pcap-filter expressions, run them over captures, classify frames with them.
    #[command(subcommand)]
    Filter(filter::FilterCommand),
    /// Run netmux end to end on a virtual cable with a built-in peer host (no privileges).
    Demo(demo::Demo),
    /// Run the driver and netd on a link in the foreground until Ctrl-C.
    Up(up::Up),
    /// Example netd clients: a UDP echo server and an HTTP server, on smoltcp.
    #[command(subcommand)]
    Example(example::ExampleCommand),
    /// The driver (what `netmux up` runs as its child process).
    Driver(driver::Driver),
    /// List netd's sessions: pid, uid, instance, ports, filters, queue and counters.
    Ls(ls::Ls),
    /// Network stack instances: many independent hosts on one link.
    #[command(subcommand)]
    Instance(instance::InstanceCommand),
    /// Capture what a client receives and transmits, or the whole link, as pcap.
    Capture(capture::Capture),
    /// The admin firewall: rules the driver applies to every client's frames.
    Firewall(firewall::Firewall),
    /// Per-client traffic every INTERVAL seconds, as vndstat: B/s, frames/s, drops, txfc.
    Stat(stat::Stat),
    /// Show a client's queue properties (rxbuf, txbuf, maxsize, mintu, maxtu) and netd's limits.
    Get(props::Get),
    /// Set a client's queue property: rxbuf=SIZE.
    Set(props::Set),
    /// Overlays: virtual layer-2 networks across hosts in VXLAN, for instances.
    #[command(subcommand)]
    Overlay(overlay::OverlayCommand),
}

/// netmux shares one network link among untrusting user-space network stacks.
///
/// Each application asks the netmux daemon for TCP or UDP ports; netd compiles verified
/// filter programs for them and installs them in the driver that owns the link.
#[derive(Parser)]
#[command(name = "netmux", version, about, long_about)]
#[command(
    after_help = "Exit status: 0 success, 1 input refused (the reason is printed), \
                        2 usage or I/O error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Parses the arguments, runs the command and turns its result into the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            eprintln!("netmux: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("netmux: error: {}", report(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause said once
/// ([`netmux_netd::run::error_text`]).
pub fn report(e: &anyhow::Error) -> String {
    netmux_netd::run::error_text(e.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source and also returns it, as `#[error("..: {source}")]`
    /// does.
    #[derive(Debug)]
    struct SaysItsSource {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for SaysItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "binding {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for SaysItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let io = std::io::Error::other("a file that is not a socket is in the way");
        let e = anyhow::Error::new(SaysItsSource {
            path: "/x",
            source: io,
        });
        assert_eq!(
            report(&e),
            "binding /x: a file that is not a socket is in the way"
        );
    }

    #[test]
    fn causes_not_yet_said_are_chained() {
        let e = anyhow::anyhow!("No such file or directory (os error 2)")
            .context("cannot read /nonexistent")
            .context("loading the rules");
        assert_eq!(
            report(&e),
            "loading the rules: cannot read /nonexistent: No such file or directory (os error 2)"
        );
    }
}
