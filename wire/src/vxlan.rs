//! VXLAN headers (RFC 7348): eight bytes after the outer UDP header.

use crate::{read_u32, write_u32, Result, WireError};

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
