//! netd's configuration: where it listens, the host's addresses, the ephemeral port range and
//! the policy, with the parsers the command line uses.
//!
//! Every parser returns a [`ConfigError`] naming the bad text; none panics.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use netmux_proto::driver::QueueConfig;
pub use netmux_proto::{default_runtime_dir, SOCKET_NAME, SYSTEM_RUNTIME_DIR};

use crate::core::ports::DEFAULT_EPHEMERAL;
use crate::core::Policy;

/// How long netd waits for a client to make room for a reply before ending its session: a
/// client that stops reading its replies is gone as far as netd is concerned.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client's message may take to arrive whole once its first byte has: a local
/// client writes a request (at most 1 MiB) at once, so a message still partial after this is
/// a client holding netd's memory, and its session ends.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a netd started after another keeps the ports the other had bound for their uids
/// ([`crate::ports_file`]): a client reconnecting with backoff (at most 1 s between attempts)
/// is back well within it.
pub const DEFAULT_PORT_GRACE: Duration = Duration::from_secs(10);

/// A configuration value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not `A.B.C.D/N` with N at most 32.
    #[error("{0:?} is not an IPv4 address with a prefix length (A.B.C.D/N, N <= 32)")]
    Ipv4Cidr(String),
    /// Not `A::B/N` with N at most 128.
    #[error("{0:?} is not an IPv6 address with a prefix length (A::B/N, N <= 128)")]
    Ipv6Cidr(String),
    /// Not `A-B` with 1 <= A <= B <= 65535.
    #[error("{0:?} is not a port range (A-B with 1 <= A <= B <= 65535)")]
    PortRange(String),
    /// A timeout that is not a positive number of seconds.
    #[error("{0} is not a positive number of seconds")]
    Timeout(String),
    /// The configuration file cannot be read or is not a configuration.
    #[error("configuration file: {0}")]
    File(String),
    /// Not `aa:bb:cc:dd:ee:ff`.
    #[error("{0:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    /// An address that cannot be a host's ([`check_host_address`]).
    #[error("address {address}: {why}")]
    NotAHostAddress {
        /// `A.B.C.D/N`.
        address: String,
        /// Why not.
        why: &'static str,
    },
    /// The gateway is not inside the host's subnet.
    #[error("gateway {gateway} is not in {address}/{prefix}")]
    GatewayOffLink {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The host address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Options that do not go with `--ip dhcp`.
    #[error("{0}")]
    Dhcp(&'static str),
    /// Options that do not go with `--ip6 slaac`.
    #[error("{0}")]
    Slaac(&'static str),
}

/// What `--ip` says: a static address and prefix, or DHCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIp {
    /// This address and prefix length.
    Static(Ipv4Addr, u8),
    /// From a DHCP server's lease.
    Dhcp,
}

/// Parses `--ip`: `dhcp`, or a host address with its prefix ([`parse_host_cidr`]).
pub fn parse_host_ip(text: &str) -> Result<HostIp, ConfigError> {
    if text.eq_ignore_ascii_case("dhcp") {
        return Ok(HostIp::Dhcp);
    }
    parse_host_cidr(text).map(|(a, p)| HostIp::Static(a, p))
}

/// What `--ip6` says: a static global address and prefix, or SLAAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIp6 {
    /// This global address and prefix length.
    Static(Ipv6Addr, u8),
    /// An address from a router advertisement's prefix (RFC 4862), the router the default.
    Slaac,
}

/// Parses `--ip6`: `slaac`, or a global IPv6 host address with its prefix length,
/// `2001:db8::2/64`.
/// Refused: a prefix of 0 or above 128, and addresses no host has on a link as its global
/// address (unspecified, loopback, multicast, link-local: netd makes its own link-local).
pub fn parse_host_ip6(text: &str) -> Result<HostIp6, ConfigError> {
    if text.eq_ignore_ascii_case("slaac") {
        return Ok(HostIp6::Slaac);
    }
    let bad = || ConfigError::Ipv6Cidr(text.to_owned());
    let (a, p) = text.split_once('/').ok_or_else(bad)?;
    let a: Ipv6Addr = a.parse().map_err(|_| bad())?;
    let p: u8 = p.parse().map_err(|_| bad())?;
    if p > 128 {
        return Err(bad());
    }
    check_host_address6(a, p)?;
    Ok(HostIp6::Static(a, p))
}

