//! Any bytes: `verify` answers Ok or Err and never panics; whatever it accepts runs on frames
//! taken from the rest of the input without panicking, and re-encodes to exactly its bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netmux_vm::{verify, Engine, Interpreter};

fuzz_target!(|data: &[u8]| {
    // The first two bytes split the input into a program and a frame.
    let split = data
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let rest = data.get(2..).unwrap_or_default();
    let (program, frame) = rest.split_at(split.min(rest.len()));
    if let Ok(p) = verify(program) {
        assert_eq!(
            p.to_bytes(),
            program,
            "a verified program re-encodes to its bytes"
        );
        let e = Interpreter::new(p);
        for wire_len in [0, frame.len() as u32, u32::MAX] {
            let _ = e.run(frame, wire_len);
        }
        for cut in [0, frame.len() / 2] {
            let _ = e.run(&frame[..cut], frame.len() as u32);
        }
    }
});
