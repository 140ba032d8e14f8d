//! netd through the client library on the real driver: ports granted and refused as the rules
//! say, filters in force before the reply (a frame sent on the cable right after the reply
//! reaches the client's queue), everything released on close and on a client's death (a child process
//! killed with SIGKILL), limits, malformed messages, netd's host stack answering on the cable,
//! and the driver's transmit check.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use etherparse::PacketBuilder;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, FilterMode, Transport};
use netmux_netd::driver_link::{Recorded, HOST_QUEUE};
use netmux_netd::testing::CabledDriver;
use netmux_proto::client::{ClientReply, ClientRequest};
use netmux_proto::driver::Direction;
use netmux_proto::{frame, Channel, ErrorCode, PROTOCOL_VERSION};
use netmux_ring::TxStatus;

fn code(e: ClientError) -> ErrorCode {
    e.refusal()
        .map(|r| r.code)
        .unwrap_or_else(|| panic!("not a refusal: {e}"))
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

#[test]
fn ports_are_granted_and_refused_as_the_rules_say() {
    let host = host_with(|c| c.ephemeral = 60000..=60001);
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    let mut b = Client::connect_socket(netd.socket_path()).unwrap();
    assert_eq!(a.host().link.mac, MAC_A);
    assert_eq!(a.host().ipv4, Some((IP_A.octets(), 24)));
    assert!(a.host().ipv6_link_local.is_some());

    assert_eq!(a.bind_port(Transport::Udp, 5000).unwrap(), 5000);
    let e = b.bind_port(Transport::Udp, 5000).unwrap_err();
    assert_eq!(code(e), ErrorCode::InUse);
    assert_eq!(
        b.bind_port(Transport::Tcp, 5000).unwrap(),
        5000,
        "TCP is separate"
    );

    let privileged = b.bind_port(Transport::Tcp, 80);
    if is_root() {
        assert_eq!(privileged.unwrap(), 80);
    } else {
        let e = privileged.unwrap_err();
        assert!(e.to_string().contains("privileged"), "{e}");
        assert_eq!(code(e), ErrorCode::Denied);
    }
    assert_eq!(
        code(a.bind_port(Transport::Udp, 0).unwrap_err()),
        ErrorCode::Protocol
    );

    let p1 = a.get_port(Transport::Udp).unwrap();
    let p2 = b.get_port(Transport::Udp).unwrap();
    let mut got = [p1, p2];
    got.sort();
    assert_eq!(got, [60000, 60001]);
    assert_eq!(
        code(a.get_port(Transport::Udp).unwrap_err()),
        ErrorCode::Limit
    );
    // Closing is only for the owner.
    assert_eq!(
        code(b.close_port(Transport::Udp, 5000).unwrap_err()),
        ErrorCode::NotFound
    );
}

#[test]
fn a_ports_filters_are_in_force_before_the_reply_and_gone_before_it_is_free() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 7000).unwrap();
    // The reply is back: the driver must already hold both filters for this port.
    let filters = host.driver.filters();
    let bound: Vec<_> = filters
        .iter()
        .filter(|f| {
            f.binding
                .is_some_and(|b| b.port == 7000 && b.protocol == 17)
        })
        .collect();
    let rx: Vec<_> = bound
        .iter()
        .filter(|f| f.direction == Direction::Rx)
        .collect();
    assert_eq!(
        rx.len(),
        4,
        "one rx filter per host address (IPv4, IPv6), and the subnet and limited broadcasts"
    );
    assert_eq!(bound.len(), 6, "and one tx filter per host address");
    let queue = rx[0].queue;
    assert_ne!(queue, HOST_QUEUE);
    assert_eq!(
        filters
            .iter()
            .filter(|f| f.queue == queue
                && f.direction == Direction::Tx
                && f.expr.contains("udp src port 7000"))
            .count(),
        2
    );

    // And it works: a datagram to the port lands in the client's queue, and in no other.
    let mut q = a.open_queue().unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(IP_B.octets(), IP_A.octets(), 64)
        .udp(1234, 7000)
        .write(&mut frame, b"to port 7000")
        .unwrap();
    host.wire().send(&frame);
    let mut got = Vec::new();
    assert!(eventually(Duration::from_secs(2), || {
        q.recv_owned(8, &mut got).unwrap();
        !got.is_empty()
    }));
    assert_eq!(got, [frame]);
    let queues = host.stats().queues;
    let received: Vec<_> = queues
        .iter()
        .filter(|(_, c)| c.rx_frames > 0)
        .map(|(q, c)| (*q, c.rx_frames))
        .collect();
    assert_eq!(received, [(queue, 1)], "only the port's queue received it");

    // Close: the filters go, then the port is free for someone else.
    a.close_port(Transport::Udp, 7000).unwrap();
    assert!(!host
        .driver
        .filters()
        .iter()
        .any(|f| f.binding.is_some_and(|b| b.port == 7000) || f.expr.contains("src port 7000")));
    let mut b = Client::connect_socket(netd.socket_path()).unwrap();
    b.bind_port(Transport::Udp, 7000).unwrap();
}

