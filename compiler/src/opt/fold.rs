//! Constant folding: constants are propagated through moves and ALU operations, branches
//! between constants are decided, `x & 0` and `x * 0` become 0 and `x + 0` (and `| ^ << >>` by
//! 0) disappear, as in libpcap. A constant base of a load folds into its offset.
//!
//! Under [`Fold::Sound`] it never changes a verdict: a division or modulus by a constant zero,
//! or a shift by a constant of 32 or more, is left to reject (or give 0) at run time, and
//! nothing that can reject is removed. [`Fold::FirstLoop`] and [`Fold::Aggressive`] exist only
//! for the libpcap model ([`crate::libpcap`]), which runs them on a copy.

use super::Fold;
use crate::ir::*;

/// Whether [`fold_constants`] could change anything: only a constant moved into a temp (from
/// which constants spread) or an operation with a constant 0 (`x & 0`, `x + 0`) gives it
/// something to do. Most filters have neither, and the check is far cheaper than the pass.
pub(super) fn may_fold(func: &Function) -> bool {
    func.blocks.iter().any(|b| {
        b.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::Mov {
                    src: Operand::K(_),
                    ..
                } | Stmt::Alu {
                    rhs: Operand::K(0),
                    ..
                }
            )
        })
    })
}

/// Temps known to hold a constant, sorted by temp (copied along every edge: a flat vector).
#[derive(Clone, Debug, Default)]
struct Consts(Vec<(Temp, u32)>);

impl Consts {
    fn get(&self, t: &Temp) -> Option<&u32> {
        self.0
            .binary_search_by_key(t, |&(x, _)| x)
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn insert(&mut self, t: Temp, v: u32) {
        match self.0.binary_search_by_key(&t, |&(x, _)| x) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (t, v)),
        }
    }

    fn remove(&mut self, t: &Temp) {
        if let Ok(i) = self.0.binary_search_by_key(t, |&(x, _)| x) {
            self.0.remove(i);
        }
    }
}

fn meet_consts(a: &Consts, b: &Consts) -> Consts {
    Consts(intersect(&a.0, &b.0))
}

