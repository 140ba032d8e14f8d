//! Real frames between the Linux kernel and client rings, through the AF_PACKET and TAP
//! backends. Needs root (and `ip` from iproute2), so every test is `#[ignore]`d; the test
//! script runs them as root.
//!
//! Each test creates its own network namespace, runs the real work in a child process inside
//! it (`ip netns exec NS <this test binary> --exact <child test>`), and deletes the namespace
//! in a drop guard, so the veth pair or TAP device it made is gone even when the test fails.
//! The child tests do nothing unless started that way.
//!
//! The path checked is the one the driver's data path will use: link → driver-private batch
//! → `DriverQueue::push_rx` → client rx ring → `ClientQueue::recv_owned`, and back:
//! `ClientQueue::send` → tx ring → `DriverQueue::take_tx` (private copy) → link → kernel.

mod netns_common;

use netns_common::{in_child, kernel_side, mac_of, run, veth, NetNs};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use netmux_driver::link::{self, FrameBatch, Link, LinkSpec};
use netmux_ring::{ClientQueue, DriverQueue, QueueConfig, TxStatus};

const CHILD_ENV: &str = "NETMUX_LINK_ROOT_CHILD";
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const KERNEL_TO_RING: &[u8] = b"netmux: from the kernel into a client ring";
const RING_TO_KERNEL: &[u8] = b"netmux: from a client ring out to the kernel";

/// Carries one UDP datagram from the kernel into a client ring and one from the client ring
/// out to the kernel. `kernel_ip` is the address of the kernel's interface; the link's side
/// is `peer_ip`, with MAC `peer_mac`, and `kernel_mac` is the MAC frames to the kernel need.
fn exchange(
    link: &mut dyn Link,
    kernel_ip: [u8; 4],
    kernel_mac: [u8; 6],
    peer_ip: [u8; 4],
    peer_mac: [u8; 6],
) {
    let mut driver = DriverQueue::create(&QueueConfig::default()).unwrap();
    let fds = driver.client_fds().unwrap();
    let mut client = ClientQueue::from_fds(fds.memfd, fds.doorbell).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);

    // Kernel -> link -> driver -> client ring.
    let ip = |a: [u8; 4]| std::net::Ipv4Addr::from(a);
    let kernel_socket = UdpSocket::bind((ip(kernel_ip), 0)).unwrap();
    kernel_socket
        .send_to(KERNEL_TO_RING, (ip(peer_ip), 9))
        .unwrap();
    let mut batch = FrameBatch::new();
    let mut delivered = Vec::new();
    let found = loop {
        assert!(
            Instant::now() < deadline,
            "the kernel's frame never reached the ring"
        );
        batch.clear();
        link.recv(&mut batch, 64).unwrap();
        for frame in batch.iter() {
            // No classifier here: every frame goes to the one queue.
            driver.push_rx(&[frame]);
        }
        driver.flush();
        client.recv_owned(64, &mut delivered).unwrap();
        if let Some(frame) = delivered
            .iter()
            .find(|f| f.windows(KERNEL_TO_RING.len()).any(|w| w == KERNEL_TO_RING))
        {
            break frame.clone();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(&found[0..6], &peer_mac, "addressed to the link's side");
    assert_eq!(&found[12..14], &[0x08, 0x00], "IPv4");

    // Client ring -> driver (private copy) -> link -> kernel.
    let listener = UdpSocket::bind((ip(kernel_ip), 0)).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(peer_mac, kernel_mac)
        .ipv4(peer_ip, kernel_ip, 64)
        .udp(4242, port)
        .write(&mut frame, RING_TO_KERNEL)
        .unwrap();
    assert_eq!(client.send(&[&[&frame]]).unwrap().sent, 1);
    batch.clear();
    assert_eq!(driver.take_tx(&mut batch, 16).unwrap(), 1);
    let (seq, checked) = batch.iter_tagged().next().unwrap();
    assert_eq!(link.send(&[checked]).unwrap(), 1);
    driver
        .complete(seq, TxStatus::Sent, checked.len() as u32)
        .unwrap();
    driver.flush();
    let mut buf = [0u8; 256];
    let (n, from) = listener
        .recv_from(&mut buf)
        .expect("the kernel received our frame");
    assert_eq!(&buf[..n], RING_TO_KERNEL);
    assert_eq!(from.port(), 4242);
    let mut completions = Vec::new();
    client.completions(16, &mut completions).unwrap();
    assert_eq!(completions.len(), 1);
    assert!(completions[0].status.is_sent());
}

#[test]
#[ignore = "needs root: creates a network namespace and a veth pair"]
fn root_afpacket_carries_kernel_frames_into_client_rings_and_back() {
    if in_child(CHILD_ENV) {
        return;
    }
    NetNs::new("afpacket", CHILD_ENV).run_child("root_child_afpacket");
}

#[test]
#[ignore = "runs inside the namespace made by root_afpacket_carries_kernel_frames_into_client_rings_and_back"]
fn root_child_afpacket() {
    if !in_child(CHILD_ENV) {
        return;
    }
    run("ip", &["link", "set", "lo", "up"]);
    veth("nmx0", "nmx1");
    kernel_side("nmx1", "192.0.2.1/24", "192.0.2.2", PEER_MAC);
    let mut link = link::open(&"afpacket:nmx0".parse::<LinkSpec>().unwrap()).unwrap();
    assert_eq!(link.info().mac, mac_of("nmx0"), "the interface's own MAC");
    exchange(
        link.as_mut(),
        [192, 0, 2, 1],
        mac_of("nmx1"),
        [192, 0, 2, 2],
        PEER_MAC,
    );
}

#[test]
#[ignore = "needs root: creates a network namespace and a TAP device"]
fn root_tap_carries_kernel_frames_into_client_rings_and_back() {
    if in_child(CHILD_ENV) {
        return;
    }
    NetNs::new("tap", CHILD_ENV).run_child("root_child_tap");
}

#[test]
#[ignore = "runs inside the namespace made by root_tap_carries_kernel_frames_into_client_rings_and_back"]
fn root_child_tap() {
    if !in_child(CHILD_ENV) {
        return;
    }
    run("ip", &["link", "set", "lo", "up"]);
    let mut link = link::open(&"tap:nmxtap0".parse::<LinkSpec>().unwrap()).unwrap();
    let link_mac = link.info().mac;
    kernel_side("nmxtap0", "198.51.100.1/24", "198.51.100.2", link_mac);
    exchange(
        link.as_mut(),
        [198, 51, 100, 1],
        mac_of("nmxtap0"),
        [198, 51, 100, 2],
        link_mac,
    );
}