#[test]
fn a_failed_installation_refuses_the_port_and_leaves_it_free() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.open_queue().unwrap();
    host.driver.refuse_installs(true);
    assert_eq!(
        code(a.bind_port(Transport::Tcp, 8443).unwrap_err()),
        ErrorCode::Driver
    );
    assert!(!host
        .driver
        .filters()
        .iter()
        .any(|f| f.binding.is_some_and(|b| b.port == 8443)));
    host.driver.refuse_installs(false);
    a.bind_port(Transport::Tcp, 8443).unwrap();
}

/// netd's ports file follows binds, closes and a session's end within a tick or so (it is
/// brought up to date only when the ports changed, from a copy made under netd's lock).
#[test]
fn the_ports_file_follows_binds_closes_and_a_sessions_end() {
    let host = host();
    let netd = &host.netd;
    let file = host.runtime_dir().join("ports");
    let uid = rustix::process::getuid().as_raw();
    let has =
        |line: &str| std::fs::read_to_string(&file).is_ok_and(|t| t.lines().any(|l| l == line));
    let (tcp, udp) = (
        format!("{uid} default tcp 8080"),
        format!("{uid} default udp 5353"),
    );
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Tcp, 8080).unwrap();
    a.bind_port(Transport::Udp, 5353).unwrap();
    assert!(eventually(Duration::from_secs(5), || has(&tcp) && has(&udp)));
    a.close_port(Transport::Tcp, 8080).unwrap();
    assert!(eventually(Duration::from_secs(5), || !has(&tcp) && has(&udp)));
    a.bind_port(Transport::Tcp, 8080).unwrap();
    assert!(eventually(Duration::from_secs(5), || has(&tcp)));
    drop(a);
    assert!(eventually(Duration::from_secs(5), || !has(&tcp) && !has(&udp)));
}

#[test]
fn a_closed_session_releases_ports_filters_and_queue_in_order() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 6000).unwrap();
    a.bind_port(Transport::Tcp, 6001).unwrap();
    let _q = a.open_queue().unwrap();
    let queue = host
        .driver
        .queues()
        .into_iter()
        .find(|q| *q != HOST_QUEUE)
        .unwrap();
    drop(a);
    assert!(eventually(Duration::from_secs(2), || host.driver.queues()
        == vec![HOST_QUEUE]));
    assert!(host.driver.filters().iter().all(|f| f.queue == HOST_QUEUE));
    // Order: every removal of the queue's filters comes before its destruction.
    let events = host.driver.events();
    let destroyed = events
        .iter()
        .position(|e| *e == Recorded::DestroyQueue(queue))
        .unwrap();
    let removals: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Recorded::Remove(q, _) if *q == queue))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        removals.len(),
        2 * 4 + 2 + 2,
        "two ports x (2 rx + 2 tx), the UDP port's 2 broadcast rx, ARP tx and neighbour \
         discovery tx"
    );
    assert!(removals.iter().all(|&i| i < destroyed));
    let mut b = Client::connect_socket(netd.socket_path()).unwrap();
    b.bind_port(Transport::Udp, 6000).unwrap();
    b.bind_port(Transport::Tcp, 6001).unwrap();
}

const CHILD_ENV: &str = "NETMUX_TEST_CHILD_SOCKET";

