//! Overlays end to end, without privileges: two netmux hosts (the real driver and netd each)
//! joined by a virtual cable as the underlay, an overlay on each with a varpd `files`
//! mapping, and clients in overlay instances on both sides exchanging frames through VXLAN.
//!
//! Proves: UDP crosses between hosts both ways, encapsulated on the cable; clients are told
//! the overlay's MTU; ARP is answered by proxy, byte for byte; two overlays with the same
//! inner addresses never see each other's frames; a bad mapping file is refused with its line
//! and field while the last good mapping keeps working, and a good change is taken;
//! `netmux overlay map ls|get|set|rm` shows and edits a mapping, the file is rewritten in the
//! files plugin's format and the driver follows at once; SIGHUP reloads a file whose change
//! the polling could not see.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_netd::testing::Host;
use netmux_ring::ClientQueue;
use netmux_testkit::frames::{FrameBuilder, Ipv4};

mod overlay_common;
use overlay_common::{recv, send};

const LINK_A: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0xa];
const LINK_B: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0xb];
const UNDERLAY_A: [u8; 4] = [192, 0, 2, 1];
const UNDERLAY_B: [u8; 4] = [192, 0, 2, 2];
const WAIT: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_millis(300);

/// One overlay instance's identity.
#[derive(Clone, Copy)]
struct Node {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 4],
    underlay: [u8; 4],
}

const BLUE_A: Node = Node {
    name: "blue-a",
    mac: [0x02, 0xb1, 0, 0, 0, 1],
    ip: [10, 0, 0, 1],
    underlay: UNDERLAY_A,
};
const BLUE_B: Node = Node {
    name: "blue-b",
    mac: [0x02, 0xb1, 0, 0, 0, 2],
    ip: [10, 0, 0, 2],
    underlay: UNDERLAY_B,
};
/// The same inner addresses as blue's, on another overlay.
const RED_A: Node = Node {
    name: "red-a",
    mac: [0x02, 0xe1, 0, 0, 0, 1],
    ip: [10, 0, 0, 1],
    underlay: UNDERLAY_A,
};
const RED_B: Node = Node {
    name: "red-b",
    mac: [0x02, 0xe1, 0, 0, 0, 2],
    ip: [10, 0, 0, 2],
    underlay: UNDERLAY_B,
};

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A varpd files-plugin document for `nodes`.
fn mapping(nodes: &[Node]) -> String {
    let entries: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "  \"{}\": {{ \"ip\": \"{}\", \"port\": 4789, \"arp\": \"{}\" }}",
                mac_text(n.mac),
                Ipv4Addr::from(n.underlay),
                Ipv4Addr::from(n.ip)
            )
        })
        .collect();
    format!("{{\n{}\n}}\n", entries.join(",\n"))
}

fn pair() -> (Host, Host) {
    Host::pair(
        (LINK_A, Ipv4Addr::from(UNDERLAY_A)),
        (LINK_B, Ipv4Addr::from(UNDERLAY_B)),
    )
}

fn create_overlay(host: &Host, name: &str, vni: u32, file: &Path) {
    let mapping = format!("files:{}", file.display());
    overlay_common::create_overlay(host.runtime_dir(), name, vni, &mapping);
}

/// Creates `node`'s instance on `overlay` and a client in it bound to UDP 7 with its queue.
fn join(host: &Host, overlay: &str, node: Node) -> (Client, ClientQueue) {
    overlay_common::join(host.runtime_dir(), overlay, node.name, node.mac, node.ip)
}

fn udp(from: Node, to: Node, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::ethernet(to.mac, from.mac)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(from.ip, to.ip, 17))
        .udp(7, 7)
        .payload(payload.len())
        .finish()
        .data
}

/// The UDP frames `q` receives within `window` (ARP and the like left out).
fn udp_heard(q: &mut ClientQueue, window: Duration) -> Vec<Vec<u8>> {
    recv(q, usize::MAX, window)
        .into_iter()
        .filter(|f| f.get(12..14) == Some(&[0x08, 0x00][..]))
        .collect()
}

/// Sends `frame` until `q` receives it (the first ones wait for the mapping service and the
/// underlay's ARP), at most for [`WAIT`].
fn deliver(from: &mut ClientQueue, to: &mut ClientQueue, frame: &[u8]) {
    overlay_common::deliver(from, to, frame, frame, WAIT);
}

