//! `netmux example udp-echo|http --port N [--runtime-dir DIR]`: two small netd clients that
//! run smoltcp on a netmux queue, for people to point real applications at.
//!
//! Each one connects to netd (in `--runtime-dir`, default
//! [`netmux_netd::config::default_runtime_dir`]), binds its port, prints exactly one line
//! `listening on udp port N` / `listening on tcp port N` on stdout once the port's filters are
//! in force, and serves until SIGINT or SIGTERM. A port netd refuses (in use, privileged) is
//! reported with netd's reason and exit status 1. When netd goes away (the driver closes the
//! queue, or the session ends), the example connects again with backoff, binds its port again
//! and carries on over the new queue: smoltcp's connections survive the pause. If netd does
//! not come back within `--reconnect-for`, it says so and exits 1.
//!
//! [`udp_echo`] sends every datagram back to its sender; [`http`] answers requests with a fixed
//! page, streams `GET /bytes/N` bodies and swallows `POST /sink` uploads (for bulk transfers
//! whose bytes can be checked), on [`http::SOCKETS`] sockets so many connections are
//! served at once.

pub mod http;
pub mod udp_echo;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use netmux_client::blocking::Reconnecting;
use netmux_client::device::QueueDevice;
use netmux_client::{ClientError, ConnectOptions, Transport};
use netmux_proto::client::HostConfig;
use netmux_ring::QueueError;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address,
};

use super::{driver, Refused, Run};

/// The longest the examples sleep between looks at the stop flag: how quickly a signal is
/// acted on when no traffic arrives.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often an idle example asks netd whether its session is still there (a netd killed
/// outright cannot tell the driver to close the queue).
const SESSION_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping example keeps polling so its closing segments (FIN, RST) get out.
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// The example clients.
#[derive(Debug, clap::Subcommand)]
pub enum ExampleCommand {
    /// A UDP echo server: every datagram goes back to its sender.
    UdpEcho(UdpEchoArgs),
    /// An HTTP server (smoltcp TCP): a fixed page; `GET /bytes/N` streams N bytes of a known
    /// pattern; `POST /sink` reads a body and answers with its length and FNV-1a hash.
    Http(ExampleArgs),
}

/// Where the example listens and which netd it asks.
#[derive(Debug, clap::Args)]
pub struct ExampleArgs {
    /// The port to bind (below 1024 only if netd's policy allows this user).
    #[arg(long, value_name = "N")]
    pub port: u16,
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// The instance to join [default: the default instance].
    #[arg(long, short = 'i', value_name = "NAME")]
    pub instance: Option<String>,
    /// Seconds to keep trying to reach netd again when it goes away (a restart), binding the
    /// port again, before giving up; e.g. --reconnect-for 5.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = super::ls::parse_timeout)]
    pub reconnect_for: f64,
    /// Bytes of received frames its queue holds (K, M, G: 1024-based); large rings carry a
    /// bulk transfer at the link's speed, netd's default (128 KiB) suits a quiet client.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_buf)]
    pub rxbuf: u64,
    /// Bytes of frames to transmit its queue holds (K, M, G: 1024-based).
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_buf)]
    pub txbuf: u64,
}

/// udp-echo's arguments: where it listens, and the multicast groups it joins on its port.
#[derive(Debug, clap::Args)]
pub struct UdpEchoArgs {
    /// Where it listens.
    #[command(flatten)]
    pub common: ExampleArgs,
    /// A multicast group to join on the port (IPv4 or IPv6, repeatable): datagrams sent to
    /// it are echoed too, from the host's own address; e.g. --group 239.1.2.3 --group ff15::1234.
    #[arg(long, value_name = "ADDR")]
    pub group: Vec<std::net::IpAddr>,
}

/// A ring size as `--rxbuf`/`--txbuf` take it.
fn parse_buf(text: &str) -> Result<u64, String> {
    netmux_netd::service::parse_size(text)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?} is not a size (bytes, or K, M, G, with an optional B)"))
}

