//! Redundant loads and computations (libpcap's value numbering, on our temps): a statement
//! computing a value some temp already holds on every path to it (the ethertype after
//! `jeq #0x86dd` failed, `4 * (ip[0] & 0xf)` for the second port field) becomes a move from
//! that temp; writes that leaves unread are dropped and the moves are propagated away.
//!
//! It never changes a verdict: the earlier computation ran on every path and did not reject
//! (else the frame was already rejected), so the repeated one cannot reject either and gives
//! the same value; a write is dropped only when it cannot reject.

use super::dead::min_len_at_entry_into;
use super::hashcons::HashCons;
use super::Scratch;
use crate::ir::*;

/// What a temp holds, independent of the path (a value number's meaning): a frame load at a
/// constant offset or at a value plus a constant, the wire length, a constant, or an
/// operation on value numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Value {
    Abs { size: Size, off: u32 },
    Ind { size: Size, base: u32, off: u32 },
    Len,
    Const(u32),
    Op(AluOp, u32, u32),
    Neg(u32),
}

/// Value numbers: equal [`Value`]s get equal numbers.
pub(super) type Numbering = HashCons<Value>;

/// Upper bound on the (temp, value number) pairs tracked at a point. Filters hold a handful
/// of values; the bound keeps the pass linear on pathological input (forgetting an entry can
/// cost an instruction, never a verdict).
const MAX_HELD: usize = 64;

/// Which temps hold which value numbers on every path to a point.
pub(super) type Held = Vec<(Temp, u32)>;

fn held_by(held: &[(Temp, u32)], t: Temp) -> Option<u32> {
    held.iter().find(|(x, _)| *x == t).map(|&(_, v)| v)
}

fn operand_number(n: &mut Numbering, held: &[(Temp, u32)], o: Operand) -> Option<u32> {
    match o {
        Operand::K(k) => Some(n.const_id(k, || Value::Const(k))),
        Operand::T(t) => held_by(held, t),
    }
}

/// libpcap's value numbering, on our temps: a statement computing a value that another temp
/// holds on every path to it (a load of a field already loaded, `4 * (ip[0] & 0xf)` computed
/// again for the next port test) becomes a move from that temp; writes made useless by that
/// are dropped, and moves from temps that no longer change are propagated away.
///
/// Sound because the earlier computation ran on every path and did not reject (else the frame
/// was already rejected): the repeated one cannot reject either and gives the same value.
pub(super) fn reuse_values(func: &mut Function, sc: &mut Scratch) -> Reused {
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let order = &sc.order;
    let numbers = &mut sc.numbers;
    numbers.clear();
    // The lists are kept from compilation to compilation (each holds at most `MAX_HELD`).
    let at_entry = &mut sc.held_at;
    if at_entry.len() < func.blocks.len() {
        at_entry.resize_with(func.blocks.len(), Held::new);
    }
    let reached = &mut sc.held_reached;
    reached.clear();
    reached.resize(func.blocks.len(), false);
    let held = &mut sc.held;
    let mut changed = false;
    let mut lost_reads = false;
    for &b in order.iter() {
        held.clear();
        if reached[b] {
            held.extend_from_slice(&at_entry[b]);
        }
        for s in &mut func.blocks[b].stmts {
            let n = &mut *numbers;
            let vn = match *s {
                Stmt::Load {
                    size,
                    base: None,
                    off,
                    ..
                } => Some(n.load_id(size, off, || Value::Abs { size, off })),
                Stmt::Load {
                    size,
                    base: Some(base),
                    off,
                    ..
                } => held_by(held, base).map(|base| n.id(Value::Ind { size, base, off })),
                Stmt::Len { .. } => Some(n.id(Value::Len)),
                Stmt::Mov { src, .. } => operand_number(n, held, src),
                Stmt::Alu { op, dst, rhs } => {
                    match (held_by(held, dst), operand_number(n, held, rhs)) {
                        (Some(a), Some(r)) => Some(n.id(Value::Op(op, a, r))),
                        _ => None,
                    }
                }
                Stmt::Neg { dst } => held_by(held, dst).map(|a| n.id(Value::Neg(a))),
            };
            let dst = s.def();
            if let (Some(vn), false) = (vn, matches!(s, Stmt::Mov { .. })) {
                if let Some(&(t, _)) = held.iter().find(|&&(t, v)| v == vn && t != dst) {
                    // A statement reading temps no longer does: they may now be unused.
                    lost_reads |= s.uses().next().is_some();
                    *s = Stmt::Mov {
                        dst,
                        src: Operand::T(t),
                    };
                    changed = true;
                }
            }
            held.retain(|&(t, _)| t != dst);
            if let Some(vn) = vn {
                if held.len() == MAX_HELD {
                    held.remove(0);
                }
                held.push((dst, vn));
            }
        }
        for succ in func.blocks[b].succs() {
            let entry = &mut at_entry[succ];
            if reached[succ] {
                entry.retain(|p| held.contains(p));
            } else {
                entry.clear();
                entry.extend_from_slice(held);
                reached[succ] = true;
            }
        }
    }
    if !changed {
        return Reused::Nothing;
    }
    lost_reads |= drop_overwritten(func, order, &mut sc.min_len, &mut sc.keep, &mut sc.unneeded);
    lost_reads |= propagate_copies(func, order, &mut sc.writes, &mut sc.rename, &mut sc.read);
    if lost_reads {
        Reused::LostReads
    } else {
        Reused::Changed
    }
}

