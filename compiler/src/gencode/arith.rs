//! Relations and arithmetic (`gen_relation`, `gen_arth`, `gen_load`): both sides' protocol
//! checks first, then both computations, then the comparison; `proto[index : size]` loads
//! carry the protocol checks libpcap puts before them.
//!
//! An index libpcap's optimizer knows to be constant ([`libpcap_constant`]) is added to the
//! header's offset in 32 bits, as its `opt_stmt` does when it folds `ldx #k; ld [x + off]`
//! (see the module comment of [`super`]): the sum is computed by the VM's wrapping `add`, and
//! the load is at that register. After the IPv4 header (`tcp[k]`), its `opt_peep` moves the
//! constant into the load's offset instead, so the offset wraps and the header length is
//! added to it without wrapping, as the VM adds a register to an offset.

use super::{Gen, Rel, IPPROTO_ICMPV6};
use crate::ast::*;
use crate::error::{semantic, Result, Span};
use crate::ir::*;

/// An arithmetic value in construction (libpcap's `struct arth`).
struct Arth {
    stmts: Vec<Stmt>,
    val: Temp,
    cond: Option<Cond>,
    /// The constant of the first statement if it is `ld #k` (libpcap's division-by-zero check
    /// looks only there).
    first_imm: Option<u32>,
}

