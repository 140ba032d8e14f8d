//! The operator's tools end to end, without privileges: the real driver on a virtual cable,
//! netd, a client through the client library, the test as the peer host at the far end of the
//! cable, and the `netmux` binary as the operator runs it.
//!
//! Proves: `netmux capture` of a client writes exactly the frames the client received and
//! transmitted, in order, into a pcap that tcpdump reads, to a file and through a pipe
//! (`-w - | tcpdump -r -`); a capture nobody reads drops its own copies, counted, and the
//! client loses nothing; a capture ends with its client. `netmux firewall` blocks a port in
//! and out while a client holds it, counts what each rule decided, and lets the traffic through
//! again once the rule is gone; a client cannot get past a rule with fragments, VLAN tags or
//! IPv6; rules are kept in netd's configuration. `netmux stat`'s totals are the driver's and
//! its rates add up to a known pattern. `netmux set rxbuf` drops only that client's excess.
//! tcpdump must be installed (`scripts/test` installs it).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cabled_common;
use cabled_common::{received, Host, LINK_MAC, PEER_IP, PEER_MAC};

use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_proto::ops::{CaptureDirections, CaptureRequest, ClientName};
use netmux_ring::{ClientQueue, QueueError, TxStatus};
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::TempDir;

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");
const HOST_IP: [u8; 4] = [192, 0, 2, 1];
const PORT: u16 = 7007;
const WAIT: Duration = Duration::from_secs(10);

impl Host {
    fn start() -> Host {
        Host::start_with(None)
    }

    /// A host with an IPv6 link-local address, whose netd keeps its configuration in `file`.
    fn start_with(file: Option<PathBuf>) -> Host {
        Host::start_in("netmux-operator", HOST_IP, |config| {
            config.addrs.ipv6_link_local = true;
            // The test's own uid manages the firewall, as root would.
            config.admin_uids.insert(rustix::process::getuid().as_raw());
            config.instances_file = file;
        })
    }

    fn client(&self) -> Client {
        Client::connect(&self.runtime_dir()).expect("netd accepts the client")
    }

    /// The UDP frames to the peer from `port` that the peer receives within `settle`.
    fn heard_from(&self, port: u16, settle: Duration) -> Vec<Vec<u8>> {
        self.heard(settle)
            .into_iter()
            .filter(|f| f.len() >= 38 && f[23] == 17 && f[34..36] == port.to_be_bytes())
            .collect()
    }

    /// `netmux capture ARGS` against this host, started and capturing when this returns.
    fn capture(&self, args: &[&str], stdout: Stdio) -> Child {
        let mut child = Command::new(NETMUX)
            .arg("capture")
            .arg("--runtime-dir")
            .arg(self.runtime_dir())
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("netmux capture starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("capturing"), "capture did not start: {line}");
        // The rest of its messages, for the end.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            eprint!("{rest}");
        });
        child
    }
}

/// A UDP frame from `src` to `dst` with `n` bytes of payload.
#[allow(clippy::too_many_arguments)]
fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    n: usize,
) -> Vec<u8> {
    FrameBuilder::ethernet(dst_mac, src_mac)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(src, dst, 17))
        .udp(sport, dport)
        .payload(n)
        .finish()
        .data
}

/// The peer's datagram number `i` to the client.
fn inbound(i: usize) -> Vec<u8> {
    udp(PEER_MAC, LINK_MAC, PEER_IP, HOST_IP, 5000, PORT, 10 + i)
}

/// The client's reply number `i` to the peer.
fn outbound(i: usize) -> Vec<u8> {
    udp(LINK_MAC, PEER_MAC, HOST_IP, PEER_IP, PORT, 5000, 100 + i)
}

/// Waits for one frame on `q`.
fn recv_one(q: &mut ClientQueue) -> Vec<u8> {
    let end = Instant::now() + WAIT;
    let mut out = Vec::new();
    while Instant::now() < end {
        if q.recv_owned(1, &mut out).unwrap() == 1 {
            return out.pop().unwrap();
        }
        let _ = q.wait_readable(Some(Duration::from_millis(10)));
    }
    panic!("no frame within {WAIT:?}");
}

