//! The reference interpreter: the semantics every other engine must reproduce.
//!
//! It runs only verified programs, uses no `unsafe`, and allocates nothing per frame: the
//! registers live on the stack and the caller provides scratch memory. Every load is checked
//! against the captured bytes with slice `get`, so a load out of bounds is a reject verdict and
//! never a read outside the frame.

use crate::engine::{Engine, EngineKind, Scratch};
use crate::isa::{Opcode, Verdict, NUM_REGS};
use crate::program::{Program, TableMut};
use crate::table::MAX_KEY_WORDS;

/// Runs a verified program by walking its instructions.
#[derive(Clone, Debug)]
pub struct Interpreter {
    program: Program,
}

impl Interpreter {
    /// An interpreter for `program`.
    pub fn new(program: Program) -> Interpreter {
        Interpreter { program }
    }
}

#[inline(always)]
fn load<const N: usize>(frame: &[u8], offset: u64) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let bytes = frame.get(start..start.checked_add(N)?)?;
    let mut word = 0u32;
    for &b in bytes {
        word = (word << 8) | u32::from(b);
    }
    Some(word)
}

/// Runs `program` on a frame. The reference semantics; see [`crate::isa`].
pub fn run(program: &Program, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict {
    let insns = program.insns();
    let mut r = [0u32; NUM_REGS];
    let mut pc = 0usize;
    macro_rules! ld {
        ($n:literal, $off:expr) => {
            match load::<$n>(frame, $off) {
                Some(v) => v,
                None => return Verdict::Reject,
            }
        };
    }
    loop {
        let i = insns[pc];
        pc += 1;
        let d = usize::from(i.dst & 0xf);
        let s = usize::from(i.src & 0xf);
        let k = i.k;
        let ind = |r: &[u32; NUM_REGS]| u64::from(r[s]) + u64::from(k);
        let shl = |a: u32, b: u32| if b < 32 { a << b } else { 0 };
        let shr = |a: u32, b: u32| if b < 32 { a >> b } else { 0 };
        let jump = |pc: usize, taken: bool| {
            if taken {
                (pc as isize + isize::from(i.off)) as usize
            } else {
                pc
            }
        };
        match i.op {
            Opcode::LdAbsB => r[d] = ld!(1, u64::from(k)),
            Opcode::LdAbsH => r[d] = ld!(2, u64::from(k)),
            Opcode::LdAbsW => r[d] = ld!(4, u64::from(k)),
            Opcode::LdIndB => r[d] = ld!(1, ind(&r)),
            Opcode::LdIndH => r[d] = ld!(2, ind(&r)),
            Opcode::LdIndW => r[d] = ld!(4, ind(&r)),
            Opcode::LdLen => r[d] = wire_len,
            Opcode::MovK => r[d] = k,
            Opcode::MovX => r[d] = r[s],
            Opcode::LdMem => r[d] = scratch[(k & 0xf) as usize],
            Opcode::StMem => scratch[(k & 0xf) as usize] = r[s],
            Opcode::AddK => r[d] = r[d].wrapping_add(k),
            Opcode::SubK => r[d] = r[d].wrapping_sub(k),
            Opcode::MulK => r[d] = r[d].wrapping_mul(k),
            Opcode::DivK | Opcode::DivX | Opcode::ModK | Opcode::ModX => {
                let divisor = if matches!(i.op, Opcode::DivK | Opcode::ModK) {
                    k
                } else {
                    r[s]
                };
                if divisor == 0 {
                    return Verdict::Reject;
                }
                r[d] = if matches!(i.op, Opcode::DivK | Opcode::DivX) {
                    r[d] / divisor
                } else {
                    r[d] % divisor
                };
            }
            Opcode::AndK => r[d] &= k,
            Opcode::OrK => r[d] |= k,
            Opcode::XorK => r[d] ^= k,
            Opcode::LshK => r[d] = shl(r[d], k),
            Opcode::RshK => r[d] = shr(r[d], k),
            Opcode::Neg => r[d] = r[d].wrapping_neg(),
            Opcode::AddX => r[d] = r[d].wrapping_add(r[s]),
            Opcode::SubX => r[d] = r[d].wrapping_sub(r[s]),
            Opcode::MulX => r[d] = r[d].wrapping_mul(r[s]),
            Opcode::AndX => r[d] &= r[s],
            Opcode::OrX => r[d] |= r[s],
            Opcode::XorX => r[d] ^= r[s],
            Opcode::LshX => r[d] = shl(r[d], r[s]),
            Opcode::RshX => r[d] = shr(r[d], r[s]),
            Opcode::Ja => pc = jump(pc, true),
            Opcode::JeqK => pc = jump(pc, r[d] == k),
            Opcode::JgtK => pc = jump(pc, r[d] > k),
            Opcode::JgeK => pc = jump(pc, r[d] >= k),
            Opcode::JsetK => pc = jump(pc, r[d] & k != 0),
            Opcode::JeqX => pc = jump(pc, r[d] == r[s]),
            Opcode::JgtX => pc = jump(pc, r[d] > r[s]),
            Opcode::JgeX => pc = jump(pc, r[d] >= r[s]),
            Opcode::JsetX => pc = jump(pc, r[d] & r[s] != 0),
            Opcode::Reject => return Verdict::Reject,
            Opcode::AcceptK => return Verdict::Accept(k),
            Opcode::AcceptX => return Verdict::Accept(r[s]),
            Opcode::Lookup => {
                let table = &program.tables()[k as usize];
                let w = table.key_words();
                let mut key = [0u32; MAX_KEY_WORDS];
                key[..w].copy_from_slice(&r[s..s + w]);
                r[d] = table.get(&key[..w]);
            }
        }
    }
}

impl Engine for Interpreter {
    fn run_with_scratch(&self, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict {
        run(&self.program, frame, wire_len, scratch)
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
