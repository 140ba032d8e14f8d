//! netd's link to the driver, behind one trait: the real one speaks the control protocol on
//! the driver's socket ([`ChannelDriver`]); [`Recorder`] wraps any link and keeps every
//! request in order, for tests that check what netd asked and when.
//!
//! [`crate::service`] decides which [`DriverCommand`]s a request needs; the shell carries
//! them out with [`run`] on a thread of their own, with a deadline, and hands the
//! [`DriverOutcome`]s back. Every call is one request and one reply, in order; a call that
//! returns `Ok` means the driver has carried it out (a filter returned `Ok` from
//! [`DriverLink::install_filter`] is in force, one returned `Ok` from
//! [`DriverLink::remove_filter`] no longer is). Any failure of the connection itself, a reply
//! that misses its deadline included, is [`DriverError::Gone`]: netd then refuses what needs
//! the driver and keeps released ports unusable, since it cannot confirm their filters are
//! gone.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netmux_proto::driver::{
    Counters, Direction, DriverReply, DriverRequest, FilterId, FilterInstall, InstanceId,
    InstanceInfo, PortBinding, QueueConfig, QueueId, RxMode,
};
use netmux_proto::ops::{OperatorReply, OperatorRequest};
use netmux_proto::{Channel, ErrorReply, LinkInfo, PROTOCOL_VERSION};

/// The queue netd creates for its own host stack, before any client's. The driver sends it
/// what no client's filter matched.
pub const HOST_QUEUE: QueueId = QueueId(0);

/// Why a driver request failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver refused the request.
    #[error("driver refused: {}", .0.message)]
    Refused(ErrorReply),
    /// The connection to the driver failed or it answered nonsense; nothing more can be done.
    #[error("driver connection lost: {0}")]
    Gone(String),
}

/// One filter to install: its program, the expression it was built from, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// The queue it belongs to.
    pub queue: QueueId,
    /// Its id (netd's choice, unique for the driver's life).
    pub filter: FilterId,
    /// Rx or tx.
    pub direction: Direction,
    /// For rx: owner, tap or exclusive.
    pub mode: RxMode,
    /// For port rx filters: the classifier's key.
    pub binding: Option<PortBinding>,
    /// The pcap-filter expression it was built from (for people and tests).
    pub expr: String,
    /// The verified program, in the VM's container format; empty for a port's tx grant (a
    /// table entry in the driver, see [`netmux_proto::driver::FilterInstall::program`]).
    pub program: Vec<u8>,
}

impl FilterSpec {
    /// The filter as the driver's protocol carries it.
    pub fn install(&self) -> FilterInstall {
        FilterInstall {
            queue: self.queue,
            filter: self.filter,
            direction: self.direction,
            mode: self.mode,
            binding: self.binding,
            program: self.program.clone(),
        }
    }
}

/// A queue the driver created: its ring memory and the client's end of its doorbell, for the
/// client (netd keeps them only until it hands them out).
#[derive(Debug)]
pub struct CreatedQueue {
    /// Total ring bytes.
    pub ring_bytes: u64,
    /// The sealed memfd.
    pub memfd: OwnedFd,
    /// The client's end of the queue's doorbell.
    pub doorbell: OwnedFd,
}

/// The driver's counters: the link's, every queue's, every instance's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// The link's.
    pub link: Counters,
    /// Every queue's.
    pub queues: Vec<(QueueId, Counters)>,
    /// Every instance's.
    pub instances: Vec<(InstanceId, Counters)>,
}

