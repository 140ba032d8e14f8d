//! No input makes the compiler panic or emit a program the verifier refuses: token soup,
//! random bytes, and deep nesting, in both dialects.

use netmux_compiler::{compile, Dialect, ErrorKind, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORDS: &[&str] = &[
    "tcp",
    "udp",
    "ip",
    "ip6",
    "arp",
    "host",
    "net",
    "port",
    "portrange",
    "src",
    "dst",
    "and",
    "or",
    "not",
    "!",
    "&&",
    "||",
    "(",
    ")",
    "[",
    "]",
    ":",
    "=",
    "!=",
    "<",
    ">",
    "+",
    "-",
    "*",
    "/",
    "%",
    "&",
    "|",
    "^",
    "<<",
    ">>",
    "10.0.0.1",
    "10",
    "0",
    "65535",
    "65536",
    "::1",
    "fe80::/10",
    "1:2:3:4:5:6",
    "ether",
    "proto",
    "protochain",
    "vlan",
    "mpls",
    "geneve",
    "len",
    "less",
    "greater",
    "broadcast",
    "multicast",
    "mask",
    "255.0.0.0",
    "/",
    "\\tcp",
    "tcpflags",
    "tcp-syn",
    "icmp",
    "icmp6",
    "int8",
    "int16",
    "int32",
    "{",
    "}",
    "~",
    "0x800",
    "ab:cd",
    "1.2.3.4.5",
    "gateway",
    "x",
];

fn check(expr: &str) {
    for dialect in [Dialect::Pcap, Dialect::Bfdmux] {
        for optimize in [true, false] {
            let opts = Options {
                optimize,
                dialect,
                ..Options::default()
            };
            if let Err(e) = compile(expr, &opts) {
                assert!(
                    !matches!(e.kind, ErrorKind::Internal(_)),
                    "{expr:?}: internal error {e}"
                );
                assert!(
                    e.span.start <= expr.len() && e.span.end <= expr.len(),
                    "{expr:?}"
                );
                let _ = e.to_string();
            }
        }
    }
}

#[test]
fn token_soup_never_panics_or_fails_verification() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..3000 {
        let n = rng.gen_range(1..12);
        let expr: Vec<&str> = (0..n)
            .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
            .collect();
        check(&expr.join(" "));
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(8);
    for _ in 0..2000 {
        let n = rng.gen_range(0..40);
        let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        check(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn deep_and_long_inputs_are_errors_not_crashes() {
    check(&"(".repeat(100_000));
    check(&format!("{}1{}", "-(".repeat(10_000), ")".repeat(10_000)));
    check(&"tcp and ".repeat(3000));
    check(&format!("{}1", "! ".repeat(10_000)));
    check(&format!("{}0{}", "int8[".repeat(1000), "]".repeat(1000)));
    check(&format!("{} = 1", vec!["1"; 1000].join(" + ")));
    check(&format!("{} == 1", vec!["int8[0]"; 500].join(" - ")));
    // At the limit of 100 operators: compiles, no crash.
    let sum = format!("{} > 1", vec!["tcp[tcp[0]]"; 100].join(" - "));
    assert!(compile(&sum, &Options::default()).is_ok());
    let bsum = format!("{} == 1", vec!["int8[int8[0]]"; 100].join(" - "));
    let b = Options {
        dialect: Dialect::Bfdmux,
        ..Options::default()
    };
    assert!(compile(&bsum, &b).is_ok());
    // Long but legal: many terms compile or fail cleanly for size.
    check(&vec!["port 80"; 300].join(" or "));
}

#[test]
fn a_thousand_or_terms_compile_as_libpcap_compiles_them() {
    // libpcap compiles 1,000 `udp port N or ...` terms (about 5,800 BPF instructions); so does
    // netmux, within its documented limits of tokens and instructions.
    let terms: Vec<String> = (1..=1000).map(|n| format!("udp port {n}")).collect();
    let p = compile(&terms.join(" or "), &Options::default()).expect("1,000 terms compile");
    assert!(p.insns().len() <= netmux_vm::MAX_INSNS);
    let hosts: Vec<String> = (1..=1000)
        .map(|n| format!("tcp dst port {n} and host 10.0.{}.{}", n / 256, n % 256))
        .collect();
    assert!(compile(&hosts.join(" or "), &Options::default()).is_ok());
    // Past the token limit: refused with the limit named.
    let e = compile(&vec!["udp"; 8193].join(" or "), &Options::default()).unwrap_err();
    assert!(e.message().contains("more than 16384 tokens"), "{e}");
}
