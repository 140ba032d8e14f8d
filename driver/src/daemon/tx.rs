//! The transmit check: what the driver decides about one frame a client transmitted, always
//! on the driver's private copy of it.
//!
//! # How the verdict and its reason are decided
//!
//! The **verdict** comes from three rules only, in this order:
//!
//! 1. a frame shorter than its own headers say is rejected as malformed
//!    ([`netmux_wire::ip::is_truncated`]): a cut Ethernet header or VLAN tag, or an IPv4 or
//!    IPv6 datagram (tagged or not) whose header or length field claims bytes the frame does
//!    not have (a filter reads only the fields it tests, so it would pass a datagram cut right
//!    after its source port);
//! 2. an IP fragment is rejected ([`netmux_wire::ip::is_fragment`]), whatever the filters say
//!    (the driver reassembles what it receives, and fragments are how filters are evaded); the
//!    transmit path then gathers IPv4 and IPv6 fragments into their datagram and runs this
//!    check on it ([`super::tx_fragments`]);
//! 3. otherwise the frame goes on the wire when the queue's grant table or any of its verified
//!    tx programs accepts it, and is rejected when none does (a queue without tx filters
//!    transmits nothing).
//!
//! # Port grants are a table, not programs
//!
//! A bound port's transmit side is a [`PortBinding`] in its queue's grant table
//! ([`TxFilters::grant`]), installed without a program: the frame's source MAC (the queue's
//! instance MAC), source address, IP protocol and source port are read once and looked up
//! ([`grant_key`]), so binding and closing a port is a table update. The lookup accepts exactly
//! the frames the program `ether src MAC and ip[6] src host A and tcp|udp src port P` (what netd
//! compiled per binding before, `netmux_compiler::builders::tx_port_expr`) accepts: an untagged
//! IPv4 or IPv6 frame from the MAC and the address, of the protocol, with the port at the
//! transport header (after the IPv4 header's own length; right after the fixed IPv6 header).
//! Only the queue's other filters (ARP and neighbour discovery, a netd queue's own) are
//! programs. A property test holds the two equal frame for frame.
//!
//! Tx filters answer accept or reject, nothing more, so the **reason** for a
//! rejection is found afterwards by cheap structured checks of the same private copy against
//! what the queue was granted: the link's MAC address and the [`PortBinding`]s of its grants
//! and tx programs. The first check that fails names the reason: source MAC, then
//! ethertype (IPv4 and ARP for an IPv4 binding, IPv6 for an IPv6 one; a VLAN tag is an
//! ethertype no queue is granted), then source IP, then
//! (protocol, source port); ICMPv6 from a granted address (neighbour discovery, which has no
//! ports) is [`TxStatus::RejectedByFilter`], as are IGMP and MLD (a membership report for a
//! group the queue did not join, refused by the report filters of those it did). An ARP frame's sender hardware and protocol addresses are checked
//! like a source MAC and a source IP (ARP spoofing is forging them, whatever the Ethernet
//! header says). When every check passes, the filter rejected the frame for a reason
//! the checks do not model: [`TxStatus::RejectedByFilter`]. The diagnosis never turns a
//! rejection into an acceptance, and it only runs for rejected frames, so it costs nothing on
//! the fast path.

use std::collections::HashMap;

use netmux_proto::driver::{FilterId, PortBinding};
use netmux_ring::TxStatus;
use netmux_vm::{Engine, Scratch};
use netmux_wire::ethernet::ethertype;
use netmux_wire::ip::{is_fragment, is_truncated};
use netmux_wire::{arp, ipv6, EthernetFrame};

/// One installed tx filter of a queue.
pub struct TxFilter {
    /// Its id.
    pub filter: FilterId,
    /// The grant it was installed with, if it is a port filter.
    pub binding: Option<PortBinding>,
    /// The verified program on its engine.
    pub engine: Box<dyn Engine>,
}

impl std::fmt::Debug for TxFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxFilter")
            .field("filter", &self.filter)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

/// A queue's transmit filters: its port grants, a table looked up once per frame, and its
/// other filters, verified programs run in turn.
#[derive(Debug, Default)]
pub struct TxFilters {
    /// Programs (ARP, neighbour discovery, netd's own), in installation order.
    programs: Vec<TxFilter>,
    /// Each grant's binding, by its filter id.
    grants: HashMap<FilterId, PortBinding>,
    /// The granted bindings, with the number of grants naming each.
    table: HashMap<PortBinding, u32>,
}

impl TxFilters {
    /// Adds a program.
    pub fn push(&mut self, filter: TxFilter) {
        self.programs.push(filter);
    }

    /// Grants the queue `binding` as a transmit source under the id `filter`.
    pub fn grant(&mut self, filter: FilterId, binding: PortBinding) {
        if let Some(old) = self.grants.insert(filter, binding) {
            self.ungrant(&old);
        }
        *self.table.entry(binding).or_insert(0) += 1;
    }