/// What netd needs from a driver.
pub trait DriverLink: Send {
    /// The link's MAC and MTU.
    fn link_info(&self) -> LinkInfo;
    /// Creates a queue in an instance.
    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        instance: InstanceId,
    ) -> Result<CreatedQueue, DriverError>;
    /// Creates an instance, or updates its MAC and addresses.
    fn set_instance(&mut self, info: InstanceInfo) -> Result<(), DriverError>;
    /// Removes an instance without queues.
    fn remove_instance(&mut self, instance: InstanceId) -> Result<(), DriverError>;
    /// Stops and frees a queue.
    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError>;
    /// Makes new rings of this geometry for a queue (its filters stay; its old rings close).
    fn resize_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
    ) -> Result<CreatedQueue, DriverError>;
    /// Installs a filter; `Ok` means it is in force.
    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError>;
    /// Installs filters in order, all or nothing: `Ok` means every one is in force; a
    /// refusal means none is (those installed before it are removed again). The real driver
    /// takes the batch in one round trip ([`DriverRequest::InstallFilters`]); by default, one
    /// [`DriverLink::install_filter`] each.
    fn install_filters(&mut self, specs: &[FilterSpec]) -> Result<(), DriverError> {
        for (i, spec) in specs.iter().enumerate() {
            if let Err(e) = self.install_filter(spec) {
                for done in specs[..i].iter().rev() {
                    // A filter that cannot be taken back may be in force: not a refusal.
                    self.remove_filter(done.queue, done.filter).map_err(|r| {
                        DriverError::Gone(format!(
                            "taking back filter {} after a refused install: {r}",
                            done.filter.0
                        ))
                    })?;
                }
                return Err(e);
            }
        }
        Ok(())
    }
    /// Removes a filter; `Ok` means it is no longer in force.
    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError>;
    /// Removes filters of one queue, trying every one: `Ok` means none of them is in force
    /// any more; otherwise the first failure. The real driver takes the batch in one round
    /// trip ([`DriverRequest::RemoveFilters`]); by default, one
    /// [`DriverLink::remove_filter`] each.
    fn remove_filters(&mut self, queue: QueueId, filters: &[FilterId]) -> Result<(), DriverError> {
        let mut result = Ok(());
        for &filter in filters {
            let r = self.remove_filter(queue, filter);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
    /// Counters of the link, every queue and every instance (with thousands of queues, more
    /// than one message carries: the driver refuses; see [`DriverLink::stats_of`]).
    fn stats(&mut self) -> Result<DriverStats, DriverError>;
    /// Counters of the link, every instance and the queues `queues` names (at most
    /// [`netmux_proto::driver::MAX_STATS_QUEUES`]; those the driver does not have are left
    /// out). By default, [`DriverLink::stats`] narrowed down.
    fn stats_of(&mut self, queues: &[QueueId]) -> Result<DriverStats, DriverError> {
        let mut stats = self.stats()?;
        stats.queues.retain(|(q, _)| queues.contains(q));
        Ok(stats)
    }
    /// Makes `queue` netd's own: it gets every frame no rx filter takes.
    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError>;
    /// The host's IPv4 addresses: ARP requests for them go to every queue.
    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError>;
    /// Whether the driver is known to be gone, and why, found without sending it anything
    /// (netd asks between requests, so it notices a dead driver while no client is asking).
    fn gone(&mut self) -> Option<String> {
        None
    }
    /// A capture or firewall request ([`OperatorRequest`]).
    fn operator(&mut self, request: OperatorRequest) -> Result<OperatorReply, DriverError> {
        let _ = request;
        Err(DriverError::Refused(ErrorReply {
            code: netmux_proto::ErrorCode::Internal,
            message: "this driver link carries no captures or firewall rules".into(),
        }))
    }

    /// An overlay request ([`crate::overlay`]): `SetOverlay`, `RemoveOverlay`,
    /// `SetOverlayMappings` or `OverlayPoll`; its reply (`Done` or `OverlayPoll`).
    fn overlay(&mut self, request: DriverRequest) -> Result<DriverReply, DriverError> {
        let _ = request;
        Err(DriverError::Refused(ErrorReply {
            code: netmux_proto::ErrorCode::Internal,
            message: "this driver link carries no overlays".into(),
        }))
    }
}

/// One request netd makes of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverCommand {
    /// Create a queue.
    CreateQueue {
        /// Its id.
        queue: QueueId,
        /// Its ring geometry.
        config: QueueConfig,
        /// Its instance.
        instance: InstanceId,
    },
    /// Stop and free a queue.
    DestroyQueue {
        /// Its id.
        queue: QueueId,
    },
    /// Give a queue new rings of another geometry.
    ResizeQueue {
        /// Its id.
        queue: QueueId,
        /// The new geometry.
        config: QueueConfig,
    },
    /// Install a filter.
    InstallFilter(FilterSpec),
    /// Install filters, all or nothing, in one round trip ([`DriverLink::install_filters`]).
    InstallFilters(Vec<FilterSpec>),
    /// Remove a filter.
    RemoveFilter {
        /// Its queue.
        queue: QueueId,
        /// The filter.
        filter: FilterId,
    },
    /// Remove filters of one queue in one round trip ([`DriverLink::remove_filters`]).
    RemoveFilters {
        /// Their queue.
        queue: QueueId,
        /// The filters.
        filters: Vec<FilterId>,
    },
    /// Counters of the link and of every queue.
    Stats,
    /// Counters of the link, every instance and these queues ([`DriverLink::stats_of`]).
    StatsOf(Vec<QueueId>),
    /// Make `queue` netd's own.
    SetNetdQueue {
        /// The queue.
        queue: QueueId,
    },
    /// The host's IPv4 addresses.
    SetHostAddresses {
        /// The addresses.
        ipv4: Vec<[u8; 4]>,
    },
    /// Create an instance, or update its MAC and addresses.
    SetInstance(InstanceInfo),
    /// Remove an instance without queues.
    RemoveInstance {
        /// The instance.
        instance: InstanceId,
    },
    /// A capture or firewall request.
    Operator(OperatorRequest),
    /// An overlay request (see [`DriverLink::overlay`]).
    Overlay(DriverRequest),
}

