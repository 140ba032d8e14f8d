//! The system calls behind the privileged link descriptors: a TAP device with a virtio-net
//! header, an AF_PACKET socket with a virtio-net header and a PACKET_MMAP receive ring
//! (mapped with [`netmux_ring::sys::SharedMapping`], since the kernel writes it concurrently
//! just as a client would write its ring), an interface's properties by name, and the
//! rtnetlink socket that announces link changes.
//!
//! This is the only module of the driver crate that may contain `unsafe` code; each `unsafe`
//! block says why it is sound. System calls that rustix wraps safely (`sendmmsg`, `writev`,
//! `recv`, `SO_ERROR`, `poll`) are made where they are used.

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

/// The offloads a TAP device is told the driver handles (`TUNSETOFFLOAD`), in the order they
/// are tried: the kernel may then hand over partial checksums, TCP aggregates (IPv4, IPv6,
/// with ECN) and UDP aggregates ([`netmux_wire::offload`] finishes all of them). UDP
/// segmentation offload exists since Linux 6.2; an older kernel refuses it and gets the next.
pub const TAP_OFFLOADS: [libc::c_uint; 3] = [
    libc::TUN_F_CSUM
        | libc::TUN_F_TSO4
        | libc::TUN_F_TSO6
        | libc::TUN_F_TSO_ECN
        | libc::TUN_F_USO4
        | libc::TUN_F_USO6,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
    libc::TUN_F_CSUM,
];

/// Opens `/dev/net/tun` and creates or attaches the TAP device `name`, without the
/// packet-information header and with a virtio-net header
/// ([`netmux_wire::offload::HEADER_LEN`] bytes) before every frame read or written, and
/// announces the first of [`TAP_OFFLOADS`] the kernel accepts (none, if it accepts none: the
/// kernel then finishes every frame itself). The descriptor is non-blocking. Returns the
/// descriptor, the interface name the kernel confirmed and the offloads announced. Needs
/// `CAP_NET_ADMIN`.
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String, libc::c_uint)> {
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
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
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
    let ifname = String::from_utf8_lossy(&request.name[..len]).into_owned();
    let offloads = TAP_OFFLOADS
        .into_iter()
        .find(|&flags| set_tap_offload(fd.as_fd(), flags).is_ok())
        .unwrap_or(0);
    Ok((fd, ifname, offloads))
}

/// `TUNSETOFFLOAD`: the offloads the reader of a TAP device handles.
fn set_tap_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int in the pointer
    // argument); `fd` is an open TAP descriptor for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`interface`] reports about a network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// Its index.
    pub index: u32,
    /// Whether it is administratively up (`IFF_UP`).
    pub up: bool,
    /// Whether it is operationally up: up with a carrier (`IFF_RUNNING`).
    pub running: bool,
    /// Its MTU.
    pub mtu: u32,
    /// Its hardware address.
    pub mac: [u8; 6],
}

/// A socket for interface ioctls in the driver's network namespace.
pub fn probe_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?)
}

/// The interface called `name` in `probe`'s network namespace, or `None` if there is none.
pub fn interface(probe: BorrowedFd<'_>, name: &str) -> io::Result<Option<Interface>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1 to 15 bytes, none of them NUL",
        ));
    }
    let ask = |request: libc::c_ulong| -> io::Result<Option<libc::ifreq>> {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: the SIOCGIF* requests read the name and write one member of the union of
        // this live, properly laid out ifreq; `probe` is an open socket for the call.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&probe),
                request as _,
                &mut req as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(req))
    };
    let (Some(index), Some(flags), Some(mtu), Some(hwaddr)) = (
        ask(libc::SIOCGIFINDEX)?,
        ask(libc::SIOCGIFFLAGS)?,
        ask(libc::SIOCGIFMTU)?,
        ask(libc::SIOCGIFHWADDR)?,
    ) else {
        return Ok(None);
    };
    // SAFETY: each request above filled the union member read here.
    let (index, flags, mtu, data) = unsafe {
        (
            index.ifr_ifru.ifru_ifindex,
            flags.ifr_ifru.ifru_flags,
            mtu.ifr_ifru.ifru_mtu,
            hwaddr.ifr_ifru.ifru_hwaddr.sa_data,
        )
    };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    let flags = i32::from(flags);
    Ok(Some(Interface {
        index: u32::try_from(index).unwrap_or(0),
        up: flags & libc::IFF_UP != 0,
        running: flags & libc::IFF_RUNNING != 0,
        mtu: u32::try_from(mtu).unwrap_or(0),
        mac,
    }))
}

