//! A model of libpcap's optimizer refusals, fenced off from the optimizer.
//!
//! libpcap 1.10's `pcap_compile` with optimization refuses some filters its code generator
//! accepts: its optimizer proves that the program rejects every packet ("expression rejects
//! all packets"), or folds its way to a division or modulus by a constant zero, or a shift by
//! 32 or more, and reports it. Which filters depends on how much its algorithm happens to
//! prove, not on the language, so netmux predicts it, and refuses the same filters.
//!
//! The model is built from the optimizer's own passes ([`crate::opt`]), run on a copy of the
//! unoptimized function under profiles that follow libpcap's optimizer loops
//! (`PassProfile::LIBPCAP_FIRST_LOOP`, `PassProfile::LIBPCAP_PROVER`): libpcap's extra,
//! unsound folds, its facts that hold only along dominating edges, its deletion of loads
//! nothing reads, and what its first loop does that the passes do not (`first_loop.rs`).
//!
//! - [`errors`]: where libpcap's second loop reports a division, modulus or shift.
//! - [`rejects_all`]: whether libpcap proves that the filter rejects every packet, and the cheap
//!   checks that say when that probe can answer yes.
//! - `first_loop.rs`: the pullups, and edges moved past tests whose branches meet.
//!
//! It is a model, not libpcap's algorithm: the random differential test (`tests/random.rs`)
//! is its judge, and a filter only one of the two compilers refuses fails it. It never changes
//! the code netmux emits: it works on copies of the function and answers only whether to
//! refuse.

pub mod errors;
pub(crate) mod first_loop;
pub mod rejects_all;

use crate::ir::*;
use crate::opt::{Facts, Fold, MeetingBranches, PassProfile};

impl PassProfile {
    /// libpcap's first optimizer loop, as its error reports need it: constants are moved,
    /// never computed ([`Fold::FirstLoop`]); facts hold along dominating edges; edges move past
    /// tests whose branches meet; loads nothing reads go; tests are reordered by the pullups.
    pub(crate) const LIBPCAP_FIRST_LOOP: PassProfile = PassProfile {
        fold: Fold::FirstLoop,
        facts: Facts::PerDominatingEdge,
        meeting_branches: MeetingBranches::EdgesMovePast,
        drop_unread_rejecting: true,
        pullups: true,
    };

    /// What libpcap's optimizer proves about what a program accepts: the first loop, with
    /// libpcap's unsound folds (`0 / x` is 0, [`Fold::Aggressive`]).
    pub(crate) const LIBPCAP_PROVER: PassProfile = PassProfile {
        fold: Fold::Aggressive,
        ..PassProfile::LIBPCAP_FIRST_LOOP
    };
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
