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
//! nothing reads, and its first loop's test reordering (the optimizer's `reorder` pass, which
//! only these profiles switch on).
//!
//! - `errors.rs`: where libpcap's second loop reports a division, modulus or shift.
//! - `rejects_all.rs`: whether libpcap proves that the filter rejects every packet, and the cheap
//!   checks that say when that probe can answer yes.
//!
//! It is a model, not libpcap's algorithm: the random differential test (`tests/random.rs`)
//! is its judge, and a filter only one of the two compilers refuses fails it. It never changes
//! the code netmux emits: it reads the function before and after [`crate::opt::optimize`],
//! works on copies, and answers only whether to refuse. Its one entry is [`Probe`].

pub(crate) mod errors;
pub(crate) mod rejects_all;

pub use errors::OptError;

use crate::ast::Expr;
use crate::error::ErrorKind;
use crate::gencode::{Gen, GenConfig, GenNotes};
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

/// Why libpcap would refuse a filter that its code generator accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its optimizer proves that the program rejects every packet: "expression rejects all
    /// packets".
    RejectsAllPackets,
    /// Its optimizer reports a division, modulus or shift by a bad constant.
    Reported(OptError),
}

impl Refusal {
    /// The compile error netmux gives for it: libpcap's message.
    pub(crate) fn error_kind(&self) -> ErrorKind {
        match self {
            Refusal::RejectsAllPackets => ErrorKind::RejectsAllPackets,
            Refusal::Reported(e) => ErrorKind::Semantic(
                match e {
                    OptError::DivisionByZero => "division by zero",
                    OptError::ModulusByZero => "modulus by zero",
                    OptError::ShiftTooLarge => "shift by more than 31 bits",
                }
                .to_owned(),
            ),
        }
    }
}

/// The model's one entry: whether libpcap would refuse a filter, asked with the function
/// before [`crate::opt::optimize`] ([`Probe::new`]) and answered with it after
/// ([`Probe::refusal`]).
///
/// It needs both: its error probe and its cheapest checks read the unoptimized function, its
/// other checks the optimized one. A copy of every function would cost a few percent of
/// compile time, so `new` keeps one only where the rejects-all probe is likely to need it,
/// and `refusal` generates the function again from the AST in the rare other cases (the same
/// code: generation is a function of the AST).
pub struct Probe<'a> {
    ast: &'a Expr,
    config: GenConfig<'a>,
    notes: &'a GenNotes,
    /// What libpcap's optimizer reports, found before optimizing.
    error: Option<OptError>,
    /// libpcap's prover can fold what ours does not ([`rejects_all::has_libpcap_only_folds`]).
    folds: bool,
    /// The unoptimized function, kept when `folds`.
    unoptimized: Option<Function>,
}

impl<'a> Probe<'a> {
    /// Notes what the model needs of `unoptimized`, which `gen` generated from `ast`.
    pub fn new(ast: &'a Expr, unoptimized: &Function, gen: &'a Gen<'a>) -> Probe<'a> {
        let notes = &gen.libpcap;
        let mut probe = Probe {
            ast,
            config: gen.config(),
            notes,
            error: None,
            folds: false,
            unoptimized: None,
        };
        // libpcap does not optimize filters with `protochain` or `geneve` at all, so it
        // reports none of its optimizer's errors for them.
        if notes.optimizer_off {
            return probe;
        }
        // libpcap's optimizer reports a division, modulus or shift by a bad constant (when its
        // second loop folds the arithmetic) before it looks at what the program accepts.
        if errors::may_report_errors(unoptimized) {
            probe.error = errors::libpcap_errors(unoptimized).err();
            if probe.error.is_some() {
                return probe;
            }
        }
        probe.folds = rejects_all::has_libpcap_only_folds(unoptimized);
        probe.unoptimized = probe.folds.then(|| unoptimized.clone());
        probe
    }

    /// Whether libpcap would refuse the filter, given the function [`crate::opt::optimize`]
    /// made of the one [`Probe::new`] saw.
    pub fn refusal(self, optimized: &Function) -> Option<Refusal> {
        if let Some(e) = self.error {
            return Some(Refusal::Reported(e));
        }
        if self.notes.optimizer_off {
            return None;
        }
        // The probe for libpcap's "rejects all packets" is as costly as the optimizer, so it
        // runs only where it can say yes: where ours found no accepting path, where libpcap's
        // extra folds (`0 / x`) could apply, where ours kept a load only because it can reject
        // (libpcap drops it and threads past its test), or where libpcap's test reordering
        // could move a test to edges that decide it (a heuristic check).
        let probe = self.folds
            || rejects_all::always_rejects(optimized)
            || rejects_all::has_effect_only_loads(optimized)
            || rejects_all::may_pull_up_a_decision(optimized);
        if !probe {
            return None;
        }
        let unoptimized = self.unoptimized.or_else(|| {
            let mut again = Gen::new(self.config);
            let cond = again.generate(self.ast).ok()?;
            Some(lower(cond, &again.prologue, again.temps))
        });
        unoptimized
            .is_some_and(|u| rejects_all::libpcap_rejects_all(&u, &self.notes.opaque_tests))
            .then_some(Refusal::RejectsAllPackets)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The probes take any function: one with a cycle (the code generator makes none) and a
    /// temp past the function's count must not hang them.
    #[test]
    fn the_probes_end_on_a_function_with_a_cycle() {
        let branch = |cmp, a, k, t, f| Term::Branch {
            cmp,
            a: Temp(a),
            b: Operand::K(k),
            t,
            f,
        };
        let func = Function {
            blocks: vec![
                Block {
                    stmts: vec![
                        Stmt::Len { dst: Temp(1) },
                        Stmt::Mov {
                            dst: Temp(3),
                            src: Operand::T(Temp(11)),
                        },
                    ],
                    term: branch(Cmp::Gt, 1, 3, 1, 3),
                },
                Block {
                    stmts: vec![],
                    term: branch(Cmp::Gt, 3, 1, 2, 2),
                },
                Block {
                    stmts: vec![Stmt::Len { dst: Temp(3) }],
                    term: Term::Jump(0),
                },
                Block {
                    stmts: vec![Stmt::Mov {
                        dst: Temp(u32::MAX),
                        src: Operand::K(0),
                    }],
                    term: branch(Cmp::Eq, 2, 2, 1, 0),
                },
            ],
            num_temps: 12,
        };
        // Whatever they answer: that they answer.
        let _ = rejects_all::libpcap_rejects_all(&func, &[Temp(3)]);
        let _ = errors::libpcap_errors(&func);
    }
}
