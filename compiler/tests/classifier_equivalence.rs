//! The merged classifier (`netmux_classify::Classifier`, the one the driver runs) gives
//! exactly the queues that running every filter one by one gives, on filters written in the
//! pcap-filter language and recognised as bindings by the compiler.
//!
//! Each case builds a random set of 1 to 1,000 rules — port bindings in every spelling the
//! recogniser knows, plus random expressions that are not bindings (some of them nearly are)
//! — installs each under shared ownership (one filter per key, as `netmux filter classify`
//! does), and compares, frame by frame, the merged classifier with the reference: every rule
//! compiled by `netmux_compiler::compile` and run by the interpreter. The frames are random,
//! crafted around the rules' own addresses and ports (IPv4 with options, fragments, malformed
//! header lengths, truncated captures, IPv6 with extension and fragment headers, VLAN, ARP),
//! and, in the `#[ignore]`d corpus test, every frame of the conformance corpus.
//!
//! A second property installs the same rules under the driver's ownership rule (the second
//! owner of a key is refused) and checks set semantics against the reference on the rules
//! that went in: an exact-address binding and an address-less binding of one port both
//! receive a frame that matches both.
//!
//! Seeds: a new one each run, printed on failure; `NETMUX_SEED=N` replays one.

use netmux_classify::{Classifier, Classify, Ownership, RxFilter};
use netmux_compiler::binding::{compile_rule, CompiledRule};
use netmux_compiler::{compile, Options};
use netmux_proto::driver::{FilterId, QueueId, RxMode};
use netmux_testkit::frames::{truncated, FrameBuilder, Ipv4};
use netmux_testkit::Frame;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const V4: [[u8; 4]; 4] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [192, 168, 1, 7],
    [0, 0, 0, 80],
];
const V6: [[u8; 16]; 3] = [
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];
const PORTS: [u16; 7] = [53, 80, 443, 8080, 0, 65535, 2049];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn v4_text(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

fn v6_text(a: [u8; 16]) -> String {
    std::net::Ipv6Addr::from(a).to_string()
}

fn port(rng: &mut StdRng) -> u16 {
    if rng.gen_bool(0.9) {
        *PORTS.choose(rng).unwrap()
    } else {
        rng.gen()
    }
}

/// A port binding, spelled one of the many ways the recogniser must see through.
fn binding_text(rng: &mut StdRng) -> String {
    let family = rng.gen_range(0..3); // 0 any, 1 ip, 2 ip6
    let proto = rng.gen_range(0..4); // 0 any, tcp, udp, sctp
    let proto_name = ["", "tcp", "udp", "sctp"][proto];
    let proto_num = [0, 6, 17, 132][proto];
    let with_addr = rng.gen_bool(0.6);
    let p = port(rng);
    let mut atoms: Vec<String> = Vec::new();

    // The port atom, with or without the protocol as its qualifier.
    let proto_on_port = proto != 0 && rng.gen_bool(0.5);
    let q = if proto_on_port {
        format!("{proto_name} ")
    } else {
        String::new()
    };
    atoms.push(match rng.gen_range(0..4) {
        0 => format!("{q}dst port {p}"),
        1 => format!("{q}dst port {p:#x}"),
        2 => format!("{q}dst portrange {p}-{p}"),
        _ => format!("{q}dst port {p} and {p}"), // the second inherits `[proto] dst port`
    });
    if proto != 0 && (!proto_on_port || rng.gen_bool(0.2)) {
        atoms.push(match (rng.gen_range(0..3), family) {
            (0, 1) => format!("ip proto {proto_num}"),
            (0, 2) => format!("ip6 proto {proto_num}"),
            (1, _) => format!("proto {proto_num}"),
            _ => proto_name.to_owned(),
        });
    }
    let fam_kw = ["", "ip", "ip6"][family];
    let mut family_said = false;
    if with_addr {
        let v6 = match family {
            1 => false,
            2 => true,
            _ => rng.gen_bool(0.4),
        };
        let qual = if family != 0 && rng.gen_bool(0.5) {
            family_said = true;
            format!("{fam_kw} ")
        } else {
            String::new()
        };
        atoms.push(if v6 {
            let a = v6_text(*V6.choose(rng).unwrap());
            match rng.gen_range(0..3) {
                0 => format!("{qual}dst host {a}"),
                1 => format!("{qual}dst {a}"),
                _ => format!("{qual}dst net {a}/128"),
            }
        } else {
            let raw = *V4.choose(rng).unwrap();
            let a = v4_text(raw);
            match rng.gen_range(0..5) {
                0 => format!("{qual}dst host {a}"),
                1 => format!("{qual}dst {a}"),
                2 => format!("{qual}dst net {a}/32"),
                3 => format!("{qual}dst net {a} mask 255.255.255.255"),
                _ => format!("{qual}dst host {}", u32::from_be_bytes(raw)),
            }
        });
    }
    if family != 0 && !family_said && (rng.gen_bool(0.7) || !with_addr) {
        atoms.push(fam_kw.to_owned());
    }
    atoms.shuffle(rng);
    // Group some of the conjunction in parentheses.
    if atoms.len() >= 2 && rng.gen_bool(0.3) {
        let head = atoms.remove(0);
        let second = atoms.remove(0);
        atoms.insert(0, format!("({head} and {second})"));
    }
    atoms.join(" and ")
}

/// A primitive that is not (alone) a binding, or one that nearly is.
fn other_atom(rng: &mut StdRng) -> String {
    let p = port(rng);
    let a4 = v4_text(*V4.choose(rng).unwrap());
    let a6 = v6_text(*V6.choose(rng).unwrap());
    match rng.gen_range(0..22) {
        0 => format!("tcp port {p}"),
        1 => format!("udp src port {p}"),
        2 => format!("host {a4}"),
        3 => format!("dst host {a4}"),
        4 => format!("src host {a6}"),
        5 => "net 10.0.0.0/8".to_owned(),
        6 => "icmp".to_owned(),
        7 => "arp".to_owned(),
        8 => "vlan".to_owned(),
        9 => "ip[8] > 32".to_owned(),
        10 => "len > 90".to_owned(),
        11 => "tcp[13] & 2 != 0".to_owned(),
        12 => "ether broadcast".to_owned(),
        13 => format!("dst portrange {}-{}", p.saturating_sub(5), p),
        14 => "ip6".to_owned(),
        15 => "tcp".to_owned(),
        16 => format!("dst host 10.0 and tcp dst port {p}"),
        17 => format!("ip6 protochain 6 and dst port {p}"),
        18 => "ip[0] & 0xf < 5".to_owned(),
        19 => format!("udp dst port {p} and src net 192.168.0.0/16"),
        20 => format!("ether dst {}", "02:00:00:00:00:02"),
        _ => binding_text(rng),
    }
}

/// A random expression that is usually not a binding.
fn other_text(rng: &mut StdRng, depth: u32) -> String {
    if depth == 0 || rng.gen_bool(0.4) {
        return other_atom(rng);
    }
    match rng.gen_range(0..4) {
        0 => format!("not {}", other_text(rng, depth - 1)),
        1 => format!(
            "({} or {})",
            other_text(rng, depth - 1),
            other_text(rng, depth - 1)
        ),
        2 => format!(
            "{} and {}",
            other_text(rng, depth - 1),
            other_text(rng, depth - 1)
        ),
        _ => format!("{} or {}", binding_text(rng), other_text(rng, depth - 1)),
    }
}

fn rule_text(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.75) {
        binding_text(rng)
    } else {
        other_text(rng, 2)
    }
}

