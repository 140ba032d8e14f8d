//! `afpacket:IFNAME`: an existing interface through an AF_PACKET socket whose receive path is
//! a PACKET_MMAP ring (TPACKET_V2) shared with the kernel (needs `CAP_NET_RAW`).
//!
//! # Receiving
//!
//! The kernel fills ring slots and flips each slot's status word to `TP_STATUS_USER`; we load
//! the status with `Acquire`, copy the frame into driver-private memory, and hand the slot
//! back by storing `TP_STATUS_KERNEL` with `Release` (the protocol of the kernel's
//! `packet_mmap` documentation). The ring is read through [`crate::sys::SharedMapping`], so
//! every offset the kernel's header gives us is bounds-checked like any other shared memory.
//! Frames the host itself sends out of the interface are ignored (`PACKET_IGNORE_OUTGOING`).
//!
//! Frames arrive exactly as Linux hands them over: the socket has `PACKET_VNET_HDR`, so a
//! virtio-net header precedes every frame in its slot, and [`LinkStats::admit_offloaded`]
//! completes partial checksums and cuts TSO/GSO/GRO aggregates (a veth's peer sends 64 KiB
//! TCP aggregates whenever its TSO is on, which is the default) into ordinary frames. A slot
//! is [`FRAME_SIZE`] bytes, enough for any frame of a 1,500-byte MTU; a longer frame (an
//! aggregate, or any frame on an interface with a larger MTU) is also queued whole on the
//! socket (`PACKET_COPY_THRESH`), its slot says `TP_STATUS_COPY`, and it is read from the
//! socket with `recv` into a private buffer of [`offload::MAX_AGGREGATE_LEN`] bytes, in ring
//! order. So a slot holds any frame up to 64 KiB without making every slot that large. A long
//! frame the kernel could not queue (the socket's [`AGGREGATE_QUEUE_BYTES`] full) is dropped
//! and counted: the classifier never sees a truncated frame. Frames the kernel drops because
//! the ring is full are read from the socket's statistics and counted as `kernel` drops.
//!
//! # Transmitting
//!
//! A batch goes out in one `sendmmsg` call, each message a zero virtio-net header (nothing
//! left to do) and the frame the driver checked.
//!
//! # Down, back, gone
//!
//! When the interface goes down (or is deleted) the kernel sets `ENETDOWN` on the socket,
//! which then polls with `POLLERR` until the error is read; [`Link::refresh`] reads and clears
//! it, then looks the interface up by name: gone (no interface of that name), down (not
//! `IFF_UP`, or no carrier), or up. An interface deleted and created again under the same name
//! (with the same MAC address: clients and peers know it) gets a new socket and ring; one that
//! comes back with another MAC address is not adopted, since every client's stack and every
//! peer's neighbour cache hold the old one.
//!
//! The link's MAC address and MTU are the interface's.

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::watch::{self, LinkWatch};
use super::{FrameBatch, Link, LinkError, LinkInfo, LinkState, LinkStats, MIN_FRAME_LEN};
use crate::sys::{packet_membership, Interface, Membership, PacketRingRequest};
use netmux_ring::sys::SharedMapping;
use netmux_ring::MAX_FRAME_LEN;
use netmux_wire::offload::{self, OffloadError, VirtioNetHeader};

/// Bytes per ring slot: the TPACKET_V2 header and address (80 bytes with alignment), the
/// virtio-net header and a 1,514-byte frame fit with room to spare; longer frames come
/// through the socket (see the module documentation).
const FRAME_SIZE: u32 = 2048;
/// Bytes per ring block: 32 KiB (a multiple of the page size, 16 slots).
const BLOCK_SIZE: u32 = 32 * 1024;
/// Blocks in the ring: 64, so 1,024 slots and 2 MiB per link.
const BLOCK_COUNT: u32 = 64;
/// Slots in the ring.
const FRAME_COUNT: u32 = BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT;
/// Bytes of frames too long for a slot the kernel may queue on the socket for us: about 60
/// aggregates of 64 KiB (the kernel charges each the true size of its buffers), a few
/// milliseconds of a fast sender, while the ring's 1,024 slots hold the rest.
const AGGREGATE_QUEUE_BYTES: usize = 8 << 20;
/// Messages per `sendmmsg` call.
const MAX_MESSAGES_PER_CALL: usize = 64;

/// `TP_STATUS_KERNEL`: the slot belongs to the kernel.
const TP_STATUS_KERNEL: u32 = 0;
/// `TP_STATUS_USER`: the slot holds a frame for us.
const TP_STATUS_USER: u32 = 1;
/// `TP_STATUS_COPY`: the frame was too long for the slot; it is queued whole on the socket.
const TP_STATUS_COPY: u32 = 1 << 1;
/// `struct tpacket2_hdr` field offsets.
const HDR_LEN: usize = 4;
const HDR_SNAPLEN: usize = 8;
const HDR_MAC: usize = 12;

