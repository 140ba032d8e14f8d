//! netmux against libpcap on frames the test builds itself (always runs, no corpus needed):
//! every primitive of the language, optimizer on and off, on frames covering every protocol,
//! truncated at every header boundary, and randomly mutated; then the same on every other link
//! layer netmux compiles for (the frames rewritten into it).
//!
//! Names are looked up in the test machine's own databases, as libpcap looks them up: the
//! expressions use names every Linux system has (`/etc/services`, `/etc/protocols`,
//! `localhost`); where one is missing both sides refuse the filter alike.

mod common;

use netmux_compiler::LinkType;
use netmux_testkit::frames::{relink, sample_frames};

/// Expressions covering every primitive, qualifier combination and quirk we implement.
const EXPRS: &[&str] = &[
    // No expression accepts every frame, as in tcpdump; only libpcap's blanks separate tokens.
    "",
    " \t\r\n",
    "tcp\x0c",
    "\x0budp",
    "\u{a0}arp",
    "ip",
    "ip6",
    "arp",
    "rarp",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmp6",
    "igmp",
    "igrp",
    "pim",
    "vrrp",
    "carp",
    "ah",
    "esp",
    "stp",
    "ipx",
    "netbeui",
    "iso",
    "broadcast",
    "ether broadcast",
    "link broadcast",
    "multicast",
    "ether multicast",
    "ip multicast",
    "ip6 multicast",
    "host 10.0.0.1",
    "src host 10.0.0.1",
    "dst host 10.0.0.2",
    "src and dst host 10.0.0.1",
    "src or dst host 1.2.3.4",
    "ip host 192.168.1.1",
    "arp host 1.2.3.4",
    "rarp src 1.2.3.4",
    "arp dst host 192.168.1.1",
    "host 10.0.0.1 or 10.0.0.2",
    "host 10.0.0.1 and not 10.0.0.2",
    "host 10.0.0.1 and (10.0.0.2 or 1.2.3.4)",
    "host 10",
    "host 10.0",
    "net 10",
    "net 192.168",
    "net 10.0.0.0/8",
    "src net 192.168.0.0/16",
    "dst net 10.0.0.0 mask 255.0.0.0",
    "net 10.0.0.0 mask 255.255",
    "net 0.0.0.0/0",
    "arp net 10/8",
    "net 10.0.0.1/8",
    "ip6 host ::1",
    "host fe80::1",
    "ip6 src host 2001:db8::2",
    "ip6 net fe80::/10",
    "ip6 dst net ff00::/8",
    "net ::/0",
    "ip6 net 2001:db8::/32 or fe80::/16",
    "ether host 00:11:22:33:44:55",
    "ether src 02:00:00:00:00:01",
    "ether dst ff:ff:ff:ff:ff:ff",
    "ether src and dst 00:11:22:33:44:55",
    "ether host 0011.2233.4455",
    "port 53",
    "tcp port 80",
    "udp port 53 or 5353",
    "sctp port 7",
    "src port 1024",
    "dst port 443",
    "tcp src or dst port 25",
    "tcp src and dst port 7",
    "port 80 or 443 and not 53",
    "tcp dst port 80 or 443",
    "portrange 1-1023",
    "tcp portrange 20-80",
    "udp src portrange 5353-53",
    "portrange 53",
    "dst portrange 6000-7000",
    "ip proto 6",
    "ip proto \\tcp",
    "ip proto udp",
    "ip6 proto 17",
    "proto 6",
    "proto \\icmp",
    "ip proto 47",
    "ip6 proto 58",
    "ether proto 0x800",
    "ether proto \\ip",
    "ether proto \\arp",
    "ether proto 6",
    "ether proto 0x42",
    "link proto 0",
    "link proto 255",
    "link proto 1500",
    "link proto 1501",
    "ether proto 0x8137",
    "ether proto 0xe0",
    "ether proto 0x809b",
    "ether proto 0x80f3",
    "ether proto 65535",
    "ip protochain 6",
    "ip protochain 17",
    "ip6 protochain 17",
    "ip6 protochain 6",
    "protochain 58",
    "ip6 protochain 59",
    "protochain 51",
    "vlan",
    "vlan 10",
    "vlan 100",
    "vlan 4095",
    "vlan and vlan",
    "vlan 100 and vlan 10",
    "vlan and ip",
    "vlan 10 and udp port 53",
    "vlan or ip",
    "not vlan and ip",
    "vlan and arp",
    "vlan and mpls and tcp",
    "mpls",
    "mpls 100",
    "mpls 200",
    "mpls and mpls",
    "mpls and mpls 200",
    "mpls and ip",
    "mpls and ip6",
    "mpls and tcp port 80",
    "mpls and host 10.0.0.1",
    "mpls 1048575 and mpls 16 and mpls 17 and udp",
    "mpls and ether proto 0x86dd",
    "less 64",
    "greater 100",
    "len > 60",
    "len <= 60",
    "len = 84",
    "len - 14 < 40",
    "ether[0] & 1 != 0",
    "ether[12:2] = 0x800",
    "link[6:4] = 0x02000000",
    "ether[100] = 0",
    "ip[0] & 0xf > 5",
    "ip[6:2] & 0x1fff != 0",
    "ip[9] = 17",
    "ip[12:4] = ip[16:4]",
    "ip[ip[0] & 0xf] = 0",
    "ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) > 0",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn",
    "tcp[13] = 18",
    "tcp[0:2] > 1023 and tcp[2:2] < 1024",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0",
    "tcp[tcp[0]] = 1",
    "udp[4:2] > 8",
    "udp[0:2] = 53 or udp[2:2] = 53",
    "sctp[0:2] = 7",
    "icmp[icmptype] = icmp-echo",
    "icmp[icmpcode] = 3",
    "icmp6[icmp6type] = icmp6-echo",
    "icmp6[0] = 135",
    "igmp[0] = 0x11",
    "pim[0] = 0x20",
    "vrrp[1] = 1",
    "carp[0] = 0x21",
    "igrp[0] = 1",
    "arp[6:2] = 1",
    "rarp[7] = 3",
    "ip6[6] = 58",
    "ip6[40] = 128",
    "ip[0] + tcp[12] > 0",
    "1 + tcp[0] = 1",
    "-tcp[0] = 0",
    "-ip[8] < -60",
    "ip[2:2] * 2 > 100",
    "ip[2:2] / 4 = 21",
    "ip[2:2] % 8 = 4",
    "ip[1] | 3 = 3",
    "ip[1] ^ 0xff = 0xff",
    "ip[8] >> 1 = 32",
    "ip[8] << 1 = 128",
    "1 + 2 ^ 3 * 4 = 15",
    "ip[0] / (1 - 1) = 0",
    "ip[0] % (ip[1] & 0) = 0",
    "ip[0] << ip[1] = 0",
    "len >> 40 = 0",
    "0x01 == tcp-fin && 0x02 == tcp-syn",
    "1 = 1",
    "1 = 2",
    "not 1 = 2",
    "len != 0",
    "tcp or udp and not ip6",
    "not (tcp or udp)",
    "!tcp && !udp || arp",
    "ip and not ip[6:2] & 0x1fff = 0",
    "(udp and port 5353) or (ip6 and udp port 5353)",
    "not arp and not ip and not ip6",
    "geneve",
    "geneve 12345",
    "geneve 7",
    "geneve and ip",
    "geneve and tcp port 80",
    "geneve and geneve",
    "geneve or ip",
    "geneve and ether host 02:00:00:00:00:01",
    "geneve and ip[9] = 6",
    "geneve and tcp[13] = 2",
    "geneve and vlan",
    "ip and geneve and host 192.168.1.1",
    "not geneve and udp",
    "geneve and link[12:2] = 0x800",
    "geneve and ip6",
    "ether[6:4] = 0x00112233 and ether[10:2] = 0x4455",
    // Names, from the system's databases.
    "tcp port http",
    "port domain",
    "udp port domain",
    "port http or port https",
    "tcp dst port https or http",
    "udp port http",
    "sctp port http",
    "portrange http-https",
    "tcp portrange ftp-data-ssh",
    "udp portrange 1-domain",
    "portrange 80--5",
    "host localhost",
    "src host localhost",
    "ip host localhost",
    "ip6 host localhost",
    "arp host localhost",
    "tcp host localhost",
    "host localhost or 10.0.0.1",
    "ip proto gre",
    "ip proto igmp",
    "proto ospf",
    "ip6 proto ipv6-icmp",
    "ip6 protochain ipv6-icmp",
    "protochain tcp",
    "ether proto \\ip6",
    "ether proto \\loopback",
    "ether proto \\stp",
    "ether proto \\pup",
    "tcp proto \\tcp",
    "gateway localhost",
    "gateway 10.0.0.1",
    // Constant indexes wrap in 32 bits (once libpcap's optimizer folds them).
    "ip[-1] = 0",
    "ip[1 - 2] = 0",
    "ip[-2:2] = 0x800",
    "ip[-14] = 2",
    "ip[-14:4] != 0",
    "ether[-1] = 0",
    "ether[0xffffffff] = 0",
    "ip6[-2:2] = 0x86dd",
    "icmp6[-40] = 0x60",
    "arp[-8:2] = 0x806",
    "ip[0 * ip[0]] = 0x45",
    "ip[ip[0] & 0] = 0x45",
    "ip[len * 0 - 1] = 0",
    "ip[0 - len] = 0",
    "ip[-(len * 0) - 1] = 0",
    "ip[0 / len] = 0x45",
    "ip[(0 ^ len) * 0 + 1] = 0",
    "ip[1 << 0] = 0",
    "ip[0xffffffff + 2] = 0",
    "tcp[-1] = 0",
    "icmp[-40:2] = 0x4500",
    "udp[-20] & 0xf0 = 0x40",
    "igmp[1 - 2] != 0",
    "tcp[0xffffffff] = 0",
    "! ip6[1 - 2] = 0xffffffff % icmp[-40:2] + 14",
    // A load libpcap's optimizer deletes (its value is multiplied away) keeps its unoptimized
    // meaning.
    "not 255 % tcp-syn | 0 & 1 % sctp[-40] | 14 + icmp-echo > -(0xffffffff)",
    "(! ip6[12] | 0xff - 4 * len ^ icmp-echo ^ icmp-echo % icmp[-40:2] == 60) or not src net 255.255.255.255",
    "udp[-40] * 0 = 0",
    "0 / icmp[-20] = 0 and ip[0 * ip[-1]] = 0x45",
    "vlan and ip[-1] = 0",
    "mpls and ip[-4:4] != 0",
    "ip[-1] = 0 and ip protochain 6",
    "ip[-1] = 0 or geneve",
];

