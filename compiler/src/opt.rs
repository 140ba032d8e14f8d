//! The optimizer: rewrites of the IR that never change a verdict.
//!
//! Passes, repeated until nothing changes (bounded by [`MAX_ROUNDS`]):
//!
//! 1. **Constant folding**: constants are propagated through moves and ALU operations, branches
//!    between constants are decided, `x & 0` and `x * 0` become 0 and `x + 0` (and `| ^ << >>`
//!    by 0) disappear, as in libpcap. A division or modulus by a constant zero on a reachable
//!    path (or a shift by a constant of 32 or more) is an error, as libpcap's optimizer reports
//!    it.
//! 2. **Decided tests**: a forward data-flow over the acyclic graph records, for each frame
//!    field loaded at a constant offset (and each masked such field), what the tests passed on
//!    every path so far imply about it (equal to, different from, within a range, bits set or
//!    clear). A branch those facts decide becomes a jump.
//! 3. **Jump threading**: an edge into a block that only re-loads fields already loaded on that
//!    path (so the loads cannot fail) and whose test the edge's facts decide is redirected to
//!    the decided successor. This removes libpcap's repeated `ldh [12]; jeq #0x800`.
//! 4. **Dead code**: statements whose results are never used are removed when they cannot
//!    reject (pure arithmetic, loads proven in bounds); a branch whose two successors are equal
//!    becomes a jump; a block every path out of which rejects becomes `reject` (even its
//!    loads: a failing load would reject too); unreachable blocks go.
//!
//! Verdict preservation rests on one rule: a statement that may reject (a load that could be
//! out of bounds, a division by a register) is never removed or skipped unless the only
//! possible outcome of the code after it is reject anyway.

use std::collections::{HashMap, HashSet};

use crate::ir::*;

/// Upper bound on optimizer rounds (each round is linear in the program; real filters settle
/// in two or three).
pub const MAX_ROUNDS: usize = 12;

/// Why optimization failed: libpcap's optimizer reports these too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptError {
    /// A division by a constant zero on a reachable path.
    DivisionByZero,
    /// A modulus by a constant zero on a reachable path.
    ModulusByZero,
    /// A shift by a constant of 32 or more on a reachable path.
    ShiftTooLarge,
}

/// Optimizes `func` in place.
pub fn optimize(func: &mut Function) -> Result<(), OptError> {
    func.compact();
    for _ in 0..MAX_ROUNDS {
        let before = func.clone();
        fold_constants(func)?;
        func.compact();
        decide_and_thread(func);
        func.compact();
        remove_dead(func);
        func.compact();
        if *func == before {
            break;
        }
    }
    check_constant_errors(func)
}

/// Whether the function rejects every frame: its entry is a bare reject, or no accept is
/// reachable.
pub fn always_rejects(func: &Function) -> bool {
    func.topo_order()
        .iter()
        .all(|&b| !matches!(func.blocks[b].term, Term::Accept))
}

// ---------------------------------------------------------------------------------------------
// Constant folding.

type Consts = HashMap<Temp, u32>;

fn meet_consts(a: &Consts, b: &Consts) -> Consts {
    a.iter()
        .filter(|(t, v)| b.get(t) == Some(v))
        .map(|(t, v)| (*t, *v))
        .collect()
}

/// The errors libpcap's optimizer reports: a division, modulus or shift by a constant it
/// cannot take, still reachable after optimization.
fn check_constant_errors(func: &Function) -> Result<(), OptError> {
    for b in func.topo_order() {
        for s in &func.blocks[b].stmts {
            match s {
                Stmt::Alu {
                    op: AluOp::Div,
                    rhs: Operand::K(0),
                    ..
                } => return Err(OptError::DivisionByZero),
                Stmt::Alu {
                    op: AluOp::Mod,
                    rhs: Operand::K(0),
                    ..
                } => return Err(OptError::ModulusByZero),
                Stmt::Alu {
                    op: AluOp::Shl | AluOp::Shr,
                    rhs: Operand::K(k),
                    ..
                } if *k >= 32 => return Err(OptError::ShiftTooLarge),
                _ => {}
            }
        }
    }
    Ok(())
}

