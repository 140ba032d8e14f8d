//! What the decided-tests pass knows about frame values: each block's [`Summary`] (the value
//! its branch tests, its loads, whether it is free of other effects), and the [`FactTable`],
//! which numbers every fact a pass can learn so that a program point's facts are a bit set.
//!
//! The reasoning is libpcap's (`fold_edge`): the same test gives the same result, a value
//! known equal to `v` decides every `==`, and a load performed once cannot fail again. Those
//! facts hold on every frame that reaches the point, so a test they decide is decided for every
//! frame: using them never changes a verdict.

use super::hashcons::HashCons;
use crate::ir::*;

/// A value computed from the frame: a load at a constant offset, a load at an offset computed
/// from other such values (the transport header after IPv4), the wire length, constants, and
/// operations on them. Two equal keys denote the same value on any one frame (libpcap's value
/// numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Abs { size: Size, off: u32 },
    Ind { size: Size, base: KeyId, off: u32 },
    Len,
    Const(u32),
    Op(AluOp, KeyId, KeyId),
}

/// A [`Key`] interned: equal values get equal ids within one [`Interner`] (hash-consing), so
/// facts are keyed by a number and copying them allocates nothing per key.
pub(crate) type KeyId = u32;

pub(super) type Interner = HashCons<Key>;

/// Facts about frame values at a program point, three kinds: a test was taken with a given
/// outcome (`SEEN`); a true `==` test fixed a value (`EXACT`, at most one per value holds at
/// any point); a load was performed, so it cannot fail again (`LOADED`).
///
/// Every fact a pass can learn comes from a block's test or a block's loads, so the pass
/// numbers them all up front and a program point's facts are a bit set: copied along every
/// edge, met (`and`) at every join, in a flat arena with no allocation per edge.
pub(crate) type Bits = u64;

pub(crate) fn bit(words: &[Bits], i: u32) -> bool {
    words[(i / 64) as usize] & (1 << (i % 64)) != 0
}

