//! Demultiplexing cost against the number of port bindings: the merged classifier beside a
//! linear scan of per-client filters (libpcap's `bpf_filter`, and netmux's interpreter), on
//! the same frames in the same run.
//!
//! N = 1, 10, 100, 1,000, 10,000 and 100,000 bindings `udp dst port P and dst host A`, each
//! its own queue with its own (address, port). The *hit* frame is a UDP datagram to the
//! binding in the middle of the list; the *miss* frame goes to a port nobody bound. Every
//! measurement returns the full set of receiving queues (so a linear scan runs every filter;
//! stopping at the first match would be Barrelfish's first-match-wins, which lets a newer
//! filter steal traffic). The linear scans stop at N = 1,000 (beyond, a scan is only slower).
//!
//! The classifier measured is the one the driver runs (`netmux_classify::Classifier`, made as
//! the driver makes it, for the link's MAC), fed what netd installs: each binding's key with
//! netd's port filter for it (`ether dst M and ip dst host A and udp dst port P`), so a table
//! hit is confirmed by the destination MAC as in production. Updates: installing then removing
//! one binding in a classifier that holds 100,000 (`classify-update/...`), with a prebuilt
//! program (what the driver does) and from the expression (compiling and recognising it).
//!
//! Benchmark ids follow `scripts/bench-report`'s scheme: `<group>/netmux-<engine>` for the
//! merged classifier, `<group>/peer-<name>` for the linear scans. With the `jit` feature and a
//! working JIT, `netmux-jit` rows are added; otherwise only the interpreter is measured.

// `criterion_group!` generates a function without documentation.
#![allow(missing_docs)]

use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use netmux_classify::{port_filter, Classifier, Classify, Key, LinearScan, RxFilter};
use netmux_proto::driver::{FilterId, QueueId, RxMode};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::oracle::BpfProgram;
use netmux_vm::Strategy;

/// The link's MAC: netd's port filters name it.
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

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

/// netd's port filter expression for binding `i`.
fn expr(i: usize) -> String {
    let (a, p) = key(i);
    format!("ether dst 02:00:00:00:00:02 and ip dst host {a} and udp dst port {p}")
}

/// What netd installs for binding `i`, for queue `queue`.
fn filter(i: usize, queue: u32, id: u64) -> RxFilter {
    let (addr, port) = key(i);
    let key = Key::V4 {
        protocol: 17,
        addr,
        port,
    };
    RxFilter {
        queue: QueueId(queue),
        filter: FilterId(id),
        mode: RxMode::Owner,
        binding: Some(key.binding()),
        program: port_filter::program(&key, MAC).expect("an exact key"),
    }
}

fn frame(addr: Ipv4Addr, port: u16) -> Vec<u8> {
    FrameBuilder::ethernet(MAC, [2, 0, 0, 0, 0, 1])
        .ethertype(0x0800)
        .ipv4(Ipv4::new([192, 0, 2, 1], addr.octets(), 17))
        .udp(40000, port)
        .payload(18)
        .finish()
        .data
}

fn merged(n: usize, strategy: Strategy) -> Classifier {
    let mut c = Classifier::for_link(strategy, MAC);
    for i in 0..n {
        c.install(filter(i, i as u32, i as u64)).expect("engine");
    }
    assert_eq!(c.confirmed_by_mac(), n);
    c
}

