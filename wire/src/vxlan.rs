//! VXLAN (RFC 7348): the eight-byte header after the outer UDP header, and the whole outer
//! Ethernet/IPv4/UDP/VXLAN encapsulation as pure functions.
//!
//! [`encapsulate`] builds what a VTEP sends: the I flag and the 24-bit VNI, a UDP source port
//! hashed from the inner flow into 49152–65535 (RFC 7348 §5, for ECMP entropy), a UDP
//! checksum of zero (§5: SHOULD be zero), and Don't Fragment set (§4.3: VTEPs MUST NOT
//! fragment). [`decapsulate`] reads one back; it never panics on any input, and it tells a
//! frame that is not VXLAN at all from a VXLAN frame whose header is malformed.

use crate::ethernet::{ethertype, link_layer, HEADER_LEN as ETHERNET_HEADER_LEN};
use crate::{checksum, read_u32, write_u32, Result, WireError};

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// The IANA port.
pub const DEFAULT_PORT: u16 = 4789;
/// The I flag: the VNI is valid. RFC 7348 says it must be set; a receiver drops a header
/// without it.
pub const FLAG_I: u8 = 0x08;
/// The largest network id (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..8;
}

/// A view of a VXLAN header and the inner frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the header is present. After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set and every reserved bit is zero, as RFC 7348 requires of a
    /// sender.
    pub fn is_valid(&self) -> bool {
        let b = self.buffer.as_ref();
        b[0] == FLAG_I && b[1..4] == [0, 0, 0] && b[7] == 0
    }

    /// The 24-bit network id.
    pub fn vni(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VNI) >> 8
    }

    /// The inner Ethernet frame.
    pub fn inner(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// Writes the header for `vni` (I flag set, reserved bits zero).
    pub fn emit(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[..4].copy_from_slice(&[FLAG_I, 0, 0, 0]);
        write_u32(b, field::VNI, (vni & MAX_VNI) << 8);
    }
}

/// Bytes an IPv4 underlay adds to an inner frame: outer Ethernet (14), IPv4 (20), UDP (8) and
/// VXLAN (8). The overlay MTU is the underlay MTU minus this.
pub const OVERHEAD_V4: usize = ETHERNET_HEADER_LEN + 20 + 8 + HEADER_LEN;
/// The lowest UDP source port a VTEP uses (RFC 7348 §5: the dynamic range).
pub const SOURCE_PORT_MIN: u16 = 49152;
/// TTL of the outer IPv4 header (Linux's default).
const OUTER_TTL: u8 = 64;
/// IP protocol number of UDP.
const UDP: u8 = 17;

/// The underlay addresses of one encapsulated frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay {
    /// Outer Ethernet source: this host's link MAC.
    pub src_mac: [u8; 6],
    /// Outer Ethernet destination: the next hop toward `dst_ip`.
    pub dst_mac: [u8; 6],
    /// Outer IPv4 source: this host's underlay address.
    pub src_ip: [u8; 4],
    /// Outer IPv4 destination: the VTEP the mapping names.
    pub dst_ip: [u8; 4],
    /// Outer UDP destination port: the remote VTEP's VXLAN port.
    pub dst_port: u16,
}

/// The UDP source port for an inner frame: a hash of its Ethernet addresses and, for IPv4
/// and IPv6, its addresses, protocol and (when present) ports, folded into
/// 49152–65535. Every frame of one flow gets the same port. Never panics.
pub fn source_port(inner: &[u8]) -> u16 {
    /// FxHash's multiplier.
    const FX_SEED: u64 = 0x517c_c1b7_2722_0a95;
    /// Mixes one word in, as FxHash does.
    #[inline(always)]
    fn mix(h: u64, word: u64) -> u64 {
        (h.rotate_left(5) ^ word).wrapping_mul(FX_SEED)
    }
    /// `N` bytes at `at` as a little-endian word (zero-padded); zero when out of bounds.
    #[inline(always)]
    fn load<const N: usize>(bytes: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        if let Some(b) = bytes.get(at..at + N) {
            w[..N].copy_from_slice(b);
        }
        u64::from_le_bytes(w)
    }
    // Fixed-width words: the fields are at most 48 bytes, and hashing them through slices
    // of varying length cost a tenth of an overlay frame's transmit path.
    let mut h = if inner.len() >= 12 {
        mix(mix(0, load::<8>(inner, 0)), load::<4>(inner, 8))
    } else {
        // A runt: whatever there is, eight bytes at a time.
        inner.chunks(8).fold(0, |h, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            mix(h, u64::from_le_bytes(w))
        })
    };
    if let Some(link) = link_layer(inner) {
        let l3 = inner.get(link.l3..).unwrap_or(&[]);
        let (protocol, l4) = match link.ethertype {
            ethertype::IPV4 if l3.len() >= 20 => {
                let ihl = usize::from(l3[0] & 0x0f) * 4;
                let fragment = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff != 0;
                h = mix(h, load::<8>(l3, 12));
                (l3[9], if fragment { None } else { Some(ihl) })
            }
            ethertype::IPV6 if l3.len() >= 40 => {
                for at in [8, 16, 24, 32] {
                    h = mix(h, load::<8>(l3, at));
                }
                (l3[6], Some(40))
            }
            _ => (0, None),
        };
        let mut tail = u64::from(protocol);
        if matches!(protocol, 6 | 17 | 132) {
            if let Some(at) = l4.filter(|&at| l3.len() >= at + 4) {
                tail |= load::<4>(l3, at) << 8;
            }
        }
        h = mix(h, tail);
    }
    let h = (h >> 32) ^ h;
    let h = (h >> 16) ^ h;
    SOURCE_PORT_MIN | (h as u16 & 0x3fff)
}

