//! The virtio-net header Linux puts in front of a frame it hands over with work left undone,
//! and the driver-private fix-ups that turn such a frame into ordinary frames.
//!
//! A reader of an AF_PACKET socket with `PACKET_VNET_HDR`, or of a TAP device with
//! `IFF_VNET_HDR`, gets a `struct virtio_net_hdr` ([`VirtioNetHeader`], ten bytes in the
//! host's byte order, as legacy virtio defines it) before every frame. It says what the kernel
//! left for the device to finish, because a device (veth, a TAP, a NIC with offloads) was
//! going to finish it:
//!
//! - **a partial checksum** ([`flags::NEEDS_CSUM`], the kernel's `CHECKSUM_PARTIAL`): the
//!   ones'-complement sum of the bytes from `csum_start` to the end of the datagram belongs at
//!   `csum_start + csum_offset`; meanwhile that field holds the pseudo-header's sum. SCTP is the
//!   one protocol whose field is a CRC32c instead;
//! - **an aggregate** (a `gso_type` other than [`gso::NONE`]): a TCP (over IPv4 or IPv6) or UDP
//!   datagram of up to 64 KiB, built by the sender's TSO or UDP GSO or by the receiver's GRO,
//!   that is to be cut into segments of `gso_size` payload bytes each.
//!
//! [`complete_checksum`] finishes a partial checksum in place; [`Segments`] cuts an aggregate
//! into frames. Frames whose header says neither (or [`flags::DATA_VALID`]: the kernel checked
//! the checksum already) need nothing.
//!
//! # Guarantees
//!
//! - **All or nothing.** [`complete_checksum`] and [`Segments::new`] check the whole header
//!   against the frame (Ethernet and VLAN tags, IPv4 or IPv6 with extension headers, the
//!   transport header, every offset and length) before anything is written, and name what does
//!   not make sense in an [`OffloadError`]; a frame is then to be dropped, never delivered
//!   half-fixed.
//! - **Every segment is an ordinary frame**: the Ethernet header (VLAN tags included), the IP
//!   header and the transport header of the aggregate, then its share of the payload; the IPv4
//!   total length, identification (the aggregate's plus the segment's index, as Linux's GSO
//!   does) and header checksum, or the IPv6 payload length; the TCP sequence number advanced by
//!   the payload before it, FIN and PSH only on the last segment and CWR only on the first; the
//!   UDP length; and the transport checksum computed over the segment with its pseudo-header.
//!   Ethernet padding after the aggregate's datagram is not copied.
//! - **No panic** on any header and any bytes (`wire/tests/offload_props.rs` checks it, with
//!   the segments' payloads adding up to the aggregate's).

use crate::checksum;
use crate::ethernet::{ethertype, link_layer};
use crate::ip::protocol;
use crate::ipv4::Ipv4Packet;
use crate::ipv6::{self, Chain, Ipv6Packet};
use crate::tcp::{self, TcpSegment};
use crate::udp;

/// Bytes of a `struct virtio_net_hdr` (without the `num_buffers` of the mergeable-buffers
/// variant, which neither AF_PACKET's `PACKET_VNET_HDR` nor a TAP's default header carries).
pub const HEADER_LEN: usize = 10;

/// The largest frame a link with virtio-net headers hands over: an IPv6 datagram with the
/// largest payload length (65,535 bytes after its 40-byte header), behind an Ethernet header
/// and two VLAN tags. Aggregates are never bigger: GRO and GSO stop at 64 KiB.
pub const MAX_AGGREGATE_LEN: usize = 14 + 2 * 4 + ipv6::HEADER_LEN + 65_535;

/// The most segments one aggregate may be cut into. A 64 KiB TCP aggregate at Linux's
/// smallest MSS (88 bytes) makes 745, and UDP GSO allows at most 128 per send, so a header
/// asking for more is not one Linux wrote.
pub const MAX_SEGMENTS: usize = 1024;

