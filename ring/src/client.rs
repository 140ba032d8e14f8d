//! The client's end of a queue: attach to the descriptors the driver created, then send,
//! receive and collect completions in batches, sleeping on the queue's doorbell when idle.
//!
//! The client trusts the driver but not the bytes it was handed: [`ClientQueue::from_fds`]
//! checks the seals, the file size, the magic, the version and the geometry before it believes
//! any of it, and nothing read from the mapping afterwards can make the client panic.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::layout::{self, Layout};
use super::protocol::{Consumer, IndexOutOfRange, Producer, RingWords};
use super::slots::{self, FrameRead};
use super::{Completion, RingConfigError, RingCounters, MAX_FRAME_LEN};
use crate::sys::{self, Doorbell, OutOfBounds, SharedMapping};

/// Why the descriptors handed to [`ClientQueue::from_fds`] are not a usable queue.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A system call on the descriptors failed.
    #[error("attaching to ring memory: {0}")]
    Io(#[from] io::Error),
    /// The memfd lacks `F_SEAL_SHRINK`/`F_SEAL_GROW`: it could shrink under the mapping.
    #[error("ring memory is not sealed against shrinking and growing")]
    NotSealed,
    /// The file is smaller than a header or larger than any valid ring memory.
    #[error("ring memory of {0} bytes has an impossible size")]
    BadSize(u64),
    /// The header does not start with the netmux ring magic.
    #[error("ring memory has magic {0:#018x}, not a netmux ring")]
    BadMagic(u64),
    /// The header has a layout version this build does not speak.
    #[error("ring layout version {found}, expected {expected}", expected = layout::VERSION)]
    BadVersion {
        /// Version found in the header.
        found: u32,
    },
    /// The geometry in the header is out of bounds.
    #[error("ring header geometry: {0}")]
    Geometry(#[from] RingConfigError),
    /// The header's total length disagrees with its geometry or the file's size.
    #[error("ring header says {header} bytes, geometry needs {layout}, file has {file}")]
    LengthMismatch {
        /// Total length written in the header.
        header: u64,
        /// Length the geometry implies.
        layout: u64,
        /// Size of the file.
        file: u64,
    },
    /// A header field lies outside the mapping (cannot happen after the size check).
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
}

/// A failed operation on an attached queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The driver closed the queue (netd went away, or the queue was destroyed).
    #[error("queue closed by the driver")]
    Closed,
    /// A frame is longer than [`MAX_FRAME_LEN`]; nothing was sent.
    #[error("frame {index} is {len} bytes, more than the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLarge {
        /// Position of the frame in the batch.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The whole batch does not fit in the tx ring (within the queue's `txbuf`) now: nothing
    /// was written. Room opens as the driver takes frames; wait for it with
    /// [`ClientQueue::wait_writable_slots`] or [`ClientQueue::send_wait`], or poll
    /// [`ClientQueue::wake_fd`] after [`ClientQueue::arm`].
    #[error("would block: the batch needs {needed} tx slots and {free} are free")]
    WouldBlock {
        /// Slots the batch needs.
        needed: u32,
        /// Slots free now.
        free: u32,
    },
    /// The batch needs more tx slots than the queue may ever fill (its `txbuf`): nothing was
    /// written, and waiting would not help; send it in smaller batches.
    #[error("the batch needs {needed} tx slots, more than the queue's {capacity} (its txbuf)")]
    BatchTooLarge {
        /// Slots the batch needs.
        needed: u32,
        /// Slots the queue may fill.
        capacity: u32,
    },
    /// The driver's side of the ring holds an impossible index.
    #[error("ring index fault: {0}")]
    Index(#[from] IndexOutOfRange),
    /// An offset fell outside the ring memory.
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
    /// Waiting on or ringing the doorbell failed.
    #[error("doorbell: {0}")]
    Io(#[from] io::Error),
}

/// What [`ClientQueue::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// How many frames were placed in the tx ring: always the whole batch, since a batch is
    /// written whole or not at all.
    pub sent: usize,
    /// Sequence number of the first of them; the others follow consecutively. Completions
    /// carry these numbers.
    pub first_seq: u64,
}

/// The client's end of one queue.
#[derive(Debug)]
pub struct ClientQueue {
    map: SharedMapping,
    doorbell: Doorbell,
    layout: Layout,
    rx: Consumer,
    tx: Producer,
    completion: Consumer,
    tx_seq: u64,
    rx_malformed: u64,
    /// Scratch list of (offset, length) segments of the frame being received.
    segments: Vec<(usize, usize)>,
}

impl ClientQueue {
    /// Attaches to a queue from the descriptors the driver passed (see
    /// [`super::QueueFds`]), validating the memory before trusting it.
    ///
    /// The memfd is closed once mapped: the queue keeps one descriptor, the doorbell.
    pub fn from_fds(memfd: OwnedFd, doorbell: OwnedFd) -> Result<Self, AttachError> {
        if !sys::has_ring_seals(memfd.as_fd())? {
            return Err(AttachError::NotSealed);
        }
        let file = sys::file_size(memfd.as_fd())?;
        if file < layout::HEADER_LEN as u64 || file > layout::MAX_TOTAL_LEN {
            return Err(AttachError::BadSize(file));
        }
        // `file` <= MAX_TOTAL_LEN (1 GiB) fits in usize on every supported target.
        let map = SharedMapping::map(memfd.as_fd(), file as usize)?;
        let magic = map.u64_at(layout::OFF_MAGIC)?.load(Ordering::Acquire);
        if magic != layout::MAGIC {
            return Err(AttachError::BadMagic(magic));
        }
        let version = map.u32_at(layout::OFF_VERSION)?.load(Ordering::Relaxed);
        if version != layout::VERSION {
            return Err(AttachError::BadVersion { found: version });
        }
        let header_len = map.u64_at(layout::OFF_TOTAL_LEN)?.load(Ordering::Acquire);
        let layout = Layout::new(
            map.u32_at(layout::OFF_SLOT_SIZE)?.load(Ordering::Relaxed),
            map.u32_at(layout::OFF_RX_SLOTS)?.load(Ordering::Relaxed),
            map.u32_at(layout::OFF_TX_SLOTS)?.load(Ordering::Relaxed),
            map.u32_at(layout::OFF_COMPLETION_SLOTS)?
                .load(Ordering::Relaxed),
        )?;
        if header_len != layout.total_len || layout.total_len > file {
            return Err(AttachError::LengthMismatch {
                header: header_len,
                layout: layout.total_len,
                file,
            });
        }
        let rx_words = slots::words(&map, &layout.rx)?;
        let tx_words = slots::words(&map, &layout.tx)?;
        let completion_words = slots::words(&map, &layout.completion)?;
        // Pick up where the rings stand (frames may have arrived before we attached).
        let rx = Consumer::new(
            rx_words.consumer_index.load(Ordering::Relaxed),
            layout.rx.count,
        );
        let tx = Producer::new(
            tx_words.producer_index.load(Ordering::Relaxed),
            layout.tx.count,
        );
        let completion = Consumer::new(
            completion_words.consumer_index.load(Ordering::Relaxed),
            layout.completion.count,
        );
        Ok(Self {
            doorbell: Doorbell::from_fd(doorbell)?,
            map,
            layout,
            rx,
            tx,
            completion,
            tx_seq: 0,
            rx_malformed: 0,
            segments: Vec::new(),
        })
    }

    /// The geometry of the rings.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the driver has closed the queue.
    pub fn is_closed(&self) -> bool {
        self.map
            .u32_at(layout::OFF_CLOSED)
            .map(|flag| flag.load(Ordering::Acquire) != 0)
            .unwrap_or(true)
    }

    fn check_open(&self) -> Result<(), QueueError> {
        if self.is_closed() {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }

    /// The driver's counters for this queue, as of its last flush.
    pub fn counters(&self) -> RingCounters {
        let mut words = [0u64; RingCounters::COUNT];
        for (i, word) in words.iter_mut().enumerate() {
            if let Ok(w) = self.map.u64_at(layout::OFF_COUNTERS + 8 * i) {
                *word = w.load(Ordering::Relaxed);
            }
        }
        RingCounters::from_words(words)
    }

    /// Frames the driver wrote that did not parse (a driver bug); they were skipped.
    pub fn rx_malformed(&self) -> u64 {
        self.rx_malformed
    }

    /// The tx slots the client may fill: the queue's `txbuf` as the driver set it
    /// ([`super::DriverQueue::set_tx_limit`]), or the whole ring.
    pub fn tx_capacity(&self) -> u32 {
        let count = self.layout.tx.count;
        match self.map.u32_at(layout::OFF_TX_LIMIT) {
            Ok(word) => match word.load(Ordering::Acquire) {
                0 => count,
                limit => limit.min(count),
            },
            Err(_) => count,
        }
    }

    /// The tx slots a batch of `frames` needs.
    pub fn slots_needed(&self, frames: &[&[&[u8]]]) -> Result<u32, QueueError> {
        let mut needed = 0u32;
        for (index, frame) in frames.iter().enumerate() {
            let len = frame.iter().map(|v| v.len()).sum::<usize>();
            if len > MAX_FRAME_LEN {
                return Err(QueueError::FrameTooLarge { index, len });
            }
            needed = needed.saturating_add(self.layout.slots_for(len));
        }
        Ok(needed)
    }

    /// Free tx slots within the queue's `txbuf`.
    fn tx_free(
        &self,
        words: &RingWords<'_, std::sync::atomic::AtomicU32>,
    ) -> Result<u32, QueueError> {
        let reserved = self.layout.tx.count - self.tx_capacity();
        Ok(self.tx.free(words)?.saturating_sub(reserved))
    }

    /// Whether a frame of `len` bytes would be taken now (room in the tx ring, within the
    /// queue's `txbuf`), as a stack asks before it builds a frame.
    pub fn can_send(&self, len: usize) -> bool {
        let needed = self.layout.slots_for(len.min(MAX_FRAME_LEN));
        slots::words(&self.map, &self.layout.tx)
            .ok()
            .and_then(|words| self.tx_free(&words).ok())
            .is_some_and(|free| free >= needed)
    }

    /// Sends `frames` in order, each gathered from its vectors, with one index update and at
    /// most one wake-up: the whole batch or nothing, as illumos vnd's framed writes.
    ///
    /// When the tx ring, within the queue's `txbuf`, has no room for the whole batch now,
    /// nothing is written and the answer is [`QueueError::WouldBlock`]; a batch that could
    /// never fit is [`QueueError::BatchTooLarge`], and one with a frame longer than
    /// [`MAX_FRAME_LEN`] is [`QueueError::FrameTooLarge`]. Once a batch is taken, each frame
    /// gets exactly one completion, and only a transmit check, an admin firewall rule or a
    /// link that is down rejects it: a busy link makes the driver wait, not drop.
    pub fn send(&mut self, frames: &[&[&[u8]]]) -> Result<SendOutcome, QueueError> {
        self.check_open()?;
        let needed = self.slots_needed(frames)?;
        let first_seq = self.tx_seq;
        if frames.is_empty() {
            return Ok(SendOutcome { sent: 0, first_seq });
        }
        let capacity = self.tx_capacity();
        if needed > capacity {
            return Err(QueueError::BatchTooLarge { needed, capacity });
        }
        let words = slots::words(&self.map, &self.layout.tx)?;
        let free = self.tx_free(&words)?;
        if free < needed {
            return Err(QueueError::WouldBlock { needed, free });
        }
        let mut used = 0u32;
        for frame in frames {
            let len = frame.iter().map(|v| v.len()).sum::<usize>();
            let start = self.tx.tail().wrapping_add(used);
            used +=
                slots::write_frame(&self.map, &self.layout, &self.layout.tx, start, frame, len)?;
        }
        self.tx.publish(&words, used);
        self.tx_seq += frames.len() as u64;
        if self.tx.consumer_wants_wake(&words) {
            self.doorbell.ring()?;
        }
        Ok(SendOutcome {
            sent: frames.len(),
            first_seq,
        })
    }

    /// [`send`](Self::send), waiting up to `timeout` (`None`: no limit) for room when the
    /// batch does not fit now: the blocking write. On timeout the answer is
    /// [`QueueError::WouldBlock`] and nothing was written.
    ///
    /// Room opens as the driver takes frames, and it takes a frame only when the completion
    /// ring has room for its outcome: a writer that never collects its
    /// [`completions`](Self::completions) waits in vain once that ring is full.
    pub fn send_wait(
        &mut self,
        frames: &[&[&[u8]]],
        timeout: Option<Duration>,
    ) -> Result<SendOutcome, QueueError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            match self.send(frames) {
                Err(QueueError::WouldBlock { needed, .. }) => {
                    let left =
                        deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return self.send(frames);
                    }
                    self.wait_writable_slots(needed, left)?;
                }
                other => return other,
            }
        }
    }

    /// Receives up to `frames.len()` frames, scattering each into the vectors of one entry of
    /// `frames` and storing its full length in `lens` (a length larger than the vectors hold
    /// means the frame was truncated). Returns the number of frames received; zero when the
    /// ring is empty. After the driver closes the queue, returns [`QueueError::Closed`].
    pub fn recv(
        &mut self,
        frames: &mut [&mut [&mut [u8]]],
        lens: &mut [usize],
    ) -> Result<usize, QueueError> {
        let max = frames.len().min(lens.len());
        let mut received = 0;
        self.recv_each(max, |_, map, segments| {
            let vectors = &mut *frames[received];
            let (mut vi, mut vo) = (0usize, 0usize);
            let mut total = 0;
            for &(offset, len) in segments {
                let mut done = 0;
                while done < len {
                    let Some(vector) = vectors.get_mut(vi) else {
                        break;
                    };
                    let take = (vector.len() - vo).min(len - done);
                    map.copy_out(offset + done, &mut vector[vo..vo + take])?;
                    done += take;
                    vo += take;
                    if vo == vector.len() {
                        vi += 1;
                        vo = 0;
                    }
                }
                total += len;
            }
            lens[received] = total;
            received += 1;
            Ok(())
        })
    }

    /// Receives up to `max` frames, appending each to `out` as an owned buffer. Returns the
    /// number received.
    pub fn recv_owned(&mut self, max: usize, out: &mut Vec<Vec<u8>>) -> Result<usize, QueueError> {
        self.recv_each(max, |len, map, segments| {
            let mut frame = vec![0u8; len];
            let mut at = 0;
            for &(offset, seg) in segments {
                map.copy_out(offset, &mut frame[at..at + seg])?;
                at += seg;
            }
            out.push(frame);
            Ok(())
        })
    }

    /// Receives up to `max` frames, appending each to `out` in a buffer taken from `spare`
    /// (a new one when `spare` is empty), so a consumer that hands its buffers back to `spare`
    /// allocates nothing in the steady state. Returns the number received.
    pub fn recv_recycled(
        &mut self,
        max: usize,
        spare: &mut Vec<Vec<u8>>,
        out: &mut std::collections::VecDeque<Vec<u8>>,
    ) -> Result<usize, QueueError> {
        self.recv_each(max, |len, map, segments| {
            let mut frame = spare.pop().unwrap_or_default();
            frame.clear();
            frame.resize(len, 0);
            let mut at = 0;
            for &(offset, seg) in segments {
                if let Err(e) = map.copy_out(offset, &mut frame[at..at + seg]) {
                    spare.push(frame);
                    return Err(e);
                }
                at += seg;
            }
            out.push_back(frame);
            Ok(())
        })
    }

    /// Walks up to `max` frames of the rx ring, handing each frame's length and segments
    /// (offset, length) to `take`, then releases all their slots with one index store.
    fn recv_each(
        &mut self,
        max: usize,
        mut take: impl FnMut(usize, &SharedMapping, &[(usize, usize)]) -> Result<(), OutOfBounds>,
    ) -> Result<usize, QueueError> {
        self.check_open()?;
        let words = slots::words(&self.map, &self.layout.rx)?;
        let available = self.rx.available(&words)?;
        let mut consumed = 0u32;
        let mut received = 0;
        // Reused from call to call: receiving allocates nothing in the steady state.
        let mut segments = std::mem::take(&mut self.segments);
        while received < max && consumed < available {
            segments.clear();
            let start = self.rx.head().wrapping_add(consumed);
            let read = slots::read_frame(
                &self.map,
                &self.layout,
                &self.layout.rx,
                start,
                available - consumed,
                |offset, len| {
                    segments.push((offset, len));
                    Ok(())
                },
            )?;
            match read {
                FrameRead::Frame { slots, len } => {
                    take(len, &self.map, &segments)?;
                    consumed += slots;
                    received += 1;
                }
                FrameRead::Malformed { slots } => {
                    consumed += slots;
                    self.rx_malformed += 1;
                }
            }
        }
        self.segments = segments;
        if consumed > 0 {
            self.rx.release(&words, consumed);
        }
        Ok(received)
    }

    /// Collects up to `max` completions, appending them to `out`. Returns how many.
    pub fn completions(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
    ) -> Result<usize, QueueError> {
        let words = slots::words(&self.map, &self.layout.completion)?;
        let available = self.completion.available(&words)?;
        let count = (available as usize).min(max) as u32;
        for i in 0..count {
            let index = self.completion.head().wrapping_add(i);
            out.push(slots::read_completion(
                &self.map,
                &self.layout.completion,
                index,
            )?);
        }
        if count > 0 {
            self.completion.release(&words, count);
        }
        Ok(count as usize)
    }

    /// The descriptor for poll, epoll or an async runtime: it becomes readable when the
    /// driver signals this queue (rx frames, completions, tx room, closed), but only for what
    /// [`arm`](Self::arm) asked for. Arm, poll it when `arm` says so, then
    /// [`disarm`](Self::disarm) and try again.
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    /// Asks the driver to signal [`wake_fd`](Self::wake_fd) when rx frames or completions
    /// arrive (`readable`) and when `write_slots` tx slots are free within the `txbuf`
    /// (`Some`; see [`slots_needed`](Self::slots_needed)), and re-checks. `Ok(true)`: nothing
    /// asked for is there yet, poll the descriptor; `Ok(false)`: something is, do not sleep.
    /// Either way, call [`disarm`](Self::disarm) before the next call.
    pub fn arm(&mut self, readable: bool, write_slots: Option<u32>) -> Result<bool, QueueError> {
        let mut sleep = !self.is_closed();
        if readable {
            let rx_words = slots::words(&self.map, &self.layout.rx)?;
            let completion_words = slots::words(&self.map, &self.layout.completion)?;
            sleep &= self.rx.prepare_wait(&rx_words)?;
            sleep &= self.completion.prepare_wait(&completion_words)?;
        }
        if let Some(needed) = write_slots {
            let words = slots::words(&self.map, &self.layout.tx)?;
            // Free slots within the txbuf = ring free - reserved: wait for needed + reserved.
            let reserved = self.layout.tx.count - self.tx_capacity();
            sleep &= self
                .tx
                .prepare_wait(&words, needed.saturating_add(reserved))?;
        }
        Ok(sleep)
    }

    /// Withdraws what [`arm`](Self::arm) asked for and resets the descriptor.
    /// [`QueueError::Closed`] when the driver's end of the doorbell is gone (the queue was
    /// destroyed, or the driver ended): nothing will ever wake this queue again.
    pub fn disarm(&mut self) -> Result<(), QueueError> {
        for ring in [&self.layout.rx, &self.layout.completion] {
            Consumer::end_wait(&slots::words(&self.map, ring)?);
        }
        Producer::end_wait(&slots::words(&self.map, &self.layout.tx)?);
        match self.doorbell.drain() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(QueueError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Sleeps until what [`arm`](Self::arm) is asked for (`readable`, `write_slots`) is there,
    /// the queue is closed, or `timeout` passes (`None`: no limit). Returns `Ok(false)` on
    /// timeout, `Ok(true)` otherwise (a wake-up may occasionally find nothing new).
    pub fn wait(
        &mut self,
        readable: bool,
        write_slots: Option<u32>,
        timeout: Option<Duration>,
    ) -> Result<bool, QueueError> {
        let woken = match self.arm(readable, write_slots) {
            Ok(true) => self.doorbell.wait(timeout).map_err(QueueError::from),
            Ok(false) => Ok(true),
            Err(e) => Err(e),
        };
        self.disarm()?;
        woken
    }

    /// Sleeps until rx frames or completions are available, the queue is closed, or `timeout`
    /// passes (`None`: no limit). Returns `Ok(false)` on timeout, `Ok(true)` otherwise (the
    /// caller then receives; a wake-up may occasionally find nothing new).
    pub fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<bool, QueueError> {
        self.wait(true, None, timeout)
    }

    /// Sleeps until the tx ring has room for a frame of `len` bytes within the `txbuf`, the
    /// queue is closed, or `timeout` passes. Returns `Ok(false)` on timeout.
    pub fn wait_writable(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<bool, QueueError> {
        let needed = self.layout.slots_for(len.min(MAX_FRAME_LEN));
        self.wait(false, Some(needed), timeout)
    }

    /// Sleeps until `slots` tx slots are free within the `txbuf` (a batch's
    /// [`slots_needed`](Self::slots_needed)), the queue is closed, or `timeout` passes.
    /// Returns `Ok(false)` on timeout.
    pub fn wait_writable_slots(
        &mut self,
        slots: u32,
        timeout: Option<Duration>,
    ) -> Result<bool, QueueError> {
        self.wait(false, Some(slots), timeout)
    }
}
