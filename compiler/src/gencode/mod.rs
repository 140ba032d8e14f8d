//! Code generation with libpcap's semantics: AST to [`Cond`], following `gencode.c` (libpcap
//! 1.10, the version the conformance corpus was checked against) primitive by primitive.
//!
//! The point is to perform *the same loads in the same order* as libpcap on every path, not
//! only to compute the same boolean: a load past the captured bytes rejects the whole frame
//! (even under `not`), so which loads happen decides verdicts on truncated frames. Each
//! method of [`Gen`] names the `gencode.c` function it mirrors and keeps its evaluation order
//! (`gen_and(b0, b1)` evaluates `b0` first). They are split by layer:
//!
//! - this module: the generator's state and offsets, the field comparisons every layer uses
//!   (`gen_ncmp`, `gen_cmp`, `gen_mcmp`, `gen_bcmp`), and the walk from expressions to
//!   primitives;
//! - `link.rs`, `net.rs`, `transport.rs`: the link, network and transport layers;
//! - `geneve.rs`, `protochain.rs`: the two primitives that walk headers of variable length;
//! - `arith.rs`: relations and arithmetic (`gen_relation`, `gen_arth`, `gen_load`);
//! - `qualified.rs`: a qualified value to the layer function it names (`gen_ncode`,
//!   `gen_scode`, `gen_mcode`); `names.rs`: the name and number tables.
//!
//! Offsets are state, as in libpcap: `vlan` moves the link-type field and the link-layer
//! payload 4 bytes on, `mpls` moves the network layer 4 bytes on, for everything parsed after
//! them, whatever the boolean structure (`vlan or ip` tests `ip` inside the tag). `geneve`
//! makes the payload offset variable (a register), so later loads become register-relative.
//!
//! `protochain` is a loop in libpcap (a backward jump); the VM has only forward jumps, so the
//! loop is unrolled up to [`PROTOCHAIN_MAX_HEADERS_V6`] (IPv6) or [`PROTOCHAIN_MAX_AH_V4`]
//! (IPv4) times, fewer when one filter has several (see [`PROTOCHAIN_BUDGET_V6`]). A chain
//! longer than that ends in reject (libpcap would keep walking).
//!
//! The link layer is the capture's ([`LinkType`]): Ethernet, Linux cooked v1 and v2, raw IP,
//! with libpcap's offsets and link-type tests for each (`init_linktype`, `gen_linktype`).
//! Names (`host localhost`, `port http`) are looked up through a [`Resolver`] as libpcap looks
//! them up (`gen_scode`); what each became is kept in [`Gen::resolved`].
//!
//! A constant index (`ip[-1]`, `ip[2 * 3]`) is added to its header's offset in 32 bits when
//! libpcap's optimizer would fold it (`opt_stmt` turns `ldx #k; ld [x + off]` into
//! `ld [off + k]`, wrapping), so `ip[-1]` reads `ether[13]` as in tcpdump; unoptimized, libpcap
//! checks `x + off` against the frame without wrapping, and so does netmux at `-O0`.

mod arith;
mod geneve;
mod link;
mod names;
mod net;
mod protochain;
mod qualified;
mod transport;

pub(crate) use names::parse_ipv4;
pub use names::NameCache;
pub use protochain::{
    PROTOCHAIN_BUDGET_V4, PROTOCHAIN_BUDGET_V6, PROTOCHAIN_MAX_AH_V4, PROTOCHAIN_MAX_HEADERS_V6,
};

use crate::ast::*;
use crate::error::{Result, Span};
use crate::ir::*;
use crate::resolver::{ResolvedName, Resolver};
use protochain::count_protochains;

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
/// `LINUX_SLL_P_802_3`: the cooked header's protocol for Novell 802.3 frames.
const LINUX_SLL_P_802_3: u32 = 0x0001;
/// `LINUX_SLL_P_802_2`: the cooked header's protocol for 802.2 LLC frames.
const LINUX_SLL_P_802_2: u32 = 0x0004;

