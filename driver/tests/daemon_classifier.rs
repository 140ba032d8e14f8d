//! The driver's classifiers behind one trait: the merged classifier (the default) gives
//! exactly the queues of the linear scan (the reference) on random filter sets and frames,
//! both enforce the same ownership rules, and a binding key that disagrees with its program
//! never delivers a frame the program rejects.
//!
//! Filters are what netd installs: the compiler's port-filter builder with its key, address-
//! less bindings, taps, exclusive claims, owner filters without a key, and an owner binding
//! of a protocol the tables do not hold. Frames are the test kit's protocol frames plus frames
//! aimed at the filters' keys (right and wrong MAC, IPv4 options, fragments, truncations).

use std::collections::HashMap;
use std::net::IpAddr;

use netmux_compiler::builders::{self, Binding};
use netmux_driver::daemon::{
    Classifier, ClassifierError, LinearClassifier, MergedClassifier, RxFilter,
};
use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_testkit::frames::{self, addrs, FrameBuilder, Ipv4, Rng};
use netmux_vm::{Program, Strategy};

/// The host's MAC: netd's port filters name it as the destination.
const HOST_MAC: [u8; 6] = addrs::MAC[1];
/// Ports the bindings use (frames aim at these and at one more).
const PORTS: [u16; 4] = [53, 80, 443, 7];
/// Queues the random sets spread their filters over.
const QUEUES: usize = 8;

/// One kind of filter netd may install.
#[derive(Clone, Debug)]
struct Template {
    expr: String,
    mode: RxMode,
    binding: Option<PortBinding>,
}

fn key(ip: IpAddr, protocol: u8, port: u16) -> PortBinding {
    let (address, ipv6) = match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, false)
        }
        IpAddr::V6(a) => (a.octets(), true),
    };
    PortBinding {
        protocol,
        address,
        ipv6,
        port,
    }
}

fn templates() -> Vec<Template> {
    let mut t = Vec::new();
    let addresses = [
        IpAddr::from(addrs::V4[0]),
        IpAddr::from(addrs::V4[1]),
        IpAddr::from(addrs::V6[1]),
        IpAddr::from(addrs::V6[2]),
    ];
    for ip in addresses {
        for (transport, number) in [
            (builders::Transport::Udp, 17),
            (builders::Transport::Tcp, 6),
        ] {
            for port in PORTS {
                let b = Binding {
                    mac: HOST_MAC,
                    ip,
                    transport,
                    port,
                };
                t.push(Template {
                    expr: builders::rx_port_expr(&b),
                    mode: RxMode::Owner,
                    binding: Some(key(ip, number, port)),
                });
            }
        }
    }
    // Address-less bindings: all-zero addresses, programs of one family.
    for port in [53, 80] {
        t.push(Template {
            expr: format!("ip and udp dst port {port}"),
            mode: RxMode::Owner,
            binding: Some(key(IpAddr::from([0u8; 4]), 17, port)),
        });
        t.push(Template {
            expr: format!("ip6 and tcp dst port {port}"),
            mode: RxMode::Owner,
            binding: Some(key(IpAddr::from([0u8; 16]), 6, port)),
        });
    }
    // An owner binding of a protocol the tables do not hold: runs after them.
    t.push(Template {
        expr: "icmp and dst host 10.0.0.1".to_string(),
        mode: RxMode::Owner,
        binding: Some(key(IpAddr::from(addrs::V4[0]), 1, 0)),
    });
    for expr in [
        "udp",
        "tcp port 80",
        "ip6",
        "arp",
        "icmp or icmp6",
        "ether broadcast",
        "udp port 53 or tcp port 443",
        "ip[8] > 10",
        "ip and udp dst port 53",
    ] {
        for mode in [RxMode::Tap, RxMode::Owner] {
            t.push(Template {
                expr: expr.to_string(),
                mode,
                binding: None,
            });
        }
    }
    t.push(Template {
        expr: "ip or ip6 or arp".to_string(),
        mode: RxMode::Exclusive,
        binding: None,
    });
    t
}

