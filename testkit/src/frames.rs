//! Builders for the Ethernet frames tests make themselves.
//!
//! A frame is built outside-in by appending headers to a [`FrameBuilder`]; lengths that other
//! headers depend on (IPv4 total length, IPv6 payload length, UDP length) are filled in by
//! [`FrameBuilder::finish`] unless a test set them explicitly (malformed frames are welcome:
//! nothing here validates). Checksums are left zero: no filter under test reads them as such.

use crate::corpus::Frame;

/// An Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Length fields to patch when the frame is finished.
#[derive(Clone, Copy, Debug)]
enum Fixup {
    Ipv4Total(usize),
    Ipv6Payload(usize),
    Udp(usize),
}

/// Appends protocol headers to make one frame.
#[derive(Clone, Debug, Default)]
pub struct FrameBuilder {
    bytes: Vec<u8>,
    fixups: Vec<Fixup>,
}

/// Options for an IPv4 header.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Protocol number.
    pub proto: u8,
    /// Header length in 32-bit words (5 = no options); options are zero-filled.
    pub ihl: u8,
    /// The 16-bit flags and fragment offset field (0x2000 = more fragments).
    pub frag: u16,
    /// Time to live.
    pub ttl: u8,
}

impl Ipv4 {
    /// A plain header from `src` to `dst` carrying `proto`.
    pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            proto,
            ihl: 5,
            frag: 0,
            ttl: 64,
        }
    }
}

impl FrameBuilder {
    /// An Ethernet header without its type field: add one with [`FrameBuilder::ethertype`],
    /// [`FrameBuilder::vlan`] or [`FrameBuilder::mpls`].
    pub fn ethernet(dst: [u8; 6], src: [u8; 6]) -> FrameBuilder {
        let mut b = FrameBuilder::default();
        b.bytes.extend_from_slice(&dst);
        b.bytes.extend_from_slice(&src);
        b
    }

    /// Raw bytes.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// A 16-bit big-endian value (an ethertype, or an 802.3 length).
    pub fn ethertype(self, t: u16) -> Self {
        self.raw(&t.to_be_bytes())
    }

    /// A VLAN tag with TPID `tpid` (0x8100, 0x88a8 or 0x9100) and TCI `tci`; the next header
    /// must supply the inner type.
    pub fn vlan(self, tpid: u16, tci: u16) -> Self {
        self.ethertype(tpid).ethertype(tci)
    }

    /// One MPLS label stack entry (the caller writes ethertype 0x8847 first).
    pub fn mpls(self, label: u32, bottom_of_stack: bool, ttl: u8) -> Self {
        let v = (label << 12) | (u32::from(bottom_of_stack) << 8) | u32::from(ttl);
        self.raw(&v.to_be_bytes())
    }

