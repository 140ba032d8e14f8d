//! Code generation with libpcap's semantics: AST to [`Cond`], following `gencode.c` (libpcap
//! 1.10, the version the conformance corpus was checked against) primitive by primitive.
//!
//! The point is to perform *the same loads in the same order* as libpcap on every path, not
//! only to compute the same boolean: a load past the captured bytes rejects the whole frame
//! (even under `not`), so which loads happen decides verdicts on truncated frames. Each
//! function below names the `gencode.c` function it mirrors and keeps its evaluation order
//! (`gen_and(b0, b1)` evaluates `b0` first).
//!
//! Offsets are state, as in libpcap: `vlan` moves the link-type field and the link-layer
//! payload 4 bytes on, `mpls` moves the network layer 4 bytes on, for everything parsed after
//! them, whatever the boolean structure (`vlan or ip` tests `ip` inside the tag). `geneve`
//! makes the payload offset variable (a register), so later loads become register-relative.
//!
//! `protochain` is a loop in libpcap (a backward jump); the VM has only forward jumps, so the
//! loop is unrolled up to [`PROTOCHAIN_MAX_HEADERS_V6`] (IPv6) or [`PROTOCHAIN_MAX_AH_V4`]
//! (IPv4) times, fewer when one filter has several (see [`PROTOCHAIN_BUDGET_V6`]). A chain longer than that ends in reject
//! (libpcap would keep walking).

use std::net::Ipv6Addr;

use crate::ast::*;
use crate::error::{semantic, unsupported, Result, Span};
use crate::ir::*;
use crate::libpcap::GenNotes;

/// The most IPv6 extension headers (and AH headers) one `ip6 protochain` follows before giving
/// up (rejecting); libpcap follows any number with a backward jump. libpcap's own test capture
/// `ipv6_ext_headers.pcap` carries a chain of 100. Each unrolled step costs about 19
/// instructions.
pub const PROTOCHAIN_MAX_HEADERS_V6: usize = 110;

/// Unrolled IPv6 steps shared by all the `protochain`s of one filter (~2,700 instructions),
/// so a filter with several still fits the VM's 4,096: each gets `min(110, 140 / n)`.
pub const PROTOCHAIN_BUDGET_V6: usize = 140;

/// The most AH headers one `ip protochain` follows before giving up (rejecting); about 9
/// instructions each.
pub const PROTOCHAIN_MAX_AH_V4: usize = 32;

/// Unrolled IPv4 steps shared by all the `protochain`s of one filter.
pub const PROTOCHAIN_BUDGET_V4: usize = 64;

/// How many IPv4 and IPv6 protochain walks an expression contains.
fn count_protochains(e: &Expr) -> (usize, usize) {
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

const ETHERMTU: u32 = 1500;
const ETHERTYPE_IP: u32 = 0x0800;
const ETHERTYPE_ARP: u32 = 0x0806;
const ETHERTYPE_REVARP: u32 = 0x8035;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const ETHERTYPE_MPLS: u32 = 0x8847;
const ETHERTYPE_8021Q: u32 = 0x8100;
const ETHERTYPE_8021AD: u32 = 0x88a8;
const ETHERTYPE_8021QINQ: u32 = 0x9100;
const ETHERTYPE_ATALK: u32 = 0x809b;
const ETHERTYPE_AARP: u32 = 0x80f3;
const ETHERTYPE_IPX: u32 = 0x8137;
const PPP_IP: u32 = 0x0021;
const PPP_IPV6: u32 = 0x0057;
const LLCSAP_IP: u32 = 0x06;
const LLCSAP_ISONS: u32 = 0xfe;
const LLCSAP_NETBEUI: u32 = 0xf0;
const LLCSAP_IPX: u32 = 0xe0;
const LLCSAP_8021D: u32 = 0x42;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_IGMP: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_IGRP: u32 = 9;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_FRAGMENT: u32 = 44;
const IPPROTO_ESP: u32 = 50;
const IPPROTO_AH: u32 = 51;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_PIM: u32 = 103;
const IPPROTO_VRRP: u32 = 112;
const IPPROTO_CARP: u32 = 112;
const IPPROTO_SCTP: u32 = 132;
const GENEVE_PORT: u32 = 6081;

/// An offset: an optional register part plus a constant (libpcap's `bpf_abs_offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Off {
    var: Option<Temp>,
    k: u32,
}

/// What an offset is relative to (libpcap's `enum e_offrel`, the ones Ethernet uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rel {
    /// The start of the frame.
    LinkHdr,
    /// The link-layer type field.
    LinkType,
    /// The link-layer payload (also `OR_LLC`).
    LinkPl,
    /// The network-layer header (payload + MPLS labels).
    Net,
}

/// An arithmetic value in construction (libpcap's `struct arth`).
struct Arth {
    stmts: Vec<Stmt>,
    val: Temp,
    cond: Option<Cond>,
    /// The constant of the first statement if it is `ld #k` (libpcap's division-by-zero check
    /// looks only there).
    first_imm: Option<u32>,
}

/// The code generator's state: the offsets in force and the temps allocated so far.
pub struct Gen {
    /// Temps allocated.
    pub temps: u32,
    /// Statements the program must run first (zeroing the registers that hold `geneve`'s
    /// variable offsets, which libpcap keeps in scratch memory that may be unwritten).
    pub prologue: Vec<Stmt>,
    off_linkhdr: Off,
    off_linktype: Off,
    off_linkpl: Off,
    off_nl: u32,
    label_stack_depth: u32,
    /// What the libpcap refusal model needs to know beyond the code: whether libpcap
    /// optimizes the filter at all, and which tests its first optimizer loop cannot decide.
    pub(crate) libpcap: GenNotes,
    chain_steps_v4: usize,
    chain_steps_v6: usize,
}

impl Default for Gen {
    fn default() -> Self {
        Gen::new()
    }
}

/// IPv4 or IPv6, for the functions that exist in both flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ipv {
    V4,
    V6,
}

