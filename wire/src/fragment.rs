//! Fragmentation of IPv4 and IPv6 datagrams carried in Ethernet frames, in one place for its
//! two uses:
//!
//! - **A host's own datagrams** larger than the link's MTU: netd's answers (an echo reply as
//!   large as the request) and the frames a client's stack makes (smoltcp fragments IPv4
//!   itself but not IPv6) go out as fragments, which the driver checks as the whole datagram.
//!   [`fragment_ipv4`] splits as RFC 791 says: every fragment repeats the IP header with its
//!   options, carries a multiple of 8 bytes of data but the last, and has its header checksum
//!   filled; "Don't fragment" is cleared, since an answer too large for the link is better
//!   fragmented than dropped. [`fragment_ipv6`] splits as RFC 8200 (section 4.5) says: every
//!   fragment repeats the unfragmentable part (the fixed header, and the Hop-by-Hop, Routing
//!   and Destination Options headers up to the last Routing header), followed by a Fragment
//!   header with the datagram's identification. Frames that fit are left as they are;
//!   anything either cannot split (another family, truncated, already a fragment, an MTU too
//!   small for one 8-byte block) comes back unchanged, for the driver to refuse as too long.
//! - **Fragment traffic of any shape**, for tests, benchmarks and tools, hostile fragments
//!   included: [`Datagram::split`] cuts a datagram into pieces of a given size, and
//!   [`Datagram::fragment`] builds one fragment with any offset, flag and data (overlaps,
//!   misaligned or oversized fragments). These keep the datagram's flags as they are.
//!
//! Never panics.

use crate::ethernet::{ethertype, link_layer};
use crate::{ip, ipv4, ipv6, protocol};

/// The largest fragment offset the 13-bit field holds, in bytes.
pub const MAX_FRAGMENT_OFFSET: usize = 0x1fff * 8;

/// Why a fragment could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// The frame is not Ethernet carrying IPv4 or IPv6 (VLAN tags allowed), or not the family
    /// asked for.
    #[error("not an IPv4 or IPv6 frame")]
    NotIp,
    /// The frame is shorter than its IP header says, or its header is invalid.
    #[error("the IP header is truncated or invalid")]
    Truncated,
    /// The offset is not a multiple of 8 or does not fit the 13-bit field.
    #[error("fragment offset {0} is not a multiple of 8 below 65,536")]
    BadOffset(usize),
    /// The fragment would not fit the 16-bit length field.
    #[error("the fragment does not fit a 16-bit length")]
    TooLong,
    /// The size of the pieces asked of [`Datagram::split`] is zero or not a multiple of 8.
    #[error("fragment data size {0} is not a positive multiple of 8")]
    BadSize(usize),
}

/// A whole IPv4 or IPv6 datagram in an Ethernet frame, as fragments are made of it: the
/// headers every fragment repeats and the payload they share out.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Repeated in every fragment: Ethernet header, VLAN tags, IP header (IPv6: with the
    /// unfragmentable extension headers).
    header: &'a [u8],
    /// The fragmentable part.
    payload: &'a [u8],
    /// Offset of the IP header.
    l3: usize,
    /// IPv6: the offset in `header` of the next-header byte that will name the Fragment
    /// header.
    ipv6_next_header_at: Option<usize>,
    /// IPv4: clear "Don't fragment" in the fragments.
    clear_df: bool,
}

impl<'a> Datagram<'a> {
    /// The datagram `frame` carries, whether or not it is itself a fragment.
    pub fn parse(frame: &'a [u8]) -> Result<Self, FragmentError> {
        let link = link_layer(frame).ok_or(FragmentError::NotIp)?;
        let l3 = link.l3;
        let ip = frame.get(l3..).ok_or(FragmentError::Truncated)?;
        match (link.ethertype, ip.first().map(|b| b >> 4)) {
            (ethertype::IPV4, Some(4)) => {
                let packet =
                    ipv4::Ipv4Packet::new_checked(ip).map_err(|_| FragmentError::Truncated)?;
                let (ihl, total) = (packet.header_len(), usize::from(packet.total_len()));
                Ok(Datagram {
                    header: &frame[..l3 + ihl],
                    payload: &ip[ihl..total],
                    l3,
                    ipv6_next_header_at: None,
                    clear_df: false,
                })
            }
            (ethertype::IPV6, Some(6)) => {
                let packet =
                    ipv6::Ipv6Packet::new_checked(ip).map_err(|_| FragmentError::Truncated)?;
                let end = ipv6::HEADER_LEN + usize::from(packet.payload_len());
                // The unfragmentable part ends after the last Hop-by-Hop or Routing header, or
                // a Destination Options header that a Routing header follows.
                let (mut nh, mut at) = (packet.next_header(), ipv6::HEADER_LEN);
                let (mut keep_nh_at, mut keep_at) = (6, at);
                while matches!(
                    nh,
                    protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DESTINATION_OPTIONS
                ) {
                    let len = ip
                        .get(at..end)
                        .and_then(|b| ipv6::extension_header_len(nh, b))
                        .filter(|len| at + len <= end)
                        .ok_or(FragmentError::Truncated)?;
                    let following = ip[at];
                    if nh != protocol::DESTINATION_OPTIONS || following == protocol::ROUTING {
                        keep_nh_at = at;
                        keep_at = at + len;
                    }
                    at += len;
                    nh = following;
                }
                Ok(Datagram {
                    header: &frame[..l3 + keep_at],
                    payload: &ip[keep_at..end],
                    l3,
                    ipv6_next_header_at: Some(l3 + keep_nh_at),
                    clear_df: false,
                })
            }
            _ => Err(FragmentError::NotIp),
        }
    }

