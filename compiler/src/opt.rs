//! The optimizer: rewrites of the IR that never change a verdict.
//!
//! Passes, repeated until nothing changes (bounded by [`MAX_ROUNDS`]):
//!
//! 1. **Constant folding**: constants are propagated through moves and ALU operations, branches
//!    between constants are decided, `x & 0` and `x * 0` become 0 and `x + 0` (and `| ^ << >>`
//!    by 0) disappear, as in libpcap. A division or modulus by a constant zero, or a shift by
//!    a constant of 32 or more, is left to reject (or give 0) at run time: [`libpcap_errors`]
//!    says where libpcap's optimizer reports one instead.
//! 2. **Decided tests**: a forward data-flow over the acyclic graph records, for each value
//!    computed from the frame (a `Key`: loads at constant offsets, loads at computed offsets
//!    such as a port after the IPv4 header, the length, and arithmetic on them), which tests
//!    every path so far took and with what outcome. A branch those facts decide becomes a
//!    jump. The reasoning is libpcap's (`fold_edge`): the same test gives the same result, and
//!    a value known equal to `v` decides every `==`.
//!
//! [`libpcap_rejects_all`] runs the same passes with libpcap's extra, verdict-changing folds
//! (`0 / x` is 0) to predict when libpcap refuses a filter as "rejects all packets", and
//! [`libpcap_errors`] runs them as libpcap's first loop sees the program, then follows its
//! second loop pass by pass, to predict where it reports a division by zero. In those runs the
//! passes also do what only libpcap's first loop does: move edges bottom-up past tests whose
//! branches meet, and reorder chains of tests (`or_pullup`, `and_pullup`). Both are
//! predictions (a model of libpcap's optimizer built from our passes, not its algorithm), and
//! the random differential test fails on an expression where one is wrong.
//! 3. **Jump threading**: an edge into a block that only re-loads fields already loaded on that
//!    path (so the loads cannot fail) and whose test the edge's facts decide is redirected to
//!    the decided successor. This removes libpcap's repeated `ldh [12]; jeq #0x800`.
//! 4. **Dead code**: statements whose results are never used are removed when they cannot
//!    reject (pure arithmetic, loads proven in bounds); a branch whose two successors are equal
//!    becomes a jump (not in the probes: libpcap keeps such a test until every edge into it
//!    has moved past); a block every path out of which rejects becomes `reject` (even its
//!    loads: a failing load would reject too); unreachable blocks go.
//!
//! After those rounds settle, once:
//!
//! 5. **Redundant loads and computations** (`reuse_values`, libpcap's value numbering on our
//!    temps): a statement computing a value some temp already holds on every path to it (the
//!    ethertype after `jeq #0x86dd` failed, `4 * (ip[0] & 0xf)` for the second port field)
//!    becomes a move from that temp; writes that leaves unread are dropped and the moves are
//!    propagated away.
//!
//! Verdict preservation rests on one rule: a statement that may reject (a load that could be
//! out of bounds, a division by a register) is never removed or skipped unless the only
//! possible outcome of the code after it is reject anyway.

use std::hash::{BuildHasherDefault, Hasher};

use crate::ir::*;

/// A small, fast, non-cryptographic hasher (the Fx hash of rustc and Firefox): the optimizer
/// hashes only its own small integer keys, never attacker-chosen data in bulk, so SipHash's
/// flooding resistance buys nothing here and costs most of the optimizer's time.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Upper bound on optimizer rounds (each round is linear in the program; real filters settle
/// in two or three).
pub const MAX_ROUNDS: usize = 12;

/// How many decided blocks one edge is threaded through in one pass.
const MAX_HOPS: usize = 8;

/// What libpcap's optimizer would report ([`libpcap_errors`]): it refuses such a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptError {
    /// A division by a constant zero, in a block libpcap still processes when it knows it.
    DivisionByZero,
    /// A modulus by a constant zero, likewise.
    ModulusByZero,
    /// A shift of an unknown value by a constant of 32 or more, likewise.
    ShiftTooLarge,
}

/// Optimizes `func` in place.
pub fn optimize(func: &mut Function) {
    let mut scratch = Scratch::take();
    let settled = run_passes(func, Mode::Sound, &mut scratch);
    // At a fixed point of the rounds, dead-code removal and compaction would change nothing
    // unless value numbering took the last read of some temp; and value numbering changes no
    // branch, so only dead code found after it can leave blocks to compact.
    let reused = reuse_values(func, &mut scratch);
    let removed =
        (reused == Reused::LostReads || !settled) && remove_dead(func, &mut scratch, false);
    if removed || !settled {
        func.compact_with(&mut scratch.order, &mut scratch.reach);
    }
    scratch.give_back();
}

/// Whether [`libpcap_errors`] could find anything in `func`: only a division, modulus or shift
/// by a temp (which may hold a constant), or a division or modulus by a constant zero, can be
/// reported (a shift by a constant of 32 or more is let through too, and never reported: the
/// parser refuses the literal one and libpcap's `op #k` does not check shifts).
pub fn may_report_errors(func: &Function) -> bool {
    func.blocks.iter().any(|b| {
        b.stmts.iter().any(|s| match *s {
            Stmt::Alu {
                op: AluOp::Div | AluOp::Mod,
                rhs,
                ..
            } => !matches!(rhs, Operand::K(k) if k != 0),
            Stmt::Alu {
                op: AluOp::Shl | AluOp::Shr,
                rhs,
                ..
            } => !matches!(rhs, Operand::K(k) if k < 32),
            _ => false,
        })
    })
}

/// What libpcap's optimizer reports for `func` (unoptimized): a division or modulus by a
/// constant zero, or a shift of an unknown value by a constant of 32 or more.
///
/// libpcap finds these only in its second loop, which folds arithmetic, and only in the blocks
/// its first loop leaves: that loop moves edges and skips blocks, but knows no operator's
/// result, so it decides only tests between constants that are moved, never computed. The
/// passes here do what the first loop does (`Mode::FirstLoop`), and `report_as_libpcap` then
/// follows the second loop pass by pass.
pub fn libpcap_errors(func: &Function) -> Result<(), OptError> {
    let mut f = func.clone();
    as_libpcap_jset(&mut f);
    let mut scratch = Scratch::take();
    run_passes(&mut f, Mode::FirstLoop, &mut scratch);
    scratch.give_back();
    drop_blocks_libpcap_skips(&mut f);
    report_as_libpcap(&f)
}

/// libpcap's `opt_peep` turns `and #k; jeq #0` into `jset #k`, its branches swapped, when
/// nothing after the test reads the masked value; it does so before its first loop moves any
/// edge (and `jset #0` into a jump: `net 0.0.0.0/0` is decided there). To `fold_edge` that
/// test is then unrelated to `and #k; jeq #v` on the same field: after `mpls` tests the
/// bottom-of-stack bit set, `mpls 16` testing it clear is not decided. The probes rewrite these
/// tests the same way (not `jset #0xffffffff`, which libpcap takes as always true: gencode
/// never masks with all ones).
fn as_libpcap_jset(func: &mut Function) {
    let mut reads = vec![0u32; func.num_temps as usize];
    for b in &func.blocks {
        for t in b.stmts.iter().flat_map(Stmt::uses).chain(b.term.uses()) {
            if let Some(r) = reads.get_mut(t.0 as usize) {
                *r += 1;
            }
        }
    }
    for b in &mut func.blocks {
        if let Term::Branch {
            cmp: Cmp::Eq,
            a,
            b: Operand::K(0),
            t,
            f,
        } = b.term
        {
            // Read twice: by the `and` itself and by the test.
            if let Some(&Stmt::Alu {
                op: AluOp::And,
                dst,
                rhs: Operand::K(m),
            }) = b.stmts.last()
            {
                if dst == a && reads.get(a.0 as usize) == Some(&2) {
                    b.stmts.pop();
                    b.term = if m == 0 {
                        // `jset #0` is never true: `opt_peep` joins its branches at once.
                        Term::Jump(t)
                    } else {
                        Term::Branch {
                            cmp: Cmp::Set,
                            a,
                            b: Operand::K(m),
                            t: f,
                            f: t,
                        }
                    };
                }
            }
        }
    }
}

/// A value libpcap's second optimizer loop learns: `v`, known from its pass `pass` on (0 is
/// its first).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Known {
    v: u32,
    pass: u32,
}