/// Whether `a` can be a host's global IPv6 address on `a/prefix` (see [`parse_host_ip6`]).
pub fn check_host_address6(a: Ipv6Addr, prefix: u8) -> Result<(), ConfigError> {
    let bad = |why| {
        Err(ConfigError::NotAHostAddress {
            address: format!("{a}/{prefix}"),
            why,
        })
    };
    if prefix == 0 || prefix > 128 {
        return bad("the prefix must be 1 to 128 bits long");
    }
    if a.is_unspecified() {
        return bad(":: is no host's address");
    }
    if a.is_loopback() {
        return bad("a loopback address is not on the link");
    }
    if a.is_multicast() {
        return bad("a multicast address is no host's address");
    }
    if a.segments()[0] & 0xffc0 == 0xfe80 {
        return bad("a link-local address is netd's own choice (use a global address)");
    }
    Ok(())
}

/// The host's IP configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostAddrs {
    /// IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv4 default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Whether to give the host an IPv6 link-local address derived from the link's MAC.
    pub ipv6_link_local: bool,
}

/// Everything netd needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The runtime directory; the client socket is `SOCKET_NAME` inside it.
    pub runtime_dir: PathBuf,
    /// The host's addresses.
    pub addrs: HostAddrs,
    /// Whether the default instance takes its IPv4 address from DHCP (then `addrs.ipv4` and
    /// `addrs.gateway` are none until a lease).
    pub dhcp: bool,
    /// The default instance's global IPv6 address and prefix length (`--ip6`).
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The default instance's IPv6 default router (`--gateway6`).
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// Whether the default instance takes a global IPv6 address from router advertisements
    /// (`--ip6 slaac`; needs the host stack and the link-local address).
    pub slaac: bool,
    /// Ephemeral ports for `get_port`.
    pub ephemeral: RangeInclusive<u16>,
    /// Who may do what, and how much.
    pub policy: Policy,
    /// Ring geometry of every client queue.
    pub rings: QueueConfig,
    /// Whether netd runs its own host stack (ARP, ICMP echo, port unreachable, RST) on a queue
    /// of its own.
    pub host_stack: bool,
    /// How long a reply may wait for room in a client's socket ([`DEFAULT_REPLY_TIMEOUT`]).
    pub reply_timeout: Duration,
    /// How long one driver request may take before netd declares the driver gone
    /// ([`crate::driver_link::DEFAULT_DRIVER_TIMEOUT`]).
    pub driver_timeout: Duration,
    /// How long a client's message may take to arrive whole once it has begun
    /// ([`DEFAULT_MESSAGE_TIMEOUT`]); the limit on what netd buffers meanwhile is
    /// [`crate::core::Limits::buffered_bytes_per_uid`].
    pub message_timeout: Duration,
    /// Uids besides root that may create, change and destroy instances.
    pub admin_uids: std::collections::BTreeSet<u32>,
    /// The file netd keeps its non-temporary instances in (TOML, `[[instance]]` tables),
    /// restored at start; without one, instances last until netd stops.
    pub instances_file: Option<PathBuf>,
    /// How long the ports a netd before this one had bound are kept for their uids
    /// ([`DEFAULT_PORT_GRACE`], `timeouts.port_grace`).
    pub port_grace: Duration,
    /// Whether netd probes for its static IPv4 address before it starts (RFC 5227 duplicate
    /// address detection, [`crate::dad`]) and refuses to start when another host has it: for
    /// `afpacket:` links ([`crate::run::probes_address`]), set by whoever starts netd on one.
    /// Needs the host stack.
    pub probe_address: bool,
    /// The TTL of the lease under which netd writes its own instances' mappings to an `etcd`
    /// overlay backend ([`DEFAULT_OVERLAY_LEASE_TTL`]): how long a dead host's mappings
    /// outlive it. Whole seconds (etcd's unit), at least one.
    pub overlay_lease_ttl: Duration,
}

/// [`Config::overlay_lease_ttl`]'s default.
pub const DEFAULT_OVERLAY_LEASE_TTL: Duration = Duration::from_secs(10);

