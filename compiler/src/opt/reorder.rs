//! Test reordering as libpcap's first optimizer loop does it and the sound passes never do:
//! its `or_pullup` and `and_pullup`, which reorder chains of tests, and `opt_j`'s moves of
//! edges past tests whose branches meet. Both can change a verdict (a test moves ahead of a
//! load, a load is skipped), so only the libpcap model's profiles switch them on
//! ([`PassProfile::pullups`](super::PassProfile),
//! [`MeetingBranches::EdgesMovePast`](super::MeetingBranches)), and the model runs them on a
//! copy of the function ([`crate::libpcap`]); [`super::PassProfile::SOUND`] never does.

use super::facts::{bit, set_bit, Bits, KeyId, Summary, TempSet};
use super::MAX_HOPS;
use crate::ir::*;

/// The graph as a pass of libpcap's first loop starts it. Its pullups run after the pass has
/// moved edges, but with the levels and dominators computed before it did.
pub(crate) struct PassStart {
    /// The blocks that branch or jump, in the order `opt_blks` visits them for pullups: by
    /// level (height above the returns) from the lowest, and within a level the last one its
    /// depth-first search (true branch first) finished first.
    visit: Vec<BlockId>,
    /// Per block, its level.
    level: Vec<u32>,
    /// No cycle (the code generator makes none; the passes move edges only forward, so the
    /// pass keeps it so).
    acyclic: bool,
    /// Per block, the blocks that dominate it: `words` words at `block * words`.
    dom: Vec<Bits>,
    words: usize,
}

impl PassStart {
    pub(crate) fn of(func: &Function) -> PassStart {
        let n = func.blocks.len();
        let rpo = func.dfs_order_from(0);
        let mut level = vec![0u32; n];
        for &b in rpo.iter().rev() {
            level[b] = func.blocks[b]
                .succs()
                .map(|s| level.get(s).map_or(0, |l| l + 1))
                .max()
                .unwrap_or(0);
        }
        let mut visit: Vec<BlockId> = rpo.iter().copied().filter(|&b| level[b] > 0).collect();
        visit.sort_by_key(|&b| level[b]);
        // Dominators over an acyclic graph: in reverse post-order every block comes after all
        // its predecessors, so one sweep intersects theirs.
        let words = n.div_ceil(64).max(1);
        let mut dom = vec![Bits::MAX; n * words];
        if n > 0 {
            dom[..words].fill(0);
        }
        for &b in &rpo {
            set_bit(&mut dom[b * words..(b + 1) * words], b as u32);
            for s in func.blocks[b].succs().filter(|&s| s < n) {
                for i in 0..words {
                    dom[s * words + i] &= dom[b * words + i];
                }
            }
        }
        PassStart {
            visit,
            level,
            acyclic: forward_in(func, &rpo),
            dom,
            words,
        }
    }

    /// Whether `d` dominated `b`.
    fn dominates(&self, d: BlockId, b: BlockId) -> bool {
        self.dom
            .get(b * self.words..(b + 1) * self.words)
            .is_some_and(|w| bit(w, d as u32))
    }
}

