//! The JIT gives the interpreter's verdict, accept value and scratch contents on random
//! verified programs and random frames.
//!
//! Programs come from the structured generator (`netmux_vm::gen`), so nearly all of them
//! verify and they are deep; the test asserts that. Every run uses a new seed, printed at the
//! start and in every failure; `NETMUX_SEED=<seed>` replays a run ([`netmux_testkit::seed`]) and
//! `NETMUX_JIT_PROGRAMS=<n>` changes how many programs it generates (default 100,000).
#![cfg(all(feature = "jit", feature = "arbitrary"))]

use arbitrary::Unstructured;
use netmux_vm::gen::{self, GeneratedFrame};
use netmux_vm::isa::NUM_SLOTS;
use netmux_vm::jit::JitEngine;
use netmux_vm::{asm, interp, Engine, Program};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Programs per run (`NETMUX_JIT_PROGRAMS` changes it).
const DEFAULT_PROGRAMS: usize = 100_000;
/// Programs that share one set of random frames: frame generation is then amortised, and each
/// program still meets every frame shape.
const PROGRAMS_PER_FRAME_SET: usize = 16;
/// Random frames per set, besides the fixed empty and long ones.
const RANDOM_FRAMES: usize = 5;
/// Worker threads at most (CI machines have 2 cores).
const MAX_THREADS: usize = 4;
/// The least share of generated programs the verifier must accept, in per mille.
const MIN_PASS_PER_MILLE: usize = 990;

fn env_usize(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn frame_set(rng: &mut StdRng) -> Vec<GeneratedFrame> {
    let mut frames = vec![
        GeneratedFrame {
            bytes: Vec::new(),
            wire_len: 0,
        },
        GeneratedFrame {
            bytes: (0..1514).map(|_| rng.gen_range(0..4u8)).collect(),
            wire_len: 1514,
        },
    ];
    let mut data = vec![0u8; 8192];
    while frames.len() < RANDOM_FRAMES + 2 {
        rng.fill_bytes(&mut data);
        let mut u = Unstructured::new(&data);
        frames.push(gen::frame(&mut u).expect("frames are always made"));
    }
    frames
}

/// A frame cut right at (or one byte before) the end of one of the program's constant-offset
/// loads: the boundary of the JIT's bounds-check elimination.
fn boundary_frame(program: &Program, long: &GeneratedFrame, rng: &mut StdRng) -> GeneratedFrame {
    let ends: Vec<usize> = program
        .insns()
        .iter()
        .filter_map(|i| {
            let width = match i.op {
                netmux_vm::Opcode::LdAbsB => 1,
                netmux_vm::Opcode::LdAbsH => 2,
                netmux_vm::Opcode::LdAbsW => 4,
                _ => return None,
            };
            usize::try_from(i.k).ok()?.checked_add(width)
        })
        .filter(|&end| end <= long.bytes.len())
        .collect();
    let cut = if ends.is_empty() {
        rng.gen_range(0..64)
    } else {
        ends[rng.gen_range(0..ends.len())] - rng.gen_range(0..2usize)
    };
    let bytes = long.bytes[..cut.min(long.bytes.len())].to_vec();
    GeneratedFrame {
        wire_len: bytes.len() as u32,
        bytes,
    }
}

fn check(seed: u64, index: usize, program: &Program, jit: &JitEngine, frame: &GeneratedFrame) {
    let fill: u32 = 0x5a5a_0000 | index as u32 & 0xffff;
    let mut want_scratch = [fill; NUM_SLOTS];
    let mut got_scratch = [fill; NUM_SLOTS];
    let want = interp::run(program, &frame.bytes, frame.wire_len, &mut want_scratch);
    let got = jit.run_with_scratch(&frame.bytes, frame.wire_len, &mut got_scratch);
    if (want, want_scratch) != (got, got_scratch) {
        let text = asm::disassemble(&program.to_bytes()).unwrap_or_default();
        panic!(
            "JIT differs from the interpreter (NETMUX_SEED={seed}, program #{index})\n\
             interpreter: {want} scratch {want_scratch:x?}\n\
             jit:         {got} scratch {got_scratch:x?}\n\
             frame ({} captured, wire {}): {:02x?}\nprogram:\n{text}",
            frame.bytes.len(),
            frame.wire_len,
            frame.bytes
        );
    }
}

/// What one batch (or the whole run) saw.
#[derive(Default)]
struct Tally {
    generated: usize,
    verified: usize,
    insns: usize,
    accepts: usize,
    runs: usize,
    generating: Duration,
    compiling: Duration,
    running: Duration,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.generated += o.generated;
        self.verified += o.verified;
        self.insns += o.insns;
        self.accepts += o.accepts;
        self.runs += o.runs;
        self.generating += o.generating;
        self.compiling += o.compiling;
        self.running += o.running;
    }
}

