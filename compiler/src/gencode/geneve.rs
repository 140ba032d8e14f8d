//! `geneve`: Geneve tunnels over UDP (`gen_geneve`, `gen_geneve_check`,
//! `gen_geneve_offsets`). Everything after it looks inside the tunnel, at offsets held in
//! registers.

use super::{Gen, Ipv, Off, Rel, GENEVE_PORT, IPPROTO_UDP};
use crate::ast::*;
use crate::error::{semantic, Result, Span};
use crate::ir::*;

impl Gen<'_> {
    /// `gen_geneve_check`: UDP to port 6081, Geneve version 0, and the VNI if given.
    fn geneve_check(&mut self, ipv: Ipv, vni: Option<u32>, span: Span) -> Result<Cond> {
        let mut b0 = self.port(ipv, GENEVE_PORT, None, IPPROTO_UDP, Some(Dir::Dst), span)?;
        let version = match ipv {
            Ipv::V4 => self.tran4_mcmp(8, Size::B, 0xc0, Cmp::Eq, false, 0),
            Ipv::V6 => self.ncmp(Rel::Net, 40 + 8, Size::B, 0xc0, Cmp::Eq, false, 0),
        };
        b0 = Cond::and(b0, version);
        if let Some(vni) = vni {
            if vni > 0xff_ffff {
                return semantic(
                    span,
                    format!("Geneve VNI {vni} greater than maximum 16777215"),
                );
            }
            let c = match ipv {
                Ipv::V4 => self.tran4_mcmp(12, Size::W, 0xffff_ff00, Cmp::Eq, false, vni << 8),
                Ipv::V6 => self.ncmp(
                    Rel::Net,
                    40 + 12,
                    Size::W,
                    0xffff_ff00,
                    Cmp::Eq,
                    false,
                    vni << 8,
                ),
            };
            b0 = Cond::and(b0, c);
        }
        Ok(b0)
    }

    /// `gen_geneve`: Geneve over IPv4 or IPv6; everything after it looks inside the tunnel
    /// (the offsets become the registers computed by [`GeneveOffsets`]).
    pub(super) fn geneve(&mut self, vni: Option<u32>, span: Span) -> Result<Cond> {
        let iplen = self.temp();
        // gen_geneve4: the check, then A = the IPv4 header length (plus any variable prefix).
        let c4 = self.geneve_check(Ipv::V4, vni, span)?;
        let mut s4 = Vec::new();
        let x = self.iphdrlen(&mut s4);
        s4.push(Stmt::Mov {
            dst: iplen,
            src: Operand::T(x),
        });
        let b0 = Cond::and(c4, Cond::Stmts(s4));
        // gen_geneve6: the check, then A = 40 (plus any variable prefix).
        let c6 = self.geneve_check(Ipv::V6, vni, span)?;
        let mut s6 = vec![Stmt::Mov {
            dst: iplen,
            src: Operand::K(40),
        }];
        if let Some(v) = self.off_linkpl.var {
            s6.push(Stmt::Alu {
                op: AluOp::Add,
                dst: iplen,
                rhs: Operand::T(v),
            });
        }
        let b1 = Cond::and(c6, Cond::Stmts(s6));
        let offsets = GeneveOffsets {
            iplen,
            fixed: self.off_linkpl.k.wrapping_add(self.off_nl).wrapping_add(8),
            hdr: self.temp(),
            linktype: self.temp(),
            linkhdr: self.temp(),
            linkpl: self.temp(),
            scratch: self.temp(),
        };
        // Later primitives read these registers even on paths where Geneve did not match
        // (libpcap reads unwritten scratch memory there); start them at 0.
        for t in [offsets.linktype, offsets.linkhdr, offsets.linkpl] {
            self.prologue.push(Stmt::Mov {
                dst: t,
                src: Operand::K(0),
            });
        }
        self.off_linktype = Some(Off {
            var: Some(offsets.linktype),
            k: 0,
        });
        self.off_linkhdr = Off {
            var: Some(offsets.linkhdr),
            k: 0,
        };
        self.off_linkpl = Off {
            var: Some(offsets.linkpl),
            k: 0,
        };
        self.off_nl = 0;
        // libpcap's `PUSH_LINKHDR(DLT_EN10MB, ...)`: what follows tests Ethernet.
        self.link = super::LinkType::Ethernet;
        // libpcap: "We have a bare jmp so we can't use the optimizer."
        self.libpcap.optimizer_off = true;
        Ok(Cond::and(Cond::or(b0, b1), Cond::Frag(Box::new(offsets))))
    }
}

/// `gen_geneve_offsets`: from the IP header length, find the Geneve header, its options, and
/// whether it carries Ethernet (type 0x6558), and set the link-type, link-header and payload
/// offsets for what follows. Always exits true (a load may still reject).
#[derive(Debug)]
struct GeneveOffsets {
    iplen: Temp,
    /// Constant part: payload offset + network offset + the UDP header.
    fixed: u32,
    hdr: Temp,
    linktype: Temp,
    linkhdr: Temp,
    linkpl: Temp,
    scratch: Temp,
}

impl Fragment for GeneveOffsets {
    fn build(&self, func: &mut Function, t: BlockId, _f: BlockId) -> BlockId {
        let (g, lt, lh, pl, s) = (
            self.hdr,
            self.linktype,
            self.linkhdr,
            self.linkpl,
            self.scratch,
        );
        let mov = |dst, src| Stmt::Mov { dst, src };
        let alu = |op, dst, k| Stmt::Alu {
            op,
            dst,
            rhs: Operand::K(k),
        };
        // Ethernet inside: the inner type field and the end of the inner Ethernet header.
        let ether = func.add(
            vec![
                mov(lt, Operand::T(lh)),
                alu(AluOp::Add, lt, 12),
                mov(pl, Operand::T(lh)),
                alu(AluOp::Add, pl, 14),
            ],
            Term::Jump(t),
        );
        let stmts = vec![
            // g = start of the Geneve header
            mov(g, Operand::T(self.iplen)),
            alu(AluOp::Add, g, self.fixed),
            // link type = g + 2 (the protocol type field)
            mov(lt, Operand::T(g)),
            alu(AluOp::Add, lt, 2),
            // link header = g + 8 + 4 * (options length)
            Stmt::Load {
                dst: lh,
                size: Size::B,
                base: Some(g),
                off: 0,
            },
            alu(AluOp::And, lh, 0x3f),
            alu(AluOp::Mul, lh, 4),
            alu(AluOp::Add, lh, 8),
            Stmt::Alu {
                op: AluOp::Add,
                dst: lh,
                rhs: Operand::T(g),
            },
            // protocol type
            Stmt::Load {
                dst: s,
                size: Size::H,
                base: Some(g),
                off: 2,
            },
            // payload = end of the Geneve header unless it carries Ethernet
            mov(pl, Operand::T(lh)),
        ];
        func.add(
            stmts,
            Term::Branch {
                cmp: Cmp::Eq,
                a: s,
                b: Operand::K(0x6558),
                t: ether,
                f: t,
            },
        )
    }
}
