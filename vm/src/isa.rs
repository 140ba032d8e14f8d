//! The netmux filter instruction set, defined in exactly one place.
//!
//! The [`for_each_op!`] table below is the single source of truth: the [`Opcode`] enum, its
//! byte values, mnemonics, operand shapes and documentation are all generated from it, and the
//! encoder, decoder, assembler, disassembler, verifier and interpreter consume those generated
//! items, so they cannot drift apart. (The interpreter's and JIT's `match` on [`Opcode`] is
//! exhaustive: adding a row without giving it semantics does not compile.)
//!
//! # Machine model
//!
//! * 16 registers `r0`..`r15`, 32 bits each. None is initialised at entry: the verifier proves
//!   every register is written on every path before it is read.
//! * 16 scratch slots `m0`..`m15`, 32 bits each, with the same written-before-read guarantee.
//! * The frame: the captured bytes (bounds for every load) and the wire length (`ldlen`).
//! * Tables `t0`.. attached to the program: read-only (to the program) hash tables from a key
//!   of 1 to 8 words to a 32-bit value, with a default value for a miss.
//! * Jumps go forward only, so every program terminates after at most as many steps as it has
//!   instructions.
//!
//! # Semantics in brief
//!
//! * Loads read 1, 2 or 4 bytes in network (big-endian) order at `k` or at `rS + k` (computed
//!   without wrap-around). A load that does not lie wholly inside the captured bytes ends the
//!   program with *reject*, as libpcap's `bpf_filter` does.
//! * Arithmetic is 32-bit and wrapping. Division or modulo by a register holding zero ends the
//!   program with *reject*; by a constant zero is refused by the verifier. Shifts by a constant
//!   of 32 or more are refused by the verifier; a shift by a register holding 32 or more gives 0
//!   (libpcap 1.10's `bpf_filter` rule).
//! * Conditional jumps compare `rD` (unsigned) with `k` or `rS`, jump to the target when true
//!   and fall through when false.
//! * `reject` ends with the reject verdict; `accept k` / `accept rS` end with accept and a
//!   32-bit value.
//!
//! # Binary encoding
//!
//! Every instruction is 8 bytes:
//!
//! ```text
//!  byte 0    byte 1            bytes 2..4        bytes 4..8
//! +--------+-----------------+-----------------+---------------------+
//! | opcode | src<<4 | dst    | off: i16 (LE)   | k: u32 (LE)         |
//! +--------+-----------------+-----------------+---------------------+
//! ```
//!
//! `off` is a jump's displacement: the target is `pc + 1 + off`. Fields an instruction does not
//! use must be zero, so that every valid program has exactly one encoding and the disassembler
//! and assembler round-trip byte for byte. The program container around the instructions is
//! described in [`crate::program`].

use std::fmt;

/// Number of general-purpose registers.
pub const NUM_REGS: usize = 16;
/// Number of scratch-memory slots.
pub const NUM_SLOTS: usize = 16;
/// Size of one encoded instruction in bytes.
pub const INSN_SIZE: usize = 8;

/// What an instruction's operand is, in the order the assembler writes them.
///
/// Each kind also says which encoding fields it occupies; fields that no operand occupies must
/// be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// Destination register `rD` (field `dst`); also read by ALU, jump and store forms.
    Dst,
    /// Source register `rS` (field `src`).
    Src,
    /// An immediate 32-bit constant (field `k`).
    K,
    /// A frame offset `[k]` (field `k`).
    Abs,
    /// A frame offset `[rS + k]` (fields `src` and `k`).
    Ind,
    /// A scratch slot `mK` (field `k`).
    Slot,
    /// A forward jump target (field `off`), written as a label or `+N`.
    Target,
    /// A table `tK` (field `k`).
    Table,
}

/// Bits of [`Operand::fields`] and [`Opcode::fields`]: which encoding fields are occupied.
const FIELD_DST: u8 = 1;
const FIELD_SRC: u8 = 2;
const FIELD_OFF: u8 = 4;
const FIELD_K: u8 = 8;

/// The encoding fields a list of operands occupies.
const fn fields_of(ops: &[Operand]) -> u8 {
    let mut m = 0;
    let mut i = 0;
    while i < ops.len() {
        m |= ops[i].fields();
        i += 1;
    }
    m
}