/// Compiles each expression once.
struct Programs(HashMap<String, Program>);

impl Programs {
    fn get(&mut self, expr: &str) -> Program {
        self.0
            .entry(expr.to_string())
            .or_insert_with(|| {
                netmux_compiler::compile(expr, &netmux_compiler::Options::default())
                    .unwrap_or_else(|e| panic!("{expr}: {e}"))
            })
            .clone()
    }
}

/// Frames aimed at the bindings' keys, with the variations that decide a port filter.
fn frames() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = frames::protocol_frames()
        .into_iter()
        .map(|f| f.data)
        .collect();
    let other_mac = addrs::MAC[0];
    let ports = [53u16, 80, 443, 7, 9];
    for mac in [HOST_MAC, other_mac, frames::BROADCAST] {
        for dst in [addrs::V4[0], addrs::V4[1], addrs::V4[2]] {
            for (proto, port) in [17u8, 6].iter().flat_map(|p| ports.map(|q| (*p, q))) {
                for (ihl, frag) in [(5u8, 0u16), (6, 0), (5, 0x2000), (5, 0x0010)] {
                    let mut ip = Ipv4::new(addrs::V4[3], dst, proto);
                    ip.ihl = ihl;
                    ip.frag = frag;
                    let b = FrameBuilder::ethernet(mac, addrs::MAC[3])
                        .ethertype(0x0800)
                        .ipv4(ip);
                    let b = if proto == 17 {
                        b.udp(4000, port)
                    } else {
                        b.tcp(4000, port, 0x02)
                    };
                    out.push(b.payload(6).finish().data);
                }
            }
        }
        for dst in [addrs::V6[1], addrs::V6[2], addrs::V6[0]] {
            for (proto, port) in [17u8, 6].iter().flat_map(|p| ports.map(|q| (*p, q))) {
                let b = FrameBuilder::ethernet(mac, addrs::MAC[3])
                    .ethertype(0x86dd)
                    .ipv6(addrs::V6[3], dst, proto);
                let b = if proto == 17 {
                    b.udp(4000, port)
                } else {
                    b.tcp(4000, port, 0x02)
                };
                out.push(b.payload(6).finish().data);
            }
        }
    }
    // Every frame again, cut short at a few lengths around the headers.
    let whole = out.len();
    for i in 0..whole {
        for keep in [12, 14, 23, 30, 33, 36, 38, 55, 57] {
            if keep < out[i].len() {
                out.push(out[i][..keep].to_vec());
            }
        }
    }
    out
}

fn sorted(mut v: Vec<QueueId>) -> Vec<QueueId> {
    v.sort();
    v
}

fn classify(c: &mut dyn Classifier, frame: &[u8]) -> Vec<QueueId> {
    let mut out = Vec::new();
    c.classify(frame, frame.len() as u32, &mut out);
    let n = out.len();
    let out = sorted(out);
    let mut dedup = out.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), n, "a queue reported twice: {out:?}");
    out
}

fn observers(c: &mut dyn Classifier, frame: &[u8], sender: QueueId) -> Vec<QueueId> {
    let mut out = Vec::new();
    c.observers(frame, frame.len() as u32, sender, &mut out);
    sorted(out)
}

