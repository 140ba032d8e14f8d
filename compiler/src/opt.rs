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
//!    computed from the frame (a `Key`: loads at constant offsets, loads at computed offsets
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
//! After those rounds settle, once:
//!
//! 5. **Redundant loads and computations** (`reuse_values`, libpcap's value numbering on our
//!    temps): a statement computing a value some temp already holds on every path to it (the
//!    ethertype after `jeq #0x86dd` failed, `4 * (ip[0] & 0xf)` for the second port field)
//!    becomes a move from that temp; writes that leaves unread are dropped and the moves are
//!    propagated away.
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
    let mut scratch = Scratch::default();
    run_passes(func, Mode::Sound, &mut scratch);
    reuse_values(func);
    remove_dead(func, &mut scratch);
    func.compact();
    // Only a division, modulus or shift by a temp (which may hold a constant) or by a
    // constant that is an error can be reported: skip the check (and its copy) without one.
    let may_err = func.blocks.iter().any(|b| {
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
    });
    if report_errors && may_err {
        fold_constants(&mut func.clone(), Mode::Strict)?;
    }
    Ok(())
}

fn run_passes(func: &mut Function, mode: Mode, scratch: &mut Scratch) {
    func.compact();
    for _ in 0..MAX_ROUNDS {
        // Each pass says whether it changed the function; a round that changed nothing is a
        // fixed point (the passes are deterministic), so the rounds stop there.
        // Only the strict mode errs, and it is not used here.
        let mut changed = may_fold(func) && fold_constants(func, mode).unwrap_or(true);
        changed |= decide_and_thread(func, scratch);
        changed |= remove_dead(func, scratch);
        changed |= func.compact();
        if !changed {
            break;
        }
    }
}

