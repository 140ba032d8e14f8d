//! Classification: which queues receive a frame.
//!
//! [`Classifier`] is the one interface the receive path uses: install and remove rx filters
//! (each tagged with its queue, its [`RxMode`] and, for port bindings, the [`PortBinding`] key),
//! and `classify(frame)` into the set of receiving queues. [`LinearClassifier`] runs every
//! queue's verified rx filters one by one: it is the reference. The driver's default is
//! [`super::merged::MergedClassifier`] (one generic program, one hash lookup for all port
//! bindings); the equivalence test (`driver/tests/daemon_classifier.rs`) checks that the two
//! give the same queues on random filter sets and frames.
//!
//! # Guarantees every implementation keeps
//!
//! - **Set semantics.** The result holds each receiving queue once, in no particular order:
//!   a queue receives a frame when any of its rx filters accepts it, whatever its mode.
//! - **Ownership.** No two filters own the same (protocol, address, port) binding: a
//!   conflicting install is refused with [`ClassifierError::BindingInUse`]. An exclusive claim
//!   of the link (an [`RxMode::Exclusive`] filter) is refused while any port binding exists,
//!   the claimant's own included ([`ClassifierError::BindingsExist`]); port bindings, and a
//!   second claim, are refused while a claim exists, the claimant's own included
//!   ([`ClassifierError::ExclusiveHeld`]). Refusals change nothing. This is issue #5's rule as
//!   the compiler's classifier states it; the driver once exempted the claimant's own
//!   bindings, which let one queue hold both and made "exclusive" depend on who asked.
//! - **Taps observe, never their own.** [`Classifier::observers`] gives the tap queues that
//!   want a frame some queue transmitted, never the transmitting queue itself.
//! - **No panics** on any frame; programs are verified, so they terminate and every load is
//!   checked.

use std::collections::HashMap;

use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_vm::{Engine, EngineError, Program, Scratch, Strategy};

/// One rx filter as the driver hands it to a classifier: already verified.
#[derive(Debug)]
pub struct RxFilter {
    /// The receiving queue.
    pub queue: QueueId,
    /// The filter's id (unique per driver).
    pub filter: FilterId,
    /// Owner, tap or exclusive.
    pub mode: RxMode,
    /// For port-binding filters, the key of the binding.
    pub binding: Option<PortBinding>,
    /// The verified program.
    pub program: Program,
}

/// Why a classifier refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifierError {
    /// Another queue owns this (protocol, address, port).
    #[error("the binding is owned by queue {0:?}")]
    BindingInUse(QueueId),
    /// A queue holds an exclusive claim of the link; no port binding can be added.
    #[error("queue {0:?} holds an exclusive claim of the link")]
    ExclusiveHeld(QueueId),
    /// An exclusive claim was asked while port bindings exist.
    #[error("the link cannot be claimed exclusively while port bindings exist")]
    BindingsExist,
    /// The filter id is already installed.
    #[error("filter {0:?} is already installed")]
    DuplicateFilter(FilterId),
    /// No such filter on that queue.
    #[error("no filter {1:?} on queue {0:?}")]
    NotFound(QueueId, FilterId),
    /// No engine could be made for the program.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The merged classifier's binding table is full.
    #[error("the binding table is full")]
    TablesFull,
}

/// Decides which queues receive a frame. See the module documentation for the rules.
pub trait Classifier: Send {
    /// Installs an rx filter.
    fn install(&mut self, filter: RxFilter) -> Result<(), ClassifierError>;

    /// Removes one filter; when this returns, the filter no longer matches anything.
    fn remove(&mut self, queue: QueueId, filter: FilterId) -> Result<(), ClassifierError>;

    /// Removes every filter of `queue` (the queue is going away).
    fn remove_queue(&mut self, queue: QueueId);

    /// Appends to `out` every queue that receives `frame` (captured bytes; `wire_len` is its
    /// length on the wire), each once. `out` is empty on entry.
    fn classify(&mut self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>);

