//! IPv4 and IPv6 reassembly, hardened against the known fragment attacks.
//!
//! The driver reassembles before it classifies, so a filter always sees a whole header chain
//! and no fragment can reach the wrong client. [`Reassembler`] does no I/O and reads no clock:
//! the caller passes each Ethernet frame with a monotonic time in nanoseconds (the driver its
//! receive time, `netmux defrag` the capture timestamps) and gets an [`Outcome`] back:
//!
//! ```
//! use netmux_driver::reassembly::{Config, Outcome, Reassembler};
//! let mut r = Reassembler::new(Config::default());
//! let arp = [0u8; 60]; // ethertype 0: not IP, passed through untouched, no copy
//! assert!(matches!(r.push(&arp, 0), Outcome::Deliver(f) if f.as_ptr() == arp.as_ptr()));
//! ```
//!
//! # Guarantees
//!
//! - **Keys.** IPv4 datagrams are keyed by (source, destination, protocol, identification),
//!   IPv6 by (source, destination, identification) as RFC 8200 says (its next-header value may
//!   differ between fragments, so it is not keyed); both also by their VLAN identifiers, so
//!   fragments from different VLANs never join.
//! - **RFC 5722.** Any overlap discards the whole datagram, and a tombstone discards its later
//!   fragments until the datagram's timeout. An exact duplicate (same range, same bytes) is
//!   ignored; a same-range fragment with different bytes is an overlap. Two last fragments with
//!   different ends, or data past a known end, discard the datagram the same way.
//! - **Limits.** At most [`MAX_FRAGMENTS_PER_DATAGRAM`] fragments; nothing may end past
//!   [`MAX_DATAGRAM_LEN`] counting the header (no 16-bit wraparound); a fragment with more
//!   following must be non-empty and a multiple of 8 bytes; the first fragment must hold the
//!   whole transport header (IPv6: the whole header chain, RFC 7112). Any fragment that fails
//!   these is dropped on its own.
//! - **Time.** A datagram times out [`Config::timeout_ns`] after its first fragment arrived
//!   (default 30 s); later fragments never extend it. A time earlier than one already seen is
//!   treated as that one, so a clock step backwards cannot keep entries alive.
//! - **Memory.** Every datagram is charged its buffer's capacity plus a fixed overhead
//!   ([`SLOT_OVERHEAD`]) against a budget per source address and an overall budget; when a
//!   datagram would exceed either, the oldest datagrams (of that source, or overall) are evicted
//!   first. A datagram that cannot fit alone is dropped. Spare buffers kept for reuse count
//!   against the overall budget too, and go before any datagram is evicted.
//! - **Bounded work.** Per fragment: one header parse (and the IPv4 header checksum check), one
//!   seeded hash of the key (attackers cannot aim keys at one bucket) used for every table
//!   operation on it, a binary search and an insert in a sorted list of at most 64 ranges, one
//!   copy of the data. Per datagram: a source-budget lookup (skipped when the source is the
//!   previous datagram's), a buffer (reused from spares when there are any). Expiry and
//!   eviction are O(1) per datagram (intrusive age lists). Nothing grows with the number of
//!   fragments ever seen.
//! - **Output.** Unfragmented frames come back borrowed and untouched. A reassembled datagram is
//!   one owned frame: the first fragment's Ethernet header (with its VLAN tags) and IP header,
//!   with the total length or payload length fixed, MF and offset cleared and the IPv4 checksum
//!   updated, or the IPv6 Fragment header removed and the next-header chain fixed. IPv6
//!   atomic fragments (offset 0, M clear; RFC 6946) come back the same way, on their own,
//!   without touching any queued datagram. Ethernet padding never enters a datagram: a
//!   fragment's data ends where its IP length says. A reassembled IPv6 datagram that still holds
//!   a Fragment header (nested fragmentation, which no sender produces) is dropped, so the
//!   classifier never sees a fragment.
//! - **No panics** on any bytes.
//!
//! Fragments a client transmits are refused by the transmit check ([`is_fragment`]) and
//! gathered into their datagram by `daemon::tx_fragments`, which reuses this module's parser.

pub mod fragmenter;
mod key;
pub(crate) mod parse;

pub use netmux_wire::ip::is_fragment;
pub use netmux_wire::ipv6::MAX_EXTENSION_HEADERS;

use hashbrown::HashTable;
use key::{Key, Seed, SourceKey};
use parse::{Family, Fragment, Parsed};

