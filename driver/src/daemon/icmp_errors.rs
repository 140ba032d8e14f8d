//! ICMP and ICMPv6 errors to the client whose flow they concern.
//!
//! A client's stack needs the ICMP errors its own datagrams caused: "fragmentation needed" and
//! "packet too big" for path-MTU discovery, "port unreachable" and "time exceeded" to give up
//! early. No receive filter names them (their destination port is the quoted datagram's
//! business), so without this step they would reach only netd's host stack.
//!
//! An error that no filter took goes to the queue that was granted the flow it quotes: an IPv4
//! ICMP error (destination unreachable, time exceeded, parameter problem) or an ICMPv6 error
//! (destination unreachable, packet too big, time exceeded, parameter problem; RFC 4443). The
//! quoted datagram's protocol, source address and source port must be a transmit grant of that
//! queue of the same family (the same [`PortBinding`]s the transmit check holds it to), and the
//! error must be addressed to the quoted source address at the instance's MAC. The quoted IPv6
//! header's extension headers are stepped over (at most
//! [`netmux_wire::ipv6::MAX_EXTENSION_HEADERS`], never past the quote); a first fragment's
//! ports are read after its Fragment header. An error that quotes someone else's flow, a flow
//! nobody holds, a datagram without ports, a later fragment or a quote cut short goes to netd
//! as before, never to a client.

use netmux_proto::driver::{PortBinding, QueueId};
use netmux_wire::ethernet::{ethertype, link_layer};
use netmux_wire::ip::protocol;
use netmux_wire::ipv4::Ipv4Packet;
use netmux_wire::ipv6::{self, Chain, Ipv6Packet};

use super::instances::{Slot, Target};

/// ICMP types that are errors quoting the offending datagram (RFC 792): destination
/// unreachable, time exceeded, parameter problem.
const ICMP_ERROR_TYPES: [u8; 3] = [3, 11, 12];
/// ICMPv6 types that are errors quoting the offending packet (RFC 4443): destination
/// unreachable, packet too big, time exceeded, parameter problem.
const ICMPV6_ERROR_TYPES: [u8; 4] = [1, 2, 3, 4];
/// The ICMP (and ICMPv6) header before the quoted datagram.
const ICMP_HEADER_LEN: usize = 8;

/// The flow an ICMP error quotes: the sender's side of the datagram that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedFlow {
    /// Whether the error is ICMPv6 quoting an IPv6 packet (else ICMP quoting IPv4).
    pub ipv6: bool,
    /// The quoted transport protocol (TCP or UDP).
    pub protocol: u8,
    /// The quoted source address, the host the error is for: an IPv4 address in the first four
    /// bytes (the rest zero), or an IPv6 address.
    pub source: [u8; 16],
    /// The quoted source port.
    pub source_port: u16,
    /// The Ethernet destination of the error.
    pub dst_mac: [u8; 6],
}

/// The flow an ICMP or ICMPv6 error in `frame` quotes, when `frame` is a whole (unfragmented)
/// error addressed to the quoted datagram's source and quoting a TCP or UDP header with its
/// ports. Never panics.
pub fn quoted_flow(frame: &[u8]) -> Option<QuotedFlow> {
    let link = link_layer(frame)?;
    let l3 = frame.get(link.l3..)?;
    let (ipv6, protocol, source, source_port) = match link.ethertype {
        ethertype::IPV4 => quoted_in_icmp(l3)?,
        ethertype::IPV6 => quoted_in_icmpv6(l3)?,
        _ => return None,
    };
    Some(QuotedFlow {
        ipv6,
        protocol,
        source,
        source_port,
        dst_mac: frame.get(..6)?.try_into().ok()?,
    })
}

/// Whether `protocol` has the source port first in its header.
fn has_ports(protocol: u8) -> bool {
    protocol == protocol::TCP || protocol == protocol::UDP
}

