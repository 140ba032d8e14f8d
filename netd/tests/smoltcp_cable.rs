//! A real TCP connection between two netd clients, each running smoltcp on a netmux queue:
//! two netds on two fake drivers joined by a cable (until the driver lands, the fake's cable
//! stands in for the virtual link).

mod common;

use std::time::{Duration, Instant as StdInstant};

use common::*;
use netmux_client::blocking::Client;
use netmux_client::device::QueueDevice;
use netmux_client::Transport;
use netmux_netd::fake_driver::FakeDriver;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

fn interface(client: &Client, device: &mut QueueDevice) -> Interface {
    let host = client.host();
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(host.link.mac)));
    let mut iface = Interface::new(config, device, Instant::now());
    let (ip, prefix) = host.ipv4.expect("the host has an IPv4 address");
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::new(
                IpAddress::v4(ip[0], ip[1], ip[2], ip[3]),
                prefix,
            ))
            .unwrap();
    });
    iface
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 8192]),
        tcp::SocketBuffer::new(vec![0; 8192]),
    )
}

#[test]
fn smoltcp_carries_a_tcp_connection_between_two_clients_over_a_cable() {
    let (netd_a, fake_a) = netd_with(MAC_A, IP_A, |_| {});
    let (netd_b, fake_b) = netd_with(MAC_B, IP_B, |_| {});
    let _cable = FakeDriver::cable(&fake_a, &fake_b);

    let mut server = Client::connect_socket(netd_a.socket_path()).unwrap();
    server.bind_port(Transport::Tcp, 8080).unwrap();
    let mut server_dev = QueueDevice::new(server.open_queue().unwrap(), 1500);
    let mut server_if = interface(&server, &mut server_dev);

    let mut client = Client::connect_socket(netd_b.socket_path()).unwrap();
    let local_port = client.get_port(Transport::Tcp).unwrap();
    let mut client_dev = QueueDevice::new(client.open_queue().unwrap(), 1500);
    let mut client_if = interface(&client, &mut client_dev);

    let mut server_sockets = SocketSet::new(vec![]);
    let mut listener = tcp_socket();
    listener.listen(8080).unwrap();
    let sh = server_sockets.add(listener);
    let mut client_sockets = SocketSet::new(vec![]);
    let ch = client_sockets.add(tcp_socket());
    client_sockets
        .get_mut::<tcp::Socket>(ch)
        .connect(
            client_if.context(),
            (IpAddress::Ipv4(IP_A), 8080),
            local_port,
        )
        .unwrap();

    let request: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut echoed = Vec::new();
    let start = StdInstant::now();
    while echoed.len() < request.len() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stalled: sent {sent}, echoed {}",
            echoed.len()
        );
        let now = Instant::now();
        client_if.poll(now, &mut client_dev, &mut client_sockets);
        server_if.poll(now, &mut server_dev, &mut server_sockets);
        let c = client_sockets.get_mut::<tcp::Socket>(ch);
        if c.can_send() && sent < request.len() {
            sent += c.send_slice(&request[sent..]).unwrap();
        }
        if c.can_recv() {
            c.recv(|data| {
                echoed.extend_from_slice(data);
                (data.len(), ())
            })
            .unwrap();
        }
        let s = server_sockets.get_mut::<tcp::Socket>(sh);
        if s.can_recv() && s.can_send() {
            let mut buf = [0u8; 2048];
            let room = s.send_capacity() - s.send_queue();
            let n = s.recv_slice(&mut buf[..room.min(2048)]).unwrap();
            s.send_slice(&buf[..n]).unwrap();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(echoed, request);
    assert_eq!(client_dev.counters().tx_rejected, 0);
    assert_eq!(server_dev.counters().tx_rejected, 0);
    assert_eq!(fake_a.rejected() + fake_b.rejected(), 0);
}
