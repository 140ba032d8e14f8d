//! Shared by the conformance tests: run netmux and libpcap side by side and compare.
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
    BothRejected,
    Agreed,
    Mismatch(Mismatch),
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
            // libpcap's optimizer refuses filters it proves reject everything; an unoptimized
            // netmux program may still compile.
            let what = format!("libpcap rejects the expression ({e}); netmux compiles it");
            if !optimize && e.to_string().contains("rejects all packets") {
                return Outcome::BothRejected;
            }
            return Outcome::Mismatch(Mismatch {
                expr: expr.into(),
                what,
            });
        }
        (Err(e), Ok(_)) => {
            return Outcome::Mismatch(Mismatch {
                expr: expr.into(),
                what: format!("netmux rejects the expression, libpcap compiles it:\n{e}"),
            })
        }
        (Ok(o), Ok(t)) => (o, t),
    };
    let mut scratch = [0u32; 16];
    for (i, f) in frames.iter().enumerate() {
        let a = interp::run(&ours, &f.data, f.wire_len, &mut scratch).is_accept();
        let b = theirs.matches(&f.data, f.wire_len);
        if a != b {
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
    }
    Outcome::Agreed
}

pub fn hex(b: &[u8]) -> String {
    b.iter().take(96).map(|x| format!("{x:02x}")).collect()
}