    /// Appends to `out` every tap queue that observes `frame`, transmitted by `sender`; never
    /// `sender` itself. `out` is empty on entry.
    fn observers(&mut self, frame: &[u8], wire_len: u32, sender: QueueId, out: &mut Vec<QueueId>);

    /// Number of installed filters.
    fn len(&self) -> usize;

    /// Whether no filter is installed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Installed {
    filter: FilterId,
    mode: RxMode,
    binding: Option<PortBinding>,
    engine: Box<dyn Engine>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed")
            .field("filter", &self.filter)
            .field("mode", &self.mode)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

/// One queue's filters, so a queue is reported once however many of its filters match.
#[derive(Debug)]
struct QueueFilters {
    queue: QueueId,
    filters: Vec<Installed>,
    /// Whether any filter is a tap (so the tx-observation scan skips the others quickly).
    taps: usize,
}

/// Runs every queue's rx filters one after another: cost grows with the number of filters.
/// The reference the merged classifier must equal, frame by frame.
#[derive(Debug)]
pub struct LinearClassifier {
    strategy: Strategy,
    queues: Vec<QueueFilters>,
    /// Port bindings and their owners (the ownership rules).
    owners: HashMap<PortBinding, QueueId>,
    exclusive: Option<(QueueId, FilterId)>,
    count: usize,
    scratch: Scratch,
}

impl LinearClassifier {
    /// An empty classifier whose programs run on engines made with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            queues: Vec::new(),
            owners: HashMap::new(),
            exclusive: None,
            count: 0,
            scratch: Scratch::default(),
        }
    }

    fn has_filter(&self, id: FilterId) -> bool {
        self.queues
            .iter()
            .any(|q| q.filters.iter().any(|f| f.filter == id))
    }
}

/// The ownership rules of the module documentation, checked before a classifier changes
/// anything, so that every classifier enforces the same rule: `owners` are the bindings owned
/// now, `exclusive` the current claim. Gives the binding `filter` would own (an owner filter
/// with a binding), if any.
pub(crate) fn check_ownership(
    filter: &RxFilter,
    owners: &HashMap<PortBinding, QueueId>,
    exclusive: Option<(QueueId, FilterId)>,
) -> Result<Option<PortBinding>, ClassifierError> {
    let owned = match (filter.mode, filter.binding) {
        (RxMode::Owner, Some(binding)) => Some(binding_key(&binding)),
        _ => None,
    };
    if let Some(key) = &owned {
        if let Some((holder, _)) = exclusive {
            return Err(ClassifierError::ExclusiveHeld(holder));
        }
        if let Some(&owner) = owners.get(key) {
            return Err(ClassifierError::BindingInUse(owner));
        }
    }
    if filter.mode == RxMode::Exclusive {
        if let Some((holder, _)) = exclusive {
            return Err(ClassifierError::ExclusiveHeld(holder));
        }
        if !owners.is_empty() {
            return Err(ClassifierError::BindingsExist);
        }
    }
    Ok(owned)
}

/// The ownership key of a binding: an IPv4 address keeps only its first four bytes.
pub(crate) fn binding_key(binding: &PortBinding) -> PortBinding {
    let mut key = *binding;
    if !key.ipv6 {
        key.address[4..].fill(0);
    }
    key
}

