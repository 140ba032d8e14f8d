//! Reading the headers the reassembler needs from an Ethernet frame, without copying and
//! without panicking on any bytes.
//!
//! Every function here takes the raw frame and checks each length before it reads; a frame that
//! is too short for what it claims is reported, never indexed past its end. Nothing here
//! allocates.

use super::key::Key;

/// Length of an Ethernet II header: destination MAC, source MAC, ethertype.
pub(crate) const ETHERNET_HEADER_LEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag (tag control information and the inner ethertype).
const VLAN_TAG_LEN: usize = 4;
/// At most a service tag and a customer tag (802.1ad Q-in-Q); a third tag is not a frame the
/// driver's classifier understands, so the frame is passed on untouched.
const MAX_VLAN_TAGS: usize = 2;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// The pre-standard Q-in-Q ethertype still emitted by some switches.
const ETHERTYPE_QINQ_LEGACY: u16 = 0x9100;

/// Minimum IPv4 header length (IHL 5).
pub(crate) const IPV4_MIN_HEADER_LEN: usize = 20;
/// The IPv4 flags/offset word: "more fragments" bit.
const IPV4_MF: u16 = 0x2000;
/// The IPv4 flags/offset word: the 13-bit offset in 8-byte units.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Length of the fixed IPv6 header.
pub(crate) const IPV6_HEADER_LEN: usize = 40;
/// Length of the IPv6 Fragment extension header.
pub(crate) const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
/// Bound on the extension headers walked in one chain. Each header is at least 8 bytes, so the
/// packet length bounds the walk anyway; no real packet comes near this, and a chain longer
/// than this is treated as hostile (dropped on receive, rejected on transmit).
pub const MAX_EXTENSION_HEADERS: usize = 16;

/// IP protocol numbers the reassembler looks at.
pub(crate) mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IGMP: u8 = 2;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DESTINATION_OPTIONS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const MOBILITY: u8 = 135;
    pub const UDP_LITE: u8 = 136;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
    pub const EXPERIMENT_1: u8 = 253;
    pub const EXPERIMENT_2: u8 = 254;
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// The link layer of a frame: where the IP header starts and which VLANs carry it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    /// Offset of the network header (14, 18 or 22).
    pub l3: usize,
    /// The ethertype after any VLAN tags.
    pub ethertype: u16,
    /// VLAN identifiers packed for the key: tag count in bits 24..26, outer VID in 12..24,
    /// inner VID in 0..12. Zero when untagged.
    pub vlan: u32,
}

/// Parses the Ethernet header and up to [`MAX_VLAN_TAGS`] tags. `None` for a frame too short to
/// hold them or with more tags than that.
#[inline]
pub(crate) fn link(frame: &[u8]) -> Option<Link> {
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = ETHERNET_HEADER_LEN;
    let mut vlan = 0u32;
    let mut tags = 0u32;
    while matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_LEGACY
    ) {
        if tags as usize == MAX_VLAN_TAGS {
            return None;
        }
        let tci = be16(frame, l3)?;
        ethertype = be16(frame, l3 + 2)?;
        vlan = (vlan << 12) | u32::from(tci & 0x0fff);
        tags += 1;
        l3 += VLAN_TAG_LEN;
    }
    Some(Link {
        l3,
        ethertype,
        vlan: vlan | (tags << 24),
    })
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
    let Some(link) = link(frame) else {
        return Parsed::Whole;
    };
    match link.ethertype {
        ETHERTYPE_IPV4 => parse_v4(frame, link),
        ETHERTYPE_IPV6 => parse_v6(frame, link),
        _ => Parsed::Whole,
    }
}

