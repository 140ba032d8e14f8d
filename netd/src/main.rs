//! `netd`: the netmux daemon. Connects to a running driver (or starts one on a link), listens for clients on
//! `RUNTIME_DIR/netd.sock`, and serves until Ctrl-C.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use netmux_netd::config::{self, Config, HostAddrs};
use netmux_netd::driver_link::{self, ChannelDriver};
use netmux_netd::Server;

#[derive(Parser, Debug)]
#[command(
    name = "netd",
    about = "The netmux daemon: ports, filters and sessions for netmux clients"
)]
struct Args {
    /// Runtime directory holding netd.sock [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
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
    /// The host's IPv4 address and prefix length.
    #[arg(long, value_name = "A.B.C.D/N", value_parser = config::parse_ipv4_cidr)]
    ip: Option<(Ipv4Addr, u8)>,
    /// The IPv4 default gateway (must be on the --ip subnet).
    #[arg(long, value_name = "G", requires = "ip")]
    gateway: Option<Ipv4Addr>,
    /// Do not give the host an IPv6 link-local address.
    #[arg(long)]
    no_ipv6: bool,
    /// Ephemeral ports for get_port.
    #[arg(long, value_name = "A-B", value_parser = config::parse_port_range, default_value = "49152-65535")]
    ephemeral_ports: RangeInclusive<u16>,
    /// A uid besides 0 that may bind ports below 1024 (repeatable).
    #[arg(long = "privileged-uid", value_name = "UID")]
    privileged_uids: Vec<u32>,
    /// A uid besides 0 that may open tap filters (repeatable).
    #[arg(long = "tap-uid", value_name = "UID")]
    tap_uids: Vec<u32>,
    /// A uid besides 0 that may claim the link exclusively (repeatable).
    #[arg(long = "exclusive-uid", value_name = "UID")]
    exclusive_uids: Vec<u32>,
    /// Do not answer ARP, ICMP echo, or unbound ports as the host.
    #[arg(long)]
    no_host_stack: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = Config::new(args.runtime_dir.unwrap_or_else(config::default_runtime_dir));
    if let (Some(ip), Some(gw)) = (args.ip, args.gateway) {
        config::check_gateway(ip, gw)?;
    }
    config.addrs = HostAddrs {
        ipv4: args.ip,
        gateway: args.gateway,
        ipv6_link_local: !args.no_ipv6,
    };
    config.ephemeral = args.ephemeral_ports;
    config.policy.privileged_uids.extend(args.privileged_uids);
    config.policy.tap_uids.extend(args.tap_uids);
    config.policy.exclusive_uids.extend(args.exclusive_uids);
    config.host_stack = !args.no_host_stack;
    let (_child, driver) = match (&args.driver_socket, &args.link) {
        (Some(path), _) => {
            let d = ChannelDriver::connect(path)
                .with_context(|| format!("connecting to the driver at {}", path.display()))?;
            (None, d)
        }
        (None, Some(spec)) => {
            let dir = config.runtime_dir.join("driver");
            netmux_netd::server::private_dir(&dir)?;
            let (child, d) = driver_link::start_driver(
                &driver_link::driver_binary(),
                spec,
                &dir.join("control.sock"),
            )
            .with_context(|| format!("starting a driver on {spec}"))?;
            tracing::info!(pid = child.pid(), %spec, "driver started");
            (Some(child), d)
        }
        (None, None) => anyhow::bail!("give --driver-socket or --link"),
    };
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    rt.block_on(async {
        let server = Server::bind(&config, Box::new(driver))?;
        tracing::info!(socket = %server.socket_path().display(), "netd listening");
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })
}
