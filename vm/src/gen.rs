//! A structured random generator of programs and frames, for differential tests and fuzzers.
//!
//! [`program`] turns an [`arbitrary::Unstructured`] into a program that is *verified by
//! construction*: it emits instructions in order while tracking, exactly as the verifier does,
//! which registers and scratch slots are written on every path reaching the next instruction
//! (the fall-through state intersected with the state of every forward jump already emitted to
//! it), and only reads what is written. Jumps go forward to instructions inside the program and
//! the last instruction is a return, so the control-flow checks hold too. Random bytes would
//! almost never verify; these programs almost always do, and they are deep: long ALU chains,
//! loads at constant and register-plus-constant offsets near the ends of typical frames and far
//! past them (including offsets where `rS + k` would wrap in 32 bits), division and shifts by
//! registers that may hold 0 or 32 and more, every kind of forward jump against constants and
//! registers, scratch stores and loads, `lookup`s in small tables that hit and miss, and both
//! forms of `accept`.
//!
//! [`frame`] makes frames of the shapes that matter for bounds checks: empty, a few bytes,
//! truncated headers, typical and long frames, with wire lengths below, equal to and above the
//! captured length. Frame bytes and program constants are drawn from the same small pool of
//! protocol-ish values, so comparisons are taken as well as not taken.
//!
//! The generator never panics: when the `Unstructured` runs out of bytes it keeps producing a
//! (plainer) valid program.

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::isa::{Insn, Opcode, NUM_REGS, NUM_SLOTS};
use crate::program::{encode, Program};
use crate::table::Table;
use crate::verifier::{verify, VerifyError};

/// The longest program [`program`] makes by default: long enough for deep programs, short
/// enough that compiling 100,000 of them stays fast.
pub const DEFAULT_MAX_INSNS: usize = 96;
/// The most tables a generated program has.
const MAX_GEN_TABLES: usize = 3;
/// The most entries a generated table has (small, so keys built from the value pool hit).
const MAX_GEN_ENTRIES: usize = 6;

/// Values programs compare with and frames are made of: small numbers, protocol constants,
/// shift limits, and the edges of 32-bit arithmetic.
const VALUES: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    14,
    17,
    20,
    23,
    31,
    32,
    33,
    53,
    0x45,
    0x800,
    0x86dd,
    0x11,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];
/// Constant frame offsets far past any frame, or where a 32-bit `rS + k` would wrap.
const FAR_OFFSETS: &[u32] = &[
    1514,
    9000,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fff0,
    0xffff_fffc,
    0xffff_ffff,
];

/// A generated program: instructions and tables, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedProgram {
    /// The instructions.
    pub insns: Vec<Insn>,
    /// The tables `lookup` reads.
    pub tables: Vec<Table>,
}

impl GeneratedProgram {
    /// The container encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.insns, &self.tables)
    }

    /// Runs the verifier (which is expected to accept it).
    pub fn verify(&self) -> std::result::Result<Program, VerifyError> {
        verify(&self.to_bytes())
    }
}

impl<'a> Arbitrary<'a> for GeneratedProgram {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        program(u, DEFAULT_MAX_INSNS)
    }
}

/// A frame: captured bytes and wire length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedFrame {
    /// The captured bytes.
    pub bytes: Vec<u8>,
    /// The length on the wire (`ldlen`); may be below, equal to or above `bytes.len()`.
    pub wire_len: u32,
}

impl<'a> Arbitrary<'a> for GeneratedFrame {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        frame(u)
    }
}

/// Picks an index with probability proportional to `weights`.
fn weighted(u: &mut Unstructured, weights: &[u32]) -> Result<usize> {
    let total: u32 = weights.iter().sum();
    let mut x = u.int_in_range(0..=total.saturating_sub(1))?;
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return Ok(i);
        }
        x -= w;
    }
    Ok(weights.len().saturating_sub(1))
}

