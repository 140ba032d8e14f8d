//! The one generic classifier program: it reads a frame's key (see [`crate::key`]) with
//! exactly the loads of a port filter and looks it up in the three binding tables.
//!
//! The program never changes: adding or removing a binding edits a table entry in place
//! ([`netmux_vm::Engine::table_mut`]). It is hand-written with [`netmux_vm::Insn`] because
//! it must make exactly these loads and no others (the compiler's proof that a port filter
//! accepts exactly the frames whose key it binds depends on it); it is about 40 instructions
//! (20 on an IPv4 hit) and verified like any other program.
//!
//! ```text
//!         ldh  r0, [12]              ; ethertype (out of bounds: no key, reject)
//!         jeq  r0, 0x0800, ipv4
//!         jeq  r0, 0x86dd, ipv6
//!         accept 0                   ; no lookup made
//! ipv4:   ldh  r2, [20]              ; flags + fragment offset
//!         jset r2, 0x1fff, nokey     ; not the first fragment: no IPv4 binding matches
//!         ldb  r1, [23]              ; protocol
//!         ldb  r3, [14]; and r3, 0xf; lsh r3, 2     ; IHL * 4, unchecked as libpcap
//!         ldh  r4, [r3 + 16]         ; destination port
//!         lsh  r1, 16; or r1, r4     ; r1 = proto << 16 | port
//!         mov  r8, r1; or r8, 4 << 24; lookup r9, r8, t2; stm m1, r9   ; address-less
//!         jgt  r3, 15, addr          ; IHL >= 4: the address lies before the port
//!         ldlen r6; jgt r6, 33, addr; accept 2       ; address not captured
//! addr:   ldw  r2, [30]
//!         lookup r9, r1, t0;  stm m0, r9;  accept 3  ; key r1, r2
//! ipv6:   ldb  r1, [20];  ldh r4, [56]               ; next header, destination port
//!         lsh  r1, 16; or r1, r4
//!         mov  r8, r1; or r8, 6 << 24; lookup r9, r8, t2; stm m1, r9
//!         ldw  r2..r5, [38], [42], [46], [50]
//!         lookup r9, r1, t1;  stm m0, r9;  accept 3  ; key r1..r5
//! ```
//!
//! # Why a rejected run means "no binding matches"
//!
//! Every load the program makes on a frame is a load that every binding that could match the
//! frame also makes (ethertype; for IPv4 the fragment field, protocol, IHL and port, which
//! every IPv4 binding's `dst port` atom loads; for IPv6 next header and port likewise). So
//! when one of them is out of bounds, every binding that could match rejects the frame too.
//! The single exception is the IPv4 destination address, which only exact bindings load:
//! when IHL < 4 the port can lie inside the IPv4 header and be captured while the address is
//! not, and an address-less binding then matches. The program therefore never loads the
//! address without first checking that it was captured: the classifier runs it with the
//! *captured* length as the frame length (`ldlen`), which no binding reads for anything else.
//! (For IPv6 the port at 56..58 lies beyond the address at 38..54, so no check is needed.)
//!
//! # Result
//!
//! `accept F` where bit 0 of F says scratch slot [`SLOT_EXACT`] holds the exact-address
//! table's value and bit 1 says [`SLOT_ANY`] holds the address-less table's value; a value is
//! 0 for a miss, else an index the classifier maps to its queues. `reject` means no key.

use netmux_vm::table::Table;
use netmux_vm::{Insn, Opcode, Program};

use crate::key::{Family, Key, NET};