/// Whether a list of operands has a scratch slot.
const fn has_slot(ops: &[Operand]) -> bool {
    let mut i = 0;
    while i < ops.len() {
        if matches!(ops[i], Operand::Slot) {
            return true;
        }
        i += 1;
    }
    false
}

impl Operand {
    /// The encoding fields this operand occupies (`FIELD_*` bits).
    const fn fields(self) -> u8 {
        (if self.uses_dst() { FIELD_DST } else { 0 })
            | (if self.uses_src() { FIELD_SRC } else { 0 })
            | (if self.uses_off() { FIELD_OFF } else { 0 })
            | (if self.uses_k() { FIELD_K } else { 0 })
    }

    /// Whether this operand is encoded in the `dst` field.
    pub const fn uses_dst(self) -> bool {
        matches!(self, Operand::Dst)
    }
    /// Whether this operand is encoded in the `src` field.
    pub const fn uses_src(self) -> bool {
        matches!(self, Operand::Src | Operand::Ind)
    }
    /// Whether this operand is encoded in the `off` field.
    pub const fn uses_off(self) -> bool {
        matches!(self, Operand::Target)
    }
    /// Whether this operand is encoded in the `k` field.
    pub const fn uses_k(self) -> bool {
        matches!(
            self,
            Operand::K | Operand::Abs | Operand::Ind | Operand::Slot | Operand::Table
        )
    }
}

/// The instruction table. Invokes `$m!` with one row per instruction:
/// `Variant = byte, "mnemonic", [operands], "doc";`
///
/// Opcode bytes are grouped by class in the high nibble: `0x0_` loads and moves, `0x1_` ALU
/// with a constant, `0x2_` ALU with a register, `0x3_` jumps, `0x4_` returns, `0x5_` helpers.
#[macro_export]
macro_rules! for_each_op {
    ($m:ident) => {
        $m! {
            LdAbsB = 0x01, "ldb", [Dst, Abs], "rD = frame[k] (1 byte); reject if out of bounds";
            LdAbsH = 0x02, "ldh", [Dst, Abs], "rD = frame[k..k+2] big-endian; reject if out of bounds";
            LdAbsW = 0x03, "ldw", [Dst, Abs], "rD = frame[k..k+4] big-endian; reject if out of bounds";
            LdIndB = 0x04, "ldb", [Dst, Ind], "rD = frame[rS+k] (1 byte); reject if out of bounds";
            LdIndH = 0x05, "ldh", [Dst, Ind], "rD = frame[rS+k..+2] big-endian; reject if out of bounds";
            LdIndW = 0x06, "ldw", [Dst, Ind], "rD = frame[rS+k..+4] big-endian; reject if out of bounds";
            LdLen = 0x07, "ldlen", [Dst], "rD = the frame's length on the wire";
            MovK = 0x08, "mov", [Dst, K], "rD = k";
            MovX = 0x09, "mov", [Dst, Src], "rD = rS";
            LdMem = 0x0a, "ldm", [Dst, Slot], "rD = scratch[k]";
            StMem = 0x0b, "stm", [Slot, Src], "scratch[k] = rS";
            AddK = 0x10, "add", [Dst, K], "rD = rD + k (wrapping)";
            SubK = 0x11, "sub", [Dst, K], "rD = rD - k (wrapping)";
            MulK = 0x12, "mul", [Dst, K], "rD = rD * k (wrapping)";
            DivK = 0x13, "div", [Dst, K], "rD = rD / k (unsigned; k = 0 refused by the verifier)";
            ModK = 0x14, "mod", [Dst, K], "rD = rD % k (unsigned; k = 0 refused by the verifier)";
            AndK = 0x15, "and", [Dst, K], "rD = rD & k";
            OrK = 0x16, "or", [Dst, K], "rD = rD | k";
            XorK = 0x17, "xor", [Dst, K], "rD = rD ^ k";
            LshK = 0x18, "lsh", [Dst, K], "rD = rD << k (k >= 32 refused by the verifier)";
            RshK = 0x19, "rsh", [Dst, K], "rD = rD >> k, logical (k >= 32 refused by the verifier)";
            Neg = 0x1f, "neg", [Dst], "rD = -rD (wrapping)";
            AddX = 0x20, "add", [Dst, Src], "rD = rD + rS (wrapping)";
            SubX = 0x21, "sub", [Dst, Src], "rD = rD - rS (wrapping)";
            MulX = 0x22, "mul", [Dst, Src], "rD = rD * rS (wrapping)";
            DivX = 0x23, "div", [Dst, Src], "rD = rD / rS (unsigned); reject if rS = 0";
            ModX = 0x24, "mod", [Dst, Src], "rD = rD % rS (unsigned); reject if rS = 0";
            AndX = 0x25, "and", [Dst, Src], "rD = rD & rS";
            OrX = 0x26, "or", [Dst, Src], "rD = rD | rS";
            XorX = 0x27, "xor", [Dst, Src], "rD = rD ^ rS";
            LshX = 0x28, "lsh", [Dst, Src], "rD = rD << rS, or 0 if rS >= 32";
            RshX = 0x29, "rsh", [Dst, Src], "rD = rD >> rS (logical), or 0 if rS >= 32";
            Ja = 0x30, "ja", [Target], "jump to the target";
            JeqK = 0x31, "jeq", [Dst, K, Target], "jump if rD == k";
            JgtK = 0x32, "jgt", [Dst, K, Target], "jump if rD > k (unsigned)";
            JgeK = 0x33, "jge", [Dst, K, Target], "jump if rD >= k (unsigned)";
            JsetK = 0x34, "jset", [Dst, K, Target], "jump if rD & k != 0";
            JeqX = 0x35, "jeq", [Dst, Src, Target], "jump if rD == rS";
            JgtX = 0x36, "jgt", [Dst, Src, Target], "jump if rD > rS (unsigned)";
            JgeX = 0x37, "jge", [Dst, Src, Target], "jump if rD >= rS (unsigned)";
            JsetX = 0x38, "jset", [Dst, Src, Target], "jump if rD & rS != 0";
            Reject = 0x40, "reject", [], "end: reject the frame";
            AcceptK = 0x41, "accept", [K], "end: accept the frame with value k";
            AcceptX = 0x42, "accept", [Src], "end: accept the frame with value rS";
            Lookup = 0x50, "lookup", [Dst, Src, Table], "rD = table[k][rS, rS+1, .. rS+W-1] or its default (W = the table's key width)";
        }
    };
}

