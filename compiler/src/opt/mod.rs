//! The optimizer: rewrites of the IR that never change a verdict.
//!
//! Passes, repeated until nothing changes (bounded by [`MAX_ROUNDS`]):
//!
//! 1. **Constant folding** (`fold.rs`): constants are propagated through moves and ALU
//!    operations, branches between constants are decided, `x & 0` and `x * 0` become 0 and
//!    `x + 0` disappears, as in libpcap.
//! 2. **Decided tests and jump threading** (`thread.rs`, over the facts of `facts.rs`): a forward
//!    data-flow over the acyclic graph records, for each value computed from the frame, which
//!    tests every path so far took and with what outcome; a branch those facts decide becomes
//!    a jump, and an edge into a block that only re-loads fields already loaded on that path
//!    and whose test the edge's facts decide is redirected to the decided successor.
//! 3. **Dead code** (`dead.rs`): statements whose results are never used and that cannot
//!    reject go; a branch whose two successors are equal becomes a jump; a block every path
//!    out of which rejects becomes `reject`; unreachable blocks go.
//!
//! After those rounds settle, once:
//!
//! 4. **Redundant loads and computations** (`values.rs`, libpcap's value numbering on our
//!    temps): a statement computing a value some temp already holds on every path to it
//!    becomes a move from that temp; writes that leaves unread are dropped and the moves are
//!    propagated away.
//!
//! Verdict preservation rests on one rule: a statement that may reject (a load that could be
//! out of bounds, a division by a register) is never removed or skipped unless the only
//! possible outcome of the code after it is reject anyway.
//!
//! The passes take a `PassProfile`: [`optimize`] runs `PassProfile::SOUND`, for which each
//! pass keeps that rule. The libpcap refusal model ([`crate::libpcap`]) runs the same passes
//! under its own profiles, on a copy of the function, to predict what libpcap's optimizer
//! proves; what it computes there is never emitted.

mod dead;
pub(crate) mod facts;
mod fold;
mod hashcons;
mod reorder;
mod thread;
mod values;

pub(crate) use fold::fold_constants;

use crate::ir::*;
use dead::remove_dead;
use facts::{Bits, FactTable, Interner, KeyId, Summary, TempSet};
use fold::may_fold;
use reorder::{pull_up_as_libpcap, PassStart};
use thread::decide_and_thread;
use values::{reuse_values, Held, Numbering, Reused, Writes};

/// Upper bound on optimizer rounds (each round is linear in the program; real filters settle
/// in two or three).
pub const MAX_ROUNDS: usize = 12;

/// How many decided blocks one edge is threaded through in one pass.
pub(crate) const MAX_HOPS: usize = 8;

/// Which variant of each pass a run of the rounds uses, named after what it changes.
/// [`PassProfile::SOUND`] is the optimizer; the libpcap model defines the profiles that follow
/// libpcap's optimizer loops (`PassProfile::LIBPCAP_FIRST_LOOP`, `PassProfile::LIBPCAP_PROVER`
/// in [`crate::libpcap`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PassProfile {
    /// How far constant folding goes.
    pub(crate) fold: Fold,
    /// Where a fact learned from a test holds.
    pub(crate) facts: Facts,
    /// What happens to a branch whose two successors are the same block.
    pub(crate) meeting_branches: MeetingBranches,
    /// Dead-code removal deletes a statement nothing reads even when it can reject the frame
    /// (a load, a division by a register), as libpcap's optimizer deletes any load nothing
    /// reads. Unsound: the frame it would have rejected is accepted.
    pub(crate) drop_unread_rejecting: bool,
    /// Each round ends with libpcap's `or_pullup` and `and_pullup`, which move a test up a
    /// chain of `||` or `&&` tests on the graph the round started with
    /// ([`reorder`]). Unsound: a test moves ahead of a load that could
    /// reject.
    pub(crate) pullups: bool,
}

impl PassProfile {
    /// The optimizer proper: every pass keeps every verdict.
    pub(crate) const SOUND: PassProfile = PassProfile {
        fold: Fold::Sound,
        facts: Facts::PerPath,
        meeting_branches: MeetingBranches::BecomeJumps,
        drop_unread_rejecting: false,
        pullups: false,
    };
}

