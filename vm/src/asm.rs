//! The text assembler and disassembler.
//!
//! ```text
//! ; a comment (also '#')
//!         ldh r0, [12]            ; load 2 bytes at offset 12
//!         jeq r0, 0x800, ipv4     ; jump to a label ...
//!         reject
//! ipv4:   ldb r1, [14]
//!         and r1, 0xf
//!         lsh r1, 2
//!         ldh r2, [r1 + 16]       ; register + constant offset
//!         jge r2, 1024, +1        ; ... or by a displacement: target = pc + 1 + N
//!         accept 1
//!         lookup r3, r0, t0       ; key r0..r0+W, W = table t0's key width
//!         accept r3
//!         .raw 4000000000000000   ; 8 instruction bytes, verbatim (for testing the verifier)
//! .table words=1 default=0        ; tables follow the instructions, in order t0, t1, ...
//!         0x800 -> 7              ; key words -> value
//! ```
//!
//! The assembler only encodes: it does not verify, so it can write every program the verifier
//! must refuse. The disassembler reads any structurally complete container (instructions that
//! do not decode become `.raw`), and assembling its output gives back the same bytes.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::isa::{Insn, Opcode, Operand, INSN_SIZE};
use crate::program::{FORMAT_VERSION, HEADER_SIZE, MAGIC};

/// An assembly error with its 1-based line number, and where the fault is on the line when
/// that is known (printed with the line and a caret under it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsmError {
    /// Line of the source, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The line's text and the byte range of the fault in it.
    pub caret: Option<(String, std::ops::Range<usize>)>,
}