/// A frame aimed at the pools the rules draw from, often broken in one way or another.
fn crafted_frame(rng: &mut StdRng) -> Frame {
    let eth = FrameBuilder::ethernet(MAC_B, MAC_A);
    let dport = port(rng);
    let sport = port(rng);
    let proto = *[6u8, 17, 132, 1, 6, 17, 47].choose(rng).unwrap();
    let transport = |b: FrameBuilder, proto: u8| match proto {
        6 => b.tcp(sport, dport, 0x02),
        17 => b.udp(sport, dport),
        132 => b.sctp(sport, dport),
        1 => b.icmp(8, 0),
        _ => b.raw(&[0, 0, 0x08, 0]),
    };
    let dst4 = if rng.gen_bool(0.8) {
        *V4.choose(rng).unwrap()
    } else {
        rng.gen()
    };
    let dst6 = if rng.gen_bool(0.8) {
        *V6.choose(rng).unwrap()
    } else {
        rng.gen()
    };
    let mut f = match rng.gen_range(0..10) {
        0..=4 => {
            let mut h = Ipv4::new(*V4.choose(rng).unwrap(), dst4, proto);
            if rng.gen_bool(0.2) {
                h.ihl = rng.gen_range(6..=15); // options
            }
            if rng.gen_bool(0.15) {
                h.frag = *[
                    0x2000u16, 0x0001, 0x4000, 0x1fff, 0x2010, 0x1000, 0x8000, 0xe000,
                ]
                .choose(rng)
                .unwrap();
            }
            let b = eth.ethertype(0x0800).ipv4(h);
            transport(b, proto).payload(rng.gen_range(0..20)).finish()
        }
        5 => {
            // A malformed header length: the transport "header" overlaps the IP header, with
            // the destination port planted where libpcap will read it.
            let ihl = rng.gen_range(0..5u8);
            let b = eth
                .ethertype(0x0800)
                .ipv4(Ipv4::new(*V4.choose(rng).unwrap(), dst4, proto));
            let mut f = transport(b, proto).finish();
            f.data[14] = 0x40 | ihl;
            let at = 14 + 4 * usize::from(ihl) + 2;
            if rng.gen_bool(0.5) && at + 2 <= f.data.len() && at != 22 {
                f.data[at..at + 2].copy_from_slice(&dport.to_be_bytes());
            }
            f
        }
        6 | 7 => {
            let src = *V6.choose(rng).unwrap();
            let b = eth.ethertype(0x86dd);
            match rng.gen_range(0..4) {
                0 => transport(b.ipv6(src, dst6, 44).ipv6_fragment(proto, 0), proto).finish(),
                1 => transport(b.ipv6(src, dst6, 0).ipv6_ext(proto, 0), proto).finish(),
                _ => transport(b.ipv6(src, dst6, proto), proto)
                    .payload(rng.gen_range(0..8))
                    .finish(),
            }
        }
        8 => {
            let b = eth.vlan(0x8100, 7).ethertype(0x0800).ipv4(Ipv4::new(
                *V4.choose(rng).unwrap(),
                dst4,
                proto,
            ));
            transport(b, proto).finish()
        }
        _ => eth
            .ethertype(if rng.gen_bool(0.8) { 0x0806 } else { 0x8035 })
            .arp(1, MAC_A, *V4.choose(rng).unwrap(), [0; 6], dst4)
            .finish(),
    };
    if rng.gen_bool(0.25) {
        let keep = rng.gen_range(0..=f.data.len());
        f = truncated(&f, keep);
    }
    f
}