/// Link layers other than Ethernet, with the tests that mean something there (names of
/// links aside, most of [`EXPRS`] is refused or decided by the link type alone).
const LINK_EXPRS: &[&str] = &[
    "ip",
    "ip6",
    "arp",
    "tcp",
    "udp port 53",
    "icmp",
    "icmp6",
    "host 10.0.0.1",
    "net 192.168.0.0/16",
    "host localhost",
    "ip6 host ::1",
    "ip6 net fe80::/10",
    "tcp port http",
    "ether proto 0x800",
    "ether proto 0x86dd",
    "link proto 0x806",
    "ether proto 6",
    "ether proto 0x42",
    "stp",
    "ipx",
    "netbeui",
    "iso",
    "ether proto 0x809b",
    "ether proto 0x80f3",
    "ether host 00:11:22:33:44:55",
    "ether host localhost",
    "broadcast",
    "multicast",
    "ip multicast",
    "ip6 multicast",
    "vlan",
    "mpls",
    "less 64",
    "len > 60",
    "ether[0] = 0x45",
    "ether[14:2] = 0x800",
    "ip[9] = 17",
    "ip[-1] = 0",
    "ip[-16:2] = 0x800",
    "tcp[13] & 2 != 0",
    "ip protochain 6",
    "ip6 protochain 58",
    "geneve",
    "geneve and ip",
    "portrange 1-1023",
    "ip and not udp",
];

