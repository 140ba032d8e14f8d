//! The bodies of netmux's fuzz targets, with their models and input generators.
//!
//! Each target is one function of any bytes that panics when netmux breaks a promise of
//! RELIABILITY.md (F1-F10) and returns otherwise. Two callers run them:
//!
//! * the cargo-fuzz crate in `fuzz/` (its own workspace, nightly, sanitizers), where each file
//!   of `fuzz/fuzz_targets/` is one line calling its function here (`scripts/fuzz SECONDS`);
//! * `cargo test`: `tests/seeds.rs` replays every committed input of `fuzz/seeds/<target>/`
//!   (and `fuzz/artifacts/<target>/`, when a run left crash inputs there) through the same
//!   function, so a crash input committed as a seed stays fixed.
//!
//! Targets that take structured input decode the bytes as libFuzzer's
//! `fuzz_target!(|input: T| ..)` does ([`structured`]), so a committed input means the same
//! thing to the fuzzer and to the test.
//!
//! [`gen`] holds the random rule and frame generator of the classifier target, shared with the
//! classifier equivalence tests of this crate.

#![deny(unsafe_code)]

use arbitrary::{Arbitrary, Unstructured};

mod classifier;
mod config_file;
mod filter_parse;
pub mod gen;
mod ipc_decode;
mod overlay;
mod reassembly;
mod vm;

pub use classifier::classifier;
pub use config_file::config_file;
pub use filter_parse::filter_parse;
pub use ipc_decode::ipc_decode;
pub use overlay::{overlay_files, vxlan};
pub use reassembly::reassembly;
pub use vm::{vm_differential, vm_roundtrip, vm_verify};

/// A fuzz target: any bytes in; a panic means a broken promise.
pub type Target = fn(&[u8]);

/// Every target: its name (the file `fuzz/fuzz_targets/NAME.rs` and the seed directory
/// `fuzz/seeds/NAME/`) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("classifier", classifier),
    ("config_file", config_file),
    ("filter_parse", filter_parse),
    ("ipc_decode", ipc_decode),
    ("overlay_files", overlay_files),
    ("reassembly", reassembly),
    ("vm_differential", vm_differential),
    ("vm_roundtrip", vm_roundtrip),
    ("vm_verify", vm_verify),
    ("vxlan", vxlan),
];

/// `data` as a `T`, decoded exactly as libFuzzer's typed `fuzz_target!` decodes it: `None`
/// (the input is skipped) when it is shorter than `T`'s smallest encoding or does not decode.
pub fn structured<T: for<'a> Arbitrary<'a>>(data: &[u8]) -> Option<T> {
    if data.len() < T::size_hint(0).0 {
        return None;
    }
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}
