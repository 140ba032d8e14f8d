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

/// Addresses the sample frames use, so expressions can name them.
pub mod addrs {
    /// IPv4 addresses.
    pub const V4: [[u8; 4]; 5] = [
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        [192, 168, 1, 1],
        [1, 2, 3, 4],
        [224, 0, 0, 251],
    ];
    /// IPv6 addresses.
    pub const V6: [[u8; 16]; 4] = [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfb],
    ];
    /// MAC addresses.
    pub const MAC: [[u8; 6]; 4] = [
        [0x00, 0x11, 0x22, 0x33, 0x44, 0x55],
        [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01],
    ];
    /// Ports.
    pub const PORTS: [u16; 8] = [53, 80, 443, 7, 25, 1024, 5353, 6081];
}

/// A deterministic pseudo-random generator for mutations (xorshift64*), so sample frames do
/// not depend on a crate's algorithm choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Frames covering every protocol the filter language names: Ethernet II and 802.3/LLC/SNAP,
/// VLAN (802.1Q, 802.1ad, QinQ, nested), MPLS stacks, ARP and RARP, IPv4 with options and
/// fragments, IPv6 with extension-header chains and fragments, TCP, UDP, SCTP, ICMP, ICMPv6,
/// IGMP, PIM, VRRP, AH, ESP, Geneve; broadcast and multicast destinations.
pub fn protocol_frames() -> Vec<Frame> {
    use addrs::*;
    let mut out = Vec::new();
    let eth = |d: usize, s: usize| FrameBuilder::ethernet(MAC[d % 4], MAC[s % 4]);
    let v4 = |s: usize, d: usize, p: u8| Ipv4::new(V4[s % 5], V4[d % 5], p);
    // Transport headers over IPv4 and IPv6.
    type AddTransport = Box<dyn Fn(FrameBuilder, u16, u16) -> FrameBuilder>;
    let transports: Vec<(u8, AddTransport)> = vec![
        (6, Box::new(|b: FrameBuilder, s, d| b.tcp(s, d, 0x12))),
        (6, Box::new(|b: FrameBuilder, s, d| b.tcp(s, d, 0x02))),
        (
            17,
            Box::new(|b: FrameBuilder, s, d| b.udp(s, d).payload(12)),
        ),
        (132, Box::new(|b: FrameBuilder, s, d| b.sctp(s, d))),
        (1, Box::new(|b: FrameBuilder, _, _| b.icmp(8, 0))),
        (1, Box::new(|b: FrameBuilder, _, _| b.icmp(3, 3))),
        (2, Box::new(|b: FrameBuilder, _, _| b.icmp(0x11, 0))),
        (103, Box::new(|b: FrameBuilder, _, _| b.icmp(0x20, 0))),
        (112, Box::new(|b: FrameBuilder, _, _| b.icmp(0x21, 1))),
        (50, Box::new(|b: FrameBuilder, _, _| b.payload(16))),
        (47, Box::new(|b: FrameBuilder, _, _| b.payload(8))),
        (58, Box::new(|b: FrameBuilder, _, _| b.icmp(128, 0))),
        (58, Box::new(|b: FrameBuilder, _, _| b.icmp(135, 0))),
    ];
    for (i, (proto, t)) in transports.iter().enumerate() {
        let (sp, dp) = (PORTS[i % 8], PORTS[(i + 3) % 8]);
        let b = eth(i, i + 1).ethertype(0x0800).ipv4(v4(i, i + 1, *proto));
        out.push(t(b, sp, dp).payload(4).finish());
        let b = eth(i + 1, i)
            .ethertype(0x86dd)
            .ipv6(V6[i % 4], V6[(i + 1) % 4], *proto);
        out.push(t(b, dp, sp).payload(4).finish());
    }
    // IPv4 options, fragments, AH in front of TCP.
    for ihl in [6u8, 8, 15, 4] {
        let mut h = v4(0, 1, 6);
        h.ihl = ihl;
        out.push(
            eth(0, 1)
                .ethertype(0x0800)
                .ipv4(h)
                .tcp(80, 1024, 0x10)
                .payload(8)
                .finish(),
        );
    }
    for frag in [0x2000u16, 0x2001, 0x0010, 0x4000] {
        let mut h = v4(1, 0, 17);
        h.frag = frag;
        out.push(
            eth(1, 0)
                .ethertype(0x0800)
                .ipv4(h)
                .udp(53, 5353)
                .payload(8)
                .finish(),
        );
    }
    out.push(
        eth(0, 1)
            .ethertype(0x0800)
            .ipv4(v4(2, 3, 51))
            .ah(6, 4)
            .tcp(25, 80, 0x18)
            .finish(),
    );
    out.push(
        eth(0, 1)
            .ethertype(0x0800)
            .ipv4(v4(2, 3, 51))
            .ah(51, 1)
            .ah(17, 1)
            .udp(7, 7)
            .finish(),
    );
    // IPv6 extension chains and fragments.
    let v6 = |b: FrameBuilder, next: u8| b.ethertype(0x86dd).ipv6(V6[2], V6[1], next);
    out.push(v6(eth(0, 1), 0).ipv6_ext(6, 0).tcp(443, 1024, 2).finish());
    out.push(
        v6(eth(0, 1), 0)
            .ipv6_ext(43, 1)
            .ipv6_ext(60, 0)
            .ipv6_ext(17, 0)
            .udp(53, 53)
            .finish(),
    );
    out.push(
        v6(eth(0, 1), 44)
            .ipv6_fragment(6, 0x0001)
            .tcp(80, 80, 2)
            .finish(),
    );
    out.push(
        v6(eth(0, 1), 44)
            .ipv6_fragment(17, 0x0100)
            .udp(53, 80)
            .finish(),
    );
    out.push(v6(eth(0, 1), 51).ah(58, 1).icmp(128, 0).finish());
    out.push(
        v6(eth(0, 1), 60)
            .ipv6_ext(51, 0)
            .ah(132, 1)
            .sctp(7, 7)
            .finish(),
    );
    out.push(v6(eth(0, 1), 59).payload(8).finish());
    let mut long = v6(eth(0, 1), 0);
    for i in 0..20 {
        long = long.ipv6_ext(if i == 19 { 17 } else { [43, 60, 0][i % 3] }, 0);
    }
    out.push(long.udp(1, 2).finish());
    // ARP and RARP.
    for (ty, op) in [(0x0806u16, 1u16), (0x0806, 2), (0x8035, 3), (0x8035, 4)] {
        out.push(
            eth(2, 0)
                .ethertype(ty)
                .arp(op, MAC[0], V4[3], MAC[1], V4[2])
                .finish(),
        );
    }
    // VLANs.
    for (tpid, tci) in [
        (0x8100u16, 10u16),
        (0x88a8, 100),
        (0x9100, 4095),
        (0x8100, 0x2000 | 10),
    ] {
        out.push(
            eth(0, 1)
                .vlan(tpid, tci)
                .ethertype(0x0800)
                .ipv4(v4(0, 1, 17))
                .udp(5353, 53)
                .payload(4)
                .finish(),
        );
    }
    out.push(
        eth(1, 0)
            .vlan(0x88a8, 100)
            .vlan(0x8100, 10)
            .ethertype(0x86dd)
            .ipv6(V6[0], V6[2], 6)
            .tcp(80, 443, 2)
            .finish(),
    );
    out.push(
        eth(1, 0)
            .vlan(0x8100, 1)
            .vlan(0x8100, 2)
            .ethertype(0x8847)
            .mpls(100, true, 64)
            .ipv4(v4(0, 1, 6))
            .tcp(80, 25, 2)
            .finish(),
    );
    out.push(
        eth(1, 0)
            .vlan(0x8100, 300)
            .ethertype(0x0806)
            .arp(1, MAC[0], V4[0], MAC[1], V4[1])
            .finish(),
    );
    // MPLS.
    out.push(
        eth(0, 1)
            .ethertype(0x8847)
            .mpls(100, true, 64)
            .ipv4(v4(3, 0, 6))
            .tcp(80, 1024, 2)
            .finish(),
    );
    out.push(
        eth(0, 1)
            .ethertype(0x8847)
            .mpls(100, false, 64)
            .mpls(200, true, 64)
            .ipv6(V6[1], V6[0], 17)
            .udp(53, 53)
            .finish(),
    );
    out.push(
        eth(0, 1)
            .ethertype(0x8847)
            .mpls(1048575, false, 1)
            .mpls(16, false, 1)
            .mpls(17, true, 1)
            .ipv4(v4(1, 2, 17))
            .udp(7, 7)
            .finish(),
    );
    // 802.3 frames with LLC and SNAP.
    for llc in [
        &[0x06u8, 0x06, 0x03, 0x45, 0, 0, 0x20][..],
        &[0x42, 0x42, 0x03, 0, 0, 0, 0],
        &[0xe0, 0xe0, 0x03, 0xff, 0xff, 0, 0x1e],
        &[0xff, 0xff, 0, 0x1e, 0, 0],
        &[0xaa, 0xaa, 0x03, 0, 0, 0, 0x81, 0x37, 0, 0],
        &[0xaa, 0xaa, 0x03, 0x08, 0x00, 0x07, 0x80, 0x9b, 0, 0],
        &[0xaa, 0xaa, 0x03, 0, 0, 0, 0x80, 0xf3, 0, 0],
        &[0xfe, 0xfe, 0x03, 0x81, 0, 0],
        &[0xf0, 0xf0, 0x03, 0, 0, 0],
        &[0x00, 0x00, 0x03, 0, 0, 0],
    ] {
        out.push(eth(3, 0).ethertype(40).raw(llc).payload(30).finish());
    }
    for ty in [
        0x8137u16, 0x809b, 0x80f3, 0x6003, 0x05dc, 0x05dd, 0x0000, 0xffff,
    ] {
        out.push(eth(2, 1).ethertype(ty).payload(46).finish());
    }
    // Multicast IPv4/IPv6 destinations.
    out.push(
        eth(3, 0)
            .ethertype(0x0800)
            .ipv4(v4(0, 4, 17))
            .udp(5353, 5353)
            .finish(),
    );
    out.push(
        eth(3, 0)
            .ethertype(0x86dd)
            .ipv6(V6[1], V6[3], 17)
            .udp(5353, 5353)
            .finish(),
    );
    // Geneve (UDP 6081) carrying Ethernet/IPv4/TCP, with and without options.
    for (opt_len, vni) in [(0u8, 12345u32), (2, 7)] {
        let mut gen = vec![opt_len & 0x3f, 0, 0x65, 0x58];
        gen.extend_from_slice(&(vni << 8).to_be_bytes());
        gen.extend(std::iter::repeat_n(0, usize::from(opt_len) * 4));
        out.push(
            eth(0, 1)
                .ethertype(0x0800)
                .ipv4(v4(0, 1, 17))
                .udp(40000, 6081)
                .raw(&gen)
                .raw(&MAC[1])
                .raw(&MAC[0])
                .ethertype(0x0800)
                .ipv4(v4(2, 3, 6))
                .tcp(80, 443, 2)
                .finish(),
        );
    }
    out
}

