//! What is common to IPv4 and IPv6: protocol numbers, and the frame-level questions the
//! driver asks of any Ethernet frame (is it a fragment, is it shorter than its headers say,
//! where is its transport header), each with the VLAN walk of [`crate::ethernet::link_layer`].

use crate::ethernet::{ethertype, link_layer};
use crate::ipv6::{self, Chain};
use crate::{be16, ipv4};

pub use crate::protocol;

/// Whether `frame` is an IP fragment: IPv4 with MF set or a non-zero offset, or IPv6 carrying a
/// Fragment header anywhere in its extension header chain (atomic fragments included). Anything
/// the walk cannot see into counts as a fragment too, since it might hide one: an IPv6 chain
/// that is truncated or longer than [`ipv6::MAX_EXTENSION_HEADERS`], or more VLAN tags than
/// [`crate::ethernet::MAX_VLAN_TAGS`]. Reads a few dozen bytes of headers; never panics.
pub fn is_fragment(frame: &[u8]) -> bool {
    let Some(link) = link_layer(frame) else {
        // Too many VLAN tags (or a cut-off tag): whether an IP fragment is inside is unknown.
        return be16(frame, 12).is_some_and(ethertype::is_vlan_tag);
    };
    let Some(ip) = frame.get(link.l3..) else {
        return false;
    };
    match link.ethertype {
        ethertype::IPV4 => {
            be16(ip, 6).is_some_and(|flags| flags & (ipv4::FLAG_MF | ipv4::OFFSET_MASK) != 0)
        }
        ethertype::IPV6 => {
            ip.len() >= ipv6::HEADER_LEN
                && !matches!(
                    ipv6::walk_extension_headers(ip, ip.len()),
                    Chain::Upper { .. }
                )
        }
        _ => false,
    }
}

/// Whether `frame` is shorter than its own headers say: shorter than an Ethernet header (or
/// its VLAN tags), or an IPv4 datagram whose header length is below 20 bytes or whose total
/// length is below its header length or beyond the frame, or an IPv6 datagram whose fixed
/// header or payload length lies beyond the frame. Bytes after the datagram are Ethernet
/// padding. Tagged frames are looked into like untagged ones.
pub fn is_truncated(frame: &[u8]) -> bool {
    let Some(link) = link_layer(frame) else {
        // A cut Ethernet header or tag is truncated; a third tag is not ours to judge here
        // (the fragment rule refuses it).
        return frame.len() < crate::ethernet::HEADER_LEN
            || (be16(frame, 12).is_some_and(ethertype::is_vlan_tag)
                && !has_more_tags_than_walked(frame));
    };
    let ip = frame.get(link.l3..).unwrap_or(&[]);
    match link.ethertype {
        ethertype::IPV4 => {
            let header = ip.first().map_or(0, |&vihl| usize::from(vihl & 0x0f) * 4);
            let total = be16(ip, 2).map_or(0, usize::from);
            header < ipv4::MIN_HEADER_LEN || total < header || total > ip.len()
        }
        ethertype::IPV6 => match be16(ip, 4) {
            Some(payload) => ipv6::HEADER_LEN + usize::from(payload) > ip.len(),
            None => true,
        },
        _ => false,
    }
}

/// Whether the tag walk stopped because of a third tag (rather than a cut one).
fn has_more_tags_than_walked(frame: &[u8]) -> bool {
    let mut at = crate::ethernet::HEADER_LEN;
    for _ in 0..crate::ethernet::MAX_VLAN_TAGS {
        match be16(frame, at + 2) {
            Some(t) if ethertype::is_vlan_tag(t) => at += crate::ethernet::VLAN_TAG_LEN,
            _ => return false,
        }
    }
    true
}

/// The transport layer of a whole (unfragmented) IP datagram in an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// Offset of the network header in the frame.
    pub l3: usize,
    /// Whether the datagram is IPv6.
    pub ipv6: bool,
    /// The protocol (IPv4) or the upper-layer next header after the extension headers (IPv6).
    pub protocol: u8,
    /// Offset of the transport header in the frame.
    pub l4: usize,
    /// End of the datagram in the frame (padding excluded).
    pub end: usize,
}

