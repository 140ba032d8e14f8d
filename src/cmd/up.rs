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
//!
//! With `--restart`, a driver that ends by itself is started again in place instead, after a
//! pause that starts at [`FIRST_RESTART_PAUSE`] and doubles with every failure in a row up to
//! [`MAX_RESTART_PAUSE`] (back to the first once a driver ran [`RESTART_RESET_AFTER`]); netd
//! keeps running and its socket stays. netd ends every session (their clients see their
//! connection and their queue close, and a client on the client library's `Reconnecting`,
//! as the examples are, connects again with backoff, binds its ports again and opens a new
//! queue) and installs its state at the new driver: instances, host addresses, overlays,
//! firewall rules, its host queue and filters. Meanwhile netd refuses new clients, saying the
//! driver is being restarted. After `--restart-limit` failures (a driver that ended, or one
//! that would not start or take netd's state) within [`RESTART_WINDOW`], `up` says so, stops
//! netd and exits like `up` without `--restart`.

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
/// `--restart`: the pause before the first restart after a driver that ran long enough.
pub const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(100);
/// `--restart`: the longest pause before a restart (the pause doubles with every failure).
pub const MAX_RESTART_PAUSE: Duration = Duration::from_secs(5);
/// `--restart`: a driver that ran this long before it ended starts the pauses over.
pub const RESTART_RESET_AFTER: Duration = Duration::from_secs(30);
/// `--restart`: the window in which `--restart-limit` failures make `up` give up.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

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
    /// When the driver ends by itself, start it again in place (pauses of 0.1 s doubling to
    /// 5 s) and keep netd: its clients connect again and get new queues.
    #[arg(long)]
    restart: bool,
    /// With --restart: give up (stop netd, exit non-zero) after this many driver failures
    /// within 60 s.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "restart",
          value_parser = clap::value_parser!(u32).range(1..))]
    restart_limit: u32,
    #[command(flatten)]
    host: HostArgs,
}

impl Run for Up {
    fn run(self) -> anyhow::Result<ExitCode> {
        driver::init_logging();
        let mut config = self.host.config().map_err(|e| Refused(e.to_string()))?;
        config.probe_address = run::probes_address(&self.link.to_string());
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
        let mut restarts = Restarts::new(self.restart_limit);
        let mut started_at = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Some(status) = host.driver_exited()? else {
                std::thread::sleep(DRIVER_WATCH_INTERVAL);
                continue;
            };
            if !self.restart {
                return give_up(
                    host,
                    &format!("the driver ended by itself ({status})"),
                    status,
                );
            }
            let mut why = format!("the driver ended by itself ({status})");
            loop {
                let Some(pause) = restarts.failed(started_at.elapsed()) else {
                    return give_up(
                        host,
                        &format!(
                            "{why}; {} driver failures within {} s, giving up",
                            self.restart_limit,
                            RESTART_WINDOW.as_secs()
                        ),
                        status,
                    );
                };
                eprintln!(
                    "netmux: {why}; restarting it in {:.1} s (netd keeps running)",
                    pause.as_secs_f64()
                );
                if sleep_unless(pause, &stop) {
                    host.stop()?;
                    return Ok(ExitCode::SUCCESS);
                }
                started_at = std::time::Instant::now();
                match host.restart_driver() {
                    Ok(()) => {
                        eprintln!(
                            "netmux: driver restarted (pid {}); netd took it, clients may \
                             connect again",
                            host.driver_pid()
                        );
                        break;
                    }
                    Err(e) => why = format!("the driver did not restart ({e:#})"),
                }
            }
        }
        host.stop()?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Stops netd and says why, exiting with the driver's exit status (2 if a signal ended it).
fn give_up(host: Host, why: &str, status: std::process::ExitStatus) -> anyhow::Result<ExitCode> {
    host.stop()?;
    eprintln!("netmux: {why}; netd stopped");
    let code = status.code().filter(|&c| c != 0).unwrap_or(2);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
}

/// Sleeps `pause`, waking early when `stop` is set; returns whether it was.
fn sleep_unless(pause: Duration, stop: &std::sync::atomic::AtomicBool) -> bool {
    let end = std::time::Instant::now() + pause;
    while std::time::Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(DRIVER_WATCH_INTERVAL.min(end - std::time::Instant::now()));
    }
    stop.load(Ordering::Relaxed)
}

/// `--restart`'s backoff: when to try again after a failure, and when to give up.
#[derive(Debug)]
struct Restarts {
    limit: u32,
    failures: std::collections::VecDeque<std::time::Instant>,
    pause: Duration,
}

