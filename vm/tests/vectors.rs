//! Runs the shared test vectors (`vm/testdata/*.toml`) through every engine in this build.
//!
//! One adapter per engine, as regex-automata does it: the interpreter always, the JIT when the
//! `jit` feature is on; an engine that cannot run here is named with the reason, never skipped
//! silently. Besides verdicts, every vector program must round-trip through the disassembler
//! and assembler byte for byte, every verified one must re-encode to its bytes, every
//! [`VerifyErrorKind`] must have a vector, and every opcode must be exercised by a vector that
//! runs.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use netmux_vm::isa::NUM_SLOTS;
use netmux_vm::{asm, engine, verify, Opcode, Strategy, Verdict, VerifyErrorKind};
use support::{Expectation, Vector};

fn vectors() -> Vec<Vector> {
    support::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"))
}

/// An engine the vectors run on, or the reason it cannot run in this build.
struct EngineUnderTest {
    name: &'static str,
    strategy: Strategy,
    unavailable: Option<&'static str>,
}

/// Every engine. Add a row for a new engine; its vectors then run (or it says why not).
fn engines() -> Vec<EngineUnderTest> {
    vec![
        EngineUnderTest {
            name: "interpreter",
            strategy: Strategy::Interpreter,
            unavailable: None,
        },
        EngineUnderTest {
            name: "jit",
            strategy: Strategy::Jit,
            unavailable: if cfg!(feature = "jit") {
                None
            } else {
                Some("built without the `jit` feature")
            },
        },
    ]
}

/// Generates the list of every [`VerifyErrorKind`] variant's name and an exhaustive match from
/// a variant to its name, from one list: a variant added to the verifier does not compile here
/// until it is listed, and once listed, `every_verify_error_kind_has_a_vector` fails until a
/// vector produces it.
macro_rules! verify_error_kinds {
    ($($name:ident),* $(,)?) => {
        const ALL_KINDS: &[&str] = &[$(stringify!($name)),*];
        fn kind_name(kind: &VerifyErrorKind) -> &'static str {
            match kind {
                $(VerifyErrorKind::$name { .. } => stringify!($name),)*
            }
        }
    };
}

verify_error_kinds!(
    TruncatedHeader,
    BadMagic,
    UnsupportedVersion,
    Empty,
    TooManyInstructions,
    TooManyTables,
    Truncated,
    TrailingBytes,
    BadKeyWidth,
    TooManyEntries,
    DuplicateKey,
    UnknownOpcode,
    UnusedFieldNotZero,
    BadSlot,
    BadTable,
    KeyPastRegisters,
    DivisionByZero,
    ShiftTooLarge,
    SelfJump,
    BackwardJump,
    JumpOutOfRange,
    FallsOffEnd,
    UninitializedRegister,
    UninitializedSlot,
);

#[test]
fn every_vector_gives_its_verdict_on_every_engine() {
    let vectors = vectors();
    let mut failures = Vec::new();
    let mut ran_on = Vec::new();
    for e in engines() {
        if let Some(reason) = e.unavailable {
            eprintln!("vectors: skipping engine `{}`: {reason}", e.name);
            continue;
        }
        let mut count = 0;
        for v in &vectors {
            let Expectation::Run {
                frame,
                wire_len,
                verdict,
            } = &v.expect
            else {
                continue;
            };
            let program = match verify(&v.container()) {
                Ok(p) => p,
                Err(err) => {
                    failures.push(format!("{}: does not verify: {err}", v.id));
                    continue;
                }
            };
            let runner = match engine(program, e.strategy) {
                Ok(r) => r,
                Err(err) => {
                    failures.push(format!("{} on {}: no engine: {err}", v.id, e.name));
                    continue;
                }
            };
            let got = runner.run(frame, *wire_len);
            if got != *verdict {
                failures.push(format!(
                    "{} on {}: expected {verdict}, got {got}",
                    v.id, e.name
                ));
            }
            // The verifier proves scratch is stored before it is loaded, so whatever an
            // earlier run left there cannot change a verdict.
            let mut dirty = [0xdead_beef_u32; NUM_SLOTS];
            let again = runner.run_with_scratch(frame, *wire_len, &mut dirty);
            if again != got {
                failures.push(format!(
                    "{} on {}: {got} with fresh scratch, {again} with leftover scratch",
                    v.id, e.name
                ));
            }
            count += 1;
        }
        eprintln!("vectors: engine `{}` ran {count} vectors", e.name);
        ran_on.push(e.name);
    }
    assert!(ran_on.contains(&"interpreter"), "the reference must run");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_engine_sees_table_updates_without_recompiling() {
    let source =
        "ldh r1, [12]\nlookup r0, r1, t0\naccept r0\n.table words=1 default=0\n0x800 -> 4\n";
    let ipv4 = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
    let arp = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x06];
    for e in engines() {
        if let Some(reason) = e.unavailable {
            eprintln!("table updates: skipping engine `{}`: {reason}", e.name);
            continue;
        }
        let program = verify(&asm::assemble(source).unwrap()).unwrap();
        let mut runner = engine(program, e.strategy).unwrap();
        assert_eq!(runner.run(&ipv4, 60), Verdict::Accept(4), "{}", e.name);
        assert_eq!(runner.run(&arp, 60), Verdict::Accept(0), "{}", e.name);
        {
            let mut t = runner.table_mut(0).expect("table 0");
            t.upsert(&[0x806], 9).unwrap();
            assert_eq!(t.upsert(&[0x800], 5).unwrap(), Some(4));
        }
        assert_eq!(runner.run(&ipv4, 60), Verdict::Accept(5), "{}", e.name);
        assert_eq!(runner.run(&arp, 60), Verdict::Accept(9), "{}", e.name);
        assert_eq!(runner.table_mut(0).unwrap().remove(&[0x800]), Some(5));
        assert_eq!(runner.run(&ipv4, 60), Verdict::Accept(0), "{}", e.name);
        assert!(runner.table_mut(1).is_none(), "{}", e.name);
    }
}

