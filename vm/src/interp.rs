//! The reference interpreter: the semantics every other engine must reproduce.
//!
//! It runs only verified programs, uses no `unsafe`, and allocates nothing per frame: the
//! registers live on the stack and the caller provides scratch memory. Every load is checked
//! against the captured bytes with slice `get`, so a load out of bounds is a reject verdict and
//! never a read outside the frame.
//!
//! [`Interpreter::new`] decodes the program once into [`Op`]s: one flat enum whose variants
//! carry exactly their operands, with jump targets made absolute, so the per-frame loop does
//! one dispatch per instruction and no offset arithmetic. The decoding is a one-to-one
//! translation of [`crate::isa`]'s semantics (each arm below cites its opcode); the shared test
//! vectors and the JIT equality test run against it.

use crate::engine::{Engine, EngineKind, Scratch};
use crate::isa::{Opcode, Verdict, NUM_REGS};
use crate::program::{Program, TableMut};
use crate::table::MAX_KEY_WORDS;

/// Runs a verified program by walking its pre-decoded instructions.
#[derive(Clone, Debug)]
pub struct Interpreter {
    program: Program,
    ops: Box<[Op]>,
}

/// A decoded instruction: registers as `u8` (0..16), slots and tables as `u8`, jump targets as
/// absolute instruction indices. Conditional jumps fall through to the next instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
enum Op {
    LdB { d: u8, k: u32 },
    LdH { d: u8, k: u32 },
    LdW { d: u8, k: u32 },
    LdIndB { d: u8, s: u8, k: u32 },
    LdIndH { d: u8, s: u8, k: u32 },
    LdIndW { d: u8, s: u8, k: u32 },
    LdLen { d: u8 },
    MovK { d: u8, k: u32 },
    MovX { d: u8, s: u8 },
    LdMem { d: u8, slot: u8 },
    StMem { slot: u8, s: u8 },
    AddK { d: u8, k: u32 },
    SubK { d: u8, k: u32 },
    MulK { d: u8, k: u32 },
    DivK { d: u8, k: u32 },
    ModK { d: u8, k: u32 },
    AndK { d: u8, k: u32 },
    OrK { d: u8, k: u32 },
    XorK { d: u8, k: u32 },
    LshK { d: u8, k: u32 },
    RshK { d: u8, k: u32 },
    Neg { d: u8 },
    AddX { d: u8, s: u8 },
    SubX { d: u8, s: u8 },
    MulX { d: u8, s: u8 },
    DivX { d: u8, s: u8 },
    ModX { d: u8, s: u8 },
    AndX { d: u8, s: u8 },
    OrX { d: u8, s: u8 },
    XorX { d: u8, s: u8 },
    LshX { d: u8, s: u8 },
    RshX { d: u8, s: u8 },
    Ja { t: u16 },
    JeqK { d: u8, k: u32, t: u16 },
    JgtK { d: u8, k: u32, t: u16 },
    JgeK { d: u8, k: u32, t: u16 },
    JsetK { d: u8, k: u32, t: u16 },
    JeqX { d: u8, s: u8, t: u16 },
    JgtX { d: u8, s: u8, t: u16 },
    JgeX { d: u8, s: u8, t: u16 },
    JsetX { d: u8, s: u8, t: u16 },
    Reject,
    AcceptK { k: u32 },
    AcceptX { s: u8 },
    Lookup { d: u8, s: u8, table: u8 },
}

