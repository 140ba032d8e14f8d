//! Overlays in the driver: two in-process drivers joined by a test cable as the underlay. A
//! frame to a mapped MAC is encapsulated after the tx filters and classified in the peer's
//! overlay instance; a miss waits for the mapping service; overlays with the same inner
//! addresses never see each other's frames; an unknown VNI or malformed header is dropped
//! and counted; a frame too large for the overlay is rejected with its reason; ARP is
//! answered by proxy and gratuitous ARP dropped; an address that moves is announced.

mod daemon_common;

use std::time::Duration;

use daemon_common::*;
use netmux_driver::daemon::Driver;
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, InstanceId, InstanceInfo, QueueId, RxMode,
    DEFAULT_INSTANCE,
};
use netmux_proto::overlay::{OverlayInfo, OverlayMapping, OverlayMappings, OverlayPollReply};
use netmux_ring::{ClientQueue, TxStatus};
use netmux_wire::vxlan;

const LINK_A: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0xa];
const LINK_B: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0xb];
const UNDERLAY_A: [u8; 4] = [192, 0, 2, 1];
const UNDERLAY_B: [u8; 4] = [192, 0, 2, 2];
const VNI: u32 = 42;
const OTHER_VNI: u32 = 43;
const PORT: u16 = vxlan::DEFAULT_PORT;
const MAC_A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
/// B's instance on the other overlay: the same inner address as `MAC_B`'s.
const MAC_B2: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 3];
const IP_A: [u8; 4] = [10, 0, 0, 1];
const IP_B: [u8; 4] = [10, 0, 0, 2];
const SETTLE: Duration = Duration::from_millis(30);

fn poll(driver: &mut Driver) -> OverlayPollReply {
    match driver.handle(DriverRequest::OverlayPoll).reply {
        DriverReply::OverlayPoll(p) => p,
        other => panic!("poll answered {other:?}"),
    }
}

/// Binds UDP `ip:port` for queue `q` sending from `mac`; ARP from `mac` may go out too.
fn bind(driver: &mut Driver, q: u32, mac: [u8; 6], ip: [u8; 4], port: u16) {
    let base = u64::from(q) * 100;
    bind_udp_in(driver, q, base, mac, ip, port);
    install(
        driver,
        q,
        base + 2,
        Direction::Tx,
        RxMode::Owner,
        None,
        accept_all(),
    );
}

fn overlay(vni: u32) -> DriverRequest {
    DriverRequest::SetOverlay(OverlayInfo {
        vni,
        port: PORT,
        mtu: 1450,
    })
}

fn overlay_instance(id: u32, mac: [u8; 6], ip: [u8; 4], vni: u32) -> DriverRequest {
    DriverRequest::SetInstance(InstanceInfo {
        instance: InstanceId(id),
        mac,
        own_mac: true,
        ipv4: vec![ip],
        ipv6: Vec::new(),
        overlay: Some(vni),
    })
}

/// A host: a driver with underlay address `underlay`, overlay `VNI` and one instance on it
/// (`mac`, `ip`) whose queue 1 binds UDP 7.
fn host(
    link: [u8; 6],
    underlay: [u8; 4],
    mac: [u8; 6],
    ip: [u8; 4],
) -> (Driver, Wire, ClientQueue) {
    let (mut d, wire) = in_process(link);
    ok(
        &mut d,
        DriverRequest::SetInstance(InstanceInfo {
            instance: DEFAULT_INSTANCE,
            mac: link,
            own_mac: false,
            ipv4: vec![underlay],
            ipv6: Vec::new(),
            overlay: None,
        }),
    );
    ok(&mut d, overlay(VNI));
    ok(&mut d, overlay_instance(1, mac, ip, VNI));
    let q = queue_in(&mut d, 1, InstanceId(1));
    bind(&mut d, 1, mac, ip, 7);
    (d, wire, q)
}

fn receive(d: &mut Driver, wire: &Wire, frame: Vec<u8>) {
    wire.rx.lock().unwrap().push(frame);
    while d.poll_rx() > 0 {}
}

