//! The driver's receive and transmit paths, driven in-process and step by step: which queues
//! get which frames, what reaches the wire, the reasons of rejections, taps, reassembly, and
//! the guarantee that the wire sees only the bytes the driver checked.

mod daemon_common;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use daemon_common::*;
use netmux_driver::daemon::{Driver, Response};
use netmux_driver::link::LinkState;
use netmux_driver::reassembly::fragmenter;
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, PortBinding, QueueId, RxMode,
};
use netmux_ring::{ClientQueue, Completion, QueueError, TxStatus};

const LINK_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
const HOST: [u8; 4] = [10, 0, 0, 1];
const REMOTE: [u8; 4] = [10, 0, 0, 2];

fn driver() -> (Driver, Wire) {
    in_process(LINK_MAC)
}

fn queue(driver: &mut Driver, id: u32) -> ClientQueue {
    queue_and_memory(driver, id).0
}

/// A queue, and a second descriptor of its ring memory (what a hostile client holds).
fn queue_and_memory(driver: &mut Driver, id: u32) -> (ClientQueue, OwnedFd) {
    let response = driver.handle(DriverRequest::CreateQueue {
        queue: QueueId(id),
        config: SMALL,
        instance: netmux_proto::driver::DEFAULT_INSTANCE,
    });
    let fds = response.fds.expect("descriptors");
    let memory = fds.memfd.try_clone().unwrap();
    let fds: Vec<OwnedFd> = vec![fds.memfd, fds.doorbell];
    (attach(fds), memory)
}

fn bind_udp(driver: &mut Driver, queue: u32, port: u16) {
    bind_udp_in(driver, queue, u64::from(port) * 10, LINK_MAC, HOST, port);
}

fn to_host(port: u16, payload: usize) -> Vec<u8> {
    udp_frame(PEER_MAC, LINK_MAC, REMOTE, 4000, HOST, port, payload)
}

fn from_host(port: u16) -> Vec<u8> {
    udp_frame(LINK_MAC, PEER_MAC, HOST, port, REMOTE, 4000, 20)
}

fn received(q: &mut ClientQueue) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    q.recv_owned(1024, &mut out).unwrap();
    out
}

fn run(driver: &mut Driver) {
    while driver.poll_rx() + driver.poll_tx() > 0 {}
}

fn completions(q: &mut ClientQueue) -> Vec<Completion> {
    let mut out = Vec::new();
    q.completions(1024, &mut out).unwrap();
    out
}

#[test]
fn each_frame_reaches_exactly_the_queue_whose_filter_matches() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    let mut b = queue(&mut d, 2);
    bind_udp(&mut d, 1, 53);
    bind_udp(&mut d, 2, 80);
    let frames = [
        to_host(53, 10),
        to_host(80, 11),
        to_host(53, 12),
        to_host(80, 13),
    ];
    wire.rx.lock().unwrap().extend(frames.iter().cloned());
    run(&mut d);
    assert_eq!(received(&mut a), vec![frames[0].clone(), frames[2].clone()]);
    assert_eq!(received(&mut b), vec![frames[1].clone(), frames[3].clone()]);
}

#[test]
fn unmatched_frames_go_to_netd_and_are_dropped_without_it() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    let mut netd = queue(&mut d, 100);
    bind_udp(&mut d, 1, 53);
    wire.rx.lock().unwrap().push(to_host(9999, 5));
    run(&mut d);
    assert!(received(&mut netd).is_empty(), "no netd queue named yet");
    let (link, _) = d.stats();
    assert!(
        link.rx_dropped.contains(&("no-receiver".to_string(), 1)),
        "{link:?}"
    );
    ok(
        &mut d,
        DriverRequest::SetNetdQueue {
            queue: QueueId(100),
        },
    );
    let frames = [to_host(9999, 5), to_host(53, 6)];
    wire.rx.lock().unwrap().extend(frames.iter().cloned());
    run(&mut d);
    assert_eq!(received(&mut netd), vec![frames[0].clone()]);
    assert_eq!(received(&mut a), vec![frames[1].clone()]);
}