fn pool_value(u: &mut Unstructured) -> Result<u32> {
    if u.ratio(1, 5)? {
        u.arbitrary()
    } else {
        Ok(*u.choose(VALUES)?)
    }
}

/// A frame of one of the shapes described in the module documentation.
pub fn frame(u: &mut Unstructured) -> Result<GeneratedFrame> {
    let len = match weighted(u, &[1, 3, 8, 10, 2])? {
        0 => 0,
        1 => u.int_in_range(1..=8)?,
        2 => u.int_in_range(9..=54)?,
        3 => u.int_in_range(55..=80)?,
        _ => u.int_in_range(81..=1600)?,
    };
    let mut bytes = Vec::with_capacity(len);
    for _ in 0..len {
        let b = match weighted(u, &[6, 2, 1, 1, 1, 1, 3])? {
            0 => 0,
            1 => u.int_in_range(1..=4)?,
            2 => 0x45,
            3 => 0x08,
            4 => 0x11,
            5 => 0xff,
            _ => u.arbitrary()?,
        };
        bytes.push(b);
    }
    let caplen = len as u32;
    let wire_len = match weighted(u, &[4, 3, 1, 1, 1])? {
        0 => caplen,
        1 => caplen.saturating_add(u.int_in_range(1..=1500)?),
        2 => u.int_in_range(0..=caplen)?,
        3 => u32::MAX,
        _ => u.arbitrary()?,
    };
    Ok(GeneratedFrame { bytes, wire_len })
}

/// The register and slot state the verifier tracks: bit `r` for register `r`, bit `16 + m`
/// for slot `m`.
type State = u32;

fn reg_bit(r: u8) -> State {
    1 << r
}
fn slot_bit(m: u32) -> State {
    1 << (16 + m)
}

struct Gen<'u, 'a> {
    u: &'u mut Unstructured<'a>,
    /// The program's length, fixed up front so jump targets can be chosen inside it.
    len: usize,
    insns: Vec<Insn>,
    /// For each instruction, the intersection of the states of the jumps emitted to it so far
    /// from reachable instructions; `None` if none.
    incoming: Vec<Option<State>>,
    tables: Vec<Table>,
    /// The state at the instruction being emitted (all bits for unreachable code, which the
    /// verifier's data-flow check skips).
    state: State,
}

/// Generates a program of 1 to `max_insns` instructions (see the module documentation).
pub fn program(u: &mut Unstructured, max_insns: usize) -> Result<GeneratedProgram> {
    let max_insns = max_insns.clamp(1, crate::program::MAX_INSNS);
    let len = if u.ratio(1, 8)? {
        u.int_in_range(1..=max_insns.min(8))?
    } else {
        u.int_in_range(1..=max_insns)?
    };
    let mut g = Gen {
        u,
        len,
        insns: Vec::with_capacity(len),
        incoming: vec![None; len],
        tables: Vec::new(),
        state: 0,
    };
    g.run()?;
    Ok(GeneratedProgram {
        insns: g.insns,
        tables: g.tables,
    })
}

impl Gen<'_, '_> {
    fn run(&mut self) -> Result<()> {
        let mut fall: Option<State> = Some(0);
        while self.insns.len() < self.len {
            let pc = self.insns.len();
            let reach = match (fall, self.incoming[pc]) {
                (Some(a), Some(b)) => Some(a & b),
                (a, b) => a.or(b),
            };
            self.state = reach.unwrap_or(u32::MAX);
            let insn = self.next_insn(pc, reach.is_some())?;
            self.emit(insn, reach.is_some());
            let op = insn.op;
            fall = if op.is_terminator() || reach.is_none() {
                None
            } else {
                Some(self.state)
            };
        }
        Ok(())
    }

