//! `netmux instance create|ls|get|set|destroy`: network stack instances on netd's link, each
//! an independent host with its own MAC, addresses, ports, policy and clients.
//!
//! Creating, changing and destroying need root (or a uid netd's `--admin-uid` names); `ls`
//! and `get` show every instance to those, and only the asker's own (the default instance) to
//! anyone else. Output is for people by default; `ls -p -o FIELD,...` prints raw values
//! separated by `:` for scripts, and `--json` one object per instance.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use netmux_client::blocking::Client;
use netmux_client::{InstanceSpec, InstanceView, MacChoice};
use netmux_netd::config::{parse_mac, parse_port_range};

use super::{Refused, Run};

/// Instances: many independent hosts on one link.
#[derive(Debug, Subcommand)]
#[command(after_help = "Example:
  netmux instance create tenant-a --ip 192.0.2.10/24 --gateway 192.0.2.1
  netmux example udp-echo --port 7 -i tenant-a
  netmux instance ls
  netmux instance destroy tenant-a")]
pub enum InstanceCommand {
    /// Create an instance: its own MAC (generated unless --mac) or the link's (--shared-mac).
    Create(Create),
    /// List instances: name, MAC, addresses, clients, ports, frames and bytes each way.
    Ls(List),
    /// Show an instance's properties.
    Get(Get),
    /// Change an instance's property: `PROP=VALUE` (gateway, ephemeral-ports, join-uids,
    /// privileged-uids, tap-uids, exclusive-uids).
    Set(Set),
    /// Destroy an instance: its clients' sessions end and everything they held is freed.
    Destroy(Destroy),
}

/// Which netd to ask.
#[derive(Debug, Args)]
pub(crate) struct Netd {
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR", global = true)]
    runtime_dir: Option<PathBuf>,
}

impl Netd {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let dir = self
            .runtime_dir
            .clone()
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        Client::connect(&dir).map_err(|e| {
            if let Some(r) = e.refusal() {
                return Refused(format!("netd refused: {}", r.message)).into();
            }
            if e.nobody_listens() {
                return anyhow::anyhow!(
                    "{e} (is netd running with --runtime-dir {}?)",
                    dir.display()
                );
            }
            anyhow::Error::new(e)
        })
    }
}

/// `instance create`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  netmux instance create tenant-a --ip 192.0.2.10/24 --gateway 192.0.2.1
  netmux instance create tenant-b --shared-mac --ip 192.0.2.11/24 --temporary")]
pub struct Create {
    /// At most 31 characters of letters, digits, ':', '_' and '-'.
    name: String,
    /// Its own MAC (a unicast address) [default: one derived from the link's MAC and the
    /// name, the same after every restart].
    #[arg(long, value_name = "MAC", value_parser = parse_mac, conflicts_with = "shared_mac")]
    mac: Option<[u8; 6]>,
    /// Share the link's MAC, told apart by address (for switches that allow one MAC per port).
    #[arg(long)]
    shared_mac: bool,
    /// Its IPv4 address and prefix length: a host address of its network (not the network or
    /// broadcast address, not multicast, loopback or reserved); or `dhcp`: address, prefix,
    /// gateway and DNS servers from a DHCP server's lease, which netd renews while the
    /// instance lives and releases when it is destroyed or netd stops.
    #[arg(long, value_name = "A.B.C.D/N|dhcp", value_parser = netmux_netd::config::parse_host_ip)]
    ip: netmux_netd::config::HostIp,
    /// Its IPv4 default gateway (not with --ip dhcp: the lease gives it).
    #[arg(long, value_name = "G")]
    gateway: Option<Ipv4Addr>,
    /// Its ephemeral ports [default: netd's].
    #[arg(long, value_name = "A-B", value_parser = parse_port_range)]
    ephemeral_ports: Option<std::ops::RangeInclusive<u16>>,
    /// No IPv6 link-local address.
    #[arg(long, conflicts_with = "ip6")]
    no_ipv6: bool,
    /// Its global IPv6 address and prefix length, e.g. --ip6 2001:db8::10/64 (netd answers
    /// neighbour solicitations and echo requests for it; its clients bind ports on it); or
    /// `slaac`: an address from router advertisements (the prefix and the instance's own
    /// interface id). Either way a router advertisement's router is its default router.
    #[arg(long, value_name = "A::B/N|slaac", value_parser = netmux_netd::config::parse_host_ip6)]
    ip6: Option<netmux_netd::config::HostIp6>,
    /// A uid besides root that may join it (repeatable) [default: every uid].
    #[arg(long = "join-uid", value_name = "UID")]
    join_uids: Vec<u32>,
    /// Forget it when netd stops (otherwise netd keeps it in its --config file).
    #[arg(long)]
    temporary: bool,
    /// Live on this overlay (`netmux overlay create`) instead of the link.
    #[arg(long, value_name = "NAME")]
    overlay: Option<String>,
    #[command(flatten)]
    netd: Netd,
}

