//! The transport layer: fields after the IPv4 or IPv6 header (`OR_TRAN_IPV4`,
//! `OR_TRAN_IPV6`), and ports and port ranges (`gen_port`, `gen_portop`, `gen_portatom` and
//! their range and IPv6 forms).

use super::{Gen, Ipv, Rel, ETHERTYPE_IP, ETHERTYPE_IPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use crate::ast::*;
use crate::error::{semantic, Result, Span};
use crate::ir::*;

impl Gen<'_> {
    /// A comparison of a field at `off` in the transport header after IPv4 (`OR_TRAN_IPV4`).
    fn tran4_ncmp(&mut self, off: u32, size: Size, cmp: Cmp, reverse: bool, v: u32) -> Cond {
        self.tran4_mcmp(off, size, 0xffff_ffff, cmp, reverse, v)
    }

    pub(super) fn tran4_mcmp(
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
    pub(super) fn port(
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

    pub(super) fn port_both(
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
        self.ports(lo, hi, p, dir, span)
    }

    /// A port or port range over IPv6 and IPv4 for IP protocol `p` (0: tcp, udp or sctp).
    pub(super) fn ports(
        &mut self,
        lo: u32,
        hi: Option<u32>,
        p: u32,
        dir: Option<Dir>,
        span: Span,
    ) -> Result<Cond> {
        // libpcap: gen_or(gen_port6(...), gen_port(...)): IPv6 is tested first.
        let v6 = self.port(Ipv::V6, lo, hi, p, dir, span)?;
        let v4 = self.port(Ipv::V4, lo, hi, p, dir, span)?;
        Ok(Cond::or(v6, v4))
    }
}