/// What became of one [`DriverCommand`].
#[derive(Debug)]
pub enum DriverOutcome {
    /// Carried out.
    Done,
    /// The queue was created.
    Queue(CreatedQueue),
    /// The counters.
    Stats(DriverStats),
    /// The answer to an operator request.
    Operator(OperatorReply),
    /// The reply to an overlay request that answers more than `Done`.
    Reply(DriverReply),
    /// Refused, or the driver is gone.
    Failed(DriverError),
    /// Not tried: an earlier command of a batch that stops at its first failure failed.
    Skipped,
}

impl DriverOutcome {
    /// Whether the command was carried out.
    pub fn is_ok(&self) -> bool {
        !matches!(self, DriverOutcome::Failed(_) | DriverOutcome::Skipped)
    }
}

/// Carries out one command.
pub fn execute(link: &mut dyn DriverLink, command: DriverCommand) -> DriverOutcome {
    let done = |r: Result<(), DriverError>| match r {
        Ok(()) => DriverOutcome::Done,
        Err(e) => DriverOutcome::Failed(e),
    };
    match command {
        DriverCommand::CreateQueue {
            queue,
            config,
            instance,
        } => match link.create_queue(queue, config, instance) {
            Ok(q) => DriverOutcome::Queue(q),
            Err(e) => DriverOutcome::Failed(e),
        },
        DriverCommand::DestroyQueue { queue } => done(link.destroy_queue(queue)),
        DriverCommand::ResizeQueue { queue, config } => match link.resize_queue(queue, config) {
            Ok(q) => DriverOutcome::Queue(q),
            Err(e) => DriverOutcome::Failed(e),
        },
        DriverCommand::InstallFilter(spec) => done(link.install_filter(&spec)),
        DriverCommand::InstallFilters(specs) => done(link.install_filters(&specs)),
        DriverCommand::RemoveFilter { queue, filter } => done(link.remove_filter(queue, filter)),
        DriverCommand::RemoveFilters { queue, filters } => {
            done(link.remove_filters(queue, &filters))
        }
        DriverCommand::Stats => match link.stats() {
            Ok(stats) => DriverOutcome::Stats(stats),
            Err(e) => DriverOutcome::Failed(e),
        },
        DriverCommand::StatsOf(queues) => match link.stats_of(&queues) {
            Ok(stats) => DriverOutcome::Stats(stats),
            Err(e) => DriverOutcome::Failed(e),
        },
        DriverCommand::SetNetdQueue { queue } => done(link.set_netd_queue(queue)),
        DriverCommand::SetHostAddresses { ipv4 } => done(link.set_host_addresses(ipv4)),
        DriverCommand::SetInstance(info) => done(link.set_instance(info)),
        DriverCommand::RemoveInstance { instance } => done(link.remove_instance(instance)),
        DriverCommand::Operator(request) => match link.operator(request) {
            Ok(reply) => DriverOutcome::Operator(reply),
            Err(e) => DriverOutcome::Failed(e),
        },
        DriverCommand::Overlay(request) => match link.overlay(request) {
            Ok(DriverReply::Done) => DriverOutcome::Done,
            Ok(reply) => DriverOutcome::Reply(reply),
            Err(e) => DriverOutcome::Failed(e),
        },
    }
}

