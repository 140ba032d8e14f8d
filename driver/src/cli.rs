//! The driver's command line and entry point, shared by the `netmux-driver` binary and
//! `netmux driver` (which `netmux up` and `netmux demo` re-execute, so the driver is always a
//! process of its own whichever binary the user built).
//!
//! [`run`] opens the link, binds the control socket and serves netd until SIGINT or SIGTERM
//! (or, with `--exit-on-disconnect`, until netd leaves). It never installs a logger: the
//! calling binary decides where logs go.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use netmux_vm::Strategy;

use crate::daemon::control::{Server, ServerOptions};
use crate::daemon::{Driver, DriverConfig};
use crate::link::{self, LinkSpec};

/// The driver's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DriverArgs {
    /// The link: tap:NAME, afpacket:IFNAME, pcap:IN.pcap[,OUT.pcap] or virtual:PATH[,PEER].
    #[arg(long, value_name = "SPEC")]
    pub link: LinkSpec,
    /// Where to create the control socket for netd.
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
    /// A user id allowed to connect as netd (repeatable; default: the driver's own).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Exit when netd disconnects instead of waiting for a new one (queues fail closed
    /// either way).
    #[arg(long)]
    pub exit_on_disconnect: bool,
    /// Filter engine: auto, interp or jit.
    #[arg(long, default_value = "auto")]
    pub engine: Strategy,
    /// Seconds a link that vanished (a deleted TAP device or interface) may stay away before
    /// the driver ends with an error; it is re-opened if it comes back sooner. 0 gives up as
    /// soon as it is gone.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::daemon::DEFAULT_LINK_TIMEOUT.as_secs())]
    pub link_timeout: u64,
}

/// Why the driver could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The link could not be opened.
    #[error("opening link {spec}: {source}")]
    Link {
        /// The link spec.
        spec: String,
        /// Why.
        source: link::LinkError,
    },
    /// The control socket could not be served.
    #[error(transparent)]
    Server(#[from] crate::daemon::control::ServerError),
    /// SIGINT and SIGTERM could not be caught.
    #[error("watching SIGINT and SIGTERM: {0}")]
    Signals(std::io::Error),
}

/// Runs the driver until a signal (or netd's departure with `--exit-on-disconnect`). A link
/// that cannot be opened, or that vanishes for longer than `--link-timeout`, is an error naming
/// the link and the reason.
pub fn run(args: DriverArgs) -> Result<(), RunError> {
    let link = link::open(&args.link).map_err(|source| RunError::Link {
        spec: args.link.to_string(),
        source,
    })?;
    let driver = Driver::new(
        link,
        DriverConfig {
            strategy: args.engine,
            link_timeout: std::time::Duration::from_secs(args.link_timeout),
            ..DriverConfig::default()
        },
    );
    let mut options = ServerOptions {
        exit_on_disconnect: args.exit_on_disconnect,
        ..ServerOptions::default()
    };
    if !args.allow_uid.is_empty() {
        options.allowed_uids = args.allow_uid;
    }
    let mut server = Server::bind(&args.control, driver, options)?;
    let stop = stop_on_signals().map_err(RunError::Signals)?;
    server.run(&stop)?;
    let (link_counters, _) = server.driver().stats();
    tracing::info!(?link_counters, "driver stopped");
    Ok(())
}

/// A flag that SIGINT or SIGTERM sets, watched by a thread of its own. The driver notices it
/// within one idle poll and fails closed, so clients see their queues end instead of a silent
/// driver; the examples use the same flag to close their sockets cleanly.
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let flag = netmux_proto::signals::Signals::watch()?.into_flag()?;
    Ok(flag)
}