#[test]
fn every_primitive_agrees_with_libpcap_on_self_made_frames() {
    let frames = sample_frames(300, 1);
    let mut bad = Vec::new();
    for optimize in [true, false] {
        bad.extend(common::compare_all(
            EXPRS.iter().copied(),
            &frames,
            optimize,
        ));
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Every [`LINK_EXPRS`] expression on every other link layer, on the self-made frames
/// rewritten into it (`relink`): Linux cooked v1 and v2 headers, raw IP.
#[test]
fn every_link_layer_agrees_with_libpcap_on_self_made_frames() {
    let frames = sample_frames(100, 2);
    let mut bad = Vec::new();
    for link in LinkType::ALL {
        if link == LinkType::Ethernet {
            continue;
        }
        let relinked: Vec<_> = frames
            .iter()
            .map(|f| relink(f, link.dlt() as i32))
            .collect();
        for optimize in [true, false] {
            bad.extend(
                common::compare_all_on(LINK_EXPRS.iter().copied(), &relinked, optimize, link)
                    .into_iter()
                    .map(|m| format!("{}: {m}", link.name())),
            );
        }
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// An IPv6 datagram whose UDP header follows `n` destination-options headers (8 bytes each),
/// as libpcap's own `ipv6_ext_headers.pcap` has a chain of 100.
fn long_chain(n: usize) -> netmux_testkit::corpus::Frame {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    let payload = n * 8 + 8 + 2;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload as u16).to_be_bytes());
    f.extend_from_slice(&[if n == 0 { 17 } else { 60 }, 64]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    for i in 0..n {
        f.extend_from_slice(&[if i + 1 == n { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend_from_slice(&[0x30, 0x39, 0xd4, 0x31, 0, 10, 0, 0, b'h', b'i']);
    netmux_testkit::corpus::Frame::whole(f)
}

/// Several `protochain`s in one filter each follow a chain as long as libpcap's own test
/// capture's: their unrolled walks share a budget that leaves each the full length.
#[test]
fn several_protochains_each_follow_a_chain_of_a_hundred_headers() {
    let frames: Vec<_> = [0, 1, 50, 100, 108].into_iter().map(long_chain).collect();
    let exprs = [
        "ip6 protochain 17",
        "protochain 17 and protochain 17",
        "! protochain 6 and 17",
        "protochain 6 or protochain 17",
        "ip6 protochain 6 or ip6 protochain 58 or ip6 protochain 17 or ip6 protochain 17",
        "protochain 6 or protochain 58 or protochain 51 or protochain 17",
    ];
    let mut bad = Vec::new();
    for optimize in [true, false] {
        bad.extend(common::compare_all(
            exprs.iter().copied(),
            &frames,
            optimize,
        ));
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The oracle's own classic BPF interpreter (which folds wrapped register-relative offsets, the
/// tolerance of the `-O1` comparisons) is `bpf_filter` wherever no offset wraps: every program
/// of the expression list, optimized and not, on every self-made frame.
#[test]
fn the_oracles_folding_interpreter_is_bpf_filter_where_nothing_wraps() {
    let frames = sample_frames(100, 3);
    let mut compared = 0;
    for expr in EXPRS {
        for optimize in [true, false] {
            let Ok(p) = netmux_testkit::BpfProgram::compile(expr, optimize) else {
                continue;
            };
            for f in frames
                .iter()
                .filter(|f| !p.wraps_an_index(&f.data, f.wire_len))
            {
                compared += 1;
                assert_eq!(
                    p.matches_folding_wrapped_indexes(&f.data, f.wire_len),
                    p.matches(&f.data, f.wire_len),
                    "{expr} (optimized: {optimize}) on {:02x?}",
                    f.data
                );
            }
        }
    }
    assert!(compared > 10_000, "{compared}");
}