/// `instance ls`.
#[derive(Debug, Args)]
#[command(
    after_help = "Fields for -o: name, id, mac, shared, ip, gateway, ipv6, ephemeral, \
                        clients, ports, rx-frames, rx-bytes, tx-frames, tx-bytes, hairpin, \
                        temporary, ip6, ip-from (static or dhcp), ip6-from (static or slaac), \
                        gateway6.\nExample: netmux instance ls -p -o name,ip,clients"
)]
pub struct List {
    /// Raw values separated by ':', no header (with -o, these fields in this order).
    #[arg(short = 'p', long)]
    parseable: bool,
    /// The fields to print, comma-separated.
    #[arg(short = 'o', long, value_delimiter = ',', value_name = "FIELD,...")]
    output: Vec<String>,
    /// One JSON object per instance, one per line.
    #[arg(long, conflicts_with = "parseable")]
    json: bool,
    #[command(flatten)]
    netd: Netd,
}

/// `instance get`.
#[derive(Debug, Args)]
pub struct Get {
    /// The instance.
    name: String,
    /// Only these properties.
    props: Vec<String>,
    /// `NAME PROPERTY VALUE` lines separated by ':', no header.
    #[arg(short = 'p', long)]
    parseable: bool,
    #[command(flatten)]
    netd: Netd,
}

/// `instance set`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example: netmux instance set tenant-a ephemeral-ports=40000-40999\n         netmux instance set tenant-a ip=dhcp   (or ip=A.B.C.D/N: a static address again)"
)]
pub struct Set {
    /// The instance.
    name: String,
    /// `PROP=VALUE`, one or more.
    #[arg(required = true, value_name = "PROP=VALUE")]
    assignments: Vec<String>,
    #[command(flatten)]
    netd: Netd,
}

/// `instance destroy`.
#[derive(Debug, Args)]
pub struct Destroy {
    /// The instance.
    name: String,
    #[command(flatten)]
    netd: Netd,
}

impl Run for InstanceCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            InstanceCommand::Create(c) => c.run(),
            InstanceCommand::Ls(l) => l.run(),
            InstanceCommand::Get(g) => g.run(),
            InstanceCommand::Set(s) => s.run(),
            InstanceCommand::Destroy(d) => d.run(),
        }
    }
}

