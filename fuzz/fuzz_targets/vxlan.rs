//! F9: any bytes as a received frame through VXLAN decapsulation.
//! The body is `netmux_fuzz_targets::vxlan`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::vxlan(data));
