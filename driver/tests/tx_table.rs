//! The transmit grant table against the per-binding programs it replaced: for random grants
//! and random frames (own and foreign MACs and addresses, granted and other ports and
//! protocols, VLAN tags, IPv4 options and bad header lengths, fragments, cut and padded
//! frames), the table accepts exactly the frames one of the compiled
//! `ether src .. and ip|ip6 src host .. and tcp|udp src port ..` programs accepts, and the
//! whole transmit check gives the same status, reason included.

use std::net::IpAddr;

use netmux_compiler::builders::{self, Binding};
use netmux_driver::daemon::tx::{check, grant_key, TxFilter, TxFilters};
use netmux_proto::driver::{FilterId, PortBinding};
use netmux_vm::{Scratch, Strategy as VmStrategy};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
const ADDRESSES: [&str; 5] = [
    "192.0.2.1",
    "192.0.2.2",
    "fe80::1",
    "2001:db8::2",
    "0.0.0.0",
];
const PORTS: [u16; 3] = [53, 80, 5000];

/// One grant: an address of [`ADDRESSES`], TCP or UDP, a port of [`PORTS`].
#[derive(Clone, Copy, Debug)]
struct Grant {
    address: usize,
    tcp: bool,
    port: usize,
}

impl Grant {
    fn ip(self) -> IpAddr {
        ADDRESSES[self.address].parse().unwrap()
    }

    fn binding(self) -> PortBinding {
        let (address, ipv6) = match self.ip() {
            IpAddr::V4(a) => {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, false)
            }
            IpAddr::V6(a) => (a.octets(), true),
        };
        PortBinding {
            protocol: if self.tcp { 6 } else { 17 },
            address,
            ipv6,
            port: PORTS[self.port],
        }
    }

    fn expr(self) -> String {
        builders::tx_port_expr(&Binding {
            mac: MAC,
            ip: self.ip(),
            transport: if self.tcp {
                builders::Transport::Tcp
            } else {
                builders::Transport::Udp
            },
            port: PORTS[self.port],
        })
    }
}

fn grant() -> impl Strategy<Value = Grant> {
    (0..ADDRESSES.len(), any::<bool>(), 0..PORTS.len()).prop_map(|(address, tcp, port)| Grant {
        address,
        tcp,
        port,
    })
}

/// What a generated frame is made of.
#[derive(Clone, Debug)]
struct FrameSpec {
    /// Built from this grant's address, protocol and port (index modulo the grants), the
    /// other fields still applying: most frames are near misses or hits.
    aim: Option<usize>,
    own_mac: bool,
    /// 0 none, 1 one 802.1Q tag, 2 two tags (QinQ).
    vlan_tags: u8,
    /// 0 IPv4, 1 IPv6, 2 ARP, 3 another ethertype.
    kind: u8,
    /// An index into [`ADDRESSES`] of the right family, or a foreign address.
    source: Option<usize>,
    /// 6, 17, 1, 58, 44 (IPv6 fragment header) or any.
    protocol: u8,
    /// A granted port, or any.
    port: Result<usize, u16>,
    /// IPv4 header length in words (5 usually; 0..15 sometimes).
    ihl: u8,
    /// IPv4 flags and fragment offset field.
    fragment: u16,
    /// Whether the IPv4 total length or IPv6 payload length is right (else random).
    length_right: bool,
    length: u16,
    /// Bytes of padding after the datagram.
    padding: u8,
    /// Cut the frame to this many bytes (when shorter).
    cut: Option<usize>,
    /// Random bytes for the rest of the frame.
    noise: Vec<u8>,
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        (
            prop::bool::weighted(0.85),
            prop_oneof![8 => Just(0u8), 1 => Just(1), 1 => Just(2)],
            prop_oneof![4 => Just(0u8), 4 => Just(1), 1 => Just(2), 1 => Just(3)],
            prop_oneof![8 => (0..ADDRESSES.len()).prop_map(Some), 1 => Just(None)],
            prop_oneof![
                4 => Just(17u8),
                4 => Just(6),
                1 => Just(1),
                1 => Just(58),
                1 => Just(44),
                1 => any::<u8>()
            ],
            prop_oneof![6 => (0..PORTS.len()).prop_map(Ok), 1 => any::<u16>().prop_map(Err)],
            prop_oneof![8 => Just(5u8), 1 => Just(6), 1 => 0..16u8],
        ),
        (
            prop_oneof![8 => Just(0u16), 1 => Just(0x2000), 1 => Just(0x0001), 1 => any::<u16>()],
            prop::bool::weighted(0.85),
            any::<u16>(),
            prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
            prop_oneof![6 => Just(None), 1 => (0..120usize).prop_map(Some)],
            prop::collection::vec(any::<u8>(), 64),
            prop_oneof![2 => Just(None), 3 => (0..4usize).prop_map(Some)],
        ),
    )
        .prop_map(
            |(
                (own_mac, vlan_tags, kind, source, protocol, port, ihl),
                (fragment, length_right, length, padding, cut, noise, aim),
            )| FrameSpec {
                aim,
                own_mac,
                vlan_tags,
                kind,
                source,
                protocol,
                port,
                ihl,
                fragment,
                length_right,
                length,
                padding,
                cut,
                noise,
            },
        )
}

/// `spec` aimed at one of `grants`, if it aims.
fn aimed(spec: &FrameSpec, grants: &[Grant]) -> FrameSpec {
    let mut spec = spec.clone();
    if let (Some(i), false) = (spec.aim, grants.is_empty()) {
        let g = grants[i % grants.len()];
        spec.kind = if g.binding().ipv6 { 1 } else { 0 };
        spec.source = Some(g.address);
        spec.protocol = g.binding().protocol;
        spec.port = Ok(g.port);
    }
    spec
}