#[test]
fn every_refused_vector_is_refused_with_its_error() {
    let mut failures = Vec::new();
    for v in vectors() {
        let Expectation::Refused { error, kind } = &v.expect else {
            continue;
        };
        match verify(&v.container()) {
            Ok(_) => failures.push(format!("{}: verified, expected `{error}`", v.id)),
            Err(e) => {
                let shown = e.to_string();
                if !shown.contains(error.as_str()) {
                    failures.push(format!("{}: got `{shown}`, expected `{error}`", v.id));
                }
                if let Some(kind) = kind {
                    if kind_name(&e.kind) != kind {
                        failures.push(format!(
                            "{}: got kind {}, expected {kind}",
                            v.id,
                            kind_name(&e.kind)
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_verify_error_kind_has_a_vector() {
    let produced: BTreeSet<&str> = vectors()
        .iter()
        .filter(|v| matches!(v.expect, Expectation::Refused { .. }))
        .filter_map(|v| verify(&v.container()).err())
        .map(|e| kind_name(&e.kind))
        .collect();
    let missing: Vec<&&str> = ALL_KINDS
        .iter()
        .filter(|k| !produced.contains(**k))
        .collect();
    assert!(missing.is_empty(), "no vector for {missing:?}");
}

#[test]
fn every_opcode_is_exercised_by_a_vector_that_runs() {
    let mut used = BTreeSet::new();
    for v in vectors() {
        if let (Expectation::Run { .. }, Ok(p)) = (&v.expect, verify(&v.container())) {
            used.extend(p.insns().iter().map(|i| i.op.byte()));
        }
    }
    let missing: Vec<Opcode> = Opcode::ALL
        .iter()
        .copied()
        .filter(|op| !used.contains(&op.byte()))
        .collect();
    assert!(missing.is_empty(), "no running vector uses {missing:?}");
}

#[test]
fn every_vector_program_disassembles_and_reassembles_to_the_same_bytes() {
    let mut checked = 0;
    for v in vectors() {
        let bytes = v.container();
        let text = match asm::disassemble(&bytes) {
            Ok(text) => text,
            // Only containers that are not structurally complete may fail to disassemble;
            // the assembler never writes those.
            Err(e) => {
                assert!(
                    matches!(v.source, support::Source::Bytes(_)),
                    "{}: assembled program does not disassemble: {e}",
                    v.id
                );
                continue;
            }
        };
        let again = asm::assemble(&text)
            .unwrap_or_else(|e| panic!("{}: disassembly does not assemble: {e}\n{text}", v.id));
        assert_eq!(
            again, bytes,
            "{}: round trip changed the bytes:\n{text}",
            v.id
        );
        checked += 1;
    }
    assert!(checked > 100, "only {checked} programs round-tripped");
}

#[test]
fn every_verified_vector_program_re_encodes_to_its_bytes() {
    for v in vectors() {
        let bytes = v.container();
        if let Ok(p) = verify(&bytes) {
            assert_eq!(p.to_bytes(), bytes, "{}", v.id);
            assert_eq!(verify(&p.to_bytes()), Ok(p), "{}", v.id);
        }
    }
}

#[test]
fn the_vector_themes_are_all_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let names: Vec<String> = support::vector_files(&dir)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for theme in [
        "loads",
        "alu",
        "jumps",
        "scratch",
        "lookup",
        "verifier-rejections",
    ] {
        assert!(names.iter().any(|n| n == theme), "no {theme}.toml");
    }
}
