//! The `netmux` subcommands, one module each.

pub mod filter;
