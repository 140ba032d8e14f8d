//! The driver's end of a queue: creates the sealed ring memory, writes received frames into the
//! rx ring, copies tx frames out into private memory, posts completions, and fails closed.
//!
//! Nothing here trusts the client: indices are private and only stored, the client's indices
//! and slot headers are validated on every read (see [`super::slots`]), and a fault on this
//! queue is reported to the caller and counted, never a panic, and never an access outside
//! this queue's memory.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::layout::{self, Layout};
use super::protocol::{Consumer, IndexOutOfRange, Producer};
use super::slots::{self, FrameRead};
use super::MAX_FRAME_LEN;
use super::{Completion, FrameBatch, QueueConfig, RingConfigError, RingCounters, TxStatus};
use crate::sys::{self, Doorbell, OutOfBounds, SharedMapping};

/// What became of a frame offered to [`DriverQueue::push_rx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into the rx ring (visible to the client after the next flush).
    Queued,
    /// Dropped: the rx ring was full.
    DroppedFull,
    /// Dropped: longer than [`MAX_FRAME_LEN`].
    DroppedTooLarge,
    /// Dropped: the queue is closed.
    DroppedClosed,
    /// Dropped: the client's side of the ring holds an impossible index.
    DroppedFault,
}

/// A fault on one queue's ring, caused by its client (or by a layout bug).
#[derive(Debug, thiserror::Error)]
pub enum RingFault {
    /// The client wrote an impossible index.
    #[error("client index fault: {0}")]
    Index(#[from] IndexOutOfRange),
    /// An offset fell outside the ring memory (a layout bug; reported, never followed).
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
    /// A completion was posted for a frame that was never taken.
    #[error("completion posted with no tx frame outstanding")]
    NothingOutstanding,
}

/// Failure to create a queue's rings.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The requested geometry is out of bounds.
    #[error(transparent)]
    Config(#[from] RingConfigError),
    /// A system call failed (memfd, seals, mmap, doorbell).
    #[error("creating ring memory: {0}")]
    Io(#[from] io::Error),
    /// Writing the header failed (a layout bug).
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
}

/// The descriptors a client needs, to be passed with `SCM_RIGHTS` and then dropped.
#[derive(Debug)]
pub struct QueueFds {
    /// The sealed ring memory.
    pub memfd: OwnedFd,
    /// The client's end of the queue's doorbell ([`Doorbell`]): the driver rings it (rx
    /// frames, completions, tx room, closed) and the client rings the driver through it (tx
    /// frames).
    pub doorbell: OwnedFd,
}

/// The driver's end of one client queue.
///
/// Until [`hand_out`](Self::hand_out) it holds the client's descriptors too; afterwards only
/// its mapping and its end of the doorbell: one descriptor per queue.
#[derive(Debug)]
pub struct DriverQueue {
    map: SharedMapping,
    /// The ring memory and the client's end of the doorbell, until handed out.
    client: Option<QueueFds>,
    doorbell: Doorbell,
    layout: Layout,
    rx: Producer,
    /// Rx slots written past `rx.tail()` but not yet published.
    rx_pending: u32,
    /// Free rx slots known to exist past the pending ones (a lower bound: the client only ever
    /// frees more), so most pushes need no load of the client's index.
    rx_room: u32,
    /// Rx slots the driver leaves empty ([`set_rx_limit`](Self::set_rx_limit)): the ring's
    /// slots beyond the limit.
    rx_reserved: u32,
    tx: Consumer,
    completion: Producer,
    completion_pending: u32,
    /// Frames handed out by `take_tx` and not completed yet; each has a completion slot
    /// reserved.
    completions_owed: u32,
    /// Whether tx frames are waiting for completion room (a flow-control event is counted
    /// once, when it begins, however often the driver looks meanwhile).
    tx_held: bool,
    tx_seq: u64,
    counters: RingCounters,
    /// The counters as last written into the header: they are written again only when they
    /// changed, not on every flush (eleven stores into memory the client shares).
    mirrored: RingCounters,
    closed: bool,
    wake_client: bool,
    /// Slot cursor of [`baseline_copy`](Self::baseline_copy) (benchmarks only).
    rx_baseline: u32,
}

impl DriverQueue {
    /// Creates the ring memory (a sealed memfd) and the doorbell (both ends) for a new queue.
    pub fn create(config: &QueueConfig) -> Result<Self, CreateError> {
        let layout = super::layout_of(config)?;
        let memfd = sys::create_sealed_memfd("netmux-queue", layout.total_len)?;
        let len = usize::try_from(layout.total_len)
            .map_err(|_| CreateError::Config(RingConfigError::TooLarge(layout.total_len)))?;
        let map = SharedMapping::map(memfd.as_fd(), len)?;
        map.u64_at(layout::OFF_MAGIC)?
            .store(layout::MAGIC, Ordering::Relaxed);
        map.u32_at(layout::OFF_VERSION)?
            .store(layout::VERSION, Ordering::Relaxed);
        map.u32_at(layout::OFF_SLOT_SIZE)?
            .store(layout.slot_size, Ordering::Relaxed);
        map.u32_at(layout::OFF_RX_SLOTS)?
            .store(layout.rx.count, Ordering::Relaxed);
        map.u32_at(layout::OFF_TX_SLOTS)?
            .store(layout.tx.count, Ordering::Relaxed);
        map.u32_at(layout::OFF_COMPLETION_SLOTS)?
            .store(layout.completion.count, Ordering::Relaxed);
        map.u64_at(layout::OFF_TOTAL_LEN)?
            .store(layout.total_len, Ordering::Release);
        let (doorbell, client_doorbell) = Doorbell::pair()?;
        Ok(Self {
            map,
            client: Some(QueueFds {
                memfd,
                doorbell: client_doorbell.into(),
            }),
            doorbell,
            rx: Producer::new(0, layout.rx.count),
            rx_pending: 0,
            rx_room: 0,
            rx_reserved: 0,
            tx: Consumer::new(0, layout.tx.count),
            completion: Producer::new(0, layout.completion.count),
            completion_pending: 0,
            completions_owed: 0,
            tx_held: false,
            tx_seq: 0,
            counters: RingCounters::default(),
            mirrored: RingCounters::default(),
            closed: false,
            wake_client: false,
            rx_baseline: 0,
            layout,
        })
    }

    /// Lets at most `slots` rx slots hold frames the client has not read (illumos vnd's
    /// `rxbuf`); a frame that would need more is dropped as if the ring were full (counted in
    /// `rx_dropped_full`). `None`, or a limit at or above the ring's size, is the whole ring.
    pub fn set_rx_limit(&mut self, slots: Option<u32>) {
        let count = self.layout.rx.count;
        self.rx_reserved = count - slots.unwrap_or(count).min(count);
        // Looked at again on the next push.
        self.rx_room = 0;
    }

    /// The rx slots frames may hold, when limited ([`set_rx_limit`](Self::set_rx_limit));
    /// `None` for the whole ring.
    pub fn rx_limit(&self) -> Option<u32> {
        (self.rx_reserved > 0).then(|| self.layout.rx.count - self.rx_reserved)
    }

    /// Lets the client fill at most `slots` tx slots (illumos vnd's `txbuf`): written into the
    /// header, where the client reads it before every write and refuses (or waits with) a batch
    /// that would go beyond it. `None`, or a limit at or above the ring's size, is the whole
    /// ring; the least limit is one slot.
    pub fn set_tx_limit(&mut self, slots: Option<u32>) {
        let count = self.layout.tx.count;
        let limit = match slots {
            Some(s) if s < count => s.max(1),
            _ => 0,
        };
        if let Ok(word) = self.map.u32_at(layout::OFF_TX_LIMIT) {
            word.store(limit, Ordering::Release);
        }
        // A client waiting for room looks again under the new limit.
        let _ = self.doorbell.ring();
    }

    /// The tx slots the client may fill, when limited ([`set_tx_limit`](Self::set_tx_limit));
    /// `None` for the whole ring.
    pub fn tx_limit(&self) -> Option<u32> {
        self.map
            .u32_at(layout::OFF_TX_LIMIT)
            .ok()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|&l| l > 0)
    }

    /// Hands the client's descriptors over ([`super::ClientQueue::from_fds`]) and keeps no
    /// copy: the driver's mapping stays valid without the memfd, and the client's end of the
    /// doorbell is the client's alone (when its last holder closes it, the driver's end
    /// reports a hang-up). `None` when already handed out.
    pub fn hand_out(&mut self) -> Option<QueueFds> {
        self.client.take()
    }

    /// Duplicates of the descriptors the client needs, keeping the originals (tests and
    /// benchmarks that look at the memory through the memfd). Fails once handed out.
    pub fn client_fds(&self) -> io::Result<QueueFds> {
        let fds = self.client.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the queue's descriptors were handed out",
            )
        })?;
        Ok(QueueFds {
            memfd: fds.memfd.try_clone()?,
            doorbell: fds.doorbell.try_clone()?,
        })
    }

    /// The ring memory until [`hand_out`](Self::hand_out) (for tests and diagnostics: e.g.
    /// to check what the driver wrote).
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        self.client.as_ref().map(|fds| fds.memfd.as_fd())
    }

    /// The driver's end of the doorbell: readable when the client has sent frames and the
    /// driver asked to be woken ([`prepare_tx_wait`](Self::prepare_tx_wait)), or when the
    /// client's end is closed for good (epoll reports a hang-up); register it with epoll.
    pub fn driver_wake_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    /// The geometry of this queue's rings.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The driver's private counters (the header holds a copy as of the last flush).
    pub fn counters(&self) -> RingCounters {
        self.counters
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes one received frame, gathered from `vectors`, into the rx ring without publishing
    /// it; [`flush`](Self::flush) publishes every queued frame at once. A full ring drops the
    /// frame for this queue only and counts it.
    pub fn push_rx(&mut self, vectors: &[&[u8]]) -> RxOutcome {
        if self.closed {
            self.counters.rx_dropped_unusable += 1;
            return RxOutcome::DroppedClosed;
        }
        let len: usize = vectors.iter().map(|v| v.len()).sum();
        if len > MAX_FRAME_LEN {
            self.counters.rx_dropped_too_large += 1;
            return RxOutcome::DroppedTooLarge;
        }
        let needed = self.layout.slots_for(len);
        if self.rx_room < needed {
            match slots::words(&self.map, &self.layout.rx)
                .map_err(RingFault::from)
                .and_then(|w| Ok(self.rx.free(&w)?))
            {
                Ok(free) => {
                    self.rx_room = free
                        .saturating_sub(self.rx_pending)
                        .saturating_sub(self.rx_reserved)
                }
                Err(_) => {
                    self.counters.index_faults += 1;
                    self.counters.rx_dropped_unusable += 1;
                    return RxOutcome::DroppedFault;
                }
            }
            if self.rx_room < needed {
                self.counters.rx_dropped_full += 1;
                return RxOutcome::DroppedFull;
            }
        }
        let start = self.rx.tail().wrapping_add(self.rx_pending);
        match slots::write_frame(
            &self.map,
            &self.layout,
            &self.layout.rx,
            start,
            vectors,
            len,
        ) {
            Ok(used) => {
                self.rx_pending += used;
                self.rx_room -= used;
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += len as u64;
                RxOutcome::Queued
            }
            Err(_) => {
                self.counters.rx_dropped_unusable += 1;
                RxOutcome::DroppedFault
            }
        }
    }

    /// Benchmark baseline only: copies `frame` (up to one slot's payload) into the payload area
    /// of the rx slot after the last queued one, with no slot header, no index update and no
    /// wake-up, so the client never sees it. This is the floor the real path is measured
    /// against: the same bytes into the same shared memory, and nothing else.
    #[doc(hidden)]
    pub fn baseline_copy(&mut self, frame: &[u8]) {
        let payload = self.layout.payload_per_slot();
        let slot = self.layout.rx.slot(
            self.rx
                .tail()
                .wrapping_add(self.rx_pending)
                .wrapping_add(self.rx_baseline),
        );
        self.rx_baseline = self.rx_baseline.wrapping_add(1);
        let len = frame.len().min(payload);
        let _ = self
            .map
            .copy_in(slot + layout::SLOT_HEADER_LEN, &frame[..len]);
    }

    /// Writes many frames (each a list of vectors) and flushes once. Returns how many were
    /// queued; the rest were dropped and counted.
    pub fn deliver(&mut self, frames: &[&[&[u8]]]) -> usize {
        let queued = frames
            .iter()
            .filter(|frame| self.push_rx(frame) == RxOutcome::Queued)
            .count();
        self.flush();
        queued
    }

    /// Publishes every queued rx frame and completion (one index store per ring), signals the
    /// client if it asked for a wake-up, and mirrors the counters into the header if they
    /// changed. With nothing to publish it touches no shared memory.
    pub fn flush(&mut self) {
        if self.rx_pending > 0 {
            if let Ok(words) = slots::words(&self.map, &self.layout.rx) {
                self.rx.publish(&words, self.rx_pending);
                self.rx_pending = 0;
                self.wake_client |= self.rx.consumer_wants_wake(&words);
            }
        }
        if self.completion_pending > 0 {
            if let Ok(words) = slots::words(&self.map, &self.layout.completion) {
                self.completion.publish(&words, self.completion_pending);
                self.completion_pending = 0;
                self.wake_client |= self.completion.consumer_wants_wake(&words);
            }
        }
        if self.counters != self.mirrored {
            self.mirror_counters();
            self.mirrored = self.counters;
        }
        if std::mem::take(&mut self.wake_client) {
            // The only failure is a closed or broken descriptor; the client then polls.
            let _ = self.doorbell.ring();
        }
    }

    fn mirror_counters(&self) {
        for (i, value) in self.counters.to_words().into_iter().enumerate() {
            if let Ok(word) = self.map.u64_at(layout::OFF_COUNTERS + 8 * i) {
                word.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Copies up to `max_frames` tx frames out of the client's ring into `batch` (appended, in
    /// driver-private memory, tagged with their sequence numbers) and hands their slots back.
    ///
    /// Each frame taken must later get exactly one [`complete`](Self::complete); a frame is
    /// taken only when a completion slot is free for it, so a client that does not read its
    /// completions stalls only itself (counted as `tx_flow_control`). Malformed frames are not
    /// returned: they are completed at once with [`TxStatus::RejectedMalformed`].
    pub fn take_tx(
        &mut self,
        batch: &mut FrameBatch,
        max_frames: usize,
    ) -> Result<usize, RingFault> {
        if self.closed {
            return Ok(0);
        }
        let tx_words = slots::words(&self.map, &self.layout.tx)?;
        let completion_words = slots::words(&self.map, &self.layout.completion)?;
        let available = self.tx.available(&tx_words).inspect_err(|_| {
            self.counters.index_faults += 1;
        })?;
        if available == 0 {
            // The common case of a polling driver: one load of the client's index, no more.
            return Ok(0);
        }
        let completion_free = self.completion.free(&completion_words).inspect_err(|_| {
            self.counters.index_faults += 1;
        })?;
        let mut room = completion_free
            .saturating_sub(self.completion_pending)
            .saturating_sub(self.completions_owed);
        let mut consumed = 0u32;
        let mut taken = 0usize;
        while taken < max_frames && consumed < available {
            if room == 0 {
                if !self.tx_held {
                    self.counters.tx_flow_control += 1;
                    self.tx_held = true;
                }
                break;
            }
            self.tx_held = false;
            let start = self.tx.head().wrapping_add(consumed);
            let seq = self.tx_seq;
            let map = &self.map;
            let layout = &self.layout;
            // The frame is kept only if the slots form a well-formed frame.
            let read = batch.push_with(seq, |buffer| {
                match slots::read_frame(
                    map,
                    layout,
                    &layout.tx,
                    start,
                    available - consumed,
                    |offset, len| {
                        let from = buffer.len();
                        buffer.resize(from + len, 0);
                        map.copy_out(offset, &mut buffer[from..])
                    },
                ) {
                    Ok(FrameRead::Frame { slots, len }) => Ok((slots, len)),
                    Ok(FrameRead::Malformed { slots }) => Err(Ok(slots)),
                    Err(e) => Err(Err(e)),
                }
            });
            self.tx_seq += 1;
            room -= 1;
            match read {
                Ok((slots, len)) => {
                    consumed += slots;
                    taken += 1;
                    self.completions_owed += 1;
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += len as u64;
                }
                Err(Ok(slots)) => {
                    consumed += slots;
                    self.counters.tx_malformed += 1;
                    self.counters.tx_rejected += 1;
                    let completion = Completion {
                        seq,
                        status: TxStatus::RejectedMalformed,
                        len: 0,
                    };
                    let index = self.completion.tail().wrapping_add(self.completion_pending);
                    slots::write_completion(
                        &self.map,
                        &self.layout.completion,
                        index,
                        &completion,
                    )?;
                    self.completion_pending += 1;
                }
                Err(Err(e)) => return Err(e.into()),
            }
        }
        if consumed > 0 {
            self.tx.release(&tx_words, consumed);
            self.wake_client |= self.tx.producer_wants_wake(&tx_words);
        }
        Ok(taken)
    }

    fn push_completion(&mut self, completion: &Completion) -> Result<(), RingFault> {
        let index = self.completion.tail().wrapping_add(self.completion_pending);
        slots::write_completion(&self.map, &self.layout.completion, index, completion)?;
        self.completion_pending += 1;
        Ok(())
    }

    /// Records the outcome of a frame returned by [`take_tx`](Self::take_tx) (`seq` is its
    /// tag, `len` the length the driver checked). Published by the next [`flush`](Self::flush).
    pub fn complete(&mut self, seq: u64, status: TxStatus, len: u32) -> Result<(), RingFault> {
        if self.completions_owed == 0 {
            return Err(RingFault::NothingOutstanding);
        }
        self.push_completion(&Completion { seq, status, len })?;
        self.completions_owed -= 1;
        if !status.is_sent() {
            self.counters.tx_rejected += 1;
        }
        Ok(())
    }

    /// Before sleeping on [`driver_wake_fd`](Self::driver_wake_fd): asks the client to signal
    /// when it sends, and re-checks. `Ok(true)`: the tx ring is still empty, sleep; `Ok(false)`:
    /// frames arrived meanwhile, take them instead.
    pub fn prepare_tx_wait(&mut self) -> Result<bool, RingFault> {
        let words = slots::words(&self.map, &self.layout.tx)?;
        self.tx.prepare_wait(&words).map_err(|e| {
            self.counters.index_faults += 1;
            RingFault::from(e)
        })
    }

    /// After waking (or giving up sleeping): withdraws the wake-up request and takes the
    /// doorbell's pending wake-ups. Returns whether the client had rung.
    pub fn end_tx_wait(&mut self) -> bool {
        if let Ok(words) = slots::words(&self.map, &self.layout.tx) {
            Consumer::end_wait(&words);
        }
        // A closed client end is the caller's to notice (epoll's hang-up), not an error here.
        self.doorbell.drain().unwrap_or(false)
    }

    /// Fails the queue closed: no more frames are delivered or taken, the header's `closed`
    /// flag is set, and the client is woken to see it. Queued rx frames and completions are
    /// published first. Idempotent.
    pub fn close(&mut self) {
        self.flush();
        self.closed = true;
        if let Ok(flag) = self.map.u32_at(layout::OFF_CLOSED) {
            flag.store(1, Ordering::Release);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let _ = self.doorbell.ring();
    }
}
