//! netd's request handling: the core's decisions carried out at the driver, one request at a
//! time, with no sockets of its own (the tokio shell in [`crate::server`] feeds it).
//!
//! Guarantees:
//! * a port's reply goes out only after every one of its rx and tx filters was installed
//!   (`install_filter` returned `Ok`); if one fails, those already installed are removed and the
//!   port is refused;
//! * a closed port, and every port of an ended session, is free again only after the driver
//!   confirmed the removal of all its filters; if the driver cannot confirm (it is gone), the
//!   port stays unusable;
//! * a session's end removes, in order, its ports' filters, its tap and exclusive filters, its
//!   queue's filters and then the queue (with its ring memory);
//! * every refusal is an [`ErrorReply`] with a stable code; only a wrong protocol version ends
//!   the session from here.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use netmux_proto::client::{self, ClientReply, ClientRequest, HostConfig};
use netmux_proto::driver::{Counters, Direction, FilterId, QueueId, RxMode};
use netmux_proto::{frame, ErrorCode, ErrorReply, PROTOCOL_VERSION};
use netmux_ring::QueueConfig;

use crate::config::{link_local_from_mac, Config};
use crate::core::{self, Core, CoreError, Credentials, PortError, PortTable, SessionId, Transport};
use crate::driver_link::{CreatedQueue, DriverError, DriverLink, FilterSpec, HOST_QUEUE};
use crate::filters::{self, HostIdentity};

/// Why netd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured ring geometry is not valid.
    #[error("ring configuration: {0}")]
    Rings(#[from] netmux_ring::RingConfigError),
    /// The driver refused to set up netd's own host queue.
    #[error("setting up the host queue: {0}")]
    Driver(#[from] DriverError),
}

/// What the shell sends back for one request.
#[derive(Debug)]
pub struct Response {
    /// The reply.
    pub reply: ClientReply,
    /// Descriptors that travel with it.
    pub fds: Vec<OwnedFd>,
    /// Whether the session ends after the reply.
    pub end: bool,
}

impl Response {
    fn reply(reply: ClientReply) -> Response {
        Response {
            reply,
            fds: Vec::new(),
            end: false,
        }
    }
}

struct SessionQueue {
    id: QueueId,
    /// The client's descriptors, until `open_queue` hands them out.
    handout: Option<CreatedQueue>,
    ring_bytes: u64,
    /// The queue's own filters (ARP tx).
    filters: Vec<FilterId>,
}

#[derive(Default)]
struct SessionExtra {
    queue: Option<SessionQueue>,
    ports: HashMap<(Transport, u16), Vec<FilterId>>,
    user_filters: HashMap<core::FilterId, FilterId>,
}

/// A session as `netmux ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub id: SessionId,
    /// Its peer.
    pub creds: Credentials,
    /// Ports in force.
    pub ports: Vec<(Transport, u16)>,
    /// Its queue, if created.
    pub queue: Option<QueueId>,
}

/// netd's state. See the module documentation.
pub struct Netd {
    core: Core,
    driver: Box<dyn DriverLink>,
    host: HostIdentity,
    host_config: HostConfig,
    rings: QueueConfig,
    ring_bytes: u64,
    sessions: HashMap<SessionId, SessionExtra>,
    next_queue: u32,
    next_filter: u64,
    host_queue: Option<CreatedQueue>,
    /// Why the driver is gone, once netd noticed.
    driver_gone: Option<String>,
}

impl std::fmt::Debug for Netd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netd")
            .field("host", &self.host)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Bytes of session descriptions in one `ListSessions` reply; the rest are counted as omitted.
/// Half of [`frame::MAX_BODY`], leaving room for the reply's own framing with a wide margin,
/// so a busy host's listing is cut short rather than refused by the framing layer.
pub const LIST_REPLY_BUDGET: usize = frame::MAX_BODY / 2;

