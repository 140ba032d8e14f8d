//! The reference way to classify: run every filter, one after another, and collect the queues
//! of those that accept. This is what Barrelfish did for every frame; netmux keeps it for
//! `netmux filter classify --linear` and as the peer the merged classifier is measured and
//! tested against.

use netmux_vm::{Engine, Strategy, Verdict};

use super::{ClassifierError, QueueId};
use crate::{compile, Options};

/// A list of compiled filters, each with the queue it delivers to.
pub struct LinearScan {
    strategy: Strategy,
    filters: Vec<(QueueId, Box<dyn Engine>)>,
}

impl LinearScan {
    /// An empty scan whose filters will run on `strategy`'s engine.
    pub fn new(strategy: Strategy) -> LinearScan {
        LinearScan {
            strategy,
            filters: Vec::new(),
        }
    }

    /// Compiles `expr` and appends it.
    pub fn add(&mut self, queue: QueueId, expr: &str) -> Result<(), ClassifierError> {
        let program = compile(expr, &Options::default()).map_err(ClassifierError::Compile)?;
        let engine = netmux_vm::engine(program, self.strategy)?;
        self.filters.push((queue, engine));
        Ok(())
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The queues whose filter accepts the frame, ascending, each once, in `out` (cleared
    /// first).
    pub fn classify(&self, frame: &[u8], wire_len: u32, out: &mut Vec<QueueId>) {
        out.clear();
        let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
        for (queue, engine) in &self.filters {
            if let Verdict::Accept(_) = engine.run_with_scratch(frame, wire_len, &mut scratch) {
                out.push(*queue);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}
