//! Compile speed: netmux's pcap-filter compiler (parse, generate, optimize, allocate, verify)
//! against libpcap's `pcap_compile` (optimizer on), side by side in one run.
//!
//! `cargo bench --bench compile`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use netmux_compiler::{compile, Options};
use netmux_testkit::BpfProgram;

/// Three expressions, from a one-port filter to one with alternatives and a negated network.
const EXPRS: &[(&str, &str)] = &[
    ("udp-dst-53", "udp dst port 53"),
    (
        "ip-udp-host-port",
        "ip and udp and dst host 10.0.0.2 and dst port 53",
    ),
    (
        "tcp-udp-ports-not-net",
        "(tcp or udp) and (port 53 or port 80 or port 443) and not src net 192.168.0.0/16",
    ),
];

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter_compile");
    let opts = Options::default();
    for (name, expr) in EXPRS {
        group.bench_with_input(BenchmarkId::new("netmux", name), expr, |b, e| {
            b.iter(|| compile(std::hint::black_box(e), &opts).expect("compiles"))
        });
        group.bench_with_input(BenchmarkId::new("libpcap", name), expr, |b, e| {
            b.iter(|| BpfProgram::compile(std::hint::black_box(e), true).expect("compiles"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
