//! Why netmux `-O1` gives libpcap's unoptimized verdict on some truncated frames: libpcap's
//! optimizer changes libpcap's own verdict there, and netmux's optimizer never changes a
//! verdict. One expression of that class, pinned down on a crafted frame.

use netmux_compiler::{compile, Options};
use netmux_testkit::BpfProgram;
use netmux_vm::interp;

/// `net 2001:db8::/32` compares the first 32 bits of the address and masks the other three
/// words with 0. libpcap's optimizer folds `ld [26]; and #0; jeq #0` to "true" and then
/// deletes the load as a dead store, so its optimized program no longer needs bytes 26..38.
#[test]
fn libpcap_optimizer_accepts_a_frame_its_unoptimized_program_rejects_and_netmux_rejects_it() {
    let expr = "src net 2001:db8::/32";
    // Ethernet header with type IPv6, then the IPv6 header up to the end of the source
    // address's first word (bytes 22..26): 26 bytes captured of an 80-byte frame.
    let mut frame = vec![0u8; 26];
    frame[12..14].copy_from_slice(&[0x86, 0xdd]);
    frame[14] = 0x60;
    frame[22..26].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    let wire_len = 80;

    let o0 = BpfProgram::compile(expr, false).expect("libpcap compiles");
    let o1 = BpfProgram::compile(expr, true).expect("libpcap compiles");
    assert!(
        !o0.matches(&frame, wire_len),
        "libpcap -O0 loads [26] and rejects"
    );
    assert!(
        o1.matches(&frame, wire_len),
        "libpcap -O1 deleted that load and accepts"
    );

    let mut scratch = [0u32; 16];
    for optimize in [false, true] {
        let p = compile(
            expr,
            &Options {
                optimize,
                ..Options::default()
            },
        )
        .expect("netmux compiles");
        assert!(
            !interp::run(&p, &frame, wire_len, &mut scratch).is_accept(),
            "netmux -O{} keeps the load's verdict",
            u8::from(optimize)
        );
    }
    // On the whole frame, everyone accepts.
    let mut full = frame.clone();
    full.resize(80, 0);
    assert!(o0.matches(&full, wire_len) && o1.matches(&full, wire_len));
    let p = compile(expr, &Options::default()).expect("netmux compiles");
    assert!(interp::run(&p, &full, wire_len, &mut scratch).is_accept());
}
