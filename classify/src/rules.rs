//! What every classifier in this crate promises: the interface, the filter it installs, and
//! the ownership rules, checked in one function before anything changes.

use std::collections::HashMap;

use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_vm::{EngineError, Program};

/// One rx filter as the driver hands it to a classifier: already verified.
#[derive(Debug, Clone)]
pub struct RxFilter {
    /// The receiving queue.
    pub queue: QueueId,
    /// The filter's id (unique per classifier).
    pub filter: FilterId,
    /// Owner, tap or exclusive.
    pub mode: RxMode,
    /// For port-binding filters, the key of the binding.
    pub binding: Option<PortBinding>,
    /// The verified program.
    pub program: Program,
}

/// Who may bind a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ownership {
    /// One owner per (protocol, address, port): a second owner filter of a key is refused
    /// (the driver's rule: netd hands each port to one client).
    #[default]
    OneOwnerPerKey,
    /// Any number of filters may bind one key and every one whose program accepts receives
    /// (for tools that ask which of many overlapping rules accept a frame).
    Shared,
}

/// Why a classifier refused a change. A refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifierError {
    /// Another queue owns this (protocol, address, port).
    #[error("the binding is owned by queue {}", .0 .0)]
    BindingInUse(QueueId),
    /// A queue holds an exclusive claim of the link; no port binding and no second claim can
    /// be added.
    #[error("queue {} holds an exclusive claim of the link", .0 .0)]
    ExclusiveHeld(QueueId),
    /// An exclusive claim was asked while port bindings exist.
    #[error("the link cannot be claimed exclusively while port bindings exist")]
    BindingsExist,
    /// The filter id is already installed.
    #[error("filter {} is already installed", .0 .0)]
    DuplicateFilter(FilterId),
    /// No such filter on that queue.
    #[error("no filter {} on queue {}", .1 .0, .0 .0)]
    NotFound(QueueId, FilterId),
    /// No engine could be made for the program (the JIT is not compiled in, say).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The binding tables are full.
    #[error("the binding tables are full")]
    TablesFull,
}

/// Decides which queues receive a frame. Every implementation keeps the rules of the crate
/// documentation; [`crate::Classifier`] is the one the driver runs, [`crate::LinearScan`] the
/// reference it must equal frame by frame.
pub trait Classify: Send {
    /// Installs an rx filter.
    fn install(&mut self, filter: RxFilter) -> Result<(), ClassifierError>;

    /// Takes `filter`'s ownership under the same rules as [`Classify::install`], without
    /// matching any frame with it: another structure does (the driver's
    /// [`crate::LinkBindings`]). [`Classify::remove`] and [`Classify::remove_queue`] release it
    /// like any filter, and [`Classify::len`] counts it.
    fn hold(&mut self, filter: &RxFilter) -> Result<(), ClassifierError>;

    /// Removes one filter; when this returns, the filter no longer matches anything.
    fn remove(&mut self, queue: QueueId, filter: FilterId) -> Result<(), ClassifierError>;

    /// Removes every filter of `queue` (the queue is going away).
    fn remove_queue(&mut self, queue: QueueId);

    /// Appends to `out` every queue that receives `frame` (captured bytes; `wire_len` is its
    /// length on the wire); `out` then holds each queue once, ascending (what it held before
    /// included: the driver gathers several instances' receivers in one vector).
    fn classify(&mut self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>);

    /// Appends to `out` every tap queue that observes `frame`, transmitted by `sender`; never
    /// `sender` itself; `out` then holds each queue once, ascending.
    fn observers(&mut self, frame: &[u8], wire_len: u32, sender: QueueId, out: &mut Vec<QueueId>);

    /// Number of installed filters.
    fn len(&self) -> usize;

    /// Whether no filter is installed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ownership state both classifiers keep, and the one function that applies the rules.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    pub(crate) ownership: Ownership,
    /// Bindings owned now, by ownership key, with their owner and how many filters hold them
    /// (more than one only under [`Ownership::Shared`]).
    owners: HashMap<PortBinding, (QueueId, usize)>,
    /// The exclusive claim.
    pub(crate) exclusive: Option<(QueueId, FilterId)>,
}

impl Owners {
    pub(crate) fn new(ownership: Ownership) -> Self {
        Self {
            ownership,
            ..Self::default()
        }
    }

    /// Checks the rules for `filter` without changing anything; gives the ownership key it
    /// would hold (an owner filter with a binding), if any.
    pub(crate) fn check(&self, filter: &RxFilter) -> Result<Option<PortBinding>, ClassifierError> {
        let owned = match (filter.mode, filter.binding) {
            (RxMode::Owner, Some(binding)) => Some(ownership_key(&binding)),
            _ => None,
        };
        if let Some((holder, _)) = self.exclusive {
            if owned.is_some() || filter.mode == RxMode::Exclusive {
                return Err(ClassifierError::ExclusiveHeld(holder));
            }
        }
        if let Some(key) = &owned {
            if let Some(&(owner, _)) = self.owners.get(key) {
                if self.ownership == Ownership::OneOwnerPerKey {
                    return Err(ClassifierError::BindingInUse(owner));
                }
            }
        }
        if filter.mode == RxMode::Exclusive && !self.owners.is_empty() {
            return Err(ClassifierError::BindingsExist);
        }
        Ok(owned)
    }

    /// Records what [`Owners::check`] allowed.
    pub(crate) fn take(
        &mut self,
        queue: QueueId,
        filter: FilterId,
        mode: RxMode,
        owned: Option<PortBinding>,
    ) {
        if let Some(key) = owned {
            self.owners
                .entry(key)
                .and_modify(|(_, n)| *n += 1)
                .or_insert((queue, 1));
        }
        if mode == RxMode::Exclusive {
            self.exclusive = Some((queue, filter));
        }
    }

    /// Forgets what a removed filter held.
    pub(crate) fn release(&mut self, queue: QueueId, filter: FilterId, owned: Option<PortBinding>) {
        if let Some(key) = owned {
            if let Some((_, n)) = self.owners.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.owners.remove(&key);
                }
            }
        }
        if self.exclusive == Some((queue, filter)) {
            self.exclusive = None;
        }
    }
}

/// The ownership key of a binding: an IPv4 address keeps only its first four bytes.
pub(crate) fn ownership_key(binding: &PortBinding) -> PortBinding {
    let mut key = *binding;
    if !key.ipv6 {
        key.address[4..].fill(0);
    }
    key
}

/// Sorts and dedups a result (queues ascending, each once).
#[inline]
pub(crate) fn finish(out: &mut Vec<QueueId>) {
    if out.len() > 1 {
        out.sort_unstable();
        out.dedup();
    }
}
