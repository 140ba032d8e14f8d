//! netd's request handling: what each client request means for the core and for the driver,
//! decided without any I/O. As quinn-proto's endpoint does, [`Netd`] returns what must be done
//! ([`Step`]): a reply for the client, or [`DriverWork`] (driver commands, in order) whose
//! outcomes the shell feeds back with [`Netd::resume`]. The shell ([`crate::server`]) carries
//! the work out at the driver with a deadline and without holding netd's state lock, so one
//! slow driver reply delays only the request that waits for it.
//!
//! Guarantees:
//! * a port's reply goes out only after every one of its rx and tx filters was installed (the
//!   driver confirmed each); if one fails, those already installed are removed and the port is
//!   refused;
//! * a closed port, and every port of an ended session, is free again only after the driver
//!   confirmed the removal of all its filters; if the driver cannot confirm (it is gone), the
//!   port stays unusable;
//! * a session's end removes, in order, its ports' filters, its tap and exclusive filters, its
//!   queue's filters and then the queue (with its ring memory);
//! * two requests never race for one port: the core reserves it before any driver work starts;
//! * every refusal is an [`ErrorReply`] with a stable code; only a wrong protocol version ends
//!   the session from here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use netmux_proto::client::{
    self, ClientReply, ClientRequest, HostConfig, InstanceSpec, InstanceView, MacChoice,
    DEFAULT_INSTANCE_NAME,
};
use netmux_proto::driver::{
    Counters, Direction, FilterId, InstanceId, PortBinding, QueueId, RxMode, DEFAULT_INSTANCE,
};
use netmux_proto::{frame, ErrorCode, ErrorReply, LinkInfo, PROTOCOL_VERSION};
use netmux_ring::QueueConfig;

use crate::config::{opaque_link_local, Config};
use crate::core::{
    self, Core, CoreError, Credentials, Policy, PortError, PortTable, SessionId, Transport,
};
use crate::driver_link::{
    CreatedQueue, DriverCommand, DriverError, DriverOutcome, DriverStats, FilterSpec, HOST_QUEUE,
};
use crate::filters::{self, HostIdentity};
use crate::instance::{Instance, InstanceEntry, InstanceError, InstancesFile};

mod ops;
pub use ops::{compile_rule, parse_size};

