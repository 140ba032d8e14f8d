//! `netd`: the netmux daemon. Connects to a running driver (or starts one on a link), listens for clients on
//! `RUNTIME_DIR/netd.sock`, and serves until SIGINT or SIGTERM. `netmux up` runs the same
//! code ([`netmux_netd::run`]) with the driver re-executed from the `netmux` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use netmux_netd::driver_link::{self, ChannelDriver};
use netmux_netd::run::{self, HostArgs};

/// How long the driver child gets to stop after SIGTERM before it is killed.
const DRIVER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "netd",
    about = "The netmux daemon: ports, filters and sessions for netmux clients"
)]
struct Args {
    /// Connect to a running driver's control socket.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "link",
        conflicts_with = "link"
    )]
    driver_socket: Option<PathBuf>,
    /// Start a driver on this link (tap:NAME, afpacket:IFNAME, pcap:IN[,OUT], virtual:PATH[,PEER])
    /// as a child, with its control socket in RUNTIME_DIR/driver/ (mode 0700).
    #[arg(long, value_name = "SPEC")]
    link: Option<String>,
    #[command(flatten)]
    host: HostArgs,
}

fn main() -> std::process::ExitCode {
    match serve() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netd: error: {}", run::error_text(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = args.host.config()?;
    config.probe_address = args.link.as_deref().is_some_and(run::probes_address);
    let (child, driver) = match (&args.driver_socket, &args.link) {
        (Some(path), _) => {
            let d = ChannelDriver::connect_with_timeout(path, config.driver_timeout)
                .with_context(|| format!("connecting to the driver at {}", path.display()))?;
            (None, d)
        }
        (None, Some(spec)) => {
            let command = std::process::Command::new(driver_link::driver_binary());
            let (child, d) = run::start_child_driver(&config, command, spec)?;
            (Some(child), d)
        }
        (None, None) => anyhow::bail!("give --driver-socket or --link"),
    };
    let signals = run::Signals::watch()?;
    let netd = netmux_netd::spawn(config, Box::new(driver))?;
    tracing::info!(socket = %netd.socket_path().display(), "netd listening");
    signals.wait();
    netd.stop()?;
    if let Some(child) = child {
        let status = child.stop(DRIVER_STOP_GRACE)?;
        tracing::info!(%status, "driver stopped");
    }
    Ok(())
}
