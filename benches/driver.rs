//! The driver's receive path, ring part only: an in-memory link produces 64-byte and
//! 1,500-byte frames and the driver copies them into 1, 16 or 1,024 client rx rings. Three
//! rows per case:
//!
//! - `ring`: a consumer thread drains every ring meanwhile (the set-up). A real driver
//!   drops a frame when a client's ring is full; here the producer waits for the consumer
//!   instead, so the row counts frames that actually reached a client (how often it found a
//!   ring full is printed after the row). With one consumer thread for all queues, this
//!   measures producer and consumer together, and needs two idle cores to mean anything.
//! - `ring_same_thread`: the same path, with each client drained on the driver's thread after
//!   every batch: no cross-core traffic, so it stays comparable on a loaded machine; it
//!   includes the client's receive copy.
//! - `copy_only`: the limit: the same frames copied straight into the same ring memory (no
//!   link batch, no slot headers, no index publication, no wake-up checks, no consumer).
//!
//! `driver_full` measures the whole receive path, [`Driver::poll_rx`]: link batch into
//! private buffers, the reassembler's check, the ARP check, classification by every queue's
//! UDP port filter (verified bytecode on the engine `Strategy::Auto` picks: the JIT when built
//! with `--features jit`), and the copy into the receiving ring. Two rows per case, like the
//! ring rows: `classified` with a consumer thread (this is the real driver, so a full ring
//! drops; the share delivered is printed after the row), and `classified_same_thread` with
//! each client drained on the driver's thread after every batch. The baseline of both is
//! `driver_rx/copy_only` of the same size.
//!
//! Run: `cargo bench --bench driver`. Frames per second are criterion's "thrpt" in elements.

// criterion's macros define undocumented public functions.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::{FrameBatch, Link, MemoryLink};
use netmux_driver::ring::{ClientQueue, DriverQueue, RingConfig, RxOutcome};
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, PortBinding, QueueConfig, QueueId, RxMode,
};

/// Frames per driver iteration: one receive batch from the link.
const BATCH: usize = 256;
/// Ring geometry for `n` queues: rings that hold several batches when there are few queues;
/// for 1,024 queues the smallest rings that still carry a 64 KiB frame (128 KiB of rx ring
/// each, and each queue gets only a quarter of a frame per batch).
fn ring(n: usize) -> RingConfig {
    RingConfig {
        slot_size: 2048,
        rx_slots: if n >= 1024 { 64 } else { 1024 },
        tx_slots: 64,
        completion_slots: 16,
    }
}

fn frames(len: usize) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| (0..len).map(|b| (b ^ i) as u8).collect())
        .collect()
}

/// Frames a consumer takes per `recv` call.
const CONSUMER_BATCH: usize = 32;

/// A consumer thread that drains every client's rx ring, `CONSUMER_BATCH` frames per call,
/// until stopped; returns the number of frames it received.
fn spawn_consumer(mut clients: Vec<ClientQueue>, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
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
        clients.push(
            ClientQueue::from_fds(fds.memfd, fds.client_wake, fds.driver_wake)
                .map_err(|e| e.to_string())?,
        );
        drivers.push(driver);
    }
    Ok((drivers, clients))
}

