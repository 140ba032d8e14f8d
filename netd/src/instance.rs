//! Network stack instances in netd (FreeBSD VIMAGE, illumos zones' netstacks): each an
//! independent host on the link, with its own MAC and addresses, port space, policy, host
//! duties and clients. The default instance is the host netmux has always been; a client that
//! names no instance joins it.
//!
//! This module holds what an instance is (its [`Instance`] state, the rules for names and
//! MACs, its properties) and how instances are kept in netd's configuration file
//! ([`InstancesFile`]); [`crate::service`] decides what creating, joining and destroying one
//! means for sessions and the driver.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use netmux_proto::client::{HostConfig, InstanceSpec, MacChoice};
use netmux_proto::driver::{InstanceId, InstanceInfo};
use netmux_proto::LinkInfo;
use serde::{Deserialize, Serialize};

use crate::config::{link_local_from_mac, opaque_link_local};
use crate::core::{Core, Policy, PortTable};
use crate::filters::HostIdentity;

/// The longest instance name: as a zone's or an interface's, short enough for every table.
pub const MAX_NAME_LEN: usize = 31;

/// Why an instance request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// The name is empty, too long, or has a character outside `[A-Za-z0-9:_-]`.
    #[error(
        "instance name {0:?}: at most {MAX_NAME_LEN} characters of letters, digits, ':', '_' and '-'"
    )]
    BadName(String),
    /// Another instance has the name.
    #[error("an instance named {0:?} exists")]
    Exists(String),
    /// No instance has the name.
    #[error("no instance named {0:?}")]
    NoSuchInstance(String),
    /// The MAC is not a unicast address, or another instance has it.
    #[error("MAC {0}: {1}")]
    BadMac(String, &'static str),
    /// The address is not a host address of its network, or another instance has it.
    #[error("address {0}: {1}")]
    BadAddress(String, &'static str),
    /// A property that does not exist, or cannot change.
    #[error("{0}")]
    Property(String),
}

/// Checks an instance name.
pub fn check_name(name: &str) -> Result<(), InstanceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InstanceError::BadName(name.to_owned()))
    }
}

