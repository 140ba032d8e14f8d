//! Shared by the conformance tests: run netmux and libpcap side by side and compare.
//!
//! The reference is libpcap with its optimizer on (`pcap_compile(..., 1, ...)`), as tcpdump
//! runs it. libpcap's optimizer itself sometimes changes a verdict on a truncated frame (it
//! deletes loads whose values it no longer needs, and reorders tests), so its optimized and
//! unoptimized programs disagree there. netmux's optimizer never changes a verdict, so on such
//! a frame netmux gives libpcap's *unoptimized* verdict. [`compare`] reports those frames
//! separately ([`Outcome::Agreed::libpcap_optimizer_divergences`]) and the tests print them;
//! every other difference is a failure.
#![allow(dead_code)]

use netmux_compiler::{compile, Options};
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
    /// what libpcap's optimizer refuses depends on how much it happens to prove, which netmux
    /// predicts only approximately. Printed and counted, not a failure.
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
    let ours = compile(
        expr,
        &Options {
            optimize,
            ..Options::default()
        },
    );
    let theirs = BpfProgram::compile(expr, true);
    let (ours, theirs) = match (ours, theirs) {
        (Err(_), Err(_)) => return Outcome::BothRejected,
        (Ok(_), Err(e)) => {
            if !optimize && optimizer_only_error(&e.to_string()) {
                return Outcome::BothRejected;
            }
            let what = format!("libpcap rejects the expression ({e}); netmux compiles it");
            if BpfProgram::compile(expr, false).is_ok() {
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
        let plain = unoptimized.get_or_insert_with(|| BpfProgram::compile(expr, false).ok());
        if let Some(p) = plain {
            if p.matches(&f.data, f.wire_len) == a {
                divergences.push(i);
                continue;
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

/// Runs `compare` over many expressions; returns the failures and prints the divergences.
pub fn compare_all<'a>(
    exprs: impl IntoIterator<Item = &'a str>,
    frames: &[Frame],
    optimize: bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut diverged = 0;
    let mut rejects_all = 0;
    for e in exprs {
        match compare(e, frames, optimize) {
            Outcome::BothRejected => {}
            Outcome::Agreed {
                libpcap_optimizer_divergences: d,
            } => {
                if !d.is_empty() {
                    diverged += 1;
                    eprintln!(
                        "[-O{}] {e}: libpcap's optimizer changes its own verdict on {} frame(s) (first: #{}); netmux gives libpcap's unoptimized verdict",
                        u8::from(optimize),
                        d.len(),
                        d[0]
                    );
                }
            }
            Outcome::OptimizerRefusal(m) => {
                rejects_all += 1;
                eprintln!("[-O{}] {}: {}", u8::from(optimize), m.expr, m.what);
            }
            Outcome::Mismatch(m) => {
                bad.push(format!("[-O{}] {}: {}", u8::from(optimize), m.expr, m.what))
            }
        }
    }
    eprintln!(
        "[-O{}] {rejects_all} expressions refused by only one side's optimizer (libpcap: \"rejects all packets\", constant division by zero, ...)",
        u8::from(optimize)
    );
    eprintln!(
        "[-O{}] {diverged} expressions where libpcap's optimizer changed its own verdict on some frame",
        u8::from(optimize)
    );
    bad
}