#[test]
fn arp_replies_and_requests_for_host_addresses_reach_every_queue_exactly_once() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    let mut tap = queue(&mut d, 2);
    let mut netd = queue(&mut d, 100);
    bind_udp(&mut d, 1, 53);
    // A tap that accepts everything must still get the ARP frame once, not twice.
    install(&mut d, 2, 7, Direction::Rx, RxMode::Tap, None, accept_all());
    ok(
        &mut d,
        DriverRequest::SetNetdQueue {
            queue: QueueId(100),
        },
    );
    ok(&mut d, DriverRequest::SetHostAddresses { ipv4: vec![HOST] });
    let reply = arp_frame(2, REMOTE, HOST);
    let request_for_host = arp_frame(1, REMOTE, HOST);
    let request_for_other = arp_frame(1, REMOTE, [10, 0, 0, 77]);
    wire.rx.lock().unwrap().extend([
        reply.clone(),
        request_for_host.clone(),
        request_for_other.clone(),
    ]);
    run(&mut d);
    assert_eq!(
        received(&mut a),
        vec![reply.clone(), request_for_host.clone()]
    );
    assert_eq!(
        received(&mut netd),
        vec![reply.clone(), request_for_host.clone()],
        "netd gets both; the other request matched the tap, so it is not unmatched"
    );
    assert_eq!(
        received(&mut tap),
        vec![reply, request_for_host, request_for_other]
    );
}

#[test]
fn a_full_ring_drops_for_that_queue_only_and_counts_it() {
    let (mut d, wire) = driver();
    let mut slow = queue(&mut d, 1);
    let mut fast = queue(&mut d, 2);
    bind_udp(&mut d, 1, 53);
    install(&mut d, 2, 5, Direction::Rx, RxMode::Tap, None, accept_all());
    let n = SMALL.rx_slots as usize + 10;
    for i in 0..n {
        wire.rx.lock().unwrap().push(to_host(53, i % 50));
        run(&mut d);
        assert_eq!(received(&mut fast).len(), 1, "frame {i}");
    }
    assert_eq!(received(&mut slow).len(), SMALL.rx_slots as usize);
    let (_, queues) = d.stats();
    let slow_stats = &queues.iter().find(|(q, _)| *q == QueueId(1)).unwrap().1;
    let fast_stats = &queues.iter().find(|(q, _)| *q == QueueId(2)).unwrap().1;
    assert_eq!(slow_stats.rx_dropped_full, 10);
    assert_eq!(fast_stats.rx_dropped_full, 0);
    assert_eq!(fast_stats.rx_frames, n as u64);
}

