//! The transmit spoof matrix, across processes: a client process holding a real
//! queue transmits one batch in which every frame but one is forged or broken, and the driver
//! process puts only the honest one on the wire.
//!
//! * The driver is the real `netmux-driver` binary on a virtual cable ([`DriverProcess`]);
//!   this test plays the host at the cable's other end ([`CableEnd`]: it reads what goes on the
//!   wire) and netd (it creates the
//!   queues and installs the transmit filters netd installs: `netmux_netd::filters`, built by
//!   the compiler's builders).
//! * The client is this test binary run again with `NETMUX_RELIABILITY_TX_ROLE=client`: it
//!   receives the ring memory and eventfds by `SCM_RIGHTS` (driver -> "netd" -> client, as in
//!   production), transmits the whole matrix in one batch, waits for every tx-completion and
//!   reports the statuses back.
//! * Each case has its expected reason; the completions must carry it, the driver's per-queue
//!   per-reason counters must count it, and the wire must carry exactly the honest frame.
//!
//! The client's queue is granted UDP port 53 on the host's IPv4 address (no IPv6) and ARP
//! requests as the host (replies for the shared address are netd's alone); another queue
//! holds UDP port 80, which the client does not own. A lone IPv4 fragment is held until its
//! datagram times out, so its completion comes last: completions are compared in the order
//! the frames were sent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netmux_driver::reassembly::fragmenter;
use netmux_netd::core::Transport;
use netmux_netd::filters::{self, HostIdentity};
use netmux_proto::driver::{
    Counters, Direction, DriverReply, DriverRequest, FilterId, FilterInstall, PortBinding,
    QueueConfig, QueueId, RxMode,
};
use netmux_proto::{Channel, PROTOCOL_VERSION};
use netmux_ring::{ClientQueue, TxStatus};
use netmux_testkit::bins::DriverProcess;
use netmux_testkit::cable::CableEnd;
use netmux_testkit::frames::{FrameBuilder, Ipv4};

/// Selects the client role when this binary runs as a child process.
const ROLE_ENV: &str = "NETMUX_RELIABILITY_TX_ROLE";
/// The link's MAC, for the client (it builds the same matrix).
const MAC_ENV: &str = "NETMUX_RELIABILITY_TX_MAC";
/// How long any one expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long the wire must stay quiet after the honest frame for "nothing else went out".
const QUIET: Duration = Duration::from_millis(300);
/// Ring sizes: the whole matrix (the oversized frame spans one slot of 2 KiB) fits at once.
const RINGS: QueueConfig = QueueConfig {
    slot_size: 2048,
    rx_slots: 64,
    tx_slots: 64,
    completion_slots: 64,
};
/// The host's address; the client is granted UDP port 53 on it.
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
/// The client's port.
const OWN_PORT: u16 = 53;
/// Another queue's port.
const OTHER_QUEUE_PORT: u16 = 80;
/// A port nobody holds.
const FREE_PORT: u16 = 54;
/// The peer the frames are addressed to.
const REMOTE_MAC: [u8; 6] = [2, 0xee, 0, 0, 0, 2];
const REMOTE_IP: [u8; 4] = [10, 0, 0, 2];
/// A MAC and an IP that are not the host's.
const FOREIGN_MAC: [u8; 6] = [2, 0x66, 0x66, 0x66, 0x66, 0x66];
const FOREIGN_IP: [u8; 4] = [10, 0, 0, 66];
/// The client queue and the other queue.
const CLIENT_QUEUE: QueueId = QueueId(1);
const OTHER_QUEUE: QueueId = QueueId(2);

/// One row of the matrix.
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    want: TxStatus,
}

fn udp(src_mac: [u8; 6], src_ip: [u8; 4], sport: u16) -> FrameBuilder {
    FrameBuilder::ethernet(REMOTE_MAC, src_mac)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(src_ip, REMOTE_IP, 17))
        .udp(sport, 4000)
        .payload(32)
}

fn arp(eth_src: [u8; 6], sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
    arp_op(1, eth_src, sender_mac, sender_ip)
}

fn arp_op(op: u16, eth_src: [u8; 6], sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
    FrameBuilder::ethernet([0xff; 6], eth_src)
        .ethertype(0x0806)
        .arp(op, sender_mac, sender_ip, [0; 6], REMOTE_IP)
        .finish()
        .data
}