/// libpcap's `or_pullup` and `and_pullup`, which end each pass of its first loop: where every
/// edge into a block comes from a test of one value, and a chain of tests below it (`a || b ||
/// ...`: along false edges, all with the same true target; or `a && b && ...`) tests that value
/// again further down, the later test is moved up above the chain's first test of another
/// value (at the top of the chain, the edges into it then lead to the moved test, whose facts
/// can decide it in the next pass). The value a block tests is its key in this pass's
/// `summaries`. The edges into a block are those of the blocks the pass started with, even
/// ones no edge reaches any more, as libpcap lists them. Says whether it moved a test.
///
/// Not modelled: a move that would change a test we decided (a jump now, where libpcap keeps
/// the test with both branches at one block) is not made. A graph with a cycle (the code
/// generator makes none) gets no pullups, and if the moves made one (libpcap trusts its code
/// generator never to give it a graph where they can) they are all taken back after the sweep.
pub(crate) fn pull_up_as_libpcap(
    func: &mut Function,
    start: &PassStart,
    summaries: &[Summary],
) -> bool {
    let n = func.blocks.len();
    if !start.acyclic {
        return false;
    }
    let val = |b: BlockId| summaries.get(b).and_then(|s| s.key);
    // Each block's in-edges in the order of libpcap's lists (`find_inedges` links them from
    // the highest level down, true edge first, each in front of the last): the first one
    // says where its chain walk starts.
    let mut linked = start.visit.clone();
    linked.sort_by_key(|&b| std::cmp::Reverse(start.level[b]));
    let mut preds: Vec<Vec<BlockId>> = vec![Vec::new(); n];
    for &p in &linked {
        let (t, f) = match func.blocks[p].term {
            Term::Branch { t, f, .. } => (t, f),
            Term::Jump(j) => (j, j),
            _ => continue,
        };
        for s in [t, f] {
            if let Some(ps) = preds.get_mut(s) {
                ps.push(p);
            }
        }
    }
    for ps in &mut preds {
        ps.reverse();
    }
    let before: Vec<Term> = func.blocks.iter().map(|b| b.term.clone()).collect();
    let mut moved = false;
    for &b in &start.visit {
        for or in [true, false] {
            moved |= pull_up(func, start, &preds[b], b, or, &val);
        }
    }
    if moved && !forward_in(func, &func.dfs_order_from(0)) {
        for (blk, term) in func.blocks.iter_mut().zip(before) {
            blk.term = term;
        }
        return false;
    }
    moved
}

/// One `or_pullup` (`or`) or `and_pullup` at `b`, whose incoming edges come from `preds`.
fn pull_up(
    func: &mut Function,
    start: &PassStart,
    preds: &[BlockId],
    b: BlockId,
    or: bool,
    val: &impl Fn(BlockId) -> Option<KeyId>,
) -> bool {
    // (true target, false target), or None for a return.
    let targets = |func: &Function, x: BlockId| match func.blocks.get(x).map(|b| &b.term) {
        Some(&Term::Branch { t, f, .. }) => Some((t, f)),
        Some(&Term::Jump(j)) => Some((j, j)),
        _ => None,
    };
    // The target every test of the chain shares, and the edge the chain follows.
    let split = |func: &Function, x: BlockId| {
        targets(func, x).map(|(t, f)| if or { (t, f) } else { (f, t) })
    };
    let Some(&first) = preds.first() else {
        return false;
    };
    let Some(v) = val(first) else {
        return false;
    };
    if preds.iter().any(|&p| val(p) != Some(v)) {
        return false;
    }
    let Some((common, _)) = split(func, b) else {
        return false;
    };
    // `diff`: the first block of the chain that tests another value; `same`: the first after
    // it that tests `v` again. The walk starts where the first in-edge's pred points: `b`,
    // unless an earlier pullup moved that edge (libpcap takes its false branch then).
    let in_chain = |func: &Function, x: BlockId| {
        split(func, x)
            .filter(|&(c, _)| c == common && start.dominates(b, x))
            .map(|(_, next)| next)
    };
    let Some((first_t, first_f)) = targets(func, first) else {
        return false;
    };
    let mut diff_parent = None;
    let mut diff = if first_t == b { b } else { first_f };
    // Chains are at most as long as the graph (it is acyclic, but bounded all the same).
    let mut steps = 0..func.blocks.len();
    loop {
        if steps.next().is_none() {
            return false;
        }
        let Some(next) = in_chain(func, diff) else {
            return false;
        };
        if val(diff) != Some(v) {
            break;
        }
        diff_parent = Some(diff);
        diff = next;
    }
    let mut same_parent = diff;
    let Some(mut same) = in_chain(func, diff) else {
        return false;
    };
    loop {
        if steps.next().is_none() {
            return false;
        }
        let Some(next) = in_chain(func, same) else {
            return false;
        };
        if val(same) == Some(v) {
            break;
        }
        same_parent = same;
        same = next;
    }
    let pull = same;
    let is_branch = |x: BlockId| matches!(func.blocks[x].term, Term::Branch { .. });
    if !is_branch(pull) || !is_branch(same_parent) || diff_parent.is_some_and(|d| !is_branch(d)) {
        return false;
    }
    let set_next = |func: &mut Function, x: BlockId, to: BlockId| {
        if let Term::Branch { t, f, .. } = &mut func.blocks[x].term {
            *(if or { f } else { t }) = to;
        }
    };
    let after = split(func, pull).map_or(pull, |(_, next)| next);
    set_next(func, same_parent, after);
    set_next(func, pull, diff);
    match diff_parent {
        Some(d) => set_next(func, d, pull),
        // At the top of the chain every edge into it now goes to the pulled-up test (as
        // libpcap does it: an edge that no longer led there is taken as the false one).
        None => {
            for &p in preds {
                match &mut func.blocks[p].term {
                    Term::Branch { t, f, .. } => *(if *t == b { t } else { f }) = pull,
                    Term::Jump(j) if *j == b => *j = pull,
                    _ => {}
                }
            }
        }
    }
    true
}

