//! Link backends: the one thing the driver owns exclusively, behind one trait.
//!
//! A [`Link`] receives frames into driver-private buffers ([`FrameBatch`]) and transmits frames
//! the driver has already checked. Calls never block: a link with nothing to deliver returns
//! zero frames, and a link that can poll offers a descriptor for the driver's event loop.
//!
//! | spec                       | backend            | privileges | receive / transmit |
//! |----------------------------|--------------------|------------|--------------------|
//! | `pcap:IN.pcap[,OUT.pcap]`  | [`PcapLink`]       | none       | replay / record    |
//! | `virtual:PATH[,PEER]`      | [`VirtualLink`]    | none       | a datagram per frame |
//! | `tap:NAME`                 | [`TapLink`]        | `CAP_NET_ADMIN` | `read` / `writev` per frame, virtio-net header |
//! | `afpacket:IFNAME`          | [`AfPacketLink`]   | `CAP_NET_RAW`   | PACKET_MMAP ring / `sendmmsg` per batch, virtio-net header |
//!
//! [`MemoryLink`] is an in-process link for tests and benchmarks; it has no spec.
//!
//! # Frames as Linux hands them over
//!
//! The `tap:` and `afpacket:` backends ask the kernel for a virtio-net header before every
//! frame, so frames it left unfinished (a partial checksum; a TSO, GSO or GRO aggregate of up
//! to 64 KiB) arrive with what is left to do. [`LinkStats::admit_offloaded`] does it in the
//! driver's private copy with [`netmux_wire::offload`]: the checksum is completed
//! (`rx_csum_completed`), the aggregate cut into ordinary frames (`rx_gso_split`,
//! `rx_gso_segments`), and a frame whose header does not make sense is dropped and counted by
//! its reason, never delivered half-fixed. Nobody has to turn a NIC's or a veth's offloads off.
//!
//! # Links that go down, come back, or vanish
//!
//! A link has a [`LinkState`]. The driver asks [`Link::refresh`] to look again when the
//! link's descriptor reports an error, when its [`Link::watch_fd`] (rtnetlink link events)
//! is readable, and at least every [`LINK_CHECK_INTERVAL`]; `refresh` reads and clears a
//! pending socket error, re-reads the interface's flags, and re-opens an interface that was
//! deleted and has come back under its name. While a link is not up it delivers nothing and
//! takes no frames; the driver keeps its queues and completes their transmissions with
//! `LinkDown`.

mod afpacket;
mod lock;
mod memory;
mod pcap;
mod spec;
mod tap;
mod virtual_cable;
mod watch;

use std::os::fd::BorrowedFd;
use std::time::Duration;

pub use netmux_proto::LinkState;
use netmux_wire::offload::{self, OffloadError, Segments, VirtioNetHeader};

pub use afpacket::AfPacketLink;
pub use lock::InterfaceLock;
pub use memory::MemoryLink;
pub use netmux_ring::FrameBatch;
pub use pcap::PcapLink;
pub use spec::{LinkSpec, LinkSpecError, MAX_IFNAME_LEN, MAX_SOCKET_PATH_LEN};
pub use tap::TapLink;
pub use virtual_cable::VirtualLink;

/// The shortest frame a link accepts: an Ethernet header (destination, source, ethertype).
pub const MIN_FRAME_LEN: usize = 14;
/// The MTU reported by links that have none of their own (pcap, virtual): Ethernet's.
pub const DEFAULT_MTU: u32 = 1500;
/// The longest the driver goes without asking a link to look at its state again: how late a
/// change nobody signals (a TAP set down in another network namespace, rtnetlink events lost
/// to an overrun) is noticed. Two system calls per look.
pub const LINK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often a link that is down or gone is looked at, so it resumes promptly even where no
/// event says it is back.
pub const LINK_RECHECK_WHILE_AWAY: Duration = Duration::from_millis(250);

/// What netd needs to know about the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The spec the link was opened from.
    pub spec: String,
    /// The link's MAC address (for links without hardware, a locally administered address
    /// derived from the spec, stable across runs).
    pub mac: [u8; 6],
    /// Largest IP packet the link carries.
    pub mtu: u32,
}

