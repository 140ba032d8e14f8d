//! Shared-memory rings between the driver and one client queue, with framed I/O on top.
//!
//! Each client queue owns one memfd that the driver creates and seals against shrinking and
//! growing (`memfd_create` with `MFD_ALLOW_SEALING`, then `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`); both processes map it. It holds a header
//! (magic, version, geometry, the `closed` flag and counters) and three single-producer,
//! single-consumer rings (see [`layout`] for the byte layout):
//!
//! - **rx** (driver produces, client consumes): received frames;
//! - **tx** (client produces, driver consumes): frames to transmit;
//! - **completion** (driver produces, client consumes): one [`Completion`] per consumed tx
//!   frame, saying whether it was sent or why it was rejected.
//!
//! Frames of up to [`MAX_FRAME_LEN`] bytes span as many fixed-size slots as they need. A
//! doorbell carries wake-ups, rung only when the other side asked for one ([`protocol`]): a
//! connected pair of stream sockets ([`sys::Doorbell`]), one end on each side, so each side
//! holds one descriptor for both directions. The driver rings the client for rx frames,
//! completions, tx room and closing; the client rings the driver for tx frames. Once the
//! client has its descriptors, the driver keeps only its end of the doorbell (the memfd is
//! not needed for a mapping that exists): one descriptor per queue on each side.
//!
//! The API is framed I/O in the manner of illumos `frameio`: every call moves many frames, and
//! each frame is one or more vectors (gather on send, scatter on receive). [`DriverQueue`] is
//! the driver's end; [`ClientQueue`] is the client's.
//!
//! The index and wake-flag protocol lives in [`protocol`], generic over the atomic word so the
//! loom model check (`ring/tests/ring_loom.rs`) runs the very same code: `cargo test -p
//! netmux-ring --test ring_loom` (a few seconds; part of the normal suite), or deeper with
//! `LOOM_MAX_PREEMPTIONS=4 cargo test --release -p netmux-ring --test ring_loom`.
//!
//! The geometry of a queue's rings is [`QueueConfig`], the one type netd, the driver and the
//! protocol use for it; [`TxStatus`] is generated from one table ([`for_each_tx_status!`]).
//!
//! # Trust
//!
//! The driver never trusts client-writable memory. It keeps its own indices privately, checks
//! every index and slot header it reads, copies tx frames into private memory before looking at
//! them, and never writes anywhere but the driver-owned parts (rx and completion slots, its own
//! index lines, the header). A client that scribbles on its ring memory can only break its own
//! queue: the driver reports the fault on that queue and carries on. The client trusts the
//! driver, but still validates the header and the mapping size before using the memory and
//! never panics on what it reads.

#![deny(unsafe_code)]

pub mod layout;
pub mod protocol;
pub mod sys;

mod batch;
mod client;
mod driver;
mod slots;
mod status;

pub use crate::sys::OutOfBounds;
pub use batch::FrameBatch;
pub use client::{AttachError, ClientQueue, QueueError, SendOutcome};
pub use driver::{CreateError, DriverQueue, QueueFds, RingFault, RxOutcome};
pub use layout::Layout;
pub use netmux_proto::driver::QueueConfig;
pub use protocol::IndexOutOfRange;
pub use status::TxStatus;
pub use sys::Doorbell;

/// Largest frame a ring carries: the largest datagram the driver reassembles (IPv6: a 40-byte
/// header and 65,535 bytes of payload; IPv4's 65,535 bytes in all is smaller) behind an
/// Ethernet header and two VLAN tags, 65,597 bytes, rounded up to a multiple of 64. It bounds
/// the slots one frame may span.
pub const MAX_FRAME_LEN: usize = 65_600;

pub use netmux_proto::driver::{DEFAULT_RING_SLOTS, DEFAULT_SLOT_SIZE};

/// The layout a queue geometry produces, or why it is not acceptable.
pub fn layout_of(config: &QueueConfig) -> Result<Layout, RingConfigError> {
    Layout::new(
        config.slot_size,
        config.rx_slots,
        config.tx_slots,
        config.completion_slots,
    )
}

/// A ring geometry that is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingConfigError {
    /// The slot size is not a power of two within the limits.
    #[error(
        "slot size {0} must be a power of two between {min} and {max}",
        min = layout::MIN_SLOT_SIZE,
        max = layout::MAX_SLOT_SIZE
    )]
    SlotSize(u32),
    /// A slot count is not a power of two, too large, or too small to hold a maximum frame.
    #[error("{ring} ring: {count} slots; need a power of two between {min} and {max}", max = layout::MAX_SLOTS)]
    SlotCount {
        /// Which ring.
        ring: &'static str,
        /// The count asked for.
        count: u32,
        /// The smallest acceptable count.
        min: u32,
    },
    /// The rings would need more memory than one queue may have.
    #[error("ring memory of {0} bytes exceeds the limit of {max}", max = layout::MAX_TOTAL_LEN)]
    TooLarge(u64),
}

/// One entry of the completion ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Sequence number of the tx frame: the n-th frame the client sent on this queue (from 0).
    pub seq: u64,
    /// What became of it.
    pub status: TxStatus,
    /// Its length in bytes, as the driver saw it.
    pub len: u32,
}

/// Per-queue counters the driver keeps privately and mirrors into the ring header, so the
/// client can read them without asking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Frames written into the rx ring.
    pub rx_frames: u64,
    /// Bytes written into the rx ring.
    pub rx_bytes: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_dropped_full: u64,
    /// Frames dropped because they exceeded [`MAX_FRAME_LEN`].
    pub rx_dropped_too_large: u64,
    /// Frames dropped because the queue was closed or its ring faulted.
    pub rx_dropped_unusable: u64,
    /// Well-formed frames taken from the tx ring.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Tx frames rejected as malformed by the ring itself.
    pub tx_malformed: u64,
    /// Tx frames completed with any status other than [`TxStatus::Sent`].
    pub tx_rejected: u64,
    /// Flow-control events: times the driver began leaving tx frames in the ring because the
    /// completion ring was full (counted once per event, as illumos vnd's `txfc`, not once per
    /// look while it lasts).
    pub tx_flow_control: u64,
    /// Impossible indices read from the client's side of the rings.
    pub index_faults: u64,
}

impl RingCounters {
    /// Number of counters, in header order.
    pub const COUNT: usize = 11;

    /// The counters in header order.
    pub fn to_words(&self) -> [u64; Self::COUNT] {
        [
            self.rx_frames,
            self.rx_bytes,
            self.rx_dropped_full,
            self.rx_dropped_too_large,
            self.rx_dropped_unusable,
            self.tx_frames,
            self.tx_bytes,
            self.tx_malformed,
            self.tx_rejected,
            self.tx_flow_control,
            self.index_faults,
        ]
    }

    /// Counters from words in header order.
    pub fn from_words(w: [u64; Self::COUNT]) -> Self {
        Self {
            rx_frames: w[0],
            rx_bytes: w[1],
            rx_dropped_full: w[2],
            rx_dropped_too_large: w[3],
            rx_dropped_unusable: w[4],
            tx_frames: w[5],
            tx_bytes: w[6],
            tx_malformed: w[7],
            tx_rejected: w[8],
            tx_flow_control: w[9],
            index_faults: w[10],
        }
    }
}

const _: () = assert!(RingCounters::COUNT <= layout::COUNTER_WORDS);
