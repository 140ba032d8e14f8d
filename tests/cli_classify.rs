//! `netmux filter classify`, run as the built binary on a capture the test writes.
//!
//! * The merged classifier and `--linear` print the same lines, and the lines are the ones
//!   expected frame by frame (overlapping rules all receive; `-` for none).
//! * Blank and `#` lines keep their numbers.
//! * `--explain` shows every binding-shaped rule going to a table and the others to the
//!   linear part.
//! * A rule that does not compile exits with status 2, naming its line, with a caret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::TempDir;
use netmux_wire::capture::{write_pcap, Frame, TimestampResolution};

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");

fn netmux(args: &[&Path]) -> Output {
    Command::new(NETMUX)
        .args(args)
        .output()
        .expect("run netmux")
}

const RULES: &str = "\
# port bindings: every one of these goes to a table
udp dst port 53 and dst host 10.0.0.2
ip and udp and dst port 53

tcp dst port 80
dst host 2001:db8::2 and tcp dst port 443
udp dst port 53
# not bindings
udp port 53
icmp or arp
tcp dst port 80 and not src net 192.168.0.0/16
";

fn frames() -> Vec<Frame> {
    let eth = || FrameBuilder::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let v4 = |dst: [u8; 4], proto: u8| {
        eth()
            .ethertype(0x0800)
            .ipv4(Ipv4::new([192, 168, 1, 9], dst, proto))
    };
    let host6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let other6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let built = vec![
        v4([10, 0, 0, 2], 17).udp(5000, 53).finish(), // 2 3 7 9
        v4([10, 0, 0, 3], 17).udp(5000, 53).finish(), // 3 7 9
        v4([10, 0, 0, 2], 17).udp(53, 5000).finish(), // 9 (source port)
        v4([10, 0, 0, 2], 6).tcp(5000, 80, 2).finish(), // 5 (src is 192.168/16)
        eth()
            .ethertype(0x86dd)
            .ipv6(other6, host6, 6)
            .tcp(5000, 443, 2)
            .finish(), // 6
        eth()
            .ethertype(0x86dd)
            .ipv6(other6, host6, 6)
            .tcp(5000, 80, 2)
            .finish(), // 5 11
        eth()
            .ethertype(0x0806)
            .arp(1, [2, 0, 0, 0, 0, 1], [10, 0, 0, 9], [0; 6], [10, 0, 0, 2])
            .finish(), // 10
        v4([10, 0, 0, 2], 1).icmp(8, 0).finish(),     // 10
        v4([10, 0, 0, 2], 6).tcp(5000, 81, 2).finish(), // -
    ];
    built
        .into_iter()
        .map(|f| Frame::whole(Duration::from_secs(1_700_000_000), f.data))
        .collect()
}

const EXPECTED: &str = "2 3 7 9\n3 7 9\n9\n5\n6\n5 11\n10\n10\n-\n";

/// A scratch directory with the rules and the capture; removed when dropped.
fn setup(test: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new(&format!("netmux-cli-classify-{test}"));
    let rules = dir.join("rules.txt");
    std::fs::write(&rules, RULES).unwrap();
    let cap = dir.join("frames.pcap");
    std::fs::write(
        &cap,
        write_pcap(&frames(), TimestampResolution::Micro).unwrap(),
    )
    .unwrap();
    (dir, rules, cap)
}

#[test]
fn classify_prints_every_accepting_rule_by_line_number_and_linear_agrees() {
    let (_dir, rules, cap) = setup("agree");
    let merged = netmux(&[
        Path::new("filter"),
        Path::new("classify"),
        Path::new("--engine"),
        Path::new("interp"),
        &rules,
        &cap,
    ]);
    assert!(merged.status.success(), "{merged:?}");
    assert_eq!(String::from_utf8_lossy(&merged.stdout), EXPECTED);
    let linear = netmux(&[
        Path::new("filter"),
        Path::new("classify"),
        Path::new("--linear"),
        &rules,
        &cap,
    ]);
    assert!(linear.status.success(), "{linear:?}");
    assert_eq!(linear.stdout, merged.stdout);
    // Two captures: the lines follow one another.
    let twice = netmux(&[
        Path::new("filter"),
        Path::new("classify"),
        &rules,
        &cap,
        &cap,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&twice.stdout),
        format!("{EXPECTED}{EXPECTED}")
    );
}

#[test]
fn explain_shows_every_binding_in_a_table_and_the_rest_linear() {
    let (_dir, rules, cap) = setup("explain");
    let out = netmux(&[
        Path::new("filter"),
        Path::new("classify"),
        Path::new("--explain"),
        &rules,
        &cap,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), EXPECTED);
    let explain = String::from_utf8_lossy(&out.stderr);
    for line in [2, 3, 5, 6, 7] {
        assert!(
            explain.contains(&format!("rule {line}: table: ")),
            "rule {line}:\n{explain}"
        );
    }
    for line in [9, 10, 11] {
        assert!(
            explain.contains(&format!("rule {line}: linear: ")),
            "rule {line}:\n{explain}"
        );
    }
    assert!(
        explain.contains("rule 2: table: udp to 10.0.0.2 port 53"),
        "{explain}"
    );
    assert!(explain.contains("rule 11: linear: not a port binding: it has a `not`"));
}

#[test]
fn a_rule_that_does_not_compile_exits_2_naming_its_line() {
    let (_dir, rules, cap) = setup("bad");
    std::fs::write(&rules, "tcp dst port 80\n\nudp dst port 65536\n").unwrap();
    let out = netmux(&[Path::new("filter"), Path::new("classify"), &rules, &cap]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rules.txt:3: "), "{err}");
    assert!(err.contains('^'), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_bfdmux_dialect_classifies_too() {
    let (_dir, rules, cap) = setup("bfdmux");
    // UDP (17) over IPv4; ARP.
    std::fs::write(
        &rules,
        "int16[12] == 0x0800 && int8[23] == 17\nint16[12] == 0x0806\n",
    )
    .unwrap();
    let out = netmux(&[
        Path::new("filter"),
        Path::new("classify"),
        Path::new("--dialect"),
        Path::new("bfdmux"),
        &rules,
        &cap,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n1\n1\n-\n-\n-\n2\n-\n-\n"
    );
    // A pcap rule is no bfdmux expression.
    std::fs::write(&rules, "udp\n").unwrap();
    let out = netmux(&[
        Path::new("filter"),
        Path::new("classify"),
        Path::new("--dialect"),
        Path::new("bfdmux"),
        &rules,
        &cap,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_broken_capture_gets_every_whole_frames_line_then_the_error() {
    let (_dir, rules, cap) = setup("broken");
    let bytes = std::fs::read(&cap).unwrap();
    std::fs::write(&cap, &bytes[..bytes.len() - 3]).unwrap();
    let out = netmux(&[Path::new("filter"), Path::new("classify"), &rules, &cap]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let whole: String = EXPECTED.lines().take(8).map(|l| format!("{l}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), whole);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated: frame 9:"), "{err}");
}

#[test]
fn a_rules_file_that_is_not_text_is_refused_naming_the_line() {
    let (_dir, rules, cap) = setup("binary");
    std::fs::write(&rules, b"udp\ntcp \xff\n").unwrap();
    let out = netmux(&[Path::new("filter"), Path::new("classify"), &rules, &cap]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules.txt:2: the line is not UTF-8 text"),
        "{err}"
    );
}
