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
///
/// `repr(u8)` gives the enum its own tag byte: without it the compiler may hide the tag in
/// spare values of a field (a niche), and every dispatch would first have to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
#[repr(u8)]
enum Op {
    LdB {
        d: u8,
        k: u32,
    },
    LdH {
        d: u8,
        k: u32,
    },
    LdW {
        d: u8,
        k: u32,
    },
    LdIndB {
        d: u8,
        s: u8,
        k: u32,
    },
    LdIndH {
        d: u8,
        s: u8,
        k: u32,
    },
    LdIndW {
        d: u8,
        s: u8,
        k: u32,
    },
    LdLen {
        d: u8,
    },
    MovK {
        d: u8,
        k: u32,
    },
    MovX {
        d: u8,
        s: u8,
    },
    LdMem {
        d: u8,
        slot: u8,
    },
    StMem {
        slot: u8,
        s: u8,
    },
    AddK {
        d: u8,
        k: u32,
    },
    SubK {
        d: u8,
        k: u32,
    },
    MulK {
        d: u8,
        k: u32,
    },
    DivK {
        d: u8,
        k: u32,
    },
    ModK {
        d: u8,
        k: u32,
    },
    AndK {
        d: u8,
        k: u32,
    },
    OrK {
        d: u8,
        k: u32,
    },
    XorK {
        d: u8,
        k: u32,
    },
    LshK {
        d: u8,
        k: u32,
    },
    RshK {
        d: u8,
        k: u32,
    },
    Neg {
        d: u8,
    },
    AddX {
        d: u8,
        s: u8,
    },
    SubX {
        d: u8,
        s: u8,
    },
    MulX {
        d: u8,
        s: u8,
    },
    DivX {
        d: u8,
        s: u8,
    },
    ModX {
        d: u8,
        s: u8,
    },
    AndX {
        d: u8,
        s: u8,
    },
    OrX {
        d: u8,
        s: u8,
    },
    XorX {
        d: u8,
        s: u8,
    },
    LshX {
        d: u8,
        s: u8,
    },
    RshX {
        d: u8,
        s: u8,
    },
    Ja {
        t: u16,
    },
    JeqK {
        d: u8,
        k: u32,
        t: u16,
    },
    JgtK {
        d: u8,
        k: u32,
        t: u16,
    },
    JgeK {
        d: u8,
        k: u32,
        t: u16,
    },
    JsetK {
        d: u8,
        k: u32,
        t: u16,
    },
    JeqX {
        d: u8,
        s: u8,
        t: u16,
    },
    JgtX {
        d: u8,
        s: u8,
        t: u16,
    },
    JgeX {
        d: u8,
        s: u8,
        t: u16,
    },
    JsetX {
        d: u8,
        s: u8,
        t: u16,
    },
    Reject,
    AcceptK {
        k: u32,
    },
    AcceptX {
        s: u8,
    },
    Lookup {
        d: u8,
        s: u8,
        table: u8,
    },
    // Superinstructions (see `fuse`): each stands at the index of its first instruction and
    // does exactly what the sequence does; the instructions after it keep their own decoded
    // forms for jumps that land on them. `f` is where the sequence goes when the test fails.
    // `ldX rD, [off]; jCC rD, k, t` (and `ja f` when it follows), one variant per width and
    // condition so that dispatch is the only branch on the kind of operation.
    LdBJeq {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdBJgt {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdBJge {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdBJset {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdHJeq {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdHJgt {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdHJge {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdHJset {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdWJeq {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdWJgt {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdWJge {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdWJset {
        d: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    // `ldX rD, [rS + off]; jeq rD, k, t` (and `ja f`): a port behind the IPv4 header.
    LdIndBJeq {
        d: u8,
        s: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdIndHJeq {
        d: u8,
        s: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    LdIndWJeq {
        d: u8,
        s: u8,
        off: u32,
        k: u32,
        t: u16,
        f: u16,
    },
    // `jCC rD, k, t; ja f`.
    JeqK2 {
        d: u8,
        k: u32,
        t: u16,
        f: u16,
    },
    JgtK2 {
        d: u8,
        k: u32,
        t: u16,
        f: u16,
    },
    JgeK2 {
        d: u8,
        k: u32,
        t: u16,
        f: u16,
    },
    JsetK2 {
        d: u8,
        k: u32,
        t: u16,
        f: u16,
    },
    /// `ldb rD, [off]; and rD, 0xf; lsh rD, 2`: the IPv4 header length (BPF's `ldxb 4*([k]&0xf)`).
    LdMsh {
        d: u8,
        off: u32,
    },
}

/// Width of a fused load.
#[derive(Clone, Copy)]
enum Size {
    B,
    H,
    W,
}

/// Condition of a fused test against a constant.
#[derive(Clone, Copy)]
enum Cond {
    Eq,
    Gt,
    Ge,
    Set,
}

/// The superinstruction for a load of `size` into `d` followed by a test of `d`.
fn load_test(size: Size, cond: Cond, d: u8, off: u32, k: u32, t: u16, f: u16) -> Op {
    use {Cond::*, Size::*};
    match (size, cond) {
        (B, Eq) => Op::LdBJeq { d, off, k, t, f },
        (B, Gt) => Op::LdBJgt { d, off, k, t, f },
        (B, Ge) => Op::LdBJge { d, off, k, t, f },
        (B, Set) => Op::LdBJset { d, off, k, t, f },
        (H, Eq) => Op::LdHJeq { d, off, k, t, f },
        (H, Gt) => Op::LdHJgt { d, off, k, t, f },
        (H, Ge) => Op::LdHJge { d, off, k, t, f },
        (H, Set) => Op::LdHJset { d, off, k, t, f },
        (W, Eq) => Op::LdWJeq { d, off, k, t, f },
        (W, Gt) => Op::LdWJgt { d, off, k, t, f },
        (W, Ge) => Op::LdWJge { d, off, k, t, f },
        (W, Set) => Op::LdWJset { d, off, k, t, f },
    }
}

/// The superinstruction for a test followed by `ja f`.
fn two_way(cond: Cond, d: u8, k: u32, t: u16, f: u16) -> Op {
    match cond {
        Cond::Eq => Op::JeqK2 { d, k, t, f },
        Cond::Gt => Op::JgtK2 { d, k, t, f },
        Cond::Ge => Op::JgeK2 { d, k, t, f },
        Cond::Set => Op::JsetK2 { d, k, t, f },
    }
}

/// The condition and operands of a test against a constant.
fn test_k(op: Op) -> Option<(Cond, u8, u32, u16)> {
    match op {
        Op::JeqK { d, k, t } => Some((Cond::Eq, d, k, t)),
        Op::JgtK { d, k, t } => Some((Cond::Gt, d, k, t)),
        Op::JgeK { d, k, t } => Some((Cond::Ge, d, k, t)),
        Op::JsetK { d, k, t } => Some((Cond::Set, d, k, t)),
        _ => None,
    }
}

/// Replaces the first instruction of every common sequence with one superinstruction that
/// does the whole sequence in one dispatch. Only the first slot changes, so a jump into the
/// middle of a sequence still finds the plain instructions there; the fused op's effects
/// (registers written, loads checked, where it goes) are exactly the sequence's.
fn fuse(ops: &mut [Op]) {
    for i in 0..ops.len() {
        let next = |n: usize| ops.get(i + n).copied();
        // Where a test's false edge goes: over a following `ja`, or to the instruction after.
        let false_edge = |after: usize| match next(after) {
            Some(Op::Ja { t }) => t,
            // Verified: a test is never the last instruction, and MAX_INSNS fits in u16.
            _ => (i + after) as u16,
        };
        let fused = match (ops[i], next(1).and_then(test_k)) {
            (Op::LdB { d, k: off }, Some((cond, jd, k, t))) if jd == d => {
                Some(load_test(Size::B, cond, d, off, k, t, false_edge(2)))
            }
            (Op::LdH { d, k: off }, Some((cond, jd, k, t))) if jd == d => {
                Some(load_test(Size::H, cond, d, off, k, t, false_edge(2)))
            }
            (Op::LdW { d, k: off }, Some((cond, jd, k, t))) if jd == d => {
                Some(load_test(Size::W, cond, d, off, k, t, false_edge(2)))
            }
            (Op::LdIndB { d, s, k: off }, Some((Cond::Eq, jd, k, t))) if jd == d => {
                Some(Op::LdIndBJeq {
                    d,
                    s,
                    off,
                    k,
                    t,
                    f: false_edge(2),
                })
            }
            (Op::LdIndH { d, s, k: off }, Some((Cond::Eq, jd, k, t))) if jd == d => {
                Some(Op::LdIndHJeq {
                    d,
                    s,
                    off,
                    k,
                    t,
                    f: false_edge(2),
                })
            }
            (Op::LdIndW { d, s, k: off }, Some((Cond::Eq, jd, k, t))) if jd == d => {
                Some(Op::LdIndWJeq {
                    d,
                    s,
                    off,
                    k,
                    t,
                    f: false_edge(2),
                })
            }
            (Op::LdB { d, k: off }, _)
                if next(1) == Some(Op::AndK { d, k: 0xf })
                    && next(2) == Some(Op::LshK { d, k: 2 }) =>
            {
                Some(Op::LdMsh { d, off })
            }
            (op, _) => match (test_k(op), next(1)) {
                (Some((cond, d, k, t)), Some(Op::Ja { t: f })) => Some(two_way(cond, d, k, t, f)),
                _ => None,
            },
        };
        if let Some(op) = fused {
            ops[i] = op;
        }
    }
}

fn decode(program: &Program) -> Box<[Op]> {
    program
        .insns()
        .iter()
        .enumerate()
        .map(|(pc, i)| {
            let (d, s, k) = (i.dst & 0xf, i.src & 0xf, i.k);
            // Verified: targets lie in 0..MAX_INSNS (below 2^16), slots and tables below 16.
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
        .collect::<Box<[Op]>>()
}

/// [`decode`] then [`fuse`]: what the interpreter runs.
fn prepare(program: &Program) -> Box<[Op]> {
    let mut ops = decode(program);
    fuse(&mut ops);
    ops
}

impl Interpreter {
    /// An interpreter for `program` (decodes it once).
    pub fn new(program: Program) -> Interpreter {
        let ops = prepare(&program);
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
    // A real branch, not a conditional move: with a `cmov` the next dispatch would wait for
    // the frame load and the compare (a data dependency the branch predictor cannot break),
    // which measured twice as slow. Marking one side cold keeps LLVM from forming a select.
    macro_rules! two_way {
        ($cond:expr, $t:expr, $f:expr) => {{
            if $cond {
                std::hint::cold_path();
                pc = usize::from($t);
            } else {
                pc = usize::from($f);
            }
            continue;
        }};
    }
    macro_rules! load_test {
        ($n:literal, $d:expr, $off:expr, $t:expr, $f:expr, |$v:ident| $cond:expr) => {{
            let $v = ld!($n, $off as usize);
            reg!($d) = $v;
            two_way!($cond, $t, $f)
        }};
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
            Op::LdBJeq { d, off, k, t, f } => load_test!(1, d, off, t, f, |v| v == k),
            Op::LdBJgt { d, off, k, t, f } => load_test!(1, d, off, t, f, |v| v > k),
            Op::LdBJge { d, off, k, t, f } => load_test!(1, d, off, t, f, |v| v >= k),
            Op::LdBJset { d, off, k, t, f } => load_test!(1, d, off, t, f, |v| v & k != 0),
            Op::LdHJeq { d, off, k, t, f } => load_test!(2, d, off, t, f, |v| v == k),
            Op::LdHJgt { d, off, k, t, f } => load_test!(2, d, off, t, f, |v| v > k),
            Op::LdHJge { d, off, k, t, f } => load_test!(2, d, off, t, f, |v| v >= k),
            Op::LdHJset { d, off, k, t, f } => load_test!(2, d, off, t, f, |v| v & k != 0),
            Op::LdWJeq { d, off, k, t, f } => load_test!(4, d, off, t, f, |v| v == k),
            Op::LdWJgt { d, off, k, t, f } => load_test!(4, d, off, t, f, |v| v > k),
            Op::LdWJge { d, off, k, t, f } => load_test!(4, d, off, t, f, |v| v >= k),
            Op::LdWJset { d, off, k, t, f } => load_test!(4, d, off, t, f, |v| v & k != 0),
            // rS + off in 64 bits: never wraps.
            Op::LdIndBJeq { d, s, off, k, t, f } => {
                load_test!(1, d, reg!(s) as usize + off as usize, t, f, |v| v == k)
            }
            Op::LdIndHJeq { d, s, off, k, t, f } => {
                load_test!(2, d, reg!(s) as usize + off as usize, t, f, |v| v == k)
            }
            Op::LdIndWJeq { d, s, off, k, t, f } => {
                load_test!(4, d, reg!(s) as usize + off as usize, t, f, |v| v == k)
            }
            Op::JeqK2 { d, k, t, f } => two_way!(reg!(d) == k, t, f),
            Op::JgtK2 { d, k, t, f } => two_way!(reg!(d) > k, t, f),
            Op::JgeK2 { d, k, t, f } => two_way!(reg!(d) >= k, t, f),
            Op::JsetK2 { d, k, t, f } => two_way!(reg!(d) & k != 0, t, f),
            Op::LdMsh { d, off } => {
                reg!(d) = (ld!(1, off as usize) & 0xf) << 2;
                pc += 3;
                continue;
            }
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
    execute(&prepare(program), program, frame, wire_len, scratch)
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

    /// A random program made of the sequences [`fuse`] looks for (and near misses: other
    /// registers, other constants), with forward jumps that land anywhere, including inside
    /// those sequences; ends in accepts and rejects so every path returns.
    fn fusible_program(rng: &mut impl rand::Rng) -> Vec<Insn> {
        let body = rng.gen_range(1..24usize);
        // Registers are written before they are read (the verifier insists).
        let mut insns = vec![Insn::mov(0, 0), Insn::mov(1, 0)];
        let exits = 3usize;
        while insns.len() < body + 2 {
            let d = rng.gen_range(0..2u8);
            let off = rng.gen_range(0..40u32);
            let load = match rng.gen_range(0..6) {
                0 => Insn::ldb(d, off),
                1 => Insn::ldh(d, off),
                2 => Insn::ldw(d, off),
                // Indirect, from either register (it may hold a loaded value: out of bounds).
                3 => Insn::ldb_ind(d, rng.gen_range(0..2), off),
                4 => Insn::ldh_ind(d, rng.gen_range(0..2), off),
                _ => Insn::ldw_ind(d, rng.gen_range(0..2), off),
            };
            match rng.gen_range(0..5) {
                0 | 1 => {
                    insns.push(load);
                    // A test, on the loaded register or (a near miss) the other one.
                    let jd = if rng.gen_bool(0.8) { d } else { 1 - d };
                    let op = [Opcode::JeqK, Opcode::JgtK, Opcode::JgeK, Opcode::JsetK]
                        [rng.gen_range(0..4)];
                    insns.push(Insn::jmp_k(op, jd, rng.gen_range(0..4), 0));
                    if rng.gen_bool(0.5) {
                        insns.push(Insn::ja(0));
                    }
                }
                2 => {
                    insns.push(Insn::ldb(d, off));
                    let mask = if rng.gen_bool(0.8) { 0xf } else { 0x7 };
                    insns.push(Insn::alu_k(Opcode::AndK, d, mask));
                    let shift = if rng.gen_bool(0.8) { 2 } else { 1 };
                    insns.push(Insn::alu_k(Opcode::LshK, d, shift));
                }
                3 => {
                    insns.push(Insn::jmp_k(Opcode::JgtK, d, rng.gen_range(0..300), 0));
                    insns.push(Insn::ja(0));
                }
                _ => insns.push(Insn::alu_k(Opcode::AddK, d, rng.gen_range(0..3))),
            }
        }
        // Point every jump at a random later instruction (the exits included).
        let n = insns.len() + exits;
        for (pc, insn) in insns.iter_mut().enumerate() {
            if insn.op.is_jump() {
                let target = rng.gen_range(pc + 1..n);
                insn.off = (target - pc - 1) as i16;
            }
        }
        insns.extend([Insn::accept_x(0), Insn::accept_x(1), Insn::reject()]);
        insns
    }

    #[test]
    fn superinstructions_do_exactly_what_the_sequences_they_replace_do() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut fused_ops = 0usize;
        for _ in 0..3_000 {
            let Ok(p) = Program::new(&fusible_program(&mut rng), &[]) else {
                continue;
            };
            let (plain, fused) = (decode(&p), prepare(&p));
            fused_ops += plain
                .iter()
                .zip(fused.iter())
                .filter(|(a, b)| a != b)
                .count();
            for len in 0..44usize {
                let frame: Vec<u8> = (0..len).map(|_| rng.gen_range(0..5u8)).collect();
                let (mut s1, mut s2) = (Scratch::default(), Scratch::default());
                assert_eq!(
                    execute(&plain, &p, &frame, 64, &mut s1),
                    execute(&fused, &p, &frame, 64, &mut s2),
                    "seed {seed}: program {:?} on {frame:?}",
                    p.insns()
                );
            }
        }
        assert!(
            fused_ops > 1_000,
            "seed {seed}: only {fused_ops} fused instructions"
        );
    }
}