    fn ungrant(&mut self, binding: &PortBinding) {
        if let Some(n) = self.table.get_mut(binding) {
            *n -= 1;
            if *n == 0 {
                self.table.remove(binding);
            }
        }
    }

    /// Removes the grant or program `filter`, whichever it is.
    pub fn remove(&mut self, filter: FilterId) {
        if let Some(binding) = self.grants.remove(&filter) {
            self.ungrant(&binding);
        }
        self.programs.retain(|f| f.filter != filter);
    }

    /// Removes every grant and program: the queue transmits nothing.
    pub fn clear(&mut self) {
        self.programs.clear();
        self.grants.clear();
        self.table.clear();
    }

    /// Grants and programs installed.
    pub fn len(&self) -> usize {
        self.programs.len() + self.grants.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The programs, in installation order.
    pub fn iter_programs(&self) -> impl Iterator<Item = &TxFilter> {
        self.programs.iter()
    }

    /// Every binding the queue was granted, by a grant or with a program.
    pub fn bindings(&self) -> impl Iterator<Item = &PortBinding> + Clone {
        self.table
            .keys()
            .chain(self.programs.iter().filter_map(|f| f.binding.as_ref()))
    }

    /// Whether the grant table accepts `frame` from a queue of the instance with `mac`.
    pub fn table_accepts(&self, frame: &[u8], mac: &[u8; 6]) -> bool {
        !self.table.is_empty() && grant_key(frame, mac).is_some_and(|k| self.table.contains_key(&k))
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    frame
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The grant a frame needs to be sent from a queue of the instance with `mac`: its source
/// address, IP protocol and source port, or `None` when no grant could accept it (another
/// source MAC, not untagged IPv4 or IPv6, a field beyond the frame). Reads the frame exactly
/// where the per-binding program reads it: the IPv4 source port after the header length the
/// header states, the IPv6 one right after the fixed header.
pub fn grant_key(frame: &[u8], mac: &[u8; 6]) -> Option<PortBinding> {
    if frame.get(6..12)? != mac {
        return None;
    }
    let mut address = [0u8; 16];
    let (ipv6, protocol, port) = match be16(frame, 12)? {
        ethertype::IPV4 => {
            address[..4].copy_from_slice(frame.get(26..30)?);
            let protocol = *frame.get(23)?;
            // The program's port test also asks for a first fragment: the fragment rule
            // refused every fragment before, but the table stays equal on its own.
            if be16(frame, 20)? & 0x1fff != 0 {
                return None;
            }
            let header = usize::from(frame.get(14)? & 0x0f) * 4;
            (false, protocol, be16(frame, 14 + header)?)
        }
        ethertype::IPV6 => {
            address.copy_from_slice(frame.get(22..38)?);
            (true, *frame.get(20)?, be16(frame, 14 + ipv6::HEADER_LEN)?)
        }
        _ => return None,
    };
    Some(PortBinding {
        protocol,
        address,
        ipv6,
        port,
    })
}

/// Decides the fate of `frame` (the driver's private copy). See the module documentation.
pub fn check(
    frame: &[u8],
    filters: &TxFilters,
    link_mac: &[u8; 6],
    scratch: &mut Scratch,
) -> TxStatus {
    if is_truncated(frame) {
        return TxStatus::RejectedMalformed;
    }
    if is_fragment(frame) {
        return TxStatus::RejectedFragment;
    }
    if filters.table_accepts(frame, link_mac) {
        return TxStatus::Sent;
    }
    let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    if filters.programs.iter().any(|f| {
        f.engine
            .run_with_scratch(frame, wire_len, scratch)
            .is_accept()
    }) {
        return TxStatus::Sent;
    }
    diagnose(frame, filters.bindings(), link_mac)
}

/// ICMPv6's next-header value: neighbour discovery, which has no ports.
const ICMPV6: u8 = 58;
/// IGMP's protocol number: membership reports, which have no ports.
const IGMP: u8 = 2;
/// The IPv6 hop-by-hop header, in front of every MLD message (its router alert).
const HOP_BY_HOP: u8 = 0;

/// Names the reason a rejected frame was rejected (see the module documentation).
pub fn diagnose<'a>(
    frame: &[u8],
    grants: impl Iterator<Item = &'a PortBinding> + Clone,
    link_mac: &[u8; 6],
) -> TxStatus {
    let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
        return TxStatus::RejectedMalformed;
    };
    if ethernet.src() != *link_mac {
        return TxStatus::RejectedSpoofedSourceMac;
    }
    let ipv6 = match ethernet.ethertype() {
        ethertype::IPV4 | ethertype::ARP => false,
        ethertype::IPV6 => true,
        _ => return TxStatus::RejectedEthertypeNotGranted,
    };
    let mut family = grants.clone().filter(|g| g.ipv6 == ipv6).peekable();
    if family.peek().is_none() {
        return TxStatus::RejectedEthertypeNotGranted;
    }
    let address_len = if ipv6 { 16 } else { 4 };
    let unspecified = |g: &PortBinding| g.address[..address_len].iter().all(|&b| b == 0);
    if ethernet.ethertype() == ethertype::ARP {
        let body = ethernet.payload();
        let (Some(sender_mac), Some(sender_ip)) = (
            body.get(arp::SENDER_MAC_OFFSET..arp::SENDER_IP_OFFSET),
            body.get(arp::SENDER_IP_OFFSET..arp::SENDER_IP_OFFSET + 4),
        ) else {
            return TxStatus::RejectedMalformed;
        };
        if sender_mac != link_mac {
            return TxStatus::RejectedSpoofedSourceMac;
        }
        if !family.any(|g| unspecified(g) || g.address[..4] == *sender_ip) {
            return TxStatus::RejectedSourceIp;
        }
        return TxStatus::RejectedByFilter;
    }
    let ip = ethernet.payload();
    let (source, protocol, transport): (&[u8], u8, usize) = if ipv6 {
        match (ip.get(8..24), ip.get(6)) {
            (Some(source), Some(&next)) => (source, next, ipv6::HEADER_LEN),
            _ => return TxStatus::RejectedMalformed,
        }
    } else {
        match (ip.get(12..16), ip.get(9), ip.first()) {
            (Some(source), Some(&protocol), Some(&vihl)) => {
                (source, protocol, usize::from(vihl & 0x0f) * 4)
            }
            _ => return TxStatus::RejectedMalformed,
        }
    };
    let mut from_source = grants
        .filter(|g| g.ipv6 == ipv6 && (unspecified(g) || g.address[..address_len] == *source))
        .peekable();
    if from_source.peek().is_none() {
        return TxStatus::RejectedSourceIp;
    }
    if ipv6 && protocol == ICMPV6 {
        // Neighbour discovery from a granted address: its own filter refused it (an
        // advertisement, a forged link-layer address), not a port.
        return TxStatus::RejectedByFilter;
    }
    if (!ipv6 && protocol == IGMP) || (ipv6 && protocol == HOP_BY_HOP) {
        // A membership report (IGMP; MLD behind its router alert) from a granted address:
        // the filters of the groups the queue joined refused it (another group), not a port.
        return TxStatus::RejectedByFilter;
    }
    let port = ip
        .get(transport..transport + 2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    if !from_source.any(|g| g.protocol == protocol && Some(g.port) == port) {
        return TxStatus::RejectedUnownedSourcePort;
    }
    TxStatus::RejectedByFilter
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn udp4(src_mac: [u8; 6], src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes()); // total length: IPv4 + UDP headers
        f[23] = 17;
        f[26..30].copy_from_slice(&src);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f
    }

    fn grant(address: [u8; 4], port: u16) -> PortBinding {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&address);
        PortBinding {
            protocol: 17,
            address: a,
            ipv6: false,
            port,
        }
    }

