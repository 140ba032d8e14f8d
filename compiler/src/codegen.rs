//! Register allocation and emission: an IR [`Function`] to VM instructions.
//!
//! Blocks are laid out in topological order, so every jump goes forward, as the VM demands.
//! Temps get registers by linear scan over that layout: a temp's live interval runs from its
//! first to its last occurrence in the layout, which covers every point where it can be live
//! because jumps only go forward. `r0`..`r13` are allocated; when more are needed, the temps
//! that live longest are spilled to scratch slots and reloaded into the reserved `r14`/`r15`
//! around each use. A conditional jump falls through to its false successor when that block is
//! next in the layout; otherwise an unconditional `ja` follows.
//!
//! Guarantees: the output has forward jumps only and writes every register and slot before
//! reading it on every path (because the IR does); a function needing more than
//! [`ALLOCATABLE_REGS`] registers plus 16 slots, or more than [`netmux_vm::MAX_INSNS`]
//! instructions, is an error, never a wrong program.

use netmux_vm::{Insn, Opcode};

use crate::ir::*;

/// Registers the allocator hands out (`r0`..`r13`); `r14`, `r15` reload spilled temps.
pub const ALLOCATABLE_REGS: u8 = 14;
const SPILL_A: u8 = 14;
const SPILL_B: u8 = 15;
const NUM_SLOTS: u32 = netmux_vm::isa::NUM_SLOTS as u32;

/// Where a temp lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Reg(u8),
    Slot(u32),
}

/// Why code could not be emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// More live values than registers and scratch slots.
    TooManyValues,
    /// More instructions than the VM allows.
    TooLong(usize),
}

/// Follows chains of empty blocks that only jump.
fn resolve(func: &Function, mut b: BlockId) -> BlockId {
    for _ in 0..func.blocks.len() {
        match &func.blocks[b] {
            Block {
                stmts,
                term: Term::Jump(next),
            } if stmts.is_empty() => b = *next,
            _ => return b,
        }
    }
    b
}

/// The working buffers of [`emit`]; each thread keeps one set between calls, so emitting a
/// filter does not grow a dozen vectors from nothing. Every use clears what it uses.
#[derive(Default)]
struct Bufs {
    terms: Vec<Term>,
    layout: Vec<BlockId>,
    index: Vec<usize>,
    dfs_state: Vec<u8>,
    dfs_stack: Vec<(BlockId, usize)>,
    first: Vec<usize>,
    last: Vec<usize>,
    intervals: Vec<(usize, usize, Temp)>,
    loc: Vec<Option<Loc>>,
    active: Vec<(usize, Temp, u8)>,
    free: Vec<u8>,
    slots_active: Vec<(usize, u32)>,
    free_slots: Vec<u32>,
    fixups: Vec<(usize, BlockId)>,
    starts: Vec<usize>,
}

thread_local! {
    static SPARE: std::cell::Cell<Option<Box<Bufs>>> = const { std::cell::Cell::new(None) };
}

/// Buffers grown past this many blocks are not kept for the next call.
const MAX_KEPT_BLOCKS: usize = 4096;

/// Emits `func` as VM instructions that end in `accept accept_value` or `reject`.
pub fn emit(func: &Function, accept_value: u32) -> Result<Vec<Insn>, EmitError> {
    let mut bufs = SPARE.with(|c| c.take()).unwrap_or_default();
    let out = emit_with(func, accept_value, &mut bufs);
    if bufs.index.capacity() <= MAX_KEPT_BLOCKS {
        SPARE.with(|c| c.set(Some(bufs)));
    }
    out
}