/// (false, protocol, source, source port) of the datagram the IPv4 ICMP error `l3` quotes.
fn quoted_in_icmp(l3: &[u8]) -> Option<(bool, u8, [u8; 16], u16)> {
    let ip = Ipv4Packet::new_checked(l3).ok()?;
    if ip.is_fragment() || ip.protocol() != protocol::ICMP {
        return None;
    }
    let icmp = ip.payload();
    if !ICMP_ERROR_TYPES.contains(icmp.first()?) {
        return None;
    }
    let quoted = icmp.get(ICMP_HEADER_LEN..)?;
    let vihl = *quoted.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let flags_offset = u16::from_be_bytes([*quoted.get(6)?, *quoted.get(7)?]);
    if flags_offset & netmux_wire::ipv4::OFFSET_MASK != 0 {
        return None; // a later fragment has no ports
    }
    let quoted_protocol = *quoted.get(9)?;
    if !has_ports(quoted_protocol) {
        return None;
    }
    let source: [u8; 4] = quoted.get(12..16)?.try_into().ok()?;
    if source != ip.dst() {
        return None;
    }
    let port = quoted.get(ihl..ihl + 2)?;
    let mut address = [0u8; 16];
    address[..4].copy_from_slice(&source);
    Some((
        false,
        quoted_protocol,
        address,
        u16::from_be_bytes([port[0], port[1]]),
    ))
}

/// (true, protocol, source, source port) of the packet the ICMPv6 error `l3` quotes.
fn quoted_in_icmpv6(l3: &[u8]) -> Option<(bool, u8, [u8; 16], u16)> {
    let ip = Ipv6Packet::new_checked(l3).ok()?;
    let packet = ip.packet();
    // The error itself: ICMPv6 after any extension headers, not a fragment.
    let Chain::Upper {
        next_header: protocol::ICMPV6,
        at,
    } = ipv6::walk_extension_headers(packet, packet.len())
    else {
        return None;
    };
    let icmp = packet.get(at..)?;
    if !ICMPV6_ERROR_TYPES.contains(icmp.first()?) {
        return None;
    }
    // The quote: as much of the offending packet as fit, its payload length unreliable.
    let quoted = icmp.get(ICMP_HEADER_LEN..)?;
    if quoted.len() < ipv6::HEADER_LEN || quoted[0] >> 4 != 6 {
        return None;
    }
    let (quoted_protocol, transport) = match ipv6::walk_extension_headers(quoted, quoted.len()) {
        Chain::Upper { next_header, at } => (next_header, at),
        Chain::Fragment { at, .. } => {
            let offset = u16::from_be_bytes([*quoted.get(at + 2)?, *quoted.get(at + 3)?]);
            if offset & 0xfff8 != 0 {
                return None; // a later fragment has no ports
            }
            (*quoted.get(at)?, at + ipv6::FRAGMENT_HEADER_LEN)
        }
        Chain::Broken => return None,
    };
    if !has_ports(quoted_protocol) {
        return None;
    }
    let source: [u8; 16] = quoted.get(8..24)?.try_into().ok()?;
    if source != ip.dst() {
        return None;
    }
    let port = quoted.get(transport..transport + 2)?;
    Some((
        true,
        quoted_protocol,
        source,
        u16::from_be_bytes([port[0], port[1]]),
    ))
}

/// Whether `grant` lets a queue send `flow`'s datagrams.
pub fn grants(grant: &PortBinding, flow: &QuotedFlow) -> bool {
    let len = if flow.ipv6 { 16 } else { 4 };
    let unspecified = grant.address[..len].iter().all(|&b| b == 0);
    grant.ipv6 == flow.ipv6
        && grant.protocol == flow.protocol
        && grant.port == flow.source_port
        && (unspecified || grant.address[..len] == flow.source[..len])
}

