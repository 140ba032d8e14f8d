//! F6: text into the pcap-filter compiler. The body is
//! `netmux_fuzz_targets::filter_parse`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::filter_parse(data));
