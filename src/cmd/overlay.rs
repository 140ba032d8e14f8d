//! `netmux overlay create|ls|destroy`: overlays, virtual layer-2 networks carried between
//! hosts in VXLAN (illumos `dladm create-overlay`), on which instances live
//! (`netmux instance create --overlay NAME`). Where each overlay MAC lives comes from a
//! mapping backend; `files:PATH` is illumos varpd's files-plugin JSON, reloaded when it
//! changes (and on SIGHUP to netd); `etcd:URL[,URL]` keeps the same fields in etcd. `netmux overlay map ls|get|set|rm` shows and edits an
//! overlay's mappings through netd, which writes them to the backend and has the driver's
//! cache follow.

use std::process::ExitCode;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clap::{Args, Subcommand};
use netmux_client::{MappingChange, MappingEntry, OverlaySpec, OverlayView};
use netmux_netd::config::parse_mac;

use super::instance::{refused, Netd};
use super::{Refused, Run};

/// Overlays: virtual layer-2 networks across hosts.
#[derive(Debug, Subcommand)]
#[command(after_help = "Example:
  netmux overlay create blue --vni 42 --mapping files:/etc/netmux/blue.json --temporary
  netmux instance create web --overlay blue --ip 10.0.0.1/24 --temporary
  netmux overlay ls
  netmux overlay map set blue 02:b1:00:00:00:02 192.0.2.2:4789 --arp 10.0.0.2
  netmux overlay destroy blue")]
pub enum OverlayCommand {
    /// Create an overlay: a VXLAN network id, its UDP port and where its mappings come from.
    Create(Create),
    /// List overlays: VNI, port, MTU, mapping, state, instances and counters.
    Ls(List),
    /// Destroy an overlay no instance lives on.
    Destroy(Destroy),
    /// Show and edit an overlay's mappings (MAC -> underlay IP:PORT, proxy addresses).
    #[command(subcommand)]
    Map(MapCommand),
}

/// `overlay map`: an overlay's mappings, read from netd and changed at their backend.
#[derive(Debug, Subcommand)]
#[command(after_help = "Example:
  netmux overlay map ls blue
  netmux overlay map set blue 02:b1:00:00:00:02 192.0.2.2:4789 --arp 10.0.0.2
  netmux overlay map get blue 02:b1:00:00:00:02 --json
  netmux overlay map rm blue 02:b1:00:00:00:02")]
pub enum MapCommand {
    /// List every mapping of an overlay: MAC, underlay IP and port, proxy addresses.
    Ls(MapList),
    /// Show one MAC's mapping (exit status 1 when it has none).
    Get(MapGet),
    /// Add or replace a MAC's mapping; the drivers' cached mappings follow at once.
    #[command(after_help = "Example:
  netmux overlay map set blue 02:b1:00:00:00:02 192.0.2.2:4789 --arp 10.0.0.2
  netmux overlay map set blue 02:b1:00:00:00:03 192.0.2.3   # the overlay's own VXLAN port")]
    Set(MapSet),
    /// Remove a MAC's mapping (frames to it are dropped from then on).
    Rm(MapRm),
}

/// `overlay map ls`.
#[derive(Debug, Args)]
pub struct MapList {
    /// The overlay.
    name: String,
    /// Parseable: one JSON object per mapping, one per line, with the files plugin's field
    /// names (`mac`, `ip`, `port`, `arp`, `ndp`, `dhcp-proxy`).
    #[arg(short = 'p', long)]
    json: bool,
    #[command(flatten)]
    netd: Netd,
}

/// `overlay map get`.
#[derive(Debug, Args)]
pub struct MapGet {
    /// The overlay.
    name: String,
    /// The overlay MAC.
    #[arg(value_parser = parse_mac)]
    mac: [u8; 6],
    /// Parseable: one JSON object (see `map ls --json`).
    #[arg(short = 'p', long)]
    json: bool,
    #[command(flatten)]
    netd: Netd,
}

/// `overlay map set`.
#[derive(Debug, Args)]
pub struct MapSet {
    /// The overlay.
    name: String,
    /// The overlay MAC (unicast).
    #[arg(value_parser = parse_mac)]
    mac: [u8; 6],
    /// Where it lives: its VTEP's underlay IPv4 address and VXLAN port [default port: the
    /// overlay's].
    #[arg(value_name = "IP[:PORT]", value_parser = parse_target)]
    target: (Ipv4Addr, Option<u16>),
    /// The overlay IPv4 address proxy ARP answers with this MAC.
    #[arg(long, value_name = "A.B.C.D")]
    arp: Option<Ipv4Addr>,
    /// The overlay IPv6 address proxy NDP answers with this MAC.
    #[arg(long, value_name = "ADDR")]
    ndp: Option<Ipv6Addr>,
    /// The MAC this MAC's DHCP broadcasts are sent to.
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    dhcp_proxy: Option<[u8; 6]>,
    #[command(flatten)]
    netd: Netd,
}

