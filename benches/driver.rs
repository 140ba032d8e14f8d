//! The driver's receive path, ring part only: an in-memory link produces 64-byte and
//! 1,500-byte frames, the driver copies them into 1, 16 or 1,024 client rx rings, and a
//! consumer thread drains every ring meanwhile. Measured side by side with its limit: a bare
//! copy of the same frames into the same ring memory (no link batch, no slot headers, no index
//! publication, no wake-up checks).
//!
//! **Not yet the full benchmark**: there is no classifier yet, so frames go to the
//! queues round-robin instead of through port filters. When the classifier lands, the
//! `driver_rx` rows must route through it; the baseline stays as it is.
//!
//! A full rx ring drops frames (the driver never waits for a client), so when the consumer
//! falls behind, some frames cost only a drop; the share delivered is printed after each row.
//!
//! Run: `cargo bench --bench driver`. Frames per second are criterion's "thrpt" in elements.

// criterion's macros define undocumented public functions.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netmux_driver::link::{FrameBatch, Link, MemoryLink};
use netmux_driver::ring::{ClientQueue, DriverQueue, RingConfig, RxOutcome};

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

/// A consumer thread that drains every client's rx ring until stopped; returns the number of
/// frames it received.
fn spawn_consumer(mut clients: Vec<ClientQueue>, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 2048];
        let mut lens = [0usize; 1];
        let mut received = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            for client in &mut clients {
                loop {
                    let mut vectors: [&mut [u8]; 1] = [&mut buffer[..]];
                    let mut frames: [&mut [&mut [u8]]; 1] = [&mut vectors];
                    match client.recv(&mut frames, &mut lens) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            received += n as u64;
                            idle = false;
                        }
                    }
                }
            }
            if idle {
                std::thread::yield_now();
            }
        }
        received
    })
}

fn queues(n: usize) -> (Vec<DriverQueue>, Vec<ClientQueue>) {
    let drivers: Vec<DriverQueue> = (0..n)
        .map(|_| DriverQueue::create(&ring(n)).expect("create queue"))
        .collect();
    let clients = drivers
        .iter()
        .map(|d| {
            let fds = d.client_fds().expect("fds");
            ClientQueue::from_fds(fds.memfd, fds.client_wake, fds.driver_wake).expect("attach")
        })
        .collect();
    (drivers, clients)
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
            let (mut drivers, clients) = queues(n);
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = spawn_consumer(clients, stop.clone());
            let mut link = MemoryLink::repeating(frames(frame_len));
            let mut batch = FrameBatch::new();
            let mut next = 0usize;
            let mut dirty = vec![false; n];
            let mut touched = Vec::with_capacity(n.min(BATCH));
            let (mut queued, mut offered) = (0u64, 0u64);
            group.bench_function(BenchmarkId::new("ring", &id), |b| {
                b.iter(|| {
                    batch.clear();
                    link.recv(&mut batch, BATCH).expect("memory link");
                    for frame in batch.iter() {
                        let q = next % n;
                        next += 1;
                        offered += 1;
                        if drivers[q].push_rx(&[frame]) == RxOutcome::Queued {
                            queued += 1;
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
                    "driver_rx/ring/{id}: {:.1}% of {offered} frames delivered, consumer read {received}",
                    100.0 * queued as f64 / offered as f64
                );
            }

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

criterion_group!(benches, driver_rx);
criterion_main!(benches);