/// How far constant folding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Verdict-preserving (the optimizer proper).
    Sound,
    /// What libpcap's first optimizer loop knows: constants are moved, never computed (it
    /// folds no operator), and branches between them are decided. For the libpcap model's
    /// error probe.
    FirstLoop,
    /// Also libpcap's unsound folds (`0 / x` is 0), for predicting what it proves.
    Aggressive,
}

/// Where a fact learned from a test holds, and so which later tests it decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Facts {
    /// On every path through the test: blocks with the same test share their facts, and an
    /// edge threaded past a decided block carries what that block's test taught.
    PerPath,
    /// Only where the edge that taught it dominates, as libpcap's `fold_edge` has it: facts are
    /// numbered per block, flow along the edges the pass started with (a decided branch's dead
    /// side included), and a threaded edge learns nothing from the tests it skips.
    PerDominatingEdge,
}

/// What happens to a branch whose two successors are the same block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MeetingBranches {
    /// It becomes a jump; its statements stay (they may reject).
    BecomeJumps,
    /// It stays a branch, and the edges into it move past it when its block defines nothing
    /// read after it, as libpcap's `opt_j` does: its statements are skipped. Unsound.
    EdgesMovePast,
}

/// Optimizes `func` in place.
pub fn optimize(func: &mut Function) {
    let mut scratch = Scratch::take();
    let settled = run_passes(func, PassProfile::SOUND, &mut scratch);
    // At a fixed point of the rounds, dead-code removal and compaction would change nothing
    // unless value numbering took the last read of some temp; and value numbering changes no
    // branch, so only dead code found after it can leave blocks to compact.
    let reused = reuse_values(func, &mut scratch);
    let removed = (reused == Reused::LostReads || !settled)
        && remove_dead(func, &mut scratch, PassProfile::SOUND);
    if removed || !settled {
        func.compact_with(&mut scratch.order, &mut scratch.reach);
    }
    scratch.give_back();
}

/// Runs the rounds under `profile` with the thread's scratch buffers; says whether they
/// reached a fixed point (rather than the round limit). For the libpcap model, which runs its
/// profiles on a copy of the function.
pub(crate) fn run_rounds(func: &mut Function, profile: PassProfile) -> bool {
    let mut scratch = Scratch::take();
    let settled = run_passes(func, profile, &mut scratch);
    scratch.give_back();
    settled
}

/// Runs the rounds; says whether they reached a fixed point (rather than the round limit).
fn run_passes(func: &mut Function, profile: PassProfile, scratch: &mut Scratch) -> bool {
    func.compact_with(&mut scratch.order, &mut scratch.reach);
    for _ in 0..MAX_ROUNDS {
        // Each pass says whether it changed the function; a round that changed nothing is a
        // fixed point (the passes are deterministic), so the rounds stop there.
        // The pullups reorder tests on the graph the round started with.
        let start = profile.pullups.then(|| PassStart::of(func));
        let folds = may_fold(func);
        let folded = folds && fold_constants(func, profile.fold);
        let threaded = decide_and_thread(func, scratch, profile);
        let pulled = start
            .as_ref()
            .is_some_and(|s| pull_up_as_libpcap(func, s, &scratch.summaries));
        let removed = remove_dead(func, scratch, profile);
        let renumbered = func.compact_with(&mut scratch.order, &mut scratch.reach);
        if !(folded || threaded.changed || pulled || removed || renumbered) {
            return true;
        }
        // A round whose only changes were decisions and threaded edges is a fixed point too
        // when they made no block pure ([`thread::Threaded::settled`]): the next round would
        // see the same statements and so the same summaries and facts, and on every edge no
        // more facts than this round had (a threaded edge carries what the blocks it skips
        // taught; the edge straight to its target does not). Deciding is monotone in the
        // facts, so it would decide and thread nothing new; dead code already found nothing,
        // and folding has nothing to work on.
        // (Not with facts along the edges of the round before: the next round sees new ones.)
        if profile.facts == Facts::PerPath && !pulled && !folds && !removed && threaded.settled {
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
    /// The buffers of [`values`]' `drop_overwritten` and `propagate_copies`.
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
