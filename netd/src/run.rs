//! Running netd in the foreground, shared by the `netd` binary and `netmux up`: the host's
//! command-line options ([`HostArgs`]) and the configuration they make, starting the driver as
//! a child process with its control socket in a private directory ([`start_child_driver`]),
//! and catching SIGINT and SIGTERM ([`Signals`]).
//!
//! Nothing here panics on any input; every failure is a [`RunError`] that says what was being
//! done.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::Command;

use crate::config::{self, Config, ConfigError, HostAddrs};
use crate::driver_link::{self, ChannelDriver, ChildDriver, DriverError};
use crate::server::{self, ServeError};

/// The driver's control socket inside the runtime directory's private `driver/` directory.
pub const DRIVER_CONTROL: &str = "driver/control.sock";

/// Why netd could not be started in the foreground.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The options do not make a configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The driver's private directory could not be made.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The driver did not start or did not answer.
    #[error("starting a driver on {spec}: {source}")]
    Driver {
        /// The link spec it was given.
        spec: String,
        /// What went wrong.
        source: DriverError,
    },
    /// The signal watcher could not be set up.
    #[error("watching for signals: {0}")]
    Signals(std::io::Error),
}

/// The host's options, as `netd` and `netmux up` take them.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Runtime directory holding netd.sock [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// The host's IPv4 address and prefix length: a host address of its network (not the
    /// network or broadcast address, not multicast, loopback or reserved; a prefix of 1 to
    /// 32), e.g. --ip 192.0.2.10/24; or `dhcp`: address, prefix, gateway and DNS servers from
    /// a DHCP server's lease, renewed while netd runs and released when it stops (needs the
    /// host stack). On an afpacket: link a static address is first checked with ARP probes
    /// (RFC 5227, 0.7 s): netd refuses to start when another host has it.
    #[arg(long, value_name = "A.B.C.D/N|dhcp", value_parser = config::parse_host_ip)]
    pub ip: Option<config::HostIp>,
    /// The IPv4 default gateway (must be on the --ip subnet; not with --ip dhcp).
    #[arg(long, value_name = "G", requires = "ip")]
    pub gateway: Option<Ipv4Addr>,
    /// Do not give the host an IPv6 link-local address.
    #[arg(long, conflicts_with = "ip6")]
    pub no_ipv6: bool,
    /// The host's global IPv6 address and prefix length, e.g. --ip6 2001:db8::2/64 (not
    /// link-local, multicast, loopback or ::); or `slaac`: an address from a router
    /// advertisement's /64 prefix and netd's own interface id, the router the default (needs
    /// the host stack). netd probes the address for duplicates first (about 1 s), then
    /// answers neighbour solicitations and echo requests for it, and clients bind their ports
    /// on it as on the link-local address.
    #[arg(long, value_name = "A::B/N|slaac", value_parser = config::parse_host_ip6)]
    pub ip6: Option<config::HostIp6>,
    /// The IPv6 default router (usually its link-local address, e.g. fe80::1), given to
    /// clients.
    #[arg(long, value_name = "G6", requires = "ip6")]
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// Ephemeral ports for get_port.
    #[arg(long, value_name = "A-B", value_parser = config::parse_port_range, default_value = "49152-65535")]
    pub ephemeral_ports: RangeInclusive<u16>,
    /// A uid besides 0 that may bind ports below 1024 (repeatable).
    #[arg(long = "privileged-uid", value_name = "UID")]
    pub privileged_uids: Vec<u32>,
    /// A uid besides 0 that may open tap filters (repeatable).
    #[arg(long = "tap-uid", value_name = "UID")]
    pub tap_uids: Vec<u32>,
    /// A uid besides 0 that may claim the link exclusively (repeatable).
    #[arg(long = "exclusive-uid", value_name = "UID")]
    pub exclusive_uids: Vec<u32>,
    /// Do not answer ARP, ICMP echo, or unbound ports as the host.
    #[arg(long)]
    pub no_host_stack: bool,
    /// netd's configuration file (TOML): `[limits]` (sessions_per_uid, ports_per_session,
    /// ports_per_uid, filters_per_session, ring_bytes_per_session, ring_bytes_per_uid,
    /// ring_bytes_per_instance, buffered_bytes_per_uid), `[timeouts]` in seconds (handshake,
    /// message, reply, driver, port_grace: how long ports a restarted netd had bound are kept
    /// for their uids, 10 by default), and the instances, one `[[instance]]` table each,
    /// restored at start and rewritten when one is created, changed or destroyed. Without it,
    /// the defaults hold and instances last until netd stops. `netmux instance ls` shows the
    /// settings in force.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A uid besides 0 that may create, change and destroy instances (repeatable).
    #[arg(long = "admin-uid", value_name = "UID")]
    pub admin_uids: Vec<u32>,
    /// Seconds netd waits for the driver's reply to one request before it declares the
    /// driver gone [default: timeouts.driver of --config, else 5], e.g. --driver-timeout 2.
    #[arg(long, value_name = "SECS")]
    pub driver_timeout: Option<f64>,
    /// Seconds a host's mappings in an etcd overlay backend outlive it: the TTL of the lease
    /// netd keeps alive for its own instances' entries (whole seconds, at least 1).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_OVERLAY_LEASE_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub overlay_lease_ttl: u64,
}