impl super::Driver {
    /// Adds to the receivers the queue of the instances at `target` that owns the flow the ICMP
    /// or ICMPv6 error in `frame` quotes, if there is one (see the module documentation).
    pub(super) fn icmp_error_owner(&mut self, frame: &[u8], target: Target) {
        let Some(flow) = quoted_flow(frame) else {
            return;
        };
        let mut slots: Vec<Slot> = Vec::new();
        self.instances.slots(target, &mut slots);
        for slot in slots {
            let Some(instance) = self.instances.get(slot) else {
                continue;
            };
            if instance.mac != flow.dst_mac {
                continue;
            }
            let owner: Option<QueueId> = instance.queues.iter().copied().find(|q| {
                self.queues
                    .get(q)
                    .is_some_and(|queue| queue.tx_filters.bindings().any(|g| grants(g, &flow)))
            });
            if let Some(owner) = owner {
                self.receivers.push(owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const HOST: [u8; 4] = [10, 0, 0, 1];
    const PEER: [u8; 4] = [10, 0, 0, 2];

    /// An ICMP error of `icmp_type` from the peer to `to`, quoting a datagram of `proto` from
    /// `quoted_src`:`sport`.
    fn error(icmp_type: u8, to: [u8; 4], proto: u8, quoted_src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 20 + 8];
        f[..6].copy_from_slice(&MAC);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 8 + 28) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = protocol::ICMP;
        f[26..30].copy_from_slice(&PEER);
        f[30..34].copy_from_slice(&to);
        f[34] = icmp_type;
        f[35] = 4; // code: fragmentation needed, for type 3
        let q = 42;
        f[q] = 0x45;
        f[q + 9] = proto;
        f[q + 12..q + 16].copy_from_slice(&quoted_src);
        f[q + 16..q + 20].copy_from_slice(&PEER);
        f[q + 20..q + 22].copy_from_slice(&sport.to_be_bytes());
        f[q + 22..q + 24].copy_from_slice(&4000u16.to_be_bytes());
        f
    }

    /// `a` as [`QuotedFlow::source`] holds an IPv4 address.
    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    fn grant(proto: u8, address: [u8; 4], port: u16) -> PortBinding {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&address);
        PortBinding {
            protocol: proto,
            address: a,
            ipv6: false,
            port,
        }
    }

    #[test]
    fn an_icmp_error_names_the_flow_it_quotes() {
        for t in ICMP_ERROR_TYPES {
            let flow = quoted_flow(&error(t, HOST, protocol::TCP, HOST, 8080)).unwrap();
            assert_eq!(
                flow,
                QuotedFlow {
                    ipv6: false,
                    protocol: protocol::TCP,
                    source: v4(HOST),
                    source_port: 8080,
                    dst_mac: MAC
                }
            );
            assert!(grants(&grant(protocol::TCP, HOST, 8080), &flow));
            assert!(grants(&grant(protocol::TCP, [0; 4], 8080), &flow));
            assert!(!grants(&grant(protocol::UDP, HOST, 8080), &flow));
            assert!(!grants(&grant(protocol::TCP, HOST, 8081), &flow));
            assert!(!grants(&grant(protocol::TCP, PEER, 8080), &flow));
            let mut v6_any = grant(protocol::TCP, [0; 4], 8080);
            v6_any.ipv6 = true;
            assert!(!grants(&v6_any, &flow), "an IPv6 grant is not an IPv4 one");
        }
    }

    #[test]
    fn an_error_quoting_someone_elses_flow_names_no_flow() {
        // Addressed to the host, quoting a datagram another host sent.
        assert_eq!(
            quoted_flow(&error(3, HOST, protocol::UDP, [10, 0, 0, 9], 53)),
            None
        );
        // Echo replies and other non-errors, other protocols quoted, cut quotes: nothing.
        assert_eq!(quoted_flow(&error(0, HOST, protocol::UDP, HOST, 53)), None);
        assert_eq!(quoted_flow(&error(3, HOST, protocol::ICMP, HOST, 53)), None);
        let whole = error(3, HOST, protocol::UDP, HOST, 53);
        for cut in 0..42 + 20 + 2 {
            let mut f = whole[..cut].to_vec();
            if f.len() >= 18 {
                // Keep the outer total length honest so only the quote is cut.
                let total = (cut.saturating_sub(14)) as u16;
                f[16..18].copy_from_slice(&total.to_be_bytes());
            }
            assert_eq!(quoted_flow(&f), None, "cut at {cut}");
        }
        let mut later_fragment = whole.clone();
        later_fragment[42 + 7] = 1; // quoted offset 8: no ports in it
        assert_eq!(quoted_flow(&later_fragment), None);
    }

    const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const PEER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const OTHER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    /// A Destination Options header (8 bytes, PadN), its next-header byte filled in later.
    const OPTIONS: (u8, [u8; 8]) = (protocol::DESTINATION_OPTIONS, [0, 0, 1, 4, 0, 0, 0, 0]);

    /// An IPv6 packet from `src` to `dst` whose payload is the extension headers of `chain`
    /// (their next-header bytes filled in) and then `upper` of type `upper_type`; its payload
    /// length says `claimed` when given (a quote is cut short of what its header says).
    fn ip6(
        src: [u8; 16],
        dst: [u8; 16],
        chain: &[(u8, [u8; 8])],
        upper_type: u8,
        upper: &[u8],
        claimed: Option<u16>,
    ) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = chain.first().map_or(upper_type, |h| h.0);
        p[7] = 64;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        for (i, (_, header)) in chain.iter().enumerate() {
            let mut h = *header;
            h[0] = chain.get(i + 1).map_or(upper_type, |n| n.0);
            p.extend_from_slice(&h);
        }
        p.extend_from_slice(upper);
        let len = claimed.unwrap_or((p.len() - 40) as u16);
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p
    }

