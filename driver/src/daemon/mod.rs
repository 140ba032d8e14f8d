//! The driver process's engine: the receive path, the transmit path, the state netd controls,
//! and the statistics. [`control`] puts it behind the control socket; `netmux-driver` and
//! `netmux up` run that on a thread or as the whole process.
//!
//! # Receive path ([`Driver::poll_rx`])
//!
//! The link receives a batch into driver-private buffers; each frame goes through the
//! reassembler (fragments are held until their datagram is whole), then:
//!
//! - an ARP reply, or an ARP request for one of the host addresses
//!   ([`DriverRequest::SetHostAddresses`]), goes to **every** queue exactly once, netd's
//!   included, without classification;
//! - every other frame goes to the queues the classifier names; an ICMP or ICMPv6 error none
//!   names goes to the queue granted the flow it quotes ([`icmp_errors`]); anything else to
//!   netd's queue ([`DriverRequest::SetNetdQueue`]).
//!
//! The frame is copied into the rx ring of each receiving queue; a full ring drops it for that
//! queue only (counted there). Each touched ring is published once per batch.
//!
//! # Transmit path ([`Driver::poll_tx`])
//!
//! Each queue's tx ring is drained in batches of at most [`DriverConfig::tx_batch`] frames,
//! copied into driver-private memory by the ring ([`DriverQueue::take_tx`]); the check of
//! [`tx::check`] runs on that copy, and exactly that copy goes on the wire. Every frame taken
//! gets a completion: sent, rejected with its reason, or a link error. Tap queues then observe
//! what was sent (never their own transmissions). IPv4 and IPv6 fragments are held, without
//! a completion, until their datagram is whole; the check then runs on the whole datagram and
//! its fragments go out all or none ([`tx_fragments`]).
//!
//! # The link going down, coming back, vanishing
//!
//! The driver keeps the link's [`LinkState`] as last reported ([`Driver::refresh_link`] asks
//! the link to look again; the control loop calls it on the link's events and at least every
//! [`crate::link::LINK_CHECK_INTERVAL`]) and logs each change once, with its reason. While the
//! link is not up nothing is received, every queue and session stays, and every frame a client
//! transmits is still checked, then completed with [`TxStatus::LinkDown`] instead of being
//! sent. The link's state is in its counters ([`Counters::link_state`]), which netd shows.
//! [`Driver::link_gone_for`] says how long the link has been gone; the control loop ends the
//! driver when that passes its link timeout.
//!
//! # Failing closed
//!
//! [`Driver::fail_closed`] stops every queue, marks it closed in its ring header (clients see
//! it and are woken) and forgets all queues and filters; the control layer calls it when netd
//! goes away.

pub mod capture;
pub mod control;
pub mod firewall;
pub mod icmp_errors;
pub mod idle;
pub mod instances;
mod mac_index;
mod ops;
pub mod overlay;
pub mod tx;
pub mod tx_fragments;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use netmux_proto::driver::{
    Counters, Direction, DriverReply, DriverRequest, FilterId, FilterInstall, InstanceId,
    QueueConfig, QueueId,
};
use netmux_proto::ops::{CaptureSource, FrameDirection, RuleDirection};
use netmux_proto::{ErrorCode, ErrorReply};
use netmux_vm::{Scratch, Strategy};

use crate::link::{FrameBatch, Link, LinkState, LinkStats};
use crate::reassembly::{self, DropReason, Outcome, Reassembler};
use instances::{Instances, Route, Slot, Target};
pub use netmux_classify::{Classifier, ClassifierError, Classify, LinearScan, RxFilter};
use netmux_ring::{DriverQueue, QueueFds, RxOutcome, TxStatus};
use tx::{TxFilter, TxFilters};

/// Frames taken from the link per receive batch: enough to amortise the per-batch ring
/// publication, small enough that a batch stays in the L1/L2 cache.
pub const DEFAULT_RX_BATCH: usize = 64;
/// Frames taken from one queue's tx ring per turn: bounds how long one busy client can hold
/// the transmit path before the next queue's turn.
pub const DEFAULT_TX_BATCH: usize = 32;
/// Queues one driver serves: room for ten thousand clients and more. An idle queue
/// costs the transmit path nothing (it is parked, see [`idle`]), so the bound is memory and
/// descriptors: each queue holds its ring memory (from about 300 KiB with small rings) and an
/// fd triple, so 16,384 queues need a descriptor limit above 49,152; netd's limits are lower.
pub const MAX_QUEUES: usize = 16_384;
/// Filters one driver holds (rx and tx together, a port's tx grant included): bounds classifier
/// memory and scan time. Room for 100,000 bound ports with their broadcast keys.
pub const MAX_FILTERS: usize = 1 << 20;
/// Host addresses netd may announce.
pub const MAX_HOST_ADDRESSES: usize = 256;
/// An Ethernet header with one 802.1Q tag: what a frame may carry besides the MTU's bytes.
const ETHERNET_VLAN_HEADER_LEN: usize = 18;
/// Times a busy link is offered the same frames again within one turn before the driver holds
/// them for the queue's next turn; the driver never blocks on the link.
const LINK_BUSY_RETRIES: usize = 2;

/// Settings of a [`Driver`].
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Engine for the filters (the JIT when compiled in, with [`Strategy::Auto`]).
    pub strategy: Strategy,
    /// Reassembly limits.
    pub reassembly: reassembly::Config,
    /// Frames per receive batch.
    pub rx_batch: usize,
    /// Frames per queue per transmit turn.
    pub tx_batch: usize,
    /// Which classifier decides the receiving queues.
    pub classifier: ClassifierKind,
    /// How long the link may be gone before the driver gives up on it (the control loop's
    /// business; see [`Driver::link_gone_for`]).
    pub link_timeout: Duration,
}

/// How long a vanished link may stay away by default before the driver ends: long enough for
/// a container or VM that owns the interface to restart, short enough that a link deleted for
/// good is reported while someone still looks.
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// Which classifier a [`Driver`] made with [`Driver::new`] uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClassifierKind {
    /// [`Classifier`]: one hash lookup for every port binding (the default).
    #[default]
    Merged,
    /// [`LinearScan`]: every filter in turn (the reference; for comparisons).
    Linear,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Auto,
            reassembly: reassembly::Config::default(),
            rx_batch: DEFAULT_RX_BATCH,
            tx_batch: DEFAULT_TX_BATCH,
            classifier: ClassifierKind::default(),
            link_timeout: DEFAULT_LINK_TIMEOUT,
        }
    }
}

/// Maps keyed by ids netd chose: FxHash, one multiplication per word. The ids come from netd,
/// which the driver trusts, so no hash flooding defence is needed.
type IdMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// The counter name of a transmit status (the ring crate's table).
pub fn tx_status_name(status: TxStatus) -> &'static str {
    status.name()
}

/// Counter index of a status; an unknown one (never produced by this driver) counts with the
/// last known status.
fn status_index(status: TxStatus) -> usize {
    status.index().unwrap_or(TxStatus::ALL.len() - 1)
}

/// Number of transmit status counters.
const TX_STATUS_COUNT: usize = TxStatus::ALL.len();

/// Counters of the transmit outcomes, indexed like [`TxStatus::ALL`].
#[derive(Debug, Default, Clone, Copy)]
struct TxOutcomes {
    count: [u64; TX_STATUS_COUNT],
    /// Bytes of the frames sent.
    sent_bytes: u64,
    /// Flow-control events on the link: times the link was busy and the queue's frames began
    /// to wait for it (counted once per event, however often they are offered meanwhile).
    link_busy: u64,
}