/// Not a test by itself: the body of the child process that
/// `a_client_killed_with_sigkill_frees_everything` starts and kills.
#[test]
fn child_process_binds_and_waits() {
    let Some(socket) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut c = Client::connect_socket(std::path::Path::new(&socket)).unwrap();
    c.bind_port(Transport::Udp, 9100).unwrap();
    c.bind_port(Transport::Tcp, 9101).unwrap();
    let _q = c.open_queue().unwrap();
    println!("bound");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_client_killed_with_sigkill_frees_everything() {
    let host = host();
    let netd = &host.netd;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_binds_and_waits",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, netd.socket_path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("bound") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
    }
    assert_eq!(host.driver.queues().len(), 2);
    let sessions = netmux_netd::server::lock(&netd.state()).sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].creds.pid, child.id());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(eventually(Duration::from_secs(2), || host.driver.queues()
        == vec![HOST_QUEUE]));
    assert!(host.driver.filters().iter().all(|f| f.queue == HOST_QUEUE));
    let mut c = Client::connect_socket(netd.socket_path()).unwrap();
    c.bind_port(Transport::Udp, 9100).unwrap();
    c.bind_port(Transport::Tcp, 9101).unwrap();
}

#[test]
fn limits_per_session_hold() {
    let host = host_with(|c| c.policy.limits.ports_per_session = 2);
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.get_port(Transport::Udp).unwrap();
    a.get_port(Transport::Tcp).unwrap();
    let e = a.get_port(Transport::Udp).unwrap_err();
    assert_eq!(code(e), ErrorCode::Limit);
}

#[test]
fn taps_follow_the_policy() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    let tap = a.open_filter("udp port 53", FilterMode::Tap);
    if is_root() {
        let id = tap.unwrap();
        assert!(host
            .driver
            .filters()
            .iter()
            .any(|f| f.expr == "udp port 53"));
        a.close_filter(id).unwrap();
        assert!(!host
            .driver
            .filters()
            .iter()
            .any(|f| f.expr == "udp port 53"));
    } else {
        assert_eq!(code(tap.unwrap_err()), ErrorCode::Denied);
    }
}

