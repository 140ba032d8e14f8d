//! Every on-link instance's exact-address port bindings in one structure: the lookup a
//! received frame makes before the driver knows which instance it is for.
//!
//! Each instance on a link has its own [`crate::Classifier`] and ownership rules (see the
//! driver's `instances` module). Most of what they hold are netd's port filters: a binding of
//! (protocol, one of the instance's own addresses, port) whose program is byte for byte
//! [`port_filter::program`] for the instance's unicast MAC. Such a filter accepts exactly the
//! frames with its key and that destination MAC. On one link no two instances have the same
//! address, and the MAC and address together name the instance a frame is for, so these
//! bindings can share one set of tables: a hit says the queue *and* the instance (its tag),
//! and a frame costs one lookup whether the link has one instance or a thousand, instead of
//! finding the instance first and then its own, colder, classifier.
//!
//! What goes in is the caller's decision ([`LinkBindings::eligible`] checks the filter; the
//! caller checks that the address is the instance's own and keeps the ownership rules in the
//! instance's classifier, [`crate::Classify::hold`]). This structure keeps only one rule: a
//! key is bound once ([`ClassifierError::BindingInUse`]).
//!
//! ```
//! use netmux_classify::{port_filter, Key, LinkBindings, RxFilter};
//! use netmux_proto::driver::{FilterId, QueueId, RxMode};
//!
//! let mac = [2, 0, 0, 0, 0, 7];
//! let key = Key::V4 { protocol: 17, addr: [192, 0, 2, 7].into(), port: 53 };
//! let filter = RxFilter {
//!     queue: QueueId(3),
//!     filter: FilterId(9),
//!     mode: RxMode::Owner,
//!     binding: Some(key.binding()),
//!     program: port_filter::program(&key, mac).unwrap(),
//! };
//! assert_eq!(LinkBindings::eligible(&filter, mac), Some(key));
//! let mut b = LinkBindings::new(netmux_vm::Strategy::Interpreter);
//! b.insert(&filter, key, mac, 42).unwrap();
//!
//! let mut frame = vec![0u8; 14 + 20 + 8];
//! frame[..6].copy_from_slice(&mac);
//! frame[12..14].copy_from_slice(&[0x08, 0x00]);
//! frame[14] = 0x45;
//! frame[23] = 17;
//! frame[30..34].copy_from_slice(&[192, 0, 2, 7]);
//! frame[36..38].copy_from_slice(&53u16.to_be_bytes());
//! let hit = b.lookup(&frame).unwrap();
//! assert_eq!((hit.queue, hit.tag), (QueueId(3), 42));
//! frame[5] = 8; // another MAC: not this binding's frame
//! assert!(b.lookup(&frame).is_none());
//! ```

use netmux_proto::driver::{FilterId, QueueId, RxMode};
use netmux_vm::{Engine, Scratch, Strategy, Verdict};
use rustc_hash::FxHashMap;

use crate::key::Key;
use crate::port_filter;
use crate::program::{self, FLAG_EXACT, MISS, SLOT_EXACT};
use crate::rules::{ClassifierError, RxFilter};

/// One binding.
#[derive(Clone, Debug)]
struct Bound {
    queue: QueueId,
    filter: FilterId,
    key: Key,
    mac: [u8; 6],
    tag: u32,
}

/// A frame's binding: its queue and the tag it was inserted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The queue that receives the frame.
    pub queue: QueueId,
    /// The binding's tag (the driver's instance slot).
    pub tag: u32,
}

/// A binding taken out ([`LinkBindings::remove`], [`LinkBindings::remove_where`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Its queue.
    pub queue: QueueId,
    /// Its filter id.
    pub filter: FilterId,
    /// Its key.
    pub key: Key,
    /// The MAC that confirmed it.
    pub mac: [u8; 6],
    /// Its tag.
    pub tag: u32,
}

impl Removed {
    /// The filter it was installed as: [`port_filter::program`] of its key and MAC.
    pub fn filter(&self) -> Option<RxFilter> {
        Some(RxFilter {
            queue: self.queue,
            filter: self.filter,
            mode: RxMode::Owner,
            binding: Some(self.key.binding()),
            program: port_filter::program(&self.key, self.mac)?,
        })
    }
}

