//! Filter builders for netd: the per-port receive and transmit filters and the ARP filters, as
//! pcap-filter expressions compiled by the same compiler as every other filter.
//!
//! What each filter promises (the expressions' text is tested here; compiled and run on crafted
//! frames, spoofed ones included, once the compiler is in the build):
//!
//! * **rx port** ([`rx_port_expr`]): accepts a frame only if it is addressed to the host's MAC,
//!   to the binding's IPv4 or IPv6 address, and to its TCP or UDP port. IPv4 fragments never
//!   reach it (the driver reassembles before it classifies).
//! * **tx port** ([`tx_port_expr`]): accepts a frame only if its source MAC is the host's, its
//!   source IP is the binding's address, its protocol is the binding's and its source port is
//!   the port; IPv4 fragments (offset or more-fragments set), VLAN-tagged frames and every
//!   other ethertype are refused.
//! * **ARP rx** ([`arp_rx_expr`]): every ARP reply, and ARP requests for the host's IPv4 address.
//! * **ARP tx** ([`arp_tx_expr`]): Ethernet/IPv4 ARP requests and replies only, whose Ethernet
//!   source and ARP sender hardware address are the host's MAC and whose sender IP is the
//!   host's address.
//!
//! The builders produce text, so a person can read exactly what netd installed (`netmux ls`
//! prints it); the crate's compiler turns it into a verified program.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// A transport protocol whose ports get filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    fn keyword(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// A port binding: whose frames these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The host's MAC address.
    pub mac: [u8; 6],
    /// The bound IP address (one of the host's).
    pub ip: IpAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// The bound port.
    pub port: u16,
}

/// A MAC address as the pcap-filter language writes it (`02:6e:6d:00:00:01`).
pub fn mac_text(mac: [u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The receive filter of a binding.
pub fn rx_port_expr(b: &Binding) -> String {
    let family = match b.ip {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    };
    format!(
        "ether dst {} and {family} dst host {} and {} dst port {}",
        mac_text(b.mac),
        b.ip,
        b.transport.keyword(),
        b.port
    )
}

/// The transmit filter of a binding: source MAC, source address, protocol and source port.
pub fn tx_port_expr(b: &Binding) -> String {
    let (mac, proto, port) = (mac_text(b.mac), b.transport.keyword(), b.port);
    match b.ip {
        // `ip[6:2] & 0x3fff = 0`: neither the more-fragments flag nor an offset (the driver
        // refuses fragments too; the filter does not rely on it).
        IpAddr::V4(a) => format!(
            "ether src {mac} and ip src host {a} and ip[6:2] & 0x3fff = 0 and {proto} src port {port}"
        ),
        // A fragment header makes the next header 44, so `ip6 and udp` refuses it already.
        IpAddr::V6(a) => format!("ether src {mac} and ip6 src host {a} and {proto} src port {port}"),
    }
}

/// ARP's fixed offsets for Ethernet/IPv4, from the start of the ARP header (RFC 826).
mod arp_offset {
    /// Operation: 1 request, 2 reply.
    pub const OPER: u32 = 6;
    /// Sender hardware address.
    pub const SHA: u32 = 8;
    /// Sender protocol address.
    pub const SPA: u32 = 14;
    /// Target protocol address.
    pub const TPA: u32 = 24;
}

fn ip_word(a: Ipv4Addr) -> String {
    format!("0x{:08x}", u32::from(a))
}

/// The ARP receive filter: every reply, and requests for `ip`.
pub fn arp_rx_expr(ip: Ipv4Addr) -> String {
    format!(
        "arp and (arp[{op}:2] = 2 or (arp[{op}:2] = 1 and arp[{tpa}:4] = {ip}))",
        op = arp_offset::OPER,
        tpa = arp_offset::TPA,
        ip = ip_word(ip),
    )
}

/// The ARP transmit filter: Ethernet/IPv4 requests and replies whose Ethernet source and
/// sender hardware address are `mac` and whose sender IP is `ip`.
pub fn arp_tx_expr(mac: [u8; 6], ip: Ipv4Addr) -> String {
    let mac_hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let mac_lo = u16::from_be_bytes([mac[4], mac[5]]);
    format!(
        "ether src {m} and arp and arp[0:2] = 1 and arp[2:2] = 0x0800 and arp[4] = 6 \
         and arp[5] = 4 and (arp[{op}:2] = 1 or arp[{op}:2] = 2) \
         and arp[{sha}:4] = 0x{mac_hi:08x} and arp[{sha_lo}:2] = 0x{mac_lo:04x} \
         and arp[{spa}:4] = {ip}",
        m = mac_text(mac),
        op = arp_offset::OPER,
        sha = arp_offset::SHA,
        sha_lo = arp_offset::SHA + 4,
        spa = arp_offset::SPA,
        ip = ip_word(ip),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0x00, 0x00, 0x01];

    fn binding(ip: &str, transport: Transport, port: u16) -> Binding {
        Binding {
            mac: MAC,
            ip: ip.parse().unwrap(),
            transport,
            port,
        }
    }

    #[test]
    fn rx_port_text_names_mac_address_protocol_and_port() {
        assert_eq!(
            rx_port_expr(&binding("192.168.7.2", Transport::Udp, 5353)),
            "ether dst 02:6e:6d:00:00:01 and ip dst host 192.168.7.2 and udp dst port 5353"
        );
        assert_eq!(
            rx_port_expr(&binding("fe80::1", Transport::Tcp, 80)),
            "ether dst 02:6e:6d:00:00:01 and ip6 dst host fe80::1 and tcp dst port 80"
        );
    }

    #[test]
    fn tx_port_text_names_the_source_and_refuses_ipv4_fragments() {
        assert_eq!(
            tx_port_expr(&binding("192.168.7.2", Transport::Tcp, 8080)),
            "ether src 02:6e:6d:00:00:01 and ip src host 192.168.7.2 and ip[6:2] & 0x3fff = 0 \
             and tcp src port 8080"
        );
        assert_eq!(
            tx_port_expr(&binding("fe80::6e:6dff:fe00:1", Transport::Udp, 53)),
            "ether src 02:6e:6d:00:00:01 and ip6 src host fe80::6e:6dff:fe00:1 and udp src port 53"
        );
    }

    #[test]
    fn arp_text_checks_operation_and_addresses() {
        assert_eq!(
            arp_rx_expr(Ipv4Addr::new(192, 168, 7, 2)),
            "arp and (arp[6:2] = 2 or (arp[6:2] = 1 and arp[24:4] = 0xc0a80702))"
        );
        let tx = arp_tx_expr(MAC, Ipv4Addr::new(192, 168, 7, 2));
        assert!(tx.starts_with("ether src 02:6e:6d:00:00:01 and arp and "));
        assert!(tx.contains("arp[8:4] = 0x026e6d00 and arp[12:2] = 0x0001"));
        assert!(tx.ends_with("arp[14:4] = 0xc0a80702"));
    }

    #[test]
    fn mac_text_is_lowercase_colon_separated() {
        assert_eq!(mac_text([0xff, 0, 0xab, 1, 2, 0x10]), "ff:00:ab:01:02:10");
    }
}