#[test]
fn a_silent_client_is_disconnected_after_the_handshake_timeout() {
    let host = host_with(|c| c.policy.handshake_timeout = Duration::from_millis(200));
    let netd = &host.netd;
    let mut silent = UnixStream::connect(netd.socket_path()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(silent.read(&mut buf).unwrap(), 0, "netd closed the session");
}

fn raw(netd: &netmux_netd::NetdHandle) -> Channel {
    let s = UnixStream::connect(netd.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    Channel::new(s)
}

fn ended(chan: &mut Channel) -> bool {
    matches!(
        chan.recv::<ClientReply>(),
        Err(netmux_proto::ChannelError::Closed | netmux_proto::ChannelError::Io(_))
    ) && {
        let mut buf = [0u8; 1];
        matches!((&mut chan.socket()).read(&mut buf), Ok(0) | Err(_))
    }
}

fn protocol_error(chan: &mut Channel) -> bool {
    matches!(
        chan.recv::<ClientReply>(),
        Ok((ClientReply::Error(e), _)) if e.code == ErrorCode::Protocol
    )
}

#[test]
fn malformed_messages_get_an_error_or_end_only_that_session() {
    let host = host();
    let netd = &host.netd;
    let mut good = Client::connect_socket(netd.socket_path()).unwrap();
    good.bind_port(Transport::Udp, 4000).unwrap();

    // Zero length, a 4 GiB length, a bad header: the framing is lost, the session ends.
    for header in [
        [0u8, 0, 0, 0, 0, 0, 0, 0],
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        [4, 0, 0, 0, 0, 1, 0, 0],
    ] {
        let mut c = raw(netd);
        c.send_raw(&header, &[]).unwrap();
        assert!(ended(&mut c), "header {header:?}");
    }
    // Truncated: half a message, then the client goes away.
    {
        let mut c = raw(netd);
        let bytes = frame::encode(
            &ClientRequest::Hello {
                version: PROTOCOL_VERSION,
                instance: None,
            },
            0,
        )
        .unwrap();
        c.send_raw(&bytes[..bytes.len() / 2], &[]).unwrap();
    }
    // Unknown type, garbage JSON, missing and extra descriptors: an error reply, and the
    // session goes on.
    let mut c = raw(netd);
    let body = br#"{"Teleport":{"to":"mars"}}"#;
    let mut unknown = (body.len() as u32).to_le_bytes().to_vec();
    unknown.extend_from_slice(&[0, 0, 0, 0]);
    unknown.extend_from_slice(body);
    c.send_raw(&unknown, &[]).unwrap();
    assert!(protocol_error(&mut c));
    c.send_raw(&[3, 0, 0, 0, 0, 0, 0, 0, b'x', b'y', b'z'], &[])
        .unwrap();
    assert!(protocol_error(&mut c));
    let mut missing = frame::encode(&ClientRequest::Stats, 0).unwrap();
    missing[4] = 2;
    c.send_raw(&missing, &[]).unwrap();
    assert!(protocol_error(&mut c));
    let memfd = rustix::fs::memfd_create("extra", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let plain = frame::encode(&ClientRequest::Stats, 0).unwrap();
    c.send_raw(&plain, &[memfd.as_fd()]).unwrap();
    assert!(protocol_error(&mut c));
    let announced = frame::encode(&ClientRequest::Stats, 1).unwrap();
    c.send_raw(&announced, &[memfd.as_fd()]).unwrap();
    assert!(protocol_error(&mut c), "requests carry no descriptors");
    // Before hello, every request is refused; after it, served.
    for request in [
        ClientRequest::GetPort {
            transport: Transport::Udp,
        },
        ClientRequest::OpenQueue,
        ClientRequest::Stats,
        ClientRequest::CloseFilter { filter: 1 },
    ] {
        c.send(&request, &[]).unwrap();
        assert!(protocol_error(&mut c), "{request:?} before hello");
    }
    c.send(
        &ClientRequest::Hello {
            version: PROTOCOL_VERSION,
            instance: None,
        },
        &[],
    )
    .unwrap();
    assert!(matches!(
        c.recv::<ClientReply>().unwrap().0,
        ClientReply::Hello { .. }
    ));
    // A wrong version ends the session.
    let mut v = raw(netd);
    v.send(
        &ClientRequest::Hello {
            version: 999,
            instance: None,
        },
        &[],
    )
    .unwrap();
    assert!(matches!(
        v.recv::<ClientReply>().unwrap().0,
        ClientReply::Error(e) if e.code == ErrorCode::Version
    ));
    assert!(ended(&mut v));

    // The well-behaved client never noticed.
    assert_eq!(good.bind_port(Transport::Udp, 4001).unwrap(), 4001);
    assert_eq!(
        code(good.bind_port(Transport::Udp, 4000).unwrap_err()),
        ErrorCode::InUse
    );
}

#[test]
fn the_tokio_client_does_what_the_blocking_one_does() {
    let host = host();
    let netd = &host.netd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = netmux_client::nonblocking::AsyncClient::connect_socket(netd.socket_path())
            .await
            .unwrap();
        assert_eq!(c.host().link.mac, MAC_A);
        let p = c.get_port(Transport::Tcp).await.unwrap();
        assert!(host
            .driver
            .filters()
            .iter()
            .any(|f| f.binding.is_some_and(|b| b.port == p)));
        let _q = c.open_queue().await.unwrap();
        let stats = c.stats().await.unwrap();
        assert_eq!(stats.rx_frames, 0);
        c.close_port(Transport::Tcp, p).await.unwrap();
        let e = c.close_port(Transport::Tcp, p).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::NotFound);
    });
}

#[test]
fn the_host_stack_answers_arp_for_the_host_address() {
    let host = host();
    let mut request = Vec::new();
    PacketBuilder::ethernet2(MAC_B, [0xff; 6])
        .arp(
            etherparse::ArpEthIpv4Packet {
                operation: etherparse::ArpOperation::REQUEST,
                sender_mac: MAC_B,
                sender_ipv4: IP_B.octets(),
                target_mac: [0; 6],
                target_ipv4: IP_A.octets(),
            }
            .into(),
        )
        .write(&mut request)
        .unwrap();
    host.wire().send(&request);
    let reply = host
        .wire()
        .recv(Duration::from_secs(2))
        .expect("an answer on the cable");
    assert_eq!(reply[..6], MAC_B);
    assert_eq!(reply[6..12], MAC_A);
    assert_eq!(reply[20..22], [0, 2], "an ARP reply");
}

