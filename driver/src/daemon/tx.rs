//! The transmit check: what the driver decides about one frame a client transmitted, always
//! on the driver's private copy of it.
//!
//! # How the verdict and its reason are decided
//!
//! The **verdict** comes from two rules only, in this order:
//!
//! 1. an IP fragment is rejected ([`reassembly::is_fragment`]), whatever the filters say
//!    (the driver reassembles what it receives, and fragments are how filters are evaded);
//! 2. otherwise the frame goes on the wire when any of the queue's verified tx filters accepts
//!    it, and is rejected when none does (a queue without tx filters transmits nothing).
//!
//! Tx filters are programs that answer accept or reject, nothing more, so the **reason** for a
//! rejection is found afterwards by cheap structured checks of the same private copy against
//! what the queue was granted: the link's MAC address and the [`PortBinding`]s its tx filters
//! were installed with. The first check that fails names the reason: source MAC, then
//! ethertype (IPv4 and ARP for an IPv4 binding, IPv6 for an IPv6 one), then source IP, then
//! (protocol, source port). When every check passes, the filter rejected the frame for a reason
//! the checks do not model: [`TxStatus::RejectedByFilter`]. The diagnosis never turns a
//! rejection into an acceptance, and it only runs for rejected frames, so it costs nothing on
//! the fast path.

use netmux_proto::driver::{FilterId, PortBinding};
use netmux_vm::{Engine, Scratch};

use crate::reassembly;
use crate::ring::TxStatus;

/// Ethernet header: destination, source, ethertype.
const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// The fixed IPv6 header.
const IPV6_HEADER_LEN: usize = 40;

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

/// Decides the fate of `frame` (the driver's private copy). See the module documentation.
pub fn check(
    frame: &[u8],
    filters: &[TxFilter],
    link_mac: &[u8; 6],
    scratch: &mut Scratch,
) -> TxStatus {
    if reassembly::is_fragment(frame) {
        return TxStatus::RejectedFragment;
    }
    let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    if filters.iter().any(|f| {
        f.engine
            .run_with_scratch(frame, wire_len, scratch)
            .is_accept()
    }) {
        return TxStatus::Sent;
    }
    diagnose(
        frame,
        filters.iter().filter_map(|f| f.binding.as_ref()),
        link_mac,
    )
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// Names the reason a rejected frame was rejected (see the module documentation).
pub fn diagnose<'a>(
    frame: &[u8],
    grants: impl Iterator<Item = &'a PortBinding> + Clone,
    link_mac: &[u8; 6],
) -> TxStatus {
    if frame.len() < ETHERNET_HEADER_LEN {
        return TxStatus::RejectedMalformed;
    }
    if frame[6..12] != link_mac[..] {
        return TxStatus::RejectedSpoofedSourceMac;
    }
    let ethertype = be16(frame, 12).unwrap_or(0);
    let ipv6 = match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_ARP => false,
        ETHERTYPE_IPV6 => true,
        _ => return TxStatus::RejectedEthertypeNotGranted,
    };
    let mut family = grants.clone().filter(|g| g.ipv6 == ipv6).peekable();
    if family.peek().is_none() {
        return TxStatus::RejectedEthertypeNotGranted;
    }
    if ethertype == ETHERTYPE_ARP {
        return TxStatus::RejectedByFilter;
    }
    let ip = &frame[ETHERNET_HEADER_LEN..];
    let (source, protocol, transport): (&[u8], u8, usize) = if ipv6 {
        match (ip.get(8..24), ip.get(6)) {
            (Some(source), Some(&next)) => (source, next, IPV6_HEADER_LEN),
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
    let address_len = if ipv6 { 16 } else { 4 };
    let unspecified = |g: &PortBinding| g.address[..address_len].iter().all(|&b| b == 0);
    let mut from_source = grants
        .filter(|g| g.ipv6 == ipv6 && (unspecified(g) || g.address[..address_len] == *source))
        .peekable();
    if from_source.peek().is_none() {
        return TxStatus::RejectedSourceIp;
    }
    let port = be16(ip, transport);
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
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
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
        v6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
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
    fn a_queue_without_grants_is_granted_no_ethertype() {
        let frame = udp4(MAC, [10, 0, 0, 1], 53);
        assert_eq!(
            diagnose(&frame, [].iter(), &MAC),
            TxStatus::RejectedEthertypeNotGranted
        );
        assert_eq!(
            check(&frame, &[], &MAC, &mut Scratch::default()),
            TxStatus::RejectedEthertypeNotGranted
        );
    }
}
