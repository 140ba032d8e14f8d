//! Property tests of the verifier and the interpreter on inputs nobody wrote by hand.
//!
//! * 10,000 random byte strings (a quarter pure noise, the rest with a valid header and random
//!   instructions, so they reach the instruction, control-flow and data-flow checks), and
//! * 10,000 mutations of the shared vector programs (bit flips, byte changes, truncation,
//!   extension, instruction swaps, duplications and deletions, header count changes)
//!
//! go to `verify`; whatever passes runs on random frames (empty, short, long, wire length
//! below and above the captured length). Nothing may panic; bytes beyond the captured length
//! must not change a verdict (every load stays inside the captured bytes); a verified program
//! must re-encode to its bytes; and every structurally complete container must survive
//! disassembly and reassembly byte for byte. With the `jit` feature, the JIT must agree with
//! the interpreter on a sample of the verified programs.
//!
//! Every run uses a new seed, printed at the start; `NETMUX_SEED=N` replays one
//! ([`netmux_testkit::seed`]).

mod support;

use std::path::Path;

use netmux_vm::isa::{INSN_SIZE, NUM_REGS};
use netmux_vm::program::{encode, FORMAT_VERSION, HEADER_SIZE, MAGIC};
use netmux_vm::{asm, verify, Insn, Interpreter, Opcode, Program, Verdict, MAX_INSNS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random byte strings fed to the verifier.
const RANDOM_INPUTS: usize = 10_000;
/// Mutated vector programs fed to the verifier.
const MUTATED_INPUTS: usize = 10_000;
/// Frames each verified program runs on.
const FRAMES_PER_PROGRAM: usize = 6;
/// Verified programs also compiled by the JIT (Cranelift compiles are the slow part).
const JIT_SAMPLE: usize = 300;
/// The longest random frame: a jumbo frame, so large offsets can hit.
const MAX_FRAME: usize = 9018;

fn vector_programs() -> Vec<Vec<u8>> {
    support::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"))
        .iter()
        .map(support::Vector::container)
        .collect()
}

/// A constant that is often interesting: small, a frame offset, a boundary, or anything.
fn interesting_k(rng: &mut impl Rng) -> u32 {
    match rng.gen_range(0..8) {
        0 => 0,
        1 => rng.gen_range(0..16),
        2 => rng.gen_range(0..64),
        3 => rng.gen_range(0..1600),
        4 => u32::MAX - rng.gen_range(0..8),
        5 => 1 << rng.gen_range(0..32),
        6 => 0x8000_0000 + rng.gen_range(0..4),
        _ => rng.gen(),
    }
}

/// A random instruction at `pc` of `n`, mostly well formed and mostly jumping forward in range.
fn random_insn(rng: &mut impl Rng, pc: usize, n: usize, tables: usize) -> [u8; INSN_SIZE] {
    if rng.gen_ratio(1, 40) {
        return rng.gen(); // anything at all
    }
    let op = Opcode::ALL[rng.gen_range(0..Opcode::ALL.len())];
    // Few registers, so reads tend to find writes.
    let reg = |rng: &mut dyn rand::RngCore| (rng.next_u32() % 4) as u8;
    let dst = reg(rng);
    let src = reg(rng);
    let room = n.saturating_sub(pc + 1).max(1);
    let off = match rng.gen_range(0..20) {
        0 => rng.gen(),
        1 => -rng.gen_range(0..3),
        _ => rng.gen_range(0..room.min(i16::MAX as usize)) as i16,
    };
    let k = match op {
        Opcode::LdMem | Opcode::StMem => rng.gen_range(0..17),
        Opcode::Lookup => rng.gen_range(0..tables as u32 + 1),
        Opcode::LshK | Opcode::RshK => rng.gen_range(0..34),
        _ => interesting_k(rng),
    };
    let mut bytes = Insn::new(op, dst, src, off, k).encode();
    if rng.gen_ratio(1, 50) {
        let i = rng.gen_range(1..INSN_SIZE);
        bytes[i] ^= 1 << rng.gen_range(0..8); // maybe an unused field
    }
    bytes
}

/// A container with a valid header, random instructions, and sometimes tables.
fn random_program(rng: &mut impl Rng) -> Vec<u8> {
    let n = match rng.gen_range(0..10) {
        0 => rng.gen_range(0..3),
        _ => rng.gen_range(1..32),
    };
    let tables = rng.gen_range(0..3usize);
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(tables as u16).to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    // Most programs first write the registers the random instructions use, so that data
    // flow lets them through and the interpreter gets to run them.
    let prologue = if n > 4 && rng.gen_ratio(3, 4) { 4 } else { 0 };
    for pc in 0..n {
        if pc < prologue {
            let r = pc as u8;
            let set = match rng.gen_range(0..4) {
                0 => Insn::ldb(r, rng.gen_range(0..64)),
                1 => Insn::ldh(r, rng.gen_range(0..64)),
                2 => Insn::ldlen(r),
                _ => Insn::mov(r, interesting_k(rng)),
            };
            out.extend_from_slice(&set.encode());
            continue;
        }
        // End most programs in a return so they can pass.
        if pc + 1 == n && rng.gen_ratio(9, 10) {
            let ret = match rng.gen_range(0..3) {
                0 => Insn::reject(),
                1 => Insn::accept(interesting_k(rng)),
                _ => Insn::accept_x(rng.gen_range(0..4)),
            };
            out.extend_from_slice(&ret.encode());
        } else {
            out.extend_from_slice(&random_insn(rng, pc, n, tables));
        }
    }
    for _ in 0..tables {
        let words: u32 = if rng.gen_ratio(1, 20) {
            rng.gen_range(0..12)
        } else {
            rng.gen_range(1..4)
        };
        let entries = rng.gen_range(0..4u32);
        out.extend_from_slice(&words.to_le_bytes());
        out.extend_from_slice(&interesting_k(rng).to_le_bytes());
        out.extend_from_slice(&entries.to_le_bytes());
        for _ in 0..entries * (words + 1) {
            out.extend_from_slice(&rng.gen_range(0..4u32).to_le_bytes());
        }
    }
    if rng.gen_ratio(1, 30) {
        out.truncate(rng.gen_range(0..=out.len()));
    }
    out
}

fn random_bytes(rng: &mut impl Rng) -> Vec<u8> {
    let len = rng.gen_range(0..80);
    let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if rng.gen_ratio(1, 2) && b.len() >= 4 {
        b[..4].copy_from_slice(&MAGIC); // get past the magic check at least
    }
    b
}

fn insn_count(b: &[u8]) -> usize {
    if b.len() < HEADER_SIZE {
        return 0;
    }
    let n = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    n.min((b.len() - HEADER_SIZE) / INSN_SIZE)
}

fn set_insn_count(b: &mut [u8], n: usize) {
    if b.len() >= HEADER_SIZE {
        b[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    }
}

/// One to four mutations of a valid program.
fn mutate(rng: &mut impl Rng, mut b: Vec<u8>) -> Vec<u8> {
    // Usually one mutation, sometimes a few.
    let count = [1, 1, 1, 1, 2, 2, 3, 4][rng.gen_range(0..8)];
    for _ in 0..count {
        let n = insn_count(&b);
        let insn_at = |i: usize| HEADER_SIZE + i * INSN_SIZE;
        match rng.gen_range(0..9) {
            0 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            2 if !b.is_empty() => {
                // A byte inside the instructions, where mutations mean the most.
                let end = insn_at(n).min(b.len());
                if end > HEADER_SIZE {
                    let i = rng.gen_range(HEADER_SIZE..end);
                    b[i] = if rng.gen() {
                        rng.gen()
                    } else {
                        interesting_k(rng) as u8
                    };
                }
            }
            3 => b.truncate(rng.gen_range(0..=b.len())),
            4 => b.extend((0..rng.gen_range(1..16)).map(|_| rng.gen::<u8>())),
            5 if n >= 2 => {
                let (i, j) = (rng.gen_range(0..n), rng.gen_range(0..n));
                for x in 0..INSN_SIZE {
                    b.swap(insn_at(i) + x, insn_at(j) + x);
                }
            }
            6 if n >= 1 => {
                // Duplicate an instruction (and keep the header's count right).
                let i = rng.gen_range(0..n);
                let copy: Vec<u8> = b[insn_at(i)..insn_at(i + 1)].to_vec();
                b.splice(insn_at(i)..insn_at(i), copy);
                set_insn_count(&mut b, n + 1);
            }
            7 if n >= 2 => {
                // Delete an instruction (and keep the header's count right).
                let i = rng.gen_range(0..n);
                b.drain(insn_at(i)..insn_at(i + 1));
                set_insn_count(&mut b, n - 1);
            }
            8 if b.len() >= HEADER_SIZE => {
                let field = rng.gen_range(4..HEADER_SIZE);
                b[field] = b[field].wrapping_add(if rng.gen() { 1 } else { 255 });
            }
            _ => {}
        }
    }
    b
}

/// A frame to run on: bytes and the wire length.
fn random_frame(rng: &mut impl Rng, templates: &[Vec<u8>]) -> (Vec<u8>, u32) {
    let len = match rng.gen_range(0..6) {
        0 => 0,
        1 => rng.gen_range(1..20),
        2 => rng.gen_range(20..80),
        3 => rng.gen_range(60..1515),
        4 => rng.gen_range(1515..=MAX_FRAME),
        _ => 60,
    };
    let mut frame = vec![0u8; len];
    rng.fill(&mut frame[..]);
    if !templates.is_empty() && rng.gen() {
        // Start from a real header so programs that test fields take deeper paths.
        let t = &templates[rng.gen_range(0..templates.len())];
        let k = t.len().min(frame.len());
        frame[..k].copy_from_slice(&t[..k]);
    }
    let wire_len = match rng.gen_range(0..4) {
        0 => len as u32,
        1 => rng.gen_range(0..=len as u32),
        2 => len as u32 + rng.gen_range(1..2000),
        _ => rng.gen(),
    };
    (frame, wire_len)
}

struct Stats {
    verified: usize,
    runs: usize,
    accepts: usize,
    jit_checked: usize,
}

/// Runs every property on one verified program.
fn exercise(
    rng: &mut impl Rng,
    bytes: &[u8],
    program: Program,
    templates: &[Vec<u8>],
    stats: &mut Stats,
) {
    assert_eq!(program.to_bytes(), bytes, "a verified program re-encodes");
    for r in program.insns() {
        assert!(usize::from(r.dst) < NUM_REGS && usize::from(r.src) < NUM_REGS);
    }
    assert!(!program.insns().is_empty() && program.insns().len() <= MAX_INSNS);
    // Written with cfg! rather than #[cfg] so that it type-checks in every build.
    let jit = if cfg!(feature = "jit") && stats.jit_checked < JIT_SAMPLE {
        stats.jit_checked += 1;
        Some(
            netmux_vm::engine(program.clone(), netmux_vm::Strategy::Jit)
                .unwrap_or_else(|e| panic!("the JIT refused a verified program: {e}")),
        )
    } else {
        None
    };
    let interp = Interpreter::new(program);
    for _ in 0..FRAMES_PER_PROGRAM {
        let (frame, wire_len) = random_frame(rng, templates);
        let verdict = netmux_vm::Engine::run(&interp, &frame, wire_len);
        // Bytes past the captured length never influence the verdict.
        let mut longer = frame.clone();
        longer.resize(frame.len() + 64, 0);
        rng.fill(&mut longer[frame.len()..]);
        assert_eq!(
            netmux_vm::Engine::run(&interp, &longer[..frame.len()], wire_len),
            verdict
        );
        if let Some(jit) = &jit {
            assert_eq!(jit.run(&frame, wire_len), verdict, "JIT disagrees");
        }
        stats.runs += 1;
        stats.accepts += usize::from(matches!(verdict, Verdict::Accept(_)));
    }
    stats.verified += 1;
}

/// Disassembly then reassembly gives back any container the disassembler reads.
fn check_round_trip(bytes: &[u8]) -> bool {
    match asm::disassemble(bytes) {
        Ok(text) => {
            let again = asm::assemble(&text)
                .unwrap_or_else(|e| panic!("disassembly does not assemble: {e}\n{text}"));
            assert_eq!(again, bytes, "round trip changed the bytes:\n{text}");
            true
        }
        Err(_) => false,
    }
}

/// `Program::new` (which verifies decoded instructions and tables without encoding them) gives
/// what `verify` gives on their encoding, error included: for containers without tables whose
/// instructions all decode.
fn check_in_memory_verification(bytes: &[u8]) {
    if bytes.len() < HEADER_SIZE || bytes[..4] != MAGIC || bytes[6..8] != [0, 0] {
        return;
    }
    let code = &bytes[HEADER_SIZE..];
    let declared = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if !code.len().is_multiple_of(INSN_SIZE) || code.len() / INSN_SIZE != declared {
        return;
    }
    let Ok(insns) = code
        .chunks_exact(INSN_SIZE)
        .map(|c| Insn::decode(c.try_into().expect("8 bytes")))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let version_ok = bytes[4..6] == FORMAT_VERSION.to_le_bytes();
    if version_ok {
        assert_eq!(
            Program::new(&insns, &[]),
            verify(bytes),
            "Program::new and verify disagree"
        );
    }
}

fn run_properties(
    inputs: impl Iterator<Item = Vec<u8>>,
    rng: &mut StdRng,
    name: &str,
    seed: u64,
) -> Stats {
    let templates = frame_templates();
    let mut stats = Stats {
        verified: 0,
        runs: 0,
        accepts: 0,
        jit_checked: 0,
    };
    let mut round_trips = 0;
    let mut total = 0;
    for bytes in inputs {
        total += 1;
        round_trips += usize::from(check_round_trip(&bytes));
        check_in_memory_verification(&bytes);
        match verify(&bytes) {
            Ok(program) => exercise(rng, &bytes, program, &templates, &mut stats),
            Err(e) => {
                // The error is always printable and names an instruction that exists (or
                // the end, for table faults).
                let _ = e.to_string();
                assert!(e.pc <= MAX_INSNS, "{e}");
            }
        }
    }
    eprintln!(
        "{name}: {total} inputs, {} verified, {} runs ({} accepts), {round_trips} round trips \
         (NETMUX_SEED={seed})",
        stats.verified, stats.runs, stats.accepts,
    );
    stats
}

/// Frame headers from the vectors, so random frames sometimes look like real traffic.
fn frame_templates() -> Vec<Vec<u8>> {
    support::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"))
        .into_iter()
        .filter_map(|v| match v.expect {
            support::Expectation::Run { frame, .. } if frame.len() >= 14 => Some(frame),
            _ => None,
        })
        .collect()
}

#[test]
fn random_byte_strings_never_panic_and_what_verifies_runs_safely() {
    let seed = netmux_testkit::seed("random_byte_strings_never_panic");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gen = StdRng::seed_from_u64(seed ^ 1);
    let inputs = (0..RANDOM_INPUTS).map(move |i| {
        if i % 4 == 0 {
            random_bytes(&mut gen)
        } else {
            random_program(&mut gen)
        }
    });
    let stats = run_properties(inputs, &mut rng, "random", seed);
    // The generator must reach the interpreter often, or the test proves little.
    assert!(
        stats.verified >= RANDOM_INPUTS / 20,
        "only {} of {RANDOM_INPUTS} random programs verified",
        stats.verified
    );
}

#[test]
fn mutated_vector_programs_never_panic_and_what_verifies_runs_safely() {
    let programs = vector_programs();
    let seed = netmux_testkit::seed("mutated_vector_programs_never_panic");
    let mut rng = StdRng::seed_from_u64(seed ^ 2);
    let mut gen = StdRng::seed_from_u64(seed ^ 3);
    let inputs = (0..MUTATED_INPUTS).map(move |_| {
        let base = programs[gen.gen_range(0..programs.len())].clone();
        mutate(&mut gen, base)
    });
    let stats = run_properties(inputs, &mut rng, "mutated", seed);
    assert!(
        stats.verified >= MUTATED_INPUTS / 20,
        "only {} of {MUTATED_INPUTS} mutated programs verified",
        stats.verified
    );
}

#[test]
fn a_program_of_exactly_max_insns_verifies_and_one_more_does_not() {
    let mut insns = vec![Insn::mov(0, 1); MAX_INSNS - 1];
    insns.push(Insn::accept_x(0));
    let p = verify(&encode(&insns, &[])).expect("MAX_INSNS instructions are allowed");
    assert_eq!(
        netmux_vm::Engine::run(&Interpreter::new(p), &[], 0),
        Verdict::Accept(1)
    );
    insns.insert(0, Insn::mov(0, 1));
    let e = verify(&encode(&insns, &[])).unwrap_err();
    assert_eq!(e.pc, 0);
    let over = format!("{} instructions", MAX_INSNS + 1);
    assert!(e.to_string().contains(&over), "{e}");
}

#[test]
fn a_chain_of_max_insns_forward_jumps_runs_every_step() {
    // The longest possible run: every instruction executes once.
    let mut insns = vec![Insn::mov(0, 0)];
    while insns.len() < MAX_INSNS - 1 {
        insns.push(Insn::alu_k(Opcode::AddK, 0, 1));
    }
    insns.push(Insn::accept_x(0));
    let p = verify(&encode(&insns, &[])).unwrap();
    assert_eq!(
        netmux_vm::Engine::run(&Interpreter::new(p), &[], 0),
        Verdict::Accept(MAX_INSNS as u32 - 2)
    );
}
