//! Reading the headers the reassembler needs from an Ethernet frame, without copying and
//! without panicking on any bytes.
//!
//! The VLAN walk, the IPv6 extension header walk and the checksum are the wire crate's
//! ([`netmux_wire::ethernet::link_layer`], [`netmux_wire::ipv6::walk_extension_headers`],
//! [`netmux_wire::checksum`]); this module turns them into what reassembly needs: whether a
//! frame is a fragment, and where its key, data and headers are. Nothing here allocates.

use netmux_wire::ethernet::{ethertype, link_layer, LinkLayer};
use netmux_wire::ipv6::{self, Chain};
use netmux_wire::{checksum, ipv4};

use super::key::Key;

pub(crate) use netmux_wire::ipv4::MIN_HEADER_LEN as IPV4_MIN_HEADER_LEN;
pub(crate) use netmux_wire::ipv6::{
    FRAGMENT_HEADER_LEN as IPV6_FRAGMENT_HEADER_LEN, HEADER_LEN as IPV6_HEADER_LEN,
};

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// How the reassembled header is fixed up, by family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4: the header is `ihl` bytes long.
    V4 {
        /// Header length in bytes (20 to 60).
        ihl: u16,
    },
    /// IPv6: the Fragment header is removed and the next-header byte before it is patched.
    V6 {
        /// Offset, from the frame start, of the byte holding the Fragment header's own type
        /// (the fixed header's next-header field, or the last unfragmentable extension
        /// header's).
        next_header_at: u16,
        /// The Fragment header's next-header value: the first header of the fragmentable part.
        next_header: u8,
    },
}

/// One non-atomic fragment, borrowed from its frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fragment<'a> {
    /// The reassembly key.
    pub key: Key,
    /// Byte offset of this fragment's data in the datagram's fragmentable part.
    pub offset: u32,
    /// Whether more fragments follow (MF / M flag).
    pub more: bool,
    /// The fragment's data, with Ethernet padding trimmed by the IP length.
    pub data: &'a [u8],
    /// The headers that the reassembled frame starts with if this is the first fragment:
    /// Ethernet and VLAN tags, the IP header, and (IPv6) the unfragmentable extension headers.
    /// The IPv6 Fragment header is not part of it.
    pub header: &'a [u8],
    /// Offset of the IP header in `header`.
    pub l3: u16,
    /// Family-specific fix-up data.
    pub family: Family,
    /// Bytes that count against the 65,535 limit besides the data: the IPv4 header, or the
    /// IPv6 unfragmentable extension headers (the payload length excludes the fixed header).
    pub limit_overhead: u32,
    /// The protocol of the fragmentable part's first header (IPv4 protocol, IPv6 Fragment
    /// header next-header), to check that the first fragment holds the whole header chain.
    pub upper: u8,
}

/// What a frame is, as far as reassembly is concerned.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// Not an IP fragment (or not IP at all): delivered untouched.
    Whole,
    /// A fragment to queue.
    Fragment(Fragment<'a>),
    /// An IPv6 atomic fragment (offset 0, M clear): a whole datagram with a Fragment header
    /// that RFC 6946 says to process on its own. The fields say how to strip it.
    Atomic {
        /// End of the headers kept before the Fragment header (offset in the frame).
        fragment_header_at: usize,
        /// End of the IPv6 packet (padding excluded).
        end: usize,
        /// Where to write `next_header` (offset in the frame).
        next_header_at: usize,
        /// The Fragment header's next-header value.
        next_header: u8,
        /// Offset of the IPv6 header.
        l3: usize,
    },
    /// A fragment whose headers are inconsistent or truncated.
    Malformed,
}

/// Classifies a frame. Never panics; never copies.
#[inline]
pub(crate) fn parse(frame: &[u8]) -> Parsed<'_> {
    let Some(link) = link_layer(frame) else {
        return Parsed::Whole;
    };
    match link.ethertype {
        ethertype::IPV4 => parse_v4(frame, link),
        ethertype::IPV6 => parse_v6(frame, link),
        _ => Parsed::Whole,
    }
}

