//! The system calls behind the rings: sealed memfds, shared mappings and eventfds.
//!
//! This is the only module of the ring crate that may contain `unsafe` code, and it keeps
//! the unsafety behind a small safe interface:
//!
//! - [`SharedMapping`] maps a file `MAP_SHARED` and hands out *only* bounds-checked, aligned
//!   `&AtomicU32`/`&AtomicU64` references into it and raw byte copies in and out of it. It never
//!   hands out `&[u8]` or `&mut [u8]` over the mapping: the process on the other side may write
//!   any byte at any moment, so a Rust reference that promises "nobody else changes this" would
//!   be a lie. Every access checks its offset against the mapping's length, so a bogus offset
//!   (from a corrupted header, say) is an error, never an access outside the mapping.
//! - [`create_sealed_memfd`] creates the ring memory with `MFD_ALLOW_SEALING | MFD_CLOEXEC`,
//!   sizes it and seals it with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, so nobody (client
//!   or driver) can ever shrink it under a live mapping and turn an access into `SIGBUS`.
//! - [`Doorbell`] is one end of a queue's wake-up line (a stream socket pair): each side
//!   holds one descriptor and rings the other through it, so a queue costs the driver two
//!   descriptors while it is handed out (its memory and its doorbell) and one afterwards.
//! - [`EventFd`] wraps a non-blocking eventfd used for wake-ups.
//!
//! The driver's AF_PACKET backend maps the kernel's receive ring with [`SharedMapping`] too,
//! since the kernel writes it concurrently just as a client would.
//!
//! Concurrency argument for the mapping: the other process sees the same physical pages. Words
//! that both sides touch (indices, wake flags, slot headers, counters) are only ever accessed
//! through atomics, so a concurrent write by the peer is an atomic write racing with an atomic
//! read: the reader gets some value, never undefined behaviour. Payload bytes are copied with
//! `ptr::copy` through raw pointers, never through references. A peer that writes payload bytes
//! while we copy them can tear the copy; callers treat the copy as untrusted data and validate
//! it *after* copying (the driver runs its checks on its private copy only). Between processes
//! such a race lies outside the Rust memory model altogether; within one process (tests that
//! put both ends in one process) the ring protocol orders every payload copy after the write
//! it reads, and only a peer that breaks the protocol could race it. Copying byte by byte
//! through `AtomicU8` would make even that case well-defined, at a cost the data path cannot
//! pay; raw copies into private memory are what shared-memory rings (io_uring, AF_XDP users)
//! do.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// Seals every ring memfd carries: it can neither shrink (which would make a live mapping
/// fault with `SIGBUS`) nor grow, and the seals themselves cannot change any more.
pub const RING_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// An access to shared ring memory that would fall outside the mapping or be misaligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at offset {offset} is outside a {mapping_len}-byte mapping or misaligned")]
pub struct OutOfBounds {
    /// Offset of the attempted access.
    pub offset: usize,
    /// Length of the attempted access.
    pub len: usize,
    /// Length of the mapping.
    pub mapping_len: usize,
}

/// A `MAP_SHARED`, read-write mapping of a whole file, unmapped on drop.
///
/// Only bounds-checked atomic references and raw copies are available; see the module comment.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access through it is atomic or
// a raw copy that tolerates concurrent writers (see the module comment), so sharing the handle
// between threads adds nothing the other process cannot already do.
unsafe impl Send for SharedMapping {}
// SAFETY: as for `Send`: `&SharedMapping` only offers atomic accesses and raw copies.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd` shared and read-write.
    ///
    /// The caller must make sure the file cannot shrink below `len` while mapped (ring memfds
    /// carry `F_SEAL_SHRINK`); otherwise an access may fault with `SIGBUS`.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map zero bytes",
            ));
        }
        // SAFETY: we ask the kernel for a fresh mapping at an address of its choice (null hint,
        // no MAP_FIXED), so no existing Rust object is affected. The result is owned by the
        // returned value and unmapped exactly once, in `Drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Self { ptr, len })
    }

    fn check(&self, offset: usize, len: usize, align: usize) -> Result<(), OutOfBounds> {
        let err = OutOfBounds {
            offset,
            len,
            mapping_len: self.len,
        };
        let end = offset.checked_add(len).ok_or(err)?;
        // The mapping is page-aligned, so aligning the offset aligns the address.
        if end > self.len || !offset.is_multiple_of(align) {
            return Err(err);
        }
        Ok(())
    }

    /// The 32-bit atomic word at `offset`.
    #[inline]
    pub fn u32_at(&self, offset: usize) -> Result<&AtomicU32, OutOfBounds> {
        self.check(offset, 4, 4)?;
        // SAFETY: `offset..offset + 4` lies inside the mapping and is 4-aligned (checked above;
        // the mapping itself is page-aligned). The memory stays mapped for as long as `self`
        // lives, which bounds the returned lifetime. `AtomicU32` has the size and alignment of
        // `u32`, every bit pattern is a valid value, and all our accesses to the word are
        // atomic, so concurrent writes by another thread or process are not a data race on
        // our side.
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    /// The 64-bit atomic word at `offset`.
    #[inline]
    pub fn u64_at(&self, offset: usize) -> Result<&AtomicU64, OutOfBounds> {
        self.check(offset, 8, 8)?;
        // SAFETY: as in `u32_at`, for an 8-byte, 8-aligned word inside the mapping.
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() })
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping.
    ///
    /// The bytes may be changing under us (the peer can write at any time); the copy is then
    /// torn, which callers must tolerate by validating the copy rather than the source.
    #[inline]
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, dst.len(), 1)?;
        // SAFETY: the source range is inside the mapping (checked above) and cannot overlap
        // `dst`, which is a Rust slice we hold exclusively (the mapping is never exposed as a
        // slice). We read through a raw pointer, never a reference.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Ok(())
    }

    /// Copies `src` into the mapping at `offset`.
    #[inline]
    pub fn copy_in(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, src.len(), 1)?;
        // SAFETY: the destination range is inside the mapping (checked above) and cannot
        // overlap `src`, which is an ordinary Rust slice (the mapping is never exposed as one).
        // We write through a raw pointer; no reference to the destination exists.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len());
        }
        Ok(())
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping `map` created, which is unmapped
        // only here; every reference handed out borrows `self`, so none outlives this call.
        let result = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a mapping we created cannot fail short of a kernel bug; there is nobody to
        // report to from `drop`.
        let _ = result;
    }
}

