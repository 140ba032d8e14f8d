//! The merged classifier: one generic program and three hash tables for every port binding,
//! then the filters that are not bindings. See the crate documentation for the rules.

use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_vm::{Engine, Scratch, Strategy, Verdict};
use rustc_hash::FxHashMap;

use crate::key::Key;
use crate::port_filter;
use crate::program::{self, FLAG_ANY, FLAG_EXACT, MISS, SLOT_ANY, SLOT_EXACT};
use crate::rules::{finish, ClassifierError, Classify, Owners, Ownership, RxFilter};

/// How a candidate frame of a table binding is confirmed.
enum Confirm {
    /// Run the binding's own verified program.
    Program(Box<dyn Engine>),
    /// The program is byte for byte the port filter of its key for this MAC
    /// ([`port_filter::destination_mac`]): it accepts exactly the frames with the key (which
    /// the lookup established) and this destination MAC.
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

/// A filter whose key is in the tables.
struct Candidate {
    queue: QueueId,
    filter: FilterId,
    /// The ownership key it holds.
    owned: PortBinding,
    confirm: Confirm,
}

/// One table entry: its key's place, and the filters bound to it (one, unless
/// [`Ownership::Shared`] lets several bind a key).
struct Entry {
    table: usize,
    words: Vec<u32>,
    first: Candidate,
    more: Vec<Candidate>,
}

/// A filter run after the tables on every frame.
struct Other {
    queue: QueueId,
    filter: FilterId,
    mode: RxMode,
    /// The ownership key of an owner filter whose binding has no table (a protocol without
    /// ports).
    owned: Option<PortBinding>,
    engine: Box<dyn Engine>,
}

/// Where an installed filter is.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Table value (index into `Classifier::entries`).
    Table(u32),
    /// Index into `Classifier::others`.
    Other(usize),
    /// Held only ([`Classify::hold`]): in `Classifier::held`.
    Held,
}

