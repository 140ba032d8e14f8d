//! The blocking client.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use netmux_proto::client::{ClientReply, ClientRequest, FilterMode, HostConfig, Transport};
use netmux_proto::driver::Counters;
use netmux_proto::{Channel, ErrorCode, PROTOCOL_VERSION};
use netmux_ring::ClientQueue;

use super::{ClientError, ConnectOptions};

/// A session with netd over a blocking socket. Every call is one request and its reply, within
/// the deadline of [`ConnectOptions::timeout`].
#[derive(Debug)]
pub struct Client {
    chan: Channel,
    host: HostConfig,
    timeout: Duration,
    /// The request that opens the queue (with the sizes the options asked for).
    open_queue: ClientRequest,
    /// Set once a request missed its deadline: a late reply would answer the next request.
    out_of_step: bool,
}

impl Client {
    /// Connects to netd in `runtime_dir` and says hello, joining the default instance.
    pub fn connect(runtime_dir: &Path) -> Result<Client, ClientError> {
        Client::connect_socket(&super::socket_in(runtime_dir))
    }

    /// Connects to netd in `runtime_dir` and joins `instance` (the default one when `None`).
    pub fn connect_to(runtime_dir: &Path, instance: Option<&str>) -> Result<Client, ClientError> {
        Client::connect_socket_to(&super::socket_in(runtime_dir), instance)
    }

    /// Connects to netd's socket at `path` and says hello, joining the default instance.
    pub fn connect_socket(path: &Path) -> Result<Client, ClientError> {
        Client::connect_socket_to(path, None)
    }

    /// Connects to netd's socket at `path` and joins `instance`.
    pub fn connect_socket_to(path: &Path, instance: Option<&str>) -> Result<Client, ClientError> {
        let options = ConnectOptions {
            instance: instance.map(str::to_owned),
            ..ConnectOptions::default()
        };
        Client::connect_socket_with(path, &options)
    }

    /// Connects to netd in `runtime_dir` as `options` say.
    pub fn connect_with(
        runtime_dir: &Path,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        Client::connect_socket_with(&super::socket_in(runtime_dir), options)
    }

    /// Connects to netd's socket at `path` as `options` say, and says hello.
    pub fn connect_socket_with(
        path: &Path,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let sock = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut client = Client {
            chan: Channel::new(sock),
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
        let reply = client.call(ClientRequest::Hello {
            version: PROTOCOL_VERSION,
            instance: options.instance.clone(),
        })?;
        client.host = super::hello(reply)?;
        Ok(client)
    }

    /// The deadline of every request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The host configuration netd sent at hello.
    pub fn host(&self) -> &HostConfig {
        &self.host
    }

    /// Sends any request and returns the reply and its descriptors.
    pub fn request(
        &mut self,
        request: &ClientRequest,
    ) -> Result<(ClientReply, Vec<OwnedFd>), ClientError> {
        if self.out_of_step {
            return Err(ClientError::NoAnswer(self.timeout));
        }
        let deadline = std::time::Instant::now() + self.timeout;
        let answer = self
            .chan
            .send_within(request, &[], Some(self.timeout))
            .and_then(|()| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                self.chan.recv_within::<ClientReply>(Some(left))
            })
            .map_err(|e| match e {
                // The whole round trip had one deadline.
                netmux_proto::ChannelError::TimedOut(_) => {
                    netmux_proto::ChannelError::TimedOut(self.timeout)
                }
                e => e,
            });
        if matches!(answer, Err(netmux_proto::ChannelError::TimedOut(_))) {
            self.out_of_step = true;
        }
        Ok(answer?)
    }

    fn call(&mut self, request: ClientRequest) -> Result<ClientReply, ClientError> {
        Ok(self.request(&request)?.0)
    }

    /// An ephemeral port; its filters are in force when this returns.
    pub fn get_port(&mut self, transport: Transport) -> Result<u16, ClientError> {
        super::port(self.call(ClientRequest::GetPort { transport })?)
    }

    /// A given port; its filters are in force when this returns.
    ///
    /// A port whose previous holder has just let it go is released within milliseconds; while
    /// netd answers [`ErrorCode::Again`](netmux_proto::ErrorCode::Again) the request is
    /// repeated, for at most [`AGAIN_PATIENCE`](super::AGAIN_PATIENCE).
    pub fn bind_port(&mut self, transport: Transport, port: u16) -> Result<u16, ClientError> {
        let start = std::time::Instant::now();
        loop {
            match super::port(self.call(ClientRequest::BindPort { transport, port })?) {
                Err(e) if super::again(&e) && start.elapsed() < super::AGAIN_PATIENCE => {
                    std::thread::sleep(super::AGAIN_PAUSE);
                }
                r => return r,
            }
        }
    }