impl Gen {
    /// A generator for Ethernet (DLT_EN10MB) in its initial state.
    pub fn new() -> Gen {
        Gen {
            temps: 0,
            prologue: Vec::new(),
            off_linkhdr: Off { var: None, k: 0 },
            off_linktype: Off { var: None, k: 12 },
            off_linkpl: Off { var: None, k: 14 },
            off_nl: 0,
            label_stack_depth: 0,
            libpcap: GenNotes::default(),
            chain_steps_v4: PROTOCHAIN_MAX_AH_V4,
            chain_steps_v6: PROTOCHAIN_MAX_HEADERS_V6,
        }
    }

    fn temp(&mut self) -> Temp {
        self.temps += 1;
        Temp(self.temps - 1)
    }

    /// The absolute offset of `off` relative to `rel`.
    fn abs(&self, rel: Rel, off: u32) -> Off {
        let (base, extra) = match rel {
            Rel::LinkHdr => (self.off_linkhdr, 0),
            Rel::LinkType => (self.off_linktype, 0),
            Rel::LinkPl => (self.off_linkpl, 0),
            Rel::Net => (self.off_linkpl, self.off_nl),
        };
        Off {
            var: base.var,
            k: base.k.wrapping_add(extra).wrapping_add(off),
        }
    }

    fn load(&mut self, stmts: &mut Vec<Stmt>, at: Off, size: Size) -> Temp {
        let dst = self.temp();
        stmts.push(Stmt::Load {
            dst,
            size,
            base: at.var,
            off: at.k,
        });
        dst
    }

    /// `gen_ncmp`: load, mask unless all ones, compare with `v`, negate if `reverse`.
    #[allow(clippy::too_many_arguments)] // libpcap's gen_ncmp, argument for argument
    fn ncmp(
        &mut self,
        rel: Rel,
        off: u32,
        size: Size,
        mask: u32,
        cmp: Cmp,
        reverse: bool,
        v: u32,
    ) -> Cond {
        let mut stmts = Vec::new();
        let at = self.abs(rel, off);
        let a = self.load(&mut stmts, at, size);
        if mask != 0xffff_ffff {
            stmts.push(Stmt::Alu {
                op: AluOp::And,
                dst: a,
                rhs: Operand::K(mask),
            });
        }
        let t = Cond::Test(Test {
            stmts,
            cmp,
            a,
            b: Operand::K(v),
        });
        if reverse {
            Cond::negate(t)
        } else {
            t
        }
    }

    fn cmp(&mut self, rel: Rel, off: u32, size: Size, v: u32) -> Cond {
        self.ncmp(rel, off, size, 0xffff_ffff, Cmp::Eq, false, v)
    }

    fn mcmp(&mut self, rel: Rel, off: u32, size: Size, v: u32, mask: u32) -> Cond {
        self.ncmp(rel, off, size, mask, Cmp::Eq, false, v)
    }

    fn cmp_gt(&mut self, rel: Rel, off: u32, size: Size, v: u32) -> Cond {
        self.ncmp(rel, off, size, 0xffff_ffff, Cmp::Gt, false, v)
    }

    fn cmp_ge(&mut self, rel: Rel, off: u32, size: Size, v: u32) -> Cond {
        self.ncmp(rel, off, size, 0xffff_ffff, Cmp::Ge, false, v)
    }

    /// `gen_bcmp`: compare `bytes` at `off`, 4 then 2 then 1 bytes at a time from the end.
    fn bcmp(&mut self, rel: Rel, off: u32, bytes: &[u8]) -> Cond {
        let mut size = bytes.len();
        let mut acc: Option<Cond> = None;
        let push = |acc: &mut Option<Cond>, c: Cond| {
            *acc = Some(match acc.take() {
                None => c,
                Some(prev) => Cond::and(prev, c),
            });
        };
        while size >= 4 {
            let p = &bytes[size - 4..size];
            let v = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            let c = self.cmp(rel, off + size as u32 - 4, Size::W, v);
            push(&mut acc, c);
            size -= 4;
        }
        while size >= 2 {
            let p = &bytes[size - 2..size];
            let v = u32::from(u16::from_be_bytes([p[0], p[1]]));
            let c = self.cmp(rel, off + size as u32 - 2, Size::H, v);
            push(&mut acc, c);
            size -= 2;
        }
        if size > 0 {
            let c = self.cmp(rel, off, Size::B, u32::from(bytes[0]));
            push(&mut acc, c);
        }
        acc.unwrap_or(Cond::True)
    }

    /// `gen_snap`: an 802.2 LLC/SNAP header with this organisation code and type.
    fn snap(&mut self, org: u32, ptype: u32) -> Cond {
        let b = [
            0xaa,
            0xaa,
            0x03,
            (org >> 16) as u8,
            (org >> 8) as u8,
            org as u8,
            (ptype >> 8) as u8,
            ptype as u8,
        ];
        self.bcmp(Rel::LinkPl, 0, &b)
    }

    /// `gen_ether_linktype`.
    fn ether_linktype(&mut self, p: u32) -> Cond {
        match p {
            LLCSAP_ISONS | LLCSAP_IP | LLCSAP_NETBEUI => {
                let b0 = Cond::negate(self.cmp_gt(Rel::LinkType, 0, Size::H, ETHERMTU));
                let b1 = self.cmp(Rel::LinkPl, 0, Size::H, (p << 8) | p);
                Cond::and(b0, b1)
            }
            LLCSAP_IPX => {
                let ty = self.cmp(Rel::LinkType, 0, Size::H, ETHERTYPE_IPX);
                let not_gt = Cond::negate(self.cmp_gt(Rel::LinkType, 0, Size::H, ETHERMTU));
                let snap = self.snap(0, ETHERTYPE_IPX);
                let sap = self.cmp(Rel::LinkPl, 0, Size::B, LLCSAP_IPX);
                let raw = self.cmp(Rel::LinkPl, 0, Size::H, 0xffff);
                let llc = Cond::or(snap, Cond::or(sap, raw));
                Cond::or(ty, Cond::and(not_gt, llc))
            }
            ETHERTYPE_ATALK | ETHERTYPE_AARP => {
                let ty = self.cmp(Rel::LinkType, 0, Size::H, p);
                let not_gt = Cond::negate(self.cmp_gt(Rel::LinkType, 0, Size::H, ETHERMTU));
                let snap = if p == ETHERTYPE_ATALK {
                    self.snap(0x080007, ETHERTYPE_ATALK)
                } else {
                    self.snap(0, ETHERTYPE_AARP)
                };
                Cond::or(ty, Cond::and(not_gt, snap))
            }
            p if p <= ETHERMTU => {
                let b0 = Cond::negate(self.cmp_gt(Rel::LinkType, 0, Size::H, ETHERMTU));
                let b1 = self.cmp(Rel::LinkType, 2, Size::B, p);
                Cond::and(b0, b1)
            }
            p => self.cmp(Rel::LinkType, 0, Size::H, p),
        }
    }

