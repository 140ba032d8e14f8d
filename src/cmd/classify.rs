//! `netmux filter classify [--linear] [--explain] [--engine E] [--dialect D] RULES.txt
//! CAPTURE...`: which rules accept each frame, through the merged classifier the driver runs
//! (`netmux_classify::Classifier`).
//!
//! RULES.txt holds one pcap-filter expression per line. A rule's id is its line number,
//! counting from 1 and counting every line, so blank lines and comment lines (the first
//! non-blank character is `#`) are skipped but still take up their number: the rule on line 5
//! is rule 5 whatever is above it. For each frame of each capture, in order, the command
//! prints the ids of the rules that accept it, ascending and separated by one space, or `-`
//! when none does.
//!
//! Every rule is installed as the driver installs a filter, each key of a port binding as
//! its own table entry, under shared ownership: rules that overlap (the same port bound
//! twice, a tap and a binding) all receive the frame, where the driver would refuse the
//! second owner of a key. Every rule of the shape of a port binding (recognised by the
//! compiler, `netmux_compiler::binding`) goes into the classifier's hash tables; `--explain`
//! prints to stderr, for every rule, whether it went to a table (and as which binding) or
//! runs after them (and why). `--linear` computes the same answer with the reference scan,
//! running every rule one by one.
//!
//! A rule that does not compile exits with status 2, naming its line, with the compiler's
//! caret message on stderr. Captures are Ethernet (what the driver classifies), read one frame
//! at a time; `-` is standard input; a capture that ends in a broken record gets the lines of
//! every whole frame before it, then the error.

use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Args;
use netmux_classify::{Classifier, Classify, LinearScan, Ownership, RxFilter};
use netmux_compiler::binding::compile_rule_in;
use netmux_compiler::Dialect;
use netmux_proto::driver::{FilterId, QueueId, RxMode};
use netmux_vm::Strategy;
use netmux_wire::capture::{self, CaptureError, DLT_EN10MB};

use super::Refused;

/// Exit status for a rule that does not compile (as `netmux filter match` uses).
const EXIT_BAD_RULE: u8 = 2;

/// `netmux filter classify`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
RULES.txt: one pcap-filter expression per line. A rule's id is its line number from 1;
blank lines and lines starting with `#` are skipped but still count, so the rule on line 5
is rule 5. Output: one line per frame, captures and frames in order: the ids of the rules
that accept the frame, ascending and space-separated, or `-` for none. Overlapping rules
all receive the frame. A rule that does not compile exits with status 2.")]
pub struct ClassifyArgs {
    /// Scan every rule one by one instead of using the merged classifier.
    #[arg(long)]
    linear: bool,
    /// Print, on stderr, where each rule went: a hash table or the linear part.
    #[arg(long)]
    explain: bool,
    /// Which engine runs the programs: auto (the JIT when this build has it), interp or jit.
    #[arg(long, default_value = "auto", value_parser = super::args::engine)]
    engine: Strategy,
    /// The rules' language: pcap (tcpdump's) or bfdmux (Barrelfish's raw expressions).
    #[arg(long, default_value = "pcap", value_parser = super::args::dialect)]
    dialect: Dialect,
    /// One pcap-filter expression per line; the line number is the rule id.
    rules: PathBuf,
    /// pcap or pcapng captures of Ethernet frames; `-` is standard input.
    #[arg(required = true, value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
}

/// The largest rules file read: far more rules than any classifier holds (each is a filter
/// of its own), and a bound on what a wrong file (`/dev/zero`) makes the command read.
const MAX_RULES_FILE: u64 = 16 * 1024 * 1024;

/// A rules file's text; refused (status 1) when it is larger than [`MAX_RULES_FILE`] or not
/// UTF-8 (naming the line), an I/O error (status 2) when it cannot be read.
fn read_rules(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_RULES_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_RULES_FILE {
        return Err(Refused(format!(
            "{}: a rules file is at most {MAX_RULES_FILE} bytes",
            path.display()
        ))
        .into());
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        Refused(format!(
            "{}:{line}: the line is not UTF-8 text",
            path.display()
        ))
        .into()
    })
}

