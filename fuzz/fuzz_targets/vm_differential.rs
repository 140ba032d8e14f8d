//! F5: generated verified programs, the interpreter against the JIT. The body is
//! `netmux_fuzz_targets::vm_differential`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::vm_differential(data));
