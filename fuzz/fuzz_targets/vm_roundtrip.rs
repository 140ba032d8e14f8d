//! F2: instructions and containers, encoded and decoded both ways. The body is
//! `netmux_fuzz_targets::vm_roundtrip`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::vm_roundtrip(data));
