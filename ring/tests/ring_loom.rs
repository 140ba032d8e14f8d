//! Model check of the ring's index and wake-flag protocol with loom.
//!
//! The protocol in `netmux_ring::protocol` is generic over [`SharedWord`]; here it runs
//! over loom's atomics, with slot contents in loom `UnsafeCell`s (so loom reports any read of a
//! slot that is not ordered after the write that filled it, or any overwrite not ordered after
//! the read) and eventfds modelled by a counter under a loom mutex and condition variable (so a
//! lost wake-up shows up as a deadlock, which loom reports). Loom explores every interleaving
//! and every outcome the C++ memory model allows for the orderings used, within a preemption
//! bound.
//!
//! This is an ordinary test target: `cargo test -p netmux-driver --test ring_loom` runs it (no
//! `--cfg loom` needed, because the protocol is generic rather than `cfg`-switched). For a
//! deeper search, raise the bound: `LOOM_MAX_PREEMPTIONS=4 cargo test --release -p
//! netmux-driver --test ring_loom`.

use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU32;
use loom::sync::{Arc, Condvar, Mutex};
use netmux_ring::protocol::{Consumer, Producer, RingWords, SharedWord};

/// A loom atomic as a ring word (a newtype: the trait and loom's type are both foreign here).
struct Word(AtomicU32);

impl SharedWord for Word {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    fn store(&self, value: u32, order: Ordering) {
        self.0.store(value, order);
    }
    fn fence_seq_cst() {
        loom::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// An eventfd: a counter, a wait that sleeps until it is non-zero and resets it.
#[derive(Default)]
struct EventFd {
    count: Mutex<u32>,
    ready: Condvar,
}

impl EventFd {
    fn signal(&self) {
        *self.count.lock().unwrap() += 1;
        self.ready.notify_one();
    }
    fn wait(&self) {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.ready.wait(count).unwrap();
        }
        *count = 0;
    }
}

/// One ring: the four shared words, the slots, and both doorbells.
struct Ring {
    producer_index: Word,
    producer_wants_wake: Word,
    consumer_index: Word,
    consumer_wants_wake: Word,
    slots: Vec<UnsafeCell<u32>>,
    wake_consumer: EventFd,
    wake_producer: EventFd,
}

impl Ring {
    fn new(capacity: u32, start: u32) -> Self {
        Self {
            producer_index: Word(AtomicU32::new(start)),
            producer_wants_wake: Word(AtomicU32::new(0)),
            consumer_index: Word(AtomicU32::new(start)),
            consumer_wants_wake: Word(AtomicU32::new(0)),
            slots: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
            wake_consumer: EventFd::default(),
            wake_producer: EventFd::default(),
        }
    }

    fn words(&self) -> RingWords<'_, Word> {
        RingWords {
            producer_index: &self.producer_index,
            producer_wants_wake: &self.producer_wants_wake,
            consumer_index: &self.consumer_index,
            consumer_wants_wake: &self.consumer_wants_wake,
        }
    }

    fn slot(&self, index: u32) -> &UnsafeCell<u32> {
        &self.slots[(index % self.slots.len() as u32) as usize]
    }
}

/// Produces `1..=items` in batches of up to `batch`, sleeping when the ring is full.
fn produce(ring: &Ring, mut producer: Producer, items: u32, batch: u32) {
    let words = ring.words();
    let mut next = 1;
    while next <= items {
        let free = producer.free(&words).expect("consumer index in range");
        if free == 0 {
            if producer.prepare_wait(&words, 1).expect("in range") {
                ring.wake_producer.wait();
                Producer::end_wait(&words);
            }
            continue;
        }
        let count = free.min(batch).min(items - next + 1);
        for i in 0..count {
            let value = next + i;
            // SAFETY: loom's cell; loom itself checks this write does not race a read.
            ring.slot(producer.tail().wrapping_add(i))
                .with_mut(|p| unsafe { *p = value });
        }
        producer.publish(&words, count);
        next += count;
        if producer.consumer_wants_wake(&words) {
            ring.wake_consumer.signal();
        }
    }
}

/// Consumes until `items` values arrived, checking they come in order, sleeping when empty.
fn consume(ring: &Ring, mut consumer: Consumer, items: u32) {
    let words = ring.words();
    let mut expected = 1;
    while expected <= items {
        let available = consumer.available(&words).expect("producer index in range");
        if available == 0 {
            if consumer.prepare_wait(&words).expect("in range") {
                ring.wake_consumer.wait();
                Consumer::end_wait(&words);
            }
            continue;
        }
        for i in 0..available {
            // SAFETY: loom's cell; loom itself checks this read does not race a write.
            let value = ring
                .slot(consumer.head().wrapping_add(i))
                .with(|p| unsafe { *p });
            assert_eq!(value, expected, "slot contents visible and in order");
            expected += 1;
        }
        consumer.release(&words, available);
        if consumer.producer_wants_wake(&words) {
            ring.wake_producer.signal();
        }
    }
}

fn model(capacity: u32, start: u32, items: u32, batch: u32) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        // Enough to find the classic lost-wake-up and publication bugs, and fast in CI.
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let ring = Arc::new(Ring::new(capacity, start));
        let producer_ring = ring.clone();
        let producer = loom::thread::spawn(move || {
            produce(&producer_ring, Producer::new(start, capacity), items, batch)
        });
        consume(&ring, Consumer::new(start, capacity), items);
        producer.join().unwrap();
    });
}

#[test]
fn single_frames_wrap_around_a_two_slot_ring_without_lost_wakeups() {
    model(2, 0, 4, 1);
}

#[test]
fn indices_wrap_past_u32_max_correctly() {
    model(2, u32::MAX - 1, 4, 1);
}

#[test]
fn batches_publish_once_and_stay_ordered() {
    model(2, u32::MAX, 4, 2);
}