fn driver_rx(c: &mut Criterion) {
    let mut group = c.benchmark_group("driver_rx");
    group.throughput(Throughput::Elements(BATCH as u64));
    // Short runs: twelve rows must fit a CI-sized budget; the spread is printed anyway.
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for frame_len in [64usize, 1500] {
        for n in [1usize, 16, 1024] {
            let id = format!("{frame_len}B/{n}q");

            // The ring path: link batch -> private buffers -> rx rings, flushed per batch.
            let (mut drivers, clients) = match queues(n) {
                Ok(queues) => queues,
                Err(e) => {
                    eprintln!("skipping driver_rx/*/{id}: cannot create {n} queues: {e} (raise `ulimit -n`)");
                    continue;
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = spawn_consumer(clients, stop.clone());
            let mut link = MemoryLink::repeating(frames(frame_len));
            let mut batch = FrameBatch::new();
            let mut next = 0usize;
            let mut dirty = vec![false; n];
            let mut touched = Vec::with_capacity(n.min(BATCH));
            let mut offered = 0u64;
            let mut dropped = 0u64;
            group.bench_function(BenchmarkId::new("ring", &id), |b| {
                b.iter(|| {
                    batch.clear();
                    link.recv(&mut batch, BATCH).expect("memory link");
                    for frame in batch.iter() {
                        let q = next % n;
                        next += 1;
                        offered += 1;
                        // A real driver drops on a full ring; here we publish and wait for
                        // the consumer instead, so the figure is the rate frames actually
                        // reach clients, not the (cheaper) rate of drops.
                        while drivers[q].push_rx(&[frame]) == RxOutcome::DroppedFull {
                            dropped += 1;
                            drivers[q].flush();
                            std::hint::spin_loop();
                        }
                        if !dirty[q] {
                            dirty[q] = true;
                            touched.push(q);
                        }
                    }
                    for q in touched.drain(..) {
                        dirty[q] = false;
                        drivers[q].flush();
                    }
                })
            });
            stop.store(true, Ordering::Relaxed);
            let received = consumer.join().expect("consumer");
            if offered > 0 {
                eprintln!(
                    "driver_rx/ring/{id}: {offered} frames delivered, consumer read {received}, \
                     producer found a full ring {dropped} times"
                );
            }

            drop(drivers);

            // The same path with the client draining on the driver's thread after each batch:
            // no cross-core traffic, so this row stays meaningful on a loaded machine (it
            // includes the client's receive cost, which the other rows leave to the consumer).
            let (mut drivers, mut clients) = match queues(n) {
                Ok(queues) => queues,
                Err(e) => {
                    eprintln!("skipping driver_rx/ring_same_thread/{id}: {e}");
                    continue;
                }
            };
            let mut buffers = vec![[0u8; 2048]; BATCH];
            let mut vectors: Vec<[&mut [u8]; 1]> =
                buffers.iter_mut().map(|b| [&mut b[..]]).collect();
            let mut frames_out: Vec<&mut [&mut [u8]]> =
                vectors.iter_mut().map(|v| &mut v[..]).collect();
            let mut lens = vec![0usize; BATCH];
            group.bench_function(BenchmarkId::new("ring_same_thread", &id), |b| {
                b.iter(|| {
                    batch.clear();
                    link.recv(&mut batch, BATCH).expect("memory link");
                    for frame in batch.iter() {
                        let q = next % n;
                        next += 1;
                        drivers[q].push_rx(&[frame]);
                        if !dirty[q] {
                            dirty[q] = true;
                            touched.push(q);
                        }
                    }
                    for &q in &touched {
                        drivers[q].flush();
                    }
                    for q in touched.drain(..) {
                        dirty[q] = false;
                        let _ = clients[q].recv(&mut frames_out, &mut lens);
                    }
                })
            });

            // The limit: the same frames copied straight into the same ring memory.
            let source = frames(frame_len);
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new("copy_only", &id), |b| {
                b.iter(|| {
                    for frame in &source {
                        drivers[next % n].baseline_copy(frame);
                        next += 1;
                    }
                })
            });
        }
    }
    group.finish();
}

/// Local address the port filters bind.
const HOST: [u8; 4] = [10, 0, 0, 1];
/// First bound port; queue `q` owns UDP port `FIRST_PORT + q`.
const FIRST_PORT: u16 = 1000;

/// A UDP/IPv4 frame of exactly `len` bytes to `HOST:port`.
fn udp_to(port: u16, len: usize, salt: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(42)];
    f[..6].copy_from_slice(&[0x02, 0x6e, 0x6d, 0, 0, 1]);
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

/// netd's port filter for UDP `HOST:port`, in the VM's assembly (what the compiler's builder
/// produces for `udp dst port P and dst host H`, minus nothing the driver needs).
fn port_filter(port: u16) -> Vec<u8> {
    netmux_vm::asm::assemble(&format!(
        "ldh r0, [12]\njeq r0, 0x800, +1\nreject\n\
         ldb r0, [23]\njeq r0, 17, +1\nreject\n\
         ldw r0, [30]\njeq r0, {ip}, +1\nreject\n\
         ldh r0, [20]\nand r0, 0x3fff\njeq r0, 0, +1\nreject\n\
         ldb r1, [14]\nand r1, 0xf\nlsh r1, 2\n\
         ldh r0, [r1 + 16]\njeq r0, {port}, +1\nreject\naccept 1\n",
        ip = u32::from_be_bytes(HOST),
    ))
    .expect("assemble")
}

/// The whole receive path (see the module documentation). The classifier here is the linear one (every queue's filter runs on every frame), so the
/// cost grows with the number of queues; the merged classifier of the compiler crate will
/// replace it behind the same trait.
/// A driver on an endless in-memory link whose frames cycle over `n` queues' ports, each queue
/// owning one UDP port through a port filter; with the client end of every queue.
fn classifying_driver(n: usize, frame_len: usize) -> (Driver, Vec<ClientQueue>) {
    let traffic: Vec<Vec<u8>> = (0..BATCH.max(n))
        .map(|i| udp_to(FIRST_PORT + (i % n) as u16, frame_len, i))
        .collect();
    let mut driver = Driver::new(
        Box::new(MemoryLink::repeating(traffic)),
        DriverConfig {
            strategy: netmux_vm::Strategy::Auto,
            rx_batch: BATCH,
            ..DriverConfig::default()
        },
    );
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
        });
        let fds = response.fds.expect("queue created");
        clients.push(
            ClientQueue::from_fds(fds.memfd, fds.client_wake, fds.driver_wake).expect("attach"),
        );
        let mut address = [0u8; 16];
        address[..4].copy_from_slice(&HOST);
        let port = FIRST_PORT + q as u16;
        let reply = driver.handle(DriverRequest::InstallFilter {
            queue: QueueId(q),
            filter: FilterId(u64::from(q)),
            direction: Direction::Rx,
            mode: RxMode::Owner,
            binding: Some(PortBinding {
                protocol: 17,
                address,
                ipv6: false,
                port,
            }),
            program: port_filter(port),
        });
        assert_eq!(reply.reply, DriverReply::Done);
    }
    (driver, clients)
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

