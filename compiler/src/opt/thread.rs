//! Decided tests and jump threading: a forward data-flow over the acyclic graph records, for
//! each value computed from the frame, which tests every path so far took and with what
//! outcome ([`super::facts`]). A branch those facts decide becomes a jump; an edge into a block
//! that only re-loads fields already loaded on that path (so the loads cannot fail) and whose
//! test the edge's facts decide is redirected to the decided successor. This removes libpcap's
//! repeated `ldh [12]; jeq #0x800`.
//!
//! Under [`PassProfile::SOUND`] it never changes a verdict: a decided test has one outcome on
//! every frame that reaches it, and an edge skips only blocks that cannot reject and define
//! nothing used elsewhere. [`Facts::PerDominatingEdge`] (which decides less) and
//! [`MeetingBranches::EdgesMovePast`] (which skips blocks that may reject) exist only for the
//! libpcap model ([`crate::libpcap`]).

use super::facts::{shared_temps, Bits, Summary, NO_FACT};
use super::reorder::skip_meeting_branches;
use super::{Facts, MeetingBranches, PassProfile, Scratch, MAX_HOPS};
use crate::ir::*;

/// What [`decide_and_thread`] did.
pub(super) struct Threaded {
    /// It decided a branch or threaded an edge.
    pub(super) changed: bool,
    /// Running it again right away would change nothing: no edge stopped at the limit of
    /// hops, and every block whose purity depends on which blocks are reachable has kept it.
    pub(super) settled: bool,
}

/// Adds the facts and proven length of one edge into `b` to those of `b`'s other edges
/// (`Scratch::at_entry`, `len_at` and `reached`).
fn merge_into(
    (at_entry, len_at, reached): (&mut [Bits], &mut [u64], &mut [bool]),
    w: usize,
    b: BlockId,
    edge: &[Bits],
    len: u64,
) {
    let slot = &mut at_entry[b * w..(b + 1) * w];
    if reached[b] {
        for (a, e) in slot.iter_mut().zip(edge.iter()) {
            *a &= *e;
        }
        len_at[b] = len_at[b].min(len);
    } else {
        slot.copy_from_slice(edge);
        len_at[b] = len;
        reached[b] = true;
    }
}