impl HostArgs {
    /// The configuration these options make; a gateway off the host's subnet is refused.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::new(
            self.runtime_dir
                .clone()
                .unwrap_or_else(config::default_runtime_dir),
        );
        let (ip, dhcp) = match self.ip {
            Some(config::HostIp::Static(a, p)) => (Some((a, p)), false),
            Some(config::HostIp::Dhcp) => (None, true),
            None => (None, false),
        };
        if dhcp && (self.gateway.is_some() || self.no_host_stack) {
            return Err(ConfigError::Dhcp(
                "--ip dhcp takes the gateway from the lease and needs the host stack \
                 (no --gateway, no --no-host-stack)",
            ));
        }
        if let (Some(ip), Some(gw)) = (ip, self.gateway) {
            config::check_gateway(ip, gw)?;
        }
        config.dhcp = dhcp;
        config.addrs = HostAddrs {
            ipv4: ip,
            gateway: self.gateway,
            ipv6_link_local: !self.no_ipv6,
        };
        config.ipv6 = match self.ip6 {
            Some(config::HostIp6::Static(a, p)) => Some((a, p)),
            _ => None,
        };
        config.slaac = self.ip6 == Some(config::HostIp6::Slaac);
        if config.slaac && self.no_host_stack {
            return Err(ConfigError::Slaac(
                "--ip6 slaac needs the host stack (no --no-host-stack)",
            ));
        }
        if let Some(g) = self.gateway6 {
            if g.is_multicast() || g.is_unspecified() || g.is_loopback() {
                return Err(ConfigError::NotAHostAddress {
                    address: g.to_string(),
                    why: "an IPv6 default router is a unicast address on the link",
                });
            }
        }
        config.ipv6_gateway = self.gateway6;
        config.ephemeral = self.ephemeral_ports.clone();
        config
            .policy
            .privileged_uids
            .extend(self.privileged_uids.iter().copied());
        config.policy.tap_uids.extend(self.tap_uids.iter().copied());
        config
            .policy
            .exclusive_uids
            .extend(self.exclusive_uids.iter().copied());
        config.host_stack = !self.no_host_stack;
        config.instances_file = self.config.clone();
        if let Some(file) = &self.config {
            let settings = crate::instance::InstancesFile::load(file).map_err(ConfigError::File)?;
            config.apply(settings.limits.as_ref(), settings.timeouts.as_ref())?;
        }
        config.admin_uids.extend(self.admin_uids.iter().copied());
        config.overlay_lease_ttl = std::time::Duration::from_secs(self.overlay_lease_ttl);
        if let Some(secs) = self.driver_timeout {
            config.driver_timeout = std::time::Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::Timeout(secs.to_string()))?;
        }
        Ok(config)
    }
}

/// Starts the driver `command` (given `--link SPEC --control ... --exit-on-disconnect`) with
/// its control socket at [`DRIVER_CONTROL`] in `runtime_dir` (the directory made mode 0700
/// first) and connects to it. The runtime directory and `driver/` are refused, before any
/// driver starts, when another user could change them ([`server::check_dir`]). The driver is a process of its own: the link owner stays
/// isolated from netd and the clients.
pub fn start_child_driver(
    config: &Config,
    command: Command,
    spec: &str,
) -> Result<(ChildDriver, ChannelDriver), RunError> {
    let control = config.runtime_dir.join(DRIVER_CONTROL);
    server::runtime_dir(&config.runtime_dir)?;
    if let Some(dir) = control.parent() {
        server::private_dir(dir)?;
    }
    let (child, link) =
        driver_link::start_driver_command(command, spec, &control, config.driver_timeout).map_err(
            |source| RunError::Driver {
                spec: spec.to_owned(),
                source,
            },
        )?;
    tracing::info!(pid = child.pid(), %spec, "driver started");
    Ok((child, link))
}

/// Whether netd probes for its static address before it starts on the link `spec`
/// ([`Config::probe_address`]): on `afpacket:` interfaces, where other hosts may have it; not
/// on a `tap:` device (made by the driver, its only peer this host's kernel, configured after
/// netmux starts) nor on links without hardware (see [`crate::dad`]).
pub fn probes_address(spec: &str) -> bool {
    spec.starts_with("afpacket:")
}

