//! The intermediate representation: a control-flow graph of blocks over virtual registers.
//!
//! Code generation ([`crate::gencode`]) first builds a [`Cond`]: the boolean structure of
//! tests that libpcap's `gen_and`/`gen_or`/`gen_not` would build, each test carrying the
//! statements that compute what it compares. [`lower`] turns a `Cond` into a [`Function`]: a
//! graph of [`Block`]s, each a list of [`Stmt`]s ending in a two-way branch, a jump, accept or
//! reject. The optimizer ([`crate::opt`]) rewrites the graph; [`crate::codegen`] allocates
//! registers and emits VM instructions.
//!
//! Invariants every pass keeps:
//! * the graph is acyclic and block 0 is the entry (so forward-only VM jumps can express it);
//! * every temp is written on every path before it is read;
//! * a load may fail (the frame is too short) and then ends the run with reject, so a load is
//!   an effect: no pass removes or reorders a load unless it proves the load cannot fail.

use std::fmt;

/// A virtual register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Temp(pub u32);

/// A block's index in [`Function::blocks`].
pub type BlockId = usize;

/// Width of a frame load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 byte.
    B,
    /// 2 bytes.
    H,
    /// 4 bytes.
    W,
}

impl Size {
    /// The width in bytes.
    pub fn bytes(self) -> u32 {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
        }
    }

    /// The size for 1, 2 or 4 bytes.
    pub fn from_bytes(n: u32) -> Option<Size> {
        match n {
            1 => Some(Size::B),
            2 => Some(Size::H),
            4 => Some(Size::W),
            _ => None,
        }
    }
}

/// A temp or a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A temp.
    T(Temp),
    /// A constant.
    K(u32),
}

/// A two-address ALU operation (`dst = dst op rhs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum AluOp {
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

impl AluOp {
    /// Evaluates the operation as the VM does; `None` where the VM rejects (division by 0).
    pub fn eval(self, a: u32, b: u32) -> Option<u32> {
        Some(match self {
            AluOp::Add => a.wrapping_add(b),
            AluOp::Sub => a.wrapping_sub(b),
            AluOp::Mul => a.wrapping_mul(b),
            AluOp::Div => a.checked_div(b)?,
            AluOp::Mod => a.checked_rem(b)?,
            AluOp::And => a & b,
            AluOp::Or => a | b,
            AluOp::Xor => a ^ b,
            AluOp::Shl => {
                if b < 32 {
                    a << b
                } else {
                    0
                }
            }
            AluOp::Shr => {
                if b < 32 {
                    a >> b
                } else {
                    0
                }
            }
        })
    }
}

/// A statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `dst = frame[base + off .. +size]` (big-endian); rejects the frame if out of bounds.
    Load {
        /// Destination.
        dst: Temp,
        /// Width.
        size: Size,
        /// Register part of the address, if any.
        base: Option<Temp>,
        /// Constant part of the address.
        off: u32,
    },
    /// `dst = wire length`.
    Len {
        /// Destination.
        dst: Temp,
    },
    /// `dst = src`.
    Mov {
        /// Destination.
        dst: Temp,
        /// Source.
        src: Operand,
    },
    /// `dst = dst op rhs`; division by a zero temp rejects the frame.
    Alu {
        /// The operation.
        op: AluOp,
        /// Destination and left operand.
        dst: Temp,
        /// Right operand.
        rhs: Operand,
    },
    /// `dst = -dst`.
    Neg {
        /// Destination and operand.
        dst: Temp,
    },
}

impl Stmt {
    /// The temp written.
    pub fn def(&self) -> Temp {
        match self {
            Stmt::Load { dst, .. }
            | Stmt::Len { dst }
            | Stmt::Mov { dst, .. }
            | Stmt::Alu { dst, .. }
            | Stmt::Neg { dst } => *dst,
        }
    }

    /// The temps read (at most two), without allocating: the optimizer asks this of every
    /// statement in every pass.
    pub fn uses(&self) -> impl Iterator<Item = Temp> + Clone {
        let op = |o: &Operand| match o {
            Operand::T(t) => Some(*t),
            Operand::K(_) => None,
        };
        let (a, b) = match self {
            Stmt::Load { base, .. } => (*base, None),
            Stmt::Len { .. } => (None, None),
            Stmt::Mov { src, .. } => (op(src), None),
            Stmt::Alu { dst, rhs, .. } => (Some(*dst), op(rhs)),
            Stmt::Neg { dst } => (Some(*dst), None),
        };
        a.into_iter().chain(b)
    }

    /// Whether the statement can end the run (a load out of bounds, a division by zero).
    pub fn may_reject(&self) -> bool {
        match self {
            Stmt::Load { .. } => true,
            Stmt::Alu {
                op: AluOp::Div | AluOp::Mod,
                rhs,
                ..
            } => !matches!(rhs, Operand::K(k) if *k != 0),
            _ => false,
        }
    }
}

