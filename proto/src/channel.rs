//! A message channel over a Unix stream socket, with descriptors passed by `SCM_RIGHTS`.
//!
//! Reads are exact: the header, then exactly its body, never past the end of a message, so a
//! message's descriptors (attached by the sender to its first byte) can never be taken for the
//! next message's. The channel works on blocking sockets and on non-blocking ones driven by a
//! readiness loop (tokio's `AsyncFd`): [`Channel::try_recv`] keeps a partial message between
//! calls and returns `Ok(None)` when the socket has no more bytes for now.
//!
//! Every fault of the peer is an error of this channel only: the caller ends that session.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{self, FrameError, Header, HEADER_LEN, MAX_FDS};

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed the connection between messages.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The bytes are not a valid message.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The message came with fewer descriptors than its header announced.
    #[error("message announced {announced} descriptors but {received} arrived")]
    MissingFds {
        /// Announced in the header.
        announced: usize,
        /// Actually received.
        received: usize,
    },
    /// The message came with more descriptors than announced (the extra ones are closed).
    #[error("message came with descriptors it did not announce")]
    ExtraFds,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The peer did not complete a message (or take one) in the time allowed.
    #[error("no answer within {:.1} s", .0.as_secs_f64())]
    TimedOut(std::time::Duration),
    /// The receiver would not take a message this long (its budget for buffered bytes is
    /// spent); the connection is out of step and must end.
    #[error("a message of {len} bytes was refused: {why}")]
    NotAdmitted {
        /// The length the message's header announced.
        len: usize,
        /// Why the receiver refused it.
        why: String,
    },
}

/// Credentials of the peer as the kernel reports them (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The kernel's word on who is at the other end of `sock`.
pub fn peer_credentials(sock: impl AsFd) -> io::Result<PeerCredentials> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    Ok(PeerCredentials {
        pid: cred.pid.as_raw_nonzero().get() as u32,
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    })
}

/// A message body not yet decoded, and the descriptors that came with it.
pub type RawMessage = (Vec<u8>, Vec<OwnedFd>);

/// A message channel. See the module documentation.
#[derive(Debug)]
pub struct Channel {
    sock: UnixStream,
    /// The partial message: header, then body.
    buf: Vec<u8>,
    have: usize,
    header: Option<Header>,
    fds: Vec<OwnedFd>,
    extra_fds: bool,
    /// When the first byte of the partial message arrived.
    partial_since: Option<std::time::Instant>,
}

impl Channel {
    /// A channel on a connected socket (blocking or non-blocking).
    pub fn new(sock: UnixStream) -> Channel {
        Channel {
            sock,
            buf: vec![0; HEADER_LEN],
            have: 0,
            header: None,
            fds: Vec::new(),
            extra_fds: false,
            partial_since: None,
        }
    }

    /// When the first byte of a message not yet whole arrived; `None` between messages. A
    /// server uses it to end a peer that starts a message and never finishes it.
    pub fn partial_since(&self) -> Option<std::time::Instant> {
        self.partial_since
    }

    /// The body length the partial message's header announced, once the header is in.
    pub fn announced_len(&self) -> Option<usize> {
        self.header.map(|h| h.body_len)
    }