/// Carries out `commands` in order, one outcome each; with `stop_at_first_failure`, the
/// commands after a failure are [`DriverOutcome::Skipped`].
pub fn run(
    link: &mut dyn DriverLink,
    commands: Vec<DriverCommand>,
    stop_at_first_failure: bool,
) -> Vec<DriverOutcome> {
    let mut failed = false;
    commands
        .into_iter()
        .map(|c| {
            if failed && stop_at_first_failure {
                return DriverOutcome::Skipped;
            }
            let outcome = execute(link, c);
            failed |= !outcome.is_ok();
            outcome
        })
        .collect()
}

/// One request a [`Recorder`] passed on, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A queue was created.
    CreateQueue(QueueId),
    /// A queue was destroyed.
    DestroyQueue(QueueId),
    /// A queue got new rings.
    ResizeQueue(QueueId),
    /// A filter was installed.
    Install(FilterSpec),
    /// A filter was removed.
    Remove(QueueId, FilterId),
    /// netd named its own queue.
    SetNetdQueue(QueueId),
    /// netd named the host's IPv4 addresses.
    SetHostAddresses(Vec<[u8; 4]>),
    /// An instance was created or updated.
    SetInstance(InstanceInfo),
    /// An instance was removed.
    RemoveInstance(InstanceId),
}

#[derive(Debug, Default)]
struct RecorderState {
    events: Vec<Recorded>,
    refuse_installs: bool,
}

/// Wraps a driver link and records every request it carried out, in order; it can also be
/// told to refuse installs (to test netd's rollback). Clones share one link and one record.
#[derive(Debug)]
pub struct Recorder<L> {
    inner: Arc<Mutex<L>>,
    state: Arc<Mutex<RecorderState>>,
}

impl<L> Clone for Recorder<L> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            state: Arc::clone(&self.state),
        }
    }
}