    /// `gen_linktype` for Ethernet, including the MPLS bottom-of-stack form.
    fn linktype(&mut self, p: u32, span: Span) -> Result<Cond> {
        if self.label_stack_depth > 0 {
            let version = match p {
                ETHERTYPE_IP | PPP_IP => 0x40,
                ETHERTYPE_IPV6 | PPP_IPV6 => 0x60,
                _ => return semantic(span, "unsupported protocol over mpls"),
            };
            let b0 = self.mcmp(Rel::Net, 0u32.wrapping_sub(2), Size::B, 0x01, 0x01);
            let b1 = self.mcmp(Rel::Net, 0, Size::B, version, 0xf0);
            return Ok(Cond::and(b0, b1));
        }
        Ok(self.ether_linktype(p))
    }

    /// `gen_ipfrag`: not a fragment other than the first.
    fn ipfrag(&mut self) -> Cond {
        let t = self.ncmp(Rel::Net, 6, Size::H, 0xffff_ffff, Cmp::Set, false, 0x1fff);
        Cond::negate(t)
    }

    /// The statements that put the IPv4 header length (`4 * (ip[0] & 0xf)`) in a new temp.
    fn iphdrlen(&mut self, stmts: &mut Vec<Stmt>) -> Temp {
        let at = self.abs(Rel::Net, 0);
        let x = self.load(stmts, at, Size::B);
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
        if let Some(v) = self.off_linkpl.var {
            stmts.push(Stmt::Alu {
                op: AluOp::Add,
                dst: x,
                rhs: Operand::T(v),
            });
        }
        x
    }

    /// A comparison of a field at `off` in the transport header after IPv4 (`OR_TRAN_IPV4`).
    fn tran4_ncmp(&mut self, off: u32, size: Size, cmp: Cmp, reverse: bool, v: u32) -> Cond {
        self.tran4_mcmp(off, size, 0xffff_ffff, cmp, reverse, v)
    }

    fn tran4_mcmp(
        &mut self,
        off: u32,
        size: Size,
        mask: u32,
        cmp: Cmp,
        reverse: bool,
        v: u32,
    ) -> Cond {
        let mut stmts = Vec::new();
        let x = self.iphdrlen(&mut stmts);
        let a = self.temp();
        stmts.push(Stmt::Load {
            dst: a,
            size,
            base: Some(x),
            off: self
                .off_linkpl
                .k
                .wrapping_add(self.off_nl)
                .wrapping_add(off),
        });
        if mask != 0xffff_ffff {
            stmts.push(Stmt::Alu {
                op: AluOp::And,
                dst: a,
                rhs: Operand::K(mask),
            });
        }
        let t = Cond::Test(Test {
            stmts,
            cmp,
            a,
            b: Operand::K(v),
        });
        if reverse {
            Cond::negate(t)
        } else {
            t
        }
    }

    /// A comparison of a field at `off` in the transport header after IPv6 (`OR_TRAN_IPV6`).
    fn tran6_ncmp(&mut self, off: u32, size: Size, cmp: Cmp, reverse: bool, v: u32) -> Cond {
        self.ncmp(Rel::Net, 40 + off, size, 0xffff_ffff, cmp, reverse, v)
    }

    fn tran_ncmp(&mut self, ipv: Ipv, off: u32, cmp: Cmp, reverse: bool, v: u32) -> Cond {
        match ipv {
            Ipv::V4 => self.tran4_ncmp(off, Size::H, cmp, reverse, v),
            Ipv::V6 => self.tran6_ncmp(off, Size::H, cmp, reverse, v),
        }
    }

    /// `gen_proto` (the `proto` qualifier).
    fn proto(
        &mut self,
        v: u32,
        proto: Option<Proto>,
        dir: Option<Dir>,
        span: Span,
    ) -> Result<Cond> {
        if dir.is_some() {
            return semantic(span, "direction applied to 'proto'");
        }
        match proto {
            None => {
                let b0 = self.proto(v, Some(Proto::Ip), None, span)?;
                let b1 = self.proto(v, Some(Proto::Ip6), None, span)?;
                Ok(Cond::or(b0, b1))
            }
            Some(Proto::Link) => self.linktype(v, span),
            Some(Proto::Ip) => {
                let b0 = self.linktype(ETHERTYPE_IP, span)?;
                let b1 = self.cmp(Rel::Net, 9, Size::B, v);
                Ok(Cond::and(b0, b1))
            }
            Some(Proto::Ip6) => {
                let b0 = self.linktype(ETHERTYPE_IPV6, span)?;
                let frag = self.cmp(Rel::Net, 6, Size::B, IPPROTO_FRAGMENT);
                let inner = self.cmp(Rel::Net, 40, Size::B, v);
                let direct = self.cmp(Rel::Net, 6, Size::B, v);
                Ok(Cond::and(b0, Cond::or(direct, Cond::and(frag, inner))))
            }
            Some(Proto::Arp) => semantic(span, "arp does not encapsulate another protocol"),
            Some(Proto::Rarp) => semantic(span, "rarp does not encapsulate another protocol"),
            Some(Proto::Iso) => unsupported(span, "`iso proto` is not supported by netmux"),
            Some(p) => semantic(span, format!("'{} proto' is bogus", p.name())),
        }
    }

