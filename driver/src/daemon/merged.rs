//! The driver's default classifier: the merged classifier of issue #5 behind the driver's
//! [`Classifier`] trait. A frame costs one run of one generic VM program (at most three hash
//! lookups, whatever the number of port bindings) plus one run of the filter the lookup found,
//! then every filter that is not a port binding (taps, exclusive claims, ARP, custom filters).
//!
//! # Where the code lives, and why
//!
//! The generic program, its table layout and key encoding are the compiler crate's
//! ([`netmux_compiler::classifier::program`]): its proof that the program reads a frame's
//! (family, protocol, destination address, destination port) key with exactly the loads of a
//! port filter sits beside the binding recogniser it is proved against, and splitting the two
//! would separate a proof from the code it is about. The driver depends on the compiler crate
//! for that runtime part, and compiles one thing itself: the canonical port filter of a key,
//! at install time, to recognise netd's (below); it never compiles anything netd sends. Table sets, ownership and the
//! trait adapter are here, because the driver's filters arrive as bytecode with a key, not as
//! expressions.
//!
//! # Trust boundary: the key is a hint, the verified program decides
//!
//! netd sends each port filter as bytecode plus a [`PortBinding`] key. netd is the driver's
//! only peer and is authenticated (peer credentials on a socket only netd's user can reach),
//! but the driver is the last line of defence before a client's ring, so it does not let the
//! key alone decide delivery:
//!
//! - Every program is verified (by [`super::Driver`], before it reaches a classifier).
//! - The key only selects a *candidate*: a frame whose key equals the binding's key. The
//!   candidate receives the frame only if its own verified program also accepts it (one extra
//!   program run per hit). So a queue never receives a frame its
//!   program rejects, whatever key netd sent.
//! - One shortcut keeps that confirmation off the per-queue code: when the program is byte
//!   for byte the filter netd's builder makes for this key on this link
//!   (`ether dst MAC and ip dst host A and udp dst port P`, compiled by the same compiler),
//!   it accepts a frame iff every conjunct does (libpcap's `and`: a failed load rejects the
//!   whole), i.e. iff the frame's key is the binding's (the lookup just established that; the
//!   compiler's `binding` module proves the address-and-port part exact) and its first six
//!   bytes are the MAC. So the driver compares the MAC instead of running the program. With
//!   1,024 queues this matters: each confirmation would otherwise call a different queue's
//!   native code, a cold instruction cache line per frame.
//! - A key that disagrees with its program can therefore only *narrow* delivery: a frame the
//!   program accepts but whose key differs from the declared one is not delivered to that
//!   queue (it goes to netd's queue as unmatched, like any frame nobody takes). With keys
//!   that agree with their programs (netd's builders produce them together), the result is
//!   exactly the linear scan's; the equivalence test checks that on random filter sets.
//! - What the driver must take on trust is ownership: conflicts are decided by key, so a
//!   lying netd could claim a key to keep another queue's binding out. netd allocates the
//!   ports, so that is within what it is trusted with anyway.
//!
//! # Keys
//!
//! A binding with protocol TCP, UDP or SCTP goes into the tables: an IPv4 key (the first four
//! address bytes; the other twelve are ignored, as ownership ignores them), an IPv6 key, or,
//! when the address is all zeros, the family's address-less key (a wildcard bind; its program
//! still confirms). A binding of any other protocol runs after the tables like a tap, and
//! still takes part in ownership.
//!
//! # Ownership rules
//!
//! The same as [`super::LinearClassifier`] (see [`super::classify`]): one owner per key; an
//! exclusive claim is refused while any port binding exists, any binding is refused while a
//! claim exists, and a second claim is refused; refusals change nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmux_compiler::builders;
use netmux_compiler::classifier::program::{
    self, FLAG_ANY, FLAG_EXACT, MISS, SLOT_ANY, SLOT_EXACT,
};
use netmux_compiler::classifier::{Family, Key, Transport};
use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_vm::{Engine, Program, Scratch, Strategy, Verdict};

use super::classify::{check_ownership, Classifier, ClassifierError, RxFilter};

