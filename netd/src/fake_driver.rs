//! An in-process driver for tests and benchmarks: it records every request in order, creates
//! real rings (so clients get real descriptors and real framed I/O), and moves frames between
//! its queues and a simulated wire.
//!
//! It is a fake, and says where it differs from the driver:
//! * receive classification uses the port bindings (protocol, destination address and port)
//!   and the link's MAC, not the compiled programs; ARP goes to every queue; broadcast,
//!   multicast and anything else for the host's MAC goes to the host queue ([`crate::driver_link::HOST_QUEUE`]); tap filters get nothing;
//! * transmit checking runs the queue's compiled tx filters with the interpreter (any accept
//!   sends), without the driver's separate fragment rule or rejection reasons.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use netmux_proto::driver::{Counters, Direction, FilterId, QueueId};
use netmux_proto::{ErrorCode, ErrorReply, LinkInfo};
use netmux_ring::{DriverQueue, FrameBatch, QueueConfig, TxStatus};

use crate::driver_link::{CreatedQueue, DriverError, DriverLink, FilterSpec, HOST_QUEUE};

/// One request the fake carried out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeEvent {
    /// A queue was created.
    CreateQueue(QueueId),
    /// A queue was destroyed.
    DestroyQueue(QueueId),
    /// A filter was installed.
    Install(FilterSpec),
    /// A filter was removed.
    Remove(QueueId, FilterId),
    /// netd named its own queue.
    SetNetdQueue(QueueId),
    /// netd named the host's IPv4 addresses.
    SetHostAddresses(Vec<[u8; 4]>),
}

struct FakeQueue {
    ring: DriverQueue,
    /// Compiled tx programs, when the compiler could compile every tx filter.
    tx_programs: Option<Vec<netmux_vm::Program>>,
}

struct FakeState {
    link: LinkInfo,
    queues: BTreeMap<QueueId, FakeQueue>,
    filters: BTreeMap<FilterId, FilterSpec>,
    events: Vec<FakeEvent>,
    fail_installs: bool,
    gone: bool,
    rejected: u64,
}

/// The fake driver; clones share one state. See the module documentation.
#[derive(Clone)]
pub struct FakeDriver {
    inner: Arc<Mutex<FakeState>>,
}

impl std::fmt::Debug for FakeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDriver").finish_non_exhaustive()
    }
}

