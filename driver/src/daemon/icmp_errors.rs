//! ICMP errors to the client whose flow they concern.
//!
//! A client's stack needs the ICMP errors its own datagrams caused: "fragmentation needed" for
//! path-MTU discovery, "port unreachable" and "time exceeded" to give up early. No receive
//! filter names them (their destination port is the quoted datagram's business), so without
//! this step they would reach only netd's host stack.
//!
//! An IPv4 ICMP error (destination unreachable, time exceeded, parameter problem) that no
//! filter took goes to the queue that was granted the flow it quotes: the quoted datagram's
//! protocol, source address and source port must be a transmit grant of that queue (the same
//! [`PortBinding`]s the transmit check holds it to), and the error must be addressed to the
//! quoted source address at the instance's MAC. An error that quotes someone else's flow, a
//! flow nobody holds, or a datagram without ports goes to netd as before, never to a client.

use netmux_proto::driver::{PortBinding, QueueId};
use netmux_wire::ethernet::{ethertype, link_layer};
use netmux_wire::ip::protocol;
use netmux_wire::ipv4::Ipv4Packet;

use super::instances::{Slot, Target};

/// ICMP types that are errors quoting the offending datagram (RFC 792): destination
/// unreachable, time exceeded, parameter problem.
const ICMP_ERROR_TYPES: [u8; 3] = [3, 11, 12];
/// The ICMP header before the quoted datagram.
const ICMP_HEADER_LEN: usize = 8;

/// The flow an ICMP error quotes: the sender's side of the datagram that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedFlow {
    /// The quoted transport protocol (TCP or UDP).
    pub protocol: u8,
    /// The quoted source address: the host the error is for.
    pub source: [u8; 4],
    /// The quoted source port.
    pub source_port: u16,
    /// The Ethernet destination of the error.
    pub dst_mac: [u8; 6],
}

/// The flow an ICMP error in `frame` quotes, when `frame` is a whole IPv4 ICMP error addressed
/// to the quoted datagram's source and quoting a TCP or UDP header with its ports. Never panics.
pub fn quoted_flow(frame: &[u8]) -> Option<QuotedFlow> {
    let link = link_layer(frame)?;
    if link.ethertype != ethertype::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(link.l3..)?).ok()?;
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
    if quoted_protocol != protocol::TCP && quoted_protocol != protocol::UDP {
        return None;
    }
    let source: [u8; 4] = quoted.get(12..16)?.try_into().ok()?;
    if source != ip.dst() {
        return None;
    }
    let port = quoted.get(ihl..ihl + 2)?;
    Some(QuotedFlow {
        protocol: quoted_protocol,
        source,
        source_port: u16::from_be_bytes([port[0], port[1]]),
        dst_mac: frame.get(..6)?.try_into().ok()?,
    })
}

/// Whether `grant` lets a queue send `flow`'s datagrams.
pub fn grants(grant: &PortBinding, flow: &QuotedFlow) -> bool {
    let unspecified = grant.address[..4].iter().all(|&b| b == 0);
    !grant.ipv6
        && grant.protocol == flow.protocol
        && grant.port == flow.source_port
        && (unspecified || grant.address[..4] == flow.source)
}

impl super::Driver {
    /// Adds to the receivers the queue of the instances at `target` that owns the flow the ICMP
    /// error in `frame` quotes, if there is one (see the module documentation).
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
                    protocol: protocol::TCP,
                    source: HOST,
                    source_port: 8080,
                    dst_mac: MAC
                }
            );
            assert!(grants(&grant(protocol::TCP, HOST, 8080), &flow));
            assert!(grants(&grant(protocol::TCP, [0; 4], 8080), &flow));
            assert!(!grants(&grant(protocol::UDP, HOST, 8080), &flow));
            assert!(!grants(&grant(protocol::TCP, HOST, 8081), &flow));
            assert!(!grants(&grant(protocol::TCP, PEER, 8080), &flow));
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
}