#[test]
fn fragments_are_reassembled_before_classification() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let mut datagram = to_host(53, 1200);
    // Give the header a valid checksum: the reassembler refuses fragments with a bad one.
    let sum = ipv4_checksum(&datagram[14..34]);
    datagram[24..26].copy_from_slice(&sum.to_be_bytes());
    let fragments = fragmenter::fragment(&datagram, 400, 0).expect("fragments");
    assert!(fragments.len() >= 3);
    // Only the first fragment has the UDP header; the filter excludes fragments.
    wire.rx.lock().unwrap().extend(fragments.into_iter().rev());
    run(&mut d);
    let got = received(&mut a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][34..], datagram[34..], "the payload arrives whole");
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn transmitted_frames_pass_only_their_queues_tx_filters_and_rejections_carry_reasons() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let good = from_host(53);
    let mut spoofed_mac = good.clone();
    spoofed_mac[6..12].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    let other_ip = udp_frame(LINK_MAC, PEER_MAC, [10, 0, 0, 9], 53, REMOTE, 4000, 20);
    let other_port = from_host(54);
    let ipv6 = netmux_testkit::frames::FrameBuilder::ethernet(PEER_MAC, LINK_MAC)
        .ethertype(0x86dd)
        .ipv6([0xfe; 16], [0xfd; 16], 17)
        .udp(53, 4000)
        .payload(8)
        .finish()
        .data;
    let mut experimental = good.clone();
    experimental[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments
    let tcp = {
        let mut f = good.clone();
        f[23] = 6;
        f
    };
    let frames: Vec<&[u8]> = vec![
        &good,
        &spoofed_mac,
        &other_ip,
        &other_port,
        &ipv6,
        &experimental,
        &fragment,
        &tcp,
    ];
    let vectors: Vec<[&[u8]; 1]> = frames.iter().map(|f| [*f]).collect();
    let batch: Vec<&[&[u8]]> = vectors.iter().map(|v| &v[..]).collect();
    assert_eq!(a.send(&batch).unwrap().sent, frames.len());
    run(&mut d);
    assert_eq!(*wire.tx.lock().unwrap(), vec![good.clone()]);
    let statuses: Vec<TxStatus> = completions(&mut a).iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        vec![
            TxStatus::Sent,
            TxStatus::RejectedSpoofedSourceMac,
            TxStatus::RejectedSourceIp,
            TxStatus::RejectedUnownedSourcePort,
            TxStatus::RejectedEthertypeNotGranted,
            TxStatus::RejectedEthertypeNotGranted,
            TxStatus::RejectedFragment,
            TxStatus::RejectedUnownedSourcePort,
        ]
    );
    let (link, queues) = d.stats();
    let q = &queues[0].1;
    assert_eq!((q.tx_frames, q.tx_bytes), (1, good.len() as u64));
    assert!(
        q.tx_rejected
            .contains(&("unowned-source-port".to_string(), 2)),
        "{q:?}"
    );
    assert!(
        q.tx_rejected.contains(&("fragment".to_string(), 1)),
        "{q:?}"
    );
    assert_eq!(link.tx_frames, 1);
}

/// The host's IPv6 address in the IPv6 transmit tests.
const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A UDP datagram of `payload` bytes from `[HOST6]:port`, as one (oversized) frame.
fn from_host6(port: u16, payload: usize) -> Vec<u8> {
    let mut remote = HOST6;
    remote[15] = 2;
    netmux_testkit::frames::FrameBuilder::ethernet(PEER_MAC, LINK_MAC)
        .ethertype(0x86dd)
        .ipv6(HOST6, remote, 17)
        .udp(port, 4000)
        .payload(payload)
        .finish()
        .data
}

