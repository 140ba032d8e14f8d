//! The netmux filter virtual machine.
//!
//! A small register machine with forward-only jumps ([`isa`]), a container format
//! ([`program`]), a verifier that is the only way to obtain a runnable [`Program`]
//! ([`verifier`]), the reference [`Interpreter`], a Cranelift JIT behind the `jit` feature, and
//! a text assembler and disassembler that round-trip ([`asm`]).
//!
//! ```
//! use netmux_vm::{asm, engine, Strategy, Verdict};
//! let bytes = asm::assemble("ldb r0, [0]\njeq r0, 0x45, hit\nreject\nhit:\naccept 1\n").unwrap();
//! let program = netmux_vm::verify(&bytes).unwrap();
//! let e = engine(program, Strategy::Interpreter).unwrap();
//! assert_eq!(e.run(&[0x45, 0], 60), Verdict::Accept(1));
//! assert_eq!(e.run(&[], 60), Verdict::Reject); // the load is out of bounds
//! ```
#![deny(unsafe_code)]

pub mod asm;
pub mod engine;
#[cfg(feature = "arbitrary")]
pub mod gen;
pub mod interp;
pub mod isa;
#[cfg(feature = "jit")]
#[allow(unsafe_code)]
pub mod jit;
pub mod program;
pub mod strategy;
pub mod table;
pub mod verifier;

pub use engine::{Engine, EngineError, EngineKind, Scratch};
pub use interp::Interpreter;
pub use isa::{Insn, Opcode, Operand, Verdict};
pub use program::{read_container, Program, MAX_INSNS};
pub use strategy::{engine, Strategy};
pub use table::Table;
pub use verifier::{verify, VerifyError, VerifyErrorKind};
