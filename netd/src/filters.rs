//! The filters netd installs for a port, a queue and its own host stack, from the compiler's
//! builders ([`netmux_compiler::builders`]), with the classifier key for port rx filters.
//!
//! A bound port gets one rx filter and one tx filter per host address, each with its
//! [`PortBinding`]: the classifier puts rx bindings in its hash table, and the driver names the
//! reason for a rejected transmission from the tx bindings (source MAC, ethertype, source IP,
//! source port).
//! A client queue gets one ARP tx filter so its stack can resolve neighbours: requests only,
//! since every client shares the host's address and netd alone answers for it (one request,
//! one reply, whatever the number of clients). ARP replies and requests for the host reach
//! every queue by the driver's own rule. Likewise for IPv6 ([`queue_nd_tx`]): neighbour and
//! router solicitations from the host's addresses with the host's MAC, never a neighbour
//! advertisement (every address a client has is the host's, answered by netd alone);
//! neighbour and router advertisements reach every queue by the driver's rule.
//!
//! A multicast group a client joins on its UDP port gets an rx filter keyed by (group, port)
//! ([`group_rx`]), taken by the classifier in the same one lookup as the port's bindings, and a
//! tx filter for the client's own IGMP and MLD membership reports of that group
//! ([`group_report_tx`]). The client's stack reports its groups, not netd: a stack that joins a
//! group reports it as on a NIC of its own (smoltcp does when it joins and leaves), and netd
//! keeps no timers or query state per group; what netd guarantees is that a client reports
//! only the groups it joined, from the host's addresses, one group per report. Queries
//! (IGMP, MLD) are not delivered to clients, so no client answers them: behind a switch that
//! snoops, a group's membership lasts until the switch's timeout after the client's last
//! report.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmux_compiler::builders::{self, Binding};
use netmux_proto::driver::PortBinding;

use crate::core::Transport;

/// Why an expression did not become a program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterCompileError {
    /// The expression is not valid pcap-filter text, or too complex for the VM; the message
    /// points at the offending text with a caret.
    #[error("{0}")]
    Invalid(String),
}

/// Compiles an expression to a verified program. Names are not looked up: netd compiles its
/// clients' filters and its own, and neither may wait on the network (`host NAME` is refused as
/// an unknown host).
pub fn compile(expr: &str) -> Result<netmux_vm::Program, FilterCompileError> {
    netmux_compiler::compile_with(
        expr,
        &netmux_compiler::Options::default(),
        &netmux_compiler::NoResolver,
    )
    .map(|c| c.program)
    .map_err(|e| FilterCompileError::Invalid(e.to_string()))
}

/// A MAC address as the pcap-filter language writes it.
fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The host's identity on the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// The link's MAC.
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 link-local address.
    pub ipv6: Option<Ipv6Addr>,
    /// Global IPv6 address.
    pub ipv6_global: Option<Ipv6Addr>,
}

impl HostIdentity {
    /// The host's addresses, IPv4 first, then IPv6 link-local, then global.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6_addresses().into_iter().map(IpAddr::V6))
            .collect()
    }

    /// The host's IPv6 addresses, link-local first.
    pub fn ipv6_addresses(&self) -> Vec<Ipv6Addr> {
        self.ipv6.into_iter().chain(self.ipv6_global).collect()
    }
}

fn builder_transport(t: Transport) -> builders::Transport {
    match t {
        Transport::Tcp => builders::Transport::Tcp,
        Transport::Udp => builders::Transport::Udp,
    }
}

/// An address as [`PortBinding`] stores it: 16 bytes (IPv4 in the first 4) and the family.
pub fn address_key(address: IpAddr) -> ([u8; 16], bool) {
    match address {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, false)
        }
        IpAddr::V6(a) => (a.octets(), true),
    }
}

/// The classifier key of a port bound on `address`.
pub fn binding(address: IpAddr, transport: Transport, port: u16) -> PortBinding {
    let (bytes, ipv6) = address_key(address);
    PortBinding {
        protocol: transport.ip_protocol(),
        address: bytes,
        ipv6,
        port,
    }
}

