//! A `smoltcp::phy::Device` on a netmux queue, so a real TCP/IP stack runs as a netd client.
//!
//! Received frames come from the queue's rx ring in batches of [`RX_BATCH`]; each transmitted
//! frame goes into the tx ring at once. A frame the tx ring has no room for is dropped and
//! counted (smoltcp retransmits as it would on a lossy link); completions are collected and
//! rejected transmissions counted, so a test can tell a refused spoof from a lost frame.
//! Frame buffers are reused, received and transmitted alike: the device allocates nothing per
//! frame once it has seen a batch.

use std::collections::VecDeque;
use std::time::Duration;

use netmux_ring::{ClientQueue, Completion, QueueError};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames taken from the rx ring per refill.
pub const RX_BATCH: usize = 32;

/// Counters of a [`QueueDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames put in the tx ring.
    pub tx_frames: u64,
    /// Frames dropped because the tx ring was full or the queue failed.
    pub tx_dropped: u64,
    /// Frames the driver completed with a rejection.
    pub tx_rejected: u64,
}

/// The device. See the module documentation.
#[derive(Debug)]
pub struct QueueDevice {
    queue: ClientQueue,
    rx: VecDeque<Vec<u8>>,
    /// Buffers of frames smoltcp has consumed, for the next refill.
    spare: Vec<Vec<u8>>,
    /// The frame smoltcp is consuming now.
    current: Vec<u8>,
    /// The frame smoltcp is building now.
    tx_buffer: Vec<u8>,
    mtu: usize,
    counters: DeviceCounters,
    completions: Vec<Completion>,
}

impl QueueDevice {
    /// A device on `queue` for a link with this IP MTU.
    pub fn new(queue: ClientQueue, mtu: u16) -> QueueDevice {
        QueueDevice {
            queue,
            rx: VecDeque::new(),
            spare: Vec::new(),
            current: Vec::new(),
            tx_buffer: Vec::new(),
            mtu: usize::from(mtu),
            counters: DeviceCounters::default(),
            completions: Vec::new(),
        }
    }

    /// The queue underneath.
    pub fn queue(&mut self) -> &mut ClientQueue {
        &mut self.queue
    }

    /// Carries on over another queue (the session's queue after a reconnection to netd); the
    /// frames not yet handed to smoltcp from the old one are dropped, as a link that went
    /// down for a moment would. The counters go on.
    pub fn replace_queue(&mut self, queue: ClientQueue) {
        self.queue = queue;
        self.rx.clear();
    }

    /// The device's counters.
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// Sleeps until a frame may be waiting, or `timeout` passes (smoltcp's `poll_delay`).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        if self.rx.is_empty() {
            self.queue.wait_readable(timeout)?;
        }
        Ok(())
    }

    fn refill(&mut self) {
        let _ = self
            .queue
            .recv_recycled(RX_BATCH, &mut self.spare, &mut self.rx);
        self.completions.clear();
        if self
            .queue
            .completions(usize::MAX, &mut self.completions)
            .is_ok()
        {
            self.counters.tx_rejected += self
                .completions
                .iter()
                .filter(|c| !c.status.is_sent())
                .count() as u64;
        }
    }
}

/// A received frame.
#[derive(Debug)]
pub struct QueueRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for QueueRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Room for one frame to transmit.
#[derive(Debug)]
pub struct QueueTxToken<'a> {
    queue: &'a mut ClientQueue,
    counters: &'a mut DeviceCounters,
    buffer: &'a mut Vec<u8>,
}

impl phy::TxToken for QueueTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let frame = self.buffer;
        frame.clear();
        frame.resize(len, 0);
        let result = f(frame);
        match self.queue.send(&[&[frame]]) {
            Ok(outcome) if outcome.sent == 1 => self.counters.tx_frames += 1,
            _ => self.counters.tx_dropped += 1,
        }
        result
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QueueRxToken<'a>;
    type TxToken<'a> = QueueTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx.is_empty() {
            self.refill();
        }
        let frame = self.rx.pop_front()?;
        let consumed = std::mem::replace(&mut self.current, frame);
        self.spare.push(consumed);
        self.counters.rx_frames += 1;
        Some((
            QueueRxToken {
                frame: &self.current,
            },
            QueueTxToken {
                queue: &mut self.queue,
                counters: &mut self.counters,
                buffer: &mut self.tx_buffer,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(QueueTxToken {
            queue: &mut self.queue,
            counters: &mut self.counters,
            buffer: &mut self.tx_buffer,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp's MTU for an Ethernet device counts the Ethernet header.
        caps.max_transmission_unit = self.mtu + smoltcp::wire::EthernetFrame::<&[u8]>::header_len();
        caps.max_burst_size = Some(RX_BATCH);
        caps
    }
}
