//! Overlay costs: a frame's whole way through the driver on an overlay against the same frame
//! on the link, per 64-byte and full-sized frame, in the same run; VXLAN encapsulation and
//! decapsulation on their own; and a mapping-cache hit among 100,000 mappings.
//!
//! The path rows (`overlay-tx/64B/netmux` against `overlay-tx/64B/peer-plain`, and `overlay-rx`)
//! measure what a user pays: on transmit, a client sends a batch of 32 UDP frames into its
//! ring, one driver turn takes them, checks them with the client's transmit filter and puts
//! them on the link (the overlay side encapsulating each toward the mapped VTEP), and the
//! client collects the completions; on receive, one driver turn takes 32 frames from the link
//! (VXLAN from the peer's VTEP, or the bare inner frames), classifies them in the instance
//! (after decapsulation) and delivers them to the client's ring, which the client drains. The
//! instance has a MAC of its own in both; the full-sized frame is the largest an overlay on a
//! 1,500-byte underlay carries (1,464 bytes inside, 1,514 on the wire). Goal: at most 1.3x the
//! plain path. Before the rows, a paired measurement (both sides in turn, round after round)
//! prints the median ratio, which a machine shared with other work disturbs far less.
//!
//! The parts on their own (`encapsulate 64` beside `plain copy 64`, ...) show what the wire
//! format costs against a bare copy of the frame; the cache is the driver's own
//! `MappingCache`, filled with 100,000 MACs and asked for random ones among them (goal: a hit
//! at most 20 ns). After criterion's report, a summary prints those medians and ratios.

use std::time::Instant;

use criterion::{black_box, criterion_main, Criterion};
use netmux_driver::daemon::overlay::MappingCache;
use netmux_wire::vxlan::{decapsulate, encapsulate, outer_udp, Underlay};

const TO: Underlay = Underlay {
    src_mac: [2, 0, 0, 0, 0, 1],
    dst_mac: [2, 0, 0, 0, 0, 2],
    src_ip: [192, 0, 2, 1],
    dst_ip: [192, 0, 2, 2],
    dst_port: 4789,
};
const MAPPINGS: u64 = 100_000;

/// An inner IPv4 UDP frame of `len` bytes.
fn inner(len: usize) -> Vec<u8> {
    let mut f = vec![2, 0xbb, 0, 0, 0, 2, 2, 0xaa, 0, 0, 0, 1, 0x08, 0x00];
    let ip_len = (len - 14) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0, 7]);
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(len, 0x5a);
    f
}

fn mac(i: u64) -> [u8; 6] {
    let b = (i * 2_654_435_761).to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

fn filled_cache() -> (MappingCache, Vec<u64>) {
    let mut cache = MappingCache::default();
    let keys: Vec<u64> = (0..MAPPINGS).map(|i| MappingCache::key(&mac(i))).collect();
    for (i, &k) in keys.iter().enumerate() {
        assert!(cache.insert(k, Some(([192, 0, 2, (i % 250) as u8 + 1], 4789))));
    }
    // Asked in a scattered order, as frames to many destinations would.
    let order: Vec<u64> = (0..4096u64)
        .map(|i| keys[((i * 7919) % MAPPINGS) as usize])
        .collect();
    (cache, order)
}

fn bench(c: &mut Criterion) {
    for len in [64usize, 1500] {
        let frame = inner(len);
        let mut out = Vec::with_capacity(len + 64);
        c.bench_function(&format!("plain copy {len}"), |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(black_box(&frame));
                black_box(out.len())
            })
        });
        c.bench_function(&format!("encapsulate {len}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(encapsulate(black_box(&frame), 42, &TO, &mut out).unwrap())
            })
        });
        let mut wire = Vec::new();
        encapsulate(&frame, 42, &TO, &mut wire).unwrap();
        c.bench_function(&format!("decapsulate {len}"), |b| {
            b.iter(|| {
                let f = black_box(&wire[..]);
                let o = outer_udp(f).unwrap();
                let d = decapsulate(&f[o.payload..o.payload_end]).unwrap();
                out.clear();
                out.extend_from_slice(d.inner);
                black_box(d.vni)
            })
        });
    }
    let (cache, order) = filled_cache();
    c.bench_function("mapping cache hit among 100000", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(cache.get(black_box(order[i])))
        })
    });
}