/// A MAC for an instance of its own: locally administered and unicast, derived from the link's
/// MAC and the name, so an instance keeps its MAC across netd restarts (FNV-1a over both).
pub fn generated_mac(link_mac: [u8; 6], name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in link_mac.iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // Locally administered (bit 1), unicast (bit 0 clear).
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The one check of a host address ([`crate::config::check_host_address`]), as an instance's
/// error.
pub fn check_host_address(a: Ipv4Addr, prefix: u8) -> Result<(), InstanceError> {
    crate::config::check_host_address(a, prefix).map_err(|e| match e {
        crate::config::ConfigError::NotAHostAddress { address, why } => {
            InstanceError::BadAddress(address, why)
        }
        _ => InstanceError::BadAddress(format!("{a}/{prefix}"), "not a host's address"),
    })
}

/// One instance as netd holds it.
#[derive(Debug)]
pub struct Instance {
    /// Its id (the driver's too).
    pub id: InstanceId,
    /// What it was created with (kept in the configuration file unless temporary).
    pub spec: InstanceSpec,
    /// Its sessions, ports and policy.
    pub core: Core,
    /// Its identity: MAC and addresses.
    pub host: HostIdentity,
    /// What its clients learn at hello.
    pub host_config: HostConfig,
    /// Whether its MAC is the link's.
    pub shared_mac: bool,
    /// Told to the driver: sessions may join it.
    pub ready: bool,
    /// Being destroyed: no new session joins it and no port is bound in it.
    pub condemned: bool,
    /// The VNI of the overlay it lives on, if any.
    pub overlay: Option<u32>,
}

impl Instance {
    /// An instance on a link with these properties. Checks the name, the MAC and the address
    /// (against nothing else: the caller checks they are not another instance's).
    pub fn new(
        id: InstanceId,
        spec: InstanceSpec,
        link: LinkInfo,
        mut policy: Policy,
        default_ephemeral: RangeInclusive<u16>,
    ) -> Result<Instance, InstanceError> {
        check_name(&spec.name)?;
        // With DHCP the address, prefix and gateway come with a lease (none until then).
        let ipv4 = if spec.dhcp {
            None
        } else {
            let (addr, prefix) = (Ipv4Addr::from(spec.ipv4.0), spec.ipv4.1);
            check_host_address(addr, prefix)?;
            Some((addr, prefix))
        };
        if spec.slaac && spec.ipv6.is_some() {
            return Err(InstanceError::Property(
                "ip6: slaac or a static address, not both".into(),
            ));
        }
        if spec.slaac && !spec.ipv6_link_local {
            return Err(InstanceError::Property(
                "ip6 slaac needs the IPv6 link-local address (not --no-ipv6)".into(),
            ));
        }
        let (mac, shared_mac) = match spec.mac {
            MacChoice::Generated => (generated_mac(link.mac, &spec.name), false),
            MacChoice::Given(m) => {
                if m[0] & 1 != 0 || m == [0; 6] {
                    return Err(InstanceError::BadMac(
                        mac_text(m),
                        "an instance's MAC must be a unicast address",
                    ));
                }
                (m, m == link.mac)
            }
            MacChoice::Shared => (link.mac, true),
        };
        let ephemeral = spec.ephemeral.map_or(default_ephemeral, |(lo, hi)| lo..=hi);
        if ephemeral.is_empty() || *ephemeral.start() == 0 {
            return Err(InstanceError::Property(format!(
                "ephemeral ports {}-{}: need a non-empty range of ports above 0",
                ephemeral.start(),
                ephemeral.end()
            )));
        }
        apply_uids(&mut policy, &spec);
        // A MAC of its own: the usual EUI-64 address; a shared one: an opaque id of its own.
        let ipv6 = spec.ipv6_link_local.then(|| {
            if shared_mac {
                opaque_link_local(mac, &spec.name)
            } else {
                link_local_from_mac(mac)
            }
        });
        let global = match spec.ipv6 {
            Some((a, p)) => {
                let a = std::net::Ipv6Addr::from(a);
                crate::config::check_host_address6(a, p).map_err(|e| match e {
                    crate::config::ConfigError::NotAHostAddress { address, why } => {
                        InstanceError::BadAddress(address, why)
                    }
                    _ => InstanceError::BadAddress(format!("{a}/{p}"), "not a host's address"),
                })?;
                Some((a, p))
            }
            None => None,
        };
        let host = HostIdentity {
            mac,
            ipv4: ipv4.map(|(a, _)| a),
            ipv6,
            ipv6_global: global.map(|(a, _)| a),
        };
        let host_config = HostConfig {
            link: LinkInfo { mac, mtu: link.mtu },
            ipv4: ipv4.map(|(a, p)| (a.octets(), p)),
            gateway: if spec.dhcp { None } else { spec.gateway },
            ipv6_link_local: ipv6.map(|a| a.octets()),
            dns_servers: Vec::new(),
            ipv6: global.map(|(a, p)| (a.octets(), p)).into_iter().collect(),
            ipv6_gateway: None,
        };
        Ok(Instance {
            id,
            core: Core::new(policy, PortTable::new(ephemeral)),
            spec,
            host,
            host_config,
            shared_mac,
            ready: false,
            condemned: false,
            overlay: None,
        })
    }

    /// The instance as the driver needs to know it.
    pub fn driver_info(&self) -> InstanceInfo {
        InstanceInfo {
            instance: self.id,
            mac: self.host.mac,
            own_mac: !self.shared_mac,
            ipv4: self.host.ipv4.iter().map(|a| a.octets()).collect(),
            ipv6: self
                .host
                .ipv6_addresses()
                .iter()
                .map(|a| a.octets())
                .collect(),
            overlay: self.overlay,
        }
    }

    /// The changeable properties and their values, as `netmux instance get` shows them.
    pub fn properties(&self) -> Vec<(String, String)> {
        let policy = self.core.policy();
        let uids = |set: &BTreeSet<u32>| {
            if set.is_empty() {
                "-".to_owned()
            } else {
                set.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            }
        };
        let ephemeral = self.core.ports().ephemeral();
        vec![
            (
                "gateway".into(),
                self.host_config
                    .gateway
                    .map_or("-".into(), |g| Ipv4Addr::from(g).to_string()),
            ),
            (
                "ephemeral-ports".into(),
                format!("{}-{}", ephemeral.start(), ephemeral.end()),
            ),
            (
                "join-uids".into(),
                policy.join_uids.as_ref().map_or("all".into(), uids),
            ),
            ("privileged-uids".into(), uids(&policy.privileged_uids)),
            ("tap-uids".into(), uids(&policy.tap_uids)),
            ("exclusive-uids".into(), uids(&policy.exclusive_uids)),
        ]
    }

    /// Changes a property (see [`Instance::properties`] for the names). MAC and addresses are
    /// fixed for an instance's life: every filter holds them.
    pub fn set_property(&mut self, name: &str, value: &str) -> Result<(), InstanceError> {
        let bad = |why: &str| InstanceError::Property(format!("{name}={value}: {why}"));
        match name {
            "gateway" => {
                let g = if value == "-" || value.is_empty() {
                    None
                } else {
                    Some(
                        value
                            .parse::<Ipv4Addr>()
                            .map_err(|_| bad("not an IPv4 address"))?
                            .octets(),
                    )
                };
                self.spec.gateway = g;
                self.host_config.gateway = g;
            }
            "ephemeral-ports" => {
                let range = crate::config::parse_port_range(value)
                    .map_err(|e| InstanceError::Property(format!("{name}={value}: {e}")))?;
                let (lo, hi) = (*range.start(), *range.end());
                self.core.ports_mut().set_ephemeral(lo..=hi);
                self.spec.ephemeral = Some((lo, hi));
            }
            "join-uids" => {
                self.spec.join_uids = if value == "all" {
                    None
                } else {
                    Some(parse_uids(value).map_err(|e| bad(&e))?)
                };
            }
            "privileged-uids" => {
                self.spec.privileged_uids = parse_uids(value).map_err(|e| bad(&e))?
            }
            "tap-uids" => self.spec.tap_uids = parse_uids(value).map_err(|e| bad(&e))?,
            "exclusive-uids" => {
                self.spec.exclusive_uids = parse_uids(value).map_err(|e| bad(&e))?
            }
            setting if setting.starts_with("limits.") || setting.starts_with("timeouts.") => {
                return Err(InstanceError::Property(format!(
                    "{setting} is a setting of netd's configuration file (the [limits] and \
                     [timeouts] tables of its --config file), read when netd starts"
                )))
            }
            "mac" | "ip" | "ipv4" | "name" | "shared-mac" | "temporary" | "ip6" => {
                return Err(InstanceError::Property(format!(
                    "property {name} is read-only (destroy and create the instance to change it)"
                )))
            }
            other => {
                return Err(InstanceError::Property(format!(
                    "unknown property: {other} (properties: ip (dhcp or A.B.C.D/N, not of the \
                     default instance), gateway, ephemeral-ports, join-uids, privileged-uids, \
                     tap-uids, exclusive-uids)"
                )))
            }
        }
        apply_uids(self.core.policy_mut(), &self.spec);
        Ok(())
    }
}

fn apply_uids(policy: &mut Policy, spec: &InstanceSpec) {
    policy.join_uids = spec.join_uids.as_ref().map(|u| u.iter().copied().collect());
    policy.privileged_uids = spec.privileged_uids.iter().copied().collect();
    policy.tap_uids = spec.tap_uids.iter().copied().collect();
    policy.exclusive_uids = spec.exclusive_uids.iter().copied().collect();
}

/// `1000,1001` or `-` (nobody).
fn parse_uids(text: &str) -> Result<Vec<u32>, String> {
    if text == "-" || text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|u| {
            u.trim()
                .parse()
                .map_err(|_| format!("{u:?} is not a uid (comma-separated numbers, or -)"))
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: [u8; 6]) -> String {
    netmux_compiler::builders::mac_text(&m)
}

/// netd's configuration file (`--config FILE`, TOML): the settings of
/// [`crate::config::Config`] that a file sets (`[limits]` and `[timeouts]`, see
/// [`crate::config::Settings`]), and the instances netd keeps, one `[[instance]]` table each
/// in the words of `netmux instance create`. netd rewrites the file when an instance is
/// created, changed or destroyed, keeping the settings as they were read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesFile {
    /// Limits (`[limits]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::config::LimitSettings>,
    /// Timeouts in seconds (`[timeouts]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<crate::config::TimeoutSettings>,
    /// The instances.
    #[serde(default, rename = "instance")]
    pub instances: Vec<InstanceEntry>,
    /// The overlays (`[[overlay]]`), restored before the instances that live on them.
    #[serde(default, rename = "overlay", skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<OverlayEntry>,
    /// The admin firewall's rules, in order (`netmux firewall`), one `[[firewall]]` table each.
    #[serde(default, rename = "firewall", skip_serializing_if = "Vec::is_empty")]
    pub firewall: Vec<FirewallRuleEntry>,
}

/// One firewall rule in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallRuleEntry {
    /// The instance whose frames it sees.
    pub instance: String,
    /// `pass|block in|out [quick] [on CLIENT] EXPR`, as `netmux firewall add` takes it.
    pub rule: String,
}

