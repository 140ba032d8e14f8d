//! What the optimizer removes, checked on the programs it makes: the redundant loads and
//! computations libpcap's value numbering removes are gone from ours too.

use netmux_compiler::{compile, Options};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_vm::{interp, Insn, Opcode, Verdict};

fn insns(expr: &str) -> Vec<Insn> {
    compile(expr, &Options::default())
        .expect("compiles")
        .insns()
        .to_vec()
}

fn count(insns: &[Insn], op: Opcode, k: u32) -> usize {
    insns.iter().filter(|i| i.op == op && i.k == k).count()
}

#[test]
fn the_ethertype_is_loaded_once_when_ipv6_and_ipv4_are_both_tested() {
    let p = insns("udp dst port 53");
    assert_eq!(count(&p, Opcode::LdAbsH, 12), 1, "{p:?}");
}

#[test]
fn the_ipv4_header_length_is_computed_once_for_both_port_fields() {
    // `port 53` tests the source and the destination port after `4 * (ip[0] & 0xf)`.
    let p = insns("ip and udp and port 53");
    assert_eq!(count(&p, Opcode::LdAbsB, 14), 1, "{p:?}");
}

#[test]
fn unoptimized_programs_keep_every_load() {
    let p = compile(
        "udp dst port 53",
        &Options {
            optimize: false,
            ..Options::default()
        },
    )
    .expect("compiles");
    assert!(count(p.insns(), Opcode::LdAbsH, 12) >= 2);
}

/// Whether libpcap's optimizer refuses a filter as "expression rejects all packets" is
/// predicted (`netmux_compiler::libpcap`); these are cases the random differential test found,
/// checked against libpcap itself.
#[test]
fn rejects_all_packets_is_predicted_as_libpcap_decides_it() {
    let cases = [
        // A test decided only where it became the first one: libpcap refuses.
        "arp[0:1] >= tcp[13] * len || 4 | tcp-syn < 4",
        "net 2001:db8::/32 and (192.168.1.1 or 10.0) || (-60 < 1 & (8))",
        // A test without arithmetic is decided where paths join, and libpcap threads each
        // path past it: the `vlan` tests after it are decided, libpcap refuses.
        "(ip or ip6) && 14 >= tcpflags && vlan 1",
        "proto 47 && 14 >= tcpflags && vlan 1",
        // `net ::/0` tests `x & 0 == 0`: libpcap makes that `jset #0`, whose branches meet,
        // and threads past it, loads and all (ours keeps the loads, which can reject). Past
        // it, the protocol tests are decided: libpcap refuses; without `proto 47` it compiles.
        "ip6 proto 47 && ip6 net ::/0 && sctp port 0",
        "ip proto 47 and net 0.0.0.0/0 and tcp",
        "ip6 net ::/0 && sctp port 0",
        // The same test on every path to a join, from different blocks (`port 443` for TCP,
        // UDP and SCTP): libpcap learns nothing from it past the join, so the later `port
        // 1501` is not decided, and it compiles. When one block's test dominates (`rarp`),
        // what it taught holds past the join: libpcap refuses.
        "src and dst port 443 && (ip net 1.2.3.4) && 1501",
        "rarp net 1.2.3.4/32 and (greater 60) and link proto 0x806",
        // The same kind of test after a real one: libpcap leaves it and compiles.
        "ip and 1 > -2",
        "ip and 14 == 60 * 4 - 14",
        // As the first relation, but after its own protocol checks (the loads of `tcp[..]`,
        // `carp[..]` need them): not the root either, libpcap compiles.
        "tcp[16:2] >> 2 & 255 >> 31 < (0 * len)",
        "-tcp-syn == -carp[2:2] & 0",
        "igmp[9] & 0xff - -0xff * 0xffffffff == 2",
        // Without protocol checks it is the root: libpcap decides it and refuses.
        "4 << 2 > icmp-echo or ah && not -0x45 != ((tcpflags))",
        // But only in its second loop: in the first, the root's other branch still leads to
        // `not (ip dst or src host ...)`, so the `ip dst net` path is not reduced to a reject.
        // It compiles.
        "((0xffffffff) & 0xff >> 1) = -0 + 0x45 || ip dst net 255.255.255.255 and not (ip dst or src host 255.255.255.255)",
        // And only the root's own branches count: a relation after it decided false leaves the
        // root's two branches at two blocks. It compiles.
        "(len + vrrp[16] << 1) <= (len) && (not -14 > 1500 + 0xff)",
        // `ether[12:2]` is `ldh [x + 0]` with x = 12 to libpcap's first loop, not the
        // ethertype load: it decides nothing from `ip` there and compiles. `ether proto 2`
        // loads the ethertype itself: refused.
        "ip proto 17 and ether[12:2] = 2",
        "ip proto 17 and ether proto 2",
        // libpcap makes `and #1; jeq #0` (`mpls 16` after `mpls`: the bottom-of-stack bit
        // clear) a `jset #1`, which the earlier `and #1; jeq #1` (the bit set) does not
        // decide: it compiles. The same `jset` twice is decided: refused.
        "mpls && dst or src port 0 and mpls 16",
        "((not mpls 16) and icmp) && mpls",
        "mpls 16 and mpls 16 and not mpls 16",
        // `len & 0` is 0 a pass after `0 % x` was folded to 0: the root is decided, refused
        // as rejecting all packets, not for the modulus.
        "0 % (len & 0) > 0",
        // An edge libpcap moves past a decided test knows only what dominates it: past the
        // join it leads to, `ip proto 6` was taught by a different block on each path, and
        // `ip proto 132` is not decided. It compiles.
        "(ip proto 6 or ether[0] = 1) and tcp[0:2] = 60 && ip proto 132",
        // But an edge dominates what follows it on every path of the graph the pass started
        // with, a path through a test it decides included (`ip6` after `udp[16]`'s `ip`):
        // `ah`'s tests are decided, refused.
        "(host 10 or greater 14 and ((udp[16])) != 4) and ah",
        // libpcap's `and_pullup` moves `dst port 5353` above `src port 5353`, up to the edges
        // from `dst port 443` and `dst port 1500`, which decide it false: refused. (The grammar
        // reads `(udp dst port 443 || udp dst port 1500) && (src and dst port 5353)`.) Ours
        // does not decide it where paths with two different ports join.
        "udp dst port 443 || 1500 && src and dst port 5353",
        "(udp dst or src port 1024 || udp dst port 80 && src and dst port 443)",
        "(tcp dst port 443 || tcp dst port 1500) && src and dst port 5353",
        // Without a second port before the join, the pulled-up test is not decided: it compiles.
        "udp dst port 443 && src and dst port 443",
        "(udp dst port 443 || udp dst port 1500) && src port 5353",
        // The pullup can also keep libpcap from refusing. `icmp6[6] != tcp[100:4] ...` is false
        // for every frame (IPv6 and TCP over IPv4 at once), and libpcap moves the edges of its
        // first test, the ethertype, past it in one pass (bottom-up: the `ip6 proto 58` test's
        // own edges first). Both edges then lead to `icmp-echo >= -(1)`, and `and_pullup`
        // moves `ether proto \arp` up above it. The ethertype test now has two different
        // branches and stays the root, so the relation (false) is never the root: it compiles.
        "icmp6[6] != tcp[100:4] / 1500 + (tcpflags) or icmp-echo >= -(1) && (ether proto \\arp)",
    ];
    for expr in cases {
        assert_refused_as_libpcap(expr, |e| e.contains("rejects all packets"));
    }
}

