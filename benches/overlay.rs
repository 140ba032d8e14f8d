//! Overlay costs: VXLAN encapsulation and decapsulation per 64-byte and 1,500-byte frame
//! beside the plain path in the same run, and a mapping-cache hit among 100,000 mappings.
//!
//! The plain path is what the driver does with every frame anyway: copy it into a buffer for
//! the link (transmit) or a ring (receive). Encapsulation is `netmux_wire::vxlan::encapsulate`
//! into a reused buffer (headers, IPv4 checksum, source-port hash, then the same copy);
//! decapsulation is `outer_udp` and `decapsulate` on a received frame, then the same copy of
//! the inner frame. The cache is the driver's own `MappingCache`, filled with 100,000 MACs and
//! asked for random ones among them. Goals: encapsulation and decapsulation at most 1.3x the
//! plain path; a cache hit at most 20 ns. After criterion's report, a summary prints the
//! medians and the ratios.

use std::time::Instant;

use criterion::{black_box, criterion_main, Criterion};
use netmux_driver::daemon::overlay::MappingCache;
use netmux_wire::vxlan::{decapsulate, encapsulate, outer_udp, Underlay};

const TO: Underlay = Underlay {
    src_mac: [2, 0, 0, 0, 0, 1],
    dst_mac: [2, 0, 0, 0, 0, 2],
    src_ip: [192, 0, 2, 1],
    dst_ip: [192, 0, 2, 2],
    dst_port: 4789,
};
const MAPPINGS: u64 = 100_000;

/// An inner IPv4 UDP frame of `len` bytes.
fn inner(len: usize) -> Vec<u8> {
    let mut f = vec![2, 0xbb, 0, 0, 0, 2, 2, 0xaa, 0, 0, 0, 1, 0x08, 0x00];
    let ip_len = (len - 14) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0, 7]);
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(len, 0x5a);
    f
}

fn mac(i: u64) -> [u8; 6] {
    let b = (i * 2_654_435_761).to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

fn filled_cache() -> (MappingCache, Vec<u64>) {
    let mut cache = MappingCache::default();
    let keys: Vec<u64> = (0..MAPPINGS).map(|i| MappingCache::key(&mac(i))).collect();
    for (i, &k) in keys.iter().enumerate() {
        assert!(cache.insert(k, Some(([192, 0, 2, (i % 250) as u8 + 1], 4789))));
    }
    // Asked in a scattered order, as frames to many destinations would.
    let order: Vec<u64> = (0..4096u64)
        .map(|i| keys[((i * 7919) % MAPPINGS) as usize])
        .collect();
    (cache, order)
}

fn bench(c: &mut Criterion) {
    for len in [64usize, 1500] {
        let frame = inner(len);
        let mut out = Vec::with_capacity(len + 64);
        c.bench_function(&format!("plain copy {len}"), |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(black_box(&frame));
                black_box(out.len())
            })
        });
        c.bench_function(&format!("encapsulate {len}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(encapsulate(black_box(&frame), 42, &TO, &mut out).unwrap())
            })
        });
        let mut wire = Vec::new();
        encapsulate(&frame, 42, &TO, &mut wire).unwrap();
        c.bench_function(&format!("decapsulate {len}"), |b| {
            b.iter(|| {
                let f = black_box(&wire[..]);
                let o = outer_udp(f).unwrap();
                let d = decapsulate(&f[o.payload..o.payload_end]).unwrap();
                out.clear();
                out.extend_from_slice(d.inner);
                black_box(d.vni)
            })
        });
    }
    let (cache, order) = filled_cache();
    c.bench_function("mapping cache hit among 100000", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(cache.get(black_box(order[i])))
        })
    });
}

/// Median ns per operation of `f` run `n` times, over several passes.
fn median_ns(n: u32, mut f: impl FnMut()) -> f64 {
    let mut passes: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    passes[passes.len() / 2]
}

fn summary(_: &mut Criterion) {
    println!("\noverlay summary (median ns per frame; goal: ratio at most 1.3)");
    for len in [64usize, 1500] {
        let frame = inner(len);
        let mut out = Vec::with_capacity(len + 64);
        let plain = median_ns(200_000, || {
            out.clear();
            out.extend_from_slice(black_box(&frame));
            black_box(out.len());
        });
        let encap = median_ns(200_000, || {
            out.clear();
            black_box(encapsulate(black_box(&frame), 42, &TO, &mut out).ok());
        });
        let mut wire = Vec::new();
        encapsulate(&frame, 42, &TO, &mut wire).unwrap();
        let decap = median_ns(200_000, || {
            let f = black_box(&wire[..]);
            if let Some(o) = outer_udp(f) {
                if let Ok(d) = decapsulate(&f[o.payload..o.payload_end]) {
                    out.clear();
                    out.extend_from_slice(d.inner);
                }
            }
            black_box(out.len());
        });
        println!(
            "  {len:>5} bytes: plain {plain:.1}  encapsulate {encap:.1} ({:.2}x)  decapsulate {decap:.1} ({:.2}x)",
            encap / plain,
            decap / plain
        );
    }
    let (cache, order) = filled_cache();
    let mut i = 0;
    let hit = median_ns(1_000_000, || {
        i = (i + 1) & 4095;
        black_box(cache.get(black_box(order[i])));
    });
    println!("  mapping cache hit among {MAPPINGS}: {hit:.1} ns (goal: at most 20)");
}

// criterion's macro generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench, super::summary);
}
criterion_main!(group::benches);