impl std::fmt::Display for AsmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)?;
        if let Some((text, range)) = &self.caret {
            // Tabs would misplace the caret: shown as spaces.
            let shown: String = text
                .chars()
                .map(|c| if c.is_whitespace() { ' ' } else { c })
                .collect();
            let start = text.get(..range.start).map_or(0, |s| s.chars().count());
            let width = text
                .get(range.clone())
                .map_or(1, |s| s.chars().count())
                .max(1);
            write!(
                f,
                "\n  {shown}\n  {}{}",
                " ".repeat(start),
                "^".repeat(width)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for AsmError {}

/// Why bytes cannot be disassembled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot disassemble: {0}")]
pub struct DisasmError(pub String);

struct RawTable {
    words: u32,
    default: u32,
    entries: Vec<(Vec<u32>, u32)>,
}

enum Item {
    Insn {
        op: Opcode,
        dst: u8,
        src: u8,
        target: Option<Target>,
        k: u32,
    },
    Raw([u8; INSN_SIZE]),
}

enum Target {
    Label(String, usize),
    Offset(i16),
}

fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(neg) = s.strip_prefix('-') {
        let v = parse_num(neg)?;
        if v > 1 << 31 {
            return None;
        }
        Some((v as u32).wrapping_neg())
    } else {
        parse_num(s).and_then(|v| u32::try_from(v).ok())
    }
}

fn parse_prefixed(s: &str, prefix: char) -> Option<u32> {
    let rest = s.trim().strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

fn parse_reg(s: &str) -> Option<u8> {
    parse_prefixed(s, 'r').filter(|&r| r < 16).map(|r| r as u8)
}

fn is_label(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Parses one instruction's operands for one candidate opcode.
fn parse_operands(op: Opcode, args: &[&str], line: usize) -> Option<Item> {
    let shape = op.operands();
    if shape.len() != args.len() {
        return None;
    }
    let (mut dst, mut src, mut k, mut target) = (0u8, 0u8, 0u32, None);
    for (&kind, &arg) in shape.iter().zip(args) {
        match kind {
            Operand::Dst => dst = parse_reg(arg)?,
            Operand::Src => src = parse_reg(arg)?,
            Operand::K => k = parse_u32(arg)?,
            Operand::Slot => k = parse_prefixed(arg, 'm')?,
            Operand::Table => k = parse_prefixed(arg, 't')?,
            Operand::Abs | Operand::Ind => {
                let inner = arg.strip_prefix('[')?.strip_suffix(']')?.trim();
                match (kind, inner.split_once('+')) {
                    (Operand::Ind, Some((r, off))) => {
                        src = parse_reg(r)?;
                        k = parse_u32(off)?;
                    }
                    (Operand::Ind, None) => src = parse_reg(inner)?,
                    (Operand::Abs, None) => k = parse_u32(inner)?,
                    _ => return None,
                }
            }
            Operand::Target => {
                target = Some(if let Some(n) = arg.strip_prefix('+') {
                    Target::Offset(i16::try_from(parse_num(n)?).ok()?)
                } else if let Some(n) = arg.strip_prefix('-') {
                    // Through i64: -32768 is an i16 although 32768 is not.
                    let n = i64::try_from(parse_num(n)?).ok()?;
                    Target::Offset(i16::try_from(-n).ok()?)
                } else if is_label(arg) {
                    Target::Label(arg.to_string(), line)
                } else {
                    return None;
                });
            }
        }
    }
    Some(Item::Insn {
        op,
        dst,
        src,
        target,
        k,
    })
}

fn shape_text(op: Opcode) -> String {
    let parts: Vec<&str> = op
        .operands()
        .iter()
        .map(|o| match o {
            Operand::Dst => "rD",
            Operand::Src => "rS",
            Operand::K => "K",
            Operand::Abs => "[K]",
            Operand::Ind => "[rS + K]",
            Operand::Slot => "mN",
            Operand::Target => "LABEL|+N",
            Operand::Table => "tN",
        })
        .collect();
    format!("{} {}", op.mnemonic(), parts.join(", "))
}

/// The text before `->` of a table entry line, for a caret when the key has no words.
fn key_text_or_arrow<'a>(raw_line: &'a str, text: &'a str) -> &'a str {
    text.find("->")
        .and_then(|i| {
            let start = text.as_ptr() as usize - raw_line.as_ptr() as usize;
            raw_line.get(start + i..start + i + 2)
        })
        .unwrap_or(text)
}

/// Whether an operand is written as a number (decimal or `0x` hex), whatever its size.
fn looks_numeric(s: &str) -> bool {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Assembles source text into the container format. Does not verify (but refuses a table
/// entry whose key is not the table's width, which no container can hold).
pub fn assemble(source: &str) -> Result<Vec<u8>, AsmError> {
    let mut items: Vec<Item> = Vec::new();
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut tables: Vec<RawTable> = Vec::new();
    for (index, raw_line) in source.lines().enumerate() {
        let line = index + 1;
        let fail = |message: String| AsmError {
            line,
            message,
            caret: None,
        };
        // The byte range of `part` (a slice of this line) in the line.
        let at = |part: &str| {
            let start = part.as_ptr() as usize - raw_line.as_ptr() as usize;
            start..start + part.len()
        };
        let fail_at = |message: String, part: &str| AsmError {
            line,
            message,
            caret: Some((raw_line.to_string(), at(part))),
        };
        let mut text = raw_line.split([';', '#']).next().unwrap_or("").trim();
        // Labels, possibly followed by an instruction.
        while let Some((name, rest)) = text.split_once(':') {
            let name = name.trim();
            if !is_label(name) {
                break;
            }
            if !tables.is_empty() {
                return Err(fail("labels must come before the first .table".into()));
            }
            if labels.insert(name.to_string(), items.len()).is_some() {
                return Err(fail(format!("label `{name}` defined twice")));
            }
            text = rest.trim();
        }
        if text.is_empty() {
            continue;
        }
        if let Some(rest) = text.strip_prefix(".table") {
            let mut table = RawTable {
                words: 1,
                default: 0,
                entries: Vec::new(),
            };
            for field in rest.split_whitespace() {
                let (name, value) = field
                    .split_once('=')
                    .ok_or_else(|| fail(format!("expected name=value, found `{field}`")))?;
                let value = parse_u32(value)
                    .ok_or_else(|| fail(format!("`{value}` is not a 32-bit number")))?;
                match name {
                    "words" => table.words = value,
                    "default" => table.default = value,
                    _ => return Err(fail(format!("unknown table field `{name}`"))),
                }
            }
            tables.push(table);
            continue;
        }
        if let Some(hex) = text.strip_prefix(".raw") {
            if !tables.is_empty() {
                return Err(fail(
                    "instructions must come before the first .table".into(),
                ));
            }
            let hex = hex.trim();
            let mut bytes = [0u8; INSN_SIZE];
            if hex.len() != 2 * INSN_SIZE || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(fail(format!(".raw needs 16 hex digits, found `{hex}`")));
            }
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
            }
            items.push(Item::Raw(bytes));
            continue;
        }
        if let Some(table) = tables.last_mut() {
            if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                let (key, value) = text
                    .split_once("->")
                    .ok_or_else(|| fail("table entry needs `KEY... -> VALUE`".into()))?;
                let parse = |s: &str| {
                    parse_u32(s).ok_or_else(|| fail_at(format!("`{s}` is not a 32-bit number"), s))
                };
                let words: Vec<&str> = key.split_whitespace().collect();
                let key: Vec<u32> = words.iter().map(|w| parse(w)).collect::<Result<_, _>>()?;
                if key.len() != table.words as usize {
                    // The verifier would refuse the whole container; say which entry.
                    let span = match (words.first(), words.last()) {
                        (Some(first), Some(last)) => {
                            let (a, b) = (at(first), at(last));
                            &raw_line[a.start..b.end]
                        }
                        _ => key_text_or_arrow(raw_line, text),
                    };
                    return Err(fail_at(
                        format!(
                            "the key has {} word{}, the table's keys have {} (words={})",
                            key.len(),
                            if key.len() == 1 { "" } else { "s" },
                            table.words,
                            table.words
                        ),
                        span,
                    ));
                }
                table.entries.push((key, parse(value.trim())?));
                continue;
            }
            return Err(fail(
                "instructions must come before the first .table".into(),
            ));
        }
        let (mnemonic, args) = match text.split_once(char::is_whitespace) {
            Some((m, a)) => (m, a.trim()),
            None => (text, ""),
        };
        let args: Vec<&str> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',').map(str::trim).collect()
        };
        let candidates: Vec<Opcode> = Opcode::ALL
            .iter()
            .copied()
            .filter(|op| op.mnemonic() == mnemonic)
            .collect();
        if candidates.is_empty() {
            return Err(fail(format!("unknown instruction `{mnemonic}`")));
        }
        let item = candidates
            .iter()
            .find_map(|&op| parse_operands(op, &args, line))
            .ok_or_else(|| {
                // A number too large for its field says so, rather than that the form is wrong.
                for arg in &args {
                    let inner = arg.trim_matches(|c| c == '[' || c == ']');
                    for part in inner.split('+').map(str::trim) {
                        if looks_numeric(part) && parse_u32(part).is_none() {
                            return fail_at(format!("`{part}` does not fit in 32 bits"), part);
                        }
                    }
                }
                let forms: Vec<String> = candidates.iter().map(|&op| shape_text(op)).collect();
                fail(format!(
                    "bad operands for `{mnemonic}`: expected {}",
                    forms.join(" or ")
                ))
            })?;
        items.push(item);
    }

    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let ntables = u16::try_from(tables.len()).map_err(|_| AsmError {
        line: 0,
        message: "too many tables".into(),
        caret: None,
    })?;
    out.extend_from_slice(&ntables.to_le_bytes());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for (pc, item) in items.iter().enumerate() {
        let bytes = match item {
            Item::Raw(b) => *b,
            Item::Insn {
                op,
                dst,
                src,
                target,
                k,
            } => {
                let off = match target {
                    None => 0,
                    Some(Target::Offset(o)) => *o,
                    Some(Target::Label(name, line)) => {
                        let to = *labels.get(name).ok_or_else(|| AsmError {
                            line: *line,
                            message: format!("undefined label `{name}`"),
                            caret: None,
                        })?;
                        i16::try_from(to as i64 - pc as i64 - 1).map_err(|_| AsmError {
                            line: *line,
                            message: format!("label `{name}` is too far away"),
                            caret: None,
                        })?
                    }
                };
                Insn::new(*op, *dst, *src, off, *k).encode()
            }
        };
        out.extend_from_slice(&bytes);
    }
    for t in &tables {
        out.extend_from_slice(&t.words.to_le_bytes());
        out.extend_from_slice(&t.default.to_le_bytes());
        out.extend_from_slice(&(t.entries.len() as u32).to_le_bytes());
        for (key, value) in &t.entries {
            for w in key {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    Ok(out)
}

fn fmt_k(k: u32) -> String {
    if k < 10 {
        k.to_string()
    } else {
        format!("{k:#x}")
    }
}

/// Disassembles a container. Works on any structurally complete container, verified or not.
pub fn disassemble(bytes: &[u8]) -> Result<String, DisasmError> {
    let fail = |m: &str| DisasmError(m.to_string());
    if bytes.len() < HEADER_SIZE {
        return Err(fail("shorter than a program header"));
    }
    if bytes[0..4] != MAGIC {
        return Err(fail("not a netmux program (bad magic)"));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(DisasmError(format!("unsupported format version {version}")));
    }
    let ntables = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let code = n
        .checked_mul(INSN_SIZE)
        .and_then(|len| bytes.get(HEADER_SIZE..HEADER_SIZE + len))
        .ok_or_else(|| fail("the instructions are truncated"))?;
    let insns: Vec<Option<Insn>> = code
        .chunks_exact(INSN_SIZE)
        .map(|c| Insn::decode(c.try_into().expect("8 bytes")).ok())
        .collect();
    let in_range = |pc: usize, i: &Insn| (0..n as i64).contains(&i.target(pc));
    let mut is_target = vec![false; n];
    for (pc, i) in insns.iter().enumerate() {
        if let Some(i) = i.filter(|i| i.op.is_jump() && in_range(pc, i)) {
            is_target[i.target(pc) as usize] = true;
        }
    }
    let mut out = String::new();
    for (pc, (insn, chunk)) in insns.iter().zip(code.chunks_exact(INSN_SIZE)).enumerate() {
        if is_target[pc] {
            let _ = writeln!(out, "L{pc}:");
        }
        let Some(i) = insn else {
            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(out, "    .raw {hex}");
            continue;
        };
        let ops: Vec<String> =
            i.op.operands()
                .iter()
                .map(|o| match o {
                    Operand::Dst => format!("r{}", i.dst),
                    Operand::Src => format!("r{}", i.src),
                    Operand::K => fmt_k(i.k),
                    Operand::Abs => format!("[{}]", i.k),
                    Operand::Ind if i.k == 0 => format!("[r{}]", i.src),
                    Operand::Ind => format!("[r{} + {}]", i.src, i.k),
                    Operand::Slot => format!("m{}", i.k),
                    Operand::Table => format!("t{}", i.k),
                    Operand::Target if in_range(pc, i) => format!("L{}", i.target(pc)),
                    Operand::Target if i.off < 0 => format!("-{}", -i32::from(i.off)),
                    Operand::Target => format!("+{}", i.off),
                })
                .collect();
        if ops.is_empty() {
            let _ = writeln!(out, "    {}", i.op.mnemonic());
        } else {
            let _ = writeln!(out, "    {} {}", i.op.mnemonic(), ops.join(", "));
        }
    }
    let mut pos = HEADER_SIZE + code.len();
    let mut word = |what: &str| -> Result<u32, DisasmError> {
        let b = bytes
            .get(pos..pos + 4)
            .ok_or_else(|| DisasmError(format!("the {what} is truncated")))?;
        pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    for _ in 0..ntables {
        let words = word("table header")?;
        let default = word("table header")?;
        let entries = word("table header")?;
        let _ = writeln!(out, ".table words={words} default={}", fmt_k(default));
        for _ in 0..entries {
            let mut key = Vec::new();
            for _ in 0..words {
                key.push(fmt_k(word("table")?));
            }
            let value = fmt_k(word("table")?);
            let _ = writeln!(out, "    {} -> {value}", key.join(" "));
        }
    }
    if pos != bytes.len() {
        return Err(DisasmError(format!(
            "{} bytes after the end of the program",
            bytes.len() - pos
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_disassembles_and_reassembles_to_the_same_bytes() {
        let mut src = String::new();
        for &op in Opcode::ALL {
            let i = Insn::new(op, 3, 5, 0, 77);
            let bytes = crate::program::encode(&[i], &[]);
            let text = disassemble(&bytes).unwrap();
            assert_eq!(assemble(&text).unwrap(), bytes, "{text}");
            src.push_str(&text);
        }
        assert!(src.contains("ldh r3, [r5 + 77]"), "{src}");
    }

    #[test]
    fn labels_raw_words_and_tables_round_trip() {
        let src = "start: ldb r0, [0]\n jeq r0, 1, out\n ja -1\n ja -32768\n ja +32767\n .raw ff00000000000001\nout: accept r0\n.table words=2 default=9\n 1 2 -> 3\n";
        let bytes = assemble(src).unwrap();
        let text = disassemble(&bytes).unwrap();
        assert_eq!(assemble(&text).unwrap(), bytes, "{text}");
    }

    #[test]
    fn the_most_negative_jump_displacement_round_trips() {
        let bytes = crate::program::encode(&[Insn::ja(i16::MIN), Insn::reject()], &[]);
        let text = disassemble(&bytes).unwrap();
        assert!(text.contains("ja -32768"), "{text}");
        assert_eq!(assemble(&text).unwrap(), bytes);
        assert!(assemble("ja -32769\n").is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let e = assemble("reject\nfoo r1\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = assemble("ldb r0, 5\n").unwrap_err();
        assert!(e.message.contains("[K]"), "{e}");
        let e = assemble("ja nowhere\n").unwrap_err();
        assert!(e.message.contains("undefined label"), "{e}");
    }

    #[test]
    fn a_table_key_of_the_wrong_width_is_refused_with_a_caret() {
        let e = assemble("accept 1\n.table words=2 default=0\n  1 -> 2 ; one word\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: the key has 1 word, the table's keys have 2 (words=2)\n    1 -> 2 ; one word\n    ^"
        );
        let e = assemble("accept 1\n.table words=1\n\t7 8 9 -> 1\n").unwrap_err();
        assert!(e.to_string().ends_with("\n   7 8 9 -> 1\n   ^^^^^"), "{e}");
        assert!(assemble("accept 1\n.table words=2\n 7 8 -> 1\n").is_ok());
    }

    #[test]
    fn a_constant_too_large_says_so_with_a_caret() {
        let e = assemble("mov r0, 0x100000000\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: `0x100000000` does not fit in 32 bits\n  mov r0, 0x100000000\n          ^^^^^^^^^^^"
        );
        let e = assemble("ldb r0, [r1 + 4294967296]\n").unwrap_err();
        assert!(e.message.contains("does not fit"), "{e}");
    }
}