#[test]
fn clients_on_two_hosts_exchange_udp_through_vxlan_told_the_overlay_mtu() {
    let (a, b) = pair();
    let file = a.runtime_dir().with_file_name("blue.json");
    std::fs::write(&file, mapping(&[BLUE_A, BLUE_B])).unwrap();
    create_overlay(&a, "blue", 42, &file);
    create_overlay(&b, "blue", 42, &file);
    let (ca, mut qa) = join(&a, "blue", BLUE_A);
    let (_cb, mut qb) = join(&b, "blue", BLUE_B);
    assert_eq!(ca.host().link.mtu, 1450, "the link's 1500 less 50 of VXLAN");

    let there = udp(BLUE_A, BLUE_B, b"over the overlay");
    deliver(&mut qa, &mut qb, &there);
    let back = udp(BLUE_B, BLUE_A, b"and back");
    send(&mut qb, &back);
    assert!(recv(&mut qa, 1, WAIT).contains(&back));

    // The driver counted what it carried; netd shows it.
    let deadline = Instant::now() + WAIT;
    loop {
        let list = Client::connect(a.runtime_dir())
            .unwrap()
            .list_overlays()
            .unwrap();
        let o = &list[0];
        assert_eq!((o.spec.name.as_str(), o.spec.vni), ("blue", 42));
        assert_eq!(o.instances, vec!["blue-a".to_string()]);
        assert_eq!(o.state, "ok");
        if o.counters.tx_frames >= 1 && o.counters.rx_frames >= 1 && o.counters.misses >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "counters: {:?}", o.counters);
        std::thread::sleep(Duration::from_millis(50));
    }
    // `netmux stat -l` shows the overlay beside the instances and the link.
    let out = Command::new(NETMUX)
        .args(["stat", "-l", "--json", "1", "1", "--runtime-dir"])
        .arg(a.runtime_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["name"] == "overlay:blue")
        .unwrap_or_else(|| panic!("no overlay row: {rows:?}"));
    assert_eq!(
        (row["vni"].as_u64(), row["state"].as_str()),
        (Some(42), Some("ok"))
    );
    assert!(
        row["tx_frames"].as_u64() >= Some(1) && row["misses"].as_u64() >= Some(1),
        "{row}"
    );
    // An overlay with an instance cannot go.
    let refused = Client::connect(a.runtime_dir())
        .unwrap()
        .destroy_overlay("blue")
        .unwrap_err();
    assert!(refused.to_string().contains("blue-a"), "{refused}");
}

#[test]
fn arp_in_an_overlay_is_answered_by_proxy_byte_exact() {
    let (a, b) = pair();
    let file = a.runtime_dir().with_file_name("blue.json");
    std::fs::write(&file, mapping(&[BLUE_A, BLUE_B])).unwrap();
    create_overlay(&a, "blue", 42, &file);
    let (_ca, mut qa) = join(&a, "blue", BLUE_A);
    drop(b);
    let request = FrameBuilder::ethernet([0xff; 6], BLUE_A.mac)
        .ethertype(0x0806)
        .arp(1, BLUE_A.mac, BLUE_A.ip, [0; 6], BLUE_B.ip)
        .finish()
        .data;
    let mut expected = Vec::new();
    expected.extend_from_slice(&BLUE_A.mac);
    expected.extend_from_slice(&BLUE_B.mac);
    expected.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    expected.extend_from_slice(&BLUE_B.mac);
    expected.extend_from_slice(&BLUE_B.ip);
    expected.extend_from_slice(&BLUE_A.mac);
    expected.extend_from_slice(&BLUE_A.ip);
    send(&mut qa, &request);
    assert_eq!(recv(&mut qa, 1, WAIT), vec![expected]);
}