/// Why netd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured ring geometry is not valid.
    #[error("ring configuration: {0}")]
    Rings(#[from] netmux_ring::RingConfigError),
    /// netd's own filters do not compile (a bug, or an address the compiler refuses).
    #[error("building netd's own filters: {0}")]
    Filter(String),
    /// The driver refused to set up netd's own host queue.
    #[error("setting up the host queue: {0}")]
    Driver(#[from] DriverError),
    /// The host's address cannot be a host's address.
    #[error(transparent)]
    HostAddress(#[from] crate::config::ConfigError),
    /// The configuration file's instances cannot be restored.
    #[error("instances in {file}: {why}")]
    Instances {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        why: String,
    },
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

    fn error(e: ErrorReply) -> Response {
        Response::reply(ClientReply::Error(e))
    }
}

/// What the shell must do next for a request or a session's end.
#[must_use = "a step must be carried out"]
#[derive(Debug)]
pub enum Step {
    /// Send this to the client.
    Reply(Response),
    /// Carry out this work at the driver, then hand its outcomes to [`Netd::resume`].
    Driver(DriverWork),
    /// End these sessions (their clients see the connection close; each session's end runs
    /// [`Netd::disconnect`] as usual), wait until they are gone, then call [`Netd::resume`]
    /// with `then` and no outcomes.
    EndSessions {
        /// The sessions.
        sessions: Vec<SessionId>,
        /// What follows.
        then: Then,
    },
    /// Nothing more (a session's end finished).
    Finished,
    /// Wait for a mapping backend to take a change, then reply with its outcome
    /// ([`WaitReply::outcome`]).
    Wait(WaitReply),
}

/// A reply that waits on a mapping backend (etcd) taking a change.
#[derive(Debug)]
pub struct WaitReply(tokio::sync::oneshot::Receiver<Result<(), crate::overlay::ChangeError>>);

impl WaitReply {
    /// The reply: done, or the backend's refusal.
    pub async fn outcome(self) -> Response {
        Self::respond(self.0.await)
    }

    /// [`WaitReply::outcome`] on the calling thread.
    pub fn outcome_blocking(self) -> Response {
        Self::respond(self.0.blocking_recv())
    }

    fn respond(
        answer: Result<
            Result<(), crate::overlay::ChangeError>,
            tokio::sync::oneshot::error::RecvError,
        >,
    ) -> Response {
        match answer {
            Ok(Ok(())) => Response::reply(ClientReply::Done),
            Ok(Err(e @ crate::overlay::ChangeError::NoEntry(_))) => {
                Response::error(error(ErrorCode::NotFound, e.to_string()))
            }
            Ok(Err(e)) => Response::error(error(ErrorCode::Again, e.to_string())),
            Err(_) => Response::error(error(
                ErrorCode::Internal,
                "the mapping backend stopped before answering",
            )),
        }
    }
}

/// Driver commands to carry out in order, and what netd does with their outcomes.
#[must_use = "driver work must be carried out and resumed"]
#[derive(Debug)]
pub struct DriverWork {
    /// The commands, in order.
    pub commands: Vec<DriverCommand>,
    /// Whether to skip the rest after the first failure (installs: all or nothing);
    /// otherwise every command is tried (removals at a session's end).
    pub stop_at_first_failure: bool,
    /// What [`Netd::resume`] continues with.
    pub then: Then,
}

/// The continuation of a [`DriverWork`]: opaque, handed back to [`Netd::resume`].
#[derive(Debug)]
pub struct Then(Pending);

/// A queue created by this piece of work: its id and its own ARP and neighbour discovery
/// transmit filters.
#[derive(Clone, Copy, Debug)]
struct NewQueue {
    id: QueueId,
    arp: Option<FilterId>,
    nd: Option<FilterId>,
    /// Its geometry.
    rings: QueueConfig,
    /// The ring memory reserved for it.
    reserved: u64,
}

#[derive(Debug)]
enum Pending {
    /// A port's filters (and the session's queue first, if it had none).
    Bind {
        session: SessionId,
        transport: Transport,
        port: u16,
        queue: Option<NewQueue>,
        filters: Vec<FilterId>,
        queue_id: QueueId,
    },
    /// Removing what a failed bind installed.
    BindRollback {
        session: SessionId,
        transport: Transport,
        port: u16,
        error: ErrorReply,
    },
    /// Undoing a half-made queue (or instance); then the error.
    QueueRollback {
        session: SessionId,
        error: ErrorReply,
        /// Ring memory to give back once the queue is gone.
        release: u64,
    },
    /// `open_queue` on a queue made small at a bind: its rings of the size asked for.
    GrowQueue {
        session: SessionId,
        /// The ring memory reserved for the growth.
        grow: u64,
        /// The geometry asked for.
        rings: QueueConfig,
    },
    /// `open_queue`: the session's queue, created for the hand-out.
    OpenQueue { session: SessionId, queue: NewQueue },
    /// A tap or exclusive filter (and the queue first, if needed).
    OpenFilter {
        session: SessionId,
        filter: core::FilterId,
        queue: Option<NewQueue>,
        driver_filter: FilterId,
    },
    /// A group's rx filter and report tx filter installed (`join_group`).
    JoinGroup {
        session: SessionId,
        group: std::net::IpAddr,
        port: u16,
        filters: Vec<FilterId>,
    },
    /// A group's rx filter removed (`leave_group`).
    LeaveGroup {
        session: SessionId,
        group: std::net::IpAddr,
        port: u16,
    },
    /// Removing a tap or exclusive filter.
    CloseFilter {
        session: SessionId,
        filter: core::FilterId,
    },
    /// Removing a closed port's filters.
    ClosePort {
        session: SessionId,
        instance: InstanceId,
        transport: Transport,
        port: u16,
    },
    /// The session's counters.
    Stats { session: SessionId, queue: QueueId },
    /// `netmux ls`.
    ListSessions { session: SessionId },
    /// A session's end: how many removals belong to each port, in command order.
    Teardown {
        session: SessionId,
        instance: InstanceId,
        ports: Vec<((Transport, u16), usize)>,
        queue: Option<QueueId>,
    },
    /// An instance told to the driver, with netd's own transmit filter for it.
    CreateInstance {
        session: SessionId,
        instance: InstanceId,
        host_tx: Option<FilterId>,
    },
    /// An instance's sessions ended: remove it at the driver.
    DestroyInstanceSessionsEnded {
        session: SessionId,
        instance: InstanceId,
    },
    /// The instance is gone at the driver.
    DestroyInstance {
        session: SessionId,
        instance: InstanceId,
    },
    /// `netmux instance ls`.
    ListInstances { session: SessionId },
    /// `netmux capture`, `netmux firewall`.
    Operator(ops::OpsPending),
    /// An overlay created (or refused) at the driver.
    CreateOverlay { session: SessionId, name: String },
    /// An overlay removed at the driver.
    DestroyOverlay { session: SessionId, name: String },
    /// An overlay's mapping changed at its backend; the driver took the new tables.
    ChangeOverlayMapping { session: SessionId },
}

struct SessionQueue {
    id: QueueId,
    /// The client's descriptors, until `open_queue` hands them out.
    handout: Option<CreatedQueue>,
    ring_bytes: u64,
    /// Its geometry: the smallest until the client opens it, then the configured one.
    rings: QueueConfig,
    /// The queue's own filters (ARP tx).
    filters: Vec<FilterId>,
}

#[derive(Default)]
struct SessionExtra {
    queue: Option<SessionQueue>,
    ports: HashMap<(Transport, u16), Vec<FilterId>>,
    user_filters: HashMap<core::FilterId, FilterId>,
    /// Joined multicast groups by (group, UDP port): each an rx filter and the tx filter of
    /// its membership reports, also listed among its port's filters so that closing the port
    /// or ending the session removes them.
    groups: HashMap<(std::net::IpAddr, u16), Vec<FilterId>>,
    /// Whether driver work for this session is under way (the shell serves one request of a
    /// session at a time, so this only guards against a bug).
    busy: bool,
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

/// The bound and held ports as [`Netd::ports_raw`] copied them: each port's uid, the index of
/// its instance's name, its transport and number.
#[derive(Debug, Default)]
pub struct RawPorts {
    instances: Vec<String>,
    ports: Vec<(u32, usize, Transport, u16)>,
}

impl RawPorts {
    /// The ports file's entries, sorted ([`Netd::ports_snapshot`]).
    pub fn entries(self) -> Vec<crate::ports_file::Entry> {
        // Sorted as numbers: an instance's index stands for its name's place among the
        // names (each name is one instance's), so the order is the entries' own.
        let mut by_name: Vec<usize> = (0..self.instances.len()).collect();
        by_name.sort_unstable_by(|&a, &b| self.instances[a].cmp(&self.instances[b]));
        let mut place = vec![0; self.instances.len()];
        for (rank, &index) in by_name.iter().enumerate() {
            place[index] = rank;
        }
        let mut ports = self.ports;
        ports.sort_unstable_by_key(|&(uid, index, transport, port)| {
            (uid, place[index], transport, port)
        });
        ports
            .into_iter()
            .map(|(uid, index, transport, port)| crate::ports_file::Entry {
                uid,
                instance: self.instances[index].clone(),
                transport,
                port,
            })
            .collect()
    }
}

/// netd's state. See the module documentation.
pub struct Netd {
    /// Every instance, the default one ([`DEFAULT_INSTANCE`]) included.
    instances: BTreeMap<InstanceId, Instance>,
    /// Instances added or removed so far (part of [`Netd::ports_version`]).
    instance_changes: u64,
    /// Overlays and their mapping service.
    pub(crate) overlays: crate::overlay::OverlayService,
    names: BTreeMap<String, InstanceId>,
    /// Each session's instance (the default one until it says hello to another).
    session_instance: HashMap<SessionId, InstanceId>,
    /// netd's own transmit filter on the host queue, per instance.
    host_tx: HashMap<InstanceId, FilterId>,
    /// netd's receive filter on the host queue for the default instance's ARP.
    host_rx: Option<FilterId>,
    /// Whether the default instance takes its address from DHCP.
    dhcp: bool,
    /// What the DHCP clients reported, per instance, not yet applied
    /// ([`Netd::take_dhcp_commands`]).
    dhcp_events: Vec<(InstanceId, crate::dhcp::Event)>,
    /// netd's transmit filters of destroyed instances whose DHCP lease is not yet released:
    /// kept until the host stack has sent the RELEASE ([`Netd::dhcp_released`]).
    lingering_host_tx: Vec<(InstanceId, FilterId)>,
    /// Instances whose DHCP client the host stack has released, not yet applied.
    dhcp_released: BTreeSet<InstanceId>,
    /// Instances whose address `instance set ip=` changed, with the address they had and
    /// whether a lease of it is being released, for [`Netd::take_dhcp_commands`].
    readdress: Vec<(InstanceId, Option<std::net::Ipv4Addr>, bool)>,
    /// Whether the default instance's IPv6 default router is configured (`--gateway6`), so
    /// router advertisements do not replace it.
    static_gateway6: bool,
    /// Whether the default instance takes a global IPv6 address from router advertisements.
    slaac: bool,
    /// The static global address (`--ip6`), probed for duplicates by the host stack.
    static_ipv6: Option<(std::net::Ipv6Addr, u8)>,
    /// What SLAAC and duplicate address detection reported, not yet applied
    /// ([`Netd::take_slaac_commands`]).
    slaac_events: Vec<(InstanceId, crate::slaac::Event)>,
    link: LinkInfo,
    /// The policy a new instance starts from (its limits).
    template: Policy,
    default_ephemeral: RangeInclusive<u16>,
    /// Uids besides root that may create and destroy instances.
    admin_uids: BTreeSet<u32>,
    /// Where non-temporary instances are kept, if anywhere.
    instances_file: Option<PathBuf>,
    next_instance: u32,
    host_stack: bool,
    /// The geometry of a client's queue once the client opens it.
    rings: QueueConfig,
    /// Its ring memory.
    ring_bytes: u64,
    /// The geometry of a queue made before its client opens it (for a port's or a filter's
    /// sake): room for one frame of the largest size each way, so its ring memory is made
    /// when the client asks for the queue.
    small_rings: QueueConfig,
    /// Its ring memory.
    small_ring_bytes: u64,
    sessions: HashMap<SessionId, SessionExtra>,
    next_queue: u32,
    next_filter: u64,
    host_queue: Option<CreatedQueue>,
    /// Why the driver is gone, once netd noticed.
    driver_gone: Option<String>,
    /// Every setting of the configuration and its value, shown with each instance.
    settings: Vec<(String, String)>,
    /// The settings sections of the configuration file, written back as they were read.
    file_settings: (
        Option<crate::config::LimitSettings>,
        Option<crate::config::TimeoutSettings>,
    ),
    /// The admin firewall's rules (`netmux firewall`).
    firewall: ops::FirewallState,
    /// The `rxbuf` set on queues (`netmux set`), in bytes.
    rxbuf: HashMap<QueueId, u64>,
    /// The `txbuf` set on queues (`netmux set`), in bytes.
    txbuf: HashMap<QueueId, u64>,
    /// Sessions that ended whose queues and filters the driver is still removing, with their
    /// instance ([`Netd::tearing_down`]).
    teardowns: HashMap<SessionId, InstanceId>,
    /// The static address to probe for before netd starts, and the transmit filter that lets
    /// the probes out ([`crate::dad`]).
    dad: Option<(std::net::Ipv4Addr, FilterId)>,
}

impl std::fmt::Debug for Netd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netd")
            .field("instances", &self.instances.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// netd's state as the shell's tasks and the host stack share it.
pub type SharedNetd = Arc<Mutex<Netd>>;

/// Locks the state. A panic while holding the lock leaves a state in which each request either
/// happened or not; carrying on is better than taking every client down.
pub fn lock(state: &SharedNetd) -> MutexGuard<'_, Netd> {
    state.lock().unwrap_or_else(|e| e.into_inner())
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
        CoreError::Port(PortError::InUse { .. } | PortError::Held { .. }) => ErrorCode::InUse,
        CoreError::Port(PortError::Releasing { .. }) => ErrorCode::Again,
        CoreError::Port(PortError::Zero) => ErrorCode::Protocol,
        CoreError::Port(PortError::Exhausted(_)) => ErrorCode::Limit,
        CoreError::Port(PortError::NotOwner { .. }) | CoreError::NoFilter => ErrorCode::NotFound,
        CoreError::Port(PortError::NotReleasing { .. }) => ErrorCode::Internal,
        CoreError::Privileged { .. }
        | CoreError::FilterNotAllowed { .. }
        | CoreError::NotMember { .. } => ErrorCode::Denied,
        CoreError::Limit(_) => ErrorCode::Limit,
    };
    error(code, e.to_string())
}

fn driver_error(e: DriverError) -> ErrorReply {
    match e {
        DriverError::Refused(r) => error(ErrorCode::Driver, r.message),
        DriverError::Gone(m) => error(ErrorCode::Driver, format!("netd's driver is gone ({m})")),
    }
}

/// The first failure among `outcomes`, as a driver error (a skipped command counts as none).
fn first_failure(outcomes: &mut [DriverOutcome]) -> Option<DriverError> {
    outcomes.iter_mut().find_map(|o| match o {
        DriverOutcome::Failed(e) => Some(std::mem::replace(e, DriverError::Gone(String::new()))),
        _ => None,
    })
}

/// A filter spec from an expression: compiled here, so the driver link only carries bytes.
fn spec(
    queue: QueueId,
    filter: FilterId,
    direction: Direction,
    mode: RxMode,
    binding: Option<PortBinding>,
    expr: String,
) -> Result<FilterSpec, String> {
    let program = filters::compile(&expr)
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(FilterSpec {
        queue,
        filter,
        direction,
        mode,
        binding,
        expr,
        program,
    })
}

/// A port's receive filter: `ether dst MAC and ip|ip6 dst host A and tcp|udp dst port P` (its
/// `expr`), with its binding as the classifier's key. Its program is built instruction for
/// instruction as the compiler would emit it ([`netmux_classify::port_filter::program`], which
/// the compiler's tests pin to the expression's bytes), so binding a port compiles nothing; a
/// binding without an exact address (none of netd's) is compiled from `expr`.
fn port_rx_spec(
    queue: QueueId,
    filter: FilterId,
    binding: PortBinding,
    mac: [u8; 6],
    expr: String,
) -> Result<FilterSpec, String> {
    let built = netmux_classify::Key::of(&binding)
        .and_then(|key| netmux_classify::port_filter::program(&key, mac));
    match built {
        Some(program) => Ok(FilterSpec {
            queue,
            filter,
            direction: Direction::Rx,
            mode: RxMode::Owner,
            binding: Some(binding),
            expr,
            program: program.to_bytes(),
        }),
        None => spec(
            queue,
            filter,
            Direction::Rx,
            RxMode::Owner,
            Some(binding),
            expr,
        ),
    }
}

/// A port's transmit grant: a tx filter with its binding and no program, which the driver
/// keeps as an entry in the queue's transmit table (it accepts exactly what `expr`, the
/// binding's `ether src .. and ip src host .. and udp src port ..`, would). Binding a port
/// compiles nothing for its transmit side.
fn grant_spec(queue: QueueId, filter: FilterId, binding: PortBinding, expr: String) -> FilterSpec {
    FilterSpec {
        queue,
        filter,
        direction: Direction::Tx,
        mode: RxMode::Owner,
        binding: Some(binding),
        expr,
        program: Vec::new(),
    }
}

impl Netd {
    /// netd with this configuration, on a link with these properties. The returned commands
    /// tell the driver the default instance's addresses and every instance restored from the
    /// configuration file; with `config.host_stack` they also create the host queue
    /// ([`HOST_QUEUE`]) and netd's own filters. Carry them out (stopping at the first
    /// failure) and hand the outcomes to [`Netd::started`] before serving anyone.
    pub fn new(config: &Config, link: LinkInfo) -> Result<(Netd, Vec<DriverCommand>), StartError> {
        let ring_bytes = netmux_ring::layout_of(&config.rings)?.total_len;
        let small_rings = smallest_rings(config.rings);
        let small_ring_bytes = netmux_ring::layout_of(&small_rings)?.total_len;
        if let Some((a, p)) = config.addrs.ipv4 {
            crate::config::check_host_address(a, p)?;
        }
        if let Some((a, p)) = config.ipv6 {
            crate::config::check_host_address6(a, p)?;
        }
        let host = HostIdentity {
            mac: link.mac,
            ipv4: config.addrs.ipv4.map(|(a, _)| a),
            ipv6: config
                .addrs
                .ipv6_link_local
                .then(|| opaque_link_local(link.mac, DEFAULT_INSTANCE_NAME)),
            ipv6_global: config.ipv6.map(|(a, _)| a),
        };
        let host_config = HostConfig {
            link,
            ipv4: config.addrs.ipv4.map(|(a, p)| (a.octets(), p)),
            gateway: config.addrs.gateway.map(|g| g.octets()),
            ipv6_link_local: host.ipv6.map(|a| a.octets()),
            dns_servers: Vec::new(),
            ipv6: config
                .ipv6
                .map(|(a, p)| (a.octets(), p))
                .into_iter()
                .collect(),
            ipv6_gateway: config.ipv6_gateway.map(|g| g.octets()),
        };
        let default = Instance {
            id: DEFAULT_INSTANCE,
            spec: InstanceSpec {
                name: DEFAULT_INSTANCE_NAME.to_owned(),
                mac: MacChoice::Shared,
                ipv4: config
                    .addrs
                    .ipv4
                    .map_or(([0; 4], 0), |(a, p)| (a.octets(), p)),
                gateway: host_config.gateway,
                ipv6_link_local: config.addrs.ipv6_link_local,
                ephemeral: None,
                join_uids: None,
                privileged_uids: config.policy.privileged_uids.iter().copied().collect(),
                tap_uids: config.policy.tap_uids.iter().copied().collect(),
                exclusive_uids: config.policy.exclusive_uids.iter().copied().collect(),
                temporary: true,
                overlay: None,
                ipv6: config.ipv6.map(|(a, p)| (a.octets(), p)),
                dhcp: config.dhcp,
                slaac: config.slaac,
            },
            core: Core::new(
                config.policy.clone(),
                PortTable::new(config.ephemeral.clone()),
            ),
            host,
            host_config,
            shared_mac: true,
            ready: true,
            condemned: false,
            overlay: None,
        };
        let mut netd = Netd {
            overlays: crate::overlay::OverlayService::with_lease_ttl(config.overlay_lease_ttl),
            instances: BTreeMap::new(),
            instance_changes: 0,
            names: BTreeMap::new(),
            session_instance: HashMap::new(),
            host_tx: HashMap::new(),
            host_rx: None,
            dhcp: config.dhcp && config.host_stack,
            dhcp_events: Vec::new(),
            lingering_host_tx: Vec::new(),
            dhcp_released: BTreeSet::new(),
            readdress: Vec::new(),
            static_gateway6: config.ipv6_gateway.is_some(),
            slaac: config.slaac && config.host_stack && config.addrs.ipv6_link_local,
            static_ipv6: config.ipv6,
            slaac_events: Vec::new(),
            link,
            template: config.policy.clone(),
            default_ephemeral: config.ephemeral.clone(),
            admin_uids: config.admin_uids.clone(),
            instances_file: config.instances_file.clone(),
            next_instance: DEFAULT_INSTANCE.0 + 1,
            host_stack: config.host_stack,
            rings: config.rings,
            ring_bytes,
            small_rings,
            small_ring_bytes,
            sessions: HashMap::new(),
            next_queue: HOST_QUEUE.0 + 1,
            next_filter: 1,
            host_queue: None,
            driver_gone: None,
            settings: config.settings(),
            file_settings: (None, None),
            firewall: ops::FirewallState::default(),
            rxbuf: HashMap::new(),
            txbuf: HashMap::new(),
            teardowns: HashMap::new(),
            dad: None,
        };
        netd.names
            .insert(DEFAULT_INSTANCE_NAME.to_owned(), DEFAULT_INSTANCE);
        netd.instances.insert(DEFAULT_INSTANCE, default);
        let mut overlay_commands = Vec::new();
        if let Some(file) = &config.instances_file {
            let bad = |why: String| StartError::Instances {
                file: file.clone(),
                why,
            };
            let loaded = InstancesFile::load(file).map_err(bad)?;
            netd.file_settings = (loaded.limits.clone(), loaded.timeouts.clone());
            for entry in &loaded.overlays {
                let requests = netd
                    .overlays
                    .restore(entry.spec(), link.mtu)
                    .map_err(|e| bad(format!("overlay {}: {e}", entry.name)))?;
                overlay_commands.extend(requests.into_iter().map(DriverCommand::Overlay));
            }
            for entry in loaded.instances {
                let spec = entry
                    .spec()
                    .map_err(|e| bad(format!("{}: {e}", entry.name)))?;
                netd.admit(spec).map_err(|e| bad(e.message))?;
            }
            let mut rules = Vec::new();
            for entry in loaded.firewall {
                let instance = netd.names.get(&entry.instance).copied().ok_or_else(|| {
                    bad(format!(
                        "firewall rule {:?}: no instance {:?}",
                        entry.rule, entry.instance
                    ))
                })?;
                rules.push((instance, entry.rule));
            }
            netd.firewall
                .restore(rules)
                .map_err(|e| bad(format!("firewall rule {e}")))?;
        }
        let mut commands = netd.install_commands(overlay_commands, false)?;
        if let (true, true, false, Some((address, _))) = (
            config.probe_address,
            netd.host_stack,
            netd.dhcp,
            config.addrs.ipv4,
        ) {
            let filter = netd.filter_id();
            let s = spec(
                HOST_QUEUE,
                filter,
                Direction::Tx,
                RxMode::Owner,
                None,
                filters::arp_probe_tx(link.mac),
            )
            .map_err(StartError::Filter)?;
            commands.push(DriverCommand::InstallFilter(s));
            netd.dad = Some((address, filter));
        }
        for i in netd.instances.values_mut() {
            i.ready = true;
        }
        Ok((netd, commands))
    }

    /// What the driver must be told for netd's state: the host queue (with `host_stack`), the
    /// default instance's addresses, `overlay_commands`, every other instance (with
    /// `only_ready`, only those ready and not being destroyed), the firewall's rules, and
    /// netd's own filters on the host queue (with fresh ids). At start, and again for a new
    /// driver in place of one that went away ([`Netd::driver_replaced`]).
    fn install_commands(
        &mut self,
        overlay_commands: Vec<DriverCommand>,
        only_ready: bool,
    ) -> Result<Vec<DriverCommand>, StartError> {
        let mut commands = Vec::new();
        if self.host_stack {
            commands.push(DriverCommand::CreateQueue {
                queue: HOST_QUEUE,
                config: self.rings,
                instance: DEFAULT_INSTANCE,
            });
        }
        let mut infos = Vec::new();
        for i in self
            .instances
            .values()
            .filter(|i| !only_ready || (i.ready && !i.condemned))
        {
            if i.id == DEFAULT_INSTANCE {
                let ipv4: Vec<[u8; 4]> = i.host.ipv4.iter().map(|a| a.octets()).collect();
                commands.push(DriverCommand::SetHostAddresses { ipv4 });
            } else {
                infos.push(i.driver_info());
            }
        }
        // Overlays before the instances that live on them.
        commands.extend(overlay_commands);
        commands.extend(infos.into_iter().map(DriverCommand::SetInstance));
        let rules = ops::FirewallState::specs(&self.firewall.rules);
        if !rules.is_empty() {
            commands.push(DriverCommand::Operator(
                netmux_proto::ops::OperatorRequest::SetFirewall { rules },
            ));
        }
        if self.host_stack {
            if let Some(expr) = filters::host_rx(&self.instances[&DEFAULT_INSTANCE].host) {
                let filter = self.filter_id();
                let s = spec(HOST_QUEUE, filter, Direction::Rx, RxMode::Owner, None, expr)
                    .map_err(StartError::Filter)?;
                self.host_rx = Some(filter);
                commands.push(DriverCommand::InstallFilter(s));
            }
            if self.dhcp {
                // The DHCP client's messages from 0.0.0.0 (DISCOVER, REQUEST while selecting);
                // once leased, renewals from the address pass the host's own filter.
                let expr = filters::dhcp_client_tx(self.link.mac);
                let filter = self.filter_id();
                let s = spec(HOST_QUEUE, filter, Direction::Tx, RxMode::Owner, None, expr)
                    .map_err(StartError::Filter)?;
                commands.push(DriverCommand::InstallFilter(s));
            }
            let ids: Vec<InstanceId> = self
                .instances
                .values()
                .filter(|i| !only_ready || (i.ready && !i.condemned))
                .map(|i| i.id)
                .collect();
            for id in ids {
                if let Some((filter, s)) = self.host_tx_spec(id).map_err(StartError::Filter)? {
                    self.host_tx.insert(id, filter);
                    commands.push(DriverCommand::InstallFilter(s));
                }
            }
            commands.push(DriverCommand::SetNetdQueue { queue: HOST_QUEUE });
        }
        Ok(commands)
    }

    /// A new driver is in place of the one that went away (`netmux up --restart`), and every
    /// session has ended: the ports their ends left unusable (the old driver could not confirm
    /// their filters gone) are free, since the new driver has no filter of theirs; queues'
    /// properties and netd's own filter ids are forgotten. Returns what the new driver must be
    /// told to hold netd's state again ([`Netd::install_commands`]: instances, host addresses,
    /// overlays and their mappings, firewall rules, the host queue and netd's own filters);
    /// carry them out, stopping at the first failure, and hand the outcomes to
    /// [`Netd::reinstalled`]. Clients are refused until then.
    pub fn driver_replaced(&mut self) -> Result<Vec<DriverCommand>, StartError> {
        let mut freed = 0;
        for i in self.instances.values_mut() {
            freed += i.core.ports_mut().free_releasing();
        }
        if freed > 0 {
            tracing::info!(
                ports = freed,
                "ports held by ended sessions are free with the new driver"
            );
        }
        self.host_rx = None;
        self.host_tx.clear();
        self.lingering_host_tx.clear();
        self.rxbuf.clear();
        self.host_queue = None;
        let overlays = self
            .overlays
            .install_requests()
            .into_iter()
            .map(DriverCommand::Overlay)
            .collect();
        self.install_commands(overlays, true)
    }

    /// The outcomes of [`Netd::driver_replaced`]'s commands: on success netd takes clients
    /// again (the driver is no longer gone) and the host queue waits for the host stack.
    pub fn reinstalled(&mut self, outcomes: Vec<DriverOutcome>) -> Result<(), StartError> {
        self.started(outcomes)?;
        self.driver_gone = None;
        Ok(())
    }

    /// The MAC and the static address netd must probe for before it takes clients
    /// ([`crate::dad`]), if any.
    pub fn dad_target(&self) -> Option<([u8; 6], std::net::Ipv4Addr)> {
        self.dad.map(|(address, _)| (self.link.mac, address))
    }

    /// Probing is over: the commands that remove the probes' transmit filter.
    pub fn dad_done(&mut self) -> Vec<DriverCommand> {
        self.dad
            .take()
            .map(|(_, filter)| DriverCommand::RemoveFilter {
                queue: HOST_QUEUE,
                filter,
            })
            .into_iter()
            .collect()
    }

    /// The outcomes of [`Netd::new`]'s commands: netd is ready, or why not.
    pub fn started(&mut self, outcomes: Vec<DriverOutcome>) -> Result<(), StartError> {
        for outcome in outcomes {
            match outcome {
                DriverOutcome::Queue(q) if self.host_stack => self.host_queue = Some(q),
                DriverOutcome::Failed(e) => return Err(StartError::Driver(e)),
                DriverOutcome::Skipped => {
                    return Err(StartError::Driver(DriverError::Gone(
                        "a start-up command was skipped".into(),
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// netd's own transmit filter for one instance's identity, on the host queue.
    fn host_tx_spec(&mut self, id: InstanceId) -> Result<Option<(FilterId, FilterSpec)>, String> {
        let Some(i) = self.instances.get(&id) else {
            return Ok(None);
        };
        let own = filters::host_tx(std::slice::from_ref(&i.host));
        // Another instance's DHCP client sends from 0.0.0.0 too (the default instance's has
        // a filter of its own, made at start).
        let dhcp = (id != DEFAULT_INSTANCE && i.spec.dhcp)
            .then(|| format!("({})", filters::dhcp_client_tx(i.host.mac)));
        let expr = match (own, dhcp) {
            (Some(own), Some(dhcp)) => format!("{own} or {dhcp}"),
            (Some(e), None) | (None, Some(e)) => e,
            (None, None) => return Ok(None),
        };
        let filter = self.filter_id();
        let s = spec(HOST_QUEUE, filter, Direction::Tx, RxMode::Owner, None, expr)?;
        Ok(Some((filter, s)))
    }

    /// Adds an instance from its spec, checked against every other: a unique name, a MAC and
    /// an address nobody else has. Not yet told to the driver.
    fn admit(&mut self, spec: InstanceSpec) -> Result<InstanceId, ErrorReply> {
        let bad = |e: InstanceError| error(ErrorCode::InUse, e.to_string());
        crate::instance::check_name(&spec.name)
            .map_err(|e| error(ErrorCode::Protocol, e.to_string()))?;
        if self.names.contains_key(&spec.name) {
            return Err(bad(InstanceError::Exists(spec.name)));
        }
        let id = InstanceId(self.next_instance);
        let mut policy = self.template.clone();
        policy.privileged_uids.clear();
        policy.tap_uids.clear();
        policy.exclusive_uids.clear();
        let overlay = match &spec.overlay {
            None => None,
            Some(name) => {
                if !spec.temporary
                    && self.instances_file.is_some()
                    && self.overlays.is_temporary(name)
                {
                    return Err(error(
                        ErrorCode::Protocol,
                        format!(
                            "overlay {name:?} is temporary, so an instance on it must be too \
                             (it could not be restored after a restart)"
                        ),
                    ));
                }
                if spec.mac == MacChoice::Shared {
                    return Err(error(
                        ErrorCode::Protocol,
                        "an instance on an overlay needs a MAC of its own, not the link's",
                    ));
                }
                if spec.dhcp || spec.slaac {
                    return Err(error(
                        ErrorCode::Protocol,
                        "an instance on an overlay takes static addresses (no --ip dhcp or \
                         --ip6 slaac: netd's DHCP and SLAAC clients run on the link)",
                    ));
                }
                Some(self.overlays.get(name).ok_or_else(|| {
                    error(ErrorCode::NotFound, format!("no overlay named {name:?}"))
                })?)
            }
        };
        // An overlay instance's clients are told the overlay's MTU.
        let link = match overlay {
            Some((_, mtu)) => LinkInfo { mtu, ..self.link },
            None => self.link,
        };
        let mut instance = Instance::new(id, spec, link, policy, self.default_ephemeral.clone())
            .map_err(|e| error(ErrorCode::Protocol, e.to_string()))?;
        instance.overlay = overlay.map(|(vni, _)| vni);
        for other in self.instances.values() {
            if !instance.shared_mac && !other.shared_mac && other.host.mac == instance.host.mac {
                return Err(bad(InstanceError::BadMac(
                    crate::instance::mac_text(instance.host.mac),
                    "another instance has it",
                )));
            }
            // Addresses are per network: overlays may reuse the link's and each other's.
            if let Some(a) = instance.host.ipv6_global.filter(|a| {
                other.host.ipv6_addresses().contains(a) && other.overlay == instance.overlay
            }) {
                return Err(bad(InstanceError::BadAddress(
                    a.to_string(),
                    "another instance has it",
                )));
            }
            if instance.host.ipv4.is_some()
                && other.host.ipv4 == instance.host.ipv4
                && other.overlay == instance.overlay
            {
                return Err(bad(InstanceError::BadAddress(
                    instance
                        .host
                        .ipv4
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    "another instance has it",
                )));
            }
        }
        self.next_instance += 1;
        self.names.insert(instance.spec.name.clone(), id);
        self.instances.insert(id, instance);
        self.instance_changes += 1;
        Ok(id)
    }

    /// Forgets an instance (created at the driver or not).
    fn forget(&mut self, id: InstanceId) {
        if let Some(i) = self.instances.remove(&id) {
            self.names.remove(&i.spec.name);
            self.instance_changes += 1;
        }
    }

    /// Writes the non-temporary instances to the configuration file, if netd has one.
    fn persist(&self) {
        let Some(file) = &self.instances_file else {
            return;
        };
        let instances = self
            .instances
            .values()
            .filter(|i| i.id != DEFAULT_INSTANCE && !i.spec.temporary && i.ready && !i.condemned)
            .map(|i| InstanceEntry::of(&i.spec))
            .collect();
        let (limits, timeouts) = self.file_settings.clone();
        let firewall = self
            .firewall
            .rules
            .iter()
            .filter(|r| !r.temporary)
            .filter_map(|r| {
                let instance = self.instances.get(&r.instance)?;
                Some(crate::instance::FirewallRuleEntry {
                    instance: instance.spec.name.clone(),
                    rule: r.rule.to_string(),
                })
            })
            .collect();
        let kept = InstancesFile {
            limits,
            timeouts,
            instances,
            firewall,
            overlays: self.overlays.kept(),
        };
        if let Err(e) = kept.save(file) {
            tracing::error!("keeping the instances: {e}");
        }
    }

    /// The default instance's identity (MAC and addresses).
    pub fn host(&self) -> &HostIdentity {
        &self.default_instance().host
    }

    /// What a client of the default instance learns at hello.
    pub fn host_config(&self) -> &HostConfig {
        &self.default_instance().host_config
    }

    fn default_instance(&self) -> &Instance {
        self.instances
            .get(&DEFAULT_INSTANCE)
            .expect("the default instance always exists")
    }

    /// Every ready instance's identity, for netd's host stack.
    pub fn host_identities(&self) -> Vec<(InstanceId, HostIdentity)> {
        self.instances
            .values()
            .filter(|i| i.ready)
            .map(|i| (i.id, i.host))
            .collect()
    }

    /// Whether a port of an instance is free (nobody holds it, nobody is releasing it).
    pub fn port_free(&self, instance: InstanceId, transport: Transport, port: u16) -> bool {
        self.instances
            .get(&instance)
            .is_some_and(|i| i.core.ports().state(transport, port) == core::PortState::Free)
    }

    /// What netd's host stack needs for SLAAC and duplicate address detection of the default
    /// instance's global address: the MAC, netd's link-local address, whether to take an
    /// address from router advertisements, and the static address to probe. `None` when
    /// there is nothing to do (no link-local address, or neither `--ip6` nor the host stack).
    pub fn slaac_setup(&self) -> Option<crate::slaac::Slaac> {
        let host = &self.default_instance().host;
        let link_local = host.ipv6?;
        (self.host_stack && (self.slaac || self.static_ipv6.is_some()))
            .then(|| crate::slaac::Slaac::new(host.mac, link_local, self.slaac, self.static_ipv6))
    }

    /// Duplicate address detection for an instance's IPv6 addresses: for the default
    /// instance [`Netd::slaac_setup`]; for another one, when it is ready, has a link-local
    /// address and a global one (`netmux instance create --ip6 A::B/N`) or takes one from
    /// router advertisements (`--ip6 slaac`), a machine probing them and learning the
    /// instance's default router.
    pub fn dad_setup(&self, instance: InstanceId) -> Option<crate::slaac::Slaac> {
        if instance == DEFAULT_INSTANCE {
            return self.slaac_setup();
        }
        let i = self.instances.get(&instance).filter(|i| i.ready)?;
        if !self.host_stack || (i.host.ipv6_global.is_none() && !i.spec.slaac) {
            return None;
        }
        let prefix = i.host_config.ipv6.first().map_or(64, |(_, p)| *p);
        Some(crate::slaac::Slaac::new(
            i.host.mac,
            i.host.ipv6?,
            i.spec.slaac,
            i.host.ipv6_global.map(|g| (g, prefix)),
        ))
    }

    /// Takes in what SLAAC or duplicate address detection reported about an instance's
    /// addresses, for [`Netd::take_slaac_commands`].
    pub fn push_slaac_event(&mut self, instance: InstanceId, event: crate::slaac::Event) {
        self.slaac_events.push((instance, event));
    }

    /// Applies what SLAAC and duplicate address detection reported to each instance (its
    /// IPv6 addresses, and the default instance's default router: what clients learn at
    /// hello) and returns what the driver must be told (netd's own transmit filter for the
    /// instance's new addresses) and, when an address an instance had is gone (another node
    /// has it), that instance's sessions to end, as for a lost DHCP lease. Each change is
    /// logged.
    pub fn take_slaac_commands(&mut self) -> (Vec<DriverCommand>, Vec<SessionId>) {
        let events = std::mem::take(&mut self.slaac_events);
        let mut ids: Vec<InstanceId> = events.iter().map(|(i, _)| *i).collect();
        ids.sort_unstable();
        ids.dedup();
        let (mut commands, mut stale) = (Vec::new(), Vec::new());
        for id in ids {
            let mine = events
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, e)| e.clone());
            let (c, s) = self.apply_slaac_events(id, mine);
            commands.extend(c);
            stale.extend(s);
        }
        (commands, stale)
    }

    /// [`Netd::take_slaac_commands`] for one instance.
    fn apply_slaac_events(
        &mut self,
        id: InstanceId,
        events: impl Iterator<Item = crate::slaac::Event>,
    ) -> (Vec<DriverCommand>, Vec<SessionId>) {
        let addresses = |netd: &Netd| {
            netd.instances
                .get(&id)
                .map(|i| (i.host.ipv6, i.host.ipv6_global))
        };
        let Some(before) = addresses(self) else {
            return (Vec::new(), Vec::new());
        };
        let name = self
            .instances
            .get(&id)
            .map(|i| i.spec.name.clone())
            .unwrap_or_default();
        for event in events {
            let Some(instance) = self.instances.get_mut(&id) else {
                return (Vec::new(), Vec::new());
            };
            match event {
                crate::slaac::Event::Assigned {
                    address,
                    prefix,
                    autoconfigured,
                } => {
                    if autoconfigured {
                        tracing::info!(
                            "slaac: {address}/{prefix} from a router advertisement is the host's \
                             (no other node answered its probe)"
                        );
                        instance.host.ipv6_global = Some(address);
                        instance.host_config.ipv6 = vec![(address.octets(), prefix)];
                    } else {
                        tracing::info!(
                            "ipv6: no other node answered the probe of {address} (instance {name})"
                        );
                    }
                }
                crate::slaac::Event::Duplicate { address } => {
                    tracing::error!(
                        "ipv6: another node on the link has {address} (it answered duplicate \
                         address detection); instance {name} does not use it"
                    );
                    if instance.host.ipv6_global == Some(address) {
                        instance.host.ipv6_global = None;
                        instance.host_config.ipv6.clear();
                    }
                    if instance.host.ipv6 == Some(address) {
                        instance.host.ipv6 = None;
                        instance.host_config.ipv6_link_local = None;
                    }
                }
                crate::slaac::Event::Router(router) => {
                    if id == DEFAULT_INSTANCE && self.static_gateway6 {
                        continue; // --gateway6 names it
                    }
                    match router {
                        Some(r) => {
                            tracing::info!("slaac: default router {r} (instance {name})")
                        }
                        None => {
                            tracing::info!("slaac: the default router withdrew (instance {name})")
                        }
                    }
                    instance.host_config.ipv6_gateway = router.map(|r| r.octets());
                }
            }
        }
        let after = addresses(self).unwrap_or_default();
        if before == after {
            return (Vec::new(), Vec::new());
        }
        // An address gone (not one added) ends the sessions that were told it.
        let gone = |old: Option<std::net::Ipv6Addr>, new| old.is_some() && old != new;
        let lost = if gone(before.0, after.0) {
            before.0
        } else if gone(before.1, after.1) {
            before.1
        } else {
            None
        };
        let stale = self.sessions_told(id, lost, "ipv6", &format!("instance {name}"));
        let mut commands = Vec::new();
        if id != DEFAULT_INSTANCE {
            // The driver tells instances apart by their addresses too.
            if let Some(i) = self.instances.get(&id) {
                commands.push(DriverCommand::SetInstance(i.driver_info()));
            }
        }
        commands.extend(self.replace_host_tx(id, false, "ipv6"));
        (commands, stale)
    }

    /// Whether the default instance takes its address from DHCP (netd's host stack then runs
    /// the DHCP client).
    pub fn dhcp(&self) -> bool {
        self.dhcp
    }

    /// Takes in what the default instance's DHCP client reported, for
    /// [`Netd::take_dhcp_commands`].
    pub fn push_dhcp_event(&mut self, event: crate::dhcp::Event) {
        self.dhcp_events.push((DEFAULT_INSTANCE, event));
    }

    /// Takes in what an instance's DHCP client reported, for [`Netd::take_dhcp_commands`].
    pub fn push_instance_dhcp_event(&mut self, instance: InstanceId, event: crate::dhcp::Event) {
        self.dhcp_events.push((instance, event));
    }

    /// The DHCP clients netd's host stack runs: one per instance that takes its address
    /// from DHCP (the default one with `netd --ip dhcp`, others with `netmux instance create
    /// --ip dhcp`) and is ready and not being destroyed. A client whose instance leaves this
    /// list releases its lease and reports it ([`Netd::dhcp_released`]).
    pub fn dhcp_clients(&self) -> Vec<DhcpSetup> {
        if !self.host_stack {
            return Vec::new();
        }
        self.instances
            .values()
            .filter(|i| i.ready && !i.condemned)
            .filter(|i| {
                if i.id == DEFAULT_INSTANCE {
                    self.dhcp
                } else {
                    i.spec.dhcp && i.overlay.is_none()
                }
            })
            .map(|i| DhcpSetup {
                instance: i.id,
                name: i.spec.name.clone(),
                mac: i.host.mac,
                // Instances sharing the link's MAC tell the server apart by a client
                // identifier of their own; the default instance keeps the MAC.
                client_id: (i.id != DEFAULT_INSTANCE && i.shared_mac)
                    .then(|| crate::dhcp::Client::name_client_id(&i.spec.name)),
            })
            .collect()
    }

    /// The host stack released an instance's lease (or it had none): netd's transmit filter
    /// that let the RELEASE out, if its instance is destroyed meanwhile, may go.
    pub fn dhcp_released(&mut self, instance: InstanceId) {
        self.dhcp_released.insert(instance);
    }

    /// Applies the DHCP client's reports to the default instance (its address, prefix,
    /// gateway and DNS servers, what clients learn at hello) and returns what the driver must
    /// be told (the host addresses, and netd's own receive and transmit filters for the new
    /// address) and, when an address the default instance had is gone (lost, or another
    /// leased), the sessions of the default instance to end: they were told that address and
    /// their filters hold it; they learn the new configuration (or none) when they connect
    /// again. Each change is logged.
    ///
    /// Another instance's lease changes its address at the driver and netd's transmit filter
    /// the same way; a destroyed instance's transmit filter goes once its lease is released.
    pub fn take_dhcp_commands(&mut self) -> (Vec<DriverCommand>, Vec<SessionId>) {
        let events = std::mem::take(&mut self.dhcp_events);
        let (mut commands, mut stale) = (Vec::new(), Vec::new());
        let mut released = std::mem::take(&mut self.dhcp_released);
        let lingering = std::mem::take(&mut self.lingering_host_tx);
        let mut consumed = Vec::new();
        for (instance, filter) in lingering {
            if released.contains(&instance) {
                consumed.push(instance);
                commands.push(DriverCommand::RemoveFilter {
                    queue: HOST_QUEUE,
                    filter,
                });
            } else {
                self.lingering_host_tx.push((instance, filter));
            }
        }
        for i in consumed {
            released.remove(&i);
        }
        // A release reported before the instance's destruction reached its filter is kept.
        self.dhcp_released = released
            .into_iter()
            .filter(|i| self.instances.contains_key(i))
            .collect();
        let (default, others): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|(i, _)| *i == DEFAULT_INSTANCE);
        let mut ids: Vec<InstanceId> = others.iter().map(|(i, _)| *i).collect();
        ids.dedup();
        for id in ids {
            let mine: Vec<crate::dhcp::Event> = others
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, e)| e.clone())
                .collect();
            let (c, s) = self.apply_instance_dhcp(id, mine);
            commands.extend(c);
            stale.extend(s);
        }
        let (c, s) = self.apply_default_dhcp(default.into_iter().map(|(_, e)| e).collect());
        commands.extend(c);
        stale.extend(s);
        for (id, before, releasing) in std::mem::take(&mut self.readdress) {
            let (c, s) = self.readdressed(id, before, releasing);
            commands.extend(c);
            stale.extend(s);
        }
        (commands, stale)
    }

    /// [`Netd::take_dhcp_commands`] for another instance than the default one.
    fn apply_instance_dhcp(
        &mut self,
        id: InstanceId,
        events: Vec<crate::dhcp::Event>,
    ) -> (Vec<DriverCommand>, Vec<SessionId>) {
        let Some(i) = self.instances.get_mut(&id) else {
            return (Vec::new(), Vec::new());
        };
        if i.condemned {
            return (Vec::new(), Vec::new());
        }
        let before = i.host.ipv4;
        let name = i.spec.name.clone();
        for event in events {
            apply_lease_event(
                &mut i.host.ipv4,
                &mut i.host_config,
                &format!("instance {name}"),
                event,
            );
        }
        self.readdressed(id, before, false)
    }

    /// What the driver must be told, and the sessions to end, after an instance's IPv4
    /// address changed from `before` (by DHCP, or `instance set ip=`): its sessions were told
    /// `before`; the driver tells instances apart by address; netd's transmit filter for the
    /// instance names it. With `releasing`, the old filter stays until the host stack has
    /// released the lease from the old address ([`Netd::dhcp_released`]).
    fn readdressed(
        &mut self,
        id: InstanceId,
        before: Option<std::net::Ipv4Addr>,
        releasing: bool,
    ) -> (Vec<DriverCommand>, Vec<SessionId>) {
        let Some(i) = self.instances.get(&id) else {
            return (Vec::new(), Vec::new());
        };
        let name = i.spec.name.clone();
        if before == i.host.ipv4 {
            return (Vec::new(), Vec::new());
        }
        let stale = self.sessions_told(id, before, "dhcp", &format!("instance {name}"));
        let mut commands = Vec::new();
        if let Some(i) = self.instances.get(&id) {
            commands.push(DriverCommand::SetInstance(i.driver_info()));
        }
        commands.extend(self.replace_host_tx(id, releasing, "dhcp"));
        (commands, stale)
    }

    /// The sessions of instance `id` to end because `lost`, an address they were told, is
    /// gone (none when nothing was lost); said once in the log, by `why`, of `who`.
    fn sessions_told(
        &self,
        id: InstanceId,
        lost: Option<impl std::fmt::Display>,
        why: &str,
        who: &str,
    ) -> Vec<SessionId> {
        let Some(old) = lost else {
            return Vec::new();
        };
        let stale = self.sessions_in(id);
        if !stale.is_empty() {
            tracing::warn!(
                "{why}: ending the {} sessions of {who}: they were told {old}",
                stale.len()
            );
        }
        stale
    }

    /// Commands that replace the host stack's transmit filter of instance `id` with one for
    /// its addresses now. With `linger`, the old filter is kept until the host stack has sent
    /// what must still leave from the old address (a DHCP release: [`Netd::dhcp_released`]).
    /// `why` names the change in a log line if the new filter cannot be built.
    fn replace_host_tx(&mut self, id: InstanceId, linger: bool, why: &str) -> Vec<DriverCommand> {
        let mut commands = Vec::new();
        if let Some(filter) = self.host_tx.remove(&id) {
            if linger {
                self.lingering_host_tx.push((id, filter));
            } else {
                commands.push(DriverCommand::RemoveFilter {
                    queue: HOST_QUEUE,
                    filter,
                });
            }
        }
        match self.host_tx_spec(id) {
            Ok(Some((filter, s))) => {
                self.host_tx.insert(id, filter);
                commands.push(DriverCommand::InstallFilter(s));
            }
            Ok(None) => {}
            Err(e) => tracing::error!("{why}: the host's transmit filter: {e}"),
        }
        commands
    }

    /// [`Netd::take_dhcp_commands`] for the default instance.
    fn apply_default_dhcp(
        &mut self,
        events: Vec<crate::dhcp::Event>,
    ) -> (Vec<DriverCommand>, Vec<SessionId>) {
        if events.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let before = self.default_instance().host.ipv4;
        for event in events {
            let Some(default) = self.instances.get_mut(&DEFAULT_INSTANCE) else {
                return (Vec::new(), Vec::new());
            };
            apply_lease_event(
                &mut default.host.ipv4,
                &mut default.host_config,
                "the host",
                event,
            );
            default.spec.ipv4 = default.host_config.ipv4.unwrap_or(([0; 4], 0));
            default.spec.gateway = default.host_config.gateway;
        }
        let after = self.default_instance().host.ipv4;
        if before == after {
            return (Vec::new(), Vec::new());
        }
        let stale = self.sessions_told(DEFAULT_INSTANCE, before, "dhcp", "the default instance");
        let mut commands = vec![DriverCommand::SetHostAddresses {
            ipv4: after.iter().map(|a| a.octets()).collect(),
        }];
        if let Some(filter) = self.host_rx.take() {
            commands.push(DriverCommand::RemoveFilter {
                queue: HOST_QUEUE,
                filter,
            });
        }
        if let Some(expr) = filters::host_rx(&self.default_instance().host) {
            let filter = self.filter_id();
            match spec(HOST_QUEUE, filter, Direction::Rx, RxMode::Owner, None, expr) {
                Ok(s) => {
                    self.host_rx = Some(filter);
                    commands.push(DriverCommand::InstallFilter(s));
                }
                Err(e) => tracing::error!("dhcp: the host's receive filter: {e}"),
            }
        }
        commands.extend(self.replace_host_tx(DEFAULT_INSTANCE, false, "dhcp"));
        (commands, stale)
    }

    /// The host queue's descriptors, once, for netd's host stack.
    pub fn take_host_queue(&mut self) -> Option<CreatedQueue> {
        self.host_queue.take()
    }

    /// The default instance's core (read-only), e.g. to ask whether a port is free.
    pub fn core(&self) -> &Core {
        &self.default_instance().core
    }

    /// An instance's core (read-only).
    pub fn core_in(&self, instance: InstanceId) -> Option<&Core> {
        self.instances.get(&instance).map(|i| &i.core)
    }

    /// The instance a name refers to.
    pub fn instance_named(&self, name: &str) -> Option<InstanceId> {
        self.names.get(name).copied()
    }

    /// Every session of every instance, for `netmux ls`.
    pub fn sessions(&self) -> Vec<SessionSummary> {
        self.instances
            .values()
            .flat_map(|i| i.core.sessions())
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

    /// Every port bound by a session or held for a uid, in every instance, as the lines of
    /// netd's ports file ([`crate::ports_file`]): what a netd started after this one keeps
    /// for their uids for a grace period.
    pub fn ports_snapshot(&self) -> Vec<crate::ports_file::Entry> {
        self.ports_raw().entries()
    }

    /// A value that changes whenever [`Netd::ports_snapshot`] may have (a port bound,
    /// closed, held or freed, a session or an instance gone), found without looking at any
    /// port: the shell takes a snapshot for the ports file only when it changed.
    pub fn ports_version(&self) -> (u64, u64) {
        let ports = self
            .instances
            .values()
            .fold(0u64, |sum, i| sum.wrapping_add(i.core.ports_version()));
        (self.instance_changes, ports)
    }

    /// What [`Netd::ports_snapshot`] is made of, copied as plain numbers: the part of a
    /// snapshot that needs netd's state, so its lock is held as briefly as possible (naming,
    /// sorting and rendering happen after, in [`RawPorts::entries`]).
    pub fn ports_raw(&self) -> RawPorts {
        let mut raw = RawPorts {
            instances: Vec::with_capacity(self.instances.len()),
            ports: Vec::new(),
        };
        for (index, i) in self.instances.values().enumerate() {
            raw.instances.push(i.spec.name.clone());
            for s in i.core.sessions() {
                let uid = s.creds.uid;
                raw.ports.extend(
                    s.ports
                        .iter()
                        .map(|&(transport, port)| (uid, index, transport, port)),
                );
            }
            for ((transport, port), hold) in i.core.held() {
                raw.ports.push((hold.uid, index, transport, port));
            }
        }
        raw
    }

    /// Keeps the ports a netd before this one had bound (`entries`, from its ports file) for
    /// their uids until `until` ([`crate::core::Core::hold`]); an entry of an instance this
    /// netd does not have is left out. Returns how many ports are held.
    pub fn hold_ports(&mut self, entries: &[crate::ports_file::Entry], until: Duration) -> usize {
        let mut held = 0;
        for e in entries {
            let Some(id) = self.names.get(&e.instance).copied() else {
                tracing::info!(instance = %e.instance, "not holding {} port {}: no such instance", e.transport, e.port);
                continue;
            };
            if let Some(i) = self.instances.get_mut(&id) {
                held += usize::from(i.core.hold(e.transport, e.port, e.uid, until));
            }
        }
        held
    }

    /// Frees held ports whose grace period is over at `now`; returns how many.
    pub fn expire_holds(&mut self, now: Duration) -> usize {
        self.instances
            .values_mut()
            .map(|i| i.core.expire_holds(now))
            .sum()
    }

    /// Every session (connected and not yet ended).
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.session_instance.keys().copied().collect()
    }

    /// The sessions of an instance (connected and not yet ended).
    fn sessions_in(&self, instance: InstanceId) -> Vec<SessionId> {
        self.session_instance
            .iter()
            .filter(|&(_, &i)| i == instance)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Whether a session exists (connected and not yet ended).
    pub fn has_session(&self, id: SessionId) -> bool {
        self.session_instance.contains_key(&id)
    }

    /// Whether a session that ended still has driver work under way (its queue and filters
    /// being removed): its instance cannot go before that is done.
    pub fn tearing_down(&self, id: SessionId) -> bool {
        self.teardowns.contains_key(&id)
    }

    /// The instance of a session.
    fn instance_of(&self, id: SessionId) -> InstanceId {
        self.session_instance
            .get(&id)
            .copied()
            .unwrap_or(DEFAULT_INSTANCE)
    }

    /// The instance of a session, writable.
    fn inst(&mut self, id: SessionId) -> Result<&mut Instance, ErrorReply> {
        let i = self.instance_of(id);
        self.instances
            .get_mut(&i)
            .ok_or_else(|| core_error(CoreError::NoSession))
    }

    /// The core of a session's instance.
    fn core_mut(&mut self, id: SessionId) -> Result<&mut Core, ErrorReply> {
        self.inst(id).map(|i| &mut i.core)
    }

    /// The core of a session's instance, read-only.
    fn core_ref(&self, id: SessionId) -> Option<&Core> {
        self.instances.get(&self.instance_of(id)).map(|i| &i.core)
    }

    /// The driver is gone (the shell found out: a closed connection, a missed deadline). From
    /// now on netd refuses every new client ([`Netd::connect`]) and every request that needs
    /// the driver. Returns whether this is news (log it once).
    pub fn driver_gone_because(&mut self, why: String) -> bool {
        if self.driver_gone.is_some() {
            return false;
        }
        self.driver_gone = Some(why);
        true
    }

    /// Why the driver is gone, if netd noticed.
    pub fn driver_gone(&self) -> Option<&str> {
        self.driver_gone.as_deref()
    }

    /// A client connected (to the default instance until its hello names another). Refused
    /// with [`ErrorCode::Driver`] once the driver is gone.
    pub fn connect(&mut self, creds: Credentials, now: Duration) -> Result<SessionId, ErrorReply> {
        if let Some(why) = &self.driver_gone {
            return Err(error(
                ErrorCode::Driver,
                format!(
                    "netd's driver is gone ({why}); netd takes no clients until it is \
                     restarted with a driver"
                ),
            ));
        }
        let id = self
            .instances
            .get_mut(&DEFAULT_INSTANCE)
            .ok_or_else(|| error(ErrorCode::Internal, "no default instance"))?
            .core
            .connect(creds, now)
            .map_err(core_error)?;
        self.sessions.insert(id, SessionExtra::default());
        self.session_instance.insert(id, DEFAULT_INSTANCE);
        Ok(id)
    }

    /// Sessions whose handshake timed out by `now`; end each with [`Netd::disconnect`].
    pub fn expired(&self, now: Duration) -> Vec<SessionId> {
        self.default_instance().core.expired(now)
    }

    /// The reply to a message that could not be decoded (the session goes on).
    pub fn malformed(&self, why: &str) -> Response {
        Response::error(error(
            ErrorCode::Protocol,
            format!("malformed request: {why}"),
        ))
    }

    /// Handles one request: a reply, or driver work first.
    pub fn handle(&mut self, id: SessionId, request: ClientRequest) -> Step {
        if self.sessions.get(&id).is_some_and(|e| e.busy) {
            return Step::Reply(Response::error(error(
                ErrorCode::Internal,
                "a request of this session is still under way",
            )));
        }
        let result = match request {
            ClientRequest::Hello { version, .. } if version != PROTOCOL_VERSION => {
                return Step::Reply(Response {
                    reply: ClientReply::Error(error(
                        ErrorCode::Version,
                        format!("netd speaks protocol {PROTOCOL_VERSION}, not {version}"),
                    )),
                    fds: Vec::new(),
                    end: true,
                });
            }
            ClientRequest::Hello { instance, .. } => self.hello(id, instance),
            ClientRequest::GetPort { transport } => self.bind(id, transport, None),
            ClientRequest::BindPort { transport, port } => self.bind(id, transport, Some(port)),
            ClientRequest::ClosePort { transport, port } => self.close_port(id, transport, port),
            ClientRequest::JoinGroup { group, port } => self.join_group(id, group, port),
            ClientRequest::LeaveGroup { group, port } => self.leave_group(id, group, port),
            ClientRequest::OpenFilter { expr, mode } => self.open_filter(id, expr, mode),
            ClientRequest::CloseFilter { filter } => self.close_filter(id, core::FilterId(filter)),
            ClientRequest::OpenQueue => self.open_queue(id, None, None),
            ClientRequest::OpenQueueSized { rxbuf, txbuf } => self.open_queue(id, rxbuf, txbuf),
            ClientRequest::Stats => self.stats(id),
            ClientRequest::ListSessions => self.list_sessions(id),
            ClientRequest::CreateInstance(spec) => self.create_instance(id, spec),
            ClientRequest::DestroyInstance { name } => self.destroy_instance(id, &name),
            ClientRequest::ListInstances => self.list_instances(id),
            ClientRequest::SetInstanceProperty {
                name,
                property,
                value,
            } => self.set_instance_property(id, &name, &property, &value),
            ClientRequest::Capture(request) => self.capture(id, request),
            ClientRequest::Firewall(request) => self.firewall(id, request),
            ClientRequest::Properties(request) => self.properties(id, request),
            ClientRequest::CreateOverlay(spec) => self.create_overlay(id, spec),
            ClientRequest::DestroyOverlay { name } => self.destroy_overlay(id, &name),
            ClientRequest::ListOverlays => self.list_overlays(id),
            ClientRequest::ListOverlayMappings { name, mac } => {
                self.list_overlay_mappings(id, &name, mac)
            }
            ClientRequest::ChangeOverlayMapping { name, change } => {
                self.change_overlay_mapping(id, &name, &change)
            }
        };
        let step = result.unwrap_or_else(|e| Step::Reply(Response::error(e)));
        if let (Step::Driver(_) | Step::EndSessions { .. }, Some(extra)) =
            (&step, self.sessions.get_mut(&id))
        {
            extra.busy = true;
        }
        step
    }

    /// Whether a session's uid may create, change and destroy instances.
    fn require_admin(&self, id: SessionId) -> Result<u32, ErrorReply> {
        self.require_active(id)?;
        let uid = self
            .core_ref(id)
            .and_then(|c| c.session(id))
            .map(|s| s.creds.uid)
            .ok_or_else(|| core_error(CoreError::NoSession))?;
        if uid == 0 || self.admin_uids.contains(&uid) {
            Ok(uid)
        } else {
            Err(error(
                ErrorCode::Denied,
                format!(
                    "uid {uid} may not manage instances (root, or a uid netd's --admin-uid names)"
                ),
            ))
        }
    }

    fn create_instance(&mut self, id: SessionId, spec: InstanceSpec) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        self.refuse_without_driver()?;
        let instance = self.admit(spec)?;
        let mut commands = vec![DriverCommand::SetInstance(
            self.instances[&instance].driver_info(),
        )];
        let mut host_tx = None;
        if self.host_stack {
            match self.host_tx_spec(instance) {
                Ok(Some((filter, s))) => {
                    host_tx = Some(filter);
                    commands.push(DriverCommand::InstallFilter(s));
                }
                Ok(None) => {}
                Err(e) => {
                    self.forget(instance);
                    return Err(error(ErrorCode::Internal, e));
                }
            }
        }
        Ok(self.work(
            commands,
            true,
            Pending::CreateInstance {
                session: id,
                instance,
                host_tx,
            },
        ))
    }

    fn destroy_instance(&mut self, id: SessionId, name: &str) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        let instance = self
            .names
            .get(name)
            .copied()
            .ok_or_else(|| error(ErrorCode::NotFound, format!("no instance named {name:?}")))?;
        if instance == DEFAULT_INSTANCE {
            return Err(error(
                ErrorCode::Denied,
                "the default instance cannot be destroyed",
            ));
        }
        if instance == self.instance_of(id) {
            return Err(error(
                ErrorCode::Protocol,
                "a session cannot destroy its own instance (join another to destroy it)",
            ));
        }
        let i = self
            .instances
            .get_mut(&instance)
            .ok_or_else(|| error(ErrorCode::NotFound, format!("no instance named {name:?}")))?;
        if i.condemned {
            return Err(error(
                ErrorCode::InUse,
                format!("instance {name:?} is already being destroyed"),
            ));
        }
        i.condemned = true;
        let mut sessions: Vec<SessionId> = i.core.sessions().map(|s| s.id).collect();
        // Sessions that ended but whose queues the driver still has: waited for too.
        sessions.extend(
            self.teardowns
                .iter()
                .filter(|&(_, &i)| i == instance)
                .map(|(&s, _)| s),
        );
        Ok(Step::EndSessions {
            sessions,
            then: Then(Pending::DestroyInstanceSessionsEnded {
                session: id,
                instance,
            }),
        })
    }

    fn set_instance_property(
        &mut self,
        id: SessionId,
        name: &str,
        property: &str,
        value: &str,
    ) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        let instance = self
            .names
            .get(name)
            .copied()
            .ok_or_else(|| error(ErrorCode::NotFound, format!("no instance named {name:?}")))?;
        if property == "ip" && instance != DEFAULT_INSTANCE {
            self.set_instance_ip(instance, value)?;
            self.persist();
            return Ok(self.reply(ClientReply::Done));
        }
        let i = self
            .instances
            .get_mut(&instance)
            .ok_or_else(|| error(ErrorCode::NotFound, format!("no instance named {name:?}")))?;
        i.set_property(property, value)
            .map_err(|e| error(ErrorCode::Protocol, e.to_string()))?;
        self.persist();
        Ok(self.reply(ClientReply::Done))
    }

    /// `instance set NAME ip=dhcp|A.B.C.D/N`: the instance's address from now on comes from
    /// a DHCP lease (its static one given up), or is this static one (its lease released).
    /// Its sessions, told the old address, end; the driver and netd's filters follow within
    /// a [`crate::server`] DHCP tick ([`Netd::take_dhcp_commands`]).
    fn set_instance_ip(&mut self, instance: InstanceId, value: &str) -> Result<(), ErrorReply> {
        let bad = |why: String| error(ErrorCode::Protocol, format!("ip={value}: {why}"));
        let ip = crate::config::parse_host_ip(value).map_err(|e| bad(e.to_string()))?;
        let i = self
            .instances
            .get(&instance)
            .ok_or_else(|| error(ErrorCode::NotFound, "no such instance"))?;
        if i.overlay.is_some() && ip == crate::config::HostIp::Dhcp {
            return Err(bad(
                "an instance on an overlay takes static addresses".into()
            ));
        }
        if i.condemned {
            return Err(bad("the instance is being destroyed".into()));
        }
        let overlay = i.overlay;
        let before = i.host.ipv4;
        let was_dhcp = i.spec.dhcp;
        if let crate::config::HostIp::Static(a, _) = ip {
            let taken = self
                .instances
                .values()
                .any(|o| o.id != instance && o.host.ipv4 == Some(a) && o.overlay == overlay);
            if taken {
                return Err(error(
                    ErrorCode::InUse,
                    format!("ip={value}: another instance has it"),
                ));
            }
        }
        let Some(i) = self.instances.get_mut(&instance) else {
            return Err(error(ErrorCode::NotFound, "no such instance"));
        };
        match ip {
            crate::config::HostIp::Dhcp => {
                if was_dhcp {
                    return Ok(());
                }
                i.spec.dhcp = true;
                i.spec.ipv4 = ([0; 4], 0);
                i.spec.gateway = None;
                i.host.ipv4 = None;
                i.host_config.ipv4 = None;
                i.host_config.gateway = None;
                i.host_config.dns_servers.clear();
            }
            crate::config::HostIp::Static(a, p) => {
                i.spec.dhcp = false;
                i.spec.ipv4 = (a.octets(), p);
                i.host.ipv4 = Some(a);
                i.host_config.ipv4 = Some((a.octets(), p));
                if was_dhcp {
                    // The lease's gateway and DNS servers go with it.
                    i.spec.gateway = None;
                    i.host_config.gateway = None;
                    i.host_config.dns_servers.clear();
                }
            }
        }
        tracing::info!(
            "instance {}: ip {}",
            i.spec.name,
            if i.spec.dhcp {
                "from DHCP".to_owned()
            } else {
                value.to_owned()
            }
        );
        let releasing = was_dhcp && !i.spec.dhcp && before.is_some();
        self.readdress.push((instance, before, releasing));
        Ok(())
    }

    fn create_overlay(
        &mut self,
        id: SessionId,
        spec: netmux_proto::overlay::OverlaySpec,
    ) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        self.refuse_without_driver()?;
        let name = spec.name.clone();
        let requests = self.overlays.create(spec, self.link.mtu).map_err(|e| {
            let code = match e {
                crate::overlay::OverlayError::Exists(_)
                | crate::overlay::OverlayError::VniInUse(..) => ErrorCode::InUse,
                crate::overlay::OverlayError::Limit => ErrorCode::Limit,
                _ => ErrorCode::Protocol,
            };
            error(code, e.to_string())
        })?;
        let commands = requests.into_iter().map(DriverCommand::Overlay).collect();
        Ok(self.work(commands, true, Pending::CreateOverlay { session: id, name }))
    }

    fn destroy_overlay(&mut self, id: SessionId, name: &str) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        let vni = self
            .overlays
            .vni(name)
            .map_err(|e| error(ErrorCode::NotFound, e.to_string()))?;
        let users = self.overlay_instances(name);
        if !users.is_empty() {
            return Err(error(
                ErrorCode::InUse,
                format!(
                    "overlay {name:?} still has instances ({}): destroy them first",
                    users.join(", ")
                ),
            ));
        }
        Ok(self.work(
            vec![DriverCommand::Overlay(
                netmux_proto::driver::DriverRequest::RemoveOverlay { vni },
            )],
            true,
            Pending::DestroyOverlay {
                session: id,
                name: name.to_owned(),
            },
        ))
    }

    /// The names of the instances on an overlay.
    fn overlay_instances(&self, overlay: &str) -> Vec<String> {
        self.instances
            .values()
            .filter(|i| i.spec.overlay.as_deref() == Some(overlay))
            .map(|i| i.spec.name.clone())
            .collect()
    }

    /// This host's underlay address (the default instance's IPv4 address) and every instance
    /// living on an overlay: `(VNI, MAC, IPv4 address)`, for the mapping backends that
    /// publish this host's own entries.
    pub fn overlay_own(&self) -> (Option<std::net::Ipv4Addr>, Vec<crate::overlay::OwnInstance>) {
        let underlay = self
            .instances
            .get(&DEFAULT_INSTANCE)
            .and_then(|i| i.host.ipv4);
        let own = self
            .instances
            .values()
            .filter(|i| !i.condemned)
            .filter_map(|i| Some((i.overlay?, i.host.mac, i.host.ipv4)))
            .collect();
        (underlay, own)
    }

    /// Every overlay as `netmux overlay ls` shows it.
    pub fn overlay_views(&self) -> Vec<netmux_proto::overlay::OverlayView> {
        self.overlays.views(|name| self.overlay_instances(name))
    }

    fn list_overlay_mappings(
        &mut self,
        id: SessionId,
        name: &str,
        mac: Option<[u8; 6]>,
    ) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let entries = self
            .overlays
            .mappings(name, mac)
            .map_err(|e| error(ErrorCode::NotFound, e.to_string()))?;
        Ok(self.reply(ClientReply::OverlayMappings(entries)))
    }

    fn change_overlay_mapping(
        &mut self,
        id: SessionId,
        name: &str,
        change: &netmux_proto::overlay::MappingChange,
    ) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        self.refuse_without_driver()?;
        let changed = self.overlays.change(name, change).map_err(|e| {
            let code = match e {
                crate::overlay::OverlayError::NotFound(_)
                | crate::overlay::OverlayError::NoEntry(..) => ErrorCode::NotFound,
                crate::overlay::OverlayError::Write(..) => ErrorCode::Internal,
                _ => ErrorCode::Protocol,
            };
            error(code, e.to_string())
        })?;
        let requests = match changed {
            crate::overlay::Changed::Now(requests) => requests,
            crate::overlay::Changed::Later(answer) => return Ok(Step::Wait(WaitReply(answer))),
        };
        let commands = requests.into_iter().map(DriverCommand::Overlay).collect();
        Ok(self.work(
            commands,
            false,
            Pending::ChangeOverlayMapping { session: id },
        ))
    }

    fn list_overlays(&mut self, id: SessionId) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let views = self.overlays.views(|name| self.overlay_instances(name));
        Ok(self.reply(ClientReply::Overlays(views)))
    }

    fn list_instances(&mut self, id: SessionId) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        if self.driver_gone.is_some() {
            return Ok(Step::Reply(self.instance_list(id, &DriverStats::default())));
        }
        // The instances' counters (and the link's): no queue's.
        Ok(self.work(
            vec![DriverCommand::StatsOf(Vec::new())],
            true,
            Pending::ListInstances { session: id },
        ))
    }

    /// The instances a session may see: every one for root and netd's admins, else its own.
    fn instance_list(&self, id: SessionId, stats: &DriverStats) -> Response {
        let uid = self
            .core_ref(id)
            .and_then(|c| c.session(id))
            .map_or(u32::MAX, |s| s.creds.uid);
        let own = self.instance_of(id);
        let all = uid == 0 || self.admin_uids.contains(&uid);
        let mut list: Vec<InstanceView> = self
            .instances
            .values()
            .filter(|i| (all || i.id == own) && i.ready)
            .map(|i| InstanceView {
                name: i.spec.name.clone(),
                id: i.id.0,
                mac: i.host.mac,
                shared_mac: i.shared_mac,
                ipv4: i.host_config.ipv4,
                gateway: i.host_config.gateway,
                ipv6_link_local: i.host_config.ipv6_link_local,
                ipv6: i.host_config.ipv6.clone(),
                dhcp: i.spec.dhcp,
                slaac: i.spec.slaac,
                gateway6: i.host_config.ipv6_gateway,
                ephemeral: (
                    *i.core.ports().ephemeral().start(),
                    *i.core.ports().ephemeral().end(),
                ),
                clients: i.core.sessions().count() as u64,
                ports: i.core.port_count() as u64,
                temporary: i.spec.temporary || self.instances_file.is_none(),
                counters: stats
                    .instances
                    .iter()
                    .find(|(d, _)| *d == i.id)
                    .map(|(_, c)| c.clone()),
                properties: i
                    .properties()
                    .into_iter()
                    .chain(self.settings.iter().cloned())
                    .collect(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Response::reply(ClientReply::Instances(list))
    }

    /// The hello: the session joins the instance it names (the default one when none), if the
    /// instance's policy lets its uid in.
    fn hello(&mut self, id: SessionId, instance: Option<String>) -> Result<Step, ErrorReply> {
        let name = instance.unwrap_or_else(|| DEFAULT_INSTANCE_NAME.to_owned());
        let target = self.names.get(&name).copied().ok_or_else(|| {
            error(
                ErrorCode::NotFound,
                InstanceError::NoSuchInstance(name.clone()).to_string(),
            )
        })?;
        let current = self.instance_of(id);
        if target != current {
            let t = self
                .instances
                .get(&target)
                .ok_or_else(|| error(ErrorCode::NotFound, format!("no instance named {name:?}")))?;
            if !t.ready || t.condemned {
                return Err(error(
                    ErrorCode::NotFound,
                    format!("instance {name:?} is being created or destroyed"),
                ));
            }
            let uid = self
                .core_ref(id)
                .and_then(|c| c.session(id))
                .map(|s| s.creds.uid)
                .ok_or_else(|| core_error(CoreError::NoSession))?;
            if !t.core.may_join(uid) {
                return Err(error(
                    ErrorCode::Denied,
                    format!("uid {uid} may not join instance {name:?}"),
                ));
            }
            let session = self.core_mut(id)?.take_handshake(id).map_err(core_error)?;
            let joined = self
                .instances
                .get_mut(&target)
                .map(|t| t.core.adopt(session.clone()));
            match joined {
                Some(Ok(())) => {
                    self.session_instance.insert(id, target);
                }
                Some(Err(e)) => {
                    // Back where it was: the limit refused it, the session goes on.
                    let _ = self.core_mut(id).map(|c| c.adopt(session));
                    return Err(core_error(e));
                }
                None => return Err(core_error(CoreError::NoSession)),
            }
        }
        let instance = self.inst(id)?;
        instance.core.hello(id).map_err(core_error)?;
        let host = instance.host_config.clone();
        Ok(self.reply(ClientReply::Hello {
            version: PROTOCOL_VERSION,
            host,
        }))
    }

    fn reply(&self, reply: ClientReply) -> Step {
        Step::Reply(Response::reply(reply))
    }

    fn work(&self, commands: Vec<DriverCommand>, all_or_nothing: bool, then: Pending) -> Step {
        Step::Driver(DriverWork {
            commands,
            stop_at_first_failure: all_or_nothing,
            then: Then(then),
        })
    }

    fn refuse_without_driver(&self) -> Result<(), ErrorReply> {
        match &self.driver_gone {
            Some(why) => Err(error(
                ErrorCode::Driver,
                format!("netd's driver is gone ({why})"),
            )),
            None => Ok(()),
        }
    }

    fn extra(&mut self, id: SessionId) -> Result<&mut SessionExtra, ErrorReply> {
        self.sessions
            .get_mut(&id)
            .ok_or_else(|| core_error(CoreError::NoSession))
    }

    /// The session's queue, or the commands that create it (with its ARP transmit filter)
    /// after reserving its ring memory: of the geometry (and its bytes) `full` gives when the
    /// client asks for the queue itself, else the smallest ([`Netd::open_queue`] grows it).
    fn queue_or_create(
        &mut self,
        id: SessionId,
        commands: &mut Vec<DriverCommand>,
        full: Option<(QueueConfig, u64)>,
    ) -> Result<(QueueId, Option<NewQueue>), ErrorReply> {
        if let Some(q) = &self.extra(id)?.queue {
            return Ok((q.id, None));
        }
        self.refuse_without_driver()?;
        let (rings, ring_bytes) = full.unwrap_or((self.small_rings, self.small_ring_bytes));
        self.core_mut(id)?
            .reserve_ring(id, ring_bytes)
            .map_err(core_error)?;
        let instance = self.instance_of(id);
        let host = self.inst(id)?.host;
        let queue = QueueId(self.next_queue);
        self.next_queue = self.next_queue.wrapping_add(1).max(HOST_QUEUE.0 + 1);
        commands.push(DriverCommand::CreateQueue {
            queue,
            config: rings,
            instance,
        });
        let mut own = [None, None];
        let exprs = [filters::queue_arp_tx(&host), filters::queue_nd_tx(&host)];
        for (slot, expr) in own.iter_mut().zip(exprs) {
            let Some(expr) = expr else { continue };
            let filter = self.filter_id();
            match spec(queue, filter, Direction::Tx, RxMode::Owner, None, expr) {
                Ok(s) => {
                    commands.push(DriverCommand::InstallFilter(s));
                    *slot = Some(filter);
                }
                Err(e) => {
                    self.release_ring(id, ring_bytes);
                    return Err(error(ErrorCode::Internal, e));
                }
            }
        }
        let [arp, nd] = own;
        Ok((
            queue,
            Some(NewQueue {
                id: queue,
                arp,
                nd,
                rings,
                reserved: ring_bytes,
            }),
        ))
    }

    /// Takes in the outcomes of a queue's creation (the first one or two of `outcomes`).
    /// `Ok` when the queue is in place (recorded in the session); otherwise the error, and
    /// the work that undoes a half-made queue, if any.
    fn queue_created(
        &mut self,
        id: SessionId,
        queue: NewQueue,
        outcomes: &mut std::vec::IntoIter<DriverOutcome>,
    ) -> Result<(), (ErrorReply, Option<Vec<DriverCommand>>)> {
        let created = match outcomes.next() {
            Some(DriverOutcome::Queue(q)) => q,
            Some(DriverOutcome::Failed(e)) => {
                self.release_ring(id, queue.reserved);
                return Err((driver_error(e), None));
            }
            _ => {
                self.release_ring(id, queue.reserved);
                return Err((error(ErrorCode::Internal, "no queue came back"), None));
            }
        };
        for what in [
            queue.arp.map(|_| "ARP"),
            queue.nd.map(|_| "neighbour discovery"),
        ]
        .into_iter()
        .flatten()
        {
            match outcomes.next() {
                Some(DriverOutcome::Done) => {}
                other => {
                    let e = match other {
                        Some(DriverOutcome::Failed(e)) => driver_error(e),
                        _ => error(
                            ErrorCode::Internal,
                            format!("the queue's {what} filter was skipped"),
                        ),
                    };
                    drop(created);
                    return Err((
                        e,
                        Some(vec![DriverCommand::DestroyQueue { queue: queue.id }]),
                    ));
                }
            }
        }
        let ring_bytes = created.ring_bytes;
        let filters = queue.arp.into_iter().chain(queue.nd).collect();
        match self.sessions.get_mut(&id) {
            Some(extra) => {
                extra.queue = Some(SessionQueue {
                    id: queue.id,
                    handout: Some(created),
                    ring_bytes,
                    rings: queue.rings,
                    filters,
                });
                Ok(())
            }
            // The session ended meanwhile (it cannot: its own task waits for this work); the
            // queue must not leak.
            None => Err((
                core_error(CoreError::NoSession),
                Some(vec![DriverCommand::DestroyQueue { queue: queue.id }]),
            )),
        }
    }

    fn bind(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: Option<u16>,
    ) -> Result<Step, ErrorReply> {
        self.refuse_without_driver()?;
        if self.inst(id)?.condemned {
            return Err(error(
                ErrorCode::NotFound,
                "the instance is being destroyed",
            ));
        }
        let core = self.core_mut(id)?;
        let port = match port {
            Some(p) => core.bind_port(id, transport, p).map(|_| p),
            None => core.get_port(id, transport),
        }
        .map_err(core_error)?;
        let host = self.inst(id)?.host;
        let prefix = self.inst(id)?.host_config.ipv4.map(|(_, p)| p);
        let mut commands = Vec::new();
        let planned = (|| {
            let (queue_id, queue) = self.queue_or_create(id, &mut commands, None)?;
            let port_filters = filters::port_filters(&host, transport, port)
                .ok_or_else(|| error(ErrorCode::Internal, "the host has no IP address"))?;
            // The unicast filters are for the host's MAC, the broadcast ones for the Ethernet
            // broadcast address.
            let mut rx: Vec<_> = port_filters
                .rx
                .into_iter()
                .map(|(expr, binding)| (expr, binding, host.mac))
                .collect();
            if let Some(prefix) = prefix {
                let broadcast = filters::broadcast_rx(&host, prefix, transport, port);
                rx.extend(
                    broadcast
                        .into_iter()
                        .map(|(expr, binding)| (expr, binding, filters::ETHER_BROADCAST)),
                );
            }
            let mut ids = Vec::new();
            let mut specs = Vec::with_capacity(rx.len() + port_filters.tx.len());
            for (expr, binding, mac) in rx {
                let filter = self.filter_id();
                // The receive side is a key in the classifier's tables; its program is built
                // directly, not compiled (see `port_rx_spec`).
                let s = port_rx_spec(queue_id, filter, binding, mac, expr)
                    .map_err(|e| error(ErrorCode::Internal, e))?;
                specs.push(s);
                ids.push(filter);
            }
            for (expr, binding) in port_filters.tx {
                let filter = self.filter_id();
                // The transmit side is an entry in the queue's grant table: nothing to
                // compile (see `grant_spec`).
                specs.push(grant_spec(queue_id, filter, binding, expr));
                ids.push(filter);
            }
            // One driver round trip for all of them, all or nothing.
            commands.push(DriverCommand::InstallFilters(specs));
            Ok((queue_id, queue, ids))
        })();
        match planned {
            Ok((queue_id, queue, filters)) => Ok(self.work(
                commands,
                true,
                Pending::Bind {
                    session: id,
                    transport,
                    port,
                    queue,
                    filters,
                    queue_id,
                },
            )),
            Err(e) => {
                self.unplan_queue(id, &commands);
                let _ = self
                    .core_mut(id)
                    .map(|c| c.port_install_failed(id, transport, port));
                Err(e)
            }
        }
    }

    /// Gives back the ring memory of a queue whose creation was planned but not sent.
    fn unplan_queue(&mut self, id: SessionId, commands: &[DriverCommand]) {
        for c in commands {
            if let DriverCommand::CreateQueue { config, .. } = c {
                let bytes = netmux_ring::layout_of(config).map_or(0, |l| l.total_len);
                self.release_ring(id, bytes);
            }
        }
    }

    /// The session's queue for the client: made now with the configured geometry, or, when a
    /// bind or a filter made it small, given rings of that geometry first (its ring memory is
    /// made and counted from here on).
    /// The rings a client asks for: netd's configured geometry, with rx and tx rings of at
    /// least `rxbuf` and `txbuf` bytes when given (whole slots, a power of two, never fewer
    /// than carry one 64 KiB frame), and their bytes. The limits on ring memory apply when it
    /// is reserved.
    fn asked_rings(
        &self,
        rxbuf: Option<u64>,
        txbuf: Option<u64>,
    ) -> Result<(QueueConfig, u64), ErrorReply> {
        if rxbuf.is_none() && txbuf.is_none() {
            return Ok((self.rings, self.ring_bytes));
        }
        let slot = u64::from(self.rings.slot_size);
        let payload = slot.saturating_sub(netmux_ring::layout::SLOT_HEADER_LEN as u64);
        let least = (netmux_ring::MAX_FRAME_LEN as u64)
            .div_ceil(payload.max(1))
            .next_power_of_two();
        let slots = |bytes: Option<u64>, configured: u32, name: &str| match bytes {
            None => Ok(configured),
            Some(bytes) => u32::try_from(bytes.div_ceil(slot).max(least).next_power_of_two())
                .ok()
                .filter(|&n| n <= netmux_ring::layout::MAX_SLOTS)
                .ok_or_else(|| {
                    error(
                        ErrorCode::Limit,
                        format!("{name} {bytes} is more than one ring holds"),
                    )
                }),
        };
        let rx_slots = slots(rxbuf, self.rings.rx_slots, "rxbuf")?;
        let tx_slots = slots(txbuf, self.rings.tx_slots, "txbuf")?;
        let rings = QueueConfig {
            slot_size: self.rings.slot_size,
            rx_slots,
            tx_slots,
            completion_slots: tx_slots.max(self.rings.completion_slots),
        };
        let bytes = netmux_ring::layout_of(&rings)
            .map_err(|e| error(ErrorCode::Limit, format!("rings of that size: {e}")))?
            .total_len;
        Ok((rings, bytes))
    }

    fn open_queue(
        &mut self,
        id: SessionId,
        rxbuf: Option<u64>,
        txbuf: Option<u64>,
    ) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let (rings, ring_bytes) = self.asked_rings(rxbuf, txbuf)?;
        let existing = self.extra(id)?.queue.as_ref().map(|q| {
            let small = q.handout.is_some() && q.rings != rings;
            (q.id, small, q.ring_bytes)
        });
        match existing {
            Some((queue, true, small_bytes)) => {
                self.refuse_without_driver()?;
                let grow = ring_bytes.saturating_sub(small_bytes);
                self.core_mut(id)?
                    .reserve_ring(id, grow)
                    .map_err(core_error)?;
                Ok(self.work(
                    vec![DriverCommand::ResizeQueue {
                        queue,
                        config: rings,
                    }],
                    true,
                    Pending::GrowQueue {
                        session: id,
                        grow,
                        rings,
                    },
                ))
            }
            Some((_, false, _)) => Ok(Step::Reply(self.hand_out_queue(id))),
            None => {
                let mut commands = Vec::new();
                match self.queue_or_create(id, &mut commands, Some((rings, ring_bytes)))? {
                    (_, None) => Ok(Step::Reply(self.hand_out_queue(id))),
                    (_, Some(queue)) => {
                        Ok(self.work(commands, true, Pending::OpenQueue { session: id, queue }))
                    }
                }
            }
        }
    }

    fn hand_out_queue(&mut self, id: SessionId) -> Response {
        let handout = self.extra(id).and_then(|extra| {
            let q = extra
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
        match handout {
            Ok((ring_bytes, q)) => Response {
                reply: ClientReply::Queue { ring_bytes },
                fds: vec![q.memfd, q.doorbell],
                end: false,
            },
            Err(e) => Response::error(e),
        }
    }

    fn close_port(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<Step, ErrorReply> {
        self.core_mut(id)?
            .close_port(id, transport, port)
            .map_err(core_error)?;
        let instance = self.instance_of(id);
        let extra = self.extra(id)?;
        let ids = extra.ports.remove(&(transport, port)).unwrap_or_default();
        if transport == Transport::Udp {
            // The port's groups go with its filters.
            extra.groups.retain(|&(_, p), _| p != port);
        }
        let queue = extra.queue.as_ref().map(|q| q.id);
        // The port's filters in one driver round trip.
        let commands = match queue {
            Some(queue) if !ids.is_empty() => vec![DriverCommand::RemoveFilters {
                queue,
                filters: ids.iter().rev().copied().collect(),
            }],
            _ => Vec::new(),
        };
        if commands.is_empty() {
            if ids.is_empty() {
                let _ = self.core_mut(id).map(|c| c.port_removed(transport, port));
            } else {
                tracing::error!(%transport, port, "port stays unusable: its filters may be in force");
            }
            return Ok(self.reply(ClientReply::Done));
        }
        Ok(self.work(
            commands,
            false,
            Pending::ClosePort {
                session: id,
                instance,
                transport,
                port,
            },
        ))
    }

    fn open_filter(
        &mut self,
        id: SessionId,
        expr: String,
        mode: client::FilterMode,
    ) -> Result<Step, ErrorReply> {
        let (core_mode, rx_mode) = match mode {
            client::FilterMode::Tap => (core::FilterMode::Tap, RxMode::Tap),
            client::FilterMode::Exclusive => (core::FilterMode::Exclusive, RxMode::Exclusive),
        };
        self.refuse_without_driver()?;
        let f = self
            .core_mut(id)?
            .open_filter(id, core_mode)
            .map_err(core_error)?;
        let mut commands = Vec::new();
        let planned = (|| {
            let program = filters::compile(&expr)
                .map_err(|e| error(ErrorCode::BadFilter, e.to_string()))?
                .to_bytes();
            let (queue_id, queue) = self.queue_or_create(id, &mut commands, None)?;
            let driver_filter = self.filter_id();
            commands.push(DriverCommand::InstallFilter(FilterSpec {
                queue: queue_id,
                filter: driver_filter,
                direction: Direction::Rx,
                mode: rx_mode,
                binding: None,
                expr,
                program,
            }));
            Ok((queue, driver_filter))
        })();
        match planned {
            Ok((queue, driver_filter)) => Ok(self.work(
                commands,
                true,
                Pending::OpenFilter {
                    session: id,
                    filter: f,
                    queue,
                    driver_filter,
                },
            )),
            Err(e) => {
                self.unplan_queue(id, &commands);
                let _ = self.core_mut(id).map(|c| c.close_filter(id, f));
                Err(e)
            }
        }
    }

    /// Installs the rx filter of `group` on UDP `port` (see [`filters::group_rx`]) and the tx
    /// filter of its membership reports ([`filters::group_report_tx`]) after
    /// checking that the group is joinable, that the session holds the port and that it is
    /// within [`filters::MAX_GROUPS_PER_SESSION`].
    fn join_group(
        &mut self,
        id: SessionId,
        group: std::net::IpAddr,
        port: u16,
    ) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        filters::joinable_group(group).map_err(|e| error(ErrorCode::Protocol, e.to_string()))?;
        let extra = self.extra(id)?;
        if extra.groups.contains_key(&(group, port)) {
            return Ok(self.reply(ClientReply::Done));
        }
        if !extra.ports.contains_key(&(Transport::Udp, port)) {
            return Err(error(
                ErrorCode::Denied,
                format!(
                    "udp port {port} is not this session's: bind it before joining a group on it"
                ),
            ));
        }
        if extra.groups.len() >= filters::MAX_GROUPS_PER_SESSION {
            return Err(error(
                ErrorCode::Limit,
                format!(
                    "at most {} groups per session",
                    filters::MAX_GROUPS_PER_SESSION
                ),
            ));
        }
        let queue = extra
            .queue
            .as_ref()
            .map(|q| q.id)
            .ok_or_else(|| error(ErrorCode::Internal, "a bound port without a queue"))?;
        self.refuse_without_driver()?;
        let host = self.inst(id)?.host;
        let (rx, binding) = filters::group_rx(group, port);
        let mut commands = Vec::new();
        let mut ids = Vec::new();
        let planned = [
            Some((Direction::Rx, Some(binding), rx)),
            filters::group_report_tx(&host, group).map(|tx| (Direction::Tx, None, tx)),
        ];
        for (direction, binding, expr) in planned.into_iter().flatten() {
            let filter = self.filter_id();
            let s = spec(queue, filter, direction, RxMode::Owner, binding, expr)
                .map_err(|e| error(ErrorCode::Internal, e))?;
            commands.push(DriverCommand::InstallFilter(s));
            ids.push(filter);
        }
        Ok(self.work(
            commands,
            true,
            Pending::JoinGroup {
                session: id,
                group,
                port,
                filters: ids,
            },
        ))
    }

    /// Removes the rx filter of a joined group.
    fn leave_group(
        &mut self,
        id: SessionId,
        group: std::net::IpAddr,
        port: u16,
    ) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let extra = self.extra(id)?;
        let Some(ids) = extra.groups.get(&(group, port)) else {
            return Err(error(
                ErrorCode::NotFound,
                format!("group {group} is not joined on udp port {port}"),
            ));
        };
        let queue = extra
            .queue
            .as_ref()
            .map(|q| q.id)
            .ok_or_else(|| error(ErrorCode::Internal, "a joined group without a queue"))?;
        let commands = removals(Some(queue), ids);
        self.refuse_without_driver()?;
        Ok(self.work(
            commands,
            true,
            Pending::LeaveGroup {
                session: id,
                group,
                port,
            },
        ))
    }

    fn close_filter(&mut self, id: SessionId, filter: core::FilterId) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let extra = self.extra(id)?;
        let driver_id = *extra
            .user_filters
            .get(&filter)
            .ok_or_else(|| core_error(CoreError::NoFilter))?;
        let queue = extra.queue.as_ref().map(|q| q.id);
        match queue {
            Some(queue) => {
                self.refuse_without_driver()?;
                Ok(self.work(
                    vec![DriverCommand::RemoveFilter {
                        queue,
                        filter: driver_id,
                    }],
                    true,
                    Pending::CloseFilter {
                        session: id,
                        filter,
                    },
                ))
            }
            None => {
                self.extra(id)?.user_filters.remove(&filter);
                self.core_mut(id)?
                    .close_filter(id, filter)
                    .map_err(core_error)?;
                Ok(self.reply(ClientReply::Done))
            }
        }
    }

    fn require_active(&self, id: SessionId) -> Result<(), ErrorReply> {
        match self
            .core_ref(id)
            .and_then(|c| c.session(id))
            .map(|s| s.state)
        {
            Some(core::SessionState::Active) => Ok(()),
            Some(_) => Err(core_error(CoreError::NotActive)),
            None => Err(core_error(CoreError::NoSession)),
        }
    }

    fn stats(&mut self, id: SessionId) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let queue = self.extra(id)?.queue.as_ref().map(|q| q.id);
        let Some(queue) = queue else {
            return Ok(self.reply(ClientReply::Stats(Counters::default())));
        };
        self.refuse_without_driver()?;
        Ok(self.work(
            vec![DriverCommand::StatsOf(vec![queue])],
            true,
            Pending::Stats { session: id, queue },
        ))
    }

    /// The listing, with the driver's counters; when the driver is gone, an error that says
    /// so (every session is ending then, so a listing would only mislead).
    fn list_sessions(&mut self, id: SessionId) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        self.refuse_without_driver()?;
        let queues = self.listed_queues(id)?;
        Ok(self.work(
            vec![DriverCommand::StatsOf(queues)],
            true,
            Pending::ListSessions { session: id },
        ))
    }

    /// The queues of the sessions `id`'s client may see, in the listing's order, as many as
    /// one request for counters may name: a listing carries fewer sessions with a queue than
    /// that (it is cut at [`LIST_REPLY_BUDGET`]), so every listed queue has its counters.
    fn listed_queues(&self, id: SessionId) -> Result<Vec<QueueId>, ErrorReply> {
        let asker = self
            .core_ref(id)
            .and_then(|c| c.session(id))
            .map(|s| s.creds.uid)
            .ok_or_else(|| core_error(CoreError::NoSession))?;
        Ok(self
            .instances
            .values()
            .flat_map(|i| i.core.sessions())
            .filter(|s| may_see(asker, s.creds.uid))
            .filter_map(|s| self.sessions.get(&s.id)?.queue.as_ref().map(|q| q.id))
            .take(netmux_proto::driver::MAX_STATS_QUEUES)
            .collect())
    }

    /// The sessions `id`'s client may see (every one for uid 0, else those of its own uid), with
    /// their queues and the driver's counters (none when the driver could not be asked).
    fn session_list(
        &self,
        id: SessionId,
        stats: Option<DriverStats>,
    ) -> Result<Response, ErrorReply> {
        let (link, counters): (Option<Counters>, HashMap<QueueId, Counters>) = match stats {
            Some(stats) => (Some(stats.link), stats.queues.into_iter().collect()),
            None => (None, HashMap::new()),
        };
        let asker = self
            .core_ref(id)
            .and_then(|c| c.session(id))
            .map(|s| s.creds.uid)
            .ok_or_else(|| core_error(CoreError::NoSession))?;
        let visible = self
            .instances
            .values()
            .flat_map(|i| i.core.sessions().map(move |s| (i, s)))
            .filter(|(_, s)| may_see(asker, s.creds.uid))
            .map(|(instance, s)| {
                let queue = self.sessions.get(&s.id).and_then(|e| e.queue.as_ref());
                client::SessionInfo {
                    id: s.id.0,
                    caller: s.id == id,
                    pid: s.creds.pid,
                    uid: s.creds.uid,
                    gid: s.creds.gid,
                    instance: instance.spec.name.clone(),
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
                        rings: q.rings,
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
        Ok(Response::reply(ClientReply::Sessions(list)))
    }

    /// Ends a session (closed, died, broke the protocol, timed out) and frees everything it
    /// held, in order: ports' filters (then the ports), tap and exclusive filters, the queue's
    /// own filters, the queue. Ending a session twice does nothing ([`Step::Finished`]).
    pub fn disconnect(&mut self, id: SessionId) -> Step {
        let instance = self.instance_of(id);
        let Ok(teardown) = self
            .core_mut(id)
            .and_then(|c| c.disconnect(id).map_err(core_error))
        else {
            return Step::Finished;
        };
        self.session_instance.remove(&id);
        let mut extra = self.sessions.remove(&id).unwrap_or_default();
        let queue = extra.queue.as_ref().map(|q| q.id);
        let mut commands = Vec::new();
        let mut ports = Vec::new();
        for &(t, p) in teardown.ports.iter().chain(&teardown.installing) {
            let ids = extra.ports.remove(&(t, p)).unwrap_or_default();
            let mine = removals(queue, &ids);
            if ids.is_empty() || queue.is_none() {
                // Nothing reached the driver for it.
                if ids.is_empty() {
                    self.port_removed(instance, t, p);
                } else {
                    tracing::error!(%t, port = p, "port stays unusable: its filters may be in force");
                }
                continue;
            }
            ports.push(((t, p), mine.len()));
            commands.extend(mine);
        }
        if let Some(q) = extra.queue.take() {
            let user: Vec<FilterId> = extra.user_filters.values().copied().collect();
            commands.extend(removals(Some(q.id), &user));
            commands.extend(removals(Some(q.id), &q.filters));
            commands.push(DriverCommand::DestroyQueue { queue: q.id });
        }
        if commands.is_empty() {
            return Step::Finished;
        }
        // Until the driver has let go of it, the session still holds its instance.
        self.teardowns.insert(id, instance);
        self.work(
            commands,
            false,
            Pending::Teardown {
                session: id,
                instance,
                ports,
                queue,
            },
        )
    }

    /// Continues after driver work: the outcomes are the work's, one per command, in order.
    pub fn resume(&mut self, then: Then, outcomes: Vec<DriverOutcome>) -> Step {
        self.resume_inner(then.0, outcomes)
    }

    /// A port's filters are gone at the driver: the port is free in its instance.
    fn port_removed(&mut self, instance: InstanceId, transport: Transport, port: u16) {
        if let Some(i) = self.instances.get_mut(&instance) {
            let _ = i.core.port_removed(transport, port);
        }
    }

    /// Gives back the ring memory reserved for a session's queue.
    fn release_ring(&mut self, id: SessionId, bytes: u64) {
        if let Ok(c) = self.core_mut(id) {
            let _ = c.release_ring(id, bytes);
        }
    }

    fn session_done(&mut self, id: SessionId) {
        if let Some(extra) = self.sessions.get_mut(&id) {
            extra.busy = false;
        }
    }

    fn resume_inner(&mut self, pending: Pending, mut outcomes: Vec<DriverOutcome>) -> Step {
        self.note_gone(&outcomes);
        match pending {
            Pending::Bind {
                session,
                transport,
                port,
                queue,
                filters,
                queue_id,
            } => {
                let mut it = outcomes.into_iter();
                if let Some(q) = queue {
                    if let Err((e, undo)) = self.queue_created(session, q, &mut it) {
                        let _ = self
                            .core_mut(session)
                            .map(|c| c.port_install_failed(session, transport, port));
                        return self.undo_queue(session, e, undo, q.reserved);
                    }
                }
                // The filters went in one all-or-nothing batch: one outcome.
                let mut results: Vec<DriverOutcome> = it.collect();
                if results.len() == 1 && results[0].is_ok() {
                    self.session_done(session);
                    let installed = self.core_mut(session).and_then(|c| {
                        c.port_installed(session, transport, port)
                            .map_err(core_error)
                    });
                    return match installed {
                        Ok(()) => {
                            if let Some(extra) = self.sessions.get_mut(&session) {
                                extra.ports.insert((transport, port), filters);
                            }
                            self.reply(ClientReply::Port { transport, port })
                        }
                        Err(e) => Step::Reply(Response::error(e)),
                    };
                }
                // A refused batch left nothing in force; after a lost connection any of its
                // filters may be: those are taken back (or, failing that, the port stays
                // unusable).
                let unknown = results
                    .iter()
                    .any(|o| matches!(o, DriverOutcome::Failed(DriverError::Gone(_))));
                let e = first_failure(&mut results)
                    .map(driver_error)
                    .unwrap_or_else(|| error(ErrorCode::Internal, "a filter install was skipped"));
                let undo = match unknown {
                    true => removals(Some(queue_id), &filters),
                    false => Vec::new(),
                };
                if undo.is_empty() {
                    let _ = self
                        .core_mut(session)
                        .map(|c| c.port_install_failed(session, transport, port));
                    self.session_done(session);
                    return Step::Reply(Response::error(e));
                }
                self.work(
                    undo,
                    false,
                    Pending::BindRollback {
                        session,
                        transport,
                        port,
                        error: e,
                    },
                )
            }
            Pending::BindRollback {
                session,
                transport,
                port,
                error,
            } => {
                if outcomes.iter().all(DriverOutcome::is_ok) {
                    let _ = self
                        .core_mut(session)
                        .map(|c| c.port_install_failed(session, transport, port));
                } else {
                    // Some filter may still be in force: the port stays unusable.
                    let _ = self.core_mut(session).map(|c| {
                        let _ = c.port_installed(session, transport, port);
                        c.close_port(session, transport, port)
                    });
                    tracing::error!(%transport, port, "port stays unusable: its filters may be in force");
                }
                self.session_done(session);
                Step::Reply(Response::error(error))
            }
            Pending::QueueRollback {
                session,
                error,
                release,
            } => {
                if release > 0 && outcomes.iter().all(DriverOutcome::is_ok) {
                    self.release_ring(session, release);
                }
                self.session_done(session);
                Step::Reply(Response::error(error))
            }
            Pending::GrowQueue {
                session,
                grow,
                rings,
            } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Queue(created)) => {
                        let grown = self.sessions.get_mut(&session).and_then(|e| {
                            let q = e.queue.as_mut()?;
                            // The small rings' descriptors go: the driver closed those rings.
                            q.handout = Some(created);
                            q.ring_bytes = q.ring_bytes.saturating_add(grow);
                            q.rings = rings;
                            Some(())
                        });
                        match grown {
                            Some(()) => Step::Reply(self.hand_out_queue(session)),
                            None => Step::Reply(Response::error(core_error(CoreError::NoSession))),
                        }
                    }
                    other => {
                        self.release_ring(session, grow);
                        let e = match other {
                            Some(DriverOutcome::Failed(e)) => driver_error(e),
                            _ => error(ErrorCode::Internal, "the queue's rings were not made"),
                        };
                        Step::Reply(Response::error(e))
                    }
                }
            }
            Pending::OpenQueue { session, queue } => {
                let mut it = outcomes.into_iter();
                if let Err((e, undo)) = self.queue_created(session, queue, &mut it) {
                    return self.undo_queue(session, e, undo, queue.reserved);
                }
                self.session_done(session);
                Step::Reply(self.hand_out_queue(session))
            }
            Pending::OpenFilter {
                session,
                filter,
                queue,
                driver_filter,
            } => {
                let mut it = outcomes.into_iter();
                if let Some(q) = queue {
                    if let Err((e, undo)) = self.queue_created(session, q, &mut it) {
                        let _ = self
                            .core_mut(session)
                            .map(|c| c.close_filter(session, filter));
                        return self.undo_queue(session, e, undo, q.reserved);
                    }
                }
                self.session_done(session);
                match it.next() {
                    Some(DriverOutcome::Done) => {
                        if let Some(extra) = self.sessions.get_mut(&session) {
                            extra.user_filters.insert(filter, driver_filter);
                        }
                        self.reply(ClientReply::Filter { filter: filter.0 })
                    }
                    other => {
                        let _ = self
                            .core_mut(session)
                            .map(|c| c.close_filter(session, filter));
                        let e = match other {
                            Some(DriverOutcome::Failed(e)) => driver_error(e),
                            _ => error(ErrorCode::Internal, "the filter install was skipped"),
                        };
                        Step::Reply(Response::error(e))
                    }
                }
            }
            Pending::JoinGroup {
                session,
                group,
                port,
                filters,
            } => {
                self.session_done(session);
                let installed = outcomes.iter().take_while(|o| o.is_ok()).count();
                if installed < filters.len() {
                    let e = first_failure(&mut outcomes)
                        .map(driver_error)
                        .unwrap_or_else(|| {
                            error(ErrorCode::Internal, "the group's filter was skipped")
                        });
                    let queue = self
                        .sessions
                        .get(&session)
                        .and_then(|x| x.queue.as_ref())
                        .map(|q| q.id);
                    let undo = removals(queue, &filters[..installed]);
                    if undo.is_empty() {
                        return Step::Reply(Response::error(e));
                    }
                    // Nothing but the removals' outcomes to wait for: the error stands.
                    return self.work(
                        undo,
                        false,
                        Pending::QueueRollback {
                            session,
                            error: e,
                            release: 0,
                        },
                    );
                }
                match outcomes.pop() {
                    _ if filters.is_empty() => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "no filter for the group",
                    ))),
                    Some(DriverOutcome::Done) => {
                        let Some(extra) = self.sessions.get_mut(&session) else {
                            return Step::Reply(Response::error(core_error(CoreError::NoSession)));
                        };
                        match extra.ports.get_mut(&(Transport::Udp, port)) {
                            Some(port_filters) => {
                                port_filters.extend(&filters);
                                extra.groups.insert((group, port), filters);
                                tracing::debug!(session = session.0, %group, port, "group joined");
                                self.reply(ClientReply::Done)
                            }
                            // The port closed meanwhile (it cannot: one request of a session
                            // at a time); the filter would outlive it.
                            None => Step::Reply(Response::error(error(
                                ErrorCode::Internal,
                                "the port closed while joining",
                            ))),
                        }
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "the group's filter was skipped",
                    ))),
                }
            }
            Pending::LeaveGroup {
                session,
                group,
                port,
            } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Done) => {
                        if let Some(extra) = self.sessions.get_mut(&session) {
                            if let Some(ids) = extra.groups.remove(&(group, port)) {
                                if let Some(f) = extra.ports.get_mut(&(Transport::Udp, port)) {
                                    f.retain(|x| !ids.contains(x));
                                }
                            }
                        }
                        tracing::debug!(session = session.0, %group, port, "group left");
                        self.reply(ClientReply::Done)
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "the group's removal was skipped",
                    ))),
                }
            }
            Pending::CloseFilter { session, filter } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Done) => {
                        if let Some(extra) = self.sessions.get_mut(&session) {
                            extra.user_filters.remove(&filter);
                        }
                        match self
                            .core_mut(session)
                            .and_then(|c| c.close_filter(session, filter).map_err(core_error))
                        {
                            Ok(()) => self.reply(ClientReply::Done),
                            Err(e) => Step::Reply(Response::error(e)),
                        }
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "the removal was skipped",
                    ))),
                }
            }
            Pending::ClosePort {
                session,
                instance,
                transport,
                port,
            } => {
                self.session_done(session);
                if outcomes.iter().all(DriverOutcome::is_ok) {
                    self.port_removed(instance, transport, port);
                } else {
                    tracing::error!(%transport, port, "port stays unusable: its filters may be in force");
                }
                self.reply(ClientReply::Done)
            }
            Pending::Stats { session, queue } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Stats(DriverStats { queues, .. })) => {
                        self.reply(ClientReply::Stats(
                            queues
                                .into_iter()
                                .find(|(q, _)| *q == queue)
                                .map(|(_, c)| c)
                                .unwrap_or_default(),
                        ))
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(ErrorCode::Internal, "no counters"))),
                }
            }
            Pending::ListSessions { session } => {
                self.session_done(session);
                let stats = match outcomes.pop() {
                    Some(DriverOutcome::Stats(stats)) => Some(stats),
                    // The driver stopped answering: say so rather than list as if all were
                    // well (every session is about to end).
                    Some(DriverOutcome::Failed(e @ DriverError::Gone(_))) => {
                        return Step::Reply(Response::error(driver_error(e)))
                    }
                    Some(DriverOutcome::Failed(e)) => {
                        tracing::warn!("listing sessions without counters: {e}");
                        None
                    }
                    _ => None,
                };
                match self.session_list(session, stats) {
                    Ok(r) => Step::Reply(r),
                    Err(e) => Step::Reply(Response::error(e)),
                }
            }
            Pending::CreateInstance {
                session,
                instance,
                host_tx,
            } => {
                self.session_done(session);
                if outcomes.iter().all(DriverOutcome::is_ok) {
                    if let Some(i) = self.instances.get_mut(&instance) {
                        i.ready = true;
                    }
                    if let Some(f) = host_tx {
                        self.host_tx.insert(instance, f);
                    }
                    self.persist();
                    let name = self.instances.get(&instance).map(|i| i.spec.name.clone());
                    tracing::info!(instance = instance.0, name, "instance created");
                    return self.reply(ClientReply::Done);
                }
                let mut outcomes = outcomes;
                let e = first_failure(&mut outcomes)
                    .map(driver_error)
                    .unwrap_or_else(|| error(ErrorCode::Internal, "the instance was skipped"));
                // Undo what the driver took: the instance (it has no queue yet).
                let told = outcomes.first().is_some_and(DriverOutcome::is_ok);
                self.forget(instance);
                if told {
                    return self.work(
                        vec![DriverCommand::RemoveInstance { instance }],
                        false,
                        Pending::QueueRollback {
                            session,
                            error: e,
                            release: 0,
                        },
                    );
                }
                Step::Reply(Response::error(e))
            }
            Pending::DestroyInstanceSessionsEnded { session, instance } => {
                let mut commands = vec![DriverCommand::RemoveInstance { instance }];
                // A leased address is released by the host stack from the instance's MAC and
                // address: netd's transmit filter for them stays until it has been.
                let releasing = self
                    .instances
                    .get(&instance)
                    .is_some_and(|i| i.spec.dhcp && i.host.ipv4.is_some())
                    && !self.dhcp_released.remove(&instance);
                if let Some(f) = self.host_tx.remove(&instance) {
                    if releasing {
                        self.lingering_host_tx.push((instance, f));
                    } else {
                        commands.push(DriverCommand::RemoveFilter {
                            queue: HOST_QUEUE,
                            filter: f,
                        });
                    }
                }
                self.work(
                    commands,
                    false,
                    Pending::DestroyInstance { session, instance },
                )
            }
            Pending::DestroyInstance { session, instance } => {
                self.session_done(session);
                let removed = outcomes.first().is_some_and(DriverOutcome::is_ok);
                let name = self.instances.get(&instance).map(|i| i.spec.name.clone());
                let left = self
                    .instances
                    .get(&instance)
                    .map_or(0, |i| i.core.sessions().count());
                if !removed || left > 0 {
                    // A session joined meanwhile, or the driver refused: it stays, condemned.
                    let mut outcomes = outcomes;
                    let e = first_failure(&mut outcomes)
                        .map(driver_error)
                        .unwrap_or_else(|| {
                            error(ErrorCode::InUse, format!("{left} sessions are still in it"))
                        });
                    return Step::Reply(Response::error(e));
                }
                self.forget(instance);
                self.persist();
                tracing::info!(instance = instance.0, name, "instance destroyed");
                self.reply(ClientReply::Done)
            }
            Pending::Operator(pending) => self.resume_ops(pending, outcomes),
            Pending::CreateOverlay { session, name } => {
                self.session_done(session);
                if outcomes.iter().all(DriverOutcome::is_ok) {
                    tracing::info!(overlay = %name, "overlay created");
                    self.persist();
                    return self.reply(ClientReply::Done);
                }
                let mut outcomes = outcomes;
                let e = first_failure(&mut outcomes)
                    .map(driver_error)
                    .unwrap_or_else(|| error(ErrorCode::Internal, "the overlay was skipped"));
                let told = outcomes.first().is_some_and(DriverOutcome::is_ok);
                let vni = self.overlays.vni(&name).ok();
                self.overlays.forget(&name);
                match (told, vni) {
                    (true, Some(vni)) => self.work(
                        vec![DriverCommand::Overlay(
                            netmux_proto::driver::DriverRequest::RemoveOverlay { vni },
                        )],
                        false,
                        Pending::QueueRollback {
                            session,
                            error: e,
                            release: 0,
                        },
                    ),
                    _ => Step::Reply(Response::error(e)),
                }
            }
            Pending::DestroyOverlay { session, name } => {
                self.session_done(session);
                let mut outcomes = outcomes;
                match first_failure(&mut outcomes) {
                    None => {
                        self.overlays.forget(&name);
                        self.persist();
                        tracing::info!(overlay = %name, "overlay destroyed");
                        self.reply(ClientReply::Done)
                    }
                    Some(e) => Step::Reply(Response::error(driver_error(e))),
                }
            }
            Pending::ChangeOverlayMapping { session } => {
                self.session_done(session);
                let mut outcomes = outcomes;
                match first_failure(&mut outcomes) {
                    None => self.reply(ClientReply::Done),
                    Some(e) => Step::Reply(Response::error(driver_error(e))),
                }
            }
            Pending::ListInstances { session } => {
                self.session_done(session);
                let stats = match outcomes.pop() {
                    Some(DriverOutcome::Stats(stats)) => stats,
                    _ => DriverStats::default(),
                };
                Step::Reply(self.instance_list(session, &stats))
            }
            Pending::Teardown {
                session,
                instance,
                ports,
                queue,
            } => {
                self.teardowns.remove(&session);
                let mut it = outcomes.iter();
                for ((t, p), n) in ports {
                    let ok = it.by_ref().take(n).all(DriverOutcome::is_ok);
                    if ok {
                        self.port_removed(instance, t, p);
                    } else {
                        tracing::error!(%t, port = p, "port stays unusable: its filters may be in force");
                    }
                }
                if queue.is_some() && !outcomes.last().is_some_and(DriverOutcome::is_ok) {
                    tracing::warn!(?queue, %session, "destroying a queue failed");
                }
                Step::Finished
            }
        }
    }

    /// Undoes a half-made queue (if the work says so), then replies with the error.
    fn undo_queue(
        &mut self,
        session: SessionId,
        e: ErrorReply,
        undo: Option<Vec<DriverCommand>>,
        reserved: u64,
    ) -> Step {
        match undo {
            Some(commands) => self.work(
                commands,
                false,
                Pending::QueueRollback {
                    session,
                    error: e,
                    release: reserved,
                },
            ),
            None => {
                self.session_done(session);
                Step::Reply(Response::error(e))
            }
        }
    }

    /// Notes a driver that is gone, from any outcome that says so (the shell logs it once,
    /// when it ends every session).
    fn note_gone(&mut self, outcomes: &[DriverOutcome]) {
        for o in outcomes {
            if let DriverOutcome::Failed(DriverError::Gone(why)) = o {
                self.driver_gone_because(why.clone());
                return;
            }
        }
    }
}