impl Gen<'_> {
    /// `gen_relation`: protocol checks of both sides first, then both computations, then the
    /// comparison.
    pub(super) fn relation(&mut self, op: RelOp, a0: &Arith, a1: &Arith) -> Result<Cond> {
        let operator = has_operator(a0) || has_operator(a1);
        let a0 = self.arith(a0)?;
        let a1 = self.arith(a1)?;
        if operator {
            self.libpcap.opaque_tests.push(a0.val);
        }
        let (cmp, reversed) = match op {
            RelOp::Gt => (Cmp::Gt, false),
            RelOp::Ge => (Cmp::Ge, false),
            RelOp::Eq => (Cmp::Eq, false),
            RelOp::Le => (Cmp::Gt, true),
            RelOp::Lt => (Cmp::Ge, true),
            RelOp::Ne => (Cmp::Eq, true),
        };
        let mut stmts = a0.stmts;
        stmts.extend(a1.stmts);
        let mut b = Cond::Test(Test {
            stmts,
            cmp,
            a: a0.val,
            b: Operand::T(a1.val),
        });
        if reversed {
            b = Cond::negate(b);
        }
        let checks = match (a0.cond, a1.cond) {
            (Some(x), Some(y)) => Some(Cond::and(x, y)),
            (x, y) => x.or(y),
        };
        Ok(match checks {
            Some(c) => Cond::and(c, b),
            None => b,
        })
    }

    fn arith(&mut self, a: &Arith) -> Result<Arth> {
        match a {
            Arith::Num(k, _) => {
                let t = self.temp();
                Ok(Arth {
                    stmts: vec![Stmt::Mov {
                        dst: t,
                        src: Operand::K(*k),
                    }],
                    val: t,
                    cond: None,
                    first_imm: Some(*k),
                })
            }
            Arith::Len(_) => {
                let t = self.temp();
                Ok(Arth {
                    stmts: vec![Stmt::Len { dst: t }],
                    val: t,
                    cond: None,
                    first_imm: None,
                })
            }
            Arith::Neg(inner, _) => {
                let mut x = self.arith(inner)?;
                let t = self.temp();
                x.stmts.push(Stmt::Mov {
                    dst: t,
                    src: Operand::T(x.val),
                });
                x.stmts.push(Stmt::Neg { dst: t });
                x.val = t;
                Ok(x)
            }
            Arith::Bin(op, l, r, span) => {
                let (left_dead, right_dead) = absorbed_operands(*op, l, r);
                self.absorbed += u32::from(left_dead);
                let a0 = self.arith(l);
                self.absorbed -= u32::from(left_dead);
                let a0 = a0?;
                self.absorbed += u32::from(right_dead);
                let a1 = self.arith(r);
                self.absorbed -= u32::from(right_dead);
                let a1 = a1?;
                let op = match op {
                    ArithOp::Add => AluOp::Add,
                    ArithOp::Sub => AluOp::Sub,
                    ArithOp::Mul => AluOp::Mul,
                    ArithOp::Div => AluOp::Div,
                    ArithOp::Mod => AluOp::Mod,
                    ArithOp::And => AluOp::And,
                    ArithOp::Or => AluOp::Or,
                    ArithOp::Xor => AluOp::Xor,
                    ArithOp::Shl => AluOp::Shl,
                    ArithOp::Shr => AluOp::Shr,
                };
                match (op, a1.first_imm) {
                    (AluOp::Div, Some(0)) => return semantic(r.span(), "division by zero"),
                    (AluOp::Mod, Some(0)) => return semantic(r.span(), "modulus by zero"),
                    (AluOp::Shl | AluOp::Shr, Some(k)) if k > 31 => {
                        return semantic(r.span(), "shift by more than 31 bits")
                    }
                    _ => {}
                }
                let _ = span;
                let t = self.temp();
                let mut stmts = a0.stmts;
                stmts.extend(a1.stmts);
                stmts.push(Stmt::Mov {
                    dst: t,
                    src: Operand::T(a0.val),
                });
                stmts.push(Stmt::Alu {
                    op,
                    dst: t,
                    rhs: Operand::T(a1.val),
                });
                // libpcap 1.10's gen_arth keeps only the left operand's protocol checks
                // (`ip[0] + tcp[12] > 0` does not check for TCP); we do the same.
                drop(a1.cond);
                Ok(Arth {
                    stmts,
                    val: t,
                    cond: a0.cond,
                    first_imm: a0.first_imm,
                })
            }
            Arith::Load {
                proto,
                index,
                size,
                span,
            } => self.load_expr(*proto, index, *size, *span),
        }
    }

    /// `gen_load`: `proto[index : size]`.
    fn load_expr(&mut self, proto: Proto, index: &Arith, size: u32, span: Span) -> Result<Arth> {
        let size = Size::from_bytes(size)
            .ok_or(())
            .or_else(|_| semantic(span, "data size must be 1, 2, or 4"))?;
        let mut inst = self.arith(index)?;
        let dst = self.temp();
        match proto {
            Proto::Link if self.folds(index) && self.off_linkhdr.var.is_none() => {
                let off = self.off_linkhdr.k;
                self.wrapping_load(&mut inst.stmts, dst, size, inst.val, off);
            }
            Proto::Link => {
                let base = match self.off_linkhdr.var {
                    None => inst.val,
                    Some(v) => {
                        let t = self.temp();
                        inst.stmts.push(Stmt::Mov {
                            dst: t,
                            src: Operand::T(v),
                        });
                        inst.stmts.push(Stmt::Alu {
                            op: AluOp::Add,
                            dst: t,
                            rhs: Operand::T(inst.val),
                        });
                        t
                    }
                };
                inst.stmts.push(Stmt::Load {
                    dst,
                    size,
                    base: Some(base),
                    off: self.off_linkhdr.k,
                });
            }
            Proto::Ip | Proto::Arp | Proto::Rarp | Proto::Ip6 => {
                let off = self.off_linkpl.k.wrapping_add(self.off_nl);
                if self.folds(index) && self.off_linkpl.var.is_none() {
                    self.wrapping_load(&mut inst.stmts, dst, size, inst.val, off);
                } else {
                    let base = self.indexed_base(&mut inst.stmts, inst.val);
                    inst.stmts.push(Stmt::Load {
                        dst,
                        size,
                        base: Some(base),
                        off,
                    });
                }
                let b = self.proto_abbrev(proto, span)?;
                inst.cond = Some(match inst.cond.take() {
                    Some(c) => Cond::and(c, b),
                    None => b,
                });
            }
            Proto::Sctp
            | Proto::Tcp
            | Proto::Udp
            | Proto::Icmp
            | Proto::Igmp
            | Proto::Igrp
            | Proto::Pim
            | Proto::Vrrp
            | Proto::Carp => {
                let x = self.iphdrlen(&mut inst.stmts);
                let off = self.off_linkpl.k.wrapping_add(self.off_nl);
                match libpcap_constant(index).filter(|_| self.folds(index)) {
                    // libpcap's `opt_peep` turns `ld #k; add x; tax; ld [x + off]` into
                    // `ld [x + (off + k)]`: the constant joins the offset in 32 bits, and the
                    // header length is added to it without wrapping.
                    Some(k) => inst.stmts.push(Stmt::Load {
                        dst,
                        size,
                        base: Some(x),
                        off: off.wrapping_add(k),
                    }),
                    None => {
                        let sum = self.temp();
                        inst.stmts.push(Stmt::Mov {
                            dst: sum,
                            src: Operand::T(inst.val),
                        });
                        inst.stmts.push(Stmt::Alu {
                            op: AluOp::Add,
                            dst: sum,
                            rhs: Operand::T(x),
                        });
                        inst.stmts.push(Stmt::Load {
                            dst,
                            size,
                            base: Some(sum),
                            off,
                        });
                    }
                }
                // gen_and(gen_proto_abbrev(proto), b = gen_ipfrag()); gen_and(inst->b, b);
                // gen_and(gen_proto_abbrev(Q_IP), b).
                let pa = self.proto_abbrev(proto, span)?;
                let frag = self.ipfrag();
                let mut b = Cond::and(pa, frag);
                if let Some(c) = inst.cond.take() {
                    b = Cond::and(c, b);
                }
                let ip = self.proto_abbrev(Proto::Ip, span)?;
                inst.cond = Some(Cond::and(ip, b));
            }
            Proto::Icmp6 => {
                let ip6 = self.proto_abbrev(Proto::Ip6, span)?;
                let mut b = match inst.cond.take() {
                    Some(c) => Cond::and(c, ip6),
                    None => ip6,
                };
                let nh = self.cmp(Rel::Net, 6, Size::B, IPPROTO_ICMPV6);
                b = Cond::and(b, nh);
                inst.cond = Some(b);
                let off = self.off_linkpl.k.wrapping_add(self.off_nl).wrapping_add(40);
                if self.folds(index) && self.off_linkpl.var.is_none() {
                    self.wrapping_load(&mut inst.stmts, dst, size, inst.val, off);
                } else {
                    let base = self.indexed_base(&mut inst.stmts, inst.val);
                    inst.stmts.push(Stmt::Load {
                        dst,
                        size,
                        base: Some(base),
                        off,
                    });
                }
            }
            other => {
                return semantic(
                    span,
                    format!("unsupported index operation (`{}[...]`)", other.name()),
                )
            }
        }
        inst.val = dst;
        Ok(inst)
    }

    /// Whether libpcap's optimizer folds this index into the load, adding it to the offset in
    /// 32 bits (it runs, and knows the index's value).
    fn folds(&self, index: &Arith) -> bool {
        self.wrap_constant_offsets && self.absorbed == 0 && libpcap_constant(index).is_some()
    }

    /// A load at `index + off` added in 32 bits, as libpcap's folded load: the sum in a temp
    /// (the VM's arithmetic wraps), then a load at that temp. Our optimizer folds it into an
    /// absolute load.
    fn wrapping_load(
        &mut self,
        stmts: &mut Vec<Stmt>,
        dst: Temp,
        size: Size,
        index: Temp,
        off: u32,
    ) {
        let at = self.temp();
        stmts.push(Stmt::Mov {
            dst: at,
            src: Operand::T(index),
        });
        stmts.push(Stmt::Alu {
            op: AluOp::Add,
            dst: at,
            rhs: Operand::K(off),
        });
        stmts.push(Stmt::Load {
            dst,
            size,
            base: Some(at),
            off: 0,
        });
    }

    /// The register an indexed network-layer load adds to its constant: the index, plus the
    /// variable part of the payload offset if there is one (wrapping, as BPF's `add x`).
    fn indexed_base(&mut self, stmts: &mut Vec<Stmt>, index: Temp) -> Temp {
        match self.off_linkpl.var {
            None => index,
            Some(v) => {
                let t = self.temp();
                stmts.push(Stmt::Mov {
                    dst: t,
                    src: Operand::T(v),
                });
                stmts.push(Stmt::Alu {
                    op: AluOp::Add,
                    dst: t,
                    rhs: Operand::T(index),
                });
                t
            }
        }
    }
}

