//! The system calls behind the privileged link descriptors: a TAP device and an AF_PACKET
//! socket with a PACKET_MMAP receive ring (mapped with [`netmux_ring::sys::SharedMapping`],
//! since the kernel writes it concurrently just as a client would write its ring).
//!
//! This is the only module of the driver crate that may contain `unsafe` code; each `unsafe`
//! block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `struct ifreq` as `TUNSETIFF` reads it: the interface name, then the flags (a `short`),
/// padded to the kernel's 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and creates or attaches the TAP device `name` (no packet-information
/// header: each read or write is exactly one Ethernet frame). The descriptor is non-blocking.
/// Returns the descriptor and the interface name the kernel confirmed. Needs `CAP_NET_ADMIN`.
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1 to 15 bytes, none of them NUL",
        ));
    }
    let fd = rustix::fs::open(
        "/dev/net/tun",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut request = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `request` is a live, writable,
    // correctly laid out (repr(C), 40 bytes) value for the duration of the call, and `fd` is
    // an open descriptor of /dev/net/tun that we own.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TUNSETIFF,
            &mut request as *mut IfReqFlags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = request
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(libc::IFNAMSIZ);
    Ok((
        fd,
        String::from_utf8_lossy(&request.name[..len]).into_owned(),
    ))
}

/// The geometry of an AF_PACKET receive ring (`struct tpacket_req`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PacketRingRequest {
    /// Bytes per block (a multiple of the page size and of `frame_size`).
    pub block_size: u32,
    /// Number of blocks.
    pub block_count: u32,
    /// Bytes per frame slot (a multiple of 16).
    pub frame_size: u32,
    /// Number of frame slots (`block_size / frame_size * block_count`).
    pub frame_count: u32,
}

/// `enum tpacket_versions`: `TPACKET_V1` is 0, `TPACKET_V2` 1 (its 32-byte frame header is
/// what [`crate::link`] parses).
const TPACKET_V2: libc::c_int = 1;

fn setsockopt_packet<T>(fd: BorrowedFd<'_>, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of exactly the length we pass; the kernel only
    // reads it. `fd` is an open socket for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_PACKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a non-blocking AF_PACKET socket for all protocols on interface `ifindex`, with a
/// TPACKET_V2 receive ring of geometry `ring` that ignores frames the host itself sends out
/// that interface. The ring is then mapped with [`SharedMapping::map`] over
/// `block_size * block_count` bytes. Needs `CAP_NET_RAW`.
pub fn open_packet_socket(ifindex: u32, ring: &PacketRingRequest) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) takes only integers; on success we take sole ownership of the new
    // descriptor right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    setsockopt_packet(fd.as_fd(), libc::PACKET_VERSION, &TPACKET_V2)?;
    // Since Linux 4.20; older kernels would also hand us our own transmissions.
    setsockopt_packet(
        fd.as_fd(),
        libc::PACKET_IGNORE_OUTGOING,
        &(1 as libc::c_int),
    )?;
    setsockopt_packet(fd.as_fd(), libc::PACKET_RX_RING, ring)?;
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as libc::c_ushort;
    address.sll_protocol = protocol;
    address.sll_ifindex = ifindex;
    // SAFETY: `address` is a live sockaddr_ll and we pass its exact size; the kernel only
    // reads it.
    let rc = unsafe {
        libc::bind(
            raw,
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
