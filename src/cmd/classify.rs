//! `netmux filter classify [--linear] [--explain] [--engine E] RULES.txt CAPTURE...`: which
//! rules accept each frame, through the merged classifier the driver runs
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
//! caret message on stderr.

use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use netmux_classify::{Classifier, Classify, LinearScan, Ownership, RxFilter};
use netmux_compiler::binding::compile_rule;
use netmux_proto::driver::{FilterId, QueueId, RxMode};
use netmux_vm::Strategy;
use netmux_wire::capture::{self, CaptureError};

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
    /// Which engine runs the programs.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    engine: EngineArg,
    /// One pcap-filter expression per line; the line number is the rule id.
    rules: PathBuf,
    /// pcap or pcapng captures of Ethernet frames.
    #[arg(required = true, value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
}

/// `--engine`'s values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineArg {
    /// The JIT when this build has it, else the interpreter.
    Auto,
    /// The reference interpreter.
    Interp,
    /// Native code (needs a build with the `jit` feature).
    Jit,
}

impl From<EngineArg> for Strategy {
    fn from(e: EngineArg) -> Strategy {
        match e {
            EngineArg::Auto => Strategy::Auto,
            EngineArg::Interp => Strategy::Interpreter,
            EngineArg::Jit => Strategy::Jit,
        }
    }
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
        let text = std::fs::read_to_string(&self.rules)
            .with_context(|| format!("cannot read {}", self.rules.display()))?;
        let mut rules = Vec::new();
        for (line, expr) in parse_rules(&text) {
            match compile_rule(expr) {
                Ok(rule) => rules.push((line, rule)),
                Err(e) => {
                    eprintln!("netmux: {}:{line}: {e}", self.rules.display());
                    return Ok(ExitCode::from(EXIT_BAD_RULE));
                }
            }
        }
        let rule_count = rules.len();
        let strategy = Strategy::from(self.engine);
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
        let frames = read_capture(path)?;
        for frame in &frames {
            queues.clear();
            classifier.classify(&frame.data, frame.wire_len, &mut queues);
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

fn read_capture(path: &Path) -> anyhow::Result<Vec<capture::Frame>> {
    capture::read_file(path).map_err(|e| match e {
        CaptureError::Io { .. } => anyhow!(e),
        refused => Refused(format!("{}: {refused}", path.display())).into(),
    })
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
