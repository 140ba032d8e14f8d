//! Demultiplexing cost against the number of port bindings: the merged classifier beside a
//! linear scan of per-client filters (libpcap's `bpf_filter`, and netmux's interpreter), on
//! the same frames in the same run.
//!
//! N = 1, 10, 100, 1,000, 10,000 and 100,000 bindings `udp dst port P and dst host A`, each
//! its own queue with its own (address, port). The *hit* frame is a UDP datagram to the
//! binding in the middle of the list; the *miss* frame goes to a port nobody bound. Every
//! measurement returns the full set of receiving queues (so a linear scan runs every filter;
//! stopping at the first match would be Barrelfish's first-match-wins, which lets a newer
//! filter steal traffic). The linear scans stop at N = 1,000 (libpcap: 14.9 µs per frame
//! there on the machine; beyond, a scan is only slower).
//!
//! The large classifiers are built with `Classifier::add_binding` (what the driver will call);
//! the text path (`add_filter`, which compiles the expression to check it and recognises the
//! binding) is measured as an update. Updates: adding then removing one binding in a
//! classifier that holds 100,000 (`classify-update/...`).
//!
//! Benchmark ids follow `scripts/bench-report`'s scheme: `<group>/netmux-<engine>` for the
//! merged classifier, `<group>/peer-<name>` for the linear scans. With the `jit` feature and a
//! working JIT, `netmux-jit` rows are added; otherwise only the interpreter is measured.

// `criterion_group!` generates a function without documentation.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use netmux_compiler::classifier::{
    Classifier, LinearScan, Mode, Policy, PortBinding, QueueId, Transport,
};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::oracle::BpfProgram;
use netmux_vm::Strategy;

const SIZES: [usize; 6] = [1, 10, 100, 1_000, 10_000, 100_000];
/// The largest N the linear scans are measured at.
const LINEAR_MAX: usize = 1_000;

/// Binding `i`'s address and port: all distinct.
fn key(i: usize) -> (Ipv4Addr, u16) {
    let i = i as u32;
    (
        Ipv4Addr::from(0x0a00_0000 | (i >> 4)),
        1024 + (i & 0xf) as u16,
    )
}

fn expr(i: usize) -> String {
    let (a, p) = key(i);
    format!("udp dst port {p} and dst host {a}")
}

fn frame(addr: Ipv4Addr, port: u16) -> Vec<u8> {
    FrameBuilder::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ethertype(0x0800)
        .ipv4(Ipv4::new([192, 0, 2, 1], addr.octets(), 17))
        .udp(40000, port)
        .payload(18)
        .finish()
        .data
}

fn merged(n: usize, strategy: Strategy) -> Classifier {
    let mut c = Classifier::new(Policy::Exclusive, strategy).expect("engine");
    for i in 0..n {
        let (a, p) = key(i);
        let b = PortBinding::new(&[], &[Transport::Udp], Some(IpAddr::V4(a)), p).unwrap();
        c.add_binding(i as QueueId, b).unwrap();
    }
    c
}

fn engines() -> Vec<(&'static str, Strategy)> {
    let mut v = vec![("interp", Strategy::Interpreter)];
    match Classifier::new(Policy::Exclusive, Strategy::Jit) {
        Ok(_) => v.push(("jit", Strategy::Jit)),
        Err(e) => eprintln!("classify bench: no JIT rows ({e})"),
    }
    v
}

fn bench(c: &mut Criterion) {
    let engines = engines();
    for n in SIZES {
        let (ha, hp) = key(n / 2);
        let hit = frame(ha, hp);
        let miss = frame(ha, 9);
        let cases = [("hit", &hit), ("miss", &miss)];
        let wire = |f: &Vec<u8>| f.len() as u32;
        for (strategy_name, strategy) in &engines {
            let cl = merged(n, *strategy);
            let mut out = Vec::with_capacity(4);
            for (what, f) in cases {
                cl.classify(f, wire(f), Mode::Owner, &mut out);
                assert_eq!(out.is_empty(), what == "miss", "{what} at N = {n}");
                let mut g = c.benchmark_group(format!("classify-{what}/n={n}"));
                g.bench_function(format!("netmux-{strategy_name}"), |b| {
                    b.iter(|| {
                        cl.classify(black_box(f), wire(f), Mode::Owner, &mut out);
                        black_box(out.len())
                    })
                });
                g.finish();
            }
        }
        if n > LINEAR_MAX {
            continue;
        }
        let pcap: Vec<BpfProgram> = (0..n)
            .map(|i| BpfProgram::compile(&expr(i), true).unwrap())
            .collect();
        let mut scan = LinearScan::new(Strategy::Interpreter);
        for i in 0..n {
            scan.add(i as QueueId, &expr(i)).unwrap();
        }
        let mut out: Vec<QueueId> = Vec::with_capacity(4);
        for (what, f) in cases {
            let mut g = c.benchmark_group(format!("classify-{what}/n={n}"));
            g.bench_function("peer-libpcap-linear", |b| {
                b.iter(|| {
                    out.clear();
                    for (q, p) in pcap.iter().enumerate() {
                        if p.matches(black_box(f), wire(f)) {
                            out.push(q as QueueId);
                        }
                    }
                    black_box(out.len())
                })
            });
            g.bench_function("peer-netmux-interp-linear", |b| {
                b.iter(|| {
                    scan.classify(black_box(f), wire(f), &mut out);
                    black_box(out.len())
                })
            });
            g.finish();
        }
    }

    // Update latency with 100,000 bindings installed.
    let mut cl = merged(100_000, Strategy::Interpreter);
    let (a, _) = key(100_000);
    let extra = PortBinding::new(&[], &[Transport::Udp], Some(IpAddr::V4(a)), 9).unwrap();
    let text = format!("udp dst port 9 and dst host {a}");
    let mut g = c.benchmark_group("classify-update/n=100000");
    g.bench_function("netmux-add-remove-binding", |b| {
        b.iter(|| {
            let r = cl.add_binding(1_000_000, black_box(extra)).unwrap();
            cl.remove(r).unwrap();
        })
    });
    g.bench_function("netmux-add-remove-filter-text", |b| {
        b.iter(|| {
            let r = cl.add_filter(1_000_000, black_box(&text)).unwrap();
            cl.remove(r).unwrap();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
