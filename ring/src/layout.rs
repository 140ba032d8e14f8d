//! Where everything lives in a queue's ring memory, computed the same way by the driver (which
//! writes the header) and the client (which validates it before trusting the mapping).
//!
//! ```text
//! 0      header: magic, version, geometry, total length          (written once by the driver)
//! 128    closed flag                                             (driver)
//! 256    counters, 16 x u64                                      (driver)
//! 512    rx ring:         producer line | consumer line          (128 bytes each)
//! 768    tx ring:         producer line | consumer line
//! 1024   completion ring: producer line | consumer line
//! 1280   rx slots, tx slots (slot_size each), completion entries (16 bytes each)
//! ```
//!
//! Each producer/consumer line holds that side's index (offset 0) and wants-wake flag
//! (offset 4); lines are 128 bytes apart so the two sides never share a cache line, even with
//! adjacent-line prefetching. A frame slot starts with an 8-byte slot header: the number of
//! payload bytes in this slot and flags ([`SLOT_MORE`]: the frame continues in the next slot).
//! All multi-byte fields are native-endian: both sides run on the same machine.

use super::{RingConfigError, MAX_FRAME_LEN};

/// "NMXRING1" read as a little-endian u64: identifies netmux ring memory.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NMXRING1");
/// Layout version; bumped whenever anything in this file changes meaning.
pub const VERSION: u32 = 1;

/// Distance between lines written by different sides (two cache lines: defeats the adjacent
/// line prefetcher that would otherwise make neighbouring lines share traffic).
pub const LINE: usize = 128;

/// Offset of the magic (u64).
pub const OFF_MAGIC: usize = 0;
/// Offset of the version (u32).
pub const OFF_VERSION: usize = 8;
/// Offset of the slot size (u32).
pub const OFF_SLOT_SIZE: usize = 12;
/// Offset of the rx slot count (u32).
pub const OFF_RX_SLOTS: usize = 16;
/// Offset of the tx slot count (u32).
pub const OFF_TX_SLOTS: usize = 20;
/// Offset of the completion entry count (u32).
pub const OFF_COMPLETION_SLOTS: usize = 24;
/// Offset of the total length of the ring memory (u64).
pub const OFF_TOTAL_LEN: usize = 32;
/// Offset of the closed flag (u32): non-zero once the driver has stopped the queue for good.
pub const OFF_CLOSED: usize = LINE;
/// Offset of the tx limit (u32, written by the driver): how many tx slots the client may fill
/// (illumos vnd's `txbuf`, in slots); 0 means the whole ring. The client honours it when it
/// writes; a client that ignores it only uses memory it already has.
pub const OFF_TX_LIMIT: usize = LINE + 8;
/// Offset of the first counter (u64 each, in the order of [`super::RingCounters::to_words`]).
pub const OFF_COUNTERS: usize = 2 * LINE;
/// Number of counter words reserved in the header.
pub const COUNTER_WORDS: usize = 16;
/// Length of the header (identification, closed flag, counters).
pub const HEADER_LEN: usize = 4 * LINE;

/// Size of a frame slot header: `len: u32`, `flags: u32`.
pub const SLOT_HEADER_LEN: usize = 8;
/// Slot flag: the frame continues in the next slot.
pub const SLOT_MORE: u32 = 1;
/// Size of one completion entry: `seq: u64`, `status: u32`, `len: u32`.
pub const COMPLETION_ENTRY_LEN: usize = 16;

/// Smallest slot: a header and 56 payload bytes (a minimum Ethernet frame without FCS fits).
pub const MIN_SLOT_SIZE: u32 = 64;
/// Largest slot: a maximum frame plus the slot header, rounded to a power of two.
pub const MAX_SLOT_SIZE: u32 = 128 * 1024;
/// Most slots in one ring: 2^20 (keeps any geometry well inside `u32` index arithmetic).
pub const MAX_SLOTS: u32 = 1 << 20;
/// Largest ring memory for one queue: 1 GiB (a bound on what a queue property may ask for).
pub const MAX_TOTAL_LEN: u64 = 1 << 30;
/// Ring memory is sized in whole pages.
pub const PAGE: u64 = 4096;

/// The three rings of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// Driver to client: received frames.
    Rx,
    /// Client to driver: frames to transmit.
    Tx,
    /// Driver to client: one entry per consumed tx frame.
    Completion,
}

