//! The verifier: the only way to obtain a runnable [`Program`].
//!
//! [`verify`] accepts bytes in the container format of [`crate::program`] and checks, in this
//! order, every invariant the interpreter and the JIT rely on:
//!
//! 1. **Container.** The header is complete, the magic is `NMXF`, the version is
//!    [`FORMAT_VERSION`], there are 1 to [`MAX_INSNS`] instructions and at most [`MAX_TABLES`]
//!    tables, every section is complete and nothing follows the last table.
//! 2. **Tables.** Each key width is 1 to [`MAX_KEY_WORDS`] words, each table holds at most
//!    [`MAX_TABLE_ENTRIES`] entries and no key twice.
//! 3. **Instructions, one at a time.** The opcode is known; fields the instruction does not use
//!    are zero; scratch slots are below [`NUM_SLOTS`]; a `lookup` names an existing table and its
//!    key registers `rS..rS+W` lie inside the register file; no division or modulo by the
//!    constant 0; no shift by a constant of 32 or more.
//! 4. **Control flow.** Every jump goes forward (not to itself, not backward) to an
//!    instruction inside the program, and no instruction can fall through past the last one,
//!    so every path ends in `reject` or `accept` after at most `len` steps.
//! 5. **Data flow.** On every path from the entry, every register is written before it is read
//!    and every scratch slot is stored before it is loaded. (Instructions that no path reaches
//!    are checked by 1-4 but not here, since they never run.)
//!
//! Loads are *not* checked against a frame size here: the frame is unknown until run time, so
//! every engine checks every load and rejects the frame when it falls outside.

use crate::isa::{DecodeError, Insn, Opcode, INSN_SIZE, NUM_REGS, NUM_SLOTS};
use crate::program::{Program, FORMAT_VERSION, HEADER_SIZE, MAGIC, MAX_INSNS, MAX_TABLES};
use crate::table::{Table, TableError, MAX_KEY_WORDS, MAX_TABLE_ENTRIES};

/// Why the verifier refused a program, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pc {pc}: {kind}")]
pub struct VerifyError {
    /// The instruction at fault; 0 for container-level faults, the number of instructions for
    /// faults in the tables.
    pub pc: usize,
    /// What is wrong.
    pub kind: VerifyErrorKind,
}

/// Every reason the verifier refuses a program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyErrorKind {
    /// Fewer bytes than a header.
    #[error("truncated header ({0} bytes, a header is {HEADER_SIZE})")]
    TruncatedHeader(usize),
    /// The magic bytes are not `NMXF`.
    #[error("not a netmux program (bad magic)")]
    BadMagic,
    /// A container version this build does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// No instructions.
    #[error("program has no instructions")]
    Empty,
    /// More than [`MAX_INSNS`] instructions.
    #[error("program has {0} instructions, the limit is {MAX_INSNS}")]
    TooManyInstructions(u32),
    /// More than [`MAX_TABLES`] tables.
    #[error("program has {0} tables, the limit is {MAX_TABLES}")]
    TooManyTables(u16),
    /// The instructions or a table end early.
    #[error("truncated: the {0} section ends early")]
    Truncated(&'static str),
    /// Bytes after the last table.
    #[error("{0} bytes after the end of the program")]
    TrailingBytes(usize),
    /// A table's key width is out of range.
    #[error("table {table}: key width {width} is not between 1 and {MAX_KEY_WORDS}")]
    BadKeyWidth {
        /// The table.
        table: usize,
        /// Its declared width.
        width: u32,
    },
    /// A table has too many entries.
    #[error("table {table}: {entries} entries, the limit is {MAX_TABLE_ENTRIES}")]
    TooManyEntries {
        /// The table.
        table: usize,
        /// Its declared entry count.
        entries: u32,
    },
    /// A table holds one key twice.
    #[error("table {0}: duplicate key")]
    DuplicateKey(usize),
    /// The opcode byte names no instruction.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// A field the instruction does not use is not zero.
    #[error("unused instruction field is not zero")]
    UnusedFieldNotZero,
    /// A scratch slot number out of range.
    #[error("scratch slot {0} does not exist (slots are m0..m{max})", max = NUM_SLOTS - 1)]
    BadSlot(u32),
    /// `lookup` names a table the program does not have.
    #[error("table t{0} does not exist")]
    BadTable(u32),
    /// `lookup`'s key registers run past the last register.
    #[error("lookup key r{first}..r{last} runs past r{max}", max = NUM_REGS - 1)]
    KeyPastRegisters {
        /// First key register.
        first: u8,
        /// Last key register (may not exist).
        last: usize,
    },
    /// Division or modulo by the constant 0.
    #[error("division by constant zero")]
    DivisionByZero,
    /// A shift by a constant of 32 or more.
    #[error("shift by {0} (constant shifts must be below 32)")]
    ShiftTooLarge(u32),
    /// A jump to itself.
    #[error("jump to itself")]
    SelfJump,
    /// A jump backward.
    #[error("backward jump to pc {0}")]
    BackwardJump(i64),
    /// A jump past the last instruction.
    #[error("jump to pc {0}, past the end")]
    JumpOutOfRange(i64),
    /// The instruction can continue past the last instruction.
    #[error("falls off the end of the program (every path must end in reject or accept)")]
    FallsOffEnd,
    /// A register read before some path writes it.
    #[error("r{0} is read before it is written on some path")]
    UninitializedRegister(u8),
    /// A scratch slot loaded before some path stores it.
    #[error("m{0} is read before it is written on some path")]
    UninitializedSlot(u32),
}