#[inline]
fn parse_v4(frame: &[u8], link: LinkLayer) -> Parsed<'_> {
    let l3 = link.l3;
    let Some(ip) = frame.get(l3..) else {
        return Parsed::Whole;
    };
    let (Some(flags), Some(&vihl)) = (be16(ip, 6), ip.first()) else {
        return Parsed::Whole;
    };
    let offset_units = flags & ipv4::OFFSET_MASK;
    let more = flags & ipv4::FLAG_MF != 0;
    if !more && offset_units == 0 {
        return Parsed::Whole;
    }
    // From here on the frame claims to be a fragment: anything inconsistent is malformed.
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_MIN_HEADER_LEN || ip.len() < IPV4_MIN_HEADER_LEN {
        return Parsed::Malformed;
    }
    let total = usize::from(be16(ip, 2).unwrap_or(0));
    if total < ihl || total > ip.len() {
        return Parsed::Malformed;
    }
    let (Some(id), Some(src), Some(dst)) = (be16(ip, 4), be32(ip, 12), be32(ip, 16)) else {
        return Parsed::Malformed;
    };
    if checksum::of(&ip[..ihl]) != 0 {
        return Parsed::Malformed;
    }
    let protocol = ip[9];
    Parsed::Fragment(Fragment {
        key: Key::v4(src, dst, protocol, id, link.vlan),
        offset: u32::from(offset_units) * 8,
        more,
        data: &ip[ihl..total],
        header: &frame[..l3 + ihl],
        l3: l3 as u16,
        family: Family::V4 { ihl: ihl as u16 },
        limit_overhead: ihl as u32,
        upper: protocol,
    })
}

#[inline]
fn parse_v6(frame: &[u8], link: LinkLayer) -> Parsed<'_> {
    let l3 = link.l3;
    let Some(ip) = frame.get(l3..) else {
        return Parsed::Whole;
    };
    if ip.len() < IPV6_HEADER_LEN || ip[0] >> 4 != 6 {
        return Parsed::Whole;
    }
    let payload_len = usize::from(be16(ip, 4).unwrap_or(0));
    // The chain is walked within the packet, never into Ethernet padding. A zero payload length
    // (a jumbogram, which cannot be fragmented) is walked within the bytes present.
    let claimed = IPV6_HEADER_LEN + payload_len;
    let limit = if payload_len == 0 {
        ip.len()
    } else {
        claimed.min(ip.len())
    };
    let (at, nh_at) = match ipv6::walk_extension_headers(ip, limit) {
        Chain::Upper { .. } => return Parsed::Whole,
        Chain::Broken => {
            // A truncated or over-long chain that might hide a Fragment header.
            return Parsed::Malformed;
        }
        Chain::Fragment { at, nh_at } => (at, nh_at),
    };
    if claimed > ip.len() || at + IPV6_FRAGMENT_HEADER_LEN > claimed {
        return Parsed::Malformed;
    }
    let fh = &ip[at..at + IPV6_FRAGMENT_HEADER_LEN];
    let next_header = fh[0];
    let off_flags = u16::from_be_bytes([fh[2], fh[3]]);
    let offset = u32::from(off_flags >> 3) * 8;
    let more = off_flags & 1 != 0;
    if offset == 0 && !more {
        return Parsed::Atomic {
            fragment_header_at: l3 + at,
            end: l3 + claimed,
            next_header_at: l3 + nh_at,
            next_header,
            l3,
        };
    }
    let id = u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    Parsed::Fragment(Fragment {
        key: Key::v6(
            u128::from_be_bytes(src),
            u128::from_be_bytes(dst),
            id,
            link.vlan,
        ),
        offset,
        more,
        data: &ip[at + IPV6_FRAGMENT_HEADER_LEN..claimed],
        header: &frame[..l3 + at],
        l3: l3 as u16,
        family: Family::V6 {
            next_header_at: (l3 + nh_at) as u16,
            next_header,
        },
        limit_overhead: (at - IPV6_HEADER_LEN) as u32,
        upper: next_header,
    })
}