#[test]
fn transmitted_ipv6_fragments_go_out_all_or_none_as_the_datagram_they_make_up() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    // UDP port 53 on the host's IPv6 address, as netd grants it: a table entry.
    let binding = PortBinding {
        protocol: 17,
        address: HOST6,
        ipv6: true,
        port: 53,
    };
    install(
        &mut d,
        1,
        531,
        Direction::Tx,
        RxMode::Owner,
        Some(binding),
        Vec::new(),
    );
    // 8,000 bytes from the granted port, in 7 fragments sent last first.
    let honest = fragmenter::fragment(&from_host6(53, 8000), 1232, 0x0101_0101).unwrap();
    assert_eq!(honest.len(), 7);
    let reversed: Vec<Vec<u8>> = honest.iter().rev().cloned().collect();
    // The same from a port the queue does not own.
    let spoofed = fragmenter::fragment(&from_host6(54, 3000), 1232, 0x0202_0202).unwrap();
    // A small datagram as an atomic fragment (offset 0, M clear): checked and sent at once.
    let atomic = fragmenter::fragment(&from_host6(53, 100), 1232, 0x0303_0303).unwrap();
    assert_eq!(atomic.len(), 1);
    // A first fragment, then one whose data overlaps it (RFC 5722).
    let whole = from_host6(53, 3000);
    let first = fragmenter::fragment(&whole, 1232, 0x0404_0404).unwrap()[0].clone();
    let overlap = fragmenter::ipv6_fragment(&whole, 8, true, 0x0404_0404, &[0; 16]).unwrap();
    let mut frames: Vec<(Vec<u8>, TxStatus)> = Vec::new();
    frames.extend(reversed.iter().map(|f| (f.clone(), TxStatus::Sent)));
    frames.extend(
        spoofed
            .iter()
            .map(|f| (f.clone(), TxStatus::RejectedUnownedSourcePort)),
    );
    frames.push((atomic[0].clone(), TxStatus::Sent));
    frames.push((first, TxStatus::RejectedFragment));
    frames.push((overlap, TxStatus::RejectedFragment));
    let mut completed = Vec::new();
    for (frame, _) in &frames {
        a.send(&[&[frame]]).unwrap();
        run(&mut d);
        completed.extend(completions(&mut a));
    }
    run(&mut d);
    completed.extend(completions(&mut a));
    completed.sort_by_key(|c| c.seq);
    let got: Vec<(u64, TxStatus)> = completed.iter().map(|c| (c.seq, c.status)).collect();
    let want: Vec<(u64, TxStatus)> = frames
        .iter()
        .enumerate()
        .map(|(i, (_, status))| (i as u64, *status))
        .collect();
    assert_eq!(
        got, want,
        "every fragment completed once, with its datagram's fate"
    );
    // On the wire: the honest fragments exactly as sent, in order of offset, and the atomic
    // fragment; nothing of the refused datagrams.
    let mut on_wire = honest.clone();
    on_wire.push(atomic[0].clone());
    assert_eq!(*wire.tx.lock().unwrap(), on_wire);
    let (_, queues) = d.stats();
    let q = &queues[0].1;
    assert_eq!(q.tx_frames, 8);
    assert!(
        q.tx_rejected
            .contains(&("unowned-source-port".to_string(), spoofed.len() as u64)),
        "{q:?}"
    );
    assert!(
        q.tx_rejected.contains(&("fragment".to_string(), 2)),
        "{q:?}"
    );
    // An admin rule that blocks everything going out judges the whole datagram too: all its
    // fragments complete as blocked, none goes on the wire.
    use netmux_proto::driver::ops::{
        OperatorReply, OperatorRequest, RuleAction, RuleDirection, RuleSpec,
    };
    let Response { reply, .. } = d.handle(DriverRequest::Operator(OperatorRequest::SetFirewall {
        rules: vec![RuleSpec {
            id: 1,
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
            action: RuleAction::Block,
            direction: RuleDirection::Out,
            quick: true,
            queue: None,
            program: accept_all(),
        }],
    }));
    assert_eq!(reply, DriverReply::Operator(OperatorReply::Done));
    let before = wire.tx.lock().unwrap().len();
    let blocked = fragmenter::fragment(&from_host6(53, 8000), 1232, 0x0505_0505).unwrap();
    let mut completed = Vec::new();
    for frame in &blocked {
        a.send(&[&[frame]]).unwrap();
        run(&mut d);
        completed.extend(completions(&mut a));
    }
    assert_eq!(completed.len(), blocked.len());
    assert!(
        completed
            .iter()
            .all(|c| c.status == TxStatus::RejectedByFirewall),
        "{completed:?}"
    );
    assert_eq!(wire.tx.lock().unwrap().len(), before);
}

