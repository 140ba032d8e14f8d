//! `afpacket:IFNAME`: an existing interface through an AF_PACKET socket whose receive path is
//! a PACKET_MMAP ring (TPACKET_V2) shared with the kernel (needs `CAP_NET_RAW`).
//!
//! The kernel fills ring frames and flips each frame's status word to `TP_STATUS_USER`; we
//! load the status with `Acquire`, copy the frame into driver-private memory, and hand the
//! slot back by storing `TP_STATUS_KERNEL` with `Release` (the protocol of the kernel's
//! `packet_mmap` documentation). The ring is read through [`crate::sys::SharedMapping`], so
//! every offset the kernel's header gives us is bounds-checked like any other shared memory.
//! Frames the host itself sends out of the interface are ignored (`PACKET_IGNORE_OUTGOING`).
//! Transmission uses `send` on the bound socket (no transmit ring yet).
//!
//! Frames that did not fit a ring slot (`tp_snaplen < tp_len`: with 2,048-byte slots, frames
//! over about 1,980 bytes, such as GRO aggregates on an interface with offloads on) are dropped
//! and counted: the classifier must never see a truncated frame. Turn receive offloads off on
//! interfaces that produce them (`ethtool -K IFNAME gro off lro off`).
//!
//! The link's MAC address and MTU are the interface's, read from `/sys/class/net`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::{FrameBatch, Link, LinkError, LinkInfo, LinkStats, MIN_FRAME_LEN};
use crate::sys::PacketRingRequest;
use netmux_ring::sys::SharedMapping;
use netmux_ring::MAX_FRAME_LEN;

/// Bytes per ring slot: a 1,514-byte frame plus the TPACKET_V2 header and address.
const FRAME_SIZE: u32 = 2048;
/// Bytes per ring block: 32 KiB (a multiple of the page size, 16 slots).
const BLOCK_SIZE: u32 = 32 * 1024;
/// Blocks in the ring: 64, so 1,024 slots and 2 MiB per link.
const BLOCK_COUNT: u32 = 64;

/// `TP_STATUS_KERNEL`: the slot belongs to the kernel.
const TP_STATUS_KERNEL: u32 = 0;
/// `TP_STATUS_USER`: the slot holds a frame for us.
const TP_STATUS_USER: u32 = 1;
/// `struct tpacket2_hdr` field offsets.
const HDR_LEN: usize = 4;
const HDR_SNAPLEN: usize = 8;
const HDR_MAC: usize = 12;

/// An interface attached through AF_PACKET with a receive ring.
#[derive(Debug)]
pub struct AfPacketLink {
    info: LinkInfo,
    /// Declared before `fd`: the mapping goes away before the socket closes.
    ring: SharedMapping,
    fd: OwnedFd,
    next: u32,
    stats: LinkStats,
}

fn sysfs(ifname: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/{file}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl AfPacketLink {
    /// Attaches to the existing interface `ifname`.
    pub fn open(ifname: &str, mut info: LinkInfo) -> Result<Self, LinkError> {
        let probe = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            None,
        )
        .map_err(|e| LinkError::io("creating a probe socket", e.into()))?;
        let ifindex = rustix::net::netdevice::name_to_index(&probe, ifname)
            .map_err(|e| LinkError::io(format!("looking up interface {ifname}"), e.into()))?;
        let request = PacketRingRequest {
            block_size: BLOCK_SIZE,
            block_count: BLOCK_COUNT,
            frame_size: FRAME_SIZE,
            frame_count: BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT,
        };
        let fd = crate::sys::open_packet_socket(ifindex, &request)
            .map_err(|e| LinkError::io(format!("opening AF_PACKET on {ifname}"), e))?;
        let ring = SharedMapping::map(fd.as_fd(), (BLOCK_SIZE * BLOCK_COUNT) as usize)
            .map_err(|e| LinkError::io("mapping the AF_PACKET ring", e))?;
        if let Some(mac) = sysfs(ifname, "address").as_deref().and_then(parse_mac) {
            info.mac = mac;
        }
        if let Some(mtu) = sysfs(ifname, "mtu").and_then(|m| m.parse().ok()) {
            info.mtu = mtu;
        }
        Ok(Self {
            info,
            ring,
            fd,
            next: 0,
            stats: LinkStats::default(),
        })
    }

    /// Copies the frame in slot `offset` into `batch`, if it is whole and of a sane size.
    fn take_slot(&self, offset: usize, batch: &mut FrameBatch) -> Result<bool, LinkError> {
        let word = |at: usize| {
            self.ring
                .u32_at(offset + at)
                .map(|w| w.load(Ordering::Relaxed))
        };
        let oob = |e| LinkError::io("reading the AF_PACKET ring", std::io::Error::other(e));
        let len = word(HDR_LEN).map_err(oob)? as usize;
        let snaplen = word(HDR_SNAPLEN).map_err(oob)? as usize;
        let [m0, m1, _, _] = word(HDR_MAC).map_err(oob)?.to_ne_bytes();
        let mac = usize::from(u16::from_ne_bytes([m0, m1]));
        let fits = mac
            .checked_add(snaplen)
            .is_some_and(|end| end <= FRAME_SIZE as usize);
        if !fits || snaplen != len || !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Ok(false);
        }
        let ring = &self.ring;
        batch
            .push_with(0, |buffer| {
                buffer.resize(len, 0);
                ring.copy_out(offset + mac, buffer)
            })
            .map_err(oob)?;
        Ok(true)
    }
}

impl Link for AfPacketLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let frame_count = BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT;
        let mut count = 0;
        while count < max {
            let offset = self.next as usize * FRAME_SIZE as usize;
            let status = self.ring.u32_at(offset).map_err(|e| {
                LinkError::io("reading the AF_PACKET ring", std::io::Error::other(e))
            })?;
            if status.load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            let before = batch.len();
            if self.take_slot(offset, batch)? {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += batch.get(before).map_or(0, |f| f.len() as u64);
                count += 1;
            } else {
                self.stats.rx_dropped += 1;
            }
            status.store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % frame_count;
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        for (i, frame) in frames.iter().enumerate() {
            match rustix::net::send(&self.fd, frame, rustix::net::SendFlags::empty()) {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::NOBUFS) => return Ok(i),
                // Interface down, frame larger than its MTU: this frame is lost.
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
