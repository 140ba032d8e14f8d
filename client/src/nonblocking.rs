//! The tokio client: the same calls as [`super::blocking::Client`], as futures, and
//! [`AsyncQueue`], a queue whose writes wait for room (flow control) and whose reads wait for
//! frames without holding a thread.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use netmux_proto::client::{ClientReply, ClientRequest, FilterMode, HostConfig, Transport};
use netmux_proto::driver::Counters;
use netmux_proto::{frame, PROTOCOL_VERSION};
use netmux_ring::{ClientQueue, Completion, QueueError, SendOutcome};
use tokio::io::unix::AsyncFd;

use super::{ClientError, ConnectOptions};
use netmux_proto::async_channel::AsyncChannel;

/// A session with netd on a tokio runtime. Every call is one request and its reply, within
/// the deadline of [`ConnectOptions::timeout`].
#[derive(Debug)]
pub struct AsyncClient {
    chan: AsyncChannel,
    host: HostConfig,
    timeout: Duration,
    /// The request that opens the queue (with the sizes the options asked for).
    open_queue: ClientRequest,
    /// Set once a request missed its deadline: a late reply would answer the next request.
    out_of_step: bool,
}

impl AsyncClient {
    /// Connects to netd in `runtime_dir` and says hello, joining the default instance.
    pub async fn connect(runtime_dir: &Path) -> Result<AsyncClient, ClientError> {
        AsyncClient::connect_socket(&super::socket_in(runtime_dir)).await
    }

    /// Connects to netd in `runtime_dir` and joins `instance` (the default one when `None`).
    pub async fn connect_to(
        runtime_dir: &Path,
        instance: Option<&str>,
    ) -> Result<AsyncClient, ClientError> {
        AsyncClient::connect_socket_to(&super::socket_in(runtime_dir), instance).await
    }

    /// Connects to netd's socket at `path` and says hello, joining the default instance.
    pub async fn connect_socket(path: &Path) -> Result<AsyncClient, ClientError> {
        AsyncClient::connect_socket_to(path, None).await
    }

    /// Connects to netd's socket at `path` and joins `instance`.
    pub async fn connect_socket_to(
        path: &Path,
        instance: Option<&str>,
    ) -> Result<AsyncClient, ClientError> {
        let options = ConnectOptions {
            instance: instance.map(str::to_owned),
            ..ConnectOptions::default()
        };
        AsyncClient::connect_socket_with(path, &options).await
    }

    /// Connects to netd's socket at `path` as `options` say, and says hello.
    pub async fn connect_socket_with(
        path: &Path,
        options: &ConnectOptions,
    ) -> Result<AsyncClient, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let sock = tokio::net::UnixStream::connect(path)
            .await
            .map_err(connect_err)?
            .into_std()
            .map_err(connect_err)?;
        let chan = AsyncChannel::new(sock).map_err(connect_err)?;
        let mut client = AsyncClient {
            chan,
            host: HostConfig {
                link: netmux_proto::LinkInfo {
                    mac: [0; 6],
                    mtu: 0,
                },
                ipv4: None,
                gateway: None,
                ipv6_link_local: None,
                dns_servers: Vec::new(),
                ipv6: Vec::new(),
                ipv6_gateway: None,
            },
            timeout: options.timeout,
            open_queue: options.open_queue_request(),
            out_of_step: false,
        };
        let reply = client
            .call(ClientRequest::Hello {
                version: PROTOCOL_VERSION,
                instance: options.instance.clone(),
            })
            .await?;
        client.host = super::hello(reply)?;
        Ok(client)
    }

    /// The host configuration netd sent at hello.
    pub fn host(&self) -> &HostConfig {
        &self.host
    }

    /// Sends any request and returns the reply and its descriptors.
    pub async fn request(
        &mut self,
        request: &ClientRequest,
    ) -> Result<(ClientReply, Vec<OwnedFd>), ClientError> {
        if self.out_of_step {
            return Err(ClientError::NoAnswer(self.timeout));
        }
        let round_trip = async {
            self.chan.send(request, &[], self.timeout).await?;
            self.chan.recv_raw().await
        };
        let (body, fds) = match tokio::time::timeout(self.timeout, round_trip).await {
            Ok(answer) => answer?,
            Err(_) => {
                self.out_of_step = true;
                return Err(ClientError::NoAnswer(self.timeout));
            }
        };
        let reply =
            frame::decode::<ClientReply>(&body).map_err(netmux_proto::ChannelError::from)?;
        Ok((reply, fds))
    }

    /// The deadline of every request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn call(&mut self, request: ClientRequest) -> Result<ClientReply, ClientError> {
        Ok(self.request(&request).await?.0)
    }

    /// An ephemeral port; its filters are in force when this returns.
    pub async fn get_port(&mut self, transport: Transport) -> Result<u16, ClientError> {
        super::port(self.call(ClientRequest::GetPort { transport }).await?)
    }

    /// A given port; its filters are in force when this returns.
    ///
    /// While netd answers [`ErrorCode::Again`](netmux_proto::ErrorCode::Again) (the port's
    /// previous holder is still being removed) the request is repeated, for at most
    /// [`AGAIN_PATIENCE`](super::AGAIN_PATIENCE).
    pub async fn bind_port(&mut self, transport: Transport, port: u16) -> Result<u16, ClientError> {
        let start = std::time::Instant::now();
        loop {
            match super::port(
                self.call(ClientRequest::BindPort { transport, port })
                    .await?,
            ) {
                Err(e) if super::again(&e) && start.elapsed() < super::AGAIN_PATIENCE => {
                    tokio::time::sleep(super::AGAIN_PAUSE).await;
                }
                r => return r,
            }
        }
    }

    /// Receives UDP datagrams to the multicast `group` on `port`, a UDP port this session
    /// holds (see the blocking client's `join_group`).
    pub async fn join_group(
        &mut self,
        group: std::net::IpAddr,
        port: u16,
    ) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::JoinGroup { group, port }).await?)
    }

    /// Stops receiving datagrams to `group` on `port`.
    pub async fn leave_group(
        &mut self,
        group: std::net::IpAddr,
        port: u16,
    ) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::LeaveGroup { group, port }).await?)
    }

    /// Gives a port back.
    pub async fn close_port(&mut self, transport: Transport, port: u16) -> Result<(), ClientError> {
        super::done(
            self.call(ClientRequest::ClosePort { transport, port })
                .await?,
        )
    }

    /// A tap or exclusive filter; returns its id.
    pub async fn open_filter(&mut self, expr: &str, mode: FilterMode) -> Result<u64, ClientError> {
        super::filter(
            self.call(ClientRequest::OpenFilter {
                expr: expr.to_owned(),
                mode,
            })
            .await?,
        )
    }

    /// Closes a filter.
    pub async fn close_filter(&mut self, filter: u64) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::CloseFilter { filter }).await?)
    }

    /// The session queue's counters.
    pub async fn stats(&mut self) -> Result<Counters, ClientError> {
        super::stats(self.call(ClientRequest::Stats).await?)
    }

    /// The sessions this client may see: every session if it runs as uid 0, else only those of
    /// its own uid (its own session included, marked `caller`); as many as fit in one reply,
    /// with the count of the others.
    pub async fn list_sessions(&mut self) -> Result<super::SessionList, ClientError> {
        super::sessions(self.call(ClientRequest::ListSessions).await?)
    }

    /// The session's queue, attached: framed I/O on its rings (of the sizes
    /// [`ConnectOptions::rxbuf`] and [`ConnectOptions::txbuf`] asked for).
    pub async fn open_queue(&mut self) -> Result<ClientQueue, ClientError> {
        let (reply, fds) = self.request(&self.open_queue.clone()).await?;
        super::queue(reply, fds)
    }

    /// The session's queue for async framed I/O ([`AsyncQueue`]).
    pub async fn open_async_queue(&mut self) -> Result<AsyncQueue, ClientError> {
        let queue = self.open_queue().await?;
        AsyncQueue::new(queue).map_err(|e| ClientError::Attach(e.into()))
    }
}

