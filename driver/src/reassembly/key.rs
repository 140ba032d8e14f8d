//! Reassembly keys and the keyed hash the tables use.
//!
//! Every field of a key comes from the wire, so an attacker chooses it. The hash is therefore
//! seeded per reassembler from the standard library's random source: without the seed an
//! attacker cannot aim many keys at one bucket. The mixing is a folded 64x64->128-bit multiply
//! (the construction aHash uses when it has no AES): a few cycles per word, which matters at tens
//! of nanoseconds per fragment. It resists blind flooding, not an attacker who can read the
//! process's memory.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};

/// Which datagram a fragment belongs to.
///
/// IPv4: (source, destination, protocol, identification) as RFC 791 defines it. IPv6:
/// (source, destination, identification) as RFC 8200 section 4.5 defines it; the next-header
/// value is *not* part of the key, because RFC 8200 lets it differ between the fragments of one
/// packet and uses only the first fragment's. Both families add the VLAN identifiers: fragments
/// that arrive on different VLANs come from different networks and never join one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
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
    /// An IPv4 key.
    #[inline]
    pub(crate) fn v4(src: u32, dst: u32, protocol: u8, id: u16, vlan: u32) -> Key {
        Key {
            src: u128::from(src),
            dst: u128::from(dst),
            id: u32::from(id),
            protocol,
            family: 4,
            vlan,
        }
    }

    /// An IPv6 key.
    #[inline]
    pub(crate) fn v6(src: u128, dst: u128, id: u32, vlan: u32) -> Key {
        Key {
            src,
            dst,
            id,
            protocol: 0,
            family: 6,
            vlan,
        }
    }

    /// The source address this key's memory is charged to.
    #[inline]
    pub(crate) fn source(&self) -> SourceKey {
        SourceKey {
            addr: self.src,
            family: self.family,
        }
    }
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.src as u64);
        h.write_u64((self.src >> 64) as u64);
        h.write_u64(self.dst as u64);
        h.write_u64((self.dst >> 64) as u64);
        h.write_u64(
            u64::from(self.id) | u64::from(self.protocol) << 32 | u64::from(self.family) << 40,
        );
        h.write_u64(u64::from(self.vlan));
    }
}

/// A source address, for the per-source memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SourceKey {
    addr: u128,
    family: u8,
}

impl Hash for SourceKey {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.addr as u64);
        h.write_u64((self.addr >> 64) as u64 ^ u64::from(self.family));
    }
}

/// Odd constant from the digits of pi, mixed into each word (as in PCG and aHash).
const MULTIPLE: u64 = 6_364_136_223_846_793_005;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// A seeded builder of [`KeyedHasher`]s; every table of one reassembler shares its seed.
#[derive(Clone, Debug)]
pub(crate) struct KeyedState {
    k0: u64,
    k1: u64,
}

impl KeyedState {
    /// A state seeded from the operating system's randomness (via `RandomState`).
    pub(crate) fn random() -> KeyedState {
        let s = RandomState::new();
        KeyedState {
            k0: s.hash_one(0x6b30_u64),
            k1: s.hash_one(0x6b31_u64) | 1,
        }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;
    #[inline]
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.k0,
            k1: self.k1,
        }
    }
}

/// The hasher [`KeyedState`] builds; only `write_u64` is fast, and keys only use that.
#[derive(Clone, Debug)]
pub(crate) struct KeyedHasher {
    h: u64,
    k1: u64,
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.h = folded_multiply(self.h ^ x, MULTIPLE);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let rot = (self.h & 63) as u32;
        folded_multiply(self.h, self.k1).rotate_left(rot)
    }
}
