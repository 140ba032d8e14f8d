//! Where libpcap's optimizer reports a division or modulus by a constant zero, or a shift by
//! 32 or more, and so refuses the filter: its second loop folds the arithmetic pass by pass,
//! in the blocks its first loop leaves. A prediction (see the [module docs](super)); it works
//! on a copy of the function and changes no emitted code.

use super::as_libpcap_jset;
use crate::ir::*;
use crate::opt::{self, PassProfile};

/// What libpcap's optimizer would report: it refuses such a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptError {
    /// A division by a constant zero, in a block libpcap still processes when it knows it.
    DivisionByZero,
    /// A modulus by a constant zero, likewise.
    ModulusByZero,
    /// A shift of an unknown value by a constant of 32 or more, likewise.
    ShiftTooLarge,
}

/// Whether [`libpcap_errors`] could find anything in `func`: only a division, modulus or shift
/// by a temp (which may hold a constant), or a division or modulus by a constant zero, can be
/// reported (a shift by a constant of 32 or more is let through too, and never reported: the
/// parser refuses the literal one and libpcap's `op #k` does not check shifts).
pub(crate) fn may_report_errors(func: &Function) -> bool {
    func.blocks.iter().any(|b| {
        b.stmts.iter().any(|s| match *s {
            Stmt::Alu {
                op: AluOp::Div | AluOp::Mod,
                rhs,
                ..
            } => !matches!(rhs, Operand::K(k) if k != 0),
            Stmt::Alu {
                op: AluOp::Shl | AluOp::Shr,
                rhs,
                ..
            } => !matches!(rhs, Operand::K(k) if k < 32),
            _ => false,
        })
    })
}

/// What libpcap's optimizer reports for `func` (unoptimized): a division or modulus by a
/// constant zero, or a shift of an unknown value by a constant of 32 or more.
///
/// libpcap finds these only in its second loop, which folds arithmetic, and only in the blocks
/// its first loop leaves: that loop moves edges and skips blocks, but knows no operator's
/// result, so it decides only tests between constants that are moved, never computed. The
/// passes here do what the first loop does ([`PassProfile::LIBPCAP_FIRST_LOOP`]), and
/// [`report_as_libpcap`] then follows the second loop pass by pass.
pub(crate) fn libpcap_errors(func: &Function) -> Result<(), OptError> {
    let mut f = func.clone();
    as_libpcap_jset(&mut f);
    opt::run_rounds(&mut f, PassProfile::LIBPCAP_FIRST_LOOP);
    drop_blocks_libpcap_skips(&mut f);
    report_as_libpcap(&f)
}

/// A value libpcap's second optimizer loop learns: `v`, known from its pass `pass` on (0 is
/// its first).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Known {
    v: u32,
    pass: u32,
}