impl Run for ExampleCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        driver::init_logging();
        let stop = netmux_driver::cli::stop_on_signals()?;
        match self {
            ExampleCommand::UdpEcho(args) => udp_echo::serve(&args, &stop)?,
            ExampleCommand::Http(args) => http::serve(&args, &stop)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A client's session with netd, its port bound, and a smoltcp interface on its queue.
pub struct Station {
    /// The session (kept open: closing it gives the port back), bound again after netd
    /// restarts.
    pub client: Reconnecting,
    /// The queue as a smoltcp device.
    pub device: QueueDevice,
    /// The host's interface, with netd's address and gateway.
    pub iface: Interface,
    /// The bound port.
    pub port: u16,
    /// When the session with netd was last seen alive.
    last_check: std::time::Instant,
    /// How long to try to reach netd again.
    reconnect_for: Duration,
    /// The host's configuration at hello, to notice a netd that came back as another host.
    host: netmux_proto::client::HostConfig,
}

impl Station {
    /// Connects to netd, binds `port` for `transport`, opens the queue and builds the interface.
    /// A refusal by netd becomes [`Refused`] with netd's message.
    pub fn open(args: &ExampleArgs, transport: Transport) -> anyhow::Result<Station> {
        let dir = args
            .runtime_dir
            .clone()
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        let options = ConnectOptions {
            instance: args.instance.clone(),
            rxbuf: Some(args.rxbuf),
            txbuf: Some(args.txbuf),
            ..ConnectOptions::default()
        };
        let mut client = Reconnecting::connect_with(&dir, &options).map_err(refusal)?;
        let port = client.bind_port(transport, args.port).map_err(refusal)?;
        let host = client.client().host().clone();
        if host.ipv4.is_none() && host.ipv6.is_empty() {
            return Err(Refused(
                "netd has no IPv4 or global IPv6 address for this host (start it with --ip or \
                 --ip6)"
                    .into(),
            )
            .into());
        }
        let mut device = QueueDevice::new(client.open_queue().map_err(refusal)?, host.link.mtu);
        let iface = interface(&host, &mut device);
        let ip = host.ipv4.map(|(a, _)| std::net::Ipv4Addr::from(a));
        let ip6 = host.ipv6.first().map(|(a, _)| std::net::Ipv6Addr::from(*a));
        tracing::info!(port, ip = ?ip, ip6 = ?ip6, "bound through netd");
        Ok(Station {
            client,
            device,
            iface,
            port,
            last_check: std::time::Instant::now(),
            reconnect_for: Duration::from_secs_f64(args.reconnect_for),
            host,
        })
    }

    /// Prints the one line a script waits for, and flushes it.
    pub fn announce(&self, transport: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {transport} port {}", self.port)?;
        out.flush()?;
        Ok(())
    }

    /// One turn: let smoltcp process what arrived and send what is due.
    pub fn poll(&mut self, sockets: &mut SocketSet<'_>) {
        self.iface.poll(Instant::now(), &mut self.device, sockets);
        if let Some(mtu) = self.device.take_path_mtu() {
            self.lower_mtu(mtu);
        }
    }

    /// Path-MTU discovery (RFC 1191, RFC 8201), which smoltcp does not do: an ICMP
    /// "fragmentation needed" or an ICMPv6 "packet too big" (never below 1,280 bytes) about one
    /// of this client's datagrams named a smaller next-hop MTU, so the interface is made again
    /// with it (smoltcp reads the MTU when an interface is made; the sockets and their
    /// connections are kept, and what was lost is sent again in smaller segments). One path MTU
    /// for every destination and both families: these examples mostly talk to one peer.
    fn lower_mtu(&mut self, mtu: u16) {
        tracing::info!(
            from = self.device.mtu(),
            to = mtu,
            "a router on the path needs smaller packets: lowering the MTU"
        );
        self.device.set_mtu(mtu);
        self.iface = interface(&self.host, &mut self.device);
    }

    /// Sleeps until a frame may be waiting, smoltcp has a timer due, or [`MAX_IDLE_WAIT`]
    /// passes. When netd went away (the driver closed the queue, or the session ended), it
    /// reconnects ([`Station::reconnect`]); an error only when that failed.
    pub fn wait(&mut self, sockets: &SocketSet<'_>, stop: &AtomicBool) -> anyhow::Result<()> {
        let delay = self
            .iface
            .poll_delay(Instant::now(), sockets)
            .map_or(MAX_IDLE_WAIT, |d| Duration::from_micros(d.total_micros()))
            .min(MAX_IDLE_WAIT);
        let gone = match self.device.wait(Some(delay)) {
            Ok(()) => None,
            Err(QueueError::Closed) => Some("the driver closed this client's queue".to_owned()),
            Err(e) => return Err(anyhow::anyhow!("waiting on the queue: {e}")),
        };
        let gone = gone.or_else(|| {
            self.device
                .queue()
                .is_closed()
                .then(|| "the driver closed this client's queue".to_owned())
        });
        let gone = gone.or_else(|| {
            if self.last_check.elapsed() < SESSION_CHECK_INTERVAL {
                return None;
            }
            self.last_check = std::time::Instant::now();
            self.client
                .client()
                .stats()
                .err()
                .map(|e| format!("the session ended: {e}"))
        });
        match gone {
            Some(why) => self.reconnect(&why, stop),
            None => Ok(()),
        }
    }

    /// netd went away (`why`): connects again with backoff for at most `--reconnect-for`,
    /// binds the port again, and carries on over the new queue. Prints how long the pause was.
    fn reconnect(&mut self, why: &str, stop: &AtomicBool) -> anyhow::Result<()> {
        tracing::warn!(port = self.port, "netd went away ({why}); connecting again");
        let start = std::time::Instant::now();
        let queue = match self.client.reconnect(self.reconnect_for, || stopping(stop)) {
            Ok(Some(queue)) => queue,
            Ok(None) => return Err(anyhow::anyhow!("the queue was not opened again")),
            Err(_) if stopping(stop) => return Ok(()),
            Err(e) => {
                return Err(Refused(format!(
                    "netd stopped ({why}) and did not take this client back within {:.0} s: {}",
                    self.reconnect_for.as_secs_f64(),
                    netmux_netd::run::error_text(&e)
                ))
                .into())
            }
        };
        self.device.replace_queue(queue);
        self.last_check = std::time::Instant::now();
        if self.client.client().host() != &self.host {
            // Another host now: the connections under way cannot survive, but new ones work.
            tracing::warn!("netd came back with another host configuration; updating it");
            let host = self.client.client().host().clone();
            self.iface
                .set_hardware_addr(HardwareAddress::Ethernet(EthernetAddress(host.link.mac)));
            self.iface.update_ip_addrs(|addrs| {
                addrs.clear();
                for a in host_addresses(&host) {
                    let _ = addrs.push(a);
                }
            });
            self.host = host;
        }
        let pause = start.elapsed();
        tracing::info!(
            port = self.port,
            pause_ms = pause.as_millis() as u64,
            "netd is back: the port is bound again and the queue open"
        );
        Ok(())
    }

    /// Polls for [`CLOSE_LINGER`] so closing segments get out, then logs the counters.
    pub fn finish(mut self, sockets: &mut SocketSet<'_>) {
        let start = std::time::Instant::now();
        while start.elapsed() < CLOSE_LINGER {
            self.poll(sockets);
            let waited = self.device.wait(Some(Duration::from_millis(10)));
            if waited.is_err() || self.device.queue().is_closed() {
                break;
            }
        }
        if let Ok(c) = self.client.client().stats() {
            let rejected: u64 = c.tx_rejected.iter().map(|(_, n)| n).sum();
            tracing::info!(
                rx_frames = c.rx_frames,
                rx_bytes = c.rx_bytes,
                tx_frames = c.tx_frames,
                tx_bytes = c.tx_bytes,
                tx_rejected = rejected,
                "the driver's counters for this queue"
            );
        }
        let counters = self.device.counters();
        tracing::info!(
            rx_frames = counters.rx_frames,
            tx_frames = counters.tx_frames,
            tx_rejected = counters.tx_rejected,
            tx_dropped = counters.tx_dropped,
            "stopped"
        );
    }
}

/// Whether a stop was asked for.
pub fn stopping(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}

/// netd's refusals become [`Refused`] (exit status 1, netd's message); other failures stay
/// errors.
fn refusal(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(r) => Refused(r.message).into(),
        other => anyhow::Error::new(other),
    }
}

