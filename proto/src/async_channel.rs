//! A [`Channel`] driven by tokio's readiness loop, shared by netd's client tasks and the tokio
//! client library (the `tokio` feature).
//!
//! Receiving is cancel-safe: a partial message stays inside the channel between calls, so the
//! future may be dropped (e.g. in a `select!`) without losing bytes. Sending waits until the
//! socket is writable, for at most the given time, so a peer that never reads cannot make the
//! sender spin.
//!
//! This is the crate's one module with `unsafe`: registering a descriptor with tokio.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::channel::{ChannelError, RawMessage};
use crate::Channel;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

struct ChannelFd(Channel);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.socket().as_raw_fd()
    }
}

/// An asynchronous message channel. See the module documentation.
pub struct AsyncChannel {
    fd: AsyncFd<ChannelFd>,
}

impl std::fmt::Debug for AsyncChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncChannel").finish_non_exhaustive()
    }
}

impl AsyncChannel {
    /// Wraps a connected socket (made non-blocking here). Must run inside a tokio runtime.
    pub fn new(sock: UnixStream) -> io::Result<AsyncChannel> {
        sock.set_nonblocking(true)?;
        let inner = ChannelFd(Channel::new(sock));
        // SAFETY: `ChannelFd` owns the socket for as long as the `AsyncFd` owns it, and
        // `as_raw_fd` returns that socket's descriptor every time: it stays open and the same.
        let fd = unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)?;
        Ok(AsyncChannel { fd })
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.fd.get_ref().0
    }

    /// Receives one whole message.
    pub async fn recv_raw(&mut self) -> Result<RawMessage, ChannelError> {
        self.recv_raw_admitting(|_| Ok(())).await
    }

    /// Receives one whole message, asking `admit` about its announced length before making
    /// room for its body (see [`Channel::try_recv_raw_admitting`]).
    pub async fn recv_raw_admitting(
        &mut self,
        mut admit: impl FnMut(usize) -> Result<(), String>,
    ) -> Result<RawMessage, ChannelError> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            match guard.get_inner_mut().0.try_recv_raw_admitting(&mut admit)? {
                Some(m) => return Ok(m),
                None => guard.clear_ready(),
            }
        }
    }

    /// Sends a message once the socket has room, waiting at most `timeout`.
    pub async fn send<T: Serialize>(
        &mut self,
        message: &T,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(), ChannelError> {
        let writable = async {
            loop {
                if self.writable_now() {
                    return Ok(());
                }
                let mut guard = self.fd.writable_mut().await?;
                guard.clear_ready();
            }
        };
        match tokio::time::timeout(timeout, writable).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ChannelError::Io(e)),
            Err(_) => return Err(ChannelError::TimedOut(timeout)),
        }
        // A Unix stream socket polls writable while at most a quarter of its send buffer is
        // in use, so a control message (a few hundred bytes) goes out without spinning.
        self.fd.get_mut().0.send(message, fds)
    }

    fn writable_now(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            self.channel().socket(),
            rustix::event::PollFlags::OUT,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}