/// A comparison a branch makes (unsigned, as the VM's jumps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmp {
    /// `a == b`
    Eq,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// `a & b != 0`
    Set,
}

impl Cmp {
    /// Evaluates the comparison.
    pub fn eval(self, a: u32, b: u32) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Set => a & b != 0,
        }
    }
}

/// How a block ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    /// Go to `t` if `a cmp b`, else to `f`.
    Branch {
        /// The comparison.
        cmp: Cmp,
        /// Left operand.
        a: Temp,
        /// Right operand.
        b: Operand,
        /// Successor when true.
        t: BlockId,
        /// Successor when false.
        f: BlockId,
    },
    /// Go to a block.
    Jump(BlockId),
    /// Accept the frame.
    Accept,
    /// Reject the frame.
    Reject,
}

/// A basic block.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// Statements, in order.
    pub stmts: Vec<Stmt>,
    /// How it ends.
    pub term: Term,
}

impl Term {
    /// The successors, true first (without allocating).
    pub fn succs(&self) -> impl Iterator<Item = BlockId> {
        let (a, b) = match *self {
            Term::Branch { t, f, .. } => (Some(t), Some(f)),
            Term::Jump(b) => (Some(b), None),
            Term::Accept | Term::Reject => (None, None),
        };
        a.into_iter().chain(b)
    }

    /// The temps a branch reads (at most two), without allocating.
    pub fn uses(&self) -> impl Iterator<Item = Temp> {
        let (a, b) = match *self {
            Term::Branch {
                a,
                b: Operand::T(t),
                ..
            } => (Some(a), Some(t)),
            Term::Branch { a, .. } => (Some(a), None),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }
}

impl Block {
    /// The successors (without allocating: this is called in every pass's inner loop).
    pub fn succs(&self) -> impl Iterator<Item = BlockId> {
        self.term.succs()
    }
}

/// Reverse post-order by depth-first search from `entry` over blocks `0..n`, visiting the
/// successors `succ(b, i)` gives in order (true first), into `post`; `state` and `stack` are
/// scratch space. Any acyclic graph.
pub fn dfs_order_into(
    n: usize,
    entry: BlockId,
    succ: impl Fn(BlockId, usize) -> Option<BlockId>,
    post: &mut Vec<BlockId>,
    state: &mut Vec<u8>,
    stack: &mut Vec<(BlockId, usize)>,
) {
    post.clear();
    if entry >= n {
        return;
    }
    state.clear();
    state.resize(n, 0); // 0 new, 1 on stack, 2 done
    stack.clear();
    stack.push((entry, 0));
    state[entry] = 1;
    while let Some(&mut (b, ref mut i)) = stack.last_mut() {
        if let Some(s) = succ(b, *i) {
            *i += 1;
            if s < n && state[s] == 0 {
                state[s] = 1;
                stack.push((s, 0));
            }
        } else {
            state[b] = 2;
            post.push(b);
            stack.pop();
        }
    }
    post.reverse();
}

/// A filter as a control-flow graph; block 0 is the entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Function {
    /// The blocks.
    pub blocks: Vec<Block>,
    /// How many temps are in use (`Temp(0)..Temp(n)`).
    pub num_temps: u32,
}

impl Function {
    /// Blocks reachable from the entry, in an order where every edge goes forward.
    pub fn topo_order(&self) -> Vec<BlockId> {
        self.topo_order_from(0)
    }

    /// Blocks reachable from `entry`, in an order where every edge goes forward.
    ///
    /// After [`Function::compact`] every edge goes from a lower to a higher index, and the
    /// passes keep it so (they only redirect an edge to a block further along); then the
    /// reachable blocks in index order are the answer, found in one pass without a stack.
    pub fn topo_order_from(&self, entry: BlockId) -> Vec<BlockId> {
        let mut order = Vec::new();
        self.topo_order_into(entry, &mut order, &mut Vec::new());
        order
    }

    /// As [`Function::topo_order_from`], into `order`, with `reach` as scratch space (the
    /// optimizer asks for the order in every pass and reuses both).
    pub fn topo_order_into(&self, entry: BlockId, order: &mut Vec<BlockId>, reach: &mut Vec<bool>) {
        if !self.forward_order_into(entry, order, reach) {
            *order = self.dfs_order_from(entry);
        }
    }

