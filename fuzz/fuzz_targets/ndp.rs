//! F12: any bytes as frames received by netd's SLAAC and neighbour discovery.
//! The body is `netmux_fuzz_targets::ndp`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::ndp(data));