    /// `gen_proto_abbrev`: a protocol name on its own.
    fn proto_abbrev(&mut self, p: Proto, span: Span) -> Result<Cond> {
        match p {
            Proto::Sctp => self.proto(IPPROTO_SCTP, None, None, span),
            Proto::Tcp => self.proto(IPPROTO_TCP, None, None, span),
            Proto::Udp => self.proto(IPPROTO_UDP, None, None, span),
            Proto::Icmp => self.proto(IPPROTO_ICMP, Some(Proto::Ip), None, span),
            Proto::Igmp => self.proto(IPPROTO_IGMP, Some(Proto::Ip), None, span),
            Proto::Igrp => self.proto(IPPROTO_IGRP, Some(Proto::Ip), None, span),
            Proto::Pim => self.proto(IPPROTO_PIM, None, None, span),
            Proto::Vrrp => self.proto(IPPROTO_VRRP, Some(Proto::Ip), None, span),
            Proto::Carp => self.proto(IPPROTO_CARP, Some(Proto::Ip), None, span),
            Proto::Ip => self.linktype(ETHERTYPE_IP, span),
            Proto::Arp => self.linktype(ETHERTYPE_ARP, span),
            Proto::Rarp => self.linktype(ETHERTYPE_REVARP, span),
            Proto::Link => semantic(span, "link layer applied in wrong context"),
            Proto::Ip6 => self.linktype(ETHERTYPE_IPV6, span),
            Proto::Ah => self.proto(IPPROTO_AH, None, None, span),
            Proto::Esp => self.proto(IPPROTO_ESP, None, None, span),
            Proto::Icmp6 => self.proto(IPPROTO_ICMPV6, Some(Proto::Ip6), None, span),
            Proto::Stp => self.linktype(LLCSAP_8021D, span),
            Proto::Ipx => self.linktype(LLCSAP_IPX, span),
            Proto::Netbeui => self.linktype(LLCSAP_NETBEUI, span),
            Proto::Iso => self.linktype(LLCSAP_ISONS, span),
        }
    }

    /// `gen_hostop`: IPv4 (or ARP/RARP) address test at `src_off`/`dst_off`.
    #[allow(clippy::too_many_arguments)] // libpcap's gen_hostop, argument for argument
    fn hostop(
        &mut self,
        addr: u32,
        mask: u32,
        dir: Option<Dir>,
        ll: u32,
        src_off: u32,
        dst_off: u32,
        span: Span,
    ) -> Result<Cond> {
        let off = match dir {
            Some(Dir::Src) => src_off,
            Some(Dir::Dst) => dst_off,
            Some(Dir::And) => {
                let b0 = self.hostop(addr, mask, Some(Dir::Src), ll, src_off, dst_off, span)?;
                let b1 = self.hostop(addr, mask, Some(Dir::Dst), ll, src_off, dst_off, span)?;
                return Ok(Cond::and(b0, b1));
            }
            None | Some(Dir::Or) => {
                let b0 = self.hostop(addr, mask, Some(Dir::Src), ll, src_off, dst_off, span)?;
                let b1 = self.hostop(addr, mask, Some(Dir::Dst), ll, src_off, dst_off, span)?;
                return Ok(Cond::or(b0, b1));
            }
        };
        let b0 = self.linktype(ll, span)?;
        let b1 = self.mcmp(Rel::Net, off, Size::W, addr, mask);
        Ok(Cond::and(b0, b1))
    }

    /// `gen_hostop6`.
    fn hostop6(
        &mut self,
        addr: [u32; 4],
        mask: [u32; 4],
        dir: Option<Dir>,
        span: Span,
    ) -> Result<Cond> {
        let off = match dir {
            Some(Dir::Src) => 8,
            Some(Dir::Dst) => 24,
            Some(Dir::And) | None | Some(Dir::Or) => {
                let b0 = self.hostop6(addr, mask, Some(Dir::Src), span)?;
                let b1 = self.hostop6(addr, mask, Some(Dir::Dst), span)?;
                return Ok(if dir == Some(Dir::And) {
                    Cond::and(b0, b1)
                } else {
                    Cond::or(b0, b1)
                });
            }
        };
        let lt = self.linktype(ETHERTYPE_IPV6, span)?;
        let mut c = lt;
        for i in 0..4 {
            let w = self.mcmp(Rel::Net, off + 4 * i as u32, Size::W, addr[i], mask[i]);
            c = Cond::and(c, w);
        }
        Ok(c)
    }

    /// `gen_host` (IPv4 addresses; `kind` is "host" or "net" for messages).
    fn host(
        &mut self,
        addr: u32,
        mask: u32,
        proto: Option<Proto>,
        dir: Option<Dir>,
        kind: &str,
        span: Span,
    ) -> Result<Cond> {
        match proto {
            None => {
                let b0 = self.host(addr, mask, Some(Proto::Ip), dir, kind, span)?;
                if self.label_stack_depth == 0 {
                    let b1 = self.host(addr, mask, Some(Proto::Arp), dir, kind, span)?;
                    let b2 = self.host(addr, mask, Some(Proto::Rarp), dir, kind, span)?;
                    Ok(Cond::or(Cond::or(b0, b1), b2))
                } else {
                    Ok(b0)
                }
            }
            Some(Proto::Link) => semantic(span, format!("link-layer modifier applied to {kind}")),
            Some(Proto::Ip) => self.hostop(addr, mask, dir, ETHERTYPE_IP, 12, 16, span),
            Some(Proto::Rarp) => self.hostop(addr, mask, dir, ETHERTYPE_REVARP, 14, 24, span),
            Some(Proto::Arp) => self.hostop(addr, mask, dir, ETHERTYPE_ARP, 14, 24, span),
            Some(Proto::Ip6) => semantic(span, format!("'ip6' modifier applied to ip {kind}")),
            Some(p) => semantic(span, format!("'{}' modifier applied to {kind}", p.name())),
        }
    }