/// Offsets of one ring's shared words and slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOffsets {
    /// Producer index (u32); the producer's wants-wake flag follows at +4.
    pub producer_line: usize,
    /// Consumer index (u32); the consumer's wants-wake flag follows at +4.
    pub consumer_line: usize,
    /// First slot.
    pub slots: usize,
    /// Number of slots (a power of two).
    pub count: u32,
    /// Bytes per slot.
    pub slot_size: usize,
}

impl RingOffsets {
    /// Offset of slot `index % count`.
    #[inline]
    pub fn slot(&self, index: u32) -> usize {
        self.slots + (index & (self.count - 1)) as usize * self.slot_size
    }
}

/// The complete geometry of one queue's ring memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per frame slot, header included.
    pub slot_size: u32,
    /// The rx ring.
    pub rx: RingOffsets,
    /// The tx ring.
    pub tx: RingOffsets,
    /// The completion ring.
    pub completion: RingOffsets,
    /// Total length of the memory (a multiple of [`PAGE`]).
    pub total_len: u64,
    /// [`Layout::max_slots_per_frame`], computed once (it divides by a non-power of two).
    max_frame_slots: u32,
}

impl Layout {
    /// Computes the layout for a geometry, checking every limit.
    pub fn new(
        slot_size: u32,
        rx_slots: u32,
        tx_slots: u32,
        completion_slots: u32,
    ) -> Result<Self, RingConfigError> {
        if !slot_size.is_power_of_two() || !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) {
            return Err(RingConfigError::SlotSize(slot_size));
        }
        let payload = slot_size as usize - SLOT_HEADER_LEN;
        let min_frame_slots = MAX_FRAME_LEN.div_ceil(payload) as u32;
        for (name, count) in [("rx", rx_slots), ("tx", tx_slots)] {
            if !count.is_power_of_two() || !(min_frame_slots..=MAX_SLOTS).contains(&count) {
                return Err(RingConfigError::SlotCount {
                    ring: name,
                    count,
                    min: min_frame_slots.next_power_of_two(),
                });
            }
        }
        if !completion_slots.is_power_of_two() || completion_slots > MAX_SLOTS {
            return Err(RingConfigError::SlotCount {
                ring: "completion",
                count: completion_slots,
                min: 1,
            });
        }
        // All sizes are bounded above by 2^20 * 2^17 = 2^37, so u64 arithmetic cannot overflow.
        let ss = u64::from(slot_size);
        let base = (HEADER_LEN + 6 * LINE) as u64;
        let rx_start = base;
        let tx_start = rx_start + u64::from(rx_slots) * ss;
        let completion_start = tx_start + u64::from(tx_slots) * ss;
        let end = completion_start + u64::from(completion_slots) * COMPLETION_ENTRY_LEN as u64;
        let total_len = end.div_ceil(PAGE) * PAGE;
        if total_len > MAX_TOTAL_LEN {
            return Err(RingConfigError::TooLarge(total_len));
        }
        let ring = |n: usize, slots: u64, count: u32, slot_size: usize| RingOffsets {
            producer_line: HEADER_LEN + 2 * n * LINE,
            consumer_line: HEADER_LEN + (2 * n + 1) * LINE,
            slots: slots as usize,
            count,
            slot_size,
        };
        Ok(Self {
            slot_size,
            rx: ring(0, rx_start, rx_slots, slot_size as usize),
            tx: ring(1, tx_start, tx_slots, slot_size as usize),
            completion: ring(2, completion_start, completion_slots, COMPLETION_ENTRY_LEN),
            total_len,
            max_frame_slots: min_frame_slots,
        })
    }

    /// Payload bytes per frame slot.
    #[inline]
    pub fn payload_per_slot(&self) -> usize {
        self.slot_size as usize - SLOT_HEADER_LEN
    }

    /// Most slots one frame of at most [`MAX_FRAME_LEN`] bytes can occupy.
    #[inline]
    pub fn max_slots_per_frame(&self) -> u32 {
        self.max_frame_slots
    }

    /// Slots a frame of `len` bytes occupies (an empty frame still takes one).
    #[inline]
    pub fn slots_for(&self, len: usize) -> u32 {
        let payload = self.payload_per_slot();
        if len <= payload {
            // The common case (a frame fits one slot) without a division.
            1
        } else {
            len.div_ceil(payload) as u32
        }
    }

    /// The offsets of one ring.
    pub fn ring(&self, kind: RingKind) -> &RingOffsets {
        match kind {
            RingKind::Rx => &self.rx,
            RingKind::Tx => &self.tx,
            RingKind::Completion => &self.completion,
        }
    }
}
