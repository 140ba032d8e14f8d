//! Frame builders shared by the reassembly tests: whole Ethernet frames carrying UDP or TCP
//! over IPv4 or IPv6, with correct IPv4 header checksums.
#![allow(dead_code)]

use netmux_driver::reassembly::fragmenter;

/// Destination MAC of every test frame.
pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Source MAC of every test frame.
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// One second in the reassembler's nanoseconds.
pub const SECOND: u64 = 1_000_000_000;

/// Bytes `seed, seed+1, ...` wrapping: every datagram's payload is distinguishable.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
}

fn ethernet(ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::with_capacity(1600);
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// The RFC 1071 checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 frame with protocol `protocol`, identification `id` and L4 bytes `l4`, and `options`
/// (a multiple of 4 bytes) in its header.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    id: u16,
    options: &[u8],
    l4: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    let mut f = ethernet(0x0800, vlan);
    let l3 = f.len();
    let ihl = 20 + options.len();
    let total = (ihl + l4.len()) as u16;
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0, 0, 64, protocol, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(options);
    let sum = checksum(&f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

/// A UDP header and payload from port 1000 to port 2000 (checksum left zero).
pub fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&1000u16.to_be_bytes());
    u.extend_from_slice(&2000u16.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A TCP header (20 bytes, no options) and payload from port 1000 to port 80.
pub fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&1000u16.to_be_bytes());
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// A whole IPv4 UDP frame.
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], id: u16, payload: &[u8]) -> Vec<u8> {
    ipv4(src, dst, 17, id, &[], &udp(payload), None)
}

/// An IPv6 frame whose fixed header names `first_header`, followed by `rest` (extension headers
/// and the upper-layer header and data).
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    first_header: u8,
    rest: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    let mut f = ethernet(0x86dd, vlan);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    f.push(first_header);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(rest);
    f
}

/// A whole IPv6 UDP frame.
pub fn ipv6_udp(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    ipv6(src, dst, 17, &udp(payload), None)
}

/// An IPv6 address `2001:db8::n`.
pub fn v6addr(n: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = 0xb8;
    a[12..].copy_from_slice(&n.to_be_bytes());
    a
}

/// Splits `whole` into fragments of `size` data bytes (IPv6 identification `id`).
pub fn split(whole: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    fragmenter::fragment(whole, size, id).expect("test frames split")
}

/// Pads a frame to the Ethernet minimum of 60 bytes with `fill`, as a NIC would (with junk).
pub fn pad(mut frame: Vec<u8>, extra: usize, fill: u8) -> Vec<u8> {
    let target = frame.len().max(60) + extra;
    frame.resize(target, fill);
    frame
}
