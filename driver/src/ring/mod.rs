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
//! Frames of up to [`MAX_FRAME_LEN`] bytes span as many fixed-size slots as they need. Two
//! eventfds carry wake-ups, written only when the other side asked for one ([`protocol`]):
//! *client wake* (the driver signals it: rx frames, completions, tx room, closed) and *driver
//! wake* (the client signals it: tx frames).
//!
//! The API is framed I/O in the manner of illumos `frameio`: every call moves many frames, and
//! each frame is one or more vectors (gather on send, scatter on receive). [`DriverQueue`] is
//! the driver's end; [`ClientQueue`] is the client's.
//!
//! The index and wake-flag protocol lives in [`protocol`], generic over the atomic word so the
//! loom model check (`driver/tests/ring_loom.rs`) runs the very same code: `cargo test -p
//! netmux-driver --test ring_loom` (a few seconds; part of the normal suite), or deeper with
//! `LOOM_MAX_PREEMPTIONS=4 cargo test --release -p netmux-driver --test ring_loom`.
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

pub mod layout;
pub mod protocol;

mod batch;
mod client;
mod driver;
mod slots;

pub use crate::sys::OutOfBounds;
pub use batch::FrameBatch;
pub use client::{AttachError, ClientQueue, QueueError, SendOutcome};
pub use driver::{CreateError, DriverQueue, QueueFds, RingFault, RxOutcome};
pub use layout::Layout;
pub use protocol::IndexOutOfRange;

/// Largest frame a ring carries: 64 KiB (the largest IPv4 datagram plus an Ethernet header
/// fits only with reassembly disabled; 64 KiB bounds the slots one frame may span).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Default slot size: one 1,514-byte Ethernet frame fits in a single slot.
pub const DEFAULT_SLOT_SIZE: u32 = 2048;
/// Default number of rx and tx slots (2 MiB of frames each at the default slot size).
pub const DEFAULT_RING_SLOTS: u32 = 1024;

/// The geometry of a queue's rings (the queue's `rxbuf`/`txbuf` properties, in slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per slot, header included; a power of two in
    /// [`layout::MIN_SLOT_SIZE`]`..=`[`layout::MAX_SLOT_SIZE`].
    pub slot_size: u32,
    /// Slots in the rx ring (a power of two, enough for one maximum frame).
    pub rx_slots: u32,
    /// Slots in the tx ring (a power of two, enough for one maximum frame).
    pub tx_slots: u32,
    /// Entries in the completion ring (a power of two). The driver consumes a tx frame only
    /// when it has room to complete it, so this bounds the frames in flight.
    pub completion_slots: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            slot_size: DEFAULT_SLOT_SIZE,
            rx_slots: DEFAULT_RING_SLOTS,
            tx_slots: DEFAULT_RING_SLOTS,
            completion_slots: DEFAULT_RING_SLOTS,
        }
    }
}

impl RingConfig {
    /// The layout this configuration produces, or why it is not acceptable.
    pub fn layout(&self) -> Result<Layout, RingConfigError> {
        Layout::new(
            self.slot_size,
            self.rx_slots,
            self.tx_slots,
            self.completion_slots,
        )
    }
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

/// Outcome of one transmitted frame, as reported in the completion ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// The frame was put on the link.
    Sent,
    /// Rejected: the source MAC address is not the queue's.
    RejectedSpoofedSourceMac,
    /// Rejected: the source IP address is not the queue's.
    RejectedSourceIp,
    /// Rejected: the source port is not owned by the queue.
    RejectedUnownedSourcePort,
    /// Rejected: the queue was not granted this ethertype.
    RejectedEthertypeNotGranted,
    /// Rejected: clients may not transmit IP fragments.
    RejectedFragment,
    /// Rejected: no installed tx filter accepted the frame (no more specific reason known).
    RejectedByFilter,
    /// Rejected: the slots did not form a valid frame (bad length, flags, or a partial frame).
    RejectedMalformed,
    /// Accepted, but the link failed to send it.
    LinkError,
    /// A status code this version does not know (from a newer driver).
    Unknown(u32),
}

impl TxStatus {
    /// The code stored in the completion ring.
    pub fn code(self) -> u32 {
        match self {
            Self::Sent => 0,
            Self::RejectedSpoofedSourceMac => 1,
            Self::RejectedSourceIp => 2,
            Self::RejectedUnownedSourcePort => 3,
            Self::RejectedEthertypeNotGranted => 4,
            Self::RejectedFragment => 5,
            Self::RejectedByFilter => 6,
            Self::RejectedMalformed => 7,
            Self::LinkError => 8,
            Self::Unknown(code) => code,
        }
    }

    /// The status for a code read from the completion ring.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Sent,
            1 => Self::RejectedSpoofedSourceMac,
            2 => Self::RejectedSourceIp,
            3 => Self::RejectedUnownedSourcePort,
            4 => Self::RejectedEthertypeNotGranted,
            5 => Self::RejectedFragment,
            6 => Self::RejectedByFilter,
            7 => Self::RejectedMalformed,
            8 => Self::LinkError,
            other => Self::Unknown(other),
        }
    }

    /// Whether the frame went out.
    pub fn is_sent(self) -> bool {
        self == Self::Sent
    }
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
    /// Times the driver left tx frames in the ring because the completion ring was full.
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