/// The `flags` of a virtio-net header.
pub mod flags {
    /// The checksum at `csum_start + csum_offset` is partial and must be completed.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has been checked already (the kernel's `CHECKSUM_UNNECESSARY`).
    pub const DATA_VALID: u8 = 2;
}

/// The `gso_type` of a virtio-net header.
pub mod gso {
    /// Not an aggregate.
    pub const NONE: u8 = 0;
    /// TCP over IPv4.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (cut into IP fragments): not something netmux accepts.
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (one UDP datagram per segment), over IPv4 or IPv6.
    pub const UDP_L4: u8 = 5;
    /// Bit added to a TCP type: the aggregate carries ECN's CWR on its first segment.
    pub const ECN: u8 = 0x80;
}

/// A `struct virtio_net_hdr`, as the legacy virtio layout defines it (fields in the host's
/// byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHeader {
    /// [`flags`].
    pub flags: u8,
    /// [`gso`] type.
    pub gso_type: u8,
    /// Length of the headers (a hint; unused here).
    pub hdr_len: u16,
    /// Payload bytes per segment of an aggregate.
    pub gso_size: u16,
    /// Where the partial checksum's sum starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHeader {
    /// The header of an ordinary frame: nothing to finish (what a transmitter writes).
    pub const NONE: VirtioNetHeader = VirtioNetHeader {
        flags: 0,
        gso_type: gso::NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads a header from the first [`HEADER_LEN`] bytes of `bytes`; `None` if there are
    /// fewer.
    pub fn parse(bytes: &[u8]) -> Option<VirtioNetHeader> {
        let b = bytes.get(..HEADER_LEN)?;
        let u16_at = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        Some(VirtioNetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// Whether the frame is an aggregate to be cut with [`Segments`].
    pub fn is_aggregate(&self) -> bool {
        self.gso_type != gso::NONE
    }

    /// Whether the frame's checksum is partial.
    pub fn needs_checksum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }
}

/// Generates [`OffloadError`] and its counter names from one list.
macro_rules! offload_errors {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// Why a frame's virtio-net header does not make sense for the frame.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OffloadError {
            $($(#[doc = $doc])* $variant,)*
        }

        impl OffloadError {
            /// Every reason, in counter order.
            pub const ALL: &'static [OffloadError] = &[$(OffloadError::$variant,)*];

            /// The counter name (`rx_dropped` in `netmux ls`, prefixed `offload-`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(OffloadError::$variant => $name,)*
                }
            }

            /// Position in [`OffloadError::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl core::fmt::Display for OffloadError {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::error::Error for OffloadError {}
    };
}

offload_errors! {
    /// Flag bits besides [`flags::NEEDS_CSUM`] and [`flags::DATA_VALID`].
    UnknownFlags = "unknown-flags",
    /// A GSO type netmux does not cut ([`gso::UDP`], tunnels, anything newer).
    UnknownGsoType = "unknown-gso-type",
    /// The ECN bit on a UDP aggregate.
    EcnWithoutTcp = "ecn-without-tcp",
    /// An aggregate with a segment size of zero.
    ZeroSegmentSize = "zero-segment-size",
    /// The frame is not IPv4 or IPv6 (behind at most two VLAN tags).
    NotIp = "not-ip",
    /// The frame's headers or length fields claim more bytes than it has.
    Truncated = "truncated",
    /// The datagram is an IP fragment: nothing to checksum or cut.
    Fragment = "fragment",
    /// The GSO type names another IP version or transport protocol than the frame carries.
    ProtocolMismatch = "protocol-mismatch",
    /// An IPv6 aggregate with a Routing header (its segments' pseudo-header would need the
    /// final destination from it).
    UnsupportedIpv6 = "unsupported-ipv6",
    /// The checksum's start or field lies outside the transport part of the datagram, or
    /// does not match the transport header's checksum field.
    ChecksumOffset = "checksum-offset",
    /// The aggregate would make more than [`MAX_SEGMENTS`] segments.
    TooManySegments = "too-many-segments",
}

