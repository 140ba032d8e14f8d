//! An in-process link for tests and benchmarks: received frames come from a list (once, or
//! cycled forever), transmitted frames are kept in order.

use std::os::fd::BorrowedFd;

use super::{FrameBatch, Link, LinkError, LinkInfo, LinkStats, DEFAULT_MTU};

/// A link that lives in memory.
#[derive(Debug)]
pub struct MemoryLink {
    info: LinkInfo,
    rx: Vec<Vec<u8>>,
    next: usize,
    repeat: bool,
    transmitted: Vec<Vec<u8>>,
    stats: LinkStats,
}

impl MemoryLink {
    /// A link that receives `frames` once, in order.
    pub fn new(frames: Vec<Vec<u8>>) -> Self {
        Self::with(frames, false)
    }

    /// A link that receives `frames` in order, over and over (an endless traffic source; with
    /// no frames it receives nothing).
    pub fn repeating(frames: Vec<Vec<u8>>) -> Self {
        Self::with(frames, true)
    }

    fn with(rx: Vec<Vec<u8>>, repeat: bool) -> Self {
        Self {
            info: LinkInfo {
                spec: "memory".to_string(),
                mac: [0x02, 0x6e, 0x6d, 0, 0, 1],
                mtu: DEFAULT_MTU,
            },
            rx,
            next: 0,
            repeat,
            transmitted: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    /// Queues one more frame to receive.
    pub fn inject(&mut self, frame: Vec<u8>) {
        self.rx.push(frame);
    }

    /// Every frame transmitted so far, in order.
    pub fn transmitted(&self) -> &[Vec<u8>] {
        &self.transmitted
    }
}

impl Link for MemoryLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let mut count = 0;
        while count < max {
            if self.next == self.rx.len() {
                if !self.repeat || self.rx.is_empty() {
                    break;
                }
                self.next = 0;
            }
            let frame = &self.rx[self.next];
            batch.push(0, frame);
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.len() as u64;
            self.next += 1;
            count += 1;
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        for frame in frames {
            self.transmitted.push(frame.to_vec());
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += frame.len() as u64;
        }
        Ok(frames.len())
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn rx_exhausted(&self) -> bool {
        !self.repeat && self.next == self.rx.len()
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }
}
