//! Whether libpcap's optimizer proves that a filter rejects every packet, and so refuses it
//! ("expression rejects all packets"), and the cheap checks that say when that probe can answer
//! yes. A prediction (see the [module docs](super)); it works on a copy of the function and
//! changes no emitted code.

use super::as_libpcap_jset;
use crate::ir::*;
use crate::opt::{self, Fold, PassProfile};

/// A temp no statement writes: its value is never known. [`libpcap_rejects_all`] adds it to
/// hide a value from the passes, which count it as shared by every block.
const UNKNOWN: Temp = Temp(u32::MAX);

/// Whether `func` has operations libpcap's prover folds and ours does not (`0 * x`, `0 / x`,
/// ... with a register operand): only then can [`libpcap_rejects_all`] prove more than
/// [`opt::optimize`] does.
pub(crate) fn has_libpcap_only_folds(func: &Function) -> bool {
    func.blocks.iter().any(|b| {
        b.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::Alu {
                    op: AluOp::Mul | AluOp::And | AluOp::Shl | AluOp::Shr | AluOp::Div | AluOp::Mod,
                    rhs: Operand::T(_),
                    ..
                }
            )
        })
    })
}

/// Whether `func` (optimized) keeps a load only because it can reject the frame: nothing reads
/// its value. libpcap's optimizer drops such loads and threads edges past the tests they fed
/// (`ip6 net ::/0` becomes `jset #0`), so only then can [`libpcap_rejects_all`] decide tests
/// ours cannot.
pub(crate) fn has_effect_only_loads(func: &Function) -> bool {
    // Asked of every filter compiled: a bit set on the stack for the usual few temps.
    let n = func.num_temps as usize;
    let mut small = [0u64; 4];
    let mut large = Vec::new();
    let read: &mut [u64] = if n <= 256 {
        &mut small
    } else {
        large.resize(n.div_ceil(64), 0);
        &mut large
    };
    let mut mark = |t: Temp| {
        if let Some(w) = read.get_mut(t.0 as usize / 64) {
            *w |= 1 << (t.0 % 64);
        }
    };
    for b in &func.blocks {
        for s in &b.stmts {
            s.uses().for_each(&mut mark);
        }
        b.term.uses().for_each(&mut mark);
    }
    func.blocks.iter().flat_map(|b| &b.stmts).any(|s| match s {
        Stmt::Load { dst, .. } => read
            .get(dst.0 as usize / 64)
            .is_some_and(|w| w & (1 << (dst.0 % 64)) == 0),
        _ => false,
    })
}

/// Whether libpcap's pullups ((the optimizer's `reorder::pull_up_as_libpcap`)) could let it decide a
/// test in `func` (optimized) that ours leaves: a block every edge into which comes from a test
/// of one value, one of them the true edge of an `==` (which tells the value), with another
/// test of that value in the chain of `||` or `&&` tests below it. libpcap moves that test up
/// to those edges, where the values they know decide it: after `dst port 443 or dst port
/// 1500`, a later `dst port 5353` rejects. A heuristic that decides when
/// [`libpcap_rejects_all`] runs for that reason: it looks at our optimized graph, not
/// libpcap's, knows a value only as the temp that holds it (the optimizer's value numbering
/// gave equal values one temp), and walks at most 16 blocks. Asked of every filter compiled:
/// one sweep and short walks.
pub(crate) fn may_pull_up_a_decision(func: &Function) -> bool {
    /// Longest chain walked below a block.
    const MAX_CHAIN: usize = 16;
    // Per block, what its incoming edges come from, in a word: `NOTHING` yet, `MIXED`, or
    // tests of one temp `a` as `(a + 1) << 1`, with the low bit set if one is an `==`'s true
    // edge. On the stack for the usual few dozen blocks. (A temp past 2^30 - 2 counts as
    // `MIXED`: no probe for its tests.)
    const NOTHING: u32 = 0;
    const MIXED: u32 = u32::MAX;
    let n = func.blocks.len();
    let mut small = [NOTHING; 64];
    let mut large = Vec::new();
    let into: &mut [u32] = if n <= small.len() {
        &mut small[..n]
    } else {
        large.resize(n, NOTHING);
        &mut large
    };
    for blk in &func.blocks {
        let (t, f, tests) = match blk.term {
            Term::Branch { cmp, a, b, t, f } => {
                let eq = cmp == Cmp::Eq && matches!(b, Operand::K(_));
                let tests =
                    a.0.checked_add(1)
                        .filter(|&x| x < 1 << 30)
                        .map(|x| (x << 1, eq));
                (t, f, tests)
            }
            Term::Jump(j) => (j, j, None),
            _ => continue,
        };
        for (s, true_edge) in [(t, true), (f, false)] {
            let Some(slot) = into.get_mut(s) else {
                continue;
            };
            *slot = match tests {
                Some((word, eq)) if *slot == NOTHING || *slot & !1 == word => {
                    *slot | word | u32::from(true_edge && eq)
                }
                _ => MIXED,
            };
        }
    }
    (0..n).any(|b| {
        let word = into[b];
        if word == MIXED || word & 1 == 0 {
            return false;
        }
        let a = Temp((word >> 1) - 1);
        [true, false].into_iter().any(|or| {
            let mut x = b;
            let mut common = None;
            for _ in 0..MAX_CHAIN {
                let Some(Term::Branch { a: ax, t, f, .. }) = func.blocks.get(x).map(|b| &b.term)
                else {
                    return false;
                };
                if x != b && *ax == a {
                    return true;
                }
                let (c, next) = if or { (*t, *f) } else { (*f, *t) };
                if common.is_some_and(|k| k != c) {
                    return false;
                }
                common = Some(c);
                x = next;
            }
            false
        })
    })
}

