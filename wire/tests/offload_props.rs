//! The virtio-net fix-ups of `netmux_wire::offload` against an independent oracle: etherparse
//! builds every aggregate and every segment Linux's GSO would make of it (headers and
//! checksums computed by etherparse), and the segments `Segments` writes must be exactly
//! those bytes. Any bytes under any header must never panic.

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader};
use netmux_wire::checksum;
use netmux_wire::offload::{
    complete_checksum, flags, gso, transport_checksum_ok, OffloadError, Segments, VirtioNetHeader,
};
use proptest::prelude::*;

const SRC4: [u8; 4] = [192, 0, 2, 1];
const DST4: [u8; 4] = [198, 51, 100, 2];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// What one aggregate (or one of its segments) is made of.
#[derive(Clone, Debug)]
struct Shape {
    vlan: bool,
    ipv6: bool,
    /// An IPv6 Hop-by-Hop header (8 bytes of padding) before the transport header.
    hop_by_hop: bool,
    tcp: bool,
    /// TCP options (a multiple of 4 bytes).
    options: Vec<u8>,
    ident: u16,
    seq: u32,
    tcp_flags: u8,
}

/// A frame of `shape` carrying `payload`, every length and checksum right (by etherparse).
fn build(shape: &Shape, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    if shape.vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
    }
    f.extend_from_slice(if shape.ipv6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    let mut l4 = Vec::new();
    let ext: &[u8] = if shape.hop_by_hop && shape.ipv6 {
        &[0, 0, 1, 4, 0, 0, 0, 0]
    } else {
        &[]
    };
    let proto = if shape.tcp {
        IpNumber::TCP
    } else {
        IpNumber::UDP
    };
    let transport_len = payload.len()
        + if shape.tcp {
            20 + shape.options.len()
        } else {
            8
        };
    if shape.ipv6 {
        let ip = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (ext.len() + transport_len) as u16,
            next_header: if ext.is_empty() { proto } else { IpNumber(0) },
            hop_limit: 64,
            source: SRC6,
            destination: DST6,
        };
        f.extend_from_slice(&ip.to_bytes());
        let mut ext = ext.to_vec();
        if let Some(nh) = ext.first_mut() {
            *nh = proto.0;
        }
        f.extend_from_slice(&ext);
        if shape.tcp {
            let mut t = tcp_header(shape);
            t.checksum = t.calc_checksum_ipv6(&ip, payload).unwrap();
            l4.extend_from_slice(&t.to_bytes());
        } else {
            let u = UdpHeader::with_ipv6_checksum(40000, 7, &ip, payload).unwrap();
            l4.extend_from_slice(&u.to_bytes());
        }
    } else {
        let mut ip = Ipv4Header::new(transport_len as u16, 64, proto, SRC4, DST4).unwrap();
        ip.identification = shape.ident;
        ip.dont_fragment = true;
        ip.header_checksum = ip.calc_header_checksum();
        f.extend_from_slice(&ip.to_bytes());
        if shape.tcp {
            let mut t = tcp_header(shape);
            t.checksum = t.calc_checksum_ipv4(&ip, payload).unwrap();
            l4.extend_from_slice(&t.to_bytes());
        } else {
            let u = UdpHeader::with_ipv4_checksum(40000, 7, &ip, payload).unwrap();
            l4.extend_from_slice(&u.to_bytes());
        }
    }
    f.extend_from_slice(&l4);
    f.extend_from_slice(payload);
    f
}

fn tcp_header(shape: &Shape) -> TcpHeader {
    let mut t = TcpHeader::new(40000, 8080, shape.seq, 502);
    t.acknowledgment_number = 0x1234_5678;
    let f = shape.tcp_flags;
    t.fin = f & 0x01 != 0;
    t.psh = f & 0x08 != 0;
    t.ack = true;
    t.ece = f & 0x40 != 0;
    t.cwr = f & 0x80 != 0;
    t.set_options_raw(&shape.options).unwrap();
    t
}

/// Where the transport header starts in a frame of `shape`.
fn l4(shape: &Shape) -> usize {
    14 + if shape.vlan { 4 } else { 0 }
        + if shape.ipv6 {
            40 + if shape.hop_by_hop { 8 } else { 0 }
        } else {
            20
        }
}