pub(crate) fn set_bit(words: &mut [Bits], i: u32) {
    words[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear_bit(words: &mut [Bits], i: u32) {
    words[(i / 64) as usize] &= !(1 << (i % 64));
}

/// No fact (a block without a decidable test).
pub(super) const NO_FACT: u32 = u32::MAX;

/// The facts of one block's test `key cmp k`: what its true and false edges teach, and the
/// `EXACT` fact its true edge sets when it is an `==`.
#[derive(Clone, Copy)]
pub(super) struct TestFacts {
    k: u32,
    eq: bool,
    /// The range of [`FactTable::exacts`] about `key`.
    exacts: (u32, u32),
    pub(super) t: u32,
    f: u32,
    exact: u32,
    /// With per-block facts, the range of [`FactTable::same`] holding the true and false
    /// facts of every block with this test (this one's included); empty otherwise.
    same: (u32, u32),
}

impl Default for TestFacts {
    fn default() -> Self {
        TestFacts {
            k: 0,
            eq: false,
            exacts: (0, 0),
            t: NO_FACT,
            f: NO_FACT,
            exact: NO_FACT,
            same: (0, 0),
        }
    }
}

/// The numbered facts of one pass.
#[derive(Default)]
pub(super) struct FactTable {
    /// How many facts there are.
    count: u32,
    /// Per block, its test's facts (`t == NO_FACT`: no decidable test).
    pub(super) tests: Vec<TestFacts>,
    /// Per entry of [`Scratch::loads`](super::Scratch::loads), its `LOADED` fact.
    load_facts: Vec<u32>,
    /// Per key, its `LOADED` fact (numbering scratch).
    loaded_of_key: Vec<u32>,
    /// Every decidable test as (key, comparison, constant, block), sorted (numbering scratch).
    sorted_tests: Vec<(KeyId, u8, u32, BlockId)>,
    /// Every `EXACT` fact as (key, value, fact), sorted by key.
    exacts: Vec<(KeyId, u32, u32)>,
    /// With per-block facts, the (true, false) facts of the blocks with each test, one run
    /// per test.
    same: Vec<(u32, u32)>,
    /// Facts are per block, as libpcap's edge dominators are: a later `== v` on the same
    /// value takes back no earlier `EXACT` fact (an edge dominates whatever follows it).
    per_block: bool,
}

impl FactTable {
    /// Numbers the facts of the blocks in `order`: those of each block's test and the
    /// `LOADED` fact of each load. Blocks with the same test share their facts unless
    /// `per_block`, as libpcap's `fold_edge` has them: there, what a test taught holds only
    /// where one block's edge dominates (the same test on every path to a join, from
    /// different blocks, decides nothing past it).
    pub(super) fn number(
        &mut self,
        func: &Function,
        order: &[BlockId],
        summaries: &[Summary],
        loads: &[BlockLoad],
        keys: usize,
        per_block: bool,
    ) {
        self.count = 0;
        self.per_block = per_block;
        self.exacts.clear();
        self.same.clear();
        self.loaded_of_key.clear();
        self.loaded_of_key.resize(keys, NO_FACT);
        self.load_facts.clear();
        for &(key, _) in loads {
            let slot = &mut self.loaded_of_key[key as usize];
            if *slot == NO_FACT {
                *slot = self.count;
                self.count += 1;
            }
            self.load_facts.push(*slot);
        }
        self.sorted_tests.clear();
        for &b in order {
            if let (
                Some(key),
                Term::Branch {
                    cmp,
                    b: Operand::K(k),
                    ..
                },
            ) = (summaries[b].key, &func.blocks[b].term)
            {
                self.sorted_tests.push((key, *cmp as u8, *k, b));
            }
        }
        self.sorted_tests.sort_unstable();
        self.tests.clear();
        self.tests.resize(func.blocks.len(), TestFacts::default());
        // Tests come sorted, so equal tests are neighbours and each key's tests (and so its
        // `EXACT` facts) are one run.
        let tests = &self.sorted_tests;
        let mut i = 0;
        while i < tests.len() {
            let key = tests[i].0;
            let end = i + tests[i..].iter().take_while(|t| t.0 == key).count();
            let exacts_lo = self.exacts.len() as u32;
            // Each run of blocks with the same test shares one set of facts, or with
            // `per_block` has one per block, all listed in the run's range of `same`.
            let mut r = i;
            while r < end {
                let (_, cmp, k, _) = tests[r];
                let run_end = r + tests[r..end]
                    .iter()
                    .take_while(|t| t.1 == cmp && t.2 == k)
                    .count();
                let eq = cmp == Cmp::Eq as u8;
                let same_lo = self.same.len() as u32;
                let same = if per_block {
                    (same_lo, same_lo + (run_end - r) as u32)
                } else {
                    (0, 0)
                };
                let mut tf = TestFacts::default();
                for (j, &(_, _, _, b)) in tests[r..run_end].iter().enumerate() {
                    if j == 0 || per_block {
                        let exact = if eq {
                            self.exacts.push((key, k, self.count + 2));
                            self.count + 2
                        } else {
                            NO_FACT
                        };
                        tf = TestFacts {
                            k,
                            eq,
                            exacts: (0, 0),
                            t: self.count,
                            f: self.count + 1,
                            exact,
                            same,
                        };
                        self.count += if eq { 3 } else { 2 };
                        if per_block {
                            self.same.push((tf.t, tf.f));
                        }
                    }
                    self.tests[b] = tf;
                }
                r = run_end;
            }
            let range = (exacts_lo, self.exacts.len() as u32);
            for &(_, _, _, b) in &tests[i..end] {
                self.tests[b].exacts = range;
            }
            i = end;
        }
    }

    /// The words a bit set over these facts needs.
    pub(super) fn words(&self) -> usize {
        (self.count as usize).div_ceil(64).max(1)
    }

    fn exacts_of(&self, tf: &TestFacts) -> &[(KeyId, u32, u32)] {
        &self.exacts[tf.exacts.0 as usize..tf.exacts.1 as usize]
    }

    /// Decides a block's test from the facts in `words` with the reasoning libpcap's
    /// optimizer uses (`fold_edge`): the same test taken before gives the same result, and a
    /// value known equal to `v` (a true `==` test) decides any `==`. Deciding more (ranges
    /// from `>` tests, field widths) would be sound, but would make us refuse as "rejects all
    /// packets" filters libpcap compiles. A masked field is a different key (libpcap does not
    /// derive `x & m` from a known `x`).
    pub(super) fn decide(&self, words: &[Bits], tf: &TestFacts) -> Option<bool> {
        if tf.eq {
            for &(_, v, id) in self.exacts_of(tf) {
                if bit(words, id) {
                    return Some(v == tf.k);
                }
            }
        }
        let same = &self.same[tf.same.0 as usize..tf.same.1 as usize];
        if bit(words, tf.f) || same.iter().any(|&(_, f)| bit(words, f)) {
            Some(false)
        } else if bit(words, tf.t) || same.iter().any(|&(t, _)| bit(words, t)) {
            Some(true)
        } else {
            None
        }
    }

    /// Records that the test was taken with outcome `r`.
    pub(super) fn learn(&self, words: &mut [Bits], tf: &TestFacts, r: bool) {
        if r && tf.exact != NO_FACT {
            // Without per-block facts, another value's `EXACT` facts no longer hold (the path
            // is impossible if they did); the same value's still do. With them, libpcap's
            // dominating edges all still hold.
            if !self.per_block {
                for &(_, v, id) in self.exacts_of(tf) {
                    if v != tf.k {
                        clear_bit(words, id);
                    }
                }
            }
            set_bit(words, tf.exact);
        }
        set_bit(words, if r { tf.t } else { tf.f });
    }
}

/// What a block does that does not depend on the path: the key of the value its branch
/// compares, its loads (key, and end offset when absolute: the range `loads` of
/// [`Scratch::loads`](super::Scratch::loads)), and whether it is free of other effects
/// (nothing else can reject, no temp it defines is used elsewhere).
#[derive(Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) key: Option<KeyId>,
    loads: (u32, u32),
    pure: bool,
    /// Pure but for defining a temp another block uses (which may change when blocks go).
    pub(super) pure_but_shared: bool,
}

/// A load a block makes: its key, and its end offset when the offset is constant.
pub(super) type BlockLoad = (KeyId, Option<u64>);

impl Summary {
    /// Runs the block's statements symbolically: which temps hold which values (keys). The
    /// block's loads are appended to `loads_out`; `keys` is scratch space.
    pub(super) fn of(
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
        let mut defines_shared = false;
        for s in &block.stmts {
            let operand = |keys: &Vec<(Temp, KeyId)>, o: &Operand, ki: &mut Interner| match o {
                Operand::K(k) => Some(ki.const_id(*k, || Key::Const(*k))),
                Operand::T(t) => get(keys, *t),
            };
            let key = match s {
                Stmt::Load {
                    size,
                    base: None,
                    off,
                    ..
                } => {
                    let (size, off) = (*size, *off);
                    let id = keys_of.load_id(size, off, || Key::Abs { size, off });
                    loads_out.push((id, Some(u64::from(off) + u64::from(size.bytes()))));
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
                    let zero = keys_of.const_id(0, || Key::Const(0));
                    keys_of.id(Key::Op(AluOp::Sub, zero, a))
                }),
            };
            let def = s.def();
            keys.retain(|(x, _)| *x != def);
            if let Some(k) = key {
                keys.push((def, k));
            }
            defines_shared |= shared.contains(&def);
        }
        let key = match &block.term {
            Term::Branch { a, .. } => get(keys, *a),
            _ => None,
        };
        Summary {
            key,
            loads: (start, loads_out.len() as u32),
            pure: pure && !defines_shared,
            pure_but_shared: pure && defines_shared,
        }
    }

    /// Whether the block could be skipped on a path whose facts are `words` and whose proven
    /// frame length is `min_len`.
    pub(super) fn skippable(
        &self,
        all: &[BlockLoad],
        facts: &FactTable,
        words: &[Bits],
        min_len: u64,
    ) -> bool {
        let range = self.loads.0 as usize..self.loads.1 as usize;
        self.pure
            && all[range.clone()]
                .iter()
                .zip(&facts.load_facts[range])
                .all(|(&(_, end), &id)| end.is_some_and(|e| e <= min_len) || bit(words, id))
    }

    /// The block's loads happen on a path (facts `words`, proven length `min_len`).
    pub(super) fn apply(
        &self,
        all: &[BlockLoad],
        facts: &FactTable,
        words: &mut [Bits],
        min_len: &mut u64,
    ) {
        let range = self.loads.0 as usize..self.loads.1 as usize;
        for (&(_, end), &id) in all[range.clone()].iter().zip(&facts.load_facts[range]) {
            set_bit(words, id);
            if let Some(e) = end {
                *min_len = (*min_len).max(e);
            }
        }
    }
}

