//! The bfdmux dialect: Barrelfish's raw filter expressions, e.g.
//! `int16[12] == 0x0800 && int8[23] == 6`.
//!
//! * Loads: `int8[e]`, `int16[e]`, `int32[e]` read 1, 2 or 4 bytes at byte offset `e` of the
//!   frame, big-endian (network order); a load past the captured bytes rejects the frame.
//! * Numbers: decimal or `0x` hexadecimal. A leading `0` is *not* octal (`010` is ten).
//!   Negative numbers are written with unary minus (`-1`) and are 32-bit two's complement.
//! * Operators, with C's precedence and left associativity, loosest first: `||`; `&&`; `|`;
//!   `^`; `&`; `==` `!=`; `<` `>` `<=` `>=` (signed) and `{` `}` `{=` `}=` (unsigned `<` `>`
//!   `<=` `>=`); `+` `-`; `*` `/` `%`; unary `!` `~` `-`. So `10-3-2==5` is true, unlike in
//!   the original, which split the text at the first operator it found.
//! * A value is true when it is not zero; the filter accepts the frame when the whole
//!   expression is true. `&&`, `||` and `!` at the top (and under each other) short-circuit
//!   like C, so `int8[0] == 1 || int8[9999] == 1` accepts a short frame whose first byte is 1.
//!   Used as a number inside arithmetic, a comparison or logical operator gives 0 or 1 and
//!   evaluates both operands. Division or modulus by a constant zero is an error; by a value
//!   that is zero at run time, the frame is rejected.
//!
//! Errors point at the offending text with a caret, like the pcap-filter dialect's.

use crate::error::{semantic, syntax, Result, Span};
use crate::ir::*;

/// Deepest nesting of parentheses, brackets and unary operators (see
/// [`crate::parser::MAX_NESTING`] for the reasoning).
pub const MAX_NESTING: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Num(u32),
    Load(Size),
    Op(&'static str),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    span: Span,
}

const OPS: &[&str] = &[
    "||", "&&", "==", "!=", "<=", ">=", "{=", "}=", "<", ">", "{", "}", "|", "^", "&", "+", "-",
    "*", "/", "%", "!", "~", "(", ")", "[", "]",
];

fn tokenize(s: &str) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            let (radix, digits_start) = if b[i..].starts_with(b"0x") || b[i..].starts_with(b"0X") {
                (16, i + 2)
            } else {
                (10, i)
            };
            i = digits_start;
            while i < b.len() && (b[i] as char).is_digit(radix) {
                i += 1;
            }
            let span = Span::new(start, i);
            if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                return syntax(Span::new(start, i + 1), "malformed number");
            }
            let v = u32::from_str_radix(&s[digits_start..i], radix)
                .or_else(|_| syntax(span, "number does not fit in 32 bits"))?;
            out.push(Token {
                tok: Tok::Num(v),
                span,
            });
            continue;
        }
        if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let span = Span::new(start, i);
            let size = match &s[start..i] {
                "int8" => Size::B,
                "int16" => Size::H,
                "int32" => Size::W,
                w => {
                    return syntax(
                        span,
                        format!("unknown word `{w}` (expected int8, int16 or int32)"),
                    )
                }
            };
            out.push(Token {
                tok: Tok::Load(size),
                span,
            });
            continue;
        }
        match OPS.iter().find(|op| s[i..].starts_with(**op)) {
            Some(op) => {
                out.push(Token {
                    tok: Tok::Op(op),
                    span: Span::new(i, i + op.len()),
                });
                i += op.len();
            }
            None => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return syntax(
                    Span::new(i, i + ch.len_utf8()),
                    format!("unexpected character `{ch}`"),
                );
            }
        }
    }
    Ok(out)
}

