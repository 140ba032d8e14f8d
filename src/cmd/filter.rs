//! `netmux filter`: compile pcap-filter expressions and run them over captures, as tcpdump does.
//!
//! * `netmux filter compile [-O0] [--link TYPE] [-o FILE.bin] 'EXPR'` prints the verified
//!   program as assembly (the text `netmux vm` assembles), preceded by what each name in the
//!   expression became (`; port http = 80/tcp`); `-o` also writes its bytecode container.
//!   `-O0` turns the optimizer off (the verdicts are libpcap's unoptimized ones).
//! * `netmux filter match [--engine E] 'EXPR' CAPTURE... [-w OUT.pcap]` prints one line per
//!   frame of each capture, in order: `1` if the filter accepts it, `0` if not; with `-w`, writes
//!   the accepted frames instead, as `tcpdump -r CAPTURE -w OUT.pcap 'EXPR'` does. The filter is
//!   compiled for each capture's link layer, as tcpdump compiles it for the file it reads. `-`
//!   is standard input. Captures are read one frame at a time (memory does not grow with the
//!   file); a capture that ends in a broken record gets the verdicts of every whole frame
//!   before it, then the error.
//! * Both take `--dialect bfdmux` for Barrelfish's raw expressions
//!   (`int16[12] == 0x0800 && int8[23] == 6`).
//!
//! Names (`host localhost`, `port http`) are looked up when the expression is compiled, in the
//! system's databases as libpcap looks them up.
//!
//! An expression that does not compile exits with status 2 and the error, with a caret under
//! the fault, on stderr. Otherwise the convention of [`super`] holds: a capture that cannot be
//! parsed is refused (status 1), a missing file or failed write is status 2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use netmux_compiler::{compile_with, Dialect, LinkType, Options, SystemResolver};
use netmux_vm::Strategy;
use netmux_wire::capture::{self, CaptureError, PcapHeader, PcapWriter};

use super::{Refused, Run};

/// Exit status for an expression that does not compile.
pub const EXIT_BAD_EXPRESSION: u8 = 2;

/// The limits `--help` states (the compiler's and the VM's, quoted so users can plan).
const LIMITS: &str = "\
Limits: an expression has at most 16,384 tokens (1,000 `udp port N or ...` terms take 4,000),
parentheses, `not`, brackets and unary minus nest at most 64 deep, one arithmetic expression has
at most 100 operators, and the program at most 16,384 VM instructions (1,000 such terms compile
to about 4,000). Names (`host localhost`, `port http`, `net loopback`, `ip proto gre`,
`ether host NAME`) are looked up when the expression is compiled: hosts through the system
resolver (every address of the name), the rest in /etc/services, /etc/protocols,
/etc/networks and /etc/ethers, as libpcap looks them up.";

/// `netmux filter ...`
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Compile an expression and print the program as assembly.
    #[command(after_long_help = LIMITS)]
    Compile {
        /// Optimization level: 1 (default) or 0 (`-O0`).
        #[arg(short = 'O', value_name = "LEVEL", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        opt_level: u8,
        /// Also write the program's bytecode (the container `netmux vm` reads) to this file.
        #[arg(short = 'o', value_name = "FILE.bin")]
        output: Option<PathBuf>,
        /// The expression language: pcap (tcpdump's) or bfdmux (Barrelfish's raw expressions).
        #[arg(long, default_value = "pcap", value_parser = super::args::dialect)]
        dialect: Dialect,
        /// The link layer of the frames: EN10MB (Ethernet), LINUX_SLL, LINUX_SLL2, RAW, IPV4
        /// or IPV6 (libpcap's names; a capture's own is used by `match`).
        #[arg(long, value_name = "TYPE", default_value = "EN10MB", value_parser = parse_link)]
        link: LinkType,
        /// The filter expression (pcap: an empty one accepts every frame, as in tcpdump); one
        /// that starts with `-` goes after `--` (`-- '-ip[8] < -60'`).
        expr: String,
    },
    /// Print 1 or 0 for every frame of each capture (whether the filter accepts it), or write
    /// the accepted frames to a new capture with `-w`.
    #[command(after_long_help = LIMITS)]
    Match {
        /// Which engine runs the program: auto (the JIT when this build has it), interp or jit.
        #[arg(long, default_value = "auto", value_parser = super::args::engine)]
        engine: Strategy,
        /// The expression language: pcap (tcpdump's) or bfdmux (Barrelfish's raw expressions).
        #[arg(long, default_value = "pcap", value_parser = super::args::dialect)]
        dialect: Dialect,
        /// Write the accepted frames to this pcap file (as `tcpdump -r IN -w OUT EXPR`: the
        /// capture's link type and snapshot length, microsecond timestamps) instead of
        /// printing verdicts. Takes one capture.
        #[arg(short = 'w', value_name = "OUT.pcap")]
        write: Option<PathBuf>,
        /// The filter expression (pcap: an empty one accepts every frame, as in tcpdump); one
        /// that starts with `-` goes after `--` (`-- '-ip[8] < -60'`).
        expr: String,
        /// pcap or pcapng captures (Ethernet, Linux cooked v1/v2, raw IP); `-` is standard
        /// input.
        #[arg(required = true)]
        captures: Vec<PathBuf>,
    },
    /// Classify every frame with a set of rules: print the ids of the rules that accept it.
    Classify(super::classify::ClassifyArgs),
}