fn driver_full(c: &mut Criterion) {
    let mut group = c.benchmark_group("driver_full");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for frame_len in [64usize, 1500] {
        for n in [1usize, 16, 1024] {
            let id = format!("{frame_len}B/{n}q");

            let (mut driver, clients) = classifying_driver(n, frame_len);
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = spawn_consumer(clients, stop.clone());
            group.bench_function(BenchmarkId::new("classified", &id), |b| {
                b.iter(|| driver.poll_rx())
            });
            stop.store(true, Ordering::Relaxed);
            let received = consumer.join().expect("consumer");
            report_delivery(
                &format!("driver_full/classified/{id} (consumer read {received})"),
                &driver,
            );

            // Each client drained on this thread after every batch: nothing is dropped, and
            // no cross-core traffic, so the row stays comparable on a loaded machine.
            let (mut driver, mut clients) = classifying_driver(n, frame_len);
            let mut buffers = vec![[0u8; 2048]; BATCH];
            let mut vectors: Vec<[&mut [u8]; 1]> =
                buffers.iter_mut().map(|b| [&mut b[..]]).collect();
            let mut frames_out: Vec<&mut [&mut [u8]]> =
                vectors.iter_mut().map(|v| &mut v[..]).collect();
            let mut lens = vec![0usize; BATCH];
            group.bench_function(BenchmarkId::new("classified_same_thread", &id), |b| {
                b.iter(|| {
                    driver.poll_rx();
                    for client in &mut clients {
                        let _ = client.recv(&mut frames_out, &mut lens);
                    }
                })
            });
            report_delivery(&format!("driver_full/classified_same_thread/{id}"), &driver);
        }
    }
    group.finish();
}

criterion_group!(benches, driver_rx, driver_full);
criterion_main!(benches);
