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
//! * `instances_1k`: 1,000 times, an instance with a MAC of its own created, a client joining
//!   it, binding a UDP port and opening its queue, a datagram to that port sent on the cable and
//!   received by the client, then the instance destroyed; prints the median and 99th
//!   percentile from creation to the first frame delivered.
//! * criterion `netd/bind-port/netmux`: `bind_port` (timed) + `close_port` (not timed) on one
//!   session whose queue exists, and the peer in the same run, `netd/bind-port/peer-ipc-round-trip`:
//!   a `stats` round trip, the IPC floor with no driver work (`scripts/bench-report` pairs them).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use netmux_client::blocking::Client;
use netmux_client::{InstanceSpec, MacChoice, Transport};
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

const CREATIONS: usize = 1_000;
/// Creations when the benchmark runs as a test (`cargo test --benches`): it proves the path
/// works; the figures come from `cargo bench`.
const CREATIONS_AS_TEST: usize = 20;

/// A UDP datagram from the cable's peer to `mac`/`ip`, port 7.
fn datagram(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    netmux_testkit::frames::FrameBuilder::ethernet(mac, [2, 0, 0, 0, 0, 0x99])
        .ethertype(0x0800)
        .ipv4(netmux_testkit::frames::Ipv4::new([10, 9, 0, 99], ip, 17))
        .udp(4000, 7)
        .payload(18)
        .finish()
        .data
}

fn instances_1k(host: &Host) {
    let creations = if std::env::args().any(|a| a == "--bench") {
        CREATIONS
    } else {
        CREATIONS_AS_TEST
    };
    let dir = host.runtime_dir();
    let mut admin = Client::connect_to(dir, None).expect("connect");
    let mut latencies = Vec::with_capacity(creations);
    let mut frames = Vec::new();
    for i in 0..creations {
        let name = format!("bench-{i}");
        let mac = [0x02, 0x62, 0x6e, 0, (i >> 8) as u8, i as u8];
        let ip = [10, 9, (i / 200) as u8, (i % 200) as u8 + 2];
        let t = Instant::now();
        admin
            .create_instance(InstanceSpec::temporary(
                name.clone(),
                MacChoice::Given(mac),
                (ip, 16),
            ))
            .expect("create");
        let mut client = Client::connect_to(dir, Some(&name)).expect("join");
        client.bind_port(Transport::Udp, 7).expect("bind");
        let mut queue = client.open_queue().expect("queue");
        host.wire().send(&datagram(mac, ip));
        frames.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        while frames.is_empty() {
            assert!(Instant::now() < deadline, "no frame for {name}");
            if queue.recv_owned(8, &mut frames).unwrap_or(0) == 0 {
                let _ = queue.wait_readable(Some(Duration::from_millis(1)));
            }
        }
        latencies.push(t.elapsed());
        drop(queue);
        drop(client);
        admin.destroy_instance(&name).expect("destroy");
    }
    latencies.sort();
    println!(
        "netd/instances_1k: {creations} instances, creation to first frame delivered: median {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

fn bench(c: &mut Criterion) {
    let host = start();
    sessions_10k(&host.netd);
    instances_1k(&host);
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
