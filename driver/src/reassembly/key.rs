//! Reassembly keys and the keyed hash the tables use.
//!
//! Every field of a key comes from the wire, so an attacker chooses it. The hash is therefore
//! seeded per reassembler from the standard library's random source: without the seed an
//! attacker cannot aim many keys at one bucket. The mixing is a folded 64x64->128-bit multiply
//! (the construction aHash uses when it has no AES): a few cycles per word. It resists blind
//! flooding, not an attacker who can read the process's memory.
//!
//! A key carries its hash, computed once per fragment by [`Seed::key`]; the tables (hashbrown
//! `HashTable`s of slot numbers) use that value, so a lookup, an insert and a removal of the
//! same key cost one hash computation, not three.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Which datagram a fragment belongs to.
///
/// IPv4: (source, destination, protocol, identification) as RFC 791 defines it. IPv6:
/// (source, destination, identification) as RFC 8200 section 4.5 defines it; the next-header
/// value is *not* part of the key, because RFC 8200 lets it differ between the fragments of one
/// packet and uses only the first fragment's. Both families add the VLAN identifiers: fragments
/// that arrive on different VLANs come from different networks and never join one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    /// The seeded hash of the other fields (0 until [`Seed::key`] sets it).
    hash: u64,
    src: u128,
    dst: u128,
    id: u32,
    /// IPv4 protocol; 0 for IPv6.
    protocol: u8,
    /// 4 or 6.
    family: u8,
    /// Packed VLAN identifiers (see `parse::Link::vlan`).
    vlan: u32,
}

impl Key {
    /// An IPv4 key, not yet hashed.
    #[inline]
    pub(crate) fn v4(src: u32, dst: u32, protocol: u8, id: u16, vlan: u32) -> Key {
        Key {
            hash: 0,
            src: u128::from(src),
            dst: u128::from(dst),
            id: u32::from(id),
            protocol,
            family: 4,
            vlan,
        }
    }

    /// An IPv6 key, not yet hashed.
    #[inline]
    pub(crate) fn v6(src: u128, dst: u128, id: u32, vlan: u32) -> Key {
        Key {
            hash: 0,
            src,
            dst,
            id,
            protocol: 0,
            family: 6,
            vlan,
        }
    }
}

impl Key {
    /// The hash [`Seed::key`] computed.
    #[inline]
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

/// A source address, for the per-source memory budget; carries its hash like [`Key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SourceKey {
    hash: u64,
    addr: u128,
    family: u8,
}

impl SourceKey {
    /// Whether this is the source address of `key`.
    #[inline]
    pub(crate) fn is_source_of(&self, key: &Key) -> bool {
        self.addr == key.src && self.family == key.family
    }

    /// The hash [`Seed::source`] computed.
    #[inline]
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

/// Odd constant from the digits of pi, mixed into each word (as in PCG and aHash).
const MULTIPLE: u64 = 6_364_136_223_846_793_005;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// The per-reassembler secret that keys the hash.
#[derive(Clone, Debug)]
pub(crate) struct Seed {
    k0: u64,
    k1: u64,
}

impl Seed {
    /// A seed from the operating system's randomness (via `RandomState`).
    pub(crate) fn random() -> Seed {
        let s = RandomState::new();
        Seed {
            k0: s.hash_one(0x6b30_u64),
            k1: s.hash_one(0x6b31_u64) | 1,
        }
    }

    #[inline]
    fn mix(&self, words: &[u64]) -> u64 {
        let mut h = self.k0;
        for &w in words {
            h = folded_multiply(h ^ w, MULTIPLE);
        }
        folded_multiply(h, self.k1).rotate_left((h & 63) as u32)
    }

    /// `key` with its hash set.
    #[inline]
    pub(crate) fn key(&self, mut key: Key) -> Key {
        // Every address bit goes in unfolded: XOR-folding two words first would let chosen
        // addresses collide whatever the seed. IPv4 addresses are 32 bits, so both fit one word.
        // Left out (Eq still tells them apart): the VLAN tag count (at most three keys differ
        // only in it).
        let rest = u64::from(key.id)
            | u64::from(key.protocol) << 32
            | u64::from(key.vlan & 0x00ff_ffff) << 40;
        key.hash = if key.family == 4 {
            self.mix(&[(key.src as u64) << 32 | key.dst as u64, rest])
        } else {
            self.mix(&[
                key.src as u64,
                (key.src >> 64) as u64,
                key.dst as u64,
                (key.dst >> 64) as u64,
                rest ^ 0x6,
            ])
        };
        key
    }

    /// The source address of `key`, hashed.
    #[inline]
    pub(crate) fn source(&self, key: &Key) -> SourceKey {
        SourceKey {
            hash: self.mix(&[
                key.src as u64,
                (key.src >> 64) as u64 ^ u64::from(key.family),
            ]),
            addr: key.src,
            family: key.family,
        }
    }
}
