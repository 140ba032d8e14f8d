//! Argument value parsers shared by several commands, so that `--engine` and `--dialect` take
//! the same values and say the same thing about a wrong one everywhere.

use netmux_compiler::Dialect;
use netmux_vm::Strategy;

/// `--engine auto|interp|jit`: which engine runs a program (`auto`: the JIT when this build
/// has it, else the interpreter; `jit` needs a build with the `jit` feature).
pub fn engine(s: &str) -> Result<Strategy, String> {
    s.parse()
}

/// `--dialect pcap|bfdmux`: tcpdump's pcap-filter language or Barrelfish's raw expressions.
pub fn dialect(s: &str) -> Result<Dialect, String> {
    match s {
        "pcap" => Ok(Dialect::Pcap),
        "bfdmux" => Ok(Dialect::Bfdmux),
        other => Err(format!(
            "unknown dialect `{other}` (expected pcap or bfdmux)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_dialects_are_named_as_the_help_says() {
        assert_eq!(engine("auto"), Ok(Strategy::Auto));
        assert_eq!(engine("interp"), Ok(Strategy::Interpreter));
        assert_eq!(engine("jit"), Ok(Strategy::Jit));
        assert!(engine("fast").unwrap_err().contains("auto, interp or jit"));
        assert_eq!(dialect("bfdmux"), Ok(Dialect::Bfdmux));
        assert!(dialect("bpf").unwrap_err().contains("pcap or bfdmux"));
    }
}