/// The smallest rings of `config`'s slot size: room for one frame of the largest size each way
/// and one completion. What a queue has before its client opens it.
fn smallest_rings(config: QueueConfig) -> QueueConfig {
    let mut slots = 1;
    loop {
        let small = QueueConfig {
            slot_size: config.slot_size,
            rx_slots: slots,
            tx_slots: slots,
            completion_slots: 1,
        };
        if netmux_ring::layout_of(&small).is_ok() {
            // When the least rings that carry a maximum frame are the configured ones, the
            // queue is made whole at once (nothing to grow at open).
            if slots >= config.rx_slots.min(config.tx_slots) {
                return config;
            }
            return small;
        }
        if slots >= config.rx_slots.min(config.tx_slots) {
            // No smaller geometry fits (or the configured one does not): keep it.
            return config;
        }
        slots *= 2;
    }
}

/// The commands removing `ids` from `queue`, last installed first.
fn removals(queue: Option<QueueId>, ids: &[FilterId]) -> Vec<DriverCommand> {
    match queue {
        Some(queue) => ids
            .iter()
            .rev()
            .map(|&filter| DriverCommand::RemoveFilter { queue, filter })
            .collect(),
        None => Vec::new(),
    }
}

/// Carries a step out to its end on `link`, on the calling thread (for tests and tools that
/// drive netd without the shell): driver work goes to the link, its outcomes back to netd,
/// until there is a reply (or nothing more to do).
pub fn drive_blocking(
    netd: &mut Netd,
    link: &mut dyn crate::driver_link::DriverLink,
    mut step: Step,
) -> Option<Response> {
    loop {
        match step {
            Step::Reply(r) => return Some(r),
            Step::Finished => return None,
            Step::Wait(w) => return Some(w.outcome_blocking()),
            Step::Driver(DriverWork {
                commands,
                stop_at_first_failure,
                then,
            }) => {
                let outcomes = crate::driver_link::run(link, commands, stop_at_first_failure);
                step = netd.resume(then, outcomes);
            }
            Step::EndSessions { sessions, then } => {
                for s in sessions {
                    let teardown = netd.disconnect(s);
                    let _ = drive_blocking(netd, link, teardown);
                }
                step = netd.resume(then, Vec::new());
            }
        }
    }
}

