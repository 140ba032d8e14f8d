//! The recogniser that finds a port binding in a filter's syntax tree, so the merged
//! classifier (`netmux-classify`) can put the filter's keys into its hash tables.
//!
//! # What a binding means
//!
//! A [`BindingPattern`] is the set of frames whose *key* — (IP version, transport protocol,
//! destination address, destination port) — is one of the pattern's
//! [`bindings`](BindingPattern::bindings), each a driver
//! [`PortBinding`](netmux_proto::driver::PortBinding). The key of an Ethernet frame is read
//! exactly as libpcap's generated code reads it (as [`crate::gencode`] reproduces it; the
//! classifier's `key` module states the same rules and its generic program makes exactly
//! these loads):
//!
//! * the version is the ethertype at offset 12: `0x0800` IPv4, `0x86dd` IPv6, nothing else
//!   (no VLAN or MPLS look-through);
//! * IPv4: the protocol is `ip[9]`; a frame whose fragment offset `ip[6:2] & 0x1fff` is not 0
//!   has no key; the destination port is the 2 bytes at `14 + 4 * (ip[0] & 0xf) + 2` — the
//!   header length is taken from the IHL *without* checking the version or that IHL >= 5; the
//!   destination address is `ip[16:4]`;
//! * IPv6: the protocol is the immediate next header `ip6[6]` (no extension header walk), the
//!   destination port is at `14 + 40 + 2`, the destination address is `ip6[24:16]`;
//! * a load outside the captured bytes means the frame has no key for any binding that needs
//!   that load (see the proof in [`recognize`]).
//!
//! # Which filters are bindings
//!
//! [`recognize`] accepts a filter whose syntax tree is an `and`-conjunction (parentheses
//! allowed, `or` and `not` not) of these atoms, in any order and any number, after libpcap's
//! qualifier inheritance as [`crate::parser`] resolves it:
//!
//! | atom | frames it accepts (standalone verdict) |
//! |---|---|
//! | `ip` / `ip6` | ethertype 0x0800 / 0x86dd |
//! | `tcp` `udp` `sctp`, `[ip\|ip6] proto N` | IPv4 with `ip[9] == p`, or IPv6 with `ip6[6] == p` *or* (`ip6[6] == 44` and `ip6[40] == p`) |
//! | `[ip\|ip6] dst [host\|net] A` (A a whole address) | IPv4 with `ip[16:4] == A` (without `ip`: also ARP/RARP with target address A), or IPv6 with `ip6[24:16] == A` |
//! | `[tcp\|udp\|sctp] dst port P`, `dst portrange P-P` | IPv4, protocol in T, fragment offset 0, port P; or IPv6, next header in T, port P (T = the qualifier, or all three) |
//!
//! and at least one port atom. The conjunction accepts a frame iff every atom does (an `and`
//! chain stops at the first false atom, and a load out of bounds rejects the whole filter, so
//! either way the verdict is reject; it accepts only when every atom ran to accept). The
//! intersection of those sets is exactly the set of frames whose key is in
//! `families x protocols x {A or any} x {P}`:
//!
//! * the port atom requires ethertype 0x0800 or 0x86dd, which removes the ARP/RARP half of a
//!   bare `dst host`;
//! * it requires the protocol to be tcp, udp or sctp as read at `ip[9]` / `ip6[6]`, which
//!   removes the IPv6 fragment-header alternative of `tcp`/`proto` (44 is not in T);
//! * every load an atom makes on a frame it accepts is one of the key loads above (the
//!   ethertype, `ip[9]`/`ip6[6]`, the fragment field, IHL and port, the address), so an atom
//!   never rejects, by a load out of bounds, a frame whose key is in the binding.
//!
//! Anything else (`src`, `port` without `dst`, prefixes shorter than the address, `vlan`,
//! relations, `or`, `not`, conflicting ports or addresses, no port at all) is not a binding and
//! runs as a compiled filter; [`NotBinding`] says why.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use netmux_proto::driver::PortBinding;

use crate::ast::{AddrKind, BoolOp, Dir, Expr, IdValue, Primitive, Proto};
// The same parser gencode uses, so a binding's address is read exactly as the compiler reads it.
use crate::gencode::parse_ipv4;

/// IANA protocol numbers of the transports a binding can name, in the order of their bits in
/// [`BindingPattern`]'s protocol mask.
const PROTOCOLS: [(u8, &str); 3] = [(6, "tcp"), (17, "udp"), (132, "sctp")];
/// Every protocol's bit.
const ALL_PROTOCOLS: u8 = 0b111;

