//! The instances fuzz target (`netmux_fuzz_targets::instances`: the driver's instances, with
//! every on-link instance's port filters in one shared table, against reference instances
//! that run every filter in turn) on random inputs, so that `cargo test` checks more of it
//! than the committed seeds reach. Seeds: a new one each run, printed; `NETMUX_SEED=N`
//! replays one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random inputs: a few seconds of a debug build.
const INPUTS: usize = 2000;
/// The longest input: far more than 64 operations take.
const MAX_INPUT: usize = 4096;

#[test]
fn shared_bindings_give_every_frame_the_receivers_of_the_reference_on_random_inputs() {
    let seed = netmux_testkit::seed(
        "shared_bindings_give_every_frame_the_receivers_of_the_reference_on_random_inputs",
    );
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..INPUTS {
        let mut input = vec![0; rng.gen_range(0..=MAX_INPUT)];
        rng.fill(&mut input[..]);
        netmux_fuzz_targets::instances(&input);
    }
}