/// The matrix, honest frame first, for the link whose MAC is `mac`.
fn matrix(mac: [u8; 6]) -> Vec<Case> {
    let good = udp(mac, HOST_IP, OWN_PORT).finish().data;
    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments follow
    let ipv6 = FrameBuilder::ethernet(REMOTE_MAC, mac)
        .ethertype(0x86dd)
        .ipv6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfe; 16],
            17,
        )
        .udp(OWN_PORT, 4000)
        .payload(8)
        .finish()
        .data;
    let vlan = FrameBuilder::ethernet(REMOTE_MAC, mac)
        .vlan(0x8100, 7)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(HOST_IP, REMOTE_IP, 17))
        .udp(OWN_PORT, 4000)
        .payload(8)
        .finish()
        .data;
    // IEEE's local experimental ethertype.
    let mut other_ethertype = good.clone();
    other_ethertype[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    // Ethernet and the first 12 bytes of the IPv4 header: the source address is missing.
    let cut_in_ip_header = good[..26].to_vec();
    // Cut right after the source port: every field the tx filter reads is there, but the
    // datagram is shorter than its total length says.
    let cut_after_source_port = good[..36].to_vec();
    // Longer than the link's MTU plus an Ethernet and a VLAN header.
    let oversized = udp(mac, HOST_IP, OWN_PORT).payload(1500).finish().data;
    // Datagrams larger than the MTU, in two fragments each: an honest one and one from a port
    // the queue does not own. The driver checks each whole, so the second fragment (no ports
    // in it) carries the reason too.
    // Each datagram has an identification of its own (the lone fragment above keeps the
    // builder's), so that no two are taken for one.
    let split = |port: u16, ident: u16| {
        let mut whole = udp(mac, HOST_IP, port).payload(2000).finish().data;
        whole[18..20].copy_from_slice(&ident.to_be_bytes());
        fragmenter::fragment(&whole, 1480, 0).expect("fragments")
    };
    let honest_parts = split(OWN_PORT, 1);
    let spoofed_parts = split(FREE_PORT, 2);
    let case = |name, frame, want| Case { name, frame, want };
    let mut fragmented = vec![
        case(
            "honest datagram, first fragment",
            honest_parts[0].clone(),
            TxStatus::Sent,
        ),
        case(
            "honest datagram, last fragment",
            honest_parts[1].clone(),
            TxStatus::Sent,
        ),
        case(
            "datagram from an unowned port, first fragment",
            spoofed_parts[0].clone(),
            TxStatus::RejectedUnownedSourcePort,
        ),
        case(
            "datagram from an unowned port, last fragment",
            spoofed_parts[1].clone(),
            TxStatus::RejectedUnownedSourcePort,
        ),
    ];
    let mut cases = vec![
        case("honest", good, TxStatus::Sent),
        case(
            "wrong source MAC",
            udp(FOREIGN_MAC, HOST_IP, OWN_PORT).finish().data,
            TxStatus::RejectedSpoofedSourceMac,
        ),
        case(
            "wrong source IP",
            udp(mac, FOREIGN_IP, OWN_PORT).finish().data,
            TxStatus::RejectedSourceIp,
        ),
        case(
            "wrong source port",
            udp(mac, HOST_IP, FREE_PORT).finish().data,
            TxStatus::RejectedUnownedSourcePort,
        ),
        case(
            "another queue's port",
            udp(mac, HOST_IP, OTHER_QUEUE_PORT).finish().data,
            TxStatus::RejectedUnownedSourcePort,
        ),
        case(
            "TCP from the UDP port",
            FrameBuilder::ethernet(REMOTE_MAC, mac)
                .ethertype(0x0800)
                .ipv4(Ipv4::new(HOST_IP, REMOTE_IP, 6))
                .tcp(OWN_PORT, 4000, 0x02)
                .finish()
                .data,
            TxStatus::RejectedUnownedSourcePort,
        ),
        case("VLAN-tagged", vlan, TxStatus::RejectedEthertypeNotGranted),
        case(
            "another ethertype",
            other_ethertype,
            TxStatus::RejectedEthertypeNotGranted,
        ),
        case(
            "IPv6 with only IPv4 granted",
            ipv6,
            TxStatus::RejectedEthertypeNotGranted,
        ),
        case(
            "ARP with a foreign sender MAC",
            arp(mac, FOREIGN_MAC, HOST_IP),
            TxStatus::RejectedSpoofedSourceMac,
        ),
        case(
            "ARP with a foreign sender IP",
            arp(mac, mac, FOREIGN_IP),
            TxStatus::RejectedSourceIp,
        ),
        case(
            "ARP reply for the shared host address",
            arp_op(2, mac, mac, HOST_IP),
            TxStatus::RejectedByFilter,
        ),
        case("IPv4 fragment", fragment, TxStatus::RejectedFragment),
        case(
            "truncated in the IPv4 header",
            cut_in_ip_header,
            TxStatus::RejectedMalformed,
        ),
        case(
            "truncated after the source port",
            cut_after_source_port,
            TxStatus::RejectedMalformed,
        ),
        case(
            "shorter than Ethernet",
            vec![0xff; 10],
            TxStatus::RejectedMalformed,
        ),
        case("oversized", oversized, TxStatus::RejectedMalformed),
    ];
    cases.append(&mut fragmented);
    cases
}