/// Whether an arithmetic expression has an operator.
fn has_operator(a: &Arith) -> bool {
    matches!(a, Arith::Bin(..) | Arith::Neg(..))
}

/// Which operands of `l op r` libpcap's optimizer makes dead by folding the operation to 0
/// whatever they are (`x * 0`, `x & 0`; `0 * x`, `0 / x`, `0 % x`, `0 & x`, `0 << x`,
/// `0 >> x`): (left, right).
fn absorbed_operands(op: ArithOp, l: &Arith, r: &Arith) -> (bool, bool) {
    let (lc, rc) = (libpcap_constant(l), libpcap_constant(r));
    if lc.is_some() && rc.is_some() {
        // Both constant: folded, nothing of either is loaded (constants load nothing).
        return (false, false);
    }
    let left = rc == Some(0) && matches!(op, ArithOp::Mul | ArithOp::And);
    let right = lc == Some(0)
        && matches!(
            op,
            ArithOp::Mul | ArithOp::Div | ArithOp::Mod | ArithOp::And | ArithOp::Shl | ArithOp::Shr
        );
    (left, right)
}

/// The value libpcap's optimizer finds for an arithmetic expression, if it finds one: its
/// constant folding (`fold_op`) where both operands are constants, and its rewrites of an
/// operation with a zero operand (`opt_stmt`: `x * 0`, `x & 0`, `0 * x`, `0 / x`, `0 % x`,
/// `0 << x`, `0 >> x` are 0; `x + 0`, `x | 0`, `x ^ 0`, `x << 0`, `x >> 0` and `0 + x`,
/// `0 | x`, `0 ^ x` are the other operand). A division by a constant zero is no value (libpcap
/// refuses the filter).
pub(crate) fn libpcap_constant(a: &Arith) -> Option<u32> {
    match a {
        Arith::Num(k, _) => Some(*k),
        Arith::Len(_) | Arith::Load { .. } => None,
        Arith::Neg(inner, _) => libpcap_constant(inner).map(u32::wrapping_neg),
        Arith::Bin(op, l, r, _) => {
            let (a, b) = (libpcap_constant(l), libpcap_constant(r));
            let alu = match op {
                ArithOp::Add => AluOp::Add,
                ArithOp::Sub => AluOp::Sub,
                ArithOp::Mul => AluOp::Mul,
                ArithOp::Div => AluOp::Div,
                ArithOp::Mod => AluOp::Mod,
                ArithOp::And => AluOp::And,
                ArithOp::Or => AluOp::Or,
                ArithOp::Xor => AluOp::Xor,
                ArithOp::Shl => AluOp::Shl,
                ArithOp::Shr => AluOp::Shr,
            };
            match (a, b) {
                (Some(a), Some(b)) => alu.eval(a, b),
                // The constant on the right: `op #0`.
                (_, Some(0)) => match alu {
                    AluOp::Mul | AluOp::And => Some(0),
                    AluOp::Add | AluOp::Or | AluOp::Xor | AluOp::Shl | AluOp::Shr => a,
                    _ => None,
                },
                // A zero accumulator.
                (Some(0), _) => match alu {
                    AluOp::Mul | AluOp::Div | AluOp::Mod | AluOp::And | AluOp::Shl | AluOp::Shr => {
                        Some(0)
                    }
                    AluOp::Add | AluOp::Or | AluOp::Xor => b,
                    AluOp::Sub => None,
                },
                _ => None,
            }
        }
    }
}