#[test]
fn two_overlays_with_the_same_inner_addresses_never_see_each_others_frames() {
    let (a, b) = pair();
    let blue = a.runtime_dir().with_file_name("blue.json");
    let red = a.runtime_dir().with_file_name("red.json");
    std::fs::write(&blue, mapping(&[BLUE_A, BLUE_B])).unwrap();
    std::fs::write(&red, mapping(&[RED_A, RED_B])).unwrap();
    for h in [&a, &b] {
        create_overlay(h, "blue", 42, &blue);
        create_overlay(h, "red", 43, &red);
    }
    let (_c1, mut blue_a) = join(&a, "blue", BLUE_A);
    let (_c2, mut red_a) = join(&a, "red", RED_A);
    let (_c3, mut blue_b) = join(&b, "blue", BLUE_B);
    let (_c4, mut red_b) = join(&b, "red", RED_B);

    let to_blue = udp(BLUE_A, BLUE_B, b"blue");
    let to_red = udp(RED_A, RED_B, b"red");
    deliver(&mut blue_a, &mut blue_b, &to_blue);
    deliver(&mut red_a, &mut red_b, &to_red);
    for _ in 0..5 {
        send(&mut blue_a, &to_blue);
        send(&mut red_a, &to_red);
    }
    // Blue's client names red's MAC: blue's mapping has no such MAC, so it goes nowhere.
    send(&mut blue_a, &udp(BLUE_A, RED_B, b"crossing"));
    let heard_blue = udp_heard(&mut blue_b, SETTLE);
    let heard_red = udp_heard(&mut red_b, SETTLE);
    assert_eq!(heard_blue.len(), 5);
    assert!(heard_blue.iter().all(|f| f == &to_blue), "blue heard red");
    assert_eq!(heard_red.len(), 5);
    assert!(heard_red.iter().all(|f| f == &to_red), "red heard blue");
    assert!(udp_heard(&mut blue_a, SETTLE).is_empty());
    assert!(udp_heard(&mut red_a, SETTLE).is_empty());
}