fn take_tx(wire: &Wire) -> Vec<Vec<u8>> {
    std::mem::take(&mut *wire.tx.lock().unwrap())
}

fn map(d: &mut Driver, vni: u32, mac: [u8; 6], target: Option<([u8; 4], u16)>) {
    ok(
        d,
        DriverRequest::SetOverlayMappings(OverlayMappings {
            vni,
            flush: false,
            mappings: vec![OverlayMapping { mac, target }],
            arp: None,
            ndp: None,
            dhcp: None,
        }),
    );
}

fn completion(q: &mut ClientQueue) -> TxStatus {
    let mut done = Vec::new();
    eventually("a completion", || {
        q.completions(8, &mut done).unwrap();
        !done.is_empty()
    });
    done[0].status
}

/// The ARP reply B's host stack would give A for the underlay address.
fn arp_reply_from_b() -> Vec<u8> {
    netmux_testkit::frames::FrameBuilder::ethernet(LINK_A, LINK_B)
        .ethertype(0x0806)
        .arp(2, LINK_B, UNDERLAY_B, LINK_A, UNDERLAY_A)
        .finish()
        .data
}

#[test]
fn a_miss_waits_for_the_mapping_then_the_frame_is_encapsulated_and_classified_at_the_peer() {
    let (mut a, wire_a, mut qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    let (mut b, wire_b, mut qb) = host(LINK_B, UNDERLAY_B, MAC_B, IP_B);
    let inner = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 100);
    assert_eq!(qa.send(&[&[&inner]]).unwrap().sent, 1);
    while a.poll_tx() > 0 {}
    assert_eq!(completion(&mut qa), TxStatus::Sent);
    assert!(
        take_tx(&wire_a).is_empty(),
        "nothing leaves before the mapping"
    );
    let polled = poll(&mut a);
    assert_eq!(polled.misses, vec![(VNI, MAC_B)]);
    assert!(poll(&mut a).misses.is_empty(), "a miss is listed once");

    map(&mut a, VNI, MAC_B, Some((UNDERLAY_B, PORT)));
    // The VTEP's link address is asked for by ARP from the underlay address.
    let asked = take_tx(&wire_a);
    assert_eq!(asked.len(), 1);
    assert_eq!(&asked[0][..6], &[0xff; 6]);
    assert_eq!(&asked[0][12..14], &[0x08, 0x06]);
    assert_eq!(&asked[0][38..42], &UNDERLAY_B);
    receive(&mut a, &wire_a, arp_reply_from_b());
    let sent = take_tx(&wire_a);
    assert_eq!(
        sent.len(),
        1,
        "the waiting frame goes once the VTEP is known"
    );
    let outer = vxlan::outer_udp(&sent[0]).expect("IPv4/UDP");
    assert_eq!(&sent[0][..12], &[LINK_B, LINK_A].concat()[..]);
    assert_eq!((outer.src_ip, outer.dst_ip), (UNDERLAY_A, UNDERLAY_B));
    assert_eq!(outer.dst_port, PORT);
    assert!(outer.src_port >= vxlan::SOURCE_PORT_MIN);
    let d = vxlan::decapsulate(&sent[0][outer.payload..outer.payload_end]).unwrap();
    assert_eq!((d.vni, d.inner), (VNI, &inner[..]));

    receive(&mut b, &wire_b, sent[0].clone());
    assert_eq!(
        recv_n(&mut qb, 1, Duration::from_secs(2)),
        vec![inner.clone()]
    );
    assert_eq!(poll(&mut b).overlays[0].rx_frames, 1);

    // Cached now: the next frame goes at once.
    assert_eq!(qa.send(&[&[&inner]]).unwrap().sent, 1);
    while a.poll_tx() > 0 {}
    assert_eq!(take_tx(&wire_a).len(), 1);
    assert!(poll(&mut a).misses.is_empty());
}

