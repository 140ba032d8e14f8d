//! The netmux filter compiler: the pcap-filter language to verified netmux VM bytecode.
//!
//! ```text
//! text --lexer/parser--> AST (spans) --gencode--> Cond --lower--> IR (CFG) --opt--> IR
//!      --codegen (register allocation, layout)--> VM instructions --verify--> Program
//! ```
//!
//! The goal is libpcap's verdict on every Ethernet frame: [`gencode`] reproduces what
//! libpcap 1.10's `gencode.c` tests for each primitive, in the same order, with the same
//! loads (a load past the captured bytes rejects the frame in both), and [`opt`] only makes
//! rewrites that cannot change a verdict. The filters libpcap's optimizer refuses ("expression
//! rejects all packets") are predicted by a model kept apart from the optimizer, [`libpcap`].
//! The conformance tests in `tests/` compare verdicts with libpcap itself.
//!
//! ```
//! use netmux_compiler::{compile, Options};
//! let program = compile("udp dst port 53", &Options::default()).unwrap();
//! assert!(program.insns().len() > 3);
//! let err = compile("tcp port 65536", &Options::default()).unwrap_err();
//! assert!(err.to_string().contains("65536\n"));
//! ```

pub mod ast;
pub mod bfdmux;
pub mod builders;
pub mod classifier;
pub mod codegen;
pub mod error;
pub mod gencode;
pub mod ir;
pub mod lexer;
pub mod libpcap;
pub mod opt;
pub mod parser;

pub use error::{CompileError, ErrorKind, Span};
pub use ir::Function;

use netmux_vm::{Insn, Program};

/// The language the expression is written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// tcpdump's pcap-filter language, with libpcap's semantics on Ethernet.
    #[default]
    Pcap,
    /// Barrelfish bfdmux's raw expressions (`int16[12] == 0x0800 && int8[23] == 6`); see
    /// [`bfdmux`].
    Bfdmux,
}

/// How to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Options {
    /// Run the optimizer (it never changes a verdict; it removes decided tests and dead code).
    pub optimize: bool,
    /// The value an accepted frame gets (`accept k`): a queue id for classifiers.
    pub accept_value: u32,
    /// The input language.
    pub dialect: Dialect,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            optimize: true,
            accept_value: 1,
            dialect: Dialect::Pcap,
        }
    }
}

/// Parses and lowers `expr` to the IR, optimized if `opts.optimize`. The blocks' and temps'
/// numbering is not part of the contract (it may change between versions); the verdicts are.
pub fn compile_ir(expr: &str, opts: &Options) -> Result<Function, CompileError> {
    let attach = |e: error::Located| CompileError::new(e.kind, e.span, expr);
    if opts.dialect == Dialect::Bfdmux {
        let mut func = bfdmux::lower(expr).map_err(attach)?;
        if opts.optimize {
            opt::optimize(&mut func);
        }
        return Ok(func);
    }
    let ast = parser::parse(expr).map_err(attach)?;
    let mut gen = gencode::Gen::new();
    let cond = gen.generate(&ast).map_err(attach)?;
    let mut func = ir::lower(cond, &gen.prologue, gen.temps);
    if opts.optimize {
        // libpcap does not optimize filters with `protochain` or `geneve` at all, so it reports
        // none of its optimizer's errors for them.
        let libpcap_optimizes = !gen.no_optimize;
        // libpcap's optimizer reports a division, modulus or shift by a bad constant (when its
        // second loop folds the arithmetic) before it looks at what the program accepts.
        if libpcap_optimizes && libpcap::errors::may_report_errors(&func) {
            libpcap::errors::libpcap_errors(&func).map_err(|e| {
                let msg = match e {
                    libpcap::errors::OptError::DivisionByZero => "division by zero",
                    libpcap::errors::OptError::ModulusByZero => "modulus by zero",
                    libpcap::errors::OptError::ShiftTooLarge => "shift by more than 31 bits",
                };
                CompileError::new(
                    ErrorKind::Semantic(msg.to_owned()),
                    Span::new(0, expr.len()),
                    expr,
                )
            })?;
        }
        // The probe for libpcap's "rejects all packets" is as costly as the optimizer, so it
        // runs only where it can say yes: where ours found no accepting path, where libpcap's
        // extra folds (`0 / x`) could apply, where ours kept a load only because it can reject
        // (libpcap drops it and threads past its test), or where libpcap's test reordering
        // could move a test to edges that decide it (a heuristic check). It needs the
        // unoptimized function: kept when the folds apply, generated and lowered again in the
        // rare other cases.
        let folds = libpcap::rejects_all::has_libpcap_only_folds(&func);
        let unoptimized = folds.then(|| func.clone());
        opt::optimize(&mut func);
        let probe = folds
            || libpcap::rejects_all::always_rejects(&func)
            || libpcap::rejects_all::has_effect_only_loads(&func)
            || libpcap::rejects_all::may_pull_up_a_decision(&func);
        if libpcap_optimizes && probe && {
            // Generated again (the same code: generation is a function of the AST).
            let unoptimized = unoptimized.or_else(|| {
                let mut again = gencode::Gen::new();
                let cond = again.generate(&ast).ok()?;
                Some(ir::lower(cond, &again.prologue, again.temps))
            });
            unoptimized
                .is_some_and(|u| libpcap::rejects_all::libpcap_rejects_all(&u, &gen.probe_opaque))
        } {
            return Err(CompileError::new(
                ErrorKind::RejectsAllPackets,
                Span::new(0, expr.len()),
                expr,
            ));
        }
    }
    Ok(func)
}

/// Compiles IR to VM instructions (not yet verified).
pub fn emit(func: &Function, expr: &str, opts: &Options) -> Result<Vec<Insn>, CompileError> {
    codegen::emit(func, opts.accept_value).map_err(|e| {
        let msg = match e {
            codegen::EmitError::TooManyValues => {
                "expression needs more registers and scratch slots than the VM has".to_owned()
            }
            codegen::EmitError::TooLong(n) => format!(
                "expression compiles to {n} instructions, more than the VM's {}",
                netmux_vm::MAX_INSNS
            ),
        };
        CompileError::new(ErrorKind::TooComplex(msg), Span::new(0, expr.len()), expr)
    })
}

/// Compiles `expr` to a verified program.
pub fn compile(expr: &str, opts: &Options) -> Result<Program, CompileError> {
    let func = compile_ir(expr, opts)?;
    let insns = emit(&func, expr, opts)?;
    Program::from_insns(insns).map_err(|e| {
        CompileError::new(
            ErrorKind::Internal(format!("the generated program failed verification: {e}")),
            Span::new(0, expr.len()),
            expr,
        )
    })
}