/// A port's filters: rx and tx per host address, each with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortFilters {
    /// Rx filter expressions and their classifier keys.
    pub rx: Vec<(String, PortBinding)>,
    /// Tx filter expressions and their keys.
    pub tx: Vec<(String, PortBinding)>,
}

/// The filters of a port. `None` when the host has no address (no port can be served).
pub fn port_filters(host: &HostIdentity, transport: Transport, port: u16) -> Option<PortFilters> {
    let addresses = host.addresses();
    if addresses.is_empty() {
        return None;
    }
    let mut filters = PortFilters {
        rx: Vec::new(),
        tx: Vec::new(),
    };
    for ip in addresses {
        let key = binding(ip, transport, port);
        let b = Binding {
            mac: host.mac,
            ip,
            transport: builder_transport(transport),
            port,
        };
        filters.rx.push((builders::rx_port_expr(&b), key));
        filters.tx.push((builders::tx_port_expr(&b), key));
    }
    Some(filters)
}

/// The Ethernet broadcast address.
pub const ETHER_BROADCAST: [u8; 6] = [0xff; 6];

/// The extra rx filters of a UDP port bound on a host whose IPv4 address is `prefix` bits
/// long: datagrams to the port sent to the Ethernet broadcast address and to the subnet's
/// broadcast address (subnets of /30 and larger; /31 and /32 have none, RFC 3021) or the
/// limited broadcast 255.255.255.255. Each has its own classifier key (the broadcast address,
/// the port), so the merged classifier takes them in the same one lookup as every binding.
/// Nothing for TCP or without an IPv4 address.
pub fn broadcast_rx(
    host: &HostIdentity,
    prefix: u8,
    transport: Transport,
    port: u16,
) -> Vec<(String, PortBinding)> {
    let Some(ip) = host.ipv4 else {
        return Vec::new();
    };
    if transport != Transport::Udp {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    if prefix <= 30 {
        let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        addresses.push(Ipv4Addr::from(u32::from(ip) | host_bits));
    }
    addresses.push(Ipv4Addr::BROADCAST);
    addresses
        .into_iter()
        .map(|a| {
            let b = Binding {
                mac: ETHER_BROADCAST,
                ip: IpAddr::V4(a),
                transport: builder_transport(transport),
                port,
            };
            (
                builders::rx_port_expr(&b),
                binding(IpAddr::V4(a), transport, port),
            )
        })
        .collect()
}

/// The multicast groups one session may join at once: Linux's default
/// `net.ipv4.igmp_max_memberships` per socket, so a client cannot grow the classifier's
/// tables or the link's multicast filter without bound.
pub const MAX_GROUPS_PER_SESSION: usize = 20;

/// Why an address is not a group a client may join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// Not in `224.0.0.0/4` or `ff00::/8`.
    #[error("{0} is not a multicast address")]
    NotMulticast(IpAddr),
    /// `224.0.0.0`, the base address no group uses (RFC 5771).
    #[error("{0} is the reserved base address of IPv4 multicast, no group")]
    Reserved(IpAddr),
    /// An IPv6 group of reserved (0) or interface-local (1) scope: never on the link.
    #[error("{0} has interface-local or reserved scope: no datagram to it crosses the link")]
    NotOnTheLink(IpAddr),
    /// A solicited-node group (`ff02::1:ff00:0/104`): neighbour discovery, which netd answers.
    #[error("{0} is a solicited-node group, used by neighbour discovery, which netd answers")]
    SolicitedNode(IpAddr),
}

/// Whether a client may join `group`: any multicast address but the reserved IPv4 base, IPv6
/// groups that never leave the interface and IPv6 solicited-node groups.
pub fn joinable_group(group: IpAddr) -> Result<(), GroupError> {
    match group {
        IpAddr::V4(a) if !a.is_multicast() => Err(GroupError::NotMulticast(group)),
        IpAddr::V4(a) if a == Ipv4Addr::new(224, 0, 0, 0) => Err(GroupError::Reserved(group)),
        IpAddr::V4(_) => Ok(()),
        IpAddr::V6(a) if !a.is_multicast() => Err(GroupError::NotMulticast(group)),
        IpAddr::V6(a) if a.octets()[1] & 0x0f <= 1 => Err(GroupError::NotOnTheLink(group)),
        IpAddr::V6(a) if a.segments()[..6] == [0xff02, 0, 0, 0, 0, 1] && a.octets()[12] == 0xff => {
            Err(GroupError::SolicitedNode(group))
        }
        IpAddr::V6(_) => Ok(()),
    }
}