    /// `gen_host6`.
    fn host6(
        &mut self,
        addr: [u32; 4],
        mask: [u32; 4],
        proto: Option<Proto>,
        dir: Option<Dir>,
        kind: &str,
        span: Span,
    ) -> Result<Cond> {
        match proto {
            None | Some(Proto::Ip6) => self.hostop6(addr, mask, dir, span),
            Some(Proto::Link) => {
                semantic(span, format!("link-layer modifier applied to ip6 {kind}"))
            }
            Some(Proto::Ip) => semantic(span, format!("'ip' modifier applied to ip6 {kind}")),
            Some(p) => semantic(
                span,
                format!("'{}' modifier applied to ip6 {kind}", p.name()),
            ),
        }
    }

    /// `gen_portatom` / `gen_portrangeatom` (and the IPv6 variants).
    fn port_atom(&mut self, ipv: Ipv, off: u32, lo: u32, hi: Option<u32>) -> Cond {
        match hi {
            None => self.tran_ncmp(ipv, off, Cmp::Eq, false, lo),
            Some(hi) => {
                let (lo, hi) = if lo > hi { (hi, lo) } else { (lo, hi) };
                let b1 = self.tran_ncmp(ipv, off, Cmp::Ge, false, lo);
                let b2 = self.tran_ncmp(ipv, off, Cmp::Gt, true, hi);
                Cond::and(b1, b2)
            }
        }
    }

    /// `gen_portop` / `gen_portrangeop` and their IPv6 forms.
    fn portop(&mut self, ipv: Ipv, lo: u32, hi: Option<u32>, proto: u32, dir: Option<Dir>) -> Cond {
        let b0 = match ipv {
            Ipv::V4 => {
                let tmp = self.cmp(Rel::Net, 9, Size::B, proto);
                let frag = self.ipfrag();
                Cond::and(tmp, frag)
            }
            Ipv::V6 => self.cmp(Rel::Net, 6, Size::B, proto),
        };
        let b1 = match dir {
            Some(Dir::Src) => self.port_atom(ipv, 0, lo, hi),
            Some(Dir::Dst) => self.port_atom(ipv, 2, lo, hi),
            Some(Dir::And) => {
                let s = self.port_atom(ipv, 0, lo, hi);
                let d = self.port_atom(ipv, 2, lo, hi);
                Cond::and(s, d)
            }
            None | Some(Dir::Or) => {
                let s = self.port_atom(ipv, 0, lo, hi);
                let d = self.port_atom(ipv, 2, lo, hi);
                Cond::or(s, d)
            }
        };
        Cond::and(b0, b1)
    }

    /// `gen_port` / `gen_portrange` (and the IPv6 forms): `proto` 0 means tcp, udp or sctp.
    fn port(
        &mut self,
        ipv: Ipv,
        lo: u32,
        hi: Option<u32>,
        proto: u32,
        dir: Option<Dir>,
        span: Span,
    ) -> Result<Cond> {
        let ll = if ipv == Ipv::V4 {
            ETHERTYPE_IP
        } else {
            ETHERTYPE_IPV6
        };
        let b0 = self.linktype(ll, span)?;
        let b1 = if proto == 0 {
            let tcp = self.portop(ipv, lo, hi, IPPROTO_TCP, dir);
            let udp = self.portop(ipv, lo, hi, IPPROTO_UDP, dir);
            let sctp = self.portop(ipv, lo, hi, IPPROTO_SCTP, dir);
            Cond::or(sctp, Cond::or(tcp, udp))
        } else {
            self.portop(ipv, lo, hi, proto, dir)
        };
        Ok(Cond::and(b0, b1))
    }

    fn port_both(
        &mut self,
        lo: u32,
        hi: Option<u32>,
        proto: Option<Proto>,
        dir: Option<Dir>,
        span: Span,
    ) -> Result<Cond> {
        let what = if hi.is_some() { "portrange" } else { "port" };
        let p = match proto {
            Some(Proto::Udp) => IPPROTO_UDP,
            Some(Proto::Tcp) => IPPROTO_TCP,
            Some(Proto::Sctp) => IPPROTO_SCTP,
            None => 0,
            Some(_) => return semantic(span, format!("illegal qualifier of '{what}'")),
        };
        for v in [Some(lo), hi].into_iter().flatten() {
            if v > 65535 {
                return semantic(span, format!("illegal port number {v} > 65535"));
            }
        }
        // libpcap: gen_or(gen_port6(...), gen_port(...)): IPv6 is tested first.
        let v6 = self.port(Ipv::V6, lo, hi, p, dir, span)?;
        let v4 = self.port(Ipv::V4, lo, hi, p, dir, span)?;
        Ok(Cond::or(v6, v4))
    }

    /// `gen_broadcast`.
    fn broadcast(&mut self, proto: Option<Proto>, span: Span) -> Result<Cond> {
        match proto {
            None | Some(Proto::Link) => Ok(self.ehostop(&[0xff; 6], Some(Dir::Dst))),
            Some(Proto::Ip) => semantic(span, "netmask not known, so 'ip broadcast' not supported"),
            Some(_) => semantic(span, "only link-layer/IP broadcast filters supported"),
        }
    }

    /// `gen_multicast`.
    fn multicast(&mut self, proto: Option<Proto>, span: Span) -> Result<Cond> {
        match proto {
            None | Some(Proto::Link) => {
                Ok(self.ncmp(Rel::LinkHdr, 0, Size::B, 0xffff_ffff, Cmp::Set, false, 1))
            }
            Some(Proto::Ip) => {
                let b0 = self.linktype(ETHERTYPE_IP, span)?;
                let b1 = self.cmp_ge(Rel::Net, 16, Size::B, 224);
                Ok(Cond::and(b0, b1))
            }
            Some(Proto::Ip6) => {
                let b0 = self.linktype(ETHERTYPE_IPV6, span)?;
                let b1 = self.cmp(Rel::Net, 24, Size::B, 255);
                Ok(Cond::and(b0, b1))
            }
            Some(_) => semantic(
                span,
                "link-layer multicast filters supported only on ethernet/FDDI/token ring/ARCNET/802.11/ATM LANE/Fibre Channel",
            ),
        }
    }