impl Config {
    /// A configuration with defaults, listening in `runtime_dir`.
    pub fn new(runtime_dir: impl Into<PathBuf>) -> Config {
        Config {
            runtime_dir: runtime_dir.into(),
            addrs: HostAddrs {
                ipv4: None,
                gateway: None,
                ipv6_link_local: true,
            },
            dhcp: false,
            ipv6: None,
            ipv6_gateway: None,
            slaac: false,
            ephemeral: DEFAULT_EPHEMERAL,
            policy: Policy::default(),
            rings: QueueConfig::default(),
            host_stack: true,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            driver_timeout: crate::driver_link::DEFAULT_DRIVER_TIMEOUT,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            admin_uids: Default::default(),
            instances_file: None,
            port_grace: DEFAULT_PORT_GRACE,
            probe_address: false,
            overlay_lease_ttl: DEFAULT_OVERLAY_LEASE_TTL,
        }
    }

    /// The client socket's path.
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join(SOCKET_NAME)
    }

    /// Takes in the settings a configuration file sets (its `[limits]` and `[timeouts]`);
    /// what it leaves out keeps its value.
    pub fn apply(
        &mut self,
        limits: Option<&LimitSettings>,
        timeouts: Option<&TimeoutSettings>,
    ) -> Result<(), ConfigError> {
        if let Some(limits) = limits {
            for (limit, value) in limits.values() {
                if let Some(v) = value {
                    self.policy.limits.set(limit, v);
                }
            }
        }
        if let Some(t) = timeouts {
            let secs = |name: &str, v: f64| {
                Duration::try_from_secs_f64(v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| ConfigError::Timeout(format!("timeouts.{name} = {v}")))
            };
            if let Some(v) = t.handshake {
                self.policy.handshake_timeout = secs("handshake", v)?;
            }
            if let Some(v) = t.message {
                self.message_timeout = secs("message", v)?;
            }
            if let Some(v) = t.reply {
                self.reply_timeout = secs("reply", v)?;
            }
            if let Some(v) = t.driver {
                self.driver_timeout = secs("driver", v)?;
            }
            if let Some(v) = t.port_grace {
                self.port_grace = secs("port_grace", v)?;
            }
        }
        Ok(())
    }

    /// Every setting with its value, `limits.NAME` and `timeouts.NAME` (seconds), as the
    /// configuration file names them: what `netmux instance ls` shows as read-only
    /// properties.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = crate::core::Limit::ALL
            .iter()
            .map(|&l| {
                (
                    format!("limits.{}", l.name()),
                    self.policy.limits.get(l).to_string(),
                )
            })
            .collect();
        for (name, d) in [
            ("handshake", self.policy.handshake_timeout),
            ("message", self.message_timeout),
            ("reply", self.reply_timeout),
            ("driver", self.driver_timeout),
            ("port_grace", self.port_grace),
        ] {
            out.push((format!("timeouts.{name}"), d.as_secs_f64().to_string()));
        }
        out
    }
}

/// The `[limits]` table of the configuration file: any of [`crate::core::Limits`]' fields,
/// by the same names.
///
/// ```toml
/// [limits]
/// sessions_per_uid = 1024
/// ring_bytes_per_uid = 4315938816
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // each is the `Limits` field of its name
pub struct LimitSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_per_uid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_per_session: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_per_uid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters_per_session: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_bytes_per_session: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_bytes_per_uid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_bytes_per_instance: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered_bytes_per_uid: Option<u64>,
}

impl LimitSettings {
    /// Each limit and the value the file gives it, if any.
    pub fn values(&self) -> [(crate::core::Limit, Option<u64>); 8] {
        use crate::core::Limit;
        [
            (Limit::SessionsPerUid, self.sessions_per_uid),
            (Limit::PortsPerSession, self.ports_per_session),
            (Limit::PortsPerUid, self.ports_per_uid),
            (Limit::FiltersPerSession, self.filters_per_session),
            (Limit::RingBytesPerSession, self.ring_bytes_per_session),
            (Limit::RingBytesPerUid, self.ring_bytes_per_uid),
            (Limit::RingBytesPerInstance, self.ring_bytes_per_instance),
            (Limit::BufferedBytesPerUid, self.buffered_bytes_per_uid),
        ]
    }
}

/// The `[timeouts]` table of the configuration file, in seconds.
///
/// ```toml
/// [timeouts]
/// handshake = 5   # connect to hello (Policy::handshake_timeout)
/// message = 5     # a message's first byte to its last (Config::message_timeout)
/// reply = 5       # room for a reply in the client's socket (Config::reply_timeout)
/// driver = 5      # one driver request (Config::driver_timeout; --driver-timeout wins)
/// port_grace = 10 # ports kept for their uids after a restart (Config::port_grace)
/// ```
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    /// [`crate::core::Policy::handshake_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<f64>,
    /// [`Config::message_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<f64>,
    /// [`Config::reply_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<f64>,
    /// [`Config::driver_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<f64>,
    /// [`Config::port_grace`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_grace: Option<f64>,
}

