//! Shared by the conformance tests: run netmux and libpcap side by side and compare.
//!
//! Each netmux setting is compared with libpcap under the same setting: `-O0` with
//! `pcap_compile(..., optimize=0)`, exactly (any difference is a failure), and `-O1` with
//! `pcap_compile(..., optimize=1)`, the default of tcpdump and of every libpcap user.
//!
//! One difference at `-O1` is reported and counted rather than failed, because it comes from
//! libpcap's optimizer, not from the language: **libpcap's optimizer changes libpcap's own
//! verdict** on some frames. Its dead-store elimination deletes loads whose value it no longer
//! needs (`opt_deadstores`), and its jump threading (`opt_j`/`fold_edge`) skips blocks whose
//! loads would have failed, so a frame too short for such a load is rejected by the
//! unoptimized program and accepted by the optimized one (or the reverse when a test is pulled
//! ahead of a load by `or_pullup`/`and_pullup`). netmux's optimizer never changes a verdict, so
//! there netmux gives libpcap's *unoptimized* verdict: [`compare`] accepts a differing frame
//! only when libpcap `-O0` gives netmux's verdict on it
//! ([`Outcome::Agreed::libpcap_optimizer_divergences`]), or when netmux rejects it on a load
//! at a wrapped constant offset (`tcp[-40]`, which libpcap's optimizer folds to `[x + -26]`)
//! that libpcap's optimizer deleted: netmux keeps such a load with its folded meaning, which
//! the unoptimized program does not have; or when libpcap's optimizer left such an index
//! unfolded (it folds it only when the X register is not used after the block, which depends on
//! what else it shares between blocks; netmux always folds it). Reproducing the optimized verdict
//! would mean reproducing those verdict-changing rewrites on libpcap's own A/X/scratch-memory
//! block structure, i.e. porting `optimize.c` and libpcap's code shape with it, and giving up
//! the guarantee that optimizing never changes what a filter accepts.
//!
//! Which filters only libpcap's *optimizer* refuses ("expression rejects all packets", a
//! constant division by zero it folds its way to) depends on how much its algorithm happens to
//! prove; netmux predicts it ([`netmux_compiler::libpcap`]) and a wrong prediction is a
//! failure like any other ([`Outcome::OptimizerRefusal`] only says which kind of failure it
//! is).
#![allow(dead_code)]

use netmux_compiler::{compile, LinkType, Options};
use netmux_testkit::{BpfProgram, Frame};
use netmux_vm::interp;

/// One disagreement.
#[derive(Debug)]
pub struct Mismatch {
    pub expr: String,
    pub what: String,
}

/// What happened to one expression.
pub enum Outcome {
    /// Both refused to compile it.
    BothRejected,
    /// Same verdict as libpcap on every frame, except on frames where libpcap's optimized and
    /// unoptimized programs disagree and netmux gives the unoptimized verdict.
    Agreed {
        libpcap_optimizer_divergences: Vec<usize>,
    },
    /// Only one side's *optimizer* refuses the filter ("expression rejects all packets",
    /// "division by zero" after constant folding, ...), while both compile it unoptimized:
    /// netmux predicted what libpcap's optimizer proves wrongly. A failure.
    OptimizerRefusal(Mismatch),
    /// A real disagreement.
    Mismatch(Mismatch),
}

/// libpcap errors that come from its optimizer, so an unoptimized netmux build cannot see them.
fn optimizer_only_error(msg: &str) -> bool {
    msg.contains("rejects all packets")
        || msg.contains("by zero")
        || msg.contains("shift by more than 31")
}

/// Compiles `expr` with both and compares verdicts on every frame (netmux with `optimize`).
pub fn compare(expr: &str, frames: &[Frame], optimize: bool) -> Outcome {
    compare_on(expr, frames, optimize, LinkType::Ethernet)
}