fn decode(program: &Program) -> Box<[Op]> {
    program
        .insns()
        .iter()
        .enumerate()
        .map(|(pc, i)| {
            let (d, s, k) = (i.dst & 0xf, i.src & 0xf, i.k);
            // Verified: targets lie in 0..MAX_INSNS (4096), slots and tables below 16.
            let t = i.target(pc) as u16;
            let slot = (k & 0xf) as u8;
            match i.op {
                Opcode::LdAbsB => Op::LdB { d, k },
                Opcode::LdAbsH => Op::LdH { d, k },
                Opcode::LdAbsW => Op::LdW { d, k },
                Opcode::LdIndB => Op::LdIndB { d, s, k },
                Opcode::LdIndH => Op::LdIndH { d, s, k },
                Opcode::LdIndW => Op::LdIndW { d, s, k },
                Opcode::LdLen => Op::LdLen { d },
                Opcode::MovK => Op::MovK { d, k },
                Opcode::MovX => Op::MovX { d, s },
                Opcode::LdMem => Op::LdMem { d, slot },
                Opcode::StMem => Op::StMem { slot, s },
                Opcode::AddK => Op::AddK { d, k },
                Opcode::SubK => Op::SubK { d, k },
                Opcode::MulK => Op::MulK { d, k },
                Opcode::DivK => Op::DivK { d, k },
                Opcode::ModK => Op::ModK { d, k },
                Opcode::AndK => Op::AndK { d, k },
                Opcode::OrK => Op::OrK { d, k },
                Opcode::XorK => Op::XorK { d, k },
                Opcode::LshK => Op::LshK { d, k },
                Opcode::RshK => Op::RshK { d, k },
                Opcode::Neg => Op::Neg { d },
                Opcode::AddX => Op::AddX { d, s },
                Opcode::SubX => Op::SubX { d, s },
                Opcode::MulX => Op::MulX { d, s },
                Opcode::DivX => Op::DivX { d, s },
                Opcode::ModX => Op::ModX { d, s },
                Opcode::AndX => Op::AndX { d, s },
                Opcode::OrX => Op::OrX { d, s },
                Opcode::XorX => Op::XorX { d, s },
                Opcode::LshX => Op::LshX { d, s },
                Opcode::RshX => Op::RshX { d, s },
                Opcode::Ja => Op::Ja { t },
                Opcode::JeqK => Op::JeqK { d, k, t },
                Opcode::JgtK => Op::JgtK { d, k, t },
                Opcode::JgeK => Op::JgeK { d, k, t },
                Opcode::JsetK => Op::JsetK { d, k, t },
                Opcode::JeqX => Op::JeqX { d, s, t },
                Opcode::JgtX => Op::JgtX { d, s, t },
                Opcode::JgeX => Op::JgeX { d, s, t },
                Opcode::JsetX => Op::JsetX { d, s, t },
                Opcode::Reject => Op::Reject,
                Opcode::AcceptK => Op::AcceptK { k },
                Opcode::AcceptX => Op::AcceptX { s },
                Opcode::Lookup => Op::Lookup { d, s, table: slot },
            }
        })
        .collect()
}

impl Interpreter {
    /// An interpreter for `program` (decodes it once).
    pub fn new(program: Program) -> Interpreter {
        let ops = decode(&program);
        Interpreter { program, ops }
    }
}

/// `N` bytes big-endian at `offset`, or `None` when they are not all captured.
#[inline(always)]
fn load<const N: usize>(frame: &[u8], offset: usize) -> Option<u32> {
    let bytes: &[u8; N] = frame.get(offset..offset.checked_add(N)?)?.try_into().ok()?;
    Some(bytes.iter().fold(0u32, |w, &b| (w << 8) | u32::from(b)))
}

#[inline(always)]
fn shl(a: u32, b: u32) -> u32 {
    a.checked_shl(b).unwrap_or(0)
}

#[inline(always)]
fn shr(a: u32, b: u32) -> u32 {
    a.checked_shr(b).unwrap_or(0)
}