fn parse_link(s: &str) -> Result<LinkType, String> {
    LinkType::ALL
        .into_iter()
        .find(|l| l.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            let names: Vec<&str> = LinkType::ALL.iter().map(|l| l.name()).collect();
            format!("unknown link type `{s}` (expected {})", names.join(", "))
        })
}

/// Compiles or reports the error as the command does (status 2, caret message on stderr).
fn compile_or_report(expr: &str, opts: &Options) -> Result<netmux_compiler::Compiled, ExitCode> {
    compile_with(expr, opts, &SystemResolver::new()).map_err(|e| {
        eprintln!("netmux: {e}");
        ExitCode::from(EXIT_BAD_EXPRESSION)
    })
}

impl Run for FilterCommand {
    fn run(self) -> anyhow::Result<ExitCode> {
        run(self)
    }
}

/// Runs `netmux filter ...`.
fn run(cmd: FilterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FilterCommand::Classify(args) => args.run(),
        FilterCommand::Compile {
            opt_level,
            output,
            dialect,
            link,
            expr,
        } => {
            let opts = Options {
                optimize: opt_level > 0,
                dialect,
                link,
                ..Options::default()
            };
            let compiled = match compile_or_report(&expr, &opts) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let bytes = compiled.program.to_bytes();
            let text = netmux_vm::asm::disassemble(&bytes)
                .map_err(|e| anyhow::anyhow!("disassembling the program: {}", e.0))?;
            let mut out = std::io::stdout().lock();
            // Assembly comments, so the output still assembles.
            for name in &compiled.names {
                writeln!(out, "; {name}")?;
            }
            out.write_all(text.as_bytes())?;
            if let Some(path) = output {
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        FilterCommand::Match {
            engine,
            dialect,
            write,
            expr,
            captures,
        } => {
            let mut matcher = Matcher {
                expr,
                dialect,
                engine,
                programs: Vec::new(),
            };
            match write {
                Some(out) => {
                    if captures.len() != 1 {
                        anyhow::bail!("-w takes one capture ({} given)", captures.len());
                    }
                    matcher.write_matching(&captures[0], &out)
                }
                None => matcher.print_verdicts(&captures),
            }
        }
    }
}

/// The expression, compiled once per link layer it meets.
struct Matcher {
    expr: String,
    dialect: Dialect,
    engine: Strategy,
    programs: Vec<(LinkType, Box<dyn netmux_vm::Engine>)>,
}

/// The exit status for a capture the command refused: status 1 with the reason, after what
/// was already written.
fn refuse(path: &Path, e: CaptureError) -> anyhow::Error {
    match e {
        e @ CaptureError::Io { .. } => anyhow::Error::new(e),
        e => Refused(format!("{}: {e}", path.display())).into(),
    }
}

impl Matcher {
    /// The engine for a capture of link type `dlt`, compiled on first use; `Err(code)` when
    /// the expression does not compile (reported).
    fn engine_for(&mut self, path: &Path, dlt: u32) -> anyhow::Result<Result<usize, ExitCode>> {
        let link = match LinkType::from_dlt(dlt) {
            Some(l) => l,
            // An empty expression accepts every frame of any link layer.
            None if self.expr.trim().is_empty() => LinkType::Ethernet,
            None => {
                return Err(Refused(format!(
                    "{}: link type {dlt} ({}) is not supported: netmux compiles filters for Ethernet, Linux cooked v1 and v2, and raw IP captures",
                    path.display(),
                    capture::dlt_name(dlt)
                ))
                .into())
            }
        };
        if let Some(i) = self.programs.iter().position(|(l, _)| *l == link) {
            return Ok(Ok(i));
        }
        let opts = Options {
            dialect: self.dialect,
            link,
            ..Options::default()
        };
        let compiled = match compile_or_report(&self.expr, &opts) {
            Ok(c) => c,
            Err(code) => return Ok(Err(code)),
        };
        let engine = netmux_vm::engine(compiled.program, self.engine)?;
        self.programs.push((link, engine));
        Ok(Ok(self.programs.len() - 1))
    }

    /// `1` or `0` per frame of every capture.
    fn print_verdicts(&mut self, captures: &[PathBuf]) -> anyhow::Result<ExitCode> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for path in captures {
            let mut reader = capture::open(path).map_err(|e| refuse(path, e))?;
            let index = match self.engine_for(path, reader.info().dlt)? {
                Ok(i) => i,
                Err(code) => return Ok(code),
            };
            let engine = &self.programs[index].1;
            while let Some(packet) = reader.next_packet() {
                let packet = match packet {
                    Ok(p) => p,
                    Err(e) => {
                        // The verdicts so far stand, as `tcpdump -r` prints the frames before
                        // a fault.
                        return finish(out.flush()).and(Err(refuse(path, e)));
                    }
                };
                let accepted = engine.run(packet.data, packet.wire_len).is_accept();
                if let Err(e) = out.write_all(if accepted { b"1\n" } else { b"0\n" }) {
                    return finish(Err(e));
                }
            }
        }
        finish(out.flush())
    }

    /// The accepted frames of `input` into `output`, as `tcpdump -r input -w output`.
    fn write_matching(&mut self, input: &Path, output: &Path) -> anyhow::Result<ExitCode> {
        let mut reader = capture::open(input).map_err(|e| refuse(input, e))?;
        let index = match self.engine_for(input, reader.info().dlt)? {
            Ok(i) => i,
            Err(code) => return Ok(code),
        };
        let engine = &self.programs[index].1;
        let file = std::fs::File::create(output)
            .with_context(|| format!("cannot create {}", output.display()))?;
        let header = PcapHeader::like(&reader.info());
        let mut writer = PcapWriter::with_header(std::io::BufWriter::new(file), header)
            .with_context(|| format!("cannot write {}", output.display()))?;
        let mut fault = None;
        while let Some(packet) = reader.next_packet() {
            let packet = match packet {
                Ok(p) => p,
                Err(e) => {
                    fault = Some(e);
                    break;
                }
            };
            if engine.run(packet.data, packet.wire_len).is_accept() {
                writer
                    .write_packet(&packet)
                    .with_context(|| format!("cannot write {}", output.display()))?;
            }
        }
        let written = writer.written();
        writer
            .finish()
            .with_context(|| format!("cannot write {}", output.display()))?;
        eprintln!(
            "netmux: {written} of {} frames written to {}",
            reader.frames_read(),
            output.display()
        );
        match fault {
            // The frames before the fault are in the output, as tcpdump leaves them.
            Some(e) => Err(refuse(input, e)),
            None => Ok(ExitCode::SUCCESS),
        }
    }
}