impl<L: DriverLink> Recorder<L> {
    /// Records what passes through to `link`.
    pub fn new(link: L) -> Self {
        Self {
            inner: Arc::new(Mutex::new(link)),
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self) -> std::sync::MutexGuard<'_, L> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request carried out so far, in order.
    pub fn events(&self) -> Vec<Recorded> {
        self.state().events.clone()
    }

    /// The filters installed and not removed, in install order.
    pub fn filters(&self) -> Vec<FilterSpec> {
        let mut live: Vec<FilterSpec> = Vec::new();
        for e in self.state().events.iter() {
            match e {
                Recorded::Install(spec) => live.push(spec.clone()),
                Recorded::Remove(_, f) => live.retain(|s| s.filter != *f),
                Recorded::DestroyQueue(q) => live.retain(|s| s.queue != *q),
                _ => {}
            }
        }
        live
    }

    /// The queues created and not destroyed, ascending.
    pub fn queues(&self) -> Vec<QueueId> {
        let mut live = std::collections::BTreeSet::new();
        for e in self.state().events.iter() {
            match e {
                Recorded::CreateQueue(q) => {
                    live.insert(*q);
                }
                Recorded::DestroyQueue(q) => {
                    live.remove(q);
                }
                _ => {}
            }
        }
        live.into_iter().collect()
    }

    /// From now on, refuses (`true`) or passes on (`false`) every filter install.
    pub fn refuse_installs(&self, refuse: bool) {
        self.state().refuse_installs = refuse;
    }

    fn record<T>(&self, r: Result<T, DriverError>, event: Recorded) -> Result<T, DriverError> {
        if r.is_ok() {
            self.state().events.push(event);
        }
        r
    }
}

impl<L: DriverLink> DriverLink for Recorder<L> {
    fn link_info(&self) -> LinkInfo {
        self.link().link_info()
    }
    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        instance: InstanceId,
    ) -> Result<CreatedQueue, DriverError> {
        let r = self.link().create_queue(queue, config, instance);
        self.record(r, Recorded::CreateQueue(queue))
    }
    fn set_instance(&mut self, info: InstanceInfo) -> Result<(), DriverError> {
        let r = self.link().set_instance(info.clone());
        self.record(r, Recorded::SetInstance(info))
    }
    fn remove_instance(&mut self, instance: InstanceId) -> Result<(), DriverError> {
        let r = self.link().remove_instance(instance);
        self.record(r, Recorded::RemoveInstance(instance))
    }
    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        let r = self.link().destroy_queue(queue);
        self.record(r, Recorded::DestroyQueue(queue))
    }
    fn resize_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
    ) -> Result<CreatedQueue, DriverError> {
        let r = self.link().resize_queue(queue, config);
        self.record(r, Recorded::ResizeQueue(queue))
    }
    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError> {
        if self.state().refuse_installs {
            return Err(DriverError::Refused(ErrorReply {
                code: netmux_proto::ErrorCode::Limit,
                message: "the recorder refuses installs".into(),
            }));
        }
        let r = self.link().install_filter(spec);
        self.record(r, Recorded::Install(spec.clone()))
    }
    fn install_filters(&mut self, specs: &[FilterSpec]) -> Result<(), DriverError> {
        if self.state().refuse_installs {
            return Err(DriverError::Refused(ErrorReply {
                code: netmux_proto::ErrorCode::Limit,
                message: "the recorder refuses installs".into(),
            }));
        }
        let r = self.link().install_filters(specs);
        if r.is_ok() {
            let mut state = self.state();
            state
                .events
                .extend(specs.iter().cloned().map(Recorded::Install));
        }
        r
    }
    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError> {
        let r = self.link().remove_filter(queue, filter);
        self.record(r, Recorded::Remove(queue, filter))
    }
    /// Recorded as one removal each when the batch succeeds; a failed batch is not recorded
    /// (which of its filters the driver removed is not known).
    fn remove_filters(&mut self, queue: QueueId, filters: &[FilterId]) -> Result<(), DriverError> {
        let r = self.link().remove_filters(queue, filters);
        if r.is_ok() {
            let mut state = self.state();
            state
                .events
                .extend(filters.iter().map(|&f| Recorded::Remove(queue, f)));
        }
        r
    }
    fn stats(&mut self) -> Result<DriverStats, DriverError> {
        self.link().stats()
    }
    fn stats_of(&mut self, queues: &[QueueId]) -> Result<DriverStats, DriverError> {
        self.link().stats_of(queues)
    }
    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        let r = self.link().set_netd_queue(queue);
        self.record(r, Recorded::SetNetdQueue(queue))
    }
    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError> {
        let r = self.link().set_host_addresses(ipv4.clone());
        self.record(r, Recorded::SetHostAddresses(ipv4))
    }
    fn gone(&mut self) -> Option<String> {
        self.link().gone()
    }
    fn operator(&mut self, request: OperatorRequest) -> Result<OperatorReply, DriverError> {
        self.link().operator(request)
    }

    fn overlay(&mut self, request: DriverRequest) -> Result<DriverReply, DriverError> {
        self.link().overlay(request)
    }
}

