//! The index and wake-flag protocol of one single-producer, single-consumer ring, generic over
//! the atomic word type so that the same code runs on shared memory (`std` atomics) and under
//! the `loom` model checker (`driver/tests/ring_loom.rs`).
//!
//! # The protocol
//!
//! A ring has `capacity` slots (a power of two) and four shared 32-bit words:
//!
//! | word                  | written by | read by  |
//! |-----------------------|------------|----------|
//! | `producer_index`      | producer   | consumer |
//! | `producer_wants_wake` | producer   | consumer |
//! | `consumer_index`      | consumer   | producer |
//! | `consumer_wants_wake` | consumer   | producer |
//!
//! Indices run freely modulo 2^32; slot `i` lives at `i % capacity`. Each side keeps its *own*
//! index privately in a [`Producer`] or [`Consumer`] and only ever *stores* it to shared memory:
//! it never reads its own index back, so a peer that scribbles on it cannot confuse us.
//!
//! - The producer fills slots, then publishes them with a `Release` store of its index; the
//!   consumer's `Acquire` load of that index makes the slot contents visible.
//! - The consumer releases slots with a `Release` store of its index; the producer's `Acquire`
//!   load of it orders the consumer's reads of those slots before the producer's overwrites.
//! - The peer's index is validated on every load: `0 <= producer - consumer <= capacity` must
//!   hold, otherwise the load returns [`IndexOutOfRange`] and nothing is read or written.
//!
//! # Wake-ups without lost wake-ups
//!
//! A side that wants to sleep (a consumer with nothing to read, a producer with no room) sets
//! its wants-wake flag, issues a `SeqCst` fence and *re-checks* the peer's index; only if there
//! is still nothing to do may it sleep. The other side, after publishing, issues a `SeqCst`
//! fence and reads the flag; if set, it rings the doorbell. The two fences forbid the outcome
//! "sleeper reads the old index *and* waker reads the old flag" (the store-buffering pattern),
//! so at least one of them sees the other: either the sleeper finds the new work or the waker
//! signals. The sleeper clears its own flag when it wakes; the waker never writes it.

use std::sync::atomic::Ordering;

/// A 32-bit atomic word in memory both sides of a ring can see.
///
/// Implemented for [`std::sync::atomic::AtomicU32`] (the real rings) and by the loom model
/// check for `loom::sync::atomic::AtomicU32`.
pub trait SharedWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, value: u32, order: Ordering);
    /// A `SeqCst` fence in the memory model this word belongs to.
    fn fence_seq_cst();
}

impl SharedWord for std::sync::atomic::AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::load(self, order)
    }
    #[inline]
    fn store(&self, value: u32, order: Ordering) {
        std::sync::atomic::AtomicU32::store(self, value, order);
    }
    #[inline]
    fn fence_seq_cst() {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// The four shared words of one ring.
#[derive(Debug)]
pub struct RingWords<'a, W> {
    /// Next slot the producer will fill (written by the producer).
    pub producer_index: &'a W,
    /// Non-zero when the producer sleeps waiting for room (written by the producer).
    pub producer_wants_wake: &'a W,
    /// Next slot the consumer will read (written by the consumer).
    pub consumer_index: &'a W,
    /// Non-zero when the consumer sleeps waiting for slots (written by the consumer).
    pub consumer_wants_wake: &'a W,
}

/// The peer published an index that no correct peer could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer index {observed} is impossible next to our index {own} in a ring of {capacity} slots"
)]
pub struct IndexOutOfRange {
    /// The index read from shared memory.
    pub observed: u32,
    /// Our own (private) index.
    pub own: u32,
    /// Number of slots in the ring.
    pub capacity: u32,
}

/// The producer's private state.
#[derive(Debug, Clone)]
pub struct Producer {
    tail: u32,
    capacity: u32,
}

impl Producer {
    /// A producer that starts at index `tail` of a ring with `capacity` slots.
    pub fn new(tail: u32, capacity: u32) -> Self {
        Self { tail, capacity }
    }

    /// The next index to fill (the slot is `tail % capacity`).
    #[inline]
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Number of free slots, from an `Acquire` load of the consumer's index.
    #[inline]
    pub fn free<W: SharedWord>(&self, words: &RingWords<'_, W>) -> Result<u32, IndexOutOfRange> {
        let head = words.consumer_index.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.capacity {
            return Err(IndexOutOfRange {
                observed: head,
                own: self.tail,
                capacity: self.capacity,
            });
        }
        Ok(self.capacity - used)
    }

