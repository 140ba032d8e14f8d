//! Splitting whole IPv4 and IPv6 frames into fragment frames: what tests, benchmarks and tools
//! use to make fragment traffic, including deliberately hostile fragments. The fragments are
//! made by [`netmux_wire::fragment::Datagram`], as the ones hosts send.
//!
//! [`fragment`] splits a frame the way a host would. [`ipv4_fragment`] and [`ipv6_fragment`]
//! build one fragment with any offset, flag and data, so that tests can craft overlaps,
//! misaligned or oversized fragments. Every frame built carries a correct IPv4 header checksum
//! and keeps the whole frame's flags.

use netmux_wire::fragment::Datagram;
pub use netmux_wire::fragment::{FragmentError, MAX_FRAGMENT_OFFSET};

/// The datagram of `whole`, which must be IPv6 when `ipv6`, else IPv4.
fn datagram(whole: &[u8], ipv6: bool) -> Result<Datagram<'_>, FragmentError> {
    let d = Datagram::parse(whole)?;
    if d.is_ipv6() != ipv6 {
        return Err(FragmentError::NotIp);
    }
    Ok(d)
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
    datagram(whole, false)?.fragment(offset, more, 0, data)
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
    datagram(whole, true)?.fragment(offset, more, id, data)
}

/// Splits the whole frame `whole` into fragments of at most `max_data` bytes of data each
/// (a positive multiple of 8), in order ([`Datagram::split`]). IPv6 fragments carry
/// identification `ipv6_id`; IPv4 fragments keep the frame's identification.
pub fn fragment(
    whole: &[u8],
    max_data: usize,
    ipv6_id: u32,
) -> Result<Vec<Vec<u8>>, FragmentError> {
    Datagram::parse(whole)?.split(max_data, ipv6_id)
}
