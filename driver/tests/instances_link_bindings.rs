//! The link's shared bindings change no frame's receivers: [`Instances`] with merged
//! classifiers and one [`netmux_classify::LinkBindings`] for every on-link instance's exact
//! port filters gives, frame by frame, the instances and queues that instances with reference
//! classifiers ([`LinearScan`], every filter run in turn, no shared bindings) give, and the
//! same refusals, through random changes: instances created and readdressed (so that
//! bindings leave the shared tables), port filters for the instance's MAC, another MAC or the
//! broadcast MAC, address-less bindings, taps and exclusive claims installed and removed,
//! queues going away; frames from the link (`receive`) and from another instance on this host
//! (`receivers`, the hairpin path). Replay a failure with the `NETMUX_SEED` it printed.

use netmux_classify::{port_filter, Classifier, Classify, Family, Key, LinearScan, RxFilter};
use netmux_driver::daemon::instances::{Instances, Target};
use netmux_proto::driver::{FilterId, InstanceId, InstanceInfo, QueueId, RxMode, DEFAULT_INSTANCE};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_vm::{Insn, Program, Strategy};

const LINK: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Own MACs instances may take, and one nobody has.
const MACS: [[u8; 6]; 3] = [
    [2, 0xa, 0, 0, 0, 1],
    [2, 0xa, 0, 0, 0, 2],
    [2, 0xa, 0, 0, 0, 3],
];
const BROADCAST: [u8; 6] = [0xff; 6];

/// xorshift64*, driven by the test's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, of: &[T]) -> T {
        of[self.below(of.len())]
    }
}

fn v4(last: u8) -> [u8; 4] {
    [192, 0, 2, last]
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[15] = last;
    a
}

/// The same instances twice: the driver's (merged classifiers, shared bindings) and the
/// reference.
struct Pair {
    shipped: Instances,
    reference: Instances,
}

impl Pair {
    fn new() -> Pair {
        let merged = |mac: [u8; 6]| -> Box<dyn Classify> {
            Box::new(Classifier::for_link(Strategy::Interpreter, mac))
        };
        let linear =
            |_: [u8; 6]| -> Box<dyn Classify> { Box::new(LinearScan::new(Strategy::Interpreter)) };
        let mut shipped = Instances::new(LINK, merged(LINK), Box::new(merged));
        shipped.use_link_bindings(Strategy::Interpreter);
        let reference = Instances::new(LINK, linear(LINK), Box::new(linear));
        Pair { shipped, reference }
    }
}

/// A random change to an instance: its MAC kind and one or two addresses of a small pool, so
/// that instances take and give up each other's addresses.
fn random_info(rng: &mut Rng, id: u32) -> InstanceInfo {
    let own_mac = id != 0 && rng.below(3) != 0;
    let mac = if own_mac { rng.pick(&MACS) } else { LINK };
    let ipv4 = (0..1 + rng.below(2))
        .map(|_| v4(1 + rng.below(6) as u8))
        .collect();
    let ipv6 = (0..rng.below(2))
        .map(|_| v6(1 + rng.below(6) as u8))
        .collect();
    InstanceInfo {
        instance: if id == 0 {
            DEFAULT_INSTANCE
        } else {
            InstanceId(id)
        },
        mac,
        own_mac,
        ipv4,
        ipv6,
        overlay: None,
    }
}

/// A random rx filter: mostly netd's port filters (for the instance's MAC, another, or
/// broadcast), else an address-less binding, a tap or an exclusive claim.
fn random_filter(rng: &mut Rng, queue: QueueId, filter: FilterId, mac: [u8; 6]) -> RxFilter {
    let protocol = rng.pick(&[6u8, 17]);
    let port = rng.pick(&[53u16, 80]);
    let accept_all = || Program::new(&[Insn::accept(1)], &[]).expect("a program");
    match rng.below(10) {
        0 => RxFilter {
            queue,
            filter,
            mode: RxMode::Tap,
            binding: None,
            program: accept_all(),
        },
        1 => RxFilter {
            queue,
            filter,
            mode: RxMode::Exclusive,
            binding: None,
            program: accept_all(),
        },
        2 => {
            let family = rng.pick(&[Family::V4, Family::V6]);
            let key = Key::AnyAddr {
                family,
                protocol,
                port,
            };
            let name = if protocol == 6 { "tcp" } else { "udp" };
            let ip = if family == Family::V4 { "ip" } else { "ip6" };
            RxFilter {
                queue,
                filter,
                mode: RxMode::Owner,
                binding: Some(key.binding()),
                program: netmux_compiler::compile(
                    &format!("{ip} and {name} dst port {port}"),
                    &netmux_compiler::Options::default(),
                )
                .expect("compiles"),
            }
        }
        _ => {
            let last = 1 + rng.below(6) as u8;
            let key = if rng.below(3) == 0 {
                Key::V6 {
                    protocol,
                    addr: v6(last).into(),
                    port,
                }
            } else {
                Key::V4 {
                    protocol,
                    addr: v4(last).into(),
                    port,
                }
            };
            let to = match rng.below(6) {
                0 => rng.pick(&MACS),
                1 => BROADCAST,
                _ => mac,
            };
            RxFilter {
                queue,
                filter,
                mode: RxMode::Owner,
                binding: Some(key.binding()),
                program: port_filter::program(&key, to).expect("an exact key"),
            }
        }
    }
}

