//! The VM targets: the verifier on any bytes (F1), the encoding both ways (F2), and the
//! interpreter against the JIT on generated programs (F5).

use netmux_vm::asm::{assemble, disassemble};
use netmux_vm::isa::{Insn, Opcode};
use netmux_vm::{verify, Engine, Interpreter};

/// F1. Any bytes: `verify` answers Ok or Err and never panics; whatever it accepts runs on
/// frames taken from the rest of the input without panicking, and re-encodes to exactly its
/// bytes. The first two bytes (little-endian) are the program's length.
pub fn vm_verify(data: &[u8]) {
    let split = data
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let rest = data.get(2..).unwrap_or_default();
    let (program, frame) = rest.split_at(split.min(rest.len()));
    if let Ok(p) = verify(program) {
        assert_eq!(
            p.to_bytes(),
            program,
            "a verified program re-encodes to its bytes"
        );
        let e = Interpreter::new(p);
        let whole = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        for wire_len in [0, whole, u32::MAX] {
            let _ = e.run(frame, wire_len);
        }
        for cut in [0, frame.len() / 2] {
            let _ = e.run(&frame[..cut], whole);
        }
    }
}

/// One instruction's fields: opcode index, dst, src, offset, immediate.
type Fields = (u8, u8, u8, i16, u32);

/// F2. Instructions and containers: `decode(encode(i)) == i` for every instruction, and
/// disassembly then assembly gives back every container that disassembles, byte for byte.
/// The input is a list of instruction fields and raw container bytes.
pub fn vm_roundtrip(data: &[u8]) {
    let Some((fields, raw)) = crate::structured::<(Vec<Fields>, Vec<u8>)>(data) else {
        return;
    };
    let mut insns = Vec::new();
    for (op, dst, src, off, k) in fields {
        let op = Opcode::ALL[usize::from(op) % Opcode::ALL.len()];
        let i = Insn::new(op, dst, src, off, k);
        assert_eq!(Insn::decode(i.encode()), Ok(i));
        insns.push(i);
    }
    let bytes = netmux_vm::program::encode(&insns, &[]);
    let text = disassemble(&bytes).expect("an encoded program disassembles");
    assert_eq!(assemble(&text).expect("disassembly assembles"), bytes);
    if let Ok(text) = disassemble(&raw) {
        assert_eq!(assemble(&text).expect("disassembly assembles"), raw);
    }
}

/// Frames run through each program: amortises the JIT's compile time over several runs.
#[cfg(feature = "jit")]
const FRAMES_PER_PROGRAM: usize = 8;

/// F5. Structured verified programs and frames: the interpreter and the JIT give the same
/// verdict, the same accept value and leave the same scratch memory, on every frame. The
/// programs come from `netmux_vm::gen`, valid by construction, so the fuzzer spends its time
/// on deep, varied programs rather than on bytes the verifier refuses.
///
/// Without the `jit` feature there is nothing to compare with; the function says so on
/// stderr once and returns.
pub fn vm_differential(data: &[u8]) {
    #[cfg(feature = "jit")]
    {
        let _ = differential(&mut arbitrary::Unstructured::new(data));
    }
    #[cfg(not(feature = "jit"))]
    {
        let _ = data;
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("vm_differential: built without the jit feature, nothing to compare")
        });
    }
}

#[cfg(feature = "jit")]
fn differential(u: &mut arbitrary::Unstructured) -> arbitrary::Result<()> {
    use netmux_vm::gen::{self, GeneratedFrame};
    use netmux_vm::{engine, Strategy};

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
        let mut want = [seed; netmux_vm::isa::NUM_SLOTS];
        let mut got = want;
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
