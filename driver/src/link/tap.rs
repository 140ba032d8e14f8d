//! `tap:NAME`: a TAP device, created if it does not exist or attached if it does (needs
//! `CAP_NET_ADMIN`). Each read is one frame the host kernel sent out of the device; each
//! write is one frame the kernel receives on it.
//!
//! The driver is the far end of the TAP's virtual wire, so the link's MAC address is not the
//! device's: it is the locally administered address [`super::info_for`] derives from the spec.
//! The driver neither brings the device up nor configures addresses: that is the host
//! administrator's business (`ip link set NAME up`). A device the driver created disappears
//! when the link is dropped; an existing persistent one stays.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{FrameBatch, Link, LinkError, LinkInfo, LinkStats};
use netmux_ring::MAX_FRAME_LEN;

/// An attached TAP device.
#[derive(Debug)]
pub struct TapLink {
    info: LinkInfo,
    fd: OwnedFd,
    ifname: String,
    /// One byte longer than the largest frame, so an oversized frame shows as a long read.
    buffer: Vec<u8>,
    stats: LinkStats,
}

impl TapLink {
    /// Creates or attaches the TAP device `name`.
    pub fn open(name: &str, info: LinkInfo) -> Result<Self, LinkError> {
        let (fd, ifname) = crate::sys::open_tap(name)
            .map_err(|e| LinkError::io(format!("opening TAP device {name}"), e))?;
        Ok(Self {
            info,
            fd,
            ifname,
            buffer: vec![0; MAX_FRAME_LEN + 1],
            stats: LinkStats::default(),
        })
    }

    /// The interface name the kernel confirmed.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

impl Link for TapLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let mut count = 0;
        while count < max {
            let len = match rustix::io::read(&self.fd, &mut self.buffer[..]) {
                Ok(len) => len,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(LinkError::io("reading from the TAP device", e.into())),
            };
            if self.stats.admit(batch, &self.buffer[..len]) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        for (i, frame) in frames.iter().enumerate() {
            match rustix::io::write(&self.fd, frame) {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(i),
                // Device down, frame too big for it: this frame is lost, like on a cable.
                Err(_) => self.stats.tx_errors += 1,
            }
        }
        Ok(frames.len())
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }
}