impl FakeDriver {
    /// A fake driver for a link with this MAC and MTU.
    pub fn new(link: LinkInfo) -> FakeDriver {
        FakeDriver {
            inner: Arc::new(Mutex::new(FakeState {
                link,
                queues: BTreeMap::new(),
                filters: BTreeMap::new(),
                events: Vec::new(),
                fail_installs: false,
                gone: false,
                rejected: 0,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A panic elsewhere while holding the lock poisons it; the state is still consistent
        // (every mutation is complete before any call that could panic).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The filters in force now.
    pub fn filters(&self) -> Vec<FilterSpec> {
        self.state().filters.values().cloned().collect()
    }

    /// Every request carried out so far, in order.
    pub fn events(&self) -> Vec<FakeEvent> {
        self.state().events.clone()
    }

    /// Queues that exist now.
    pub fn queues(&self) -> Vec<QueueId> {
        self.state().queues.keys().copied().collect()
    }

    /// Makes every later filter installation fail (as a driver that refuses the bytecode).
    pub fn set_fail_installs(&self, fail: bool) {
        self.state().fail_installs = fail;
    }

    /// Simulates the driver going away: every later request fails with [`DriverError::Gone`]
    /// and every queue is closed.
    pub fn go_away(&self) {
        let mut s = self.state();
        s.gone = true;
        for q in s.queues.values_mut() {
            q.ring.close();
        }
    }

    /// Transmitted frames rejected by the tx check so far.
    pub fn rejected(&self) -> u64 {
        self.state().rejected
    }

    /// Delivers a received frame as the driver would (see the module documentation); returns
    /// the queues that got it.
    pub fn receive(&self, frame: &[u8]) -> Vec<QueueId> {
        let mut s = self.state();
        let targets = s.classify(frame);
        for q in &targets {
            if let Some(queue) = s.queues.get_mut(q) {
                queue.ring.deliver(&[&[frame]]);
            }
        }
        targets
    }

    /// Takes every queue's transmitted frames, checks them, completes them, and returns those
    /// that passed, as they would go on the wire.
    pub fn pump_tx(&self) -> Vec<Vec<u8>> {
        let mut s = self.state();
        let mac = s.link.mac;
        let mut out = Vec::new();
        let mut rejected = 0;
        let mut batch = FrameBatch::new();
        for q in s.queues.values_mut() {
            batch.clear();
            if q.ring.take_tx(&mut batch, 256).is_err() {
                continue;
            }
            for (seq, frame) in batch.iter_tagged() {
                let ok = match &q.tx_programs {
                    Some(programs) => programs.iter().any(|p| {
                        let mut scratch = netmux_vm::Scratch::default();
                        let wire = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                        matches!(
                            netmux_vm::interp::run(p, frame, wire, &mut scratch),
                            netmux_vm::Verdict::Accept(_)
                        )
                    }),
                    None => frame.len() >= 12 && frame[6..12] == mac,
                };
                let status = if ok {
                    out.push(frame.to_vec());
                    TxStatus::Sent
                } else {
                    rejected += 1;
                    TxStatus::RejectedByFilter
                };
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                let _ = q.ring.complete(seq, status, len);
            }
            q.ring.flush();
        }
        s.rejected += rejected;
        out
    }

    /// Connects two fakes with a cable: a thread moves each one's transmitted frames to the
    /// other until the returned handle is dropped.
    pub fn cable(a: &FakeDriver, b: &FakeDriver) -> Cable {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b, flag) = (a.clone(), b.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut moved = 0;
                for f in a.pump_tx() {
                    b.receive(&f);
                    moved += 1;
                }
                for f in b.pump_tx() {
                    a.receive(&f);
                    moved += 1;
                }
                if moved == 0 {
                    std::thread::sleep(CABLE_IDLE_SLEEP);
                }
            }
        });
        Cable {
            stop,
            thread: Some(thread),
        }
    }
}

/// How long the cable thread sleeps when neither side sent anything: short enough for TCP's
/// handshake to take milliseconds, long enough not to burn a core.
const CABLE_IDLE_SLEEP: Duration = Duration::from_micros(200);

/// A running cable between two fakes; dropping it stops the thread.
#[derive(Debug)]
pub struct Cable {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FakeState {
    fn classify(&self, frame: &[u8]) -> Vec<QueueId> {
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            return self.host_queue();
        };
        if let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link {
            if eth.ether_type() == etherparse::EtherType::ARP {
                return self.queues.keys().copied().collect();
            }
            let dst = eth.destination();
            if dst[0] & 1 == 1 {
                // Broadcast and multicast (IPv6 neighbour discovery): the host's business.
                return self.host_queue();
            }
            if dst != self.link.mac {
                return Vec::new();
            }
        }
        let dst: Option<IpAddr> = match &p.net {
            Some(NetSlice::Ipv4(ip)) => Some(ip.header().destination_addr().into()),
            Some(NetSlice::Ipv6(ip)) => Some(ip.header().destination_addr().into()),
            _ => None,
        };
        let key = match (&p.transport, dst) {
            (Some(TransportSlice::Tcp(t)), Some(a)) => Some((6u8, a, t.destination_port())),
            (Some(TransportSlice::Udp(u)), Some(a)) => Some((17u8, a, u.destination_port())),
            _ => None,
        };
        if let Some((proto, addr, port)) = key {
            let (address, ipv6) = crate::filters::address_key(addr);
            for f in self.filters.values() {
                if let Some(b) = f.binding {
                    if b.protocol == proto
                        && b.address == address
                        && b.ipv6 == ipv6
                        && b.port == port
                    {
                        return vec![f.queue];
                    }
                }
            }
        }
        self.host_queue()
    }

    fn host_queue(&self) -> Vec<QueueId> {
        if self.queues.contains_key(&HOST_QUEUE) {
            vec![HOST_QUEUE]
        } else {
            Vec::new()
        }
    }

    fn check(&self) -> Result<(), DriverError> {
        if self.gone {
            Err(DriverError::Gone("the fake driver went away".into()))
        } else {
            Ok(())
        }
    }

    fn recompile_tx(&mut self, queue: QueueId) {
        let exprs: Vec<&str> = self
            .filters
            .values()
            .filter(|f| f.queue == queue && f.direction == Direction::Tx)
            .map(|f| f.expr.as_str())
            .collect();
        let programs: Option<Vec<_>> = exprs
            .iter()
            .map(|e| crate::filters::compile(e).ok())
            .collect();
        if let Some(q) = self.queues.get_mut(&queue) {
            q.tx_programs = programs;
        }
    }
}

fn refused(message: &str) -> DriverError {
    DriverError::Refused(ErrorReply {
        code: ErrorCode::Internal,
        message: message.to_owned(),
    })
}

impl DriverLink for FakeDriver {
    fn link_info(&self) -> LinkInfo {
        self.state().link
    }

    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        _instance: netmux_proto::driver::InstanceId,
    ) -> Result<CreatedQueue, DriverError> {
        let mut s = self.state();
        s.check()?;
        if s.queues.contains_key(&queue) {
            return Err(refused("queue exists"));
        }
        let ring = DriverQueue::create(&QueueConfig {
            slot_size: config.slot_size,
            rx_slots: config.rx_slots,
            tx_slots: config.tx_slots,
            completion_slots: config.completion_slots,
        })
        .map_err(|e| refused(&e.to_string()))?;
        let fds = ring.client_fds().map_err(|e| refused(&e.to_string()))?;
        let ring_bytes = ring.layout().total_len;
        s.queues.insert(
            queue,
            FakeQueue {
                ring,
                tx_programs: Some(Vec::new()),
            },
        );
        s.events.push(FakeEvent::CreateQueue(queue));
        Ok(CreatedQueue {
            ring_bytes,
            memfd: fds.memfd,
            client_wake: fds.client_wake,
            driver_wake: fds.driver_wake,
        })
    }

    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        let mut s = self.state();
        s.check()?;
        let mut q = s
            .queues
            .remove(&queue)
            .ok_or_else(|| refused("no such queue"))?;
        q.ring.close();
        s.filters.retain(|_, f| f.queue != queue);
        s.events.push(FakeEvent::DestroyQueue(queue));
        Ok(())
    }

    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError> {
        let mut s = self.state();
        s.check()?;
        if s.fail_installs {
            return Err(refused("installation refused (fault injected)"));
        }
        if !s.queues.contains_key(&spec.queue) {
            return Err(refused("no such queue"));
        }
        if s.filters.contains_key(&spec.filter) {
            return Err(refused("filter id in use"));
        }
        // As the driver does: only a verified program is installed.
        netmux_vm::verify(&spec.program).map_err(|e| refused(&format!("rejected: {e}")))?;
        s.filters.insert(spec.filter, spec.clone());
        s.events.push(FakeEvent::Install(spec.clone()));
        if spec.direction == Direction::Tx {
            s.recompile_tx(spec.queue);
        }
        Ok(())
    }

    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError> {
        let mut s = self.state();
        s.check()?;
        match s.filters.get(&filter) {
            Some(f) if f.queue == queue => {}
            _ => return Err(refused("no such filter")),
        }
        let spec = s.filters.remove(&filter);
        s.events.push(FakeEvent::Remove(queue, filter));
        if spec.is_some_and(|f| f.direction == Direction::Tx) {
            s.recompile_tx(queue);
        }
        Ok(())
    }

    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        let mut s = self.state();
        s.check()?;
        s.events.push(FakeEvent::SetNetdQueue(queue));
        Ok(())
    }

    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError> {
        let mut s = self.state();
        s.check()?;
        s.events.push(FakeEvent::SetHostAddresses(ipv4));
        Ok(())
    }

    fn gone(&mut self) -> Option<String> {
        self.state()
            .gone
            .then(|| "the fake driver went away".to_owned())
    }

    // Field by field: fields the protocol adds later keep their defaults without an edit here.
    #[allow(clippy::field_reassign_with_default)]
    fn set_instance(
        &mut self,
        _info: netmux_proto::driver::InstanceInfo,
    ) -> Result<(), DriverError> {
        self.state().check()
    }

    fn remove_instance(
        &mut self,
        _instance: netmux_proto::driver::InstanceId,
    ) -> Result<(), DriverError> {
        self.state().check()
    }

    fn stats(&mut self) -> Result<crate::driver_link::DriverStats, DriverError> {
        self.stats_pair()
            .map(|(link, queues)| crate::driver_link::DriverStats {
                link,
                queues,
                instances: Vec::new(),
            })
    }
}

impl FakeDriver {
    // Field by field: fields the protocol adds later keep their defaults without an edit here.
    #[allow(clippy::field_reassign_with_default)]
    fn stats_pair(&mut self) -> Result<(Counters, Vec<(QueueId, Counters)>), DriverError> {
        let s = self.state();
        s.check()?;
        let queues = s
            .queues
            .iter()
            .map(|(id, q)| {
                let c = q.ring.counters();
                let mut out = Counters::default();
                out.rx_frames = c.rx_frames;
                out.rx_bytes = c.rx_bytes;
                out.tx_frames = c.tx_frames;
                out.tx_bytes = c.tx_bytes;
                out.rx_dropped_full = c.rx_dropped_full;
                out.tx_rejected = vec![("rejected".into(), c.tx_rejected)];
                out.tx_flow_control = c.tx_flow_control;
                (*id, out)
            })
            .collect();
        Ok((Counters::default(), queues))
    }
}