    /// `gen_ehostop`.
    fn ehostop(&mut self, mac: &[u8; 6], dir: Option<Dir>) -> Cond {
        match dir {
            Some(Dir::Src) => self.bcmp(Rel::LinkHdr, 6, mac),
            Some(Dir::Dst) => self.bcmp(Rel::LinkHdr, 0, mac),
            Some(Dir::And) => {
                let s = self.bcmp(Rel::LinkHdr, 6, mac);
                let d = self.bcmp(Rel::LinkHdr, 0, mac);
                Cond::and(s, d)
            }
            None | Some(Dir::Or) => {
                let s = self.bcmp(Rel::LinkHdr, 6, mac);
                let d = self.bcmp(Rel::LinkHdr, 0, mac);
                Cond::or(s, d)
            }
        }
    }

    /// `gen_vlan` without the Linux BPF extensions (they do not apply to offline captures).
    fn vlan(&mut self, num: Option<u32>, span: Span) -> Result<Cond> {
        if self.label_stack_depth > 0 {
            return semantic(span, "no VLAN match after MPLS");
        }
        let q = self.ether_linktype(ETHERTYPE_8021Q);
        let ad = self.ether_linktype(ETHERTYPE_8021AD);
        let qinq = self.ether_linktype(ETHERTYPE_8021QINQ);
        let mut b0 = Cond::or(Cond::or(q, ad), qinq);
        if let Some(n) = num {
            if n > 0x0fff {
                return semantic(span, format!("VLAN tag {n} greater than maximum 4095"));
            }
            let b1 = self.mcmp(Rel::LinkPl, 0, Size::H, n, 0x0fff);
            b0 = Cond::and(b0, b1);
        }
        self.off_linkpl.k = self.off_linkpl.k.wrapping_add(4);
        self.off_linktype.k = self.off_linktype.k.wrapping_add(4);
        Ok(b0)
    }

    /// `gen_mpls`.
    fn mpls(&mut self, num: Option<u32>, span: Span) -> Result<Cond> {
        let mut b0 = if self.label_stack_depth > 0 {
            // Previous label: bottom-of-stack bit clear.
            let off = self.off_nl.wrapping_sub(4).wrapping_add(2);
            self.mcmp(Rel::LinkPl, off, Size::B, 0, 0x01)
        } else {
            self.linktype(ETHERTYPE_MPLS, span)?
        };
        if let Some(n) = num {
            if n > 0xfffff {
                return semantic(span, format!("MPLS label {n} greater than maximum 1048575"));
            }
            let b1 = self.mcmp(Rel::Net, 0, Size::W, n << 12, 0xffff_f000);
            b0 = Cond::and(b0, b1);
        }
        self.off_nl = self.off_nl.wrapping_add(4);
        self.label_stack_depth += 1;
        Ok(b0)
    }