/// Sends `frame` and waits for its completion.
fn send_one(q: &mut ClientQueue, frame: &[u8]) -> TxStatus {
    q.send(&[&[frame]]).unwrap();
    let mut done = Vec::new();
    let end = Instant::now() + WAIT;
    while done.is_empty() && Instant::now() < end {
        q.completions(8, &mut done).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    done.first().expect("a completion").status
}

/// The frames of a classic pcap file (little endian, as `netmux capture` writes it).
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes());
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= bytes.len() {
        let kept = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(bytes[at + 16..at + 16 + kept].to_vec());
        at += 16 + kept;
    }
    out
}

/// The frames of a pcapng file and each one's `epb_flags`.
fn pcapng_frames(path: &Path) -> (Vec<Vec<u8>>, Vec<u32>) {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut reader = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let (mut frames, mut flags) = (Vec::new(), Vec::new());
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(epb) = block.unwrap() {
            frames.push(epb.data.to_vec());
            for o in &epb.options {
                if let EnhancedPacketOption::Flags(f) = o {
                    flags.push(*f);
                }
            }
        }
    }
    (frames, flags)
}

/// Waits for a child to end, killing it (by its pid) after `WAIT`.
fn wait(child: &mut Child) -> std::process::ExitStatus {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{} did not end within {WAIT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_capture_of_a_client_is_what_it_received_and_sent_in_order_and_tcpdump_reads_it() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    let file = host.dir.join("echo.pcap");
    let port = format!("udp/{PORT}");
    let mut to_file = host.capture(
        &[&port, "-w", file.to_str().unwrap(), "-c", "6"],
        Stdio::null(),
    );
    // The same as pcapng, each frame marked in or out.
    let ng = host.dir.join("echo.pcapng");
    let mut to_ng = host.capture(
        &[&port, "-w", ng.to_str().unwrap(), "--pcapng", "-c", "6"],
        Stdio::null(),
    );
    // The same capture streamed to standard output, read by tcpdump through a pipe.
    let mut to_pipe = host.capture(&[&port, "-w", "-", "-c", "6"], Stdio::piped());
    let tcpdump = Command::new("tcpdump")
        .args(["-n", "-r", "-"])
        .stdin(to_pipe.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump runs (scripts/test installs it)");

    let mut seen = Vec::new();
    for i in 0..3 {
        host.send(&inbound(i));
        seen.push(recv_one(&mut q));
        assert_eq!(send_one(&mut q, &outbound(i)), TxStatus::Sent);
        seen.push(outbound(i));
    }
    // What the client refused to send is not in the capture: it never went out.
    let spoofed = udp(LINK_MAC, PEER_MAC, HOST_IP, PEER_IP, PORT + 1, 5000, 3);
    assert_ne!(send_one(&mut q, &spoofed), TxStatus::Sent);
    assert!(wait(&mut to_file).success());
    assert!(wait(&mut to_pipe).success());
    assert!(wait(&mut to_ng).success());

    assert_eq!(
        pcap_frames(&file),
        seen,
        "the capture is what the client saw"
    );
    let (ng_frames, flags) = pcapng_frames(&ng);
    assert_eq!(ng_frames, seen);
    assert_eq!(
        flags,
        [1, 2, 1, 2, 1, 2],
        "epb_flags: 1 inbound, 2 outbound"
    );
    let read = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .unwrap();
    let piped = tcpdump.wait_with_output().unwrap();
    let read_ng = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&ng)
        .output()
        .unwrap();
    for output in [read, piped, read_ng] {
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        for (i, line) in lines.iter().enumerate() {
            let expected = if i % 2 == 0 {
                "IP 192.0.2.99.5000 > 192.0.2.1.7007:"
            } else {
                "IP 192.0.2.1.7007 > 192.0.2.99.5000:"
            };
            assert!(line.contains(expected), "line {i}: {line}");
        }
    }
}

#[test]
fn a_capture_nobody_reads_drops_its_own_copies_and_the_client_loses_nothing() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    let mut operator = host.client();
    let capture = operator
        .capture(CaptureRequest {
            client: Some(ClientName::Port(Transport::Udp, PORT)),
            directions: CaptureDirections::Rx,
            snaplen: 65535,
            expr: String::new(),
        })
        .unwrap();
    const FRAMES: usize = 300;
    let mut got = 0;
    for burst in 0..FRAMES / 20 {
        for i in 0..20 {
            host.send(&inbound(burst * 20 + i));
        }
        for _ in 0..20 {
            recv_one(&mut q);
            got += 1;
        }
    }
    assert_eq!(got, FRAMES);
    let client_side = q.counters();
    assert_eq!(client_side.rx_dropped_full, 0);
    // The capture's ring is published just after the client's: wait for its last count.
    let end = Instant::now() + WAIT;
    let mut copies = capture.counters();
    while copies.rx_frames + copies.rx_dropped_full < FRAMES as u64 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
        copies = capture.counters();
    }
    assert!(copies.rx_dropped_full > 0, "{copies:?}");
    assert_eq!(
        copies.rx_frames + copies.rx_dropped_full,
        FRAMES as u64,
        "every copy is either in the capture's ring or counted as dropped: {copies:?}"
    );
    // The peer heard nothing extra, and the client's own traffic still flows.
    assert_eq!(
        send_one(&mut q, &outbound(0)),
        TxStatus::Sent,
        "the client still transmits"
    );
    assert_eq!(host.heard_from(PORT, Duration::from_millis(100)).len(), 1);
}

