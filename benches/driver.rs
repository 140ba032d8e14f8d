//! The driver's receive path against a copy-only baseline: an in-memory link
//! produces 64-byte and 1,500-byte UDP frames that cycle over 1, 16 or 1,024 queues, each
//! queue owning one port through netd's own port filter and key (the compiler's builder).
//! Each iteration is one receive batch of `BATCH` frames; criterion's "thrpt" is frames per
//! second.
//!
//! Rows per case (`driver/64B-1q/...`):
//!
//! - `netmux`: [`Driver::poll_rx`], the whole receive path: link batch into private buffers,
//!   the reassembler's check, the ARP check, the default (merged) classifier on the engine
//!   `Strategy::Auto` picks (the JIT: the root crate's default `jit` feature), the copy into
//!   the receiving ring, one publication per ring per batch; every client drained on this
//!   thread after each batch (no cross-core traffic: comparable on a loaded machine).
//! - `netmux-linear`: the same with the linear classifier, for the gain of merging.
//! - `peer-copy`: the baseline, the cost of delivery alone, on the driver's terms: the same link, frames,
//!   private batch, rings, batch size, destination queues, publication and client drain, with
//!   no reassembly, ARP check or classification (see `CopyBaseline`).
//! - `peer-memcpy`: the limit: the same frames memcpy'd into the same ring memory, nothing
//!   else (no slot headers, no index publication, no client).
//! - `driver-threaded/...`: `netmux` and `peer-copy` with one consumer thread draining every
//!   client meanwhile (driver and client on separate cores): measures producer and consumer
//!   together and needs an idle second core. The producer offers a batch only when the
//!   consumer has read all but two batches of what came before ([`Paced`]), so both sides
//!   deliver every frame (a producer racing ahead would time frames dropped into full rings,
//!   cheaper than delivered ones); the delivered share is printed after each row.
//!
//! Run: `cargo bench --bench driver`; `scripts/bench-report --bench driver` pairs the rows.

// criterion's macros define undocumented public functions.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netmux_driver::daemon::{ClassifierKind, Driver, DriverConfig};
use netmux_driver::link::{FrameBatch, Link, MemoryLink};
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, FilterInstall, PortBinding, QueueId, RxMode,
};
use netmux_ring::{ClientQueue, DriverQueue, QueueConfig, RxOutcome};

/// Frames per driver iteration: one receive batch from the link.
const BATCH: usize = 256;
/// Ring geometry for `n` queues: rings that hold several batches when there are few queues;
/// for 1,024 queues the smallest rings that still carry a 64 KiB frame (128 KiB of rx ring
/// each, and each queue gets only a quarter of a frame per batch).
fn ring(n: usize) -> QueueConfig {
    QueueConfig {
        slot_size: 2048,
        rx_slots: if n >= 1024 { 64 } else { 1024 },
        tx_slots: 64,
        completion_slots: 16,
    }
}

/// Frames a consumer takes per `recv` call.
const CONSUMER_BATCH: usize = 32;

/// Frames the threaded rows let be in the rings, not yet read by the consumer, before the
/// next batch: two batches (every ring holds its share of three).
const WINDOW: u64 = 2 * BATCH as u64;
/// The longest the producer waits for the consumer before offering a batch anyway (a frame
/// dropped for a full ring is never read, so the count would not catch up).
const PATIENCE: Duration = Duration::from_millis(1);

/// The producer's side of a threaded row: offers a batch only when the consumer has read all
/// but [`WINDOW`] of the frames offered before, so that both sides of a row deliver every
/// frame and a row times producer and consumer together, never a producer dropping frames
/// into full rings (which is cheaper than delivering them).
struct Paced {
    consumed: Arc<AtomicU64>,
    offered: u64,
}

impl Paced {
    fn new(consumed: Arc<AtomicU64>) -> Self {
        Self {
            consumed,
            offered: 0,
        }
    }

    /// Runs `poll` (which returns the frames it offered) once the consumer has caught up.
    fn offer(&mut self, poll: impl FnOnce() -> usize) -> usize {
        // Saturating: a frame delivered to several queues is read more than once.
        let unread = |p: &Self| p.offered.saturating_sub(p.consumed.load(Ordering::Acquire));
        if unread(self) > WINDOW {
            let since = std::time::Instant::now();
            while unread(self) > WINDOW && since.elapsed() < PATIENCE {
                std::hint::spin_loop();
            }
        }
        let n = poll();
        self.offered += n as u64;
        n
    }
}