#[test]
fn overlays_with_the_same_addresses_never_see_each_others_frames() {
    let (mut b, wire_b, mut qb) = host(LINK_B, UNDERLAY_B, MAC_B, IP_B);
    ok(&mut b, overlay(OTHER_VNI));
    // The same inner address on the other overlay, and on the link itself.
    ok(&mut b, overlay_instance(2, MAC_B2, IP_B, OTHER_VNI));
    let mut qb2 = queue_in(&mut b, 2, InstanceId(2));
    bind(&mut b, 2, MAC_B2, IP_B, 7);
    let mut netd = queue_in(&mut b, 9, DEFAULT_INSTANCE);
    ok(&mut b, DriverRequest::SetNetdQueue { queue: QueueId(9) });

    let to = vxlan::Underlay {
        src_mac: LINK_A,
        dst_mac: LINK_B,
        src_ip: UNDERLAY_A,
        dst_ip: UNDERLAY_B,
        dst_port: PORT,
    };
    let encap = |vni: u32, frame: &[u8]| {
        let mut out = Vec::new();
        vxlan::encapsulate(frame, vni, &to, &mut out).unwrap();
        out
    };
    let for_b = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 10);
    let for_b2 = udp_frame(MAC_A, MAC_B2, IP_A, 7, IP_B, 7, 11);
    let broadcast = udp_frame(MAC_A, [0xff; 6], IP_A, 7, IP_B, 7, 12);
    receive(&mut b, &wire_b, encap(VNI, &for_b));
    receive(&mut b, &wire_b, encap(OTHER_VNI, &for_b2));
    // A frame for B2's MAC carried in B's overlay reaches nobody.
    receive(&mut b, &wire_b, encap(VNI, &for_b2));
    receive(&mut b, &wire_b, encap(OTHER_VNI, &broadcast));
    // The inner frame sent bare on the link reaches no overlay instance.
    receive(
        &mut b,
        &wire_b,
        udp_frame(LINK_A, LINK_B, IP_A, 7, IP_B, 7, 13),
    );
    assert_eq!(drain(&mut qb, SETTLE), vec![for_b]);
    assert_eq!(drain(&mut qb2, SETTLE), vec![for_b2, broadcast]);
    assert_eq!(
        drain(&mut netd, SETTLE).len(),
        1,
        "only the bare frame, to netd"
    );
    let p = poll(&mut b);
    assert_eq!(p.overlays[0].dropped, vec![("no-instance".to_string(), 1)]);
}

#[test]
fn an_unknown_vni_or_a_header_without_the_i_flag_is_dropped_and_counted() {
    let (mut b, wire_b, mut qb) = host(LINK_B, UNDERLAY_B, MAC_B, IP_B);
    let to = vxlan::Underlay {
        src_mac: LINK_A,
        dst_mac: LINK_B,
        src_ip: UNDERLAY_A,
        dst_ip: UNDERLAY_B,
        dst_port: PORT,
    };
    let inner = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 10);
    let mut unknown = Vec::new();
    vxlan::encapsulate(&inner, 7777, &to, &mut unknown).unwrap();
    let mut no_i_flag = Vec::new();
    vxlan::encapsulate(&inner, VNI, &to, &mut no_i_flag).unwrap();
    no_i_flag[42] = 0;
    let mut truncated = Vec::new();
    vxlan::encapsulate(&inner[..10], VNI, &to, &mut truncated).unwrap();
    for f in [unknown, no_i_flag, truncated] {
        receive(&mut b, &wire_b, f);
    }
    assert!(drain(&mut qb, SETTLE).is_empty());
    let p = poll(&mut b);
    assert_eq!((p.unknown_vni, p.malformed), (1, 2));
    assert_eq!(p.overlays[0].rx_frames, 0);
}

