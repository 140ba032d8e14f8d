//! `protochain` (`gen_protochain`): libpcap's walk over the IPv6 extension headers and AH
//! headers to the protocol asked for. libpcap loops with a backward jump; the VM has only
//! forward jumps, so the walk is unrolled (see [`PROTOCHAIN_MAX_HEADERS_V6`]).

use super::{Gen, Ipv, ETHERTYPE_IP, ETHERTYPE_IPV6, IPPROTO_AH};
use crate::ast::*;
use crate::error::{semantic, unsupported, Result, Span};
use crate::ir::*;

/// The most IPv6 extension headers (and AH headers) one `ip6 protochain` follows before giving
/// up (rejecting); libpcap follows any number with a backward jump. libpcap's own test capture
/// `ipv6_ext_headers.pcap` carries a chain of 100. Each unrolled step costs about 19
/// instructions.
pub const PROTOCHAIN_MAX_HEADERS_V6: usize = 110;

/// Unrolled IPv6 steps shared by all the `protochain`s of one filter (about 8,400
/// instructions at most), so that four walks each follow [`PROTOCHAIN_MAX_HEADERS_V6`] headers
/// and a filter with more still fits in the VM's 16,384 instructions: each gets
/// `min(110, 440 / n)`.
pub const PROTOCHAIN_BUDGET_V6: usize = 440;

/// The most AH headers one `ip protochain` follows before giving up (rejecting); about 9
/// instructions each.
pub const PROTOCHAIN_MAX_AH_V4: usize = 32;

/// Unrolled IPv4 steps shared by all the `protochain`s of one filter (four full walks).
pub const PROTOCHAIN_BUDGET_V4: usize = 128;

/// How many IPv4 and IPv6 protochain walks an expression contains.
pub(super) fn count_protochains(e: &Expr) -> (usize, usize) {
    match e {
        Expr::Chain(first, rest) => {
            let mut c = count_protochains(first);
            for (_, e) in rest {
                let d = count_protochains(e);
                c = (c.0 + d.0, c.1 + d.1);
            }
            c
        }
        Expr::Not(inner) => count_protochains(inner),
        Expr::Empty => (0, 0),
        Expr::Prim(Primitive::Qualified(q, _), _) if q.addr == Some(AddrKind::Protochain) => {
            match q.proto {
                None => (1, 1),
                Some(Proto::Ip) => (1, 0),
                Some(Proto::Ip6) => (0, 1),
                Some(_) => (0, 0),
            }
        }
        _ => (0, 0),
    }
}

impl Gen<'_> {
    /// `gen_protochain`: the unrolled walk over IPv6 extension headers and AH.
    pub(super) fn protochain(&mut self, v: u32, proto: Option<Proto>, span: Span) -> Result<Cond> {
        match proto {
            None => {
                let b0 = self.protochain(v, Some(Proto::Ip), span)?;
                let b = self.protochain(v, Some(Proto::Ip6), span)?;
                Ok(Cond::or(b0, b))
            }
            Some(p @ (Proto::Ip | Proto::Ip6)) => {
                if self.off_linkpl.var.is_some() {
                    return unsupported(
                        span,
                        "`protochain` after `geneve` is not supported by netmux",
                    );
                }
                self.libpcap.optimizer_off = true;
                let ipv = if p == Proto::Ip { Ipv::V4 } else { Ipv::V6 };
                let ll = if ipv == Ipv::V4 {
                    ETHERTYPE_IP
                } else {
                    ETHERTYPE_IPV6
                };
                let b0 = self.linktype(ll, span)?;
                let frag = Protochain {
                    steps: if ipv == Ipv::V4 {
                        self.chain_steps_v4
                    } else {
                        self.chain_steps_v6
                    },
                    ipv,
                    v,
                    net: self.off_linkpl.k.wrapping_add(self.off_nl),
                    a: self.temp(),
                    x: self.temp(),
                    scratch: self.temp(),
                };
                Ok(Cond::and(b0, Cond::Frag(Box::new(frag))))
            }
            Some(p) => semantic(
                span,
                format!("bad protocol applied for '{}'", p.name()).replace("'", "'"),
            ),
        }
    }
}

/// The unrolled `protochain` walk (see the module comment). Temps: `a` the current next-header
/// value, `x` the header offset, `scratch` for the length arithmetic.
#[derive(Debug)]
struct Protochain {
    /// Unrolled steps.
    steps: usize,
    ipv: Ipv,
    v: u32,
    /// Constant offset of the network layer.
    net: u32,
    a: Temp,
    x: Temp,
    scratch: Temp,
}

impl Protochain {
    fn branch_k(
        func: &mut Function,
        stmts: Vec<Stmt>,
        a: Temp,
        k: u32,
        t: BlockId,
        f: BlockId,
    ) -> BlockId {
        func.add(
            stmts,
            Term::Branch {
                cmp: Cmp::Eq,
                a,
                b: Operand::K(k),
                t,
                f,
            },
        )
    }

