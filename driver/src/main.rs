//! `netmux-driver`: owns one link and serves netd on a control socket.
//!
//! ```text
//! netmux-driver --link pcap:in.pcap,out.pcap --control /run/netmux/driver.sock
//! ```
//!
//! The driver accepts exactly one netd at a time, from the allowed user ids (default: its own),
//! and fails closed when netd leaves: every client queue is stopped and marked closed. Logs go
//! to stderr (`RUST_LOG=netmux_driver=debug` for more). `netmux driver` runs the same code
//! ([`netmux_driver::cli`]).

use clap::Parser;
use netmux_driver::cli::{self, DriverArgs};

/// The netmux driver: owns the link, classifies received frames into client rings, checks
/// every transmitted frame.
#[derive(Debug, Parser)]
#[command(name = "netmux-driver", version)]
struct Args {
    #[command(flatten)]
    driver: DriverArgs,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(Args::parse().driver) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netmux-driver: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
