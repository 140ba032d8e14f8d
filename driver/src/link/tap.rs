//! `tap:NAME`: a TAP device, created if it does not exist or attached if it does (needs
//! `CAP_NET_ADMIN`). Each read is one frame the host kernel sent out of the device; each
//! write is one frame the kernel receives on it.
//!
//! The driver is the far end of the TAP's virtual wire, so the link's MAC address is not the
//! device's: it is the locally administered address [`super::info_for`] derives from the spec.
//! The driver neither brings the device up nor configures addresses: that is the host
//! administrator's business (`ip link set NAME up`). A device the driver created disappears
//! when the link is dropped; an existing persistent one stays.
//!
//! # Frames as Linux hands them over
//!
//! The device is opened with `IFF_VNET_HDR`, and `TUNSETOFFLOAD` announces what the driver
//! finishes itself ([`crate::sys::TAP_OFFLOADS`]: partial checksums, TCP aggregates over IPv4
//! and IPv6, UDP aggregates), so the kernel hands over frames of up to 64 KiB with a
//! virtio-net header, one `read` each, instead of segmenting and checksumming them first;
//! [`LinkStats::admit_offloaded`] finishes them in the driver's private copy.
//!
//! # Transmitting
//!
//! One `writev` per frame (a zero virtio-net header, then the frame): a TAP device is a
//! character device, and Linux has no call that writes several frames to one at once
//! (`vhost-net` batches inside the kernel only).
//!
//! # Down, back, gone
//!
//! What the descriptor itself says, wherever the device lives (it may have been moved into
//! another network namespace): a device set down refuses writes with `EIO` and never polls
//! writable, so the link is down until it polls writable again; a deleted device answers
//! `EBADFD` and polls `POLLERR` for ever, so the descriptor is closed at once (no spinning)
//! and the link is gone until a TAP device of the same name exists again in the driver's
//! network namespace, which is then attached.

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::watch::{self, LinkWatch};
use super::{FrameBatch, Link, LinkError, LinkInfo, LinkState, LinkStats};
use netmux_wire::offload::{self, VirtioNetHeader};

/// An attached TAP device.
#[derive(Debug)]
pub struct TapLink {
    info: LinkInfo,
    /// The name asked for (and re-attached after a deletion).
    name: String,
    ifname: String,
    /// `None` while the device is gone.
    fd: Option<OwnedFd>,
    /// The `TUNSETOFFLOAD` flags the kernel accepted.
    offloads: libc::c_uint,
    probe: OwnedFd,
    watch: Option<LinkWatch>,
    state: LinkState,
    reason: Option<String>,
    /// One read: the virtio-net header and the largest aggregate, and a byte more, so an
    /// oversized frame shows as a long read.
    buffer: Vec<u8>,
    stats: LinkStats,
}

impl TapLink {
    /// Creates or attaches the TAP device `name`.
    pub fn open(name: &str, info: LinkInfo) -> Result<Self, LinkError> {
        let (fd, ifname, offloads) = crate::sys::open_tap(name)
            .map_err(|e| LinkError::io(format!("opening TAP device {name}"), e))?;
        let probe =
            crate::sys::probe_socket().map_err(|e| LinkError::io("creating a probe socket", e))?;
        let watch = watch::open_or_log(&info.spec);
        let mut link = Self {
            info,
            name: name.to_string(),
            ifname,
            fd: Some(fd),
            offloads,
            probe,
            watch,
            state: LinkState::Up,
            reason: None,
            buffer: vec![0; offload::HEADER_LEN + offload::MAX_AGGREGATE_LEN + 1],
            stats: LinkStats::default(),
        };
        link.look();
        Ok(link)
    }

    /// The interface name the kernel confirmed.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The offloads announced to the kernel (`TUN_F_*`).
    pub fn offloads(&self) -> libc::c_uint {
        self.offloads
    }

    fn set_state(&mut self, state: LinkState, reason: Option<&str>) {
        self.state = state;
        self.reason = reason.map(str::to_string);
    }

    /// The device was deleted: close the descriptor, which would poll `POLLERR` for ever.
    fn gone(&mut self) {
        self.fd = None;
        self.set_state(LinkState::Gone, Some("the TAP device was deleted"));
    }

    /// Reads the state off the descriptor: `POLLERR` is a deleted device, writable is up, not
    /// writable is down.
    fn look(&mut self) {
        let Some(fd) = &self.fd else {
            return;
        };
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(fd, PollFlags::OUT)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // A failed poll tells nothing: the state stays what it was.
        if poll(&mut fds, Some(&zero)).is_ok() {
            let events = fds[0].revents();
            if events.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                self.gone();
            } else if events.contains(PollFlags::OUT) {
                self.set_state(LinkState::Up, None);
            } else {
                self.set_state(LinkState::Down, Some("the TAP device is down"));
            }
        }
    }

    /// While gone: attaches the device again if one of its name exists in the driver's network
    /// namespace (`TUNSETIFF` would create it otherwise, which is not ours to do).
    fn reattach(&mut self) {
        match crate::sys::interface(self.probe.as_fd(), &self.name) {
            Ok(Some(_)) => {}
            _ => return,
        }
        match crate::sys::open_tap(&self.name) {
            Ok((fd, ifname, offloads)) => {
                self.fd = Some(fd);
                self.ifname = ifname;
                self.offloads = offloads;
                self.look();
            }
            Err(e) => {
                let reason = format!("a device {} exists but cannot be attached: {e}", self.name);
                self.reason = Some(reason);
            }
        }
    }
}

impl Link for TapLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let mut count = 0;
        while count < max {
            let Some(fd) = &self.fd else {
                break;
            };
            let len = match rustix::io::read(fd, &mut self.buffer[..]) {
                Ok(len) => len,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::BADFD) => {
                    self.gone();
                    break;
                }
                Err(e) => return Err(LinkError::io("reading from the TAP device", e.into())),
            };
            let Some(header) = VirtioNetHeader::parse(&self.buffer[..len]) else {
                self.stats.rx_dropped += 1;
                continue;
            };
            let frame = &self.buffer[offload::HEADER_LEN..len];
            count += self.stats.admit_offloaded(batch, frame, &header);
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        if self.state == LinkState::Down {
            // One poll: a device set up again is used at once, not at the next refresh.
            self.look();
        }
        if self.state != LinkState::Up {
            return Ok(0);
        }
        let header = VirtioNetHeader::NONE.to_bytes();
        for (i, frame) in frames.iter().enumerate() {
            let Some(fd) = &self.fd else {
                return Ok(i);
            };
            match rustix::io::writev(fd, &[IoSlice::new(&header), IoSlice::new(frame)]) {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(i),
                Err(rustix::io::Errno::IO) => {
                    self.set_state(LinkState::Down, Some("the TAP device is down"));
                    return Ok(i);
                }
                Err(rustix::io::Errno::BADFD) => {
                    self.gone();
                    return Ok(i);
                }
                // A frame the device refuses (too big for it): this frame is lost, like on a
                // cable.
                Err(_) => self.stats.tx_errors += 1,
            }
        }
        Ok(frames.len())
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
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
        if self.fd.is_some() {
            self.look();
        } else {
            self.reattach();
        }
    }
}