/// A set of temps: one flag per temp below the function's count (temps are numbered densely
/// from 0), and a list for any other (the "unknown" temp the libpcap model adds,
/// [`crate::libpcap::rejects_all`]).
#[derive(Default)]
pub(crate) struct TempSet {
    flags: Vec<bool>,
    others: Vec<Temp>,
}

impl TempSet {
    /// Empties the set, for temps below `n`.
    pub(super) fn reset(&mut self, n: u32) {
        self.flags.clear();
        self.flags.resize(n as usize, false);
        self.others.clear();
    }

    pub(crate) fn contains(&self, t: &Temp) -> bool {
        match self.flags.get(t.0 as usize) {
            Some(&f) => f,
            None => self.others.contains(t),
        }
    }

    pub(super) fn insert(&mut self, t: Temp) {
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
pub(super) fn shared_temps(
    func: &Function,
    order: &[BlockId],
    seen: &mut Vec<BlockId>,
    shared: &mut TempSet,
) {
    seen.clear();
    seen.resize(func.num_temps as usize, BlockId::MAX);
    shared.reset(func.num_temps);
    for &b in order {
        let blk = &func.blocks[b];
        let mut note = |t: Temp| {
            // A temp outside the count (the probe's unknown) counts as shared.
            match seen.get_mut(t.0 as usize) {
                Some(other) if *other == BlockId::MAX => *other = b,
                Some(other) if *other == b => {}
                _ => shared.insert(t),
            }
        };
        for s in &blk.stmts {
            for t in s.uses() {
                note(t);
            }
            note(s.def());
        }
        for t in blk.term.uses() {
            note(t);
        }
    }
}
