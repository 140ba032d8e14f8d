//! Table keys: what a port binding is in the classifier's tables, and what a frame's key is.
//!
//! A frame's *key* is (IP version, transport protocol, destination address, destination
//! port), read exactly as libpcap's generated code reads it for `dst port` and `dst host`
//! (the compiler's `binding` module proves that a port filter accepts exactly the frames whose
//! key is one of its bindings):
//!
//! * the version is the ethertype at offset 12: `0x0800` IPv4, `0x86dd` IPv6, nothing else
//!   (no VLAN or MPLS look-through);
//! * IPv4: the protocol is `ip[9]`; a frame whose fragment offset `ip[6:2] & 0x1fff` is not 0
//!   has no key; the destination port is the 2 bytes at `14 + 4 * (ip[0] & 0xf) + 2` (the
//!   header length taken from the IHL without checking the version or that IHL >= 5); the
//!   destination address is `ip[16:4]`;
//! * IPv6: the protocol is the immediate next header `ip6[6]` (no extension header walk), the
//!   destination port is at `14 + 40 + 2`, the destination address is `ip6[24:16]`;
//! * a load outside the captured bytes means the frame has no key for any binding that needs
//!   that load.
//!
//! [`frame_keys`] computes it in plain Rust: the specification the generic program
//! ([`crate::program`]) is tested against.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmux_proto::driver::PortBinding;

/// IANA protocol numbers of the transports whose bindings go into the tables.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// Whether bindings of IP protocol `p` go into the tables (TCP, UDP, SCTP: the protocols
/// with a destination port at the start of their header).
pub const fn has_ports(p: u8) -> bool {
    matches!(p, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

/// The keyword of a protocol with ports, or `None`.
pub const fn protocol_name(p: u8) -> Option<&'static str> {
    match p {
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        IPPROTO_SCTP => Some("sctp"),
        _ => None,
    }
}

/// An IP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (ethertype 0x0800).
    V4,
    /// IPv6 (ethertype 0x86dd).
    V6,
}

impl Family {
    /// The number in address-less keys: 4 or 6.
    pub const fn code(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// One entry of the classifier's tables: a frame has at most one key of each shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// IPv4 with this destination address.
    V4 {
        /// Transport protocol number (TCP, UDP or SCTP).
        protocol: u8,
        /// Destination address.
        addr: Ipv4Addr,
        /// Destination port.
        port: u16,
    },
    /// IPv6 with this destination address.
    V6 {
        /// Transport protocol number.
        protocol: u8,
        /// Destination address.
        addr: Ipv6Addr,
        /// Destination port.
        port: u16,
    },
    /// Any destination address of this family.
    AnyAddr {
        /// IP version.
        family: Family,
        /// Transport protocol number.
        protocol: u8,
        /// Destination port.
        port: u16,
    },
}

impl Key {
    /// The table key of a binding, or `None` when its protocol has no ports: an IPv4 key (the
    /// first four address bytes; the other twelve are ignored, as ownership ignores them), an
    /// IPv6 key, or, when the address is all zeros, the family's address-less key (a wildcard
    /// bind).
    pub fn of(binding: &PortBinding) -> Option<Key> {
        let protocol = binding.protocol;
        if !has_ports(protocol) {
            return None;
        }
        let port = binding.port;
        let key = if binding.ipv6 {
            if binding.address == [0; 16] {
                Key::AnyAddr {
                    family: Family::V6,
                    protocol,
                    port,
                }
            } else {
                Key::V6 {
                    protocol,
                    addr: Ipv6Addr::from(binding.address),
                    port,
                }
            }
        } else {
            let a = [
                binding.address[0],
                binding.address[1],
                binding.address[2],
                binding.address[3],
            ];
            if a == [0; 4] {
                Key::AnyAddr {
                    family: Family::V4,
                    protocol,
                    port,
                }
            } else {
                Key::V4 {
                    protocol,
                    addr: Ipv4Addr::from(a),
                    port,
                }
            }
        };
        Some(key)
    }