fn execute(
    ops: &[Op],
    program: &Program,
    frame: &[u8],
    wire_len: u32,
    scratch: &mut Scratch,
) -> Verdict {
    let mut r = [0u32; NUM_REGS];
    let mut pc = 0usize;
    macro_rules! reg {
        ($x:expr) => {
            r[usize::from($x & 0xf)]
        };
    }
    macro_rules! ld {
        ($n:literal, $off:expr) => {
            match load::<$n>(frame, $off) {
                Some(v) => v,
                None => return Verdict::Reject,
            }
        };
    }
    macro_rules! jump_if {
        ($cond:expr, $t:expr) => {
            pc = if $cond { usize::from($t) } else { pc + 1 };
            continue
        };
    }
    // The verifier guarantees that every path ends in a return and every target is in range.
    while let Some(&op) = ops.get(pc) {
        match op {
            Op::LdB { d, k } => reg!(d) = ld!(1, k as usize),
            Op::LdH { d, k } => reg!(d) = ld!(2, k as usize),
            Op::LdW { d, k } => reg!(d) = ld!(4, k as usize),
            // rS + k in 64 bits: never wraps.
            Op::LdIndB { d, s, k } => reg!(d) = ld!(1, reg!(s) as usize + k as usize),
            Op::LdIndH { d, s, k } => reg!(d) = ld!(2, reg!(s) as usize + k as usize),
            Op::LdIndW { d, s, k } => reg!(d) = ld!(4, reg!(s) as usize + k as usize),
            Op::LdLen { d } => reg!(d) = wire_len,
            Op::MovK { d, k } => reg!(d) = k,
            Op::MovX { d, s } => reg!(d) = reg!(s),
            Op::LdMem { d, slot } => reg!(d) = scratch[usize::from(slot & 0xf)],
            Op::StMem { slot, s } => scratch[usize::from(slot & 0xf)] = reg!(s),
            Op::AddK { d, k } => reg!(d) = reg!(d).wrapping_add(k),
            Op::SubK { d, k } => reg!(d) = reg!(d).wrapping_sub(k),
            Op::MulK { d, k } => reg!(d) = reg!(d).wrapping_mul(k),
            // Constant divisors are nonzero (verified); checked_* keeps this panic-free anyway.
            Op::DivK { d, k } => match reg!(d).checked_div(k) {
                Some(v) => reg!(d) = v,
                None => return Verdict::Reject,
            },
            Op::ModK { d, k } => match reg!(d).checked_rem(k) {
                Some(v) => reg!(d) = v,
                None => return Verdict::Reject,
            },
            Op::AndK { d, k } => reg!(d) &= k,
            Op::OrK { d, k } => reg!(d) |= k,
            Op::XorK { d, k } => reg!(d) ^= k,
            Op::LshK { d, k } => reg!(d) = shl(reg!(d), k),
            Op::RshK { d, k } => reg!(d) = shr(reg!(d), k),
            Op::Neg { d } => reg!(d) = reg!(d).wrapping_neg(),
            Op::AddX { d, s } => reg!(d) = reg!(d).wrapping_add(reg!(s)),
            Op::SubX { d, s } => reg!(d) = reg!(d).wrapping_sub(reg!(s)),
            Op::MulX { d, s } => reg!(d) = reg!(d).wrapping_mul(reg!(s)),
            // Division or modulo by a register holding zero rejects.
            Op::DivX { d, s } => match reg!(d).checked_div(reg!(s)) {
                Some(v) => reg!(d) = v,
                None => return Verdict::Reject,
            },
            Op::ModX { d, s } => match reg!(d).checked_rem(reg!(s)) {
                Some(v) => reg!(d) = v,
                None => return Verdict::Reject,
            },
            Op::AndX { d, s } => reg!(d) &= reg!(s),
            Op::OrX { d, s } => reg!(d) |= reg!(s),
            Op::XorX { d, s } => reg!(d) ^= reg!(s),
            // A shift by a register holding 32 or more gives 0.
            Op::LshX { d, s } => reg!(d) = shl(reg!(d), reg!(s)),
            Op::RshX { d, s } => reg!(d) = shr(reg!(d), reg!(s)),
            Op::Ja { t } => {
                pc = usize::from(t);
                continue;
            }
            Op::JeqK { d, k, t } => {
                jump_if!(reg!(d) == k, t);
            }
            Op::JgtK { d, k, t } => {
                jump_if!(reg!(d) > k, t);
            }
            Op::JgeK { d, k, t } => {
                jump_if!(reg!(d) >= k, t);
            }
            Op::JsetK { d, k, t } => {
                jump_if!(reg!(d) & k != 0, t);
            }
            Op::JeqX { d, s, t } => {
                jump_if!(reg!(d) == reg!(s), t);
            }
            Op::JgtX { d, s, t } => {
                jump_if!(reg!(d) > reg!(s), t);
            }
            Op::JgeX { d, s, t } => {
                jump_if!(reg!(d) >= reg!(s), t);
            }
            Op::JsetX { d, s, t } => {
                jump_if!(reg!(d) & reg!(s) != 0, t);
            }
            Op::Reject => return Verdict::Reject,
            Op::AcceptK { k } => return Verdict::Accept(k),
            Op::AcceptX { s } => return Verdict::Accept(reg!(s)),
            Op::Lookup { d, s, table } => {
                // Verified: the table exists and rS..rS+W lies inside the register file.
                let Some(table) = program.tables().get(usize::from(table)) else {
                    return Verdict::Reject;
                };
                let w = table.key_words();
                let s = usize::from(s & 0xf);
                let mut key = [0u32; MAX_KEY_WORDS];
                match r.get(s..s + w) {
                    Some(words) => key[..w].copy_from_slice(words),
                    None => return Verdict::Reject,
                }
                reg!(d) = table.get(&key[..w]);
            }
        }
        pc += 1;
    }
    // Unreachable for a verified program: no path falls off the end.
    Verdict::Reject
}

/// Runs `program` on a frame once (decoding it first: for repeated runs make an
/// [`Interpreter`]). The reference semantics; see [`crate::isa`].
pub fn run(program: &Program, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict {
    execute(&decode(program), program, frame, wire_len, scratch)
}

impl Engine for Interpreter {
    #[inline]
    fn run_with_scratch(&self, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict {
        execute(&self.ops, &self.program, frame, wire_len, scratch)
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Interpreter
    }

    fn program(&self) -> &Program {
        &self.program
    }

    fn table_mut(&mut self, index: usize) -> Option<TableMut<'_>> {
        self.program.table_mut(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Insn;

    #[test]
    fn decoded_jumps_are_absolute_and_fall_through_when_false() {
        let p = Program::new(
            &[
                Insn::ldb(0, 0),
                Insn::jmp_k(Opcode::JeqK, 0, 7, 1),
                Insn::reject(),
                Insn::accept_x(0),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(decode(&p)[1], Op::JeqK { d: 0, k: 7, t: 3 });
        let e = Interpreter::new(p);
        assert_eq!(e.run(&[7], 1), Verdict::Accept(7));
        assert_eq!(e.run(&[8], 1), Verdict::Reject);
        assert_eq!(e.run(&[], 1), Verdict::Reject);
    }
}