/// The syntax tree.
#[derive(Clone, Debug)]
enum Node {
    Num(u32),
    Load(Size, Box<Node>),
    Unary(&'static str, Box<Node>),
    Bin(&'static str, Box<Node>, Box<Node>, Span),
}

/// Binary operators by precedence level, loosest first.
const LEVELS: &[&[&str]] = &[
    &["||"],
    &["&&"],
    &["|"],
    &["^"],
    &["&"],
    &["==", "!="],
    &["<", ">", "<=", ">=", "{", "}", "{=", "}="],
    &["+", "-"],
    &["*", "/", "%"],
];

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    end: usize,
    depth: usize,
    /// Binary operators so far (each nests the tree one level).
    ops: usize,
}

impl Parser {
    fn peek_op(&self) -> Option<&'static str> {
        match self.toks.get(self.pos) {
            Some(Token {
                tok: Tok::Op(o), ..
            }) => Some(o),
            _ => None,
        }
    }

    fn here(&self) -> Span {
        self.toks
            .get(self.pos)
            .map_or(Span::new(self.end, self.end), |t| t.span)
    }

    fn expect(&mut self, op: &str) -> Result<()> {
        if self.peek_op() == Some(op) {
            self.pos += 1;
            Ok(())
        } else {
            syntax(self.here(), format!("expected `{op}`"))
        }
    }

    fn binary(&mut self, level: usize) -> Result<Node> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut lhs = self.binary(level + 1)?;
        while let Some(op) = self.peek_op().filter(|o| LEVELS[level].contains(o)) {
            let span = self.here();
            self.ops += 1;
            if self.ops > crate::parser::MAX_ARITH_OPS {
                return syntax(span, "expression too long (more than 100 operators)");
            }
            self.pos += 1;
            let rhs = self.binary(level + 1)?;
            lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs), span);
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Node> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return syntax(self.here(), "expression nested too deeply");
        }
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Result<Node> {
        let t = self.toks.get(self.pos).cloned();
        match t.map(|t| t.tok) {
            Some(Tok::Op(op @ ("!" | "~" | "-"))) => {
                self.pos += 1;
                Ok(Node::Unary(op, Box::new(self.unary()?)))
            }
            Some(Tok::Op("(")) => {
                self.pos += 1;
                let e = self.binary(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Node::Num(n))
            }
            Some(Tok::Load(size)) => {
                self.pos += 1;
                self.expect("[")?;
                let e = self.binary(0)?;
                self.expect("]")?;
                Ok(Node::Load(size, Box::new(e)))
            }
            _ => syntax(self.here(), "expected a number, a load (int8[..]) or `(`"),
        }
    }
}

fn parse(s: &str) -> Result<Node> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return syntax(Span::new(0, s.len()), "empty filter expression");
    }
    if toks.len() > crate::parser::MAX_TOKENS {
        return syntax(Span::new(0, s.len()), "expression too long");
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: s.len(),
        depth: 0,
        ops: 0,
    };
    let e = p.binary(0)?;
    if p.pos != p.toks.len() {
        return syntax(
            p.here(),
            "expected an operator or the end of the expression",
        );
    }
    Ok(e)
}

const SIGN: u32 = 0x8000_0000;

struct Gen {
    temps: u32,
}

impl Gen {
    fn temp(&mut self) -> Temp {
        self.temps += 1;
        Temp(self.temps - 1)
    }