/// Finds the transport header of `frame`: IPv4 or IPv6 behind up to two VLAN tags, the IPv6
/// extension headers walked. `None` for a frame that is not IP, is a fragment, or whose
/// headers do not fit its lengths. Never panics.
pub fn transport(frame: &[u8]) -> Option<Transport> {
    let link = link_layer(frame)?;
    let ip = frame.get(link.l3..)?;
    match link.ethertype {
        ethertype::IPV4 => {
            let p = ipv4::Ipv4Packet::new_checked(ip).ok()?;
            if p.is_fragment() {
                return None;
            }
            Some(Transport {
                l3: link.l3,
                ipv6: false,
                protocol: p.protocol(),
                l4: link.l3 + p.header_len(),
                end: link.l3 + usize::from(p.total_len()),
            })
        }
        ethertype::IPV6 => {
            let p = ipv6::Ipv6Packet::new_checked(ip).ok()?;
            let len = p.packet().len();
            match ipv6::walk_extension_headers(ip, len) {
                Chain::Upper { next_header, at } => Some(Transport {
                    l3: link.l3,
                    ipv6: true,
                    protocol: next_header,
                    l4: link.l3 + at,
                    end: link.l3 + len,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether the first fragment's data `data` holds the whole header chain that starts with a
/// header of type `upper`: for IPv6 every extension header and the upper-layer header
/// (RFC 7112), for IPv4 the transport header. Protocols whose header length is not known here
/// need nothing beyond a non-empty fragment.
pub fn holds_header_chain(v6: bool, upper: u8, data: &[u8]) -> bool {
    use protocol::*;
    let mut nh = upper;
    let mut at = 0usize;
    for _ in 0..=ipv6::MAX_EXTENSION_HEADERS {
        let rest = data.get(at..).unwrap_or(&[]);
        if v6 {
            if nh == FRAGMENT {
                // A Fragment header inside the fragmentable part: step over it like any other.
                if rest.len() < ipv6::FRAGMENT_HEADER_LEN {
                    return false;
                }
                nh = rest[0];
                at += ipv6::FRAGMENT_HEADER_LEN;
                continue;
            }
            if let Some(len) = ipv6::extension_header_len(nh, rest) {
                if len > rest.len() {
                    return false;
                }
                nh = rest[0];
                at += len;
                continue;
            } else if ipv6::is_extension_header(nh) {
                return false; // its length byte is missing
            }
        }
        let need = match nh {
            TCP => {
                let Some(&doff) = rest.get(12) else {
                    return false;
                };
                usize::from(doff >> 4).max(5) * 4
            }
            UDP | UDP_LITE | ICMP | ICMPV6 | IGMP => 8,
            SCTP => 12,
            // ESP: the SPI and sequence number; what follows is encrypted.
            ESP => 8,
            _ => 0,
        };
        return rest.len() >= need;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(tags: usize, flags: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for _ in 0..tags {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[6..8].copy_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn fragments_are_found_behind_vlan_tags() {
        assert!(!is_fragment(&udp4(0, 0)));
        assert!(is_fragment(&udp4(0, ipv4::FLAG_MF)));
        assert!(is_fragment(&udp4(2, 1)));
        assert!(!is_fragment(&udp4(2, ipv4::FLAG_DF)));
        assert!(is_fragment(&udp4(3, 0)), "a third tag hides what is inside");
    }

    #[test]
    fn truncation_is_judged_behind_vlan_tags_too() {
        let f = udp4(1, 0);
        assert!(!is_truncated(&f));
        assert!(is_truncated(&f[..f.len() - 1]));
        assert!(is_truncated(&f[..15]));
        assert!(!is_truncated(&udp4(3, 0)));
    }

    #[test]
    fn the_transport_header_is_found() {
        let f = udp4(1, 0);
        let t = transport(&f).unwrap();
        assert_eq!(
            (t.l3, t.l4, t.end, t.protocol, t.ipv6),
            (18, 38, 46, 17, false)
        );
        assert_eq!(transport(&udp4(0, ipv4::FLAG_MF)), None);
    }
}
