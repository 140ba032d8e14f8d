//! The driver's side of the operator's tools: captures (a queue that receives copies of
//! another queue's frames, or of the link's, each behind a [`CaptureRecord`]) and the admin
//! firewall's rules, as netd gives them to the driver ([`OperatorRequest`]).

use serde::{Deserialize, Serialize};

use super::{InstanceId, QueueId};

/// Which frames a capture copies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CaptureDirections {
    /// What the client receives and what it transmits (or everything on the link).
    #[default]
    Both,
    /// What it receives only.
    Rx,
    /// What it transmits only.
    Tx,
}

impl CaptureDirections {
    /// Whether received frames are copied.
    pub fn rx(self) -> bool {
        self != CaptureDirections::Tx
    }

    /// Whether transmitted frames are copied.
    pub fn tx(self) -> bool {
        self != CaptureDirections::Rx
    }
}

/// What the capture is of, as the driver knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptureSource {
    /// What this queue has delivered to its rx ring and what it transmitted after the
    /// transmit check.
    Queue(QueueId),
    /// Every frame received from the link (after reassembly) and every frame sent on it.
    Link,
}

/// A capture, as netd asks the driver for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// The queue the copies go to (the capturing session's, created before).
    pub queue: QueueId,
    /// What is captured.
    pub source: CaptureSource,
    /// Which way.
    pub directions: CaptureDirections,
    /// Bytes of each frame copied.
    pub snaplen: u32,
    /// The verified filter program, when there is a filter.
    pub program: Option<Vec<u8>>,
}

/// Which way a captured frame went, as its record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FrameDirection {
    /// Received (delivered to the client, or from the link).
    In,
    /// Transmitted (by the client after its check, or onto the link).
    Out,
}

/// Bytes of the record that precedes every captured frame in a capture's rx ring:
/// direction (1 byte: 0 in, 1 out), 3 bytes zero, the frame's whole length (u32, little
/// endian), the time it was copied (u64 nanoseconds since the Unix epoch, little endian).
pub const CAPTURE_RECORD_LEN: usize = 16;

/// A captured frame's record: the header of [`CAPTURE_RECORD_LEN`] bytes and what follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRecord<'a> {
    /// Which way it went.
    pub direction: FrameDirection,
    /// Its whole length.
    pub orig_len: u32,
    /// When it was copied, in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Its first bytes (up to the capture's snapshot length).
    pub data: &'a [u8],
}

impl<'a> CaptureRecord<'a> {
    /// The record header for a frame.
    pub fn header(direction: FrameDirection, orig_len: u32, timestamp_ns: u64) -> [u8; 16] {
        let mut h = [0u8; CAPTURE_RECORD_LEN];
        h[0] = match direction {
            FrameDirection::In => 0,
            FrameDirection::Out => 1,
        };
        h[4..8].copy_from_slice(&orig_len.to_le_bytes());
        h[8..16].copy_from_slice(&timestamp_ns.to_le_bytes());
        h
    }

    /// Reads a record from a frame of a capture's ring; `None` when it is too short or its
    /// direction byte is not 0 or 1.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let header = bytes.get(..CAPTURE_RECORD_LEN)?;
        let direction = match header[0] {
            0 => FrameDirection::In,
            1 => FrameDirection::Out,
            _ => return None,
        };
        let orig_len = u32::from_le_bytes(header[4..8].try_into().ok()?);
        let timestamp_ns = u64::from_le_bytes(header[8..16].try_into().ok()?);
        Some(CaptureRecord {
            direction,
            orig_len,
            timestamp_ns,
            data: &bytes[CAPTURE_RECORD_LEN..],
        })
    }
}

/// What a firewall rule does with a frame it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleAction {
    /// Let it through.
    Pass,
    /// Drop it (received) or complete it with `RejectedByFirewall` (transmitted).
    Block,
}

/// Which way a firewall rule looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleDirection {
    /// Received frames, before they are delivered to a client.
    In,
    /// Transmitted frames, after the client's own transmit check.
    Out,
}

/// A rule as netd gives it to the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// netd's id of it: counters follow a rule across changes of the list.
    pub id: u64,
    /// Its instance: it sees the frames of that instance's queues only.
    pub instance: InstanceId,
    /// Pass or block.
    pub action: RuleAction,
    /// In or out.
    pub direction: RuleDirection,
    /// Whether a match decides at once.
    pub quick: bool,
    /// Only this queue's frames; `Some` with a queue that does not exist matches nothing.
    pub queue: Option<QueueId>,
    /// The verified program, in the VM's container format.
    pub program: Vec<u8>,
}

/// A rule's counters at the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounters {
    /// The rule's id.
    pub id: u64,
    /// Frames it decided.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// netd to driver, for the operator's tools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorRequest {
    /// Makes a queue a capture: it no longer receives anything of its own (ARP for everyone
    /// included), only the copies. It ends when its queue or its source queue goes.
    StartCapture(CaptureSpec),
    /// Replaces the firewall's rules (in order); the counters of rules whose id stays are kept.
    SetFirewall {
        /// The rules, in order.
        rules: Vec<RuleSpec>,
    },
    /// The rules' counters.
    FirewallCounters,
    /// Lets at most `slots` rx slots of a queue hold unread frames (`rxbuf`); `None`: all.
    SetRxLimit {
        /// The queue.
        queue: QueueId,
        /// The limit.
        slots: Option<u32>,
    },
    /// Lets a queue's client fill at most `slots` tx slots (`txbuf`); `None`: all.
    SetTxLimit {
        /// The queue.
        queue: QueueId,
        /// The limit.
        slots: Option<u32>,
    },
}

/// driver to netd, for the operator's tools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorReply {
    /// Done.
    Done,
    /// Every rule's counters, in rule order.
    Firewall(Vec<RuleCounters>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_was_written() {
        let mut bytes = CaptureRecord::header(FrameDirection::Out, 1514, 42).to_vec();
        bytes.extend_from_slice(b"abc");
        let r = CaptureRecord::parse(&bytes).unwrap();
        assert_eq!(r.direction, FrameDirection::Out);
        assert_eq!(
            (r.orig_len, r.timestamp_ns, r.data),
            (1514, 42, &b"abc"[..])
        );
        assert!(CaptureRecord::parse(&bytes[..15]).is_none());
        bytes[0] = 9;
        assert!(CaptureRecord::parse(&bytes).is_none());
    }
}