    /// Receives UDP datagrams to the multicast `group` on `port`, a UDP port this session
    /// holds, besides those to the host's addresses; joining twice changes nothing. netd
    /// refuses an address that is not a joinable group, a port the session does not hold and
    /// more than its limit of groups per session.
    pub fn join_group(&mut self, group: std::net::IpAddr, port: u16) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::JoinGroup { group, port })?)
    }

    /// Stops receiving datagrams to `group` on `port`.
    pub fn leave_group(&mut self, group: std::net::IpAddr, port: u16) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::LeaveGroup { group, port })?)
    }

    /// Gives a port back.
    pub fn close_port(&mut self, transport: Transport, port: u16) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::ClosePort { transport, port })?)
    }

    /// A tap or exclusive filter; returns its id.
    pub fn open_filter(&mut self, expr: &str, mode: FilterMode) -> Result<u64, ClientError> {
        super::filter(self.call(ClientRequest::OpenFilter {
            expr: expr.to_owned(),
            mode,
        })?)
    }

    /// Closes a filter.
    pub fn close_filter(&mut self, filter: u64) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::CloseFilter { filter })?)
    }

    /// The session queue's counters.
    pub fn stats(&mut self) -> Result<Counters, ClientError> {
        super::stats(self.call(ClientRequest::Stats)?)
    }

    /// The sessions this client may see: every session if it runs as uid 0, else only those of
    /// its own uid (its own session included, marked `caller`); as many as fit in one reply,
    /// with the count of the others.
    pub fn list_sessions(&mut self) -> Result<super::SessionList, ClientError> {
        super::sessions(self.call(ClientRequest::ListSessions)?)
    }

    /// Creates an instance (root, or a uid netd's configuration names).
    pub fn create_instance(&mut self, spec: super::InstanceSpec) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::CreateInstance(spec))?)
    }

    /// Destroys an instance: its sessions end, everything they held is freed.
    pub fn destroy_instance(&mut self, name: &str) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::DestroyInstance {
            name: name.to_owned(),
        })?)
    }

    /// The instances this client may see (all for root and netd's admins, else its own).
    pub fn list_instances(&mut self) -> Result<Vec<super::InstanceView>, ClientError> {
        super::instances(self.call(ClientRequest::ListInstances)?)
    }

    /// Creates an overlay (root, or a uid netd's configuration names).
    pub fn create_overlay(&mut self, spec: super::OverlaySpec) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::CreateOverlay(spec))?)
    }

    /// Destroys an overlay no instance lives on.
    pub fn destroy_overlay(&mut self, name: &str) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::DestroyOverlay {
            name: name.to_owned(),
        })?)
    }

    /// Every overlay, with its state and counters.
    pub fn list_overlays(&mut self) -> Result<Vec<super::OverlayView>, ClientError> {
        super::overlays(self.call(ClientRequest::ListOverlays)?)
    }

    /// An overlay's mapping entries as its backend holds them now (only `mac`'s when given).
    pub fn overlay_mappings(
        &mut self,
        name: &str,
        mac: Option<[u8; 6]>,
    ) -> Result<Vec<super::MappingEntry>, ClientError> {
        super::mappings(self.call(ClientRequest::ListOverlayMappings {
            name: name.to_owned(),
            mac,
        })?)
    }

    /// Adds, replaces or removes one mapping entry of an overlay at its backend; the
    /// drivers' cached mappings follow.
    pub fn change_overlay_mapping(
        &mut self,
        name: &str,
        change: super::MappingChange,
    ) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::ChangeOverlayMapping {
            name: name.to_owned(),
            change,
        })?)
    }

    /// Changes a property of an instance.
    pub fn set_instance_property(
        &mut self,
        name: &str,
        property: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        super::done(self.call(ClientRequest::SetInstanceProperty {
            name: name.to_owned(),
            property: property.to_owned(),
            value: value.to_owned(),
        })?)
    }

    /// The session's queue, attached: framed I/O on its rings (of the sizes
    /// [`ConnectOptions::rxbuf`] and [`ConnectOptions::txbuf`] asked for).
    pub fn open_queue(&mut self) -> Result<ClientQueue, ClientError> {
        let (reply, fds) = self.request(&self.open_queue.clone())?;
        super::queue(reply, fds)
    }

    /// Makes this session's queue (made now) a capture of a client or of the link: its rx
    /// ring receives a [`netmux_proto::ops::CaptureRecord`] per frame.
    pub fn capture(
        &mut self,
        request: netmux_proto::ops::CaptureRequest,
    ) -> Result<ClientQueue, ClientError> {
        let (reply, fds) = self.request(&ClientRequest::Capture(request))?;
        super::queue(reply, fds)
    }

    /// A client's queue properties (`rxbuf`, `txbuf`, `maxsize`, `mintu`, `maxtu`) and netd's
    /// limits, after setting the `PROP=VALUE` pairs of `request`.
    pub fn properties(
        &mut self,
        request: netmux_proto::ops::PropertyRequest,
    ) -> Result<Vec<netmux_proto::ops::PropertyView>, ClientError> {
        match self.call(ClientRequest::Properties(request))? {
            ClientReply::Properties(view) => Ok(view),
            other => Err(super::unexpected(other)),
        }
    }

    /// Changes the admin firewall of this session's instance (root and netd's admin uids).
    pub fn firewall(
        &mut self,
        request: netmux_proto::ops::FirewallRequest,
    ) -> Result<Vec<netmux_proto::ops::RuleView>, ClientError> {
        match self.call(ClientRequest::Firewall(request))? {
            ClientReply::Done => Ok(Vec::new()),
            ClientReply::Firewall(rules) => Ok(rules),
            other => Err(super::unexpected(other)),
        }
    }
}