impl Classifier for LinearClassifier {
    fn install(&mut self, filter: RxFilter) -> Result<(), ClassifierError> {
        if self.has_filter(filter.filter) {
            return Err(ClassifierError::DuplicateFilter(filter.filter));
        }
        let owned_binding = check_ownership(&filter, &self.owners, self.exclusive)?;
        let engine = netmux_vm::engine(filter.program, self.strategy)?;
        if let Some(key) = owned_binding {
            self.owners.insert(key, filter.queue);
        }
        if filter.mode == RxMode::Exclusive {
            self.exclusive = Some((filter.queue, filter.filter));
        }
        let installed = Installed {
            filter: filter.filter,
            mode: filter.mode,
            binding: owned_binding,
            engine,
        };
        let tap = usize::from(filter.mode == RxMode::Tap);
        match self.queues.iter_mut().find(|q| q.queue == filter.queue) {
            Some(q) => {
                q.filters.push(installed);
                q.taps += tap;
            }
            None => self.queues.push(QueueFilters {
                queue: filter.queue,
                filters: vec![installed],
                taps: tap,
            }),
        }
        self.count += 1;
        Ok(())
    }

    fn remove(&mut self, queue: QueueId, filter: FilterId) -> Result<(), ClassifierError> {
        let not_found = ClassifierError::NotFound(queue, filter);
        let qi = self
            .queues
            .iter()
            .position(|q| q.queue == queue)
            .ok_or(not_found.clone())?;
        let q = &mut self.queues[qi];
        let fi = q
            .filters
            .iter()
            .position(|f| f.filter == filter)
            .ok_or(not_found)?;
        let removed = q.filters.remove(fi);
        if removed.mode == RxMode::Tap {
            q.taps -= 1;
        }
        if q.filters.is_empty() {
            self.queues.remove(qi);
        }
        if let Some(key) = removed.binding {
            self.owners.remove(&key);
        }
        if self.exclusive == Some((queue, filter)) {
            self.exclusive = None;
        }
        self.count -= 1;
        Ok(())
    }

    fn remove_queue(&mut self, queue: QueueId) {
        if let Some(qi) = self.queues.iter().position(|q| q.queue == queue) {
            let q = self.queues.remove(qi);
            self.count -= q.filters.len();
        }
        self.owners.retain(|_, owner| *owner != queue);
        if matches!(self.exclusive, Some((holder, _)) if holder == queue) {
            self.exclusive = None;
        }
    }

    fn classify(&mut self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        for q in &self.queues {
            if q.filters.iter().any(|f| {
                f.engine
                    .run_with_scratch(frame, wire_len, &mut self.scratch)
                    .is_accept()
            }) {
                out.push(q.queue);
            }
        }
    }

    fn observers(&mut self, frame: &[u8], wire_len: u32, sender: QueueId, out: &mut Vec<QueueId>) {
        for q in &self.queues {
            if q.taps == 0 || q.queue == sender {
                continue;
            }
            if q.filters.iter().any(|f| {
                f.mode == RxMode::Tap
                    && f.engine
                        .run_with_scratch(frame, wire_len, &mut self.scratch)
                        .is_accept()
            }) {
                out.push(q.queue);
            }
        }
    }

    fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(text: &str) -> Program {
        netmux_vm::verify(&netmux_vm::asm::assemble(text).unwrap()).unwrap()
    }

    /// Accepts frames whose first byte is `b`.
    fn first_byte(b: u8) -> Program {
        program(&format!("ldb r0, [0]\njeq r0, {b}, +1\nreject\naccept 1\n"))
    }

    fn binding(port: u16) -> PortBinding {
        PortBinding {
            protocol: 17,
            address: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ipv6: false,
            port,
        }
    }

    fn filter(queue: u32, id: u64, mode: RxMode, port: Option<u16>, p: Program) -> RxFilter {
        RxFilter {
            queue: QueueId(queue),
            filter: FilterId(id),
            mode,
            binding: port.map(binding),
            program: p,
        }
    }

