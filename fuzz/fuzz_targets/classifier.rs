//! F7: random rule sets and frames against the merged classifier. The body is
//! `netmux_fuzz_targets::classifier`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::classifier(data));
