//! The `netmux vm` commands, run as the built binary.
//!
//! * The README's `filter match` example gives exactly the expected verdicts on the shipped sample.
//! * `examples/sample.pcap` is exactly what [`sample_frames`] makes (set `NETMUX_REGENERATE=1`
//!   to rewrite it after changing the generator).
//! * `vm verify` answers `ok`/exit 0 or `pc N: reason`/exit 1 for any file, and exit 2 only
//!   for a file it cannot read.
//! * `vm disasm` then `vm asm` reproduces the bytes of every shared test vector program.

#[path = "../vm/tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use netmux_testkit::TempDir;
use netmux_wire::capture::{self, Frame, TimestampResolution};

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn netmux(args: &[&str]) -> Output {
    Command::new(NETMUX)
        .args(args)
        .current_dir(root())
        .output()
        .expect("run netmux")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ----- The sample capture's generator -----

const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const HOST: [u8; 4] = [192, 0, 2, 10];
const RESOLVER: [u8; 4] = [192, 0, 2, 53];

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet; `options` must be a multiple of 4 bytes; `frag` is the flags/offset field.
fn ipv4(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A transport header with its checksum over the IPv4 pseudo-header.
fn transport(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    mut segment: Vec<u8>,
    sum_at: usize,
) -> Vec<u8> {
    let len = (segment.len() as u16).to_be_bytes();
    let pseudo = [&src[..], &dst[..], &[0, proto], &len[..]].concat();
    let sum = checksum(&[&pseudo, &segment]);
    segment[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
    segment
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    transport(17, src, dst, s, 6)
}

fn tcp_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // sequence number
    s.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
    s.extend_from_slice(&[0x50, 0x02]); // header length 20, SYN
    s.extend_from_slice(&65535u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    transport(6, src, dst, s, 16)
}

/// A DNS query for `name` of type `qtype`.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // class IN
    m
}

/// The answer to `query`: the same message with QR set and one A record, 192.0.2.80.
fn dns_answer(query: &[u8]) -> Vec<u8> {
    let mut m = query.to_vec();
    m[2] = 0x81; // QR, RD
    m[3] = 0x80; // RA
    m[7] = 1; // one answer
    m.extend_from_slice(&[
        0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, 80,
    ]);
    m
}

fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(
        0x0800,
        &ipv4(17, src, dst, &[], 0, &udp(src, dst, sport, dport, payload)),
    )
}

/// The frames of `examples/sample.pcap`, with what `examples/udp-dst-53.s` says of each.
fn sample_frames() -> Vec<(Frame, u32, &'static str)> {
    let query = dns_query(0x1a2b, "example.com", 1);
    let mut frames: Vec<(Vec<u8>, Option<usize>, u32, &str)> = vec![
        (
            udp_frame(HOST, RESOLVER, 53001, 53, &query),
            None,
            1,
            "DNS query (A)",
        ),
        (
            udp_frame(
                HOST,
                [198, 51, 100, 1],
                53002,
                53,
                &dns_query(0x1a2c, "netmux.example", 28),
            ),
            None,
            1,
            "DNS query (AAAA) to another resolver",
        ),
        (
            udp_frame(RESOLVER, HOST, 53, 53001, &dns_answer(&query)),
            None,
            0,
            "DNS answer: source port 53, destination port 53001",
        ),
        (
            udp_frame(HOST, [203, 0, 113, 123], 123, 123, &[0x23; 48]),
            None,
            0,
            "NTP",
        ),
        (
            udp_frame(
                HOST,
                [224, 0, 0, 251],
                5353,
                5353,
                &dns_query(0, "printer.local", 1),
            ),
            None,
            0,
            "mDNS, port 5353",
        ),
        (
            ethernet(
                0x0800,
                &ipv4(
                    6,
                    HOST,
                    RESOLVER,
                    &[],
                    0x4000,
                    &tcp_syn(HOST, RESOLVER, 40000, 53),
                ),
            ),
            None,
            0,
            "DNS over TCP (SYN to port 53)",
        ),
        (
            ethernet(
                0x0800,
                &ipv4(
                    6,
                    HOST,
                    [203, 0, 113, 80],
                    &[],
                    0x4000,
                    &tcp_syn(HOST, [203, 0, 113, 80], 40001, 80),
                ),
            ),
            None,
            0,
            "TCP SYN to port 80",
        ),
        (
            ethernet(
                0x0806,
                &[
                    &[0, 1, 8, 0, 6, 4, 0, 1][..],
                    &HOST_MAC,
                    &HOST,
                    &[0; 6],
                    &RESOLVER,
                    &[0; 18], // padding to the 60-byte minimum
                ]
                .concat(),
            ),
            None,
            0,
            "ARP request",
        ),
        (
            {
                // IPv6/UDP to port 53: the example matches IPv4 only.
                let src = [
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                ];
                let dst = [
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53,
                ];
                let mut u = Vec::new();
                u.extend_from_slice(&53003u16.to_be_bytes());
                u.extend_from_slice(&53u16.to_be_bytes());
                u.extend_from_slice(&((8 + query.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(&query);
                let pseudo = [
                    &src[..],
                    &dst[..],
                    &(u.len() as u32).to_be_bytes(),
                    &[0, 0, 0, 17],
                ]
                .concat();
                let sum = checksum(&[&pseudo, &u]);
                u[6..8].copy_from_slice(&sum.to_be_bytes());
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(u.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[17, 64]);
                ip.extend_from_slice(&src);
                ip.extend_from_slice(&dst);
                ip.extend_from_slice(&u);
                ethernet(0x86dd, &ip)
            },
            None,
            0,
            "IPv6 DNS query (the example is IPv4 only)",
        ),
        (
            {
                // IPv4 with a 4-byte Router Alert option: the port is 4 bytes further on.
                let options = [0x94, 0x04, 0x00, 0x00];
                let u = udp(HOST, RESOLVER, 53004, 53, &query);
                ethernet(0x0800, &ipv4(17, HOST, RESOLVER, &options, 0, &u))
            },
            None,
            1,
            "DNS query in an IPv4 packet with options (IHL 6)",
        ),
        (
            udp_frame(HOST, RESOLVER, 53005, 53, &query),
            Some(37),
            0,
            "DNS query cut to 37 bytes by the capture: half of the port is missing",
        ),
        (
            {
                // A later fragment whose payload has 0x0035 where a port would be.
                let payload = [0x00, 0x35, 0x00, 0x35, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
                ethernet(0x0800, &ipv4(17, HOST, RESOLVER, &[], 0x0001, &payload))
            },
            None,
            0,
            "non-first IPv4 fragment (offset 8) of a UDP datagram",
        ),
        (
            {
                // 802.1Q VLAN 10 in front of a DNS query.
                let inner = udp_frame(HOST, RESOLVER, 53006, 53, &query);
                let mut f = inner[..12].to_vec();
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
                f.extend_from_slice(&inner[12..]);
                f
            },
            None,
            0,
            "VLAN-tagged DNS query (the example does not look inside VLANs)",
        ),
        (
            {
                let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
                icmp.extend_from_slice(&[0x61; 32]);
                let sum = checksum(&[&icmp]);
                icmp[2..4].copy_from_slice(&sum.to_be_bytes());
                ethernet(0x0800, &ipv4(1, HOST, RESOLVER, &[], 0, &icmp))
            },
            None,
            0,
            "ICMP echo request",
        ),
    ];
    // Short frames are padded to Ethernet's 60-byte minimum, as a NIC would.
    for (data, _, _, _) in &mut frames {
        if data.len() < 60 {
            data.resize(60, 0);
        }
    }
    let start = Duration::from_secs(1_735_689_600); // 2025-01-01T00:00:00Z
    frames
        .into_iter()
        .enumerate()
        .map(|(i, (mut data, caplen, verdict, what))| {
            let wire_len = data.len() as u32;
            if let Some(c) = caplen {
                data.truncate(c);
            }
            let frame = Frame {
                timestamp: start + Duration::from_millis(250 * i as u64 + 7),
                data,
                wire_len,
            };
            (frame, verdict, what)
        })
        .collect()
}

#[test]
fn shipped_sample_pcap_is_what_the_generator_makes() {
    let frames: Vec<Frame> = sample_frames().into_iter().map(|(f, _, _)| f).collect();
    let bytes = capture::write_pcap(&frames, TimestampResolution::Micro).unwrap();
    let path = root().join("examples/sample.pcap");
    if std::env::var_os("NETMUX_REGENERATE").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let shipped =
        std::fs::read(&path).expect("examples/sample.pcap (NETMUX_REGENERATE=1 makes it)");
    assert!(
        shipped == bytes,
        "examples/sample.pcap differs from what the generator makes; run with NETMUX_REGENERATE=1"
    );
    assert_eq!(capture::read(&shipped).unwrap(), frames);
}

#[test]
fn readme_first_command_prints_one_verdict_per_sample_frame() {
    // The README's `cargo run --release -- vm run examples/udp-dst-53.s examples/sample.pcap`.
    let out = netmux(&["vm", "run", "examples/udp-dst-53.s", "examples/sample.pcap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: String = sample_frames()
        .iter()
        .map(|(_, verdict, _)| format!("{verdict}\n"))
        .collect();
    assert_eq!(stdout(&out), expected);
    assert_eq!(expected, "1\n1\n0\n0\n0\n0\n0\n0\n0\n1\n0\n0\n0\n0\n");
    // The interpreter, asked for by name, and the assembled binary say the same.
    let dir = TempDir::new("netmux-cli-vm-readme");
    let bin = dir.join("udp-dst-53.bin");
    let asm = netmux(&[
        "vm",
        "asm",
        "examples/udp-dst-53.s",
        "-o",
        bin.to_str().unwrap(),
    ]);
    assert!(asm.status.success(), "{}", stderr(&asm));
    assert!(
        stderr(&asm).is_empty(),
        "a verified program gives no warning"
    );
    let out = netmux(&[
        "vm",
        "run",
        "--engine",
        "interp",
        bin.to_str().unwrap(),
        "examples/sample.pcap",
        "examples/sample.pcap",
    ]);
    assert_eq!(stdout(&out), expected.repeat(2));
}

#[test]
fn verify_answers_ok_or_pc_reason_for_any_file() {
    let dir = TempDir::new("netmux-cli-vm-verify");
    let ok = netmux(&["vm", "verify", "examples/udp-dst-53.s"]);
    assert_eq!((ok.status.code(), stdout(&ok).as_str()), (Some(0), "ok\n"));

    let good = std::fs::read(root().join("examples/udp-dst-53.s")).unwrap();
    let good = netmux_vm::asm::assemble(std::str::from_utf8(&good).unwrap()).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("text".into(), b"hello, world\n".to_vec()),
        ("header-only".into(), good[..12].to_vec()),
        ("cut".into(), good[..good.len() - 3].to_vec()),
        ("trailing".into(), [&good[..], &[0]].concat()),
        (
            "pcap".into(),
            std::fs::read(root().join("examples/sample.pcap")).unwrap(),
        ),
    ];
    for i in 0..20 {
        let mut m = good.clone();
        let at = 12 + (rand() as usize % (m.len() - 12));
        m[at] ^= 1 << (rand() % 8);
        cases.push((format!("flip{i}"), m));
        cases.push((
            format!("noise{i}"),
            (0..rand() % 100).map(|_| rand() as u8).collect(),
        ));
    }
    for (name, bytes) in cases {
        let path = dir.join(format!("{name}.bin"));
        std::fs::write(&path, &bytes).unwrap();
        let out = netmux(&["vm", "verify", path.to_str().unwrap()]);
        let text = stdout(&out);
        match out.status.code() {
            Some(0) => assert_eq!(text, "ok\n", "{name}"),
            Some(1) => {
                assert!(
                    text.starts_with("pc ") && text.ends_with('\n'),
                    "{name}: {text}"
                );
                assert_eq!(text.lines().count(), 1, "{name}: {text}");
                assert_eq!(
                    text.trim_end(),
                    netmux_vm::verify(&bytes).unwrap_err().to_string()
                );
            }
            other => panic!("{name}: exit {other:?}, stderr {}", stderr(&out)),
        }
        assert!(!stderr(&out).contains("panicked"), "{name}");
    }
    let out = netmux(&["vm", "verify", "examples/udp-dst-53.s"]);
    assert_eq!(out.status.code(), Some(0));

    // Assembly text that does not assemble: `line N: reason`, exit 1.
    let bad = dir.join("bad.s");
    std::fs::write(&bad, "ldb r0, [0]\nfrobnicate r1\n").unwrap();
    let out = netmux(&["vm", "verify", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "line 2: unknown instruction `frobnicate`\n");

    // A file that is not there: an error message and exit 2.
    let out = netmux(&["vm", "verify", dir.join("missing.bin").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("missing.bin"), "{}", stderr(&out));
}

#[test]
fn disasm_then_asm_reproduces_every_vector_program_through_the_cli() {
    let dir = TempDir::new("netmux-cli-vm-round-trip");
    let vectors = support::load_dir(&root().join("vm/testdata"));
    let mut checked = 0;
    for (i, v) in vectors.iter().enumerate() {
        let bytes = v.container();
        let bin = dir.join(format!("{i}.bin"));
        std::fs::write(&bin, &bytes).unwrap();
        let dis = netmux(&["vm", "disasm", bin.to_str().unwrap()]);
        if netmux_vm::asm::disassemble(&bytes).is_err() {
            // Not structurally complete: refused with a reason, exit 1.
            assert_eq!(dis.status.code(), Some(1), "{}", v.id);
            assert!(stderr(&dis).contains("cannot disassemble"), "{}", v.id);
            continue;
        }
        assert!(dis.status.success(), "{}: {}", v.id, stderr(&dis));
        let text = dir.join(format!("{i}.s"));
        std::fs::write(&text, &dis.stdout).unwrap();
        let again = dir.join(format!("{i}-again.bin"));
        let out = netmux(&[
            "vm",
            "asm",
            text.to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}: {}", v.id, stderr(&out));
        assert_eq!(
            std::fs::read(&again).unwrap(),
            bytes,
            "{}:\n{}",
            v.id,
            stdout(&dis)
        );
        // Programs the verifier refuses are still written, with a warning.
        let refused = matches!(v.expect, support::Expectation::Refused { .. });
        assert_eq!(
            stderr(&out).contains("does not verify"),
            refused,
            "{}",
            v.id
        );
        checked += 1;
    }
    assert!(checked >= 200, "only {checked} programs round-tripped");
}

#[test]
fn run_reports_bad_programs_captures_and_engines() {
    let dir = TempDir::new("netmux-cli-vm-run");
    // A program that does not verify: refused, exit 1, nothing on stdout.
    let bad = dir.join("bad.s");
    std::fs::write(&bad, "accept r3\n").unwrap();
    let out = netmux(&["vm", "run", bad.to_str().unwrap(), "examples/sample.pcap"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("pc 0: r3 is read before it is written"),
        "{}",
        stderr(&out)
    );

    // A capture that is not one: refused, exit 1.
    let out = netmux(&[
        "vm",
        "run",
        "examples/udp-dst-53.s",
        "examples/udp-dst-53.s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a pcap or pcapng capture"),
        "{}",
        stderr(&out)
    );

    // A truncated capture: refused, naming the frame.
    let sample = std::fs::read(root().join("examples/sample.pcap")).unwrap();
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &sample[..sample.len() - 5]).unwrap();
    let out = netmux(&["vm", "run", "examples/udp-dst-53.s", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert!(stderr(&out).contains("frame 14"), "{}", stderr(&out));
    // The frames before the fault keep their verdicts.
    assert_eq!(stdout(&out), "1\n1\n0\n0\n0\n0\n0\n0\n0\n1\n0\n0\n0\n");

    // A capture that is not there: exit 2.
    let out = netmux(&[
        "vm",
        "run",
        "examples/udp-dst-53.s",
        "examples/missing.pcap",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot open examples/missing.pcap"),
        "{}",
        stderr(&out)
    );

    // No capture at all is a usage error.
    let out = netmux(&["vm", "run", "examples/udp-dst-53.s"]);
    assert_eq!(out.status.code(), Some(2));

    // The JIT in a build without it: a clear error, exit 2.
    let out = netmux(&[
        "vm",
        "run",
        "--engine",
        "jit",
        "examples/udp-dst-53.s",
        "examples/sample.pcap",
    ]);
    if cfg!(feature = "jit") {
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("without the jit feature"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn help_describes_every_vm_command() {
    let out = netmux(&["vm", "--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for word in ["asm", "disasm", "verify", "run", "Assembly syntax"] {
        assert!(text.contains(word), "{text}");
    }
}

#[test]
fn the_example_agrees_with_libpcap_on_every_sample_frame() {
    // libpcap (the oracle every netmux filter answers to) on `ip and udp dst port 53`.
    let oracle = netmux_testkit::oracle::compile("ip and udp dst port 53").unwrap();
    let text = std::fs::read_to_string(root().join("examples/udp-dst-53.s")).unwrap();
    let program = netmux_vm::verify(&netmux_vm::asm::assemble(&text).unwrap()).unwrap();
    let example = netmux_vm::Interpreter::new(program);
    for (frame, expected, what) in sample_frames() {
        let ours = netmux_vm::Engine::run(&example, &frame.data, frame.wire_len);
        let libpcap = oracle.matches(&frame.data, frame.wire_len);
        assert_eq!(ours.is_accept(), libpcap, "{what}");
        assert_eq!(ours.as_u32(), expected, "{what}");
    }
}

#[test]
#[ignore = "needs the conformance corpus"]
fn the_example_agrees_with_libpcap_on_every_corpus_frame() {
    let dir = std::env::var_os("NETMUX_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/conformance"));
    let oracle = netmux_testkit::oracle::compile("ip and udp dst port 53").unwrap();
    let text = std::fs::read_to_string(root().join("examples/udp-dst-53.s")).unwrap();
    let program = netmux_vm::verify(&netmux_vm::asm::assemble(&text).unwrap()).unwrap();
    let example = netmux_vm::Interpreter::new(program);
    let (mut frames, mut accepted) = (0, 0);
    for sub in ["pcap/tcpdump", "pcap/libpcap"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(sub).display()))
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            for (i, f) in capture::read_file(&path).unwrap().iter().enumerate() {
                let ours = netmux_vm::Engine::run(&example, &f.data, f.wire_len);
                let libpcap = oracle.matches(&f.data, f.wire_len);
                assert_eq!(ours.is_accept(), libpcap, "{} frame {i}", path.display());
                frames += 1;
                accepted += usize::from(libpcap);
            }
        }
    }
    eprintln!("{frames} corpus frames, {accepted} accepted by both");
    assert!(frames > 1000);
}

#[test]
fn asm_never_writes_over_its_source_and_refuses_binary_input() {
    let dir = TempDir::new("netmux-cli-vm-asm-careful");
    // A source named `.bin`: the default output would be the source itself.
    let src = dir.join("prog.bin");
    std::fs::write(&src, "accept 1\n").unwrap();
    let out = netmux(&["vm", "asm", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("would overwrite the source"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&src).unwrap(), "accept 1\n");
    // The same with -o naming the source, or a link to it.
    let s = dir.join("p.s");
    std::fs::write(&s, "accept 1\n").unwrap();
    let link = dir.join("link.bin");
    std::fs::hard_link(&s, &link).unwrap();
    for target in [&s, &link] {
        let out = netmux(&[
            "vm",
            "asm",
            s.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", target.display());
    }
    assert_eq!(std::fs::read_to_string(&s).unwrap(), "accept 1\n");
    // A compiled program, and binary data, are not assembly.
    let out = netmux(&["vm", "asm", s.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bin = dir.join("p.bin");
    let out = netmux(&[
        "vm",
        "asm",
        bin.to_str().unwrap(),
        "-o",
        dir.join("x.bin").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is a compiled program, not assembly text"),
        "{}",
        stderr(&out)
    );
    let out = netmux(&[
        "vm",
        "asm",
        "/dev/zero",
        "-o",
        dir.join("z.bin").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a NUL byte at offset 0"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_table_key_of_the_wrong_width_is_refused_with_a_caret_and_nothing_written() {
    let dir = TempDir::new("netmux-cli-vm-asm-key-width");
    let src = dir.join("t.s");
    std::fs::write(&src, "accept 1\n.table words=2 default=0\n 1 -> 2\n").unwrap();
    let out = netmux(&["vm", "asm", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).ends_with(
            "line 3: the key has 1 word, the table's keys have 2 (words=2)\n   1 -> 2\n   ^\n"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("t.bin").exists());
}

#[test]
fn verify_answers_dev_zero_at_once() {
    let start = std::time::Instant::now();
    let out = netmux(&["vm", "verify", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "pc 0: not a netmux program (bad magic)\n");
    // A valid header followed by endless zeros: read as far as the header says, no further.
    let out = Command::new(env!("CARGO_BIN_EXE_netmux"))
        .args(["vm", "verify", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let mut input = child.stdin.take().expect("stdin");
            let mut header = b"NMXF\x01\x00\x00\x00".to_vec();
            header.extend_from_slice(&1u32.to_le_bytes());
            // The program's eight bytes and one more; then the pipe stays open with zeros.
            let writer = std::thread::spawn(move || {
                let _ = input.write_all(&header);
                let zeros = vec![0u8; 1 << 16];
                while input.write_all(&zeros).is_ok() {}
            });
            let out = child.wait_with_output();
            let _ = writer.join();
            out
        })
        .expect("run netmux");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("after the end of the program"),
        "{}",
        stdout(&out)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
