//! Splitting whole IPv4 and IPv6 frames into fragment frames: what tests, benchmarks and tools
//! use to make fragment traffic, including deliberately hostile fragments.
//!
//! [`fragment`] splits a frame the way a host would. [`ipv4_fragment`] and [`ipv6_fragment`]
//! build one fragment with any offset, flag and data, so that tests can craft overlaps,
//! misaligned or oversized fragments. Every frame built carries a correct IPv4 header checksum.

use netmux_wire::ethernet::link_layer;
use netmux_wire::ip::protocol as proto;

use super::parse::{self, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN};
use thiserror::Error;

/// The largest fragment offset the 13-bit field holds, in bytes.
pub const MAX_FRAGMENT_OFFSET: usize = 0x1fff * 8;

/// Why a fragment could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FragmentError {
    /// The frame is not Ethernet carrying IPv4 or IPv6 (VLAN tags allowed).
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
    /// The fragment size asked of [`fragment`] is zero or not a multiple of 8.
    #[error("fragment data size {0} is not a positive multiple of 8")]
    BadSize(usize),
}

/// The parts of a whole frame that fragments are made of.
struct Whole<'a> {
    /// Headers repeated in every fragment: Ethernet, VLAN tags, IP header (IPv6: with the
    /// unfragmentable extension headers).
    header: &'a [u8],
    /// The fragmentable part.
    payload: &'a [u8],
    /// Offset of the IP header.
    l3: usize,
    v6: Option<V6Parts>,
}

struct V6Parts {
    /// Offset in `header` of the next-header byte that will name the Fragment header.
    next_header_at: usize,
}

fn split_whole(frame: &[u8]) -> Result<Whole<'_>, FragmentError> {
    let link = link_layer(frame).ok_or(FragmentError::NotIp)?;
    let l3 = link.l3;
    let ip = frame.get(l3..).ok_or(FragmentError::Truncated)?;
    match ip.first().map(|b| b >> 4) {
        Some(4) if link.ethertype == 0x0800 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < parse::IPV4_MIN_HEADER_LEN || ip.len() < ihl {
                return Err(FragmentError::Truncated);
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total < ihl || total > ip.len() {
                return Err(FragmentError::Truncated);
            }
            Ok(Whole {
                header: &frame[..l3 + ihl],
                payload: &ip[ihl..total],
                l3,
                v6: None,
            })
        }
        Some(6) if link.ethertype == 0x86dd => {
            if ip.len() < IPV6_HEADER_LEN {
                return Err(FragmentError::Truncated);
            }
            let end = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if end > ip.len() {
                return Err(FragmentError::Truncated);
            }
            // The unfragmentable part: Hop-by-Hop, Routing, and a Destination Options header
            // that precedes a Routing header (RFC 8200 section 4.5).
            let (mut nh, mut nh_at, mut at) = (ip[6], 6usize, IPV6_HEADER_LEN);
            let (mut keep_nh_at, mut keep_at) = (nh_at, at);
            while matches!(
                nh,
                proto::HOP_BY_HOP | proto::ROUTING | proto::DESTINATION_OPTIONS
            ) {
                let len = (usize::from(*ip.get(at + 1).ok_or(FragmentError::Truncated)?) + 1) * 8;
                if at + len > end {
                    return Err(FragmentError::Truncated);
                }
                let following = ip[at];
                nh_at = at;
                at += len;
                if nh != proto::DESTINATION_OPTIONS || following == proto::ROUTING {
                    keep_nh_at = nh_at;
                    keep_at = at;
                }
                nh = following;
            }
            Ok(Whole {
                header: &frame[..l3 + keep_at],
                payload: &ip[keep_at..end],
                l3,
                v6: Some(V6Parts {
                    next_header_at: l3 + keep_nh_at,
                }),
            })
        }
        _ => Err(FragmentError::NotIp),
    }
}

fn check_offset(offset: usize) -> Result<(), FragmentError> {
    if !offset.is_multiple_of(8) || offset > MAX_FRAGMENT_OFFSET {
        return Err(FragmentError::BadOffset(offset));
    }
    Ok(())
}

