//! Choosing the JIT at run time: `Strategy::Auto` picks it when it is compiled in, and asking
//! for it in a build without the `jit` feature is a clear error, not a panic.

use netmux_vm::{asm, engine, verify, EngineKind, Strategy, Verdict};

fn program() -> netmux_vm::Program {
    verify(&asm::assemble("ldb r0, [0]\njeq r0, 0x45, +1\nreject\naccept 7\n").unwrap()).unwrap()
}

#[cfg(not(feature = "jit"))]
#[test]
fn asking_for_the_jit_without_the_feature_is_jit_not_compiled() {
    let e = engine(program(), Strategy::Jit).err();
    assert_eq!(e, Some(netmux_vm::EngineError::JitNotCompiled));
    let auto = engine(program(), Strategy::Auto).unwrap();
    assert_eq!(auto.kind(), EngineKind::Interpreter);
}

#[cfg(feature = "jit")]
#[test]
fn auto_and_jit_strategies_give_the_jit_when_it_is_compiled_in() {
    for strategy in [Strategy::Auto, Strategy::Jit] {
        let e = engine(program(), strategy).unwrap();
        assert_eq!(e.kind(), EngineKind::Jit);
        assert_eq!(e.run(&[0x45], 1), Verdict::Accept(7));
        assert_eq!(e.run(&[0x46], 1), Verdict::Reject);
        assert_eq!(e.run(&[], 0), Verdict::Reject);
    }
}

#[test]
fn the_interpreter_strategy_always_gives_the_interpreter() {
    let e = engine(program(), Strategy::Interpreter).unwrap();
    assert_eq!(e.kind(), EngineKind::Interpreter);
    assert_eq!(e.run(&[0x45], 1), Verdict::Accept(7));
}