/// Follows libpcap's second optimizer loop (`opt_stmt` with `alter`, `opt_peep`) over `func`
/// and reports its first error. Each pass of that loop folds what it knows and rewrites the
/// rest, and some rewrites are only seen by the next pass: `x & y`, y known to be 0 and x not,
/// becomes `x & #0` in one pass and 0 in the next. So each value carries the pass from which
/// it is known, and an error counts only if its block is still reached in that pass (a test
/// decided in pass p cuts its dead side off from pass p + 1).
///
/// Approximations: where paths join, a value is known only as all of them know it, even after
/// an edge was cut off (libpcap may then know it from the live edges alone); and of two errors
/// in the same pass, the first in our block order is reported (libpcap's order is by level).
fn report_as_libpcap(func: &Function) -> Result<(), OptError> {
    // libpcap stops at the first error it meets: of the earliest pass, in a block processed
    // in that pass (through `last`).
    fn note(first: &mut Option<(u32, OptError)>, last: u32, pass: u32, e: OptError) {
        if pass <= last && first.as_ref().is_none_or(|&(p, _)| pass < p) {
            *first = Some((pass, e));
        }
    }
    type State = Vec<Option<Known>>;
    let n = func.blocks.len();
    let temps = func.num_temps as usize;
    let mut at_entry: Vec<Option<State>> = vec![None; n];
    // The last pass in which each block is processed.
    let mut until: Vec<u32> = vec![0; n];
    if n == 0 {
        return Ok(());
    }
    at_entry[0] = Some(vec![None; temps]);
    until[0] = u32::MAX;
    let mut first: Option<(u32, OptError)> = None;
    let get = |st: &State, t: Temp| st.get(t.0 as usize).copied().flatten();
    // A constant operand is known from the first pass.
    let known = |st: &State, o: Operand| match o {
        Operand::K(v) => Some(Known { v, pass: 0 }),
        Operand::T(t) => get(st, t),
    };
    let set = |st: &mut State, t: Temp, k: Option<Known>| {
        if let Some(slot) = st.get_mut(t.0 as usize) {
            *slot = k;
        }
    };
    let div_err = |op: AluOp| {
        if op == AluOp::Div {
            OptError::DivisionByZero
        } else {
            OptError::ModulusByZero
        }
    };
    for b in func.topo_order() {
        let Some(mut st) = at_entry[b].take() else {
            continue;
        };
        let last = until[b];
        for s in &func.blocks[b].stmts {
            match *s {
                Stmt::Mov { dst, src } => {
                    let k = known(&st, src);
                    set(&mut st, dst, k);
                }
                Stmt::Load { dst, .. } | Stmt::Len { dst } => set(&mut st, dst, None),
                Stmt::Neg { dst } => {
                    let k = get(&st, dst).map(|k| Known {
                        v: k.v.wrapping_neg(),
                        pass: k.pass,
                    });
                    set(&mut st, dst, k);
                }
                Stmt::Alu { op, dst, rhs } => {
                    let a = get(&st, dst);
                    let zero_op = matches!(
                        op,
                        AluOp::Mul | AluOp::Div | AluOp::Mod | AluOp::And | AluOp::Shl | AluOp::Shr
                    );
                    let shift = matches!(op, AluOp::Shl | AluOp::Shr);
                    // An operand given as a constant: libpcap's `op #k`, as after the rewrite
                    // below, from before its first pass.
                    let (x, k_form) = (known(&st, rhs), matches!(rhs, Operand::K(_)));
                    let r = match (a, x) {
                        // `0 op x` before x is known: 0 (x for `+ | ^`, `0 - x` once x is
                        // known), and nothing to report.
                        (Some(a), x)
                            if a.v == 0 && !k_form && x.is_none_or(|x| a.pass < x.pass) =>
                        {
                            if zero_op {
                                Some(a)
                            } else if matches!(op, AluOp::Add | AluOp::Or | AluOp::Xor) {
                                x
                            } else {
                                x.map(|x| Known {
                                    v: op.eval(0, x.v).unwrap_or(0),
                                    pass: x.pass,
                                })
                            }
                        }
                        (_, None) => None,
                        // x known no earlier than the left side: folded in x's pass, a
                        // division by zero is reported and a shift by 32 or more gives 0.
                        (Some(a), Some(x)) if !k_form && a.pass <= x.pass => {
                            match op.eval(a.v, x.v) {
                                Some(v) => Some(Known { v, pass: x.pass }),
                                None => {
                                    note(&mut first, last, x.pass, div_err(op));
                                    None
                                }
                            }
                        }
                        // x known first: the operation becomes `op #k` in that pass, which
                        // reports a shift by more than 31; the next pass reduces `op #0`.
                        (a, Some(x)) => {
                            let next = if k_form { 0 } else { x.pass + 1 };
                            if shift && x.v > 31 && !k_form {
                                note(&mut first, last, x.pass, OptError::ShiftTooLarge);
                            }
                            match (x.v, op) {
                                (0, AluOp::Div | AluOp::Mod) => {
                                    note(&mut first, last, next, div_err(op));
                                    None
                                }
                                (0, AluOp::Mul | AluOp::And) => Some(Known { v: 0, pass: next }),
                                (
                                    0,
                                    AluOp::Add | AluOp::Or | AluOp::Xor | AluOp::Shl | AluOp::Shr,
                                ) => a,
                                _ => a.and_then(|a| {
                                    op.eval(a.v, x.v).map(|v| Known {
                                        v,
                                        pass: a.pass.max(next),
                                    })
                                }),
                            }
                        }
                    };
                    set(&mut st, dst, r);
                }
            }
        }
        let term = &func.blocks[b].term;
        // A test between known values is decided in the pass both are known; its dead side is
        // still processed in that pass, not after.
        let decided = match *term {
            Term::Branch {
                cmp,
                a,
                b: rhs,
                t,
                f,
            } => match (get(&st, a), known(&st, rhs)) {
                (Some(a), Some(x)) => {
                    let dead = if cmp.eval(a.v, x.v) { f } else { t };
                    Some((dead, a.pass.max(x.pass)))
                }
                _ => None,
            },
            _ => None,
        };
        for s in term.succs() {
            let reach = match decided {
                Some((dead, pass)) if dead == s && !term.succs().all(|x| x == dead) => {
                    last.min(pass)
                }
                _ => last,
            };
            until[s] = until[s].max(reach);
            at_entry[s] = Some(match at_entry[s].take() {
                None => st.clone(),
                Some(prev) => prev
                    .iter()
                    .zip(&st)
                    .map(|(p, q)| match (p, q) {
                        (Some(p), Some(q)) if p.v == q.v => Some(Known {
                            v: p.v,
                            pass: p.pass.max(q.pass),
                        }),
                        _ => None,
                    })
                    .collect(),
            });
        }
    }
    first.map_or(Ok(()), |(_, e)| Err(e))
}

/// A temp no statement writes: its value is never known. [`libpcap_rejects_all`] adds it to
/// hide a value from the passes, which count it as shared by every block.
const UNKNOWN: Temp = Temp(u32::MAX);

/// Empties the blocks libpcap's optimizer skips, so that what they compute is not reported.
/// libpcap redirects an edge into a block whose branches both go to the same place past it
/// (`opt_j`), unless what the block computes is used there (`use_conflict`), and deletes the
/// statements no test uses. The passes may leave such a block (the optimizer proper keeps one
/// that can reject the frame: skipping it would change the verdict). Blocks are
/// numbered in topological order here, so one pass from the last block back finds them all,
/// a block whose branches meet again only past skipped blocks included. Each temp a kept block
/// reads, or a later one, is kept live.
fn drop_blocks_libpcap_skips(func: &mut Function) {
    let n = func.blocks.len();
    // Where a skipped block leads: itself if kept.
    let mut lead: Vec<BlockId> = (0..n).collect();
    // Temps read in each block or after it.
    let mut read_after: Vec<std::collections::HashSet<Temp>> = vec![Default::default(); n];
    // libpcap's root: the entry, or the block empty jumps from it lead to. libpcap never
    // skips it (no edge leads there to redirect): it folds its statements in the second loop
    // and drops it only at the very end (`opt_root`).
    let mut root = 0;
    while let Some(Block {
        stmts,
        term: Term::Jump(next),
    }) = func.blocks.get(root)
    {
        if !stmts.is_empty() || *next <= root {
            break;
        }
        root = *next;
    }
    for b in (0..n).rev() {
        let blk = &func.blocks[b];
        let mut reads: std::collections::HashSet<Temp> = Default::default();
        let mut to = None;
        let mut same = true;
        for s in blk.term.succs() {
            if s <= b || s >= n {
                // Not the forward numbering this relies on: skip nothing.
                return;
            }
            reads.extend(read_after[s].iter().copied());
            match to {
                None => to = Some(lead[s]),
                Some(t) => same &= t == lead[s],
            }
        }
        if let Some(next) = to.filter(|_| same && b != root) {
            let used = blk
                .stmts
                .iter()
                .any(|st| read_after[next].contains(&st.def()));
            if !used {
                lead[b] = next;
                read_after[b] = read_after[next].clone();
                continue;
            }
        }
        reads.extend(blk.term.uses());
        for st in blk.stmts.iter().rev() {
            reads.remove(&st.def());
            reads.extend(st.uses());
        }
        read_after[b] = reads;
    }
    for (b, blk) in func.blocks.iter_mut().enumerate() {
        if lead[b] != b {
            blk.stmts.clear();
        }
    }
}

/// Runs the rounds; says whether they reached a fixed point (rather than the round limit).
fn run_passes(func: &mut Function, mode: Mode, scratch: &mut Scratch) -> bool {
    func.compact_with(&mut scratch.order, &mut scratch.reach);
    for _ in 0..MAX_ROUNDS {
        // Each pass says whether it changed the function; a round that changed nothing is a
        // fixed point (the passes are deterministic), so the rounds stop there.
        // The modes that follow libpcap also follow it in keeping facts per block (its
        // `fold_edge` learns only from dominating edges) and in deleting any statement nothing
        // reads, loads and divisions included.
        // They also reorder tests as libpcap's pullups do, on the graph the pass started with.
        let like_libpcap = mode != Mode::Sound;
        let start = like_libpcap.then(|| PassStart::of(func));
        let folds = may_fold(func);
        let folded = folds && fold_constants(func, mode);
        let threaded = decide_and_thread(func, scratch, like_libpcap);
        let pulled = start
            .as_ref()
            .is_some_and(|s| pull_up_as_libpcap(func, s, &scratch.summaries));
        let removed = remove_dead(func, scratch, like_libpcap);
        let renumbered = func.compact_with(&mut scratch.order, &mut scratch.reach);
        if !(folded || threaded.changed || pulled || removed || renumbered) {
            return true;
        }
        // A round whose only changes were decisions and threaded edges is a fixed point too
        // when they made no block pure ([`Threaded::settled`]): the next round would see the
        // same statements and so the same summaries and facts, and on every edge no more facts
        // than this round had (a threaded edge carries what the blocks it skips taught; the
        // edge straight to its target does not). Deciding is monotone in the facts, so it
        // would decide and thread nothing new; dead code already found nothing, and folding
        // has nothing to work on.
        // (Not with libpcap's edges of the pass before: the next round sees new ones.)
        if !like_libpcap && !folds && !removed && threaded.settled {
            return true;
        }
    }
    false
}

thread_local! {
    /// The thread's spare [`Scratch`].
    static SPARE: std::cell::Cell<Option<Box<Scratch>>> = const { std::cell::Cell::new(None) };
}

/// A scratch set whose buffers have grown past this many blocks is not kept (a huge filter
/// does not pin its memory for the rest of the thread's life).
const MAX_KEPT_BLOCKS: usize = 4096;
/// Likewise for the per-temp buffers.
const MAX_KEPT_TEMPS: usize = 16 * 1024;
/// Likewise for the facts arena (blocks x fact words): 256 KiB.
const MAX_KEPT_WORDS: usize = 32 * 1024;

impl Scratch {
    /// The thread's spare scratch set, or a new one. Its contents do not matter: every pass
    /// clears what it uses, except the key numbering, cleared here.
    fn take() -> Box<Scratch> {
        let mut s = SPARE.with(|c| c.take()).unwrap_or_default();
        s.keys_of.clear();
        s
    }

    /// Keeps `self` as the thread's spare, unless it grew too big.
    fn give_back(self: Box<Self>) {
        if self.reached.capacity() <= MAX_KEPT_BLOCKS
            && self.at_entry.capacity() <= MAX_KEPT_WORDS
            && self.writes.capacity() <= MAX_KEPT_TEMPS
        {
            SPARE.with(|c| c.set(Some(self)));
        }
    }
}

/// Whether [`fold_constants`] could change anything: only a constant moved into a temp (from
/// which constants spread) or an operation with a constant 0 (`x & 0`, `x + 0`) gives it
/// something to do. Most filters have neither, and the check is far cheaper than the pass.
fn may_fold(func: &Function) -> bool {
    func.blocks.iter().any(|b| {
        b.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::Mov {
                    src: Operand::K(_),
                    ..
                } | Stmt::Alu {
                    rhs: Operand::K(0),
                    ..
                }
            )
        })
    })
}

/// Buffers the passes reuse from round to round, so that a round allocates next to nothing;
/// each thread keeps one between compilations ([`Scratch::take`]), so a compilation does not
/// grow them from nothing either.
#[derive(Default)]
struct Scratch {
    /// Frame values to numbers; keys do not depend on temps, so they stay valid across rounds.
    keys_of: Interner,
    order: Vec<BlockId>,
    reach: Vec<bool>,
    shared_seen: Vec<BlockId>,
    /// The blocks still reachable after [`decide_and_thread`].
    kept: Vec<BlockId>,
    shared: TempSet,
    used: TempSet,
    min_len: Vec<u64>,
    /// Per block: what [`Summary::of`] found; the loads of all blocks are in `loads`.
    summaries: Vec<Summary>,
    loads: Vec<(KeyId, Option<u64>)>,
    block_keys: Vec<(Temp, KeyId)>,
    /// The facts numbered for the current pass.
    facts: FactTable,
    /// Per block, its entry facts: a bit set of `facts.words()` words at `block * words`.
    at_entry: Vec<Bits>,
    /// Value numbers and, per block, which temps hold which on entry ([`reuse_values`]).
    numbers: Numbering,
    /// Per block, valid once `held_reached` says a path reached it.
    held_at: Vec<Held>,
    held_reached: Vec<bool>,
    held: Held,
    /// [`drop_overwritten`]'s and [`propagate_copies`]' buffers.
    keep: Vec<bool>,
    unneeded: Vec<Temp>,
    writes: Vec<Writes>,
    rename: Vec<Option<Temp>>,
    read: Vec<bool>,
    reached: Vec<bool>,
    len_at: Vec<u64>,
    cur: Vec<Bits>,
    edge: Vec<Bits>,
}