    /// The reachable blocks in index order into `order`; false if some reachable edge goes
    /// backwards.
    fn forward_order_into(
        &self,
        entry: BlockId,
        order: &mut Vec<BlockId>,
        reach: &mut Vec<bool>,
    ) -> bool {
        let n = self.blocks.len();
        order.clear();
        if entry >= n {
            return true;
        }
        reach.clear();
        reach.resize(n, false);
        reach[entry] = true;
        for b in entry..n {
            if !reach[b] {
                continue;
            }
            order.push(b);
            for s in self.blocks[b].succs() {
                if s <= b || s >= n {
                    return false;
                }
                reach[s] = true;
            }
        }
        true
    }

    /// Reverse post-order by depth-first search from `entry`, true successors first (any
    /// acyclic graph).
    pub fn dfs_order_from(&self, entry: BlockId) -> Vec<BlockId> {
        let mut post = Vec::with_capacity(self.blocks.len());
        dfs_order_into(
            self.blocks.len(),
            entry,
            |b, i| self.blocks[b].succs().nth(i),
            &mut post,
            &mut Vec::new(),
            &mut Vec::new(),
        );
        post
    }

    /// Predecessor counts of reachable blocks.
    pub fn pred_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.blocks.len()];
        for b in self.topo_order() {
            for s in self.blocks[b].succs() {
                c[s] += 1;
            }
        }
        c
    }

    /// A fresh temp.
    pub fn temp(&mut self) -> Temp {
        self.num_temps += 1;
        Temp(self.num_temps - 1)
    }

    /// Adds a block and returns its id.
    pub fn add(&mut self, stmts: Vec<Stmt>, term: Term) -> BlockId {
        self.blocks.push(Block { stmts, term });
        self.blocks.len() - 1
    }

    /// Keeps only reachable blocks, renumbered in topological order (entry stays 0); says
    /// whether that changed anything.
    pub fn compact(&mut self) -> bool {
        self.compact_from(0)
    }

    /// Keeps only blocks reachable from `entry`, renumbered in topological order with `entry`
    /// as the new block 0; says whether that changed anything.
    pub fn compact_from(&mut self, entry: BlockId) -> bool {
        let order = self.topo_order_from(entry);
        self.renumber(&order)
    }

    /// As [`Function::compact`], with `order` and `reach` as scratch space.
    pub fn compact_with(&mut self, order: &mut Vec<BlockId>, reach: &mut Vec<bool>) -> bool {
        self.topo_order_into(0, order, reach);
        self.renumber(order)
    }

    /// Keeps the blocks in `order` (a topological order of the reachable blocks), renumbered.
    fn renumber(&mut self, order: &[BlockId]) -> bool {
        if order.len() == self.blocks.len() && order.iter().enumerate().all(|(i, &b)| i == b) {
            // Already compact: every block reachable, in order.
            return false;
        }
        let mut map = vec![usize::MAX; self.blocks.len()];
        for (new, &old) in order.iter().enumerate() {
            map[old] = new;
        }
        let mut blocks = Vec::with_capacity(order.len());
        for &old in order {
            let mut b = std::mem::replace(
                &mut self.blocks[old],
                Block {
                    stmts: Vec::new(),
                    term: Term::Reject,
                },
            );
            match &mut b.term {
                Term::Branch { t, f, .. } => {
                    *t = map[*t];
                    *f = map[*f];
                }
                Term::Jump(j) => *j = map[*j],
                _ => {}
            }
            blocks.push(b);
        }
        self.blocks = blocks;
        true
    }
}

fn fmt_op(o: &Operand) -> String {
    match o {
        Operand::T(t) => format!("t{}", t.0),
        Operand::K(k) => format!("{k:#x}"),
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.blocks.iter().enumerate() {
            writeln!(f, "b{i}:")?;
            for s in &b.stmts {
                match s {
                    Stmt::Load {
                        dst,
                        size,
                        base,
                        off,
                    } => match base {
                        Some(r) => writeln!(f, "  t{} = {size:?}[t{} + {off}]", dst.0, r.0)?,
                        None => writeln!(f, "  t{} = {size:?}[{off}]", dst.0)?,
                    },
                    Stmt::Len { dst } => writeln!(f, "  t{} = len", dst.0)?,
                    Stmt::Mov { dst, src } => writeln!(f, "  t{} = {}", dst.0, fmt_op(src))?,
                    Stmt::Alu { op, dst, rhs } => {
                        writeln!(f, "  t{} {op:?}= {}", dst.0, fmt_op(rhs))?
                    }
                    Stmt::Neg { dst } => writeln!(f, "  t{} = -t{}", dst.0, dst.0)?,
                }
            }
            match &b.term {
                Term::Branch { cmp, a, b, t, f: e } => {
                    writeln!(f, "  if t{} {cmp:?} {} then b{t} else b{e}", a.0, fmt_op(b))?
                }
                Term::Jump(j) => writeln!(f, "  goto b{j}")?,
                Term::Accept => writeln!(f, "  accept")?,
                Term::Reject => writeln!(f, "  reject")?,
            }
        }
        Ok(())
    }
}