/// How a candidate frame of a table binding is confirmed.
enum Confirm {
    /// Run the binding's own verified program.
    Program(Box<dyn Engine>),
    /// The program is byte for byte netd's port filter for its key on this link (see
    /// [`is_netd_port_filter`]): it accepts exactly the frames with the key (which the lookup
    /// established) and this destination MAC.
    DestinationMac([u8; 6]),
}

impl Confirm {
    #[inline]
    fn accepts(&self, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> bool {
        match self {
            Confirm::Program(engine) => engine
                .run_with_scratch(frame, wire_len, scratch)
                .is_accept(),
            Confirm::DestinationMac(mac) => frame.get(..6) == Some(&mac[..]),
        }
    }
}

/// A filter whose key is in the tables; every candidate frame is confirmed before delivery.
struct Bound {
    queue: QueueId,
    /// Which table and which words: to remove the entry again.
    table: usize,
    words: Vec<u32>,
    /// The ownership key.
    owned: PortBinding,
    confirm: Confirm,
}

/// A filter run after the tables on every frame.
struct Other {
    queue: QueueId,
    filter: FilterId,
    mode: RxMode,
    /// The ownership key of an owner filter whose binding could not go into the tables.
    owned: Option<PortBinding>,
    engine: Box<dyn Engine>,
}

/// Where an installed filter is.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Table value (index into `MergedClassifier::bound`).
    Table(u32),
    /// Index into `MergedClassifier::others`.
    Other(usize),
}

/// The merged classifier, adapted to the driver's [`Classifier`] trait. See the module
/// documentation.
pub struct MergedClassifier {
    strategy: Strategy,
    /// The link's MAC, when known: port filters that are exactly netd's for it are confirmed
    /// by a MAC comparison instead of a program run.
    link_mac: Option<[u8; 6]>,
    /// The generic program on `strategy`'s engine, made when the first key goes in (so that a
    /// driver without the JIT reports `--engine jit` on the first install, like any filter).
    merged: Option<Box<dyn Engine>>,
    /// Table value `v` (from 1) is `bound[v]`; `bound[0]` stays empty (a miss).
    bound: Vec<Option<Bound>>,
    /// Values of empty entries of `bound`, to reuse.
    free: Vec<u32>,
    keys_bound: usize,
    others: Vec<Other>,
    /// How many of `others` are taps (the transmit path's observer scan skips the rest).
    taps: usize,
    where_is: HashMap<FilterId, Slot>,
    owners: HashMap<PortBinding, QueueId>,
    exclusive: Option<(QueueId, FilterId)>,
    scratch: Scratch,
}

impl std::fmt::Debug for MergedClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedClassifier")
            .field("strategy", &self.strategy)
            .field("keys_bound", &self.keys_bound)
            .field("others", &self.others.len())
            .field("exclusive", &self.exclusive)
            .finish_non_exhaustive()
    }
}

impl MergedClassifier {
    /// An empty classifier whose programs (the generic one and every filter) run on engines
    /// made with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            link_mac: None,
            merged: None,
            bound: vec![None],
            free: Vec::new(),
            keys_bound: 0,
            others: Vec::new(),
            taps: 0,
            where_is: HashMap::new(),
            owners: HashMap::new(),
            exclusive: None,
            scratch: Scratch::default(),
        }
    }

    /// The same, on a link with this MAC address: a port filter that is byte for byte the one
    /// netd builds for its key and this MAC is confirmed by comparing the frame's destination
    /// MAC instead of running the program (see the module documentation).
    pub fn for_link(strategy: Strategy, mac: [u8; 6]) -> Self {
        Self {
            link_mac: Some(mac),
            ..Self::new(strategy)
        }
    }

    /// Number of table bindings confirmed by a destination MAC comparison.
    pub fn confirmed_by_mac(&self) -> usize {
        self.bound
            .iter()
            .flatten()
            .filter(|b| matches!(b.confirm, Confirm::DestinationMac(_)))
            .count()
    }

    /// Number of filters whose key is in the hash tables.
    pub fn keys_bound(&self) -> usize {
        self.keys_bound
    }

    /// Number of filters run one by one after the tables.
    pub fn other_filters(&self) -> usize {
        self.others.len()
    }

    fn remove_at(&mut self, slot: Slot) {
        match slot {
            Slot::Table(value) => {
                let Some(entry) = self.bound.get_mut(value as usize).and_then(Option::take) else {
                    return;
                };
                if let Some(mut table) = self.merged.as_mut().and_then(|m| m.table_mut(entry.table))
                {
                    table.remove(&entry.words);
                }
                self.owners.remove(&entry.owned);
                self.free.push(value);
                self.keys_bound -= 1;
            }
            Slot::Other(index) => {
                if index >= self.others.len() {
                    return;
                }
                let removed = self.others.swap_remove(index);
                if removed.mode == RxMode::Tap {
                    self.taps -= 1;
                }
                if let Some(key) = removed.owned {
                    self.owners.remove(&key);
                }
                if self.exclusive == Some((removed.queue, removed.filter)) {
                    self.exclusive = None;
                }
                if let Some(moved) = self.others.get(index) {
                    self.where_is.insert(moved.filter, Slot::Other(index));
                }
            }
        }
    }

    fn queue_of(&self, slot: Slot) -> Option<QueueId> {
        match slot {
            Slot::Table(v) => self
                .bound
                .get(v as usize)
                .and_then(Option::as_ref)
                .map(|b| b.queue),
            Slot::Other(i) => self.others.get(i).map(|o| o.queue),
        }
    }

    /// Confirms the candidate at table value `value` and reports its queue if it accepts.
    fn confirm(&mut self, value: u32, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        if let Some(Some(b)) = self.bound.get(value as usize) {
            if b.confirm.accepts(frame, wire_len, &mut self.scratch) {
                out.push(b.queue);
            }
        }
    }
}

