//! The rules of the crate documentation, each on the merged classifier and on the reference
//! scan alike: one owner per key, exclusive claims, taps, refusals that change nothing, keys
//! that can only narrow delivery, the MAC shortcut for netd's port filters, and tables that
//! change in place. (That the merged classifier equals the scan on random filter sets is in
//! `netmux-fuzz-targets`, its classifier target and `tests/classifier_equivalence.rs`, where
//! filters are written in the pcap-filter language.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmux_classify::{
    port_filter, Classifier, ClassifierError, Classify, Key, LinearScan, Ownership, RxFilter,
};
use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_testkit::frames::{addrs, FrameBuilder, Ipv4};
use netmux_vm::{Program, Strategy};

const HOST_MAC: [u8; 6] = addrs::MAC[1];

fn v4_key(port: u16) -> Key {
    Key::V4 {
        protocol: 17,
        addr: Ipv4Addr::from(addrs::V4[0]),
        port,
    }
}

fn udp_frame(mac: [u8; 6], dst: [u8; 4], port: u16) -> Vec<u8> {
    FrameBuilder::ethernet(mac, addrs::MAC[3])
        .ethertype(0x0800)
        .ipv4(Ipv4::new(addrs::V4[3], dst, 17))
        .udp(4000, port)
        .payload(4)
        .finish()
        .data
}

fn tcp6_frame(dst: [u8; 16], port: u16) -> Vec<u8> {
    FrameBuilder::ethernet(HOST_MAC, addrs::MAC[3])
        .ethertype(0x86dd)
        .ipv6(addrs::V6[3], dst, 6)
        .tcp(4000, port, 2)
        .finish()
        .data
}

fn asm(text: &str) -> Program {
    netmux_vm::verify(&netmux_vm::asm::assemble(text).unwrap()).unwrap()
}

/// Accepts every IPv4 or ARP frame.
fn ip_or_arp() -> Program {
    asm("ldh r0, [12]\njeq r0, 0x800, +2\njeq r0, 0x806, +1\nreject\naccept 1\n")
}

/// netd's port filter for `key` on the host's MAC.
fn port_program(key: &Key) -> Program {
    port_filter::program(key, HOST_MAC).unwrap()
}

fn owner(queue: u32, filter: u64, port: u16) -> RxFilter {
    RxFilter {
        queue: QueueId(queue),
        filter: FilterId(filter),
        mode: RxMode::Owner,
        binding: Some(v4_key(port).binding()),
        program: port_program(&v4_key(port)),
    }
}

fn other(queue: u32, filter: u64, mode: RxMode, program: Program) -> RxFilter {
    RxFilter {
        queue: QueueId(queue),
        filter: FilterId(filter),
        mode,
        binding: None,
        program,
    }
}

fn classify(c: &mut dyn Classify, frame: &[u8]) -> Vec<QueueId> {
    let mut out = Vec::new();
    c.classify(frame, frame.len() as u32, &mut out);
    let mut sorted = out.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, out, "queues not ascending and once each");
    out
}

fn both() -> [Box<dyn Classify>; 3] {
    [
        Box::new(LinearScan::new(Strategy::Interpreter)),
        Box::new(Classifier::new(Strategy::Interpreter)),
        Box::new(Classifier::for_link(Strategy::Interpreter, HOST_MAC)),
    ]
}

#[test]
fn a_key_has_one_owner_and_a_refusal_changes_nothing() {
    for mut c in both() {
        let c = c.as_mut();
        let frame = udp_frame(HOST_MAC, addrs::V4[0], 53);
        c.install(owner(1, 1, 53)).unwrap();
        assert_eq!(
            c.install(owner(2, 2, 53)),
            Err(ClassifierError::BindingInUse(QueueId(1)))
        );
        assert_eq!(
            c.install(owner(1, 3, 53)),
            Err(ClassifierError::BindingInUse(QueueId(1)))
        );
        assert_eq!(classify(c, &frame), [QueueId(1)]);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.install(owner(4, 1, 81)),
            Err(ClassifierError::DuplicateFilter(FilterId(1)))
        );
        assert_eq!(
            c.remove(QueueId(4), FilterId(1)),
            Err(ClassifierError::NotFound(QueueId(4), FilterId(1)))
        );
        c.remove(QueueId(1), FilterId(1)).unwrap();
        assert!(classify(c, &frame).is_empty());
        c.install(owner(2, 2, 53)).unwrap();
        assert_eq!(classify(c, &frame), [QueueId(2)]);
    }
}