const UNPRIVILEGED_ENV: &str = "NETMUX_TEST_UNPRIVILEGED_SOCKET";

/// Not a test by itself: the body of the child that
/// `an_unprivileged_uid_is_refused_privileged_ports_and_taps` runs as uid 65534.
#[test]
fn child_process_tries_privileged_things() {
    let Some(socket) = std::env::var_os(UNPRIVILEGED_ENV) else {
        return;
    };
    let mut c = Client::connect_socket(std::path::Path::new(&socket)).unwrap();
    let e = c.bind_port(Transport::Tcp, 80).unwrap_err();
    assert_eq!(code(e), ErrorCode::Denied);
    let e = c.open_filter("tcp", FilterMode::Tap).unwrap_err();
    assert_eq!(code(e), ErrorCode::Denied);
    let e = c.open_filter("tcp", FilterMode::Exclusive).unwrap_err();
    assert_eq!(code(e), ErrorCode::Denied);
    assert_eq!(c.bind_port(Transport::Tcp, 8080).unwrap(), 8080);
    println!("unprivileged checks passed");
}

#[test]
fn an_unprivileged_uid_is_refused_privileged_ports_and_taps() {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        // Without root we cannot become another uid; this process is the unprivileged case.
        let host = host();
        let netd = &host.netd;
        let mut c = Client::connect_socket(netd.socket_path()).unwrap();
        assert_eq!(
            code(c.bind_port(Transport::Tcp, 80).unwrap_err()),
            ErrorCode::Denied
        );
        return;
    }
    let host = host_with(|c| {
        c.policy.privileged_uids.insert(65533);
    });
    let netd = &host.netd;
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_tries_privileged_things",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED_ENV, netd.socket_path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("unprivileged checks passed"),
        "child: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn two_hundred_sessions_with_queues_leave_no_descriptor_port_or_queue_behind() {
    // Default rings are 4 MiB; the default per-uid budget (64 MiB) would stop at 15 queues.
    let host = host_with(|c| c.policy.limits.ring_bytes_per_uid = 1 << 30);
    let netd = &host.netd;
    // Warm up: the first session creates what netd keeps for its life.
    drop(Client::connect_socket(netd.socket_path()).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let before = open_descriptors();
    for round in 0..4 {
        let mut clients = Vec::new();
        for _ in 0..50 {
            let mut c = Client::connect_socket(netd.socket_path()).unwrap();
            let p = c.get_port(Transport::Udp).unwrap();
            c.bind_port(Transport::Tcp, p).unwrap();
            let q = c.open_queue().unwrap();
            clients.push((c, q));
        }
        assert_eq!(host.driver.queues().len(), 51, "round {round}");
        drop(clients);
        assert!(eventually(Duration::from_secs(5), || host
            .driver
            .queues()
            .len()
            == 1));
    }
    assert!(host.driver.filters().iter().all(|f| f.queue == HOST_QUEUE));
    let state = netd.state();
    assert!(eventually(Duration::from_secs(5), || {
        netmux_netd::server::lock(&state).sessions().is_empty()
    }));
    let core_ports = netmux_netd::server::lock(&state)
        .core()
        .ports()
        .ephemeral_free(netmux_netd::core::Transport::Udp);
    assert_eq!(core_ports, 65535 - 49152 + 1);
    assert!(
        eventually(Duration::from_secs(5), || open_descriptors() <= before),
        "descriptors: {before} before, {} after",
        open_descriptors()
    );
}

fn udp_frame(dst_port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(IP_B.octets(), IP_A.octets(), 64)
        .udp(1234, dst_port)
        .write(&mut frame, b"anyone there?")
        .unwrap();
    frame
}

