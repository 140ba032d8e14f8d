//! F6: text into the pcap-filter compiler.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use netmux_compiler::{compile_with, Dialect, LinkType, Options, StaticResolver};
use netmux_vm::{Engine, Interpreter};

/// The deepest nesting tried: twice the parser's token limit, far past its nesting limit.
const MAX_NESTING: usize = 2 * netmux_compiler::parser::MAX_TOKENS;

#[derive(Debug, Arbitrary)]
struct Input {
    text: String,
    bfdmux: bool,
    optimize: bool,
    /// Wrap the text in this many levels of `(`...`)` or `not`.
    nesting: u32,
    parens: bool,
    link: u8,
    frame: Vec<u8>,
}

/// A few names of every kind (several addresses, IPv6, services, networks, ethers): fuzzing
/// never waits on the system's resolver.
fn names() -> &'static StaticResolver {
    static NAMES: OnceLock<StaticResolver> = OnceLock::new();
    NAMES.get_or_init(|| {
        StaticResolver::new()
            .with_hosts("127.0.0.1 localhost\n::1 localhost\n10.0.0.1 a\n10.0.0.2 a\nfe80::1 b\n")
            .with_services("http 80/tcp\ndomain 53/tcp\ndomain 53/udp\nsyslog 514/udp\n")
            .with_protocols("tcp 6\nudp 17\ngre 47\n")
            .with_networks("loopback 127\nnet10 10.0.0.0\n")
            .with_ethers("8:0:20:1:2:3 gw\n")
    })
}

/// Compiles; runs what compiles. Returns whether it compiled.
fn check(expr: &str, opts: &Options, frame: &[u8]) -> bool {
    match compile_with(expr, opts, names()).map(|c| c.program) {
        Ok(program) => {
            let e = Interpreter::new(program);
            let _ = e.run(frame, u32::try_from(frame.len()).unwrap_or(u32::MAX));
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// F6. Text into the pcap-filter compiler (both dialects, optimizer on and off, every link
/// layer, names from a fixed database): an error or
/// a verified program, never a panic, and nesting is bounded: a pcap expression wrapped in
/// more than `parser::MAX_NESTING` parentheses or `not`s is refused, whatever it is. A
/// program that compiles runs on a frame taken from the input without panicking.
pub fn filter_parse(data: &[u8]) {
    let Some(input) = crate::structured::<Input>(data) else {
        return;
    };
    let opts = Options {
        optimize: input.optimize,
        dialect: if input.bfdmux {
            Dialect::Bfdmux
        } else {
            Dialect::Pcap
        },
        link: LinkType::ALL[usize::from(input.link) % LinkType::ALL.len()],
        ..Options::default()
    };
    let _ = check(&input.text, &opts, &input.frame);
    let depth = input.nesting as usize % (MAX_NESTING + 1);
    if depth > 0 {
        let nested = if input.parens {
            format!("{}{}{}", "(".repeat(depth), input.text, ")".repeat(depth))
        } else {
            format!("{}{}", "not ".repeat(depth), input.text)
        };
        let compiled = check(&nested, &opts, &input.frame);
        if !input.bfdmux && depth > netmux_compiler::parser::MAX_NESTING {
            assert!(!compiled, "nesting of {depth} refused");
        }
    }
}