    /// Records `insn` at the next pc and updates the state as the verifier does.
    fn emit(&mut self, insn: Insn, reachable: bool) {
        let pc = self.insns.len();
        let op = insn.op;
        if op == Opcode::StMem {
            self.state |= slot_bit(insn.k);
        }
        if op.writes_dst() {
            self.state |= reg_bit(insn.dst);
        }
        if op.is_jump() && reachable {
            let t = insn.target(pc) as usize;
            let s = self.state;
            self.incoming[t] = Some(self.incoming[t].map_or(s, |x| x & s));
        }
        self.insns.push(insn);
    }

    fn regs(&self) -> Vec<u8> {
        (0..NUM_REGS as u8)
            .filter(|&r| self.state & reg_bit(r) != 0)
            .collect()
    }

    fn slots(&self) -> Vec<u32> {
        (0..NUM_SLOTS as u32)
            .filter(|&m| self.state & slot_bit(m) != 0)
            .collect()
    }

    /// A register to read, if any is written.
    fn src(&mut self) -> Result<Option<u8>> {
        let regs = self.regs();
        if regs.is_empty() {
            return Ok(None);
        }
        Ok(Some(*self.u.choose(&regs)?))
    }

    /// A register to write: mostly a few low ones, so values flow between instructions.
    fn dst(&mut self) -> Result<u8> {
        if self.u.ratio(3, 4)? {
            self.u.int_in_range(0..=5)
        } else {
            self.u.int_in_range(0..=NUM_REGS as u8 - 1)
        }
    }

    /// Whether no jump emitted so far lands inside `pc + 1 ..= pc + extra`, so a pattern of
    /// `extra + 1` instructions runs straight through with the state it starts with.
    fn straight(&self, pc: usize, extra: usize) -> bool {
        pc + extra < self.len - 1 && (pc + 1..=pc + extra).all(|p| self.incoming[p].is_none())
    }

    fn abs_offset(&mut self) -> Result<u32> {
        Ok(match weighted(self.u, &[12, 5, 2])? {
            0 => self.u.int_in_range(0..=40)?,
            1 => self.u.int_in_range(40..=90)?,
            _ => *self.u.choose(FAR_OFFSETS)?,
        })
    }

    fn next_insn(&mut self, pc: usize, reachable: bool) -> Result<Insn> {
        let last = pc + 1 == self.len;
        if last {
            return self.terminator();
        }
        // A return in the middle, mostly where a jump already continues the program.
        let continues = self.incoming[pc + 1].is_some();
        if self.u.ratio(1, if continues { 6 } else { 40 })? {
            return self.terminator();
        }
        let _ = reachable;
        let kind = weighted(
            self.u,
            &[
                8, // 0 constant-offset load
                4, // 1 register-offset load
                1, // 2 ldlen
                4, // 3 mov k
                2, // 4 mov x
                3, // 5 scratch
                8, // 6 alu k
                7, // 7 alu x
                1, // 8 neg
                9, // 9 conditional jump
                1, // 10 ja
                3, // 11 lookup
                2, // 12 header-length pattern
            ],
        )?;
        let d = self.dst()?;
        let src = self.src()?;
        // Without a written register, an instruction that reads one becomes a definition.
        let Some(s) = src else {
            return self.definition(d);
        };
        Ok(match kind {
            0 => self.definition(d)?,
            1 => {
                let k = match weighted(self.u, &[6, 3, 1])? {
                    0 => self.u.int_in_range(0..=24)?,
                    1 => self.u.int_in_range(25..=80)?,
                    _ => *self.u.choose(FAR_OFFSETS)?,
                };
                let op = *self
                    .u
                    .choose(&[Opcode::LdIndB, Opcode::LdIndH, Opcode::LdIndW])?;
                Insn::new(op, d, s, 0, k)
            }
            2 => Insn::ldlen(d),
            3 => Insn::mov(d, pool_value(self.u)?),
            4 => Insn::mov_x(d, s),
            5 => {
                let slots = self.slots();
                if !slots.is_empty() && self.u.ratio(1, 2)? {
                    Insn::ldm(d, *self.u.choose(&slots)?)
                } else {
                    Insn::stm(self.u.int_in_range(0..=NUM_SLOTS as u32 - 1)?, s)
                }
            }
            6 => self.alu_k()?,
            7 => {
                let op = *self.u.choose(&[
                    Opcode::AddX,
                    Opcode::SubX,
                    Opcode::MulX,
                    Opcode::DivX,
                    Opcode::ModX,
                    Opcode::AndX,
                    Opcode::OrX,
                    Opcode::XorX,
                    Opcode::LshX,
                    Opcode::RshX,
                ])?;
                let d = self.src()?.unwrap_or(s);
                Insn::alu_x(op, d, s)
            }
            8 => Insn::neg(s),
            9 => self.cond_jump(pc, s)?,
            10 => {
                let off = self.jump_offset(pc)?;
                Insn::ja(off)
            }
            11 => self.lookup(d)?,
            _ => {
                // ldb rX, [k]; and rX, 0xf; lsh rX, 2; ld rY, [rX + k2]: an IP header length.
                if !self.straight(pc, 3) {
                    return self.definition(d);
                }
                let x = d;
                let base = self.u.int_in_range(0..=20)?;
                self.emit(Insn::ldb(x, base), true);
                self.emit(Insn::alu_k(Opcode::AndK, x, 0xf), true);
                self.emit(Insn::alu_k(Opcode::LshK, x, 2), true);
                let y = self.dst()?;
                let k = self.u.int_in_range(0..=30)?;
                let op = *self
                    .u
                    .choose(&[Opcode::LdIndB, Opcode::LdIndH, Opcode::LdIndW])?;
                Insn::new(op, y, x, 0, k)
            }
        })
    }