/// Whether `func` has operations libpcap's prover folds and ours does not (`0 * x`, `0 / x`,
/// ... with a register operand): only then can [`libpcap_rejects_all`] prove more than
/// [`optimize`] does.
pub fn has_libpcap_only_folds(func: &Function) -> bool {
    func.blocks.iter().any(|b| {
        b.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::Alu {
                    op: AluOp::Mul | AluOp::And | AluOp::Shl | AluOp::Shr | AluOp::Div | AluOp::Mod,
                    rhs: Operand::T(_),
                    ..
                }
            )
        })
    })
}

/// Whether `func` (optimized) keeps a load only because it can reject the frame: nothing reads
/// its value. libpcap's optimizer drops such loads and threads edges past the tests they fed
/// (`ip6 net ::/0` becomes `jset #0`), so only then can [`libpcap_rejects_all`] decide tests
/// ours cannot.
pub fn has_effect_only_loads(func: &Function) -> bool {
    // Asked of every filter compiled: a bit set on the stack for the usual few temps.
    let n = func.num_temps as usize;
    let mut small = [0u64; 4];
    let mut large = Vec::new();
    let read: &mut [u64] = if n <= 256 {
        &mut small
    } else {
        large.resize(n.div_ceil(64), 0);
        &mut large
    };
    let mut mark = |t: Temp| {
        if let Some(w) = read.get_mut(t.0 as usize / 64) {
            *w |= 1 << (t.0 % 64);
        }
    };
    for b in &func.blocks {
        for s in &b.stmts {
            s.uses().for_each(&mut mark);
        }
        b.term.uses().for_each(&mut mark);
    }
    func.blocks.iter().flat_map(|b| &b.stmts).any(|s| match s {
        Stmt::Load { dst, .. } => read
            .get(dst.0 as usize / 64)
            .is_some_and(|w| w & (1 << (dst.0 % 64)) == 0),
        _ => false,
    })
}

/// Whether libpcap's pullups ([`pull_up_as_libpcap`]) could let it decide a test in `func`
/// (optimized) that ours leaves: a block every edge into which comes from a test of one value,
/// one of them the true edge of an `==` (which tells the value), with another test of that
/// value in the chain of `||` or `&&` tests below it. libpcap moves that test up to those
/// edges, where the values they know decide it: after `dst port 443 or dst port 1500`, a
/// later `dst port 5353` rejects. A heuristic that decides when [`libpcap_rejects_all`] runs
/// for that reason: it looks at our optimized graph, not libpcap's, knows a value only as the
/// temp that holds it (the optimizer's value numbering gave equal values one temp), and walks
/// at most 16 blocks. Asked of every filter compiled: one sweep and short walks.
pub fn may_pull_up_a_decision(func: &Function) -> bool {
    /// Longest chain walked below a block.
    const MAX_CHAIN: usize = 16;
    // Per block, what its incoming edges come from, in a word: `NOTHING` yet, `MIXED`, or
    // tests of one temp `a` as `(a + 1) << 1`, with the low bit set if one is an `==`'s true
    // edge. On the stack for the usual few dozen blocks. (A temp past 2^30 - 2 counts as
    // `MIXED`: no probe for its tests.)
    const NOTHING: u32 = 0;
    const MIXED: u32 = u32::MAX;
    let n = func.blocks.len();
    let mut small = [NOTHING; 64];
    let mut large = Vec::new();
    let into: &mut [u32] = if n <= small.len() {
        &mut small[..n]
    } else {
        large.resize(n, NOTHING);
        &mut large
    };
    for blk in &func.blocks {
        let (t, f, tests) = match blk.term {
            Term::Branch { cmp, a, b, t, f } => {
                let eq = cmp == Cmp::Eq && matches!(b, Operand::K(_));
                let tests =
                    a.0.checked_add(1)
                        .filter(|&x| x < 1 << 30)
                        .map(|x| (x << 1, eq));
                (t, f, tests)
            }
            Term::Jump(j) => (j, j, None),
            _ => continue,
        };
        for (s, true_edge) in [(t, true), (f, false)] {
            let Some(slot) = into.get_mut(s) else {
                continue;
            };
            *slot = match tests {
                Some((word, eq)) if *slot == NOTHING || *slot & !1 == word => {
                    *slot | word | u32::from(true_edge && eq)
                }
                _ => MIXED,
            };
        }
    }
    (0..n).any(|b| {
        let word = into[b];
        if word == MIXED || word & 1 == 0 {
            return false;
        }
        let a = Temp((word >> 1) - 1);
        [true, false].into_iter().any(|or| {
            let mut x = b;
            let mut common = None;
            for _ in 0..MAX_CHAIN {
                let Some(Term::Branch { a: ax, t, f, .. }) = func.blocks.get(x).map(|b| &b.term)
                else {
                    return false;
                };
                if x != b && *ax == a {
                    return true;
                }
                let (c, next) = if or { (*t, *f) } else { (*f, *t) };
                if common.is_some_and(|k| k != c) {
                    return false;
                }
                common = Some(c);
                x = next;
            }
            false
        })
    })
}

/// Predicts whether libpcap's optimizer would prove that the unoptimized `func` rejects every
/// frame (and so refuse the filter with "expression rejects all packets"). It runs our passes
/// as libpcap's first loop (the one that moves edges) sees the program, with its extra, unsound
/// folds, the tests in `opaque` (relations with operators) undecided. libpcap decides those
/// only in its second loop, which moves no edge, and then skips a root whose branches go to
/// the same block: so does this. A prediction: see the module docs.
pub fn libpcap_rejects_all(func: &Function, opaque: &[Temp]) -> bool {
    let mut f = func.clone();
    as_libpcap_jset(&mut f);
    for b in &mut f.blocks {
        if let Term::Branch { a, .. } = b.term {
            if opaque.contains(&a) {
                b.stmts.push(Stmt::Mov {
                    dst: a,
                    src: Operand::T(UNKNOWN),
                });
            }
        }
    }
    let mut scratch = Scratch::take();
    run_passes(&mut f, Mode::Aggressive, &mut scratch);
    scratch.give_back();
    if always_rejects(&f) {
        return true;
    }
    // An opaque test that the passes made the first one is the root of libpcap's program.
    // libpcap's second loop decides it (and every other relation), but moves no edge; at the
    // very end it skips a root whose branches go to the same block, and the one after it, and
    // so on (`opt_root`). So the filter rejects every frame if that chain, with the relations
    // decided now and no other edge moved, ends at a reject.
    let marker = |s: &Stmt| matches!(s, Stmt::Mov { src: Operand::T(t), .. } if *t == UNKNOWN);
    let first = first_tests(&f);
    let Some(&root) = first.first() else {
        return false;
    };
    let opaque_root = matches!(f.blocks[root].term, Term::Branch { .. })
        && f.blocks[root].stmts.last().is_some_and(marker);
    if !opaque_root {
        return false;
    }
    for blk in &mut f.blocks {
        blk.stmts.retain(|s| !marker(s));
    }
    fold_constants(&mut f, Mode::Aggressive);
    let mut b = root;
    loop {
        match f.blocks[b].term {
            Term::Reject => return true,
            // Decided now; past it, the first real test as the first loop left it.
            Term::Jump(next) if next > b && next < first.len() => b = first[next],
            _ => return false,
        }
    }
}

/// Each block's first real test after libpcap's first loop: the block itself, or past it, as
/// long as a block only jumps on or has branches that meet again, the first block that tests
/// (a block whose branches meet is not a test to libpcap: it moves the edges past it and drops
/// its loads, which only fed tests it decided). The entry's is libpcap's root. Edges go forward
/// after the passes, so one sweep from the last block back finds them all.
fn first_tests(f: &Function) -> Vec<BlockId> {
    let n = f.blocks.len();
    let mut first_test: Vec<BlockId> = (0..n).collect();
    for b in (0..n).rev() {
        let rep = |x: BlockId| first_test.get(x).copied().unwrap_or(x);
        first_test[b] = match f.blocks[b].term {
            Term::Jump(next) if next > b => rep(next),
            Term::Branch { t, f: e, .. } if t > b && e > b && rep(t) == rep(e) => rep(t),
            _ => b,
        };
    }
    first_test
}

/// Whether the function rejects every frame: its entry is a bare reject, or no accept is
/// reachable.
pub fn always_rejects(func: &Function) -> bool {
    // Most filters have at most 64 blocks, all edges forward (as the optimizer leaves them):
    // one sweep with the reached blocks in a word.
    let n = func.blocks.len();
    if n <= 64 {
        let mut reached: u64 = 1;
        let mut forward = true;
        for (b, blk) in func.blocks.iter().enumerate() {
            if reached & (1 << b) == 0 {
                continue;
            }
            if blk.term == Term::Accept {
                return false;
            }
            for s in blk.succs() {
                forward &= s > b && s < n;
                if s < 64 {
                    reached |= 1 << s;
                }
            }
        }
        if forward {
            return true;
        }
    }
    func.topo_order()
        .iter()
        .all(|&b| !matches!(func.blocks[b].term, Term::Accept))
}

// ---------------------------------------------------------------------------------------------
// Constant folding.

/// Temps known to hold a constant, sorted by temp (copied along every edge: a flat vector).
#[derive(Clone, Debug, Default)]
struct Consts(Vec<(Temp, u32)>);

impl Consts {
    fn get(&self, t: &Temp) -> Option<&u32> {
        self.0
            .binary_search_by_key(t, |&(x, _)| x)
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn insert(&mut self, t: Temp, v: u32) {
        match self.0.binary_search_by_key(&t, |&(x, _)| x) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (t, v)),
        }
    }

    fn remove(&mut self, t: &Temp) {
        if let Ok(i) = self.0.binary_search_by_key(t, |&(x, _)| x) {
            self.0.remove(i);
        }
    }
}

fn meet_consts(a: &Consts, b: &Consts) -> Consts {
    Consts(intersect(&a.0, &b.0))
}

/// How far constant folding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Verdict-preserving (the optimizer proper).
    Sound,
    /// What libpcap's first optimizer loop knows: constants are moved, never computed (it
    /// folds no operator), and branches between them are decided. For [`libpcap_errors`].
    FirstLoop,
    /// Also libpcap's unsound folds (`0 / x` is 0), for predicting what it proves.
    Aggressive,
}