/// Whether `program` is byte for byte what netd installs for `key` on a link with `mac`: the
/// compiler's `rx_port_expr` (`ether dst MAC and ip|ip6 dst host A and tcp|udp dst port P`),
/// compiled with the default options. netd and the driver are built from one workspace, so
/// netd's filters match; any other program (another compiler version, options, shape) is
/// simply run as it is.
fn is_netd_port_filter(program: &Program, key: &Key, mac: [u8; 6]) -> bool {
    let (ip, proto, port) = match *key {
        Key::V4 { proto, addr, port } => (IpAddr::V4(addr), proto, port),
        Key::V6 { proto, addr, port } => (IpAddr::V6(addr), proto, port),
        Key::AnyAddr { .. } => return false,
    };
    let transport = match proto {
        Transport::Tcp => builders::Transport::Tcp,
        Transport::Udp => builders::Transport::Udp,
        Transport::Sctp => return false,
    };
    let expr = builders::rx_port_expr(&builders::Binding {
        mac,
        ip,
        transport,
        port,
    });
    netmux_compiler::compile(&expr, &netmux_compiler::Options::default())
        .is_ok_and(|canonical| canonical.to_bytes() == program.to_bytes())
}

/// The table key of a driver binding, or `None` when its protocol has no table.
pub fn table_key(binding: &PortBinding) -> Option<Key> {
    let proto = Transport::from_number(u32::from(binding.protocol))?;
    let port = binding.port;
    let key = if binding.ipv6 {
        if binding.address == [0; 16] {
            Key::AnyAddr {
                family: Family::V6,
                proto,
                port,
            }
        } else {
            Key::V6 {
                proto,
                addr: Ipv6Addr::from(binding.address),
                port,
            }
        }
    } else {
        let a = [
            binding.address[0],
            binding.address[1],
            binding.address[2],
            binding.address[3],
        ];
        if a == [0; 4] {
            Key::AnyAddr {
                family: Family::V4,
                proto,
                port,
            }
        } else {
            Key::V4 {
                proto,
                addr: Ipv4Addr::from(a),
                port,
            }
        }
    };
    Some(key)
}

