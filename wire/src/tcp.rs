//! TCP headers (RFC 9293).

use crate::{read_u16, read_u32, write_u16, write_u32, Result, WireError};

/// Length of the header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Flag bits of the flags byte.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
}

/// Offset of the checksum field in the header (for checksum offload).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the header, options included, is present. After `Ok`,
    /// no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let s = Self { buffer };
        let b = s.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if s.header_len() < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if s.header_len() > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(s)
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The sequence number.
    pub fn seq(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// The acknowledgement number.
    pub fn ack(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// The header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flags byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The window.
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, p);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, p);
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ, v);
    }

    /// Sets the acknowledgement number.
    pub fn set_ack(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::ACK, v);
    }

    /// Sets the header length in bytes (a multiple of 4, 20 to 60).
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = ((len / 4) as u8) << 4;
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }

    /// Sets the window.
    pub fn set_window(&mut self, w: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, w);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct_and_construct() {
        let mut b = [0u8; 24];
        {
            let mut s = TcpSegment::new_unchecked(&mut b[..]);
            s.set_src_port(40000);
            s.set_dst_port(80);
            s.set_seq(7);
            s.set_ack(9);
            s.set_header_len(24);
            s.set_flags(flags::SYN | flags::ACK);
            s.set_window(1024);
        }
        let s = TcpSegment::new_checked(&b[..]).unwrap();
        assert_eq!(
            (s.src_port(), s.dst_port(), s.seq(), s.ack()),
            (40000, 80, 7, 9)
        );
        assert_eq!((s.header_len(), s.flags(), s.window()), (24, 0x12, 1024));
        assert!(s.payload().is_empty());
        assert_eq!(TcpSegment::new_checked(&b[..22]), Err(WireError::Truncated));
    }
}