macro_rules! define_opcodes {
    ($($name:ident = $byte:expr, $mn:expr, [$($opnd:ident),*], $doc:expr;)*) => {
        /// An instruction's operation. Generated from [`for_each_op!`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $(#[doc = $doc] $name = $byte,)*
        }

        impl Opcode {
            /// Every opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            /// The opcode with this byte value, if there is one.
            pub const fn from_byte(byte: u8) -> Option<Opcode> {
                match byte {
                    $($byte => Some(Opcode::$name),)*
                    _ => None,
                }
            }

            /// The byte value in the encoding.
            pub const fn byte(self) -> u8 {
                self as u8
            }

            /// The assembler mnemonic. Several opcodes share one mnemonic and differ in operands.
            pub const fn mnemonic(self) -> &'static str {
                match self {
                    $(Opcode::$name => $mn,)*
                }
            }

            /// The operands, in assembler order.
            pub const fn operands(self) -> &'static [Operand] {
                match self {
                    $(Opcode::$name => &[$(Operand::$opnd),*],)*
                }
            }

            /// The encoding fields the operands occupy (`FIELD_*` bits), a constant per opcode.
            #[inline]
            const fn fields(self) -> u8 {
                match self {
                    $(Opcode::$name => const { fields_of(&[$(Operand::$opnd),*]) },)*
                }
            }

            /// Whether the first operand is `rD`, a constant per opcode.
            #[inline]
            const fn dst_first(self) -> bool {
                match self {
                    $(Opcode::$name => const {
                        matches!([$(Operand::$opnd),*].first(), Some(Operand::Dst))
                    },)*
                }
            }

            /// Whether an operand is a scratch slot, a constant per opcode.
            #[inline]
            pub const fn uses_slot(self) -> bool {
                match self {
                    $(Opcode::$name => const { has_slot(&[$(Operand::$opnd),*]) },)*
                }
            }

            /// One line saying what the instruction does.
            pub const fn doc(self) -> &'static str {
                match self {
                    $(Opcode::$name => $doc,)*
                }
            }
        }
    };
}

for_each_op!(define_opcodes);

impl Opcode {
    /// Whether control never continues to the next instruction (returns and `ja`).
    pub const fn is_terminator(self) -> bool {
        matches!(
            self,
            Opcode::Ja | Opcode::Reject | Opcode::AcceptK | Opcode::AcceptX
        )
    }

