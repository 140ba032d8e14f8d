//! Times the compiler's phases: `cargo run --release -p netmux-compiler --example phases -- EXPR`.
use std::time::Instant;
fn main() {
    let expr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "udp dst port 53".into());
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        let _ = netmux_compiler::parser::parse(&expr);
    }
    println!("parse  {:?}", t.elapsed() / n);
    let ast = netmux_compiler::parser::parse(&expr).unwrap();
    let t = Instant::now();
    let mut temps = 0;
    for _ in 0..n {
        let mut g =
            netmux_compiler::gencode::Gen::new(netmux_compiler::gencode::GenConfig::ethernet());
        let c = g.generate(&ast).unwrap();
        let f = netmux_compiler::ir::lower(c, &g.prologue, g.temps);
        temps = f.blocks.len();
    }
    println!("gen+lower {:?} ({temps} blocks)", t.elapsed() / n);
    let mut g = netmux_compiler::gencode::Gen::new(netmux_compiler::gencode::GenConfig::ethernet());
    let c = g.generate(&ast).unwrap();
    let f = netmux_compiler::ir::lower(c, &g.prologue, g.temps);
    let t = Instant::now();
    let mut of = f.clone();
    for _ in 0..n {
        of = f.clone();
        netmux_compiler::opt::optimize(&mut of);
    }
    println!("opt    {:?} ({} blocks)", t.elapsed() / n, of.blocks.len());
    let t = Instant::now();
    for _ in 0..n {
        let _ = netmux_compiler::libpcap::Probe::new(&ast, &f, &g).refusal(&of);
    }
    println!("probe  {:?}", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        let _ = netmux_compiler::codegen::emit(&of, 1).unwrap();
    }
    println!("emit   {:?}", t.elapsed() / n);
    let insns = netmux_compiler::codegen::emit(&of, 1).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let _ = netmux_vm::Program::new(&insns, &[]).unwrap();
    }
    println!("verify {:?}", t.elapsed() / n);
}