#[test]
fn the_host_answers_for_unbound_ports_and_leaves_bound_ones_to_their_client() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5300).unwrap();
    let mut q = a.open_queue().unwrap();

    host.wire().send(&udp_frame(5301));
    let answer = host
        .wire()
        .recv(Duration::from_secs(2))
        .expect("an answer on the cable");
    // ICMP (protocol 1), type 3 code 3, quoting our datagram's UDP header.
    assert_eq!(answer[23], 1);
    assert_eq!(answer[34..36], [3, 3]);
    assert_eq!(answer[30..34], IP_B.octets());

    host.wire().send(&udp_frame(5300));
    let mut got = Vec::new();
    assert!(eventually(Duration::from_secs(2), || {
        q.recv_owned(8, &mut got).unwrap();
        !got.is_empty()
    }));
    assert!(
        host.wire().recv_for(Duration::from_millis(100)).is_empty(),
        "no ICMP for a bound port"
    );
}

#[test]
fn a_transmission_with_a_foreign_source_mac_is_rejected_and_reported() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5400).unwrap();
    let mut q = a.open_queue().unwrap();
    let mut spoofed = Vec::new();
    PacketBuilder::ethernet2([0x02, 9, 9, 9, 9, 9], MAC_B)
        .ipv4(IP_A.octets(), IP_B.octets(), 64)
        .udp(5400, 1234)
        .write(&mut spoofed, b"not me")
        .unwrap();
    assert_eq!(q.send(&[&[&spoofed]]).unwrap().sent, 1);
    let mut completions = Vec::new();
    assert!(eventually(Duration::from_secs(1), || {
        q.completions(8, &mut completions).unwrap();
        !completions.is_empty()
    }));
    assert_eq!(completions[0].status, TxStatus::RejectedSpoofedSourceMac);
    let queue = host
        .driver
        .queues()
        .into_iter()
        .find(|q| *q != HOST_QUEUE)
        .unwrap();
    let rejected: u64 = host
        .queue_counters(queue)
        .tx_rejected
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(rejected, 1, "the driver counts the rejection");
    assert!(
        host.wire().recv_for(Duration::from_millis(100)).is_empty(),
        "nothing went on the wire"
    );
}

#[test]
fn when_the_driver_goes_away_sessions_end_new_clients_are_refused_and_ports_stay_unusable() {
    use netmux_netd::core::{PortState, Transport as CoreTransport};
    let mut host = host();
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5500).unwrap();
    let q = a.open_queue().unwrap();
    host.stop_driver();
    assert!(q.is_closed(), "clients see their queue end");
    // Until netd's next tick a request is refused by the driver's absence; then the session
    // ends.
    match a.bind_port(Transport::Udp, 5501) {
        Err(ClientError::Channel(_)) => {}
        Err(e) => assert_eq!(code(e), ErrorCode::Driver),
        Ok(p) => panic!("bound {p} without a driver"),
    }
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            a.stats(),
            Err(ClientError::Channel(_))
        )),
        "netd ends the session"
    );
    let e = Client::connect_socket(host.netd.socket_path()).unwrap_err();
    assert_eq!(code(e), ErrorCode::Driver, "new clients are told why");
    // netd cannot confirm the filters are gone: the port must not be handed out again.
    let state = host.netd.state();
    let port = netmux_netd::server::lock(&state)
        .core()
        .ports()
        .state(CoreTransport::Udp, 5500);
    assert!(matches!(port, PortState::Releasing(_)), "{port:?}");
}

#[test]
fn a_uid_over_its_session_limit_is_refused_at_connect() {
    let host = host_with(|c| c.policy.limits.sessions_per_uid = 1);
    let netd = &host.netd;
    let first = Client::connect_socket(netd.socket_path()).unwrap();
    let e = Client::connect_socket(netd.socket_path()).unwrap_err();
    assert_eq!(code(e), ErrorCode::Limit);
    drop(first);
    assert!(eventually(Duration::from_secs(2), || {
        Client::connect_socket(netd.socket_path()).is_ok()
    }));
}

