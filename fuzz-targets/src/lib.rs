//! The bodies of netmux's fuzz targets, with their models and input generators.
//!
//! Each target is one function of any bytes that panics when netmux breaks a promise of
//! RELIABILITY.md (F1-F13) and returns otherwise. Two callers run them:
//!
//! * the cargo-fuzz crate in `fuzz/` (its own workspace, nightly, sanitizers), where each file
//!   of `fuzz/fuzz_targets/` is one line calling its function here (`scripts/fuzz SECONDS`);
//! * `cargo test`: `tests/seeds.rs` replays every committed input of `fuzz/seeds/<target>/`
//!   (and `fuzz/artifacts/<target>/`, when a run left crash inputs there) through the same
//!   function, so a crash input committed as a seed stays fixed.
//!
//! Targets that take structured input decode the bytes as libFuzzer's
//! `fuzz_target!(|input: T| ..)` does ([`structured`]), so a committed input means the same
//! thing to the fuzzer and to the test. The targets that drive a protocol machine with frames
//! (`dhcp`, `ndp`) read a plain byte format of steps instead (`Step`: wait, deadline, frame,
//! aimed frame), so that their seeds hold real frames as they are on the wire.
//!
//! [`gen`] holds the random rule and frame generator of the classifier target, shared with the
//! classifier equivalence tests of this crate.

#![deny(unsafe_code)]

use arbitrary::{Arbitrary, Unstructured};

mod classifier;
mod config_file;
mod dhcp;
mod filter_parse;
mod firewall_rules;
pub mod gen;
mod instances;
mod ipc_decode;
mod ndp;
mod overlay;
mod reassembly;
mod vm;

pub use classifier::classifier;
pub use config_file::config_file;
pub use dhcp::dhcp;
pub use filter_parse::filter_parse;
pub use firewall_rules::firewall_rules;
pub use instances::instances;
pub use ipc_decode::ipc_decode;
pub use ndp::ndp;
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
    ("dhcp", dhcp),
    ("filter_parse", filter_parse),
    ("firewall_rules", firewall_rules),
    ("instances", instances),
    ("ipc_decode", ipc_decode),
    ("ndp", ndp),
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

/// One step of a frame-driven target (`dhcp`, `ndp`), in the byte format their seeds are
/// written in, so that a seed holds real frames as they are on the wire.
#[derive(Debug)]
enum Step<'a> {
    /// Byte 0, then a big-endian u16: this much time passes (the target says in what unit),
    /// then the machine polls.
    Wait(u16),
    /// Byte 1: time jumps to the machine's next deadline, then it polls.
    Deadline,
    /// Byte 2 (3: aimed), a big-endian u16 length, then that many bytes (fewer at the end):
    /// a received frame. An aimed frame has the fields that say whom it is for (the target
    /// says which) made the machine's.
    Frame { bytes: &'a [u8], aim: bool },
}

/// The steps `data` spells; an op byte's value modulo 4 says which.
fn steps(mut data: &[u8]) -> impl Iterator<Item = Step<'_>> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        let u16_at = |r: &[u8]| match r {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from(*a),
            [] => 0,
        };
        let step = match op % 4 {
            0 => {
                data = rest.get(2..).unwrap_or(&[]);
                Step::Wait(u16_at(rest))
            }
            1 => {
                data = rest;
                Step::Deadline
            }
            aim => {
                let len = usize::from(u16_at(rest));
                let body = rest.get(2..).unwrap_or(&[]);
                let (bytes, tail) = body.split_at(len.min(body.len()));
                data = tail;
                Step::Frame {
                    bytes,
                    aim: aim == 3,
                }
            }
        };
        Some(step)
    })
}