/// The elements of two sorted vectors that are in both.
fn intersect<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Folds constants; says whether anything changed.
pub(crate) fn fold_constants(func: &mut Function, fold: Fold) -> bool {
    let order = func.topo_order();
    let mut changed = false;
    let mut at_entry: Vec<Option<Consts>> = vec![None; func.blocks.len()];
    if let Some(e) = at_entry.first_mut() {
        *e = Some(Consts::default());
    }
    for &b in &order {
        let mut c = at_entry[b].take().unwrap_or_default();
        // In place: statement `r` is rewritten into slot `w <= r`.
        let stmts = &mut func.blocks[b].stmts;
        let mut w = 0;
        for r in 0..stmts.len() {
            let old = stmts[r];
            let s = match old {
                Stmt::Mov { dst, src } => {
                    let src = match src {
                        Operand::T(t) => c.get(&t).map_or(Operand::T(t), |&k| Operand::K(k)),
                        k => k,
                    };
                    match src {
                        Operand::K(k) => {
                            c.insert(dst, k);
                        }
                        Operand::T(_) => {
                            c.remove(&dst);
                        }
                    }
                    Some(Stmt::Mov { dst, src })
                }
                Stmt::Alu { op, dst, rhs } if fold == Fold::FirstLoop => {
                    c.remove(&dst);
                    Some(Stmt::Alu { op, dst, rhs })
                }
                Stmt::Alu { op, dst, rhs } => {
                    let rhs_k = match rhs {
                        Operand::T(t) => c.get(&t).copied(),
                        Operand::K(k) => Some(k),
                    };
                    let dst_k = c.get(&dst).copied();
                    let zero = |c: &mut Consts| {
                        c.insert(dst, 0);
                        Some(Stmt::Mov {
                            dst,
                            src: Operand::K(0),
                        })
                    };
                    let unsafe_k = |k: u32| {
                        (matches!(op, AluOp::Div | AluOp::Mod) && k == 0)
                            || (matches!(op, AluOp::Shl | AluOp::Shr) && k >= 32)
                    };
                    match (dst_k, rhs_k) {
                        // libpcap's folds (not ours: `0 / x` rejects when x is 0), which it
                        // applies before it knows x (a known x is folded below), for the
                        // rejects-all probe.
                        (Some(0), None)
                            if fold != Fold::Sound
                                && matches!(
                                    op,
                                    AluOp::Mul
                                        | AluOp::And
                                        | AluOp::Shl
                                        | AluOp::Shr
                                        | AluOp::Div
                                        | AluOp::Mod
                                ) =>
                        {
                            zero(&mut c)
                        }
                        // `0 % x`, x known to be 0: libpcap folds it to 0 when it knows the
                        // left 0 a pass before x (`0 % (len & 0)`: `len & 0` becomes 0 a pass
                        // late); when it knows both at once it reports a modulus by zero,
                        // which the libpcap model's error probe finds first.
                        (Some(0), Some(0))
                            if fold == Fold::Aggressive
                                && matches!(op, AluOp::Div | AluOp::Mod) =>
                        {
                            zero(&mut c)
                        }
                        (Some(a), Some(k)) => match op.eval(a, k) {
                            Some(v) => {
                                c.insert(dst, v);
                                Some(Stmt::Mov {
                                    dst,
                                    src: Operand::K(v),
                                })
                            }
                            None => {
                                c.remove(&dst);
                                Some(Stmt::Alu { op, dst, rhs })
                            }
                        },
                        (_, Some(k)) if unsafe_k(k) => {
                            // Kept with its register operand: the VM rejects a division by
                            // zero and shifts by 32 or more to 0 at run time.
                            c.remove(&dst);
                            Some(Stmt::Alu { op, dst, rhs })
                        }
                        (_, Some(0)) => match op {
                            AluOp::And | AluOp::Mul => zero(&mut c),
                            // add, sub, or, xor, shifts by 0 leave the value alone.
                            _ => None,
                        },
                        (_, Some(k)) => {
                            c.remove(&dst);
                            Some(Stmt::Alu {
                                op,
                                dst,
                                rhs: Operand::K(k),
                            })
                        }
                        (_, None) => {
                            c.remove(&dst);
                            Some(Stmt::Alu { op, dst, rhs })
                        }
                    }
                }
                Stmt::Neg { dst } => match c.get(&dst) {
                    Some(_) if fold == Fold::FirstLoop => {
                        c.remove(&dst);
                        Some(Stmt::Neg { dst })
                    }
                    Some(&a) => {
                        let v = a.wrapping_neg();
                        c.insert(dst, v);
                        Some(Stmt::Mov {
                            dst,
                            src: Operand::K(v),
                        })
                    }
                    None => Some(Stmt::Neg { dst }),
                },
                Stmt::Load {
                    dst,
                    size,
                    base,
                    off,
                } => {
                    c.remove(&dst);
                    // A constant base folds into the offset (no wrap: the VM adds in 64 bits).
                    // libpcap's first loop, which the other folds follow, does not: to it
                    // `ether[12:2]` (`ldh [x + 0]`, x = 12) is not the ethertype load.
                    match base
                        .filter(|_| fold == Fold::Sound)
                        .and_then(|t| c.get(&t).copied())
                    {
                        Some(k) if u64::from(k) + u64::from(off) <= u64::from(u32::MAX) => {
                            Some(Stmt::Load {
                                dst,
                                size,
                                base: None,
                                off: k + off,
                            })
                        }
                        _ => Some(Stmt::Load {
                            dst,
                            size,
                            base,
                            off,
                        }),
                    }
                }
                Stmt::Len { dst } => {
                    c.remove(&dst);
                    Some(Stmt::Len { dst })
                }
            };
            match s {
                Some(s) => {
                    changed |= s != old;
                    stmts[w] = s;
                    w += 1;
                }
                None => changed = true,
            }
        }
        stmts.truncate(w);
        // Decide or simplify the branch.
        if let Term::Branch {
            cmp,
            a,
            b: rhs,
            t,
            f,
        } = func.blocks[b].term.clone()
        {
            let rhs = match rhs {
                Operand::T(x) => c.get(&x).map_or(Operand::T(x), |&k| Operand::K(k)),
                k => k,
            };
            let term = match (c.get(&a), rhs) {
                (Some(&av), Operand::K(k)) => Term::Jump(if cmp.eval(av, k) { t } else { f }),
                _ => Term::Branch {
                    cmp,
                    a,
                    b: rhs,
                    t,
                    f,
                },
            };
            changed |= term != func.blocks[b].term;
            func.blocks[b].term = term;
        }
        for s in func.blocks[b].succs() {
            at_entry[s] = Some(match at_entry[s].take() {
                None => c.clone(),
                Some(prev) => meet_consts(&prev, &c),
            });
        }
    }
    changed
}
