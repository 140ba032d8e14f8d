//! Fragmentation of a host's own datagrams that are larger than the link's MTU, as a host
//! does it: netd's answers (an echo reply as large as the request) and the frames a client's
//! stack makes (smoltcp fragments IPv4 itself but not IPv6) go out as fragments, which the
//! driver checks as the whole datagram.
//!
//! - [`fragment_ipv4`] splits an Ethernet frame carrying IPv4 as RFC 791 says: every fragment
//!   repeats the IP header with its options, carries a multiple of 8 bytes of data but the
//!   last, and has its header checksum filled. "Don't fragment" is cleared: an answer too large
//!   for the link is better fragmented than dropped.
//! - [`fragment_ipv6`] splits an Ethernet frame carrying IPv6 as RFC 8200 (section 4.5) says:
//!   every fragment repeats the unfragmentable part (the fixed header, and the Hop-by-Hop,
//!   Routing and Destination Options headers up to the last Routing header), followed by a
//!   Fragment header with the datagram's identification, and carries a multiple of 8 bytes of
//!   the rest but the last.
//!
//! Frames that fit are left as they are; anything either cannot split (another family,
//! truncated, already a fragment, an MTU too small for one 8-byte block) comes back unchanged,
//! for the driver to refuse as too long. Never panics.

use crate::ethernet::{ethertype, link_layer};
use crate::ipv4::{self, Ipv4Packet};
use crate::{ip, ipv6, protocol};

/// The frames that carry `frame` on a link whose IP MTU is `mtu` bytes: IPv4 by
/// [`fragment_ipv4`], IPv6 by [`fragment_ipv6`] with identification `ipv6_ident`.
pub fn fragment(frame: Vec<u8>, mtu: usize, ipv6_ident: u32) -> Vec<Vec<u8>> {
    match link_layer(&frame).map(|l| l.ethertype) {
        Some(ethertype::IPV6) => fragment_ipv6(frame, mtu, ipv6_ident),
        _ => fragment_ipv4(frame, mtu),
    }
}

/// The frames that carry the IPv4 `frame` on a link whose IP MTU is `mtu` bytes.
pub fn fragment_ipv4(frame: Vec<u8>, mtu: usize) -> Vec<Vec<u8>> {
    match split_ipv4(&frame, mtu) {
        Some(fragments) => fragments,
        None => vec![frame],
    }
}

/// The frames that carry the IPv6 `frame` on a link whose IP MTU is `mtu` bytes, with
/// identification `ident` in their Fragment headers.
pub fn fragment_ipv6(frame: Vec<u8>, mtu: usize, ident: u32) -> Vec<Vec<u8>> {
    match split_ipv6(&frame, mtu, ident) {
        Some(fragments) => fragments,
        None => vec![frame],
    }
}

/// The identifications of a host's IPv6 fragments: a counter from an unpredictable start,
/// so that two datagrams a host sends within a reassembly timeout never share one (RFC 8200)
/// and an off-path host cannot guess the next.
#[derive(Debug, Clone)]
pub struct Ipv6Idents(u32);

impl Default for Ipv6Idents {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // The standard library's hasher keys are random per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x6e65_746d_7578);
        Ipv6Idents(h.finish() as u32)
    }
}

impl Ipv6Idents {
    /// The next identification.
    pub fn next_ident(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(1);
        self.0
    }
}

fn split_ipv4(frame: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
    let link = link_layer(frame)?;
    if link.ethertype != ethertype::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(link.l3..)?).ok()?;
    let total = usize::from(ip.total_len());
    if total <= mtu || ip.is_fragment() {
        return None;
    }
    let ihl = ip.header_len();
    let per_fragment = mtu.checked_sub(ihl)? & !7;
    if per_fragment == 0 {
        return None;
    }
    let header = frame.get(..link.l3 + ihl)?;
    let payload = ip.payload();
    let mut out = Vec::with_capacity(payload.len().div_ceil(per_fragment));
    for (i, data) in payload.chunks(per_fragment).enumerate() {
        let offset = i * per_fragment;
        let more = offset + data.len() < payload.len();
        let mut f = Vec::with_capacity(header.len() + data.len());
        f.extend_from_slice(header);
        f.extend_from_slice(data);
        let mut p = Ipv4Packet::new_unchecked(f.get_mut(link.l3..)?);
        p.set_total_len(u16::try_from(ihl + data.len()).ok()?);
        let word = u16::try_from(offset / 8).ok()? | if more { ipv4::FLAG_MF } else { 0 };
        p.set_flags_offset(word);
        p.fill_checksum();
        out.push(f);
    }
    Some(out)
}