/// A non-blocking rtnetlink socket subscribed to link events (`RTMGRP_LINK`) of the calling
/// thread's network namespace.
pub fn open_link_events() -> io::Result<OwnedFd> {
    use rustix::net::{netlink, AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None, // NETLINK_ROUTE is protocol 0
    )?;
    rustix::net::bind(
        &fd,
        &netlink::SocketAddrNetlink::new(0, libc::RTMGRP_LINK as u32),
    )?;
    Ok(fd)
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
/// virtio-net header before every frame (`PACKET_VNET_HDR`: received frames say what the
/// kernel left unfinished, transmitted ones must start with a header too), a TPACKET_V2
/// receive ring of geometry `ring` that ignores frames the host itself sends out that
/// interface, and frames too long for a ring slot queued whole on the socket as well
/// (`PACKET_COPY_THRESH`: the slot then says `TP_STATUS_COPY`), with room for `queue_bytes`
/// of them. The ring is then mapped with [`SharedMapping::map`] over
/// `block_size * block_count` bytes. Needs `CAP_NET_RAW`.
///
/// [`SharedMapping::map`]: netmux_ring::sys::SharedMapping::map
pub fn open_packet_socket(
    ifindex: u32,
    ring: &PacketRingRequest,
    queue_bytes: usize,
) -> io::Result<OwnedFd> {
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
    // Before the ring: the kernel refuses to change the header size of a socket with one.
    setsockopt_packet(fd.as_fd(), libc::PACKET_VNET_HDR, &(1 as libc::c_int))?;
    // Since Linux 4.20; older kernels would also hand us our own transmissions.
    setsockopt_packet(
        fd.as_fd(),
        libc::PACKET_IGNORE_OUTGOING,
        &(1 as libc::c_int),
    )?;
    setsockopt_packet(fd.as_fd(), libc::PACKET_RX_RING, ring)?;
    setsockopt_packet(fd.as_fd(), libc::PACKET_COPY_THRESH, &(1 as libc::c_int))?;
    // SO_RCVBUFFORCE passes rmem_max with CAP_NET_ADMIN; without it, what SO_RCVBUF allows.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, queue_bytes).is_err() {
        rustix::net::sockopt::set_socket_recv_buffer_size(&fd, queue_bytes)?;
    }
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

/// Which address list of the interface a [`packet_membership`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// `PACKET_MR_UNICAST`: a secondary unicast address in the NIC's filter, or promiscuous
    /// mode where it has none (an instance's own MAC).
    Unicast,
    /// `PACKET_MR_MULTICAST`: an entry in the NIC's multicast filter, as a socket joining a
    /// group makes (a group a client joined).
    Multicast,
}

/// Asks the interface to accept frames for `mac` besides its own, in the list `kind` names, or
/// stops asking. The kernel keeps the membership as long as the socket lives.
pub fn packet_membership(
    fd: BorrowedFd<'_>,
    ifindex: u32,
    kind: Membership,
    mac: [u8; 6],
    add: bool,
) -> io::Result<()> {
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    let mut address = [0u8; 8];
    address[..6].copy_from_slice(&mac);
    let mr_type = match kind {
        Membership::Unicast => libc::PACKET_MR_UNICAST,
        Membership::Multicast => libc::PACKET_MR_MULTICAST,
    };
    let request = libc::packet_mreq {
        mr_ifindex: ifindex,
        mr_type: mr_type as libc::c_ushort,
        mr_alen: 6,
        mr_address: address,
    };
    let option = if add {
        libc::PACKET_ADD_MEMBERSHIP
    } else {
        libc::PACKET_DROP_MEMBERSHIP
    };
    setsockopt_packet(fd, option, &request)
}

/// The frames the kernel dropped for an AF_PACKET socket since the last call
/// (`PACKET_STATISTICS`, which clears its counters when read).
pub fn packet_drops(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` is a live tpacket_stats and `len` its exact size; the kernel writes at
    // most `len` bytes into it. `fd` is an open socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(stats.tp_drops))
}