/// One instance in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InstanceEntry {
    /// Its name.
    pub name: String,
    /// `generated`, `shared`, or a MAC.
    #[serde(default = "generated")]
    pub mac: String,
    /// `A.B.C.D/N`, or `dhcp` for an address from a DHCP server's lease.
    pub ip: String,
    /// `A.B.C.D`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Whether it answers for an IPv6 link-local address.
    #[serde(default = "yes")]
    pub ipv6_link_local: bool,
    /// `A-B`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_ports: Option<String>,
    /// Uids that may join it (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_uids: Option<Vec<u32>>,
    /// Uids that may bind its ports below 1024.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileged_uids: Vec<u32>,
    /// Uids that may tap it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tap_uids: Vec<u32>,
    /// Uids that may claim it exclusively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusive_uids: Vec<u32>,
    /// The overlay it lives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    /// `A::B/N`: its global IPv6 address; or `slaac`: one from router advertisements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
}

fn generated() -> String {
    "generated".into()
}

fn yes() -> bool {
    true
}

impl InstanceEntry {
    /// The entry of a spec.
    pub fn of(spec: &InstanceSpec) -> InstanceEntry {
        InstanceEntry {
            name: spec.name.clone(),
            mac: match spec.mac {
                MacChoice::Generated => "generated".into(),
                MacChoice::Shared => "shared".into(),
                MacChoice::Given(m) => mac_text(m),
            },
            ip: if spec.dhcp {
                "dhcp".into()
            } else {
                format!("{}/{}", Ipv4Addr::from(spec.ipv4.0), spec.ipv4.1)
            },
            gateway: spec.gateway.map(|g| Ipv4Addr::from(g).to_string()),
            ipv6_link_local: spec.ipv6_link_local,
            ephemeral_ports: spec.ephemeral.map(|(a, b)| format!("{a}-{b}")),
            join_uids: spec.join_uids.clone(),
            privileged_uids: spec.privileged_uids.clone(),
            tap_uids: spec.tap_uids.clone(),
            exclusive_uids: spec.exclusive_uids.clone(),
            overlay: spec.overlay.clone(),
            ip6: if spec.slaac {
                Some("slaac".into())
            } else {
                spec.ipv6
                    .map(|(a, p)| format!("{}/{p}", std::net::Ipv6Addr::from(a)))
            },
        }
    }