/// Random filter sets, installed and partly removed in both classifiers in the same order;
/// every install and removal must get the same answer, and every frame the same queues.
fn merged_equals_linear(strategy: Strategy, sets: usize, max_filters: usize, seed: u64) {
    eprintln!("seed {seed:#x} ({strategy:?})");
    let mut rng = Rng::new(seed);
    let templates = templates();
    let mut programs = Programs(HashMap::new());
    let frames = frames();
    let mut delivered = 0usize;
    let mut sets_with_tables = 0usize;
    let mut confirmed_by_mac = 0usize;
    for set in 0..sets {
        let mut linear = LinearClassifier::new(Strategy::Interpreter);
        // Half the sets know the link's MAC: netd's port filters are then confirmed by a MAC
        // comparison, the others by running the program.
        let mut merged = if set % 2 == 0 {
            MergedClassifier::for_link(strategy, HOST_MAC)
        } else {
            MergedClassifier::new(strategy)
        };
        let n = 1 + rng.below(max_filters);
        let mut installed = Vec::new();
        for i in 0..n {
            let t = rng.pick(&templates).clone();
            let queue = QueueId(rng.below(QUEUES) as u32);
            let filter = FilterId((set * 10_000 + i) as u64);
            let make = |p: Program| RxFilter {
                queue,
                filter,
                mode: t.mode,
                binding: t.binding,
                program: p,
            };
            let a = linear.install(make(programs.get(&t.expr)));
            let b = merged.install(make(programs.get(&t.expr)));
            assert_eq!(a, b, "set {set}: installing {t:?} on {queue:?}");
            if a.is_ok() {
                installed.push((queue, filter));
            }
        }
        for _ in 0..rng.below(n / 4 + 1) {
            let (queue, filter) = *rng.pick(&installed);
            assert_eq!(linear.remove(queue, filter), merged.remove(queue, filter));
        }
        if rng.below(4) == 0 {
            let queue = QueueId(rng.below(QUEUES) as u32);
            linear.remove_queue(queue);
            merged.remove_queue(queue);
        }
        assert_eq!(linear.len(), merged.len(), "set {set}");
        sets_with_tables += usize::from(merged.keys_bound() > 0);
        confirmed_by_mac += merged.confirmed_by_mac();
        for frame in &frames {
            let want = classify(&mut linear, frame);
            assert_eq!(
                classify(&mut merged, frame),
                want,
                "set {set}, frame {frame:02x?}"
            );
            delivered += want.len();
            let sender = QueueId(rng.below(QUEUES) as u32);
            assert_eq!(
                observers(&mut merged, frame, sender),
                observers(&mut linear, frame, sender),
                "set {set}, observers of {frame:02x?}"
            );
        }
    }
    // The sets must actually deliver something, or the comparison proves little.
    assert!(delivered > frames.len(), "{delivered}");
    // And most sets must put bindings in the tables, or the merged path went untested.
    assert!(sets_with_tables * 2 > sets, "{sets_with_tables} of {sets}");
    assert!(confirmed_by_mac > 0);
}