    /// An instruction that writes `d` and reads nothing.
    fn definition(&mut self, d: u8) -> Result<Insn> {
        Ok(match weighted(self.u, &[6, 3, 1])? {
            0 => {
                let op = *self
                    .u
                    .choose(&[Opcode::LdAbsB, Opcode::LdAbsH, Opcode::LdAbsW])?;
                let k = self.abs_offset()?;
                Insn::new(op, d, 0, 0, k)
            }
            1 => Insn::mov(d, pool_value(self.u)?),
            _ => Insn::ldlen(d),
        })
    }

    fn alu_k(&mut self) -> Result<Insn> {
        let d = self.src()?.unwrap_or(0);
        let op = *self.u.choose(&[
            Opcode::AddK,
            Opcode::SubK,
            Opcode::MulK,
            Opcode::DivK,
            Opcode::ModK,
            Opcode::AndK,
            Opcode::OrK,
            Opcode::XorK,
            Opcode::LshK,
            Opcode::RshK,
        ])?;
        let k = match op {
            Opcode::LshK | Opcode::RshK => self.u.int_in_range(0..=31)?,
            Opcode::DivK | Opcode::ModK => pool_value(self.u)?.max(1),
            _ => pool_value(self.u)?,
        };
        Ok(Insn::alu_k(op, d, k))
    }

    /// A forward displacement from `pc` to an instruction before the last-but-none: mostly
    /// short hops, sometimes far.
    fn jump_offset(&mut self, pc: usize) -> Result<i16> {
        // Targets pc + 1 ..= len - 1; displacement = target - pc - 1.
        let max = (self.len - 1 - (pc + 1)).min(i16::MAX as usize);
        let off = if self.u.ratio(4, 5)? {
            self.u.int_in_range(0..=max.min(6))?
        } else {
            self.u.int_in_range(0..=max)?
        };
        Ok(off as i16)
    }