    /// A value context: statements computing a temp.
    fn value(&mut self, n: &Node, out: &mut Vec<Stmt>) -> Result<Temp> {
        let t = self.temp();
        match n {
            Node::Num(k) => out.push(Stmt::Mov {
                dst: t,
                src: Operand::K(*k),
            }),
            Node::Load(size, idx) => {
                let i = self.value(idx, out)?;
                out.push(Stmt::Load {
                    dst: t,
                    size: *size,
                    base: Some(i),
                    off: 0,
                });
            }
            Node::Unary(op, x) => {
                let v = self.value(x, out)?;
                out.push(Stmt::Mov {
                    dst: t,
                    src: Operand::T(v),
                });
                match *op {
                    "-" => out.push(Stmt::Neg { dst: t }),
                    "~" => out.push(alu(AluOp::Xor, t, Operand::K(u32::MAX))),
                    _ => {
                        // !x = 1 - ((x | -x) >> 31)
                        self.nonzero(t, out);
                        out.push(alu(AluOp::Xor, t, Operand::K(1)));
                    }
                }
            }
            Node::Bin(op, l, r, span) => {
                let a = self.value(l, out)?;
                let b = self.value(r, out)?;
                out.push(Stmt::Mov {
                    dst: t,
                    src: Operand::T(a),
                });
                let simple = match *op {
                    "+" => Some(AluOp::Add),
                    "-" => Some(AluOp::Sub),
                    "*" => Some(AluOp::Mul),
                    "/" => Some(AluOp::Div),
                    "%" => Some(AluOp::Mod),
                    "&" => Some(AluOp::And),
                    "|" => Some(AluOp::Or),
                    "^" => Some(AluOp::Xor),
                    _ => None,
                };
                if let Some(aop) = simple {
                    if matches!(aop, AluOp::Div | AluOp::Mod) && matches!(**r, Node::Num(0)) {
                        return semantic(*span, "division by zero");
                    }
                    out.push(alu(aop, t, Operand::T(b)));
                    return Ok(t);
                }
                match *op {
                    "&&" | "||" => {
                        self.nonzero(t, out);
                        let u = self.temp();
                        out.push(Stmt::Mov {
                            dst: u,
                            src: Operand::T(b),
                        });
                        self.nonzero(u, out);
                        let aop = if *op == "&&" { AluOp::And } else { AluOp::Or };
                        out.push(alu(aop, t, Operand::T(u)));
                    }
                    "==" | "!=" => {
                        out.push(alu(AluOp::Xor, t, Operand::T(b)));
                        self.nonzero(t, out);
                        if *op == "==" {
                            out.push(alu(AluOp::Xor, t, Operand::K(1)));
                        }
                    }
                    _ => {
                        // Ordered comparisons via the unsigned borrow of a - b (Hacker's
                        // Delight 2-12); signed ones after flipping the sign bits.
                        let (x, y, swap, negate) = self.order(op, t, b, out);
                        let (x, y) = if swap { (y, x) } else { (x, y) };
                        // borrow(x - y) = ((~x & y) | (~(x ^ y) & (x - y))) >> 31
                        let nx = self.temp();
                        out.push(Stmt::Mov {
                            dst: nx,
                            src: Operand::T(x),
                        });
                        out.push(alu(AluOp::Xor, nx, Operand::K(u32::MAX)));
                        let p = self.temp();
                        out.push(Stmt::Mov {
                            dst: p,
                            src: Operand::T(nx),
                        });
                        out.push(alu(AluOp::And, p, Operand::T(y)));
                        let q = self.temp();
                        out.push(Stmt::Mov {
                            dst: q,
                            src: Operand::T(x),
                        });
                        out.push(alu(AluOp::Xor, q, Operand::T(y)));
                        out.push(alu(AluOp::Xor, q, Operand::K(u32::MAX)));
                        let d = self.temp();
                        out.push(Stmt::Mov {
                            dst: d,
                            src: Operand::T(x),
                        });
                        out.push(alu(AluOp::Sub, d, Operand::T(y)));
                        out.push(alu(AluOp::And, q, Operand::T(d)));
                        out.push(alu(AluOp::Or, p, Operand::T(q)));
                        out.push(alu(AluOp::Shr, p, Operand::K(31)));
                        out.push(Stmt::Mov {
                            dst: t,
                            src: Operand::T(p),
                        });
                        if negate {
                            out.push(alu(AluOp::Xor, t, Operand::K(1)));
                        }
                    }
                }
            }
        }
        Ok(t)
    }