fn err(pc: usize, kind: VerifyErrorKind) -> VerifyError {
    VerifyError { pc, kind }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self, section: &'static str, pc: usize) -> Result<u32, VerifyError> {
        let b = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| err(pc, VerifyErrorKind::Truncated(section)))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Verifies a program in the container format; see the module documentation for every check.
pub fn verify(bytes: &[u8]) -> Result<Program, VerifyError> {
    use VerifyErrorKind as K;
    if bytes.len() < HEADER_SIZE {
        return Err(err(0, K::TruncatedHeader(bytes.len())));
    }
    if bytes[0..4] != MAGIC {
        return Err(err(0, K::BadMagic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(err(0, K::UnsupportedVersion(version)));
    }
    let ntables = u16::from_le_bytes([bytes[6], bytes[7]]);
    let ninsns = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if ninsns == 0 {
        return Err(err(0, K::Empty));
    }
    if ninsns as usize > MAX_INSNS {
        return Err(err(0, K::TooManyInstructions(ninsns)));
    }
    if ntables as usize > MAX_TABLES {
        return Err(err(0, K::TooManyTables(ntables)));
    }
    let n = ninsns as usize;
    let code_end = HEADER_SIZE + n * INSN_SIZE;
    let code = bytes
        .get(HEADER_SIZE..code_end)
        .ok_or_else(|| err(0, K::Truncated("instruction")))?;

    // 2. Tables.
    let mut r = Reader {
        bytes,
        pos: code_end,
    };
    let mut tables = Vec::with_capacity(ntables as usize);
    for t in 0..ntables as usize {
        let width = r.u32("table", n)?;
        let default = r.u32("table", n)?;
        let entries = r.u32("table", n)?;
        if width == 0 || width as usize > MAX_KEY_WORDS {
            return Err(err(n, K::BadKeyWidth { table: t, width }));
        }
        if entries as usize > MAX_TABLE_ENTRIES {
            return Err(err(n, K::TooManyEntries { table: t, entries }));
        }
        let need = entries as usize * (width as usize + 1) * 4;
        if bytes.len() - r.pos < need {
            return Err(err(n, K::Truncated("table")));
        }
        let mut table = Table::new(width as usize, default).expect("width checked above");
        let mut key = [0u32; MAX_KEY_WORDS];
        for _ in 0..entries {
            for w in key.iter_mut().take(width as usize) {
                *w = r.u32("table", n)?;
            }
            let value = r.u32("table", n)?;
            match table.insert(&key[..width as usize], value) {
                Ok(()) => {}
                Err(TableError::DuplicateKey) => return Err(err(n, K::DuplicateKey(t))),
                Err(e) => unreachable!("table shape checked above: {e}"),
            }
        }
        tables.push(table);
    }
    if r.pos != bytes.len() {
        return Err(err(n, K::TrailingBytes(bytes.len() - r.pos)));
    }

    // 3. Instructions one at a time, and 4. control flow.
    let mut insns = Vec::with_capacity(n);
    for (pc, chunk) in code.chunks_exact(INSN_SIZE).enumerate() {
        let raw: [u8; INSN_SIZE] = chunk.try_into().expect("chunks_exact");
        let insn = Insn::decode(raw).map_err(|e| match e {
            DecodeError::UnknownOpcode(b) => err(pc, K::UnknownOpcode(b)),
            DecodeError::UnusedFieldNotZero => err(pc, K::UnusedFieldNotZero),
        })?;
        check_insn(pc, n, &insn, &tables)?;
        insns.push(insn);
    }
    check_flow(&insns, &tables)?;
    Ok(Program::verified(insns, tables))
}

impl Program {
    /// Verifies instructions and tables as one program: what [`verify`] would check of their
    /// encoding, checked without encoding them.
    pub fn new(insns: &[Insn], tables: &[Table]) -> Result<Program, VerifyError> {
        verify_parts(insns, tables)?;
        Ok(Program::verified(insns.to_vec(), tables.to_vec()))
    }

    /// As [`Program::new`], for a program without tables, keeping the vector it is given.
    pub fn from_insns(insns: Vec<Insn>) -> Result<Program, VerifyError> {
        verify_parts(&insns, &[])?;
        Ok(Program::verified(insns, Vec::new()))
    }
}

/// Verifies a program given as instructions and tables: what [`verify`] checks of the
/// encoding of `insns` and `tables`, without encoding them. An instruction that is not the
/// decoding of its own encoding (an unused field set, a register number of 16 or more) is
/// refused with [`VerifyErrorKind::UnusedFieldNotZero`]; the tables keep their invariants by
/// construction.
pub(crate) fn verify_parts(insns: &[Insn], tables: &[Table]) -> Result<(), VerifyError> {
    use VerifyErrorKind as K;
    if insns.is_empty() {
        return Err(err(0, K::Empty));
    }
    if insns.len() > MAX_INSNS {
        return Err(err(0, K::TooManyInstructions(insns.len() as u32)));
    }
    if tables.len() > MAX_TABLES {
        let count = u16::try_from(tables.len()).unwrap_or(u16::MAX);
        return Err(err(0, K::TooManyTables(count)));
    }
    // In the order `verify` meets faults: each instruction's decoding, then its own checks.
    let n = insns.len();
    for (pc, insn) in insns.iter().enumerate() {
        if !insn.is_canonical() {
            return Err(err(pc, K::UnusedFieldNotZero));
        }
        check_insn(pc, n, insn, tables)?;
    }
    check_flow(insns, tables)
}

/// Check 5 of the module docs, on instructions that passed checks 3 and 4.
fn check_flow(insns: &[Insn], tables: &[Table]) -> Result<(), VerifyError> {
    use VerifyErrorKind as K;
    let n = insns.len();

    // 5. Data flow. Jumps go forward, so one pass in program order sees every predecessor of
    // an instruction before the instruction itself. `state[pc]` is the set of registers (low 16
    // bits) and slots (high 16 bits) written on every path reaching pc, or None if none does.
    // Short programs (most filters) keep the states on the stack.
    let mut on_stack = [None; 64];
    let mut on_heap = Vec::new();
    let state: &mut [Option<u32>] = if n <= on_stack.len() {
        &mut on_stack[..n]
    } else {
        on_heap.resize(n, None);
        &mut on_heap
    };
    state[0] = Some(0);
    for pc in 0..n {
        let Some(mut s) = state[pc] else { continue };
        let insn = insns[pc];
        let op = insn.op;
        let reg = |r: u8| 1u32 << r;
        let slot = |k: u32| 1u32 << (16 + k);
        if op.reads_dst() && s & reg(insn.dst) == 0 {
            return Err(err(pc, K::UninitializedRegister(insn.dst)));
        }
        if op == Opcode::Lookup {
            let width = tables[insn.k as usize].key_words();
            for r in insn.src..insn.src + width as u8 {
                if s & reg(r) == 0 {
                    return Err(err(pc, K::UninitializedRegister(r)));
                }
            }
        } else if op.reads_src() && s & reg(insn.src) == 0 {
            return Err(err(pc, K::UninitializedRegister(insn.src)));
        }
        match op {
            Opcode::LdMem if s & slot(insn.k) == 0 => {
                return Err(err(pc, K::UninitializedSlot(insn.k)));
            }
            Opcode::StMem => s |= slot(insn.k),
            _ => {}
        }
        if op.writes_dst() {
            s |= reg(insn.dst);
        }
        let mut flow = |to: usize| {
            state[to] = Some(state[to].map_or(s, |t| t & s));
        };
        if op.is_jump() {
            flow(insn.target(pc) as usize);
        }
        if !op.is_terminator() {
            flow(pc + 1);
        }
    }
    Ok(())
}

fn check_insn(pc: usize, n: usize, insn: &Insn, tables: &[Table]) -> Result<(), VerifyError> {
    use VerifyErrorKind as K;
    let op = insn.op;
    if op.uses_slot() && insn.k as usize >= NUM_SLOTS {
        return Err(err(pc, K::BadSlot(insn.k)));
    }
    match op {
        Opcode::DivK | Opcode::ModK if insn.k == 0 => {
            return Err(err(pc, K::DivisionByZero));
        }
        Opcode::LshK | Opcode::RshK if insn.k >= 32 => {
            return Err(err(pc, K::ShiftTooLarge(insn.k)));
        }
        Opcode::Lookup => {
            let table = tables
                .get(insn.k as usize)
                .ok_or_else(|| err(pc, K::BadTable(insn.k)))?;
            let last = insn.src as usize + table.key_words() - 1;
            if last >= NUM_REGS {
                return Err(err(
                    pc,
                    K::KeyPastRegisters {
                        first: insn.src,
                        last,
                    },
                ));
            }
        }
        _ => {}
    }
    if op.is_jump() {
        let target = insn.target(pc);
        if target == pc as i64 {
            return Err(err(pc, K::SelfJump));
        }
        if target < pc as i64 {
            return Err(err(pc, K::BackwardJump(target)));
        }
        if target >= n as i64 {
            return Err(err(pc, K::JumpOutOfRange(target)));
        }
    }
    if !op.is_terminator() && pc + 1 == n {
        return Err(err(pc, K::FallsOffEnd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::encode;

    #[test]
    fn a_verified_program_re_encodes_to_its_bytes() {
        let mut t = Table::new(2, 0).unwrap();
        t.insert(&[1, 2], 3).unwrap();
        let bytes = encode(
            &[
                Insn::mov(0, 1),
                Insn::mov(1, 2),
                Insn::lookup(2, 0, 0),
                Insn::accept_x(2),
            ],
            &[t],
        );
        let p = verify(&bytes).unwrap();
        assert_eq!(p.to_bytes(), bytes);
    }

    #[test]
    fn the_first_faulty_instruction_is_reported_whatever_its_fault() {
        // pc 1 divides by the constant 0; pc 2 has an unknown opcode.
        let mut bytes = encode(
            &[
                Insn::mov(0, 1),
                Insn::alu_k(Opcode::DivK, 0, 0),
                Insn::accept(1),
            ],
            &[],
        );
        bytes[HEADER_SIZE + 2 * INSN_SIZE] = 0xff;
        assert_eq!(verify(&bytes), Err(err(1, VerifyErrorKind::DivisionByZero)));
    }

    #[test]
    fn instructions_given_in_memory_must_be_their_own_decoding() {
        let accept = Insn::accept(1);
        // A register number the encoding cannot hold, and a field `mov rD, k` does not use.
        for bad in [
            Insn {
                dst: 16,
                ..Insn::mov(0, 1)
            },
            Insn {
                off: 3,
                ..Insn::mov(0, 1)
            },
        ] {
            let e = Program::new(&[bad, accept], &[]).unwrap_err();
            assert_eq!(e, err(0, VerifyErrorKind::UnusedFieldNotZero));
        }
        let good = [Insn::mov(0, 1), Insn::accept_x(0)];
        let p = Program::new(&good, &[]).unwrap();
        assert_eq!(Ok(p), verify(&encode(&good, &[])));
    }

    #[test]
    fn a_register_written_on_only_one_path_is_uninitialized_at_the_join() {
        let insns = [
            Insn::ldb(0, 0),
            Insn::jmp_k(Opcode::JeqK, 0, 1, 1),
            Insn::mov(1, 5),
            Insn::accept_x(1),
        ];
        let e = verify(&encode(&insns, &[])).unwrap_err();
        assert_eq!(e, err(3, VerifyErrorKind::UninitializedRegister(1)));
    }
}