/// The socket and ring of one incarnation of the interface.
#[derive(Debug)]
struct Socket {
    /// Declared before `fd`: the mapping goes away before the socket closes.
    ring: SharedMapping,
    fd: OwnedFd,
    ifindex: u32,
    next: u32,
}

impl Socket {
    fn open(ifname: &str, ifindex: u32) -> Result<Socket, LinkError> {
        let request = PacketRingRequest {
            block_size: BLOCK_SIZE,
            block_count: BLOCK_COUNT,
            frame_size: FRAME_SIZE,
            frame_count: FRAME_COUNT,
        };
        let fd = crate::sys::open_packet_socket(ifindex, &request, AGGREGATE_QUEUE_BYTES)
            .map_err(|e| LinkError::io(format!("opening AF_PACKET on {ifname}"), e))?;
        let ring = SharedMapping::map(fd.as_fd(), (BLOCK_SIZE * BLOCK_COUNT) as usize)
            .map_err(|e| LinkError::io("mapping the AF_PACKET ring", e))?;
        // A socket bound to an interface that is down starts with ENETDOWN pending.
        let _ = rustix::net::sockopt::socket_error(&fd);
        Ok(Socket {
            ring,
            fd,
            ifindex,
            next: 0,
        })
    }
}

/// An interface attached through AF_PACKET with a receive ring.
#[derive(Debug)]
pub struct AfPacketLink {
    info: LinkInfo,
    ifname: String,
    /// `None` while the interface is gone.
    socket: Option<Socket>,
    /// For interface ioctls.
    probe: OwnedFd,
    watch: Option<LinkWatch>,
    state: LinkState,
    reason: Option<String>,
    /// Private room for a frame read from the socket (its virtio-net header first) or an
    /// aggregate copied out of its slot.
    scratch: Vec<u8>,
    stats: LinkStats,
    /// The own-MAC instances' addresses the interface accepts besides its own; asked of every
    /// incarnation of the socket.
    unicast: Vec<[u8; 6]>,
    /// The multicast MACs asked for ([`Link::set_multicast_macs`]), asked again of a new
    /// incarnation of the interface.
    multicast: Vec<[u8; 6]>,
    /// No other driver takes the interface while this link lives.
    _lock: super::InterfaceLock,
}