/// Median ns per operation of `f` run `n` times, over several passes.
fn median_ns(n: u32, mut f: impl FnMut()) -> f64 {
    let mut passes: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    passes[passes.len() / 2]
}

fn summary(_: &mut Criterion) {
    println!("\noverlay parts (median ns per frame, against a bare copy of the frame)");
    for len in [64usize, 1500] {
        let frame = inner(len);
        let mut out = Vec::with_capacity(len + 64);
        let plain = median_ns(200_000, || {
            out.clear();
            out.extend_from_slice(black_box(&frame));
            black_box(out.len());
        });
        let encap = median_ns(200_000, || {
            out.clear();
            black_box(encapsulate(black_box(&frame), 42, &TO, &mut out).ok());
        });
        let mut wire = Vec::new();
        encapsulate(&frame, 42, &TO, &mut wire).unwrap();
        let decap = median_ns(200_000, || {
            let f = black_box(&wire[..]);
            if let Some(o) = outer_udp(f) {
                if let Ok(d) = decapsulate(&f[o.payload..o.payload_end]) {
                    out.clear();
                    out.extend_from_slice(d.inner);
                }
            }
            black_box(out.len());
        });
        println!(
            "  {len:>5} bytes: plain {plain:.1}  encapsulate {encap:.1} ({:.2}x)  decapsulate {decap:.1} ({:.2}x)",
            encap / plain,
            decap / plain
        );
    }
    let (cache, order) = filled_cache();
    let mut i = 0;
    let hit = median_ns(1_000_000, || {
        i = (i + 1) & 4095;
        black_box(cache.get(black_box(order[i])));
    });
    println!("  mapping cache hit among {MAPPINGS}: {hit:.1} ns (goal: at most 20)");
}

/// The driver's whole paths, overlay against plain. See the module documentation.
mod path {
    use std::collections::VecDeque;
    use std::os::fd::BorrowedFd;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use criterion::{black_box, Criterion, Throughput};
    use netmux_classify::{port_filter, Key};
    use netmux_driver::daemon::{Driver, DriverConfig};
    use netmux_driver::link::{FrameBatch, Link, LinkError, LinkInfo, LinkStats};
    use netmux_proto::driver::{
        Direction, DriverReply, DriverRequest, FilterId, FilterInstall, InstanceId, InstanceInfo,
        QueueId, RxMode, DEFAULT_INSTANCE,
    };
    use netmux_proto::overlay::{OverlayInfo, OverlayMapping, OverlayMappings};
    use netmux_ring::{ClientQueue, Completion, QueueConfig};
    use netmux_testkit::frames::FrameBuilder;
    use netmux_wire::vxlan::{encapsulate, Underlay, DEFAULT_PORT};