/// A frame a queue transmitted that passed every check, but that the link did not take (it
/// was busy). It is kept, in order, and offered again on the queue's next turn; the queue's
/// further frames wait in its ring meanwhile (flow control reaching the client), so a frame
/// accepted from a client is never dropped because the link was busy. At most one transmit
/// batch per queue is held.
#[derive(Debug)]
struct LinkHeld {
    /// The frame's sequence number (its completion's tag).
    tag: u64,
    frame: Vec<u8>,
    /// Whether captures and taps have seen it already (the fragments of a datagram are seen
    /// with their datagram when it is settled); otherwise they see it when the link takes it.
    seen: bool,
}

impl TxOutcomes {
    fn record(&mut self, status: TxStatus, len: usize) {
        self.count[status_index(status)] += 1;
        if status.is_sent() {
            self.sent_bytes += len as u64;
        }
    }

    fn rejected(&self) -> Vec<(String, u64)> {
        TxStatus::ALL
            .iter()
            .zip(self.count)
            .skip(1)
            .filter(|&(_, n)| n > 0)
            .map(|(&s, n)| (s.name().to_string(), n))
            .collect()
    }
}

/// One client queue as the driver holds it.
#[derive(Debug)]
struct Queue {
    ring: DriverQueue,
    /// Its instance's slot.
    instance: Slot,
    /// Its place in the transmit path's schedule ([`idle`]).
    sched: idle::QueueSched,
    /// Its instance's MAC: what a rejection's reason is checked against.
    mac: [u8; 6],
    /// The sizes netd asked for (kept for diagnostics; the ring's layout is authoritative).
    config: QueueConfig,
    /// Its transmit filters: port grants in a table, other filters as programs.
    tx_filters: TxFilters,
    /// IPv4 and IPv6 fragments it transmitted, held until their datagram is whole.
    fragments: tx_fragments::TxGatherer,
    /// Frames the busy link has not taken yet, oldest first.
    link_held: std::collections::VecDeque<LinkHeld>,
    tx: TxOutcomes,
    /// Received frames the admin firewall blocked for it.
    firewall_dropped: u64,
    /// Whether frames were written into its rx ring since the last flush (it is then listed
    /// in `Driver::touched`, to be published once per batch).
    touched: bool,
}

/// Driver-wide receive counters besides the link's own.
#[derive(Debug, Default, Clone, Copy)]
struct RxCounters {
    /// Frames that reached classification (after reassembly).
    classified: u64,
    /// ARP frames sent to every queue.
    arp_to_all: u64,
    /// Frames no filter accepted, sent to netd's queue.
    unmatched_to_netd: u64,
    /// Frames no filter accepted while netd has no queue: dropped.
    no_receiver: u64,
    /// Link receive errors.
    link_errors: u64,
    /// Frames one instance sent another on this host, delivered here.
    hairpin: u64,
    /// Whether the last receive failed (the next failure is counted, not logged again).
    failing: bool,
}

/// The link's state as the driver last reported it.
#[derive(Debug)]
struct LinkWatchState {
    state: LinkState,
    reason: Option<String>,
    /// When it entered that state.
    since: Instant,
    /// When the link was last asked to look again.
    checked: Instant,
    /// Changes of state since the driver started.
    changes: u64,
}

/// The reply to a request, and the descriptors that travel with it (a created queue's).
#[derive(Debug)]
pub struct Response {
    /// The reply.
    pub reply: DriverReply,
    /// Descriptors to send with it: the memfd and the client's end of the doorbell.
    pub fds: Option<QueueFds>,
}

impl Response {
    fn done() -> Self {
        Self::reply(DriverReply::Done)
    }
    fn reply(reply: DriverReply) -> Self {
        Self { reply, fds: None }
    }
    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::reply(DriverReply::Error(ErrorReply {
            code,
            message: message.into(),
        }))
    }
}