/// The queue's wake-up descriptor, registered with tokio's reactor (a duplicate: the queue
/// keeps its own).
#[derive(Debug)]
struct WakeFd(OwnedFd);

impl std::os::fd::AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// A queue on a tokio runtime: [`send`](Self::send) waits until the whole batch fits (the
/// queue's flow control: the tx ring within its `txbuf`), and the receives wait until there
/// is something, each without blocking a thread. The wake-ups come from the queue's doorbell
/// ([`ClientQueue::wake_fd`]) registered with tokio's reactor.
#[derive(Debug)]
pub struct AsyncQueue {
    queue: ClientQueue,
    wake: AsyncFd<WakeFd>,
}

impl AsyncQueue {
    /// Wraps `queue`; must be called within a tokio runtime.
    #[allow(unsafe_code)]
    pub fn new(queue: ClientQueue) -> std::io::Result<AsyncQueue> {
        let fd = WakeFd(queue.wake_fd().try_clone_to_owned()?);
        // SAFETY: `WakeFd` owns its descriptor (a duplicate) for as long as the `AsyncFd` owns
        // it, and `as_raw_fd` returns that descriptor every time: it stays open and the same.
        let wake = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncQueue { wake, queue })
    }

    /// The queue itself, for the calls that never wait (counters, `try` sends).
    pub fn get_mut(&mut self) -> &mut ClientQueue {
        &mut self.queue
    }

    /// Sends the whole batch once there is room for it ([`ClientQueue::send`]'s rules: all
    /// or nothing, in order; a batch larger than the `txbuf` is refused at once). Collect
    /// the completions meanwhile: the driver takes a frame only when its outcome has room.
    pub async fn send(&mut self, frames: &[&[&[u8]]]) -> Result<SendOutcome, QueueError> {
        loop {
            match self.queue.send(frames) {
                Err(QueueError::WouldBlock { needed, .. }) => {
                    self.ready(false, Some(needed)).await?
                }
                other => return other,
            }
        }
    }

    /// Receives at least one frame (up to `max`), appending each to `out`; returns how many.
    pub async fn recv_owned(
        &mut self,
        max: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<usize, QueueError> {
        loop {
            let n = self.queue.recv_owned(max, out)?;
            if n > 0 || max == 0 {
                return Ok(n);
            }
            self.ready(true, None).await?;
        }
    }

    /// Collects at least one completion (up to `max`), appending each to `out`; returns how
    /// many.
    pub async fn completions(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
    ) -> Result<usize, QueueError> {
        loop {
            let n = self.queue.completions(max, out)?;
            if n > 0 || max == 0 {
                return Ok(n);
            }
            if self.queue.is_closed() {
                return Err(QueueError::Closed);
            }
            self.ready(true, None).await?;
        }
    }

    /// Waits until what is asked for may be there (see [`ClientQueue::arm`]).
    async fn ready(&mut self, readable: bool, write_slots: Option<u32>) -> Result<(), QueueError> {
        if self.queue.arm(readable, write_slots)? {
            let waited = match self.wake.readable().await {
                Ok(mut guard) => {
                    guard.clear_ready();
                    Ok(())
                }
                Err(e) => Err(QueueError::Io(e)),
            };
            self.queue.disarm()?;
            waited
        } else {
            self.queue.disarm()
        }
    }
}