/// The mask bit of IP protocol `n`, or 0 for a protocol without ports.
fn protocol_bit(n: u32) -> u8 {
    PROTOCOLS
        .iter()
        .position(|&(p, _)| u32::from(p) == n)
        .map_or(0, |i| 1 << i)
}

/// A port binding found in a filter: the frames whose key is one of
/// [`BindingPattern::bindings`]. Find one with [`recognize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BindingPattern {
    v4: bool,
    v6: bool,
    /// Bit `i` set: protocol `PROTOCOLS[i]`.
    protos: u8,
    addr: Option<IpAddr>,
    port: u16,
}

impl BindingPattern {
    /// The destination port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The destination address, if the pattern names one.
    pub fn addr(&self) -> Option<IpAddr> {
        self.addr
    }

    /// The driver bindings, one per (family, protocol): 1 to 6 of them. An address-less
    /// binding has an all-zero address.
    pub fn bindings(&self) -> Vec<PortBinding> {
        let mut out = Vec::with_capacity(6);
        for (i, &(protocol, _)) in PROTOCOLS.iter().enumerate() {
            if self.protos & (1 << i) == 0 {
                continue;
            }
            let port = self.port;
            match self.addr {
                Some(IpAddr::V4(a)) => {
                    let mut address = [0u8; 16];
                    address[..4].copy_from_slice(&a.octets());
                    out.push(PortBinding {
                        protocol,
                        address,
                        ipv6: false,
                        port,
                    });
                }
                Some(IpAddr::V6(a)) => out.push(PortBinding {
                    protocol,
                    address: a.octets(),
                    ipv6: true,
                    port,
                }),
                None => {
                    for (on, ipv6) in [(self.v4, false), (self.v6, true)] {
                        if on {
                            out.push(PortBinding {
                                protocol,
                                address: [0; 16],
                                ipv6,
                                port,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for BindingPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protos: Vec<&str> = PROTOCOLS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.protos & (1 << i) != 0)
            .map(|(_, &(_, name))| name)
            .collect();
        write!(f, "{}", protos.join("/"))?;
        match self.addr {
            Some(IpAddr::V4(a)) => write!(f, " to {a}")?,
            Some(IpAddr::V6(a)) => write!(f, " to [{a}]")?,
            None => {
                let fam = match (self.v4, self.v6) {
                    (true, true) => "ip/ip6",
                    (true, false) => "ip",
                    _ => "ip6",
                };
                write!(f, " to any {fam} address")?
            }
        }
        write!(f, " port {}", self.port)
    }
}

/// Why a filter is not a port binding (it then runs as a compiled filter after the tables).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotBinding {
    /// The expression has an `or`.
    #[error("it has an `or`")]
    HasOr,
    /// The expression has a `not`.
    #[error("it has a `not`")]
    HasNot,
    /// The expression has a comparison over packet data.
    #[error("it compares packet data")]
    HasRelation,
    /// An atom is not one a binding is made of; the text says which.
    #[error("`{0}` is not part of a port binding")]
    OtherAtom(String),
    /// A port or address atom that is not for the destination; the text says which.
    #[error("`{0}` is not part of a port binding: a binding names the destination (`dst port`, `dst host`)")]
    NotDestination(String),
    /// No `dst port`.
    #[error("it names no destination port")]
    NoPort,
    /// Atoms that no frame satisfies together (two ports, two addresses, `ip` and `ip6`...).
    #[error("its atoms contradict each other")]
    Contradiction,
    /// The rule is written in Barrelfish's bfdmux dialect, whose expressions are not read as
    /// bindings.
    #[error("it is a bfdmux expression")]
    Bfdmux,
}

/// The port binding `expr` is equivalent to, or why it is not one. See the module
/// documentation for the accepted shapes and the proof of equivalence. `expr` must be a
/// filter the compiler accepts (the recogniser does not repeat its error checks).
pub fn recognize(expr: &Expr) -> Result<BindingPattern, NotBinding> {
    let mut atoms = Vec::new();
    conjuncts(expr, &mut atoms)?;
    let mut acc = Acc {
        v4: true,
        v6: true,
        protos: ALL_PROTOCOLS,
        addr: None,
        port: None,
    };
    for p in atoms {
        acc.atom(p)?;
    }
    let port = acc.port.ok_or(NotBinding::NoPort)?;
    if let Some(a) = acc.addr {
        match a {
            IpAddr::V4(_) => acc.v6 = false,
            IpAddr::V6(_) => acc.v4 = false,
        }
    }
    if acc.protos == 0 || !(acc.v4 || acc.v6) {
        return Err(NotBinding::Contradiction);
    }
    Ok(BindingPattern {
        v4: acc.v4,
        v6: acc.v6,
        protos: acc.protos,
        addr: acc.addr,
        port,
    })
}

/// A compiled rule and the port binding it is, if it is one: what the merged classifier
/// installs for a pcap-filter expression (`netmux filter classify`, the equivalence tests).
#[derive(Clone, Debug)]
pub struct CompiledRule {
    /// The verified program (default options: accepts with 1).
    pub program: netmux_vm::Program,
    /// The binding the expression is, or why it is not one.
    pub pattern: Result<BindingPattern, NotBinding>,
}

impl CompiledRule {
    /// The keys to install the rule under: each binding of its pattern, or one `None` (the
    /// rule runs after the tables) when it is no binding.
    pub fn keys(&self) -> Vec<Option<PortBinding>> {
        match &self.pattern {
            Ok(p) => p.bindings().into_iter().map(Some).collect(),
            Err(_) => vec![None],
        }
    }

    /// Where the rule goes, for people: `table: udp to 10.0.0.2 port 53` or
    /// `linear: not a port binding: it has an `or``.
    pub fn placement(&self) -> String {
        match &self.pattern {
            Ok(p) => format!("table: {p}"),
            Err(why) => format!("linear: not a port binding: {why}"),
        }
    }
}

/// Compiles `expr` (pcap-filter language, default options) and recognises its binding.
pub fn compile_rule(expr: &str) -> Result<CompiledRule, crate::CompileError> {
    compile_rule_in(expr, crate::Dialect::Pcap)
}

/// Compiles `expr` written in `dialect` (default options otherwise) and recognises its
/// binding (a bfdmux expression is none).
pub fn compile_rule_in(
    expr: &str,
    dialect: crate::Dialect,
) -> Result<CompiledRule, crate::CompileError> {
    let opts = crate::Options {
        dialect,
        ..crate::Options::default()
    };
    let program = crate::compile(expr, &opts)?;
    if dialect == crate::Dialect::Bfdmux {
        return Ok(CompiledRule {
            program,
            pattern: Err(NotBinding::Bfdmux),
        });
    }
    // It compiled, so it parses.
    let ast =
        crate::parser::parse(expr).map_err(|e| crate::CompileError::new(e.kind, e.span, expr))?;
    Ok(CompiledRule {
        program,
        pattern: recognize(&ast),
    })
}

/// The primitives of an `and`-only tree, or why it is not one.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Primitive>) -> Result<(), NotBinding> {
    match e {
        Expr::Chain(first, rest) => {
            conjuncts(first, out)?;
            for (op, e) in rest {
                if *op == BoolOp::Or {
                    return Err(NotBinding::HasOr);
                }
                conjuncts(e, out)?;
            }
            Ok(())
        }
        Expr::Not(_) => Err(NotBinding::HasNot),
        Expr::Rel(..) => Err(NotBinding::HasRelation),
        // No atoms: every frame (and no port, so not a binding).
        Expr::Empty => Ok(()),
        Expr::Prim(p, _) => {
            out.push(p);
            Ok(())
        }
    }
}

/// The constraints gathered so far.
struct Acc {
    v4: bool,
    v6: bool,
    protos: u8,
    addr: Option<IpAddr>,
    port: Option<u16>,
}

impl Acc {
    fn family(&mut self, p: Option<Proto>) {
        match p {
            Some(Proto::Ip) => self.v6 = false,
            Some(Proto::Ip6) => self.v4 = false,
            _ => {}
        }
    }

    fn protos(&mut self, mask: u8) {
        self.protos &= mask;
    }

    fn set_port(&mut self, port: u32) -> Result<(), NotBinding> {
        let port = u16::try_from(port).map_err(|_| NotBinding::Contradiction)?;
        match self.port {
            Some(p) if p != port => Err(NotBinding::Contradiction),
            _ => {
                self.port = Some(port);
                Ok(())
            }
        }
    }

    fn set_addr(&mut self, a: IpAddr) -> Result<(), NotBinding> {
        match self.addr {
            Some(b) if b != a => Err(NotBinding::Contradiction),
            _ => {
                self.addr = Some(a);
                Ok(())
            }
        }
    }

    fn atom(&mut self, p: &Primitive) -> Result<(), NotBinding> {
        let other = || NotBinding::OtherAtom(describe(p));
        match p {
            Primitive::ProtoAbbrev(Proto::Ip | Proto::Ip6) => {
                if let Primitive::ProtoAbbrev(f) = p {
                    self.family(Some(*f));
                }
                Ok(())
            }
            Primitive::ProtoAbbrev(Proto::Tcp) => {
                self.protos(protocol_bit(6));
                Ok(())
            }
            Primitive::ProtoAbbrev(Proto::Udp) => {
                self.protos(protocol_bit(17));
                Ok(())
            }
            Primitive::ProtoAbbrev(Proto::Sctp) => {
                self.protos(protocol_bit(132));
                Ok(())
            }
            Primitive::Qualified(q, v) => match q.addr {
                Some(AddrKind::Port | AddrKind::Portrange) => {
                    if q.dir != Some(Dir::Dst) {
                        return Err(NotBinding::NotDestination(describe(p)));
                    }
                    let mask = match q.proto {
                        None => ALL_PROTOCOLS,
                        Some(Proto::Tcp) => protocol_bit(6),
                        Some(Proto::Udp) => protocol_bit(17),
                        Some(Proto::Sctp) => protocol_bit(132),
                        Some(_) => return Err(other()),
                    };
                    let port = match v {
                        IdValue::Num(n) => *n,
                        IdValue::Name(s) if q.addr == Some(AddrKind::Portrange) => {
                            match parse_port_range(s) {
                                Some((lo, hi)) if lo == hi => lo,
                                _ => return Err(other()),
                            }
                        }
                        _ => return Err(other()),
                    };
                    self.protos(mask);
                    self.set_port(port)
                }
                Some(AddrKind::Proto) => {
                    if !matches!(q.proto, None | Some(Proto::Ip | Proto::Ip6)) {
                        return Err(other());
                    }
                    let IdValue::Num(n) = v else {
                        return Err(other());
                    };
                    self.family(q.proto);
                    // Another protocol (bit 0): no port atom can agree with it.
                    self.protos(protocol_bit(*n));
                    Ok(())
                }
                None | Some(AddrKind::Host | AddrKind::Net) => {
                    if !matches!(q.proto, None | Some(Proto::Ip | Proto::Ip6)) {
                        return Err(other());
                    }
                    if q.dir != Some(Dir::Dst) {
                        return Err(NotBinding::NotDestination(describe(p)));
                    }
                    let addr = exact_address(q.addr, v).ok_or_else(other)?;
                    self.family(q.proto);
                    self.set_addr(addr)
                }
                Some(_) => Err(other()),
            },
            _ => Err(other()),
        }
    }
}

/// The address a `host`/`net` value matches exactly, if its mask is the whole address (the
/// mask rules of libpcap's `gen_ncode`/`gen_mcode` as [`crate::gencode`] has them).
fn exact_address(kind: Option<AddrKind>, v: &IdValue) -> Option<IpAddr> {
    let v4 = |a: u32| Some(IpAddr::V4(Ipv4Addr::from(a)));
    match v {
        // A bare number: the whole address for `host`; `net N` shifts N up to the first
        // non-zero byte and masks what it shifted in, so it is whole only with a top byte.
        IdValue::Num(n) => match kind {
            Some(AddrKind::Net) if *n != 0 && n & 0xff00_0000 == 0 => None,
            _ => v4(*n),
        },
        // Dotted: fewer than four parts make a prefix (`host 10.1` is 10.1.0.0/16).
        IdValue::Ipv4(s) => match parse_ipv4(s)? {
            (a, 32) => v4(a),
            _ => None,
        },
        IdValue::Ipv4Prefix(s, 32, _) => {
            let (a, bits) = parse_ipv4(s)?;
            v4(a.checked_shl(32 - bits).unwrap_or(0))
        }
        IdValue::Ipv4Mask(s, m, _) => {
            let (a, bits) = parse_ipv4(s)?;
            let (m, mbits) = parse_ipv4(m)?;
            (m.checked_shl(32 - mbits).unwrap_or(0) == u32::MAX)
                .then(|| IpAddr::V4(Ipv4Addr::from(a.checked_shl(32 - bits).unwrap_or(0))))
        }
        IdValue::Ipv6(a, None) => Some(IpAddr::V6(*a)),
        IdValue::Ipv6(a, Some((128, _))) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// `lo-hi` as `gencode` reads a port range name.
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

/// A short description of a primitive for messages.
fn describe(p: &Primitive) -> String {
    match p {
        Primitive::ProtoAbbrev(p) => p.name().to_owned(),
        Primitive::Qualified(q, _) => {
            let mut parts = Vec::new();
            if let Some(p) = q.proto {
                parts.push(p.name().to_owned());
            }
            if let Some(d) = q.dir {
                parts.push(
                    match d {
                        Dir::Src => "src",
                        Dir::Dst => "dst",
                        Dir::Or => "src or dst",
                        Dir::And => "src and dst",
                    }
                    .to_owned(),
                );
            }
            if let Some(a) = q.addr {
                parts.push(format!("{a:?}").to_lowercase());
            }
            parts.push("...".to_owned());
            parts.join(" ")
        }
        Primitive::Broadcast(_) => "broadcast".to_owned(),
        Primitive::Multicast(_) => "multicast".to_owned(),
        Primitive::Less(_) => "less".to_owned(),
        Primitive::Greater(_) => "greater".to_owned(),
        Primitive::Vlan(_) => "vlan".to_owned(),
        Primitive::Mpls(_) => "mpls".to_owned(),
        Primitive::Geneve(_) => "geneve".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn rec(s: &str) -> Result<BindingPattern, NotBinding> {
        recognize(&parse(s).unwrap())
    }

    fn keys(s: &str) -> Vec<PortBinding> {
        let mut k = rec(s).unwrap_or_else(|e| panic!("{s}: {e}")).bindings();
        k.sort_by_key(|b| (b.protocol, b.ipv6, b.address, b.port));
        k
    }

    #[test]
    fn every_spelling_of_one_binding_gives_the_same_key() {
        let want = vec![PortBinding {
            protocol: 17,
            address: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ipv6: false,
            port: 53,
        }];
        for s in [
            "ip and udp and dst host 10.0.0.2 and dst port 53",
            "udp dst port 53 and dst host 10.0.0.2",
            "dst host 10.0.0.2 and udp dst port 53",
            "ip dst 10.0.0.2 and udp and dst port 53",
            "(udp and dst net 10.0.0.2/32) and dst portrange 53-53",
            "dst net 10.0.0.2 mask 255.255.255.255 and ip proto 17 and dst port 53",
            "dst host 167772162 and udp dst port 0x35",
            "udp and udp dst port 53 and dst port 53 and dst host 10.0.0.2",
        ] {
            assert_eq!(keys(s), want, "{s}");
        }
    }

    #[test]
    fn missing_qualifiers_widen_the_binding_to_every_family_and_protocol() {
        assert_eq!(keys("dst port 80").len(), 6);
        assert_eq!(keys("tcp dst port 80").len(), 2);
        assert_eq!(keys("ip6 and tcp dst port 80").len(), 1);
        assert_eq!(keys("dst host fe80::1 and dst port 80").len(), 3);
        assert!(keys("dst host fe80::1 and dst port 80")
            .iter()
            .all(|k| k.ipv6 && k.address[0] == 0xfe));
    }

    #[test]
    fn filters_of_other_shapes_are_not_bindings() {
        for (s, why) in [
            ("tcp port 80", "dst"),
            ("tcp src port 80", "dst"),
            ("src host 1.2.3.4 and tcp dst port 80", "dst"),
            ("tcp dst port 80 or udp dst port 80", "or"),
            ("tcp dst port 80 and not dst host 1.2.3.4", "not"),
            ("tcp and dst host 1.2.3.4", "noport"),
            ("tcp dst port 80 and 443", "contra"),
            ("tcp dst port 80 and udp", "contra"),
            ("ip6 and tcp dst port 80 and dst host 1.2.3.4", "contra"),
            ("dst host 10.1 and tcp dst port 80", "other"),
            ("dst net 10.0.0.0/8 and tcp dst port 80", "other"),
            ("dst net 10 and tcp dst port 80", "other"),
            ("vlan and tcp dst port 80", "other"),
            ("tcp dst port 80 and ip[8] = 64", "rel"),
            ("tcp dst portrange 80-81", "other"),
            ("ip proto 1 and dst port 80", "contra"),
        ] {
            let e = rec(s).expect_err(s);
            let ok = match why {
                "or" => e == NotBinding::HasOr,
                "not" => e == NotBinding::HasNot,
                "rel" => e == NotBinding::HasRelation,
                "noport" => e == NotBinding::NoPort,
                "contra" => e == NotBinding::Contradiction,
                "dst" => matches!(e, NotBinding::NotDestination(_)),
                _ => matches!(e, NotBinding::OtherAtom(_)),
            };
            assert!(ok, "{s}: {e:?}");
        }
    }
}
