//! Many clients on one host, the whole of them: N client sessions each bind a UDP
//! port, open a queue, receive a datagram from a peer on the virtual cable and answer it, then
//! end; afterwards no descriptor and no ring mapping is left in the process (the driver, netd
//! and every client live here, so all three are counted) and the driver has no client queue.
//! 2,000 sessions in the normal suite; 10,000 by name (the name has `soak_`, which
//! `scripts/test` leaves out with the other long tests):
//!
//! ```text
//! cargo test --release -p netmux-netd --test scale -- --ignored soak_ --nocapture
//! ```
//!
//! which needs about 80,000 descriptors in this one process (a socket and three queue
//! descriptors on each side, and the driver's): the test raises its own limit, up to the hard
//! limit, or beyond it when it may (as root).

mod common;

use std::time::{Duration, Instant};

use common::*;
use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_ring::ClientQueue;

/// The first port the sessions bind.
const FIRST_PORT: u16 = 20_000;

/// The descriptors this process has open.
fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Ring memory mapped into this process (queues of the driver's and the clients' ends).
fn ring_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().filter(|l| l.contains("netmux-queue")).count())
        .unwrap_or(0)
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn sessions_exchange_a_frame_each_and_leave_nothing_behind(sessions: usize) {
    let need = 8 * sessions as u64 + 1024;
    let limit = raise_descriptor_limit(need);
    assert!(
        limit >= need,
        "{sessions} sessions in one process need {need} descriptors; the limit is {limit} \
         (run as root, or raise the hard limit: ulimit -Hn)"
    );
    let host = host_with(|c| {
        let limits = &mut c.policy.limits;
        limits.sessions_per_uid = sessions + 16;
        limits.ports_per_uid = sessions + 16;
        limits.ring_bytes_per_uid = u64::MAX;
        limits.ring_bytes_per_instance = u64::MAX;
    });
    let socket = host.netd.socket_path().to_owned();
    let (fds_before, maps_before, rss_before) = (descriptors(), ring_mappings(), rss_kib());

    let start = Instant::now();
    let mut clients: Vec<(Client, ClientQueue, u16)> = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let port = FIRST_PORT + i as u16;
        let mut c =
            Client::connect_socket(&socket).unwrap_or_else(|e| panic!("session {i} connects: {e}"));
        c.bind_port(Transport::Udp, port)
            .unwrap_or_else(|e| panic!("session {i} binds: {e}"));
        let q = c
            .open_queue()
            .unwrap_or_else(|e| panic!("session {i} opens its queue: {e}"));
        clients.push((c, q, port));
    }
    let opened = start.elapsed();
    let rss_open = rss_kib();

    // The peer sends every session a datagram; each answers it; the peer hears every answer.
    let start = Instant::now();
    for &(_, _, port) in &clients {
        host.wire().send(&udp_to(port));
    }
    let wire = host.wire();
    wire.set_nonblocking();
    let mut heard = std::collections::BTreeSet::new();
    let mut answered = 0;
    for (_, q, port) in clients.iter_mut() {
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        while got.is_empty() && Instant::now() < end {
            q.recv_owned(1, &mut got).unwrap();
            if got.is_empty() {
                let _ = q.wait_readable(Some(Duration::from_millis(10)));
            }
        }
        assert_eq!(got.first(), Some(&udp_to(*port)), "session on port {port}");
        let answer = udp_from(*port);
        q.send_wait(&[&[&answer]], Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("session on port {port} answers: {e}"));
        answered += 1;
        // The peer reads as it goes, so the cable never stays full.
        while let Some(frame) = wire.try_recv() {
            heard.insert(frame);
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    while heard.len() < answered && Instant::now() < end {
        match wire.try_recv() {
            Some(frame) => {
                heard.insert(frame);
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let exchanged = start.elapsed();
    for &(_, _, port) in &clients {
        assert!(
            heard.contains(&udp_from(port)),
            "the answer from port {port}"
        );
    }
    let ring_bytes: u64 = {
        let mut watcher = Client::connect_socket(&socket).unwrap();
        let list = watcher.list_sessions().unwrap();
        let shown: u64 = list
            .sessions
            .iter()
            .filter_map(|s| s.queue.as_ref().map(|q| q.ring_bytes))
            .sum();
        // A listing carries as many sessions as fit in one reply; the rest are alike.
        shown / list.sessions.len().max(1) as u64 * sessions as u64
    };

    // Every session ends: nothing of theirs stays.
    let start = Instant::now();
    drop(clients);
    let clean = eventually(Duration::from_secs(30), || {
        descriptors() <= fds_before && ring_mappings() <= maps_before
    });
    let closed = start.elapsed();
    assert!(
        clean,
        "left behind: {} descriptors (before {fds_before}), {} ring mappings (before {maps_before})",
        descriptors(),
        ring_mappings()
    );
    let queues = host.stats().queues.len();
    assert!(
        queues <= 1,
        "the driver keeps {queues} queues (netd's own at most)"
    );
    eprintln!(
        "{sessions} sessions: bound and opened in {opened:.2?} ({:.0} µs each), exchanged a \
         frame each in {exchanged:.2?}, gone in {closed:.2?}; ring memory {} MiB ({} KiB per \
         client); this process's RSS {} MiB before, {} MiB with every queue open ({} KiB per \
         client), {} MiB after",
        opened.as_secs_f64() * 1e6 / sessions as f64,
        ring_bytes >> 20,
        (ring_bytes / sessions as u64) >> 10,
        rss_before >> 10,
        rss_open >> 10,
        rss_open.saturating_sub(rss_before) / sessions as u64,
        rss_kib() >> 10,
    );
}

#[test]
fn two_thousand_sessions_exchange_a_frame_each_and_leave_nothing_behind() {
    sessions_exchange_a_frame_each_and_leave_nothing_behind(2_000);
}

#[test]
#[ignore = "10,000 sessions: run by name (see the module documentation)"]
fn soak_ten_thousand_sessions_exchange_a_frame_each_and_leave_nothing_behind() {
    sessions_exchange_a_frame_each_and_leave_nothing_behind(10_000);
}