/// The link layer of the frames a filter runs on: libpcap's `DLT_` values that netmux
/// generates code for, each with libpcap's offsets (`init_linktype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// `DLT_EN10MB` (1): Ethernet, the type at 12, the payload at 14.
    #[default]
    Ethernet,
    /// `DLT_LINUX_SLL` (113): Linux cooked v1, the protocol at 14, the payload at 16.
    LinuxSll,
    /// `DLT_LINUX_SLL2` (276): Linux cooked v2, the protocol at 0, the payload at 20.
    LinuxSll2,
    /// `DLT_RAW` (12 on Linux; link type 101 in files): IPv4 or IPv6, told by the version.
    Raw,
    /// `DLT_IPV4` (228): IPv4 only.
    Ipv4,
    /// `DLT_IPV6` (229): IPv6 only.
    Ipv6,
}

impl LinkType {
    /// Every link type netmux compiles for.
    pub const ALL: [LinkType; 6] = [
        LinkType::Ethernet,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Raw,
        LinkType::Ipv4,
        LinkType::Ipv6,
    ];

    /// The link type for libpcap's `DLT_` value (what `pcap_datalink` says of a capture), if
    /// netmux compiles for it.
    pub fn from_dlt(dlt: u32) -> Option<LinkType> {
        LinkType::ALL.into_iter().find(|l| l.dlt() == dlt)
    }

    /// libpcap's `DLT_` value on Linux.
    pub fn dlt(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::LinuxSll => 113,
            LinkType::LinuxSll2 => 276,
            LinkType::Raw => 12,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
        }
    }

    /// libpcap's name for it (`pcap_datalink_val_to_name`).
    pub fn name(self) -> &'static str {
        match self {
            LinkType::Ethernet => "EN10MB",
            LinkType::LinuxSll => "LINUX_SLL",
            LinkType::LinuxSll2 => "LINUX_SLL2",
            LinkType::Raw => "RAW",
            LinkType::Ipv4 => "IPV4",
            LinkType::Ipv6 => "IPV6",
        }
    }

    /// libpcap's description of it (`pcap_datalink_val_to_description`), as its errors say it.
    pub fn description(self) -> &'static str {
        match self {
            LinkType::Ethernet => "Ethernet",
            LinkType::LinuxSll => "Linux cooked v1",
            LinkType::LinuxSll2 => "Linux cooked v2",
            LinkType::Raw => "Raw IP",
            LinkType::Ipv4 => "Raw IPv4",
            LinkType::Ipv6 => "Raw IPv6",
        }
    }
}

/// What a generator is set up with: the same for a filter's every generation (the libpcap
/// model generates a filter again from its syntax tree, and must get the same code).
#[derive(Clone, Copy)]
pub struct GenConfig<'a> {
    /// The capture's link layer.
    pub link: LinkType,
    /// Where names come from (a [`NameCache`], so a second generation asks nothing new).
    pub names: &'a dyn Resolver,
    /// Whether libpcap's optimizer runs: it folds constant indexes into loads, wrapping in 32
    /// bits, so they are generated that way.
    pub optimize: bool,
}

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

/// What the code generator tells the model about a filter, beyond its code.
#[derive(Clone, Debug, Default)]
pub(crate) struct GenNotes {
    /// libpcap does not run its optimizer on the filter (`protochain`: its optimizer cannot
    /// handle the loop; `geneve`: a bare jump), so it refuses none for what its optimizer
    /// would find.
    pub(crate) optimizer_off: bool,
    /// The tests of relations with arithmetic operators (`ip and 1 > -2`, `14 == 60 * 4 - 14`,
    /// `60 == len * 0`): libpcap's first optimizer loop, the one that moves edges, knows no
    /// operator's result, so it decides none of them; its second loop decides them but moves
    /// no edge (the libpcap model's `rejects_all` probe).
    pub(crate) opaque_tests: Vec<Temp>,
}

impl GenConfig<'static> {
    /// Ethernet, with libpcap's optimizer, and no names (every name is unknown).
    pub fn ethernet() -> GenConfig<'static> {
        static NO_NAMES: crate::resolver::NoResolver = crate::resolver::NoResolver;
        GenConfig {
            link: LinkType::Ethernet,
            names: &NO_NAMES,
            optimize: true,
        }
    }
}