/// Whether every edge goes forward in `rpo`, a reverse post-order from the entry: then no
/// cycle is reachable from it.
fn forward_in(func: &Function, rpo: &[BlockId]) -> bool {
    let mut pos = vec![usize::MAX; func.blocks.len()];
    for (i, &b) in rpo.iter().enumerate() {
        pos[b] = i;
    }
    rpo.iter().all(|&b| {
        func.blocks[b]
            .succs()
            .all(|s| pos.get(s).is_some_and(|&p| p > pos[b]))
    })
}

/// libpcap's `opt_j` moves the edges of a pass bottom-up, those out of a block before those
/// into it, and moves an edge into a test whose branches meet (decided, or both threaded to
/// one block) past it when that test's block defines nothing read after it. So in one pass
/// an edge goes past a whole chain of such tests: a block's edges are threaded here after
/// those of the blocks below it. libpcap's root (where the entry's empty jumps lead) has no
/// edge into it and stays. Says whether it moved an edge.
pub(crate) fn skip_meeting_branches(
    func: &mut Function,
    order: &[BlockId],
    shared: &TempSet,
) -> bool {
    let mut root = 0;
    for _ in 0..func.blocks.len() {
        match func.blocks.get(root) {
            Some(Block {
                stmts,
                term: Term::Jump(next),
            }) if stmts.is_empty() && *next > root => root = *next,
            _ => break,
        }
    }
    let past = |func: &Function, x: BlockId| {
        let blk = func.blocks.get(x)?;
        let next = match blk.term {
            Term::Branch { t, f, .. } if t == f => t,
            Term::Jump(j) => j,
            _ => return None,
        };
        let quiet = !blk.stmts.iter().any(|s| shared.contains(&s.def()));
        (x != root && quiet && next != x).then_some(next)
    };
    let mut moved = false;
    for &b in order.iter().rev() {
        let mut targets = match func.blocks[b].term {
            Term::Branch { t, f, .. } => [t, f],
            Term::Jump(j) => [j, j],
            _ => continue,
        };
        for target in &mut targets {
            for _ in 0..MAX_HOPS {
                match past(func, *target) {
                    Some(next) => {
                        *target = next;
                        moved = true;
                    }
                    None => break,
                }
            }
        }
        match &mut func.blocks[b].term {
            Term::Branch { t, f, .. } => [*t, *f] = targets,
            Term::Jump(j) => *j = targets[0],
            _ => {}
        }
    }
    moved
}