/// Turns the transport checksum of `frame` into what Linux leaves there for a device to
/// finish: the pseudo-header's sum, uncomplemented.
fn make_partial(shape: &Shape, frame: &mut [u8]) -> VirtioNetHeader {
    let at = l4(shape);
    let field = at + if shape.tcp { 16 } else { 6 };
    let len = (frame.len() - at) as u32;
    let proto = if shape.tcp { 6 } else { 17 };
    let pseudo = if shape.ipv6 {
        checksum::pseudo_v6(&SRC6, &DST6, proto, len)
    } else {
        checksum::pseudo_v4(SRC4, DST4, proto, len)
    };
    frame[field..field + 2].copy_from_slice(&(!checksum::fold(pseudo)).to_be_bytes());
    VirtioNetHeader {
        flags: flags::NEEDS_CSUM,
        csum_start: at as u16,
        csum_offset: (field - at) as u16,
        ..VirtioNetHeader::NONE
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(vec![]),
            Just(vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        ],
        any::<u16>(),
        any::<u32>(),
        any::<u8>(),
    )
        .prop_map(
            |(vlan, ipv6, hop_by_hop, tcp, options, ident, seq, tcp_flags)| Shape {
                vlan,
                ipv6,
                hop_by_hop,
                tcp,
                options,
                ident,
                seq,
                tcp_flags,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_segment_is_the_frame_gso_would_make(
        shape in shape(),
        len in 0usize..20_000,
        gso_size in 1u16..3000,
        seed in any::<u8>(),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let mut aggregate = build(&shape, &payload);
        let mut header = make_partial(&shape, &mut aggregate);
        header.gso_size = gso_size;
        header.gso_type = match (shape.tcp, shape.ipv6) {
            (true, false) => gso::TCPV4,
            (true, true) => gso::TCPV6,
            (false, _) => gso::UDP_L4,
        };
        let count = len.div_ceil(usize::from(gso_size)).max(1);
        let segments = match Segments::new(&aggregate, &header) {
            Ok(s) => s,
            Err(OffloadError::TooManySegments) => {
                prop_assert!(count > netmux_wire::offload::MAX_SEGMENTS);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e}"))),
        };
        prop_assert_eq!(segments.len(), count);
        let mut out = Vec::new();
        for i in 0..count {
            let from = (i * usize::from(gso_size)).min(len);
            let to = (from + usize::from(gso_size)).min(len);
            let mut expected_shape = shape.clone();
            expected_shape.ident = shape.ident.wrapping_add(i as u16);
            expected_shape.seq = shape.seq.wrapping_add(from as u32);
            if i + 1 != count {
                expected_shape.tcp_flags &= !(0x01 | 0x08);
            }
            if i != 0 {
                expected_shape.tcp_flags &= !0x80;
            }
            let expected = build(&expected_shape, &payload[from..to]);
            segments.write(i, &mut out);
            prop_assert_eq!(&out, &expected, "segment {} of {}", i, count);
            prop_assert_eq!(transport_checksum_ok(&out), Some(true));
        }
    }

    #[test]
    fn a_completed_checksum_is_the_one_the_sender_would_have_written(
        shape in shape(),
        len in 0usize..3000,
        padding in 0usize..40,
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        let whole = build(&shape, &payload);
        let mut partial = whole.clone();
        let header = make_partial(&shape, &mut partial);
        partial.extend(std::iter::repeat_n(0xee, padding));
        prop_assert_eq!(complete_checksum(&mut partial, &header), Ok(true));
        let mut expected = whole;
        expected.extend(std::iter::repeat_n(0xee, padding));
        // A sum that folds to zero is written as 0xffff, as Linux's `skb_checksum_help`
        // does for every protocol (CSUM_MANGLED_0); for TCP both spell the same checksum.
        let field = usize::from(header.csum_start) + usize::from(header.csum_offset);
        if expected[field..field + 2] == [0, 0] {
            expected[field..field + 2].copy_from_slice(&[0xff, 0xff]);
        }
        prop_assert_eq!(partial, expected);
    }

    #[test]
    fn any_bytes_under_any_header_never_panic(
        frame in proptest::collection::vec(any::<u8>(), 0..300),
        raw in proptest::collection::vec(any::<u8>(), 10),
    ) {
        let header = VirtioNetHeader::parse(&raw).unwrap();
        let mut copy = frame.clone();
        let result = complete_checksum(&mut copy, &header);
        if result.is_err() {
            prop_assert_eq!(&copy, &frame, "a refused frame is left as it was");
        }
        if let Ok(segments) = Segments::new(&frame, &header) {
            let mut out = Vec::new();
            for i in 0..segments.len() {
                segments.write(i, &mut out);
                prop_assert!(out.len() <= frame.len());
            }
        }
    }

    #[test]
    fn headers_that_look_like_an_aggregate_over_real_frames_never_panic(
        shape in shape(),
        len in 0usize..4000,
        gso_type in any::<u8>(),
        gso_size in any::<u16>(),
        csum_start in 0u16..120,
        csum_offset in 0u16..40,
        cut in 0usize..80,
    ) {
        let payload = vec![0x5a; len];
        let mut frame = build(&shape, &payload);
        frame.truncate(frame.len().saturating_sub(cut));
        let header = VirtioNetHeader {
            flags: flags::NEEDS_CSUM,
            gso_type,
            hdr_len: 0,
            gso_size,
            csum_start,
            csum_offset,
        };
        let _ = complete_checksum(&mut frame.clone(), &header);
        if let Ok(segments) = Segments::new(&frame, &header) {
            let mut out = Vec::new();
            let mut total = 0;
            for i in 0..segments.len() {
                segments.write(i, &mut out);
                total += out.len();
            }
            prop_assert!(total >= frame.len().min(1));
        }
    }
}

#[test]
fn an_sctp_partial_checksum_is_completed_as_crc32c() {
    // IPv4 + SCTP common header (12 bytes) + one chunk of 8 bytes.
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = Ipv4Header::new(20, 64, IpNumber(132), SRC4, DST4).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    f.extend_from_slice(&ip.to_bytes());
    let sctp_start = f.len();
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x07, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]);
    f.extend_from_slice(&[0, 0, 0, 8, 1, 2, 3, 4]);
    let header = VirtioNetHeader {
        flags: flags::NEEDS_CSUM,
        csum_start: sctp_start as u16,
        csum_offset: 8,
        ..VirtioNetHeader::NONE
    };
    assert_eq!(complete_checksum(&mut f, &header), Ok(true));
    let mut zeroed = f[sctp_start..].to_vec();
    zeroed[8..12].fill(0);
    let crc = netmux_wire::offload::crc32c(&zeroed);
    assert_eq!(f[sctp_start + 8..sctp_start + 12], crc.to_le_bytes());
}
