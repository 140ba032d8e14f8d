//! The `netmux` command.
fn main() {}