fn interface_state(iface: &Interface) -> (LinkState, Option<String>) {
    if !iface.up {
        (LinkState::Down, Some("administratively down".to_string()))
    } else if !iface.running {
        (LinkState::Down, Some("no carrier".to_string()))
    } else {
        (LinkState::Up, None)
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl AfPacketLink {
    /// Attaches to the existing interface `ifname` (up or not).
    pub fn open(ifname: &str, mut info: LinkInfo) -> Result<Self, LinkError> {
        let lock = super::InterfaceLock::acquire(ifname)?;
        let probe =
            crate::sys::probe_socket().map_err(|e| LinkError::io("creating a probe socket", e))?;
        let iface = crate::sys::interface(probe.as_fd(), ifname)
            .map_err(|e| LinkError::io(format!("looking up interface {ifname}"), e))?
            .ok_or_else(|| {
                LinkError::io(
                    format!("looking up interface {ifname}"),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
        let socket = Socket::open(ifname, iface.index)?;
        info.mac = iface.mac;
        info.mtu = iface.mtu;
        let (state, reason) = interface_state(&iface);
        let watch = watch::open_or_log(&info.spec);
        Ok(Self {
            info,
            ifname: ifname.to_string(),
            socket: Some(socket),
            probe,
            watch,
            state,
            reason,
            scratch: vec![0; offload::HEADER_LEN + offload::MAX_AGGREGATE_LEN],
            stats: LinkStats::default(),
            unicast: Vec::new(),
            multicast: Vec::new(),
            _lock: lock,
        })
    }

    fn set_state(&mut self, state: LinkState, reason: Option<String>) {
        self.state = state;
        self.reason = reason;
    }

    /// The socket failed in a way that says the interface is not carrying frames.
    fn note_down(&mut self, errno: rustix::io::Errno) {
        if self.state == LinkState::Up {
            self.set_state(LinkState::Down, Some(format!("the kernel says: {errno}")));
        }
    }

    /// Makes the socket's memberships of `kind` exactly `macs`: the new ones added, the old
    /// ones dropped. Without a socket, the next one is asked when the interface is back.
    fn set_memberships(&mut self, kind: Membership, macs: &[[u8; 6]]) -> Result<(), LinkError> {
        let list = match kind {
            Membership::Unicast => &mut self.unicast,
            Membership::Multicast => &mut self.multicast,
        };
        let old = std::mem::replace(list, macs.to_vec());
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let (fd, ifindex) = (socket.fd.as_fd(), socket.ifindex);
        for mac in old.iter().filter(|m| !macs.contains(m)) {
            // A membership the kernel no longer has is gone either way.
            let _ = packet_membership(fd, ifindex, kind, *mac, false);
        }
        for mac in macs.iter().filter(|m| !old.contains(m)) {
            packet_membership(fd, ifindex, kind, *mac, true).map_err(|e| {
                LinkError::io(
                    format!(
                        "asking {} to accept frames for {}",
                        self.ifname,
                        member_text(kind, *mac)
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

/// A membership's MAC as the logs name it.
fn member_text(kind: Membership, mac: [u8; 6]) -> String {
    match kind {
        Membership::Unicast => mac_text(mac),
        Membership::Multicast => format!("the group {}", mac_text(mac)),
    }
}

/// Why copying a slot into a batch failed.
enum SlotError {
    /// The ring's bytes were out of bounds (a kernel header we cannot trust).
    OutOfBounds(netmux_ring::OutOfBounds),
    /// The frame's virtio-net header does not make sense.
    Offload(OffloadError),
}

impl Link for AfPacketLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let Self {
            socket,
            scratch,
            stats,
            ..
        } = self;
        let Some(socket) = socket.as_mut() else {
            return Ok(0);
        };
        let oob = |e: netmux_ring::OutOfBounds| {
            LinkError::io("reading the AF_PACKET ring", std::io::Error::other(e))
        };
        let too_long = || {
            LinkError::io(
                "reading the AF_PACKET ring",
                std::io::Error::other("a slot longer than an aggregate"),
            )
        };
        let mut count = 0;
        while count < max {
            let offset = socket.next as usize * FRAME_SIZE as usize;
            let ring = &socket.ring;
            let status_word = ring.u32_at(offset).map_err(oob)?;
            let status = status_word.load(Ordering::Acquire);
            if status & TP_STATUS_USER == 0 {
                break;
            }
            let word = |at: usize| ring.u32_at(offset + at).map(|w| w.load(Ordering::Relaxed));
            let len = word(HDR_LEN).map_err(oob)? as usize;
            let snaplen = word(HDR_SNAPLEN).map_err(oob)? as usize;
            let [m0, m1, _, _] = word(HDR_MAC).map_err(oob)?.to_ne_bytes();
            let mac = usize::from(u16::from_ne_bytes([m0, m1]));
            let header_at = mac.checked_sub(offload::HEADER_LEN);
            let fits = mac
                .checked_add(snaplen)
                .is_some_and(|end| end <= FRAME_SIZE as usize);
            if status & TP_STATUS_COPY != 0 {
                // The whole frame waits on the socket, after every earlier one.
                match rustix::net::recv(
                    &socket.fd,
                    &mut scratch[..],
                    rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::TRUNC,
                ) {
                    Ok((_, n)) if (offload::HEADER_LEN..=scratch.len()).contains(&n) => {
                        let header = VirtioNetHeader::parse(scratch).unwrap_or_default();
                        let frame = &scratch[offload::HEADER_LEN..n];
                        count += stats.admit_offloaded(batch, frame, &header);
                    }
                    _ => stats.rx_dropped += 1,
                }
            } else if let (Some(header_at), true, true) = (header_at, fits, snaplen == len) {
                let mut raw = [0u8; offload::HEADER_LEN];
                ring.copy_out(offset + header_at, &mut raw).map_err(oob)?;
                let header = VirtioNetHeader::parse(&raw).unwrap_or_default();
                if header.is_aggregate() {
                    let aggregate = scratch.get_mut(..len).ok_or_else(too_long)?;
                    ring.copy_out(offset + mac, aggregate).map_err(oob)?;
                    count += stats.admit_offloaded(batch, aggregate, &header);
                } else if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
                    stats.rx_dropped += 1;
                } else {
                    let copied = batch.push_with(0, |buffer| {
                        buffer.resize(len, 0);
                        ring.copy_out(offset + mac, buffer)
                            .map_err(SlotError::OutOfBounds)?;
                        offload::complete_checksum(buffer, &header).map_err(SlotError::Offload)
                    });
                    count += match copied {
                        Ok(completed) => stats.count_completion(Ok(completed), len),
                        Err(SlotError::Offload(e)) => stats.count_completion(Err(e), len),
                        Err(SlotError::OutOfBounds(e)) => return Err(oob(e)),
                    };
                }
            } else {
                // Cut short by the kernel and not queued whole (its socket queue was full).
                stats.rx_dropped += 1;
            }
            status_word.store(TP_STATUS_KERNEL, Ordering::Release);
            socket.next = (socket.next + 1) % FRAME_COUNT;
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        // A link seen down is still asked: the kernel's own answer (ENETDOWN for an interface
        // set down) is the truth, while the RUNNING flag we last read lags the carrier by up
        // to a second after the interface comes up, and frames refused on that stale flag
        // would be lost though the kernel could send them.
        if self.state == LinkState::Gone {
            return Ok(0);
        }
        let Some(socket) = &self.socket else {
            return Ok(0);
        };
        let header = VirtioNetHeader::NONE.to_bytes();
        let mut done = 0;
        let mut down = None;
        while done < frames.len() {
            let chunk = &frames[done..frames.len().min(done + MAX_MESSAGES_PER_CALL)];
            let vectors: Vec<[IoSlice<'_>; 2]> = chunk
                .iter()
                .map(|frame| [IoSlice::new(&header), IoSlice::new(frame)])
                .collect();
            let mut controls: Vec<rustix::net::SendAncillaryBuffer<'_, '_, '_>> =
                chunk.iter().map(|_| Default::default()).collect();
            let mut messages: Vec<rustix::net::MMsgHdr<'_>> = vectors
                .iter()
                .zip(controls.iter_mut())
                .map(|(vector, control)| rustix::net::MMsgHdr::new(vector, control))
                .collect();
            match rustix::net::sendmmsg(&socket.fd, &mut messages, rustix::net::SendFlags::empty())
            {
                Ok(sent) => {
                    for frame in &chunk[..sent] {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += frame.len() as u64;
                    }
                    done += sent;
                    if sent == 0 {
                        break;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::NOBUFS) => break,
                Err(
                    e @ (rustix::io::Errno::NETDOWN
                    | rustix::io::Errno::NXIO
                    | rustix::io::Errno::NODEV),
                ) => {
                    down = Some(e);
                    break;
                }
                // A frame the kernel refuses (longer than the MTU, say): it alone is lost.
                Err(_) => {
                    self.stats.tx_errors += 1;
                    done += 1;
                }
            }
        }
        if let Some(errno) = down {
            self.note_down(errno);
        }
        Ok(done)
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(|s| s.fd.as_fd())
    }

    fn set_unicast_macs(&mut self, macs: &[[u8; 6]]) -> Result<(), LinkError> {
        self.set_memberships(Membership::Unicast, macs)
    }

    fn set_multicast_macs(&mut self, macs: &[[u8; 6]]) -> Result<(), LinkError> {
        self.set_memberships(Membership::Multicast, macs)
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }

    fn state(&self) -> LinkState {
        self.state
    }

    fn state_reason(&self) -> Option<String> {
        self.reason.clone()
    }

    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.watch.as_ref().map(LinkWatch::fd)
    }

    fn refresh(&mut self) {
        if let Some(watch) = &self.watch {
            watch.drain();
        }
        if let Some(socket) = &self.socket {
            // Reading SO_ERROR clears it, and with it the socket's POLLERR.
            let _ = rustix::net::sockopt::socket_error(&socket.fd);
            if let Ok(drops) = crate::sys::packet_drops(socket.fd.as_fd()) {
                self.stats.rx_dropped_kernel += drops;
            }
        }
        let iface = match crate::sys::interface(self.probe.as_fd(), &self.ifname) {
            Ok(Some(iface)) => iface,
            Ok(None) => {
                self.socket = None;
                self.set_state(LinkState::Gone, Some("no such interface".to_string()));
                return;
            }
            // The question could not be asked; the state stays what it was.
            Err(_) => return,
        };
        if self.socket.as_ref().map(|s| s.ifindex) != Some(iface.index) {
            // Deleted and created again (or back from another namespace): a new incarnation.
            self.socket = None;
            if iface.mac != self.info.mac {
                let reason = format!(
                    "an interface {} is back with MAC {}, not {}; not adopted, since clients \
                     and peers know the old address",
                    self.ifname,
                    mac_text(iface.mac),
                    mac_text(self.info.mac)
                );
                self.set_state(LinkState::Gone, Some(reason));
                return;
            }
            match Socket::open(&self.ifname, iface.index) {
                Ok(socket) => {
                    for (kind, macs) in [
                        (Membership::Unicast, &self.unicast),
                        (Membership::Multicast, &self.multicast),
                    ] {
                        for &mac in macs {
                            let (fd, ifindex) = (socket.fd.as_fd(), socket.ifindex);
                            if let Err(e) = packet_membership(fd, ifindex, kind, mac, true) {
                                tracing::warn!(
                                    "{} does not accept frames for {}: {e}",
                                    self.ifname,
                                    member_text(kind, mac)
                                );
                            }
                        }
                    }
                    self.socket = Some(socket);
                }
                Err(e) => {
                    self.set_state(LinkState::Gone, Some(format!("re-opening it: {e}")));
                    return;
                }
            }
        }
        let (state, reason) = interface_state(&iface);
        self.set_state(state, reason);
    }
}