fn seed() -> u64 {
    std::env::var("NETMUX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

#[test]
fn merged_classifier_gives_the_linear_scans_queues_on_random_filter_sets() {
    merged_equals_linear(Strategy::Interpreter, 60, 60, seed());
}

#[test]
fn merged_classifier_on_the_jit_gives_the_linear_scans_queues() {
    merged_equals_linear(Strategy::Auto, 6, 40, seed());
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

fn port_program(port: u16) -> Program {
    let b = Binding {
        mac: HOST_MAC,
        ip: IpAddr::from(addrs::V4[0]),
        transport: builders::Transport::Udp,
        port,
    };
    netmux_compiler::compile(
        &builders::rx_port_expr(&b),
        &netmux_compiler::Options::default(),
    )
    .unwrap()
}

#[test]
fn a_key_that_disagrees_with_its_program_never_delivers_what_the_program_rejects() {
    for c in [
        MergedClassifier::new(Strategy::Interpreter),
        MergedClassifier::for_link(Strategy::Interpreter, HOST_MAC),
    ] {
        lying_key(c);
    }
}

fn lying_key(mut c: MergedClassifier) {
    // The key says port 53; the program accepts port 80 only.
    c.install(RxFilter {
        queue: QueueId(1),
        filter: FilterId(1),
        mode: RxMode::Owner,
        binding: Some(key(IpAddr::from(addrs::V4[0]), 17, 53)),
        program: port_program(80),
    })
    .unwrap();
    assert_eq!(c.keys_bound(), 1);
    // The key matches, the program rejects: not delivered.
    assert!(classify(&mut c, &udp_frame(HOST_MAC, addrs::V4[0], 53)).is_empty());
    // The program accepts, the key differs: not delivered either (netd gets it as unmatched).
    assert!(classify(&mut c, &udp_frame(HOST_MAC, addrs::V4[0], 80)).is_empty());
    assert_eq!(c.confirmed_by_mac(), 0);
}

#[test]
fn netds_own_port_filter_is_confirmed_by_its_destination_mac() {
    let mut honest = MergedClassifier::for_link(Strategy::Interpreter, HOST_MAC);
    honest
        .install(RxFilter {
            queue: QueueId(2),
            filter: FilterId(2),
            mode: RxMode::Owner,
            binding: Some(key(IpAddr::from(addrs::V4[0]), 17, 53)),
            program: port_program(53),
        })
        .unwrap();
    assert_eq!(
        classify(&mut honest, &udp_frame(HOST_MAC, addrs::V4[0], 53)),
        [QueueId(2)]
    );
    assert_eq!(honest.confirmed_by_mac(), 1);
    // The key matches but the frame is for another MAC: not delivered.
    assert!(classify(&mut honest, &udp_frame(addrs::MAC[0], addrs::V4[0], 53)).is_empty());
    // Another link's MAC: the program is not the canonical one there, and runs.
    let mut other = MergedClassifier::for_link(Strategy::Interpreter, addrs::MAC[0]);
    other
        .install(RxFilter {
            queue: QueueId(2),
            filter: FilterId(2),
            mode: RxMode::Owner,
            binding: Some(key(IpAddr::from(addrs::V4[0]), 17, 53)),
            program: port_program(53),
        })
        .unwrap();
    assert_eq!(other.confirmed_by_mac(), 0);
    assert_eq!(
        classify(&mut other, &udp_frame(HOST_MAC, addrs::V4[0], 53)),
        [QueueId(2)]
    );
    assert!(classify(&mut other, &udp_frame(addrs::MAC[0], addrs::V4[0], 53)).is_empty());
}

fn owner(queue: u32, filter: u64, port: u16) -> RxFilter {
    RxFilter {
        queue: QueueId(queue),
        filter: FilterId(filter),
        mode: RxMode::Owner,
        binding: Some(key(IpAddr::from(addrs::V4[0]), 17, port)),
        program: port_program(port),
    }
}

fn claim(queue: u32, filter: u64) -> RxFilter {
    RxFilter {
        queue: QueueId(queue),
        filter: FilterId(filter),
        mode: RxMode::Exclusive,
        binding: None,
        program: netmux_compiler::compile("ip or arp", &Default::default()).unwrap(),
    }
}

/// The ownership rules, run on both classifiers.
fn ownership_rules(c: &mut dyn Classifier) {
    let frame = udp_frame(HOST_MAC, addrs::V4[0], 53);
    c.install(owner(1, 1, 53)).unwrap();
    // One owner per key, whichever queue asks; a refusal changes nothing.
    assert_eq!(
        c.install(owner(2, 2, 53)),
        Err(ClassifierError::BindingInUse(QueueId(1)))
    );
    assert_eq!(
        c.install(owner(1, 3, 53)),
        Err(ClassifierError::BindingInUse(QueueId(1)))
    );
    assert_eq!(classify(c, &frame), [QueueId(1)]);
    // No claim while a binding exists, the claimant's own included.
    assert_eq!(c.install(claim(2, 4)), Err(ClassifierError::BindingsExist));
    assert_eq!(c.install(claim(1, 4)), Err(ClassifierError::BindingsExist));
    assert_eq!(c.len(), 1);
    c.remove(QueueId(1), FilterId(1)).unwrap();
    assert!(classify(c, &frame).is_empty());
    // No binding and no second claim while a claim exists, the claimant's own included.
    c.install(claim(2, 4)).unwrap();
    assert_eq!(
        c.install(owner(2, 5, 80)),
        Err(ClassifierError::ExclusiveHeld(QueueId(2)))
    );
    assert_eq!(
        c.install(owner(3, 5, 80)),
        Err(ClassifierError::ExclusiveHeld(QueueId(2)))
    );
    assert_eq!(
        c.install(claim(3, 6)),
        Err(ClassifierError::ExclusiveHeld(QueueId(2)))
    );
    assert_eq!(classify(c, &frame), [QueueId(2)]);
    // The claimant going away frees the link.
    c.remove_queue(QueueId(2));
    assert!(c.is_empty());
    c.install(owner(3, 5, 80)).unwrap();
    assert_eq!(
        c.install(owner(4, 5, 81)),
        Err(ClassifierError::DuplicateFilter(FilterId(5)))
    );
    assert_eq!(
        c.remove(QueueId(4), FilterId(5)),
        Err(ClassifierError::NotFound(QueueId(4), FilterId(5)))
    );
}

#[test]
fn both_classifiers_enforce_the_same_ownership_rules() {
    ownership_rules(&mut LinearClassifier::new(Strategy::Interpreter));
    ownership_rules(&mut MergedClassifier::new(Strategy::Interpreter));
}

#[test]
fn a_removed_binding_frees_its_key_in_place_and_can_be_bound_again() {
    let mut c = MergedClassifier::new(Strategy::Interpreter);
    for port in 0..200u16 {
        c.install(owner(u32::from(port), u64::from(port), 1000 + port))
            .unwrap();
    }
    assert_eq!(c.keys_bound(), 200);
    assert_eq!(c.other_filters(), 0);
    let frame = udp_frame(HOST_MAC, addrs::V4[0], 1007);
    assert_eq!(classify(&mut c, &frame), [QueueId(7)]);
    c.remove(QueueId(7), FilterId(7)).unwrap();
    assert!(classify(&mut c, &frame).is_empty());
    assert_eq!(c.keys_bound(), 199);
    c.install(owner(900, 900, 1007)).unwrap();
    assert_eq!(classify(&mut c, &frame), [QueueId(900)]);
    assert_eq!(
        classify(&mut c, &udp_frame(HOST_MAC, addrs::V4[0], 1199)),
        [QueueId(199)]
    );
}

/// Whether this build has the JIT (the `jit` feature of the driver and the VM).
fn jit_available() -> bool {
    netmux_vm::engine(port_program(53), Strategy::Jit).is_ok()
}

#[test]
fn the_engine_choice_reaches_the_classifier_and_the_tx_filters() {
    use netmux_driver::daemon::{Driver, DriverConfig};
    use netmux_driver::link::MemoryLink;
    use netmux_proto::driver::{Direction, DriverReply, DriverRequest, QueueConfig};
    for classifier in [
        netmux_driver::daemon::ClassifierKind::Merged,
        netmux_driver::daemon::ClassifierKind::Linear,
    ] {
        let mut driver = Driver::new(
            Box::new(MemoryLink::new(Vec::new())),
            DriverConfig {
                strategy: Strategy::Jit,
                classifier,
                ..DriverConfig::default()
            },
        );
        let created = driver.handle(DriverRequest::CreateQueue {
            queue: QueueId(1),
            config: QueueConfig {
                slot_size: 2048,
                rx_slots: 64,
                tx_slots: 64,
                completion_slots: 64,
            },
        });
        assert!(created.fds.is_some(), "{:?}", created.reply);
        // A program that is not netd's port filter for the key: the engine must run it.
        let mut filter = 1;
        let mut install = |direction, binding: Option<PortBinding>| {
            filter += 1;
            driver
                .handle(DriverRequest::InstallFilter {
                    queue: QueueId(1),
                    filter: FilterId(filter),
                    direction,
                    mode: RxMode::Owner,
                    binding,
                    program: port_program(80).to_bytes(),
                })
                .reply
        };
        let with_key = install(Direction::Rx, Some(key(IpAddr::from(addrs::V4[0]), 17, 53)));
        let without_key = install(Direction::Rx, None);
        let tx = install(Direction::Tx, None);
        for reply in [with_key, without_key, tx] {
            if jit_available() {
                assert_eq!(reply, DriverReply::Done, "{classifier:?}");
            } else {
                assert!(
                    matches!(&reply, DriverReply::Error(e) if e.message.contains("jit")),
                    "{classifier:?}: {reply:?}"
                );
            }
        }
    }
}