fn split_ipv6(frame: &[u8], mtu: usize, ident: u32) -> Option<Vec<Vec<u8>>> {
    let link = link_layer(frame)?;
    if link.ethertype != ethertype::IPV6 {
        return None;
    }
    let ip = frame.get(link.l3..)?;
    let packet = ipv6::Ipv6Packet::new_checked(ip).ok()?;
    let end = ipv6::HEADER_LEN + usize::from(packet.payload_len());
    if end <= mtu || packet.payload_len() == 0 || ip::is_fragment(frame) {
        return None;
    }
    // The unfragmentable part ends after the last Hop-by-Hop or Routing header, or a
    // Destination Options header that a Routing header follows.
    let (mut nh, mut nh_at, mut at) = (packet.next_header(), 6usize, ipv6::HEADER_LEN);
    let (mut keep_nh_at, mut keep_at) = (nh_at, at);
    while matches!(
        nh,
        protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DESTINATION_OPTIONS
    ) {
        let len = ipv6::extension_header_len(nh, ip.get(at..end)?)?;
        if at + len > end {
            return None;
        }
        let following = ip[at];
        nh_at = at;
        at += len;
        if nh != protocol::DESTINATION_OPTIONS || following == protocol::ROUTING {
            keep_nh_at = nh_at;
            keep_at = at;
        }
        nh = following;
    }
    let first_header = ip[keep_nh_at];
    let unfragmentable = keep_at;
    let per_fragment = mtu.checked_sub(unfragmentable + ipv6::FRAGMENT_HEADER_LEN)? & !7;
    if per_fragment == 0 {
        return None;
    }
    let header = frame.get(..link.l3 + unfragmentable)?;
    let payload = ip.get(unfragmentable..end)?;
    let mut out = Vec::with_capacity(payload.len().div_ceil(per_fragment));
    for (i, data) in payload.chunks(per_fragment).enumerate() {
        let offset = i * per_fragment;
        let more = offset + data.len() < payload.len();
        let mut f = Vec::with_capacity(header.len() + ipv6::FRAGMENT_HEADER_LEN + data.len());
        f.extend_from_slice(header);
        *f.get_mut(link.l3 + keep_nh_at)? = protocol::FRAGMENT;
        let payload_len =
            unfragmentable - ipv6::HEADER_LEN + ipv6::FRAGMENT_HEADER_LEN + data.len();
        f.get_mut(link.l3 + 4..link.l3 + 6)?
            .copy_from_slice(&u16::try_from(payload_len).ok()?.to_be_bytes());
        let word = u16::try_from(offset).ok()? | u16::from(more);
        f.extend_from_slice(&[first_header, 0]);
        f.extend_from_slice(&word.to_be_bytes());
        f.extend_from_slice(&ident.to_be_bytes());
        f.extend_from_slice(data);
        out.push(f);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(7, 7)
            .write(&mut out, &vec![0x5a; payload])
            .unwrap();
        out
    }

    #[test]
    fn a_frame_larger_than_the_mtu_becomes_fragments_that_carry_it_whole() {
        let whole = udp(8000);
        let parts = fragment_ipv4(whole.clone(), 1500);
        assert_eq!(parts.len(), 6);
        let mut data = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&p[14..]).unwrap();
            assert!(usize::from(ip.total_len()) <= 1500);
            assert!(ip.verify_checksum());
            assert_eq!(ip.more_frags(), i + 1 < parts.len());
            assert!(!ip.dont_frag());
            assert_eq!(ip.frag_offset() as usize, data.len());
            data.extend_from_slice(ip.payload());
        }
        assert_eq!(data, whole[34..]);
    }

    #[test]
    fn frames_that_fit_or_cannot_be_split_are_left_alone() {
        let small = udp(100);
        assert_eq!(fragment_ipv4(small.clone(), 1500), vec![small]);
        let mut fragment = udp(3000);
        fragment[20] |= 0x20;
        assert_eq!(fragment_ipv4(fragment.clone(), 1500), vec![fragment]);
        assert_eq!(fragment_ipv4(vec![1, 2, 3], 1500), vec![vec![1, 2, 3]]);
        let big = udp(3000);
        assert_eq!(fragment_ipv4(big.clone(), 20), vec![big]);
    }

    fn udp6(payload: usize, hop_by_hop: bool) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .udp(7, 7)
            .write(&mut out, &vec![0x5a; payload])
            .unwrap();
        if hop_by_hop {
            // A Hop-by-Hop Options header (8 bytes, PadN) before UDP: unfragmentable.
            out[20] = protocol::HOP_BY_HOP;
            out.splice(54..54, [protocol::UDP, 0, 1, 4, 0, 0, 0, 0]);
            let len = u16::from_be_bytes([out[18], out[19]]) + 8;
            out[18..20].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    #[test]
    fn an_ipv6_frame_larger_than_the_mtu_becomes_fragments_that_carry_it_whole() {
        for hop_by_hop in [false, true] {
            let whole = udp6(8000, hop_by_hop);
            let unfragmentable = 40 + if hop_by_hop { 8 } else { 0 };
            let parts = fragment(whole.clone(), 1500, 0xdead_beef);
            assert_eq!(parts.len(), 6, "hop-by-hop {hop_by_hop}");
            let mut data = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                assert!(p.len() - 14 <= 1500);
                let ip = ipv6::Ipv6Packet::new_checked(&p[14..]).unwrap();
                assert_eq!(usize::from(ip.payload_len()) + 40, p.len() - 14);
                // Everything before the Fragment header is the whole frame's, but the chain and
                // the length.
                let nh_at = if hop_by_hop { 54 } else { 20 };
                let mut expected = whole[..14 + unfragmentable].to_vec();
                expected[nh_at] = protocol::FRAGMENT;
                expected[18..20].copy_from_slice(&p[18..20]);
                assert_eq!(p[..14 + unfragmentable], expected[..]);
                let fh = &p[14 + unfragmentable..14 + unfragmentable + 8];
                assert_eq!(fh[0], protocol::UDP);
                let word = u16::from_be_bytes([fh[2], fh[3]]);
                assert_eq!(usize::from(word & !7), data.len());
                assert_eq!(word & 1 == 1, i + 1 < parts.len());
                assert_eq!(fh[4..8], 0xdead_beef_u32.to_be_bytes());
                let chunk = &p[14 + unfragmentable + 8..];
                if i + 1 < parts.len() {
                    assert_eq!(chunk.len() % 8, 0);
                }
                data.extend_from_slice(chunk);
            }
            assert_eq!(data, whole[14 + unfragmentable..]);
        }
    }

    #[test]
    fn ipv6_frames_that_fit_or_cannot_be_split_are_left_alone() {
        let small = udp6(100, false);
        assert_eq!(fragment(small.clone(), 1500, 1), vec![small]);
        let big = udp6(3000, false);
        let parts = fragment(big.clone(), 1280, 1);
        assert!(parts.len() > 1);
        // A fragment is not split again.
        assert_eq!(fragment(parts[0].clone(), 1000, 2), vec![parts[0].clone()]);
        // No room for one 8-byte block after the headers.
        assert_eq!(fragment(big.clone(), 50, 1), vec![big.clone()]);
        // Cut short: the payload length claims more than the frame has.
        let cut = big[..2000].to_vec();
        assert_eq!(fragment(cut.clone(), 1280, 1), vec![cut]);
        // IPv4 is split as IPv4 whatever the identification.
        assert_eq!(fragment(udp(3000), 1500, 7), fragment_ipv4(udp(3000), 1500));
    }
}
