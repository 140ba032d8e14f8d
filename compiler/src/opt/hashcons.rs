//! Hash-consing for the passes: equal values get equal small numbers, so facts and value
//! numbers are keyed by an integer. It changes no code; it only names values.

use crate::ir::Size;

/// Maps keyed by the optimizer's own small integer keys, with FxHash (rustc's): they never
/// hold attacker-chosen data in bulk, so SipHash's flooding resistance buys nothing here and
/// costs most of the optimizer's time.
type HashMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Numbers for values: equal values get equal numbers, counted from 0 (hash-consing).
///
/// Loads at small constant offsets (the headers every filter tests) and small constants are
/// numbered through a direct table instead of the hash map: they are most of a filter's
/// values.
pub(super) struct HashCons<K> {
    ids: HashMap<K, u32>,
    /// How many numbers are given out.
    next: u32,
    /// Per small load (`off * 3 + size`), then per small constant: the generation it was
    /// numbered in, and its number.
    loads: Vec<(u32, u32)>,
    /// Bumped by [`HashCons::clear`], so that clearing does not touch `loads`.
    generation: u32,
}

/// Loads at offsets below this are numbered through [`HashCons::loads`].
const SMALL_LOAD_OFFSETS: u32 = 128;
/// Constants below this are numbered through [`HashCons::loads`], after the loads.
const SMALL_CONSTANTS: u32 = 256;

impl<K> Default for HashCons<K> {
    fn default() -> Self {
        // Room for the values of a typical filter, so the table does not grow step by step.
        HashCons {
            ids: HashMap::with_capacity_and_hasher(64, Default::default()),
            next: 0,
            loads: vec![(0, 0); (SMALL_LOAD_OFFSETS * 3 + SMALL_CONSTANTS) as usize],
            generation: 1,
        }
    }
}

impl<K: std::hash::Hash + Eq> HashCons<K> {
    pub(super) fn id(&mut self, k: K) -> u32 {
        let next = &mut self.next;
        *self.ids.entry(k).or_insert_with(|| {
            *next += 1;
            *next - 1
        })
    }

    /// The number of a load at constant offset `off` of width `size`; `key` is its key, for
    /// offsets the table does not cover.
    pub(super) fn load_id(&mut self, size: Size, off: u32, key: impl FnOnce() -> K) -> u32 {
        if off >= SMALL_LOAD_OFFSETS {
            return self.id(key());
        }
        self.slot_id(off as usize * 3 + size as usize)
    }

    /// The number of the constant `k`; `key` is its key, for constants the table does not
    /// cover.
    pub(super) fn const_id(&mut self, k: u32, key: impl FnOnce() -> K) -> u32 {
        if k >= SMALL_CONSTANTS {
            return self.id(key());
        }
        self.slot_id((SMALL_LOAD_OFFSETS * 3 + k) as usize)
    }

    fn slot_id(&mut self, i: usize) -> u32 {
        let slot = &mut self.loads[i];
        if slot.0 != self.generation {
            *slot = (self.generation, self.next);
            self.next += 1;
        }
        slot.1
    }

    /// How many numbers are given out.
    pub(super) fn len(&self) -> usize {
        self.next as usize
    }

    pub(super) fn clear(&mut self) {
        self.ids.clear();
        self.next = 0;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.loads.fill((0, 0));
            self.generation = 1;
        }
    }
}
