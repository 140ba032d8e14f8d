//! Passive captures: copies of what one queue received and transmitted, or of everything on
//! the link, into the rx ring of a capture's own queue (`netmux capture`, as illumos
//! `snoop -z` sees a zone's vnd datalink).
//!
//! Guarantees:
//! * a queue's own frames are untouched: a copy is made only after the frame was queued in
//!   its rx ring (received) or decided (transmitted: what passed the transmit check and the
//!   firewall and was sent), and a capture's full ring drops the copy for the capture only,
//!   counted in the capture queue's `rx_dropped_full`;
//! * each copy is a [`CaptureRecord`] (direction, whole length, time) and at most the
//!   capture's snapshot length of the frame;
//! * a capture queue receives nothing but its copies, and a capture whose source queue goes
//!   away is closed, so its reader sees the end;
//! * with no capture, the data path pays one `is_empty` test per frame.

use netmux_proto::driver::QueueId;
use netmux_proto::ops::{
    CaptureDirections, CaptureRecord, CaptureSource, CaptureSpec, FrameDirection,
    CAPTURE_RECORD_LEN,
};
use netmux_ring::RxOutcome;
use netmux_vm::{Engine, Scratch, Strategy};

use super::{IdMap, Queue};

/// Captures one driver holds at most: each costs a copy of every frame it sees.
pub const MAX_CAPTURES: usize = 64;

/// One capture.
struct Capture {
    /// The queue the copies go to.
    queue: QueueId,
    source: CaptureSource,
    directions: CaptureDirections,
    snaplen: usize,
    filter: Option<Box<dyn Engine>>,
}

/// Every capture of a driver.
#[derive(Default)]
pub struct Captures {
    list: Vec<Capture>,
}

impl std::fmt::Debug for Captures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captures")
            .field("count", &self.list.len())
            .finish()
    }
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Its queue or its source queue does not exist.
    #[error("no queue {0}")]
    NoQueue(u32),
    /// A queue cannot capture itself.
    #[error("queue {0} cannot capture itself")]
    Itself(u32),
    /// Its queue is already a capture.
    #[error("queue {0} is already a capture")]
    AlreadyCapturing(u32),
    /// Too many captures.
    #[error("at most {MAX_CAPTURES} captures")]
    TooMany,
    /// The filter program does not verify or cannot run on the engine.
    #[error("capture filter rejected: {0}")]
    Filter(String),
}

impl Captures {
    /// Whether there is no capture (the data path's only cost then).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `queue` is a capture's own queue.
    pub fn is_capture(&self, queue: QueueId) -> bool {
        self.list.iter().any(|c| c.queue == queue)
    }

    /// Adds a capture after checking it against `queues`.
    pub(super) fn start(
        &mut self,
        spec: CaptureSpec,
        queues: &IdMap<QueueId, Queue>,
        strategy: Strategy,
    ) -> Result<(), CaptureError> {
        if !queues.contains_key(&spec.queue) {
            return Err(CaptureError::NoQueue(spec.queue.0));
        }
        if let CaptureSource::Queue(source) = spec.source {
            if source == spec.queue {
                return Err(CaptureError::Itself(source.0));
            }
            if !queues.contains_key(&source) {
                return Err(CaptureError::NoQueue(source.0));
            }
        }
        if self.is_capture(spec.queue) {
            return Err(CaptureError::AlreadyCapturing(spec.queue.0));
        }
        if self.list.len() >= MAX_CAPTURES {
            return Err(CaptureError::TooMany);
        }
        let filter = match spec.program {
            Some(bytes) => {
                let program =
                    netmux_vm::verify(&bytes).map_err(|e| CaptureError::Filter(e.to_string()))?;
                Some(
                    netmux_vm::engine(program, strategy)
                        .map_err(|e| CaptureError::Filter(e.to_string()))?,
                )
            }
            None => None,
        };
        self.list.push(Capture {
            queue: spec.queue,
            source: spec.source,
            directions: spec.directions,
            // The record and the kept bytes are one frame of the capture's ring.
            snaplen: usize::try_from(spec.snaplen)
                .unwrap_or(usize::MAX)
                .clamp(1, netmux_ring::MAX_FRAME_LEN - CAPTURE_RECORD_LEN),
            filter,
        });
        Ok(())
    }

    /// Forgets the captures into `queue` and returns the capture queues whose source was
    /// `queue` (the caller closes them: their reader sees the end).
    pub fn queue_gone(&mut self, queue: QueueId) -> Vec<QueueId> {
        self.list.retain(|c| c.queue != queue);
        let ended: Vec<QueueId> = self
            .list
            .iter()
            .filter(|c| c.source == CaptureSource::Queue(queue))
            .map(|c| c.queue)
            .collect();
        self.list
            .retain(|c| c.source != CaptureSource::Queue(queue));
        ended
    }

    /// Forgets every capture.
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// Copies `frame`, which went `direction` at `source`, into every capture of it whose
    /// filter matches; the capture queues written are added to `touched` (published once per
    /// batch by the caller).
    pub(super) fn copy(
        &self,
        source: CaptureSource,
        direction: FrameDirection,
        frame: &[u8],
        queues: &mut IdMap<QueueId, Queue>,
        touched: &mut Vec<QueueId>,
        scratch: &mut Scratch,
    ) {
        let wanted = |c: &&Capture| {
            c.source == source
                && match direction {
                    FrameDirection::In => c.directions.rx(),
                    FrameDirection::Out => c.directions.tx(),
                }
        };
        let mut stamp = None;
        for capture in self.list.iter().filter(wanted) {
            let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            if let Some(f) = &capture.filter {
                if !f.run_with_scratch(frame, wire_len, scratch).is_accept() {
                    continue;
                }
            }
            let Some(queue) = queues.get_mut(&capture.queue) else {
                continue;
            };
            let now = *stamp.get_or_insert_with(now_ns);
            let header = CaptureRecord::header(direction, wire_len, now);
            let kept = &frame[..frame.len().min(capture.snaplen)];
            // A full capture ring drops the copy here, counted by that ring; either way the
            // ring is flushed with the batch, which also shows its reader the count.
            let _: RxOutcome = queue.ring.push_rx(&[&header, kept]);
            if !queue.touched {
                queue.touched = true;
                touched.push(capture.queue);
            }
        }
    }
}

/// The time of day in nanoseconds since the Unix epoch (0 before it).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