#[test]
fn framed_io_moves_many_frames_per_call_each_in_several_vectors() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5600).unwrap();
    let mut q = a.open_queue().unwrap();
    // Three frames, each gathered from a header vector and a payload vector, in one call.
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(IP_A.octets(), IP_B.octets(), 64)
                .udp(5600, 1000 + u16::from(i))
                .write(&mut f, &[i; 100])
                .unwrap();
            f
        })
        .collect();
    let split: Vec<[&[u8]; 2]> = frames.iter().map(|f| [&f[..42], &f[42..]]).collect();
    let batch: Vec<&[&[u8]]> = split.iter().map(|s| &s[..]).collect();
    assert_eq!(q.send(&batch).unwrap().sent, 3);
    let mut wire = Vec::new();
    host.wire().recv_until(Duration::from_secs(2), |f| {
        wire.push(f.to_vec());
        (wire.len() == 3).then_some(())
    });
    assert_eq!(wire, frames);

    // And back: three received frames scattered into two vectors each, in one call.
    for f in &frames {
        let mut back = f.clone();
        back[..6].copy_from_slice(&MAC_A);
        back[6..12].copy_from_slice(&MAC_B);
        back[26..30].copy_from_slice(&IP_B.octets());
        back[30..34].copy_from_slice(&IP_A.octets());
        back[34..36].copy_from_slice(&1000u16.to_be_bytes());
        back[36..38].copy_from_slice(&5600u16.to_be_bytes());
        host.wire().send(&back);
    }
    let mut heads = [[0u8; 42]; 3];
    let mut bodies = [[0u8; 200]; 3];
    let mut lens = [0usize; 3];
    let mut got = 0;
    assert!(eventually(Duration::from_secs(1), || {
        let mut vectors: Vec<[&mut [u8]; 2]> = heads
            .iter_mut()
            .zip(bodies.iter_mut())
            .skip(got)
            .map(|(h, b)| [&mut h[..], &mut b[..]])
            .collect();
        let mut frames: Vec<&mut [&mut [u8]]> = vectors.iter_mut().map(|v| &mut v[..]).collect();
        got += q.recv(&mut frames, &mut lens[got..]).unwrap();
        got == 3
    }));
    assert_eq!(lens, [142; 3]);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body[..100], [i as u8; 100]);
    }
}

#[test]
fn a_queue_the_driver_failed_to_set_up_does_not_eat_the_ring_budget() {
    let host = host_with(|c| {
        let one_queue = netmux_ring::layout_of(&c.rings).unwrap().total_len;
        c.policy.limits.ring_bytes_per_session = one_queue;
    });
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    host.driver.refuse_installs(true);
    for _ in 0..3 {
        assert_eq!(code(a.open_queue().unwrap_err()), ErrorCode::Driver);
    }
    assert_eq!(
        host.driver.queues(),
        vec![HOST_QUEUE],
        "the half-made queue was destroyed"
    );
    let queues = host.stats().queues;
    assert_eq!(
        queues.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        [HOST_QUEUE],
        "the driver holds no other queue"
    );
    host.driver.refuse_installs(false);
    a.open_queue().unwrap();
}

