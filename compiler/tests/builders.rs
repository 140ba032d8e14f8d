//! netd's filter builders on crafted frames, spoofed ones included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmux_compiler::builders::*;
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::Frame;
use netmux_vm::{interp, Program, Verdict};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const OUR_IP: [u8; 4] = [10, 0, 0, 2];
const PEER_IP: [u8; 4] = [10, 0, 0, 9];

fn run(p: &Program, f: &Frame) -> Verdict {
    interp::run(p, &f.data, f.wire_len, &mut [0; 16])
}

fn udp4(dmac: [u8; 6], smac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Frame {
    FrameBuilder::ethernet(dmac, smac)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(src, dst, 17))
        .udp(sport, dport)
        .payload(8)
        .finish()
}

fn binding() -> Binding {
    Binding {
        mac: OUR_MAC,
        ip: IpAddr::V4(Ipv4Addr::from(OUR_IP)),
        transport: Transport::Udp,
        port: 5353,
    }
}

#[test]
fn rx_filter_takes_only_our_mac_ip_protocol_and_port() {
    let p = rx_port(&binding(), 7).unwrap();
    let ok = udp4(OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 1000, 5353);
    assert_eq!(run(&p, &ok), Verdict::Accept(7));
    assert_eq!(
        run(&p, &udp4(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 1000, 5353)),
        Verdict::Reject
    );
    assert_eq!(
        run(&p, &udp4(OUR_MAC, PEER_MAC, PEER_IP, PEER_IP, 1000, 5353)),
        Verdict::Reject
    );
    assert_eq!(
        run(&p, &udp4(OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 1000, 53)),
        Verdict::Reject
    );
    let tcp = FrameBuilder::ethernet(OUR_MAC, PEER_MAC)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(PEER_IP, OUR_IP, 6))
        .tcp(1000, 5353, 2)
        .finish();
    assert_eq!(run(&p, &tcp), Verdict::Reject);
}

#[test]
fn tx_filter_refuses_spoofed_source_mac_ip_or_port() {
    let p = tx_port(&binding(), 1).unwrap();
    assert!(run(&p, &udp4(PEER_MAC, OUR_MAC, OUR_IP, PEER_IP, 5353, 53)).is_accept());
    // Spoofed Ethernet source, IP source, source port.
    assert!(!run(&p, &udp4(PEER_MAC, PEER_MAC, OUR_IP, PEER_IP, 5353, 53)).is_accept());
    assert!(!run(&p, &udp4(PEER_MAC, OUR_MAC, PEER_IP, PEER_IP, 5353, 53)).is_accept());
    assert!(!run(&p, &udp4(PEER_MAC, OUR_MAC, OUR_IP, PEER_IP, 5354, 53)).is_accept());
}

#[test]
fn ipv6_bindings_match_ipv6_frames() {
    let ip6: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let b = Binding {
        ip: IpAddr::V6(ip6),
        transport: Transport::Tcp,
        port: 443,
        ..binding()
    };
    let p = rx_port(&b, 3).unwrap();
    let f = FrameBuilder::ethernet(OUR_MAC, PEER_MAC)
        .ethertype(0x86dd)
        .ipv6([0; 16], ip6.octets(), 6)
        .tcp(5000, 443, 2)
        .finish();
    assert_eq!(run(&p, &f), Verdict::Accept(3));
    let other = FrameBuilder::ethernet(OUR_MAC, PEER_MAC)
        .ethertype(0x86dd)
        .ipv6([0; 16], [0; 16], 6)
        .tcp(5000, 443, 2)
        .finish();
    assert_eq!(run(&p, &other), Verdict::Reject);
}

fn arp(smac: [u8; 6], op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Frame {
    FrameBuilder::ethernet([0xff; 6], smac)
        .ethertype(0x0806)
        .arp(op, sha, spa, [0; 6], tpa)
        .finish()
}

#[test]
fn arp_rx_takes_replies_and_requests_for_our_address() {
    let p = arp_rx(Ipv4Addr::from(OUR_IP), 1).unwrap();
    assert!(run(&p, &arp(PEER_MAC, 2, PEER_MAC, PEER_IP, [1, 1, 1, 1])).is_accept());
    assert!(run(&p, &arp(PEER_MAC, 1, PEER_MAC, PEER_IP, OUR_IP)).is_accept());
    assert!(!run(&p, &arp(PEER_MAC, 1, PEER_MAC, PEER_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &udp4(OUR_MAC, PEER_MAC, PEER_IP, OUR_IP, 1, 2)).is_accept());
}

#[test]
fn arp_tx_refuses_spoofed_senders_and_other_operations() {
    let p = arp_tx(OUR_MAC, Ipv4Addr::from(OUR_IP), 1).unwrap();
    assert!(run(&p, &arp(OUR_MAC, 1, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
    assert!(run(&p, &arp(OUR_MAC, 2, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
    // Wrong Ethernet source, sender MAC, sender IP, or a RARP-style operation.
    assert!(!run(&p, &arp(PEER_MAC, 1, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &arp(OUR_MAC, 1, PEER_MAC, OUR_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &arp(OUR_MAC, 1, OUR_MAC, PEER_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &arp(OUR_MAC, 3, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
}

#[test]
fn a_clients_arp_tx_takes_its_requests_and_refuses_every_reply() {
    let p = arp_request_tx(OUR_MAC, Ipv4Addr::from(OUR_IP), 1).unwrap();
    assert!(run(&p, &arp(OUR_MAC, 1, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
    // A reply for the shared address is netd's to send, however honest its fields.
    assert!(!run(&p, &arp(OUR_MAC, 2, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &arp(PEER_MAC, 1, OUR_MAC, OUR_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &arp(OUR_MAC, 1, PEER_MAC, OUR_IP, PEER_IP)).is_accept());
    assert!(!run(&p, &arp(OUR_MAC, 1, OUR_MAC, PEER_IP, PEER_IP)).is_accept());
}

#[test]
fn builder_filters_agree_with_libpcap() {
    let exprs = [
        rx_port_expr(&binding()),
        tx_port_expr(&binding()),
        arp_rx_expr(Ipv4Addr::from(OUR_IP)),
        arp_tx_expr(OUR_MAC, Ipv4Addr::from(OUR_IP)),
        arp_request_tx_expr(OUR_MAC, Ipv4Addr::from(OUR_IP)),
    ];
    let frames = netmux_testkit::frames::sample_frames(100, 9);
    for e in &exprs {
        let ours = netmux_compiler::compile(e, &Default::default()).unwrap();
        let theirs = netmux_testkit::BpfProgram::compile(e, true).unwrap();
        for f in &frames {
            assert_eq!(
                run(&ours, f).is_accept(),
                theirs.matches(&f.data, f.wire_len),
                "{e}"
            );
        }
    }
}