#[test]
fn an_ipv4_bindings_ownership_ignores_the_unused_address_bytes() {
    for mut c in both() {
        c.install(owner(1, 1, 53)).unwrap();
        let mut noisy = owner(2, 2, 53);
        if let Some(b) = &mut noisy.binding {
            b.address[4..].fill(0xaa);
        }
        assert_eq!(
            c.install(noisy),
            Err(ClassifierError::BindingInUse(QueueId(1)))
        );
    }
}

#[test]
fn an_exclusive_claim_and_port_bindings_exclude_each_other_whoever_asks() {
    for mut c in both() {
        let c = c.as_mut();
        let frame = udp_frame(HOST_MAC, addrs::V4[0], 53);
        c.install(owner(1, 1, 53)).unwrap();
        // No claim while a binding exists, the binding's own queue included.
        for q in [1, 2] {
            assert_eq!(
                c.install(other(q, 4, RxMode::Exclusive, ip_or_arp())),
                Err(ClassifierError::BindingsExist)
            );
        }
        c.remove(QueueId(1), FilterId(1)).unwrap();
        c.install(other(2, 4, RxMode::Exclusive, ip_or_arp()))
            .unwrap();
        // No binding and no second claim while a claim exists, the claimant's own included.
        for q in [2, 3] {
            assert_eq!(
                c.install(owner(q, 5, 80)),
                Err(ClassifierError::ExclusiveHeld(QueueId(2)))
            );
            assert_eq!(
                c.install(other(q, 6, RxMode::Exclusive, ip_or_arp())),
                Err(ClassifierError::ExclusiveHeld(QueueId(2)))
            );
        }
        assert_eq!(classify(c, &frame), [QueueId(2)]);
        // The claimant going away frees the link.
        c.remove_queue(QueueId(2));
        assert!(c.is_empty());
        c.install(owner(3, 5, 80)).unwrap();
    }
}

#[test]
fn taps_observe_beside_the_owner_and_never_their_own_transmissions() {
    for mut c in both() {
        let c = c.as_mut();
        let frame = udp_frame(HOST_MAC, addrs::V4[0], 53);
        c.install(owner(1, 1, 53)).unwrap();
        c.install(other(2, 2, RxMode::Tap, ip_or_arp())).unwrap();
        c.install(other(3, 3, RxMode::Tap, ip_or_arp())).unwrap();
        assert_eq!(classify(c, &frame), [QueueId(1), QueueId(2), QueueId(3)]);
        let mut out = Vec::new();
        c.observers(&frame, frame.len() as u32, QueueId(2), &mut out);
        assert_eq!(out, [QueueId(3)]);
    }
}

#[test]
fn an_exact_and_an_address_less_binding_of_one_port_both_receive() {
    let any = Key::AnyAddr {
        family: netmux_classify::Family::V4,
        protocol: 17,
        port: 53,
    };
    // The address-less filter: any IPv4 UDP datagram to port 53 (ldh of the port at the
    // header length the IHL gives, as libpcap reads it).
    let any_program = asm(
        "ldh r0, [12]\njeq r0, 0x800, +1\nja no\nldb r0, [23]\njeq r0, 17, +1\nja no\n\
         ldh r0, [20]\njset r0, 0x1fff, no\nldb r0, [14]\nand r0, 0xf\nlsh r0, 2\n\
         ldh r1, [r0 + 16]\njeq r1, 53, +1\nja no\naccept 1\nno:\nreject\n",
    );
    for mut c in both() {
        let c = c.as_mut();
        c.install(owner(1, 1, 53)).unwrap();
        c.install(RxFilter {
            queue: QueueId(2),
            filter: FilterId(2),
            mode: RxMode::Owner,
            binding: Some(any.binding()),
            program: any_program.clone(),
        })
        .unwrap();
        assert_eq!(
            classify(c, &udp_frame(HOST_MAC, addrs::V4[0], 53)),
            [QueueId(1), QueueId(2)]
        );
        assert_eq!(
            classify(c, &udp_frame(HOST_MAC, addrs::V4[1], 53)),
            [QueueId(2)]
        );
    }
}