/// Counters a link keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received and handed to the driver (each segment of a cut aggregate counts).
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Received frames dropped by the link: shorter than an Ethernet header, longer than the
    /// largest frame a ring carries, or cut short by the kernel.
    pub rx_dropped: u64,
    /// Frames the kernel dropped before the link could read them (its receive ring was full),
    /// as the socket's statistics say.
    pub rx_dropped_kernel: u64,
    /// Received frames whose partial checksum the link completed.
    pub rx_csum_completed: u64,
    /// Received aggregates the link cut into ordinary frames.
    pub rx_gso_split: u64,
    /// Frames those aggregates were cut into.
    pub rx_gso_segments: u64,
    /// Received frames dropped because their virtio-net header did not make sense, by
    /// [`OffloadError::index`].
    pub rx_dropped_offload: [u64; OffloadError::ALL.len()],
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the link failed to transmit (no peer, peer gone, write error).
    pub tx_errors: u64,
}

impl LinkStats {
    /// The admission rule every backend applies to a received frame: a frame shorter than an
    /// Ethernet header or longer than a ring carries is dropped and counted; any other is
    /// added to `batch` and counted. Returns whether it was added.
    pub fn admit(&mut self, batch: &mut FrameBatch, frame: &[u8]) -> bool {
        if !(MIN_FRAME_LEN..=netmux_ring::MAX_FRAME_LEN).contains(&frame.len()) {
            self.rx_dropped += 1;
            return false;
        }
        batch.push(0, frame);
        self.rx_frames += 1;
        self.rx_bytes += frame.len() as u64;
        true
    }

    /// The admission rule for a frame that came with a virtio-net `header`: what the header
    /// says is left to do is done in the copy added to `batch` (a checksum completed, an
    /// aggregate cut into ordinary frames, each added), or, when the header makes no sense for
    /// the frame, nothing is added and the reason is counted. Size limits as
    /// [`admit`](Self::admit), except that an aggregate may be up to
    /// [`offload::MAX_AGGREGATE_LEN`]. Returns how many frames were added.
    pub fn admit_offloaded(
        &mut self,
        batch: &mut FrameBatch,
        frame: &[u8],
        header: &VirtioNetHeader,
    ) -> usize {
        if header.is_aggregate() {
            if !(MIN_FRAME_LEN..=offload::MAX_AGGREGATE_LEN).contains(&frame.len()) {
                self.rx_dropped += 1;
                return 0;
            }
            let segments = match Segments::new(frame, header) {
                Ok(s) => s,
                Err(e) => {
                    self.rx_dropped_offload[e.index()] += 1;
                    return 0;
                }
            };
            for i in 0..segments.len() {
                let _ = batch.push_with(0, |buffer| {
                    segments.write(i, buffer);
                    self.rx_bytes += buffer.len() as u64;
                    Ok::<(), std::convert::Infallible>(())
                });
            }
            self.rx_frames += segments.len() as u64;
            self.rx_gso_split += 1;
            self.rx_gso_segments += segments.len() as u64;
            return segments.len();
        }
        if !(MIN_FRAME_LEN..=netmux_ring::MAX_FRAME_LEN).contains(&frame.len()) {
            self.rx_dropped += 1;
            return 0;
        }
        let completed = batch.push_with(0, |buffer| {
            buffer.extend_from_slice(frame);
            offload::complete_checksum(buffer, header)
        });
        self.count_completion(completed, frame.len())
    }

    /// Counts the outcome of [`offload::complete_checksum`] on a frame of `len` bytes a
    /// backend copied into a batch itself; returns how many frames were added (0 or 1).
    pub fn count_completion(&mut self, outcome: Result<bool, OffloadError>, len: usize) -> usize {
        match outcome {
            Ok(completed) => {
                self.rx_csum_completed += u64::from(completed);
                self.rx_frames += 1;
                self.rx_bytes += len as u64;
                1
            }
            Err(e) => {
                self.rx_dropped_offload[e.index()] += 1;
                0
            }
        }
    }