    /// Whether this is a conditional jump (falls through when false).
    pub const fn is_conditional_jump(self) -> bool {
        matches!(
            self,
            Opcode::JeqK
                | Opcode::JgtK
                | Opcode::JgeK
                | Opcode::JsetK
                | Opcode::JeqX
                | Opcode::JgtX
                | Opcode::JgeX
                | Opcode::JsetX
        )
    }

    /// Whether the instruction has a jump target.
    pub const fn is_jump(self) -> bool {
        matches!(self, Opcode::Ja) || self.is_conditional_jump()
    }

    /// Whether the instruction writes `rD`.
    pub const fn writes_dst(self) -> bool {
        self.dst_first() && !self.is_jump()
    }

    /// Whether the instruction reads `rD` (ALU read-modify-write and conditional jumps).
    pub const fn reads_dst(self) -> bool {
        let class = self.byte() >> 4;
        self.dst_first() && (class == 1 || class == 2 || class == 3)
    }

    /// Whether the instruction reads `rS`.
    pub const fn reads_src(self) -> bool {
        self.fields() & FIELD_SRC != 0
    }
}

/// One decoded instruction: the opcode and its raw fields.
///
/// Fields the opcode does not use are zero in every instruction obtained from [`Insn::decode`]
/// or from a verified program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Insn {
    /// The operation.
    pub op: Opcode,
    /// Destination register, 0..16.
    pub dst: u8,
    /// Source register, 0..16.
    pub src: u8,
    /// Jump displacement: the target is `pc + 1 + off`.
    pub off: i16,
    /// The constant: immediate, frame offset, scratch slot or table index.
    pub k: u32,
}

/// Why 8 bytes are not an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The opcode byte names no instruction.
    UnknownOpcode(u8),
    /// A field the instruction does not use is not zero.
    UnusedFieldNotZero,
}

impl Insn {
    /// An instruction from its fields; fields the opcode does not use are cleared.
    pub fn new(op: Opcode, dst: u8, src: u8, off: i16, k: u32) -> Insn {
        let f = op.fields();
        Insn {
            op,
            dst: if f & FIELD_DST != 0 { dst & 0xf } else { 0 },
            src: if f & FIELD_SRC != 0 { src & 0xf } else { 0 },
            off: if f & FIELD_OFF != 0 { off } else { 0 },
            k: if f & FIELD_K != 0 { k } else { 0 },
        }
    }

    /// Whether this is the only form of the instruction the encoding has: register numbers
    /// below 16 and every field the opcode does not use zero (as [`Insn::decode`] insists).
    pub fn is_canonical(&self) -> bool {
        *self == Insn::new(self.op, self.dst, self.src, self.off, self.k)
    }

    /// The 8-byte encoding.
    pub fn encode(&self) -> [u8; INSN_SIZE] {
        let mut b = [0u8; INSN_SIZE];
        b[0] = self.op.byte();
        b[1] = (self.src << 4) | (self.dst & 0xf);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.k.to_le_bytes());
        b
    }

    /// Decodes 8 bytes, insisting on a known opcode and zero unused fields.
    pub fn decode(b: [u8; INSN_SIZE]) -> Result<Insn, DecodeError> {
        let op = Opcode::from_byte(b[0]).ok_or(DecodeError::UnknownOpcode(b[0]))?;
        let insn = Insn {
            op,
            dst: b[1] & 0xf,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        };
        if insn != Insn::new(op, insn.dst, insn.src, insn.off, insn.k) {
            return Err(DecodeError::UnusedFieldNotZero);
        }
        Ok(insn)
    }

    /// The absolute target of a jump at `pc`, which may be out of range or backward.
    pub fn target(&self, pc: usize) -> i64 {
        pc as i64 + 1 + i64::from(self.off)
    }
}

/// The result of running a program on a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The frame does not match.
    Reject,
    /// The frame matches; the value is the program's (a queue id for classifier programs).
    Accept(u32),
}

impl Verdict {
    /// Whether the verdict is accept.
    pub fn is_accept(self) -> bool {
        matches!(self, Verdict::Accept(_))
    }

    /// The value as `netmux vm run` prints it: 0 for reject, else the accept value.
    pub fn as_u32(self) -> u32 {
        match self {
            Verdict::Reject => 0,
            Verdict::Accept(v) => v,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Reject => f.write_str("reject"),
            Verdict::Accept(v) => write!(f, "accept {v}"),
        }
    }
}