/// Follows libpcap's second optimizer loop (`opt_stmt` with `alter`, `opt_peep`) over `func`
/// and reports its first error. Each pass of that loop folds what it knows and rewrites the
/// rest, and some rewrites are only seen by the next pass: `x & y`, y known to be 0 and x not,
/// becomes `x & #0` in one pass and 0 in the next. So each value carries the pass from which
/// it is known, and an error counts only if its block is still reached in that pass (a test
/// decided in pass p cuts its dead side off from pass p + 1).
///
/// Approximations: where paths join, a value is known only as all of them know it, even after
/// an edge was cut off (libpcap may then know it from the live edges alone); and of two errors
/// in the same pass, the first in our block order is reported (libpcap's order is by level).
fn report_as_libpcap(func: &Function) -> Result<(), OptError> {
    // libpcap stops at the first error it meets: of the earliest pass, in a block processed
    // in that pass (through `last`).
    fn note(first: &mut Option<(u32, OptError)>, last: u32, pass: u32, e: OptError) {
        if pass <= last && first.as_ref().is_none_or(|&(p, _)| pass < p) {
            *first = Some((pass, e));
        }
    }
    type State = Vec<Option<Known>>;
    let n = func.blocks.len();
    let temps = func.num_temps as usize;
    let mut at_entry: Vec<Option<State>> = vec![None; n];
    // The last pass in which each block is processed.
    let mut until: Vec<u32> = vec![0; n];
    if n == 0 {
        return Ok(());
    }
    at_entry[0] = Some(vec![None; temps]);
    until[0] = u32::MAX;
    let mut first: Option<(u32, OptError)> = None;
    let get = |st: &State, t: Temp| st.get(t.0 as usize).copied().flatten();
    // A constant operand is known from the first pass.
    let known = |st: &State, o: Operand| match o {
        Operand::K(v) => Some(Known { v, pass: 0 }),
        Operand::T(t) => get(st, t),
    };
    let set = |st: &mut State, t: Temp, k: Option<Known>| {
        if let Some(slot) = st.get_mut(t.0 as usize) {
            *slot = k;
        }
    };
    let div_err = |op: AluOp| {
        if op == AluOp::Div {
            OptError::DivisionByZero
        } else {
            OptError::ModulusByZero
        }
    };
    for b in func.topo_order() {
        let Some(mut st) = at_entry[b].take() else {
            continue;
        };
        let last = until[b];
        for s in &func.blocks[b].stmts {
            match *s {
                Stmt::Mov { dst, src } => {
                    let k = known(&st, src);
                    set(&mut st, dst, k);
                }
                Stmt::Load { dst, .. } | Stmt::Len { dst } => set(&mut st, dst, None),
                Stmt::Neg { dst } => {
                    let k = get(&st, dst).map(|k| Known {
                        v: k.v.wrapping_neg(),
                        pass: k.pass,
                    });
                    set(&mut st, dst, k);
                }
                Stmt::Alu { op, dst, rhs } => {
                    let a = get(&st, dst);
                    let zero_op = matches!(
                        op,
                        AluOp::Mul | AluOp::Div | AluOp::Mod | AluOp::And | AluOp::Shl | AluOp::Shr
                    );
                    let shift = matches!(op, AluOp::Shl | AluOp::Shr);
                    // An operand given as a constant: libpcap's `op #k`, as after the rewrite
                    // below, from before its first pass.
                    let (x, k_form) = (known(&st, rhs), matches!(rhs, Operand::K(_)));
                    let r = match (a, x) {
                        // `0 op x` before x is known: 0 (x for `+ | ^`, `0 - x` once x is
                        // known), and nothing to report.
                        (Some(a), x)
                            if a.v == 0 && !k_form && x.is_none_or(|x| a.pass < x.pass) =>
                        {
                            if zero_op {
                                Some(a)
                            } else if matches!(op, AluOp::Add | AluOp::Or | AluOp::Xor) {
                                x
                            } else {
                                x.map(|x| Known {
                                    v: op.eval(0, x.v).unwrap_or(0),
                                    pass: x.pass,
                                })
                            }
                        }
                        (_, None) => None,
                        // x known no earlier than the left side: folded in x's pass, a
                        // division by zero is reported and a shift by 32 or more gives 0.
                        (Some(a), Some(x)) if !k_form && a.pass <= x.pass => {
                            match op.eval(a.v, x.v) {
                                Some(v) => Some(Known { v, pass: x.pass }),
                                None => {
                                    note(&mut first, last, x.pass, div_err(op));
                                    None
                                }
                            }
                        }
                        // x known first: the operation becomes `op #k` in that pass, which
                        // reports a shift by more than 31; the next pass reduces `op #0`.
                        (a, Some(x)) => {
                            let next = if k_form { 0 } else { x.pass + 1 };
                            if shift && x.v > 31 && !k_form {
                                note(&mut first, last, x.pass, OptError::ShiftTooLarge);
                            }
                            match (x.v, op) {
                                (0, AluOp::Div | AluOp::Mod) => {
                                    note(&mut first, last, next, div_err(op));
                                    None
                                }
                                (0, AluOp::Mul | AluOp::And) => Some(Known { v: 0, pass: next }),
                                (
                                    0,
                                    AluOp::Add | AluOp::Or | AluOp::Xor | AluOp::Shl | AluOp::Shr,
                                ) => a,
                                _ => a.and_then(|a| {
                                    op.eval(a.v, x.v).map(|v| Known {
                                        v,
                                        pass: a.pass.max(next),
                                    })
                                }),
                            }
                        }
                    };
                    set(&mut st, dst, r);
                }
            }
        }
        let term = &func.blocks[b].term;
        // A test between known values is decided in the pass both are known; its dead side is
        // still processed in that pass, not after.
        let decided = match *term {
            Term::Branch {
                cmp,
                a,
                b: rhs,
                t,
                f,
            } => match (get(&st, a), known(&st, rhs)) {
                (Some(a), Some(x)) => {
                    let dead = if cmp.eval(a.v, x.v) { f } else { t };
                    Some((dead, a.pass.max(x.pass)))
                }
                _ => None,
            },
            _ => None,
        };
        for s in term.succs() {
            let reach = match decided {
                Some((dead, pass)) if dead == s && !term.succs().all(|x| x == dead) => {
                    last.min(pass)
                }
                _ => last,
            };
            until[s] = until[s].max(reach);
            at_entry[s] = Some(match at_entry[s].take() {
                None => st.clone(),
                Some(prev) => prev
                    .iter()
                    .zip(&st)
                    .map(|(p, q)| match (p, q) {
                        (Some(p), Some(q)) if p.v == q.v => Some(Known {
                            v: p.v,
                            pass: p.pass.max(q.pass),
                        }),
                        _ => None,
                    })
                    .collect(),
            });
        }
    }
    first.map_or(Ok(()), |(_, e)| Err(e))
}