/// Asserts that netmux and libpcap (both optimizing) agree on whether `expr` is refused with
/// an error `counts` accepts (given its text).
fn assert_refused_as_libpcap(expr: &str, counts: impl Fn(&str) -> bool) {
    let ours = compile(expr, &Options::default())
        .err()
        .map(|e| e.to_string());
    let theirs = netmux_testkit::BpfProgram::compile(expr, true)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        ours.as_deref().is_some_and(&counts),
        theirs.as_deref().is_some_and(&counts),
        "{expr}: netmux {ours:?}, libpcap {theirs:?}"
    );
}

/// libpcap reports a division or modulus by a constant zero only where its folding leaves one:
/// it folds `0 op x` (x unknown) to 0 first, so `0 % x` can make a later modulus by zero (or
/// hide one), and a known x is folded, or reported, before that. Cases the random
/// differential test found, checked against libpcap itself.
#[test]
fn division_by_zero_is_reported_where_libpcap_reports_it() {
    let cases = [
        // libpcap refuses: `0 % ip[13:2]` folds to 0, a later `% (...)` then divides by it.
        "255 % 14 & carp[20] & 0 % (ip[13:2]) ^ 1 == igmp[9:1] ^ icmp-echo * 4 | 14 || carp[12] < igrp[12]",
        "len + ether[100] ^ icmp[40] % icmp-echo / 1500 / len < 255",
        "((rarp net 0.0.0.0/0)) or -sctp[12] % 0x45 * 0 & len >= 60 || link proto 0x86dd",
        // `%` groups to the right in libpcap's grammar: `0 % (60 % 4)` is `0 % 0`, refused;
        // the zero is known, so folding `0 % x` must not hide it.
        "0xffffffff >= 0 % 60 % (4)",
        "-len | 0xffffffff | icmp[13:2] % len > 0 % 1 >> 4 && link proto 0x8100",
        // libpcap skips the block that divides (both its branches end at the same place once
        // the `arp` tests after an IPv4 one are decided) before it folds anything: it compiles.
        "! (not 1 < ip[2:4] / carp[20] % 14 << 31 && arp net 10.0.0.0/8)",
        "(0xffffffff) > igmp[100:1] % 0x45 / 1500 || (! udp dst or src port 53)",
        "-rarp[13:2] << 4 + -0xff >> 4 == 0x45 and ip or not ip proto gre",
        // Unless that block is the root: libpcap moves no edge into the root, so it folds
        // the root's statements in its second loop (and drops the root only at the end): it
        // refuses. After `ip`, the same test is skipped: it compiles.
        "0xffffffff + 1500 % 4 % 2 == (14) && (0xffffffff < 1500) or stp",
        "len + 1500 % 4 % 2 == 14 && 1 < 0 or arp",
        "ip and (0xffffffff + 1500 % 4 % 2 == 14 && 0xffffffff < 1500 or stp)",
        // Compiles on both sides.
        "ip[0] % 3 = 1",
        "0 % len = 0",
    ];
    for expr in cases {
        assert_refused_as_libpcap(expr, |_| true);
    }
}

