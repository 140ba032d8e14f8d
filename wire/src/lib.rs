//! Packet views for netmux: the one place where Ethernet, ARP, IPv4, IPv6, UDP, TCP, ICMP and
//! VXLAN headers are read and written, and the capture files frames come in and go out as.
//!
//! # The rule every view keeps
//!
//! A view wraps any buffer (`T: AsRef<[u8]>` to read, `AsMut<[u8]>` to write). Once
//! `new_checked` has returned `Ok`, **no accessor panics**, whatever bytes the buffer holds:
//! `new_checked` proves the buffer holds every fixed field and that the length fields the
//! view trusts (IPv4 header and total length, IPv6 payload length, UDP length, TCP data
//! offset) lie within it. `new_unchecked` skips the proof, for code that just built the
//! buffer; accessors may then panic on a short buffer, as in smoltcp's `wire` module, whose
//! shape this follows. Unknown values never fail: an ethertype or protocol number is a
//! number, and the named constants are in [`ethertype`] and [`protocol`].
//!
//! Alongside the views, a few frame-level walks the driver's hot paths need, which never
//! allocate and never panic on any input:
//!
//! - [`ethernet::link_layer`]: the Ethernet header and up to two VLAN tags, giving where the
//!   network header starts;
//! - [`ipv6::walk_extension_headers`]: an IPv6 header chain up to its Fragment header or its
//!   upper-layer header;
//! - [`ip::is_fragment`] and [`ip::is_truncated`]: what the transmit check asks of a frame,
//!   with the same VLAN walk the reassembler uses;
//! - [`checksum`]: the Internet checksum (RFC 1071) with pseudo-headers;
//! - [`offload`]: the virtio-net header Linux puts before frames it leaves unfinished
//!   (partial checksums, TSO/GSO/GRO aggregates), and the fix-ups that make ordinary frames of
//!   them.
//!
//! [`fragment`] splits a host's own datagrams larger than the MTU into IPv4 or IPv6 fragments;
//! [`capture`] reads pcap and pcapng files and writes pcap.

#![deny(unsafe_code)]

pub mod arp;
pub mod capture;
pub mod checksum;
pub mod ethernet;
pub mod fragment;
pub mod icmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod offload;
pub mod protocol;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use arp::ArpPacket;
pub use ethernet::{ethertype, EthernetFrame, LinkLayer};
pub use icmp::IcmpPacket;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::TcpSegment;
pub use udp::UdpDatagram;
pub use vxlan::VxlanHeader;

/// Why a buffer is not a valid packet of the view's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the fixed header, or than a length field says.
    #[error("truncated: the buffer is shorter than the header says")]
    Truncated,
    /// A field makes the packet impossible (a header length below the minimum, a wrong
    /// version).
    #[error("malformed header")]
    Malformed,
}

/// The result of `new_checked`.
pub type Result<T> = core::result::Result<T, WireError>;

/// A big-endian 16-bit read at `at`, or `None` past the end: for the frame-level walks.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at.checked_add(1)?)?,
    ]))
}

/// Reads a big-endian `u16` from a range a checked view has proven present.
#[inline]
pub(crate) fn read_u16(b: &[u8], field: core::ops::Range<usize>) -> u16 {
    let s = &b[field];
    u16::from_be_bytes([s[0], s[1]])
}

/// Reads a big-endian `u32` from a range a checked view has proven present.
#[inline]
pub(crate) fn read_u32(b: &[u8], field: core::ops::Range<usize>) -> u32 {
    let s = &b[field];
    u32::from_be_bytes([s[0], s[1], s[2], s[3]])
}

/// Writes a big-endian `u16` into a range.
#[inline]
pub(crate) fn write_u16(b: &mut [u8], field: core::ops::Range<usize>, v: u16) {
    b[field].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian `u32` into a range.
#[inline]
pub(crate) fn write_u32(b: &mut [u8], field: core::ops::Range<usize>, v: u32) {
    b[field].copy_from_slice(&v.to_be_bytes());
}
