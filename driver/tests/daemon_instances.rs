//! Instances on one link, in the driver: a frame goes only to the instance it is addressed
//! to, two instances bind the same port apart, ARP stays inside its instance, frames between
//! instances on this host are delivered here (hairpin) and not lost on the wire, an
//! instance with queues cannot be removed, and a multicast group reaches only the queues whose
//! rx filters joined it, the link accepting the group's MAC exactly while one does.

mod daemon_common;

use std::time::Duration;

use daemon_common::*;
use netmux_driver::daemon::{Driver, Response};
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, FilterInstall, InstanceId, InstanceInfo,
    QueueId, RxMode, DEFAULT_INSTANCE,
};
use netmux_ring::ClientQueue;

const LINK_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
/// Instance A: its own MAC (macvlan-like).
const A: InstanceId = InstanceId(1);
const A_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const A_IP: [u8; 4] = [192, 0, 2, 10];
/// Instance B: the link's MAC, told apart by address (ipvlan-like).
const B: InstanceId = InstanceId(2);
const B_IP: [u8; 4] = [192, 0, 2, 20];
const DEFAULT_IP: [u8; 4] = [192, 0, 2, 1];
const REMOTE: [u8; 4] = [192, 0, 2, 99];
const SETTLE: Duration = Duration::from_millis(30);

fn instance(id: InstanceId, mac: [u8; 6], own_mac: bool, ip: [u8; 4]) -> DriverRequest {
    DriverRequest::SetInstance(InstanceInfo {
        instance: id,
        mac,
        own_mac,
        ipv4: vec![ip],
        ipv6: Vec::new(),
        overlay: None,
    })
}

/// Binds UDP `port` on `ip` for queue `q`, sending from `mac`.
fn bind(driver: &mut Driver, q: u32, mac: [u8; 6], ip: [u8; 4], port: u16) {
    bind_udp_in(driver, q, u64::from(q) * 100, mac, ip, port);
}

/// Three instances: default (queue 1), A (queue 2), B (queue 3), each binding UDP 53 on its
/// own address; netd's queue 9 in the default instance.
fn three_instances() -> (Driver, Wire, [ClientQueue; 4]) {
    let (mut d, wire) = in_process(LINK_MAC);
    ok(
        &mut d,
        instance(DEFAULT_INSTANCE, LINK_MAC, false, DEFAULT_IP),
    );
    ok(&mut d, instance(A, A_MAC, true, A_IP));
    ok(&mut d, instance(B, LINK_MAC, false, B_IP));
    let netd = queue_in(&mut d, 9, DEFAULT_INSTANCE);
    ok(&mut d, DriverRequest::SetNetdQueue { queue: QueueId(9) });
    let q1 = queue_in(&mut d, 1, DEFAULT_INSTANCE);
    let q2 = queue_in(&mut d, 2, A);
    let q3 = queue_in(&mut d, 3, B);
    bind(&mut d, 1, LINK_MAC, DEFAULT_IP, 53);
    bind(&mut d, 2, A_MAC, A_IP, 53);
    bind(&mut d, 3, LINK_MAC, B_IP, 53);
    (d, wire, [netd, q1, q2, q3])
}

fn receive(d: &mut Driver, wire: &Wire, frame: Vec<u8>) {
    wire.rx.lock().unwrap().push(frame);
    while d.poll_rx() > 0 {}
}

fn counts(queues: &mut [ClientQueue; 4]) -> [usize; 4] {
    let mut n = [0; 4];
    for (i, q) in queues.iter_mut().enumerate() {
        n[i] = drain(q, SETTLE).len();
    }
    n
}

