//! Ownership rules of the merged classifier under [`Policy::Exclusive`] (the driver's), the
//! exclusive link claim, owner-mode delivery, and in-place updates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmux_compiler::classifier::{
    Classifier, ClassifierError, Family, Key, Mode, Placement, Policy, PortBinding, QueueId,
    Transport,
};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::Frame;
use netmux_vm::Strategy;

const HOST: [u8; 4] = [10, 0, 0, 2];
const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn driver() -> Classifier {
    Classifier::new(Policy::Exclusive, Strategy::Interpreter).unwrap()
}

fn udp4(dst: [u8; 4], dport: u16) -> Frame {
    FrameBuilder::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ethertype(0x0800)
        .ipv4(Ipv4::new([10, 0, 0, 9], dst, 17))
        .udp(40000, dport)
        .payload(8)
        .finish()
}

fn tcp6(dst: [u8; 16], dport: u16) -> Frame {
    FrameBuilder::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ethertype(0x86dd)
        .ipv6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst,
            6,
        )
        .tcp(40000, dport, 0x02)
        .finish()
}

fn owners(c: &Classifier, f: &Frame) -> Vec<QueueId> {
    let mut out = Vec::new();
    c.classify(&f.data, f.wire_len, Mode::Owner, &mut out);
    out
}

fn all(c: &Classifier, f: &Frame) -> Vec<QueueId> {
    let mut out = Vec::new();
    c.classify(&f.data, f.wire_len, Mode::AllMatches, &mut out);
    out
}

