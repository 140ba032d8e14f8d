//! The merged classifier the driver runs, fed the filters netd installs: it gives exactly
//! the queues of the reference scan on random filter sets and frames, install and removal
//! answers included; and the port filter the classifier builds without the compiler
//! (`netmux_classify::port_filter`) is instruction for instruction the compiler's program for
//! netd's port expression, with libpcap's verdicts.
//!
//! Filters are what netd installs: the compiler's port-filter builder with its key, address-
//! less bindings, taps, exclusive claims, owner filters without a key, and an owner binding
//! of a protocol the tables do not hold. Frames are the test kit's protocol frames plus frames
//! aimed at the filters' keys (right and wrong MAC, IPv4 options, fragments, truncations).

use std::collections::HashMap;
use std::net::IpAddr;

use netmux_classify::{Classifier, Classify, Key, LinearScan, RxFilter};
use netmux_compiler::builders::{self, Binding};
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

fn classify(c: &mut dyn Classify, frame: &[u8]) -> Vec<QueueId> {
    let mut out = Vec::new();
    c.classify(frame, frame.len() as u32, &mut out);
    let n = out.len();
    let out = sorted(out);
    let mut dedup = out.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), n, "a queue reported twice: {out:?}");
    out
}

fn observers(c: &mut dyn Classify, frame: &[u8], sender: QueueId) -> Vec<QueueId> {
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
        let mut linear = LinearScan::new(Strategy::Interpreter);
        // Half the sets know the link's MAC: netd's port filters are then confirmed by a MAC
        // comparison, the others by running the program.
        let mut merged = if set % 2 == 0 {
            Classifier::for_link(strategy, HOST_MAC)
        } else {
            Classifier::new(strategy)
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

#[test]
fn merged_classifier_gives_the_linear_scans_queues_on_random_filter_sets() {
    let seed = netmux_testkit::seed("merged_classifier_gives_the_linear_scans_queues");
    merged_equals_linear(Strategy::Interpreter, 60, 60, seed);
}

#[test]
fn merged_classifier_on_the_jit_gives_the_linear_scans_queues() {
    let seed = netmux_testkit::seed("merged_classifier_on_the_jit_gives_the_linear_scans_queues");
    merged_equals_linear(Strategy::Auto, 6, 40, seed);
}

/// The port filter built without the compiler is the compiler's program for netd's
/// expression, instruction for instruction, for keys of both families, both transports and
/// awkward values (zero words in the address or the MAC, port 0 and 65535).
#[test]
fn the_classifiers_port_filter_is_the_compilers_program_for_netds_expression() {
    let mut rng = Rng::new(netmux_testkit::seed(
        "the_classifiers_port_filter_is_the_compilers_program_for_netds_expression",
    ));
    let mut checked = 0;
    for i in 0..400 {
        let mut mac = [0u8; 6];
        let mut v6 = [0u8; 16];
        let mut v4 = [0u8; 4];
        for b in mac.iter_mut().chain(v6.iter_mut()).chain(v4.iter_mut()) {
            // Zero bytes often, so whole zero words occur.
            *b = if rng.below(3) == 0 {
                0
            } else {
                rng.next_u64() as u8
            };
        }
        if v4 == [0; 4] {
            v4 = [192, 0, 2, 1];
        }
        if v6 == [0; 16] {
            v6[15] = 1;
        }
        let ip = if i % 2 == 0 {
            IpAddr::from(v4)
        } else {
            IpAddr::from(v6)
        };
        let transport = if rng.below(2) == 0 {
            builders::Transport::Tcp
        } else {
            builders::Transport::Udp
        };
        let port = match i % 10 {
            0 => 0,
            1 => 65535,
            _ => rng.next_u64() as u16,
        };
        let b = Binding {
            mac,
            ip,
            transport,
            port,
        };
        let expr = builders::rx_port_expr(&b);
        let compiled = netmux_compiler::compile(&expr, &netmux_compiler::Options::default())
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        let key = Key::of(&key(ip, transport.ip_protocol(), port)).unwrap();
        let built = netmux_classify::port_filter::program(&key, mac).unwrap();
        assert_eq!(built.to_bytes(), compiled.to_bytes(), "{expr}");
        assert!(netmux_classify::port_filter::is_port_filter(
            &compiled, &key, mac
        ));
        checked += 1;
    }
    assert_eq!(checked, 400);
}

/// The same programs give libpcap's verdict on every frame aimed at them.
#[test]
fn the_classifiers_port_filter_gives_libpcaps_verdicts() {
    let frames = frames();
    for (ip, transport) in [
        (IpAddr::from(addrs::V4[0]), builders::Transport::Udp),
        (IpAddr::from(addrs::V6[1]), builders::Transport::Tcp),
    ] {
        for port in PORTS {
            let b = Binding {
                mac: HOST_MAC,
                ip,
                transport,
                port,
            };
            let expr = builders::rx_port_expr(&b);
            let key = Key::of(&key(ip, transport.ip_protocol(), port)).unwrap();
            let built = netmux_classify::port_filter::program(&key, HOST_MAC).unwrap();
            let oracle = netmux_testkit::BpfProgram::compile(&expr, true)
                .unwrap_or_else(|e| panic!("libpcap refuses {expr}: {e}"));
            let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
            for f in &frames {
                let ours =
                    netmux_vm::interp::run(&built, f, f.len() as u32, &mut scratch).is_accept();
                assert_eq!(
                    ours,
                    oracle.matches(f, f.len() as u32),
                    "{expr} on {f:02x?}"
                );
            }
        }
    }
}
