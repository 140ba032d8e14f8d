//! netd's limits as settings, on the real driver in-process: with the defaults, 1,000 clients
//! of one uid each hold a port and an open queue of the default geometry; a queue's ring
//! memory is made when its client opens it, not when it binds; a refusal names the setting
//! to raise; every limit is shown with the instance's properties.

mod common;

use std::time::Instant;

use common::*;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, Transport};
use netmux_netd::core::policy::{DEFAULT_QUEUE_RING_BYTES, LARGE_QUEUE_RING_BYTES};
use netmux_proto::driver::QueueConfig;
use netmux_proto::ErrorCode;

const CLIENTS: usize = 1000;

#[test]
fn a_thousand_clients_of_one_uid_each_bind_a_port_and_open_a_queue_with_the_defaults() {
    raise_descriptor_limit(u64::MAX);
    assert_eq!(
        netmux_ring::layout_of(&QueueConfig::default())
            .unwrap()
            .total_len,
        DEFAULT_QUEUE_RING_BYTES,
        "the default geometry's ring memory is what the defaults are sized for"
    );
    let host = host();
    let socket = host.netd.socket_path().to_owned();
    let start = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut c =
            Client::connect_socket(&socket).unwrap_or_else(|e| panic!("client {i} connects: {e}"));
        c.bind_port(Transport::Udp, 20000 + i as u16)
            .unwrap_or_else(|e| panic!("client {i} binds: {e}"));
        let q = c
            .open_queue()
            .unwrap_or_else(|e| panic!("client {i} opens its queue: {e}"));
        clients.push((c, q));
    }
    let took = start.elapsed();
    eprintln!("{CLIENTS} clients of one uid bound a port and opened a queue in {took:?}");
    let listing = clients[0].0.list_sessions().unwrap();
    let queues: Vec<_> = listing
        .sessions
        .iter()
        .filter_map(|s| s.queue.as_ref())
        .collect();
    assert_eq!(queues.len() + listing.omitted as usize, CLIENTS);
    assert!(queues
        .iter()
        .all(|q| q.attached && q.rings == QueueConfig::default()));
}

#[test]
fn ring_memory_is_made_when_the_client_opens_its_queue_not_when_it_binds() {
    // Rings of 1,024 slots configured: a bound port's queue holds only the least rings.
    let large = QueueConfig {
        slot_size: 2048,
        rx_slots: 1024,
        tx_slots: 1024,
        completion_slots: 1024,
    };
    let host = host_with(|c| c.rings = large);
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    let mut watcher = Client::connect_socket(host.netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5000).unwrap();
    let queue_of = |w: &mut Client| {
        w.list_sessions()
            .unwrap()
            .sessions
            .into_iter()
            .find_map(|s| s.queue.filter(|_| !s.ports.is_empty()))
            .expect("a's queue")
    };
    let bound = queue_of(&mut watcher);
    assert!(!bound.attached);
    assert!(
        bound.ring_bytes * 8 < LARGE_QUEUE_RING_BYTES,
        "a bound port's queue holds room for one frame each way, not the rings: {bound:?}"
    );
    let mut q = a.open_queue().unwrap();
    let opened = queue_of(&mut watcher);
    assert!(opened.attached);
    assert_eq!(opened.ring_bytes, LARGE_QUEUE_RING_BYTES);
    assert_eq!(opened.rings, large);
    // The port's filters followed the queue onto its new rings: a frame for the port arrives.
    let frame = udp_to(5000);
    host.wire().send(&frame);
    let mut got = Vec::new();
    assert!(eventually(std::time::Duration::from_secs(5), || {
        let _ = q.recv_owned(1, &mut got);
        !got.is_empty()
    }));
    assert_eq!(got[0], frame);
}

#[test]
fn a_limit_reached_names_the_setting_to_raise() {
    let host = host_with(|c| c.policy.limits.ring_bytes_per_uid = DEFAULT_QUEUE_RING_BYTES);
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5000).unwrap();
    let _queue = a.open_queue().unwrap();
    let mut b = Client::connect_socket(host.netd.socket_path()).unwrap();
    let e = b.open_queue().unwrap_err();
    assert_eq!(e.refusal().map(|r| r.code), Some(ErrorCode::Limit), "{e}");
    assert!(
        e.to_string().contains("raise limits.ring_bytes_per_uid"),
        "{e}"
    );
    // Binding needs only the small rings, and they fit no more either.
    let e: ClientError = b.bind_port(Transport::Udp, 5001).unwrap_err();
    assert!(
        e.to_string().contains("raise limits.ring_bytes_per_uid"),
        "{e}"
    );
}

#[test]
fn every_limit_and_timeout_is_shown_with_the_instances_properties() {
    let host = host();
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    let instances = a.list_instances().unwrap();
    let props = &instances[0].properties;
    for name in [
        "limits.sessions_per_uid",
        "limits.ports_per_session",
        "limits.ports_per_uid",
        "limits.filters_per_session",
        "limits.ring_bytes_per_session",
        "limits.ring_bytes_per_uid",
        "limits.ring_bytes_per_instance",
        "limits.buffered_bytes_per_uid",
        "timeouts.handshake",
        "timeouts.message",
        "timeouts.reply",
        "timeouts.driver",
        "timeouts.port_grace",
    ] {
        assert!(props.iter().any(|(k, _)| k == name), "{name} in {props:?}");
    }
    assert!(props.contains(&("limits.sessions_per_uid".into(), "1024".into())));
}

#[test]
fn a_client_asks_for_its_rings_sizes_and_the_limit_per_session_names_itself() {
    let host = host();
    let socket = host.netd.socket_path().to_owned();
    let mut watcher = Client::connect_socket(&socket).unwrap();
    let sized = |rxbuf, txbuf| netmux_client::ConnectOptions {
        rxbuf,
        txbuf,
        ..netmux_client::ConnectOptions::default()
    };
    // 2 MiB each way: 1,024 slots; 100 KiB of rx rounds up to 64 slots (a 64 KiB frame).
    let mut bulk =
        Client::connect_socket_with(&socket, &sized(Some(2 << 20), Some(2 << 20))).unwrap();
    bulk.bind_port(Transport::Udp, 6000).unwrap();
    let _q = bulk.open_queue().unwrap();
    let mut small = Client::connect_socket_with(&socket, &sized(Some(100 << 10), None)).unwrap();
    small.bind_port(Transport::Udp, 6001).unwrap();
    let _q2 = small.open_queue().unwrap();
    let listing = watcher.list_sessions().unwrap();
    let rings_of = |port: u16| {
        listing
            .sessions
            .iter()
            .find(|s| s.ports.iter().any(|&(_, p)| p == port))
            .and_then(|s| s.queue.as_ref())
            .map(|q| (q.rings, q.ring_bytes))
            .unwrap()
    };
    let (rings, bytes) = rings_of(6000);
    assert_eq!(
        (rings.rx_slots, rings.tx_slots, rings.completion_slots),
        (1024, 1024, 1024)
    );
    assert_eq!(bytes, LARGE_QUEUE_RING_BYTES);
    let (rings, _) = rings_of(6001);
    assert_eq!((rings.rx_slots, rings.tx_slots), (64, 64));
    // More than a session may have: refused, naming the setting.
    let mut greedy = Client::connect_socket_with(&socket, &sized(Some(64 << 20), None)).unwrap();
    let e = greedy.open_queue().unwrap_err();
    assert_eq!(e.refusal().map(|r| r.code), Some(ErrorCode::Limit), "{e}");
    assert!(
        e.to_string().contains("limits.ring_bytes_per_session"),
        "{e}"
    );
}