/// The rules of a rules file: (line number, expression) for every line that is not blank or
/// a comment.
pub fn parse_rules(text: &str) -> Vec<(u32, &str)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let t = line.trim();
            (!t.is_empty() && !t.starts_with('#'))
                .then(|| (u32::try_from(i + 1).unwrap_or(u32::MAX), t))
        })
        .collect()
}

impl ClassifyArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let text = read_rules(&self.rules)?;
        let mut rules = Vec::new();
        for (line, expr) in parse_rules(&text) {
            match compile_rule_in(expr, self.dialect) {
                Ok(rule) => rules.push((line, rule)),
                Err(e) => {
                    eprintln!("netmux: {}:{line}: {e}", self.rules.display());
                    return Ok(ExitCode::from(EXIT_BAD_RULE));
                }
            }
        }
        let rule_count = rules.len();
        let strategy = self.engine;
        let mut classifier: Box<dyn Classify> = if self.linear {
            Box::new(LinearScan::with_ownership(strategy, Ownership::Shared))
        } else {
            Box::new(Classifier::with_ownership(strategy, Ownership::Shared))
        };
        let mut next_filter = 0u64;
        for (line, rule) in rules {
            if self.explain && !self.linear {
                eprintln!("rule {line}: {}", rule.placement());
            }
            // A binding of several keys is one filter per key, as netd installs one per
            // address; a rule that is no binding is one filter run after the tables.
            for binding in rule.keys() {
                next_filter += 1;
                classifier.install(RxFilter {
                    queue: QueueId(line),
                    filter: FilterId(next_filter),
                    mode: RxMode::Owner,
                    binding,
                    program: rule.program.clone(),
                })?;
            }
        }
        if self.explain && self.linear {
            eprintln!("all {rule_count} rules: linear (--linear)");
        }
        print_classes(classifier.as_mut(), &self.captures)
    }
}

fn print_classes(classifier: &mut dyn Classify, captures: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut queues = Vec::new();
    let mut line = String::new();
    for path in captures {
        let mut reader = capture::open(path).map_err(|e| refuse(path, e))?;
        reader
            .info()
            .require_dlt(
                DLT_EN10MB,
                "the classifier reads Ethernet frames, as the driver does",
            )
            .map_err(|e| refuse(path, e))?;
        while let Some(frame) = reader.next_packet() {
            let frame = match frame {
                Ok(f) => f,
                // The lines so far stand, as `tcpdump -r` prints the frames before a fault.
                Err(e) => return finish(out.flush()).and(Err(refuse(path, e))),
            };
            queues.clear();
            classifier.classify(frame.data, frame.wire_len, &mut queues);
            line.clear();
            if queues.is_empty() {
                line.push('-');
            }
            for (i, q) in queues.iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                line.push_str(&q.0.to_string());
            }
            line.push('\n');
            if let Err(e) = out.write_all(line.as_bytes()) {
                return finish(Err(e));
            }
        }
    }
    finish(out.flush())
}

/// A capture that cannot be opened is an I/O error (status 2); one that is not a readable
/// Ethernet capture is refused (status 1).
fn refuse(path: &Path, e: CaptureError) -> anyhow::Error {
    match e {
        e @ CaptureError::Io { .. } => anyhow!(e),
        refused => Refused(format!("{}: {refused}", path.display())).into(),
    }
}

/// Ends quietly when the reader of the output has gone (`... | head`).
fn finish(result: std::io::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow!(e).context("cannot write the output")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_comment_lines_are_skipped_but_keep_their_numbers() {
        let rules = parse_rules("# dns\nudp dst port 53\n\n  tcp dst port 80  \n#x\nicmp");
        assert_eq!(
            rules,
            vec![(2, "udp dst port 53"), (4, "tcp dst port 80"), (6, "icmp")]
        );
    }
}
