//! The choice of engine at run time.
//!
//! [`Strategy`] is not behind a `cfg`: a build without the `jit` feature still knows the word
//! `Jit` and answers it with [`EngineError::JitNotCompiled`] instead of failing to compile.

use crate::engine::{Engine, EngineError};
use crate::interp::Interpreter;
use crate::program::Program;

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
