//! The netmux filter compiler: the pcap-filter language to verified netmux VM bytecode.
//!
//! ```text
//! text --lexer/parser--> AST (spans) --gencode--> Cond --lower--> IR (CFG) --opt--> IR
//!      --codegen (register allocation, layout)--> VM instructions --verify--> Program
//! ```
//!
//! The goal is libpcap's verdict on every frame: [`gencode`] reproduces what libpcap 1.10's
//! `gencode.c` tests for each primitive on the capture's link layer ([`LinkType`]: Ethernet,
//! Linux cooked v1 and v2, raw IP), in the same order, with the same loads (a load past the
//! captured bytes rejects the frame in both), and [`opt`] only makes rewrites that cannot
//! change a verdict. Names (`host localhost`, `port http`) are looked up at compile time
//! through a [`resolver::Resolver`], by default the system's databases as libpcap reads them;
//! the program holds numbers only. The filters libpcap's optimizer refuses ("expression
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
pub mod binding;
pub mod builders;
pub mod codegen;
pub mod error;
pub mod gencode;
pub mod ir;
pub mod lexer;
pub mod libpcap;
pub mod opt;
pub mod parser;
pub mod resolver;

pub use error::{CompileError, ErrorKind, Span};
pub use gencode::LinkType;
pub use ir::Function;
pub use resolver::{NoResolver, ResolvedName, Resolver, StaticResolver, SystemResolver};

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
    /// The link layer of the frames the filter runs on (a capture's: `tcpdump -r` compiles
    /// for the link type of the file it reads).
    pub link: LinkType,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            optimize: true,
            accept_value: 1,
            dialect: Dialect::Pcap,
            link: LinkType::Ethernet,
        }
    }
}

/// A compiled filter and what its names became.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The verified program.
    pub program: Program,
    /// Every name the expression used and what it became, in the order they appear.
    pub names: Vec<ResolvedName>,
}

/// Parses and lowers `expr` to the IR, optimized if `opts.optimize`, names resolved by the
/// system's databases. The blocks' and temps' numbering is not part of the contract (it may
/// change between versions); the verdicts are.
pub fn compile_ir(expr: &str, opts: &Options) -> Result<Function, CompileError> {
    compile_ir_with(expr, opts, &SystemResolver::new()).map(|(f, _)| f)
}

/// As [`compile_ir`], with names resolved by `resolver`; also returns what each became.
pub fn compile_ir_with(
    expr: &str,
    opts: &Options,
    resolver: &dyn Resolver,
) -> Result<(Function, Vec<ResolvedName>), CompileError> {
    let attach = |e: error::Located| CompileError::new(e.kind, e.span, expr);
    if opts.dialect == Dialect::Bfdmux {
        let mut func = bfdmux::lower(expr).map_err(attach)?;
        if opts.optimize {
            opt::optimize(&mut func);
        }
        return Ok((func, Vec::new()));
    }
    let ast = parser::parse(expr).map_err(attach)?;
    let names = gencode::NameCache::new(resolver);
    let mut gen = gencode::Gen::new(gencode::GenConfig {
        link: opts.link,
        names: &names,
        optimize: opts.optimize,
    });
    let cond = gen.generate(&ast).map_err(attach)?;
    let mut func = ir::lower(cond, &gen.prologue, gen.temps);
    if opts.optimize {
        // libpcap's optimizer refuses some filters its code generator accepts; the model
        // predicts which, from the function before and after the optimizer, and changes
        // neither.
        let probe = libpcap::Probe::new(&ast, &func, &gen);
        opt::optimize(&mut func);
        if let Some(refusal) = probe.refusal(&func) {
            return Err(CompileError::new(
                refusal.error_kind(),
                Span::new(0, expr.len()),
                expr,
            ));
        }
    }
    Ok((func, gen.resolved))
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

/// Compiles `expr` to a verified program, names resolved by the system's databases (a filter
/// without names reads none of them).
pub fn compile(expr: &str, opts: &Options) -> Result<Program, CompileError> {
    compile_with(expr, opts, &SystemResolver::new()).map(|c| c.program)
}

/// Compiles `expr` to a verified program, names resolved by `resolver`.
pub fn compile_with(
    expr: &str,
    opts: &Options,
    resolver: &dyn Resolver,
) -> Result<Compiled, CompileError> {
    let (func, names) = compile_ir_with(expr, opts, resolver)?;
    let insns = emit(&func, expr, opts)?;
    let program = Program::from_insns(insns).map_err(|e| {
        CompileError::new(
            ErrorKind::Internal(format!("the generated program failed verification: {e}")),
            Span::new(0, expr.len()),
            expr,
        )
    })?;
    Ok(Compiled { program, names })
}