/// Constructors that read like assembly, for code generators and tests.
#[allow(missing_docs)]
impl Insn {
    pub fn ldb(d: u8, k: u32) -> Insn {
        Insn::new(Opcode::LdAbsB, d, 0, 0, k)
    }
    pub fn ldh(d: u8, k: u32) -> Insn {
        Insn::new(Opcode::LdAbsH, d, 0, 0, k)
    }
    pub fn ldw(d: u8, k: u32) -> Insn {
        Insn::new(Opcode::LdAbsW, d, 0, 0, k)
    }
    pub fn ldb_ind(d: u8, s: u8, k: u32) -> Insn {
        Insn::new(Opcode::LdIndB, d, s, 0, k)
    }
    pub fn ldh_ind(d: u8, s: u8, k: u32) -> Insn {
        Insn::new(Opcode::LdIndH, d, s, 0, k)
    }
    pub fn ldw_ind(d: u8, s: u8, k: u32) -> Insn {
        Insn::new(Opcode::LdIndW, d, s, 0, k)
    }
    pub fn ldlen(d: u8) -> Insn {
        Insn::new(Opcode::LdLen, d, 0, 0, 0)
    }
    pub fn mov(d: u8, k: u32) -> Insn {
        Insn::new(Opcode::MovK, d, 0, 0, k)
    }
    pub fn mov_x(d: u8, s: u8) -> Insn {
        Insn::new(Opcode::MovX, d, s, 0, 0)
    }
    pub fn ldm(d: u8, slot: u32) -> Insn {
        Insn::new(Opcode::LdMem, d, 0, 0, slot)
    }
    pub fn stm(slot: u32, s: u8) -> Insn {
        Insn::new(Opcode::StMem, 0, s, 0, slot)
    }
    /// An ALU or jump instruction with a constant operand (`op` must take `[Dst, K, ..]`).
    pub fn alu_k(op: Opcode, d: u8, k: u32) -> Insn {
        Insn::new(op, d, 0, 0, k)
    }
    /// An ALU instruction with a register operand.
    pub fn alu_x(op: Opcode, d: u8, s: u8) -> Insn {
        Insn::new(op, d, s, 0, 0)
    }
    pub fn neg(d: u8) -> Insn {
        Insn::new(Opcode::Neg, d, 0, 0, 0)
    }
    pub fn ja(off: i16) -> Insn {
        Insn::new(Opcode::Ja, 0, 0, off, 0)
    }
    /// A conditional jump against a constant (`JeqK`, `JgtK`, `JgeK`, `JsetK`).
    pub fn jmp_k(op: Opcode, d: u8, k: u32, off: i16) -> Insn {
        Insn::new(op, d, 0, off, k)
    }
    /// A conditional jump against a register (`JeqX`, `JgtX`, `JgeX`, `JsetX`).
    pub fn jmp_x(op: Opcode, d: u8, s: u8, off: i16) -> Insn {
        Insn::new(op, d, s, off, 0)
    }
    pub fn reject() -> Insn {
        Insn::new(Opcode::Reject, 0, 0, 0, 0)
    }
    pub fn accept(k: u32) -> Insn {
        Insn::new(Opcode::AcceptK, 0, 0, 0, k)
    }
    pub fn accept_x(s: u8) -> Insn {
        Insn::new(Opcode::AcceptX, 0, s, 0, 0)
    }
    pub fn lookup(d: u8, s: u8, table: u32) -> Insn {
        Insn::new(Opcode::Lookup, d, s, 0, table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_round_trips_through_its_byte() {
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_byte(op.byte()), Some(op));
        }
        let known = (0..=255u8)
            .filter(|&b| Opcode::from_byte(b).is_some())
            .count();
        assert_eq!(known, Opcode::ALL.len());
    }

    #[test]
    fn encode_then_decode_is_identity() {
        for &op in Opcode::ALL {
            let i = Insn::new(op, 3, 7, 5, 0xdead_beef);
            assert_eq!(Insn::decode(i.encode()), Ok(i));
        }
    }

    #[test]
    fn unused_fields_must_be_zero() {
        let mut b = Insn::reject().encode();
        b[4] = 1;
        assert_eq!(Insn::decode(b), Err(DecodeError::UnusedFieldNotZero));
        assert_eq!(
            Insn::decode([0xff, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnknownOpcode(0xff))
        );
    }
}
