//! Structured verified programs and frames: the interpreter and the JIT give the same verdict,
//! the same accept value and leave the same scratch memory, on every frame (issue 10). The
//! programs come from `netmux_vm::gen`, which builds them valid by construction, so the fuzzer
//! spends its time on deep, varied programs rather than on bytes the verifier refuses.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use netmux_vm::gen::{self, GeneratedFrame};
use netmux_vm::{engine, Strategy};

/// Frames run through each program: amortises the JIT's compile time over several runs.
const FRAMES_PER_PROGRAM: usize = 8;

fn case(u: &mut Unstructured) -> Result<()> {
    let generated = gen::program(u, gen::DEFAULT_MAX_INSNS)?;
    let program = generated
        .verify()
        .expect("the generator builds verified programs");
    let interp = engine(program.clone(), Strategy::Interpreter).expect("interpreter");
    let jit = engine(program, Strategy::Jit).expect("the JIT compiles every verified program");
    for _ in 0..FRAMES_PER_PROGRAM {
        let frame: GeneratedFrame = gen::frame(u)?;
        // Scratch starts dirty and equal: the verifier guarantees it is written before read.
        let seed = u.arbitrary::<u32>()?;
        let mut want = [seed; 16];
        let mut got = [seed; 16];
        let a = interp.run_with_scratch(&frame.bytes, frame.wire_len, &mut want);
        let b = jit.run_with_scratch(&frame.bytes, frame.wire_len, &mut got);
        assert_eq!(
            a,
            b,
            "verdicts differ on {frame:?}\n{:?}",
            interp.program().insns()
        );
        assert_eq!(want, got, "scratch differs on {frame:?}");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = case(&mut Unstructured::new(data));
});