fn build(spec: &FrameSpec) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(if spec.own_mac { &MAC } else { &OTHER_MAC });
    for _ in 0..spec.vlan_tags {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    }
    let source: Option<IpAddr> = spec.source.map(|i| ADDRESSES[i].parse().unwrap());
    let port = match spec.port {
        Ok(i) => PORTS[i],
        Err(p) => p,
    };
    let mut transport = spec.noise[..20].to_vec();
    transport[..2].copy_from_slice(&port.to_be_bytes());
    match spec.kind {
        0 => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let header = usize::from(spec.ihl) * 4;
            // The fixed header, then options up to the stated length (a stated length below
            // 20 bytes puts the port inside the fixed header, where a program would read it).
            let mut ip = vec![0u8; header.max(20)];
            ip[0] = 0x40 | spec.ihl;
            ip[6..8].copy_from_slice(&spec.fragment.to_be_bytes());
            ip[8] = 64;
            ip[9] = spec.protocol;
            let src = match source {
                Some(IpAddr::V4(a)) => a.octets(),
                Some(IpAddr::V6(a)) => a.octets()[12..].try_into().unwrap(),
                None => [198, 51, 100, 7],
            };
            ip[12..16].copy_from_slice(&src);
            ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
            ip.extend_from_slice(&transport);
            let total = if spec.length_right {
                ip.len() as u16
            } else {
                spec.length
            };
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        1 => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            let payload = if spec.length_right {
                transport.len() as u16
            } else {
                spec.length
            };
            ip[4..6].copy_from_slice(&payload.to_be_bytes());
            ip[6] = spec.protocol;
            ip[7] = 64;
            let src = match source {
                Some(IpAddr::V6(a)) => a.octets(),
                Some(IpAddr::V4(a)) => a.to_ipv6_mapped().octets(),
                None => "2001:db8::77"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            };
            ip[8..24].copy_from_slice(&src);
            ip[24..40].copy_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            ip.extend_from_slice(&transport);
            f.extend_from_slice(&ip);
        }
        2 => {
            f.extend_from_slice(&0x0806u16.to_be_bytes());
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&MAC);
            let src = match source {
                Some(IpAddr::V4(a)) => a.octets(),
                _ => [198, 51, 100, 7],
            };
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0; 10]);
        }
        _ => {
            f.extend_from_slice(&0x88b5u16.to_be_bytes());
            f.extend_from_slice(&spec.noise);
        }
    }
    f.extend(spec.noise.iter().take(usize::from(spec.padding)));
    if let Some(cut) = spec.cut {
        f.truncate(cut);
    }
    f
}

fn programs(grants: &[Grant]) -> TxFilters {
    let mut filters = TxFilters::default();
    for (i, g) in grants.iter().enumerate() {
        let program = netmux_compiler::compile_with(
            &g.expr(),
            &netmux_compiler::Options::default(),
            &netmux_compiler::NoResolver,
        )
        .unwrap()
        .program;
        filters.push(TxFilter {
            filter: FilterId(i as u64),
            binding: Some(g.binding()),
            engine: netmux_vm::engine(program, VmStrategy::Interpreter).unwrap(),
        });
    }
    filters
}

fn table(grants: &[Grant]) -> TxFilters {
    let mut filters = TxFilters::default();
    for (i, g) in grants.iter().enumerate() {
        filters.grant(FilterId(i as u64), g.binding());
    }
    filters
}

const CASES: u32 = 256;
const FRAMES_PER_CASE: usize = 64;

#[test]
fn the_grant_table_decides_every_frame_as_the_per_binding_programs_do() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let seed = netmux_testkit::seed("tx_table").to_le_bytes();
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = seed[i % 8] ^ (i as u8);
    }
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let sent = std::cell::Cell::new(0usize);
    let total = std::cell::Cell::new(0usize);
    runner
        .run(
            &(
                prop::collection::vec(grant(), 0..4),
                prop::collection::vec(frame_spec(), FRAMES_PER_CASE),
            ),
            |(grants, frames)| {
                let programs = programs(&grants);
                let table = table(&grants);
                let mut scratch = Scratch::default();
                for spec in &frames {
                    let spec = &aimed(spec, &grants);
                    let frame = build(spec);
                    let by_program = programs.iter_programs().any(|f| {
                        f.engine
                            .run_with_scratch(&frame, frame.len() as u32, &mut scratch)
                            .is_accept()
                    });
                    prop_assert_eq!(
                        table.table_accepts(&frame, &MAC),
                        by_program,
                        "raw verdict for {:?} ({:02x?}), key {:?}, grants {:?}",
                        spec,
                        frame,
                        grant_key(&frame, &MAC),
                        grants
                    );
                    let want = check(&frame, &programs, &MAC, &mut scratch);
                    let got = check(&frame, &table, &MAC, &mut scratch);
                    prop_assert_eq!(got, want, "status for {:?} ({:02x?})", spec, frame);
                    total.set(total.get() + 1);
                    if got.is_sent() {
                        sent.set(sent.get() + 1);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    if cases >= CASES {
        // Enough of both verdicts to mean something.
        assert!(
            sent.get() * 20 >= total.get(),
            "{} of {} sent",
            sent.get(),
            total.get()
        );
        assert!(
            sent.get() * 2 <= total.get(),
            "{} of {} sent",
            sent.get(),
            total.get()
        );
    }
}