fn emit_with(func: &Function, accept_value: u32, bufs: &mut Bufs) -> Result<Vec<Insn>, EmitError> {
    let Bufs {
        terms,
        layout,
        index,
        dfs_state,
        dfs_stack,
        first,
        last,
        intervals,
        loc,
        active,
        free,
        slots_active,
        free_slots,
        fixups,
        starts,
    } = bufs;
    // Layout: reachable blocks after threading empty jumps, in topological order (without
    // copying the function: `layout` lists the blocks, `terms` their threaded endings).
    terms.clear();
    terms.extend(func.blocks.iter().map(|b| match b.term {
        Term::Branch {
            cmp,
            a,
            b: rhs,
            t,
            f,
        } => Term::Branch {
            cmp,
            a,
            b: rhs,
            t: resolve(func, t),
            f: resolve(func, f),
        },
        Term::Jump(j) => Term::Jump(resolve(func, j)),
        ref other => other.clone(),
    }));
    let entry = resolve(func, 0);
    // Depth-first reverse post-order visiting true successors first puts a block's false
    // successor right after it where it can, so the branch falls through instead of jumping.
    dfs_order_into(
        terms.len(),
        entry,
        |b, i| terms[b].succs().nth(i),
        layout,
        dfs_state,
        dfs_stack,
    );
    index.clear();
    index.resize(func.blocks.len(), usize::MAX);
    for (i, &b) in layout.iter().enumerate() {
        index[b] = i;
    }
    let blocks = || layout.iter().map(|&b| (&func.blocks[b].stmts, &terms[b]));

    // Live intervals over the layout, indexed by temp (temps are numbered densely).
    let n_temps = func.num_temps as usize;
    first.clear();
    first.resize(n_temps, usize::MAX);
    last.clear();
    last.resize(n_temps, 0);
    let mut pos = 0usize;
    let mut touch = |t: Temp, p: usize| {
        let i = t.0 as usize;
        if i >= first.len() {
            first.resize(i + 1, usize::MAX);
            last.resize(i + 1, 0);
        }
        if first[i] == usize::MAX {
            first[i] = p;
        }
        last[i] = p;
    };
    for (stmts, term) in blocks() {
        for s in stmts {
            for u in s.uses() {
                touch(u, pos);
            }
            touch(s.def(), pos);
            pos += 1;
        }
        for t in term.uses() {
            touch(t, pos);
        }
        pos += 1;
    }
    intervals.clear();
    intervals.extend(
        first
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != usize::MAX)
            .map(|(i, &s)| (s, last[i], Temp(i as u32))),
    );
    intervals.sort_unstable();

    // Linear scan.
    loc.clear();
    loc.resize(first.len(), None);
    active.clear(); // (end, temp, reg)
    free.clear();
    free.extend((0..ALLOCATABLE_REGS).rev());
    slots_active.clear();
    free_slots.clear();
    free_slots.extend((0..NUM_SLOTS).rev());
    for &(start, end, t) in intervals.iter() {
        active.retain(|&(e, _, r)| {
            if e < start {
                free.push(r);
                false
            } else {
                true
            }
        });
        slots_active.retain(|&(e, s)| {
            if e < start {
                free_slots.push(s);
                false
            } else {
                true
            }
        });
        if let Some(r) = free.pop() {
            loc[t.0 as usize] = Some(Loc::Reg(r));
            active.push((end, t, r));
            continue;
        }
        // Spill whichever lives longest: the new temp or the active one ending last.
        let slot = free_slots.pop().ok_or(EmitError::TooManyValues)?;
        let (idx, &(a_end, a_t, a_r)) = active
            .iter()
            .enumerate()
            .max_by_key(|(_, (e, _, _))| *e)
            .ok_or(EmitError::TooManyValues)?;
        if a_end > end {
            loc[a_t.0 as usize] = Some(Loc::Slot(slot));
            slots_active.push((a_end, slot));
            active.remove(idx);
            loc[t.0 as usize] = Some(Loc::Reg(a_r));
            active.push((end, t, a_r));
        } else {
            loc[t.0 as usize] = Some(Loc::Slot(slot));
            slots_active.push((end, slot));
        }
    }

    // Emission.
    let mut out: Vec<Insn> = Vec::with_capacity(pos + pos / 2);
    fixups.clear();
    starts.clear();
    starts.resize(layout.len(), 0);
    let lc = |t: &Temp| {
        loc.get(t.0 as usize)
            .copied()
            .flatten()
            .unwrap_or(Loc::Reg(SPILL_A))
    };
    let use_reg = |out: &mut Vec<Insn>, t: Temp, scratch: u8| -> u8 {
        match lc(&t) {
            Loc::Reg(r) => r,
            Loc::Slot(s) => {
                out.push(Insn::ldm(scratch, s));
                scratch
            }
        }
    };
    let def_reg = |t: Temp| -> u8 {
        match lc(&t) {
            Loc::Reg(r) => r,
            Loc::Slot(_) => SPILL_A,
        }
    };
    let finish_def = |out: &mut Vec<Insn>, t: Temp| {
        if let Loc::Slot(s) = lc(&t) {
            out.push(Insn::stm(s, SPILL_A));
        }
    };
    for (bi, (stmts, term)) in blocks().enumerate() {
        starts[bi] = out.len();
        for s in stmts {
            match s {
                Stmt::Load {
                    dst,
                    size,
                    base,
                    off,
                } => {
                    let d = def_reg(*dst);
                    match base {
                        None => out.push(match size {
                            Size::B => Insn::ldb(d, *off),
                            Size::H => Insn::ldh(d, *off),
                            Size::W => Insn::ldw(d, *off),
                        }),
                        Some(bt) => {
                            let r = use_reg(&mut out, *bt, SPILL_B);
                            out.push(match size {
                                Size::B => Insn::ldb_ind(d, r, *off),
                                Size::H => Insn::ldh_ind(d, r, *off),
                                Size::W => Insn::ldw_ind(d, r, *off),
                            });
                        }
                    }
                    finish_def(&mut out, *dst);
                }
                Stmt::Len { dst } => {
                    out.push(Insn::ldlen(def_reg(*dst)));
                    finish_def(&mut out, *dst);
                }
                Stmt::Mov { dst, src } => {
                    let d = def_reg(*dst);
                    match src {
                        Operand::K(k) => out.push(Insn::mov(d, *k)),
                        Operand::T(st) => {
                            let r = use_reg(&mut out, *st, SPILL_B);
                            if r != d {
                                out.push(Insn::mov_x(d, r));
                            }
                        }
                    }
                    finish_def(&mut out, *dst);
                }
                Stmt::Alu { op, dst, rhs } => {
                    let d = use_reg(&mut out, *dst, SPILL_A);
                    match rhs {
                        Operand::K(k) => out.push(Insn::alu_k(alu_k(*op), d, *k)),
                        Operand::T(rt) => {
                            let r = use_reg(&mut out, *rt, SPILL_B);
                            out.push(Insn::alu_x(alu_x(*op), d, r));
                        }
                    }
                    finish_def(&mut out, *dst);
                }
                Stmt::Neg { dst } => {
                    let d = use_reg(&mut out, *dst, SPILL_A);
                    out.push(Insn::neg(d));
                    finish_def(&mut out, *dst);
                }
            }
        }
        let next = bi + 1;
        match *term {
            Term::Accept => out.push(Insn::accept(accept_value)),
            Term::Reject => out.push(Insn::reject()),
            Term::Jump(j) => {
                let j = index[j];
                if j != next {
                    fixups.push((out.len(), j));
                    out.push(Insn::ja(0));
                }
            }
            Term::Branch {
                cmp,
                a,
                b: rhs,
                t,
                f: e,
            } => {
                let (t, e) = (index[t], index[e]);
                let ra = use_reg(&mut out, a, SPILL_A);
                let insn = match rhs {
                    Operand::K(k) => Insn::jmp_k(jmp_k(cmp), ra, k, 0),
                    Operand::T(rt) => {
                        let rb = use_reg(&mut out, rt, SPILL_B);
                        Insn::jmp_x(jmp_x(cmp), ra, rb, 0)
                    }
                };
                if t == e {
                    // Both ways lead to the same place.
                    if t != next {
                        fixups.push((out.len(), t));
                        out.push(Insn::ja(0));
                    }
                } else {
                    fixups.push((out.len(), t));
                    out.push(insn);
                    if e != next {
                        fixups.push((out.len(), e));
                        out.push(Insn::ja(0));
                    }
                }
            }
        }
    }
    if out.len() > netmux_vm::MAX_INSNS {
        return Err(EmitError::TooLong(out.len()));
    }
    for &(at, target) in fixups.iter() {
        let off = starts[target] as i64 - at as i64 - 1;
        let off = i16::try_from(off).map_err(|_| EmitError::TooLong(out.len()))?;
        out[at].off = off;
    }
    Ok(out)
}