    /// The AH step of libpcap's loop, including its bug: the new offset is `(len + 2) * 4`,
    /// not added to the old one. `A = P[X]; X = (P[X + 1] + 2) * 4` (both loads happen before
    /// anything branches, so their order cannot change a verdict).
    fn ah_step(&self) -> Vec<Stmt> {
        let (a, x, t) = (self.a, self.x, self.scratch);
        vec![
            Stmt::Load {
                dst: t,
                size: Size::B,
                base: Some(x),
                off: self.net.wrapping_add(1),
            },
            Stmt::Load {
                dst: a,
                size: Size::B,
                base: Some(x),
                off: self.net,
            },
            Stmt::Alu {
                op: AluOp::Add,
                dst: t,
                rhs: Operand::K(2),
            },
            Stmt::Alu {
                op: AluOp::Shl,
                dst: t,
                rhs: Operand::K(2),
            },
            Stmt::Mov {
                dst: x,
                src: Operand::T(t),
            },
        ]
    }

    /// An IPv6 extension header: `A = P[X]; X += (P[X + 1] + 1) * 8`.
    fn ext_step(&self) -> Vec<Stmt> {
        let (a, x, t) = (self.a, self.x, self.scratch);
        vec![
            Stmt::Load {
                dst: t,
                size: Size::B,
                base: Some(x),
                off: self.net.wrapping_add(1),
            },
            Stmt::Load {
                dst: a,
                size: Size::B,
                base: Some(x),
                off: self.net,
            },
            Stmt::Alu {
                op: AluOp::Add,
                dst: t,
                rhs: Operand::K(1),
            },
            Stmt::Alu {
                op: AluOp::Shl,
                dst: t,
                rhs: Operand::K(3),
            },
            Stmt::Alu {
                op: AluOp::Add,
                dst: x,
                rhs: Operand::T(t),
            },
        ]
    }
}

impl Fragment for Protochain {
    fn build(&self, func: &mut Function, t: BlockId, f: BlockId) -> BlockId {
        let (a, x) = (self.a, self.x);
        // The end: `A == v`.
        let end = Self::branch_k(func, vec![], a, self.v, t, f);
        // Past the unroll limit: give up.
        let give_up = func.add(vec![], Term::Reject);
        // Build iterations from the last backwards; `next` is the entry of the following one.
        let mut next = give_up;
        for _ in 0..self.steps {
            let ah = func.add(self.ah_step(), Term::Jump(next));
            let entry = match self.ipv {
                Ipv::V4 => {
                    let is_ah = Self::branch_k(func, vec![], a, IPPROTO_AH, ah, end);
                    let nonxt = Self::branch_k(func, vec![], a, 59, end, is_ah);
                    Self::branch_k(func, vec![], a, self.v, end, nonxt)
                }
                Ipv::V6 => {
                    let ext = func.add(self.ext_step(), Term::Jump(next));
                    let is_ah = Self::branch_k(func, vec![], a, IPPROTO_AH, ah, end);
                    let frag = Self::branch_k(func, vec![], a, 44, ext, is_ah);
                    let routing = Self::branch_k(func, vec![], a, 43, ext, frag);
                    let dstopts = Self::branch_k(func, vec![], a, 60, ext, routing);
                    let hbh = Self::branch_k(func, vec![], a, 0, ext, dstopts);
                    let nonxt = Self::branch_k(func, vec![], a, 59, end, hbh);
                    Self::branch_k(func, vec![], a, self.v, end, nonxt)
                }
            };
            next = entry;
        }
        // Start: A = next header, X = header length.
        let mut stmts = Vec::new();
        match self.ipv {
            Ipv::V4 => {
                stmts.push(Stmt::Load {
                    dst: a,
                    size: Size::B,
                    base: None,
                    off: self.net.wrapping_add(9),
                });
                stmts.push(Stmt::Load {
                    dst: x,
                    size: Size::B,
                    base: None,
                    off: self.net,
                });
                stmts.push(Stmt::Alu {
                    op: AluOp::And,
                    dst: x,
                    rhs: Operand::K(0xf),
                });
                stmts.push(Stmt::Alu {
                    op: AluOp::Shl,
                    dst: x,
                    rhs: Operand::K(2),
                });
            }
            Ipv::V6 => {
                stmts.push(Stmt::Load {
                    dst: a,
                    size: Size::B,
                    base: None,
                    off: self.net.wrapping_add(6),
                });
                stmts.push(Stmt::Mov {
                    dst: x,
                    src: Operand::K(40),
                });
            }
        }
        func.add(stmts, Term::Jump(next))
    }
}