    /// The virtio-net drops by counter name (`offload-REASON`), those not zero.
    pub fn offload_drops(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        OffloadError::ALL
            .iter()
            .zip(self.rx_dropped_offload)
            .filter(|&(_, n)| n > 0)
            .map(|(e, n)| (format!("offload-{}", e.name()), n))
    }
}

/// A link failure.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A system call on the link failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// Reading the replayed capture or writing the recording failed.
    #[error(transparent)]
    Capture(#[from] netmux_wire::capture::CaptureError),
    /// Something else already listens at a virtual link's path.
    #[error("{0}: a live socket is already bound there")]
    AddressInUse(String),
}

impl LinkError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// A network link owned by the driver.
pub trait Link: Send {
    /// The link's identity.
    fn info(&self) -> &LinkInfo;

    /// Appends up to `max` received frames to `batch` without blocking; returns how many.
    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError>;

    /// Transmits `frames` in order without blocking; returns how many the link took (sent or
    /// counted as a transmit error). Fewer than all means the link is busy: offer the rest
    /// again later.
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError>;

    /// A descriptor that polls readable when frames may be waiting, for links that have one.
    /// Links without one (pcap, memory) are always ready until [`rx_exhausted`](Self::rx_exhausted).
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Whether the link will never receive another frame (a replayed capture has ended).
    fn rx_exhausted(&self) -> bool {
        false
    }

    /// The unicast MACs the link must accept besides its own (the own-MAC instances'),
    /// replacing the earlier set. Links that pass every frame up whatever its destination
    /// (TAP, the virtual cable, memory, pcap) need nothing.
    fn set_unicast_macs(&mut self, _macs: &[[u8; 6]]) -> Result<(), LinkError> {
        Ok(())
    }

    /// The multicast MACs the link must accept (the groups clients joined), replacing the
    /// earlier set. Links that pass every frame up whatever its destination need nothing.
    fn set_multicast_macs(&mut self, _macs: &[[u8; 6]]) -> Result<(), LinkError> {
        Ok(())
    }

    /// The link's counters.
    fn stats(&self) -> LinkStats;

    /// The link's state as last seen (by [`recv`](Self::recv), [`send`](Self::send) or
    /// [`refresh`](Self::refresh)); links without a state of their own are always up.
    fn state(&self) -> LinkState {
        LinkState::Up
    }

    /// Why the link is in its state, for the log line that reports a change (`no carrier`,
    /// `deleted`, ...).
    fn state_reason(&self) -> Option<String> {
        None
    }

    /// A descriptor that polls readable when the link's state may have changed (an rtnetlink
    /// socket subscribed to link events), for links that have one.
    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Looks at the link's state again: reads and clears a pending error, drains
    /// [`watch_fd`](Self::watch_fd), re-reads the interface, re-opens it if it was deleted and
    /// is back. Never blocks.
    fn refresh(&mut self) {}
}

/// Opens the link a spec names.
pub fn open(spec: &LinkSpec) -> Result<Box<dyn Link>, LinkError> {
    match spec {
        LinkSpec::Tap { name } => Ok(Box::new(TapLink::open(name, info_for(spec))?)),
        LinkSpec::AfPacket { ifname } => Ok(Box::new(AfPacketLink::open(ifname, info_for(spec))?)),
        LinkSpec::Pcap { input, output } => Ok(Box::new(PcapLink::open(
            input,
            output.as_deref(),
            info_for(spec),
        )?)),
        LinkSpec::Virtual { path, peer } => Ok(Box::new(VirtualLink::bind(
            path,
            peer.as_deref(),
            info_for(spec),
        )?)),
    }
}

/// Identity of a link without hardware: a locally administered unicast MAC (`02:6e:6d:...`,
/// "nm") whose last three bytes are an FNV-1a hash of the spec.
pub fn info_for(spec: &LinkSpec) -> LinkInfo {
    let text = spec.to_string();
    let hash = text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [_, a, b, c] = hash.to_be_bytes();
    LinkInfo {
        spec: text,
        mac: [0x02, 0x6e, 0x6d, a, b, c],
        mtu: DEFAULT_MTU,
    }
}
