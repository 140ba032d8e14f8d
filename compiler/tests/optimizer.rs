//! What the optimizer removes, checked on the programs it makes: the redundant loads and
//! computations libpcap's value numbering removes are gone from ours too.

use netmux_compiler::{compile, Options};
use netmux_vm::{Insn, Opcode};

fn insns(expr: &str) -> Vec<Insn> {
    compile(expr, &Options::default())
        .expect("compiles")
        .insns()
        .to_vec()
}

fn count(insns: &[Insn], op: Opcode, k: u32) -> usize {
    insns.iter().filter(|i| i.op == op && i.k == k).count()
}

#[test]
fn the_ethertype_is_loaded_once_when_ipv6_and_ipv4_are_both_tested() {
    let p = insns("udp dst port 53");
    assert_eq!(count(&p, Opcode::LdAbsH, 12), 1, "{p:?}");
}

#[test]
fn the_ipv4_header_length_is_computed_once_for_both_port_fields() {
    // `port 53` tests the source and the destination port after `4 * (ip[0] & 0xf)`.
    let p = insns("ip and udp and port 53");
    assert_eq!(count(&p, Opcode::LdAbsB, 14), 1, "{p:?}");
}

#[test]
fn unoptimized_programs_keep_every_load() {
    let p = compile(
        "udp dst port 53",
        &Options {
            optimize: false,
            ..Options::default()
        },
    )
    .expect("compiles");
    assert!(count(p.insns(), Opcode::LdAbsH, 12) >= 2);
}
