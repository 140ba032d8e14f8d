//! Ethernet II frames and 802.1Q/802.1ad VLAN tags.

use crate::{be16, read_u16, write_u16, Result, WireError};

/// Ethertypes netmux names. Any other value is just a number.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// Reverse ARP.
    pub const RARP: u16 = 0x8035;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// An 802.1Q VLAN tag (customer tag).
    pub const VLAN: u16 = 0x8100;
    /// An 802.1ad service tag (Q-in-Q).
    pub const QINQ: u16 = 0x88a8;
    /// The pre-standard Q-in-Q ethertype some switches still emit.
    pub const QINQ_LEGACY: u16 = 0x9100;

    /// Whether `t` introduces a VLAN tag.
    pub const fn is_vlan_tag(t: u16) -> bool {
        matches!(t, VLAN | QINQ | QINQ_LEGACY)
    }
}

/// Length of an Ethernet II header: destination MAC, source MAC, ethertype.
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag (tag control information and the inner ethertype).
pub const VLAN_TAG_LEN: usize = 4;
/// At most a service tag and a customer tag (802.1ad Q-in-Q). A frame with a third tag is not
/// one the driver's classifier or reassembler looks into.
pub const MAX_VLAN_TAGS: usize = 2;
/// The broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// A view of an Ethernet II frame (the outer header; see [`link_layer`] for the VLAN walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header. After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The destination MAC address.
    pub fn dst(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::DST])
    }

    /// The source MAC address.
    pub fn src(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::SRC])
    }

    /// The outer ethertype (a VLAN tag's type when the frame is tagged).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Whether the destination is a group (multicast or broadcast) address.
    pub fn is_group_destination(&self) -> bool {
        self.buffer.as_ref()[0] & 1 != 0
    }

    /// The bytes after the outer header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    /// Sets the source MAC address.
    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    /// Sets the outer ethertype.
    pub fn set_ethertype(&mut self, t: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, t);
    }

    /// The bytes after the outer header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// The link layer of a frame after the VLAN walk: where the network header starts, its
/// ethertype, and the VLANs that carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkLayer {
    /// Offset of the network header (14, 18 or 22).
    pub l3: usize,
    /// The ethertype after any VLAN tags.
    pub ethertype: u16,
    /// VLAN identifiers packed in one word: tag count in bits 24..26, outer VID in 12..24,
    /// inner VID in 0..12. Zero when untagged.
    pub vlan: u32,
}

impl LinkLayer {
    /// Number of VLAN tags (0 to [`MAX_VLAN_TAGS`]).
    pub fn tags(&self) -> usize {
        (self.vlan >> 24) as usize
    }
}

/// Parses the Ethernet header and up to [`MAX_VLAN_TAGS`] VLAN tags. `None` for a frame too
/// short to hold them, or with more tags than that. Never panics; reads at most 22 bytes.
#[inline]
pub fn link_layer(frame: &[u8]) -> Option<LinkLayer> {
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = HEADER_LEN;
    let mut vlan = 0u32;
    let mut tags = 0u32;
    while ethertype::is_vlan_tag(ethertype) {
        if tags as usize == MAX_VLAN_TAGS {
            return None;
        }
        let tci = be16(frame, l3)?;
        ethertype = be16(frame, l3 + 2)?;
        vlan = (vlan << 12) | u32::from(tci & 0x0fff);
        tags += 1;
        l3 += VLAN_TAG_LEN;
    }
    Some(LinkLayer {
        l3,
        ethertype,
        vlan: vlan | (tags << 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 22] = [
        0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a,
        0x08, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.ethertype(), ethertype::QINQ);
        assert!(!f.is_group_destination());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 14];
        let mut f = EthernetFrame::new_unchecked(&mut b[..]);
        f.set_dst(BROADCAST);
        f.set_src([2, 0, 0, 0, 0, 2]);
        f.set_ethertype(ethertype::ARP);
        assert_eq!(
            &b[..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 2, 8, 6]
        );
    }

    #[test]
    fn the_vlan_walk_reads_two_tags_and_refuses_a_third() {
        let l = link_layer(&FRAME).unwrap();
        assert_eq!(l.l3, 22);
        assert_eq!(l.ethertype, ethertype::IPV4);
        assert_eq!(l.tags(), 2);
        assert_eq!(l.vlan & 0xfff, 10);
        assert_eq!((l.vlan >> 12) & 0xfff, 100);
        let mut three = FRAME.to_vec();
        three[20..22].copy_from_slice(&[0x81, 0x00]);
        three.extend_from_slice(&[0, 1, 8, 0]);
        assert_eq!(link_layer(&three), None);
        assert_eq!(link_layer(&FRAME[..13]), None);
        assert_eq!(link_layer(&FRAME[..17]), None);
    }

    #[test]
    fn a_short_buffer_is_refused() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]),
            Err(WireError::Truncated)
        );
    }
}