#[test]
fn two_instances_bind_the_same_port_and_each_gets_only_its_own_traffic() {
    let (mut d, wire, mut q) = three_instances();
    receive(
        &mut d,
        &wire,
        udp_frame(PEER_MAC, A_MAC, REMOTE, 4000, A_IP, 53, 8),
    );
    assert_eq!(counts(&mut q), [0, 0, 1, 0], "to A's MAC and address");
    receive(
        &mut d,
        &wire,
        udp_frame(PEER_MAC, LINK_MAC, REMOTE, 4000, B_IP, 53, 8),
    );
    assert_eq!(
        counts(&mut q),
        [0, 0, 0, 1],
        "to the link's MAC and B's address"
    );
    receive(
        &mut d,
        &wire,
        udp_frame(PEER_MAC, LINK_MAC, REMOTE, 4000, DEFAULT_IP, 53, 8),
    );
    assert_eq!(counts(&mut q), [0, 1, 0, 0], "to the default instance");
    // B's address at A's MAC: not B's frame, and A has no binding for it: netd's.
    receive(
        &mut d,
        &wire,
        udp_frame(PEER_MAC, A_MAC, REMOTE, 4000, B_IP, 53, 8),
    );
    assert_eq!(
        counts(&mut q),
        [1, 0, 0, 0],
        "misaddressed frames reach no instance's client"
    );
}

#[test]
fn arp_reaches_only_the_instance_it_concerns() {
    let (mut d, wire, mut q) = three_instances();
    // A request for A's address: A's queues and netd, never B's or the default's clients.
    receive(&mut d, &wire, arp_frame(1, REMOTE, A_IP));
    assert_eq!(counts(&mut q), [1, 0, 1, 0]);
    receive(&mut d, &wire, arp_frame(1, REMOTE, B_IP));
    assert_eq!(counts(&mut q), [1, 0, 0, 1]);
    // A unicast reply to A's MAC: A only.
    let mut reply = arp_frame(2, REMOTE, A_IP);
    reply[..6].copy_from_slice(&A_MAC);
    receive(&mut d, &wire, reply);
    assert_eq!(counts(&mut q), [1, 0, 1, 0]);
}

#[test]
fn broadcast_reaches_every_instance() {
    let (mut d, wire, mut q) = three_instances();
    // A broadcast ARP reply (gratuitous): every instance hears it, each once.
    receive(&mut d, &wire, arp_frame(2, REMOTE, REMOTE));
    assert_eq!(counts(&mut q), [1, 1, 1, 1]);
}