/// Connects to `driver` as netd; returns the channel and the link's MAC.
fn connect_as_netd(driver: &DriverProcess) -> (Channel, [u8; 6]) {
    let mut ch = Channel::new(driver.connect(PATIENCE));
    let (reply, _) = request(
        &mut ch,
        &DriverRequest::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    let DriverReply::Hello { link, .. } = reply else {
        panic!("{reply:?}");
    };
    (ch, link.mac)
}

fn request(ch: &mut Channel, r: &DriverRequest) -> (DriverReply, Vec<OwnedFd>) {
    ch.send(r, &[]).unwrap();
    ch.recv().unwrap()
}

fn done(ch: &mut Channel, r: &DriverRequest) {
    let (reply, _) = request(ch, r);
    assert_eq!(reply, DriverReply::Done, "{r:?}");
}

fn create_queue(ch: &mut Channel, queue: QueueId) -> Vec<OwnedFd> {
    let (reply, fds) = request(
        ch,
        &DriverRequest::CreateQueue {
            queue,
            config: RINGS,
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
        },
    );
    assert!(
        matches!(reply, DriverReply::QueueCreated { .. }),
        "{reply:?}"
    );
    fds
}

fn install(
    ch: &mut Channel,
    queue: QueueId,
    filter: u64,
    direction: Direction,
    binding: Option<PortBinding>,
    expr: &str,
) {
    let program = netmux_netd::filters::compile(expr).unwrap().to_bytes();
    done(
        ch,
        &DriverRequest::InstallFilter(FilterInstall {
            queue,
            filter: FilterId(filter),
            direction,
            mode: RxMode::Owner,
            binding,
            program,
        }),
    );
}

/// Grants `queue` a UDP port as netd does: its rx and tx filters, with their keys.
fn grant_udp(ch: &mut Channel, host: &HostIdentity, queue: QueueId, port: u16, first_id: u64) {
    let port_filters = filters::port_filters(host, Transport::Udp, port).unwrap();
    let mut id = first_id;
    for (direction, list) in [
        (Direction::Rx, &port_filters.rx),
        (Direction::Tx, &port_filters.tx),
    ] {
        for (expr, key) in list {
            install(ch, queue, id, direction, Some(*key), expr);
            id += 1;
        }
    }
}

fn queue_counters(ch: &mut Channel, queue: QueueId) -> (Counters, Counters) {
    let (reply, _) = request(ch, &DriverRequest::Stats);
    let DriverReply::Stats { link, queues, .. } = reply else {
        panic!("{reply:?}");
    };
    let q = queues
        .into_iter()
        .find(|(id, _)| *id == queue)
        .map(|(_, c)| c)
        .expect("the queue's counters");
    (link, q)
}

/// The client process: attaches to the queue it is handed, transmits the matrix in one batch
/// and reports every completion's status code, in order. Does nothing in an ordinary run.
#[test]
fn client_process_entry_point() {
    let (Ok(role), Ok(mac)) = (std::env::var(ROLE_ENV), std::env::var(MAC_ENV)) else {
        return;
    };
    assert_eq!(role, "client");
    let mac: [u8; 6] = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    // SAFETY: descriptor 3 was set up by `spawn_client` and is owned by nobody else here.
    let parent = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let mut parent = Channel::new(parent);
    let (what, fds) = parent.recv::<String>().unwrap();
    assert_eq!(what, "queue");
    let [memfd, doorbell]: [OwnedFd; 2] = fds.try_into().expect("two fds");
    let mut queue = ClientQueue::from_fds(memfd, doorbell).unwrap();

    let cases = matrix(mac);
    let vectors: Vec<[&[u8]; 1]> = cases.iter().map(|c| [&c.frame[..]]).collect();
    let batch: Vec<&[&[u8]]> = vectors.iter().map(|v| &v[..]).collect();
    let outcome = queue.send(&batch).unwrap();
    assert_eq!(
        outcome.sent,
        cases.len(),
        "the whole matrix fits in the ring"
    );

    let mut completions = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while completions.len() < cases.len() {
        assert!(Instant::now() < deadline, "completions: {completions:?}");
        queue
            .wait_readable(Some(Duration::from_millis(100)))
            .unwrap();
        queue.completions(cases.len(), &mut completions).unwrap();
    }
    let mut codes: Vec<(u64, u32)> = completions
        .iter()
        .map(|c| (c.seq - outcome.first_seq, c.status.code()))
        .collect();
    codes.sort_unstable();
    parent.send(&codes, &[]).unwrap();
}

fn spawn_client(mac: [u8; 6], sock: UnixStream) -> Child {
    let mac_text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "client_process_entry_point",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, "client")
    .env(MAC_ENV, mac_text.join(":"))
    .stdout(Stdio::null());
    netmux_testkit::bins::spawn_with_fd3(cmd, sock)
}