/// How long netd waits for the driver's reply to one request before it declares the driver
/// gone: the driver answers a local round trip in microseconds, so seconds mean it is stuck.
pub const DEFAULT_DRIVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The real driver, over its control socket. A reply that does not come within the timeout
/// ends the connection: the request may or may not have been carried out, and a late reply
/// would answer the wrong request, so every later call fails with [`DriverError::Gone`].
#[derive(Debug)]
pub struct ChannelDriver {
    channel: Channel,
    link: LinkInfo,
    /// How long one reply may take.
    timeout: Duration,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

impl ChannelDriver {
    /// Connects to the driver's control socket and says hello, with
    /// [`DEFAULT_DRIVER_TIMEOUT`] for every reply.
    pub fn connect(path: &Path) -> Result<ChannelDriver, DriverError> {
        ChannelDriver::connect_with_timeout(path, DEFAULT_DRIVER_TIMEOUT)
    }

    /// The same, waiting at most `timeout` for each reply.
    pub fn connect_with_timeout(
        path: &Path,
        timeout: Duration,
    ) -> Result<ChannelDriver, DriverError> {
        let sock = UnixStream::connect(path)
            .map_err(|e| DriverError::Gone(format!("connecting to {}: {e}", path.display())))?;
        ChannelDriver::over_with_timeout(sock, timeout)
    }

    /// Says hello over an already connected socket (a child driver's socketpair end), with
    /// [`DEFAULT_DRIVER_TIMEOUT`] for every reply.
    pub fn over(sock: UnixStream) -> Result<ChannelDriver, DriverError> {
        ChannelDriver::over_with_timeout(sock, DEFAULT_DRIVER_TIMEOUT)
    }

    /// The same, waiting at most `timeout` for each reply.
    pub fn over_with_timeout(
        sock: UnixStream,
        timeout: Duration,
    ) -> Result<ChannelDriver, DriverError> {
        let mut channel = Channel::new(sock);
        let (reply, _) = round_trip(
            &mut channel,
            &DriverRequest::Hello {
                version: PROTOCOL_VERSION,
            },
            timeout,
        )?;
        match reply {
            DriverReply::Hello { version, link } if version == PROTOCOL_VERSION => {
                Ok(ChannelDriver {
                    channel,
                    link,
                    timeout,
                    broken: None,
                })
            }
            DriverReply::Hello { version, .. } => Err(DriverError::Gone(format!(
                "driver speaks protocol {version}, netd {PROTOCOL_VERSION}"
            ))),
            other => Err(unexpected(other)),
        }
    }

    fn request(&mut self, request: &DriverRequest) -> Result<(), DriverError> {
        match self.call(request)?.0 {
            DriverReply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// One round trip; a failed one breaks the connection for good.
    fn call(
        &mut self,
        request: &DriverRequest,
    ) -> Result<(DriverReply, Vec<OwnedFd>), DriverError> {
        if let Some(why) = &self.broken {
            return Err(DriverError::Gone(why.clone()));
        }
        round_trip(&mut self.channel, request, self.timeout).inspect_err(|e| {
            if let DriverError::Gone(why) = e {
                self.broken = Some(why.clone());
            }
        })
    }
}

fn unexpected(reply: DriverReply) -> DriverError {
    match reply {
        DriverReply::Error(e) => DriverError::Refused(e),
        other => DriverError::Gone(format!("unexpected reply {other:?}")),
    }
}

/// The counters in a `Stats` reply.
fn stats_reply(reply: DriverReply) -> Result<DriverStats, DriverError> {
    match reply {
        DriverReply::Stats {
            link,
            queues,
            instances,
        } => Ok(DriverStats {
            link,
            queues,
            instances,
        }),
        other => Err(unexpected(other)),
    }
}

/// The queue in a `QueueCreated` reply and its two descriptors.
fn created_queue((reply, fds): (DriverReply, Vec<OwnedFd>)) -> Result<CreatedQueue, DriverError> {
    match reply {
        DriverReply::QueueCreated { ring_bytes, .. } => {
            let [memfd, doorbell]: [OwnedFd; 2] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
                DriverError::Gone(format!("queue came with {} descriptors, not 2", fds.len()))
            })?;
            Ok(CreatedQueue {
                ring_bytes,
                memfd,
                doorbell,
            })
        }
        other => Err(unexpected(other)),
    }
}

fn round_trip(
    channel: &mut Channel,
    request: &DriverRequest,
    timeout: Duration,
) -> Result<(DriverReply, Vec<OwnedFd>), DriverError> {
    let gone = |e: netmux_proto::channel::ChannelError| match e {
        netmux_proto::channel::ChannelError::TimedOut(t) => DriverError::Gone(format!(
            "the driver did not answer within {:.1} s",
            t.as_secs_f64()
        )),
        e => DriverError::Gone(e.to_string()),
    };
    channel
        .send_within(request, &[], Some(timeout))
        .map_err(gone)?;
    channel
        .recv_within::<DriverReply>(Some(timeout))
        .map_err(gone)
}

impl DriverLink for ChannelDriver {
    fn link_info(&self) -> LinkInfo {
        self.link
    }

    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        instance: InstanceId,
    ) -> Result<CreatedQueue, DriverError> {
        let answer = self.call(&DriverRequest::CreateQueue {
            queue,
            config,
            instance,
        })?;
        created_queue(answer)
    }