/// Appends to `out` the encapsulation of `inner` in overlay `vni` toward `to`: outer Ethernet,
/// IPv4 (Don't Fragment, TTL 64, checksum filled in), UDP (source port from [`source_port`],
/// checksum zero), the VXLAN header, then `inner` unchanged. Returns the length appended.
/// `Err(WireError::Malformed)` when the result would exceed an IPv4 datagram's 65,535 bytes.
pub fn encapsulate(inner: &[u8], vni: u32, to: &Underlay, out: &mut Vec<u8>) -> Result<usize> {
    let ip_len = 20 + 8 + HEADER_LEN + inner.len();
    let ip_len16 = u16::try_from(ip_len).map_err(|_| WireError::Malformed)?;
    // The 50 header bytes are built on the stack and appended once, then the inner frame.
    let mut h = [0u8; OVERHEAD_V4];
    h[..6].copy_from_slice(&to.dst_mac);
    h[6..12].copy_from_slice(&to.src_mac);
    h[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    h[14] = 0x45;
    h[16..18].copy_from_slice(&ip_len16.to_be_bytes());
    h[20..22].copy_from_slice(&crate::ipv4::FLAG_DF.to_be_bytes());
    h[22] = OUTER_TTL;
    h[23] = UDP;
    h[26..30].copy_from_slice(&to.src_ip);
    h[30..34].copy_from_slice(&to.dst_ip);
    let sum = checksum::of(&h[14..34]);
    h[24..26].copy_from_slice(&sum.to_be_bytes());
    h[34..36].copy_from_slice(&source_port(inner).to_be_bytes());
    h[36..38].copy_from_slice(&to.dst_port.to_be_bytes());
    h[38..40].copy_from_slice(&(ip_len16 - 20).to_be_bytes());
    h[42] = FLAG_I;
    h[46..50].copy_from_slice(&((vni & MAX_VNI) << 8).to_be_bytes());
    let start = out.len();
    out.reserve(OVERHEAD_V4 + inner.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(inner);
    Ok(out.len() - start)
}

/// An outer IPv4/UDP datagram as [`outer_udp`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterUdp {
    /// Outer Ethernet source.
    pub src_mac: [u8; 6],
    /// Outer IPv4 source.
    pub src_ip: [u8; 4],
    /// Outer IPv4 destination.
    pub dst_ip: [u8; 4],
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// Where the UDP payload starts in the frame.
    pub payload: usize,
    /// Where it ends (the UDP length, not the frame's: Ethernet padding is not payload).
    pub payload_end: usize,
}

/// The IPv4/UDP headers of a frame, if it is an unfragmented IPv4 UDP datagram whose lengths
/// are consistent: what the receive path looks at before asking whether the destination port
/// is a VXLAN port. Never panics.
#[inline(always)]
pub fn outer_udp(frame: &[u8]) -> Option<OuterUdp> {
    let link = link_layer(frame)?;
    if link.ethertype != ethertype::IPV4 {
        return None;
    }
    let ip = frame.get(link.l3..)?;
    let header = ip.first()?;
    let ihl = usize::from(header & 0x0f) * 4;
    if header >> 4 != 4 || ihl < 20 || ip.len() < ihl || *ip.get(9)? != UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let flags_offset = u16::from_be_bytes([ip[6], ip[7]]);
    if flags_offset & 0x3fff != 0 || total < ihl + 8 || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    let payload = link.l3 + ihl + 8;
    Some(OuterUdp {
        src_mac: frame.get(6..12)?.try_into().ok()?,
        src_ip: ip[12..16].try_into().ok()?,
        dst_ip: ip[16..20].try_into().ok()?,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload,
        payload_end: payload + udp_len - 8,
    })
}

/// Why a datagram to a VXLAN port is not a frame to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Shorter than a VXLAN header and an Ethernet header.
    #[error("truncated VXLAN packet")]
    Truncated,
    /// The I flag is not set (RFC 7348: such a packet is dropped).
    #[error("VXLAN header without the I flag")]
    NoVni,
}

/// A decapsulated frame: its VNI and the inner Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decapsulated<'a> {
    /// The 24-bit network id.
    pub vni: u32,
    /// The inner frame.
    pub inner: &'a [u8],
}

/// Reads the VXLAN header of a UDP payload. Reserved bits are ignored, as RFC 7348 asks of a
/// receiver; a payload without the I flag or too short for an inner Ethernet header is an
/// error. Never panics.
#[inline]
pub fn decapsulate(payload: &[u8]) -> core::result::Result<Decapsulated<'_>, DecapError> {
    if payload.len() < HEADER_LEN + ETHERNET_HEADER_LEN {
        return Err(DecapError::Truncated);
    }
    let header = VxlanHeader::new_unchecked(payload);
    if header.flags() & FLAG_I == 0 {
        return Err(DecapError::NoVni);
    }
    Ok(Decapsulated {
        vni: header.vni(),
        inner: &payload[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct_and_construct() {
        let mut b = [0xffu8; 10];
        VxlanHeader::new_unchecked(&mut b[..]).emit(0x123456);
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let h = VxlanHeader::new_checked(&b[..]).unwrap();
        assert!(h.is_valid());
        assert_eq!(h.vni(), 0x123456);
        assert_eq!(h.inner(), &[0xff, 0xff]);
        assert_eq!(VxlanHeader::new_checked(&b[..7]), Err(WireError::Truncated));
    }
}