/// [`protocol_frames`], each also cut short at offsets around every header boundary and with a
/// wire length above the captured length, plus `mutants` copies with random bytes changed
/// (seeded), for differential tests.
pub fn sample_frames(mutants: usize, seed: u64) -> Vec<Frame> {
    let base = protocol_frames();
    let mut out = base.clone();
    for f in &base {
        for cut in [
            0usize, 1, 11, 13, 14, 15, 16, 20, 22, 23, 24, 26, 30, 34, 36, 38, 40, 42, 46, 54, 56,
            58,
        ] {
            if cut < f.data.len() {
                out.push(truncated(f, cut));
            }
        }
    }
    let mut rng = Rng::new(seed);
    for _ in 0..mutants {
        let mut f = rng.pick(&base).clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(f.data.len().min(80));
            if let Some(b) = f.data.get_mut(i) {
                *b = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next_u64() as u8,
                };
            }
        }
        f.wire_len = match rng.below(4) {
            0 => rng.below(2000) as u32,
            _ => f.wire_len,
        };
        out.push(f);
    }
    out
}

/// Link layers a test frame can be rewritten into ([`relink`]), by their `DLT_` values.
pub mod dlt {
    /// Ethernet.
    pub const EN10MB: i32 = 1;
    /// Raw IP (IPv4 or IPv6 by the version nibble).
    pub const RAW: i32 = 12;
    /// Linux cooked v1.
    pub const LINUX_SLL: i32 = 113;
    /// Raw IPv4.
    pub const IPV4: i32 = 228;
    /// Raw IPv6.
    pub const IPV6: i32 = 229;
    /// Linux cooked v2.
    pub const LINUX_SLL2: i32 = 276;
    /// Every one of them.
    pub const ALL: [i32; 6] = [EN10MB, RAW, LINUX_SLL, IPV4, IPV6, LINUX_SLL2];
}

