//! F8: any bytes as netd's configuration file. The body is `netmux_fuzz_targets::config_file`,
//! which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::config_file(data));