    /// Publishes `count` more filled slots with one `Release` store. The caller must have
    /// filled them and must not publish more than [`free`](Self::free) allowed.
    #[inline]
    pub fn publish<W: SharedWord>(&mut self, words: &RingWords<'_, W>, count: u32) {
        self.tail = self.tail.wrapping_add(count);
        words.producer_index.store(self.tail, Ordering::Release);
    }

    /// After publishing: whether the consumer asked to be woken (then ring its doorbell).
    #[inline]
    pub fn consumer_wants_wake<W: SharedWord>(&self, words: &RingWords<'_, W>) -> bool {
        W::fence_seq_cst();
        words.consumer_wants_wake.load(Ordering::Relaxed) != 0
    }

    /// Before sleeping for room: sets the wants-wake flag and re-checks. Returns `Ok(true)` when
    /// there are still fewer than `needed` free slots, so sleeping is safe; `Ok(false)` when room
    /// appeared (the flag is cleared again and the caller should not sleep).
    pub fn prepare_wait<W: SharedWord>(
        &self,
        words: &RingWords<'_, W>,
        needed: u32,
    ) -> Result<bool, IndexOutOfRange> {
        words.producer_wants_wake.store(1, Ordering::Relaxed);
        W::fence_seq_cst();
        let free = self.free(words);
        if !matches!(free, Ok(f) if f < needed) {
            Self::end_wait(words);
        }
        free.map(|f| f < needed)
    }

    /// After waking: clears the wants-wake flag.
    #[inline]
    pub fn end_wait<W: SharedWord>(words: &RingWords<'_, W>) {
        words.producer_wants_wake.store(0, Ordering::Relaxed);
    }
}

/// The consumer's private state.
#[derive(Debug, Clone)]
pub struct Consumer {
    head: u32,
    capacity: u32,
}

impl Consumer {
    /// A consumer that starts at index `head` of a ring with `capacity` slots.
    pub fn new(head: u32, capacity: u32) -> Self {
        Self { head, capacity }
    }

    /// The next index to read (the slot is `head % capacity`).
    #[inline]
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Number of published, unread slots, from an `Acquire` load of the producer's index.
    #[inline]
    pub fn available<W: SharedWord>(
        &self,
        words: &RingWords<'_, W>,
    ) -> Result<u32, IndexOutOfRange> {
        let tail = words.producer_index.load(Ordering::Acquire);
        let available = tail.wrapping_sub(self.head);
        if available > self.capacity {
            return Err(IndexOutOfRange {
                observed: tail,
                own: self.head,
                capacity: self.capacity,
            });
        }
        Ok(available)
    }

    /// Hands `count` read slots back to the producer with one `Release` store. The caller must
    /// have finished reading them and must not release more than were available.
    #[inline]
    pub fn release<W: SharedWord>(&mut self, words: &RingWords<'_, W>, count: u32) {
        self.head = self.head.wrapping_add(count);
        words.consumer_index.store(self.head, Ordering::Release);
    }

    /// After releasing: whether the producer asked to be woken (then ring its doorbell).
    #[inline]
    pub fn producer_wants_wake<W: SharedWord>(&self, words: &RingWords<'_, W>) -> bool {
        W::fence_seq_cst();
        words.producer_wants_wake.load(Ordering::Relaxed) != 0
    }

    /// Before sleeping for slots: sets the wants-wake flag and re-checks. Returns `Ok(true)`
    /// when the ring is still empty, so sleeping is safe; `Ok(false)` when slots appeared (the
    /// flag is cleared again and the caller should not sleep).
    pub fn prepare_wait<W: SharedWord>(
        &self,
        words: &RingWords<'_, W>,
    ) -> Result<bool, IndexOutOfRange> {
        words.consumer_wants_wake.store(1, Ordering::Relaxed);
        W::fence_seq_cst();
        let available = self.available(words);
        if !matches!(available, Ok(0)) {
            Self::end_wait(words);
        }
        available.map(|a| a == 0)
    }

    /// After waking: clears the wants-wake flag.
    #[inline]
    pub fn end_wait<W: SharedWord>(words: &RingWords<'_, W>) {
        words.consumer_wants_wake.store(0, Ordering::Relaxed);
    }
}
