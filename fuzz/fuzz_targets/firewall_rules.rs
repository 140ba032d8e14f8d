//! F13: any text as an admin's firewall rule, read, written back and compiled.
//! The body is `netmux_fuzz_targets::firewall_rules`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::firewall_rules(data));