/// Generates, compiles and compares the programs `first..first + count`, all on one frame set.
/// Everything is derived from `(seed, first)`, so a failure replays whatever the threading.
fn batch(seed: u64, first: usize, count: usize) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed ^ (first as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let frames = frame_set(&mut rng);
    let mut data = vec![0u8; 4096];
    let mut t = Tally::default();
    for index in first..first + count {
        let t0 = Instant::now();
        rng.fill_bytes(&mut data);
        let generated = gen::program(&mut Unstructured::new(&data), gen::DEFAULT_MAX_INSNS)
            .expect("programs are always made");
        t.generated += 1;
        let Ok(program) = generated.verify() else {
            continue;
        };
        t.verified += 1;
        t.insns += program.insns().len();
        let t1 = Instant::now();
        let jit = JitEngine::new(program.clone()).unwrap_or_else(|e| {
            panic!("NETMUX_SEED={seed} program #{index} does not compile: {e}")
        });
        let t2 = Instant::now();
        t.generating += t1 - t0;
        t.compiling += t2 - t1;
        for frame in &frames {
            check(seed, index, &program, &jit, frame);
            t.accepts += usize::from(jit.run(&frame.bytes, frame.wire_len).is_accept());
            t.runs += 1;
        }
        let cut = boundary_frame(&program, &frames[1], &mut rng);
        check(seed, index, &program, &jit, &cut);
        t.running += t2.elapsed();
    }
    t
}

#[test]
fn jit_equals_the_interpreter_on_random_verified_programs_and_frames() {
    let seed = netmux_testkit::seed("jit_equality");
    let programs = env_usize("NETMUX_JIT_PROGRAMS").map_or(DEFAULT_PROGRAMS, |n| n as usize);
    eprintln!("jit_equality: NETMUX_JIT_PROGRAMS={programs}");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let first = next.fetch_add(PROGRAMS_PER_FRAME_SET, Ordering::Relaxed);
                if first >= programs {
                    break;
                }
                let t = batch(seed, first, PROGRAMS_PER_FRAME_SET.min(programs - first));
                total.lock().unwrap_or_else(|e| e.into_inner()).add(&t);
            });
        }
    });
    let t = total.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "jit_equality: {}/{} verified, {} instructions on average, {}/{} runs accepted; \
         {threads} threads: {:.1?} generating and verifying, {:.1?} compiling, \
         {:.1?} running and comparing",
        t.verified,
        t.generated,
        t.insns / t.verified.max(1),
        t.accepts,
        t.runs,
        t.generating,
        t.compiling,
        t.running
    );
    assert_eq!(t.generated, programs);
    assert!(
        t.verified * 1000 >= programs * MIN_PASS_PER_MILLE,
        "only {} of {programs} generated programs verified (seed {seed})",
        t.verified
    );
    // Both verdicts must be well represented, or the comparison says little.
    assert!(
        t.accepts * 20 >= t.runs && t.accepts * 20 <= t.runs * 19,
        "{}/{} accepted",
        t.accepts,
        t.runs
    );
}
