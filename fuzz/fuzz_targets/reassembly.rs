//! F3: fragment streams into the driver's reassembler. The body is
//! `netmux_fuzz_targets::reassembly`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::reassembly(data));
