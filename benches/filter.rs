//! Filter execution and JIT compile time, netmux against its peers, in one criterion run.
//!
//! Every engine sees the same two 60-byte Ethernet/IPv4/UDP frames, a hit (to 10.0.0.2 port
//! 53) and a miss (port 54), alternating. For each of three expressions, from the simplest
//! port filter to one with a negated network:
//!
//! * `filter/<expr>/netmux-interp`: the netmux interpreter;
//! * `filter/<expr>/netmux-jit`: the netmux Cranelift JIT;
//! * `filter/<expr>/peer-libpcap`: libpcap's `bpf_filter` on the program libpcap compiles
//!   (with its optimizer, as tcpdump does);
//!
//! and for `udp dst port 53` only, a hand-written eBPF equivalent run by rbpf:
//! `filter/udp-dst-53/peer-rbpf-interp` and `.../peer-rbpf-jit` (rbpf's x86 JIT checks no bounds
//! at all; the eBPF program is a straight translation of libpcap's). Compile times:
//! `compile/<expr>/netmux-jit` and, for `udp dst port 53`, `compile/udp-dst-53/peer-rbpf-jit`.
//!
//! The netmux programs are what netmux's pcap-filter compiler makes of each expression (what a
//! user runs); before measuring, the bench checks on a set of frames (hits, misses, IPv6, fragments, IP options, every
//! truncation) that each engine's verdicts equal libpcap's, and panics otherwise. Run
//! `cargo bench --bench filter -- --test` for that check alone.
//!
//! `scripts/bench-report` turns the results into the table of ratios.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use netmux_testkit::frames::{truncated, FrameBuilder, Ipv4};
use netmux_testkit::{BpfProgram, Frame};
use netmux_vm::jit::JitEngine;
use netmux_vm::{Engine, Interpreter, Program};

/// One filter: benchmark name, pcap-filter expression, the netmux program.
struct Filter {
    name: &'static str,
    expr: &'static str,
}

const FILTERS: &[Filter] = &[
    Filter {
        name: "udp-dst-53",
        expr: "udp dst port 53",
    },
    Filter {
        name: "ip-udp-host-port",
        expr: "ip and udp and dst host 10.0.0.2 and dst port 53",
    },
    Filter {
        name: "tcp-udp-ports-not-net",
        expr: "(tcp or udp) and (port 53 or port 80 or port 443) and not src net 192.168.0.0/16",
    },
];

/// `udp dst port 53` in eBPF for rbpf, translated from libpcap's program. eBPF loads are
/// little-endian, so the constants are byte-swapped (0x0800 -> 0x0008, 53 -> 0x3500, the
/// fragment mask 0x1fff -> 0xff1f). rbpf's JIT checks no bounds.
const RBPF_UDP_DST_53: &str = "
    ldxh r2, [r1+12]
    jne r2, 0x8, +11
    ldxb r2, [r1+23]
    jne r2, 0x11, +16
    ldxh r2, [r1+20]
    jset r2, 0xff1f, +14
    ldxb r3, [r1+14]
    and r3, 0xf
    lsh r3, 2
    add r3, r1
    ldxh r2, [r3+16]
    jne r2, 0x3500, +8
    ja +5
    jne r2, 0xdd86, +6
    ldxb r2, [r1+20]
    jne r2, 0x11, +4
    ldxh r2, [r1+56]
    jne r2, 0x3500, +2
    mov r0, 262144
    exit
    mov r0, 0
    exit
";

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Frame {
    FrameBuilder::ethernet(MAC_B, MAC_A)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(src, dst, 17))
        .udp(sport, dport)
        .payload(18)
        .finish()
}

/// The two benchmark frames: 60 bytes each, a hit and a miss for all three expressions.
fn bench_frames() -> [Frame; 2] {
    let hit = udp4(CLIENT, SERVER, 40000, 53);
    let miss = udp4(CLIENT, SERVER, 40000, 54);
    assert_eq!((hit.data.len(), miss.data.len()), (60, 60));
    [hit, miss]
}

