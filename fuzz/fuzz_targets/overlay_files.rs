//! F10: any bytes as an overlay mapping file (varpd files plugin).
//! The body is `netmux_fuzz_targets::overlay_files`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::overlay_files(data));
