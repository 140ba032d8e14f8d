//! The lookup table a program may consult with `lookup`: a hash map from a key of 1 to
//! [`MAX_KEY_WORDS`] 32-bit words to a 32-bit value, with a default value for a miss.
//!
//! Open addressing with linear probing and backward-shift deletion, so a lookup touches one
//! or two cache lines, never allocates, and inserts and removals keep no tombstones. Entries
//! are also kept in insertion order (with `swap_remove` on removal) so that a program's
//! encoding is deterministic.

/// The widest key a table may have, in 32-bit words (an IPv6 port binding needs 6).
pub const MAX_KEY_WORDS: usize = 8;
/// The most entries one table may hold (a classifier with this many port bindings).
pub const MAX_TABLE_ENTRIES: usize = 1 << 20;

/// Why a table operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The key width is not 1..=MAX_KEY_WORDS.
    #[error("key width {0} is not between 1 and {MAX_KEY_WORDS} words")]
    BadKeyWidth(usize),
    /// A key given has the wrong number of words.
    #[error("key has {got} words, the table's keys have {want}")]
    WrongKeyLength {
        /// Words in the key given.
        got: usize,
        /// The table's key width.
        want: usize,
    },
    /// The key is already present.
    #[error("duplicate key")]
    DuplicateKey,
    /// The table is full.
    #[error("table holds the maximum of {MAX_TABLE_ENTRIES} entries")]
    Full,
}

/// A lookup table. See the module documentation.
#[derive(Clone, Debug)]
pub struct Table {
    key_words: usize,
    default: u32,
    /// Entry keys, `key_words` words each, in insertion order.
    keys: Vec<u32>,
    /// Entry values, parallel to `keys`.
    values: Vec<u32>,
    /// Hash slots: 0 for empty, else entry index + 1. Length is a power of two.
    slots: Vec<u32>,
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.key_words == other.key_words
            && self.default == other.default
            && self.keys == other.keys
            && self.values == other.values
    }
}
impl Eq for Table {}