/// Frames that take every branch of the three programs, and every truncation of the hit.
fn check_frames() -> Vec<Frame> {
    let v6 = |next: u8, l4: &dyn Fn(FrameBuilder) -> FrameBuilder| {
        l4(FrameBuilder::ethernet(MAC_B, MAC_A)
            .ethertype(0x86dd)
            .ipv6([0xfe; 16], [0xfd; 16], next))
        .payload(8)
        .finish()
    };
    let mut frag = Ipv4::new(CLIENT, SERVER, 17);
    frag.frag = 0x2001;
    let mut options = Ipv4::new(CLIENT, SERVER, 17);
    options.ihl = 6;
    let tcp4 = |src, dport| {
        FrameBuilder::ethernet(MAC_B, MAC_A)
            .ethertype(0x0800)
            .ipv4(Ipv4::new(src, SERVER, 6))
            .tcp(40000, dport, 0x02)
            .finish()
    };
    let mut frames = vec![
        udp4(CLIENT, SERVER, 40000, 53),
        udp4(CLIENT, SERVER, 40000, 54),
        udp4(CLIENT, SERVER, 53, 40000),
        udp4(CLIENT, [10, 0, 0, 3], 40000, 53),
        udp4([192, 168, 1, 1], SERVER, 40000, 53),
        udp4([192, 169, 1, 1], SERVER, 40000, 443),
        tcp4(CLIENT, 80),
        tcp4([192, 168, 0, 9], 80),
        tcp4(CLIENT, 81),
        FrameBuilder::ethernet(MAC_B, MAC_A)
            .ethertype(0x0800)
            .ipv4(frag)
            .udp(40000, 53)
            .finish(),
        FrameBuilder::ethernet(MAC_B, MAC_A)
            .ethertype(0x0800)
            .ipv4(options)
            .udp(40000, 53)
            .finish(),
        v6(17, &|b| b.udp(40000, 53)),
        v6(17, &|b| b.udp(53, 40000)),
        v6(6, &|b| b.tcp(40000, 443, 0x10)),
        v6(0x2c, &|b| b.ipv6_fragment(17, 0).udp(40000, 53)),
        FrameBuilder::ethernet(MAC_B, MAC_A)
            .ethertype(0x0806)
            .payload(46)
            .finish(),
    ];
    let hit = frames[0].clone();
    frames.extend((0..hit.data.len()).map(|keep| truncated(&hit, keep)));
    frames
}

/// The program netmux's compiler makes for the expression: what a user of netmux runs.
fn netmux_program(f: &Filter) -> Program {
    netmux_compiler::compile(f.expr, &netmux_compiler::Options::default())
        .unwrap_or_else(|e| panic!("{}: netmux compiler: {e}", f.name))
}

fn rbpf_program() -> Vec<u8> {
    rbpf::assembler::assemble(RBPF_UDP_DST_53).expect("the eBPF program assembles")
}

