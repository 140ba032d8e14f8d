//! The whole driver on a real link: the kernel's UDP datagrams reach the client queue that
//! owns the port through AF_PACKET, and the client's reply goes out through the driver's tx
//! check to the kernel, while a spoofed one is stopped. Needs root (and `ip` from iproute2),
//! so the test is `#[ignore]`d; the test script runs it as root.
//!
//! The test creates its own network namespace and runs the real work in a child process
//! inside it (`ip netns exec NS <this test binary> --exact <child test>`); the namespace, and
//! with it the veth pair, is deleted in a drop guard even when the test fails. Only addresses
//! inside the namespace are used.

mod daemon_common;

mod netns_common;

use netns_common::{in_child, kernel_side, mac_of, run, veth, NetNs};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use daemon_common::*;
use netmux_driver::daemon::control::{DriverThread, ServerOptions};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::{self, LinkSpec};
use netmux_proto::driver::{DriverRequest, QueueId};
use netmux_ring::TxStatus;
use netmux_testkit::TempDir;

const CHILD_ENV: &str = "NETMUX_DAEMON_ROOT_CHILD";
const CLIENT_PORT: u16 = 7777;

#[test]
#[ignore = "needs root: creates a network namespace and a veth pair"]
fn root_driver_carries_kernel_datagrams_to_the_owning_queue_and_checked_replies_back() {
    if in_child(CHILD_ENV) {
        return;
    }
    NetNs::new("afpacket", CHILD_ENV).run_child("root_child_driver_afpacket");
}

#[test]
#[ignore = "runs inside the namespace made by root_driver_carries_kernel_datagrams_to_the_owning_queue_and_checked_replies_back"]
fn root_child_driver_afpacket() {
    if !in_child(CHILD_ENV) {
        return;
    }
    run("ip", &["link", "set", "lo", "up"]);
    veth("nmxd0", "nmxd1");
    kernel_side("nmxd1", "192.0.2.1/24", "192.0.2.2", mac_of("nmxd0"));
    let link = link::open(&"afpacket:nmxd0".parse::<LinkSpec>().unwrap()).unwrap();
    exchange(link, mac_of("nmxd1"), [192, 0, 2, 1], [192, 0, 2, 2]);
}

#[test]
#[ignore = "needs root: creates a network namespace and a TAP device"]
fn root_driver_carries_kernel_datagrams_through_tap_to_the_owning_queue_and_back() {
    if in_child(CHILD_ENV) {
        return;
    }
    NetNs::new("tap", CHILD_ENV).run_child("root_child_driver_tap");
}

#[test]
#[ignore = "runs inside the namespace made by root_driver_carries_kernel_datagrams_through_tap_to_the_owning_queue_and_back"]
fn root_child_driver_tap() {
    if !in_child(CHILD_ENV) {
        return;
    }
    run("ip", &["link", "set", "lo", "up"]);
    let link = link::open(&"tap:nmxdtap0".parse::<LinkSpec>().unwrap()).unwrap();
    kernel_side(
        "nmxdtap0",
        "198.51.100.1/24",
        "198.51.100.2",
        link.info().mac,
    );
    exchange(
        link,
        mac_of("nmxdtap0"),
        [198, 51, 100, 1],
        [198, 51, 100, 2],
    );
}

/// The kernel (at `kernel_ip`, MAC `kernel_mac`) sends a UDP datagram to the client at
/// `client_ip` behind a driver owning `link`; the client answers, once spoofed and once not.
fn exchange(
    link: Box<dyn netmux_driver::link::Link>,
    kernel_mac: [u8; 6],
    kernel_ip: [u8; 4],
    client_ip: [u8; 4],
) {
    let driver_mac = link.info().mac;
    let dir = TempDir::new("netmux-daemon-root");
    let control = dir.join("driver.sock");
    let driver = DriverThread::spawn(
        &control,
        Driver::new(link, DriverConfig::default()),
        ServerOptions::default(),
    )
    .unwrap();
    let (mut netd, _) = Netd::connect(&control);
    let mut client = netd.queue(1);
    let mut own = netd.queue(2);
    netd.ok(&DriverRequest::SetNetdQueue { queue: QueueId(2) });
    netd.bind_udp(1, client_ip, CLIENT_PORT, driver_mac);

    // Kernel -> AF_PACKET -> classifier -> the owning client's ring.
    let kernel = UdpSocket::bind((Ipv4Addr::from(kernel_ip), 0)).unwrap();
    kernel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let kernel_port = kernel.local_addr().unwrap().port();
    kernel
        .send_to(b"to the client", (Ipv4Addr::from(client_ip), CLIENT_PORT))
        .unwrap();
    let got = recv_n(&mut client, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the datagram reached the owning queue");
    assert!(got[0].ends_with(b"to the client"));
    assert!(
        !drain(&mut own, Duration::from_millis(50))
            .iter()
            .any(|f| f.ends_with(b"to the client")),
        "netd does not get a matched frame"
    );

    // Client -> tx check -> AF_PACKET -> kernel; the spoofed one never arrives.
    let reply = |src: [u8; 4], text: &[u8]| {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(driver_mac, kernel_mac)
            .ipv4(src, kernel_ip, 64)
            .udp(CLIENT_PORT, kernel_port)
            .write(&mut frame, text)
            .unwrap();
        frame
    };
    let mut spoofed_ip = client_ip;
    spoofed_ip[3] = 9;
    let spoofed = reply(spoofed_ip, b"spoofed");
    let good = reply(client_ip, b"from the client");
    client.send(&[&[&spoofed], &[&good]]).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = kernel
        .recv_from(&mut buf)
        .expect("the kernel got the reply");
    assert_eq!(&buf[..n], b"from the client");
    assert_eq!(from.ip(), Ipv4Addr::from(client_ip));
    let mut completions = Vec::new();
    eventually("two completions", || {
        client.completions(8, &mut completions).unwrap();
        completions.len() >= 2
    });
    assert_eq!(completions[0].status, TxStatus::RejectedSourceIp);
    assert_eq!(completions[1].status, TxStatus::Sent);
    drop(netd);
    eventually("the queue closes when netd leaves", || client.is_closed());
    driver.stop().unwrap();
}