/// Checks the flags and GSO type alone.
fn check_header(header: &VirtioNetHeader) -> Result<(), OffloadError> {
    if header.flags & !(flags::NEEDS_CSUM | flags::DATA_VALID) != 0 {
        return Err(OffloadError::UnknownFlags);
    }
    match header.gso_type & !gso::ECN {
        gso::NONE if header.gso_type & gso::ECN != 0 => Err(OffloadError::EcnWithoutTcp),
        gso::NONE | gso::TCPV4 | gso::TCPV6 => Ok(()),
        gso::UDP_L4 if header.gso_type & gso::ECN != 0 => Err(OffloadError::EcnWithoutTcp),
        gso::UDP_L4 => Ok(()),
        _ => Err(OffloadError::UnknownGsoType),
    }
}

/// Where a datagram's transport part is: the result of walking a frame's headers.
#[derive(Clone, Copy, Debug)]
struct Datagram {
    l3: usize,
    ipv6: bool,
    protocol: u8,
    l4: usize,
    end: usize,
    /// An IPv6 Routing header is in the chain.
    routed: bool,
}

fn datagram(frame: &[u8]) -> Result<Datagram, OffloadError> {
    let link = link_layer(frame).ok_or(OffloadError::NotIp)?;
    let ip = frame.get(link.l3..).unwrap_or(&[]);
    match link.ethertype {
        ethertype::IPV4 => {
            let p = Ipv4Packet::new_checked(ip).map_err(|_| OffloadError::Truncated)?;
            if p.is_fragment() {
                return Err(OffloadError::Fragment);
            }
            Ok(Datagram {
                l3: link.l3,
                ipv6: false,
                protocol: p.protocol(),
                l4: link.l3 + p.header_len(),
                end: link.l3 + usize::from(p.total_len()),
                routed: false,
            })
        }
        ethertype::IPV6 => {
            let p = Ipv6Packet::new_checked(ip).map_err(|_| OffloadError::Truncated)?;
            let len = p.packet().len();
            match ipv6::walk_extension_headers(ip, len) {
                Chain::Upper { next_header, at } => Ok(Datagram {
                    l3: link.l3,
                    ipv6: true,
                    protocol: next_header,
                    l4: link.l3 + at,
                    end: link.l3 + len,
                    routed: has_routing_header(ip, at),
                }),
                Chain::Fragment { .. } => Err(OffloadError::Fragment),
                Chain::Broken => Err(OffloadError::Truncated),
            }
        }
        _ => Err(OffloadError::NotIp),
    }
}

/// Whether the IPv6 extension headers before `upper` (a chain [`ipv6::walk_extension_headers`]
/// walked whole) include a Routing header.
fn has_routing_header(ip: &[u8], upper: usize) -> bool {
    let mut nh = ip.get(6).copied().unwrap_or(protocol::NO_NEXT_HEADER);
    let mut at = ipv6::HEADER_LEN;
    while at < upper {
        if nh == protocol::ROUTING {
            return true;
        }
        let rest = ip.get(at..).unwrap_or(&[]);
        let Some(len) = ipv6::extension_header_len(nh, rest) else {
            return false;
        };
        nh = rest.first().copied().unwrap_or(protocol::NO_NEXT_HEADER);
        at += len;
    }
    false
}

/// The offset of the checksum field in the header of `protocol`, for the protocols whose
/// checksum field netmux knows.
fn checksum_field(protocol: u8) -> Option<usize> {
    match protocol {
        protocol::TCP => Some(tcp::CHECKSUM_OFFSET),
        protocol::UDP | protocol::UDP_LITE => Some(udp::CHECKSUM_OFFSET),
        protocol::SCTP => Some(SCTP_CHECKSUM_OFFSET),
        _ => None,
    }
}

/// Where SCTP's CRC32c lies in its common header.
const SCTP_CHECKSUM_OFFSET: usize = 8;

