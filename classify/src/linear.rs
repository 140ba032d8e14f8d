//! The reference: every rx filter run one after another, with the same ownership rules. Cost
//! grows with the number of filters; [`crate::Classifier`] must give the same queues on every
//! frame (the equivalence tests and the fuzz target check it), and `netmux filter classify
//! --linear` and the benchmarks use it as the peer.

use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_vm::{Engine, Scratch, Strategy};

use crate::rules::{finish, ClassifierError, Classify, Owners, Ownership, RxFilter};

struct Installed {
    queue: QueueId,
    filter: FilterId,
    mode: RxMode,
    owned: Option<PortBinding>,
    /// `None` for a filter held only ([`Classify::hold`]).
    engine: Option<Box<dyn Engine>>,
}

/// Runs every installed filter in turn. See the module documentation.
pub struct LinearScan {
    strategy: Strategy,
    filters: Vec<Installed>,
    owners: Owners,
    scratch: Scratch,
}

impl std::fmt::Debug for LinearScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearScan")
            .field("strategy", &self.strategy)
            .field("filters", &self.filters.len())
            .finish_non_exhaustive()
    }
}

impl LinearScan {
    /// An empty scan with the driver's rule ([`Ownership::OneOwnerPerKey`]), its filters on
    /// engines made with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self::with_ownership(strategy, Ownership::OneOwnerPerKey)
    }

    /// An empty scan with the given ownership rule.
    pub fn with_ownership(strategy: Strategy, ownership: Ownership) -> Self {
        Self {
            strategy,
            filters: Vec::new(),
            owners: Owners::new(ownership),
            scratch: Scratch::default(),
        }
    }
}

impl LinearScan {
    /// Adds `filter` under the rules: run in turn on every frame, or held only (`run` false).
    fn add(&mut self, filter: &RxFilter, run: bool) -> Result<(), ClassifierError> {
        if self.filters.iter().any(|f| f.filter == filter.filter) {
            return Err(ClassifierError::DuplicateFilter(filter.filter));
        }
        let owned = self.owners.check(filter)?;
        let engine = if run {
            // The reference scan is not on a hot path: a copy of the program is no cost.
            Some(netmux_vm::engine(filter.program.clone(), self.strategy)?)
        } else {
            None
        };
        self.owners
            .take(filter.queue, filter.filter, filter.mode, owned);
        self.filters.push(Installed {
            queue: filter.queue,
            filter: filter.filter,
            mode: filter.mode,
            owned,
            engine,
        });
        Ok(())
    }
}

impl Classify for LinearScan {
    fn install(&mut self, filter: RxFilter) -> Result<(), ClassifierError> {
        self.add(&filter, true)
    }

    fn hold(&mut self, filter: &RxFilter) -> Result<(), ClassifierError> {
        self.add(filter, false)
    }

    fn remove(&mut self, queue: QueueId, filter: FilterId) -> Result<(), ClassifierError> {
        let i = self
            .filters
            .iter()
            .position(|f| f.filter == filter && f.queue == queue)
            .ok_or(ClassifierError::NotFound(queue, filter))?;
        let removed = self.filters.remove(i);
        self.owners.release(queue, filter, removed.owned);
        Ok(())
    }

    fn remove_queue(&mut self, queue: QueueId) {
        let mine: Vec<FilterId> = self
            .filters
            .iter()
            .filter(|f| f.queue == queue)
            .map(|f| f.filter)
            .collect();
        for filter in mine {
            let _ = self.remove(queue, filter);
        }
    }

    fn classify(&mut self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        for f in &self.filters {
            if f.engine.as_ref().is_some_and(|e| {
                e.run_with_scratch(frame, wire_len, &mut self.scratch)
                    .is_accept()
            }) {
                out.push(f.queue);
            }
        }
        finish(out);
    }

    fn observers(&mut self, frame: &[u8], wire_len: u32, sender: QueueId, out: &mut Vec<QueueId>) {
        for f in &self.filters {
            if f.mode == RxMode::Tap
                && f.queue != sender
                && f.engine.as_ref().is_some_and(|e| {
                    e.run_with_scratch(frame, wire_len, &mut self.scratch)
                        .is_accept()
                })
            {
                out.push(f.queue);
            }
        }
        finish(out);
    }

    fn len(&self) -> usize {
        self.filters.len()
    }
}
