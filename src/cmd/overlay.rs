//! `netmux overlay create|ls|destroy`: overlays, virtual layer-2 networks carried between
//! hosts in VXLAN (illumos `dladm create-overlay`), on which instances live
//! (`netmux instance create --overlay NAME`). Where each overlay MAC lives comes from a
//! mapping backend; `files:PATH` is illumos varpd's files-plugin JSON, reloaded when it
//! changes.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use netmux_client::{OverlaySpec, OverlayView};

use super::instance::{refused, Netd};
use super::Run;

/// Overlays: virtual layer-2 networks across hosts.
#[derive(Debug, Subcommand)]
#[command(after_help = "Example:
  netmux overlay create blue --vni 42 --mapping files:/etc/netmux/blue.json --temporary
  netmux instance create web --overlay blue --ip 10.0.0.1/24 --temporary
  netmux overlay ls
  netmux overlay destroy blue")]
pub enum OverlayCommand {
    /// Create an overlay: a VXLAN network id, its UDP port and where its mappings come from.
    Create(Create),
    /// List overlays: VNI, port, MTU, mapping, state, instances and counters.
    Ls(List),
    /// Destroy an overlay no instance lives on.
    Destroy(Destroy),
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
    /// format: MAC -> {"ip", "port", "arp", "ndp", "dhcp-proxy"}).
    #[arg(long, value_name = "files:PATH")]
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