#[test]
fn a_key_that_disagrees_with_its_program_never_delivers_what_the_program_rejects() {
    for mut c in [
        Classifier::new(Strategy::Interpreter),
        Classifier::for_link(Strategy::Interpreter, HOST_MAC),
    ] {
        // The key says port 53; the program accepts port 80 only.
        c.install(RxFilter {
            queue: QueueId(1),
            filter: FilterId(1),
            mode: RxMode::Owner,
            binding: Some(v4_key(53).binding()),
            program: port_program(&v4_key(80)),
        })
        .unwrap();
        assert_eq!(c.keys_bound(), 1);
        // The key matches, the program rejects: not delivered.
        assert!(classify(&mut c, &udp_frame(HOST_MAC, addrs::V4[0], 53)).is_empty());
        // The program accepts, the key differs: not delivered either (netd gets it as unmatched).
        assert!(classify(&mut c, &udp_frame(HOST_MAC, addrs::V4[0], 80)).is_empty());
        assert_eq!(c.confirmed_by_mac(), 0);
    }
}

#[test]
fn netds_port_filter_is_confirmed_by_its_destination_mac() {
    let mut honest = Classifier::for_link(Strategy::Interpreter, HOST_MAC);
    honest.install(owner(2, 2, 53)).unwrap();
    assert_eq!(
        classify(&mut honest, &udp_frame(HOST_MAC, addrs::V4[0], 53)),
        [QueueId(2)]
    );
    assert_eq!(honest.confirmed_by_mac(), 1);
    // The key matches but the frame is for another MAC: not delivered.
    assert!(classify(&mut honest, &udp_frame(addrs::MAC[0], addrs::V4[0], 53)).is_empty());
    // Another link's MAC: the program is not the port filter there, and runs.
    let mut other = Classifier::for_link(Strategy::Interpreter, addrs::MAC[0]);
    other.install(owner(2, 2, 53)).unwrap();
    assert_eq!(other.confirmed_by_mac(), 0);
    assert_eq!(
        classify(&mut other, &udp_frame(HOST_MAC, addrs::V4[0], 53)),
        [QueueId(2)]
    );
    assert!(classify(&mut other, &udp_frame(addrs::MAC[0], addrs::V4[0], 53)).is_empty());
}

#[test]
fn netds_broadcast_port_filter_is_confirmed_by_the_broadcast_mac() {
    let mut c = Classifier::for_link(Strategy::Interpreter, HOST_MAC);
    let key = Key::V4 {
        protocol: 17,
        addr: Ipv4Addr::BROADCAST,
        port: 67,
    };
    c.install(RxFilter {
        queue: QueueId(3),
        filter: FilterId(3),
        mode: RxMode::Owner,
        binding: Some(key.binding()),
        program: port_filter::program(&key, [0xff; 6]).unwrap(),
    })
    .unwrap();
    assert_eq!(c.confirmed_by_mac(), 1);
    let to = |mac| udp_frame(mac, Ipv4Addr::BROADCAST.octets(), 67);
    assert_eq!(classify(&mut c, &to([0xff; 6])), [QueueId(3)]);
    // The key, but sent to the host's (or anyone's) unicast MAC: the program would reject it.
    assert!(classify(&mut c, &to(HOST_MAC)).is_empty());
    assert!(classify(&mut c, &to(addrs::MAC[0])).is_empty());
}

