//! VXLAN encapsulation against an independent reader: etherparse parses what
//! `netmux_wire::vxlan::encapsulate` builds (outer IPv4 valid with its checksum, Don't
//! Fragment, UDP checksum zero), the round trip through `outer_udp` and `decapsulate` gives
//! back the inner frame and VNI, the source port stays in 49152–65535 and is the same for
//! every frame of a flow, and no bytes make the readers panic.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use netmux_wire::checksum;
use netmux_wire::vxlan::{
    decapsulate, encapsulate, outer_udp, source_port, DecapError, Underlay, FLAG_I, MAX_VNI,
    OVERHEAD_V4, SOURCE_PORT_MIN,
};
use proptest::prelude::*;

const TO: Underlay = Underlay {
    src_mac: [2, 0, 0, 0, 0, 1],
    dst_mac: [2, 0, 0, 0, 0, 2],
    src_ip: [192, 0, 2, 1],
    dst_ip: [198, 51, 100, 2],
    dst_port: 4789,
};

/// An inner UDP/IPv4 frame between two overlay hosts.
fn inner_udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder =
        etherparse::PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 1], [2, 0xbb, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(src_port, dst_port);
    let mut f = Vec::new();
    builder.write(&mut f, payload).unwrap();
    f
}

proptest! {
    #[test]
    fn encapsulation_parses_as_ipv4_udp_vxlan_and_round_trips(
        vni in 0u32..=MAX_VNI,
        sport in any::<u16>(),
        dport in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        let inner = inner_udp(sport, dport, &payload);
        let mut out = vec![0xee; 3];
        let n = encapsulate(&inner, vni, &TO, &mut out).unwrap();
        prop_assert_eq!(n, inner.len() + OVERHEAD_V4);
        let frame = &out[3..];
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
        let h = ip.header();
        prop_assert!(h.dont_fragment());
        prop_assert_eq!(h.source(), TO.src_ip);
        prop_assert_eq!(h.destination(), TO.dst_ip);
        prop_assert_eq!(checksum::of(h.slice()), 0);
        let Some(TransportSlice::Udp(udp)) = &p.transport else { panic!("not UDP") };
        prop_assert_eq!(udp.checksum(), 0);
        prop_assert_eq!(udp.destination_port(), 4789);
        prop_assert!(udp.source_port() >= SOURCE_PORT_MIN);
        prop_assert_eq!(udp.payload()[0], FLAG_I);
        let outer = outer_udp(frame).unwrap();
        prop_assert_eq!(outer.src_mac, TO.src_mac);
        prop_assert_eq!(outer.dst_port, 4789);
        let d = decapsulate(&frame[outer.payload..outer.payload_end]).unwrap();
        prop_assert_eq!(d.vni, vni);
        prop_assert_eq!(d.inner, &inner[..]);
    }

    #[test]
    fn one_flow_one_source_port_always_in_the_dynamic_range(
        sport in any::<u16>(),
        dport in any::<u16>(),
        a in proptest::collection::vec(any::<u8>(), 0..64),
        b in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let first = source_port(&inner_udp(sport, dport, &a));
        prop_assert_eq!(first, source_port(&inner_udp(sport, dport, &b)));
        prop_assert!(first >= SOURCE_PORT_MIN);
    }

    #[test]
    fn no_bytes_make_the_readers_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = source_port(&bytes);
        if let Some(o) = outer_udp(&bytes) {
            prop_assert!(o.payload <= o.payload_end && o.payload_end <= bytes.len());
            let _ = decapsulate(&bytes[o.payload..o.payload_end]);
        }
        let _ = decapsulate(&bytes);
    }
}

#[test]
fn a_header_without_the_i_flag_or_too_short_is_refused() {
    let inner = inner_udp(1, 2, b"x");
    let mut out = Vec::new();
    encapsulate(&inner, 7, &TO, &mut out).unwrap();
    let outer = outer_udp(&out).unwrap();
    let mut payload = out[outer.payload..outer.payload_end].to_vec();
    payload[0] = 0;
    assert_eq!(decapsulate(&payload), Err(DecapError::NoVni));
    assert_eq!(decapsulate(&payload[..21]), Err(DecapError::Truncated));
    // Reserved bits set are ignored on receipt.
    payload[0] = 0xff;
    assert_eq!(decapsulate(&payload).unwrap().vni, 7);
}

#[test]
fn a_frame_too_large_for_one_ipv4_datagram_is_refused() {
    let inner = vec![0u8; 65_535 - 36 + 1];
    assert!(encapsulate(&inner, 1, &TO, &mut Vec::new()).is_err());
}
