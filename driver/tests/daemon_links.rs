//! The driver end to end through its control socket, as netd drives it, on the unprivileged
//! links: a pcap capture the test builds is replayed into client queues and what the clients
//! transmit is recorded; a virtual cable carries frames to and from a peer thread.

mod daemon_common;

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_common::*;
use netmux_driver::daemon::control::{DriverThread, ServerOptions};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::{self, FrameBatch, Link, LinkError, LinkInfo, LinkSpec, LinkStats};
use netmux_proto::driver::{DriverReply, DriverRequest, QueueId};
use netmux_ring::TxStatus;
use netmux_testkit::TempDir;
use netmux_wire::capture::{self, Frame, TimestampResolution};

const HOST: [u8; 4] = [192, 168, 7, 1];
const REMOTE: [u8; 4] = [192, 168, 7, 2];

/// A link that receives nothing until the test opens the gate (so a capture is not replayed
/// before netd has set up its queues).
struct Gated {
    inner: Box<dyn Link>,
    open: Arc<AtomicBool>,
}

impl Link for Gated {
    fn info(&self) -> &LinkInfo {
        self.inner.info()
    }
    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        if self.open.load(Ordering::Acquire) {
            self.inner.recv(batch, max)
        } else {
            Ok(0)
        }
    }
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        self.inner.send(frames)
    }
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.readiness_fd()
    }
    fn rx_exhausted(&self) -> bool {
        self.open.load(Ordering::Acquire) && self.inner.rx_exhausted()
    }
    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

fn start(spec: &str, control: &std::path::Path) -> (DriverThread, [u8; 6]) {
    start_gated(spec, control, Arc::new(AtomicBool::new(true)))
}

fn start_gated(
    spec: &str,
    control: &std::path::Path,
    open: Arc<AtomicBool>,
) -> (DriverThread, [u8; 6]) {
    let spec: LinkSpec = spec.parse().unwrap();
    let inner = link::open(&spec).unwrap();
    let mac = inner.info().mac;
    let link = Box::new(Gated { inner, open });
    let driver = Driver::new(link, DriverConfig::default());
    (
        DriverThread::spawn(control, driver, ServerOptions::default()).unwrap(),
        mac,
    )
}

