//! The client library: connect to netd, say hello, ask for ports and filters, and attach the
//! session's queue for framed I/O; [`blocking`] and [`nonblocking`] (tokio) APIs with the same
//! methods, and [`device::QueueDevice`], a `smoltcp::phy::Device` on a queue.
//!
//! ```no_run
//! # #[cfg(feature = "smoltcp")] {
//! use netmux_client::{blocking::Client, device::QueueDevice, Transport};
//!
//! let mut netd = Client::connect(&netmux_proto::default_runtime_dir())?;
//! let port = netd.bind_port(Transport::Udp, 5353)?; // its filters are in force now
//! let mtu = netd.host().link.mtu;
//! let mut queue = netd.open_queue()?;
//! // Framed I/O: many frames per call, each gathered from one or more vectors...
//! let (header, payload) = (&[0u8; 42][..], &b"hello"[..]);
//! queue.send(&[&[header, payload]])?;
//! // ...or a whole TCP/IP stack: smoltcp on the queue.
//! let device = QueueDevice::new(queue, mtu);
//! # let _ = (port, device);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Writes have flow control: a batch goes into the tx ring whole or not at all
//! ([`netmux_ring::QueueError::WouldBlock`]); [`ClientQueue::send_wait`] blocks for room,
//! [`nonblocking::AsyncQueue`] awaits it, and poll/epoll users poll [`ClientQueue::wake_fd`].
//! The one `unsafe` block of the crate registers that descriptor with tokio.
//!
//! A refusal is [`ClientError::Refused`] with netd's stable code and its message, so an
//! application can say why ("udp port 53 is privileged (below 1024) ...") and exit.

#![deny(unsafe_code)]

pub mod blocking;
#[cfg(feature = "smoltcp")]
pub mod device;
#[cfg(feature = "tokio")]
pub mod nonblocking;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use netmux_proto::channel::ChannelError;
use netmux_proto::client::{ClientReply, HostConfig};
use netmux_proto::driver::Counters;
use netmux_proto::ErrorReply;
use netmux_ring::{AttachError, ClientQueue};

pub use netmux_proto::overlay::{MappingChange, MappingEntry, OverlaySpec, OverlayView};

pub use netmux_proto::client::{
    FilterMode, InstanceSpec, InstanceView, MacChoice, QueueInfo, SessionInfo, SessionList,
    Transport,
};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to netd's socket failed.
    #[error("connecting to netd at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The connection failed or netd closed it.
    #[error("netd connection: {0}")]
    Channel(ChannelError),
    /// netd did not answer a request (or take it) within the client's deadline
    /// ([`ConnectOptions::timeout`]). The session is out of step from then on: every later
    /// call fails the same way, and the caller connects again.
    #[error("netd did not answer within {:.1} s", .0.as_secs_f64())]
    NoAnswer(Duration),
    /// netd refused the request.
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// netd answered with a reply that does not fit the request.
    #[error("unexpected reply from netd: {0}")]
    Unexpected(String),
    /// The queue's descriptors are not a usable queue.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl From<ChannelError> for ClientError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::TimedOut(t) => ClientError::NoAnswer(t),
            e => ClientError::Channel(e),
        }
    }
}

/// How long a client waits for netd to take a request and answer it, unless told otherwise:
/// twice netd's own default deadline for the driver's answers, so that when the driver is
/// stuck the client hears netd say so before it gives up on netd.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The instance to join (the default one when `None`).
    pub instance: Option<String>,
    /// The deadline of every request, the hello included ([`DEFAULT_REQUEST_TIMEOUT`]).
    pub timeout: Duration,
    /// Bytes of received frames the session's queue should hold (its rx ring, illumos vnd's
    /// `rxbuf`), asked for when the queue is opened; `None`: netd's default, 128 KiB.
    pub rxbuf: Option<u64>,
    /// Bytes of frames to transmit the queue's tx ring should hold (`txbuf`); `None`: netd's
    /// default, 128 KiB.
    pub txbuf: Option<u64>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            instance: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            rxbuf: None,
            txbuf: None,
        }
    }
}

