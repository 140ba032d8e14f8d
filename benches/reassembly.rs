//! Reassembly throughput: netmux's reassembler beside etherparse's `IpDefragPool`, on the same
//! fragments in the same run.
//!
//! Each case is MTU-sized IPv4 UDP datagrams (1,472 bytes of UDP payload, 1,500-byte IP packets)
//! split into 2 or 4 fragments, interleaved round-robin across 256 or 16,384 flows so that that
//! many datagrams are in flight (16 flows share a source address). One iteration pushes every
//! fragment of every flow once; each datagram completes on its last fragment, and both
//! reassemblers get their output buffers back for reuse (`recycle`, `return_buf`). netmux's
//! budget is raised so that nothing is evicted (the default 4 MiB holds about 2,000 such
//! datagrams); etherparse has no budget.
//!
//! Criterion reports time per iteration with the fragment count as throughput. After it, a
//! summary prints the median ns per fragment of both over several passes, and the ratio.

use criterion::{black_box, criterion_main, BenchmarkId, Criterion, Throughput};
use etherparse::defrag::IpDefragPool;
use etherparse::SlicedPacket;
use netmux_driver::reassembly::{fragmenter, Config, Outcome, Reassembler};
use std::time::Instant;

/// UDP payload of an MTU-sized datagram: 1,500 - 20 (IPv4) - 8 (UDP).
const UDP_PAYLOAD: usize = 1472;

fn datagram(flow: u32) -> Vec<u8> {
    let source = flow / 16;
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = (20 + 8 + UDP_PAYLOAD) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&(flow as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 64, 17, 0, 0, 10, (source >> 16) as u8]);
    f.extend_from_slice(&[(source >> 8) as u8, source as u8, 10, 1, 1, 1]);
    let mut sum = 0u32;
    for pair in f[14..34].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&[0x13, 0x88, 0x13, 0x89]);
    f.extend_from_slice(&((8 + UDP_PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..UDP_PAYLOAD).map(|i| (i as u32 ^ flow) as u8));
    f
}

/// The fragments of `flows` datagrams in `pieces` fragments each, interleaved round-robin:
/// every flow's first fragment, then every flow's second, and so on.
fn workload(flows: u32, pieces: usize) -> Vec<Vec<u8>> {
    // Data per fragment: 1,480 bytes of IP payload in `pieces` parts, rounded up to 8.
    let size = (20 + 8 + UDP_PAYLOAD - 20).div_ceil(pieces).div_ceil(8) * 8;
    let per_flow: Vec<Vec<Vec<u8>>> = (0..flows)
        .map(|f| fragmenter::fragment(&datagram(f), size, f).expect("benchmark frames split"))
        .collect();
    assert!(per_flow.iter().all(|p| p.len() == pieces));
    (0..pieces)
        .flat_map(|k| per_flow.iter().map(move |p| p[k].clone()))
        .collect()
}

struct Netmux {
    r: Reassembler,
    now: u64,
}

impl Netmux {
    fn new() -> Netmux {
        Netmux {
            r: Reassembler::new(Config {
                memory_budget: 1 << 30,
                source_budget: 1 << 30,
                ..Config::default()
            }),
            now: 0,
        }
    }

    /// Pushes every fragment once; returns the number of datagrams completed.
    fn pass(&mut self, frames: &[Vec<u8>]) -> usize {
        let mut done = 0;
        for f in frames {
            self.now += 1;
            match self.r.push(f, self.now) {
                Outcome::Reassembled(out) => {
                    done += 1;
                    black_box(&out);
                    self.r.recycle(out);
                }
                Outcome::Held => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        done
    }
}

struct Etherparse {
    pool: IpDefragPool<(), ()>,
}

impl Etherparse {
    fn new() -> Etherparse {
        Etherparse {
            pool: IpDefragPool::new(),
        }
    }

    fn pass(&mut self, frames: &[Vec<u8>]) -> usize {
        let mut done = 0;
        for f in frames {
            let sliced = SlicedPacket::from_ethernet(f).expect("benchmark frames parse");
            if let Some(out) = self
                .pool
                .process_sliced_packet(&sliced, (), ())
                .expect("benchmark frames reassemble")
            {
                done += 1;
                black_box(&out);
                self.pool.return_buf(out);
            }
        }
        done
    }
}

const CASES: [(u32, usize); 4] = [(256, 2), (256, 4), (16_384, 2), (16_384, 4)];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("reassembly");
    for (flows, pieces) in CASES {
        let frames = workload(flows, pieces);
        group.throughput(Throughput::Elements(frames.len() as u64));
        let id = format!("{flows}flows/{pieces}frags");
        let mut ours = Netmux::new();
        assert_eq!(ours.pass(&frames), flows as usize);
        group.bench_with_input(BenchmarkId::new("netmux", &id), &frames, |b, frames| {
            b.iter(|| ours.pass(frames))
        });
        let mut theirs = Etherparse::new();
        assert_eq!(theirs.pass(&frames), flows as usize);
        group.bench_with_input(BenchmarkId::new("etherparse", &id), &frames, |b, frames| {
            b.iter(|| theirs.pass(frames))
        });
    }
    group.finish();
}

/// Median ns per fragment over `runs` passes, after one warm-up pass.
fn median_ns_per_fragment(runs: usize, frames: &[Vec<u8>], mut pass: impl FnMut() -> usize) -> f64 {
    pass();
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(pass());
            t.elapsed().as_nanos() as f64 / frames.len() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn summary(_: &mut Criterion) {
    if std::env::args().any(|a| a == "--profile-time" || a == "--list") {
        return; // profiling or listing: only criterion's own runs
    }
    println!("\nreassembly summary (ns per fragment: median of 7 alternating rounds, each the median of 3 passes):");
    println!(
        "{:<22} {:>10} {:>12} {:>8}",
        "case", "netmux", "etherparse", "ratio"
    );
    for (flows, pieces) in CASES {
        let frames = workload(flows, pieces);
        let mut ours = Netmux::new();
        let mut theirs = Etherparse::new();
        // Alternate the two so that machine noise hits both alike.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            a.push(median_ns_per_fragment(3, &frames, || ours.pass(&frames)));
            b.push(median_ns_per_fragment(3, &frames, || theirs.pass(&frames)));
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let (a, b) = (a[a.len() / 2], b[b.len() / 2]);
        println!(
            "{:<22} {:>10.1} {:>12.1} {:>8.2}",
            format!("{flows} flows, {pieces} frags"),
            a,
            b,
            a / b
        );
    }
}

// criterion's macro generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench, super::summary);
}
criterion_main!(group::benches);