/// Folds constants; says whether anything changed.
fn fold_constants(func: &mut Function, mode: Mode) -> bool {
    let order = func.topo_order();
    let mut changed = false;
    let mut at_entry: Vec<Option<Consts>> = vec![None; func.blocks.len()];
    if let Some(e) = at_entry.first_mut() {
        *e = Some(Consts::default());
    }
    for &b in &order {
        let mut c = at_entry[b].take().unwrap_or_default();
        // In place: statement `r` is rewritten into slot `w <= r`.
        let stmts = &mut func.blocks[b].stmts;
        let mut w = 0;
        for r in 0..stmts.len() {
            let old = stmts[r];
            let s = match old {
                Stmt::Mov { dst, src } => {
                    let src = match src {
                        Operand::T(t) => c.get(&t).map_or(Operand::T(t), |&k| Operand::K(k)),
                        k => k,
                    };
                    match src {
                        Operand::K(k) => {
                            c.insert(dst, k);
                        }
                        Operand::T(_) => {
                            c.remove(&dst);
                        }
                    }
                    Some(Stmt::Mov { dst, src })
                }
                Stmt::Alu { op, dst, rhs } if mode == Mode::FirstLoop => {
                    c.remove(&dst);
                    Some(Stmt::Alu { op, dst, rhs })
                }
                Stmt::Alu { op, dst, rhs } => {
                    let rhs_k = match rhs {
                        Operand::T(t) => c.get(&t).copied(),
                        Operand::K(k) => Some(k),
                    };
                    let dst_k = c.get(&dst).copied();
                    let zero = |c: &mut Consts| {
                        c.insert(dst, 0);
                        Some(Stmt::Mov {
                            dst,
                            src: Operand::K(0),
                        })
                    };
                    let unsafe_k = |k: u32| {
                        (matches!(op, AluOp::Div | AluOp::Mod) && k == 0)
                            || (matches!(op, AluOp::Shl | AluOp::Shr) && k >= 32)
                    };
                    match (dst_k, rhs_k) {
                        // libpcap's folds (not ours: `0 / x` rejects when x is 0), which it
                        // applies before it knows x (a known x is folded below), for the
                        // rejects-all probe.
                        (Some(0), None)
                            if mode != Mode::Sound
                                && matches!(
                                    op,
                                    AluOp::Mul
                                        | AluOp::And
                                        | AluOp::Shl
                                        | AluOp::Shr
                                        | AluOp::Div
                                        | AluOp::Mod
                                ) =>
                        {
                            zero(&mut c)
                        }
                        // `0 % x`, x known to be 0: libpcap folds it to 0 when it knows the
                        // left 0 a pass before x (`0 % (len & 0)`: `len & 0` becomes 0 a pass
                        // late); when it knows both at once it reports a modulus by zero,
                        // which `libpcap_errors` finds first.
                        (Some(0), Some(0))
                            if mode == Mode::Aggressive
                                && matches!(op, AluOp::Div | AluOp::Mod) =>
                        {
                            zero(&mut c)
                        }
                        (Some(a), Some(k)) => match op.eval(a, k) {
                            Some(v) => {
                                c.insert(dst, v);
                                Some(Stmt::Mov {
                                    dst,
                                    src: Operand::K(v),
                                })
                            }
                            None => {
                                c.remove(&dst);
                                Some(Stmt::Alu { op, dst, rhs })
                            }
                        },
                        (_, Some(k)) if unsafe_k(k) => {
                            // Kept with its register operand: the VM rejects a division by
                            // zero and shifts by 32 or more to 0 at run time.
                            c.remove(&dst);
                            Some(Stmt::Alu { op, dst, rhs })
                        }
                        (_, Some(0)) => match op {
                            AluOp::And | AluOp::Mul => zero(&mut c),
                            // add, sub, or, xor, shifts by 0 leave the value alone.
                            _ => None,
                        },
                        (_, Some(k)) => {
                            c.remove(&dst);
                            Some(Stmt::Alu {
                                op,
                                dst,
                                rhs: Operand::K(k),
                            })
                        }
                        (_, None) => {
                            c.remove(&dst);
                            Some(Stmt::Alu { op, dst, rhs })
                        }
                    }
                }
                Stmt::Neg { dst } => match c.get(&dst) {
                    Some(_) if mode == Mode::FirstLoop => {
                        c.remove(&dst);
                        Some(Stmt::Neg { dst })
                    }
                    Some(&a) => {
                        let v = a.wrapping_neg();
                        c.insert(dst, v);
                        Some(Stmt::Mov {
                            dst,
                            src: Operand::K(v),
                        })
                    }
                    None => Some(Stmt::Neg { dst }),
                },
                Stmt::Load {
                    dst,
                    size,
                    base,
                    off,
                } => {
                    c.remove(&dst);
                    // A constant base folds into the offset (no wrap: the VM adds in 64 bits).
                    // libpcap's first loop, which the other modes follow, does not: to it
                    // `ether[12:2]` (`ldh [x + 0]`, x = 12) is not the ethertype load.
                    match base
                        .filter(|_| mode == Mode::Sound)
                        .and_then(|t| c.get(&t).copied())
                    {
                        Some(k) if u64::from(k) + u64::from(off) <= u64::from(u32::MAX) => {
                            Some(Stmt::Load {
                                dst,
                                size,
                                base: None,
                                off: k + off,
                            })
                        }
                        _ => Some(Stmt::Load {
                            dst,
                            size,
                            base,
                            off,
                        }),
                    }
                }
                Stmt::Len { dst } => {
                    c.remove(&dst);
                    Some(Stmt::Len { dst })
                }
            };
            match s {
                Some(s) => {
                    changed |= s != old;
                    stmts[w] = s;
                    w += 1;
                }
                None => changed = true,
            }
        }
        stmts.truncate(w);
        // Decide or simplify the branch.
        if let Term::Branch {
            cmp,
            a,
            b: rhs,
            t,
            f,
        } = func.blocks[b].term.clone()
        {
            let rhs = match rhs {
                Operand::T(x) => c.get(&x).map_or(Operand::T(x), |&k| Operand::K(k)),
                k => k,
            };
            let term = match (c.get(&a), rhs) {
                (Some(&av), Operand::K(k)) => Term::Jump(if cmp.eval(av, k) { t } else { f }),
                _ => Term::Branch {
                    cmp,
                    a,
                    b: rhs,
                    t,
                    f,
                },
            };
            changed |= term != func.blocks[b].term;
            func.blocks[b].term = term;
        }
        for s in func.blocks[b].succs() {
            at_entry[s] = Some(match at_entry[s].take() {
                None => c.clone(),
                Some(prev) => meet_consts(&prev, &c),
            });
        }
    }
    changed
}

// ---------------------------------------------------------------------------------------------
// Facts about frame fields.

/// A value computed from the frame: a load at a constant offset, a load at an offset computed
/// from other such values (the transport header after IPv4), the wire length, constants, and
/// operations on them. Two equal keys denote the same value on any one frame (libpcap's value
/// numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Abs { size: Size, off: u32 },
    Ind { size: Size, base: KeyId, off: u32 },
    Len,
    Const(u32),
    Op(AluOp, KeyId, KeyId),
}

/// A [`Key`] interned: equal values get equal ids within one [`Interner`] (hash-consing), so
/// facts are keyed by a number and copying them allocates nothing per key.
type KeyId = u32;

type Interner = HashCons<Key>;

/// Numbers for values: equal values get equal numbers, counted from 0 (hash-consing).
///
/// Loads at small constant offsets (the headers every filter tests) and small constants are
/// numbered through a direct table instead of the hash map: they are most of a filter's
/// values.
struct HashCons<K> {
    ids: HashMap<K, u32>,
    /// How many numbers are given out.
    next: u32,
    /// Per small load (`off * 3 + size`), then per small constant: the generation it was
    /// numbered in, and its number.
    loads: Vec<(u32, u32)>,
    /// Bumped by [`HashCons::clear`], so that clearing does not touch `loads`.
    generation: u32,
}

/// Loads at offsets below this are numbered through [`HashCons::loads`].
const SMALL_LOAD_OFFSETS: u32 = 128;
/// Constants below this are numbered through [`HashCons::loads`], after the loads.
const SMALL_CONSTANTS: u32 = 256;

impl<K> Default for HashCons<K> {
    fn default() -> Self {
        // Room for the values of a typical filter, so the table does not grow step by step.
        HashCons {
            ids: HashMap::with_capacity_and_hasher(64, Default::default()),
            next: 0,
            loads: vec![(0, 0); (SMALL_LOAD_OFFSETS * 3 + SMALL_CONSTANTS) as usize],
            generation: 1,
        }
    }
}

impl<K: std::hash::Hash + Eq> HashCons<K> {
    fn id(&mut self, k: K) -> u32 {
        let next = &mut self.next;
        *self.ids.entry(k).or_insert_with(|| {
            *next += 1;
            *next - 1
        })
    }

    /// The number of a load at constant offset `off` of width `size`; `key` is its key, for
    /// offsets the table does not cover.
    fn load_id(&mut self, size: Size, off: u32, key: impl FnOnce() -> K) -> u32 {
        if off >= SMALL_LOAD_OFFSETS {
            return self.id(key());
        }
        self.slot_id(off as usize * 3 + size as usize)
    }

    /// The number of the constant `k`; `key` is its key, for constants the table does not
    /// cover.
    fn const_id(&mut self, k: u32, key: impl FnOnce() -> K) -> u32 {
        if k >= SMALL_CONSTANTS {
            return self.id(key());
        }
        self.slot_id((SMALL_LOAD_OFFSETS * 3 + k) as usize)
    }

    fn slot_id(&mut self, i: usize) -> u32 {
        let slot = &mut self.loads[i];
        if slot.0 != self.generation {
            *slot = (self.generation, self.next);
            self.next += 1;
        }
        slot.1
    }

    /// How many numbers are given out.
    fn len(&self) -> usize {
        self.next as usize
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.next = 0;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.loads.fill((0, 0));
            self.generation = 1;
        }
    }
}

/// Facts about frame values at a program point, three kinds: a test was taken with a given
/// outcome (`SEEN`); a true `==` test fixed a value (`EXACT`, at most one per value holds at
/// any point); a load was performed, so it cannot fail again (`LOADED`).
///
/// Every fact a pass can learn comes from a block's test or a block's loads, so the pass
/// numbers them all up front and a program point's facts are a bit set: copied along every
/// edge, met (`and`) at every join, in a flat arena with no allocation per edge.
type Bits = u64;