/// The driver's data path and the state netd controls. See the module documentation.
pub struct Driver {
    link: Box<dyn Link>,
    link_mac: [u8; 6],
    /// The longest frame the link carries: its MTU plus an Ethernet header and one VLAN tag.
    /// A client's longer frame is rejected as malformed.
    max_tx_len: usize,
    instances: Instances,
    reassembler: Reassembler,
    config: DriverConfig,
    queues: IdMap<QueueId, Queue>,
    /// Queue ids in creation order (the transmit path visits the active ones: [`idle`]).
    order: Vec<QueueId>,
    /// Which queues the transmit path visits ([`idle`]).
    sched: idle::Schedule,
    /// Which queue and direction each installed filter belongs to.
    filters: IdMap<FilterId, (QueueId, Direction)>,
    /// The multicast MAC of each rx filter whose binding is a multicast group (a client
    /// joined it): the link accepts these MACs while one such filter is installed.
    group_filters: IdMap<FilterId, [u8; 6]>,
    /// The multicast MACs the link was last asked to accept.
    link_groups: Vec<[u8; 6]>,
    netd_queue: Option<QueueId>,
    rx_batch: FrameBatch,
    tx_batch: FrameBatch,
    receivers: Vec<QueueId>,
    /// Instance slots (scratch, reused).
    dispatched: Vec<Slot>,
    touched: Vec<QueueId>,
    scratch: Scratch,
    rx: RxCounters,
    /// Transmit outcomes of every queue, past ones included.
    tx: TxOutcomes,
    link_state: LinkWatchState,
    clock: Instant,
    /// Passive captures (`netmux capture`).
    captures: capture::Captures,
    /// The admin firewall (`netmux firewall`).
    firewall: firewall::Firewall,
    /// Received frames the firewall blocked, for every queue past and present.
    firewall_dropped: u64,
    /// Overlays and their instances' VXLAN traffic.
    overlays: overlay::Overlays,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("link", self.link.info())
            .field("queues", &self.order)
            .field("filters", &self.filters.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver owning `link`, classifying with the classifier `config` names (by default the
    /// merged [`Classifier`]), its filters on `config.strategy`'s engines.
    pub fn new(link: Box<dyn Link>, config: DriverConfig) -> Self {
        let (kind, strategy, link_mac) = (config.classifier, config.strategy, link.info().mac);
        let make = move |mac: [u8; 6]| -> Box<dyn Classify> {
            match kind {
                ClassifierKind::Merged => Box::new(Classifier::for_link(strategy, mac)),
                ClassifierKind::Linear => Box::new(LinearScan::new(strategy)),
            }
        };
        let mut driver = Self::with_classifier(link, make(link_mac), Box::new(make), config);
        if kind == ClassifierKind::Merged {
            driver.instances.use_link_bindings(strategy);
        }
        driver
    }

    /// A driver owning `link`, classifying the default instance with `classifier` (empty) and
    /// every other instance with a classifier from `make_classifier`.
    pub fn with_classifier(
        link: Box<dyn Link>,
        classifier: Box<dyn Classify>,
        make_classifier: instances::MakeClassifier,
        config: DriverConfig,
    ) -> Self {
        let now = Instant::now();
        let link_state = LinkWatchState {
            state: link.state(),
            reason: link.state_reason(),
            since: now,
            checked: now,
            changes: 0,
        };
        if link_state.state != LinkState::Up {
            tracing::warn!(
                link = %link.info().spec,
                reason = link_state.reason.as_deref().unwrap_or(""),
                "link is {} at start; waiting for it",
                link_state.state
            );
        }
        Self {
            instances: Instances::new(link.info().mac, classifier, make_classifier),
            link_state,
            link_mac: link.info().mac,
            max_tx_len: usize::try_from(link.info().mtu)
                .unwrap_or(usize::MAX)
                .saturating_add(ETHERNET_VLAN_HEADER_LEN),
            link,
            reassembler: Reassembler::new(config.reassembly.clone()),
            config,
            queues: IdMap::default(),
            order: Vec::new(),
            sched: idle::Schedule::default(),
            filters: IdMap::default(),
            group_filters: IdMap::default(),
            link_groups: Vec::new(),
            netd_queue: None,
            rx_batch: FrameBatch::new(),
            tx_batch: FrameBatch::new(),
            receivers: Vec::new(),
            dispatched: Vec::new(),
            touched: Vec::new(),
            scratch: Scratch::default(),
            rx: RxCounters::default(),
            tx: TxOutcomes::default(),
            clock: now,
            captures: capture::Captures::default(),
            firewall: firewall::Firewall::default(),
            firewall_dropped: 0,
            overlays: overlay::Overlays::default(),
        }
    }

    /// The link's state as last reported.
    pub fn link_state(&self) -> LinkState {
        self.link_state.state
    }

    /// How many times the link's state changed since the driver started.
    pub fn link_state_changes(&self) -> u64 {
        self.link_state.changes
    }

    /// Asks the link to look at its state again (see [`Link::refresh`]) and logs a change.
    pub fn refresh_link(&mut self) {
        self.link.refresh();
        self.link_state.checked = Instant::now();
        self.note_link_state();
    }

    /// Refreshes the link if, at `now`, it has not been looked at for
    /// [`crate::link::LINK_CHECK_INTERVAL`] (or [`crate::link::LINK_RECHECK_WHILE_AWAY`]
    /// while it is not up).
    pub fn refresh_link_if_due(&mut self, now: Instant) {
        let every = if self.link_state.state == LinkState::Up {
            crate::link::LINK_CHECK_INTERVAL
        } else {
            crate::link::LINK_RECHECK_WHILE_AWAY
        };
        if now.saturating_duration_since(self.link_state.checked) >= every {
            self.refresh_link();
        }
    }

    /// How long the link may be gone before the driver gives up ([`DriverConfig::link_timeout`]).
    pub fn link_timeout(&self) -> Duration {
        self.config.link_timeout
    }

    /// How long the link has been gone, if it is.
    pub fn link_gone_for(&self) -> Option<Duration> {
        (self.link_state.state == LinkState::Gone).then(|| self.link_state.since.elapsed())
    }

    /// Why the link is in its state, as last reported.
    pub fn link_state_reason(&self) -> Option<&str> {
        self.link_state.reason.as_deref()
    }

    /// Takes the link's state as it reports it now, logging a change once.
    fn note_link_state(&mut self) {
        let state = self.link.state();
        let reason = self.link.state_reason();
        let watched = &mut self.link_state;
        if state == watched.state && reason == watched.reason {
            return;
        }
        let spec = &self.link.info().spec;
        let away = watched.since.elapsed();
        let why = reason.as_deref().unwrap_or("");
        match (watched.state, state) {
            (_, LinkState::Up) => {
                tracing::info!(link = %spec, after = ?away, "link is up again; resuming")
            }
            (from, LinkState::Down) if from != LinkState::Down => tracing::warn!(
                link = %spec,
                reason = why,
                "link is down; queues and sessions are kept, transmissions complete with link-down"
            ),
            (from, LinkState::Gone) if from != LinkState::Gone => tracing::warn!(
                link = %spec,
                reason = why,
                timeout = ?self.config.link_timeout,
                "link is gone; waiting for it to come back"
            ),
            // The same state for another reason (down, then also without carrier): not a change.
            (_, state) => tracing::debug!(link = %spec, reason = why, "link is still {state}"),
        }
        if state != watched.state {
            watched.since = Instant::now();
            watched.changes += 1;
        }
        watched.state = state;
        watched.reason = reason;
    }

    /// The link.
    pub fn link(&self) -> &dyn Link {
        self.link.as_ref()
    }

    /// The link's properties in the protocol's terms.
    pub fn link_info(&self) -> netmux_proto::LinkInfo {
        let info = self.link.info();
        netmux_proto::LinkInfo {
            mac: info.mac,
            mtu: u16::try_from(info.mtu).unwrap_or(u16::MAX),
        }
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.order.len()
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Carries out one request of netd. `Hello` belongs to the session ([`control`]) and is
    /// answered here only with the link's properties.
    pub fn handle(&mut self, request: DriverRequest) -> Response {
        match request {
            DriverRequest::Hello { .. } => Response::reply(DriverReply::Hello {
                version: netmux_proto::PROTOCOL_VERSION,
                link: self.link_info(),
            }),
            DriverRequest::CreateQueue {
                queue,
                config,
                instance,
            } => self.create_queue(queue, config, instance),
            DriverRequest::DestroyQueue { queue } => match self.destroy_queue(queue) {
                true => Response::done(),
                false => Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0)),
            },
            DriverRequest::InstallFilter(f) => self.install_filter(&f),
            DriverRequest::InstallFilters { filters } => self.install_filters(filters),
            DriverRequest::RemoveFilter { queue, filter } => self.remove_filter(queue, filter),
            DriverRequest::RemoveFilters { queue, filters } => self.remove_filters(queue, &filters),
            DriverRequest::SetQueueConfig { queue, config } => self.reconfigure(queue, config),
            DriverRequest::Stats => {
                let (link, queues) = self.stats();
                Response::reply(DriverReply::Stats {
                    link,
                    queues,
                    instances: self.instance_stats(),
                })
            }
            DriverRequest::StatsOf { queues } => {
                if queues.len() > netmux_proto::driver::MAX_STATS_QUEUES {
                    return Response::error(
                        ErrorCode::Limit,
                        format!(
                            "counters of at most {} queues at once, not {}",
                            netmux_proto::driver::MAX_STATS_QUEUES,
                            queues.len()
                        ),
                    );
                }
                let (link, queues) = self.stats_of(&queues);
                Response::reply(DriverReply::Stats {
                    link,
                    queues,
                    instances: self.instance_stats(),
                })
            }
            DriverRequest::SetNetdQueue { queue } => {
                if !self.queues.contains_key(&queue) {
                    return Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0));
                }
                self.netd_queue = Some(queue);
                Response::done()
            }
            DriverRequest::SetHostAddresses { ipv4 } => {
                if ipv4.len() > MAX_HOST_ADDRESSES {
                    return Response::error(
                        ErrorCode::Limit,
                        format!("at most {MAX_HOST_ADDRESSES} host addresses"),
                    );
                }
                let Some(default) = self.instances.get(0) else {
                    return Response::error(ErrorCode::Internal, "no default instance");
                };
                let info = netmux_proto::driver::InstanceInfo {
                    instance: default.id,
                    mac: default.mac,
                    own_mac: false,
                    ipv4,
                    ipv6: default.ipv6.clone(),
                    overlay: None,
                };
                self.set_instance(info)
            }
            DriverRequest::SetInstance(info) => {
                if info.ipv4.len() + info.ipv6.len() > MAX_HOST_ADDRESSES {
                    return Response::error(
                        ErrorCode::Limit,
                        format!("at most {MAX_HOST_ADDRESSES} addresses per instance"),
                    );
                }
                self.set_instance(info)
            }
            DriverRequest::Operator(request) => self.operator(request),
            DriverRequest::SetOverlay(_)
            | DriverRequest::RemoveOverlay { .. }
            | DriverRequest::SetOverlayMappings(_)
            | DriverRequest::OverlayPoll => self.handle_overlay(request),
            DriverRequest::RemoveInstance { instance } => {
                let slot = self.instances.slot(instance);
                match self.instances.remove(instance) {
                    Ok(()) => {
                        if let Some(slot) = slot {
                            self.detach_overlay_instance(slot);
                        }
                        self.update_link_macs();
                        Response::done()
                    }
                    Err(e) => Response::error(ErrorCode::NotFound, e),
                }
            }
        }
    }

    fn set_instance(&mut self, info: netmux_proto::driver::InstanceInfo) -> Response {
        let id = info.instance;
        if let Err(e) = self.check_overlay_instance(&info) {
            return Response::error(ErrorCode::NotFound, e);
        }
        match self.instances.set(info) {
            Ok(slot) => {
                self.attach_overlay_instance(slot);
                if slot == 0 {
                    self.set_underlay_source();
                }
                let mac = self.instances.get(slot).map_or(self.link_mac, |i| i.mac);
                for q in self.queues.values_mut().filter(|q| q.instance == slot) {
                    q.mac = mac;
                }
                self.update_link_macs();
                tracing::debug!(instance = id.0, "instance set");
                Response::done()
            }
            Err(e) => Response::error(ErrorCode::InUse, e),
        }
    }

    /// Tells the link which MACs besides its own it must accept (the own-MAC instances').
    fn update_link_macs(&mut self) {
        if let Err(e) = self.link.set_unicast_macs(&self.instances.own_macs()) {
            tracing::warn!("the link cannot accept the instances' MACs: {e}");
        }
    }

    /// Counters of every instance.
    pub fn instance_stats(&self) -> Vec<(InstanceId, Counters)> {
        self.instances
            .iter()
            .map(|i| (i.id, i.counters.to_counters()))
            .collect()
    }

    fn create_queue(&mut self, id: QueueId, config: QueueConfig, instance: InstanceId) -> Response {
        let Some(slot) = self.instances.slot(instance) else {
            return Response::error(ErrorCode::NotFound, format!("no instance {}", instance.0));
        };
        if self.queues.contains_key(&id) {
            return Response::error(ErrorCode::InUse, format!("queue {} exists", id.0));
        }
        if self.queues.len() >= MAX_QUEUES {
            return Response::error(ErrorCode::Limit, format!("at most {MAX_QUEUES} queues"));
        }
        let (ring, fds) = match make_ring(&config) {
            Ok(made) => made,
            Err((code, message)) => return Response::error(code, message),
        };
        let ring_bytes = ring.layout().total_len;
        self.queues.insert(
            id,
            Queue {
                ring,
                instance: slot,
                sched: idle::QueueSched::default(),
                mac: self.instances.get(slot).map_or(self.link_mac, |i| i.mac),
                config,
                tx_filters: TxFilters::default(),
                fragments: tx_fragments::TxGatherer::default(),
                tx: TxOutcomes::default(),
                firewall_dropped: 0,
                link_held: std::collections::VecDeque::new(),
                touched: false,
            },
        );
        if let Err(e) = self.schedule_queue(id) {
            self.queues.remove(&id);
            return Response::error(ErrorCode::Internal, format!("queue wake-up: {e}"));
        }
        self.order.push(id);
        if let Some(i) = self.instances.get_mut(slot) {
            i.queues.push(id);
        }
        Response {
            reply: DriverReply::QueueCreated {
                queue: id,
                ring_bytes,
            },
            fds: Some(fds),
        }
    }

    /// Re-creates a queue's rings with new sizes; its filters stay. The old rings are closed
    /// (the client sees its queue end) and the reply carries the new descriptors.
    fn reconfigure(&mut self, id: QueueId, config: QueueConfig) -> Response {
        let Some(queue) = self.queues.get_mut(&id) else {
            return Response::error(ErrorCode::NotFound, format!("no queue {}", id.0));
        };
        let (ring, fds) = match make_ring(&config) {
            Ok(made) => made,
            Err((code, message)) => return Response::error(code, message),
        };
        let ring_bytes = ring.layout().total_len;
        self.sched
            .unregister(&mut queue.sched, queue.ring.driver_wake_fd());
        let mut old = std::mem::replace(&mut queue.ring, ring);
        queue.ring.set_rx_limit(old.rx_limit());
        old.close();
        queue.config = config;
        if let Err(e) = self.schedule_queue(id) {
            // Not visited until it is re-created; the client's queue ends with the error.
            tracing::warn!(queue = id.0, "queue wake-up: {e}");
            if let Some(queue) = self.queues.get_mut(&id) {
                queue.ring.close();
            }
            return Response::error(ErrorCode::Internal, format!("queue wake-up: {e}"));
        }
        Response {
            reply: DriverReply::QueueCreated {
                queue: id,
                ring_bytes,
            },
            fds: Some(fds),
        }
    }

    /// Stops and frees a queue and its filters. Returns whether it existed.
    pub fn destroy_queue(&mut self, id: QueueId) -> bool {
        let Some(mut queue) = self.queues.remove(&id) else {
            return false;
        };
        queue.ring.close();
        self.sched
            .unregister(&mut queue.sched, queue.ring.driver_wake_fd());
        let mut rx_filters = Vec::new();
        self.filters.retain(|&f, &mut (q, direction)| {
            if q == id && direction == Direction::Rx {
                rx_filters.push(f);
            }
            q != id
        });
        self.instances.remove_queue(queue.instance, id, &rx_filters);
        if let Some(i) = self.instances.get_mut(queue.instance) {
            i.queues.retain(|&q| q != id);
        }
        if !self.group_filters.is_empty() {
            let filters = &self.filters;
            self.group_filters.retain(|f, _| filters.contains_key(f));
            self.update_link_groups();
        }
        if !self.captures.is_empty() {
            for capture in self.captures.queue_gone(id) {
                if let Some(q) = self.queues.get_mut(&capture) {
                    q.ring.close();
                }
            }
        }
        self.order.retain(|&q| q != id);
        self.touched.retain(|&q| q != id);
        if self.netd_queue == Some(id) {
            self.netd_queue = None;
        }
        true
    }

    fn install_filter(&mut self, f: &FilterInstall) -> Response {
        let FilterInstall {
            queue,
            filter,
            direction,
            mode,
            binding,
            ref program,
        } = *f;
        if !self.queues.contains_key(&queue) {
            return Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0));
        }
        if self.filters.contains_key(&filter) {
            return Response::error(ErrorCode::InUse, format!("filter {} exists", filter.0));
        }
        if self.filters.len() >= MAX_FILTERS {
            return Response::error(ErrorCode::Limit, format!("at most {MAX_FILTERS} filters"));
        }
        // A port's transmit grant comes without a program: it is an entry in the queue's
        // grant table (see `tx`), checked by one lookup per frame.
        if let (Direction::Tx, Some(binding), true) = (direction, binding, program.is_empty()) {
            let Some(q) = self.queues.get_mut(&queue) else {
                return Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0));
            };
            q.tx_filters.grant(filter, binding);
            self.filters.insert(filter, (queue, direction));
            return Response::done();
        }
        // The driver trusts netd, but not the bytes: only a verified program ever runs.
        let program = match netmux_vm::verify(program) {
            Ok(p) => p,
            Err(e) => return Response::error(ErrorCode::BadFilter, format!("rejected: {e}")),
        };
        let Some(slot) = self.queues.get(&queue).map(|q| q.instance) else {
            return Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0));
        };
        match direction {
            Direction::Rx => {
                if self.instances.get(slot).is_none() {
                    return Response::error(ErrorCode::Internal, "the queue's instance is gone");
                }
                let installed = self.instances.install_filter(
                    slot,
                    RxFilter {
                        queue,
                        filter,
                        mode,
                        binding,
                        program,
                    },
                );
                if let Err(e) = installed {
                    let code = match e {
                        ClassifierError::BindingInUse(_)
                        | ClassifierError::ExclusiveHeld(_)
                        | ClassifierError::BindingsExist
                        | ClassifierError::DuplicateFilter(_) => ErrorCode::InUse,
                        ClassifierError::NotFound(..) => ErrorCode::NotFound,
                        ClassifierError::Engine(_) => ErrorCode::BadFilter,
                        ClassifierError::TablesFull => ErrorCode::Limit,
                    };
                    return Response::error(code, e.to_string());
                }
            }
            Direction::Tx => {
                let engine = match netmux_vm::engine(program, self.config.strategy) {
                    Ok(e) => e,
                    Err(e) => return Response::error(ErrorCode::BadFilter, e.to_string()),
                };
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.tx_filters.push(TxFilter {
                        filter,
                        binding,
                        engine,
                    });
                }
            }
        }
        self.filters.insert(filter, (queue, direction));
        if let (Direction::Rx, Some(mac)) = (direction, binding.as_ref().and_then(group_mac)) {
            self.group_filters.insert(filter, mac);
            self.update_link_groups();
        }
        Response::done()
    }

    /// Installs a batch of filters in order, all or nothing: at the first refusal, the ones
    /// of the batch already installed are removed again and the refusal is the reply. One
    /// request for a port's rx bindings and tx grants, so a bind costs netd one round trip.
    fn install_filters(&mut self, filters: Vec<FilterInstall>) -> Response {
        if let Some(refusal) = batch_too_large(filters.len()) {
            return refusal;
        }
        let mut installed: Vec<(QueueId, FilterId)> = Vec::with_capacity(filters.len());
        for f in filters {
            let response = self.install_filter(&f);
            if !matches!(response.reply, DriverReply::Done) {
                for &(queue, filter) in installed.iter().rev() {
                    // Each was installed just now by this request, so it is there to remove.
                    let _ = self.remove_filter(queue, filter);
                }
                return response;
            }
            installed.push((f.queue, f.filter));
        }
        Response::done()
    }

    /// Removes a batch of one queue's filters, each as [`Driver::remove_filter`] would; every
    /// one is tried, and the first refusal (a filter not found) is the reply.
    fn remove_filters(&mut self, queue: QueueId, filters: &[FilterId]) -> Response {
        if let Some(refusal) = batch_too_large(filters.len()) {
            return refusal;
        }
        let mut first_refusal = None;
        for &filter in filters {
            let response = self.remove_filter(queue, filter);
            if first_refusal.is_none() && !matches!(response.reply, DriverReply::Done) {
                first_refusal = Some(response);
            }
        }
        first_refusal.unwrap_or_else(Response::done)
    }

    /// Tells the link which multicast MACs it must accept: those of the groups some rx filter
    /// is bound to, each once, asked only when the set changed.
    fn update_link_groups(&mut self) {
        let mut macs: Vec<[u8; 6]> = self.group_filters.values().copied().collect();
        macs.sort_unstable();
        macs.dedup();
        if macs == self.link_groups {
            return;
        }
        if let Err(e) = self.link.set_multicast_macs(&macs) {
            tracing::warn!("the link cannot accept a joined group's frames: {e}");
        }
        self.link_groups = macs;
    }

    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Response {
        let not_found = || {
            Response::error(
                ErrorCode::NotFound,
                format!("no filter {} on queue {}", filter.0, queue.0),
            )
        };
        match self.filters.get(&filter) {
            Some(&(q, direction)) if q == queue => {
                match direction {
                    Direction::Rx => {
                        let slot = self.queues.get(&queue).map(|q| q.instance);
                        let removed = slot.is_some_and(|s| {
                            self.instances.remove_filter(s, queue, filter).is_ok()
                        });
                        if !removed {
                            return not_found();
                        }
                    }
                    Direction::Tx => {
                        if let Some(q) = self.queues.get_mut(&queue) {
                            q.tx_filters.remove(filter);
                        }
                    }
                }
                self.filters.remove(&filter);
                if self.group_filters.remove(&filter).is_some() {
                    self.update_link_groups();
                }
                Response::done()
            }
            _ => not_found(),
        }
    }

    /// Fails closed: every queue is stopped, marked closed in its ring header and freed, with
    /// every filter, capture and firewall rule (a new netd gives the rules it keeps at its
    /// start), the netd queue and every instance but the default one (whose addresses are
    /// forgotten too). Counters of the link remain.
    pub fn fail_closed(&mut self) {
        for id in self.order.clone() {
            self.destroy_queue(id);
        }
        self.queues.clear();
        self.sched.clear();
        self.filters.clear();
        self.group_filters.clear();
        self.update_link_groups();
        self.touched.clear();
        // The next netd gives the rules it keeps at its start.
        let _ = self.firewall.set(Vec::new(), self.config.strategy);
        self.captures.clear();
        self.netd_queue = None;
        let others: Vec<InstanceId> = self
            .instances
            .iter()
            .map(|i| i.id)
            .filter(|&id| id != netmux_proto::driver::DEFAULT_INSTANCE)
            .collect();
        for id in others {
            let _ = self.instances.remove(id);
        }
        let _ = self.set_instance(netmux_proto::driver::InstanceInfo {
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
            mac: self.link_mac,
            own_mac: false,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            overlay: None,
        });
        self.overlays = overlay::Overlays::default();
    }

    /// Housekeeping while idle: discards fragments whose datagram timed out, even when no
    /// frame arrives to trigger it.
    pub fn tick(&mut self) {
        let now = self.now_ns();
        self.reassembler.expire(now);
        self.expire_fragments(now);
        if self.overlays.active() {
            self.overlays.expire(now);
            self.flush_overlays();
        }
    }

    /// Whether the link will never receive again (a replayed capture ended).
    pub fn rx_exhausted(&self) -> bool {
        self.link.rx_exhausted()
    }

    /// Receives one batch from the link and delivers it. Returns the number of frames the link
    /// gave (0: nothing to do right now).
    pub fn poll_rx(&mut self) -> usize {
        let mut batch = std::mem::take(&mut self.rx_batch);
        batch.clear();
        let received = match self.link.recv(&mut batch, self.config.rx_batch) {
            Ok(n) => {
                self.rx.failing = false;
                n
            }
            Err(e) => {
                self.rx.link_errors += 1;
                if !self.rx.failing {
                    tracing::warn!("link receive failed: {e} (until it works again, failures are only counted)");
                    self.rx.failing = true;
                }
                self.refresh_link();
                0
            }
        };
        if self.link.state() != self.link_state.state {
            self.note_link_state();
        }
        if received > 0 {
            let now = self.now_ns();
            self.reassembler.expire(now);
            if self.overlays.active() {
                self.overlays.expire_fragments(now);
            }
            for frame in batch.iter() {
                match self.reassembler.push(frame, now) {
                    Outcome::Deliver(frame) => self.deliver(frame, now),
                    Outcome::Reassembled(datagram) => self.deliver_reassembled(datagram, now),
                    Outcome::Held | Outcome::Dropped(_) => {}
                }
            }
            self.flush_touched();
            self.flush_overlays();
        }
        self.rx_batch = batch;
        received
    }

    /// Delivers a received frame to the instances it is for (see [`instances`]); `now_ns` is
    /// its batch's time (reading the clock per frame cost an overlay frame a fifth of its
    /// receive path).
    #[inline(always)]
    fn deliver(&mut self, frame: &[u8], now_ns: u64) {
        if self.overlays.active() && self.deliver_overlay(frame, now_ns) {
            return;
        }
        self.rx.classified += 1;
        if !self.captures.is_empty() {
            self.capture(CaptureSource::Link, FrameDirection::In, frame);
        }
        self.receivers.clear();
        let (target, arp) = self
            .instances
            .receive(frame, self.netd_queue, &mut self.receivers);
        self.deliver_receivers(frame, target, arp);
    }

    /// Delivers a datagram the reassembler made whole, and hands its buffer back (out of line:
    /// most frames arrive whole, and [`Driver::deliver`] is inlined where they are taken).
    #[inline(never)]
    fn deliver_reassembled(&mut self, datagram: Vec<u8>, now_ns: u64) {
        self.deliver(&datagram, now_ns);
        self.reassembler.recycle(datagram);
    }

    /// Takes a received frame that belongs to an overlay (delivering its inner frame, or
    /// holding or dropping it); `false` for a frame that is not overlay traffic.
    #[inline(never)]
    fn deliver_overlay(&mut self, frame: &[u8], now_ns: u64) -> bool {
        match self.overlays.receive(frame, now_ns) {
            overlay::Received::NotOverlay => false,
            overlay::Received::Dropped => true,
            overlay::Received::Inner { start, end, vni } => {
                match self.overlays.reassemble(vni, &frame[start..end], now_ns) {
                    Outcome::Deliver(inner) => self.deliver_inner(inner),
                    Outcome::Reassembled(datagram) => {
                        self.deliver_inner(&datagram);
                        self.overlays.recycle(vni, datagram);
                    }
                    Outcome::Held | Outcome::Dropped(_) => {}
                }
                true
            }
        }
    }

    /// Delivers an overlay's inner frame (or datagram) to the instances
    /// [`overlay::Overlays::deliver_to`] names.
    fn deliver_inner(&mut self, inner: &[u8]) {
        let slots = std::mem::take(&mut self.overlays.deliver_to);
        for &slot in &slots {
            self.rx.classified += 1;
            self.deliver_to(inner, Target::One(slot));
        }
        self.overlays.deliver_to = slots;
    }

    /// Delivers `frame` to the queues of the instances at `slots` that take it: in each, ARP
    /// that concerns it goes to all its queues, anything else to the queues its classifier
    /// names; a frame nobody takes goes to netd's queue.
    ///
    /// Inlined, with what most frames never need (no taker, firewall rules, captures) out of
    /// line: the layers between the link and the classifier cost a frame no calls of their own.
    #[inline(always)]
    fn deliver_to(&mut self, frame: &[u8], target: Target) {
        self.receivers.clear();
        let arp = self
            .instances
            .receivers(frame, target, self.netd_queue, &mut self.receivers);
        self.deliver_receivers(frame, target, arp);
    }

    /// Delivers `frame` to the queues in `self.receivers`, those of the instances `target`
    /// names that took it (`arp` of them as ARP); see [`Driver::deliver_to`].
    #[inline(always)]
    fn deliver_receivers(&mut self, frame: &[u8], target: Target, arp: usize) {
        self.rx.arp_to_all += arp as u64;
        if self.receivers.is_empty() && !self.unclaimed(frame, target) {
            return;
        }
        if self.firewall.has_in() || !self.captures.is_empty() {
            self.push_rx_checked(frame);
            return;
        }
        for &id in &self.receivers {
            if let Some(queue) = self.queues.get_mut(&id) {
                // Drops (full ring, closed, faulted) are counted by the ring, per queue.
                if queue.ring.push_rx(&[frame]) == RxOutcome::Queued && !queue.touched {
                    queue.touched = true;
                    self.touched.push(id);
                }
            }
        }
    }

    /// A frame no classifier took: for the queue that owns the flow an ICMP error quotes,
    /// else for netd's queue. `false` when nobody takes it (counted).
    #[inline(never)]
    fn unclaimed(&mut self, frame: &[u8], target: Target) -> bool {
        self.icmp_error_owner(frame, target);
        if !self.receivers.is_empty() {
            return true;
        }
        match self.netd_queue {
            Some(netd) => {
                self.rx.unmatched_to_netd += 1;
                self.receivers.push(netd);
                true
            }
            None => {
                self.rx.no_receiver += 1;
                false
            }
        }
    }

    /// Writes `frame` into the receivers' rings when the admin firewall has inbound rules or
    /// a capture runs: each receiver's rules first, each queued copy captured.
    #[inline(never)]
    fn push_rx_checked(&mut self, frame: &[u8]) {
        for &id in &self.receivers {
            if let Some(queue) = self.queues.get_mut(&id) {
                if self.firewall.has_in() {
                    let instance = self.instances.get(queue.instance).map(|i| i.id);
                    if self.firewall.blocks(
                        RuleDirection::In,
                        instance.unwrap_or_default(),
                        id,
                        frame,
                        &mut self.scratch,
                    ) {
                        queue.firewall_dropped += 1;
                        self.firewall_dropped += 1;
                        continue;
                    }
                }
                // Drops (full ring, closed, faulted) are counted by the ring, per queue.
                let queued = queue.ring.push_rx(&[frame]) == RxOutcome::Queued;
                if queued && !queue.touched {
                    queue.touched = true;
                    self.touched.push(id);
                }
                if queued && !self.captures.is_empty() {
                    self.captures.copy(
                        CaptureSource::Queue(id),
                        FrameDirection::In,
                        frame,
                        &mut self.queues,
                        &mut self.touched,
                        &mut self.scratch,
                    );
                }
            }
        }
    }

    /// Copies a frame to the captures of `source` (see [`capture`]).
    fn capture(&mut self, source: CaptureSource, direction: FrameDirection, frame: &[u8]) {
        self.captures.copy(
            source,
            direction,
            frame,
            &mut self.queues,
            &mut self.touched,
            &mut self.scratch,
        );
    }

    fn flush_touched(&mut self) {
        for id in self.touched.drain(..) {
            if let Some(queue) = self.queues.get_mut(&id) {
                queue.touched = false;
                queue.ring.flush();
            }
        }
    }

    /// Gives every active queue one transmit turn, after waking the parked queues whose
    /// clients sent ([`idle`]). Returns the number of frames taken from the tx rings (0:
    /// nothing to do right now).
    pub fn poll_tx(&mut self) -> usize {
        let mut total = 0;
        let mut batch = std::mem::take(&mut self.tx_batch);
        let mut sent: Vec<usize> = Vec::new();
        let mut local: Vec<(usize, Option<Slot>)> = Vec::new();
        let mut faulted: Vec<QueueId> = Vec::new();
        let clock = self.clock;
        let now = || u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if self.overlays.has_output() {
            // Encapsulated frames the busy link did not take last time.
            self.flush_overlays();
        }
        if self.sched.check_due() {
            self.wake_parked();
        }
        self.compact_active();
        for i in 0..self.sched.active.len() {
            let id = self.sched.active[i];
            if self
                .queues
                .get(&id)
                .is_some_and(|q| !q.link_held.is_empty())
            {
                total += self.offer_link_held(id);
                if self
                    .queues
                    .get(&id)
                    .is_some_and(|q| !q.link_held.is_empty())
                {
                    // The link is still busy: the queue's new frames wait in its ring.
                    continue;
                }
            }
            let Some(queue) = self.queues.get_mut(&id) else {
                continue;
            };
            // Fragments held (completed when their datagram is settled), whole datagrams and
            // fragments rejected (timed out, or refused with their datagram): `tx_fragments`.
            let (mut held, mut wholes) = (Vec::new(), Vec::new());
            let mut released = if queue.fragments.is_empty() {
                Vec::new()
            } else {
                queue.fragments.expire(now())
            };
            batch.clear();
            sent.clear();
            let taken = match queue.ring.take_tx(&mut batch, self.config.tx_batch) {
                Ok(n) => n,
                Err(fault) => {
                    tracing::warn!(queue = id.0, "closing queue after a ring fault: {fault}");
                    faulted.push(id);
                    continue;
                }
            };
            if taken == 0 {
                // Malformed frames may have been completed without being returned.
                queue.ring.flush();
                if released.is_empty() {
                    Self::note_idle_turn(&mut self.sched, queue);
                } else {
                    self.settle_fragments(id, Vec::new(), released);
                }
                continue;
            }
            total += taken;
            queue.sched.idle_turns = 0;
            let sender = queue.instance;
            let sender_id = self.instances.get(sender).map(|i| i.id).unwrap_or_default();
            let sender_overlay = self.instances.get(sender).and_then(|i| i.overlay);
            let from_netd = self.netd_queue == Some(id) && self.overlays.active();
            let now_ns = u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let mut outcome = Vec::with_capacity(taken);
            local.clear();
            for (index, (tag, frame)) in batch.iter_tagged().enumerate() {
                let mut status = if frame.len() > self.max_tx_len {
                    TxStatus::RejectedMalformed
                } else {
                    tx::check(frame, &queue.tx_filters, &queue.mac, &mut self.scratch)
                };
                if status == TxStatus::RejectedFragment {
                    match queue.fragments.push(tag, frame, now()) {
                        tx_fragments::Gathered::Held => held.push(index),
                        tx_fragments::Gathered::Whole {
                            datagram,
                            fragments,
                        } => {
                            held.push(index);
                            wholes.push((datagram, fragments));
                        }
                        tx_fragments::Gathered::Rejected { released: r } => released.extend(r),
                    }
                }
                if status.is_sent()
                    && self.firewall.has_out()
                    && self.firewall.blocks(
                        RuleDirection::Out,
                        sender_id,
                        id,
                        frame,
                        &mut self.scratch,
                    )
                {
                    status = TxStatus::RejectedByFirewall;
                }
                let overlay = match sender_overlay {
                    Some(vni) => Some((vni, sender)),
                    None if from_netd => self.overlays.sender(frame),
                    None => None,
                };
                if let (Some((vni, slot)), true) = (overlay, status.is_sent()) {
                    outcome.push(self.overlays.transmit(vni, slot, frame, now_ns));
                    continue;
                }
                if status.is_sent() {
                    match self.instances.route(frame, sender) {
                        Route::Link => sent.push(index),
                        Route::Local(slot) => local.push((index, Some(slot))),
                        Route::LinkAndOthers => {
                            sent.push(index);
                            local.push((index, None));
                        }
                    }
                }
                outcome.push(status);
            }
            let offer = send_all(self.link.as_mut(), &batch, &sent);
            match offer.rest {
                Unsent::Busy => {
                    // Kept for the next turn, in order; completed when the link takes them.
                    queue.tx.link_busy += 1;
                    for &index in &sent[offer.taken..] {
                        if let (Some(tag), Some(frame)) = (batch.tag(index), batch.get(index)) {
                            queue.link_held.push_back(LinkHeld {
                                tag,
                                frame: frame.to_vec(),
                                seen: false,
                            });
                            held.push(index);
                        }
                    }
                }
                Unsent::Down | Unsent::Failed => {
                    let unsent = offer.rest.status();
                    for &index in &sent[offer.taken..] {
                        outcome[index] = unsent;
                    }
                }
            }
            sent.truncate(offer.taken);
            for (index, (tag, frame)) in batch.iter_tagged().enumerate() {
                if held.contains(&index) {
                    continue;
                }
                let status = outcome[index];
                queue.tx.record(status, frame.len());
                self.tx.record(status, frame.len());
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                if queue.ring.complete(tag, status, len).is_err() {
                    faulted.push(id);
                    break;
                }
            }
            queue.ring.flush();
            if let Some(instance) = self.instances.get_mut(sender) {
                for (index, status) in outcome.iter().enumerate() {
                    if status.is_sent() && !held.contains(&index) {
                        instance.counters.tx_frames += 1;
                        instance.counters.tx_bytes +=
                            batch.get(index).map_or(0, |f| f.len() as u64);
                    }
                }
            }
            // Captures see what the queue sent (after its check and the firewall), and what
            // went on the link.
            if !self.captures.is_empty() {
                for (index, status) in outcome.iter().enumerate() {
                    if let (true, Some(frame)) = (status.is_sent(), batch.get(index)) {
                        self.capture(CaptureSource::Queue(id), FrameDirection::Out, frame);
                    }
                }
                for &index in &sent {
                    if let Some(frame) = batch.get(index) {
                        self.capture(CaptureSource::Link, FrameDirection::Out, frame);
                    }
                }
            }
            if !(wholes.is_empty() && released.is_empty()) {
                self.settle_fragments(id, wholes, released);
            }
            // Taps of other queues observe what went out.
            for &index in &sent {
                if let Some(frame) = batch.get(index) {
                    self.observe(frame, id, sender);
                }
            }
            // Frames for other instances on this host: delivered here (hairpin).
            for &(index, target) in &local {
                let Some(frame) = batch.get(index) else {
                    continue;
                };
                if target.is_some() {
                    self.observe(frame, id, sender);
                }
                let to = match target {
                    Some(slot) => Target::One(slot),
                    None => Target::EveryBut(sender),
                };
                let mut slots = std::mem::take(&mut self.dispatched);
                self.instances.slots(to, &mut slots);
                for &slot in &slots {
                    if let Some(i) = self.instances.get_mut(slot) {
                        i.counters.hairpin_in += 1;
                    }
                }
                self.dispatched = slots;
                self.rx.hairpin += 1;
                self.deliver_to(frame, to);
            }
            self.flush_overlays();
        }
        self.flush_touched();
        for id in faulted {
            if let Some(queue) = self.queues.get_mut(&id) {
                queue.ring.close();
            }
        }
        self.tx_batch = batch;
        self.compact_active();
        if self.link.state() != self.link_state.state {
            self.note_link_state();
        }
        total
    }

    /// Offers a queue's held frames ([`LinkHeld`]) to the link once more, in order: those it
    /// takes complete as sent (counted, captured and observed as on the first offer), the
    /// rest stay held while it is busy, and complete as `LinkDown` or `LinkError` when it is
    /// down or failing. Returns how many frames were completed.
    fn offer_link_held(&mut self, id: QueueId) -> usize {
        let Some(queue) = self.queues.get_mut(&id) else {
            return 0;
        };
        let mut held = std::mem::take(&mut queue.link_held);
        let frames: Vec<&[u8]> = held.iter().map(|h| h.frame.as_slice()).collect();
        let offer = send_frames(self.link.as_mut(), &frames, 0);
        drop(frames);
        let finished: Vec<(LinkHeld, TxStatus)> = match offer.rest {
            Unsent::Busy => held
                .drain(..offer.taken)
                .map(|h| (h, TxStatus::Sent))
                .collect(),
            rest => held
                .drain(..)
                .enumerate()
                .map(|(i, h)| {
                    let status = if i < offer.taken {
                        TxStatus::Sent
                    } else {
                        rest.status()
                    };
                    (h, status)
                })
                .collect(),
        };
        queue.link_held = held;
        let sender = queue.instance;
        let mut faulted = false;
        for (h, status) in &finished {
            queue.tx.record(*status, h.frame.len());
            self.tx.record(*status, h.frame.len());
            let len = u32::try_from(h.frame.len()).unwrap_or(u32::MAX);
            if queue.ring.complete(h.tag, *status, len).is_err() {
                faulted = true;
                break;
            }
        }
        queue.ring.flush();
        if faulted {
            tracing::warn!(queue = id.0, "closing queue after a ring fault");
            queue.ring.close();
        }
        if let Some(instance) = self.instances.get_mut(sender) {
            for (h, status) in &finished {
                if status.is_sent() {
                    instance.counters.tx_frames += 1;
                    instance.counters.tx_bytes += h.frame.len() as u64;
                }
            }
        }
        for (h, status) in &finished {
            if status.is_sent() && !h.seen {
                if !self.captures.is_empty() {
                    self.capture(CaptureSource::Link, FrameDirection::Out, &h.frame);
                }
                self.observe(&h.frame, id, sender);
            }
        }
        finished.len()
    }

    /// Whether frames wait for a busy link (held for a queue, or encapsulated for an
    /// overlay): the control loop then also waits for the link to become writable, and not
    /// longer than a millisecond.
    pub fn waits_for_link(&self) -> bool {
        // Only active queues hold frames for the link (see `idle`).
        self.overlays.has_output()
            || self
                .sched
                .active
                .iter()
                .any(|id| self.queues.get(id).is_some_and(|q| !q.link_held.is_empty()))
    }

    /// Copies a frame `sender` transmitted to the taps of its instance that want it.
    fn observe(&mut self, frame: &[u8], sender: QueueId, slot: Slot) {
        self.receivers.clear();
        let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.instances
            .observers(slot, frame, wire_len, sender, &mut self.receivers);
        for id in &self.receivers {
            if let Some(queue) = self.queues.get_mut(id) {
                if queue.ring.push_rx(&[frame]) == RxOutcome::Queued && !queue.touched {
                    queue.touched = true;
                    self.touched.push(*id);
                }
            }
        }
    }

    /// Statistics of the link and of every queue (see [`Counters`]).
    pub fn stats(&self) -> (Counters, Vec<(QueueId, Counters)>) {
        let (link, _) = self.stats_of(&[]);
        let queues = self
            .order
            .iter()
            .filter_map(|id| self.queues.get(id).map(|q| (*id, queue_counters(q))))
            .collect();
        (link, queues)
    }

    /// The link's counters and those of the queues `ids` names that exist, in that order.
    pub fn stats_of(&self, ids: &[QueueId]) -> (Counters, Vec<(QueueId, Counters)>) {
        let link: LinkStats = self.link.stats();
        let r = self.reassembler.counters();
        let mut rx_dropped = vec![
            ("link".to_string(), link.rx_dropped),
            ("kernel".to_string(), link.rx_dropped_kernel),
            ("no-receiver".to_string(), self.rx.no_receiver),
            ("link-error".to_string(), self.rx.link_errors),
            ("firewall".to_string(), self.firewall_dropped),
        ];
        rx_dropped.extend(link.offload_drops());
        for reason in DropReason::ALL {
            rx_dropped.push((format!("reassembly-{reason}"), r.fragments_dropped(reason)));
        }
        rx_dropped.retain(|(_, n)| *n > 0);
        let link_counters = Counters {
            rx_frames: link.rx_frames,
            rx_bytes: link.rx_bytes,
            tx_frames: link.tx_frames,
            tx_bytes: link.tx_bytes,
            // Copies dropped by full rings, summed over the current queues.
            rx_dropped_full: self
                .queues
                .values()
                .map(|q| q.ring.counters().rx_dropped_full)
                .sum(),
            tx_rejected: self.tx.rejected(),
            tx_flow_control: self.tx.link_busy,
            rx_dropped,
            hairpin: self.rx.hairpin,
            link_state: Some(self.link_state.state),
            rx_csum_completed: link.rx_csum_completed,
            rx_gso_split: link.rx_gso_split,
            rx_gso_segments: link.rx_gso_segments,
        };
        let queues = ids
            .iter()
            .filter_map(|id| self.queues.get(id).map(|q| (*id, queue_counters(q))))
            .collect();
        (link_counters, queues)
    }

    /// Driver-wide receive counters as (name, value) pairs, for logs and `netmux stat`.
    pub fn rx_summary(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("classified", self.rx.classified),
            ("arp-to-all", self.rx.arp_to_all),
            ("unmatched-to-netd", self.rx.unmatched_to_netd),
            ("no-receiver", self.rx.no_receiver),
            ("hairpin", self.rx.hairpin),
            (
                "datagrams-reassembled",
                self.reassembler.counters().datagrams_reassembled,
            ),
        ]
    }
}