    fn resize_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
    ) -> Result<CreatedQueue, DriverError> {
        let answer = self.call(&DriverRequest::SetQueueConfig { queue, config })?;
        created_queue(answer)
    }

    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        self.request(&DriverRequest::DestroyQueue { queue })
    }

    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError> {
        self.request(&DriverRequest::InstallFilter(spec.install()))
    }

    fn install_filters(&mut self, specs: &[FilterSpec]) -> Result<(), DriverError> {
        let filters = specs.iter().map(FilterSpec::install).collect();
        self.request(&DriverRequest::InstallFilters { filters })
    }

    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError> {
        self.request(&DriverRequest::RemoveFilter { queue, filter })
    }

    fn remove_filters(&mut self, queue: QueueId, filters: &[FilterId]) -> Result<(), DriverError> {
        self.request(&DriverRequest::RemoveFilters {
            queue,
            filters: filters.to_vec(),
        })
    }

    fn stats(&mut self) -> Result<DriverStats, DriverError> {
        stats_reply(self.call(&DriverRequest::Stats)?.0)
    }

    fn stats_of(&mut self, queues: &[QueueId]) -> Result<DriverStats, DriverError> {
        let request = DriverRequest::StatsOf {
            queues: queues.to_vec(),
        };
        stats_reply(self.call(&request)?.0)
    }

    fn set_instance(&mut self, info: InstanceInfo) -> Result<(), DriverError> {
        self.request(&DriverRequest::SetInstance(info))
    }

    fn remove_instance(&mut self, instance: InstanceId) -> Result<(), DriverError> {
        self.request(&DriverRequest::RemoveInstance { instance })
    }

    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        self.request(&DriverRequest::SetNetdQueue { queue })
    }

    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError> {
        self.request(&DriverRequest::SetHostAddresses { ipv4 })
    }

    fn operator(&mut self, request: OperatorRequest) -> Result<OperatorReply, DriverError> {
        match self.call(&DriverRequest::Operator(request))?.0 {
            DriverReply::Operator(reply) => Ok(reply),
            other => Err(unexpected(other)),
        }
    }

    fn overlay(&mut self, request: DriverRequest) -> Result<DriverReply, DriverError> {
        match self.call(&request)?.0 {
            DriverReply::Error(e) => Err(DriverError::Refused(e)),
            reply @ (DriverReply::Done | DriverReply::OverlayPoll(_)) => Ok(reply),
            other => Err(unexpected(other)),
        }
    }

    /// Between requests the driver sends nothing, so a readable or hung-up control socket means
    /// it closed the connection (it died or dropped netd).
    fn gone(&mut self) -> Option<String> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if let Some(why) = &self.broken {
            return Some(why.clone());
        }
        let mut fds = [PollFd::new(self.channel.socket(), PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) => None,
            Ok(_) => {
                let events = fds[0].revents();
                if events.intersects(PollFlags::HUP | PollFlags::ERR) {
                    Some("the driver closed its control connection".into())
                } else {
                    Some("the driver sent a message nobody asked for".into())
                }
            }
            Err(rustix::io::Errno::INTR) => None,
            Err(e) => Some(format!("polling the driver's control socket: {e}")),
        }
    }
}