fn random_frame(rng: &mut StdRng) -> Frame {
    let len = rng.gen_range(0..100);
    let mut data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if len >= 14 && rng.gen_bool(0.5) {
        let t: u16 = *[0x0800u16, 0x86dd].choose(rng).unwrap();
        data[12..14].copy_from_slice(&t.to_be_bytes());
    }
    Frame::whole(data)
}

/// The rules of one case (rules that do not compile are dropped).
struct Case {
    rules: Vec<(QueueId, String, CompiledRule)>,
}

fn build_case(rng: &mut StdRng, n: usize) -> Case {
    let mut rules = Vec::new();
    for q in 1..=n as u32 {
        let text = rule_text(rng);
        if let Ok(rule) = compile_rule(&text) {
            rules.push((QueueId(q), text, rule));
        }
    }
    Case { rules }
}

fn reference(case: &Case, frame: &Frame) -> Vec<QueueId> {
    let mut out = Vec::new();
    let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
    for (q, _, rule) in &case.rules {
        if netmux_vm::interp::run(&rule.program, &frame.data, frame.wire_len, &mut scratch)
            .is_accept()
        {
            out.push(*q);
        }
    }
    out
}

/// Installs every key of `rule` for `queue`; returns how many keys the rules refused.
fn install(c: &mut Classifier, next: &mut u64, queue: QueueId, rule: &CompiledRule) -> usize {
    let mut refused = 0;
    for binding in rule.keys() {
        *next += 1;
        let filter = RxFilter {
            queue,
            filter: FilterId(*next),
            mode: RxMode::Owner,
            binding,
            program: rule.program.clone(),
        };
        if c.install(filter).is_err() {
            refused += 1;
        }
    }
    refused
}

