//! F4: bytes and descriptor counts against the IPC layer.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use arbitrary::Arbitrary;
use netmux_proto::client::{ClientReply, ClientRequest};
use netmux_proto::driver::{DriverReply, DriverRequest};
use netmux_proto::frame::{self, Header, HEADER_LEN};
use netmux_proto::{Channel, ChannelError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Receive calls per input: a well-behaved channel ends long before (each call consumes bytes
/// or reports the close); the bound turns a livelock into a failure instead of a hang.
const MAX_RECV_CALLS: usize = 4096;
/// How long the receiver waits for the sender's next bytes or its close: the sender is a
/// thread that only copies into a socket, so seconds mean it is stuck.
const PATIENCE: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 5,
    tv_nsec: 0,
};
/// Descriptors sent with one chunk are `n % FDS_PER_CHUNK`: up to 6, beyond the protocol's
/// limit of `frame::MAX_FDS` (4).
const FDS_PER_CHUNK: u8 = 7;

#[derive(Debug, Arbitrary)]
struct Input {
    bytes: Vec<u8>,
    /// (chunk length, descriptors sent with it)
    chunks: Vec<(u16, u8)>,
}

/// Decodes `body` as `T`; a success must survive a round trip.
fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(m) = frame::decode::<T>(body) {
        let again = frame::encode(&m, 0).expect("a decoded message encodes");
        let back: T = frame::decode(&again[HEADER_LEN..]).expect("an encoded message decodes");
        assert_eq!(back, m, "decode(encode(m)) == m");
    }
}

fn check_all(body: &[u8]) {
    check::<ClientRequest>(body);
    check::<ClientReply>(body);
    check::<DriverRequest>(body);
    check::<DriverReply>(body);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// F4. Bytes and descriptor counts against the IPC layer: an error, never a panic, never a
/// leak.
///
/// 1. The first eight bytes go to `Header::parse`, the rest to `frame::decode` as every
///    message type; whatever decodes re-encodes and decodes to the same message.
/// 2. The same bytes, cut into chunks that each carry some descriptors (0 to 6, beyond the
///    protocol's limit of 4), go through a real `Channel` on a socketpair to a non-blocking
///    receiver, which reads until the sender's close and decodes every message it gets as
///    every type, until the close or the first error (which ends a session). The sender is a
///    thread of its own, as a peer is a process of its own. After each input the process
///    holds exactly the descriptors it held before: descriptors that arrive with a bad
///    message are closed, not leaked.
///
/// It counts the whole process's descriptors, so nothing else in the process may open or
/// close one while it runs.
pub fn ipc_decode(data: &[u8]) {
    let Some(input) = crate::structured::<Input>(data) else {
        return;
    };
    let bytes = &input.bytes;
    if let Some(h) = bytes.get(..HEADER_LEN) {
        let _ = Header::parse(h.try_into().expect("8 bytes"));
    }
    check_all(bytes.get(HEADER_LEN..).unwrap_or(bytes));

    let before = open_fds();
    {
        let (a, b) = UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("non-blocking");
        let mut rx = Channel::new(b);
        // The sender runs on its own thread, as a peer process would: a sender on the
        // receiver's thread blocks for good once its chunks fill the socket's send buffer
        // (about 70 one-byte chunks here), before the receiver reads a byte.
        let chunks = input.chunks.clone();
        let bytes_to_send = bytes.clone();
        let sender = std::thread::spawn(move || {
            let mut tx = Channel::new(a);
            // A memfd to pass around; every send passes duplicates of it.
            let fd: OwnedFd = rustix::fs::memfd_create("ipc-fuzz", rustix::fs::MemfdFlags::CLOEXEC)
                .expect("memfd");
            let mut at = 0;
            let mut chunks = chunks.iter();
            while at < bytes_to_send.len() {
                let (len, nfds) = chunks.next().copied().unwrap_or((u16::MAX, 0));
                let end = (at + usize::from(len).max(1)).min(bytes_to_send.len());
                let fds: Vec<_> = (0..nfds % FDS_PER_CHUNK).map(|_| fd.as_fd()).collect();
                // More than the channel's control buffer holds is refused on the sending
                // side; a receiver that has ended the session makes the rest fail.
                if let Err(ChannelError::Io(_)) = tx.send_raw(&bytes_to_send[at..end], &fds) {
                    break;
                }
                at = end;
            }
        });
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls < MAX_RECV_CALLS, "the receiver makes progress");
            match rx.try_recv_raw() {
                Ok(Some((body, fds))) => {
                    assert!(fds.len() <= frame::MAX_FDS);
                    check_all(&body);
                }
                // Nothing to read yet: more bytes or the sender's close must become readable.
                Ok(None) => {
                    let mut pfd = [rustix::event::PollFd::new(
                        rx.socket(),
                        rustix::event::PollFlags::IN,
                    )];
                    let ready = rustix::event::poll(&mut pfd, Some(&PATIENCE)).unwrap_or(0);
                    assert!(
                        ready > 0,
                        "nothing readable, not even the close, for {PATIENCE:?}"
                    );
                }
                // The end, or a fault of the peer: the session ends here.
                Err(_) => break,
            }
        }
        // Ending the session closes the socket, which unblocks a sender still writing.
        drop(rx);
        sender.join().expect("the sender thread");
    }
    assert_eq!(open_fds(), before, "no descriptor leaked");
}