#[test]
fn a_replayed_capture_lands_in_the_right_queues_and_only_checked_frames_are_recorded() {
    let dir = TempDir::new("netmux-driver-links-pcap");
    let input = dir.join("in.pcap");
    let output = dir.join("out.pcap");
    let control = dir.join("driver.sock");
    // The link's MAC is derived from the spec, so compute it before writing the capture.
    let spec = format!("pcap:{},{}", input.display(), output.display());
    let mac = link::info_for(&spec.parse().unwrap()).mac;
    let to = |port: u16, n: usize| udp_frame(PEER_MAC, mac, REMOTE, 5000, HOST, port, n);
    let replay = [
        to(53, 1),
        arp_frame(2, REMOTE, HOST),
        to(80, 2),
        to(4242, 3),
        to(53, 4),
    ];
    let frames: Vec<Frame> = replay
        .iter()
        .map(|f| Frame::whole(Duration::ZERO, f.clone()))
        .collect();
    std::fs::write(
        &input,
        capture::write_pcap(&frames, TimestampResolution::Micro).unwrap(),
    )
    .unwrap();

    // Queues and filters first, then the replay.
    let gate = Arc::new(AtomicBool::new(false));
    let (driver, link_mac) = start_gated(&spec, &control, Arc::clone(&gate));
    assert_eq!(link_mac, mac);
    let (mut netd, _) = Netd::connect(&control);
    let mut dns = netd.queue(1);
    let mut web = netd.queue(2);
    let mut own = netd.queue(3);
    netd.ok(&DriverRequest::SetNetdQueue { queue: QueueId(3) });
    netd.bind_udp(1, HOST, 53, mac);
    netd.bind_udp(2, HOST, 80, mac);
    gate.store(true, Ordering::Release);
    let arp = &replay[1];
    assert_eq!(
        recv_n(&mut dns, 3, Duration::from_secs(5)),
        vec![replay[0].clone(), arp.clone(), replay[4].clone()]
    );
    assert_eq!(
        recv_n(&mut web, 2, Duration::from_secs(5)),
        vec![arp.clone(), replay[2].clone()]
    );
    assert_eq!(
        recv_n(&mut own, 2, Duration::from_secs(5)),
        vec![arp.clone(), replay[3].clone()],
        "netd gets the ARP reply and the unmatched frame"
    );
    assert!(drain(&mut dns, Duration::from_millis(20)).is_empty());

    // Transmit: one good frame per queue, and one spoofed.
    let from = |port: u16| udp_frame(mac, PEER_MAC, HOST, port, REMOTE, 5000, 10);
    let spoof = udp_frame(mac, PEER_MAC, [192, 168, 7, 9], 53, REMOTE, 5000, 10);
    dns.send(&[&[&from(53)], &[&spoof]]).unwrap();
    web.send(&[&[&from(80)]]).unwrap();
    let mut completions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while completions.len() < 2 && Instant::now() < deadline {
        dns.completions(8, &mut completions).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let statuses: Vec<TxStatus> = completions.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![TxStatus::Sent, TxStatus::RejectedSourceIp]);
    eventually("web's frame is sent", || {
        let mut c = Vec::new();
        web.completions(8, &mut c).unwrap();
        !c.is_empty()
    });
    let (reply, _) = netd.request(&DriverRequest::Stats);
    let DriverReply::Stats { link, queues, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(link.rx_frames, replay.len() as u64);
    assert_eq!(link.tx_frames, 2);
    assert_eq!(queues.len(), 3);
    drop(netd);
    driver.stop().unwrap();
    let recorded: Vec<Vec<u8>> = capture::read_file(&output)
        .unwrap()
        .into_iter()
        .map(|f| f.data)
        .collect();
    let mut expected = vec![from(53), from(80)];
    let mut recorded_sorted = recorded.clone();
    recorded_sorted.sort();
    expected.sort();
    assert_eq!(recorded_sorted, expected);
}

#[test]
fn frames_cross_a_virtual_cable_to_clients_and_back_to_the_peer() {
    let dir = TempDir::new("netmux-driver-links-virtual");
    let cable = dir.join("cable");
    let peer_path = dir.join("peer");
    let control = dir.join("driver.sock");
    let (driver, mac) = start(&format!("virtual:{}", cable.display()), &control);
    let (mut netd, _) = Netd::connect(&control);
    let mut a = netd.queue(1);
    let mut b = netd.queue(2);
    netd.bind_udp(1, HOST, 53, mac);
    netd.bind_udp(2, HOST, 80, mac);

    // The peer: a host on the other end of the cable, on its own thread.
    let peer = UnixDatagram::bind(&peer_path).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = |port: u16, n: usize| udp_frame(PEER_MAC, mac, REMOTE, 5000, HOST, port, n);
    let sent: Vec<Vec<u8>> = (0..20)
        .map(|i| to(if i % 2 == 0 { 53 } else { 80 }, i))
        .collect();
    let peer_thread = {
        let sent = sent.clone();
        let cable = cable.clone();
        std::thread::spawn(move || {
            for f in &sent {
                peer.send_to(f, &cable).unwrap();
            }
            let mut buf = vec![0u8; 2048];
            let mut got = Vec::new();
            while got.len() < 2 {
                let n = peer.recv(&mut buf).unwrap();
                got.push(buf[..n].to_vec());
            }
            got
        })
    };
    let got_a = recv_n(&mut a, 10, Duration::from_secs(5));
    let got_b = recv_n(&mut b, 10, Duration::from_secs(5));
    let even: Vec<Vec<u8>> = sent.iter().step_by(2).cloned().collect();
    let odd: Vec<Vec<u8>> = sent.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(got_a, even);
    assert_eq!(got_b, odd);

    let reply_a = udp_frame(mac, PEER_MAC, HOST, 53, REMOTE, 5000, 7);
    let reply_b = udp_frame(mac, PEER_MAC, HOST, 80, REMOTE, 5000, 8);
    a.send(&[&[&reply_a]]).unwrap();
    b.send(&[&[&reply_b[..20], &reply_b[20..]]]).unwrap(); // two vectors, one frame
    let mut got = peer_thread.join().unwrap();
    got.sort();
    let mut expected = vec![reply_a, reply_b];
    expected.sort();
    assert_eq!(got, expected);
    drop(netd);
    eventually("queues close when netd leaves", || {
        a.is_closed() && b.is_closed()
    });
    driver.stop().unwrap();
}