/// The merged classifier. See the crate documentation.
pub struct Classifier {
    strategy: Strategy,
    /// The link's MAC, when known: port filters that are exactly [`port_filter::program`] for
    /// it or for a group MAC are confirmed by a MAC comparison instead of a program run.
    link_mac: Option<[u8; 6]>,
    /// The generic program on `strategy`'s engine, made when the first key goes in (so that a
    /// driver without the JIT reports `--engine jit` on the first install, like any filter).
    merged: Option<Box<dyn Engine>>,
    /// Table value `v` (from 1) is `entries[v]`; `entries[0]` stays empty (a miss).
    entries: Vec<Option<Entry>>,
    /// Values of empty entries, to reuse.
    free: Vec<u32>,
    /// Number of filters in the tables.
    bound: usize,
    others: Vec<Other>,
    /// How many of `others` are taps (the transmit path's observer scan skips the rest).
    taps: usize,
    /// Keyed by netd's filter ids (not chosen by clients), so a fast hash is safe.
    where_is: FxHashMap<FilterId, Slot>,
    /// Filters held only, with their queue and what they own.
    held: FxHashMap<FilterId, (QueueId, Option<PortBinding>)>,
    owners: Owners,
    scratch: Scratch,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("strategy", &self.strategy)
            .field("bound", &self.bound)
            .field("others", &self.others.len())
            .field("exclusive", &self.owners.exclusive)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// An empty classifier with the driver's rule ([`Ownership::OneOwnerPerKey`]), its
    /// programs (the generic one and every filter) on engines made with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self::with_ownership(strategy, Ownership::OneOwnerPerKey)
    }

    /// The same, on a link with this MAC address: a port filter that is byte for byte
    /// [`port_filter::program`] of its key and this MAC, or a group MAC (netd's broadcast and
    /// multicast port filters), is confirmed by comparing the frame's destination MAC instead
    /// of running the program.
    pub fn for_link(strategy: Strategy, mac: [u8; 6]) -> Self {
        Self {
            link_mac: Some(mac),
            ..Self::new(strategy)
        }
    }

    /// An empty classifier with the given ownership rule.
    pub fn with_ownership(strategy: Strategy, ownership: Ownership) -> Self {
        Self {
            strategy,
            link_mac: None,
            merged: None,
            entries: vec![None],
            free: Vec::new(),
            bound: 0,
            others: Vec::new(),
            taps: 0,
            where_is: FxHashMap::default(),
            held: FxHashMap::default(),
            owners: Owners::new(ownership),
            scratch: Scratch::default(),
        }
    }

    /// The ownership rule.
    pub fn ownership(&self) -> Ownership {
        self.owners.ownership
    }

    /// Number of filters whose key is in the hash tables.
    pub fn table_filters(&self) -> usize {
        self.bound
    }

    /// Number of distinct keys in the hash tables.
    pub fn keys_bound(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// Number of filters run one by one after the tables.
    pub fn other_filters(&self) -> usize {
        self.others.len()
    }

    /// Number of table bindings confirmed by a destination MAC comparison.
    pub fn confirmed_by_mac(&self) -> usize {
        self.entries
            .iter()
            .flatten()
            .flat_map(|e| std::iter::once(&e.first).chain(&e.more))
            .filter(|c| matches!(c.confirm, Confirm::DestinationMac(_)))
            .count()
    }

    /// The queue holding an exclusive claim of the link, if one does.
    pub fn exclusive_owner(&self) -> Option<QueueId> {
        self.owners.exclusive.map(|(q, _)| q)
    }

    /// The generic program as it runs now (its tables hold the bindings), once a binding was
    /// installed.
    pub fn program(&self) -> Option<&netmux_vm::Program> {
        self.merged.as_ref().map(|m| m.program())
    }

    /// Whether `filter` went into the tables (`Some(true)`), runs after them or is held only
    /// (`Some(false)`), or is not installed (`None`).
    pub fn in_tables(&self, filter: FilterId) -> Option<bool> {
        self.where_is
            .get(&filter)
            .map(|s| matches!(s, Slot::Table(_)))
    }

    fn value_of(&self, table: usize, words: &[u32]) -> u32 {
        self.merged
            .as_ref()
            .and_then(|m| m.program().tables().get(table))
            .map_or(MISS, |t| t.get(words))
    }

    fn install_bound(
        &mut self,
        filter: RxFilter,
        owned: PortBinding,
        key: Key,
    ) -> Result<(), ClassifierError> {
        let (table, words) = program::encode(&key);
        // A link receives frames to its own MAC and to group addresses (netd's broadcast and
        // multicast port filters): a port filter for either is confirmed by its MAC.
        let recognised = self.link_mac.and_then(|link| {
            port_filter::destination_mac(&filter.program, &key)
                .filter(|&mac| mac == link || mac[0] & 1 != 0)
        });
        let confirm = match recognised {
            Some(mac) => Confirm::DestinationMac(mac),
            None => Confirm::Program(netmux_vm::engine(filter.program, self.strategy)?),
        };
        if self.merged.is_none() {
            self.merged = Some(netmux_vm::engine(program::build(), self.strategy)?);
        }
        let candidate = Candidate {
            queue: filter.queue,
            filter: filter.filter,
            owned,
            confirm,
        };
        let existing = self.value_of(table, &words);
        let value = if existing != MISS {
            // Only under shared ownership: the rules refused a second owner otherwise.
            match self.entries.get_mut(existing as usize) {
                Some(Some(entry)) => entry.more.push(candidate),
                _ => return Err(ClassifierError::TablesFull),
            }
            existing
        } else {
            let value = match self.free.last() {
                Some(&v) => v,
                None => {
                    u32::try_from(self.entries.len()).map_err(|_| ClassifierError::TablesFull)?
                }
            };
            let merged = self.merged.as_mut().ok_or(ClassifierError::TablesFull)?;
            let mut t = merged.table_mut(table).ok_or(ClassifierError::TablesFull)?;
            t.insert(&words, value)
                .map_err(|_| ClassifierError::TablesFull)?;
            let entry = Entry {
                table,
                words,
                first: candidate,
                more: Vec::new(),
            };
            if self.free.pop().is_some() {
                self.entries[value as usize] = Some(entry);
            } else {
                self.entries.push(Some(entry));
            }
            value
        };
        self.bound += 1;
        self.where_is.insert(filter.filter, Slot::Table(value));
        Ok(())
    }

    fn remove_at(&mut self, filter: FilterId, slot: Slot) {
        match slot {
            Slot::Table(value) => {
                let Some(Some(entry)) = self.entries.get_mut(value as usize) else {
                    return;
                };
                let removed = if entry.first.filter == filter {
                    if entry.more.is_empty() {
                        None
                    } else {
                        Some(std::mem::replace(&mut entry.first, entry.more.remove(0)))
                    }
                } else {
                    match entry.more.iter().position(|c| c.filter == filter) {
                        Some(i) => Some(entry.more.remove(i)),
                        None => return,
                    }
                };
                let removed = match removed {
                    Some(c) => c,
                    None => {
                        // The last candidate: the key leaves the tables.
                        let Some(entry) = self.entries[value as usize].take() else {
                            return;
                        };
                        if let Some(mut t) =
                            self.merged.as_mut().and_then(|m| m.table_mut(entry.table))
                        {
                            t.remove(&entry.words);
                        }
                        self.free.push(value);
                        entry.first
                    }
                };
                self.owners
                    .release(removed.queue, removed.filter, Some(removed.owned));
                self.bound -= 1;
            }
            Slot::Other(index) => {
                if index >= self.others.len() {
                    return;
                }
                let removed = self.others.swap_remove(index);
                if removed.mode == RxMode::Tap {
                    self.taps -= 1;
                }
                self.owners
                    .release(removed.queue, removed.filter, removed.owned);
                if let Some(moved) = self.others.get(index) {
                    self.where_is.insert(moved.filter, Slot::Other(index));
                }
            }
            Slot::Held => {
                if let Some((queue, owned)) = self.held.remove(&filter) {
                    self.owners.release(queue, filter, owned);
                }
            }
        }
    }

    fn queue_of(&self, filter: FilterId, slot: Slot) -> Option<QueueId> {
        match slot {
            Slot::Table(v) => self
                .entries
                .get(v as usize)
                .and_then(Option::as_ref)
                .and_then(|e| {
                    std::iter::once(&e.first)
                        .chain(&e.more)
                        .find(|c| c.filter == filter)
                })
                .map(|c| c.queue),
            Slot::Other(i) => self.others.get(i).map(|o| o.queue),
            Slot::Held => self.held.get(&filter).map(|&(q, _)| q),
        }
    }

    /// Confirms the candidates at table value `value`; reports the queue of each that accepts.
    #[inline]
    fn confirm(&mut self, value: u32, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        if let Some(Some(e)) = self.entries.get(value as usize) {
            if e.first.confirm.accepts(frame, wire_len, &mut self.scratch) {
                out.push(e.first.queue);
            }
            for c in &e.more {
                if c.confirm.accepts(frame, wire_len, &mut self.scratch) {
                    out.push(c.queue);
                }
            }
        }
    }
}