    /// An IPv4 header (the caller writes the ethertype first).
    pub fn ipv4(mut self, h: Ipv4) -> Self {
        let start = self.bytes.len();
        let ihl = h.ihl.clamp(0, 15);
        self.bytes.push(0x40 | ihl);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&[0, 0]); // total length, fixed up
        self.bytes.extend_from_slice(&0x1234u16.to_be_bytes());
        self.bytes.extend_from_slice(&h.frag.to_be_bytes());
        self.bytes.push(h.ttl);
        self.bytes.push(h.proto);
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes.extend_from_slice(&h.src);
        self.bytes.extend_from_slice(&h.dst);
        let hdr_len = usize::from(ihl.max(5)) * 4;
        self.bytes.resize(start + hdr_len, 0);
        self.fixups.push(Fixup::Ipv4Total(start));
        self
    }

    /// An IPv6 header (the caller writes the ethertype first).
    pub fn ipv6(mut self, src: [u8; 16], dst: [u8; 16], next: u8) -> Self {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0x60, 0, 0, 0]);
        self.bytes.extend_from_slice(&[0, 0]); // payload length, fixed up
        self.bytes.push(next);
        self.bytes.push(64);
        self.bytes.extend_from_slice(&src);
        self.bytes.extend_from_slice(&dst);
        self.fixups.push(Fixup::Ipv6Payload(start));
        self
    }

    /// An IPv6 extension header in the common (next, length in 8-octet units) form, padded to
    /// `8 * (units + 1)` bytes.
    pub fn ipv6_ext(mut self, next: u8, units: u8) -> Self {
        self.bytes.push(next);
        self.bytes.push(units);
        let len = 8 * (usize::from(units) + 1) - 2;
        self.bytes.extend(std::iter::repeat_n(0, len));
        self
    }

    /// An IPv6 fragment header.
    pub fn ipv6_fragment(mut self, next: u8, offset_flags: u16) -> Self {
        self.bytes.extend_from_slice(&[next, 0]);
        self.bytes.extend_from_slice(&offset_flags.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 1]);
        self
    }

    /// An IPsec AH header (length in 32-bit words minus 2).
    pub fn ah(mut self, next: u8, len: u8) -> Self {
        self.bytes.push(next);
        self.bytes.push(len);
        let total = (usize::from(len) + 2) * 4 - 2;
        self.bytes.extend(std::iter::repeat_n(0, total));
        self
    }

    /// A TCP header with no options.
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.bytes.extend_from_slice(&sport.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        self.bytes.push(0x50);
        self.bytes.push(flags);
        self.bytes.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        self
    }

    /// A UDP header (length fixed up).
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&sport.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 0]);
        self.fixups.push(Fixup::Udp(start));
        self
    }

    /// An SCTP common header.
    pub fn sctp(mut self, sport: u16, dport: u16) -> Self {
        self.bytes.extend_from_slice(&sport.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes.extend_from_slice(&[0; 8]);
        self
    }

    /// An ICMP or ICMPv6 header (type, code, checksum, 4 bytes of rest).
    pub fn icmp(mut self, ty: u8, code: u8) -> Self {
        self.bytes.extend_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
        self
    }

    /// An ARP (or RARP) body for Ethernet/IPv4.
    pub fn arp(mut self, op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Self {
        self.bytes.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        self.bytes.extend_from_slice(&op.to_be_bytes());
        self.bytes.extend_from_slice(&sha);
        self.bytes.extend_from_slice(&spa);
        self.bytes.extend_from_slice(&tha);
        self.bytes.extend_from_slice(&tpa);
        self
    }

    /// `n` bytes of payload with a recognisable pattern.
    pub fn payload(mut self, n: usize) -> Self {
        self.bytes.extend((0..n).map(|i| (i * 7 + 3) as u8));
        self
    }

    /// Patches the length fields and returns the whole frame.
    pub fn finish(mut self) -> Frame {
        let total = self.bytes.len();
        for f in std::mem::take(&mut self.fixups) {
            let (at, len) = match f {
                Fixup::Ipv4Total(s) => (s + 2, total - s),
                Fixup::Ipv6Payload(s) => (s + 4, total.saturating_sub(s + 40)),
                Fixup::Udp(s) => (s + 4, total - s),
            };
            let v = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
            if let Some(dst) = self.bytes.get_mut(at..at + 2) {
                dst.copy_from_slice(&v);
            }
        }
        Frame::whole(self.bytes)
    }
}

/// The same frame cut to `keep` captured bytes (the wire length stays).
pub fn truncated(frame: &Frame, keep: usize) -> Frame {
    Frame {
        data: frame.data[..keep.min(frame.data.len())].to_vec(),
        wire_len: frame.wire_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_over_ipv4_has_its_lengths_filled_in() {
        let f = FrameBuilder::ethernet(BROADCAST, [2, 0, 0, 0, 0, 1])
            .ethertype(0x0800)
            .ipv4(Ipv4::new([10, 0, 0, 1], [10, 0, 0, 2], 17))
            .udp(1000, 53)
            .payload(4)
            .finish();
        assert_eq!(f.data.len(), 14 + 20 + 8 + 4);
        assert_eq!(&f.data[16..18], &[0, 32]);
        assert_eq!(&f.data[38..40], &[0, 12]);
        assert_eq!(truncated(&f, 20).data.len(), 20);
        assert_eq!(truncated(&f, 20).wire_len, 46);
    }
}
