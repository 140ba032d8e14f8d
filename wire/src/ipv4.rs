//! IPv4 headers (RFC 791).

use crate::{checksum, read_u16, write_u16, Result, WireError};

/// Minimum header length (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;
/// The flags/offset word: "don't fragment".
pub const FLAG_DF: u16 = 0x4000;
/// The flags/offset word: "more fragments".
pub const FLAG_MF: u16 = 0x2000;
/// The flags/offset word: the 13-bit fragment offset in 8-byte units.
pub const OFFSET_MASK: u16 = 0x1fff;
/// The largest datagram (the total length field's range).
pub const MAX_DATAGRAM_LEN: usize = 65_535;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLAGS_OFFSET: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking: version 4, a header length of at least 20 bytes, a
    /// total length at least the header's and within the buffer (bytes after it are link
    /// padding). After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self { buffer };
        p.check_len()?;
        Ok(p)
    }

    fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 || self.header_len() < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let total = usize::from(self.total_len());
        if total < self.header_len() {
            return Err(WireError::Malformed);
        }
        if total > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The type-of-service byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// The total length field.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// The flags and fragment offset word.
    pub fn flags_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_OFFSET)
    }

    /// Whether "don't fragment" is set.
    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    /// Whether "more fragments" is set.
    pub fn more_frags(&self) -> bool {
        self.flags_offset() & FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    pub fn frag_offset(&self) -> u32 {
        u32::from(self.flags_offset() & OFFSET_MASK) * 8
    }

    /// Whether the packet is a fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.flags_offset() & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::of(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The source address.
    pub fn src(&self) -> [u8; 4] {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    /// The destination address.
    pub fn dst(&self) -> [u8; 4] {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20 to 60).
    pub fn set_version_and_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the type-of-service byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, id: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, id);
    }

    /// Sets the flags and fragment offset word.
    pub fn set_flags_offset(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::FLAGS_OFFSET, v);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, p: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = p;
    }

    /// Sets the source address.
    pub fn set_src(&mut self, a: [u8; 4]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a);
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, a: [u8; 4]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a);
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let c = checksum::of(&self.buffer.as_ref()[..self.header_len()]);
        write_u16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[start..end]
    }
}

fn addr(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 192.0.2.1 -> 192.0.2.2, UDP, 28 bytes, id 0x1234, DF, TTL 64, checksum filled.
    static PACKET: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa4, 0x99, 192, 0, 2, 1, 192,
        0, 2, 2, 0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src(), [192, 0, 2, 1]);
        assert_eq!(p.dst(), [192, 0, 2, 2]);
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 28];
        b[20..].copy_from_slice(&PACKET[20..]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version_and_header_len(20);
        p.set_total_len(28);
        p.set_ident(0x1234);
        p.set_flags_offset(FLAG_DF);
        p.set_ttl(64);
        p.set_protocol(17);
        p.set_src([192, 0, 2, 1]);
        p.set_dst([192, 0, 2, 2]);
        p.fill_checksum();
        assert_eq!(b, PACKET);
    }

    #[test]
    fn lengths_that_lie_are_refused_and_padding_is_allowed() {
        assert_eq!(
            Ipv4Packet::new_checked(&PACKET[..27]),
            Err(WireError::Truncated)
        );
        let mut bad = PACKET;
        bad[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(WireError::Malformed));
        bad = PACKET;
        bad[3] = 19;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(WireError::Malformed));
        let mut padded = PACKET.to_vec();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(
            Ipv4Packet::new_checked(&padded[..])
                .unwrap()
                .payload()
                .len(),
            8
        );
    }
}