impl Classifier for MergedClassifier {
    fn install(&mut self, filter: RxFilter) -> Result<(), ClassifierError> {
        if self.where_is.contains_key(&filter.filter) {
            return Err(ClassifierError::DuplicateFilter(filter.filter));
        }
        let owned = check_ownership(&filter, &self.owners, self.exclusive)?;
        let table_entry = owned.and_then(|o| table_key(&o).map(|k| (o, k)));
        match table_entry {
            Some((owned, key)) => {
                let (table, words) = program::encode(&key);
                let confirm = match self.link_mac {
                    Some(mac) if is_netd_port_filter(&filter.program, &key, mac) => {
                        Confirm::DestinationMac(mac)
                    }
                    _ => Confirm::Program(netmux_vm::engine(filter.program, self.strategy)?),
                };
                let merged = match &mut self.merged {
                    Some(m) => m,
                    slot @ None => slot.insert(netmux_vm::engine(program::build(), self.strategy)?),
                };
                // Ownership is by key, and equal ownership keys are equal table keys, so the
                // entry is absent; a full table is the one way the insert fails.
                let value = match self.free.last() {
                    Some(&v) => v,
                    None => {
                        u32::try_from(self.bound.len()).map_err(|_| ClassifierError::TablesFull)?
                    }
                };
                let mut t = merged.table_mut(table).ok_or(ClassifierError::TablesFull)?;
                t.insert(&words, value)
                    .map_err(|_| ClassifierError::TablesFull)?;
                let entry = Bound {
                    queue: filter.queue,
                    table,
                    words,
                    owned,
                    confirm,
                };
                if self.free.pop().is_some() {
                    self.bound[value as usize] = Some(entry);
                } else {
                    self.bound.push(Some(entry));
                }
                self.keys_bound += 1;
                self.owners.insert(owned, filter.queue);
                self.where_is.insert(filter.filter, Slot::Table(value));
            }
            None => {
                let engine = netmux_vm::engine(filter.program, self.strategy)?;
                if let Some(key) = owned {
                    self.owners.insert(key, filter.queue);
                }
                if filter.mode == RxMode::Exclusive {
                    self.exclusive = Some((filter.queue, filter.filter));
                }
                self.taps += usize::from(filter.mode == RxMode::Tap);
                self.where_is
                    .insert(filter.filter, Slot::Other(self.others.len()));
                self.others.push(Other {
                    queue: filter.queue,
                    filter: filter.filter,
                    mode: filter.mode,
                    owned,
                    engine,
                });
            }
        }
        Ok(())
    }

    fn remove(&mut self, queue: QueueId, filter: FilterId) -> Result<(), ClassifierError> {
        let slot = self
            .where_is
            .get(&filter)
            .copied()
            .filter(|&s| self.queue_of(s) == Some(queue))
            .ok_or(ClassifierError::NotFound(queue, filter))?;
        self.where_is.remove(&filter);
        self.remove_at(slot);
        Ok(())
    }

    fn remove_queue(&mut self, queue: QueueId) {
        let mine: Vec<FilterId> = self
            .where_is
            .iter()
            .filter(|(_, &s)| self.queue_of(s) == Some(queue))
            .map(|(&f, _)| f)
            .collect();
        for filter in mine {
            // Each was just found on this queue.
            let _ = self.remove(queue, filter);
        }
    }

    fn classify(&mut self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        if self.keys_bound > 0 {
            if let Some(merged) = &self.merged {
                // The generic program reads the captured length as its frame length: see
                // `netmux_compiler::classifier::program`.
                let captured = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                if let Verdict::Accept(flags) =
                    merged.run_with_scratch(frame, captured, &mut self.scratch)
                {
                    let exact = if flags & FLAG_EXACT != 0 {
                        self.scratch[SLOT_EXACT]
                    } else {
                        MISS
                    };
                    let any = if flags & FLAG_ANY != 0 {
                        self.scratch[SLOT_ANY]
                    } else {
                        MISS
                    };
                    if exact != MISS {
                        self.confirm(exact, frame, wire_len, out);
                    }
                    if any != MISS {
                        self.confirm(any, frame, wire_len, out);
                    }
                }
            }
        }
        for o in &self.others {
            if o.engine
                .run_with_scratch(frame, wire_len, &mut self.scratch)
                .is_accept()
            {
                out.push(o.queue);
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    fn observers(&mut self, frame: &[u8], wire_len: u32, sender: QueueId, out: &mut Vec<QueueId>) {
        if self.taps == 0 {
            return;
        }
        for o in &self.others {
            if o.mode == RxMode::Tap
                && o.queue != sender
                && o.engine
                    .run_with_scratch(frame, wire_len, &mut self.scratch)
                    .is_accept()
            {
                out.push(o.queue);
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    fn len(&self) -> usize {
        self.where_is.len()
    }
}