#[test]
fn while_the_link_is_down_transmissions_complete_with_link_down_and_the_queue_is_kept() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let good = from_host(53);
    let mut spoofed = good.clone();
    spoofed[6..12].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    *wire.state.lock().unwrap() = LinkState::Down;
    d.refresh_link();
    assert_eq!(d.link_state(), LinkState::Down);
    assert_eq!(a.send(&[&[&good], &[&spoofed]]).unwrap().sent, 2);
    run(&mut d);
    assert!(
        wire.tx.lock().unwrap().is_empty(),
        "nothing reaches a link that is down"
    );
    let statuses: Vec<TxStatus> = completions(&mut a).iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [TxStatus::LinkDown, TxStatus::RejectedSpoofedSourceMac],
        "the check still runs; what it accepts waits for no link"
    );
    let (link, queues) = d.stats();
    assert_eq!(link.link_state, Some(LinkState::Down));
    assert!(
        link.tx_rejected.contains(&("link-down".to_string(), 1)),
        "{link:?}"
    );
    assert_eq!(queues.len(), 1, "the queue is kept");

    *wire.state.lock().unwrap() = LinkState::Up;
    d.refresh_link();
    assert_eq!(a.send(&[&[&good]]).unwrap().sent, 1);
    run(&mut d);
    assert_eq!(*wire.tx.lock().unwrap(), vec![good]);
    assert_eq!(completions(&mut a)[0].status, TxStatus::Sent);
    wire.rx.lock().unwrap().push(to_host(53, 10));
    run(&mut d);
    assert_eq!(received(&mut a).len(), 1, "the queue receives again");
    assert_eq!(d.link_state_changes(), 2);
    assert_eq!(d.stats().0.link_state, Some(LinkState::Up));
}

#[test]
fn a_link_gone_for_a_while_says_how_long() {
    let (mut d, wire) = driver();
    assert_eq!(d.link_gone_for(), None);
    *wire.state.lock().unwrap() = LinkState::Gone;
    d.refresh_link();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(d.link_gone_for().unwrap() >= std::time::Duration::from_millis(20));
    *wire.state.lock().unwrap() = LinkState::Up;
    d.refresh_link();
    assert_eq!(d.link_gone_for(), None);
}

#[test]
fn a_frame_longer_than_the_link_carries_is_rejected_as_malformed() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let jumbo = udp_frame(LINK_MAC, PEER_MAC, HOST, 53, REMOTE, 4000, 1500);
    a.send(&[&[&jumbo]]).unwrap();
    run(&mut d);
    assert!(wire.tx.lock().unwrap().is_empty());
    assert_eq!(completions(&mut a)[0].status, TxStatus::RejectedMalformed);
}

#[test]
fn a_queue_without_tx_filters_transmits_nothing() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    let frame = from_host(53);
    a.send(&[&[&frame]]).unwrap();
    run(&mut d);
    assert!(wire.tx.lock().unwrap().is_empty());
    assert_eq!(
        completions(&mut a)[0].status,
        TxStatus::RejectedEthertypeNotGranted
    );
}