#[test]
fn a_second_queue_binding_the_same_key_is_refused_and_nothing_changes() {
    let mut c = driver();
    c.add_filter(1, "udp dst port 53 and dst host 10.0.0.2")
        .unwrap();
    let before = c.keys_bound();
    let err = c
        .add_filter(2, "ip and dst host 10.0.0.2 and udp and dst port 53")
        .unwrap_err();
    match &err {
        ClassifierError::Conflict { key, owner } => {
            assert_eq!(*owner, 1);
            assert_eq!(
                *key,
                Key::V4 {
                    proto: Transport::Udp,
                    addr: Ipv4Addr::from(HOST),
                    port: 53
                }
            );
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        err.to_string(),
        "udp 10.0.0.2 port 53 is already bound by queue 1"
    );
    assert_eq!(c.keys_bound(), before);
    assert_eq!(owners(&c, &udp4(HOST, 53)), vec![1]);
}

#[test]
fn a_wide_binding_that_overlaps_one_key_is_refused_whole() {
    let mut c = driver();
    c.add_filter(1, "ip6 and tcp dst port 80").unwrap();
    // `dst port 80` is six keys; one of them (tcp over IPv6, any address) is taken.
    let err = c.add_filter(2, "dst port 80").unwrap_err();
    assert!(
        matches!(err, ClassifierError::Conflict { owner: 1, .. }),
        "{err}"
    );
    assert_eq!(c.keys_bound(), 1);
    // Disjoint keys of the same port are fine.
    c.add_filter(3, "ip and tcp dst port 80").unwrap();
    c.add_filter(4, "udp dst port 80").unwrap();
    assert_eq!(c.keys_bound(), 4);
}

#[test]
fn the_same_port_on_different_addresses_or_protocols_has_different_owners() {
    let mut c = driver();
    c.add_filter(1, "udp dst port 53 and dst host 10.0.0.2")
        .unwrap();
    c.add_filter(2, "udp dst port 53 and dst host 10.0.0.3")
        .unwrap();
    c.add_filter(3, "tcp dst port 53 and dst host 10.0.0.2")
        .unwrap();
    c.add_filter(4, "udp dst port 53").unwrap(); // any address: less specific
    assert_eq!(owners(&c, &udp4(HOST, 53)), vec![1]);
    assert_eq!(owners(&c, &udp4([10, 0, 0, 3], 53)), vec![2]);
    assert_eq!(owners(&c, &udp4([10, 0, 0, 4], 53)), vec![4]);
    assert_eq!(owners(&c, &udp4(HOST, 54)), Vec::<QueueId>::new());
    // All matches: the exact binding and the wildcard both accept.
    assert_eq!(all(&c, &udp4(HOST, 53)), vec![1, 4]);
}

#[test]
fn observers_receive_beside_the_owner() {
    let mut c = driver();
    c.add_filter(1, "udp dst port 53 and dst host 10.0.0.2")
        .unwrap();
    let tap = c.add_filter(7, "udp").unwrap();
    c.add_filter(8, "tcp").unwrap();
    assert!(matches!(c.placement(tap), Some((7, Placement::Linear(_)))));
    assert_eq!(owners(&c, &udp4(HOST, 53)), vec![1, 7]);
    assert_eq!(owners(&c, &udp4(HOST, 99)), vec![7]);
    // Observers do not count as owners: another queue may tap the same traffic.
    c.add_filter(9, "udp port 53").unwrap();
    assert_eq!(owners(&c, &udp4(HOST, 53)), vec![1, 7, 9]);
}

#[test]
fn an_exclusive_claim_is_refused_while_ports_are_bound() {
    let mut c = driver();
    let r = c.add_filter(1, "tcp dst port 22").unwrap();
    let err = c.claim_exclusive(5).unwrap_err();
    assert!(
        matches!(err, ClassifierError::PortsBound { bindings: 1 }),
        "{err}"
    );
    // A tap is not a port binding and does not stand in the way.
    c.remove(r).unwrap();
    c.add_filter(6, "icmp").unwrap();
    c.claim_exclusive(5).unwrap();
    assert_eq!(c.exclusive_owner(), Some(5));
}

#[test]
fn port_bindings_are_refused_while_the_link_is_claimed() {
    let mut c = driver();
    c.claim_exclusive(5).unwrap();
    let err = c.add_filter(1, "tcp dst port 22").unwrap_err();
    assert!(
        matches!(err, ClassifierError::LinkClaimed { owner: 5 }),
        "{err}"
    );
    let b = PortBinding::new(&[Family::V4], &[Transport::Udp], None, 53).unwrap();
    assert!(matches!(
        c.add_binding(1, b),
        Err(ClassifierError::LinkClaimed { owner: 5 })
    ));
    // Observers may still watch; the claimant gets every frame.
    c.add_filter(6, "udp").unwrap();
    assert_eq!(owners(&c, &udp4(HOST, 53)), vec![5, 6]);
    assert_eq!(owners(&c, &tcp6(HOST6, 22)), vec![5]);
    // A second claim by another queue is refused; release opens the link again.
    assert!(matches!(
        c.claim_exclusive(2),
        Err(ClassifierError::AlreadyClaimed { owner: 5 })
    ));
    assert!(matches!(
        c.release_exclusive(2),
        Err(ClassifierError::NotClaimant(2))
    ));
    c.release_exclusive(5).unwrap();
    c.add_filter(1, "tcp dst port 22").unwrap();
    assert_eq!(owners(&c, &tcp6(HOST6, 22)), vec![1]);
}

#[test]
fn removing_a_queue_frees_its_ports_and_its_claim() {
    let mut c = driver();
    c.add_filter(1, "udp dst port 53").unwrap();
    c.add_filter(1, "tcp dst port 80 and dst host 2001:db8::2")
        .unwrap();
    c.add_filter(1, "icmp").unwrap();
    c.remove_queue(1);
    assert!(c.is_empty());
    assert_eq!(c.keys_bound(), 0);
    c.add_filter(2, "udp dst port 53").unwrap();
    assert_eq!(owners(&c, &udp4(HOST, 53)), vec![2]);
    c.remove_queue(2);
    c.claim_exclusive(3).unwrap();
    c.remove_queue(3);
    assert_eq!(c.exclusive_owner(), None);
}

#[test]
fn overlapping_policy_delivers_to_every_rule_and_removal_keeps_the_others() {
    let mut c = Classifier::new(Policy::Overlapping, Strategy::Interpreter).unwrap();
    let a = c.add_filter(1, "udp dst port 53").unwrap();
    let b = c.add_filter(2, "udp dst port 53").unwrap();
    c.add_filter(3, "ip and udp dst port 53").unwrap();
    assert_eq!(all(&c, &udp4(HOST, 53)), vec![1, 2, 3]);
    c.remove(a).unwrap();
    assert_eq!(all(&c, &udp4(HOST, 53)), vec![2, 3]);
    c.remove(b).unwrap();
    assert_eq!(all(&c, &udp4(HOST, 53)), vec![3]);
    assert!(matches!(c.remove(b), Err(ClassifierError::UnknownRule(_))));
}

#[test]
fn bindings_update_the_tables_in_place_and_never_rebuild_the_program() {
    let mut c = driver();
    let program = c.engine().program().insns().to_vec();
    let mut rules = Vec::new();
    for port in 1..=2000u16 {
        let b = PortBinding::new(
            &[],
            &[Transport::Tcp],
            Some(IpAddr::V6(Ipv6Addr::from(HOST6))),
            port,
        )
        .unwrap();
        rules.push(c.add_binding(u32::from(port), b).unwrap());
    }
    assert_eq!(c.engine().program().insns(), &program[..]);
    assert_eq!(c.engine().program().tables()[1].len(), 2000);
    assert_eq!(owners(&c, &tcp6(HOST6, 1234)), vec![1234]);
    for r in rules.drain(..1000) {
        c.remove(r).unwrap();
    }
    assert_eq!(owners(&c, &tcp6(HOST6, 1000)), Vec::<QueueId>::new());
    assert_eq!(owners(&c, &tcp6(HOST6, 1001)), vec![1001]);
    assert_eq!(c.engine().program().tables()[1].len(), 1000);
    assert_eq!(c.engine().program().insns(), &program[..]);
}

#[test]
fn a_strategy_the_build_cannot_run_is_refused_cleanly() {
    let program = netmux_compiler::classifier::program::build();
    let jit_available = netmux_vm::engine(program, Strategy::Jit).is_ok();
    let r = Classifier::new(Policy::Exclusive, Strategy::Jit);
    assert_eq!(r.is_ok(), jit_available);
    if let Err(e) = r {
        assert!(matches!(e, ClassifierError::Engine(_)), "{e}");
    }
}