#[test]
fn a_capture_is_refused_for_a_client_that_does_not_exist_and_for_a_bad_expression() {
    let host = Host::start();
    let out = Command::new(NETMUX)
        .arg("capture")
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .arg("udp/9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no client udp/9"));
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let _q = client.open_queue().unwrap();
    let out = Command::new(NETMUX)
        .arg("capture")
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .args([&format!("udp/{PORT}"), "udp", "port", "nonsense("])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = Command::new(NETMUX)
        .args(["capture", "not-a-client"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("names no client"));
}

/// `netmux firewall ARGS` against `host`; its standard output, or a panic with its stderr.
fn firewall(host: &Host, args: &[&str]) -> String {
    let out = Command::new(NETMUX)
        .arg("firewall")
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "firewall {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `firewall ls --json`: (rule, frames) of each rule.
fn rule_frames(host: &Host) -> Vec<(String, u64)> {
    firewall(host, &["ls", "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["rule"].as_str().unwrap().to_owned(),
                v["frames"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_firewall_rule_blocks_a_port_in_and_out_while_a_client_holds_it_until_removed() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    host.send(&inbound(0));
    assert_eq!(recv_one(&mut q), inbound(0), "no rule: delivered");

    firewall(&host, &["add", "block", "in", "udp", "port", "7007"]);
    firewall(
        &host,
        &["add", "--temporary", "block", "out", "udp", "port", "7007"],
    );
    host.send(&inbound(1));
    assert!(received(&mut q, Duration::from_millis(200)).is_empty());
    assert_eq!(send_one(&mut q, &outbound(1)), TxStatus::RejectedByFirewall);
    assert!(host.heard_from(PORT, Duration::from_millis(100)).is_empty());
    assert_eq!(
        rule_frames(&host),
        [
            ("block in udp port 7007".to_owned(), 1),
            ("block out udp port 7007".to_owned(), 1)
        ]
    );
    let listing = firewall(&host, &["ls"]);
    assert!(
        listing.contains("block out udp port 7007  (temporary)"),
        "{listing}"
    );
    let counters = client.stats().unwrap();
    assert!(
        counters.rx_dropped.contains(&("firewall".to_owned(), 1)),
        "{counters:?}"
    );
    assert!(
        counters.tx_rejected.contains(&("firewall".to_owned(), 1)),
        "{counters:?}"
    );

    // A quick pass before the block lets the peer's traffic in again.
    firewall(
        &host,
        &[
            "insert",
            "1",
            "pass",
            "in",
            "quick",
            "src",
            "host",
            "192.0.2.99",
        ],
    );
    host.send(&inbound(2));
    assert_eq!(recv_one(&mut q), inbound(2));
    firewall(&host, &["rm", "3"]);
    assert_eq!(send_one(&mut q, &outbound(3)), TxStatus::Sent);
    assert_eq!(host.heard_from(PORT, Duration::from_millis(100)).len(), 1);
    firewall(&host, &["flush"]);
    assert!(firewall(&host, &["ls", "--json"]).is_empty());
    host.send(&inbound(4));
    assert_eq!(recv_one(&mut q), inbound(4), "rules gone: delivered again");

    // Without quick the last matching rule decides, and only it counts the frame.
    firewall(&host, &["add", "block", "in", "udp", "port", "7007"]);
    firewall(&host, &["add", "pass", "in", "udp"]);
    host.send(&inbound(5));
    assert_eq!(recv_one(&mut q), inbound(5), "the later pass decides");
    assert_eq!(
        rule_frames(&host),
        [
            ("block in udp port 7007".to_owned(), 0),
            ("pass in udp".to_owned(), 1)
        ]
    );
}

#[test]
fn a_client_cannot_evade_a_firewall_rule_with_fragments_vlan_tags_or_ipv6() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    let v6 = client
        .host()
        .ipv6_link_local
        .expect("netd has an IPv6 address");
    let peer_v6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99];

    // A datagram to the port in two fragments.
    let whole = udp(PEER_MAC, LINK_MAC, PEER_IP, HOST_IP, 5000, PORT, 32);
    let ip_payload = &whole[34..];
    let fragment = |frag: u16, bytes: &[u8]| {
        FrameBuilder::ethernet(LINK_MAC, PEER_MAC)
            .ethertype(0x0800)
            .ipv4(Ipv4 {
                frag,
                ..Ipv4::new(PEER_IP, HOST_IP, 17)
            })
            .raw(bytes)
            .finish()
            .data
    };
    let fragment = |frag: u16, bytes: &[u8]| with_ipv4_checksum(fragment(frag, bytes));
    let first = fragment(0x2000, &ip_payload[..24]);
    let second = fragment(3, &ip_payload[24..]);
    // The same datagram behind a VLAN tag (VID 0, priority only) and an 802.1Q tag.
    let tagged = |tci: u16| {
        FrameBuilder::ethernet(LINK_MAC, PEER_MAC)
            .vlan(0x8100, tci)
            .ethertype(0x0800)
            .ipv4(Ipv4::new(PEER_IP, HOST_IP, 17))
            .udp(5000, PORT)
            .payload(8)
            .finish()
            .data
    };
    // And over IPv6.
    let over_v6 = FrameBuilder::ethernet(LINK_MAC, PEER_MAC)
        .ethertype(0x86dd)
        .ipv6(peer_v6, v6, 17)
        .udp(5000, PORT)
        .payload(8)
        .finish()
        .data;
    let attempts = |host: &Host| {
        host.send(&first);
        host.send(&second);
        host.send(&tagged(0));
        host.send(&tagged(5));
        host.send(&over_v6);
    };

    attempts(&host);
    let without_rule = received(&mut q, Duration::from_millis(300));
    assert!(
        without_rule
            .iter()
            .any(|f| f.len() == whole.len() && f[34..] == whole[34..]),
        "the fragments reach the client whole without a rule"
    );
    assert!(
        without_rule.contains(&over_v6),
        "IPv6 reaches the client without a rule"
    );

    firewall(&host, &["add", "block", "in", "udp", "port", "7007"]);
    attempts(&host);
    let with_rule = received(&mut q, Duration::from_millis(300));
    assert!(
        with_rule.is_empty(),
        "{} frames got past the rule",
        with_rule.len()
    );
    // The tagged frames reach no client's port (they go to netd's queue), and the rule blocks
    // them there too: it sees them without their tags, where `udp port 7007` matches.
    assert_eq!(
        rule_frames(&host)[0].1,
        without_rule.len() as u64 + 2,
        "the rule decided every frame: the whole datagram, IPv6 and both tagged frames"
    );

    // A datagram the client transmits in fragments is judged whole by an `out` rule (the
    // driver gathers a client's fragments before its checks): both fragments complete as
    // refused by the firewall, and neither reaches the wire.
    firewall(&host, &["add", "block", "out", "udp", "port", "7007"]);
    let out_whole = outbound(0);
    let out_fragment = |frag: u16, bytes: &[u8]| {
        with_ipv4_checksum(
            FrameBuilder::ethernet(PEER_MAC, LINK_MAC)
                .ethertype(0x0800)
                .ipv4(Ipv4 {
                    frag,
                    ..Ipv4::new(HOST_IP, PEER_IP, 17)
                })
                .raw(bytes)
                .finish()
                .data,
        )
    };
    let first_out = out_fragment(0x2000, &out_whole[34..58]);
    let second_out = out_fragment(3, &out_whole[58..]);
    q.send(&[&[&first_out], &[&second_out]]).unwrap();
    let mut done = Vec::new();
    let end = Instant::now() + WAIT;
    while done.len() < 2 && Instant::now() < end {
        q.completions(8, &mut done).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let statuses: Vec<TxStatus> = done.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [TxStatus::RejectedByFirewall, TxStatus::RejectedByFirewall]
    );
    assert!(
        host.heard_from(PORT, Duration::from_millis(200)).is_empty(),
        "no fragment of a refused datagram on the wire"
    );
}

#[test]
fn stat_rates_add_up_to_the_drivers_counters_over_a_known_pattern() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    // Traffic before the first sample: in the totals, not in any rate.
    for i in 0..4 {
        host.send(&inbound(i));
        recv_one(&mut q);
    }
    let mut stat = Command::new(NETMUX)
        .arg("stat")
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .args(["--json", "-v", &format!("udp/{PORT}"), "1", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(stat.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["rx_frames_per_s"], 0.0, "{first}");
    // A known pattern after the first line: 7 frames in, 3 out, 2 refused.
    let (mut rx_bytes, mut tx_bytes) = (0u64, 0u64);
    for i in 0..7 {
        host.send(&inbound(10 + i));
        rx_bytes += recv_one(&mut q).len() as u64;
    }
    for i in 0..3 {
        assert_eq!(send_one(&mut q, &outbound(i)), TxStatus::Sent);
        tx_bytes += outbound(i).len() as u64;
    }
    let spoofed = udp(LINK_MAC, PEER_MAC, HOST_IP, PEER_IP, PORT + 1, 5000, 3);
    for _ in 0..2 {
        assert_eq!(
            send_one(&mut q, &spoofed),
            TxStatus::RejectedUnownedSourcePort
        );
    }
    let rest: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(wait(&mut stat).success());
    assert_eq!(rest.len(), 2);
    // Each line's rate times its interval (about 1 s) is its share; the shares add up.
    let sum = |key: &str| -> f64 { rest.iter().map(|v| v[key].as_f64().unwrap()).sum() };
    let last = rest.last().unwrap();
    let driver = client.stats().unwrap();
    assert_eq!(
        last["rx_frames"], driver.rx_frames,
        "totals are the driver's"
    );
    assert_eq!(last["tx_frames"], driver.tx_frames);
    assert_eq!(last["rx_bytes"], driver.rx_bytes);
    assert_eq!(last["tx_bytes"], driver.tx_bytes);
    assert_eq!(driver.rx_frames, 4 + 7);
    assert_eq!(driver.tx_frames, 3);
    let near = |got: f64, want: f64| (got - want).abs() <= want * 0.15 + 0.5;
    assert!(near(sum("rx_frames_per_s"), 7.0), "{rest:?}");
    assert!(near(sum("tx_frames_per_s"), 3.0), "{rest:?}");
    assert!(near(sum("rx_bytes_per_s"), rx_bytes as f64), "{rest:?}");
    assert!(near(sum("tx_bytes_per_s"), tx_bytes as f64), "{rest:?}");
    let drops: u64 = rest.iter().map(|v| v["drops"].as_u64().unwrap()).sum();
    assert_eq!(drops, 2, "the refused transmissions are drops: {rest:?}");
    let by_reason: u64 = rest
        .iter()
        .filter_map(|v| v["drops_by_reason"]["tx-unowned-source-port"].as_u64())
        .sum();
    assert_eq!(by_reason, 2);
}

/// `frame` (Ethernet, IPv4) with its IPv4 header checksum filled in: the reassembler checks it.
fn with_ipv4_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[14..14 + ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame
}

#[test]
fn firewall_rules_are_kept_in_netds_configuration_unless_temporary() {
    let keep = TempDir::new("netmux-operator-config");
    let file = keep.join("netd.toml");
    {
        let host = Host::start_with(Some(file.clone()));
        firewall(
            &host,
            &["add", "block", "in", "quick", "udp", "port", "7007"],
        );
        firewall(&host, &["add", "--temporary", "pass", "out", "icmp"]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("[[firewall]]"), "{text}");
        assert!(text.contains("block in quick udp port 7007"), "{text}");
        assert!(
            !text.contains("icmp"),
            "temporary rules are not kept: {text}"
        );
    }
    let host = Host::start_with(Some(file.clone()));
    assert_eq!(
        rule_frames(&host),
        [("block in quick udp port 7007".to_owned(), 0)],
        "restored at start"
    );
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    host.send(&inbound(0));
    assert!(
        received(&mut q, Duration::from_millis(200)).is_empty(),
        "the restored rule is in force"
    );
    // A rule that does not compile is refused, naming the fault; nothing changes.
    let out = Command::new(NETMUX)
        .arg("firewall")
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .args(["add", "block", "in", "udp", "port", "seven"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(rule_frames(&host).len(), 1);
    let out = Command::new(NETMUX)
        .arg("firewall")
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .args(["rm", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no rule 5"),
        "{out:?}"
    );
}

/// `netmux ARGS` against `host`: exit code, stdout, stderr.
fn netmux(host: &Host, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(NETMUX)
        .args(&args[..1])
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_small_rxbuf_drops_only_that_clients_excess_and_properties_say_why_they_cannot_change() {
    let host = Host::start();
    let mut small = host.client();
    small.bind_port(Transport::Udp, PORT).unwrap();
    let mut q_small = small.open_queue().unwrap();
    let mut other = host.client();
    other.bind_port(Transport::Udp, PORT + 1).unwrap();
    let mut q_other = other.open_queue().unwrap();

    let (code, text, _) = netmux(&host, &["get", "udp/7007"]);
    assert_eq!(code, Some(0));
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(row("rxbuf").as_deref(), Some("rw 131072"), "{text}");
    assert_eq!(row("maxsize").as_deref(), Some("r- 131072"), "{text}");
    assert_eq!(row("mintu").as_deref(), Some("r- 14"), "{text}");
    assert_eq!(row("maxtu").as_deref(), Some("r- 1518"), "{text}");
    assert!(row("limits.ring_bytes_per_uid").is_some(), "{text}");

    assert_eq!(netmux(&host, &["set", "udp/7007", "rxbuf=4K"]).0, Some(0));
    let (_, text, _) = netmux(&host, &["get", "-p", "udp/7007", "rxbuf"]);
    assert_eq!(text, "udp/7007:rxbuf:rw:4096\n");

    // Five frames to each client, unread: the small one keeps two slots' worth.
    for i in 0..5 {
        host.send(&inbound(i));
        let mut to_other = inbound(i);
        to_other[36..38].copy_from_slice(&(PORT + 1).to_be_bytes());
        host.send(&to_other);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(received(&mut q_small, Duration::from_millis(100)).len(), 2);
    assert_eq!(received(&mut q_other, Duration::from_millis(100)).len(), 5);
    assert_eq!(small.stats().unwrap().rx_dropped_full, 3);
    assert_eq!(other.stats().unwrap().rx_dropped_full, 0);
    // Read frames make room again.
    host.send(&inbound(9));
    assert_eq!(recv_one(&mut q_small), inbound(9));

    for (args, message) in [
        (
            &["set", "udp/7007", "maxsize=1"][..],
            "property maxsize is read-only",
        ),
        (&["set", "udp/7007", "x=1"], "unknown property: x"),
        (&["set", "udp/7007", "rxbuf="], "property value required"),
        (&["set", "udp/7007", "rxbuf"], "invalid property name=value"),
        (
            &["set", "udp/7007", "rxbuf=1K"],
            "outside [maxtu 1518, maxsize 131072]",
        ),
        (&["set", "udp/7007", "rxbuf=1Q"], "not a size"),
        (&["get", "udp/7007", "nothing"], "unknown property: nothing"),
        (&["get", "udp/9"], "no client udp/9"),
    ] {
        let (code, _, err) = netmux(&host, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn a_capture_ends_when_its_client_does_and_needs_a_session_of_its_own() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let _q = client.open_queue().unwrap();
    let mut operator = host.client();
    let mut capture = operator
        .capture(CaptureRequest {
            client: Some(ClientName::Pid(std::process::id())),
            directions: CaptureDirections::Both,
            snaplen: 128,
            expr: "udp".into(),
        })
        .expect("a capture of a client named by pid");
    drop(_q);
    drop(client);
    let end = Instant::now() + WAIT;
    let mut frames = Vec::new();
    loop {
        match capture.recv_owned(8, &mut frames) {
            Err(netmux_ring::QueueError::Closed) => break,
            _ if Instant::now() > end => panic!("the capture did not end with its client"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // A session holding a queue of its own cannot also capture.
    let mut busy = host.client();
    busy.bind_port(Transport::Udp, PORT + 2).unwrap();
    let _busy_q = busy.open_queue().unwrap();
    let mut other = host.client();
    other.bind_port(Transport::Udp, PORT + 3).unwrap();
    let e = busy
        .capture(CaptureRequest {
            client: Some(ClientName::Port(Transport::Udp, PORT + 3)),
            directions: CaptureDirections::Both,
            snaplen: 128,
            expr: String::new(),
        })
        .expect_err("a capture needs a session of its own");
    assert!(e.to_string().contains("session of its own"), "{e}");
}

#[test]
fn stat_with_l_adds_a_line_per_instance_and_one_for_the_link() {
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let _q = client.open_queue().unwrap();
    let (code, text, err) = netmux(
        &host,
        &["stat", "-l", "-p", "-o", "name,instance", "1", "1"],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"instance:default:default"), "{text}");
    assert!(lines.contains(&"link:-"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(":default") && l.contains('(')),
        "the client's line, named by process: {text}"
    );
}

#[test]
fn a_rule_list_too_large_for_one_driver_message_is_refused_and_netd_keeps_its_driver() {
    use netmux_proto::ops::FirewallRequest;
    let host = Host::start();
    let mut admin = host.client();
    let expr = (1..=1000)
        .map(|p| format!("udp port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let rule: netmux_proto::ops::RuleText = format!("block in {expr}").parse().unwrap();
    let mut added = 0;
    let refusal = loop {
        match admin.firewall(FirewallRequest::Add {
            rule: rule.clone(),
            at: None,
            temporary: true,
        }) {
            Ok(_) => added += 1,
            Err(e) => break e,
        }
        assert!(
            added < 64,
            "64 rules of 1,000 terms each fit in one message?"
        );
    };
    assert!(added > 0);
    let text = refusal.to_string();
    assert!(text.contains("would not fit in one message"), "{text}");
    // The rules in force stay, and netd still has its driver.
    assert_eq!(admin.firewall(FirewallRequest::List).unwrap().len(), added);
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
}

#[test]
fn a_client_writing_faster_than_the_link_is_flow_controlled_and_loses_no_accepted_frame() {
    const FRAMES: usize = 300;
    let host = Host::start();
    let mut client = host.client();
    client.bind_port(Transport::Udp, PORT).unwrap();
    let mut q = client.open_queue().unwrap();
    // The driver learns the peer's end of the cable from what it hears.
    host.send(&inbound(0));
    assert_eq!(recv_one(&mut q), inbound(0));

    // txbuf: 8 KiB is four 2 KiB slots; a batch of five frames can never fit.
    assert_eq!(netmux(&host, &["set", "udp/7007", "txbuf=8K"]).0, Some(0));
    let (_, text, _) = netmux(&host, &["get", "-p", "udp/7007", "txbuf"]);
    assert_eq!(text, "udp/7007:txbuf:rw:8192\n");
    let one = outbound(0);
    let one: [&[u8]; 1] = [&one];
    let five: Vec<&[&[u8]]> = vec![&one[..]; 5];
    assert!(matches!(
        q.send(&five),
        Err(QueueError::BatchTooLarge {
            needed: 5,
            capacity: 4
        })
    ));
    let (code, _, err) = netmux(&host, &["set", "udp/7007", "txbuf=1K"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("outside [maxtu 1518, tx ring 131072]"),
        "{err}"
    );

    // The peer does not read for a while: the cable fills, the link is busy, the driver holds
    // what it took and leaves the rest in the ring, and the client is made to wait.
    let writer = std::thread::spawn(move || {
        let mut would_block = 0;
        // A writer collects its completions: the driver takes a frame only when the
        // completion ring has room for its outcome.
        let mut done = Vec::new();
        for i in 0..FRAMES {
            let frame = outbound(i);
            loop {
                q.completions(FRAMES, &mut done).unwrap();
                match q.send(&[&[&frame]]) {
                    Ok(_) => break,
                    Err(QueueError::WouldBlock { .. }) => {
                        would_block += 1;
                        q.wait(true, Some(1), Some(WAIT)).unwrap();
                    }
                    Err(e) => panic!("frame {i}: {e}"),
                }
            }
        }
        // Every accepted frame is completed as sent.
        let end = Instant::now() + WAIT;
        while done.len() < FRAMES && Instant::now() < end {
            q.completions(FRAMES, &mut done).unwrap();
            let _ = q.wait_readable(Some(Duration::from_millis(10)));
        }
        (would_block, done, q, client)
    });
    std::thread::sleep(Duration::from_millis(300));
    // Then it reads everything, until it has every frame or WAIT passes.
    let start = Instant::now();
    let mut heard = Vec::new();
    while heard.len() < FRAMES && start.elapsed() < WAIT {
        heard.extend(host.heard_from(PORT, Duration::from_millis(50)));
    }
    eprintln!(
        "the peer heard {} frames in {:?}",
        heard.len(),
        start.elapsed()
    );
    let (would_block, done, _q, mut client) = writer.join().unwrap();
    assert!(would_block > 0, "the client was never made to wait");
    assert_eq!(done.len(), FRAMES);
    assert!(
        done.iter().all(|c| c.status == TxStatus::Sent),
        "{:?}",
        done.iter().find(|c| c.status != TxStatus::Sent)
    );
    let expected: Vec<Vec<u8>> = (0..FRAMES).map(outbound).collect();
    assert_eq!(heard.len(), FRAMES, "every accepted frame reached the peer");
    assert!(heard == expected, "in order, each once");
    let stats = client.stats().unwrap();
    assert!(stats.tx_flow_control > 0, "{stats:?}");
    // `netmux stat` shows the same count.
    let (code, text, _) = netmux(&host, &["stat", "--json", "udp/7007", "1", "1"]);
    assert_eq!(code, Some(0));
    let row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(row["txfc_total"], stats.tx_flow_control, "{text}");
}
