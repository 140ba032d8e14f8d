//! netd and the real driver, in-process, through the client library: two hosts (a driver and a
//! netd each) on a virtual cable. Ports granted and refused, filters in force before the reply,
//! everything released when a client goes, spoofs rejected by the driver's tx check, and a TCP
//! connection between two smoltcp clients.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant as StdInstant};

use common::*;
use netmux_client::blocking::Client;
use netmux_client::device::QueueDevice;
use netmux_client::Transport;
use netmux_proto::ErrorCode;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

fn two_hosts() -> (Host, Host) {
    Host::pair((MAC_A, IP_A), (MAC_B, IP_B))
}

fn code(e: netmux_client::ClientError) -> ErrorCode {
    e.refusal()
        .map(|r| r.code)
        .unwrap_or_else(|| panic!("not a refusal: {e}"))
}

#[test]
fn netd_says_hello_with_the_real_drivers_link_and_serves_stats() {
    let (a, b) = two_hosts();
    let mut c = Client::connect_socket(a.netd.socket_path()).unwrap();
    assert_eq!(c.host().link.mac, MAC_A, "the link's MAC");
    assert_eq!(c.host().link.mtu, 1500);
    assert_eq!(c.host().ipv4, Some((IP_A.octets(), 24)));
    assert_eq!(c.stats().unwrap().rx_frames, 0);
    let other = Client::connect_socket(b.netd.socket_path()).unwrap();
    assert_eq!(other.host().link.mac, MAC_B, "each link has its own MAC");
}

#[test]
fn ports_are_granted_refused_and_freed_by_netd_on_the_real_driver() {
    let (a, _b) = two_hosts();
    let mut c1 = Client::connect_socket(a.netd.socket_path()).unwrap();
    let mut c2 = Client::connect_socket(a.netd.socket_path()).unwrap();
    c1.bind_port(Transport::Udp, 5000).unwrap();
    assert_eq!(
        code(c2.bind_port(Transport::Udp, 5000).unwrap_err()),
        ErrorCode::InUse
    );
    let _q = c1.open_queue().unwrap();
    drop(c1);
    assert!(eventually(Duration::from_secs(2), || c2
        .bind_port(Transport::Udp, 5000)
        .is_ok()));
}

fn interface(client: &Client, device: &mut QueueDevice) -> Interface {
    let h = client.host();
    let mut iface = Interface::new(
        IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(h.link.mac))),
        device,
        Instant::now(),
    );
    let (ip, prefix) = h.ipv4.unwrap();
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(
            IpAddress::v4(ip[0], ip[1], ip[2], ip[3]),
            prefix,
        ))
        .unwrap();
    });
    iface
}

fn socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 8192]),
        tcp::SocketBuffer::new(vec![0; 8192]),
    )
}

/// Frames the driver's transmit check rejected, on the link and in every queue.
fn rejected(host: &Host) -> u64 {
    host.stats().link.tx_rejected.iter().map(|(_, n)| n).sum()
}