fn merged(case: &Case) -> Classifier {
    let mut c = Classifier::with_ownership(netmux_vm::Strategy::Interpreter, Ownership::Shared);
    let mut next = 0;
    for (q, text, rule) in &case.rules {
        assert_eq!(
            install(&mut c, &mut next, *q, rule),
            0,
            "rule {} `{text}` was refused under shared ownership",
            q.0
        );
    }
    c
}

fn check_frames(seed: u64, case: &Case, c: &mut Classifier, frames: &[Frame]) {
    let mut got = Vec::new();
    for frame in frames {
        got.clear();
        c.classify(&frame.data, frame.wire_len, &mut got);
        let want = reference(case, frame);
        if got != want {
            let rules: Vec<String> = case
                .rules
                .iter()
                .filter(|(q, _, _)| got.contains(q) != want.contains(q))
                .map(|(q, t, rule)| format!("  {}: {t}   [{}]", q.0, rule.placement()))
                .collect();
            panic!(
                "seed {seed}: frame {:02x?} (wire {}): merged {got:?}, linear {want:?}\n{}",
                frame.data,
                frame.wire_len,
                rules.join("\n")
            );
        }
    }
}

#[test]
fn merged_classifier_equals_the_linear_scan_on_random_rule_sets_and_frames() {
    let seed = netmux_testkit::seed(
        "merged_classifier_equals_the_linear_scan_on_random_rule_sets_and_frames",
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // Sizes from 1 to 1,000, most of them small so the debug build stays fast.
    let mut sizes = vec![1, 2, 5, 1000];
    for _ in 0..12 {
        sizes.push(rng.gen_range(1..=200));
    }
    let mut tabled = 0;
    for n in sizes {
        let case = build_case(&mut rng, n);
        let mut c = merged(&case);
        tabled += c.table_filters();
        let frames: Vec<Frame> = (0..if n >= 500 { 150 } else { 300 })
            .map(|i| {
                if i % 5 == 0 {
                    random_frame(&mut rng)
                } else {
                    crafted_frame(&mut rng)
                }
            })
            .collect();
        check_frames(seed, &case, &mut c, &frames);
    }
    assert!(
        tabled > 500,
        "seed {seed}: too few rules were bindings ({tabled})"
    );
}

#[test]
fn under_the_drivers_ownership_rule_every_accepting_rule_that_went_in_receives() {
    let seed = netmux_testkit::seed(
        "under_the_drivers_ownership_rule_every_accepting_rule_that_went_in_receives",
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut both = 0;
    for _ in 0..6 {
        let n = rng.gen_range(1..=300);
        let case = build_case(&mut rng, n);
        let mut c = Classifier::new(netmux_vm::Strategy::Interpreter);
        // The second owner of a key is refused; keep only the rules that went in whole.
        let mut next = 0;
        let mut kept = Vec::new();
        for (q, text, rule) in case.rules {
            if install(&mut c, &mut next, q, &rule) == 0 {
                kept.push((q, text, rule));
            } else {
                c.remove_queue(q);
            }
        }
        let case = Case { rules: kept };
        let frames: Vec<Frame> = (0..300)
            .map(|i| {
                if i % 5 == 0 {
                    random_frame(&mut rng)
                } else {
                    crafted_frame(&mut rng)
                }
            })
            .collect();
        for frame in &frames {
            let want = reference(&case, frame);
            let tabled = |exact: bool| {
                want.iter().any(|q| {
                    case.rules.iter().any(|(r, _, rule)| {
                        r == q
                            && rule
                                .pattern
                                .as_ref()
                                .is_ok_and(|p| p.addr().is_some() == exact)
                    })
                })
            };
            both += usize::from(tabled(true) && tabled(false));
        }
        check_frames(seed, &case, &mut c, &frames);
    }
    assert!(
        both > 0,
        "seed {seed}: no frame matched an exact and an address-less binding"
    );
}

#[test]
fn rules_that_do_not_compile_are_refused_with_the_compilers_error() {
    for bad in [
        "tcp dst port 65536",
        "dst host foo and tcp dst port 1",
        "ip6 dst host 1.2.3.4 and tcp dst port 1",
    ] {
        let want = compile(bad, &Options::default()).unwrap_err();
        let got = compile_rule(bad).unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
    }
}

#[test]
#[ignore = "needs the conformance corpus ($NETMUX_CONFORMANCE_DIR or ../shared/conformance)"]
fn merged_classifier_equals_the_linear_scan_on_every_corpus_frame() {
    let dir = netmux_testkit::corpus::conformance_dir().expect("conformance corpus");
    let corpus = netmux_testkit::corpus::corpus_frames(&dir).unwrap();
    assert!(!corpus.frames.is_empty());
    let frames: Vec<Frame> = corpus.frames.into_iter().map(|(_, f)| f).collect();
    eprintln!("{} corpus frames", frames.len());
    let seed =
        netmux_testkit::seed("merged_classifier_equals_the_linear_scan_on_every_corpus_frame");
    let mut rng = StdRng::seed_from_u64(seed);
    for n in [1, 10, 100, 1000] {
        let case = build_case(&mut rng, n);
        let mut c = merged(&case);
        check_frames(seed, &case, &mut c, &frames);
    }
    // Rules taken from the corpus's own expressions, each a queue.
    let exprs = netmux_testkit::corpus::exprs(&dir).unwrap();
    let mut rules = Vec::new();
    for (i, text) in exprs.iter().enumerate() {
        if let Ok(rule) = compile_rule(text) {
            rules.push((QueueId(i as u32 + 1), text.clone(), rule));
        }
    }
    let case = Case { rules };
    let mut c = merged(&case);
    check_frames(seed, &case, &mut c, &frames);
}

#[test]
fn an_empty_rule_matches_every_frame_as_the_compiler_says() {
    let mut c = Classifier::with_ownership(netmux_vm::Strategy::Interpreter, Ownership::Shared);
    let mut next = 0;
    install(
        &mut c,
        &mut next,
        QueueId(1),
        &compile_rule("udp dst port 53").unwrap(),
    );
    install(&mut c, &mut next, QueueId(2), &compile_rule(" ").unwrap());
    let frames = [
        Frame::whole(vec![0u8; 60]),
        FrameBuilder::ethernet(MAC_B, MAC_A)
            .ethertype(0x0800)
            .ipv4(Ipv4::new([10, 0, 0, 1], [10, 0, 0, 2], 17))
            .udp(1000, 53)
            .finish(),
    ];
    for (i, f) in frames.iter().enumerate() {
        let mut got = Vec::new();
        c.classify(&f.data, f.wire_len, &mut got);
        let want = if i == 0 { vec![2] } else { vec![1, 2] };
        assert_eq!(
            got,
            want.into_iter().map(QueueId).collect::<Vec<_>>(),
            "frame {i}"
        );
    }
}