/// libpcap reports a division, modulus or shift by a bad constant only in its second optimizer
/// loop, pass by pass. Its first loop, the one that moves edges, never knows the result of an
/// operator: it decides no relation with one (`14 != 2 >> 8`), so the blocks such a relation
/// would make dead, or whose branches it would make meet, are still there when the second loop
/// folds, and reports, the arithmetic. A relation without operators (`14 != 0`) is decided in
/// the first loop, and what it skips is not reported. Cases the random differential test
/// found, checked against libpcap itself, error text included.
#[test]
fn errors_are_reported_where_libpcaps_second_loop_finds_them() {
    let cases = [
        // Refused: the shift by 31 * 8 is in a block whose branches meet only once `14 !=
        // 2 >> 8` is decided.
        "len >> 31 * icmp-echo != tcp[16] or 14 != tcp-syn >> icmp-echo & 14",
        "ip and len >> 31 * icmp-echo != 0 or 14 != 2 >> 8",
        // Refused: the shift is dead only once `1 > 2 - 1` is decided.
        "ip and 1 > 2 - 1 and len >> 31 * icmp-echo != 0",
        // Refused: `1 % (8 & 0)`, skipped only once `14 + 8 < 8` is decided.
        "(1 % (8 & 0) >= ip6[2:4] || 14 + 8 < 8 && vrrp) && ! ip src 0.0.0.0",
        // Compiles: `14 != 0` is decided in the first loop, which then skips the shift.
        "len >> 31 * icmp-echo != tcp[16] or 14 != 0",
        // "rejects all packets": `1 > 2` is decided in the first loop.
        "ip and 1 > 2 and len >> 31 * icmp-echo != 0",
        // `x & y`, y known to be 0, is `x & #0` for one pass and 0 only in the next: a
        // `0 % that` is folded to 0 in the first, and nothing is reported. A `len % that`
        // is not folded, and becomes `mod #0` then: refused.
        "len + 0 % len & len & 2 ^ 2 >= 60 or ip6 multicast",
        "-0 % vrrp[6] & icmp[2:4] & 0 != tcpflags and not stp",
        "len % (len & (2 ^ 2)) > 0",
        "len >> (len & 0) + 32 > 0",
        // Unless a test decided before that pass cut it off: compiles.
        "ip and 1 > 0 + 1 and len % (len & 0) > 0",
        // The first loop skips the shift: both its branches reject (`udp` after `igmp`, and
        // `net 0.0.0.0/0`, a `jset #0` to libpcap, decided at once). Compiles.
        "((len / rarp[2:1] / 14 | icmp6[100:4]) > igmp[13:4] >> 4 + -1500) or src net 0.0.0.0/0 and (udp port 1024)",
        // It skips the modulus too: `sctp` after `icmp6[..]` is decided from the dominators the
        // pass started with, before it moves `dst net`'s edge past the second `ip6` test.
        "not (dst net ff00::/8 || ether proto 0xf0 && 0x45 % 8 >> 4 + 1 != icmp6[100:4] + udp[13:1] >> 31) && sctp port 443",
    ];
    for expr in cases {
        let ours = compile(expr, &Options::default())
            .err()
            .map(|e| e.to_string().lines().next().unwrap_or_default().to_owned());
        let theirs = netmux_testkit::BpfProgram::compile(expr, true)
            .err()
            .map(|e| e.to_string());
        assert_eq!(ours, theirs, "{expr}");
    }
}

/// The optimizer keeps its buffers per thread between compilations; nothing from one
/// compilation may leak into the next (the entry block's facts once did: a chain of port
/// tests compiled after `ip` then accepted ports it does not name).
#[test]
fn a_compilation_does_not_depend_on_the_ones_before_it_on_the_thread() {
    let chain = (1..=9)
        .map(|p| format!("tcp port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let alone = {
        let chain = chain.clone();
        std::thread::spawn(move || insns(&chain))
            .join()
            .expect("thread")
    };
    let frame = FrameBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ethertype(0x0800)
        .ipv4(Ipv4::new([10, 0, 0, 1], [10, 0, 0, 2], 6))
        .tcp(1000, 1000, 0x10)
        .payload(8)
        .finish();
    for before in [
        "ip",
        "udp dst port 53",
        "tcp port 1 or tcp port 2",
        "ip6 and tcp",
    ] {
        insns(before);
        let after = compile(&chain, &Options::default()).expect("compiles");
        assert_eq!(after.insns(), &alone[..], "after compiling `{before}`");
        let verdict = interp::run(&after, &frame.data, frame.wire_len, &mut [0; 16]);
        assert_eq!(
            verdict,
            Verdict::Reject,
            "port 1000 after compiling `{before}`"
        );
    }
}
