//! The pcap-filter parser: tokens (from [`crate::lexer`], built on nom) to [`crate::ast`].
//!
//! It follows libpcap's `grammar.y` rule for rule, including its quirks:
//!
//! * `and` and `or` have the same precedence and associate to the left.
//! * Qualifier inheritance: after `and`/`or`, a bare value (`443`, `5.6.7.8`, `not 1.2.3.4`,
//!   `(1.2.3.4 or 5.6.7.8)`) takes the qualifiers of the term before it. A protocol name, a
//!   relation or a parenthesised expression leaves no qualifiers to inherit; a value after one
//!   is an error, as in libpcap.
//! * Arithmetic has C-like precedence (`|` < `&` < shifts < `+ -` < `* /` < unary minus),
//!   except `^` and `%`, to which libpcap 1.10's grammar gives no precedence: bison then
//!   always shifts, so the right operand of `^` or `%` extends to the end of the arithmetic
//!   (`1 + 2 ^ 3 * 4` is `1 + (2 ^ (3 * 4))`, `8 % 5 & 3` is `8 % (5 & 3)`). We reproduce that.
//!
//! The grammar is ambiguous only where libpcap's LALR(1) parser decides by lookahead; this
//! recursive-descent parser tries the alternatives in order and memoises failures, so it runs
//! in polynomial time. Nesting (parentheses, `not`, unary minus, brackets) is bounded by
//! [`MAX_NESTING`] and the expression's length by [`MAX_TOKENS`], so no input can exhaust the
//! stack.

use std::collections::{HashMap, HashSet};

use crate::ast::*;
use crate::error::{syntax, ErrorKind, Located, Result, Span};
use crate::lexer::{tokenize, Kw, Punct, Tok, Token};

/// Deepest nesting of parentheses, brackets, `not` and unary minus. Each level costs a few
/// stack frames here and in code generation; 64 keeps a debug build far from the 2 MiB stack
/// of a test thread while exceeding anything a person writes.
pub const MAX_NESTING: usize = 64;

/// Most binary operators in one arithmetic expression (`1 + 1 + ... `): each one nests the
/// tree one level deeper, and code generation recurses over that depth; 100 keeps a debug
/// build's stack safe and is far beyond any real filter.
pub const MAX_ARITH_OPS: usize = 100;

/// Longest expression in tokens: four times the 4,000 of 1,000 `udp port N or ...` terms
/// (which libpcap compiles); every pass's work stays small (such a filter compiles in a tenth
/// of a second), and a longer one would not fit the VM's [`netmux_vm::MAX_INSNS`] anyway.
pub const MAX_TOKENS: usize = 16_384;

/// Parses a whole expression.
pub fn parse(input: &str) -> Result<Expr> {
    let toks = tokenize(input)?;
    if toks.len() > MAX_TOKENS {
        return syntax(
            Span::new(toks[MAX_TOKENS].span.start, input.len()),
            format!("expression too long (more than {MAX_TOKENS} tokens)"),
        );
    }
    if toks.is_empty() {
        return Ok(Expr::Empty);
    }
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        end: input.len(),
        depth: 0,
        furthest: None,
        fatal: None,
        expr_failed: HashSet::new(),
        arith_memo: HashMap::new(),
        arith_ops: 0,
    };
    let result = p.expr(QualState::Undefined);
    if let Some(f) = p.fatal.take() {
        return Err(f);
    }
    match result {
        Ok((e, _)) if p.pos == toks.len() => Ok(e),
        Ok(_) => {
            let t = &toks[p.pos];
            let err = Located {
                kind: ErrorKind::Syntax(format!(
                    "unexpected {} (expected `and`, `or` or the end)",
                    describe(&t.tok)
                )),
                span: t.span,
            };
            Err(p.best(err))
        }
        Err(e) => Err(p.best(e)),
    }
}

/// The qualifiers a bare value after `and`/`or` would inherit (libpcap's `$<blk>0.q`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum QualState {
    /// libpcap's `qerr`: nothing to inherit; a bare value here is a syntax error.
    Undefined,
    Set(Quals),
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Hid(s) => format!("address `{s}`"),
        Tok::Hid6(a) => format!("address `{a}`"),
        Tok::Eid(_) => "MAC address".to_owned(),
        Tok::Id(s) => format!("name `{s}`"),
        Tok::Kw(k) => format!("keyword `{}`", format!("{k:?}").to_lowercase()),
        Tok::P(p) => format!("`{}`", punct_text(*p)),
    }
}