#[test]
fn a_frame_too_large_for_the_overlay_is_rejected_with_its_reason() {
    let (mut a, wire_a, mut qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    // 1,450 IP bytes fit; 1,451 do not.
    let fits = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 1450 - 28);
    let too_large = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 1451 - 28);
    assert_eq!(qa.send(&[&[&too_large]]).unwrap().sent, 1);
    while a.poll_tx() > 0 {}
    assert_eq!(completion(&mut qa), TxStatus::RejectedTooLargeForOverlay);
    assert_eq!(qa.send(&[&[&fits]]).unwrap().sent, 1);
    while a.poll_tx() > 0 {}
    assert_eq!(completion(&mut qa), TxStatus::Sent);
    // The mapping says there is nobody: rejected from then on.
    assert_eq!(poll(&mut a).misses, vec![(VNI, MAC_B)]);
    map(&mut a, VNI, MAC_B, None);
    assert!(take_tx(&wire_a).is_empty());
    assert_eq!(qa.send(&[&[&fits]]).unwrap().sent, 1);
    while a.poll_tx() > 0 {}
    assert_eq!(completion(&mut qa), TxStatus::RejectedNoMapping);
    let dropped = &poll(&mut a).overlays[0].dropped;
    assert!(
        dropped.contains(&("no-mapping".to_string(), 2)),
        "{dropped:?}"
    );
}