    /// The socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The peer's credentials.
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        peer_credentials(&self.sock)
    }

    /// Sends a message and descriptors. Blocks until it is all written (on a non-blocking
    /// socket, waits for room).
    pub fn send<T: Serialize>(
        &mut self,
        message: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        self.send_within(message, fds, None)
    }

    /// [`Channel::send`], failing with [`ChannelError::TimedOut`] when the peer has not taken
    /// the whole message within `timeout` (a peer that stopped reading).
    pub fn send_within<T: Serialize>(
        &mut self,
        message: &T,
        fds: &[BorrowedFd<'_>],
        timeout: Option<std::time::Duration>,
    ) -> Result<(), ChannelError> {
        let bytes = frame::encode(message, fds.len())?;
        self.send_raw_within(&bytes, fds, timeout)
    }

    /// Sends pre-encoded bytes (for tests that send malformed messages).
    pub fn send_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_raw_within(bytes, fds, None)
    }

    fn send_raw_within(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Option<std::time::Duration>,
    ) -> Result<(), ChannelError> {
        let deadline = timeout.map(|t| (std::time::Instant::now() + t, t));
        let mut sent = 0;
        while sent < bytes.len() {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(FrameError::TooManyFds(fds.len().min(255) as u8).into());
            }
            match sendmsg(
                &self.sock,
                &[IoSlice::new(&bytes[sent..])],
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    self.wait_for(rustix::event::PollFlags::OUT, deadline)?
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(())
    }

    /// Waits until the socket is ready for `flags`, or fails with
    /// [`ChannelError::TimedOut`] once `deadline` (the instant, and the timeout it came from)
    /// has passed.
    fn wait_for(
        &self,
        flags: rustix::event::PollFlags,
        deadline: Option<(std::time::Instant, std::time::Duration)>,
    ) -> Result<(), ChannelError> {
        let left = match deadline {
            None => None,
            Some((at, timeout)) => {
                let left = at.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(ChannelError::TimedOut(timeout));
                }
                Some(rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        match rustix::event::poll(
            &mut [rustix::event::PollFd::new(&self.sock, flags)],
            left.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    /// Receives one message, blocking (on a blocking socket) until it is complete.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        self.recv_within(None)
    }

    /// [`Channel::recv`], failing with [`ChannelError::TimedOut`] when no whole message has
    /// arrived within `timeout`. A message that was cut short by the deadline stays partial
    /// in the channel; a caller that gives up on the peer drops the channel.
    pub fn recv_within<T: DeserializeOwned>(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let deadline = timeout.map(|t| (std::time::Instant::now() + t, t));
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            // Nothing more to read for now: wait for it.
            self.wait_for(rustix::event::PollFlags::IN, deadline)?;
        }
    }

    /// Receives what the socket has; a complete message when there is one, `None` when the
    /// socket would block first.
    pub fn try_recv<T: DeserializeOwned>(
        &mut self,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        match self.try_recv_raw()? {
            Some((body, fds)) => Ok(Some((frame::decode(&body)?, fds))),
            None => Ok(None),
        }
    }

    /// As [`Channel::try_recv`], without decoding the body.
    pub fn try_recv_raw(&mut self) -> Result<Option<RawMessage>, ChannelError> {
        self.try_recv_raw_admitting(&mut |_| Ok(()))
    }

    /// As [`Channel::try_recv_raw`], asking `admit` about each message's announced body length
    /// once its header is in, before any room is made for the body: an `Err(why)` refuses the
    /// message with [`ChannelError::NotAdmitted`] (a server that bounds what one user can
    /// make it buffer).
    pub fn try_recv_raw_admitting(
        &mut self,
        admit: &mut dyn FnMut(usize) -> Result<(), String>,
    ) -> Result<Option<RawMessage>, ChannelError> {
        loop {
            let want = self.buf.len();
            if self.have == want {
                match self.header {
                    None => {
                        let header = Header::parse(self.buf[..HEADER_LEN].try_into().expect("8"))?;
                        admit(header.body_len).map_err(|why| ChannelError::NotAdmitted {
                            len: header.body_len,
                            why,
                        })?;
                        self.header = Some(header);
                        self.buf = vec![0; header.body_len];
                        self.have = 0;
                        continue;
                    }
                    Some(header) => {
                        let body = std::mem::replace(&mut self.buf, vec![0; HEADER_LEN]);
                        self.have = 0;
                        self.header = None;
                        self.partial_since = None;
                        let fds = std::mem::take(&mut self.fds);
                        if std::mem::take(&mut self.extra_fds) || fds.len() > header.fds {
                            return Err(ChannelError::ExtraFds);
                        }
                        if fds.len() < header.fds {
                            return Err(ChannelError::MissingFds {
                                announced: header.fds,
                                received: fds.len(),
                            });
                        }
                        return Ok(Some((body, fds)));
                    }
                }
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let result = recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut self.buf[self.have..want])],
                &mut control,
                // Never blocks, whether the socket does or not: waiting is the callers' (with
                // their deadline, or tokio's readiness).
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            );
            let msg = match result {
                Ok(m) => m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(io::Error::from(e).into()),
            };
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = m {
                    self.fds.extend(rights);
                }
            }
            if msg.flags.contains(ReturnFlags::CTRUNC) {
                self.extra_fds = true;
            }
            if msg.bytes == 0 {
                return Err(if self.have == 0 && self.header.is_none() {
                    ChannelError::Closed
                } else {
                    ChannelError::Truncated
                });
            }
            if self.have == 0 && self.header.is_none() {
                self.partial_since = Some(std::time::Instant::now());
            }
            self.have += msg.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (Channel::new(a), Channel::new(b))
    }

    fn tempfile_with(text: &[u8]) -> std::fs::File {
        let fd =
            rustix::fs::memfd_create("netmux-proto-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(text).unwrap();
        f
    }

    #[test]
    fn messages_and_descriptors_arrive_together() {
        let (mut a, mut b) = pair();
        let f = tempfile_with(b"ring memory");
        a.send(&"first".to_string(), &[f.as_fd()]).unwrap();
        a.send(&"second".to_string(), &[]).unwrap();
        let (m, fds): (String, _) = b.recv().unwrap();
        assert_eq!((m.as_str(), fds.len()), ("first", 1));
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "ring memory");
        let (m, fds): (String, _) = b.recv().unwrap();
        assert_eq!((m.as_str(), fds.len()), ("second", 0));
        drop(a);
        assert!(matches!(b.recv::<String>(), Err(ChannelError::Closed)));
    }

    #[test]
    fn missing_and_unannounced_descriptors_are_errors() {
        let (mut a, mut b) = pair();
        let mut bytes = frame::encode(&1u32, 0).unwrap();
        bytes[4] = 2; // announce two, send none
        a.send_raw(&bytes, &[]).unwrap();
        assert!(matches!(
            b.recv::<u32>(),
            Err(ChannelError::MissingFds {
                announced: 2,
                received: 0
            })
        ));
        let f = tempfile_with(b"x");
        let bytes = frame::encode(&1u32, 0).unwrap(); // announce none, send one
        a.send_raw(&bytes, &[f.as_fd()]).unwrap();
        assert!(matches!(b.recv::<u32>(), Err(ChannelError::ExtraFds)));
    }

    #[test]
    fn a_message_cut_short_is_truncated_and_garbage_is_malformed() {
        let (mut a, mut b) = pair();
        a.send_raw(&[5, 0, 0, 0, 0, 0, 0, 0, b'{'], &[]).unwrap();
        drop(a);
        assert!(matches!(b.recv::<u32>(), Err(ChannelError::Truncated)));
        let (mut a, mut b) = pair();
        a.send_raw(&[3, 0, 0, 0, 0, 0, 0, 0, b'x', b'y', b'z'], &[])
            .unwrap();
        assert!(matches!(
            b.recv::<u32>(),
            Err(ChannelError::Frame(FrameError::Body(_)))
        ));
    }

    /// Sends `messages` (each announcing and carrying `fds` descriptors, each cut into chunks
    /// whose lengths come from `next`), optionally cut short by `cut` bytes, closes the
    /// sender, then reads on a non-blocking receiver: every message arrives, then the close
    /// (`Closed`, or `Truncated` when the last message was cut), and never "would block".
    fn receive_after_close(iteration: usize, next: &mut impl FnMut() -> u64) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let (mut tx, mut rx) = (Channel::new(a), Channel::new(b));
        let memfd = rustix::fs::memfd_create("stress", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let count = (next() % 6) as usize;
        let mut wire = Vec::new();
        for i in 0..count {
            let body = "x".repeat((next() % 300) as usize);
            let fds = (next() % (MAX_FDS as u64 + 1)) as usize;
            let bytes = frame::encode(&body, fds).unwrap();
            wire.push((i, bytes, fds));
        }
        let cut = next().is_multiple_of(3) && count > 0;
        if cut {
            let last = &mut wire.last_mut().unwrap().1;
            let keep = 1 + (next() as usize) % (last.len() - 1);
            last.truncate(keep);
        }
        for (_, bytes, fds) in &wire {
            let fds: Vec<_> = (0..*fds).map(|_| memfd.as_fd()).collect();
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + 1 + (next() % 40) as usize).min(bytes.len());
                let with = if at == 0 { &fds[..] } else { &[] };
                tx.send_raw(&bytes[at..end], with).unwrap();
                at = end;
            }
        }
        drop(tx);
        let whole = if cut { count - 1 } else { count };
        for (i, _, announced) in &wire[..whole] {
            match rx.try_recv_raw() {
                Ok(Some((_, fds))) => assert_eq!(fds.len(), *announced),
                other => panic!("iteration {iteration}, message {i}: {other:?}"),
            }
        }
        match rx.try_recv_raw() {
            Err(ChannelError::Closed) if !cut => {}
            Err(ChannelError::Truncated) if cut => {}
            other => panic!("iteration {iteration}: the close, cut {cut}: {other:?}"),
        }
    }

    fn stress_receive_after_close(iterations: usize, seed: u64) {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..iterations {
            receive_after_close(i, &mut next);
        }
    }

    #[test]
    fn a_nonblocking_receiver_sees_every_message_then_the_close_never_would_block() {
        stress_receive_after_close(2_000, 0x9e37_79b9_7f4a_7c15);
    }

    /// The same, 200,000 rounds.
    #[test]
    #[ignore = "a stress run of about a minute"]
    fn a_nonblocking_receiver_never_would_block_after_the_close_stress() {
        stress_receive_after_close(200_000, 0x2545_f491_4f6c_dd1d);
    }

    #[test]
    fn a_nonblocking_socket_yields_partial_progress() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut rx = Channel::new(b);
        assert!(rx.try_recv::<u32>().unwrap().is_none());
        let bytes = frame::encode(&77u32, 0).unwrap();
        (&a).write_all(&bytes[..5]).unwrap();
        assert!(rx.try_recv::<u32>().unwrap().is_none());
        (&a).write_all(&bytes[5..]).unwrap();
        assert_eq!(rx.try_recv::<u32>().unwrap().unwrap().0, 77);
        assert_eq!(peer_credentials(&a).unwrap().pid, std::process::id());
    }
}
