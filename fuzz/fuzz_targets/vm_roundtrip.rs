//! Instructions: decode(encode(i)) == i for every instruction, and disassembly then assembly
//! gives back every container that disassembles, byte for byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netmux_vm::asm::{assemble, disassemble};
use netmux_vm::isa::{Insn, Opcode};

/// One instruction's fields: opcode index, dst, src, offset, immediate.
type Fields = (u8, u8, u8, i16, u32);

fuzz_target!(|input: (Vec<Fields>, Vec<u8>)| {
    let (fields, raw) = input;
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
});