/// A random frame: to a MAC instances may have, the link's, or broadcast; IPv4 or IPv6 TCP or
/// UDP to an address of the pool, or ARP.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let dst = match rng.below(4) {
        0 => rng.pick(&MACS),
        1 => BROADCAST,
        _ => LINK,
    };
    let last = 1 + rng.below(7) as u8;
    let b = FrameBuilder::ethernet(dst, [2, 0, 0, 0, 0, 9]);
    let port = rng.pick(&[53u16, 80, 81]);
    let b = match rng.below(5) {
        0 => b.ethertype(0x0806).arp(
            rng.pick(&[1, 2]),
            [2, 0, 0, 0, 0, 9],
            v4(99),
            [0; 6],
            v4(last),
        ),
        1 => b
            .ethertype(0x86dd)
            .ipv6(v6(99), v6(last), 17)
            .udp(4000, port),
        2 => b
            .ethertype(0x0800)
            .ipv4(Ipv4::new(v4(99), v4(last), 6))
            .tcp(4000, port, 0x02),
        _ => b
            .ethertype(0x0800)
            .ipv4(Ipv4::new(v4(99), v4(last), 17))
            .udp(4000, port),
    };
    b.payload(8).finish().data
}

#[test]
fn shared_bindings_give_every_frame_the_receivers_of_the_reference() {
    let seed =
        netmux_testkit::seed("shared_bindings_give_every_frame_the_receivers_of_the_reference");
    let mut rng = Rng(seed | 1);
    let (mut checked, mut linked) = (0usize, 0usize);
    for case in 0..60 {
        let mut p = Pair::new();
        // (queue, its instance's slot, its filters)
        let mut queues: Vec<(QueueId, usize, Vec<FilterId>)> = Vec::new();
        let mut next_id = 1u64;
        for step in 0..120 {
            let what = rng.below(10);
            if what == 0 {
                let id = rng.below(4) as u32;
                let info = random_info(&mut rng, id);
                let a = p.shipped.set(info.clone());
                let b = p.reference.set(info.clone());
                assert_eq!(a, b, "case {case} step {step}: set {info:?}");
            } else if what == 1 && !queues.is_empty() {
                let (queue, slot, filters) = queues.swap_remove(rng.below(queues.len()));
                p.shipped.remove_queue(slot, queue, &filters);
                p.reference.remove_queue(slot, queue, &filters);
                for inst in [&mut p.shipped, &mut p.reference] {
                    if let Some(i) = inst.get_mut(slot) {
                        i.queues.retain(|&q| q != queue);
                    }
                }
            } else if what == 2 && !queues.is_empty() {
                let q = rng.below(queues.len());
                let (queue, slot, filters) = &mut queues[q];
                if !filters.is_empty() {
                    let f = filters.swap_remove(rng.below(filters.len()));
                    let a = p.shipped.remove_filter(*slot, *queue, f);
                    let b = p.reference.remove_filter(*slot, *queue, f);
                    assert_eq!(a.is_ok(), b.is_ok(), "case {case} step {step}: remove");
                }
            } else if what <= 4 || queues.is_empty() {
                // A new queue in an instance that exists.
                let slots: Vec<usize> = (0..8).filter(|&s| p.shipped.get(s).is_some()).collect();
                let slot = rng.pick(&slots);
                let queue = QueueId(next_id as u32);
                next_id += 1;
                for inst in [&mut p.shipped, &mut p.reference] {
                    if let Some(i) = inst.get_mut(slot) {
                        i.queues.push(queue);
                    }
                }
                queues.push((queue, slot, Vec::new()));
            } else {
                let q = rng.below(queues.len());
                let (queue, slot, filters) = &mut queues[q];
                let mac = p.shipped.get(*slot).map_or(LINK, |i| i.mac);
                let filter = FilterId(next_id);
                next_id += 1;
                let f = random_filter(&mut rng, *queue, filter, mac);
                let a = p.shipped.install_filter(*slot, f.clone());
                let b = p.reference.install_filter(*slot, f.clone());
                assert_eq!(
                    a.is_ok(),
                    b.is_ok(),
                    "case {case} step {step}: install {:?} {:?}: {a:?} / {b:?}",
                    f.mode,
                    f.binding
                );
                if a.is_ok() {
                    filters.push(filter);
                }
            }
            linked = linked.max(p.shipped.link_bindings());
            for _ in 0..4 {
                let frame = random_frame(&mut rng);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let (target, arp) = p.shipped.receive(&frame, Some(QueueId(0)), &mut a);
                let expected = p.reference.dispatch(&frame);
                let arp_b = p
                    .reference
                    .receivers(&frame, expected, Some(QueueId(0)), &mut b);
                assert_eq!(
                    (target, arp, &a),
                    (expected, arp_b, &b),
                    "case {case} step {step}: frame {frame:02x?}"
                );
                // From another instance on this host, to each instance in turn.
                let slots: Vec<usize> = (0..8).filter(|&s| p.shipped.get(s).is_some()).collect();
                for slot in slots {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    let t = Target::One(slot);
                    let arp = p.shipped.receivers(&frame, t, None, &mut a);
                    let arp_b = p.reference.receivers(&frame, t, None, &mut b);
                    assert_eq!((arp, &a), (arp_b, &b), "case {case} step {step}: hairpin");
                }
                checked += 1;
            }
            for (a, b) in p.shipped.iter().zip(p.reference.iter()) {
                let (a, b) = (a.counters, b.counters);
                assert_eq!(
                    (a.rx_frames, a.rx_bytes),
                    (b.rx_frames, b.rx_bytes),
                    "case {case} step {step}: counters"
                );
            }
        }
    }
    assert!(checked > 10_000, "{checked} frames");
    assert!(linked > 0, "no binding was ever in the shared tables");
}
