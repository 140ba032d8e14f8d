//! A map from MAC addresses (as words) to small values, looked up on every received or
//! transmitted frame: which instance has this MAC, which overlay member.
//!
//! Open addressing with linear probing over inline (MAC word, value) cells, at most half
//! full, so a lookup is one multiply and usually one compare in one cache line. A general
//! hash map's probing cost the receive path a tenth of a frame's classification with a single
//! own-MAC instance. The maps change rarely (an instance or overlay member comes or goes): a
//! removal rebuilds the cells.

/// A cell no MAC occupies: MAC words have 48 bits.
const VACANT: u64 = u64::MAX;

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct MacIndex<V> {
    /// `(VACANT, _)` or `(MAC word, value)`; the length is zero or a power of two.
    cells: Vec<(u64, V)>,
    len: usize,
}

impl<V> Default for MacIndex<V> {
    fn default() -> Self {
        Self {
            cells: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Copy + Default> MacIndex<V> {
    #[inline]
    fn start(&self, word: u64) -> usize {
        // Fibonacci hashing: the top bits of the product, as many as the table needs.
        let bits = self.cells.len().trailing_zeros();
        (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    /// The value of `word`.
    #[inline]
    pub fn get(&self, word: u64) -> Option<V> {
        if self.cells.is_empty() {
            return None;
        }
        let mask = self.cells.len() - 1;
        let mut i = self.start(word);
        loop {
            let (w, value) = self.cells[i];
            if w == word {
                return Some(value);
            }
            if w == VACANT {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Number of MACs.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no MAC is in.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.cells
            .iter()
            .filter(|&&(w, _)| w != VACANT)
            .map(|&(_, v)| v)
    }

    /// Sets the value of `word` (a MAC word: at most 48 bits).
    pub fn insert(&mut self, word: u64, value: V) {
        debug_assert!(word >> 48 == 0, "a MAC word has 48 bits");
        if (self.len + 1) * 2 > self.cells.len() {
            let old = std::mem::take(&mut self.cells);
            self.cells = vec![(VACANT, V::default()); (old.len() * 2).max(8)];
            self.len = 0;
            for (w, v) in old.into_iter().filter(|&(w, _)| w != VACANT) {
                self.put(w, v);
            }
        }
        self.put(word, value);
    }

    /// Places `word` in a table with room for it.
    fn put(&mut self, word: u64, value: V) {
        let mask = self.cells.len() - 1;
        let mut i = self.start(word);
        loop {
            match self.cells[i].0 {
                w if w == word => break,
                VACANT => {
                    self.len += 1;
                    break;
                }
                _ => i = (i + 1) & mask,
            }
        }
        self.cells[i] = (word, value);
    }

    /// Keeps only the MACs whose value `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let kept: Vec<(u64, V)> = self
            .cells
            .iter()
            .copied()
            .filter(|(w, v)| *w != VACANT && keep(v))
            .collect();
        self.cells
            .iter_mut()
            .for_each(|c| *c = (VACANT, V::default()));
        self.len = 0;
        for (w, v) in kept {
            self.put(w, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_index_answers_as_a_map_through_inserts_moves_and_removals() {
        let mut index: MacIndex<usize> = MacIndex::default();
        let mut model: HashMap<u64, usize> = HashMap::new();
        // A deterministic walk: MACs that share their low bits and their high bits, moved
        // between values and removed a value at a time.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let word = (x % 3_000) << (8 * (step % 3)) & 0xffff_ffff_ffff;
            let value = (x >> 40) as usize % 300;
            if step % 5 == 4 {
                index.retain(|&v| v != value);
                model.retain(|_, v| *v != value);
            } else {
                index.insert(word, value);
                model.insert(word, value);
            }
            assert_eq!(index.get(word), model.get(&word).copied(), "step {step}");
            assert_eq!(index.len(), model.len());
        }
        for (&w, &v) in &model {
            assert_eq!(index.get(w), Some(v));
        }
        let mut values: Vec<usize> = index.values().collect();
        let mut expected: Vec<usize> = model.values().copied().collect();
        values.sort_unstable();
        expected.sort_unstable();
        assert_eq!(values, expected);
        assert_eq!(
            index.get(0xffff_ffff_ffff),
            model.get(&0xffff_ffff_ffff).copied()
        );
    }
}
