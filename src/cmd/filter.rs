//! `netmux filter`: compile pcap-filter expressions and run them over captures.
//!
//! * `netmux filter compile [-O0] [-o FILE.bin] 'EXPR'` prints the verified program as
//!   assembly (the text `netmux vm` assembles); `-o` also writes its bytecode container, which
//!   `netmux vm` reads. `-O0` turns the optimizer off (the verdicts are the same).
//! * `netmux filter match [--engine interp|jit|auto] 'EXPR' CAPTURE...` prints one line per
//!   frame of each capture, in order: `1` if the filter accepts it, `0` if not.
//! * Both take `--dialect bfdmux` for Barrelfish's raw expressions
//!   (`int16[12] == 0x0800 && int8[23] == 6`).
//!
//! An expression that does not compile exits with status 2 and the error, with a caret under
//! the fault, on stderr. Otherwise the convention of [`super`] holds: a
//! capture that cannot be parsed is refused (status 1), a missing file or failed write is
//! status 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use netmux_compiler::{compile, Dialect, Options};
use netmux_vm::Strategy;

use super::{Refused, Run};

/// Exit status for an expression that does not compile.
pub const EXIT_BAD_EXPRESSION: u8 = 2;

/// `netmux filter ...`
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Compile an expression and print the program as assembly.
    Compile {
        /// Optimization level: 1 (default) or 0 (`-O0`).
        #[arg(short = 'O', value_name = "LEVEL", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        opt_level: u8,
        /// Also write the program's bytecode (the container `netmux vm` reads) to this file.
        #[arg(short = 'o', value_name = "FILE.bin")]
        output: Option<PathBuf>,
        /// The expression language: pcap (tcpdump's) or bfdmux (Barrelfish's raw expressions).
        #[arg(long, default_value = "pcap", value_parser = parse_dialect)]
        dialect: Dialect,
        /// The filter expression (pcap: an empty one accepts every frame, as in tcpdump).
        expr: String,
    },
    /// Print 1 or 0 for every frame of each capture: whether the filter accepts it.
    Match {
        /// Which engine runs the program.
        #[arg(long, default_value = "auto", value_parser = parse_engine)]
        engine: Strategy,
        /// The expression language: pcap (tcpdump's) or bfdmux (Barrelfish's raw expressions).
        #[arg(long, default_value = "pcap", value_parser = parse_dialect)]
        dialect: Dialect,
        /// The filter expression (pcap: an empty one accepts every frame, as in tcpdump).
        expr: String,
        /// pcap or pcapng captures (Ethernet).
        #[arg(required = true)]
        captures: Vec<PathBuf>,
    },
    /// Classify every frame with a set of rules: print the ids of the rules that accept it.
    Classify(super::classify::ClassifyArgs),
}

fn parse_engine(s: &str) -> Result<Strategy, String> {
    s.parse()
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    match s {
        "pcap" => Ok(Dialect::Pcap),
        "bfdmux" => Ok(Dialect::Bfdmux),
        other => Err(format!(
            "unknown dialect `{other}` (expected pcap or bfdmux)"
        )),
    }
}

/// Compiles or reports the error as the command does (status 2, caret message on stderr).
fn compile_or_report(
    expr: &str,
    optimize: bool,
    dialect: Dialect,
) -> Result<netmux_vm::Program, ExitCode> {
    compile(
        expr,
        &Options {
            optimize,
            dialect,
            ..Options::default()
        },
    )
    .map_err(|e| {
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
            expr,
        } => {
            let program = match compile_or_report(&expr, opt_level > 0, dialect) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let bytes = program.to_bytes();
            let text = netmux_vm::asm::disassemble(&bytes)
                .map_err(|e| anyhow::anyhow!("disassembling the program: {}", e.0))?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            if let Some(path) = output {
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        FilterCommand::Match {
            engine,
            dialect,
            expr,
            captures,
        } => {
            let program = match compile_or_report(&expr, true, dialect) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let engine = netmux_vm::engine(program, engine)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for path in &captures {
                let frames = match netmux_wire::capture::read_file(path) {
                    Ok(f) => f,
                    // "cannot read PATH", then the system's reason.
                    Err(e @ netmux_wire::capture::CaptureError::Io { .. }) => {
                        return Err(anyhow::Error::new(e))
                    }
                    Err(e) => return Err(Refused(format!("{}: {e}", path.display())).into()),
                };
                for f in &frames {
                    let accepted = engine.run(&f.data, f.wire_len).is_accept();
                    writeln!(out, "{}", u8::from(accepted))?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
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
    fn a_bad_expression_exits_with_status_2() {
        assert_eq!(
            run_args(&["compile", "tcp port 65536"]),
            ExitCode::from(EXIT_BAD_EXPRESSION)
        );
        assert_eq!(
            run_args(&["match", "tcp and", "/nonexistent.pcap"]),
            ExitCode::from(EXIT_BAD_EXPRESSION)
        );
    }

    #[test]
    fn match_reads_captures_and_reports_unreadable_ones() {
        let dir = netmux_testkit::TempDir::new("netmux-match");
        let path = dir.join("c.pcap");
        let frames = vec![
            netmux_wire::capture::Frame::whole(Default::default(), vec![0xff; 60]),
            netmux_wire::capture::Frame::whole(Default::default(), vec![0x00; 60]),
        ];
        let buf = netmux_wire::capture::write_pcap(
            &frames,
            netmux_wire::capture::TimestampResolution::Micro,
        )
        .unwrap();
        std::fs::write(&path, &buf).unwrap();
        assert_eq!(
            run_args(&[
                "match",
                "--engine",
                "interp",
                "broadcast",
                path.to_str().unwrap()
            ]),
            ExitCode::SUCCESS
        );
        let cli = Cli::try_parse_from(["filter", "match", "tcp", "/nonexistent.pcap"]).unwrap();
        assert!(run(cli.cmd).is_err());
        let garbage = dir.join("garbage.pcap");
        std::fs::write(&garbage, b"not a capture").unwrap();
        let cli =
            Cli::try_parse_from(["filter", "match", "tcp", garbage.to_str().unwrap()]).unwrap();
        let err = run(cli.cmd).unwrap_err();
        assert!(err.downcast_ref::<Refused>().is_some(), "{err}");
    }
}
