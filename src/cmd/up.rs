//! `netmux up`: the driver and netd in the foreground until SIGINT or SIGTERM.
//!
//! The driver is a child process (`netmux driver`, the running binary re-executed: the link
//! owner is isolated from netd and the clients); netd runs in this process and listens on
//! `RUNTIME_DIR/netd.sock`. On a signal netd stops first (its socket is removed), then the
//! driver child is stopped by its pid. A link that cannot be opened (`tap:` without
//! `CAP_NET_ADMIN`, an interface that does not exist) is reported with the driver's reason and
//! exit status 1. When the driver ends by itself (its link vanished for longer than
//! `--link-timeout`, say, with the reason on its stderr), netd is stopped and `up` exits with
//! the driver's exit status (2 if a signal ended it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use netmux_driver::link::LinkSpec;
use netmux_netd::config::Config;
use netmux_netd::driver_link::{ChannelDriver, ChildDriver, DriverLink};
use netmux_netd::run::{self, HostArgs, RunError};
use netmux_netd::NetdHandle;

use super::{driver, Refused, Run};

/// How long the driver child gets to stop after SIGTERM before it is killed.
pub const DRIVER_STOP_GRACE: Duration = Duration::from_secs(2);
/// How often `up` looks whether its driver child has ended by itself.
const DRIVER_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the driver (as a child process) and netd on a link until Ctrl-C.
#[derive(Debug, clap::Args)]
#[command(mut_arg("ip", |a| a.required(true)))]
pub struct Up {
    /// The link: tap:NAME (created, needs CAP_NET_ADMIN), afpacket:IFNAME (an existing
    /// interface, needs CAP_NET_RAW), pcap:IN[,OUT] or virtual:PATH[,PEER].
    #[arg(long, value_name = "SPEC")]
    link: LinkSpec,
    /// Seconds the link may vanish (a deleted TAP device or interface) before the driver, and
    /// with it `up`, ends with an error; it is re-opened if it comes back sooner.
    #[arg(long, value_name = "SECONDS", default_value_t = netmux_driver::daemon::DEFAULT_LINK_TIMEOUT.as_secs())]
    link_timeout: u64,
    #[command(flatten)]
    host: HostArgs,
}

impl Run for Up {
    fn run(self) -> anyhow::Result<ExitCode> {
        driver::init_logging();
        let config = self.host.config().map_err(|e| Refused(e.to_string()))?;
        // Caught from here on: a Ctrl-C during start-up still stops everything cleanly.
        let stop = netmux_driver::cli::stop_on_signals()?;
        let driver_args = ["--link-timeout".to_string(), self.link_timeout.to_string()];
        let mut host = Host::start_with(&self.link.to_string(), config, None, &driver_args, |d| {
            Box::new(d)
        })?;
        println!(
            "netd listening on {} (driver pid {}); Ctrl-C stops",
            host.socket().display(),
            host.driver_pid()
        );
        while !stop.load(Ordering::Relaxed) {
            if let Some(status) = host.driver_exited()? {
                host.stop()?;
                eprintln!("netmux: the driver ended by itself ({status}); netd stopped");
                let code = status.code().filter(|&c| c != 0).unwrap_or(2);
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)));
            }
            std::thread::sleep(DRIVER_WATCH_INTERVAL);
        }
        host.stop()?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A running host: the driver child and netd in this process. Dropping it stops both too, but
/// [`Host::stop`] reports how they ended.
#[derive(Debug)]
pub struct Host {
    netd: Option<NetdHandle>,
    driver: Option<ChildDriver>,
    socket: PathBuf,
}

impl Host {
    /// Starts the driver on `link` and netd with `config` over it; `wrap` may put the driver
    /// connection behind another [`DriverLink`] (the demo keeps a handle for statistics).
    /// `driver_log` is the driver's log filter when `RUST_LOG` does not set one.
    pub fn start(
        link: &str,
        config: Config,
        driver_log: Option<&str>,
        wrap: impl FnOnce(ChannelDriver) -> Box<dyn DriverLink>,
    ) -> anyhow::Result<Host> {
        Self::start_with(link, config, driver_log, &[], wrap)
    }

    /// [`Host::start`] with more arguments for `netmux driver`.
    pub fn start_with(
        link: &str,
        config: Config,
        driver_log: Option<&str>,
        driver_args: &[String],
        wrap: impl FnOnce(ChannelDriver) -> Box<dyn DriverLink>,
    ) -> anyhow::Result<Host> {
        let mut command = driver::reexec_command()?;
        command.args(driver_args);
        if let (Some(filter), None) = (driver_log, std::env::var_os("RUST_LOG")) {
            command.env("RUST_LOG", filter);
        }
        let (child, channel) = match run::start_child_driver(&config, command, link) {
            Ok(started) => started,
            // The driver printed its own reason (the link that would not open) on stderr.
            Err(e @ RunError::Driver { .. }) => return Err(Refused(e.to_string()).into()),
            Err(e) => return Err(e.into()),
        };
        let netd = match netmux_netd::spawn(config, wrap(channel)) {
            Ok(netd) => netd,
            Err(e) => {
                let _ = child.stop(DRIVER_STOP_GRACE);
                return Err(Refused(format!("starting netd: {e}")).into());
            }
        };
        tracing::info!(socket = %netd.socket_path().display(), "netd listening");
        Ok(Host {
            socket: netd.socket_path().to_owned(),
            netd: Some(netd),
            driver: Some(child),
        })
    }

    /// netd's client socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The driver child's pid.
    pub fn driver_pid(&self) -> u32 {
        self.driver.as_ref().map_or(0, ChildDriver::pid)
    }

    /// How the driver child ended, if it has ended by itself.
    pub fn driver_exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.driver.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// netd, while running.
    pub fn netd(&self) -> Option<&NetdHandle> {
        self.netd.as_ref()
    }

    /// Stops netd (removing its socket), then the driver child by its pid.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let netd = self.netd.take().map(NetdHandle::stop);
        let driver = self.driver.take().map(|d| d.stop(DRIVER_STOP_GRACE));
        if let Some(status) = driver.transpose()? {
            tracing::info!(%status, "driver stopped");
        }
        netd.transpose()?;
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