impl Classify for Classifier {
    fn install(&mut self, filter: RxFilter) -> Result<(), ClassifierError> {
        if self.where_is.contains_key(&filter.filter) {
            return Err(ClassifierError::DuplicateFilter(filter.filter));
        }
        let owned = self.owners.check(&filter)?;
        let (queue, id, mode) = (filter.queue, filter.filter, filter.mode);
        match owned.and_then(|o| Key::of(&o).map(|k| (o, k))) {
            Some((o, key)) => self.install_bound(filter, o, key)?,
            None => {
                let engine = netmux_vm::engine(filter.program, self.strategy)?;
                self.taps += usize::from(mode == RxMode::Tap);
                self.where_is.insert(id, Slot::Other(self.others.len()));
                self.others.push(Other {
                    queue,
                    filter: id,
                    mode,
                    owned,
                    engine,
                });
            }
        }
        self.owners.take(queue, id, mode, owned);
        Ok(())
    }

    fn hold(&mut self, filter: &RxFilter) -> Result<(), ClassifierError> {
        if self.where_is.contains_key(&filter.filter) {
            return Err(ClassifierError::DuplicateFilter(filter.filter));
        }
        let owned = self.owners.check(filter)?;
        self.where_is.insert(filter.filter, Slot::Held);
        self.held.insert(filter.filter, (filter.queue, owned));
        self.owners
            .take(filter.queue, filter.filter, filter.mode, owned);
        Ok(())
    }

    fn remove(&mut self, queue: QueueId, filter: FilterId) -> Result<(), ClassifierError> {
        let slot = self
            .where_is
            .get(&filter)
            .copied()
            .filter(|&s| self.queue_of(filter, s) == Some(queue))
            .ok_or(ClassifierError::NotFound(queue, filter))?;
        self.where_is.remove(&filter);
        self.remove_at(filter, slot);
        Ok(())
    }

    fn remove_queue(&mut self, queue: QueueId) {
        let mine: Vec<FilterId> = self
            .where_is
            .iter()
            .filter(|(&f, &s)| self.queue_of(f, s) == Some(queue))
            .map(|(&f, _)| f)
            .collect();
        for filter in mine {
            // Each was just found on this queue.
            let _ = self.remove(queue, filter);
        }
    }

    fn classify(&mut self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        if self.bound > 0 {
            if let Some(merged) = &self.merged {
                // The generic program reads the captured length as its frame length: see
                // `program`.
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
        finish(out);
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
        finish(out);
    }

    fn len(&self) -> usize {
        self.where_is.len()
    }
}