/// Completes the partial checksum of an ordinary (not aggregated) frame in place, as the
/// kernel's `skb_checksum_help` would: the ones'-complement sum from `csum_start` to the end of
/// the datagram, stored at `csum_start + csum_offset` (a sum of zero is stored as `0xffff`, the
/// same value in ones' complement, which UDP requires); for SCTP, the CRC32c of its packet.
///
/// Returns `Ok(true)` when a checksum was completed and `Ok(false)` when the header asked for
/// nothing. An aggregate's header is refused here ([`Segments`] completes every segment's
/// checksum). On `Err` the frame is unchanged.
pub fn complete_checksum(frame: &mut [u8], header: &VirtioNetHeader) -> Result<bool, OffloadError> {
    check_header(header)?;
    if header.is_aggregate() {
        return Err(OffloadError::UnknownGsoType);
    }
    if !header.needs_checksum() {
        return Ok(false);
    }
    let d = datagram(frame)?;
    let start = usize::from(header.csum_start);
    let field = start + usize::from(header.csum_offset);
    if start < d.l4 || field + 2 > d.end {
        return Err(OffloadError::ChecksumOffset);
    }
    if start == d.l4 {
        if let Some(expected) = checksum_field(d.protocol) {
            if usize::from(header.csum_offset) != expected {
                return Err(OffloadError::ChecksumOffset);
            }
        }
        if d.protocol == protocol::SCTP {
            if field + 4 > d.end {
                return Err(OffloadError::ChecksumOffset);
            }
            frame[field..field + 4].fill(0);
            let crc = crc32c(&frame[start..d.end]);
            frame[field..field + 4].copy_from_slice(&crc.to_le_bytes());
            return Ok(true);
        }
    }
    let value = match checksum::fold(checksum::add(0, &frame[start..d.end])) {
        0 => 0xffff,
        v => v,
    };
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(true)
}

/// An aggregate checked against its header, ready to be cut into [`Segments::len`] frames.
/// See the module documentation for what every segment holds.
#[derive(Clone, Copy, Debug)]
pub struct Segments<'a> {
    frame: &'a [u8],
    d: Datagram,
    /// Where the payload starts (after the transport header).
    payload: usize,
    segment_size: usize,
    count: usize,
}