/// The Ethernet address a group's frames are sent to: `01:00:5e` and the low 23 bits of an
/// IPv4 group (RFC 1112 6.4), `33:33` and the low 32 bits of an IPv6 group (RFC 2464 7).
pub fn group_mac(group: IpAddr) -> [u8; 6] {
    match group {
        IpAddr::V4(a) => {
            let o = a.octets();
            [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            [0x33, 0x33, o[12], o[13], o[14], o[15]]
        }
    }
}

/// The rx filter of a group joined on a UDP port: datagrams to the group's MAC, address and
/// port, with the group and port as its classifier key, so the merged classifier takes them
/// in the same one lookup as every binding (exactly as [`broadcast_rx`]'s).
pub fn group_rx(group: IpAddr, port: u16) -> (String, PortBinding) {
    let b = Binding {
        mac: group_mac(group),
        ip: group,
        transport: builders::Transport::Udp,
        port,
    };
    (
        builders::rx_port_expr(&b),
        binding(group, Transport::Udp, port),
    )
}

/// The test that the 16 bytes at `ip6[at]` are `a`, four words at a time.
fn ip6_bytes_are(at: usize, a: [u8; 16]) -> String {
    a.chunks(4)
        .enumerate()
        .map(|(i, w)| {
            format!(
                "ip6[{}:4] = {}",
                at + 4 * i,
                u32::from_be_bytes([w[0], w[1], w[2], w[3]])
            )
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The tx filter that lets a client report its membership of `group`, which it joined, so
/// that switches that snoop and routers that query keep sending the group to the link:
///
/// * IPv4: IGMPv2 membership reports (to the group) and leaves (to `224.0.0.2`) naming the
///   group, and IGMPv3 reports (to `224.0.0.22`) with exactly one group record, for the group;
///   from the host's MAC and IPv4 address, not fragmented, with or without the router alert
///   option (RFC 2236, RFC 3376).
/// * IPv6: MLDv1 reports (to the group) and dones (to `ff02::2`) naming the group, and MLDv2
///   reports (to `ff02::16`) with exactly one record, for the group; from the host's MAC and
///   one of its IPv6 addresses or `::`, with the hop-by-hop router alert header of 8 bytes
///   that MLD requires (RFC 2710, RFC 3810).
///
/// A report naming any other group, or several (the reports a general query may draw), is
/// refused: a client speaks only for the groups it joined. `None` when the host has no
/// address of the group's family.
pub fn group_report_tx(host: &HostIdentity, group: IpAddr) -> Option<String> {
    match group {
        IpAddr::V4(g) => {
            let ip = host.ipv4?;
            let word = u32::from(g);
            let igmp = |at: usize| {
                format!(
                    "(ip[{at}] = 22 and ip dst host {g} and ip[{}:4] = {word}) \
                     or (ip[{at}] = 23 and ip dst host 224.0.0.2 and ip[{}:4] = {word}) \
                     or (ip[{at}] = 34 and ip dst host 224.0.0.22 and ip[{}:2] = 1 \
                     and ip[{}:4] = {word})",
                    at + 4,
                    at + 4,
                    at + 6,
                    at + 12
                )
            };
            Some(format!(
                "ether src {} and ip src host {ip} and ip proto 2 and ip[6:2] & 0x3fff = 0 \
                 and ((ip[0] & 0xf = 5 and ({})) or (ip[0] & 0xf = 6 and ({})))",
                mac_text(host.mac),
                igmp(20),
                igmp(24)
            ))
        }
        IpAddr::V6(g) => {
            let src = ip6_src_any(host)?;
            let o = g.octets();
            Some(format!(
                "ether src {} and ip6 and ({src} or ip6 src host ::) and ip6[6] = 0 \
                 and ip6[40] = 58 and ip6[41] = 0 \
                 and ((ip6[48] = 131 and ip6 dst host {g} and {}) \
                 or (ip6[48] = 132 and ip6 dst host ff02::2 and {}) \
                 or (ip6[48] = 143 and ip6 dst host ff02::16 and ip6[54:2] = 1 and {}))",
                mac_text(host.mac),
                ip6_bytes_are(56, o),
                ip6_bytes_are(56, o),
                ip6_bytes_are(60, o)
            ))
        }
    }
}

/// netd's tx filter for a DHCP client with this MAC before it has an address: from 0.0.0.0
/// port 68 to the limited broadcast's port 67 (RFC 2131 4.1), nothing else.
pub fn dhcp_client_tx(mac: [u8; 6]) -> String {
    format!(
        "ether src {} and ip src host 0.0.0.0 and ip dst host 255.255.255.255 and udp src port 68 \
         and udp dst port 67",
        mac_text(mac)
    )
}

/// The ARP tx filter of a client queue, when the host has an IPv4 address: requests from the
/// host's addresses, never replies (netd answers for the host).
pub fn queue_arp_tx(host: &HostIdentity) -> Option<String> {
    host.ipv4
        .map(|ip| builders::arp_request_tx_expr(host.mac, ip))
}

/// netd's transmit filter for its ARP probes at start ([`crate::dad`]): ARP requests from
/// `mac` with sender IP 0.0.0.0.
pub fn arp_probe_tx(mac: [u8; 6]) -> String {
    builders::arp_request_tx_expr(mac, Ipv4Addr::UNSPECIFIED)
}

/// `ip6 src host A or ...` for the host's IPv6 addresses, `None` without any.
fn ip6_src_any(host: &HostIdentity) -> Option<String> {
    let a = host.ipv6_addresses();
    (!a.is_empty()).then(|| {
        a.iter()
            .map(|a| format!("ip6 src host {a}"))
            .collect::<Vec<_>>()
            .join(" or ")
    })
}

/// The test that an NDP message whose options start at `ip6[options]` carries either no
/// options or exactly one source link-layer address option (RFC 4861 4.6.1) naming `mac`:
/// a client cannot point a neighbour's cache for the host's address at another MAC.
fn nd_own_lladdr(mac: [u8; 6], options: usize) -> String {
    let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let lo = u16::from_be_bytes([mac[4], mac[5]]);
    let bare = options - 40;
    format!(
        "(ip6[4:2] = {bare} or (ip6[4:2] = {} and ip6[{options}:2] = 0x0101 and ip6[{}:4] = {hi:#x} \
         and ip6[{}:2] = {lo:#x}))",
        bare + 8,
        options + 2,
        options + 6
    )
}

/// The neighbour discovery tx filter of a client queue, when the host has an IPv6 address:
/// neighbour solicitations (ICMPv6 135) and router solicitations (133) from one of the host's
/// addresses and its MAC, with hop limit 255, no extension header, and no link-layer address
/// option but the host's MAC. Never a neighbour advertisement: every address a client has is
/// the host's, and netd alone answers for those (one solicitation, one advertisement).
pub fn queue_nd_tx(host: &HostIdentity) -> Option<String> {
    let src = ip6_src_any(host)?;
    Some(format!(
        "ether src {} and ip6 and ({src}) and ip6[6] = 58 and ip6[7] = 255 and ip6[41] = 0 \
         and ((ip6[40] = 135 and {}) or (ip6[40] = 133 and ip6 dst host ff02::2 and {}))",
        mac_text(host.mac),
        nd_own_lladdr(host.mac, 64),
        nd_own_lladdr(host.mac, 48),
    ))
}

/// netd's tx filter for duplicate address detection of its IPv6 addresses (RFC 4862 5.4.2):
/// neighbour solicitations from `::` with this MAC, hop limit 255 and no option, nothing else.
pub fn dad_tx(mac: [u8; 6]) -> String {
    format!(
        "ether src {} and ip6 and ip6 src host :: and ip6[6] = 58 and ip6[7] = 255 \
         and ip6[40] = 135 and ip6[41] = 0 and ip6[4:2] = 24",
        mac_text(mac)
    )
}

/// The rx filter of netd's own host queue: ARP for the host.
pub fn host_rx(host: &HostIdentity) -> Option<String> {
    host.ipv4.map(builders::arp_rx_expr)
}

/// netd's own transmit filter: ARP, IPv4 and IPv6 from any of the hosts it answers for (one
/// per instance), with each host's MAC, and each host's duplicate address probes from `::`
/// ([`dad_tx`]) when it has an IPv6 address.
pub fn host_tx(hosts: &[HostIdentity]) -> Option<String> {
    let mut parts = Vec::new();
    for host in hosts {
        if let Some(ip) = host.ipv4 {
            parts.push(format!("({})", builders::arp_tx_expr(host.mac, ip)));
        }
        if let Some(a) = host.ipv4 {
            parts.push(format!(
                "(ether src {} and ip src host {a})",
                mac_text(host.mac)
            ));
        }
        for a in host.ipv6_addresses() {
            parts.push(format!(
                "(ether src {} and ip6 src host {a})",
                mac_text(host.mac)
            ));
        }
        if !host.ipv6_addresses().is_empty() {
            parts.push(format!("({})", dad_tx(host.mac)));
        }
    }
    (!parts.is_empty()).then(|| parts.join(" or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostIdentity {
        HostIdentity {
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ipv6: Some("fe80::1".parse().unwrap()),
            ipv6_global: None,
        }
    }

    #[test]
    fn a_port_gets_an_rx_and_a_tx_filter_per_address() {
        let f = port_filters(&host(), Transport::Udp, 5000).unwrap();
        assert_eq!((f.rx.len(), f.tx.len()), (2, 2));
        assert_eq!(f.tx[0].1, f.rx[0].1);
        assert!(f.tx[0].0.contains("ip src host 10.0.0.2") && !f.tx[0].0.contains("ip6"));
        assert!(f.tx[1].0.contains("ip6 src host fe80::1") && !f.tx[1].0.contains("ip src"));
        assert_eq!(f.rx[0].1.address[..4], [10, 0, 0, 2]);
        assert!(!f.rx[0].1.ipv6 && f.rx[1].1.ipv6);
        assert_eq!((f.rx[1].1.protocol, f.rx[1].1.port), (17, 5000));
        assert!(f.tx.iter().all(|(e, _)| e.contains("udp src port 5000")));
        let nothing = HostIdentity {
            ipv4: None,
            ipv6: None,
            ipv6_global: None,
            ..host()
        };
        assert_eq!(port_filters(&nothing, Transport::Tcp, 1), None);
    }

    #[test]
    fn only_groups_that_cross_the_link_may_be_joined() {
        for ok in [
            "239.1.2.3",
            "224.0.0.251",
            "ff15::1234",
            "ff02::fb",
            "ff0e::1",
        ] {
            assert_eq!(joinable_group(ok.parse().unwrap()), Ok(()), "{ok}");
        }
        let refused = |a: &str| joinable_group(a.parse().unwrap()).unwrap_err();
        assert!(matches!(refused("192.0.2.1"), GroupError::NotMulticast(_)));
        assert!(matches!(
            refused("2001:db8::1"),
            GroupError::NotMulticast(_)
        ));
        assert!(matches!(refused("224.0.0.0"), GroupError::Reserved(_)));
        assert!(matches!(refused("ff01::1"), GroupError::NotOnTheLink(_)));
        assert!(matches!(
            refused("ff02::1:ff00:1"),
            GroupError::SolicitedNode(_)
        ));
    }

    #[test]
    fn group_reports_compile_for_both_families() {
        let mut h = host();
        h.ipv6 = Some("fe80::1".parse().unwrap());
        for g in ["239.1.2.3", "ff15::1234"] {
            let expr = group_report_tx(&h, g.parse().unwrap()).unwrap();
            compile(&expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
        h.ipv6 = None;
        assert_eq!(group_report_tx(&h, "ff15::1234".parse().unwrap()), None);
    }

    /// An IGMP message of `kind` naming `group`, from the host to `dst`, with a router alert
    /// option when `alert`.
    fn igmp(h: &HostIdentity, dst: Ipv4Addr, kind: u8, group: Ipv4Addr, alert: bool) -> Vec<u8> {
        let mut f = vec![1, 0, 0x5e, 0, 0, 1];
        f.extend_from_slice(&h.mac);
        f.extend_from_slice(&[0x08, 0x00, if alert { 0x46 } else { 0x45 }, 0, 0, 0]);
        f.extend_from_slice(&[0, 0, 0, 0, 1, 2, 0, 0]);
        f.extend_from_slice(&h.ipv4.unwrap().octets());
        f.extend_from_slice(&dst.octets());
        if alert {
            f.extend_from_slice(&[0x94, 4, 0, 0]);
        }
        if kind == 0x22 {
            // One record (mode is exclude), no source.
            f.extend_from_slice(&[0x22, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0]);
        } else {
            f.extend_from_slice(&[kind, 0, 0, 0]);
        }
        f.extend_from_slice(&group.octets());
        f
    }

    /// An MLD message of `kind` naming `group` from `src` to `dst`, behind an 8-byte hop-by-hop
    /// header with the router alert.
    fn mld(h: &HostIdentity, src: Ipv6Addr, dst: Ipv6Addr, kind: u8, group: Ipv6Addr) -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 0x16];
        f.extend_from_slice(&h.mac);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        if kind == 143 {
            f.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0]);
        } else {
            f.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&group.octets());
        f
    }

    #[test]
    fn a_client_reports_only_the_group_it_joined_from_the_hosts_addresses() {
        let h = host();
        let g: Ipv4Addr = "239.1.2.3".parse().unwrap();
        let other: Ipv4Addr = "239.1.2.4".parse().unwrap();
        let expr = group_report_tx(&h, IpAddr::V4(g)).unwrap();
        let leave_to = Ipv4Addr::new(224, 0, 0, 2);
        let v3_to = Ipv4Addr::new(224, 0, 0, 22);
        for alert in [false, true] {
            assert!(accepts(&expr, &igmp(&h, g, 0x16, g, alert)), "v2 report");
            assert!(accepts(&expr, &igmp(&h, leave_to, 0x17, g, alert)), "leave");
            assert!(
                accepts(&expr, &igmp(&h, v3_to, 0x22, g, alert)),
                "v3 report"
            );
            assert!(!accepts(&expr, &igmp(&h, other, 0x16, other, alert)));
            assert!(!accepts(&expr, &igmp(&h, g, 0x16, other, alert)));
            assert!(!accepts(&expr, &igmp(&h, leave_to, 0x17, other, alert)));
            assert!(!accepts(&expr, &igmp(&h, v3_to, 0x22, other, alert)));
        }
        let mut two_records = igmp(&h, v3_to, 0x22, g, false);
        two_records[14 + 20 + 7] = 2;
        assert!(!accepts(&expr, &two_records), "a report of several groups");
        let mut spoofed = igmp(&h, g, 0x16, g, false);
        spoofed[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 9]);
        assert!(!accepts(&expr, &spoofed), "another source address");
        let mut spoofed = igmp(&h, g, 0x16, g, false);
        spoofed[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert!(!accepts(&expr, &spoofed), "another source MAC");

        let g: Ipv6Addr = "ff15::1234".parse().unwrap();
        let other: Ipv6Addr = "ff15::1235".parse().unwrap();
        let expr = group_report_tx(&h, IpAddr::V6(g)).unwrap();
        let ll = h.ipv6.unwrap();
        let all_mldv2: Ipv6Addr = "ff02::16".parse().unwrap();
        let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
        for src in [ll, Ipv6Addr::UNSPECIFIED] {
            assert!(
                accepts(&expr, &mld(&h, src, all_mldv2, 143, g)),
                "v2 report"
            );
            assert!(accepts(&expr, &mld(&h, src, g, 131, g)), "v1 report");
            assert!(accepts(&expr, &mld(&h, src, all_routers, 132, g)), "done");
            assert!(!accepts(&expr, &mld(&h, src, all_mldv2, 143, other)));
            assert!(!accepts(&expr, &mld(&h, src, other, 131, other)));
            assert!(!accepts(&expr, &mld(&h, src, all_routers, 132, other)));
        }
        let stranger: Ipv6Addr = "fe80::9".parse().unwrap();
        assert!(!accepts(&expr, &mld(&h, stranger, all_mldv2, 143, g)));
    }

    #[test]
    fn a_group_filter_takes_the_group_mac_address_and_port() {
        assert_eq!(
            group_mac("239.129.2.3".parse().unwrap()),
            [0x01, 0, 0x5e, 1, 2, 3]
        );
        assert_eq!(
            group_mac("ff15::12:3456".parse().unwrap()),
            [0x33, 0x33, 0, 0x12, 0x34, 0x56]
        );
        let (expr, key) = group_rx("239.1.2.3".parse().unwrap(), 5000);
        assert_eq!(
            expr,
            "ether dst 01:00:5e:01:02:03 and ip dst host 239.1.2.3 and udp dst port 5000"
        );
        assert_eq!(key.address[..4], [239, 1, 2, 3]);
        assert_eq!((key.protocol, key.port, key.ipv6), (17, 5000, false));
        compile(&expr).unwrap();
        let (expr, _) = group_rx("ff15::1234".parse().unwrap(), 5000);
        compile(&expr).unwrap();
    }

    #[test]
    fn a_udp_port_also_takes_the_subnet_and_the_limited_broadcast() {
        let b = broadcast_rx(&host(), 24, Transport::Udp, 67);
        let exprs: Vec<&str> = b.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            exprs,
            vec![
                "ether dst ff:ff:ff:ff:ff:ff and ip dst host 10.0.0.255 and udp dst port 67",
                "ether dst ff:ff:ff:ff:ff:ff and ip dst host 255.255.255.255 and udp dst port 67",
            ]
        );
        assert_eq!(
            b[0].1,
            binding("10.0.0.255".parse().unwrap(), Transport::Udp, 67)
        );
        assert_eq!(broadcast_rx(&host(), 31, Transport::Udp, 67).len(), 1);
        assert_eq!(
            broadcast_rx(&host(), 8, Transport::Udp, 67)[0].1.address[..4],
            [10, 255, 255, 255]
        );
        assert!(broadcast_rx(&host(), 24, Transport::Tcp, 80).is_empty());
        for (e, _) in &b {
            compile(e).unwrap();
        }
    }

    fn accepts(expr: &str, frame: &[u8]) -> bool {
        let program = compile(expr).unwrap();
        let mut scratch = netmux_vm::Scratch::default();
        netmux_vm::interp::run(&program, frame, frame.len() as u32, &mut scratch).is_accept()
    }

    /// An NDP message from `src_mac`/`src` of ICMPv6 `kind` (135 NS, 136 NA, 133 RS) with
    /// `body` after the 4 reserved bytes, at hop limit `hops`.
    fn nd(src_mac: [u8; 6], src: &str, dst: &str, kind: u8, body: &[u8], hops: u8) -> Vec<u8> {
        use etherparse::{Icmpv6Type, PacketBuilder};
        let t = match kind {
            135 => Icmpv6Type::NeighborSolicitation,
            136 => {
                Icmpv6Type::NeighborAdvertisement(etherparse::icmpv6::NeighborAdvertisementHeader {
                    router: false,
                    solicited: true,
                    r#override: true,
                })
            }
            _ => Icmpv6Type::RouterSolicitation,
        };
        let src: Ipv6Addr = src.parse().unwrap();
        let dst: Ipv6Addr = dst.parse().unwrap();
        let mut out = Vec::new();
        PacketBuilder::ethernet2(src_mac, [0x33, 0x33, 0, 0, 0, 2])
            .ipv6(src.octets(), dst.octets(), hops)
            .icmpv6(t)
            .write(&mut out, body)
            .unwrap();
        out
    }

    fn lladdr(kind: u8, mac: [u8; 6]) -> Vec<u8> {
        let mut o = vec![kind, 1];
        o.extend_from_slice(&mac);
        o
    }

    #[test]
    fn clients_may_solicit_from_the_hosts_addresses_but_never_advertise() {
        let h = HostIdentity {
            ipv6_global: Some("2001:db8::2".parse().unwrap()),
            ..host()
        };
        let expr = queue_nd_tx(&h).unwrap();
        let m = h.mac;
        let target: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let ns = |mac, src: &str, options: &[u8], hops| {
            let mut body = target.octets().to_vec();
            body.extend_from_slice(options);
            nd(mac, src, "ff02::1:ff00:1", 135, &body, hops)
        };
        for src in ["fe80::1", "2001:db8::2"] {
            assert!(accepts(&expr, &ns(m, src, &lladdr(1, m), 255)), "{src}");
            assert!(
                accepts(&expr, &ns(m, src, &[], 255)),
                "{src} without option"
            );
        }
        assert!(
            !accepts(&expr, &ns(m, "2001:db8::9", &lladdr(1, m), 255)),
            "foreign source"
        );
        assert!(
            !accepts(&expr, &ns(m, "::", &[], 255)),
            "DAD for the host is netd's"
        );
        assert!(
            !accepts(&expr, &ns([9; 6], "fe80::1", &lladdr(1, [9; 6]), 255)),
            "foreign MAC"
        );
        assert!(
            !accepts(&expr, &ns(m, "fe80::1", &lladdr(1, [9; 6]), 255)),
            "option lies"
        );
        assert!(
            !accepts(&expr, &ns(m, "fe80::1", &lladdr(1, m), 64)),
            "hop limit"
        );
        let mut two = lladdr(1, m);
        two.extend(lladdr(1, [9; 6]));
        assert!(
            !accepts(&expr, &ns(m, "fe80::1", &two, 255)),
            "a second option"
        );
        // Advertisements, for the host's address or any other: netd's alone.
        for t in ["fe80::1", "2001:db8::2", "2001:db8::9"] {
            let t: Ipv6Addr = t.parse().unwrap();
            let mut body = t.octets().to_vec();
            body.extend(lladdr(2, m));
            assert!(
                !accepts(&expr, &nd(m, "fe80::1", "fe80::9", 136, &body, 255)),
                "{t}"
            );
        }
        let rs = |src: &str, dst: &str, options: &[u8]| nd(m, src, dst, 133, options, 255);
        assert!(accepts(&expr, &rs("fe80::1", "ff02::2", &lladdr(1, m))));
        assert!(accepts(&expr, &rs("fe80::1", "ff02::2", &[])));
        assert!(
            !accepts(&expr, &rs("fe80::1", "ff02::1", &[])),
            "RS to all nodes"
        );
        assert!(!accepts(
            &expr,
            &rs("fe80::1", "ff02::2", &lladdr(1, [9; 6]))
        ));
        assert!(!accepts(&expr, &rs("fe80::7", "ff02::2", &[])));
        assert_eq!(
            queue_nd_tx(&HostIdentity {
                ipv6: None,
                ..host()
            }),
            None
        );
    }

    #[test]
    fn a_global_address_gets_its_own_port_filters_and_host_transmissions() {
        let h = HostIdentity {
            ipv6_global: Some("2001:db8::2".parse().unwrap()),
            ..host()
        };
        let f = port_filters(&h, Transport::Tcp, 80).unwrap();
        assert_eq!(f.rx.len(), 3);
        assert!(f.rx[2].0.contains("ip6 dst host 2001:db8::2"));
        assert!(
            f.rx[2].1.ipv6
                && f.rx[2].1.address == "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert!(f.tx[2].0.contains("ip6 src host 2001:db8::2"));
        let tx = host_tx(&[h]).unwrap();
        assert!(tx.contains("ip6 src host 2001:db8::2") && tx.contains("ip6 src host fe80::1"));
        compile(&tx).unwrap();
    }
}
