//! A qualified value (`host 10.0.0.1`, `net 10/8`, `port 53`, `proto tcp`) to the layer
//! function its qualifiers name: `gen_ncode` (numbers and dotted addresses), `gen_mcode`
//! (networks with a mask), `gen_scode` (names), and the IPv6 and MAC forms.

use super::names::{ether_proto_by_name, ip_proto_by_name, parse_ipv4, parse_port_range};
use super::Gen;
use crate::ast::*;
use crate::error::{semantic, unsupported, Result, Span};
use crate::ir::*;
use std::net::Ipv6Addr;

impl Gen {
    /// `gen_ncode`, `gen_scode`, `gen_mcode`, `gen_mcode6`, `gen_ecode`.
    pub(super) fn qualified(&mut self, q: Quals, v: &IdValue, span: Span) -> Result<Cond> {
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
