//! The link layer: the link-type tests of each link layer (`gen_linktype`: Ethernet type and
//! LLC/SNAP, Linux cooked headers, raw IP's version nibble), MAC addresses (`gen_ehostop`),
//! broadcast and multicast, and the VLAN and MPLS tags, which move the offsets of everything
//! parsed after them (`gen_vlan`, `gen_mpls`).

use super::{
    Gen, LinkType, Rel, ETHERMTU, ETHERTYPE_8021AD, ETHERTYPE_8021Q, ETHERTYPE_8021QINQ,
    ETHERTYPE_AARP, ETHERTYPE_ATALK, ETHERTYPE_IP, ETHERTYPE_IPV6, ETHERTYPE_IPX, ETHERTYPE_MPLS,
    LINUX_SLL_P_802_2, LINUX_SLL_P_802_3, LLCSAP_IP, LLCSAP_IPX, LLCSAP_ISONS, LLCSAP_NETBEUI,
    PPP_IP, PPP_IPV6,
};
use crate::ast::*;
use crate::error::{semantic, Result, Span};
use crate::ir::*;

impl Gen<'_> {
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

    /// `gen_linux_sll_linktype`: the cooked header's protocol field, with 802.2 and 802.3
    /// frames told apart by the pseudo-protocols `LINUX_SLL_P_802_2` and `_802_3`.
    fn sll_linktype(&mut self, p: u32) -> Cond {
        match p {
            LLCSAP_ISONS | LLCSAP_IP | LLCSAP_NETBEUI => {
                let b0 = self.cmp(Rel::LinkType, 0, Size::H, LINUX_SLL_P_802_2);
                let b1 = self.cmp(Rel::LinkPl, 0, Size::H, (p << 8) | p);
                Cond::and(b0, b1)
            }
            LLCSAP_IPX => {
                let ty = self.cmp(Rel::LinkType, 0, Size::H, ETHERTYPE_IPX);
                let p8023 = self.cmp(Rel::LinkType, 0, Size::H, LINUX_SLL_P_802_3);
                let p8022 = self.cmp(Rel::LinkType, 0, Size::H, LINUX_SLL_P_802_2);
                let sap = self.cmp(Rel::LinkPl, 0, Size::B, LLCSAP_IPX);
                let snap = self.snap(0, ETHERTYPE_IPX);
                let llc = Cond::and(p8022, Cond::or(sap, snap));
                Cond::or(ty, Cond::or(p8023, llc))
            }
            ETHERTYPE_ATALK | ETHERTYPE_AARP => {
                let ty = self.cmp(Rel::LinkType, 0, Size::H, p);
                let p8022 = self.cmp(Rel::LinkType, 0, Size::H, LINUX_SLL_P_802_2);
                let snap = if p == ETHERTYPE_ATALK {
                    self.snap(0x080007, ETHERTYPE_ATALK)
                } else {
                    self.snap(0, ETHERTYPE_AARP)
                };
                Cond::or(ty, Cond::and(p8022, snap))
            }
            p if p <= ETHERMTU => {
                let b0 = self.cmp(Rel::LinkType, 0, Size::H, LINUX_SLL_P_802_2);
                // libpcap: OR_LINKHDR at the payload's constant offset.
                let at = self.off_linkpl.k;
                let b1 = self.cmp(Rel::LinkHdr, at, Size::B, p);
                Cond::and(b0, b1)
            }
            p => self.cmp(Rel::LinkType, 0, Size::H, p),
        }
    }

    /// `gen_linktype`: the test that the link layer carries protocol `p` (an Ethernet type or
    /// an LLC SAP), including the MPLS bottom-of-stack form.
    pub(super) fn linktype(&mut self, p: u32, span: Span) -> Result<Cond> {
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
        Ok(match self.link() {
            LinkType::Ethernet => self.ether_linktype(p),
            LinkType::LinuxSll => self.sll_linktype(p),
            // The cooked v2 header has a plain Ethernet type field.
            LinkType::LinuxSll2 => self.cmp(Rel::LinkType, 0, Size::H, p),
            LinkType::Raw => match p {
                ETHERTYPE_IP => self.mcmp(Rel::LinkHdr, 0, Size::B, 0x40, 0xf0),
                ETHERTYPE_IPV6 => self.mcmp(Rel::LinkHdr, 0, Size::B, 0x60, 0xf0),
                _ => self.never(),
            },
            LinkType::Ipv4 if p == ETHERTYPE_IP => Cond::True,
            LinkType::Ipv6 if p == ETHERTYPE_IPV6 => Cond::True,
            LinkType::Ipv4 | LinkType::Ipv6 => self.never(),
        })
    }

    /// `gen_broadcast`.
    pub(super) fn broadcast(&mut self, proto: Option<Proto>, span: Span) -> Result<Cond> {
        match proto {
            None | Some(Proto::Link) if self.link() != LinkType::Ethernet => {
                semantic(span, "not a broadcast link")
            }
            None | Some(Proto::Link) => Ok(self.ehostop(&[0xff; 6], Some(Dir::Dst))),
            Some(Proto::Ip) => semantic(span, "netmask not known, so 'ip broadcast' not supported"),
            Some(_) => semantic(span, "only link-layer/IP broadcast filters supported"),
        }
    }

    /// `gen_multicast`.
    pub(super) fn multicast(&mut self, proto: Option<Proto>, span: Span) -> Result<Cond> {
        match proto {
            None | Some(Proto::Link) if self.link() == LinkType::Ethernet => {
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
            _ => semantic(
                span,
                "link-layer multicast filters supported only on ethernet/FDDI/token ring/ARCNET/802.11/ATM LANE/Fibre Channel",
            ),
        }
    }

    /// `gen_ehostop`.
    pub(super) fn ehostop(&mut self, mac: &[u8; 6], dir: Option<Dir>) -> Cond {
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
    pub(super) fn vlan(&mut self, num: Option<u32>, span: Span) -> Result<Cond> {
        if self.label_stack_depth > 0 {
            return semantic(span, "no VLAN match after MPLS");
        }
        if self.link() != LinkType::Ethernet {
            return semantic(
                span,
                format!("no VLAN support for {}", self.link().description()),
            );
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
        if let Some(t) = &mut self.off_linktype {
            t.k = t.k.wrapping_add(4);
        }
        Ok(b0)
    }

    /// `gen_mpls`.
    pub(super) fn mpls(&mut self, num: Option<u32>, span: Span) -> Result<Cond> {
        let mut b0 = if self.label_stack_depth > 0 {
            // Previous label: bottom-of-stack bit clear.
            let off = self.off_nl.wrapping_sub(4).wrapping_add(2);
            self.mcmp(Rel::LinkPl, off, Size::B, 0, 0x01)
        } else if self.link() == LinkType::Ethernet {
            self.linktype(ETHERTYPE_MPLS, span)?
        } else {
            return semantic(
                span,
                format!("no MPLS support for {}", self.link().description()),
            );
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
}