    #[test]
    fn each_failed_check_names_its_reason() {
        let g = [grant([10, 0, 0, 1], 53)];
        let d = |f: &[u8]| diagnose(f, g.iter(), &MAC);
        assert_eq!(
            d(&udp4([9; 6], [10, 0, 0, 1], 53)),
            TxStatus::RejectedSpoofedSourceMac
        );
        let mut v6 = udp4(MAC, [10, 0, 0, 1], 53);
        v6[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        assert_eq!(d(&v6), TxStatus::RejectedEthertypeNotGranted);
        assert_eq!(d(&udp4(MAC, [10, 0, 0, 2], 53)), TxStatus::RejectedSourceIp);
        assert_eq!(
            d(&udp4(MAC, [10, 0, 0, 1], 54)),
            TxStatus::RejectedUnownedSourcePort
        );
        assert_eq!(d(&udp4(MAC, [10, 0, 0, 1], 53)), TxStatus::RejectedByFilter);
        assert_eq!(d(&[0; 5]), TxStatus::RejectedMalformed);
        assert_eq!(
            d(&udp4(MAC, [10, 0, 0, 1], 53)[..20]),
            TxStatus::RejectedMalformed
        );
    }

    #[test]
    fn a_refused_membership_report_is_the_filters_not_a_ports() {
        let g = [grant([10, 0, 0, 1], 53)];
        let d = |f: &[u8]| diagnose(f, g.iter(), &MAC);
        // IGMP from the granted address: its group's report filter refused it.
        let mut igmp = udp4(MAC, [10, 0, 0, 1], 0x1600);
        igmp[23] = 2;
        assert_eq!(d(&igmp), TxStatus::RejectedByFilter);
        // From another address it is still the source that is wrong.
        igmp[26..30].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(d(&igmp), TxStatus::RejectedSourceIp);
        // MLD: ICMPv6 behind a hop-by-hop header, from a granted IPv6 address.
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfe, 0x80]);
        a[15] = 1;
        let g6 = [PortBinding {
            protocol: 17,
            address: a,
            ipv6: true,
            port: 53,
        }];
        let mut mld = vec![0u8; 14 + 40 + 8 + 8];
        mld[6..12].copy_from_slice(&MAC);
        mld[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        mld[14] = 0x60;
        mld[20] = 0;
        mld[22..38].copy_from_slice(&a);
        assert_eq!(diagnose(&mld, g6.iter(), &MAC), TxStatus::RejectedByFilter);
    }