/// Default reassembly timeout: 30 s from the first fragment, Linux's `ipfrag_time` (RFC 791
/// suggests 15 s, RFC 8200 60 s; 30 s is what networks are tuned for).
pub const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;
/// Default overall memory budget: 4 MiB, Linux's `ipfrag_high_thresh`.
pub const DEFAULT_MEMORY_BUDGET: usize = 4 << 20;
/// Default budget per source address: a quarter of the overall default, so that one source
/// (or one spoofed address) can never take more than a quarter of the reassembly memory.
pub const DEFAULT_SOURCE_BUDGET: usize = DEFAULT_MEMORY_BUDGET / 4;
/// Fragments per datagram: OpenBSD's queue limit. 64 fragments of the smallest IPv6 MTU still
/// carry 80 KB, more than any datagram; more fragments than this are an attack on the CPU.
pub const MAX_FRAGMENTS_PER_DATAGRAM: usize = 64;
/// The largest datagram: the IPv4 total length and the IPv6 payload length are 16-bit fields.
pub const MAX_DATAGRAM_LEN: u32 = 65_535;
/// Fixed memory charged per datagram besides its buffer: its slot, and its index entry (a slot
/// number and a control byte, at the index's worst load factor of one half).
pub const SLOT_OVERHEAD: usize = std::mem::size_of::<Slot>() + 2 * std::mem::size_of::<u32>() + 2;
/// A larger spare buffer is freed rather than kept: 9 KiB jumbo frames are the largest common
/// datagram, and one rare 64 KiB datagram should not pin 64 KiB of idle memory.
const MAX_POOLED_CAPACITY: usize = 16 << 10;
/// A smaller spare buffer is freed rather than kept: it would be reallocated anyway, and the
/// floor bounds the number of spare buffers by the budget.
const MIN_POOLED_CAPACITY: usize = 256;
/// Marks "no slot" in the intrusive lists.
const NIL: u32 = u32::MAX;
/// Marks "last fragment not seen yet".
const UNKNOWN_TOTAL: u32 = u32::MAX;

/// Settings of a [`Reassembler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Time from a datagram's first fragment until it is discarded, in nanoseconds.
    pub timeout_ns: u64,
    /// Overall memory budget in bytes (see [`SLOT_OVERHEAD`] for what is charged).
    pub memory_budget: usize,
    /// Memory budget per source address, in bytes.
    pub source_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout_ns: DEFAULT_TIMEOUT_NS,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            source_budget: DEFAULT_SOURCE_BUDGET,
        }
    }
}

impl Config {
    /// A configuration with an overall budget and a per-source budget of a quarter of it.
    pub fn with_budget(memory_budget: usize) -> Config {
        Config {
            memory_budget,
            source_budget: memory_budget / 4,
            ..Config::default()
        }
    }
}

/// Why a fragment or a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The frame claims to be a fragment but its IP header is truncated or inconsistent, or
    /// (IPv4) its header checksum is wrong: a reassembled header gets a fresh checksum, so a
    /// corrupted one must not get in.
    Malformed,
    /// A fragment without data.
    Empty,
    /// A fragment with more following whose length is not a multiple of 8 bytes.
    Misaligned,
    /// The fragment, or the reassembled datagram, would end past 65,535 bytes.
    TooLong,
    /// The first fragment does not hold the whole transport header (IPv6: header chain).
    IncompleteFirstFragment,
    /// The fragment overlaps another of its datagram (RFC 5722): the datagram is discarded.
    Overlap,
    /// Two last fragments with different ends, or data past the known end.
    ConflictingEnd,
    /// More than [`MAX_FRAGMENTS_PER_DATAGRAM`] fragments.
    TooManyFragments,
    /// An exact duplicate of a fragment already queued; the datagram is unaffected.
    Duplicate,
    /// The fragment belongs to a datagram already discarded, within its timeout.
    DiscardedDatagram,
    /// Evicted (or refused) to keep within the memory budget.
    MemoryBudget,
    /// Not complete within the timeout.
    Timeout,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 12;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::Empty,
        DropReason::Misaligned,
        DropReason::TooLong,
        DropReason::IncompleteFirstFragment,
        DropReason::Overlap,
        DropReason::ConflictingEnd,
        DropReason::TooManyFragments,
        DropReason::Duplicate,
        DropReason::DiscardedDatagram,
        DropReason::MemoryBudget,
        DropReason::Timeout,
    ];

    /// A short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Empty => "empty",
            DropReason::Misaligned => "misaligned",
            DropReason::TooLong => "too-long",
            DropReason::IncompleteFirstFragment => "incomplete-first-fragment",
            DropReason::Overlap => "overlap",
            DropReason::ConflictingEnd => "conflicting-end",
            DropReason::TooManyFragments => "too-many-fragments",
            DropReason::Duplicate => "duplicate",
            DropReason::DiscardedDatagram => "discarded-datagram",
            DropReason::MemoryBudget => "memory-budget",
            DropReason::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of a frame given to [`Reassembler::push`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Outcome<'a> {
    /// Not a fragment: the frame itself, untouched.
    Deliver(&'a [u8]),
    /// This fragment completed a datagram (or was an IPv6 atomic fragment): the whole frame.
    /// Hand the buffer back with [`Reassembler::recycle`] to save an allocation.
    Reassembled(Vec<u8>),
    /// The fragment is queued.
    Held,
    /// The fragment was dropped, and with it its datagram if the reason says so.
    Dropped(DropReason),
}

/// What the reassembler has done so far. Every fragment received ends up exactly once in
/// `fragments_reassembled`, in a `fragments_dropped` reason, or among
/// [`Reassembler::held_fragments`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames that were IP fragments (atomic fragments excluded), malformed ones included.
    pub fragments: u64,
    /// IPv6 atomic fragments, delivered on their own.
    pub atomic_fragments: u64,
    /// Datagrams reassembled and delivered.
    pub datagrams_reassembled: u64,
    /// Fragments that went into those datagrams.
    pub fragments_reassembled: u64,
    fragments_dropped: [u64; DropReason::COUNT],
    datagrams_dropped: [u64; DropReason::COUNT],
}