/// `overlay map rm`.
#[derive(Debug, Args)]
pub struct MapRm {
    /// The overlay.
    name: String,
    /// The overlay MAC.
    #[arg(value_parser = parse_mac)]
    mac: [u8; 6],
    #[command(flatten)]
    netd: Netd,
}

/// `IP` or `IP:PORT`: an underlay IPv4 address (v4-mapped IPv6 accepted, as in the files
/// plugin) and an optional port of 1 to 65535.
fn parse_target(text: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    let (ip, port) = match text.rsplit_once(':') {
        // An IPv6 form without a port ("::ffff:192.0.2.1"): several colons, no brackets.
        Some((ip, port)) if !ip.contains(':') || ip.starts_with('[') => {
            (ip.trim_start_matches('[').trim_end_matches(']'), Some(port))
        }
        _ => (text, None),
    };
    let ip = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a,
        Ok(IpAddr::V6(a)) => a
            .to_ipv4_mapped()
            .ok_or_else(|| format!("{ip}: the underlay must be IPv4"))?,
        Err(_) => return Err(format!("{ip:?} is not an IPv4 address (IP or IP:PORT)")),
    };
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{p:?} is not a port (1 to 65535)")),
        })
        .transpose()?;
    Ok((ip, port))
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A mapping as one JSON object with the files plugin's field names.
fn entry_json(e: &MappingEntry) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("mac".into(), mac_text(e.mac).into());
    o.insert("ip".into(), e.ip.to_string().into());
    if let Some(p) = e.port {
        o.insert("port".into(), p.into());
    }
    if let Some(a) = e.arp {
        o.insert("arp".into(), a.to_string().into());
    }
    if let Some(a) = e.ndp {
        o.insert("ndp".into(), a.to_string().into());
    }
    if let Some(m) = e.dhcp_proxy {
        o.insert("dhcp-proxy".into(), mac_text(m).into());
    }
    serde_json::Value::Object(o)
}

/// Prints mappings as a table, or as JSON lines.
fn print_entries(entries: &[MappingEntry], json: bool) -> anyhow::Result<()> {
    if json {
        for e in entries {
            println!("{}", serde_json::to_string(&entry_json(e))?);
        }
        return Ok(());
    }
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    println!(
        "{:<17} {:<15} {:>5} {:<15} {:<25} DHCP-PROXY",
        "MAC", "IP", "PORT", "ARP", "NDP"
    );
    for e in entries {
        println!(
            "{:<17} {:<15} {:>5} {:<15} {:<25} {}",
            mac_text(e.mac),
            e.ip,
            dash(e.port.map(|p| p.to_string())),
            dash(e.arp.map(|a| a.to_string())),
            dash(e.ndp.map(|a| a.to_string())),
            dash(e.dhcp_proxy.map(mac_text)),
        );
    }
    Ok(())
}

impl Run for MapCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            MapCommand::Ls(c) => {
                let entries = c
                    .netd
                    .client()?
                    .overlay_mappings(&c.name, None)
                    .map_err(refused)?;
                print_entries(&entries, c.json)?;
            }
            MapCommand::Get(c) => {
                let entries = c
                    .netd
                    .client()?
                    .overlay_mappings(&c.name, Some(c.mac))
                    .map_err(refused)?;
                print_entries(&entries, c.json)?;
            }
            MapCommand::Set(c) => {
                let mut client = c.netd.client()?;
                let port = match c.target.1 {
                    Some(p) => p,
                    None => client
                        .list_overlays()
                        .map_err(refused)?
                        .iter()
                        .find(|o| o.spec.name == c.name)
                        .map(|o| o.spec.port)
                        .ok_or_else(|| Refused(format!("no overlay named {:?}", c.name)))?,
                };
                let entry = MappingEntry {
                    mac: c.mac,
                    ip: c.target.0,
                    port: Some(port),
                    arp: c.arp,
                    ndp: c.ndp,
                    dhcp_proxy: c.dhcp_proxy,
                };
                client
                    .change_overlay_mapping(&c.name, MappingChange::Set(entry))
                    .map_err(refused)?;
                println!(
                    "overlay {}: {} -> {}:{port}",
                    c.name,
                    mac_text(c.mac),
                    c.target.0
                );
            }
            MapCommand::Rm(c) => {
                c.netd
                    .client()?
                    .change_overlay_mapping(&c.name, MappingChange::Remove(c.mac))
                    .map_err(refused)?;
                println!("overlay {}: {} removed", c.name, mac_text(c.mac));
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `overlay create`.
#[derive(Debug, Args)]
pub struct Create {
    /// At most 31 characters of letters, digits, ':', '_' and '-'.
    name: String,
    /// Its VXLAN network id (0 to 16777215).
    #[arg(long, value_name = "N")]
    vni: u32,
    /// The UDP port VXLAN is received on and sent to.
    #[arg(long, value_name = "PORT", default_value_t = netmux_wire::vxlan::DEFAULT_PORT)]
    port: u16,
    /// Where its mappings come from: `files:/absolute/path.json` (illumos varpd's files
    /// format: MAC -> {"ip", "port", "arp", "ndp", "dhcp-proxy"}), or
    /// `etcd:http://HOST:PORT[,http://HOST:PORT]` (netd built with the `etcd` feature: every
    /// host's netd writes its own instances' entries there under a lease and watches the
    /// others').
    #[arg(long, value_name = "files:PATH|etcd:URL[,URL]")]
    mapping: String,
    /// Its MTU [default: the link's MTU less 50 bytes of VXLAN].
    #[arg(long, value_name = "M")]
    mtu: Option<u16>,
    /// Forget it when netd stops (otherwise netd keeps it in its --config file).
    #[arg(long)]
    temporary: bool,
    #[command(flatten)]
    netd: Netd,
}

/// `overlay ls`.
#[derive(Debug, Args)]
pub struct List {
    /// One JSON object per overlay, one per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    netd: Netd,
}

/// `overlay destroy`.
#[derive(Debug, Args)]
pub struct Destroy {
    /// The overlay.
    name: String,
    #[command(flatten)]
    netd: Netd,
}

impl Run for OverlayCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            OverlayCommand::Create(c) => c.run(),
            OverlayCommand::Ls(l) => l.run(),
            OverlayCommand::Destroy(d) => d.run(),
            OverlayCommand::Map(m) => m.run(),
        }
    }
}