#[inline]
fn parse_v4(frame: &[u8], link: Link) -> Parsed<'_> {
    let l3 = link.l3;
    let Some(ip) = frame.get(l3..) else {
        return Parsed::Whole;
    };
    let (Some(flags), Some(&vihl)) = (be16(ip, 6), ip.first()) else {
        return Parsed::Whole;
    };
    let offset_units = flags & IPV4_OFFSET_MASK;
    let more = flags & IPV4_MF != 0;
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
    if ipv4_checksum(&ip[..ihl]) != 0 {
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

/// Length of the IPv6 extension header of type `nh` starting at `b[0]`, if `nh` is an
/// extension header this walk steps over and its length byte is present.
#[inline]
fn ext_header_len(nh: u8, b: &[u8]) -> Option<usize> {
    use proto::*;
    match nh {
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | MOBILITY | HIP | SHIM6 | EXPERIMENT_1
        | EXPERIMENT_2 => Some((usize::from(*b.get(1)?) + 1) * 8),
        AH => Some((usize::from(*b.get(1)?) + 2) * 4),
        _ => None,
    }
}

/// Result of walking an IPv6 header chain up to a Fragment header.
enum Chain {
    /// No Fragment header: an upper-layer header, ESP, "no next header" or an unknown type.
    NoFragment,
    /// A Fragment header at this offset (relative to the IPv6 header); `nh_at` is the offset of
    /// the next-header byte that names it.
    Fragment { at: usize, nh_at: usize },
    /// The chain runs past `len` or is longer than [`MAX_EXTENSION_HEADERS`].
    Broken,
}

/// Walks the extension headers of the IPv6 packet `ip` (fixed header first), limited to the
/// first `len` bytes.
#[inline]
fn find_fragment_header(ip: &[u8], len: usize) -> Chain {
    let mut nh = ip[6];
    let mut nh_at = 6;
    let mut at = IPV6_HEADER_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if nh == proto::FRAGMENT {
            return if at + IPV6_FRAGMENT_HEADER_LEN <= len {
                Chain::Fragment { at, nh_at }
            } else {
                Chain::Broken
            };
        }
        let Some(rest) = ip.get(at..len) else {
            return Chain::Broken;
        };
        let Some(ext_len) = ext_header_len(nh, rest) else {
            return if ext_header_len(nh, &[0, 0]).is_some() {
                Chain::Broken // an extension header whose length byte is cut off
            } else {
                Chain::NoFragment
            };
        };
        if ext_len > rest.len() {
            return Chain::Broken;
        }
        nh_at = at;
        nh = rest[0];
        at += ext_len;
    }
    if nh == proto::FRAGMENT || ext_header_len(nh, &[0, 0]).is_some() {
        Chain::Broken
    } else {
        Chain::NoFragment
    }
}

#[inline]
fn parse_v6(frame: &[u8], link: Link) -> Parsed<'_> {
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
    let (at, nh_at) = match find_fragment_header(ip, limit) {
        Chain::NoFragment => return Parsed::Whole,
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

/// Whether the first fragment's data `data` holds the whole header chain that starts with a
/// header of type `upper`: for IPv6 every extension header and the upper-layer header
/// (RFC 7112), for IPv4 the transport header. Protocols whose header length the reassembler
/// does not know need nothing beyond a non-empty fragment.
pub(crate) fn holds_header_chain(v6: bool, upper: u8, data: &[u8]) -> bool {
    use proto::*;
    let mut nh = upper;
    let mut at = 0usize;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let rest = data.get(at..).unwrap_or(&[]);
        if v6 {
            if nh == FRAGMENT {
                // A Fragment header inside the fragmentable part: step over it like any other.
                if rest.len() < IPV6_FRAGMENT_HEADER_LEN {
                    return false;
                }
                nh = rest[0];
                at += IPV6_FRAGMENT_HEADER_LEN;
                continue;
            }
            if let Some(len) = ext_header_len(nh, rest) {
                if len > rest.len() {
                    return false;
                }
                nh = rest[0];
                at += len;
                continue;
            } else if ext_header_len(nh, &[0, 0]).is_some() {
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
            NO_NEXT_HEADER => 0,
            _ => 0,
        };
        return rest.len() >= need;
    }
    false
}

/// Whether `frame` is an IP fragment: IPv4 with MF set or a non-zero offset, or IPv6 carrying a
/// Fragment header anywhere in its extension header chain (atomic fragments included). For the
/// transmit path, which rejects fragments a client sends, anything the reassembler cannot see
/// into counts as a fragment too, since it might hide one: an IPv6 chain that is truncated or
/// longer than [`MAX_EXTENSION_HEADERS`], or more than two VLAN tags.
/// Reads at most a few dozen bytes of headers; never panics.
pub fn is_fragment(frame: &[u8]) -> bool {
    let Some(link) = link(frame) else {
        // More VLAN tags than the reassembler reads (or a cut-off tag): it cannot see whether
        // an IP fragment is inside, so the transmit path must not let it out.
        return be16(frame, 12)
            .is_some_and(|t| matches!(t, ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_LEGACY));
    };
    let Some(ip) = frame.get(link.l3..) else {
        return false;
    };
    match link.ethertype {
        ETHERTYPE_IPV4 => {
            be16(ip, 6).is_some_and(|flags| flags & (IPV4_MF | IPV4_OFFSET_MASK) != 0)
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6_HEADER_LEN {
                return false;
            }
            !matches!(find_fragment_header(ip, ip.len()), Chain::NoFragment)
        }
        _ => false,
    }
}

/// The IPv4 header checksum (RFC 1071) of `header`, whose checksum field is zero; zero
/// for a header whose checksum field is correct.
#[inline]
pub(crate) fn ipv4_checksum(header: &[u8]) -> u16 {
    // Sum 32-bit big-endian words: 2^16 = 1 in ones' complement arithmetic, so folding the
    // wide sum gives the sum of the 16-bit words, at half the additions.
    let mut sum = 0u64;
    let mut words = header.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    for (k, &b) in words.remainder().iter().enumerate() {
        sum += u64::from(b) << if k % 2 == 0 { 8 } else { 0 };
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