#[test]
fn a_frame_to_another_instance_on_this_host_is_delivered_here_and_not_on_the_wire() {
    let (mut d, wire, mut q) = three_instances();
    // A's client sends to B's port 53 from its own port 53.
    let frame = udp_frame(A_MAC, LINK_MAC, A_IP, 53, B_IP, 53, 16);
    assert_eq!(q[2].send(&[&[&frame]]).unwrap().sent, 1);
    while d.poll_tx() > 0 {}
    assert_eq!(counts(&mut q), [0, 0, 0, 1], "B received it");
    assert!(
        wire.tx.lock().unwrap().is_empty(),
        "nothing went on the wire"
    );
    // And back: B to A's MAC.
    let back = udp_frame(LINK_MAC, A_MAC, B_IP, 53, A_IP, 53, 16);
    assert_eq!(q[3].send(&[&[&back]]).unwrap().sent, 1);
    while d.poll_tx() > 0 {}
    assert_eq!(counts(&mut q), [0, 0, 1, 0], "A received it");
    assert!(wire.tx.lock().unwrap().is_empty());
    // A frame to a remote host goes on the wire.
    let out = udp_frame(A_MAC, PEER_MAC, A_IP, 53, REMOTE, 53, 16);
    assert_eq!(q[2].send(&[&[&out]]).unwrap().sent, 1);
    while d.poll_tx() > 0 {}
    assert_eq!(wire.tx.lock().unwrap().len(), 1);
    assert_eq!(counts(&mut q), [0, 0, 0, 0]);
    // The hairpin is counted, per receiving instance.
    let Response { reply, .. } = d.handle(DriverRequest::Stats);
    let DriverReply::Stats {
        instances, link, ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(link.hairpin, 2);
    let of = |id| instances.iter().find(|(i, _)| *i == id).unwrap().1.clone();
    assert_eq!(of(A).hairpin, 1);
    assert_eq!(of(B).hairpin, 1);
    assert_eq!(of(A).tx_frames, 2);
}

#[test]
fn a_client_cannot_send_with_another_instances_mac() {
    let (mut d, wire, mut q) = three_instances();
    // B's client forges A's MAC: its tx filter admits only the link's MAC, and the reason is
    // checked against its own instance's MAC.
    let forged = udp_frame(A_MAC, PEER_MAC, B_IP, 53, REMOTE, 53, 16);
    assert_eq!(q[3].send(&[&[&forged]]).unwrap().sent, 1);
    while d.poll_tx() > 0 {}
    let mut done = Vec::new();
    eventually("the completion", || {
        q[3].completions(8, &mut done).unwrap();
        !done.is_empty()
    });
    assert_eq!(
        done[0].status,
        netmux_ring::TxStatus::RejectedSpoofedSourceMac
    );
    assert!(wire.tx.lock().unwrap().is_empty());
}

#[test]
fn an_instance_with_queues_is_not_removed_and_one_without_is() {
    let (mut d, _wire, _q) = three_instances();
    let Response { reply, .. } = d.handle(DriverRequest::RemoveInstance { instance: A });
    assert!(matches!(reply, DriverReply::Error(_)), "{reply:?}");
    ok(&mut d, DriverRequest::DestroyQueue { queue: QueueId(2) });
    ok(&mut d, DriverRequest::RemoveInstance { instance: A });
    let Response { reply, .. } = d.handle(DriverRequest::CreateQueue {
        queue: QueueId(20),
        config: SMALL,
        instance: A,
    });
    assert!(matches!(reply, DriverReply::Error(_)), "{reply:?}");
    // Another instance may not take B's address or A's old MAC twice.
    let Response { reply, .. } = d.handle(instance(InstanceId(5), LINK_MAC, false, B_IP));
    assert!(matches!(reply, DriverReply::Error(_)), "{reply:?}");
}

/// A UDP datagram from the remote host to an IPv4 group on `port`.
fn to_group(group: [u8; 4], port: u16) -> Vec<u8> {
    let mac = [0x01, 0x00, 0x5e, group[1] & 0x7f, group[2], group[3]];
    udp_frame(PEER_MAC, mac, REMOTE, 4000, group, port, 8)
}

#[test]
fn a_group_reaches_only_the_queues_that_joined_it_and_the_link_accepts_it_meanwhile() {
    let (mut d, wire, mut queues) = three_instances();
    let group = [239, 1, 2, 3];
    let mac = [0x01, 0x00, 0x5e, 1, 2, 3];
    let join = |d: &mut Driver, q: u32, filter: u64| {
        ok(
            d,
            DriverRequest::InstallFilter(FilterInstall {
                queue: QueueId(q),
                filter: FilterId(filter),
                direction: Direction::Rx,
                mode: RxMode::Owner,
                binding: Some(udp_binding(group, 53)),
                program: udp_rx_program(group, 53),
            }),
        )
    };
    join(&mut d, 2, 500);
    assert_eq!(*wire.groups.lock().unwrap(), [mac]);
    receive(&mut d, &wire, to_group(group, 53));
    assert_eq!(counts(&mut queues)[1..], [0, 1, 0], "A joined, nobody else");
    // B joins too (its own instance, the same port): both, the MAC asked for once.
    join(&mut d, 3, 501);
    assert_eq!(*wire.groups.lock().unwrap(), [mac]);
    receive(&mut d, &wire, to_group(group, 53));
    assert_eq!(counts(&mut queues)[1..], [0, 1, 1]);
    ok(
        &mut d,
        DriverRequest::RemoveFilter {
            queue: QueueId(2),
            filter: FilterId(500),
        },
    );
    assert_eq!(*wire.groups.lock().unwrap(), [mac], "B is still joined");
    receive(&mut d, &wire, to_group(group, 53));
    assert_eq!(counts(&mut queues)[1..], [0, 0, 1]);
    // B's queue goes: nobody is joined, the link stops accepting the group.
    assert!(d.destroy_queue(QueueId(3)));
    assert!(wire.groups.lock().unwrap().is_empty());
}