    /// Frames per iteration: one transmit batch, one receive batch.
    pub const BATCH: usize = 32;
    const RING: QueueConfig = QueueConfig {
        slot_size: 2048,
        rx_slots: 256,
        tx_slots: 64,
        completion_slots: 64,
    };
    const LINK_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
    const PEER_LINK_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 2];
    const UNDERLAY: [u8; 4] = [192, 0, 2, 1];
    const PEER_UNDERLAY: [u8; 4] = [192, 0, 2, 2];
    const VNI: u32 = 42;
    /// The instance on the overlay (overlay rows) or on the link (plain rows).
    const MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
    const IP: [u8; 4] = [10, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
    const PEER_IP: [u8; 4] = [10, 0, 0, 2];
    const PORT: u16 = 5000;

    /// What the link receives: frames queued once, then a list over and over.
    #[derive(Default)]
    struct Feed {
        once: VecDeque<Vec<u8>>,
        repeat: Vec<Vec<u8>>,
        next: usize,
    }

    /// A link that receives its [`Feed`] and counts what it sends: a benchmark's link must
    /// not keep its output.
    struct BenchLink {
        info: LinkInfo,
        feed: Arc<Mutex<Feed>>,
        stats: LinkStats,
    }

    impl Link for BenchLink {
        fn info(&self) -> &LinkInfo {
            &self.info
        }
        fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
            let mut feed = self.feed.lock().expect("the feed");
            let mut n = 0;
            while n < max {
                if let Some(f) = feed.once.pop_front() {
                    batch.push(0, &f);
                } else if feed.repeat.is_empty() {
                    break;
                } else {
                    let next = feed.next;
                    batch.push(0, &feed.repeat[next]);
                    feed.next = (next + 1) % feed.repeat.len();
                }
                n += 1;
            }
            Ok(n)
        }
        fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
            for f in frames {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += f.len() as u64;
            }
            Ok(frames.len())
        }
        fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn stats(&self) -> LinkStats {
            self.stats
        }
    }

    fn ok(driver: &mut Driver, request: DriverRequest) {
        let reply = driver.handle(request.clone()).reply;
        assert_eq!(reply, DriverReply::Done, "{request:?}");
    }

    /// A UDP frame of `len` bytes from the peer's instance to ours (`to_us`) or back.
    pub fn udp(len: usize, to_us: bool) -> Vec<u8> {
        let (src, dst) = if to_us {
            ((PEER_MAC, PEER_IP, 4000), (MAC, IP, PORT))
        } else {
            ((MAC, IP, PORT), (PEER_MAC, PEER_IP, 4000))
        };
        FrameBuilder::ethernet(dst.0, src.0)
            .ethertype(0x0800)
            .ipv4(netmux_testkit::frames::Ipv4::new(src.1, dst.1, 17))
            .udp(src.2, dst.2)
            .payload(len - 42)
            .finish()
            .data
    }

    /// `frame` as the peer host's VTEP sends it to ours.
    pub fn from_peer_vtep(frame: &[u8]) -> Vec<u8> {
        let to = Underlay {
            src_mac: PEER_LINK_MAC,
            dst_mac: LINK_MAC,
            src_ip: PEER_UNDERLAY,
            dst_ip: UNDERLAY,
            dst_port: DEFAULT_PORT,
        };
        let mut out = Vec::new();
        encapsulate(frame, VNI, &to, &mut out).expect("fits");
        out
    }

    /// A driver whose instance (on overlay `VNI` when `overlay`, else on the link with a MAC
    /// of its own) has one queue owning UDP `IP:PORT` both ways; the link receives `traffic`
    /// over and over. On the overlay the peer's MAC is mapped and its VTEP's link address
    /// known, so no frame waits for the mapping service.
    pub fn driver(overlay: bool, traffic: Vec<Vec<u8>>) -> (Driver, ClientQueue) {
        let feed = Arc::new(Mutex::new(Feed::default()));
        let link = BenchLink {
            info: LinkInfo {
                spec: "bench".to_string(),
                mac: LINK_MAC,
                mtu: 1500,
            },
            feed: feed.clone(),
            stats: LinkStats::default(),
        };
        // One receive batch is what the client takes per iteration.
        let config = DriverConfig {
            rx_batch: BATCH,
            ..DriverConfig::default()
        };
        let mut d = Driver::new(Box::new(link), config);
        ok(
            &mut d,
            DriverRequest::SetInstance(InstanceInfo {
                instance: DEFAULT_INSTANCE,
                mac: LINK_MAC,
                own_mac: false,
                ipv4: vec![UNDERLAY],
                ipv6: Vec::new(),
                overlay: None,
            }),
        );
        if overlay {
            ok(
                &mut d,
                DriverRequest::SetOverlay(OverlayInfo {
                    vni: VNI,
                    port: DEFAULT_PORT,
                    mtu: 1450,
                }),
            );
        }
        ok(
            &mut d,
            DriverRequest::SetInstance(InstanceInfo {
                instance: InstanceId(1),
                mac: MAC,
                own_mac: true,
                ipv4: vec![IP],
                ipv6: Vec::new(),
                overlay: overlay.then_some(VNI),
            }),
        );
        let response = d.handle(DriverRequest::CreateQueue {
            queue: QueueId(1),
            config: RING,
            instance: InstanceId(1),
        });
        let fds = response.fds.expect("a queue");
        let client = ClientQueue::from_fds(fds.memfd, fds.doorbell).expect("attach");
        let key = Key::V4 {
            protocol: 17,
            addr: IP.into(),
            port: PORT,
        };
        let b = netmux_compiler::builders::Binding {
            mac: MAC,
            ip: std::net::IpAddr::from(IP),
            transport: netmux_compiler::builders::Transport::Udp,
            port: PORT,
        };
        let tx = netmux_compiler::builders::tx_port(&b, 1).expect("the tx filter compiles");
        for (filter, direction, program) in [
            (
                1,
                Direction::Rx,
                port_filter::program(&key, MAC).expect("a key").to_bytes(),
            ),
            (2, Direction::Tx, tx.to_bytes()),
        ] {
            ok(
                &mut d,
                DriverRequest::InstallFilter(FilterInstall {
                    queue: QueueId(1),
                    filter: FilterId(filter),
                    direction,
                    mode: RxMode::Owner,
                    binding: Some(key.binding()),
                    program,
                }),
            );
        }
        if overlay {
            ok(
                &mut d,
                DriverRequest::SetOverlayMappings(OverlayMappings {
                    vni: VNI,
                    flush: false,
                    mappings: vec![OverlayMapping {
                        mac: PEER_MAC,
                        target: Some((PEER_UNDERLAY, DEFAULT_PORT)),
                    }],
                    arp: None,
                    ndp: None,
                    dhcp: None,
                }),
            );
            // The peer VTEP answers the driver's ARP for its underlay address.
            let reply = FrameBuilder::ethernet(LINK_MAC, PEER_LINK_MAC)
                .ethertype(0x0806)
                .arp(2, PEER_LINK_MAC, PEER_UNDERLAY, LINK_MAC, UNDERLAY)
                .finish()
                .data;
            d.poll_tx();
            feed.lock().expect("the feed").once.push_back(reply);
            while d.poll_rx() > 0 {}
        }
        feed.lock().expect("the feed").repeat = traffic;
        (d, client)
    }

    /// One transmit iteration: the client sends a batch, one driver turn takes, checks (and
    /// encapsulates) and sends it, the client collects the completions.
    pub fn transmit(
        d: &mut Driver,
        client: &mut ClientQueue,
        frames: &[&[&[u8]]],
        done: &mut Vec<Completion>,
    ) {
        client.send(frames).expect("the tx ring has room");
        d.poll_tx();
        done.clear();
        while done.len() < frames.len() {
            client.completions(BATCH, done).expect("completions");
            if done.len() < frames.len() {
                d.poll_tx();
            }
        }
    }

    /// One receive iteration: one driver turn takes a batch from the link (and decapsulates
    /// it), classifies and delivers it; the client takes the frames.
    pub fn receive(d: &mut Driver, client: &mut ClientQueue, bufs: &mut [Vec<u8>]) -> usize {
        let got = d.poll_rx();
        let mut vectors: Vec<[&mut [u8]; 1]> = bufs.iter_mut().map(|b| [&mut b[..]]).collect();
        let mut frames: Vec<&mut [&mut [u8]]> = vectors.iter_mut().map(|v| &mut v[..]).collect();
        let mut lens = vec![0usize; frames.len()];
        let taken = client.recv(&mut frames, &mut lens).unwrap_or(0);
        assert_eq!(
            taken, got,
            "the client takes every frame the driver delivered"
        );
        taken
    }

    /// Rounds of the paired measurement, and iterations per side per round.
    const PAIRED_ROUNDS: usize = 200;
    const PAIRED_ITERATIONS: usize = 50;

    /// Both sides in turn, round after round (`round` times the overlay side, then the plain
    /// one); prints the median ratio, which a machine shared with other work disturbs far
    /// less than criterion's rows measured one after the other.
    fn paired(row: &str, mut round: impl FnMut() -> (f64, f64)) {
        let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
            .map(|_| {
                let (overlay, plain) = round();
                overlay / plain
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        eprintln!(
            "{row} paired: overlay / plain = {:.3} (median of {PAIRED_ROUNDS} rounds; \
             quartiles {:.3} to {:.3})",
            ratios[PAIRED_ROUNDS / 2],
            ratios[PAIRED_ROUNDS / 4],
            ratios[3 * PAIRED_ROUNDS / 4]
        );
    }

    pub fn bench(c: &mut Criterion) {
        // The largest inner frame an overlay on a 1,500-byte underlay carries: 1,450 bytes
        // of IP (1,514 bytes on the wire once encapsulated).
        for len in [64usize, 1464] {
            // Transmit: the same frames from an instance on the overlay and on the link.
            let owned: Vec<Vec<u8>> = (0..BATCH).map(|_| udp(len, false)).collect();
            let vectors: Vec<[&[u8]; 1]> = owned.iter().map(|f| [f.as_slice()]).collect();
            let frames: Vec<&[&[u8]]> = vectors.iter().map(|v| &v[..]).collect();
            let mut done = Vec::with_capacity(BATCH);
            let mut tx: Vec<(&str, Driver, ClientQueue)> =
                [("netmux", true), ("peer-plain", false)]
                    .into_iter()
                    .map(|(name, overlay)| {
                        let (mut d, mut client) = driver(overlay, Vec::new());
                        transmit(&mut d, &mut client, &frames, &mut done);
                        assert!(done.iter().all(|c| c.status.is_sent()), "{name}: {done:?}");
                        (name, d, client)
                    })
                    .collect();
            if let [(_, a, ca), (_, b, cb)] = &mut tx[..] {
                paired(&format!("overlay-tx/{len}B"), || {
                    let start = Instant::now();
                    for _ in 0..PAIRED_ITERATIONS {
                        transmit(a, ca, &frames, &mut done);
                    }
                    let t = start.elapsed().as_secs_f64();
                    let start = Instant::now();
                    for _ in 0..PAIRED_ITERATIONS {
                        transmit(b, cb, &frames, &mut done);
                    }
                    (t, start.elapsed().as_secs_f64())
                });
            }
            let mut g = c.benchmark_group(format!("overlay-tx/{len}B"));
            g.throughput(Throughput::Elements(BATCH as u64));
            for (name, d, client) in &mut tx {
                g.bench_function(*name, |b| {
                    b.iter(|| transmit(d, client, black_box(&frames), &mut done))
                });
            }
            g.finish();
            // Receive: the same inner frames, encapsulated by the peer's VTEP or bare.
            let inner = udp(len, true);
            let mut bufs = vec![vec![0u8; 2048]; BATCH];
            let mut rx: Vec<(&str, Driver, ClientQueue)> =
                [("netmux", true), ("peer-plain", false)]
                    .into_iter()
                    .map(|(name, overlay)| {
                        let wire = if overlay {
                            from_peer_vtep(&inner)
                        } else {
                            inner.clone()
                        };
                        let (mut d, mut client) = driver(overlay, vec![wire; BATCH]);
                        assert_eq!(receive(&mut d, &mut client, &mut bufs), BATCH, "{name}");
                        (name, d, client)
                    })
                    .collect();
            if let [(_, a, ca), (_, b, cb)] = &mut rx[..] {
                paired(&format!("overlay-rx/{len}B"), || {
                    let start = Instant::now();
                    for _ in 0..PAIRED_ITERATIONS {
                        receive(a, ca, &mut bufs);
                    }
                    let t = start.elapsed().as_secs_f64();
                    let start = Instant::now();
                    for _ in 0..PAIRED_ITERATIONS {
                        receive(b, cb, &mut bufs);
                    }
                    (t, start.elapsed().as_secs_f64())
                });
            }
            let mut g = c.benchmark_group(format!("overlay-rx/{len}B"));
            g.throughput(Throughput::Elements(BATCH as u64));
            for (name, d, client) in &mut rx {
                g.bench_function(*name, |b| {
                    b.iter(|| black_box(receive(d, client, &mut bufs)))
                });
            }
            g.finish();
        }
    }
}

// criterion's macro generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench, super::path::bench, super::summary);
}
criterion_main!(group::benches);