impl Create {
    fn run(self) -> anyhow::Result<ExitCode> {
        let spec = OverlaySpec {
            name: self.name.clone(),
            vni: self.vni,
            port: self.port,
            mapping: self.mapping,
            mtu: self.mtu,
            temporary: self.temporary,
        };
        let mut client = self.netd.client()?;
        client.create_overlay(spec).map_err(refused)?;
        let list = client.list_overlays().map_err(refused)?;
        if let Some(o) = list.iter().find(|o| o.spec.name == self.name) {
            println!(
                "overlay {} created: vni {}, port {}, mtu {}, {} mappings",
                o.spec.name,
                o.spec.vni,
                o.spec.port,
                o.spec.mtu.unwrap_or(0),
                o.mappings
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The drop counters of an overlay as `reason=n,...`, or `-`.
fn drops(o: &OverlayView) -> String {
    if o.counters.dropped.is_empty() {
        return "-".into();
    }
    o.counters
        .dropped
        .iter()
        .map(|(why, n)| format!("{why}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl List {
    fn run(self) -> anyhow::Result<ExitCode> {
        let list = self.netd.client()?.list_overlays().map_err(refused)?;
        if self.json {
            for o in &list {
                println!("{}", serde_json::to_string(o)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<16} {:>8} {:>5} {:>5} {:>8} {:>10} {:>10} {:>8} {:>8} {:<16} STATE",
            "NAME", "VNI", "PORT", "MTU", "MAPPINGS", "RX", "TX", "MISSES", "ARP", "INSTANCES"
        );
        for o in &list {
            let instances = if o.instances.is_empty() {
                "-".to_string()
            } else {
                o.instances.join(",")
            };
            println!(
                "{:<16} {:>8} {:>5} {:>5} {:>8} {:>10} {:>10} {:>8} {:>8} {:<16} {}",
                o.spec.name,
                o.spec.vni,
                o.spec.port,
                o.spec.mtu.unwrap_or(0),
                o.mappings,
                o.counters.rx_frames,
                o.counters.tx_frames,
                o.counters.misses,
                o.counters.proxy_arp,
                instances,
                o.state
            );
            println!(
                "{:<16} mapping {}, dropped {}",
                "",
                o.spec.mapping,
                drops(o)
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Destroy {
    fn run(self) -> anyhow::Result<ExitCode> {
        self.netd
            .client()?
            .destroy_overlay(&self.name)
            .map_err(refused)?;
        println!("overlay {} destroyed", self.name);
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_an_ipv4_address_with_or_without_a_port() {
        let a = Ipv4Addr::new(192, 0, 2, 2);
        assert_eq!(parse_target("192.0.2.2:4789"), Ok((a, Some(4789))));
        assert_eq!(parse_target("192.0.2.2"), Ok((a, None)));
        assert_eq!(parse_target("::ffff:192.0.2.2"), Ok((a, None)));
        assert_eq!(parse_target("[::ffff:192.0.2.2]:8472"), Ok((a, Some(8472))));
        for bad in [
            "192.0.2.2:0",
            "192.0.2.2:70000",
            "host:1",
            "2001:db8::1",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
