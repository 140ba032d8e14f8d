//! Link events from the kernel: an rtnetlink socket subscribed to `RTMGRP_LINK`, which is
//! readable whenever an interface of the driver's network namespace is added, removed, or
//! changes its flags or carrier.
//!
//! The messages are only a wake-up: [`LinkWatch::drain`] reads and discards them, and the link
//! then asks the kernel about its own interface by name (`SIOCGIFFLAGS` and friends), which
//! is the truth whatever was lost. An overrun (`ENOBUFS`) therefore loses nothing either.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Bytes read per `recv` while draining: one page of messages at a time.
const DRAIN_BUFFER: usize = 4096;
/// Reads per [`LinkWatch::drain`]: bounds the work one burst of events can cause per turn.
const MAX_DRAIN_READS: usize = 64;

/// An rtnetlink socket that wakes the driver on link events.
#[derive(Debug)]
pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    /// Opens the socket (non-blocking), or says why it could not.
    pub fn open() -> std::io::Result<LinkWatch> {
        Ok(LinkWatch {
            fd: crate::sys::open_link_events()?,
        })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads and discards every waiting message; returns whether there was any (or an
    /// overrun), i.e. whether something may have changed.
    pub fn drain(&self) -> bool {
        let mut buffer = [0u8; DRAIN_BUFFER];
        let mut any = false;
        for _ in 0..MAX_DRAIN_READS {
            match rustix::net::recv(&self.fd, &mut buffer, rustix::net::RecvFlags::DONTWAIT) {
                Ok(_) => any = true,
                Err(rustix::io::Errno::INTR) => continue,
                // ENOBUFS: the kernel dropped events for us; the state must be read again.
                Err(rustix::io::Errno::NOBUFS) => any = true,
                Err(_) => break,
            }
        }
        any
    }
}

/// Opens a link watch, logging once why there is none (the driver then relies on its
/// periodic look at the link).
pub(crate) fn open_or_log(spec: &str) -> Option<LinkWatch> {
    match LinkWatch::open() {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::warn!(
                link = spec,
                "no rtnetlink link events ({e}); link changes are noticed within {:?}",
                super::LINK_RECHECK_WHILE_AWAY
            );
            None
        }
    }
}
