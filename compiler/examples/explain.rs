//! Debugging aid: `cargo run -p netmux-compiler --example explain -- [-O0] EXPR [HEXFRAME]`
//! prints netmux's IR and program next to libpcap's, and both verdicts on the frame.
use netmux_compiler::{compile, compile_ir, Options};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let optimize = args.first().map(String::as_str) != Some("-O0");
    if !optimize {
        args.remove(0);
    }
    let expr = args.first().cloned().unwrap_or_default();
    let frame: Vec<u8> = args
        .get(1)
        .map(|h| {
            (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let opts = Options {
        optimize,
        ..Options::default()
    };
    match compile_ir(&expr, &opts) {
        Ok(f) => println!("IR:\n{f}"),
        Err(e) => println!("netmux: {e}"),
    }
    if let Ok(p) = compile(&expr, &opts) {
        println!(
            "{}",
            netmux_vm::asm::disassemble(&p.to_bytes()).unwrap_or_default()
        );
        let mut scratch = [0; 16];
        let v = netmux_vm::interp::run(&p, &frame, frame.len() as u32, &mut scratch);
        println!("netmux: {v}");
    }
    for o in [false, true] {
        match netmux_testkit::BpfProgram::compile(&expr, o) {
            Ok(p) => {
                if o {
                    println!("libpcap -O1:\n{}", p.image());
                }
                println!(
                    "libpcap -O{}: {}",
                    u8::from(o),
                    p.run(&frame, frame.len() as u32)
                );
            }
            Err(e) => println!("libpcap -O{}: {e}", u8::from(o)),
        }
    }
}
