//! The optimizer: rewrites of the IR that never change a verdict.
//!
//! Passes, repeated until nothing changes (bounded by [`MAX_ROUNDS`]):
//!
//! 1. **Constant folding**: constants are propagated through moves and ALU operations, branches
//!    between constants are decided, `x & 0` and `x * 0` become 0 and `x + 0` (and `| ^ << >>`
//!    by 0) disappear, as in libpcap. A division or modulus by a constant zero on a reachable
//!    path (or a shift by a constant of 32 or more) is an error, as libpcap's optimizer reports
//!    it.
//! 2. **Decided tests**: a forward data-flow over the acyclic graph records, for each value
//!    computed from the frame (a [`Key`]: loads at constant offsets, loads at computed offsets
//!    such as a port after the IPv4 header, the length, and arithmetic on them), which tests
//!    every path so far took and with what outcome. A branch those facts decide becomes a
//!    jump. The reasoning is libpcap's (`fold_edge`): the same test gives the same result, and
//!    a value known equal to `v` decides every `==`.
//!
//! [`libpcap_rejects_all`] runs the same passes with libpcap's extra, verdict-changing folds
//! (`0 / x` is 0) to predict when libpcap refuses a filter as "rejects all packets"; that
//! prediction is approximate (libpcap's optimizer is a different algorithm) and the random
//! differential test reports the expressions where it is wrong.
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

use std::hash::{BuildHasherDefault, Hasher};

use crate::ir::*;

/// A small, fast, non-cryptographic hasher (the Fx hash of rustc and Firefox): the optimizer
/// hashes only its own small integer keys, never attacker-chosen data in bulk, so SipHash's
/// flooding resistance buys nothing here and costs most of the optimizer's time.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

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

/// Optimizes `func` in place. With `report_errors`, a division or modulus by a constant zero,
/// or a shift of an unknown value by a constant of 32 or more, on a path still reachable after
/// optimization, is an error (libpcap's optimizer reports these; where libpcap does not
/// optimize, e.g. after `protochain`, the caller passes `false` and such operations stay, to
/// reject or give 0 at run time).
pub fn optimize(func: &mut Function, report_errors: bool) -> Result<(), OptError> {
    run_passes(func, Mode::Sound);
    if report_errors {
        fold_constants(&mut func.clone(), Mode::Strict)?;
    }
    Ok(())
}

fn run_passes(func: &mut Function, mode: Mode) {
    func.compact();
    for _ in 0..MAX_ROUNDS {
        let before = func.clone();
        // Only the strict mode errs, and it is not used here.
        let _ = fold_constants(func, mode);
        decide_and_thread(func);
        remove_dead(func);
        func.compact();
        if *func == before {
            break;
        }
    }
}