/// Predicts whether libpcap's optimizer would prove that the unoptimized `func` rejects every
/// frame (and so refuse the filter with "expression rejects all packets"). It runs our passes
/// as libpcap's first loop (the one that moves edges) sees the program, with its extra, unsound
/// folds, the tests in `opaque` (relations with operators) undecided. libpcap decides those
/// only in its second loop, which moves no edge, and then skips a root whose branches go to
/// the same block: so does this. A prediction: see the module docs.
pub(crate) fn libpcap_rejects_all(func: &Function, opaque: &[Temp]) -> bool {
    let mut f = func.clone();
    as_libpcap_jset(&mut f);
    for b in &mut f.blocks {
        if let Term::Branch { a, .. } = b.term {
            if opaque.contains(&a) {
                b.stmts.push(Stmt::Mov {
                    dst: a,
                    src: Operand::T(UNKNOWN),
                });
            }
        }
    }
    opt::run_rounds(&mut f, PassProfile::LIBPCAP_PROVER);
    if always_rejects(&f) {
        return true;
    }
    // An opaque test that the passes made the first one is the root of libpcap's program.
    // libpcap's second loop decides it (and every other relation), but moves no edge; at the
    // very end it skips a root whose branches go to the same block, and the one after it, and
    // so on (`opt_root`). So the filter rejects every frame if that chain, with the relations
    // decided now and no other edge moved, ends at a reject.
    let marker = |s: &Stmt| matches!(s, Stmt::Mov { src: Operand::T(t), .. } if *t == UNKNOWN);
    let first = first_tests(&f);
    let Some(&root) = first.first() else {
        return false;
    };
    let opaque_root = matches!(f.blocks[root].term, Term::Branch { .. })
        && f.blocks[root].stmts.last().is_some_and(marker);
    if !opaque_root {
        return false;
    }
    for blk in &mut f.blocks {
        blk.stmts.retain(|s| !marker(s));
    }
    opt::fold_constants(&mut f, Fold::Aggressive);
    let mut b = root;
    loop {
        match f.blocks[b].term {
            Term::Reject => return true,
            // Decided now; past it, the first real test as the first loop left it.
            Term::Jump(next) if next > b && next < first.len() => b = first[next],
            _ => return false,
        }
    }
}

/// Each block's first real test after libpcap's first loop: the block itself, or past it, as
/// long as a block only jumps on or has branches that meet again, the first block that tests
/// (a block whose branches meet is not a test to libpcap: it moves the edges past it and drops
/// its loads, which only fed tests it decided). The entry's is libpcap's root. Edges go forward
/// after the passes, so one sweep from the last block back finds them all.
fn first_tests(f: &Function) -> Vec<BlockId> {
    let n = f.blocks.len();
    let mut first_test: Vec<BlockId> = (0..n).collect();
    for b in (0..n).rev() {
        let rep = |x: BlockId| first_test.get(x).copied().unwrap_or(x);
        first_test[b] = match f.blocks[b].term {
            Term::Jump(next) if next > b => rep(next),
            Term::Branch { t, f: e, .. } if t > b && e > b && rep(t) == rep(e) => rep(t),
            _ => b,
        };
    }
    first_test
}

/// Whether the function rejects every frame: its entry is a bare reject, or no accept is
/// reachable.
pub(crate) fn always_rejects(func: &Function) -> bool {
    // Most filters have at most 64 blocks, all edges forward (as the optimizer leaves them):
    // one sweep with the reached blocks in a word.
    let n = func.blocks.len();
    if n <= 64 {
        let mut reached: u64 = 1;
        let mut forward = true;
        for (b, blk) in func.blocks.iter().enumerate() {
            if reached & (1 << b) == 0 {
                continue;
            }
            if blk.term == Term::Accept {
                return false;
            }
            for s in blk.succs() {
                forward &= s > b && s < n;
                if s < 64 {
                    reached |= 1 << s;
                }
            }
        }
        if forward {
            return true;
        }
    }
    func.topo_order()
        .iter()
        .all(|&b| !matches!(func.blocks[b].term, Term::Accept))
}