    /// `gen_protochain`: the unrolled walk over IPv6 extension headers and AH.
    fn protochain(&mut self, v: u32, proto: Option<Proto>, span: Span) -> Result<Cond> {
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
    fn geneve(&mut self, vni: Option<u32>, span: Span) -> Result<Cond> {
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
        self.off_linktype = Off {
            var: Some(offsets.linktype),
            k: 0,
        };
        self.off_linkhdr = Off {
            var: Some(offsets.linkhdr),
            k: 0,
        };
        self.off_linkpl = Off {
            var: Some(offsets.linkpl),
            k: 0,
        };
        self.off_nl = 0;
        // libpcap: "We have a bare jmp so we can't use the optimizer."
        self.libpcap.optimizer_off = true;
        Ok(Cond::and(Cond::or(b0, b1), Cond::Frag(Box::new(offsets))))
    }

    /// Generates the condition for a whole expression (the entry point: sizes the
    /// `protochain` unrolling for the whole expression first).
    pub fn generate(&mut self, e: &Expr) -> Result<Cond> {
        let (v4, v6) = count_protochains(e);
        self.chain_steps_v4 = (PROTOCHAIN_BUDGET_V4 / v4.max(1)).clamp(1, PROTOCHAIN_MAX_AH_V4);
        self.chain_steps_v6 =
            (PROTOCHAIN_BUDGET_V6 / v6.max(1)).clamp(1, PROTOCHAIN_MAX_HEADERS_V6);
        self.expr(e)
    }

    /// Generates the condition for an expression.
    pub fn expr(&mut self, e: &Expr) -> Result<Cond> {
        match e {
            Expr::Chain(first, rest) => {
                let first = self.expr(first)?;
                let mut out = Vec::with_capacity(rest.len());
                for (op, e) in rest {
                    let c = self.expr(e)?;
                    out.push((
                        match op {
                            BoolOp::And => ChainOp::And,
                            BoolOp::Or => ChainOp::Or,
                        },
                        c,
                    ));
                }
                Ok(Cond::Chain(Box::new(first), out))
            }
            Expr::Not(inner) => Ok(Cond::negate(self.expr(inner)?)),
            Expr::Empty => Ok(Cond::True),
            Expr::Prim(p, span) => self.primitive(p, *span),
            Expr::Rel(op, a0, a1, _) => self.relation(*op, a0, a1),
        }
    }

    fn primitive(&mut self, p: &Primitive, span: Span) -> Result<Cond> {
        match p {
            Primitive::ProtoAbbrev(p) => self.proto_abbrev(*p, span),
            Primitive::Broadcast(p) => self.broadcast(*p, span),
            Primitive::Multicast(p) => self.multicast(*p, span),
            Primitive::Less(n) => Ok(self.len_cmp(Cmp::Gt, true, *n)),
            Primitive::Greater(n) => Ok(self.len_cmp(Cmp::Ge, false, *n)),
            Primitive::Vlan(n) => self.vlan(*n, span),
            Primitive::Mpls(n) => self.mpls(*n, span),
            Primitive::Geneve(vni) => self.geneve(*vni, span),
            Primitive::Qualified(q, v) => self.qualified(*q, v, span),
        }
    }

    fn len_cmp(&mut self, cmp: Cmp, reverse: bool, n: u32) -> Cond {
        let a = self.temp();
        let t = Cond::Test(Test {
            stmts: vec![Stmt::Len { dst: a }],
            cmp,
            a,
            b: Operand::K(n),
        });
        if reverse {
            Cond::negate(t)
        } else {
            t
        }
    }

    /// `gen_ncode`, `gen_scode`, `gen_mcode`, `gen_mcode6`, `gen_ecode`.
    fn qualified(&mut self, q: Quals, v: &IdValue, span: Span) -> Result<Cond> {
        let addr = q.addr;
        match v {
            IdValue::Num(n) => self.ncode(None, *n, q, span),
            IdValue::Ipv4(s) => {
                if q.proto == Some(Proto::Link) {
                    return semantic(span, "illegal link layer address");
                }
                let n = parse_ipv4(s)
                    .ok_or(())
                    .or_else(|_| semantic(span, format!("invalid IPv4 address '{s}'")))?;
                match addr {
                    None | Some(AddrKind::Host) | Some(AddrKind::Net) => {
                        self.ncode(Some(n), 0, q, span)
                    }
                    Some(a) => semantic(
                        span,
                        format!("'{}' modifier applied to ip host", addr_name(a)),
                    ),
                }
            }
            IdValue::Ipv4Prefix(s, len, len_span) => {
                let (n, nlen) = parse_ipv4(s)
                    .ok_or(())
                    .or_else(|_| semantic(span, format!("invalid IPv4 address '{s}'")))?;
                let n = shl(n, 32 - nlen);
                if *len > 32 {
                    return semantic(*len_span, "mask length must be <= 32");
                }
                let m = if *len == 0 {
                    0
                } else {
                    0xffff_ffffu32 << (32 - len)
                };
                if n & !m != 0 {
                    return semantic(span, format!("non-network bits set in \"{s}/{len}\""));
                }
                self.mcode(n, m, q, span)
            }
            IdValue::Ipv4Mask(s, ms, mask_span) => {
                let (n, nlen) = parse_ipv4(s)
                    .ok_or(())
                    .or_else(|_| semantic(span, format!("invalid IPv4 address '{s}'")))?;
                let (m, mlen) = parse_ipv4(ms)
                    .ok_or(())
                    .or_else(|_| semantic(*mask_span, format!("invalid IPv4 address '{ms}'")))?;
                let n = shl(n, 32 - nlen);
                let m = shl(m, 32 - mlen);
                if n & !m != 0 {
                    return semantic(span, format!("non-network bits set in \"{s} mask {ms}\""));
                }
                self.mcode(n, m, q, span)
            }
            IdValue::Ipv6(a, len) => {
                let (masklen, len_span) = len.unwrap_or((128, span));
                if masklen > 128 {
                    return semantic(len_span, "mask length must be <= 128");
                }
                let addr = words6(a);
                let mut mask = [0u32; 4];
                for (i, m) in mask.iter_mut().enumerate() {
                    let bits = masklen.saturating_sub(32 * i as u32).min(32);
                    *m = if bits == 0 {
                        0
                    } else {
                        0xffff_ffffu32 << (32 - bits)
                    };
                }
                if addr.iter().zip(mask).any(|(a, m)| a & !m != 0) {
                    return semantic(span, "non-network bits set in IPv6 address");
                }
                match addr_kind_or_default(addr_kind_opt(q)) {
                    AddrKind::Host if len.is_some() => {
                        semantic(span, "Mask syntax for networks only")
                    }
                    AddrKind::Host | AddrKind::Net => {
                        let kind = if q.addr == Some(AddrKind::Net) {
                            "net"
                        } else {
                            "host"
                        };
                        self.host6(addr, mask, q.proto, q.dir, kind, span)
                    }
                    _ => semantic(span, "invalid qualifier against IPv6 address"),
                }
            }
            IdValue::Mac(m) => {
                if matches!(addr, None | Some(AddrKind::Host)) && q.proto == Some(Proto::Link) {
                    Ok(self.ehostop(m, q.dir))
                } else {
                    semantic(span, "ethernet address used in non-ether expression")
                }
            }
            IdValue::Name(name) => self.scode(name, q, span),
        }
    }

    /// `gen_mcode`: `net addr/len` and `net addr mask m`.
    fn mcode(&mut self, n: u32, m: u32, q: Quals, span: Span) -> Result<Cond> {
        match q.addr {
            Some(AddrKind::Net) => self.host(n, m, q.proto, q.dir, "net", span),
            _ => semantic(span, "Mask syntax for networks only"),
        }
    }

    /// `gen_ncode`: a number (or a dotted address when `dotted` is set: value and bit length).
    fn ncode(
        &mut self,
        dotted: Option<(u32, u32)>,
        num: u32,
        q: Quals,
        span: Span,
    ) -> Result<Cond> {
        let (mut v, vlen) = dotted.unwrap_or((num, 32));
        match q.addr {
            None | Some(AddrKind::Host) | Some(AddrKind::Net) => {
                if q.proto == Some(Proto::Link) {
                    return semantic(span, "illegal link layer address");
                }
                let mut mask = 0xffff_ffffu32;
                if dotted.is_none() && q.addr == Some(AddrKind::Net) {
                    // Promote a short net number: `net 10` is 10.0.0.0/8.
                    while v != 0 && v & 0xff00_0000 == 0 {
                        v <<= 8;
                        mask <<= 8;
                    }
                } else {
                    v = shl(v, 32 - vlen);
                    mask = shl(mask, 32 - vlen);
                }
                let kind = if q.addr == Some(AddrKind::Net) {
                    "net"
                } else {
                    "host"
                };
                self.host(v, mask, q.proto, q.dir, kind, span)
            }
            Some(AddrKind::Port) => self.port_both(v, None, q.proto, q.dir, span),
            Some(AddrKind::Portrange) => self.port_both(v, Some(v), q.proto, q.dir, span),
            Some(AddrKind::Gateway) => semantic(span, "'gateway' requires a name"),
            Some(AddrKind::Proto) => self.proto(v, q.proto, q.dir, span),
            Some(AddrKind::Protochain) => self.protochain(v, q.proto, span),
        }
    }

    /// `gen_scode`: a name. Host and service names need a resolver, which netmux does not use.
    fn scode(&mut self, name: &str, q: Quals, span: Span) -> Result<Cond> {
        match q.addr {
            Some(AddrKind::Proto) | Some(AddrKind::Protochain) => {
                let v =
                    match q.proto {
                        None | Some(Proto::Ip) | Some(Proto::Ip6) => ip_proto_by_name(name)
                            .ok_or(())
                            .or_else(|_| semantic(span, format!("unknown ip proto '{name}'")))?,
                        Some(Proto::Link) => ether_proto_by_name(name)
                            .ok_or(())
                            .or_else(|_| semantic(span, format!("unknown ether proto '{name}'")))?,
                        Some(p) => {
                            return semantic(
                                span,
                                format!("unknown protocol: {name} (for {})", p.name()),
                            )
                        }
                    };
                if q.addr == Some(AddrKind::Proto) {
                    self.proto(v, q.proto, q.dir, span)
                } else {
                    self.protochain(v, q.proto, span)
                }
            }
            Some(AddrKind::Portrange) => {
                let (lo, hi) = parse_port_range(name).ok_or(()).or_else(|_| {
                    unsupported(
                        span,
                        format!("`{name}` is not a port range; service names are not supported, use numbers like 6000-6010"),
                    )
                })?;
                self.port_both(lo, Some(hi), q.proto, q.dir, span)
            }
            Some(AddrKind::Port) => unsupported(
                span,
                format!("service names are not supported; use a port number instead of `{name}`"),
            ),
            Some(AddrKind::Gateway) => unsupported(
                span,
                "`gateway` needs host name resolution, which netmux does not support",
            ),
            None | Some(AddrKind::Host) | Some(AddrKind::Net) => {
                if crate::lexer::UNSUPPORTED_KEYWORDS.contains(&name) {
                    return unsupported(span, format!("`{name}` is not supported by netmux"));
                }
                unsupported(
                    span,
                    format!(
                        "host names are not supported; use a numeric address instead of `{name}`"
                    ),
                )
            }
        }
    }

    /// `gen_relation`: protocol checks of both sides first, then both computations, then the
    /// comparison.
    fn relation(&mut self, op: RelOp, a0: &Arith, a1: &Arith) -> Result<Cond> {
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

fn shl(v: u32, n: u32) -> u32 {
    if n >= 32 {
        0
    } else {
        v << n
    }
}

fn addr_name(a: AddrKind) -> &'static str {
    match a {
        AddrKind::Host => "host",
        AddrKind::Net => "net",
        AddrKind::Port => "port",
        AddrKind::Portrange => "portrange",
        AddrKind::Proto => "proto",
        AddrKind::Protochain => "protochain",
        AddrKind::Gateway => "gateway",
    }
}

fn addr_kind_opt(q: Quals) -> Option<AddrKind> {
    q.addr
}

fn addr_kind_or_default(a: Option<AddrKind>) -> AddrKind {
    a.unwrap_or(AddrKind::Host)
}

/// libpcap's `__pcap_atoin`: dotted decimal, 1 to 4 parts, each at most 255; returns the value
/// and its length in bits.
pub(crate) fn parse_ipv4(s: &str) -> Option<(u32, u32)> {
    let mut v = 0u32;
    let mut bits = 0;
    for part in s.split('.') {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = part.parse().ok()?;
        if n > 255 || bits >= 32 {
            return None;
        }
        v = (v << 8) | n;
        bits += 8;
    }
    Some((v, bits))
}

fn words6(a: &Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    let mut w = [0u32; 4];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
    }
    w
}

fn parse_port_range(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let parse = |t: &str| -> Option<u32> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    Some((parse(a)?, parse(b)?))
}

/// IP protocol names (the common entries of `/etc/protocols`, which libpcap consults).
fn ip_proto_by_name(name: &str) -> Option<u32> {
    Some(match name {
        "ip" | "hopopt" => 0,
        "icmp" => 1,
        "igmp" => 2,
        "ggp" => 3,
        "ipencap" => 4,
        "st" => 5,
        "tcp" => 6,
        "egp" => 8,
        "igp" => 9,
        "pup" => 12,
        "udp" => 17,
        "hmp" => 20,
        "xns-idp" => 22,
        "rdp" => 27,
        "iso-tp4" => 29,
        "dccp" => 33,
        "xtp" => 36,
        "ddp" => 37,
        "idpr-cmtp" => 38,
        "ipv6" => 41,
        "ipv6-route" => 43,
        "ipv6-frag" => 44,
        "idrp" => 45,
        "rsvp" => 46,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "skip" => 57,
        "ipv6-icmp" => 58,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "rspf" => 73,
        "vmtp" => 81,
        "eigrp" => 88,
        "ospf" => 89,
        "ax.25" => 93,
        "ipip" => 94,
        "etherip" => 97,
        "encap" => 98,
        "pim" => 103,
        "ipcomp" => 108,
        "vrrp" => 112,
        "l2tp" => 115,
        "isis" => 124,
        "sctp" => 132,
        "fc" => 133,
        "mobility-header" => 135,
        "udplite" => 136,
        "mpls-in-ip" => 137,
        "manet" => 138,
        "hip" => 139,
        "shim6" => 140,
        "wesp" => 141,
        "rohc" => 142,
        "ethernet" => 143,
        _ => return None,
    })
}

/// libpcap's `pcap_nametoeproto` and `pcap_nametollc` tables.
fn ether_proto_by_name(name: &str) -> Option<u32> {
    Some(match name {
        "ip" => ETHERTYPE_IP,
        "ip6" => ETHERTYPE_IPV6,
        "arp" => ETHERTYPE_ARP,
        "rarp" => ETHERTYPE_REVARP,
        "atalk" => ETHERTYPE_ATALK,
        "aarp" => ETHERTYPE_AARP,
        "decnet" => 0x6003,
        "sca" => 0x6007,
        "lat" => 0x6004,
        "moprc" => 0x6002,
        "mopdl" => 0x6001,
        "loopback" => 0x9000,
        "pup" => 0x0200,
        "sprite" => 0x0500,
        "iso" => LLCSAP_ISONS,
        "stp" => LLCSAP_8021D,
        "ipx" => LLCSAP_IPX,
        "netbeui" => LLCSAP_NETBEUI,
        _ => return None,
    })
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