/// The listing policy: uid 0 sees every session, any other uid only its own uid's.
pub fn may_see(asker_uid: u32, session_uid: u32) -> bool {
    asker_uid == 0 || asker_uid == session_uid
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

fn core_error(e: CoreError) -> ErrorReply {
    let code = match &e {
        CoreError::NoSession | CoreError::NotActive | CoreError::AlreadyActive => {
            ErrorCode::Protocol
        }
        CoreError::Port(PortError::InUse { .. } | PortError::Releasing { .. }) => ErrorCode::InUse,
        CoreError::Port(PortError::Zero) => ErrorCode::Protocol,
        CoreError::Port(PortError::Exhausted(_)) => ErrorCode::Limit,
        CoreError::Port(PortError::NotOwner { .. }) | CoreError::NoFilter => ErrorCode::NotFound,
        CoreError::Port(PortError::NotReleasing { .. }) => ErrorCode::Internal,
        CoreError::Privileged { .. } | CoreError::FilterNotAllowed { .. } => ErrorCode::Denied,
        CoreError::Limit(_) => ErrorCode::Limit,
    };
    error(code, e.to_string())
}

fn driver_error(e: DriverError) -> ErrorReply {
    match e {
        DriverError::BadFilter(m) => error(ErrorCode::BadFilter, m),
        DriverError::Refused(r) => error(ErrorCode::Driver, r.message),
        DriverError::Gone(m) => error(ErrorCode::Driver, format!("driver unavailable: {m}")),
    }
}

impl Netd {
    /// netd with this configuration over this driver. With `config.host_stack`, creates the
    /// host queue ([`HOST_QUEUE`]) and its filters at once.
    pub fn new(config: &Config, driver: Box<dyn DriverLink>) -> Result<Netd, StartError> {
        let ring_bytes = netmux_ring::layout_of(&config.rings)?.total_len;
        let link = driver.link_info();
        let host = HostIdentity {
            mac: link.mac,
            ipv4: config.addrs.ipv4.map(|(a, _)| a),
            ipv6: config
                .addrs
                .ipv6_link_local
                .then(|| link_local_from_mac(link.mac)),
        };
        let host_config = HostConfig {
            link,
            ipv4: config.addrs.ipv4.map(|(a, p)| (a.octets(), p)),
            gateway: config.addrs.gateway.map(|g| g.octets()),
            ipv6_link_local: host.ipv6.map(|a| a.octets()),
        };
        let mut netd = Netd {
            core: Core::new(
                config.policy.clone(),
                PortTable::new(config.ephemeral.clone()),
            ),
            driver,
            host,
            host_config,
            rings: config.rings,
            ring_bytes,
            sessions: HashMap::new(),
            next_queue: HOST_QUEUE.0 + 1,
            next_filter: 1,
            host_queue: None,
            driver_gone: None,
        };
        if config.host_stack {
            let created = netd.driver.create_queue(HOST_QUEUE, netd.rings)?;
            let filters = [
                (filters::host_rx(&netd.host), Direction::Rx),
                (filters::host_tx(&netd.host), Direction::Tx),
            ];
            for (expr, direction) in filters {
                if let Some(expr) = expr {
                    let spec = FilterSpec {
                        queue: HOST_QUEUE,
                        filter: netd.filter_id(),
                        direction,
                        mode: RxMode::Owner,
                        binding: None,
                        expr,
                    };
                    netd.driver.install_filter(&spec)?;
                }
            }
            netd.driver.set_netd_queue(HOST_QUEUE)?;
            netd.host_queue = Some(created);
        }
        let ipv4: Vec<[u8; 4]> = netd.host.ipv4.iter().map(|a| a.octets()).collect();
        netd.driver.set_host_addresses(ipv4)?;
        Ok(netd)
    }

    /// The host's identity (MAC and addresses).
    pub fn host(&self) -> &HostIdentity {
        &self.host
    }

    /// What a client learns at hello.
    pub fn host_config(&self) -> &HostConfig {
        &self.host_config
    }

    /// The host queue's descriptors, once, for netd's host stack.
    pub fn take_host_queue(&mut self) -> Option<CreatedQueue> {
        self.host_queue.take()
    }

    /// The core (read-only), e.g. to ask whether a port is free.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Every session, for `netmux ls`.
    pub fn sessions(&self) -> Vec<SessionSummary> {
        self.core
            .sessions()
            .map(|s| SessionSummary {
                id: s.id,
                creds: s.creds,
                ports: s.ports.iter().copied().collect(),
                queue: self
                    .sessions
                    .get(&s.id)
                    .and_then(|e| e.queue.as_ref().map(|q| q.id)),
            })
            .collect()
    }

    fn filter_id(&mut self) -> FilterId {
        let id = FilterId(self.next_filter);
        self.next_filter += 1;
        id
    }

    /// Whether the driver has gone since the last call: `Some(why)` exactly once, when netd
    /// first notices. From then on netd refuses every new client ([`Netd::connect`]) and every
    /// request that needs the driver; the shell ends every session.
    pub fn check_driver(&mut self) -> Option<String> {
        if self.driver_gone.is_some() {
            return None;
        }
        let why = self.driver.gone()?;
        self.driver_gone = Some(why.clone());
        Some(why)
    }

    /// Why the driver is gone, if netd noticed.
    pub fn driver_gone(&self) -> Option<&str> {
        self.driver_gone.as_deref()
    }

    /// A client connected. Refused with [`ErrorCode::Driver`] once the driver is gone.
    pub fn connect(&mut self, creds: Credentials, now: Duration) -> Result<SessionId, ErrorReply> {
        if let Some(why) = self.check_driver() {
            tracing::error!("the driver is gone ({why}); refusing new clients");
        }
        if let Some(why) = &self.driver_gone {
            return Err(error(
                ErrorCode::Driver,
                format!("netd cannot serve: the driver is gone ({why})"),
            ));
        }
        let id = self.core.connect(creds, now).map_err(core_error)?;
        self.sessions.insert(id, SessionExtra::default());
        Ok(id)
    }

    /// Sessions whose handshake timed out by `now`; end each with [`Netd::disconnect`].
    pub fn expired(&self, now: Duration) -> Vec<SessionId> {
        self.core.expired(now)
    }

    /// The reply to a message that could not be decoded (the session goes on).
    pub fn malformed(&self, why: &str) -> Response {
        Response::reply(ClientReply::Error(error(
            ErrorCode::Protocol,
            format!("malformed request: {why}"),
        )))
    }

    /// Handles one request.
    pub fn handle(&mut self, id: SessionId, request: ClientRequest) -> Response {
        let result = match request {
            ClientRequest::Hello { version } if version != PROTOCOL_VERSION => {
                return Response {
                    reply: ClientReply::Error(error(
                        ErrorCode::Version,
                        format!("netd speaks protocol {PROTOCOL_VERSION}, not {version}"),
                    )),
                    fds: Vec::new(),
                    end: true,
                };
            }
            ClientRequest::Hello { .. } => {
                self.core
                    .hello(id)
                    .map_err(core_error)
                    .map(|_| ClientReply::Hello {
                        version: PROTOCOL_VERSION,
                        host: self.host_config.clone(),
                    })
            }
            ClientRequest::GetPort { transport } => self.bind(id, transport, None),
            ClientRequest::BindPort { transport, port } => self.bind(id, transport, Some(port)),
            ClientRequest::ClosePort { transport, port } => self
                .close_port(id, transport, port)
                .map(|_| ClientReply::Done),
            ClientRequest::OpenFilter { expr, mode } => self.open_filter(id, expr, mode),
            ClientRequest::CloseFilter { filter } => self
                .close_filter(id, core::FilterId(filter))
                .map(|_| ClientReply::Done),
            ClientRequest::OpenQueue => return self.open_queue(id),
            ClientRequest::Stats => self.stats(id),
            ClientRequest::ListSessions => self.list_sessions(id),
        };
        Response::reply(result.unwrap_or_else(ClientReply::Error))
    }

    fn extra(&mut self, id: SessionId) -> Result<&mut SessionExtra, ErrorReply> {
        self.sessions
            .get_mut(&id)
            .ok_or_else(|| core_error(CoreError::NoSession))
    }

    fn bind(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: Option<u16>,
    ) -> Result<ClientReply, ErrorReply> {
        let port = match port {
            Some(p) => self.core.bind_port(id, transport, p).map(|_| p),
            None => self.core.get_port(id, transport),
        }
        .map_err(core_error)?;
        match self.install_port(id, transport, port) {
            Ok(ids) => {
                self.core
                    .port_installed(id, transport, port)
                    .map_err(core_error)?;
                self.extra(id)?.ports.insert((transport, port), ids);
                Ok(ClientReply::Port { transport, port })
            }
            Err((e, clean)) => {
                if clean {
                    let _ = self.core.port_install_failed(id, transport, port);
                } else {
                    // Some filter may still be in force: the port stays unusable.
                    let _ = self.core.port_installed(id, transport, port);
                    let _ = self.core.close_port(id, transport, port);
                }
                Err(e)
            }
        }
    }

    /// Installs a port's filters. On failure, whether everything installed was removed again.
    fn install_port(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<Vec<FilterId>, (ErrorReply, bool)> {
        let queue = self.ensure_queue(id).map_err(|e| (e, true))?;
        let filters = filters::port_filters(&self.host, transport, port).ok_or_else(|| {
            (
                error(ErrorCode::Internal, "the host has no IP address"),
                true,
            )
        })?;
        let mut specs: Vec<FilterSpec> = Vec::new();
        for (expr, binding) in filters.rx {
            specs.push(FilterSpec {
                queue,
                filter: self.filter_id(),
                direction: Direction::Rx,
                mode: RxMode::Owner,
                binding: Some(binding),
                expr,
            });
        }
        for (expr, binding) in filters.tx {
            specs.push(FilterSpec {
                queue,
                filter: self.filter_id(),
                direction: Direction::Tx,
                mode: RxMode::Owner,
                binding: Some(binding),
                expr,
            });
        }
        let mut installed = Vec::new();
        for spec in &specs {
            if let Err(e) = self.driver.install_filter(spec) {
                let clean = self.remove_filters(queue, &installed);
                return Err((driver_error(e), clean));
            }
            installed.push(spec.filter);
        }
        Ok(installed)
    }

    /// Removes filters in reverse order; whether the driver confirmed every removal.
    fn remove_filters(&mut self, queue: QueueId, ids: &[FilterId]) -> bool {
        let mut all = true;
        for &f in ids.iter().rev() {
            if let Err(e) = self.driver.remove_filter(queue, f) {
                tracing::warn!(?queue, ?f, "removing a filter failed: {e}");
                all = false;
            }
        }
        all
    }

    fn ensure_queue(&mut self, id: SessionId) -> Result<QueueId, ErrorReply> {
        if let Some(q) = &self.extra(id)?.queue {
            return Ok(q.id);
        }
        self.core
            .reserve_ring(id, self.ring_bytes)
            .map_err(core_error)?;
        let queue = QueueId(self.next_queue);
        self.next_queue = self.next_queue.wrapping_add(1).max(HOST_QUEUE.0 + 1);
        let created = match self.driver.create_queue(queue, self.rings) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.core.release_ring(id, self.ring_bytes);
                return Err(driver_error(e));
            }
        };
        let mut own = Vec::new();
        if let Some(expr) = filters::queue_arp_tx(&self.host) {
            let spec = FilterSpec {
                queue,
                filter: self.filter_id(),
                direction: Direction::Tx,
                mode: RxMode::Owner,
                binding: None,
                expr,
            };
            if let Err(e) = self.driver.install_filter(&spec) {
                if self.driver.destroy_queue(queue).is_ok() {
                    let _ = self.core.release_ring(id, self.ring_bytes);
                }
                return Err(driver_error(e));
            }
            own.push(spec.filter);
        }
        let ring_bytes = created.ring_bytes;
        self.extra(id)?.queue = Some(SessionQueue {
            id: queue,
            handout: Some(created),
            ring_bytes,
            filters: own,
        });
        Ok(queue)
    }

    fn open_queue(&mut self, id: SessionId) -> Response {
        let result = self
            .require_active(id)
            .and_then(|_| self.ensure_queue(id))
            .and_then(|_| {
                let q = self
                    .extra(id)?
                    .queue
                    .as_mut()
                    .ok_or_else(|| error(ErrorCode::Internal, "queue vanished"))?;
                let fds = q.handout.take().ok_or_else(|| {
                    error(
                        ErrorCode::Protocol,
                        "this session's queue was already handed out",
                    )
                })?;
                Ok((q.ring_bytes, fds))
            });
        match result {
            Ok((ring_bytes, q)) => Response {
                reply: ClientReply::Queue { ring_bytes },
                fds: vec![q.memfd, q.client_wake, q.driver_wake],
                end: false,
            },
            Err(e) => Response::reply(ClientReply::Error(e)),
        }
    }

    fn close_port(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<(), ErrorReply> {
        self.core
            .close_port(id, transport, port)
            .map_err(core_error)?;
        let extra = self.extra(id)?;
        let ids = extra.ports.remove(&(transport, port)).unwrap_or_default();
        let queue = extra.queue.as_ref().map(|q| q.id);
        self.release_port(queue, transport, port, &ids);
        Ok(())
    }

    /// Removes a released port's filters and, if the driver confirmed, frees the port.
    fn release_port(
        &mut self,
        queue: Option<QueueId>,
        transport: Transport,
        port: u16,
        ids: &[FilterId],
    ) {
        let removed = match queue {
            Some(q) => self.remove_filters(q, ids),
            None => ids.is_empty(),
        };
        if removed {
            let _ = self.core.port_removed(transport, port);
        } else {
            tracing::error!(%transport, port, "port stays unusable: its filters may be in force");
        }
    }

    fn open_filter(
        &mut self,
        id: SessionId,
        expr: String,
        mode: client::FilterMode,
    ) -> Result<ClientReply, ErrorReply> {
        let (core_mode, rx_mode) = match mode {
            client::FilterMode::Tap => (core::FilterMode::Tap, RxMode::Tap),
            client::FilterMode::Exclusive => (core::FilterMode::Exclusive, RxMode::Exclusive),
        };
        let f = self.core.open_filter(id, core_mode).map_err(core_error)?;
        let installed = self.ensure_queue(id).and_then(|queue| {
            let spec = FilterSpec {
                queue,
                filter: self.filter_id(),
                direction: Direction::Rx,
                mode: rx_mode,
                binding: None,
                expr,
            };
            self.driver
                .install_filter(&spec)
                .map(|_| spec.filter)
                .map_err(driver_error)
        });
        match installed {
            Ok(driver_id) => {
                self.extra(id)?.user_filters.insert(f, driver_id);
                Ok(ClientReply::Filter { filter: f.0 })
            }
            Err(e) => {
                let _ = self.core.close_filter(id, f);
                Err(e)
            }
        }
    }

    fn close_filter(&mut self, id: SessionId, filter: core::FilterId) -> Result<(), ErrorReply> {
        self.require_active(id)?;
        let extra = self.extra(id)?;
        let driver_id = *extra
            .user_filters
            .get(&filter)
            .ok_or_else(|| core_error(CoreError::NoFilter))?;
        let queue = extra.queue.as_ref().map(|q| q.id);
        if let Some(q) = queue {
            self.driver
                .remove_filter(q, driver_id)
                .map_err(driver_error)?;
        }
        self.extra(id)?.user_filters.remove(&filter);
        self.core.close_filter(id, filter).map_err(core_error)
    }

    fn require_active(&self, id: SessionId) -> Result<(), ErrorReply> {
        match self.core.session(id).map(|s| s.state) {
            Some(core::SessionState::Active) => Ok(()),
            Some(_) => Err(core_error(CoreError::NotActive)),
            None => Err(core_error(CoreError::NoSession)),
        }
    }

    fn stats(&mut self, id: SessionId) -> Result<ClientReply, ErrorReply> {
        self.require_active(id)?;
        let queue = self.extra(id)?.queue.as_ref().map(|q| q.id);
        let Some(queue) = queue else {
            return Ok(ClientReply::Stats(Counters::default()));
        };
        let (_, queues) = self.driver.stats().map_err(driver_error)?;
        Ok(ClientReply::Stats(
            queues
                .into_iter()
                .find(|(q, _)| *q == queue)
                .map(|(_, c)| c)
                .unwrap_or_default(),
        ))
    }

    /// The sessions `id`'s client may see (every one for uid 0, else those of its own uid), with
    /// their queues and the driver's counters. If the driver cannot be asked, the list still
    /// comes, without counters.
    fn list_sessions(&mut self, id: SessionId) -> Result<ClientReply, ErrorReply> {
        self.require_active(id)?;
        let asker = self
            .core
            .session(id)
            .map(|s| s.creds.uid)
            .ok_or_else(|| core_error(CoreError::NoSession))?;
        let (link, counters): (Option<Counters>, HashMap<QueueId, Counters>) =
            match self.driver.stats() {
                Ok((link, queues)) => (Some(link), queues.into_iter().collect()),
                Err(e) => {
                    tracing::warn!("listing sessions without counters: {e}");
                    (None, HashMap::new())
                }
            };
        let rings = self.rings;
        let visible = self
            .core
            .sessions()
            .filter(|s| may_see(asker, s.creds.uid))
            .map(|s| {
                let queue = self.sessions.get(&s.id).and_then(|e| e.queue.as_ref());
                client::SessionInfo {
                    id: s.id.0,
                    caller: s.id == id,
                    pid: s.creds.pid,
                    uid: s.creds.uid,
                    gid: s.creds.gid,
                    active: s.state == core::SessionState::Active,
                    ports: s.ports.iter().map(|&(t, p)| (t, p)).collect(),
                    filters: s
                        .filters
                        .iter()
                        .map(|&(f, mode)| {
                            let mode = match mode {
                                core::FilterMode::Tap => client::FilterMode::Tap,
                                core::FilterMode::Exclusive => client::FilterMode::Exclusive,
                            };
                            (f.0, mode)
                        })
                        .collect(),
                    queue: queue.map(|q| client::QueueInfo {
                        id: q.id.0,
                        rings,
                        ring_bytes: q.ring_bytes,
                        attached: q.handout.is_none(),
                    }),
                    counters: queue.and_then(|q| counters.get(&q.id).cloned()),
                }
            });
        let mut list = client::SessionList {
            link,
            ..client::SessionList::default()
        };
        let mut bytes = 0;
        for info in visible {
            // A session's JSON: a few hundred bytes, up to ~15 KiB with 1,024 ports.
            let size = frame::encode(&info, 0).map_or(usize::MAX, |b| b.len());
            if list.omitted > 0 || bytes + size > LIST_REPLY_BUDGET {
                list.omitted += 1;
            } else {
                bytes += size;
                list.sessions.push(info);
            }
        }
        Ok(ClientReply::Sessions(list))
    }

    /// Ends a session (closed, died, broke the protocol, timed out) and frees everything it
    /// held, in order: ports' filters (then the ports), tap and exclusive filters, the queue's
    /// own filters, the queue. Ending a session twice does nothing.
    pub fn disconnect(&mut self, id: SessionId) {
        let Ok(teardown) = self.core.disconnect(id) else {
            return;
        };
        let mut extra = self.sessions.remove(&id).unwrap_or_default();
        let queue = extra.queue.as_ref().map(|q| q.id);
        for &(t, p) in teardown.ports.iter().chain(&teardown.installing) {
            let ids = extra.ports.remove(&(t, p)).unwrap_or_default();
            self.release_port(queue, t, p, &ids);
        }
        let user: Vec<FilterId> = extra.user_filters.values().copied().collect();
        if let Some(q) = extra.queue.take() {
            self.remove_filters(q.id, &user);
            self.remove_filters(q.id, &q.filters);
            if let Err(e) = self.driver.destroy_queue(q.id) {
                tracing::warn!(queue = ?q.id, "destroying a queue failed: {e}");
            }
        }
    }
}
