//! The receive filter of a port binding, built directly as VM instructions.
//!
//! netd installs, for every port it hands out, the filter
//! `ether dst MAC and ip|ip6 dst host A and tcp|udp|sctp dst port P`. [`program`] builds that
//! filter's program without the compiler, instruction for instruction what the compiler emits
//! for the expression (the compiler's tests pin the bytes, and its verdicts to libpcap's), so
//! that:
//!
//! - netd binds a port without compiling anything;
//! - the driver recognises the filter ([`is_port_filter`]) and confirms a table hit by
//!   comparing the destination MAC instead of running the program. With 1,024 queues this
//!   matters: each confirmation would otherwise call a different queue's native code, a cold
//!   instruction cache line per frame.
//!
//! Why the comparison is exact: the program accepts a frame iff every conjunct does (an `and`
//! chain stops at the first false test, and a load past the captured bytes rejects), i.e. iff
//! its first six bytes are the MAC and its key (see [`crate::key`]) is the binding's. The
//! table lookup established the key, so only the MAC remains.

use std::net::IpAddr;

use netmux_vm::{Insn, Opcode, Program};

use crate::key::Key;
use crate::program::Asm;

/// The program of `ether dst MAC and ip dst host A and PROTO dst port P` (IPv4) or its IPv6
/// form for an exact-address key, accepting with 1; `None` for an address-less key (netd
/// binds those with an expression of another shape).
pub fn program(key: &Key, mac: [u8; 6]) -> Option<Program> {
    Program::new(&insns(key, mac)?, &[]).ok()
}

/// The instructions of [`program`]`(key, mac)`, not yet verified.
fn insns(key: &Key, mac: [u8; 6]) -> Option<Vec<Insn>> {
    use Opcode::*;
    let (addr, protocol, port) = match *key {
        Key::V4 {
            protocol,
            addr,
            port,
        } => (IpAddr::V4(addr), protocol, port),
        Key::V6 {
            protocol,
            addr,
            port,
        } => (IpAddr::V6(addr), protocol, port),
        Key::AnyAddr { .. } => return None,
    };
    // The IPv6 form, the longer, has 28 instructions.
    let mut a = Asm::with_capacity(28);
    // A test and a jump to "reject" when it fails, as the compiler lays out an `and` chain.
    let test = |a: &mut Asm, load: Insn, value: u32| {
        a.push(load);
        a.push(Insn::jmp_k(JeqK, 0, value, 1));
        a.jump(Insn::ja(0), "reject");
    };
    let mac_low = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    let mac_high = u32::from(u16::from_be_bytes([mac[0], mac[1]]));
    test(&mut a, Insn::ldw(0, 2), mac_low);
    test(&mut a, Insn::ldh(0, 0), mac_high);
    match addr {
        IpAddr::V4(addr) => {
            test(&mut a, Insn::ldh(0, 12), 0x0800);
            test(&mut a, Insn::ldw(0, 30), u32::from(addr));
            test(&mut a, Insn::ldb(0, 23), u32::from(protocol));
            a.push(Insn::ldh(0, 20));
            a.jump(Insn::jmp_k(JsetK, 0, 0x1fff, 0), "reject");
            a.push(Insn::ldb(0, 14));
            a.push(Insn::alu_k(AndK, 0, 0xf));
            a.push(Insn::alu_k(LshK, 0, 2));
            a.push(Insn::ldh_ind(1, 0, 16));
            a.push(Insn::jmp_k(JeqK, 1, u32::from(port), 1));
            a.jump(Insn::ja(0), "reject");
            a.push(Insn::accept(1));
            a.label("reject");
            a.push(Insn::reject());
        }
        IpAddr::V6(addr) => {
            test(&mut a, Insn::ldh(0, 12), 0x86dd);
            for (i, word) in addr.octets().chunks_exact(4).enumerate() {
                let w = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
                test(&mut a, Insn::ldw(0, 38 + 4 * i as u32), w);
            }
            test(&mut a, Insn::ldb(0, 20), u32::from(protocol));
            a.push(Insn::ldh(0, 56));
            a.jump(Insn::jmp_k(JeqK, 0, u32::from(port), 0), "accept");
            a.label("reject");
            a.push(Insn::reject());
            a.label("accept");
            a.push(Insn::accept(1));
        }
    }
    Some(a.finish())
}

/// The destination MAC of `program` when it is byte for byte [`program`]`(key, mac)` for
/// some MAC: the MAC it tests first.
pub fn destination_mac(program: &Program, key: &Key) -> Option<[u8; 6]> {
    let insns = program.insns();
    let [c, d, e, f] = insns.get(1)?.k.to_be_bytes();
    let [a, b] = u16::try_from(insns.get(4)?.k).ok()?.to_be_bytes();
    let mac = [a, b, c, d, e, f];
    is_port_filter(program, key, mac).then_some(mac)
}

/// Whether `program` is byte for byte [`program`]`(key, mac)`. `program` was verified when it
/// was made, so the instructions it is compared with need not be.
pub fn is_port_filter(program: &Program, key: &Key, mac: [u8; 6]) -> bool {
    program.tables().is_empty() && insns(key, mac).is_some_and(|i| i == program.insns())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_form_fits_the_room_made_for_it() {
        let key = Key::V6 {
            protocol: 17,
            addr: "2001:db8::1".parse().unwrap(),
            port: 53,
        };
        let insns = insns(&key, [2, 0, 0, 0, 0, 1]).unwrap();
        assert_eq!(insns.len(), 28);
        assert!(is_port_filter(
            &program(&key, [2, 0, 0, 0, 0, 1]).unwrap(),
            &key,
            [2, 0, 0, 0, 0, 1]
        ));
    }

    #[test]
    fn the_destination_mac_of_a_port_filter_is_the_one_it_was_built_for() {
        let key = Key::V4 {
            protocol: 17,
            addr: "192.0.2.255".parse().unwrap(),
            port: 67,
        };
        for mac in [[0xff; 6], [1, 0, 0x5e, 1, 2, 3], [2, 0, 0, 0, 0, 1]] {
            let p = program(&key, mac).unwrap();
            assert_eq!(destination_mac(&p, &key), Some(mac));
            let other = Key::V4 {
                protocol: 17,
                addr: "192.0.2.255".parse().unwrap(),
                port: 68,
            };
            assert_eq!(destination_mac(&p, &other), None);
        }
        let not_a_port_filter = Program::new(&[Insn::accept(1)], &[]).unwrap();
        assert_eq!(destination_mac(&not_a_port_filter, &key), None);
    }
}