/// An Ethernet frame as the link layer `dlt` would have carried it: the Ethernet header
/// replaced by a Linux cooked v1 or v2 header (the protocol field the Ethernet type, or
/// `0x0004`/`0x0001` for 802.2/802.3 frames, as Linux sets it), or removed for raw IP. A frame
/// too short for its Ethernet header keeps what it has after the new header; the wire length
/// changes by as much as the header does.
pub fn relink(frame: &Frame, dlt: i32) -> Frame {
    let d = &frame.data;
    let ethertype = d.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    let payload = d.get(14..).unwrap_or(&[]);
    let src = d.get(6..12).unwrap_or(&[]);
    let protocol = match ethertype {
        Some(t) if t > 1500 => t,
        Some(_) if payload.starts_with(&[0xff, 0xff]) => 0x0001,
        _ => 0x0004,
    };
    let pkttype: u8 = match d.first() {
        Some(b) if *b == 0xff => 1,
        Some(b) if b & 1 == 1 => 2,
        _ => 0,
    };
    let mut out = Vec::with_capacity(d.len() + 6);
    match dlt {
        dlt::LINUX_SLL => {
            out.extend_from_slice(&u16::from(pkttype).to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
            out.extend_from_slice(&6u16.to_be_bytes());
            let mut addr = [0u8; 8];
            addr[..src.len()].copy_from_slice(src);
            out.extend_from_slice(&addr);
            out.extend_from_slice(&protocol.to_be_bytes());
        }
        dlt::LINUX_SLL2 => {
            out.extend_from_slice(&protocol.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&2u32.to_be_bytes()); // interface index
            out.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
            out.push(pkttype);
            out.push(6);
            let mut addr = [0u8; 8];
            addr[..src.len()].copy_from_slice(src);
            out.extend_from_slice(&addr);
        }
        dlt::RAW | dlt::IPV4 | dlt::IPV6 => {}
        _ => return frame.clone(),
    }
    let header = out.len();
    out.extend_from_slice(payload);
    let wire_len = (i64::from(frame.wire_len) + header as i64 - 14).max(0) as u32;
    Frame {
        data: out,
        wire_len,
    }
}