/// Whether `func` has operations libpcap's prover folds and ours does not (`0 * x`, `0 / x`,
/// ... with a register operand): only then can [`libpcap_rejects_all`] prove more than
/// [`optimize`] does.
pub fn has_libpcap_only_folds(func: &Function) -> bool {
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

/// Predicts whether libpcap's optimizer would prove that the unoptimized `func` rejects every
/// frame (and so refuse the filter with "expression rejects all packets"). It runs our passes
/// with libpcap's extra, unsound folds, after making the tests in `opaque` undecidable
/// (libpcap decides those but leaves them in place). An approximation: see the module docs.
pub fn libpcap_rejects_all(func: &Function, opaque: &[Temp]) -> bool {
    let mut f = func.clone();
    let unknown = Temp(u32::MAX);
    for b in &mut f.blocks {
        if let Term::Branch { a, .. } = b.term {
            if opaque.contains(&a) {
                b.stmts.push(Stmt::Mov {
                    dst: a,
                    src: Operand::T(unknown),
                });
            }
        }
    }
    run_passes(&mut f, Mode::Aggressive);
    always_rejects(&f)
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

/// How far constant folding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Verdict-preserving (the optimizer proper).
    Sound,
    /// As `Sound`, but report what libpcap's optimizer reports as errors.
    Strict,
    /// Also libpcap's unsound folds (`0 / x` is 0), for predicting what it proves.
    Aggressive,
}

fn fold_constants(func: &mut Function, mode: Mode) -> Result<(), OptError> {
    let order = func.topo_order();
    let mut at_entry: HashMap<BlockId, Consts> = HashMap::default();
    at_entry.insert(0, Consts::default());
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
                        // libpcap's prover (not ours: `0 / x` rejects when x is 0).
                        (Some(0), _)
                            if mode == Mode::Aggressive
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
                        (Some(a), Some(k)) => match op.eval(a, k) {
                            Some(v) => {
                                c.insert(dst, v);
                                Some(Stmt::Mov {
                                    dst,
                                    src: Operand::K(v),
                                })
                            }
                            None => {
                                if mode == Mode::Strict {
                                    return Err(if op == AluOp::Div {
                                        OptError::DivisionByZero
                                    } else {
                                        OptError::ModulusByZero
                                    });
                                }
                                c.remove(&dst);
                                Some(Stmt::Alu { op, dst, rhs })
                            }
                        },
                        (_, Some(k)) if unsafe_k(k) => {
                            if mode == Mode::Strict {
                                return Err(match op {
                                    AluOp::Div => OptError::DivisionByZero,
                                    AluOp::Mod => OptError::ModulusByZero,
                                    _ => OptError::ShiftTooLarge,
                                });
                            }
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
                    // libpcap's optimizer does not see through a negation when it looks for
                    // errors (`x >> 4 * -4` compiles).
                    Some(_) if mode == Mode::Strict => {
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

/// A value computed from the frame: a load at a constant offset, a load at an offset computed
/// from other such values (the transport header after IPv4), the wire length, constants, and
/// operations on them. Two equal keys denote the same value on any one frame (libpcap's value
/// numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Abs { size: Size, off: u32 },
    Ind { size: Size, base: KeyId, off: u32 },
    Len,
    Const(u32),
    Op(AluOp, KeyId, KeyId),
}

/// A [`Key`] interned: equal values get equal ids within one [`Interner`] (hash-consing), so
/// facts are keyed by a number and copying them allocates nothing per key.
type KeyId = u32;

#[derive(Default)]
struct Interner {
    ids: HashMap<Key, KeyId>,
}

impl Interner {
    fn id(&mut self, k: Key) -> KeyId {
        let n = self.ids.len() as KeyId;
        *self.ids.entry(k).or_insert(n)
    }
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
    facts: HashMap<KeyId, Facts>,
    min_len: u64,
    /// Loads performed on every path so far (so they cannot fail again).
    loaded: HashSet<KeyId>,
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
            loaded: self.loaded.intersection(&o.loaded).copied().collect(),
        }
    }

    fn lookup(&self, key: &KeyId) -> Facts {
        // A masked field is a different value to libpcap's optimizer (it does not derive
        // `x & m` from a known `x`), so neither do we.
        self.facts.get(key).cloned().unwrap_or_else(Facts::new)
    }
}

/// Runs a block's statements symbolically: which temps hold which values, which loads happen
/// and the frame length they prove. Returns the key of the value the branch compares, if
/// known, and whether the whole block could be skipped on a path in `state` (every load
/// already done on the path or in bounds, nothing that can reject, no temp needed elsewhere).
fn simulate(
    block: &Block,
    state: &mut State,
    shared: &HashSet<Temp>,
    keys_of: &mut Interner,
) -> (Option<KeyId>, bool) {
    let mut keys: HashMap<Temp, KeyId> = HashMap::default();
    let mut skippable = true;
    for s in &block.stmts {
        let operand = |keys: &HashMap<Temp, KeyId>, o: &Operand, ki: &mut Interner| match o {
            Operand::K(k) => Some(ki.id(Key::Const(*k))),
            Operand::T(t) => keys.get(t).copied(),
        };
        let key = match s {
            Stmt::Load {
                size, base, off, ..
            } => {
                let key = match base {
                    None => Some(keys_of.id(Key::Abs {
                        size: *size,
                        off: *off,
                    })),
                    Some(t) => keys.get(t).copied().map(|b| {
                        keys_of.id(Key::Ind {
                            size: *size,
                            base: b,
                            off: *off,
                        })
                    }),
                };
                let in_bounds =
                    base.is_none() && u64::from(*off) + u64::from(size.bytes()) <= state.min_len;
                let done_before = key.is_some_and(|k| state.loaded.contains(&k));
                if !(in_bounds || done_before) {
                    skippable = false;
                }
                if base.is_none() {
                    state.min_len = state.min_len.max(u64::from(*off) + u64::from(size.bytes()));
                }
                if let Some(k) = key {
                    state.loaded.insert(k);
                }
                key
            }
            Stmt::Len { .. } => Some(keys_of.id(Key::Len)),
            Stmt::Mov { src, .. } => operand(&keys, src, keys_of),
            Stmt::Alu { op, dst, rhs } => {
                if s.may_reject() {
                    skippable = false;
                }
                match (keys.get(dst).copied(), operand(&keys, rhs, keys_of)) {
                    (Some(a), Some(b)) => Some(keys_of.id(Key::Op(*op, a, b))),
                    _ => None,
                }
            }
            Stmt::Neg { dst } => keys.get(dst).copied().map(|a| {
                let zero = keys_of.id(Key::Const(0));
                keys_of.id(Key::Op(AluOp::Sub, zero, a))
            }),
        };
        match key {
            Some(k) => {
                keys.insert(s.def(), k);
            }
            None => {
                keys.remove(&s.def());
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

/// What [`simulate`] finds in a block that does not depend on the path: the key of the value
/// its branch compares, its loads (key, and end offset when absolute), and whether it is free
/// of other effects (nothing else can reject, no temp it defines is used elsewhere).
struct Summary {
    key: Option<KeyId>,
    loads: Vec<(KeyId, Option<u64>)>,
    pure: bool,
}

impl Summary {
    fn of(block: &Block, shared: &HashSet<Temp>, keys_of: &mut Interner) -> Summary {
        let mut st = State::default();
        let (key, _) = simulate(block, &mut st, shared, keys_of);
        let mut loads = Vec::new();
        let mut pure = true;
        let mut temp_keys: HashMap<Temp, KeyId> = HashMap::default();
        // Re-walk for the loads (simulate folds them into a state).
        for s in &block.stmts {
            if shared.contains(&s.def()) {
                pure = false;
            }
            match s {
                Stmt::Load {
                    dst,
                    size,
                    base: None,
                    off,
                } => {
                    let id = keys_of.id(Key::Abs {
                        size: *size,
                        off: *off,
                    });
                    loads.push((id, Some(u64::from(*off) + u64::from(size.bytes()))));
                    temp_keys.insert(*dst, id);
                }
                Stmt::Load {
                    dst, base: Some(b), ..
                } => {
                    // The base's key as simulate computed it.
                    let mut probe = State::default();
                    let sub = Block {
                        stmts: block.stmts[..]
                            .iter()
                            .take_while(|x| !std::ptr::eq(*x, s))
                            .cloned()
                            .chain(std::iter::once(s.clone()))
                            .collect(),
                        term: Term::Branch {
                            cmp: Cmp::Eq,
                            a: *dst,
                            b: Operand::K(0),
                            t: 0,
                            f: 0,
                        },
                    };
                    let _ = b;
                    match simulate(&sub, &mut probe, &HashSet::default(), keys_of).0 {
                        Some(id) => {
                            loads.push((id, None));
                            temp_keys.insert(*dst, id);
                        }
                        None => pure = false,
                    }
                }
                other if other.may_reject() => pure = false,
                _ => {}
            }
        }
        Summary { key, loads, pure }
    }

    /// Whether the block could be skipped on a path in `st`.
    fn skippable(&self, st: &State) -> bool {
        self.pure
            && self
                .loads
                .iter()
                .all(|(id, end)| end.is_some_and(|e| e <= st.min_len) || st.loaded.contains(id))
    }

    /// The block's loads happen on a path in `st`.
    fn apply(&self, st: &mut State) {
        for (id, end) in &self.loads {
            st.loaded.insert(*id);
            if let Some(e) = end {
                st.min_len = st.min_len.max(*e);
            }
        }
    }
}

/// Temps used or defined in more than one block (they cannot be dropped with one block).
fn shared_temps(func: &Function) -> HashSet<Temp> {
    let mut seen: HashMap<Temp, BlockId> = HashMap::default();
    let mut shared = HashSet::default();
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

/// What taking an edge teaches: the field, the test, and its outcome.
type EdgeFact = Option<(KeyId, Cmp, u32, bool)>;

fn decide_and_thread(func: &mut Function) {
    let shared = shared_temps(func);
    let mut keys_of = Interner::default();
    let order = func.topo_order();
    let mut summaries: Vec<Option<Summary>> = (0..func.blocks.len()).map(|_| None).collect();
    for &b in &order {
        summaries[b] = Some(Summary::of(&func.blocks[b], &shared, &mut keys_of));
    }
    let mut at_entry: HashMap<BlockId, State> = HashMap::default();
    at_entry.insert(0, State::default());
    for &b in &order {
        let Some(mut st) = at_entry.remove(&b) else {
            continue;
        };
        let Some(summary) = summaries[b].as_ref() else {
            continue;
        };
        summary.apply(&mut st);
        let key = summary.key;
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
        // Propagate along each edge, threading edges whose target is decided and skippable.
        let edges: Vec<(BlockId, EdgeFact)> = match func.blocks[b].term.clone() {
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
        let n_edges = edges.len();
        let mut new_targets = Vec::with_capacity(2);
        let mut st = Some(st);
        for (i, (succ, fact)) in edges.into_iter().enumerate() {
            let mut es = if i + 1 == n_edges {
                st.take().unwrap_or_default()
            } else {
                st.clone().unwrap_or_default()
            };
            if let Some((key, cmp, k, r)) = fact {
                let mut f = es.lookup(&key);
                f.learn(cmp, k, r);
                es.facts.insert(key, f);
            }
            // Thread through successors decided by this edge's facts (a few hops).
            let mut target = succ;
            for _ in 0..8 {
                let Term::Branch {
                    cmp,
                    b: Operand::K(k),
                    t,
                    f,
                    ..
                } = func.blocks[target].term
                else {
                    break;
                };
                let Some(sum) = summaries[target].as_ref() else {
                    break;
                };
                let Some(key) = sum.key else { break };
                if !sum.skippable(&es) {
                    break;
                }
                match es.lookup(&key).decide(cmp, k) {
                    Some(r) => {
                        sum.apply(&mut es);
                        let mut f2 = es.lookup(&key);
                        f2.learn(cmp, k, r);
                        es.facts.insert(key, f2);
                        target = if r { t } else { f };
                    }
                    None => break,
                }
            }
            new_targets.push(target);
            let merged = match at_entry.remove(&target) {
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
        let mut used: HashSet<Temp> = HashSet::default();
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
    let mut at: HashMap<BlockId, u64> = HashMap::default();
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