fn punct_text(p: Punct) -> &'static str {
    match p {
        Punct::LParen => "(",
        Punct::RParen => ")",
        Punct::LBracket => "[",
        Punct::RBracket => "]",
        Punct::Colon => ":",
        Punct::Slash => "/",
        Punct::Plus => "+",
        Punct::Minus => "-",
        Punct::Star => "*",
        Punct::Percent => "%",
        Punct::Amp => "&",
        Punct::Pipe => "|",
        Punct::Caret => "^",
        Punct::Shl => "<<",
        Punct::Shr => ">>",
        Punct::Gt => ">",
        Punct::Ge => ">=",
        Punct::Lt => "<",
        Punct::Le => "<=",
        Punct::Eq => "=",
        Punct::Ne => "!=",
    }
}

fn proto_kw(k: Kw) -> Option<Proto> {
    Some(match k {
        Kw::Link => Proto::Link,
        Kw::Ip => Proto::Ip,
        Kw::Ip6 => Proto::Ip6,
        Kw::Arp => Proto::Arp,
        Kw::Rarp => Proto::Rarp,
        Kw::Tcp => Proto::Tcp,
        Kw::Udp => Proto::Udp,
        Kw::Sctp => Proto::Sctp,
        Kw::Icmp => Proto::Icmp,
        Kw::Icmp6 => Proto::Icmp6,
        Kw::Igmp => Proto::Igmp,
        Kw::Igrp => Proto::Igrp,
        Kw::Pim => Proto::Pim,
        Kw::Vrrp => Proto::Vrrp,
        Kw::Carp => Proto::Carp,
        Kw::Ah => Proto::Ah,
        Kw::Esp => Proto::Esp,
        Kw::Stp => Proto::Stp,
        Kw::Ipx => Proto::Ipx,
        Kw::Netbeui => Proto::Netbeui,
        Kw::Iso => Proto::Iso,
        _ => return None,
    })
}

fn addr_kw(k: Kw) -> Option<AddrKind> {
    Some(match k {
        Kw::Host => AddrKind::Host,
        Kw::Net => AddrKind::Net,
        Kw::Port => AddrKind::Port,
        Kw::Portrange => AddrKind::Portrange,
        Kw::Proto => AddrKind::Proto,
        Kw::Protochain => AddrKind::Protochain,
        Kw::Gateway => AddrKind::Gateway,
        _ => return None,
    })
}