#[test]
fn smoltcp_carries_tcp_between_two_hosts_over_a_virtual_cable() {
    let (a, b) = two_hosts();
    let mut server = Client::connect_socket(a.netd.socket_path()).unwrap();
    server.bind_port(Transport::Tcp, 8080).unwrap();
    let mut sdev = QueueDevice::new(server.open_queue().unwrap(), 1500);
    let mut sif = interface(&server, &mut sdev);
    let mut client = Client::connect_socket(b.netd.socket_path()).unwrap();
    let local = client.get_port(Transport::Tcp).unwrap();
    let mut cdev = QueueDevice::new(client.open_queue().unwrap(), 1500);
    let mut cif = interface(&client, &mut cdev);

    let mut ss = SocketSet::new(vec![]);
    let mut l = socket();
    l.listen(8080).unwrap();
    let sh = ss.add(l);
    let mut cs = SocketSet::new(vec![]);
    let ch = cs.add(socket());
    cs.get_mut::<tcp::Socket>(ch)
        .connect(cif.context(), (IpAddress::Ipv4(IP_A), 8080), local)
        .unwrap();

    // The client sends 20,000 bytes; the server echoes whatever it reads.
    let request: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut echoed) = (0, Vec::new());
    let start = StdInstant::now();
    while echoed.len() < request.len() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stalled at {sent}/{}",
            echoed.len()
        );
        let now = Instant::now();
        cif.poll(now, &mut cdev, &mut cs);
        sif.poll(now, &mut sdev, &mut ss);
        let c = cs.get_mut::<tcp::Socket>(ch);
        if c.can_send() && sent < request.len() {
            sent += c.send_slice(&request[sent..]).unwrap();
        }
        if c.can_recv() {
            c.recv(|d| {
                echoed.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
        let s = ss.get_mut::<tcp::Socket>(sh);
        if s.can_recv() && s.can_send() {
            let mut buf = [0u8; 2048];
            let room = s.send_capacity() - s.send_queue();
            let n = s.recv_slice(&mut buf[..room.min(2048)]).unwrap();
            s.send_slice(&buf[..n]).unwrap();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(echoed, request);
    // The only frames refused are the clients' ARP replies for their host's address, which
    // netd alone answers (reason `filter`): every TCP segment went out.
    let other_reasons = |h: &Host| -> Vec<(String, u64)> {
        h.stats()
            .link
            .tx_rejected
            .into_iter()
            .filter(|(reason, n)| reason != "filter" && *n > 0)
            .collect()
    };
    assert_eq!(
        other_reasons(&a),
        vec![],
        "the drivers rejected only ARP replies"
    );
    assert_eq!(
        other_reasons(&b),
        vec![],
        "the drivers rejected only ARP replies"
    );
    assert_eq!(
        cdev.counters().tx_rejected + sdev.counters().tx_rejected,
        rejected(&a) + rejected(&b)
    );
}

#[test]
fn the_driver_rejects_spoofed_transmissions_with_their_reason() {
    use netmux_ring::TxStatus;
    let (a, _b) = two_hosts();
    let mut c = Client::connect_socket(a.netd.socket_path()).unwrap();
    c.bind_port(Transport::Udp, 5000).unwrap();
    let mac = c.host().link.mac;
    let mut q = c.open_queue().unwrap();
    let frame = |src_mac: [u8; 6], src_ip: Ipv4Addr, sport: u16| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(src_mac, MAC_B)
            .ipv4(src_ip.octets(), IP_B.octets(), 64)
            .udp(sport, 53)
            .write(&mut f, b"query")
            .unwrap();
        f
    };
    let cases = [
        (frame(mac, IP_A, 5000), TxStatus::Sent),
        (
            frame([2, 9, 9, 9, 9, 9], IP_A, 5000),
            TxStatus::RejectedSpoofedSourceMac,
        ),
        (
            frame(mac, Ipv4Addr::new(10, 0, 0, 99), 5000),
            TxStatus::RejectedSourceIp,
        ),
        (frame(mac, IP_A, 5001), TxStatus::RejectedUnownedSourcePort),
    ];
    let batch: Vec<[&[u8]; 1]> = cases.iter().map(|(f, _)| [f.as_slice()]).collect();
    let refs: Vec<&[&[u8]]> = batch.iter().map(|b| &b[..]).collect();
    let first = q.send(&refs).unwrap().first_seq;
    let mut done = Vec::new();
    assert!(eventually(Duration::from_secs(2), || {
        q.completions(16, &mut done).unwrap();
        done.len() == cases.len()
    }));
    for (i, (_, want)) in cases.iter().enumerate() {
        let got = done.iter().find(|c| c.seq == first + i as u64).unwrap();
        assert_eq!(got.status, *want, "case {i}");
    }
}
