//! ARP over Ethernet for IPv4 (RFC 826): the only kind netmux reads.

use crate::{read_u16, write_u16, Result, WireError};

/// Length of an Ethernet/IPv4 ARP body.
pub const PACKET_LEN: usize = 28;
/// Operation: request.
pub const OP_REQUEST: u16 = 1;
/// Operation: reply.
pub const OP_REPLY: u16 = 2;

mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Offset of the sender hardware address in the ARP body.
pub const SENDER_MAC_OFFSET: usize = field::SHA.start;
/// Offset of the sender protocol address in the ARP body.
pub const SENDER_IP_OFFSET: usize = field::SPA.start;

/// A view of an ARP body (after the Ethernet header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole Ethernet/IPv4 body (28 bytes). The
    /// hardware and protocol types are not checked: see [`ArpPacket::is_ethernet_ipv4`].
    /// After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Whether the body says Ethernet hardware addresses and IPv4 protocol addresses.
    pub fn is_ethernet_ipv4(&self) -> bool {
        let b = self.buffer.as_ref();
        read_u16(b, field::HTYPE) == 1
            && read_u16(b, field::PTYPE) == 0x0800
            && b[field::HLEN] == 6
            && b[field::PLEN] == 4
    }

    /// The operation.
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER)
    }

    /// The sender hardware address.
    pub fn sender_mac(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::SHA])
    }

    /// The sender protocol address.
    pub fn sender_ip(&self) -> [u8; 4] {
        ip(&self.buffer.as_ref()[field::SPA])
    }

    /// The target hardware address.
    pub fn target_mac(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::THA])
    }

    /// The target protocol address.
    pub fn target_ip(&self) -> [u8; 4] {
        ip(&self.buffer.as_ref()[field::TPA])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes a whole Ethernet/IPv4 body.
    pub fn emit(&mut self, operation: u16, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) {
        let b = self.buffer.as_mut();
        write_u16(b, field::HTYPE, 1);
        write_u16(b, field::PTYPE, 0x0800);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        write_u16(b, field::OPER, operation);
        b[field::SHA].copy_from_slice(&sender.0);
        b[field::SPA].copy_from_slice(&sender.1);
        b[field::THA].copy_from_slice(&target.0);
        b[field::TPA].copy_from_slice(&target.1);
    }
}

fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

fn ip(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUEST: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 192, 0, 2, 2, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1,
    ];

    #[test]
    fn deconstruct_and_construct() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert!(p.is_ethernet_ipv4());
        assert_eq!(p.operation(), OP_REQUEST);
        assert_eq!(p.sender_mac(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(p.sender_ip(), [192, 0, 2, 2]);
        assert_eq!(p.target_ip(), [192, 0, 2, 1]);
        let mut b = [0u8; 28];
        ArpPacket::new_unchecked(&mut b[..]).emit(
            OP_REQUEST,
            ([2, 0, 0, 0, 0, 2], [192, 0, 2, 2]),
            ([0; 6], [192, 0, 2, 1]),
        );
        assert_eq!(b, REQUEST);
        assert_eq!(
            ArpPacket::new_checked(&REQUEST[..27]),
            Err(WireError::Truncated)
        );
    }
}