impl Counters {
    /// Fragments dropped for `reason`: the fragment that was refused, plus, when a datagram was
    /// discarded, every fragment it held.
    pub fn fragments_dropped(&self, reason: DropReason) -> u64 {
        self.fragments_dropped[reason as usize]
    }

    /// Datagrams discarded for `reason` (overlap, conflicting end, too many fragments, too
    /// long, memory budget, timeout).
    pub fn datagrams_dropped(&self, reason: DropReason) -> u64 {
        self.datagrams_dropped[reason as usize]
    }

    /// All fragments dropped, whatever the reason.
    pub fn total_fragments_dropped(&self) -> u64 {
        self.fragments_dropped.iter().sum()
    }

    /// All datagrams discarded, whatever the reason.
    pub fn total_datagrams_dropped(&self) -> u64 {
        self.datagrams_dropped.iter().sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Live,
    Tombstone,
}

/// A received byte range of a datagram's fragmentable part. `end` is at most 65,535.
#[derive(Clone, Copy, Debug, Default)]
struct Range {
    start: u16,
    end: u16,
}

/// One datagram in reassembly (or its tombstone), in a slab indexed by `u32`.
#[derive(Debug)]
struct Slot {
    key: Key,
    state: State,
    created_ns: u64,
    /// Neighbours in the overall age list (oldest first).
    prev: u32,
    next: u32,
    /// Neighbours in its source's age list.
    src_prev: u32,
    src_next: u32,
    /// Index of its source's budget entry.
    source: u32,
    /// Bytes charged to the budgets.
    charge: usize,
    /// Headers (`base` bytes) then the data. Its length is `base + data_end`.
    buf: Vec<u8>,
    /// Length of the headers in front of the data: the first fragment's, or until it arrives,
    /// the first arrival's (moved if the first fragment's differs).
    base: u32,
    /// Highest end of the data received.
    data_end: u32,
    /// The datagram's length from its last fragment, or [`UNKNOWN_TOTAL`].
    total: u32,
    /// Data bytes received (ranges never overlap, so this is their sum).
    received: u32,
    /// The first fragment's header data, once it arrived.
    first: Option<FirstHeader>,
    nfrags: u8,
    ranges: [Range; MAX_FRAGMENTS_PER_DATAGRAM],
}

/// What the first fragment told about the header of the reassembled frame.
#[derive(Clone, Copy, Debug)]
struct FirstHeader {
    l3: u16,
    family: Family,
    limit_overhead: u32,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            key: Key::v4(0, 0, 0, 0, 0),
            state: State::Free,
            created_ns: 0,
            prev: NIL,
            next: NIL,
            src_prev: NIL,
            src_next: NIL,
            source: NIL,
            charge: 0,
            buf: Vec::new(),
            base: 0,
            data_end: 0,
            total: UNKNOWN_TOTAL,
            received: 0,
            first: None,
            nfrags: 0,
            ranges: [Range::default(); MAX_FRAGMENTS_PER_DATAGRAM],
        }
    }
}

/// The per-source budget entry.
#[derive(Debug)]
struct Source {
    key: SourceKey,
    bytes: usize,
    datagrams: u32,
    oldest: u32,
    newest: u32,
}