#[test]
fn arp_is_answered_by_proxy_byte_exact_and_gratuitous_arp_is_dropped() {
    let (mut a, wire_a, mut qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    ok(
        &mut a,
        DriverRequest::SetOverlayMappings(OverlayMappings {
            vni: VNI,
            flush: false,
            mappings: Vec::new(),
            arp: Some(vec![(IP_B, MAC_B)]),
            ndp: None,
            dhcp: None,
        }),
    );
    let request = netmux_testkit::frames::FrameBuilder::ethernet([0xff; 6], MAC_A)
        .ethertype(0x0806)
        .arp(1, MAC_A, IP_A, [0; 6], IP_B)
        .finish()
        .data;
    let gratuitous = netmux_testkit::frames::FrameBuilder::ethernet([0xff; 6], MAC_A)
        .ethertype(0x0806)
        .arp(1, MAC_A, IP_A, [0; 6], IP_A)
        .finish()
        .data;
    assert_eq!(qa.send(&[&[&request], &[&gratuitous]]).unwrap().sent, 2);
    while a.poll_tx() > 0 {}
    let mut expected = Vec::new();
    expected.extend_from_slice(&MAC_A);
    expected.extend_from_slice(&MAC_B);
    expected.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    expected.extend_from_slice(&MAC_B);
    expected.extend_from_slice(&IP_B);
    expected.extend_from_slice(&MAC_A);
    expected.extend_from_slice(&IP_A);
    assert_eq!(recv_n(&mut qa, 1, Duration::from_secs(2)), vec![expected]);
    assert!(
        drain(&mut qa, SETTLE).is_empty(),
        "no answer to gratuitous ARP"
    );
    assert!(take_tx(&wire_a).is_empty(), "ARP never leaves an overlay");
    let o = &poll(&mut a).overlays[0];
    assert_eq!(o.proxy_arp, 1);
    assert_eq!(o.dropped, vec![("gratuitous-arp".to_string(), 1)]);
}

#[test]
fn an_overlay_with_instances_cannot_be_removed_and_an_instance_needs_its_overlay() {
    let (mut a, _wire, _qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    let refused = a.handle(DriverRequest::RemoveOverlay { vni: VNI }).reply;
    assert!(matches!(refused, DriverReply::Error(_)), "{refused:?}");
    let refused = a
        .handle(overlay_instance(5, [2, 0xcc, 0, 0, 0, 5], IP_A, 999))
        .reply;
    assert!(matches!(refused, DriverReply::Error(_)), "{refused:?}");
    let refused = a
        .handle(DriverRequest::SetOverlay(OverlayInfo {
            vni: 50,
            port: PORT,
            mtu: 1451,
        }))
        .reply;
    assert!(matches!(refused, DriverReply::Error(_)), "{refused:?}");
}

#[test]
fn an_address_moved_to_another_mac_is_announced_by_gratuitous_arp() {
    let (mut a, _wire, mut qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    let arp = |d: &mut Driver, table: Vec<([u8; 4], [u8; 6])>| {
        ok(
            d,
            DriverRequest::SetOverlayMappings(OverlayMappings {
                vni: VNI,
                flush: true,
                mappings: Vec::new(),
                arp: Some(table),
                ndp: None,
                dhcp: None,
            }),
        )
    };
    arp(&mut a, vec![(IP_B, MAC_B)]);
    assert!(drain(&mut qa, SETTLE).is_empty(), "nothing moved yet");
    arp(&mut a, vec![(IP_B, MAC_B2)]);
    let mut expected = vec![0xff; 6];
    expected.extend_from_slice(&MAC_B2);
    expected.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    expected.extend_from_slice(&MAC_B2);
    expected.extend_from_slice(&IP_B);
    expected.extend_from_slice(&[0xff; 6]);
    expected.extend_from_slice(&IP_B);
    assert_eq!(recv_n(&mut qa, 1, Duration::from_secs(2)), vec![expected]);
    arp(&mut a, vec![(IP_B, MAC_B2)]);
    assert!(drain(&mut qa, SETTLE).is_empty(), "announced once");
}

#[test]
fn a_neighbour_solicitation_is_answered_by_proxy_with_a_valid_advertisement() {
    let (mut a, wire_a, mut qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    let ll_a: [u8; 16] = "fe80::a".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let ll_b: [u8; 16] = "fe80::b".parse::<std::net::Ipv6Addr>().unwrap().octets();
    ok(
        &mut a,
        DriverRequest::SetOverlayMappings(OverlayMappings {
            vni: VNI,
            flush: false,
            mappings: Vec::new(),
            arp: None,
            ndp: Some(vec![(ll_b, MAC_B)]),
            dhcp: None,
        }),
    );
    // The solicitation for fe80::b to its solicited-node group, with a source link-layer
    // address option; the driver answers it whatever the checksum (as varpd does).
    let solicited = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0xb];
    let mut ns = vec![0x33, 0x33, 0xff, 0, 0, 0xb];
    ns.extend_from_slice(&MAC_A);
    ns.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
    ns.extend_from_slice(&ll_a);
    ns.extend_from_slice(&solicited);
    ns.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
    ns.extend_from_slice(&ll_b);
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&MAC_A);
    assert_eq!(qa.send(&[&[&ns]]).unwrap().sent, 1);
    while a.poll_tx() > 0 {}
    let got = recv_n(&mut qa, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "an advertisement");
    let na = &got[0];
    assert_eq!(&na[..12], &[MAC_A, MAC_B].concat()[..]);
    let p = etherparse::SlicedPacket::from_ethernet(na).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not IPv6: {na:?}")
    };
    assert_eq!(ip.header().hop_limit(), 255);
    assert_eq!(ip.header().source(), ll_b);
    assert_eq!(ip.header().destination(), ll_a);
    let icmp = &na[54..];
    assert_eq!(&icmp[..2], &[136, 0]);
    assert_eq!(icmp[4], 0x60, "solicited and override");
    assert_eq!(&icmp[8..24], &ll_b);
    assert_eq!(&icmp[24..32], &[&[2, 1][..], &MAC_B[..]].concat()[..]);
    let sum = netmux_wire::checksum::fold(netmux_wire::checksum::add(
        netmux_wire::checksum::pseudo_v6(&ll_b, &ll_a, 58, 32),
        icmp,
    ));
    assert_eq!(sum, 0, "the ICMPv6 checksum is right");
    assert!(take_tx(&wire_a).is_empty());
    assert_eq!(poll(&mut a).overlays[0].proxy_ndp, 1);
}

#[test]
fn a_dhcp_broadcast_goes_to_the_mappings_dhcp_proxy_and_others_are_dropped() {
    let (mut a, wire_a, mut qa) = host(LINK_A, UNDERLAY_A, MAC_A, IP_A);
    ok(
        &mut a,
        DriverRequest::SetOverlayMappings(OverlayMappings {
            vni: VNI,
            flush: false,
            mappings: vec![OverlayMapping {
                mac: MAC_B,
                target: Some((UNDERLAY_B, PORT)),
            }],
            arp: None,
            ndp: None,
            dhcp: Some(vec![(MAC_A, MAC_B)]),
        }),
    );
    receive(&mut a, &wire_a, arp_reply_from_b());
    let discover = udp_frame(MAC_A, [0xff; 6], [0; 4], 68, [255; 4], 67, 240);
    let other = udp_frame(MAC_A, [0xff; 6], IP_A, 7, [255; 4], 7, 10);
    assert_eq!(qa.send(&[&[&discover], &[&other]]).unwrap().sent, 2);
    while a.poll_tx() > 0 {}
    let sent = take_tx(&wire_a);
    assert_eq!(sent.len(), 1, "only the DHCP broadcast leaves");
    let outer = vxlan::outer_udp(&sent[0]).unwrap();
    assert_eq!(outer.dst_ip, UNDERLAY_B);
    let d = vxlan::decapsulate(&sent[0][outer.payload..outer.payload_end]).unwrap();
    assert_eq!(&d.inner[..6], &MAC_B, "sent to the DHCP host");
    assert_eq!(&d.inner[6..], &discover[6..], "otherwise unchanged");
    let dropped = &poll(&mut a).overlays[0].dropped;
    assert_eq!(dropped, &vec![("broadcast".to_string(), 1)]);
}

#[test]
fn inner_fragments_are_reassembled_in_their_own_overlay_and_never_mixed_with_anothers() {
    let (mut b, wire_b, mut qb) = host(LINK_B, UNDERLAY_B, MAC_B, IP_B);
    ok(&mut b, overlay(OTHER_VNI));
    // The other overlay's instance has the same inner address, and its peer sends a datagram
    // with the same addresses, protocol and identification at the same time.
    ok(&mut b, overlay_instance(2, MAC_B2, IP_B, OTHER_VNI));
    let mut qb2 = queue_in(&mut b, 2, InstanceId(2));
    bind(&mut b, 2, MAC_B2, IP_B, 7);
    let to = vxlan::Underlay {
        src_mac: LINK_A,
        dst_mac: LINK_B,
        src_ip: UNDERLAY_A,
        dst_ip: UNDERLAY_B,
        dst_port: PORT,
    };
    let encap = |vni: u32, frame: &[u8]| {
        let mut out = Vec::new();
        vxlan::encapsulate(frame, vni, &to, &mut out).unwrap();
        out
    };
    let datagram = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 3_000);
    let mut other = udp_frame(MAC_A, MAC_B2, IP_A, 7, IP_B, 7, 3_000);
    let end = other.len();
    other[end - 100..].fill(0x5a);
    let ours = netmux_wire::fragment::fragment_ipv4(datagram.clone(), 1_400);
    let theirs = netmux_wire::fragment::fragment_ipv4(other.clone(), 1_400);
    assert!(ours.len() >= 3 && ours.len() == theirs.len());
    // Interleaved, and each overlay's in reverse order.
    for (a, b2) in ours.iter().rev().zip(theirs.iter().rev()) {
        receive(&mut b, &wire_b, encap(VNI, a));
        receive(&mut b, &wire_b, encap(OTHER_VNI, b2));
    }
    // The datagram as sent, its IPv4 header checksum filled in by the reassembler.
    let whole_as = |got: Vec<Vec<u8>>, sent: &[u8], who: &str| {
        assert_eq!(got.len(), 1, "{who} receives one datagram");
        let d = &got[0];
        assert!(
            d.len() == sent.len() && d[..24] == sent[..24] && d[26..] == sent[26..],
            "{who} receives the datagram its peer sent"
        );
    };
    whole_as(
        recv_n(&mut qb, 2, Duration::from_millis(300)),
        &datagram,
        "B",
    );
    whole_as(
        recv_n(&mut qb2, 2, Duration::from_millis(300)),
        &other,
        "B2",
    );
    // A lone inner fragment is held, never delivered, and takes nobody else's frames.
    receive(&mut b, &wire_b, encap(VNI, &ours[0]));
    assert!(recv_n(&mut qb, 1, Duration::from_millis(100)).is_empty());
    let whole = udp_frame(MAC_A, MAC_B, IP_A, 7, IP_B, 7, 10);
    receive(&mut b, &wire_b, encap(VNI, &whole));
    assert_eq!(recv_n(&mut qb, 1, Duration::from_secs(2)), vec![whole]);
}
