//! The network layer: protocol tests (`gen_proto`, `gen_proto_abbrev`), IPv4 and IPv6
//! addresses (`gen_host`, `gen_hostop`, `gen_host6`, `gen_hostop6`), fragments (`gen_ipfrag`)
//! and the IPv4 header length the transport layer is found by.

use super::{
    Gen, Rel, ETHERTYPE_ARP, ETHERTYPE_IP, ETHERTYPE_IPV6, ETHERTYPE_REVARP, IPPROTO_AH,
    IPPROTO_CARP, IPPROTO_ESP, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IGMP,
    IPPROTO_IGRP, IPPROTO_PIM, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_VRRP, LLCSAP_8021D,
    LLCSAP_IPX, LLCSAP_ISONS, LLCSAP_NETBEUI,
};
use crate::ast::*;
use crate::error::{semantic, unsupported, Result, Span};
use crate::ir::*;

impl Gen<'_> {
    /// `gen_ipfrag`: not a fragment other than the first.
    pub(super) fn ipfrag(&mut self) -> Cond {
        let t = self.ncmp(Rel::Net, 6, Size::H, 0xffff_ffff, Cmp::Set, false, 0x1fff);
        Cond::negate(t)
    }

    /// The statements that put the IPv4 header length (`4 * (ip[0] & 0xf)`) in a new temp.
    pub(super) fn iphdrlen(&mut self, stmts: &mut Vec<Stmt>) -> Temp {
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

    /// `gen_proto` (the `proto` qualifier).
    pub(super) fn proto(
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
    pub(super) fn proto_abbrev(&mut self, p: Proto, span: Span) -> Result<Cond> {
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
    pub(super) fn host(
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
    pub(super) fn host6(
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
}