/// As [`compare`], for frames of the link layer `link`.
pub fn compare_on(expr: &str, frames: &[Frame], optimize: bool, link: LinkType) -> Outcome {
    let ours = compile(
        expr,
        &Options {
            optimize,
            link,
            ..Options::default()
        },
    );
    // libpcap under the same setting as netmux.
    let theirs = BpfProgram::compile_for(expr, optimize, link.dlt() as i32);
    let (ours, theirs) = match (ours, theirs) {
        (Err(_), Err(_)) => return Outcome::BothRejected,
        (Ok(_), Err(e)) => {
            let what = format!("libpcap rejects the expression ({e}); netmux compiles it");
            if optimize
                && optimizer_only_error(&e.to_string())
                && BpfProgram::compile_for(expr, false, link.dlt() as i32).is_ok()
            {
                return Outcome::OptimizerRefusal(Mismatch {
                    expr: expr.into(),
                    what,
                });
            }
            return Outcome::Mismatch(Mismatch {
                expr: expr.into(),
                what,
            });
        }
        (Err(e), Ok(_)) => {
            let what = format!("netmux rejects the expression, libpcap compiles it:\n{e}");
            let plain = Options {
                optimize: false,
                link,
                ..Options::default()
            };
            if optimize && compile(expr, &plain).is_ok() {
                return Outcome::OptimizerRefusal(Mismatch {
                    expr: expr.into(),
                    what,
                });
            }
            return Outcome::Mismatch(Mismatch {
                expr: expr.into(),
                what,
            });
        }
        (Ok(o), Ok(t)) => (o, t),
    };
    let mut unoptimized: Option<Option<BpfProgram>> = None;
    let mut divergences = Vec::new();
    let mut scratch = [0u32; 16];
    for (i, f) in frames.iter().enumerate() {
        let a = interp::run(&ours, &f.data, f.wire_len, &mut scratch).is_accept();
        let b = theirs.matches(&f.data, f.wire_len);
        if a == b {
            continue;
        }
        // Only at -O1: libpcap's optimizer changed libpcap's verdict on this frame, and
        // netmux gives the unoptimized one (see the module docs).
        if optimize {
            let plain = unoptimized.get_or_insert_with(|| {
                BpfProgram::compile_for(expr, false, link.dlt() as i32).ok()
            });
            if let Some(p) = plain {
                if p.matches(&f.data, f.wire_len) == a
                    || p.matches_folding_wrapped_indexes(&f.data, f.wire_len) == a
                    || (!a && netmux_testkit::oracle::kept_a_deleted_wrapped_load(&ours, &theirs))
                    || netmux_testkit::oracle::left_a_wrapped_index_unfolded(&theirs)
                {
                    divergences.push(i);
                    continue;
                }
            }
        }
        return Outcome::Mismatch(Mismatch {
            expr: expr.into(),
            what: format!(
                "frame {i} (captured {}, wire {}): netmux {}, libpcap {}\n  frame: {}",
                f.data.len(),
                f.wire_len,
                if a { "accepts" } else { "rejects" },
                if b { "accepts" } else { "rejects" },
                hex(&f.data)
            ),
        });
    }
    Outcome::Agreed {
        libpcap_optimizer_divergences: divergences,
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().take(96).map(|x| format!("{x:02x}")).collect()
}

/// Runs `compare` over many expressions; returns the failures and prints the frames where
/// libpcap's optimizer changed its own verdict (counted, not failed: see the module docs).
pub fn compare_all<'a>(
    exprs: impl IntoIterator<Item = &'a str>,
    frames: &[Frame],
    optimize: bool,
) -> Vec<String> {
    compare_all_with(exprs, frames, optimize, true, LinkType::Ethernet)
}

/// As [`compare_all`], for frames of the link layer `link`.
pub fn compare_all_on<'a>(
    exprs: impl IntoIterator<Item = &'a str>,
    frames: &[Frame],
    optimize: bool,
    link: LinkType,
) -> Vec<String> {
    compare_all_with(exprs, frames, optimize, true, link)
}

/// As [`compare_all`], but exact: a frame where libpcap's optimizer changed its own verdict
/// is a failure too. The conformance corpus meets this bar; random and crafted truncated
/// frames do not (see the module docs).
pub fn compare_all_exact<'a>(
    exprs: impl IntoIterator<Item = &'a str>,
    frames: &[Frame],
    optimize: bool,
) -> Vec<String> {
    compare_all_with(exprs, frames, optimize, false, LinkType::Ethernet)
}

fn compare_all_with<'a>(
    exprs: impl IntoIterator<Item = &'a str>,
    frames: &[Frame],
    optimize: bool,
    tolerate_verdict_changes: bool,
    link: LinkType,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut diverged = 0;
    for e in exprs {
        match compare_on(e, frames, optimize, link) {
            Outcome::BothRejected => {}
            Outcome::Agreed {
                libpcap_optimizer_divergences: d,
            } => {
                if !d.is_empty() && !tolerate_verdict_changes {
                    bad.push(format!(
                        "[-O{}] {e}: libpcap's optimizer changes its own verdict on frame #{} and {} other(s); netmux gives libpcap's unoptimized verdict",
                        u8::from(optimize),
                        d[0],
                        d.len() - 1
                    ));
                } else if !d.is_empty() {
                    diverged += 1;
                    eprintln!(
                        "[-O{}] {e}: libpcap's optimizer changes its own verdict on {} frame(s) (first: #{}); netmux gives libpcap's unoptimized verdict",
                        u8::from(optimize),
                        d.len(),
                        d[0]
                    );
                }
            }
            Outcome::OptimizerRefusal(m) => bad.push(format!(
                "[-O{}] {}: only one optimizer refuses it: {}",
                u8::from(optimize),
                m.expr,
                m.what
            )),
            Outcome::Mismatch(m) => {
                bad.push(format!("[-O{}] {}: {}", u8::from(optimize), m.expr, m.what))
            }
        }
    }
    eprintln!(
        "[-O{}] {diverged} expressions where libpcap's optimizer changed its own verdict on some frame",
        u8::from(optimize)
    );
    bad
}
