//! A qualified value (`host 10.0.0.1`, `net 10/8`, `port 53`, `proto tcp`) to the layer
//! function its qualifiers name: `gen_ncode` (numbers and dotted addresses), `gen_mcode`
//! (networks with a mask), `gen_scode` (names, looked up as libpcap looks them up), and the
//! IPv6 and MAC forms.

use super::names::{ether_proto_by_name, nametoport, nametoportrange, parse_ipv4};
use super::{Gen, LinkType, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use crate::ast::*;
use crate::error::{semantic, unsupported, Result, Span};
use crate::ir::*;
use std::net::{IpAddr, Ipv6Addr};

/// ISO network-layer protocol ids `iso proto` takes by name (`lookup_proto`).
const ISO8473_CLNP: u32 = 0x81;
const ISO9542_ESIS: u32 = 0x82;
const ISO10589_ISIS: u32 = 0x83;

impl Gen<'_> {
    /// `gen_ncode`, `gen_scode`, `gen_mcode`, `gen_mcode6`, `gen_ecode`.
    pub(super) fn qualified(&mut self, q: Quals, v: &IdValue, span: Span) -> Result<Cond> {
        let addr = q.addr;
        match v {
            IdValue::Num(n) => self.ncode(None, *n, q, span),
            IdValue::Ipv4(s) => {
                // The grammar refuses these before `gen_ncode` sees the address.
                if let Some(
                    a @ (AddrKind::Port
                    | AddrKind::Portrange
                    | AddrKind::Proto
                    | AddrKind::Protochain),
                ) = addr
                {
                    return semantic(
                        span,
                        format!("'{}' modifier applied to ip host", addr_name(a)),
                    );
                }
                let n = parse_ipv4(s)
                    .ok_or(())
                    .or_else(|_| semantic(span, format!("invalid IPv4 address '{s}'")))?;
                self.ncode(Some(n), 0, q, span)
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
                if !(matches!(addr, None | Some(AddrKind::Host)) && q.proto == Some(Proto::Link)) {
                    semantic(span, "ethernet address used in non-ether expression")
                } else if self.link() != LinkType::Ethernet {
                    semantic(
                        span,
                        "ethernet addresses supported only on ethernet/FDDI/token ring/802.11/ATM LANE/Fibre Channel",
                    )
                } else {
                    Ok(self.ehostop(m, q.dir))
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

    /// `gen_scode`: a name, looked up as libpcap looks it up (see [`crate::resolver`]), with
    /// libpcap's errors when it is unknown.
    fn scode(&mut self, name: &str, q: Quals, span: Span) -> Result<Cond> {
        let names = self.config().names;
        match q.addr {
            Some(AddrKind::Net) => {
                let mut addr = names.network(name).unwrap_or(0);
                if addr == 0 {
                    return semantic(span, format!("unknown network '{name}'"));
                }
                // Left-justify the network number and make its mask.
                let mut mask = 0xffff_ffffu32;
                while addr != 0 && addr & 0xff00_0000 == 0 {
                    addr <<= 8;
                    mask <<= 8;
                }
                self.resolved("net", name, net_text(addr, mask));
                self.host(addr, mask, q.proto, q.dir, "net", span)
            }
            None | Some(AddrKind::Host) if q.proto == Some(Proto::Link) => {
                if self.link() != LinkType::Ethernet {
                    return semantic(
                        span,
                        "only ethernet/FDDI/token ring/802.11/ATM LANE/Fibre Channel supports link-level host name",
                    );
                }
                let Some(mac) = names.ether(name) else {
                    return semantic(span, format!("unknown ether host '{name}'"));
                };
                self.resolved("ether host", name, crate::builders::mac_text(&mac));
                Ok(self.ehostop(&mac, q.dir))
            }
            None | Some(AddrKind::Host) => {
                if crate::lexer::UNSUPPORTED_KEYWORDS.contains(&name) {
                    return unsupported(span, format!("`{name}` is not supported by netmux"));
                }
                let addrs = names.host(name);
                if addrs.is_empty() {
                    return semantic(span, format!("unknown host '{name}'"));
                }
                let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                self.resolved("host", name, shown.join(" "));
                // Without a link-type field (raw IP) an unqualified name's IPv4 addresses
                // are tested as `ip` and its IPv6 ones as `ip6`.
                let (tproto, tproto6) = if self.off_linktype.is_none() && q.proto.is_none() {
                    (Some(Proto::Ip), Some(Proto::Ip6))
                } else {
                    (q.proto, q.proto)
                };
                let mut b: Option<Cond> = None;
                for a in addrs {
                    let tmp = match a {
                        IpAddr::V4(_) if tproto == Some(Proto::Ip6) => continue,
                        IpAddr::V4(a) => {
                            self.host(u32::from(a), 0xffff_ffff, tproto, q.dir, "host", span)?
                        }
                        IpAddr::V6(_) if tproto6 == Some(Proto::Ip) => continue,
                        IpAddr::V6(a) => {
                            self.host6(words6(&a), [0xffff_ffff; 4], tproto6, q.dir, "host", span)?
                        }
                    };
                    b = Some(match b {
                        Some(b) => Cond::or(b, tmp),
                        None => tmp,
                    });
                }
                let family = if q.proto.is_some() {
                    " for specified address family"
                } else {
                    ""
                };
                b.ok_or(())
                    .or_else(|_| semantic(span, format!("unknown host '{name}'{family}")))
            }
            Some(AddrKind::Port) => {
                if !matches!(
                    q.proto,
                    None | Some(Proto::Udp) | Some(Proto::Tcp) | Some(Proto::Sctp)
                ) {
                    return semantic(span, "illegal qualifier of 'port'");
                }
                let Some((port, real)) = nametoport(names, name) else {
                    return semantic(span, format!("unknown port '{name}'"));
                };
                let real = transport_for(q.proto, real, |t| format!("port '{name}' is {t}"))
                    .or_else(|m| semantic(span, m))?;
                self.resolved("port", name, port_text(i64::from(port), None, real));
                self.ports(port, None, real, q.dir, span)
            }
            Some(AddrKind::Portrange) => {
                if !matches!(
                    q.proto,
                    None | Some(Proto::Udp) | Some(Proto::Tcp) | Some(Proto::Sctp)
                ) {
                    return semantic(span, "illegal qualifier of 'portrange'");
                }
                let Some((p1, p2, real)) = nametoportrange(names, name) else {
                    return semantic(span, format!("unknown port in range '{name}'"));
                };
                let real =
                    transport_for(q.proto, real, |t| format!("port in range '{name}' is {t}"))
                        .or_else(|m| semantic(span, m))?;
                for p in [p1, p2] {
                    if p < 0 {
                        return semantic(span, format!("illegal port number {p} < 0"));
                    }
                    if p > 65535 {
                        return semantic(span, format!("illegal port number {p} > 65535"));
                    }
                }
                self.resolved("portrange", name, port_text(p1, Some(p2), real));
                self.ports(p1 as u32, Some(p2 as u32), real, q.dir, span)
            }
            // libpcap built with IPv6 support (as every distribution builds it) refuses
            // `gateway` with any name.
            Some(AddrKind::Gateway) => {
                semantic(span, "'gateway' not supported in this configuration")
            }
            Some(AddrKind::Proto) | Some(AddrKind::Protochain) => {
                let v = match q.proto {
                    None | Some(Proto::Ip) | Some(Proto::Ip6) => names
                        .protocol(name)
                        .ok_or(())
                        .or_else(|_| semantic(span, format!("unknown ip proto '{name}'")))?,
                    Some(Proto::Link) => ether_proto_by_name(name)
                        .ok_or(())
                        .or_else(|_| semantic(span, format!("unknown ether proto '{name}'")))?,
                    Some(Proto::Iso) => match name {
                        "esis" => ISO9542_ESIS,
                        "isis" => ISO10589_ISIS,
                        "clnp" => ISO8473_CLNP,
                        _ => return semantic(span, format!("unknown osi proto '{name}'")),
                    },
                    Some(_) => return semantic(span, format!("unknown protocol: {name}")),
                };
                self.resolved("proto", name, v.to_string());
                if q.addr == Some(AddrKind::Proto) {
                    self.proto(v, q.proto, q.dir, span)
                } else {
                    self.protochain(v, q.proto, span)
                }
            }
        }
    }
}

/// The transport a named port is tested for, as `gen_scode` settles it: the protocol
/// qualifier's, refused when the name is only for another (`port 'http' is tcp`); without a
/// qualifier, the name's own (`None`: any of tcp, udp, sctp). The IP protocol number, 0 for
/// any.
fn transport_for(
    qual: Option<Proto>,
    real: Option<u32>,
    is: impl Fn(&str) -> String,
) -> std::result::Result<u32, String> {
    let want = match qual {
        Some(Proto::Udp) => IPPROTO_UDP,
        Some(Proto::Tcp) => IPPROTO_TCP,
        Some(Proto::Sctp) => IPPROTO_SCTP,
        _ => return Ok(real.unwrap_or(0)),
    };
    match real {
        Some(r) if r != want => Err(is(match r {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "sctp",
        })),
        _ => Ok(want),
    }
}

/// A port or port range as `netmux filter compile` shows what a name became: `80/tcp`.
fn port_text(lo: i64, hi: Option<i64>, proto: u32) -> String {
    let ports = match hi {
        Some(hi) => format!("{lo}-{hi}"),
        None => lo.to_string(),
    };
    match proto {
        IPPROTO_TCP => format!("{ports}/tcp"),
        IPPROTO_UDP => format!("{ports}/udp"),
        IPPROTO_SCTP => format!("{ports}/sctp"),
        _ => ports,
    }
}

/// A network and mask as dotted quads, with the prefix length when the mask is one.
fn net_text(addr: u32, mask: u32) -> String {
    let a = std::net::Ipv4Addr::from(addr);
    if mask == 0xffff_ffff {
        a.to_string()
    } else if mask.leading_ones() + mask.trailing_zeros() == 32 {
        format!("{a}/{}", mask.leading_ones())
    } else {
        format!("{a} mask {}", std::net::Ipv4Addr::from(mask))
    }
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

fn words6(a: &Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    let mut w = [0u32; 4];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
    }
    w
}