/// Table of IPv4 exact-address bindings: key `[proto << 16 | port, address]`.
pub const TABLE_V4: usize = 0;
/// Table of IPv6 exact-address bindings: key `[proto << 16 | port, a0, a1, a2, a3]`.
pub const TABLE_V6: usize = 1;
/// Table of address-less bindings: key `[family << 24 | proto << 16 | port]`.
pub const TABLE_ANY: usize = 2;
/// Scratch slot with the exact-address table's value.
pub const SLOT_EXACT: usize = 0;
/// Scratch slot with the address-less table's value.
pub const SLOT_ANY: usize = 1;
/// Accept flag: [`SLOT_EXACT`] was written.
pub const FLAG_EXACT: u32 = 1;
/// Accept flag: [`SLOT_ANY`] was written.
pub const FLAG_ANY: u32 = 2;
/// The value of a table miss.
pub const MISS: u32 = 0;

/// The network header's offset, as the program's load offsets take it.
const NET_K: u32 = NET as u32;
/// The IPv4 destination address must be captured up to here (`14 + 16 + 4`).
const V4_ADDR_END: u32 = NET_K + 20;

/// A key as the table it goes in and its words.
pub fn encode(key: &Key) -> (usize, Vec<u32>) {
    let pp = |protocol: u8, port: u16| u32::from(protocol) << 16 | u32::from(port);
    match *key {
        Key::V4 {
            protocol,
            addr,
            port,
        } => (TABLE_V4, vec![pp(protocol, port), u32::from(addr)]),
        Key::V6 {
            protocol,
            addr,
            port,
        } => {
            let o = addr.octets();
            let mut w = vec![pp(protocol, port)];
            w.extend(
                o.chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
            );
            (TABLE_V6, w)
        }
        Key::AnyAddr {
            family,
            protocol,
            port,
        } => (TABLE_ANY, vec![family.code() << 24 | pp(protocol, port)]),
    }
}

/// The classifier program with three empty tables whose misses return [`MISS`].
pub fn build() -> Program {
    use Opcode::*;
    let mut a = Asm::default();
    a.push(Insn::ldh(0, 12));
    a.jump(Insn::jmp_k(JeqK, 0, 0x0800, 0), "ipv4");
    a.jump(Insn::jmp_k(JeqK, 0, 0x86dd, 0), "ipv6");
    a.push(Insn::accept(0));

    a.label("ipv4");
    a.push(Insn::ldh(2, NET_K + 6));
    a.jump(Insn::jmp_k(JsetK, 2, 0x1fff, 0), "nokey");
    a.push(Insn::ldb(1, NET_K + 9));
    a.push(Insn::ldb(3, NET_K));
    a.push(Insn::alu_k(AndK, 3, 0xf));
    a.push(Insn::alu_k(LshK, 3, 2));
    a.push(Insn::ldh_ind(4, 3, NET_K + 2));
    proto_port(&mut a, Family::V4);
    // The address is captured if the port was and IHL >= 4; else ask the captured length.
    a.jump(Insn::jmp_k(JgtK, 3, 15, 0), "v4addr");
    a.push(Insn::ldlen(6));
    a.jump(Insn::jmp_k(JgtK, 6, V4_ADDR_END - 1, 0), "v4addr");
    a.push(Insn::accept(FLAG_ANY));
    a.label("v4addr");
    a.push(Insn::ldw(2, NET_K + 16));
    a.push(Insn::lookup(9, 1, TABLE_V4 as u32));
    a.push(Insn::stm(SLOT_EXACT as u32, 9));
    a.push(Insn::accept(FLAG_EXACT | FLAG_ANY));

    a.label("ipv6");
    a.push(Insn::ldb(1, NET_K + 6));
    a.push(Insn::ldh(4, NET_K + 42));
    proto_port(&mut a, Family::V6);
    for i in 0..4u8 {
        a.push(Insn::ldw(2 + i, NET_K + 24 + 4 * u32::from(i)));
    }
    a.push(Insn::lookup(9, 1, TABLE_V6 as u32));
    a.push(Insn::stm(SLOT_EXACT as u32, 9));
    a.push(Insn::accept(FLAG_EXACT | FLAG_ANY));

    a.label("nokey");
    a.push(Insn::accept(0));

    let insns = a.finish();
    let tables = [
        Table::new(2, MISS).expect("2-word keys are valid"),
        Table::new(5, MISS).expect("5-word keys are valid"),
        Table::new(1, MISS).expect("1-word keys are valid"),
    ];
    Program::new(&insns, &tables).expect("the classifier program verifies")
}