/// Empties the blocks libpcap's optimizer skips, so that what they compute is not reported.
/// libpcap redirects an edge into a block whose branches both go to the same place past it
/// (`opt_j`), unless what the block computes is used there (`use_conflict`), and deletes the
/// statements no test uses. The passes may leave such a block (the optimizer proper keeps one
/// that can reject the frame: skipping it would change the verdict). Blocks are
/// numbered in topological order here, so one pass from the last block back finds them all,
/// a block whose branches meet again only past skipped blocks included. Each temp a kept block
/// reads, or a later one, is kept live.
fn drop_blocks_libpcap_skips(func: &mut Function) {
    let n = func.blocks.len();
    // Where a skipped block leads: itself if kept.
    let mut lead: Vec<BlockId> = (0..n).collect();
    // Temps read in each block or after it.
    let mut read_after: Vec<std::collections::HashSet<Temp>> = vec![Default::default(); n];
    // libpcap's root: the entry, or the block empty jumps from it lead to. libpcap never
    // skips it (no edge leads there to redirect): it folds its statements in the second loop
    // and drops it only at the very end (`opt_root`).
    let mut root = 0;
    while let Some(Block {
        stmts,
        term: Term::Jump(next),
    }) = func.blocks.get(root)
    {
        if !stmts.is_empty() || *next <= root {
            break;
        }
        root = *next;
    }
    for b in (0..n).rev() {
        let blk = &func.blocks[b];
        let mut reads: std::collections::HashSet<Temp> = Default::default();
        let mut to = None;
        let mut same = true;
        for s in blk.term.succs() {
            if s <= b || s >= n {
                // Not the forward numbering this relies on: skip nothing.
                return;
            }
            reads.extend(read_after[s].iter().copied());
            match to {
                None => to = Some(lead[s]),
                Some(t) => same &= t == lead[s],
            }
        }
        if let Some(next) = to.filter(|_| same && b != root) {
            let used = blk
                .stmts
                .iter()
                .any(|st| read_after[next].contains(&st.def()));
            if !used {
                lead[b] = next;
                read_after[b] = read_after[next].clone();
                continue;
            }
        }
        reads.extend(blk.term.uses());
        for st in blk.stmts.iter().rev() {
            reads.remove(&st.def());
            reads.extend(st.uses());
        }
        read_after[b] = reads;
    }
    for (b, blk) in func.blocks.iter_mut().enumerate() {
        if lead[b] != b {
            blk.stmts.clear();
        }
    }
}