/// The code generator's state: the offsets in force and the temps allocated so far.
pub struct Gen<'a> {
    /// Temps allocated.
    pub temps: u32,
    /// Statements the program must run first (zeroing the registers that hold `geneve`'s
    /// variable offsets, which libpcap keeps in scratch memory that may be unwritten).
    pub prologue: Vec<Stmt>,
    /// Every name looked up and what it became, in the order of the expression.
    pub resolved: Vec<ResolvedName>,
    config: GenConfig<'a>,
    /// The link layer the code tests now: the capture's, Ethernet inside a Geneve tunnel.
    link: LinkType,
    /// Whether constant indexes wrap (libpcap's optimizer runs and folds them).
    wrap_constant_offsets: bool,
    /// How many enclosing operations libpcap's optimizer folds to a constant that ignores
    /// the operand being generated (`0 & x`, `x * 0`): it deletes that operand's loads, so
    /// netmux, which keeps them, gives them their unoptimized meaning.
    absorbed: u32,
    off_linkhdr: Off,
    /// The link-type field; `None` where the link layer has none (raw IP: libpcap's
    /// `OFFSET_NOT_SET`).
    off_linktype: Option<Off>,
    off_linkpl: Off,
    off_nl: u32,
    label_stack_depth: u32,
    /// What the libpcap refusal model needs to know beyond the code: whether libpcap
    /// optimizes the filter at all, and which tests its first optimizer loop cannot decide.
    pub(crate) libpcap: GenNotes,
    chain_steps_v4: usize,
    chain_steps_v6: usize,
}

/// IPv4 or IPv6, for the functions that exist in both flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ipv {
    V4,
    V6,
}

impl<'a> Gen<'a> {
    /// A generator in its initial state for `config`'s link layer (libpcap's
    /// `init_linktype`).
    pub fn new(config: GenConfig<'a>) -> Gen<'a> {
        let konst = |k| Off { var: None, k };
        let (linktype, linkpl) = match config.link {
            LinkType::Ethernet => (Some(konst(12)), 14),
            LinkType::LinuxSll => (Some(konst(14)), 16),
            LinkType::LinuxSll2 => (Some(konst(0)), 20),
            LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => (None, 0),
        };
        Gen {
            temps: 0,
            prologue: Vec::new(),
            resolved: Vec::new(),
            config,
            link: config.link,
            wrap_constant_offsets: false,
            absorbed: 0,
            off_linkhdr: konst(0),
            off_linktype: linktype,
            off_linkpl: konst(linkpl),
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

    /// What the generator was set up with.
    pub fn config(&self) -> GenConfig<'a> {
        self.config
    }

    /// The link layer the code tests now.
    fn link(&self) -> LinkType {
        self.link
    }

    /// Notes what a name became, once per name and meaning.
    fn resolved(&mut self, kind: &'static str, name: &str, value: String) {
        let r = ResolvedName {
            name: name.to_owned(),
            kind,
            value,
        };
        if !self.resolved.contains(&r) {
            self.resolved.push(r);
        }
    }

    /// The absolute offset of `off` relative to `rel`.
    fn abs(&self, rel: Rel, off: u32) -> Off {
        let (base, extra) = match rel {
            Rel::LinkHdr => (self.off_linkhdr, 0),
            // Only link layers with a type field test it.
            Rel::LinkType => (self.off_linktype.unwrap_or(Off { var: None, k: 0 }), 0),
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

    /// Generates the condition for a whole expression (the entry point: sizes the
    /// `protochain` unrolling for the whole expression first).
    pub fn generate(&mut self, e: &Expr) -> Result<Cond> {
        // libpcap does not optimize a filter with `protochain` or `geneve` anywhere in it, so
        // its constant indexes do not wrap.
        self.wrap_constant_offsets = self.config.optimize && !turns_libpcap_optimizer_off(e);
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

    /// `gen_false`: a test that is never true (libpcap's `ld #1; jeq #0`, which its
    /// optimizer folds).
    fn never(&mut self) -> Cond {
        Cond::negate(Cond::True)
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
}

/// Whether libpcap skips its optimizer for this expression: `protochain` (a backward jump)
/// and `geneve` (a bare jump) turn it off for the whole filter.
fn turns_libpcap_optimizer_off(e: &Expr) -> bool {
    match e {
        Expr::Chain(first, rest) => {
            turns_libpcap_optimizer_off(first)
                || rest.iter().any(|(_, e)| turns_libpcap_optimizer_off(e))
        }
        Expr::Not(inner) => turns_libpcap_optimizer_off(inner),
        Expr::Prim(Primitive::Geneve(_), _) => true,
        Expr::Prim(Primitive::Qualified(q, _), _) => q.addr == Some(AddrKind::Protochain),
        Expr::Empty | Expr::Prim(..) | Expr::Rel(..) => false,
    }
}