#[test]
fn the_wire_sees_only_the_checked_bytes_when_the_client_rewrites_its_ring_during_transmit() {
    let (mut d, wire) = driver();
    // The client's ring memory, opened a second time, as a hostile client would.
    let (mut a, memfd) = queue_and_memory(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let len = rustix::fs::fstat(&memfd).unwrap().st_size as usize;
    let good = from_host(53);
    let mut evil = good.clone();
    evil[26..30].copy_from_slice(&[10, 0, 0, 66]); // someone else's source address
    evil[34..36].copy_from_slice(&22u16.to_be_bytes());
    let rewrites = Arc::new(Mutex::new(0usize));
    {
        let rewrites = Arc::clone(&rewrites);
        let good = good.clone();
        let evil = evil.clone();
        let file = std::fs::File::from(memfd);
        *wire.hook.lock().unwrap() = Some(Box::new(move |_frame: &[u8]| {
            // While the driver transmits: replace every copy of the good frame in the
            // ring memory by the evil one.
            let mut bytes = vec![0u8; len];
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut bytes, 0).unwrap();
            let mut at = 0;
            while let Some(pos) = find(&bytes[at..], &good) {
                file.write_all_at(&evil, (at + pos) as u64).unwrap();
                *rewrites.lock().unwrap() += 1;
                at += pos + good.len();
            }
        }));
    }
    for _ in 0..3 {
        a.send(&[&[&good]]).unwrap();
        run(&mut d);
    }
    assert!(
        *rewrites.lock().unwrap() > 0,
        "the hook found the frame in the ring"
    );
    let on_wire = wire.tx.lock().unwrap().clone();
    assert_eq!(
        on_wire,
        vec![good.clone(); 3],
        "only the checked bytes went out"
    );
    assert!(completions(&mut a)
        .iter()
        .all(|c| c.status == TxStatus::Sent));
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn taps_observe_other_queues_transmissions_but_never_their_own() {
    let (mut d, _wire) = driver();
    let mut a = queue(&mut d, 1);
    let mut tap = queue(&mut d, 2);
    bind_udp(&mut d, 1, 53);
    install(&mut d, 2, 5, Direction::Rx, RxMode::Tap, None, accept_all());
    // The tap queue may transmit from its own port too.
    let binding = udp_binding(HOST, 99);
    install(
        &mut d,
        2,
        6,
        Direction::Tx,
        RxMode::Owner,
        Some(binding),
        udp_tx_program(LINK_MAC, HOST, 99),
    );
    let from_a = from_host(53);
    let from_tap = from_host(99);
    a.send(&[&[&from_a]]).unwrap();
    tap.send(&[&[&from_tap]]).unwrap();
    run(&mut d);
    assert_eq!(received(&mut tap), vec![from_a]);
    assert!(received(&mut a).is_empty(), "a is no tap");
}

#[test]
fn removing_a_filter_stops_delivery_and_destroying_a_queue_closes_it() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    ok(
        &mut d,
        DriverRequest::RemoveFilter {
            queue: QueueId(1),
            filter: FilterId(530),
        },
    );
    wire.rx.lock().unwrap().push(to_host(53, 1));
    run(&mut d);
    assert!(received(&mut a).is_empty());
    ok(&mut d, DriverRequest::DestroyQueue { queue: QueueId(1) });
    assert!(a.is_closed());
}

#[test]
fn a_client_racing_to_rewrite_its_tx_slots_never_gets_an_unchecked_byte_on_the_wire() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut d, wire) = driver();
    let (mut a, memfd) = queue_and_memory(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let layout = *a.layout();
    let file = std::fs::File::from(memfd);
    let stop = Arc::new(AtomicBool::new(false));
    // The scribbler overwrites the source address in every tx slot, over and over.
    let scribbler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..layout.tx.count {
                    let at = layout.tx.slot(i) + netmux_ring::layout::SLOT_HEADER_LEN + 26;
                    let _ = file.write_at(&[10, 0, 0, 66], at as u64);
                    writes += 1;
                }
            }
            writes
        })
    };
    let good = from_host(53);
    let mut sent = 0;
    let mut completed = Vec::new();
    while sent < 2000 {
        sent += a.send(&[&[&good]]).map(|o| o.sent).unwrap_or(0);
        run(&mut d);
        a.completions(64, &mut completed).unwrap();
    }
    run(&mut d);
    a.completions(64, &mut completed).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(scribbler.join().unwrap() > 0);
    let on_wire = wire.tx.lock().unwrap().clone();
    assert!(
        on_wire.iter().all(|f| *f == good),
        "an unchecked frame reached the wire"
    );
    let sent_ok = completed
        .iter()
        .filter(|c| c.status == TxStatus::Sent)
        .count();
    assert_eq!(sent_ok, on_wire.len());
    assert!(completed
        .iter()
        .all(|c| matches!(c.status, TxStatus::Sent | TxStatus::RejectedSourceIp)));
}

