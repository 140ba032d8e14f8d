//! `bind_port` until its filters are in force, with 0, 10,000 and 100,000 ports already bound
//! (by another session of the same instance), against a bare IPC round trip to netd in the same
//! state. netd replies to `bind_port` only after the driver confirmed the port's rx binding and
//! tx grant, so the reply bounds the time to an active binding from above. The driver is the
//! real one, on a thread of this process behind its control socket
//! (`netmux_netd::testing`).
//!
//! * criterion `bind/bound=N/netmux`: `bind_port` of TCP port 64,000 (timed) and its
//!   `close_port` (not timed) on one session whose queue exists; `bind/bound=N/netmux-udp`:
//!   the same for UDP port 64,000 (a UDP port has broadcast receive filters as well, four
//!   filters and two grants in all); `bind/bound=N/peer-ipc-round-trip`:
//!   a `stats` round trip on the same session (`scripts/bench-report` pairs them, goal at most
//!   2x).
//! * `bind/bound=N/netmux-p99` (and `netmux-udp-p99`): the 99th percentile of [`SAMPLES`] single `bind_port`
//!   latencies, printed with their median and written where criterion writes its estimates
//!   (as the "median" of a benchmark of that id), so `scripts/bench-report` shows it against
//!   its goal of 100 µs.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_netd::testing::Host;
use netmux_ring::QueueConfig;

/// The ports bound before each measurement.
const BOUND: [usize; 3] = [0, 10_000, 100_000];
/// The port measured (TCP; never among the ones bound before).
const PORT: u16 = 64_000;
/// TCP ports bound before, from 1,024 up; UDP ports after those.
const TCP_FIRST: u16 = 1024;
const TCP_LAST: u16 = 60_999;
/// Single latencies behind the printed median and 99th percentile.
const SAMPLES: usize = 2_000;
/// Samples when the benchmark runs as a test (`cargo test --benches`).
const SAMPLES_AS_TEST: usize = 20;

fn start() -> Host {
    Host::start([2, 0, 0, 0, 0, 1], [10, 0, 0, 1].into(), |config| {
        config.host_stack = false;
        let limits = &mut config.policy.limits;
        limits.ports_per_session = 200_000;
        limits.ports_per_uid = 200_000;
        limits.filters_per_session = 1_000_000;
        limits.ring_bytes_per_uid = u64::MAX;
        // Small rings: the benchmark is about binding, not about frames.
        config.rings = QueueConfig {
            slot_size: 2048,
            rx_slots: 64,
            tx_slots: 64,
            completion_slots: 32,
        };
    })
}

/// The `n`-th port bound before the measurements: TCP from [`TCP_FIRST`], then UDP.
fn nth_port(n: usize) -> (Transport, u16) {
    let tcp = usize::from(TCP_LAST - TCP_FIRST) + 1;
    if n < tcp {
        (Transport::Tcp, TCP_FIRST + n as u16)
    } else {
        (Transport::Udp, TCP_FIRST + (n - tcp) as u16)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Writes `ns` as the median of benchmark `id` where criterion keeps its estimates (what
/// `scripts/bench-report` reads).
fn record(id: &str, ns: f64) {
    let dir = criterion_dir()
        .join(id.replace(['=', '/'], "_"))
        .join("new");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("benchmark.json"),
            format!("{{\"full_id\":\"{id}\",\"title\":\"{id}\"}}"),
        )?;
        std::fs::write(
            dir.join("estimates.json"),
            format!("{{\"median\":{{\"point_estimate\":{ns}}}}}"),
        )
    };
    if let Err(e) = write() {
        eprintln!("bind: cannot record {id} in {}: {e}", dir.display());
    }
}

fn bind_once(client: &mut Client, transport: Transport) -> Duration {
    let t = Instant::now();
    client.bind_port(transport, PORT).expect("bind");
    let took = t.elapsed();
    client.close_port(transport, PORT).expect("close");
    took
}

/// The benchmark id part of a transport's rows: TCP's are `netmux`, UDP's `netmux-udp`.
fn row(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "netmux-udp",
        _ => "netmux",
    }
}

fn bench(c: &mut Criterion) {
    let as_bench = std::env::args().any(|a| a == "--bench");
    let samples = if as_bench { SAMPLES } else { SAMPLES_AS_TEST };
    let host = start();
    let mut holder = Client::connect_socket(host.netd.socket_path()).expect("connect");
    let mut client = Client::connect_socket(host.netd.socket_path()).expect("connect");
    bind_once(&mut client, Transport::Tcp); // the session's queue exists from here on
    let mut bound = 0;
    for n in BOUND {
        // Only the state without bindings when run as a test: it proves the path works.
        if !as_bench && n > 0 {
            break;
        }
        let t = Instant::now();
        while bound < n {
            let (transport, port) = nth_port(bound);
            holder.bind_port(transport, port).expect("bind before");
            bound += 1;
        }
        if n > 0 {
            println!("bind: {n} ports bound in {:?}", t.elapsed());
        }
        let mut group = c.benchmark_group(format!("bind/bound={n}"));
        for transport in [Transport::Tcp, Transport::Udp] {
            let mut latencies: Vec<Duration> = (0..samples)
                .map(|_| bind_once(&mut client, transport))
                .collect();
            latencies.sort();
            let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
            let name = row(transport);
            println!(
                "bind/bound={n}/{name}: {samples} binds, bind_port to active filters: median \
                 {p50:?}, p99 {p99:?}, max {:?}",
                latencies[latencies.len() - 1]
            );
            if as_bench {
                record(&format!("bind/bound={n}/{name}-p99"), p99.as_nanos() as f64);
            }
            group.bench_function(name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| bind_once(&mut client, transport)).sum())
            });
        }
        group.bench_function("peer-ipc-round-trip", |b| {
            b.iter(|| client.stats().expect("stats"))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Two shared cores: short runs.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