    /// Whether it is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.ipv6_next_header_at.is_some()
    }

    /// The fragmentable part.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The same datagram, whose IPv4 fragments have "Don't fragment" clear.
    pub fn clearing_df(self) -> Self {
        Datagram {
            clear_df: true,
            ..self
        }
    }

    /// Of a link whose IP MTU is `mtu` bytes, how much of the payload one fragment carries:
    /// the largest multiple of 8 that fits after the headers (`None` when not one block does).
    fn data_per_fragment(&self, mtu: usize) -> Option<usize> {
        let fragment_header = if self.is_ipv6() {
            ipv6::FRAGMENT_HEADER_LEN
        } else {
            0
        };
        let per = mtu.checked_sub(self.header.len() - self.l3 + fragment_header)? & !7;
        (per > 0).then_some(per)
    }

    /// One fragment: the datagram's headers with fragment offset `offset` (bytes) and the
    /// "more fragments" flag `more`, carrying `data` in place of the payload. IPv6 fragments
    /// carry identification `ipv6_ident` in their Fragment header; IPv4 ones keep the
    /// datagram's, and its other flags (but "Don't fragment" after
    /// [`Datagram::clearing_df`]), with the header checksum filled.
    pub fn fragment(
        &self,
        offset: usize,
        more: bool,
        ipv6_ident: u32,
        data: &[u8],
    ) -> Result<Vec<u8>, FragmentError> {
        if !offset.is_multiple_of(8) || offset > MAX_FRAGMENT_OFFSET {
            return Err(FragmentError::BadOffset(offset));
        }
        let l3 = self.l3;
        let mut out =
            Vec::with_capacity(self.header.len() + ipv6::FRAGMENT_HEADER_LEN + data.len());
        out.extend_from_slice(self.header);
        match self.ipv6_next_header_at {
            None => {
                let ihl = self.header.len() - l3;
                let total = u16::try_from(ihl + data.len()).map_err(|_| FragmentError::TooLong)?;
                let old = u16::from_be_bytes([out[l3 + 6], out[l3 + 7]]);
                let mut flags = old & !(ipv4::FLAG_MF | ipv4::OFFSET_MASK);
                if self.clear_df {
                    flags &= !ipv4::FLAG_DF;
                }
                let word = flags | if more { ipv4::FLAG_MF } else { 0 } | (offset / 8) as u16;
                let mut p = ipv4::Ipv4Packet::new_unchecked(&mut out[l3..]);
                p.set_total_len(total);
                p.set_flags_offset(word);
                p.fill_checksum();
            }
            Some(next_header_at) => {
                let unfragmentable = self.header.len() - l3 - ipv6::HEADER_LEN;
                let payload_len =
                    u16::try_from(unfragmentable + ipv6::FRAGMENT_HEADER_LEN + data.len())
                        .map_err(|_| FragmentError::TooLong)?;
                let next_header = out[next_header_at];
                out[next_header_at] = protocol::FRAGMENT;
                out[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
                let word = (offset as u16) | u16::from(more);
                out.extend_from_slice(&[next_header, 0]);
                out.extend_from_slice(&word.to_be_bytes());
                out.extend_from_slice(&ipv6_ident.to_be_bytes());
            }
        }
        out.extend_from_slice(data);
        Ok(out)
    }

    /// The whole payload in fragments of at most `max_data` bytes of data each (a positive
    /// multiple of 8), in order. A payload that fits in one fragment still becomes one
    /// fragment (IPv4: MF clear and offset 0, which is no fragment; IPv6: an atomic fragment).
    pub fn split(&self, max_data: usize, ipv6_ident: u32) -> Result<Vec<Vec<u8>>, FragmentError> {
        if max_data == 0 || !max_data.is_multiple_of(8) {
            return Err(FragmentError::BadSize(max_data));
        }
        let payload = self.payload;
        let mut out = Vec::with_capacity(payload.len() / max_data + 1);
        let mut offset = 0;
        loop {
            let end = (offset + max_data).min(payload.len());
            let more = end < payload.len();
            out.push(self.fragment(offset, more, ipv6_ident, &payload[offset..end])?);
            if !more {
                return Ok(out);
            }
            offset = end;
        }
    }
}

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
    split_for_mtu(frame, mtu, false, 0)
}

