//! `netmux defrag`, run as the built binary on captures the tests make: what it writes, what it
//! prints, and its exit status.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use netmux_driver::reassembly::fragmenter::{fragment, ipv4_fragment};
use netmux_testkit::TempDir;
use netmux_wire::capture::{self, Frame, TimestampResolution};

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");

fn netmux(args: &[&Path]) -> Output {
    Command::new(NETMUX)
        .args(args)
        .output()
        .expect("run netmux")
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame from 192.0.2.1 to 192.0.2.2 port 53.
fn udp4(id: u16, payload_len: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45, 0];
    f.extend_from_slice(&((28 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&[0x30, 0x39, 0, 53]);
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload_len).map(|i| (i as u16).wrapping_mul(7) as u8 ^ id as u8));
    f
}

/// An Ethernet + IPv6 + UDP frame from 2001:db8::1 to 2001:db8::2 port 53.
fn udp6(payload_len: usize) -> Vec<u8> {
    let mut f = vec![
        2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    for last in [1u8, 2] {
        f.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
        ]);
    }
    f.extend_from_slice(&[0x30, 0x39, 0, 53]);
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload_len).map(|i| (i % 251) as u8));
    f
}

fn at(millis: u64) -> Duration {
    Duration::from_millis(1_700_000_000_000 + millis)
}

#[test]
fn defrag_writes_unfragmented_frames_and_whole_datagrams_in_order() {
    let dir = TempDir::new("netmux-cli-defrag-order");
    let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));

    let small = udp4(1, 20);
    let v4 = udp4(2, 4000);
    let v6 = udp6(3000);
    let attacked = udp4(3, 3000);
    let v4_frags = fragment(&v4, 1480, 0).unwrap();
    let v6_frags = fragment(&v6, 1232, 77).unwrap();
    let attacked_frags = fragment(&attacked, 1480, 0).unwrap();
    // Rewrites the UDP ports of `attacked`: an overlap, so the whole datagram goes.
    let evil = ipv4_fragment(&attacked, 0, true, &[0x00, 0x35, 0x00, 0x35, 0, 0, 0, 0]).unwrap();
    let mut frames = vec![Frame::whole(at(0), small.clone())];
    let mut t = 1;
    let mut push = |f: &Vec<u8>| {
        // Small frames get Ethernet padding, as a NIC delivers them.
        let mut f = f.clone();
        if f.len() < 60 {
            f.resize(60, 0xee);
        }
        frames.push(Frame::whole(at(t), f));
        t += 1;
    };
    // Interleaved, the IPv4 datagram's last fragment first.
    push(&v4_frags[2]);
    push(&v6_frags[1]);
    push(&attacked_frags[0]);
    push(&v4_frags[0]);
    push(&evil);
    push(&v6_frags[0]);
    push(&v6_frags[2]);
    push(&attacked_frags[1]);
    push(&v4_frags[1]);
    push(&attacked_frags[2]);
    std::fs::write(
        &input,
        capture::write_pcap(&frames, TimestampResolution::Micro).unwrap(),
    )
    .unwrap();

    let out = netmux(&[Path::new("defrag"), &input, Path::new("-w"), &output]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let written = capture::read_file(&output).unwrap();
    let data: Vec<&[u8]> = written.iter().map(|f| f.data.as_slice()).collect();
    assert_eq!(data, [&small[..], &v6[..], &v4[..]]);
    assert_eq!(
        written[1].timestamp,
        at(7),
        "stamped with the completing fragment's time"
    );
    for (label, value) in [
        ("frames read", "11"),
        ("frames written", "3"),
        ("reassembled datagrams", "2"),
        ("overlap", "2"),
        ("discarded-datagram", "2"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} in\n{stdout}"));
        assert_eq!(line.split_whitespace().last(), Some(value), "{line}");
    }
}

#[test]
fn defrag_times_out_datagrams_by_capture_time() {
    let dir = TempDir::new("netmux-cli-defrag-timeout");
    let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));
    let whole = udp4(9, 3000);
    let frags = fragment(&whole, 1480, 0).unwrap();
    let frames: Vec<Frame> = frags
        .iter()
        .enumerate()
        .map(|(k, f)| Frame::whole(at(k as u64 * 1500), f.clone()))
        .collect();
    std::fs::write(
        &input,
        capture::write_pcap(&frames, TimestampResolution::Micro).unwrap(),
    )
    .unwrap();
    // Fragments 1.5 s apart: a 2 s timeout loses the datagram, the default keeps it.
    let out = netmux(&[
        Path::new("defrag"),
        &input,
        Path::new("-w"),
        &output,
        Path::new("--timeout"),
        Path::new("2"),
    ]);
    assert!(out.status.success());
    assert!(capture::read_file(&output).unwrap().is_empty());
    assert!(String::from_utf8_lossy(&out.stdout).contains("timeout"));
    let out = netmux(&[Path::new("defrag"), &input, Path::new("-w"), &output]);
    assert!(out.status.success());
    assert_eq!(capture::read_file(&output).unwrap()[0].data, whole);
}

#[test]
fn defrag_exit_status_says_refused_input_or_io_error() {
    let dir = TempDir::new("netmux-cli-defrag-status");
    let output = dir.join("out.pcap");
    let junk = dir.join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture").unwrap();
    let refused = netmux(&[Path::new("defrag"), &junk, Path::new("-w"), &output]);
    assert_eq!(refused.status.code(), Some(1));
    let missing = netmux(&[
        Path::new("defrag"),
        &dir.join("missing.pcap"),
        Path::new("-w"),
        &output,
    ]);
    assert_eq!(missing.status.code(), Some(2));
    let usage = netmux(&[Path::new("defrag"), &junk]);
    assert_eq!(usage.status.code(), Some(2), "no -w");
}