/// Creates a memfd of exactly `len` bytes, zero-filled, with [`RING_SEALS`] applied.
pub fn create_sealed_memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, RING_SEALS)?;
    Ok(fd)
}

/// Whether `fd` carries at least the seals that make a mapping of it safe from `SIGBUS`
/// (`F_SEAL_SHRINK`) and fixed in size (`F_SEAL_GROW`).
pub fn has_ring_seals(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    Ok(seals.contains(SealFlags::SHRINK | SealFlags::GROW))
}

/// Size of the file behind `fd`, in bytes.
pub fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let stat = rustix::fs::fstat(fd)?;
    u64::try_from(stat.st_size).map_err(|_| io::Error::other("negative file size"))
}

/// Reads [`Doorbell::drain`] makes at most.
pub const DRAIN_READS: usize = 4;

/// One end of a queue's wake-up line: a non-blocking `AF_UNIX` stream socket whose peer is
/// the other side's end ([`Doorbell::pair`]).
///
/// Each direction has its own buffer, so one descriptor per side carries wake-ups both ways
/// and neither side can take the other's: [`ring`](Self::ring) writes a byte into the peer's
/// receive buffer, [`drain`](Self::drain) empties this end's. Two eventfds would need both
/// descriptors on both sides (an eventfd has one counter: a side that waits on the same one it
/// signals could reset the other's wake-up). When the peer closes its end (its process ended,
/// or the queue was destroyed) this end stays readable and [`drain`](Self::drain) says so with
/// [`io::ErrorKind::BrokenPipe`]; a pending wake-up is at most one buffer's worth of bytes the
/// peer itself pays for.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A connected pair of ends (`SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC`): one for the
    /// driver, one for the client.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// Adopts an end received from elsewhere, checking that it is a stream socket, and makes
    /// it non-blocking (so a peer that fills the buffer cannot make us block on a write).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(&fd)?;
        let is_socket =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Socket;
        if !is_socket || rustix::net::sockopt::socket_type(&fd)? != rustix::net::SocketType::STREAM
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a queue's doorbell must be a stream socket",
            ));
        }
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Wakes the other side. A full buffer means a wake-up is already pending, and a closed
    /// peer has nobody left to wake: both are success.
    pub fn ring(&self) -> io::Result<()> {
        use rustix::net::SendFlags;
        match rustix::net::send(&self.fd, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_)
            | Err(rustix::io::Errno::AGAIN)
            | Err(rustix::io::Errno::PIPE)
            | Err(rustix::io::Errno::CONNRESET) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the pending wake-ups. Returns whether there was one; an error of kind
    /// [`io::ErrorKind::BrokenPipe`] when the other side has closed its end (it will never
    /// ring again, and this end stays readable).
    ///
    /// The peer rings with one byte, but a hostile one may write as much as its buffer takes:
    /// at most [`DRAIN_READS`] reads of 4 KiB are made, and what is left keeps this end
    /// readable, which is what a wake-up is anyway. The peer can only make its own queue look
    /// busy, never cost this side more than a few reads per look.
    pub fn drain(&self) -> io::Result<bool> {
        use rustix::net::RecvFlags;
        let mut buf = [0u8; 4096];
        let mut rung = false;
        for _ in 0..DRAIN_READS {
            match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the other end of the queue's doorbell is closed",
                    ))
                }
                Ok((n, _)) => {
                    rung = true;
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(rung),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::CONNRESET) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the other end of the queue's doorbell is closed",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(rung)
    }

    /// Sleeps until this end is readable (a wake-up, or the peer closed) or `timeout` passes
    /// (`None`: forever). Returns whether it became readable. Takes nothing.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        wait_readable(self.fd.as_fd(), timeout)
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Doorbell> for OwnedFd {
    fn from(bell: Doorbell) -> OwnedFd {
        bell.fd
    }
}

/// Polls one descriptor for readability, retrying on `EINTR`.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let timeout = match timeout {
        Some(t) => Some(
            rustix::event::Timespec::try_from(t)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "timeout too long"))?,
        ),
        None => None,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A non-blocking eventfd used as a wake-up doorbell.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a fresh eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`, counter zero).
    pub fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Self { fd })
    }

    /// Adopts an eventfd received from elsewhere and makes sure it is non-blocking (so a peer
    /// that saturates the counter cannot make us block on a write).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Adds one to the counter, waking a sleeper. A saturated counter (only a misbehaving peer
    /// can saturate it) means a wake-up is already pending, so `EAGAIN` is success.
    pub fn signal(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resets the counter to zero. Returns whether it was non-zero.
    pub fn drain(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sleeps until the counter is non-zero or `timeout` passes (`None`: forever). Returns
    /// whether the eventfd became readable. Does not reset the counter.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        wait_readable(self.fd.as_fd(), timeout)
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