/// What [`reuse_values`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reused {
    Nothing,
    /// Changed statements, but every temp read before is still read: no new dead code (the
    /// proven frame lengths stay too, as a load is replaced only where every path loaded it).
    Changed,
    /// Some temp may have lost its last read.
    LostReads,
}

/// Drops, within each block, writes to a temp that the block overwrites before anything reads
/// it, when they cannot reject (pure arithmetic, loads proven in bounds by earlier loads); says
/// whether it dropped any.
fn drop_overwritten(
    func: &mut Function,
    order: &[BlockId],
    min_len: &mut Vec<u64>,
    keep: &mut Vec<bool>,
    unneeded: &mut Vec<Temp>,
) -> bool {
    // The proven frame lengths, computed only if a load is a candidate.
    let mut lens_ready = false;
    let mut any = false;
    for &b in order {
        let blk = &func.blocks[b];
        if blk.stmts.len() < 2 {
            // Nothing to overwrite.
            continue;
        }
        // Backwards: a temp is unneeded where it is written again before any read.
        unneeded.clear();
        keep.clear();
        keep.resize(blk.stmts.len(), true);
        let mut dropped = false;
        for (i, s) in blk.stmts.iter().enumerate().rev() {
            let def = s.def();
            if unneeded.contains(&def) {
                let in_bounds = match s {
                    Stmt::Load {
                        base: None,
                        off,
                        size,
                        ..
                    } => {
                        if !lens_ready {
                            min_len_at_entry_into(func, order, min_len);
                            lens_ready = true;
                        }
                        // The frame length proven before this statement.
                        let before = blk.stmts[..i].iter().fold(min_len[b], |len, s| match s {
                            Stmt::Load {
                                base: None,
                                off,
                                size,
                                ..
                            } => len.max(u64::from(*off) + u64::from(size.bytes())),
                            _ => len,
                        });
                        u64::from(*off) + u64::from(size.bytes()) <= before
                    }
                    _ => false,
                };
                if in_bounds || !s.may_reject() {
                    keep[i] = false;
                    dropped = true;
                    continue;
                }
            } else {
                unneeded.push(def);
            }
            let uses = s.uses();
            unneeded.retain(|t| !uses.clone().any(|u| u == *t));
        }
        if dropped {
            any = true;
            let mut i = 0;
            func.blocks[b].stmts.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
    }
    any
}

/// Where a temp is written: how often, and whether all writes are in one block (which one,
/// and the index of the last write there).
#[derive(Clone, Copy, Default)]
pub(super) struct Writes {
    count: u32,
    block: Option<BlockId>,
    last: usize,
    one_block: bool,
}

/// Removes `d = s` where `d` is written only there and `s` no longer changes after it (all of
/// `s`'s writes are in one block, which every path runs before the move, as `s` is written
/// before it is read: the graph is acyclic, so that block cannot run again), reading `s`
/// wherever `d` was read. Also drops `t = t`.
/// Says whether some temp may have lost a read (a removed move was the only reader of its
/// source, or a temp was moved to itself).
fn propagate_copies(
    func: &mut Function,
    order: &[BlockId],
    writes: &mut Vec<Writes>,
    rename: &mut Vec<Option<Temp>>,
    read: &mut Vec<bool>,
) -> bool {
    let n = func.num_temps as usize;
    writes.clear();
    writes.resize(n, Writes::default());
    for &b in order {
        for (i, s) in func.blocks[b].stmts.iter().enumerate() {
            if let Some(w) = writes.get_mut(s.def().0 as usize) {
                w.one_block = match w.block {
                    None => true,
                    Some(other) => w.one_block && other == b,
                };
                w.block = Some(b);
                w.count = w.count.saturating_add(1);
                w.last = i;
            }
        }
    }
    let settled_at = |s: Temp, b: BlockId, i: usize| {
        writes
            .get(s.0 as usize)
            .is_some_and(|w| w.one_block && (w.block != Some(b) || w.last < i))
    };
    rename.clear();
    rename.resize(n, None);
    for &b in order {
        for (i, s) in func.blocks[b].stmts.iter().enumerate() {
            if let Stmt::Mov {
                dst,
                src: Operand::T(src),
            } = *s
            {
                let once = writes.get(dst.0 as usize).is_some_and(|w| w.count == 1);
                if dst != src && once && settled_at(src, b, i) {
                    let root = rename.get(src.0 as usize).copied().flatten().unwrap_or(src);
                    if let Some(r) = rename.get_mut(dst.0 as usize) {
                        *r = Some(root);
                    }
                }
            }
        }
    }
    // Which renamed temps are still read (through their new name).
    read.clear();
    read.resize(n, false);
    let map = |t: &mut Temp, read: &mut Vec<bool>| {
        if let Some(Some(r)) = rename.get(t.0 as usize) {
            read[t.0 as usize] = true;
            *t = *r;
        }
    };
    let map_op = |o: &mut Operand, read: &mut Vec<bool>| {
        if let Operand::T(t) = o {
            map(t, read);
        }
    };
    let mut self_moves = false;
    for &b in order {
        let blk = &mut func.blocks[b];
        let copies = |s: &Stmt| {
            matches!(
                s,
                Stmt::Mov {
                    src: Operand::T(_),
                    ..
                }
            )
        };
        if blk.stmts.iter().any(copies) {
            blk.stmts.retain(|s| match *s {
                Stmt::Mov {
                    dst,
                    src: Operand::T(src),
                } => {
                    self_moves |= dst == src;
                    dst != src && !matches!(rename.get(dst.0 as usize), Some(Some(_)))
                }
                _ => true,
            });
        }
        for s in &mut blk.stmts {
            match s {
                Stmt::Load { base: Some(t), .. } => map(t, read),
                Stmt::Mov { src, .. } => map_op(src, read),
                Stmt::Alu { rhs, .. } => map_op(rhs, read),
                _ => {}
            }
        }
        if let Term::Branch { a, b: rhs, .. } = &mut blk.term {
            map(a, read);
            map_op(rhs, read);
        }
    }
    // A removed move whose destination nobody read took a read of its source with it.
    self_moves || (0..n).any(|t| rename[t].is_some() && !read[t])
}
