//! The bfdmux dialect: C precedence and associativity, decimal and hex numbers, signed and
//! unsigned comparisons, short-circuit logic, errors with a caret.

use netmux_compiler::{compile, Dialect, Options};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_vm::interp;

/// The verdict with the optimizer on, checked equal to the verdict with it off.
fn eval(expr: &str, frame: &[u8]) -> bool {
    let run = |optimize| {
        let opts = Options {
            optimize,
            dialect: Dialect::Bfdmux,
            ..Options::default()
        };
        let p = compile(expr, &opts).unwrap_or_else(|e| panic!("{e}"));
        interp::run(&p, frame, frame.len() as u32, &mut [0; 16]).is_accept()
    };
    let (on, off) = (run(true), run(false));
    assert_eq!(on, off, "the optimizer changed the verdict of {expr}");
    on
}

fn tcp_frame() -> Vec<u8> {
    FrameBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ethertype(0x0800)
        .ipv4(Ipv4::new([10, 0, 0, 1], [10, 0, 0, 2], 6))
        .tcp(80, 1024, 2)
        .finish()
        .data
}

#[test]
fn barrelfish_style_filters_match_frames() {
    let f = tcp_frame();
    assert!(eval("int16[12] == 0x0800 && int8[23] == 6", &f));
    assert!(!eval("int16[12] == 0x0800 && int8[23] == 17", &f));
    assert!(eval("int32[26] == 0x0a000001", &f));
}

#[test]
fn arithmetic_associates_left_with_c_precedence() {
    let f = tcp_frame();
    assert!(eval("10-3-2==5", &f));
    assert!(eval("2+3*4==14", &f));
    assert!(eval("100/10/5==2", &f));
    assert!(eval("1|2^3&1 == 3", &f)); // == binds tighter than & ^ |: 1|(2^(3&(1==3)))
    assert!(eval("(1|2^3&1) == 3", &f));
    assert!(eval("7%4==3 && ~0 == 0xffffffff", &f));
}

#[test]
fn numbers_are_decimal_or_hex_never_octal_and_may_be_negative() {
    let f = tcp_frame();
    assert!(eval("010 == 10", &f));
    assert!(eval("0x10 == 16", &f));
    assert!(eval("-1 == 0xffffffff", &f));
    assert!(eval("-1 < 0", &f), "signed");
    assert!(eval("-1 } 0", &f), "unsigned greater");
    assert!(eval(
        "-5 <= -5 && -4 > -5 && 3 >= 3 && 2 { 3 && 3 {= 3 && 4 }= 4",
        &f
    ));
}

#[test]
fn logic_short_circuits_and_booleans_are_numbers() {
    let f = tcp_frame();
    assert!(eval("int8[0] == 2 || int8[9999] == 1", &f));
    assert!(!eval("int8[0] == 3 && int8[9999] == 1", &f));
    assert!(!eval("int8[9999] == 1", &f), "out of bounds rejects");
    assert!(eval("(1 == 1) + (2 == 2) == 2", &f));
    assert!(eval("!(int8[23] == 17)", &f));
    assert!(eval("(0 || 5) == 1 && (3 && 0) == 0 && !0 == 1", &f));
    assert!(!eval("0", &f));
    assert!(eval("int8[23]", &f));
}

#[test]
fn bad_expressions_are_errors_with_a_caret() {
    let opts = Options {
        dialect: Dialect::Bfdmux,
        ..Options::default()
    };
    for (bad, at) in [
        ("int16[12] == ", 13),
        ("int12[0] == 1", 0),
        ("1 / 0", 2),
        ("(1 == 1", 7),
        ("08x == 1", 0),
        ("1 $ 2", 2),
    ] {
        let e = compile(bad, &opts).unwrap_err();
        assert_eq!(e.span.start, at, "{bad}: {e}");
        assert!(e.to_string().lines().nth(2).unwrap().contains('^'));
    }
}
