//! The program container and [`Program`], a program the verifier has accepted.
//!
//! # Container format
//!
//! All integers little-endian:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "NMXF"
//! 4       2     format version (1)
//! 6       2     number of tables, at most MAX_TABLES
//! 8       4     number of instructions, 1..=MAX_INSNS
//! 12      8*n   instructions (see crate::isa)
//! then, for each table:
//!         4     key width in words, 1..=MAX_KEY_WORDS
//!         4     default value (returned on a miss)
//!         4     number of entries, at most MAX_TABLE_ENTRIES
//!         ...   entries: the key's words, then the value, 4 bytes each
//! ```
//!
//! Nothing may follow the last table. [`crate::verify`] is the only way to turn bytes into a
//! [`Program`]; [`Program::to_bytes`] gives them back exactly.

use crate::isa::{Insn, INSN_SIZE};
use crate::table::{Table, TableError};

/// The container's magic bytes.
pub const MAGIC: [u8; 4] = *b"NMXF";
/// The container format version this crate reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the container header in bytes.
pub const HEADER_SIZE: usize = 12;
/// The most instructions a program may have; bounds every run at this many steps. Room for
/// the filters libpcap compiles, 1,000 `or` terms and more (about 4,000 to 6,000
/// instructions), and within the reach of the 16-bit jump displacement.
pub const MAX_INSNS: usize = 16_384;
/// The most tables a program may have.
pub const MAX_TABLES: usize = 16;

/// A verified program: every invariant in [`crate::verifier`] holds for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub(crate) insns: Vec<Insn>,
    pub(crate) tables: Vec<Table>,
}

/// Encodes instructions and tables into the container format, without verifying them.
pub fn encode(insns: &[Insn], tables: &[Table]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + insns.len() * INSN_SIZE);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(tables.len() as u16).to_le_bytes());
    out.extend_from_slice(&(insns.len() as u32).to_le_bytes());
    for i in insns {
        out.extend_from_slice(&i.encode());
    }
    for t in tables {
        out.extend_from_slice(&(t.key_words() as u32).to_le_bytes());
        out.extend_from_slice(&t.default_value().to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        for (key, value) in t.entries() {
            for w in key {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out
}

/// Reads a program container from `input`, no further than the container says it goes: the
/// header, the instructions it counts, each table's header and the entries it counts, and one
/// byte more (so [`crate::verify`] sees trailing data). It stops early where the header or a
/// table header is one the verifier refuses for its size or kind (a bad magic number or
/// version, too many instructions or tables, a bad key width, too many entries), so an input of
/// any size, `/dev/zero` included, costs at most the largest container. The bytes go to
/// [`crate::verify`] (or the disassembler), which answers for them.
pub fn read_container(input: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use crate::table::{MAX_KEY_WORDS, MAX_TABLE_ENTRIES};
    use std::io::Read;
    let mut input = input;
    let mut out = Vec::new();
    // Appends up to `n` more bytes; whether all of them came.
    let more = |input: &mut dyn Read, out: &mut Vec<u8>, n: u64| -> std::io::Result<bool> {
        let before = out.len() as u64;
        input.take(n).read_to_end(out)?;
        Ok(out.len() as u64 - before == n)
    };
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if !more(&mut input, &mut out, HEADER_SIZE as u64)? {
        return Ok(out);
    }
    let ntables = u16::from_le_bytes([out[6], out[7]]) as usize;
    let ninsns = word(&out, 8) as usize;
    let version = u16::from_le_bytes([out[4], out[5]]);
    if out[0..4] != MAGIC || version != FORMAT_VERSION || ninsns > MAX_INSNS || ntables > MAX_TABLES
    {
        return Ok(out);
    }
    if !more(&mut input, &mut out, (ninsns * INSN_SIZE) as u64)? {
        return Ok(out);
    }
    for _ in 0..ntables {
        let at = out.len();
        if !more(&mut input, &mut out, 12)? {
            return Ok(out);
        }
        let (width, entries) = (word(&out, at) as usize, word(&out, at + 8) as usize);
        if width == 0 || width > MAX_KEY_WORDS || entries > MAX_TABLE_ENTRIES {
            return Ok(out);
        }
        if !more(&mut input, &mut out, (entries * (width + 1) * 4) as u64)? {
            return Ok(out);
        }
    }
    more(&mut input, &mut out, 1)?;
    Ok(out)
}

impl Program {
    /// A program the verifier has just proved; only the verifier calls this (see
    /// [`crate::verifier`]: [`Program::new`] and [`Program::from_insns`] live there), so the
    /// module graph shows that verification is the only way in.
    pub(crate) fn verified(insns: Vec<Insn>, tables: Vec<Table>) -> Program {
        Program { insns, tables }
    }

    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The tables, indexed by `lookup`'s table operand.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Entry-level access to table `index`, for updating a classifier without re-verifying.
    /// The key width and default stay fixed, so the program stays verified.
    pub fn table_mut(&mut self, index: usize) -> Option<TableMut<'_>> {
        self.tables.get_mut(index).map(TableMut)
    }

    /// The container encoding; `verify(&p.to_bytes()) == Ok(p)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.insns, &self.tables)
    }
}

/// Mutable access to a verified program's table that keeps its shape (key width, default).
#[derive(Debug)]
pub struct TableMut<'a>(&'a mut Table);

impl TableMut<'_> {
    /// Adds an entry; see [`Table::insert`].
    pub fn insert(&mut self, key: &[u32], value: u32) -> Result<(), TableError> {
        self.0.insert(key, value)
    }
    /// Sets an entry; see [`Table::upsert`].
    pub fn upsert(&mut self, key: &[u32], value: u32) -> Result<Option<u32>, TableError> {
        self.0.upsert(key, value)
    }
    /// Removes an entry; see [`Table::remove`].
    pub fn remove(&mut self, key: &[u32]) -> Option<u32> {
        self.0.remove(key)
    }
    /// Read access.
    pub fn table(&self) -> &Table {
        self.0
    }
}