struct Parser<'t> {
    toks: &'t [Token],
    pos: usize,
    end: usize,
    depth: usize,
    /// The error furthest into the input among abandoned alternatives.
    furthest: Option<Located>,
    /// An error no alternative can recover from (nesting too deep).
    fatal: Option<Located>,
    expr_failed: HashSet<(usize, QualState)>,
    arith_memo: HashMap<usize, Option<(Arith, usize)>>,
    /// Binary operators in the arithmetic expression being parsed.
    arith_ops: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n).map(|t| &t.tok)
    }

    fn span_here(&self) -> Span {
        self.toks
            .get(self.pos)
            .map_or(Span::new(self.end, self.end), |t| t.span)
    }

    fn prev_end(&self) -> usize {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.toks.get(i))
            .map_or(0, |t| t.span.end)
    }

    fn span_from(&self, start: usize) -> Span {
        Span::new(start, self.prev_end().max(start))
    }

    fn is_kw(&self, k: Kw) -> bool {
        self.peek() == Some(&Tok::Kw(k))
    }

    fn is_p(&self, p: Punct) -> bool {
        self.peek() == Some(&Tok::P(p))
    }

    fn err<T>(&self, what: &str) -> Result<T> {
        let found = self
            .peek()
            .map_or("the end of the expression".to_owned(), describe);
        syntax(self.span_here(), format!("expected {what}, found {found}"))
    }

    fn expect_p(&mut self, p: Punct, what: &str) -> Result<Span> {
        if self.is_p(p) {
            self.pos += 1;
            Ok(self.toks[self.pos - 1].span)
        } else {
            self.err(what)
        }
    }

    /// Remembers an abandoned alternative's error if it got further than any before.
    fn note(&mut self, e: Located) {
        let further = self
            .furthest
            .as_ref()
            .is_none_or(|f| e.span.start >= f.span.start);
        if further {
            self.furthest = Some(e);
        }
    }

    /// The error to report: `e` or an abandoned alternative's that got further.
    fn best(&mut self, e: Located) -> Located {
        // On a tie, the alternative tried first (the boolean reading of `(`) explains better.
        match self.furthest.take() {
            Some(f) if f.span.start >= e.span.start => f,
            _ => e,
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            let e = Located {
                kind: ErrorKind::Syntax(format!(
                    "expression nested too deeply (more than {MAX_NESTING} levels)"
                )),
                span: self.span_here(),
            };
            self.fatal.get_or_insert(e.clone());
            return Err(e);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn bool_op(&self) -> Option<BoolOp> {
        match self.peek() {
            Some(Tok::Kw(Kw::And)) => Some(BoolOp::And),
            Some(Tok::Kw(Kw::Or)) => Some(BoolOp::Or),
            _ => None,
        }
    }

    /// `expr: term | expr (and|or) (term | id)`.
    fn expr(&mut self, q: QualState) -> Result<(Expr, QualState)> {
        let (first, mut q) = self.term(q)?;
        let mut rest = Vec::new();
        while let Some(op) = self.bool_op() {
            self.pos += 1;
            let save = self.pos;
            match self.term(q) {
                Ok((e, q2)) => {
                    rest.push((op, e));
                    q = q2;
                }
                Err(e1) => {
                    if self.fatal.is_some() {
                        return Err(e1);
                    }
                    self.note(e1);
                    self.pos = save;
                    let e = self.id(q)?;
                    rest.push((op, e));
                }
            }
        }
        if rest.is_empty() {
            Ok((first, q))
        } else {
            Ok((Expr::Chain(Box::new(first), rest), q))
        }
    }

    /// `term: rterm | not term`.
    fn term(&mut self, q: QualState) -> Result<(Expr, QualState)> {
        if self.is_kw(Kw::Not) {
            self.enter()?;
            self.pos += 1;
            let r = self.term(q);
            self.leave();
            let (e, q) = r?;
            return Ok((Expr::Not(Box::new(e)), q));
        }
        self.rterm(q)
    }

    fn rterm(&mut self, q: QualState) -> Result<(Expr, QualState)> {
        let start = self.span_here().start;
        match self.peek().cloned() {
            Some(Tok::P(Punct::LParen)) => {
                let save = self.pos;
                if !self.expr_failed.contains(&(save, q)) {
                    self.enter()?;
                    self.pos += 1;
                    let r = self
                        .expr(q)
                        .and_then(|(e, _)| self.expect_p(Punct::RParen, "`)`").map(|_| e));
                    self.leave();
                    match r {
                        Ok(e) => return Ok((e, q)),
                        Err(e) => {
                            if self.fatal.is_some() {
                                return Err(e);
                            }
                            self.note(e);
                            self.expr_failed.insert((save, q));
                            self.pos = save;
                        }
                    }
                }
                self.relation(start)
            }
            Some(Tok::Kw(k)) => {
                if let Some(p) = proto_kw(k) {
                    match self.peek_at(1) {
                        Some(Tok::P(Punct::LBracket)) => self.relation(start),
                        Some(Tok::Kw(Kw::Broadcast)) => {
                            self.pos += 2;
                            Ok((
                                Expr::Prim(Primitive::Broadcast(Some(p)), self.span_from(start)),
                                QualState::Undefined,
                            ))
                        }
                        Some(Tok::Kw(Kw::Multicast)) => {
                            self.pos += 2;
                            Ok((
                                Expr::Prim(Primitive::Multicast(Some(p)), self.span_from(start)),
                                QualState::Undefined,
                            ))
                        }
                        Some(Tok::Kw(k2))
                            if matches!(k2, Kw::Src | Kw::Dst) || addr_kw(*k2).is_some() =>
                        {
                            self.head_id(start)
                        }
                        _ => {
                            self.pos += 1;
                            Ok((
                                Expr::Prim(Primitive::ProtoAbbrev(p), self.span_from(start)),
                                QualState::Undefined,
                            ))
                        }
                    }
                } else if matches!(k, Kw::Src | Kw::Dst) || addr_kw(k).is_some() {
                    self.head_id(start)
                } else {
                    self.other(k, start)
                }
            }
            Some(Tok::Num(_)) | Some(Tok::P(Punct::Minus)) => self.relation(start),
            Some(Tok::Id(name)) if crate::lexer::UNSUPPORTED_KEYWORDS.contains(&name.as_str()) => {
                crate::error::unsupported(
                    self.span_here(),
                    format!("`{name}` is a libpcap keyword that netmux does not support"),
                )
            }
            Some(Tok::Id(name)) => {
                let span = self.span_here();
                syntax(
                    span,
                    format!(
                        "`{name}` is not a keyword here; a name needs a qualifier such as `host` or `port` before it"
                    ),
                )
            }
            _ => self.err("a filter primitive"),
        }
    }

    fn other(&mut self, k: Kw, start: usize) -> Result<(Expr, QualState)> {
        self.pos += 1;
        let prim = match k {
            Kw::Broadcast => Primitive::Broadcast(None),
            Kw::Multicast => Primitive::Multicast(None),
            Kw::Less | Kw::Greater => {
                let Some(Tok::Num(n)) = self.peek().cloned() else {
                    return self.err(if k == Kw::Less {
                        "a length after `less`"
                    } else {
                        "a length after `greater`"
                    });
                };
                self.pos += 1;
                if k == Kw::Less {
                    Primitive::Less(n)
                } else {
                    Primitive::Greater(n)
                }
            }
            Kw::Vlan | Kw::Mpls | Kw::Geneve => {
                let save = self.pos;
                let n = match self.pnum() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.pos = save;
                        None
                    }
                };
                match k {
                    Kw::Vlan => Primitive::Vlan(n),
                    Kw::Mpls => Primitive::Mpls(n),
                    _ => Primitive::Geneve(n),
                }
            }
            Kw::Len => {
                self.pos -= 1;
                return self.relation(start);
            }
            _ => {
                self.pos -= 1;
                return self.err("a filter primitive");
            }
        };
        Ok((
            Expr::Prim(prim, self.span_from(start)),
            QualState::Undefined,
        ))
    }

    /// `pnum: NUM | '(' pnum ')'`.
    fn pnum(&mut self) -> Result<u32> {
        match self.peek() {
            Some(Tok::Num(n)) => {
                let n = *n;
                self.pos += 1;
                Ok(n)
            }
            Some(Tok::P(Punct::LParen)) => {
                self.enter()?;
                self.pos += 1;
                let r = self.pnum().and_then(|n| {
                    self.expect_p(Punct::RParen, "`)`")?;
                    Ok(n)
                });
                self.leave();
                r
            }
            _ => self.err("a number"),
        }
    }

    /// `head id`: `[proto] [dir] [host|net|port|portrange|proto|protochain|gateway] value`.
    fn head_id(&mut self, start: usize) -> Result<(Expr, QualState)> {
        let mut quals = Quals::default();
        if let Some(Tok::Kw(k)) = self.peek() {
            if let Some(p) = proto_kw(*k) {
                quals.proto = Some(p);
                self.pos += 1;
            }
        }
        let dir_start = self.span_here();
        if let Some(Tok::Kw(first @ (Kw::Src | Kw::Dst))) = self.peek() {
            {
                let first = *first;
                self.pos += 1;
                let other = if first == Kw::Src { Kw::Dst } else { Kw::Src };
                quals.dir = Some(if first == Kw::Src { Dir::Src } else { Dir::Dst });
                if let (Some(Tok::Kw(op @ (Kw::And | Kw::Or))), Some(Tok::Kw(k2))) =
                    (self.peek(), self.peek_at(1))
                {
                    if *k2 == other {
                        quals.dir = Some(if *op == Kw::And { Dir::And } else { Dir::Or });
                        self.pos += 2;
                    }
                }
            }
        }
        if let Some(Tok::Kw(k)) = self.peek() {
            if let Some(a) = addr_kw(*k) {
                if matches!(a, AddrKind::Proto | AddrKind::Protochain) && quals.dir.is_some() {
                    return syntax(
                        dir_start.to(self.span_here()),
                        format!(
                            "a direction cannot qualify `{}`",
                            format!("{a:?}").to_lowercase()
                        ),
                    );
                }
                quals.addr = Some(a);
                self.pos += 1;
            }
        }
        if quals.dir.is_none() && quals.addr.is_none() {
            return self.err("`src`, `dst`, `host`, `net`, `port`, `portrange` or `proto`");
        }
        let q = QualState::Set(quals);
        let e = self.id(q)?;
        let _ = start;
        Ok((e, q))
    }

    /// `id: nid | pnum | '(' pid ')'`, with `nid` including `not id`.
    fn id(&mut self, q: QualState) -> Result<Expr> {
        let start = self.span_here();
        let quals = match q {
            QualState::Set(quals) => quals,
            QualState::Undefined => {
                // libpcap: "syntax error in filter expression".
                let found = self
                    .peek()
                    .map_or("the end of the expression".to_owned(), describe);
                let hint = match self.peek() {
                    Some(Tok::Num(_) | Tok::Hid(_) | Tok::Hid6(_) | Tok::Eid(_) | Tok::Id(_)) => {
                        "; a bare value needs a qualifier (`host`, `port`, ...) before it"
                    }
                    _ => "",
                };
                return syntax(
                    start,
                    format!("expected a filter primitive, found {found}{hint}"),
                );
            }
        };
        let prim = |v: IdValue, span: Span| Expr::Prim(Primitive::Qualified(quals, v), span);
        match self.peek().cloned() {
            Some(Tok::Kw(Kw::Not)) => {
                self.enter()?;
                self.pos += 1;
                let r = self.id(q);
                self.leave();
                Ok(Expr::Not(Box::new(r?)))
            }
            Some(Tok::P(Punct::LParen)) => {
                let save = self.pos;
                if let Ok(n) = self.pnum() {
                    return Ok(prim(IdValue::Num(n), self.span_from(start.start)));
                }
                self.pos = save;
                self.enter()?;
                self.pos += 1;
                let r = self.pid(q);
                self.leave();
                let e = r?;
                self.expect_p(Punct::RParen, "`)`")?;
                Ok(e)
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(prim(IdValue::Num(n), start))
            }
            Some(Tok::Hid(s)) => {
                self.pos += 1;
                if self.is_p(Punct::Slash) {
                    self.pos += 1;
                    let len_span = self.span_here();
                    let Some(Tok::Num(len)) = self.peek().cloned() else {
                        return self.err("a prefix length after `/`");
                    };
                    self.pos += 1;
                    return Ok(prim(
                        IdValue::Ipv4Prefix(s, len, len_span),
                        self.span_from(start.start),
                    ));
                }
                if self.is_kw(Kw::Mask) {
                    self.pos += 1;
                    let mask_span = self.span_here();
                    let Some(Tok::Hid(m)) = self.peek().cloned() else {
                        return self.err("a dotted netmask after `mask`");
                    };
                    self.pos += 1;
                    return Ok(prim(
                        IdValue::Ipv4Mask(s, m, mask_span),
                        self.span_from(start.start),
                    ));
                }
                Ok(prim(IdValue::Ipv4(s), start))
            }
            Some(Tok::Hid6(a)) => {
                self.pos += 1;
                let mut len = None;
                if self.is_p(Punct::Slash) {
                    self.pos += 1;
                    let len_span = self.span_here();
                    let Some(Tok::Num(n)) = self.peek().cloned() else {
                        return self.err("a prefix length after `/`");
                    };
                    self.pos += 1;
                    len = Some((n, len_span));
                }
                Ok(prim(IdValue::Ipv6(a, len), self.span_from(start.start)))
            }
            Some(Tok::Eid(m)) => {
                self.pos += 1;
                Ok(prim(IdValue::Mac(m), start))
            }
            Some(Tok::Id(name)) => {
                self.pos += 1;
                Ok(prim(IdValue::Name(name), start))
            }
            _ => self.err("an address, number or name"),
        }
    }

    /// `pid: nid | qid (and|or) id`: values sharing the qualifiers in force.
    fn pid(&mut self, q: QualState) -> Result<Expr> {
        let first = self.id(q)?;
        let mut rest = Vec::new();
        while let Some(op) = self.bool_op() {
            self.pos += 1;
            rest.push((op, self.id(q)?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Chain(Box::new(first), rest)
        })
    }

    /// `arth relop arth`.
    fn relation(&mut self, start: usize) -> Result<(Expr, QualState)> {
        let lhs = self.arith()?;
        let op = match self.peek() {
            Some(Tok::P(Punct::Gt)) => RelOp::Gt,
            Some(Tok::P(Punct::Ge)) => RelOp::Ge,
            Some(Tok::P(Punct::Eq)) => RelOp::Eq,
            Some(Tok::P(Punct::Lt)) => RelOp::Lt,
            Some(Tok::P(Punct::Le)) => RelOp::Le,
            Some(Tok::P(Punct::Ne)) => RelOp::Ne,
            _ => return self.err("a comparison (`=`, `!=`, `<`, `<=`, `>`, `>=`)"),
        };
        self.pos += 1;
        let rhs = self.arith()?;
        Ok((
            Expr::Rel(op, lhs, rhs, self.span_from(start)),
            QualState::Undefined,
        ))
    }

    fn arith(&mut self) -> Result<Arith> {
        let start = self.pos;
        if let Some(memo) = self.arith_memo.get(&start).cloned() {
            return match memo {
                Some((a, end)) => {
                    self.pos = end;
                    Ok(a)
                }
                None => self.err("an arithmetic expression"),
            };
        }
        self.arith_ops = 0;
        let r = self.arith_prec(0);
        if self.fatal.is_none() {
            let memo = r.as_ref().ok().map(|a| (a.clone(), self.pos));
            self.arith_memo.insert(start, memo);
        }
        r
    }

    fn bin_op(&self) -> Option<(ArithOp, u8)> {
        Some(match self.peek()? {
            Tok::P(Punct::Pipe) => (ArithOp::Or, 1),
            Tok::P(Punct::Amp) => (ArithOp::And, 2),
            Tok::P(Punct::Shl) => (ArithOp::Shl, 3),
            Tok::P(Punct::Shr) => (ArithOp::Shr, 3),
            Tok::P(Punct::Plus) => (ArithOp::Add, 4),
            Tok::P(Punct::Minus) => (ArithOp::Sub, 4),
            Tok::P(Punct::Star) => (ArithOp::Mul, 5),
            Tok::P(Punct::Slash) => (ArithOp::Div, 5),
            Tok::P(Punct::Percent) => (ArithOp::Mod, 0),
            Tok::P(Punct::Caret) => (ArithOp::Xor, 0),
            _ => return None,
        })
    }

    /// Precedence climbing; `^` always shifts (see the module comment).
    fn arith_prec(&mut self, min: u8) -> Result<Arith> {
        let mut lhs = self.unary()?;
        while let Some((op, prec)) = self.bin_op() {
            if prec < min && !matches!(op, ArithOp::Xor | ArithOp::Mod) {
                break;
            }
            self.arith_ops += 1;
            if self.arith_ops > MAX_ARITH_OPS {
                let e = Located {
                    kind: ErrorKind::Syntax(format!(
                        "arithmetic expression too long (more than {MAX_ARITH_OPS} operators)"
                    )),
                    span: self.span_here(),
                };
                self.fatal.get_or_insert(e.clone());
                return Err(e);
            }
            if matches!(op, ArithOp::Xor | ArithOp::Mod) {
                self.pos += 1;
                let rhs = self.arith_prec(0)?;
                let span = lhs.span().to(rhs.span());
                lhs = Arith::Bin(op, Box::new(lhs), Box::new(rhs), span);
                continue;
            }
            if prec < min {
                break;
            }
            self.pos += 1;
            let rhs = self.arith_prec(prec + 1)?;
            let span = lhs.span().to(rhs.span());
            lhs = Arith::Bin(op, Box::new(lhs), Box::new(rhs), span);
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Arith> {
        let start = self.span_here();
        match self.peek().cloned() {
            Some(Tok::P(Punct::Minus)) => {
                self.enter()?;
                self.pos += 1;
                let r = self.unary().and_then(|mut inner| {
                    if let Some((op @ (ArithOp::Xor | ArithOp::Mod), _)) = self.bin_op() {
                        self.pos += 1;
                        let rhs = self.arith_prec(0)?;
                        let span = inner.span().to(rhs.span());
                        inner = Arith::Bin(op, Box::new(inner), Box::new(rhs), span);
                    }
                    Ok(inner)
                });
                self.leave();
                let inner = r?;
                let span = start.to(inner.span());
                Ok(Arith::Neg(Box::new(inner), span))
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Arith::Num(n, start))
            }
            Some(Tok::Kw(Kw::Len)) => {
                self.pos += 1;
                Ok(Arith::Len(start))
            }
            Some(Tok::P(Punct::LParen)) => {
                self.enter()?;
                self.pos += 1;
                let r = self.arith_prec(0);
                self.leave();
                let inner = r?;
                self.expect_p(Punct::RParen, "`)`")?;
                Ok(inner)
            }
            Some(Tok::Kw(k)) if proto_kw(k).is_some() => {
                let proto = proto_kw(k).unwrap_or(Proto::Link);
                self.pos += 1;
                self.expect_p(Punct::LBracket, "`[` after a protocol in arithmetic")?;
                self.enter()?;
                let r = self.arith_prec(0);
                self.leave();
                let index = r?;
                let mut size = 1;
                if self.is_p(Punct::Colon) {
                    self.pos += 1;
                    let size_span = self.span_here();
                    let Some(Tok::Num(n)) = self.peek().cloned() else {
                        return self.err("a size (1, 2 or 4) after `:`");
                    };
                    self.pos += 1;
                    if !matches!(n, 1 | 2 | 4) {
                        return syntax(size_span, "data size must be 1, 2, or 4");
                    }
                    size = n;
                }
                self.expect_p(Punct::RBracket, "`]`")?;
                Ok(Arith::Load {
                    proto,
                    index: Box::new(index),
                    size,
                    span: self.span_from(start.start),
                })
            }
            _ => self.err("a number, `len` or `proto[offset]`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Expr {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn and_or_have_equal_precedence_and_associate_left() {
        let Expr::Chain(_, rest) = ok("tcp or udp and ip") else {
            panic!()
        };
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].0, BoolOp::Or);
        assert_eq!(rest[1].0, BoolOp::And);
    }

    #[test]
    fn bare_values_inherit_the_qualifiers_before_them() {
        let Expr::Chain(_, rest) = ok("tcp dst port 80 or 443") else {
            panic!()
        };
        let Expr::Prim(Primitive::Qualified(q, IdValue::Num(443)), _) = &rest[0].1 else {
            panic!("{rest:?}")
        };
        assert_eq!(q.proto, Some(Proto::Tcp));
        assert_eq!(q.dir, Some(Dir::Dst));
        assert_eq!(q.addr, Some(AddrKind::Port));
        ok("host 1.2.3.4 and not 5.6.7.8");
        ok("host 1.2.3.4 and (5.6.7.8 or 9.9.9.9)");
        assert!(parse("tcp and 80").is_err());
        assert!(parse("(host 1.2.3.4) or 5.6.7.8").is_err());
    }

    #[test]
    fn xor_takes_everything_to_its_right_like_libpcap() {
        let Expr::Rel(_, lhs, _, _) = ok("1 + 2 ^ 3 * 4 = 1") else {
            panic!()
        };
        let Arith::Bin(ArithOp::Add, _, rhs, _) = lhs else {
            panic!("{lhs:?}")
        };
        assert!(matches!(*rhs, Arith::Bin(ArithOp::Xor, _, _, _)));
        let Expr::Rel(_, lhs, _, _) = ok("1 | 2 & 3 = 1") else {
            panic!()
        };
        assert!(matches!(lhs, Arith::Bin(ArithOp::Or, _, _, _)));
    }

    #[test]
    fn errors_point_at_the_fault() {
        let e = parse("tcp or or udp").unwrap_err();
        assert_eq!(e.span, Span::new(7, 9));
        let e = parse("ip[0:3] = 1").unwrap_err();
        assert_eq!(e.span, Span::new(5, 6));
        let e = parse("tcp and").unwrap_err();
        assert_eq!(e.span, Span::new(7, 7));
        let e = parse("ip[0] = 1 = 2").unwrap_err();
        assert_eq!(e.span, Span::new(10, 11));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}tcp{}", "(".repeat(1_000), ")".repeat(1_000));
        let e = parse(&deep).unwrap_err();
        assert!(e.kind.to_string().contains("nested too deeply"), "{e:?}");
        let huge = format!("{}tcp{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse(&huge).is_err());
        let deep_arith = format!("{}1{} = 1", "-(".repeat(500), ")".repeat(500));
        assert!(parse(&deep_arith).is_err());
        let deep = format!("{}1 = 1", "not ".repeat(500));
        assert!(parse(&deep).is_err());
        let ok_depth = format!("{}tcp{}", "(".repeat(40), ")".repeat(40));
        ok(&ok_depth);
    }

    #[test]
    fn nested_parentheses_parse_in_polynomial_time() {
        let e = format!("{}1{} = 1", "(".repeat(60), ")".repeat(60));
        ok(&e);
    }
}