#[test]
fn junk_frames_in_either_direction_never_panic_and_every_tx_frame_is_completed() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    let mut netd = queue(&mut d, 100);
    bind_udp(&mut d, 1, 53);
    install(&mut d, 1, 9, Direction::Rx, RxMode::Tap, None, accept_all());
    ok(
        &mut d,
        DriverRequest::SetNetdQueue {
            queue: QueueId(100),
        },
    );
    ok(&mut d, DriverRequest::SetHostAddresses { ipv4: vec![HOST] });
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let v6_fragments = fragmenter::fragment(&from_host6(53, 3000), 1232, 9).expect("fragments");
    let v6_atomic = fragmenter::fragment(&from_host6(53, 10), 1232, 10).expect("fragments");
    let templates = [
        to_host(53, 30),
        arp_frame(1, REMOTE, HOST),
        from_host(53),
        v6_fragments[0].clone(),
        v6_fragments[2].clone(),
        v6_atomic[0].clone(),
    ];
    let (mut sent, mut done) = (0usize, 0usize);
    for round in 0..300 {
        let mut frame = templates[round % templates.len()].clone();
        // IPv6 fragments are kept whole half the time, so that the transmit path gathers
        // damaged ones rather than refusing them as cut short.
        if round % templates.len() < 3 || next() % 2 == 0 {
            let len = (next() % 120) as usize;
            frame.resize(len, 0);
        }
        for _ in 0..(next() % 6) {
            if !frame.is_empty() {
                let at = (next() as usize) % frame.len();
                frame[at] = next() as u8;
            }
        }
        wire.rx.lock().unwrap().push(frame.clone());
        sent += a.send(&[&[&frame]]).map(|o| o.sent).unwrap_or(0);
        run(&mut d);
        let _ = received(&mut a);
        let _ = received(&mut netd);
        done += completions(&mut a).len();
    }
    // Fragments are held until their datagram is whole or its time is up.
    std::thread::sleep(netmux_driver::daemon::tx_fragments::GATHER_TIMEOUT);
    d.tick();
    done += completions(&mut a).len();
    assert_eq!(done, sent, "every frame taken got its completion");
}

#[test]
fn a_client_that_reads_no_completions_stalls_only_itself_and_it_is_counted() {
    let (mut d, wire) = driver();
    let mut slow = queue(&mut d, 1);
    let mut other = queue(&mut d, 2);
    bind_udp(&mut d, 1, 53);
    bind_udp(&mut d, 2, 80);
    let frame = from_host(53);
    let mut sent = 0;
    // Fill the tx ring twice over while never reading completions.
    for _ in 0..4 * SMALL.completion_slots {
        sent += slow.send(&[&[&frame]]).map(|o| o.sent).unwrap_or(0);
        run(&mut d);
    }
    assert_eq!(
        wire.tx.lock().unwrap().len(),
        SMALL.completion_slots as usize,
        "one completion slot per frame in flight"
    );
    assert!(sent > SMALL.completion_slots as usize);
    // The other queue is not held up.
    let theirs = from_host(80);
    other.send(&[&[&theirs]]).unwrap();
    run(&mut d);
    assert_eq!(wire.tx.lock().unwrap().last(), Some(&theirs));
    let (_, queues) = d.stats();
    let stalled = &queues.iter().find(|(q, _)| *q == QueueId(1)).unwrap().1;
    assert!(stalled.tx_flow_control > 0, "{stalled:?}");
    // Reading the completions lets the rest out.
    let mut done = completions(&mut slow).len();
    while done < sent {
        run(&mut d);
        done += completions(&mut slow).len();
    }
    assert_eq!(wire.tx.lock().unwrap().len(), sent + 1);
}