/// Reassembles IPv4 and IPv6 fragments; see the [module documentation](self) for what it
/// guarantees.
#[derive(Debug)]
pub struct Reassembler {
    config: Config,
    /// Slot numbers of live datagrams and tombstones, by their key's hash.
    index: HashTable<u32>,
    seed: Seed,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    oldest: u32,
    newest: u32,
    /// Entry numbers in `sources`, by their key's hash.
    source_index: HashTable<u32>,
    sources: Vec<Source>,
    free_sources: Vec<u32>,
    /// The source of the datagram created last, or [`NIL`].
    recent_source: u32,
    /// Bytes charged by datagrams and tombstones.
    memory: usize,
    /// Spare buffers for new datagrams; their capacity counts against the overall budget
    /// (`pool_bytes`) and they are the first thing freed when room is needed.
    pool: Vec<Vec<u8>>,
    pool_bytes: usize,
    held_fragments: u64,
    tombstones: usize,
    now_ns: u64,
    counters: Counters,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(Config::default())
    }
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new(config: Config) -> Reassembler {
        Reassembler {
            config,
            index: HashTable::new(),
            seed: Seed::random(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            oldest: NIL,
            newest: NIL,
            source_index: HashTable::new(),
            sources: Vec::new(),
            free_sources: Vec::new(),
            recent_source: NIL,
            memory: 0,
            pool: Vec::new(),
            pool_bytes: 0,
            held_fragments: 0,
            tombstones: 0,
            now_ns: 0,
            counters: Counters::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What it has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes currently charged to the budget, spare buffers included; never more than
    /// [`Config::memory_budget`].
    pub fn memory_in_use(&self) -> usize {
        self.memory + self.pool_bytes
    }

    /// Bytes of spare buffers kept for reuse (part of [`memory_in_use`](Self::memory_in_use)).
    pub fn spare_memory(&self) -> usize {
        self.pool_bytes
    }

    /// Datagrams being reassembled (tombstones not included).
    pub fn datagrams_in_flight(&self) -> usize {
        self.index.len() - self.tombstones
    }

    /// Tombstones of discarded datagrams still catching their later fragments.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Fragments queued in datagrams not yet complete.
    pub fn held_fragments(&self) -> u64 {
        self.held_fragments
    }

    /// Gives a delivered buffer back for reuse by a later datagram. It is kept only while
    /// the budget has room for it (and it is charged to the budget meanwhile).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if (MIN_POOLED_CAPACITY..=MAX_POOLED_CAPACITY).contains(&cap)
            && self.memory + self.pool_bytes + cap <= self.config.memory_budget
        {
            buf.clear();
            self.pool_bytes += cap;
            self.pool.push(buf);
        }
    }

    /// A spare buffer, or an empty one.
    fn spare_buffer(&mut self) -> Vec<u8> {
        match self.pool.pop() {
            Some(buf) => {
                self.pool_bytes -= buf.capacity();
                buf
            }
            None => Vec::new(),
        }
    }

    /// Discards every datagram whose timeout has passed at `now_ns`. [`push`](Self::push) does
    /// this itself; call it when no frames arrive for a while.
    pub fn expire(&mut self, now_ns: u64) {
        let now = now_ns.max(self.now_ns);
        self.now_ns = now;
        while self.oldest != NIL {
            let i = self.oldest;
            let created = self.slots[i as usize].created_ns;
            if created.saturating_add(self.config.timeout_ns) > now {
                break;
            }
            self.discard(i, DropReason::Timeout);
        }
    }

    /// Takes one Ethernet frame received at `now_ns` (monotonic nanoseconds).
    pub fn push<'a>(&mut self, frame: &'a [u8], now_ns: u64) -> Outcome<'a> {
        self.expire(now_ns);
        match parse::parse(frame) {
            Parsed::Whole => Outcome::Deliver(frame),
            Parsed::Malformed => {
                self.counters.fragments += 1;
                self.refuse(DropReason::Malformed)
            }
            Parsed::Atomic {
                fragment_header_at,
                end,
                next_header_at,
                next_header,
                l3,
            } => {
                self.counters.atomic_fragments += 1;
                let mut out = self.spare_buffer();
                out.extend_from_slice(&frame[..fragment_header_at]);
                out.extend_from_slice(
                    &frame[fragment_header_at + parse::IPV6_FRAGMENT_HEADER_LEN..end],
                );
                out[next_header_at] = next_header;
                let payload_len =
                    (end - l3 - parse::IPV6_HEADER_LEN - parse::IPV6_FRAGMENT_HEADER_LEN) as u16;
                out[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
                if is_fragment(&out) {
                    // Another Fragment header behind this one (or a broken chain).
                    self.recycle(out);
                    self.counters.fragments += 1;
                    return self.refuse(DropReason::Malformed);
                }
                Outcome::Reassembled(out)
            }
            Parsed::Fragment(f) => {
                self.counters.fragments += 1;
                self.fragment(f)
            }
        }
    }

    /// Counts and reports one refused fragment.
    fn refuse(&mut self, reason: DropReason) -> Outcome<'static> {
        self.counters.fragments_dropped[reason as usize] += 1;
        Outcome::Dropped(reason)
    }

    fn fragment(&mut self, f: Fragment<'_>) -> Outcome<'static> {
        // Checks on the fragment alone: these drop the fragment and nothing else.
        let len = f.data.len() as u32;
        if len == 0 {
            return self.refuse(DropReason::Empty);
        }
        if f.more && !len.is_multiple_of(8) {
            return self.refuse(DropReason::Misaligned);
        }
        let end = f.offset + len;
        if end + f.limit_overhead > MAX_DATAGRAM_LEN {
            return self.refuse(DropReason::TooLong);
        }
        let v6 = matches!(f.family, Family::V6 { .. });
        if f.offset == 0 && !netmux_wire::ip::holds_header_chain(v6, f.upper, f.data) {
            return self.refuse(DropReason::IncompleteFirstFragment);
        }

        let key = self.seed.key(f.key);
        let slots = &self.slots;
        let found = self
            .index
            .find(key.hash(), |&i| slots[i as usize].key == key)
            .copied();
        let i = match found {
            Some(i) => {
                if self.slots[i as usize].state == State::Tombstone {
                    return self.refuse(DropReason::DiscardedDatagram);
                }
                i
            }
            None => match self.create(key) {
                Some(i) => i,
                None => return self.refuse(DropReason::MemoryBudget),
            },
        };
        self.add(i, &f, end)
    }

    /// Adds fragment `f` (already checked alone) to live datagram `i`.
    fn add(&mut self, i: u32, f: &Fragment<'_>, end: u32) -> Outcome<'static> {
        let slot = &self.slots[i as usize];
        let n = usize::from(slot.nfrags);
        let (start, end16) = (f.offset as u16, end as u16);

        // Where the new range goes among the sorted, disjoint ranges.
        let ranges = &slot.ranges[..n];
        let at = ranges.partition_point(|r| r.start < start);
        if let Some(r) = ranges.get(at) {
            if r.start == start && r.end == end16 {
                let base = slot.base as usize;
                let held = &slot.buf[base + usize::from(start)..base + usize::from(end16)];
                if held == f.data && (f.more || slot.total == end) {
                    return self.refuse(DropReason::Duplicate);
                }
                return self.kill(i, DropReason::Overlap, 1);
            }
            if r.start < end16 {
                return self.kill(i, DropReason::Overlap, 1);
            }
        }
        if at > 0 && ranges[at - 1].end > start {
            return self.kill(i, DropReason::Overlap, 1);
        }
        // A fragment that contradicts the datagram's length (checked after overlaps, so that a
        // teardrop is reported as the overlap it is).
        if f.more {
            if slot.total != UNKNOWN_TOTAL && end > slot.total {
                return self.kill(i, DropReason::ConflictingEnd, 1);
            }
        } else if (slot.total != UNKNOWN_TOTAL && slot.total != end) || slot.data_end > end {
            return self.kill(i, DropReason::ConflictingEnd, 1);
        }
        if n == MAX_FRAGMENTS_PER_DATAGRAM {
            return self.kill(i, DropReason::TooManyFragments, 1);
        }

        // The buffer must hold the (possibly new) headers and the data up to the new end.
        let is_first = f.offset == 0;
        let new_base = if is_first {
            f.header.len() as u32
        } else if n == 0 {
            // Until the first fragment arrives, assume its headers are as long as this one's.
            f.header.len() as u32
        } else {
            slot.base
        };
        let new_end = slot.data_end.max(end);
        let needed = (new_base + new_end) as usize;
        if needed > slot.buf.capacity() && !self.grow(i, needed, f.more, f.data.len()) {
            return self.discard_and_refuse(i, DropReason::MemoryBudget);
        }

        let slot = &mut self.slots[i as usize];
        if n == 0 {
            slot.base = new_base;
            slot.buf.clear();
        } else if new_base != slot.base {
            // The first fragment's headers differ in length from the guess: move the data.
            let (old, data) = (slot.base as usize, slot.data_end as usize);
            let nb = new_base as usize;
            if nb > old {
                slot.buf.resize(nb + data, 0);
            }
            slot.buf.copy_within(old..old + data, nb);
            slot.buf.truncate(nb + data);
            slot.base = new_base;
        }
        let base = slot.base as usize;
        let buf = &mut slot.buf;
        if is_first {
            if buf.is_empty() {
                buf.extend_from_slice(f.header);
            } else {
                buf[..base].copy_from_slice(f.header);
            }
            if let Family::V6 {
                next_header_at,
                next_header,
            } = f.family
            {
                buf[usize::from(next_header_at)] = next_header;
            }
            slot.first = Some(FirstHeader {
                l3: f.l3,
                family: f.family,
                limit_overhead: f.limit_overhead,
            });
        }
        // The buffer holds `base + data_end` bytes. Data in order is appended without zeroing
        // first; only a gap before an early fragment is zero-filled (and overwritten later).
        let data_at = base + f.offset as usize;
        if buf.len() <= data_at {
            buf.resize(data_at, 0);
            buf.extend_from_slice(f.data);
        } else {
            // Into a gap: no overlap means it ends at or before the data already there.
            buf[data_at..data_at + f.data.len()].copy_from_slice(f.data);
        }
        // Insert the range at `at`: at most 63 moves of 4 bytes.
        slot.ranges.copy_within(at..n, at + 1);
        slot.ranges[at] = Range { start, end: end16 };
        slot.nfrags += 1;
        slot.received += end - f.offset;
        slot.data_end = new_end;
        if !f.more {
            slot.total = end;
        }
        self.held_fragments += 1;

        if slot.total != UNKNOWN_TOTAL && slot.received == slot.total {
            self.finish(i)
        } else {
            Outcome::Held
        }
    }

    /// Completes datagram `i`: all `total` bytes are present without overlap.
    fn finish(&mut self, i: u32) -> Outcome<'static> {
        let slot = &mut self.slots[i as usize];
        // Ranges cover [0, total) without overlap, so the offset-0 fragment is there.
        let Some(first) = slot.first else {
            return self.kill(i, DropReason::Malformed, 0);
        };
        if slot.total + first.limit_overhead > MAX_DATAGRAM_LEN {
            return self.kill(i, DropReason::TooLong, 0);
        }
        let mut buf = std::mem::take(&mut slot.buf);
        buf.truncate((slot.base + slot.total) as usize);
        let l3 = usize::from(first.l3);
        let header_len = slot.base as usize - l3;
        match first.family {
            Family::V4 { ihl } => {
                let ihl = usize::from(ihl);
                let total_len = (header_len as u32 + slot.total) as u16;
                let ip = &mut buf[l3..l3 + ihl];
                let word = |ip: &[u8], at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
                let (old_len, old_flags, old_sum) = (word(ip, 2), word(ip, 6), word(ip, 10));
                // Keep the reserved and DF bits; clear MF and the offset.
                let flags = old_flags & 0xc000;
                // The first fragment's checksum was verified on arrival, so it can be updated
                // for the two changed words (RFC 1624) instead of summed again; summing again
                // would also read back bytes just stored, which stalls store forwarding.
                let sum = checksum_update(
                    checksum_update(old_sum, old_len, total_len),
                    old_flags,
                    flags,
                );
                ip[2..4].copy_from_slice(&total_len.to_be_bytes());
                ip[6..8].copy_from_slice(&flags.to_be_bytes());
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            Family::V6 { .. } => {
                let payload_len =
                    (header_len - parse::IPV6_HEADER_LEN + slot.total as usize) as u16;
                buf[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
                if is_fragment(&buf) {
                    // A second Fragment header inside the reassembled chain: no sender does
                    // that, and the classifier must never see a fragment.
                    self.recycle(buf);
                    return self.kill(i, DropReason::Malformed, 0);
                }
            }
        }
        let slot = &mut self.slots[i as usize];
        let nfrags = u64::from(slot.nfrags);
        self.counters.datagrams_reassembled += 1;
        self.counters.fragments_reassembled += nfrags;
        self.held_fragments -= nfrags;
        slot.nfrags = 0;
        self.free(i);
        Outcome::Reassembled(buf)
    }

    /// Discards live datagram `i` for `reason`, with its fragments and `pending` more (the
    /// fragment being added, if it is not queued yet), leaving a tombstone that catches its
    /// later fragments until its timeout.
    fn kill(&mut self, i: u32, reason: DropReason, pending: u64) -> Outcome<'static> {
        let slot = &mut self.slots[i as usize];
        let nfrags = u64::from(slot.nfrags);
        self.counters.datagrams_dropped[reason as usize] += 1;
        self.counters.fragments_dropped[reason as usize] += nfrags + pending;
        self.held_fragments -= nfrags;
        slot.nfrags = 0;
        slot.state = State::Tombstone;
        slot.first = None;
        let buf = std::mem::take(&mut slot.buf);
        let freed = slot.charge - SLOT_OVERHEAD;
        slot.charge = SLOT_OVERHEAD;
        let source = slot.source as usize;
        self.sources[source].bytes -= freed;
        self.memory -= freed;
        self.tombstones += 1;
        self.recycle(buf);
        Outcome::Dropped(reason)
    }

    /// Discards datagram `i` (and the fragment that could not be added) for `reason`.
    fn discard_and_refuse(&mut self, i: u32, reason: DropReason) -> Outcome<'static> {
        self.discard(i, reason);
        self.refuse(reason)
    }

    /// Discards datagram or tombstone `i` entirely (timeout, memory budget).
    fn discard(&mut self, i: u32, reason: DropReason) {
        let slot = &mut self.slots[i as usize];
        if slot.state == State::Live {
            let nfrags = u64::from(slot.nfrags);
            self.counters.datagrams_dropped[reason as usize] += 1;
            self.counters.fragments_dropped[reason as usize] += nfrags;
            self.held_fragments -= nfrags;
            slot.nfrags = 0;
        }
        let buf = std::mem::take(&mut slot.buf);
        self.free(i);
        self.recycle(buf);
    }

    /// A new live slot for `key`, charged [`SLOT_OVERHEAD`], or `None` if its source or the
    /// whole budget cannot make room.
    fn create(&mut self, key: Key) -> Option<u32> {
        let s = match self.recent_source {
            // A sender fragments its datagrams one after another: the source of the last
            // datagram created is the likeliest, and is checked without hashing.
            r if r != NIL && self.sources[r as usize].key.is_source_of(&key) => r,
            _ => {
                let s = self.find_or_add_source(&key);
                self.recent_source = s;
                s
            }
        };
        // Count the new datagram before making room, so that evicting the source's last
        // datagram does not release the entry in use.
        self.sources[s as usize].datagrams += 1;
        if !self.make_room(s, NIL, SLOT_OVERHEAD) {
            self.sources[s as usize].datagrams -= 1;
            if self.sources[s as usize].datagrams == 0 {
                self.release_source(s);
            }
            return None;
        }
        let i = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::empty());
                (self.slots.len() - 1) as u32
            }
        };
        let now = self.now_ns;
        let (old_newest, src_newest) = (self.newest, self.sources[s as usize].newest);
        let slot = &mut self.slots[i as usize];
        slot.key = key;
        slot.state = State::Live;
        slot.created_ns = now;
        slot.prev = old_newest;
        slot.next = NIL;
        slot.src_prev = src_newest;
        slot.src_next = NIL;
        slot.source = s;
        slot.charge = SLOT_OVERHEAD;
        slot.base = 0;
        slot.data_end = 0;
        slot.total = UNKNOWN_TOTAL;
        slot.received = 0;
        slot.first = None;
        slot.nfrags = 0;
        slot.buf.clear();
        if old_newest == NIL {
            self.oldest = i;
        } else {
            self.slots[old_newest as usize].next = i;
        }
        self.newest = i;
        if src_newest == NIL {
            self.sources[s as usize].oldest = i;
        } else {
            self.slots[src_newest as usize].src_next = i;
        }
        let source = &mut self.sources[s as usize];
        source.newest = i;
        source.bytes += SLOT_OVERHEAD;
        self.memory += SLOT_OVERHEAD;
        let slots = &self.slots;
        self.index
            .insert_unique(key.hash(), i, |&j| slots[j as usize].key.hash());
        Some(i)
    }

    /// The budget entry of `key`'s source, added if it has none.
    fn find_or_add_source(&mut self, key: &Key) -> u32 {
        let skey = self.seed.source(key);
        let sources = &self.sources;
        let found = self
            .source_index
            .find(skey.hash(), |&s| sources[s as usize].key == skey)
            .copied();
        match found {
            Some(s) => s,
            None => {
                let source = Source {
                    key: skey,
                    bytes: 0,
                    datagrams: 0,
                    oldest: NIL,
                    newest: NIL,
                };
                let s = match self.free_sources.pop() {
                    Some(s) => {
                        self.sources[s as usize] = source;
                        s
                    }
                    None => {
                        self.sources.push(source);
                        (self.sources.len() - 1) as u32
                    }
                };
                let sources = &self.sources;
                self.source_index
                    .insert_unique(skey.hash(), s, |&t| sources[t as usize].key.hash());
                s
            }
        }
    }

    /// Gives datagram `i` a buffer of at least `needed` bytes, evicting older datagrams to stay
    /// within the budgets. `false` if it cannot fit even alone.
    /// `hint` is this fragment's length: a first buffer leaves room for one more like it.
    fn grow(&mut self, i: u32, needed: usize, more: bool, hint: usize) -> bool {
        let old_cap = self.slots[i as usize].buf.capacity();
        let mut buf = if old_cap == 0 {
            self.spare_buffer()
        } else {
            std::mem::take(&mut self.slots[i as usize].buf)
        };
        let slot = &self.slots[i as usize];
        let limit = needed.max(slot.base as usize + MAX_DATAGRAM_LEN as usize);
        let target = if buf.capacity() >= needed {
            buf.capacity()
        } else if old_cap == 0 {
            // Room for one more fragment like this one, unless this is the last.
            if more {
                (needed + hint).min(limit)
            } else {
                needed
            }
        } else {
            needed.max(old_cap.saturating_mul(2)).min(limit)
        };
        let source = slot.source;
        if target > old_cap && !self.make_room(source, i, target - old_cap) {
            if old_cap == 0 {
                self.recycle(buf);
            } else {
                self.slots[i as usize].buf = buf;
            }
            return false;
        }
        if buf.capacity() < target {
            let len = buf.len();
            buf.reserve_exact(target - len);
        }
        let slot = &mut self.slots[i as usize];
        slot.buf = buf;
        let new_charge = SLOT_OVERHEAD + slot.buf.capacity();
        let delta = new_charge - slot.charge;
        slot.charge = new_charge;
        self.sources[source as usize].bytes += delta;
        self.memory += delta;
        true
    }

    /// Evicts the oldest datagrams, never `keep`, until `extra` more bytes fit in source `s`'s
    /// budget and the overall budget. `false` if they cannot.
    fn make_room(&mut self, s: u32, keep: u32, extra: usize) -> bool {
        if extra > self.config.source_budget || extra > self.config.memory_budget {
            return false;
        }
        while self.sources[s as usize].bytes + extra > self.config.source_budget {
            let mut victim = self.sources[s as usize].oldest;
            if victim != NIL && victim == keep {
                victim = self.slots[victim as usize].src_next;
            }
            if victim == NIL {
                return false;
            }
            self.discard(victim, DropReason::MemoryBudget);
        }
        while self.memory + self.pool_bytes + extra > self.config.memory_budget {
            if let Some(spare) = self.pool.pop() {
                self.pool_bytes -= spare.capacity();
                continue;
            }
            let mut victim = self.oldest;
            if victim != NIL && victim == keep {
                victim = self.slots[victim as usize].next;
            }
            if victim == NIL {
                return false;
            }
            self.discard(victim, DropReason::MemoryBudget);
        }
        true
    }

    /// Unlinks slot `i` from every list and index and returns its memory; the buffer must have
    /// been taken already.
    fn free(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        if slot.state == State::Tombstone {
            self.tombstones -= 1;
        }
        slot.state = State::Free;
        let (prev, next, src_prev, src_next, s, charge, key) = (
            slot.prev,
            slot.next,
            slot.src_prev,
            slot.src_next,
            slot.source,
            slot.charge,
            slot.key,
        );
        slot.charge = 0;
        if prev == NIL {
            self.oldest = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.newest = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let source = &mut self.sources[s as usize];
        if src_prev == NIL {
            source.oldest = src_next;
        } else {
            self.slots[src_prev as usize].src_next = src_next;
        }
        let source = &mut self.sources[s as usize];
        if src_next == NIL {
            source.newest = src_prev;
        } else {
            self.slots[src_next as usize].src_prev = src_prev;
        }
        let source = &mut self.sources[s as usize];
        source.bytes -= charge;
        source.datagrams -= 1;
        self.memory -= charge;
        if source.datagrams == 0 {
            self.release_source(s);
        }
        if let Ok(entry) = self.index.find_entry(key.hash(), |&j| j == i) {
            entry.remove();
        }
        self.free_slots.push(i);
    }

    fn release_source(&mut self, s: u32) {
        if self.recent_source == s {
            self.recent_source = NIL;
        }
        let hash = self.sources[s as usize].key.hash();
        if let Ok(entry) = self.source_index.find_entry(hash, |&t| t == s) {
            entry.remove();
        }
        self.free_sources.push(s);
    }
}

