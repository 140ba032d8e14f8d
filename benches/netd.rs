//! netd's port binding latency: from `bind_port` until the reply, which netd sends only after
//! the port's rx and tx filters are installed at the driver — so it bounds the time to an
//! active filter from above. The driver is the real one, on a thread of this process behind its
//! control socket (`netmux_netd::testing`), so this measures netd's IPC, core and filter
//! generation and the driver's installation (verification, compilation, the classifier's
//! update) together.
//!
//! * `sessions_10k`: 10,000 sessions, each connecting, saying hello and binding one port (a
//!   window of 1,000 sessions alive at once, to stay within descriptor limits); prints the
//!   median and 99th percentile of `bind_port`.
//! * criterion `netd/bind-port/netmux`: `bind_port` (timed) + `close_port` (not timed) on one
//!   session whose queue exists, and the peer in the same run, `netd/bind-port/peer-ipc-round-trip`:
//!   a `stats` round trip, the IPC floor with no driver work (`scripts/bench-report` pairs them).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_netd::testing::Host;
use netmux_netd::NetdHandle;
use netmux_ring::QueueConfig;

const SESSIONS: usize = 10_000;
const ALIVE: usize = 1_000;

fn start() -> Host {
    Host::start([2, 0, 0, 0, 0, 1], [10, 0, 0, 1].into(), |config| {
        config.host_stack = false;
        config.policy.limits.sessions_per_uid = ALIVE + 16;
        config.policy.limits.ports_per_uid = ALIVE + 16;
        config.policy.limits.ring_bytes_per_uid = u64::MAX;
        // Small rings: the benchmark is about binding, not about frames.
        config.rings = QueueConfig {
            slot_size: 2048,
            rx_slots: 64,
            tx_slots: 64,
            completion_slots: 32,
        };
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sessions_10k(netd: &NetdHandle) {
    let mut alive = VecDeque::with_capacity(ALIVE);
    let mut latencies = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        if alive.len() == ALIVE {
            alive.pop_front();
        }
        let mut c = Client::connect_socket(netd.socket_path()).expect("connect");
        let t = Instant::now();
        c.get_port(Transport::Udp).expect("bind");
        latencies.push(t.elapsed());
        alive.push_back(c);
    }
    latencies.sort();
    println!(
        "netd/sessions_10k: {SESSIONS} sessions, bind_port to active filter: median {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

fn bench(c: &mut Criterion) {
    let host = start();
    sessions_10k(&host.netd);
    let mut client = Client::connect_socket(host.netd.socket_path()).expect("connect");
    let mut group = c.benchmark_group("netd/bind-port");
    group.bench_function("netmux", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let port = client.get_port(Transport::Tcp).expect("bind");
                total += t.elapsed();
                client.close_port(Transport::Tcp, port).expect("close");
            }
            total
        })
    });
    group.bench_function("peer-ipc-round-trip", |b| {
        b.iter(|| client.stats().expect("stats"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