/// Ends quietly when the reader of the output has gone (`... | head`).
fn finish(result: std::io::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::anyhow!(e).context("cannot write the output")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: FilterCommand,
    }

    fn run_args(args: &[&str]) -> ExitCode {
        let cli = Cli::try_parse_from(std::iter::once("filter").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        run(cli.cmd).unwrap()
    }

    #[test]
    fn compile_writes_bytecode_that_verifies() {
        let dir = netmux_testkit::TempDir::new("netmux-filter");
        let out = dir.join("f.bin");
        let code = run_args(&[
            "compile",
            "-O0",
            "-o",
            out.to_str().unwrap(),
            "udp dst port 53",
        ]);
        assert_eq!(code, ExitCode::SUCCESS);
        let bytes = std::fs::read(&out).unwrap();
        assert!(netmux_vm::verify(&bytes).is_ok());
    }

    #[test]
    fn the_bfdmux_dialect_is_selectable() {
        assert_eq!(
            run_args(&["compile", "--dialect", "bfdmux", "int16[12] == 0x0800"]),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_args(&["compile", "--dialect", "bfdmux", "tcp"]),
            ExitCode::from(EXIT_BAD_EXPRESSION)
        );
    }

    #[test]
    fn link_types_are_named_as_libpcap_names_them() {
        assert_eq!(parse_link("linux_sll2"), Ok(LinkType::LinuxSll2));
        assert!(parse_link("ppp").unwrap_err().contains("EN10MB, LINUX_SLL"));
    }

    #[test]
    fn a_bad_expression_exits_with_status_2() {
        assert_eq!(
            run_args(&["compile", "tcp port 65536"]),
            ExitCode::from(EXIT_BAD_EXPRESSION)
        );
    }

    #[test]
    fn match_reports_unreadable_and_refused_captures() {
        let dir = netmux_testkit::TempDir::new("netmux-match");
        let cli = Cli::try_parse_from(["filter", "match", "tcp", "/nonexistent.pcap"]).unwrap();
        let err = run(cli.cmd).unwrap_err();
        assert!(err.downcast_ref::<Refused>().is_none(), "{err}");
        let garbage = dir.join("garbage.pcap");
        std::fs::write(&garbage, b"not a capture").unwrap();
        let cli =
            Cli::try_parse_from(["filter", "match", "tcp", garbage.to_str().unwrap()]).unwrap();
        let err = run(cli.cmd).unwrap_err();
        assert!(err.downcast_ref::<Refused>().is_some(), "{err}");
    }
}