impl Restarts {
    fn new(limit: u32) -> Restarts {
        Restarts {
            limit,
            failures: std::collections::VecDeque::new(),
            pause: FIRST_RESTART_PAUSE,
        }
    }

    /// A driver failed after running `ran`: the pause before the next start, or `None` when
    /// this is the limit's failure within [`RESTART_WINDOW`].
    fn failed(&mut self, ran: Duration) -> Option<Duration> {
        self.failed_at(std::time::Instant::now(), ran)
    }

    fn failed_at(&mut self, now: std::time::Instant, ran: Duration) -> Option<Duration> {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) >= RESTART_WINDOW)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= self.limit as usize {
            return None;
        }
        if ran >= RESTART_RESET_AFTER {
            self.pause = FIRST_RESTART_PAUSE;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_RESTART_PAUSE);
        Some(pause)
    }
}

/// A running host: the driver child and netd in this process. Dropping it stops both too, but
/// [`Host::stop`] reports how they ended.
#[derive(Debug)]
pub struct Host {
    netd: Option<NetdHandle>,
    driver: Option<ChildDriver>,
    socket: PathBuf,
    /// How the driver was started, to start it again ([`Host::restart_driver`]).
    link: String,
    config: Config,
    driver_log: Option<String>,
    driver_args: Vec<String>,
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
        let (child, channel) = start_driver(link, &config, driver_log, driver_args)?;
        let netd = match netmux_netd::spawn(config.clone(), wrap(channel)) {
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
            link: link.to_owned(),
            config,
            driver_log: driver_log.map(str::to_owned),
            driver_args: driver_args.to_vec(),
        })
    }

    /// Starts the driver again, as it was started, after it ended, and gives it to netd in
    /// place of the old one ([`NetdHandle::replace_driver`]); the new child is stopped again
    /// if netd cannot use it.
    pub fn restart_driver(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.driver.take() {
            // Already ended (it is reaped); stopping makes sure.
            old.stop(DRIVER_STOP_GRACE)?;
        }
        let netd = self
            .netd
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("netd is not running"))?;
        let (child, channel) = start_driver(
            &self.link,
            &self.config,
            self.driver_log.as_deref(),
            &self.driver_args,
        )?;
        match netd.replace_driver(Box::new(channel)) {
            Ok(()) => {
                self.driver = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.stop(DRIVER_STOP_GRACE);
                Err(anyhow::anyhow!("netd could not use the new driver: {e}"))
            }
        }
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

/// Starts the driver child (`netmux driver` re-executed) on `link` and connects to it.
fn start_driver(
    link: &str,
    config: &Config,
    driver_log: Option<&str>,
    driver_args: &[String],
) -> anyhow::Result<(ChildDriver, ChannelDriver)> {
    let mut command = driver::reexec_command()?;
    command.args(driver_args);
    if let (Some(filter), None) = (driver_log, std::env::var_os("RUST_LOG")) {
        command.env("RUST_LOG", filter);
    }
    match run::start_child_driver(config, command, link) {
        Ok(started) => Ok(started),
        // The driver printed its own reason (the link that would not open) on stderr.
        Err(e @ RunError::Driver { .. }) => Err(Refused(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_pauses_double_to_the_most_reset_after_a_long_run_and_give_up_at_the_limit() {
        let mut r = Restarts::new(100);
        let t = std::time::Instant::now();
        let short = Duration::from_secs(1);
        let pauses: Vec<Duration> = (0..8)
            .map(|i| r.failed_at(t + Duration::from_millis(i), short).unwrap())
            .collect();
        assert_eq!(pauses[0], FIRST_RESTART_PAUSE);
        assert_eq!(pauses[1], FIRST_RESTART_PAUSE * 2);
        assert_eq!(pauses[7], MAX_RESTART_PAUSE);
        assert_eq!(
            r.failed_at(t + Duration::from_millis(9), RESTART_RESET_AFTER),
            Some(FIRST_RESTART_PAUSE)
        );

        let mut r = Restarts::new(3);
        assert!(r.failed_at(t, short).is_some());
        assert!(r.failed_at(t + Duration::from_secs(1), short).is_some());
        assert_eq!(r.failed_at(t + Duration::from_secs(2), short), None);
        // Failures older than the window no longer count.
        let mut r = Restarts::new(3);
        assert!(r.failed_at(t, short).is_some());
        assert!(r.failed_at(t + Duration::from_secs(1), short).is_some());
        assert!(r
            .failed_at(t + RESTART_WINDOW + Duration::from_secs(2), short)
            .is_some());
    }
}
