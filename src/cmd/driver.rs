//! `netmux driver`: the driver, exactly as the `netmux-driver` binary runs it
//! ([`netmux_driver::cli::run`]). `netmux up` and `netmux demo` re-execute the running
//! `netmux` binary with this subcommand, so the link owner is always a process of its own and
//! `cargo run -- up ...` needs no other binary.

use std::process::{Command, ExitCode};

use netmux_driver::cli::DriverArgs;

use super::Run;

/// Runs the driver: owns the link, classifies received frames into client rings, checks every
/// transmitted frame. Normally started by `netmux up`, not by hand.
#[derive(Debug, clap::Args)]
pub struct Driver {
    #[command(flatten)]
    args: DriverArgs,
}

impl Run for Driver {
    fn run(self) -> anyhow::Result<ExitCode> {
        init_logging();
        netmux_driver::cli::run(self.args)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The command that runs `netmux driver` from the running executable; `--link`, `--control`
/// and `--exit-on-disconnect` are appended by netd.
pub fn reexec_command() -> anyhow::Result<Command> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("finding the running netmux binary: {e}"))?;
    let mut command = Command::new(exe);
    command.arg("driver");
    Ok(command)
}

/// Logs to stderr at `info` (or as `RUST_LOG` says), for the long-running commands. A second
/// call is harmless.
pub fn init_logging() {
    init_logging_at("info");
}

/// Logs to stderr at `level` unless `RUST_LOG` says otherwise; Cranelift's own logs (it
/// prints every compiled function at info) only from warnings up.
pub fn init_logging_at(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("{level},cranelift_jit=warn"))
            }),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