/// A refusal by netd is an input refused (exit 1); anything else could not be done (exit 2).
pub(crate) fn refused(e: netmux_client::ClientError) -> anyhow::Error {
    if e.refusal().is_some() {
        Refused(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

impl Create {
    fn run(self) -> anyhow::Result<ExitCode> {
        let (ipv6, slaac) = match self.ip6 {
            None => (None, false),
            Some(netmux_netd::config::HostIp6::Static(a, p)) => (Some((a.octets(), p)), false),
            Some(netmux_netd::config::HostIp6::Slaac) => (None, true),
        };
        let (ipv4, dhcp) = match self.ip {
            netmux_netd::config::HostIp::Static(a, p) => ((a.octets(), p), false),
            netmux_netd::config::HostIp::Dhcp => (([0; 4], 0), true),
        };
        if dhcp && self.gateway.is_some() {
            return Err(Refused(
                "--gateway does not go with --ip dhcp: the lease gives the gateway".into(),
            )
            .into());
        }
        let spec = InstanceSpec {
            name: self.name.clone(),
            mac: match (self.mac, self.shared_mac) {
                (_, true) => MacChoice::Shared,
                (Some(m), false) => MacChoice::Given(m),
                (None, false) => MacChoice::Generated,
            },
            ipv4,
            gateway: self.gateway.map(|g| g.octets()),
            ipv6_link_local: !self.no_ipv6,
            ephemeral: self.ephemeral_ports.map(|r| (*r.start(), *r.end())),
            join_uids: (!self.join_uids.is_empty()).then_some(self.join_uids),
            privileged_uids: Vec::new(),
            tap_uids: Vec::new(),
            exclusive_uids: Vec::new(),
            temporary: self.temporary,
            overlay: self.overlay.clone(),
            ipv6,
            dhcp,
            slaac,
        };
        let mut client = self.netd.client()?;
        client.create_instance(spec).map_err(refused)?;
        let list = client.list_instances().map_err(refused)?;
        if let Some(i) = list.iter().find(|i| i.name == self.name) {
            println!(
                "instance {} created: mac {}{}, ip {}",
                i.name,
                mac_text(i.mac),
                if i.shared_mac { " (the link's)" } else { "" },
                if i.dhcp && i.ipv4.is_none() {
                    "dhcp (leasing)".to_owned()
                } else {
                    ip_text(i.ipv4)
                },
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Destroy {
    fn run(self) -> anyhow::Result<ExitCode> {
        let mut client = self.netd.client()?;
        client.destroy_instance(&self.name).map_err(refused)?;
        println!("instance {} destroyed", self.name);
        Ok(ExitCode::SUCCESS)
    }
}

impl Set {
    fn run(self) -> anyhow::Result<ExitCode> {
        let mut client = self.netd.client()?;
        for a in &self.assignments {
            let Some((prop, value)) = a.split_once('=') else {
                return Err(Refused(format!("{a:?}: expected PROP=VALUE")).into());
            };
            client
                .set_instance_property(&self.name, prop, value)
                .map_err(refused)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Get {
    fn run(self) -> anyhow::Result<ExitCode> {
        let mut client = self.netd.client()?;
        let list = client.list_instances().map_err(refused)?;
        let i = list
            .iter()
            .find(|i| i.name == self.name)
            .ok_or_else(|| Refused(format!("no instance named {:?}", self.name)))?;
        let mut props: Vec<(String, String, &str)> = vec![
            ("mac".into(), mac_text(i.mac), "r-"),
            ("shared-mac".into(), i.shared_mac.to_string(), "r-"),
            // The default instance's address is netd's --ip; another's is `dhcp` or static.
            (
                "ip".into(),
                ip_text(i.ipv4),
                if i.id == 0 { "r-" } else { "rw" },
            ),
            ("ip-from".into(), ip_from(i.dhcp).into(), "r-"),
            ("temporary".into(), i.temporary.to_string(), "r-"),
        ];
        props.extend(i.properties.iter().map(|(k, v)| {
            // netd's settings (limits.*, timeouts.*) come from its configuration file.
            let perm = if k.contains('.') { "r-" } else { "rw" };
            (k.clone(), v.clone(), perm)
        }));
        for p in &self.props {
            if !props.iter().any(|(k, _, _)| k == p) {
                return Err(Refused(format!("unknown property: {p}")).into());
            }
        }
        let shown: Vec<_> = props
            .iter()
            .filter(|(k, _, _)| self.props.is_empty() || self.props.contains(k))
            .collect();
        let mut out = String::new();
        if self.parseable {
            for (k, v, _) in shown {
                out.push_str(&format!("{}:{k}:{v}\n", i.name));
            }
        } else {
            out.push_str(&format!(
                "{:<16} {:<16} {:<4} {}\n",
                "INSTANCE", "PROPERTY", "PERM", "VALUE"
            ));
            for (k, v, perm) in shown {
                out.push_str(&format!("{:<16} {:<16} {:<4} {v}\n", i.name, k, perm));
            }
        }
        std::io::stdout()
            .write_all(out.as_bytes())
            .context("writing")?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The fields `ls` knows, in default order.
const FIELDS: [&str; 20] = [
    "name",
    "id",
    "mac",
    "shared",
    "ip",
    "gateway",
    "ipv6",
    "ephemeral",
    "clients",
    "ports",
    "rx-frames",
    "rx-bytes",
    "tx-frames",
    "tx-bytes",
    "hairpin",
    "temporary",
    "ip6",
    "ip-from",
    "ip6-from",
    "gateway6",
];

/// The fields of the table for people.
const TABLE: [&str; 9] = [
    "name",
    "mac",
    "ip",
    "clients",
    "ports",
    "rx-frames",
    "rx-bytes",
    "tx-frames",
    "tx-bytes",
];

/// Where an instance's IPv4 address comes from.
fn ip_from(dhcp: bool) -> &'static str {
    if dhcp {
        "dhcp"
    } else {
        "static"
    }
}

fn field(i: &InstanceView, f: &str) -> String {
    let c = i.counters.clone().unwrap_or_default();
    match f {
        "name" => i.name.clone(),
        "id" => i.id.to_string(),
        "mac" => mac_text(i.mac),
        "shared" => i.shared_mac.to_string(),
        "ip" => ip_text(i.ipv4),
        "ip-from" => ip_from(i.dhcp).into(),
        "ip6-from" => if i.slaac { "slaac" } else { "static" }.into(),
        "gateway6" => i
            .gateway6
            .map_or("-".into(), |g| std::net::Ipv6Addr::from(g).to_string()),
        "gateway" => i
            .gateway
            .map_or("-".into(), |g| Ipv4Addr::from(g).to_string()),
        "ipv6" => i
            .ipv6_link_local
            .map_or("-".into(), |a| std::net::Ipv6Addr::from(a).to_string()),
        "ephemeral" => format!("{}-{}", i.ephemeral.0, i.ephemeral.1),
        "clients" => i.clients.to_string(),
        "ports" => i.ports.to_string(),
        "rx-frames" => c.rx_frames.to_string(),
        "rx-bytes" => c.rx_bytes.to_string(),
        "tx-frames" => c.tx_frames.to_string(),
        "tx-bytes" => c.tx_bytes.to_string(),
        "hairpin" => c.hairpin.to_string(),
        "temporary" => i.temporary.to_string(),
        "ip6" => i
            .ipv6
            .iter()
            .map(|(a, p)| format!("{}/{p}", std::net::Ipv6Addr::from(*a)))
            .next()
            .unwrap_or_else(|| "-".into()),
        _ => String::new(),
    }
}

impl List {
    fn run(self) -> anyhow::Result<ExitCode> {
        for f in &self.output {
            if !FIELDS.contains(&f.as_str()) {
                return Err(Refused(format!(
                    "unknown field: {f} (fields: {})",
                    FIELDS.join(", ")
                ))
                .into());
            }
        }
        let mut client = self.netd.client()?;
        let list = client.list_instances().map_err(refused)?;
        let mut out = String::new();
        if self.json {
            for i in &list {
                out.push_str(&serde_json::to_string(i)?);
                out.push('\n');
            }
        } else {
            let fields: Vec<&str> = if self.output.is_empty() {
                if self.parseable {
                    FIELDS.to_vec()
                } else {
                    TABLE.to_vec()
                }
            } else {
                self.output.iter().map(String::as_str).collect()
            };
            let parseable = self.parseable;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    fields
                        .iter()
                        .map(|f| match (*f, parseable, i.dhcp) {
                            // For people: the address and that a lease gave it.
                            ("ip", false, true) => format!("{} (dhcp)", field(i, f)),
                            _ => field(i, f),
                        })
                        .collect()
                })
                .collect();
            if self.parseable {
                for r in rows {
                    out.push_str(&r.join(":"));
                    out.push('\n');
                }
            } else {
                let mut widths: Vec<usize> = fields.iter().map(|f| f.len()).collect();
                for r in &rows {
                    for (w, c) in widths.iter_mut().zip(r) {
                        *w = (*w).max(c.len());
                    }
                }
                let line = |cells: Vec<String>| {
                    let mut l = String::new();
                    for (c, w) in cells.iter().zip(&widths) {
                        l.push_str(&format!("{c:<w$}  "));
                    }
                    l.trim_end().to_owned() + "\n"
                };
                out.push_str(&line(fields.iter().map(|f| f.to_uppercase()).collect()));
                for r in rows {
                    out.push_str(&line(r));
                }
            }
        }
        std::io::stdout()
            .write_all(out.as_bytes())
            .context("writing")?;
        Ok(ExitCode::SUCCESS)
    }
}

fn mac_text(m: [u8; 6]) -> String {
    netmux_compiler::builders::mac_text(&m)
}

fn ip_text(a: Option<([u8; 4], u8)>) -> String {
    a.map_or("-".into(), |(a, p)| format!("{}/{p}", Ipv4Addr::from(a)))
}
