//! The README's `filter match` example, `netmux filter match 'udp dst port 53' examples/sample.pcap`:
//! one line per frame of the shipped sample, and each verdict is libpcap's, with every engine.

use std::process::Command;

use netmux_testkit::oracle::BpfProgram;
use netmux_wire::capture;

fn filter_match(engine: &str, expr: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_netmux"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "filter",
            "match",
            "--engine",
            engine,
            expr,
            "examples/sample.pcap",
        ])
        .output()
        .expect("run netmux");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn readme_filter_match_gives_libpcaps_verdict_on_every_sample_frame() {
    let frames = capture::read_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sample.pcap"))
        .expect("the shipped sample reads");
    // The empty expression accepts every frame, as in tcpdump.
    for expr in ["udp dst port 53", "tcp or arp", "ip6", "not ip", ""] {
        let oracle = BpfProgram::compile(expr, true).expect("libpcap compiles it");
        let expected: String = frames
            .iter()
            .map(|f| format!("{}\n", u8::from(oracle.matches(&f.data, f.wire_len))))
            .collect();
        for engine in ["interp", "jit", "auto"] {
            assert_eq!(
                filter_match(engine, expr),
                expected,
                "`{expr}` with {engine}"
            );
        }
    }
    assert_eq!(
        filter_match("auto", "udp dst port 53"),
        "1\n1\n0\n0\n0\n0\n0\n0\n1\n1\n0\n0\n0\n0\n"
    );
}
