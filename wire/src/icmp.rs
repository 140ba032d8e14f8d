//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages: the four bytes they share, and the types
//! netmux acts on.

use crate::{read_u16, read_u32, write_u16, Result, WireError};

/// Length of the common header plus the 4-byte rest-of-header word.
pub const HEADER_LEN: usize = 8;

/// ICMPv4 types.
pub mod v4 {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 4: fragmentation needed).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Destination unreachable code: port unreachable.
    pub const CODE_PORT_UNREACHABLE: u8 = 3;
    /// Destination unreachable code: fragmentation needed and DF set.
    pub const CODE_FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 types.
pub mod v6 {
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Multicast listener report (MLDv1).
    pub const MLD_REPORT: u8 = 131;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// Multicast listener report (MLDv2).
    pub const MLD2_REPORT: u8 = 143;
    /// Destination unreachable code: port unreachable.
    pub const CODE_PORT_UNREACHABLE: u8 = 4;
}

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
}

/// A view of an ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the 8-byte header is present. After `Ok`, no accessor
    /// panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The rest-of-header word (echo id and sequence, next-hop MTU, pointer).
    pub fn rest_of_header(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::REST)
    }

    /// The body after the 8-byte header (for an error: the quoted datagram).
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// Whether an ICMPv4 type is an error message (one that quotes the datagram it is about).
pub const fn is_v4_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        v4::DEST_UNREACHABLE | v4::TIME_EXCEEDED | v4::PARAMETER_PROBLEM
    )
}

/// Whether an ICMPv6 type is an error message (types below 128).
pub const fn is_v6_error(msg_type: u8) -> bool {
    msg_type < 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct() {
        let m = [3u8, 4, 0xab, 0xcd, 0, 0, 0x05, 0xdc, 0x45];
        let p = IcmpPacket::new_checked(&m[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.checksum()), (3, 4, 0xabcd));
        assert_eq!(p.rest_of_header(), 1500);
        assert_eq!(p.body(), &[0x45]);
        assert!(is_v4_error(p.msg_type()));
        assert_eq!(IcmpPacket::new_checked(&m[..7]), Err(WireError::Truncated));
    }
}
