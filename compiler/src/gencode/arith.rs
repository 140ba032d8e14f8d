//! Relations and arithmetic (`gen_relation`, `gen_arth`, `gen_load`): both sides' protocol
//! checks first, then both computations, then the comparison; `proto[index : size]` loads
//! carry the protocol checks libpcap puts before them.

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

impl Gen {
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
                let a0 = self.arith(l)?;
                let a1 = self.arith(r)?;
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
                let base = self.indexed_base(&mut inst.stmts, inst.val);
                inst.stmts.push(Stmt::Load {
                    dst,
                    size,
                    base: Some(base),
                    off: self.off_linkpl.k.wrapping_add(self.off_nl),
                });
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
                    off: self.off_linkpl.k.wrapping_add(self.off_nl),
                });
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
                let base = self.indexed_base(&mut inst.stmts, inst.val);
                inst.stmts.push(Stmt::Load {
                    dst,
                    size,
                    base: Some(base),
                    off: self.off_linkpl.k.wrapping_add(self.off_nl).wrapping_add(40),
                });
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