#[test]
fn every_spoofed_or_broken_frame_is_rejected_with_its_reason_and_counted_and_only_the_honest_one_goes_out(
) {
    let driver = DriverProcess::start("tx-matrix");
    let (mut netd, mac) = connect_as_netd(&driver);
    let host = HostIdentity {
        mac,
        ipv4: Some(Ipv4Addr::from(HOST_IP)),
        ipv6: None,
        ipv6_global: None,
    };

    // The host end of the cable: the driver sends to whoever last sent to it.
    let wire = CableEnd::bind(&driver.dir().join("host"), &driver.cable());
    let hello = udp(REMOTE_MAC, REMOTE_IP, 4000).finish().data;
    wire.send(&hello);
    let deadline = Instant::now() + PATIENCE;
    while queue_stats_link_rx(&mut netd) == 0 {
        assert!(Instant::now() < deadline, "the driver never read the cable");
        std::thread::sleep(Duration::from_millis(10));
    }

    let client_fds = create_queue(&mut netd, CLIENT_QUEUE);
    let _other_fds = create_queue(&mut netd, OTHER_QUEUE);
    grant_udp(&mut netd, &host, CLIENT_QUEUE, OWN_PORT, 10);
    let arp_tx = filters::queue_arp_tx(&host).unwrap();
    install(&mut netd, CLIENT_QUEUE, 20, Direction::Tx, None, &arp_tx);
    grant_udp(&mut netd, &host, OTHER_QUEUE, OTHER_QUEUE_PORT, 30);

    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut client = spawn_client(mac, theirs);
    let mut to_client = Channel::new(ours);
    let borrowed: Vec<_> = client_fds.iter().map(|f| f.as_fd()).collect();
    to_client.send(&"queue", &borrowed).unwrap();
    drop(client_fds);
    let (codes, _) = to_client.recv::<Vec<(u64, u32)>>().unwrap();
    assert!(client.wait().unwrap().success(), "the client process");

    // Every completion, in order, with its reason.
    let cases = matrix(mac);
    let got: Vec<(&str, TxStatus)> = codes
        .iter()
        .map(|&(seq, code)| (cases[seq as usize].name, TxStatus::from_code(code)))
        .collect();
    let want: Vec<(&str, TxStatus)> = cases.iter().map(|c| (c.name, c.want)).collect();
    assert_eq!(got, want);

    // The wire carries the honest frame and the honest datagram's fragments, nothing else.
    let honest: Vec<&Case> = cases.iter().filter(|c| c.want.is_sent()).collect();
    for c in &honest {
        let out = wire.recv(PATIENCE).expect("an honest frame goes out");
        assert_eq!(out, c.frame, "{} goes out as sent", c.name);
    }
    if let Some(more) = wire.recv(QUIET) {
        panic!("another frame went out: {more:02x?}");
    }

    // The driver counts each rejection under its reason, for the queue and for the link.
    let mut want_counts: BTreeMap<String, u64> = BTreeMap::new();
    for c in cases.iter().filter(|c| !c.want.is_sent()) {
        *want_counts
            .entry(netmux_driver::daemon::tx_status_name(c.want).to_owned())
            .or_default() += 1;
    }
    let (link, queue) = queue_counters(&mut netd, CLIENT_QUEUE);
    let counted = |c: &Counters| -> BTreeMap<String, u64> {
        c.tx_rejected
            .iter()
            .filter(|(_, n)| *n > 0)
            .cloned()
            .collect()
    };
    assert_eq!(counted(&queue), want_counts, "per-queue rejections");
    assert_eq!(counted(&link), want_counts, "link rejections");
    let sent_bytes: u64 = honest.iter().map(|c| c.frame.len() as u64).sum();
    assert_eq!(
        (queue.tx_frames, queue.tx_bytes),
        (honest.len() as u64, sent_bytes)
    );
    assert_eq!(link.tx_frames, honest.len() as u64);
}

fn queue_stats_link_rx(ch: &mut Channel) -> u64 {
    let (reply, _) = request(ch, &DriverRequest::Stats);
    let DriverReply::Stats { link, .. } = reply else {
        panic!("{reply:?}");
    };
    link.rx_frames
}