    /// The spec of an entry, or what is wrong with it.
    pub fn spec(&self) -> Result<InstanceSpec, String> {
        let mac = match self.mac.as_str() {
            "generated" => MacChoice::Generated,
            "shared" => MacChoice::Shared,
            text => {
                MacChoice::Given(crate::config::parse_mac(text).map_err(|e| format!("mac: {e}"))?)
            }
        };
        let dhcp = self.ip.eq_ignore_ascii_case("dhcp");
        let (ip, prefix) = if dhcp {
            (Ipv4Addr::UNSPECIFIED, 0)
        } else {
            crate::config::parse_ipv4_cidr(&self.ip).map_err(|e| format!("ip: {e}"))?
        };
        let gateway = self
            .gateway
            .as_deref()
            .map(|g| g.parse::<Ipv4Addr>().map(|a| a.octets()))
            .transpose()
            .map_err(|_| format!("gateway: {:?} is not an IPv4 address", self.gateway))?;
        let ephemeral = self
            .ephemeral_ports
            .as_deref()
            .map(crate::config::parse_port_range)
            .transpose()
            .map_err(|e| format!("ephemeral-ports: {e}"))?
            .map(|r| (*r.start(), *r.end()));
        let (ipv6, slaac) = match self.ip6.as_deref().map(crate::config::parse_host_ip6) {
            None => (None, false),
            Some(Ok(crate::config::HostIp6::Static(a, p))) => (Some((a.octets(), p)), false),
            Some(Ok(crate::config::HostIp6::Slaac)) => (None, true),
            Some(Err(e)) => return Err(format!("ip6: {e}")),
        };
        Ok(InstanceSpec {
            name: self.name.clone(),
            mac,
            ipv4: (ip.octets(), prefix),
            gateway,
            ipv6_link_local: self.ipv6_link_local,
            ephemeral,
            join_uids: self.join_uids.clone(),
            privileged_uids: self.privileged_uids.clone(),
            tap_uids: self.tap_uids.clone(),
            exclusive_uids: self.exclusive_uids.clone(),
            temporary: false,
            overlay: self.overlay.clone(),
            ipv6,
            dhcp,
            slaac,
        })
    }
}