fn fold_constants(func: &mut Function) -> Result<(), OptError> {
    let order = func.topo_order();
    let mut at_entry: HashMap<BlockId, Consts> = HashMap::new();
    at_entry.insert(0, Consts::new());
    for &b in &order {
        let mut c = at_entry.remove(&b).unwrap_or_default();
        let mut out = Vec::with_capacity(func.blocks[b].stmts.len());
        for s in std::mem::take(&mut func.blocks[b].stmts) {
            let s = match s {
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
                Stmt::Alu { op, dst, rhs } => {
                    let rhs = match rhs {
                        Operand::T(t) => c.get(&t).map_or(Operand::T(t), |&k| Operand::K(k)),
                        k => k,
                    };
                    match rhs {
                        Operand::K(0) => match op {
                            // Kept as is; `check_constant_errors` reports it if it is still
                            // reachable once the optimizer is done (as libpcap does).
                            AluOp::Div | AluOp::Mod => {
                                c.remove(&dst);
                                Some(Stmt::Alu { op, dst, rhs })
                            }
                            AluOp::And | AluOp::Mul => {
                                c.insert(dst, 0);
                                Some(Stmt::Mov {
                                    dst,
                                    src: Operand::K(0),
                                })
                            }
                            AluOp::Sub => Some(Stmt::Alu { op, dst, rhs }),
                            // add, or, xor, shifts by 0: no-ops.
                            _ => None,
                        },
                        Operand::K(k)
                            if matches!(op, AluOp::Shl | AluOp::Shr)
                                && k >= 32
                                && !c.contains_key(&dst) =>
                        {
                            // Kept as is; reported by `check_constant_errors` if reachable.
                            Some(Stmt::Alu { op, dst, rhs })
                        }
                        Operand::K(k) => match c.get(&dst) {
                            Some(&a) => match op.eval(a, k) {
                                Some(v) => {
                                    c.insert(dst, v);
                                    Some(Stmt::Mov {
                                        dst,
                                        src: Operand::K(v),
                                    })
                                }
                                None => Some(Stmt::Alu { op, dst, rhs }),
                            },
                            None => Some(Stmt::Alu { op, dst, rhs }),
                        },
                        Operand::T(_) => {
                            c.remove(&dst);
                            Some(Stmt::Alu { op, dst, rhs })
                        }
                    }
                }
                Stmt::Neg { dst } => match c.get(&dst) {
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
                    match base.and_then(|t| c.get(&t).copied()) {
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
            if let Some(s) = s {
                out.push(s);
            }
        }
        func.blocks[b].stmts = out;
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
            func.blocks[b].term = match (c.get(&a), rhs) {
                (Some(&av), Operand::K(k)) => Term::Jump(if cmp.eval(av, k) { t } else { f }),
                _ => Term::Branch {
                    cmp,
                    a,
                    b: rhs,
                    t,
                    f,
                },
            };
        }
        for s in func.blocks[b].succs() {
            let merged = match at_entry.get(&s) {
                None => c.clone(),
                Some(prev) => meet_consts(prev, &c),
            };
            at_entry.insert(s, merged);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Facts about frame fields.

/// A frame field: `size` bytes at constant offset `off`, optionally masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    size: Size,
    off: u32,
    mask: u32,
}

/// What is known about a field on every path to a point.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Facts {
    /// The value, if a true `==` test fixed it.
    exact: Option<u32>,
    /// Tests taken: comparison, constant, outcome.
    seen: Vec<(Cmp, u32, bool)>,
}

impl Facts {
    fn new() -> Facts {
        Facts {
            exact: None,
            seen: vec![],
        }
    }

    /// Decides `field cmp k` with the reasoning libpcap's optimizer uses (`fold_edge`): the
    /// same test taken before gives the same result, and a field known equal to `v` (a true
    /// `==` test) decides any `==`. Deciding more (ranges from `>` tests, field widths) would
    /// be sound, but would make us refuse as "rejects all packets" filters libpcap compiles.
    fn decide(&self, cmp: Cmp, k: u32) -> Option<bool> {
        if let (Cmp::Eq, Some(v)) = (cmp, self.exact) {
            return Some(v == k);
        }
        self.seen
            .iter()
            .find(|(c, kk, _)| *c == cmp && *kk == k)
            .map(|&(_, _, r)| r)
    }

    fn learn(&mut self, cmp: Cmp, k: u32, outcome: bool) {
        if cmp == Cmp::Eq && outcome {
            self.exact = Some(k);
        }
        if !self.seen.contains(&(cmp, k, outcome)) {
            self.seen.push((cmp, k, outcome));
        }
    }

    fn meet(&self, o: &Facts) -> Facts {
        Facts {
            exact: if self.exact == o.exact {
                self.exact
            } else {
                None
            },
            seen: self
                .seen
                .iter()
                .copied()
                .filter(|v| o.seen.contains(v))
                .collect(),
        }
    }
}

/// The state at a program point: field facts and the frame length proven by loads so far.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct State {
    facts: HashMap<Key, Facts>,
    min_len: u64,
}

impl State {
    fn meet(&self, o: &State) -> State {
        State {
            facts: self
                .facts
                .iter()
                .filter_map(|(k, f)| o.facts.get(k).map(|g| (*k, f.meet(g))))
                .collect(),
            min_len: self.min_len.min(o.min_len),
        }
    }

    fn lookup(&self, key: &Key) -> Facts {
        let mut f = self.facts.get(key).cloned().unwrap_or_else(Facts::new);
        if key.mask != u32::MAX {
            let whole = Key {
                mask: u32::MAX,
                ..*key
            };
            if let Some(v) = self.facts.get(&whole).and_then(|w| w.exact) {
                f.exact = Some(v & key.mask);
            }
        }
        f
    }
}

/// Runs a block's statements symbolically: which temps hold which fields, and the frame length
/// the loads prove. Returns the key the branch compares, if any, and whether every statement
/// could be skipped on a path with `state` (loads in bounds, temps not needed elsewhere).
fn simulate(block: &Block, state: &mut State, shared: &HashSet<Temp>) -> (Option<Key>, bool) {
    let mut keys: HashMap<Temp, Key> = HashMap::new();
    let mut skippable = true;
    for s in &block.stmts {
        match s {
            Stmt::Load {
                dst,
                size,
                base: None,
                off,
            } => {
                let end = u64::from(*off) + u64::from(size.bytes());
                if end > state.min_len {
                    skippable = false;
                    state.min_len = end;
                }
                keys.insert(
                    *dst,
                    Key {
                        size: *size,
                        off: *off,
                        mask: u32::MAX,
                    },
                );
            }
            Stmt::Alu {
                op: AluOp::And,
                dst,
                rhs: Operand::K(m),
            } => {
                if let Some(k) = keys.get(dst).copied() {
                    keys.insert(
                        *dst,
                        Key {
                            mask: k.mask & m,
                            ..k
                        },
                    );
                } else {
                    skippable = false;
                }
            }
            other => {
                keys.remove(&other.def());
                skippable = false;
            }
        }
        if shared.contains(&s.def()) {
            skippable = false;
        }
    }
    let key = match &block.term {
        Term::Branch { a, .. } => keys.get(a).copied(),
        _ => None,
    };
    (key, skippable)
}

/// Temps used or defined in more than one block (they cannot be dropped with one block).
fn shared_temps(func: &Function) -> HashSet<Temp> {
    let mut seen: HashMap<Temp, BlockId> = HashMap::new();
    let mut shared = HashSet::new();
    for b in func.topo_order() {
        let blk = &func.blocks[b];
        let mut ts: Vec<Temp> = blk
            .stmts
            .iter()
            .flat_map(|s| {
                let mut v = s.uses();
                v.push(s.def());
                v
            })
            .collect();
        if let Term::Branch { a, b: rhs, .. } = &blk.term {
            ts.push(*a);
            if let Operand::T(t) = rhs {
                ts.push(*t);
            }
        }
        for t in ts {
            match seen.get(&t) {
                Some(&other) if other != b => {
                    shared.insert(t);
                }
                _ => {
                    seen.insert(t, b);
                }
            }
        }
    }
    shared
}

fn decide_and_thread(func: &mut Function) {
    let shared = shared_temps(func);
    let order = func.topo_order();
    let mut at_entry: HashMap<BlockId, State> = HashMap::new();
    at_entry.insert(0, State::default());
    // Per block: its key and whether it is skippable, under the state at its entry.
    for &b in &order {
        let Some(mut st) = at_entry.remove(&b) else {
            continue;
        };
        let entry_state = st.clone();
        let (key, _) = simulate(&func.blocks[b], &mut st, &shared);
        // Decide the branch from facts on every path.
        if let (
            Some(key),
            Term::Branch {
                cmp,
                b: Operand::K(k),
                t,
                f,
                ..
            },
        ) = (key, func.blocks[b].term.clone())
        {
            if let Some(r) = st.lookup(&key).decide(cmp, k) {
                func.blocks[b].term = Term::Jump(if r { t } else { f });
            }
        }
        let _ = entry_state;
        // Propagate along each edge, threading edges whose target is decided and skippable.
        let edges: Vec<(BlockId, Option<(Key, Cmp, u32, bool)>)> = match func.blocks[b].term.clone()
        {
            Term::Branch {
                cmp,
                b: Operand::K(k),
                t,
                f,
                ..
            } => match key {
                Some(key) => vec![
                    (t, Some((key, cmp, k, true))),
                    (f, Some((key, cmp, k, false))),
                ],
                None => vec![(t, None), (f, None)],
            },
            Term::Branch { t, f, .. } => vec![(t, None), (f, None)],
            Term::Jump(j) => vec![(j, None)],
            _ => vec![],
        };
        let mut new_targets = Vec::new();
        for (succ, fact) in edges {
            let mut es = st.clone();
            if let Some((key, cmp, k, r)) = fact {
                let mut f = es.lookup(&key);
                f.learn(cmp, k, r);
                es.facts.insert(key, f);
            }
            // Thread through successors decided by this edge's facts (a few hops).
            let mut target = succ;
            for _ in 0..8 {
                let blk = &func.blocks[target];
                let Term::Branch {
                    cmp,
                    b: Operand::K(k),
                    t,
                    f,
                    ..
                } = blk.term
                else {
                    break;
                };
                let mut sim = es.clone();
                let (key, skippable) = simulate(blk, &mut sim, &shared);
                let Some(key) = key else { break };
                if !skippable {
                    break;
                }
                match sim.lookup(&key).decide(cmp, k) {
                    Some(r) => {
                        let mut f2 = sim.lookup(&key);
                        f2.learn(cmp, k, r);
                        sim.facts.insert(key, f2);
                        es = sim;
                        target = if r { t } else { f };
                    }
                    None => break,
                }
            }
            new_targets.push(target);
            let merged = match at_entry.get(&target) {
                None => es,
                Some(prev) => prev.meet(&es),
            };
            at_entry.insert(target, merged);
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
}

// ---------------------------------------------------------------------------------------------
// Dead code.

fn remove_dead(func: &mut Function) {
    let order = func.topo_order();
    // Collapse blocks that can only reject, back to front.
    for &b in order.iter().rev() {
        let bare_reject = |x: BlockId, f: &Function| {
            f.blocks[x].stmts.is_empty() && f.blocks[x].term == Term::Reject
        };
        let collapse = match func.blocks[b].term {
            Term::Branch { t, f, .. } => bare_reject(t, func) && bare_reject(f, func),
            Term::Jump(j) => bare_reject(j, func),
            _ => false,
        };
        if collapse {
            func.blocks[b] = Block {
                stmts: vec![],
                term: Term::Reject,
            };
        }
        if let Term::Branch { t, f, .. } = func.blocks[b].term {
            if t == f {
                func.blocks[b].term = Term::Jump(t);
            }
        }
    }
    // Remove unused definitions that cannot reject, with proven-in-bounds loads counted as
    // unable to reject (the min length is a per-path lower bound; use the meet at each block).
    loop {
        let order = func.topo_order();
        let mut used: HashSet<Temp> = HashSet::new();
        for &b in &order {
            let blk = &func.blocks[b];
            for s in &blk.stmts {
                used.extend(s.uses());
            }
            if let Term::Branch { a, b: rhs, .. } = &blk.term {
                used.insert(*a);
                if let Operand::T(t) = rhs {
                    used.insert(*t);
                }
            }
        }
        let min_len = min_len_at_entry(func, &order);
        let mut changed = false;
        for &b in &order {
            let mut len = min_len.get(&b).copied().unwrap_or(0);
            let stmts = std::mem::take(&mut func.blocks[b].stmts);
            let mut kept = Vec::with_capacity(stmts.len());
            for s in stmts {
                let safe_load = match &s {
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
                let can_reject = s.may_reject() && !safe_load;
                if !used.contains(&s.def()) && !can_reject {
                    changed = true;
                    continue;
                }
                kept.push(s);
            }
            func.blocks[b].stmts = kept;
        }
        if !changed {
            break;
        }
    }
}

fn min_len_at_entry(func: &Function, order: &[BlockId]) -> HashMap<BlockId, u64> {
    let mut at: HashMap<BlockId, u64> = HashMap::new();
    at.insert(0, 0);
    for &b in order {
        let mut len = at.get(&b).copied().unwrap_or(0);
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
            let v = at.get(&s).map_or(len, |&p| p.min(len));
            at.insert(s, v);
        }
    }
    at
}