/// The frames that carry the IPv6 `frame` on a link whose IP MTU is `mtu` bytes, with
/// identification `ident` in their Fragment headers.
pub fn fragment_ipv6(frame: Vec<u8>, mtu: usize, ident: u32) -> Vec<Vec<u8>> {
    split_for_mtu(frame, mtu, true, ident)
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

/// `frame` as a host sends it on a link of `mtu` (see the module documentation): split when
/// it is a datagram of the family asked for, larger than the MTU and no fragment already.
fn split_for_mtu(frame: Vec<u8>, mtu: usize, ipv6: bool, ident: u32) -> Vec<Vec<u8>> {
    let split = Datagram::parse(&frame).ok().and_then(|d| {
        let ip_len = d.header.len() - d.l3 + d.payload.len();
        if d.is_ipv6() != ipv6 || ip_len <= mtu || d.payload.is_empty() || ip::is_fragment(&frame) {
            return None;
        }
        let per_fragment = d.data_per_fragment(mtu)?;
        d.clearing_df().split(per_fragment, ident).ok()
    });
    split.unwrap_or_else(|| vec![frame])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::Ipv4Packet;

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

    #[test]
    fn a_crafted_fragment_keeps_the_datagrams_flags_and_a_hosts_fragments_clear_df() {
        let mut whole = udp(3000);
        whole[20] |= 0x40; // DF
        let d = Datagram::parse(&whole).unwrap();
        let crafted = d.fragment(8, true, 0, &[1; 16]).unwrap();
        let ip = Ipv4Packet::new_checked(&crafted[14..]).unwrap();
        assert!(ip.dont_frag() && ip.more_frags() && ip.verify_checksum());
        assert_eq!((ip.frag_offset(), ip.payload()), (8, &[1; 16][..]));
        for p in fragment_ipv4(whole.clone(), 1500) {
            assert!(!Ipv4Packet::new_checked(&p[14..]).unwrap().dont_frag());
        }
        assert_eq!(
            d.fragment(12, false, 0, &[]),
            Err(FragmentError::BadOffset(12))
        );
        assert_eq!(
            d.fragment(0, false, 0, &[0; 65_520]),
            Err(FragmentError::TooLong)
        );
        assert_eq!(d.split(12, 0), Err(FragmentError::BadSize(12)));
        assert_eq!(d.split(4096, 0).unwrap().len(), 1);
        assert_eq!(
            Datagram::parse(&whole[..40]).err(),
            Some(FragmentError::Truncated)
        );
        assert_eq!(Datagram::parse(&[0; 60]).err(), Some(FragmentError::NotIp));
    }

    #[test]
    fn destination_options_before_a_routing_header_stay_unfragmentable_and_after_it_do_not() {
        // IPv6, Destination Options, Routing, Destination Options, UDP: the first three headers
        // repeat in every fragment, the last Destination Options header is fragmented.
        let mut frame = udp6(2000, false);
        let udp_at = 54;
        frame[20] = protocol::DESTINATION_OPTIONS;
        let chain = [
            protocol::ROUTING,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
            protocol::DESTINATION_OPTIONS,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            protocol::UDP,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
        ];
        frame.splice(udp_at..udp_at, chain);
        let len = u16::from_be_bytes([frame[18], frame[19]]) + 24;
        frame[18..20].copy_from_slice(&len.to_be_bytes());
        let d = Datagram::parse(&frame).unwrap();
        assert_eq!(d.payload(), &frame[14 + 40 + 16..]);
        let parts = fragment_ipv6(frame.clone(), 1280, 5);
        assert!(parts.len() > 1);
        for p in &parts {
            // The Routing header now names the Fragment header, which names what it named.
            assert_eq!(p[14 + 40 + 8], protocol::FRAGMENT);
            assert_eq!(p[14 + 40 + 16], protocol::DESTINATION_OPTIONS);
        }
    }
}