/// Panics unless every engine agrees with libpcap on every check frame.
fn check_against_libpcap() {
    let frames = check_frames();
    for f in FILTERS {
        let pcap = BpfProgram::compile(f.expr, true).expect("libpcap compiles the expression");
        let program = netmux_program(f);
        let interp = Interpreter::new(program.clone());
        let jit = JitEngine::new(program).expect("the JIT compiles the program");
        let (mut hits, mut misses) = (0, 0);
        for frame in &frames {
            let want = pcap.matches(&frame.data, frame.wire_len);
            let i = interp.run(&frame.data, frame.wire_len).is_accept();
            let j = jit.run(&frame.data, frame.wire_len).is_accept();
            assert!(
                i == want && j == want,
                "{}: libpcap {want}, interpreter {i}, JIT {j} on {:02x?}",
                f.name,
                frame.data
            );
            if want {
                hits += 1;
            } else {
                misses += 1;
            }
        }
        assert!(
            hits >= 2 && misses >= 2,
            "{}: the check frames are one-sided",
            f.name
        );
    }
    // rbpf's JIT reads without bounds checks: only whole frames of at least 60 bytes, whose
    // reads (at most offset 58, or the UDP header behind a 20-byte IP header) stay inside.
    let pcap = BpfProgram::compile("udp dst port 53", true).expect("libpcap compiles");
    let prog = rbpf_program();
    let mut vm = rbpf::EbpfVmRaw::new(Some(&prog)).expect("rbpf loads the program");
    vm.jit_compile().expect("rbpf's JIT compiles the program");
    for frame in frames.iter().take(16).filter(|f| f.data.len() >= 60) {
        let ihl = usize::from(frame.data[14] & 0xf) * 4;
        if frame.data[12] == 0x08 && 14 + ihl + 4 > frame.data.len() {
            continue;
        }
        let want = pcap.matches(&frame.data, frame.wire_len);
        let mut mem = frame.data.clone();
        let interp = vm.execute_program(&mut mem).expect("rbpf runs") != 0;
        // SAFETY: the program reads only inside `mem` for these frames (checked above).
        let jit = unsafe { vm.execute_program_jit(&mut mem) }.expect("rbpf runs") != 0;
        assert!(
            interp == want && jit == want,
            "rbpf: libpcap {want}, interpreter {interp}, JIT {jit} on {:02x?}",
            frame.data
        );
    }
}

fn filters(c: &mut Criterion) {
    check_against_libpcap();
    let frames = bench_frames();
    let wire = frames[0].wire_len;

    for f in FILTERS {
        let mut group = c.benchmark_group(format!("filter/{}", f.name));
        let program = netmux_program(f);

        let interp = Interpreter::new(program.clone());
        group.bench_function("netmux-interp", |b| {
            let mut i = 0;
            b.iter(|| {
                i ^= 1;
                interp.run(black_box(&frames[i].data), wire)
            })
        });

        let jit = JitEngine::new(program.clone()).expect("the JIT compiles");
        group.bench_function("netmux-jit", |b| {
            let mut i = 0;
            b.iter(|| {
                i ^= 1;
                jit.run(black_box(&frames[i].data), wire)
            })
        });

        let pcap = BpfProgram::compile(f.expr, true).expect("libpcap compiles");
        group.bench_function("peer-libpcap", |b| {
            let mut i = 0;
            b.iter(|| {
                i ^= 1;
                pcap.run(black_box(&frames[i].data), wire)
            })
        });

        if f.name == "udp-dst-53" {
            let prog = rbpf_program();
            let mut vm = rbpf::EbpfVmRaw::new(Some(&prog)).expect("rbpf loads");
            vm.jit_compile().expect("rbpf's JIT compiles");
            let mut mems = [frames[0].data.clone(), frames[1].data.clone()];
            group.bench_function("peer-rbpf-interp", |b| {
                let mut i = 0;
                b.iter(|| {
                    i ^= 1;
                    vm.execute_program(black_box(&mut mems[i])).unwrap_or(0)
                })
            });
            group.bench_function("peer-rbpf-jit", |b| {
                let mut i = 0;
                b.iter(|| {
                    i ^= 1;
                    // SAFETY: the program's reads stay inside these 60-byte frames (checked
                    // in `check_against_libpcap`).
                    unsafe { vm.execute_program_jit(black_box(&mut mems[i])) }.unwrap_or(0)
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("compile/{}", f.name));
        group.bench_function("netmux-jit", |b| {
            b.iter(|| JitEngine::new(black_box(program.clone())).expect("compiles"))
        });
        if f.name == "udp-dst-53" {
            let prog = rbpf_program();
            group.bench_function("peer-rbpf-jit", |b| {
                b.iter(|| {
                    let mut vm = rbpf::EbpfVmRaw::new(Some(black_box(&prog))).expect("loads");
                    vm.jit_compile().expect("compiles");
                    vm
                })
            });
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = filters
}
criterion_main!(benches);