impl<'a> Segments<'a> {
    /// Checks `frame` against `header` (an aggregate's: TCPv4, TCPv6 or UDP) and plans the
    /// cut. A checksum offset in the header, if any, must be the transport header's own
    /// checksum field. See [`OffloadError`] for what is refused.
    pub fn new(frame: &'a [u8], header: &VirtioNetHeader) -> Result<Segments<'a>, OffloadError> {
        check_header(header)?;
        let kind = header.gso_type & !gso::ECN;
        if kind == gso::NONE {
            return Err(OffloadError::UnknownGsoType);
        }
        if header.gso_size == 0 {
            return Err(OffloadError::ZeroSegmentSize);
        }
        let d = datagram(frame)?;
        let (ipv6, transport) = match kind {
            gso::TCPV4 => (Some(false), protocol::TCP),
            gso::TCPV6 => (Some(true), protocol::TCP),
            _ => (None, protocol::UDP),
        };
        if ipv6.is_some_and(|v6| v6 != d.ipv6) || d.protocol != transport {
            return Err(OffloadError::ProtocolMismatch);
        }
        if d.ipv6 && d.routed {
            return Err(OffloadError::UnsupportedIpv6);
        }
        let l4 = &frame[d.l4..d.end];
        let header_len = if transport == protocol::TCP {
            TcpSegment::new_checked(l4)
                .map_err(|_| OffloadError::Truncated)?
                .header_len()
        } else if l4.len() >= udp::HEADER_LEN {
            udp::HEADER_LEN
        } else {
            return Err(OffloadError::Truncated);
        };
        if header.needs_checksum()
            && (usize::from(header.csum_start) != d.l4
                || checksum_field(transport) != Some(usize::from(header.csum_offset)))
        {
            return Err(OffloadError::ChecksumOffset);
        }
        let payload = d.l4 + header_len;
        let segment_size = usize::from(header.gso_size);
        let count = (d.end - payload).div_ceil(segment_size).max(1);
        if count > MAX_SEGMENTS {
            return Err(OffloadError::TooManySegments);
        }
        Ok(Segments {
            frame,
            d,
            payload,
            segment_size,
            count,
        })
    }

    /// How many frames the aggregate makes (at least one).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: an aggregate makes at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes segment `index` (from 0; an index past the last writes the last) into `out`,
    /// replacing what it held.
    pub fn write(&self, index: usize, out: &mut Vec<u8>) {
        let index = index.min(self.count - 1);
        let last = index + 1 == self.count;
        let d = self.d;
        let from = self.payload + index * self.segment_size;
        let to = (from + self.segment_size).min(d.end);
        out.clear();
        out.extend_from_slice(&self.frame[..self.payload]);
        out.extend_from_slice(&self.frame[from..to]);
        let transport_len = out.len() - d.l4;
        if d.ipv6 {
            let payload_len = (out.len() - d.l3 - ipv6::HEADER_LEN) as u16;
            Ipv6Packet::new_unchecked(&mut out[d.l3..]).set_payload_len(payload_len);
        } else {
            let total = (out.len() - d.l3) as u16;
            let mut ip = Ipv4Packet::new_unchecked(&mut out[d.l3..]);
            let ident = ip.ident().wrapping_add(index as u16);
            ip.set_total_len(total);
            ip.set_ident(ident);
            ip.fill_checksum();
        }
        let pseudo = if d.ipv6 {
            let ip = Ipv6Packet::new_unchecked(&out[d.l3..]);
            checksum::pseudo_v6(&ip.src(), &ip.dst(), d.protocol, transport_len as u32)
        } else {
            let ip = Ipv4Packet::new_unchecked(&out[d.l3..]);
            checksum::pseudo_v4(ip.src(), ip.dst(), d.protocol, transport_len as u32)
        };
        let l4 = &mut out[d.l4..];
        if d.protocol == protocol::TCP {
            let mut segment = TcpSegment::new_unchecked(&mut *l4);
            let seq = segment
                .seq()
                .wrapping_add((index * self.segment_size) as u32);
            let mut flags = segment.flags();
            if !last {
                flags &= !(tcp::flags::FIN | tcp::flags::PSH);
            }
            if index != 0 {
                flags &= !tcp::flags::CWR;
            }
            segment.set_seq(seq);
            segment.set_flags(flags);
            segment.set_checksum(0);
            let sum = checksum::fold(checksum::add(pseudo, l4));
            TcpSegment::new_unchecked(l4).set_checksum(sum);
        } else {
            let mut datagram = udp::UdpDatagram::new_unchecked(&mut *l4);
            datagram.set_len(transport_len as u16);
            datagram.set_checksum(0);
            let sum = match checksum::fold(checksum::add(pseudo, l4)) {
                0 => 0xffff,
                v => v,
            };
            udp::UdpDatagram::new_unchecked(l4).set_checksum(sum);
        }
    }

    /// Every segment in order, each in a buffer of its own.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        (0..self.count)
            .map(|i| {
                let mut out = Vec::new();
                self.write(i, &mut out);
                out
            })
            .collect()
    }
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78) as SCTP stores it: the complemented
/// remainder.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        (crc >> 8) ^ CRC32C_TABLE[usize::from((crc as u8) ^ b)]
    })
}

