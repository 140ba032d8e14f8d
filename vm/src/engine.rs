//! Engines: the one trait every way of running a verified program implements, and the choice
//! between them at run time.
//!
//! [`Strategy`] is not behind a `cfg`: a build without the `jit` feature still knows the word
//! `Jit` and answers it with [`EngineError::JitNotCompiled`] instead of failing to compile.

use crate::interp::Interpreter;
use crate::isa::{Verdict, NUM_SLOTS};
use crate::program::{Program, TableMut};

/// Scratch memory for one run. The verifier guarantees a program stores a slot before it
/// loads it, so the initial contents never influence a verdict.
pub type Scratch = [u32; NUM_SLOTS];

/// Which engine to run programs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The JIT when compiled in, else the interpreter.
    #[default]
    Auto,
    /// The reference interpreter.
    Interpreter,
    /// Native code from Cranelift; an error in a build without the `jit` feature.
    Jit,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Strategy::Auto),
            "interp" | "interpreter" => Ok(Strategy::Interpreter),
            "jit" => Ok(Strategy::Jit),
            other => Err(format!(
                "unknown engine `{other}` (expected auto, interp or jit)"
            )),
        }
    }
}

/// Which engine an [`Engine`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// [`Interpreter`].
    Interpreter,
    /// The Cranelift JIT.
    Jit,
}

/// Why an engine could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// `Strategy::Jit` in a build without the `jit` feature.
    #[error("the JIT was requested but netmux was compiled without the jit feature")]
    JitNotCompiled,
    /// Cranelift could not compile the program.
    #[error("JIT compilation failed: {0}")]
    JitFailed(String),
}

/// A way of running one verified program. Every engine gives the interpreter's verdict on
/// every program and every frame.
pub trait Engine: Send + Sync {
    /// Runs the program on `frame` (the captured bytes) whose length on the wire was
    /// `wire_len`, using `scratch` as its scratch memory.
    fn run_with_scratch(&self, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict;

    /// Runs the program on `frame` with fresh scratch memory.
    #[inline]
    fn run(&self, frame: &[u8], wire_len: u32) -> Verdict {
        let mut scratch = [0; NUM_SLOTS];
        self.run_with_scratch(frame, wire_len, &mut scratch)
    }

    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// The program it runs.
    fn program(&self) -> &Program;

    /// Updates a table of the running program in place (no recompilation).
    fn table_mut(&mut self, index: usize) -> Option<TableMut<'_>>;
}

/// Makes an engine for `program`. With [`Strategy::Auto`], a program the JIT cannot compile
/// falls back to the interpreter with a warning on stderr.
pub fn engine(program: Program, strategy: Strategy) -> Result<Box<dyn Engine>, EngineError> {
    match strategy {
        Strategy::Interpreter => Ok(Box::new(Interpreter::new(program))),
        Strategy::Jit => jit_engine(program),
        Strategy::Auto => {
            if !cfg!(feature = "jit") {
                return Ok(Box::new(Interpreter::new(program)));
            }
            match jit_engine(program.clone()) {
                Ok(e) => Ok(e),
                Err(e) => {
                    eprintln!("netmux-vm: warning: {e}; using the interpreter");
                    Ok(Box::new(Interpreter::new(program)))
                }
            }
        }
    }
}

#[cfg(feature = "jit")]
fn jit_engine(program: Program) -> Result<Box<dyn Engine>, EngineError> {
    crate::jit::JitEngine::new(program).map(|e| Box::new(e) as Box<dyn Engine>)
}

#[cfg(not(feature = "jit"))]
fn jit_engine(_program: Program) -> Result<Box<dyn Engine>, EngineError> {
    Err(EngineError::JitNotCompiled)
}