#[test]
fn a_bad_mapping_file_is_refused_keeping_the_last_good_and_a_good_change_is_taken() {
    let (a, b) = pair();
    let file = a.runtime_dir().with_file_name("blue.json");
    std::fs::write(&file, mapping(&[BLUE_A, BLUE_B])).unwrap();
    create_overlay(&a, "blue", 42, &file);
    create_overlay(&b, "blue", 42, &file);
    let (_ca, mut qa) = join(&a, "blue", BLUE_A);
    let (_cb, mut qb) = join(&b, "blue", BLUE_B);
    let frame = udp(BLUE_A, BLUE_B, b"one");
    deliver(&mut qa, &mut qb, &frame);

    std::fs::write(
        &file,
        "{\n  \"02:b1:00:00:00:02\": {\n    \"ip\": \"192.0.2.2\",\n    \"port\": \"4789\"\n  }\n}\n",
    )
    .unwrap();
    let state = |h: &Host| {
        Client::connect(h.runtime_dir())
            .unwrap()
            .list_overlays()
            .unwrap()[0]
            .clone()
    };
    let deadline = Instant::now() + WAIT;
    while state(&a).state == "ok" {
        assert!(Instant::now() < deadline, "the bad file went unnoticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = state(&a).state;
    assert!(s.contains("line 4: 02:b1:00:00:00:02 port"), "{s}");
    assert_eq!(state(&a).mappings, 2, "the last good mapping stays");
    send(&mut qa, &frame);
    assert!(recv(&mut qb, 1, WAIT).contains(&frame));

    // B moves away (to an address nobody has): A's frames no longer reach it.
    let moved = Node {
        underlay: [192, 0, 2, 99],
        ..BLUE_B
    };
    std::fs::write(&file, mapping(&[BLUE_A, moved])).unwrap();
    let deadline = Instant::now() + WAIT;
    while state(&a).state != "ok" {
        assert!(Instant::now() < deadline, "the good file was not taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(SETTLE);
    let _ = recv(&mut qb, usize::MAX, SETTLE);
    send(&mut qa, &frame);
    assert!(
        udp_heard(&mut qb, SETTLE).is_empty(),
        "the moved MAC is not B's any more"
    );
}

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");

/// `netmux overlay map ARGS --runtime-dir` of `host`.
fn map(host: &Host, args: &[&str]) -> Output {
    Command::new(NETMUX)
        .args(["overlay", "map"])
        .args(args)
        .arg("--runtime-dir")
        .arg(host.runtime_dir())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether `from`'s frame reaches `to` within [`SETTLE`] (after what was queued is read).
fn reaches(from: &mut ClientQueue, to: &mut ClientQueue, frame: &[u8]) -> bool {
    let _ = recv(to, usize::MAX, Duration::from_millis(50));
    send(from, frame);
    udp_heard(to, SETTLE).iter().any(|f| f == frame)
}

#[test]
fn overlay_map_shows_and_edits_the_mapping_and_the_driver_follows_at_once() {
    let (a, b) = pair();
    let file = a.runtime_dir().with_file_name("blue.json");
    std::fs::write(&file, mapping(&[BLUE_A, BLUE_B])).unwrap();
    create_overlay(&a, "blue", 42, &file);
    create_overlay(&b, "blue", 42, &file);
    let (_ca, mut qa) = join(&a, "blue", BLUE_A);
    let (_cb, mut qb) = join(&b, "blue", BLUE_B);
    let frame = udp(BLUE_A, BLUE_B, b"mapped");
    deliver(&mut qa, &mut qb, &frame);
    let b_mac = mac_text(BLUE_B.mac);

    // ls and get, parseable.
    let out = map(&a, &["ls", "blue", "-p"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out));
    assert_eq!(
        lines[1],
        serde_json::json!({"mac": b_mac, "ip": "192.0.2.2", "port": 4789, "arp": "10.0.0.2"})
    );
    let out = map(&a, &["ls", "blue"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("MAC "), "{table}");
    assert!(
        table.contains("02:b1:00:00:00:02 192.0.2.2        4789 10.0.0.2"),
        "{table}"
    );
    let out = map(&a, &["get", "blue", &b_mac, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["ip"],
        "192.0.2.2"
    );

    // set moves B away: the file is rewritten (still the files plugin's format), the
    // driver's cached mapping is gone at once, and A's frames no longer reach B.
    let out = map(
        &a,
        &[
            "set",
            "blue",
            &b_mac,
            "192.0.2.99:4789",
            "--arp",
            "10.0.0.2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("\"02:b1:00:00:00:02\": { \"ip\": \"192.0.2.99\", \"port\": 4789, \"arp\": \"10.0.0.2\" }"),
        "{written}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(parsed.as_object().unwrap().len(), 2);
    assert!(
        !reaches(&mut qa, &mut qb, &frame),
        "the old mapping is still cached"
    );
    // Back, without a port: the overlay's own. Taken at once again.
    let out = map(
        &a,
        &["set", "blue", &b_mac, "192.0.2.2", "--arp", "10.0.0.2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(reaches(&mut qa, &mut qb, &frame) || reaches(&mut qa, &mut qb, &frame));

    // rm: gone from netd and the file, frames dropped.
    let out = map(&a, &["rm", "blue", &b_mac]);
    assert!(out.status.success(), "{}", text(&out));
    let out = map(&a, &["get", "blue", &b_mac]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no mapping for 02:b1:00:00:00:02"),
        "{}",
        text(&out)
    );
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&b_mac));
    assert!(
        !reaches(&mut qa, &mut qb, &frame),
        "a removed MAC is still reached"
    );

    // Clear refusals.
    for (args, code, says) in [
        (
            vec!["get", "red", "02:00:00:00:00:01"],
            1,
            "no overlay named \"red\"",
        ),
        (vec!["rm", "blue", &b_mac], 1, "has no mapping"),
        (
            vec!["set", "blue", "03:00:00:00:00:01", "192.0.2.5"],
            1,
            "unicast",
        ),
        (
            vec![
                "set",
                "blue",
                "02:00:00:00:00:09",
                "192.0.2.5",
                "--arp",
                "10.0.0.1",
            ],
            1,
            "10.0.0.1 is already 02:b1:00:00:00:01's address",
        ),
        (
            vec!["set", "blue", "02:00:00:00:00:09", "192.0.2.5:0"],
            2,
            "not a port",
        ),
        (vec!["set", "blue", "nonsense", "192.0.2.5"], 2, "nonsense"),
    ] {
        let out = map(&a, &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = Command::new(NETMUX)
        .args(["overlay", "map", "set", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Example:"),
        "{}",
        text(&out)
    );
}

#[test]
fn sighup_reloads_a_mapping_file_whose_change_polling_cannot_see() {
    let (a, _b) = pair();
    let file = a.runtime_dir().with_file_name("blue.json");
    std::fs::write(&file, mapping(&[BLUE_A, BLUE_B])).unwrap();
    create_overlay(&a, "blue", 42, &file);
    let ip = |h: &Host| {
        Client::connect(h.runtime_dir())
            .unwrap()
            .overlay_mappings("blue", Some(BLUE_B.mac))
            .unwrap()[0]
            .ip
    };
    assert_eq!(ip(&a), Ipv4Addr::new(192, 0, 2, 2));
    // The same length and modification time: netd's polling sees no change.
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let moved = Node {
        underlay: [192, 0, 2, 9],
        ..BLUE_B
    };
    std::fs::write(&file, mapping(&[BLUE_A, moved])).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(ip(&a), Ipv4Addr::new(192, 0, 2, 2), "polling saw it");
    // SAFETY: kill(2) on this process with a signal netd catches.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let deadline = Instant::now() + WAIT;
    while ip(&a) != Ipv4Addr::new(192, 0, 2, 9) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the file");
        std::thread::sleep(Duration::from_millis(20));
    }
}