fn queue_counters(queue: &Queue) -> Counters {
    let ring = queue.ring.counters();
    let rx_dropped = [
        ("too-large", ring.rx_dropped_too_large),
        ("unusable", ring.rx_dropped_unusable),
        ("firewall", queue.firewall_dropped),
    ]
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .map(|(name, n)| (name.to_string(), n))
    .collect();
    Counters {
        rx_frames: ring.rx_frames,
        rx_bytes: ring.rx_bytes,
        tx_frames: queue.tx.count[status_index(TxStatus::Sent)],
        tx_bytes: queue.tx.sent_bytes,
        rx_dropped_full: ring.rx_dropped_full,
        tx_rejected: queue.tx.rejected(),
        tx_flow_control: ring.tx_flow_control + queue.tx.link_busy,
        rx_dropped,
        ..Counters::default()
    }
}

/// A queue's rings, and the client's descriptors handed over (the driver keeps no copy: one
/// descriptor per queue, its end of the doorbell).
fn make_ring(config: &QueueConfig) -> Result<(DriverQueue, QueueFds), (ErrorCode, String)> {
    let mut ring = DriverQueue::create(config).map_err(|e| (ErrorCode::Limit, e.to_string()))?;
    let fds = ring.hand_out().ok_or_else(|| {
        (
            ErrorCode::Internal,
            "a new queue's descriptors are gone".to_owned(),
        )
    })?;
    Ok((ring, fds))
}