/// Applies one report of a DHCP client to an instance's address and what its clients learn
/// (`who`: how the log names the instance), logging it.
fn apply_lease_event(
    ipv4: &mut Option<std::net::Ipv4Addr>,
    host_config: &mut HostConfig,
    who: &str,
    event: crate::dhcp::Event,
) {
    match event {
        crate::dhcp::Event::Leased(l) | crate::dhcp::Event::Renewed(l) => {
            let renewed = *ipv4 == Some(l.address);
            *ipv4 = Some(l.address);
            host_config.ipv4 = Some((l.address.octets(), l.prefix));
            host_config.gateway = l.gateway.map(|g| g.octets());
            host_config.dns_servers = l.dns_servers.iter().map(|a| a.octets()).collect();
            let dns: Vec<String> = l.dns_servers.iter().map(|a| a.to_string()).collect();
            if renewed {
                tracing::info!(
                    "dhcp: lease of {} renewed by {} for {} s ({who})",
                    l.address,
                    l.server,
                    l.duration.as_secs()
                );
            } else {
                tracing::info!(
                    "dhcp: leased {}/{} from {} for {} s (gateway {}, dns {}) ({who})",
                    l.address,
                    l.prefix,
                    l.server,
                    l.duration.as_secs(),
                    l.gateway.map_or("none".into(), |g| g.to_string()),
                    if dns.is_empty() {
                        "none".into()
                    } else {
                        dns.join(",")
                    }
                );
            }
        }
        crate::dhcp::Event::Lost { address, why } => {
            tracing::warn!(
                "dhcp: lease of {address} lost ({why}); {who} has no IPv4 address until a new \
                 lease"
            );
            *ipv4 = None;
            host_config.ipv4 = None;
            host_config.gateway = None;
            host_config.dns_servers.clear();
        }
    }
}