/// The longest pause between two attempts of [`Reconnecting::reconnect`].
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The first pause of [`Reconnecting::reconnect`]; each failed attempt doubles it, up to
/// [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// A session that rides through a netd restart: it remembers the ports it bound and whether
/// it opened its queue, and [`Reconnecting::reconnect`] connects again with backoff, binds the
/// same ports and opens the queue again. The new queue replaces the old one under the
/// client's stack (`QueueDevice::replace_queue`), so connections the stack holds carry on
/// once frames flow again.
#[derive(Debug)]
pub struct Reconnecting {
    path: std::path::PathBuf,
    options: ConnectOptions,
    client: Client,
    ports: Vec<(Transport, u16)>,
    /// Groups joined, by (group, UDP port).
    groups: Vec<(std::net::IpAddr, u16)>,
    queue_open: bool,
}

impl Reconnecting {
    /// Connects to netd in `runtime_dir` as `options` say.
    pub fn connect_with(
        runtime_dir: &Path,
        options: &ConnectOptions,
    ) -> Result<Reconnecting, ClientError> {
        let path = super::socket_in(runtime_dir);
        let client = Client::connect_socket_with(&path, options)?;
        Ok(Reconnecting {
            path,
            options: options.clone(),
            client,
            ports: Vec::new(),
            groups: Vec::new(),
            queue_open: false,
        })
    }

    /// The session for any other request (what it binds there is not bound again).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Binds a port, and binds it again after every reconnection.
    pub fn bind_port(&mut self, transport: Transport, port: u16) -> Result<u16, ClientError> {
        let port = self.client.bind_port(transport, port)?;
        self.ports.push((transport, port));
        Ok(port)
    }

    /// Joins a multicast group on a bound UDP port, and joins it again after every
    /// reconnection.
    pub fn join_group(&mut self, group: std::net::IpAddr, port: u16) -> Result<(), ClientError> {
        self.client.join_group(group, port)?;
        if !self.groups.contains(&(group, port)) {
            self.groups.push((group, port));
        }
        Ok(())
    }

    /// Opens the session's queue, and opens it again after every reconnection.
    pub fn open_queue(&mut self) -> Result<ClientQueue, ClientError> {
        let queue = self.client.open_queue()?;
        self.queue_open = true;
        Ok(queue)
    }

    /// Connects to netd again, waiting [`FIRST_BACKOFF`] and then twice as long after every
    /// failed attempt (at most [`MAX_BACKOFF`]) while nothing answers, for at most `patience`
    /// or until `give_up` says so; then binds the same ports, joins the same groups and, if it
    /// was open, opens the queue again and returns it. Counted as nothing answering yet, and
    /// tried again: the new connection failing; netd answering that its driver is gone (a
    /// client notices a driver's death through its queue before netd does); and one of this
    /// client's ports still in use, since the old session holding it may not be ended yet at
    /// netd (after `patience`, a port another client took meanwhile is reported as in use).
    /// Any other refusal ends the attempt at once: trying again would not change netd's mind.
    pub fn reconnect(
        &mut self,
        patience: Duration,
        give_up: impl Fn() -> bool,
    ) -> Result<Option<ClientQueue>, ClientError> {
        let start = std::time::Instant::now();
        let mut pause = FIRST_BACKOFF;
        loop {
            let error = match self.take_up_again() {
                Ok(queue) => return Ok(queue),
                Err(e) => e,
            };
            let transient = match &error {
                ClientError::Refused(reply) => {
                    matches!(
                        reply.code,
                        ErrorCode::Driver | ErrorCode::Again | ErrorCode::InUse
                    )
                }
                ClientError::Connect { .. }
                | ClientError::Channel(_)
                | ClientError::NoAnswer(_) => true,
                ClientError::Unexpected(_) | ClientError::Attach(_) => false,
            };
            if !transient || start.elapsed() + pause > patience || give_up() {
                return Err(error);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt of [`Reconnecting::reconnect`]: a new session with the same ports, groups
    /// and queue.
    fn take_up_again(&mut self) -> Result<Option<ClientQueue>, ClientError> {
        self.client = Client::connect_socket_with(&self.path, &self.options)?;
        for &(transport, port) in &self.ports {
            self.client.bind_port(transport, port)?;
        }
        for &(group, port) in &self.groups {
            self.client.join_group(group, port)?;
        }
        if self.queue_open {
            return self.client.open_queue().map(Some);
        }
        Ok(None)
    }
}
