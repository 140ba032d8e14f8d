//! IPv6 headers (RFC 8200) and the walk over their extension headers.

use crate::protocol;
use crate::{read_u16, write_u16, Result, WireError};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Length of the Fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;
/// Bound on the extension headers walked in one chain. Each header is at least 8 bytes, so
/// the packet length bounds the walk anyway; no real packet comes near this, and a chain
/// longer than this is treated as hostile (dropped on receive, rejected on transmit).
pub const MAX_EXTENSION_HEADERS: usize = 16;

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking: version 6, the fixed header present, and the payload
    /// length within the buffer (bytes after it are link padding). A zero payload length
    /// (a jumbogram) is refused: netmux carries none. After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self { buffer };
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if p.version() != 6 {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + usize::from(p.payload_len()) > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The payload length field (everything after the fixed header).
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The next header field of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src(&self) -> [u8; 16] {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    /// The destination address.
    pub fn dst(&self) -> [u8; 16] {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// The payload: extension headers and the upper-layer packet, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// The whole packet up to its payload length (padding excluded).
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, traffic class 0 and flow label 0.
    pub fn set_version(&mut self) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = nh;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }

    /// Sets the source address.
    pub fn set_src(&mut self, a: [u8; 16]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a);
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, a: [u8; 16]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a);
    }
}

fn addr(b: &[u8]) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(&b[..16]);
    a
}

/// Length of the extension header of type `nh` whose bytes start at `b[0]`, when `nh` is an
/// extension header the walk steps over (Fragment excepted: it has a fixed length and is
/// reported by [`walk_extension_headers`]) and its length byte is present.
#[inline]
pub fn extension_header_len(nh: u8, b: &[u8]) -> Option<usize> {
    use protocol::*;
    match nh {
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | MOBILITY | HIP | SHIM6 | EXPERIMENT_1
        | EXPERIMENT_2 => Some((usize::from(*b.get(1)?) + 1) * 8),
        AH => Some((usize::from(*b.get(1)?) + 2) * 4),
        _ => None,
    }
}

/// Whether `nh` is an extension header [`extension_header_len`] knows the length of.
#[inline]
pub fn is_extension_header(nh: u8) -> bool {
    extension_header_len(nh, &[0, 0]).is_some()
}

/// Where an IPv6 header chain ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// A Fragment header at offset `at` (from the fixed header's start); `nh_at` is the
    /// offset of the next-header byte that names it.
    Fragment {
        /// Offset of the Fragment header.
        at: usize,
        /// Offset of the byte naming it.
        nh_at: usize,
    },
    /// No Fragment header: the upper-layer header (or ESP, "no next header", or a type the
    /// walk does not know) of type `next_header` starts at offset `at`.
    Upper {
        /// Its type.
        next_header: u8,
        /// Its offset.
        at: usize,
    },
    /// The chain runs past the limit or is longer than [`MAX_EXTENSION_HEADERS`].
    Broken,
}

/// Walks the extension headers of the IPv6 packet `ip` (fixed header first) within its first
/// `limit` bytes, stopping at the first Fragment header. Never panics; `ip` shorter than the
/// fixed header is [`Chain::Broken`].
#[inline]
pub fn walk_extension_headers(ip: &[u8], limit: usize) -> Chain {
    let limit = limit.min(ip.len());
    let Some(&first) = ip.get(field::NEXT_HEADER) else {
        return Chain::Broken;
    };
    if limit < HEADER_LEN {
        return Chain::Broken;
    }
    let mut nh = first;
    let mut nh_at = field::NEXT_HEADER;
    let mut at = HEADER_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if nh == protocol::FRAGMENT {
            return if at + FRAGMENT_HEADER_LEN <= limit {
                Chain::Fragment { at, nh_at }
            } else {
                Chain::Broken
            };
        }
        let rest = &ip[at.min(limit)..limit];
        let Some(len) = extension_header_len(nh, rest) else {
            return if is_extension_header(nh) {
                Chain::Broken // an extension header whose length byte is cut off
            } else {
                Chain::Upper {
                    next_header: nh,
                    at,
                }
            };
        };
        if len > rest.len() {
            return Chain::Broken;
        }
        nh_at = at;
        nh = rest[0];
        at += len;
    }
    if nh == protocol::FRAGMENT || is_extension_header(nh) {
        Chain::Broken
    } else {
        Chain::Upper {
            next_header: nh,
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, ext: &[u8], upper_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 0x60;
        p[6] = next;
        p.extend_from_slice(ext);
        p.extend(std::iter::repeat_n(0, upper_len));
        let len = (p.len() - HEADER_LEN) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn deconstruct_and_construct() {
        let mut b = packet(17, &[], 8);
        {
            let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
            p.set_src([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p.set_hop_limit(64);
        }
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src()[15], 1);
        assert_eq!(p.payload().len(), 8);
        assert_eq!(Ipv6Packet::new_checked(&b[..47]), Err(WireError::Truncated));
    }

    #[test]
    fn the_walk_finds_the_fragment_header_behind_options() {
        // Hop-by-hop (8 bytes) naming Fragment, then the Fragment header naming UDP.
        let ext = [
            protocol::FRAGMENT,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            17,
            0,
            0,
            1,
            0,
            0,
            0,
            9,
        ];
        let p = packet(protocol::HOP_BY_HOP, &ext, 8);
        assert_eq!(
            walk_extension_headers(&p, p.len()),
            Chain::Fragment { at: 48, nh_at: 40 }
        );
        let plain = packet(17, &[], 8);
        assert_eq!(
            walk_extension_headers(&plain, plain.len()),
            Chain::Upper {
                next_header: 17,
                at: 40
            }
        );
        assert_eq!(walk_extension_headers(&p, 50), Chain::Broken);
        assert_eq!(walk_extension_headers(&p[..10], 10), Chain::Broken);
    }

    #[test]
    fn an_endless_chain_is_broken() {
        let mut ext = Vec::new();
        for _ in 0..=MAX_EXTENSION_HEADERS {
            ext.extend_from_slice(&[protocol::DESTINATION_OPTIONS, 0, 0, 0, 0, 0, 0, 0]);
        }
        let p = packet(protocol::DESTINATION_OPTIONS, &ext, 0);
        assert_eq!(walk_extension_headers(&p, p.len()), Chain::Broken);
    }
}