/// Parses `A.B.C.D/N`.
pub fn parse_ipv4_cidr(text: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || ConfigError::Ipv4Cidr(text.to_owned());
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// Parses `A.B.C.D/N` as a host's address: [`parse_ipv4_cidr`], then [`check_host_address`]
/// (no network, broadcast, multicast, loopback or reserved address, no prefix of 0).
pub fn parse_host_cidr(text: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let (addr, prefix) = parse_ipv4_cidr(text)?;
    check_host_address(addr, prefix)?;
    Ok((addr, prefix))
}

/// Whether `a` can be a host's address on `a/prefix`. Every host address netd takes (`--ip`
/// of `netd` and `netmux up`, the configuration file, `netmux instance create`) passes this
/// one check. Refused: a prefix of 0 (every address on the link) or above 32; addresses of
/// `0.0.0.0/8` ("this network", RFC 1122), loopback, multicast, the reserved class E
/// (`240.0.0.0/4`) and the limited broadcast; and, on a network with room for hosts (a prefix
/// up to 30), its network and broadcast addresses. `/31` (RFC 3021) and `/32` are accepted.
pub fn check_host_address(a: Ipv4Addr, prefix: u8) -> Result<(), ConfigError> {
    let bad = |why| {
        Err(ConfigError::NotAHostAddress {
            address: format!("{a}/{prefix}"),
            why,
        })
    };
    if prefix > 32 {
        return bad("the prefix is longer than 32 bits");
    }
    if prefix == 0 {
        return bad("a prefix of 0 would put every IPv4 address on the link");
    }
    if a.octets()[0] == 0 {
        return bad("0.0.0.0/8 means \"this network\" and is no host's address");
    }
    if a.is_loopback() {
        return bad("a loopback address is not on the link");
    }
    if a.is_broadcast() {
        return bad("the limited broadcast address is no host's address");
    }
    if a.is_multicast() {
        return bad("a multicast address is no host's address");
    }
    if a.octets()[0] >= 240 {
        return bad("240.0.0.0/4 (class E) is reserved, no host's address");
    }
    if prefix <= 30 {
        let mask = u32::MAX << (32 - u32::from(prefix));
        let host = u32::from(a) & !mask;
        if host == 0 {
            return bad("it is the network's own address");
        }
        if host == !mask {
            return bad("it is the network's broadcast address");
        }
    }
    Ok(())
}

/// Parses `A-B`.
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, ConfigError> {
    let bad = || ConfigError::PortRange(text.to_owned());
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::Mac(text.to_owned());
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Checks that the gateway is on the host's subnet.
pub fn check_gateway(
    (address, prefix): (Ipv4Addr, u8),
    gateway: Ipv4Addr,
) -> Result<(), ConfigError> {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    if u32::from(address) & mask == u32::from(gateway) & mask {
        Ok(())
    } else {
        Err(ConfigError::GatewayOffLink {
            gateway,
            address,
            prefix,
        })
    }
}

/// The IPv6 link-local address of a host that shares its MAC with another stack: the default
/// instance (on `afpacket:` the link's MAC is the kernel interface's, and the kernel already
/// holds the modified EUI-64 address of it, so that address would be answered twice) and
/// instances that share the link's MAC. A stable opaque interface id in the manner of RFC 7217:
/// a hash of the MAC and the instance's name, the same at every start, different for every
/// instance, never the MAC's EUI-64 one, with the universal/local bit clear (RFC 4291 says an
/// id not derived from a universal token has it clear).
pub fn opaque_link_local(mac: [u8; 6], instance: &str) -> Ipv6Addr {
    // FNV-1a, 64 bits: stable across builds and platforms, unlike std's hashers.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in b"netmux link-local\0"
        .iter()
        .chain(&mac)
        .chain(instance.as_bytes())
    {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut id = hash.to_be_bytes();
    id[0] &= !0x02;
    let eui64 = link_local_from_mac(mac).octets();
    if id[..] == eui64[8..] {
        id[7] ^= 1;
    }
    let mut octets = [0u8; 16];
    octets[..2].copy_from_slice(&[0xfe, 0x80]);
    octets[8..].copy_from_slice(&id);
    Ipv6Addr::from(octets)
}

/// The IPv6 link-local address for a MAC (modified EUI-64, RFC 4291 appendix A).
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_rejects_bad_prefixes() {
        assert_eq!(
            parse_ipv4_cidr("10.0.0.2/24"),
            Ok((Ipv4Addr::new(10, 0, 0, 2), 24))
        );
        for bad in ["10.0.0.2", "10.0.0.2/33", "10.0.0/24", "x/1", "10.0.0.2/-1"] {
            assert!(parse_ipv4_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_cidr_must_be_a_host_address() {
        assert_eq!(
            parse_host_cidr("10.0.0.2/24"),
            Ok((Ipv4Addr::new(10, 0, 0, 2), 24))
        );
        for bad in [
            "0.0.0.0/0",
            "10.0.0.0/24",
            "10.0.0.255/24",
            "224.0.0.1/24",
            "10.0.0.2/0",
        ] {
            let e = parse_host_cidr(bad).unwrap_err();
            assert!(
                matches!(e, ConfigError::NotAHostAddress { .. }),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
        assert!(matches!(
            parse_host_cidr("10.0.0.2/33"),
            Err(ConfigError::Ipv4Cidr(_))
        ));
    }

    #[test]
    fn host_addresses_that_cannot_be_a_hosts_are_refused() {
        for (a, p, why) in [
            ("0.0.0.0", 0, "prefix of 0"),
            ("10.0.0.2", 0, "prefix of 0"),
            ("10.0.0.2", 33, "longer than 32"),
            ("0.1.2.3", 8, "this network"),
            ("255.255.255.255", 32, "limited broadcast"),
            ("192.0.2.255", 24, "broadcast address"),
            ("10.255.255.255", 8, "broadcast address"),
            ("192.0.2.0", 24, "network's own"),
            ("192.0.2.4", 30, "network's own"),
            ("224.0.0.1", 24, "multicast"),
            ("239.1.2.3", 8, "multicast"),
            ("127.0.0.1", 8, "loopback"),
            ("240.0.0.1", 24, "class E"),
            ("250.1.2.3", 32, "class E"),
        ] {
            let e = check_host_address(a.parse().unwrap(), p).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&format!("{a}/{p}")), "{text}");
            assert!(text.contains(why), "{a}/{p}: {text}");
        }
        for (a, p) in [
            ("192.0.2.1", 24),
            ("192.0.2.254", 24),
            ("192.0.2.5", 30),
            ("192.0.2.0", 31),
            ("192.0.2.1", 31),
            ("192.0.2.7", 32),
            ("169.254.3.4", 16),
            ("1.2.3.4", 1),
        ] {
            assert!(check_host_address(a.parse().unwrap(), p).is_ok(), "{a}/{p}");
        }
    }

    #[test]
    fn port_ranges_parse_and_reject_empty_or_zero() {
        assert_eq!(parse_port_range("49152-65535"), Ok(49152..=65535));
        assert_eq!(parse_port_range("7-7"), Ok(7..=7));
        for bad in ["0-10", "10-9", "1-65536", "5", "-"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gateway_must_be_on_the_subnet() {
        let host = (Ipv4Addr::new(192, 168, 1, 5), 24);
        assert!(check_gateway(host, Ipv4Addr::new(192, 168, 1, 1)).is_ok());
        assert!(check_gateway(host, Ipv4Addr::new(192, 168, 2, 1)).is_err());
        assert!(check_gateway((host.0, 0), Ipv4Addr::new(8, 8, 8, 8)).is_ok());
    }

    #[test]
    fn a_shared_mac_gets_a_stable_link_local_that_is_not_the_kernels() {
        let mac = [0x56, 0x72, 0x11, 0x5b, 0xb8, 0x95];
        let a = opaque_link_local(mac, "default");
        assert_eq!(a, opaque_link_local(mac, "default"), "stable");
        assert_ne!(
            a,
            link_local_from_mac(mac),
            "not the kernel's EUI-64 address"
        );
        assert_ne!(a, opaque_link_local(mac, "other"), "one per instance");
        assert_eq!(a.segments()[..4], [0xfe80, 0, 0, 0]);
        assert_eq!(a.octets()[8] & 0x02, 0, "universal/local bit clear");
    }

    #[test]
    fn link_local_is_modified_eui64_of_the_mac() {
        assert_eq!(
            link_local_from_mac([0x02, 0x6e, 0x6d, 0x01, 0x02, 0x03]),
            "fe80::6e:6dff:fe01:203".parse::<Ipv6Addr>().unwrap()
        );
    }
}