/// The IPv4 header checksum `sum` updated for one 16-bit word changed from `old` to `new`:
/// RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, which never produces the -0 of equation 2.
#[inline]
fn checksum_update(sum: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(new);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header_verifies() {
        // The classic example header from RFC 1071 discussions (checksum field zeroed).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let sum = netmux_wire::checksum::of(&h);
        assert_eq!(sum, 0xb861);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(netmux_wire::checksum::of(&h), 0);
    }

    #[test]
    fn incremental_checksum_update_matches_summing_again() {
        let mut h = [
            0x45, 0x00, 0x05, 0xdc, 0x12, 0x34, 0x20, 0x00, 0x40, 0x11, 0x00, 0x00, 0x0a, 0x00,
            0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
        ];
        let sum = netmux_wire::checksum::of(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        for (len, flags) in [(0x0bb8u16, 0x0000u16), (0xffff, 0x4000), (20, 0x8000)] {
            let updated = checksum_update(checksum_update(sum, 0x05dc, len), 0x2000, flags);
            let mut g = h;
            g[2..4].copy_from_slice(&len.to_be_bytes());
            g[6..8].copy_from_slice(&flags.to_be_bytes());
            g[10] = 0;
            g[11] = 0;
            assert_eq!(
                updated,
                netmux_wire::checksum::of(&g),
                "{len:#x} {flags:#x}"
            );
        }
    }

    #[test]
    fn slot_overhead_is_what_a_slot_costs() {
        assert!(SLOT_OVERHEAD >= std::mem::size_of::<Slot>());
    }
}