/// A consumer thread that drains every client's rx ring, `CONSUMER_BATCH` frames per call,
/// until stopped, counting what it read in `consumed`; returns the number of frames it
/// received.
fn spawn_consumer(
    mut clients: Vec<ClientQueue>,
    stop: Arc<AtomicBool>,
    consumed: Arc<AtomicU64>,
) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut buffers = vec![[0u8; 2048]; CONSUMER_BATCH];
        let mut vectors: Vec<[&mut [u8]; 1]> = buffers.iter_mut().map(|b| [&mut b[..]]).collect();
        let mut frames: Vec<&mut [&mut [u8]]> = vectors.iter_mut().map(|v| &mut v[..]).collect();
        let mut lens = [0usize; CONSUMER_BATCH];
        let mut received = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            for client in &mut clients {
                if let Ok(n) = client.recv(&mut frames, &mut lens) {
                    received += n as u64;
                    idle &= n == 0;
                }
            }
            if idle {
                std::hint::spin_loop();
            } else {
                consumed.store(received, Ordering::Release);
            }
        }
        received
    })
}

/// `n` queues with their clients attached, or why not (1,024 queues take about 5,000 file
/// descriptors, more than a default `ulimit -n` of 1,024 allows).
fn queues(n: usize) -> Result<(Vec<DriverQueue>, Vec<ClientQueue>), String> {
    let mut drivers = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let driver = DriverQueue::create(&ring(n)).map_err(|e| e.to_string())?;
        let fds = driver.client_fds().map_err(|e| e.to_string())?;
        clients.push(ClientQueue::from_fds(fds.memfd, fds.doorbell).map_err(|e| e.to_string())?);
        drivers.push(driver);
    }
    Ok((drivers, clients))
}

/// The memory link's MAC: the port filters' destination.
const MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
/// Local address the port filters bind.
const HOST: [u8; 4] = [10, 0, 0, 1];
/// First bound port; queue `q` owns UDP port `FIRST_PORT + q`.
const FIRST_PORT: u16 = 1000;

/// A UDP/IPv4 frame of exactly `len` bytes to `HOST:port`.
fn udp_to(port: u16, len: usize, salt: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(42)];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 2]);
    f[30..34].copy_from_slice(&HOST);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = (i ^ salt) as u8;
    }
    f
}

/// netd's rx filter for UDP `HOST:port` and its key, from the compiler's builder (what netd
/// installs for a bound port).
fn port_filter(port: u16) -> (Vec<u8>, PortBinding) {
    let b = netmux_compiler::builders::Binding {
        mac: MAC,
        ip: std::net::IpAddr::from(HOST),
        transport: netmux_compiler::builders::Transport::Udp,
        port,
    };
    let expr = netmux_compiler::builders::rx_port_expr(&b);
    let program = netmux_compiler::compile(&expr, &netmux_compiler::Options::default())
        .expect("the port filter compiles");
    let mut address = [0u8; 16];
    address[..4].copy_from_slice(&HOST);
    let key = PortBinding {
        protocol: 17,
        address,
        ipv6: false,
        port,
    };
    (program.to_bytes(), key)
}

/// Frames that cycle over `n` queues' ports: frame `k` goes to queue `k mod n` (the length
/// is a multiple of `n` for every `n` measured).
fn traffic(n: usize, frame_len: usize) -> Vec<Vec<u8>> {
    (0..BATCH.max(n))
        .map(|i| udp_to(FIRST_PORT + (i % n) as u16, frame_len, i))
        .collect()
}

/// A driver on an endless in-memory link carrying [`traffic`], each of its `n` queues owning
/// one UDP port through netd's port filter and key; with the client end of every queue.
/// `None` (after saying why) when the queues cannot be made (1,024 queues take about 3,000
/// file descriptors).
fn classifying_driver(
    n: usize,
    frame_len: usize,
    classifier: ClassifierKind,
) -> Option<(Driver, Vec<ClientQueue>)> {
    let mut driver = Driver::new(
        Box::new(MemoryLink::repeating(traffic(n, frame_len))),
        DriverConfig {
            strategy: netmux_vm::Strategy::Auto,
            rx_batch: BATCH,
            classifier,
            ..DriverConfig::default()
        },
    );
    // netd tells the driver the host's address before any client binds.
    let reply = driver.handle(DriverRequest::SetHostAddresses { ipv4: vec![HOST] });
    assert_eq!(reply.reply, DriverReply::Done);
    let geometry = ring(n);
    let mut clients = Vec::with_capacity(n);
    for q in 0..n as u32 {
        let response = driver.handle(DriverRequest::CreateQueue {
            queue: QueueId(q),
            config: QueueConfig {
                slot_size: geometry.slot_size,
                rx_slots: geometry.rx_slots,
                tx_slots: geometry.tx_slots,
                completion_slots: geometry.completion_slots,
            },
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
        });
        let Some(fds) = response.fds else {
            eprintln!(
                "skipping {n} queues: {:?} (raise `ulimit -n`)",
                response.reply
            );
            return None;
        };
        clients.push(ClientQueue::from_fds(fds.memfd, fds.doorbell).expect("attach"));
        let (program, key) = port_filter(FIRST_PORT + q as u16);
        let reply = driver.handle(DriverRequest::InstallFilter(FilterInstall {
            queue: QueueId(q),
            filter: FilterId(u64::from(q)),
            direction: Direction::Rx,
            mode: RxMode::Owner,
            binding: Some(key),
            program,
        }));
        assert_eq!(reply.reply, DriverReply::Done);
    }
    Some((driver, clients))
}