/// Whether [`fold_constants`] could change anything: only a constant moved into a temp (from
/// which constants spread) or an operation with a constant 0 (`x & 0`, `x + 0`) gives it
/// something to do. Most filters have neither, and the check is far cheaper than the pass.
fn may_fold(func: &Function) -> bool {
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

/// Buffers the passes reuse from round to round, so that a round allocates next to nothing.
#[derive(Default)]
struct Scratch {
    /// Frame values to numbers; keys do not depend on temps, so they stay valid across rounds.
    keys_of: Interner,
    order: Vec<BlockId>,
    reach: Vec<bool>,
    shared_seen: Vec<BlockId>,
    shared: TempSet,
    used: TempSet,
    min_len: Vec<u64>,
    /// Per block: what [`Summary::of`] found; the loads of all blocks are in `loads`.
    summaries: Vec<Summary>,
    loads: Vec<(KeyId, Option<u64>)>,
    block_keys: Vec<(Temp, KeyId)>,
    at_entry: Vec<Option<State>>,
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
    run_passes(&mut f, Mode::Aggressive, &mut Scratch::default());
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

/// Folds constants; says whether anything changed.
fn fold_constants(func: &mut Function, mode: Mode) -> Result<bool, OptError> {
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
    Ok(changed)
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

struct Interner {
    ids: HashMap<Key, KeyId>,
}

impl Default for Interner {
    fn default() -> Self {
        // Room for the keys of a typical filter, so the table does not grow step by step.
        Interner {
            ids: HashMap::with_capacity_and_hasher(64, Default::default()),
        }
    }
}

impl Interner {
    fn id(&mut self, k: Key) -> KeyId {
        let n = self.ids.len() as KeyId;
        *self.ids.entry(k).or_insert(n)
    }
}

/// One fact about frame values, as a sortable tuple: the kind ([`EXACT`], [`SEEN`],
/// [`LOADED`]), the value's key, the comparison (as a number), the constant, and the outcome.
/// An `EXACT` fact `(EXACT, key, 0, v, false)`: a true `==` test fixed the value to `v` (one
/// per key). A `SEEN` fact: that test was taken with that outcome. A `LOADED` fact
/// `(LOADED, key, 0, 0, false)`: the load was performed, so it cannot fail again.
type Fact = (u8, KeyId, u8, u32, bool);
const EXACT: u8 = 0;
const SEEN: u8 = 1;
const LOADED: u8 = 2;

/// The state at a program point: what every path to it learned about frame values, and the
/// frame length proven so far. The facts are one sorted vector: copied along every edge and
/// met at every join, so a flat vector (one allocation, merge-joins) beats maps.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct State {
    /// Sorted, no duplicates.
    facts: Vec<Fact>,
    min_len: u64,
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

/// Inserts into a sorted vector unless present.
fn insert_sorted<T: Ord + Copy>(v: &mut Vec<T>, x: T) {
    if let Err(i) = v.binary_search(&x) {
        v.insert(i, x);
    }
}

impl State {
    /// Keeps only the facts `o` also has (the meet at a join), in place.
    fn meet_with(&mut self, o: &State) {
        let mut j = 0;
        self.facts.retain(|x| {
            while j < o.facts.len() && o.facts[j] < *x {
                j += 1;
            }
            j < o.facts.len() && o.facts[j] == *x
        });
        self.min_len = self.min_len.min(o.min_len);
    }

    /// Decides `key cmp k` with the reasoning libpcap's optimizer uses (`fold_edge`): the
    /// same test taken before gives the same result, and a value known equal to `v` (a true
    /// `==` test) decides any `==`. Deciding more (ranges from `>` tests, field widths) would
    /// be sound, but would make us refuse as "rejects all packets" filters libpcap compiles.
    /// A masked field is a different key (libpcap does not derive `x & m` from a known `x`).
    fn decide(&self, key: KeyId, cmp: Cmp, k: u32) -> Option<bool> {
        if cmp == Cmp::Eq {
            if let Some(v) = self.exact(key) {
                return Some(v == k);
            }
        }
        let c = cmp as u8;
        if self.facts.binary_search(&(SEEN, key, c, k, false)).is_ok() {
            Some(false)
        } else if self.facts.binary_search(&(SEEN, key, c, k, true)).is_ok() {
            Some(true)
        } else {
            None
        }
    }

    /// Where the `EXACT` fact for `key` is or would go.
    fn exact_slot(&self, key: KeyId) -> usize {
        self.facts
            .partition_point(|&(kind, x, ..)| (kind, x) < (EXACT, key))
    }

    fn exact(&self, key: KeyId) -> Option<u32> {
        match self.facts.get(self.exact_slot(key)) {
            Some(&(EXACT, x, _, v, _)) if x == key => Some(v),
            _ => None,
        }
    }

    fn learn(&mut self, key: KeyId, cmp: Cmp, k: u32, outcome: bool) {
        if cmp == Cmp::Eq && outcome {
            let i = self.exact_slot(key);
            match self.facts.get_mut(i) {
                Some((EXACT, x, _, v, _)) if *x == key => *v = k,
                _ => self.facts.insert(i, (EXACT, key, 0, k, false)),
            }
        }
        insert_sorted(&mut self.facts, (SEEN, key, cmp as u8, k, outcome));
    }

    fn is_loaded(&self, key: KeyId) -> bool {
        self.facts
            .binary_search(&(LOADED, key, 0, 0, false))
            .is_ok()
    }

    fn set_loaded(&mut self, key: KeyId) {
        insert_sorted(&mut self.facts, (LOADED, key, 0, 0, false));
    }
}

/// What a block does that does not depend on the path: the key of the value its branch
/// compares, its loads (key, and end offset when absolute: the range `loads` of
/// [`Scratch::loads`]), and whether it is free of other effects (nothing else can reject, no
/// temp it defines is used elsewhere).
#[derive(Clone, Copy, Default)]
struct Summary {
    key: Option<KeyId>,
    loads: (u32, u32),
    pure: bool,
}

/// A load a block makes: its key, and its end offset when the offset is constant.
type BlockLoad = (KeyId, Option<u64>);

impl Summary {
    /// Runs the block's statements symbolically: which temps hold which values (keys). The
    /// block's loads are appended to `loads_out`; `keys` is scratch space.
    fn of(
        block: &Block,
        shared: &TempSet,
        keys_of: &mut Interner,
        keys: &mut Vec<(Temp, KeyId)>,
        loads_out: &mut Vec<BlockLoad>,
    ) -> Summary {
        // Temps to keys within the block; blocks are short, so a list.
        keys.clear();
        let get = |keys: &Vec<(Temp, KeyId)>, t: Temp| {
            keys.iter().rev().find(|(x, _)| *x == t).map(|&(_, k)| k)
        };
        let start = loads_out.len() as u32;
        let mut pure = true;
        for s in &block.stmts {
            let operand = |keys: &Vec<(Temp, KeyId)>, o: &Operand, ki: &mut Interner| match o {
                Operand::K(k) => Some(ki.id(Key::Const(*k))),
                Operand::T(t) => get(keys, *t),
            };
            let key = match s {
                Stmt::Load {
                    size,
                    base: None,
                    off,
                    ..
                } => {
                    let id = keys_of.id(Key::Abs {
                        size: *size,
                        off: *off,
                    });
                    loads_out.push((id, Some(u64::from(*off) + u64::from(size.bytes()))));
                    Some(id)
                }
                Stmt::Load {
                    size,
                    base: Some(t),
                    off,
                    ..
                } => match get(keys, *t) {
                    Some(b) => {
                        let id = keys_of.id(Key::Ind {
                            size: *size,
                            base: b,
                            off: *off,
                        });
                        loads_out.push((id, None));
                        Some(id)
                    }
                    None => {
                        pure = false;
                        None
                    }
                },
                Stmt::Len { .. } => Some(keys_of.id(Key::Len)),
                Stmt::Mov { src, .. } => operand(keys, src, keys_of),
                Stmt::Alu { op, dst, rhs } => {
                    if s.may_reject() {
                        pure = false;
                    }
                    match (get(keys, *dst), operand(keys, rhs, keys_of)) {
                        (Some(a), Some(b)) => Some(keys_of.id(Key::Op(*op, a, b))),
                        _ => None,
                    }
                }
                Stmt::Neg { dst } => get(keys, *dst).map(|a| {
                    let zero = keys_of.id(Key::Const(0));
                    keys_of.id(Key::Op(AluOp::Sub, zero, a))
                }),
            };
            let def = s.def();
            keys.retain(|(x, _)| *x != def);
            if let Some(k) = key {
                keys.push((def, k));
            }
            if shared.contains(&def) {
                pure = false;
            }
        }
        let key = match &block.term {
            Term::Branch { a, .. } => get(keys, *a),
            _ => None,
        };
        Summary {
            key,
            loads: (start, loads_out.len() as u32),
            pure,
        }
    }

    fn loads<'a>(&self, all: &'a [BlockLoad]) -> &'a [BlockLoad] {
        &all[self.loads.0 as usize..self.loads.1 as usize]
    }

    /// Whether the block could be skipped on a path in `st`.
    fn skippable(&self, all: &[BlockLoad], st: &State) -> bool {
        self.pure
            && self
                .loads(all)
                .iter()
                .all(|(id, end)| end.is_some_and(|e| e <= st.min_len) || st.is_loaded(*id))
    }

    /// The block's loads happen on a path in `st`.
    fn apply(&self, all: &[BlockLoad], st: &mut State) {
        for (id, end) in self.loads(all) {
            st.set_loaded(*id);
            if let Some(e) = end {
                st.min_len = st.min_len.max(*e);
            }
        }
    }
}

/// A set of temps: one flag per temp below the function's count (temps are numbered densely
/// from 0), and a list for any other (the "unknown" temp [`libpcap_rejects_all`] adds).
#[derive(Default)]
struct TempSet {
    flags: Vec<bool>,
    others: Vec<Temp>,
}

impl TempSet {
    /// Empties the set, for temps below `n`.
    fn reset(&mut self, n: u32) {
        self.flags.clear();
        self.flags.resize(n as usize, false);
        self.others.clear();
    }

    fn contains(&self, t: &Temp) -> bool {
        match self.flags.get(t.0 as usize) {
            Some(&f) => f,
            None => self.others.contains(t),
        }
    }

    fn insert(&mut self, t: Temp) {
        match self.flags.get_mut(t.0 as usize) {
            Some(f) => *f = true,
            None => {
                if !self.others.contains(&t) {
                    self.others.push(t);
                }
            }
        }
    }
}

/// Finds the temps used or defined in more than one block (they cannot be dropped with one
/// block), into `shared`; `seen` is scratch space.
fn shared_temps(func: &Function, order: &[BlockId], seen: &mut Vec<BlockId>, shared: &mut TempSet) {
    seen.clear();
    seen.resize(func.num_temps as usize, BlockId::MAX);
    shared.reset(func.num_temps);
    for &b in order {
        let blk = &func.blocks[b];
        let term: (Option<Temp>, Option<Temp>) = match &blk.term {
            Term::Branch { a, b: rhs, .. } => (
                Some(*a),
                match rhs {
                    Operand::T(t) => Some(*t),
                    Operand::K(_) => None,
                },
            ),
            _ => (None, None),
        };
        let temps = blk
            .stmts
            .iter()
            .flat_map(|s| s.uses().chain(std::iter::once(s.def())))
            .chain(term.0)
            .chain(term.1);
        for t in temps {
            // A temp outside the count (the probe's unknown) counts as shared.
            match seen.get_mut(t.0 as usize) {
                Some(other) if *other == BlockId::MAX => *other = b,
                Some(other) if *other == b => {}
                _ => shared.insert(t),
            }
        }
    }
}

/// What taking an edge teaches: the field, the test, and its outcome.
type EdgeFact = Option<(KeyId, Cmp, u32, bool)>;

/// Decides branches from the facts on every path to them and threads edges through blocks
/// those facts decide; says whether anything changed.
fn decide_and_thread(func: &mut Function, sc: &mut Scratch) -> bool {
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let order = std::mem::take(&mut sc.order);
    shared_temps(func, &order, &mut sc.shared_seen, &mut sc.shared);
    sc.summaries.clear();
    sc.summaries.resize(func.blocks.len(), Summary::default());
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
    let (summaries, loads) = (&sc.summaries, &sc.loads[..]);
    let at_entry = &mut sc.at_entry;
    at_entry.clear();
    at_entry.resize(func.blocks.len(), None);
    if let Some(e) = at_entry.first_mut() {
        *e = Some(State::default());
    }
    let mut changed = false;
    for &b in &order {
        let Some(mut st) = at_entry[b].take() else {
            continue;
        };
        let summary = summaries[b];
        summary.apply(loads, &mut st);
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
        ) = (key, &func.blocks[b].term)
        {
            if let Some(r) = st.decide(key, *cmp, *k) {
                func.blocks[b].term = Term::Jump(if r { *t } else { *f });
                changed = true;
            }
        }
        // Propagate along each edge, threading edges whose target is decided and skippable.
        let (edges, n_edges): ([(BlockId, EdgeFact); 2], usize) = match func.blocks[b].term {
            Term::Branch {
                cmp,
                b: Operand::K(k),
                t,
                f,
                ..
            } => match key {
                Some(key) => (
                    [
                        (t, Some((key, cmp, k, true))),
                        (f, Some((key, cmp, k, false))),
                    ],
                    2,
                ),
                None => ([(t, None), (f, None)], 2),
            },
            Term::Branch { t, f, .. } => ([(t, None), (f, None)], 2),
            Term::Jump(j) => ([(j, None), (j, None)], 1),
            _ => ([(0, None), (0, None)], 0),
        };
        let mut new_targets = [0; 2];
        let mut st = Some(st);
        for (i, &(succ, fact)) in edges[..n_edges].iter().enumerate() {
            let mut es = if i + 1 == n_edges {
                st.take().unwrap_or_default()
            } else {
                st.clone().unwrap_or_default()
            };
            if let Some((key, cmp, k, r)) = fact {
                es.learn(key, cmp, k, r);
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
                let sum = summaries[target];
                let Some(key) = sum.key else { break };
                if !sum.skippable(loads, &es) {
                    break;
                }
                match es.decide(key, cmp, k) {
                    Some(r) => {
                        sum.apply(loads, &mut es);
                        es.learn(key, cmp, k, r);
                        target = if r { t } else { f };
                    }
                    None => break,
                }
            }
            changed |= target != succ;
            new_targets[i] = target;
            at_entry[target] = Some(match at_entry[target].take() {
                None => es,
                Some(mut prev) => {
                    prev.meet_with(&es);
                    prev
                }
            });
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
    sc.order = order;
    changed
}

// ---------------------------------------------------------------------------------------------
// Dead code.

/// Removes dead code (see the module docs); says whether anything changed.
fn remove_dead(func: &mut Function, sc: &mut Scratch) -> bool {
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
            if t == f {
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
    // Only statements go, so the order stays.
    let order = &sc.order;
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
            if let Term::Branch { a, b: rhs, .. } = &blk.term {
                used.insert(*a);
                if let Operand::T(t) = rhs {
                    used.insert(*t);
                }
            }
        }
        min_len_at_entry_into(func, order, &mut sc.min_len);
        let mut removed = false;
        for &b in order {
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
                let can_reject = s.may_reject() && !safe_load;
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

fn min_len_at_entry(func: &Function, order: &[BlockId]) -> Vec<u64> {
    let mut at = Vec::new();
    min_len_at_entry_into(func, order, &mut at);
    at
}

/// For each block, the frame length every path to it has proven by its loads, into `at`.
fn min_len_at_entry_into(func: &Function, order: &[BlockId], at: &mut Vec<u64>) {
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

// ---------------------------------------------------------------------------------------------
// Redundant loads and computations.

/// What a temp holds, independent of the path (a value number's meaning): a frame load at a
/// constant offset or at a value plus a constant, the wire length, a constant, or an
/// operation on value numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Value {
    Abs { size: Size, off: u32 },
    Ind { size: Size, base: u32, off: u32 },
    Len,
    Const(u32),
    Op(AluOp, u32, u32),
    Neg(u32),
}

/// Value numbers: equal [`Value`]s get equal numbers (hash-consing).
#[derive(Default)]
struct Numbering {
    ids: HashMap<Value, u32>,
}

impl Numbering {
    fn id(&mut self, v: Value) -> u32 {
        let n = self.ids.len() as u32;
        *self.ids.entry(v).or_insert(n)
    }
}

/// Upper bound on the (temp, value number) pairs tracked at a point. Filters hold a handful
/// of values; the bound keeps the pass linear on pathological input (forgetting an entry can
/// cost an instruction, never a verdict).
const MAX_HELD: usize = 64;

/// Which temps hold which value numbers on every path to a point.
type Held = Vec<(Temp, u32)>;

fn held_by(held: &Held, t: Temp) -> Option<u32> {
    held.iter().find(|(x, _)| *x == t).map(|&(_, v)| v)
}

fn operand_number(n: &mut Numbering, held: &Held, o: Operand) -> Option<u32> {
    match o {
        Operand::K(k) => Some(n.id(Value::Const(k))),
        Operand::T(t) => held_by(held, t),
    }
}

/// libpcap's value numbering, on our temps: a statement computing a value that another temp
/// holds on every path to it (a load of a field already loaded, `4 * (ip[0] & 0xf)` computed
/// again for the next port test) becomes a move from that temp; writes made useless by that
/// are dropped, and moves from temps that no longer change are propagated away.
///
/// Sound because the earlier computation ran on every path and did not reject (else the frame
/// was already rejected): the repeated one cannot reject either and gives the same value.
fn reuse_values(func: &mut Function) {
    let order = func.topo_order();
    let mut numbers = Numbering::default();
    let mut at_entry: Vec<Option<Held>> = vec![None; func.blocks.len()];
    if let Some(e) = at_entry.first_mut() {
        *e = Some(Held::new());
    }
    let mut changed = false;
    for &b in &order {
        let mut held = at_entry[b].take().unwrap_or_default();
        for s in &mut func.blocks[b].stmts {
            let n = &mut numbers;
            let vn = match *s {
                Stmt::Load {
                    size,
                    base: None,
                    off,
                    ..
                } => Some(n.id(Value::Abs { size, off })),
                Stmt::Load {
                    size,
                    base: Some(base),
                    off,
                    ..
                } => held_by(&held, base).map(|base| n.id(Value::Ind { size, base, off })),
                Stmt::Len { .. } => Some(n.id(Value::Len)),
                Stmt::Mov { src, .. } => operand_number(n, &held, src),
                Stmt::Alu { op, dst, rhs } => {
                    match (held_by(&held, dst), operand_number(n, &held, rhs)) {
                        (Some(a), Some(r)) => Some(n.id(Value::Op(op, a, r))),
                        _ => None,
                    }
                }
                Stmt::Neg { dst } => held_by(&held, dst).map(|a| n.id(Value::Neg(a))),
            };
            let dst = s.def();
            if let (Some(vn), false) = (vn, matches!(s, Stmt::Mov { .. })) {
                if let Some(&(t, _)) = held.iter().find(|&&(t, v)| v == vn && t != dst) {
                    *s = Stmt::Mov {
                        dst,
                        src: Operand::T(t),
                    };
                    changed = true;
                }
            }
            held.retain(|&(t, _)| t != dst);
            if let Some(vn) = vn {
                if held.len() == MAX_HELD {
                    held.remove(0);
                }
                held.push((dst, vn));
            }
        }
        for succ in func.blocks[b].succs() {
            at_entry[succ] = Some(match at_entry[succ].take() {
                None => held.clone(),
                Some(prev) => prev.into_iter().filter(|p| held.contains(p)).collect(),
            });
        }
    }
    if changed {
        drop_overwritten(func, &order);
        propagate_copies(func, &order);
    }
}

/// Drops, within each block, writes to a temp that the block overwrites before anything reads
/// it, when they cannot reject (pure arithmetic, loads proven in bounds by earlier loads).
fn drop_overwritten(func: &mut Function, order: &[BlockId]) {
    let min_len = min_len_at_entry(func, order);
    let mut unneeded: Vec<Temp> = Vec::new();
    let mut len_before: Vec<u64> = Vec::new();
    for &b in order {
        let blk = &mut func.blocks[b];
        // The frame length proven before each statement.
        len_before.clear();
        let mut len = min_len.get(b).copied().unwrap_or(0);
        for s in &blk.stmts {
            len_before.push(len);
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
        // Backwards: a temp is unneeded where it is written again before any read.
        unneeded.clear();
        let mut keep = vec![true; blk.stmts.len()];
        for (i, s) in blk.stmts.iter().enumerate().rev() {
            let def = s.def();
            let in_bounds = match s {
                Stmt::Load {
                    base: None,
                    off,
                    size,
                    ..
                } => u64::from(*off) + u64::from(size.bytes()) <= len_before[i],
                _ => false,
            };
            if unneeded.contains(&def) && (in_bounds || !s.may_reject()) {
                keep[i] = false;
                continue;
            }
            if !unneeded.contains(&def) {
                unneeded.push(def);
            }
            let uses = s.uses();
            unneeded.retain(|t| !uses.clone().any(|u| u == *t));
        }
        if keep.contains(&false) {
            let mut i = 0;
            blk.stmts.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
    }
}

/// Where a temp is written: how often, and whether all writes are in one block (which one,
/// and the index of the last write there).
#[derive(Clone, Copy, Default)]
struct Writes {
    count: u32,
    block: Option<BlockId>,
    last: usize,
    one_block: bool,
}

/// Removes `d = s` where `d` is written only there and `s` no longer changes after it (all of
/// `s`'s writes are in one block, which every path runs before the move, as `s` is written
/// before it is read: the graph is acyclic, so that block cannot run again), reading `s`
/// wherever `d` was read. Also drops `t = t`.
fn propagate_copies(func: &mut Function, order: &[BlockId]) {
    let n = func.num_temps as usize;
    let mut writes = vec![Writes::default(); n];
    for &b in order {
        for (i, s) in func.blocks[b].stmts.iter().enumerate() {
            if let Some(w) = writes.get_mut(s.def().0 as usize) {
                w.one_block = match w.block {
                    None => true,
                    Some(other) => w.one_block && other == b,
                };
                w.block = Some(b);
                w.count = w.count.saturating_add(1);
                w.last = i;
            }
        }
    }
    let settled_at = |s: Temp, b: BlockId, i: usize| {
        writes
            .get(s.0 as usize)
            .is_some_and(|w| w.one_block && (w.block != Some(b) || w.last < i))
    };
    let mut rename: Vec<Option<Temp>> = vec![None; n];
    for &b in order {
        for (i, s) in func.blocks[b].stmts.iter().enumerate() {
            if let Stmt::Mov {
                dst,
                src: Operand::T(src),
            } = *s
            {
                let once = writes.get(dst.0 as usize).is_some_and(|w| w.count == 1);
                if dst != src && once && settled_at(src, b, i) {
                    let root = rename.get(src.0 as usize).copied().flatten().unwrap_or(src);
                    if let Some(r) = rename.get_mut(dst.0 as usize) {
                        *r = Some(root);
                    }
                }
            }
        }
    }
    let map = |t: &mut Temp| {
        if let Some(Some(r)) = rename.get(t.0 as usize) {
            *t = *r;
        }
    };
    let map_op = |o: &mut Operand| {
        if let Operand::T(t) = o {
            map(t);
        }
    };
    for &b in order {
        let blk = &mut func.blocks[b];
        blk.stmts.retain(|s| match *s {
            Stmt::Mov {
                dst,
                src: Operand::T(src),
            } => dst != src && !matches!(rename.get(dst.0 as usize), Some(Some(_))),
            _ => true,
        });
        for s in &mut blk.stmts {
            match s {
                Stmt::Load { base: Some(t), .. } => map(t),
                Stmt::Mov { src, .. } => map_op(src),
                Stmt::Alu { rhs, .. } => map_op(rhs),
                _ => {}
            }
        }
        if let Term::Branch { a, b: rhs, .. } = &mut blk.term {
            map(a);
            map_op(rhs);
        }
    }
}