/// The driver's binary, which netd starts for `--link`.
pub const DRIVER_BINARY: &str = "netmux-driver";
/// How long netd waits for a driver it started to open its control socket.
pub const DRIVER_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A driver netd started as its child; killed when dropped (it fails closed on its own when
/// netd's connection goes, this only makes sure it does not outlive netd).
#[derive(Debug)]
pub struct ChildDriver {
    child: std::process::Child,
}

/// How often [`ChildDriver::stop`] looks whether the driver has exited.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl ChildDriver {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the driver ended, if it has, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Stops the driver: SIGTERM to its pid, then SIGKILL if it has not exited within `grace`.
    /// Returns how it ended.
    pub fn stop(mut self, grace: std::time::Duration) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // Already gone between the check and the signal: the wait below reaps it.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(STOP_POLL);
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for ChildDriver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The driver binary: next to the running executable if there, else found on `PATH`.
pub fn driver_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(DRIVER_BINARY)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| DRIVER_BINARY.into())
}

/// Starts `binary --link SPEC --control CONTROL --exit-on-disconnect` and connects to it.
/// `control` should be inside a directory only netd's user may enter
/// ([`crate::server::private_dir`]); a stale socket there is removed first.
pub fn start_driver(
    binary: &Path,
    spec: &str,
    control: &Path,
) -> Result<(ChildDriver, ChannelDriver), DriverError> {
    start_driver_command(
        std::process::Command::new(binary),
        spec,
        control,
        DEFAULT_DRIVER_TIMEOUT,
    )
}

/// [`start_driver`] with any command that runs the driver's command line (`netmux driver`
/// re-executed, say): `--link SPEC --control CONTROL --exit-on-disconnect` are appended to it.
pub fn start_driver_command(
    mut command: std::process::Command,
    spec: &str,
    control: &Path,
    timeout: Duration,
) -> Result<(ChildDriver, ChannelDriver), DriverError> {
    if control.exists() {
        // A driver answering there belongs to a netd that runs with this runtime directory:
        // refuse before anything is touched, rather than take its socket away from it.
        if UnixStream::connect(control).is_ok() {
            return Err(DriverError::Refused(ErrorReply {
                code: netmux_proto::ErrorCode::InUse,
                message: format!(
                    "a driver is already listening on {}: a netd runs with this runtime \
                     directory; stop it first or choose another --runtime-dir",
                    control.display()
                ),
            }));
        }
        // What a driver that ended left behind.
        std::fs::remove_file(control)
            .map_err(|e| DriverError::Gone(format!("removing {}: {e}", control.display())))?;
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .arg("--link")
        .arg(spec)
        .arg("--control")
        .arg(control)
        .arg("--exit-on-disconnect")
        .spawn()
        .map_err(|e| DriverError::Gone(format!("starting {program}: {e}")))?;
    let mut child = ChildDriver { child };
    let start = std::time::Instant::now();
    loop {
        if let Ok(sock) = UnixStream::connect(control) {
            let link = ChannelDriver::over_with_timeout(sock, timeout)?;
            return Ok((child, link));
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            return Err(DriverError::Gone(format!("the driver exited: {status}")));
        }
        if start.elapsed() > DRIVER_START_TIMEOUT {
            return Err(DriverError::Gone(format!(
                "the driver did not open {} within {:?}",
                control.display(),
                DRIVER_START_TIMEOUT
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