/// Why a link did not take every frame offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsent {
    /// It was busy (its queue or socket buffer full): offer the rest again later.
    Busy,
    /// It is down: the rest completes as [`TxStatus::LinkDown`].
    Down,
    /// It failed (logged): the rest completes as [`TxStatus::LinkError`].
    Failed,
}

impl Unsent {
    /// The completion status of frames that will not be offered again.
    fn status(self) -> TxStatus {
        match self {
            Unsent::Down => TxStatus::LinkDown,
            Unsent::Busy | Unsent::Failed => TxStatus::LinkError,
        }
    }
}

/// What became of frames offered to the link.
#[derive(Debug, Clone, Copy)]
struct Offer {
    /// How many it took, from the start.
    taken: usize,
    /// Why it did not take the rest (meaningless when it took them all).
    rest: Unsent,
}

/// Offers the frames at `indices` of `batch` to the link until it took them all, stayed busy
/// for [`LINK_BUSY_RETRIES`] offers, or is down or failing.
fn send_all(link: &mut dyn Link, batch: &FrameBatch, indices: &[usize]) -> Offer {
    let frames: Vec<&[u8]> = indices.iter().filter_map(|&i| batch.get(i)).collect();
    send_frames(link, &frames, LINK_BUSY_RETRIES)
}

