//! The syntax tree of a pcap-filter expression, with byte spans.
//!
//! The parser resolves libpcap's qualifier inheritance (`host 1.2.3.4 or 5.6.7.8` gives the
//! second address the `host` qualifier), so every [`Primitive::Qualified`] carries its full
//! qualifiers. `and` and `or` have equal precedence and associate to the left, as in libpcap:
//! a boolean chain is kept as a first operand and a list of `(operator, operand)` pairs, which
//! also keeps long chains from nesting deeply.

use std::net::Ipv6Addr;

use crate::error::Span;

/// A boolean expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `first op1 e1 op2 e2 ...`, evaluated left to right with equal precedence.
    Chain(Box<Expr>, Vec<(BoolOp, Expr)>),
    /// `not e`.
    Not(Box<Expr>),
    /// A primitive.
    Prim(Primitive, Span),
    /// `lhs op rhs` over arithmetic.
    Rel(RelOp, Arith, Arith, Span),
    /// No expression at all (only blanks): every frame, as `pcap_compile` and tcpdump.
    Empty,
}

/// `and` or `or`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    /// `and`, `&&`.
    And,
    /// `or`, `||`.
    Or,
}

/// A relational operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=` / `==`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `!=`
    Ne,
}

/// A protocol qualifier (libpcap's `Q_*` protocol values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Proto {
    Link,
    Ip,
    Ip6,
    Arp,
    Rarp,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
    Igmp,
    Igrp,
    Pim,
    Vrrp,
    Carp,
    Ah,
    Esp,
    Stp,
    Ipx,
    Netbeui,
    Iso,
}

impl Proto {
    /// The keyword as written.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Link => "link",
            Proto::Ip => "ip",
            Proto::Ip6 => "ip6",
            Proto::Arp => "arp",
            Proto::Rarp => "rarp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmp6",
            Proto::Igmp => "igmp",
            Proto::Igrp => "igrp",
            Proto::Pim => "pim",
            Proto::Vrrp => "vrrp",
            Proto::Carp => "carp",
            Proto::Ah => "ah",
            Proto::Esp => "esp",
            Proto::Stp => "stp",
            Proto::Ipx => "ipx",
            Proto::Netbeui => "netbeui",
            Proto::Iso => "iso",
        }
    }
}

/// A direction qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// `src`
    Src,
    /// `dst`
    Dst,
    /// `src or dst` / `dst or src`
    Or,
    /// `src and dst` / `dst and src`
    And,
}

/// An address-kind qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrKind {
    /// `host`
    Host,
    /// `net`
    Net,
    /// `port`
    Port,
    /// `portrange`
    Portrange,
    /// `proto`
    Proto,
    /// `protochain`
    Protochain,
    /// `gateway`
    Gateway,
}

/// The qualifiers in force for an identifier; `None` is libpcap's `Q_DEFAULT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quals {
    /// Protocol.
    pub proto: Option<Proto>,
    /// Direction.
    pub dir: Option<Dir>,
    /// Address kind.
    pub addr: Option<AddrKind>,
}

/// The value after the qualifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdValue {
    /// A number.
    Num(u32),
    /// A dotted IPv4 address or prefix, as written (`192.168`).
    Ipv4(String),
    /// `addr/len` with a dotted IPv4 address.
    Ipv4Prefix(String, u32, Span),
    /// `addr mask addr`.
    Ipv4Mask(String, String, Span),
    /// An IPv6 address, with a prefix length if one was written.
    Ipv6(Ipv6Addr, Option<(u32, Span)>),
    /// A MAC address.
    Mac([u8; 6]),
    /// A name (host, service, protocol, or `N-M` port range).
    Name(String),
}

/// A primitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Primitive {
    /// Qualifiers and a value: `tcp dst port 80`, `net 10/8`, `ether proto 0x800`.
    Qualified(Quals, IdValue),
    /// A protocol name alone: `tcp`, `ip6`.
    ProtoAbbrev(Proto),
    /// `[proto] broadcast`.
    Broadcast(Option<Proto>),
    /// `[proto] multicast`.
    Multicast(Option<Proto>),
    /// `less N`: wire length <= N.
    Less(u32),
    /// `greater N`: wire length >= N.
    Greater(u32),
    /// `vlan [id]`.
    Vlan(Option<u32>),
    /// `mpls [label]`.
    Mpls(Option<u32>),
    /// `geneve [vni]`.
    Geneve(Option<u32>),
}

/// An arithmetic expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arith {
    /// A constant.
    Num(u32, Span),
    /// The wire length.
    Len(Span),
    /// `proto[index : size]`.
    Load {
        /// The header the index is relative to.
        proto: Proto,
        /// The index.
        index: Box<Arith>,
        /// 1, 2 or 4.
        size: u32,
        /// The whole accessor.
        span: Span,
    },
    /// A binary operation.
    Bin(ArithOp, Box<Arith>, Box<Arith>, Span),
    /// Unary minus.
    Neg(Box<Arith>, Span),
}

impl Arith {
    /// Where the expression is.
    pub fn span(&self) -> Span {
        match self {
            Arith::Num(_, s) | Arith::Len(s) | Arith::Bin(_, _, _, s) | Arith::Neg(_, s) => *s,
            Arith::Load { span, .. } => *span,
        }
    }
}

/// A binary arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}