/// The host's addresses as smoltcp's interface holds them: IPv4, then the IPv6 link-local
/// address (a /64), then the global IPv6 addresses.
fn host_addresses(host: &HostConfig) -> Vec<IpCidr> {
    let v4 = host
        .ipv4
        .map(|(ip, prefix)| IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), prefix));
    let ll = host
        .ipv6_link_local
        .map(|a| IpCidr::new(IpAddress::Ipv6(Ipv6Address::from(a)), 64));
    let global = host
        .ipv6
        .iter()
        .map(|&(a, prefix)| IpCidr::new(IpAddress::Ipv6(Ipv6Address::from(a)), prefix));
    v4.into_iter().chain(ll).chain(global).collect()
}

/// A smoltcp interface on `device` with the host's MAC, its addresses (IPv4 and IPv6, so the
/// examples serve both families on one socket) and its default routers.
fn interface(host: &HostConfig, device: &mut QueueDevice) -> Interface {
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(host.link.mac)));
    let mut iface = Interface::new(config, device, Instant::now());
    iface.update_ip_addrs(|addrs| {
        // Room for IPv4, the link-local and two global addresses (`iface-max-addr-count-4`).
        for a in host_addresses(host) {
            if addrs.push(a).is_err() {
                tracing::warn!(address = %a, "the interface has no room for this address");
            }
        }
    });
    if let Some(gw) = host.gateway {
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(gw[0], gw[1], gw[2], gw[3]));
    }
    if let Some(gw) = host.ipv6_gateway {
        let _ = iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Address::from(gw));
    }
    iface
}
