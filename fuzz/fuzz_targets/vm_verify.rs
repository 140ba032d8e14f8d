//! F1: any bytes as a VM program. The body is
//! `netmux_fuzz_targets::vm_verify`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::vm_verify(data));
