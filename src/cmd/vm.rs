//! `netmux vm`: the filter VM's tools: assemble, disassemble, verify, run over captures.
//!
//! Every command that reads a program takes either the binary container (`.bin`, or any name)
//! or assembly text (a name ending in `.s`, assembled on the fly). `vm verify` answers every
//! input, however malformed, with `ok` (exit 0) or `pc N: reason` (exit 1; `line N: reason` for
//! assembly that does not assemble); only a file it cannot read is an error (exit 2).
//!
//! Files are read no further than they need to be: a container as far as its header says it
//! goes ([`netmux_vm::read_container`]), assembly text up to [`MAX_ASSEMBLY_TEXT`] and only
//! while it is text, so `/dev/zero` is answered at once. `vm asm` never writes over its input
//! and refuses a compiled program given as its source.

use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use netmux_vm::{asm, verify, Program, Strategy};
use netmux_wire::capture::{self, CaptureError};

use super::{Refused, Run};

/// The largest assembly source read: the biggest program (16,384 instructions and 16 tables of
/// a million entries) written out is several hundred megabytes, but no one writes that by
/// hand; 64 MiB is far beyond any real source and bounds what a wrong file costs.
const MAX_ASSEMBLY_TEXT: u64 = 64 * 1024 * 1024;

/// The syntax reminder shown by `netmux vm --help`.
const SYNTAX: &str = "\
Assembly syntax (one instruction per line, `;` or `#` starts a comment):
    ldh r0, [12]            load 2 bytes at offset 12 (also ldb: 1 byte, ldw: 4 bytes)
    ldb r1, [r2 + 14]       load at register + constant; out of bounds rejects the frame
    ldlen r3                the frame's length on the wire
    mov r0, 5 | mov r0, r1  also add sub mul div mod and or xor lsh rsh, and neg r0
    stm m0, r1 / ldm r1, m0 scratch slots m0..m15
    jeq r0, 0x800, label    also jgt jge jset, against a constant or a register; ja label
    lookup r4, r1, t0       r4 = table t0 at key r1..r1+W-1, or its default
    reject | accept 1 | accept r0
    label:                  jumps go forward only
    .table words=1 default=0
        0x800 -> 7          table entries follow the instructions: key words -> value";

/// `netmux vm ...`
#[derive(Subcommand)]
#[command(after_long_help = SYNTAX)]
pub enum VmCommand {
    /// Assemble a program from text into the binary container format.
    ///
    /// The assembler only encodes: it writes programs the verifier refuses too (useful for
    /// testing the verifier), and warns when the result does not verify.
    Asm {
        /// The assembly source (text; a compiled program is refused).
        file: PathBuf,
        /// Where to write the program [default: FILE with the extension .bin]; never the
        /// source itself.
        #[arg(short, long, value_name = "FILE.bin")]
        output: Option<PathBuf>,
    },
    /// Print a program as assembly text.
    ///
    /// `netmux vm asm` turns the text back into the very same bytes. Works on any structurally complete container, verified or not: instructions that do
    /// not decode are printed as `.raw` words.
    Disasm {
        /// The program (binary, or `.s` assembly).
        file: PathBuf,
    },
    /// Check a program with the verifier: `ok` (exit 0) or `pc N: reason` (exit 1).
    ///
    /// Any input whatever gets one of these two answers. A `.s` file is assembled first, and
    /// text that does not assemble is answered `line N: reason` with exit 1.
    Verify {
        /// The program (binary, or `.s` assembly).
        file: PathBuf,
    },
    /// Run a program over every frame of one or more captures.
    ///
    /// Captures are pcap or pcapng files (`-` for standard input), read one frame at a time;
    /// the program sees each frame's bytes whatever the link layer. Prints one line per frame,
    /// captures and frames in order: `0` when the program rejects the frame, else the value
    /// it accepts it with (a program that accepts with the value 0 also prints `0`). A capture
    /// that is cut short or malformed is refused (exit 1) after the lines of the frames before
    /// the fault.
    Run {
        /// Which engine runs the program: auto (the JIT when this build has it), interp or jit.
        #[arg(long, default_value = "auto", value_parser = super::args::engine)]
        engine: Strategy,
        /// The program (binary, or `.s` assembly).
        file: PathBuf,
        /// The captures to run it on.
        #[arg(required = true, value_name = "CAPTURE")]
        captures: Vec<PathBuf>,
    },
}

impl Run for VmCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            VmCommand::Asm { file, output } => assemble(&file, output),
            VmCommand::Disasm { file } => disassemble(&file),
            VmCommand::Verify { file } => verify_file(&file),
            VmCommand::Run {
                engine,
                file,
                captures,
            } => run(&file, engine, &captures),
        }
    }
}

/// Whether `path` names assembly text rather than a binary program.
fn is_assembly(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "s")
}