#[test]
fn a_client_that_never_reads_its_replies_costs_only_itself() {
    let host = host_with(|c| c.reply_timeout = Duration::from_millis(300));
    let netd = &host.netd;
    let mut bystander = Client::connect_socket(netd.socket_path()).unwrap();
    bystander.bind_port(Transport::Udp, 5700).unwrap();
    // Requests as fast as the socket takes them, never a reply read, until netd stops reading.
    let mut flooder = raw(netd);
    let stats = frame::encode(&ClientRequest::Stats, 0).unwrap();
    let hello = frame::encode(
        &ClientRequest::Hello {
            version: PROTOCOL_VERSION,
            instance: None,
        },
        0,
    )
    .unwrap();
    flooder.send_raw(&hello, &[]).unwrap();
    flooder.socket().set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let mut stalled = 0;
    while stalled < 50 {
        match (&mut flooder.socket()).write(&stats) {
            Ok(n) if n == stats.len() => sent += 1,
            Ok(_) => break, // a partial message: netd is not reading any more
            Err(_) => {
                stalled += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    assert!(sent > 100, "the flooder got {sent} requests in");
    // Meanwhile everyone else is served at once.
    let mut other = Client::connect_socket(netd.socket_path()).unwrap();
    assert_eq!(other.bind_port(Transport::Udp, 5701).unwrap(), 5701);
    // And the flooder's session (only) ends after the reply timeout.
    let state = netd.state();
    assert!(eventually(Duration::from_secs(5), || {
        netmux_netd::server::lock(&state).sessions().len() == 2
    }));
    assert_eq!(bystander.bind_port(Transport::Udp, 5702).unwrap(), 5702);
}

#[test]
fn a_second_netd_on_a_live_socket_is_refused_and_a_stale_socket_is_replaced() {
    use netmux_netd::config::Config;
    use netmux_netd::server::ServeError;
    // Each netd needs a driver of its own: a driver serves one netd at a time.
    let (one, two) = (CabledDriver::start(MAC_A), CabledDriver::start(MAC_A));
    let dir = one.dir();
    let first = netmux_netd::spawn(Config::new(dir), Box::new(one.connect())).unwrap();
    assert!(matches!(
        netmux_netd::spawn(Config::new(dir), Box::new(two.connect())),
        Err(ServeError::AlreadyRunning(_))
    ));
    drop(first);
    // A socket file nobody listens on (a netd that was killed): replaced.
    let stale = std::os::unix::net::UnixListener::bind(dir.join("netd.sock.tmp")).unwrap();
    drop(stale);
    std::fs::rename(dir.join("netd.sock.tmp"), dir.join("netd.sock")).unwrap();
    let second = netmux_netd::spawn(Config::new(dir), Box::new(two.connect())).unwrap();
    Client::connect_socket(second.socket_path()).unwrap();
}

#[test]
fn netd_names_its_own_queue_and_the_host_addresses_to_the_driver() {
    let host = host();
    let events = host.driver.events();
    assert_eq!(events[0], Recorded::CreateQueue(HOST_QUEUE));
    let named = events
        .iter()
        .position(|e| *e == Recorded::SetNetdQueue(HOST_QUEUE))
        .expect("netd's queue named");
    let installs = events
        .iter()
        .filter(|e| matches!(e, Recorded::Install(f) if f.queue == HOST_QUEUE))
        .count();
    assert_eq!(installs, 2, "ARP rx and the host's tx filter");
    assert!(events[..named]
        .iter()
        .any(|e| matches!(e, Recorded::Install(_))));
    assert!(events.contains(&Recorded::SetHostAddresses(vec![IP_A.octets()])));
}

#[test]
fn netd_leaves_no_socket_or_directory_it_made_behind() {
    let driver = CabledDriver::start(MAC_A);
    let mut config = netmux_netd::Config::new(driver.runtime_dir());
    config.addrs.ipv4 = Some((IP_A, 24));
    let netd = netmux_netd::spawn(config, Box::new(driver.connect())).unwrap();
    let socket = netd.socket_path().to_owned();
    let dir = socket.parent().unwrap().to_owned();
    assert!(socket.exists());
    netd.stop().unwrap();
    assert!(!socket.exists(), "{} left behind", socket.display());
    assert!(!dir.exists(), "{} left behind", dir.display());

    // A directory that was there before netd started stays.
    let mut config = netmux_netd::Config::new(driver.dir());
    config.addrs.ipv4 = Some((IP_A, 24));
    let netd = netmux_netd::spawn(config, Box::new(driver.connect())).unwrap();
    netd.stop().unwrap();
    assert!(driver.dir().exists());
}

#[test]
fn a_port_let_go_is_bound_by_the_next_client_at_once_though_netd_still_releases_it() {
    let host = host();
    let netd = &host.netd;
    for round in 0..50 {
        let mut a = Client::connect_socket(netd.socket_path()).unwrap();
        assert_eq!(a.bind_port(Transport::Udp, 5100).unwrap(), 5100);
        if round % 2 == 0 {
            a.close_port(Transport::Udp, 5100).unwrap();
        } else {
            drop(a);
        }
        // netd may still be removing the port's filters: it answers `Again`, and the library
        // asks again rather than hand the passing state to its caller.
        let mut b = Client::connect_socket(netd.socket_path()).unwrap();
        let bound = loop {
            match b.bind_port(Transport::Udp, 5100) {
                // A dropped session's end reaches netd after the next one's request at worst.
                Err(e) if round % 2 == 1 && code_of(&e) == Some(ErrorCode::InUse) => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                r => break r,
            }
        };
        assert_eq!(bound.unwrap(), 5100, "round {round}");
        // Let go for the next round's first client, which may find it still being released.
        b.close_port(Transport::Udp, 5100).unwrap();
    }
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    e.refusal().map(|r| r.code)
}