    /// The start of a TCP or UDP header from `sport` to port 4000.
    fn ports(sport: u16) -> [u8; 8] {
        let mut t = [0u8; 8];
        t[..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&4000u16.to_be_bytes());
        t
    }

    /// An Ethernet frame to [`MAC`] carrying the ICMPv6 message of `icmp_type` from the peer
    /// to `to` (behind the extension headers of `outer`), quoting `quoted`.
    fn error6_quoting(
        icmp_type: u8,
        to: [u8; 16],
        outer: &[(u8, [u8; 8])],
        quoted: &[u8],
    ) -> Vec<u8> {
        let mut f = MAC.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ethertype::IPV6.to_be_bytes());
        let mut icmp = vec![icmp_type, 0, 0, 0, 0, 0, 0x05, 0x00]; // packet too big: MTU 1280
        icmp.extend_from_slice(quoted);
        f.extend_from_slice(&ip6(PEER6, to, outer, protocol::ICMPV6, &icmp, None));
        f
    }

    /// An ICMPv6 error of `icmp_type` from the peer to `to`, quoting a full-sized packet of
    /// `proto` from `quoted_src`:`sport` to the peer, cut after its ports.
    fn error6(icmp_type: u8, to: [u8; 16], proto: u8, quoted_src: [u8; 16], sport: u16) -> Vec<u8> {
        let quoted = ip6(quoted_src, PEER6, &[], proto, &ports(sport), Some(1460));
        error6_quoting(icmp_type, to, &[], &quoted)
    }

    fn grant6(proto: u8, address: [u8; 16], port: u16) -> PortBinding {
        PortBinding {
            protocol: proto,
            address,
            ipv6: true,
            port,
        }
    }

    #[test]
    fn an_icmpv6_error_names_the_flow_it_quotes() {
        for t in ICMPV6_ERROR_TYPES {
            let flow = quoted_flow(&error6(t, HOST6, protocol::TCP, HOST6, 8080)).unwrap();
            assert_eq!(
                flow,
                QuotedFlow {
                    ipv6: true,
                    protocol: protocol::TCP,
                    source: HOST6,
                    source_port: 8080,
                    dst_mac: MAC
                }
            );
            assert!(grants(&grant6(protocol::TCP, HOST6, 8080), &flow));
            assert!(grants(&grant6(protocol::TCP, [0; 16], 8080), &flow));
            assert!(!grants(&grant6(protocol::UDP, HOST6, 8080), &flow));
            assert!(!grants(&grant6(protocol::TCP, HOST6, 8081), &flow));
            assert!(!grants(&grant6(protocol::TCP, OTHER6, 8080), &flow));
            assert!(
                !grants(&grant(protocol::TCP, [0; 4], 8080), &flow),
                "an IPv4 grant is not an IPv6 one"
            );
            // The same first bytes as an IPv4 grant's address name no IPv6 flow either.
            let mut prefix = [0u8; 4];
            prefix.copy_from_slice(&HOST6[..4]);
            assert!(!grants(&grant(protocol::TCP, prefix, 8080), &flow));
        }
    }

    #[test]
    fn extension_headers_in_the_error_and_in_the_quote_are_stepped_over() {
        let want = QuotedFlow {
            ipv6: true,
            protocol: protocol::UDP,
            source: HOST6,
            source_port: 5353,
            dst_mac: MAC,
        };
        let hop_by_hop = (protocol::HOP_BY_HOP, OPTIONS.1);
        // A fragment header at offset 0 (more fragments follow): the first fragment has ports.
        let first_fragment = (protocol::FRAGMENT, [0, 0, 0, 1, 0, 0, 0, 7]);
        for (outer, inner) in [
            (vec![hop_by_hop], vec![]),
            (vec![], vec![hop_by_hop, OPTIONS]),
            (vec![hop_by_hop, OPTIONS], vec![OPTIONS, first_fragment]),
            (vec![], vec![first_fragment]),
        ] {
            let quoted = ip6(
                HOST6,
                PEER6,
                &inner,
                protocol::UDP,
                &ports(5353),
                Some(1460),
            );
            let f = error6_quoting(2, HOST6, &outer, &quoted);
            assert_eq!(quoted_flow(&f), Some(want), "{outer:?} / {inner:?}");
        }
        // A later fragment has no ports; a Fragment header in the error itself makes it a
        // fragment, which is not looked into.
        let later = (protocol::FRAGMENT, [0, 0, 0x05, 0x01, 0, 0, 0, 7]);
        let quoted = ip6(HOST6, PEER6, &[later], protocol::UDP, &ports(5353), None);
        assert_eq!(quoted_flow(&error6_quoting(2, HOST6, &[], &quoted)), None);
        let quoted = ip6(HOST6, PEER6, &[], protocol::UDP, &ports(5353), None);
        assert_eq!(
            quoted_flow(&error6_quoting(2, HOST6, &[first_fragment], &quoted)),
            None
        );
        // A chain longer than the walk's bound, or one whose length byte points past the
        // quote: nothing, and no panic.
        let long = vec![OPTIONS; ipv6::MAX_EXTENSION_HEADERS + 1];
        let quoted = ip6(HOST6, PEER6, &long, protocol::UDP, &ports(5353), None);
        assert_eq!(quoted_flow(&error6_quoting(2, HOST6, &[], &quoted)), None);
        let mut huge = OPTIONS;
        huge.1[1] = 255;
        let quoted = ip6(HOST6, PEER6, &[huge], protocol::UDP, &ports(5353), None);
        assert_eq!(quoted_flow(&error6_quoting(2, HOST6, &[], &quoted)), None);
    }

    #[test]
    fn an_icmpv6_error_quoting_someone_elses_flow_names_no_flow() {
        // Addressed to the host, quoting a packet another host sent.
        assert_eq!(
            quoted_flow(&error6(2, HOST6, protocol::TCP, OTHER6, 8080)),
            None
        );
        // Informational messages (echo, neighbour discovery), other protocols quoted: nothing.
        for t in [128, 129, 133, 134, 135, 136] {
            assert_eq!(
                quoted_flow(&error6(t, HOST6, protocol::UDP, HOST6, 53)),
                None,
                "{t}"
            );
        }
        assert_eq!(
            quoted_flow(&error6(1, HOST6, protocol::ICMPV6, HOST6, 53)),
            None
        );
        // An IPv4 packet quoted in an ICMPv6 error: nothing.
        let mut wrong_version = error6(1, HOST6, protocol::UDP, HOST6, 53);
        wrong_version[14 + 48] = 0x45;
        assert_eq!(quoted_flow(&wrong_version), None);
        // Cut anywhere before the quoted source port is whole: nothing.
        let whole = error6(2, HOST6, protocol::UDP, HOST6, 53);
        for cut in 0..14 + 48 + 40 + 2 {
            let mut f = whole[..cut].to_vec();
            if f.len() >= 14 + 40 {
                // Keep the outer payload length honest so only the quote is cut.
                let len = (cut - 14 - 40) as u16;
                f[18..20].copy_from_slice(&len.to_be_bytes());
            }
            assert_eq!(quoted_flow(&f), None, "cut at {cut}");
        }
        assert!(quoted_flow(&whole).is_some());
    }

    #[test]
    fn no_single_byte_of_an_icmpv6_error_makes_the_parser_panic() {
        let hop_by_hop = (protocol::HOP_BY_HOP, OPTIONS.1);
        let first_fragment = (protocol::FRAGMENT, [0, 0, 0, 1, 0, 0, 0, 7]);
        let quoted = ip6(
            HOST6,
            PEER6,
            &[OPTIONS, first_fragment],
            protocol::TCP,
            &ports(80),
            Some(1460),
        );
        let whole = error6_quoting(2, HOST6, &[hop_by_hop], &quoted);
        assert!(quoted_flow(&whole).is_some());
        // Every value at every position, and every length: an answer, never a panic.
        for at in 0..whole.len() {
            for value in 0..=u8::MAX {
                let mut f = whole.clone();
                f[at] = value;
                let _ = quoted_flow(&f);
            }
        }
        for cut in 0..whole.len() {
            let _ = quoted_flow(&whole[..cut]);
        }
    }
}
