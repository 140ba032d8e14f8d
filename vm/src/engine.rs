//! Engines: the one trait every way of running a verified program implements
//! ([`crate::strategy`] makes one of them at run time).

use crate::isa::{Verdict, NUM_SLOTS};
use crate::program::{Program, TableMut};

/// Scratch memory for one run. The verifier guarantees a program stores a slot before it
/// loads it, so the initial contents never influence a verdict.
pub type Scratch = [u32; NUM_SLOTS];

/// Which engine an [`Engine`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// [`crate::Interpreter`].
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