    fn classify(c: &mut LinearClassifier, frame: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        c.classify(frame, frame.len() as u32, &mut out);
        let mut ids: Vec<u32> = out.iter().map(|q| q.0).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_queue_is_reported_once_however_many_of_its_filters_match() {
        let mut c = LinearClassifier::new(Strategy::Interpreter);
        c.install(filter(1, 1, RxMode::Owner, None, first_byte(7)))
            .unwrap();
        c.install(filter(1, 2, RxMode::Tap, None, first_byte(7)))
            .unwrap();
        c.install(filter(2, 3, RxMode::Tap, None, first_byte(7)))
            .unwrap();
        c.install(filter(3, 4, RxMode::Owner, None, first_byte(8)))
            .unwrap();
        assert_eq!(classify(&mut c, &[7]), vec![1, 2]);
        assert_eq!(classify(&mut c, &[8]), vec![3]);
        assert_eq!(classify(&mut c, &[]), Vec::<u32>::new());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn a_binding_has_one_owner_and_a_refused_install_changes_nothing() {
        let mut c = LinearClassifier::new(Strategy::Interpreter);
        c.install(filter(1, 1, RxMode::Owner, Some(53), first_byte(1)))
            .unwrap();
        assert_eq!(
            c.install(filter(2, 2, RxMode::Owner, Some(53), first_byte(2))),
            Err(ClassifierError::BindingInUse(QueueId(1)))
        );
        assert_eq!(classify(&mut c, &[2]), Vec::<u32>::new());
        assert_eq!(
            c.install(filter(2, 1, RxMode::Owner, None, first_byte(2))),
            Err(ClassifierError::DuplicateFilter(FilterId(1)))
        );
        c.remove(QueueId(1), FilterId(1)).unwrap();
        c.install(filter(2, 2, RxMode::Owner, Some(53), first_byte(2)))
            .unwrap();
        assert_eq!(classify(&mut c, &[2]), vec![2]);
    }

    #[test]
    fn exclusive_claims_and_port_bindings_exclude_each_other() {
        let mut c = LinearClassifier::new(Strategy::Interpreter);
        c.install(filter(1, 1, RxMode::Owner, Some(53), first_byte(1)))
            .unwrap();
        assert_eq!(
            c.install(filter(2, 2, RxMode::Exclusive, None, first_byte(2))),
            Err(ClassifierError::BindingsExist)
        );
        c.remove_queue(QueueId(1));
        assert!(c.is_empty());
        c.install(filter(2, 2, RxMode::Exclusive, None, first_byte(2)))
            .unwrap();
        assert_eq!(
            c.install(filter(3, 3, RxMode::Owner, Some(80), first_byte(3))),
            Err(ClassifierError::ExclusiveHeld(QueueId(2)))
        );
        assert_eq!(
            c.install(filter(3, 4, RxMode::Exclusive, None, first_byte(3))),
            Err(ClassifierError::ExclusiveHeld(QueueId(2)))
        );
        c.remove(QueueId(2), FilterId(2)).unwrap();
        c.install(filter(3, 3, RxMode::Owner, Some(80), first_byte(3)))
            .unwrap();
    }

    #[test]
    fn removing_an_unknown_filter_is_not_found() {
        let mut c = LinearClassifier::new(Strategy::Interpreter);
        c.install(filter(1, 1, RxMode::Owner, None, first_byte(1)))
            .unwrap();
        assert_eq!(
            c.remove(QueueId(2), FilterId(1)),
            Err(ClassifierError::NotFound(QueueId(2), FilterId(1)))
        );
        assert_eq!(
            c.remove(QueueId(1), FilterId(9)),
            Err(ClassifierError::NotFound(QueueId(1), FilterId(9)))
        );
    }

    #[test]
    fn observers_are_taps_other_than_the_sender() {
        let mut c = LinearClassifier::new(Strategy::Interpreter);
        c.install(filter(1, 1, RxMode::Tap, None, first_byte(5)))
            .unwrap();
        c.install(filter(2, 2, RxMode::Tap, None, first_byte(5)))
            .unwrap();
        c.install(filter(3, 3, RxMode::Owner, None, first_byte(5)))
            .unwrap();
        let mut out = Vec::new();
        c.observers(&[5], 1, QueueId(1), &mut out);
        assert_eq!(out, vec![QueueId(2)]);
    }
}