/// Prints the share of offered frames that reached a ring.
fn report_delivery(row: &str, driver: &Driver) {
    let (_, queues) = driver.stats();
    let delivered: u64 = queues.iter().map(|(_, c)| c.rx_frames).sum();
    let full: u64 = queues.iter().map(|(_, c)| c.rx_dropped_full).sum();
    if delivered + full > 0 {
        eprintln!(
            "{row}: {:.1}% of {} frames delivered",
            100.0 * delivered as f64 / (delivered + full) as f64,
            delivered + full
        );
    }
}

/// The copy-only baseline, on exactly the driver's terms: the same endless link and frames
/// (received into the same private batch buffers), the same rings, the same batch size, the
/// frame `k` into queue `k mod n` (where the classifier sends it: the traffic cycles over the
/// queues' ports in that order), the same per-batch publication, a full ring drops the frame
/// like the driver does. Only reassembly, the ARP check and classification are missing.
struct CopyBaseline {
    link: MemoryLink,
    batch: FrameBatch,
    rings: Vec<DriverQueue>,
    next: usize,
    dirty: Vec<bool>,
    touched: Vec<usize>,
}

impl CopyBaseline {
    fn new(n: usize, frame_len: usize) -> Result<(CopyBaseline, Vec<ClientQueue>), String> {
        let (rings, clients) = queues(n)?;
        Ok((
            CopyBaseline {
                link: MemoryLink::repeating(traffic(n, frame_len)),
                batch: FrameBatch::new(),
                rings,
                next: 0,
                dirty: vec![false; n],
                touched: Vec::with_capacity(n.min(BATCH)),
            },
            clients,
        ))
    }

    fn poll(&mut self) -> usize {
        self.batch.clear();
        let received = self.link.recv(&mut self.batch, BATCH).unwrap_or(0);
        let n = self.rings.len();
        for frame in self.batch.iter() {
            let q = self.next % n;
            self.next += 1;
            if self.rings[q].push_rx(&[frame]) == RxOutcome::Queued && !self.dirty[q] {
                self.dirty[q] = true;
                self.touched.push(q);
            }
        }
        for q in self.touched.drain(..) {
            self.dirty[q] = false;
            self.rings[q].flush();
        }
        received
    }

    fn report(&self, row: &str) {
        let delivered: u64 = self.rings.iter().map(|r| r.counters().rx_frames).sum();
        let full: u64 = self
            .rings
            .iter()
            .map(|r| r.counters().rx_dropped_full)
            .sum();
        if delivered + full > 0 {
            eprintln!(
                "{row}: {:.1}% of {} frames delivered",
                100.0 * delivered as f64 / (delivered + full) as f64,
                delivered + full
            );
        }
    }
}

/// Buffers for a client draining on the benchmark's own thread.
struct SameThreadClient {
    buffers: Vec<[u8; 2048]>,
    lens: Vec<usize>,
}

impl SameThreadClient {
    fn new() -> Self {
        Self {
            buffers: vec![[0u8; 2048]; BATCH],
            lens: vec![0; BATCH],
        }
    }

    fn drain(&mut self, clients: &mut [ClientQueue]) {
        let mut vectors: Vec<[&mut [u8]; 1]> =
            self.buffers.iter_mut().map(|b| [&mut b[..]]).collect();
        let mut frames: Vec<&mut [&mut [u8]]> = vectors.iter_mut().map(|v| &mut v[..]).collect();
        for client in clients.iter_mut() {
            let _ = client.recv(&mut frames, &mut self.lens);
        }
    }
}