fn hash(key: &[u32]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for &w in key {
        h = (h ^ u64::from(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    h
}

impl Table {
    /// An empty table with keys of `key_words` words and the value `default` for a miss.
    pub fn new(key_words: usize, default: u32) -> Result<Table, TableError> {
        if key_words == 0 || key_words > MAX_KEY_WORDS {
            return Err(TableError::BadKeyWidth(key_words));
        }
        Ok(Table {
            key_words,
            default,
            keys: Vec::new(),
            values: Vec::new(),
            slots: vec![0; 8],
        })
    }

    /// Width of a key in 32-bit words.
    pub fn key_words(&self) -> usize {
        self.key_words
    }

    /// The value a miss returns.
    pub fn default_value(&self) -> u32 {
        self.default
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The entries in insertion order (after removals, `swap_remove` order).
    pub fn entries(&self) -> impl Iterator<Item = (&[u32], u32)> + '_ {
        self.keys
            .chunks_exact(self.key_words)
            .zip(self.values.iter().copied())
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn entry_key(&self, index: usize) -> &[u32] {
        &self.keys[index * self.key_words..(index + 1) * self.key_words]
    }

    /// Whether entry `index` holds `key`, compared word by word: keys are at most
    /// [`MAX_KEY_WORDS`] words, and a slice `==` calls `memcmp`, which cost more than the
    /// comparison itself on the classifier's lookup path (27% of the driver's profile with
    /// `find_slot`).
    #[inline]
    fn entry_is(&self, index: usize, key: &[u32]) -> bool {
        let start = index * self.key_words;
        match self.keys.get(start..start + key.len()) {
            Some(stored) => stored.iter().zip(key).all(|(a, b)| a == b),
            None => false,
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find_slot(&self, key: &[u32]) -> (usize, bool) {
        let mask = self.mask();
        let mut i = hash(key) as usize & mask;
        loop {
            match self.slots[i] {
                0 => return (i, false),
                e if self.entry_is(e as usize - 1, key) => return (i, true),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// The value for `key`, or the default. `key` must have [`Table::key_words`] words; a key
    /// of another length misses.
    #[inline]
    pub fn get(&self, key: &[u32]) -> u32 {
        // An empty table answers without touching its slots: a classifier's address-less
        // table is usually empty, and with many instances its slots would be one more cache
        // line per frame.
        if key.len() != self.key_words || self.values.is_empty() {
            return self.default;
        }
        let (slot, found) = self.find_slot(key);
        if found {
            self.values[self.slots[slot] as usize - 1]
        } else {
            self.default
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u32]) -> bool {
        key.len() == self.key_words && self.find_slot(key).1
    }

    fn check_key(&self, key: &[u32]) -> Result<(), TableError> {
        if key.len() != self.key_words {
            return Err(TableError::WrongKeyLength {
                got: key.len(),
                want: self.key_words,
            });
        }
        Ok(())
    }

    /// Adds an entry; a key already present is refused.
    pub fn insert(&mut self, key: &[u32], value: u32) -> Result<(), TableError> {
        self.check_key(key)?;
        if self.len() >= MAX_TABLE_ENTRIES {
            return Err(TableError::Full);
        }
        if (self.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (slot, found) = self.find_slot(key);
        if found {
            return Err(TableError::DuplicateKey);
        }
        self.keys.extend_from_slice(key);
        self.values.push(value);
        self.slots[slot] = self.values.len() as u32;
        Ok(())
    }

    /// Replaces the value of an existing key or adds it; returns the old value.
    pub fn upsert(&mut self, key: &[u32], value: u32) -> Result<Option<u32>, TableError> {
        self.check_key(key)?;
        let (slot, found) = self.find_slot(key);
        if found {
            let e = self.slots[slot] as usize - 1;
            return Ok(Some(std::mem::replace(&mut self.values[e], value)));
        }
        self.insert(key, value).map(|()| None)
    }

    /// Removes `key`; returns its value if it was present.
    pub fn remove(&mut self, key: &[u32]) -> Option<u32> {
        if key.len() != self.key_words {
            return None;
        }
        let (mut hole, found) = self.find_slot(key);
        if !found {
            return None;
        }
        let entry = self.slots[hole] as usize - 1;
        // Backward-shift deletion: pull later members of the probe run into the hole.
        let mask = self.mask();
        self.slots[hole] = 0;
        let mut i = (hole + 1) & mask;
        while self.slots[i] != 0 {
            let home = hash(self.entry_key(self.slots[i] as usize - 1)) as usize & mask;
            // Move the entry at `i` into the hole unless its home lies cyclically in (hole, i].
            let in_range = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !in_range {
                self.slots[hole] = self.slots[i];
                self.slots[i] = 0;
                hole = i;
            }
            i = (i + 1) & mask;
        }
        // Swap-remove the entry and repoint the slot of the entry that moved into its place.
        let last = self.values.len() - 1;
        let value = self.values.swap_remove(entry);
        if entry != last {
            let (moved_slot, _) = self.find_slot(self.entry_key(last));
            let kw = self.key_words;
            self.keys
                .copy_within(last * kw..(last + 1) * kw, entry * kw);
            self.slots[moved_slot] = entry as u32 + 1;
        }
        self.keys.truncate(last * self.key_words);
        Some(value)
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        self.slots = vec![0; cap];
        let mask = cap - 1;
        for e in 0..self.values.len() {
            let mut i = hash(self.entry_key(e)) as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = e as u32 + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn insert_get_remove_agree_with_a_hashmap() {
        let mut t = Table::new(2, 7).unwrap();
        let mut m = HashMap::new();
        let mut x: u64 = 1;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = [(x % 97) as u32, (x >> 20) as u32 % 13];
            if x.is_multiple_of(3) {
                assert_eq!(t.remove(&key), m.remove(&key));
            } else {
                assert_eq!(t.upsert(&key, step).unwrap(), m.insert(key, step));
            }
            if step % 1000 == 0 {
                for a in 0..97 {
                    for b in 0..13 {
                        assert_eq!(t.get(&[a, b]), *m.get(&[a, b]).unwrap_or(&7));
                    }
                }
            }
        }
        assert_eq!(t.len(), m.len());
    }

    #[test]
    fn duplicate_and_wrong_width_keys_are_refused() {
        let mut t = Table::new(1, 0).unwrap();
        t.insert(&[5], 1).unwrap();
        assert_eq!(t.insert(&[5], 2), Err(TableError::DuplicateKey));
        assert!(matches!(
            t.insert(&[1, 2], 2),
            Err(TableError::WrongKeyLength { .. })
        ));
        assert_eq!(t.get(&[1, 2]), 0);
        assert!(Table::new(0, 0).is_err());
        assert!(Table::new(MAX_KEY_WORDS + 1, 0).is_err());
    }
}
