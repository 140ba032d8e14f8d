//! F4: bytes and descriptor counts against the IPC layer. The body is
//! `netmux_fuzz_targets::ipc_decode`, which `cargo test` also runs on every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::ipc_decode(data));