/// One test: statements, then a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Test {
    /// What to compute first.
    pub stmts: Vec<Stmt>,
    /// The comparison.
    pub cmp: Cmp,
    /// Left operand.
    pub a: Temp,
    /// Right operand.
    pub b: Operand,
}

/// A piece of control flow with a true exit and a false exit, built by a callback once the
/// exits are known (used for `protochain` and `geneve`, which are more than a tree of tests).
///
/// A fragment should add each block after the blocks it jumps to, as [`lower`] does for
/// everything else: then the lowered function's edges all go forward. One that does not still
/// compiles correctly, only through a slower depth-first sort.
pub trait Fragment: fmt::Debug {
    /// Adds the fragment's blocks to `func`, exiting to `t` or `f`; returns its entry.
    fn build(&self, func: &mut Function, t: BlockId, f: BlockId) -> BlockId;
}

/// The boolean structure of tests.
#[derive(Debug)]
pub enum Cond {
    /// Always true.
    True,
    /// Run these statements, then true.
    Stmts(Vec<Stmt>),
    /// One test.
    Test(Test),
    /// `first op1 c1 op2 c2 ...` evaluated left to right, short-circuit.
    Chain(Box<Cond>, Vec<(ChainOp, Cond)>),
    /// Negation.
    Not(Box<Cond>),
    /// A custom piece of control flow.
    Frag(Box<dyn Fragment>),
}

/// `and` / `or` in a [`Cond::Chain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainOp {
    /// Both.
    And,
    /// Either.
    Or,
}

impl Cond {
    /// `a and b` (a evaluated first).
    pub fn and(a: Cond, b: Cond) -> Cond {
        Cond::chain(a, ChainOp::And, b)
    }

    /// `a or b` (a evaluated first).
    pub fn or(a: Cond, b: Cond) -> Cond {
        Cond::chain(a, ChainOp::Or, b)
    }

    /// `a op b`: a chain evaluates left to right (`((c0 op1 c1) op2 c2)`), so when `a` is
    /// already a chain, `op b` joins it instead of nesting it.
    fn chain(a: Cond, op: ChainOp, b: Cond) -> Cond {
        match a {
            Cond::Chain(first, mut rest) => {
                rest.push((op, b));
                Cond::Chain(first, rest)
            }
            a => Cond::Chain(Box::new(a), vec![(op, b)]),
        }
    }

    /// `not a`.
    pub fn negate(a: Cond) -> Cond {
        Cond::Not(Box::new(a))
    }
}

/// Adds the blocks for `c` exiting to `t`/`f` and returns its entry block (the statements
/// move into the blocks).
fn lower_cond(func: &mut Function, c: Cond, t: BlockId, f: BlockId) -> BlockId {
    match c {
        Cond::True => t,
        Cond::Stmts(stmts) => func.add(stmts, Term::Jump(t)),
        Cond::Test(test) => func.add(
            test.stmts,
            Term::Branch {
                cmp: test.cmp,
                a: test.a,
                b: test.b,
                t,
                f,
            },
        ),
        Cond::Not(inner) => lower_cond(func, *inner, f, t),
        Cond::Frag(frag) => frag.build(func, t, f),
        Cond::Chain(first, rest) => {
            // ((c0 op1 c1) op2 c2) ... : build from the last operand backwards, iteratively.
            let (mut t, mut f) = (t, f);
            for (op, c) in rest.into_iter().rev() {
                let entry = lower_cond(func, c, t, f);
                match op {
                    ChainOp::And => t = entry,
                    ChainOp::Or => f = entry,
                }
            }
            lower_cond(func, *first, t, f)
        }
    }
}

/// Lowers a condition to a function that accepts when it holds.
pub fn lower(c: Cond, prologue: &[Stmt], num_temps: u32) -> Function {
    let mut func = Function {
        // Room for a typical filter, so the vector does not grow (and move) step by step.
        blocks: Vec::with_capacity(32),
        num_temps,
    };
    let accept = func.add(vec![], Term::Accept);
    let reject = func.add(vec![], Term::Reject);
    let entry = lower_cond(&mut func, c, accept, reject);
    // The entry: the prologue, then a jump to the condition's entry.
    func.add(prologue.to_vec(), Term::Jump(entry));
    // Every block was added after its successors (fragments aside), so in reverse order the
    // entry comes first and edges go forward: what the optimizer wants, without a sort.
    func.blocks.reverse();
    let last = func.blocks.len() - 1;
    for b in &mut func.blocks {
        match &mut b.term {
            Term::Branch { t, f, .. } => {
                *t = last - *t;
                *f = last - *f;
            }
            Term::Jump(j) => *j = last - *j,
            Term::Accept | Term::Reject => {}
        }
    }
    func
}
