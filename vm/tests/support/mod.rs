//! Loading the shared test vectors in `vm/testdata/*.toml`.
//!
//! Used by the VM's own adapters (`vm/tests/vectors.rs`, `vm/tests/verify_props.rs`) and by
//! the command-line tests at the workspace root (`tests/cli_vm.rs`, through `#[path]`), so the
//! format is read in exactly one place.
//!
//! # Format
//!
//! One `[[test]]` table per vector:
//!
//! ```toml
//! [[test]]
//! name = "ldh-past-end-rejects"   # unique over all files
//! program = """                    # assembly text for vm::asm, or:
//!     ldh r0, [59]
//!     accept r0
//! """
//! # bytes = "hex:4e4d5846..."      # the container itself, for container-level cases
//! frame = "hex:0011..."            # captured bytes (spaces and '_' between digits allowed)
//! wire_len = 1500                  # optional; the captured length when absent
//! expect = "reject"                # or "accept 7"
//! # error = "pc 0: backward jump"  # instead of frame/expect: verify must refuse, and its
//! # kind = "BackwardJump"          # Display must contain this; kind is optional
//! ```
#![allow(dead_code)] // each test crate uses a different part of it

use std::path::{Path, PathBuf};

use netmux_vm::Verdict;
use serde::Deserialize;

/// One vector file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    test: Vec<RawVector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVector {
    name: String,
    program: Option<String>,
    bytes: Option<String>,
    frame: Option<String>,
    wire_len: Option<u32>,
    expect: Option<String>,
    error: Option<String>,
    kind: Option<String>,
}

/// Where a vector's program comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Assembly text.
    Asm(String),
    /// The container bytes.
    Bytes(Vec<u8>),
}

/// What a vector expects.
#[derive(Clone, Debug)]
pub enum Expectation {
    /// The program verifies and gives `verdict` on the frame.
    Run {
        /// Captured bytes.
        frame: Vec<u8>,
        /// Length on the wire.
        wire_len: u32,
        /// The verdict every engine must give.
        verdict: Verdict,
    },
    /// The verifier refuses the program.
    Refused {
        /// A substring of the error's Display (`pc N: reason`).
        error: String,
        /// The `VerifyErrorKind` variant's name, when the vector names it.
        kind: Option<String>,
    },
}

/// One test vector.
#[derive(Clone, Debug)]
pub struct Vector {
    /// `file.toml: name`, for messages.
    pub id: String,
    /// The program.
    pub source: Source,
    /// What should happen.
    pub expect: Expectation,
}

impl Vector {
    /// The program's container bytes (assembled when given as text).
    pub fn container(&self) -> Vec<u8> {
        match &self.source {
            Source::Asm(text) => netmux_vm::asm::assemble(text)
                .unwrap_or_else(|e| panic!("{}: does not assemble: {e}", self.id)),
            Source::Bytes(b) => b.clone(),
        }
    }
}

/// Decodes `hex:` followed by hex digits, ignoring whitespace and `_`.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s
        .strip_prefix("hex:")
        .ok_or_else(|| format!("`{s}` does not start with `hex:`"))?
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'_')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(text, 16).map_err(|_| format!("`{text}` is not a hex byte"))
        })
        .collect()
}

fn parse_verdict(s: &str) -> Result<Verdict, String> {
    match s.split_whitespace().collect::<Vec<_>>()[..] {
        ["reject"] => Ok(Verdict::Reject),
        ["accept", n] => {
            let v = if let Some(hex) = n.strip_prefix("0x") {
                u32::from_str_radix(hex, 16)
            } else {
                n.parse()
            };
            v.map(Verdict::Accept)
                .map_err(|_| format!("`{n}` is not a 32-bit value"))
        }
        _ => Err(format!("expect = `{s}`: must be `reject` or `accept N`")),
    }
}

fn convert(file: &str, raw: RawVector) -> Result<Vector, String> {
    let id = format!("{file}: {}", raw.name);
    let fail = |m: String| format!("{id}: {m}");
    let source = match (raw.program, raw.bytes) {
        (Some(p), None) => Source::Asm(p),
        (None, Some(b)) => Source::Bytes(parse_hex(&b).map_err(fail)?),
        _ => return Err(fail("needs exactly one of `program` and `bytes`".into())),
    };
    let expect = match (raw.expect, raw.error) {
        (Some(e), None) => {
            if raw.kind.is_some() {
                return Err(fail("`kind` belongs to `error` vectors".into()));
            }
            let frame = parse_hex(
                &raw.frame
                    .ok_or_else(|| fail("`expect` needs a `frame`".into()))?,
            )
            .map_err(fail)?;
            let wire_len = raw.wire_len.unwrap_or(frame.len() as u32);
            Expectation::Run {
                frame,
                wire_len,
                verdict: parse_verdict(&e).map_err(fail)?,
            }
        }
        (None, Some(error)) => {
            if raw.frame.is_some() || raw.wire_len.is_some() {
                return Err(fail("a refused program has no frame to run".into()));
            }
            Expectation::Refused {
                error,
                kind: raw.kind,
            }
        }
        _ => return Err(fail("needs exactly one of `expect` and `error`".into())),
    };
    Ok(Vector { id, source, expect })
}

/// The files of `dir` ending in `.toml`, sorted.
pub fn vector_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Every vector in every `*.toml` file of `dir`. Panics with a clear message on a malformed
/// file or a name used twice.
pub fn load_dir(dir: &Path) -> Vec<Vector> {
    let mut all = Vec::new();
    let mut names = std::collections::HashSet::new();
    let files = vector_files(dir);
    assert!(!files.is_empty(), "no vector files in {}", dir.display());
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let parsed: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for raw in parsed.test {
            assert!(
                names.insert(raw.name.clone()),
                "{file}: vector name `{}` is used twice",
                raw.name
            );
            all.push(convert(&file, raw).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    all
}
