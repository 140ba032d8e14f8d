//! Link backends: the one thing the driver owns exclusively, behind one trait.
//!
//! A [`Link`] receives frames into driver-private buffers ([`FrameBatch`]) and transmits frames
//! the driver has already checked. Calls never block: a link with nothing to deliver returns
//! zero frames, and a link that can poll offers a descriptor for the driver's event loop.
//!
//! | spec                       | backend            | privileges | state              |
//! |----------------------------|--------------------|------------|--------------------|
//! | `pcap:IN.pcap[,OUT.pcap]`  | [`PcapLink`]       | none       | done               |
//! | `virtual:PATH[,PEER]`      | [`VirtualLink`]    | none       | done               |
//! | `tap:NAME`                 | [`TapLink`]        | `CAP_NET_ADMIN` | done          |
//! | `afpacket:IFNAME`          | [`AfPacketLink`]   | `CAP_NET_RAW`   | done (rx ring; tx by `send`) |
//!
//! [`MemoryLink`] is an in-process link for tests and benchmarks; it has no spec.

mod afpacket;
mod memory;
mod pcap;
mod spec;
mod tap;
mod virtual_cable;

use std::os::fd::BorrowedFd;

pub use afpacket::AfPacketLink;
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
    /// Frames received and handed to the driver.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Received frames dropped by the link: shorter than an Ethernet header or longer than
    /// the largest frame a ring carries.
    pub rx_dropped: u64,
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

    /// The link's counters.
    fn stats(&self) -> LinkStats;
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
