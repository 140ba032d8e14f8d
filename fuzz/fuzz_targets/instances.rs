//! F14: instances on one link, the driver's shared table of port filters against reference
//! instances. The body is `netmux_fuzz_targets::instances`, which `cargo test` also runs on
//! every seed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmux_fuzz_targets::instances(data));