pub use netmux_proto::signals::Signals;

/// An error and its causes on one line, `what: why: why`, each cause said once: a cause whose
/// text an outer message already contains (an error that prints its source and also returns
/// it from `source()`) is left out rather than repeated. What `netd` and `netmux` print when
/// they fail.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        host: HostArgs,
    }

    #[test]
    fn host_args_make_the_configuration_they_name() {
        let cli = Cli::try_parse_from([
            "x",
            "--runtime-dir",
            "/tmp/nmx",
            "--ip",
            "10.0.0.2/24",
            "--gateway",
            "10.0.0.1",
            "--privileged-uid",
            "7",
        ])
        .unwrap();
        let config = cli.host.config().unwrap();
        assert_eq!(config.runtime_dir, PathBuf::from("/tmp/nmx"));
        assert_eq!(config.addrs.ipv4, Some((Ipv4Addr::new(10, 0, 0, 2), 24)));
        assert_eq!(config.addrs.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(config.policy.privileged_uids.contains(&7));
        assert!(config.host_stack);
    }

    #[test]
    fn an_ip_that_cannot_be_a_host_address_is_refused_naming_it() {
        for bad in [
            "0.0.0.0/0",
            "255.255.255.255/32",
            "192.0.2.255/24",
            "192.0.2.0/24",
            "224.0.0.1/24",
            "127.0.0.1/8",
        ] {
            let e = match Cli::try_parse_from(["x", "--ip", bad]) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{bad} was accepted"),
            };
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn ip_dhcp_asks_for_a_lease_and_refuses_a_gateway_or_no_host_stack() {
        let cli = Cli::try_parse_from(["x", "--ip", "dhcp"]).unwrap();
        let config = cli.host.config().unwrap();
        assert!(config.dhcp);
        assert_eq!((config.addrs.ipv4, config.addrs.gateway), (None, None));
        for extra in [["--gateway", "10.0.0.1"], ["--no-host-stack", "--no-ipv6"]] {
            let cli = Cli::try_parse_from(["x", "--ip", "DHCP", extra[0], extra[1]]).unwrap();
            assert!(matches!(cli.host.config(), Err(ConfigError::Dhcp(_))));
        }
        let cli = Cli::try_parse_from(["x", "--ip", "10.0.0.2/24"]).unwrap();
        assert!(!cli.host.config().unwrap().dhcp);
    }

    #[test]
    fn ip6_takes_a_global_address_and_refuses_what_no_host_has() {
        let cli =
            Cli::try_parse_from(["x", "--ip6", "2001:db8::2/64", "--gateway6", "fe80::1"]).unwrap();
        let config = cli.host.config().unwrap();
        assert_eq!(config.ipv6, Some(("2001:db8::2".parse().unwrap(), 64)));
        assert_eq!(config.ipv6_gateway, Some("fe80::1".parse().unwrap()));
        for bad in [
            "fe80::2/64",
            "ff02::1/64",
            "::/64",
            "::1/128",
            "2001:db8::2/0",
        ] {
            let e = Cli::try_parse_from(["x", "--ip6", bad]).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
        for bad in ["2001:db8::2/129", "2001:db8::2", "10.0.0.2/24"] {
            let e = Cli::try_parse_from(["x", "--ip6", bad]).unwrap_err();
            assert!(e.to_string().contains("not an IPv6 address"), "{bad}: {e}");
        }
        assert!(Cli::try_parse_from(["x", "--ip6", "2001:db8::2/64", "--no-ipv6"]).is_err());
        assert!(Cli::try_parse_from(["x", "--gateway6", "fe80::1"]).is_err());
        let config = Cli::try_parse_from(["x", "--ip6", "SLAAC"])
            .unwrap()
            .host
            .config()
            .unwrap();
        assert!(config.slaac && config.ipv6.is_none());
        let cli = Cli::try_parse_from(["x", "--ip6", "slaac", "--no-host-stack"]).unwrap();
        assert!(cli.host.config().is_err());
    }

    #[test]
    fn a_gateway_off_the_subnet_is_refused() {
        let cli =
            Cli::try_parse_from(["x", "--ip", "10.0.0.2/24", "--gateway", "10.0.1.1"]).unwrap();
        assert!(matches!(
            cli.host.config(),
            Err(ConfigError::GatewayOffLink { .. })
        ));
    }

    #[test]
    fn a_driver_that_cannot_start_is_a_driver_error_naming_the_link() {
        let dir = std::env::temp_dir().join(format!("netmux-run-test-{}", std::process::id()));
        let err = start_child_driver(
            &Config::new(&dir),
            Command::new("/nonexistent/netmux-driver"),
            "virtual:/tmp/x",
        )
        .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            err.to_string()
                .contains("starting a driver on virtual:/tmp/x"),
            "{err}"
        );
    }
}
