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
//! every queue by the driver's own rule.

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
}

impl HostIdentity {
    /// The host's addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
            .collect()
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
const ETHER_BROADCAST: [u8; 6] = [0xff; 6];

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

/// The rx filter of netd's own host queue: ARP for the host.
pub fn host_rx(host: &HostIdentity) -> Option<String> {
    host.ipv4.map(builders::arp_rx_expr)
}

/// netd's own transmit filter: ARP, IPv4 and IPv6 from any of the hosts it answers for (one
/// per instance), with each host's MAC.
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
        if let Some(a) = host.ipv6 {
            parts.push(format!(
                "(ether src {} and ip6 src host {a})",
                mac_text(host.mac)
            ));
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
            ..host()
        };
        assert_eq!(port_filters(&nothing, Transport::Tcp, 1), None);
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
}
