//! F11: any bytes as frames received by netd's DHCPv4 client, in every state it reaches.
//! The body is `netmux_fuzz_targets::dhcp`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::dhcp(data));