/// `r1 = r1 << 16 | r4` (protocol and port: the exact keys' first word), then the
/// address-less lookup of `family << 24 | r1` into [`SLOT_ANY`].
fn proto_port(a: &mut Asm, family: Family) {
    use Opcode::*;
    a.push(Insn::alu_k(LshK, 1, 16));
    a.push(Insn::alu_x(OrX, 1, 4));
    a.push(Insn::mov_x(8, 1));
    a.push(Insn::alu_k(OrK, 8, family.code() << 24));
    a.push(Insn::lookup(9, 8, TABLE_ANY as u32));
    a.push(Insn::stm(SLOT_ANY as u32, 9));
}

/// A tiny assembler with forward labels.
#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: Vec<(&'static str, usize)>,
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    /// An assembler with room for `insns` instructions and a few jumps and labels.
    pub(crate) fn with_capacity(insns: usize) -> Self {
        Self {
            insns: Vec::with_capacity(insns),
            labels: Vec::with_capacity(2),
            fixups: Vec::with_capacity(insns / 2),
        }
    }
    pub(crate) fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }
    pub(crate) fn jump(&mut self, i: Insn, to: &'static str) {
        self.fixups.push((self.insns.len(), to));
        self.insns.push(i);
    }
    pub(crate) fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.insns.len()));
    }
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for (at, name) in std::mem::take(&mut self.fixups) {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, pc)| *pc)
                .expect("every jump names a label");
            self.insns[at].off = i16::try_from(target - at - 1).expect("short program");
        }
        self.insns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program with the spec's keys of `frame` in its tables; returns which slots
    /// hit.
    fn program_hits(frame: &[u8]) -> (bool, bool) {
        let (exact, any) = crate::key::frame_keys(frame);
        let mut e = netmux_vm::Interpreter::new(build());
        use netmux_vm::Engine;
        for (key, v) in [(exact, 1), (any, 2)] {
            if let Some(k) = key {
                let (t, words) = encode(&k);
                e.table_mut(t).unwrap().insert(&words, v).unwrap();
            }
        }
        let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
        match e.run_with_scratch(frame, frame.len() as u32, &mut scratch) {
            netmux_vm::Verdict::Reject => (false, false),
            netmux_vm::Verdict::Accept(f) => (
                f & FLAG_EXACT != 0 && scratch[SLOT_EXACT] == 1,
                f & FLAG_ANY != 0 && scratch[SLOT_ANY] == 2,
            ),
        }
    }

    #[test]
    fn the_program_finds_exactly_the_keys_the_specification_reads() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut hits = 0;
        for _ in 0..8_000 {
            let len = (next() % 90) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 24 {
                let ty: u16 = if next() % 3 == 0 { 0x86dd } else { 0x0800 };
                f[12..14].copy_from_slice(&ty.to_be_bytes());
                f[14] = 0x40 | (next() % 8) as u8; // IHL 0..7, malformed ones included
                f[20] = [0u8, 0x20, 0x40, 0x10, 6, 17][(next() % 6) as usize];
                f[21] = if next() % 2 == 0 { 0 } else { f[21] };
                f[23] = [6u8, 17, 132, 1][(next() % 4) as usize];
            }
            let (exact, any) = crate::key::frame_keys(&f);
            assert_eq!(
                program_hits(&f),
                (exact.is_some(), any.is_some()),
                "{f:02x?}"
            );
            hits += usize::from(any.is_some());
        }
        assert!(hits > 400, "{hits}");
    }

    #[test]
    fn the_program_verifies_and_is_small() {
        let p = build();
        assert!(p.insns().len() < 50, "{}", p.insns().len());
        assert_eq!(p.tables().len(), 3);
    }
}
