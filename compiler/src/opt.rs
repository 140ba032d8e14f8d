//! The optimizer: rewrites of the IR that never change a verdict.
//!
//! Placeholder until the passes land: it only drops unreachable blocks.

use crate::ir::*;

/// Optimizes `func` in place.
pub fn optimize(func: &mut Function) {
    func.compact();
}

/// Whether the function rejects every frame (its entry leads only to reject).
pub fn always_rejects(func: &Function) -> bool {
    func.topo_order()
        .iter()
        .all(|&b| !matches!(func.blocks[b].term, Term::Accept))
}