    fn cond_jump(&mut self, pc: usize, d: u8) -> Result<Insn> {
        let off = self.jump_offset(pc)?;
        if self.u.ratio(2, 3)? {
            let op = *self
                .u
                .choose(&[Opcode::JeqK, Opcode::JgtK, Opcode::JgeK, Opcode::JsetK])?;
            Ok(Insn::jmp_k(op, d, pool_value(self.u)?, off))
        } else {
            let op = *self
                .u
                .choose(&[Opcode::JeqX, Opcode::JgtX, Opcode::JgeX, Opcode::JsetX])?;
            let s = self.src()?.unwrap_or(d);
            Ok(Insn::jmp_x(op, d, s, off))
        }
    }

    fn terminator(&mut self) -> Result<Insn> {
        Ok(match (weighted(self.u, &[2, 3, 3])?, self.src()?) {
            (0, _) => Insn::reject(),
            (2, Some(s)) => Insn::accept_x(s),
            _ => Insn::accept(pool_value(self.u)?),
        })
    }

    /// A `lookup` into a new or existing table; when its key registers are not all written
    /// yet, a `mov` of a key word of one of its entries into the first missing one instead
    /// (so later lookups often hit).
    fn lookup(&mut self, d: u8) -> Result<Insn> {
        if self.tables.is_empty() || (self.tables.len() < MAX_GEN_TABLES && self.u.ratio(1, 4)?) {
            self.new_table()?;
        }
        let t = self.u.int_in_range(0..=self.tables.len() - 1)?;
        let words = self.tables[t].key_words();
        let s = self.u.int_in_range(0..=(NUM_REGS - words) as u8)?;
        for w in 0..words {
            let r = s + w as u8;
            if self.state & reg_bit(r) == 0 {
                let entries: Vec<u32> = self.tables[t].entries().map(|(k, _)| k[w]).collect();
                let value = if !entries.is_empty() && self.u.ratio(3, 4)? {
                    *self.u.choose(&entries)?
                } else {
                    pool_value(self.u)?
                };
                return Ok(Insn::mov(r, value));
            }
        }
        Ok(Insn::lookup(d, s, t as u32))
    }

    fn new_table(&mut self) -> Result<()> {
        let words = if self.u.ratio(1, 6)? {
            self.u.int_in_range(4..=crate::table::MAX_KEY_WORDS)?
        } else {
            self.u.int_in_range(1..=3)?
        };
        let mut table = Table::new(words, pool_value(self.u)?).expect("width in range");
        let entries = self.u.int_in_range(0..=MAX_GEN_ENTRIES)?;
        let mut key = vec![0u32; words];
        for _ in 0..entries {
            for w in key.iter_mut() {
                *w = if self.u.ratio(3, 4)? {
                    self.u.int_in_range(0..=3)?
                } else {
                    pool_value(self.u)?
                };
            }
            // Duplicate keys are simply not added: the verifier refuses them.
            let _ = table.insert(&key, self.u.arbitrary()?);
        }
        self.tables.push(table);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn generated_programs_pass_the_verifier_and_use_every_opcode() {
        let mut seen = std::collections::HashSet::new();
        let mut total_len = 0;
        for seed in 0..2000u64 {
            let data = bytes(seed, 4096);
            let mut u = Unstructured::new(&data);
            let p = program(&mut u, DEFAULT_MAX_INSNS).unwrap();
            if let Err(e) = p.verify() {
                panic!("seed {seed}: {e}\n{:?}", p.insns);
            }
            total_len += p.insns.len();
            seen.extend(p.insns.iter().map(|i| i.op));
        }
        let missing: Vec<_> = Opcode::ALL.iter().filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "never generated: {missing:?}");
        assert!(total_len / 2000 >= 20, "programs are too shallow");
    }

    #[test]
    fn an_exhausted_input_still_gives_a_valid_program() {
        for n in 0..64 {
            let data = bytes(7, n);
            let mut u = Unstructured::new(&data);
            let p = program(&mut u, DEFAULT_MAX_INSNS).unwrap();
            p.verify().unwrap();
            let mut u = Unstructured::new(&data);
            frame(&mut u).unwrap();
        }
    }
}