/// The byte-at-a-time table of [`crc32c`].
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Whether the IPv4 header at the start of `ip` has a valid checksum (for tests and callers
/// that want to check a segment).
pub fn ipv4_header_checksum_ok(ip: &[u8]) -> bool {
    Ipv4Packet::new_checked(ip).is_ok_and(|p| p.verify_checksum())
}

/// Whether the transport checksum of the whole datagram in `frame` is right (TCP or UDP over
/// IPv4 or IPv6; a UDP checksum of zero over IPv4 counts as right, "none"). `None` for frames
/// that are not such a datagram.
pub fn transport_checksum_ok(frame: &[u8]) -> Option<bool> {
    let d = datagram(frame).ok()?;
    let l4 = frame.get(d.l4..d.end)?;
    let len = l4.len() as u32;
    let pseudo = if d.ipv6 {
        let ip = Ipv6Packet::new_checked(&frame[d.l3..]).ok()?;
        checksum::pseudo_v6(&ip.src(), &ip.dst(), d.protocol, len)
    } else {
        let ip = Ipv4Packet::new_checked(&frame[d.l3..]).ok()?;
        checksum::pseudo_v4(ip.src(), ip.dst(), d.protocol, len)
    };
    match d.protocol {
        protocol::TCP if l4.len() >= tcp::MIN_HEADER_LEN => {}
        protocol::UDP if l4.len() >= udp::HEADER_LEN => {
            if !d.ipv6 && l4[6..8] == [0, 0] {
                return Some(true);
            }
        }
        _ => return None,
    }
    Some(checksum::fold(checksum::add(pseudo, l4)) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload`, the TCP checksum left partial as Linux
    /// leaves it (the pseudo-header's sum, not complemented).
    fn tcp4(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        let total = (20 + 20 + payload.len()) as u16;
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_version_and_header_len(20);
            ip.set_total_len(total);
            ip.set_ident(0xfffe);
            ip.set_flags_offset(crate::ipv4::FLAG_DF);
            ip.set_ttl(64);
            ip.set_protocol(protocol::TCP);
            ip.set_src([192, 0, 2, 1]);
            ip.set_dst([192, 0, 2, 2]);
            ip.fill_checksum();
        }
        {
            let mut t = TcpSegment::new_unchecked(&mut f[34..]);
            t.set_src_port(40000);
            t.set_dst_port(8080);
            t.set_seq(0xffff_ff00);
            t.set_ack(7);
            t.set_header_len(20);
            t.set_flags(flags);
            t.set_window(1000);
        }
        f.extend_from_slice(payload);
        let pseudo = checksum::pseudo_v4(
            [192, 0, 2, 1],
            [192, 0, 2, 2],
            protocol::TCP,
            (20 + payload.len()) as u32,
        );
        let partial = !checksum::fold(pseudo);
        TcpSegment::new_unchecked(&mut f[34..]).set_checksum(partial);
        f
    }

    fn partial_tcp() -> VirtioNetHeader {
        VirtioNetHeader {
            flags: flags::NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VirtioNetHeader::NONE
        }
    }

    #[test]
    fn a_header_reads_back_what_was_written() {
        let h = VirtioNetHeader {
            flags: 1,
            gso_type: gso::TCPV6 | gso::ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 54,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHeader::parse(&h.to_bytes()), Some(h));
        assert_eq!(VirtioNetHeader::parse(&[0; 9]), None);
    }

    #[test]
    fn a_partial_tcp_checksum_is_completed() {
        let mut f = tcp4(b"hello, world", tcp::flags::ACK | tcp::flags::PSH);
        assert_eq!(transport_checksum_ok(&f), Some(false));
        assert_eq!(complete_checksum(&mut f, &partial_tcp()), Ok(true));
        assert_eq!(transport_checksum_ok(&f), Some(true));
    }

    #[test]
    fn a_header_without_work_changes_nothing() {
        let mut f = tcp4(b"x", tcp::flags::ACK);
        let before = f.clone();
        let valid = VirtioNetHeader {
            flags: flags::DATA_VALID,
            ..VirtioNetHeader::NONE
        };
        assert_eq!(complete_checksum(&mut f, &valid), Ok(false));
        assert_eq!(f, before);
    }

    #[test]
    fn a_checksum_field_past_the_datagram_is_refused_and_nothing_is_written() {
        let mut f = tcp4(b"abc", tcp::flags::ACK);
        f.extend_from_slice(&[0; 30]); // Ethernet padding: outside the datagram
        let before = f.clone();
        let mut h = partial_tcp();
        h.csum_start = 34 + 23 - 1;
        h.csum_offset = 0;
        assert_eq!(
            complete_checksum(&mut f, &h),
            Err(OffloadError::ChecksumOffset)
        );
        h.csum_start = 20; // inside the IP header
        h.csum_offset = 0;
        assert_eq!(
            complete_checksum(&mut f, &h),
            Err(OffloadError::ChecksumOffset)
        );
        h = partial_tcp();
        h.csum_offset = 6; // UDP's field in a TCP header
        assert_eq!(
            complete_checksum(&mut f, &h),
            Err(OffloadError::ChecksumOffset)
        );
        assert_eq!(f, before);
    }

    #[test]
    fn unknown_flags_and_gso_types_are_refused() {
        let mut f = tcp4(b"abc", tcp::flags::ACK);
        let mut h = partial_tcp();
        h.flags |= 4;
        assert_eq!(
            complete_checksum(&mut f, &h),
            Err(OffloadError::UnknownFlags)
        );
        let h = VirtioNetHeader {
            gso_type: gso::UDP,
            gso_size: 100,
            ..VirtioNetHeader::NONE
        };
        assert_eq!(
            Segments::new(&f, &h).err(),
            Some(OffloadError::UnknownGsoType)
        );
        let h = VirtioNetHeader {
            gso_type: gso::UDP_L4 | gso::ECN,
            gso_size: 100,
            ..VirtioNetHeader::NONE
        };
        assert_eq!(
            Segments::new(&f, &h).err(),
            Some(OffloadError::EcnWithoutTcp)
        );
    }

    #[test]
    fn an_sctp_checksum_is_a_crc32c() {
        // RFC 3720 B.4: 32 bytes of zeroes have the CRC32c 0x8a9136aa.
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_tcp_aggregate_is_cut_with_sequence_numbers_flags_ids_and_checksums() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let flags = tcp::flags::ACK | tcp::flags::PSH | tcp::flags::FIN | tcp::flags::CWR;
        let f = tcp4(&payload, flags);
        let h = VirtioNetHeader {
            gso_type: gso::TCPV4 | gso::ECN,
            gso_size: 1448,
            ..partial_tcp()
        };
        let segments = Segments::new(&f, &h).unwrap();
        assert_eq!(segments.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segments.to_vecs().iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), s.len() - 14);
            assert_eq!(ip.ident(), 0xfffe_u16.wrapping_add(i as u16));
            assert_eq!(transport_checksum_ok(s), Some(true), "segment {i}");
            let t = TcpSegment::new_checked(&s[34..]).unwrap();
            assert_eq!(t.seq(), 0xffff_ff00_u32.wrapping_add(1448 * i as u32));
            let last = i == 2;
            assert_eq!(t.flags() & tcp::flags::FIN != 0, last);
            assert_eq!(t.flags() & tcp::flags::PSH != 0, last);
            assert_eq!(t.flags() & tcp::flags::CWR != 0, i == 0);
            assert!(t.flags() & tcp::flags::ACK != 0);
            joined.extend_from_slice(t.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn an_aggregate_of_another_protocol_than_its_header_says_is_refused() {
        let f = tcp4(&[1; 3000], tcp::flags::ACK);
        for gso_type in [gso::TCPV6, gso::UDP_L4] {
            let h = VirtioNetHeader {
                gso_type,
                gso_size: 1000,
                ..VirtioNetHeader::NONE
            };
            assert_eq!(
                Segments::new(&f, &h).err(),
                Some(OffloadError::ProtocolMismatch)
            );
        }
        let h = VirtioNetHeader {
            gso_type: gso::TCPV4,
            gso_size: 0,
            ..VirtioNetHeader::NONE
        };
        assert_eq!(
            Segments::new(&f, &h).err(),
            Some(OffloadError::ZeroSegmentSize)
        );
        let h = VirtioNetHeader {
            gso_type: gso::TCPV4,
            gso_size: 1,
            ..VirtioNetHeader::NONE
        };
        assert_eq!(
            Segments::new(&f, &h).err(),
            Some(OffloadError::TooManySegments)
        );
        let h = VirtioNetHeader {
            gso_type: gso::TCPV4,
            gso_size: 1000,
            ..VirtioNetHeader::NONE
        };
        assert_eq!(
            Segments::new(&f[..f.len() - 1], &h).err(),
            Some(OffloadError::Truncated)
        );
    }
}