/// One overlay in netd's configuration file, in the words of `netmux overlay create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OverlayEntry {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
    /// Its VXLAN port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `files:/absolute/path.json`.
    pub mapping: String,
    /// Its MTU (the link's less 50 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

fn default_port() -> u16 {
    4789
}

impl OverlayEntry {
    /// The entry of a spec.
    pub fn of(spec: &netmux_proto::overlay::OverlaySpec) -> OverlayEntry {
        OverlayEntry {
            name: spec.name.clone(),
            vni: spec.vni,
            port: spec.port,
            mapping: spec.mapping.clone(),
            mtu: spec.mtu,
        }
    }

    /// The spec of an entry (never temporary: it was kept).
    pub fn spec(&self) -> netmux_proto::overlay::OverlaySpec {
        netmux_proto::overlay::OverlaySpec {
            name: self.name.clone(),
            vni: self.vni,
            port: self.port,
            mapping: self.mapping.clone(),
            mtu: self.mtu,
            temporary: false,
        }
    }
}

impl InstancesFile {
    /// Reads the file; an absent file is an empty list.
    pub fn load(path: &Path) -> Result<InstancesFile, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstancesFile::default()),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// Writes the file whole: to a temporary file beside it, then renamed over it, so a crash
    /// never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp: PathBuf = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))
    }
}