fn bit(words: &[Bits], i: u32) -> bool {
    words[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set_bit(words: &mut [Bits], i: u32) {
    words[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear_bit(words: &mut [Bits], i: u32) {
    words[(i / 64) as usize] &= !(1 << (i % 64));
}

/// No fact (a block without a decidable test).
const NO_FACT: u32 = u32::MAX;

/// The facts of one block's test `key cmp k`: what its true and false edges teach, and the
/// `EXACT` fact its true edge sets when it is an `==`.
#[derive(Clone, Copy)]
struct TestFacts {
    k: u32,
    eq: bool,
    /// The range of [`FactTable::exacts`] about `key`.
    exacts: (u32, u32),
    t: u32,
    f: u32,
    exact: u32,
    /// With per-block facts, the range of [`FactTable::same`] holding the true and false
    /// facts of every block with this test (this one's included); empty otherwise.
    same: (u32, u32),
}

impl Default for TestFacts {
    fn default() -> Self {
        TestFacts {
            k: 0,
            eq: false,
            exacts: (0, 0),
            t: NO_FACT,
            f: NO_FACT,
            exact: NO_FACT,
            same: (0, 0),
        }
    }
}

/// The numbered facts of one pass.
#[derive(Default)]
struct FactTable {
    /// How many facts there are.
    count: u32,
    /// Per block, its test's facts (`t == NO_FACT`: no decidable test).
    tests: Vec<TestFacts>,
    /// Per entry of [`Scratch::loads`], its `LOADED` fact.
    load_facts: Vec<u32>,
    /// Per key, its `LOADED` fact (numbering scratch).
    loaded_of_key: Vec<u32>,
    /// Every decidable test as (key, comparison, constant, block), sorted (numbering scratch).
    sorted_tests: Vec<(KeyId, u8, u32, BlockId)>,
    /// Every `EXACT` fact as (key, value, fact), sorted by key.
    exacts: Vec<(KeyId, u32, u32)>,
    /// With per-block facts, the (true, false) facts of the blocks with each test, one run
    /// per test.
    same: Vec<(u32, u32)>,
    /// Facts are per block, as libpcap's edge dominators are: a later `== v` on the same
    /// value takes back no earlier `EXACT` fact (an edge dominates whatever follows it).
    per_block: bool,
}

impl FactTable {
    /// Numbers the facts of the blocks in `order`: those of each block's test and the
    /// `LOADED` fact of each load. Blocks with the same test share their facts unless
    /// `per_block`, as libpcap's `fold_edge` has them: there, what a test taught holds only
    /// where one block's edge dominates (the same test on every path to a join, from
    /// different blocks, decides nothing past it).
    fn number(
        &mut self,
        func: &Function,
        order: &[BlockId],
        summaries: &[Summary],
        loads: &[BlockLoad],
        keys: usize,
        per_block: bool,
    ) {
        self.count = 0;
        self.per_block = per_block;
        self.exacts.clear();
        self.same.clear();
        self.loaded_of_key.clear();
        self.loaded_of_key.resize(keys, NO_FACT);
        self.load_facts.clear();
        for &(key, _) in loads {
            let slot = &mut self.loaded_of_key[key as usize];
            if *slot == NO_FACT {
                *slot = self.count;
                self.count += 1;
            }
            self.load_facts.push(*slot);
        }
        self.sorted_tests.clear();
        for &b in order {
            if let (
                Some(key),
                Term::Branch {
                    cmp,
                    b: Operand::K(k),
                    ..
                },
            ) = (summaries[b].key, &func.blocks[b].term)
            {
                self.sorted_tests.push((key, *cmp as u8, *k, b));
            }
        }
        self.sorted_tests.sort_unstable();
        self.tests.clear();
        self.tests.resize(func.blocks.len(), TestFacts::default());
        // Tests come sorted, so equal tests are neighbours and each key's tests (and so its
        // `EXACT` facts) are one run.
        let tests = &self.sorted_tests;
        let mut i = 0;
        while i < tests.len() {
            let key = tests[i].0;
            let end = i + tests[i..].iter().take_while(|t| t.0 == key).count();
            let exacts_lo = self.exacts.len() as u32;
            // Each run of blocks with the same test shares one set of facts, or with
            // `per_block` has one per block, all listed in the run's range of `same`.
            let mut r = i;
            while r < end {
                let (_, cmp, k, _) = tests[r];
                let run_end = r + tests[r..end]
                    .iter()
                    .take_while(|t| t.1 == cmp && t.2 == k)
                    .count();
                let eq = cmp == Cmp::Eq as u8;
                let same_lo = self.same.len() as u32;
                let same = if per_block {
                    (same_lo, same_lo + (run_end - r) as u32)
                } else {
                    (0, 0)
                };
                let mut tf = TestFacts::default();
                for (j, &(_, _, _, b)) in tests[r..run_end].iter().enumerate() {
                    if j == 0 || per_block {
                        let exact = if eq {
                            self.exacts.push((key, k, self.count + 2));
                            self.count + 2
                        } else {
                            NO_FACT
                        };
                        tf = TestFacts {
                            k,
                            eq,
                            exacts: (0, 0),
                            t: self.count,
                            f: self.count + 1,
                            exact,
                            same,
                        };
                        self.count += if eq { 3 } else { 2 };
                        if per_block {
                            self.same.push((tf.t, tf.f));
                        }
                    }
                    self.tests[b] = tf;
                }
                r = run_end;
            }
            let range = (exacts_lo, self.exacts.len() as u32);
            for &(_, _, _, b) in &tests[i..end] {
                self.tests[b].exacts = range;
            }
            i = end;
        }
    }

    /// The words a bit set over these facts needs.
    fn words(&self) -> usize {
        (self.count as usize).div_ceil(64).max(1)
    }

    fn exacts_of(&self, tf: &TestFacts) -> &[(KeyId, u32, u32)] {
        &self.exacts[tf.exacts.0 as usize..tf.exacts.1 as usize]
    }

    /// Decides a block's test from the facts in `words` with the reasoning libpcap's
    /// optimizer uses (`fold_edge`): the same test taken before gives the same result, and a
    /// value known equal to `v` (a true `==` test) decides any `==`. Deciding more (ranges
    /// from `>` tests, field widths) would be sound, but would make us refuse as "rejects all
    /// packets" filters libpcap compiles. A masked field is a different key (libpcap does not
    /// derive `x & m` from a known `x`).
    fn decide(&self, words: &[Bits], tf: &TestFacts) -> Option<bool> {
        if tf.eq {
            for &(_, v, id) in self.exacts_of(tf) {
                if bit(words, id) {
                    return Some(v == tf.k);
                }
            }
        }
        let same = &self.same[tf.same.0 as usize..tf.same.1 as usize];
        if bit(words, tf.f) || same.iter().any(|&(_, f)| bit(words, f)) {
            Some(false)
        } else if bit(words, tf.t) || same.iter().any(|&(t, _)| bit(words, t)) {
            Some(true)
        } else {
            None
        }
    }

    /// Records that the test was taken with outcome `r`.
    fn learn(&self, words: &mut [Bits], tf: &TestFacts, r: bool) {
        if r && tf.exact != NO_FACT {
            // Without per-block facts, another value's `EXACT` facts no longer hold (the path
            // is impossible if they did); the same value's still do. With them, libpcap's
            // dominating edges all still hold.
            if !self.per_block {
                for &(_, v, id) in self.exacts_of(tf) {
                    if v != tf.k {
                        clear_bit(words, id);
                    }
                }
            }
            set_bit(words, tf.exact);
        }
        set_bit(words, if r { tf.t } else { tf.f });
    }
}

/// The elements of two sorted vectors that are in both.
fn intersect<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// What a block does that does not depend on the path: the key of the value its branch
/// compares, its loads (key, and end offset when absolute: the range `loads` of
/// [`Scratch::loads`]), and whether it is free of other effects (nothing else can reject, no
/// temp it defines is used elsewhere).
#[derive(Clone, Copy, Default)]
struct Summary {
    key: Option<KeyId>,
    loads: (u32, u32),
    pure: bool,
    /// Pure but for defining a temp another block uses (which may change when blocks go).
    pure_but_shared: bool,
}

/// A load a block makes: its key, and its end offset when the offset is constant.
type BlockLoad = (KeyId, Option<u64>);

impl Summary {
    /// Runs the block's statements symbolically: which temps hold which values (keys). The
    /// block's loads are appended to `loads_out`; `keys` is scratch space.
    fn of(
        block: &Block,
        shared: &TempSet,
        keys_of: &mut Interner,
        keys: &mut Vec<(Temp, KeyId)>,
        loads_out: &mut Vec<BlockLoad>,
    ) -> Summary {
        // Temps to keys within the block; blocks are short, so a list.
        keys.clear();
        let get = |keys: &Vec<(Temp, KeyId)>, t: Temp| {
            keys.iter().rev().find(|(x, _)| *x == t).map(|&(_, k)| k)
        };
        let start = loads_out.len() as u32;
        let mut pure = true;
        let mut defines_shared = false;
        for s in &block.stmts {
            let operand = |keys: &Vec<(Temp, KeyId)>, o: &Operand, ki: &mut Interner| match o {
                Operand::K(k) => Some(ki.const_id(*k, || Key::Const(*k))),
                Operand::T(t) => get(keys, *t),
            };
            let key = match s {
                Stmt::Load {
                    size,
                    base: None,
                    off,
                    ..
                } => {
                    let (size, off) = (*size, *off);
                    let id = keys_of.load_id(size, off, || Key::Abs { size, off });
                    loads_out.push((id, Some(u64::from(off) + u64::from(size.bytes()))));
                    Some(id)
                }
                Stmt::Load {
                    size,
                    base: Some(t),
                    off,
                    ..
                } => match get(keys, *t) {
                    Some(b) => {
                        let id = keys_of.id(Key::Ind {
                            size: *size,
                            base: b,
                            off: *off,
                        });
                        loads_out.push((id, None));
                        Some(id)
                    }
                    None => {
                        pure = false;
                        None
                    }
                },
                Stmt::Len { .. } => Some(keys_of.id(Key::Len)),
                Stmt::Mov { src, .. } => operand(keys, src, keys_of),
                Stmt::Alu { op, dst, rhs } => {
                    if s.may_reject() {
                        pure = false;
                    }
                    match (get(keys, *dst), operand(keys, rhs, keys_of)) {
                        (Some(a), Some(b)) => Some(keys_of.id(Key::Op(*op, a, b))),
                        _ => None,
                    }
                }
                Stmt::Neg { dst } => get(keys, *dst).map(|a| {
                    let zero = keys_of.const_id(0, || Key::Const(0));
                    keys_of.id(Key::Op(AluOp::Sub, zero, a))
                }),
            };
            let def = s.def();
            keys.retain(|(x, _)| *x != def);
            if let Some(k) = key {
                keys.push((def, k));
            }
            defines_shared |= shared.contains(&def);
        }
        let key = match &block.term {
            Term::Branch { a, .. } => get(keys, *a),
            _ => None,
        };
        Summary {
            key,
            loads: (start, loads_out.len() as u32),
            pure: pure && !defines_shared,
            pure_but_shared: pure && defines_shared,
        }
    }

    /// Whether the block could be skipped on a path whose facts are `words` and whose proven
    /// frame length is `min_len`.
    fn skippable(
        &self,
        all: &[BlockLoad],
        facts: &FactTable,
        words: &[Bits],
        min_len: u64,
    ) -> bool {
        let range = self.loads.0 as usize..self.loads.1 as usize;
        self.pure
            && all[range.clone()]
                .iter()
                .zip(&facts.load_facts[range])
                .all(|(&(_, end), &id)| end.is_some_and(|e| e <= min_len) || bit(words, id))
    }

    /// The block's loads happen on a path (facts `words`, proven length `min_len`).
    fn apply(&self, all: &[BlockLoad], facts: &FactTable, words: &mut [Bits], min_len: &mut u64) {
        let range = self.loads.0 as usize..self.loads.1 as usize;
        for (&(_, end), &id) in all[range.clone()].iter().zip(&facts.load_facts[range]) {
            set_bit(words, id);
            if let Some(e) = end {
                *min_len = (*min_len).max(e);
            }
        }
    }
}

/// A set of temps: one flag per temp below the function's count (temps are numbered densely
/// from 0), and a list for any other (the "unknown" temp [`libpcap_rejects_all`] adds).
#[derive(Default)]
struct TempSet {
    flags: Vec<bool>,
    others: Vec<Temp>,
}

impl TempSet {
    /// Empties the set, for temps below `n`.
    fn reset(&mut self, n: u32) {
        self.flags.clear();
        self.flags.resize(n as usize, false);
        self.others.clear();
    }

    fn contains(&self, t: &Temp) -> bool {
        match self.flags.get(t.0 as usize) {
            Some(&f) => f,
            None => self.others.contains(t),
        }
    }

    fn insert(&mut self, t: Temp) {
        match self.flags.get_mut(t.0 as usize) {
            Some(f) => *f = true,
            None => {
                if !self.others.contains(&t) {
                    self.others.push(t);
                }
            }
        }
    }
}

/// Finds the temps used or defined in more than one block (they cannot be dropped with one
/// block), into `shared`; `seen` is scratch space.
fn shared_temps(func: &Function, order: &[BlockId], seen: &mut Vec<BlockId>, shared: &mut TempSet) {
    seen.clear();
    seen.resize(func.num_temps as usize, BlockId::MAX);
    shared.reset(func.num_temps);
    for &b in order {
        let blk = &func.blocks[b];
        let mut note = |t: Temp| {
            // A temp outside the count (the probe's unknown) counts as shared.
            match seen.get_mut(t.0 as usize) {
                Some(other) if *other == BlockId::MAX => *other = b,
                Some(other) if *other == b => {}
                _ => shared.insert(t),
            }
        };
        for s in &blk.stmts {
            for t in s.uses() {
                note(t);
            }
            note(s.def());
        }
        for t in blk.term.uses() {
            note(t);
        }
    }
}

/// What [`decide_and_thread`] did.
struct Threaded {
    /// It decided a branch or threaded an edge.
    changed: bool,
    /// Running it again right away would change nothing: no edge stopped at the limit of
    /// hops, and every block whose purity depends on which blocks are reachable has kept it.
    settled: bool,
}

/// Adds the facts and proven length of one edge into `b` to those of `b`'s other edges
/// (`Scratch::at_entry`, `len_at` and `reached`).
fn merge_into(
    (at_entry, len_at, reached): (&mut [Bits], &mut [u64], &mut [bool]),
    w: usize,
    b: BlockId,
    edge: &[Bits],
    len: u64,
) {
    let slot = &mut at_entry[b * w..(b + 1) * w];
    if reached[b] {
        for (a, e) in slot.iter_mut().zip(edge.iter()) {
            *a &= *e;
        }
        len_at[b] = len_at[b].min(len);
    } else {
        slot.copy_from_slice(edge);
        len_at[b] = len;
        reached[b] = true;
    }
}

/// Decides branches from the facts on every path to them and threads edges through blocks
/// those facts decide. With `per_block` (predicting libpcap), facts are numbered per block and
/// flow along the edges the pass started with, as libpcap's edge dominators do.
fn decide_and_thread(func: &mut Function, sc: &mut Scratch, per_block: bool) -> Threaded {
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let order = std::mem::take(&mut sc.order);
    let n = func.blocks.len();
    shared_temps(func, &order, &mut sc.shared_seen, &mut sc.shared);
    sc.summaries.clear();
    sc.summaries.resize(n, Summary::default());
    sc.loads.clear();
    for &b in &order {
        sc.summaries[b] = Summary::of(
            &func.blocks[b],
            &sc.shared,
            &mut sc.keys_of,
            &mut sc.block_keys,
            &mut sc.loads,
        );
    }
    // Number every fact this pass can learn.
    let keys = sc.keys_of.len();
    sc.facts
        .number(func, &order, &sc.summaries, &sc.loads, keys, per_block);
    let facts = &sc.facts;
    let w = facts.words();
    let (summaries, loads, facts) = (&sc.summaries, &sc.loads[..], &sc.facts);
    // Each block's facts on entry (`w` words at `b * w`), whether a path reached it yet, and
    // the frame length every path to it proved.
    // Not zeroed as a whole: a block's words are written (copied from its first incoming
    // edge) before they are read, as `reached` records; zeroing would cost blocks x facts per
    // pass. The entry has no incoming edge: its words are zeroed here (they may hold an
    // earlier pass's or an earlier compilation's facts).
    if sc.at_entry.len() < n * w {
        sc.at_entry.resize(n * w, 0);
    }
    sc.reached.clear();
    sc.reached.resize(n, false);
    sc.len_at.clear();
    sc.len_at.resize(n, 0);
    if n > 0 {
        sc.reached[0] = true;
        sc.at_entry[..w].fill(0);
    }
    sc.cur.clear();
    sc.cur.resize(w, 0);
    sc.edge.clear();
    sc.edge.resize(w, 0);
    let (cur, edge) = (&mut sc.cur[..], &mut sc.edge[..]);
    let mut changed = false;
    let mut hop_limited = false;
    let mut decided = false;
    for &b in &order {
        if !sc.reached[b] {
            continue;
        }
        cur.copy_from_slice(&sc.at_entry[b * w..(b + 1) * w]);
        let mut len = sc.len_at[b];
        let summary = summaries[b];
        summary.apply(loads, facts, cur, &mut len);
        let tf = facts.tests[b];
        // Decide the branch from facts on every path.
        if tf.t != NO_FACT {
            if let Term::Branch { t, f, .. } = func.blocks[b].term {
                if let Some(r) = facts.decide(cur, &tf) {
                    func.blocks[b].term = Term::Jump(if r { t } else { f });
                    changed = true;
                    decided = true;
                    // To libpcap the branch not taken is still there in this pass (it moves
                    // the edges into this block; the block goes in the next), and so are the
                    // paths through it to the blocks after.
                    if per_block {
                        edge.copy_from_slice(cur);
                        facts.learn(edge, &tf, !r);
                        merge_into(
                            (&mut sc.at_entry, &mut sc.len_at, &mut sc.reached),
                            w,
                            if r { f } else { t },
                            edge,
                            len,
                        );
                    }
                }
            }
        }
        // Propagate along each edge, threading edges whose target is decided and skippable.
        let (succs, learns, n_edges): ([BlockId; 2], [Option<bool>; 2], usize) = match func.blocks
            [b]
            .term
        {
            Term::Branch { t, f, .. } if tf.t != NO_FACT => ([t, f], [Some(true), Some(false)], 2),
            Term::Branch { t, f, .. } => ([t, f], [None, None], 2),
            Term::Jump(j) => ([j, j], [None, None], 1),
            _ => ([0, 0], [None, None], 0),
        };
        let mut new_targets = [0; 2];
        for i in 0..n_edges {
            let succ = succs[i];
            edge.copy_from_slice(cur);
            let mut es_len = len;
            if let Some(r) = learns[i] {
                facts.learn(edge, &tf, r);
            }
            // libpcap decides every edge of a pass from the dominators of the graph the pass
            // started with: what reaches a block along its edges of then, threaded or not.
            if per_block {
                merge_into(
                    (&mut sc.at_entry, &mut sc.len_at, &mut sc.reached),
                    w,
                    succ,
                    edge,
                    es_len,
                );
            }
            // Thread through successors decided by this edge's facts (a few hops).
            let mut target = succ;
            let mut hops = 0;
            loop {
                if hops == MAX_HOPS {
                    hop_limited = true;
                    break;
                }
                hops += 1;
                let (t, f) = match func.blocks[target].term {
                    Term::Branch { t, f, .. } => (t, f),
                    // An empty block that only jumps on (a test decided on every path
                    // leaves one where paths join): straight past it.
                    Term::Jump(next) if func.blocks[target].stmts.is_empty() => {
                        target = next;
                        continue;
                    }
                    _ => break,
                };
                let ttf = facts.tests[target];
                if ttf.t == NO_FACT {
                    break;
                }
                let sum = summaries[target];
                if !sum.skippable(loads, facts, edge, es_len) {
                    break;
                }
                match facts.decide(edge, &ttf) {
                    Some(r) => {
                        sum.apply(loads, facts, edge, &mut es_len);
                        // libpcap's moved edge knows only what dominates it (`opt_j` decides
                        // each hop from the edge's own dominators): past the join it leads
                        // to, the skipped test's facts are not its own.
                        if !per_block {
                            facts.learn(edge, &ttf, r);
                        }
                        target = if r { t } else { f };
                    }
                    None => break,
                }
            }
            changed |= target != succ;
            new_targets[i] = target;
            if !per_block {
                merge_into(
                    (&mut sc.at_entry, &mut sc.len_at, &mut sc.reached),
                    w,
                    target,
                    edge,
                    es_len,
                );
            }
        }
        match &mut func.blocks[b].term {
            Term::Branch { t, f, .. } => {
                *t = new_targets[0];
                *f = new_targets[1];
            }
            Term::Jump(j) => *j = new_targets[0],
            _ => {}
        }
    }
    if per_block {
        changed |= skip_meeting_branches(func, &order, &sc.shared);
    }
    // A decided branch no longer uses its temp, and blocks no path reaches any more take
    // their uses with them: either can make a block that defines a temp used elsewhere pure,
    // and so skippable next time. That is the only way this pass's changes feed the next.
    let mut settled = !hop_limited;
    if settled && (decided || !order.iter().all(|&b| sc.reached[b])) {
        sc.kept.clear();
        sc.kept
            .extend(order.iter().copied().filter(|&b| sc.reached[b]));
        shared_temps(func, &sc.kept, &mut sc.shared_seen, &mut sc.shared);
        settled = sc.kept.iter().all(|&b| {
            !sc.summaries[b].pure_but_shared
                || func.blocks[b]
                    .stmts
                    .iter()
                    .any(|s| sc.shared.contains(&s.def()))
        });
    }
    sc.order = order;
    Threaded { changed, settled }
}

// ---------------------------------------------------------------------------------------------
// libpcap's pullups (for the probes only).

/// The graph as a pass of libpcap's first loop starts it. Its pullups run after the pass has
/// moved edges, but with the levels and dominators computed before it did.
struct PassStart {
    /// The blocks that branch or jump, in the order `opt_blks` visits them for pullups: by
    /// level (height above the returns) from the lowest, and within a level the last one its
    /// depth-first search (true branch first) finished first.
    visit: Vec<BlockId>,
    /// Per block, its level.
    level: Vec<u32>,
    /// No cycle (the code generator makes none; the passes move edges only forward, so the
    /// pass keeps it so).
    acyclic: bool,
    /// Per block, the blocks that dominate it: `words` words at `block * words`.
    dom: Vec<Bits>,
    words: usize,
}

impl PassStart {
    fn of(func: &Function) -> PassStart {
        let n = func.blocks.len();
        let rpo = func.dfs_order_from(0);
        let mut level = vec![0u32; n];
        for &b in rpo.iter().rev() {
            level[b] = func.blocks[b]
                .succs()
                .map(|s| level.get(s).map_or(0, |l| l + 1))
                .max()
                .unwrap_or(0);
        }
        let mut visit: Vec<BlockId> = rpo.iter().copied().filter(|&b| level[b] > 0).collect();
        visit.sort_by_key(|&b| level[b]);
        // Dominators over an acyclic graph: in reverse post-order every block comes after all
        // its predecessors, so one sweep intersects theirs.
        let words = n.div_ceil(64).max(1);
        let mut dom = vec![Bits::MAX; n * words];
        if n > 0 {
            dom[..words].fill(0);
        }
        for &b in &rpo {
            set_bit(&mut dom[b * words..(b + 1) * words], b as u32);
            for s in func.blocks[b].succs().filter(|&s| s < n) {
                for i in 0..words {
                    dom[s * words + i] &= dom[b * words + i];
                }
            }
        }
        PassStart {
            visit,
            level,
            acyclic: forward_in(func, &rpo),
            dom,
            words,
        }
    }

    /// Whether `d` dominated `b`.
    fn dominates(&self, d: BlockId, b: BlockId) -> bool {
        self.dom
            .get(b * self.words..(b + 1) * self.words)
            .is_some_and(|w| bit(w, d as u32))
    }
}

/// libpcap's `or_pullup` and `and_pullup`, which end each pass of its first loop: where every
/// edge into a block comes from a test of one value, and a chain of tests below it (`a || b ||
/// ...`: along false edges, all with the same true target; or `a && b && ...`) tests that value
/// again further down, the later test is moved up above the chain's first test of another
/// value (at the top of the chain, the edges into it then lead to the moved test, whose facts
/// can decide it in the next pass). The value a block tests is its key in this pass's
/// `summaries`. The edges into a block are those of the blocks the pass started with, even
/// ones no edge reaches any more, as libpcap lists them. Says whether it moved a test.
///
/// Not modelled: a move that would change a test we decided (a jump now, where libpcap keeps
/// the test with both branches at one block) is not made. A graph with a cycle (the code
/// generator makes none) gets no pullups, and if the moves made one (libpcap trusts its code
/// generator never to give it a graph where they can) they are all taken back after the sweep.
fn pull_up_as_libpcap(func: &mut Function, start: &PassStart, summaries: &[Summary]) -> bool {
    let n = func.blocks.len();
    if !start.acyclic {
        return false;
    }
    let val = |b: BlockId| summaries.get(b).and_then(|s| s.key);
    // Each block's in-edges in the order of libpcap's lists (`find_inedges` links them from
    // the highest level down, true edge first, each in front of the last): the first one
    // says where its chain walk starts.
    let mut linked = start.visit.clone();
    linked.sort_by_key(|&b| std::cmp::Reverse(start.level[b]));
    let mut preds: Vec<Vec<BlockId>> = vec![Vec::new(); n];
    for &p in &linked {
        let (t, f) = match func.blocks[p].term {
            Term::Branch { t, f, .. } => (t, f),
            Term::Jump(j) => (j, j),
            _ => continue,
        };
        for s in [t, f] {
            if let Some(ps) = preds.get_mut(s) {
                ps.push(p);
            }
        }
    }
    for ps in &mut preds {
        ps.reverse();
    }
    let before: Vec<Term> = func.blocks.iter().map(|b| b.term.clone()).collect();
    let mut moved = false;
    for &b in &start.visit {
        for or in [true, false] {
            moved |= pull_up(func, start, &preds[b], b, or, &val);
        }
    }
    if moved && !forward_in(func, &func.dfs_order_from(0)) {
        for (blk, term) in func.blocks.iter_mut().zip(before) {
            blk.term = term;
        }
        return false;
    }
    moved
}

/// One `or_pullup` (`or`) or `and_pullup` at `b`, whose incoming edges come from `preds`.
fn pull_up(
    func: &mut Function,
    start: &PassStart,
    preds: &[BlockId],
    b: BlockId,
    or: bool,
    val: &impl Fn(BlockId) -> Option<KeyId>,
) -> bool {
    // (true target, false target), or None for a return.
    let targets = |func: &Function, x: BlockId| match func.blocks.get(x).map(|b| &b.term) {
        Some(&Term::Branch { t, f, .. }) => Some((t, f)),
        Some(&Term::Jump(j)) => Some((j, j)),
        _ => None,
    };
    // The target every test of the chain shares, and the edge the chain follows.
    let split = |func: &Function, x: BlockId| {
        targets(func, x).map(|(t, f)| if or { (t, f) } else { (f, t) })
    };
    let Some(&first) = preds.first() else {
        return false;
    };
    let Some(v) = val(first) else {
        return false;
    };
    if preds.iter().any(|&p| val(p) != Some(v)) {
        return false;
    }
    let Some((common, _)) = split(func, b) else {
        return false;
    };
    // `diff`: the first block of the chain that tests another value; `same`: the first after
    // it that tests `v` again. The walk starts where the first in-edge's pred points: `b`,
    // unless an earlier pullup moved that edge (libpcap takes its false branch then).
    let in_chain = |func: &Function, x: BlockId| {
        split(func, x)
            .filter(|&(c, _)| c == common && start.dominates(b, x))
            .map(|(_, next)| next)
    };
    let Some((first_t, first_f)) = targets(func, first) else {
        return false;
    };
    let mut diff_parent = None;
    let mut diff = if first_t == b { b } else { first_f };
    // Chains are at most as long as the graph (it is acyclic, but bounded all the same).
    let mut steps = 0..func.blocks.len();
    loop {
        if steps.next().is_none() {
            return false;
        }
        let Some(next) = in_chain(func, diff) else {
            return false;
        };
        if val(diff) != Some(v) {
            break;
        }
        diff_parent = Some(diff);
        diff = next;
    }
    let mut same_parent = diff;
    let Some(mut same) = in_chain(func, diff) else {
        return false;
    };
    loop {
        if steps.next().is_none() {
            return false;
        }
        let Some(next) = in_chain(func, same) else {
            return false;
        };
        if val(same) == Some(v) {
            break;
        }
        same_parent = same;
        same = next;
    }
    let pull = same;
    let is_branch = |x: BlockId| matches!(func.blocks[x].term, Term::Branch { .. });
    if !is_branch(pull) || !is_branch(same_parent) || diff_parent.is_some_and(|d| !is_branch(d)) {
        return false;
    }
    let set_next = |func: &mut Function, x: BlockId, to: BlockId| {
        if let Term::Branch { t, f, .. } = &mut func.blocks[x].term {
            *(if or { f } else { t }) = to;
        }
    };
    let after = split(func, pull).map_or(pull, |(_, next)| next);
    set_next(func, same_parent, after);
    set_next(func, pull, diff);
    match diff_parent {
        Some(d) => set_next(func, d, pull),
        // At the top of the chain every edge into it now goes to the pulled-up test (as
        // libpcap does it: an edge that no longer led there is taken as the false one).
        None => {
            for &p in preds {
                match &mut func.blocks[p].term {
                    Term::Branch { t, f, .. } => *(if *t == b { t } else { f }) = pull,
                    Term::Jump(j) if *j == b => *j = pull,
                    _ => {}
                }
            }
        }
    }
    true
}

/// Whether every edge goes forward in `rpo`, a reverse post-order from the entry: then no
/// cycle is reachable from it.
fn forward_in(func: &Function, rpo: &[BlockId]) -> bool {
    let mut pos = vec![usize::MAX; func.blocks.len()];
    for (i, &b) in rpo.iter().enumerate() {
        pos[b] = i;
    }
    rpo.iter().all(|&b| {
        func.blocks[b]
            .succs()
            .all(|s| pos.get(s).is_some_and(|&p| p > pos[b]))
    })
}

/// libpcap's `opt_j` moves the edges of a pass bottom-up, those out of a block before those
/// into it, and moves an edge into a test whose branches meet (decided, or both threaded to
/// one block) past it when that test's block defines nothing read after it. So in one pass
/// an edge goes past a whole chain of such tests: a block's edges are threaded here after
/// those of the blocks below it. libpcap's root (where the entry's empty jumps lead) has no
/// edge into it and stays. Says whether it moved an edge.
fn skip_meeting_branches(func: &mut Function, order: &[BlockId], shared: &TempSet) -> bool {
    let mut root = 0;
    for _ in 0..func.blocks.len() {
        match func.blocks.get(root) {
            Some(Block {
                stmts,
                term: Term::Jump(next),
            }) if stmts.is_empty() && *next > root => root = *next,
            _ => break,
        }
    }
    let past = |func: &Function, x: BlockId| {
        let blk = func.blocks.get(x)?;
        let next = match blk.term {
            Term::Branch { t, f, .. } if t == f => t,
            Term::Jump(j) => j,
            _ => return None,
        };
        let quiet = !blk.stmts.iter().any(|s| shared.contains(&s.def()));
        (x != root && quiet && next != x).then_some(next)
    };
    let mut moved = false;
    for &b in order.iter().rev() {
        let mut targets = match func.blocks[b].term {
            Term::Branch { t, f, .. } => [t, f],
            Term::Jump(j) => [j, j],
            _ => continue,
        };
        for target in &mut targets {
            for _ in 0..MAX_HOPS {
                match past(func, *target) {
                    Some(next) => {
                        *target = next;
                        moved = true;
                    }
                    None => break,
                }
            }
        }
        match &mut func.blocks[b].term {
            Term::Branch { t, f, .. } => [*t, *f] = targets,
            Term::Jump(j) => *j = targets[0],
            _ => {}
        }
    }
    moved
}

// ---------------------------------------------------------------------------------------------
// Dead code.

/// Removes dead code (see the module docs); says whether anything changed. With
/// `like_libpcap` (the probes), a statement that can reject the frame goes too when nothing
/// reads its result, as libpcap's optimizer deletes any load nothing reads; and a branch whose
/// two successors are equal stays a branch, as libpcap keeps such a test (and the load it
/// reads) until every edge into it has moved past.
fn remove_dead(func: &mut Function, sc: &mut Scratch, like_libpcap: bool) -> bool {
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let mut changed = false;
    let mut collapsed = false;
    // Collapse blocks that can only reject, back to front.
    for &b in sc.order.iter().rev() {
        let bare_reject = |x: BlockId, f: &Function| {
            f.blocks[x].stmts.is_empty() && f.blocks[x].term == Term::Reject
        };
        let collapse = match func.blocks[b].term {
            Term::Branch { t, f, .. } => bare_reject(t, func) && bare_reject(f, func),
            Term::Jump(j) => bare_reject(j, func),
            _ => false,
        };
        if collapse {
            func.blocks[b].stmts.clear();
            func.blocks[b].term = Term::Reject;
            collapsed = true;
        }
        if let Term::Branch { t, f, .. } = func.blocks[b].term {
            if t == f && !like_libpcap {
                func.blocks[b].term = Term::Jump(t);
                changed = true;
            }
        }
    }
    if collapsed {
        // Blocks only the collapsed ones reached are gone: their uses no longer count.
        changed = true;
        func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    }
    // Remove unused definitions that cannot reject, with proven-in-bounds loads counted as
    // unable to reject (the min length is a per-path lower bound; use the meet at each block).
    // Only statements go, so the order stays; and of loads only those already proven in
    // bounds, so the proven lengths stay too (computed once, and only if needed).
    let order = &sc.order;
    let mut lens_ready = false;
    loop {
        let used = &mut sc.used;
        used.reset(func.num_temps);
        for &b in order {
            let blk = &func.blocks[b];
            for s in &blk.stmts {
                for u in s.uses() {
                    used.insert(u);
                }
            }
            for t in blk.term.uses() {
                used.insert(t);
            }
        }
        let mut removed = false;
        for &b in order {
            // Only a statement whose result nobody reads can go.
            if func.blocks[b].stmts.iter().all(|s| used.contains(&s.def())) {
                continue;
            }
            if !lens_ready {
                min_len_at_entry_into(func, order, &mut sc.min_len);
                lens_ready = true;
            }
            let mut len = sc.min_len.get(b).copied().unwrap_or(0);
            func.blocks[b].stmts.retain(|s| {
                let safe_load = match s {
                    Stmt::Load {
                        base: None,
                        off,
                        size,
                        ..
                    } => {
                        let end = u64::from(*off) + u64::from(size.bytes());
                        let safe = end <= len;
                        len = len.max(end);
                        safe
                    }
                    _ => false,
                };
                let can_reject = !like_libpcap && s.may_reject() && !safe_load;
                let keep = used.contains(&s.def()) || can_reject;
                removed |= !keep;
                keep
            });
        }
        if !removed {
            break;
        }
        changed = true;
    }
    changed
}

/// For each block, the frame length every path to it has proven by its loads, into `at`.
fn min_len_at_entry_into(func: &Function, order: &[BlockId], at: &mut Vec<u64>) {
    // u64::MAX: no path seen yet (every block in `order` gets one before it is read).
    at.clear();
    at.resize(func.blocks.len(), u64::MAX);
    if let Some(&first) = order.first() {
        at[first] = 0;
    }
    for &b in order {
        let mut len = at[b];
        if len == u64::MAX {
            len = 0;
        }
        for s in &func.blocks[b].stmts {
            if let Stmt::Load {
                base: None,
                off,
                size,
                ..
            } = s
            {
                len = len.max(u64::from(*off) + u64::from(size.bytes()));
            }
        }
        for s in func.blocks[b].succs() {
            at[s] = at[s].min(len);
        }
    }
    for v in at.iter_mut() {
        if *v == u64::MAX {
            *v = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redundant loads and computations.

/// What a temp holds, independent of the path (a value number's meaning): a frame load at a
/// constant offset or at a value plus a constant, the wire length, a constant, or an
/// operation on value numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Value {
    Abs { size: Size, off: u32 },
    Ind { size: Size, base: u32, off: u32 },
    Len,
    Const(u32),
    Op(AluOp, u32, u32),
    Neg(u32),
}

/// Value numbers: equal [`Value`]s get equal numbers.
type Numbering = HashCons<Value>;

/// Upper bound on the (temp, value number) pairs tracked at a point. Filters hold a handful
/// of values; the bound keeps the pass linear on pathological input (forgetting an entry can
/// cost an instruction, never a verdict).
const MAX_HELD: usize = 64;

/// Which temps hold which value numbers on every path to a point.
type Held = Vec<(Temp, u32)>;

fn held_by(held: &[(Temp, u32)], t: Temp) -> Option<u32> {
    held.iter().find(|(x, _)| *x == t).map(|&(_, v)| v)
}

fn operand_number(n: &mut Numbering, held: &[(Temp, u32)], o: Operand) -> Option<u32> {
    match o {
        Operand::K(k) => Some(n.const_id(k, || Value::Const(k))),
        Operand::T(t) => held_by(held, t),
    }
}

/// libpcap's value numbering, on our temps: a statement computing a value that another temp
/// holds on every path to it (a load of a field already loaded, `4 * (ip[0] & 0xf)` computed
/// again for the next port test) becomes a move from that temp; writes made useless by that
/// are dropped, and moves from temps that no longer change are propagated away.
///
/// Sound because the earlier computation ran on every path and did not reject (else the frame
/// was already rejected): the repeated one cannot reject either and gives the same value.
fn reuse_values(func: &mut Function, sc: &mut Scratch) -> Reused {
    func.topo_order_into(0, &mut sc.order, &mut sc.reach);
    let order = &sc.order;
    let numbers = &mut sc.numbers;
    numbers.clear();
    // The lists are kept from compilation to compilation (each holds at most `MAX_HELD`).
    let at_entry = &mut sc.held_at;
    if at_entry.len() < func.blocks.len() {
        at_entry.resize_with(func.blocks.len(), Held::new);
    }
    let reached = &mut sc.held_reached;
    reached.clear();
    reached.resize(func.blocks.len(), false);
    let held = &mut sc.held;
    let mut changed = false;
    let mut lost_reads = false;
    for &b in order.iter() {
        held.clear();
        if reached[b] {
            held.extend_from_slice(&at_entry[b]);
        }
        for s in &mut func.blocks[b].stmts {
            let n = &mut *numbers;
            let vn = match *s {
                Stmt::Load {
                    size,
                    base: None,
                    off,
                    ..
                } => Some(n.load_id(size, off, || Value::Abs { size, off })),
                Stmt::Load {
                    size,
                    base: Some(base),
                    off,
                    ..
                } => held_by(held, base).map(|base| n.id(Value::Ind { size, base, off })),
                Stmt::Len { .. } => Some(n.id(Value::Len)),
                Stmt::Mov { src, .. } => operand_number(n, held, src),
                Stmt::Alu { op, dst, rhs } => {
                    match (held_by(held, dst), operand_number(n, held, rhs)) {
                        (Some(a), Some(r)) => Some(n.id(Value::Op(op, a, r))),
                        _ => None,
                    }
                }
                Stmt::Neg { dst } => held_by(held, dst).map(|a| n.id(Value::Neg(a))),
            };
            let dst = s.def();
            if let (Some(vn), false) = (vn, matches!(s, Stmt::Mov { .. })) {
                if let Some(&(t, _)) = held.iter().find(|&&(t, v)| v == vn && t != dst) {
                    // A statement reading temps no longer does: they may now be unused.
                    lost_reads |= s.uses().next().is_some();
                    *s = Stmt::Mov {
                        dst,
                        src: Operand::T(t),
                    };
                    changed = true;
                }
            }
            held.retain(|&(t, _)| t != dst);
            if let Some(vn) = vn {
                if held.len() == MAX_HELD {
                    held.remove(0);
                }
                held.push((dst, vn));
            }
        }
        for succ in func.blocks[b].succs() {
            let entry = &mut at_entry[succ];
            if reached[succ] {
                entry.retain(|p| held.contains(p));
            } else {
                entry.clear();
                entry.extend_from_slice(held);
                reached[succ] = true;
            }
        }
    }
    if !changed {
        return Reused::Nothing;
    }
    lost_reads |= drop_overwritten(func, order, &mut sc.min_len, &mut sc.keep, &mut sc.unneeded);
    lost_reads |= propagate_copies(func, order, &mut sc.writes, &mut sc.rename, &mut sc.read);
    if lost_reads {
        Reused::LostReads
    } else {
        Reused::Changed
    }
}

/// What [`reuse_values`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reused {
    Nothing,
    /// Changed statements, but every temp read before is still read: no new dead code (the
    /// proven frame lengths stay too, as a load is replaced only where every path loaded it).
    Changed,
    /// Some temp may have lost its last read.
    LostReads,
}

/// Drops, within each block, writes to a temp that the block overwrites before anything reads
/// it, when they cannot reject (pure arithmetic, loads proven in bounds by earlier loads); says
/// whether it dropped any.
fn drop_overwritten(
    func: &mut Function,
    order: &[BlockId],
    min_len: &mut Vec<u64>,
    keep: &mut Vec<bool>,
    unneeded: &mut Vec<Temp>,
) -> bool {
    // The proven frame lengths, computed only if a load is a candidate.
    let mut lens_ready = false;
    let mut any = false;
    for &b in order {
        let blk = &func.blocks[b];
        if blk.stmts.len() < 2 {
            // Nothing to overwrite.
            continue;
        }
        // Backwards: a temp is unneeded where it is written again before any read.
        unneeded.clear();
        keep.clear();
        keep.resize(blk.stmts.len(), true);
        let mut dropped = false;
        for (i, s) in blk.stmts.iter().enumerate().rev() {
            let def = s.def();
            if unneeded.contains(&def) {
                let in_bounds = match s {
                    Stmt::Load {
                        base: None,
                        off,
                        size,
                        ..
                    } => {
                        if !lens_ready {
                            min_len_at_entry_into(func, order, min_len);
                            lens_ready = true;
                        }
                        // The frame length proven before this statement.
                        let before = blk.stmts[..i].iter().fold(min_len[b], |len, s| match s {
                            Stmt::Load {
                                base: None,
                                off,
                                size,
                                ..
                            } => len.max(u64::from(*off) + u64::from(size.bytes())),
                            _ => len,
                        });
                        u64::from(*off) + u64::from(size.bytes()) <= before
                    }
                    _ => false,
                };
                if in_bounds || !s.may_reject() {
                    keep[i] = false;
                    dropped = true;
                    continue;
                }
            } else {
                unneeded.push(def);
            }
            let uses = s.uses();
            unneeded.retain(|t| !uses.clone().any(|u| u == *t));
        }
        if dropped {
            any = true;
            let mut i = 0;
            func.blocks[b].stmts.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
    }
    any
}

/// Where a temp is written: how often, and whether all writes are in one block (which one,
/// and the index of the last write there).
#[derive(Clone, Copy, Default)]
struct Writes {
    count: u32,
    block: Option<BlockId>,
    last: usize,
    one_block: bool,
}

/// Removes `d = s` where `d` is written only there and `s` no longer changes after it (all of
/// `s`'s writes are in one block, which every path runs before the move, as `s` is written
/// before it is read: the graph is acyclic, so that block cannot run again), reading `s`
/// wherever `d` was read. Also drops `t = t`.
/// Says whether some temp may have lost a read (a removed move was the only reader of its
/// source, or a temp was moved to itself).
fn propagate_copies(
    func: &mut Function,
    order: &[BlockId],
    writes: &mut Vec<Writes>,
    rename: &mut Vec<Option<Temp>>,
    read: &mut Vec<bool>,
) -> bool {
    let n = func.num_temps as usize;
    writes.clear();
    writes.resize(n, Writes::default());
    for &b in order {
        for (i, s) in func.blocks[b].stmts.iter().enumerate() {
            if let Some(w) = writes.get_mut(s.def().0 as usize) {
                w.one_block = match w.block {
                    None => true,
                    Some(other) => w.one_block && other == b,
                };
                w.block = Some(b);
                w.count = w.count.saturating_add(1);
                w.last = i;
            }
        }
    }
    let settled_at = |s: Temp, b: BlockId, i: usize| {
        writes
            .get(s.0 as usize)
            .is_some_and(|w| w.one_block && (w.block != Some(b) || w.last < i))
    };
    rename.clear();
    rename.resize(n, None);
    for &b in order {
        for (i, s) in func.blocks[b].stmts.iter().enumerate() {
            if let Stmt::Mov {
                dst,
                src: Operand::T(src),
            } = *s
            {
                let once = writes.get(dst.0 as usize).is_some_and(|w| w.count == 1);
                if dst != src && once && settled_at(src, b, i) {
                    let root = rename.get(src.0 as usize).copied().flatten().unwrap_or(src);
                    if let Some(r) = rename.get_mut(dst.0 as usize) {
                        *r = Some(root);
                    }
                }
            }
        }
    }
    // Which renamed temps are still read (through their new name).
    read.clear();
    read.resize(n, false);
    let map = |t: &mut Temp, read: &mut Vec<bool>| {
        if let Some(Some(r)) = rename.get(t.0 as usize) {
            read[t.0 as usize] = true;
            *t = *r;
        }
    };
    let map_op = |o: &mut Operand, read: &mut Vec<bool>| {
        if let Operand::T(t) = o {
            map(t, read);
        }
    };
    let mut self_moves = false;
    for &b in order {
        let blk = &mut func.blocks[b];
        let copies = |s: &Stmt| {
            matches!(
                s,
                Stmt::Mov {
                    src: Operand::T(_),
                    ..
                }
            )
        };
        if blk.stmts.iter().any(copies) {
            blk.stmts.retain(|s| match *s {
                Stmt::Mov {
                    dst,
                    src: Operand::T(src),
                } => {
                    self_moves |= dst == src;
                    dst != src && !matches!(rename.get(dst.0 as usize), Some(Some(_)))
                }
                _ => true,
            });
        }
        for s in &mut blk.stmts {
            match s {
                Stmt::Load { base: Some(t), .. } => map(t, read),
                Stmt::Mov { src, .. } => map_op(src, read),
                Stmt::Alu { rhs, .. } => map_op(rhs, read),
                _ => {}
            }
        }
        if let Term::Branch { a, b: rhs, .. } = &mut blk.term {
            map(a, read);
            map_op(rhs, read);
        }
    }
    // A removed move whose destination nobody read took a read of its source with it.
    self_moves || (0..n).any(|t| rename[t].is_some() && !read[t])
}
