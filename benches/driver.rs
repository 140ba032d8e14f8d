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
//! A real driver drops a frame when a client's rx ring is full; here the producer instead
//! waits for the consumer, so every row counts frames that actually reached a client ring (the
//! number of times it found a ring full is printed after each row). With one consumer thread
//! for all queues, the `ring` rows measure the producer and consumer together.
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
            eprintln!(
                "driver_rx/ring/{id}: {offered} frames delivered, consumer read {received}, \
                 producer found a full ring {dropped} times"
            );

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