/// An IPv6 address as text (for listings).
pub fn ipv6_text(a: [u8; 16]) -> String {
    Ipv6Addr::from(a).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> InstanceSpec {
        InstanceSpec {
            gateway: Some([192, 0, 2, 1]),
            ipv6_link_local: true,
            temporary: false,
            ..InstanceSpec::temporary(name, MacChoice::Generated, ([192, 0, 2, 10], 24))
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(check_name("tenant-a:1_x").is_ok());
        assert!(check_name(&"a".repeat(31)).is_ok());
        for bad in ["", &"a".repeat(32), "a b", "a/b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_generated_mac_is_local_unicast_and_stable() {
        let link = [0x52, 0x54, 0, 1, 2, 3];
        let a = generated_mac(link, "a");
        assert_eq!(a, generated_mac(link, "a"));
        assert_ne!(a, generated_mac(link, "b"));
        assert_eq!(a[0] & 0x03, 0x02);
    }

    #[test]
    fn a_configuration_file_sets_limits_and_timeouts_and_refuses_unknown_names() {
        let file: InstancesFile = toml::from_str(
            "[limits]\nsessions_per_uid = 7\nring_bytes_per_uid = 1000\n\
             [timeouts]\nmessage = 0.5\n",
        )
        .unwrap();
        let mut config = crate::config::Config::new("/tmp/x");
        config
            .apply(file.limits.as_ref(), file.timeouts.as_ref())
            .unwrap();
        assert_eq!(config.policy.limits.sessions_per_uid, 7);
        assert_eq!(config.policy.limits.ring_bytes_per_uid, 1000);
        assert_eq!(config.policy.limits.ports_per_uid, 4096, "left as it was");
        assert_eq!(
            config.message_timeout,
            std::time::Duration::from_millis(500)
        );
        let settings = config.settings();
        assert!(settings.contains(&("limits.sessions_per_uid".into(), "7".into())));
        assert!(settings.contains(&("timeouts.message".into(), "0.5".into())));
        assert!(toml::from_str::<InstancesFile>("[limits]\nsessions = 1\n").is_err());
        let zero: InstancesFile = toml::from_str("[timeouts]\nmessage = 0\n").unwrap();
        assert!(crate::config::Config::new("/tmp/x")
            .apply(None, zero.timeouts.as_ref())
            .is_err());
    }

    #[test]
    fn the_file_round_trips_what_create_asked() {
        let mut s = spec("tenant-a");
        s.mac = MacChoice::Given([2, 0, 0, 0, 0, 9]);
        s.ephemeral = Some((40000, 40100));
        s.join_uids = Some(vec![1000]);
        s.ipv6 = Some((
            "2001:db8::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            64,
        ));
        let file = InstancesFile {
            instances: vec![InstanceEntry::of(&s), InstanceEntry::of(&spec("b"))],
            ..InstancesFile::default()
        };
        let text = toml::to_string_pretty(&file).unwrap();
        let back: InstancesFile = toml::from_str(&text).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.instances[0].spec().unwrap(), s);
        assert!(text.contains("ip6 = \"2001:db8::10/64\""), "{text}");
        // DHCP and SLAAC are kept as words and restored as such.
        let mut leased = spec("c");
        (leased.dhcp, leased.slaac, leased.ipv4, leased.gateway) = (true, true, ([0; 4], 0), None);
        let entry = InstanceEntry::of(&leased);
        assert_eq!(
            (entry.ip.as_str(), entry.ip6.as_deref()),
            ("dhcp", Some("slaac"))
        );
        let text = toml::to_string_pretty(&InstancesFile {
            instances: vec![entry],
            ..InstancesFile::default()
        })
        .unwrap();
        let back: InstancesFile = toml::from_str(&text).unwrap();
        assert_eq!(back.instances[0].spec().unwrap(), leased);
        assert!(toml::from_str::<InstancesFile>(
            "[[instance]]\nname = \"x\"\nip = \"1.2.3.4/8\"\nbogus = 1\n"
        )
        .is_err());
    }

    #[test]
    fn properties_change_what_they_say_and_fixed_ones_are_read_only() {
        let link = LinkInfo {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        };
        let mut i = Instance::new(
            InstanceId(1),
            spec("a"),
            link,
            Policy::default(),
            49152..=65535,
        )
        .unwrap();
        i.set_property("ephemeral-ports", "50000-50010").unwrap();
        assert_eq!(i.core.ports().ephemeral(), &(50000..=50010));
        i.set_property("join-uids", "1000,1001").unwrap();
        assert!(i.core.may_join(1000) && !i.core.may_join(1002) && i.core.may_join(0));
        let e = i.set_property("mac", "02:00:00:00:00:02").unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        let e = i.set_property("x", "1").unwrap_err();
        assert!(e.to_string().contains("unknown property: x"), "{e}");
    }
}
