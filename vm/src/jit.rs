//! The Cranelift JIT (not written yet: `Strategy::Jit` is refused until it is).
use crate::engine::{Engine, EngineError, EngineKind, Scratch};
use crate::isa::Verdict;
use crate::program::{Program, TableMut};

/// Native code for one verified program.
pub struct JitEngine {
    program: Program,
}

impl JitEngine {
    /// Compiles `program`; always fails until the JIT exists.
    pub fn new(_program: Program) -> Result<JitEngine, EngineError> {
        Err(EngineError::JitFailed(
            "the JIT is not implemented yet".into(),
        ))
    }
}

impl Engine for JitEngine {
    fn run_with_scratch(&self, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict {
        crate::interp::run(&self.program, frame, wire_len, scratch)
    }
    fn kind(&self) -> EngineKind {
        EngineKind::Jit
    }
    fn program(&self) -> &Program {
        &self.program
    }
    fn table_mut(&mut self, index: usize) -> Option<TableMut<'_>> {
        self.program.table_mut(index)
    }
}