impl ConnectOptions {
    /// The request that opens the session's queue with these sizes.
    fn open_queue_request(&self) -> netmux_proto::client::ClientRequest {
        use netmux_proto::client::ClientRequest;
        match (self.rxbuf, self.txbuf) {
            (None, None) => ClientRequest::OpenQueue,
            (rxbuf, txbuf) => ClientRequest::OpenQueueSized { rxbuf, txbuf },
        }
    }
}

impl ClientError {
    /// Whether netd is not there at all: nothing listens on its socket (or no socket), as
    /// opposed to a netd that answered with a refusal or stopped answering.
    pub fn nobody_listens(&self) -> bool {
        match self {
            ClientError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }

    /// netd's refusal, if this is one.
    pub fn refusal(&self) -> Option<&ErrorReply> {
        match self {
            ClientError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

pub use netmux_proto::socket_in;

fn unexpected(reply: ClientReply) -> ClientError {
    match reply {
        ClientReply::Error(e) => ClientError::Refused(e),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

fn hello(reply: ClientReply) -> Result<HostConfig, ClientError> {
    match reply {
        ClientReply::Hello { host, .. } => Ok(host),
        other => Err(unexpected(other)),
    }
}

/// How long a request netd answers with [`ErrorCode::Again`](netmux_proto::ErrorCode::Again) is repeated: a port's previous
/// filters are removed within milliseconds unless the driver is stuck, which netd then says.
pub const AGAIN_PATIENCE: Duration = Duration::from_secs(2);
/// The pause between two such attempts.
const AGAIN_PAUSE: Duration = Duration::from_millis(5);

/// Whether `e` is netd's "the same request succeeds shortly".
fn again(e: &ClientError) -> bool {
    e.refusal()
        .is_some_and(|r| r.code == netmux_proto::ErrorCode::Again)
}

fn port(reply: ClientReply) -> Result<u16, ClientError> {
    match reply {
        ClientReply::Port { port, .. } => Ok(port),
        other => Err(unexpected(other)),
    }
}

fn done(reply: ClientReply) -> Result<(), ClientError> {
    match reply {
        ClientReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn filter(reply: ClientReply) -> Result<u64, ClientError> {
    match reply {
        ClientReply::Filter { filter } => Ok(filter),
        other => Err(unexpected(other)),
    }
}

fn stats(reply: ClientReply) -> Result<Counters, ClientError> {
    match reply {
        ClientReply::Stats(c) => Ok(c),
        other => Err(unexpected(other)),
    }
}

fn sessions(reply: ClientReply) -> Result<SessionList, ClientError> {
    match reply {
        ClientReply::Sessions(list) => Ok(list),
        other => Err(unexpected(other)),
    }
}

fn instances(reply: ClientReply) -> Result<Vec<InstanceView>, ClientError> {
    match reply {
        ClientReply::Instances(list) => Ok(list),
        other => Err(unexpected(other)),
    }
}

fn overlays(reply: ClientReply) -> Result<Vec<OverlayView>, ClientError> {
    match reply {
        ClientReply::Overlays(list) => Ok(list),
        other => Err(unexpected(other)),
    }
}

fn mappings(reply: ClientReply) -> Result<Vec<MappingEntry>, ClientError> {
    match reply {
        ClientReply::OverlayMappings(list) => Ok(list),
        other => Err(unexpected(other)),
    }
}

fn queue(reply: ClientReply, fds: Vec<OwnedFd>) -> Result<ClientQueue, ClientError> {
    match reply {
        ClientReply::Queue { .. } => {
            let [memfd, doorbell]: [OwnedFd; 2] = fds.try_into().map_err(|f: Vec<OwnedFd>| {
                ClientError::Unexpected(format!("queue with {} descriptors", f.len()))
            })?;
            Ok(ClientQueue::from_fds(memfd, doorbell)?)
        }
        other => Err(unexpected(other)),
    }
}