    fn arp4(sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[6..12].copy_from_slice(&MAC);
        f[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&sender_mac);
        f[28..32].copy_from_slice(&sender_ip);
        f
    }

    #[test]
    fn arp_with_a_foreign_sender_names_the_forged_address() {
        let g = [grant([10, 0, 0, 1], 53)];
        let d = |f: &[u8]| diagnose(f, g.iter(), &MAC);
        assert_eq!(
            d(&arp4([9; 6], [10, 0, 0, 1])),
            TxStatus::RejectedSpoofedSourceMac
        );
        assert_eq!(d(&arp4(MAC, [10, 0, 0, 9])), TxStatus::RejectedSourceIp);
        assert_eq!(d(&arp4(MAC, [10, 0, 0, 1])), TxStatus::RejectedByFilter);
        assert_eq!(
            d(&arp4(MAC, [10, 0, 0, 1])[..30]),
            TxStatus::RejectedMalformed
        );
    }

    #[test]
    fn a_datagram_shorter_than_its_headers_say_is_malformed_whatever_the_filters_say() {
        let whole = udp4(MAC, [10, 0, 0, 1], 53);
        assert!(!is_truncated(&whole));
        let mut padded = whole.clone();
        padded.resize(60, 0); // Ethernet padding after the datagram
        assert!(!is_truncated(&padded));
        // Cut after the source port: the length field says 28 bytes, 22 are there.
        assert!(is_truncated(&whole[..36]));
        assert!(is_truncated(&whole[..13]));
        let mut short_header = whole.clone();
        short_header[14] = 0x44;
        assert!(is_truncated(&short_header));
        let mut v6 = vec![0u8; 14 + 40 + 8];
        v6[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        v6[18..20].copy_from_slice(&8u16.to_be_bytes());
        assert!(!is_truncated(&v6));
        assert!(is_truncated(&v6[..60]));
        assert!(is_truncated(&v6[..30]));
        // Not IP: nothing to check beyond the Ethernet header.
        let mut other = whole[..20].to_vec();
        other[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        assert!(!is_truncated(&other));
        assert_eq!(
            check(
                &whole[..36],
                &TxFilters::default(),
                &MAC,
                &mut Scratch::default()
            ),
            TxStatus::RejectedMalformed
        );
    }

    #[test]
    fn a_grant_is_a_table_entry_until_its_last_filter_is_removed() {
        let frame = udp4(MAC, [10, 0, 0, 1], 53);
        let mut filters = TxFilters::default();
        let sent = |f: &TxFilters| check(&frame, f, &MAC, &mut Scratch::default());
        filters.grant(FilterId(1), grant([10, 0, 0, 1], 53));
        filters.grant(FilterId(2), grant([10, 0, 0, 1], 53));
        filters.grant(FilterId(3), grant([10, 0, 0, 1], 54));
        assert_eq!(filters.len(), 3);
        assert_eq!(sent(&filters), TxStatus::Sent);
        assert_eq!(
            check(
                &udp4([9; 6], [10, 0, 0, 1], 53),
                &filters,
                &MAC,
                &mut Scratch::default()
            ),
            TxStatus::RejectedSpoofedSourceMac
        );
        filters.remove(FilterId(1));
        assert_eq!(sent(&filters), TxStatus::Sent, "another grant names it");
        filters.remove(FilterId(2));
        assert_eq!(sent(&filters), TxStatus::RejectedUnownedSourcePort);
        filters.remove(FilterId(3));
        assert!(filters.is_empty());
        assert_eq!(sent(&filters), TxStatus::RejectedEthertypeNotGranted);
    }

    #[test]
    fn a_queue_without_grants_is_granted_no_ethertype() {
        let frame = udp4(MAC, [10, 0, 0, 1], 53);
        assert_eq!(
            diagnose(&frame, [].iter(), &MAC),
            TxStatus::RejectedEthertypeNotGranted
        );
        assert_eq!(
            check(&frame, &TxFilters::default(), &MAC, &mut Scratch::default()),
            TxStatus::RejectedEthertypeNotGranted
        );
    }
}