#[test]
fn statistics_name_every_drop_reason_on_the_receive_side() {
    let (mut d, wire) = driver();
    let _a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    let mut datagram = to_host(53, 64);
    let sum = ipv4_checksum(&datagram[14..34]);
    datagram[24..26].copy_from_slice(&sum.to_be_bytes());
    let fragments = fragmenter::fragment(&datagram, 32, 0).expect("fragments");
    let mut dup = fragments[1].clone();
    // Same range, different bytes: an overlap (RFC 5722) discards the datagram.
    let last = dup.len() - 1;
    dup[last] ^= 0xff;
    wire.rx
        .lock()
        .unwrap()
        .extend([fragments[1].clone(), dup, to_host(9, 1)]);
    run(&mut d);
    let (link, _) = d.stats();
    assert!(
        link.rx_dropped
            .iter()
            .any(|(name, n)| name == "reassembly-overlap" && *n > 0),
        "{link:?}"
    );
    assert!(
        link.rx_dropped.contains(&("no-receiver".to_string(), 1)),
        "{link:?}"
    );
    assert_eq!(link.rx_frames, 3);
}

/// `from_host(53)` numbered `i` in its payload.
fn numbered(i: u16) -> Vec<u8> {
    let mut frame = from_host(53);
    frame[42..44].copy_from_slice(&i.to_be_bytes());
    frame
}

#[test]
fn a_busy_link_holds_accepted_frames_and_flow_control_reaches_the_client_losing_nothing() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    *wire.room.lock().unwrap() = Some(5);
    // The client writes until it is told to wait; the driver runs after every write.
    let mut accepted = 0u16;
    let mut done = Vec::new();
    loop {
        match a.send(&[&[&numbered(accepted)]]) {
            Ok(_) => accepted += 1,
            Err(QueueError::WouldBlock { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        run(&mut d);
        done.extend(completions(&mut a));
        assert!(accepted < 10_000, "the client was never held back");
    }
    assert_eq!(
        wire.tx.lock().unwrap().len(),
        5,
        "the link took what it had room for"
    );
    assert!(
        done.iter().all(|c| c.status.is_sent()),
        "nothing is completed as lost while the link is busy: {done:?}"
    );
    // The ring is full: the frames wait in it and in the driver, not on the floor.
    assert!(accepted > 5, "{accepted} accepted");
    let (_, queues) = d.stats();
    let counters = &queues.iter().find(|(q, _)| *q == QueueId(1)).unwrap().1;
    assert!(counters.tx_flow_control >= 1, "{counters:?}");
    // The link drains: every accepted frame goes out, in order, each completed as sent.
    *wire.room.lock().unwrap() = None;
    for _ in 0..1000 {
        run(&mut d);
        done.extend(completions(&mut a));
        if done.len() == usize::from(accepted) {
            break;
        }
    }
    assert_eq!(done.len(), usize::from(accepted));
    assert!(done.iter().all(|c| c.status == TxStatus::Sent), "{done:?}");
    let sent: Vec<Vec<u8>> = wire.tx.lock().unwrap().clone();
    let expected: Vec<Vec<u8>> = (0..accepted).map(numbered).collect();
    assert_eq!(sent, expected, "every accepted frame, once, in order");
    // And the client may write again.
    a.send(&[&[&numbered(accepted)]]).unwrap();
}

#[test]
fn frames_held_for_a_busy_link_complete_as_link_down_when_it_goes_down() {
    let (mut d, wire) = driver();
    let mut a = queue(&mut d, 1);
    bind_udp(&mut d, 1, 53);
    *wire.room.lock().unwrap() = Some(1);
    let frames: Vec<Vec<u8>> = (0..4).map(numbered).collect();
    let refs: Vec<[&[u8]; 1]> = frames.iter().map(|f| [f.as_slice()]).collect();
    let batch: Vec<&[&[u8]]> = refs.iter().map(|r| &r[..]).collect();
    a.send(&batch).unwrap();
    run(&mut d);
    let done = completions(&mut a);
    assert_eq!(done.len(), 1, "three are held: {done:?}");
    *wire.state.lock().unwrap() = LinkState::Down;
    let mut done = Vec::new();
    for _ in 0..100 {
        run(&mut d);
        done.extend(completions(&mut a));
        if done.len() == 3 {
            break;
        }
    }
    assert_eq!(
        done.iter().map(|c| c.status).collect::<Vec<_>>(),
        [TxStatus::LinkDown; 3]
    );
}