/// [`send_all`] for frames in hand, with at most `retries` offers again while busy.
fn send_frames(link: &mut dyn Link, frames: &[&[u8]], retries: usize) -> Offer {
    let mut taken = 0;
    let mut busy = 0;
    while taken < frames.len() {
        if link.state() != LinkState::Up {
            return Offer {
                taken,
                rest: Unsent::Down,
            };
        }
        match link.send(&frames[taken..]) {
            Ok(n) if n > 0 => taken += n,
            Ok(_) if link.state() != LinkState::Up => {
                return Offer {
                    taken,
                    rest: Unsent::Down,
                }
            }
            Ok(_) => {
                if busy >= retries {
                    return Offer {
                        taken,
                        rest: Unsent::Busy,
                    };
                }
                busy += 1;
                std::hint::spin_loop();
            }
            Err(e) => {
                tracing::warn!("link send failed: {e}");
                return Offer {
                    taken,
                    rest: Unsent::Failed,
                };
            }
        }
    }
    Offer {
        taken,
        rest: Unsent::Busy,
    }
}

/// The multicast MAC of a binding whose address is a multicast group (IPv4 `224.0.0.0/4`:
/// `01:00:5e` and the low 23 bits; IPv6 `ff00::/8`: `33:33` and the low 32 bits), or `None`.
fn group_mac(binding: &netmux_proto::driver::PortBinding) -> Option<[u8; 6]> {
    let a = binding.address;
    if binding.ipv6 {
        (a[0] == 0xff).then_some([0x33, 0x33, a[12], a[13], a[14], a[15]])
    } else {
        (a[0] & 0xf0 == 0xe0).then_some([0x01, 0x00, 0x5e, a[1] & 0x7f, a[2], a[3]])
    }
}

/// The refusal of a batch of `len` filters, when it is more than one request may carry.
fn batch_too_large(len: usize) -> Option<Response> {
    (len > netmux_proto::driver::MAX_BATCH_FILTERS).then(|| {
        Response::error(
            ErrorCode::Limit,
            format!(
                "at most {} filters in one request, not {len}",
                netmux_proto::driver::MAX_BATCH_FILTERS
            ),
        )
    })
}