/// One DHCP client netd's host stack runs ([`Netd::dhcp_clients`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpSetup {
    /// The instance whose address it is.
    pub instance: InstanceId,
    /// Its name (for the log).
    pub name: String,
    /// Its MAC: the client's hardware address.
    pub mac: [u8; 6],
    /// A client identifier of its own when it shares the MAC with other instances.
    pub client_id: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{Event, Lease};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn filters_of(commands: &[DriverCommand]) -> (Vec<String>, usize) {
        let installed = commands
            .iter()
            .flat_map(|c| match c {
                DriverCommand::InstallFilter(s) => vec![s.expr.clone()],
                DriverCommand::InstallFilters(specs) => {
                    specs.iter().map(|s| s.expr.clone()).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let removed = commands
            .iter()
            .map(|c| match c {
                DriverCommand::RemoveFilter { .. } => 1,
                DriverCommand::RemoveFilters { filters, .. } => filters.len(),
                _ => 0,
            })
            .sum();
        (installed, removed)
    }

    fn host_addresses(commands: &[DriverCommand]) -> Option<Vec<[u8; 4]>> {
        commands.iter().find_map(|c| match c {
            DriverCommand::SetHostAddresses { ipv4 } => Some(ipv4.clone()),
            _ => None,
        })
    }

    /// What a command is, without its ids.
    fn kind(c: &DriverCommand) -> String {
        match c {
            DriverCommand::InstallFilter(s) => format!("install {:?} {}", s.direction, s.expr),
            DriverCommand::InstallFilters(specs) => specs
                .iter()
                .map(|s| format!("install {:?} {}", s.direction, s.expr))
                .collect::<Vec<_>>()
                .join("; "),
            DriverCommand::Overlay(r) => format!(
                "overlay {}",
                format!("{r:?}").split(['(', ' ']).next().unwrap_or("")
            ),
            DriverCommand::Operator(r) => format!("operator {r:?}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn raw_ports_come_out_in_the_ports_files_order() {
        let names = ["zeta", "alpha", "default"];
        let mut ports = Vec::new();
        for uid in [1000, 0, 65534] {
            for index in [2, 0, 1] {
                for (transport, port) in [
                    (Transport::Udp, 53),
                    (Transport::Tcp, 8080),
                    (Transport::Tcp, 22),
                ] {
                    ports.push((uid, index, transport, port));
                }
            }
        }
        let raw = RawPorts {
            instances: names.iter().map(|n| n.to_string()).collect(),
            ports: ports.clone(),
        };
        let mut expected: Vec<crate::ports_file::Entry> = ports
            .into_iter()
            .map(|(uid, index, transport, port)| crate::ports_file::Entry {
                uid,
                instance: names[index].to_string(),
                transport,
                port,
            })
            .collect();
        expected.sort();
        assert_eq!(raw.entries(), expected);
    }

    #[test]
    fn a_port_rx_filter_is_built_byte_for_byte_as_its_expression_compiles() {
        let host = filters::HostIdentity {
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: Some(std::net::Ipv4Addr::new(192, 0, 2, 7)),
            ipv6: Some("fe80::1".parse().unwrap()),
            ipv6_global: Some("2001:db8::7".parse().unwrap()),
        };
        let mut checked = 0;
        for transport in [Transport::Tcp, Transport::Udp] {
            for port in [1, 53, 8080, 65535] {
                let f = filters::port_filters(&host, transport, port).unwrap();
                let unicast = f.rx.into_iter().map(|(e, b)| (e, b, host.mac));
                let broadcast = filters::broadcast_rx(&host, 24, transport, port)
                    .into_iter()
                    .map(|(e, b)| (e, b, filters::ETHER_BROADCAST));
                for (expr, binding, mac) in unicast.chain(broadcast) {
                    let built =
                        port_rx_spec(QueueId(1), FilterId(2), binding, mac, expr.clone()).unwrap();
                    let compiled = filters::compile(&expr).unwrap().to_bytes();
                    assert_eq!(built.program, compiled, "{expr}");
                    assert_eq!((built.expr, built.binding), (expr, Some(binding)));
                    checked += 1;
                }
            }
        }
        // Three addresses for both transports, two broadcast addresses for UDP.
        assert_eq!(checked, 4 * (3 * 2 + 2));
    }

    #[test]
    fn a_new_driver_is_given_what_the_first_was_and_ports_its_ends_left_unusable_are_free() {
        let dir = std::env::temp_dir().join(format!("netmux-replaced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("netd.toml");
        std::fs::write(
            &file,
            format!(
                "[[overlay]]\nname = \"ov\"\nvni = 7\nmapping = \"files:{}\"\n\n\
                 [[instance]]\nname = \"blue\"\nmac = \"02:00:00:00:0b:01\"\nip = \"10.1.0.5/24\"\n\
                 overlay = \"ov\"\n\n\
                 [[firewall]]\ninstance = \"default\"\nrule = \"block in udp port 7021\"\n",
                dir.join("missing.json").display()
            ),
        )
        .unwrap();
        let mut config = Config::new(&dir);
        config.addrs.ipv4 = Some((Ipv4Addr::new(192, 0, 2, 2), 24));
        config.instances_file = Some(file);
        config.probe_address = true;
        let link = LinkInfo {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        };
        let (mut netd, start) = Netd::new(&config, link).unwrap();
        // A port whose session ended while the driver was gone stays releasing.
        netd.instances
            .get_mut(&DEFAULT_INSTANCE)
            .unwrap()
            .core
            .ports_mut()
            .bind(Transport::Udp, 7000, SessionId(99))
            .unwrap();
        netd.instances
            .get_mut(&DEFAULT_INSTANCE)
            .unwrap()
            .core
            .ports_mut()
            .release(Transport::Udp, 7000, SessionId(99))
            .unwrap();
        assert!(!netd.port_free(DEFAULT_INSTANCE, Transport::Udp, 7000));
        netd.dad_done();
        netd.driver_gone_because("killed".into());

        let again = netd.driver_replaced().unwrap();
        assert!(netd.port_free(DEFAULT_INSTANCE, Transport::Udp, 7000));
        let kinds = |cs: &[DriverCommand]| -> Vec<String> { cs.iter().map(kind).collect() };
        let mut first = kinds(&start);
        // The ARP probes' filter is for the start only.
        first.retain(|k| !k.contains("0.0.0.0"));
        assert_eq!(kinds(&again), first);
        for needed in [
            "CreateQueue",
            "SetHostAddresses",
            "overlay SetOverlay",
            "SetInstance",
            "operator SetFirewall",
            "SetNetdQueue",
        ] {
            assert!(
                first.iter().any(|k| k.starts_with(needed)),
                "{needed} in {first:?}"
            );
        }
        // Clients are refused until the new driver took it all.
        assert!(netd
            .connect(
                Credentials {
                    pid: 1,
                    uid: 0,
                    gid: 0
                },
                Duration::ZERO
            )
            .is_err());
        netd.reinstalled(again.iter().map(|_| DriverOutcome::Done).collect())
            .unwrap();
        assert!(netd
            .connect(
                Credentials {
                    pid: 1,
                    uid: 0,
                    gid: 0
                },
                Duration::ZERO
            )
            .is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dhcp_lease_sets_the_default_instances_address_and_filters_and_losing_it_clears_them() {
        let mut config = Config::new("/nonexistent/netmux-test");
        config.dhcp = true;
        let link = LinkInfo {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        };
        let (mut netd, start) = Netd::new(&config, link).unwrap();
        assert!(netd.dhcp());
        assert_eq!(netd.host_config().ipv4, None);
        assert_eq!(host_addresses(&start), Some(vec![]));
        let (installed, _) = filters_of(&start);
        assert!(
            installed
                .iter()
                .any(|e| e.contains("ip src host 0.0.0.0") && e.contains("udp src port 68")),
            "{installed:?}"
        );
        assert_eq!(netd.take_dhcp_commands().0, vec![]);

        let address = Ipv4Addr::new(192, 0, 2, 55);
        let lease = Lease {
            address,
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
            dns_servers: vec![Ipv4Addr::new(192, 0, 2, 53)],
            server: Ipv4Addr::new(192, 0, 2, 1),
            server_mac: [2, 0, 0, 0, 0, 2],
            duration: Duration::from_secs(120),
            renew: Duration::from_secs(60),
            rebind: Duration::from_secs(105),
            acquired: Duration::ZERO,
        };
        netd.push_dhcp_event(Event::Leased(lease.clone()));
        let (commands, stale) = netd.take_dhcp_commands();
        assert!(stale.is_empty());
        assert_eq!(host_addresses(&commands), Some(vec![address.octets()]));
        let (installed, _) = filters_of(&commands);
        assert!(installed
            .iter()
            .any(|e| e.contains("ip src host 192.0.2.55")));
        let hc = netd.host_config();
        assert_eq!(hc.ipv4, Some((address.octets(), 24)));
        assert_eq!(hc.gateway, Some([192, 0, 2, 1]));
        assert_eq!(hc.dns_servers, vec![[192, 0, 2, 53]]);
        assert_eq!(netd.host().ipv4, Some(address));

        // A renewal of the same address changes nothing the driver holds.
        netd.push_dhcp_event(Event::Renewed(lease));
        assert_eq!(netd.take_dhcp_commands(), (vec![], vec![]));

        netd.push_dhcp_event(Event::Lost {
            address,
            why: "test",
        });
        let (commands, _) = netd.take_dhcp_commands();
        assert_eq!(host_addresses(&commands), Some(vec![]));
        let (installed, removed) = filters_of(&commands);
        // Only the IPv6 link-local address's transmit filter comes back.
        assert!(
            installed
                .iter()
                .all(|e| !e.contains("192.0.2.55") && e.contains("ip6 src host")),
            "{installed:?}"
        );
        assert_eq!(removed, 2);
        let hc = netd.host_config();
        assert_eq!((hc.ipv4, hc.gateway), (None, None));
        assert!(hc.dns_servers.is_empty());
        assert_eq!(netd.host().ipv4, None);
    }
}