/// Decides branches from the facts on every path to them and threads edges through blocks
/// those facts decide. With [`Facts::PerDominatingEdge`] (the libpcap model's profiles), facts
/// are numbered per block and flow along the edges the pass started with, as libpcap's edge
/// dominators do; with [`MeetingBranches::EdgesMovePast`], edges then move past tests whose
/// branches meet ([`skip_meeting_branches`]).
pub(super) fn decide_and_thread(
    func: &mut Function,
    sc: &mut Scratch,
    profile: PassProfile,
) -> Threaded {
    let per_block = profile.facts == Facts::PerDominatingEdge;
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let order = std::mem::take(&mut sc.order);
    let n = func.blocks.len();
    shared_temps(func, &order, &mut sc.shared_seen, &mut sc.shared);
    sc.summaries.clear();
    sc.summaries.resize(n, Summary::default());
    sc.loads.clear();
    for &b in &order {
        sc.summaries[b] = Summary::of(
            &func.blocks[b],
            &sc.shared,
            &mut sc.keys_of,
            &mut sc.block_keys,
            &mut sc.loads,
        );
    }
    // Number every fact this pass can learn.
    let keys = sc.keys_of.len();
    sc.facts
        .number(func, &order, &sc.summaries, &sc.loads, keys, per_block);
    let facts = &sc.facts;
    let w = facts.words();
    let (summaries, loads, facts) = (&sc.summaries, &sc.loads[..], &sc.facts);
    // Each block's facts on entry (`w` words at `b * w`), whether a path reached it yet, and
    // the frame length every path to it proved.
    // Not zeroed as a whole: a block's words are written (copied from its first incoming
    // edge) before they are read, as `reached` records; zeroing would cost blocks x facts per
    // pass. The entry has no incoming edge: its words are zeroed here (they may hold an
    // earlier pass's or an earlier compilation's facts).
    if sc.at_entry.len() < n * w {
        sc.at_entry.resize(n * w, 0);
    }
    sc.reached.clear();
    sc.reached.resize(n, false);
    sc.len_at.clear();
    sc.len_at.resize(n, 0);
    if n > 0 {
        sc.reached[0] = true;
        sc.at_entry[..w].fill(0);
    }
    sc.cur.clear();
    sc.cur.resize(w, 0);
    sc.edge.clear();
    sc.edge.resize(w, 0);
    let (cur, edge) = (&mut sc.cur[..], &mut sc.edge[..]);
    let mut changed = false;
    let mut hop_limited = false;
    let mut decided = false;
    for &b in &order {
        if !sc.reached[b] {
            continue;
        }
        cur.copy_from_slice(&sc.at_entry[b * w..(b + 1) * w]);
        let mut len = sc.len_at[b];
        let summary = summaries[b];
        summary.apply(loads, facts, cur, &mut len);
        let tf = facts.tests[b];
        // Decide the branch from facts on every path.
        if tf.t != NO_FACT {
            if let Term::Branch { t, f, .. } = func.blocks[b].term {
                if let Some(r) = facts.decide(cur, &tf) {
                    func.blocks[b].term = Term::Jump(if r { t } else { f });
                    changed = true;
                    decided = true;
                    // To libpcap the branch not taken is still there in this pass (it moves
                    // the edges into this block; the block goes in the next), and so are the
                    // paths through it to the blocks after.
                    if per_block {
                        edge.copy_from_slice(cur);
                        facts.learn(edge, &tf, !r);
                        merge_into(
                            (&mut sc.at_entry, &mut sc.len_at, &mut sc.reached),
                            w,
                            if r { f } else { t },
                            edge,
                            len,
                        );
                    }
                }
            }
        }
        // Propagate along each edge, threading edges whose target is decided and skippable.
        let (succs, learns, n_edges): ([BlockId; 2], [Option<bool>; 2], usize) = match func.blocks
            [b]
            .term
        {
            Term::Branch { t, f, .. } if tf.t != NO_FACT => ([t, f], [Some(true), Some(false)], 2),
            Term::Branch { t, f, .. } => ([t, f], [None, None], 2),
            Term::Jump(j) => ([j, j], [None, None], 1),
            _ => ([0, 0], [None, None], 0),
        };
        let mut new_targets = [0; 2];
        for i in 0..n_edges {
            let succ = succs[i];
            edge.copy_from_slice(cur);
            let mut es_len = len;
            if let Some(r) = learns[i] {
                facts.learn(edge, &tf, r);
            }
            // libpcap decides every edge of a pass from the dominators of the graph the pass
            // started with: what reaches a block along its edges of then, threaded or not.
            if per_block {
                merge_into(
                    (&mut sc.at_entry, &mut sc.len_at, &mut sc.reached),
                    w,
                    succ,
                    edge,
                    es_len,
                );
            }
            // Thread through successors decided by this edge's facts (a few hops).
            let mut target = succ;
            let mut hops = 0;
            loop {
                if hops == MAX_HOPS {
                    hop_limited = true;
                    break;
                }
                hops += 1;
                let (t, f) = match func.blocks[target].term {
                    Term::Branch { t, f, .. } => (t, f),
                    // An empty block that only jumps on (a test decided on every path
                    // leaves one where paths join): straight past it.
                    Term::Jump(next) if func.blocks[target].stmts.is_empty() => {
                        target = next;
                        continue;
                    }
                    _ => break,
                };
                let ttf = facts.tests[target];
                if ttf.t == NO_FACT {
                    break;
                }
                let sum = summaries[target];
                if !sum.skippable(loads, facts, edge, es_len) {
                    break;
                }
                match facts.decide(edge, &ttf) {
                    Some(r) => {
                        sum.apply(loads, facts, edge, &mut es_len);
                        // libpcap's moved edge knows only what dominates it (`opt_j` decides
                        // each hop from the edge's own dominators): past the join it leads
                        // to, the skipped test's facts are not its own.
                        if !per_block {
                            facts.learn(edge, &ttf, r);
                        }
                        target = if r { t } else { f };
                    }
                    None => break,
                }
            }
            changed |= target != succ;
            new_targets[i] = target;
            if !per_block {
                merge_into(
                    (&mut sc.at_entry, &mut sc.len_at, &mut sc.reached),
                    w,
                    target,
                    edge,
                    es_len,
                );
            }
        }
        match &mut func.blocks[b].term {
            Term::Branch { t, f, .. } => {
                *t = new_targets[0];
                *f = new_targets[1];
            }
            Term::Jump(j) => *j = new_targets[0],
            _ => {}
        }
    }
    if profile.meeting_branches == MeetingBranches::EdgesMovePast {
        changed |= skip_meeting_branches(func, &order, &sc.shared);
    }
    // A decided branch no longer uses its temp, and blocks no path reaches any more take
    // their uses with them: either can make a block that defines a temp used elsewhere pure,
    // and so skippable next time. That is the only way this pass's changes feed the next.
    let mut settled = !hop_limited;
    if settled && (decided || !order.iter().all(|&b| sc.reached[b])) {
        sc.kept.clear();
        sc.kept
            .extend(order.iter().copied().filter(|&b| sc.reached[b]));
        shared_temps(func, &sc.kept, &mut sc.shared_seen, &mut sc.shared);
        settled = sc.kept.iter().all(|&b| {
            !sc.summaries[b].pure_but_shared
                || func.blocks[b]
                    .stmts
                    .iter()
                    .any(|s| sc.shared.contains(&s.def()))
        });
    }
    sc.order = order;
    Threaded { changed, settled }
}
