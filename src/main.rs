//! The `netmux` command: one binary, a subcommand group per area (see [`cmd`]).

mod cmd;

fn main() -> std::process::ExitCode {
    cmd::main()
}