fn alu_k(op: AluOp) -> Opcode {
    match op {
        AluOp::Add => Opcode::AddK,
        AluOp::Sub => Opcode::SubK,
        AluOp::Mul => Opcode::MulK,
        AluOp::Div => Opcode::DivK,
        AluOp::Mod => Opcode::ModK,
        AluOp::And => Opcode::AndK,
        AluOp::Or => Opcode::OrK,
        AluOp::Xor => Opcode::XorK,
        AluOp::Shl => Opcode::LshK,
        AluOp::Shr => Opcode::RshK,
    }
}

fn alu_x(op: AluOp) -> Opcode {
    match op {
        AluOp::Add => Opcode::AddX,
        AluOp::Sub => Opcode::SubX,
        AluOp::Mul => Opcode::MulX,
        AluOp::Div => Opcode::DivX,
        AluOp::Mod => Opcode::ModX,
        AluOp::And => Opcode::AndX,
        AluOp::Or => Opcode::OrX,
        AluOp::Xor => Opcode::XorX,
        AluOp::Shl => Opcode::LshX,
        AluOp::Shr => Opcode::RshX,
    }
}

fn jmp_k(c: Cmp) -> Opcode {
    match c {
        Cmp::Eq => Opcode::JeqK,
        Cmp::Gt => Opcode::JgtK,
        Cmp::Ge => Opcode::JgeK,
        Cmp::Set => Opcode::JsetK,
    }
}

fn jmp_x(c: Cmp) -> Opcode {
    match c {
        Cmp::Eq => Opcode::JeqX,
        Cmp::Gt => Opcode::JgtX,
        Cmp::Ge => Opcode::JgeX,
        Cmp::Set => Opcode::JsetX,
    }
}
