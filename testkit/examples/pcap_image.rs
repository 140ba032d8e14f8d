//! Prints libpcap's code for an expression: `cargo run -p netmux-testkit --example pcap_image -- [-O0] EXPR`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let optimize = args.first().map(String::as_str) != Some("-O0");
    let expr = args
        .iter()
        .filter(|a| *a != "-O0")
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    match netmux_testkit::BpfProgram::compile(&expr, optimize) {
        Ok(p) => print!("{}", p.image()),
        Err(e) => {
            eprintln!("libpcap: {e}");
            std::process::exit(2);
        }
    }
}