    /// For an ordered comparison `t op b`: the operands (sign-flipped when signed), whether to
    /// swap them so the question is `x < y`, and whether to negate the answer.
    fn order(
        &mut self,
        op: &str,
        t: Temp,
        b: Temp,
        out: &mut Vec<Stmt>,
    ) -> (Temp, Temp, bool, bool) {
        let signed = matches!(op, "<" | ">" | "<=" | ">=");
        let (x, y) = if signed {
            let x = self.temp();
            out.push(Stmt::Mov {
                dst: x,
                src: Operand::T(t),
            });
            out.push(alu(AluOp::Xor, x, Operand::K(SIGN)));
            let y = self.temp();
            out.push(Stmt::Mov {
                dst: y,
                src: Operand::T(b),
            });
            out.push(alu(AluOp::Xor, y, Operand::K(SIGN)));
            (x, y)
        } else {
            (t, b)
        };
        // x < y: (x, y); x > y: (y, x); x <= y: !(y < x); x >= y: !(x < y).
        let (swap, negate) = match op {
            "<" | "{" => (false, false),
            ">" | "}" => (true, false),
            "<=" | "{=" => (true, true),
            _ => (false, true),
        };
        (x, y, swap, negate)
    }

    /// `t = (t != 0)` without branches: `(t | -t) >> 31`.
    fn nonzero(&mut self, t: Temp, out: &mut Vec<Stmt>) {
        let n = self.temp();
        out.push(Stmt::Mov {
            dst: n,
            src: Operand::T(t),
        });
        out.push(Stmt::Neg { dst: n });
        out.push(alu(AluOp::Or, t, Operand::T(n)));
        out.push(alu(AluOp::Shr, t, Operand::K(31)));
    }

    /// A boolean context: short-circuit `&&`, `||`, `!`; comparisons as tests; anything else
    /// is true when not zero.
    fn cond(&mut self, n: &Node) -> Result<Cond> {
        match n {
            Node::Bin("&&", l, r, _) => Ok(Cond::and(self.cond(l)?, self.cond(r)?)),
            Node::Bin("||", l, r, _) => Ok(Cond::or(self.cond(l)?, self.cond(r)?)),
            Node::Unary("!", x) => Ok(Cond::negate(self.cond(x)?)),
            Node::Bin(op @ ("==" | "!="), l, r, _) => {
                let mut stmts = Vec::new();
                let a = self.value(l, &mut stmts)?;
                let b = self.value(r, &mut stmts)?;
                let t = Cond::Test(Test {
                    stmts,
                    cmp: Cmp::Eq,
                    a,
                    b: Operand::T(b),
                });
                Ok(if *op == "!=" { Cond::negate(t) } else { t })
            }
            Node::Bin(op @ ("<" | ">" | "<=" | ">=" | "{" | "}" | "{=" | "}="), l, r, _) => {
                let mut stmts = Vec::new();
                let a = self.value(l, &mut stmts)?;
                let b = self.value(r, &mut stmts)?;
                let (x, y, swap, negate) = self.order(op, a, b, &mut stmts);
                // x < y  <=>  y > x (unsigned).
                let (x, y) = if swap { (y, x) } else { (x, y) };
                let t = Cond::Test(Test {
                    stmts,
                    cmp: Cmp::Gt,
                    a: y,
                    b: Operand::T(x),
                });
                Ok(if negate { Cond::negate(t) } else { t })
            }
            other => {
                let mut stmts = Vec::new();
                let v = self.value(other, &mut stmts)?;
                Ok(Cond::negate(Cond::Test(Test {
                    stmts,
                    cmp: Cmp::Eq,
                    a: v,
                    b: Operand::K(0),
                })))
            }
        }
    }
}

fn alu(op: AluOp, dst: Temp, rhs: Operand) -> Stmt {
    Stmt::Alu { op, dst, rhs }
}

/// Parses a bfdmux expression and lowers it to the IR.
pub fn lower(expr: &str) -> Result<Function> {
    let ast = parse(expr)?;
    let mut g = Gen { temps: 0 };
    let cond = g.cond(&ast)?;
    Ok(crate::ir::lower(cond, &[], g.temps))
}