#[test]
fn bindings_change_the_tables_in_place_and_never_rebuild_the_program() {
    let mut c = Classifier::for_link(Strategy::Interpreter, HOST_MAC);
    let host6 = Ipv6Addr::from(addrs::V6[0]);
    let key = |port| Key::V6 {
        protocol: 6,
        addr: host6,
        port,
    };
    for port in 1..=2000u16 {
        c.install(RxFilter {
            queue: QueueId(u32::from(port)),
            filter: FilterId(u64::from(port)),
            mode: RxMode::Owner,
            binding: Some(key(port).binding()),
            program: port_program(&key(port)),
        })
        .unwrap();
    }
    let insns = c.program().unwrap().insns().to_vec();
    assert_eq!(c.program().unwrap().tables()[1].len(), 2000);
    assert_eq!(c.other_filters(), 0);
    assert_eq!(c.confirmed_by_mac(), 2000);
    assert_eq!(
        classify(&mut c, &tcp6_frame(addrs::V6[0], 1234)),
        [QueueId(1234)]
    );
    for port in 1..=1000u16 {
        c.remove(QueueId(u32::from(port)), FilterId(u64::from(port)))
            .unwrap();
    }
    assert!(classify(&mut c, &tcp6_frame(addrs::V6[0], 1000)).is_empty());
    assert_eq!(
        classify(&mut c, &tcp6_frame(addrs::V6[0], 1001)),
        [QueueId(1001)]
    );
    assert_eq!(c.program().unwrap().tables()[1].len(), 1000);
    assert_eq!(c.program().unwrap().insns(), &insns[..]);
    // A freed key binds again, for another queue.
    c.install(RxFilter {
        queue: QueueId(9000),
        filter: FilterId(9000),
        mode: RxMode::Owner,
        binding: Some(key(7).binding()),
        program: port_program(&key(7)),
    })
    .unwrap();
    assert_eq!(
        classify(&mut c, &tcp6_frame(addrs::V6[0], 7)),
        [QueueId(9000)]
    );
}

#[test]
fn shared_ownership_lets_every_binder_of_a_key_receive_and_removal_keeps_the_others() {
    for mut c in [
        Box::new(Classifier::with_ownership(
            Strategy::Interpreter,
            Ownership::Shared,
        )) as Box<dyn Classify>,
        Box::new(LinearScan::with_ownership(
            Strategy::Interpreter,
            Ownership::Shared,
        )),
    ] {
        let c = c.as_mut();
        let frame = udp_frame(HOST_MAC, addrs::V4[0], 53);
        for q in 1..=3 {
            c.install(owner(q, u64::from(q), 53)).unwrap();
        }
        assert_eq!(classify(c, &frame), [QueueId(1), QueueId(2), QueueId(3)]);
        c.remove(QueueId(1), FilterId(1)).unwrap();
        assert_eq!(classify(c, &frame), [QueueId(2), QueueId(3)]);
        c.remove(QueueId(3), FilterId(3)).unwrap();
        assert_eq!(classify(c, &frame), [QueueId(2)]);
        c.remove(QueueId(2), FilterId(2)).unwrap();
        assert!(classify(c, &frame).is_empty());
        assert!(c.is_empty());
        // Exclusive claims keep their rule under shared ownership too.
        c.install(owner(1, 1, 53)).unwrap();
        assert_eq!(
            c.install(other(2, 2, RxMode::Exclusive, ip_or_arp())),
            Err(ClassifierError::BindingsExist)
        );
    }
}

#[test]
fn bindings_of_a_protocol_without_ports_run_after_the_tables_and_still_have_one_owner() {
    for mut c in both() {
        let c = c.as_mut();
        let icmp = PortBinding {
            protocol: 1,
            address: v4_key(0).binding().address,
            ipv6: false,
            port: 0,
        };
        let filter = |q: u32, f: u64| RxFilter {
            queue: QueueId(q),
            filter: FilterId(f),
            mode: RxMode::Owner,
            binding: Some(icmp),
            program: ip_or_arp(),
        };
        c.install(filter(1, 1)).unwrap();
        assert_eq!(
            c.install(filter(2, 2)),
            Err(ClassifierError::BindingInUse(QueueId(1)))
        );
        assert_eq!(
            classify(c, &udp_frame(HOST_MAC, addrs::V4[0], 9)),
            [QueueId(1)]
        );
    }
}

#[test]
fn a_strategy_the_build_cannot_run_is_refused_cleanly_on_first_install() {
    let jit_available = netmux_vm::engine(ip_or_arp(), Strategy::Jit).is_ok();
    let mut c = Classifier::new(Strategy::Jit);
    let r = c.install(owner(1, 1, 53));
    assert_eq!(r.is_ok(), jit_available);
    if let Err(e) = r {
        assert!(matches!(e, ClassifierError::Engine(_)), "{e}");
        assert!(c.is_empty());
    }
    let _ = IpAddr::from(addrs::V4[0]);
}