/// See the module documentation.
pub struct LinkBindings {
    strategy: Strategy,
    /// The generic program ([`program::build`]), made with the first binding.
    merged: Option<Box<dyn Engine>>,
    /// Table value `v` (from 1) is `entries[v]`; `entries[0]` stays empty (a miss).
    entries: Vec<Option<Bound>>,
    /// Values of empty entries, to reuse.
    free: Vec<u32>,
    /// Keyed by netd's filter ids (not chosen by clients), so a fast hash is safe.
    where_is: FxHashMap<FilterId, u32>,
    scratch: Scratch,
}

impl std::fmt::Debug for LinkBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkBindings")
            .field("strategy", &self.strategy)
            .field("bound", &self.where_is.len())
            .finish_non_exhaustive()
    }
}

impl LinkBindings {
    /// Empty, its generic program to run on `strategy`'s engine.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            merged: None,
            entries: vec![None],
            free: Vec::new(),
            where_is: FxHashMap::default(),
            scratch: Scratch::default(),
        }
    }

    /// The key of `filter` if it may go in for an instance with the unicast MAC `mac`: an
    /// owner filter with an exact-address binding whose program is byte for byte
    /// [`port_filter::program`] of that key and `mac`. (The caller checks that the address is
    /// the instance's.)
    pub fn eligible(filter: &RxFilter, mac: [u8; 6]) -> Option<Key> {
        if filter.mode != RxMode::Owner || mac[0] & 1 != 0 {
            return None;
        }
        let key = Key::of(filter.binding.as_ref()?)?;
        (key.has_address() && port_filter::is_port_filter(&filter.program, &key, mac))
            .then_some(key)
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.where_is.len()
    }

    /// Whether none is in.
    pub fn is_empty(&self) -> bool {
        self.where_is.is_empty()
    }

    /// Whether `filter` is in.
    pub fn contains(&self, filter: FilterId) -> bool {
        self.where_is.contains_key(&filter)
    }

    /// Binds `key` (which [`LinkBindings::eligible`] gave for `filter` and `mac`) to
    /// `filter`'s queue, with `tag`. Refused when the filter id or the key is in already.
    pub fn insert(
        &mut self,
        filter: &RxFilter,
        key: Key,
        mac: [u8; 6],
        tag: u32,
    ) -> Result<(), ClassifierError> {
        if self.where_is.contains_key(&filter.filter) {
            return Err(ClassifierError::DuplicateFilter(filter.filter));
        }
        let (table, words) = program::encode(&key);
        if self.merged.is_none() {
            self.merged = Some(netmux_vm::engine(program::build(), self.strategy)?);
        }
        let merged = self.merged.as_mut().ok_or(ClassifierError::TablesFull)?;
        let existing = merged
            .program()
            .tables()
            .get(table)
            .map_or(MISS, |t| t.get(&words));
        if let Some(Some(b)) = self.entries.get(existing as usize) {
            return Err(ClassifierError::BindingInUse(b.queue));
        }
        let value = match self.free.last() {
            Some(&v) => v,
            None => u32::try_from(self.entries.len()).map_err(|_| ClassifierError::TablesFull)?,
        };
        merged
            .table_mut(table)
            .ok_or(ClassifierError::TablesFull)?
            .insert(&words, value)
            .map_err(|_| ClassifierError::TablesFull)?;
        let bound = Bound {
            queue: filter.queue,
            filter: filter.filter,
            key,
            mac,
            tag,
        };
        if self.free.pop().is_some() {
            self.entries[value as usize] = Some(bound);
        } else {
            self.entries.push(Some(bound));
        }
        self.where_is.insert(filter.filter, value);
        Ok(())
    }

    /// Takes `filter` out, if it is in.
    pub fn remove(&mut self, filter: FilterId) -> Option<Removed> {
        let value = self.where_is.remove(&filter)?;
        let bound = self.entries.get_mut(value as usize)?.take()?;
        let (table, words) = program::encode(&bound.key);
        if let Some(mut t) = self.merged.as_mut().and_then(|m| m.table_mut(table)) {
            t.remove(&words);
        }
        self.free.push(value);
        Some(Removed {
            queue: bound.queue,
            filter: bound.filter,
            key: bound.key,
            mac: bound.mac,
            tag: bound.tag,
        })
    }

    /// Takes out every binding with a tag `pick` accepts; gives them back in filter order.
    pub fn remove_where(&mut self, mut pick: impl FnMut(&Removed) -> bool) -> Vec<Removed> {
        let mut picked: Vec<FilterId> = self
            .entries
            .iter()
            .flatten()
            .filter(|b| {
                pick(&Removed {
                    queue: b.queue,
                    filter: b.filter,
                    key: b.key,
                    mac: b.mac,
                    tag: b.tag,
                })
            })
            .map(|b| b.filter)
            .collect();
        picked.sort_unstable();
        picked.into_iter().filter_map(|f| self.remove(f)).collect()
    }

    /// The binding that receives `frame`, if one does: its key is the frame's and its MAC the
    /// frame's destination.
    #[inline]
    pub fn lookup(&mut self, frame: &[u8]) -> Option<Hit> {
        let merged = self.merged.as_ref()?;
        // The generic program reads the captured length as its frame length: see `program`.
        let captured = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let Verdict::Accept(flags) = merged.run_with_scratch(frame, captured, &mut self.scratch)
        else {
            return None;
        };
        if flags & FLAG_EXACT == 0 {
            return None;
        }
        let value = self.scratch[SLOT_EXACT];
        let bound = self.entries.get(value as usize)?.as_ref()?;
        (frame.get(..6) == Some(&bound.mac[..])).then_some(Hit {
            queue: bound.queue,
            tag: bound.tag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(id: u64, key: Key, mac: [u8; 6]) -> RxFilter {
        RxFilter {
            queue: QueueId(id as u32),
            filter: FilterId(id),
            mode: RxMode::Owner,
            binding: Some(key.binding()),
            program: port_filter::program(&key, mac).unwrap(),
        }
    }

    fn v4(last: u8, port: u16) -> Key {
        Key::V4 {
            protocol: 6,
            addr: [192, 0, 2, last].into(),
            port,
        }
    }

    #[test]
    fn only_exact_port_filters_for_a_unicast_mac_are_eligible() {
        let mac = [2, 0, 0, 0, 0, 1];
        assert!(LinkBindings::eligible(&filter(1, v4(1, 80), mac), mac).is_some());
        // Built for another MAC, a group MAC, or without an address.
        assert!(LinkBindings::eligible(&filter(1, v4(1, 80), [2, 0, 0, 0, 0, 2]), mac).is_none());
        let group = [0xff; 6];
        assert!(LinkBindings::eligible(&filter(1, v4(1, 80), group), group).is_none());
        let any = Key::AnyAddr {
            family: crate::Family::V4,
            protocol: 6,
            port: 80,
        };
        let mut wildcard = filter(1, v4(1, 80), mac);
        wildcard.binding = Some(any.binding());
        assert!(LinkBindings::eligible(&wildcard, mac).is_none());
        // A tap or a claim is never a binding here.
        let mut tap = filter(1, v4(1, 80), mac);
        tap.mode = RxMode::Tap;
        assert!(LinkBindings::eligible(&tap, mac).is_none());
    }

    #[test]
    fn a_key_is_bound_once_and_comes_back_whole() {
        let mac = [2, 0, 0, 0, 0, 1];
        let mut b = LinkBindings::new(Strategy::Interpreter);
        b.insert(&filter(1, v4(1, 80), mac), v4(1, 80), mac, 5)
            .unwrap();
        assert_eq!(
            b.insert(&filter(2, v4(1, 80), mac), v4(1, 80), mac, 6),
            Err(ClassifierError::BindingInUse(QueueId(1)))
        );
        assert_eq!(
            b.insert(&filter(1, v4(2, 80), mac), v4(2, 80), mac, 6),
            Err(ClassifierError::DuplicateFilter(FilterId(1)))
        );
        b.insert(&filter(3, v4(3, 80), mac), v4(3, 80), mac, 6)
            .unwrap();
        let gone = b.remove_where(|r| r.tag == 5);
        assert_eq!(gone.len(), 1);
        let back = gone[0].filter().unwrap();
        assert_eq!(back.program, filter(1, v4(1, 80), mac).program);
        assert_eq!(back.binding, Some(v4(1, 80).binding()));
        assert_eq!(b.len(), 1);
        // The key is free again.
        b.insert(&filter(2, v4(1, 80), mac), v4(1, 80), mac, 6)
            .unwrap();
        assert!(b.remove(FilterId(1)).is_none());
        assert!(b.remove(FilterId(2)).is_some());
    }
}
