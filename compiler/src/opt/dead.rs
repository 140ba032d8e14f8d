//! Dead code: statements whose results are never used are removed when they cannot reject
//! (pure arithmetic, loads proven in bounds); a branch whose two successors are equal becomes a
//! jump; a block every path out of which rejects becomes `reject` (even its loads: a failing
//! load would reject too).
//!
//! Under [`PassProfile::SOUND`] it never changes a verdict: a statement that may reject stays
//! unless every path from it rejects anyway. [`PassProfile::drop_unread_rejecting`] and
//! [`MeetingBranches::EdgesMovePast`] exist only for the libpcap model ([`crate::libpcap`]).

use super::{MeetingBranches, PassProfile, Scratch};
use crate::ir::*;

/// Removes dead code (see the module docs); says whether anything changed. With
/// [`PassProfile::drop_unread_rejecting`], a statement that can reject the frame goes too when
/// nothing reads its result, as libpcap's optimizer deletes any load nothing reads; with
/// [`MeetingBranches::EdgesMovePast`], a branch whose two successors are equal stays a branch,
/// as libpcap keeps such a test (and the load it reads) until every edge into it has moved
/// past.
pub(super) fn remove_dead(func: &mut Function, sc: &mut Scratch, profile: PassProfile) -> bool {
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let mut changed = false;
    let mut collapsed = false;
    // Collapse blocks that can only reject, back to front.
    for &b in sc.order.iter().rev() {
        let bare_reject = |x: BlockId, f: &Function| {
            f.blocks[x].stmts.is_empty() && f.blocks[x].term == Term::Reject
        };
        let collapse = match func.blocks[b].term {
            Term::Branch { t, f, .. } => bare_reject(t, func) && bare_reject(f, func),
            Term::Jump(j) => bare_reject(j, func),
            _ => false,
        };
        if collapse {
            func.blocks[b].stmts.clear();
            func.blocks[b].term = Term::Reject;
            collapsed = true;
        }
        if let Term::Branch { t, f, .. } = func.blocks[b].term {
            if t == f && profile.meeting_branches == MeetingBranches::BecomeJumps {
                func.blocks[b].term = Term::Jump(t);
                changed = true;
            }
        }
    }
    if collapsed {
        // Blocks only the collapsed ones reached are gone: their uses no longer count.
        changed = true;
        func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    }
    // Remove unused definitions that cannot reject, with proven-in-bounds loads counted as
    // unable to reject (the min length is a per-path lower bound; use the meet at each block).
    // Only statements go, so the order stays; and of loads only those already proven in
    // bounds, so the proven lengths stay too (computed once, and only if needed).
    let order = &sc.order;
    let mut lens_ready = false;
    loop {
        let used = &mut sc.used;
        used.reset(func.num_temps);
        for &b in order {
            let blk = &func.blocks[b];
            for s in &blk.stmts {
                for u in s.uses() {
                    used.insert(u);
                }
            }
            for t in blk.term.uses() {
                used.insert(t);
            }
        }
        let mut removed = false;
        for &b in order {
            // Only a statement whose result nobody reads can go.
            if func.blocks[b].stmts.iter().all(|s| used.contains(&s.def())) {
                continue;
            }
            if !lens_ready {
                min_len_at_entry_into(func, order, &mut sc.min_len);
                lens_ready = true;
            }
            let mut len = sc.min_len.get(b).copied().unwrap_or(0);
            func.blocks[b].stmts.retain(|s| {
                let safe_load = match s {
                    Stmt::Load {
                        base: None,
                        off,
                        size,
                        ..
                    } => {
                        let end = u64::from(*off) + u64::from(size.bytes());
                        let safe = end <= len;
                        len = len.max(end);
                        safe
                    }
                    _ => false,
                };
                let can_reject = !profile.drop_unread_rejecting && s.may_reject() && !safe_load;
                let keep = used.contains(&s.def()) || can_reject;
                removed |= !keep;
                keep
            });
        }
        if !removed {
            break;
        }
        changed = true;
    }
    changed
}

/// For each block, the frame length every path to it has proven by its loads, into `at`.
pub(super) fn min_len_at_entry_into(func: &Function, order: &[BlockId], at: &mut Vec<u64>) {
    // u64::MAX: no path seen yet (every block in `order` gets one before it is read).
    at.clear();
    at.resize(func.blocks.len(), u64::MAX);
    if let Some(&first) = order.first() {
        at[first] = 0;
    }
    for &b in order {
        let mut len = at[b];
        if len == u64::MAX {
            len = 0;
        }
        for s in &func.blocks[b].stmts {
            if let Stmt::Load {
                base: None,
                off,
                size,
                ..
            } = s
            {
                len = len.max(u64::from(*off) + u64::from(size.bytes()));
            }
        }
        for s in func.blocks[b].succs() {
            at[s] = at[s].min(len);
        }
    }
    for v in at.iter_mut() {
        if *v == u64::MAX {
            *v = 0;
        }
    }
}
