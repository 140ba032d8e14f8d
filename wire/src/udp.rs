//! UDP headers (RFC 768).

use crate::{read_u16, write_u16, Result, WireError};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Offset of the checksum field in the header (for checksum offload).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the header is present and the length field is at least
    /// the header's and within the buffer. After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let d = Self { buffer };
        let b = d.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(d.len());
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(d)
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field (header and payload).
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Whether the datagram carries no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum field (0: none, over IPv4).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, p);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, p);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATAGRAM: [u8; 10] = [0x30, 0x39, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, b'h', b'i'];

    #[test]
    fn deconstruct_and_construct() {
        let d = UdpDatagram::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((d.src_port(), d.dst_port(), d.len()), (12345, 53, 10));
        assert_eq!(d.payload(), b"hi");
        let mut b = [0u8; 10];
        b[8..].copy_from_slice(b"hi");
        let mut w = UdpDatagram::new_unchecked(&mut b[..]);
        w.set_src_port(12345);
        w.set_dst_port(53);
        w.set_len(10);
        assert_eq!(b, DATAGRAM);
        assert_eq!(
            UdpDatagram::new_checked(&DATAGRAM[..9]),
            Err(WireError::Truncated)
        );
    }
}