/// The driver against its baselines, one group per frame size and queue count; each
/// iteration is one receive batch of `BATCH` frames. Rows (ids as `scripts/bench-report`
/// pairs them):
///
/// - `driver/S/netmux`: [`Driver::poll_rx`] with the default (merged) classifier on the
///   engine `Strategy::Auto` picks, clients drained on this thread after every batch;
/// - `driver/S/netmux-linear`: the same with the reference linear scan;
/// - `driver/S/peer-copy`: [`CopyBaseline`], clients drained the same way;
/// - `driver-threaded/S/netmux` and `driver-threaded/S/peer-copy`: the same two with one
///   consumer thread draining every client meanwhile (driver and client on separate cores;
///   needs an idle core), paced to the consumer ([`Paced`]); the delivered share is printed
///   after each row.
fn driver_full(c: &mut Criterion) {
    for frame_len in [64usize, 1500] {
        for n in [1usize, 16, 1024] {
            let id = format!("{frame_len}B-{n}q");
            let mut group = c.benchmark_group("driver");
            group.throughput(Throughput::Elements(BATCH as u64));
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));
            // Each row sets itself up on its first call, so a filtered run (or a profile)
            // builds only what it measures.
            for (name, kind) in [
                ("netmux", ClassifierKind::Merged),
                ("netmux-linear", ClassifierKind::Linear),
            ] {
                let mut state = None;
                let mut drain = SameThreadClient::new();
                group.bench_function(format!("{id}/{name}"), |b| {
                    let Some((driver, clients)) = state
                        .get_or_insert_with(|| classifying_driver(n, frame_len, kind))
                        .as_mut()
                    else {
                        return;
                    };
                    b.iter(|| {
                        let got = driver.poll_rx();
                        drain.drain(clients);
                        got
                    })
                });
                if let Some(Some((driver, _))) = &state {
                    report_delivery(&format!("driver/{id}/{name}"), driver);
                }
            }
            // The limit: the same frames copied straight into the same ring memory (no link
            // batch, no slot headers, no index publication, no client).
            let mut state = None;
            let source = traffic(n, frame_len);
            let mut next = 0usize;
            group.bench_function(format!("{id}/peer-memcpy"), |b| {
                let Some((baseline, _)) = state
                    .get_or_insert_with(|| CopyBaseline::new(n, frame_len).ok())
                    .as_mut()
                else {
                    return;
                };
                b.iter(|| {
                    for _ in 0..BATCH {
                        let q = next % n;
                        baseline.rings[q].baseline_copy(&source[next % source.len()]);
                        next += 1;
                    }
                })
            });
            let mut state = None;
            let mut drain = SameThreadClient::new();
            group.bench_function(format!("{id}/peer-copy"), |b| {
                let Some((baseline, clients)) = state
                    .get_or_insert_with(|| CopyBaseline::new(n, frame_len).ok())
                    .as_mut()
                else {
                    return;
                };
                b.iter(|| {
                    let got = baseline.poll();
                    drain.drain(clients);
                    got
                })
            });
            if let Some(Some((baseline, _))) = &state {
                baseline.report(&format!("driver/{id}/peer-copy"));
            }
            group.finish();

            let mut group = c.benchmark_group("driver-threaded");
            group.throughput(Throughput::Elements(BATCH as u64));
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));
            let stop = Arc::new(AtomicBool::new(false));
            let consumed = Arc::new(AtomicU64::new(0));
            let mut paced = Paced::new(consumed.clone());
            let mut state = None;
            group.bench_function(format!("{id}/netmux"), |b| {
                let Some((driver, _)) = state
                    .get_or_insert_with(|| {
                        classifying_driver(n, frame_len, ClassifierKind::Merged).map(
                            |(driver, clients)| {
                                let consumer =
                                    spawn_consumer(clients, stop.clone(), consumed.clone());
                                (driver, consumer)
                            },
                        )
                    })
                    .as_mut()
                else {
                    return;
                };
                b.iter(|| paced.offer(|| driver.poll_rx()))
            });
            stop.store(true, Ordering::Relaxed);
            if let Some(Some((driver, consumer))) = state {
                let received = consumer.join().expect("consumer");
                report_delivery(
                    &format!("driver-threaded/{id}/netmux (consumer read {received})"),
                    &driver,
                );
            }
            let stop = Arc::new(AtomicBool::new(false));
            let consumed = Arc::new(AtomicU64::new(0));
            let mut paced = Paced::new(consumed.clone());
            let mut state = None;
            group.bench_function(format!("{id}/peer-copy"), |b| {
                let Some((baseline, _)) = state
                    .get_or_insert_with(|| {
                        CopyBaseline::new(n, frame_len)
                            .ok()
                            .map(|(baseline, clients)| {
                                let consumer =
                                    spawn_consumer(clients, stop.clone(), consumed.clone());
                                (baseline, consumer)
                            })
                    })
                    .as_mut()
                else {
                    return;
                };
                b.iter(|| paced.offer(|| baseline.poll()))
            });
            stop.store(true, Ordering::Relaxed);
            if let Some(Some((baseline, consumer))) = state {
                let received = consumer.join().expect("consumer");
                baseline.report(&format!(
                    "driver-threaded/{id}/peer-copy (consumer read {received})"
                ));
            }
            group.finish();
        }
    }
}

criterion_group!(benches, driver_full);
criterion_main!(benches);