fn engines() -> Vec<(&'static str, Strategy)> {
    let mut v = vec![("interp", Strategy::Interpreter)];
    match Classifier::new(Strategy::Jit).install(filter(0, 0, 0)) {
        Ok(()) => v.push(("jit", Strategy::Jit)),
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
            let mut cl = merged(n, *strategy);
            let mut out = Vec::with_capacity(4);
            for (what, f) in cases {
                out.clear();
                cl.classify(f, wire(f), &mut out);
                assert_eq!(out.is_empty(), what == "miss", "{what} at N = {n}");
                let mut g = c.benchmark_group(format!("classify-{what}/n={n}"));
                g.bench_function(format!("netmux-{strategy_name}"), |b| {
                    b.iter(|| {
                        out.clear();
                        cl.classify(black_box(f), wire(f), &mut out);
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
            scan.install(filter(i, i as u32, i as u64)).unwrap();
        }
        let mut out: Vec<QueueId> = Vec::with_capacity(4);
        for (what, f) in cases {
            let mut g = c.benchmark_group(format!("classify-{what}/n={n}"));
            g.bench_function("peer-libpcap-linear", |b| {
                b.iter(|| {
                    out.clear();
                    for (q, p) in pcap.iter().enumerate() {
                        if p.matches(black_box(f), wire(f)) {
                            out.push(QueueId(q as u32));
                        }
                    }
                    black_box(out.len())
                })
            });
            g.bench_function("peer-netmux-interp-linear", |b| {
                b.iter(|| {
                    out.clear();
                    scan.classify(black_box(f), wire(f), &mut out);
                    black_box(out.len())
                })
            });
            g.finish();
        }
    }

    // Update latency with 100,000 bindings installed.
    let mut cl = merged(100_000, Strategy::Interpreter);
    // What a user writes for binding 100,000 (`netmux filter classify`): the recogniser reads
    // an address and a port; the MAC confirmation is the driver's, not the expression's.
    let (addr, port) = key(100_000);
    let text = format!("ip dst host {addr} and udp dst port {port}");
    let mut g = c.benchmark_group("classify-update/n=100000");
    // The filter arrives built and verified (netd builds it, the driver decodes it): the
    // update is the classifier's part.
    g.bench_function("netmux-add-remove-binding", |b| {
        b.iter_batched(
            || filter(100_000, 1_000_000, 1_000_000),
            |f| {
                cl.install(black_box(f)).unwrap();
                cl.remove(QueueId(1_000_000), FilterId(1_000_000)).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("netmux-add-remove-filter-text", |b| {
        b.iter(|| {
            let rule = netmux_compiler::binding::compile_rule(black_box(&text)).unwrap();
            let [Some(binding)] = rule.keys()[..] else {
                panic!("{text} is one binding");
            };
            cl.install(RxFilter {
                queue: QueueId(1_000_000),
                filter: FilterId(1_000_000),
                mode: RxMode::Owner,
                binding: Some(binding),
                program: rule.program,
            })
            .unwrap();
            cl.remove(QueueId(1_000_000), FilterId(1_000_000)).unwrap();
        })
    });
    g.finish();
}

/// Clients per instance in `classify-instances`.
const CLIENTS: usize = 100;

/// Instances of 100 clients each (`classify-instances/Nx100/netmux`) against one instance with
/// the same bindings (`.../peer-one-instance`): finding the instance a frame is addressed to
/// and its queues, exactly as the receive path does ([`Instances::receive`]). Each instance has
/// a MAC of its own and an address; each client a UDP port on it. The frames cycle over every
/// binding.
fn bench_instances(c: &mut Criterion) {
    use netmux_driver::daemon::instances::Instances;
    use netmux_proto::driver::{InstanceId, InstanceInfo};
    const LINK: [u8; 6] = [2, 0, 0, 0, 0, 1];
    let mac = |i: usize| [2, 0xee, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let addr = |i: usize| Ipv4Addr::from(0x0a00_0000 | (i as u32 + 1) << 8 | 1);
    let strategy = Strategy::Auto;
    let fresh =
        move |mac: [u8; 6]| -> Box<dyn Classify> { Box::new(Classifier::for_link(strategy, mac)) };
    for n in [1usize, 16, 1024] {
        // n own-MAC instances beside the default one, against the default instance with
        // every address; both as the driver makes them.
        let mut several = Instances::new(LINK, fresh(LINK), Box::new(fresh));
        let mut one = Instances::new(LINK, fresh(LINK), Box::new(fresh));
        several.use_link_bindings(strategy);
        one.use_link_bindings(strategy);
        one.set(InstanceInfo {
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
            mac: LINK,
            own_mac: false,
            ipv4: (0..n).map(|i| addr(i).octets()).collect(),
            ipv6: Vec::new(),
            overlay: None,
        })
        .expect("the default instance's addresses");
        let mut frames = Vec::new();
        for i in 0..n {
            let slot = several
                .set(InstanceInfo {
                    instance: InstanceId(i as u32 + 1),
                    mac: mac(i),
                    own_mac: true,
                    ipv4: vec![addr(i).octets()],
                    ipv6: Vec::new(),
                    overlay: None,
                })
                .expect("instance");
            for j in 0..CLIENTS {
                let port = 1000 + j as u16;
                let key = Key::V4 {
                    protocol: 17,
                    addr: addr(i),
                    port,
                };
                let id = (i * CLIENTS + j) as u64;
                let filter = |m: [u8; 6]| RxFilter {
                    queue: QueueId(id as u32),
                    filter: FilterId(id),
                    mode: RxMode::Owner,
                    binding: Some(key.binding()),
                    program: port_filter::program(&key, m).expect("an exact key"),
                };
                several
                    .install_filter(slot, filter(mac(i)))
                    .expect("binding");
                one.install_filter(0, filter(LINK)).expect("binding");
                if frames.len() < 4096 && j % 7 == i % 7 {
                    let f = |m: [u8; 6]| {
                        FrameBuilder::ethernet(m, [2, 0, 0, 0, 0, 9])
                            .ethertype(0x0800)
                            .ipv4(Ipv4::new([192, 0, 2, 1], addr(i).octets(), 17))
                            .udp(40000, port)
                            .payload(18)
                            .finish()
                            .data
                    };
                    frames.push((f(mac(i)), f(LINK)));
                }
            }
        }
        let mut out = Vec::new();
        for (own, shared) in &frames {
            out.clear();
            several.receive(own, None, &mut out);
            assert_eq!(out.len(), 1, "every frame reaches its client");
            out.clear();
            one.receive(shared, None, &mut out);
            assert_eq!(out.len(), 1);
        }
        paired_instances(n, &mut several, &mut one, &frames);
        let mut g = c.benchmark_group(format!("classify-instances/{n}x{CLIENTS}"));
        let mut k = 0;
        g.bench_function("netmux", |b| {
            b.iter(|| {
                let (f, _) = &frames[k % frames.len()];
                k += 1;
                out.clear();
                several.receive(black_box(f), None, &mut out);
                black_box(out.len())
            })
        });
        g.bench_function("peer-one-instance", |b| {
            b.iter(|| {
                let (_, f) = &frames[k % frames.len()];
                k += 1;
                out.clear();
                one.receive(black_box(f), None, &mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

/// Rounds of the paired instance measurement.
const PAIRED_ROUNDS: usize = 300;

/// Both sides in turn, every frame (at least 4,096 frames) each per round (the order alternating), and per round
/// the ratio of the instances' time to the one instance's. On a machine shared with other
/// work, criterion's rows (one after another) see the load change between them; the two sides
/// of a round see nearly the same load. The side that ran last in one round runs first in the
/// next, on caches it warmed itself, so the rounds of each order have their own median (at
/// 1,024 instances, whose tables do not fit in the cache, they differ by half); the figure is
/// the geometric mean of the two, where the order's effect cancels.
fn paired_instances(
    n: usize,
    several: &mut netmux_driver::daemon::instances::Instances,
    one: &mut netmux_driver::daemon::instances::Instances,
    frames: &[(Vec<u8>, Vec<u8>)],
) {
    let mut out = Vec::new();
    let mut ratios = Vec::with_capacity(PAIRED_ROUNDS);
    // At least 4,096 frames a round, so that a round lasts many times the clock's resolution.
    let passes = 4096usize.div_ceil(frames.len().max(1));
    let mut time = |inst: &mut netmux_driver::daemon::instances::Instances, own: bool| {
        let start = std::time::Instant::now();
        for _ in 0..passes {
            for (o, s) in frames {
                let f = if own { o } else { s };
                out.clear();
                inst.receive(black_box(f), None, &mut out);
                black_box(out.len());
            }
        }
        start.elapsed().as_secs_f64()
    };
    for round in 0..PAIRED_ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = time(several, true);
            (a, time(one, false))
        } else {
            let b = time(one, false);
            (time(several, true), b)
        };
        ratios.push(a / b);
    }
    let median = |first: usize| {
        let mut r: Vec<f64> = ratios.iter().skip(first).step_by(2).copied().collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let (several_first, one_first) = (median(0), median(1));
    eprintln!(
        "classify-instances paired: {n}x{CLIENTS} / one instance = {:.3} (geometric mean of the \
         medians of {} rounds each order: {several_first:.3} instances first, {one_first:.3} \
         one instance first)",
        (several_first * one_first).sqrt(),
        PAIRED_ROUNDS / 2,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench, bench_instances
}
criterion_main!(benches);