    /// The binding this key is (the inverse of [`Key::of`]).
    pub fn binding(&self) -> PortBinding {
        let mut address = [0u8; 16];
        let (protocol, ipv6, port) = match *self {
            Key::V4 {
                protocol,
                addr,
                port,
            } => {
                address[..4].copy_from_slice(&addr.octets());
                (protocol, false, port)
            }
            Key::V6 {
                protocol,
                addr,
                port,
            } => {
                address = addr.octets();
                (protocol, true, port)
            }
            Key::AnyAddr {
                family,
                protocol,
                port,
            } => (protocol, family == Family::V6, port),
        };
        PortBinding {
            protocol,
            address,
            ipv6,
            port,
        }
    }

    /// Whether the key names a destination address.
    pub fn has_address(&self) -> bool {
        !matches!(self, Key::AnyAddr { .. })
    }

    /// The destination port.
    pub fn port(&self) -> u16 {
        match *self {
            Key::V4 { port, .. } | Key::V6 { port, .. } | Key::AnyAddr { port, .. } => port,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |p: u8| protocol_name(p).map_or_else(|| format!("proto {p}"), String::from);
        match self {
            Key::V4 {
                protocol,
                addr,
                port,
            } => write!(f, "{} {addr} port {port}", name(*protocol)),
            Key::V6 {
                protocol,
                addr,
                port,
            } => write!(f, "{} [{addr}] port {port}", name(*protocol)),
            Key::AnyAddr {
                family,
                protocol,
                port,
            } => {
                let any = if *family == Family::V4 { "ip" } else { "ip6" };
                write!(f, "{} {any} any address port {port}", name(*protocol))
            }
        }
    }
}

/// Ethernet header length: the network header starts here (the keys look through no VLAN).
pub(crate) const NET: usize = 14;

/// The keys of a frame as the module documentation defines them: the exact-address key and
/// the address-less key. Never panics.
pub fn frame_keys(frame: &[u8]) -> (Option<Key>, Option<Key>) {
    let b = |i: usize| frame.get(i).copied();
    let h = |i: usize| Some(u16::from_be_bytes([b(i)?, b(i + 1)?]));
    let Some(ethertype) = h(12) else {
        return (None, None);
    };
    let (family, protocol, port, addr) = match ethertype {
        0x0800 => {
            let (Some(frag), Some(protocol), Some(ihl)) = (h(NET + 6), b(NET + 9), b(NET)) else {
                return (None, None);
            };
            if frag & 0x1fff != 0 {
                return (None, None);
            }
            let Some(port) = h(NET + 4 * usize::from(ihl & 0xf) + 2) else {
                return (None, None);
            };
            let addr = frame
                .get(NET + 16..NET + 20)
                .map(|a| IpAddr::from([a[0], a[1], a[2], a[3]]));
            (Family::V4, protocol, port, addr)
        }
        0x86dd => {
            let (Some(protocol), Some(port)) = (b(NET + 6), h(NET + 42)) else {
                return (None, None);
            };
            let mut a = [0u8; 16];
            a.copy_from_slice(&frame[NET + 24..NET + 40]);
            (Family::V6, protocol, port, Some(IpAddr::from(a)))
        }
        _ => return (None, None),
    };
    if !has_ports(protocol) {
        return (None, None);
    }
    let any = Key::AnyAddr {
        family,
        protocol,
        port,
    };
    let exact = addr.map(|a| match a {
        IpAddr::V4(addr) => Key::V4 {
            protocol,
            addr,
            port,
        },
        IpAddr::V6(addr) => Key::V6 {
            protocol,
            addr,
            port,
        },
    });
    (exact, Some(any))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_and_its_key_convert_both_ways() {
        let keys = [
            Key::V4 {
                protocol: IPPROTO_UDP,
                addr: Ipv4Addr::new(192, 0, 2, 1),
                port: 53,
            },
            Key::V6 {
                protocol: IPPROTO_TCP,
                addr: "2001:db8::1".parse().unwrap(),
                port: 80,
            },
            Key::AnyAddr {
                family: Family::V6,
                protocol: IPPROTO_SCTP,
                port: 9,
            },
        ];
        for k in keys {
            assert_eq!(Key::of(&k.binding()), Some(k));
        }
        let mut icmp = keys[0].binding();
        icmp.protocol = 1;
        assert_eq!(Key::of(&icmp), None);
    }
}