fn build(
    whole: &Whole<'_>,
    offset: usize,
    more: bool,
    id: u32,
    data: &[u8],
) -> Result<Vec<u8>, FragmentError> {
    check_offset(offset)?;
    let l3 = whole.l3;
    let mut out = Vec::with_capacity(whole.header.len() + IPV6_FRAGMENT_HEADER_LEN + data.len());
    out.extend_from_slice(whole.header);
    match &whole.v6 {
        None => {
            let ihl = whole.header.len() - l3;
            let total = u16::try_from(ihl + data.len()).map_err(|_| FragmentError::TooLong)?;
            let flags = (u16::from(out[l3 + 6]) << 8) & 0xc000; // keep reserved and DF
            let word = flags | if more { 0x2000 } else { 0 } | (offset / 8) as u16;
            out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            out[l3 + 6..l3 + 8].copy_from_slice(&word.to_be_bytes());
            out[l3 + 10] = 0;
            out[l3 + 11] = 0;
            let sum = netmux_wire::checksum::of(&out[l3..l3 + ihl]);
            out[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
        }
        Some(v6) => {
            let unfragmentable = whole.header.len() - l3 - IPV6_HEADER_LEN;
            let payload_len = u16::try_from(unfragmentable + IPV6_FRAGMENT_HEADER_LEN + data.len())
                .map_err(|_| FragmentError::TooLong)?;
            let next_header = out[v6.next_header_at];
            out[v6.next_header_at] = proto::FRAGMENT;
            out[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
            let word = (offset as u16) | u16::from(more);
            out.push(next_header);
            out.push(0);
            out.extend_from_slice(&word.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// One IPv4 fragment of the whole frame `whole`: its Ethernet and IPv4 headers (options
/// included, identification unchanged) with fragment offset `offset` (bytes) and MF `more`,
/// carrying `data` in place of the payload.
pub fn ipv4_fragment(
    whole: &[u8],
    offset: usize,
    more: bool,
    data: &[u8],
) -> Result<Vec<u8>, FragmentError> {
    let w = split_whole(whole)?;
    if w.v6.is_some() {
        return Err(FragmentError::NotIp);
    }
    build(&w, offset, more, 0, data)
}

/// One IPv6 fragment of the whole frame `whole`: its Ethernet header, IPv6 header and
/// unfragmentable extension headers, then a Fragment header with `offset` (bytes), M `more`
/// and identification `id`, carrying `data`.
pub fn ipv6_fragment(
    whole: &[u8],
    offset: usize,
    more: bool,
    id: u32,
    data: &[u8],
) -> Result<Vec<u8>, FragmentError> {
    let w = split_whole(whole)?;
    if w.v6.is_none() {
        return Err(FragmentError::NotIp);
    }
    build(&w, offset, more, id, data)
}

/// Splits the whole frame `whole` into fragments of at most `max_data` bytes of data each
/// (a positive multiple of 8), in order. IPv6 fragments carry identification `ipv6_id`; IPv4
/// fragments keep the frame's identification. A payload that fits in one fragment still
/// becomes one fragment (IPv4: MF clear and offset 0 is not a fragment; IPv6: an atomic
/// fragment).
pub fn fragment(
    whole: &[u8],
    max_data: usize,
    ipv6_id: u32,
) -> Result<Vec<Vec<u8>>, FragmentError> {
    if max_data == 0 || !max_data.is_multiple_of(8) {
        return Err(FragmentError::BadSize(max_data));
    }
    let w = split_whole(whole)?;
    let mut out = Vec::with_capacity(w.payload.len() / max_data + 1);
    let mut offset = 0;
    loop {
        let end = (offset + max_data).min(w.payload.len());
        let more = end < w.payload.len();
        out.push(build(&w, offset, more, ipv6_id, &w.payload[offset..end])?);
        if !more {
            return Ok(out);
        }
        offset = end;
    }
}