/// A program's container bytes, or why the assembly text does not assemble (or is no text).
/// `Err` only when the file cannot be read.
fn load(path: &Path) -> anyhow::Result<Result<Vec<u8>, String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !is_assembly(path) {
        let bytes = netmux_vm::read_container(std::io::BufReader::new(file))
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(Ok(bytes));
    }
    Ok(read_assembly(file, path)?.and_then(|text| asm::assemble(&text).map_err(|e| e.to_string())))
}

/// The text of an assembly source, or why it is not assembly text: a compiled program, a NUL
/// byte, bytes that are not UTF-8, more than [`MAX_ASSEMBLY_TEXT`]. Reads only as far as it
/// takes to tell. `Err` only when the file cannot be read.
fn read_assembly(file: std::fs::File, path: &Path) -> anyhow::Result<Result<String, String>> {
    use std::io::Read;
    let mut input = std::io::BufReader::new(file).take(MAX_ASSEMBLY_TEXT + 1);
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!(e).context(format!("cannot read {}", path.display()))),
        };
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.starts_with(&netmux_vm::program::MAGIC) {
            return Ok(Err(format!(
                "this is a compiled program, not assembly text (`netmux vm disasm {}` prints it as text)",
                path.display()
            )));
        }
        if let Some(at) = bytes.iter().position(|&b| b == 0) {
            return Ok(Err(format!(
                "this is not assembly text: a NUL byte at offset {at} (a binary file?)"
            )));
        }
        if bytes.len() as u64 > MAX_ASSEMBLY_TEXT {
            return Ok(Err(format!(
                "an assembly source is at most {MAX_ASSEMBLY_TEXT} bytes"
            )));
        }
    }
    Ok(String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        format!("line {line}: not UTF-8 text (a binary file?)")
    }))
}

/// Like [`load`], with assembly errors refused.
fn load_or_refuse(path: &Path) -> anyhow::Result<Vec<u8>> {
    load(path)?.map_err(|e| Refused(format!("{}: {e}", path.display())).into())
}

fn load_verified(path: &Path) -> anyhow::Result<Program> {
    let bytes = load_or_refuse(path)?;
    verify(&bytes).map_err(|e| Refused(format!("{}: {e}", path.display())).into())
}

/// Ends quietly when the reader of our output has gone (`netmux vm run ... | head`).
fn finish_output(result: std::io::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow!(e).context("cannot write the output")),
    }
}

fn assemble(file: &Path, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let source =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text =
        read_assembly(source, file)?.map_err(|e| Refused(format!("{}: {e}", file.display())))?;
    let bytes = asm::assemble(&text).map_err(|e| Refused(format!("{}: {e}", file.display())))?;
    let output = output.unwrap_or_else(|| file.with_extension("bin"));
    if same_file(file, &output) {
        return Err(Refused(format!(
            "{}: the output would overwrite the source; name another with -o",
            file.display()
        ))
        .into());
    }
    std::fs::write(&output, &bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    if let Err(e) = verify(&bytes) {
        eprintln!("netmux: warning: {} does not verify: {e}", output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `a` and `b` name the same file (the same path, or one reached by a link).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn disassemble(file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = load_or_refuse(file)?;
    let text = asm::disassemble(&bytes).map_err(|e| Refused(format!("{}: {e}", file.display())))?;
    finish_output(std::io::stdout().lock().write_all(text.as_bytes()))
}

fn verify_file(file: &Path) -> anyhow::Result<ExitCode> {
    let answer = match load(file)? {
        Err(asm_error) => Err(asm_error),
        Ok(bytes) => verify(&bytes).map(|_| ()).map_err(|e| e.to_string()),
    };
    let (line, code) = match answer {
        Ok(()) => ("ok".to_string(), ExitCode::SUCCESS),
        Err(reason) => (reason, ExitCode::from(1)),
    };
    finish_output(writeln!(std::io::stdout().lock(), "{line}"))?;
    Ok(code)
}

fn run(file: &Path, strategy: Strategy, captures: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let program = load_verified(file)?;
    let engine = netmux_vm::engine(program, strategy)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
    for path in captures {
        let refuse = |e: CaptureError| -> anyhow::Error {
            match e {
                e @ CaptureError::Io { .. } => anyhow!(e),
                e => Refused(format!("{}: {e}", path.display())).into(),
            }
        };
        let mut reader = capture::open(path).map_err(refuse)?;
        while let Some(frame) = reader.next_packet() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    // The verdicts so far stand, as `tcpdump -r` prints the frames before a
                    // fault.
                    finish_output(out.flush())?;
                    return Err(refuse(e));
                }
            };
            let verdict = engine.run_with_scratch(frame.data, frame.wire_len, &mut scratch);
            if let Err(e) = writeln!(out, "{}", verdict.as_u32()) {
                return finish_output(Err(e));
            }
        }
    }
    finish_output(out.flush())
}
